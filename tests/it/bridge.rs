//! `connect`, `call` and queues that reach their agents, end to end: a flow dials a leg, the two calls' audio is bridged through
//! the media engine (checked by transcribing what each side heard), the chain's outcome
//! reaches the flow, and hangups travel from one side to the other. Sandbox far ends that
//! speak; real vbin, Postgres, nats-server and redis-server.

use crate::flows::{ended_flow, executed, recognize, stereo, stored_recording, uuid_of, FAR_END};
use crate::support::{id_of, wait_until, Env};
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

/// What the leg's far end says (one of the phrases the recognizer knows).
const LEG_SAYS: &str = "sales will call you back";

fn ids(v: &Value) -> Vec<Uuid> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().unwrap().parse().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until call `a` is bridged (in the event log); returns the leg.
async fn bridged_leg(env: &Env, a: Uuid) -> Uuid {
    wait_until(
        "the call to be bridged",
        Duration::from_secs(20),
        || async {
            let v = env.call_state(a).await;
            match v["bridged_call_id"].as_str() {
                Some(b) => Ok(b.parse::<Uuid>().unwrap()),
                None => Err(v),
            }
        },
    )
    .await
}

#[tokio::test]
async fn connect_bridges_two_calls_both_ways_and_the_flow_goes_on_when_the_leg_hangs_up() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    // A's flow records A, connects to B, and once B hangs up says "support" and hangs up.
    let a = env
        .calls(
            &tok,
            &["+15550003000"],
            json!({
                "actions": [
                    {"type": "recording_start", "option": {"beep_start": false}},
                    {"type": "connect", "option": {
                        "destinations": [{"type": "tel", "target": "+15550004000"}],
                        "sandbox": {"script": [{"at_ms": 2500, "say": LEG_SAYS},
                                               {"at_ms": 11000, "hangup": true}]}}},
                    {"type": "talk", "option": {"text": "Support"}},
                    {"type": "hangup"}
                ],
                "sandbox": {"script": [{"at_ms": 7000, "say": FAR_END},
                                       {"at_ms": 40000, "hangup": true}]}
            }),
        )
        .await[0];
    let b = bridged_leg(&env, a).await;
    // Record the leg through the API, from its side.
    let (s, v) = api
        .post(&format!("/v1.0/calls/{b}/recording_start"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    let leg = env.call_state(b).await;
    assert_eq!(leg["master_call_id"], json!(a), "{leg}");
    assert_eq!(
        leg["source"], "+15550001000",
        "the leg shows A's caller id: {leg}"
    );

    let af = ended_flow(&env, &tok, a, Duration::from_secs(60)).await;
    assert_eq!(
        executed(&af),
        ["recording_start", "connect", "talk", "hangup"],
        "{af}"
    );
    assert_eq!(
        af["variables"]["voipbin.connect.result"], "answered",
        "{af}"
    );
    assert_eq!(af["variables"]["voipbin.connect.call_id"], json!(b), "{af}");
    let master = env.wait_call_end(a, Duration::from_secs(10)).await;
    assert_eq!(ids(&master["chained_call_ids"]), [b], "{master}");
    assert_eq!(master["bridged_call_id"], Value::Null, "{master}");
    let leg = env.wait_call_end(b, Duration::from_secs(10)).await;
    assert_eq!(
        (leg["status"].as_str(), leg["hangup_by"].as_str()),
        (Some("completed"), Some("remote")),
        "{leg}"
    );

    // A heard B (and then its own flow's talk); B heard A; nobody heard themselves.
    let (_, wav) = stored_recording(&env, &tok, a).await;
    let (a_said, a_heard) = stereo(&wav);
    assert_eq!(recognize(&a_said).await, FAR_END, "A's far end");
    assert_eq!(
        recognize(&a_heard).await,
        format!("{LEG_SAYS} support"),
        "what A heard"
    );
    let (_, wav) = stored_recording(&env, &tok, b).await;
    let (b_said, b_heard) = stereo(&wav);
    assert_eq!(recognize(&b_said).await, LEG_SAYS, "B's far end");
    assert_eq!(recognize(&b_heard).await, FAR_END, "what B heard");

    // Each leg is a call of its own, billed as one.
    for call in [a, b] {
        wait_until("the call to be billed", Duration::from_secs(15), || async {
            let (_, v) = api
                .get(&format!("/v1.0/billings?reference_id={call}"))
                .await;
            if v["result"].as_array().is_some_and(|r| r.len() == 1) {
                Ok(())
            } else {
                Err(v)
            }
        })
        .await;
    }
}

#[tokio::test]
async fn connect_outcomes_reach_the_flow_and_losing_legs_are_canceled() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let connect = |dests: &[&str]| {
        json!({"actions": [
            {"type": "connect", "option": {"destinations": dests, "dial_timeout": 2000}},
            {"type": "hangup"}
        ], "sandbox": {"script": [{"at_ms": 30000, "hangup": true}]}})
    };
    let cases = [
        (vec!["+15550000486"], "busy"),
        (vec!["+15550000404", "+15550010486"], "busy"),
        (vec!["+15550000487", "+15550010404"], "no_answer"),
        (vec!["+15550000404"], "failed"),
    ];
    let mut calls = vec![];
    for (dests, want) in &cases {
        let a = env.calls(&tok, &["+15550003000"], connect(dests)).await[0];
        calls.push((a, *want));
    }
    for (a, want) in calls {
        let af = ended_flow(&env, &tok, a, Duration::from_secs(30)).await;
        assert_eq!(af["variables"]["voipbin.connect.result"], want, "{af}");
        assert_eq!(executed(&af), ["connect", "hangup"], "{af}");
    }

    // Two legs that both answer: one is bridged, the other is hung up by us.
    let a = env
        .calls(
            &tok,
            &["+15550003000"],
            json!({"actions": [{"type": "connect", "option": {
                "destinations": ["+15550005000", "+15550006000"],
                "sandbox": {"script": [{"at_ms": 3000, "hangup": true}]}}}],
                "sandbox": {"script": [{"at_ms": 30000, "hangup": true}]}}),
        )
        .await[0];
    let winner = bridged_leg(&env, a).await;
    let master = env.call_state(a).await;
    let legs = ids(&master["chained_call_ids"]);
    assert_eq!(legs.len(), 2, "{master}");
    let loser = *legs.iter().find(|l| **l != winner).unwrap();
    let lost = env.wait_call_end(loser, Duration::from_secs(10)).await;
    assert_eq!(lost["hangup_by"], "local", "{lost}");
    // The winner hangs up at 3 s and the flow has nothing after its connect: A is hung up.
    let a_end = env.wait_call_end(a, Duration::from_secs(20)).await;
    assert_eq!(
        (a_end["status"].as_str(), a_end["hangup_by"].as_str()),
        (Some("completed"), Some("local")),
        "{a_end}"
    );
    let af = ended_flow(&env, &tok, a, Duration::from_secs(10)).await;
    assert_eq!(
        af["variables"]["voipbin.connect.result"], "answered",
        "{af}"
    );
}

#[tokio::test]
async fn a_master_hanging_up_clears_its_leg_and_the_call_action_places_an_independent_call() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let a = env
        .calls(
            &tok,
            &["+15550003000"],
            json!({"actions": [
                    {"type": "call", "option": {
                        "destinations": ["+15550007000"],
                        "actions": [{"type": "talk", "option": {"text": "Support"}},
                                    {"type": "hangup"}]}},
                    {"type": "connect", "option": {
                        "destinations": ["+15550004000"],
                        "sandbox": {"script": [{"at_ms": 60000, "hangup": true}]}}}],
                   "sandbox": {"script": [{"at_ms": 4000, "hangup": true}]}}),
        )
        .await[0];
    let b = bridged_leg(&env, a).await;
    let a_end = env.wait_call_end(a, Duration::from_secs(20)).await;
    assert_eq!(a_end["hangup_by"], "remote", "{a_end}");
    let b_end = env.wait_call_end(b, Duration::from_secs(10)).await;
    assert_eq!(
        (b_end["status"].as_str(), b_end["hangup_by"].as_str()),
        (Some("completed"), Some("local")),
        "B is cleared when A hangs up: {b_end}"
    );
    let af = ended_flow(&env, &tok, a, Duration::from_secs(10)).await;
    assert_eq!(af["end_reason"], "call_ended", "{af}");
    // The call action's call ran its own flow, with no master.
    let placed = ids(&af["variables"]["voipbin.call.call_ids"]);
    assert_eq!(placed.len(), 1, "{af}");
    let c = env.wait_call_end(placed[0], Duration::from_secs(20)).await;
    assert_eq!(c["master_call_id"], Value::Null, "{c}");
    assert_eq!(c["destination"], "+15550007000", "{c}");
    let cf = ended_flow(&env, &tok, placed[0], Duration::from_secs(10)).await;
    assert_eq!(executed(&cf), ["talk", "hangup"], "{cf}");
    assert_ne!(uuid_of(&cf), uuid_of(&af));
}

/// A new available agent dialed at `addresses`; returns its id.
async fn agent_at(api: &crate::support::Client<'_>, addresses: &[&str]) -> String {
    let name = format!("ag{}", &Uuid::new_v4().simple().to_string()[..10]);
    let (s, a) = api
        .create_agent(&name, "password123", json!({"addresses": addresses}))
        .await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["addresses"][0]["target"], addresses[0], "{a}");
    let (s, v) = api.set_agent_status(id_of(&a), "available").await;
    assert_eq!(s, 200, "{v}");
    id_of(&a)
}

#[tokio::test]
async fn a_queue_dials_its_agents_until_one_answers_and_bridges_the_caller_to_it() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    // The first agent's phone is busy; the second answers.
    let busy = agent_at(&api, &["+15550010486"]).await;
    let answers = agent_at(&api, &["+15550020000"]).await;
    let q = api
        .create(
            "/v1.0/queues",
            json!({"name": "support", "routing_method": "linear", "agent_ids": [busy, answers],
                   "wait_timeout_ms": 60000}),
        )
        .await;
    let qid = id_of(&q);
    let caller = env
        .calls(
            &tok,
            &["+15550003000"],
            json!({
                "actions": [
                    {"type": "recording_start", "option": {"beep_start": false}},
                    {"type": "queue_join", "option": {"queue_id": qid,
                        "sandbox": {"script": [{"at_ms": 2500, "say": LEG_SAYS},
                                               {"at_ms": 11000, "hangup": true}]}}},
                    {"type": "talk", "option": {"text": "Support"}},
                    {"type": "hangup"}
                ],
                "sandbox": {"script": [{"at_ms": 7000, "say": FAR_END},
                                       {"at_ms": 40000, "hangup": true}]}
            }),
        )
        .await[0];
    let leg = bridged_leg(&env, caller).await;
    let (s, v) = api
        .post(&format!("/v1.0/calls/{leg}/recording_start"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(env.call_state(leg).await["destination"], "+15550020000");

    let af = ended_flow(&env, &tok, caller, Duration::from_secs(60)).await;
    assert_eq!(
        executed(&af),
        ["recording_start", "queue_join", "talk", "hangup"],
        "{af}"
    );
    assert_eq!(af["variables"]["voipbin.queue.result"], "answered", "{af}");
    // The busy agent's leg, then the one that answered.
    let master = env.wait_call_end(caller, Duration::from_secs(10)).await;
    let legs = ids(&master["chained_call_ids"]);
    assert_eq!(legs.len(), 2, "{master}");
    assert_eq!(env.call_state(legs[0]).await["status"], "busy");
    assert_eq!(legs[1], leg);

    // Statistics: one call served (by the agent that answered), one agent that did not.
    let q = api
        .wait_get(
            &format!("/v1.0/queues/{qid}"),
            Duration::from_secs(10),
            |_, v| v["serving"] == 0 && v["agent_no_answer"] == 1,
        )
        .await;
    assert_eq!(
        (
            q["served"].as_u64(),
            q["abandoned"].as_u64(),
            q["waiting"].as_u64()
        ),
        (Some(1), Some(0), Some(0)),
        "{q}"
    );
    let calls = api
        .wait_get(
            &format!("/v1.0/queuecalls?queue_id={qid}"),
            Duration::from_secs(10),
            |_, v| v["result"][0]["status"] == "done",
        )
        .await;
    let qc = &calls["result"][0];
    assert_eq!(qc["agent_id"], answers.as_str(), "{qc}");
    assert_eq!(qc["tried_agent_ids"], json!([busy]), "{qc}");
    // Both agents are free again.
    for a in [&busy, &answers] {
        api.wait_get(
            &format!("/v1.0/agents/{a}"),
            Duration::from_secs(10),
            |_, v| v["status"] == "available",
        )
        .await;
    }

    // The caller heard the agent, then its flow; the agent heard the caller.
    let (_, wav) = stored_recording(&env, &tok, caller).await;
    let (said, heard) = stereo(&wav);
    assert_eq!(recognize(&said).await, FAR_END, "the caller");
    assert_eq!(
        recognize(&heard).await,
        format!("{LEG_SAYS} support"),
        "what the caller heard"
    );
    let (_, wav) = stored_recording(&env, &tok, leg).await;
    let (said, heard) = stereo(&wav);
    assert_eq!(recognize(&said).await, LEG_SAYS, "the agent");
    assert_eq!(recognize(&heard).await, FAR_END, "what the agent heard");
}

#[tokio::test]
async fn a_caller_hanging_up_while_the_agent_rings_cancels_the_agents_phone() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    // This agent's phone rings and is never answered.
    let agent = agent_at(&api, &["+15550010487"]).await;
    let q = api
        .create(
            "/v1.0/queues",
            json!({"name": "q", "agent_ids": [agent], "wait_timeout_ms": 60000}),
        )
        .await;
    let qid = id_of(&q);
    let caller = env
        .calls(
            &tok,
            &["+15550003000"],
            json!({"actions": [{"type": "queue_join", "option": {"queue_id": qid}}],
                   "sandbox": {"script": [{"at_ms": 3000, "hangup": true}]}}),
        )
        .await[0];
    let leg = wait_until(
        "the agent to be dialed",
        Duration::from_secs(15),
        || async {
            let v = env.call_state(caller).await;
            match ids(&v["chained_call_ids"]).first() {
                Some(l) => Ok(*l),
                None => Err(v),
            }
        },
    )
    .await;
    let c = env.wait_call_end(caller, Duration::from_secs(10)).await;
    assert_eq!(c["hangup_by"], "remote", "{c}");
    let l = env.wait_call_end(leg, Duration::from_secs(10)).await;
    assert_eq!(
        (l["status"].as_str(), l["hangup_cause"].as_str()),
        (Some("canceled"), Some("originator_cancel")),
        "{l}"
    );
    api.wait_get(
        &format!("/v1.0/agents/{agent}"),
        Duration::from_secs(10),
        |_, v| v["status"] == "available",
    )
    .await;
    let q = api
        .wait_get(
            &format!("/v1.0/queues/{qid}"),
            Duration::from_secs(10),
            |_, v| v["serving"] == 0,
        )
        .await;
    assert_eq!(q["served"], 1, "the call had an agent when it hung up: {q}");
}

#[tokio::test]
async fn a_bridge_between_two_media_processes_carries_both_ways() {
    let mut env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    env.platform_without_media().await;
    let p1 = env.spawn_platform_only(&["media"]).await;
    let api = env.client(&tok);
    // A runs on P1; it connects after 7 s, once P2 runs and P1 drains, so B runs on P2. B's far
    // end speaks 5 s after its answer: B's session on P2 is claimed from the log and, under
    // CI's load, came up after a 2.5 s line (A heard only its flow's "support").
    let a = env
        .calls(
            &tok,
            &["+15550003000"],
            json!({
                "actions": [
                    {"type": "recording_start", "option": {"beep_start": false}},
                    {"type": "sleep", "option": {"duration": 7000}},
                    {"type": "connect", "option": {
                        "destinations": ["+15550004000"],
                        "sandbox": {"script": [{"at_ms": 5000, "say": LEG_SAYS},
                                               {"at_ms": 12000, "hangup": true}]}}},
                    {"type": "talk", "option": {"text": "Support"}},
                    {"type": "hangup"}
                ],
                "sandbox": {"script": [{"at_ms": 14000, "say": FAR_END},
                                       {"at_ms": 60000, "hangup": true}]}
            }),
        )
        .await[0];
    wait_until("A's session on P1", Duration::from_secs(15), || async {
        env.media_owner(a).await.ok_or("none")
    })
    .await;
    let p2 = env.spawn_platform_only(&["media"]).await;
    p1.signal("USR1");
    let b = bridged_leg(&env, a).await;
    let (s, v) = api
        .post(&format!("/v1.0/calls/{b}/recording_start"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    // B's session is claimed by the media part from the log, so it can lag the bridge that
    // the calls projection shows: wait for it rather than read it once.
    let owners = wait_until("both sessions owned", Duration::from_secs(10), || async {
        match (env.media_owner(a).await, env.media_owner(b).await) {
            (Some(x), Some(y)) => Ok((x, y)),
            o => Err(format!("{o:?}")),
        }
    })
    .await;
    assert_ne!(owners.0, owners.1, "A and B on different media processes");
    let af = ended_flow(&env, &tok, a, Duration::from_secs(60)).await;
    assert_eq!(
        af["variables"]["voipbin.connect.result"], "answered",
        "{af}"
    );
    let (_, wav) = stored_recording(&env, &tok, a).await;
    let (a_said, a_heard) = stereo(&wav);
    assert_eq!(recognize(&a_said).await, FAR_END, "A's far end");
    assert_eq!(
        recognize(&a_heard).await,
        format!("{LEG_SAYS} support"),
        "A (on P1) heard B (on P2), then its flow"
    );
    let (_, wav) = stored_recording(&env, &tok, b).await;
    let (b_said, b_heard) = stereo(&wav);
    assert_eq!(recognize(&b_said).await, LEG_SAYS, "B's far end");
    assert_eq!(
        recognize(&b_heard).await,
        FAR_END,
        "B (on P2) heard A (on P1)"
    );
    for p in [&p1, &p2] {
        let log = std::fs::read_to_string(p.log_path()).unwrap();
        assert!(
            log.contains("bridged to a session of another media process"),
            "each side went through the mesh"
        );
    }
}

#[tokio::test]
async fn a_waiting_caller_hears_the_queues_wait_flow_until_an_agent_takes_it() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let agent = agent_at(&api, &["+15550020000"]).await;
    let (s, _) = api.set_agent_status(&agent, "offline").await;
    assert_eq!(s, 200);
    let music = api
        .create(
            "/v1.0/flows",
            json!({"name": "music", "actions": [
                {"type": "talk", "option": {"text": LEG_SAYS}},
                {"type": "sleep", "option": {"duration": 800}}]}),
        )
        .await;
    let bad = api
        .create(
            "/v1.0/flows",
            json!({"name": "bad", "actions": [{"type": "hangup"}]}),
        )
        .await;
    let queue = |wait_flow: &Value| {
        json!({"name": "q", "agent_ids": [agent], "wait_timeout_ms": 60000,
               "wait_flow_id": wait_flow["id"]})
    };
    let (s, v) = api.post("/v1.0/queues", queue(&bad)).await;
    assert_eq!(s, 400, "a wait flow only plays: {v}");
    let qid = id_of(&api.create("/v1.0/queues", queue(&music)).await);
    let caller = env
        .calls(
            &tok,
            &["+15550003000"],
            json!({
                "actions": [
                    {"type": "recording_start", "option": {"beep_start": false}},
                    {"type": "queue_join", "option": {"queue_id": qid,
                        "sandbox": {"script": [{"at_ms": 1500, "say": "support"},
                                               {"at_ms": 4000, "hangup": true}]}}},
                    {"type": "hangup"}
                ],
                "sandbox": {"script": [{"at_ms": 60000, "hangup": true}]}
            }),
        )
        .await[0];
    // The caller waits (and hears the music) until the agent becomes available.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (s, _) = api.set_agent_status(&agent, "available").await;
    assert_eq!(s, 200);
    let af = ended_flow(&env, &tok, caller, Duration::from_secs(40)).await;
    assert_eq!(af["variables"]["voipbin.queue.result"], "answered", "{af}");
    let (_, wav) = stored_recording(&env, &tok, caller).await;
    let (_, heard) = stereo(&wav);
    let heard = recognize(&heard).await;
    assert!(
        heard.matches(LEG_SAYS).count() >= 2 && heard.ends_with("support"),
        "the music over and over, then the agent alone: {heard:?}"
    );
}
