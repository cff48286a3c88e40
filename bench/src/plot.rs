//! The growth curves of `vbin bench all` as SVG charts: each scaling benchmark's rate at each
//! size it ran, beside its same-run baseline or target, so a curve that falls as the work grows
//! shows at a glance. The charts are drawn from the report alone (pure), so a stored report
//! can be drawn again.

use plotters::prelude::*;
use serde_json::Value;

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend.
    pub name: String,
    /// (size, value), in the order of the sizes.
    pub points: Vec<(f64, f64)>,
}

/// One chart: a file name, its axes and its lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// File name (`<name>.svg`).
    pub file: String,
    /// Caption.
    pub title: String,
    /// X axis (the size; drawn on a log scale).
    pub x: &'static str,
    /// Y axis.
    pub y: &'static str,
    /// Lines.
    pub series: Vec<Series>,
}

fn points(rows: &[&Value], x: &str, y: &str) -> Vec<(f64, f64)> {
    let get = |v: &Value, path: &str| {
        path.split('.')
            .try_fold(v, |v, k| v.get(k))
            .and_then(Value::as_f64)
    };
    let mut p: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| Some((get(r, x)?, get(r, y)?)))
        .collect();
    p.sort_by(|a, b| a.0.total_cmp(&b.0));
    p.dedup_by(|a, b| a.0 == b.0);
    p
}

fn flat(name: &str, at: &[(f64, f64)], value: Option<f64>) -> Option<Series> {
    let v = value?;
    Some(Series {
        name: name.into(),
        points: at.iter().map(|(x, _)| (*x, v)).collect(),
    })
}

/// The charts a report has the figures for: a chart needs at least two sizes.
pub fn charts(report: &Value) -> Vec<Chart> {
    let b = &report["benchmarks"];
    let rows =
        |v: &Value, key: &str| -> Vec<Value> { v[key].as_array().cloned().unwrap_or_default() };
    let mut out = Vec::new();

    let c = &b["campaign"];
    let runs = rows(c, "runs");
    let refs: Vec<&Value> = runs.iter().collect();
    let dialed = points(&refs, "targets", "calls_dialed_per_sec");
    let steady = points(&refs, "targets", "steady_calls_dialed_per_sec");
    let mut series = vec![Series {
        name: "calls dialed/s (whole campaign)".into(),
        points: dialed.clone(),
    }];
    if steady.len() >= 2 {
        series.push(Series {
            name: "calls dialed/s after the first round".into(),
            points: steady,
        });
    }
    series.extend(flat(
        "target",
        &dialed,
        c["target_calls_dialed_per_sec"].as_f64(),
    ));
    out.push(Chart {
        file: "campaign.svg".into(),
        title: "Campaign dialer: calls dialed per second by campaign size".into(),
        x: "targets",
        y: "calls/s",
        series,
    });

    let w = &b["webhooks"];
    let mut rows_w = rows(w, "curve");
    if w.get("deliveries").is_some() {
        rows_w.push(w.clone());
    }
    let refs: Vec<&Value> = rows_w.iter().collect();
    let delivered = points(&refs, "deliveries", "deliveries_per_sec");
    let mut series = vec![Series {
        name: "deliveries/s".into(),
        points: delivered.clone(),
    }];
    series.extend(flat(
        "target",
        &delivered,
        w["target_deliveries_per_sec"].as_f64(),
    ));
    out.push(Chart {
        file: "webhooks.svg".into(),
        title: "Webhook deliveries per second by backlog".into(),
        x: "deliveries in the backlog",
        y: "deliveries/s",
        series,
    });

    let r = &b["reads"];
    let runs = rows(r, "runs");
    let refs: Vec<&Value> = runs.iter().collect();
    out.push(Chart {
        file: "reads.svg".into(),
        title: "Cached GET /v1.0/calls/{id} vs /healthz on the same server, by calls stored".into(),
        x: "calls stored",
        y: "requests/s",
        series: vec![
            Series {
                name: "cached GET".into(),
                points: points(&refs, "calls", "cached_get.per_sec"),
            },
            Series {
                name: "/healthz (baseline)".into(),
                points: points(&refs, "calls", "healthz.per_sec"),
            },
        ],
    });

    let s = &b["ws"];
    let runs = rows(s, "runs");
    let refs: Vec<&Value> = runs.iter().collect();
    out.push(Chart {
        file: "ws.svg".into(),
        title: "WebSocket pushes per second by open connections".into(),
        x: "connections",
        y: "pushes/s",
        series: vec![
            Series {
                name: "gateway".into(),
                points: points(&refs, "connections", "pushes_per_sec"),
            },
            Series {
                name: "bare WebSocket server (baseline)".into(),
                points: points(&refs, "connections", "baseline_pushes_per_sec"),
            },
        ],
    });

    out.retain(|c| c.series.first().is_some_and(|s| s.points.len() >= 2));
    out
}

/// The chart as an SVG document.
pub fn svg(chart: &Chart) -> anyhow::Result<String> {
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (720, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let all = chart.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0f64);
        for (x, y) in all {
            x0 = x0.min(*x);
            x1 = x1.max(*x);
            y1 = y1.max(*y);
        }
        anyhow::ensure!(x0 < x1, "a chart needs two sizes");
        let mut ctx = ChartBuilder::on(&root)
            .caption(&chart.title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d((x0 * 0.8..x1 * 1.25).log_scale(), 0f64..y1 * 1.15)?;
        ctx.configure_mesh()
            .x_desc(chart.x)
            .y_desc(chart.y)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        for (i, s) in chart.series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            ctx.draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(&s.name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
            ctx.draw_series(s.points.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
        }
        ctx.configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    Ok(text)
}

/// Writes every chart of `report` into `dir`; returns the file names written.
pub fn write_all(report: &Value, dir: &std::path::Path) -> anyhow::Result<Vec<(String, String)>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for c in charts(report) {
        std::fs::write(dir.join(&c.file), svg(&c)?)?;
        written.push((c.file, c.title));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_report_gives_a_curve_per_scaling_benchmark_drawn_as_svg() {
        let report: Value =
            serde_json::from_str(include_str!("testdata/report.json")).expect("fixture");
        let charts = charts(&report);
        let names: Vec<&str> = charts.iter().map(|c| c.file.as_str()).collect();
        assert_eq!(
            names,
            ["campaign.svg", "webhooks.svg", "reads.svg", "ws.svg"]
        );
        let campaign = &charts[0];
        assert_eq!(campaign.series[0].points.len(), 3);
        assert!(campaign.series[0]
            .points
            .windows(2)
            .all(|w| w[0].0 < w[1].0));
        // The target is drawn flat over the same sizes.
        let target = campaign.series.iter().find(|s| s.name == "target").unwrap();
        assert!(target.points.iter().all(|p| p.1 == 500.0));
        for c in &charts {
            let doc = svg(c).unwrap();
            assert!(doc.starts_with("<svg"), "{}", c.file);
            assert!(doc.contains(&c.series[0].name), "legend of {}", c.file);
        }
    }

    #[test]
    fn a_benchmark_run_at_one_size_has_no_curve() {
        let report = serde_json::json!({"benchmarks": {"campaign": {"runs": [
            {"targets": 1000, "calls_dialed_per_sec": 700.0}]}}});
        assert!(charts(&report).is_empty());
    }
}
