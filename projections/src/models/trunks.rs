//! SIP trunks (`rm_trunks`; a deleted trunk's row is removed).

use crate::{upsert_resource, ApplyError, Projection, RowOp};
use vbin_event_schema::{PublishedEvent, TrunkEvent};

/// The trunks projection.
pub const TRUNKS: Projection = Projection {
    name: "trunks",
    aggregate_type: TrunkEvent::AGGREGATE,
    tables: &["rm_trunks"],
    uses_data: false,
    apply: apply_trunk,
};

fn apply_trunk(event: &PublishedEvent) -> Result<Vec<RowOp>, ApplyError> {
    if event.event_type == TrunkEvent::TRUNK_DELETED {
        return Ok(vec![RowOp::Delete {
            table: "rm_trunks",
            id: event.aggregate_id,
        }]);
    }
    Ok(vec![upsert_resource("rm_trunks", event)?])
}
