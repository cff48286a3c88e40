//! Events of the Conference aggregate: a room whose members (calls) each hear the mix of the
//! others. Every event's resource is the conference (with its members), so the WebSocket
//! topic is `customer_id:<c>:conference:<id>`; member events carry the member in their data
//! for the `conferencecalls` read model.

use crate::types::*;
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A call in a conference, as it is after the event that carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conferencecall {
    /// The membership's id.
    pub conferencecall_id: Uuid,
    /// The call.
    pub call_id: CallId,
    /// When it joined.
    pub tm_join: DateTime<Utc>,
    /// When it left (none while in).
    pub tm_leave: Option<DateTime<Utc>>,
}

/// Why a member left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// Its call ended.
    Hangup,
    /// The conference was stopped (its flow goes on).
    Stopped,
}

/// Events of a conference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ConferenceEvent {
    /// A conference was created (status `pending` until its first member joins).
    ConferenceCreated {
        /// It.
        conference_id: ConferenceId,
        /// Owner.
        customer_id: CustomerId,
        /// Label.
        name: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// A call joined (the conference is `progressing` from its first member on).
    ConferencecallJoined {
        /// The member.
        member: Conferencecall,
    },
    /// A call left.
    ConferencecallLeft {
        /// The member, with `tm_leave`.
        member: Conferencecall,
        /// Why.
        reason: LeaveReason,
    },
    /// The conference ended (every member left first); it takes no members any more.
    ConferenceTerminated {
        /// When.
        at: DateTime<Utc>,
    },
}

events!(ConferenceEvent in "conference" {
    ConferenceCreated => CONFERENCE_CREATED = "conference_created",
    ConferencecallJoined => CONFERENCECALL_JOINED = "conferencecall_joined",
    ConferencecallLeft => CONFERENCECALL_LEFT = "conferencecall_left",
    ConferenceTerminated => CONFERENCE_TERMINATED = "conference_terminated",
});
version_1!(ConferenceEvent);
