//! Installations sharing NATS and Redis (issue 22): each has its own stream, subjects and Redis
//! keys; a stream that belongs to another installation is refused at start; an event another
//! installation published is skipped (said once), never parked or applied; an installation
//! from before namespaces keeps its stream.

use crate::support::*;
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;
use vbin_event_schema::INSTALLATION_HEADER;

/// 30 calls (talk 1 s) and a 10-target campaign on `env` at once; waits until every call has
/// ended and the campaign completed. Returns the customer's token and the calls' ids.
async fn load(env: &Env) -> (String, Vec<Uuid>) {
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let plan = api
        .create(
            "/v1.0/outplans",
            json!({"name": "p", "source": "+15550001000", "dial_timeout_ms": 3000,
                   "try_interval_ms": 300, "max_try_count": 1}),
        )
        .await;
    let od = id_of(&api.create("/v1.0/outdials", json!({"name": "l"})).await);
    for i in 0..10 {
        api.create(
            &format!("/v1.0/outdials/{od}/targets"),
            json!({"destinations": [format!("+1555100{i:04}")], "variables": {"talk_seconds": 0}}),
        )
        .await;
    }
    let camp = id_of(
        &api.create(
            "/v1.0/campaigns",
            json!({"name": "c", "outplan_id": id_of(&plan), "outdial_id": od,
                   "end_handle": "stop", "max_concurrent_calls": 5}),
        )
        .await,
    );
    assert_eq!(api.set_campaign_status(&camp, "running").await.0, 200);
    let requests = (0..6).map(|r| {
        let tok = tok.clone();
        async move {
            let dest: Vec<String> = (0..5).map(|i| format!("+155520{r:02}{i:03}")).collect();
            let dest: Vec<&str> = dest.iter().map(String::as_str).collect();
            env.calls(&tok, &dest, json!({"variables": {"talk_seconds": 1}}))
                .await
        }
    });
    let ids: Vec<Uuid> = futures::future::join_all(requests)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(ids.len(), 30);
    for id in &ids {
        let v = env.wait_call_end(*id, Duration::from_secs(60)).await;
        assert_eq!(v["status"], "completed", "{v}");
    }
    let done = api
        .wait_get(
            &format!("/v1.0/campaigns/{camp}"),
            Duration::from_secs(60),
            |_, v| v["status"] == "completed",
        )
        .await;
    assert_eq!(
        (&done["dialed"], &done["answered"]),
        (&json!(10), &json!(10)),
        "{done}"
    );
    (tok, ids)
}

/// `msgs` (the stream, read once every event of the log was on it) holds each event once and
/// nothing else but `strays` events of another installation. (The log may have grown since.)
async fn assert_stream_is_the_log(
    env: &Env,
    msgs: &[(String, vbin_event_schema::PublishedEvent)],
    strays: usize,
) {
    let log: std::collections::HashSet<String> = env
        .log_event_ids()
        .await
        .iter()
        .map(Uuid::to_string)
        .collect();
    let ids: std::collections::HashSet<&String> = msgs.iter().map(|m| &m.0).collect();
    assert_eq!(ids.len(), msgs.len(), "an event published twice");
    let foreign = ids.iter().filter(|id| !log.contains(**id)).count();
    assert_eq!(
        foreign, strays,
        "events on the stream that are not in the log"
    );
}

/// Every read model of `env` equals its replay and nothing is parked.
async fn assert_replays_clean(env: &Env) {
    let (code, out) = vbin(env, &["replay", "verify"]).await;
    assert_eq!(code, 0, "{out}");
    let parked: i64 = env
        .scalar(
            "SELECT count(*) FROM projection_dead_letters WHERE $1",
            true,
        )
        .await;
    assert_eq!(parked, 0);
}

/// Runs `vbin serve` on `env`'s database and servers with `vars`; returns its exit code and
/// output once it exits (it must within 60 s).
fn serve_until_exit(env: &Env, vars: &[(&str, &str)]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vbin"))
        .arg("serve")
        .env("DATABASE_URL", &env.db_url)
        .env("REDIS_URL", env.redis.url())
        .env("NATS_URL", env.nats.url())
        .env("VBIN_HTTP_ADDR", "127.0.0.1:0")
        .env("VBIN_AUDIOSOCKET_ADDR", "127.0.0.1:0")
        .env("VBIN_SIP_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("VBIN_ADMIN_TOKEN", &env.admin)
        .env("VBIN_JWT_SECRET", "test-jwt-secret")
        .env("RUST_LOG", "warn")
        .envs(vars.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return (status.code().unwrap_or(-1), text);
        }
        if t.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("vbin serve did not exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn two_installations_on_one_nats_and_one_redis_keep_to_their_own() {
    let a = Env::start_shared(&[]).await;
    let b = Env::start_shared(&[]).await;
    let (ia, ib) = (a.installation().await, b.installation().await);
    assert_ne!(ia.namespace, ib.namespace);
    assert_ne!(ia.redis_prefix(), ib.redis_prefix());

    // An event b published, found on a's stream (a copied config, a misrouted publisher): a's
    // consumers skip it as provably not theirs; nothing parks it, nothing applies it.
    a.wait_all_published(Duration::from_secs(10)).await;
    let (cust, cust_tok, _) = a.customer().await;
    let stray = Uuid::now_v7();
    let body = json!({
        "event_id": Uuid::now_v7(), "event_type": "call_created", "event_version": "2.0",
        "timestamp": "2026-01-01T00:00:00Z", "customer_id": cust, "aggregate_type": "call",
        "aggregate_id": stray, "sequence": 1, "global_position": 1,
        "metadata": {}, "data": {}, "resource": {"type": "call", "id": stray}
    });
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(INSTALLATION_HEADER, ib.id.to_string().as_str());
    a.nats
        .client()
        .await
        .publish_with_headers(
            ia.namespace.subject(&format!("{cust}.call.call_created")),
            headers,
            body.to_string().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    // Both under load at the same time: every call of each completes.
    let ((ta, calls_a), (tb, calls_b)) = tokio::join!(load(&a), load(&b));

    // Neither sees the other's rows, from Postgres or from the cache (read each row twice:
    // the second read is a cache hit).
    for (env, tok, own, other) in [(&a, &ta, &calls_a, &calls_b), (&b, &tb, &calls_b, &calls_a)] {
        let api = env.client(tok);
        for id in own.iter().take(3) {
            for _ in 0..2 {
                assert_eq!(api.get(&format!("/v1.0/calls/{id}")).await.0, 200);
            }
        }
        for id in other.iter().take(3) {
            assert_eq!(api.get(&format!("/v1.0/calls/{id}")).await.0, 404);
        }
    }
    let mut r = a.redis.conn().await;
    for (i, own, other) in [(&ia, &calls_a, &calls_b), (&ib, &calls_b, &calls_a)] {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}rm:rm_calls:*", i.redis_prefix()))
            .query_async(&mut r)
            .await
            .unwrap();
        assert!(
            own.iter()
                .take(3)
                .all(|id| keys.iter().any(|k| k.ends_with(&id.to_string()))),
            "the rows read are cached under the installation's prefix: {keys:?}"
        );
        assert!(
            !other
                .iter()
                .any(|id| keys.iter().any(|k| k.ends_with(&id.to_string()))),
            "no row of the other installation under this prefix: {keys:?}"
        );
    }

    // Each stream holds exactly its own log (and a's the stray event), each read model equals
    // its own replay, nothing parked.
    for (env, i) in [(&a, &ia), (&b, &ib)] {
        let msgs = env.wait_all_published(Duration::from_secs(30)).await;
        assert_stream_is_the_log(env, &msgs, usize::from(i.id == ia.id)).await;
        assert_replays_clean(env).await;
    }
    let (s, _) = a
        .client(&cust_tok)
        .get(&format!("/v1.0/calls/{stray}"))
        .await;
    assert_eq!(s, 404, "the stray event was not applied");
    let rows: i64 = a
        .scalar("SELECT count(*) FROM rm_calls WHERE id = $1", stray)
        .await;
    assert_eq!(rows, 0, "the stray event was not applied");
    let log = std::fs::read_to_string(a.platform.log_path()).unwrap();
    let said = log
        .matches("skipped events another installation published")
        .count();
    assert_eq!(said, 1, "said once, not once per consumer or per event");
    assert!(log.contains(&ib.id.to_string()));

    // A process of a pointed at b's namespace (a copied VBIN_NATS_NAMESPACE) is refused,
    // naming both installations.
    let (code, out) = serve_until_exit(&a, &[("VBIN_NATS_NAMESPACE", ib.namespace.as_str())]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&ia.id.to_string()) && out.contains(&ib.id.to_string()),
        "{out}"
    );
    assert!(out.contains(&ib.namespace.stream()), "{out}");

    a.forget_shared().await;
    b.forget_shared().await;
}

#[tokio::test]
async fn an_installation_from_before_namespaces_keeps_its_stream() {
    let mut env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let before = env
        .calls(
            &tok,
            &["+15550002000", "+15550002001"],
            json!({"variables": {"talk_seconds": 0}}),
        )
        .await;
    for id in &before {
        env.wait_call_end(*id, Duration::from_secs(30)).await;
    }
    let msgs = env.wait_all_published(Duration::from_secs(10)).await;
    env.platform.kill();

    // What an installation of old had: the stream VBIN_EVENTS on vbin.events.>, its events
    // without an installation header, no owner in its description, no installation row.
    let js = env.nats.client().await;
    let old = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "VBIN_EVENTS".into(),
            subjects: vec!["vbin.events.>".into()],
            duplicate_window: Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .unwrap();
    for (id, e) in &msgs {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", id.as_str());
        js.publish_with_headers(
            format!(
                "vbin.events.{}.{}.{}",
                e.customer_id, e.aggregate_type, e.event_type
            ),
            h,
            serde_json::to_vec(e).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    js.delete_stream(env.installation().await.namespace.stream())
        .await
        .unwrap();
    sqlx::query("DROP TABLE installation")
        .execute(&env.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 14")
        .execute(&env.pool)
        .await
        .unwrap();
    drop(old);

    // The new version: the database had events, so it keeps the stream of old and claims it.
    env.restart().await;
    let i = env.installation().await;
    assert_eq!(i.namespace.as_str(), "events");
    let mut stream = js.get_stream("VBIN_EVENTS").await.unwrap();
    let desc = stream.info().await.unwrap().config.description.clone();
    assert_eq!(desc, Some(format!("vbin installation {}", i.id)));

    let after = env
        .calls(
            &tok,
            &["+15550002002", "+15550002003"],
            json!({"variables": {"talk_seconds": 0}}),
        )
        .await;
    for id in &after {
        let v = env.wait_call_end(*id, Duration::from_secs(30)).await;
        assert_eq!(v["status"], "completed", "{v}");
    }
    // Every event once on the stream of old: nothing lost, nothing published twice.
    let msgs = env.wait_all_published(Duration::from_secs(10)).await;
    assert_stream_is_the_log(&env, &msgs, 0).await;
    let last = stream.info().await.unwrap().state.last_sequence;
    let m = stream.get_raw_message(last).await.unwrap();
    assert_eq!(
        m.headers.get(INSTALLATION_HEADER).map(|v| v.as_str()),
        Some(i.id.to_string().as_str()),
        "new events name their installation"
    );
    let api = env.client(&tok);
    let listed = api.all_pages("/v1.0/calls", 10).await;
    assert_eq!(listed.len(), 4);
    assert_replays_clean(&env).await;
}

/// A stream deleted while vbin runs is not made again behind the operator's back (a cluster
/// recovering can answer "not found" for a moment; a fresh stream in its place would lose the
/// events on the old one): the calls wait, and a restart makes the stream and goes on with
/// them.
#[tokio::test]
async fn a_stream_deleted_while_running_is_made_again_only_by_a_restart() {
    let mut env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let first = env
        .calls(
            &tok,
            &["+15550002010"],
            json!({"variables": {"talk_seconds": 0}}),
        )
        .await[0];
    env.wait_call_end(first, Duration::from_secs(30)).await;
    let js = env.nats.client().await;
    let name = env.installation().await.namespace.stream();
    js.delete_stream(&name).await.unwrap();

    let during = env
        .calls(
            &tok,
            &["+15550002011"],
            json!({"variables": {"talk_seconds": 0}}),
        )
        .await[0];
    // The relay and every consumer retry twice a second: long enough for them to have made it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        js.get_stream(&name).await.is_err(),
        "the stream was made again while vbin ran"
    );
    let log = std::fs::read_to_string(env.platform.log_path()).unwrap();
    assert!(
        log.contains("restart vbin if the stream was deleted"),
        "the log says what to do"
    );

    env.restart().await;
    let v = env.wait_call_end(during, Duration::from_secs(30)).await;
    assert_eq!(v["status"], "completed", "{v}");
    js.get_stream(&name)
        .await
        .expect("the restart made the stream");
}
