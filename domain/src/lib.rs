//! vbin's aggregates. Pure: no I/O, no clock, no randomness — commands carry timestamps,
//! generated ids, hashes and secrets, so that `handle` is a deterministic decision.

/// Implements `Aggregate` for a type with `fn decide(&self, Command) -> Result<Vec<Event>>`.
/// Its `TYPE` is its event enum's `AGGREGATE` (the one place aggregate types are written).
macro_rules! decided_aggregate {
    ($agg:ty, $cmd:ty, $event:ty) => {
        impl cqrs_es::Aggregate for $agg {
            const TYPE: &'static str = <$event>::AGGREGATE;
            type Command = $cmd;
            type Event = $event;
            type Error = DomainError;
            type Services = ();

            async fn handle(
                &mut self,
                command: Self::Command,
                _: &(),
                sink: &cqrs_es::event_sink::EventSink<Self>,
            ) -> Result<(), Self::Error> {
                for event in self.decide(command)? {
                    sink.write(event, self).await;
                }
                Ok(())
            }

            fn apply(&mut self, event: Self::Event) {
                self.fold(event)
            }
        }
    };
}

pub mod activeflow;
pub mod ai;
pub mod billing;
pub mod call;
pub mod campaign;
pub mod conference;
pub mod customer;
mod error;
pub mod flow;
pub mod number;
pub mod queue;
pub mod recording;
#[cfg(test)]
mod testing;
pub mod transcribe;
pub mod trunk;

pub use activeflow::{Activeflow, ActiveflowCommand, NewActiveflow};
pub use ai::{Ai, AiCommand, Aicall, AicallCommand, AicallStatus, NewAicall, NewAimessage};
pub use billing::{BillingAccount, BillingCommand};
pub use call::{Call, CallCommand, HangupRequest, NewCall};
pub use campaign::{
    Campaign, CampaignCommand, NewCampaign, NewOutplan, Outdial, OutdialCommand, Outplan,
    OutplanCommand, Target, TargetCommand,
};
pub use conference::{Conference, ConferenceCommand, ConferenceStatus};
pub use customer::{Customer, CustomerCommand, NewAgent};
pub use error::DomainError;
pub use flow::{Flow, FlowCommand};
pub use number::{Number, NumberCommand};
pub use queue::{NewQueue, Queue, QueueCommand};
pub use recording::{Recording, RecordingCommand};
pub use transcribe::{NewTranscribe, Transcribe, TranscribeCommand};
pub use trunk::{Trunk, TrunkCommand};

/// The API view of the resource an event touched, right after the event (`{id, type, ...}`).
/// Stored beside each event and published with it, so webhooks and WebSocket pushes carry
/// exactly the state the event produced.
pub trait ResourceView: cqrs_es::Aggregate {
    /// The view of what `event` (already applied to `self`) changed.
    fn resource_after(&self, event: &Self::Event) -> serde_json::Value;
}
