//! A client of OpenAI-compatible speech servers: `POST {base_url}/v1/audio/speech` with
//! `{"model", "input", "voice", "response_format": "wav"}`, answered with a WAV file (the API
//! of OpenAI and of self-hosted servers such as Kokoro-FastAPI, openedai-speech or LocalAI).
//!
//! The reply is decoded and resampled to 16 kHz ([`crate::decode`]). The API key, when one is
//! set, is sent as `Authorization: Bearer …` and appears in no `Debug` output or error.
//!
//! The protocol has no language field (its voices read any language they can), so every
//! well-formed language tag is accepted and not sent.
//!
//! `https://` and `http://` base URLs are accepted; TLS is the platform's for every outgoing
//! request ([`vbin_netguard::tls`]).

use super::{check_text, Speech, TtsError, TtsProvider, TtsRequest};
use crate::decode::{decode_audio, MAX_INPUT_BYTES};
use std::time::Duration;

/// Default time one request may take, connection to last byte.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// Default largest reply accepted, in bytes (the decoder's own limit).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = MAX_INPUT_BYTES;

/// Most characters of an error reply's body quoted in the error.
const EXCERPT_CHARS: usize = 200;

/// Longest voice or model name accepted.
const MAX_NAME_LEN: usize = 128;

/// Why an [`OpenAiTts`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum OpenAiConfigError {
    /// The base URL is not an `http(s)://` URL without credentials, query or fragment.
    #[error("bad base URL: {0}")]
    BadUrl(String),
    /// A model or default voice name is empty, too long or holds control characters.
    #[error("bad {0} name")]
    BadName(&'static str),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
}

/// An API key; shown as `<redacted>` by `Debug`.
#[derive(Clone)]
struct ApiKey(String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The OpenAI-compatible speech provider.
#[derive(Clone, Debug)]
pub struct OpenAiTts {
    client: reqwest::Client,
    /// `{base_url}/v1/audio/speech`.
    endpoint: url::Url,
    model: String,
    default_voice: String,
    api_key: Option<ApiKey>,
    timeout: Duration,
    max_response_bytes: usize,
}

/// The request body.
#[derive(serde::Serialize)]
struct SpeechBody<'a> {
    model: &'a str,
    input: &'a str,
    voice: &'a str,
    response_format: &'static str,
}

fn valid_name(name: &str) -> bool {
    !name.trim().is_empty() && name.len() <= MAX_NAME_LEN && !name.chars().any(char::is_control)
}

/// Whether `language` looks like a BCP 47 tag (letters, digits and `-`).
fn valid_language(language: &str) -> bool {
    !language.is_empty()
        && language.len() <= 35
        && language
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl OpenAiTts {
    /// A client of the server at `base_url` (e.g. `http://127.0.0.1:8880`; requests go to
    /// `{base_url}/v1/audio/speech`), speaking with `model` (e.g. `tts-1`, `kokoro`) and, when
    /// a request names none, `default_voice` (e.g. `alloy`).
    pub fn new(
        base_url: &str,
        model: impl Into<String>,
        default_voice: impl Into<String>,
    ) -> Result<Self, OpenAiConfigError> {
        let bad = |why: &str| OpenAiConfigError::BadUrl(why.to_string());
        let base = url::Url::parse(base_url).map_err(|e| bad(&e.to_string()))?;
        if base.scheme() != "http" && base.scheme() != "https" {
            return Err(bad("only http:// and https:// are supported"));
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(bad("credentials belong in the API key, not the URL"));
        }
        if base.query().is_some() || base.fragment().is_some() || base.cannot_be_a_base() {
            return Err(bad("no query or fragment allowed"));
        }
        let endpoint = url::Url::parse(&format!(
            "{}/v1/audio/speech",
            base.as_str().trim_end_matches('/')
        ))
        .map_err(|e| bad(&e.to_string()))?;
        let (model, default_voice) = (model.into(), default_voice.into());
        if !valid_name(&model) {
            return Err(OpenAiConfigError::BadName("model"));
        }
        if !valid_name(&default_voice) {
            return Err(OpenAiConfigError::BadName("voice"));
        }
        let client = vbin_netguard::tls::client_builder()
            .connect_timeout(Duration::from_secs(5))
            // A redirect could carry the key elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| OpenAiConfigError::Client(e.to_string()))?;
        Ok(Self {
            client,
            endpoint,
            model,
            default_voice,
            api_key: None,
            timeout: DEFAULT_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        })
    }

    /// Sends `Authorization: Bearer {key}` with every request (an empty key sends none).
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        self.api_key = (!key.is_empty()).then_some(ApiKey(key));
        self
    }

    /// How long one request may take, connection to last byte.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Largest reply accepted, in bytes (at most [`DEFAULT_MAX_RESPONSE_BYTES`]).
    pub fn with_max_response_bytes(mut self, max: usize) -> Self {
        self.max_response_bytes = max.min(DEFAULT_MAX_RESPONSE_BYTES);
        self
    }

    /// The URL requests are sent to.
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    /// Sends the request and returns the reply's body (a WAV file, if the server is honest).
    async fn fetch(&self, text: &str, voice: &str) -> Result<Vec<u8>, TtsError> {
        let body = SpeechBody {
            model: &self.model,
            input: text,
            voice,
            response_format: "wav",
        };
        let mut request = self
            .client
            .post(self.endpoint.clone())
            .timeout(self.timeout)
            .json(&body);
        if let Some(ApiKey(key)) = &self.api_key {
            let mut value = reqwest::header::HeaderValue::try_from(format!("Bearer {key}"))
                .map_err(|_| TtsError::Engine("the API key is not a valid header value".into()))?;
            value.set_sensitive(true);
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        let mut response = request.send().await.map_err(|e| self.http_error(e))?;
        let status = response.status();
        if !status.is_success() {
            let body = self.read_body(&mut response, 4 * EXCERPT_CHARS).await;
            let excerpt = excerpt(&body.unwrap_or_default());
            return Err(TtsError::Engine(format!(
                "{} answered {status}: {excerpt}",
                self.endpoint
            )));
        }
        if response
            .content_length()
            .is_some_and(|n| n > self.max_response_bytes as u64)
        {
            return Err(self.too_large());
        }
        let body = self
            .read_body(&mut response, self.max_response_bytes + 1)
            .await
            .map_err(|e| self.http_error(e))?;
        if body.len() > self.max_response_bytes {
            return Err(self.too_large());
        }
        Ok(body)
    }

    /// Reads at most `limit` bytes of the body (stopping once over it).
    async fn read_body(
        &self,
        response: &mut reqwest::Response,
        limit: usize,
    ) -> Result<Vec<u8>, reqwest::Error> {
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            body.extend_from_slice(&chunk);
            if body.len() >= limit {
                break;
            }
        }
        Ok(body)
    }

    fn too_large(&self) -> TtsError {
        TtsError::Engine(format!(
            "{} sent more than {} bytes",
            self.endpoint, self.max_response_bytes
        ))
    }

    fn http_error(&self, e: reqwest::Error) -> TtsError {
        if e.is_timeout() {
            return TtsError::Engine(format!(
                "{} did not answer within {:?}",
                self.endpoint, self.timeout
            ));
        }
        // reqwest's message names the URL (which holds no secret) and the cause.
        TtsError::Engine(format!("{}: {}", self.endpoint, error_chain(&e)))
    }
}

/// An error and its sources, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// The start of an error body as one short line of text.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(EXCERPT_CHARS)
        .collect();
    if text.chars().count() > EXCERPT_CHARS {
        out.push('…');
    }
    let out = out.split_whitespace().collect::<Vec<_>>().join(" ");
    if out.is_empty() {
        "(empty body)".into()
    } else {
        out
    }
}

#[async_trait::async_trait]
impl TtsProvider for OpenAiTts {
    fn name(&self) -> &'static str {
        "openai"
    }

    async fn synthesize(&self, req: &TtsRequest) -> Result<Speech, TtsError> {
        check_text(&req.text)?;
        if !valid_language(&req.language) {
            return Err(TtsError::UnsupportedLanguage(req.language.clone()));
        }
        let voice = req.voice.as_deref().unwrap_or(&self.default_voice);
        if !valid_name(voice) {
            return Err(TtsError::UnknownVoice(voice.to_string()));
        }
        let body = self.fetch(&req.text, voice).await?;
        let pcm = tokio::task::spawn_blocking(move || decode_audio(&body))
            .await
            .map_err(|e| TtsError::Engine(format!("decoding the reply: {e}")))?
            .map_err(|e| TtsError::Engine(format!("decoding the reply: {e}")))?;
        Ok(pcm.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{espeak_wav, recognize};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use std::sync::{Arc, Mutex};

    const KEY: &str = "sk-test-5ecret-k3y";

    /// What the fake server saw.
    #[derive(Default)]
    struct Seen {
        authorization: Option<String>,
        content_type: Option<String>,
        body: Option<serde_json::Value>,
    }

    /// How the fake server answers.
    #[derive(Clone, Copy)]
    enum Answer {
        /// The input spoken by espeak-ng, as WAV.
        Speech,
        /// 401 with an OpenAI-style error body.
        Unauthorized,
        /// 200 with bytes that are not audio.
        Garbage,
        /// 200 after 5 s.
        Slow,
    }

    /// Starts a fake speech server; returns its base URL and what it saw.
    async fn server(answer: Answer) -> (String, Arc<Mutex<Seen>>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        let app = axum::Router::new().route(
            "/v1/audio/speech",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let s = s.clone();
                async move {
                    let json: serde_json::Value =
                        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                    let input = json["input"].as_str().unwrap_or("").to_string();
                    {
                        let mut s = s.lock().unwrap();
                        let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(String::from);
                        s.authorization = h("authorization");
                        s.content_type = h("content-type");
                        s.body = Some(json);
                    }
                    match answer {
                        Answer::Speech => {
                            let wav = tokio::task::spawn_blocking(move || espeak_wav(&input))
                                .await
                                .unwrap();
                            ([("content-type", "audio/wav")], wav).into_response()
                        }
                        Answer::Unauthorized => (
                            StatusCode::UNAUTHORIZED,
                            "{\"error\": {\"message\": \"Incorrect API key provided\",\n \"type\": \"invalid_request_error\"}}",
                        )
                            .into_response(),
                        Answer::Garbage => (
                            [("content-type", "audio/wav")],
                            "<html>this is not a wav file</html>".repeat(20),
                        )
                            .into_response(),
                        Answer::Slow => {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            StatusCode::OK.into_response()
                        }
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), seen)
    }

    #[tokio::test]
    async fn speaks_through_the_server_with_the_key_and_the_protocol_body() {
        let (url, seen) = server(Answer::Speech).await;
        let tts = OpenAiTts::new(&format!("{url}/"), "tts-1", "alloy")
            .unwrap()
            .with_api_key(KEY);
        assert_eq!(tts.endpoint(), format!("{url}/v1/audio/speech"));
        let speech = tts
            .synthesize(&TtsRequest::new("press one for support", "en-US"))
            .await
            .unwrap();
        {
            let seen = seen.lock().unwrap();
            assert_eq!(
                seen.authorization.as_deref(),
                Some(&*format!("Bearer {KEY}"))
            );
            assert_eq!(seen.content_type.as_deref(), Some("application/json"));
            assert_eq!(
                seen.body.as_ref().unwrap(),
                &serde_json::json!({
                    "model": "tts-1",
                    "input": "press one for support",
                    "voice": "alloy",
                    "response_format": "wav",
                })
            );
        }
        // espeak-ng's 22,050 Hz WAV came back as 16 kHz.
        assert!((20_000..60_000).contains(&speech.len()), "{}", speech.len());
        assert_eq!(recognize(&speech).await, ["press one for support"]);

        // A request's own voice wins; without a key no Authorization header is sent.
        let tts = OpenAiTts::new(&url, "kokoro", "af_bella").unwrap();
        let mut req = TtsRequest::new("hello world", "de-DE");
        req.voice = Some("bm_george".into());
        tts.synthesize(&req).await.unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.authorization, None);
        assert_eq!(seen.body.as_ref().unwrap()["voice"], "bm_george");
        assert_eq!(seen.body.as_ref().unwrap()["model"], "kokoro");
    }

    #[tokio::test]
    async fn a_refusal_is_an_engine_error_with_status_and_excerpt_but_no_key() {
        let (url, _) = server(Answer::Unauthorized).await;
        let tts = OpenAiTts::new(&url, "tts-1", "alloy")
            .unwrap()
            .with_api_key(KEY);
        let err = tts
            .synthesize(&TtsRequest::new("hello", "en-US"))
            .await
            .unwrap_err();
        let TtsError::Engine(msg) = &err else {
            panic!("{err:?}")
        };
        assert!(msg.contains("401"), "{msg}");
        assert!(msg.contains("Incorrect API key provided"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        assert!(!msg.contains(KEY) && !format!("{err:?}").contains(KEY));
        assert!(!format!("{tts:?}").contains(KEY), "{tts:?}");
        assert!(format!("{tts:?}").contains("<redacted>"));
    }

    #[tokio::test]
    async fn garbage_oversized_and_slow_replies_are_engine_errors() {
        let (url, _) = server(Answer::Garbage).await;
        let tts = OpenAiTts::new(&url, "tts-1", "alloy").unwrap();
        let err = tts.synthesize(&TtsRequest::new("hello", "en-US")).await;
        assert!(
            matches!(&err, Err(TtsError::Engine(m)) if m.contains("decoding")),
            "{err:?}"
        );

        let (url, _) = server(Answer::Speech).await;
        let tts = OpenAiTts::new(&url, "tts-1", "alloy")
            .unwrap()
            .with_max_response_bytes(10_000);
        let err = tts
            .synthesize(&TtsRequest::new("hello world", "en-US"))
            .await;
        assert!(
            matches!(&err, Err(TtsError::Engine(m)) if m.contains("more than 10000 bytes")),
            "{err:?}"
        );

        let (url, _) = server(Answer::Slow).await;
        let tts = OpenAiTts::new(&url, "tts-1", "alloy")
            .unwrap()
            .with_timeout(Duration::from_millis(300));
        let started = std::time::Instant::now();
        let err = tts.synthesize(&TtsRequest::new("hello", "en-US")).await;
        assert!(
            matches!(&err, Err(TtsError::Engine(m)) if m.contains("did not answer")),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(3));

        // Nobody listening.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let tts = OpenAiTts::new(&format!("http://127.0.0.1:{port}"), "tts-1", "alloy").unwrap();
        let err = tts.synthesize(&TtsRequest::new("hello", "en-US")).await;
        assert!(matches!(&err, Err(TtsError::Engine(_))), "{err:?}");
    }

    #[tokio::test]
    async fn bad_configuration_and_requests_are_refused_before_sending() {
        assert!(OpenAiTts::new("https://api.openai.com", "tts-1", "alloy").is_ok());
        for url in [
            "ftp://x",
            "not a url",
            "http://user:pw@host",
            "http://host/?q=1",
        ] {
            assert!(
                matches!(
                    OpenAiTts::new(url, "m", "v"),
                    Err(OpenAiConfigError::BadUrl(_))
                ),
                "{url}"
            );
        }
        assert!(matches!(
            OpenAiTts::new("http://h", "", "v"),
            Err(OpenAiConfigError::BadName("model"))
        ));
        assert!(matches!(
            OpenAiTts::new("http://h", "m", "a\nb"),
            Err(OpenAiConfigError::BadName("voice"))
        ));
        // Port 9 (discard) on localhost: nothing is sent for these anyway.
        let tts = OpenAiTts::new("http://127.0.0.1:9", "m", "v").unwrap();
        assert!(matches!(
            tts.synthesize(&TtsRequest::new(" ", "en-US")).await,
            Err(TtsError::BadText)
        ));
        assert!(matches!(
            tts.synthesize(&TtsRequest::new("hi", "en US")).await,
            Err(TtsError::UnsupportedLanguage(_))
        ));
        let mut req = TtsRequest::new("hi", "en-US");
        req.voice = Some(String::new());
        assert!(matches!(
            tts.synthesize(&req).await,
            Err(TtsError::UnknownVoice(_))
        ));
    }

    #[test]
    fn excerpts_are_short_single_lines() {
        assert_eq!(excerpt(b""), "(empty body)");
        assert_eq!(excerpt(b"a\r\nb\t c"), "a b c");
        let long = excerpt(&[b'x'; 1_000]);
        assert_eq!(long.chars().count(), EXCERPT_CHARS + 1);
        assert!(long.ends_with('…'));
        assert_eq!(excerpt(&[0xff, b'o', b'k']), "\u{fffd}ok");
    }
}
