//! What the media part's AI conversations need from the platform (their engines and limits),
//! apart from the conversations themselves (`ai.rs`).

use futures::future::{BoxFuture, Shared};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use vbin_agent::{Greeting, In, VadFactory};
use vbin_app::seal::Sealer;
use vbin_event_schema::CallId;
use vbin_event_schema::{AiId, AiSettings};
use vbin_llm::LlmProvider;
use vbin_media::stt::SttProvider;
use vbin_media::tts::TtsProvider;

/// A conversation running here: its call and its input.
pub(crate) type Running = (CallId, mpsc::Sender<In>);

/// A greeting being made while a call rings: for which assistant and settings, and the work
/// (shared: the conversation may start while it runs).
#[derive(Clone)]
pub(crate) struct Prepared {
    pub ai: AiId,
    pub settings: AiSettings,
    pub greeting: Shared<BoxFuture<'static, Option<Greeting>>>,
    pub since: std::time::Instant,
}

/// The speech engines an assistant may choose (`stt_type`, `tts_type`; None: the
/// platform's). An engine this platform cannot run is an error that says why.
pub trait SpeechEngines: Send + Sync {
    /// Speech-to-text by name.
    fn stt(&self, name: Option<&str>) -> Result<Arc<dyn SttProvider>, String>;
    /// Text-to-speech by name.
    fn tts(&self, name: Option<&str>) -> Result<Arc<dyn TtsProvider>, String>;
}

/// What conversations need besides the session: the engines and the platform's limits.
#[derive(Clone)]
pub struct AgentKit {
    /// Speech engines.
    pub speech: Arc<dyn SpeechEngines>,
    /// Barge-in detection.
    pub vad: VadFactory,
    /// The embedded model (`local.*`), if installed.
    pub local: Option<Arc<dyn LlmProvider>>,
    /// Opens the assistants' engine keys.
    pub sealer: Arc<Sealer>,
    /// HTTP client of `openai.*` engines (the SSRF guard, the platform's TLS roots).
    pub http: reqwest::Client,
    /// Sends the `webhook_send` tool's requests (signed, through the SSRF guard).
    pub webhooks: vbin_webhooks::direct::Direct,
    /// Longest conversation.
    pub max_duration: Duration,
    /// Said when the model fails.
    pub apology: String,
    /// Said when the caller is silent.
    pub reprompt: String,
}
