//! The Number aggregate: a customer's phone number and the flow its incoming calls run.
//! That a number belongs to one customer only is kept by the `numbers` lookup table (written
//! with the events), not here: an aggregate sees only itself.

use crate::{DomainError, ResourceView};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use vbin_event_schema::*;

/// Number commands.
#[derive(Clone, Debug, PartialEq)]
pub enum NumberCommand {
    /// Take the number.
    Create {
        /// Id.
        number_id: NumberId,
        /// Owner.
        customer_id: CustomerId,
        /// The number.
        number: E164,
        /// Its flow (checked to be the customer's).
        call_flow_id: FlowId,
        /// The SIP trunk its calls come from (checked to be the customer's).
        trunk_id: Option<TrunkId>,
        /// When.
        at: DateTime<Utc>,
    },
    /// Route it to another flow or trunk.
    Update {
        /// The flow.
        call_flow_id: FlowId,
        /// The trunk.
        trunk_id: Option<TrunkId>,
        /// When.
        at: DateTime<Utc>,
    },
    /// Release it.
    Delete {
        /// When.
        at: DateTime<Utc>,
    },
}

/// A number's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Number {
    /// None until created.
    pub id: Option<NumberId>,
    /// Owner.
    pub customer_id: CustomerId,
    /// The number.
    pub number: Option<E164>,
    /// Its flow.
    pub call_flow_id: Option<FlowId>,
    /// The SIP trunk its calls come from.
    pub trunk_id: Option<TrunkId>,
    /// Released.
    pub deleted: bool,
    /// Created.
    pub tm_create: Option<DateTime<Utc>>,
    /// Changed.
    pub tm_update: Option<DateTime<Utc>>,
    /// Released.
    pub tm_delete: Option<DateTime<Utc>>,
}

impl Number {
    /// The API view.
    pub fn view(&self) -> Value {
        json!({
            "id": self.id,
            "type": "number",
            "customer_id": self.customer_id,
            "number": self.number,
            "call_flow_id": self.call_flow_id,
            "trunk_id": self.trunk_id,
            "status": if self.deleted { "deleted" } else { "active" },
            "tm_create": self.tm_create,
            "tm_update": self.tm_update,
            "tm_delete": self.tm_delete,
        })
    }

    fn decide(&self, command: NumberCommand) -> Result<Vec<NumberEvent>, DomainError> {
        match command {
            NumberCommand::Create {
                number_id,
                customer_id,
                number,
                call_flow_id,
                trunk_id,
                at,
            } => {
                if self.id.is_some() {
                    return Err(DomainError::AlreadyExists(format!(
                        "number {number_id} exists"
                    )));
                }
                Ok(vec![NumberEvent::NumberCreated {
                    number_id,
                    customer_id,
                    number,
                    call_flow_id,
                    trunk_id,
                    at,
                }])
            }
            _ if self.id.is_none() || self.deleted => Err(DomainError::NotFound("number")),
            NumberCommand::Update {
                call_flow_id,
                trunk_id,
                at,
            } => Ok(vec![NumberEvent::NumberUpdated {
                call_flow_id,
                trunk_id,
                at,
            }]),
            NumberCommand::Delete { at } => Ok(vec![NumberEvent::NumberDeleted { at }]),
        }
    }

    fn fold(&mut self, event: NumberEvent) {
        match event {
            NumberEvent::NumberCreated {
                number_id,
                customer_id,
                number,
                call_flow_id,
                trunk_id,
                at,
            } => {
                *self = Number {
                    id: Some(number_id),
                    customer_id,
                    number: Some(number),
                    call_flow_id: Some(call_flow_id),
                    trunk_id,
                    tm_create: Some(at),
                    tm_update: Some(at),
                    ..Number::default()
                }
            }
            NumberEvent::NumberUpdated {
                call_flow_id,
                trunk_id,
                at,
            } => {
                self.call_flow_id = Some(call_flow_id);
                self.trunk_id = trunk_id;
                self.tm_update = Some(at);
            }
            NumberEvent::NumberDeleted { at } => {
                self.deleted = true;
                self.tm_delete = Some(at);
                self.tm_update = Some(at);
            }
        }
    }
}

decided_aggregate!(Number, NumberCommand, NumberEvent);

impl ResourceView for Number {
    fn resource_after(&self, _: &NumberEvent) -> Value {
        self.view()
    }
}
