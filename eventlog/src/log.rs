//! Reading the event log: the one place that turns a stored row into the published envelope
//! (upcast to the current version, secrets redacted). The relay, the projections' gap filling
//! and replay, the audit trail and `vbin events` all read the log through here, so every reader
//! sees an event exactly as consumers of the stream see it.

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::Row;
use uuid::Uuid;
use vbin_event_schema::{raw, upcast, CustomerEvent, PublishedEvent};

/// The columns [`published_from_row`] expects, in order (`tx_id` first, as text). The text
/// column must not be called `tx_id`: `ORDER BY tx_id` would then sort by the text (Postgres
/// resolves ORDER BY names against output columns first), putting transaction 1000 before 999
/// and making an in-order reader skip events for ever.
pub const EVENT_COLUMNS: &str = "tx_id::text AS tx_text, event_id, event_type, event_version, recorded_at, \
     customer_id, aggregate_type, aggregate_id, sequence, global_position, metadata, payload, resource";

/// [`EVENT_COLUMNS`] with `metadata` and `payload` left out (as JSON null): for readers that
/// need only the resource view (replay of most read models), where decoding JSON dominates.
pub const VIEW_COLUMNS: &str = "tx_id::text AS tx_text, event_id, event_type, event_version, recorded_at, \
     customer_id, aggregate_type, aggregate_id, sequence, global_position, 'null'::jsonb, 'null'::jsonb, resource";

/// A row selected with [`EVENT_COLUMNS`] as `(tx_id, envelope)`.
///
/// The JSON columns are taken as the text Postgres sends: an event of the current version
/// that holds no secret (nearly all) is published without being parsed.
pub fn published_from_row(r: &PgRow) -> Result<(String, PublishedEvent), sqlx::Error> {
    let aggregate_type: String = r.try_get(6)?;
    let event_type: String = r.try_get(2)?;
    let stored_version: String = r.try_get(3)?;
    let stored: &RawValue = r.try_get(11)?;
    let (event_version, data) = if upcast::is_current(&event_type, &stored_version)
        && aggregate_type != CustomerEvent::AGGREGATE
    {
        (stored_version, stored.to_owned())
    } else {
        let (version, payload) =
            upcast::to_current(&event_type, &stored_version, parse(stored, 11)?);
        (version, raw(&redact(&aggregate_type, payload)))
    };
    Ok((
        r.try_get(0)?,
        PublishedEvent {
            event_id: r.try_get::<Uuid, _>(1)?,
            data,
            event_type,
            event_version,
            timestamp: r.try_get::<DateTime<Utc>, _>(4)?,
            customer_id: r.try_get(5)?,
            aggregate_type,
            aggregate_id: r.try_get(7)?,
            sequence: r.try_get(8)?,
            global_position: r.try_get(9)?,
            metadata: r.try_get::<&RawValue, _>(10)?.to_owned(),
            resource: r.try_get::<&RawValue, _>(12)?.to_owned(),
        },
    ))
}

fn parse(json: &RawValue, column: usize) -> Result<Value, sqlx::Error> {
    serde_json::from_str(json.get()).map_err(|e| sqlx::Error::ColumnDecode {
        index: column.to_string(),
        source: Box::new(e),
    })
}

/// Secrets and hashes never leave Postgres.
pub fn redact(aggregate_type: &str, payload: Value) -> Value {
    if aggregate_type != CustomerEvent::AGGREGATE {
        return payload;
    }
    match serde_json::from_value::<CustomerEvent>(payload.clone()) {
        Ok(e) => serde_json::to_value(e.redacted()).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// The SQL condition "committed and below the xid horizon": no transaction that could still
/// commit an event ordered before it is open (see `relay.rs`).
pub const BELOW_HORIZON: &str = "tx_id < pg_snapshot_xmin(pg_current_snapshot())";

/// Which events [`read_after`] returns.
#[derive(Clone, Debug, Default)]
pub struct LogFilter {
    /// Only this customer's.
    pub customer_id: Option<Uuid>,
    /// Only this aggregate type's.
    pub aggregate_type: Option<String>,
    /// Only these aggregates'.
    pub aggregate_ids: Option<Vec<Uuid>>,
    /// Only from this global position on.
    pub from_position: Option<i64>,
    /// Leave `data` and `metadata` null (see [`VIEW_COLUMNS`]).
    pub view_only: bool,
}

/// A place in commit order: `(tx_id as text, global_position)`; [`LogCursor::start`] is
/// before everything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogCursor {
    /// The transaction id (xid8 as text).
    pub tx_id: String,
    /// The global position.
    pub position: i64,
}

impl LogCursor {
    /// Before the first event.
    pub fn start() -> Self {
        Self {
            tx_id: "0".into(),
            position: 0,
        }
    }
}

/// Up to `limit` committed events after `cursor`, below the xid horizon, in commit order,
/// matching `filter`; advances `cursor` past them. Every in-order reader of the log (relay,
/// replay, `vbin events`) reads through here.
pub async fn read_after(
    conn: &mut sqlx::PgConnection,
    filter: &LogFilter,
    cursor: &mut LogCursor,
    limit: i64,
) -> Result<Vec<PublishedEvent>, sqlx::Error> {
    // Only the filters in use appear in the SQL: "$n IS NULL OR ..." would let Postgres pick a
    // generic plan that sorts the whole log for every chunk instead of walking the commit-order
    // index.
    let mut conditions = String::new();
    let mut n = 3;
    let mut cond = |c: &str| {
        n += 1;
        conditions.push_str(&format!(" AND {c} ${n}"));
    };
    if filter.customer_id.is_some() {
        cond("customer_id =");
    }
    if filter.aggregate_type.is_some() {
        cond("aggregate_type =");
    }
    if filter.from_position.is_some() {
        cond("global_position >=");
    }
    if filter.aggregate_ids.is_some() {
        n += 1;
        conditions.push_str(&format!(" AND aggregate_id = ANY(${n})"));
    }
    let columns = if filter.view_only {
        VIEW_COLUMNS
    } else {
        EVENT_COLUMNS
    };
    let sql = format!(
        "SELECT {columns} FROM events \
         WHERE (tx_id, global_position) > ($1::text::xid8, $2) AND {BELOW_HORIZON}{conditions} \
         ORDER BY tx_id, global_position LIMIT $3"
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&cursor.tx_id)
        .bind(cursor.position)
        .bind(limit);
    if let Some(c) = filter.customer_id {
        q = q.bind(c);
    }
    if let Some(t) = &filter.aggregate_type {
        q = q.bind(t);
    }
    if let Some(p) = filter.from_position {
        q = q.bind(p);
    }
    if let Some(ids) = &filter.aggregate_ids {
        q = q.bind(ids);
    }
    let rows = q.fetch_all(conn).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let (tx_id, e) = published_from_row(r)?;
        *cursor = LogCursor {
            tx_id,
            position: e.global_position,
        };
        out.push(e);
    }
    Ok(out)
}
