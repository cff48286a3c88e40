//! Transcriptions and their transcripts: `transcribe_started` and `transcribe_completed`
//! carry the transcription's view (`rm_transcribes`), `transcript_created` the transcript's
//! (`rm_transcripts`). A transcript does not change its transcription's row.

use crate::{upsert_resource, ApplyError, Projection, RowOp};
use vbin_event_schema::{PublishedEvent, TranscribeEvent};

/// Transcriptions and transcripts.
pub const PROJECTION: Projection = Projection {
    name: "transcribes",
    aggregate_type: TranscribeEvent::AGGREGATE,
    tables: &["rm_transcribes", "rm_transcripts"],
    uses_data: false,
    apply,
};

fn apply(event: &PublishedEvent) -> Result<Vec<RowOp>, ApplyError> {
    match event.resource_type().as_deref() {
        Some("transcribe") => Ok(vec![upsert_resource("rm_transcribes", event)?]),
        Some("transcript") => Ok(vec![upsert_resource("rm_transcripts", event)?]),
        other => Err(ApplyError(format!(
            "{}: unknown resource type {other:?}",
            event.event_type
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use uuid::Uuid;

    fn event(resource: Value) -> PublishedEvent {
        PublishedEvent {
            event_id: Uuid::now_v7(),
            event_type: TranscribeEvent::TRANSCRIPT_CREATED.into(),
            event_version: "1.0".into(),
            timestamp: chrono::Utc::now(),
            customer_id: Uuid::now_v7(),
            aggregate_type: TranscribeEvent::AGGREGATE.into(),
            aggregate_id: Uuid::now_v7(),
            sequence: 2,
            global_position: 7,
            metadata: vbin_event_schema::raw(&Value::Null),
            data: vbin_event_schema::raw(&Value::Null),
            resource: vbin_event_schema::raw(&resource),
        }
    }

    #[test]
    fn each_view_goes_to_its_table() {
        let id = Uuid::now_v7();
        let ops = apply(&event(json!({"id": id, "type": "transcript"}))).unwrap();
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].table(), "rm_transcripts");
        assert_eq!(ops[0].id(), id);
        let ops = apply(&event(json!({"id": id, "type": "transcribe"}))).unwrap();
        assert_eq!(ops[0].table(), "rm_transcribes");
        assert!(apply(&event(json!({"id": id, "type": "call"}))).is_err());
    }
}
