//! Queue commands: create and update queues, and put an answered call into one. Assigning
//! agents is the queue process manager's (process managers crate).

use super::campaigns::{check_name, in_range, require};
use super::error::ApiError;
use super::extract::{CustomerCaller, Json, Path};
use super::AppState;
use axum::extract::State;
use chrono::Utc;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashSet;
use uuid::Uuid;
use vbin_domain::queue::MAX_QUEUE_AGENTS;
use vbin_domain::{Call, Customer, NewQueue, Queue, QueueCommand};
use vbin_event_schema::{
    AgentId, CallId, CallStatus, CustomerId, QueueEvent, QueueId, RoutingMethod,
};

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
        })
    }
}

/// Checks the body, and that its agents are this customer's.
async fn settings(s: &AppState, customer: CustomerId, b: QueueBody) -> Result<Settings, ApiError> {
    let q = b.validate()?;
    let owner = require::<Customer>(s, customer.as_uuid(), customer, "customer").await?;
    if let Some(unknown) = q.agent_ids.iter().find(|id| owner.agent(**id).is_none()) {
        return Err(ApiError::invalid(format!(
            "agent_ids: no agent {unknown} in this customer"
        )));
    }
    Ok(q)
}

/// `POST /v1.0/queues` -> the queue.
pub async fn create_queue(
    State(s): State<AppState>,
    c: CustomerCaller,
    Json(b): Json<QueueBody>,
) -> Result<Json<Value>, ApiError> {
    let q = settings(&s, c.customer_id, b).await?;
    let id = QueueId(super::reexec::new_id());
    let cmd = QueueCommand::Create {
        queue: NewQueue {
            queue_id: id,
            customer_id: c.customer_id,
            name: q.name,
            routing_method: q.routing_method,
            agent_ids: q.agent_ids,
            wait_timeout_ms: q.wait_timeout_ms,
        },
        at: Utc::now(),
    };
    let meta = s.meta(&c.caller, c.customer_id);
    let done = s
        .executor
        .execute_new::<Queue>(id.as_uuid(), c.customer_id, cmd, &meta)
        .await?;
    Ok(Json(done.state.view()))
}

/// `PUT /v1.0/queues/{id}` -> the queue (settings replaced; waiting calls keep their place).
pub async fn update_queue(
    State(s): State<AppState>,
    c: CustomerCaller,
    Path(id): Path<Uuid>,
    Json(b): Json<QueueBody>,
) -> Result<Json<Value>, ApiError> {
    let q = settings(&s, c.customer_id, b).await?;
    let cmd = QueueCommand::Update {
        name: q.name,
        routing_method: q.routing_method,
        agent_ids: q.agent_ids,
        wait_timeout_ms: q.wait_timeout_ms,
        at: Utc::now(),
    };
    let meta = s.meta(&c.caller, c.customer_id);
    let done = s
        .executor
        .execute::<Queue>(id, c.customer_id, Some(c.customer_id), cmd, &meta)
        .await?;
    Ok(Json(done.state.view()))
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
    State(s): State<AppState>,
    c: CustomerCaller,
    Path(id): Path<Uuid>,
    Json(b): Json<JoinBody>,
) -> Result<Json<Value>, ApiError> {
    require::<Queue>(&s, id, c.customer_id, "queue").await?;
    let call = require::<Call>(&s, b.call_id, c.customer_id, "call").await?;
    if call.status != CallStatus::Progressing {
        return Err(ApiError::conflict(
            "only an answered (progressing) call can join a queue",
        ));
    }
    let call_id = CallId(b.call_id);
    let cmd = QueueCommand::Join {
        queuecall_id: super::reexec::new_id(),
        call_id,
        at: Utc::now(),
    };
    let meta = s
        .meta(&c.caller, c.customer_id)
        .once(c.customer_id.as_uuid(), join_key(call_id));
    let done = s
        .executor
        .execute::<Queue>(id, c.customer_id, Some(c.customer_id), cmd, &meta)
        .await?;
    let q = done.state;
    let joined = QueueEvent::QueuecallJoined {
        call: q.waiting[&call_id].clone(),
        stats: q.stats,
    };
    Ok(Json(q.queuecall_view(&joined).unwrap_or_default()))
}

/// The once-key of a call's join: a call joins one queue, once.
pub fn join_key(call_id: CallId) -> String {
    format!("queue-join:{call_id}")
}
