//! End-to-end tests of the read side (issue 3): projections, the query API with its Redis
//! cache, the audit trail. Real vbin processes, Postgres, nats-server and redis-server.

use crate::support::{reads_from, vbin, wait_until, wait_until_every, Env};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

fn status(v: &Value) -> &str {
    v["status"].as_str().unwrap_or_default()
}

/// Calls whose read-model row is not exactly what one application of each of their events gives:
/// position == last sequence, version == last sequence, body == last resource view.
async fn unconverged_calls(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT aggregate_id, max(sequence) AS seq, \
            (array_agg(resource ORDER BY sequence DESC))[1] AS resource \
           FROM events WHERE aggregate_type = 'call' GROUP BY aggregate_id) l \
         LEFT JOIN pp_calls p ON p.aggregate_id = l.aggregate_id \
         LEFT JOIN rm_calls r ON r.id = l.aggregate_id \
         WHERE p.sequence IS DISTINCT FROM l.seq OR r.version IS DISTINCT FROM l.seq \
            OR r.body IS DISTINCT FROM l.resource",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn wait_converged(env: &Env) {
    wait_until_every(
        "the read model to converge",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async { unconverged_calls(&env.pool).await == 0 },
    )
    .await
}

const TERMINAL: [&str; 5] = ["completed", "busy", "no_answer", "failed", "canceled"];

#[tokio::test]
async fn reads_follow_writes_with_pagination_and_tenant_isolation() {
    let env = Env::start().await;
    let (cust_a, tok_a, _) = env.customer().await;
    let api_a = env.client(&tok_a);
    let (_, tok_b, _) = env.customer().await;
    let api_b = env.client(&tok_b);

    let dests: Vec<String> = (0..23).map(|i| format!("+1555200{i:04}")).collect();
    let refs: Vec<&str> = dests.iter().map(String::as_str).collect();
    let ids = api_a
        .calls(&refs, json!({"variables": {"talk_seconds": 0}}))
        .await;

    // Every call shows up, once, newest first, across pages.
    let listed = wait_until(
        "every call to be listed",
        Duration::from_secs(10),
        || async {
            let l = api_a.all_pages("/v1.0/calls", 7).await;
            (l.len() == ids.len()).then_some(l)
        },
    )
    .await;
    let listed_ids: Vec<Uuid> = listed
        .iter()
        .map(|c| c["id"].as_str().unwrap().parse().unwrap())
        .collect();
    let mut expected = ids.clone();
    expected.sort();
    expected.reverse();
    assert_eq!(listed_ids, expected, "all calls, newest first, no repeats");
    assert!(listed
        .iter()
        .all(|c| c["customer_id"] == json!(cust_a.to_string())));

    // A single call follows its lifecycle to the end, as the log says.
    let id = ids[0];
    let v = api_a
        .wait_get(
            &format!("/v1.0/calls/{id}"),
            Duration::from_secs(15),
            |s, v| s == 200 && TERMINAL.contains(&status(v)),
        )
        .await;
    env.wait_call_end(id, Duration::from_secs(5)).await;
    // The read model catches up with the last event (the cache must not hold it back).
    let last = env.call_state(id).await;
    api_a
        .wait_get(
            &format!("/v1.0/calls/{id}"),
            Duration::from_secs(5),
            |_, v| *v == last,
        )
        .await;
    assert_eq!(v["id"], json!(id.to_string()));

    // Tenant isolation: B sees none of A's resources, and cannot tell they exist.
    let (s, e) = api_b.get(&format!("/v1.0/calls/{id}")).await;
    assert_eq!(
        (s, e["error"]["reason"].as_str()),
        (404, Some("not_found")),
        "{e}"
    );
    let (s, e) = api_b.get(&format!("/v1.0/calls/{}", Uuid::now_v7())).await;
    assert_eq!(s, 404, "{e}");
    assert!(api_b.all_pages("/v1.0/calls", 50).await.is_empty());
    let (s, _) = api_b
        .get(&format!("/v1.0/events?resource_type=call&resource_id={id}"))
        .await;
    assert_eq!(s, 404);
    let agents_a = api_a
        .wait_get("/v1.0/agents", Duration::from_secs(5), |s, v| {
            s == 200 && v["result"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
    let agent_a = agents_a["result"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(api_b.get(&format!("/v1.0/agents/{agent_a}")).await.0, 404);
    assert_eq!(api_a.get(&format!("/v1.0/agents/{agent_a}")).await.0, 200);
    let (s, e) = api_b
        .get(&format!(
            "/v1.0/events?resource_type=agent&resource_id={agent_a}"
        ))
        .await;
    assert_eq!(s, 404, "{e}");

    // Bad input is a 400 with the envelope, never a 500.
    for path in [
        "/v1.0/calls?page_size=0".to_string(),
        "/v1.0/calls?page_size=101".to_string(),
        "/v1.0/calls?page_size=ten".to_string(),
        "/v1.0/calls?page_token=%21%21%21".to_string(),
        "/v1.0/calls/not-a-uuid".to_string(),
        "/v1.0/events?resource_id=x".to_string(),
        format!("/v1.0/events?resource_type=planet&resource_id={id}"),
        "/v1.0/events?resource_type=call&resource_id=nope".to_string(),
    ] {
        let (s, e) = api_a.get(&path).await;
        assert_eq!(
            (s, e["error"]["reason"].as_str()),
            (400, Some("invalid_argument")),
            "{path}: {e}"
        );
    }
    assert_eq!(env.req(Method::GET, "/v1.0/calls", None, None).await.0, 401);

    // Customer: own view plus the webhook secret (exact at once, from the command side).
    let c = api_a
        .wait_found("/v1.0/customer", Duration::from_secs(5))
        .await;
    assert_eq!(c["id"], json!(cust_a.to_string()));
    let secret = c["webhook_secret"].as_str().unwrap().to_string();
    assert!(secret.len() >= 32);
    let (s, rotated) = api_a.rotate_webhook_secret().await;
    assert_eq!(s, 200, "{rotated}");
    let c = api_a.get("/v1.0/customer").await.1;
    assert_eq!(c["webhook_secret"], rotated["webhook_secret"]);
    assert_ne!(c["webhook_secret"], json!(secret));

    // Agents and access keys: created ones appear (without secrets), deleted ones go away.
    let ann = format!("ag{}", &Uuid::new_v4().simple().to_string()[..10]);
    let (s, agent) = api_a
        .create_agent(
            &ann,
            "password123",
            json!({"name": "Ann", "permission": "agent"}),
        )
        .await;
    assert_eq!(s, 200, "{agent}");
    let agent_id = agent["id"].as_str().unwrap().to_string();
    // A plain agent sees the customer, but not its webhook secret.
    let tok_ann = env.login(&ann, "password123").await.unwrap();
    let c_ann = env.client(&tok_ann).get("/v1.0/customer").await.1;
    assert_eq!(c_ann["id"], json!(cust_a.to_string()));
    assert!(c_ann.get("webhook_secret").is_none(), "{c_ann}");
    let a = api_a
        .wait_found(&format!("/v1.0/agents/{agent_id}"), Duration::from_secs(5))
        .await;
    assert_eq!(a["name"], "Ann");
    assert!(a.get("password_hash").is_none() && a.get("password").is_none());
    let (s, key) = api_a.post("/v1.0/accesskeys", json!({"name": "ci"})).await;
    assert_eq!(s, 200, "{key}");
    let key_id = key["id"].as_str().unwrap().to_string();
    let k = api_a
        .wait_found(
            &format!("/v1.0/accesskeys/{key_id}"),
            Duration::from_secs(5),
        )
        .await;
    assert!(
        k.get("token").is_none() && k.get("token_hash").is_none(),
        "{k}"
    );
    assert_eq!(api_a.all_pages("/v1.0/accesskeys", 10).await.len(), 1);
    // ... and are nobody else's.
    assert_eq!(
        api_b.get(&format!("/v1.0/accesskeys/{key_id}")).await.0,
        404
    );
    assert!(api_b.all_pages("/v1.0/accesskeys", 10).await.is_empty());
    let (s, e) = api_b
        .get(&format!(
            "/v1.0/events?resource_type=accesskey&resource_id={key_id}"
        ))
        .await;
    assert_eq!(s, 404, "{e}");
    let c_b = api_b.get("/v1.0/customer").await.1;
    assert_ne!(c_b["id"], json!(cust_a.to_string()));
    assert_ne!(c_b["webhook_secret"], c["webhook_secret"]);
    let (s, _) = api_a.delete_agent(&agent_id).await;
    assert_eq!(s, 200);
    api_a
        .wait_get(
            &format!("/v1.0/agents/{agent_id}"),
            Duration::from_secs(5),
            |s, _| s == 404,
        )
        .await;
}

#[tokio::test]
async fn audit_trail_shows_actor_data_and_before_state() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let id = api
        .calls(&["+15553000001"], json!({"variables": {"talk_seconds": 0}}))
        .await[0];
    env.wait_call_end(id, Duration::from_secs(10)).await;
    let log = env.events_of("call", id).await;

    let trail = api
        .all_pages(
            &format!("/v1.0/events?resource_type=call&resource_id={id}"),
            1,
        )
        .await;
    assert_eq!(trail.len(), log.len());
    for (i, (entry, (seq, ty, _))) in trail.iter().zip(&log).enumerate() {
        assert_eq!(entry["sequence"], json!(seq));
        assert_eq!(entry["event_type"], json!(ty));
        assert_eq!(entry["resource_type"], "call");
        assert_eq!(entry["resource_id"], json!(id.to_string()));
        assert!(entry["timestamp"].is_string() && entry["event_id"].is_string());
        assert_eq!(entry["data"]["type"], json!(ty), "{entry}");
        // before_state is the resource as the previous event left it.
        let before = if i == 0 {
            Value::Null
        } else {
            log[i - 1].2.clone()
        };
        assert_eq!(entry["before_state"], before, "entry {i}");
    }
    assert!(trail[0]["actor"].as_str().unwrap().starts_with("agent:"));
    assert_eq!(trail[1]["actor"], "system:sandbox-carrier");
    assert_eq!(trail[1]["before_state"]["status"], "dialing");

    // Agents live inside the customer aggregate; their trail is theirs alone.
    let (_, agent) = api
        .post(
            "/v1.0/agents",
            json!({"username": format!("ag{}", &Uuid::new_v4().simple().to_string()[..10]),
                   "password": "password123", "name": "Old name", "permission": "agent"}),
        )
        .await;
    let agent_id = agent["id"].as_str().unwrap();
    let (s, _) = api
        .put(
            &format!("/v1.0/agents/{agent_id}"),
            json!({"name": "New name", "permission": "agent"}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = api
        .get(&format!(
            "/v1.0/events?resource_type=agent&resource_id={agent_id}"
        ))
        .await;
    assert_eq!(s, 200, "{v}");
    let entries = v["result"].as_array().unwrap();
    let types: Vec<&str> = entries
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["agent_created", "agent_updated"]);
    assert_eq!(entries[1]["before_state"]["name"], "Old name");
    // Secrets never appear in the trail.
    let text = v.to_string();
    assert!(!text.contains("$argon2"), "password hash leaked: {text}");
}

#[tokio::test]
async fn projections_apply_each_event_once_with_several_instances_and_redelivery() {
    let env = Env::start().await;
    // Two more processes running only the projections share the durable consumers.
    let _p1 = env.spawn_platform_only(&["projections"]).await;
    let _p2 = env.spawn_platform_only(&["projections"]).await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);

    let mut ids = Vec::new();
    for batch in 0..8 {
        let dests: Vec<String> = (0..20)
            .map(|i| match i % 4 {
                0 => format!("+1555{batch:02}{i:02}0486"),
                1 => format!("+1555{batch:02}{i:02}0404"),
                _ => format!("+1555{batch:02}{i:02}1111"),
            })
            .collect();
        let refs: Vec<&str> = dests.iter().map(String::as_str).collect();
        ids.extend(
            api.calls(&refs, json!({"variables": {"talk_seconds": 0}}))
                .await,
        );
    }
    // Some calls are hung up by the customer while they ring.
    for id in ids.iter().step_by(5) {
        api.hangup(id).await;
    }
    for id in &ids {
        env.wait_call_end(*id, Duration::from_secs(20)).await;
    }
    env.wait_all_published(Duration::from_secs(20)).await;
    wait_converged(&env).await;
    let converged = || unconverged_calls(&env.pool);

    // Force redelivery of the whole stream: drop the durable consumers; the instances
    // recreate them and get every event again. Nothing may change.
    let applied_before: i64 =
        sqlx::query_scalar("SELECT sum(events_applied)::bigint FROM projection_checkpoints")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    env.redeliver_all(
        &["projection-calls", "projection-customers"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        converged().await,
        0,
        "redelivered events changed the read model"
    );
    let applied_after: i64 =
        sqlx::query_scalar("SELECT sum(events_applied)::bigint FROM projection_checkpoints")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(applied_before, applied_after, "an event was applied twice");
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(applied_after, total, "every event applied exactly once");
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_dead_letters")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(parked, 0);
}

/// A live batch holds its projection's lock (shared; replay's swap takes it exclusively)
/// before it waits for an aggregate's: the two are taken in one statement, and the other way
/// round a batch holding an aggregate could wait behind a queued swap that waits for another
/// batch waiting for that aggregate.
#[tokio::test]
async fn a_batch_waiting_for_an_aggregate_already_holds_its_projections_lock() {
    use vbin_projections::runtime::{hash32, projection_lock};
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let id = api.calls(&["+15550002000"], json!({})).await[0];
    wait_converged(&env).await;
    // Another session holds the call's aggregate lock, as another instance's batch would.
    let (k1, k2) = projection_lock("calls");
    let agg = hash32(id.as_bytes());
    let mut holder = env.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(k2)
        .bind(agg)
        .execute(&mut *holder)
        .await
        .unwrap();
    api.hangup(&id).await;
    // pg_locks shows advisory keys as oids (unsigned).
    let oid = |k: i32| k as u32 as i64;
    let waiter = || async {
        sqlx::query_scalar::<_, i32>(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
             AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 2",
        )
        .bind(oid(k2))
        .bind(oid(agg))
        .fetch_optional(&env.pool)
        .await
        .unwrap()
    };
    wait_until(
        "a batch to wait for the aggregate",
        Duration::from_secs(10),
        || async { waiter().await.is_some() },
    )
    .await;
    let pid = waiter().await.expect("a waiting batch");
    let shared: Vec<String> = sqlx::query_scalar(
        "SELECT mode FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = $1 \
         AND classid::bigint = $2 AND objid::bigint = $3 AND objsubid = 2",
    )
    .bind(pid)
    .bind(oid(k1))
    .bind(oid(k2))
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(shared, vec!["ShareLock".to_string()]);
    // Let go: the batch goes on and the read model follows, hangup included.
    holder.rollback().await.unwrap();
    env.wait_call_end(id, Duration::from_secs(10)).await;
    wait_converged(&env).await;
}

#[tokio::test]
async fn events_that_cannot_be_applied_are_parked_and_do_not_block() {
    let env = Env::start().await;
    let (cust, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let js = env.nats.client().await;
    // Make sure the stream exists (the platform creates it at start; wait for the first event).
    env.wait_all_published(Duration::from_secs(10)).await;
    let bogus = json!({
        "event_id": Uuid::now_v7(), "event_type": "call_created", "event_version": "2.0",
        "timestamp": "2026-01-01T00:00:00Z", "customer_id": cust, "aggregate_type": "call",
        "aggregate_id": Uuid::now_v7(), "sequence": 1, "global_position": 1,
        "metadata": {}, "data": {}, "resource": {"no": "view"}
    });
    let ns = env.installation().await.namespace;
    js.publish(
        ns.subject(&format!("{cust}.call.call_created")),
        bogus.to_string().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    js.publish(
        ns.subject(&format!("{cust}.call.garbage")),
        "not json".into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let id = api.calls(&["+15554000486"], json!({})).await[0];
    api.wait_get(
        &format!("/v1.0/calls/{id}"),
        Duration::from_secs(10),
        |s, v| s == 200 && status(v) == "busy",
    )
    .await;
    let parked: Vec<(String, String)> =
        sqlx::query_as("SELECT projection, error FROM projection_dead_letters ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(parked.len(), 2, "{parked:?}");
    assert!(parked.iter().all(|(p, _)| p == "calls"));
    assert!(
        parked.iter().any(|(_, e)| e.contains("no call view")),
        "{parked:?}"
    );
    assert!(
        parked.iter().any(|(_, e)| e.starts_with("undecodable")),
        "{parked:?}"
    );
}

/// A call that is answered and talks for a minute, read once it shows `progressing` (so the
/// query API has cached it); returns its id and GET path.
async fn cached_talking_call(env: &Env, tok: &str, destination: &str) -> (Uuid, String) {
    let api = env.client(tok);
    let id = env
        .calls(
            tok,
            &[destination],
            json!({"variables": {"talk_seconds": 60}}),
        )
        .await[0];
    let path = format!("/v1.0/calls/{id}");
    api.wait_get(&path, Duration::from_secs(10), |s, v| {
        s == 200 && status(v) == "progressing"
    })
    .await;
    api.get(&path).await; // now cached
    (id, path)
}

/// Waits until `cache_invalidations` is empty, polling every `every` for at most `within`.
async fn no_intents_left(env: &Env, what: &str, within: Duration, every: Duration) {
    wait_until_every(what, within, every, || async {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM cache_invalidations")
            .fetch_one(&env.pool)
            .await
            .unwrap();
        (left == 0).then_some(()).ok_or(left)
    })
    .await;
}

#[tokio::test]
async fn redis_outage_falls_back_to_postgres_and_serves_nothing_stale_after() {
    let mut env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let (id, path) = cached_talking_call(&env, &tok, "+15555000001").await;
    // With Redis up, a batch's invalidation intents are deleted by the projections right
    // after their tombstones (with the next batch, or on their own within 200 ms), not left
    // to the sweeper (intents 2 s old): the query API distrusts its cache over an intent
    // older than 1 s.
    no_intents_left(
        &env,
        "the invalidation intents to be cleared without the sweeper",
        Duration::from_secs(1),
        Duration::from_millis(50),
    )
    .await;
    let mut r = env.redis.conn().await;
    let cached: Option<String> = redis::cmd("GET")
        .arg(format!(
            "{}rm:rm_calls:{id}",
            env.installation().await.redis_prefix()
        ))
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(cached.unwrap().contains("progressing"));

    // Redis hangs (keeps its data, answers nothing) while the call ends.
    env.redis.pause(true);
    let api = env.client(&tok);
    let (s, _) = api.post(&format!("{path}/hangup"), json!({})).await;
    assert_eq!(s, 200);
    let v = api
        .wait_get(&path, Duration::from_secs(10), |s, v| {
            s == 200 && TERMINAL.contains(&status(v))
        })
        .await;
    assert_eq!(
        (status(&v), v["hangup_by"].as_str()),
        ("completed", Some("local"))
    );
    // Redis comes back with the old value still in it: it must never be served.
    env.redis.pause(false);
    for _ in 0..30 {
        let (s, v) = api.get(&path).await;
        assert_eq!((s, status(&v)), (200, "completed"), "stale value served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Redis answers reads but refuses writes (so the projection's invalidation fails and the
    // old value stays readable) while another call ends: the old value must never come back.
    let (_, path3) = cached_talking_call(&env, &tok, "+15555000003").await;
    let mut r = env.redis.conn().await;
    let refuse_writes = |on: bool| {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("min-replicas-to-write")
            .arg(if on { "1" } else { "0" })
            .to_owned()
    };
    refuse_writes(true).query_async::<()>(&mut r).await.unwrap();
    api.post(&format!("{path3}/hangup"), json!({})).await;
    api.wait_get(&path3, Duration::from_secs(10), |s, v| {
        s == 200 && status(v) == "completed"
    })
    .await;
    for _ in 0..40 {
        assert_eq!(
            status(&api.get(&path3).await.1),
            "completed",
            "stale value served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    refuse_writes(false)
        .query_async::<()>(&mut r)
        .await
        .unwrap();
    for _ in 0..40 {
        assert_eq!(
            status(&api.get(&path3).await.1),
            "completed",
            "stale value served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Redis dies: reads still work; it restarts empty: reads still correct.
    env.redis.stop();
    let id2 = env.calls(&tok, &["+15555000486"], json!({})).await[0];
    env.client(&tok)
        .wait_get(
            &format!("/v1.0/calls/{id2}"),
            Duration::from_secs(10),
            |s, v| s == 200 && status(v) == "busy",
        )
        .await;
    env.redis.resume();
    for _ in 0..10 {
        assert_eq!(status(&env.client(&tok).get(&path).await.1), "completed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(env.platform.log_path()).unwrap();
    assert!(
        log.contains("serving from postgres"),
        "the outage was not logged"
    );
    // Deferred invalidations are applied once Redis is back (sweeper, within seconds).
    no_intents_left(
        &env,
        "the pending invalidations to be applied",
        Duration::from_secs(10),
        Duration::from_millis(200),
    )
    .await;
}

#[tokio::test]
async fn replay_verifies_repairs_and_swaps_while_the_query_api_serves() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let dests: Vec<String> = (0..30).map(|i| format!("+1555600{i:04}")).collect();
    let refs: Vec<&str> = dests.iter().map(String::as_str).collect();
    let ids = api
        .calls(&refs, json!({"variables": {"talk_seconds": 0}}))
        .await;
    for id in &ids {
        env.wait_call_end(*id, Duration::from_secs(15)).await;
    }
    wait_converged(&env).await;
    let victim = ids[3];
    let path = format!("/v1.0/calls/{victim}");
    let good = api.get(&path).await.1; // cached too
    assert!(TERMINAL.contains(&status(&good)));

    // Damage the live read model behind the projection's back.
    let corrupt = || async {
        sqlx::query(
            "UPDATE rm_calls SET body = jsonb_set(body, '{status}', '\"bogus\"') WHERE id = $1",
        )
        .bind(victim)
        .execute(&env.pool)
        .await
        .unwrap();
    };
    corrupt().await;
    sqlx::query("DELETE FROM rm_agents")
        .execute(&env.pool)
        .await
        .unwrap();
    let (code, out) = vbin(&env, &["replay", "verify"]).await;
    assert_eq!(code, 1, "verify must fail on differences: {out}");
    assert!(
        out.contains(&format!("different rm_calls {victim}")),
        "{out}"
    );
    assert!(out.contains("missing_live rm_agents"), "{out}");
    // verify changed nothing.
    assert_eq!(unconverged_calls(&env.pool).await, 1);

    // The replayed tables get the live ones' indexes (the secondary ones are built after the
    // bulk load), whatever their names.
    let indexes = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT regexp_replace(pg_get_indexdef(i.indexrelid), ' INDEX \\S+ ON \\S+', ' INDEX ON') \
             FROM pg_index i WHERE i.indrelid = 'rm_calls'::regclass ORDER BY 1",
        )
        .fetch_all(&env.pool)
        .await
        .unwrap()
    };
    let live_indexes = indexes().await;
    assert!(live_indexes.len() >= 3, "{live_indexes:?}");

    // Full replay while clients keep writing and reading.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, http, base, tok) = (stop.clone(), env.http.clone(), env.url(""), tok.clone());
        tokio::spawn(async move {
            let (mut reads, mut created) = (0u32, Vec::<Uuid>::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = http
                    .post(format!("{base}/v1.0/calls"))
                    .bearer_auth(&tok)
                    .json(&json!({"source": "+15550001000", "destinations": ["+15556999486"]}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let v: Value = r.json().await.unwrap();
                created.push(v["calls"][0]["id"].as_str().unwrap().parse().unwrap());
                for p in [
                    "/v1.0/calls?page_size=5".to_string(),
                    format!("/v1.0/calls/{victim}"),
                ] {
                    let r = http
                        .get(format!("{base}{p}"))
                        .bearer_auth(&tok)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200, "read failed during replay: {p}");
                    reads += 1;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (reads, created)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, out) = vbin(&env, &["replay"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("calls:") && out.contains("swapped in"),
        "{out}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads, created) = load.await.unwrap();
    assert!(reads > 10 && !created.is_empty());
    for id in &created {
        env.wait_call_end(*id, Duration::from_secs(15)).await;
    }
    // The swapped-in tables carry on with live events, each applied once.
    wait_converged(&env).await;
    assert_eq!(
        api.get(&path).await.1,
        good,
        "repaired (and not served stale from Redis)"
    );
    assert_eq!(api.all_pages("/v1.0/agents", 10).await.len(), 1);
    let (code, out) = vbin(&env, &["replay", "verify"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 differences"), "{out}");
    assert_eq!(indexes().await, live_indexes);

    // A partial repair from a log position fixes what changed since then.
    corrupt().await;
    let from: i64 =
        sqlx::query_scalar("SELECT min(global_position) FROM events WHERE aggregate_id = $1")
            .bind(victim)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let (code, out) = vbin(
        &env,
        &[
            "replay",
            "--projection",
            "calls",
            "--from-position",
            &from.to_string(),
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    wait_converged(&env).await;
    assert_eq!(api.get(&path).await.1, good);
    assert_eq!(indexes().await, live_indexes);

    // Export and tail read the log as JSON lines.
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let (code, out) = vbin(&env, &["events", "export"]).await;
    assert_eq!(code, 0);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as i64, total);
    let (_, out) = vbin(
        &env,
        &["events", "tail", "-n", "3", "--aggregate-type", "customer"],
    )
    .await;
    assert!(
        out.lines().count() <= 3
            && out
                .lines()
                .all(|l| l.contains("\"aggregate_type\":\"customer\"")),
        "{out}"
    );
}

#[tokio::test]
async fn log_readers_follow_numeric_commit_order() {
    // Transaction 1000 committed after 999: every in-order reader (relay, replay, export) must
    // return 999 first; sorting the text form would put "1000" first and skip 999 for ever.
    let env = Env::start().await;
    let customer = Uuid::now_v7();
    for (tx, seq) in [(999i64, 1i64), (1000, 2)] {
        sqlx::query(
            "INSERT INTO events (event_id, tx_id, customer_id, aggregate_type, aggregate_id, \
             sequence, event_type, event_version, payload, metadata, resource) \
             VALUES ($1, $2::text::xid8, $3, 'ordertest', $3, $4, 'probe', '1.0', '{}', '{}', '{}')",
        )
        .bind(Uuid::now_v7())
        .bind(tx.to_string())
        .bind(customer)
        .bind(seq)
        .execute(&env.pool)
        .await
        .unwrap();
    }
    let filter = vbin_eventlog::log::LogFilter {
        aggregate_type: Some("ordertest".into()),
        ..Default::default()
    };
    let mut cursor = vbin_eventlog::log::LogCursor::start();
    let mut conn = env.pool.acquire().await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        for e in vbin_eventlog::log::read_after(&mut conn, &filter, &mut cursor, 1)
            .await
            .unwrap()
        {
            seen.push(e.sequence);
        }
    }
    assert_eq!(seen, [1, 2], "commit order by number, nothing skipped");
}

/// The replica's state as the query API sees it (the `vbin_read_replica_usable` gauge).
async fn replica_usable(env: &Env) -> bool {
    crate::support::metric(&env.metrics().await, "vbin_read_replica_usable") == Some(1.0)
}

#[tokio::test]
async fn reads_use_the_replica_yet_a_customer_reads_its_own_writes_while_it_lags() {
    let primary = crate::support::PgCluster::start();
    let replica = crate::support::PgCluster::replica_of(&primary);
    let read_url = format!("{}/{{db}}", replica.base_url());
    let env = Env::start_on(
        &[
            ("DATABASE_READ_URL", read_url.as_str()),
            ("VBIN_READ_REPLICA_MAX_LAG_MS", "3000"),
            ("VBIN_READ_REPLICA_WAIT_MS", "200"),
        ],
        Some(primary),
    )
    .await;
    let (_, tok_a, _) = env.customer().await;
    let (_, tok_b, _) = env.customer().await;
    let (a, b) = (env.client(&tok_a), env.client(&tok_b));
    wait_until("the replica to be used", Duration::from_secs(20), || {
        replica_usable(&env)
    })
    .await;
    // B has written nothing: B's reads go to the replica.
    let before = reads_from(&env, "replica").await;
    let (s, _) = b.get("/v1.0/flows").await;
    assert_eq!(s, 200);
    assert!(reads_from(&env, "replica").await > before);

    // The replica stops replaying. A creates a flow: A's reads wait for the replica, then
    // read the primary, so A finds it (on a replica read it would stay a 404).
    replica.sql("SELECT pg_wal_replay_pause()");
    let flow = a
        .create(
            "/v1.0/flows",
            json!({"name": "mine", "actions": [{"type": "answer"}]}),
        )
        .await;
    let id = flow["id"].as_str().unwrap().to_string();
    let got = a
        .wait_get(
            &format!("/v1.0/flows/{id}"),
            Duration::from_secs(10),
            |s, _| s == 200,
        )
        .await;
    assert_eq!(got["name"], "mine", "{got}");
    let (_, list) = a.get("/v1.0/flows").await;
    assert_eq!(list["result"][0]["id"], id.as_str(), "{list}");
    let m = env.metrics().await;
    assert!(
        crate::support::metric(
            &m,
            "vbin_reads_total{server=\"primary\",reason=\"write_not_replayed\"}"
        )
        .is_some_and(|n| n > 0.0),
        "A's reads did not fall back to the primary"
    );
    // Once the replica is more than 3 s behind, nobody reads it.
    wait_until(
        "the replica to be dropped",
        Duration::from_secs(20),
        || async { !replica_usable(&env).await },
    )
    .await;
    let before = reads_from(&env, "primary").await;
    let (s, _) = b.get("/v1.0/flows").await;
    assert_eq!(s, 200);
    assert!(reads_from(&env, "primary").await > before);

    // Replay resumes: the replica catches up and is read again (A's mark is passed), with
    // A's flow in it.
    replica.sql("SELECT pg_wal_replay_resume()");
    wait_until(
        "the replica to be used again",
        Duration::from_secs(20),
        || replica_usable(&env),
    )
    .await;
    let before = reads_from(&env, "replica").await;
    let (s, v) = a.get("/v1.0/flows?page_size=5").await;
    assert_eq!((s, &v["result"][0]["id"]), (200, &json!(id)), "{v}");
    assert!(reads_from(&env, "replica").await > before);

    // The replica goes away: reads go to the primary, nobody sees an error.
    replica.crash();
    wait_until(
        "the replica to be dropped",
        Duration::from_secs(20),
        || async { !replica_usable(&env).await },
    )
    .await;
    for c in [&a, &b] {
        let (s, v) = c.get("/v1.0/flows").await;
        assert_eq!(s, 200, "{v}");
    }
}

/// The query API's near cache (issue 23's read path): a row read from Redis is served from the
/// process's memory; any write to its key in Redis, by whoever, takes it out at once, a burst
/// of writes raced by readers leaves every reader on the last one, and when the tracking
/// connection drops or Redis hangs, nothing held is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_near_cache_follows_every_write_to_redis_and_forgets_all_when_tracking_drops() {
    use serde_json::value::RawValue;
    use vbin_projections::cache::{Cache, CachedRow};
    let redis = crate::support::Redis::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let cache = Cache::new(client.clone(), "vbin:near-test:");
    let customer = Uuid::new_v4();
    let row = |v: i64| CachedRow {
        v,
        c: customer,
        b: RawValue::from_string(format!("{{\"n\":{v}}}"))
            .unwrap()
            .into(),
    };
    let version = |r: Option<CachedRow>| r.map(|r| r.v);
    let id = Uuid::new_v4();
    cache.fill("rm_calls", id, &row(1)).await.unwrap();
    wait_until("the row held near", Duration::from_secs(5), || async {
        version(cache.get("rm_calls", id).await.unwrap()) == Some(1)
            && cache.near_holds("rm_calls", id)
    })
    .await;

    // Another client (a projection elsewhere) tombstones the key with a plain SET.
    let mut other = redis.conn().await;
    redis::cmd("SET")
        .arg(format!("vbin:near-test:rm:rm_calls:{id}"))
        .arg(r#"{"v":2,"t":1}"#)
        .query_async::<()>(&mut other)
        .await
        .unwrap();
    let_go(&cache, id, "the write to take the row out", 1).await;
    assert_eq!(version(cache.get("rm_calls", id).await.unwrap()), None);

    // Readers race a burst of writes: once the writes stop, every reader sees the last.
    for round in 0..20 {
        let id = Uuid::new_v4();
        cache.fill("rm_calls", id, &row(1)).await.unwrap();
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move {
                    for _ in 0..200 {
                        let _ = cache.get("rm_calls", id).await;
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for v in 2..=100 {
            cache.fill("rm_calls", id, &row(v)).await.unwrap();
        }
        for r in readers {
            r.await.unwrap();
        }
        wait_until(
            format!("round {round}: the last write read"),
            Duration::from_secs(1),
            || async { version(cache.get("rm_calls", id).await.unwrap()) == Some(100) },
        )
        .await;
        for _ in 0..20 {
            assert_eq!(
                version(cache.get("rm_calls", id).await.unwrap()),
                Some(100),
                "round {round}: an older row came back"
            );
        }
    }

    // The tracking connection is killed: nothing is held until it is back.
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut other)
        .await
        .unwrap();
    let tracking: Vec<&str> = list
        .lines()
        .filter(|l| {
            l.split(' ')
                .any(|f| f.starts_with("flags=") && f.contains('t'))
        })
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .collect();
    assert_eq!(tracking.len(), 1, "one tracking connection: {list}");
    cache.fill("rm_calls", id, &row(3)).await.unwrap();
    held_near(&cache, id, "the row held near").await;
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(tracking[0])
        .query_async::<()>(&mut other)
        .await
        .unwrap();
    let_go(&cache, id, "the lost tracking connection noticed", 1).await;
    held_near(&cache, id, "the row held near again").await;

    // Redis hangs: within the PING's period nothing is served from memory either.
    redis.pause(true);
    let_go(&cache, id, "the hung redis noticed", 2).await;
    assert!(cache.get("rm_calls", id).await.is_err());
    redis.pause(false);
}

/// Waits until row `id` of `rm_calls` is read and held in `cache`'s near cache.
async fn held_near(cache: &vbin_projections::cache::Cache, id: Uuid, what: &str) {
    wait_until(what, Duration::from_secs(5), || async {
        cache.get("rm_calls", id).await.is_ok() && cache.near_holds("rm_calls", id)
    })
    .await;
}

/// Waits at most `secs` until `cache`'s near cache no longer holds row `id` of `rm_calls`.
async fn let_go(cache: &vbin_projections::cache::Cache, id: Uuid, what: &str, secs: u64) {
    wait_until(what, Duration::from_secs(secs), || async {
        !cache.near_holds("rm_calls", id)
    })
    .await;
}
