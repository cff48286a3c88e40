//! Conferences and their calls. Every conference event's resource is the conference; member
//! events carry the membership in their data, from which the `conferencecalls` row is built.

use crate::{upsert_resource, ApplyError, Projection, RowOp};
use serde_json::json;
use vbin_event_schema::{raw, ConferenceEvent, PublishedEvent};

/// Conferences and conference calls.
pub const PROJECTION: Projection = Projection {
    name: "conferences",
    aggregate_type: ConferenceEvent::AGGREGATE,
    tables: &["rm_conferences", "rm_conferencecalls"],
    uses_data: true,
    apply,
};

fn apply(event: &PublishedEvent) -> Result<Vec<RowOp>, ApplyError> {
    let mut ops = vec![upsert_resource("rm_conferences", event)?];
    let (member, status, reason) = match event.decode()? {
        ConferenceEvent::ConferencecallJoined { member } => (member, "joined", None),
        ConferenceEvent::ConferencecallLeft { member, reason } => (member, "leaved", Some(reason)),
        ConferenceEvent::ConferenceCreated { .. }
        | ConferenceEvent::ConferenceTerminated { .. } => return Ok(ops),
    };
    ops.push(RowOp::Upsert {
        table: "rm_conferencecalls",
        id: member.conferencecall_id,
        customer_id: event.customer_id,
        body: raw(&json!({
            "id": member.conferencecall_id, "type": "conferencecall",
            "customer_id": event.customer_id, "conference_id": event.aggregate_id,
            "call_id": member.call_id, "status": status, "leave_reason": reason,
            "tm_create": member.tm_join, "tm_leave": member.tm_leave,
            "tm_update": member.tm_leave.unwrap_or(member.tm_join),
        })),
    });
    Ok(ops)
}
