//! The `play` action's audio: files fetched over http(s) under the webhooks' address policy
//! (public addresses only unless allowed; no redirects), decoded (WAV, MP3, OGG/Vorbis) and
//! resampled to the engine's rate, cached by URL.

use std::sync::Arc;
use std::time::Duration;
use vbin_media::decode::{decode_audio, MAX_INPUT_BYTES};
use vbin_media::tts::Speech;
use vbin_netguard::{AddressPolicy, GuardedResolver};

/// Fetches and decodes clips.
#[derive(Clone)]
pub struct Player {
    http: reqwest::Client,
    policy: Arc<AddressPolicy>,
    cache: moka::future::Cache<String, Speech>,
}

impl Player {
    /// A player fetching under `policy`, caching up to `max_samples` samples of audio.
    pub fn new(policy: AddressPolicy, max_samples: u64) -> Self {
        let policy = Arc::new(policy);
        let http = vbin_netguard::tls::client_builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20))
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver::new(policy.clone())))
            .user_agent("vbin-media/1")
            .build()
            .expect("a reqwest client builds");
        let cache = moka::future::Cache::builder()
            .weigher(|_: &String, v: &Speech| v.len().min(u32::MAX as usize) as u32)
            .max_capacity(max_samples)
            .build();
        Self {
            http,
            policy,
            cache,
        }
    }

    /// The audio of `url` (16 kHz mono), from the cache or fetched; the error says why not.
    pub async fn clip(&self, url: &str) -> Result<Speech, String> {
        if let Some(hit) = self.cache.get(url).await {
            return Ok(hit);
        }
        let clip = self.fetch(url).await?;
        self.cache.insert(url.to_string(), clip.clone()).await;
        Ok(clip)
    }

    async fn fetch(&self, url: &str) -> Result<Speech, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url}: bad URL: {e}"))?;
        self.policy
            .check_url(&parsed)
            .map_err(|b| format!("{url}: {b}"))?;
        let mut resp = self
            .http
            .get(parsed)
            .send()
            .await
            .map_err(|e| format!("{url}: {}", vbin_bus::Chain(&e)))?;
        if !resp.status().is_success() {
            return Err(format!("{url}: answered {}", resp.status()));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("{url}: {}", vbin_bus::Chain(&e)))?
        {
            if bytes.len() + chunk.len() > MAX_INPUT_BYTES {
                return Err(format!("{url}: larger than {MAX_INPUT_BYTES} bytes"));
            }
            bytes.extend_from_slice(&chunk);
        }
        // Decoding is CPU work: off the async threads.
        let samples = tokio::task::spawn_blocking(move || decode_audio(&bytes))
            .await
            .map_err(|e| format!("{url}: decoder: {e}"))?
            .map_err(|e| format!("{url}: {e}"))?;
        Ok(samples.into())
    }
}
