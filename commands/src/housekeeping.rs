//! Deletion of command-side records that have outlived their purpose.

use sqlx::PgPool;

/// Rows deleted per statement: short transactions that never hold many locks.
const BATCH: i64 = 5_000;

/// Deletes `Idempotency-Key` records older than their 24 h lifetime and the once-keys of those
/// requests' commands (kept twice as long, so a record never outlives its once-keys); returns
/// how many rows went.
pub async fn prune(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    for sql in [
        "DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(SELECT ctid FROM idempotency_keys \
         WHERE created_at < now() - make_interval(hours => $1) LIMIT $2))",
        "DELETE FROM processed_commands WHERE ctid = ANY(ARRAY(SELECT ctid FROM processed_commands \
         WHERE key LIKE 'request:%' AND recorded_at < now() - make_interval(hours => 2 * $1) \
         LIMIT $2))",
    ] {
        loop {
            let n = sqlx::query(sql)
                .bind(crate::api::mw::IDEMPOTENCY_TTL_HOURS as i32)
                .bind(BATCH)
                .execute(pool)
                .await?
                .rows_affected();
            total += n;
            if n < BATCH as u64 {
                break;
            }
        }
    }
    Ok(total)
}
