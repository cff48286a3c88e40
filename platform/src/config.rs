//! The platform's configuration: every setting, as a flag or its environment variable, parsed
//! once by the binary (`vbin serve --help` lists them all). A bad value stops the start with a
//! message naming its variable. The parts receive typed settings built from it; no library
//! crate reads the environment.
//!
//! Defaults come from the library crates' `Default` impls, so a part started without the
//! binary (tests, benchmarks) behaves the same.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ipnet::IpNet;
use vbin_media::stt::deepgram::{self, Deepgram};
use vbin_media::stt::pocketsphinx::PocketSphinx;

/// Where the platform's services are, who it is, and [`Settings`] for its parts.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Postgres URL; the database is created if missing.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/vbin"
    )]
    pub database_url: String,
    /// A streaming replica of the database the query API reads customers' data from while it
    /// keeps up (read-your-writes: a customer who just wrote reads the replica once it has
    /// replayed the write, else the primary). Unset: every read goes to the primary.
    #[arg(long, env = "DATABASE_READ_URL", hide_env_values = true)]
    pub database_read_url: Option<String>,
    /// Longest a read of a customer who just wrote waits for the replica to replay the write
    /// before it reads the primary, in ms.
    #[arg(long, env = "VBIN_READ_REPLICA_WAIT_MS", default_value_t = 200)]
    pub read_replica_wait_ms: u64,
    /// The replica is read only while it is at most this far behind the primary, in ms.
    #[arg(
        long,
        env = "VBIN_READ_REPLICA_MAX_LAG_MS",
        default_value_t = 5000,
        value_parser = positive::<u64>("VBIN_READ_REPLICA_MAX_LAG_MS", "a positive number of ms")
    )]
    pub read_replica_max_lag_ms: u64,
    /// NATS URL; several servers (the nodes of a JetStream cluster) separated by commas.
    #[arg(
        long,
        env = "NATS_URL",
        hide_env_values = true,
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// Copies a JetStream cluster keeps of the event stream and of every durable consumer (1
    /// to 5; 3 on a 3-node cluster). Existing ones are changed in place. Unset: new ones get
    /// one copy and existing ones keep theirs.
    #[arg(long, env = "VBIN_STREAM_REPLICAS", value_parser = stream_replicas)]
    pub stream_replicas: Option<usize>,
    /// This installation's namespace on NATS (stream `VBIN_<NS>`, subjects `vbin.<ns>.>`):
    /// 1 to 32 of a-z 0-9 _ -. Default: the one stored in the database at its first migration
    /// (the installation id's first 12 hex digits; `events`, the stream of old, for a database
    /// that had events before namespaces). Every process of an installation must use the same.
    #[arg(
        long,
        env = "VBIN_NATS_NAMESPACE",
        value_parser = nats_namespace
    )]
    pub nats_namespace: Option<vbin_event_schema::Namespace>,
    /// Redis URL.
    #[arg(
        long,
        env = "REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// HTTP listen address (ip:port).
    #[arg(
        long,
        env = "VBIN_HTTP_ADDR",
        default_value = "127.0.0.1:8080",
        value_parser = socket_addr("VBIN_HTTP_ADDR")
    )]
    pub http_addr: SocketAddr,
    /// Platform admin bearer token (generated, stored and printed if unset).
    #[arg(long, env = "VBIN_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// JWT signing secret (generated and stored in the database if unset).
    #[arg(long, env = "VBIN_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Secret that seals the secrets events carry (assistants' engine keys); generated and
    /// stored in the database if unset. Changing it makes the sealed keys unreadable.
    #[arg(long, env = "VBIN_SEAL_KEY", hide_env_values = true)]
    pub seal_key: Option<String>,
    /// Postgres pool size of this process.
    #[arg(
        long,
        env = "VBIN_DB_POOL",
        default_value_t = 32,
        value_parser = positive::<u32>("VBIN_DB_POOL", "a positive number of connections")
    )]
    pub db_pool: u32,
    /// Group commit: the appends of concurrent commands share one statement and one commit
    /// (`false`: one each, as before; kept for comparing the two in `vbin bench commands`).
    #[arg(
        long,
        env = "VBIN_GROUP_COMMIT",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub group_commit: bool,
    #[command(flatten)]
    pub settings: Settings,
}

/// The settings of the parts, by part.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Settings {
    #[command(flatten)]
    pub http: HttpSettings,
    #[command(flatten)]
    pub webhooks: WebhookSettings,
    #[command(flatten)]
    pub gateway: GatewaySettings,
    #[command(flatten)]
    pub media: MediaSettings,
    #[command(flatten)]
    pub housekeeping: HousekeepingSettings,
    #[command(flatten)]
    pub storage: StorageSettings,
    #[command(flatten)]
    pub agents: AgentSettings,
    #[command(flatten)]
    pub sip: SipConfig,
    #[command(flatten)]
    pub billing: BillingSettings,
}

/// The funds check of new calls.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Billing")]
pub struct BillingSettings {
    /// Milliseconds a customer's passed funds check is reused for its next calls while no
    /// change of its billing account has been committed through this process (0: every call
    /// reads the balance).
    #[arg(
        long = "funds-check-fresh-ms",
        env = "VBIN_FUNDS_CHECK_FRESH_MS",
        value_name = "MS",
        default_value_t = 100
    )]
    pub funds_check_fresh_ms: u64,
}

impl Default for BillingSettings {
    fn default() -> Self {
        Self {
            funds_check_fresh_ms: vbin_app::funds::FUNDS_FRESH.as_millis() as u64,
        }
    }
}

/// The speech engines assistants may choose: the platform's, or another built from the media
/// settings with that name (once, then kept).
pub struct SpeechChoices {
    media: MediaSettings,
    stt: Arc<dyn vbin_media::stt::SttProvider>,
    tts: Arc<dyn vbin_media::tts::TtsProvider>,
    built_stt:
        std::sync::Mutex<std::collections::HashMap<String, Arc<dyn vbin_media::stt::SttProvider>>>,
    built_tts:
        std::sync::Mutex<std::collections::HashMap<String, Arc<dyn vbin_media::tts::TtsProvider>>>,
}

impl SpeechChoices {
    /// The platform's engines (`stt`, `tts`, built from `media`) and the others on demand.
    pub fn new(
        media: MediaSettings,
        stt: Arc<dyn vbin_media::stt::SttProvider>,
        tts: Arc<dyn vbin_media::tts::TtsProvider>,
    ) -> Self {
        Self {
            media,
            stt,
            tts,
            built_stt: Default::default(),
            built_tts: Default::default(),
        }
    }
}

impl vbin_callmedia::agents::SpeechEngines for SpeechChoices {
    fn stt(&self, name: Option<&str>) -> Result<Arc<dyn vbin_media::stt::SttProvider>, String> {
        let Some(name) = name.filter(|n| *n != self.stt.name()) else {
            return Ok(self.stt.clone());
        };
        let mut built = self.built_stt.lock().expect("stt engines");
        if let Some(p) = built.get(name) {
            return Ok(p.clone());
        }
        let mut media = self.media.clone();
        media.stt_provider = stt_provider_name(name)?;
        let p = media
            .stt_provider()
            .map_err(|e| format!("stt_type {name}: {e:#}"))?;
        built.insert(name.to_string(), p.clone());
        Ok(p)
    }

    fn tts(&self, name: Option<&str>) -> Result<Arc<dyn vbin_media::tts::TtsProvider>, String> {
        let Some(name) = name.filter(|n| *n != self.media.tts_provider) else {
            return Ok(self.tts.clone());
        };
        let mut built = self.built_tts.lock().expect("tts engines");
        if let Some(p) = built.get(name) {
            return Ok(p.clone());
        }
        let mut media = self.media.clone();
        media.tts_provider = name.to_string();
        let p = media
            .tts_provider()
            .map_err(|e| format!("tts_type {name}: {e:#}"))?;
        built.insert(name.to_string(), p.clone());
        Ok(p)
    }
}

/// AI voice agents.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "AI agents")]
pub struct AgentSettings {
    /// Conversations with assistants one customer may have under way at once.
    #[arg(
        long = "ai-max-live",
        env = "VBIN_AI_MAX_LIVE",
        value_name = "N",
        default_value_t = vbin_app::DEFAULT_MAX_LIVE_AICALLS,
        value_parser = positive::<u32>("VBIN_AI_MAX_LIVE", "a positive number of conversations")
    )]
    pub max_live: u32,
    /// Longest conversation with an assistant, in seconds (an `ai_talk` may ask for less).
    #[arg(
        long = "ai-max-secs",
        env = "VBIN_AI_MAX_SECS",
        value_name = "SECS",
        default_value_t = 1_800,
        value_parser = positive::<u64>("VBIN_AI_MAX_SECS", "a positive number of seconds")
    )]
    pub max_secs: u64,
    /// What the caller hears when the assistant's model fails (then the flow goes on).
    #[arg(
        long = "ai-apology",
        env = "VBIN_AI_APOLOGY",
        value_name = "TEXT",
        default_value = "Sorry, I cannot answer right now."
    )]
    pub apology: String,
    /// What the assistant asks when the caller says nothing (once; then it ends).
    #[arg(
        long = "ai-reprompt",
        env = "VBIN_AI_REPROMPT",
        value_name = "TEXT",
        default_value = "Are you still there?"
    )]
    pub reprompt: String,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            max_live: vbin_app::DEFAULT_MAX_LIVE_AICALLS,
            max_secs: 1_800,
            apology: "Sorry, I cannot answer right now.".into(),
            reprompt: "Are you still there?".into(),
        }
    }
}

impl AgentSettings {
    /// What the media part's conversations use: the platform's speech-to-text, Silero VAD
    /// from the models folder (loaded per conversation), `openai.*` engines through the
    /// webhooks' address policy.
    pub fn kit(
        &self,
        speech: Arc<dyn vbin_callmedia::agents::SpeechEngines>,
        sealer: Arc<vbin_app::seal::Sealer>,
        policy: vbin_netguard::AddressPolicy,
        pool: sqlx::PgPool,
    ) -> anyhow::Result<vbin_callmedia::agents::AgentKit> {
        let webhooks = vbin_webhooks::direct::Direct::new(
            pool,
            policy.clone(),
            Duration::from_secs(10),
            "vbin-agent/1",
        );
        use vbin_media::tts::piper;
        let dir = piper::default_models_dir();
        let vad: vbin_agent::VadFactory = Arc::new(move || {
            piper::init_runtime(&piper::runtime_in_models_dir(&dir))
                .map_err(|e| vbin_media::stt::SttError::Recognizer(e.to_string()))?;
            let v = vbin_media::stt::vad::SileroVad::load(&dir.join("silero-vad/silero_vad.onnx"))?;
            Ok(Box::new(v) as Box<dyn vbin_media::stt::vad::Vad + Send>)
        });
        // Streams may take long: the engine's own first-event and idle timeouts bound them.
        let http = vbin_netguard::tls::client_builder()
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(vbin_netguard::GuardedResolver::new(Arc::new(
                policy,
            ))))
            .user_agent("vbin-agent/1")
            .build()
            .context("building the AI engines' HTTP client")?;
        let check = |name: &str, text: &str| -> anyhow::Result<String> {
            let t = text.trim();
            anyhow::ensure!(
                !t.is_empty() && t.len() <= 500,
                "{name} must be 1 to 500 bytes"
            );
            Ok(t.to_string())
        };
        // Loaded on the first local.* conversation: most platforms never pay its 300 MB.
        let local = vbin_llm::LocalLlama::lazy(
            vbin_llm::local::default_model_path(),
            vbin_llm::LocalSettings::default(),
        )
        .context("the local model's settings")?;
        Ok(vbin_callmedia::agents::AgentKit {
            speech,
            vad,
            local: Some(Arc::new(local)),
            sealer,
            http,
            webhooks,
            max_duration: Duration::from_secs(self.max_secs),
            apology: check("VBIN_AI_APOLOGY", &self.apology)?,
            reprompt: check("VBIN_AI_REPROMPT", &self.reprompt)?,
        })
    }
}

/// Files: recordings.
#[derive(Clone, clap::Args)]
#[command(next_help_heading = "Storage")]
pub struct StorageSettings {
    /// Directory of the recordings store (created if missing; unused with VBIN_S3_BUCKET).
    #[arg(
        long = "data-dir",
        env = "VBIN_DATA_DIR",
        value_name = "DIR",
        default_value = "vbin-data"
    )]
    pub data_dir: PathBuf,
    /// Days a stored recording is kept before its file is deleted (0 keeps them forever).
    #[arg(
        long = "recording-retention-days",
        env = "VBIN_RECORDING_RETENTION_DAYS",
        value_name = "DAYS",
        default_value_t = 30,
        value_parser = number::<u64>("VBIN_RECORDING_RETENTION_DAYS", "a number of days")
    )]
    pub recording_retention_days: u64,
    /// S3-compatible bucket of the recordings store, instead of the data directory.
    #[arg(long = "s3-bucket", env = "VBIN_S3_BUCKET", value_name = "BUCKET")]
    pub s3_bucket: Option<String>,
    /// Endpoint of an S3-compatible store (MinIO, Ceph RGW, R2: `https://host[:port]`); AWS
    /// S3 if unset.
    #[arg(
        long = "s3-endpoint",
        env = "VBIN_S3_ENDPOINT",
        value_name = "URL",
        value_parser = http_url("VBIN_S3_ENDPOINT")
    )]
    pub s3_endpoint: Option<String>,
    /// Region of the bucket (else AWS_REGION, else us-east-1).
    #[arg(long = "s3-region", env = "VBIN_S3_REGION", value_name = "REGION")]
    pub s3_region: Option<String>,
    /// Access key id of the bucket (else AWS_ACCESS_KEY_ID or the environment's credentials).
    #[arg(
        long = "s3-access-key-id",
        env = "VBIN_S3_ACCESS_KEY_ID",
        value_name = "ID",
        hide_env_values = true
    )]
    pub s3_access_key_id: Option<String>,
    /// Secret access key of the bucket (else AWS_SECRET_ACCESS_KEY).
    #[arg(
        long = "s3-secret-access-key",
        env = "VBIN_S3_SECRET_ACCESS_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub s3_secret_access_key: Option<String>,
}

impl std::fmt::Debug for StorageSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageSettings")
            .field("data_dir", &self.data_dir)
            .field("recording_retention_days", &self.recording_retention_days)
            .field("s3", &self.s3())
            .finish()
    }
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            data_dir: "vbin-data".into(),
            recording_retention_days: 30,
            s3_bucket: None,
            s3_endpoint: None,
            s3_region: None,
            s3_access_key_id: None,
            s3_secret_access_key: None,
        }
    }
}

impl StorageSettings {
    /// The S3 bucket, when one is configured.
    fn s3(&self) -> Option<vbin_storage::S3Config> {
        let bucket = self
            .s3_bucket
            .as_deref()
            .map(str::trim)
            .filter(|b| !b.is_empty())?;
        Some(vbin_storage::S3Config {
            bucket: bucket.into(),
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            access_key_id: self.s3_access_key_id.clone(),
            secret_access_key: self.s3_secret_access_key.clone(),
        })
    }

    /// The recordings store: the S3 bucket if one is set, else the data directory.
    pub fn store(&self) -> anyhow::Result<vbin_storage::Store> {
        if let Some(cfg) = self.s3() {
            let http = vbin_netguard::tls::client_builder()
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(60))
                .build()
                .context("building the S3 client")?;
            return vbin_storage::Store::s3(&cfg, http).context("VBIN_S3_BUCKET");
        }
        let s3_only = [
            ("VBIN_S3_ENDPOINT", self.s3_endpoint.is_some()),
            ("VBIN_S3_REGION", self.s3_region.is_some()),
            ("VBIN_S3_ACCESS_KEY_ID", self.s3_access_key_id.is_some()),
            (
                "VBIN_S3_SECRET_ACCESS_KEY",
                self.s3_secret_access_key.is_some(),
            ),
        ];
        if let Some((var, _)) = s3_only.iter().find(|(_, set)| *set) {
            anyhow::bail!(
                "{var} is set but VBIN_S3_BUCKET is not: recordings would go to VBIN_DATA_DIR"
            );
        }
        vbin_storage::Store::local(&self.data_dir)
            .with_context(|| format!("VBIN_DATA_DIR: cannot use {}", self.data_dir.display()))
    }

    /// How long recordings are kept (None: forever).
    pub fn retention(&self) -> Option<Duration> {
        (self.recording_retention_days > 0)
            .then(|| Duration::from_secs(self.recording_retention_days * 86_400))
    }
}

/// The HTTP listener.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "HTTP")]
pub struct HttpSettings {
    /// Kernel send buffer of each HTTP connection, in bytes (>= 4096). Bounded because a
    /// WebSocket client that stops reading would otherwise let the kernel buffer megabytes for
    /// it before the gateway sees it is slow; with the bound, its backlog reaches the
    /// gateway's own per-connection limit and it is closed as a slow consumer.
    #[arg(
        long = "http-sndbuf-bytes",
        env = "VBIN_HTTP_SNDBUF_BYTES",
        value_name = "BYTES",
        default_value_t = 256 * 1024,
        value_parser = at_least::<usize>("VBIN_HTTP_SNDBUF_BYTES", 4096, "a number of bytes >= 4096")
    )]
    pub send_buffer_bytes: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            send_buffer_bytes: 256 * 1024,
        }
    }
}

/// Webhook delivery (the `webhooks` part).
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Webhooks")]
pub struct WebhookSettings {
    /// Wait before each delivery attempt, comma-separated milliseconds (the first is normally
    /// 0: at once); after the last attempt the delivery has failed.
    #[arg(
        long = "webhook-retry-schedule-ms",
        env = "VBIN_WEBHOOK_RETRY_SCHEDULE_MS",
        value_name = "MS,MS,...",
        default_value_t = Schedule(vbin_webhooks::delivery::Settings::default().schedule),
        value_parser = schedule
    )]
    pub retry_schedule: Schedule,
    /// Deliveries of one customer in flight at once.
    #[arg(
        long = "webhook-per-customer",
        env = "VBIN_WEBHOOK_PER_CUSTOMER",
        value_name = "N",
        default_value_t = vbin_webhooks::delivery::Settings::default().per_customer,
        value_parser = positive::<usize>("VBIN_WEBHOOK_PER_CUSTOMER", "a positive integer")
    )]
    pub per_customer: usize,
    /// An endpoint failing without a success for this many seconds is disabled.
    #[arg(
        long = "webhook-disable-after-secs",
        env = "VBIN_WEBHOOK_DISABLE_AFTER_SECS",
        value_name = "SECS",
        default_value_t = vbin_webhooks::delivery::Settings::default().disable_after.as_secs(),
        value_parser = number::<u64>("VBIN_WEBHOOK_DISABLE_AFTER_SECS", "a number of seconds")
    )]
    pub disable_after_secs: u64,
    /// Networks webhooks may reach although they are not public: comma-separated CIDRs or
    /// addresses (e.g. `127.0.0.1/32`). Every other private, loopback, link-local, ... address
    /// is refused (SSRF protection).
    #[arg(
        long = "webhook-allow-nets",
        env = "VBIN_WEBHOOK_ALLOW_NETS",
        value_name = "CIDR,...",
        default_value = "",
        hide_default_value = true,
        value_parser = networks
    )]
    pub allow_nets: Networks,
    /// Refuse `http://` webhook targets (true or false).
    #[arg(
        long = "webhook-https-only",
        env = "VBIN_WEBHOOK_HTTPS_ONLY",
        value_name = "BOOL",
        action = clap::ArgAction::Set,
        default_value_t = false,
        value_parser = boolean("VBIN_WEBHOOK_HTTPS_ONLY")
    )]
    pub https_only: bool,
    /// Ended (delivered or failed) deliveries stay listable for this many days (0 < days <=
    /// 3650; fractions allowed), then housekeeping deletes them.
    #[arg(
        long = "webhook-retention-days",
        env = "VBIN_WEBHOOK_RETENTION_DAYS",
        value_name = "DAYS",
        default_value = "30",
        value_parser = retention_days
    )]
    pub retention: Duration,
    /// A PEM file of root certificates trusted, besides the system's, by every outgoing https
    /// request (webhooks, webhook_send, play, the OpenAI-compatible speech server).
    #[arg(
        long = "tls-extra-ca-file",
        env = "VBIN_TLS_EXTRA_CA_FILE",
        value_name = "PEM"
    )]
    pub tls_extra_ca_file: Option<std::path::PathBuf>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        let d = vbin_webhooks::delivery::Settings::default();
        Self {
            retry_schedule: Schedule(d.schedule),
            per_customer: d.per_customer,
            disable_after_secs: d.disable_after.as_secs(),
            allow_nets: Networks(d.policy.allow),
            https_only: d.policy.https_only,
            retention: vbin_webhooks::retention::DEFAULT_RETENTION,
            tls_extra_ca_file: None,
        }
    }
}

impl WebhookSettings {
    /// The delivery settings (the rest at their defaults).
    pub fn delivery(&self) -> vbin_webhooks::delivery::Settings {
        vbin_webhooks::delivery::Settings {
            schedule: self.retry_schedule.0.clone(),
            per_customer: self.per_customer,
            disable_after: Duration::from_secs(self.disable_after_secs),
            policy: vbin_webhooks::guard::AddressPolicy {
                allow: self.allow_nets.0.clone(),
                https_only: self.https_only,
            },
            ..Default::default()
        }
    }
}

/// The WebSocket gateway (the `gateway` part).
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "WebSocket gateway")]
pub struct GatewaySettings {
    /// Pushes waiting to be written to one connection; more and it is closed as a slow
    /// consumer.
    #[arg(
        long = "ws-send-buffer",
        env = "VBIN_WS_SEND_BUFFER",
        value_name = "PUSHES",
        default_value_t = vbin_gateway::Settings::default().send_buffer,
        value_parser = positive::<usize>("VBIN_WS_SEND_BUFFER", "a positive integer")
    )]
    pub send_buffer: usize,
    /// Topics one connection may hold.
    #[arg(
        long = "ws-max-topics",
        env = "VBIN_WS_MAX_TOPICS",
        value_name = "N",
        default_value_t = vbin_gateway::Settings::default().max_topics,
        value_parser = positive::<usize>("VBIN_WS_MAX_TOPICS", "a positive integer")
    )]
    pub max_topics: usize,
    /// Server ping interval, in milliseconds.
    #[arg(
        long = "ws-ping-ms",
        env = "VBIN_WS_PING_MS",
        value_name = "MS",
        default_value_t = millis(vbin_gateway::Settings::default().ping_every),
        value_parser = positive::<u64>("VBIN_WS_PING_MS", "a positive number of milliseconds")
    )]
    pub ping_ms: u64,
    /// A connection silent (no frame, not even a pong) for this many milliseconds is closed.
    #[arg(
        long = "ws-idle-ms",
        env = "VBIN_WS_IDLE_MS",
        value_name = "MS",
        default_value_t = millis(vbin_gateway::Settings::default().idle_timeout),
        value_parser = positive::<u64>("VBIN_WS_IDLE_MS", "a positive number of milliseconds")
    )]
    pub idle_ms: u64,
    /// Most events a resume replays; further behind, the client is told to resync.
    #[arg(
        long = "ws-max-replay",
        env = "VBIN_WS_MAX_REPLAY",
        value_name = "EVENTS",
        default_value_t = vbin_gateway::Settings::default().max_replay,
        value_parser = positive::<u64>("VBIN_WS_MAX_REPLAY", "a positive integer")
    )]
    pub max_replay: u64,
    /// With no connection open for this many milliseconds, the gateway stops reading the
    /// event stream (it starts again with the next connection).
    #[arg(
        long = "ws-feed-idle-ms",
        env = "VBIN_WS_FEED_IDLE_MS",
        value_name = "MS",
        default_value_t = millis(vbin_gateway::Settings::default().feed_idle),
        value_parser = positive::<u64>("VBIN_WS_FEED_IDLE_MS", "a positive number of milliseconds")
    )]
    pub feed_idle_ms: u64,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        let d = vbin_gateway::Settings::default();
        Self {
            send_buffer: d.send_buffer,
            max_topics: d.max_topics,
            ping_ms: millis(d.ping_every),
            idle_ms: millis(d.idle_timeout),
            max_replay: d.max_replay,
            feed_idle_ms: millis(d.feed_idle),
        }
    }
}

impl GatewaySettings {
    /// The gateway's settings (the rest at their defaults).
    pub fn gateway(&self) -> vbin_gateway::Settings {
        vbin_gateway::Settings {
            send_buffer: self.send_buffer,
            max_topics: self.max_topics,
            ping_every: Duration::from_millis(self.ping_ms),
            idle_timeout: Duration::from_millis(self.idle_ms),
            max_replay: self.max_replay,
            feed_idle: Duration::from_millis(self.feed_idle_ms),
            ..Default::default()
        }
    }
}

/// The speech-to-text provider of the media part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SttProviderName {
    /// Whisper tiny.en on utterances cut by Silero VAD, offline (models from `scripts/models`;
    /// PocketSphinx when they are missing).
    Whisper,
    /// PocketSphinx, offline (Debian: pocketsphinx pocketsphinx-en-us).
    Pocketsphinx,
    /// Deepgram's live streaming API (needs `VBIN_DEEPGRAM_API_KEY`).
    Deepgram,
}

impl std::fmt::Display for SttProviderName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Whisper => "whisper",
            Self::Pocketsphinx => "pocketsphinx",
            Self::Deepgram => "deepgram",
        })
    }
}

/// The media path (the `media` part): the AudioSocket server and speech-to-text.
#[derive(Clone, clap::Args)]
#[command(next_help_heading = "Media and speech-to-text")]
pub struct MediaSettings {
    /// AudioSocket listen address (ip:port) for Asterisk.
    #[arg(
        long = "audiosocket-addr",
        env = "VBIN_AUDIOSOCKET_ADDR",
        default_value = "127.0.0.1:9093",
        value_parser = socket_addr("VBIN_AUDIOSOCKET_ADDR")
    )]
    pub audiosocket_addr: SocketAddr,
    /// Speech-to-text provider: whisper, pocketsphinx or deepgram.
    #[arg(
        long = "stt-provider",
        env = "VBIN_STT_PROVIDER",
        value_name = "PROVIDER",
        default_value_t = SttProviderName::Whisper,
        value_parser = stt_provider_name
    )]
    pub stt_provider: SttProviderName,
    /// JSGF grammar file that PocketSphinx recognizes (free speech if unset).
    #[arg(long = "stt-grammar", env = "VBIN_STT_GRAMMAR", value_name = "PATH")]
    pub stt_grammar: Option<PathBuf>,
    /// Deepgram API key (needed with the deepgram provider).
    #[arg(
        long = "deepgram-api-key",
        env = "VBIN_DEEPGRAM_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub deepgram_api_key: Option<String>,
    /// Deepgram endpoint (`wss://host[:port][/prefix]` or `ws://...`; `/v1/listen` is
    /// appended).
    #[arg(
        long = "deepgram-url",
        env = "VBIN_DEEPGRAM_URL",
        value_name = "URL",
        default_value = deepgram::DEFAULT_BASE_URL,
        value_parser = deepgram_url
    )]
    pub deepgram_url: String,
    /// Text-to-speech provider of talks and of the sandbox far end: piper (offline, the
    /// en_US-joe-medium voice installed by scripts/models; espeak when it is missing), espeak
    /// (offline) or openai (an OpenAI-compatible `/v1/audio/speech` server at VBIN_TTS_URL).
    #[arg(
        long = "tts-provider",
        env = "VBIN_TTS_PROVIDER",
        value_name = "PROVIDER",
        default_value = "piper",
        value_parser = ["piper", "espeak", "openai"]
    )]
    pub tts_provider: String,
    /// Piper speaks without its random variation: the same text always gives the same audio
    /// (for repeatable prompts and tests; by default each synthesis varies a little, as the
    /// voice was trained to).
    #[arg(
        long = "tts-deterministic",
        env = "VBIN_TTS_DETERMINISTIC",
        value_name = "BOOL",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub tts_deterministic: bool,
    /// Base URL of the OpenAI-compatible speech server (tts provider openai).
    #[arg(long = "tts-url", env = "VBIN_TTS_URL", value_name = "URL")]
    pub tts_url: Option<String>,
    /// API key of the speech server (tts provider openai).
    #[arg(
        long = "tts-api-key",
        env = "VBIN_TTS_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub tts_api_key: Option<String>,
    /// Milliseconds after which an answered call whose media process died (and none took its
    /// session over) is hung up.
    #[arg(
        long = "media-orphan-timeout-ms",
        env = "VBIN_MEDIA_ORPHAN_TIMEOUT_MS",
        value_name = "MS",
        default_value_t = 30_000,
        value_parser = positive::<u64>("VBIN_MEDIA_ORPHAN_TIMEOUT_MS", "a positive number of milliseconds")
    )]
    pub orphan_timeout_ms: u64,
}

impl std::fmt::Debug for MediaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaSettings")
            .field("audiosocket_addr", &self.audiosocket_addr)
            .field("stt_provider", &self.stt_provider)
            .field("stt_grammar", &self.stt_grammar)
            .field(
                "deepgram_api_key",
                &self.deepgram_api_key.as_ref().map(|_| "<redacted>"),
            )
            .field("deepgram_url", &self.deepgram_url)
            .field("tts_provider", &self.tts_provider)
            .field("tts_deterministic", &self.tts_deterministic)
            .field("tts_url", &self.tts_url)
            .field(
                "tts_api_key",
                &self.tts_api_key.as_ref().map(|_| "<redacted>"),
            )
            .field("orphan_timeout_ms", &self.orphan_timeout_ms)
            .finish()
    }
}

impl Default for MediaSettings {
    fn default() -> Self {
        Self {
            audiosocket_addr: SocketAddr::from(([127, 0, 0, 1], 9093)),
            stt_provider: SttProviderName::Whisper,
            stt_grammar: None,
            deepgram_api_key: None,
            deepgram_url: deepgram::DEFAULT_BASE_URL.into(),
            tts_provider: "piper".into(),
            tts_deterministic: false,
            tts_url: None,
            tts_api_key: None,
            orphan_timeout_ms: 30_000,
        }
    }
}

impl MediaSettings {
    /// How long a call's media may be ownerless before the call is hung up.
    pub fn orphan_timeout(&self) -> Duration {
        Duration::from_millis(self.orphan_timeout_ms)
    }

    /// The text-to-speech provider (with its clip cache); fails (naming the variable) when
    /// openai has no URL.
    pub fn tts_provider(&self) -> anyhow::Result<Arc<dyn vbin_media::tts::TtsProvider>> {
        use vbin_media::tts::{espeak::EspeakNg, openai::OpenAiTts, piper, CachedTts, TtsProvider};
        let piper = || match piper::Piper::from_models_dir(&piper::default_models_dir()) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "the Piper voice is not installed (scripts/models); speaking with espeak-ng");
                None
            }
        };
        let espeak = || -> Arc<dyn TtsProvider> {
            let e = EspeakNg::new();
            if !e.available() {
                tracing::warn!("espeak-ng is not installed (Debian: espeak-ng); talks will fail");
            }
            Arc::new(e)
        };
        let inner: Arc<dyn TtsProvider> = match self.tts_provider.as_str() {
            "openai" => {
                let url = self
                    .tts_url
                    .as_deref()
                    .context("VBIN_TTS_PROVIDER=openai needs VBIN_TTS_URL")?;
                let mut p = OpenAiTts::new(url, "tts-1", "alloy")
                    .map_err(|e| anyhow::anyhow!("VBIN_TTS_URL: {e}"))?;
                if let Some(k) = self.tts_api_key.as_deref().filter(|k| !k.trim().is_empty()) {
                    p = p.with_api_key(k);
                }
                Arc::new(p)
            }
            "piper" => match piper() {
                Some(p) if self.tts_deterministic => Arc::new(p.deterministic()),
                Some(p) => Arc::new(p),
                None => espeak(),
            },
            _ => espeak(),
        };
        // Up to ~30 minutes of clips (16,000 samples a second).
        Ok(Arc::new(CachedTts::new(inner, 16_000 * 60 * 30)))
    }

    /// The speech-to-text provider; fails (naming the variable) when deepgram has no key.
    pub fn stt_provider(&self) -> anyhow::Result<Arc<dyn vbin_media::stt::SttProvider>> {
        let pocketsphinx = || {
            let mut p = PocketSphinx::new();
            if let Some(g) = &self.stt_grammar {
                p = p.with_grammar(g);
            }
            if !p.available() {
                tracing::warn!("pocketsphinx is not installed (Debian: pocketsphinx pocketsphinx-en-us); transcriptions will fail to start");
            }
            Arc::new(p) as Arc<dyn vbin_media::stt::SttProvider>
        };
        match self.stt_provider {
            SttProviderName::Whisper => {
                use vbin_media::stt::whisper::Whisper;
                let dir = vbin_media::tts::piper::default_models_dir();
                if !Whisper::available(&dir) {
                    tracing::warn!(dir = %dir.display(), "Whisper is not installed (scripts/models); transcribing with PocketSphinx");
                    return Ok(pocketsphinx());
                }
                // Loaded by the first transcription, not at every start.
                Ok(Arc::new(vbin_media::stt::lazy::Lazy::new(
                    "whisper",
                    move || {
                        Ok(Arc::new(Whisper::from_models_dir(&dir)?)
                            as Arc<dyn vbin_media::stt::SttProvider>)
                    },
                )))
            }
            SttProviderName::Pocketsphinx => Ok(pocketsphinx()),
            SttProviderName::Deepgram => {
                let key = self
                    .deepgram_api_key
                    .as_deref()
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .context("VBIN_STT_PROVIDER=deepgram needs VBIN_DEEPGRAM_API_KEY")?;
                Ok(Arc::new(
                    Deepgram::new(key).with_base_url(self.deepgram_url.clone()),
                ))
            }
        }
    }
}

/// The SIP carrier (part `carrier`): calls placed through customers' trunks.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "SIP")]
pub struct SipConfig {
    /// SIP listen address, UDP and TCP (ip:port).
    #[arg(
        long = "sip-addr",
        env = "VBIN_SIP_ADDR",
        default_value = "127.0.0.1:5060",
        value_parser = socket_addr("VBIN_SIP_ADDR")
    )]
    pub addr: SocketAddr,
    /// The IP address the far ends reach this process at, put in Via, Contact and SDP, when
    /// it is not the listen address's (behind NAT, or listening on 0.0.0.0).
    #[arg(long = "sip-advertised-ip", env = "VBIN_SIP_ADVERTISED_IP")]
    pub advertised_ip: Option<std::net::IpAddr>,
    /// UDP ports of SIP calls' RTP, `LOW-HIGH` (one even port per call, so the range holds
    /// half as many calls as ports).
    #[arg(
        long = "rtp-ports",
        env = "VBIN_RTP_PORTS",
        default_value = "20000-20999",
        value_parser = port_range
    )]
    pub rtp_ports: std::ops::RangeInclusive<u16>,
    /// Seconds between two SIP OPTIONS keepalives of every trunk (its `reachability`); 0
    /// sends none.
    #[arg(
        long = "sip-options-secs",
        env = "VBIN_SIP_OPTIONS_SECS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(0..=86_400)
    )]
    pub options_secs: u64,
}

impl Default for SipConfig {
    fn default() -> Self {
        let d = vbin_sip::SipSettings::default();
        Self {
            addr: d.bind,
            advertised_ip: d.advertised_ip,
            rtp_ports: d.rtp_ports,
            options_secs: d.keepalive.map_or(0, |k| k.as_secs()),
        }
    }
}

impl SipConfig {
    /// The SIP carrier's settings.
    pub fn settings(&self) -> vbin_sip::SipSettings {
        vbin_sip::SipSettings {
            bind: self.addr,
            advertised_ip: self.advertised_ip,
            rtp_ports: self.rtp_ports.clone(),
            keepalive: (self.options_secs > 0)
                .then(|| std::time::Duration::from_secs(self.options_secs)),
        }
    }
}

/// Periodic pruning.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Housekeeping")]
pub struct HousekeepingSettings {
    /// Seconds between two rounds of pruning (idempotency records, request once-keys, ended
    /// webhook deliveries).
    #[arg(
        long = "housekeeping-secs",
        env = "VBIN_HOUSEKEEPING_SECS",
        value_name = "SECS",
        default_value_t = 600,
        value_parser = positive::<u64>("VBIN_HOUSEKEEPING_SECS", "a positive number of seconds")
    )]
    pub every_secs: u64,
}

impl Default for HousekeepingSettings {
    fn default() -> Self {
        Self { every_secs: 600 }
    }
}

impl HousekeepingSettings {
    /// How often.
    pub fn every(&self) -> Duration {
        Duration::from_secs(self.every_secs)
    }
}

/// A retry schedule (displayed and parsed as comma-separated milliseconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule(pub Vec<Duration>);

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms: Vec<String> = self.0.iter().map(|d| d.as_millis().to_string()).collect();
        f.write_str(&ms.join(","))
    }
}

/// Networks (displayed and parsed as comma-separated CIDRs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Networks(pub Vec<IpNet>);

impl FromStr for Networks {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        networks(s)
    }
}

// Value parsers. Their errors name the variable, since a bad value usually comes from the
// environment and clap's own message names only the flag.

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn number<T: FromStr + Clone + Send + Sync + 'static>(
    var: &'static str,
    expected: &'static str,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static {
    move |s| {
        s.trim()
            .parse::<T>()
            .map_err(|_| format!("{var}: expected {expected}"))
    }
}

fn at_least<T: FromStr + PartialOrd + Copy + Send + Sync + 'static>(
    var: &'static str,
    min: T,
    expected: &'static str,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static {
    move |s| {
        s.trim()
            .parse::<T>()
            .ok()
            .filter(|n| *n >= min)
            .ok_or_else(|| format!("{var}: expected {expected}"))
    }
}

fn positive<T: FromStr + PartialOrd + Copy + Send + Sync + From<u8> + 'static>(
    var: &'static str,
    expected: &'static str,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static {
    at_least(var, T::from(1u8), expected)
}

fn stream_replicas(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n @ 1..=5) => Ok(n),
        _ => Err(format!(
            "VBIN_STREAM_REPLICAS: expected 1 to 5 (JetStream's limit), not {s:?}"
        )),
    }
}

fn port_range(s: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let bad =
        || format!("VBIN_RTP_PORTS: expected LOW-HIGH with 1024 <= LOW < HIGH <= 65535, not {s:?}");
    let (lo, hi) = s.trim().split_once('-').ok_or_else(bad)?;
    let (lo, hi): (u16, u16) = (
        lo.parse().map_err(|_| bad())?,
        hi.parse().map_err(|_| bad())?,
    );
    if lo < 1024 || lo >= hi {
        return Err(bad());
    }
    Ok(lo..=hi)
}

fn nats_namespace(s: &str) -> Result<vbin_event_schema::Namespace, String> {
    vbin_event_schema::Namespace::new(s.trim()).map_err(|e| format!("VBIN_NATS_NAMESPACE: {e}"))
}

fn socket_addr(
    var: &'static str,
) -> impl Fn(&str) -> Result<SocketAddr, String> + Clone + Send + Sync + 'static {
    move |s| {
        s.trim()
            .parse()
            .map_err(|e| format!("{var}: expected ip:port ({e})"))
    }
}

fn boolean(
    var: &'static str,
) -> impl Fn(&str) -> Result<bool, String> + Clone + Send + Sync + 'static {
    move |s| match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "" | "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("{var}: expected true or false")),
    }
}

fn schedule(s: &str) -> Result<Schedule, String> {
    const EXPECTED: &str = "VBIN_WEBHOOK_RETRY_SCHEDULE_MS: expected comma-separated milliseconds";
    let waits = s
        .split(',')
        .map(|p| p.trim().parse::<u64>().map(Duration::from_millis))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{EXPECTED} ({e})"))?;
    if waits.is_empty() {
        return Err(EXPECTED.into());
    }
    Ok(Schedule(waits))
}

fn networks(s: &str) -> Result<Networks, String> {
    s.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| {
            n.parse::<IpNet>()
                .or_else(|_| n.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|e| {
                    format!(
                        "VBIN_WEBHOOK_ALLOW_NETS: expected comma-separated networks (CIDR) or \
                         addresses; {n:?}: {e}"
                    )
                })
        })
        .collect::<Result<_, _>>()
        .map(Networks)
}

fn retention_days(s: &str) -> Result<Duration, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|d| d.is_finite() && *d > 0.0 && *d <= 3_650.0)
        .map(|d| Duration::from_secs_f64(d * 86_400.0))
        .ok_or_else(|| "VBIN_WEBHOOK_RETENTION_DAYS: expected days, 0 < days <= 3650".into())
}

fn stt_provider_name(s: &str) -> Result<SttProviderName, String> {
    match s.trim() {
        "whisper" => Ok(SttProviderName::Whisper),
        "pocketsphinx" => Ok(SttProviderName::Pocketsphinx),
        "deepgram" => Ok(SttProviderName::Deepgram),
        _ => Err("VBIN_STT_PROVIDER: expected whisper, pocketsphinx or deepgram".into()),
    }
}

/// Parses an `http://` or `https://` URL for the setting `var`.
fn http_url(var: &'static str) -> impl Fn(&str) -> Result<String, String> + Clone {
    move |s: &str| {
        let s = s.trim();
        match url::Url::parse(s) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(s.into()),
            _ => Err(format!(
                "{var}: expected an http:// or https:// URL, got {s:?}"
            )),
        }
    }
}

fn deepgram_url(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(deepgram::DEFAULT_BASE_URL.into());
    }
    // The provider checks its URL when a session starts; check it now instead.
    Deepgram::new("-")
        .with_base_url(s)
        .listen_url("en")
        .map_err(|e| format!("VBIN_DEEPGRAM_URL: expected a ws:// or wss:// URL ({e})"))?;
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    fn parse(args: &[&str]) -> Result<Config, String> {
        Cli::try_parse_from(std::iter::once("vbin").chain(args.iter().copied()))
            .map(|c| c.config)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_are_the_libraries_defaults() {
        // What clap gives without flags or variables is `Settings::default()`, built from the
        // library crates' defaults.
        if std::env::vars().any(|(k, _)| k.starts_with("VBIN_")) {
            return;
        }
        let parsed = parse(&[]).unwrap().settings;
        assert_eq!(format!("{parsed:?}"), format!("{:?}", Settings::default()));
        let g = parsed.gateway.gateway();
        let lib = vbin_gateway::Settings::default();
        assert_eq!(
            (
                g.send_buffer,
                g.max_topics,
                g.ping_every,
                g.idle_timeout,
                g.max_replay
            ),
            (
                lib.send_buffer,
                lib.max_topics,
                lib.ping_every,
                lib.idle_timeout,
                lib.max_replay
            )
        );
        let w = parsed.webhooks.delivery();
        let lib = vbin_webhooks::delivery::Settings::default();
        assert_eq!(
            (w.schedule, w.per_customer, w.disable_after),
            (lib.schedule, lib.per_customer, lib.disable_after)
        );
        assert_eq!(parsed.webhooks.retention, Duration::from_secs(30 * 86_400));
    }

    #[test]
    fn values_are_parsed() {
        let c = parse(&[
            "--webhook-retry-schedule-ms",
            "0, 700,700",
            "--webhook-allow-nets",
            "127.0.0.1/32, ::1",
            "--webhook-https-only",
            "yes",
            "--webhook-retention-days",
            "0.5",
            "--ws-ping-ms",
            "200",
            "--http-sndbuf-bytes",
            "16384",
            "--stt-provider",
            "deepgram",
            "--deepgram-url",
            "ws://127.0.0.1:1",
        ])
        .unwrap();
        let w = c.settings.webhooks.delivery();
        assert_eq!(
            w.schedule,
            [0, 700, 700].map(Duration::from_millis).to_vec()
        );
        assert!(w.policy.permits("127.0.0.1".parse().unwrap()));
        assert!(w.policy.permits("::1".parse().unwrap()));
        assert!(!w.policy.permits("127.0.0.2".parse().unwrap()));
        assert!(w.policy.https_only);
        assert_eq!(c.settings.webhooks.retention, Duration::from_secs(43_200));
        assert_eq!(
            c.settings.gateway.gateway().ping_every,
            Duration::from_millis(200)
        );
        assert_eq!(c.settings.http.send_buffer_bytes, 16384);
        assert_eq!(c.settings.media.stt_provider, SttProviderName::Deepgram);
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (flag, value, var) in [
            (
                "--webhook-retry-schedule-ms",
                "0,soon",
                "VBIN_WEBHOOK_RETRY_SCHEDULE_MS",
            ),
            ("--webhook-per-customer", "0", "VBIN_WEBHOOK_PER_CUSTOMER"),
            (
                "--webhook-disable-after-secs",
                "-1",
                "VBIN_WEBHOOK_DISABLE_AFTER_SECS",
            ),
            (
                "--webhook-allow-nets",
                "10.0.0.0/33",
                "VBIN_WEBHOOK_ALLOW_NETS",
            ),
            ("--webhook-https-only", "maybe", "VBIN_WEBHOOK_HTTPS_ONLY"),
            (
                "--webhook-retention-days",
                "0",
                "VBIN_WEBHOOK_RETENTION_DAYS",
            ),
            (
                "--webhook-retention-days",
                "3651",
                "VBIN_WEBHOOK_RETENTION_DAYS",
            ),
            ("--ws-send-buffer", "0", "VBIN_WS_SEND_BUFFER"),
            ("--ws-max-topics", "x", "VBIN_WS_MAX_TOPICS"),
            ("--ws-ping-ms", "0", "VBIN_WS_PING_MS"),
            ("--ws-idle-ms", "1s", "VBIN_WS_IDLE_MS"),
            ("--ws-max-replay", "-5", "VBIN_WS_MAX_REPLAY"),
            ("--http-sndbuf-bytes", "4095", "VBIN_HTTP_SNDBUF_BYTES"),
            ("--http-addr", "localhost", "VBIN_HTTP_ADDR"),
            ("--db-pool", "0", "VBIN_DB_POOL"),
            ("--audiosocket-addr", "9093", "VBIN_AUDIOSOCKET_ADDR"),
            ("--stt-provider", "kaldi", "VBIN_STT_PROVIDER"),
            ("--deepgram-url", "ftp://x", "VBIN_DEEPGRAM_URL"),
            ("--s3-endpoint", "minio:9000", "VBIN_S3_ENDPOINT"),
            ("--housekeeping-secs", "0", "VBIN_HOUSEKEEPING_SECS"),
            ("--ai-max-live", "0", "VBIN_AI_MAX_LIVE"),
        ] {
            let err = parse(&[&format!("{flag}={value}")]).unwrap_err();
            assert!(err.contains(var), "{flag} {value}: {err}");
        }
    }

    #[test]
    fn s3_settings_need_a_bucket_and_hide_the_secret() {
        let mut st = StorageSettings {
            s3_endpoint: Some("http://127.0.0.1:9".into()),
            s3_secret_access_key: Some("s3cr3t".into()),
            ..Default::default()
        };
        let err = st.store().err().unwrap().to_string();
        assert!(
            err.contains("VBIN_S3_ENDPOINT") && err.contains("VBIN_S3_BUCKET"),
            "{err}"
        );
        st.s3_bucket = Some("recordings".into());
        // Half a credential is refused at start, not at the first recording.
        let err = format!("{:#}", st.store().err().unwrap());
        assert!(err.contains("AccessKeyId"), "{err}");
        st.s3_access_key_id = Some("id".into());
        st.store().expect("an S3 store is built without a request");
        let debug = format!("{st:?}");
        assert!(
            debug.contains("recordings") && !debug.contains("s3cr3t"),
            "{debug}"
        );
    }

    #[test]
    fn deepgram_needs_a_key() {
        let mut m = MediaSettings {
            stt_provider: SttProviderName::Deepgram,
            ..Default::default()
        };
        let err = m.stt_provider().err().unwrap().to_string();
        assert!(err.contains("VBIN_DEEPGRAM_API_KEY"), "{err}");
        m.deepgram_api_key = Some("  ".into());
        assert!(m.stt_provider().is_err());
        m.deepgram_api_key = Some("k".into());
        assert_eq!(m.stt_provider().unwrap().name(), "deepgram");
        let debug = format!("{m:?}");
        assert!(!debug.contains("\"k\""), "{debug}");
    }
}
