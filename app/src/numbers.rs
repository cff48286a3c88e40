//! Numbers (a customer's phone numbers routed to flows) and the calls that arrive on them.

use crate::flows::{call_variables, Program};
use crate::{new_id, Acting, App, AppError};
use chrono::Utc;
use serde_json::Map;
use uuid::Uuid;
use vbin_domain::{Call, CallCommand, NewCall, Number, NumberCommand};
use vbin_event_schema::flow::SandboxScript;
use vbin_event_schema::{CallDirection, CallId, CustomerId, FlowId, NumberId, TrunkId, E164};

/// A call the network delivers to one of a customer's numbers.
#[derive(Clone, Debug)]
pub struct IncomingCall {
    /// The call's id (the carrier knows it before the call exists).
    pub call_id: CallId,
    /// The customer whose number is called.
    pub customer: CustomerId,
    /// Caller id.
    pub source: E164,
    /// The number called.
    pub destination: E164,
    /// The sandbox far end's script.
    pub sandbox: Option<SandboxScript>,
    /// The SIP trunk it came from (none: the sandbox network).
    pub trunk_id: Option<TrunkId>,
}

/// Where calls to a number go: its owner, flow and trunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NumberRoute {
    /// The owner.
    pub customer: CustomerId,
    /// The flow its calls run.
    pub flow: FlowId,
    /// The trunk its SIP calls come from.
    pub trunk: Option<TrunkId>,
}

impl App {
    /// Takes a number for the tenant, routed to one of its flows, its SIP calls coming from
    /// one of its trunks (none: the sandbox network's only); 409 if anyone has it.
    pub async fn create_number(
        &self,
        acting: &Acting,
        number: E164,
        flow: FlowId,
        trunk: Option<TrunkId>,
    ) -> Result<Number, AppError> {
        self.require_flow(acting.customer, flow).await?;
        self.require_trunk(acting.customer, trunk).await?;
        let id = NumberId(new_id());
        let cmd = NumberCommand::Create {
            number_id: id,
            customer_id: acting.customer,
            number,
            call_flow_id: flow,
            trunk_id: trunk,
            at: Utc::now(),
        };
        self.create::<Number>(acting, id.as_uuid(), cmd).await
    }

    /// Routes a number to another of the tenant's flows and trunks.
    pub async fn update_number(
        &self,
        acting: &Acting,
        id: Uuid,
        flow: FlowId,
        trunk: Option<TrunkId>,
    ) -> Result<Number, AppError> {
        self.require_flow(acting.customer, flow).await?;
        self.require_trunk(acting.customer, trunk).await?;
        let cmd = NumberCommand::Update {
            call_flow_id: flow,
            trunk_id: trunk,
            at: Utc::now(),
        };
        self.update::<Number>(acting, id, cmd).await
    }

    async fn require_trunk(
        &self,
        customer: CustomerId,
        trunk: Option<TrunkId>,
    ) -> Result<(), AppError> {
        let Some(trunk) = trunk else { return Ok(()) };
        match self.live_trunk(customer, trunk).await {
            Ok(_) => Ok(()),
            Err(AppError::NotFound(_)) => {
                Err(AppError::Invalid(format!("trunk_id: no trunk {trunk}")))
            }
            Err(e) => Err(e),
        }
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

    /// Who owns `number` and where its calls go (none: nobody has it).
    pub async fn number_route(&self, number: &E164) -> Result<Option<NumberRoute>, AppError> {
        let row: Option<(Uuid, Uuid, Option<Uuid>)> = sqlx::query_as(
            "SELECT customer_id, call_flow_id, trunk_id FROM numbers WHERE number = $1",
        )
        .bind(number.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(customer, flow, trunk)| NumberRoute {
            customer: CustomerId(customer),
            flow: FlowId(flow),
            trunk: trunk.map(TrunkId),
        }))
    }

    /// A call arrives on one of the customer's numbers: it is created (direction incoming)
    /// with the number's flow, which starts at once. 404 when the customer has no such number.
    pub async fn incoming_call(
        &self,
        acting: &Acting,
        call: IncomingCall,
    ) -> Result<Call, AppError> {
        let flow = match self.number_route(&call.destination).await? {
            Some(r) if r.customer == call.customer => r.flow,
            _ => return Err(AppError::NotFound("number")),
        };
        let program = self
            .resolve_program(call.customer, Program::Flow(flow))
            .await?;
        let call_id = call.call_id;
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
                trunk_id: call.trunk_id,
                master_call_id: None,
            },
            at: Utc::now(),
        };
        self.create::<Call>(acting, call_id.as_uuid(), cmd).await
    }
}
