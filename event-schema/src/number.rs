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
        /// When.
        at: DateTime<Utc>,
    },
    /// Its flow changed.
    NumberUpdated {
        /// The flow incoming calls run.
        call_flow_id: FlowId,
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
version_1!(NumberEvent);
