//! vbin's write side: the Postgres event store (cqrs-es over sqlx 0.9), the command executor,
//! the outbox relay to JetStream, authentication, and the command REST API.

pub mod api;
pub mod auth;
pub mod executor;
pub mod housekeeping;
mod inline;
pub mod log;
pub mod meta;
pub mod relay;
pub mod store;
pub mod transcription;

pub use executor::{ExecError, Executed, Executor, StoredAggregate};
pub use meta::{Actor, CommandMeta};
pub use store::PgEventRepository;
