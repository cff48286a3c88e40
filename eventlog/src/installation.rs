//! The installation's identity, read from its database (made once by the migration
//! `0014_installation.sql`), and the namespace it uses on NATS.

use sqlx::PgPool;
use vbin_event_schema::{Installation, Namespace, NamespaceError};

/// Why the installation could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InstallationError {
    /// Postgres.
    #[error("reading the installation row")]
    Db(#[from] sqlx::Error),
    /// The stored namespace or the override is not a namespace.
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
}

/// The installation of the database behind `pool`; its namespace is `override_ns`
/// (`VBIN_NATS_NAMESPACE`) if given, else the stored one.
pub async fn load(
    pool: &PgPool,
    override_ns: Option<&Namespace>,
) -> Result<Installation, InstallationError> {
    let (id, stored): (uuid::Uuid, String) =
        sqlx::query_as("SELECT id, nats_namespace FROM installation")
            .fetch_one(pool)
            .await?;
    let namespace = match override_ns {
        Some(ns) => ns.clone(),
        None => Namespace::new(&stored)?,
    };
    Ok(Installation { id, namespace })
}
