//! NATS JetStream plumbing shared by every part of vbin: connecting (with retry, so a process
//! starts while NATS is down and recovers by itself), the installation's event stream (in its
//! namespace, claimed by the installation so that another one sharing the NATS server cannot
//! use it), and durable pull consumers with explicit acks that feed committed events to a
//! handler, skipping events another installation published.

mod shared;
pub use shared::{Route, Shared};

use async_nats::jetstream::{self, consumer, stream, AckKind};
use futures::StreamExt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;
use vbin_event_schema::{
    relative_subject_filter, AggregateEvent, Installation, Namespace, PublishedEvent,
    INSTALLATION_HEADER,
};

/// Errors talking to NATS. The NATS client's error is the source: log with [`Chain`] (or
/// anything that walks `source()`) to see it.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Connecting failed.
    #[error("nats connect")]
    Connect(#[source] async_nats::ConnectError),
    /// A server address in the NATS URL list is not one.
    #[error(
        "NATS_URL: {0:?} is not a server address (nats://host:port; several separated by commas)"
    )]
    BadServer(String),
    /// A JetStream API call failed.
    #[error("jetstream: {op}")]
    JetStream {
        /// What was being done.
        op: &'static str,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A consumer's message stream ended.
    #[error("jetstream: message stream ended")]
    Ended,
    /// The stream is another installation's.
    #[error(
        "the NATS stream {stream} belongs to installation {theirs}, not to this one ({ours}): \
         two installations must not share a stream (a configuration copied from another \
         installation? check VBIN_NATS_NAMESPACE; docs/operations.md, \"Namespaces on NATS\")"
    )]
    Foreign {
        /// The stream's name.
        stream: String,
        /// This installation's id.
        ours: Uuid,
        /// The id of the installation the stream belongs to.
        theirs: Uuid,
    },
}

impl BusError {
    /// Wraps a client error from `op`: `.map_err(BusError::js("acking"))`.
    pub fn js<E>(op: &'static str) -> impl FnOnce(E) -> Self
    where
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        move |e| Self::JetStream {
            op,
            source: e.into(),
        }
    }
}

/// Displays an error with its chain of causes: `outer: cause: cause of the cause`. For logs:
/// `tracing::warn!(error = %Chain(&err), ...)` (a field's `Display` alone shows only the outer
/// error). A cause whose text the previous message already ends with (`"redis: {0}"` over its
/// source) is not repeated.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut last = self.0.to_string();
        f.write_str(&last)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            let text = c.to_string();
            if !last.ends_with(&text) {
                write!(f, ": {text}")?;
            }
            last = text;
            cause = c.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod chain_tests {
    use super::Chain;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("middle: {0}")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn shows_every_cause_once() {
        let e = Outer(Middle(std::io::Error::other("disk on fire")));
        assert_eq!(Chain(&e).to_string(), "outer: middle: disk on fire");
    }
}

/// A NATS connection with its JetStream context, for one installation.
#[derive(Clone)]
pub struct Bus {
    /// Core NATS client.
    pub client: async_nats::Client,
    /// JetStream context.
    pub js: jetstream::Context,
    installation: Arc<Installation>,
    foreign: Arc<ForeignLog>,
    replicas: Option<usize>,
    /// This process has found or made the event stream: from then on it only reads it.
    stream_seen: Arc<AtomicBool>,
}

/// Counts the events of other installations the consumers skipped, and says so at most once a
/// minute (a shared stream would otherwise fill the log with one line per event).
#[derive(Default)]
struct ForeignLog(Mutex<ForeignCount>);

#[derive(Default)]
struct ForeignCount {
    skipped: u64,
    last_said: Option<Instant>,
}

impl ForeignLog {
    fn skipped(&self, consumer: &str, theirs: &str, ours: Uuid) {
        metrics::counter!("vbin_consumer_events_total", "consumer" => consumer.to_string(), "outcome" => "foreign").increment(1);
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        c.skipped += 1;
        if c.last_said
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            tracing::warn!(
                consumer,
                installation = %theirs,
                this_installation = %ours,
                skipped = c.skipped,
                "skipped events another installation published on this installation's stream \
                 (said at most once a minute; the count is since the last time)"
            );
            c.skipped = 0;
            c.last_said = Some(Instant::now());
        }
    }
}

/// The text of a stream's description that names the installation it belongs to.
const CLAIM: &str = "vbin installation ";

/// How long JetStream remembers message ids for de-duplication. It must exceed the relay's
/// worst gap between publishing a batch and recording its checkpoint; consumers are idempotent
/// regardless.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);

impl Bus {
    /// Connects, retrying in the background if NATS is not up yet (the call returns at once).
    /// `urls` is one server or several separated by commas (the nodes of a cluster: the
    /// client picks one and moves to another when it goes away).
    pub async fn connect(
        urls: &str,
        name: &str,
        installation: Installation,
    ) -> Result<Self, BusError> {
        let servers = servers(urls)?;
        let client = async_nats::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(3))
            .connect(servers)
            .await
            .map_err(BusError::Connect)?;
        let js = jetstream::new(client.clone());
        Ok(Self {
            client,
            js,
            installation: Arc::new(installation),
            foreign: Arc::default(),
            replicas: None,
            stream_seen: Arc::default(),
        })
    }

    /// Sets how many copies the cluster keeps of the event stream and of every durable
    /// consumer (`VBIN_STREAM_REPLICAS`): made so, and an existing stream or consumer with
    /// another count is changed in place (never recreated). Without it, new ones get one copy
    /// and existing ones keep theirs, so a process started without the setting cannot shrink
    /// a cluster's stream.
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = Some(replicas);
        self
    }

    /// The installation this connection publishes and consumes for.
    pub fn installation(&self) -> &Installation {
        &self.installation
    }

    /// The installation's namespace on NATS.
    pub fn namespace(&self) -> &Namespace {
        &self.installation.namespace
    }

    /// The installation that published a message, if its headers name one other than this.
    pub fn foreign_publisher<'h>(
        &self,
        headers: Option<&'h async_nats::HeaderMap>,
    ) -> Option<&'h str> {
        let theirs = headers?.get(INSTALLATION_HEADER)?.as_str();
        (theirs.parse::<Uuid>().ok() != Some(self.installation.id)).then_some(theirs)
    }

    /// The headers every event this installation publishes carries.
    pub fn publish_headers(&self) -> async_nats::HeaderMap {
        let mut h = async_nats::HeaderMap::new();
        h.insert(
            INSTALLATION_HEADER,
            self.installation.id.to_string().as_str(),
        );
        h
    }

    /// Whether the server this connection is on has multi-filter consumers (NATS 2.10+), as it
    /// said when this connection was made (false before the first connection).
    pub fn multi_filter(&self) -> bool {
        has_multi_filter(&self.client.server_info().version)
    }

    /// True while the connection is up.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Creates the installation's event stream if missing (idempotent) and makes sure it is
    /// this installation's: a stream whose description names another installation, or whose
    /// last event another installation published, is refused ([`BusError::Foreign`]). A stream
    /// that names none (made before namespaces) is claimed.
    ///
    /// Only until this process has once found or made the stream: after that a stream not
    /// found is an error, never a new stream. A cluster still electing the stream's leader can
    /// answer "not found" for a moment, and a fresh stream in its place would lose every event
    /// on the old one to the consumers (the relay's checkpoint is past them). A stream deleted
    /// on purpose is made again when vbin restarts.
    pub async fn ensure_stream(&self) -> Result<stream::Stream, BusError> {
        let ns = self.namespace();
        let ours = self.installation.id;
        let mut stream = if self.stream_seen.load(Ordering::Acquire) {
            match self.js.get_stream(ns.stream()).await {
                Ok(s) => s,
                Err(e) => {
                    use async_nats::jetstream::{context::GetStreamErrorKind, ErrorCode};
                    let gone = matches!(e.kind(), GetStreamErrorKind::JetStream(j)
                        if j.error_code() == ErrorCode::STREAM_NOT_FOUND);
                    return Err(BusError::js(if gone {
                        "the event stream is gone (vbin makes it only when it starts: restart vbin if the stream was deleted)"
                    } else {
                        "reading the event stream"
                    })(e));
                }
            }
        } else {
            self.js
                .get_or_create_stream(stream::Config {
                    name: ns.stream(),
                    description: Some(format!("{CLAIM}{ours}")),
                    subjects: vec![ns.subject(">")],
                    storage: stream::StorageType::File,
                    duplicate_window: DUPLICATE_WINDOW,
                    max_age: Duration::from_secs(7 * 24 * 3600),
                    num_replicas: self.replicas.unwrap_or(1),
                    ..Default::default()
                })
                .await
                .map_err(BusError::js("creating the event stream"))?
        };
        self.stream_seen.store(true, Ordering::Release);
        let mut config = stream.cached_info().config.clone();
        if let Some(n) = self.replicas.filter(|n| *n != config.num_replicas) {
            tracing::info!(stream = %ns.stream(), from = config.num_replicas, to = n, "changing the event stream's replicas");
            config = self
                .js
                .update_stream(stream::Config {
                    num_replicas: n,
                    ..config
                })
                .await
                .map_err(BusError::js("changing the event stream's replicas"))?
                .config;
            stream = self
                .js
                .get_stream(ns.stream())
                .await
                .map_err(BusError::js("reading the event stream"))?;
        }
        let foreign = |theirs: Uuid| BusError::Foreign {
            stream: ns.stream(),
            ours,
            theirs,
        };
        match config
            .description
            .as_deref()
            .and_then(|d| d.strip_prefix(CLAIM))
        {
            Some(id) => match id.parse::<Uuid>() {
                Ok(id) if id == ours => Ok(stream),
                Ok(theirs) => Err(foreign(theirs)),
                Err(_) => Err(foreign(Uuid::nil())),
            },
            None => {
                let last = stream
                    .info()
                    .await
                    .map_err(BusError::js("reading the stream's info"))?
                    .state
                    .last_sequence;
                if last > 0 {
                    if let Ok(m) = stream.get_raw_message(last).await {
                        if let Some(theirs) = self.foreign_publisher(Some(&m.headers)) {
                            return Err(foreign(theirs.parse().unwrap_or_default()));
                        }
                    }
                }
                tracing::info!(stream = %ns.stream(), installation = %ours, "claiming the event stream for this installation");
                self.js
                    .update_stream(stream::Config {
                        description: Some(format!("{CLAIM}{ours}")),
                        ..config
                    })
                    .await
                    .map_err(BusError::js("claiming the event stream"))?;
                self.js
                    .get_stream(ns.stream())
                    .await
                    .map_err(BusError::js("reading the event stream"))
            }
        }
    }
}

/// A durable consumer's settings.
#[derive(Clone, Debug)]
pub struct ConsumerSpec {
    /// Durable name (one per logical subscriber; instances share it to split the work).
    pub name: String,
    /// Subject filter within the installation's namespace, e.g. `*.call.*`: the one filter
    /// on a server without multi-filter consumers (NATS 2.9).
    pub filter_subject: String,
    /// One exact filter per event type, e.g. `*.call.call_bridged` and `*.call.call_chain_ended`,
    /// used instead of `filter_subject` where the server has multi-filter consumers (NATS
    /// 2.10+), so that it sends only those types. Empty when `filter_subject` is exact already
    /// (one type) or the consumer takes every type.
    pub type_filters: Vec<String>,
    /// Event types handled; others matching the filter are acked and skipped (empty: all).
    pub event_types: Vec<String>,
    /// How long a delivered message may stay unacked before redelivery.
    pub ack_wait: Duration,
    /// Deliveries before giving up (-1: never give up).
    pub max_deliver: i64,
    /// Events handled at once (1: strictly in stream order). With more, events are spread
    /// over this many lanes by aggregate id, so one aggregate's events keep their order.
    pub lanes: usize,
    /// Durable consumers this one takes over from (their work moved into it): created, it
    /// starts where the furthest behind of them stood, and they are deleted.
    pub replaces: Vec<String>,
}

impl ConsumerSpec {
    /// A consumer of the events `event_types` (their `E::...` name constants; empty: all) of
    /// `E`'s aggregate type, across all customers.
    ///
    /// Panics if a name is not one of `E`'s events (a consumer that could never see it).
    pub fn for_events_of<E: AggregateEvent>(name: &str, event_types: &[&str]) -> Self {
        assert_events_of::<E>(name, event_types);
        Self::for_events(name, E::AGGREGATE, event_types)
    }

    /// A consumer of the given event types of one aggregate type, across all customers.
    /// Consumers of one aggregate's events use [`ConsumerSpec::for_events_of`].
    ///
    /// With one event type the server filters on it (the subject ends with the event type):
    /// a consumer of `call_hungup` is not sent every other call event. With several, a server
    /// with multi-filter consumers (NATS 2.10+) filters on each of them; an older one sends
    /// the aggregate's events and the consumer skips the others by subject, without decoding
    /// them.
    pub fn for_events(name: &str, aggregate_type: &str, event_types: &[&str]) -> Self {
        let filter_subject = match event_types {
            [one] => relative_subject_filter(aggregate_type, one),
            _ => relative_subject_filter(aggregate_type, "*"),
        };
        let type_filters = match event_types {
            [_, _, ..] => event_types
                .iter()
                .map(|t| relative_subject_filter(aggregate_type, t))
                .collect(),
            _ => Vec::new(),
        };
        Self {
            name: name.to_string(),
            filter_subject,
            type_filters,
            event_types: event_types.iter().map(|t| t.to_string()).collect(),
            ack_wait: Duration::from_secs(30),
            max_deliver: -1,
            lanes: 1,
            replaces: Vec::new(),
        }
    }

    /// A consumer of every event of every aggregate.
    pub fn all_events(name: &str) -> Self {
        Self {
            filter_subject: ">".to_string(),
            ..Self::for_events(name, "*", &[])
        }
    }

    /// The same with `lanes` events handled at once (ordered per aggregate).
    pub fn lanes(mut self, lanes: usize) -> Self {
        self.lanes = lanes.max(1);
        self
    }

    /// The same, taking over from the durable consumers `old` (whose handlers moved into this
    /// one): when this consumer is first created it resumes after the last event that all of
    /// them had acknowledged (what some had handled already comes again; handlers are
    /// idempotent), rather than from the start of the stream, and they are deleted.
    pub fn replacing(mut self, old: &[&str]) -> Self {
        self.replaces = old.iter().map(|n| n.to_string()).collect();
        self
    }
}

/// Panics unless every one of `event_types` is one of `E`'s events (`name`, a consumer or a
/// route, could never see it).
fn assert_events_of<E: AggregateEvent>(name: &str, event_types: &[&str]) {
    for t in event_types {
        assert!(
            E::NAMES.contains(t),
            "{name}: {t} is not an event of {}",
            E::AGGREGATE
        );
    }
}

/// Consumes `spec` until `shutdown` resolves, calling `handle` for each event in stream order.
/// `Ok` acks; `Err` naks with a growing delay so the event comes back. Undecodable messages are
/// terminated and logged (they cannot succeed later). Connection problems are retried forever.
pub async fn run_consumer<H, F, E>(
    bus: Bus,
    spec: ConsumerSpec,
    handle: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(PublishedEvent) -> F,
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    supervise(&spec.name, || consume(&bus, &spec, &handle), shutdown).await
}

/// Runs `run` again (after a pause) whenever it fails, until `shutdown` resolves.
async fn supervise<R, Fut>(name: &str, run: R, shutdown: impl Future<Output = ()>)
where
    R: Fn() -> Fut,
    Fut: Future<Output = Result<(), BusError>>,
{
    tokio::pin!(shutdown);
    loop {
        let run = run();
        tokio::select! {
            _ = &mut shutdown => return,
            res = run => {
                if let Err(e) = res {
                    tracing::warn!(consumer = %name, error = %Chain(&e), "consumer interrupted; retrying");
                }
            }
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// The server-side filters of `spec` on `bus`'s server, in the installation's namespace:
/// `(filter_subject, filter_subjects)`, one of them empty.
fn server_filters(bus: &Bus, spec: &ConsumerSpec) -> (String, Vec<String>) {
    let ns = bus.namespace();
    if !spec.type_filters.is_empty() && bus.multi_filter() {
        let each = spec.type_filters.iter().map(|f| ns.subject(f)).collect();
        (String::new(), each)
    } else {
        (ns.subject(&spec.filter_subject), Vec::new())
    }
}

/// Whether a NATS server of `version` (`2.10.4`, `2.11.0-beta.1`) has multi-filter consumers
/// (2.10 and later).
fn has_multi_filter(version: &str) -> bool {
    let mut parts = version.split(['.', '-']).map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (2, 10),
        _ => false,
    }
}

/// Opens (creating if needed) the durable pull consumer of `spec`.
async fn open_consumer(bus: &Bus, spec: &ConsumerSpec) -> Result<consumer::PullConsumer, BusError> {
    // The stream first: its request waits for the connection, so the server's version (for
    // the filters) is known after it.
    let stream = bus.ensure_stream().await?;
    let (filter_subject, filter_subjects) = server_filters(bus, spec);
    let config = consumer::pull::Config {
        durable_name: Some(spec.name.clone()),
        filter_subject: filter_subject.clone(),
        filter_subjects: filter_subjects.clone(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: spec.ack_wait,
        max_deliver: spec.max_deliver,
        max_ack_pending: 10_000,
        num_replicas: bus.replicas.unwrap_or(0),
        ..Default::default()
    };
    let mut consumer: consumer::PullConsumer = match stream
        .get_consumer::<consumer::pull::Config>(&spec.name)
        .await
    {
        Ok(c) => c,
        Err(_) => {
            let config = match replaced_position(&stream, spec).await? {
                Some(start_sequence) => consumer::pull::Config {
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence },
                    ..config.clone()
                },
                None => config.clone(),
            };
            stream
                .get_or_create_consumer(&spec.name, config)
                .await
                .map_err(BusError::js("creating the consumer"))?
        }
    };
    // Deleted only once this one exists (a crash in between leaves them to the next start).
    for old in &spec.replaces {
        if stream.delete_consumer(old).await.is_ok() {
            tracing::info!(consumer = %spec.name, replaced = %old, "deleted the consumer this one replaces");
        }
    }
    let info = consumer
        .info()
        .await
        .map_err(BusError::js("reading the consumer's info"))?
        .clone();
    let stored = info.config;
    let mut stored_each = stored.filter_subjects.clone();
    stored_each.sort();
    let mut wanted_each = filter_subjects.clone();
    wanted_each.sort();
    if stored.filter_subject != filter_subject || stored_each != wanted_each {
        // A durable left by an older version with other filters would feed the wrong events
        // (or, made before the server had multi-filter consumers, more than needed): replace
        // it, resuming after the last message it had acknowledged in order (what it had not
        // acknowledged is delivered again; handlers are idempotent).
        let resume = info.ack_floor.stream_sequence + 1;
        tracing::warn!(consumer = %spec.name, stored = %stored.filter_subject, stored_each = ?stored.filter_subjects, wanted = %filter_subject, wanted_each = ?filter_subjects, resume, "recreating consumer with new filter");
        stream
            .delete_consumer(&spec.name)
            .await
            .map_err(BusError::js("deleting the consumer"))?;
        return stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: resume,
                },
                ..config
            })
            .await
            .map_err(BusError::js("recreating the consumer"));
    }
    match bus.replicas {
        Some(n) if n != stored.num_replicas => {
            // Creating a durable that exists with a changed setting changes it in place: its
            // position and pending acks are kept.
            tracing::info!(consumer = %spec.name, from = stored.num_replicas, to = n, "changing the consumer's replicas");
            stream
                .create_consumer(consumer::pull::Config {
                    // As created (a consumer that replaced others started at a sequence).
                    deliver_policy: stored.deliver_policy,
                    ..config
                })
                .await
                .map_err(BusError::js("changing the consumer's replicas"))
        }
        _ => Ok(consumer),
    }
}

/// Where a new consumer replacing `spec.replaces` starts: after the lowest acknowledgement
/// floor among those that exist (None: none of them does).
async fn replaced_position(
    stream: &jetstream::stream::Stream,
    spec: &ConsumerSpec,
) -> Result<Option<u64>, BusError> {
    let mut floor: Option<u64> = None;
    for old in &spec.replaces {
        let Ok(mut c) = stream.get_consumer::<consumer::pull::Config>(old).await else {
            continue;
        };
        let info = c
            .info()
            .await
            .map_err(BusError::js("reading a replaced consumer's info"))?;
        let at = info.ack_floor.stream_sequence;
        floor = Some(floor.map_or(at, |f| f.min(at)));
    }
    if let Some(at) = floor {
        tracing::info!(consumer = %spec.name, replaces = ?spec.replaces, resume = at + 1, "creating the consumer where the ones it replaces stood");
    }
    Ok(floor.map(|f| f + 1))
}

/// The server addresses of a comma-separated list.
fn servers(urls: &str) -> Result<Vec<async_nats::ServerAddr>, BusError> {
    let list: Vec<_> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| u.parse().map_err(|_| BusError::BadServer(u.to_string())))
        .collect::<Result<_, _>>()?;
    if list.is_empty() {
        return Err(BusError::BadServer(urls.to_string()));
    }
    Ok(list)
}

async fn consume<H, F, E>(bus: &Bus, spec: &ConsumerSpec, handle: &H) -> Result<(), BusError>
where
    H: Fn(PublishedEvent) -> F,
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let consumer = open_consumer(bus, spec).await?;
    let counted = Counted::new(&spec.name);
    let counted = &counted;
    let mut messages = consumer
        .messages()
        .await
        .map_err(BusError::js("pulling messages"))?;
    if spec.lanes <= 1 {
        while let Some(msg) = messages.next().await {
            let msg = msg.map_err(BusError::js("receiving a message"))?;
            if let Some(d) = decode_wanted(bus, spec, msg).await? {
                handle_decoded(spec, counted, handle, d).await?;
            }
        }
        return Err(BusError::Ended);
    }
    // Lanes: one aggregate always goes to the same lane, which handles its events in order.
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..spec.lanes)
        .map(|_| tokio::sync::mpsc::channel::<Decoded>(64))
        .unzip();
    let read = async move {
        while let Some(msg) = messages.next().await {
            let msg = msg.map_err(BusError::js("receiving a message"))?;
            // Skipped events are only acked here: no lane, no wake-up of a lane's task (most
            // call events are skipped by most call consumers). The others are decoded here,
            // once: their aggregate id picks the lane, and the lane gets the decoded event.
            let Some(d) = decode_wanted(bus, spec, msg).await? else {
                continue;
            };
            let lane = lane_of(d.event.aggregate_id, senders.len());
            if senders[lane].send(d).await.is_err() {
                break; // a lane failed; its error is reported below
            }
        }
        Err::<(), _>(BusError::Ended)
    };
    let lanes = receivers.into_iter().map(|mut rx| async move {
        while let Some(d) = rx.recv().await {
            handle_decoded(spec, counted, handle, d).await?;
        }
        Ok::<(), BusError>(())
    });
    futures::future::try_join(read, futures::future::try_join_all(lanes))
        .await
        .map(|_| ())
}

/// The lane of an aggregate's events: a hash of its id.
fn lane_of(aggregate_id: Uuid, lanes: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    aggregate_id.hash(&mut h);
    (h.finish() % lanes as u64) as usize
}

/// The customer an event belongs to, read from its subject
/// (`vbin.<namespace>.<customer>.<aggregate type>.<event type>`) without decoding the event.
pub fn customer_of(subject: &str) -> Option<Uuid> {
    subject.split('.').nth(2)?.parse().ok()
}

/// Whether `spec` handles the event of `subject` (which ends with its type).
fn wanted(spec: &ConsumerSpec, subject: &str) -> bool {
    let event_type = subject.rsplit('.').next().unwrap_or_default();
    spec.event_types.is_empty() || spec.event_types.iter().any(|t| t == event_type)
}

/// Acks `msg` if `spec` does not handle its event type, read from the subject (which ends with
/// it) before anything is decoded. True if it did.
async fn skip_unwanted(spec: &ConsumerSpec, msg: &jetstream::Message) -> Result<bool, BusError> {
    if wanted(spec, &msg.subject) {
        return Ok(false);
    }
    msg.ack().await.map_err(BusError::js("acking"))?;
    Ok(true)
}

/// Acks `msg` if another installation published it (it is provably not in this installation's
/// log; said once a minute). True if it did.
async fn skip_foreign(
    bus: &Bus,
    spec: &ConsumerSpec,
    msg: &jetstream::Message,
) -> Result<bool, BusError> {
    let Some(theirs) = bus.foreign_publisher(msg.headers.as_ref()) else {
        return Ok(false);
    };
    bus.foreign.skipped(&spec.name, theirs, bus.installation.id);
    msg.ack().await.map_err(BusError::js("acking"))?;
    Ok(true)
}

/// A consumer's (or a shared consumer's route's) `vbin_consumer_events_total` counters,
/// registered once: looking them up by labels for every event cloned the consumer's name and
/// hashed the labels each time.
struct Counted {
    ok: metrics::Counter,
    retry: metrics::Counter,
}

impl Counted {
    fn new(name: &str) -> Self {
        let of = |outcome: &'static str| metrics::counter!("vbin_consumer_events_total", "consumer" => name.to_string(), "outcome" => outcome);
        Self {
            ok: of("ok"),
            retry: of("retry"),
        }
    }
}

/// A delivered message this consumer handles, with its event decoded.
struct Decoded {
    msg: jetstream::Message,
    event: PublishedEvent,
}

/// Filters and decodes one message: None if it was acked without handling (a type this
/// consumer does not take, another installation's event) or terminated (undecodable: it
/// cannot succeed later).
async fn decode_wanted(
    bus: &Bus,
    spec: &ConsumerSpec,
    msg: jetstream::Message,
) -> Result<Option<Decoded>, BusError> {
    if skip_unwanted(spec, &msg).await? {
        return Ok(None);
    }
    if skip_foreign(bus, spec, &msg).await? {
        return Ok(None);
    }
    let event: PublishedEvent = match serde_json::from_slice(&msg.payload) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(consumer = %spec.name, subject = %msg.subject, error = %e, "undecodable event; terminated");
            let _ = msg.ack_with(AckKind::Term).await;
            return Ok(None);
        }
    };
    if !spec.event_types.is_empty() && !spec.event_types.contains(&event.event_type) {
        msg.ack().await.map_err(BusError::js("acking"))?;
        return Ok(None);
    }
    Ok(Some(Decoded { msg, event }))
}

/// Handles a decoded event, then acks it, or naks it with a delay that grows with its
/// deliveries so that it comes back.
async fn handle_decoded<H, F, E>(
    spec: &ConsumerSpec,
    counted: &Counted,
    handle: &H,
    d: Decoded,
) -> Result<(), BusError>
where
    H: Fn(PublishedEvent) -> F,
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let Decoded { msg, event } = d;
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
    let (event_id, event_type) = (event.event_id, event.event_type.clone());
    match handle(event).await {
        Ok(()) => {
            msg.ack().await.map_err(BusError::js("acking"))?;
            counted.ok.increment(1);
        }
        Err(e) => {
            let delay = Duration::from_millis(100u64 << delivered.min(8));
            tracing::warn!(consumer = %spec.name, %event_id, %event_type, delivered, error = %e, "handler failed; will redeliver");
            counted.retry.increment(1);
            let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
        }
    }
    Ok(())
}

/// The consumers (and other tasks) of one part, stopped together: [`Group::run`] runs them
/// until its shutdown resolves, then signals every one of them to stop and waits until they
/// have (each consumer finishes the events it is handling).
pub struct Group<'a> {
    bus: Bus,
    tx: tokio::sync::watch::Sender<bool>,
    tasks: Vec<futures::future::BoxFuture<'a, ()>>,
}

impl<'a> Group<'a> {
    /// An empty group consuming from `bus`.
    pub fn new(bus: Bus) -> Self {
        Self {
            bus,
            tx: tokio::sync::watch::channel(false).0,
            tasks: Vec::new(),
        }
    }

    /// Adds a consumer ([`run_consumer`]).
    pub fn consumer<H, F, E>(&mut self, spec: ConsumerSpec, handle: H) -> &mut Self
    where
        H: Fn(PublishedEvent) -> F + Send + Sync + 'a,
        F: Future<Output = Result<(), E>> + Send + 'a,
        E: std::fmt::Display + Send + 'a,
    {
        let stop = self.stopped();
        let bus = self.bus.clone();
        self.tasks
            .push(Box::pin(run_consumer(bus, spec, handle, stop)));
        self
    }

    /// Adds a consumer shared by several routes ([`Shared`]).
    pub fn shared(&mut self, shared: Shared) -> &mut Self {
        let (spec, handle) = shared.into_consumer();
        self.consumer(spec, handle)
    }

    /// Adds a task, given the stop signal it must end on.
    pub fn task<T: Future<Output = ()> + Send + 'a>(
        &mut self,
        task: impl FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> T,
    ) -> &mut Self {
        let t = task(self.stopped());
        self.tasks.push(Box::pin(t));
        self
    }

    /// The stop signal.
    fn stopped(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        let mut rx = self.tx.subscribe();
        Box::pin(async move {
            let _ = rx.wait_for(|s| *s).await;
        })
    }

    /// Runs every member until `shutdown`, then stops them and waits for them.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Group { tx, tasks, .. } = self;
        let all = futures::future::join_all(tasks);
        tokio::pin!(all);
        tokio::select! {
            _ = shutdown => { let _ = tx.send(true); all.await; }
            _ = &mut all => {}
        }
    }
}

/// One message handed to a batch handler.
#[derive(Debug)]
pub struct Delivery {
    /// The envelope, decoded on first use ([`Delivery::event`]).
    event: std::sync::OnceLock<Result<PublishedEvent, serde_json::Error>>,
    /// The NATS subject.
    pub subject: String,
    /// The raw payload (for dead-lettering what cannot be decoded).
    pub payload: bytes::Bytes,
    /// How many times JetStream has delivered it (1 the first time).
    pub delivered: i64,
    /// Its sequence in the stream.
    pub stream_sequence: u64,
}

impl Delivery {
    /// The decoded envelope, or why it could not be decoded. Decoded on first use: a handler
    /// that can decide from the subject alone ([`Delivery::customer_id`]) skips the decoding,
    /// most of a delivery's cost (the webhook recorder, for customers without a webhook).
    pub fn event(&self) -> &Result<PublishedEvent, serde_json::Error> {
        self.event
            .get_or_init(|| serde_json::from_slice(&self.payload))
    }

    /// The customer the event belongs to, read from the subject ([`customer_of`]).
    pub fn customer_id(&self) -> Option<Uuid> {
        customer_of(&self.subject)
    }
}

/// What to do with a delivered message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Done (applied, skipped as a duplicate, or parked): acknowledge.
    Ack,
    /// Not done: deliver it again after this delay.
    Retry(Duration),
}

/// Like [`run_consumer`], but hands the handler every message that is ready at once (up to
/// `max_batch`), so it can apply them in one transaction; `handle` returns one disposition per
/// delivery, in order. Undecodable messages are handed over too (the handler decides).
pub async fn run_batch_consumer<H, F>(
    bus: Bus,
    spec: ConsumerSpec,
    max_batch: usize,
    handle: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Vec<Delivery>) -> F,
    F: Future<Output = Vec<Disposition>>,
{
    supervise(
        &spec.name,
        || consume_batches(&bus, &spec, max_batch, &handle),
        shutdown,
    )
    .await
}

async fn consume_batches<H, F>(
    bus: &Bus,
    spec: &ConsumerSpec,
    max_batch: usize,
    handle: &H,
) -> Result<(), BusError>
where
    H: Fn(Vec<Delivery>) -> F,
    F: Future<Output = Vec<Disposition>>,
{
    let consumer = open_consumer(bus, spec).await?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(max_batch.max(1))
        .messages()
        .await
        .map_err(BusError::js("pulling messages"))?;
    let mut chunks = messages.ready_chunks(max_batch.max(1));
    while let Some(chunk) = chunks.next().await {
        let mut msgs = Vec::with_capacity(chunk.len());
        for m in chunk {
            let m = m.map_err(BusError::js("receiving a message"))?;
            if !skip_foreign(bus, spec, &m).await? {
                msgs.push(m);
            }
        }
        if msgs.is_empty() {
            continue;
        }
        let deliveries = msgs
            .iter()
            .map(|m| {
                let info = m.info().ok();
                Delivery {
                    event: std::sync::OnceLock::new(),
                    subject: m.subject.to_string(),
                    payload: m.payload.clone(),
                    delivered: info.as_ref().map(|i| i.delivered).unwrap_or(1),
                    stream_sequence: info.map(|i| i.stream_sequence).unwrap_or(0),
                }
            })
            .collect();
        let dispositions = handle(deliveries).await;
        let acks = msgs.iter().zip(dispositions).map(|(m, d)| async move {
            match d {
                Disposition::Ack => m.ack().await,
                Disposition::Retry(delay) => m.ack_with(AckKind::Nak(Some(delay))).await,
            }
        });
        for r in futures::future::join_all(acks).await {
            r.map_err(BusError::js("acking"))?;
        }
    }
    Err(BusError::Ended)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vbin_event_schema::{CallEvent, QueueEvent};

    #[test]
    fn a_delivery_names_its_customer_from_the_subject_and_decodes_when_asked() {
        let customer = Uuid::now_v7();
        let ns = vbin_event_schema::Namespace::new("ab-12").unwrap();
        let d = |payload: &'static [u8]| Delivery {
            event: std::sync::OnceLock::new(),
            subject: ns.subject_for(&customer, CallEvent::AGGREGATE, CallEvent::CALL_CREATED),
            payload: bytes::Bytes::from_static(payload),
            delivered: 1,
            stream_sequence: 1,
        };
        let bad = d(b"not json");
        assert_eq!(bad.customer_id(), Some(customer));
        assert!(
            bad.event.get().is_none(),
            "nothing decoded before it is asked for"
        );
        assert!(bad.event().is_err());
        let other = Delivery {
            subject: ns.subject(&format!(
                "not-a-uuid.{}.{}",
                CallEvent::AGGREGATE,
                CallEvent::CALL_CREATED
            )),
            ..d(b"{}")
        };
        assert_eq!(other.customer_id(), None);
    }

    #[test]
    fn specs_of_an_aggregates_events() {
        let s = ConsumerSpec::for_events_of::<CallEvent>("x", &[CallEvent::CALL_HUNGUP]);
        assert_eq!(
            s.filter_subject, "*.call.call_hungup",
            "one type: filtered by the server"
        );
        assert_eq!(s.event_types, [CallEvent::CALL_HUNGUP]);
        let two = ConsumerSpec::for_events_of::<CallEvent>(
            "x",
            &[CallEvent::CALL_HUNGUP, CallEvent::CALL_CREATED],
        );
        assert_eq!(two.filter_subject, "*.call.*");
        assert_eq!(
            two.type_filters,
            ["*.call.call_hungup", "*.call.call_created"],
            "several types: one filter each where the server has them"
        );
        assert!(s.type_filters.is_empty());
        let all = ConsumerSpec::all_events("y");
        assert_eq!(all.filter_subject, ">");
        assert!(all.event_types.is_empty());
        assert!(all.type_filters.is_empty());
    }

    #[test]
    fn multi_filter_consumers_come_with_nats_2_10() {
        for (v, has) in [
            ("2.9.10", false),
            ("2.10.0", true),
            ("2.15.1", true),
            ("2.11.0-beta.1", true),
            ("3.0.0", true),
            ("1.4.1", false),
            ("", false),
            ("garbage", false),
        ] {
            assert_eq!(has_multi_filter(v), has, "{v}");
        }
    }

    #[test]
    fn a_server_list_is_split_on_commas() {
        let l = servers("nats://127.0.0.1:4222, nats://127.0.0.1:4223,127.0.0.1:4224").unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l[1].port(), 4223);
        assert!(matches!(servers(" , "), Err(BusError::BadServer(_))));
        assert!(matches!(
            servers("nats://127.0.0.1:4222,nats://a b"),
            Err(BusError::BadServer(s)) if s == "nats://a b"
        ));
    }

    #[test]
    #[should_panic(expected = "is not an event of call")]
    fn another_aggregates_event_is_refused() {
        ConsumerSpec::for_events_of::<CallEvent>("x", &[QueueEvent::QUEUECALL_ABANDONED]);
    }
}
