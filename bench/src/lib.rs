//! `vbin bench ...`: load generators that measure the platform against a baseline taken in
//! the same run on the same machine, so the figure that matters is the ratio (VMs are noisy).

use vbin_platform::{Config, Part, Settings};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod ai;
mod all;
mod cli;
mod commands;
mod flows;
mod media;
mod mixing;
mod peer;
mod plot;
mod profile;
mod reads;
mod scale;
mod sip;
mod stt;
mod ws;

pub use cli::{run, Which};

/// Where the benchmarks find the services.
#[derive(clap::Args, Debug, Clone)]
pub struct Services {
    /// Postgres server URL (without database); a fresh database is created and dropped.
    #[arg(
        long,
        env = "VBIN_BENCH_PG",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pub pg: String,
    /// NATS URL. By default the benchmark starts its own nats-server (JetStream, temporary
    /// store): a platform must never share its stream with another one (another `vbin serve`
    /// on the same NATS would take half of the benchmark's events).
    #[arg(long)]
    pub nats_url: Option<String>,
    /// The nats-server program a benchmark starts without `--nats-url`. Default: the current
    /// NATS that `scripts/models` pins (2.10+, whose multi-filter consumers the platform
    /// uses), else `nats-server` on the PATH (Debian's 2.9).
    #[arg(long, env = "VBIN_BENCH_NATS_SERVER")]
    pub nats_server: Option<std::path::PathBuf>,
    /// Redis URL.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// The settings of the platform the benchmark starts in-process (its AudioSocket server
    /// always on a free port: a platform may be running on this machine).
    #[command(flatten)]
    pub platform: Settings,
}

/// Creates a customer (with a balance) through the admin API and logs in as it; returns its
/// id and token.
async fn new_customer(
    http: &reqwest::Client,
    base: &str,
    admin_token: &str,
) -> anyhow::Result<(uuid::Uuid, String)> {
    let user = format!("bench{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let r = http
        .post(format!("{base}/v1.0/customers"))
        .bearer_auth(admin_token)
        .json(
            &json!({"name": "bench", "username": user, "password": "bench-password",
            "balance_micros": 1_000_000_000_000i64}),
        )
        .send()
        .await?;
    if !r.status().is_success() {
        bail!(
            "creating a bench customer: {} {}",
            r.status(),
            r.text().await?
        );
    }
    let customer: Value = r.json().await?;
    let id = customer["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("customer without id")?;
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
    Ok((id, token))
}

/// A nats-server started for one benchmark run (killed and its store removed on drop).
struct PrivateNats {
    child: std::process::Child,
    dir: std::path::PathBuf,
    url: String,
}

impl PrivateNats {
    fn start(program: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(format!("vbin-bench-nats-{port}"));
        std::fs::create_dir_all(&dir)?;
        let pinned = vbin_media::models::pinned_nats_server();
        let program = match program {
            Some(p) => p.to_path_buf(),
            None if pinned.exists() => pinned,
            None => "nats-server".into(),
        };
        let child = std::process::Command::new(&program)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context(
                "starting nats-server (install it with ./scripts/services, or pass --nats-url)",
            )?;
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(10) {
                bail!("nats-server did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            child,
            dir,
            url: format!("nats://127.0.0.1:{port}"),
        })
    }
}

/// The version of the NATS server at `url` (as its INFO says), for a report.
async fn nats_version(url: &str) -> String {
    match async_nats::connect(url).await {
        Ok(c) => c.server_info().version,
        Err(e) => format!("unknown ({e})"),
    }
}

/// A fresh, unique name for a benchmark's throwaway database.
fn bench_db_name() -> String {
    format!(
        "vbin_bench_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// A throwaway database for a benchmark that needs no platform: created, migrated; its name,
/// URL and a small pool.
async fn fresh_database(s: &Services) -> anyhow::Result<(String, String, sqlx::PgPool)> {
    let db = bench_db_name();
    let url = format!("{}/{db}", s.pg.trim_end_matches('/'));
    let pool = vbin_migrations::connect_and_migrate(&url, 4).await?;
    Ok((db, url, pool))
}

/// The NATS server of a benchmark: `--nats-url` if given, else a private one started for it
/// (kept running while the returned guard lives).
fn nats_of(s: &Services) -> anyhow::Result<(Option<PrivateNats>, String)> {
    Ok(match &s.nats_url {
        Some(u) => (None, u.clone()),
        None => {
            let n = PrivateNats::start(s.nats_server.as_deref())?;
            let url = n.url.clone();
            (Some(n), url)
        }
    })
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `vbin bench lag` options.
#[derive(clap::Args, Debug)]
pub struct LagArgs {
    /// Clients of the calibration run (as `bench commands`).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Seconds of the calibration run.
    #[arg(long, default_value_t = 8)]
    pub calibrate_secs: u64,
    /// Commands per second to offer instead of half the calibrated throughput.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of measured load.
    #[arg(long, default_value_t = 15)]
    pub duration_secs: u64,
    /// One call in this many is followed through the query API, polling every 2 ms (the
    /// polling is load too: following every call would measure the probe, not the platform).
    #[arg(long, default_value_t = 20)]
    pub sample_every: u64,
    #[command(flatten)]
    pub services: Services,
}

/// `vbin bench replay` options.
#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// Events in the generated log (4 per call).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    #[command(flatten)]
    pub services: Services,
}

/// `vbin bench relay` options.
#[derive(clap::Args, Debug)]
pub struct RelayArgs {
    /// Events in the generated backlog (4 per call).
    #[arg(long, default_value_t = 200_000)]
    pub events: u64,
    #[command(flatten)]
    pub services: Services,
}

/// `vbin bench campaign` options.
#[derive(clap::Args, Debug)]
pub struct CampaignArgs {
    /// Targets in the campaign's outdial (one destination each; every call is answered); one
    /// run per size, each on a fresh platform (the growth curve).
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    pub targets: Vec<u64>,
    /// The campaign's `max_concurrent_calls`.
    #[arg(long, default_value_t = 1000)]
    pub max_concurrent: u32,
    /// HTTP clients creating the targets (and baseline connections).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Seconds of the INSERT baseline.
    #[arg(long, default_value_t = 10)]
    pub baseline_secs: u64,
    #[command(flatten)]
    pub services: Services,
}

/// `vbin bench webhooks` options.
#[derive(clap::Args, Debug)]
pub struct WebhooksArgs {
    /// Calls to create (busy destinations: two events each, plus the customer's own).
    #[arg(long, default_value_t = 5_000)]
    pub calls: u64,
    /// Also deliver backlogs of these many calls (phase 1 only, one run each): the growth
    /// curve of the delivery rate.
    #[arg(long, value_delimiter = ',')]
    pub curve: Vec<u64>,
    /// HTTP clients creating calls (100 per request), and baseline clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Seconds of the HTTP POST baseline.
    #[arg(long, default_value_t = 5)]
    pub baseline_secs: u64,
    #[command(flatten)]
    pub services: Services,
}

fn report(r: Value, json: Option<&std::path::Path>) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(&r)?);
    if let Some(p) = json {
        std::fs::write(p, serde_json::to_vec_pretty(&r)?)?;
    }
    Ok(())
}

/// A platform started in-process on a throwaway database, with a customer logged in.
struct Bench {
    running: vbin_platform::Running,
    http: reqwest::Client,
    base: String,
    token: String,
    pg: String,
    db: String,
    _nats: Option<PrivateNats>,
    nats_url: String,
    settings: Settings,
}

/// The configuration of a platform a benchmark starts in-process: `s`'s settings on
/// `database_url` and `nats_url`, a fresh admin token, free ports for HTTP, AudioSocket and
/// SIP (a platform may be running on this machine).
fn platform_config(
    s: &Services,
    database_url: String,
    nats_url: String,
    db_pool: u32,
) -> anyhow::Result<Config> {
    let mut cfg = Config {
        database_url,
        nats_url,
        nats_namespace: None,
        stream_replicas: None,
        database_read_url: None,
        read_replica_wait_ms: 200,
        read_replica_max_lag_ms: 5000,
        redis_url: s.redis_url.clone(),
        http_addr: "127.0.0.1:0".parse()?,
        admin_token: Some(format!("bench-{}", uuid::Uuid::new_v4())),
        jwt_secret: None,
        seal_key: None,
        db_pool,
        group_commit: true,
        settings: s.platform.clone(),
    };
    cfg.settings.media.audiosocket_addr = "127.0.0.1:0".parse()?;
    // SIP needs the same port for UDP and TCP and its own address in Contact, so a free port
    // rather than 0.
    cfg.settings.sip.addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    Ok(cfg)
}

impl Bench {
    async fn start(s: &Services, clients: usize, parts: &[Part]) -> anyhow::Result<Self> {
        Self::start_with(s, clients, parts, true).await
    }

    /// [`Bench::start`] with group commit on or off.
    async fn start_with(
        s: &Services,
        clients: usize,
        parts: &[Part],
        group_commit: bool,
    ) -> anyhow::Result<Self> {
        let db = bench_db_name();
        let (nats, nats_url) = nats_of(s)?;
        let mut cfg = platform_config(
            s,
            format!("{}/{db}", s.pg.trim_end_matches('/')),
            nats_url,
            (clients as u32 + 8).min(64),
        )?;
        cfg.group_commit = group_commit;
        let running = vbin_platform::start(&cfg, parts).await?;
        let base = format!("http://{}", running.http_addr.context("no http address")?);
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(clients * 2)
            .build()?;
        let (_, token) = new_customer(&http, &base, &running.admin_token).await?;
        Ok(Self {
            running,
            http,
            base,
            token,
            pg: s.pg.clone(),
            db,
            _nats: nats,
            nats_url: cfg.nats_url.clone(),
            settings: cfg.settings,
        })
    }

    fn database_url(&self) -> String {
        format!("{}/{}", self.pg.trim_end_matches('/'), self.db)
    }

    /// Creates a call that talks for a minute; returns its id and the accept latency.
    async fn create_call(&self) -> anyhow::Result<(String, Duration)> {
        self.create_call_at(&self.base).await
    }

    /// [`Bench::create_call`] through the command API at `base` (`http://host:port`).
    async fn create_call_at(&self, base: &str) -> anyhow::Result<(String, Duration)> {
        create_call(&self.http, base, &self.token).await
    }

    /// Hangs a call up; returns the accept latency.
    async fn hangup(&self, id: &str) -> anyhow::Result<Duration> {
        self.hangup_at(&self.base, id).await
    }

    /// [`Bench::hangup`] through the command API at `base`.
    async fn hangup_at(&self, base: &str, id: &str) -> anyhow::Result<Duration> {
        hangup(&self.http, base, &self.token, id).await
    }

    /// Polls the query API until the call is visible with a status `done` accepts.
    async fn wait_visible(&self, id: &str, done: fn(&str) -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self
                .http
                .get(format!("{}/v1.0/calls/{id}", self.base))
                .bearer_auth(&self.token)
                .send()
                .await?;
            if r.status().is_success() {
                let v: Value = r.json().await?;
                if done(v["status"].as_str().unwrap_or_default()) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("call {id} not visible after 10 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn stop(self) {
        self.running.shutdown().await;
        drop_database(&self.pg, &self.db).await;
    }
}

/// Creates and hangs up one call per call (two commands), as in `bench commands`.
fn call_pair(
    b: &Arc<Bench>,
) -> impl Fn() -> std::pin::Pin<
    Box<dyn std::future::Future<Output = anyhow::Result<Vec<Duration>>> + Send>,
> + Send
       + Sync
       + Clone
       + 'static {
    let b = b.clone();
    move || {
        let b = b.clone();
        Box::pin(async move {
            let (id, created) = b.create_call().await?;
            let hung = b.hangup(&id).await?;
            Ok(vec![created, hung])
        })
    }
}

async fn lag(a: &LagArgs) -> anyhow::Result<Value> {
    let b = Arc::new(Bench::start(&a.services, a.clients, &Part::ALL).await?);
    let (calibrated, offered) = match a.rate {
        Some(r) => (None, r),
        None => {
            eprintln!(
                "calibrating: {} clients for {} s...",
                a.clients, a.calibrate_secs
            );
            drive(a.clients, Duration::from_secs(2), call_pair(&b)).await;
            let l = drive(
                a.clients,
                Duration::from_secs(a.calibrate_secs),
                call_pair(&b),
            )
            .await;
            (Some(rate(&l)), rate(&l) / 2.0)
        }
    };
    eprintln!(
        "offering {offered:.0} commands/s for {} s...",
        a.duration_secs
    );
    // Open loop: a call (two commands) starts every tick, whatever the latency.
    let calls_per_sec = offered / 2.0;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / calls_per_sec));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let lags = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new(3)?));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(a.duration_secs) {
        tick.tick().await;
        n += 1;
        let (b, lags, errors) = (b.clone(), lags.clone(), errors.clone());
        let sampled = n.is_multiple_of(a.sample_every.max(1));
        tasks.push(tokio::spawn(async move {
            let res: anyhow::Result<()> = async {
                let (id, _) = b.create_call().await?;
                let accepted = Instant::now();
                if sampled {
                    b.wait_visible(&id, |_| true).await?;
                    let _ = lags
                        .lock()
                        .map(|mut h| h.record(accepted.elapsed().as_micros() as u64));
                }
                b.hangup(&id).await?;
                let accepted = Instant::now();
                if sampled {
                    b.wait_visible(&id, |s| s == "canceled" || s == "completed")
                        .await?;
                    let _ = lags
                        .lock()
                        .map(|mut h| h.record(accepted.elapsed().as_micros() as u64));
                }
                Ok(())
            }
            .await;
            if let Err(e) = res {
                if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                    eprintln!("lag op failed: {e:#}");
                }
            }
        }));
    }
    let offered_secs = started.elapsed().as_secs_f64();
    futures::future::join_all(tasks).await;
    let achieved = (n * 2) as f64 / offered_secs;
    let h = lags
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| Histogram::new(3).expect("histogram"));
    Arc::try_unwrap(b)
        .ok()
        .context("bench still in use")?
        .stop()
        .await;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(json!({
        "benchmark": "lag",
        "calibrated_commands_per_sec": calibrated.map(f64::round),
        "offered_commands_per_sec": offered.round(),
        "achieved_commands_per_sec": achieved.round(),
        "samples": h.len(),
        "errors": errors.load(Ordering::Relaxed),
        "lag_p50_ms": ms(0.5),
        "lag_p95_ms": ms(0.95),
        "lag_p99_ms": ms(0.99),
        "lag_max_ms": h.max() as f64 / 1000.0,
        "target_p99_ms": 50,
    }))
}

async fn replay_bench(a: &ReplayArgs) -> anyhow::Result<Value> {
    let (db, _, pool) = fresh_database(&a.services).await?;
    let calls = a.events.div_ceil(4);
    eprintln!("generating {} events ({calls} calls)...", calls * 4);
    let t = Instant::now();
    // Realistic rows: the four events of a sandbox call with their payloads and resource views,
    // in batches (one transaction each), interleaved across the batch's calls.
    generate_calls(&pool, calls).await?;
    let generated = t.elapsed();
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await?;
    sqlx::query("VACUUM ANALYZE events").execute(&pool).await?;

    // Baseline: Postgres streaming the same rows out (COPY), nothing decoded.
    eprintln!("baseline: COPY of the log...");
    let t = Instant::now();
    let mut conn = pool.acquire().await?;
    let mut copy = conn
        .copy_out_raw("COPY (SELECT * FROM events ORDER BY tx_id, global_position) TO STDOUT")
        .await?;
    let mut bytes = 0usize;
    while let Some(chunk) = futures::StreamExt::next(&mut copy).await {
        bytes += chunk?.len();
    }
    drop(copy);
    drop(conn);
    let copy_secs = t.elapsed().as_secs_f64();

    eprintln!("replaying the calls projection...");
    let p = vbin_projections::by_name("calls").context("calls projection")?;
    let report = vbin_projections::replay::replay(
        &pool,
        None,
        p,
        &vbin_projections::replay::ReplayOptions::default(),
        |_| {},
    )
    .await?;
    pool.close().await;
    drop_database(&a.services.pg, &db).await;
    let baseline = events as f64 / copy_secs;
    Ok(json!({
        "benchmark": "replay",
        "events": events,
        "generate_secs": (generated.as_secs_f64() * 10.0).round() / 10.0,
        "replay_secs": (report.seconds * 10.0).round() / 10.0,
        "replay_events_per_sec": report.events_per_second.round(),
        "baseline_copy_events_per_sec": baseline.round(),
        "baseline_copy_mb": bytes / 1_000_000,
        "ratio": ((report.events_per_second / baseline) * 1000.0).round() / 1000.0,
        "verify_differences": report.verify.difference_count,
        "target_events_per_sec": 50_000,
    }))
}

/// Inserts `calls` generated calls (four events each) into the log of `pool`, in batches of
/// one transaction each.
async fn generate_calls(pool: &sqlx::PgPool, calls: u64) -> anyhow::Result<()> {
    let batch = 50_000u64;
    let mut first = 0u64;
    while first < calls {
        let last = (first + batch).min(calls);
        sqlx::query(GENERATE_CALLS)
            .bind(first as i64)
            .bind(last as i64)
            .execute(pool)
            .await?;
        first = last;
    }
    Ok(())
}

/// The relay draining a backlog: `events` generated events in the log while no relay runs,
/// then the relay alone, timed until its checkpoint reaches the log's head. Baseline: the
/// same number of messages of the same average size published straight to a JetStream stream
/// on the same server, in the relay's pattern (500 publishes, then their acks), same run.
async fn relay_bench(a: &RelayArgs) -> anyhow::Result<Value> {
    let (db, url, pool) = fresh_database(&a.services).await?;
    let calls = a.events.div_ceil(4);
    eprintln!("generating {} events ({calls} calls)...", calls * 4);
    generate_calls(&pool, calls).await?;
    let (events, head, avg_bytes): (i64, i64, f64) = sqlx::query_as(
        "SELECT count(*), COALESCE(max(global_position), 0), \
                COALESCE(avg(octet_length(payload::text) + octet_length(metadata::text) + octet_length(resource::text)), 0)::float8 \
         FROM events",
    )
    .fetch_one(&pool)
    .await?;
    sqlx::query("VACUUM ANALYZE events").execute(&pool).await?;
    let (_nats, nats_url) = nats_of(&a.services)?;

    eprintln!("baseline: {events} messages of {avg_bytes:.0} bytes straight to JetStream...");
    let js = async_nats::jetstream::new(async_nats::connect(&nats_url).await?);
    let raw = format!("BENCHRAW{}", &db[11..]);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: raw.clone(),
        subjects: vec![format!("{raw}.>")],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let payload = bytes::Bytes::from(vec![b'x'; avg_bytes as usize]);
    let t = Instant::now();
    let mut sent = 0i64;
    while sent < events {
        let n = (events - sent).min(500);
        let mut acks = Vec::with_capacity(n as usize);
        for i in 0..n {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", format!("{}", sent + i).as_str());
            acks.push(
                js.publish_with_headers(format!("{raw}.e"), h, payload.clone())
                    .await?,
            );
        }
        for ack in acks {
            ack.await?;
        }
        sent += n;
    }
    let baseline = events as f64 / t.elapsed().as_secs_f64();
    js.delete_stream(&raw).await?;

    eprintln!("the relay publishing the backlog...");
    let cfg = platform_config(&a.services, url.clone(), nats_url.clone(), 8)?;
    let t = Instant::now();
    let running = vbin_platform::start(&cfg, &[Part::Relay]).await?;
    loop {
        let at: Option<i64> =
            sqlx::query_scalar("SELECT max(global_position) FROM log_checkpoints")
                .fetch_one(&pool)
                .await?;
        if at.unwrap_or(0) >= head {
            break;
        }
        if t.elapsed() > Duration::from_secs(600) {
            bail!("the relay did not publish the backlog within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    running.shutdown().await;
    pool.close().await;
    drop_database(&a.services.pg, &db).await;
    let rate = events as f64 / secs;
    Ok(json!({
        "benchmark": "relay",
        "events": events,
        "event_bytes_avg": avg_bytes.round(),
        "relay_secs": (secs * 10.0).round() / 10.0,
        "relay_events_per_sec": rate.round(),
        "baseline_jetstream_publishes_per_sec": baseline.round(),
        "ratio": ((rate / baseline) * 1000.0).round() / 1000.0,
    }))
}

/// Inserts calls `$1..$2` (four events each) into the log.
const GENERATE_CALLS: &str = r#"
WITH c AS (
  SELECT i,
         gen_random_uuid() AS call_id,
         ('00000000-0000-7000-8000-' || lpad(to_hex(i % 100), 12, '0'))::uuid AS customer_id,
         '+1555' || lpad((i % 10000000)::text, 7, '0') AS destination,
         now() - interval '1 day' + (i || ' milliseconds')::interval AS t0
  FROM generate_series($1::bigint, $2::bigint - 1) AS i
), e AS (
  SELECT c.*, s.seq, s.event_type,
    jsonb_build_object(
      'id', call_id, 'type', 'call', 'customer_id', customer_id, 'direction', 'outgoing',
      'source', '+15550001000', 'destination', destination, 'campaign_id', null,
      'variables', jsonb_build_object('talk_seconds', 2),
      'status', (ARRAY['dialing','ringing','progressing','completed'])[s.seq],
      'hangup_by', CASE WHEN s.seq = 4 THEN 'remote' ELSE '' END,
      'hangup_cause', CASE WHEN s.seq = 4 THEN 'normal_clearing' ELSE '' END,
      'duration', CASE WHEN s.seq = 4 THEN 2 ELSE 0 END,
      'tm_create', t0, 'tm_ringing', CASE WHEN s.seq >= 2 THEN t0 + interval '100 ms' END,
      'tm_progressing', CASE WHEN s.seq >= 3 THEN t0 + interval '600 ms' END,
      'tm_hangup', CASE WHEN s.seq = 4 THEN t0 + interval '2600 ms' END,
      'tm_update', t0 + (ARRAY[0, 100, 600, 2600])[s.seq] * interval '1 ms'
    ) AS resource
  FROM c CROSS JOIN (VALUES (1, 'call_created'), (2, 'call_ringing'), (3, 'call_progressing'),
                            (4, 'call_hungup')) AS s(seq, event_type)
)
INSERT INTO events (event_id, customer_id, aggregate_type, aggregate_id, sequence, event_type,
                    event_version, payload, metadata, resource)
SELECT gen_random_uuid(), customer_id, 'call', call_id, seq, event_type,
       CASE WHEN seq = 1 THEN '2.0' ELSE '1.0' END,
       CASE seq
         WHEN 1 THEN jsonb_build_object('type', event_type, 'call_id', call_id, 'customer_id', customer_id,
                      'direction', 'outgoing', 'source', '+15550001000', 'destination', destination,
                      'variables', jsonb_build_object('talk_seconds', 2), 'campaign_id', null,
                      'dial_timeout_ms', 30000, 'at', t0)
         WHEN 4 THEN jsonb_build_object('type', event_type, 'hangup_by', 'remote',
                      'cause', 'normal_clearing', 'at', t0 + interval '2600 ms')
         ELSE jsonb_build_object('type', event_type, 'at', t0)
       END,
       jsonb_build_object('actor', 'system:bench', 'request_id', '', 'correlation_id', call_id::text,
                          'causation_id', ''),
       resource
FROM e ORDER BY seq, i
"#;

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

/// A child process of the benchmark, killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `vbin serve --only <parts>` child process on the benchmark's services.
struct Served {
    child: Child,
    /// Its HTTP address (host:port).
    url: String,
}

/// Starts `vbin serve --only <parts>` on `b`'s database, NATS and `redis_url`, with a pool of
/// `db_pool` connections, and waits until it answers `/healthz`.
async fn serve_child(
    b: &Bench,
    parts: &str,
    redis_url: &str,
    db_pool: u32,
) -> anyhow::Result<Served> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = std::process::Command::new(std::env::current_exe()?)
        .args(["serve", "--only", parts])
        .env("DATABASE_URL", b.database_url())
        .env("NATS_URL", &b.nats_url)
        .env("REDIS_URL", redis_url)
        .env("VBIN_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("VBIN_ADMIN_TOKEN", &b.running.admin_token)
        .env("VBIN_DB_POOL", db_pool.to_string())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting a {parts} process"))?;
    let served = Served {
        child: Child(child),
        url: format!("127.0.0.1:{port}"),
    };
    let started = Instant::now();
    loop {
        if let Ok(r) = b
            .http
            .get(format!("http://{}/healthz", served.url))
            .send()
            .await
        {
            if r.status().is_success() {
                return Ok(served);
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the {parts} process did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn rate(l: &Load) -> f64 {
    l.ops as f64 / l.elapsed.as_secs_f64()
}

/// Creates a call that talks for a minute; returns its id and the accept latency.
pub(crate) async fn create_call(
    http: &reqwest::Client,
    base: &str,
    token: &str,
) -> anyhow::Result<(String, Duration)> {
    let t0 = Instant::now();
    let r = http
        .post(format!("{base}/v1.0/calls"))
        .bearer_auth(token)
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
    let id = v["calls"][0]["id"]
        .as_str()
        .context("no call id")?
        .to_string();
    Ok((id, t0.elapsed()))
}

/// Hangs a call up; returns the accept latency.
pub(crate) async fn hangup(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    id: &str,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let r = http
        .post(format!("{base}/v1.0/calls/{id}/hangup"))
        .bearer_auth(token)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("hangup: {}", r.status());
    }
    Ok(t0.elapsed())
}

/// The baseline of most benchmarks: raw single-row INSERTs (autocommit) of an event-sized
/// JSON row by `clients` connections for `dur`, on the benchmark's database.
async fn pg_insert_baseline(
    database_url: &str,
    clients: usize,
    dur: Duration,
) -> anyhow::Result<Load> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(clients as u32)
        .connect(database_url)
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_insert (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, payload jsonb NOT NULL)")
        .execute(&pool)
        .await?;
    let payload = json!({"type": vbin_event_schema::CallEvent::CALL_CREATED, "source": "+15550001000", "destination": "+15550002000",
                         "variables": {"talk_seconds": 60}, "dial_timeout_ms": 30000});
    let ins = {
        let pool = pool.clone();
        drive(clients, dur, move || {
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
    Ok(ins)
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

impl Bench {
    /// POSTs (or PUTs) JSON as the bench customer; fails unless 2xx.
    async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> anyhow::Result<Value> {
        let r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{path}: {status} {v}");
        }
        Ok(v)
    }

    async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("{path}: {}", r.status());
        }
        Ok(r.json().await?)
    }
}

/// One campaign over `targets` targets on a fresh platform.
async fn campaign_run(a: &CampaignArgs, targets: u64) -> anyhow::Result<Value> {
    use reqwest::Method;
    let b = Arc::new(Bench::start(&a.services, a.clients, &Part::ALL).await?);
    let id = |v: &Value| v["id"].as_str().unwrap_or_default().to_string();
    let plan = b
        .send_json(
            Method::POST,
            "/v1.0/outplans",
            json!({"source": "+15550001000", "dial_timeout_ms": 30000, "max_try_count": 1}),
        )
        .await?;
    let outdial = id(&b
        .send_json(Method::POST, "/v1.0/outdials", json!({"name": "bench"}))
        .await?);
    eprintln!("creating {} targets with {} clients...", targets, a.clients);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let t_create = Instant::now();
    let workers: Vec<_> = (0..a.clients)
        .map(|_| {
            let (b, next, outdial, targets) = (b.clone(), next.clone(), outdial.clone(), targets);
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < targets {
                    b.send_json(
                        Method::POST,
                        &format!("/v1.0/outdials/{outdial}/targets"),
                        json!({"destinations": ["+15550002000"], "variables": {"talk_seconds": 0}}),
                    )
                    .await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    let create_secs = t_create.elapsed().as_secs_f64();
    // The dialer picks targets from the read model: wait until all are there.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&b.database_url())
        .await?;
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM rm_outdialtargets")
        .fetch_one(&pool)
        .await?
        < targets as i64
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let campaign = id(&b
        .send_json(
            Method::POST,
            "/v1.0/campaigns",
            json!({"outplan_id": id(&plan), "outdial_id": outdial,
                   "max_concurrent_calls": a.max_concurrent}),
        )
        .await?);
    eprintln!("running the campaign...");
    let t0 = Instant::now();
    b.send_json(
        Method::PUT,
        &format!("/v1.0/campaigns/{campaign}/status"),
        json!({"status": "running"}),
    )
    .await?;
    let deadline = Duration::from_secs(600 + targets / 10);
    let js = async_nats::jetstream::new(async_nats::connect(&b.nats_url).await?);
    let mut polls = 0u64;
    let (mut dialed_at, mut peak_in_flight) = (None, 0u64);
    // When the first round (up to max_concurrent calls at once) was dialed, and how many: the
    // rest is dialed only as calls end, the rate the dialer keeps up.
    let mut first_round: Option<(Duration, u64)> = None;
    let first_round_size = targets.min(a.max_concurrent as u64);
    let done = loop {
        // 404 until the read model has the new campaign.
        let v = b
            .get_json(&format!("/v1.0/campaigns/{campaign}"))
            .await
            .unwrap_or_default();
        peak_in_flight = peak_in_flight.max(v["in_flight"].as_u64().unwrap_or(0));
        let dialed = v["dialed"].as_u64().unwrap_or(0);
        if dialed >= first_round_size && first_round.is_none() {
            first_round = Some((t0.elapsed(), dialed));
        }
        if dialed >= targets && dialed_at.is_none() {
            dialed_at = Some(t0.elapsed());
        }
        if v["status"] == "completed" {
            break v;
        }
        if t0.elapsed() > deadline {
            bail!("campaign not completed after {deadline:?}: {v}");
        }
        polls += 1;
        if polls.is_multiple_of(25) {
            eprintln!(
                "{:>5.0} s dialed {} in flight {}; consumers pending: {}",
                t0.elapsed().as_secs_f64(),
                v["dialed"],
                v["in_flight"],
                consumer_backlog(&js, &b.running.installation.namespace).await
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let completed = t0.elapsed();
    let dialed_secs = dialed_at.unwrap_or(completed).as_secs_f64();
    // Every answered call is billed once: wait for the charges (they trail the results).
    let billed_from = Instant::now();
    let charges = loop {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'billing_recorded'")
                .fetch_one(&pool)
                .await?;
        if n as u64 >= targets || billed_from.elapsed() > Duration::from_secs(300) {
            // A little longer, so that a charge made twice would show.
            tokio::time::sleep(Duration::from_secs(1)).await;
            break sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM events WHERE event_type = 'billing_recorded'",
            )
            .fetch_one(&pool)
            .await?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let billing_trailed = billed_from.elapsed().as_secs_f64();
    pool.close().await;
    let b = Arc::try_unwrap(b).ok().context("bench still in use")?;
    b.stop().await;
    let dialed_per_sec = targets as f64 / dialed_secs;
    let steady = first_round
        .filter(|(at, n)| *n < targets && at.as_secs_f64() < dialed_secs)
        .map(|(at, n)| ((targets - n) as f64 / (dialed_secs - at.as_secs_f64())).round());
    Ok(json!({
        "targets": targets,
        "max_concurrent_calls": a.max_concurrent,
        "targets_created_per_sec": (targets as f64 / create_secs).round(),
        "dialed": done["dialed"],
        "answered": done["answered"],
        "failed": done["failed"],
        "billing_records": charges,
        "billing_trailed_completion_secs": (billing_trailed * 10.0).round() / 10.0,
        "peak_in_flight_seen": peak_in_flight,
        "seconds_to_dial_all": (dialed_secs * 10.0).round() / 10.0,
        "seconds_to_complete": (completed.as_secs_f64() * 10.0).round() / 10.0,
        "calls_dialed_per_sec": dialed_per_sec.round(),
        "seconds_to_dial_first_round": first_round.map(|(at, _)| (at.as_secs_f64() * 10.0).round() / 10.0),
        "steady_calls_dialed_per_sec": steady,
    }))
}

async fn campaign_bench(a: &CampaignArgs) -> anyhow::Result<Value> {
    if a.targets.is_empty() || a.targets.contains(&0) {
        bail!("--targets: at least one size, each at least 1");
    }
    let mut runs = Vec::new();
    for &n in &a.targets {
        runs.push(campaign_run(a, n).await?);
    }
    eprintln!(
        "measuring the Postgres INSERT baseline for {} s...",
        a.baseline_secs
    );
    let (db, url, pool) = fresh_database(&a.services).await?;
    pool.close().await;
    let ins = pg_insert_baseline(&url, a.clients, Duration::from_secs(a.baseline_secs)).await?;
    drop_database(&a.services.pg, &db).await;
    let first = runs[0].clone();
    let dialed_per_sec = first["calls_dialed_per_sec"].as_f64().unwrap_or(0.0);
    let mut out = json!({
        "benchmark": "campaign",
        "runs": runs,
        "baseline_pg_inserts_per_sec": rate(&ins).round(),
        "ratio": ((dialed_per_sec / rate(&ins)) * 1000.0).round() / 1000.0,
        "target_calls_dialed_per_sec": 500,
    });
    // The first run's figures at the top level too (the headline and older reports).
    if let (Some(o), Value::Object(f)) = (out.as_object_mut(), first) {
        for (k, v) in f {
            o.entry(k).or_insert(v);
        }
    }
    Ok(out)
}

/// "name=pending" for every durable consumer with a backlog (diagnostics).
async fn consumer_backlog(
    js: &async_nats::jetstream::Context,
    ns: &vbin_event_schema::Namespace,
) -> String {
    use futures::StreamExt;
    let Ok(stream) = js.get_stream(ns.stream()).await else {
        return "?".into();
    };
    let mut out = Vec::new();
    let mut names = stream.consumer_names();
    let mut all = Vec::new();
    while let Some(Ok(n)) = names.next().await {
        all.push(n);
    }
    for n in all {
        if let Ok(info) = stream.consumer_info(&n).await {
            let pending = info.num_pending + info.num_ack_pending as u64;
            if pending > 0 {
                out.push(format!("{n}={pending}"));
            }
        }
    }
    out.join(" ")
}

/// What the benchmark's webhook receiver saw.
#[derive(Default)]
struct Received {
    count: u64,
    first: Option<Instant>,
    last: Option<Instant>,
    /// Event committed -> request received, in microseconds.
    delay: Option<Histogram<u64>>,
}

/// A local webhook receiver answering 200; returns its URL.
async fn bench_receiver(seen: Arc<std::sync::Mutex<Received>>) -> anyhow::Result<String> {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let seen = seen.clone();
            async move {
                let now = Instant::now();
                let created = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v["created"].as_str().map(str::to_string))
                    .and_then(|c| chrono::DateTime::parse_from_rfc3339(&c).ok());
                let mut r = seen.lock().expect("receiver state");
                r.count += 1;
                r.first.get_or_insert(now);
                r.last = Some(now);
                if let Some(c) = created {
                    let us = (chrono::Utc::now() - c.with_timezone(&chrono::Utc))
                        .num_microseconds()
                        .unwrap_or(0)
                        .max(0) as u64;
                    let h = r
                        .delay
                        .get_or_insert_with(|| Histogram::new(3).expect("histogram"));
                    let _ = h.record(us);
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(url)
}

/// Phase 1 of `bench webhooks` at one backlog size: what it measured, and the platform (the
/// webhooks process still running) for phase 2.
struct Backlog {
    b: Arc<Bench>,
    hooks: vbin_platform::Running,
    pool: sqlx::PgPool,
    deliveries: u64,
    deliver_secs: f64,
    created_secs: f64,
}

/// Phase 1 (throughput): `calls` busy calls are made with webhook delivery off, then a process
/// with only the `webhooks` part delivers the backlog, so the figure is the delivery path's own
/// rate (recording and sending), not the rate at which the rest of the platform produces
/// events.
async fn webhook_backlog(
    a: &WebhooksArgs,
    calls: u64,
    seen: &Arc<std::sync::Mutex<Received>>,
    url: &str,
) -> anyhow::Result<Backlog> {
    use reqwest::Method;
    *seen.lock().expect("receiver") = Received::default();
    let others: Vec<Part> = Part::ALL
        .into_iter()
        .filter(|p| *p != Part::Webhooks)
        .collect();
    let b = Arc::new(Bench::start(&a.services, a.clients, &others).await?);
    b.send_json(
        Method::PUT,
        "/v1.0/customer",
        json!({"webhook_uri": url, "webhook_method": "POST"}),
    )
    .await?;
    eprintln!("creating {calls} calls (busy: 2 events each)...");
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let t0 = Instant::now();
    let workers: Vec<_> = (0..a.clients)
        .map(|_| {
            let (b, next) = (b.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let start = next.fetch_add(100, Ordering::Relaxed);
                    if start >= calls {
                        return anyhow::Ok(());
                    }
                    let n = (calls - start).min(100) as usize;
                    b.send_json(
                        Method::POST,
                        "/v1.0/calls",
                        json!({"source": "+15550001000",
                               "destinations": vec!["+15550000486"; n]}),
                    )
                    .await?;
                }
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    let created_secs = t0.elapsed().as_secs_f64();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&b.database_url())
        .await?;
    // Every event of the customer (from the webhook's setting on) must arrive.
    let expected = loop {
        // Every event from the webhook's setting on (customer_updated included).
        let (events, hungup): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM events WHERE recorded_at >= \
                      (SELECT recorded_at FROM events WHERE event_type = 'customer_updated')), \
                    (SELECT count(*) FROM events WHERE event_type = 'call_hungup')",
        )
        .fetch_one(&pool)
        .await?;
        if hungup as u64 >= calls && events as u64 >= 2 * calls {
            break events as u64;
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("calls not all ended and recorded after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("delivering {expected} webhooks...");
    let mut cfg = platform_config(&a.services, b.database_url(), b.nats_url.clone(), 64)?;
    cfg.admin_token = Some(b.running.admin_token.clone());
    cfg.settings = b.settings.clone();
    // The receiver is on loopback, which webhooks may not reach by default.
    cfg.settings.webhooks.allow_nets = "127.0.0.1/32".parse().map_err(anyhow::Error::msg)?;
    let t_deliver = Instant::now();
    let hooks = vbin_platform::start(&cfg, &[Part::Webhooks]).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while seen.lock().expect("receiver").count < expected {
        if Instant::now() > deadline {
            bail!("webhooks not all received after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Backlog {
        b,
        hooks,
        pool,
        deliveries: expected,
        deliver_secs: t_deliver.elapsed().as_secs_f64(),
        created_secs,
    })
}

async fn webhooks_bench(a: &WebhooksArgs) -> anyhow::Result<Value> {
    use reqwest::Method;
    let seen = Arc::new(std::sync::Mutex::new(Received::default()));
    let url = bench_receiver(seen.clone()).await?;
    // The growth curve first: phase 1 alone at each other backlog size.
    let mut curve = Vec::new();
    for &calls in &a.curve {
        let run = webhook_backlog(a, calls, &seen, &url).await?;
        curve.push(json!({
            "calls": calls,
            "deliveries": run.deliveries,
            "deliveries_per_sec": (run.deliveries as f64 / run.deliver_secs).round(),
        }));
        run.hooks.shutdown().await;
        run.pool.close().await;
        let b = Arc::try_unwrap(run.b).ok().context("bench still in use")?;
        b.stop().await;
    }
    let Backlog {
        b,
        hooks,
        pool,
        deliveries: expected,
        deliver_secs,
        created_secs,
    } = webhook_backlog(a, a.calls, &seen, &url).await?;

    // Phase 2 (dispatch delay): calls at a modest steady rate with delivery on.
    {
        let mut r = seen.lock().expect("receiver");
        r.delay = None;
    }
    eprintln!("measuring the dispatch delay (10 s of 20 calls/s)...");
    let phase2_from: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT now()").fetch_one(&pool).await?;
    let received_before = seen.lock().expect("receiver").count;
    for _ in 0..50 {
        b.send_json(
            Method::POST,
            "/v1.0/calls",
            json!({"source": "+15550001000", "destinations": vec!["+15550000486"; 4]}),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.lock().expect("receiver").count < received_before + 400 {
        if Instant::now() > deadline {
            bail!("phase 2 webhooks not all received");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Taken now: the baseline below posts to the same receiver (with a fixed `created`).
    let delay = seen.lock().expect("receiver").delay.take();
    hooks.shutdown().await;
    // How fast the recorder wrote phase 1's backlog (the sender cannot outrun it).
    let recorded: (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*), extract(epoch FROM max(created_at) - min(created_at))::float8 \
         FROM webhook_deliveries WHERE created_at < $1",
    )
    .bind(phase2_from)
    .fetch_one(&pool)
    .await?;
    // Where phase 2's delay goes: event written -> delivery recorded (relay, NATS, recorder)
    // and delivery recorded -> first request sent (sender).
    let stages: (Option<f64>, Option<f64>, Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY rec), \
                percentile_cont(0.99) WITHIN GROUP (ORDER BY rec), \
                percentile_cont(0.5) WITHIN GROUP (ORDER BY send), \
                percentile_cont(0.99) WITHIN GROUP (ORDER BY send) \
         FROM (SELECT extract(epoch FROM d.created_at - e.recorded_at) * 1000 AS rec, \
                      extract(epoch FROM (a.at - make_interval(secs => a.latency_ms / 1000.0)) \
                                         - d.created_at) * 1000 AS send \
               FROM webhook_deliveries d JOIN events e ON e.event_id = d.event_id \
               JOIN webhook_attempts a ON a.delivery_id = d.id AND a.attempt = 1 \
               WHERE e.recorded_at >= $1) s",
    )
    .bind(phase2_from)
    .fetch_one(&pool)
    .await?;
    let failed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE status <> 'delivered'")
            .fetch_one(&pool)
            .await?;
    pool.close().await;
    let b = Arc::try_unwrap(b).ok().context("bench still in use")?;
    b.stop().await;

    // Baseline: the same receiver, raw POSTs of a webhook-sized body by `clients` clients.
    eprintln!(
        "measuring the HTTP POST baseline for {} s...",
        a.baseline_secs
    );
    let http = reqwest::Client::new();
    let body = serde_json::to_vec(
        &json!({"id": uuid::Uuid::now_v7(), "type": vbin_event_schema::CallEvent::CALL_HUNGUP,
        "created": chrono::Utc::now(), "data": {"id": uuid::Uuid::now_v7(), "type": "call",
        "status": "busy", "source": "+15550001000", "destination": "+15550000486"}}),
    )?;
    let base = drive(a.clients, Duration::from_secs(a.baseline_secs), move || {
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        async move {
            let t = Instant::now();
            let r = http.post(&url).body(body).send().await?;
            if !r.status().is_success() {
                bail!("baseline POST: {}", r.status());
            }
            Ok(vec![t.elapsed()])
        }
    })
    .await;
    let per_sec = expected as f64 / deliver_secs;
    let ms = |q: f64| {
        delay
            .as_ref()
            .map(|h| (h.value_at_quantile(q) as f64 / 100.0).round() / 10.0)
            .unwrap_or(0.0)
    };
    Ok(json!({
        "benchmark": "webhooks",
        "calls": a.calls,
        "calls_created_per_sec": (a.calls as f64 / created_secs).round(),
        "deliveries": expected,
        "not_delivered": failed,
        "deliveries_per_sec": per_sec.round(),
        "seconds_to_deliver": (deliver_secs * 10.0).round() / 10.0,
        "recorded_per_sec": recorded.1.filter(|s| *s > 0.0).map(|s| (recorded.0 as f64 / s).round()),
        "dispatch_delay_p50_ms": ms(0.5),
        "dispatch_delay_p99_ms": ms(0.99),
        "recorded_after_commit_p50_ms": stages.0.map(f64::round),
        "recorded_after_commit_p99_ms": stages.1.map(f64::round),
        "sent_after_recorded_p50_ms": stages.2.map(f64::round),
        "sent_after_recorded_p99_ms": stages.3.map(f64::round),
        "baseline_http_posts_per_sec": rate(&base).round(),
        "ratio": ((per_sec / rate(&base)) * 1000.0).round() / 1000.0,
        "target_deliveries_per_sec": 2000,
        "curve": curve,
    }))
}
