//! `vbin bench flows`: N concurrent sandbox calls running an IVR flow on the in-process
//! platform (every part: API, relay, flow engine, media sessions).
//!
//! Each call's flow talks a long menu (~10 s, the same clip for every call: synthesised once),
//! waits for a key, branches on it and talks again, then hangs up; its sandbox far end presses
//! 2 after the menu. Reported:
//! - concurrent real-time media sessions per core: N / (CPU seconds the process used per
//!   second) while every session plays the menu;
//! - outbound frame pacing jitter: how late each session's 20 ms tick ran (p50/p99/max, from
//!   the platform's `vbin_media_tick_lateness_seconds`);
//! - step latency from the far end's key to the first frame of the next talk (p50/p99, from
//!   `vbin_media_digit_to_talk_seconds`): digits_receive completes, the log, the stream, the
//!   activeflow's decision, the media consumer, the cached clip, the next tick.
//!
//! Baseline, in the same run: the AudioSocket bench's real-time sessions per core
//! (`vbin bench media`'s server measurement).

use crate::{Bench, Services};
use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use vbin_platform::Part;

/// `vbin bench flows` options.
#[derive(clap::Args, Debug)]
pub struct FlowsArgs {
    /// Concurrent calls.
    #[arg(long, default_value_t = 500)]
    pub calls: usize,
    /// Seconds of the CPU measurement while every session plays the menu.
    #[arg(long, default_value_t = 4)]
    pub window_secs: u64,
    /// Seconds of the AudioSocket baseline.
    #[arg(long, default_value_t = 5)]
    pub baseline_secs: u64,
    #[command(flatten)]
    pub services: Services,
}

const MENU: &str = "Thank you for calling the bench line. Your call matters to us. \
    For support, press one. For sales, press two. To hear these options again, stay on the line.";

/// CPU seconds this process has used (user + system), from `/proc/self/stat`.
pub(crate) fn cpu_seconds() -> anyhow::Result<f64> {
    cpu_seconds_of("self")
}

/// CPU seconds process `pid` ("self", or a number) has used, from its `/proc/<pid>/stat`.
pub(crate) fn cpu_seconds_of(pid: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat
        .rsplit_once(')')
        .context("malformed /proc/self/stat")?
        .1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here; USER_HZ is 100.
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// A histogram's cumulative bucket counts in the Prometheus text exposition: (upper bound in
/// seconds, count), ascending, `+Inf` last.
pub(crate) fn buckets(metrics: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut b: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    b
}

/// The q-quantile of what was observed between two scrapes, as the upper bound of its bucket
/// in ms (`None` without observations, or beyond the last finite bound), and how many.
pub(crate) fn quantile_between(
    before: &[(f64, f64)],
    after: &[(f64, f64)],
    q: f64,
) -> (Option<f64>, f64) {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, n)| {
            let was = before.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1);
            (le, n - was)
        })
        .collect();
    let total = delta.last().map_or(0.0, |d| d.1);
    if total <= 0.0 {
        return (None, 0.0);
    }
    let at = delta
        .iter()
        .find(|d| d.1 >= q * total)
        .map(|d| d.0)
        .filter(|le| le.is_finite())
        .map(|le| (le * 1000.0 * 100.0).round() / 100.0);
    (at, total)
}

pub(crate) fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|r| r.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

pub(crate) async fn metrics(b: &Bench) -> anyhow::Result<String> {
    Ok(b.http
        .get(format!("{}/metrics", b.base))
        .send()
        .await?
        .text()
        .await?)
}

/// Places a sandbox call that talks `text` (so the clip is synthesised and cached before a
/// benchmark's calls); how long it talked, from its answer to its end.
pub(crate) async fn talk_ms(b: &Bench, text: &str) -> anyhow::Result<u64> {
    use reqwest::Method;
    let t = Instant::now();
    let mut answered = None;
    let probe = b
        .send_json(
            Method::POST,
            "/v1.0/calls",
            json!({"source": "+15550001000", "destinations": ["+15550002000"],
                   "actions": [{"type": "talk", "option": {"text": text}},
                               {"type": "talk", "option": {"text": "Sales."}},
                               {"type": "hangup"}],
                   "sandbox": {"script": [{"at_ms": 120_000, "hangup": true}]}}),
        )
        .await?;
    let id = probe["calls"][0]["id"]
        .as_str()
        .context("no call id")?
        .to_string();
    loop {
        // 404 until the read model has it.
        let c: Value = b
            .http
            .get(format!("{}/v1.0/calls/{id}", b.base))
            .bearer_auth(&b.token)
            .send()
            .await?
            .json()
            .await
            .unwrap_or_default();
        if c["status"] == "progressing" && answered.is_none() {
            answered = Some(Instant::now());
        }
        if c["status"] == "completed" {
            break;
        }
        if t.elapsed() > Duration::from_secs(120) {
            bail!("the probe call did not end: {c}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(answered
        .context("the probe call was never seen answered")?
        .elapsed()
        .as_millis() as u64)
}

/// Places `n` calls, 100 per request: `body(k)` is the request for `k` of them.
pub(crate) async fn place_calls(
    b: &Bench,
    n: usize,
    body: impl Fn(usize) -> Value,
) -> anyhow::Result<()> {
    let mut left = n;
    while left > 0 {
        let k = left.min(100);
        b.send_json(reqwest::Method::POST, "/v1.0/calls", body(k))
            .await?;
        left -= k;
    }
    Ok(())
}

/// Waits (at most 60 s from `started`) until `n` media sessions run; how long that took.
pub(crate) async fn all_live(b: &Bench, n: usize, started: Instant) -> anyhow::Result<Duration> {
    while started.elapsed() < Duration::from_secs(60) {
        let live = gauge(&metrics(b).await?, "vbin_media_sessions").unwrap_or(0.0);
        if live as usize >= n {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{n} media sessions did not all start within 60 s")
}

/// Waits (at most two minutes) until no media session runs.
pub(crate) async fn all_ended(b: &Bench) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while gauge(&metrics(b).await?, "vbin_media_sessions").unwrap_or(1.0) > 0.0 {
        if Instant::now() > deadline {
            bail!("media sessions still up after two minutes");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// Runs the benchmark.
pub async fn run(a: &FlowsArgs) -> anyhow::Result<Value> {
    use reqwest::Method;
    let secs = a.baseline_secs;
    let baseline = tokio::task::spawn_blocking(move || crate::media::server(secs, 200)).await??;
    let baseline_per_core = baseline["realtime_sessions_per_core"]
        .as_f64()
        .unwrap_or(0.0);

    let b = Bench::start(&a.services, 16, &Part::ALL).await?;
    let sales = "0191a0d2-7c4e-7b0e-8f00-0000000000b2";
    let flow = b
        .send_json(
            Method::POST,
            "/v1.0/flows",
            json!({"name": "bench ivr", "actions": [
                {"type": "talk", "option": {"text": MENU}},
                {"type": "digits_receive", "option": {"duration": 30000, "length": 1}},
                {"type": "branch", "option": {"target_ids": {"2": sales}}},
                {"type": "hangup"},
                {"id": sales, "type": "talk", "option": {"text": "Sales."}},
                {"type": "hangup"},
            ]}),
        )
        .await?;
    // The clip is synthesised before the calls: the bench measures the media path, not the
    // first synthesis.
    let menu_ms = talk_ms(&b, MENU).await?;
    // The key comes after the menu (the call's clock starts at its answer).
    let key_at = menu_ms + 1_000;
    eprintln!("menu ~{menu_ms} ms; placing {} calls...", a.calls);
    let started = Instant::now();
    place_calls(&b, a.calls, |n| {
        json!({"source": "+15550001000", "destinations": vec!["+15550002000"; n],
               "flow_id": flow["id"],
               "sandbox": {"script": [{"at_ms": key_at, "digits": "2"},
                                      {"at_ms": key_at + 60_000, "hangup": true}]}})
    })
    .await?;
    // Every session live, then the CPU used while they all play the menu.
    let ramp = all_live(&b, a.calls, started)
        .await
        .context("not every session started within 60 s")?;
    const LATE: &str = "vbin_media_tick_lateness_seconds";
    const STEP: &str = "vbin_media_digit_to_talk_seconds";
    let late0 = buckets(&metrics(&b).await?, LATE);
    let (cpu0, t0) = (cpu_seconds()?, Instant::now());
    tokio::time::sleep(Duration::from_secs(a.window_secs)).await;
    let (cpu, wall) = (cpu_seconds()? - cpu0, t0.elapsed().as_secs_f64());
    let late1 = buckets(&metrics(&b).await?, LATE);
    let in_window = ramp.as_millis() as u64 + a.window_secs * 1000 + 500 < menu_ms;
    // Then every call presses its key, hears "Sales." and is hung up.
    all_ended(&b)
        .await
        .context("calls still up two minutes after their keys")?;
    let m = metrics(&b).await?;
    let cores_used = cpu / wall;
    let per_core = a.calls as f64 / cores_used.max(1e-9);
    let (late_all, steps) = (buckets(&m, LATE), buckets(&m, STEP));
    let (steady_p50, steady_ticks) = quantile_between(&late0, &late1, 0.5);
    let (steady_p99, _) = quantile_between(&late0, &late1, 0.99);
    let (run_p50, run_ticks) = quantile_between(&[], &late_all, 0.5);
    let (run_p99, _) = quantile_between(&[], &late_all, 0.99);
    let (step_p50, keys) = quantile_between(&[], &steps, 0.5);
    let (step_p99, _) = quantile_between(&[], &steps, 0.99);
    let r = json!({
        "benchmark": "flows",
        "command": format!("vbin bench flows --calls {}", a.calls),
        "calls": a.calls,
        "menu_ms": menu_ms,
        "ramp_secs": (ramp.as_secs_f64() * 10.0).round() / 10.0,
        "window_secs": (wall * 10.0).round() / 10.0,
        "window_all_playing": in_window,
        "cores_used": (cores_used * 1000.0).round() / 1000.0,
        "sessions_per_core": per_core.round(),
        "tick_lateness_ms": {
            "steady_p50": steady_p50, "steady_p99": steady_p99, "steady_ticks": steady_ticks,
            "run_p50": run_p50, "run_p99": run_p99, "run_ticks": run_ticks,
            "note": "bucket upper bounds; steady = the window where every session plays, run = \
                     everything including the ramp of call set-ups",
        },
        "digit_to_talk_ms": {"p50": step_p50, "p99": step_p99, "keys": keys},
        "baseline_audiosocket_sessions_per_core": baseline_per_core,
        "ratio": (per_core / baseline_per_core.max(1e-9) * 1000.0).round() / 1000.0,
        "note": "sessions per core counts the whole process (API, relay, flow engine, projections) \
                 while every session plays audio; the baseline is AudioSocket decode + resample only",
    });
    b.stop().await;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_histograms_and_gauges_from_the_exposition() {
        let scrape = |a: u32, b: u32, c: u32| {
            format!(
                "# TYPE vbin_media_sessions gauge\nvbin_media_sessions 500\n\
                 x_bucket{{le=\"0.001\"}} {a}\nx_bucket{{le=\"0.005\"}} {b}\n\
                 x_bucket{{le=\"+Inf\"}} {c}\nx_sum 1.5\nx_count {c}\n"
            )
        };
        let m0 = scrape(10, 10, 10);
        assert_eq!(gauge(&m0, "vbin_media_sessions"), Some(500.0));
        let (b0, b1) = (buckets(&m0, "x"), buckets(&scrape(150, 199, 200), "x"));
        assert_eq!(b0, [(0.001, 10.0), (0.005, 10.0), (f64::INFINITY, 10.0)]);
        // Between the scrapes: 140 at most 1 ms, 49 more at most 5 ms, 1 beyond.
        assert_eq!(quantile_between(&b0, &b1, 0.5), (Some(1.0), 190.0));
        assert_eq!(quantile_between(&b0, &b1, 0.99), (Some(5.0), 190.0));
        assert_eq!(quantile_between(&b0, &b1, 1.0), (None, 190.0));
        assert_eq!(quantile_between(&b1, &b1, 0.5), (None, 0.0));
        // The CPU clock moves while the process computes (in 10 ms ticks).
        let (c0, t0) = (cpu_seconds().unwrap(), Instant::now());
        let mut x = 0u64;
        while cpu_seconds().unwrap() <= c0 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            assert!(t0.elapsed() < Duration::from_secs(5), "{x}");
        }
    }
}
