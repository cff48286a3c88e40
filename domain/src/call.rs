//! The Call aggregate: one phone call and its status machine.

use crate::{DomainError, ResourceView};
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use vbin_event_schema::call::{ChainExecution, ChainPurpose, ChainResult};
use vbin_event_schema::{
    flow::SandboxScript, ActiveflowId, CallDirection, CallEvent, CallId, CallStatus, CampaignId,
    CustomerId, HangupBy, HangupCause, TrunkId, E164,
};

/// Most legs one chain dials.
pub const MAX_LEGS: usize = 5;

/// Most steps in a sandbox script.
pub const MAX_SANDBOX_STEPS: usize = 64;

/// Checks a sandbox script: at most [`MAX_SANDBOX_STEPS`] steps within an hour, each doing
/// one thing (say 1 to 1024 bytes, 1 to 32 DTMF keys, or hang up). Waiting for what it hears
/// (`heard_ms`, `quiet_ms`, each at most an hour) is for saying and keys: the carrier times a
/// hangup.
pub fn check_sandbox(s: &SandboxScript) -> Result<(), String> {
    if s.script.len() > MAX_SANDBOX_STEPS {
        return Err(format!(
            "sandbox.script must hold at most {MAX_SANDBOX_STEPS} steps"
        ));
    }
    for (i, step) in s.script.iter().enumerate() {
        let bad = |m: &str| format!("sandbox.script[{i}]: {m}");
        for (name, ms) in [
            ("at_ms", Some(step.at_ms)),
            ("heard_ms", step.heard_ms),
            ("quiet_ms", step.quiet_ms),
        ] {
            if ms.is_some_and(|ms| ms > 3_600_000) {
                return Err(bad(&format!("{name} must be at most 3600000")));
            }
        }
        if step.hangup && (step.heard_ms.is_some() || step.quiet_ms.is_some()) {
            return Err(bad(
                "a hangup step runs at at_ms: heard_ms and quiet_ms are for say and digits",
            ));
        }
        let things = step.say.is_some() as u8 + step.digits.is_some() as u8 + step.hangup as u8;
        if things != 1 {
            return Err(bad("a step does exactly one of say, digits, hangup"));
        }
        if step
            .say
            .as_ref()
            .is_some_and(|t| t.trim().is_empty() || t.len() > 1024)
        {
            return Err(bad("say must be 1 to 1024 bytes"));
        }
        if let Some(d) = &step.digits {
            if d.is_empty() || d.len() > 32 || !d.chars().all(vbin_event_schema::flow::is_dtmf) {
                return Err(bad("digits must be 1 to 32 of the keys 0-9 * # A-D"));
            }
        }
    }
    Ok(())
}

/// Input of a new call, already validated by the API.
#[derive(Clone, Debug, PartialEq)]
pub struct NewCall {
    /// Pre-generated id (the aggregate id).
    pub call_id: CallId,
    /// Owner.
    pub customer_id: CustomerId,
    /// Caller id.
    pub source: E164,
    /// Number to dial.
    pub destination: E164,
    /// Customer variables.
    pub variables: Map<String, Value>,
    /// Ring timeout.
    pub dial_timeout_ms: u32,
    /// Placing campaign, if any.
    pub campaign_id: Option<CampaignId>,
    /// Outgoing (placed by the platform) or incoming (from the network).
    pub direction: CallDirection,
    /// The flow attached to it.
    pub activeflow_id: Option<ActiveflowId>,
    /// The sandbox far end's script.
    pub sandbox: Option<SandboxScript>,
    /// The SIP trunk it goes out through (none: the sandbox carrier).
    pub trunk_id: Option<TrunkId>,
    /// The call it is a leg of.
    pub master_call_id: Option<CallId>,
}

/// Who asks for a hangup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HangupRequest {
    /// Our side (API client): cancel if unanswered, normal clearing if answered.
    Local,
    /// The carrier reports the far end ended it, with a cause.
    Remote(HangupCause),
}

/// Commands a call accepts. Carrier-driven commands (ringing, answered, remote hangup) are
/// idempotent: repeated or late ones (after a later status) produce no event.
#[derive(Clone, Debug, PartialEq)]
pub enum CallCommand {
    /// Create and start dialing.
    Create {
        /// What to dial.
        call: NewCall,
        /// When.
        at: DateTime<Utc>,
    },
    /// The carrier reports ringing.
    MarkRinging {
        /// When.
        at: DateTime<Utc>,
    },
    /// The carrier reports an answer.
    MarkAnswered {
        /// When.
        at: DateTime<Utc>,
    },
    /// End the call.
    Hangup {
        /// Which side and why.
        request: HangupRequest,
        /// When.
        at: DateTime<Utc>,
    },
    /// Dial `legs` (created with this call as their master) to bridge the first that answers.
    /// A repeat of the running chain does nothing; another chain while one runs is refused.
    Chain {
        /// The legs, already created.
        legs: Vec<CallId>,
        /// The flow action waiting for the chain's end.
        execution: Option<ChainExecution>,
        /// What it is for.
        purpose: ChainPurpose,
        /// When.
        at: DateTime<Utc>,
    },
    /// A leg answered: bridge it if it is the first (otherwise nothing happens, and the leg
    /// is to be hung up: see [`Call::bridged_to`]).
    BridgeLeg {
        /// The leg.
        leg: CallId,
        /// When.
        at: DateTime<Utc>,
    },
    /// A leg ended with `status`.
    LegEnded {
        /// The leg.
        leg: CallId,
        /// Its final status.
        status: CallStatus,
        /// When.
        at: DateTime<Utc>,
    },
}

/// The running (or last) chain of a call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Chain {
    /// Its legs.
    pub legs: Vec<CallId>,
    /// The flow action waiting for it.
    pub execution: Option<ChainExecution>,
    /// What it is for.
    pub purpose: ChainPurpose,
    /// Legs that ended, with their final status.
    pub ended: BTreeMap<CallId, CallStatus>,
    /// The leg bridged.
    pub bridged: Option<CallId>,
    /// How it ended (`None` while it runs).
    pub result: Option<ChainResult>,
}

impl Chain {
    /// Legs that have not ended.
    pub fn live_legs(&self) -> impl Iterator<Item = CallId> + '_ {
        self.legs
            .iter()
            .copied()
            .filter(|l| !self.ended.contains_key(l))
    }
}

/// A call's state, folded from its events.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Call {
    /// None until created.
    pub id: Option<CallId>,
    /// Owner.
    pub customer_id: CustomerId,
    /// Direction.
    pub direction: CallDirection,
    /// Caller id.
    pub source: Option<E164>,
    /// Dialed number.
    pub destination: Option<E164>,
    /// Status.
    pub status: CallStatus,
    /// Who hung up.
    pub hangup_by: HangupBy,
    /// Why it ended.
    pub hangup_cause: HangupCause,
    /// Seconds from answer to hangup.
    pub duration: u64,
    /// Customer variables.
    pub variables: Map<String, Value>,
    /// Ring timeout.
    pub dial_timeout_ms: u32,
    /// Placing campaign.
    pub campaign_id: Option<CampaignId>,
    /// The flow running on it.
    pub activeflow_id: Option<ActiveflowId>,
    /// The sandbox far end's script.
    pub sandbox: Option<SandboxScript>,
    /// The SIP trunk it goes out through.
    pub trunk_id: Option<TrunkId>,
    /// The call it is a leg of.
    pub master_call_id: Option<CallId>,
    /// Every leg it has dialed.
    pub chained_call_ids: Vec<CallId>,
    /// Its running or last chain.
    pub chain: Option<Chain>,
    /// Created.
    pub tm_create: Option<DateTime<Utc>>,
    /// Started ringing.
    pub tm_ringing: Option<DateTime<Utc>>,
    /// Answered.
    pub tm_progressing: Option<DateTime<Utc>>,
    /// Ended.
    pub tm_hangup: Option<DateTime<Utc>>,
    /// Last change.
    pub tm_update: Option<DateTime<Utc>>,
}

impl Call {
    /// The call as the API shows it.
    pub fn view(&self) -> Value {
        json!({
            "id": self.id,
            "type": "call",
            "customer_id": self.customer_id,
            "direction": self.direction,
            "source": self.source,
            "destination": self.destination,
            "status": self.status,
            "hangup_by": self.hangup_by,
            "hangup_cause": self.hangup_cause,
            "duration": self.duration,
            "campaign_id": self.campaign_id,
            "activeflow_id": self.activeflow_id,
            "sandbox": self.sandbox,
            "trunk_id": self.trunk_id,
            "master_call_id": self.master_call_id,
            "chained_call_ids": self.chained_call_ids,
            "bridged_call_id": self.bridged_to(),
            "variables": self.variables,
            "tm_create": self.tm_create,
            "tm_ringing": self.tm_ringing,
            "tm_progressing": self.tm_progressing,
            "tm_hangup": self.tm_hangup,
            "tm_update": self.tm_update,
        })
    }

    /// The leg bridged to this call while its chain runs.
    pub fn bridged_to(&self) -> Option<CallId> {
        self.chain
            .as_ref()
            .filter(|c| c.result.is_none())
            .and_then(|c| c.bridged)
    }

    /// The chain that runs now.
    pub fn running_chain(&self) -> Option<&Chain> {
        self.chain.as_ref().filter(|c| c.result.is_none())
    }

    fn decide(&self, command: CallCommand) -> Result<Vec<CallEvent>, DomainError> {
        let CallCommand::Create { call, at } = command else {
            if self.id.is_none() {
                return Err(DomainError::NotFound("call"));
            }
            return match command {
                CallCommand::Chain {
                    legs,
                    execution,
                    purpose,
                    at,
                } => self.decide_chain(legs, execution, purpose, at),
                CallCommand::BridgeLeg { leg, at } => Ok(self.decide_bridge(leg, at)),
                CallCommand::LegEnded { leg, status, at } => {
                    Ok(self.decide_leg_ended(leg, status, at))
                }
                _ => Ok(self.decide_progress(command).into_iter().collect()),
            };
        };
        if self.id.is_some() {
            return Err(DomainError::AlreadyExists(format!(
                "call {} exists",
                call.call_id
            )));
        }
        Ok(vec![CallEvent::CallCreated {
            call_id: call.call_id,
            customer_id: call.customer_id,
            direction: call.direction,
            source: call.source,
            destination: call.destination,
            variables: call.variables,
            dial_timeout_ms: call.dial_timeout_ms,
            campaign_id: call.campaign_id,
            activeflow_id: call.activeflow_id,
            sandbox: call.sandbox,
            trunk_id: call.trunk_id,
            master_call_id: call.master_call_id,
            at,
        }])
    }

    fn decide_chain(
        &self,
        legs: Vec<CallId>,
        execution: Option<ChainExecution>,
        purpose: ChainPurpose,
        at: DateTime<Utc>,
    ) -> Result<Vec<CallEvent>, DomainError> {
        if let Some(running) = self.running_chain() {
            if running.legs == legs && running.execution == execution {
                return Ok(vec![]);
            }
            return Err(DomainError::FailedPrecondition(
                "the call is already connecting or connected to another call".into(),
            ));
        }
        // A repeat of a chain that has already ended (a redelivered command) does nothing.
        if legs.iter().any(|l| self.chained_call_ids.contains(l)) {
            return Ok(vec![]);
        }
        if legs.is_empty() || legs.len() > MAX_LEGS {
            return Err(DomainError::Invalid(format!(
                "a connect dials 1 to {MAX_LEGS} destinations"
            )));
        }
        if self.status != CallStatus::Progressing {
            return Err(DomainError::FailedPrecondition(format!(
                "the call is {}: only an answered call connects",
                self.status.as_str()
            )));
        }
        Ok(vec![CallEvent::CallChained {
            legs,
            execution,
            purpose,
            at,
        }])
    }

    fn decide_bridge(&self, leg: CallId, at: DateTime<Utc>) -> Vec<CallEvent> {
        match self.running_chain() {
            Some(c)
                if c.bridged.is_none()
                    && c.legs.contains(&leg)
                    && !c.ended.contains_key(&leg)
                    && self.status == CallStatus::Progressing =>
            {
                vec![CallEvent::CallBridged {
                    peer_call_id: leg,
                    at,
                }]
            }
            _ => vec![],
        }
    }

    fn decide_leg_ended(
        &self,
        leg: CallId,
        status: CallStatus,
        at: DateTime<Utc>,
    ) -> Vec<CallEvent> {
        let Some(c) = self.running_chain() else {
            return vec![];
        };
        if !c.legs.contains(&leg) || c.ended.contains_key(&leg) {
            return vec![];
        }
        let ended = CallEvent::CallLegEnded {
            leg_call_id: leg,
            status,
            at,
        };
        let end = |result, bridged_call_id| {
            vec![
                ended.clone(),
                CallEvent::CallChainEnded {
                    result,
                    bridged_call_id,
                    at,
                },
            ]
        };
        if c.bridged == Some(leg) {
            return end(ChainResult::Answered, Some(leg));
        }
        if c.bridged.is_some() || c.live_legs().any(|l| l != leg) {
            // A losing leg ended, or others still ring.
            return vec![ended];
        }
        // The last leg ended and none was bridged: the best of the failures.
        let result = c
            .ended
            .values()
            .copied()
            .chain([status])
            .map(ChainResult::of_unanswered)
            .max()
            .unwrap_or(ChainResult::Failed);
        end(result, None)
    }

    /// At most one event; none when the command is stale or repeated (forward-only machine).
    fn decide_progress(&self, command: CallCommand) -> Option<CallEvent> {
        let (to, event) = match command {
            CallCommand::Create { .. }
            | CallCommand::Chain { .. }
            | CallCommand::BridgeLeg { .. }
            | CallCommand::LegEnded { .. } => return None,
            CallCommand::MarkRinging { at } => (CallStatus::Ringing, CallEvent::CallRinging { at }),
            CallCommand::MarkAnswered { at } => {
                (CallStatus::Progressing, CallEvent::CallProgressing { at })
            }
            CallCommand::Hangup { request, at } => {
                let (hangup_by, cause) = match request {
                    HangupRequest::Local if self.status == CallStatus::Progressing => {
                        (HangupBy::Local, HangupCause::NormalClearing)
                    }
                    HangupRequest::Local => (HangupBy::Local, HangupCause::OriginatorCancel),
                    HangupRequest::Remote(cause) => (HangupBy::Remote, cause),
                };
                let status = cause.resulting_status(self.status);
                let duration = self
                    .tm_progressing
                    .map(|answered| (at - answered).num_seconds().max(0) as u64)
                    .unwrap_or(0);
                let event = CallEvent::CallHungup {
                    status,
                    hangup_by,
                    hangup_cause: cause,
                    duration,
                    at,
                };
                (status, event)
            }
        };
        self.status.can_transition_to(to).then_some(event)
    }
}

impl Aggregate for Call {
    const TYPE: &'static str = CallEvent::AGGREGATE;
    type Command = CallCommand;
    type Event = CallEvent;
    type Error = DomainError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            CallEvent::CallCreated {
                call_id,
                customer_id,
                direction,
                source,
                destination,
                variables,
                dial_timeout_ms,
                campaign_id,
                activeflow_id,
                sandbox,
                trunk_id,
                master_call_id,
                at,
            } => {
                *self = Call {
                    activeflow_id,
                    sandbox,
                    trunk_id,
                    master_call_id,
                    id: Some(call_id),
                    customer_id,
                    direction,
                    source: Some(source),
                    destination: Some(destination),
                    variables,
                    dial_timeout_ms,
                    campaign_id,
                    tm_create: Some(at),
                    tm_update: Some(at),
                    ..Call::default()
                }
            }
            CallEvent::CallRinging { at } => {
                self.status = CallStatus::Ringing;
                self.tm_ringing = Some(at);
                self.tm_update = Some(at);
            }
            CallEvent::CallProgressing { at } => {
                self.status = CallStatus::Progressing;
                self.tm_progressing = Some(at);
                self.tm_update = Some(at);
            }
            CallEvent::CallHungup {
                status,
                hangup_by,
                hangup_cause,
                duration,
                at,
            } => {
                self.status = status;
                self.hangup_by = hangup_by;
                self.hangup_cause = hangup_cause;
                self.duration = duration;
                self.tm_hangup = Some(at);
                self.tm_update = Some(at);
            }
            CallEvent::CallChained {
                legs,
                execution,
                purpose,
                at,
            } => {
                self.chained_call_ids.extend(legs.iter().copied());
                self.chain = Some(Chain {
                    legs,
                    execution,
                    purpose,
                    ..Chain::default()
                });
                self.tm_update = Some(at);
            }
            CallEvent::CallBridged { peer_call_id, at } => {
                if let Some(c) = self.chain.as_mut() {
                    c.bridged = Some(peer_call_id);
                }
                self.tm_update = Some(at);
            }
            CallEvent::CallLegEnded {
                leg_call_id,
                status,
                at,
            } => {
                if let Some(c) = self.chain.as_mut() {
                    c.ended.insert(leg_call_id, status);
                }
                self.tm_update = Some(at);
            }
            CallEvent::CallChainEnded { result, at, .. } => {
                if let Some(c) = self.chain.as_mut() {
                    c.result = Some(result);
                }
                self.tm_update = Some(at);
            }
        }
    }
}

impl ResourceView for Call {
    fn resource_after(&self, _: &CallEvent) -> Value {
        self.view()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{given_nothing, Given};
    use chrono::TimeZone;

    #[test]
    fn sandbox_steps_wait_for_what_they_hear_only_to_say_or_press_keys() {
        let check = |step: Value| {
            let script: SandboxScript =
                serde_json::from_value(json!({"script": [step]})).expect("decodes");
            check_sandbox(&script)
        };
        assert_eq!(
            check(json!({"at_ms": 0, "heard_ms": 1000, "quiet_ms": 1500, "say": "hi"})),
            Ok(())
        );
        assert_eq!(
            check(json!({"at_ms": 0, "quiet_ms": 500, "digits": "1#"})),
            Ok(())
        );
        let err = check(json!({"at_ms": 0, "heard_ms": 1000, "hangup": true})).unwrap_err();
        assert!(err.contains("hangup"), "{err}");
        let err = check(json!({"at_ms": 0, "quiet_ms": 3_600_001, "say": "hi"})).unwrap_err();
        assert!(err.contains("quiet_ms must be at most 3600000"), "{err}");
    }

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    fn created() -> Given<Call> {
        let new = NewCall {
            call_id: CallId::new(),
            customer_id: CustomerId::new(),
            source: E164::parse("+15550001111").unwrap(),
            destination: E164::parse("+15550002222").unwrap(),
            variables: Map::new(),
            dial_timeout_ms: 30_000,
            campaign_id: None,
            direction: CallDirection::Outgoing,
            activeflow_id: None,
            sandbox: None,
            trunk_id: None,
            master_call_id: None,
        };
        given_nothing::<Call>().and(CallCommand::Create {
            call: new,
            at: t(0),
        })
    }

    fn hangup(request: HangupRequest, at: i64) -> CallCommand {
        CallCommand::Hangup { request, at: t(at) }
    }

    #[test]
    fn answered_call_completes_with_duration() {
        let mut c = created();
        c.when(CallCommand::MarkRinging { at: t(1) }).then_count(1);
        c.when(CallCommand::MarkAnswered { at: t(2) }).then_count(1);
        let evs = c
            .when(hangup(
                HangupRequest::Remote(HangupCause::NormalClearing),
                9,
            ))
            .then_ok();
        assert_eq!(evs.len(), 1);
        assert_eq!(c.status, CallStatus::Completed);
        assert_eq!(c.duration, 7);
        assert_eq!(c.hangup_by, HangupBy::Remote);
        // What consumers read of the view.
        let view: vbin_event_schema::views::CallView =
            serde_json::from_value(c.resource_after(&evs[0])).unwrap();
        assert_eq!(view.campaign_id, None);
        let mut placed = c.clone();
        placed.campaign_id = Some(CampaignId::new());
        let view: vbin_event_schema::views::CallView =
            serde_json::from_value(placed.view()).unwrap();
        assert_eq!(view.campaign_id, placed.campaign_id);
        // Terminal: everything after is a no-op.
        c.when(hangup(HangupRequest::Local, 10)).then_nothing();
        c.when(CallCommand::MarkAnswered { at: t(11) })
            .then_nothing();
        assert_eq!(c.status, CallStatus::Completed);
    }

    #[test]
    fn local_hangup_before_answer_cancels() {
        let c = created()
            .and(CallCommand::MarkRinging { at: t(1) })
            .and(hangup(HangupRequest::Local, 2));
        assert_eq!(c.status, CallStatus::Canceled);
        assert_eq!(c.hangup_cause, HangupCause::OriginatorCancel);
        assert_eq!(c.hangup_by, HangupBy::Local);
        assert_eq!(c.duration, 0);
    }

    #[test]
    fn remote_causes_map_to_statuses_and_repeats_are_noops() {
        let c = created().and(hangup(HangupRequest::Remote(HangupCause::UserBusy), 1));
        assert_eq!(c.status, CallStatus::Busy);
        let mut c = created().and(CallCommand::MarkRinging { at: t(1) });
        c.when(CallCommand::MarkRinging { at: t(1) }).then_nothing();
        c.when(hangup(HangupRequest::Remote(HangupCause::NoAnswer), 30))
            .then_ok();
        assert_eq!(c.status, CallStatus::NoAnswer);
    }

    #[test]
    fn commands_on_missing_or_existing_calls_fail() {
        given_nothing::<Call>()
            .when(CallCommand::MarkRinging { at: t(0) })
            .then_error(DomainError::NotFound("call"));
        let mut c = created();
        let again = NewCall {
            call_id: c.id.unwrap(),
            customer_id: c.customer_id,
            source: c.source.clone().unwrap(),
            destination: c.destination.clone().unwrap(),
            variables: Map::new(),
            dial_timeout_ms: 1000,
            campaign_id: None,
            direction: CallDirection::Outgoing,
            activeflow_id: None,
            sandbox: None,
            trunk_id: None,
            master_call_id: None,
        };
        assert!(matches!(
            c.when(CallCommand::Create {
                call: again,
                at: t(0)
            })
            .then_refused(),
            DomainError::AlreadyExists(_)
        ));
    }

    fn answered() -> Given<Call> {
        created().and(CallCommand::MarkAnswered { at: t(1) })
    }

    fn chain(legs: &[CallId]) -> CallCommand {
        CallCommand::Chain {
            legs: legs.to_vec(),
            execution: Some(ChainExecution {
                activeflow_id: ActiveflowId::new(),
                seq: 3,
            }),
            purpose: ChainPurpose::Connect,
            at: t(2),
        }
    }

    fn ended(leg: CallId, status: CallStatus) -> CallCommand {
        CallCommand::LegEnded {
            leg,
            status,
            at: t(9),
        }
    }

    fn chain_result(evs: &[CallEvent]) -> Option<(ChainResult, Option<CallId>)> {
        evs.iter().find_map(|e| match e {
            CallEvent::CallChainEnded {
                result,
                bridged_call_id,
                ..
            } => Some((*result, *bridged_call_id)),
            _ => None,
        })
    }

    #[test]
    fn the_first_leg_to_answer_is_bridged_and_its_hangup_ends_the_chain() {
        let (b, c) = (CallId::new(), CallId::new());
        let mut m = answered();
        let cmd = chain(&[b, c]);
        m.when(cmd.clone()).then_count(1);
        // A redelivered Chain does nothing; another chain is refused while this one runs.
        m.when(cmd).then_nothing();
        assert!(matches!(
            m.when(chain(&[CallId::new()])).then_refused(),
            DomainError::FailedPrecondition(_)
        ));
        m.when(CallCommand::BridgeLeg { leg: c, at: t(3) })
            .then_count(1);
        assert_eq!(m.bridged_to(), Some(c));
        // The loser answering late, or a repeat, bridges nothing.
        m.when(CallCommand::BridgeLeg { leg: b, at: t(3) })
            .then_nothing();
        m.when(CallCommand::BridgeLeg { leg: c, at: t(3) })
            .then_nothing();
        // The canceled loser ends: the chain goes on.
        let evs = m.when(ended(b, CallStatus::Canceled)).then_ok();
        assert_eq!(chain_result(&evs), None);
        let evs = m.when(ended(c, CallStatus::Completed)).then_ok();
        assert_eq!(chain_result(&evs), Some((ChainResult::Answered, Some(c))));
        assert_eq!(m.bridged_to(), None);
        m.when(ended(c, CallStatus::Completed)).then_nothing();
        assert_eq!(m.chained_call_ids, vec![b, c]);
        // A new chain may run now.
        m.when(chain(&[CallId::new()])).then_count(1);
    }

    #[test]
    fn unanswered_legs_end_the_chain_with_the_best_failure() {
        for (statuses, want) in [
            (
                vec![CallStatus::Failed, CallStatus::NoAnswer, CallStatus::Busy],
                ChainResult::NoAnswer,
            ),
            (
                vec![CallStatus::Failed, CallStatus::Busy],
                ChainResult::Busy,
            ),
            (vec![CallStatus::Failed], ChainResult::Failed),
            (vec![CallStatus::Canceled], ChainResult::Canceled),
        ] {
            let legs: Vec<CallId> = statuses.iter().map(|_| CallId::new()).collect();
            let mut m = answered().and(chain(&legs));
            let mut last = vec![];
            for (leg, status) in legs.iter().zip(&statuses) {
                last = m.when(ended(*leg, *status)).then_ok();
            }
            assert_eq!(chain_result(&last), Some((want, None)), "{statuses:?}");
        }
    }

    #[test]
    fn only_an_answered_call_chains_and_a_hung_up_master_bridges_nothing() {
        let leg = CallId::new();
        assert!(matches!(
            created().when(chain(&[leg])).then_refused(),
            DomainError::FailedPrecondition(_)
        ));
        assert!(matches!(
            answered().when(chain(&[])).then_refused(),
            DomainError::Invalid(_)
        ));
        let mut m = answered()
            .and(chain(&[leg]))
            .and(hangup(HangupRequest::Local, 5));
        m.when(CallCommand::BridgeLeg { leg, at: t(6) })
            .then_nothing();
        // Its legs still end the chain (the bookkeeping outlives the call).
        let evs = m.when(ended(leg, CallStatus::Canceled)).then_ok();
        assert_eq!(chain_result(&evs), Some((ChainResult::Canceled, None)));
    }
}
