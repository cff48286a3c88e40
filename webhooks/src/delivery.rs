//! Durable webhook delivery.
//!
//! - **Recorder** (`webhook-recorder`, a durable consumer of every event): for a customer with
//!   a `webhook_uri`, writes the delivery (exact body, target) to `webhook_deliveries` before
//!   anything is sent; a redelivered event finds its row and adds nothing.
//! - **Sender** (every process running the part): claims due deliveries by moving their
//!   `next_attempt_at` one lease ahead (a crashed sender's claims come due again), sends them
//!   concurrently, records each attempt and schedules the retry. A resource's next delivery
//!   waits while an earlier one of the same resource is pending (order per resource), and a
//!   customer has at most [`Settings::per_customer`] deliveries in flight, so a slow endpoint
//!   delays only its own customer.

use crate::guard::{AddressPolicy, GuardedResolver};
use crate::signing::{body_for, signed_headers, Secrets};
use chrono::{DateTime, Utc};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};
use uuid::Uuid;
use vbin_app::Executor;
use vbin_bus::{run_batch_consumer, Bus, ConsumerSpec, Delivery, Disposition};
use vbin_domain::Customer;

/// Durable consumer name of the recorder.
pub const RECORDER: &str = "webhook-recorder";

/// Delivery settings (the binary sets them from `VBIN_WEBHOOK_*`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Wait before each attempt: the first is normally 0 (at once); after the last, failed.
    pub schedule: Vec<Duration>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    pub total_timeout: Duration,
    /// Deliveries of one customer in flight at once.
    pub per_customer: usize,
    /// Deliveries in flight at once in this process.
    pub concurrency: usize,
    /// Where requests may go (SSRF protection).
    pub policy: AddressPolicy,
    /// An endpoint failing without a success for this long is disabled.
    pub disable_after: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        let s = |secs: u64| Duration::from_secs(secs);
        Self {
            // Immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, then failed (~27.6 h).
            schedule: vec![
                s(0),
                s(5),
                s(300),
                s(1800),
                s(7200),
                s(18000),
                s(36000),
                s(36000),
            ],
            connect_timeout: s(5),
            total_timeout: s(15),
            per_customer: 32,
            concurrency: 256,
            policy: AddressPolicy::default(),
            disable_after: s(5 * 24 * 3600),
        }
    }
}

impl Settings {
    /// The wait before attempt `n` (1-based) with ±10 % jitter; None when there is none.
    fn wait_before(&self, n: usize) -> Option<Duration> {
        let base = *self.schedule.get(n.checked_sub(1)?)?;
        let jitter = 0.9 + rand::random::<f64>() * 0.2;
        Some(base.mul_f64(jitter))
    }
}

/// Why recording or sending failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Postgres.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Loading the customer.
    #[error("loading the customer")]
    Customer(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A recent event's customer is not in the log yet: its creation is still committing (a
    /// new customer's billing account is written just before the customer).
    #[error("customer {0} is not created yet")]
    CustomerNotYet(Uuid),
}

/// How long an event whose customer does not exist is retried before it is taken to have no
/// customer (an account left behind by a customer creation that failed).
const CUSTOMER_GRACE: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

/// Why a delivery's attempt could not be recorded or followed up (it is sent again when its
/// lease expires).
#[derive(Debug, thiserror::Error)]
enum SendError {
    /// Writing the attempt failed (shared by every attempt of the batch).
    #[error("recording the attempt")]
    Record(#[source] Arc<sqlx::Error>),
    /// The group commit task is gone (shutting down).
    #[error("the attempt recorder has stopped")]
    RecorderStopped,
    /// Starting or reading the endpoint's failure clock.
    #[error("tracking the endpoint's failures")]
    TrackFailure(#[source] sqlx::Error),
    /// Disabling the endpoint.
    #[error("disabling the endpoint")]
    Disable(#[source] sqlx::Error),
}

/// Runs the recorder and the sender until `shutdown`.
pub async fn run(
    pool: sqlx::PgPool,
    executor: Executor,
    bus: Bus,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let wake = Arc::new(Notify::new());
    let fresh = Fresh::default();
    let mut group = vbin_bus::Group::new(bus.clone());
    group
        .task(|stop| {
            run_batch_consumer(
                bus,
                ConsumerSpec::all_events(RECORDER),
                RECORD_BATCH,
                |batch| {
                    record_batch(
                        pool.clone(),
                        executor.clone(),
                        batch,
                        (wake.clone(), fresh.clone()),
                    )
                },
                stop,
            )
        })
        .task(|stop| {
            Sender::new(
                pool.clone(),
                executor.clone(),
                settings,
                (wake.clone(), fresh.clone()),
            )
            .run(stop)
        });
    group.run(shutdown).await;
}

/// Events the recorder writes in one statement.
const RECORD_BATCH: usize = 500;

/// Customers this process recorded deliveries for since the sender last looked: the sender
/// claims for them at once, without waiting for its next search of the table.
type Fresh = Arc<Mutex<std::collections::HashSet<Uuid>>>;

/// How often the sender searches the table for the customers with pending deliveries (those
/// recorded by other processes, and retries).
const DISCOVER_EVERY: Duration = Duration::from_secs(1);

/// Records the deliveries of a batch of events (one insert for them all); on failure the whole
/// batch comes back (a redelivered event finds its row and adds nothing).
async fn record_batch(
    pool: sqlx::PgPool,
    executor: Executor,
    batch: Vec<Delivery>,
    (wake, fresh): (Arc<Notify>, Fresh),
) -> Vec<Disposition> {
    let n = batch.len();
    match record(&pool, &executor, batch).await {
        Ok((created, customers)) => {
            if created > 0 {
                metrics::counter!("vbin_webhook_deliveries_created_total").increment(created);
                fresh.lock().expect("fresh").extend(customers);
                wake.notify_one();
            }
            vec![Disposition::Ack; n]
        }
        Err(e) => {
            tracing::warn!(error = %vbin_bus::Chain(&e), events = n, "recording webhook deliveries failed; will retry");
            vec![Disposition::Retry(Duration::from_secs(1)); n]
        }
    }
}

/// Logs an event that can never be decoded: nothing to deliver (the projections dead-letter it).
fn undecodable(d: &Delivery) {
    if let Err(err) = d.event() {
        tracing::error!(subject = %d.subject, error = %err, "undecodable event; no webhook");
    }
}

/// Writes the delivery of each event whose customer has a webhook; returns how many were new
/// and the customers they are for.
async fn record(
    pool: &sqlx::PgPool,
    executor: &Executor,
    batch: Vec<Delivery>,
) -> Result<(u64, Vec<Uuid>), WebhookError> {
    let mut customers: HashMap<Uuid, Option<Customer>> = HashMap::new();
    let mut rows = RecordRows::default();
    for d in batch {
        // The customer is read from the subject (the envelope only if the subject lacks it):
        // most events belong to customers without a webhook, and deciding those without
        // decoding the envelope spares most of the recorder's work.
        let Some(id) = d
            .customer_id()
            .or_else(|| d.event().as_ref().ok().map(|e| e.customer_id))
        else {
            undecodable(&d);
            continue;
        };
        let customer = match customers.entry(id) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(slot) => {
                let c = executor
                    .load::<Customer>(id, None)
                    .await
                    .map_err(|err| WebhookError::Customer(Box::new(err)))?;
                if c.is_none() {
                    if let Ok(e) = d.event() {
                        if chrono::Utc::now() - e.timestamp < CUSTOMER_GRACE {
                            // The batch comes again shortly, when the customer has committed.
                            return Err(WebhookError::CustomerNotYet(id));
                        }
                    }
                }
                slot.insert(c)
            }
        };
        let Some(c) = customer.as_ref().filter(|c| !c.webhook_uri.is_empty()) else {
            continue;
        };
        let Ok(e) = d.event() else {
            undecodable(&d);
            continue;
        };
        // Only events from the moment the endpoint was set: a recorder catching up on a
        // backlog must not send an endpoint what happened before it was configured.
        if c.webhook_since.is_some_and(|since| e.timestamp < since) {
            continue;
        }
        let method = c.webhook_method.as_str().to_string();
        // UUIDv7 ids in stream order: a resource's deliveries go out in id order.
        rows.id.push(Uuid::now_v7());
        rows.customer_id.push(e.customer_id);
        rows.event_id.push(e.event_id);
        let (kind, id) = e.resource_type_and_id();
        rows.resource_id.push(
            id.and_then(|s| s.parse::<Uuid>().ok())
                .unwrap_or(e.aggregate_id),
        );
        rows.resource_type.push(
            kind.map(String::from)
                .unwrap_or_else(|| e.aggregate_type.clone()),
        );
        rows.uri.push(c.webhook_uri.clone());
        rows.method.push(method);
        rows.body.push(body_for(e));
        rows.event_type.push(e.event_type.clone());
    }
    if rows.id.is_empty() {
        return Ok((0, vec![]));
    }
    let inserted = sqlx::query(
        "INSERT INTO webhook_deliveries \
           (id, customer_id, event_id, event_type, resource_type, resource_id, uri, method, body) \
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], \
                              $6::uuid[], $7::text[], $8::text[], $9::bytea[]) \
         ON CONFLICT (customer_id, event_id) DO NOTHING",
    )
    .bind(&rows.id)
    .bind(&rows.customer_id)
    .bind(&rows.event_id)
    .bind(&rows.event_type)
    .bind(&rows.resource_type)
    .bind(&rows.resource_id)
    .bind(&rows.uri)
    .bind(&rows.method)
    .bind(&rows.body)
    .execute(pool)
    .await?;
    let mut customers = rows.customer_id;
    customers.sort_unstable();
    customers.dedup();
    Ok((inserted.rows_affected(), customers))
}

/// Columns of the deliveries a batch records.
#[derive(Default)]
struct RecordRows {
    id: Vec<Uuid>,
    customer_id: Vec<Uuid>,
    event_id: Vec<Uuid>,
    event_type: Vec<String>,
    resource_type: Vec<String>,
    resource_id: Vec<Uuid>,
    uri: Vec<String>,
    method: Vec<String>,
    body: Vec<Vec<u8>>,
}

/// A claimed delivery, with its customer's signing secrets.
#[derive(sqlx::FromRow)]
struct Claimed {
    id: Uuid,
    customer_id: Uuid,
    event_id: Uuid,
    event_type: String,
    uri: String,
    method: String,
    body: Vec<u8>,
    attempts: i32,
    secret: Option<String>,
    /// The previous secret while its grace period lasts.
    previous_secret: Option<String>,
    /// The oldest due time in the window its customer's claim looked at.
    window_from: Option<chrono::DateTime<chrono::Utc>>,
}

/// What one attempt gave.
struct Outcome {
    status_code: Option<u16>,
    latency: Duration,
    error: Option<String>,
    retry_after: Option<Duration>,
}

/// An attempt to record, and who waits for it to be committed.
struct Finish {
    id: Uuid,
    customer_id: Uuid,
    attempt: i32,
    status_code: Option<i32>,
    latency_ms: i32,
    error: Option<String>,
    status: &'static str,
    next_secs: f64,
    done: tokio::sync::oneshot::Sender<Result<(), Arc<sqlx::Error>>>,
}

/// Attempts recorded in one statement.
const FINISH_BATCH: usize = 512;

/// Where a customer's next claim starts reading its due deliveries, and since when that mark
/// has been kept (see [`Sender::claim`]).
type LowMark = (chrono::DateTime<chrono::Utc>, Instant);

/// How long a customer's claim start ([`Sender::claim`]) is used before a claim reads its due
/// deliveries from the start again, and how far before the window it is set.
///
/// The margin covers a write whose transaction began before the window but committed after
/// it (`next_attempt_at` is the transaction's start): a few milliseconds normally; one later
/// than that is claimed by the next full read, within [`LOW_FOR`]. Each claim reads over the
/// dead entries of the deliveries made in the margin, so it is kept short: the recorder writes
/// a backlog at ~19,000 deliveries per second of `next_attempt_at`, and a 5 s margin spanned
/// a whole 100,000-delivery backlog (1.0 ms per claim against 0.46 ms at 10,000).
const LOW_FOR: Duration = Duration::from_secs(5);
const LOW_MARGIN: chrono::TimeDelta = chrono::TimeDelta::milliseconds(250);

#[derive(Clone)]
struct Sender {
    pool: sqlx::PgPool,
    executor: Executor,
    settings: Arc<Settings>,
    http: reqwest::Client,
    in_flight: Arc<Mutex<HashMap<Uuid, usize>>>,
    /// Per customer, where its next claim starts reading the due deliveries, and since when
    /// (see [`Sender::claim`]).
    low: Arc<Mutex<HashMap<Uuid, LowMark>>>,
    slots: Arc<Semaphore>,
    finish: tokio::sync::mpsc::Sender<Finish>,
    wake: Arc<Notify>,
    fresh: Fresh,
}

impl Sender {
    fn new(
        pool: sqlx::PgPool,
        executor: Executor,
        settings: Settings,
        (wake, fresh): (Arc<Notify>, Fresh),
    ) -> Self {
        let http = vbin_netguard::tls::client_builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.total_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver::new(Arc::new(
                settings.policy.clone(),
            ))))
            .user_agent("vbin-webhooks/1")
            .build()
            .expect("a reqwest client builds");
        let (finish, finishes) = tokio::sync::mpsc::channel(FINISH_BATCH * 4);
        // Group commit: the attempts that end while a statement is under way go in the next
        // one, so a busy sender pays one commit per batch, not per delivery. It ends when the
        // last sender clone is dropped.
        tokio::spawn(record_attempts(pool.clone(), finishes, wake.clone()));
        Self {
            pool,
            executor,
            http,
            in_flight: Default::default(),
            low: Default::default(),
            slots: Arc::new(Semaphore::new(settings.concurrency)),
            settings: Arc::new(settings),
            finish,
            wake,
            fresh,
        }
    }

    async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let wake = self.wake.clone();
        let mut depth_at = Instant::now() - Duration::from_secs(60);
        // The customers to claim for: found by a search every DISCOVER_EVERY, and those the
        // recorder reported since.
        let mut customers: Vec<Uuid> = Vec::new();
        let mut discovered_at = Instant::now() - DISCOVER_EVERY;
        loop {
            if discovered_at.elapsed() >= DISCOVER_EVERY {
                match self.discover().await {
                    Ok(found) => {
                        customers = found;
                        discovered_at = Instant::now();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "looking for pending webhook deliveries failed")
                    }
                }
            }
            for c in self.fresh.lock().expect("fresh").drain() {
                if !customers.contains(&c) {
                    customers.push(c);
                }
            }
            if depth_at.elapsed() >= Duration::from_secs(5) {
                depth_at = Instant::now();
                if let Ok(n) = sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'",
                )
                .fetch_one(&self.pool)
                .await
                {
                    metrics::gauge!("vbin_webhook_queue_depth").set(n as f64);
                }
            }
            let claimed = match self.claim(&customers).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming webhook deliveries failed; retrying");
                    vec![]
                }
            };
            let idle = claimed.is_empty();
            for d in claimed {
                let permit = self.slots.clone().acquire_owned().await.expect("open");
                *self
                    .in_flight
                    .lock()
                    .expect("in flight")
                    .entry(d.customer_id)
                    .or_default() += 1;
                let me = self.clone();
                tokio::spawn(async move {
                    let customer = d.customer_id;
                    if let Err(e) = me.deliver(d).await {
                        tracing::warn!(error = %vbin_bus::Chain(&e), "recording a webhook attempt failed; it will be retried");
                    }
                    let mut m = me.in_flight.lock().expect("in flight");
                    if let Some(n) = m.get_mut(&customer) {
                        *n -= 1;
                        if *n == 0 {
                            m.remove(&customer);
                        }
                    }
                    drop(m);
                    drop(permit);
                    // A slot (and maybe the resource's next delivery) is free.
                    me.wake.notify_one();
                });
            }
            if idle {
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = wake.notified() => {
                        // Let a few more completions and new deliveries gather: one claim
                        // query for them all.
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            } else if futures::poll!(&mut shutdown).is_ready() {
                return;
            }
        }
    }

    /// The customers with pending deliveries: one index probe each (a loose index scan;
    /// Postgres 15 has no skip scan). It reads over the dead index entries of the deliveries
    /// made since the last vacuum, so it runs every [`DISCOVER_EVERY`], not on every claim.
    async fn discover(&self) -> Result<Vec<Uuid>, sqlx::Error> {
        sqlx::query_scalar(
            "WITH RECURSIVE cust AS ( \
               (SELECT customer_id FROM webhook_deliveries WHERE status = 'pending' \
                ORDER BY customer_id LIMIT 1) \
               UNION ALL \
               SELECT (SELECT w.customer_id FROM webhook_deliveries w \
                       WHERE w.status = 'pending' AND w.customer_id > cust.customer_id \
                       ORDER BY w.customer_id LIMIT 1) \
               FROM cust WHERE cust.customer_id IS NOT NULL) \
             SELECT customer_id FROM cust WHERE customer_id IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Claims due deliveries: the oldest pending one of each resource, at most
    /// `per_customer` per customer counting those in flight here. A due delivery waiting
    /// behind an earlier one of its resource is put off until that one's next attempt (at most
    /// a second while that one is in flight), and brought forward again when it ends, so a long
    /// queue behind a failing delivery does not fill the window of due deliveries and starve
    /// other customers. (The second bounds the cost of a race: a claim can put a delivery off
    /// just after the group commit looked for deliveries to bring forward.)
    ///
    /// A customer's claim reads its due deliveries from where its last window started (less
    /// [`LOW_MARGIN`], for writes under way), not from the start of the index: every delivery
    /// made leaves a dead entry there until vacuum, and reading over them made each claim
    /// slower as the backlog went out (35 ms per claim at 100k). Every [`LOW_FOR`] a claim
    /// reads from the start again, so a delivery written behind the mark waits that long at
    /// most.
    async fn claim(&self, customers: &[Uuid]) -> Result<Vec<Claimed>, sqlx::Error> {
        if customers.is_empty() {
            return Ok(vec![]);
        }
        // Customers with deliveries in flight here, and how many: they get only the rest of
        // their allowance (none when full).
        let (busy, counts): (Vec<Uuid>, Vec<i32>) = {
            let m = self.in_flight.lock().expect("in flight");
            m.iter().map(|(c, n)| (*c, *n as i32)).unzip()
        };
        // A customer with deliveries in flight is claimed for again only once a quarter of its
        // allowance is free: a claim is a commit, and claiming each freed slot on its own made
        // one claim per delivery.
        let gather = self.settings.per_customer.div_ceil(4);
        let full: Vec<Uuid> = busy
            .iter()
            .zip(&counts)
            .filter(|(_, n)| **n as usize + gather > self.settings.per_customer)
            .map(|(c, _)| *c)
            .collect();
        let room = self.slots.available_permits();
        if room == 0 {
            return Ok(vec![]);
        }
        let (low_customers, low_times): (Vec<Uuid>, Vec<chrono::DateTime<chrono::Utc>>) = {
            let mut low = self.low.lock().expect("low");
            low.retain(|_, (_, at)| at.elapsed() < LOW_FOR);
            low.iter().map(|(c, (t, _))| (*c, *t)).unzip()
        };
        let lease = self.settings.total_timeout + Duration::from_secs(15);
        sqlx::query_as(
            // `cust`: the customers with pending deliveries ([`Sender::discover`], and those
            // just recorded). `due`: the oldest due deliveries of each customer with room, at
            // most four times its room (some wait behind an earlier delivery of their
            // resource and are put off below: a wider window only rewrites more of those rows
            // per claim), oldest first across customers. A customer whose allowance is in
            // flight costs nothing, however long its backlog.
            //
            // Ties in `next_attempt_at` are common (a commit inserts many deliveries with one
            // now()), so the order is (next_attempt_at, id): the earlier delivery of a resource
            // comes first, and a window is not spent putting off later ones to the instant
            // they already have.
            "WITH cust AS (SELECT unnest($9::uuid[]) AS customer_id), \
             room AS ( \
               SELECT c.customer_id, \
                      $3 - COALESCE((SELECT u.n FROM unnest($4::uuid[], $5::int[]) AS u(c, n) \
                                     WHERE u.c = c.customer_id), 0) AS n \
               FROM cust c WHERE c.customer_id IS NOT NULL AND c.customer_id <> ALL($1)), \
             due AS ( \
               SELECT d.id, d.customer_id, d.resource_id, d.resource_type, d.next_attempt_at \
               FROM room r CROSS JOIN LATERAL ( \
                 SELECT id, customer_id, resource_id, resource_type, next_attempt_at \
                 FROM webhook_deliveries \
                 WHERE status = 'pending' AND customer_id = r.customer_id \
                   AND next_attempt_at <= now() \
                   AND next_attempt_at >= COALESCE((SELECT l.t FROM unnest($7::uuid[], \
                         $8::timestamptz[]) AS l(c, t) WHERE l.c = r.customer_id), '-infinity') \
                 ORDER BY next_attempt_at, id LIMIT r.n * 4) d \
               WHERE r.n > 0 ORDER BY d.next_attempt_at, d.id LIMIT $6), \
             windows AS ( \
               SELECT customer_id, min(next_attempt_at) AS window_from FROM due \
               GROUP BY customer_id), \
             ahead AS ( \
               SELECT d.id, d.customer_id, \
                      (SELECT CASE WHEN bool_or(o.in_flight) \
                                   THEN LEAST(max(o.next_attempt_at), now() + interval '1 second') \
                                   ELSE max(o.next_attempt_at) END \
                       FROM webhook_deliveries o \
                       WHERE o.status = 'pending' AND o.customer_id = d.customer_id \
                         AND o.resource_id = d.resource_id AND o.resource_type = d.resource_type \
                         AND o.id < d.id) AS until \
               FROM due d), \
             put_off AS ( \
               UPDATE webhook_deliveries w SET next_attempt_at = ahead.until \
               FROM ahead WHERE w.id = ahead.id AND ahead.until IS NOT NULL \
                 AND w.status = 'pending'), \
             cand AS ( \
               SELECT id, customer_id, \
                      row_number() OVER (PARTITION BY customer_id ORDER BY id) AS rn \
               FROM ahead WHERE until IS NULL) \
             UPDATE webhook_deliveries w SET next_attempt_at = now() + make_interval(secs => $2), \
                    in_flight = true, updated_at = now() \
             FROM cand LEFT JOIN webhook_secrets s ON s.customer_id = cand.customer_id \
               LEFT JOIN windows ON windows.customer_id = cand.customer_id \
             WHERE w.id = cand.id \
               AND cand.rn <= $3 - COALESCE((SELECT u.n FROM unnest($4::uuid[], $5::int[]) AS u(c, n) \
                                             WHERE u.c = cand.customer_id), 0) \
               AND w.status = 'pending' AND w.next_attempt_at <= now() \
             RETURNING w.id, w.customer_id, w.event_id, w.event_type, w.uri, w.method, w.body, \
                       w.attempts, s.secret, \
                       CASE WHEN s.previous_valid_until > now() THEN s.previous_secret END \
                         AS previous_secret, windows.window_from",
        )
        .bind(&full)
        .bind(lease.as_secs_f64())
        .bind(self.settings.per_customer as i64)
        .bind(&busy)
        .bind(&counts)
        .bind(room.max(2 * self.settings.per_customer).clamp(64, 2000) as i64)
        .bind(&low_customers)
        .bind(&low_times)
        .bind(customers)
        // Planned for these parameters every time: the generic plan Postgres may switch a
        // prepared statement to after five runs knows neither the start marks nor the room
        // (live claims took 150-200 ms at 100k while the same statement planned for its
        // values took 3 ms).
        .persistent(false)
        .fetch_all(&self.pool)
        .await
        .inspect(|claimed: &Vec<Claimed>| {
            // Nothing of these customers was due before their window: the next claims start
            // there (less a margin for writes under way), not at the start of the index.
            // The mark moves with each window, but keeps the instant it was first set: it
            // lapses LOW_FOR after that, and one claim reads from the start again.
            let mut low = self.low.lock().expect("low");
            for d in claimed {
                if let Some(from) = d.window_from {
                    low.entry(d.customer_id)
                        .and_modify(|(t, _)| *t = from - LOW_MARGIN)
                        .or_insert((from - LOW_MARGIN, Instant::now()));
                }
            }
        })
    }

    async fn deliver(&self, d: Claimed) -> Result<(), SendError> {
        let Some(current) = d.secret.as_deref() else {
            tracing::error!(customer_id = %d.customer_id, "customer without a webhook secret; delivery failed");
            return self
                .finish(&d, &Outcome::error("no webhook secret"), "failed", None)
                .await;
        };
        let outcome = self
            .attempt(&d, current, d.previous_secret.as_deref())
            .await;
        let attempt = d.attempts as usize + 1;
        let ok = outcome.status_code.is_some_and(|c| (200..300).contains(&c));
        let gone = outcome.status_code == Some(410);
        let (status, next) = if ok {
            ("delivered", None)
        } else if gone {
            ("failed", None)
        } else {
            let wait = outcome
                .retry_after
                .map(|w| w.clamp(Duration::from_secs(1), Duration::from_secs(3600)))
                .or_else(|| self.settings.wait_before(attempt + 1));
            match wait {
                Some(w) => ("pending", Some(w)),
                None => ("failed", None),
            }
        };
        metrics::counter!("vbin_webhook_attempts_total", "outcome" => if ok { "ok" } else { "error" })
            .increment(1);
        metrics::histogram!("vbin_webhook_attempt_seconds").record(outcome.latency.as_secs_f64());
        self.finish(&d, &outcome, status, next).await?;
        if status != "pending" {
            metrics::counter!("vbin_webhook_deliveries_total", "status" => status).increment(1);
        }
        if ok {
            return Ok(()); // the batch cleared the endpoint's failure clock
        }
        let disable = if gone {
            Some("the endpoint answered 410 Gone".to_string())
        } else {
            self.track_failure(&d)
                .await
                .map_err(SendError::TrackFailure)?
        };
        if let Some(reason) = disable {
            self.disable(&d, reason).await.map_err(SendError::Disable)?;
        }
        Ok(())
    }

    /// Hands the attempt to the group commit and waits until it is recorded.
    async fn finish(
        &self,
        d: &Claimed,
        o: &Outcome,
        status: &'static str,
        next: Option<Duration>,
    ) -> Result<(), SendError> {
        let (done, committed) = tokio::sync::oneshot::channel();
        let f = Finish {
            id: d.id,
            customer_id: d.customer_id,
            attempt: d.attempts + 1,
            status_code: o.status_code.map(i32::from),
            latency_ms: o.latency.as_millis().min(i32::MAX as u128) as i32,
            error: o.error.clone(),
            status,
            next_secs: next.unwrap_or_default().as_secs_f64(),
            done,
        };
        self.finish
            .send(f)
            .await
            .map_err(|_| SendError::RecorderStopped)?;
        committed
            .await
            .map_err(|_| SendError::RecorderStopped)?
            .map_err(SendError::Record)
    }

    /// Starts (or continues) the endpoint's failure clock; returns why to disable it when it
    /// has failed without a success for `disable_after`.
    async fn track_failure(&self, d: &Claimed) -> Result<Option<String>, sqlx::Error> {
        // A new endpoint starts its failure clock afresh.
        let since: DateTime<Utc> = sqlx::query_scalar(
            "INSERT INTO webhook_endpoints (customer_id, uri, failing_since) VALUES ($1, $2, now()) \
             ON CONFLICT (customer_id) DO UPDATE SET \
               failing_since = CASE WHEN webhook_endpoints.uri = $2 \
                   THEN COALESCE(webhook_endpoints.failing_since, now()) ELSE now() END, uri = $2 \
             RETURNING failing_since",
        )
        .bind(d.customer_id)
        .bind(&d.uri)
        .fetch_one(&self.pool)
        .await?;
        let failing = (Utc::now() - since).to_std().unwrap_or_default();
        Ok((failing >= self.settings.disable_after)
            .then(|| format!("failing without a success since {}", since.to_rfc3339())))
    }

    /// Disables the customer's endpoint (a Customer command, so it is an event in the log)
    /// and fails its pending deliveries.
    async fn disable(&self, d: &Claimed, reason: String) -> Result<(), sqlx::Error> {
        let customer = vbin_event_schema::CustomerId(d.customer_id);
        let mut meta =
            vbin_eventlog::CommandMeta::caused_by("webhooks", d.id, &d.customer_id.to_string());
        meta.customer_id = Some(d.customer_id);
        let cmd = vbin_domain::CustomerCommand::DisableWebhook {
            webhook_uri: d.uri.clone(),
            reason: reason.clone(),
            at: Utc::now(),
        };
        match self
            .executor
            .execute::<Customer>(d.customer_id, customer, None, cmd, &meta)
            .await
        {
            Ok(done) if !done.recorded.is_empty() => {
                tracing::warn!(customer_id = %d.customer_id, uri = %d.uri, %reason, "webhook endpoint disabled");
                metrics::counter!("vbin_webhook_endpoints_disabled_total").increment(1);
            }
            Ok(_) => return Ok(()), // the endpoint changed meanwhile: keep delivering
            Err(e) => {
                tracing::error!(customer_id = %d.customer_id, error = %e, "disabling a webhook endpoint failed");
                return Ok(());
            }
        }
        sqlx::query(
            "UPDATE webhook_deliveries SET status = 'failed', last_error = $3, updated_at = now() \
             WHERE customer_id = $1 AND uri = $2 AND status = 'pending'",
        )
        .bind(d.customer_id)
        .bind(&d.uri)
        .bind(format!("endpoint disabled: {reason}"))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn attempt(&self, d: &Claimed, current: &str, previous: Option<&str>) -> Outcome {
        let checked = reqwest::Url::parse(&d.uri)
            .map_err(|e| format!("bad webhook uri: {e}"))
            .and_then(|u| {
                self.settings
                    .policy
                    .check_url(&u)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = checked {
            tracing::warn!(customer_id = %d.customer_id, uri = %d.uri, error = %e, "webhook refused");
            return Outcome::error(&e);
        }
        let headers = signed_headers(
            &Secrets { current, previous },
            &d.event_id.to_string(),
            &d.event_type,
            Utc::now().timestamp(),
            &d.body,
        );
        let method =
            reqwest::Method::from_bytes(d.method.as_bytes()).unwrap_or(reqwest::Method::POST);
        let mut req = self.http.request(method, &d.uri).body(d.body.clone());
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let t0 = Instant::now();
        match req.send().await {
            Ok(resp) => {
                let code = resp.status().as_u16();
                let retry_after = (code == 429 || code == 503)
                    .then(|| resp.headers().get(reqwest::header::RETRY_AFTER))
                    .flatten()
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                Outcome {
                    status_code: Some(code),
                    latency: t0.elapsed(),
                    error: None,
                    retry_after,
                }
            }
            Err(e) => Outcome {
                status_code: None,
                latency: t0.elapsed(),
                error: Some(e.to_string()),
                retry_after: None,
            },
        }
    }
}

/// The group commit: records every attempt that is waiting, in one statement per batch, and
/// tells each sender task when its attempt is committed.
async fn record_attempts(
    pool: sqlx::PgPool,
    mut finishes: tokio::sync::mpsc::Receiver<Finish>,
    wake: Arc<Notify>,
) {
    let mut batch = Vec::with_capacity(FINISH_BATCH);
    while finishes.recv_many(&mut batch, FINISH_BATCH).await > 0 {
        let mut result = write_attempts(&pool, &batch).await;
        // A deadlock with a concurrent claim or a dropped connection: the attempts were made,
        // so try hard to record them (otherwise the lease expires and they are sent again).
        for pause in [10, 100, 1000] {
            let Err(e) = &result else { break };
            tracing::warn!(error = %e, attempts = batch.len(), "recording webhook attempts failed; retrying");
            tokio::time::sleep(Duration::from_millis(pause)).await;
            result = write_attempts(&pool, &batch).await;
        }
        let result = result.map(|_| ()).map_err(Arc::new);
        for f in batch.drain(..) {
            let _ = f.done.send(result.clone());
        }
        // Deliveries behind these ones may be due now.
        wake.notify_one();
    }
}

/// Deliveries of one resource brought forward when the one ahead of them ends (see
/// [`write_attempts`]); any others come due at the time they were put off to (a second at
/// most while the one ahead is in flight).
const BRING_FORWARD: usize = 32;

/// One statement: the attempts, the deliveries' new state, the failure clock of endpoints that
/// answered 2xx, and deliveries put off behind an ended one brought forward.
///
/// The deliveries to bring forward are looked up for each ended delivery, in id order from
/// its resource's entries (a `LATERAL ... LIMIT`, which Postgres does not flatten into a
/// join): as a join, the planner read them by `next_attempt_at > now()`, over the dead index
/// entry every claim leaves a lease ahead, about 30,000 entries per statement while a
/// 100,000-delivery backlog went out (3.7 ms per statement against 0.8 ms at 10,000).
async fn write_attempts(pool: &sqlx::PgPool, batch: &[Finish]) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = batch.iter().map(|f| f.id).collect();
    let attempts: Vec<i32> = batch.iter().map(|f| f.attempt).collect();
    let codes: Vec<Option<i32>> = batch.iter().map(|f| f.status_code).collect();
    let latencies: Vec<i32> = batch.iter().map(|f| f.latency_ms).collect();
    let errors: Vec<Option<String>> = batch.iter().map(|f| f.error.clone()).collect();
    let statuses: Vec<&str> = batch.iter().map(|f| f.status).collect();
    let next: Vec<f64> = batch.iter().map(|f| f.next_secs).collect();
    let mut healthy: Vec<Uuid> = batch
        .iter()
        .filter(|f| f.status == "delivered")
        .map(|f| f.customer_id)
        .collect();
    healthy.sort_unstable();
    healthy.dedup();
    sqlx::query(
        "WITH u AS ( \
           SELECT * FROM unnest($1::uuid[], $2::int[], $3::int[], $4::int[], $5::text[], \
                                $6::text[], $7::float8[]) \
             AS u(id, attempt, code, latency, err, status, next)), \
         att AS ( \
           INSERT INTO webhook_attempts (delivery_id, attempt, status_code, latency_ms, error) \
           SELECT id, attempt, code, latency, err FROM u ON CONFLICT DO NOTHING), \
         healthy AS ( \
           UPDATE webhook_endpoints SET failing_since = NULL \
           WHERE customer_id = ANY($8) AND failing_since IS NOT NULL), \
         done AS ( \
           UPDATE webhook_deliveries w SET status = u.status, attempts = u.attempt, in_flight = false, \
                  next_attempt_at = now() + make_interval(secs => u.next), \
                  last_status_code = u.code, last_error = u.err, updated_at = now() \
           FROM u WHERE w.id = u.id \
           RETURNING w.id, w.customer_id, w.resource_id, w.resource_type, u.status) \
         UPDATE webhook_deliveries s SET next_attempt_at = now() \
         FROM done CROSS JOIN LATERAL ( \
           SELECT o.id FROM webhook_deliveries o \
           WHERE o.status = 'pending' AND o.customer_id = done.customer_id \
             AND o.resource_id = done.resource_id AND o.resource_type = done.resource_type \
             AND o.id > done.id AND o.attempts = 0 AND o.next_attempt_at > now() \
           ORDER BY o.id LIMIT $9) later \
         WHERE done.status <> 'pending' AND s.id = later.id AND s.id <> ALL($1)",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(&codes)
    .bind(&latencies)
    .bind(&errors)
    .bind(&statuses)
    .bind(&next)
    .bind(&healthy)
    .bind(BRING_FORWARD as i64)
    .execute(pool)
    .await?;
    Ok(())
}

impl Outcome {
    fn error(e: &str) -> Self {
        Self {
            status_code: None,
            latency: Duration::ZERO,
            error: Some(e.into()),
            retry_after: None,
        }
    }
}
