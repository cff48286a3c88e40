//! Placing and hanging up calls.

use crate::flows::{call_variables, Program};
use crate::{new_id, Acting, App, AppError};
use chrono::Utc;
use serde_json::{Map, Value};
use uuid::Uuid;
use vbin_domain::{Call, CallCommand, HangupRequest, NewCall};
use vbin_event_schema::flow::SandboxScript;
use vbin_event_schema::{CallDirection, CallId, TrunkId, E164};

/// Calls to place: one per destination, all alike otherwise (already validated).
#[derive(Debug)]
pub struct NewCalls {
    /// Caller id.
    pub source: E164,
    /// One call each.
    pub destinations: Vec<E164>,
    /// Scalar variables.
    pub variables: Map<String, Value>,
    /// Ring timeout.
    pub dial_timeout_ms: u32,
    /// What each call runs once answered.
    pub program: Option<Program>,
    /// The sandbox far end's script.
    pub sandbox: Option<SandboxScript>,
    /// The customer's SIP trunk to place them through (none: the sandbox carrier).
    pub trunk_id: Option<TrunkId>,
    /// The call they are legs of (a `connect`).
    pub master_call_id: Option<CallId>,
    /// Their ids, one per destination (empty: fresh ones).
    pub ids: Vec<CallId>,
}

impl App {
    /// Creates one call per destination, each dialed by the carrier once its `call_created`
    /// is published. Refused without funds for a minute.
    pub async fn create_calls(
        &self,
        acting: &Acting,
        new: NewCalls,
    ) -> Result<Vec<Call>, AppError> {
        self.require_funds(acting.customer).await?;
        if let Some(trunk) = new.trunk_id {
            if new.sandbox.is_some() {
                return Err(AppError::Invalid(
                    "sandbox: a script is for the sandbox carrier, not for a call over a trunk"
                        .into(),
                ));
            }
            self.live_trunk(acting.customer, trunk).await?;
        }
        let program = match new.program {
            Some(p) => Some(self.resolve_program(acting.customer, p).await?),
            None => None,
        };
        let mut calls = Vec::with_capacity(new.destinations.len());
        if !new.ids.is_empty() && new.ids.len() != new.destinations.len() {
            return Err(AppError::Invalid("one id per destination".into()));
        }
        for (i, destination) in new.destinations.into_iter().enumerate() {
            let call_id = new.ids.get(i).copied().unwrap_or_else(|| CallId(new_id()));
            let activeflow_id = match &program {
                Some(p) => {
                    let vars = call_variables(call_id, &new.source, &destination, &new.variables);
                    Some(self.attach_flow(acting, call_id, p.clone(), vars).await?)
                }
                None => None,
            };
            let cmd = CallCommand::Create {
                call: NewCall {
                    call_id,
                    customer_id: acting.customer,
                    source: new.source.clone(),
                    destination,
                    variables: new.variables.clone(),
                    dial_timeout_ms: new.dial_timeout_ms,
                    campaign_id: None,
                    direction: CallDirection::Outgoing,
                    activeflow_id,
                    sandbox: new.sandbox.clone(),
                    trunk_id: new.trunk_id,
                    master_call_id: new.master_call_id,
                },
                at: Utc::now(),
            };
            calls.push(self.create::<Call>(acting, call_id.as_uuid(), cmd).await?);
        }
        Ok(calls)
    }

    /// Cancels an unanswered call, clears an answered one; a call that has already ended is
    /// returned unchanged.
    pub async fn hangup_call(&self, acting: &Acting, id: Uuid) -> Result<Call, AppError> {
        let cmd = CallCommand::Hangup {
            request: HangupRequest::Local,
            at: Utc::now(),
        };
        self.update::<Call>(acting, id, cmd).await
    }
}
