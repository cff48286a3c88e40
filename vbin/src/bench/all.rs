//! `vbin bench all`: every benchmark, one after another, each in its own `vbin bench ...`
//! process (a clean start for each), plus the common baselines of this machine measured in the
//! same run (Redis GET rate, a no-op HTTP handler); one report as JSON and markdown.

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `vbin bench all` options.
#[derive(clap::Args, Debug)]
pub struct AllArgs {
    /// Where the report (`report.json`, `report.md`) and each benchmark's JSON go.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// Run only these benchmarks (comma-separated; default all).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Smaller sizes (minutes instead of tens of minutes), for a quick check.
    #[arg(long)]
    pub quick: bool,
    /// Redis URL for the baseline.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
}

/// The benchmarks and their arguments (full, quick).
fn plan() -> Vec<(&'static str, Vec<&'static str>, Vec<&'static str>)> {
    vec![
        ("commands", vec![], vec!["--duration-secs", "5"]),
        (
            "lag",
            vec![],
            vec!["--duration-secs", "5", "--calibrate-secs", "4"],
        ),
        ("replay", vec![], vec!["--events", "200000"]),
        ("campaign", vec![], vec!["--targets", "2000"]),
        ("webhooks", vec![], vec!["--calls", "2000"]),
        (
            "ws",
            vec![],
            vec!["--connections", "1000,5000", "--secs", "5"],
        ),
        ("media", vec![], vec!["--secs", "1"]),
        ("stt", vec![], vec!["--prompts", "15"]),
    ]
}

/// Runs the benchmarks and writes the report.
pub async fn run(a: &AllArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.out).with_context(|| a.out.display().to_string())?;
    let exe = std::env::current_exe()?;
    let mut results = Map::new();
    let mut failed = Vec::new();
    for (name, full, quick) in plan() {
        if !a.only.is_empty() && !a.only.iter().any(|o| o == name) {
            continue;
        }
        let json_path = a.out.join(format!("{name}.json"));
        let args = if a.quick { quick } else { full };
        eprintln!("== vbin bench {name} {}", args.join(" "));
        let t = Instant::now();
        let status = tokio::process::Command::new(&exe)
            .arg("bench")
            .arg(name)
            .args(&args)
            .arg("--json")
            .arg(&json_path)
            .stdout(std::process::Stdio::null())
            .status()
            .await
            .with_context(|| format!("running bench {name}"))?;
        let secs = t.elapsed().as_secs_f64().round();
        match std::fs::read(&json_path).ok().filter(|_| status.success()) {
            Some(bytes) => {
                let mut v: Value = serde_json::from_slice(&bytes)?;
                v["command"] = json!(format!("vbin bench {name} {}", args.join(" ")).trim_end());
                v["seconds"] = json!(secs);
                results.insert(name.to_string(), v);
            }
            None => {
                eprintln!("bench {name} failed ({status})");
                failed.push(name);
            }
        }
    }
    let baselines = json!({
        "redis_get_per_sec": redis_gets(&a.redis_url).await.ok(),
        "noop_http_requests_per_sec": noop_http().await.ok(),
    });
    let report = json!({
        "date": chrono::Utc::now().format("%Y-%m-%d").to_string(),
        "machine": machine(),
        "quick": a.quick,
        "baselines": baselines,
        "benchmarks": Value::Object(results),
        "failed": failed,
    });
    std::fs::write(
        a.out.join("report.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    std::fs::write(a.out.join("report.md"), markdown(&report))?;
    println!("{}", markdown(&report));
    if !failed.is_empty() {
        bail!("benchmarks failed: {failed:?}");
    }
    Ok(())
}

fn machine() -> Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    json!({"cpus": cpus, "cpu": model})
}

/// Every numeric figure of a benchmark's JSON, flattened (`runs.0.latency_p99_ms`, ...).
fn figures(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Number(n) => out.push((prefix.to_string(), n.to_string())),
        Value::Object(m) => {
            for (k, x) in m {
                if k == "samples" || k == "command" {
                    continue;
                }
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                figures(&p, x, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                figures(&format!("{prefix}.{i}"), x, out);
            }
        }
        _ => {}
    }
}

fn markdown(r: &Value) -> String {
    let mut md = format!(
        "# vbin benchmark report\n\n{} on {} CPUs ({}){}.\n\n## Baselines (same run)\n\n",
        r["date"].as_str().unwrap_or(""),
        r["machine"]["cpus"],
        r["machine"]["cpu"].as_str().unwrap_or(""),
        if r["quick"] == json!(true) {
            ", quick sizes"
        } else {
            ""
        }
    );
    md += &format!(
        "| Redis GET/s (16 clients) | No-op HTTP requests/s (16 clients) |\n|---|---|\n| {} | {} |\n",
        r["baselines"]["redis_get_per_sec"], r["baselines"]["noop_http_requests_per_sec"]
    );
    if let Some(b) = r["benchmarks"].as_object() {
        for (name, v) in b {
            md += &format!(
                "\n## {name}\n\n`{}` ({} s)\n\n| Figure | Value |\n|---|---|\n",
                v["command"].as_str().unwrap_or(""),
                v["seconds"]
            );
            let mut f = Vec::new();
            figures("", v, &mut f);
            for (k, x) in f.into_iter().filter(|(k, _)| k != "seconds") {
                md += &format!("| {k} | {x} |\n");
            }
        }
    }
    if let Some(f) = r["failed"].as_array().filter(|f| !f.is_empty()) {
        md += &format!("\nFailed: {f:?}\n");
    }
    md
}

/// GETs per second of one key by 16 clients for 3 s.
async fn redis_gets(url: &str) -> anyhow::Result<f64> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let _: () = redis::cmd("SET")
        .arg("vbin:bench:key")
        .arg("v")
        .query_async(&mut conn)
        .await?;
    let load = super::drive(16, Duration::from_secs(3), move || {
        let mut conn = conn.clone();
        async move {
            let t = Instant::now();
            let _: Option<String> = redis::cmd("GET")
                .arg("vbin:bench:key")
                .query_async(&mut conn)
                .await?;
            Ok(vec![t.elapsed()])
        }
    })
    .await;
    Ok(super::rate(&load).round())
}

/// Requests per second to an axum handler that does nothing, by 16 clients for 3 s.
async fn noop_http() -> anyhow::Result<f64> {
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/", listener.local_addr()?);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let http = reqwest::Client::new();
    let load = super::drive(16, Duration::from_secs(3), move || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let t = Instant::now();
            http.get(&url).send().await?.error_for_status()?;
            Ok(vec![t.elapsed()])
        }
    })
    .await;
    server.abort();
    Ok(super::rate(&load).round())
}
