//! End-to-end tests of the WebSocket gateway (issue 6) with a real WebSocket client against
//! the `vbin serve` binary.

use crate::support::{wait_until, Env, Platform};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to `platform`'s gateway with `?token=`.
async fn connect(platform: &Platform, token: &str) -> Ws {
    let url = format!(
        "{}/v1.0/ws?token={token}",
        platform.url().replacen("http", "ws", 1)
    );
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// What the server said next (pings are answered by the client library and skipped).
enum Said {
    Json(Value),
    Closed(Option<(CloseCode, String)>),
    Nothing,
}

async fn next(ws: &mut Ws, within: Duration) -> Said {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Said::Nothing,
            Ok(None) | Ok(Some(Err(_))) => return Said::Closed(None),
            Ok(Some(Ok(Message::Text(t)))) => return Said::Json(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(Message::Close(f)))) => {
                return Said::Closed(f.map(|f| (f.code, f.reason.to_string())))
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// The next JSON message (fails on close or silence).
async fn json(ws: &mut Ws) -> Value {
    match next(ws, Duration::from_secs(10)).await {
        Said::Json(v) => v,
        Said::Closed(c) => panic!("closed: {:?}", c.map(|c| c.1)),
        Said::Nothing => panic!("nothing received"),
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// Subscribes and waits for the ack.
async fn subscribe(ws: &mut Ws, topics: &[String]) {
    send(ws, json!({"type": "subscribe", "topics": topics})).await;
    let ack = json(ws).await;
    assert_eq!(ack["type"], "ack", "{ack}");
}

/// Events received until `done` says enough (fails after 15 s).
async fn events_until(ws: &mut Ws, mut done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
    let t = Instant::now();
    let mut got = Vec::new();
    while !done(&got) {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "events so far: {got:?}"
        );
        match next(ws, Duration::from_secs(15)).await {
            Said::Json(v) if v["type"] == "event" => got.push(v),
            Said::Json(v) => panic!("unexpected message {v}"),
            Said::Closed(c) => panic!("closed: {c:?}"),
            Said::Nothing => {}
        }
    }
    got
}

/// Nothing arrives for `d` (pings aside).
async fn silent_for(ws: &mut Ws, d: Duration) {
    match next(ws, d).await {
        Said::Nothing => {}
        Said::Json(v) => panic!("unexpected message {v}"),
        Said::Closed(c) => panic!("closed: {c:?}"),
    }
}

/// `token` (a JWT of the platform) re-signed to expire `secs` from now.
fn reissued(token: &str, secs: i64) -> String {
    use base64::Engine;
    use hmac::{Hmac, KeyInit, Mac};
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = token.split('.');
    let (header, claims) = (parts.next().unwrap(), parts.next().unwrap());
    let mut claims: Value = serde_json::from_slice(&b64.decode(claims).unwrap()).unwrap();
    let now = chrono::Utc::now().timestamp();
    claims["iat"] = json!(now);
    claims["exp"] = json!(now + secs);
    let signing_input = format!("{header}.{}", b64.encode(claims.to_string()));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"test-jwt-secret").unwrap();
    mac.update(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        b64.encode(mac.finalize().into_bytes())
    )
}

fn calls_of(customer: Uuid) -> String {
    format!("customer_id:{customer}:call:*")
}

fn hungup(events: &[Value], call: Uuid) -> bool {
    events
        .iter()
        .any(|e| e["event"] == "call_hungup" && e["data"]["id"] == call.to_string())
}

#[tokio::test]
async fn topics_match_as_the_seed_says_and_tenants_stay_apart() {
    let env = Env::start().await;
    let (a, tok_a, _) = env.customer().await;
    let api_a = env.client(&tok_a);
    let (b, tok_b, _) = env.customer().await;
    let mut all_calls = connect(&env.platform, &tok_a).await;
    subscribe(&mut all_calls, &[calls_of(a)]).await;
    let mut queues_only = connect(&env.platform, &tok_a).await;
    subscribe(&mut queues_only, &[format!("customer_id:{a}:queue:*")]).await;
    let mut other_tenant = connect(&env.platform, &tok_b).await;
    subscribe(&mut other_tenant, &[calls_of(b)]).await;

    // Bad requests are answered with an error; the connection stays usable.
    send(
        &mut other_tenant,
        json!({"type": "subscribe", "topics": [calls_of(a)]}),
    )
    .await;
    let e = json(&mut other_tenant).await;
    assert_eq!(
        (e["type"].as_str(), e["reason"].as_str()),
        (Some("error"), Some("permission_denied")),
        "{e}"
    );
    for bad in [
        json!("not json"),
        json!({"type": "subscribe"}),
        json!({"type": "dance", "topics": [calls_of(b)]}),
        json!({"type": "subscribe", "topics": [format!("customer_id:{b}:*:*")]}),
        json!({"type": "subscribe", "topics": ["call:*"]}),
    ] {
        let text = match &bad {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        other_tenant.send(Message::Text(text.into())).await.unwrap();
        let e = json(&mut other_tenant).await;
        assert_eq!(
            (e["type"].as_str(), e["reason"].as_str()),
            (Some("error"), Some("invalid_argument")),
            "{bad} -> {e}"
        );
    }

    // At most 100 topics per connection (VBIN_WS_MAX_TOPICS).
    let topics = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| format!("customer_id:{b}:call:{}", Uuid::new_v4()))
            .collect()
    };
    send(
        &mut other_tenant,
        json!({"type": "subscribe", "topics": topics(101)}),
    )
    .await;
    assert_eq!(json(&mut other_tenant).await["reason"], "invalid_argument");
    subscribe(&mut other_tenant, &topics(60)).await;
    send(
        &mut other_tenant,
        json!({"type": "subscribe", "topics": topics(50)}),
    )
    .await;
    assert_eq!(
        json(&mut other_tenant).await["reason"],
        "resource_exhausted"
    );

    // A call that lasts a second: one resource's topic, then another call.
    let call = api_a
        .calls(&["+15550007000"], json!({"variables": {"talk_seconds": 1}}))
        .await[0];
    let first = events_until(&mut all_calls, |e| !e.is_empty()).await;
    assert_eq!(first[0]["event"], "call_created");
    assert_eq!(first[0]["topic"], format!("customer_id:{a}:call:{call}"));
    assert_eq!(first[0]["data"]["id"], call.to_string());
    let mut this_call = connect(&env.platform, &tok_a).await;
    subscribe(&mut this_call, &[format!("customer_id:{a}:call:{call}")]).await;
    let other = api_a
        .calls(&["+15550007000"], json!({"variables": {"talk_seconds": 0}}))
        .await[0];
    let mut seen = first;
    seen.extend(events_until(&mut all_calls, |e| hungup(e, call) && hungup(e, other)).await);
    let offsets: Vec<u64> = seen.iter().map(|e| e["offset"].as_u64().unwrap()).collect();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "offsets increase: {offsets:?}"
    );
    let mine = events_until(&mut this_call, |e| hungup(e, call)).await;
    assert!(
        mine.iter().all(|e| e["data"]["id"] == call.to_string()),
        "a one-resource topic got another resource: {mine:?}"
    );
    // The same events, with the same offsets, as the wildcard subscriber saw.
    for e in &mine {
        assert!(seen.contains(e), "{e} not seen by the wildcard subscriber");
    }
    silent_for(&mut queues_only, Duration::from_millis(300)).await;
    silent_for(&mut other_tenant, Duration::from_millis(300)).await;

    // Unsubscribed: nothing more.
    send(
        &mut all_calls,
        json!({"type": "unsubscribe", "topics": [calls_of(a)]}),
    )
    .await;
    assert_eq!(json(&mut all_calls).await["type"], "ack");
    let _ = api_a.calls(&["+15550000486"], json!({})).await;
    let more = events_until(&mut this_call, |_| true).await;
    assert!(more.is_empty());
    silent_for(&mut all_calls, Duration::from_millis(500)).await;

    // No token: a JSON 401, not an upgrade.
    let http = vbin_netguard::tls::client_builder().build().unwrap();
    let r = http.get(env.url("/v1.0/ws")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["reason"], "unauthenticated");
    // A token but no upgrade: 400.
    let r = http
        .get(env.url(&format!("/v1.0/ws?token={tok_a}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn a_client_resumes_from_its_offset_on_any_gateway_or_is_told_to_resync() {
    let env = Env::start_with_env(&[("VBIN_WS_MAX_REPLAY", "5")]).await;
    let second = env.spawn_platform_only(&["gateway"]).await;
    let (a, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let mut ws = connect(&env.platform, &tok).await;
    subscribe(&mut ws, &[calls_of(a)]).await;
    let mut ws2 = connect(&second, &tok).await;
    subscribe(&mut ws2, &[calls_of(a)]).await;
    let c1 = api.calls(&["+15550000486"], json!({})).await[0];
    let seen = events_until(&mut ws, |e| hungup(e, c1)).await;
    // Every gateway fans out every event, with the same offsets.
    let seen2 = events_until(&mut ws2, |e| hungup(e, c1)).await;
    assert_eq!(seen, seen2);
    let last = seen.last().unwrap()["offset"].as_u64().unwrap();
    drop(ws);

    // Missed while away: a busy call.
    let c2 = api.calls(&["+15550000486"], json!({})).await[0];
    let live = events_until(&mut ws2, |e| hungup(e, c2)).await;
    // Back, on the other gateway, from the last offset seen.
    let mut back = connect(&second, &tok).await;
    send(
        &mut back,
        json!({"type": "subscribe", "topics": [calls_of(a)], "since": last}),
    )
    .await;
    assert_eq!(json(&mut back).await["type"], "ack");
    let replayed = events_until(&mut back, |e| hungup(e, c2)).await;
    assert_eq!(replayed, live, "the missed events, in order, once");
    // And live events after that, without duplicates.
    let c3 = api.calls(&["+15550000486"], json!({})).await[0];
    let after = events_until(&mut back, |e| hungup(e, c3)).await;
    assert!(
        after.iter().all(|e| e["data"]["id"] == c3.to_string()),
        "{after:?}"
    );

    // An offset from the future, or too far back (more than 5 events of this customer):
    // resync.
    for since in [u64::MAX / 2, 0] {
        let mut ws = connect(&env.platform, &tok).await;
        send(
            &mut ws,
            json!({"type": "subscribe", "topics": [calls_of(a)], "since": since}),
        )
        .await;
        assert_eq!(json(&mut ws).await["type"], "ack");
        let r = json(&mut ws).await;
        assert_eq!(r["type"], "resync", "since {since}: {r}");
        assert!(r["offset"].as_u64().unwrap() >= after.last().unwrap()["offset"].as_u64().unwrap());
    }
}

#[tokio::test]
async fn a_slow_consumer_is_closed_with_a_reason() {
    // A small kernel send buffer on the server side, so the slow client's backlog reaches the
    // gateway's own buffer after a few hundred events rather than after half a megabyte.
    let env = Env::start_with_env(&[
        // Room for a healthy reader on a loaded machine (the full suite runs beside it), far
        // below the ~1,200 events the slow one is sent.
        ("VBIN_WS_SEND_BUFFER", "256"),
        ("VBIN_HTTP_SNDBUF_BYTES", "16384"),
    ])
    .await;
    let (a, tok, _) = env.customer().await;
    let api = env.client(&tok);
    // A client with a tiny receive window that stops reading.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket
        .connect(format!("127.0.0.1:{}", env.platform.port).parse().unwrap())
        .await
        .unwrap();
    let url = format!("ws://127.0.0.1:{}/v1.0/ws?token={tok}", env.platform.port);
    let (mut slow, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    subscribe(&mut slow, &[calls_of(a)]).await;
    // A client that keeps reading, same buffer, same events.
    let mut healthy = connect(&env.platform, &tok).await;
    subscribe(&mut healthy, &[calls_of(a)]).await;
    let calls = 400;
    let reader = tokio::spawn(async move {
        events_until(&mut healthy, |e| {
            e.iter().filter(|e| e["event"] == "call_hungup").count() == calls
        })
        .await
    });
    for _ in 0..calls / 20 {
        api.calls(&["+15550000486"; 20], json!({})).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The healthy client gets everything.
    let all = reader.await.unwrap();
    // The slow one, reading again, finds its connection closed as a slow consumer after
    // fewer events than there were.
    let mut received = 0;
    let reason = loop {
        match next(&mut slow, Duration::from_secs(15)).await {
            Said::Json(v) => {
                assert_eq!(v["type"], "event");
                received += 1;
            }
            Said::Closed(c) => break c,
            Said::Nothing => panic!("never closed ({received} events)"),
        }
    };
    let (code, reason) = reason.expect("a close frame with a reason");
    assert_eq!(code, CloseCode::Policy);
    assert!(reason.contains("slow consumer"), "{reason}");
    assert!(received < all.len(), "{received} of {}", all.len());
}

#[tokio::test]
async fn heartbeats_keep_a_live_client_and_close_a_silent_one() {
    let env = Env::start_with_env(&[("VBIN_WS_PING_MS", "200"), ("VBIN_WS_IDLE_MS", "1000")]).await;
    let (_, tok, _) = env.customer().await;
    let mut live = connect(&env.platform, &tok).await;
    let mut silent = connect(&env.platform, &tok).await;
    // The live client reads (its library answers each ping with a pong).
    let t = Instant::now();
    let mut pings = 0;
    while t.elapsed() < Duration::from_millis(2500) {
        match tokio::time::timeout(Duration::from_millis(100), live.next()).await {
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(Some(Ok(m))) => panic!("unexpected {m:?}"),
            Ok(_) => panic!("live client closed"),
            Err(_) => {}
        }
    }
    assert!(pings >= 5, "{pings} pings in 2.5 s");
    // The silent one did not answer: closed as idle. (Reading now makes its library answer
    // the queued pings on a closed socket, so the close frame itself may not be readable.)
    match next(&mut silent, Duration::from_secs(5)).await {
        Said::Closed(Some((_, reason))) => assert_eq!(reason, "idle timeout"),
        Said::Closed(None) => {}
        _ => panic!("the silent client was not closed"),
    }
    // The live one still works.
    let nil = format!("customer_id:{}:call:*", Uuid::nil());
    send(&mut live, json!({"type": "unsubscribe", "topics": [nil]})).await;
    assert!(matches!(
        next(&mut live, Duration::from_secs(2)).await,
        Said::Json(_)
    ));
}

#[tokio::test]
async fn an_expiring_token_closes_the_connection() {
    let env = Env::start().await;
    let (a, tok, _) = env.customer().await;
    // The same agent's token, expiring in 2 s (signed with the tests' JWT secret).
    let mut ws = connect(&env.platform, &reissued(&tok, 2)).await;
    subscribe(&mut ws, &[calls_of(a)]).await;
    let t = Instant::now();
    match next(&mut ws, Duration::from_secs(6)).await {
        Said::Closed(Some((code, reason))) => {
            assert_eq!(
                (code, reason.as_str()),
                (CloseCode::Policy, "token expired")
            )
        }
        _ => panic!("not closed at expiry"),
    }
    assert!(t.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn conference_events_reach_their_topic_and_only_their_tenant() {
    let env = Env::start().await;
    let (a, tok_a, _) = env.customer().await;
    let (b, tok_b, _) = env.customer().await;
    let mut mine = connect(&env.platform, &tok_a).await;
    subscribe(&mut mine, &[format!("customer_id:{a}:conference:*")]).await;
    let mut theirs = connect(&env.platform, &tok_b).await;
    subscribe(&mut theirs, &[format!("customer_id:{b}:conference:*")]).await;
    let api = env.client(&tok_a);
    let conf = api
        .create("/v1.0/conferences", json!({"name": "standup"}))
        .await;
    let id = conf["id"].as_str().unwrap().to_string();
    let (s, _) = api
        .post(&format!("/v1.0/conferences/{id}/stop"), json!({}))
        .await;
    assert_eq!(s, 200);
    let got = events_until(&mut mine, |e| {
        e.iter().any(|e| e["event"] == "conference_terminated")
    })
    .await;
    assert_eq!(got[0]["event"], "conference_created", "{got:?}");
    assert_eq!(got[0]["topic"], format!("customer_id:{a}:conference:{id}"));
    assert_eq!(got.last().unwrap()["data"]["status"], "terminated");
    silent_for(&mut theirs, Duration::from_secs(1)).await;
}

/// The gateway's feeds from the event stream: its ordered consumers (no durable name, every
/// subject of the installation).
async fn gateway_feeds(stream: &async_nats::jetstream::stream::Stream) -> usize {
    let mut n = 0;
    let mut all = stream.consumers();
    while let Some(info) = all.next().await {
        let c = info.unwrap().config;
        if c.durable_name.is_none() && c.filter_subject.ends_with(".>") {
            n += 1;
        }
    }
    n
}

/// A gateway nobody is connected to reads nothing from the event stream (each event would be
/// one more delivery for the NATS server and the process); the first connection starts its
/// feed before its messages are read, so an event committed right after the subscription's ack
/// is pushed, and the feed stops once no connection has been open for `VBIN_WS_FEED_IDLE_MS`.
#[tokio::test]
async fn the_gateway_reads_the_stream_only_while_a_client_is_connected() {
    let env = Env::start_with_env(&[("VBIN_WS_FEED_IDLE_MS", "300")]).await;
    let (a, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let stream = env.event_stream().await;
    let unheard = api.calls(&["+15550000486"], json!({})).await[0];
    env.wait_call_end(unheard, Duration::from_secs(15)).await;
    assert_eq!(gateway_feeds(&stream).await, 0, "no client, no feed");

    for round in 0..2 {
        let mut ws = connect(&env.platform, &tok).await;
        subscribe(&mut ws, &[calls_of(a)]).await;
        assert_eq!(gateway_feeds(&stream).await, 1, "round {round}: one feed");
        let call = api.calls(&["+15550000486"], json!({})).await[0];
        let seen = events_until(&mut ws, |e| hungup(e, call)).await;
        assert_eq!(seen[0]["event"], "call_created", "round {round}: {seen:?}");
        assert!(
            seen.iter().all(|e| e["data"]["id"] == call.to_string()),
            "round {round}: only this call's events (none from before): {seen:?}"
        );
        ws.close(None).await.unwrap();
        wait_until(
            format_args!("round {round}: the feed stops after the last client"),
            Duration::from_secs(10),
            || async { gateway_feeds(&stream).await == 0 },
        )
        .await;
    }
}
