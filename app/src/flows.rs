//! Flows and activeflows: storing programs, attaching one to a call, stopping it.

use crate::{new_id, Acting, App, AppError};
use chrono::Utc;
use serde_json::{json, Map, Value};
use uuid::Uuid;
use vbin_domain::flow::validate_actions;
use vbin_domain::{Activeflow, ActiveflowCommand, Flow, FlowCommand, NewActiveflow};
use vbin_event_schema::flow::{Action, ActionId, RawAction};
use vbin_event_schema::{ActiveflowId, CallId, CustomerId, FlowId, E164};

/// What a call runs: a stored flow or inline actions (not yet validated).
#[derive(Clone, Debug)]
pub enum Program {
    /// `flow_id`.
    Flow(FlowId),
    /// `actions`.
    Inline(Vec<RawAction>),
}

/// A flow's editable parts (actions validated with [`validate`]).
#[derive(Clone, Debug)]
pub struct FlowInput {
    /// Name.
    pub name: String,
    /// Description.
    pub detail: String,
    /// The program.
    pub actions: Vec<Action>,
}

/// Validates a program, drawing ids for actions without one.
pub fn validate(actions: Vec<RawAction>) -> Result<Vec<Action>, AppError> {
    Ok(validate_actions(actions, || ActionId(new_id()))?)
}

/// The variables every flow of a call starts with: the call's own plus `voipbin.call.*`.
pub fn call_variables(
    call_id: CallId,
    source: &E164,
    destination: &E164,
    variables: &Map<String, Value>,
) -> Map<String, Value> {
    let mut vars = variables.clone();
    vars.insert("voipbin.call.id".into(), json!(call_id));
    vars.insert("voipbin.call.source".into(), json!(source));
    vars.insert("voipbin.call.destination".into(), json!(destination));
    vars.insert("voipbin.call.digits".into(), json!(""));
    vars
}

impl App {
    /// Creates a flow.
    pub async fn create_flow(&self, acting: &Acting, input: FlowInput) -> Result<Flow, AppError> {
        let id = FlowId(new_id());
        let cmd = FlowCommand::Create {
            flow_id: id,
            customer_id: acting.customer,
            name: input.name,
            detail: input.detail,
            actions: input.actions,
            at: Utc::now(),
        };
        self.create::<Flow>(acting, id.as_uuid(), cmd).await
    }

    /// Replaces a flow's name, detail and actions (running activeflows keep their copy).
    pub async fn update_flow(
        &self,
        acting: &Acting,
        id: Uuid,
        input: FlowInput,
    ) -> Result<Flow, AppError> {
        let cmd = FlowCommand::Update {
            name: input.name,
            detail: input.detail,
            actions: input.actions,
            at: Utc::now(),
        };
        self.update::<Flow>(acting, id, cmd).await
    }

    /// Deletes a flow.
    pub async fn delete_flow(&self, acting: &Acting, id: Uuid) -> Result<Flow, AppError> {
        self.update::<Flow>(acting, id, FlowCommand::Delete { at: Utc::now() })
            .await
    }

    /// The live flow `id` of `customer` (for calls, numbers, campaigns and fetch_flow).
    pub async fn live_flow(&self, customer: CustomerId, id: FlowId) -> Result<Flow, AppError> {
        let flow = self.find::<Flow>(id.as_uuid(), customer, "flow").await?;
        if !flow.is_live() {
            return Err(AppError::NotFound("flow"));
        }
        Ok(flow)
    }

    /// The program a call runs: the flow's actions (checked to exist and be the customer's)
    /// or the inline actions, validated.
    pub async fn resolve_program(
        &self,
        customer: CustomerId,
        program: Program,
    ) -> Result<(Option<FlowId>, Vec<Action>), AppError> {
        match program {
            Program::Flow(id) => {
                let flow = self.live_flow(customer, id).await.map_err(|e| match e {
                    AppError::NotFound(_) => AppError::Invalid(format!("flow_id: no flow {id}")),
                    e => e,
                })?;
                Ok((Some(id), flow.actions))
            }
            Program::Inline(raw) => Ok((None, validate(raw)?)),
        }
    }

    /// Attaches a program to call `call_id` (created next with this activeflow's id).
    pub async fn attach_flow(
        &self,
        acting: &Acting,
        call_id: CallId,
        (flow_id, actions): (Option<FlowId>, Vec<Action>),
        variables: Map<String, Value>,
    ) -> Result<ActiveflowId, AppError> {
        let id = ActiveflowId(new_id());
        let cmd = ActiveflowCommand::Create {
            new: NewActiveflow {
                activeflow_id: id,
                customer_id: acting.customer,
                flow_id,
                reference_id: call_id,
                actions,
                variables,
            },
            at: Utc::now(),
        };
        self.create::<Activeflow>(acting, id.as_uuid(), cmd).await?;
        Ok(id)
    }

    /// Ends a running flow (the call goes on); an ended one is returned unchanged.
    pub async fn stop_activeflow(&self, acting: &Acting, id: Uuid) -> Result<Activeflow, AppError> {
        let cmd = ActiveflowCommand::Stop {
            reason: "stopped".into(),
            at: Utc::now(),
        };
        self.update::<Activeflow>(acting, id, cmd).await
    }
}
