//! Queues and their calls. Queue call events carry the queue call as their resource and the
//! queue's statistics (waiting, serving, served, abandoned, average wait) in their data, which
//! are patched onto the queue's row.

use super::campaigns::parent_or_child;
use crate::{ApplyError, Projection, RowOp};
use vbin_event_schema::PublishedEvent;

/// Queues (with statistics) and queue calls.
pub const PROJECTION: Projection = Projection {
    name: "queues",
    aggregate_type: "queue",
    tables: &["rm_queues", "rm_queuecalls"],
    uses_data: true,
    apply,
};

fn apply(event: &PublishedEvent) -> Result<Vec<RowOp>, ApplyError> {
    parent_or_child(
        event,
        ("queue", "rm_queues"),
        ("queuecall", "rm_queuecalls"),
        "stats",
    )
}
