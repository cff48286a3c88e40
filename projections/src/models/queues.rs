//! Queues and their calls. Queue call events carry the queue call as their resource and the
//! queue's statistics (waiting, serving, served, abandoned, average wait) in their data, which
//! are patched onto the queue's row.

use super::campaigns::parent_or_child;
use crate::{ApplyError, Projection, RowOp};
use serde_json::{json, Value};
use vbin_event_schema::{PublishedEvent, QueueEvent};

/// Queues (with statistics) and queue calls.
pub const PROJECTION: Projection = Projection {
    name: "queues",
    aggregate_type: QueueEvent::AGGREGATE,
    tables: &["rm_queues", "rm_queuecalls"],
    uses_data: true,
    apply,
};

fn apply(event: &PublishedEvent) -> Result<Vec<RowOp>, ApplyError> {
    parent_or_child(
        event,
        ("queue", "rm_queues"),
        ("queuecall", "rm_queuecalls"),
        stats,
    )
}

/// The queue's statistics a queue call event carries.
fn stats(event: &PublishedEvent) -> Result<Value, ApplyError> {
    match event.decode()? {
        QueueEvent::QueuecallJoined { stats, .. }
        | QueueEvent::QueuecallServed { stats, .. }
        | QueueEvent::QueuecallRequeued { stats, .. }
        | QueueEvent::QueuecallAbandoned { stats, .. }
        | QueueEvent::QueuecallDone { stats, .. } => Ok(json!(stats)),
        QueueEvent::QueueCreated { .. } | QueueEvent::QueueUpdated { .. } => {
            Err(ApplyError(format!("{} without stats", event.event_type)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;
    use vbin_event_schema::{AbandonReason, CallId, QueueStats, Queuecall};

    #[test]
    fn a_queuecall_event_patches_the_queue_with_its_stats_and_the_calls_last_change() {
        let at = chrono::Utc::now();
        let call = Queuecall {
            queuecall_id: Uuid::now_v7(),
            call_id: CallId::new(),
            tm_join: at,
            agent_id: None,
            tm_service: None,
            wait_ms: Some(700),
            tried: vec![],
        };
        let stats = QueueStats {
            waiting: 0,
            abandoned: 1,
            ..QueueStats::default()
        };
        let payload = json!(QueueEvent::QueuecallAbandoned {
            call: call.clone(),
            reason: AbandonReason::Timeout,
            stats,
            at,
        });
        let view = json!({"id": call.queuecall_id, "type": "queuecall", "tm_update": at});
        let e = PublishedEvent {
            event_id: Uuid::now_v7(),
            event_type: QueueEvent::QUEUECALL_ABANDONED.into(),
            event_version: "1.0".into(),
            timestamp: at,
            customer_id: Uuid::now_v7(),
            aggregate_type: QueueEvent::AGGREGATE.into(),
            aggregate_id: Uuid::now_v7(),
            sequence: 3,
            global_position: 5,
            metadata: vbin_event_schema::raw(&Value::Null),
            resource: vbin_event_schema::raw(&view),
            data: vbin_event_schema::raw(&payload),
        };
        let ops = apply(&e).unwrap();
        assert_eq!(ops[0].table(), "rm_queuecalls");
        // What the JSON-indexing apply produced: data.stats plus the view's tm_update.
        let mut want = payload["stats"].clone();
        want["tm_update"] = view["tm_update"].clone();
        assert_eq!(
            ops[1],
            RowOp::Patch {
                table: "rm_queues",
                id: e.aggregate_id,
                patch: want,
            }
        );
    }
}
