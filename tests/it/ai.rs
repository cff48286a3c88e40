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

/// The call's (first) conversation and its messages, in the order they were said.
/// The ended conversation of `call` and its messages. The flow (or call) a test waits for can
/// end before the conversation's own end reaches its read model: wait for that too.
async fn conversation(api: &Client<'_>, call: Uuid) -> (Value, Vec<Value>) {
    let aicall = wait_until(
        "the conversation's end in its read model",
        Duration::from_secs(10),
        || async {
            let (_, list) = api.get(&format!("/v1.0/aicalls?reference_id={call}")).await;
            let aicall = list["result"][0].clone();
            if aicall["tm_end"].is_null() {
                Err(aicall.to_string())
            } else {
                Ok(aicall)
            }
        },
    )
    .await;
    let id = aicall["id"].as_str().expect("a conversation");
    let (_, msgs) = api.get(&format!("/v1.0/aimessages?aicall_id={id}")).await;
    let msgs = msgs["result"].as_array().expect("messages").clone();
    (aicall, msgs)
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
        json!({"barge_in": true, "min_speech_ms": 200, "no_input_ms": 8000, "end_of_turn_ms": 500})
    );
    assert_eq!(ai["tool_names"], json!(["hangup", "stop"]));
    assert!(!ai.to_string().contains(KEY), "{ai}");
    let path = format!("/v1.0/ais/{id}");
    assert_eq!(api.wait_found(&path, Duration::from_secs(10)).await, ai);

    // The key is nowhere in clear: not in the event log, the audit trail or the read model.
    api.assert_sealed(KEY, "ai", &id.to_string(), "ai_created")
        .await;

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

/// A new customer of `env` (its token) and its assistant (id) talking to the model server at
/// `url`, offered `tools`.
async fn assistant_of_new_customer(env: &Env, url: &str, tools: Value) -> (String, Uuid) {
    let (_, tok, _) = env.customer().await;
    let mut body = assistant();
    body["engine_url"] = json!(url);
    body["tool_names"] = tools;
    let ai = id_of(&env.client(&tok).create("/v1.0/ais", body).await);
    (tok, ai)
}

/// Places a sandbox call to `number` whose flow talks with an assistant (`ai_talk` with
/// `option`), then says that sales will call back and hangs up; the far end follows `script`.
async fn ai_talk_call(env: &Env, tok: &str, number: &str, option: Value, script: Value) -> Uuid {
    env.calls(
        tok,
        &[number],
        json!({"actions": [
            {"type": "ai_talk", "option": option},
            {"type": "talk", "option": {"text": "sales will call you back"}},
            {"type": "hangup"},
        ], "sandbox": {"script": script}}),
    )
    .await[0]
}

/// What the fake model server was asked: the bearer and the messages of each request.
type Asked = std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>;

/// The streamed reply of a scripted model: `(delta, finish_reason)` chunks.
type Reply = Vec<(Value, Value)>;

/// A reply that says `parts` and stops.
fn saying(parts: &[&str]) -> Reply {
    let mut r: Reply = parts
        .iter()
        .map(|t| (json!({"content": t}), Value::Null))
        .collect();
    r.push((json!({}), json!("stop")));
    r
}

/// An OpenAI-compatible chat-completions server (the usual cloud engine's protocol, faked):
/// greets when the conversation has no caller turn yet, then answers the caller with the
/// opening hours, remembers them (`variable_set`) and ends the conversation (`stop`).
async fn fake_model(greeting: &'static [&'static str]) -> (String, Asked) {
    scripted_model(move |messages| {
        let users = messages.iter().filter(|m| m["role"] == "user").count();
        let answered = messages.iter().any(|m| m["role"] == "tool");
        if users == 0 {
            saying(greeting)
        } else if !answered {
            vec![
                (json!({"content": "We open at nine. "}), Value::Null),
                (json!({"content": "Goodbye!"}), Value::Null),
                (json!({"tool_calls": [
                    {"index": 0, "id": "c1", "type": "function", "function": {"name": "variable_set", "arguments": "{\"key\": \"hours\", "}},
                ]}), Value::Null),
                (json!({"tool_calls": [
                    {"index": 0, "function": {"arguments": "\"value\": \"nine\"}"}},
                    {"index": 1, "id": "c2", "type": "function", "function": {"name": "stop", "arguments": "{}"}},
                ]}), Value::Null),
                (json!({}), json!("tool_calls")),
            ]
        } else {
            saying(&[])
        }
    })
    .await
}

/// An OpenAI-compatible chat-completions server streaming what `script` replies to each
/// request's messages.
async fn scripted_model(
    script: impl Fn(&[Value]) -> Reply + Clone + Send + Sync + 'static,
) -> (String, Asked) {
    use axum::response::IntoResponse;
    let asked: Asked = Default::default();
    let log = asked.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let (log, script) = (log.clone(), script.clone());
            async move {
                let req: Value = serde_json::from_str(&body).unwrap();
                let bearer = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                log.lock().unwrap().push((bearer, req.clone()));
                let messages = req["messages"].as_array().cloned().unwrap_or_default();
                let mut sse = String::new();
                for (delta, finish) in script(&messages) {
                    sse += &format!(
                        "data: {}\n\n",
                        json!({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
                    );
                }
                sse += "data: [DONE]\n\n";
                ([("content-type", "text/event-stream")], sse).into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, asked)
}

#[tokio::test]
async fn a_flow_talks_with_an_assistant_that_hears_the_caller_answers_and_hands_back() {
    let (url, asked) = fake_model(&["Hello, this is the bakery. ", "How can I help you?"]).await;
    let env = Env::start().await;
    let (tok, ai) = assistant_of_new_customer(&env, &url, json!(["variable_set", "stop"])).await;
    let api = env.client(&tok);
    // The caller asks once the greeting is over (however late it began on a loaded machine: at
    // a fixed 5 s it once talked over its end); the flow goes on after the conversation.
    let call = ai_talk_call(
        &env,
        &tok,
        "+15550008100",
        json!({"ai_id": ai}),
        json!([
            {"at_ms": 0, "heard_ms": 1000, "quiet_ms": 1500, "say": "When do you open?"},
            {"at_ms": 40000, "hangup": true},
        ]),
    )
    .await;
    let af = crate::flows::ended_flow(&env, &tok, call, Duration::from_secs(40)).await;
    assert_eq!(
        crate::flows::executed(&af),
        ["ai_talk", "talk", "hangup"],
        "{af}"
    );
    let talk = &af["executed_actions"][0];
    assert!(talk["error"].is_null(), "{af}");
    assert_eq!(af["variables"]["hours"], "nine", "{af}");

    let (aicall, msgs) = conversation(&api, call).await;
    assert_eq!(
        (aicall["status"].as_str(), aicall["end_reason"].as_str()),
        (Some("terminated"), Some("stopped")),
        "{aicall}"
    );
    assert_eq!(aicall["activeflow_id"], af["id"]);
    let said: Vec<(&str, &str)> = msgs
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(
        said[0],
        (
            "assistant",
            "Hello, this is the bakery. How can I help you?"
        ),
        "{said:?}"
    );
    assert_eq!(said[1].0, "user", "{said:?}");
    assert!(
        said[1].1.to_lowercase().contains("open"),
        "Whisper heard the caller: {said:?}"
    );
    assert!(
        said.iter()
            .any(|(r, c)| *r == "tool" && c.starts_with("variable_set")),
        "{said:?}"
    );
    let answer = msgs
        .iter()
        .rev()
        .find(|m| m["role"] == "assistant")
        .unwrap();
    assert_eq!(answer["content"], "We open at nine. Goodbye!", "{said:?}");
    assert_eq!(answer["interrupted"], false);
    let latency = &answer["latency"];
    for part in [
        "stt_ms",
        "llm_first_token_ms",
        "tts_first_audio_ms",
        "voice_to_voice_ms",
    ] {
        assert!(latency[part].is_u64(), "{part}: {latency}");
    }
    println!("latency of the answer: {latency}");

    // The engine got the sealed key in clear, the system prompt, and what the caller said.
    let asked = asked.lock().unwrap();
    assert!(asked
        .iter()
        .all(|(bearer, _)| bearer == &format!("Bearer {KEY}")));
    let second = &asked[1].1["messages"];
    assert_eq!(second[0]["role"], "system");
    assert_eq!(
        second[0]["content"],
        "You answer the phone for a bakery. Be brief."
    );
    assert!(
        second.to_string().to_lowercase().contains("open"),
        "{second}"
    );
}

/// The `webhook_send` tool: what the model sends reaches the customer's webhook endpoint
/// signed like its webhooks, and the model hears that it was received.
#[tokio::test]
async fn the_assistant_sends_what_the_caller_ordered_to_the_customers_webhook() {
    let (url, asked) = scripted_model(|messages| {
        let users = messages.iter().filter(|m| m["role"] == "user").count();
        let tools = messages.iter().filter(|m| m["role"] == "tool").count();
        match (users, tools) {
            (0, _) => saying(&["Bakery, what would you like?"]),
            (_, 0) => vec![
                (
                    json!({"tool_calls": [{"index": 0, "id": "w1", "type": "function",
                    "function": {"name": "webhook_send",
                                 "arguments": "{\"data\": {\"order\": \"two loaves\"}}"}}]}),
                    Value::Null,
                ),
                (json!({}), json!("tool_calls")),
            ],
            (_, 1) => vec![
                (json!({"content": "Your order is in."}), Value::Null),
                (
                    json!({"tool_calls": [{"index": 0, "id": "s1", "type": "function",
                    "function": {"name": "stop", "arguments": "{}"}}]}),
                    Value::Null,
                ),
                (json!({}), json!("tool_calls")),
            ],
            _ => saying(&[]),
        }
    })
    .await;
    let env = Env::start().await;
    let (hook, seen) = crate::webhooks::receiver(0).await;
    let (_, tok, _) = env.customer_with(json!({"webhook_uri": hook})).await;
    let secret = crate::webhooks::webhook_secret(&env, &tok).await;
    let mut body = assistant();
    body["engine_url"] = json!(url);
    body["tool_names"] = json!(["webhook_send", "stop"]);
    let api = env.client(&tok);
    let ai = id_of(&api.create("/v1.0/ais", body).await);
    let call = env
        .calls(
            &tok,
            &["+15550008150"],
            json!({"actions": [{"type": "ai_talk", "option": {"ai_id": ai}}, {"type": "hangup"}],
                   "sandbox": {"script": [
                {"at_ms": 0, "heard_ms": 1000, "quiet_ms": 1500, "say": "Two loaves of bread please."},
                {"at_ms": 40000, "hangup": true},
            ]}}),
        )
        .await[0];
    crate::flows::ended_flow(&env, &tok, call, Duration::from_secs(40)).await;
    let (aicall, msgs) = conversation(&api, call).await;
    assert_eq!(aicall["end_reason"], "stopped", "{aicall}");
    let tool = msgs
        .iter()
        .find(|m| m["role"] == "tool")
        .expect("a tool message");
    assert!(
        tool["content"]
            .as_str()
            .unwrap()
            .ends_with("-> ok: received (200 OK)"),
        "{tool}"
    );
    // The model was told so.
    let third = asked.lock().unwrap()[2].1.clone();
    assert!(
        third["messages"]
            .to_string()
            .contains("ok: received (200 OK)"),
        "{third}"
    );
    // The customer got it, signed.
    let sent: Vec<(axum::http::HeaderMap, Vec<u8>)> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(h, _, _)| crate::webhooks::header(h, "x-voipbin-event") == "aicall_webhook_send")
        .map(|(h, b, _)| (h.clone(), b.clone()))
        .collect();
    assert_eq!(sent.len(), 1);
    crate::webhooks::verify(&secret, &sent[0].0, &sent[0].1);
    let v: Value = serde_json::from_slice(&sent[0].1).unwrap();
    assert_eq!(v["data"]["data"], json!({"order": "two loaves"}), "{v}");
    assert_eq!(v["data"]["aicall_id"], aicall["id"], "{v}");
    assert_eq!(v["data"]["call_id"], json!(call), "{v}");

    // Both sides of the conversation are also transcripts of the call, in order.
    let (_, list) = api
        .get(&format!("/v1.0/transcribes?reference_id={call}"))
        .await;
    let tr = &list["result"][0];
    assert_eq!(tr["aicall_id"], aicall["id"], "{list}");
    let tr = api
        .wait_get(
            &format!("/v1.0/transcribes/{}", id_of(tr)),
            Duration::from_secs(10),
            |_, v| v["status"] == "completed",
        )
        .await;
    let (_, ts) = api
        .get(&format!("/v1.0/transcripts?transcribe_id={}", id_of(&tr)))
        .await;
    let got: Vec<(&str, &str)> = ts["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["direction"].as_str().unwrap(),
                t["message"].as_str().unwrap(),
            )
        })
        .collect();
    let said: Vec<(&str, &str)> = msgs
        .iter()
        .filter(|m| m["role"] != "tool")
        .map(|m| {
            let side = if m["role"] == "user" { "in" } else { "out" };
            (side, m["content"].as_str().unwrap())
        })
        .collect();
    assert_eq!(got, said, "{ts}");
    assert_eq!(got[0], ("out", "Bakery, what would you like?"));
    assert_eq!(got.last().unwrap(), &("out", "Your order is in."));
}

/// The greeting is made while the call rings: the model is asked for it before the call is
/// answered, once, and the conversation says it.
#[tokio::test]
async fn the_greeting_is_prepared_from_the_ringing_call() {
    let greeted: std::sync::Arc<std::sync::Mutex<Vec<chrono::DateTime<chrono::Utc>>>> =
        Default::default();
    let g = greeted.clone();
    let (url, _) = scripted_model(move |messages| {
        if messages.iter().all(|m| m["role"] != "user") {
            g.lock().unwrap().push(chrono::Utc::now());
        }
        saying(&["Bakery, ", "how can I help?"])
    })
    .await;
    let env = Env::start().await;
    let (tok, ai) = assistant_of_new_customer(&env, &url, json!([])).await;
    let api = env.client(&tok);
    let call = ai_talk_call(
        &env,
        &tok,
        "+15550008170",
        json!({"ai_id": ai}),
        json!([{"at_ms": 4000, "hangup": true}]),
    )
    .await;
    crate::flows::ended_flow(&env, &tok, call, Duration::from_secs(30)).await;
    let (aicall, msgs) = conversation(&api, call).await;
    let started: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(aicall["tm_create"].clone()).expect("started");
    let greeted = greeted.lock().unwrap().clone();
    assert_eq!(greeted.len(), 1, "asked once for the greeting: {greeted:?}");
    // Before the conversation even started (the sandbox rings only 0.5 s: the ask may come
    // just after the answer, while the flow gets to its ai_talk).
    assert!(
        greeted[0] < started,
        "asked at {} before the conversation at {started}",
        greeted[0]
    );
    assert_eq!(msgs[0]["role"], "assistant");
    assert_eq!(msgs[0]["content"], "Bakery, how can I help?", "{msgs:?}");
}

/// The model's `hangup` tool: the goodbye is said, then the call hangs up (the flow ends
/// with it: nothing after the `ai_talk` runs).
#[tokio::test]
async fn the_assistant_hangs_up_after_its_goodbye() {
    let (url, _) = scripted_model(|messages| {
        let users = messages.iter().filter(|m| m["role"] == "user").count();
        let tools = messages.iter().filter(|m| m["role"] == "tool").count();
        match (users, tools) {
            (0, _) => saying(&["Bakery, how can I help?"]),
            (_, 0) => vec![
                (json!({"content": "Goodbye, have a nice day!"}), Value::Null),
                (
                    json!({"tool_calls": [{"index": 0, "id": "h1", "type": "function",
                    "function": {"name": "hangup", "arguments": "{}"}}]}),
                    Value::Null,
                ),
                (json!({}), json!("tool_calls")),
            ],
            _ => saying(&[]),
        }
    })
    .await;
    let env = Env::start().await;
    let (tok, ai) = assistant_of_new_customer(&env, &url, json!(["hangup"])).await;
    let api = env.client(&tok);
    let call = ai_talk_call(
        &env,
        &tok,
        "+15550008180",
        json!({"ai_id": ai}),
        json!([
            {"at_ms": 0, "heard_ms": 1000, "quiet_ms": 1500, "say": "That is all, thank you."},
            {"at_ms": 40000, "hangup": true},
        ]),
    )
    .await;
    let af = crate::flows::ended_flow(&env, &tok, call, Duration::from_secs(30)).await;
    assert_eq!(crate::flows::executed(&af), ["ai_talk"], "{af}");
    let c = api
        .wait_get(
            &format!("/v1.0/calls/{call}"),
            Duration::from_secs(10),
            |_, v| v["status"] == "completed",
        )
        .await;
    assert_eq!(c["hangup_by"], "local", "{c}");
    let (aicall, msgs) = conversation(&api, call).await;
    assert_eq!(aicall["end_reason"], "hangup", "{aicall}");
    let last = msgs
        .iter()
        .rev()
        .find(|m| m["role"] == "assistant")
        .unwrap();
    assert_eq!(last["content"], "Goodbye, have a nice day!", "{msgs:?}");
    assert_eq!(last["interrupted"], false);
}

/// A model server that answers with an error (here 503 with an OpenAI-style error body): the
/// caller hears the apology, the conversation ends `engine_failed` with the server's message,
/// and the flow goes on.
#[tokio::test]
async fn a_model_error_reply_is_an_apology_with_the_reason() {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|| async {
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                [("content-type", "application/json")],
                r#"{"error": {"message": "the model is overloaded", "type": "server_error"}}"#,
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let env = Env::start().await;
    let (tok, ai) = assistant_of_new_customer(&env, &url, json!([])).await;
    let api = env.client(&tok);
    let call = ai_talk_call(
        &env,
        &tok,
        "+15550008190",
        json!({"ai_id": ai}),
        json!([{"at_ms": 30000, "hangup": true}]),
    )
    .await;
    let af = crate::flows::ended_flow(&env, &tok, call, Duration::from_secs(30)).await;
    assert_eq!(
        crate::flows::executed(&af),
        ["ai_talk", "talk", "hangup"],
        "{af}"
    );
    let error = af["executed_actions"][0]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains("503") && error.contains("the model is overloaded"),
        "{af}"
    );
    let (aicall, msgs) = conversation(&api, call).await;
    assert_eq!(aicall["end_reason"], "engine_failed", "{aicall}");
    assert_eq!(
        msgs[0]["content"], "Sorry, I cannot answer right now.",
        "{msgs:?}"
    );
}

/// A caller who says nothing is asked again once, then the conversation ends (`no_input`)
/// and the flow goes on.
#[tokio::test]
async fn a_silent_caller_is_asked_again_then_the_flow_goes_on() {
    let (url, _) = scripted_model(|_| saying(&["Bakery, how can I help?"])).await;
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let mut body = assistant();
    body["engine_url"] = json!(url);
    body["vad_config"] = json!({"no_input_ms": 2000});
    let ai = id_of(&api.create("/v1.0/ais", body).await);
    let call = ai_talk_call(
        &env,
        &tok,
        "+15550008160",
        json!({"ai_id": ai}),
        json!([{"at_ms": 40000, "hangup": true}]),
    )
    .await;
    let af = crate::flows::ended_flow(&env, &tok, call, Duration::from_secs(40)).await;
    assert_eq!(
        crate::flows::executed(&af),
        ["ai_talk", "talk", "hangup"],
        "{af}"
    );
    assert!(af["executed_actions"][0]["error"].is_null(), "{af}");
    let (aicall, msgs) = conversation(&api, call).await;
    assert_eq!(aicall["end_reason"], "no_input", "{aicall}");
    let said: Vec<(&str, &str)> = msgs
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(
        said,
        [
            ("assistant", "Bakery, how can I help?"),
            ("assistant", "Are you still there?")
        ]
    );
}

#[tokio::test]
async fn the_caller_talking_over_the_assistant_stops_it_and_its_message_keeps_what_was_heard() {
    const GREETING: [&str; 3] = [
        "Hello, this is the bakery on Main Street, open every day of the week. ",
        "Today we have fresh bread, apple pies, chocolate cakes and cinnamon rolls. ",
        "Tell me what you would like and I will note your order for pick up.",
    ];
    let (url, _) = fake_model(&GREETING).await;
    let env = Env::start().await;
    let (tok, ai) = assistant_of_new_customer(&env, &url, json!(["variable_set", "stop"])).await;
    let api = env.client(&tok);
    let call = env
        .calls(
            &tok,
            &["+15550008200"],
            json!({"actions": [
                {"type": "recording_start"},
                {"type": "ai_talk", "option": {"ai_id": ai}},
                {"type": "hangup"},
            ], "sandbox": {"script": [
                // Well into the greeting (about 12 s of speech): after 2.5 s of it, however
                // late it began (at a fixed 3 s, then 6 s, the assistant had once not begun
                // yet on a loaded machine).
                {"at_ms": 0, "heard_ms": 2500, "say": "Please stop. When do you open?"},
                {"at_ms": 40000, "hangup": true},
            ]}}),
        )
        .await[0];
    crate::flows::ended_flow(&env, &tok, call, Duration::from_secs(40)).await;
    let (_, msgs) = conversation(&api, call).await;
    let first = &msgs[0];
    assert_eq!(
        (first["role"].as_str(), first["interrupted"].as_bool()),
        (Some("assistant"), Some(true)),
        "{msgs:?}"
    );
    let heard = first["content"].as_str().unwrap();
    let full = GREETING.concat();
    assert!(
        !heard.is_empty() && full.starts_with(heard) && heard.len() < full.len() - 20,
        "{heard:?}"
    );
    assert_eq!(msgs[1]["role"], "user", "{msgs:?}");

    // In the recording, the assistant's side goes quiet soon after the caller starts talking
    // over it (and stays quiet while the caller goes on).
    let (_, wav) = crate::flows::stored_recording(&env, &tok, call).await;
    let (left, right) = crate::flows::stereo(&wav);
    let rms = |s: &[i16]| {
        (s.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / s.len().max(1) as f64).sqrt()
    };
    let ms = |m: usize| m * 16;
    let onset = (0..left.len() / ms(20))
        .map(|i| i * ms(20))
        .find(|&i| i > ms(1000) && rms(&left[i..i + ms(20)]) > 500.0)
        .expect("the caller speaks");
    // Speaking shortly before (a window, not an instant: on a loaded machine a sentence may
    // start a little late after the one before).
    let spoke = (0..10)
        .map(|k| onset - ms(2000) + k * ms(200))
        .map(|i| rms(&right[i..i + ms(200)]))
        .fold(0.0, f64::max);
    assert!(spoke > 300.0, "the assistant was speaking (rms {spoke})");
    let quiet = rms(&right[onset + ms(600)..onset + ms(1500)]);
    assert!(
        quiet < 50.0,
        "the assistant still spoke (rms {quiet}) 600 ms after the caller began"
    );
}

#[tokio::test]
async fn an_unreachable_model_is_an_apology_and_the_flow_goes_on() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let mut body = assistant();
    body["engine_url"] = json!(format!("http://127.0.0.1:{}", free_port()));
    // Other engines than the platform's: the apology is spoken by espeak-ng.
    body["stt_type"] = json!("pocketsphinx");
    body["tts_type"] = json!("espeak");
    let ai = id_of(&api.create("/v1.0/ais", body).await);
    let call = ai_talk_call(
        &env,
        &tok,
        "+15550008300",
        json!({"ai_id": ai, "duration": 60}),
        json!([{"at_ms": 30000, "hangup": true}]),
    )
    .await;
    let af = crate::flows::ended_flow(&env, &tok, call, Duration::from_secs(30)).await;
    assert_eq!(
        crate::flows::executed(&af),
        ["ai_talk", "talk", "hangup"],
        "{af}"
    );
    let error = af["executed_actions"][0]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.starts_with("ai_talk:"), "{af}");
    let (aicall, msgs) = conversation(&api, call).await;
    assert_eq!(aicall["end_reason"], "engine_failed", "{aicall}");
    assert_eq!(
        msgs[0]["content"], "Sorry, I cannot answer right now.",
        "{msgs:?}"
    );
}

/// Lowercase words of `s` (letters and digits).
fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

#[tokio::test]
async fn the_embedded_model_answers_the_caller_by_voice_end_to_end() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let ai = id_of(
        &api.create(
            "/v1.0/ais",
            json!({
                "name": "bakery (offline)",
                "init_prompt": "You answer the phone for Rosa's bakery. It opens at nine in the morning.",
                "engine_model": "local.gemma-3-270m",
                "vad_config": {"no_input_ms": 3000},
            }),
        )
        .await,
    );
    let call = env
        .calls(
            &tok,
            &["+15550008400"],
            json!({"actions": [
                {"type": "recording_start"},
                {"type": "ai_talk", "option": {"ai_id": ai, "duration": 40}},
                {"type": "hangup"},
            ], "sandbox": {"script": [
                {"at_ms": 0, "heard_ms": 1000, "quiet_ms": 1500, "say": "What time do you open?"},
                {"at_ms": 60000, "hangup": true},
            ]}}),
        )
        .await[0];
    crate::flows::ended_flow(&env, &tok, call, Duration::from_secs(60)).await;
    let (aicall, msgs) = conversation(&api, call).await;
    let said: Vec<(String, String)> = msgs
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().into(),
                m["content"].as_str().unwrap().into(),
            )
        })
        .collect();
    println!("conversation ({}): {said:?}", aicall["end_reason"]);
    let assistant: Vec<&String> = said
        .iter()
        .filter(|(r, _)| r == "assistant")
        .map(|(_, c)| c)
        .collect();
    assert!(
        assistant.len() >= 2 && assistant.iter().all(|c| !c.is_empty()),
        "{said:?}"
    );
    assert!(
        said.iter()
            .any(|(r, c)| r == "user" && c.to_lowercase().contains("open")),
        "{said:?}"
    );

    // What the caller heard is what the model said: the platform's side of the recording,
    // transcribed by Whisper, holds the words of the assistant's messages.
    let (_, wav) = crate::flows::stored_recording(&env, &tok, call).await;
    let (_, right) = crate::flows::stereo(&wav);
    let whisper = vbin_media::stt::whisper::Whisper::from_models_dir(
        &vbin_media::tts::piper::default_models_dir(),
    )
    .expect("Whisper (scripts/models installs it)");
    let mut heard = Vec::new();
    for part in crate::flows::bursts(&right) {
        for chunk in part.chunks(16_000 * 25) {
            heard.extend(words(&whisper.transcribe(chunk).unwrap().text));
        }
    }
    let spoken: Vec<String> = assistant.iter().flat_map(|c| words(c)).collect();
    let found = spoken.iter().filter(|w| heard.contains(w)).count();
    println!("heard {heard:?}");
    assert!(
        found * 10 >= spoken.len() * 7,
        "only {found} of the {} words said were heard: {heard:?} vs {spoken:?}",
        spoken.len()
    );
}

#[tokio::test]
async fn an_engine_the_platform_cannot_run_fails_the_conversation_with_the_reason() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let mut body = assistant();
    body["tts_type"] = json!("openai");
    let ai = id_of(&api.create("/v1.0/ais", body).await);
    let call = api.answered_call("+15550008500", 20).await;
    let (s, c) = api
        .post(
            "/v1.0/aicalls",
            json!({"ai_id": ai, "reference_type": "call", "reference_id": call}),
        )
        .await;
    assert_eq!(s, 200, "{c}");
    let path = format!("/v1.0/aicalls/{}", c["id"].as_str().unwrap());
    let ended = api
        .wait_get(&path, Duration::from_secs(20), |_, v| {
            v["status"] == "terminated"
        })
        .await;
    assert_eq!(ended["end_reason"], "failed", "{ended}");
    assert!(
        ended["end_detail"]
            .as_str()
            .unwrap_or_default()
            .contains("VBIN_TTS_URL"),
        "{ended}"
    );
}

#[tokio::test]
async fn a_conversation_whose_media_process_is_killed_ends_with_its_messages_and_the_flow_goes_on()
{
    let (url, _) = fake_model(&["Hello, this is the bakery. ", "How can I help you?"]).await;
    let mut env = Env::start().await;
    let (tok, ai) = assistant_of_new_customer(&env, &url, json!(["hangup", "stop"])).await;
    let call = ai_talk_call(
        &env,
        &tok,
        "+15550008600",
        json!({"ai_id": ai}),
        json!([{"at_ms": 60000, "hangup": true}]),
    )
    .await;
    // Killed once the greeting is said (a message recorded).
    let api = env.client(&tok);
    let aicall = wait_until("the greeting", Duration::from_secs(30), || async {
        let (_, list) = api.get(&format!("/v1.0/aicalls?reference_id={call}")).await;
        let id = list["result"][0]["id"].as_str()?.to_string();
        let (_, msgs) = api.get(&format!("/v1.0/aimessages?aicall_id={id}")).await;
        (!msgs["result"].as_array()?.is_empty()).then_some(id)
    })
    .await;
    drop(api);
    env.platform.kill();
    env.platform = env.spawn_platform().await;
    let api = env.client(&tok);
    let af = crate::flows::ended_flow(&env, &tok, call, Duration::from_secs(60)).await;
    assert_eq!(
        crate::flows::executed(&af),
        ["ai_talk", "talk", "hangup"],
        "{af}"
    );
    let (c, msgs) = conversation(&api, call).await;
    assert_eq!(c["id"], aicall);
    assert_eq!(
        (c["status"].as_str(), c["end_reason"].as_str()),
        (Some("terminated"), Some("failed")),
        "{c}"
    );
    assert_eq!(
        msgs[0]["content"], "Hello, this is the bakery. How can I help you?",
        "{msgs:?}"
    );
}
