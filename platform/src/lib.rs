//! Runs the parts of the platform in one process: configuration and `start`, which runs the
//! requested parts (command API, query API, relay, projections, carrier, ...) until shutdown,
//! with housekeeping; and the operator commands (`ops`: replay, events).

pub mod housekeeping;
pub mod ops;

use anyhow::Context;
use axum::serve::ListenerExt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use vbin_bus::Bus;
use vbin_carrier::sandbox::{SandboxCarrier, TimerWorker};
use vbin_commands::api::{self, AppState};
use vbin_commands::auth::{platform_secret, AuthKeys};
use vbin_commands::relay::{Relay, RelayConfig};
use vbin_commands::{Executor, PgEventRepository};

/// A part of the platform that `serve --only` can select.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// The command REST API (with /healthz, /readyz, /metrics).
    CommandApi,
    /// The query REST API (GETs, audit trail) on the same HTTP listener.
    QueryApi,
    /// The outbox relay to JetStream.
    Relay,
    /// The projections (read models) and the cache invalidation sweeper.
    Projections,
    /// The carrier dialer and the sandbox carrier's timers.
    Carrier,
    /// Process managers: billing of ended calls, the campaign dialer and its consumers.
    ProcessManagers,
    /// Webhook delivery: the recorder consumer and the sender.
    Webhooks,
    /// The WebSocket gateway (`GET /v1.0/ws`) on the HTTP listener.
    Gateway,
    /// The AudioSocket server (`VBIN_AUDIOSOCKET_ADDR`) and the transcription pipeline.
    Media,
}

impl Part {
    /// Every part (what `vbin serve` runs).
    pub const ALL: [Part; 9] = [
        Part::CommandApi,
        Part::QueryApi,
        Part::Relay,
        Part::Projections,
        Part::Carrier,
        Part::ProcessManagers,
        Part::Webhooks,
        Part::Gateway,
        Part::Media,
    ];
}

#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Postgres URL; the database is created if missing.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/vbin"
    )]
    pub database_url: String,
    /// NATS URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Redis URL.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// HTTP listen address.
    #[arg(long, env = "VBIN_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// Platform admin bearer token (generated, stored and printed if unset).
    #[arg(long, env = "VBIN_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// JWT signing secret (generated and stored in the database if unset).
    #[arg(long, env = "VBIN_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Postgres pool size of this process.
    #[arg(long, env = "VBIN_DB_POOL", default_value_t = 32)]
    pub db_pool: u32,
}

/// The speech-to-text provider: `VBIN_STT_PROVIDER` = `pocketsphinx` (default; with the JSGF
/// grammar at `VBIN_STT_GRAMMAR` if set) or `deepgram` (`VBIN_DEEPGRAM_API_KEY`, optional
/// `VBIN_DEEPGRAM_URL`).
fn stt_provider() -> anyhow::Result<Arc<dyn vbin_media::stt::SttProvider>> {
    let name = std::env::var("VBIN_STT_PROVIDER").unwrap_or_else(|_| "pocketsphinx".into());
    match name.as_str() {
        "pocketsphinx" => {
            let mut p = vbin_media::stt::pocketsphinx::PocketSphinx::new();
            if let Ok(g) = std::env::var("VBIN_STT_GRAMMAR") {
                p = p.with_grammar(g);
            }
            if !p.available() {
                tracing::warn!("pocketsphinx is not installed (Debian: pocketsphinx pocketsphinx-en-us); transcriptions will fail to start");
            }
            Ok(Arc::new(p))
        }
        "deepgram" => Ok(Arc::new(
            vbin_media::stt::deepgram::Deepgram::from_env()
                .context("VBIN_STT_PROVIDER=deepgram needs VBIN_DEEPGRAM_API_KEY")?,
        )),
        other => {
            anyhow::bail!("VBIN_STT_PROVIDER {other:?} is not one of: pocketsphinx, deepgram")
        }
    }
}

/// Kernel send buffer of each HTTP connection (`VBIN_HTTP_SNDBUF_BYTES`, default 256 KiB).
/// Bounded because a WebSocket client that stops reading would otherwise let the kernel
/// buffer megabytes for it (send buffers autotune up to `tcp_wmem`'s maximum) before the
/// gateway sees it is slow; with the bound, its backlog reaches the gateway's own per
/// connection limit and it is closed as a slow consumer.
fn send_buffer_bytes() -> anyhow::Result<usize> {
    match std::env::var("VBIN_HTTP_SNDBUF_BYTES") {
        Ok(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 4096)
            .context("VBIN_HTTP_SNDBUF_BYTES must be a number of bytes >= 4096"),
        Err(_) => Ok(256 * 1024),
    }
}

fn cap_send_buffer(tcp: &tokio::net::TcpStream, bytes: usize) {
    if let Err(e) = socket2::SockRef::from(tcp).set_send_buffer_size(bytes) {
        tracing::debug!(error = %e, "setting SO_SNDBUF failed");
    }
}

/// A running platform: where it listens and how to stop it.
pub struct Running {
    /// The bound HTTP address (if the command API runs).
    pub http_addr: Option<SocketAddr>,
    /// The admin token in force.
    pub admin_token: String,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops every part and waits for them.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn stopped(rx: &watch::Receiver<bool>) -> impl Future<Output = ()> + Send + 'static {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|s| *s).await;
    }
}

static PROMETHEUS: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
    std::sync::OnceLock::new();

fn prometheus() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .ok()
        })
        .clone()
}

/// Starts the selected parts and returns once they are running.
pub async fn start(cfg: &Config, parts: &[Part]) -> anyhow::Result<Running> {
    let pool = vbin_migrations::connect_and_migrate(&cfg.database_url, cfg.db_pool)
        .await
        .with_context(|| "connecting to Postgres and migrating (is it running? see README)")?;
    let bus = Bus::connect(&cfg.nats_url, "vbin")
        .await
        .context("connecting to NATS")?;
    let (admin_token, generated) =
        platform_secret(&pool, "admin_token", cfg.admin_token.as_deref()).await?;
    if generated {
        println!("generated platform admin token (stored in the database): {admin_token}");
    }
    let (jwt_secret, _) = platform_secret(&pool, "jwt_secret", cfg.jwt_secret.as_deref()).await?;
    let executor = Executor::new(PgEventRepository::new(pool.clone()));
    let (stop, rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut http_addr = None;

    if parts.contains(&Part::Relay) {
        let relay = Relay::new(
            pool.clone(),
            cfg.database_url.clone(),
            bus.clone(),
            RelayConfig::default(),
        );
        tasks.push(tokio::spawn(relay.run(stopped(&rx))));
    }
    if parts.contains(&Part::Carrier) {
        let carrier = Arc::new(SandboxCarrier::new(pool.clone()));
        tasks.push(tokio::spawn(vbin_carrier::dialer::run(
            bus.clone(),
            carrier,
            stopped(&rx),
        )));
        let worker = TimerWorker::new(pool.clone(), executor.clone());
        tasks.push(tokio::spawn(worker.run(stopped(&rx))));
    }
    if parts.contains(&Part::Webhooks) {
        let settings =
            vbin_webhooks::delivery::Settings::from_env().map_err(|e| anyhow::anyhow!(e))?;
        tasks.push(tokio::spawn(vbin_webhooks::delivery::run(
            pool.clone(),
            executor.clone(),
            bus.clone(),
            settings,
            stopped(&rx),
        )));
    }
    let jobs = housekeeping::Jobs {
        command_side: parts.contains(&Part::CommandApi),
        webhooks: if parts.contains(&Part::Webhooks) {
            Some(vbin_webhooks::retention::retention_from_env().map_err(|e| anyhow::anyhow!(e))?)
        } else {
            None
        },
    };
    if jobs.command_side || jobs.webhooks.is_some() {
        tasks.push(tokio::spawn(housekeeping::run(
            pool.clone(),
            jobs,
            housekeeping::every_from_env()?,
            stopped(&rx),
        )));
    }
    if parts.contains(&Part::ProcessManagers) {
        tasks.push(tokio::spawn(vbin_processes::billing::run(
            bus.clone(),
            executor.clone(),
            stopped(&rx),
        )));
        tasks.push(tokio::spawn(vbin_processes::campaign::run(
            pool.clone(),
            executor.clone(),
            bus.clone(),
            stopped(&rx),
        )));
        tasks.push(tokio::spawn(vbin_processes::queue::run(
            pool.clone(),
            executor.clone(),
            bus.clone(),
            stopped(&rx),
        )));
        tasks.push(tokio::spawn(vbin_processes::transcribe::run(
            pool.clone(),
            executor.clone(),
            bus.clone(),
            stopped(&rx),
        )));
    }
    if parts.contains(&Part::Media) {
        let addr: SocketAddr = std::env::var("VBIN_AUDIOSOCKET_ADDR")
            .unwrap_or_else(|_| "127.0.0.1:9093".into())
            .parse()
            .context("VBIN_AUDIOSOCKET_ADDR must be host:port")?;
        let listener = vbin_media::audiosocket::bind(addr)
            .with_context(|| format!("binding the AudioSocket server on {addr}"))?;
        let local = listener.local_addr()?;
        let provider = stt_provider()?;
        tracing::info!(addr = %local, provider = provider.name(), "AudioSocket server listening");
        let pipeline = vbin_transcription::Pipeline::new(
            pool.clone(),
            executor.clone(),
            provider,
            Default::default(),
        );
        let follow = tokio::spawn(pipeline.follow(bus.clone()));
        let stop = stopped(&rx);
        tasks.push(tokio::spawn(async move {
            pipeline.run(listener, stop).await;
            follow.abort();
        }));
    }
    let redis_client = redis::Client::open(cfg.redis_url.as_str()).context("parsing REDIS_URL")?;
    let cache = vbin_projections::cache::Cache::new(redis_client.clone());
    if parts.contains(&Part::Projections) {
        for p in vbin_projections::all() {
            let rt = vbin_projections::runtime::Runtime::new(
                pool.clone(),
                Some(cache.clone()),
                *p,
                Default::default(),
            );
            tasks.push(tokio::spawn(rt.run(bus.clone(), stopped(&rx))));
        }
        tasks.push(tokio::spawn(
            vbin_projections::runtime::sweep_invalidations(
                pool.clone(),
                cache.clone(),
                stopped(&rx),
            ),
        ));
    }
    let serves_http = parts.contains(&Part::CommandApi)
        || parts.contains(&Part::QueryApi)
        || parts.contains(&Part::Gateway);
    if serves_http {
        let keys = AuthKeys::new(&jwt_secret, &admin_token);
        let follower = tokio::spawn(vbin_commands::auth::follow_revocations(
            keys.clone(),
            bus.clone(),
        ));
        let stop_follower = stopped(&rx);
        tasks.push(tokio::spawn(async move {
            stop_follower.await;
            follower.abort();
        }));
        let state = AppState {
            pool: pool.clone(),
            executor: executor.clone(),
            keys,
            bus: bus.clone(),
            redis: Some(redis_client),
            metrics: prometheus(),
        };
        let mut routes = axum::Router::new();
        if parts.contains(&Part::CommandApi) {
            routes = routes
                .merge(api::routes())
                .merge(vbin_webhooks::api::routes());
        }
        if parts.contains(&Part::QueryApi) {
            tasks.push(tokio::spawn(vbin_read_api::watch_invalidations(
                pool.clone(),
                cache.clone(),
                stopped(&rx),
            )));
            routes = routes.merge(vbin_read_api::routes(vbin_read_api::ReadState {
                pool: pool.clone(),
                cache: Some(cache),
            }));
        }
        if parts.contains(&Part::Gateway) {
            let settings = vbin_gateway::Settings::from_env().map_err(|e| anyhow::anyhow!(e))?;
            let hub = vbin_gateway::Hub::new(bus.clone(), settings);
            tasks.push(tokio::spawn(hub.clone().run(stopped(&rx))));
            routes = routes.merge(vbin_gateway::routes(hub, rx.clone()));
        }
        let app = api::with_layers(routes, state);
        let listener = tokio::net::TcpListener::bind(cfg.http_addr)
            .await
            .with_context(|| format!("binding {}", cfg.http_addr))?;
        http_addr = Some(listener.local_addr()?);
        let sndbuf = send_buffer_bytes()?;
        let shutdown = stopped(&rx);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(
                listener.tap_io(move |tcp| cap_send_buffer(tcp, sndbuf)),
                app,
            )
            .with_graceful_shutdown(shutdown)
            .await
            {
                tracing::error!(error = %e, "http server failed");
            }
        }));
    }
    tracing::info!(?parts, ?http_addr, "vbin started");
    Ok(Running {
        http_addr,
        admin_token,
        stop,
        tasks,
    })
}
