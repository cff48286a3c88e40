//! Events of the Call aggregate.

use crate::types::*;
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The current version of `call_created` (see [`crate::upcast`] for the history).
pub const CALL_CREATED_VERSION: &str = "5.0";

/// Everything that happens to a call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CallEvent {
    /// A call was requested; the carrier starts dialing. Version 5.0 (1.0 lacked direction,
    /// variables, dial_timeout_ms and campaign_id; 2.0 lacked activeflow_id and sandbox; 3.0
    /// lacked trunk_id; 4.0 lacked master_call_id).
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
        /// The call this one was dialed for (a `connect` leg): it is bridged to that call, and
        /// each is hung up when the other is.
        master_call_id: Option<CallId>,
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
    /// The call dials other calls (legs) to bridge one of them to itself: the first leg to
    /// answer wins, the others are canceled.
    CallChained {
        /// The legs dialed.
        legs: Vec<CallId>,
        /// The flow action waiting for the chain to end, if a flow asked for it.
        execution: Option<ChainExecution>,
        /// What it is for.
        #[serde(default)]
        purpose: ChainPurpose,
        /// When.
        at: DateTime<Utc>,
    },
    /// A leg answered first: its audio and this call's are bridged.
    CallBridged {
        /// The leg.
        peer_call_id: CallId,
        /// When.
        at: DateTime<Utc>,
    },
    /// A leg of the running chain ended.
    CallLegEnded {
        /// The leg.
        leg_call_id: CallId,
        /// Its final status.
        status: CallStatus,
        /// When.
        at: DateTime<Utc>,
    },
    /// The chain is over: the bridged leg hung up, or no leg answered.
    CallChainEnded {
        /// How it went.
        result: ChainResult,
        /// The leg that was bridged, if one was.
        bridged_call_id: Option<CallId>,
        /// When.
        at: DateTime<Utc>,
    },
}

/// What a chain is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChainPurpose {
    /// A flow's `connect`.
    #[default]
    Connect,
    /// A queue handed the call to an agent: the legs are the agent's addresses.
    Queue {
        /// The queue.
        queue_id: QueueId,
        /// The agent.
        agent_id: AgentId,
    },
}

/// The flow action a chain reports its end to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainExecution {
    /// The activeflow.
    pub activeflow_id: ActiveflowId,
    /// The execution's `seq`.
    pub seq: u64,
}

/// The flow variable holding how a `connect` ended ([`ChainResult::as_str`]).
pub const CONNECT_RESULT_VARIABLE: &str = "voipbin.connect.result";
/// The flow variable holding the leg a `connect` bridged.
pub const CONNECT_CALL_ID_VARIABLE: &str = "voipbin.connect.call_id";

/// How a chain (a `connect`) ended: `voipbin.connect.result`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainResult {
    /// We canceled every leg (the call hung up first).
    Canceled,
    /// Every leg failed.
    Failed,
    /// Every leg was busy or failed.
    Busy,
    /// No leg answered in time.
    NoAnswer,
    /// A leg answered and was bridged, until one side hung up.
    Answered,
}

impl ChainResult {
    /// The result a leg's final status stands for, if it ended unanswered.
    pub fn of_unanswered(status: CallStatus) -> ChainResult {
        match status {
            CallStatus::Busy => ChainResult::Busy,
            CallStatus::NoAnswer => ChainResult::NoAnswer,
            CallStatus::Canceled => ChainResult::Canceled,
            _ => ChainResult::Failed,
        }
    }

    /// As a flow variable.
    pub fn as_str(self) -> &'static str {
        match self {
            ChainResult::Canceled => "canceled",
            ChainResult::Failed => "failed",
            ChainResult::Busy => "busy",
            ChainResult::NoAnswer => "no_answer",
            ChainResult::Answered => "answered",
        }
    }
}

events!(CallEvent in "call" {
    CallCreated => CALL_CREATED = "call_created",
    CallRinging => CALL_RINGING = "call_ringing",
    CallProgressing => CALL_PROGRESSING = "call_progressing",
    CallHungup => CALL_HUNGUP = "call_hungup",
    CallChained => CALL_CHAINED = "call_chained",
    CallBridged => CALL_BRIDGED = "call_bridged",
    CallLegEnded => CALL_LEG_ENDED = "call_leg_ended",
    CallChainEnded => CALL_CHAIN_ENDED = "call_chain_ended",
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
