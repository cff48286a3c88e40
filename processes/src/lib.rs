//! vbin's process managers: durable JetStream consumers (and one polling dialer) that react to
//! events by sending commands, never by writing another aggregate's tables.
//!
//! Every command they send is idempotent: either the aggregate ignores a repeat (a result for
//! a call no longer in flight), or the command carries a once-key (`billing:<call id>`) that
//! the event store records in the same transaction as the events. So redelivery, restarts and
//! several instances change nothing.

pub mod billing;
pub mod campaign;

use vbin_commands::ExecError;

/// Why a handler failed (the event is redelivered later).
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// A command failed for a reason that may pass.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// A read failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The event is not what it claims.
    #[error("bad event: {0}")]
    BadEvent(String),
}

/// Treats "already applied" as success: the command took effect earlier.
pub(crate) fn applied<T>(r: Result<T, ExecError>) -> Result<Option<T>, ExecError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(ExecError::AlreadyApplied) => Ok(None),
        Err(e) => Err(e),
    }
}
