//! Calls: one row per call in `rm_calls`, the call's API view after its latest event.

use crate::{upsert_resource, ApplyError, Projection, RowOp};
use vbin_event_schema::{CallEvent, PublishedEvent};

/// The calls projection.
pub const PROJECTION: Projection = Projection {
    name: "calls",
    aggregate_type: CallEvent::AGGREGATE,
    tables: &["rm_calls"],
    uses_data: false,
    apply,
};

fn apply(event: &PublishedEvent) -> Result<Vec<RowOp>, ApplyError> {
    if event.resource_type().as_deref() != Some("call") {
        return Err(ApplyError(format!(
            "{} carries no call view",
            event.event_type
        )));
    }
    Ok(vec![upsert_resource("rm_calls", event)?])
}
