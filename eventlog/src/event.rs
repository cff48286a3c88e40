//! An event about to be appended: what the command side hands the store. Its own module so
//! that the store and the inline tables both read it without depending on each other.

use serde_json::Value;

/// An event about to be appended.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// e.g. `call_created`.
    pub event_type: String,
    /// Schema version.
    pub event_version: String,
    /// Serialized event.
    pub payload: Value,
    /// API view of the resource after the event.
    pub resource: Value,
}
