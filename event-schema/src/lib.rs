//! vbin's event schema: the value types events carry, every domain event (versioned), the
//! envelope published on NATS, subjects, and the upcasters that lift old event versions.
//!
//! This crate is pure data: no I/O. The event log stores `payload` exactly as these types
//! serialize; an event is never edited, so a change of shape means a new version plus an
//! upcaster in [`upcast`].
//!
//! Event names and aggregate types are written here only: every event enum has an associated
//! constant per event (`CallEvent::CALL_HUNGUP`), its aggregate type (`CallEvent::AGGREGATE`,
//! which the domain's `Aggregate::TYPE` is), and `name()` maps each variant to its constant.
//! Consumers decode an envelope with [`PublishedEvent::decode`] and match on variants.

/// Declares the wire names of an event enum: one associated constant per event, the aggregate
/// type, `NAMES`, `name()` (an exhaustive match on those constants) and [`AggregateEvent`].
macro_rules! events {
    ($t:ident in $agg:literal { $($v:ident => $c:ident = $n:literal),* $(,)? }) => {
        impl $t {
            /// The aggregate type these events belong to (subjects, the log's `aggregate_type`,
            /// the domain's `Aggregate::TYPE`).
            pub const AGGREGATE: &'static str = $agg;
            $(
                #[doc = concat!("Wire name of [`", stringify!($t), "::", stringify!($v), "`].")]
                pub const $c: &'static str = $n;
            )*
            /// Every event's wire name.
            pub const NAMES: &'static [&'static str] = &[$(Self::$c),*];

            /// The event's wire name (`event_type` column, NATS subject, webhook `type`).
            pub fn name(&self) -> &'static str {
                match self {
                    $(Self::$v { .. } => Self::$c,)*
                }
            }
        }
        impl $crate::AggregateEvent for $t {
            const AGGREGATE: &'static str = $t::AGGREGATE;
            const NAMES: &'static [&'static str] = $t::NAMES;
            fn name(&self) -> &'static str {
                $t::name(self)
            }
        }
    };
}

/// Implements `DomainEvent` for an event enum whose events are all at version 1.0.
macro_rules! version_1 {
    ($t:ident) => {
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

/// The events of one aggregate type: what [`PublishedEvent::decode`] decodes to and what a
/// consumer of that aggregate's subjects is built from.
pub trait AggregateEvent: serde::de::DeserializeOwned {
    /// The aggregate type (`call`).
    const AGGREGATE: &'static str;
    /// Every event's wire name.
    const NAMES: &'static [&'static str];
    /// This event's wire name.
    fn name(&self) -> &'static str;
}

pub mod ai;
pub mod billing;
pub mod call;
pub mod campaign;
pub mod conference;
pub mod customer;
pub mod envelope;
pub mod flow;
pub mod number;
pub mod queue;
pub mod recording;
pub mod transcribe;
pub mod trunk;
pub mod types;
pub mod upcast;
pub mod views;

pub use ai::*;
pub use billing::BillingEvent;
pub use call::CallEvent;
pub use campaign::*;
pub use conference::*;
pub use customer::CustomerEvent;
pub use envelope::{
    raw, relative_subject_filter, relative_subject_for, DecodeError, Installation, Namespace,
    NamespaceError, PublishedEvent, INSTALLATION_HEADER,
};
pub use flow::{ActiveflowEvent, FlowEvent};
pub use number::NumberEvent;
pub use queue::*;
pub use recording::*;
pub use transcribe::*;
pub use trunk::*;
pub use types::*;
