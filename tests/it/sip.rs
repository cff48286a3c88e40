//! The SIP carrier against sipp (issue 18): calls placed through a trunk reach a real SIP far
//! end; its answers become the call's statuses and causes, the same events as the sandbox's for
//! the same outcome; digest auth, CANCEL at the dial timeout, BYE from either side; a
//! redelivered `call_created` sends no second INVITE.

use crate::flows::{ended_flow, executed, recognize, shape, stereo, stored_recording, MENU_TEXT};
use crate::support::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A sipp far end on its own port, logging every message it sends and receives.
struct Sipp {
    port: u16,
    child: Option<Child>,
    messages: PathBuf,
    out: PathBuf,
    /// sipp's errors (why it stopped before a call: a port taken, a bad scenario).
    err: PathBuf,
    /// Its exit code, when it was already done as it started.
    exited: Option<i32>,
}

impl Sipp {
    /// sipp as a UAS playing `scenario` (a file of tests/it/sipp, or `None`: sipp's own
    /// `uas`, which answers and waits for the BYE) for `calls` calls.
    fn uas(scenario: Option<&str>, calls: u32) -> Self {
        Self::uas_with(scenario, calls, &[])
    }

    /// The same, with more arguments for sipp.
    fn uas_with(scenario: Option<&str>, calls: u32, args: &[&str]) -> Self {
        Self::spawn(scenario.unwrap_or("-uas"), calls, args)
    }

    /// sipp as a caller playing `scenario` (a file of tests/it/sipp) once: it calls `number`
    /// at the platform's SIP endpoint, with RTP on a port of its own.
    fn uac(env: &Env, scenario: &str, number: &str) -> Self {
        let target = format!("127.0.0.1:{}", env.platform.sip_port);
        let media_port = sipp_media_port().to_string();
        Self::spawn(
            scenario,
            1,
            &[
                &target,
                "-s",
                number,
                "-mi",
                "127.0.0.1",
                "-mp",
                &media_port,
            ],
        )
    }

    /// sipp playing `scenario` (a file of tests/it/sipp, or "-uas": sipp's own `uas`).
    /// A sipp that cannot bind its SIP port (exit 254: another process took the port between
    /// its choice and sipp's bind) starts again on another.
    fn spawn(scenario: &str, calls: u32, args: &[&str]) -> Self {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match Self::try_spawn(scenario, calls, args) {
                Ok(sipp) => return sipp,
                Err(log) if attempts < 5 => eprintln!("sipp could not bind; again: {log}"),
                Err(log) => panic!("sipp could not bind its port five times: {log}"),
            }
        }
    }

    /// One start of sipp; Err (its log) if it exited 254 (a socket it could not bind) before
    /// it was seen listening.
    fn try_spawn(scenario: &str, calls: u32, args: &[&str]) -> Result<Self, String> {
        let port = free_udp_ports(1);
        let dir = std::env::temp_dir().join(format!("vbin-sipp-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        // sipp's RFC 4733 recordings, for scenarios that press keys (play_pcap_audio).
        for d in 0..10 {
            let name = format!("dtmf_2833_{d}.pcap");
            let _ = std::fs::copy(format!("/usr/share/sip-tester/{name}"), dir.join(&name));
        }
        let messages = dir.join("messages.log");
        let out = dir.join("out.txt");
        let err = dir.join("err.txt");
        let mut cmd = Command::new("sipp");
        match scenario {
            "-uas" => cmd.args(["-sn", "uas"]),
            s => cmd.arg("-sf").arg(
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../tests/it/sipp")
                    .join(s),
            ),
        };
        let child = cmd
            .args(["-i", "127.0.0.1", "-p", &port.to_string()])
            .args(["-m", &calls.to_string(), "-nostdin", "-trace_msg"])
            .args(args)
            .arg("-message_file")
            .arg(&messages)
            .current_dir(&dir)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("sipp must be installed (scripts/services installs sip-tester)");
        // Calls go out once sipp listens: its socket shows in /proc/net/udp or tcp (probing
        // the port by binding it could take it from sipp).
        let mut child = child;
        let t = Instant::now();
        let mut exited = None;
        while !bound(port) {
            // A caller whose call is refused at once can be done before its socket is seen.
            if let Some(status) = child.try_wait().ok().flatten() {
                exited = status.code();
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "sipp never bound its port"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let sipp = Sipp {
            port,
            child: if exited.is_some() { None } else { Some(child) },
            messages,
            out,
            err,
            exited,
        };
        match exited {
            Some(254) => Err(sipp.log()),
            _ => Ok(sipp),
        }
    }

    /// Waits for sipp to finish its calls; its exit code (0: every call went as scripted).
    fn wait(&mut self, within: Duration) -> i32 {
        let t = Instant::now();
        let Some(child) = self.child.as_mut() else {
            return self.exited.unwrap_or(-1);
        };
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                self.exited = status.code();
                return self.exited.unwrap_or(-1);
            }
            assert!(
                t.elapsed() < within,
                "sipp did not finish; messages:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every message sipp saw and sent.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.messages).unwrap_or_default()
            + &std::fs::read_to_string(&self.out).unwrap_or_default()
            + &std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// How many INVITEs sipp received (with the one after a 401).
    fn invites(&self) -> usize {
        std::fs::read_to_string(&self.messages)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("INVITE sip:"))
            .count()
    }
}

/// sipp's RTP port: it binds this one and the next three (RTCP, video), all UDP.
fn sipp_media_port() -> u16 {
    free_udp_ports(4)
}

/// Whether a UDP or TCP socket of this machine is bound to `port` (IPv4).
fn bound(port: u16) -> bool {
    let local = format!(":{port:04X}");
    ["/proc/net/udp", "/proc/net/tcp"].iter().any(|t| {
        std::fs::read_to_string(t)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(1))
            .any(|addr| addr.ends_with(&local))
    })
}

impl Drop for Sipp {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A trunk of the customer `tok` to `sipp`.
async fn trunk_to(env: &Env, tok: &str, sipp: &Sipp, extra: Value) -> String {
    let mut body = json!({"name": "sipp", "host": "127.0.0.1", "port": sipp.port,
                          "transport": "udp"});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            body[k] = v;
        }
    }
    id_of(&env.client(tok).create("/v1.0/trunks", body).await)
}

/// A call of the customer `tok` to +15550002000 through `trunk`.
async fn call_through(env: &Env, tok: &str, trunk: &str) -> Uuid {
    env.calls(tok, &["+15550002000"], json!({"trunk_id": trunk}))
        .await[0]
}

/// A call through `trunk`, hung up by us once answered: its view at the end.
async fn answered_then_hung_up(env: &Env, tok: &str, trunk: &str) -> Value {
    let call = call_through(env, tok, trunk).await;
    env.wait_call(
        call,
        Duration::from_secs(15),
        Duration::from_millis(100),
        |s| s == "progressing",
    )
    .await;
    env.client(tok).hangup(call).await;
    env.wait_call_end(call, Duration::from_secs(10)).await
}

/// The event types of a call, in order.
async fn event_types(env: &Env, call: Uuid) -> Vec<String> {
    env.events_of("call", call)
        .await
        .into_iter()
        .map(|(_, t, _)| t)
        .collect()
}

#[tokio::test]
async fn a_call_through_a_trunk_is_answered_by_sipp_and_hung_up_by_us() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let mut sipp = Sipp::uas(None, 1);
    let trunk = trunk_to(&env, &tok, &sipp, json!({})).await;
    let api = env.client(&tok);

    // A trunk of another customer, or none at all, is not found; a sandbox script is for the
    // sandbox only.
    let (_, other, _) = env.customer().await;
    for (who, trunk_id, code) in [
        (&other, trunk.clone(), 404),
        (&tok, Uuid::now_v7().to_string(), 404),
        (&tok, "not-a-uuid".to_string(), 400),
    ] {
        let (s, v) = env
            .client(who)
            .post(
                "/v1.0/calls",
                json!({"source": "+15550001000", "destinations": ["+15550002000"],
                       "trunk_id": trunk_id}),
            )
            .await;
        assert_eq!(s, code, "{v}");
    }
    let (s, v) = api
        .post(
            "/v1.0/calls",
            json!({"source": "+15550001000", "destinations": ["+15550002000"],
                   "trunk_id": trunk, "sandbox": {"script": []}}),
        )
        .await;
    assert_eq!(s, 400, "{v}");

    let call = call_through(&env, &tok, &trunk).await;
    let v = env
        .wait_call(
            call,
            Duration::from_secs(15),
            Duration::from_millis(100),
            |s| s == "progressing",
        )
        .await;
    assert_eq!(v["trunk_id"], json!(trunk));
    // A redelivered call_created sends no second INVITE (sipp, mid-call, would log it).
    env.redeliver_all(&["carrier-dialer"], Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sipp.invites(), 1, "{}", sipp.log());
    let (s, _) = api.hangup(call).await;
    assert_eq!(s, 200);
    let v = env.wait_call_end(call, Duration::from_secs(10)).await;
    assert_eq!(
        (&v["status"], &v["hangup_by"], &v["hangup_cause"]),
        (
            &json!("completed"),
            &json!("local"),
            &json!("normal_clearing")
        ),
        "{v}"
    );
    assert_eq!(sipp.wait(Duration::from_secs(10)), 0, "{}", sipp.log());
    let log = sipp.log();
    assert!(log.contains("BYE sip:"), "{log}");
    assert!(log.contains(&format!("Call-ID: {call}")), "{log}");

    // The same events as a sandbox call that is answered and hung up by us.
    let sandbox = env
        .calls(
            &tok,
            &["+15550003000"],
            json!({"variables": {"talk_seconds": 60}}),
        )
        .await[0];
    env.wait_call(
        sandbox,
        Duration::from_secs(10),
        Duration::from_millis(100),
        |s| s == "progressing",
    )
    .await;
    api.hangup(sandbox).await;
    env.wait_call_end(sandbox, Duration::from_secs(10)).await;
    assert_eq!(
        event_types(&env, call).await,
        event_types(&env, sandbox).await
    );
}

#[tokio::test]
async fn sipps_answers_become_the_calls_outcomes() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;

    // The far end hangs up: completed, by remote.
    let mut bye = Sipp::uas(Some("answer_then_bye.xml"), 1);
    let trunk = trunk_to(&env, &tok, &bye, json!({})).await;
    let call = call_through(&env, &tok, &trunk).await;
    let v = env.wait_call_end(call, Duration::from_secs(15)).await;
    assert_eq!(
        (&v["status"], &v["hangup_by"], &v["hangup_cause"]),
        (
            &json!("completed"),
            &json!("remote"),
            &json!("normal_clearing")
        ),
        "{v}\n{}",
        bye.log()
    );
    assert!(v["duration"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(bye.wait(Duration::from_secs(10)), 0, "{}", bye.log());

    // Busy: 486 -> busy / user_busy, and the 486 is ACKed.
    let mut busy = Sipp::uas(Some("busy.xml"), 1);
    let trunk = trunk_to(&env, &tok, &busy, json!({})).await;
    let call = call_through(&env, &tok, &trunk).await;
    let v = env.wait_call_end(call, Duration::from_secs(15)).await;
    assert_eq!(
        (&v["status"], &v["hangup_cause"]),
        (&json!("busy"), &json!("user_busy")),
        "{v}"
    );
    assert_eq!(busy.wait(Duration::from_secs(10)), 0, "{}", busy.log());
    let sandbox_busy = env.calls(&tok, &["+15550000486"], json!({})).await[0];
    env.wait_call_end(sandbox_busy, Duration::from_secs(10))
        .await;
    assert_eq!(
        event_types(&env, call).await,
        event_types(&env, sandbox_busy).await
    );

    // Rings and never answers: at the dial timeout we CANCEL, ACK the 487: no_answer.
    let mut ring = Sipp::uas(Some("ring_no_answer.xml"), 1);
    let trunk = trunk_to(&env, &tok, &ring, json!({})).await;
    let call = env
        .calls(
            &tok,
            &["+15550002000"],
            json!({"trunk_id": trunk, "dial_timeout_ms": 2000}),
        )
        .await[0];
    env.wait_call(
        call,
        Duration::from_secs(10),
        Duration::from_millis(100),
        |s| s == "ringing",
    )
    .await;
    let v = env.wait_call_end(call, Duration::from_secs(15)).await;
    assert_eq!(
        (&v["status"], &v["hangup_cause"]),
        (&json!("no_answer"), &json!("no_answer")),
        "{v}\n{}",
        ring.log()
    );
    assert_eq!(ring.wait(Duration::from_secs(10)), 0, "{}", ring.log());

    // A trunk that asks for credentials (401) gets them, and answers.
    let mut auth = Sipp::uas(Some("auth_answer_wait_bye.xml"), 1);
    let trunk = trunk_to(
        &env,
        &tok,
        &auth,
        json!({"username": "vbin", "password": "s3cret"}),
    )
    .await;
    let v = answered_then_hung_up(&env, &tok, &trunk).await;
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(auth.wait(Duration::from_secs(10)), 0, "{}", auth.log());
    assert!(
        auth.log().contains("Authorization: Digest"),
        "{}",
        auth.log()
    );
}

#[tokio::test]
async fn a_flows_talk_goes_out_over_rtp_and_comes_back_from_an_echoing_far_end() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    // sipp answers and sends back every RTP packet it gets (G.711 both ways).
    let media_port = sipp_media_port().to_string();
    let mut sipp = Sipp::uas_with(
        None,
        1,
        &["-rtp_echo", "-mi", "127.0.0.1", "-mp", &media_port],
    );
    let trunk = trunk_to(&env, &tok, &sipp, json!({"codecs": ["PCMU"]})).await;
    let call = env
        .calls(
            &tok,
            &["+15550002000"],
            json!({"trunk_id": trunk, "actions": [
                {"type": "recording_start"},
                {"type": "talk", "option": {"text": "Hello Ann. Press one for support or two for sales."}},
                {"type": "sleep", "option": {"duration": 1000}},
                {"type": "hangup"},
            ]}),
        )
        .await[0];
    let af = ended_flow(&env, &tok, call, Duration::from_secs(40)).await;
    assert_eq!(
        executed(&af),
        ["recording_start", "talk", "sleep", "hangup"],
        "{af}"
    );
    assert_eq!(sipp.wait(Duration::from_secs(10)), 0, "{}", sipp.log());
    // The recording's far-end side is what came back over RTP: the menu, through G.711 twice.
    let (_, wav) = stored_recording(&env, &tok, call).await;
    let (far, ours) = stereo(&wav);
    // On a failure: where each side had sound, and the recording kept for a listen.
    let why = || {
        let kept = std::env::temp_dir().join(format!("vbin-echo-{call}.wav"));
        std::fs::write(&kept, &wav).ok();
        format!(
            "far end {}\nours {}\nrecording kept at {}\n{}",
            shape(&far),
            shape(&ours),
            kept.display(),
            sipp.log()
        )
    };
    assert_eq!(recognize(&ours).await, MENU_TEXT, "{}", why());
    assert_eq!(recognize(&far).await, MENU_TEXT, "{}", why());
    let log = sipp.log();
    assert!(
        log.contains("m=audio ") && log.contains("a=rtpmap:0 PCMU/8000"),
        "{log}"
    );
}

#[tokio::test]
async fn a_key_the_far_end_presses_as_rfc_4733_reaches_the_flow() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let media_port = sipp_media_port().to_string();
    let mut sipp = Sipp::uas_with(
        Some("answer_press_7.xml"),
        1,
        &["-mi", "127.0.0.1", "-mp", &media_port],
    );
    let trunk = trunk_to(&env, &tok, &sipp, json!({})).await;
    let call = env
        .calls(
            &tok,
            &["+15550002000"],
            json!({"trunk_id": trunk, "actions": [
                {"type": "digits_receive", "option": {"duration": 8000, "length": 1}},
                {"type": "hangup"},
            ]}),
        )
        .await[0];
    let af = ended_flow(&env, &tok, call, Duration::from_secs(30)).await;
    assert_eq!(
        af["variables"]["voipbin.call.digits"],
        "7",
        "{af}\n{}",
        sipp.log()
    );
    assert_eq!(sipp.wait(Duration::from_secs(10)), 0, "{}", sipp.log());
}

/// The customer's incoming calls (newest first), once there are `n`.
async fn incoming_calls(env: &Env, tok: &str, n: usize) -> Vec<Uuid> {
    let api = env.client(tok);
    wait_until("the incoming calls", Duration::from_secs(15), || async {
        let (_, page) = api.get("/v1.0/calls?page_size=50").await;
        let ids: Vec<Uuid> = page["result"]
            .as_array()?
            .iter()
            .filter(|c| c["direction"] == "incoming")
            .filter_map(|c| c["id"].as_str()?.parse().ok())
            .collect();
        (ids.len() >= n).then_some(ids)
    })
    .await
}

/// A number of the customer `tok` running a new flow of `actions`, reached through `trunk`.
async fn number_with(env: &Env, tok: &str, number: &str, trunk: &str, actions: Value) -> Value {
    let api = env.client(tok);
    let flow = api
        .create(
            "/v1.0/flows",
            json!({"name": "inbound", "actions": actions}),
        )
        .await;
    api.create(
        "/v1.0/numbers",
        json!({"number": number, "call_flow_id": flow["id"], "trunk_id": trunk}),
    )
    .await
}

#[tokio::test]
async fn a_call_from_a_trunk_to_a_number_runs_its_flow_and_takes_rfc_4733_keys() {
    let env = Env::start().await;
    let (cust, tok, _) = env.customer().await;
    let api = env.client(&tok);
    // The carrier's trunk: its calls come from 127.0.0.1 (sipp).
    let trunk = id_of(
        &api.create(
            "/v1.0/trunks",
            json!({"name": "carrier", "host": "127.0.0.1", "transport": "udp"}),
        )
        .await,
    );
    let ivr = json!([
        {"type": "answer"},
        {"type": "talk", "option": {"text": "Thanks for calling. Press one."}},
        {"type": "digits_receive", "option": {"duration": 8000, "length": 1}},
        {"type": "hangup"},
    ]);
    let number = number_with(&env, &tok, "+15557770001", &trunk, ivr.clone()).await;
    assert_eq!(number["trunk_id"], json!(trunk), "{number}");

    // A trunk of another customer cannot route a number.
    let (_, tok2, _) = env.customer().await;
    let other = env.client(&tok2);
    let flow2 = other
        .create(
            "/v1.0/flows",
            json!({"name": "x", "actions": [{"type": "hangup"}]}),
        )
        .await;
    let (s, v) = other
        .post(
            "/v1.0/numbers",
            json!({"number": "+15557770009", "call_flow_id": flow2["id"], "trunk_id": trunk}),
        )
        .await;
    assert_eq!(s, 400, "{v}");

    let mut sipp = Sipp::uac(&env, "call_press_1.xml", "15557770001");
    assert_eq!(sipp.wait(Duration::from_secs(40)), 0, "{}", sipp.log());
    let call = incoming_calls(&env, &tok, 1).await[0];
    let af = ended_flow(&env, &tok, call, Duration::from_secs(20)).await;
    assert_eq!(
        executed(&af),
        ["answer", "talk", "digits_receive", "hangup"],
        "{af}"
    );
    assert_eq!(
        af["variables"]["voipbin.call.digits"],
        "1",
        "{af}\n{}",
        sipp.log()
    );
    let c = env.wait_call_end(call, Duration::from_secs(10)).await;
    assert_eq!(
        (
            &c["status"],
            &c["hangup_by"],
            &c["direction"],
            &c["trunk_id"],
            &c["source"],
            &c["destination"]
        ),
        (
            &json!("completed"),
            &json!("local"),
            &json!("incoming"),
            &json!(trunk),
            &json!("+15550009999"),
            &json!("+15557770001")
        ),
        "{c}"
    );
    // Our answer took the caller's first codec (PCMA) and kept its telephone-event type.
    let log = sipp.log();
    assert!(log.contains("SIP/2.0 180 Ringing"), "{log}");
    assert!(
        log.contains("RTP/AVP 8 101") && log.contains("a=rtpmap:101 telephone-event/8000"),
        "{log}"
    );

    // The same events as the sandbox network's call to the same flow (but for call_ringing:
    // whether the carrier's ringing or the flow's answer comes first is a race on both).
    let sandbox_flow = api
        .create("/v1.0/flows", json!({"name": "same", "actions": ivr}))
        .await;
    api.create(
        "/v1.0/numbers",
        json!({"number": "+15557770002", "call_flow_id": sandbox_flow["id"]}),
    )
    .await;
    let (s, sandbox) = env
        .admin()
        .post(
            "/v1.0/sandbox/incoming_calls",
            json!({"customer_id": cust, "source": "+15550009999",
                   "destination": "+15557770002",
                   "sandbox": {"script": [{"at_ms": 1500, "digits": "1"}]}}),
        )
        .await;
    assert_eq!(s, 200, "{sandbox}");
    let sandbox = id_of(&sandbox).parse().unwrap();
    env.wait_call_end(sandbox, Duration::from_secs(20)).await;
    let without_ringing = |types: Vec<String>| -> Vec<String> {
        types.into_iter().filter(|t| t != "call_ringing").collect()
    };
    assert_eq!(
        without_ringing(event_types(&env, call).await),
        without_ringing(event_types(&env, sandbox).await)
    );
}

/// A caller whose INVITE has no offer gets ours in the 200 and answers in its ACK (RFC 3261
/// 13.2.1); its key then reaches the flow, so the audio was set up from the ACK's answer.
#[tokio::test]
async fn a_call_without_an_offer_is_answered_with_ours_and_takes_the_answer_from_the_ack() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let trunk = id_of(
        &env.client(&tok)
            .create(
                "/v1.0/trunks",
                json!({"name": "carrier", "host": "127.0.0.1", "transport": "udp"}),
            )
            .await,
    );
    number_with(
        &env,
        &tok,
        "+15557770001",
        &trunk,
        json!([
            {"type": "answer"},
            {"type": "digits_receive", "option": {"duration": 8000, "length": 1}},
            {"type": "hangup"},
        ]),
    )
    .await;
    let mut sipp = Sipp::uac(&env, "call_late_offer_press_1.xml", "15557770001");
    assert_eq!(sipp.wait(Duration::from_secs(30)), 0, "{}", sipp.log());
    let call = incoming_calls(&env, &tok, 1).await[0];
    let af = ended_flow(&env, &tok, call, Duration::from_secs(20)).await;
    assert_eq!(
        af["variables"]["voipbin.call.digits"],
        "1",
        "{af}\n{}",
        sipp.log()
    );
}

#[tokio::test]
async fn calls_from_the_network_are_refused_as_operators_expect_and_may_be_cancelled() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let trunk = |host: &str| {
        let api = &api;
        let host = host.to_string();
        async move {
            id_of(
                &api.create(
                    "/v1.0/trunks",
                    json!({"name": "carrier", "host": host, "transport": "udp",
                           "codecs": ["PCMA"]}),
                )
                .await,
            )
        }
    };
    let local = trunk("127.0.0.1").await;
    let elsewhere = trunk("127.0.0.2").await;
    // The flow keeps the call ringing: it waits for a customer endpoint that never answers
    // (media actions need an answered call).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hold", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    let ring = json!([
        {"type": "webhook_send", "option": {"uri": url, "sync": true, "data": {}}},
        {"type": "answer"},
    ]);
    number_with(&env, &tok, "+15557770001", &local, ring.clone()).await;
    number_with(&env, &tok, "+15557770002", &elsewhere, ring.clone()).await;
    // A number without a trunk is the sandbox network's only.
    let flow = api
        .create("/v1.0/flows", json!({"name": "f", "actions": ring}))
        .await;
    api.create(
        "/v1.0/numbers",
        json!({"number": "+15557770003", "call_flow_id": flow["id"]}),
    )
    .await;

    for (number, code) in [
        // Nobody's number, or a number not on a trunk: 404.
        ("+15557779999", 404),
        ("+15557770003", 404),
        // Not from the number's trunk: 403.
        ("+15557770002", 403),
    ] {
        let mut sipp = Sipp::uac(&env, "call_refused.xml", number);
        assert_eq!(sipp.wait(Duration::from_secs(20)), 0, "{}", sipp.log());
        let log = sipp.log();
        assert!(log.contains(&format!("SIP/2.0 {code} ")), "{number}: {log}");
    }
    // An offer without a codec of the trunk (PCMU only, the trunk takes PCMA): 488.
    let mut sipp = Sipp::uac(&env, "call_refused.xml", "+15557770001");
    assert_eq!(sipp.wait(Duration::from_secs(20)), 0, "{}", sipp.log());
    assert!(sipp.log().contains("SIP/2.0 488 "), "{}", sipp.log());
    // None of them became a call.
    let (_, page) = api.get("/v1.0/calls").await;
    assert_eq!(page["result"], json!([]), "{page}");

    // A customer whose balance cannot cover a minute (the API's 402): 403, final, so the
    // carrier does not try the number elsewhere; no call.
    let user = format!("p{}", &Uuid::new_v4().simple().to_string()[..10]);
    env.admin()
        .create(
            "/v1.0/customers",
            json!({"name": "poor", "username": user, "password": "password123",
                   "balance_micros": 9_999}),
        )
        .await;
    let poor_tok = env.login(&user, "password123").await.unwrap();
    let poor = env.client(&poor_tok);
    let poor_trunk = id_of(
        &poor
            .create(
                "/v1.0/trunks",
                json!({"name": "carrier", "host": "127.0.0.1", "transport": "udp"}),
            )
            .await,
    );
    number_with(&env, &poor_tok, "+15557770004", &poor_trunk, ring.clone()).await;
    let mut sipp = Sipp::uac(&env, "call_refused.xml", "+15557770004");
    assert_eq!(sipp.wait(Duration::from_secs(20)), 0, "{}", sipp.log());
    assert!(sipp.log().contains("SIP/2.0 403 "), "{}", sipp.log());
    let (_, page) = poor.get("/v1.0/calls").await;
    assert_eq!(page["result"], json!([]), "{page}");

    // A caller who gives up while it rings: canceled, by the remote side.
    api.put(
        &format!("/v1.0/trunks/{local}"),
        json!({"name": "carrier", "host": "127.0.0.1", "transport": "udp"}),
    )
    .await;
    let mut sipp = Sipp::uac(&env, "call_then_cancel.xml", "+15557770001");
    assert_eq!(sipp.wait(Duration::from_secs(20)), 0, "{}", sipp.log());
    let call = incoming_calls(&env, &tok, 1).await[0];
    let c = env.wait_call_end(call, Duration::from_secs(10)).await;
    assert_eq!(
        (&c["status"], &c["hangup_by"], &c["hangup_cause"]),
        (
            &json!("canceled"),
            &json!("remote"),
            &json!("originator_cancel")
        ),
        "{c}"
    );
}

#[tokio::test]
async fn after_a_kill_9_the_dead_processs_calls_end_and_their_far_ends_get_a_bye() {
    const N: usize = 20;
    let mut env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    // sipp answers N calls and waits for each one's BYE.
    let mut sipp = Sipp::uas(None, N as u32);
    let trunk = trunk_to(&env, &tok, &sipp, json!({})).await;
    let numbers: Vec<String> = (0..N).map(|i| format!("+1555000{:04}", 3000 + i)).collect();
    let numbers: Vec<&str> = numbers.iter().map(String::as_str).collect();
    let calls = env.calls(&tok, &numbers, json!({"trunk_id": trunk})).await;
    for &call in &calls {
        env.wait_call(
            call,
            Duration::from_secs(30),
            Duration::from_millis(100),
            |s| s == "progressing",
        )
        .await;
    }
    // Every dialog is saved with its call before the crash.
    let pool = env.pool.clone();
    wait_until("the dialogs saved", Duration::from_secs(10), || async {
        let saved: i64 =
            sqlx::query_scalar("SELECT count(*) FROM sip_calls WHERE dialog IS NOT NULL")
                .fetch_one(&pool)
                .await
                .unwrap();
        saved == N as i64
    })
    .await;

    // kill -9, and a new process on the same SIP address (sipp answers a dialog's requests
    // at the address it knows): it finds the dead one's calls once their leases run out, and
    // sipp's scenario completes only if each call gets its BYE.
    let sip = format!("127.0.0.1:{}", env.platform.sip_port);
    env.platform.kill();
    env.extra_env.push(("VBIN_SIP_ADDR".into(), sip));
    env.platform = env.spawn_platform().await;
    assert_eq!(sipp.wait(Duration::from_secs(60)), 0, "{}", sipp.log());
    for &call in &calls {
        let c = env.wait_call_end(call, Duration::from_secs(10)).await;
        assert_eq!(
            (&c["status"], &c["hangup_by"], &c["hangup_cause"]),
            (
                &json!("completed"),
                &json!("remote"),
                &json!("network_out_of_order")
            ),
            "{c}"
        );
    }
}

#[tokio::test]
async fn trunks_get_options_keepalives_and_their_reachability_is_an_event() {
    // Keepalives every second (30 s by default).
    let env = Env::start_with_env(&[("VBIN_SIP_OPTIONS_SECS", "1")]).await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let mut sipp = Sipp::uas(Some("options_ok.xml"), 1);
    let trunk = trunk_to(&env, &tok, &sipp, json!({})).await;
    let path = format!("/v1.0/trunks/{trunk}");
    let reachability = |want: &'static str| {
        let api = &api;
        let path = path.clone();
        async move {
            wait_until(want, Duration::from_secs(20), || async {
                let (_, v) = api.get(&path).await;
                (v["reachability"] == want).then_some(v)
            })
            .await
        }
    };
    let v = reachability("reachable").await;
    assert_eq!(v["reachability_code"], 200, "{v}");
    // sipp answered its one OPTIONS and is gone: the next ones go unanswered.
    assert_eq!(sipp.wait(Duration::from_secs(10)), 0, "{}", sipp.log());
    reachability("unreachable").await;
    // Each change is in the trunk's audit trail, once (keepalives that change nothing are not).
    let (_, audit) = api
        .get(&format!(
            "/v1.0/events?resource_type=trunk&resource_id={trunk}"
        ))
        .await;
    let changes: Vec<&Value> = audit["result"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "trunk_reachability_changed")
        .map(|e| &e["data"]["reachable"])
        .collect();
    assert_eq!(changes, [&json!(true), &json!(false)], "{audit}");
}

#[tokio::test]
async fn a_campaign_dials_its_targets_over_a_trunk_and_they_are_billed() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    // sipp answers each call, talks 2 s and hangs up.
    let mut sipp = Sipp::uas(Some("answer_then_bye.xml"), 3);
    let trunk = trunk_to(&env, &tok, &sipp, json!({})).await;
    // Another customer's trunk is refused.
    let (_, tok2, _) = env.customer().await;
    let (s, v) = env
        .client(&tok2)
        .post(
            "/v1.0/outplans",
            json!({"name": "p", "source": "+15550001000", "trunk_id": trunk}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let plan = api
        .create(
            "/v1.0/outplans",
            json!({"name": "sip", "source": "+15550001000", "trunk_id": trunk}),
        )
        .await;
    assert_eq!(plan["trunk_id"], json!(trunk), "{plan}");
    let outdial = id_of(&api.create("/v1.0/outdials", json!({"name": "list"})).await);
    for i in 0..3 {
        api.create(
            &format!("/v1.0/outdials/{outdial}/targets"),
            json!({"destinations": [format!("+155500020{i:02}")]}),
        )
        .await;
    }
    let camp = api
        .create(
            "/v1.0/campaigns",
            json!({"name": "c", "outplan_id": id_of(&plan), "outdial_id": outdial,
                   "end_handle": "stop", "max_concurrent_calls": 3}),
        )
        .await;
    let cid = id_of(&camp);
    api.set_campaign_status(&cid, "running").await;
    let done = api
        .wait_get(
            &format!("/v1.0/campaigns/{cid}"),
            Duration::from_secs(40),
            |_, v| v["status"] == "completed",
        )
        .await;
    assert_eq!(
        (&done["dialed"], &done["answered"]),
        (&json!(3), &json!(3)),
        "{done}"
    );
    assert_eq!(sipp.wait(Duration::from_secs(10)), 0, "{}", sipp.log());
    let calls = api
        .all_pages(&format!("/v1.0/campaigncalls?campaign_id={cid}"), 10)
        .await;
    assert_eq!(calls.len(), 3);
    for cc in &calls {
        let call: Uuid = cc["reference_id"].as_str().unwrap().parse().unwrap();
        let c = env.wait_call_end(call, Duration::from_secs(10)).await;
        assert_eq!(
            (&c["trunk_id"], &c["status"], &c["hangup_by"]),
            (&json!(trunk), &json!("completed"), &json!("remote")),
            "{c}"
        );
        // Billed as any answered call: one minute.
        let rec = api
            .wait_get(
                &format!("/v1.0/billings?reference_id={call}"),
                Duration::from_secs(10),
                |_, v| v["result"].as_array().is_some_and(|r| r.len() == 1),
            )
            .await;
        assert_eq!(rec["result"][0]["billable_units"], 1, "{rec}");
    }
}

#[tokio::test]
async fn a_trunk_over_tcp_carries_the_call() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    // sipp answers over TCP and waits for the BYE.
    let mut sipp = Sipp::uas_with(None, 1, &["-t", "t1"]);
    let trunk = trunk_to(&env, &tok, &sipp, json!({"transport": "tcp"})).await;
    let c = answered_then_hung_up(&env, &tok, &trunk).await;
    assert_eq!(
        (&c["status"], &c["hangup_by"]),
        (&json!("completed"), &json!("local")),
        "{c}"
    );
    assert_eq!(sipp.wait(Duration::from_secs(10)), 0, "{}", sipp.log());
    let log = sipp.log();
    assert!(log.contains("SIP/2.0/TCP"), "{log}");
}

#[tokio::test]
async fn session_timers_are_refreshed_and_enforced_and_hold_is_answered_recvonly() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;

    // The far end wants a 4 s session we refresh: our re-INVITE comes within 4 s (sipp fails
    // the scenario otherwise), then it hangs up.
    let mut refreshed = Sipp::uas(Some("answer_timer_we_refresh.xml"), 1);
    let trunk = trunk_to(&env, &tok, &refreshed, json!({})).await;
    let call = call_through(&env, &tok, &trunk).await;
    let c = env.wait_call_end(call, Duration::from_secs(20)).await;
    assert_eq!(
        (&c["status"], &c["hangup_by"]),
        (&json!("completed"), &json!("remote")),
        "{c}"
    );
    assert_eq!(
        refreshed.wait(Duration::from_secs(10)),
        0,
        "{}",
        refreshed.log()
    );
    let log = refreshed.log();
    assert!(
        log.contains("Supported: timer") && log.contains("Session-Expires: 1800"),
        "{log}"
    );

    // The far end puts the call on hold: our answer says recvonly (sipp checks it) and our
    // RTP stops while it holds.
    let media_port = sipp_media_port().to_string();
    let mut hold = Sipp::uas_with(
        Some("answer_hold_bye.xml"),
        1,
        &["-mi", "127.0.0.1", "-mp", &media_port],
    );
    let trunk = trunk_to(&env, &tok, &hold, json!({})).await;
    let call = call_through(&env, &tok, &trunk).await;
    wait_until("the hold", Duration::from_secs(10), || async {
        hold.log().contains("a=recvonly").then_some(())
    })
    .await;
    let sent =
        || async { metric(&env.metrics().await, "vbin_rtp_sent_packets_total").unwrap_or(0.0) };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = sent().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(before > 0.0, "RTP went out before the hold");
    assert_eq!(sent().await, before, "RTP went out on hold");
    let c = env.wait_call_end(call, Duration::from_secs(20)).await;
    assert_eq!(c["hangup_by"], "remote", "{c}");
    assert_eq!(hold.wait(Duration::from_secs(10)), 0, "{}", hold.log());

    // The far end says it refreshes a 3 s session and never does: we end the call (BYE) as
    // the network's failure.
    let mut silent = Sipp::uas(Some("answer_timer_they_refresh.xml"), 1);
    let trunk = trunk_to(&env, &tok, &silent, json!({})).await;
    let call = call_through(&env, &tok, &trunk).await;
    let c = env.wait_call_end(call, Duration::from_secs(20)).await;
    assert_eq!(
        (&c["status"], &c["hangup_by"], &c["hangup_cause"]),
        (
            &json!("completed"),
            &json!("remote"),
            &json!("network_out_of_order")
        ),
        "{c}"
    );
    assert_eq!(silent.wait(Duration::from_secs(10)), 0, "{}", silent.log());
}

#[tokio::test]
async fn a_hundred_concurrent_calls_over_one_trunk() {
    const N: usize = 100;
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let mut sipp = Sipp::uas(None, N as u32);
    let trunk = trunk_to(&env, &tok, &sipp, json!({})).await;
    let numbers: Vec<String> = (0..N).map(|i| format!("+1555100{i:04}")).collect();
    let numbers: Vec<&str> = numbers.iter().map(String::as_str).collect();
    let calls = env.calls(&tok, &numbers, json!({"trunk_id": trunk})).await;
    assert_eq!(calls.len(), N);
    // All up at once: each answered, each with its own RTP port.
    let pool = env.pool.clone();
    wait_until(
        "a hundred answered SIP calls",
        Duration::from_secs(60),
        || async {
            let up: i64 =
                sqlx::query_scalar("SELECT count(*) FROM sip_calls WHERE state = 'answered'")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            up == N as i64
        },
    )
    .await;
    let api = env.client(&tok);
    for &call in &calls {
        let (s, _) = api.hangup(call).await;
        assert_eq!(s, 200);
    }
    for &call in &calls {
        let c = env.wait_call_end(call, Duration::from_secs(30)).await;
        assert_eq!(
            (&c["status"], &c["hangup_by"]),
            (&json!("completed"), &json!("local")),
            "{c}"
        );
    }
    assert_eq!(sipp.wait(Duration::from_secs(30)), 0, "{}", sipp.log());
    assert_eq!(sipp.invites(), N, "{}", sipp.log());
}

/// Kamailio as a carrier's outbound proxy that asks for digest credentials with 407
/// (tests/it/kamailio/proxy.cfg: user vbin, password s3cret) and relays to `relay_port`.
struct Kamailio {
    port: u16,
    child: Child,
}

impl Kamailio {
    fn start(relay_port: u16) -> Self {
        let port = free_udp_ports(1);
        let cfg = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/it/kamailio/proxy.cfg");
        // Debian puts it in /usr/sbin, which a user's PATH may lack.
        let bin = ["/usr/sbin/kamailio", "kamailio"]
            .into_iter()
            .find(|b| std::path::Path::new(b).exists())
            .unwrap_or("kamailio");
        let child = Command::new(bin)
            .arg("-f")
            .arg(cfg)
            .args(["-DD", "-E", "-l", &format!("udp:127.0.0.1:{port}")])
            .args(["-A", &format!("RELAY=\"sip:127.0.0.1:{relay_port}\"")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("kamailio must be installed (scripts/services installs it)");
        let t = Instant::now();
        while !bound(port) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "kamailio never bound its port"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Kamailio { port, child }
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        // SIGTERM: kamailio stops its children itself (SIGKILL would orphan them).
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_trunk_behind_a_proxy_asking_407_authenticates_through_kamailio() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let mut sipp = Sipp::uas(None, 1);
    let proxy = Kamailio::start(sipp.port);
    let api = env.client(&tok);
    let trunk = |password: &str| {
        let body = json!({"name": "proxied", "host": "127.0.0.1", "port": proxy.port,
                          "transport": "udp", "username": "vbin", "password": password});
        let api = &api;
        async move { id_of(&api.create("/v1.0/trunks", body).await) }
    };

    // The right credentials: the INVITE is challenged, answered with Proxy-Authorization and
    // relayed to sipp, which answers; our BYE follows the proxy's Record-Route.
    let good = trunk("s3cret").await;
    let c = answered_then_hung_up(&env, &tok, &good).await;
    assert_eq!(
        (&c["status"], &c["hangup_by"]),
        (&json!("completed"), &json!("local")),
        "{c}"
    );
    assert_eq!(sipp.wait(Duration::from_secs(10)), 0, "{}", sipp.log());
    let log = sipp.log();
    assert!(
        log.contains("Record-Route:") && log.contains("BYE sip:"),
        "{log}"
    );

    // Wrong ones: the second 407 is final, the call rejected.
    let bad = trunk("wrong").await;
    let call = call_through(&env, &tok, &bad).await;
    let c = env.wait_call_end(call, Duration::from_secs(15)).await;
    assert_eq!(c["hangup_cause"], "call_rejected", "{c}");
}
