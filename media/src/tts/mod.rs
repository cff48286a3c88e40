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
#[derive(Clone, Debug, thiserror::Error)]
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

/// A provider with a cache of its clips, bounded by total samples. Concurrent requests for
/// the same clip are synthesised once (the others wait for it): the same prompt starting on
/// hundreds of calls at once costs one synthesis.
pub struct CachedTts {
    inner: Arc<dyn TtsProvider>,
    cache: moka::future::Cache<TtsRequest, Speech>,
}

impl CachedTts {
    /// Caches up to `max_samples` samples in all (16,000 per second of speech).
    pub fn new(inner: Arc<dyn TtsProvider>, max_samples: u64) -> Self {
        let cache = moka::future::Cache::builder()
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
        if let Some(hit) = self.cache.get(req).await {
            metrics::counter!("vbin_tts_cache_hits_total").increment(1);
            return Ok(hit);
        }
        self.cache
            .try_get_with(req.clone(), self.inner.synthesize(req))
            .await
            .map_err(Arc::unwrap_or_clone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts its syntheses; fails the first `fail` of them.
    struct Counting {
        calls: AtomicUsize,
        fail: usize,
    }

    #[async_trait::async_trait]
    impl TtsProvider for Counting {
        fn name(&self) -> &'static str {
            "counting"
        }
        async fn synthesize(&self, req: &TtsRequest) -> Result<Speech, TtsError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            if n < self.fail {
                return Err(TtsError::Engine("down".into()));
            }
            Ok(vec![req.text.len() as i16; 4].into())
        }
    }

    #[tokio::test]
    async fn the_same_clip_wanted_at_once_is_synthesised_once_and_errors_are_not_kept() {
        let inner = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            fail: 1,
        });
        let tts = Arc::new(CachedTts::new(inner.clone(), 1_000));
        let req = TtsRequest::new("hello", "en-US");
        // The first synthesis fails: every request waiting on it gets the error.
        let first = tts.synthesize(&req).await;
        assert!(matches!(first, Err(TtsError::Engine(m)) if m == "down"));
        let all = futures::future::join_all((0..20).map(|_| tts.synthesize(&req))).await;
        assert!(all
            .iter()
            .all(|r| r.as_ref().is_ok_and(|s| s[..] == [5i16; 4])));
        assert_eq!(
            inner.calls.load(Ordering::SeqCst),
            2,
            "once after the failure"
        );
        tts.synthesize(&TtsRequest::new("other", "en-US"))
            .await
            .unwrap();
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
    }
}
