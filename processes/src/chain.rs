//! Chained calls (`call-chains` consumer): a call that dials legs to bridge one of them
//! (`connect`) and the legs themselves live or die together. The master Call decides (which
//! leg is bridged, how the chain ended); this manager carries what crosses aggregates:
//!
//! - a leg answers: `BridgeLeg` on the master; a leg that lost (another was bridged first, or
//!   the master is gone) is hung up;
//! - a leg ends: `LegEnded` on the master;
//! - a leg is created for a master whose chain no longer holds it (the master hung up while
//!   it was being created): it is hung up;
//! - a leg is bridged: the other legs are canceled;
//! - the master ends: every leg still up or ringing is hung up;
//! - the chain ends: the flow action waiting for it completes with `voipbin.connect.result`
//!   and `voipbin.connect.call_id`; if the flow has nothing after it, the master is hung up
//!   (VoIPBIN's chained calls: either side hanging up ends both, unless the flow goes on).
//!
//! Every command is idempotent (the aggregates ignore repeats), so redelivery is harmless.

use crate::ProcessError;
use chrono::Utc;
use serde_json::Value;
use vbin_app::{ExecError, Executor};
use vbin_bus::Route;
use vbin_domain::{Call, CallCommand, CustomerCommand, DomainError, Queue, QueueCommand};
use vbin_event_schema::call::{
    ChainPurpose, ChainResult, CONNECT_CALL_ID_VARIABLE, CONNECT_RESULT_VARIABLE,
};
use vbin_event_schema::flow::{ActionKind, ActionResult, QUEUE_RESULT_VARIABLE};
use vbin_event_schema::views::CallView;
use vbin_event_schema::{AgentId, QueueId};
use vbin_event_schema::{CallEvent, CallId, CustomerId, PublishedEvent};
use vbin_eventlog::CommandMeta;

/// The route's name (its own durable consumer's before [`crate::calls`]).
pub const CONSUMER: &str = "call-chains";

/// The chains' route of the process managers' call consumer ([`crate::calls`]).
pub fn route(executor: Executor) -> Route {
    Route::of::<CallEvent, _, _, _>(
        CONSUMER,
        &[
            CallEvent::CALL_CREATED,
            CallEvent::CALL_PROGRESSING,
            CallEvent::CALL_HUNGUP,
            CallEvent::CALL_BRIDGED,
            CallEvent::CALL_CHAIN_ENDED,
        ],
        move |e| {
            let executor = executor.clone();
            async move { on_call(&executor, e).await }
        },
    )
    .lanes(16)
}

struct Ctx<'a> {
    executor: &'a Executor,
    customer: CustomerId,
    meta: CommandMeta,
}

impl Ctx<'_> {
    /// Runs `cmd` on call `id`; `None` if the call does not exist.
    async fn call(&self, id: CallId, cmd: CallCommand) -> Result<Option<Call>, ProcessError> {
        match self
            .executor
            .execute::<Call>(
                id.as_uuid(),
                self.customer,
                Some(self.customer),
                cmd,
                &self.meta,
            )
            .await
        {
            Ok(done) => Ok(Some(done.state)),
            Err(ExecError::Domain(DomainError::NotFound(_))) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn load(&self, id: CallId) -> Result<Option<Call>, ProcessError> {
        Ok(self
            .executor
            .load::<Call>(id.as_uuid(), Some(self.customer))
            .await?)
    }

    /// Hangs up `id` from our side (a ringing leg is canceled, an answered one cleared).
    async fn hang_up(&self, id: CallId) -> Result<(), ProcessError> {
        crate::hang_up(self.executor, self.customer, id, &self.meta).await
    }
}

/// Handles one call event.
pub async fn on_call(executor: &Executor, e: PublishedEvent) -> Result<(), ProcessError> {
    let customer = CustomerId(e.customer_id);
    let ctx = Ctx {
        executor,
        customer,
        meta: crate::system_meta(CONSUMER, e.event_id, &e.correlation_id(), customer),
    };
    let me = CallId(e.aggregate_id);
    let view = e.view::<CallView>()?;
    let master = view.master_call_id;
    match e.decode::<CallEvent>()? {
        CallEvent::CallCreated { .. } => {
            if let Some(m) = master {
                let holds = ctx.load(m).await?.is_some_and(|m| {
                    m.running_chain()
                        .is_some_and(|c| c.live_legs().any(|l| l == me))
                });
                if !holds {
                    tracing::info!(leg = %me, master = %m, "the master's chain is over: canceling the leg");
                    ctx.hang_up(me).await?;
                }
            }
        }
        CallEvent::CallProgressing { .. } => {
            if let Some(m) = master {
                let cmd = CallCommand::BridgeLeg {
                    leg: me,
                    at: Utc::now(),
                };
                let bridged = ctx.call(m, cmd).await?.and_then(|m| m.bridged_to());
                if bridged != Some(me) {
                    tracing::info!(leg = %me, master = %m, "another leg was bridged (or the master ended): hanging up");
                    ctx.hang_up(me).await?;
                }
            }
        }
        CallEvent::CallHungup { status, .. } => {
            if let Some(m) = master {
                let cmd = CallCommand::LegEnded {
                    leg: me,
                    status,
                    at: Utc::now(),
                };
                ctx.call(m, cmd).await?;
            }
            // A master that ended takes its legs with it. A call that never dialed a leg (its
            // view after the hangup says so, and an ended call dials none) has none to take.
            let legs: Vec<CallId> = if view.chained_call_ids.is_empty() {
                Vec::new()
            } else {
                ctx.load(me)
                    .await?
                    .and_then(|c| c.running_chain().map(|c| c.live_legs().collect()))
                    .unwrap_or_default()
            };
            for leg in legs {
                ctx.hang_up(leg).await?;
            }
        }
        CallEvent::CallBridged { peer_call_id, .. } => {
            let losers: Vec<CallId> = ctx
                .load(me)
                .await?
                .and_then(|c| {
                    c.running_chain()
                        .map(|c| c.live_legs().filter(|l| *l != peer_call_id).collect())
                })
                .unwrap_or_default();
            for leg in losers {
                ctx.hang_up(leg).await?;
            }
        }
        CallEvent::CallChainEnded {
            result,
            bridged_call_id,
            ..
        } => {
            let Some(call) = ctx.load(me).await? else {
                return Ok(());
            };
            let Some(chain) = call.chain.as_ref() else {
                return Ok(());
            };
            let finished_here = match chain.purpose {
                ChainPurpose::Connect => {
                    let Some(exec) = chain.execution else {
                        return Ok(());
                    };
                    let mut done = ActionResult::default();
                    done.variables.insert(
                        CONNECT_RESULT_VARIABLE.into(),
                        Value::String(result.as_str().into()),
                    );
                    done.variables.insert(
                        CONNECT_CALL_ID_VARIABLE.into(),
                        bridged_call_id.map_or(Value::Null, |c| Value::String(c.to_string())),
                    );
                    crate::complete(
                        executor,
                        customer,
                        exec.activeflow_id,
                        exec.seq,
                        done,
                        &ctx.meta,
                    )
                    .await?
                }
                ChainPurpose::Queue { queue_id, agent_id } => {
                    on_agent_done(&ctx, me, queue_id, agent_id, result).await?
                }
            };
            // Nothing after the connect (or queue_join): the call ends with its bridge.
            if finished_here == Some(true) && !call.status.is_terminal() {
                tracing::info!(call = %me, "the flow ended with its bridge: hanging up");
                ctx.hang_up(me).await?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// An agent's chain ended: answered (the agent hung up, or the caller did) finishes the queue
/// call and the flow's `queue_join`; anything else puts the call back in the queue for the
/// next agent. The agent is available again either way. Returns what
/// [`crate::complete_waiting`] says of the flow.
async fn on_agent_done(
    ctx: &Ctx<'_>,
    call: CallId,
    queue_id: QueueId,
    agent_id: AgentId,
    result: ChainResult,
) -> Result<Option<bool>, ProcessError> {
    let at = Utc::now();
    let (customer, meta) = (ctx.customer, &ctx.meta);
    let queue = |cmd| async move {
        ctx.executor
            .execute::<Queue>(queue_id.as_uuid(), customer, Some(customer), cmd, meta)
            .await
    };
    if result == ChainResult::Answered {
        // Release before finishing: a crash in between still finds the call in service.
        release(ctx, call).await?;
        queue(QueueCommand::Finish { call_id: call, at }).await?;
        let mut done = ActionResult::default();
        done.variables.insert(
            QUEUE_RESULT_VARIABLE.into(),
            Value::String("answered".into()),
        );
        let waits = |k: &ActionKind| matches!(k, ActionKind::QueueJoin(_));
        return crate::complete_waiting(ctx.executor, customer, call, waits, done, meta).await;
    }
    tracing::info!(%call, %agent_id, result = result.as_str(), "the agent did not answer: back to the queue");
    queue(QueueCommand::Requeue {
        call_id: call,
        agent_id,
        at,
    })
    .await?;
    release(ctx, call).await?;
    Ok(None)
}

/// Makes the agent on `call` available again.
async fn release(ctx: &Ctx<'_>, call: CallId) -> Result<(), ProcessError> {
    let cmd = CustomerCommand::ReleaseAgentOf {
        call_id: call,
        at: Utc::now(),
    };
    ctx.executor
        .execute::<vbin_domain::Customer>(
            ctx.customer.as_uuid(),
            ctx.customer,
            Some(ctx.customer),
            cmd,
            &ctx.meta,
        )
        .await?;
    Ok(())
}
