//! `vbin bench ...`: load generators that measure the platform against a baseline taken in
//! the same run on the same machine, so the figure that matters is the ratio (VMs are noisy).

use crate::{Config, Part};
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which benchmark.
#[derive(clap::Subcommand, Debug)]
pub enum Which {
    /// N concurrent clients creating and hanging up calls over HTTP, against the raw Postgres
    /// single-row INSERT rate of N connections as baseline.
    Commands(CommandsArgs),
}

/// `vbin bench commands` options.
#[derive(clap::Args, Debug)]
pub struct CommandsArgs {
    /// Concurrent clients (and baseline connections).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Seconds of measured load for each of the two runs.
    #[arg(long, default_value_t = 15)]
    pub duration_secs: u64,
    /// Postgres server URL (without database); a fresh database is created and dropped.
    #[arg(
        long,
        env = "VBIN_BENCH_PG",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pub pg: String,
    /// NATS URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Redis URL.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Run only these platform parts during the load (diagnostics; default: all, as in
    /// production, so relay and carrier work is part of the measured cost).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Part>,
}

/// Runs a benchmark.
pub async fn run(which: Which) -> anyhow::Result<()> {
    match which {
        Which::Commands(a) => {
            let r = commands(&a).await?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            if let Some(p) = &a.json {
                std::fs::write(p, serde_json::to_vec_pretty(&r)?)?;
            }
            Ok(())
        }
    }
}

struct Load {
    ops: u64,
    errors: u64,
    hist: Histogram<u64>,
    elapsed: Duration,
}

/// Runs `clients` copies of `op` for `dur`, recording each op's latency (an op may count as
/// several operations: it returns how many it did).
async fn drive<F, Fut>(clients: usize, dur: Duration, op: F) -> Load
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<Vec<Duration>>> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (op, stop) = (op.clone(), stop.clone());
            tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new(3).expect("histogram");
                let (mut ops, mut errors) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    match op().await {
                        Ok(lats) => {
                            for l in lats {
                                ops += 1;
                                let _ = hist.record(l.as_micros() as u64);
                            }
                        }
                        Err(e) => {
                            errors += 1;
                            if errors <= 3 {
                                eprintln!("bench op failed: {e:#}");
                            }
                        }
                    }
                }
                (ops, errors, hist)
            })
        })
        .collect();
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    let mut load = Load {
        ops: 0,
        errors: 0,
        hist: Histogram::new(3).expect("histogram"),
        elapsed: Duration::ZERO,
    };
    for h in handles {
        if let Ok((o, e, hist)) = h.await {
            load.ops += o;
            load.errors += e;
            let _ = load.hist.add(hist);
        }
    }
    load.elapsed = started.elapsed();
    load
}

fn rate(l: &Load) -> f64 {
    l.ops as f64 / l.elapsed.as_secs_f64()
}

async fn commands(a: &CommandsArgs) -> anyhow::Result<Value> {
    let db = format!(
        "vbin_bench_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let database_url = format!("{}/{db}", a.pg.trim_end_matches('/'));
    let cfg = Config {
        database_url: database_url.clone(),
        nats_url: a.nats_url.clone(),
        redis_url: a.redis_url.clone(),
        http_addr: "127.0.0.1:0".parse()?,
        admin_token: Some(format!("bench-{}", uuid::Uuid::new_v4())),
        jwt_secret: None,
        db_pool: (a.clients as u32 + 8).min(64),
    };
    let parts = if a.only.is_empty() {
        Part::ALL.to_vec()
    } else {
        a.only.clone()
    };
    let running = crate::start(&cfg, &parts).await?;
    let base = format!("http://{}", running.http_addr.context("no http address")?);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(a.clients)
        .build()?;
    let user = format!("bench{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let r = http
        .post(format!("{base}/v1.0/customers"))
        .bearer_auth(&running.admin_token)
        .json(&json!({"name": "bench", "username": user, "password": "bench-password"}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!(
            "creating the bench customer: {} {}",
            r.status(),
            r.text().await?
        );
    }
    let token: Value = http
        .post(format!("{base}/auth/login"))
        .json(&json!({"username": user, "password": "bench-password"}))
        .send()
        .await?
        .json()
        .await?;
    let token = token["token"]
        .as_str()
        .context("login gave no token")?
        .to_string();

    let call_once = {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        move || {
            let (http, base, token) = (http.clone(), base.clone(), token.clone());
            async move {
                let t0 = Instant::now();
                let r = http
                    .post(format!("{base}/v1.0/calls"))
                    .bearer_auth(&token)
                    .json(
                        &json!({"source": "+15550001000", "destinations": ["+15550002000"],
                                   "variables": {"talk_seconds": 60}}),
                    )
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!("create call: {}", r.status());
                }
                let v: Value = r.json().await?;
                let created = t0.elapsed();
                let id = v["calls"][0]["id"]
                    .as_str()
                    .context("no call id")?
                    .to_string();
                let t1 = Instant::now();
                let r = http
                    .post(format!("{base}/v1.0/calls/{id}/hangup"))
                    .bearer_auth(&token)
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!("hangup: {}", r.status());
                }
                Ok(vec![created, t1.elapsed()])
            }
        }
    };
    eprintln!("warming up...");
    drive(a.clients, Duration::from_secs(2), call_once.clone()).await;
    eprintln!(
        "measuring commands for {} s with {} clients...",
        a.duration_secs, a.clients
    );
    let cmd = drive(a.clients, Duration::from_secs(a.duration_secs), call_once).await;
    running.shutdown().await;

    // Baseline: raw single-row INSERTs (autocommit) of a similar row, same concurrency.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(a.clients as u32)
        .connect(&database_url)
        .await?;
    sqlx::query("CREATE TABLE bench_insert (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, payload jsonb NOT NULL)")
        .execute(&pool)
        .await?;
    let payload = json!({"type": "call_created", "source": "+15550001000", "destination": "+15550002000",
                         "variables": {"talk_seconds": 60}, "dial_timeout_ms": 30000});
    eprintln!(
        "measuring the Postgres INSERT baseline for {} s...",
        a.duration_secs
    );
    let ins = {
        let pool = pool.clone();
        drive(a.clients, Duration::from_secs(a.duration_secs), move || {
            let (pool, payload) = (pool.clone(), payload.clone());
            async move {
                let t0 = Instant::now();
                sqlx::query("INSERT INTO bench_insert (payload) VALUES ($1)")
                    .bind(&payload)
                    .execute(&pool)
                    .await?;
                Ok(vec![t0.elapsed()])
            }
        })
        .await
    };
    pool.close().await;
    drop_database(&a.pg, &db).await;

    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(json!({
        "benchmark": "commands",
        "clients": a.clients,
        "parts": format!("{parts:?}"),
        "duration_secs": a.duration_secs,
        "commands": cmd.ops,
        "command_errors": cmd.errors,
        "commands_per_sec": rate(&cmd).round(),
        "command_p50_ms": ms(&cmd.hist, 0.5),
        "command_p99_ms": ms(&cmd.hist, 0.99),
        "baseline_pg_inserts_per_sec": rate(&ins).round(),
        "baseline_insert_p50_ms": ms(&ins.hist, 0.5),
        "baseline_insert_p99_ms": ms(&ins.hist, 0.99),
        "ratio": ((rate(&cmd) / rate(&ins)) * 1000.0).round() / 1000.0,
        "target_ratio": 0.5,
    }))
}

async fn drop_database(server: &str, db: &str) {
    let url = format!("{}/postgres", server.trim_end_matches('/'));
    if let Ok(pool) = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
    {
        let sql = format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)");
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await {
            eprintln!("could not drop {db}: {e}");
        }
    }
}
