//! What an append answers: the events as recorded, or why it failed (shared by the store's
//! own transaction and the group-commit writers).

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// An appended event, as recorded.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Its id.
    pub event_id: Uuid,
    /// Its sequence in the aggregate.
    pub sequence: i64,
    /// Its global position.
    pub global_position: i64,
    /// Commit transaction time.
    pub recorded_at: DateTime<Utc>,
}

/// Why an append failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another command appended to the same aggregate first.
    #[error("optimistic concurrency conflict")]
    Conflict,
    /// A command-side uniqueness rule (e.g. a username) was violated.
    #[error("{0} is already taken")]
    Taken(&'static str),
    /// A command with the same once-key was applied before.
    #[error("already applied")]
    AlreadyApplied,
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Maps unique violations: on the events key a concurrency conflict, on a lookup table a
/// uniqueness rule.
pub(crate) fn classify(e: sqlx::Error) -> AppendError {
    if let sqlx::Error::Database(db) = &e {
        if db.code().as_deref() == Some("23505") {
            return match db.constraint() {
                Some("auth_agents_username_key") => AppendError::Taken("username"),
                Some("transcribe_calls_call_direction_key") => {
                    AppendError::Taken("the call's transcription in this direction")
                }
                Some("numbers_pkey") => AppendError::Taken("number"),
                Some("processed_commands_pkey") => AppendError::AlreadyApplied,
                _ => AppendError::Conflict,
            };
        }
    }
    AppendError::Database(e)
}
