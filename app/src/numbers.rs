//! Numbers (a customer's phone numbers routed to flows) and the calls that arrive on them.

use crate::flows::{call_variables, Program};
use crate::{new_id, Acting, App, AppError};
use chrono::Utc;
use serde_json::Map;
use uuid::Uuid;
use vbin_domain::{Call, CallCommand, NewCall, Number, NumberCommand};
use vbin_event_schema::flow::SandboxScript;
use vbin_event_schema::{CallDirection, CallId, CustomerId, FlowId, NumberId, E164};

/// A call the network delivers to one of a customer's numbers.
#[derive(Clone, Debug)]
pub struct IncomingCall {
    /// The customer whose number is called.
    pub customer: CustomerId,
    /// Caller id.
    pub source: E164,
    /// The number called.
    pub destination: E164,
    /// The sandbox far end's script.
    pub sandbox: Option<SandboxScript>,
}

impl App {
    /// Takes a number for the tenant, routed to one of its flows (409 if anyone has it).
    pub async fn create_number(
        &self,
        acting: &Acting,
        number: E164,
        flow: FlowId,
    ) -> Result<Number, AppError> {
        self.require_flow(acting.customer, flow).await?;
        let id = NumberId(new_id());
        let cmd = NumberCommand::Create {
            number_id: id,
            customer_id: acting.customer,
            number,
            call_flow_id: flow,
            at: Utc::now(),
        };
        self.create::<Number>(acting, id.as_uuid(), cmd).await
    }

    /// Routes a number to another of the tenant's flows.
    pub async fn update_number(
        &self,
        acting: &Acting,
        id: Uuid,
        flow: FlowId,
    ) -> Result<Number, AppError> {
        self.require_flow(acting.customer, flow).await?;
        let cmd = NumberCommand::Update {
            call_flow_id: flow,
            at: Utc::now(),
        };
        self.update::<Number>(acting, id, cmd).await
    }

    /// Releases a number.
    pub async fn delete_number(&self, acting: &Acting, id: Uuid) -> Result<Number, AppError> {
        self.update::<Number>(acting, id, NumberCommand::Delete { at: Utc::now() })
            .await
    }

    async fn require_flow(&self, customer: CustomerId, flow: FlowId) -> Result<(), AppError> {
        match self.live_flow(customer, flow).await {
            Ok(_) => Ok(()),
            Err(AppError::NotFound(_)) => {
                Err(AppError::Invalid(format!("call_flow_id: no flow {flow}")))
            }
            Err(e) => Err(e),
        }
    }

    /// A call arrives on one of the customer's numbers: it is created (direction incoming)
    /// with the number's flow, which starts at once. 404 when the customer has no such number.
    pub async fn incoming_call(
        &self,
        acting: &Acting,
        call: IncomingCall,
    ) -> Result<Call, AppError> {
        let route: Option<(Uuid, Uuid)> =
            sqlx::query_as("SELECT customer_id, call_flow_id FROM numbers WHERE number = $1")
                .bind(call.destination.as_str())
                .fetch_optional(&self.pool)
                .await?;
        let flow = match route {
            Some((owner, flow)) if owner == call.customer.as_uuid() => FlowId(flow),
            _ => return Err(AppError::NotFound("number")),
        };
        let program = self
            .resolve_program(call.customer, Program::Flow(flow))
            .await?;
        let call_id = CallId(new_id());
        let vars = call_variables(call_id, &call.source, &call.destination, &Map::new());
        let activeflow = self.attach_flow(acting, call_id, program, vars).await?;
        let cmd = CallCommand::Create {
            call: NewCall {
                call_id,
                customer_id: call.customer,
                source: call.source,
                destination: call.destination,
                variables: Map::new(),
                dial_timeout_ms: 30_000,
                campaign_id: None,
                direction: CallDirection::Incoming,
                activeflow_id: Some(activeflow),
                sandbox: call.sandbox,
                trunk_id: None,
            },
            at: Utc::now(),
        };
        self.create::<Call>(acting, call_id.as_uuid(), cmd).await
    }
}
