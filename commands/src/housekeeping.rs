//! Deletion of records that have outlived their purpose: the command side's own, and the
//! batched delete every part's pruning runs.

use sqlx::PgPool;
use std::time::Duration;

/// Rows deleted per statement: short transactions that never hold many locks.
pub const BATCH: i64 = 5_000;

/// Runs the DELETE `sql` — `$1` the age in seconds beyond which rows go, `$2` the batch size —
/// until a batch deletes fewer than [`BATCH`] rows; returns how many went in all.
pub async fn delete_in_batches(
    pool: &PgPool,
    sql: &'static str,
    older_than: Duration,
) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let n = sqlx::query(sql)
            .bind(older_than.as_secs_f64())
            .bind(BATCH)
            .execute(pool)
            .await?
            .rows_affected();
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Deletes `Idempotency-Key` records older than their 24 h lifetime and the once-keys of those
/// requests' commands (kept twice as long, so a record never outlives its once-keys); returns
/// how many rows went.
pub async fn prune(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let ttl = Duration::from_secs(crate::api::mw::IDEMPOTENCY_TTL_HOURS as u64 * 3_600);
    let keys = delete_in_batches(
        pool,
        "DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(SELECT ctid FROM idempotency_keys \
         WHERE created_at < now() - make_interval(secs => $1) LIMIT $2))",
        ttl,
    )
    .await?;
    let once = delete_in_batches(
        pool,
        "DELETE FROM processed_commands WHERE ctid = ANY(ARRAY(SELECT ctid FROM processed_commands \
         WHERE key LIKE 'request:%' AND recorded_at < now() - make_interval(secs => $1) \
         LIMIT $2))",
        2 * ttl,
    )
    .await?;
    Ok(keys + once)
}
