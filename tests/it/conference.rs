//! Conferences end to end: members that speak (sandbox far ends), each member's recording
//! transcribed to check it heard the others and not itself, a member leaving mid-call, the
//! conference stopped through the API. Real vbin, Postgres, nats-server and redis-server.

use crate::flows::{
    ended_flow, executed, grammar, recognize, stereo, stored_recording, uuid_of, FAR_END,
};
use crate::support::{id_of, Env};
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

const B_SAYS: &str = "sales will call you back";
const C_SAYS: &str = "support";

/// A member's flow: record it, join the conference.
fn member(conference: &str, says: &str, at_ms: u32, hangup_ms: u32) -> Value {
    json!({
        "actions": [
            {"type": "recording_start", "option": {"beep_start": false}},
            {"type": "conference_join", "option": {"conference_id": conference}}
        ],
        "sandbox": {"script": [{"at_ms": at_ms, "say": says},
                               {"at_ms": hangup_ms, "hangup": true}]}
    })
}

/// What the member's far end said and what it heard, from its recording.
async fn heard(env: &Env, tok: &str, call: Uuid) -> (String, String) {
    let (_, wav) = stored_recording(env, tok, call).await;
    let (said, heard) = stereo(&wav);
    (recognize(&said).await, recognize(&heard).await)
}

#[tokio::test]
async fn three_members_each_hear_the_other_two_and_not_themselves() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let conf = api
        .create("/v1.0/conferences", json!({"name": "standup"}))
        .await;
    assert_eq!(conf["status"], "pending", "{conf}");
    let cid = id_of(&conf);
    // A speaks at 3 s, B at 6.5 s and hangs up at 9 s, C speaks at 10.5 s.
    let a = env
        .calls(&tok, &["+15550006001"], member(&cid, FAR_END, 3000, 60000))
        .await[0];
    let b = env
        .calls(&tok, &["+15550006002"], member(&cid, B_SAYS, 6500, 9000))
        .await[0];
    let c = env
        .calls(&tok, &["+15550006003"], member(&cid, C_SAYS, 10500, 60000))
        .await[0];
    let conf = api
        .wait_get(
            &format!("/v1.0/conferences/{cid}"),
            Duration::from_secs(15),
            |_, v| v["call_ids"].as_array().is_some_and(|m| m.len() == 3),
        )
        .await;
    assert_eq!(conf["status"], "progressing", "{conf}");
    // B's hangup takes it out.
    let bend = env.wait_call_end(b, Duration::from_secs(20)).await;
    assert_eq!(bend["hangup_by"], "remote", "{bend}");
    members_in(&api, &cid, 2).await;
    // After C has spoken, the conference is stopped: the others' flows go on (and, with
    // nothing after their conference_join, end with their calls).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (s, v) = api
        .post(&format!("/v1.0/conferences/{cid}/stop"), json!({}))
        .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("terminated")), "{v}");
    for call in [a, c] {
        let af = ended_flow(&env, &tok, call, Duration::from_secs(20)).await;
        assert_eq!(
            executed(&af),
            ["recording_start", "conference_join"],
            "{af}"
        );
        let end = env.wait_call_end(call, Duration::from_secs(10)).await;
        assert_eq!(end["hangup_by"], "local", "{end}");
    }
    // Every membership, and how it ended.
    let members = api
        .wait_get(
            &format!("/v1.0/conferencecalls?conference_id={cid}"),
            Duration::from_secs(10),
            |_, v| {
                v["result"]
                    .as_array()
                    .is_some_and(|r| r.len() == 3 && r.iter().all(|m| m["status"] == "leaved"))
            },
        )
        .await;
    let reason = |call: Uuid| {
        members["result"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["call_id"] == call.to_string())
            .map(|m| m["leave_reason"].clone())
            .unwrap()
    };
    assert_eq!(
        (reason(a), reason(b), reason(c)),
        (json!("stopped"), json!("hangup"), json!("stopped"))
    );

    // What each heard: the others, in the order they spoke, never itself; B left before C
    // spoke.
    assert_eq!(
        heard(&env, &tok, a).await,
        (FAR_END.to_string(), format!("{B_SAYS} {C_SAYS}"))
    );
    assert_eq!(
        heard(&env, &tok, b).await,
        (B_SAYS.to_string(), FAR_END.to_string())
    );
    assert_eq!(
        heard(&env, &tok, c).await,
        (C_SAYS.to_string(), format!("{FAR_END} {B_SAYS}"))
    );

    // Each member is billed as the call it is; the conference itself is not.
    for call in [a, b, c] {
        api.wait_get(
            &format!("/v1.0/billings?reference_id={call}"),
            Duration::from_secs(15),
            |_, v| v["result"].as_array().is_some_and(|r| r.len() == 1),
        )
        .await;
    }
    let (_, bills) = api.get("/v1.0/billings?page_size=100").await;
    assert_eq!(bills["result"].as_array().unwrap().len(), 3, "{bills}");

    // Another tenant sees none of it.
    let (_, tok2, _) = env.customer().await;
    let api2 = env.client(&tok2);
    assert_eq!(api2.get(&format!("/v1.0/conferences/{cid}")).await.0, 404);
    assert_eq!(
        api2.post(&format!("/v1.0/conferences/{cid}/stop"), json!({}))
            .await
            .0,
        404
    );
}

/// The platform without media plus one media process P1 (`vars` for every process), a
/// customer's token and a conference of theirs.
async fn conference_on_p1(
    vars: &[(&str, &str)],
) -> (Env, String, crate::support::Platform, String) {
    let mut all = vec![("VBIN_DB_POOL", "40")];
    all.extend_from_slice(vars);
    let mut env = Env::start_with_env(&all).await;
    let (_, tok, _) = env.customer().await;
    env.platform_without_media().await;
    let p1 = env.spawn_platform_only(&["media"]).await;
    let cid = id_of(
        &env.client(&tok)
            .create("/v1.0/conferences", json!({"name": "x"}))
            .await,
    );
    (env, tok, p1, cid)
}

/// The media process running each call's session.
async fn owners(env: &Env, calls: &[Uuid]) -> Vec<Option<String>> {
    let mut out = vec![];
    for c in calls {
        out.push(env.media_owner(*c).await);
    }
    out
}

#[tokio::test]
async fn members_on_two_media_processes_hear_each_other_and_survive_the_others_crash() {
    let (env, tok, p1, cid) = conference_on_p1(&[("VBIN_MEDIA_ORPHAN_TIMEOUT_MS", "2000")]).await;
    let api = env.client(&tok);
    // A and B join on P1. C speaks first (about 4 s after its answer), A at 25 s, B at 29 s,
    // and B again at 38 s, after the crash.
    let script = |lines: &[(u32, &str)]| {
        let mut steps: Vec<Value> = lines
            .iter()
            .map(|(at, say)| json!({"at_ms": at, "say": say}))
            .collect();
        steps.push(json!({"at_ms": 120000, "hangup": true}));
        json!({
            "actions": [
                {"type": "recording_start", "option": {"beep_start": false}},
                {"type": "conference_join", "option": {"conference_id": cid}}
            ],
            "sandbox": {"script": steps}
        })
    };
    let t0 = tokio::time::Instant::now();
    let a = env
        .calls(&tok, &["+15550006001"], script(&[(25_000, FAR_END)]))
        .await[0];
    let b = env
        .calls(
            &tok,
            &["+15550006002"],
            script(&[(29_000, B_SAYS), (38_000, crate::flows::MENU_TEXT)]),
        )
        .await[0];
    members_in(&api, &cid, 2).await;
    // P2 starts; P1 drains, so C's session goes to P2.
    let mut p2 = env.spawn_platform_only(&["media"]).await;
    p1.signal("USR1");
    let c = env
        .calls(&tok, &["+15550006003"], script(&[(4_000, C_SAYS)]))
        .await[0];
    members_in(&api, &cid, 3).await;
    crate::support::wait_until("C's session on P2", Duration::from_secs(20), || async {
        let o = owners(&env, &[a, b, c]).await;
        (o[0].is_some() && o[0] == o[1] && o[2].is_some() && o[2] != o[0]).then_some(())
    })
    .await;
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "set-up took {:?}: the script's timing no longer holds",
        t0.elapsed()
    );
    // After everybody has spoken once, C's recording is stopped (stored), then P2 dies.
    tokio::time::sleep_until(t0 + Duration::from_secs(33)).await;
    let (s, v) = api
        .post(&format!("/v1.0/calls/{c}/recording_stop"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, wav) = stored_recording(&env, &tok, c).await;
    let (said, heard_c) = stereo(&wav);
    p2.kill();
    // C, whose media process died, is hung up with a clear cause.
    let cend = env.wait_call_end(c, Duration::from_secs(30)).await;
    assert_eq!(
        (cend["hangup_cause"].as_str(), cend["hangup_by"].as_str()),
        (Some("network_out_of_order"), Some("remote")),
        "{cend}"
    );
    // A and B stay connected: B speaks after the crash and A hears it.
    tokio::time::sleep_until(t0 + Duration::from_secs(45)).await;
    let (s, _) = api
        .post(&format!("/v1.0/conferences/{cid}/stop"), json!({}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(recognize(&said).await, C_SAYS, "C said");
    assert_eq!(
        recognize(&heard_c).await,
        format!("{FAR_END} {B_SAYS}"),
        "C (on P2) heard A and B (on P1)"
    );
    assert_eq!(
        heard(&env, &tok, a).await,
        (
            FAR_END.to_string(),
            format!("{C_SAYS} {B_SAYS} {}", crate::flows::MENU_TEXT)
        ),
        "A heard C across processes, then B before and after P2 died"
    );
    assert_eq!(
        heard(&env, &tok, b).await.1,
        format!("{C_SAYS} {FAR_END}"),
        "B heard C across processes, then A"
    );
    let log = std::fs::read_to_string(p1.log_path()).unwrap();
    assert!(log.contains("media process draining"), "P1 drained");
}

/// A member's flow without a recording of its own: join the conference, say `says` at
/// `at_ms`.
fn speaker(conference: &str, says: &str, at_ms: u32) -> Value {
    json!({
        "actions": [{"type": "conference_join", "option": {"conference_id": conference}}],
        "sandbox": {"script": [{"at_ms": at_ms, "say": says}, {"at_ms": 60000, "hangup": true}]}
    })
}

/// Waits (20 s at most) until the conference `cid` has `n` members; returns it.
async fn members_in(api: &crate::support::Client<'_>, cid: &str, n: usize) -> Value {
    api.wait_get(
        &format!("/v1.0/conferences/{cid}"),
        Duration::from_secs(20),
        |_, v| v["call_ids"].as_array().is_some_and(|m| m.len() == n),
    )
    .await
}

/// A conference's recording `rec`, once stored without error: its mix.
async fn stored_mix(env: &Env, tok: &str, rec: &Value) -> Vec<i16> {
    let rid = uuid_of(rec);
    let ended = env
        .client(tok)
        .wait_get(
            &format!("/v1.0/recordings/{rid}"),
            Duration::from_secs(20),
            |_, v| v["status"] == "ended",
        )
        .await;
    assert!(ended["error"].is_null(), "{ended}");
    let (s, wav) = env
        .get_bytes(tok, &format!("/v1.0/recordings/{rid}/file"))
        .await;
    assert_eq!(s, 200);
    mono(&wav)
}

/// What `call` said in a conference's `transcripts` (`{result: [...]}`): its transcript's
/// message and direction.
fn said_by(transcripts: &Value, call: Uuid) -> Option<(Value, Value)> {
    transcripts["result"]
        .as_array()?
        .iter()
        .find(|t| t["call_id"] == call.to_string())
        .map(|t| (t["message"].clone(), t["direction"].clone()))
}

/// A 16-bit mono WAV's samples.
fn mono(wav: &[u8]) -> Vec<i16> {
    assert_eq!(&wav[0..4], b"RIFF");
    assert_eq!(u16::from_le_bytes([wav[22], wav[23]]), 1, "one channel");
    assert_eq!(u32::from_le_bytes(wav[24..28].try_into().unwrap()), 16_000);
    let data_len = u32::from_le_bytes(wav[40..44].try_into().unwrap()) as usize;
    assert_eq!(
        data_len,
        wav.len() - 44,
        "the served header has the real sizes"
    );
    wav[44..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

#[tokio::test]
async fn a_conference_is_recorded_as_its_mix_and_transcribed_member_by_member() {
    let grammar = grammar();
    let env = Env::start_with_env(&[
        ("VBIN_STT_PROVIDER", "pocketsphinx"),
        ("VBIN_STT_GRAMMAR", grammar.to_str().unwrap()),
    ])
    .await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let cid = id_of(
        &api.create("/v1.0/conferences", json!({"name": "board"}))
            .await,
    );
    let record = format!("/v1.0/conferences/{cid}/recording_start");
    let transcribe =
        json!({"reference_type": "conference", "reference_id": cid, "language": "en-US"});

    // A mix has no far end to fall silent or press keys; a member is transcribed for what
    // it says only.
    let (s, v) = api.post(&record, json!({"end_of_silence": 3000})).await;
    assert_eq!(s, 400, "{v}");
    let mut both = transcribe.clone();
    both["direction"] = json!("both");
    let (s, v) = api.post("/v1.0/transcribes", both).await;
    assert_eq!(s, 400, "{v}");
    // Another tenant can do neither.
    let (_, tok2, _) = env.customer().await;
    let api2 = env.client(&tok2);
    assert_eq!(api2.post(&record, json!({})).await.0, 404);
    assert_eq!(
        api2.post("/v1.0/transcribes", transcribe.clone()).await.0,
        404
    );

    // Both start before anyone joins.
    let (s, rec) = api.post(&record, json!({})).await;
    assert_eq!(s, 200, "{rec}");
    assert_eq!(
        (
            &rec["reference_type"],
            &rec["reference_id"],
            &rec["channels"]
        ),
        (&json!("conference"), &json!(cid), &json!(1)),
        "{rec}"
    );
    let (s, tr) = api.post("/v1.0/transcribes", transcribe.clone()).await;
    assert_eq!(s, 200, "{tr}");
    assert_eq!(tr["direction"], "in", "{tr}");
    let (s, v) = api.post("/v1.0/transcribes", transcribe.clone()).await;
    assert_eq!(s, 409, "one running transcription per conference: {v}");

    // A speaks about 3 s after its answer, B about 7 s after its.
    let a = env
        .calls(&tok, &["+15550006101"], speaker(&cid, FAR_END, 3000))
        .await[0];
    let b = env
        .calls(&tok, &["+15550006102"], speaker(&cid, B_SAYS, 7000))
        .await[0];
    members_in(&api, &cid, 2).await;
    // B has spoken about 7 s after its answer. The conference ends: its recording and its
    // transcription with it (the recognizers finish the members' last utterances as their
    // streams end).
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (s, v) = api
        .post(&format!("/v1.0/conferences/{cid}/stop"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    let tpath = format!("/v1.0/transcripts?transcribe_id={}", uuid_of(&tr));
    let transcripts = api
        .wait_get(&tpath, Duration::from_secs(30), |_, v| {
            v["result"].as_array().is_some_and(|r| r.len() == 2)
        })
        .await;

    // Each transcript names its member.
    let heard_in = |said: &str| Some((json!(said), json!("in")));
    assert_eq!(said_by(&transcripts, a), heard_in(FAR_END), "{transcripts}");
    assert_eq!(said_by(&transcripts, b), heard_in(B_SAYS), "{transcripts}");
    api.wait_get(
        &format!("/v1.0/transcribes/{}", uuid_of(&tr)),
        Duration::from_secs(15),
        |_, v| v["status"] == "completed",
    )
    .await;

    // The recording is the mix: both members, in the order they spoke.
    let mix = stored_mix(&env, &tok, &rec).await;
    assert_eq!(recognize(&mix).await, format!("{FAR_END} {B_SAYS}"));
    let (_, by_reference) = api
        .get(&format!("/v1.0/recordings?reference_id={cid}"))
        .await;
    assert_eq!(by_reference["result"].as_array().map(Vec::len), Some(1));
    let _ = std::fs::remove_file(&grammar);
}

#[tokio::test]
async fn a_conference_across_two_media_processes_is_recorded_whole_and_each_member_transcribed() {
    let grammar = grammar();
    let (env, tok, p1, cid) = conference_on_p1(&[
        ("VBIN_STT_PROVIDER", "pocketsphinx"),
        ("VBIN_STT_GRAMMAR", grammar.to_str().unwrap()),
    ])
    .await;
    let api = env.client(&tok);
    // P1 is the only media process: it records the mix.
    let (s, rec) = api
        .post(
            &format!("/v1.0/conferences/{cid}/recording_start"),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{rec}");
    let (s, tr) = api
        .post(
            "/v1.0/transcribes",
            json!({"reference_type": "conference", "reference_id": cid, "language": "en-US"}),
        )
        .await;
    assert_eq!(s, 200, "{tr}");
    // A joins on P1; then P2 starts and P1 drains, so B's session goes to P2.
    // A speaks late enough that B, answered after P2 starts, normally speaks first; on a slow
    // machine B may speak second, so the order of the mix is taken from the answer times.
    const A_AT: i64 = 20;
    const B_AT: i64 = 4;
    let a = env
        .calls(
            &tok,
            &["+15550006201"],
            speaker(&cid, FAR_END, A_AT as u32 * 1000),
        )
        .await[0];
    members_in(&api, &cid, 1).await;
    let _p2 = env.spawn_platform_only(&["media"]).await;
    p1.signal("USR1");
    let b = env
        .calls(
            &tok,
            &["+15550006202"],
            speaker(&cid, B_SAYS, B_AT as u32 * 1000),
        )
        .await[0];
    members_in(&api, &cid, 2).await;
    crate::support::wait_until("B's session on P2", Duration::from_secs(20), || async {
        let o = owners(&env, &[a, b]).await;
        (o[0].is_some() && o[1].is_some() && o[0] != o[1]).then_some(())
    })
    .await;
    let answered = |call: Value| -> chrono::DateTime<chrono::Utc> {
        call["tm_progressing"].as_str().unwrap().parse().unwrap()
    };
    let a_speaks =
        answered(api.get(&format!("/v1.0/calls/{a}")).await.1) + chrono::Duration::seconds(A_AT);
    let b_speaks =
        answered(api.get(&format!("/v1.0/calls/{b}")).await.1) + chrono::Duration::seconds(B_AT);
    // Each line lasts about 2 s: closer than 3 s they overlap and neither can be recognised.
    let gap = (a_speaks - b_speaks).num_milliseconds();
    assert!(
        gap.abs() >= 3_000,
        "the lines would overlap: B speaks {gap} ms before A (B answered too late for this test's timing)"
    );
    let expected_mix = if gap > 0 {
        format!("{B_SAYS} {FAR_END}")
    } else {
        format!("{FAR_END} {B_SAYS}")
    };
    let spoken = a_speaks.max(b_speaks) + chrono::Duration::seconds(5);
    let left = (spoken - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left).await;
    let (s, _) = api
        .post(&format!("/v1.0/conferences/{cid}/stop"), json!({}))
        .await;
    assert_eq!(s, 200);

    // Each process transcribed its own member.
    let transcripts = api
        .wait_get(
            &format!("/v1.0/transcripts?transcribe_id={}", uuid_of(&tr)),
            Duration::from_secs(30),
            |_, v| v["result"].as_array().is_some_and(|r| r.len() == 2),
        )
        .await;
    assert_eq!(
        (said_by(&transcripts, a), said_by(&transcripts, b)),
        (
            Some((json!(FAR_END), json!("in"))),
            Some((json!(B_SAYS), json!("in")))
        ),
        "{transcripts}"
    );
    // P1's recording holds both, B heard from P2 over the mesh, in the order they spoke.
    let mix = stored_mix(&env, &tok, &rec).await;
    assert_eq!(recognize(&mix).await, expected_mix);
    let _ = std::fs::remove_file(&grammar);
}
