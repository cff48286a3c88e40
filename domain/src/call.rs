//! The Call aggregate: one phone call and its status machine.

use crate::{DomainError, ResourceView};
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use vbin_event_schema::{
    flow::SandboxScript, ActiveflowId, CallDirection, CallEvent, CallId, CallStatus, CampaignId,
    CustomerId, HangupBy, HangupCause, TrunkId, E164,
};

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
            "variables": self.variables,
            "tm_create": self.tm_create,
            "tm_ringing": self.tm_ringing,
            "tm_progressing": self.tm_progressing,
            "tm_hangup": self.tm_hangup,
            "tm_update": self.tm_update,
        })
    }

    fn decide(&self, command: CallCommand) -> Result<Vec<CallEvent>, DomainError> {
        let CallCommand::Create { call, at } = command else {
            if self.id.is_none() {
                return Err(DomainError::NotFound("call"));
            }
            return Ok(self.decide_progress(command).into_iter().collect());
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
            at,
        }])
    }

    /// At most one event; none when the command is stale or repeated (forward-only machine).
    fn decide_progress(&self, command: CallCommand) -> Option<CallEvent> {
        let (to, event) = match command {
            CallCommand::Create { .. } => return None,
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
                at,
            } => {
                *self = Call {
                    activeflow_id,
                    sandbox,
                    trunk_id,
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
}
