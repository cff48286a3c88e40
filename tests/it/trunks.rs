//! SIP trunks (issue 18): validated, their password sealed (never in the log, the audit trail
//! or the read model), their customer's only.

use crate::support::{wait_until, Env};
use serde_json::{json, Value};
use std::time::Duration;

const PASSWORD: &str = "trunk-pa55word-never-shown";

fn trunk() -> Value {
    json!({"name": "carrier", "host": "sip.carrier.example", "port": 5080, "transport": "tcp",
           "username": "acme", "password": PASSWORD, "codecs": ["PCMA", "PCMU"]})
}

#[tokio::test]
async fn trunks_are_validated_keep_their_password_sealed_and_belong_to_their_customer() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);

    for (bad, why) in [
        (json!({"host": "sip.example"}), "name"),
        (json!({"name": "a"}), "host"),
        (json!({"name": "a", "host": "bad host"}), "host"),
        (json!({"name": "a", "host": "h.example", "port": 0}), "port"),
        (
            json!({"name": "a", "host": "h.example", "port": 70000}),
            "port",
        ),
        (
            json!({"name": "a", "host": "h.example", "transport": "tls"}),
            "transport",
        ),
        (
            json!({"name": "a", "host": "h.example", "codecs": ["GSM"]}),
            "codecs",
        ),
        (
            json!({"name": "a", "host": "h.example", "codecs": []}),
            "codecs",
        ),
        (
            json!({"name": "a", "host": "h.example", "codecs": ["PCMU", "PCMU"]}),
            "codecs",
        ),
        (
            json!({"name": "a", "host": "h.example", "password": "x"}),
            "username",
        ),
        (
            json!({"name": "a", "host": "h.example", "username": "u", "password": "a\u{0007}b"}),
            "password",
        ),
        (
            json!({"name": "a", "host": "h.example", "surprise": 1}),
            "surprise",
        ),
    ] {
        let (s, v) = api.post("/v1.0/trunks", bad.clone()).await;
        assert_eq!(s, 400, "{bad} -> {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(why),
            "{why}: {v}"
        );
    }

    let t = api.create("/v1.0/trunks", trunk()).await;
    let id = t["id"].as_str().unwrap().to_string();
    assert_eq!(
        (&t["type"], &t["transport"], &t["port"], &t["password_set"]),
        (&json!("trunk"), &json!("tcp"), &json!(5080), &json!(true)),
        "{t}"
    );
    assert_eq!(t["codecs"], json!(["PCMA", "PCMU"]));
    assert!(!t.to_string().contains(PASSWORD), "{t}");
    let path = format!("/v1.0/trunks/{id}");
    assert_eq!(api.wait_found(&path, Duration::from_secs(10)).await, t);
    // Defaults: port 5060, UDP, G.711.
    let d = api
        .create("/v1.0/trunks", json!({"name": "d", "host": "10.0.0.7"}))
        .await;
    assert_eq!(
        (
            &d["port"],
            &d["transport"],
            &d["codecs"],
            &d["password_set"]
        ),
        (
            &json!(5060),
            &json!("udp"),
            &json!(["PCMU", "PCMA"]),
            &json!(false)
        ),
        "{d}"
    );

    // The password is nowhere in clear: not in the event log, nor the audit trail.
    api.assert_sealed(PASSWORD, "trunk", &id, "trunk_created")
        .await;

    // An update without a password keeps it; an empty one removes it.
    let mut changed = trunk();
    changed["password"] = Value::Null;
    changed["host"] = json!("sip2.carrier.example");
    let (s, v) = api.put(&path, changed.clone()).await;
    assert_eq!(
        (s, &v["password_set"], &v["host"]),
        (200, &json!(true), &json!("sip2.carrier.example")),
        "{v}"
    );
    changed["password"] = json!("");
    changed["username"] = Value::Null;
    let (_, v) = api.put(&path, changed).await;
    assert_eq!(v["password_set"], false, "{v}");

    // Another customer sees nothing and changes nothing.
    let (_, tok2, _) = env.customer().await;
    let api2 = env.client(&tok2);
    assert_eq!(api2.get(&path).await.0, 404);
    assert_eq!(api2.put(&path, trunk()).await.0, 404);
    assert_eq!(api2.delete(&path).await.0, 404);
    let (_, list) = api2.get("/v1.0/trunks").await;
    assert_eq!(list["result"], json!([]), "{list}");

    let (s, v) = api.delete(&path).await;
    assert_eq!(s, 200, "{v}");
    wait_until(
        "the deleted trunk to go",
        Duration::from_secs(10),
        || async { api.get(&path).await.0 == 404 },
    )
    .await;
}
