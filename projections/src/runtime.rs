//! The live projection runtime: a durable JetStream pull consumer per projection that applies
//! each batch of ready events to Postgres in one transaction, with exactly-once effect.
//!
//! Per batch, in one transaction:
//! 1. a shared advisory lock on the projection (replay's swap takes it exclusively), then an
//!    advisory lock per aggregate in the batch, in a fixed order, so two instances of the same
//!    projection never work on the same aggregate at once (and never deadlock);
//! 2. the last applied sequence of each aggregate from `pp_<name>`: an event at or below it is
//!    a duplicate and has no effect; a **gap** (an event whose predecessor has not been applied,
//!    because another instance holds it or the stream lost it) is filled from the Postgres log,
//!    so events of one aggregate are applied in sequence order, each exactly once, whichever
//!    instance receives them;
//! 3. the pure `apply` of each event; an event that cannot be applied (or decoded) is parked in
//!    `projection_dead_letters` with the error, and the aggregate moves on past it;
//! 4. bulk upserts/deletes of the resulting rows, the new positions, the checkpoint and the
//!    cache invalidation intents.
//!
//! After the commit the Redis keys are tombstoned and the intents removed; then the messages are
//! acked. A database error fails the batch: each event is then retried alone, and one that keeps
//! failing is parked after [`RuntimeConfig::max_deliver`] deliveries.

use crate::cache::{self, Cache, DELETED_VERSION};
use crate::{ApplyError, Projection, RowOp};
use chrono::Utc;
use sqlx::{PgPool, Postgres, Transaction};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;
use vbin_bus::{Bus, ConsumerSpec, Delivery, Disposition};
use vbin_event_schema::PublishedEvent;
use vbin_eventlog::log::{published_from_row, EVENT_COLUMNS};

/// Runtime settings.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Most events applied in one transaction.
    pub batch: usize,
    /// Deliveries of an event that fails with a database error before it is parked.
    pub max_deliver: i64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            batch: 500,
            max_deliver: 5,
        }
    }
}

/// One live projection.
#[derive(Clone)]
pub struct Runtime {
    pool: PgPool,
    cache: Option<Cache>,
    projection: Projection,
    config: RuntimeConfig,
    /// Invalidation intents whose tombstones reached Redis, to delete from
    /// `cache_invalidations`: the next batch's transaction deletes them, or [`CLEAR_EVERY`]
    /// after they were tombstoned if no batch came (one commit less per batch than a DELETE of
    /// its own).
    cleared: Arc<std::sync::Mutex<Vec<i64>>>,
}

/// How long tombstoned intents wait for a batch to delete them before they are deleted on
/// their own. Well under the second after which a query API distrusts its cache because of
/// an old intent (`watch_invalidations` in the read API), and under the sweeper's 2 s.
pub const CLEAR_EVERY: Duration = Duration::from_millis(200);

/// Deletes the invalidation intents of ids `$1` (their tombstones reached Redis).
const DELETE_INTENTS: &str = "DELETE FROM cache_invalidations WHERE id = ANY($1)";

/// A 32-bit hash (FNV-1a) for advisory lock keys: stable across processes and versions.
pub fn hash32(bytes: &[u8]) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= *b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h as i32
}

/// The advisory lock (two-key form) that live batches hold shared and replay's swap exclusive.
pub fn projection_lock(projection: &str) -> (i32, i32) {
    (hash32(b"vbin.projection"), hash32(projection.as_bytes()))
}

/// Rows written by a run of events: per (table, id), the final op, how many upserts led to it
/// and the aggregate that wrote it.
#[derive(Default)]
pub struct Folded {
    rows: BTreeMap<(&'static str, Uuid), (RowOp, i64, Uuid)>,
}

impl Folded {
    /// Adds the ops of an event of `aggregate_id` (later ops on a row replace earlier ones).
    pub fn push(&mut self, aggregate_id: Uuid, ops: Vec<RowOp>) {
        for op in ops {
            let k = (op.table(), op.id());
            let prior = self.rows.remove(&k);
            let folded = match (op, prior) {
                (op @ RowOp::Delete { .. }, _) => (op, 0),
                (op @ RowOp::Upsert { .. }, Some((_, n, _))) => (op, n + 1),
                (op @ RowOp::Upsert { .. }, None) => (op, 1),
                // A patch onto a row this run wrote or patched merges into that op.
                (
                    RowOp::Patch { patch, .. },
                    Some((
                        RowOp::Upsert {
                            table,
                            id,
                            customer_id,
                            mut body,
                        },
                        n,
                        _,
                    )),
                ) => {
                    crate::merge_into_raw(&mut body, &patch);
                    (
                        RowOp::Upsert {
                            table,
                            id,
                            customer_id,
                            body,
                        },
                        n + 1,
                    )
                }
                (
                    RowOp::Patch { patch, .. },
                    Some((
                        RowOp::Patch {
                            table,
                            id,
                            patch: mut p0,
                        },
                        n,
                        _,
                    )),
                ) => {
                    crate::merge_into(&mut p0, &patch);
                    (
                        RowOp::Patch {
                            table,
                            id,
                            patch: p0,
                        },
                        n + 1,
                    )
                }
                (RowOp::Patch { .. }, Some(deleted @ (RowOp::Delete { .. }, _, _))) => {
                    (deleted.0, deleted.1)
                }
                (op @ RowOp::Patch { .. }, None) => (op, 1),
            };
            self.rows.insert(k, (folded.0, folded.1, aggregate_id));
        }
    }

    /// Number of distinct rows touched.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether nothing was touched.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// One table's share of a batch, as columns for UNNEST.
#[derive(Default)]
struct TableWrites {
    ids: Vec<Uuid>,
    customers: Vec<Uuid>,
    aggregates: Vec<Uuid>,
    bodies: Vec<String>,
    counts: Vec<i64>,
    deletes: Vec<Uuid>,
    patch_ids: Vec<Uuid>,
    patches: Vec<serde_json::Value>,
    patch_counts: Vec<i64>,
}

/// A batch's writes as **one statement** of data-modifying CTEs (`WITH w0 AS (INSERT ...),
/// w1 AS (UPDATE ...) ...`): the rows, the positions, and for a live batch its checkpoint and
/// cache invalidation intent. Every round trip to Postgres wakes a backend and a vbin task on
/// a small machine; a live batch was eight statements, it is now three (locks, positions,
/// this). The CTEs never touch one row twice: the fold leaves one op per (table, id).
pub(crate) struct Writes {
    qb: sqlx::QueryBuilder<Postgres>,
    ctes: usize,
    /// Per CTE that returns `id, version`: the cache key prefix of its table.
    keyed: Vec<(String, String)>,
}

impl Writes {
    pub(crate) fn new() -> Self {
        Self {
            qb: sqlx::QueryBuilder::new("WITH "),
            ctes: 0,
            keyed: Vec::new(),
        }
    }

    /// Opens the next CTE; returns its name.
    fn cte(&mut self) -> String {
        let name = format!("w{}", self.ctes);
        if self.ctes > 0 {
            self.qb.push(", ");
        }
        self.qb.push(format_args!("{name} AS ("));
        self.ctes += 1;
        name
    }

    /// Whether nothing is to be written.
    pub(crate) fn is_empty(&self) -> bool {
        self.ctes == 0
    }

    /// The folded rows, into the tables named by `physical(table)`. Upserts add the number of
    /// folded events to the row's version.
    pub(crate) fn rows(&mut self, folded: Folded, physical: impl Fn(&str) -> String) {
        let mut per_table: BTreeMap<&'static str, TableWrites> = BTreeMap::new();
        for ((table, id), (op, n, aggregate)) in folded.rows {
            let e = per_table.entry(table).or_default();
            match op {
                RowOp::Upsert {
                    customer_id, body, ..
                } => {
                    e.ids.push(id);
                    e.customers.push(customer_id);
                    e.aggregates.push(aggregate);
                    e.bodies.push(String::from(Box::<str>::from(body)));
                    e.counts.push(n);
                }
                RowOp::Delete { .. } => e.deletes.push(id),
                RowOp::Patch { patch, .. } => {
                    e.patch_ids.push(id);
                    e.patches.push(patch);
                    e.patch_counts.push(n);
                }
            }
        }
        for (table, w) in per_table {
            let t = physical(table);
            // Table names are the projections' own identifiers, so the prefix is a literal.
            let prefix = cache::key_prefix(table);
            debug_assert!(prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'));
            if !w.ids.is_empty() {
                let name = self.cte();
                self.qb.push(format_args!(
                    "INSERT INTO {t} AS t (id, customer_id, aggregate_id, body, version) \
                     SELECT i, c, a, b::jsonb, n FROM UNNEST("
                ));
                self.qb.push_bind(w.ids).push("::uuid[], ");
                self.qb.push_bind(w.customers).push("::uuid[], ");
                self.qb.push_bind(w.aggregates).push("::uuid[], ");
                self.qb.push_bind(w.bodies).push("::text[], ");
                self.qb.push_bind(w.counts).push(
                    "::bigint[]) AS u(i, c, a, b, n) \
                     ON CONFLICT (id) DO UPDATE SET customer_id = EXCLUDED.customer_id, \
                       aggregate_id = EXCLUDED.aggregate_id, body = EXCLUDED.body, \
                       version = t.version + EXCLUDED.version \
                     RETURNING id, version)",
                );
                self.keyed.push((name, prefix.clone()));
            }
            if !w.patch_ids.is_empty() {
                let name = self.cte();
                self.qb.push(format_args!(
                    "UPDATE {t} AS t SET body = t.body || p.patch, version = t.version + p.n \
                     FROM UNNEST("
                ));
                self.qb.push_bind(w.patch_ids).push("::uuid[], ");
                self.qb.push_bind(w.patches).push("::jsonb[], ");
                self.qb.push_bind(w.patch_counts).push(
                    "::bigint[]) AS p(id, patch, n) WHERE t.id = p.id RETURNING t.id, t.version)",
                );
                self.keyed.push((name, prefix.clone()));
            }
            if !w.deletes.is_empty() {
                let name = self.cte();
                self.qb
                    .push(format_args!("DELETE FROM {t} WHERE id = ANY("))
                    .push_bind(w.deletes)
                    .push(format_args!(
                        ") RETURNING id, {DELETED_VERSION}::bigint AS version)"
                    ));
                self.keyed.push((name, prefix));
            }
        }
    }

    /// Sets the positions of aggregates in `table` (only ever forward).
    pub(crate) fn positions(&mut self, table: &str, positions: &BTreeMap<Uuid, i64>) {
        if positions.is_empty() {
            return;
        }
        let (ids, seqs): (Vec<Uuid>, Vec<i64>) = positions.iter().map(|(k, v)| (*k, *v)).unzip();
        self.cte();
        self.qb
            .push(format_args!(
                "INSERT INTO {table} AS p (aggregate_id, sequence) SELECT * FROM UNNEST("
            ))
            .push_bind(ids)
            .push("::uuid[], ")
            .push_bind(seqs)
            .push(
                "::bigint[]) ON CONFLICT (aggregate_id) \
                 DO UPDATE SET sequence = GREATEST(p.sequence, EXCLUDED.sequence))",
            );
    }

    /// Moves the live projection's checkpoint forward.
    fn checkpoint(&mut self, name: &'static str, stream_seq: i64, position: i64, applied: i64) {
        self.cte();
        self.qb
            .push(
                "INSERT INTO projection_checkpoints AS c \
                 (name, stream_seq, global_position, events_applied) VALUES (",
            )
            .push_bind(name)
            .push(", ")
            .push_bind(stream_seq)
            .push(", ")
            .push_bind(position)
            .push(", ")
            .push_bind(applied)
            .push(
                ") ON CONFLICT (name) DO UPDATE SET \
                   stream_seq = GREATEST(c.stream_seq, EXCLUDED.stream_seq), \
                   global_position = GREATEST(c.global_position, EXCLUDED.global_position), \
                   events_applied = c.events_applied + EXCLUDED.events_applied, \
                   updated_at = now())",
            );
    }

    /// Deletes invalidation intents whose tombstones reached Redis.
    fn clear_intents(&mut self, ids: &[i64]) {
        if ids.is_empty() {
            return;
        }
        self.cte();
        self.qb
            .push("DELETE FROM cache_invalidations WHERE id = ANY(")
            .push_bind(ids.to_vec())
            .push("))");
    }

    /// Runs the writes; nothing is returned.
    pub(crate) async fn execute(
        mut self,
        tx: &mut Transaction<'_, Postgres>,
    ) -> Result<(), sqlx::Error> {
        if self.is_empty() {
            return Ok(());
        }
        self.qb.push(" SELECT 1");
        self.qb.build().execute(&mut **tx).await?;
        Ok(())
    }

    /// Runs the writes and records their cache keys as one invalidation intent in the same
    /// statement; returns each written row's key and new version, and the intent's id (none
    /// if no row was written).
    async fn execute_keyed(
        mut self,
        tx: &mut Transaction<'_, Postgres>,
    ) -> Result<(Vec<(String, i64)>, Option<i64>), sqlx::Error> {
        if self.is_empty() {
            return Ok((Vec::new(), None));
        }
        let selects: Vec<String> = self
            .keyed
            .iter()
            .map(|(name, prefix)| {
                format!("SELECT '{prefix}' || id::text AS k, version AS v FROM {name}")
            })
            .collect();
        let keys = if selects.is_empty() {
            "SELECT NULL::text AS k, NULL::bigint AS v WHERE false".to_string()
        } else {
            selects.join(" UNION ALL ")
        };
        self.qb.push(format_args!(
            ", k AS ({keys}), \
             i AS (INSERT INTO cache_invalidations (keys, versions) \
                   SELECT array_agg(k), array_agg(v) FROM k HAVING count(*) > 0 RETURNING id) \
             SELECT k, v, (SELECT id FROM i) FROM k"
        ));
        let rows: Vec<(String, i64, Option<i64>)> =
            self.qb.build_query_as().fetch_all(&mut **tx).await?;
        let intent = rows.first().and_then(|r| r.2);
        Ok((rows.into_iter().map(|(k, v, _)| (k, v)).collect(), intent))
    }
}

/// A parked event.
struct DeadLetter {
    event_id: Option<Uuid>,
    event_type: Option<String>,
    aggregate_id: Option<Uuid>,
    sequence: Option<i64>,
    global_position: Option<i64>,
    subject: Option<String>,
    deliveries: i64,
    error: String,
    payload: String,
}

impl DeadLetter {
    fn of_event(e: &PublishedEvent, deliveries: i64, error: String) -> Self {
        Self {
            event_id: Some(e.event_id),
            event_type: Some(e.event_type.clone()),
            aggregate_id: Some(e.aggregate_id),
            sequence: Some(e.sequence),
            global_position: Some(e.global_position),
            subject: None,
            deliveries,
            error,
            payload: serde_json::to_string(e).unwrap_or_default(),
        }
    }
}

async fn park(
    tx: &mut Transaction<'_, Postgres>,
    projection: &str,
    d: &DeadLetter,
) -> Result<(), sqlx::Error> {
    tracing::error!(projection, event_id = ?d.event_id, event_type = ?d.event_type, error = %d.error, "event parked in projection_dead_letters");
    metrics::counter!("vbin_projection_events_total", "projection" => projection.to_string(), "outcome" => "dead_letter").increment(1);
    sqlx::query(
        "INSERT INTO projection_dead_letters (projection, event_id, event_type, aggregate_id, \
         sequence, global_position, subject, deliveries, error, payload) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(projection)
    .bind(d.event_id)
    .bind(&d.event_type)
    .bind(d.aggregate_id)
    .bind(d.sequence)
    .bind(d.global_position)
    .bind(&d.subject)
    .bind(d.deliveries)
    .bind(&d.error)
    .bind(&d.payload)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Reads events of `aggregate_type` from the log: for each `(aggregate, from, to)`, the events
/// with sequence in `from..=to`, in sequence order.
pub async fn read_ranges(
    tx: &mut Transaction<'_, Postgres>,
    aggregate_type: &str,
    ranges: &[(Uuid, i64, i64)],
) -> Result<Vec<PublishedEvent>, sqlx::Error> {
    if ranges.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = ranges.iter().map(|r| r.0).collect();
    let lo: Vec<i64> = ranges.iter().map(|r| r.1).collect();
    let hi: Vec<i64> = ranges.iter().map(|r| r.2).collect();
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {EVENT_COLUMNS} FROM events e \
         JOIN UNNEST($2::uuid[], $3::bigint[], $4::bigint[]) AS g(id, lo, hi) \
           ON e.aggregate_id = g.id AND e.sequence BETWEEN g.lo AND g.hi \
         WHERE e.aggregate_type = $1 ORDER BY e.aggregate_id, e.sequence"
    )))
    .bind(aggregate_type)
    .bind(&ids)
    .bind(&lo)
    .bind(&hi)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter()
        .map(|r| published_from_row(r).map(|(_, e)| e))
        .collect()
}

/// What one committed batch did.
#[derive(Debug, Default)]
struct BatchOutcome {
    applied: u64,
    duplicates: u64,
    keys: Vec<(String, i64)>,
    /// The batch's invalidation intent (one row for all its keys), if it had keys.
    intent_id: Option<i64>,
    newest: Option<chrono::DateTime<Utc>>,
}

impl Runtime {
    /// A runtime for `projection`; `cache` is invalidated after each commit.
    pub fn new(
        pool: PgPool,
        cache: Option<Cache>,
        projection: Projection,
        config: RuntimeConfig,
    ) -> Self {
        Self {
            pool,
            cache,
            projection,
            config,
            cleared: Default::default(),
        }
    }

    /// The consumer settings of this projection.
    pub fn consumer_spec(&self) -> ConsumerSpec {
        ConsumerSpec::for_events(
            &self.projection.consumer_name(),
            self.projection.aggregate_type,
            &[],
        )
    }

    /// Consumes until `shutdown` resolves.
    pub async fn run(self, bus: Bus, shutdown: impl Future<Output = ()>) {
        let spec = self.consumer_spec();
        let batch = self.config.batch;
        let this = &self;
        let consume = vbin_bus::run_batch_consumer(bus, spec, batch, |d| this.handle(d), shutdown);
        let clear = async {
            loop {
                tokio::time::sleep(CLEAR_EVERY).await;
                this.clear_intents().await;
            }
        };
        tokio::select! {
            () = consume => {}
            () = clear => {}
        }
        self.clear_intents().await;
    }

    /// Deletes the tombstoned intents no batch took (see [`Runtime::cleared`]).
    async fn clear_intents(&self) {
        let ids = std::mem::take(&mut *self.cleared.lock().expect("cleared intents"));
        if ids.is_empty() {
            return;
        }
        if let Err(e) = sqlx::query(DELETE_INTENTS)
            .bind(&ids)
            .execute(&self.pool)
            .await
        {
            tracing::warn!(error = %e, "could not clear cache invalidation intents (the sweeper will)");
        }
    }

    /// Applies a batch of deliveries; one disposition per delivery.
    pub async fn handle(&self, deliveries: Vec<Delivery>) -> Vec<Disposition> {
        let name = self.projection.name;
        let started = Instant::now();
        match self.apply_batch(&deliveries, false).await {
            Ok(out) => {
                self.finish(out, started).await;
                vec![Disposition::Ack; deliveries.len()]
            }
            Err(e) => {
                tracing::warn!(projection = name, error = %e, count = deliveries.len(), "projection batch failed; retrying its events one by one");
                let mut dispositions = Vec::with_capacity(deliveries.len());
                for d in deliveries {
                    let last_try = d.delivered >= self.config.max_deliver;
                    let one = std::slice::from_ref(&d);
                    let res = match self.apply_batch(one, false).await {
                        Err(e) if last_try => {
                            tracing::error!(projection = name, error = %e, delivered = d.delivered, "giving up on an event");
                            self.apply_batch(one, true).await
                        }
                        other => other,
                    };
                    dispositions.push(match res {
                        Ok(out) => {
                            self.finish(out, started).await;
                            Disposition::Ack
                        }
                        Err(e) => {
                            let delay = Duration::from_millis(200u64 << d.delivered.clamp(0, 6));
                            tracing::warn!(projection = name, error = %e, delivered = d.delivered, "event will be redelivered");
                            metrics::counter!("vbin_projection_events_total", "projection" => name, "outcome" => "retry").increment(1);
                            Disposition::Retry(delay)
                        }
                    });
                }
                dispositions
            }
        }
    }

    /// After a commit: metrics, then tombstone the keys and drop the intents.
    async fn finish(&self, out: BatchOutcome, started: Instant) {
        let name = self.projection.name;
        metrics::counter!("vbin_projection_events_total", "projection" => name, "outcome" => "applied")
            .increment(out.applied);
        metrics::counter!("vbin_projection_events_total", "projection" => name, "outcome" => "duplicate")
            .increment(out.duplicates);
        metrics::histogram!("vbin_projection_batch_seconds", "projection" => name)
            .record(started.elapsed().as_secs_f64());
        if let Some(t) = out.newest {
            let lag = (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::gauge!("vbin_projection_lag_seconds", "projection" => name).set(lag);
        }
        if tombstone(self.cache.as_ref(), &out.keys).await {
            self.cleared
                .lock()
                .expect("cleared intents")
                .extend(out.intent_id);
        }
    }

    /// One transaction for `deliveries`. With `park_all`, every event is parked instead of
    /// applied (the last resort for an event that keeps failing in the database).
    async fn apply_batch(
        &self,
        deliveries: &[Delivery],
        park_all: bool,
    ) -> Result<BatchOutcome, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // Intents tombstoned after earlier batches go in this transaction; if it fails they
        // are put back for the next one (or the clearing task).
        let cleared = std::mem::take(&mut *self.cleared.lock().expect("cleared intents"));
        let res = self
            .apply_batch_in(&mut tx, deliveries, park_all, &cleared)
            .await;
        let res = match res {
            Ok(out) => tx.commit().await.map(|()| out),
            Err(e) => Err(e),
        };
        if res.is_err() && !cleared.is_empty() {
            self.cleared
                .lock()
                .expect("cleared intents")
                .extend(cleared);
        }
        res
    }

    async fn apply_batch_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        deliveries: &[Delivery],
        park_all: bool,
        cleared: &[i64],
    ) -> Result<BatchOutcome, sqlx::Error> {
        let p = &self.projection;
        let positions_table = p.positions_table();
        let (k1, k2) = projection_lock(p.name);
        let mut out = BatchOutcome::default();
        let mut parked: BTreeMap<Uuid, i64> = BTreeMap::new();
        let mut by_agg: BTreeMap<Uuid, Vec<(&PublishedEvent, i64)>> = BTreeMap::new();
        let (mut max_stream, mut max_pos) = (0i64, 0i64);
        for d in deliveries {
            max_stream = max_stream.max(d.stream_sequence as i64);
            match d.event() {
                Ok(e) if park_all => {
                    park(
                        tx,
                        p.name,
                        &DeadLetter::of_event(
                            e,
                            d.delivered,
                            "kept failing in the database".into(),
                        ),
                    )
                    .await?;
                    let s = parked.entry(e.aggregate_id).or_insert(0);
                    *s = (*s).max(e.sequence);
                }
                Ok(e) if e.aggregate_type == p.aggregate_type => {
                    max_pos = max_pos.max(e.global_position);
                    by_agg
                        .entry(e.aggregate_id)
                        .or_default()
                        .push((e, d.delivered));
                }
                Ok(_) => {} // another aggregate type on our subject filter: not ours
                Err(err) => {
                    park(
                        tx,
                        p.name,
                        &DeadLetter {
                            event_id: None,
                            event_type: None,
                            aggregate_id: None,
                            sequence: None,
                            global_position: None,
                            subject: Some(d.subject.clone()),
                            deliveries: d.delivered,
                            error: format!("undecodable: {err}"),
                            payload: String::from_utf8_lossy(&d.payload).into_owned(),
                        },
                    )
                    .await?;
                }
            }
        }

        let mut positions: BTreeMap<Uuid, i64> = BTreeMap::new();
        let mut folded = Folded::default();
        // The projection's lock (shared: replay's swap takes it exclusively), then the
        // aggregates' (sorted: no deadlock between instances), in one statement: a target list
        // is evaluated in order, so the shared lock is held before any aggregate's is waited
        // for (the other way round, a batch holding an aggregate could wait behind a queued
        // swap that waits for another batch waiting for that aggregate). Positions are read
        // in the next statement, whose snapshot is taken after the locks are held.
        let mut lock_keys: Vec<i32> = by_agg.keys().map(|id| hash32(id.as_bytes())).collect();
        lock_keys.sort_unstable();
        lock_keys.dedup();
        sqlx::query(
            "SELECT pg_advisory_xact_lock_shared($1, $2), \
               (SELECT count(*) FROM (SELECT pg_advisory_xact_lock($2, k) \
                  FROM (SELECT unnest($3::int[]) AS k ORDER BY 1) s) l)",
        )
        .bind(k1)
        .bind(k2)
        .bind(&lock_keys)
        .execute(&mut **tx)
        .await?;
        if !by_agg.is_empty() {
            let ids: Vec<Uuid> = by_agg.keys().copied().collect();
            let known: HashMap<Uuid, i64> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT aggregate_id, sequence FROM {positions_table} WHERE aggregate_id = ANY($1)"
            )))
            .bind(&ids)
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .collect();

            // Decide per aggregate: duplicates, in order, or with a gap to fill from the log.
            let mut gaps = Vec::new();
            for (id, events) in by_agg.iter_mut() {
                let last = known.get(id).copied().unwrap_or(0);
                events.sort_by_key(|(e, _)| e.sequence);
                events.dedup_by_key(|(e, _)| e.sequence);
                let dup = events.iter().filter(|(e, _)| e.sequence <= last).count();
                out.duplicates += dup as u64;
                events.retain(|(e, _)| e.sequence > last);
                let Some(max) = events.last().map(|(e, _)| e.sequence) else {
                    continue;
                };
                if events.len() as i64 != max - last {
                    gaps.push((*id, last + 1, max));
                }
                positions.insert(*id, last);
            }
            let filled = read_ranges(tx, p.aggregate_type, &gaps).await?;
            let mut filled_by: HashMap<Uuid, Vec<PublishedEvent>> = HashMap::new();
            for e in filled {
                filled_by.entry(e.aggregate_id).or_default().push(e);
            }
            if !gaps.is_empty() {
                tracing::debug!(
                    projection = p.name,
                    gaps = gaps.len(),
                    "filled gaps from the log"
                );
            }

            for (id, events) in &by_agg {
                let log_events = filled_by.get(id);
                let sequence: Vec<(&PublishedEvent, i64)> = match log_events {
                    Some(l) => l.iter().map(|e| (e, 1)).collect(),
                    None => events.clone(),
                };
                for (e, delivered) in sequence {
                    let expected = positions.get(id).copied().unwrap_or(0) + 1;
                    if e.sequence != expected {
                        // The log lacks the events before this one: the event does not come
                        // from this database (a stream shared by mistake) or rows were removed.
                        // Park what was delivered for this aggregate; its position stays.
                        for (e, delivered) in events {
                            let why = format!(
                                "sequence {} of aggregate {id} follows no event {} in this database's log",
                                e.sequence,
                                expected
                            );
                            park(tx, p.name, &DeadLetter::of_event(e, *delivered, why)).await?;
                        }
                        if positions.get(id) == Some(&0) {
                            positions.remove(id);
                        }
                        break;
                    }
                    match (p.apply)(e) {
                        Ok(ops) => folded.push(*id, ops),
                        Err(ApplyError(err)) => {
                            park(tx, p.name, &DeadLetter::of_event(e, delivered, err)).await?;
                        }
                    }
                    out.applied += 1;
                    out.newest = out.newest.max(Some(e.timestamp));
                    positions.insert(*id, e.sequence);
                }
            }
        }

        // A parked event's aggregate moves past it (GREATEST in the positions' upsert).
        for (id, seq) in parked {
            let s = positions.entry(id).or_insert(seq);
            *s = (*s).max(seq);
        }
        let mut writes = Writes::new();
        writes.rows(folded, |t| t.to_string());
        writes.positions(&positions_table, &positions);
        writes.checkpoint(p.name, max_stream, max_pos, out.applied as i64);
        writes.clear_intents(cleared);
        (out.keys, out.intent_id) = writes.execute_keyed(tx).await?;
        Ok(out)
    }
}

/// Tombstones `keys` in Redis; true if that worked (their intents may then go). A failure
/// leaves the intents for [`sweep_invalidations`].
async fn tombstone(cache: Option<&Cache>, keys: &[(String, i64)]) -> bool {
    let Some(cache) = cache else { return false };
    if keys.is_empty() {
        return false;
    }
    match cache.tombstone(keys).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, keys = keys.len(), "cache invalidation deferred to the sweeper");
            false
        }
    }
}

/// Why a sweep of cache invalidations stopped (the intents stay pending).
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// Reading the pending intents from Postgres.
    #[error("reading cache invalidation intents")]
    Read(#[source] sqlx::Error),
    /// Writing the tombstones to Redis.
    #[error("writing cache tombstones")]
    Tombstone(#[source] crate::cache::CacheError),
    /// Deleting the applied intents from Postgres.
    #[error("clearing cache invalidation intents")]
    Clear(#[source] sqlx::Error),
}

/// Applies pending cache invalidations at least `min_age` old; `Ok(n)` once none is left,
/// `Err` if Postgres or Redis failed (they stay pending).
pub async fn sweep_once(
    pool: &PgPool,
    cache: &Cache,
    min_age: Duration,
) -> Result<u64, SweepError> {
    let mut done = 0u64;
    loop {
        // A row is one batch's keys: 10 rows are up to 5,000 keys (a batch is at most 500
        // events).
        let rows: Vec<(i64, Vec<String>, Vec<i64>)> = sqlx::query_as(
            "SELECT id, keys, versions FROM cache_invalidations \
             WHERE created_at < now() - make_interval(secs => $1) ORDER BY id LIMIT 10",
        )
        .bind(min_age.as_secs_f64())
        .fetch_all(pool)
        .await
        .map_err(SweepError::Read)?;
        if rows.is_empty() {
            return Ok(done);
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
        let keys: Vec<(String, i64)> = rows
            .into_iter()
            .flat_map(|(_, keys, versions)| keys.into_iter().zip(versions))
            .collect();
        let keys_swept = keys.len() as u64;
        cache
            .tombstone(&keys)
            .await
            .map_err(SweepError::Tombstone)?;
        sqlx::query(DELETE_INTENTS)
            .bind(&ids)
            .execute(pool)
            .await
            .map_err(SweepError::Clear)?;
        done += keys_swept;
    }
}

/// Retries cache invalidations that did not reach Redis (outage, crash after commit) until
/// `shutdown`; runs in every process that runs projections. Intents younger than 2 s are left to
/// the batch that wrote them.
pub async fn sweep_invalidations(pool: PgPool, cache: Cache, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        match sweep_once(&pool, &cache, Duration::from_secs(2)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "cache sweeper applied deferred invalidations"),
            Err(e) => tracing::debug!(error = %vbin_bus::Chain(&e), "cache sweeper will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_counts_upserts_and_keeps_the_last_op() {
        let (a, c) = (Uuid::now_v7(), Uuid::now_v7());
        let up = |n: i64| RowOp::Upsert {
            table: "rm_calls",
            id: a,
            customer_id: c,
            body: vbin_event_schema::raw(&serde_json::json!({"n": n})),
        };
        let mut f = Folded::default();
        f.push(a, vec![up(1)]);
        f.push(a, vec![up(2)]);
        let (op, n, agg) = f.rows.get(&("rm_calls", a)).unwrap();
        assert_eq!((op, *n, *agg), (&up(2), 2, a));
        f.push(
            a,
            vec![RowOp::Delete {
                table: "rm_calls",
                id: a,
            }],
        );
        assert!(matches!(
            f.rows.get(&("rm_calls", a)),
            Some((RowOp::Delete { .. }, 0, _))
        ));
    }

    #[test]
    fn hash32_is_stable() {
        assert_eq!(hash32(b""), 0x811c_9dc5u32 as i32);
        assert_ne!(hash32(b"calls"), hash32(b"customers"));
    }
}
