//! End-to-end tests of the platform spine (issue 2): identity and call commands over HTTP, the
//! Postgres event log, the outbox relay to JetStream and the sandbox carrier, all real.

use crate::support::{wait_until, wait_until_every, Env, Nats};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use uuid::Uuid;

#[tokio::test]
async fn identity_auth_and_error_envelope() {
    let env = Env::start().await;
    let (_, token, username) = env.customer().await;
    let api = env.client(&token);

    // Admin endpoint: wrong token 401, no token 401, customer token 403.
    let body = json!({"name": "x", "username": "someone", "password": "password123"});
    assert_eq!(
        env.client("not-the-admin")
            .post("/v1.0/customers", body.clone())
            .await
            .0,
        401
    );
    assert_eq!(
        env.req(Method::POST, "/v1.0/customers", None, Some(body.clone()))
            .await
            .0,
        401
    );
    assert_eq!(api.post("/v1.0/customers", body).await.0, 403);
    // Usernames are unique platform-wide.
    let (s, v) = env
        .admin()
        .post(
            "/v1.0/customers",
            json!({"name": "y", "username": username, "password": "password123"}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["reason"].as_str()),
        (409, Some("conflict")),
        "{v}"
    );
    assert!(env.login(&username, "wrong-password").await.is_none());
    assert!(env.login("nobody-here", "password123").await.is_none());

    // Access keys: shown once, work, stop working when revoked.
    let (s, key) = api
        .post(
            "/v1.0/accesskeys",
            json!({"name": "ci", "expire_sec": 3600}),
        )
        .await;
    assert_eq!(s, 200, "{key}");
    let secret = key["token"].as_str().unwrap().to_string();
    assert!(secret.starts_with("vb_"));
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE payload::text LIKE '%' || $1 || '%'")
            .bind(&secret)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(stored, 0, "the access key must not be stored in clear");
    let (s, agent) = env
        .client(&secret)
        .post(
            "/v1.0/agents",
            json!({"username": format!("{username}-b"), "password": "password456"}),
        )
        .await;
    assert_eq!(s, 200, "{agent}");
    assert_eq!(agent["permission"], "agent");
    assert!(agent.get("password_hash").is_none());
    let (s, _) = api
        .delete(&format!("/v1.0/accesskeys/{}", key["id"].as_str().unwrap()))
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        env.client(&secret)
            .post(
                "/v1.0/agents",
                json!({"username": "zzz", "password": "password456"})
            )
            .await
            .0,
        401
    );

    // A plain agent cannot manage agents; may set its own status; loses access when deleted.
    let agent_token = env
        .login(&format!("{username}-b"), "password456")
        .await
        .unwrap();
    let agent_id = agent["id"].as_str().unwrap();
    assert_eq!(
        env.client(&agent_token)
            .post(
                "/v1.0/agents",
                json!({"username": "zzz", "password": "password456"})
            )
            .await
            .0,
        403
    );
    let (s, v) = env
        .client(&agent_token)
        .set_agent_status(agent_id, "available")
        .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("available")), "{v}");
    assert_eq!(api.delete_agent(agent_id).await.0, 200);
    assert_eq!(
        env.calls_status(&agent_token).await,
        401,
        "deleted agent's JWT must stop working"
    );

    // Webhook settings and secret rotation.
    let (s, v) = api.update_customer(json!({"webhook_uri": "ftp://x"})).await;
    assert_eq!(
        (s, v["error"]["reason"].as_str()),
        (400, Some("invalid_argument"))
    );
    let (s, v) = api.rotate_webhook_secret().await;
    assert_eq!(s, 200);
    assert!(v["webhook_secret"].as_str().unwrap().len() >= 32);

    // Error envelope for client mistakes: never a 500.
    let missing = format!("/v1.0/calls/{}/hangup", Uuid::new_v4());
    let cases: Vec<(Method, &str, Option<Value>, u16)> = vec![
        (
            Method::POST,
            "/v1.0/calls",
            Some(json!({"source": "5550001", "destinations": ["+15550002000"]})),
            400,
        ),
        (
            Method::POST,
            "/v1.0/calls",
            Some(json!({"source": "+15550001000", "destinations": []})),
            400,
        ),
        (
            Method::POST,
            "/v1.0/calls",
            Some(
                json!({"source": "+15550001000", "destinations": ["+15550002000"], "dial_timeout_ms": 5}),
            ),
            400,
        ),
        (
            Method::POST,
            "/v1.0/calls",
            Some(
                json!({"source": "+15550001000", "destinations": ["+15550002000"], "variables": {"a": {"nested": 1}}}),
            ),
            400,
        ),
        (
            Method::POST,
            "/v1.0/calls",
            Some(json!({"source": 12, "destinations": "x"})),
            400,
        ),
        (Method::POST, "/v1.0/calls/not-a-uuid/hangup", None, 400),
        (Method::POST, &missing, None, 404),
        (Method::GET, "/v1.0/no-such-route", None, 404),
        (Method::DELETE, "/v1.0/calls", None, 405),
    ];
    for (m, path, body, want) in cases {
        let (s, v) = api.req(m.clone(), path, body).await;
        assert_eq!(s, want, "{m} {path}: {v}");
        assert_eq!(v["error"]["status"], want, "{v}");
        assert!(!v["error"]["request_id"].as_str().unwrap().is_empty());
    }
    // Malformed JSON and oversized bodies.
    let raw = |body: Vec<u8>| {
        env.http
            .post(env.url("/v1.0/calls"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .header("x-request-id", "test-req-1")
            .body(body)
            .send()
    };
    let r = raw(b"{not json".to_vec()).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-request-id"], "test-req-1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["request_id"], "test-req-1");
    // The server answers 413 without reading the body and closes that connection; use a
    // client of its own so no later request is sent on the closing connection.
    let r = vbin_netguard::tls::client_builder()
        .build()
        .unwrap()
        .post(env.url("/v1.0/calls"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(vec![b' '; 200_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    // Health, readiness, metrics.
    assert_eq!(env.req(Method::GET, "/healthz", None, None).await.0, 200);
    let (s, v) = env.req(Method::GET, "/readyz", None, None).await;
    assert_eq!(
        (s, &v["postgres"], &v["nats"]),
        (200, &json!(true), &json!(true)),
        "{v}"
    );
    let metrics = env.metrics().await;
    assert!(metrics.contains("vbin_http_requests_total"), "{metrics}");
}

impl Env {
    async fn calls_status(&self, token: &str) -> u16 {
        self.client(token)
            .post(
                "/v1.0/calls",
                json!({"source": "+15550001000", "destinations": ["+15550002000"]}),
            )
            .await
            .0
    }
}

#[tokio::test]
async fn sandbox_carrier_drives_every_outcome_and_events_are_published_in_order() {
    let env = Env::start().await;
    let (customer, token, _) = env.customer().await;
    let api = env.client(&token);
    let ids = api
        .calls(
            &[
                "+15550002000",
                "+15550000486",
                "+15550000487",
                "+15550000404",
            ],
            json!({"variables": {"talk_seconds": 1}, "dial_timeout_ms": 1500}),
        )
        .await;
    let mut finals = vec![];
    for id in &ids {
        finals.push(env.wait_call_end(*id, Duration::from_secs(20)).await);
    }
    let summary: Vec<(&str, &str, &str)> = finals
        .iter()
        .map(|v| {
            (
                v["status"].as_str().unwrap(),
                v["hangup_cause"].as_str().unwrap(),
                v["hangup_by"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("completed", "normal_clearing", "remote"),
            ("busy", "user_busy", "remote"),
            ("no_answer", "no_answer", "remote"),
            ("failed", "unallocated_number", "remote"),
        ]
    );
    assert_eq!(finals[0]["duration"], 1);
    assert!(finals[0]["tm_ringing"].is_string() && finals[0]["tm_progressing"].is_string());
    let types: Vec<String> = env
        .events_of("call", ids[0])
        .await
        .into_iter()
        .map(|e| e.1)
        .collect();
    assert_eq!(
        types,
        [
            "call_created",
            "call_ringing",
            "call_progressing",
            "call_hungup"
        ]
    );

    // Every logged event is on JetStream exactly once, with Nats-Msg-Id = event_id, its
    // subject's fields, and per aggregate in sequence order (once the answered call's charge,
    // which follows its hangup, is in the log too).
    env.wait_event_count("billing_recorded", 1, Duration::from_secs(20))
        .await;
    let msgs = env.wait_all_published(Duration::from_secs(20)).await;
    let log = env.log_event_ids().await;
    assert_eq!(msgs.len(), log.len(), "no duplicates in the stream");
    // Sequences are per aggregate (type, id): a customer and its billing account share an id.
    let mut last_seq: HashMap<(String, Uuid), i64> = HashMap::new();
    for (msg_id, e) in &msgs {
        assert_eq!(msg_id, &e.event_id.to_string());
        assert_eq!(e.customer_id, customer);
        let prev = last_seq
            .insert((e.aggregate_type.clone(), e.aggregate_id), e.sequence)
            .unwrap_or(0);
        assert_eq!(
            e.sequence,
            prev + 1,
            "aggregate {} out of order",
            e.aggregate_id
        );
        if e.aggregate_type == "customer" {
            assert!(
                !e.data.to_string().contains("argon2"),
                "password hashes must not be published"
            );
        }
    }
    let call_hungup = msgs
        .iter()
        .find(|m| m.1.aggregate_id == ids[1] && m.1.event_type == "call_hungup")
        .unwrap();
    let (metadata, _, resource) = call_hungup.1.values();
    assert_eq!(resource["status"], "busy");
    assert_eq!(metadata["actor"], "system:sandbox-carrier");
    // Commit order in the log = stream order.
    let stream_order: Vec<String> = msgs.iter().map(|m| m.0.clone()).collect();
    let log_order: Vec<String> = log.iter().map(|u| u.to_string()).collect();
    assert_eq!(stream_order, log_order);
}

#[tokio::test]
async fn hangup_cancels_is_idempotent_and_tenant_scoped() {
    let env = Env::start().await;
    let (_, token, _) = env.customer().await;
    let api = env.client(&token);
    let (_, other, _) = env.customer().await;
    let other_api = env.client(&other);
    let id = api.calls(&["+15550002000"], json!({})).await[0];
    let path = format!("/v1.0/calls/{id}/hangup");
    // Another customer cannot see or touch it.
    let (s, v) = other_api.post(&path, json!({})).await;
    assert_eq!((s, v["error"]["reason"].as_str()), (404, Some("not_found")));
    let (s, v) = api.post(&path, json!({})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            v["status"].as_str(),
            v["hangup_cause"].as_str(),
            v["hangup_by"].as_str()
        ),
        (Some("canceled"), Some("originator_cancel"), Some("local"))
    );
    // Again: unchanged, no new event; the carrier's late timers change nothing either.
    let (s, again) = api.post(&path, json!({})).await;
    assert_eq!((s, &again["status"]), (200, &v["status"]));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let evs = env.events_of("call", id).await;
    assert_eq!(evs.last().unwrap().1, "call_hungup");
    assert_eq!(evs.iter().filter(|e| e.1 == "call_hungup").count(), 1);
    assert_eq!(env.call_state(id).await["status"], "canceled");
    // The far end's ring (due at 0.1 s, carrying the answer at 0.6 s) came to an ended call:
    // it is gone, and neither the answer nor a hangup of the far end (due 2 s after an
    // answer) was planned for it.
    let timers: Vec<String> =
        sqlx::query_scalar("SELECT action FROM carrier_timers WHERE call_id = $1")
            .bind(id)
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert!(timers.is_empty(), "sandbox timers left: {timers:?}");
}

/// A sandbox step whose command fails is put back as it was, for the next poll: the worker
/// claims its timers by deleting them, so a failed step must be written again in the claim's
/// transaction, not lost with it. Here the call's log cannot be read (its one event is not a
/// call created), so every attempt fails.
#[tokio::test]
async fn a_sandbox_step_that_fails_is_put_back_for_the_retry() {
    let env = Env::start().await;
    let (customer, _, _) = env.customer().await;
    let call = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO events (event_id, customer_id, aggregate_type, aggregate_id, sequence, \
           event_type, event_version, payload, metadata, resource) \
         VALUES ($1, $2, 'call', $3, 1, 'call_created', '1', '{\"nonsense\": true}', '{}', '{}')",
    )
    .bind(Uuid::now_v7())
    .bind(customer)
    .bind(call)
    .execute(&env.pool)
    .await
    .unwrap();
    // Due a second ago (to the microsecond, as Postgres keeps it).
    let due: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT date_trunc('milliseconds', now()) - interval '1 second'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    sqlx::query(
        "INSERT INTO carrier_timers (call_id, customer_id, action, due_at) VALUES ($1, $2, 'ring', $3)",
    )
    .bind(call)
    .bind(customer)
    .bind(due)
    .execute(&env.pool)
    .await
    .unwrap();
    // The worker polls every 50 ms: it has tried many times by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let left: Vec<(String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT action, due_at FROM carrier_timers WHERE call_id = $1")
            .bind(call)
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(left, vec![("ring".to_string(), due)]);
    let fired = crate::support::metric(&env.metrics().await, "vbin_sandbox_timers_fired_total");
    assert_eq!(
        fired.unwrap_or(0.0),
        0.0,
        "a failed step is not counted as fired"
    );
}

#[tokio::test]
async fn idempotency_key_replays_the_first_response() {
    let env = Env::start().await;
    let (_, token, _) = env.customer().await;
    let api = env.client(&token);
    let send = |key: &'static str, dest: &'static str| {
        let body = json!({"source": "+15550001000", "destinations": [dest]});
        api.post_once("/v1.0/calls", key, body)
    };
    let a = send("k-1", "+15550002000").await;
    assert_eq!(a.status(), 200);
    let a: Value = a.json().await.unwrap();
    let b = send("k-1", "+15550002000").await;
    assert_eq!(b.status(), 200);
    assert_eq!(b.headers()["idempotent-replayed"], "true");
    let b: Value = b.json().await.unwrap();
    assert_eq!(a, b);
    let created: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'call_created'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(created, 1, "a replay must not execute the command again");
    let c = send("k-1", "+15550003000").await;
    assert_eq!(c.status(), 422);
}

#[tokio::test]
async fn a_retry_after_a_crash_between_commit_and_answer_commits_nothing_twice() {
    let env = Env::start().await;
    let (_, token, _) = env.customer().await;
    let api = env.client(&token);
    let body = json!({"source": "+15550001000", "destinations": ["+15550002000", "+15550003000"],
                      "variables": {"talk_seconds": 30}});
    let send = || api.post_once("/v1.0/calls", "k-crash", body.clone());
    let first: Value = send().await.json().await.unwrap();
    let ids = |v: &Value| -> Vec<String> {
        v["calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect()
    };
    // What a process killed after its commits but before recording the answer leaves: the
    // key's record in progress. While it may still be running, a retry is told so.
    let lose_answer = |age_secs: i32| {
        sqlx::query(
            "UPDATE idempotency_keys SET status_code = NULL, response = NULL, \
             created_at = now() - make_interval(secs => $1)",
        )
        .bind(age_secs as f64)
        .execute(&env.pool)
    };
    lose_answer(0).await.unwrap();
    assert_eq!(send().await.status(), 409);
    // Once abandoned, the retry runs the request again: same calls, nothing created twice.
    lose_answer(11).await.unwrap();
    let again = send().await;
    assert_eq!(again.status(), 200);
    assert!(again.headers().get("idempotent-replayed").is_none());
    let again: Value = again.json().await.unwrap();
    assert_eq!(ids(&again), ids(&first), "{again}");
    let created: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'call_created'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(created, 2, "the re-executed request created calls again");
    // Its answer is kept like any other.
    let third = send().await;
    assert_eq!(third.headers()["idempotent-replayed"], "true");
    assert_eq!(ids(&third.json().await.unwrap()), ids(&first));
}

#[tokio::test]
async fn concurrent_commands_on_one_aggregate_are_retried_not_lost() {
    let env = Env::start().await;
    let (customer, token, username) = env.customer().await;
    let api = env.client(&token);
    let futs = (0..10).map(|i| {
        api.post(
            "/v1.0/agents",
            json!({"username": format!("{username}-{i}"), "password": "password123"}),
        )
    });
    let results = futures::future::join_all(futs).await;
    for (s, v) in &results {
        assert_eq!(*s, 200, "{v}");
    }
    let seqs: Vec<i64> = env
        .events_of("customer", customer)
        .await
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(
        seqs,
        (1..=12).collect::<Vec<i64>>(),
        "customer_created, agent_created, then 10 agents"
    );
}

#[tokio::test]
async fn old_version_events_are_upcast_on_load_and_publish() {
    let env = Env::start().await;
    let (customer, token, _) = env.customer().await;
    let api = env.client(&token);
    // A call_created 1.0 as an older vbin wrote it: no direction, variables, dial_timeout_ms.
    let call_id = Uuid::now_v7();
    let v1 = json!({"type": "call_created", "call_id": call_id, "customer_id": customer,
                    "source": "+15550001111", "destination": "+15550002222", "at": "2025-01-02T03:04:05Z"});
    sqlx::query(
        "INSERT INTO events (event_id, customer_id, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, resource) \
         VALUES ($1, $2, 'call', $3, 1, 'call_created', '1.0', $4, '{\"actor\":\"admin\"}', '{}')",
    )
    .bind(Uuid::now_v7())
    .bind(customer)
    .bind(call_id)
    .bind(&v1)
    .execute(&env.pool)
    .await
    .unwrap();
    // Loading it (to hang up) goes through the upcaster.
    let (s, v) = api.hangup(call_id).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            v["status"].as_str(),
            v["source"].as_str(),
            v["direction"].as_str()
        ),
        (Some("canceled"), Some("+15550001111"), Some("outgoing"))
    );
    // The stored event is untouched; the published one is the current version.
    let stored: String = sqlx::query_scalar(
        "SELECT event_version FROM events WHERE aggregate_id = $1 AND sequence = 1",
    )
    .bind(call_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(stored, "1.0");
    let msgs = env.wait_all_published(Duration::from_secs(20)).await;
    let published = msgs
        .iter()
        .find(|m| m.1.aggregate_id == call_id && m.1.sequence == 1)
        .unwrap();
    assert_eq!(published.1.event_version, "5.0.0");
    let (_, data, _) = published.1.values();
    assert_eq!(data["dial_timeout_ms"], 30000);
    assert_eq!(data["activeflow_id"], Value::Null);
    assert_eq!(data["trunk_id"], Value::Null);
    assert_eq!(data["master_call_id"], Value::Null);
    // And the log refuses edits.
    let err = sqlx::query("UPDATE events SET payload = '{}' WHERE aggregate_id = $1")
        .bind(call_id)
        .execute(&env.pool)
        .await;
    assert!(err.is_err(), "the event log must be append-only");
}

#[tokio::test]
async fn events_committed_while_nats_is_down_are_published_once_after_it_returns() {
    let mut env = Env::start().await;
    let (_, token, _) = env.customer().await;
    let before = env.calls(&token, &["+15550000404"], json!({})).await;
    env.wait_call_end(before[0], Duration::from_secs(20)).await;
    env.wait_all_published(Duration::from_secs(20)).await;

    env.nats.stop();
    // Commands only need Postgres: they are accepted while NATS is down.
    let during = env
        .calls(
            &token,
            &["+15550000404", "+15550000486", "+15550002000"],
            json!({"variables": {"talk_seconds": 1}}),
        )
        .await;
    // Readiness reports NATS down once the client has noticed the closed connection (on a
    // loaded machine that can take a moment).
    wait_until("readyz with NATS down", Duration::from_secs(5), || async {
        let (s, v) = env.req(Method::GET, "/readyz", None, None).await;
        ((s, &v["nats"]) == (503, &json!(false)))
            .then_some(())
            .ok_or(format!("{s} {v}"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.nats.resume();

    for id in &during {
        env.wait_call_end(*id, Duration::from_secs(40)).await;
    }
    // The answered call's charge follows its hangup; only then is the log complete (comparing
    // before it landed made this test fail now and then on a loaded machine).
    env.wait_event_count("billing_recorded", 1, Duration::from_secs(30))
        .await;
    let msgs = env.wait_all_published(Duration::from_secs(30)).await;
    let ids: Vec<&String> = msgs.iter().map(|m| &m.0).collect();
    let unique: HashSet<&String> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "an event was published twice");
    assert_eq!(msgs.len(), env.log_event_ids().await.len());
}

#[tokio::test]
async fn concurrent_transactions_committing_out_of_order_are_never_skipped() {
    let env = Env::start().await;
    let (customer, _, _) = env.customer().await;
    env.wait_all_published(Duration::from_secs(20)).await;
    let insert = "INSERT INTO events (event_id, customer_id, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, resource) \
                  VALUES ($1, $2, 'probe', $3, 1, 'probe_recorded', '1.0', '{}', '{}', '{}') RETURNING global_position";
    let (a_id, b_id) = (Uuid::now_v7(), Uuid::now_v7());
    let mut a = env.pool.begin().await.unwrap();
    let pos_a: i64 = sqlx::query_scalar(insert)
        .bind(a_id)
        .bind(customer)
        .bind(Uuid::now_v7())
        .fetch_one(&mut *a)
        .await
        .unwrap();
    let mut b = env.pool.begin().await.unwrap();
    let pos_b: i64 = sqlx::query_scalar(insert)
        .bind(b_id)
        .bind(customer)
        .bind(Uuid::now_v7())
        .fetch_one(&mut *b)
        .await
        .unwrap();
    assert!(pos_b > pos_a);
    b.commit().await.unwrap();
    // B is committed with the higher position, but A (lower position) is still open: a reader
    // going by position would publish B, checkpoint past A, and lose A. The relay must wait.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen: Vec<String> = env
        .stream_messages()
        .await
        .into_iter()
        .map(|m| m.0)
        .collect();
    assert!(
        !seen.contains(&b_id.to_string()),
        "published past an open transaction"
    );
    a.commit().await.unwrap();
    let msgs = env.wait_all_published(Duration::from_secs(20)).await;
    let order: Vec<String> = msgs.iter().map(|m| m.0.clone()).collect();
    let ia = order
        .iter()
        .position(|x| *x == a_id.to_string())
        .expect("A published");
    let ib = order
        .iter()
        .position(|x| *x == b_id.to_string())
        .expect("B published");
    assert!(ia < ib, "commit order (by transaction) is kept");
}

#[tokio::test]
async fn calls_in_flight_when_the_process_dies_are_resolved_after_restart() {
    let mut env = Env::start().await;
    let (_, token, _) = env.customer().await;
    let ids = env
        .calls(
            &token,
            &["+15550000487", "+15550002000"],
            json!({"dial_timeout_ms": 4000, "variables": {"talk_seconds": 3}}),
        )
        .await;
    // Wait until the no-answer call rings and the other is answered, then crash.
    wait_until("the calls to progress", Duration::from_secs(20), || async {
        let a = env.call_state(ids[0]).await;
        let b = env.call_state(ids[1]).await;
        (a["status"] == "ringing" && b["status"] == "progressing")
            .then_some(())
            .ok_or(format!("{a} {b}"))
    })
    .await;
    env.platform.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.restart().await;
    let a = env.wait_call_end(ids[0], Duration::from_secs(30)).await;
    let b = env.wait_call_end(ids[1], Duration::from_secs(30)).await;
    assert_eq!(
        (a["status"].as_str(), a["hangup_cause"].as_str()),
        (Some("no_answer"), Some("no_answer"))
    );
    assert_eq!(b["status"], "completed");
    assert!(b["duration"].as_u64().unwrap() >= 3, "{b}");
}

#[tokio::test]
async fn one_relay_publishes_at_a_time_and_a_standby_takes_over() {
    let mut env = Env::start().await;
    let (_, token, _) = env.customer().await;
    let leases = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND objsubid = 1 AND classid::bigint = ($1 >> 32) AND objid::bigint = ($1 & 4294967295)",
        )
        .bind(vbin_eventlog::relay::RELAY_LOCK_KEY)
        .fetch_one(&env.pool)
        .await
        .unwrap()
    };
    wait_until_every(
        "the first relay to take the lease",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async { leases().await == 1 },
    )
    .await;
    let second = env.spawn_platform().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(leases().await, 1, "two relays hold the lease");
    // The leader dies; the standby must take over and publish what follows.
    env.platform.kill();
    env.platform = second;
    let ids = env
        .calls(&token, &["+15550000404", "+15550000486"], json!({}))
        .await;
    for id in &ids {
        env.wait_call_end(*id, Duration::from_secs(30)).await;
    }
    let msgs = env.wait_all_published(Duration::from_secs(30)).await;
    assert_eq!(msgs.len(), env.log_event_ids().await.len());
}

#[tokio::test]
async fn revoking_an_agent_reaches_other_processes_through_the_event_stream() {
    let env = Env::start().await;
    let (_, token, username) = env.customer().await;
    let api = env.client(&token);
    let (s, agent) = api
        .post(
            "/v1.0/agents",
            json!({"username": format!("{username}-x"), "password": "password456"}),
        )
        .await;
    assert_eq!(s, 200, "{agent}");
    let agent_token = env
        .login(&format!("{username}-x"), "password456")
        .await
        .unwrap();
    let other = env.spawn_platform().await;
    let on_other = |t: String| {
        let url = format!("{}/v1.0/calls", other.url());
        let http = env.http.clone();
        async move {
            http.post(url)
                .bearer_auth(t)
                .json(&json!({"source": "+15550001000", "destinations": ["+15550000404"]}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // The other process resolves (and caches) the agent's token.
    assert_eq!(on_other(agent_token.clone()).await, 200);
    let (s, _) = api
        .delete(&format!("/v1.0/agents/{}", agent["id"].as_str().unwrap()))
        .await;
    assert_eq!(s, 200);
    // Well within the 10 s cache TTL: only the revocation event can make this pass.
    wait_until_every(
        "the other process to stop trusting a deleted agent",
        Duration::from_secs(3),
        Duration::from_millis(100),
        || async { on_other(agent_token.clone()).await == 401 },
    )
    .await;
}

#[tokio::test]
async fn failed_logins_are_rate_limited_per_username() {
    let env = Env::start().await;
    let (_, _, user) = env.customer().await;
    let (_, _, other) = env.customer().await;
    let login = |username: String, password: &'static str| {
        let env = &env;
        async move {
            let r = env
                .http
                .post(env.url("/auth/login"))
                .json(&json!({"username": username, "password": password}))
                .send()
                .await
                .unwrap();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), retry)
        }
    };
    for _ in 0..10 {
        assert_eq!(login(user.clone(), "wrong-password").await.0, 401);
    }
    // The 11th attempt in the window is refused, even with the right password.
    assert_eq!(
        login(user.clone(), "wrong-password").await,
        (429, Some("60".to_string()))
    );
    assert_eq!(login(user.clone(), "password123").await.0, 429);
    // Other usernames are not affected.
    assert_eq!(login(other, "password123").await.0, 200);
}

/// Group commit (issue 23): concurrent appends share statements and commits, yet each command
/// keeps its own answer: a collision on the first event fails only that command and leaves
/// none of its events behind (no partial append), and data the database refuses fails only
/// the command it belongs to. The published stream still equals the log.
#[tokio::test]
async fn concurrent_appends_are_committed_together_yet_each_command_gets_its_own_answer() {
    use vbin_eventlog::{AppendError, CommandMeta, NewEvent, PgEventRepository};
    let env = Env::start().await;
    let (customer, _, _) = env.customer().await;
    // Two repositories: two processes appending to the same log.
    let repo = PgEventRepository::new(env.pool.clone());
    let other = PgEventRepository::new(env.pool.clone()).with_group_commit(false);
    let meta = CommandMeta::from_request(&vbin_eventlog::Actor::Admin, "req", Some(customer));
    let event = |n: usize, text: &str| NewEvent {
        event_type: "probe_recorded".into(),
        event_version: "1.0".into(),
        payload: json!({"type": "probe_recorded", "n": n, "text": text}),
        resource: json!({"n": n}),
    };
    let mut total_ok = 0usize;
    for round in 0..5 {
        // The other process got there first on `taken`, with one event.
        let taken = Uuid::now_v7();
        other
            .append(
                "probe",
                taken,
                customer,
                0,
                vec![event(1, "first")],
                &meta,
                None,
            )
            .await
            .unwrap();
        let ids: Vec<Uuid> = (0..64).map(|_| Uuid::now_v7()).collect();
        let appends = ids.iter().enumerate().map(|(i, id)| {
            let (repo, meta) = (repo.clone(), meta.clone());
            // Two events each; command 10 collides with `taken` (its first event), command
            // 20 carries a NUL character, which jsonb refuses.
            let (id, text) = match i {
                10 => (taken, "late"),
                20 => (*id, "bad\u{0}text"),
                _ => (*id, "ok"),
            };
            async move {
                repo.append(
                    "probe",
                    id,
                    customer,
                    0,
                    vec![event(1, text), event(2, text)],
                    &meta,
                    None,
                )
                .await
            }
        });
        let results = futures::future::join_all(appends).await;
        for (i, r) in results.iter().enumerate() {
            match i {
                10 => assert!(
                    matches!(r, Err(AppendError::Conflict)),
                    "round {round}: {r:?}"
                ),
                20 => assert!(
                    matches!(r, Err(AppendError::Database(_))),
                    "round {round}: {r:?}"
                ),
                _ => {
                    let recorded = r
                        .as_ref()
                        .unwrap_or_else(|e| panic!("round {round} #{i}: {e}"));
                    assert_eq!(
                        recorded.iter().map(|r| r.sequence).collect::<Vec<_>>(),
                        [1, 2]
                    );
                    assert!(recorded[0].global_position < recorded[1].global_position);
                    total_ok += 1;
                }
            }
        }
        let taken_events: Vec<(i64, String)> = sqlx::query_as(
            "SELECT sequence, payload->>'text' FROM events WHERE aggregate_type = 'probe' AND aggregate_id = $1 ORDER BY sequence",
        )
        .bind(taken)
        .fetch_all(&env.pool)
        .await
        .unwrap();
        assert_eq!(
            taken_events,
            [(1, "first".to_string())],
            "no part of the colliding command was kept"
        );
        let bad: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = $1")
            .bind(ids[20])
            .fetch_one(&env.pool)
            .await
            .unwrap();
        assert_eq!(bad, 0);
    }
    let (events, commits): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT tx_id::text) FROM events WHERE aggregate_type = 'probe' AND payload->>'text' = 'ok'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(events as usize, 2 * total_ok);
    assert!(
        (commits as usize) < total_ok / 2,
        "{total_ok} commands in {commits} commits: the appends were not grouped"
    );
    // The relay publishes batched commits like any other: the stream equals the log.
    let msgs = env.wait_all_published(Duration::from_secs(20)).await;
    assert_eq!(msgs.len(), env.log_event_ids().await.len());
}

/// Group commit: a second append to an aggregate that is already in the batch being gathered
/// waits for the next batch, and must be written then even if no other command ever comes.
/// (The writer holding it waited for the queue, which the other writer held while waiting for
/// a job: the second command hung until some other command was appended. The bench's store
/// run ended on such a pair and never returned.) On this test's single-threaded runtime both
/// appends are queued before a writer runs, so the first batch meets them together.
#[tokio::test]
async fn two_appends_to_one_aggregate_at_once_are_both_answered_with_nothing_after_them() {
    use vbin_eventlog::{CommandMeta, NewEvent, PgEventRepository};
    let env = Env::start().await;
    let (customer, _, _) = env.customer().await;
    let repo = PgEventRepository::new(env.pool.clone());
    let meta = CommandMeta::from_request(&vbin_eventlog::Actor::Admin, "req", Some(customer));
    let event = |n: usize| NewEvent {
        event_type: "probe_recorded".into(),
        event_version: "1.0".into(),
        payload: json!({"type": "probe_recorded", "n": n}),
        resource: json!({"n": n}),
    };
    let id = Uuid::now_v7();
    let (first, second) = tokio::time::timeout(Duration::from_secs(10), async {
        futures::join!(
            repo.append("probe", id, customer, 0, vec![event(1)], &meta, None),
            repo.append("probe", id, customer, 1, vec![event(2)], &meta, None),
        )
    })
    .await
    .expect("both appends answered within 10 s");
    assert_eq!(first.unwrap()[0].sequence, 1);
    assert_eq!(second.unwrap()[0].sequence, 2);
    let ns: Vec<i64> = sqlx::query_scalar(
        "SELECT (payload->>'n')::bigint FROM events WHERE aggregate_id = $1 ORDER BY sequence",
    )
    .bind(id)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(ns, [1, 2]);
}

/// Group commit: while one batch is committing, the commands arriving meanwhile wait for it
/// and go together in the next batch, unless enough of them are waiting (eight) to be worth a
/// second commit at once. (Under load, half the batches had been single commands committed
/// beside a running batch: a statement, a commit and a WAL flush each.) A table lock held by
/// the test keeps the first batch committing; the batches in flight are the inserts waiting
/// for that lock.
#[tokio::test]
async fn commands_arriving_during_a_commit_wait_for_it_unless_enough_are_waiting() {
    use vbin_eventlog::{CommandMeta, NewEvent, PgEventRepository};
    let env = Env::start().await;
    let (customer, _, _) = env.customer().await;
    // Its own connections, named: the platform's processes append to the same log.
    const NAME: &str = "group-commit-probe";
    let opts: sqlx::postgres::PgConnectOptions = env.db_url.parse().unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_with(opts.application_name(NAME))
        .await
        .unwrap();
    let repo = PgEventRepository::new(pool);
    let meta = CommandMeta::from_request(&vbin_eventlog::Actor::Admin, "req", Some(customer));
    let append = |id: Uuid| {
        let (repo, meta) = (repo.clone(), meta.clone());
        tokio::spawn(async move {
            let event = NewEvent {
                event_type: "probe_recorded".into(),
                event_version: "1.0".into(),
                payload: json!({"type": "probe_recorded"}),
                resource: json!({}),
            };
            repo.append("probe", id, customer, 0, vec![event], &meta, None)
                .await
        })
    };
    let waiting = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
             AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO events%'",
        )
        .bind(NAME)
        .fetch_one(&env.pool)
        .await
        .unwrap()
    };
    let mut lock = env.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let mut tasks = vec![append(Uuid::now_v7())];
    wait_until(
        "the first batch committing",
        Duration::from_secs(10),
        || async { waiting().await == 1 },
    )
    .await;
    // Three more: they wait for that commit.
    tasks.extend((0..3).map(|_| append(Uuid::now_v7())));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        waiting().await,
        1,
        "three commands were committed beside the running batch instead of waiting for it"
    );
    // Five more make eight waiting: worth a second batch at once.
    tasks.extend((0..5).map(|_| append(Uuid::now_v7())));
    wait_until(
        "a second batch committing",
        Duration::from_secs(10),
        || async { waiting().await == 2 },
    )
    .await;
    lock.commit().await.unwrap();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap()[0].sequence, 1);
    }
    let commits: Vec<i64> = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'probe' AND customer_id = $1 \
         GROUP BY tx_id::text ORDER BY 1",
    )
    .bind(customer)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    // Sorted by size: both waiting inserts are let through when the lock goes, in either order.
    assert_eq!(
        commits,
        [1, 8],
        "the first command alone, and the eight together"
    );
}

/// Runs `spec` in a probe process until it has handled at least `at_least` events (and half a
/// second more, for any it should not have), then stops it; what it handled.
async fn consume_until(
    env: &Env,
    spec: vbin_bus::ConsumerSpec,
    at_least: usize,
    what: &str,
) -> Vec<vbin_event_schema::PublishedEvent> {
    let bus = vbin_bus::Bus::connect(&env.nats.url(), "probe", env.installation().await)
        .await
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let consumer = {
        let seen = seen.clone();
        tokio::spawn(vbin_bus::run_consumer(
            bus,
            spec,
            move |e| {
                seen.lock().unwrap().push(e);
                async { Ok::<(), String>(()) }
            },
            async {
                let _ = stopped.await;
            },
        ))
    };
    wait_until(what, Duration::from_secs(20), || async {
        seen.lock().unwrap().len() >= at_least
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop.send(());
    consumer.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    seen
}

/// A durable pull consumer `name` (explicit acks) of `filter` in the installation's
/// namespace, made on `stream` as an older version (or a probe) would have left it.
async fn durable_probe(
    env: &Env,
    stream: &async_nats::jetstream::stream::Stream,
    name: &str,
    filter: &str,
) -> async_nats::jetstream::consumer::PullConsumer {
    use async_nats::jetstream::consumer::{pull, AckPolicy};
    stream
        .create_consumer(pull::Config {
            durable_name: Some(name.into()),
            filter_subject: env.installation().await.namespace.subject(filter),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap()
}

/// `n` calls to a busy number, ended and their events published; their ids.
async fn ended_calls(env: &Env, token: &str, n: usize) -> Vec<Uuid> {
    let ids = env.calls(token, &vec!["+15550000486"; n], json!({})).await;
    for id in &ids {
        env.wait_call_end(*id, Duration::from_secs(20)).await;
    }
    env.wait_all_published(Duration::from_secs(20)).await;
    ids
}

/// Fetches what `c` has and acknowledges it all; how many.
async fn ack_all(c: &async_nats::jetstream::consumer::PullConsumer) -> usize {
    use futures::StreamExt;
    let mut batch = c
        .fetch()
        .max_messages(1000)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .unwrap();
    let mut n = 0;
    while let Some(Ok(m)) = batch.next().await {
        m.double_ack().await.unwrap();
        n += 1;
    }
    n
}

/// A durable consumer left by an older version with a wider filter (all call events) is
/// recreated with the narrower one (`call_hungup` only, filtered by the server) from where it
/// had got to: what it had acknowledged is not delivered again, and nothing after is lost.
#[tokio::test]
async fn a_consumer_whose_filter_narrows_resumes_where_it_had_got_to() {
    use vbin_event_schema::CallEvent;
    let env = Env::start().await;
    let (_, token, _) = env.customer().await;
    let stream = env.event_stream().await;
    let name = "probe-narrowing";
    let old = durable_probe(&env, &stream, name, "*.call.*").await;
    // Before: calls that end (busy), all their events consumed and acknowledged the old way.
    ended_calls(&env, &token, 3).await;
    let acked = ack_all(&old).await;
    assert!(
        acked >= 6,
        "the old consumer saw the first calls' events ({acked})"
    );
    let after = ended_calls(&env, &token, 2).await;

    // The new version's consumer of the same name.
    let seen = consume_until(
        &env,
        vbin_bus::ConsumerSpec::for_events_of::<CallEvent>(name, &[CallEvent::CALL_HUNGUP]),
        after.len(),
        "the later hangups",
    )
    .await;
    let mut got: Vec<Uuid> = seen.iter().map(|e| e.aggregate_id).collect();
    got.sort();
    let mut want = after.clone();
    want.sort();
    assert_eq!(
        got, want,
        "exactly the hangups after the old consumer's position"
    );
    assert!(seen.iter().all(|e| e.event_type == CallEvent::CALL_HUNGUP));
    let info = consumer_info(&stream, name).await;
    assert!(info.config.filter_subject.ends_with(".call.call_hungup"));
}

/// The durable consumer `name`'s info as the server has it.
async fn consumer_info(
    stream: &async_nats::jetstream::stream::Stream,
    name: &str,
) -> async_nats::jetstream::consumer::Info {
    use async_nats::jetstream::consumer::pull;
    stream
        .get_consumer::<pull::Config>(name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone()
}

/// On a server with multi-filter consumers (NATS 2.10+; the pinned one `scripts/models`
/// installs), a consumer of several event types is sent only those: one filter per type
/// instead of the aggregate's. The platform's `media-bridge-legs` (bridges and chain ends) is
/// sent nothing for calls that are never bridged. A durable left with the aggregate's filter
/// (made on NATS 2.9, or by an older version) is recreated with a filter per type from where
/// it had got to.
#[tokio::test]
async fn on_nats_2_10_a_consumer_of_several_types_is_sent_only_those() {
    use vbin_event_schema::CallEvent;
    let env = Env::start_on_nats(&[], Nats::pinned()).await;
    let (_, token, _) = env.customer().await;
    let stream = env.event_stream().await;
    let ns = env.installation().await.namespace;
    let name = "probe-two-types";
    let old = durable_probe(&env, &stream, name, "*.call.*").await;
    ended_calls(&env, &token, 2).await;
    assert!(
        ack_all(&old).await >= 4,
        "the old filter sent every call event"
    );
    let later = ended_calls(&env, &token, 2).await;

    let spec = vbin_bus::ConsumerSpec::for_events_of::<CallEvent>(
        name,
        &[CallEvent::CALL_HUNGUP, CallEvent::CALL_BRIDGED],
    );
    let seen = consume_until(&env, spec, 2, "the later calls' hangups").await;
    let mut got: Vec<(Uuid, &str)> = seen
        .iter()
        .map(|e| (e.aggregate_id, e.event_type.as_str()))
        .collect();
    got.sort();
    let mut want: Vec<(Uuid, &str)> = later
        .iter()
        .map(|id| (*id, CallEvent::CALL_HUNGUP))
        .collect();
    want.sort();
    assert_eq!(got, want, "the later calls' hangups, once each");
    let probe = consumer_info(&stream, name).await;
    assert_eq!(probe.config.filter_subject, "");
    let mut each = probe.config.filter_subjects.clone();
    each.sort();
    assert_eq!(
        each,
        [
            ns.subject("*.call.call_bridged"),
            ns.subject("*.call.call_hungup")
        ]
    );
    assert_eq!(
        probe.delivered.consumer_sequence, 2,
        "the server sent the recreated consumer only its types (not the calls' call_created)"
    );
    let legs = consumer_info(&stream, vbin_callmedia::BRIDGE_LEGS_CONSUMER).await;
    assert_eq!(legs.config.filter_subjects.len(), 2, "{:?}", legs.config);
    assert_eq!(
        legs.delivered.consumer_sequence, 0,
        "no call was bridged: nothing was sent to the bridges' consumer"
    );
}

/// A consumer that takes over from others (`ConsumerSpec::replacing`, e.g. `call-hangups`
/// from the three hangup consumers it merged) starts after the last event that all of them
/// had acknowledged: the furthest behind one's work is not lost, what none of them still had
/// to do is done once, nothing before is delivered again, and the old consumers are deleted.
#[tokio::test]
async fn a_consumer_replacing_others_starts_where_the_furthest_behind_stood() {
    use async_nats::jetstream::consumer::pull;
    use vbin_event_schema::CallEvent;
    let env = Env::start().await;
    let (_, token, _) = env.customer().await;
    let stream = env.event_stream().await;
    let (ahead, behind) = ("probe-old-ahead", "probe-old-behind");
    let mut old = Vec::new();
    for name in [ahead, behind] {
        old.push(durable_probe(&env, &stream, name, "*.call.call_hungup").await);
    }
    // Both handled the first calls' hangups; only one of them the second calls'.
    ended_calls(&env, &token, 2).await;
    for c in &old {
        assert_eq!(ack_all(c).await, 2);
    }
    let second = ended_calls(&env, &token, 2).await;
    assert_eq!(ack_all(&old[0]).await, 2);
    let third = ended_calls(&env, &token, 2).await;

    let seen = consume_until(
        &env,
        vbin_bus::ConsumerSpec::for_events_of::<CallEvent>(
            "probe-merged",
            &[CallEvent::CALL_HUNGUP],
        )
        .replacing(&[ahead, behind, "probe-never-existed"]),
        4,
        "the hangups after the floor",
    )
    .await;
    let mut got: Vec<Uuid> = seen.iter().map(|e| e.aggregate_id).collect();
    got.sort();
    let mut want: Vec<Uuid> = second.iter().chain(&third).copied().collect();
    want.sort();
    assert_eq!(
        got, want,
        "the hangups after the furthest behind one's floor, once each"
    );
    for name in [ahead, behind] {
        assert!(
            stream.get_consumer::<pull::Config>(name).await.is_err(),
            "{name} was deleted"
        );
    }
}

/// Each call event is delivered once per process part that handles it, not once per handler:
/// the process managers (chains, queues, hangups, billing, campaign results, flows) share
/// `process-calls`, the media process `media-call-events` (its bridges' other side keeps its
/// own consumer). A durable consumer left by a version with a consumer per handler is taken
/// over and deleted.
#[tokio::test]
async fn call_events_reach_one_consumer_per_part_not_one_per_handler() {
    use async_nats::jetstream::consumer::pull;
    use futures::TryStreamExt;
    let mut env = Env::start().await;
    let (customer, token, _) = env.customer().await;
    let installation = env.installation().await;
    let stream = env.event_stream().await;
    // A handler's own consumer as an older version left it.
    let left = vbin_processes::billing::CONSUMER;
    durable_probe(&env, &stream, left, "*.call.call_hungup").await;
    env.restart().await;
    ended_calls(&env, &token, 2).await;

    // The durable consumers a call event's subject reaches (projections aside).
    let subject = installation
        .namespace
        .subject_for(&customer, "call", "call_created");
    let matches = |filter: &str| {
        let (f, s): (Vec<&str>, Vec<&str>) =
            (filter.split('.').collect(), subject.split('.').collect());
        f.iter()
            .enumerate()
            .all(|(i, t)| *t == ">" || s.get(i).is_some_and(|x| *t == "*" || t == x))
            && (f.last() == Some(&">") || f.len() == s.len())
    };
    let infos: Vec<_> = stream.consumers().try_collect().await.unwrap();
    let mut reached: Vec<String> = infos
        .iter()
        .filter(|i| matches(&i.config.filter_subject))
        .filter_map(|i| i.config.durable_name.clone())
        .filter(|n| !n.starts_with("projection-"))
        .collect();
    reached.sort();
    assert_eq!(
        reached,
        [
            vbin_carrier::dialer::CONSUMER,
            vbin_callmedia::BRIDGE_LEGS_CONSUMER,
            vbin_callmedia::CALL_EVENTS_CONSUMER,
            vbin_processes::calls::CONSUMER,
            vbin_webhooks::delivery::RECORDER,
        ]
    );
    assert!(
        stream.get_consumer::<pull::Config>(left).await.is_err(),
        "{left} was taken over and deleted"
    );
}

/// Two processes' executors over one log: the one whose cached account is behind catches up
/// with what the other appended (on a load and on a conflicting command) and decides on the
/// current state, never on its stale copy.
#[tokio::test]
async fn a_stale_cached_aggregate_catches_up_with_what_another_process_appended() {
    use vbin_app::Executor;
    use vbin_domain::{BillingAccount, BillingCommand};
    use vbin_event_schema::{BillingId, CustomerId};
    use vbin_eventlog::{CommandMeta, PgEventRepository};
    let env = Env::start().await;
    let (customer, _, _) = env.customer().await;
    let owner = CustomerId(customer);
    let a = Executor::new(PgEventRepository::new(env.pool.clone()));
    let b = Executor::new(PgEventRepository::new(env.pool.clone()));
    let charge = |secs: u64| BillingCommand::ChargeCall {
        billing_id: BillingId::new(),
        call_id: Uuid::now_v7(),
        duration_secs: secs,
        at: chrono::Utc::now(),
    };
    let meta = || CommandMeta::caused_by("test", Uuid::now_v7(), "");
    let start = a
        .load::<BillingAccount>(customer, None)
        .await
        .unwrap()
        .expect("the customer's account");
    let rate = start.rate_micros_per_minute.0;
    assert!(rate > 0, "{start:?}");
    // `b` charges twice; `a` still holds the account as it was.
    for secs in [30, 90] {
        b.execute::<BillingAccount>(customer, owner, None, charge(secs), &meta())
            .await
            .unwrap();
    }
    let seen = a
        .load::<BillingAccount>(customer, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.balance_micros.0, start.balance_micros.0 - 3 * rate);
    // `b` charges again, then `a` charges on its (now stale) copy: the append conflicts and
    // the retry decides on the account with all of `b`'s charges.
    b.execute::<BillingAccount>(customer, owner, None, charge(60), &meta())
        .await
        .unwrap();
    let after = a
        .execute::<BillingAccount>(customer, owner, None, charge(61), &meta())
        .await
        .unwrap()
        .state;
    assert_eq!(after.balance_micros.0, start.balance_micros.0 - 6 * rate);
    let fresh = Executor::new(PgEventRepository::new(env.pool.clone()))
        .load::<BillingAccount>(customer, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        after, fresh,
        "the caught-up state is the state loaded from the log"
    );
    let seqs: Vec<i64> = sqlx::query_scalar(
        "SELECT sequence FROM events WHERE aggregate_type = 'billing_account' \
           AND aggregate_id = $1 ORDER BY sequence",
    )
    .bind(customer)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "no gap, no overwrite"
    );
}

/// A full aggregate cache keeps what was used last. With 100,000 campaign targets filling it,
/// moka's default admission (TinyLFU) refused each new call in favour of targets touched more
/// often, so every command on a call loaded it from the log again.
#[tokio::test]
async fn a_full_aggregate_cache_keeps_the_aggregates_used_last() {
    use vbin_app::Executor;
    use vbin_domain::{Outdial, OutdialCommand};
    use vbin_event_schema::{CustomerId, OutdialId};
    use vbin_eventlog::{CommandMeta, PgEventRepository};
    let env = Env::start().await;
    let (customer, _, _) = env.customer().await;
    let owner = CustomerId(customer);
    let exec = Executor::with_cache_capacity(PgEventRepository::new(env.pool.clone()), 50);
    let meta = || CommandMeta::caused_by("test", Uuid::now_v7(), "");
    let create = |exec: Executor| async move {
        let id = OutdialId::new();
        let cmd = OutdialCommand::Create {
            outdial_id: id,
            customer_id: owner,
            name: "cache".into(),
            at: chrono::Utc::now(),
        };
        exec.execute_new::<Outdial>(id.as_uuid(), owner, cmd, &meta())
            .await
            .unwrap();
        id.as_uuid()
    };
    // Older aggregates, each used a few times: popular by TinyLFU's count.
    let mut old = Vec::new();
    for _ in 0..60 {
        old.push(create(exec.clone()).await);
    }
    for _ in 0..3 {
        for id in &old {
            exec.load::<Outdial>(*id, Some(owner))
                .await
                .unwrap()
                .unwrap();
        }
    }
    exec.settle_cache();
    // The newest ones, used once each, must be what the cache holds now.
    let mut new = Vec::new();
    for _ in 0..20 {
        new.push(create(exec.clone()).await);
        exec.settle_cache();
    }
    let cached = new
        .iter()
        .filter(|id| {
            exec.inspect_cached::<Outdial, _>(**id, Some(owner), |_| ())
                .is_some()
        })
        .count();
    assert_eq!(cached, new.len(), "the aggregates used last were evicted");
}

/// A command refused on a stale cached state appends nothing, so no conflict reveals the
/// staleness: the executor must check the log before answering with the refusal. Here one
/// process holds a call as just created; another answers it; the first then connects it,
/// which only an answered call may do.
#[tokio::test]
async fn a_refusal_decided_on_a_stale_cached_state_is_decided_again_on_the_log() {
    use vbin_app::Executor;
    use vbin_domain::{Call, CallCommand, NewCall};
    use vbin_event_schema::call::{ChainExecution, ChainPurpose};
    use vbin_event_schema::{ActiveflowId, CallDirection, CallId, CallStatus, CustomerId};
    use vbin_eventlog::{CommandMeta, PgEventRepository};
    let env = Env::start().await;
    let (customer, _, _) = env.customer().await;
    let owner = CustomerId(customer);
    let a = Executor::new(PgEventRepository::new(env.pool.clone()));
    let b = Executor::new(PgEventRepository::new(env.pool.clone()));
    let meta = || CommandMeta::caused_by("test", Uuid::now_v7(), "");
    let call = CallId::new();
    let mut variables = serde_json::Map::new();
    // The sandbox far end (...0487) lets it ring until the dial timeout and would talk for a
    // minute once answered: nothing but `b` moves this call during the test.
    variables.insert("talk_seconds".into(), json!(60));
    let create = CallCommand::Create {
        call: NewCall {
            call_id: call,
            customer_id: owner,
            source: vbin_event_schema::E164::parse("+15550001000").unwrap(),
            destination: vbin_event_schema::E164::parse("+15550000487").unwrap(),
            variables,
            dial_timeout_ms: 60_000,
            campaign_id: None,
            direction: CallDirection::Outgoing,
            activeflow_id: None,
            sandbox: None,
            trunk_id: None,
            master_call_id: None,
        },
        at: chrono::Utc::now(),
    };
    let created = a
        .execute_new::<Call>(call.as_uuid(), owner, create, &meta())
        .await
        .unwrap()
        .state;
    assert_eq!(created.status, CallStatus::Dialing);
    for cmd in [
        CallCommand::MarkRinging {
            at: chrono::Utc::now(),
        },
        CallCommand::MarkAnswered {
            at: chrono::Utc::now(),
        },
    ] {
        b.execute::<Call>(call.as_uuid(), owner, None, cmd, &meta())
            .await
            .unwrap();
    }
    let chain = CallCommand::Chain {
        legs: vec![CallId::new()],
        execution: Some(ChainExecution {
            activeflow_id: ActiveflowId::new(),
            seq: 1,
        }),
        purpose: ChainPurpose::Connect,
        at: chrono::Utc::now(),
    };
    let done = a
        .execute::<Call>(call.as_uuid(), owner, None, chain, &meta())
        .await
        .expect("decided on the answered call, not on the cached one");
    assert_eq!(done.state.status, CallStatus::Progressing);
    assert_eq!(done.recorded.len(), 1, "{:?}", done.recorded);
}
