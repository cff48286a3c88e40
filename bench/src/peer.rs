//! The peer event store of `vbin bench commands`: cqrs-es's own Postgres repository
//! (postgres-es) appending the same events as vbin's store, through the same `persist` call a
//! `CqrsFramework` makes. It is built on sqlx 0.8 (vbin is on 0.9); the two live side by side
//! in this binary, each with its own pool.

use crate::commands::Feed;
use crate::Load;
use cqrs_es::persist::{PersistedEventRepository, SerializedEvent};
use postgres_es::PostgresEventRepository;
use std::sync::Arc;
use std::time::Duration;

/// postgres-es's tables (its documented schema), under names of their own.
const SCHEMA: [&str; 2] = [
    "CREATE TABLE pes_events (
        aggregate_type text NOT NULL,
        aggregate_id   text NOT NULL,
        sequence       bigint CHECK (sequence >= 0) NOT NULL,
        event_type     text NOT NULL,
        event_version  text NOT NULL,
        payload        json NOT NULL,
        metadata       json NOT NULL,
        timestamp      timestamp with time zone DEFAULT (CURRENT_TIMESTAMP),
        PRIMARY KEY (aggregate_type, aggregate_id, sequence))",
    "CREATE TABLE pes_snapshots (
        aggregate_type   text NOT NULL,
        aggregate_id     text NOT NULL,
        last_sequence    bigint CHECK (last_sequence >= 0) NOT NULL,
        current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
        payload          json NOT NULL,
        timestamp        timestamp with time zone DEFAULT (CURRENT_TIMESTAMP),
        PRIMARY KEY (aggregate_type, aggregate_id, last_sequence))",
];

/// Appends `feed`'s events one per `persist` with `clients` connections for `dur`.
pub(crate) async fn postgres_es_load(
    db_url: &str,
    clients: usize,
    dur: Duration,
    feed: Feed,
) -> anyhow::Result<Load> {
    let pool = sqlx08::postgres::PgPoolOptions::new()
        .max_connections(clients as u32)
        .connect(db_url)
        .await?;
    for sql in SCHEMA {
        sqlx08::query(sql).execute(&pool).await?;
    }
    let repo = Arc::new(
        PostgresEventRepository::new(pool.clone()).with_tables("pes_events", "pes_snapshots"),
    );
    let load = crate::commands::append_load(clients, dur, feed, move |e, id| {
        let repo = repo.clone();
        async move {
            let event = SerializedEvent {
                aggregate_id: id.to_string(),
                sequence: e.sequence as usize,
                aggregate_type: e.aggregate_type,
                event_type: e.event_type,
                event_version: e.event_version,
                payload: e.payload,
                metadata: e.metadata,
            };
            // The aggregate type parameter only names the table's aggregate_type column.
            repo.persist::<vbin_domain::Call>(&[event], None)
                .await
                .map_err(|e| anyhow::anyhow!("postgres-es: {e}"))?;
            Ok(())
        }
    })
    .await;
    pool.close().await;
    Ok(load)
}
