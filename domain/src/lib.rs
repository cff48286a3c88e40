//! vbin's aggregates. Pure: no I/O, no clock, no randomness — commands carry timestamps,
//! generated ids, hashes and secrets, so that `handle` is a deterministic decision.

pub mod billing;
pub mod call;
pub mod campaign;
pub mod customer;
mod error;

pub use billing::{BillingAccount, BillingCommand};
pub use call::{Call, CallCommand, HangupRequest, NewCall};
pub use campaign::{
    Campaign, CampaignCommand, NewCampaign, NewOutplan, Outdial, OutdialCommand, Outplan,
    OutplanCommand, Target, TargetCommand,
};
pub use customer::{Customer, CustomerCommand, NewAgent};
pub use error::DomainError;

/// The API view of the resource an event touched, right after the event (`{id, type, ...}`).
/// Stored beside each event and published with it, so webhooks and WebSocket pushes carry
/// exactly the state the event produced.
pub trait ResourceView: cqrs_es::Aggregate {
    /// The view of what `event` (already applied to `self`) changed.
    fn resource_after(&self, event: &Self::Event) -> serde_json::Value;
}
