//! The envelope every committed event travels in on NATS JetStream.

use crate::AggregateEvent;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;
use uuid::Uuid;

/// The NATS header naming the installation that published an event (its id): consumers skip,
/// as provably not theirs, an event another installation published.
pub const INSTALLATION_HEADER: &str = "Vbin-Installation";

/// An installation's namespace on NATS: its stream `VBIN_<NS>` carries the subjects
/// `vbin.<ns>.<customer_id>.<aggregate_type>.<event_type>`, and its durable consumers live in
/// that stream (JetStream scopes consumer names per stream). Two installations with different
/// namespaces never see each other's events on one NATS server.
///
/// A namespace is 1 to 32 of `a-z 0-9 _ -`. An installation's default is the first 12 hex
/// digits of its id; [`Namespace::LEGACY`] is the one every installation used before
/// namespaces existed (stream `VBIN_EVENTS`, subjects `vbin.events.>`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Namespace(String);

/// Why a string is not a [`Namespace`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a NATS namespace is 1 to 32 characters of a-z, 0-9, _ and -, not {0:?}")]
pub struct NamespaceError(pub String);

impl Namespace {
    /// The namespace of installations that predate namespaces: their stream keeps working.
    pub const LEGACY: &'static str = "events";

    /// Parses a namespace.
    pub fn new(s: &str) -> Result<Self, NamespaceError> {
        let ok = (1..=32).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(NamespaceError(s.to_string()))
        }
    }

    /// The default namespace of installation `id`: its first 12 hex digits (48 bits).
    pub fn of_installation(id: Uuid) -> Self {
        Self(id.simple().to_string()[..12].to_string())
    }

    /// The namespace as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The JetStream stream: `VBIN_<NS>` (`VBIN_EVENTS` for the legacy namespace).
    pub fn stream(&self) -> String {
        format!("VBIN_{}", self.0.to_ascii_uppercase())
    }

    /// The subject prefix, `vbin.<ns>`.
    pub fn prefix(&self) -> String {
        format!("vbin.{}", self.0)
    }

    /// `rel` (e.g. `*.call.*`, `>`) under this namespace.
    pub fn subject(&self, rel: &str) -> String {
        format!("vbin.{}.{rel}", self.0)
    }

    /// The subject an event is published on.
    pub fn subject_for(
        &self,
        customer_id: &Uuid,
        aggregate_type: &str,
        event_type: &str,
    ) -> String {
        self.subject(&relative_subject_for(
            customer_id,
            aggregate_type,
            event_type,
        ))
    }
}

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who is publishing and consuming: the installation's id (one per database, made by its first
/// migration) and the namespace it uses on NATS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installation {
    /// The installation's id.
    pub id: Uuid,
    /// Its namespace on NATS.
    pub namespace: Namespace,
}

impl Installation {
    /// The prefix of the installation's Redis keys, `vbin:<first 12 hex digits of its id>:`
    /// (its id, not its namespace: two databases never share it, whatever their NATS).
    pub fn redis_prefix(&self) -> String {
        format!("vbin:{}:", &self.id.simple().to_string()[..12])
    }

    /// An installation of its own, with its default namespace (tools and tests that need one).
    pub fn ephemeral() -> Self {
        let id = Uuid::new_v4();
        Self {
            id,
            namespace: Namespace::of_installation(id),
        }
    }
}

/// An event's subject within a namespace: `<customer_id>.<aggregate_type>.<event_type>`.
pub fn relative_subject_for(customer_id: &Uuid, aggregate_type: &str, event_type: &str) -> String {
    format!("{customer_id}.{aggregate_type}.{event_type}")
}

/// The subject filter, within a namespace, of the events `event_type` (`*`: every one) of
/// `aggregate_type` (`*`: every one), across all customers: `*.<aggregate_type>.<event_type>`.
pub fn relative_subject_filter(aggregate_type: &str, event_type: &str) -> String {
    format!("*.{aggregate_type}.{event_type}")
}

/// One committed event as published (JSON body of the NATS message, `Nats-Msg-Id` = event_id).
///
/// `data` is the event payload (secrets redacted); `resource` is the affected resource as the
/// API shows it right after the event (`{id, type, ...}`), which webhooks and the WebSocket
/// send as their `data`.
///
/// The three JSON parts are kept as raw JSON text: the relay reads them from the log as text
/// and publishes them as they are, webhooks and the WebSocket copy `resource` into their
/// bodies, and a consumer decodes only what it reads ([`PublishedEvent::decode`],
/// [`PublishedEvent::view`]). Held as `Value` trees they were built, cloned per handler and
/// dropped on every delivery, about a tenth of vbin's CPU per command (issue 23).
#[derive(Clone, Debug, Serialize, Deserialize)]
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
    pub metadata: Box<RawValue>,
    /// The event payload.
    pub data: Box<RawValue>,
    /// The resource after the event.
    pub resource: Box<RawValue>,
}

/// Equal when every field is, the JSON parts compared as written (the same JSON written with
/// other spacing or key order is not equal: compare [`PublishedEvent::values`] for that).
impl PartialEq for PublishedEvent {
    fn eq(&self, o: &Self) -> bool {
        self.event_id == o.event_id
            && self.event_type == o.event_type
            && self.event_version == o.event_version
            && self.timestamp == o.timestamp
            && self.customer_id == o.customer_id
            && self.aggregate_type == o.aggregate_type
            && self.aggregate_id == o.aggregate_id
            && self.sequence == o.sequence
            && self.global_position == o.global_position
            && self.metadata.get() == o.metadata.get()
            && self.data.get() == o.data.get()
            && self.resource.get() == o.resource.get()
    }
}

/// `v` as raw JSON text (for building a [`PublishedEvent`] from values).
pub fn raw(v: &Value) -> Box<RawValue> {
    // A `Value` always serializes (its map keys are strings).
    serde_json::value::to_raw_value(v).expect("a JSON value serializes")
}

/// The string fields `id` and `type` of an object, borrowed where they have no escapes.
#[derive(Deserialize)]
struct IdAndType<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed_str")]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type", deserialize_with = "borrowed_str")]
    kind: Option<Cow<'a, str>>,
}

/// The string field `correlation_id` of an object.
#[derive(Deserialize)]
struct Correlation<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed_str")]
    correlation_id: Option<Cow<'a, str>>,
}

/// An optional string borrowed from the text where it has no escapes: serde borrows a
/// `Cow<str>` only as a field of its own, never inside an `Option`.
fn borrowed_str<'de: 'a, 'a, D>(d: D) -> Result<Option<Cow<'a, str>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Borrowed>::deserialize(d)?.map(|b| b.0))
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
        let json_error = |source| self.json_error::<E>("data", source);
        if crate::upcast::is_current(&self.event_type, &self.event_version) {
            return serde_json::from_str(self.data.get()).map_err(json_error);
        }
        let stored: Value = serde_json::from_str(self.data.get()).map_err(json_error)?;
        let (_, data) = crate::upcast::to_current(&self.event_type, &self.event_version, stored);
        E::deserialize(data).map_err(json_error)
    }

    /// The resource view (`resource`) decoded as `V`, typically one of the partial views of
    /// [`crate::views`].
    pub fn view<V: DeserializeOwned>(&self) -> Result<V, DecodeError> {
        serde_json::from_str(self.resource.get())
            .map_err(|source| self.json_error::<V>("resource", source))
    }

    /// The `type` of the resource view (`call`, `agent`, `queuecall`...), if it has one.
    pub fn resource_type(&self) -> Option<Cow<'_, str>> {
        self.resource_type_and_id().0
    }

    /// The `id` of the resource view as written, if it has one.
    pub fn resource_id(&self) -> Option<Cow<'_, str>> {
        self.resource_type_and_id().1
    }

    /// [`PublishedEvent::resource_type`] and [`PublishedEvent::resource_id`] from one reading
    /// of the resource.
    pub fn resource_type_and_id(&self) -> (Option<Cow<'_, str>>, Option<Cow<'_, str>>) {
        match serde_json::from_str::<IdAndType>(self.resource.get()) {
            Ok(r) => (r.kind, r.id),
            Err(_) => (None, None),
        }
    }

    /// The correlation id in the metadata (empty if none).
    pub fn correlation_id(&self) -> Cow<'_, str> {
        serde_json::from_str::<Correlation>(self.metadata.get())
            .ok()
            .and_then(|m| m.correlation_id)
            .unwrap_or_default()
    }

    /// `metadata`, `data` and `resource` as JSON values (for readers that look into them
    /// freely: the audit trail, tools and tests).
    pub fn values(&self) -> (Value, Value, Value) {
        let value = |r: &RawValue| serde_json::from_str(r.get()).unwrap_or(Value::Null);
        (
            value(&self.metadata),
            value(&self.data),
            value(&self.resource),
        )
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
            metadata: raw(&json!({"correlation_id": "c-1"})),
            data: raw(&data),
            resource: raw(&resource),
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
            (e.resource_type().as_deref(), e.resource_id().as_deref()),
            (Some("call"), Some("x"))
        );
        assert!(matches!(e.correlation_id(), Cow::Borrowed("c-1")));
        // Another aggregate's events: refused, not mis-decoded.
        let err = e.decode::<QueueEvent>().unwrap_err();
        assert!(matches!(err, DecodeError::Aggregate { .. }), "{err}");
    }

    #[test]
    fn ids_and_correlation_are_read_from_the_json_as_written() {
        let mut e = envelope(
            CallEvent::CALL_HUNGUP,
            "1.0",
            json!({}),
            json!({"flow": {"id": "inner", "type": "flow"}, "type": "call", "id": "a\"b"}),
        );
        assert_eq!(e.resource_id().as_deref(), Some("a\"b"));
        assert_eq!(e.resource_type().as_deref(), Some("call"));
        // Read in place, copied only where an escape had to be undone.
        assert!(matches!(
            e.resource_type_and_id(),
            (Some(Cow::Borrowed(_)), Some(Cow::Owned(_)))
        ));
        // The wire keeps the parts as written, spacing and key order included.
        e.data = RawValue::from_string(r#"{"z": 1,  "a": [2]}"#.into()).unwrap();
        let wire = serde_json::to_vec(&e).unwrap();
        assert!(String::from_utf8_lossy(&wire).contains(r#""data":{"z": 1,  "a": [2]}"#));
        assert_eq!(serde_json::from_slice::<PublishedEvent>(&wire).unwrap(), e);
        // A resource that is not an object, or ids that are not strings: none.
        e.resource = raw(&Value::Null);
        assert_eq!(e.resource_type_and_id(), (None, None));
        e.metadata = raw(&json!({"actor": "x", "correlation_id": null}));
        assert_eq!(e.correlation_id(), "");
        let (metadata, data, resource) = e.values();
        assert_eq!(
            (metadata["actor"].as_str(), data["a"][0].as_i64(), resource),
            (Some("x"), Some(2), Value::Null)
        );
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
        let e = envelope(CallEvent::CALL_CREATED, "4.0", v1, Value::Null);
        let err = e.decode::<CallEvent>().unwrap_err();
        let DecodeError::Json { part, source, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(*part, "data");
        assert!(source.to_string().contains("missing field"), "{source}");
        assert!(std::error::Error::source(&err).is_some());
        assert!(err.to_string().contains("call_created 4.0"), "{err}");
    }
}

#[cfg(test)]
mod namespace_tests {
    use super::*;

    #[test]
    fn legacy_namespace_is_the_stream_of_old() {
        let ns = Namespace::new(Namespace::LEGACY).unwrap();
        assert_eq!(ns.stream(), "VBIN_EVENTS");
        let c = Uuid::nil();
        assert_eq!(
            ns.subject_for(&c, "call", "call_created"),
            format!("vbin.events.{c}.call.call_created")
        );
    }

    #[test]
    fn an_installations_namespace_is_its_ids_first_digits() {
        let id: Uuid = "3f2a9c1b-7d4e-4a00-8000-000000000001".parse().unwrap();
        let ns = Namespace::of_installation(id);
        assert_eq!(ns.as_str(), "3f2a9c1b7d4e");
        assert_eq!(ns.stream(), "VBIN_3F2A9C1B7D4E");
        assert_eq!(ns.subject(">"), "vbin.3f2a9c1b7d4e.>");
        assert_eq!(
            ns.subject(&relative_subject_filter("call", "*")),
            "vbin.3f2a9c1b7d4e.*.call.*"
        );
    }

    #[test]
    fn bad_namespaces_are_refused() {
        for bad in ["", "Prod", "a.b", "a*", "a>", &"x".repeat(33), "sp ace"] {
            assert!(Namespace::new(bad).is_err(), "{bad}");
        }
        assert!(Namespace::new("staging_2-eu").is_ok());
    }
}
