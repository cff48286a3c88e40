//! vbin's event schema: the value types events carry, every domain event (versioned), the
//! envelope published on NATS, subjects, and the upcasters that lift old event versions.
//!
//! This crate is pure data: no I/O. The event log stores `payload` exactly as these types
//! serialize; an event is never edited, so a change of shape means a new version plus an
//! upcaster in [`upcast`].

/// Implements `name()` and `DomainEvent` (all these events are at version 1.0).
macro_rules! event_names {
    ($t:ident { $($v:ident => $n:literal),* $(,)? }) => {
        impl $t {
            /// The event's wire name.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Self::$v { .. } => $n,)*
                }
            }
        }
        impl DomainEvent for $t {
            fn event_type(&self) -> String {
                self.name().to_string()
            }
            fn event_version(&self) -> String {
                "1.0".to_string()
            }
        }
    };
}

pub mod billing;
pub mod call;
pub mod campaign;
pub mod customer;
pub mod envelope;
pub mod queue;
pub mod transcribe;
pub mod types;
pub mod upcast;

pub use billing::BillingEvent;
pub use call::CallEvent;
pub use campaign::*;
pub use customer::CustomerEvent;
pub use envelope::{subject_for, PublishedEvent, STREAM_NAME, SUBJECT_PREFIX};
pub use queue::*;
pub use transcribe::*;
pub use types::*;
