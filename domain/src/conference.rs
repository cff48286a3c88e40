//! The Conference aggregate: calls that each hear the mix of the others.
//!
//! Status `pending` (created), `progressing` (from its first member on) and `terminated`
//! (stopped: every member leaves, and its flow goes on). A call is a member at most once at
//! a time; a conference holds at most [`MAX_MEMBERS`].

use crate::{DomainError, ResourceView};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use uuid::Uuid;
use vbin_event_schema::*;

/// Most members at once.
pub const MAX_MEMBERS: usize = 32;

/// Conference commands.
#[derive(Clone, Debug, PartialEq)]
pub enum ConferenceCommand {
    /// Create it.
    Create {
        /// Its id.
        conference_id: ConferenceId,
        /// Owner.
        customer_id: CustomerId,
        /// Label.
        name: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// A call joins (a repeat while it is a member does nothing).
    Join {
        /// The membership's id.
        conferencecall_id: Uuid,
        /// The call.
        call_id: CallId,
        /// When.
        at: DateTime<Utc>,
    },
    /// A member leaves (nothing if it is not one).
    Leave {
        /// The call.
        call_id: CallId,
        /// Why.
        reason: LeaveReason,
        /// When.
        at: DateTime<Utc>,
    },
    /// End it: every member leaves (`stopped`), then it is terminated.
    Stop {
        /// When.
        at: DateTime<Utc>,
    },
}

/// A conference's status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConferenceStatus {
    /// Created, nobody has joined yet.
    #[default]
    Pending,
    /// Someone joined.
    Progressing,
    /// Stopped.
    Terminated,
}

/// A conference's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Conference {
    /// None until created.
    pub id: Option<ConferenceId>,
    /// Owner.
    pub customer_id: CustomerId,
    /// Label.
    pub name: String,
    /// Status.
    pub status: ConferenceStatus,
    /// Members now, by call.
    pub members: BTreeMap<CallId, Conferencecall>,
    /// Created.
    pub tm_create: Option<DateTime<Utc>>,
    /// Last change.
    pub tm_update: Option<DateTime<Utc>>,
    /// Terminated.
    pub tm_end: Option<DateTime<Utc>>,
}

impl Conference {
    /// API view.
    pub fn view(&self) -> Value {
        json!({
            "id": self.id, "type": "conference", "customer_id": self.customer_id,
            "name": self.name, "status": self.status,
            "call_ids": self.members.keys().collect::<Vec<_>>(),
            "tm_create": self.tm_create, "tm_update": self.tm_update, "tm_end": self.tm_end,
        })
    }

    fn decide(&self, command: ConferenceCommand) -> Result<Vec<ConferenceEvent>, DomainError> {
        if let ConferenceCommand::Create {
            conference_id,
            customer_id,
            name,
            at,
        } = command
        {
            if self.id.is_some() {
                return Err(DomainError::AlreadyExists("conference exists".into()));
            }
            return Ok(vec![ConferenceEvent::ConferenceCreated {
                conference_id,
                customer_id,
                name,
                at,
            }]);
        }
        if self.id.is_none() {
            return Err(DomainError::NotFound("conference"));
        }
        Ok(match command {
            ConferenceCommand::Create { .. } => unreachable!("handled above"),
            ConferenceCommand::Join {
                conferencecall_id,
                call_id,
                at,
            } => {
                if self.members.contains_key(&call_id) {
                    return Ok(vec![]);
                }
                if self.status == ConferenceStatus::Terminated {
                    return Err(DomainError::FailedPrecondition(
                        "the conference is terminated".into(),
                    ));
                }
                if self.members.len() >= MAX_MEMBERS {
                    return Err(DomainError::FailedPrecondition(format!(
                        "the conference has {MAX_MEMBERS} members, its most"
                    )));
                }
                vec![ConferenceEvent::ConferencecallJoined {
                    member: Conferencecall {
                        conferencecall_id,
                        call_id,
                        tm_join: at,
                        tm_leave: None,
                    },
                }]
            }
            ConferenceCommand::Leave {
                call_id,
                reason,
                at,
            } => self
                .members
                .get(&call_id)
                .map(|m| left(m, reason, at))
                .into_iter()
                .collect(),
            ConferenceCommand::Stop { at } => {
                if self.status == ConferenceStatus::Terminated {
                    return Ok(vec![]);
                }
                let mut events: Vec<ConferenceEvent> = self
                    .members
                    .values()
                    .map(|m| left(m, LeaveReason::Stopped, at))
                    .collect();
                events.push(ConferenceEvent::ConferenceTerminated { at });
                events
            }
        })
    }

    fn fold(&mut self, event: ConferenceEvent) {
        match event {
            ConferenceEvent::ConferenceCreated {
                conference_id,
                customer_id,
                name,
                at,
            } => {
                *self = Conference {
                    id: Some(conference_id),
                    customer_id,
                    name,
                    tm_create: Some(at),
                    tm_update: Some(at),
                    ..Conference::default()
                }
            }
            ConferenceEvent::ConferencecallJoined { member } => {
                self.status = ConferenceStatus::Progressing;
                self.tm_update = Some(member.tm_join);
                self.members.insert(member.call_id, member);
            }
            ConferenceEvent::ConferencecallLeft { member, .. } => {
                self.tm_update = member.tm_leave;
                self.members.remove(&member.call_id);
            }
            ConferenceEvent::ConferenceTerminated { at } => {
                self.status = ConferenceStatus::Terminated;
                self.tm_update = Some(at);
                self.tm_end = Some(at);
            }
        }
    }
}

fn left(m: &Conferencecall, reason: LeaveReason, at: DateTime<Utc>) -> ConferenceEvent {
    ConferenceEvent::ConferencecallLeft {
        member: Conferencecall {
            tm_leave: Some(at),
            ..m.clone()
        },
        reason,
    }
}

decided_aggregate!(Conference, ConferenceCommand, ConferenceEvent);

impl ResourceView for Conference {
    fn resource_after(&self, _: &ConferenceEvent) -> Value {
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

    fn conference() -> Given<Conference> {
        given_nothing::<Conference>().and(ConferenceCommand::Create {
            conference_id: ConferenceId::new(),
            customer_id: CustomerId::new(),
            name: "standup".into(),
            at: t(0),
        })
    }

    fn join(call_id: CallId) -> ConferenceCommand {
        ConferenceCommand::Join {
            conferencecall_id: Uuid::now_v7(),
            call_id,
            at: t(1),
        }
    }

    #[test]
    fn members_join_once_leave_and_stop_ends_it_for_all() {
        let mut c = conference();
        assert_eq!(c.status, ConferenceStatus::Pending);
        let (a, b) = (CallId::new(), CallId::new());
        c.when(join(a)).then_count(1);
        c.when(join(a)).then_nothing();
        c.when(join(b)).then_count(1);
        assert_eq!(c.status, ConferenceStatus::Progressing);
        let leave = |call_id| ConferenceCommand::Leave {
            call_id,
            reason: LeaveReason::Hangup,
            at: t(5),
        };
        c.when(leave(a)).then_count(1);
        c.when(leave(a)).then_nothing();
        let evs = c.when(ConferenceCommand::Stop { at: t(9) }).then_ok();
        assert!(matches!(
            &evs[..],
            [
                ConferenceEvent::ConferencecallLeft {
                    reason: LeaveReason::Stopped,
                    ..
                },
                ConferenceEvent::ConferenceTerminated { .. }
            ]
        ));
        assert!(c.members.is_empty());
        assert_eq!(c.status, ConferenceStatus::Terminated);
        c.when(ConferenceCommand::Stop { at: t(10) }).then_nothing();
        assert!(matches!(
            c.when(join(CallId::new())).then_refused(),
            DomainError::FailedPrecondition(_)
        ));
    }

    #[test]
    fn a_full_conference_refuses_another_member() {
        let mut c = conference();
        for _ in 0..MAX_MEMBERS {
            c.when(join(CallId::new())).then_count(1);
        }
        assert!(matches!(
            c.when(join(CallId::new())).then_refused(),
            DomainError::FailedPrecondition(_)
        ));
    }
}
