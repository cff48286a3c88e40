//! Text-to-speech behind one interface.
//!
//! A provider turns a [`TtsRequest`] into 16 kHz mono PCM (the media engine's internal
//! format, [`TTS_RATE_HZ`]). [`CachedTts`] wraps any provider with a cache keyed by
//! (provider, voice, language, text): an IVR says the same prompts over and over.

pub mod espeak;
pub mod openai;
pub mod piper;

use std::sync::Arc;

/// Sample rate of every provider's output (the media engine's internal rate).
pub const TTS_RATE_HZ: u32 = 16_000;

/// Longest text one request may synthesise, in bytes.
pub const MAX_TEXT_BYTES: usize = 4_096;

/// What to say.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TtsRequest {
    /// The text (at most [`MAX_TEXT_BYTES`]).
    pub text: String,
    /// BCP 47 language, e.g. `en-US`.
    pub language: String,
    /// Provider-specific voice; `None` for the provider's default.
    pub voice: Option<String>,
}

impl TtsRequest {
    /// A request in `language` with the default voice.
    pub fn new(text: impl Into<String>, language: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            language: language.into(),
            voice: None,
        }
    }
}

/// Synthesised speech: 16 kHz mono PCM, shared (cached clips are played by many calls).
pub type Speech = Arc<[i16]>;

/// Why synthesis failed.
#[derive(Debug, thiserror::Error)]
pub enum TtsError {
    /// The provider has no voice for this language.
    #[error("language {0:?} is not supported by this provider")]
    UnsupportedLanguage(String),
    /// The provider has no such voice.
    #[error("voice {0:?} is not known to this provider")]
    UnknownVoice(String),
    /// Empty or longer than [`MAX_TEXT_BYTES`].
    #[error("text must be 1 to {MAX_TEXT_BYTES} bytes")]
    BadText,
    /// The engine failed (process, model or remote server).
    #[error("synthesis: {0}")]
    Engine(String),
}

/// A text-to-speech engine.
#[async_trait::async_trait]
pub trait TtsProvider: Send + Sync + 'static {
    /// A short name for logs, metrics and the cache key.
    fn name(&self) -> &'static str;

    /// Synthesises `req` to 16 kHz mono PCM.
    async fn synthesize(&self, req: &TtsRequest) -> Result<Speech, TtsError>;
}

/// Checks the text of a request against the limits every provider shares.
pub fn check_text(text: &str) -> Result<(), TtsError> {
    if text.trim().is_empty() || text.len() > MAX_TEXT_BYTES {
        return Err(TtsError::BadText);
    }
    Ok(())
}

/// A provider with a cache of its clips, bounded by total samples.
pub struct CachedTts {
    inner: Arc<dyn TtsProvider>,
    cache: moka::sync::Cache<TtsRequest, Speech>,
}

impl CachedTts {
    /// Caches up to `max_samples` samples in all (16,000 per second of speech).
    pub fn new(inner: Arc<dyn TtsProvider>, max_samples: u64) -> Self {
        let cache = moka::sync::Cache::builder()
            .weigher(|_: &TtsRequest, v: &Speech| v.len().min(u32::MAX as usize) as u32)
            .max_capacity(max_samples)
            .build();
        Self { inner, cache }
    }
}

#[async_trait::async_trait]
impl TtsProvider for CachedTts {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn synthesize(&self, req: &TtsRequest) -> Result<Speech, TtsError> {
        // The provider name is constant per cache, so (voice, language, text) is the key.
        if let Some(hit) = self.cache.get(req) {
            metrics::counter!("vbin_tts_cache_hits_total").increment(1);
            return Ok(hit);
        }
        let speech = self.inner.synthesize(req).await?;
        self.cache.insert(req.clone(), speech.clone());
        Ok(speech)
    }
}
