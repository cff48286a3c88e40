//! The peer event store of `vbin bench commands`: cqrs-es's own Postgres repository
//! (postgres-es) appending the same events as vbin's store, through the same `persist` call a
//! `CqrsFramework` makes. It is built on sqlx 0.8 (vbin is on 0.9); the two live side by side
//! in this binary, each with its own pool.

use cqrs_es::persist::{PersistedEventRepository, SerializedEvent};
use postgres_es::PostgresEventRepository;
use std::sync::Arc;

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

/// postgres-es over its own pool and tables.
pub(crate) struct PostgresEs {
    pool: sqlx08::PgPool,
    repo: Arc<PostgresEventRepository>,
}

impl PostgresEs {
    /// Connects with `clients` connections and creates its tables in `db_url`'s database.
    pub async fn connect(db_url: &str, clients: usize) -> anyhow::Result<Self> {
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
        Ok(Self { pool, repo })
    }

    /// Appends one event as cqrs-es does after a command: `persist`, its own transaction.
    pub async fn append(&self, event: SerializedEvent) -> anyhow::Result<()> {
        // The aggregate type parameter only names the table's aggregate_type column.
        self.repo
            .persist::<vbin_domain::Call>(&[event], None)
            .await
            .map_err(|e| anyhow::anyhow!("postgres-es: {e}"))
    }

    /// Closes its pool.
    pub async fn close(self) {
        self.pool.close().await;
    }
}
