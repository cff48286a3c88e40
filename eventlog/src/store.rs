//! The Postgres event store: vbin's implementation of cqrs-es's `PersistedEventRepository`
//! over sqlx 0.9, plus [`PgEventRepository::append`], the write path that also stores what
//! cqrs-es does not model (event id, customer id, resource view) and updates the command-side
//! lookup tables in the same transaction.
//!
//! Why not postgres-es: it pins sqlx 0.8 (two sqlx_core versions cannot share a pool) and its
//! table has no event id, timestamp, global position or transaction id, all of which the relay,
//! audit trail and replay need.

use crate::event::NewEvent;
use crate::inline;
use crate::meta::CommandMeta;
use chrono::{DateTime, Utc};
use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use serde_json::Value;
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// The event store over one Postgres pool.
#[derive(Clone)]
pub struct PgEventRepository {
    pool: PgPool,
}

/// An appended event, as recorded.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Its id.
    pub event_id: Uuid,
    /// Its sequence in the aggregate.
    pub sequence: i64,
    /// Its global position.
    pub global_position: i64,
    /// Commit transaction time.
    pub recorded_at: DateTime<Utc>,
}

/// Why an append failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another command appended to the same aggregate first.
    #[error("optimistic concurrency conflict")]
    Conflict,
    /// A command-side uniqueness rule (e.g. a username) was violated.
    #[error("{0} is already taken")]
    Taken(&'static str),
    /// A command with the same once-key was applied before.
    #[error("already applied")]
    AlreadyApplied,
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

fn unknown(e: impl std::error::Error + Send + Sync + 'static) -> PersistenceError {
    PersistenceError::UnknownError(Box::new(e))
}

fn conn_err(e: sqlx::Error) -> PersistenceError {
    match e {
        sqlx::Error::Database(_) => unknown(e),
        other => PersistenceError::ConnectionError(Box::new(other)),
    }
}

fn parse_id(id: &str) -> Result<Uuid, PersistenceError> {
    Uuid::parse_str(id).map_err(unknown)
}

const SELECT_EVENTS: &str = "SELECT aggregate_id, sequence, aggregate_type, event_type, event_version, payload, metadata \
     FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3 ORDER BY sequence";

fn to_serialized(row: &sqlx::postgres::PgRow) -> Result<SerializedEvent, sqlx::Error> {
    Ok(SerializedEvent {
        aggregate_id: row.try_get::<Uuid, _>(0)?.to_string(),
        sequence: row.try_get::<i64, _>(1)? as usize,
        aggregate_type: row.try_get(2)?,
        event_type: row.try_get(3)?,
        event_version: row.try_get(4)?,
        payload: row.try_get(5)?,
        metadata: row.try_get(6)?,
    })
}

impl PgEventRepository {
    /// A repository over `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The aggregate's last sequence (0 without events): one primary-key index probe.
    pub async fn last_sequence(
        &self,
        aggregate_type: &str,
        id: Uuid,
    ) -> Result<usize, sqlx::Error> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COALESCE(max(sequence), 0) FROM events WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .bind(aggregate_type)
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        Ok(n as usize)
    }

    async fn events_after(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let rows = sqlx::query(SELECT_EVENTS)
            .bind(aggregate_type)
            .bind(parse_id(aggregate_id)?)
            .bind(after as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(conn_err)?;
        rows.iter()
            .map(|r| to_serialized(r).map_err(unknown))
            .collect()
    }

    /// Appends `events` after `expected_sequence` in one transaction, with the command's
    /// metadata, an optional snapshot, and the inline lookup-table updates. A concurrent append
    /// to the same aggregate makes the primary key collide: [`AppendError::Conflict`].
    #[allow(clippy::too_many_arguments)]
    pub async fn append(
        &self,
        aggregate_type: &str,
        aggregate_id: Uuid,
        customer_id: Uuid,
        expected_sequence: usize,
        events: &[NewEvent],
        meta: &CommandMeta,
        snapshot: Option<(Value, usize)>,
    ) -> Result<Vec<Recorded>, AppendError> {
        let n = events.len();
        let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
        let seqs: Vec<i64> = (1..=n as i64)
            .map(|i| expected_sequence as i64 + i)
            .collect();
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let versions: Vec<&str> = events.iter().map(|e| e.event_version.as_str()).collect();
        let payloads: Vec<&Value> = events.iter().map(|e| &e.payload).collect();
        let resources: Vec<&Value> = events.iter().map(|e| &e.resource).collect();
        let metadata = meta.to_json();

        let insert = sqlx::query(
            "INSERT INTO events (event_id, customer_id, aggregate_type, aggregate_id, sequence, \
                 event_type, event_version, payload, metadata, resource) \
             SELECT e.id, $2, $3, $4, e.seq, e.typ, e.ver, e.payload, $9, e.resource \
             FROM UNNEST($1::uuid[], $5::bigint[], $6::text[], $7::text[], $8::jsonb[], $10::jsonb[]) \
                  AS e(id, seq, typ, ver, payload, resource) \
             RETURNING event_id, sequence, global_position, recorded_at",
        )
        .bind(&ids)
        .bind(customer_id)
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(&seqs)
        .bind(&types)
        .bind(&versions)
        .bind(&payloads)
        .bind(&metadata)
        .bind(&resources);
        // One statement is atomic by itself: skip BEGIN/COMMIT round trips when nothing else
        // has to be written with the events.
        let inserted = if snapshot.is_none()
            && !inline::applies_to(aggregate_type)
            && meta.once_key.is_none()
        {
            insert.fetch_all(&self.pool).await.map_err(classify)?
        } else {
            let mut tx = self.pool.begin().await?;
            if let Some(key) = &meta.once_key {
                sqlx::query("INSERT INTO processed_commands (key) VALUES ($1)")
                    .bind(key)
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?;
            }
            let inserted = insert.fetch_all(&mut *tx).await.map_err(classify)?;
            inline::apply(&mut tx, aggregate_type, aggregate_id, customer_id, events)
                .await
                .map_err(classify)?;
            if let Some((payload, last_sequence)) = snapshot {
                sqlx::query(
                    "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, snapshot_version, payload) \
                     VALUES ($1, $2, $3, 1, $4) ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE \
                     SET last_sequence = EXCLUDED.last_sequence, payload = EXCLUDED.payload, \
                         snapshot_version = snapshots.snapshot_version + 1 \
                     WHERE snapshots.last_sequence < EXCLUDED.last_sequence",
                )
                .bind(aggregate_type)
                .bind(aggregate_id)
                .bind(last_sequence as i64)
                .bind(payload)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await.map_err(classify)?;
            inserted
        };
        let mut recorded: Vec<Recorded> = inserted
            .iter()
            .map(|r| {
                Ok(Recorded {
                    event_id: r.try_get(0)?,
                    sequence: r.try_get(1)?,
                    global_position: r.try_get(2)?,
                    recorded_at: r.try_get(3)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        recorded.sort_by_key(|r| r.sequence);
        Ok(recorded)
    }
}

/// Maps unique violations: on the events key a concurrency conflict, on a lookup table a
/// uniqueness rule.
fn classify(e: sqlx::Error) -> AppendError {
    if let sqlx::Error::Database(db) = &e {
        if db.code().as_deref() == Some("23505") {
            return match db.constraint() {
                Some("auth_agents_username_key") => AppendError::Taken("username"),
                Some("transcribe_calls_call_direction_key") => {
                    AppendError::Taken("the call's transcription in this direction")
                }
                Some("numbers_pkey") => AppendError::Taken("number"),
                Some("processed_commands_pkey") => AppendError::AlreadyApplied,
                _ => AppendError::Conflict,
            };
        }
    }
    AppendError::Database(e)
}

impl From<AppendError> for PersistenceError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Conflict => PersistenceError::OptimisticLockError,
            AppendError::Database(e) => conn_err(e),
            other => unknown(other),
        }
    }
}

impl PersistedEventRepository for PgEventRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.events_after(A::TYPE, aggregate_id, 0).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.events_after(A::TYPE, aggregate_id, last_sequence)
            .await
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        let row = sqlx::query(
            "SELECT last_sequence, snapshot_version, payload FROM snapshots \
             WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .bind(A::TYPE)
        .bind(parse_id(aggregate_id)?)
        .fetch_optional(&self.pool)
        .await
        .map_err(conn_err)?;
        row.map(|r| {
            Ok(SerializedSnapshot {
                aggregate_id: aggregate_id.to_string(),
                current_sequence: r.try_get::<i64, _>(0).map_err(unknown)? as usize,
                current_snapshot: r.try_get::<i64, _>(1).map_err(unknown)? as usize,
                aggregate: r.try_get(2).map_err(unknown)?,
            })
        })
        .transpose()
    }

    /// The plain cqrs-es path (used only if a `CqrsFramework` is ever wired): no resource view
    /// and no customer; vbin commands go through [`PgEventRepository::append`].
    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        let id = parse_id(&first.aggregate_id)?;
        let meta: CommandMeta = serde_json::from_value(first.metadata.clone())?;
        let customer = meta.customer_id.ok_or_else(|| {
            PersistenceError::UnknownError("events need a customer_id in their metadata".into())
        })?;
        let new: Vec<NewEvent> = events
            .iter()
            .map(|e| NewEvent {
                event_type: e.event_type.clone(),
                event_version: e.event_version.clone(),
                payload: e.payload.clone(),
                resource: Value::Null,
            })
            .collect();
        let snapshot = snapshot_update.map(|(_, v, _)| (v, first.sequence - 1 + events.len()));
        self.append(
            A::TYPE,
            id,
            customer,
            first.sequence - 1,
            &new,
            &meta,
            snapshot,
        )
        .await?;
        Ok(())
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        let events = self.events_after(A::TYPE, aggregate_id, 0).await?;
        Ok(feed(events))
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(SELECT_EVENTS.replace(
            "aggregate_id = $2 AND sequence > $3 ORDER BY sequence",
            "TRUE ORDER BY tx_id, global_position",
        )))
        .bind(A::TYPE)
        .fetch_all(&self.pool)
        .await
        .map_err(conn_err)?;
        let events = rows
            .iter()
            .map(|r| to_serialized(r).map_err(unknown))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(feed(events))
    }
}

fn feed(events: Vec<SerializedEvent>) -> ReplayStream {
    let (mut feed, stream) = ReplayStream::new(events.len().max(1));
    tokio::spawn(async move {
        for e in events {
            if feed.push(Ok(e)).await.is_err() {
                break;
            }
        }
    });
    stream
}
