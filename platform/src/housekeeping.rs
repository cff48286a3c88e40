//! Periodic deletion of records that have outlived their purpose, so that tables which grow
//! with traffic (idempotency records, request once-keys, ended webhook deliveries, recording
//! files past their retention) stay bounded.
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

/// Recording files older than their retention (the media part's).
#[derive(Clone)]
pub struct Recordings {
    /// Where they are.
    pub store: vbin_storage::Store,
    /// Runs the Recording commands.
    pub executor: vbin_app::Executor,
    /// How long they are kept.
    pub retention: Duration,
}

/// Deletes the files of recordings that ended more than `retention` ago, then marks each
/// deleted (`recording_deleted`). Returns how many. A file already gone counts as deleted.
pub async fn prune_recordings(pool: &sqlx::PgPool, r: &Recordings) -> anyhow::Result<usize> {
    use vbin_domain::{Recording, RecordingCommand};
    use vbin_event_schema::CustomerId;
    let due: Vec<(uuid::Uuid, uuid::Uuid, String)> = sqlx::query_as(
        "SELECT recording_id, customer_id, file FROM recording_files \
         WHERE ended_at < now() - make_interval(secs => $1) ORDER BY ended_at LIMIT 500",
    )
    .bind(r.retention.as_secs_f64())
    .fetch_all(pool)
    .await?;
    for (id, customer, file) in &due {
        r.store.delete(file).await?;
        let c = CustomerId(*customer);
        let meta = {
            let mut m = vbin_eventlog::CommandMeta::caused_by("housekeeping", *id, &id.to_string());
            m.customer_id = Some(*customer);
            m
        };
        r.executor
            .execute::<Recording>(
                *id,
                c,
                Some(c),
                RecordingCommand::Delete {
                    at: chrono::Utc::now(),
                },
                &meta,
            )
            .await?;
    }
    Ok(due.len())
}

/// Prunes every `every` until `shutdown`; failures are logged and retried at the next round.
pub async fn run(
    pool: sqlx::PgPool,
    jobs: Jobs,
    recordings: Option<Recordings>,
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
        if let Some(r) = &recordings {
            match prune_recordings(&pool, r).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(recordings = n, "deleted recordings past their retention"),
                Err(e) => tracing::warn!(error = %e, "deleting old recordings failed"),
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
