//! API fuzzing against the live binary: every command endpoint gets hundreds of generated
//! bodies (wrong types, missing and extra fields, huge and negative numbers, deep nesting,
//! odd strings, mutations of a valid body). A client's mistake must be a 4xx with a JSON error,
//! never a 5xx, and the platform must stay ready.

use crate::support::{id_of, Env};
use reqwest::Method;
use serde_json::{json, Map, Value};

/// A small deterministic generator (xorshift64*), so a failure is reproducible from its seed.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn string(&mut self) -> String {
        const ODD: [&str; 12] = [
            "",
            " ",
            "+",
            "+1",
            "+15550002000",
            "\u{0}",
            "😀",
            "' OR 1=1 --",
            "../../etc/passwd",
            "%s%s%n",
            "null",
            "-1",
        ];
        match self.below(4) {
            0 => ODD[self.below(ODD.len() as u64) as usize].to_string(),
            1 => "x".repeat(self.below(5000) as usize),
            2 => uuid::Uuid::from_u64_pair(self.next(), self.next()).to_string(),
            _ => (0..self.below(20))
                .map(|_| (b' ' + self.below(95) as u8) as char)
                .collect(),
        }
    }
    fn value(&mut self, depth: u32) -> Value {
        match self.below(if depth > 4 { 6 } else { 8 }) {
            0 => Value::Null,
            1 => json!(self.below(2) == 0),
            2 => json!([0i64, -1, 1, i64::MAX, i64::MIN, u32::MAX as i64][self.below(6) as usize]),
            3 => json!([0.5f64, -1e308, 1e308, f64::EPSILON][self.below(4) as usize]),
            4 | 5 => json!(self.string()),
            6 => Value::Array((0..self.below(5)).map(|_| self.value(depth + 1)).collect()),
            _ => {
                let mut m = Map::new();
                for _ in 0..self.below(5) {
                    m.insert(self.string(), self.value(depth + 1));
                }
                Value::Object(m)
            }
        }
    }
    /// A random body, or `valid` with one field dropped, replaced or added.
    fn body(&mut self, valid: &Value) -> Value {
        let Value::Object(fields) = valid else {
            return self.value(0);
        };
        let mut m = fields.clone();
        let keys: Vec<String> = m.keys().cloned().collect();
        match self.below(4) {
            0 => self.value(0),
            1 if !keys.is_empty() => {
                m.remove(&keys[self.below(keys.len() as u64) as usize]);
                Value::Object(m)
            }
            2 if !keys.is_empty() => {
                let k = keys[self.below(keys.len() as u64) as usize].clone();
                m.insert(k, self.value(1));
                Value::Object(m)
            }
            _ => {
                m.insert(self.string(), self.value(1));
                Value::Object(m)
            }
        }
    }
}

#[tokio::test]
async fn generated_bodies_never_cause_a_server_error() {
    let env = Env::start().await;
    let (customer, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let call = api.answered_call("+15550007000", 60).await;
    let outdial = id_of(&api.create("/v1.0/outdials", json!({"name": "o"})).await);
    let plan = id_of(
        &api.create(
            "/v1.0/outplans",
            json!({"name": "p", "source": "+15550001000", "max_try_count": 1}),
        )
        .await,
    );
    let campaign = id_of(
        &api.create(
            "/v1.0/campaigns",
            json!({"outplan_id": plan, "outdial_id": outdial}),
        )
        .await,
    );
    let queue = id_of(&api.create("/v1.0/queues", json!({"name": "q"})).await);
    let endpoints: Vec<(Method, String, Value)> = vec![
        (
            Method::POST,
            "/v1.0/calls".into(),
            json!({"source": "+15550001000", "destinations": ["+15550000486"]}),
        ),
        (
            Method::POST,
            format!("/v1.0/calls/{call}/hangup"),
            json!({}),
        ),
        (
            Method::PUT,
            "/v1.0/customer".into(),
            json!({"name": "n", "webhook_uri": "", "webhook_method": "POST"}),
        ),
        (
            Method::POST,
            "/v1.0/accesskeys".into(),
            json!({"name": "k", "expire_sec": 3600}),
        ),
        (
            Method::POST,
            "/v1.0/agents".into(),
            json!({"username": "fz", "password": "password123", "name": "a", "permission": "agent"}),
        ),
        (
            Method::POST,
            "/v1.0/outplans".into(),
            json!({"name": "p", "source": "+15550001000", "dial_timeout_ms": 1000, "try_interval_ms": 100, "max_try_count": 1}),
        ),
        (Method::POST, "/v1.0/outdials".into(), json!({"name": "o"})),
        (
            Method::POST,
            format!("/v1.0/outdials/{outdial}/targets"),
            json!({"destinations": ["+15550002000"]}),
        ),
        (
            Method::POST,
            "/v1.0/campaigns".into(),
            json!({"outplan_id": plan, "outdial_id": outdial}),
        ),
        (
            Method::PUT,
            format!("/v1.0/campaigns/{campaign}/status"),
            json!({"status": "stopping"}),
        ),
        (
            Method::POST,
            "/v1.0/queues".into(),
            json!({"name": "q", "routing_method": "linear", "agent_ids": [], "wait_timeout_ms": 1000}),
        ),
        (
            Method::PUT,
            format!("/v1.0/queues/{queue}"),
            json!({"name": "q", "routing_method": "ringall", "agent_ids": [], "wait_timeout_ms": 1000}),
        ),
        (
            Method::POST,
            format!("/v1.0/queues/{queue}/calls"),
            json!({"call_id": call}),
        ),
        (
            Method::POST,
            "/v1.0/transcribes".into(),
            json!({"reference_type": "call", "reference_id": call, "language": "en-US"}),
        ),
        (
            Method::POST,
            "/v1.0/webhook_deliveries/recover".into(),
            json!({"since": "2026-01-01T00:00:00Z"}),
        ),
        (
            Method::POST,
            "/auth/login".into(),
            json!({"username": "nobody", "password": "x"}),
        ),
    ];
    let mut g = Gen(0x9e37_79b9_7f4a_7c15 ^ customer.as_u128() as u64);
    let mut server_errors = Vec::new();
    for (m, path, valid) in &endpoints {
        for _ in 0..60 {
            let body = g.body(valid);
            let (s, v) = api.req(m.clone(), path, Some(body.clone())).await;
            if s >= 500 {
                server_errors.push(format!("{m} {path} {body} -> {s} {v}"));
            } else if s >= 400 {
                assert!(
                    v["error"]["reason"].is_string(),
                    "{m} {path} {body} -> {s} without a JSON error: {v}"
                );
            }
        }
        // Not even JSON.
        let r = env
            .http
            .request(m.clone(), env.url(path))
            .bearer_auth(&tok)
            .header("content-type", "application/json")
            .body("{\"source\": [1, 2,")
            .send()
            .await
            .unwrap();
        // Endpoints without a body (hangup) ignore it; the others refuse it.
        let want = if *valid == json!({}) { 200 } else { 400 };
        assert_eq!(r.status().as_u16(), want, "{m} {path} with broken JSON");
    }
    assert!(
        server_errors.is_empty(),
        "5xx:\n{}",
        server_errors.join("\n")
    );
    let (s, v) = env.req(Method::GET, "/readyz", None, None).await;
    assert_eq!(s, 200, "{v}");
}

/// Postgres cannot store NUL in `text` or `jsonb`: a NUL in an accepted string failed the
/// lookup or the insert (a 503 for each of these). Each is refused up front with a 400.
#[tokio::test]
async fn nul_characters_are_refused_as_client_errors() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let outdial = id_of(&api.create("/v1.0/outdials", json!({"name": "o"})).await);
    let cases: Vec<(Method, String, Value)> = vec![
        (
            Method::POST,
            "/auth/login".into(),
            json!({"username": "a\u{0}b", "password": "password123"}),
        ),
        (
            Method::PUT,
            "/v1.0/customer".into(),
            json!({"webhook_uri": "https://example.com/\u{0}"}),
        ),
        (
            Method::POST,
            "/v1.0/calls".into(),
            json!({"source": "+15550001000", "destinations": ["+15550002000"],
                   "variables": {"note": "a\u{0}b"}}),
        ),
        (
            Method::POST,
            format!("/v1.0/outdials/{outdial}/targets"),
            json!({"destinations": ["+15550002000"], "variables": {"\u{0}": 1}}),
        ),
    ];
    let mut wrong = Vec::new();
    for (m, path, body) in cases {
        let (s, v) = api.req(m.clone(), &path, Some(body.clone())).await;
        if s != 400 || !v["error"]["reason"].is_string() {
            wrong.push(format!("{m} {path} {body} -> {s} {v}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
