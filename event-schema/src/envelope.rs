//! The envelope every committed event travels in on NATS JetStream.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// The JetStream stream that carries every committed event.
pub const STREAM_NAME: &str = "VBIN_EVENTS";
/// Subjects are `vbin.events.<customer_id>.<aggregate_type>.<event_type>`.
pub const SUBJECT_PREFIX: &str = "vbin.events";

/// The subject an event is published on.
pub fn subject_for(customer_id: &Uuid, aggregate_type: &str, event_type: &str) -> String {
    format!("{SUBJECT_PREFIX}.{customer_id}.{aggregate_type}.{event_type}")
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
