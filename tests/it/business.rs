//! End-to-end tests of issue 4: billing, outbound campaigns (and queues). Real vbin processes
//! with the sandbox carrier, Postgres, nats-server and redis-server.

use crate::support::{id_of, Client, Env};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

#[tokio::test]
async fn billing_charges_answered_calls_once_and_refuses_calls_without_funds() {
    let mut env = Env::start().await;
    let (cust, tok, _) = env.customer().await;
    // Start from an exact balance: the harness's customer has 100,000,000 micros.
    let (_, tok2, _) = env.customer().await;
    let api = env.client(&tok);
    let acct = api
        .wait_get("/v1.0/billing_account", Duration::from_secs(10), |s, _| {
            s == 200
        })
        .await;
    assert_eq!(acct["balance_micros"], 100_000_000);
    assert_eq!(acct["rate_micros_per_minute"], 10_000);
    assert_eq!(acct["customer_id"], cust.to_string());

    // Admin-only money operations, validated.
    let path = format!("/v1.0/customers/{cust}/balance_add");
    assert_eq!(api.post(&path, json!({"amount_micros": 5})).await.0, 403);
    let admin = env.admin();
    assert_eq!(admin.post(&path, json!({"amount_micros": -5})).await.0, 400);
    assert_eq!(
        admin.post(&path, json!({"amount_micros": "x"})).await.0,
        400
    );
    let nobody = format!("/v1.0/customers/{}/balance_add", Uuid::now_v7());
    assert_eq!(
        admin.post(&nobody, json!({"amount_micros": 5})).await.0,
        404
    );
    // 61 s at 7,000/min: 2 started minutes.
    let (s, v) = admin
        .put(
            &format!("/v1.0/customers/{cust}/billing_account"),
            json!({"rate_micros_per_minute": 7_000}),
        )
        .await;
    assert_eq!(
        (s, &v["rate_micros_per_minute"]),
        (200, &json!(7_000)),
        "{v}"
    );

    // An answered call of 1 s costs one minute; a busy one nothing.
    let answered = env
        .calls(
            &tok,
            &["+15550002000"],
            json!({"variables": {"talk_seconds": 1}}),
        )
        .await[0];
    let busy = env.calls(&tok, &["+15550000486"], json!({})).await[0];
    for c in [answered, busy] {
        env.wait_call_end(c, Duration::from_secs(15)).await;
    }
    let rec = api
        .wait_get(
            &format!("/v1.0/billings?reference_id={answered}"),
            Duration::from_secs(10),
            |_, v| v["result"].as_array().is_some_and(|r| r.len() == 1),
        )
        .await;
    let rec = &rec["result"][0];
    assert_eq!(rec["reference_type"], "call");
    assert_eq!(rec["billable_units"], 1);
    assert_eq!(rec["rate_micros_per_unit"], 7_000);
    assert_eq!(rec["amount_micros"], 7_000);
    assert_eq!(rec["balance_after_micros"], 100_000_000 - 7_000);
    let (_, none) = api
        .get(&format!("/v1.0/billings?reference_id={busy}"))
        .await;
    assert_eq!(none["result"], json!([]));
    // Another tenant sees nothing of it.
    let (_, other) = env
        .client(&tok2)
        .get(&format!("/v1.0/billings?reference_id={answered}"))
        .await;
    assert_eq!(other["result"], json!([]));
    assert_eq!(api.get("/v1.0/billings?reference_id=nope").await.0, 400);

    // Redelivery of every call event to the charger (with the other process managers), and a
    // kill -9 restart: no second charge.
    let managers = vbin_processes::calls::CONSUMER;
    env.redeliver_all(&[managers], Duration::from_secs(60))
        .await;
    env.restart().await;
    env.redeliver_all(&[managers], Duration::from_secs(60))
        .await;
    let charges: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'billing_recorded'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(charges, 1);
    let acct = env
        .client(&tok)
        .wait_get("/v1.0/billing_account", Duration::from_secs(10), |_, v| {
            v["balance_micros"] == 100_000_000 - 7_000
        })
        .await;
    assert_eq!(acct["rate_micros_per_minute"], 7_000);

    // A customer whose balance cannot cover a minute gets 402; a top-up lets it call again.
    let admin = env.admin();
    let (poor, ptok) = {
        let u = format!("p{}", &Uuid::new_v4().simple().to_string()[..10]);
        let c = admin
            .create(
                "/v1.0/customers",
                json!({
            "name": "poor", "username": u, "password": "password123", "balance_micros": 9_999}),
            )
            .await;
        (id_of(&c), env.login(&u, "password123").await.unwrap())
    };
    let body = json!({"source": "+15550001000", "destinations": ["+15550002000"]});
    let poor_api = env.client(&ptok);
    let (s, v) = poor_api.post("/v1.0/calls", body.clone()).await;
    assert_eq!(s, 402, "{v}");
    assert_eq!(v["error"]["reason"], "payment_required");
    let acct = admin
        .create(
            &format!("/v1.0/customers/{poor}/balance_add"),
            json!({"amount_micros": 1}),
        )
        .await;
    assert_eq!(acct["balance_micros"], 10_000);
    assert_eq!(poor_api.post("/v1.0/calls", body).await.0, 200);
}

/// A passed funds check is reused (here for ten minutes, to make reuse certain) only while
/// the customer's billing account is unchanged: a rate raised past the balance refuses the very
/// next call, and lowering it lets calls through again.
#[tokio::test]
async fn a_kept_funds_check_ends_with_any_change_of_the_billing_account() {
    let env = Env::start_with_env(&[("VBIN_FUNDS_CHECK_FRESH_MS", "600000")]).await;
    let (id, tok, _) = env
        .customer_with(json!({"balance_micros": 1_000_000}))
        .await;
    let api = env.client(&tok);
    let admin = env.admin();
    let body = json!({"source": "+15550001000", "destinations": ["+15550002000"]});
    let rate = |micros: i64| {
        let admin = &admin;
        async move {
            let (s, v) = admin
                .put(
                    &format!("/v1.0/customers/{id}/billing_account"),
                    json!({"rate_micros_per_minute": micros}),
                )
                .await;
            assert_eq!(s, 200, "{v}");
        }
    };
    rate(1_000).await;
    assert_eq!(api.post("/v1.0/calls", body.clone()).await.0, 200);
    // Kept: the same check would pass for ten minutes, but the account changed.
    rate(2_000_000).await;
    let (s, v) = api.post("/v1.0/calls", body.clone()).await;
    assert_eq!(s, 402, "a kept check outlived the rate change: {v}");
    // A refusal is not kept.
    rate(1_000).await;
    assert_eq!(api.post("/v1.0/calls", body).await.0, 200);
}

/// One target of the campaign test and what it must end with.
struct Expect {
    destinations: Vec<&'static str>,
    result: &'static str,
    dial_count: u64,
}

#[tokio::test]
async fn campaign_dials_twenty_targets_with_retries_across_a_restart() {
    let mut env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let plan = api
        .create(
            "/v1.0/outplans",
            json!({
        "name": "plan", "source": "+15550001000", "dial_timeout_ms": 1500,
        "try_interval_ms": 300, "max_try_count": 2}),
        )
        .await;
    let outdial = api.create("/v1.0/outdials", json!({"name": "list"})).await;
    let od = id_of(&outdial);

    // 20 targets: answered, busy, no answer, unallocated, and busy-then-answered on the
    // second destination. Each destination gets max_try_count = 2 tries.
    let mut expect: Vec<Expect> = Vec::new();
    for i in 0..20 {
        let (destinations, result, dial_count) = match i % 5 {
            0 | 1 => (vec!["+15550002000"], "answered", 1),
            2 => (vec!["+15550000486"], "busy", 2),
            3 if i < 10 => (vec!["+15550000487"], "no_answer", 2),
            3 => (vec!["+15550000404"], "failed", 2),
            _ => (vec!["+15550010486", "+15550003000"], "answered", 3),
        };
        expect.push(Expect {
            destinations,
            result,
            dial_count,
        });
    }
    let mut targets: HashMap<String, usize> = HashMap::new();
    for (i, e) in expect.iter().enumerate() {
        let t = api
            .create(
                &format!("/v1.0/outdials/{od}/targets"),
                json!({
            "destinations": e.destinations, "variables": {"talk_seconds": 0}}),
            )
            .await;
        assert_eq!(t["status"], "pending");
        targets.insert(id_of(&t), i);
    }
    // Bad input is a 4xx, never a 500.
    let bad = [
        (
            format!("/v1.0/outdials/{od}/targets"),
            json!({"destinations": []}),
        ),
        (
            format!("/v1.0/outdials/{od}/targets"),
            json!({"destinations": ["+1", "x"]}),
        ),
        (
            format!("/v1.0/outdials/{od}/targets"),
            json!({"destinations": vec!["+15550000001"; 6]}),
        ),
        (
            "/v1.0/outplans".to_string(),
            json!({"source": "+15550001000", "max_try_count": 0}),
        ),
        (
            "/v1.0/campaigns".to_string(),
            json!({"outplan_id": Uuid::now_v7(), "outdial_id": od}),
        ),
        (
            "/v1.0/campaigns".to_string(),
            json!({"outplan_id": id_of(&plan), "outdial_id": od, "end_handle": "later"}),
        ),
    ];
    for (path, body) in bad {
        let (s, v) = api.post(&path, body).await;
        assert!((400..500).contains(&s), "{path}: {s} {v}");
    }
    let (s, _) = api
        .post(
            &format!("/v1.0/outdials/{}/targets", Uuid::now_v7()),
            json!({"destinations": ["+15550002000"]}),
        )
        .await;
    assert_eq!(s, 404);

    // The follow-up campaign (one target) starts when the first completes.
    let outdial2 = api.create("/v1.0/outdials", json!({"name": "next"})).await;
    api.create(
        &format!("/v1.0/outdials/{}/targets", id_of(&outdial2)),
        json!({"destinations": ["+15550004000"], "variables": {"talk_seconds": 0}}),
    )
    .await;
    let next = api
        .create(
            "/v1.0/campaigns",
            json!({
        "name": "next", "outplan_id": id_of(&plan), "outdial_id": id_of(&outdial2),
        "end_handle": "stop"}),
        )
        .await;
    let camp = api
        .create(
            "/v1.0/campaigns",
            json!({
        "name": "c1", "outplan_id": id_of(&plan), "outdial_id": od, "end_handle": "stop",
        "max_concurrent_calls": 4, "next_campaign_id": id_of(&next)}),
        )
        .await;
    assert_eq!(camp["status"], "pending");
    let cid = id_of(&camp);
    let (s, v) = api.set_campaign_status(&cid, "running").await;
    assert_eq!((s, v["status"].as_str()), (200, Some("running")), "{v}");
    let (s, _) = api.set_campaign_status(&cid, "completed").await;
    assert_eq!(s, 400);

    // Kill -9 the platform in the middle of the campaign.
    api.wait_get(
        &format!("/v1.0/campaigns/{cid}"),
        Duration::from_secs(20),
        |_, v| v["dialed"].as_u64().unwrap_or(0) >= 8,
    )
    .await;
    env.restart().await;

    let api = env.client(&tok);
    let done = api
        .wait_get(
            &format!("/v1.0/campaigns/{cid}"),
            Duration::from_secs(90),
            |_, v| v["status"] == "completed",
        )
        .await;
    let dialed: u64 = expect.iter().map(|e| e.dial_count).sum();
    let answered = expect.iter().filter(|e| e.result == "answered").count() as u64;
    assert_eq!(done["total_targets"], 20, "{done}");
    assert_eq!(done["dialed"], dialed, "{done}");
    assert_eq!(done["answered"], answered, "{done}");
    assert_eq!(done["failed"], 20 - answered, "{done}");
    assert_eq!(done["in_flight"], 0, "{done}");

    // Every target: completed, with its result, dial count and tries per destination.
    let listed = api
        .all_pages(&format!("/v1.0/outdials/{od}/targets"), 7)
        .await;
    assert_eq!(listed.len(), 20);
    for t in &listed {
        let e = &expect[targets[&id_of(t)]];
        assert_eq!(t["status"], "completed", "{t}");
        assert_eq!(t["result"], e.result, "{t}");
        assert_eq!(t["dial_count"], e.dial_count, "{t}");
        if e.destinations.len() == 2 {
            assert_eq!(t["try_counts"], json!([2, 1]), "{t}");
        }
    }
    // One campaign call per dial, each ended; one call each in the log, never a duplicate.
    let calls = api
        .all_pages(&format!("/v1.0/campaigncalls?campaign_id={cid}"), 10)
        .await;
    assert_eq!(calls.len() as u64, dialed);
    assert!(calls.iter().all(|c| c["status"] == "done"), "{calls:?}");
    let logged: Vec<(Uuid,)> = sqlx::query_as(
        "SELECT aggregate_id FROM events WHERE event_type = 'call_created' AND payload->>'campaign_id' = $1")
        .bind(&cid).fetch_all(&env.pool).await.unwrap();
    assert_eq!(logged.len() as u64, dialed);
    // Pacing: never more than 4 calls in flight.
    let most: i64 = sqlx::query_scalar(
        "SELECT max((payload->'counters'->>'in_flight')::bigint) FROM events \
         WHERE aggregate_id = $1::uuid AND event_type = 'campaigncall_created'",
    )
    .bind(&cid)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!((2..=4).contains(&most), "in flight at most {most}");
    // The answered calls (talk 0 s) cost one minute each, once.
    let charged: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'billing_recorded'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(charged as u64, answered);

    // The next campaign ran by itself.
    let n = api
        .wait_get(
            &format!("/v1.0/campaigns/{}", id_of(&next)),
            Duration::from_secs(30),
            |_, v| v["status"] == "completed",
        )
        .await;
    assert_eq!(
        (n["dialed"].as_u64(), n["answered"].as_u64()),
        (Some(1), Some(1))
    );
    // A completed campaign cannot run again.
    let (s, _) = api.set_campaign_status(&cid, "running").await;
    assert_eq!(s, 409);
}

/// The queue call of `call` once `done` holds for it.
async fn queuecall(
    api: &Client<'_>,
    queue: &str,
    call: Uuid,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let path = format!("/v1.0/queuecalls?queue_id={queue}&page_size=100");
    let v = api
        .wait_get(&path, Duration::from_secs(15), |_, v| {
            v["result"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|q| q["call_id"] == call.to_string() && done(q))
            })
        })
        .await;
    v["result"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["call_id"] == call.to_string())
        .unwrap()
        .clone()
}

/// A new agent of `api`'s customer with `status`; returns its id.
async fn agent(api: &Client<'_>, status: &str) -> String {
    let name = format!("ag{}", &Uuid::new_v4().simple().to_string()[..10]);
    let (s, a) = api.create_agent(&name, "password123", json!({})).await;
    assert_eq!(s, 200, "{a}");
    set_agent_status(api, &id_of(&a), status).await;
    id_of(&a)
}

async fn set_agent_status(api: &Client<'_>, agent: &str, status: &str) {
    let (s, v) = api.set_agent_status(agent, status).await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test]
async fn queues_assign_agents_time_out_and_keep_exact_statistics() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let (_, tok2, _) = env.customer().await;
    let api2 = env.client(&tok2);
    let a1 = agent(&api, "available").await;
    let a2 = agent(&api, "available").await;

    // Validation and tenant isolation.
    let bad = [
        json!({"agent_ids": [Uuid::now_v7()]}),
        json!({"agent_ids": [a1, a1]}),
        json!({"agent_ids": [a1], "routing_method": "random"}),
        json!({"agent_ids": [a1], "wait_timeout_ms": 10}),
        json!({"agent_ids": "a1"}),
    ];
    for body in bad {
        let (s, v) = api.post("/v1.0/queues", body.clone()).await;
        assert!((400..500).contains(&s), "{body}: {s} {v}");
    }
    assert_eq!(
        api2.post("/v1.0/queues", json!({"agent_ids": [a1]}))
            .await
            .0,
        400,
        "another tenant's agent"
    );
    let q = api
        .create(
            "/v1.0/queues",
            json!({"name": "support", "routing_method": "linear", "agent_ids": [a1, a2],
               "wait_timeout_ms": 2500}),
        )
        .await;
    let qid = id_of(&q);
    assert_eq!(
        (q["waiting"].clone(), q["served"].clone()),
        (json!(0), json!(0))
    );

    // A and B get the two agents in the queue's order (linear); C waits and times out; D's
    // far end hangs up while it waits.
    let (a, b, c, d) = tokio::join!(
        api.answered_call("+15550005001", 6),
        api.answered_call("+15550005002", 6),
        api.answered_call("+15550005003", 20),
        api.answered_call("+15550005004", 1),
    );
    let join = |call: Uuid| api.join_queue(&qid, call);
    for call in [a, b] {
        let (s, v) = join(call).await;
        assert_eq!((s, v["status"].as_str()), (200, Some("waiting")), "{v}");
        queuecall(&api, &qid, call, |q| q["status"] == "service").await;
    }
    for call in [c, d] {
        assert_eq!(join(call).await.0, 200);
    }
    assert_eq!(join(c).await.0, 409, "a call joins once");
    let (s, _) = api2.join_queue(&qid, c).await;
    assert_eq!(s, 404, "another tenant's queue");
    let busy = api.calls(&["+15550000486"], json!({})).await[0];
    env.wait_call_end(busy, Duration::from_secs(10)).await;
    assert_eq!(join(busy).await.0, 409, "an ended call cannot join");

    let qa = queuecall(&api, &qid, a, |q| q["status"] == "service").await;
    let qb = queuecall(&api, &qid, b, |q| q["status"] == "service").await;
    assert_eq!(
        (qa["agent_id"].as_str(), qb["agent_id"].as_str()),
        (Some(&*a1), Some(&*a2))
    );
    let qc = queuecall(&api, &qid, c, |q| q["status"] == "abandoned").await;
    assert_eq!(qc["abandon_reason"], "timeout");
    assert!(qc["wait_ms"].as_u64().unwrap() >= 2500, "{qc}");
    // A timed-out call is hung up by us, long before its 20 s of talk.
    let ended = env.wait_call_end(c, Duration::from_secs(5)).await;
    assert_eq!(ended["hangup_by"], "local", "{ended}");
    let qd = queuecall(&api, &qid, d, |q| q["status"] == "abandoned").await;
    assert_eq!(qd["abandon_reason"], "hangup");
    let (_, agent_view) = api.get(&format!("/v1.0/agents/{a1}")).await;
    assert_eq!(agent_view["status"], "busy");

    // When A and B end, their agents are available again; E goes to the first (linear).
    for call in [a, b] {
        env.wait_call_end(call, Duration::from_secs(15)).await;
        queuecall(&api, &qid, call, |q| q["status"] == "done").await;
    }
    for ag in [&a1, &a2] {
        api.wait_get(
            &format!("/v1.0/agents/{ag}"),
            Duration::from_secs(10),
            |_, v| v["status"] == "available" && v["call_id"].is_null(),
        )
        .await;
    }
    let e = api.answered_call("+15550005005", 1).await;
    assert_eq!(join(e).await.0, 200);
    let qe = queuecall(&api, &qid, e, |q| q["status"] == "service").await;
    assert_eq!(qe["agent_id"].as_str(), Some(&*a1));
    // ringall: the agent idle longest (a2, free since B ended) takes F.
    let (s, v) = api
        .put(
            &format!("/v1.0/queues/{qid}"),
            json!({"name": "support", "routing_method": "ringall", "agent_ids": [a1, a2],
                        "wait_timeout_ms": 2500}),
        )
        .await;
    assert_eq!(
        (s, v["routing_method"].as_str()),
        (200, Some("ringall")),
        "{v}"
    );
    env.wait_call_end(e, Duration::from_secs(10)).await;
    queuecall(&api, &qid, e, |q| q["status"] == "done").await;
    api.wait_get(
        &format!("/v1.0/agents/{a1}"),
        Duration::from_secs(10),
        |_, v| v["status"] == "available",
    )
    .await;
    let f = api.answered_call("+15550005006", 1).await;
    assert_eq!(join(f).await.0, 200);
    let qf = queuecall(&api, &qid, f, |q| q["status"] == "service").await;
    assert_eq!(qf["agent_id"].as_str(), Some(&*a2));
    env.wait_call_end(f, Duration::from_secs(10)).await;
    queuecall(&api, &qid, f, |q| q["status"] == "done").await;

    // Statistics: exact, and unchanged by a redelivery of every event to the consumers.
    let expect = |calls: &[Value]| {
        let served: Vec<u64> = calls
            .iter()
            .filter(|q| q["status"] == "done")
            .map(|q| q["wait_ms"].as_u64().unwrap())
            .collect();
        assert_eq!(served.len(), 4);
        json!({"waiting": 0, "serving": 0, "served": 4, "abandoned": 2,
               "total_wait_ms": served.iter().sum::<u64>(),
               "average_wait_ms": served.iter().sum::<u64>() / 4})
    };
    let stats_of = |v: &Value| {
        json!({"waiting": v["waiting"], "serving": v["serving"], "served": v["served"],
               "abandoned": v["abandoned"], "total_wait_ms": v["total_wait_ms"],
               "average_wait_ms": v["average_wait_ms"]})
    };
    let calls = api
        .all_pages(&format!("/v1.0/queuecalls?queue_id={qid}"), 100)
        .await;
    assert_eq!(calls.len(), 6);
    let want = expect(&calls);
    let got = api
        .wait_get(
            &format!("/v1.0/queues/{qid}"),
            Duration::from_secs(10),
            |_, v| v["served"] == 4 && v["serving"] == 0,
        )
        .await;
    assert_eq!(stats_of(&got), want, "{got}");
    let events_before: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    env.redeliver_all(
        &[vbin_processes::calls::CONSUMER, "queue-timeouts"],
        Duration::from_secs(30),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await; // a dispatcher tick or two
    let events_after: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(events_before, events_after, "redelivery changed something");
    let (_, again) = api.get(&format!("/v1.0/queues/{qid}")).await;
    assert_eq!(stats_of(&again), want);
    assert_eq!(api2.get(&format!("/v1.0/queues/{qid}")).await.0, 404);
    let (_, theirs) = api2.get("/v1.0/queuecalls").await;
    assert_eq!(theirs["result"], json!([]));
}

#[tokio::test]
async fn campaign_with_a_queue_dials_for_available_agents_only() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let a3 = agent(&api, "offline").await;
    let q = api
        .create(
            "/v1.0/queues",
            json!({"name": "sales", "routing_method": "linear", "agent_ids": [a3],
               "wait_timeout_ms": 60000}),
        )
        .await;
    let qid = id_of(&q);
    let plan = api
        .create(
            "/v1.0/outplans",
            json!({"source": "+15550001000", "dial_timeout_ms": 3000, "max_try_count": 1}),
        )
        .await;
    let od = id_of(&api.create("/v1.0/outdials", json!({"name": "leads"})).await);
    for i in 0..4 {
        api.create(
            &format!("/v1.0/outdials/{od}/targets"),
            json!({"destinations": [format!("+1555000600{i}")], "variables": {"talk_seconds": 1}}),
        )
        .await;
    }
    let bad = json!({"outplan_id": id_of(&plan), "outdial_id": od, "queue_id": Uuid::now_v7()});
    assert_eq!(
        api.post("/v1.0/campaigns", bad).await.0,
        404,
        "unknown queue"
    );
    let camp = api
        .create(
            "/v1.0/campaigns",
            json!({"outplan_id": id_of(&plan), "outdial_id": od, "queue_id": qid,
               "service_level": 100}),
        )
        .await;
    let cid = id_of(&camp);
    let (s, _) = api.set_campaign_status(&cid, "running").await;
    assert_eq!(s, 200);
    // No agent available: nothing is dialed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, v) = api.get(&format!("/v1.0/campaigns/{cid}")).await;
    assert_eq!(v["dialed"], 0, "{v}");
    set_agent_status(&api, &a3, "available").await;
    let done = api
        .wait_get(
            &format!("/v1.0/campaigns/{cid}"),
            Duration::from_secs(60),
            |_, v| v["status"] == "completed",
        )
        .await;
    assert_eq!(
        (done["dialed"].clone(), done["answered"].clone()),
        (json!(4), json!(4)),
        "{done}"
    );
    // Every answered campaign call joined the queue; one agent means one call at a time with
    // it plus at most one (service level 100%) ringing or waiting.
    let calls: Vec<String> = api
        .all_pages(&format!("/v1.0/campaigncalls?campaign_id={cid}"), 100)
        .await
        .iter()
        .map(|c| c["reference_id"].as_str().unwrap().to_string())
        .collect();
    let queued = api
        .wait_get(
            &format!("/v1.0/queues/{qid}"),
            Duration::from_secs(10),
            |_, v| v["served"].as_u64().unwrap() + v["abandoned"].as_u64().unwrap() == 4,
        )
        .await;
    assert_eq!(queued["waiting"], 0);
    let mut joined: Vec<String> = api
        .all_pages(&format!("/v1.0/queuecalls?queue_id={qid}"), 100)
        .await
        .iter()
        .map(|q| q["call_id"].as_str().unwrap().to_string())
        .collect();
    joined.sort();
    let mut calls = calls;
    calls.sort();
    assert_eq!(joined, calls);
    let most: i64 = sqlx::query_scalar(
        "SELECT max((payload->'counters'->>'in_flight')::bigint) FROM events \
         WHERE aggregate_id = $1 AND event_type = 'campaigncall_created'",
    )
    .bind(cid.parse::<Uuid>().unwrap())
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(most <= 2, "in flight at most {most}");
}
