//! Placing and hanging up calls.

use crate::flows::{call_variables, Program};
use crate::{new_id, Acting, App, AppError};
use chrono::Utc;
use serde_json::{Map, Value};
use uuid::Uuid;
use vbin_domain::{Call, CallCommand, HangupRequest, NewCall};
use vbin_event_schema::call::{ChainExecution, ChainPurpose};
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

/// Legs to dial for a call and bridge the first that answers.
#[derive(Debug)]
pub struct NewChain {
    /// The call they are for (answered).
    pub master: CallId,
    /// One leg each.
    pub destinations: Vec<E164>,
    /// Their caller id (the master's source if none).
    pub source: Option<E164>,
    /// How long they ring.
    pub dial_timeout_ms: u32,
    /// Their sandbox far end (then they go through the sandbox carrier, whatever the
    /// master's trunk).
    pub sandbox: Option<SandboxScript>,
    /// The flow action waiting for the chain's end.
    pub execution: Option<ChainExecution>,
    /// What it is for.
    pub purpose: ChainPurpose,
}

impl App {
    /// Chains legs to an answered call and dials them, under `seed` (derived from what caused
    /// it, so a redelivery recreates the same ids and only what is missing). The chain is
    /// recorded first: a leg created after its master hung up finds itself outside the chain
    /// and is canceled by the chain manager. Legs that could not be created end the chain as
    /// failed. Refused without funds for a minute.
    pub async fn dial_chain(
        &self,
        acting: &Acting,
        seed: Uuid,
        chain: NewChain,
    ) -> Result<Vec<CallId>, AppError> {
        let mut acting = acting.clone();
        acting.meta.request_seed = Some(seed);
        vbin_eventlog::reexec::with_seed(seed, async move {
            self.require_funds(acting.customer).await?;
            let Some(master) = self
                .executor
                .load::<Call>(chain.master.as_uuid(), Some(acting.customer))
                .await?
            else {
                return Err(AppError::NotFound("call"));
            };
            let ids: Vec<CallId> = chain
                .destinations
                .iter()
                .map(|_| CallId(new_id()))
                .collect();
            let cmd = CallCommand::Chain {
                legs: ids.clone(),
                execution: chain.execution,
                purpose: chain.purpose,
                at: Utc::now(),
            };
            self.update::<Call>(&acting, chain.master.as_uuid(), cmd)
                .await?;
            let source = chain
                .source
                .or(master.source.clone())
                .or(master.destination.clone())
                .ok_or(AppError::NotFound("call source"))?;
            let legs = NewCalls {
                source,
                destinations: chain.destinations,
                variables: Map::new(),
                dial_timeout_ms: chain.dial_timeout_ms,
                program: None,
                trunk_id: if chain.sandbox.is_some() {
                    None
                } else {
                    master.trunk_id
                },
                sandbox: chain.sandbox,
                master_call_id: Some(chain.master),
                ids: ids.clone(),
            };
            if let Err(err) = self.create_calls(&acting, legs).await {
                for leg in &ids {
                    let ended = CallCommand::LegEnded {
                        leg: *leg,
                        status: vbin_event_schema::CallStatus::Failed,
                        at: Utc::now(),
                    };
                    self.update::<Call>(&acting, chain.master.as_uuid(), ended)
                        .await?;
                }
                return Err(err);
            }
            Ok(ids)
        })
        .await
    }

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

/// What runs on a call and must end with it: its AI conversations and its transcriptions
/// (with their owners), as the inline tables `aicall_live` and `transcribe_calls` list them
/// at commit ([`crate::ai::live_on_call`] and [`crate::transcription::running_transcribes`]
/// each read one of them).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RunningOnCall {
    /// AI conversations under way.
    pub aicalls: Vec<vbin_event_schema::AicallId>,
    /// Running transcriptions and their owners, oldest first.
    pub transcribes: Vec<(
        vbin_event_schema::TranscribeId,
        vbin_event_schema::CustomerId,
    )>,
}

/// [`RunningOnCall`] of `call`, in one statement: read on every hangup, and nearly always
/// empty, so one round trip rather than one per table.
pub async fn running_on_call(
    pool: &sqlx::PgPool,
    call: CallId,
) -> Result<RunningOnCall, sqlx::Error> {
    let rows: Vec<(bool, Uuid, Uuid)> = sqlx::query_as(
        "SELECT true, aicall_id, customer_id FROM aicall_live WHERE call_id = $1 \
         UNION ALL \
         SELECT false, transcribe_id, customer_id FROM transcribe_calls WHERE call_id = $1 \
         ORDER BY 1, 2",
    )
    .bind(call.as_uuid())
    .fetch_all(pool)
    .await?;
    let mut running = RunningOnCall::default();
    for (aicall, id, owner) in rows {
        if aicall {
            running.aicalls.push(vbin_event_schema::AicallId(id));
        } else {
            running.transcribes.push((
                vbin_event_schema::TranscribeId(id),
                vbin_event_schema::CustomerId(owner),
            ));
        }
    }
    Ok(running)
}
