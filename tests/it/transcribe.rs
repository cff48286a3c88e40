//! End-to-end tests of transcription: the Transcribe aggregate through the command API, its
//! read models through the query API, transcripts recorded through the media pipeline's
//! function against the real database, and the automatic stop when the call hangs up. Real
//! vbin processes with the sandbox carrier, Postgres, nats-server and redis-server.

use crate::support::Env;
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;
use vbin_app::transcription::{record_transcript, running_transcribes, Recorded};
use vbin_app::{ExecError, Executor};
use vbin_domain::DomainError;
use vbin_event_schema::{CallId, CustomerId, TranscribeId, TranscriptDirection};
use vbin_eventlog::PgEventRepository;

fn body(call: Uuid, direction: Option<&str>) -> Value {
    let mut b = json!({"reference_type": "call", "reference_id": call, "language": "en-US"});
    if let Some(d) = direction {
        b["direction"] = json!(d);
    }
    b
}

fn uuid_of(v: &Value) -> Uuid {
    v["id"].as_str().expect("an id").parse().expect("a uuid")
}

#[tokio::test]
async fn transcribes_record_transcripts_and_end_with_their_call() {
    let env = Env::start().await;
    let (cust, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let (_, tok2, _) = env.customer().await;
    let api2 = env.client(&tok2);
    let call = api.answered_call("+15550007000", 8).await;

    // Validation.
    for bad in [
        json!({"reference_id": call, "language": "en-US"}),
        json!({"reference_type": "agent", "reference_id": call, "language": "en-US"}),
        json!({"reference_type": "conference", "reference_id": call, "language": "en-US", "direction": "out"}),
        json!({"reference_type": "call", "reference_id": "nope", "language": "en-US"}),
        json!({"reference_type": "call", "reference_id": call}),
        json!({"reference_type": "call", "reference_id": call, "language": "english"}),
        json!({"reference_type": "call", "reference_id": call, "language": "x".repeat(100)}),
        json!({"reference_type": "call", "reference_id": call, "language": "en-US", "direction": "up"}),
    ] {
        let (s, v) = api.transcribe(bad.clone()).await;
        assert_eq!(s, 400, "{bad} -> {v}");
        assert_eq!(v["error"]["reason"], "invalid_argument", "{v}");
    }
    // A call's id is no conference's.
    let (s, v) = api
        .transcribe(
            json!({"reference_type": "conference", "reference_id": call, "language": "en-US"}),
        )
        .await;
    assert_eq!(s, 404, "{v}");
    // An unknown call, and another tenant's call: 404.
    let (s, v) = api.transcribe(body(Uuid::now_v7(), None)).await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = api2.transcribe(body(call, None)).await;
    assert_eq!(s, 404, "{v}");
    // A call that is not answered (busy, ended): 409 failed_precondition.
    let busy = api.calls(&["+15550000486"], json!({})).await[0];
    env.wait_call_end(busy, Duration::from_secs(10)).await;
    let (s, v) = api.transcribe(body(busy, None)).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["reason"], "failed_precondition", "{v}");

    // Start one (direction defaults to both) and one for the far end only.
    let (s, tr) = api.transcribe(body(call, None)).await;
    assert_eq!(s, 200, "{tr}");
    assert_eq!(tr["type"], "transcribe");
    assert_eq!(tr["status"], "running");
    assert_eq!(tr["direction"], "both");
    assert_eq!(tr["language"], "en-US");
    assert_eq!(tr["reference_type"], "call");
    assert_eq!(tr["reference_id"], call.to_string());
    assert_eq!(tr["customer_id"], cust.to_string());
    assert!(tr["tm_end"].is_null() && tr["tm_create"].is_string());
    let tr_id = uuid_of(&tr);
    // One running transcribe per call and direction.
    let (s, v) = api.transcribe(body(call, Some("both"))).await;
    assert_eq!(s, 409, "{v}");
    let (s, tr_in) = api.transcribe(body(call, Some("in"))).await;
    assert_eq!(s, 200, "{tr_in}");
    assert_eq!(tr_in["direction"], "in");
    let tr_in_id = uuid_of(&tr_in);

    // The media side finds both (exact, without read-model lag).
    let running = running_transcribes(&env.pool, CallId(call)).await.unwrap();
    let mut ids: Vec<Uuid> = running.iter().map(|r| r.transcribe_id.as_uuid()).collect();
    ids.sort();
    let mut want = vec![tr_id, tr_in_id];
    want.sort();
    assert_eq!(ids, want);
    assert!(running.iter().all(|r| r.language == "en-US"));

    // The read model: one, the list; another tenant sees nothing and cannot stop it.
    let path = format!("/v1.0/transcribes/{tr_id}");
    let v = api.wait_found(&path, Duration::from_secs(10)).await;
    assert_eq!(v, tr);
    let (s, _) = api2.get(&path).await;
    assert_eq!(s, 404);
    let (s, v) = api2.stop_transcribe(tr_id).await;
    assert_eq!(s, 404, "{v}");
    let listed = api
        .wait_get("/v1.0/transcribes", Duration::from_secs(10), |_, v| {
            v["result"].as_array().is_some_and(|r| r.len() == 2)
        })
        .await;
    assert_eq!(
        listed["result"][0]["id"],
        tr_in_id.to_string(),
        "newest first"
    );
    let (_, other) = api2.get("/v1.0/transcribes").await;
    assert_eq!(other["result"], json!([]));

    // Transcripts through the media pipeline's function, against the real database.
    let executor = Executor::new(PgEventRepository::new(env.pool.clone()));
    let owner = CustomerId(cust);
    let tid = TranscribeId(tr_id);
    let later = record_transcript(
        &executor,
        owner,
        tid,
        TranscriptDirection::In,
        "hello, this is vbin",
        1_200,
    )
    .await
    .unwrap();
    let Recorded::Created(view) = &later else {
        panic!("{later:?}")
    };
    assert_eq!(view["type"], "transcript");
    assert_eq!(view["transcribe_id"], tr_id.to_string());
    let earlier = record_transcript(&executor, owner, tid, TranscriptDirection::Out, "hi", 800)
        .await
        .unwrap();
    assert!(matches!(earlier, Recorded::Created(_)));
    // A retry records nothing.
    let again = record_transcript(
        &executor,
        owner,
        tid,
        TranscriptDirection::In,
        "hello, this is vbin",
        1_200,
    )
    .await
    .unwrap();
    assert_eq!(
        again,
        Recorded::Duplicate(
            later
                .transcript_id()
                .map(vbin_event_schema::TranscriptId)
                .unwrap()
        )
    );
    // Another customer's transcribe is unknown; a direction it does not cover is refused.
    let err = record_transcript(
        &executor,
        CustomerId(Uuid::now_v7()),
        tid,
        TranscriptDirection::In,
        "x",
        1,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ExecError::Domain(DomainError::NotFound(_))),
        "{err:?}"
    );
    let err = record_transcript(
        &executor,
        owner,
        TranscribeId(tr_in_id),
        TranscriptDirection::Out,
        "x",
        1,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ExecError::Domain(DomainError::Invalid(_))),
        "{err:?}"
    );

    // Read back in spoken order, page by page too; another tenant gets none.
    let tpath = format!("/v1.0/transcripts?transcribe_id={tr_id}");
    let v = api
        .wait_get(&tpath, Duration::from_secs(10), |_, v| {
            v["result"].as_array().is_some_and(|r| r.len() == 2)
        })
        .await;
    let r = v["result"].as_array().unwrap();
    assert_eq!(r[0]["direction"], "out");
    assert_eq!(r[0]["message"], "hi");
    assert_eq!(r[0]["tm_transcript"], 800);
    assert_eq!(r[1]["direction"], "in");
    assert_eq!(r[1]["message"], "hello, this is vbin");
    assert_eq!(r[1]["tm_transcript"], 1_200);
    assert_eq!(r[1]["transcribe_id"], tr_id.to_string());
    assert_eq!(r[1]["type"], "transcript");
    assert_eq!(&r[1], view);
    assert!(r[1]["tm_create"].is_string());
    let paged = api.all_pages(&tpath, 1).await;
    assert_eq!(paged.as_slice(), r.as_slice());
    let (s, v) = api2.get(&tpath).await;
    assert_eq!((s, &v["result"]), (200, &json!([])), "{v}");
    let (s, _) = api.get("/v1.0/transcripts?transcribe_id=nope").await;
    assert_eq!(s, 400);

    // Stop: completed; a second stop returns it unchanged and records nothing.
    let (s, stopped) = api.stop_transcribe(tr_id).await;
    assert_eq!(s, 200, "{stopped}");
    assert_eq!(stopped["status"], "completed");
    assert!(stopped["tm_end"].is_string());
    let (s, again) = api.stop_transcribe(tr_id).await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(again, stopped);
    let events = env.events_of("transcribe", tr_id).await;
    let types: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(
        types,
        [
            "transcribe_started",
            "transcript_created",
            "transcript_created",
            "transcribe_completed"
        ]
    );
    // The transcript event carries the transcript (what webhooks and WebSocket push).
    assert_eq!(events[1].2["type"], "transcript");
    assert_eq!(events[1].2["message"], "hello, this is vbin");
    // No transcript of what is said after the end (ten minutes in).
    let err = record_transcript(
        &executor,
        owner,
        tid,
        TranscriptDirection::In,
        "late",
        600_000,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ExecError::Domain(DomainError::FailedPrecondition(_))),
        "{err:?}"
    );
    api.wait_get(&path, Duration::from_secs(10), |_, v| {
        v["status"] == "completed"
    })
    .await;

    // The audit trail of a transcribe.
    let trail = api
        .wait_found(
            &format!("/v1.0/events?resource_type=transcribe&resource_id={tr_id}"),
            Duration::from_secs(10),
        )
        .await;
    let trail: Vec<&str> = trail["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(trail, ["transcribe_started", "transcribe_completed"]);
    let (s, _) = api2
        .get(&format!(
            "/v1.0/events?resource_type=transcribe&resource_id={tr_id}"
        ))
        .await;
    assert_eq!(s, 404);

    // The other one completes by itself when the call hangs up.
    let ended = env.wait_call_end(call, Duration::from_secs(20)).await;
    assert_eq!(ended["status"], "completed");
    let done = api
        .wait_get(
            &format!("/v1.0/transcribes/{tr_in_id}"),
            Duration::from_secs(15),
            |_, v| v["status"] == "completed",
        )
        .await;
    assert!(done["tm_end"].is_string());
    let events = env.events_of("transcribe", tr_in_id).await;
    assert_eq!(events.len(), 2, "{events:?}");
    let actor: String = sqlx::query_scalar(
        "SELECT metadata->>'actor' FROM events WHERE aggregate_type = 'transcribe' \
         AND aggregate_id = $1 AND event_type = 'transcribe_completed'",
    )
    .bind(tr_in_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(actor, "system:transcribe-hangups");
    assert!(running_transcribes(&env.pool, CallId(call))
        .await
        .unwrap()
        .is_empty());
    // The ended call cannot be transcribed again.
    let (s, v) = api.transcribe(body(call, None)).await;
    assert_eq!(s, 409, "{v}");
}

/// Speech for the tests: espeak-ng's voice, as 16-bit mono PCM at `rate` Hz (sox converts).
fn speech(text: &str, rate: u32) -> Vec<i16> {
    let dir = std::env::temp_dir().join(format!("vbin-speech-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let wav = dir.join("s.wav");
    let raw = dir.join("s.raw");
    let ok = std::process::Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "130", "-w"])
        .arg(&wav)
        .arg(text)
        .status()
        .expect("espeak-ng must be installed (scripts/services installs it)")
        .success();
    assert!(ok, "espeak-ng failed");
    let ok = std::process::Command::new("sox")
        .arg(&wav)
        .args([
            "-r",
            &rate.to_string(),
            "-c",
            "1",
            "-b",
            "16",
            "-e",
            "signed-integer",
            "-t",
            "raw",
        ])
        .arg(&raw)
        .status()
        .expect("sox must be installed (scripts/services installs it)")
        .success();
    assert!(ok, "sox failed");
    let bytes = std::fs::read(&raw).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// An AudioSocket frame.
fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The phrases the recognizer may hear in these tests (a grammar makes PocketSphinx exact).
const PHRASES: [&str; 4] = [
    "please call me back tomorrow morning",
    "my order number is seven three five",
    "thank you goodbye",
    "hello world",
];

/// A platform whose PocketSphinx knows [`PHRASES`] (a JSGF grammar); returns it and the
/// grammar file.
async fn env_with_grammar() -> (Env, std::path::PathBuf) {
    assert!(
        std::path::Path::new("/usr/share/pocketsphinx/model/en-us/en-us").is_dir(),
        "PocketSphinx's en-us model must be installed (scripts/services installs it)"
    );
    let grammar = std::env::temp_dir().join(format!("vbin-grammar-{}.gram", Uuid::new_v4()));
    std::fs::write(
        &grammar,
        format!(
            "#JSGF V1.0;\ngrammar vbin;\npublic <s> = {};\n",
            PHRASES.join(" | ")
        ),
    )
    .unwrap();
    let env = Env::start_with_env(&[
        ("VBIN_STT_PROVIDER", "pocketsphinx"),
        ("VBIN_STT_GRAMMAR", grammar.to_str().unwrap()),
    ])
    .await;
    (env, grammar)
}

/// Connects to the AudioSocket server as Asterisk does for `call` (its UUID frame first).
async fn audiosocket(env: &Env, call: Uuid) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", env.platform.audiosocket_port))
        .await
        .unwrap();
    sock.write_all(&frame(0x01, call.as_bytes())).await.unwrap();
    sock
}

/// Streams `audio` as slin16 20 ms frames at real time.
async fn stream_audio(sock: &mut tokio::net::TcpStream, audio: &[i16]) {
    use tokio::io::AsyncWriteExt;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for chunk in audio.chunks(320) {
        tick.tick().await;
        let pcm: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
        sock.write_all(&frame(0x12, &pcm)).await.unwrap();
    }
}

#[tokio::test]
async fn a_transcription_started_while_the_audio_flows_hears_what_follows() {
    let (env, grammar) = env_with_grammar().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let call = api.answered_call("+15550007001", 30).await;
    let mut sock = audiosocket(&env, call).await;
    use tokio::io::AsyncWriteExt;
    stream_audio(&mut sock, &[0i16; 16_000]).await;
    // Started a second into the session: the media process hears of it on the event stream
    // and taps the session, so the phrase after a second of silence is heard.
    let (s, t) = api.transcribe(body(call, Some("in"))).await;
    assert_eq!(s, 200, "{t}");
    let transcribe = uuid_of(&t);
    let mut audio = vec![0i16; 16_000];
    audio.extend(speech(PHRASES[3], 16_000));
    audio.extend(std::iter::repeat_n(0i16, 16_000));
    stream_audio(&mut sock, &audio).await;
    sock.write_all(&frame(0x00, &[])).await.unwrap();
    let list = api
        .wait_get(
            &format!("/v1.0/transcripts?transcribe_id={transcribe}"),
            Duration::from_secs(20),
            |s, v| s == 200 && v["result"].as_array().is_some_and(|a| !a.is_empty()),
        )
        .await;
    assert_eq!(list["result"][0]["message"], PHRASES[3], "{list}");
    let _ = std::fs::remove_file(&grammar);
}

#[tokio::test]
async fn speech_streamed_over_audiosocket_becomes_transcripts() {
    let (env, grammar) = env_with_grammar().await;
    let (customer, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let call = api.answered_call("+15550007000", 30).await;
    let (s, t) = api.transcribe(body(call, Some("in"))).await;
    assert_eq!(s, 200, "{t}");
    let transcribe = uuid_of(&t);

    // A WebSocket client follows the customer's transcripts.
    let ws_url = format!(
        "{}/v1.0/ws?token={tok}",
        env.platform.url().replacen("http", "ws", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let sub =
        json!({"type": "subscribe", "topics": [format!("customer_id:{customer}:transcript:*")]});
    ws.send(Message::Text(sub.to_string().into()))
        .await
        .unwrap();

    // Asterisk's side: the call's UUID, then wideband audio (slin16, kind 0x12) in 20 ms
    // frames at real time: two phrases with a second of silence between and after.
    let mut audio = speech(PHRASES[0], 16_000);
    audio.extend(std::iter::repeat_n(0i16, 16_000));
    audio.extend(speech(PHRASES[2], 16_000));
    audio.extend(std::iter::repeat_n(0i16, 16_000));
    let mut sock = audiosocket(&env, call).await;
    use tokio::io::AsyncWriteExt;
    stream_audio(&mut sock, &audio).await;
    sock.write_all(&frame(0x00, &[])).await.unwrap();

    // Both phrases, in order, through the query API.
    let list = api
        .wait_get(
            &format!("/v1.0/transcripts?transcribe_id={transcribe}"),
            Duration::from_secs(20),
            |s, v| s == 200 && v["result"].as_array().is_some_and(|a| a.len() >= 2),
        )
        .await;
    let got: Vec<(&str, &str, u64)> = list["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["message"].as_str().unwrap(),
                t["direction"].as_str().unwrap(),
                t["tm_transcript"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!((got[0].0, got[0].1), (PHRASES[0], "in"));
    assert_eq!((got[1].0, got[1].1), (PHRASES[2], "in"));
    // The second phrase starts after the first one and the second of silence.
    assert!(got[1].2 >= got[0].2 + 2_000, "{got:?}");
    // And as WebSocket pushes.
    let mut pushed = Vec::new();
    while pushed.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("transcript pushes")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "event" {
                assert_eq!(v["event"], "transcript_created");
                assert_eq!(v["data"]["transcribe_id"], transcribe.to_string());
                pushed.push(v["data"]["message"].as_str().unwrap().to_string());
            }
        }
    }
    assert_eq!(pushed, [PHRASES[0], PHRASES[2]]);
    let _ = std::fs::remove_file(&grammar);
}
