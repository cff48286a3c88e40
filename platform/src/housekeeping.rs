//! Periodic deletion of records that have outlived their purpose, so that tables which grow
//! with traffic (idempotency records, request once-keys, ended webhook deliveries) stay bounded.
//! Every process running the owning part does it; concurrent runs only delete the same rows.

use std::future::Future;
use std::time::Duration;

/// What to prune.
#[derive(Clone, Copy, Debug)]
pub struct Jobs {
    /// Idempotency records and request once-keys (the command API's).
    pub command_side: bool,
    /// Ended webhook deliveries older than this (the webhooks part's).
    pub webhooks: Option<Duration>,
}

/// Prunes every `every` until `shutdown`; failures are logged and retried at the next round.
pub async fn run(
    pool: sqlx::PgPool,
    jobs: Jobs,
    every: Duration,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        if jobs.command_side {
            match vbin_http::mw::prune_idempotency(&pool).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "pruned expired idempotency records"),
                Err(e) => tracing::warn!(error = %e, "pruning idempotency records failed"),
            }
        }
        if let Some(retention) = jobs.webhooks {
            match vbin_webhooks::retention::prune(&pool, retention).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deliveries = n, "pruned ended webhook deliveries"),
                Err(e) => tracing::warn!(error = %e, "pruning webhook deliveries failed"),
            }
        }
    }
}
