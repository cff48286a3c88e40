//! Deletion of ended webhook deliveries (and their attempts) after the retention period.

use sqlx::PgPool;
use std::time::Duration;

/// How long delivered and failed deliveries stay listable: `VBIN_WEBHOOK_RETENTION_DAYS`,
/// 30 days by default.
pub fn retention_from_env() -> Result<Duration, String> {
    match std::env::var("VBIN_WEBHOOK_RETENTION_DAYS") {
        Err(_) => Ok(Duration::from_secs(30 * 86_400)),
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|d| d.is_finite() && *d > 0.0 && *d <= 3_650.0)
            .map(|d| Duration::from_secs_f64(d * 86_400.0))
            .ok_or_else(|| format!("VBIN_WEBHOOK_RETENTION_DAYS: {v:?} is not 0 < days <= 3650")),
    }
}

/// Deletes deliveries that ended (delivered or failed) more than `retention` ago, with their
/// attempts; pending ones are never touched. Returns how many deliveries went.
pub async fn prune(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    vbin_migrations::delete_in_batches(
        pool,
        "WITH old AS (SELECT id FROM webhook_deliveries WHERE status <> 'pending' \
           AND updated_at < now() - make_interval(secs => $1) LIMIT $2), \
         gone AS (DELETE FROM webhook_attempts WHERE delivery_id IN (SELECT id FROM old)) \
         DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM old)",
        retention,
    )
    .await
}
