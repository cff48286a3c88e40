//! The Deepgram provider over a real WebSocket on loopback, against a local fake of the
//! vendor's live API (the only fake here: the vendor is outside).

use futures::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use vbin_media::stt::deepgram::Deepgram;
use vbin_media::stt::{Segment, SttError, SttInput, SttProvider};

const KEY: &str = "test-key";
const LIMIT: Duration = Duration::from_secs(10);

/// How the fake behaves once audio arrived.
#[derive(Clone, Copy)]
enum Script {
    /// Interim, then a final naming the bytes so far; on CloseStream one more final naming
    /// the totals, then a normal close.
    Normal,
    /// Drops the TCP connection after the first audio, without a close frame.
    DropAfterAudio,
    /// Closes with code 1011 after the first audio, as Deepgram does on its own errors.
    CloseWithError,
}

/// A fake of `wss://api.deepgram.com/v1/listen` on `ws://127.0.0.1:port`. Returns its
/// address and a channel reporting each connection's request line (path and query).
async fn fake_deepgram(script: Script) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen_tx = seen_tx.clone();
            tokio::spawn(async move {
                // tungstenite's callback type fixes the error type.
                #[allow(clippy::result_large_err)]
                let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                    let _ = seen_tx.send(req.uri().to_string());
                    let auth = req
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok());
                    if auth != Some(&format!("Token {KEY}")) {
                        let mut e = ErrorResponse::new(Some(
                            r#"{"err_code":"INVALID_AUTH","err_msg":"Invalid credentials.","request_id":"fake"}"#
                                .into(),
                        ));
                        *e.status_mut() = StatusCode::UNAUTHORIZED;
                        return Err(e);
                    }
                    let query = req.uri().query().unwrap_or_default();
                    let ok = req.uri().path() == "/v1/listen"
                        && [
                            "encoding=linear16",
                            "sample_rate=16000",
                            "channels=1",
                            "language=en-US",
                            "interim_results=true",
                        ]
                        .iter()
                        .all(|p| query.split('&').any(|q| q == *p));
                    if !ok {
                        let mut e = ErrorResponse::new(Some("bad request".into()));
                        *e.status_mut() = StatusCode::BAD_REQUEST;
                        return Err(e);
                    }
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, check).await else {
                    return;
                };
                let meta =
                    r#"{"type":"Metadata","request_id":"fake","model_info":{},"channels":1}"#;
                ws.send(Message::text(meta)).await.unwrap();
                let (mut bytes, mut keepalives, mut replied) = (0usize, 0usize, false);
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Binary(b) => {
                            bytes += b.len();
                            match script {
                                Script::DropAfterAudio => return, // no close frame
                                Script::CloseWithError => {
                                    let frame = CloseFrame {
                                        code: CloseCode::Error,
                                        reason: "NET-0001: no audio".into(),
                                    };
                                    let _ = ws.close(Some(frame)).await;
                                    while let Some(Ok(_)) = ws.next().await {}
                                    return;
                                }
                                Script::Normal => {}
                            }
                            // After 5 frames (0.1 s): speech started, an interim, a final.
                            if bytes >= 3200 && !replied {
                                replied = true;
                                ws.send(Message::text(
                                    r#"{"type":"SpeechStarted","channel":[0],"timestamp":0.0}"#,
                                ))
                                .await
                                .unwrap();
                                ws.send(Message::text(results("received", 0.0, 0.05, false)))
                                    .await
                                    .unwrap();
                                let text = format!("received {bytes} bytes");
                                ws.send(Message::text(results(&text, 0.0, 0.1, true)))
                                    .await
                                    .unwrap();
                                ws.send(Message::text(results("", 0.1, 0.02, true)))
                                    .await
                                    .unwrap();
                            }
                        }
                        Message::Text(t) if t.contains(r#""KeepAlive""#) => keepalives += 1,
                        // As Deepgram: the held audio's final result, marked from_finalize.
                        Message::Text(t) if t.contains(r#""Finalize""#) => {
                            let text = format!("finalized at {bytes} bytes");
                            let mut r: serde_json::Value =
                                serde_json::from_str(&results(&text, 0.2, 0.1, true)).unwrap();
                            r["from_finalize"] = true.into();
                            ws.send(Message::text(r.to_string())).await.unwrap();
                        }
                        Message::Text(t) if t.contains(r#""CloseStream""#) => {
                            ws.send(Message::text(
                                r#"{"type":"UtteranceEnd","channel":[0,1],"last_word_end":0.2}"#,
                            ))
                            .await
                            .unwrap();
                            let text =
                                format!("closed after {bytes} bytes and {keepalives} keepalives");
                            ws.send(Message::text(results(&text, 0.1, 0.1, true)))
                                .await
                                .unwrap();
                            ws.send(Message::text(meta)).await.unwrap();
                            ws.close(None).await.unwrap();
                            // Drain until the client's close reply ends the connection.
                            while let Some(Ok(_)) = ws.next().await {}
                            return;
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    (addr, seen)
}

fn results(transcript: &str, start: f64, duration: f64, is_final: bool) -> String {
    serde_json::json!({
        "type": "Results",
        "channel_index": [0, 1],
        "duration": duration,
        "start": start,
        "is_final": is_final,
        "speech_final": is_final,
        "channel": {"alternatives": [{"transcript": transcript, "confidence": 0.98, "words": []}]},
    })
    .to_string()
}

/// Collects everything the session yields until its results channel closes.
async fn collect(
    mut results: mpsc::Receiver<Result<Segment, SttError>>,
) -> Vec<Result<Segment, String>> {
    let mut got = Vec::new();
    loop {
        match timeout(LIMIT, results.recv())
            .await
            .expect("results channel hung")
        {
            Some(r) => got.push(r.map_err(|e| e.to_string())),
            None => return got,
        }
    }
}

fn seg(text: &str, start_ms: u64, end_ms: u64, is_final: bool) -> Result<Segment, String> {
    Ok(Segment {
        text: text.into(),
        start_ms,
        end_ms,
        is_final,
        flushed: false,
    })
}

#[tokio::test]
async fn streams_audio_and_returns_interim_and_final_results() {
    let (addr, mut seen) = fake_deepgram(Script::Normal).await;
    let dg = Deepgram::new(KEY)
        .with_base_url(format!("ws://{addr}"))
        .with_model("nova-3");
    assert_eq!(dg.name(), "deepgram");
    let session = dg.start("en-US").unwrap();
    for i in 0..10 {
        session
            .audio
            .send(vec![i as i16; 320].into())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(session.audio);
    let got = collect(session.results).await;
    assert_eq!(
        got,
        vec![
            seg("received", 0, 50, false),
            seg("received 3200 bytes", 0, 100, true),
            seg("closed after 6400 bytes and 0 keepalives", 100, 200, true),
        ]
    );
    let uri = seen.recv().await.unwrap();
    assert!(
        uri.starts_with("/v1/listen?encoding=linear16&sample_rate=16000&channels=1&language=en-US"),
        "{uri}"
    );
    assert!(
        uri.contains("punctuate=true") && uri.contains("model=nova-3"),
        "{uri}"
    );
    assert!(!uri.contains(KEY));
}

#[tokio::test]
async fn a_flush_is_a_finalize_and_its_answer_is_flushed() {
    let (addr, _seen) = fake_deepgram(Script::Normal).await;
    let dg = Deepgram::new(KEY).with_base_url(format!("ws://{addr}"));
    let mut session = dg.start("en-US").unwrap();
    session.audio.send(vec![1; 320].into()).await.unwrap();
    session.audio.send(SttInput::Flush).await.unwrap();
    let got = timeout(LIMIT, session.results.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        got,
        Segment {
            flushed: true,
            ..Segment::final_text("finalized at 640 bytes", 200, 300)
        }
    );
}

#[tokio::test]
async fn sends_keepalives_while_no_audio_flows() {
    let (addr, _seen) = fake_deepgram(Script::Normal).await;
    let dg = Deepgram::new(KEY)
        .with_base_url(format!("ws://{addr}"))
        .with_keepalive_interval(Duration::from_millis(50));
    let session = dg.start("en-US").unwrap();
    session.audio.send(vec![0; 320].into()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    drop(session.audio);
    let got = collect(session.results).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let text = &got[0].as_ref().unwrap().text;
    let n: usize = text
        .strip_prefix("closed after 640 bytes and ")
        .and_then(|t| t.strip_suffix(" keepalives"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!((3..=10).contains(&n), "{n} keepalives in 400 ms at 50 ms");
}

#[tokio::test]
async fn a_wrong_key_is_reported_as_unauthorized() {
    let (addr, _seen) = fake_deepgram(Script::Normal).await;
    let dg = Deepgram::new("wrong-key").with_base_url(format!("ws://{addr}"));
    let session = dg.start("en-US").unwrap();
    let _ = session.audio.send(vec![0; 320].into()).await;
    let got = collect(session.results).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let err = got[0].as_ref().unwrap_err();
    assert!(err.contains("401") && err.contains("Unauthorized"), "{err}");
    assert!(err.contains("Invalid credentials"), "{err}");
    assert!(!err.contains("wrong-key"), "{err}");
}

#[tokio::test]
async fn a_connection_dropped_mid_stream_is_an_error_not_a_hang() {
    let (addr, _seen) = fake_deepgram(Script::DropAfterAudio).await;
    let dg = Deepgram::new(KEY).with_base_url(format!("ws://{addr}"));
    let session = dg.start("en-US").unwrap();
    // Keep the audio sender open and keep sending: the session must notice on its own.
    let audio = session.audio.clone();
    let feeder = tokio::spawn(async move {
        while audio.send(vec![0; 320].into()).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let got = collect(session.results).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let err = got[0].as_ref().unwrap_err();
    assert!(err.contains("deepgram"), "{err}");
    // The session is gone, so the pipeline's sender fails instead of blocking.
    timeout(LIMIT, feeder)
        .await
        .expect("audio sender hung")
        .unwrap();
    drop(session.audio);
}

#[tokio::test]
async fn an_error_close_frame_is_reported_with_its_code_and_reason() {
    let (addr, _seen) = fake_deepgram(Script::CloseWithError).await;
    let session = Deepgram::new(KEY)
        .with_base_url(format!("ws://{addr}"))
        .start("en-US")
        .unwrap();
    session.audio.send(vec![0; 320].into()).await.unwrap();
    let got = collect(session.results).await;
    assert_eq!(
        got,
        vec![Err(
            "recognizer: deepgram closed the stream with code 1011: NET-0001: no audio".into()
        )]
    );
}

#[tokio::test]
async fn wss_urls_use_tls() {
    // Nothing listens there; what matters is that TLS was set up (system roots loaded) and
    // the failure is a clear connect error on the results channel.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let session = Deepgram::new(KEY)
        .with_base_url(format!("wss://{addr}"))
        .start("en-US")
        .expect("tls set up");
    let got = collect(session.results).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let err = got[0].as_ref().unwrap_err();
    assert!(err.contains("connecting to deepgram at wss://"), "{err}");
}

#[tokio::test]
async fn nothing_listening_is_an_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let session = Deepgram::new(KEY)
        .with_base_url(format!("ws://{addr}"))
        .start("en-US")
        .unwrap();
    let got = collect(session.results).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0]
            .as_ref()
            .unwrap_err()
            .contains("connecting to deepgram"),
        "{got:?}"
    );
}

#[tokio::test]
async fn bad_language_tags_are_unsupported() {
    let dg = Deepgram::new(KEY);
    for tag in ["", "  ", "en_US", "en-US&model=x"] {
        assert!(
            matches!(dg.start(tag), Err(SttError::UnsupportedLanguage(_))),
            "{tag:?}"
        );
    }
}

#[test]
fn explicit_key_and_url() {
    // The binary builds the provider from VBIN_DEEPGRAM_API_KEY and VBIN_DEEPGRAM_URL; here,
    // from explicit values.
    let dg = Deepgram::new("k").with_base_url("ws://127.0.0.1:1");
    assert!(dg
        .listen_url("en")
        .unwrap()
        .as_str()
        .starts_with("ws://127.0.0.1:1/v1/listen?"));
    let dg = Deepgram::new("k");
    assert!(dg
        .listen_url("en")
        .unwrap()
        .as_str()
        .starts_with("wss://api.deepgram.com/v1/listen?"));
    assert!(format!("{dg:?}").contains("<redacted>"));
}
