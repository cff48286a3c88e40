//! Customers, agents and access keys (all events of the Customer aggregate). Views carry no
//! secrets: no password hashes, key hashes or webhook secrets (those stay on the command side).
//! Deleted agents and access keys are removed from the read model; the audit trail keeps them.

use crate::{resource_id, upsert_resource, ApplyError, Projection, RowOp};
use vbin_event_schema::{CustomerEvent, PublishedEvent};

/// The identity projection.
pub const PROJECTION: Projection = Projection {
    name: "customers",
    aggregate_type: CustomerEvent::AGGREGATE,
    tables: &["rm_customers", "rm_agents", "rm_accesskeys"],
    uses_data: false,
    apply,
};

fn apply(event: &PublishedEvent) -> Result<Vec<RowOp>, ApplyError> {
    let table = match event.resource_type().as_deref() {
        Some("customer") => "rm_customers",
        Some("agent") => "rm_agents",
        Some("accesskey") => "rm_accesskeys",
        other => {
            return Err(ApplyError(format!(
                "{}: unknown resource type {other:?}",
                event.event_type
            )))
        }
    };
    // By name, not by decoding: this projection reads no data (replay leaves it null).
    Ok(vec![match event.event_type.as_str() {
        CustomerEvent::AGENT_DELETED | CustomerEvent::ACCESSKEY_DELETED => RowOp::Delete {
            table,
            id: resource_id(event)?,
        },
        _ => upsert_resource(table, event)?,
    }])
}
