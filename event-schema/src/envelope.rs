//! The envelope every committed event travels in on NATS JetStream.

use crate::AggregateEvent;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
use uuid::Uuid;

/// The JetStream stream that carries every committed event.
pub const STREAM_NAME: &str = "VBIN_EVENTS";
/// Subjects are `vbin.events.<customer_id>.<aggregate_type>.<event_type>`.
pub const SUBJECT_PREFIX: &str = "vbin.events";

/// The subject an event is published on.
pub fn subject_for(customer_id: &Uuid, aggregate_type: &str, event_type: &str) -> String {
    format!("{SUBJECT_PREFIX}.{customer_id}.{aggregate_type}.{event_type}")
}

/// The subject filter of the events `event_type` (`*`: every one) of `aggregate_type` (`*`:
/// every one), across all customers: `vbin.events.*.<aggregate_type>.<event_type>`.
pub fn subject_filter(aggregate_type: &str, event_type: &str) -> String {
    format!("{SUBJECT_PREFIX}.*.{aggregate_type}.{event_type}")
}

/// One committed event as published (JSON body of the NATS message, `Nats-Msg-Id` = event_id).
///
/// `data` is the event payload (secrets redacted); `resource` is the affected resource as the
/// API shows it right after the event (`{id, type, ...}`), which webhooks and the WebSocket
/// send as their `data`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublishedEvent {
    /// Unique id of the event (UUIDv7).
    pub event_id: Uuid,
    /// e.g. `call_created`.
    pub event_type: String,
    /// Schema version of `data`.
    pub event_version: String,
    /// When the event was recorded (commit transaction time).
    pub timestamp: DateTime<Utc>,
    /// The tenant.
    pub customer_id: Uuid,
    /// e.g. `call`.
    pub aggregate_type: String,
    /// The aggregate instance.
    pub aggregate_id: Uuid,
    /// 1-based position of the event within its aggregate.
    pub sequence: i64,
    /// Position in the global log (unique, not gap-free, not commit-ordered).
    pub global_position: i64,
    /// actor, request_id, correlation_id, causation_id.
    pub metadata: Value,
    /// The event payload.
    pub data: Value,
    /// The resource after the event.
    pub resource: Value,
}

/// Why a published event could not be read as the type asked for.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The event belongs to another aggregate type than the one asked for.
    #[error("{event_type} is a {aggregate_type} event, not a {expected} event")]
    Aggregate {
        /// The event's type.
        event_type: String,
        /// The event's aggregate type.
        aggregate_type: String,
        /// The aggregate type asked for.
        expected: &'static str,
    },
    /// `data` (or `resource`) does not deserialize as the type asked for.
    #[error("{event_type} {event_version}: {part} is not a {target}: {source}")]
    Json {
        /// The event's type.
        event_type: String,
        /// The event's version.
        event_version: String,
        /// `data` or `resource`.
        part: &'static str,
        /// The type asked for.
        target: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
}

impl PublishedEvent {
    /// The typed event: `data` lifted to the current version (a no-op for what the relay
    /// publishes, which is current already) and decoded as `E`, which must be the event enum
    /// of the event's aggregate type.
    pub fn decode<E: AggregateEvent>(&self) -> Result<E, DecodeError> {
        if self.aggregate_type != E::AGGREGATE {
            return Err(DecodeError::Aggregate {
                event_type: self.event_type.clone(),
                aggregate_type: self.aggregate_type.clone(),
                expected: E::AGGREGATE,
            });
        }
        let data = if crate::upcast::is_current(&self.event_type, &self.event_version) {
            Cow::Borrowed(&self.data)
        } else {
            let (_, data) =
                crate::upcast::to_current(&self.event_type, &self.event_version, self.data.clone());
            Cow::Owned(data)
        };
        E::deserialize(&*data).map_err(|source| self.json_error::<E>("data", source))
    }

    /// The resource view (`resource`) decoded as `V`, typically one of the partial views of
    /// [`crate::views`].
    pub fn view<V: DeserializeOwned>(&self) -> Result<V, DecodeError> {
        V::deserialize(&self.resource).map_err(|source| self.json_error::<V>("resource", source))
    }

    /// The `type` of the resource view (`call`, `agent`, `queuecall`...), if it has one.
    pub fn resource_type(&self) -> Option<&str> {
        self.resource.get("type").and_then(Value::as_str)
    }

    /// The `id` of the resource view as written, if it has one.
    pub fn resource_id(&self) -> Option<&str> {
        self.resource.get("id").and_then(Value::as_str)
    }

    /// The correlation id in the metadata (empty if none).
    pub fn correlation_id(&self) -> &str {
        self.metadata
            .get("correlation_id")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    fn json_error<T>(&self, part: &'static str, source: serde_json::Error) -> DecodeError {
        DecodeError::Json {
            event_type: self.event_type.clone(),
            event_version: self.event_version.clone(),
            part,
            target: std::any::type_name::<T>(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::CallView;
    use crate::{CallEvent, CallStatus, CampaignId, HangupBy, QueueEvent};
    use serde_json::json;

    fn envelope(event_type: &str, version: &str, data: Value, resource: Value) -> PublishedEvent {
        PublishedEvent {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            event_version: version.into(),
            timestamp: Utc::now(),
            customer_id: Uuid::now_v7(),
            aggregate_type: CallEvent::AGGREGATE.into(),
            aggregate_id: Uuid::now_v7(),
            sequence: 4,
            global_position: 9,
            metadata: json!({"correlation_id": "c-1"}),
            data,
            resource,
        }
    }

    #[test]
    fn decodes_typed_events_and_views() {
        let campaign = CampaignId::new();
        let e = envelope(
            CallEvent::CALL_HUNGUP,
            "1.0",
            json!({"type": "call_hungup", "status": "busy", "hangup_by": "remote",
                   "hangup_cause": "user_busy", "duration": 0, "at": "2025-01-02T03:04:05Z"}),
            json!({"id": "x", "type": "call", "campaign_id": campaign}),
        );
        match e.decode::<CallEvent>().unwrap() {
            CallEvent::CallHungup {
                status, hangup_by, ..
            } => {
                assert_eq!(status, CallStatus::Busy);
                assert_eq!(hangup_by, HangupBy::Remote);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(e.view::<CallView>().unwrap().campaign_id, Some(campaign));
        assert_eq!(
            (e.resource_type(), e.resource_id()),
            (Some("call"), Some("x"))
        );
        assert_eq!(e.correlation_id(), "c-1");
        // Another aggregate's events: refused, not mis-decoded.
        let err = e.decode::<QueueEvent>().unwrap_err();
        assert!(matches!(err, DecodeError::Aggregate { .. }), "{err}");
    }

    #[test]
    fn decode_lifts_old_versions_and_keeps_the_serde_cause() {
        let v1 = json!({"type": "call_created", "call_id": Uuid::now_v7(),
            "customer_id": Uuid::now_v7(), "source": "+15550001111",
            "destination": "+15550002222", "at": "2025-01-02T03:04:05Z"});
        let e = envelope(CallEvent::CALL_CREATED, "1.0", v1.clone(), Value::Null);
        assert!(matches!(
            e.decode::<CallEvent>().unwrap(),
            CallEvent::CallCreated {
                dial_timeout_ms: 30_000,
                ..
            }
        ));
        // As current, the 1.0 payload lacks fields.
        let e = envelope(CallEvent::CALL_CREATED, "3.0", v1, Value::Null);
        let err = e.decode::<CallEvent>().unwrap_err();
        let DecodeError::Json { part, source, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(*part, "data");
        assert!(source.to_string().contains("missing field"), "{source}");
        assert!(std::error::Error::source(&err).is_some());
        assert!(err.to_string().contains("call_created 3.0"), "{err}");
    }
}
