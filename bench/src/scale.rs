//! `vbin bench scale`: the command API and the projections as 1, 2, ... processes of their own
//! (`vbin serve --only command-api,projections`), side by side on the same machine, under the
//! same command load spread over them; the rest of the platform runs once, in the benchmark's
//! process. Reports per run the commands per second, their latency, each process's CPU time,
//! the commands per CPU-second (the per-core figure of docs/scaling.md), the events the
//! projections applied per second and how long they took to catch up after the load.
//!
//! On a 2-core machine a second process brings no throughput (the cores are already busy);
//! the point is that the work is shared correctly and what one process costs.

use crate::commands::cpu_time;
use crate::{drive, rate, serve_child, Bench, Services};
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vbin_platform::Part;

/// `vbin bench scale` options.
#[derive(clap::Args, Debug)]
pub struct ScaleArgs {
    /// Process counts to run, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub processes: Vec<usize>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Seconds of measured load per run.
    #[arg(long, default_value_t = 15)]
    pub duration_secs: u64,
    #[command(flatten)]
    pub services: Services,
}

/// Events the projections have applied in all.
async fn applied(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    let n: Option<i64> =
        sqlx::query_scalar("SELECT sum(events_applied)::bigint FROM projection_checkpoints")
            .fetch_one(pool)
            .await?;
    Ok(n.unwrap_or(0))
}

/// Whether every projection has applied the last event of its aggregate type.
async fn caught_up(pool: &sqlx::PgPool) -> anyhow::Result<bool> {
    for p in vbin_projections::all() {
        let behind: bool = sqlx::query_scalar(
            "SELECT COALESCE((SELECT max(global_position) FROM events WHERE aggregate_type = $1), 0) \
             > COALESCE((SELECT global_position FROM projection_checkpoints WHERE name = $2), 0)",
        )
        .bind(p.aggregate_type)
        .bind(p.name)
        .fetch_one(pool)
        .await?;
        if behind {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One run with `n` processes.
async fn run_with(a: &ScaleArgs, n: usize) -> anyhow::Result<Value> {
    // Everything but the projections in this process (its command API only makes the
    // customer); the load goes to the children.
    let parts: Vec<Part> = Part::ALL
        .into_iter()
        .filter(|p| *p != Part::Projections)
        .collect();
    let b = Arc::new(Bench::start(&a.services, a.clients, &parts).await?);
    let pool_size = (a.clients / n + 8).min(64) as u32;
    let mut children = Vec::new();
    for _ in 0..n {
        children.push(
            serve_child(
                &b,
                "command-api,projections",
                &a.services.redis_url,
                pool_size,
            )
            .await?,
        );
    }
    let urls: Arc<Vec<String>> = Arc::new(
        children
            .iter()
            .map(|c| format!("http://{}", c.url))
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let op = {
        let (b, urls, next) = (b.clone(), urls.clone(), next.clone());
        move || {
            let (b, urls, next) = (b.clone(), urls.clone(), next.clone());
            async move {
                let base = &urls[next.fetch_add(1, Ordering::Relaxed) % urls.len()];
                let (id, created) = b.create_call_at(base).await?;
                let hung = b.hangup_at(base, &id).await?;
                Ok(vec![created, hung])
            }
        }
    };
    let pool = sqlx::PgPool::connect(&b.database_url()).await?;
    eprintln!("{n} process(es): warming up...");
    drive(a.clients, Duration::from_secs(2), op.clone()).await;
    let cpu0: Vec<Duration> = children
        .iter()
        .map(|c| cpu_time(c.child.0.id()))
        .collect::<Result<_, _>>()?;
    let applied0 = applied(&pool).await?;
    eprintln!("{n} process(es): measuring for {} s...", a.duration_secs);
    let load = drive(a.clients, Duration::from_secs(a.duration_secs), op).await;
    let cpu: Vec<f64> = children
        .iter()
        .zip(&cpu0)
        .map(|(c, t0)| Ok((cpu_time(c.child.0.id())? - *t0).as_secs_f64()))
        .collect::<anyhow::Result<_>>()?;
    let applied1 = applied(&pool).await?;
    // How long the projections take to reach the log's head once the load stops.
    let stopped = Instant::now();
    let drained = loop {
        if caught_up(&pool).await? {
            break stopped.elapsed();
        }
        if stopped.elapsed() > Duration::from_secs(120) {
            bail!("the projections did not catch up within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    pool.close().await;
    drop(children);
    let b = Arc::try_unwrap(b).ok().context("bench still in use")?;
    let db = b.db.clone();
    b.running.shutdown().await;
    crate::drop_database(&a.services.pg, &db).await;
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let cpu_total: f64 = cpu.iter().sum();
    Ok(json!({
        "processes": n,
        "commands": load.ops,
        "command_errors": load.errors,
        "commands_per_sec": rate(&load).round(),
        "command_p50_ms": ms(&load.hist, 0.5),
        "command_p99_ms": ms(&load.hist, 0.99),
        "cpu_secs_per_process": cpu.iter().map(|c| (c * 100.0).round() / 100.0).collect::<Vec<_>>(),
        "commands_per_cpu_sec": (load.ops as f64 / cpu_total.max(1e-9)).round(),
        "projection_events_per_sec": ((applied1 - applied0) as f64 / load.elapsed.as_secs_f64()).round(),
        "projections_caught_up_ms": drained.as_millis() as u64,
    }))
}

/// Runs the benchmark.
pub async fn run(a: &ScaleArgs) -> anyhow::Result<Value> {
    let mut runs = Vec::new();
    for &n in &a.processes {
        if n == 0 {
            bail!("--processes: at least one process");
        }
        runs.push(run_with(a, n).await?);
    }
    let base = runs
        .first()
        .and_then(|r| r["commands_per_sec"].as_f64())
        .unwrap_or(0.0);
    for r in &mut runs {
        let c = r["commands_per_sec"].as_f64().unwrap_or(0.0);
        r["ratio_to_first"] = json!(((c / base.max(1e-9)) * 1000.0).round() / 1000.0);
    }
    Ok(json!({
        "benchmark": "scale",
        "parts_scaled": "command-api,projections",
        "clients": a.clients,
        "duration_secs": a.duration_secs,
        "machine_cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "runs": runs,
    }))
}
