//! Events of the Number aggregate: a phone number of a customer's, routed to a flow that
//! incoming calls to it run.

use crate::types::*;
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

/// Everything that happens to a number.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NumberEvent {
    /// The number was taken by a customer.
    NumberCreated {
        /// The resource.
        number_id: NumberId,
        /// Owner.
        customer_id: CustomerId,
        /// The phone number (unique across customers).
        number: E164,
        /// The flow incoming calls run.
        call_flow_id: FlowId,
        /// The SIP trunk its calls come from (none: the sandbox network only). Since 2.0.
        trunk_id: Option<TrunkId>,
        /// When.
        at: DateTime<Utc>,
    },
    /// Its flow or trunk changed.
    NumberUpdated {
        /// The flow incoming calls run.
        call_flow_id: FlowId,
        /// The SIP trunk its calls come from. Since 2.0.
        trunk_id: Option<TrunkId>,
        /// When.
        at: DateTime<Utc>,
    },
    /// The number was released.
    NumberDeleted {
        /// When.
        at: DateTime<Utc>,
    },
}

events!(NumberEvent in "number" {
    NumberCreated => NUMBER_CREATED = "number_created",
    NumberUpdated => NUMBER_UPDATED = "number_updated",
    NumberDeleted => NUMBER_DELETED = "number_deleted",
});
/// The current version of `number_created` and `number_updated` (see [`crate::upcast`]).
pub const NUMBER_VERSION: &str = "2.0";

impl DomainEvent for NumberEvent {
    fn event_type(&self) -> String {
        self.name().to_string()
    }
    fn event_version(&self) -> String {
        match self {
            Self::NumberCreated { .. } | Self::NumberUpdated { .. } => NUMBER_VERSION.to_string(),
            Self::NumberDeleted { .. } => "1.0".to_string(),
        }
    }
}
