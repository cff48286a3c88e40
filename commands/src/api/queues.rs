//! Queue commands: create and update queues, and put an answered call into one. Assigning
//! agents is the queue process manager's (process managers crate).

use super::campaigns::{check_name, in_range, require};
use super::error::{ApiResult, CmdError};
use super::state::{CmdState, Tenant};
use axum::extract::State;
use chrono::Utc;
use serde::Deserialize;
use std::collections::HashSet;
use std::sync::Arc;
use uuid::Uuid;
use vbin_domain::queue::MAX_QUEUE_AGENTS;
use vbin_domain::{Customer, Flow, NewQueue, Queue, QueueCommand};
use vbin_event_schema::flow::ActionKind;
use vbin_event_schema::{AgentId, CallId, CustomerId, FlowId, QueueId, RoutingMethod};
use vbin_http::extract::{Json, Path};
use vbin_http::ApiError;

/// Default longest wait in a queue (5 minutes).
pub const DEFAULT_WAIT_TIMEOUT_MS: u32 = 300_000;

/// `POST /v1.0/queues` and `PUT /v1.0/queues/{id}` body.
#[derive(Deserialize)]
pub struct QueueBody {
    #[serde(default)]
    name: String,
    #[serde(default)]
    routing_method: RoutingMethod,
    #[serde(default)]
    agent_ids: Vec<Uuid>,
    wait_timeout_ms: Option<u32>,
    /// A flow of talk, play, beep and sleep actions that waiting calls hear, over and over.
    wait_flow_id: Option<Uuid>,
}

/// The validated settings (whether the agents exist is checked by the handler).
#[derive(Debug)]
pub struct Settings {
    /// Label.
    pub name: String,
    /// How agents are picked.
    pub routing_method: RoutingMethod,
    /// At most [`MAX_QUEUE_AGENTS`] distinct agents, in order.
    pub agent_ids: Vec<AgentId>,
    /// 1000 to 3600000 (default [`DEFAULT_WAIT_TIMEOUT_MS`]).
    pub wait_timeout_ms: u32,
    /// What waiting calls hear (the handler checks it is this customer's).
    pub wait_flow_id: Option<FlowId>,
}

impl QueueBody {
    /// The handler's checks, without I/O: a name, at most [`MAX_QUEUE_AGENTS`] distinct
    /// agents, a wait timeout of 1 s to 1 h.
    pub fn validate(self) -> Result<Settings, ApiError> {
        check_name(&self.name)?;
        if self.agent_ids.len() > MAX_QUEUE_AGENTS {
            return Err(ApiError::invalid(format!(
                "agent_ids must hold at most {MAX_QUEUE_AGENTS} agents"
            )));
        }
        if self.agent_ids.iter().collect::<HashSet<_>>().len() != self.agent_ids.len() {
            return Err(ApiError::invalid("agent_ids must not repeat an agent"));
        }
        Ok(Settings {
            name: self.name,
            routing_method: self.routing_method,
            agent_ids: self.agent_ids.into_iter().map(AgentId).collect(),
            wait_timeout_ms: in_range(
                "wait_timeout_ms",
                self.wait_timeout_ms.unwrap_or(DEFAULT_WAIT_TIMEOUT_MS),
                1_000,
                3_600_000,
            )?,
            wait_flow_id: self.wait_flow_id.map(FlowId),
        })
    }
}

/// Checks the body, and that its agents are this customer's.
async fn settings(s: &CmdState, customer: CustomerId, b: QueueBody) -> Result<Settings, CmdError> {
    let q = b.validate()?;
    let owner = require::<Customer>(s, customer.as_uuid(), customer, "customer").await?;
    if let Some(unknown) = q.agent_ids.iter().find(|id| owner.agent(**id).is_none()) {
        return Err(
            ApiError::invalid(format!("agent_ids: no agent {unknown} in this customer")).into(),
        );
    }
    if let Some(flow) = q.wait_flow_id {
        let f = require::<Flow>(s, flow.as_uuid(), customer, "flow")
            .await
            .map_err(|_| ApiError::invalid(format!("wait_flow_id: no flow {flow}")))?;
        if let Some(a) = f.actions.iter().find(|a| !is_wait_media(&a.kind)) {
            return Err(ApiError::invalid(format!(
                "wait_flow_id: a wait flow only talks, plays, beeps and sleeps (not {})",
                a.kind.type_name()
            ))
            .into());
        }
    }
    Ok(q)
}

/// What a wait flow may do.
fn is_wait_media(kind: &ActionKind) -> bool {
    matches!(
        kind,
        ActionKind::Talk(_) | ActionKind::Play(_) | ActionKind::Beep(_) | ActionKind::Sleep(_)
    )
}

/// `POST /v1.0/queues` -> the queue.
pub async fn create_queue(
    State(s): State<Arc<CmdState>>,
    Tenant { caller: c, acting }: Tenant,
    Json(b): Json<QueueBody>,
) -> ApiResult {
    let q = settings(&s, c.customer_id, b).await?;
    let id = QueueId(vbin_app::new_id());
    let cmd = QueueCommand::Create {
        queue: NewQueue {
            queue_id: id,
            customer_id: c.customer_id,
            name: q.name,
            routing_method: q.routing_method,
            agent_ids: q.agent_ids,
            wait_timeout_ms: q.wait_timeout_ms,
            wait_flow_id: q.wait_flow_id,
        },
        at: Utc::now(),
    };
    Ok(Json(
        s.app
            .create::<Queue>(&acting, id.as_uuid(), cmd)
            .await?
            .view(),
    ))
}

/// `PUT /v1.0/queues/{id}` -> the queue (settings replaced; waiting calls keep their place).
pub async fn update_queue(
    State(s): State<Arc<CmdState>>,
    Tenant { caller: c, acting }: Tenant,
    Path(id): Path<Uuid>,
    Json(b): Json<QueueBody>,
) -> ApiResult {
    let q = settings(&s, c.customer_id, b).await?;
    let cmd = QueueCommand::Update {
        name: q.name,
        routing_method: q.routing_method,
        agent_ids: q.agent_ids,
        wait_timeout_ms: q.wait_timeout_ms,
        wait_flow_id: q.wait_flow_id,
        at: Utc::now(),
    };
    Ok(Json(s.app.update::<Queue>(&acting, id, cmd).await?.view()))
}

/// `POST /v1.0/queues/{id}/calls` body.
#[derive(Deserialize)]
pub struct JoinBody {
    /// The answered call.
    pub call_id: Uuid,
}

/// `POST /v1.0/queues/{id}/calls` `{call_id}` -> the queue call (waiting). The call must be
/// answered (progressing); a call joins at most one queue, once (409 afterwards).
pub async fn join_queue(
    State(s): State<Arc<CmdState>>,
    Tenant { acting, .. }: Tenant,
    Path(id): Path<Uuid>,
    Json(b): Json<JoinBody>,
) -> ApiResult {
    let view = s
        .app
        .join_queue(&acting, QueueId(id), CallId(b.call_id))
        .await?;
    Ok(Json(view))
}
