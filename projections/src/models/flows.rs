//! Flows (`rm_flows`; a deleted flow's row is removed), activeflows (`rm_activeflows`) and
//! recordings (`rm_recordings`) and numbers (`rm_numbers`).

use crate::{upsert_resource, ApplyError, Projection, RowOp};
use vbin_event_schema::{ActiveflowEvent, FlowEvent, NumberEvent, PublishedEvent, RecordingEvent};

/// The flows projection.
pub const FLOWS: Projection = Projection {
    name: "flows",
    aggregate_type: FlowEvent::AGGREGATE,
    tables: &["rm_flows"],
    uses_data: false,
    apply: apply_flow,
};

/// The activeflows projection.
pub const ACTIVEFLOWS: Projection = Projection {
    name: "activeflows",
    aggregate_type: ActiveflowEvent::AGGREGATE,
    tables: &["rm_activeflows"],
    uses_data: false,
    apply: apply_activeflow,
};

fn apply_flow(event: &PublishedEvent) -> Result<Vec<RowOp>, ApplyError> {
    if event.event_type == FlowEvent::FLOW_DELETED {
        return Ok(vec![RowOp::Delete {
            table: "rm_flows",
            id: event.aggregate_id,
        }]);
    }
    Ok(vec![upsert_resource("rm_flows", event)?])
}

fn apply_activeflow(event: &PublishedEvent) -> Result<Vec<RowOp>, ApplyError> {
    Ok(vec![upsert_resource("rm_activeflows", event)?])
}

/// The recordings projection.
pub const RECORDINGS: Projection = Projection {
    name: "recordings",
    aggregate_type: RecordingEvent::AGGREGATE,
    tables: &["rm_recordings"],
    uses_data: false,
    apply: apply_recording,
};

fn apply_recording(event: &PublishedEvent) -> Result<Vec<RowOp>, ApplyError> {
    Ok(vec![upsert_resource("rm_recordings", event)?])
}

/// The numbers projection (a released number's row is removed).
pub const NUMBERS: Projection = Projection {
    name: "numbers",
    aggregate_type: NumberEvent::AGGREGATE,
    tables: &["rm_numbers"],
    uses_data: false,
    apply: apply_number,
};

fn apply_number(event: &PublishedEvent) -> Result<Vec<RowOp>, ApplyError> {
    if event.event_type == NumberEvent::NUMBER_DELETED {
        return Ok(vec![RowOp::Delete {
            table: "rm_numbers",
            id: event.aggregate_id,
        }]);
    }
    Ok(vec![upsert_resource("rm_numbers", event)?])
}
