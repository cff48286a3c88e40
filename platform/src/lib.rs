//! Runs the parts of the platform in one process: configuration and `start`, which runs the
//! requested parts (command API, query API, relay, projections, carrier, ...) until shutdown,
//! with housekeeping; and the operator commands (`ops`: replay, events).

pub mod config;
pub mod housekeeping;
pub mod ops;

pub use config::{Config, Settings};

use anyhow::Context;
use axum::serve::ListenerExt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use vbin_app::App;
use vbin_bus::Bus;
use vbin_carrier::sandbox::{SandboxCarrier, TimerWorker};
use vbin_commands::CmdState;
use vbin_eventlog::relay::{Relay, RelayConfig};
use vbin_http::auth::{platform_secret, AuthKeys};
use vbin_http::HttpState;

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
    /// Process managers: billing of ended calls, the campaign dialer, the queue dispatcher and
    /// the transcriptions ended with their call.
    ProcessManagers,
    /// Webhook delivery: the recorder consumer and the sender.
    Webhooks,
    /// The WebSocket gateway (`GET /v1.0/ws`) on the HTTP listener.
    Gateway,
    /// The media process: a media session per answered call (flows' media actions,
    /// recordings, transcription) and the AudioSocket server (`VBIN_AUDIOSOCKET_ADDR`).
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
    /// The installation (its id and NATS namespace).
    pub installation: vbin_event_schema::Installation,
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

/// Buckets of `vbin_media_tick_lateness_seconds` (how late a session's 20 ms tick ran).
pub const TICK_LATENESS_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1,
];

/// Buckets of `vbin_media_digit_to_talk_seconds` (counted in 20 ms ticks).
pub const DIGIT_TO_TALK_BUCKETS: [f64; 12] = [
    0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0,
];

/// Buckets of the AI conversations' turn latencies (`vbin_ai_*_seconds`).
pub const AI_TURN_BUCKETS: [f64; 14] = [
    0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 15.0,
];

fn prometheus() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
            // The media path's timings as histograms (cumulative buckets): a reader can take
            // the difference of two scrapes, e.g. `vbin bench flows` over its steady window.
            // Everything else is a summary.
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("vbin_media_tick_lateness_seconds".into()),
                    &TICK_LATENESS_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("vbin_media_digit_to_talk_seconds".into()),
                        &DIGIT_TO_TALK_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Prefix("vbin_ai_".into()), &AI_TURN_BUCKETS)
                })
                .ok()?
                .install_recorder()
                .ok()
        })
        .clone()
}

/// Every second, hangs up the calls whose media session's owner died and was not replaced
/// within `after`.
async fn hang_up_orphans(
    pool: sqlx::PgPool,
    executor: vbin_app::Executor,
    after: std::time::Duration,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
        if let Err(e) = vbin_callmedia::hang_up_orphans(&pool, &executor, after).await {
            tracing::warn!(error = %vbin_bus::Chain(&e), "hanging up orphaned calls: will retry");
        }
    }
}

/// Says which installation this is and makes sure the NATS stream it is about to use is its
/// own: a stream that belongs to another installation stops the start. If NATS cannot be
/// reached yet, the start goes on (every part checks the stream again before using it).
async fn claim_stream(bus: &Bus) -> anyhow::Result<()> {
    let i = bus.installation();
    let ns = &i.namespace;
    println!(
        "installation {}: NATS stream {} (subjects {}.>), Redis keys {}*",
        i.id,
        ns.stream(),
        ns.prefix(),
        i.redis_prefix()
    );
    match tokio::time::timeout(std::time::Duration::from_secs(5), bus.ensure_stream()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e @ vbin_bus::BusError::Foreign { .. })) => Err(e.into()),
        Ok(Err(e)) => {
            tracing::warn!(error = %vbin_bus::Chain(&e), "cannot check the NATS stream yet; each part checks it before using it");
            Ok(())
        }
        Err(_) => {
            tracing::warn!(
                "NATS did not answer within 5 s; each part checks the stream before using it"
            );
            Ok(())
        }
    }
}

/// Starts the selected parts and returns once they are running.
pub async fn start(cfg: &Config, parts: &[Part]) -> anyhow::Result<Running> {
    let settings = &cfg.settings;
    // The recorder first: parts register their counters once when they start (a counter made
    // before the recorder is installed counts nowhere).
    let metrics = prometheus();
    // Before any client is built: roots every outgoing https request trusts.
    if let Some(pem) = &settings.webhooks.tls_extra_ca_file {
        match vbin_netguard::tls::trust_extra_roots(pem) {
            Ok(n) => tracing::info!(file = %pem.display(), roots = n, "extra TLS roots trusted"),
            // A second start in the same process (tests, benchmarks) keeps the first roots.
            Err(vbin_netguard::tls::TlsError::AlreadySet) => {}
            Err(e) => return Err(e).context("VBIN_TLS_EXTRA_CA_FILE"),
        }
    }
    // Before connecting to anything: a provider that cannot work stops the start at once.
    let (stt, tts) = if parts.contains(&Part::Media) {
        (
            Some(settings.media.stt_provider()?),
            Some(settings.media.tts_provider()?),
        )
    } else {
        (None, None)
    };
    let pool = vbin_migrations::connect_and_migrate(&cfg.database_url, cfg.db_pool)
        .await
        .with_context(|| "connecting to Postgres and migrating (is it running? see README)")?;
    let installation =
        vbin_eventlog::installation::load(&pool, cfg.nats_namespace.as_ref()).await?;
    let mut bus = Bus::connect(&cfg.nats_url, "vbin", installation.clone())
        .await
        .context("connecting to NATS")?;
    if let Some(n) = cfg.stream_replicas {
        bus = bus.with_replicas(n);
    }
    claim_stream(&bus).await?;
    let (admin_token, generated) =
        platform_secret(&pool, "admin_token", cfg.admin_token.as_deref()).await?;
    if generated {
        println!("generated platform admin token (stored in the database): {admin_token}");
    }
    let (jwt_secret, _) = platform_secret(&pool, "jwt_secret", cfg.jwt_secret.as_deref()).await?;
    let (seal_key, _) = platform_secret(&pool, "seal_key", cfg.seal_key.as_deref()).await?;
    let sealer = Arc::new(vbin_app::seal::Sealer::new(&seal_key));
    let mut app = App::new(pool.clone());
    app.executor = vbin_app::Executor::new(
        vbin_eventlog::PgEventRepository::new(pool.clone()).with_group_commit(cfg.group_commit),
    );
    app.sealer = Some(sealer.clone());
    app.max_live_aicalls = cfg.settings.agents.max_live;
    app.funds_checks = Arc::new(vbin_app::funds::PassedChecks::new(
        std::time::Duration::from_millis(settings.billing.funds_check_fresh_ms),
    ));
    let executor = app.executor.clone();
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
    let mut sip_carrier = None;
    if parts.contains(&Part::Carrier) {
        let (sip, endpoint) =
            vbin_sip::SipCarrier::start(&settings.sip.settings(), app.clone(), pool.clone())
                .await
                .context("starting the SIP carrier (VBIN_SIP_ADDR)")?;
        tasks.push(tokio::spawn(endpoint.run(stopped(&rx))));
        let carriers = vbin_carrier::dialer::Carriers {
            sandbox: Arc::new(SandboxCarrier::new(pool.clone())),
            sip: Some(Arc::new(sip.clone())),
        };
        sip_carrier = Some(sip);
        tasks.push(tokio::spawn(vbin_carrier::dialer::run(
            bus.clone(),
            carriers,
            stopped(&rx),
        )));
        let worker = TimerWorker::new(pool.clone(), executor.clone());
        tasks.push(tokio::spawn(worker.run(stopped(&rx))));
    }
    if parts.contains(&Part::Webhooks) {
        tasks.push(tokio::spawn(vbin_webhooks::delivery::run(
            pool.clone(),
            executor.clone(),
            bus.clone(),
            settings.webhooks.delivery(),
            stopped(&rx),
        )));
    }
    let jobs = housekeeping::Jobs {
        command_side: parts.contains(&Part::CommandApi),
        webhooks: if parts.contains(&Part::Webhooks) {
            Some(settings.webhooks.retention)
        } else {
            None
        },
    };
    let store = settings.storage.store()?;
    let recordings = match (parts.contains(&Part::Media), settings.storage.retention()) {
        (true, Some(retention)) => Some(housekeeping::Recordings {
            store: store.clone(),
            executor: executor.clone(),
            retention,
        }),
        _ => None,
    };
    if jobs.command_side || jobs.webhooks.is_some() || recordings.is_some() {
        tasks.push(tokio::spawn(housekeeping::run(
            pool.clone(),
            jobs,
            recordings,
            settings.housekeeping.every(),
            stopped(&rx),
        )));
    }
    if parts.contains(&Part::ProcessManagers) {
        let campaigns = vbin_processes::campaign::Campaigns::new(pool.clone(), executor.clone());
        let queues = vbin_processes::queue::Queues::new(pool.clone(), executor.clone());
        let engine = vbin_flow_engine::Engine::new(
            app.clone(),
            settings.webhooks.delivery().policy,
            std::time::Duration::from_secs(10),
        );
        // One consumer of call events for every manager of this part (each was sent every
        // call event by a consumer of its own).
        let calls = vbin_processes::calls::consumer(&pool, &executor, &campaigns, &queues)
            .with_route(engine.call_route());
        tasks.push(tokio::spawn(calls.run(bus.clone(), stopped(&rx))));
        tasks.push(tokio::spawn(vbin_processes::campaign::run(
            campaigns,
            bus.clone(),
            stopped(&rx),
        )));
        tasks.push(tokio::spawn(vbin_processes::queue::run(
            queues,
            bus.clone(),
            stopped(&rx),
        )));
        tasks.push(tokio::spawn(vbin_processes::transcribe::run(
            pool.clone(),
            executor.clone(),
            bus.clone(),
            stopped(&rx),
        )));
        tasks.push(tokio::spawn(vbin_processes::conference::run(
            pool.clone(),
            executor.clone(),
            bus.clone(),
            stopped(&rx),
        )));
        tasks.push(tokio::spawn(engine.run(bus.clone(), stopped(&rx))));
        tasks.push(tokio::spawn(hang_up_orphans(
            pool.clone(),
            executor.clone(),
            settings.media.orphan_timeout(),
            stopped(&rx),
        )));
    }
    if let (Some(tts), Some(stt)) = (tts, stt) {
        let addr = settings.media.audiosocket_addr;
        let listener = vbin_media::audiosocket::bind(addr)
            .with_context(|| format!("binding the AudioSocket server on {addr}"))?;
        let local = listener.local_addr()?;
        tracing::info!(addr = %local, stt = stt.name(), "AudioSocket server listening");
        let speech = config::SpeechChoices::new(settings.media.clone(), stt.clone(), tts.clone());
        let kit = settings.agents.kit(
            Arc::new(speech),
            sealer.clone(),
            settings.webhooks.delivery().policy,
            pool.clone(),
        )?;
        let media = vbin_callmedia::Media::new(
            pool.clone(),
            executor.clone(),
            tts,
            Some(vbin_transcription::Transcriber::new(executor.clone(), stt)),
            Some(store.clone()),
            settings.webhooks.delivery().policy,
            vbin_callmedia::Settings::default(),
        )
        .with_agents(kit);
        // SIP calls' RTP feeds this process's media sessions.
        if let Some(sip) = &sip_carrier {
            sip.set_media(media.clone());
        }
        tasks.push(tokio::spawn(
            media.clone().serve_audiosocket(listener, stopped(&rx)),
        ));
        #[cfg(unix)]
        {
            // SIGUSR1 drains the media part (see `Media::drain`).
            let media = media.clone();
            let mut usr1 =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
                    .context("installing the SIGUSR1 handler")?;
            tokio::spawn(async move {
                if usr1.recv().await.is_some() {
                    media.drain();
                }
            });
        }
        tasks.push(tokio::spawn(media.run(bus.clone(), stopped(&rx))));
    }
    let redis_client = redis::Client::open(cfg.redis_url.as_str()).context("parsing REDIS_URL")?;
    let cache =
        vbin_projections::cache::Cache::new(redis_client.clone(), &installation.redis_prefix());
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
        let follower = tokio::spawn(vbin_http::auth::follow_revocations(
            keys.clone(),
            bus.clone(),
        ));
        let stop_follower = stopped(&rx);
        tasks.push(tokio::spawn(async move {
            stop_follower.await;
            follower.abort();
        }));
        let state = HttpState::new(vbin_http::HttpParts {
            pool: pool.clone(),
            keys: keys.clone(),
            bus: bus.clone(),
            redis: Some(redis_client.clone()),
            metrics: metrics.clone(),
        });
        let mut routes = axum::Router::new();
        if parts.contains(&Part::CommandApi) {
            let mut commands = vbin_commands::routes(CmdState {
                app: app.clone(),
                keys,
            })
            .merge(vbin_webhooks::routes());
            if cfg.database_read_url.is_some() {
                // Query APIs read a replica: each customer's writes are marked so that the
                // customer's next reads wait for them (vbin_replica).
                commands = commands.layer(axum::middleware::from_fn_with_state(
                    vbin_replica::WriteMarker {
                        primary: pool.clone(),
                        marks: vbin_replica::WriteMarks::new(
                            redis_client.clone(),
                            &installation.redis_prefix(),
                        ),
                    },
                    vbin_replica::mark_writes,
                ));
            }
            routes = routes.merge(commands);
        }
        if parts.contains(&Part::QueryApi) {
            tasks.push(tokio::spawn(vbin_read_api::watch_invalidations(
                pool.clone(),
                cache.clone(),
                stopped(&rx),
            )));
            let reads = match &cfg.database_read_url {
                None => vbin_replica::ReadPools::primary_only(pool.clone()),
                Some(url) => {
                    let replica = sqlx::postgres::PgPoolOptions::new()
                        .max_connections(cfg.db_pool)
                        .acquire_timeout(std::time::Duration::from_secs(2))
                        .connect_lazy(url)
                        .context("DATABASE_READ_URL")?;
                    let (reads, watch) = vbin_replica::ReadPools::with_replica(
                        pool.clone(),
                        replica,
                        vbin_replica::WriteMarks::new(
                            redis_client.clone(),
                            &installation.redis_prefix(),
                        ),
                        vbin_replica::ReplicaSettings {
                            wait: std::time::Duration::from_millis(cfg.read_replica_wait_ms),
                            max_lag: std::time::Duration::from_millis(cfg.read_replica_max_lag_ms),
                        },
                    );
                    tasks.push(tokio::spawn(watch.run(stopped(&rx))));
                    reads
                }
            };
            routes = routes.merge(vbin_read_api::routes(vbin_read_api::ReadState {
                pool: pool.clone(),
                reads,
                cache: Some(cache),
                store: Some(store.clone()),
            }));
        }
        if parts.contains(&Part::Gateway) {
            let hub = vbin_gateway::Hub::new(bus.clone(), settings.gateway.gateway());
            tasks.push(tokio::spawn(hub.clone().run(stopped(&rx))));
            routes = routes.merge(vbin_gateway::routes(hub, rx.clone()));
        }
        // The web console: static, served by every HTTP part (it calls the API on the same
        // origin, wherever the parts behind it run).
        routes = routes.merge(vbin_console::routes());
        let router = vbin_http::with_layers(routes, state);
        let listener = tokio::net::TcpListener::bind(cfg.http_addr)
            .await
            .with_context(|| format!("binding {}", cfg.http_addr))?;
        http_addr = Some(listener.local_addr()?);
        let sndbuf = settings.http.send_buffer_bytes;
        let shutdown = stopped(&rx);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(
                listener.tap_io(move |tcp| cap_send_buffer(tcp, sndbuf)),
                router,
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
        installation,
        stop,
        tasks,
    })
}
