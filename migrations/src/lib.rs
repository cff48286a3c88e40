//! vbin's database schema, bootstrap and maintenance: create the database if missing, run
//! migrations, delete expired rows in batches.

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use std::str::FromStr;
use std::time::Duration;

/// Every migration, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("./sql");

/// Creates the database named in `url` if it does not exist (connecting to the `postgres`
/// maintenance database to do so).
pub async fn ensure_database(url: &str) -> Result<(), sqlx::Error> {
    let opts = PgConnectOptions::from_str(url)?;
    let name = opts
        .get_database()
        .map(str::to_owned)
        .unwrap_or_else(|| "postgres".into());
    if opts.clone().connect().await.is_ok() {
        return Ok(());
    }
    let mut admin = opts.database("postgres").connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let quoted = name.replace('"', "\"\"");
        match sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{quoted}\"")))
            .execute(&mut admin)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another process created it at the same moment.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e),
        }
    }
    admin.close().await
}

/// Creates the database if needed, connects a pool and runs pending migrations.
pub async fn connect_and_migrate(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    ensure_database(url).await?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

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
