//! Topics: `customer_id:<customer id>:<resource type>:<resource id | *>`.
//!
//! A subscription names one resource or, with `*` as its last segment, every resource of a
//! type; nothing else is a pattern (a `*` elsewhere is refused, not silently treated as a
//! literal). An event's topic is built from its customer and its resource view.

use uuid::Uuid;

/// Longest topic accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;

/// A subscription pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pattern {
    /// The customer whose events it selects.
    pub customer_id: Uuid,
    /// Resource type, e.g. `call`.
    pub resource: String,
    /// One resource, or `None` for every resource of the type (`*`).
    pub resource_id: Option<String>,
    text: String,
}

/// Why a topic is not acceptable.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Not of the form `customer_id:<uuid>:<resource>:<id|*>`.
    #[error(
        "malformed topic {0:?}: expected customer_id:<customer id>:<resource>:<resource id or *>"
    )]
    Malformed(String),
    /// Another customer's topic.
    #[error("forbidden topic {0:?}: only your own customer id may be used")]
    Forbidden(String),
}

impl Pattern {
    /// Parses a topic as a client sends it.
    pub fn parse(topic: &str) -> Result<Self, TopicError> {
        let bad = || TopicError::Malformed(topic.chars().take(MAX_TOPIC_LEN).collect());
        if topic.len() > MAX_TOPIC_LEN {
            return Err(bad());
        }
        let parts: Vec<&str> = topic.split(':').collect();
        let [scope, customer, resource, id] = parts[..] else {
            return Err(bad());
        };
        let word = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if scope != "customer_id" || !word(resource) || !(id == "*" || word(id)) {
            return Err(bad());
        }
        let customer_id = customer.parse::<Uuid>().map_err(|_| bad())?;
        Ok(Self {
            customer_id,
            resource: resource.to_string(),
            resource_id: (id != "*").then(|| id.to_string()),
            text: topic.to_string(),
        })
    }

    /// Whether an event with this topic is selected.
    pub fn matches(&self, t: &EventTopic) -> bool {
        self.customer_id == t.customer_id
            && self.resource == t.resource
            && self
                .resource_id
                .as_deref()
                .is_none_or(|id| id == t.resource_id)
    }

    /// The topic as the client wrote it.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// The topic of one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventTopic {
    /// Tenant.
    pub customer_id: Uuid,
    /// Resource type.
    pub resource: String,
    /// Resource id.
    pub resource_id: String,
}

impl EventTopic {
    /// The topic of an event: its customer and the resource it shows (falling back to the
    /// aggregate when the view has no type or id).
    pub fn of(e: &vbin_event_schema::PublishedEvent) -> Self {
        let (kind, id) = e.resource_type_and_id();
        Self {
            customer_id: e.customer_id,
            resource: kind
                .map(String::from)
                .unwrap_or_else(|| e.aggregate_type.clone()),
            resource_id: id
                .map(String::from)
                .unwrap_or_else(|| e.aggregate_id.to_string()),
        }
    }
}

impl std::fmt::Display for EventTopic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "customer_id:{}:{}:{}",
            self.customer_id, self.resource, self.resource_id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "5013bc52-da9a-11ee-844f-2fa34248de28";
    const OTHER: &str = "6a1f0d7e-da9a-11ee-844f-2fa34248de28";

    fn event(customer: &str, resource: &str, id: &str) -> EventTopic {
        EventTopic {
            customer_id: customer.parse().unwrap(),
            resource: resource.into(),
            resource_id: id.into(),
        }
    }

    /// The seed's matching table.
    #[test]
    fn matching_table() {
        let all_calls = Pattern::parse(&format!("customer_id:{C}:call:*")).unwrap();
        let one_call = Pattern::parse(&format!("customer_id:{C}:call:abc-456")).unwrap();
        let cases = [
            (&all_calls, event(C, "call", "abc-456"), true),
            (&all_calls, event(C, "call", "*"), true),
            (&all_calls, event(OTHER, "call", "abc-456"), false),
            (&all_calls, event(C, "conference", "abc-456"), false),
            (&all_calls, event(C, "calls", "abc-456"), false),
            (&one_call, event(C, "call", "abc-456"), true),
            (&one_call, event(C, "call", "abc-457"), false),
            (&one_call, event(C, "call", "abc-4567"), false),
            (&one_call, event(OTHER, "call", "abc-456"), false),
            (&one_call, event(C, "conference", "abc-456"), false),
        ];
        for (p, t, want) in cases {
            assert_eq!(p.matches(&t), want, "{} vs {t}", p.as_str());
        }
    }

    #[test]
    fn malformed_topics_are_refused() {
        for t in [
            "".to_string(),
            "call:*".into(),
            format!("customer_id:{C}:call"),
            format!("customer_id:{C}:call:*:x"),
            format!("customer_id:{C}:*:*"),
            format!("customer_id:{C}:call:ab*"),
            format!("customer_id:{C}:call:"),
            format!("agent_id:{C}:call:*"),
            "customer_id:123:call:*".into(),
            format!("customer_id:{C}:ca ll:*"),
            format!("customer_id:{C}:call:{}", "x".repeat(300)),
        ] {
            assert!(
                matches!(Pattern::parse(&t), Err(TopicError::Malformed(_))),
                "{t:?} accepted"
            );
        }
    }

    #[test]
    fn event_topics_render_as_subscribed() {
        let t = event(C, "call", "abc-456");
        assert_eq!(t.to_string(), format!("customer_id:{C}:call:abc-456"));
        assert!(Pattern::parse(&t.to_string()).unwrap().matches(&t));
    }
}
