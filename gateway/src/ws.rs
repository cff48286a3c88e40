//! `GET /v1.0/ws`: one WebSocket connection.
//!
//! Client messages: `{"type":"subscribe","topics":[...],"since":<offset>?}` and
//! `{"type":"unsubscribe","topics":[...]}`. Server messages: `event` pushes (with `offset`),
//! `ack` for each accepted request, `error` for a malformed message or a forbidden topic (the
//! connection stays open), `resync` when a resume is not possible. The server closes with a
//! reason: slow consumer, token expired or revoked, idle timeout, shutting down.

use crate::hub::{Conn, Hub, Push};
use crate::topic::{Pattern, TopicError};
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, FromRequestParts, Request, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use uuid::Uuid;
use vbin_event_schema::{Permission, PublishedEvent};
use vbin_http::auth::Caller;
use vbin_http::ApiError;
use vbin_http::HttpState;

/// Longest a single write to a client may take before the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is connected.
#[derive(Clone)]
struct Who {
    /// Tenant (`None`: platform admin).
    customer: Option<Uuid>,
    /// Customer-level topics need admin permission (as in the seed).
    may_subscribe: bool,
    token: String,
    expires_at: Option<DateTime<Utc>>,
}

/// Upgrades an authenticated request.
pub async fn upgrade(
    State(state): State<HttpState>,
    Extension(hub): Extension<Arc<Hub>>,
    Extension(stop): Extension<watch::Receiver<bool>>,
    req: Request,
) -> Response {
    let token = vbin_http::mw::bearer(&req);
    let (mut parts, _) = req.into_parts();
    let ws = WebSocketUpgrade::from_request_parts(&mut parts, &state).await;
    let Some(token) = token else {
        return ApiError::unauthenticated().into_response();
    };
    let (caller, expires_at) = match state.keys.resolve_with_expiry(&state.pool, &token).await {
        Ok(Some(found)) => found,
        Ok(None) => return ApiError::unauthenticated().into_response(),
        Err(e) => {
            return ApiError::unavailable("authentication store unavailable", e).into_response()
        }
    };
    let Ok(ws) = ws else {
        return ApiError::invalid("a WebSocket upgrade request is expected").into_response();
    };
    let who = match caller {
        Caller::Admin => Who {
            customer: None,
            may_subscribe: true,
            token,
            expires_at,
        },
        Caller::Customer {
            customer_id,
            permission,
            ..
        } => Who {
            customer: Some(customer_id.as_uuid()),
            may_subscribe: permission == Permission::Admin,
            token,
            expires_at,
        },
    };
    // Small socket buffers (the library's defaults are 128 KiB each way, eagerly allocated
    // for reading): with thousands of connections they are most of the memory. Pushes are
    // written one by one, so the write buffer never needs more than the largest message.
    ws.max_message_size(hub.settings.max_message_bytes)
        .max_frame_size(hub.settings.max_message_bytes)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1024 * 1024)
        .on_upgrade(move |socket| serve(socket, hub, state, who, stop))
}

/// A client request.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMessage {
    Subscribe {
        topics: Vec<String>,
        #[serde(default)]
        since: Option<u64>,
    },
    Unsubscribe {
        topics: Vec<String>,
    },
}

/// What the reader hands the writer, in order.
enum Ctl {
    /// A reply (ack or error).
    Send(Utf8Bytes),
    /// Replay what the client missed after this offset.
    Replay(u64),
    /// Close with this code and reason.
    Close(u16, &'static str),
}

fn error_text(reason: &str, message: &str) -> Utf8Bytes {
    json!({"type": "error", "reason": reason, "message": message})
        .to_string()
        .into()
}

/// How long a new connection waits for the hub's feed to start before going on without it.
const FEED_READY_WITHIN: Duration = Duration::from_secs(2);

async fn serve(
    socket: WebSocket,
    hub: Arc<Hub>,
    state: HttpState,
    who: Who,
    stop: watch::Receiver<bool>,
) {
    let (conn, pushes) = hub.register(who.customer);
    // The client's messages are read once the feed is live (it starts with the first
    // connection), so every event after a subscription's ack reaches this connection.
    hub.ready(FEED_READY_WITHIN).await;
    let (sink, stream) = socket.split();
    let (ctl_tx, ctl_rx) = mpsc::channel::<Ctl>(16);
    let last_heard = Arc::new(std::sync::Mutex::new(Instant::now()));
    let reader = read_loop(
        stream,
        conn.clone(),
        hub.clone(),
        who.clone(),
        ctl_tx,
        last_heard.clone(),
    );
    let writer = write_loop(
        sink,
        Writer {
            hub: hub.clone(),
            conn: conn.clone(),
            state,
            who,
            last_heard,
        },
        pushes,
        ctl_rx,
        stop,
    );
    // The writer decides when the connection ends (it sends the close frame); the reader ends
    // with the client's close or a broken socket.
    tokio::pin!(reader);
    tokio::pin!(writer);
    tokio::select! {
        reason = &mut writer => {
            metrics::counter!("vbin_ws_disconnects_total", "reason" => reason).increment(1);
        }
        _ = &mut reader => {
            // Let the writer flush what the reader queued (errors, the close) for a moment.
            let reason = tokio::time::timeout(Duration::from_secs(2), writer).await.unwrap_or("client_gone");
            metrics::counter!("vbin_ws_disconnects_total", "reason" => reason).increment(1);
        }
    }
    hub.unregister(&conn);
}

/// Reads client messages until the client closes or the socket breaks.
async fn read_loop(
    mut stream: futures::stream::SplitStream<WebSocket>,
    conn: Arc<Conn>,
    hub: Arc<Hub>,
    who: Who,
    ctl: mpsc::Sender<Ctl>,
    last_heard: Arc<std::sync::Mutex<Instant>>,
) {
    while let Some(Ok(msg)) = stream.next().await {
        *last_heard.lock().expect("clock") = Instant::now();
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => {
                let _ = ctl
                    .send(Ctl::Send(error_text(
                        "invalid_argument",
                        "messages are JSON text frames",
                    )))
                    .await;
                continue;
            }
            Message::Close(_) => {
                let _ = ctl.send(Ctl::Close(close_code::NORMAL, "bye")).await;
                return;
            }
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        for reply in handle(&text, &conn, &hub, &who) {
            if ctl.send(reply).await.is_err() {
                return;
            }
        }
    }
}

/// Applies one client message; returns what to send back (and any replay to run).
fn handle(text: &str, conn: &Conn, hub: &Hub, who: &Who) -> Vec<Ctl> {
    let msg: ClientMessage = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => {
            return vec![Ctl::Send(error_text(
                "invalid_argument",
                &format!(
                    "malformed message ({e}); expected {{\"type\":\"subscribe\"|\"unsubscribe\",\"topics\":[...]}}"
                ),
            ))]
        }
    };
    let (kind, topics, since) = match msg {
        ClientMessage::Subscribe { topics, since } => ("subscribe", topics, since),
        ClientMessage::Unsubscribe { topics } => ("unsubscribe", topics, None),
    };
    if topics.is_empty() || topics.len() > hub.settings.max_topics {
        return vec![Ctl::Send(error_text(
            "invalid_argument",
            &format!("topics must hold 1 to {} topics", hub.settings.max_topics),
        ))];
    }
    // All or nothing: one bad topic and none of the message is applied.
    let mut parsed = Vec::with_capacity(topics.len());
    for t in &topics {
        let p = Pattern::parse(t).and_then(|p| {
            if who.customer.is_some_and(|c| c != p.customer_id) {
                Err(TopicError::Forbidden(t.clone()))
            } else {
                Ok(p)
            }
        });
        match p {
            Ok(p) => parsed.push(p),
            Err(e @ TopicError::Malformed(_)) => {
                return vec![Ctl::Send(error_text("invalid_argument", &e.to_string()))]
            }
            Err(e @ TopicError::Forbidden(_)) => {
                return vec![Ctl::Send(error_text("permission_denied", &e.to_string()))]
            }
        }
    }
    if kind == "subscribe" && !who.may_subscribe {
        return vec![Ctl::Send(error_text(
            "permission_denied",
            "customer topics need admin permission",
        ))];
    }
    {
        let mut held = conn.patterns.write().expect("patterns");
        if kind == "subscribe" {
            let new: Vec<Pattern> =
                parsed
                    .into_iter()
                    .filter(|p| !held.contains(p))
                    .fold(Vec::new(), |mut v, p| {
                        if !v.contains(&p) {
                            v.push(p);
                        }
                        v
                    });
            if held.len() + new.len() > hub.settings.max_topics {
                return vec![Ctl::Send(error_text(
                    "resource_exhausted",
                    &format!(
                        "a connection holds at most {} topics",
                        hub.settings.max_topics
                    ),
                ))];
            }
            held.extend(new);
        } else {
            held.retain(|p| !parsed.contains(p));
        }
    }
    let mut out = vec![Ctl::Send(
        json!({"type": "ack", "request": kind, "topics": topics})
            .to_string()
            .into(),
    )];
    if let Some(since) = since {
        out.push(Ctl::Replay(since));
    }
    out
}

struct Writer {
    hub: Arc<Hub>,
    conn: Arc<Conn>,
    state: HttpState,
    who: Who,
    last_heard: Arc<std::sync::Mutex<Instant>>,
}

type Sink = futures::stream::SplitSink<WebSocket, Message>;

async fn send(sink: &mut Sink, m: Message) -> Result<(), ()> {
    match tokio::time::timeout(WRITE_TIMEOUT, sink.send(m)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

async fn close(sink: &mut Sink, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = send(sink, Message::Close(Some(frame))).await;
}

/// Writes pushes and replies until the connection ends; returns why it ended.
async fn write_loop(
    mut sink: Sink,
    w: Writer,
    mut pushes: mpsc::Receiver<Push>,
    mut ctl: mpsc::Receiver<Ctl>,
    mut stop: watch::Receiver<bool>,
) -> &'static str {
    let settings = w.hub.settings.clone();
    let mut ping = tokio::time::interval(settings.ping_every);
    ping.tick().await;
    let mut recheck = tokio::time::interval(settings.recheck_auth);
    recheck.tick().await;
    let expiry = w.who.expires_at.map(|t| {
        let left = (t - Utc::now()).to_std().unwrap_or_default();
        Instant::now() + left
    });
    let expired = async {
        match expiry {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expired);
    let stopping = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopping);
    // Pushes at or below this offset were sent by a replay already.
    let mut replayed_to = 0u64;
    loop {
        tokio::select! {
            biased;
            _ = &mut stopping => {
                close(&mut sink, close_code::AWAY, "server shutting down").await;
                return "shutdown";
            }
            _ = w.conn.kick.notified() => {
                if w.conn.overflowed.load(Ordering::Relaxed) {
                    close(&mut sink, close_code::POLICY, "slow consumer: send buffer full").await;
                    return "slow_consumer";
                }
            }
            _ = &mut expired => {
                close(&mut sink, close_code::POLICY, "token expired").await;
                return "token_expired";
            }
            _ = recheck.tick() => {
                if let Ok(None) = w.state.keys.resolve(&w.state.pool, &w.who.token).await {
                    close(&mut sink, close_code::POLICY, "token revoked").await;
                    return "token_revoked";
                }
            }
            _ = ping.tick() => {
                let heard = *w.last_heard.lock().expect("clock");
                if heard.elapsed() >= settings.idle_timeout {
                    close(&mut sink, close_code::AWAY, "idle timeout").await;
                    return "idle";
                }
                if send(&mut sink, Message::Ping(Default::default())).await.is_err() {
                    return "write_failed";
                }
            }
            c = ctl.recv() => match c {
                Some(Ctl::Send(text)) => {
                    if send(&mut sink, Message::Text(text)).await.is_err() {
                        return "write_failed";
                    }
                }
                Some(Ctl::Replay(since)) => match replay(&w, &mut sink, since).await {
                    Ok(to) => replayed_to = replayed_to.max(to),
                    Err(()) => return "write_failed",
                },
                Some(Ctl::Close(code, reason)) => {
                    close(&mut sink, code, reason).await;
                    return "client_closed";
                }
                None => return "client_gone",
            },
            p = pushes.recv() => {
                let Some(p) = p else { return "client_gone" };
                if p.offset <= replayed_to {
                    continue;
                }
                if send(&mut sink, Message::Text(p.text)).await.is_err() {
                    return "write_failed";
                }
            }
        }
    }
}

/// Sends the events after `since` that the connection's topics select, from the stream; or a
/// `resync` when that history is gone or too long. Returns the last offset covered.
async fn replay(w: &Writer, sink: &mut Sink, since: u64) -> Result<u64, ()> {
    let resync = |reason: &str, offset: u64| -> Message {
        Message::Text(
            json!({"type": "resync", "reason": reason, "offset": offset})
                .to_string()
                .into(),
        )
    };
    let outcome = replay_plan(w, since).await;
    let (consumer, last) = match outcome {
        Plan::Nothing(last) => {
            metrics::counter!("vbin_ws_resumes_total", "outcome" => "replayed").increment(1);
            return Ok(last);
        }
        Plan::Resync(reason, last) => {
            metrics::counter!("vbin_ws_resumes_total", "outcome" => "resync").increment(1);
            send(sink, resync(reason, last)).await?;
            return Ok(0);
        }
        Plan::Read(consumer, last) => (consumer, last),
    };
    let mut covered;
    let messages = (*consumer).messages().await;
    let Ok(mut messages) = messages else {
        send(sink, resync("history unavailable", last)).await?;
        return Ok(0);
    };
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
        let Ok(Some(Ok(m))) = next else {
            tracing::warn!("websocket replay interrupted; resync");
            send(sink, resync("history unavailable", last)).await?;
            return Ok(0);
        };
        let Ok(info) = m.info() else { continue };
        let (offset, pending) = (info.stream_sequence, info.pending);
        let ours = w.hub.bus().foreign_publisher(m.headers.as_ref()).is_none();
        if let Some(e) = ours
            .then(|| serde_json::from_slice::<PublishedEvent>(&m.payload).ok())
            .flatten()
        {
            let topic = crate::topic::EventTopic::of(&e);
            let wanted = w
                .conn
                .patterns
                .read()
                .expect("patterns")
                .iter()
                .any(|p| p.matches(&topic));
            if wanted {
                send(
                    sink,
                    Message::Text(crate::hub::push_text(offset, &e, &topic)),
                )
                .await?;
            }
        }
        covered = offset;
        if pending == 0 || offset >= last {
            break;
        }
    }
    metrics::counter!("vbin_ws_resumes_total", "outcome" => "replayed").increment(1);
    Ok(covered)
}

enum Plan {
    /// Nothing was missed (up to this offset).
    Nothing(u64),
    /// The client must reload its state; the offset to resume from afterwards.
    Resync(&'static str, u64),
    /// Read this history, up to this offset.
    Read(
        Box<async_nats::jetstream::consumer::Consumer<pull::OrderedConfig>>,
        u64,
    ),
}

async fn replay_plan(w: &Writer, since: u64) -> Plan {
    let Some(customer) = w.who.customer else {
        return Plan::Resync("resume is per customer; the admin must resync", 0);
    };
    let Ok(mut stream) = w.hub.bus().ensure_stream().await else {
        return Plan::Resync("history unavailable", 0);
    };
    let Ok(info) = stream.info().await else {
        return Plan::Resync("history unavailable", 0);
    };
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    if since > last {
        return Plan::Resync("unknown offset", last);
    }
    if since == last {
        return Plan::Nothing(last);
    }
    if since + 1 < first {
        return Plan::Resync("history no longer available", last);
    }
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: w.hub.bus().namespace().subject(&format!("{customer}.>")),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: since + 1,
            },
            ..Default::default()
        })
        .await;
    let Ok(mut consumer) = consumer else {
        return Plan::Resync("history unavailable", last);
    };
    let pending = match consumer.info().await {
        Ok(i) => i.num_pending,
        Err(_) => return Plan::Resync("history unavailable", last),
    };
    if pending == 0 {
        return Plan::Nothing(last);
    }
    if pending > w.hub.settings.max_replay {
        return Plan::Resync("too far behind", last);
    }
    Plan::Read(Box::new(consumer), last)
}
