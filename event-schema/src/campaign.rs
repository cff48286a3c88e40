//! Events of the outbound-campaign aggregates: Outplan (dial policy), Outdial (a target list),
//! OutdialTarget (one party to reach and its dial state) and Campaign (the state machine, its
//! counters and its calls in flight).

use crate::types::*;
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// A campaign's status. `pending -> running -> stopping -> stopped`, `running -> completed`,
/// and a stopped campaign may run again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CampaignStatus {
    /// Created, not started.
    #[default]
    Pending,
    /// Dialing.
    Running,
    /// Asked to stop; waiting for its calls in flight to end.
    Stopping,
    /// Stopped (may be started again).
    Stopped,
    /// Every target is done (end_handle `stop`). Final.
    Completed,
}

impl CampaignStatus {
    /// Whether the machine may move from `self` to `to`.
    pub fn can_transition_to(self, to: CampaignStatus) -> bool {
        use CampaignStatus::*;
        matches!(
            (self, to),
            (Pending | Stopped, Running)
                | (Running, Stopping | Stopped | Completed)
                | (Stopping, Stopped)
                | (Pending, Stopped)
        )
    }

    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Completed => "completed",
        }
    }
}

/// What a campaign does when no target is left.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndHandle {
    /// Complete (and start `next_campaign_id`, if any).
    #[default]
    Stop,
    /// Keep running and dial targets added later.
    Continue,
}

/// A target's dial state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetStatus {
    /// Waiting to be dialed (first time or again).
    #[default]
    Pending,
    /// A call to it is in progress.
    Dialing,
    /// Reached, or out of tries. Final.
    Completed,
}

/// The outcome of a call to a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetResult {
    /// Answered.
    Answered,
    /// Busy.
    Busy,
    /// Nobody answered in time.
    NoAnswer,
    /// Could not be placed (or was canceled).
    Failed,
}

impl TargetResult {
    /// The result of a call that ended with `status` (None while it has not ended).
    pub fn of_call(status: CallStatus) -> Option<Self> {
        match status {
            CallStatus::Completed => Some(Self::Answered),
            CallStatus::Busy => Some(Self::Busy),
            CallStatus::NoAnswer => Some(Self::NoAnswer),
            CallStatus::Failed | CallStatus::Canceled => Some(Self::Failed),
            _ => None,
        }
    }
}

/// Events of an outplan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutplanEvent {
    /// An outplan was created.
    OutplanCreated {
        /// It.
        outplan_id: OutplanId,
        /// Owner.
        customer_id: CustomerId,
        /// Label.
        name: String,
        /// Caller id of the campaign's calls.
        source: E164,
        /// Ring timeout of each call.
        dial_timeout_ms: u32,
        /// Least time between two tries of one target.
        try_interval_ms: u32,
        /// Tries per destination of a target.
        max_try_count: u32,
        /// The SIP trunk the campaign's calls go through (none: the sandbox). Since 2.0.
        trunk_id: Option<TrunkId>,
        /// When.
        at: DateTime<Utc>,
    },
}
events!(OutplanEvent in "outplan" {
    OutplanCreated => OUTPLAN_CREATED = "outplan_created",
});
/// The current version of `outplan_created` (see [`crate::upcast`]).
pub const OUTPLAN_CREATED_VERSION: &str = "2.0";

impl DomainEvent for OutplanEvent {
    fn event_type(&self) -> String {
        self.name().to_string()
    }
    fn event_version(&self) -> String {
        OUTPLAN_CREATED_VERSION.to_string()
    }
}

/// Events of an outdial.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutdialEvent {
    /// An outdial was created.
    OutdialCreated {
        /// It.
        outdial_id: OutdialId,
        /// Owner.
        customer_id: CustomerId,
        /// Label.
        name: String,
        /// When.
        at: DateTime<Utc>,
    },
}
events!(OutdialEvent in "outdial" {
    OutdialCreated => OUTDIAL_CREATED = "outdial_created",
});
version_1!(OutdialEvent);

/// Events of one outdial target (aggregate type `outdialtarget`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TargetEvent {
    /// A target was added to an outdial.
    OutdialtargetCreated {
        /// It.
        target_id: TargetId,
        /// Its list.
        outdial_id: OutdialId,
        /// Owner.
        customer_id: CustomerId,
        /// Numbers to try, in order (1 to 5).
        destinations: Vec<E164>,
        /// Variables given to its calls.
        variables: Map<String, Value>,
        /// The sandbox far end's script for its calls (since 2.0).
        sandbox: Option<crate::flow::SandboxScript>,
        /// When.
        at: DateTime<Utc>,
    },
    /// A campaign is calling it.
    OutdialtargetDialing {
        /// The campaign.
        campaign_id: CampaignId,
        /// The campaign call record.
        campaigncall_id: Uuid,
        /// The call placed.
        call_id: CallId,
        /// Which destination.
        destination_index: usize,
        /// Tries of that destination, this one included.
        try_count: u32,
        /// When.
        at: DateTime<Utc>,
    },
    /// The call ended; the target is pending again (tries left) or completed.
    OutdialtargetUpdated {
        /// The call that ended.
        call_id: CallId,
        /// How it went.
        result: TargetResult,
        /// The target's status now.
        status: TargetStatus,
        /// When.
        at: DateTime<Utc>,
    },
}
events!(TargetEvent in "outdialtarget" {
    OutdialtargetCreated => OUTDIALTARGET_CREATED = "outdialtarget_created",
    OutdialtargetDialing => OUTDIALTARGET_DIALING = "outdialtarget_dialing",
    OutdialtargetUpdated => OUTDIALTARGET_UPDATED = "outdialtarget_updated",
});
/// The current version of `outdialtarget_created` (see [`crate::upcast`] for the history).
pub const OUTDIALTARGET_CREATED_VERSION: &str = "2.0";

impl DomainEvent for TargetEvent {
    fn event_type(&self) -> String {
        self.name().to_string()
    }
    fn event_version(&self) -> String {
        match self {
            Self::OutdialtargetCreated { .. } => OUTDIALTARGET_CREATED_VERSION.to_string(),
            _ => "1.0".to_string(),
        }
    }
}

/// One call a campaign placed, as the campaigncall events carry it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CampaignCallRecord {
    /// The campaign call's id.
    pub campaigncall_id: Uuid,
    /// The call.
    pub call_id: CallId,
    /// The target.
    pub target_id: TargetId,
    /// Number dialed.
    pub destination: E164,
    /// Which of the target's destinations.
    pub destination_index: usize,
    /// Tries of that destination, this one included.
    pub try_count: u32,
    /// When it was placed.
    pub tm_create: DateTime<Utc>,
}

/// A campaign's counters (carried, as they are after the event, by the campaign call events
/// so that the campaign's read model can be patched from them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignCounters {
    /// Calls placed.
    pub dialed: u64,
    /// Targets answered.
    pub answered: u64,
    /// Targets that ran out of tries.
    pub failed: u64,
    /// Calls in flight.
    pub in_flight: u64,
}

/// Events of a campaign.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CampaignEvent {
    /// A campaign was created (status pending).
    CampaignCreated {
        /// It.
        campaign_id: CampaignId,
        /// Owner.
        customer_id: CustomerId,
        /// Label.
        name: String,
        /// Dial policy.
        outplan_id: OutplanId,
        /// Targets.
        outdial_id: OutdialId,
        /// What to do when no target is left.
        end_handle: EndHandle,
        /// With a queue: percent of its available agents to keep calls for.
        service_level: u32,
        /// Queue that answered calls join.
        queue_id: Option<QueueId>,
        /// Campaign to start when this one completes.
        next_campaign_id: Option<CampaignId>,
        /// Most calls in flight at once (without a queue).
        max_concurrent_calls: u32,
        /// Flow that answered calls run (since 2.0).
        flow_id: Option<FlowId>,
        /// When.
        at: DateTime<Utc>,
    },
    /// The status changed.
    CampaignStatusChanged {
        /// New status.
        status: CampaignStatus,
        /// When.
        at: DateTime<Utc>,
    },
    /// The dialer counted the outdial's targets.
    CampaignTargetsCounted {
        /// Targets in the outdial.
        total_targets: u64,
        /// When.
        at: DateTime<Utc>,
    },
    /// The campaign placed a call.
    CampaigncallCreated {
        /// The call.
        call: CampaignCallRecord,
        /// The campaign's counters afterwards.
        counters: CampaignCounters,
    },
    /// A campaign call ended.
    CampaigncallUpdated {
        /// The call.
        call: CampaignCallRecord,
        /// How it went.
        result: TargetResult,
        /// Whether its target is done (answered or out of tries).
        target_done: bool,
        /// The campaign's counters afterwards.
        counters: CampaignCounters,
        /// When.
        at: DateTime<Utc>,
    },
}
events!(CampaignEvent in "campaign" {
    CampaignCreated => CAMPAIGN_CREATED = "campaign_created",
    CampaignStatusChanged => CAMPAIGN_STATUS_CHANGED = "campaign_status_changed",
    CampaignTargetsCounted => CAMPAIGN_TARGETS_COUNTED = "campaign_targets_counted",
    CampaigncallCreated => CAMPAIGNCALL_CREATED = "campaigncall_created",
    CampaigncallUpdated => CAMPAIGNCALL_UPDATED = "campaigncall_updated",
});
/// The current version of `campaign_created` (see [`crate::upcast`] for the history).
pub const CAMPAIGN_CREATED_VERSION: &str = "2.0";

impl DomainEvent for CampaignEvent {
    fn event_type(&self) -> String {
        self.name().to_string()
    }
    fn event_version(&self) -> String {
        match self {
            Self::CampaignCreated { .. } => CAMPAIGN_CREATED_VERSION.to_string(),
            _ => "1.0".to_string(),
        }
    }
}
