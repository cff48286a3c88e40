//! Upcasters: lift stored events of older versions to the current shape on load and replay.
//!
//! History:
//! - `call_created` 1.0 -> 2.0: 1.0 carried only call_id, customer_id, source, destination and
//!   at. 2.0 adds direction (1.0 calls were all outgoing), variables (none), dial_timeout_ms
//!   (1.0 dialed with the then-fixed 30 s) and campaign_id (none).
//! - `call_created` 2.0 -> 3.0: adds activeflow_id (no flow) and sandbox (no script).
//! - `call_created` 3.0 -> 4.0: adds trunk_id (the sandbox carrier).
//! - `call_created` 4.0 -> 5.0: adds master_call_id (no master: calls were not chained).
//! - `campaign_created` 1.0 -> 2.0: adds flow_id (no flow).
//! - `outdialtarget_created` 1.0 -> 2.0: adds sandbox (no script).
//! - `outplan_created` 1.0 -> 2.0: adds trunk_id (the sandbox).
//! - `number_created`, `number_updated` 1.0 -> 2.0: add trunk_id (calls from the sandbox
//!   network only).
//! - `recording_started` 1.0 -> 2.0: adds reference_type (1.0 recorded calls only).
//! - `transcript_created` 1.0 -> 2.0: adds call_id, who said it (1.0 transcribed calls only,
//!   whose transcripts name no member).

use crate::{
    CallEvent, CampaignEvent, NumberEvent, OutplanEvent, RecordingEvent, TargetEvent,
    TranscribeEvent,
};
use cqrs_es::persist::{EventUpcaster, SemanticVersionEventUpcaster};
use serde_json::{json, Value};

/// The dial timeout every 1.0 call used.
pub const V1_DIAL_TIMEOUT_MS: u32 = 30_000;

/// `call_created` 1.0 -> 2.0.
pub fn call_created_v1_to_v2(mut payload: Value) -> Value {
    if let Value::Object(m) = &mut payload {
        m.entry("direction").or_insert(json!("outgoing"));
        m.entry("variables").or_insert(json!({}));
        m.entry("dial_timeout_ms")
            .or_insert(json!(V1_DIAL_TIMEOUT_MS));
        m.entry("campaign_id").or_insert(Value::Null);
    }
    payload
}

/// `call_created` 2.0 -> 3.0.
pub fn call_created_v2_to_v3(mut payload: Value) -> Value {
    if let Value::Object(m) = &mut payload {
        m.entry("activeflow_id").or_insert(Value::Null);
        m.entry("sandbox").or_insert(Value::Null);
    }
    payload
}

/// `call_created` 3.0 -> 4.0.
pub fn call_created_v3_to_v4(mut payload: Value) -> Value {
    if let Value::Object(m) = &mut payload {
        m.entry("trunk_id").or_insert(Value::Null);
    }
    payload
}

/// `call_created` 4.0 -> 5.0.
pub fn call_created_v4_to_v5(mut payload: Value) -> Value {
    if let Value::Object(m) = &mut payload {
        m.entry("master_call_id").or_insert(Value::Null);
    }
    payload
}

/// `campaign_created` 1.0 -> 2.0.
pub fn campaign_created_v1_to_v2(mut payload: Value) -> Value {
    if let Value::Object(m) = &mut payload {
        m.entry("flow_id").or_insert(Value::Null);
    }
    payload
}

/// `outdialtarget_created` 1.0 -> 2.0.
pub fn outdialtarget_created_v1_to_v2(mut payload: Value) -> Value {
    if let Value::Object(m) = &mut payload {
        m.entry("sandbox").or_insert(Value::Null);
    }
    payload
}

/// `outplan_created` 1.0 -> 2.0; `number_created` and `number_updated` 1.0 -> 2.0.
pub fn trunk_id_none(mut payload: Value) -> Value {
    if let Value::Object(m) = &mut payload {
        m.entry("trunk_id").or_insert(Value::Null);
    }
    payload
}

/// `recording_started` 1.0 -> 2.0.
pub fn recording_started_v1_to_v2(mut payload: Value) -> Value {
    if let Value::Object(m) = &mut payload {
        m.entry("reference_type").or_insert(json!("call"));
    }
    payload
}

/// `transcript_created` 1.0 -> 2.0.
pub fn transcript_created_v1_to_v2(mut payload: Value) -> Value {
    if let Value::Object(m) = &mut payload {
        m.entry("call_id").or_insert(Value::Null);
    }
    payload
}

/// Every upcaster, in the order they apply. Used by the event store and by replay.
pub fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
    vec![
        Box::new(SemanticVersionEventUpcaster::new(
            CallEvent::CALL_CREATED,
            "2.0.0",
            Box::new(call_created_v1_to_v2),
        )),
        Box::new(SemanticVersionEventUpcaster::new(
            CallEvent::CALL_CREATED,
            "3.0.0",
            Box::new(call_created_v2_to_v3),
        )),
        Box::new(SemanticVersionEventUpcaster::new(
            CallEvent::CALL_CREATED,
            "4.0.0",
            Box::new(call_created_v3_to_v4),
        )),
        Box::new(SemanticVersionEventUpcaster::new(
            CallEvent::CALL_CREATED,
            "5.0.0",
            Box::new(call_created_v4_to_v5),
        )),
        Box::new(SemanticVersionEventUpcaster::new(
            CampaignEvent::CAMPAIGN_CREATED,
            "2.0.0",
            Box::new(campaign_created_v1_to_v2),
        )),
        Box::new(SemanticVersionEventUpcaster::new(
            TargetEvent::OUTDIALTARGET_CREATED,
            "2.0.0",
            Box::new(outdialtarget_created_v1_to_v2),
        )),
        Box::new(SemanticVersionEventUpcaster::new(
            NumberEvent::NUMBER_CREATED,
            "2.0.0",
            Box::new(trunk_id_none),
        )),
        Box::new(SemanticVersionEventUpcaster::new(
            NumberEvent::NUMBER_UPDATED,
            "2.0.0",
            Box::new(trunk_id_none),
        )),
        Box::new(SemanticVersionEventUpcaster::new(
            OutplanEvent::OUTPLAN_CREATED,
            "2.0.0",
            Box::new(trunk_id_none),
        )),
        Box::new(SemanticVersionEventUpcaster::new(
            RecordingEvent::RECORDING_STARTED,
            "2.0.0",
            Box::new(recording_started_v1_to_v2),
        )),
        Box::new(SemanticVersionEventUpcaster::new(
            TranscribeEvent::TRANSCRIPT_CREATED,
            "2.0.0",
            Box::new(transcript_created_v1_to_v2),
        )),
    ]
}

/// [`upcasters`], built once: the relay and every cache catch-up consult them per event, and
/// building them parses each one's version.
pub fn shared() -> &'static [Box<dyn EventUpcaster>] {
    static ALL: std::sync::LazyLock<Vec<Box<dyn EventUpcaster>>> =
        std::sync::LazyLock::new(upcasters);
    &ALL
}

/// Whether an event of `event_type` at `event_version` is current (no upcaster applies).
pub fn is_current(event_type: &str, event_version: &str) -> bool {
    !shared()
        .iter()
        .any(|u| u.can_upcast(event_type, event_version))
}

/// Lifts one stored event to the current version: returns `(event_version, payload)`. Used by
/// readers outside cqrs-es (the relay, replay) so that every consumer sees current shapes only.
pub fn to_current(event_type: &str, event_version: &str, payload: Value) -> (String, Value) {
    use cqrs_es::persist::SerializedEvent;
    if is_current(event_type, event_version) {
        return (event_version.to_string(), payload);
    }
    let e = SerializedEvent::new(
        String::new(),
        0,
        String::new(),
        event_type.to_string(),
        event_version.to_string(),
        payload,
        Value::Null,
    );
    let up = lift(e);
    (up.event_version, up.payload)
}

/// `event` with every upcaster that applies applied, in order: the one fold the relay's
/// [`to_current`] and the executor's cache catch-up share.
pub fn lift(event: cqrs_es::persist::SerializedEvent) -> cqrs_es::persist::SerializedEvent {
    shared().iter().fold(event, |e, u| {
        if u.can_upcast(&e.event_type, &e.event_version) {
            u.upcast(e)
        } else {
            e
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_number_events_upcast_to_no_trunk() {
        let created = json!({"type":"number_created","number_id":"0191a0d2-7c4e-7b0e-8f00-000000000001",
            "customer_id":"0191a0d2-7c4e-7b0e-8f00-000000000002","number":"+15550001111",
            "call_flow_id":"0191a0d2-7c4e-7b0e-8f00-000000000003","at":"2025-01-02T03:04:05Z"});
        let updated = json!({"type":"number_updated",
            "call_flow_id":"0191a0d2-7c4e-7b0e-8f00-000000000003","at":"2025-01-02T03:04:05Z"});
        for (t, v) in [("number_created", created), ("number_updated", updated)] {
            let (version, payload) = to_current(t, "1.0", v);
            assert_eq!(version, "2.0.0");
            match serde_json::from_value::<NumberEvent>(payload).unwrap() {
                NumberEvent::NumberCreated { trunk_id, .. }
                | NumberEvent::NumberUpdated { trunk_id, .. } => assert_eq!(trunk_id, None),
                other => panic!("{other:?}"),
            }
        }
        assert!(is_current("number_created", "2.0"));
        let plan = json!({"type":"outplan_created","outplan_id":"0191a0d2-7c4e-7b0e-8f00-000000000001",
            "customer_id":"0191a0d2-7c4e-7b0e-8f00-000000000002","name":"p","source":"+15550001111",
            "dial_timeout_ms":30000,"try_interval_ms":0,"max_try_count":1,"at":"2025-01-02T03:04:05Z"});
        let (version, payload) = to_current("outplan_created", "1.0", plan);
        assert_eq!(version, "2.0.0");
        match serde_json::from_value::<OutplanEvent>(payload).unwrap() {
            OutplanEvent::OutplanCreated { trunk_id, .. } => assert_eq!(trunk_id, None),
        }
    }

    #[test]
    fn v1_recordings_and_transcripts_are_of_calls() {
        let started = json!({"type":"recording_started","recording_id":"0191a0d2-7c4e-7b0e-8f00-000000000001",
            "customer_id":"0191a0d2-7c4e-7b0e-8f00-000000000002","reference_id":"0191a0d2-7c4e-7b0e-8f00-000000000003",
            "format":"wav","limits":{},"at":"2025-01-02T03:04:05Z"});
        let (version, payload) = to_current("recording_started", "1.0", started);
        assert_eq!(version, "2.0.0");
        match serde_json::from_value::<RecordingEvent>(payload).unwrap() {
            RecordingEvent::RecordingStarted { reference_type, .. } => {
                assert_eq!(reference_type, crate::ReferenceType::Call)
            }
            other => panic!("{other:?}"),
        }
        let transcript = json!({"type":"transcript_created","transcript_id":"0191a0d2-7c4e-7b0e-8f00-000000000001",
            "direction":"in","message":"hello","tm_transcript_ms":1200,"at":"2025-01-02T03:04:05Z"});
        let (version, payload) = to_current("transcript_created", "1.0", transcript);
        assert_eq!(version, "2.0.0");
        match serde_json::from_value::<TranscribeEvent>(payload).unwrap() {
            TranscribeEvent::TranscriptCreated { call_id, .. } => assert_eq!(call_id, None),
            other => panic!("{other:?}"),
        }
        assert!(is_current("recording_started", "2.0"));
        assert!(is_current("transcript_created", "2.0"));
        assert!(is_current("recording_ended", "1.0"));
    }

    #[test]
    fn v1_call_created_upcasts_and_deserializes() {
        let v1 = json!({"type":"call_created","call_id":"0191a0d2-7c4e-7b0e-8f00-000000000001",
            "customer_id":"0191a0d2-7c4e-7b0e-8f00-000000000002","source":"+15550001111",
            "destination":"+15550002222","at":"2025-01-02T03:04:05Z"});
        let (version, payload) = to_current("call_created", "1.0", v1);
        assert_eq!(version, "5.0.0");
        let e: CallEvent = serde_json::from_value(payload).unwrap();
        match e {
            CallEvent::CallCreated {
                dial_timeout_ms,
                variables,
                activeflow_id,
                sandbox,
                trunk_id,
                master_call_id,
                ..
            } => {
                assert_eq!(dial_timeout_ms, 30_000);
                assert!(variables.is_empty());
                assert_eq!((activeflow_id, sandbox, trunk_id), (None, None, None));
                assert_eq!(master_call_id, None);
            }
            other => panic!("{other:?}"),
        }
        assert!(!upcasters()[0].can_upcast("call_created", "2.0"));
        assert!(upcasters()[1].can_upcast("call_created", "2.0"));
        assert!(upcasters()[2].can_upcast("call_created", "3.0"));
        assert!(upcasters()[3].can_upcast("call_created", "4.0"));
        assert!(is_current("call_created", "5.0"));
    }
}
