//! Outbound campaigns: Outplan (dial policy), Outdial (a target list), OutdialTarget (one
//! party to reach and its tries) and Campaign (status machine, counters, calls in flight).
//!
//! The dialer and the campaign process managers drive these by commands; each aggregate
//! guards its own rules, so a repeated or stale command (redelivery, restart, two dialers)
//! changes nothing: a target is dialed only when pending and due, a call is counted once, a
//! result is recorded once.

use crate::{DomainError, ResourceView};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use uuid::Uuid;
use vbin_event_schema::*;

/// Most destinations per target.
pub const MAX_TARGET_DESTINATIONS: usize = 5;

// ---------------------------------------------------------------------------------------------
// Outplan

/// A new outplan, validated by the API.
#[derive(Clone, Debug, PartialEq)]
pub struct NewOutplan {
    /// Id.
    pub outplan_id: OutplanId,
    /// Owner.
    pub customer_id: CustomerId,
    /// Label.
    pub name: String,
    /// Caller id.
    pub source: E164,
    /// Ring timeout.
    pub dial_timeout_ms: u32,
    /// Least time between tries of a target.
    pub try_interval_ms: u32,
    /// Tries per destination.
    pub max_try_count: u32,
    /// The SIP trunk of its calls (checked to be the customer's); none: the sandbox.
    pub trunk_id: Option<TrunkId>,
}

/// Outplan commands.
#[derive(Clone, Debug, PartialEq)]
pub enum OutplanCommand {
    /// Create it.
    Create {
        /// What.
        plan: NewOutplan,
        /// When.
        at: DateTime<Utc>,
    },
}

/// A dial policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Outplan {
    /// None until created.
    pub id: Option<OutplanId>,
    /// Owner.
    pub customer_id: CustomerId,
    /// Label.
    pub name: String,
    /// Caller id.
    pub source: Option<E164>,
    /// Ring timeout.
    pub dial_timeout_ms: u32,
    /// Least time between tries of a target.
    pub try_interval_ms: u32,
    /// Tries per destination.
    pub max_try_count: u32,
    /// The SIP trunk of its calls.
    #[serde(default)]
    pub trunk_id: Option<TrunkId>,
    /// Created.
    pub tm_create: Option<DateTime<Utc>>,
}

impl Outplan {
    /// API view.
    pub fn view(&self) -> Value {
        json!({
            "id": self.id, "type": "outplan", "customer_id": self.customer_id, "name": self.name,
            "source": self.source, "dial_timeout_ms": self.dial_timeout_ms,
            "try_interval_ms": self.try_interval_ms, "max_try_count": self.max_try_count,
            "trunk_id": self.trunk_id, "tm_create": self.tm_create, "tm_update": self.tm_create,
        })
    }

    fn decide(&self, command: OutplanCommand) -> Result<Vec<OutplanEvent>, DomainError> {
        let OutplanCommand::Create { plan, at } = command;
        if self.id.is_some() {
            return Err(DomainError::AlreadyExists("outplan exists".into()));
        }
        Ok(vec![OutplanEvent::OutplanCreated {
            outplan_id: plan.outplan_id,
            customer_id: plan.customer_id,
            name: plan.name,
            source: plan.source,
            dial_timeout_ms: plan.dial_timeout_ms,
            try_interval_ms: plan.try_interval_ms,
            max_try_count: plan.max_try_count,
            trunk_id: plan.trunk_id,
            at,
        }])
    }

    fn fold(&mut self, event: OutplanEvent) {
        let OutplanEvent::OutplanCreated {
            outplan_id,
            customer_id,
            name,
            source,
            dial_timeout_ms,
            try_interval_ms,
            max_try_count,
            trunk_id,
            at,
        } = event;
        *self = Outplan {
            id: Some(outplan_id),
            customer_id,
            name,
            source: Some(source),
            dial_timeout_ms,
            try_interval_ms,
            max_try_count,
            trunk_id,
            tm_create: Some(at),
        };
    }
}
decided_aggregate!(Outplan, OutplanCommand, OutplanEvent);

impl ResourceView for Outplan {
    fn resource_after(&self, _: &OutplanEvent) -> Value {
        self.view()
    }
}

// ---------------------------------------------------------------------------------------------
// Outdial

/// Outdial commands.
#[derive(Clone, Debug, PartialEq)]
pub enum OutdialCommand {
    /// Create it.
    Create {
        /// Id.
        outdial_id: OutdialId,
        /// Owner.
        customer_id: CustomerId,
        /// Label.
        name: String,
        /// When.
        at: DateTime<Utc>,
    },
}

/// A list of targets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Outdial {
    /// None until created.
    pub id: Option<OutdialId>,
    /// Owner.
    pub customer_id: CustomerId,
    /// Label.
    pub name: String,
    /// Created.
    pub tm_create: Option<DateTime<Utc>>,
}

impl Outdial {
    /// API view.
    pub fn view(&self) -> Value {
        json!({
            "id": self.id, "type": "outdial", "customer_id": self.customer_id, "name": self.name,
            "tm_create": self.tm_create, "tm_update": self.tm_create,
        })
    }

    fn decide(&self, command: OutdialCommand) -> Result<Vec<OutdialEvent>, DomainError> {
        let OutdialCommand::Create {
            outdial_id,
            customer_id,
            name,
            at,
        } = command;
        if self.id.is_some() {
            return Err(DomainError::AlreadyExists("outdial exists".into()));
        }
        Ok(vec![OutdialEvent::OutdialCreated {
            outdial_id,
            customer_id,
            name,
            at,
        }])
    }

    fn fold(&mut self, event: OutdialEvent) {
        let OutdialEvent::OutdialCreated {
            outdial_id,
            customer_id,
            name,
            at,
        } = event;
        *self = Outdial {
            id: Some(outdial_id),
            customer_id,
            name,
            tm_create: Some(at),
        };
    }
}
decided_aggregate!(Outdial, OutdialCommand, OutdialEvent);

impl ResourceView for Outdial {
    fn resource_after(&self, _: &OutdialEvent) -> Value {
        self.view()
    }
}

// ---------------------------------------------------------------------------------------------
// OutdialTarget

/// Target commands.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetCommand {
    /// Add the target to an outdial.
    Create {
        /// Id.
        target_id: TargetId,
        /// Its list.
        outdial_id: OutdialId,
        /// Owner.
        customer_id: CustomerId,
        /// 1 to 5 numbers.
        destinations: Vec<E164>,
        /// Call variables.
        variables: Map<String, Value>,
        /// The sandbox far end's script for its calls.
        sandbox: Option<vbin_event_schema::flow::SandboxScript>,
        /// When.
        at: DateTime<Utc>,
    },
    /// A campaign wants to call it now. Refused (FailedPrecondition) unless it is pending,
    /// due (`try_interval_ms` since its last try) and has a destination with tries left.
    Dial {
        /// The campaign.
        campaign_id: CampaignId,
        /// Id for the campaign call record.
        campaigncall_id: Uuid,
        /// Id for the call.
        call_id: CallId,
        /// Tries per destination (the campaign's outplan).
        max_try_count: u32,
        /// Least time between tries.
        try_interval_ms: u32,
        /// When.
        at: DateTime<Utc>,
    },
    /// The call `call_id` ended with `result`. A no-op unless that call is the target's
    /// current one (repeats and stale results change nothing).
    RecordResult {
        /// The call.
        call_id: CallId,
        /// Its result.
        result: TargetResult,
        /// Tries per destination (decides whether another try follows).
        max_try_count: u32,
        /// When.
        at: DateTime<Utc>,
    },
}

/// One party to reach and its dial state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// None until created.
    pub id: Option<TargetId>,
    /// Owner.
    pub customer_id: CustomerId,
    /// Its list.
    pub outdial_id: OutdialId,
    /// Numbers, in order.
    pub destinations: Vec<E164>,
    /// Call variables.
    pub variables: Map<String, Value>,
    /// The sandbox far end's script for its calls.
    pub sandbox: Option<vbin_event_schema::flow::SandboxScript>,
    /// Dial state.
    pub status: TargetStatus,
    /// Tries per destination.
    pub try_counts: Vec<u32>,
    /// Tries in all.
    pub dial_count: u32,
    /// Start of the latest try.
    pub last_dial_time: Option<DateTime<Utc>>,
    /// Result of the latest finished try.
    pub result: Option<TargetResult>,
    /// The call of the latest try.
    pub call_id: Option<CallId>,
    /// The campaign of the latest try.
    pub campaign_id: Option<CampaignId>,
    /// The campaign call record of the latest try.
    pub campaigncall_id: Option<Uuid>,
    /// Destination index of the latest try.
    pub destination_index: usize,
    /// Created.
    pub tm_create: Option<DateTime<Utc>>,
    /// Last change.
    pub tm_update: Option<DateTime<Utc>>,
}

impl Target {
    /// API view.
    pub fn view(&self) -> Value {
        json!({
            "id": self.id, "type": "outdialtarget", "customer_id": self.customer_id,
            "outdial_id": self.outdial_id, "destinations": self.destinations,
            "variables": self.variables, "sandbox": self.sandbox, "status": self.status,
            "dial_count": self.dial_count,
            "try_counts": self.try_counts, "last_dial_time": self.last_dial_time,
            "result": self.result, "call_id": self.call_id, "campaign_id": self.campaign_id,
            "tm_create": self.tm_create, "tm_update": self.tm_update,
        })
    }

    /// The first destination with tries left.
    pub fn next_destination(&self, max_try_count: u32) -> Option<usize> {
        self.try_counts.iter().position(|n| *n < max_try_count)
    }

    /// Whether the target's latest try was `call_id` and it is now completed.
    pub fn done_with(&self, call_id: CallId) -> bool {
        self.call_id == Some(call_id) && self.status == TargetStatus::Completed
    }

    fn decide(&self, command: TargetCommand) -> Result<Vec<TargetEvent>, DomainError> {
        if let TargetCommand::Create {
            target_id,
            outdial_id,
            customer_id,
            destinations,
            variables,
            sandbox,
            at,
        } = command
        {
            if self.id.is_some() {
                return Err(DomainError::AlreadyExists("target exists".into()));
            }
            if destinations.is_empty() || destinations.len() > MAX_TARGET_DESTINATIONS {
                return Err(DomainError::Invalid(format!(
                    "destinations must hold 1 to {MAX_TARGET_DESTINATIONS} numbers"
                )));
            }
            return Ok(vec![TargetEvent::OutdialtargetCreated {
                target_id,
                outdial_id,
                customer_id,
                destinations,
                variables,
                sandbox,
                at,
            }]);
        }
        if self.id.is_none() {
            return Err(DomainError::NotFound("target"));
        }
        match command {
            TargetCommand::Create { .. } => unreachable!("handled above"),
            TargetCommand::Dial {
                campaign_id,
                campaigncall_id,
                call_id,
                max_try_count,
                try_interval_ms,
                at,
            } => {
                if self.status != TargetStatus::Pending {
                    return Err(DomainError::FailedPrecondition(format!(
                        "target is {:?}",
                        self.status
                    )));
                }
                if let Some(last) = self.last_dial_time {
                    if at < last + Duration::milliseconds(try_interval_ms as i64) {
                        return Err(DomainError::FailedPrecondition("target is not due".into()));
                    }
                }
                let Some(index) = self.next_destination(max_try_count) else {
                    // Out of tries under this plan: settle it instead of leaving it pending.
                    return Ok(vec![TargetEvent::OutdialtargetUpdated {
                        call_id: self.call_id.unwrap_or(call_id),
                        result: self.result.unwrap_or(TargetResult::Failed),
                        status: TargetStatus::Completed,
                        at,
                    }]);
                };
                Ok(vec![TargetEvent::OutdialtargetDialing {
                    campaign_id,
                    campaigncall_id,
                    call_id,
                    destination_index: index,
                    try_count: self.try_counts[index] + 1,
                    at,
                }])
            }
            TargetCommand::RecordResult {
                call_id,
                result,
                max_try_count,
                at,
            } => {
                if self.status != TargetStatus::Dialing || self.call_id != Some(call_id) {
                    return Ok(vec![]);
                }
                let done = result == TargetResult::Answered
                    || self.next_destination(max_try_count).is_none();
                Ok(vec![TargetEvent::OutdialtargetUpdated {
                    call_id,
                    result,
                    status: if done {
                        TargetStatus::Completed
                    } else {
                        TargetStatus::Pending
                    },
                    at,
                }])
            }
        }
    }

    fn fold(&mut self, event: TargetEvent) {
        match event {
            TargetEvent::OutdialtargetCreated {
                target_id,
                outdial_id,
                customer_id,
                destinations,
                variables,
                sandbox,
                at,
            } => {
                *self = Target {
                    id: Some(target_id),
                    customer_id,
                    outdial_id,
                    try_counts: vec![0; destinations.len()],
                    destinations,
                    variables,
                    sandbox,
                    tm_create: Some(at),
                    tm_update: Some(at),
                    ..Target::default()
                }
            }
            TargetEvent::OutdialtargetDialing {
                campaign_id,
                campaigncall_id,
                call_id,
                destination_index,
                try_count,
                at,
            } => {
                self.status = TargetStatus::Dialing;
                if let Some(n) = self.try_counts.get_mut(destination_index) {
                    *n = try_count;
                }
                self.dial_count += 1;
                self.last_dial_time = Some(at);
                self.call_id = Some(call_id);
                self.campaign_id = Some(campaign_id);
                self.campaigncall_id = Some(campaigncall_id);
                self.destination_index = destination_index;
                self.tm_update = Some(at);
            }
            TargetEvent::OutdialtargetUpdated {
                result, status, at, ..
            } => {
                self.result = Some(result);
                self.status = status;
                self.tm_update = Some(at);
            }
        }
    }
}
decided_aggregate!(Target, TargetCommand, TargetEvent);

impl ResourceView for Target {
    fn resource_after(&self, _: &TargetEvent) -> Value {
        self.view()
    }
}

// ---------------------------------------------------------------------------------------------
// Campaign

/// A new campaign, validated by the API.
#[derive(Clone, Debug, PartialEq)]
pub struct NewCampaign {
    /// Id.
    pub campaign_id: CampaignId,
    /// Owner.
    pub customer_id: CustomerId,
    /// Label.
    pub name: String,
    /// Dial policy.
    pub outplan_id: OutplanId,
    /// Targets.
    pub outdial_id: OutdialId,
    /// What to do when no target is left.
    pub end_handle: EndHandle,
    /// Percent of a queue's available agents to keep calls for.
    pub service_level: u32,
    /// Queue for answered calls.
    pub queue_id: Option<QueueId>,
    /// Campaign to start on completion.
    pub next_campaign_id: Option<CampaignId>,
    /// Most calls in flight (without a queue).
    pub max_concurrent_calls: u32,
    /// Flow that answered calls run.
    pub flow_id: Option<FlowId>,
}

/// Campaign commands.
#[derive(Clone, Debug, PartialEq)]
pub enum CampaignCommand {
    /// Create it (pending).
    Create {
        /// What.
        campaign: NewCampaign,
        /// When.
        at: DateTime<Utc>,
    },
    /// An API client asks for `running` or `stopped`. Stopping with calls in flight goes
    /// through `stopping`; repeating the current request is a no-op.
    Request {
        /// `Running` or `Stopped`.
        status: CampaignStatus,
        /// When.
        at: DateTime<Utc>,
    },
    /// The dialer found no target left: running -> completed (no-op with calls in flight or
    /// when not running).
    Complete {
        /// When.
        at: DateTime<Utc>,
    },
    /// The dialer counted the outdial's targets (no-op when unchanged).
    CountTargets {
        /// How many.
        total_targets: u64,
        /// When.
        at: DateTime<Utc>,
    },
    /// The dialer placed a call (no-op if already recorded).
    RecordCall {
        /// The call.
        call: CampaignCallRecord,
    },
    /// A call ended (no-op unless it is in flight).
    RecordResult {
        /// The call.
        call_id: CallId,
        /// How it went.
        result: TargetResult,
        /// Whether the target is done.
        target_done: bool,
        /// When.
        at: DateTime<Utc>,
    },
    /// Several [`CampaignCommand::RecordCall`]s in one command (one append for a dialer's
    /// round): the same events as one by one, in order.
    RecordCalls {
        /// The calls.
        calls: Vec<CampaignCallRecord>,
    },
    /// Several [`CampaignCommand::RecordResult`]s in one command (the results that waited for
    /// the campaign while it was busy): the same events as one by one, in order.
    RecordResults {
        /// `RecordResult` commands only.
        results: Vec<CampaignCommand>,
    },
}

/// A campaign's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Campaign {
    /// None until created.
    pub id: Option<CampaignId>,
    /// Owner.
    pub customer_id: CustomerId,
    /// Label.
    pub name: String,
    /// Status.
    pub status: CampaignStatus,
    /// Dial policy.
    pub outplan_id: OutplanId,
    /// Targets.
    pub outdial_id: OutdialId,
    /// End behaviour.
    pub end_handle: EndHandle,
    /// Queue pacing percentage.
    pub service_level: u32,
    /// Queue for answered calls.
    pub queue_id: Option<QueueId>,
    /// Next campaign.
    pub next_campaign_id: Option<CampaignId>,
    /// Most calls in flight (without a queue).
    pub max_concurrent_calls: u32,
    /// Flow that answered calls run.
    pub flow_id: Option<FlowId>,
    /// Targets in the outdial when last counted.
    pub total_targets: u64,
    /// Counters.
    pub counters: CampaignCounters,
    /// Calls in flight by call id (bounded by the pacing).
    pub in_flight: BTreeMap<CallId, CampaignCallRecord>,
    /// Created.
    pub tm_create: Option<DateTime<Utc>>,
    /// Last change.
    pub tm_update: Option<DateTime<Utc>>,
}

impl Campaign {
    /// API view.
    pub fn view(&self) -> Value {
        json!({
            "id": self.id, "type": "campaign", "customer_id": self.customer_id,
            "name": self.name, "status": self.status, "outplan_id": self.outplan_id,
            "outdial_id": self.outdial_id, "end_handle": self.end_handle,
            "service_level": self.service_level, "queue_id": self.queue_id,
            "next_campaign_id": self.next_campaign_id,
            "max_concurrent_calls": self.max_concurrent_calls, "flow_id": self.flow_id,
            "total_targets": self.total_targets, "dialed": self.counters.dialed,
            "answered": self.counters.answered, "failed": self.counters.failed,
            "in_flight": self.counters.in_flight,
            "tm_create": self.tm_create, "tm_update": self.tm_update,
        })
    }

    fn status_event(&self, status: CampaignStatus, at: DateTime<Utc>) -> Vec<CampaignEvent> {
        if self.status == status || !self.status.can_transition_to(status) {
            return vec![];
        }
        vec![CampaignEvent::CampaignStatusChanged { status, at }]
    }

    /// The events of `commands` decided one after the other, each on the state the previous
    /// ones left.
    fn decide_each(
        &self,
        commands: impl Iterator<Item = CampaignCommand>,
    ) -> Result<Vec<CampaignEvent>, DomainError> {
        let mut state = self.clone();
        let mut events = Vec::new();
        for command in commands {
            for e in state.decide(command)? {
                state.fold(e.clone());
                events.push(e);
            }
        }
        Ok(events)
    }

    fn decide(&self, command: CampaignCommand) -> Result<Vec<CampaignEvent>, DomainError> {
        use CampaignStatus::*;
        if let CampaignCommand::Create { campaign: c, at } = command {
            if self.id.is_some() {
                return Err(DomainError::AlreadyExists("campaign exists".into()));
            }
            return Ok(vec![CampaignEvent::CampaignCreated {
                campaign_id: c.campaign_id,
                customer_id: c.customer_id,
                name: c.name,
                outplan_id: c.outplan_id,
                outdial_id: c.outdial_id,
                end_handle: c.end_handle,
                service_level: c.service_level,
                queue_id: c.queue_id,
                next_campaign_id: c.next_campaign_id,
                max_concurrent_calls: c.max_concurrent_calls,
                flow_id: c.flow_id,
                at,
            }]);
        }
        if self.id.is_none() {
            return Err(DomainError::NotFound("campaign"));
        }
        Ok(match command {
            CampaignCommand::Create { .. } => unreachable!("handled above"),
            CampaignCommand::Request { status, at } => match (self.status, status) {
                (Completed, _) => {
                    return Err(DomainError::FailedPrecondition(
                        "the campaign has completed".into(),
                    ))
                }
                (Stopping, Running) => {
                    return Err(DomainError::FailedPrecondition(
                        "the campaign is stopping; wait until it has stopped".into(),
                    ))
                }
                (_, Running) => self.status_event(Running, at),
                (Running, Stopped) if !self.in_flight.is_empty() => self.status_event(Stopping, at),
                (_, Stopped) => self.status_event(Stopped, at),
                (_, other) => {
                    return Err(DomainError::Invalid(format!(
                        "status must be running or stopped, not {}",
                        other.as_str()
                    )))
                }
            },
            CampaignCommand::Complete { at } if self.in_flight.is_empty() => {
                self.status_event(Completed, at)
            }
            CampaignCommand::Complete { .. } => vec![],
            CampaignCommand::CountTargets { total_targets, at } => {
                if total_targets == self.total_targets {
                    vec![]
                } else {
                    vec![CampaignEvent::CampaignTargetsCounted { total_targets, at }]
                }
            }
            CampaignCommand::RecordCalls { calls } => self.decide_each(
                calls
                    .into_iter()
                    .map(|call| CampaignCommand::RecordCall { call }),
            )?,
            CampaignCommand::RecordResults { results } => {
                if results
                    .iter()
                    .any(|r| !matches!(r, CampaignCommand::RecordResult { .. }))
                {
                    return Err(DomainError::Invalid(
                        "RecordResults takes RecordResult commands only".into(),
                    ));
                }
                self.decide_each(results.into_iter())?
            }
            CampaignCommand::RecordCall { call } => {
                if self.in_flight.contains_key(&call.call_id) {
                    vec![]
                } else {
                    let counters = CampaignCounters {
                        dialed: self.counters.dialed + 1,
                        in_flight: self.counters.in_flight + 1,
                        ..self.counters
                    };
                    vec![CampaignEvent::CampaigncallCreated { call, counters }]
                }
            }
            CampaignCommand::RecordResult {
                call_id,
                result,
                target_done,
                at,
            } => {
                let Some(call) = self.in_flight.get(&call_id) else {
                    return Ok(vec![]);
                };
                let mut counters = CampaignCounters {
                    in_flight: self.counters.in_flight.saturating_sub(1),
                    ..self.counters
                };
                match (target_done, result) {
                    (false, _) => {}
                    (true, TargetResult::Answered) => counters.answered += 1,
                    (true, _) => counters.failed += 1,
                }
                let mut events = vec![CampaignEvent::CampaigncallUpdated {
                    call: call.clone(),
                    result,
                    target_done,
                    counters,
                    at,
                }];
                if self.status == Stopping && self.in_flight.len() == 1 {
                    events.push(CampaignEvent::CampaignStatusChanged {
                        status: Stopped,
                        at,
                    });
                }
                events
            }
        })
    }

    fn fold(&mut self, event: CampaignEvent) {
        match event {
            CampaignEvent::CampaignCreated {
                campaign_id,
                customer_id,
                name,
                outplan_id,
                outdial_id,
                end_handle,
                service_level,
                queue_id,
                next_campaign_id,
                max_concurrent_calls,
                flow_id,
                at,
            } => {
                *self = Campaign {
                    id: Some(campaign_id),
                    customer_id,
                    name,
                    outplan_id,
                    outdial_id,
                    end_handle,
                    service_level,
                    queue_id,
                    next_campaign_id,
                    max_concurrent_calls,
                    flow_id,
                    tm_create: Some(at),
                    tm_update: Some(at),
                    ..Campaign::default()
                }
            }
            CampaignEvent::CampaignStatusChanged { status, at } => {
                self.status = status;
                self.tm_update = Some(at);
            }
            CampaignEvent::CampaignTargetsCounted { total_targets, at } => {
                self.total_targets = total_targets;
                self.tm_update = Some(at);
            }
            CampaignEvent::CampaigncallCreated { call, counters } => {
                self.counters = counters;
                self.tm_update = Some(call.tm_create);
                self.in_flight.insert(call.call_id, call);
            }
            CampaignEvent::CampaigncallUpdated {
                call, counters, at, ..
            } => {
                self.in_flight.remove(&call.call_id);
                self.counters = counters;
                self.tm_update = Some(at);
            }
        }
    }
}
decided_aggregate!(Campaign, CampaignCommand, CampaignEvent);

/// The API view of a campaign call, from its event (None for other events).
pub fn campaigncall_view(
    customer_id: CustomerId,
    campaign_id: Option<CampaignId>,
    event: &CampaignEvent,
) -> Option<Value> {
    let (call, status, result, tm_update) = match event {
        CampaignEvent::CampaigncallCreated { call, .. } => (call, "dialing", None, call.tm_create),
        CampaignEvent::CampaigncallUpdated {
            call, result, at, ..
        } => (call, "done", Some(*result), *at),
        _ => return None,
    };
    Some(json!({
        "id": call.campaigncall_id, "type": "campaigncall", "customer_id": customer_id,
        "campaign_id": campaign_id, "outdial_target_id": call.target_id,
        "reference_type": "call", "reference_id": call.call_id,
        "destination": call.destination, "destination_index": call.destination_index,
        "try_count": call.try_count, "status": status, "result": result,
        "tm_create": call.tm_create, "tm_update": tm_update,
    }))
}

impl ResourceView for Campaign {
    /// Campaign call events show the campaign call (their webhook's subject); the campaign's
    /// counters travel in their payload.
    fn resource_after(&self, event: &CampaignEvent) -> Value {
        campaigncall_view(self.customer_id, self.id, event).unwrap_or_else(|| self.view())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{given_nothing, Given, Then};
    use chrono::TimeZone;

    fn t(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_700_000_000_000 + ms).unwrap()
    }

    fn target(n: usize) -> Given<Target> {
        let destinations = (0..n)
            .map(|i| E164::parse(&format!("+1555000000{i}")).unwrap())
            .collect();
        given_nothing::<Target>().and(TargetCommand::Create {
            target_id: TargetId::new(),
            outdial_id: OutdialId::new(),
            customer_id: CustomerId::new(),
            destinations,
            variables: Map::new(),
            sandbox: None,
            at: t(0),
        })
    }

    /// Dials the target; the call's id and what the target decided.
    fn dial(tg: &mut Given<Target>, at: i64) -> (CallId, Then<Target>) {
        let call_id = CallId::new();
        let then = tg.when(TargetCommand::Dial {
            campaign_id: CampaignId::new(),
            campaigncall_id: Uuid::now_v7(),
            call_id,
            max_try_count: 2,
            try_interval_ms: 1000,
            at: t(at),
        });
        (call_id, then)
    }

    /// Dials the target, which must accept; the call's id.
    fn dialed(tg: &mut Given<Target>, at: i64) -> CallId {
        let (call_id, then) = dial(tg, at);
        then.then_ok();
        call_id
    }

    fn result(tg: &mut Given<Target>, call_id: CallId, r: TargetResult, at: i64) -> Then<Target> {
        tg.when(TargetCommand::RecordResult {
            call_id,
            result: r,
            max_try_count: 2,
            at: t(at),
        })
    }

    #[test]
    fn target_retries_each_destination_then_completes() {
        let mut tg = target(2);
        let c1 = dialed(&mut tg, 0);
        dial(&mut tg, 10).1.then_refused(); // dialing twice
        result(&mut tg, c1, TargetResult::Busy, 100).then_count(1);
        result(&mut tg, c1, TargetResult::Busy, 100).then_nothing(); // a repeat
        assert_eq!(tg.status, TargetStatus::Pending);
        dial(&mut tg, 500).1.then_refused(); // not due before try_interval
        let c2 = dialed(&mut tg, 1000);
        assert_eq!(tg.destination_index, 0);
        result(&mut tg, c2, TargetResult::NoAnswer, 1100).then_ok();
        let c3 = dialed(&mut tg, 2100);
        assert_eq!(tg.destination_index, 1, "first destination out of tries");
        result(&mut tg, c3, TargetResult::Busy, 2200).then_ok();
        let c4 = dialed(&mut tg, 3200);
        result(&mut tg, c4, TargetResult::Failed, 3300).then_ok();
        assert_eq!(tg.status, TargetStatus::Completed);
        assert!(tg.done_with(c4) && !tg.done_with(c3));
        assert_eq!(tg.dial_count, 4);
        assert_eq!(tg.try_counts, vec![2, 2]);
        dial(&mut tg, 9000).1.then_refused();

        let mut tg = target(3);
        let c = dialed(&mut tg, 0);
        result(&mut tg, c, TargetResult::Answered, 100).then_ok();
        assert!(tg.done_with(c));
        assert_eq!(tg.result, Some(TargetResult::Answered));
    }

    fn record(call_id: CallId) -> CampaignCallRecord {
        CampaignCallRecord {
            campaigncall_id: Uuid::now_v7(),
            call_id,
            target_id: TargetId::new(),
            destination: E164::parse("+15550000001").unwrap(),
            destination_index: 0,
            try_count: 1,
            tm_create: t(0),
        }
    }

    /// A campaign just created (pending, at most 10 calls in flight).
    fn created_campaign() -> Given<Campaign> {
        given_nothing::<Campaign>().and(CampaignCommand::Create {
            campaign: NewCampaign {
                campaign_id: CampaignId::new(),
                customer_id: CustomerId::new(),
                name: "c".into(),
                outplan_id: OutplanId::new(),
                outdial_id: OutdialId::new(),
                end_handle: EndHandle::Stop,
                service_level: 100,
                queue_id: None,
                next_campaign_id: None,
                max_concurrent_calls: 10,
                flow_id: None,
            },
            at: t(0),
        })
    }

    #[test]
    fn campaign_counts_once_and_stops_after_calls_in_flight() {
        let mut c = created_campaign();
        let req = |status| CampaignCommand::Request { status, at: t(1) };
        c.when(req(CampaignStatus::Running)).then_count(1);
        c.when(req(CampaignStatus::Running)).then_nothing();
        let (a, b) = (CallId::new(), CallId::new());
        let created = c
            .when(CampaignCommand::RecordCall { call: record(a) })
            .then_ok();
        // What consumers read of the views: the child's last change, the campaign's next.
        let touched: vbin_event_schema::views::Touched =
            serde_json::from_value(c.resource_after(&created[0])).unwrap();
        assert_eq!(touched.tm_update, t(0));
        let mut chained = c.clone();
        chained.next_campaign_id = Some(CampaignId::new());
        let view: vbin_event_schema::views::CampaignView =
            serde_json::from_value(chained.view()).unwrap();
        assert_eq!(view.next_campaign_id, chained.next_campaign_id);
        c.when(CampaignCommand::RecordCall { call: record(b) })
            .then_ok();
        c.when(CampaignCommand::RecordCall { call: record(a) })
            .then_nothing();
        assert_eq!(c.counters.dialed, 2);
        c.when(CampaignCommand::Complete { at: t(2) })
            .then_nothing();
        c.when(req(CampaignStatus::Stopped)).then_ok();
        assert_eq!(c.status, CampaignStatus::Stopping);
        let res = |call_id, result, target_done| CampaignCommand::RecordResult {
            call_id,
            result,
            target_done,
            at: t(3),
        };
        c.when(res(a, TargetResult::Answered, true)).then_ok();
        c.when(res(a, TargetResult::Answered, true)).then_nothing();
        assert_eq!(c.status, CampaignStatus::Stopping);
        c.when(res(b, TargetResult::Busy, false)).then_count(2);
        assert_eq!(c.status, CampaignStatus::Stopped);
        assert_eq!(
            c.counters,
            CampaignCounters {
                dialed: 2,
                answered: 1,
                failed: 0,
                in_flight: 0
            }
        );
        c.when(req(CampaignStatus::Running)).then_ok();
        c.when(CampaignCommand::Complete { at: t(4) }).then_ok();
        assert_eq!(c.status, CampaignStatus::Completed);
        c.when(req(CampaignStatus::Running)).then_refused();
    }
    /// A round's calls and the results waiting for the campaign, recorded in one command each,
    /// give exactly the events of the same commands one by one (duplicates included).
    #[test]
    fn batched_calls_and_results_give_the_events_of_one_by_one() {
        let created = created_campaign();
        let mut campaign = (*created).clone();
        campaign.fold(CampaignEvent::CampaignStatusChanged {
            status: CampaignStatus::Stopping,
            at: t(1),
        });
        let (a, b, c) = (
            record(CallId::new()),
            record(CallId::new()),
            record(CallId::new()),
        );
        let calls = vec![a.clone(), b.clone(), a.clone(), c.clone()];
        let res = |call: &CampaignCallRecord, result| CampaignCommand::RecordResult {
            call_id: call.call_id,
            result,
            target_done: true,
            at: t(2),
        };
        let results = vec![
            res(&b, TargetResult::Answered),
            res(&b, TargetResult::Answered),
            res(&a, TargetResult::Busy),
            res(&c, TargetResult::Answered),
        ];
        let one_by_one = |commands: Vec<CampaignCommand>, state: &mut Campaign| {
            let mut events = vec![];
            for cmd in commands {
                for e in state.decide(cmd).unwrap() {
                    state.fold(e.clone());
                    events.push(e);
                }
            }
            events
        };
        let (mut single, mut batched) = (campaign.clone(), campaign.clone());
        let mut expected = one_by_one(
            calls
                .iter()
                .cloned()
                .map(|call| CampaignCommand::RecordCall { call })
                .collect(),
            &mut single,
        );
        expected.extend(one_by_one(results.clone(), &mut single));
        let mut got = one_by_one(vec![CampaignCommand::RecordCalls { calls }], &mut batched);
        got.extend(one_by_one(
            vec![CampaignCommand::RecordResults { results }],
            &mut batched,
        ));
        assert_eq!(got, expected);
        assert_eq!(batched, single);
        assert_eq!(batched.counters.dialed, 3);
        assert_eq!(
            batched.status,
            CampaignStatus::Stopped,
            "the last result stops it"
        );
        assert!(campaign
            .decide(CampaignCommand::RecordResults {
                results: vec![CampaignCommand::Complete { at: t(3) }]
            })
            .is_err());
    }
}
