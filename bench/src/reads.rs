//! `vbin bench reads`: the read path. N clients (in a child process, `vbin bench load-get`)
//! GET calls by id from the query API, served from the Redis cache, against the same clients
//! GETting `/healthz` (a trivial route: no auth, no cache) on the same server in the same run.
//! Repeated for several numbers of distinct calls read (the growth curve: a cache hit should
//! not depend on how many rows there are).

use crate::commands::cpu_time;
use crate::{Bench, Services};
use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use vbin_platform::Part;

/// `vbin bench reads` options.
#[derive(clap::Args, Debug)]
pub struct ReadsArgs {
    /// Distinct calls read, one run each (the growth curve).
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000")]
    pub calls: Vec<usize>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Seconds of measured load of each run.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    #[command(flatten)]
    pub services: Services,
}

/// `vbin bench load-get` options (the load generator of `bench reads`).
#[derive(clap::Args, Debug)]
pub struct LoadGetArgs {
    /// The server (`http://host:port`).
    #[arg(long)]
    pub base: String,
    /// Bearer token (none: no Authorization header).
    #[arg(long)]
    pub token: Option<String>,
    /// A file of the paths to GET in turn, one per line.
    #[arg(long)]
    pub paths_file: std::path::PathBuf,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Seconds of measured load (after 1 s of warm-up).
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
}

/// The GET load generator: prints `measuring`, then one line of JSON.
pub async fn load_get(a: &LoadGetArgs) -> anyhow::Result<()> {
    let paths: Vec<String> = std::fs::read_to_string(&a.paths_file)
        .with_context(|| format!("reading {}", a.paths_file.display()))?
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if paths.is_empty() {
        bail!("--paths-file: at least one path");
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(a.clients * 2)
        .build()?;
    let urls: Arc<Vec<String>> = Arc::new(paths.iter().map(|p| format!("{}{p}", a.base)).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let op = {
        let (http, token) = (http.clone(), a.token.clone());
        move || {
            let (http, token, urls, next) =
                (http.clone(), token.clone(), urls.clone(), next.clone());
            async move {
                let url = &urls[next.fetch_add(1, Ordering::Relaxed) % urls.len()];
                let t0 = Instant::now();
                let mut req = http.get(url);
                if let Some(t) = &token {
                    req = req.bearer_auth(t);
                }
                let r = req.send().await?;
                if !r.status().is_success() {
                    bail!("GET {url}: {}", r.status());
                }
                r.bytes().await?;
                Ok(vec![t0.elapsed()])
            }
        }
    };
    crate::commands::measure_as_child(
        a.clients,
        Duration::from_secs(1),
        Duration::from_secs(a.duration_secs),
        op,
    )
    .await
}

/// Runs `vbin bench load-get` as a child and returns its figures plus this process's CPU
/// time per request over the measured window.
async fn get_load(
    base: &str,
    token: Option<&str>,
    paths: &[String],
    a: &ReadsArgs,
) -> anyhow::Result<Value> {
    // In a file: ten thousand paths are too long for a command line.
    let file = std::env::temp_dir().join(format!("vbin-bench-paths-{}", uuid::Uuid::new_v4()));
    std::fs::write(&file, paths.join("\n"))?;
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.args(["bench", "load-get", "--base", base])
        .arg("--paths-file")
        .arg(&file)
        .args(["--clients", &a.clients.to_string()])
        .args(["--duration-secs", &a.duration_secs.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    let mut child = cmd.spawn().context("starting the load generator")?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("no stdout")?).lines();
    if lines.next_line().await?.as_deref() != Some("measuring") {
        bail!("the load generator stopped");
    }
    let cpu0 = cpu_time(std::process::id())?;
    let result = lines.next_line().await?.context("no result")?;
    let cpu = cpu_time(std::process::id())? - cpu0;
    child.wait().await?;
    let _ = std::fs::remove_file(&file);
    let mut v: Value = serde_json::from_str(&result)?;
    let ops = v["ops"].as_f64().unwrap_or(0.0);
    v["per_sec"] = json!((ops / v["elapsed_secs"].as_f64().unwrap_or(1.0)).round());
    v["server_cpu_us_per_request"] = json!((cpu.as_secs_f64() * 1e6 / ops.max(1.0)).round());
    Ok(v)
}

/// Runs the benchmark.
pub async fn run(a: &ReadsArgs) -> anyhow::Result<Value> {
    let parts = [
        Part::CommandApi,
        Part::QueryApi,
        Part::Relay,
        Part::Projections,
    ];
    let b = Arc::new(Bench::start(&a.services, a.clients, &parts).await?);
    let mut ids: Vec<String> = Vec::new();
    let mut runs = Vec::new();
    for &n in &a.calls {
        if n == 0 {
            bail!("--calls: at least one call");
        }
        eprintln!("reads: {n} calls...");
        while ids.len() < n {
            let made = futures::future::try_join_all(
                (ids.len()..n.min(ids.len() + 64)).map(|_| b.create_call()),
            )
            .await?;
            ids.extend(made.into_iter().map(|(id, _)| id));
        }
        for id in &ids[..n] {
            b.wait_visible(id, |s| !s.is_empty()).await?;
        }
        let paths: Vec<String> = ids[..n]
            .iter()
            .map(|id| format!("/v1.0/calls/{id}"))
            .collect();
        // Read each once so that every one is cached before the measurement.
        for chunk in paths.chunks(256) {
            futures::future::try_join_all(chunk.iter().map(|p| b.get_json(p))).await?;
        }
        // The trivial route is measured right before and right after the cached GETs, for
        // half the time each, and the ratio is taken against their mean: this machine's speed
        // moves by tens of percent within a minute, and one baseline measured after the run
        // made the ratio follow the hour more than the code (the sixteenth pass did the same
        // for `bench commands`).
        let healthz = ["/healthz".to_string()];
        let half = ReadsArgs {
            duration_secs: a.duration_secs.div_ceil(2),
            calls: Vec::new(),
            services: a.services.clone(),
            ..*a
        };
        let before = get_load(&b.base, None, &healthz, &half).await?;
        let cached = get_load(&b.base, Some(&b.token), &paths, a).await?;
        let after = get_load(&b.base, None, &healthz, &half).await?;
        let rate = |v: &Value| v["per_sec"].as_f64().unwrap_or(0.0);
        let trivial = json!({
            "per_sec": ((rate(&before) + rate(&after)) / 2.0).round(),
            "before": before,
            "after": after,
        });
        let ratio = rate(&cached) / rate(&trivial).max(1e-9);
        runs.push(json!({
            "calls": n,
            "cached_get": cached,
            "healthz": trivial,
            "ratio": (ratio * 1000.0).round() / 1000.0,
        }));
    }
    let b = Arc::try_unwrap(b).ok().context("bench still in use")?;
    b.stop().await;
    let first = &runs[0];
    Ok(json!({
        "benchmark": "reads",
        "clients": a.clients,
        "duration_secs": a.duration_secs,
        "runs": runs,
        "cached_gets_per_sec": first["cached_get"]["per_sec"],
        "baseline_healthz_per_sec": first["healthz"]["per_sec"],
        "ratio": first["ratio"],
        "target_ratio": 0.8,
    }))
}
