//! Security: tenant isolation over every endpoint that takes an id (customer A's token against
//! customer B's resources answers 404 and changes nothing), and bad credentials.

use crate::support::{id_of, wait_until, Env};
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test]
async fn another_tenants_ids_are_not_found_and_nothing_changes() {
    let env = Env::start().await;
    let (b, tok_b, _) = env.customer().await;
    let api_b = env.client(&tok_b);
    let (_, tok_a, _) = env.customer().await;
    let api_a = env.client(&tok_a);
    // B's resources, one of each kind.
    let name = format!("ag{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let ann = json!({"name": "Ann", "permission": "agent"});
    let (s, agent) = api_b.create_agent(&name, "password123", ann).await;
    assert_eq!(s, 200, "{agent}");
    let agent = id_of(&agent);
    let key = id_of(&api_b.create("/v1.0/accesskeys", json!({"name": "k"})).await);
    let call = api_b.answered_call("+15550007000", 30).await.to_string();
    let plan = id_of(
        &api_b
            .create(
                "/v1.0/outplans",
                json!({"name": "p", "source": "+15550001000", "dial_timeout_ms": 1500,
                   "try_interval_ms": 300, "max_try_count": 1}),
            )
            .await,
    );
    let outdial = id_of(&api_b.create("/v1.0/outdials", json!({"name": "o"})).await);
    let campaign = id_of(
        &api_b
            .create(
                "/v1.0/campaigns",
                json!({"name": "c", "outplan_id": plan, "outdial_id": outdial}),
            )
            .await,
    );
    let queue = id_of(
        &api_b
            .create(
                "/v1.0/queues",
                json!({"name": "q", "routing_method": "linear", "agent_ids": [agent],
                   "wait_timeout_ms": 2500}),
            )
            .await,
    );
    let transcribe = id_of(
        &api_b
            .create(
                "/v1.0/transcribes",
                json!({"reference_type": "call", "reference_id": call, "language": "en-US"}),
            )
            .await,
    );

    // Every endpoint with one of B's ids, with A's token and a valid body: 404.
    let matrix: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/v1.0/calls/{call}"), None),
        (
            Method::POST,
            format!("/v1.0/calls/{call}/hangup"),
            Some(json!({})),
        ),
        (Method::GET, format!("/v1.0/agents/{agent}"), None),
        (
            Method::PUT,
            format!("/v1.0/agents/{agent}"),
            Some(json!({"name": "x", "permission": "admin"})),
        ),
        (
            Method::PUT,
            format!("/v1.0/agents/{agent}/status"),
            Some(json!({"status": "available"})),
        ),
        (Method::DELETE, format!("/v1.0/agents/{agent}"), None),
        (Method::GET, format!("/v1.0/accesskeys/{key}"), None),
        (Method::DELETE, format!("/v1.0/accesskeys/{key}"), None),
        (Method::GET, format!("/v1.0/outplans/{plan}"), None),
        (Method::GET, format!("/v1.0/outdials/{outdial}"), None),
        (
            Method::GET,
            format!("/v1.0/outdials/{outdial}/targets"),
            None,
        ),
        (
            Method::POST,
            format!("/v1.0/outdials/{outdial}/targets"),
            Some(json!({"destinations": ["+15550002000"]})),
        ),
        (Method::GET, format!("/v1.0/campaigns/{campaign}"), None),
        (
            Method::PUT,
            format!("/v1.0/campaigns/{campaign}/status"),
            Some(json!({"status": "running"})),
        ),
        (
            Method::POST,
            "/v1.0/campaigns".into(),
            Some(json!({"name": "c", "outplan_id": plan, "outdial_id": outdial})),
        ),
        (Method::GET, format!("/v1.0/queues/{queue}"), None),
        (
            Method::PUT,
            format!("/v1.0/queues/{queue}"),
            Some(
                json!({"name": "q2", "routing_method": "ringall", "agent_ids": [], "wait_timeout_ms": 1000}),
            ),
        ),
        (
            Method::POST,
            format!("/v1.0/queues/{queue}/calls"),
            Some(json!({"call_id": call})),
        ),
        (Method::GET, format!("/v1.0/transcribes/{transcribe}"), None),
        (
            Method::POST,
            format!("/v1.0/transcribes/{transcribe}/stop"),
            Some(json!({})),
        ),
        (
            Method::POST,
            "/v1.0/transcribes".into(),
            Some(
                json!({"reference_type": "call", "reference_id": call, "language": "en-US", "direction": "out"}),
            ),
        ),
    ];
    let mut wrong = Vec::new();
    for (m, path, body) in &matrix {
        let (s, v) = api_a.req(m.clone(), path, body.clone()).await;
        if s != 404 {
            wrong.push(format!("{m} {path}: {s} {v}"));
        }
    }
    assert!(wrong.is_empty(), "not 404:\n{}", wrong.join("\n"));
    // Lists filtered by B's ids are empty for A.
    for path in [
        format!("/v1.0/campaigncalls?campaign_id={campaign}"),
        format!("/v1.0/queuecalls?queue_id={queue}"),
        format!("/v1.0/transcripts?transcribe_id={transcribe}"),
        format!("/v1.0/events?resource_type=call&resource_id={call}"),
    ] {
        let (s, v) = api_a.get(&path).await;
        assert!(
            s == 404 || (s == 200 && v["result"] == json!([])),
            "{path}: {s} {v}"
        );
    }
    // Platform-admin endpoints refuse a customer.
    let (s, _) = api_a
        .post(
            &format!("/v1.0/customers/{b}/balance_add"),
            json!({"amount_micros": 1}),
        )
        .await;
    assert_eq!(s, 403);

    // Nothing of B's changed. (B reads through the read models, which follow the log: a
    // resource created a moment ago may not be there yet, so each read waits for a 200.)
    let b_get = |path: String| {
        let api_b = &api_b;
        async move {
            api_b
                .wait_found(&path, std::time::Duration::from_secs(10))
                .await
        }
    };
    let a = b_get(format!("/v1.0/agents/{agent}")).await;
    assert_eq!(a["name"].as_str(), Some("Ann"));
    b_get(format!("/v1.0/accesskeys/{key}")).await;
    assert_eq!(
        env.call_state(call.parse().unwrap()).await["status"],
        "progressing"
    );
    assert_eq!(
        b_get(format!("/v1.0/campaigns/{campaign}")).await["status"],
        "pending"
    );
    assert_eq!(
        b_get(format!("/v1.0/transcribes/{transcribe}")).await["status"],
        "running"
    );
}

#[tokio::test]
async fn forged_expired_and_revoked_credentials_are_refused() {
    use base64::Engine;
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = tok.split('.').collect();
    let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    // alg:none with the same claims.
    let none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    // Signed with another secret.
    let sign = |claims: &Value, secret: &[u8]| {
        use hmac::{Hmac, KeyInit, Mac};
        let input = format!("{}.{}", parts[0], b64.encode(claims.to_string()));
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
        mac.update(input.as_bytes());
        format!("{input}.{}", b64.encode(mac.finalize().into_bytes()))
    };
    let forged = sign(&claims, b"not-the-secret");
    // Expired an hour ago, correctly signed (the tests' JWT secret).
    claims["exp"] = json!(chrono::Utc::now().timestamp() - 3600);
    let expired = sign(&claims, b"test-jwt-secret");
    for bad in [
        none,
        forged,
        expired,
        "garbage".to_string(),
        format!("{tok}x"),
    ] {
        let (s, v) = env.client(&bad).get("/v1.0/calls").await;
        assert_eq!(
            (s, v["error"]["reason"].as_str()),
            (401, Some("unauthenticated")),
            "{bad}"
        );
    }
    // A revoked access key stops working at once.
    let k = api.create("/v1.0/accesskeys", json!({"name": "k"})).await;
    let key_token = k["token"].as_str().unwrap().to_string();
    assert_eq!(env.client(&key_token).get("/v1.0/calls").await.0, 200);
    let (s, _) = api.delete_accesskey(id_of(&k)).await;
    assert_eq!(s, 200);
    assert_eq!(env.client(&key_token).get("/v1.0/calls").await.0, 401);
    // An expired access key is refused. Its lifetime is at least 60 s, so its expiry is moved
    // into the past in the table the authentication reads (before its first use: nothing of it
    // is cached yet) rather than waiting.
    let k = api
        .create(
            "/v1.0/accesskeys",
            json!({"name": "short", "expire_sec": 60}),
        )
        .await;
    wait_until(
        "the key row",
        std::time::Duration::from_secs(10),
        || async {
            sqlx::query(
            "UPDATE auth_access_keys SET expire_at = now() - interval '1 second' WHERE key_id = $1",
        )
        .bind(id_of(&k).parse::<uuid::Uuid>().unwrap())
        .execute(&env.pool)
        .await
        .unwrap()
        .rows_affected()
            == 1
        },
    )
    .await;
    let (s, v) = env
        .client(k["token"].as_str().unwrap())
        .get("/v1.0/calls")
        .await;
    assert_eq!(
        (s, v["error"]["reason"].as_str()),
        (401, Some("unauthenticated"))
    );
    // An oversized body is refused before it is read whole.
    let big = json!({"source": "+15550001000", "destinations": ["+15550002000"],
                     "variables": {"x": "y".repeat(200_000)}});
    let (s, _) = api.post("/v1.0/calls", big).await;
    assert_eq!(s, 413);
}
