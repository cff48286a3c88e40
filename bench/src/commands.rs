//! `vbin bench commands`: the write path against its peers, in one run on one machine.
//!
//! - **Runs over HTTP.** The platform runs in this process: the command API alone, then every
//!   part. The load (N clients creating and hanging up calls) comes from a child process
//!   (`vbin bench load`), so it does not take the server's CPU time or its runtime. Per run:
//!   commands/s, latency, and the CPU time per command of each process (vbin, the load
//!   generator, Postgres, NATS).
//! - **Stores, without HTTP.** The events the whole-platform run recorded are appended again,
//!   by the same number of clients, through: a plain one-INSERT-per-event loop into a copy of
//!   the events table; cqrs-es's own Postgres store (postgres-es); and vbin's store
//!   (`PgEventRepository::append`, group commit). Beside them, the raw limit: single-row
//!   INSERTs of a narrow row.
//! - **Profile** (`--profile`): `perf record` of this process during the whole-platform run,
//!   its samples split by the part of vbin they were spent in (see [`crate::profile`]).
//!
//! With `--before`, both HTTP runs are repeated without group commit (the write path before
//! issue 23), so one report shows before and after.

use crate::{create_call, drive, hangup, profile, rate, Bench, Load, Services};
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use uuid::Uuid;
use vbin_platform::Part;

/// `vbin bench commands` options.
#[derive(clap::Args, Debug)]
pub struct CommandsArgs {
    /// Concurrent clients (and connections of each store baseline).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Seconds of measured load of each run.
    #[arg(long, default_value_t = 15)]
    pub duration_secs: u64,
    /// Also run both HTTP runs without group commit (one commit per command).
    #[arg(long)]
    pub before: bool,
    /// Record a perf profile of the whole-platform run and split it by part (needs `perf`).
    #[arg(long)]
    pub profile: bool,
    /// Where the profile's perf data goes.
    #[arg(long, default_value = "bench-out")]
    pub profile_dir: std::path::PathBuf,
    #[command(flatten)]
    pub services: Services,
}

/// `vbin bench load` options (the load generator of `bench commands`, run as a child).
#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// The command API (`http://host:port`).
    #[arg(long)]
    pub base: String,
    /// A customer's bearer token.
    #[arg(long)]
    pub token: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u64,
    /// Seconds of measured load.
    #[arg(long, default_value_t = 15)]
    pub duration_secs: u64,
}

/// The load generator: prints `measuring` when the measured window starts, then one line of
/// JSON with what it measured.
pub async fn load(a: &LoadArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(a.clients * 2)
        .build()?;
    let op = {
        let (http, base, token) = (http.clone(), a.base.clone(), a.token.clone());
        move || {
            let (http, base, token) = (http.clone(), base.clone(), token.clone());
            async move {
                let (id, created) = create_call(&http, &base, &token).await?;
                let hung = hangup(&http, &base, &token, &id).await?;
                Ok(vec![created, hung])
            }
        }
    };
    measure_as_child(
        a.clients,
        Duration::from_secs(a.warmup_secs),
        Duration::from_secs(a.duration_secs),
        op,
    )
    .await
}

/// The measuring side of a load generator run as a child: `op` by `clients` for `warmup`, then
/// `measuring` on stdout, then `dur` measured, then one line of JSON (operations, errors,
/// seconds, p50/p99 in µs, the generator's own CPU seconds) for the parent to read.
pub(crate) async fn measure_as_child<F, Fut>(
    clients: usize,
    warmup: Duration,
    dur: Duration,
    op: F,
) -> anyhow::Result<()>
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<Vec<Duration>>> + Send,
{
    drive(clients, warmup, op.clone()).await;
    println!("measuring");
    let cpu0 = cpu_time(std::process::id())?;
    let l = drive(clients, dur, op).await;
    let cpu = cpu_time(std::process::id())? - cpu0;
    println!(
        "{}",
        json!({
            "ops": l.ops,
            "errors": l.errors,
            "elapsed_secs": l.elapsed.as_secs_f64(),
            "p50_us": l.hist.value_at_quantile(0.5),
            "p99_us": l.hist.value_at_quantile(0.99),
            "cpu_secs": cpu.as_secs_f64(),
        })
    );
    Ok(())
}

/// CPU time (user + system) process `pid` has used so far.
pub(crate) fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at its closing ')'.
    let rest = stat.rsplit_once(')').context("/proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// CPU time used so far by every process named `comm` (e.g. all of Postgres's backends).
fn cpu_of_all(comm: &str) -> Duration {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == comm)
        })
        .filter_map(|pid| cpu_time(pid).ok())
        .sum()
}

/// CPU time of the processes the runs are made of, to subtract a window's start from its end.
#[derive(Clone, Copy)]
struct CpuMark {
    vbin: Duration,
    postgres: Duration,
    nats: Duration,
}

impl CpuMark {
    fn now() -> anyhow::Result<Self> {
        Ok(Self {
            vbin: cpu_time(std::process::id())?,
            postgres: cpu_of_all("postgres"),
            nats: cpu_of_all("nats-server"),
        })
    }
}

/// What one HTTP run measured.
struct HttpRun {
    load: Value,
    commands_per_sec: f64,
    p99_ms: f64,
    profile: Option<Value>,
}

/// One HTTP run: the platform with `parts` in this process, the load from a child.
async fn http_run(
    a: &CommandsArgs,
    name: &str,
    parts: &[Part],
    group_commit: bool,
    keep_db: bool,
) -> anyhow::Result<(HttpRun, Option<String>)> {
    let b = Bench::start_with(&a.services, a.clients, parts, group_commit).await?;
    eprintln!(
        "{name}: {} clients for {} s (after 2 s of warm-up)...",
        a.clients, a.duration_secs
    );
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["bench", "load", "--base", &b.base, "--token", &b.token])
        .args(["--clients", &a.clients.to_string()])
        .args(["--duration-secs", &a.duration_secs.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the load generator")?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("no stdout")?).lines();
    let first = lines.next_line().await?;
    if first.as_deref() != Some("measuring") {
        bail!("the load generator stopped: {first:?}");
    }
    let cpu0 = CpuMark::now()?;
    let t0 = Instant::now();
    let recording = if a.profile && parts.len() > 1 {
        Some(profile::record(
            std::process::id(),
            a.duration_secs.saturating_sub(1).max(1),
            &a.profile_dir.join(format!("commands-{name}.perf.data")),
        )?)
    } else {
        None
    };
    let result = lines
        .next_line()
        .await?
        .context("no result from the load generator")?;
    let cpu1 = CpuMark::now()?;
    let window = t0.elapsed().as_secs_f64();
    child.wait().await?;
    let load: Value = serde_json::from_str(&result)?;
    let ops = load["ops"].as_f64().unwrap_or(0.0);
    let commands_per_sec = ops / load["elapsed_secs"].as_f64().unwrap_or(1.0);
    let per_command = |d: Duration| (d.as_secs_f64() * 1e6 / ops.max(1.0)).round();
    let vbin_us = per_command(cpu1.vbin - cpu0.vbin);
    let profile = match recording {
        Some(r) => Some(r.split(vbin_us).await?),
        None => None,
    };
    let db = b.db.clone();
    let pg = b.pg.clone();
    let nats_server = crate::nats_version(&b.nats_url).await;
    b.running.shutdown().await;
    let kept = if keep_db {
        Some(db)
    } else {
        crate::drop_database(&pg, &db).await;
        None
    };
    let p99_ms = load["p99_us"].as_f64().unwrap_or(0.0) / 1000.0;
    let run = json!({
        "parts": format!("{parts:?}"),
        "group_commit": group_commit,
        "nats_server_version": nats_server,
        "commands": ops,
        "command_errors": load["errors"],
        "commands_per_sec": commands_per_sec.round(),
        "command_p50_ms": load["p50_us"].as_f64().unwrap_or(0.0) / 1000.0,
        "command_p99_ms": p99_ms,
        "cpu_us_per_command": {
            "vbin": vbin_us,
            "load_generator": per_command(Duration::from_secs_f64(load["cpu_secs"].as_f64().unwrap_or(0.0))),
            "postgres": per_command(cpu1.postgres - cpu0.postgres),
            "nats": per_command(cpu1.nats - cpu0.nats),
        },
        "machine_cpu_busy": (((cpu1.vbin - cpu0.vbin + cpu1.postgres - cpu0.postgres + cpu1.nats - cpu0.nats).as_secs_f64()
            + load["cpu_secs"].as_f64().unwrap_or(0.0)) / window / cores() as f64 * 100.0).round() / 100.0,
    });
    Ok((
        HttpRun {
            load: run,
            commands_per_sec,
            p99_ms,
            profile,
        },
        kept,
    ))
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// An event as recorded, to append again through each store.
#[derive(Clone, sqlx::FromRow)]
pub(crate) struct Recorded {
    pub customer_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
    pub resource: Value,
}

/// At most this many distinct events are kept in memory; the appenders go round them again
/// with other aggregate ids. Only the calls' events are replayed: the customer's and billing
/// account's also write lookup tables (a username is unique), which a replay under another id
/// would collide on.
const MAX_EVENTS: i64 = 50_000;

async fn recorded_events(pool: &sqlx::PgPool) -> anyhow::Result<Vec<Recorded>> {
    let rows: Vec<Recorded> = sqlx::query_as(
        "SELECT customer_id, aggregate_type, aggregate_id, sequence, event_type, event_version, \
                payload, metadata, resource FROM events WHERE aggregate_type = 'call' \
         ORDER BY global_position LIMIT $1",
    )
    .bind(MAX_EVENTS)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        bail!("the run recorded no events");
    }
    Ok(rows)
}

/// The events handed out one by one to the appending clients; each round after the first
/// gives every aggregate another id, so nothing collides.
#[derive(Clone)]
pub(crate) struct Feed {
    events: Arc<Vec<Recorded>>,
    next: Arc<AtomicUsize>,
}

impl Feed {
    fn next(&self) -> (Recorded, Uuid) {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let (round, e) = (i / self.events.len(), &self.events[i % self.events.len()]);
        // Another id per round, unrelated to the others (v7 ids of one millisecond differ in
        // their last bits only, so flipping bits would collide).
        let id = match round {
            0 => e.aggregate_id,
            r => Uuid::new_v5(&e.aggregate_id, &r.to_le_bytes()),
        };
        (e.clone(), id)
    }
}

/// Appends `feed`'s events one per operation through `append` with `clients` clients.
pub(crate) async fn append_load<F, Fut>(
    clients: usize,
    dur: Duration,
    feed: Feed,
    append: F,
) -> Load
where
    F: Fn(Recorded, Uuid) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let append = Arc::new(append);
    drive(clients, dur, move || {
        let (feed, append) = (feed.clone(), append.clone());
        async move {
            let (e, id) = feed.next();
            let what = format!("{} {id} #{}", e.aggregate_type, e.sequence);
            let t0 = Instant::now();
            append(e, id).await.with_context(|| what)?;
            Ok(vec![t0.elapsed()])
        }
    })
    .await
}

/// How long a store run may go past its measured time (its clients finishing the appends in
/// flight) before it is called stuck.
const STORE_GRACE: Duration = Duration::from_secs(60);

/// `run`, one store run of `dur`, or an error naming what the database was doing when it
/// did not end within [`STORE_GRACE`] after `dur` (a run of vbin's store once never ended;
/// a hang should say where it is rather than wait for an outer timeout).
async fn guarded(
    what: &str,
    dur: Duration,
    db: &sqlx::PgPool,
    run: impl std::future::Future<Output = Load>,
) -> anyhow::Result<Load> {
    match tokio::time::timeout(dur + STORE_GRACE, run).await {
        Ok(load) => Ok(load),
        Err(_) => {
            let lines: Vec<String> = sqlx::query_scalar(
                "SELECT format('  %s %s:%s %s s: %s', state, wait_event_type, wait_event, \
                               round(extract(epoch FROM now() - query_start)::numeric, 1), \
                               left(query, 160)) \
                 FROM pg_stat_activity WHERE datname = current_database() \
                   AND pid <> pg_backend_pid() ORDER BY query_start",
            )
            .fetch_all(db)
            .await
            .unwrap_or_default();
            bail!(
                "{what}: the run did not end {} s after its {} s (an append never returned); \
                 the database's sessions:\n{}",
                STORE_GRACE.as_secs(),
                dur.as_secs(),
                lines.join("\n")
            )
        }
    }
}

fn store_figures(l: &Load) -> Value {
    let ms = |q: f64| l.hist.value_at_quantile(q) as f64 / 1000.0;
    json!({
        "events": l.ops,
        "errors": l.errors,
        "events_per_sec": rate(l).round(),
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
    })
}

/// The store-level runs on `events`, each into fresh tables of database `db`.
async fn store_runs(
    a: &CommandsArgs,
    db_url: &str,
    events: Vec<Recorded>,
) -> anyhow::Result<Value> {
    let dur = Duration::from_secs(a.duration_secs);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(a.clients as u32 + 4)
        .connect(db_url)
        .await?;
    // A connection of its own to look at the others if a run gets stuck.
    let watch = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(db_url)
        .await?;
    let feed = |events: &Arc<Vec<Recorded>>| Feed {
        events: events.clone(),
        next: Arc::new(AtomicUsize::new(0)),
    };
    let events = Arc::new(events);

    eprintln!(
        "stores: plain INSERT per event for {} s...",
        a.duration_secs
    );
    sqlx::query("CREATE TABLE plain_events (LIKE events INCLUDING ALL)")
        .execute(&pool)
        .await?;
    let plain = {
        let pool = pool.clone();
        let run = append_load(a.clients, dur, feed(&events), move |e, id| {
            let pool = pool.clone();
            async move {
                sqlx::query(
                    "INSERT INTO plain_events (event_id, customer_id, aggregate_type, aggregate_id, sequence, \
                         event_type, event_version, payload, metadata, resource) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(Uuid::now_v7())
                .bind(e.customer_id)
                .bind(&e.aggregate_type)
                .bind(id)
                .bind(e.sequence)
                .bind(&e.event_type)
                .bind(&e.event_version)
                .bind(&e.payload)
                .bind(&e.metadata)
                .bind(&e.resource)
                .execute(&pool)
                .await?;
                Ok(())
            }
        });
        guarded("plain INSERT per event", dur, &watch, run).await?
    };

    eprintln!("stores: cqrs-es's postgres-es for {} s...", a.duration_secs);
    let peer = {
        let store = Arc::new(crate::peer::PostgresEs::connect(db_url, a.clients).await?);
        let load = {
            let store = store.clone();
            let run = append_load(a.clients, dur, feed(&events), move |e, id| {
                let store = store.clone();
                async move {
                    store
                        .append(cqrs_es::persist::SerializedEvent {
                            aggregate_id: id.to_string(),
                            sequence: e.sequence as usize,
                            aggregate_type: e.aggregate_type,
                            event_type: e.event_type,
                            event_version: e.event_version,
                            payload: e.payload,
                            metadata: e.metadata,
                        })
                        .await
                }
            });
            guarded("cqrs-es's postgres-es", dur, &watch, run).await?
        };
        if let Ok(store) = Arc::try_unwrap(store) {
            store.close().await;
        }
        load
    };

    eprintln!("stores: vbin's event store for {} s...", a.duration_secs);
    let vbin_store = {
        let repo = vbin_eventlog::PgEventRepository::new(pool.clone());
        let run = append_load(a.clients, dur, feed(&events), move |e, id| {
            let repo = repo.clone();
            async move {
                // The log's metadata object, read back as the fields a command carries.
                let field = |k: &str| {
                    e.metadata
                        .get(k)
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_string()
                };
                let meta = vbin_eventlog::CommandMeta {
                    actor: field("actor"),
                    request_id: field("request_id"),
                    ..Default::default()
                };
                repo.append(
                    &e.aggregate_type,
                    id,
                    e.customer_id,
                    e.sequence as usize - 1,
                    vec![vbin_eventlog::NewEvent {
                        event_type: e.event_type,
                        event_version: e.event_version,
                        payload: e.payload,
                        resource: e.resource,
                    }],
                    &meta,
                    None,
                )
                .await?;
                Ok(())
            }
        });
        guarded("vbin's event store", dur, &watch, run).await?
    };
    if tokio::time::timeout(STORE_GRACE, pool.close())
        .await
        .is_err()
    {
        bail!("the store runs' connections were not all given back within {STORE_GRACE:?}");
    }
    watch.close().await;
    Ok(json!({
        "plain_insert_per_event": store_figures(&plain),
        "postgres_es": store_figures(&peer),
        "vbin_store": store_figures(&vbin_store),
    }))
}

/// The raw INSERT baseline, measured next to the runs it is the baseline of.
///
/// This machine's speed moves by tens of percent from one minute to the next; a baseline
/// measured once, a minute away from a run, made the run's ratio move as much. Each HTTP run is
/// bracketed: a baseline right before it and right after it (the one between the two runs
/// serves both), and its ratio is taken against their mean.
struct Baselines {
    url: String,
    db: String,
    runs: Vec<Load>,
}

impl Baselines {
    async fn start(a: &CommandsArgs) -> anyhow::Result<Self> {
        let (db, url, pool) = crate::fresh_database(&a.services).await?;
        pool.close().await;
        Ok(Self {
            url,
            db,
            runs: Vec::new(),
        })
    }

    /// Measures one more baseline; its rate.
    async fn measure(&mut self, a: &CommandsArgs) -> anyhow::Result<f64> {
        eprintln!("raw INSERT baseline for {} s...", a.duration_secs);
        let l =
            crate::pg_insert_baseline(&self.url, a.clients, Duration::from_secs(a.duration_secs))
                .await?;
        let r = rate(&l);
        self.runs.push(l);
        Ok(r)
    }

    /// All the baselines as one: their mean rate, and the p99 of all their inserts.
    fn overall(&self) -> (f64, Histogram<u64>) {
        let mean = self.runs.iter().map(rate).sum::<f64>() / self.runs.len().max(1) as f64;
        let mut hist = Histogram::<u64>::new(3).expect("histogram");
        for l in &self.runs {
            hist.add(&l.hist).expect("same histogram bounds");
        }
        (mean, hist)
    }

    async fn drop(self, a: &CommandsArgs) {
        crate::drop_database(&a.services.pg, &self.db).await;
    }
}

/// Runs the benchmark.
pub async fn run(a: &CommandsArgs) -> anyhow::Result<Value> {
    let api_parts = [Part::CommandApi];
    let mut runs = serde_json::Map::new();
    let mut baselines = Baselines::start(a).await?;
    let before_api = baselines.measure(a).await?;
    let (api, _) = http_run(a, "api", &api_parts, true, false).await?;
    let between = baselines.measure(a).await?;
    let (platform, db) = http_run(a, "platform", &Part::ALL, true, true).await?;
    let after_platform = baselines.measure(a).await?;
    let api_raw = (before_api + between) / 2.0;
    let platform_raw = (between + after_platform) / 2.0;
    let db = db.context("the platform run's database")?;
    let db_url = format!("{}/{db}", a.services.pg.trim_end_matches('/'));
    let mut before = None;
    if a.before {
        let (api_before, _) = http_run(a, "api-before", &api_parts, false, false).await?;
        let (platform_before, _) = http_run(a, "platform-before", &Part::ALL, false, false).await?;
        before = Some((api_before, platform_before));
    }

    let events = {
        let pool = sqlx::PgPool::connect(&db_url).await?;
        let events = recorded_events(&pool).await?;
        pool.close().await;
        events
    };
    crate::drop_database(&a.services.pg, &db).await;
    // The stores append into a fresh, migrated database (vbin's store needs its tables).
    let (store_db, store_url, migrated) = crate::fresh_database(&a.services).await?;
    migrated.close().await;
    let stores = store_runs(a, &store_url, events).await;
    eprintln!("stores: done; dropping their database");
    crate::drop_database(&a.services.pg, &store_db).await;
    let stores = stores?;

    let (raw, raw_hist) = baselines.overall();
    let raw_runs: Vec<f64> = baselines.runs.iter().map(|l| rate(l).round()).collect();
    baselines.drop(a).await;
    let raw_p99 = raw_hist.value_at_quantile(0.99) as f64 / 1000.0;
    let ratio_to = |x: f64, raw: f64| (x / raw.max(1e-9) * 1000.0).round() / 1000.0;
    let ratio = |x: f64| ratio_to(x, raw);

    runs.insert("api".into(), api.load.clone());
    runs.insert("platform".into(), platform.load.clone());
    if let Some((a, p)) = &before {
        runs.insert("api_before".into(), a.load.clone());
        runs.insert("platform_before".into(), p.load.clone());
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(json!({
        "benchmark": "commands",
        "clients": a.clients,
        "duration_secs": a.duration_secs,
        "machine_cores": cores(),
        "runs": runs,
        "stores": stores,
        "profile": platform.profile,
        "baseline_pg_inserts_per_sec": raw.round(),
        // Before the command API's run, between the two runs, after the platform's.
        "baseline_runs_pg_inserts_per_sec": raw_runs,
        "baseline_insert_p50_ms": ms(&raw_hist, 0.5),
        "baseline_insert_p99_ms": raw_p99,
        // Headlines: the whole platform (as before issue 23) and the command API alone.
        "commands_per_sec": platform.commands_per_sec.round(),
        "command_p99_ms": platform.p99_ms,
        "ratio": ratio_to(platform.commands_per_sec, platform_raw),
        "baseline_platform_pg_inserts_per_sec": platform_raw.round(),
        "api_commands_per_sec": api.commands_per_sec.round(),
        "api_command_p99_ms": api.p99_ms,
        "api_ratio": ratio_to(api.commands_per_sec, api_raw),
        "baseline_api_pg_inserts_per_sec": api_raw.round(),
        "api_p99_ratio": (api.p99_ms / raw_p99.max(1e-9) * 100.0).round() / 100.0,
        "before": before.as_ref().map(|(a, p)| json!({
            "api_ratio": ratio(a.commands_per_sec),
            "ratio": ratio(p.commands_per_sec),
        })),
        "target_api_ratio": 0.5,
        "target_ratio": 0.25,
        "target_p99_ratio": 3.0,
    }))
}
