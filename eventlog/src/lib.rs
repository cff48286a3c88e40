//! vbin's event log: the Postgres event store (cqrs-es's repository over sqlx), the inline
//! lookup tables written in the same transaction as the events, the in-order log reader, the
//! outbox relay to JetStream, and the metadata every command carries.
//!
//! The only crate that writes the `events` table.

pub mod event;
mod group;
mod inline;
pub mod installation;
pub mod log;
pub mod meta;
mod outcome;
pub mod reexec;
pub mod relay;
pub mod store;

pub use event::NewEvent;
pub use meta::{Actor, CommandMeta};
pub use store::{AppendError, PgEventRepository, Recorded};
