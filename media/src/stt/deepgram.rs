//! Deepgram's live streaming API (`wss://api.deepgram.com/v1/listen`) over a WebSocket.
//!
//! One WebSocket per session. Audio goes up as binary messages of raw little-endian 16 kHz
//! mono PCM, one per 20 ms frame as it arrives; `{"type":"KeepAlive"}` is sent when no audio
//! went up for a while (the service drops a silent connection after about 10 s), and
//! `{"type":"CloseStream"}` when the audio sender is dropped. The service answers with JSON
//! text messages; `Results` with a non-empty transcript become [`Segment`]s (interim ones with
//! `is_final: false`), the rest (`Metadata`, `SpeechStarted`, `UtteranceEnd`) are ignored.
//! After `CloseStream` the session reads the last results until the service closes.
//!
//! A refused connection (e.g. HTTP 401 for a bad key), a close frame with an error code, a
//! network error or a connection dropped without a close frame is reported as one
//! `Err(SttError::Recognizer(..))` on the results channel, which then closes.
//!
//! `wss://` URLs use rustls (ring) with the system's root certificates; `ws://` is for tests
//! and local proxies. The API key goes only into the `Authorization` header (marked
//! sensitive) and is never logged: [`Deepgram`]'s `Debug` redacts it.

use super::{Segment, SttError, SttInput, SttProvider, SttSession, AUDIO_QUEUE, STT_RATE_HZ};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, Request};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::Connector;
use url::Url;

/// Deepgram's public endpoint.
pub const DEFAULT_BASE_URL: &str = "wss://api.deepgram.com";
/// How long without audio before a `KeepAlive` is sent (Deepgram asks for one every 3–5 s).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// How long connecting (TCP, TLS and the WebSocket handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the service has after `CloseStream` to send its last results and close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to keep reading after a failed write, to learn why the service went away.
const FAILURE_GRACE: Duration = Duration::from_secs(1);
/// Segments buffered before the session waits for the consumer.
const RESULTS_QUEUE: usize = 64;

/// The Deepgram live-streaming provider.
#[derive(Clone)]
pub struct Deepgram {
    api_key: String,
    base_url: String,
    model: Option<String>,
    keepalive: Duration,
}

impl std::fmt::Debug for Deepgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deepgram")
            .field("api_key", &"<redacted>")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("keepalive", &self.keepalive)
            .finish()
    }
}

impl Deepgram {
    /// The public endpoint with `api_key`, the account's default model.
    pub fn new(api_key: impl Into<String>) -> Self {
        Self {
            api_key: api_key.into(),
            base_url: DEFAULT_BASE_URL.into(),
            model: None,
            keepalive: KEEPALIVE_INTERVAL,
        }
    }

    /// Another endpoint (`wss://host[:port][/prefix]` or `ws://…`); `/v1/listen` is appended.
    pub fn with_base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into();
        self
    }

    /// A named model (e.g. `nova-3`), sent as `model=`.
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// How long without audio before a `KeepAlive` goes up (default [`KEEPALIVE_INTERVAL`]).
    pub fn with_keepalive_interval(mut self, interval: Duration) -> Self {
        self.keepalive = interval.max(Duration::from_millis(1));
        self
    }

    /// The endpoint the session for `language` connects to (the key is not part of it).
    pub fn listen_url(&self, language: &str) -> Result<Url, SttError> {
        let mut url = Url::parse(&self.base_url).map_err(|e| {
            SttError::Recognizer(format!("invalid deepgram url {:?}: {e}", self.base_url))
        })?;
        let scheme = match url.scheme() {
            "ws" | "http" => "ws",
            "wss" | "https" => "wss",
            other => {
                return Err(SttError::Recognizer(format!(
                    "invalid deepgram url {:?}: scheme {other:?} is not ws or wss",
                    self.base_url
                )))
            }
        };
        if url.scheme() != scheme {
            // Switching between the special schemes http(s) and ws(s) always succeeds.
            let _ = url.set_scheme(scheme);
        }
        let path = format!("{}/v1/listen", url.path().trim_end_matches('/'));
        url.set_path(&path);
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("encoding", "linear16")
                .append_pair("sample_rate", &STT_RATE_HZ.to_string())
                .append_pair("channels", "1")
                .append_pair("language", language)
                .append_pair("interim_results", "true")
                .append_pair("punctuate", "true");
            if let Some(m) = &self.model {
                q.append_pair("model", m);
            }
        }
        Ok(url)
    }

    /// The handshake request: the URL plus `Authorization: Token <key>`.
    fn request(&self, url: &Url) -> Result<Request<()>, SttError> {
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| SttError::Recognizer(format!("deepgram request for {url}: {e}")))?;
        let mut auth = HeaderValue::from_str(&format!("Token {}", self.api_key)).map_err(|_| {
            SttError::Recognizer("the deepgram api key is not a valid header value".into())
        })?;
        auth.set_sensitive(true);
        req.headers_mut().insert(header::AUTHORIZATION, auth);
        Ok(req)
    }
}

impl SttProvider for Deepgram {
    fn name(&self) -> &'static str {
        "deepgram"
    }

    fn start(&self, language: &str) -> Result<SttSession, SttError> {
        if !plausible_language_tag(language) {
            return Err(SttError::UnsupportedLanguage(language.into()));
        }
        if self.api_key.trim().is_empty() {
            return Err(SttError::Recognizer("no deepgram api key".into()));
        }
        let url = self.listen_url(language)?;
        let request = self.request(&url)?;
        let connector = match url.scheme() {
            "wss" => Connector::Rustls(tls_config()?),
            _ => Connector::Plain,
        };
        let (audio, frames) = mpsc::channel::<SttInput>(AUDIO_QUEUE);
        let (out, results) = mpsc::channel(RESULTS_QUEUE);
        let keepalive = self.keepalive;
        tokio::spawn(async move {
            if let Err(msg) = run(request, connector, &url, keepalive, frames, &out).await {
                tracing::warn!(url = %url, error = %msg, "deepgram session failed");
                let _ = out.send(Err(SttError::Recognizer(msg))).await;
            }
        });
        Ok(SttSession { audio, results })
    }
}

/// A BCP 47-looking tag (`en`, `en-US`, `zh-Hans-CN`, Deepgram's `multi`): letters first,
/// then `-`-separated alphanumeric subtags of up to 8 characters. Deepgram validates the rest.
fn plausible_language_tag(tag: &str) -> bool {
    let mut parts = tag.split('-');
    let first = parts.next().unwrap_or_default();
    tag.len() <= 35
        && (2..=8).contains(&first.len())
        && first.bytes().all(|b| b.is_ascii_alphabetic())
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// rustls with ring and the system's roots, loaded once per process.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, SttError> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let native = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(format!(
                    "no trusted root certificates found on this system for wss ({} errors loading them)",
                    native.errors.len()
                ));
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("tls setup: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
        .map_err(SttError::Recognizer)
}

/// Runs one session; `Err` carries the message for the final `SttError::Recognizer`.
async fn run(
    request: Request<()>,
    connector: Connector,
    url: &Url,
    keepalive: Duration,
    mut frames: mpsc::Receiver<SttInput>,
    out: &mpsc::Sender<Result<Segment, SttError>>,
) -> Result<(), String> {
    let connect =
        tokio_tungstenite::connect_async_tls_with_config(request, None, true, Some(connector));
    let (ws, response) = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Err(_) => return Err(format!("connecting to deepgram at {url} timed out")),
        Ok(Err(e)) => return Err(connect_error(url, e)),
        Ok(Ok(c)) => c,
    };
    let request_id = response
        .headers()
        .get("dg-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    tracing::debug!(url = %url, request_id = %request_id, "deepgram session connected");
    let (mut tx, mut rx) = ws.split();

    let mut audio_open = true;
    // Set once writing is over: after CloseStream, or after a failed write.
    let mut deadline: Option<Instant> = None;
    let mut write_error: Option<String> = None;
    let mut keepalive_at = Instant::now() + keepalive;
    loop {
        let writing = audio_open && write_error.is_none();
        tokio::select! {
            biased;
            msg = rx.next() => {
                let msg = match msg {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        return Err(write_error.unwrap_or_else(|| read_error(e)));
                    }
                    None => {
                        return Err(write_error.unwrap_or_else(|| {
                            "deepgram connection ended without a close frame".into()
                        }));
                    }
                };
                match msg {
                    Message::Text(text) => match parse(&text) {
                        Parsed::Segment(seg) => {
                            if out.send(Ok(seg)).await.is_err() {
                                // Nobody wants the results any more.
                                let _ = close_quietly(&mut tx).await;
                                return Ok(());
                            }
                        }
                        Parsed::Error(msg) => return Err(format!("deepgram error: {msg}")),
                        Parsed::Ignored => {}
                        Parsed::Invalid(e) => {
                            tracing::warn!(request_id = %request_id, error = %e, "unreadable deepgram message");
                        }
                    },
                    Message::Close(frame) => return closed(frame, write_error, audio_open),
                    // Pings are answered by tungstenite; the service sends no binary data.
                    _ => {}
                }
            }
            _ = out.closed() => {
                let _ = close_quietly(&mut tx).await;
                return Ok(());
            }
            frame = frames.recv(), if writing => {
                let sent = match frame {
                    Some(SttInput::Audio(f)) => {
                        let bytes: Vec<u8> = f.iter().flat_map(|s| s.to_le_bytes()).collect();
                        tx.send(Message::binary(bytes)).await
                    }
                    // Deepgram answers with the held audio's final result, `from_finalize`.
                    Some(SttInput::Flush) => {
                        tx.send(Message::text(r#"{"type":"Finalize"}"#)).await
                    }
                    None => {
                        audio_open = false;
                        deadline = Some(Instant::now() + CLOSE_TIMEOUT);
                        tx.send(Message::text(r#"{"type":"CloseStream"}"#)).await
                    }
                };
                keepalive_at = Instant::now() + keepalive;
                if let Err(e) = sent {
                    write_error = Some(format!("sending to deepgram: {e}"));
                    deadline = Some(Instant::now() + FAILURE_GRACE);
                }
            }
            _ = tokio::time::sleep_until(keepalive_at), if writing => {
                keepalive_at = Instant::now() + keepalive;
                if let Err(e) = tx.send(Message::text(r#"{"type":"KeepAlive"}"#)).await {
                    write_error = Some(format!("sending to deepgram: {e}"));
                    deadline = Some(Instant::now() + FAILURE_GRACE);
                }
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                return Err(write_error.unwrap_or_else(|| {
                    format!("deepgram did not close the stream within {} s of its end", CLOSE_TIMEOUT.as_secs())
                }));
            }
        }
    }
}

/// The outcome of the service's close frame: a normal close after `CloseStream` ends the
/// session cleanly; one while audio is still flowing loses what follows, so it is an error.
fn closed(
    frame: Option<CloseFrame>,
    write_error: Option<String>,
    audio_open: bool,
) -> Result<(), String> {
    let Some(f) = frame.filter(|f| f.code != CloseCode::Normal) else {
        return match (write_error, audio_open) {
            (Some(e), _) => Err(e),
            (None, true) => Err("deepgram closed the stream before its end".into()),
            (None, false) => Ok(()),
        };
    };
    let reason = f.reason.as_str().trim();
    Err(if reason.is_empty() {
        format!("deepgram closed the stream with code {}", u16::from(f.code))
    } else {
        format!(
            "deepgram closed the stream with code {}: {reason}",
            u16::from(f.code)
        )
    })
}

/// Sends a normal close frame, without waiting long for a peer that may be gone.
async fn close_quietly<S>(tx: &mut S) -> Result<(), WsError>
where
    S: futures::Sink<Message, Error = WsError> + Unpin,
{
    match tokio::time::timeout(FAILURE_GRACE, tx.send(Message::Close(None))).await {
        Ok(r) => r,
        Err(_) => Ok(()),
    }
}

/// A readable message for a failed handshake; HTTP refusals name their status and reason.
fn connect_error(url: &Url, e: WsError) -> String {
    match e {
        WsError::Http(resp) => {
            let status = resp.status();
            let mut msg = format!(
                "deepgram refused the connection to {url}: HTTP {} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            )
            .trim_end()
            .to_string();
            let detail = resp
                .headers()
                .get("dg-error")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .or_else(|| resp.body().as_deref().and_then(body_detail));
            if let Some(d) = detail {
                msg.push_str(": ");
                msg.push_str(&d);
            }
            msg
        }
        e => format!("connecting to deepgram at {url}: {e}"),
    }
}

/// `err_msg` of a Deepgram JSON error body, or the start of a text body.
fn body_detail(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct ErrBody {
        err_msg: Option<String>,
        err_code: Option<String>,
    }
    if let Ok(b) = serde_json::from_slice::<ErrBody>(body) {
        return match (b.err_code, b.err_msg) {
            (Some(c), Some(m)) => Some(format!("{c}: {m}")),
            (c, m) => m.or(c),
        };
    }
    let text: String = String::from_utf8_lossy(body)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

fn read_error(e: WsError) -> String {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match e {
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            "deepgram connection dropped without a close frame".into()
        }
        e => format!("reading from deepgram: {e}"),
    }
}

/// What one text message from the service means.
#[derive(Debug, PartialEq)]
enum Parsed {
    Segment(Segment),
    Error(String),
    Ignored,
    Invalid(String),
}

/// Just the message type; the rest is read per type (`channel` differs between them).
#[derive(Deserialize)]
struct Kind {
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct Results {
    channel: Channel,
    #[serde(default)]
    is_final: bool,
    #[serde(default)]
    start: f64,
    #[serde(default)]
    duration: f64,
    #[serde(default)]
    from_finalize: bool,
}

#[derive(Deserialize)]
struct Channel {
    #[serde(default)]
    alternatives: Vec<Alternative>,
}

#[derive(Deserialize)]
struct Alternative {
    #[serde(default)]
    transcript: String,
}

#[derive(Deserialize)]
struct ErrorMessage {
    description: Option<String>,
    message: Option<String>,
}

fn parse(text: &str) -> Parsed {
    let kind = match serde_json::from_str::<Kind>(text) {
        Ok(k) => k.kind,
        Err(e) => return Parsed::Invalid(e.to_string()),
    };
    match kind.as_deref() {
        Some("Results") => {
            let m: Results = match serde_json::from_str(text) {
                Ok(m) => m,
                Err(e) => return Parsed::Invalid(e.to_string()),
            };
            let transcript = m
                .channel
                .alternatives
                .into_iter()
                .next()
                .map(|a| a.transcript.trim().to_string())
                .unwrap_or_default();
            // An empty result matters only as the answer to a flush.
            if transcript.is_empty() && !m.from_finalize {
                return Parsed::Ignored;
            }
            let ms = |secs: f64| (secs * 1000.0).round().max(0.0) as u64;
            Parsed::Segment(Segment {
                text: transcript,
                start_ms: ms(m.start),
                end_ms: ms(m.start + m.duration),
                is_final: m.is_final || m.from_finalize,
                flushed: m.from_finalize,
            })
        }
        Some("Error") => {
            let m = serde_json::from_str::<ErrorMessage>(text).ok();
            Parsed::Error(
                m.and_then(|m| m.description.or(m.message))
                    .unwrap_or_else(|| "unspecified".into()),
            )
        }
        _ => Parsed::Ignored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_become_segments() {
        let interim = r#"{"type":"Results","channel_index":[0,1],"duration":0.8,"start":1.23,"is_final":false,"speech_final":false,"channel":{"alternatives":[{"transcript":"hello wor","confidence":0.91,"words":[]}]}}"#;
        assert_eq!(
            parse(interim),
            Parsed::Segment(Segment {
                text: "hello wor".into(),
                start_ms: 1230,
                end_ms: 2030,
                is_final: false,
                flushed: false
            })
        );
        let fin = r#"{"type":"Results","duration":1.5,"start":0.0,"is_final":true,"speech_final":true,"channel":{"alternatives":[{"transcript":" Hello, world. ","confidence":0.98}]}}"#;
        assert_eq!(
            parse(fin),
            Parsed::Segment(Segment {
                text: "Hello, world.".into(),
                start_ms: 0,
                end_ms: 1500,
                is_final: true,
                flushed: false
            })
        );
    }

    #[test]
    fn a_finalize_answer_is_flushed_even_when_empty() {
        let with_text = r#"{"type":"Results","duration":0.9,"start":3.0,"is_final":true,"from_finalize":true,"channel":{"alternatives":[{"transcript":"yes please"}]}}"#;
        assert_eq!(
            parse(with_text),
            Parsed::Segment(Segment {
                flushed: true,
                ..Segment::final_text("yes please", 3000, 3900)
            })
        );
        let empty = r#"{"type":"Results","duration":0.1,"start":4.0,"is_final":true,"from_finalize":true,"channel":{"alternatives":[{"transcript":""}]}}"#;
        assert_eq!(
            parse(empty),
            Parsed::Segment(Segment {
                flushed: true,
                ..Segment::final_text("", 4000, 4100)
            })
        );
    }

    #[test]
    fn empty_transcripts_and_other_messages_are_ignored() {
        let empty = r#"{"type":"Results","duration":1.0,"start":2.0,"is_final":true,"channel":{"alternatives":[{"transcript":"","confidence":0.0}]}}"#;
        assert_eq!(parse(empty), Parsed::Ignored);
        assert_eq!(
            parse(r#"{"type":"Results","channel":{"alternatives":[]}}"#),
            Parsed::Ignored
        );
        assert_eq!(
            parse(r#"{"type":"Metadata","request_id":"x","duration":3.2,"channels":1}"#),
            Parsed::Ignored
        );
        assert_eq!(
            parse(r#"{"type":"SpeechStarted","channel":[0],"timestamp":1.2}"#),
            Parsed::Ignored
        );
        assert_eq!(
            parse(r#"{"type":"UtteranceEnd","channel":[0,1],"last_word_end":2.4}"#),
            Parsed::Ignored
        );
        assert!(matches!(parse("not json"), Parsed::Invalid(_)));
        assert_eq!(
            parse(r#"{"type":"Error","description":"bad audio","message":"x","variant":"y"}"#),
            Parsed::Error("bad audio".into())
        );
    }

    #[test]
    fn url_carries_the_stream_format_language_and_model() {
        let dg = Deepgram::new("k")
            .with_base_url("ws://127.0.0.1:9/proxy/")
            .with_model("nova-3");
        let url = dg.listen_url("en-US").unwrap();
        assert_eq!(
            url.as_str(),
            "ws://127.0.0.1:9/proxy/v1/listen?encoding=linear16&sample_rate=16000&channels=1&language=en-US&interim_results=true&punctuate=true&model=nova-3"
        );
        let url = Deepgram::new("k").listen_url("de").unwrap();
        assert!(url
            .as_str()
            .starts_with("wss://api.deepgram.com/v1/listen?encoding=linear16"));
        assert!(!url.as_str().contains("model="));
        assert_eq!(
            Deepgram::new("k")
                .with_base_url("https://dg.example")
                .listen_url("en")
                .unwrap()
                .scheme(),
            "wss"
        );
        assert!(Deepgram::new("k")
            .with_base_url("ftp://x")
            .listen_url("en")
            .is_err());
        assert!(Deepgram::new("k")
            .with_base_url("not a url")
            .listen_url("en")
            .is_err());
    }

    #[test]
    fn request_carries_the_key_only_in_a_sensitive_header() {
        let dg = Deepgram::new("secret-key");
        let url = dg.listen_url("en").unwrap();
        let req = dg.request(&url).unwrap();
        let auth = req.headers().get(header::AUTHORIZATION).unwrap();
        assert_eq!(auth, "Token secret-key");
        assert!(auth.is_sensitive());
        assert!(!req.uri().to_string().contains("secret-key"));
        assert!(!format!("{dg:?}").contains("secret-key"));
        assert!(Deepgram::new("bad\nkey").request(&url).is_err());
    }

    #[test]
    fn language_tags_are_checked_for_shape_only() {
        for ok in ["en", "en-US", "pt-BR", "zh-Hans-CN", "multi", "es-419"] {
            assert!(plausible_language_tag(ok), "{ok}");
        }
        for bad in [
            "",
            "e",
            "en_US",
            "en-",
            "-en",
            "en US",
            "en&x=1",
            "12",
            "toolonglang",
            "en-toolongsub",
        ] {
            assert!(!plausible_language_tag(bad), "{bad}");
        }
    }

    #[test]
    fn close_frames_other_than_normal_are_errors() {
        let normal = || {
            Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })
        };
        assert_eq!(closed(None, None, false), Ok(()));
        assert_eq!(closed(normal(), None, false), Ok(()));
        assert!(closed(normal(), None, true)
            .unwrap_err()
            .contains("before its end"));
        let policy = || {
            Some(CloseFrame {
                code: CloseCode::Policy,
                reason: "DATA-0000".into(),
            })
        };
        let e = closed(policy(), None, true).unwrap_err();
        assert_eq!(e, "deepgram closed the stream with code 1008: DATA-0000");
        assert_eq!(closed(policy(), Some("w".into()), true), Err(e));
        assert_eq!(closed(None, Some("w".into()), false), Err("w".into()));
    }

    #[test]
    fn http_error_bodies_are_summarized() {
        assert_eq!(
            body_detail(
                br#"{"err_code":"INVALID_AUTH","err_msg":"Invalid credentials.","request_id":"r"}"#
            )
            .as_deref(),
            Some("INVALID_AUTH: Invalid credentials.")
        );
        assert_eq!(
            body_detail(b"Unauthorized\n").as_deref(),
            Some("Unauthorized")
        );
        assert_eq!(body_detail(b""), None);
    }
}
