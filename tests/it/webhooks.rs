//! End-to-end tests of webhook delivery (issue 5): a real HTTP receiver verifies every
//! delivery as a customer would.

use crate::support::{wait_until, wait_until_every, Env};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// What the receiver saw: (headers, body, status it answered).
pub(crate) type Seen = Arc<Mutex<Vec<(HeaderMap, Vec<u8>, u16)>>>;

/// A webhook receiver on `ip` that answers 500 to its first `fail_first` requests.
async fn receiver_on(ip: &str, fail_first: usize) -> (String, Seen) {
    answering(ip, move |n| if n < fail_first { 500 } else { 200 }).await
}

/// A webhook receiver on `ip` answering the status `code(n)` to its n-th request (0-based).
async fn answering(
    ip: &str,
    code: impl Fn(usize) -> u16 + Clone + Send + Sync + 'static,
) -> (String, Seen) {
    replying(ip, move |n| Reply {
        code: code(n),
        ..Reply::default()
    })
    .await
}

/// How the receiver answers one request.
#[derive(Clone, Default)]
struct Reply {
    code: u16,
    retry_after: Option<u64>,
    delay: Duration,
}

/// A webhook receiver on `ip` answering `reply(n)` to its n-th request (0-based). A request
/// is recorded when it arrives.
async fn replying(
    ip: &str,
    reply: impl Fn(usize) -> Reply + Clone + Send + Sync + 'static,
) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let s = s.clone();
            let reply = reply.clone();
            async move {
                let r = {
                    let mut v = s.lock().unwrap();
                    let r = reply(v.len());
                    v.push((headers, body.to_vec(), r.code));
                    r
                };
                tokio::time::sleep(r.delay).await;
                let mut h = HeaderMap::new();
                if let Some(secs) = r.retry_after {
                    h.insert("retry-after", secs.to_string().parse().unwrap());
                }
                (StatusCode::from_u16(r.code).unwrap(), h)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

/// A receiver on 127.0.0.1 (the address the tests' allow-list lets through).
pub(crate) async fn receiver(fail_first: usize) -> (String, Seen) {
    receiver_on("127.0.0.1", fail_first).await
}

/// Whether the receiver has had a request for an event of `event_type`.
fn delivered(seen: &Seen, event_type: &str) -> bool {
    seen.lock()
        .unwrap()
        .iter()
        .any(|(h, _, _)| header(h, "x-voipbin-event") == event_type)
}

/// Creates a customer with a webhook; returns (customer id, token).
async fn hooked_customer(env: &Env, url: &str) -> (Uuid, String) {
    let (id, tok, _) = env.customer_with(json!({"webhook_uri": url})).await;
    (id, tok)
}

/// A customer with a webhook whose own `customer_created` has been delivered, so what a test
/// writes next is all the sender has to do; returns (customer id, receiver URL, what the
/// receiver has seen).
async fn greeted_customer(env: &Env) -> (Uuid, String, Seen) {
    let (url, seen) = receiver(0).await;
    let (customer, _) = hooked_customer(env, &url).await;
    wait_until_every(
        "the customer's own webhook",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async { delivered(&seen, "customer_created") },
    )
    .await;
    (customer, url, seen)
}

/// A delivery written straight into the table, as the recorder would write it.
struct RawDelivery<'a> {
    id: Uuid,
    customer: Uuid,
    event_type: &'a str,
    resource_type: &'a str,
    resource: Uuid,
    url: &'a str,
    body: Value,
    /// When it is due: an SQL interval from the start of the transaction's second (the same
    /// instant for every delivery written in one transaction).
    due_in: &'a str,
}

impl RawDelivery<'_> {
    async fn insert(&self, tx: &mut sqlx::PgConnection) {
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, customer_id, event_id, event_type, \
               resource_type, resource_id, uri, method, body, next_attempt_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'POST', $8, \
               date_trunc('second', now()) + $9::interval)",
        )
        .bind(self.id)
        .bind(self.customer)
        .bind(Uuid::new_v4())
        .bind(self.event_type)
        .bind(self.resource_type)
        .bind(self.resource)
        .bind(self.url)
        .bind(serde_json::to_vec(&self.body).unwrap())
        .bind(self.due_in)
        .execute(tx)
        .await
        .unwrap();
    }
}

/// The customer's current webhook secret (its read model may lag its creation: waits).
pub(crate) async fn webhook_secret(env: &Env, tok: &str) -> String {
    let me = env
        .client(tok)
        .wait_found("/v1.0/customer", Duration::from_secs(10))
        .await;
    me["webhook_secret"].as_str().unwrap().to_string()
}

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

pub(crate) fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .unwrap_or_else(|| panic!("no {name}"))
        .to_str()
        .unwrap()
}

/// Verifies a delivery with the Standard Webhooks reference library.
fn standard_verify(
    secret: &str,
    h: &HeaderMap,
    body: &[u8],
) -> Result<(), standardwebhooks::WebhookError> {
    standardwebhooks::Webhook::from_bytes(secret.as_bytes().to_vec())?.verify(body, h)
}

/// Verifies both signatures exactly as API.md tells a customer to.
pub(crate) fn verify(secret: &str, h: &HeaderMap, body: &[u8]) {
    let ts = header(h, "x-voipbin-timestamp");
    let seed = hex::encode(hmac(
        secret.as_bytes(),
        &[ts.as_bytes(), b".", body].concat(),
    ));
    assert_eq!(header(h, "x-voipbin-signature"), format!("sha256={seed}"));
    let id = header(h, "webhook-id");
    let wts = header(h, "webhook-timestamp");
    assert_eq!(wts, ts);
    let std_sig = base64::engine::general_purpose::STANDARD.encode(hmac(
        secret.as_bytes(),
        &[id.as_bytes(), b".", wts.as_bytes(), b".", body].concat(),
    ));
    assert_eq!(header(h, "webhook-signature"), format!("v1,{std_sig}"));
    // And as a receiver using the Standard Webhooks library would (the key is the secret's
    // bytes, as API.md says; the library also checks the timestamp's tolerance).
    standard_verify(secret, h, body).expect("the Standard Webhooks library accepts it");
    assert_eq!(header(h, "content-type"), "application/json");
    let v: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["id"].as_str(), Some(id));
    assert_eq!(v["type"].as_str(), Some(header(h, "x-voipbin-event")));
}

#[tokio::test]
async fn events_are_delivered_signed_in_order_and_retried() {
    let env = Env::start().await;
    // The first two requests fail: those deliveries are retried (300 ms, 600 ms in tests).
    let (url, seen) = receiver(2).await;
    let (customer, tok) = hooked_customer(&env, &url).await;
    let api = env.client(&tok);
    let secret = webhook_secret(&env, &tok).await;
    let call = api
        .calls(&["+15550007000"], json!({"variables": {"talk_seconds": 0}}))
        .await[0];
    env.wait_call_end(call, Duration::from_secs(15)).await;

    // Every call event arrives (after retries), signed, in the call's order.
    let want = [
        "call_created",
        "call_ringing",
        "call_progressing",
        "call_hungup",
    ];
    let delivered = wait_until("every call webhook", Duration::from_secs(20), || async {
        let got: Vec<(String, Value)> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, code)| *code == 200)
            .map(|(h, b, _)| {
                (
                    header(h, "x-voipbin-event").to_string(),
                    serde_json::from_slice(b).unwrap(),
                )
            })
            .filter(|(_, v): &(String, Value)| v["data"]["id"] == call.to_string())
            .collect();
        if got.len() >= want.len() {
            Ok(got)
        } else {
            Err(format!(
                "{:?}",
                got.iter().map(|g| &g.0).collect::<Vec<_>>()
            ))
        }
    })
    .await;
    let types: Vec<&str> = delivered.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, want, "order per resource");
    assert_eq!(delivered[3].1["data"]["status"], "completed");
    for (h, body, _) in seen.lock().unwrap().iter() {
        verify(&secret, h, body);
    }

    // The log of deliveries: every event of the customer delivered exactly once, the failed
    // attempts recorded. (Retries and the billing charge may still be under way: poll.)
    // 8 events: customer, agent, billing account, the call's 4, its charge.
    const COUNTS: &str = "SELECT (SELECT count(*) FROM events WHERE customer_id = $1), \
        (SELECT count(*) FROM webhook_deliveries WHERE customer_id = $1 AND status = 'delivered'), \
        (SELECT count(*) FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id \
          WHERE d.customer_id = $1 AND a.status_code = 500)";
    let what = "one delivery per event";
    let every = Duration::from_millis(100);
    let (events, failed_attempts) =
        wait_until_every(what, Duration::from_secs(15), every, || async {
            let (events, delivered_rows, failed_attempts): (i64, i64, i64) = sqlx::query_as(COUNTS)
                .bind(customer)
                .fetch_one(&env.pool)
                .await
                .unwrap();
            if events >= 8 && delivered_rows == events {
                Ok((events, failed_attempts))
            } else {
                Err(format!("{delivered_rows} delivered of {events}"))
            }
        })
        .await;
    assert_eq!(failed_attempts, 2);
    let ok_requests = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, _, c)| *c == 200)
        .count() as i64;
    assert_eq!(ok_requests, events, "each event acknowledged once");

    // The deliveries API: every delivery with its attempts; a retry sends the same bytes again.
    let all = api
        .all_pages("/v1.0/webhook_deliveries?status=delivered", 2)
        .await;
    assert_eq!(all.len() as i64, events);
    let retried: Vec<&Value> = all
        .iter()
        .filter(|d| d["attempt_log"].as_array().unwrap().len() > 1)
        .collect();
    assert_eq!(retried.len(), 2, "two deliveries needed a second attempt");
    for d in &retried {
        assert_eq!(d["attempt_log"][0]["status_code"], 500);
        assert_eq!(d["attempt_log"][1]["status_code"], 200);
    }
    let hungup = all
        .iter()
        .find(|d| d["event_type"] == "call_hungup")
        .unwrap();
    let did = hungup["id"].as_str().unwrap();
    let before = seen.lock().unwrap().len();
    let (s, v) = api.retry_delivery(did).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("pending")), "{v}");
    wait_until("the retry to be sent", Duration::from_secs(10), || async {
        seen.lock().unwrap().len() != before
    })
    .await;
    {
        let seen = seen.lock().unwrap();
        let (h, body, _) = seen.last().unwrap();
        verify(&secret, h, body);
        let first = seen
            .iter()
            .find(|(h2, _, c)| *c == 200 && header(h2, "webhook-id") == header(h, "webhook-id"))
            .unwrap();
        assert_eq!(&first.1, body, "a retry sends the same body");
    }
    let (_, by_event) = api
        .get(&format!(
            "/v1.0/webhook_deliveries?event_id={}",
            hungup["event_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(by_event["result"].as_array().unwrap().len(), 1);
    assert_eq!(api.get("/v1.0/webhook_deliveries?status=nope").await.0, 400);
    // Another tenant sees none of them and cannot retry them.
    let (_, tok2, _) = env.customer().await;
    let api2 = env.client(&tok2);
    let (_, theirs) = api2.get("/v1.0/webhook_deliveries").await;
    assert_eq!(theirs["result"], json!([]));
    let (s, _) = api2.retry_delivery(did).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn private_addresses_are_refused_at_send_time() {
    let env = Env::start().await;
    // Reachable, but 127.0.0.2 is loopback and not on the allow-list (127.0.0.1/32).
    let (url, seen) = receiver_on("127.0.0.2", 0).await;
    let (customer, tok) = hooked_customer(&env, &url).await;
    let api = env.client(&tok);
    let (total, blocked) = wait_until_every(
        "every delivery to fail",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            let (failed, total, blocked): (i64, i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE status = 'failed'), count(*), \
                    count(*) FILTER (WHERE last_error LIKE 'blocked%') \
             FROM webhook_deliveries WHERE customer_id = $1",
            )
            .bind(customer)
            .fetch_one(&env.pool)
            .await
            .unwrap();
            if total > 0 && failed == total {
                Ok((total, blocked))
            } else {
                Err(format!("{failed}/{total} failed"))
            }
        },
    )
    .await;
    assert_eq!(blocked, total);
    let attempts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id \
         WHERE d.customer_id = $1",
    )
    .bind(customer)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(
        attempts >= 4,
        "the schedule's four attempts were made: {attempts}"
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "a request reached 127.0.0.2"
    );
    // Bulk recovery puts every failed delivery back (they fail again: still refused).
    let (s, v) = api
        .post(
            "/v1.0/webhook_deliveries/recover",
            json!({"since": "2020-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let total: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE customer_id = $1")
            .bind(customer)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(v["recovered"].as_i64(), Some(total));
    assert!(seen.lock().unwrap().is_empty());
}

/// Waits until every delivery of `customer` is failed; returns how many there are.
async fn all_failed(env: &Env, customer: Uuid) -> i64 {
    let every = Duration::from_millis(100);
    wait_until_every(
        "every delivery to fail",
        Duration::from_secs(20),
        every,
        || async {
            let (failed, total): (i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE status = 'failed'), count(*) \
             FROM webhook_deliveries WHERE customer_id = $1",
            )
            .bind(customer)
            .fetch_one(&env.pool)
            .await
            .unwrap();
            if total > 0 && failed == total {
                Ok(total)
            } else {
                Err(format!("{failed}/{total} failed"))
            }
        },
    )
    .await
}

/// The reason recorded by `webhook_endpoint_disabled` for `customer`, once it is in the log.
async fn disabled_reason(env: &Env, customer: Uuid) -> String {
    let every = Duration::from_millis(100);
    wait_until_every(
        "the endpoint to be disabled",
        Duration::from_secs(20),
        every,
        || async {
            sqlx::query_scalar::<_, String>(
                "SELECT payload->>'reason' FROM events WHERE aggregate_id = $1 \
             AND event_type = 'webhook_endpoint_disabled'",
            )
            .bind(customer)
            .fetch_optional(&env.pool)
            .await
            .unwrap()
        },
    )
    .await
}

#[tokio::test]
async fn gone_endpoints_are_disabled_and_receive_nothing_more() {
    let env = Env::start().await;
    let (url, seen) = answering("127.0.0.1", |_| 410).await;
    let (customer, tok) = hooked_customer(&env, &url).await;
    let api = env.client(&tok);
    assert!(disabled_reason(&env, customer).await.contains("410"));
    all_failed(&env, customer).await;
    let me = api
        .wait_get("/v1.0/customer", Duration::from_secs(10), |s, v| {
            s == 200 && v["webhook_uri"] == ""
        })
        .await;
    assert_eq!(me["webhook_uri"], "");
    let requests = seen.lock().unwrap().len();
    let before: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE customer_id = $1")
            .bind(customer)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let call = api.calls(&["+15550000486"], json!({})).await[0];
    env.wait_call_end(call, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let after: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE customer_id = $1")
            .bind(customer)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(before, after, "a disabled endpoint gets no new deliveries");
    assert_eq!(seen.lock().unwrap().len(), requests);
}

#[tokio::test]
async fn endpoints_failing_for_the_configured_period_are_disabled() {
    let env = Env::start_with_env(&[
        ("VBIN_WEBHOOK_DISABLE_AFTER_SECS", "1"),
        ("VBIN_WEBHOOK_RETRY_SCHEDULE_MS", "0,700,700,700,700"),
    ])
    .await;
    let (url, _seen) = answering("127.0.0.1", |_| 500).await;
    let (customer, _) = hooked_customer(&env, &url).await;
    assert!(disabled_reason(&env, customer).await.contains("failing"));
    all_failed(&env, customer).await;
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let env = Env::start().await;
    // The first request gets 429 with Retry-After: 2 (the test schedule would retry after 300 ms).
    let (url, _seen) = replying("127.0.0.1", |n| Reply {
        code: if n == 0 { 429 } else { 200 },
        retry_after: (n == 0).then_some(2),
        ..Reply::default()
    })
    .await;
    let (customer, _) = hooked_customer(&env, &url).await;
    let every = Duration::from_millis(100);
    let gap: f64 = wait_until_every(
        "a retry after the 429",
        Duration::from_secs(15),
        every,
        || async {
            sqlx::query_scalar::<_, f64>(
                "SELECT extract(epoch FROM (a2.at - a1.at))::float8 FROM webhook_attempts a1 \
             JOIN webhook_attempts a2 ON a2.delivery_id = a1.delivery_id AND a2.attempt = 2 \
             JOIN webhook_deliveries d ON d.id = a1.delivery_id \
             WHERE d.customer_id = $1 AND a1.attempt = 1 AND a1.status_code = 429",
            )
            .bind(customer)
            .fetch_optional(&env.pool)
            .await
            .unwrap()
        },
    )
    .await;
    // Retry-After 2 s (the jittered schedule would have said ~0.3 s).
    assert!((1.9..6.0).contains(&gap), "retried after {gap} s");
}

#[tokio::test]
async fn a_slow_endpoint_does_not_delay_another_customer() {
    let env = Env::start().await;
    // Customer A's endpoint takes 5 s per request; B's answers at once.
    let (slow_url, slow) = replying("127.0.0.1", |_| Reply {
        code: 200,
        delay: Duration::from_secs(5),
        ..Reply::default()
    })
    .await;
    let (fast_url, fast) = receiver(0).await;
    let (_, slow_tok) = hooked_customer(&env, &slow_url).await;
    // A burst of A's events first: more than its in-flight limit.
    let _ = env
        .calls(
            &slow_tok,
            &[
                "+15550000486",
                "+15550000404",
                "+15550000487",
                "+15550008000",
            ],
            json!({"dial_timeout_ms": 1000}),
        )
        .await;
    let t0 = Instant::now();
    let (b, _) = hooked_customer(&env, &fast_url).await;
    // B's customer_created (and the other creation events) arrive within a second or two.
    wait_until_every(
        "customer B's webhook (not waiting for A's slow endpoint)",
        Duration::from_secs(3).saturating_sub(t0.elapsed()),
        Duration::from_millis(20),
        || async { delivered(&fast, "customer_created") },
    )
    .await;
    assert!(!slow.lock().unwrap().is_empty());
    let _ = b;
}

#[tokio::test]
async fn a_delivery_pending_a_retry_survives_a_crash() {
    let mut env = Env::start_with_env(&[("VBIN_WEBHOOK_RETRY_SCHEDULE_MS", "0,3000,300")]).await;
    let (url, seen) = receiver(1).await;
    let (customer, _) = hooked_customer(&env, &url).await;
    // The first delivery failed and waits 3 s for its retry: kill -9 the platform meanwhile.
    let every = Duration::from_millis(20);
    wait_until_every(
        "a delivery waiting for a retry",
        Duration::from_secs(10),
        every,
        || async {
            let (waiting, others): (i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE status = 'pending' AND attempts = 1 \
                                     AND next_attempt_at > now() + interval '1 second'), \
                    count(*) FILTER (WHERE status <> 'delivered') \
             FROM webhook_deliveries WHERE customer_id = $1",
            )
            .bind(customer)
            .fetch_one(&env.pool)
            .await
            .unwrap();
            // One failed and waiting for its retry, the rest delivered.
            waiting == 1 && others == 1
        },
    )
    .await;
    env.platform.kill();
    env.platform = env.spawn_platform().await;
    let every = Duration::from_millis(100);
    let what = "every delivery after the restart";
    wait_until_every(what, Duration::from_secs(30), every, || async {
        let (pending, delivered, total): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'pending'), \
                    count(*) FILTER (WHERE status = 'delivered'), count(*) \
             FROM webhook_deliveries WHERE customer_id = $1",
        )
        .bind(customer)
        .fetch_one(&env.pool)
        .await
        .unwrap();
        if total > 0 && delivered == total {
            Ok(())
        } else {
            Err(format!("{pending} pending, {delivered}/{total} delivered"))
        }
    })
    .await;
    let first = header(&seen.lock().unwrap()[0].0, "webhook-id").to_string();
    let ok = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(h, _, c)| *c == 200 && header(h, "webhook-id") == first)
        .count();
    assert_eq!(ok, 1, "the failed delivery was retried after the restart");
}

#[tokio::test]
async fn a_queue_behind_a_failing_delivery_does_not_starve_other_customers() {
    // A's first delivery fails and waits a minute for its retry; everything A does meanwhile
    // waits behind it (same resource: the customer), more deliveries than the sender looks
    // at in one claim.
    let env = Env::start_with_env(&[("VBIN_WEBHOOK_RETRY_SCHEDULE_MS", "0,60000")]).await;
    let (url_a, seen_a) = answering("127.0.0.1", |_| 500).await;
    let (customer_a, tok_a) = hooked_customer(&env, &url_a).await;
    let api_a = env.client(&tok_a);
    let queued = 600;
    for i in 0..queued {
        let (s, body) = api_a
            .update_customer(
                json!({"name": format!("a{i}"), "webhook_uri": url_a, "webhook_method": "POST"}),
            )
            .await;
        assert_eq!(s, 200, "{body}");
    }
    wait_until(
        "A's deliveries to be recorded",
        Duration::from_secs(20),
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM webhook_deliveries \
             WHERE customer_id = $1 AND status = 'pending' AND attempts = 0",
            )
            .bind(customer_a)
            .fetch_one(&env.pool)
            .await
            .unwrap();
            (waiting >= queued).then_some(()).ok_or(waiting)
        },
    )
    .await;
    // B's deliveries go out at once.
    let (fast_url, fast) = receiver(0).await;
    let t0 = Instant::now();
    let _ = hooked_customer(&env, &fast_url).await;
    wait_until_every(
        "customer B's webhook (not waiting behind A's queue)",
        Duration::from_secs(3).saturating_sub(t0.elapsed()),
        Duration::from_millis(20),
        || async { delivered(&fast, "customer_created") },
    )
    .await;
    // A's queue kept its order: only the deliveries at the head of each of A's resources
    // were tried, nothing behind them.
    let tried: Vec<String> = seen_a
        .lock()
        .unwrap()
        .iter()
        .map(|(h, _, _)| header(h, "x-voipbin-event").to_string())
        .collect();
    assert!(
        !tried.iter().any(|t| t == "customer_updated"),
        "a queued delivery went out before the one ahead of it: {tried:?}"
    );
}

#[tokio::test]
async fn deliveries_due_at_one_instant_go_out_in_resource_order_however_they_lie_on_disk() {
    // A commit writes many deliveries with one now(): ties in next_attempt_at are the rule.
    // Here 300 resources have two deliveries each, all due at the same instant, and the later
    // delivery of each resource lies first on disk (so an index ordered by time alone returns
    // the later ones first), more than one claim looks at. All must go out, each resource's
    // first before its second.
    let env = Env::start().await;
    let (customer, url, seen) = greeted_customer(&env).await;
    let pairs = 300;
    let resources: Vec<Uuid> = (0..pairs).map(|_| Uuid::new_v4()).collect();
    let firsts: Vec<Uuid> = (0..pairs).map(|_| Uuid::now_v7()).collect();
    let seconds: Vec<Uuid> = (0..pairs).map(|_| Uuid::now_v7()).collect();
    let mut tx = env.pool.begin().await.unwrap();
    for (ids, n) in [(&seconds, 2), (&firsts, 1)] {
        for (i, id) in ids.iter().enumerate() {
            RawDelivery {
                id: *id,
                customer,
                event_type: "tie_test",
                resource_type: "tie",
                resource: resources[i],
                url: &url,
                body: json!({"resource": i, "n": n}),
                due_in: "-1 second",
            }
            .insert(&mut tx)
            .await;
        }
    }
    tx.commit().await.unwrap();
    let bodies = || -> Vec<Value> {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(h, _, _)| header(h, "x-voipbin-event") == "tie_test")
            .map(|(_, b, _)| serde_json::from_slice(b).unwrap())
            .collect()
    };
    wait_until(
        "every tied delivery to go out",
        Duration::from_secs(30),
        || async {
            let n = bodies().len();
            (n >= 2 * pairs).then_some(()).ok_or(n)
        },
    )
    .await;
    // Each resource's first delivery went out before its second.
    let got = bodies();
    for i in 0..pairs {
        let order: Vec<&Value> = got
            .iter()
            .filter(|b| b["resource"] == json!(i))
            .map(|b| &b["n"])
            .collect();
        assert_eq!(order, [&json!(1), &json!(2)], "resource {i}");
    }
}

#[tokio::test]
async fn deliveries_put_off_behind_an_ended_one_are_brought_forward() {
    // A claim puts a delivery off while an earlier one of its resource is pending; the
    // recording of that one's end brings it forward. Here each resource's second delivery is
    // put off 60 s (as a claim would behind a retry); once the first is delivered the second
    // must go out at once, not when it was put off to.
    let env = Env::start().await;
    let (customer, url, seen) = greeted_customer(&env).await;
    let resources = 40;
    let mut tx = env.pool.begin().await.unwrap();
    for i in 0..resources {
        let resource = Uuid::new_v4();
        for (n, due_in) in [(1, "0 seconds"), (2, "60 seconds")] {
            RawDelivery {
                id: Uuid::now_v7(),
                customer,
                event_type: "forward_test",
                resource_type: "forward",
                resource,
                url: &url,
                body: json!({"resource": i, "n": n}),
                due_in,
            }
            .insert(&mut tx)
            .await;
        }
    }
    tx.commit().await.unwrap();
    wait_until(
        "every second delivery, brought forward from 60 s",
        Duration::from_secs(20),
        || async {
            let n = seen
                .lock()
                .unwrap()
                .iter()
                .filter(|(h, _, _)| header(h, "x-voipbin-event") == "forward_test")
                .count();
            (n >= 2 * resources).then_some(()).ok_or(n)
        },
    )
    .await;
}

#[tokio::test]
async fn after_a_secret_rotation_both_secrets_sign_during_the_grace_period() {
    let env = Env::start().await;
    let (url, seen) = receiver(0).await;
    let (_, tok) = hooked_customer(&env, &url).await;
    let api = env.client(&tok);
    let old = webhook_secret(&env, &tok).await;
    // The customer's creation is delivered before the rotation (it is checked below).
    wait_until_every(
        "the first delivery",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async { (!seen.lock().unwrap().is_empty()).then_some(()) },
    )
    .await;
    let (s, rotated) = api.rotate_webhook_secret().await;
    assert_eq!(s, 200, "{rotated}");
    let new = rotated["webhook_secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    let (s, body) = api
        .update_customer(json!({"name": "renamed", "webhook_uri": url, "webhook_method": "POST"}))
        .await;
    assert_eq!(s, 200, "{body}");
    let every = Duration::from_millis(20);
    let (h, body) = wait_until_every(
        "a customer_updated webhook",
        Duration::from_secs(10),
        every,
        || async {
            seen.lock()
                .unwrap()
                .iter()
                .find(|(h, _, _)| header(h, "x-voipbin-event") == "customer_updated")
                .map(|(h, b, _)| (h.clone(), b.clone()))
        },
    )
    .await;
    // Two signatures, current first, each of both schemes; receivers holding either secret
    // accept the delivery.
    let std_sigs: Vec<&str> = header(&h, "webhook-signature").split(' ').collect();
    let seed_sigs: Vec<&str> = header(&h, "x-voipbin-signature").split(' ').collect();
    assert_eq!((std_sigs.len(), seed_sigs.len()), (2, 2), "{h:?}");
    let ts = header(&h, "x-voipbin-timestamp");
    for (secret, i) in [(&new, 0), (&old, 1)] {
        standard_verify(secret, &h, &body).expect("the library accepts either secret");
        let seed = hex::encode(hmac(
            secret.as_bytes(),
            &[ts.as_bytes(), b".", &body].concat(),
        ));
        assert_eq!(seed_sigs[i], format!("sha256={seed}"));
    }
    assert!(standard_verify("some-other-secret", &h, &body).is_err());
    // Deliveries made before the rotation were signed with the old secret only.
    let first = seen.lock().unwrap()[0].clone();
    assert_eq!(header(&first.0, "webhook-signature").split(' ').count(), 1);
    standard_verify(&old, &first.0, &first.1).unwrap();
}

/// Waits until `sql` (a count with one uuid parameter) returns `want`.
async fn wait_count(env: &Env, sql: &'static str, bind: Uuid, want: i64) {
    env.wait_count(sql, bind, Duration::from_secs(15), |n| n == want)
        .await
}

#[tokio::test]
async fn housekeeping_prunes_expired_records_and_keeps_the_rest() {
    let env = Env::start_with_env(&[
        ("VBIN_HOUSEKEEPING_SECS", "1"),
        ("VBIN_WEBHOOK_RETENTION_DAYS", "1"),
    ])
    .await;
    let (url, _seen) = receiver(0).await;
    let (_, tok) = hooked_customer(&env, &url).await;
    let api = env.client(&tok);
    let mut calls = vec![];
    for key in ["old", "new"] {
        let body = json!({"source": "+15550001000", "destinations": ["+15550000404"]});
        let r = api.post_once("/v1.0/calls", key, body).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        let id: Uuid = v["calls"][0]["id"].as_str().unwrap().parse().unwrap();
        env.wait_call_end(id, Duration::from_secs(15)).await;
        calls.push(id);
    }
    // Every event of both calls delivered.
    const DELIVERED: &str = "SELECT count(*) FROM webhook_deliveries WHERE resource_id = $1 \
                             AND status = 'delivered'";
    for c in &calls {
        let events = env.events_of("call", *c).await.len() as i64;
        wait_count(&env, DELIVERED, *c, events).await;
    }
    // The first call's request and deliveries age past their lifetimes.
    let seed: Uuid = sqlx::query_scalar("SELECT id_seed FROM idempotency_keys WHERE key = 'old'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    for sql in [
        "UPDATE processed_commands SET recorded_at = now() - interval '49 hours' \
         WHERE key LIKE 'request:' || $1 || ':%'",
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' \
         WHERE id_seed = $1::uuid",
    ] {
        let n = sqlx::query(sql)
            .bind(seed.to_string())
            .execute(&env.pool)
            .await
            .unwrap()
            .rows_affected();
        assert!(n >= 1, "{sql}");
    }
    sqlx::query(
        "UPDATE webhook_deliveries SET updated_at = now() - interval '25 hours' \
         WHERE resource_id = $1",
    )
    .bind(calls[0])
    .execute(&env.pool)
    .await
    .unwrap();
    // Within a few rounds they are gone; the second call's are not.
    const KEYS: &str = "SELECT count(*) FROM idempotency_keys WHERE id_seed = $1";
    const ONCE: &str =
        "SELECT count(*) FROM processed_commands WHERE key LIKE 'request:' || $1::text || ':%'";
    const ATTEMPTS: &str = "SELECT count(*) FROM webhook_attempts a JOIN webhook_deliveries d \
                            ON d.id = a.delivery_id WHERE d.resource_id = $1";
    wait_count(&env, KEYS, seed, 0).await;
    wait_count(&env, ONCE, seed, 0).await;
    wait_count(&env, DELIVERED, calls[0], 0).await;
    let kept: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_attempts a WHERE NOT EXISTS \
         (SELECT 1 FROM webhook_deliveries d WHERE d.id = a.delivery_id)",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(kept, 0, "attempts left without their delivery");
    let new_seed: Uuid =
        sqlx::query_scalar("SELECT id_seed FROM idempotency_keys WHERE key = 'new'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        sqlx::query_scalar::<_, i64>(ONCE)
            .bind(new_seed)
            .fetch_one(&env.pool)
            .await
            .unwrap(),
        1,
        "the live request's once-key (of its one call) is kept"
    );
    let events = env.events_of("call", calls[1]).await.len() as i64;
    wait_count(&env, DELIVERED, calls[1], events).await;
    let attempts: i64 = sqlx::query_scalar(ATTEMPTS)
        .bind(calls[1])
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(attempts, events);
}
