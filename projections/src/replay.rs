//! Replay: rebuild a projection from the Postgres log (never from JetStream, whose retention is
//! limited) into shadow tables, verify it, and swap it in while the query API keeps serving.
//!
//! A full rebuild:
//! 1. creates `<table>__shadow` for every table of the projection and its positions table
//!    (`LIKE ... INCLUDING ALL`, then without its non-unique indexes, which are built once the
//!    bulk load is in);
//! 2. reads the projection's events below the xid horizon in commit order, in chunks, folds
//!    each chunk with the projection's own pure `apply` and writes it to the shadow tables in a
//!    short transaction (a long one would hold back the relay, see operations.md);
//! 3. catches up the same way until little is left;
//! 4. takes the projection's lock exclusively (live batches finish and wait; reads go on),
//!    applies the rest, and in the same transaction renames the shadow tables over the live ones
//!    and resets the checkpoint counter. The live projection resumes on the new tables, and
//!    skips what the rebuild already applied (its positions came with the swap).
//!
//! `--from-position N` repairs only the aggregates with an event at or after global position N:
//! under the exclusive lock it copies the live tables, rebuilds those aggregates from their whole
//! history, and swaps. `verify` rebuilds and compares with the live tables instead of swapping.

use crate::cache::Cache;
use crate::runtime::{projection_lock, Folded, Writes};
use crate::Projection;
use sqlx::{PgPool, Postgres, Transaction};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use uuid::Uuid;
use vbin_eventlog::log::{read_after, LogCursor, LogFilter};

/// Events read per chunk.
pub const CHUNK: i64 = 20_000;

/// Replay settings.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// Only repair aggregates with an event at or after this global position.
    pub from_position: Option<i64>,
    /// Build and verify, but do not swap (the shadow tables are dropped).
    pub dry_run: bool,
}

/// Progress of a running rebuild.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Events folded so far.
    pub done: u64,
    /// Events to fold (estimate at start; catch-up may add some).
    pub total: u64,
}

/// A difference between the live and the rebuilt read model.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Difference {
    /// Table.
    pub table: String,
    /// Row id.
    pub id: Uuid,
    /// `missing_live`, `missing_rebuilt` or `different`.
    pub kind: String,
}

/// What `verify` found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Rows compared (of aggregates that both sides have applied to the same sequence).
    pub rows_compared: u64,
    /// Aggregates skipped because the live projection has not caught up with them yet.
    pub aggregates_in_flight: u64,
    /// Differences (at most 100 listed).
    pub differences: Vec<Difference>,
    /// Total number of differences.
    pub difference_count: u64,
}

/// The outcome of a replay.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReplayReport {
    /// Projection.
    pub projection: String,
    /// Events folded.
    pub events: u64,
    /// Events the projection could not apply (skipped, as the live runtime parks them).
    pub unappliable: u64,
    /// Seconds spent.
    pub seconds: f64,
    /// Events per second.
    pub events_per_second: f64,
    /// The comparison with the live tables (before the swap).
    pub verify: VerifyReport,
    /// Whether the rebuilt tables replaced the live ones.
    pub swapped: bool,
}

/// Replay failures.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Postgres.
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    /// Another replay of the same projection is running.
    #[error("a replay of {0} is already running")]
    Busy(String),
}

fn shadow(table: &str) -> String {
    format!("{table}__shadow")
}

/// The live tables of `p`, positions table last.
fn tables_of(p: &Projection) -> Vec<String> {
    let mut t: Vec<String> = p.tables.iter().map(|s| s.to_string()).collect();
    t.push(p.positions_table());
    t
}

/// Rows folded in memory and not yet written to the shadow tables.
#[derive(Default)]
struct Pending {
    folded: Folded,
    positions: BTreeMap<Uuid, i64>,
    unappliable: u64,
}

/// Rows kept in memory before they are written: a row touched by several events in that window
/// is written once (a call's four events usually fall into one window).
const FLUSH_ROWS: usize = 100_000;

impl Pending {
    fn fold(&mut self, p: &Projection, events: &[vbin_event_schema::PublishedEvent]) {
        for e in events {
            match (p.apply)(e) {
                Ok(ops) => self.folded.push(e.aggregate_id, ops),
                Err(err) => {
                    self.unappliable += 1;
                    tracing::warn!(projection = p.name, event_id = %e.event_id, error = %err, "replay skips an event the projection cannot apply");
                }
            }
            self.positions.insert(e.aggregate_id, e.sequence);
        }
    }

    /// Writes what was folded into the shadow tables (within `tx`); returns the unappliable
    /// count so far.
    async fn flush(
        &mut self,
        tx: &mut Transaction<'_, Postgres>,
        p: &Projection,
    ) -> Result<u64, sqlx::Error> {
        let taken = std::mem::take(self);
        let mut writes = Writes::new();
        writes.rows(taken.folded, shadow);
        writes.positions(&shadow(&p.positions_table()), &taken.positions);
        writes.execute(tx).await?;
        Ok(taken.unappliable)
    }
}

fn filter_of(p: &Projection, only: Option<&[Uuid]>) -> LogFilter {
    LogFilter {
        aggregate_type: Some(p.aggregate_type.to_string()),
        aggregate_ids: only.map(<[Uuid]>::to_vec),
        view_only: !p.uses_data,
        ..Default::default()
    }
}

/// The bulk pass, without any lock: a reader task streams chunks of the log (decoding them)
/// while this task folds and writes, in short transactions. Returns (events, unappliable).
async fn bulk(
    pool: &PgPool,
    p: &Projection,
    cursor: &mut LogCursor,
    (done_before, total): (u64, u64),
    progress: &impl Fn(Progress),
) -> Result<(u64, u64), ReplayError> {
    let (send, mut recv) = tokio::sync::mpsc::channel(2);
    let reader = {
        let (pool, filter, mut cursor) = (pool.clone(), filter_of(p, None), cursor.clone());
        tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            loop {
                let events = read_after(&mut conn, &filter, &mut cursor, CHUNK).await?;
                let last = events.len() < CHUNK as usize;
                if send.send((events, cursor.clone())).await.is_err() || last {
                    return Ok::<_, sqlx::Error>(());
                }
            }
        })
    };
    // A writer task, so folding the next chunk overlaps writing the previous rows.
    let (to_writer, mut writes) = tokio::sync::mpsc::channel::<Pending>(1);
    let writer = {
        let (pool, p) = (pool.clone(), *p);
        tokio::spawn(async move {
            let (mut unappliable, mut writing) = (0u64, Duration::ZERO);
            while let Some(mut pending) = writes.recv().await {
                let t = Instant::now();
                let mut tx = pool.begin().await?;
                unappliable += pending.flush(&mut tx, &p).await?;
                tx.commit().await?;
                writing += t.elapsed();
            }
            Ok::<_, sqlx::Error>((unappliable, writing))
        })
    };
    let mut events = 0u64;
    let mut pending = Pending::default();
    let (mut waiting, mut folding) = (Duration::ZERO, Duration::ZERO);
    loop {
        let t = Instant::now();
        let Some((chunk, at)) = recv.recv().await else {
            break;
        };
        waiting += t.elapsed();
        let last = chunk.len() < CHUNK as usize;
        events += chunk.len() as u64;
        let t = Instant::now();
        pending.fold(p, &chunk);
        drop(chunk);
        folding += t.elapsed();
        *cursor = at;
        let flush = pending.folded.len() >= FLUSH_ROWS || last;
        if flush && to_writer.send(std::mem::take(&mut pending)).await.is_err() {
            break; // the writer failed; its error is returned below
        }
        progress(Progress {
            done: done_before + events,
            total: total.max(done_before + events),
        });
    }
    drop(to_writer);
    let (unappliable, writing) = writer
        .await
        .map_err(|e| sqlx::Error::Protocol(format!("replay writer: {e}")))??;
    reader
        .await
        .map_err(|e| sqlx::Error::Protocol(format!("replay reader: {e}")))??;
    tracing::debug!(
        projection = p.name,
        events,
        ?waiting,
        ?folding,
        ?writing,
        "replay bulk pass"
    );
    Ok((events, unappliable))
}

/// Folds everything after `cursor` (of `only` aggregates, if given) within `tx` (the final,
/// locked part). Returns (events, unappliable).
async fn fold_rest(
    tx: &mut Transaction<'_, Postgres>,
    p: &Projection,
    cursor: &mut LogCursor,
    only: Option<&[Uuid]>,
) -> Result<(u64, u64), ReplayError> {
    let filter = filter_of(p, only);
    let (mut events, mut unappliable) = (0u64, 0u64);
    let mut pending = Pending::default();
    loop {
        let chunk = read_after(tx, &filter, cursor, CHUNK).await?;
        events += chunk.len() as u64;
        pending.fold(p, &chunk);
        if pending.folded.len() >= FLUSH_ROWS || chunk.len() < CHUNK as usize {
            unappliable += pending.flush(tx, p).await?;
        }
        if chunk.len() < CHUNK as usize {
            return Ok((events, unappliable));
        }
    }
}

/// Runs each statement (no parameters) in `tx`.
async fn exec_all(
    tx: &mut Transaction<'_, Postgres>,
    statements: &[String],
) -> Result<(), sqlx::Error> {
    for st in statements {
        sqlx::query(sqlx::AssertSqlSafe(st.clone()))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Creates empty shadow tables (dropping leftovers of an interrupted replay). Their
/// non-unique indexes are left out until the bulk load is in (see [`set_logged`]): built once
/// over the loaded rows they cost less than kept up row by row (a third of the writing time
/// of `rm_calls`, with its two secondary indexes). Unique indexes stay, for `ON CONFLICT` and
/// so that the rows are checked as they come. Returns the definitions of the left-out indexes.
async fn create_shadows(
    tx: &mut Transaction<'_, Postgres>,
    p: &Projection,
) -> Result<Vec<String>, sqlx::Error> {
    let mut deferred = Vec::new();
    for t in tables_of(p) {
        let s = shadow(&t);
        exec_all(
            tx,
            &[
                format!("DROP TABLE IF EXISTS {s}"),
                format!("CREATE UNLOGGED TABLE {s} (LIKE {t} INCLUDING ALL)"),
            ],
        )
        .await?;
        let secondary: Vec<(String, String)> = sqlx::query_as(
            "SELECT quote_ident(c.relname), pg_get_indexdef(i.indexrelid) \
             FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE i.indrelid = $1::text::regclass AND NOT i.indisunique \
               AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) \
             ORDER BY c.relname",
        )
        .bind(&s)
        .fetch_all(&mut **tx)
        .await?;
        for (name, definition) in secondary {
            exec_all(tx, &[format!("DROP INDEX {name}")]).await?;
            deferred.push(definition);
        }
    }
    Ok(deferred)
}

/// Makes the shadow tables crash-safe (this rewrites each one) and then builds the indexes
/// [`create_shadows`] left out: built before, `SET LOGGED` would rebuild them a second time.
async fn set_logged(
    tx: &mut Transaction<'_, Postgres>,
    p: &Projection,
    deferred: &[String],
) -> Result<(), sqlx::Error> {
    let statements: Vec<String> = tables_of(p)
        .iter()
        .map(|t| format!("ALTER TABLE {} SET LOGGED", shadow(t)))
        .chain(deferred.iter().cloned())
        .collect();
    exec_all(tx, &statements).await
}

async fn drop_shadows(pool: &PgPool, p: &Projection) -> Result<(), sqlx::Error> {
    for t in tables_of(p) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS {}",
            shadow(&t)
        )))
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// Number of events of the projection's aggregate type in the log (for progress).
async fn count_events(
    pool: &PgPool,
    p: &Projection,
    only: Option<&[Uuid]>,
) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = $1 \
         AND ($2::uuid[] IS NULL OR aggregate_id = ANY($2))",
    )
    .bind(p.aggregate_type)
    .bind(only)
    .fetch_one(pool)
    .await?;
    Ok(n as u64)
}

/// Compares the shadow tables with the live ones, for aggregates both have applied up to the
/// same sequence (the live projection may lag behind the log; those aggregates are counted as
/// in flight, not as differences).
async fn compare(
    conn: &mut sqlx::PgConnection,
    p: &Projection,
) -> Result<VerifyReport, sqlx::Error> {
    let pp = p.positions_table();
    let pps = shadow(&pp);
    let in_flight: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {pp} l FULL JOIN {pps} s USING (aggregate_id) \
         WHERE l.sequence IS DISTINCT FROM s.sequence"
    )))
    .fetch_one(&mut *conn)
    .await?;
    let mut report = VerifyReport {
        aggregates_in_flight: in_flight as u64,
        ..Default::default()
    };
    for t in p.tables {
        let s = shadow(t);
        let settled = format!(
            "aggregate_id IN (SELECT aggregate_id FROM {pp} l JOIN {pps} r USING (aggregate_id) \
             WHERE l.sequence = r.sequence)"
        );
        let compared: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {s} WHERE {settled}"
        )))
        .fetch_one(&mut *conn)
        .await?;
        report.rows_compared += compared as u64;
        let diffs: Vec<(Uuid, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT COALESCE(l.id, s.id), CASE WHEN l.id IS NULL THEN 'missing_live' \
               WHEN s.id IS NULL THEN 'missing_rebuilt' ELSE 'different' END \
             FROM (SELECT * FROM {t} WHERE {settled}) l \
             FULL JOIN (SELECT * FROM {s} WHERE {settled}) s ON l.id = s.id \
             WHERE l.id IS NULL OR s.id IS NULL OR l.body IS DISTINCT FROM s.body \
                OR l.customer_id IS DISTINCT FROM s.customer_id OR l.version IS DISTINCT FROM s.version"
        )))
        .fetch_all(&mut *conn)
        .await?;
        report.difference_count += diffs.len() as u64;
        for (id, kind) in diffs {
            if report.differences.len() < 100 {
                report.differences.push(Difference {
                    table: t.to_string(),
                    id,
                    kind,
                });
            }
        }
    }
    Ok(report)
}

/// Rebuilds `p` (see the module docs); `progress` is called after every chunk.
pub async fn replay(
    pool: &PgPool,
    cache: Option<&Cache>,
    p: Projection,
    opts: &ReplayOptions,
    progress: impl Fn(Progress),
) -> Result<ReplayReport, ReplayError> {
    let started = Instant::now();
    // One replay per projection at a time (session lock on a dedicated connection).
    let mut guard = pool.acquire().await?;
    let (k1, k2) = projection_lock(p.name);
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
        .bind(k1.wrapping_add(1))
        .bind(k2)
        .fetch_one(&mut *guard)
        .await?;
    if !got {
        return Err(ReplayError::Busy(p.name.to_string()));
    }
    let result = run(pool, cache, p, opts, &progress, started).await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1, $2)")
        .bind(k1.wrapping_add(1))
        .bind(k2)
        .execute(&mut *guard)
        .await;
    if result.is_err() || opts.dry_run {
        let _ = drop_shadows(pool, &p).await;
    }
    result
}

async fn lock_exclusive(
    tx: &mut Transaction<'_, Postgres>,
    p: &Projection,
) -> Result<(), sqlx::Error> {
    let (k1, k2) = projection_lock(p.name);
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(k1)
        .bind(k2)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn run(
    pool: &PgPool,
    cache: Option<&Cache>,
    p: Projection,
    opts: &ReplayOptions,
    progress: &impl Fn(Progress),
    started: Instant,
) -> Result<ReplayReport, ReplayError> {
    let mut cursor = LogCursor::start();
    let (mut events, mut unappliable) = (0u64, 0u64);
    // The swap (or, for --from-position, the whole repair) happens in this transaction.
    let mut final_tx: Transaction<'_, Postgres>;
    let only: Option<Vec<Uuid>>;
    match opts.from_position {
        None => {
            let mut tx = pool.begin().await?;
            let deferred = create_shadows(&mut tx, &p).await?;
            tx.commit().await?;
            let total = count_events(pool, &p, None).await?;
            // Bulk pass, then a catch-up pass, without blocking the live projection.
            let (n, u) = bulk(pool, &p, &mut cursor, (events, total), progress).await?;
            events += n;
            unappliable += u;
            // The bulk load went to unlogged tables (no per-row WAL) without their secondary
            // indexes; make them crash-safe and index them now, outside the lock, before they
            // can become live.
            let mut tx = pool.begin().await?;
            set_logged(&mut tx, &p, &deferred).await?;
            tx.commit().await?;
            let (n, u) = bulk(pool, &p, &mut cursor, (events, total), progress).await?;
            events += n;
            unappliable += u;
            final_tx = pool.begin().await?;
            lock_exclusive(&mut final_tx, &p).await?;
            only = None;
        }
        Some(from) => {
            final_tx = pool.begin().await?;
            lock_exclusive(&mut final_tx, &p).await?;
            let deferred = create_shadows(&mut final_tx, &p).await?;
            let affected: Vec<Uuid> = sqlx::query_scalar(
                "SELECT DISTINCT aggregate_id FROM events \
                 WHERE aggregate_type = $1 AND global_position >= $2",
            )
            .bind(p.aggregate_type)
            .bind(from)
            .fetch_all(&mut *final_tx)
            .await?;
            // Everything else stays as the live projection has it (positions included).
            for t in tables_of(&p) {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {} SELECT * FROM {t} WHERE NOT (aggregate_id = ANY($1))",
                    shadow(&t)
                )))
                .bind(&affected)
                .execute(&mut *final_tx)
                .await?;
            }
            set_logged(&mut final_tx, &p, &deferred).await?;
            let total = count_events(pool, &p, Some(&affected)).await?;
            progress(Progress { done: 0, total });
            only = Some(affected);
        }
    }
    // The rest, under the exclusive lock: nothing the live projection applied is missing.
    let (n, u) = fold_rest(&mut final_tx, &p, &mut cursor, only.as_deref()).await?;
    events += n;
    unappliable += u;
    progress(Progress {
        done: events,
        total: events,
    });
    let verify = compare(&mut final_tx, &p).await?;
    if opts.dry_run {
        final_tx.rollback().await?;
    } else {
        for t in tables_of(&p) {
            exec_all(
                &mut final_tx,
                &[
                    format!("ALTER TABLE {t} RENAME TO {t}__old"),
                    format!("ALTER TABLE {} RENAME TO {t}", shadow(&t)),
                    format!("DROP TABLE {t}__old"),
                ],
            )
            .await?;
        }
        let applied: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COALESCE(sum(sequence), 0)::bigint FROM {}",
            p.positions_table()
        )))
        .fetch_one(&mut *final_tx)
        .await?;
        sqlx::query(
            "INSERT INTO projection_checkpoints (name, events_applied) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET events_applied = EXCLUDED.events_applied, updated_at = now()",
        )
        .bind(p.name)
        .bind(applied)
        .execute(&mut *final_tx)
        .await?;
        final_tx.commit().await?;
        if let Some(cache) = cache {
            for t in p.tables {
                if let Err(e) = cache.purge_table(t).await {
                    tracing::warn!(table = t, error = %e, "could not purge cached rows after the swap; they expire within 24 h");
                }
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(ReplayReport {
        projection: p.name.to_string(),
        events,
        unappliable,
        seconds,
        events_per_second: events as f64 / seconds.max(1e-9),
        verify,
        swapped: !opts.dry_run,
    })
}
