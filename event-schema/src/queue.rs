//! Events of the Queue aggregate: a queue of answered calls waiting for one of its agents.
//! Queue call events carry the queue call as it is after the event (it leaves the aggregate
//! when it ends) and the queue's statistics, so both read models can be built from them.

use crate::types::*;
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How a queue picks among its available agents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutingMethod {
    /// Every available agent is offered the call; the one idle longest takes it.
    #[default]
    Ringall,
    /// Agents are tried in the queue's order; the first available takes it.
    Linear,
}

/// Why a waiting call left the queue without an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbandonReason {
    /// The call ended while waiting.
    Hangup,
    /// It waited the queue's `wait_timeout_ms` (and was hung up).
    Timeout,
}

/// A queue's statistics after an event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Calls waiting now.
    pub waiting: u64,
    /// Calls with an agent now.
    pub serving: u64,
    /// Calls that got an agent (ever).
    pub served: u64,
    /// Calls that left without one (ever).
    pub abandoned: u64,
    /// Sum of the waits of served calls.
    pub total_wait_ms: u64,
    /// Mean wait of served calls (join to agent assignment); 0 before the first.
    pub average_wait_ms: u64,
    /// Agents that were handed a call and did not answer it (ever). Added without a version
    /// bump: older events lack it (none).
    #[serde(default)]
    pub agent_no_answer: u64,
}

/// A call in a queue, as it is after the event that carries it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Queuecall {
    /// The queue call's id.
    pub queuecall_id: Uuid,
    /// The call.
    pub call_id: CallId,
    /// When it joined.
    pub tm_join: DateTime<Utc>,
    /// Its agent, once served.
    pub agent_id: Option<AgentId>,
    /// When it was served.
    pub tm_service: Option<DateTime<Utc>>,
    /// How long it waited (once served or abandoned).
    pub wait_ms: Option<u64>,
    /// Agents it was handed to that did not answer (not handed it again until every agent
    /// of the queue has been tried). Added without a version bump: older events lack it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tried: Vec<AgentId>,
}

/// Events of a queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum QueueEvent {
    /// A queue was created.
    QueueCreated {
        /// It.
        queue_id: QueueId,
        /// Owner.
        customer_id: CustomerId,
        /// Label.
        name: String,
        /// How agents are picked.
        routing_method: RoutingMethod,
        /// Its agents, in order (the order matters for `linear`).
        agent_ids: Vec<AgentId>,
        /// Longest a call waits before it is hung up.
        wait_timeout_ms: u32,
        /// The flow whose talk, play, beep and sleep waiting calls hear, over and over. Added
        /// without a version bump: older events lack it (none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wait_flow_id: Option<FlowId>,
        /// When.
        at: DateTime<Utc>,
    },
    /// Its settings changed.
    QueueUpdated {
        /// Label.
        name: String,
        /// How agents are picked.
        routing_method: RoutingMethod,
        /// Its agents, in order.
        agent_ids: Vec<AgentId>,
        /// Longest wait.
        wait_timeout_ms: u32,
        /// What waiting calls hear (see `queue_created`). Added without a version bump.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wait_flow_id: Option<FlowId>,
        /// When.
        at: DateTime<Utc>,
    },
    /// A call joined (status waiting).
    QueuecallJoined {
        /// The call.
        call: Queuecall,
        /// Statistics afterwards.
        stats: QueueStats,
    },
    /// An agent was assigned (status service).
    QueuecallServed {
        /// The call.
        call: Queuecall,
        /// Statistics afterwards.
        stats: QueueStats,
    },
    /// The agent a call was handed to did not answer: the call waits again, keeping its place
    /// (status waiting).
    QueuecallRequeued {
        /// The call, as it waits again.
        call: Queuecall,
        /// The agent that did not answer.
        agent_id: AgentId,
        /// Statistics afterwards.
        stats: QueueStats,
        /// When.
        at: DateTime<Utc>,
    },
    /// A waiting call left without an agent (status abandoned).
    QueuecallAbandoned {
        /// The call.
        call: Queuecall,
        /// Why.
        reason: AbandonReason,
        /// Statistics afterwards.
        stats: QueueStats,
        /// When.
        at: DateTime<Utc>,
    },
    /// A served call ended (status done).
    QueuecallDone {
        /// The call.
        call: Queuecall,
        /// Statistics afterwards.
        stats: QueueStats,
        /// When.
        at: DateTime<Utc>,
    },
}
events!(QueueEvent in "queue" {
    QueueCreated => QUEUE_CREATED = "queue_created",
    QueueUpdated => QUEUE_UPDATED = "queue_updated",
    QueuecallJoined => QUEUECALL_JOINED = "queuecall_joined",
    QueuecallServed => QUEUECALL_SERVED = "queuecall_served",
    QueuecallRequeued => QUEUECALL_REQUEUED = "queuecall_requeued",
    QueuecallAbandoned => QUEUECALL_ABANDONED = "queuecall_abandoned",
    QueuecallDone => QUEUECALL_DONE = "queuecall_done",
});
version_1!(QueueEvent);
