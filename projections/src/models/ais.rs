//! AI voice agents: assistants (`rm_ais`; a deleted assistant's row is removed), and
//! conversations (`rm_aicalls`) with their messages (`rm_aimessages`): `aimessage_created`
//! carries the message's view, the other events the conversation's.

use crate::{upsert_resource, ApplyError, Projection, RowOp};
use vbin_event_schema::{AiEvent, AicallEvent, PublishedEvent};

/// The assistants projection.
pub const AIS: Projection = Projection {
    name: "ais",
    aggregate_type: AiEvent::AGGREGATE,
    tables: &["rm_ais"],
    uses_data: false,
    apply: apply_ai,
};

/// Conversations and their messages.
pub const AICALLS: Projection = Projection {
    name: "aicalls",
    aggregate_type: AicallEvent::AGGREGATE,
    tables: &["rm_aicalls", "rm_aimessages"],
    uses_data: false,
    apply: apply_aicall,
};

fn apply_ai(event: &PublishedEvent) -> Result<Vec<RowOp>, ApplyError> {
    if event.event_type == AiEvent::AI_DELETED {
        return Ok(vec![RowOp::Delete {
            table: "rm_ais",
            id: event.aggregate_id,
        }]);
    }
    Ok(vec![upsert_resource("rm_ais", event)?])
}

fn apply_aicall(event: &PublishedEvent) -> Result<Vec<RowOp>, ApplyError> {
    match event.resource_type().as_deref() {
        Some("aicall") => Ok(vec![upsert_resource("rm_aicalls", event)?]),
        Some("aimessage") => Ok(vec![upsert_resource("rm_aimessages", event)?]),
        other => Err(ApplyError(format!(
            "{}: unknown resource type {other:?}",
            event.event_type
        ))),
    }
}
