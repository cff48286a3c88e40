//! Events of the Call aggregate.

use crate::types::*;
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The current version of `call_created` (see [`crate::upcast`] for the history).
pub const CALL_CREATED_VERSION: &str = "4.0";

/// Everything that happens to a call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CallEvent {
    /// A call was requested; the carrier starts dialing. Version 4.0 (1.0 lacked direction,
    /// variables, dial_timeout_ms and campaign_id; 2.0 lacked activeflow_id and sandbox; 3.0
    /// lacked trunk_id).
    CallCreated {
        /// The call.
        call_id: CallId,
        /// Its owner.
        customer_id: CustomerId,
        /// Outgoing or incoming.
        direction: CallDirection,
        /// Caller id.
        source: E164,
        /// Number dialed.
        destination: E164,
        /// Customer-supplied variables (scalars).
        variables: Map<String, Value>,
        /// How long the carrier may ring before giving up with no_answer.
        dial_timeout_ms: u32,
        /// The campaign that placed it, if any.
        campaign_id: Option<CampaignId>,
        /// The flow that runs on it once answered (or, incoming, once it arrives).
        activeflow_id: Option<ActiveflowId>,
        /// The sandbox far end's script (sandbox carrier only).
        sandbox: Option<crate::flow::SandboxScript>,
        /// The SIP trunk the call goes out through (none: the sandbox carrier).
        trunk_id: Option<TrunkId>,
        /// When.
        at: DateTime<Utc>,
    },
    /// The far end is ringing.
    CallRinging {
        /// When.
        at: DateTime<Utc>,
    },
    /// The far end answered.
    CallProgressing {
        /// When.
        at: DateTime<Utc>,
    },
    /// The call ended; `status` is its final status.
    CallHungup {
        /// Final status.
        status: CallStatus,
        /// Who hung up.
        hangup_by: HangupBy,
        /// Why.
        hangup_cause: HangupCause,
        /// Whole seconds from answer to hangup (0 if never answered).
        duration: u64,
        /// When.
        at: DateTime<Utc>,
    },
}

events!(CallEvent in "call" {
    CallCreated => CALL_CREATED = "call_created",
    CallRinging => CALL_RINGING = "call_ringing",
    CallProgressing => CALL_PROGRESSING = "call_progressing",
    CallHungup => CALL_HUNGUP = "call_hungup",
});

impl DomainEvent for CallEvent {
    fn event_type(&self) -> String {
        self.name().to_string()
    }
    fn event_version(&self) -> String {
        match self {
            Self::CallCreated { .. } => CALL_CREATED_VERSION.to_string(),
            _ => "1.0".to_string(),
        }
    }
}
