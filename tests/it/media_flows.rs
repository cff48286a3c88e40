//! End-to-end tests of flows on a call's media session beyond the sandbox's simulated person:
//! transcription of both sides started and stopped by a flow, and an IVR whose far end is an
//! AudioSocket connection (as Asterisk makes one) pressing a key with a DTMF frame.

use crate::flows::{
    ended_flow, executed, grammar, ivr, recognize, stereo, stored_recording, uuid_of, FAR_END,
    MENU_TEXT, SALES,
};
use crate::support::Env;
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// A platform whose PocketSphinx knows the flows' phrases; returns it and the grammar file.
async fn env_with_grammar() -> (Env, std::path::PathBuf) {
    let g = grammar();
    let env = Env::start_with_env(&[
        ("VBIN_STT_PROVIDER", "pocketsphinx"),
        ("VBIN_STT_GRAMMAR", g.to_str().unwrap()),
    ])
    .await;
    (env, g)
}

#[tokio::test]
async fn a_flow_transcribes_both_sides_until_it_stops_transcribing() {
    let (env, grammar) = env_with_grammar().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    // The far end speaks while the menu plays (each on its own side); what is said after
    // transcribe_stop ("support") is not transcribed.
    let call = env
        .calls(
            &tok,
            &["+15550002100"],
            json!({"actions": [
                {"type": "transcribe_start", "option": {"language": "en-US", "direction": "both"}},
                {"type": "talk", "option": {"text": "Hello Ann. Press one for support or two for sales."}},
                {"type": "sleep", "option": {"duration": 2500}},
                {"type": "transcribe_stop"},
                {"type": "talk", "option": {"text": "Support"}},
                {"type": "hangup"},
            ], "sandbox": {"script": [{"at_ms": 1000, "say": FAR_END},
                                      {"at_ms": 60000, "hangup": true}]}}),
        )
        .await[0];
    let af = ended_flow(&env, &tok, call, Duration::from_secs(40)).await;
    assert_eq!(
        executed(&af),
        [
            "transcribe_start",
            "talk",
            "sleep",
            "transcribe_stop",
            "talk",
            "hangup"
        ],
        "{af}"
    );
    assert!(
        af["executed_actions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["error"].is_null()),
        "{af}"
    );
    // The flow's transcription: completed by transcribe_stop.
    let (s, list) = api.get("/v1.0/transcribes").await;
    assert_eq!(s, 200, "{list}");
    let tr = list["result"][0].clone();
    assert_eq!(
        (tr["reference_id"].as_str(), tr["direction"].as_str()),
        (Some(call.to_string().as_str()), Some("both")),
        "{tr}"
    );
    let tr = api
        .wait_get(
            &format!("/v1.0/transcribes/{}", uuid_of(&tr)),
            Duration::from_secs(10),
            |_, v| v["status"] == "completed",
        )
        .await;
    // Each side's speech, tagged with its side, and nothing said after the stop.
    let path = format!("/v1.0/transcripts?transcribe_id={}", uuid_of(&tr));
    let v = api
        .wait_get(&path, Duration::from_secs(20), |_, v| {
            v["result"].as_array().is_some_and(|r| r.len() >= 2)
        })
        .await;
    // Late segments of a stopped stream are refused, so the list is final now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, v2) = api.get(&path).await;
    assert_eq!(v["result"], v2["result"], "no transcript after the stop");
    let mut got: Vec<(String, String)> = v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["direction"].as_str().unwrap().to_string(),
                t["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("in".to_string(), FAR_END.to_string()),
            ("out".to_string(), MENU_TEXT.to_string())
        ],
        "{v}"
    );
    let _ = std::fs::remove_file(grammar);
}

/// An AudioSocket frame.
fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Connects to the AudioSocket server as Asterisk does once `call` is answered (its UUID
/// frame first).
async fn switch_connects(env: &Env, call: Uuid) -> tokio::net::TcpStream {
    env.wait_call(
        call,
        Duration::from_secs(10),
        Duration::from_millis(20),
        |s| s == "progressing",
    )
    .await;
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", env.platform.audiosocket_port))
        .await
        .unwrap();
    sock.write_all(&frame(0x01, call.as_bytes())).await.unwrap();
    sock
}

/// What the switch received: the platform's audio at 16 kHz, and whether it was told to hang
/// up (frame 0x00) before the connection closed.
struct Received {
    audio: Vec<i16>,
    hangup: bool,
}

/// Reads frames until the platform hangs up or closes the connection.
async fn read_all(mut r: tokio::net::tcp::OwnedReadHalf) -> Received {
    let mut got = Received {
        audio: Vec::new(),
        hangup: false,
    };
    loop {
        let mut head = [0u8; 3];
        if r.read_exact(&mut head).await.is_err() {
            return got;
        }
        let len = u16::from_be_bytes([head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if r.read_exact(&mut payload).await.is_err() {
            return got;
        }
        match head[0] {
            0x00 => {
                got.hangup = true;
                return got;
            }
            // Only wideband audio is kept: before the switch's first frame the platform
            // cannot know its rate and sends 8 kHz (silence, here).
            0x12 => got.audio.extend(
                payload
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]])),
            ),
            _ => {}
        }
    }
}

#[tokio::test]
async fn an_ivr_runs_over_audiosocket_and_takes_the_branch_of_a_dtmf_frame() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    // The IVR without its recording, after a second's wait for the switch to connect.
    let mut actions = ivr().as_array().unwrap().clone();
    actions[0] = json!({"type": "sleep", "option": {"duration": 1000}});
    let call = env
        .calls(
            &tok,
            &["+15550002200"],
            json!({"actions": actions, "variables": {"name": "Ann", "talk_seconds": 60}}),
        )
        .await[0];

    // Asterisk's side: the UUID, then slin16 silence at real time, and key 2 (frame 0x03)
    // once the menu has played and the flow waits for digits (a key sent at a fixed time
    // would cut the menu short on a slow machine, and the check of what was heard with it).
    let (r, mut w) = switch_connects(&env, call).await.into_split();
    let reader = tokio::spawn(read_all(r));
    let (press, mut pressed) = tokio::sync::oneshot::channel::<()>();
    let writer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for _ in 0..2_000 {
            tick.tick().await;
            if pressed.try_recv().is_ok() && w.write_all(&frame(0x03, b"2")).await.is_err() {
                return;
            }
            if w.write_all(&frame(0x12, &[0u8; 640])).await.is_err() {
                return;
            }
        }
    });
    env.client(&tok)
        .wait_get(
            &format!("/v1.0/activeflows?reference_id={call}"),
            Duration::from_secs(30),
            |_, v| {
                v["result"][0]["executed_actions"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x["type"] == "digits_receive"))
            },
        )
        .await;
    press.send(()).unwrap();

    let af = ended_flow(&env, &tok, call, Duration::from_secs(30)).await;
    assert_eq!(
        executed(&af),
        [
            "sleep",
            "talk",
            "digits_receive",
            "branch",
            "talk",
            "hangup"
        ],
        "{af}"
    );
    assert_eq!(af["executed_actions"][4]["id"], SALES, "{af}");
    assert_eq!(af["variables"]["voipbin.call.digits"], "2", "{af}");
    // The flow hung up: the switch is told to hang up too.
    let got = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the platform ends the AudioSocket session")
        .unwrap();
    writer.abort();
    assert!(got.hangup, "a hangup frame before the connection closed");
    // What the switch heard: the menu, then the branch's talk.
    assert_eq!(
        recognize(&got.audio).await,
        format!("{MENU_TEXT} sales will call you back")
    );
    let c = env.wait_call_end(call, Duration::from_secs(10)).await;
    assert_eq!(
        (c["status"].as_str(), c["hangup_by"].as_str()),
        (Some("completed"), Some("local")),
        "{c}"
    );
}

#[tokio::test]
async fn the_switch_hanging_up_ends_the_call_and_unknown_calls_are_refused() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let call = env
        .calls(
            &tok,
            &["+15550002300"],
            json!({"actions": [{"type": "sleep", "option": {"duration": 60000}}],
                   "variables": {"talk_seconds": 60}}),
        )
        .await[0];
    let mut sock = switch_connects(&env, call).await;
    for _ in 0..25 {
        sock.write_all(&frame(0x10, &[0u8; 320])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sock.write_all(&frame(0x00, &[])).await.unwrap();
    let c = env.wait_call_end(call, Duration::from_secs(10)).await;
    assert_eq!(
        (c["status"].as_str(), c["hangup_by"].as_str()),
        (Some("completed"), Some("remote")),
        "{c}"
    );
    let af = ended_flow(&env, &tok, call, Duration::from_secs(10)).await;
    assert_eq!(af["end_reason"], "call_ended", "{af}");

    // A connection for a call nobody knows is closed at once.
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", env.platform.audiosocket_port))
        .await
        .unwrap();
    sock.write_all(&frame(0x01, Uuid::now_v7().as_bytes()))
        .await
        .unwrap();
    let (r, _w) = sock.into_split();
    let got = tokio::time::timeout(Duration::from_secs(3), read_all(r))
        .await
        .expect("closed at once");
    assert!(got.audio.is_empty());
}

#[tokio::test]
async fn a_campaigns_answered_calls_run_its_flow() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let flow = api
        .create(
            "/v1.0/flows",
            json!({"name": "notice", "actions": [
                {"type": "talk", "option": {"text": "Support"}},
                {"type": "digits_receive", "option": {"duration": 3000, "length": 1}},
                {"type": "variable_set", "option": {"key": "greeted", "value": "${who}-${voipbin.call.digits}"}},
                {"type": "hangup"}]}),
        )
        .await;
    let plan = api
        .create(
            "/v1.0/outplans",
            json!({"name": "plan", "source": "+15550001000", "dial_timeout_ms": 3000,
                   "try_interval_ms": 300, "max_try_count": 1}),
        )
        .await;
    let outdial = api.create("/v1.0/outdials", json!({"name": "list"})).await;
    // Ann presses 2 (her target's sandbox script); Bob presses nothing.
    for (who, script) in [
        ("ann", json!([{"at_ms": 2000, "digits": "2"}])),
        ("bob", json!([])),
    ] {
        let t = api
            .create(
                &format!("/v1.0/outdials/{}/targets", uuid_of(&outdial)),
                json!({"destinations": ["+15550002000"], "variables": {"who": who, "talk_seconds": 60},
                       "sandbox": {"script": script}}),
            )
            .await;
        assert_eq!(t["sandbox"]["script"], script, "{t}");
    }
    let body = |extra: serde_json::Value| {
        let mut b = json!({"name": "c", "outplan_id": plan["id"], "outdial_id": outdial["id"]});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    // A flow that is not the customer's, or with a queue, is refused.
    let (s, v) = api
        .post("/v1.0/campaigns", body(json!({"flow_id": Uuid::now_v7()})))
        .await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = api
        .post(
            "/v1.0/campaigns",
            body(json!({"flow_id": flow["id"], "queue_id": Uuid::now_v7()})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let camp = api
        .create("/v1.0/campaigns", body(json!({"flow_id": flow["id"]})))
        .await;
    assert_eq!(camp["flow_id"], flow["id"], "{camp}");
    let (s, v) = api
        .set_campaign_status(&uuid_of(&camp).to_string(), "running")
        .await;
    assert_eq!(s, 200, "{v}");
    api.wait_get(
        &format!("/v1.0/campaigns/{}", uuid_of(&camp)),
        Duration::from_secs(30),
        |_, v| v["status"] == "completed",
    )
    .await;
    // Each call ran the flow with its target's variables, and the flow hung it up (long before
    // its 60 s of talk).
    let (_, calls) = api
        .get(&format!(
            "/v1.0/campaigncalls?campaign_id={}",
            uuid_of(&camp)
        ))
        .await;
    let calls = calls["result"].as_array().unwrap().clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    let mut greeted = Vec::new();
    for cc in calls {
        let call: Uuid = cc["reference_id"].as_str().unwrap().parse().unwrap();
        let af = ended_flow(&env, &tok, call, Duration::from_secs(20)).await;
        assert_eq!(
            executed(&af),
            ["talk", "digits_receive", "variable_set", "hangup"],
            "{af}"
        );
        assert_eq!(af["flow_id"], flow["id"]);
        greeted.push(af["variables"]["greeted"].as_str().unwrap().to_string());
        let c = env.wait_call_end(call, Duration::from_secs(10)).await;
        assert_eq!(c["hangup_by"], "local", "{c}");
        assert_eq!(c["activeflow_id"], af["id"]);
    }
    greeted.sort();
    assert_eq!(greeted, ["ann-2", "bob-"]);
}

/// Runs openssl with `args` in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (scripts/services installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An https file server on 127.0.0.1 (`openssl s_server -WWW`) serving `dir`, with a
/// certificate signed by a CA made for the test; returns its base URL and the CA's PEM file.
fn https_server(dir: &std::path::Path) -> (String, std::path::PathBuf, std::process::Child) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=vbin test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "req.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "req.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ],
    );
    let port = crate::support::free_port();
    let child = std::process::Command::new("openssl")
        .args([
            "s_server", "-quiet", "-WWW", "-cert", "cert.pem", "-key", "key.pem",
        ])
        .args(["-accept", &format!("127.0.0.1:{port}")])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (
        format!("https://127.0.0.1:{port}"),
        dir.join("ca.pem"),
        child,
    )
}

#[tokio::test]
async fn play_fetches_over_https_from_servers_the_platform_trusts_only() {
    let dir = std::env::temp_dir().join(format!("vbin-https-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let ok = std::process::Command::new("espeak-ng")
        .arg("-w")
        .arg(dir.join("prompt.wav"))
        .arg("sales will call you back")
        .status()
        .expect("espeak-ng (scripts/services installs it)");
    assert!(ok.success());
    let (base, ca, mut server) = https_server(&dir);
    let flow = json!({"actions": [
        {"type": "recording_start"},
        {"type": "play", "option": {"stream_urls": [format!("{base}/prompt.wav")]}},
        {"type": "hangup"},
    ], "sandbox": {"script": [{"at_ms": 30000, "hangup": true}]}});

    // Trusting the test's CA: the prompt is fetched over TLS and played.
    let env = Env::start_with_env(&[("VBIN_TLS_EXTRA_CA_FILE", ca.to_str().unwrap())]).await;
    let (_, tok, _) = env.customer().await;
    let call = env.calls(&tok, &["+15550002400"], flow.clone()).await[0];
    let af = ended_flow(&env, &tok, call, Duration::from_secs(30)).await;
    assert_eq!(executed(&af), ["recording_start", "play", "hangup"], "{af}");
    assert!(af["executed_actions"][1]["error"].is_null(), "{af}");
    let (_, wav) = stored_recording(&env, &tok, call).await;
    let (_, right) = stereo(&wav);
    assert_eq!(recognize(&right).await, "sales will call you back");

    // Without it the certificate is refused: the play is an error and the flow goes on.
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let call = env.calls(&tok, &["+15550002400"], flow).await[0];
    let af = ended_flow(&env, &tok, call, Duration::from_secs(30)).await;
    assert_eq!(executed(&af), ["recording_start", "play", "hangup"], "{af}");
    let err = af["executed_actions"][1]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(err.contains("certificate"), "{af}");
    let _ = server.kill();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn whisper_the_default_speech_to_text_transcribes_a_flows_far_end() {
    // No STT setting: Whisper tiny.en (scripts/models), loaded by this first transcription.
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let call = env
        .calls(
            &tok,
            &["+15550002500"],
            json!({"actions": [
                {"type": "transcribe_start", "option": {"language": "en-US", "direction": "in"}},
                {"type": "sleep", "option": {"duration": 6000}},
                {"type": "hangup"},
            ], "sandbox": {"script": [{"at_ms": 500, "say": FAR_END},
                                      {"at_ms": 60000, "hangup": true}]}}),
        )
        .await[0];
    ended_flow(&env, &tok, call, Duration::from_secs(30)).await;
    let (_, list) = api.get("/v1.0/transcribes").await;
    let tr = list["result"][0].clone();
    assert_eq!(tr["reference_id"], call.to_string(), "{list}");
    let v = api
        .wait_get(
            &format!("/v1.0/transcripts?transcribe_id={}", uuid_of(&tr)),
            Duration::from_secs(30),
            |_, v| v["result"].as_array().is_some_and(|r| !r.is_empty()),
        )
        .await;
    let heard: String = v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["message"].as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join(" ");
    // Whisper writes case and punctuation: compare the words.
    let words: Vec<String> = heard
        .split_whitespace()
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric() || *c == '\'')
                .collect::<String>()
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect();
    assert_eq!(words.join(" "), FAR_END, "{v}");
    assert_eq!(v["result"][0]["direction"], "in");
}
