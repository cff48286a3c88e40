//! AI voice agents through the API: assistants (validation, the write-only sealed engine key,
//! tenancy) and conversations on calls (start, the per-customer limit, stop).

use crate::support::*;
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

const KEY: &str = "sk-test-Zq81a9-do-not-leak";

fn assistant() -> Value {
    json!({
        "name": "bakery",
        "init_prompt": "You answer the phone for a bakery. Be brief.",
        "engine_model": "openai.gpt-4o-mini",
        "engine_url": "http://127.0.0.1:9/llm",
        "engine_key": KEY,
        "tool_names": ["hangup", "stop"],
    })
}

fn id_of(v: &Value) -> Uuid {
    v["id"].as_str().expect("an id").parse().expect("a uuid")
}

#[tokio::test]
async fn assistants_are_validated_keep_their_key_sealed_and_belong_to_their_customer() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);

    for (bad, why) in [
        (
            json!({"engine_model": "openai.gpt-4o-mini", "engine_url": "http://x"}),
            "name",
        ),
        (
            json!({"name": "a", "engine_model": "gpt-4o"}),
            "engine_model",
        ),
        (
            json!({"name": "a", "engine_model": "openai.gpt-4o"}),
            "engine_url is required",
        ),
        (
            json!({"name": "a", "engine_model": "local.gemma", "engine_url": "http://x"}),
            "only for openai",
        ),
        (
            json!({"name": "a", "engine_model": "openai.m", "engine_url": "file:///etc/passwd"}),
            "engine_url",
        ),
        (
            json!({"name": "a", "engine_model": "local.gemma", "tool_names": ["fly"]}),
            "tool_names",
        ),
        (
            json!({"name": "a", "engine_model": "local.gemma", "tool_names": ["connect"]}),
            "connect",
        ),
        (
            json!({"name": "a", "engine_model": "local.gemma", "stt_type": "kaldi"}),
            "stt_type",
        ),
        (
            json!({"name": "a", "engine_model": "local.gemma", "vad_config": {"min_speech_ms": 5}}),
            "min_speech_ms",
        ),
        (
            json!({"name": "a", "engine_model": "local.gemma", "engine_key": "a\u{0007}b"}),
            "engine_key",
        ),
        (
            json!({"name": "a", "engine_model": "local.gemma", "surprise": 1}),
            "surprise",
        ),
    ] {
        let (s, v) = api.post("/v1.0/ais", bad.clone()).await;
        assert_eq!(s, 400, "{bad} -> {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(why),
            "{why}: {v}"
        );
    }

    let ai = api.create("/v1.0/ais", assistant()).await;
    let id = id_of(&ai);
    assert_eq!(ai["type"], "ai");
    assert_eq!(ai["engine_key_set"], true);
    assert_eq!(ai["stt_language"], "en-US");
    assert_eq!(
        ai["vad_config"],
        json!({"barge_in": true, "min_speech_ms": 200, "no_input_ms": 8000})
    );
    assert_eq!(ai["tool_names"], json!(["hangup", "stop"]));
    assert!(!ai.to_string().contains(KEY), "{ai}");
    let path = format!("/v1.0/ais/{id}");
    assert_eq!(api.wait_found(&path, Duration::from_secs(10)).await, ai);

    // The key is nowhere in clear: not in the event log, the audit trail or the read model.
    let in_log: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE payload::text LIKE '%' || $1 || '%'")
            .bind(KEY)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(in_log, 0);
    let (_, audit) = api
        .get(&format!("/v1.0/events?resource_type=ai&resource_id={id}"))
        .await;
    assert!(
        !audit.to_string().contains(KEY) && audit.to_string().contains("ai_created"),
        "{audit}"
    );

    // An update without a key keeps it; an empty key removes it.
    let mut changed = assistant();
    changed["engine_key"] = Value::Null;
    changed["name"] = json!("bakery 2");
    let (s, v) = api.put(&path, changed.clone()).await;
    assert_eq!(
        (s, &v["engine_key_set"], &v["name"]),
        (200, &json!(true), &json!("bakery 2")),
        "{v}"
    );
    changed["engine_key"] = json!("");
    let (_, v) = api.put(&path, changed).await;
    assert_eq!(v["engine_key_set"], false, "{v}");

    // Another customer sees nothing and changes nothing.
    let (_, tok2, _) = env.customer().await;
    let api2 = env.client(&tok2);
    assert_eq!(api2.get(&path).await.0, 404);
    assert_eq!(api2.put(&path, assistant()).await.0, 404);
    assert_eq!(api2.delete(&path).await.0, 404);

    let (s, v) = api.delete(&path).await;
    assert_eq!(s, 200, "{v}");
    wait_until(
        "the deleted assistant to go",
        Duration::from_secs(10),
        || async { api.get(&path).await.0 == 404 },
    )
    .await;
}

#[tokio::test]
async fn conversations_start_on_answered_calls_within_the_customers_limit_and_stop() {
    let env = Env::start_with_env(&[("VBIN_AI_MAX_LIVE", "1")]).await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let ai = id_of(&api.create("/v1.0/ais", assistant()).await);
    let call = api.answered_call("+15550008000", 20).await;
    let start =
        |ai: Uuid, call: Uuid| json!({"ai_id": ai, "reference_type": "call", "reference_id": call});

    // Unknown assistant or call: 404; a call that is not answered: 409; bad bodies: 400.
    assert_eq!(
        api.post("/v1.0/aicalls", start(Uuid::now_v7(), call))
            .await
            .0,
        404
    );
    assert_eq!(
        api.post("/v1.0/aicalls", start(ai, Uuid::now_v7())).await.0,
        404
    );
    let busy = api.calls(&["+15550000486"], json!({})).await[0];
    env.wait_call_end(busy, Duration::from_secs(10)).await;
    let (s, v) = api.post("/v1.0/aicalls", start(ai, busy)).await;
    assert_eq!(s, 409, "{v}");
    let mut conference = start(ai, call);
    conference["reference_type"] = json!("conference");
    assert_eq!(api.post("/v1.0/aicalls", conference).await.0, 400);

    let (s, c) = api.post("/v1.0/aicalls", start(ai, call)).await;
    assert_eq!(s, 200, "{c}");
    assert_eq!(c["type"], "aicall");
    assert_eq!(c["ai_id"], ai.to_string());
    assert_eq!(c["reference_id"], call.to_string());
    assert!(c["activeflow_id"].is_null());
    let aicall = id_of(&c);
    // The customer's limit (1 here): 429.
    let other = api.answered_call("+15550008001", 20).await;
    let (s, v) = api.post("/v1.0/aicalls", start(ai, other)).await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(v["error"]["reason"], "limit_reached", "{v}");

    let listed = api
        .wait_get(
            &format!("/v1.0/aicalls?reference_id={call}"),
            Duration::from_secs(10),
            |_, v| v["result"][0]["id"] == aicall.to_string(),
        )
        .await;
    assert_eq!(listed["result"].as_array().unwrap().len(), 1);

    let (s, v) = api
        .post(&format!("/v1.0/aicalls/{aicall}/stop"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["status"].as_str(), v["end_reason"].as_str()),
        (Some("terminated"), Some("stopped_by_api"))
    );
    let (s, again) = api
        .post(&format!("/v1.0/aicalls/{aicall}/stop"), json!({}))
        .await;
    assert_eq!(
        (s, &again["tm_end"]),
        (200, &v["tm_end"]),
        "stopping twice changes nothing"
    );
    // Its slot is free again.
    let (s, v) = api.post("/v1.0/aicalls", start(ai, other)).await;
    assert_eq!(s, 200, "{v}");
    let (_, msgs) = api
        .get(&format!("/v1.0/aimessages?aicall_id={aicall}"))
        .await;
    assert_eq!(msgs["result"], json!([]));
    assert_eq!(api.get("/v1.0/aimessages?aicall_id=nope").await.0, 400);
}
