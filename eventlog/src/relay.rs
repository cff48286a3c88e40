//! The outbox relay: publishes committed events from the Postgres log to JetStream, in commit
//! order, exactly as recorded, and advances its checkpoint only after JetStream acked them.
//!
//! - Only one relay publishes at a time: it holds a session advisory lock (the lease) on a
//!   dedicated connection, and writes its checkpoint through that same connection, so a relay
//!   that lost its connection (and with it the lease) cannot move the checkpoint.
//! - It reads only below the xid horizon (`tx_id < pg_snapshot_xmin(pg_current_snapshot())`),
//!   ordered by `(tx_id, global_position)`: identity values commit out of order, so reading by
//!   position alone could skip an event forever; below the horizon every writer has finished.
//! - `Nats-Msg-Id = event_id`: a batch republished after a crash between the acks and the
//!   checkpoint is dropped by JetStream's duplicate window.
//! - LISTEN/NOTIFY (`vbin_events`) wakes it at commit; it also polls, so a lost notification
//!   only delays.

use crate::log::{read_after, LogCursor, LogFilter};
use async_nats::jetstream::message::PublishMessage;
use chrono::Utc;
use futures::future::try_join_all;
use sqlx::postgres::{PgConnection, PgListener};
use sqlx::{Connection, PgPool};
use std::future::IntoFuture;
use std::time::{Duration, Instant};
use vbin_bus::Bus;

/// Advisory lock key of the relay lease (`'vbin.relay'` hashed, fixed).
pub const RELAY_LOCK_KEY: i64 = 0x7662_696e_7265_6c61; // "vbinrela"
const CHECKPOINT: &str = "relay";

/// Relay settings.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Events per read/publish round.
    pub batch: i64,
    /// Poll interval when no notification arrives.
    pub poll: Duration,
    /// After a wake-up, wait this long so that one read picks up the commits of a burst.
    pub coalesce: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch: 500,
            poll: Duration::from_millis(250),
            coalesce: Duration::from_millis(3),
        }
    }
}

/// The relay.
pub struct Relay {
    pool: PgPool,
    database_url: String,
    bus: Bus,
    config: RelayConfig,
}

impl Relay {
    /// A relay from `pool`'s database to `bus`.
    pub fn new(pool: PgPool, database_url: String, bus: Bus, config: RelayConfig) -> Self {
        Self {
            pool,
            database_url,
            bus,
            config,
        }
    }

    /// Runs until `shutdown`: waits for the lease, then publishes; on any failure drops the
    /// lease and starts over after a pause.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                res = self.lead() => {
                    if let Err(e) = res {
                        tracing::warn!(error = %vbin_bus::Chain(&e), "relay interrupted; will retry");
                        metrics::counter!("vbin_relay_errors_total").increment(1);
                    }
                }
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Acquires the lease (waiting while another relay holds it) and publishes until an error.
    async fn lead(&self) -> Result<(), RelayError> {
        let mut lease = PgConnection::connect(&self.database_url).await?;
        loop {
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(RELAY_LOCK_KEY)
                .fetch_one(&mut lease)
                .await?;
            if got {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        self.bus
            .ensure_stream()
            .await
            .map_err(|e| RelayError::Publish(e.into()))?;
        tracing::info!("relay lease acquired; publishing");
        metrics::gauge!("vbin_relay_leader").set(1.0);
        let res = self.publish_loop(&mut lease).await;
        metrics::gauge!("vbin_relay_leader").set(0.0);
        res
    }

    async fn publish_loop(&self, lease: &mut PgConnection) -> Result<(), RelayError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen("vbin_events").await?;
        sqlx::query(
            "INSERT INTO log_checkpoints (name, tx_id, global_position) VALUES ($1, '0', 0) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(CHECKPOINT)
        .execute(&mut *lease)
        .await?;
        // Read once per lease: only the lease's holder writes the checkpoint, so after this
        // it is what the last pump wrote (a statement less per batch). Any failure ends the
        // lease, and the next one reads it again.
        let (tx_id, position): (String, i64) = sqlx::query_as(
            "SELECT tx_id::text, global_position FROM log_checkpoints WHERE name = $1",
        )
        .bind(CHECKPOINT)
        .fetch_one(&mut *lease)
        .await?;
        let mut cursor = LogCursor { tx_id, position };
        loop {
            let published = self.pump(lease, &mut cursor).await?;
            if published as i64 >= self.config.batch {
                continue;
            }
            // Wait for a commit notification or the poll interval.
            tokio::select! {
                n = listener.try_recv() => { n?; }
                _ = tokio::time::sleep(self.config.poll) => {}
            }
            tokio::time::sleep(self.config.coalesce).await;
            while listener.next_buffered().is_some() {}
        }
    }

    /// Publishes the next batch after `checkpoint` (the stored one), and moves both on once
    /// it is acknowledged; returns how many events it published.
    async fn pump(
        &self,
        lease: &mut PgConnection,
        checkpoint: &mut LogCursor,
    ) -> Result<usize, RelayError> {
        let mut cursor = checkpoint.clone();
        let rows = read_after(
            &mut *lease,
            &LogFilter::default(),
            &mut cursor,
            self.config.batch,
        )
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let started = Instant::now();
        let mut acks = Vec::with_capacity(rows.len());
        let ns = self.bus.namespace();
        let headers = self.bus.publish_headers();
        for e in &rows {
            let subject = ns.subject_for(&e.customer_id, &e.aggregate_type, &e.event_type);
            let body = serde_json::to_vec(e)?;
            let msg = PublishMessage::build()
                .headers(headers.clone())
                .message_id(e.event_id.to_string())
                .payload(body.into());
            acks.push(
                self.bus
                    .js
                    .send_publish(subject, msg)
                    .await
                    .map_err(|err| RelayError::Publish(err.into()))?,
            );
        }
        let acks = tokio::time::timeout(
            Duration::from_secs(10),
            try_join_all(acks.into_iter().map(IntoFuture::into_future)),
        )
        .await
        .map_err(|_| RelayError::AckTimeout)?
        .map_err(|err| RelayError::Publish(err.into()))?;
        let duplicates = acks.iter().filter(|a| a.duplicate).count();
        sqlx::query(
            "UPDATE log_checkpoints SET tx_id = $2::text::xid8, global_position = $3, updated_at = now() \
             WHERE name = $1",
        )
        .bind(CHECKPOINT)
        .bind(&cursor.tx_id)
        .bind(cursor.position)
        .execute(&mut *lease)
        .await?;
        *checkpoint = cursor;
        metrics::counter!("vbin_relay_published_total").increment(rows.len() as u64);
        metrics::counter!("vbin_relay_duplicates_total").increment(duplicates as u64);
        metrics::histogram!("vbin_relay_batch_seconds").record(started.elapsed().as_secs_f64());
        if let Some(lag) = rows.last().map(|e| Utc::now() - e.timestamp) {
            metrics::gauge!("vbin_relay_lag_seconds").set(lag.num_milliseconds() as f64 / 1000.0);
        }
        tracing::debug!(count = rows.len(), duplicates, "relay published batch");
        Ok(rows.len())
    }
}

/// Relay failures (all retried).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Postgres.
    #[error("postgres")]
    Db(#[from] sqlx::Error),
    /// JetStream publish (or preparing the stream).
    #[error("publishing to JetStream")]
    Publish(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// JetStream did not acknowledge a batch in time.
    #[error("timed out waiting for publish acks")]
    AckTimeout,
    /// Encoding.
    #[error("encoding an event")]
    Encode(#[from] serde_json::Error),
}
