//! Command metadata: who acted, and which request, correlation and causation it belongs to.
//! Stored with every event (as string values, the form cqrs-es reads back).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Who issued a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    /// The platform admin (admin token).
    Admin,
    /// An agent, through a JWT.
    Agent(Uuid),
    /// An access key.
    AccessKey(Uuid),
    /// A part of vbin itself (carrier, process managers).
    System(&'static str),
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::Admin => f.write_str("admin"),
            Actor::Agent(id) => write!(f, "agent:{id}"),
            Actor::AccessKey(id) => write!(f, "accesskey:{id}"),
            Actor::System(part) => write!(f, "system:{part}"),
        }
    }
}

/// Metadata of one command, copied onto each event it produces.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CommandMeta {
    /// `admin`, `agent:<id>`, `accesskey:<id>` or `system:<part>`.
    pub actor: String,
    /// The HTTP request (or internal trigger) id.
    pub request_id: String,
    /// Groups everything caused by one original request.
    pub correlation_id: String,
    /// The event or request that directly caused this command.
    pub causation_id: String,
    /// The tenant the command is for (also the events' `customer_id` column).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<Uuid>,
    /// A process manager's once-keys (e.g. `billing:<call id>`; several for a command that
    /// does the work of several): the command's events are appended only if no command with
    /// any of these keys was applied before (not stored in events).
    #[serde(skip)]
    pub once_keys: Vec<String>,
    /// Set while a request with an `Idempotency-Key` runs (see `api::reexec`): each command
    /// gets the once-key `request:<seed>:<aggregate type>:<id>`, and a command found applied
    /// already answers with the aggregate's current state instead of an error.
    #[serde(skip)]
    pub request_seed: Option<Uuid>,
}

impl CommandMeta {
    /// Metadata for a command caused by an HTTP request: correlation = causation = request.
    pub fn from_request(actor: &Actor, request_id: &str, customer_id: Option<Uuid>) -> Self {
        Self {
            actor: actor.to_string(),
            request_id: request_id.to_string(),
            correlation_id: request_id.to_string(),
            causation_id: request_id.to_string(),
            customer_id,
            once_keys: Vec::new(),
            request_seed: None,
        }
    }

    /// Metadata for a command a part of vbin sends in reaction to an event.
    pub fn caused_by(part: &'static str, event_id: Uuid, correlation_id: &str) -> Self {
        let correlation = if correlation_id.is_empty() {
            event_id.to_string()
        } else {
            correlation_id.to_string()
        };
        Self {
            actor: Actor::System(part).to_string(),
            request_id: String::new(),
            correlation_id: correlation,
            causation_id: event_id.to_string(),
            customer_id: None,
            once_keys: Vec::new(),
            request_seed: None,
        }
    }

    /// The same metadata for the tenant `customer_id` with a once-key (see
    /// [`CommandMeta::once_keys`]).
    pub fn once(self, customer_id: Uuid, key: String) -> Self {
        self.once_all(customer_id, vec![key])
    }

    /// The same metadata for the tenant `customer_id` with several once-keys: the command is
    /// applied only if none of them was (see [`CommandMeta::once_keys`]).
    pub fn once_all(mut self, customer_id: Uuid, mut keys: Vec<String>) -> Self {
        keys.sort_unstable();
        keys.dedup();
        self.customer_id = Some(customer_id);
        self.once_keys = keys;
        self
    }

    /// As stored: string values only (the event table keeps `customer_id` in a column).
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "actor": self.actor,
            "request_id": self.request_id,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
        })
    }
}
