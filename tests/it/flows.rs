//! End-to-end tests of call control: flows through the command and query APIs, flows running
//! on sandbox calls whose simulated far end speaks and presses keys, the flow engine and the
//! media session carrying out the actions. Real vbin processes, Postgres, nats-server and
//! redis-server.

use crate::support::{wait_until, Env};
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

pub(crate) const SALES: &str = "0191a0d2-7c4e-7b0e-8f00-0000000000b2";
const SUPPORT: &str = "0191a0d2-7c4e-7b0e-8f00-0000000000b1";
const MENU: &str = "0191a0d2-7c4e-7b0e-8f00-0000000000a0";

/// "talk a menu -> digits_receive -> branch -> talk -> hangup".
pub(crate) fn ivr() -> Value {
    json!([
        {"type": "recording_start", "option": {"beep_start": false}},
        {"id": MENU, "type": "talk", "option": {"text": "Hello ${name}. Press one for support or two for sales."}},
        {"type": "digits_receive", "option": {"duration": 8000, "length": 1}},
        {"type": "branch", "option": {"target_ids": {"1": SUPPORT, "2": SALES}, "default_target_id": MENU}},
        {"id": SUPPORT, "type": "talk", "option": {"text": "Support"}, "next_id": "0191a0d2-7c4e-7b0e-8f00-0000000000ff"},
        {"id": SALES, "type": "talk", "option": {"text": "Sales will call you back"}},
        {"id": "0191a0d2-7c4e-7b0e-8f00-0000000000ff", "type": "hangup"},
    ])
}

pub(crate) fn uuid_of(v: &Value) -> Uuid {
    v["id"].as_str().expect("an id").parse().expect("a uuid")
}

/// The call's recording once stored (status `ended`) and its file as the API serves it.
pub(crate) async fn stored_recording(env: &Env, tok: &str, call: Uuid) -> (Value, Vec<u8>) {
    let api = env.client(tok);
    let rec = wait_until(
        "the recording to be stored",
        Duration::from_secs(30),
        || async {
            let (_, v) = api
                .get(&format!("/v1.0/recordings?reference_id={call}"))
                .await;
            let r = v["result"][0].clone();
            if r["status"] == "ended" {
                Ok(r)
            } else {
                Err(v)
            }
        },
    )
    .await;
    let (status, wav) = env
        .get_bytes(tok, &format!("/v1.0/recordings/{}/file", uuid_of(&rec)))
        .await;
    assert_eq!(status, 200, "{rec}");
    (rec, wav)
}

/// Waits for the call's activeflow (read model) to end; returns it.
pub(crate) async fn ended_flow(env: &Env, tok: &str, call: Uuid, within: Duration) -> Value {
    let api = env.client(tok);
    let what = format!(
        "the flow of call {call} to end; log {}",
        env.platform.log_path().display()
    );
    wait_until(what, within, || async {
        let (s, v) = api
            .get(&format!("/v1.0/activeflows?reference_id={call}"))
            .await;
        let flow = v["result"][0].clone();
        if s == 200 && flow["status"] == "ended" {
            Ok(flow)
        } else {
            Err(v)
        }
    })
    .await
}

#[tokio::test]
async fn flows_are_validated_stored_updated_and_deleted_per_tenant() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let (_, tok2, _) = env.customer().await;
    let (s, flow) = api
        .post("/v1.0/flows", json!({"name": "ivr", "actions": ivr()}))
        .await;
    assert_eq!(s, 200, "{flow}");
    assert_eq!(flow["actions"].as_array().unwrap().len(), 7);
    assert!(
        flow["actions"][0]["id"].is_string(),
        "ids are drawn: {flow}"
    );
    let id = uuid_of(&flow);
    for (bad, says) in [
        (json!({"name": "x", "actions": []}), "1 to 200"),
        (
            json!({"name": "x", "actions": [{"type": "dance"}]}),
            "not an action type",
        ),
        (
            json!({"name": "x", "actions": [{"type": "conference_join", "option": {}}]}),
            "conference_id",
        ),
        (
            json!({"name": "x", "actions": [{"type": "goto", "option": {"target_id": MENU}}]}),
            "loop_count",
        ),
        (
            json!({"name": "x", "actions": [{"type": "answer", "next_id": MENU}]}),
            "not an action of this flow",
        ),
        (json!({"name": "", "actions": [{"type": "answer"}]}), "name"),
        (
            json!({"name": "x", "actions": [{"type": "talk", "option": {"text": "hi", "volume": 3}}]}),
            "unknown field",
        ),
    ] {
        let (s, v) = api.post("/v1.0/flows", bad.clone()).await;
        assert_eq!(s, 400, "{bad} -> {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(says),
            "{bad} -> {v}"
        );
    }
    let (s, v) = api
        .put(
            &format!("/v1.0/flows/{id}"),
            json!({"name": "ivr2", "actions": [{"type": "hangup"}]}),
        )
        .await;
    assert_eq!((s, v["name"].as_str()), (200, Some("ivr2")), "{v}");
    // Another tenant neither sees nor changes it.
    let other = env.client(&tok2);
    assert_eq!(other.get(&format!("/v1.0/flows/{id}")).await.0, 404);
    assert_eq!(other.delete(&format!("/v1.0/flows/{id}")).await.0, 404);
    wait_until("the flow's read model", Duration::from_secs(10), || async {
        let (s, v) = api.get(&format!("/v1.0/flows/{id}")).await;
        (s == 200 && v["name"] == "ivr2").then_some(())
    })
    .await;
    assert_eq!(api.delete(&format!("/v1.0/flows/{id}")).await.0, 200);
    // A deleted flow cannot be run.
    let (s, v) = api
        .post(
            "/v1.0/calls",
            json!({"source": "+15550001000", "destinations": ["+15550002000"], "flow_id": id}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    wait_until(
        "the deleted flow to go",
        Duration::from_secs(10),
        || async { (api.get(&format!("/v1.0/flows/{id}")).await.0 == 404).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn an_ivr_takes_the_branch_of_the_key_the_far_end_presses() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let (s, flow) = api
        .post("/v1.0/flows", json!({"name": "ivr", "actions": ivr()}))
        .await;
    assert_eq!(s, 200, "{flow}");
    // The far end says something and presses 2 while the menu plays (it is ~4 s long): the
    // key waits for digits_receive.
    let call = env
        .calls(
            &tok,
            &["+15550002000"],
            json!({"flow_id": flow["id"], "variables": {"name": "Ann"},
                   "sandbox": {"script": [{"at_ms": 300, "say": FAR_END},
                                          {"at_ms": 2500, "digits": "2"},
                                          {"at_ms": 30000, "hangup": true}]}}),
        )
        .await[0];
    let af = ended_flow(&env, &tok, call, Duration::from_secs(30)).await;
    let executed = executed(&af);
    assert_eq!(
        executed,
        [
            "recording_start",
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
    assert_eq!(af["end_reason"], "hangup", "{af}");
    // The talk was said with the variable substituted.
    let events = env.events_of("activeflow", uuid_of(&af)).await;
    let first_talk = events
        .iter()
        .find(|(_, t, r)| {
            t == "activeflow_action_executed" && r["current_action"]["type"] == "talk"
        })
        .map(|(_, _, r)| r["current_action"]["option"]["text"].clone())
        .unwrap();
    assert_eq!(
        first_talk,
        "Hello Ann. Press one for support or two for sales."
    );
    // The flow's hangup ended the call from our side.
    let c = env.wait_call_end(call, Duration::from_secs(10)).await;
    assert_eq!(
        (c["status"].as_str(), c["hangup_by"].as_str()),
        (Some("completed"), Some("local")),
        "{c}"
    );
    assert_eq!(c["activeflow_id"], af["id"]);

    // The recording: stored when the call ended; left = the far end, right = the platform.
    let (rec, wav) = stored_recording(&env, &tok, call).await;
    assert_eq!(rec["error"], Value::Null, "{rec}");
    let ms = rec["duration_ms"].as_u64().unwrap();
    // The menu and the branch's talk back to back (~4.5-5 s; the steps between take ticks).
    assert!((4_000..20_000).contains(&ms), "{rec}");
    let (left, right) = stereo(&wav);
    assert_eq!(left.len() as u64, ms * 16, "16 kHz, {ms} ms");
    // In order, and nothing of the far end on the platform's side (or the reverse).
    assert_eq!(
        recognize(&right).await,
        format!("{MENU_TEXT} sales will call you back"),
        "platform side"
    );
    assert_eq!(recognize(&left).await, FAR_END, "far end side");
    // Another tenant gets nothing.
    let (_, tok2, _) = env.customer().await;
    let (status, _) = env
        .get_bytes(&tok2, &format!("/v1.0/recordings/{}/file", uuid_of(&rec)))
        .await;
    assert_eq!(status, 404);
}

/// What the simulated person says.
pub(crate) const FAR_END: &str = "i would like to buy a phone";
/// The menu, as the recognizer writes it.
pub(crate) const MENU_TEXT: &str = "hello ann press one for support or two for sales";
/// Everything said in these tests, as the recognizer writes it.
pub(crate) const PHRASES: [&str; 4] = [MENU_TEXT, "sales will call you back", "support", FAR_END];

/// A JSGF grammar of sequences of [`PHRASES`] (PocketSphinx is exact with it); the caller
/// removes the file.
pub(crate) fn grammar() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("vbin-flows-{}.gram", Uuid::new_v4()));
    std::fs::write(
        &path,
        format!(
            "#JSGF V1.0;\ngrammar vbin;\npublic <s> = ({})+;\n",
            PHRASES.join(" | ")
        ),
    )
    .unwrap();
    path
}

/// The types of an activeflow's executed actions.
pub(crate) fn executed(af: &Value) -> Vec<&str> {
    af["executed_actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["type"].as_str().unwrap())
        .collect()
}

/// A 16-bit stereo WAV's channels.
pub(crate) fn stereo(wav: &[u8]) -> (Vec<i16>, Vec<i16>) {
    assert_eq!(&wav[0..4], b"RIFF");
    let data_len = u32::from_le_bytes(wav[40..44].try_into().unwrap()) as usize;
    assert_eq!(
        data_len,
        wav.len() - 44,
        "the served header has the real sizes"
    );
    assert_eq!(u16::from_le_bytes([wav[22], wav[23]]), 2);
    assert_eq!(u32::from_le_bytes(wav[24..28].try_into().unwrap()), 16_000);
    let samples: Vec<i16> = wav[44..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let left = samples.iter().step_by(2).copied().collect();
    let right = samples.iter().skip(1).step_by(2).copied().collect();
    (left, right)
}

/// The stretches of `audio` (16 kHz) with sound, split where it is quiet for half a second.
pub(crate) fn bursts(audio: &[i16]) -> Vec<&[i16]> {
    const WINDOW: usize = 1_600;
    let loud: Vec<bool> = audio
        .chunks(WINDOW)
        .map(|c| c.iter().any(|v| v.unsigned_abs() > 500))
        .collect();
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut quiet = 0;
    for (i, &l) in loud.iter().enumerate() {
        match (l, start) {
            (true, None) => (start, quiet) = (Some(i), 0),
            (true, Some(_)) => quiet = 0,
            (false, Some(s)) => {
                quiet += 1;
                if quiet == 5 {
                    out.push(&audio[s * WINDOW..(i + 1 - quiet) * WINDOW]);
                    start = None;
                }
            }
            (false, None) => {}
        }
    }
    if let Some(s) = start {
        out.push(&audio[s * WINDOW..]);
    }
    out
}

/// What PocketSphinx hears in 16 kHz audio, restricted to sequences of [`PHRASES`]
/// (utterances joined by spaces).
/// Where 16 kHz audio has sound, by 20 ms frames: e.g. "-29 +34 -15 +111" is 29 frames of
/// digital silence, 34 with sound, and so on (for failure messages).
pub(crate) fn shape(audio: &[i16]) -> String {
    let mut runs: Vec<(bool, usize)> = Vec::new();
    for frame in audio.chunks(320) {
        let sound = frame.iter().any(|&v| v != 0);
        match runs.last_mut() {
            Some((s, n)) if *s == sound => *n += 1,
            _ => runs.push((sound, 1)),
        }
    }
    let runs: Vec<String> = runs
        .iter()
        .map(|(s, n)| format!("{}{n}", if *s { '+' } else { '-' }))
        .collect();
    runs.join(" ")
}

pub(crate) async fn recognize(audio: &[i16]) -> String {
    use vbin_media::stt::{pocketsphinx::PocketSphinx, SttProvider};
    let grammar = grammar();
    let stt = PocketSphinx::new().with_grammar(&grammar);
    assert!(
        stt.available(),
        "PocketSphinx must be installed (scripts/services)"
    );
    let mut session = stt.start("en-US").unwrap();
    let audio_tx = session.audio;
    // PocketSphinx loses speech that follows a short run of digital silence at the very
    // start (its noise floor is not set yet): start where the audio does. And a second of
    // silence after: it ends an utterance on silence.
    let start = audio.iter().position(|&v| v != 0).unwrap_or(audio.len());
    let mut audio = audio[start..].to_vec();
    audio.extend(std::iter::repeat_n(0i16, 16_000));
    let frames: Vec<Vec<i16>> = audio.chunks(320).map(|c| c.to_vec()).collect();
    tokio::spawn(async move {
        for f in frames {
            if audio_tx.send(f.into()).await.is_err() {
                return;
            }
        }
    });
    let mut heard = Vec::new();
    while let Some(seg) = session.results.recv().await {
        let seg = seg.unwrap();
        if seg.is_final && !seg.text.trim().is_empty() {
            heard.push(seg.text.trim().to_string());
        }
    }
    std::fs::remove_file(grammar).ok();
    heard.join(" ")
}

#[tokio::test]
async fn inline_actions_run_and_the_flow_ends_with_its_call() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    // No key pressed: digits_receive times out, the default branch loops once (goto), then the
    // far end hangs up during the second wait.
    let call = env
        .calls(
            &tok,
            &["+15550002000"],
            json!({"actions": [
                {"id": MENU, "type": "beep"},
                {"type": "variable_set", "option": {"key": "tries", "value": "x${tries}"}},
                {"type": "digits_receive", "option": {"duration": 700}},
                {"type": "goto", "option": {"target_id": MENU, "loop_count": 1}},
                {"type": "sleep", "option": {"duration": 60000}},
            ], "sandbox": {"script": [{"at_ms": 4000, "hangup": true}]}}),
        )
        .await[0];
    let af = ended_flow(&env, &tok, call, Duration::from_secs(30)).await;
    let executed = executed(&af);
    assert_eq!(
        executed,
        [
            "beep",
            "variable_set",
            "digits_receive",
            "goto",
            "beep",
            "variable_set",
            "digits_receive",
            "goto",
            "sleep"
        ],
        "{af}"
    );
    assert_eq!(af["variables"]["tries"], "xx", "{af}");
    assert_eq!(af["end_reason"], "call_ended", "{af}");
    let c = env.wait_call_end(call, Duration::from_secs(10)).await;
    assert_eq!(c["hangup_by"], "remote", "{c}");
    // Stopping an ended flow changes nothing.
    let (s, v) = api
        .post(
            &format!("/v1.0/activeflows/{}/stop", af["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(
        (s, v["end_reason"].as_str()),
        (200, Some("call_ended")),
        "{v}"
    );
}

#[tokio::test]
async fn a_call_to_a_number_runs_the_numbers_flow() {
    let env = Env::start().await;
    let (cust, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let (_, tok2, _) = env.customer().await;
    let (s, flow) = api
        .post(
            "/v1.0/flows",
            json!({"name": "reception", "actions": [
                {"type": "answer"},
                {"type": "talk", "option": {"text": "Thanks for calling ${voipbin.call.destination}"}},
                {"type": "digits_receive", "option": {"duration": 5000, "key": "#"}},
                {"type": "hangup"},
            ]}),
        )
        .await;
    assert_eq!(s, 200, "{flow}");
    let (s, number) = api
        .post(
            "/v1.0/numbers",
            json!({"number": "+15557770001", "call_flow_id": flow["id"]}),
        )
        .await;
    assert_eq!(s, 200, "{number}");
    // The number is one customer's; another's flow cannot be used.
    let other = env.client(&tok2);
    let (_, flow2) = other
        .post(
            "/v1.0/flows",
            json!({"name": "x", "actions": [{"type": "hangup"}]}),
        )
        .await;
    let (s, v) = other
        .post(
            "/v1.0/numbers",
            json!({"number": "+15557770001", "call_flow_id": flow2["id"]}),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    let (s, v) = other
        .post(
            "/v1.0/numbers",
            json!({"number": "+15557770002", "call_flow_id": flow["id"]}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    // Only the platform admin plays the network; a number the customer lacks is not found.
    let incoming = json!({"customer_id": cust, "source": "+15550009999",
        "destination": "+15557770001",
        "sandbox": {"script": [{"at_ms": 500, "digits": "42#"}, {"at_ms": 20000, "hangup": true}]}});
    assert_eq!(
        api.post("/v1.0/sandbox/incoming_calls", incoming.clone())
            .await
            .0,
        403
    );
    let mut wrong = incoming.clone();
    wrong["destination"] = json!("+15557770003");
    assert_eq!(
        env.admin()
            .post("/v1.0/sandbox/incoming_calls", wrong)
            .await
            .0,
        404
    );
    let (s, call) = env
        .admin()
        .post("/v1.0/sandbox/incoming_calls", incoming)
        .await;
    assert_eq!(s, 200, "{call}");
    assert_eq!(call["direction"], "incoming");
    let call = uuid_of(&call);
    let af = ended_flow(&env, &tok, call, Duration::from_secs(30)).await;
    let executed = executed(&af);
    assert_eq!(
        executed,
        ["answer", "talk", "digits_receive", "hangup"],
        "{af}"
    );
    assert_eq!(af["variables"]["voipbin.call.digits"], "42", "{af}");
    let c = env.wait_call_end(call, Duration::from_secs(10)).await;
    assert_eq!(
        (
            c["status"].as_str(),
            c["hangup_by"].as_str(),
            c["direction"].as_str()
        ),
        (Some("completed"), Some("local"), Some("incoming")),
        "{c}"
    );
}

type Requests = std::sync::Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>>;

/// A customer endpoint on 127.0.0.1 that records each request and answers `answer` (JSON).
async fn endpoint(answer: Value) -> (String, Requests) {
    let seen: Requests = Default::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/flow",
        axum::routing::post(move |h: axum::http::HeaderMap, body: axum::body::Bytes| {
            let s = s.clone();
            let answer = answer.clone();
            async move {
                s.lock().unwrap().push((h, body.to_vec()));
                axum::Json(answer)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let url = format!("http://{}/flow", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

fn header(h: &axum::http::HeaderMap, name: &str) -> String {
    h.get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn webhook_send_sync_runs_the_actions_the_customer_answers() {
    use hmac::{Hmac, KeyInit, Mac};
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    // The answer's own ids (renumbered when spliced in) and jumps within it.
    let (no, done) = (SALES, SUPPORT);
    let (url, seen) = endpoint(json!({"actions": [
        {"type": "variable_set", "option": {"key": "plan", "value": "gold"}},
        {"type": "condition_variable", "option": {"variable": "plan", "condition": "==",
            "value_type": "string", "value_string": "gold", "false_target_id": no}},
        {"type": "variable_set", "option": {"key": "greeted", "value": "yes"}, "next_id": done},
        {"id": no, "type": "variable_set", "option": {"key": "greeted", "value": "no"}},
        {"id": done, "type": "variable_set", "option": {"key": "done", "value": "yes"}},
    ]}))
    .await;
    let call = env
        .calls(
            &tok,
            &["+15550002000"],
            json!({"actions": [
                {"type": "webhook_send", "option": {"uri": url, "sync": true,
                    "data": {"caller": "${voipbin.call.source}"}}},
                {"type": "hangup"},
                {"id": MENU, "type": "stop"},
            ], "sandbox": {"script": [{"at_ms": 20000, "hangup": true}]}}),
        )
        .await[0];
    let af = ended_flow(&env, &tok, call, Duration::from_secs(30)).await;
    let executed = executed(&af);
    assert_eq!(
        executed,
        [
            "webhook_send",
            "variable_set",
            "condition_variable",
            "variable_set",
            "variable_set",
            "hangup"
        ],
        "{af}"
    );
    assert_eq!(
        (
            af["variables"]["plan"].as_str(),
            af["variables"]["greeted"].as_str(),
            af["variables"]["done"].as_str()
        ),
        (Some("gold"), Some("yes"), Some("yes"))
    );
    // One signed request, its id the execution's.
    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 1);
    let (h, body) = &requests[0];
    assert_eq!(
        serde_json::from_slice::<Value>(body).unwrap(),
        json!({"caller": "+15550001000"})
    );
    assert_eq!(
        header(h, "webhook-id"),
        format!("{}-1", af["id"].as_str().unwrap())
    );
    let secret = api
        .wait_found("/v1.0/customer", Duration::from_secs(10))
        .await["webhook_secret"]
        .as_str()
        .unwrap()
        .to_string();
    let ts = header(h, "x-voipbin-timestamp");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    assert_eq!(
        header(h, "x-voipbin-signature"),
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    );
}

#[tokio::test]
async fn kill_9_mid_flow_replays_the_talk_and_sends_the_webhook_once() {
    let mut env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let (url, seen) = endpoint(json!({})).await;
    let long = "This is a long announcement. It keeps talking for a while, so that the \
                platform can be killed in the middle of it, and it has to be said again \
                from the start once the platform is back.";
    let call = env
        .calls(
            &tok,
            &["+15550002000"],
            json!({"actions": [
                {"type": "webhook_send", "option": {"uri": url}},
                {"type": "talk", "option": {"text": long}},
                {"type": "hangup"},
            ], "sandbox": {"script": [{"at_ms": 120000, "hangup": true}]}}),
        )
        .await[0];
    // Mid-talk: the talk is executed and not finished.
    let api = env.client(&tok);
    let af = wait_until("the talk to start", Duration::from_secs(20), || async {
        let (_, v) = api
            .get(&format!("/v1.0/activeflows?reference_id={call}"))
            .await;
        let af = v["result"][0].clone();
        (af["current_action"]["type"] == "talk").then_some(af)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    env.platform.kill();
    env.platform = env.spawn_platform().await;
    let ended = ended_flow(&env, &tok, call, Duration::from_secs(60)).await;
    assert_eq!(ended["id"], af["id"]);
    let executed = executed(&ended);
    // Each action executed once in the log; the talk was played again by the new process.
    assert_eq!(executed, ["webhook_send", "talk", "hangup"], "{ended}");
    let log = std::fs::read_to_string(env.platform.log_path()).unwrap();
    assert!(
        log.contains("took over the media session"),
        "the new process resumed the talk"
    );
    let c = env.wait_call_end(call, Duration::from_secs(10)).await;
    assert_eq!(c["hangup_by"], "local", "{c}");
    // The webhook of the one execution: every request (a redelivery after the crash would be
    // one more) carries the same id.
    let ids: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(h, _)| header(h, "webhook-id"))
        .collect();
    assert!(!ids.is_empty());
    assert!(
        ids.iter()
            .all(|i| *i == format!("{}-1", af["id"].as_str().unwrap())),
        "{ids:?}"
    );
}

#[tokio::test]
async fn a_call_whose_media_process_died_for_good_is_hung_up() {
    let mut env = Env::start_with_env(&[("VBIN_MEDIA_ORPHAN_TIMEOUT_MS", "2000")]).await;
    let (_, tok, _) = env.customer().await;
    let call = env
        .calls(
            &tok,
            &["+15550002000"],
            json!({"actions": [{"type": "sleep", "option": {"duration": 600000}}],
                   "sandbox": {"script": [{"at_ms": 300000, "hangup": true}]}}),
        )
        .await[0];
    let api = env.client(&tok);
    wait_until("the sleep to start", Duration::from_secs(20), || async {
        let (_, v) = api
            .get(&format!("/v1.0/activeflows?reference_id={call}"))
            .await;
        (v["result"][0]["current_action"]["type"] == "sleep").then_some(())
    })
    .await;
    env.platform.kill();
    // Everything but media comes back.
    env.platform_without_media().await;
    let c = env.wait_call_end(call, Duration::from_secs(30)).await;
    assert_eq!(
        (c["hangup_cause"].as_str(), c["hangup_by"].as_str()),
        (Some("network_out_of_order"), Some("remote")),
        "{c}"
    );
    let af = ended_flow(&env, &tok, call, Duration::from_secs(10)).await;
    assert_eq!(af["end_reason"], "call_ended");
}

#[tokio::test]
async fn play_fetches_decodes_and_plays_and_a_bad_url_is_an_error_the_flow_survives() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    // A customer's file server with a WAV of speech (espeak-ng, 22.05 kHz: resampled on play).
    let wav = std::env::temp_dir().join(format!("vbin-play-{}.wav", Uuid::new_v4()));
    let ok = std::process::Command::new("espeak-ng")
        .arg("-w")
        .arg(&wav)
        .arg("sales will call you back")
        .status()
        .expect("espeak-ng (scripts/services installs it)");
    assert!(ok.success());
    let bytes = std::fs::read(&wav).unwrap();
    let app = axum::Router::new().route(
        "/prompt.wav",
        axum::routing::get(move || {
            let b = bytes.clone();
            async move { ([("content-type", "audio/wav")], b) }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let call = env
        .calls(
            &tok,
            &["+15550002000"],
            json!({"actions": [
                {"type": "recording_start"},
                {"type": "play", "option": {"stream_urls": ["http://10.1.2.3/private.wav"]}},
                {"type": "play", "option": {"stream_urls": [format!("{base}/prompt.wav")]}},
                {"type": "sleep", "option": {"duration": 1000}},
                {"type": "play", "option": {"stream_urls": [format!("{base}/missing.wav"), format!("{base}/prompt.wav")]}},
                {"type": "hangup"},
            ], "sandbox": {"script": [{"at_ms": 30000, "hangup": true}]}}),
        )
        .await[0];
    let af = ended_flow(&env, &tok, call, Duration::from_secs(30)).await;
    let executed = af["executed_actions"].as_array().unwrap();
    let types: Vec<&str> = executed
        .iter()
        .map(|a| a["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["recording_start", "play", "play", "sleep", "play", "hangup"],
        "{af}"
    );
    let err = |i: usize| {
        executed[i]["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(err(1).contains("not a public address"), "{af}");
    assert_eq!(err(2), "", "{af}");
    // A file that fails is the execution's error; the others of the same play are played.
    assert!(err(4).contains("404"), "{af}");
    let (_, wav) = stored_recording(&env, &tok, call).await;
    let (_, right) = stereo(&wav);
    // Each play's audio, recognized on its own (PocketSphinx loses an utterance that follows a
    // run of digital silence, which is what lies between them).
    let parts = bursts(&right);
    assert_eq!(parts.len(), 2, "two plays heard");
    for part in parts {
        assert_eq!(recognize(part).await, "sales will call you back");
    }
}
