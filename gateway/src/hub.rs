//! The hub: one ordered JetStream consumer per gateway process feeds every committed event to
//! the connections whose subscriptions match. Stateless: any number of gateways can run; each
//! sees every event while it has a connection.
//!
//! The feed runs only while some connection is open: a gateway nobody is connected to would
//! otherwise be sent every event of the installation, each a delivery the NATS server and this
//! process pay for (one of the six every call event had). It starts when the first connection
//! registers, which waits for it ([`Hub::ready`]) before reading its client's messages, so an
//! event committed after a subscription's ack is always pushed; and stops once no connection
//! has been open for [`Settings::feed_idle`].
//!
//! Every push carries the event's stream sequence as its `offset`: one number line shared by
//! all gateways, increasing for each customer, so a client can resume on another gateway.

use crate::topic::{EventTopic, Pattern};
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use axum::extract::ws::Utf8Bytes;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use uuid::Uuid;
use vbin_bus::{Bus, BusError, Chain};
use vbin_event_schema::PublishedEvent;

/// Gateway limits and timings (the binary sets them from `VBIN_WS_*`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Pushes waiting to be written to one connection; more and it is closed as a slow
    /// consumer (memory per connection stays bounded).
    pub send_buffer: usize,
    /// Topics one connection may hold.
    pub max_topics: usize,
    /// Server ping interval.
    pub ping_every: Duration,
    /// A connection silent (no frame, not even a pong) for this long is closed.
    pub idle_timeout: Duration,
    /// Most events a resume replays; further behind, the client is told to resync.
    pub max_replay: u64,
    /// Largest client message.
    pub max_message_bytes: usize,
    /// How often a connection's token is checked again (revoked keys, deleted agents).
    pub recheck_auth: Duration,
    /// How long the feed from the stream keeps running with no connection open.
    pub feed_idle: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            send_buffer: 1024,
            max_topics: 100,
            ping_every: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            max_replay: 10_000,
            max_message_bytes: 64 * 1024,
            recheck_auth: Duration::from_secs(30),
            feed_idle: Duration::from_secs(10),
        }
    }
}

/// What the hub hands a connection.
pub(crate) struct Push {
    /// The event's offset (stream sequence).
    pub offset: u64,
    /// The serialized push, shared by every connection it goes to.
    pub text: Utf8Bytes,
}

/// One WebSocket connection as the hub sees it.
pub(crate) struct Conn {
    id: u64,
    /// The tenant; `None` for the platform admin (any customer's topics).
    pub customer: Option<Uuid>,
    pub patterns: RwLock<Vec<Pattern>>,
    tx: mpsc::Sender<Push>,
    /// Set when its buffer overflowed; `kick` wakes its writer to close it.
    pub overflowed: AtomicBool,
    pub kick: Notify,
}

impl Conn {
    fn wants(&self, t: &EventTopic) -> bool {
        self.patterns
            .read()
            .expect("patterns")
            .iter()
            .any(|p| p.matches(t))
    }
}

/// The registry of connections and the feed from the event stream.
pub struct Hub {
    bus: Bus,
    /// Settings every connection uses.
    pub settings: Settings,
    by_customer: RwLock<HashMap<Uuid, Vec<Arc<Conn>>>>,
    admins: RwLock<Vec<Arc<Conn>>>,
    next_id: AtomicU64,
    /// Offset of the last event fanned out (0 before the first, and after an idle stop).
    last_offset: AtomicU64,
    /// Open connections and whether the feed is live, changed together under the channel's
    /// lock (so a connection registering as the feed stops is never missed by both).
    feed: watch::Sender<FeedState>,
}

/// What the feed's start and stop depend on.
#[derive(Clone, Copy, Debug, Default)]
struct FeedState {
    /// Registered connections.
    conns: usize,
    /// The ordered consumer exists and its messages are being read.
    live: bool,
}

impl Hub {
    /// A hub over `bus`; [`Hub::run`] feeds it.
    pub fn new(bus: Bus, settings: Settings) -> Arc<Self> {
        Arc::new(Self {
            bus,
            settings,
            by_customer: Default::default(),
            admins: Default::default(),
            next_id: AtomicU64::new(1),
            last_offset: AtomicU64::new(0),
            feed: watch::channel(FeedState::default()).0,
        })
    }

    /// Waits (at most `within`) until the feed from the stream is live, so that what the
    /// connection is told after this is followed by every event committed later. Past
    /// `within` (NATS unreachable) the connection goes on, and its pushes begin when the feed
    /// comes back, as for connections already open.
    pub(crate) async fn ready(&self, within: Duration) {
        let mut rx = self.feed.subscribe();
        if tokio::time::timeout(within, rx.wait_for(|f| f.live))
            .await
            .is_err()
        {
            tracing::warn!("websocket gateway feed not live; connection goes on without it");
        }
    }

    /// The bus (for replays).
    pub(crate) fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Registers a connection; its pushes arrive on the returned receiver.
    pub(crate) fn register(&self, customer: Option<Uuid>) -> (Arc<Conn>, mpsc::Receiver<Push>) {
        let (tx, rx) = mpsc::channel(self.settings.send_buffer);
        self.feed.send_modify(|f| f.conns += 1);
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            customer,
            patterns: RwLock::new(Vec::new()),
            tx,
            overflowed: AtomicBool::new(false),
            kick: Notify::new(),
        });
        match customer {
            Some(c) => self
                .by_customer
                .write()
                .expect("registry")
                .entry(c)
                .or_default()
                .push(conn.clone()),
            None => self.admins.write().expect("registry").push(conn.clone()),
        }
        metrics::gauge!("vbin_ws_connections").increment(1.0);
        (conn, rx)
    }

    /// Whether any connection may want an event of `customer` (one of its own, or an admin's);
    /// `None` (a subject without a customer): assume so.
    fn listened(&self, customer: Option<Uuid>) -> bool {
        if !self.admins.read().expect("registry").is_empty() {
            return true;
        }
        customer.is_none_or(|c| self.by_customer.read().expect("registry").contains_key(&c))
    }

    /// Removes a connection.
    pub(crate) fn unregister(&self, conn: &Conn) {
        match conn.customer {
            Some(c) => {
                let mut m = self.by_customer.write().expect("registry");
                if let Some(v) = m.get_mut(&c) {
                    v.retain(|x| x.id != conn.id);
                    if v.is_empty() {
                        m.remove(&c);
                    }
                }
            }
            None => self
                .admins
                .write()
                .expect("registry")
                .retain(|x| x.id != conn.id),
        }
        self.feed.send_modify(|f| f.conns -= 1);
        metrics::gauge!("vbin_ws_connections").decrement(1.0);
    }

    /// Fans one event out; returns to how many connections.
    pub(crate) fn dispatch(&self, offset: u64, e: &PublishedEvent) -> usize {
        self.last_offset.fetch_max(offset, Ordering::Relaxed);
        let topic = EventTopic::of(e);
        let targets: Vec<Arc<Conn>> = {
            let m = self.by_customer.read().expect("registry");
            let admins = self.admins.read().expect("registry");
            m.get(&e.customer_id)
                .into_iter()
                .flatten()
                .chain(admins.iter())
                .filter(|c| c.wants(&topic))
                .cloned()
                .collect()
        };
        if targets.is_empty() {
            return 0;
        }
        let text = push_text(offset, e, &topic);
        for c in &targets {
            match c.tx.try_send(Push {
                offset,
                text: text.clone(),
            }) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if !c.overflowed.swap(true, Ordering::Relaxed) {
                        c.kick.notify_one();
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {} // going away
            }
        }
        metrics::counter!("vbin_ws_pushes_total").increment(targets.len() as u64);
        targets.len()
    }

    /// Feeds the hub from the stream until `shutdown`, while any connection is open: an
    /// ordered consumer of every event, starting with new ones and, after a failure, where it
    /// left off.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut state = self.feed.subscribe();
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                r = state.wait_for(|f| f.conns > 0) => if r.is_err() { return },
            }
            tokio::select! {
                _ = &mut shutdown => return,
                r = self.feed() => match r {
                    Ok(()) => continue,
                    Err(e) => {
                        self.feed.send_modify(|f| f.live = false);
                        tracing::warn!(error = %Chain(&e), "websocket gateway feed interrupted; resuming");
                    }
                },
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Reads the stream until it fails, or (`Ok`) until no connection has been open for
    /// [`Settings::feed_idle`].
    async fn feed(&self) -> Result<(), BusError> {
        let stream = self.bus.ensure_stream().await?;
        let last = self.last_offset.load(Ordering::Relaxed);
        let deliver_policy = if last == 0 {
            DeliverPolicy::New
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: last + 1,
            }
        };
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: self.bus.namespace().subject(">"),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(BusError::js("creating the gateway's ordered consumer"))?;
        // An ordered consumer outlives its client by 30 s (its inactivity threshold), still
        // sent events meanwhile: an idle stop deletes it.
        let name = consumer.cached_info().name.clone();
        let mut messages = consumer
            .messages()
            .await
            .map_err(BusError::js("pulling messages"))?;
        self.feed.send_modify(|f| f.live = true);
        tracing::debug!(from = last, "websocket gateway feed started");
        let mut idle_check = tokio::time::interval(self.settings.feed_idle);
        idle_check.tick().await;
        // Stopped at the second check in a row that finds no connection: at least
        // `feed_idle` without one.
        let mut idle_at_last_check = false;
        loop {
            let m = tokio::select! {
                m = messages.next() => m,
                _ = idle_check.tick() => {
                    let idle = self.feed.borrow().conns == 0;
                    let stop_now = idle && idle_at_last_check;
                    idle_at_last_check = idle;
                    if !stop_now {
                        continue;
                    }
                    // Stop only if still nobody is connected, decided under the lock a
                    // connection registers under: one that comes after waits for the next feed.
                    let stopped = self.feed.send_if_modified(|f| {
                        if f.conns == 0 {
                            f.live = false;
                            true
                        } else {
                            false
                        }
                    });
                    if stopped {
                        // Nobody heard the events since: the next feed starts with new ones.
                        self.last_offset.store(0, Ordering::Relaxed);
                        drop(messages);
                        if let Err(e) = stream.delete_consumer(&name).await {
                            // It expires by itself (recreated after a gap, it has another name).
                            tracing::debug!(error = %e, "deleting the gateway's idle feed");
                        }
                        tracing::debug!("websocket gateway feed stopped: no connection");
                        return Ok(());
                    }
                    idle_at_last_check = false;
                    continue;
                }
            };
            let Some(m) = m else { break };
            let m = m.map_err(BusError::js("receiving a message"))?;
            let Ok(info) = m.info() else { continue };
            let offset = info.stream_sequence;
            if self.bus.foreign_publisher(m.headers.as_ref()).is_some() {
                // Another installation's event on this stream: never this one's customers'.
                self.last_offset.fetch_max(offset, Ordering::Relaxed);
                continue;
            }
            // Most events have nobody connected to hear them: skip those before decoding.
            if !self.listened(vbin_bus::customer_of(&m.subject)) {
                self.last_offset.fetch_max(offset, Ordering::Relaxed);
                continue;
            }
            match serde_json::from_slice::<PublishedEvent>(&m.payload) {
                Ok(e) => {
                    self.dispatch(offset, &e);
                }
                Err(e) => {
                    self.last_offset.fetch_max(offset, Ordering::Relaxed);
                    tracing::error!(offset, error = %e, "undecodable event; not pushed");
                }
            }
        }
        Err(BusError::Ended)
    }
}

/// The push of an event, as API.md shows it, with its offset.
pub(crate) fn push_text(offset: u64, e: &PublishedEvent, topic: &EventTopic) -> Utf8Bytes {
    /// The push, the resource copied in as written.
    #[derive(serde::Serialize)]
    struct Push<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        event: &'a str,
        topic: String,
        offset: u64,
        data: &'a serde_json::value::RawValue,
    }
    serde_json::to_string(&Push {
        kind: "event",
        event: &e.event_type,
        topic: topic.to_string(),
        offset,
        data: &e.resource,
    })
    .expect("a push serializes")
    .into()
}
