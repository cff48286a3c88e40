//! The queue process managers.
//!
//! - **Dispatcher** (one active instance, advisory-lock lease): every tick it walks the
//!   waiting queue calls, oldest first. A call that has waited the queue's `wait_timeout_ms`
//!   is abandoned (`timeout`); otherwise the Customer aggregate assigns it an available agent
//!   of the queue (`AssignAgent`: linear or ringall, atomic across queues sharing agents) and
//!   the queue records the service (`Serve`). Both steps are idempotent: after a crash between
//!   them, the repeated assignment returns the same agent. Should the call have left the
//!   queue meanwhile, the agent is released again.
//! - **Calls** (`queue-calls` consumer of `call_progressing` and `call_hungup`): an answered
//!   campaign call joins its campaign's queue (once-key `queue-join:<call id>`); a call that
//!   ends is abandoned (`hangup`) if still waiting, or finished and its agent released if it
//!   was being served. Which queue a call is in comes from `queue_calls`, written in the
//!   join's transaction, so a lagging read model cannot make a hangup miss its queue.
//! - **Timeouts** (`queue-timeouts` consumer of `queuecall_abandoned`): hangs up a call that
//!   timed out in the queue (event-driven, so a crash after the abandon still hangs it up).

use crate::{applied, system_meta, ProcessError};
use chrono::Utc;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;
use vbin_app::calls::NewChain;
use vbin_app::queues::join;
use vbin_app::AppError;
use vbin_app::{ExecError, Executor};
use vbin_bus::{Bus, ConsumerSpec, Route};
use vbin_domain::{
    Call, CallCommand, Campaign, Customer, CustomerCommand, DomainError, HangupRequest, Queue,
    QueueCommand,
};
use vbin_event_schema::call::ChainPurpose;
use vbin_event_schema::flow::{ActionKind, ActionResult, SandboxScript, QUEUE_RESULT_VARIABLE};
use vbin_event_schema::views::CallView;
use vbin_event_schema::{
    AbandonReason, CallEvent, CallId, CampaignId, CustomerId, PublishedEvent, QueueEvent, QueueId,
};

/// How long an agent's phone rings before the call goes to the next agent.
pub const AGENT_RING_TIMEOUT_MS: u32 = 20_000;

/// How often the dispatcher looks at waiting calls when nothing wakes it.
pub const TICK: Duration = Duration::from_millis(200);

/// Most waiting calls one tick looks at.
const SCAN_LIMIT: i64 = 2_000;

/// Advisory lock key of the dispatcher lease.
const DISPATCHER_LEASE: i64 = 0x7662_696e_7175_6575; // "vbinqueu"

/// What the queue process managers share.
#[derive(Clone)]
pub struct Queues {
    pool: sqlx::PgPool,
    executor: Executor,
    wake: Arc<Notify>,
    /// Each campaign's queue, by owner and campaign (see [`Queues::campaign_queue`]).
    campaign_queues: Arc<std::sync::Mutex<CampaignQueues>>,
}

/// Campaigns' queues by owner and campaign.
type CampaignQueues = HashMap<(CustomerId, CampaignId), Option<QueueId>>;

/// Most campaigns whose queue [`Queues::campaign_queue`] remembers (then it starts afresh).
const CAMPAIGN_QUEUES_KEPT: usize = 10_000;

/// The route's name of the queues' call events (its own durable consumer's before
/// [`crate::calls`]).
pub const CALLS: &str = "queue-calls";

/// Runs the dispatcher and the two consumers until `shutdown`; the calls' events come through
/// [`Queues::calls_route`] (in [`crate::calls`]), made from the same `q`.
pub async fn run(q: Queues, bus: Bus, shutdown: impl std::future::Future<Output = ()> + Send) {
    let mut group = vbin_bus::Group::new(bus);
    group
        .consumer(
            ConsumerSpec::for_events_of::<QueueEvent>(
                "queue-agents",
                &[QueueEvent::QUEUECALL_SERVED],
            )
            .lanes(crate::LANES),
            |e| q.clone().on_served(e),
        )
        .consumer(
            ConsumerSpec::for_events_of::<QueueEvent>(
                "queue-timeouts",
                &[QueueEvent::QUEUECALL_ABANDONED],
            ),
            |e| q.clone().on_abandoned(e),
        )
        .task(|stop| {
            crate::leased_loop(
                &q.pool,
                DISPATCHER_LEASE,
                "queue dispatcher",
                TICK,
                &q.wake,
                stop,
                || q.tick(),
            )
        });
    group.run(shutdown).await;
}

/// A waiting call as the read model lists it.
#[derive(sqlx::FromRow)]
struct WaitingRow {
    aggregate_id: Uuid,
    customer_id: Uuid,
    call_id: Uuid,
    /// Whether the calls read model shows the call ended (a join can race the hangup).
    ended: bool,
}

impl Queues {
    /// The route of the calls' events of the process managers' call consumer
    /// ([`crate::calls`]): it wakes this handle's dispatcher.
    pub fn calls_route(&self) -> Route {
        let q = self.clone();
        Route::of::<CallEvent, _, _, _>(
            CALLS,
            &[CallEvent::CALL_PROGRESSING, CallEvent::CALL_HUNGUP],
            move |e| q.clone().on_call(e),
        )
        .lanes(crate::LANES)
    }

    /// What the queue managers share: one per process, for [`run`] and
    /// [`Queues::calls_route`] (and for tests and benches).
    pub fn new(pool: sqlx::PgPool, executor: Executor) -> Self {
        Self {
            pool,
            executor,
            wake: Arc::new(Notify::new()),
            campaign_queues: Arc::default(),
        }
    }

    /// The queue of campaign `campaign` of `customer` (None: it has none, or it is not the
    /// customer's). A campaign's queue is set when it is created and never changes, so it is
    /// loaded once per process: loading the campaign for every answered call (a large
    /// aggregate, its calls in flight, that changes with every round of results and so is
    /// rarely cached) made this consumer the one that fell furthest behind a large campaign.
    async fn campaign_queue(
        &self,
        customer: CustomerId,
        campaign: CampaignId,
    ) -> Result<Option<QueueId>, ProcessError> {
        let key = (customer, campaign);
        if let Some(q) = self
            .campaign_queues
            .lock()
            .expect("campaign queues")
            .get(&key)
        {
            return Ok(*q);
        }
        let Some(c) = self
            .executor
            .load::<Campaign>(campaign.as_uuid(), Some(customer))
            .await?
        else {
            return Ok(None); // not remembered: it may yet be created
        };
        let mut kept = self.campaign_queues.lock().expect("campaign queues");
        if kept.len() >= CAMPAIGN_QUEUES_KEPT {
            kept.clear();
        }
        kept.insert(key, c.queue_id);
        Ok(c.queue_id)
    }

    /// One pass over the waiting calls; returns how many got an agent.
    pub async fn tick(&self) -> Result<usize, ProcessError> {
        let waiting: Vec<WaitingRow> = sqlx::query_as(
            "SELECT q.aggregate_id, q.customer_id, (q.body->>'call_id')::uuid AS call_id, \
                    COALESCE(c.body->>'status' NOT IN ('dialing', 'ringing', 'progressing'), false) AS ended \
             FROM rm_queuecalls q LEFT JOIN rm_calls c ON c.id = (q.body->>'call_id')::uuid \
             WHERE q.status = 'waiting' ORDER BY q.id LIMIT $1",
        )
        .bind(SCAN_LIMIT)
        .fetch_all(&self.pool)
        .await?;
        // Queues without a free agent this tick: their later calls only get timeout checks,
        // so a queue stays first-come first-served.
        let mut saturated = HashSet::new();
        let mut queues: HashMap<QueueId, Option<Queue>> = HashMap::new();
        let mut served = 0;
        for w in waiting {
            let queue_id = QueueId(w.aggregate_id);
            let customer = CustomerId(w.customer_id);
            // Each queue is loaded once per tick and kept current from the commands' results.
            let q = match queues.get_mut(&queue_id) {
                Some(q) => q,
                None => {
                    let loaded = self
                        .executor
                        .load::<Queue>(queue_id.as_uuid(), Some(customer))
                        .await?;
                    queues.entry(queue_id).or_insert(loaded)
                }
            };
            let Some(q) = q.as_mut() else { continue };
            match self
                .dispatch(q, customer, CallId(w.call_id), w.ended, &saturated)
                .await
            {
                Ok(Dispatch::Served) => served += 1,
                Ok(Dispatch::NoAgent) => {
                    saturated.insert(queue_id);
                }
                Ok(Dispatch::Nothing) => {}
                Err(e) => {
                    tracing::warn!(queue_id = %queue_id, call_id = %w.call_id, error = %e, "dispatching a queue call failed")
                }
            }
        }
        metrics::counter!("vbin_queue_calls_served_total").increment(served as u64);
        Ok(served)
    }

    async fn dispatch(
        &self,
        q: &mut Queue,
        customer: CustomerId,
        call_id: CallId,
        ended: bool,
        saturated: &HashSet<QueueId>,
    ) -> Result<Dispatch, ProcessError> {
        let queue_id = q.id.expect("loaded queue has an id");
        let Some(entry) = q.waiting.get(&call_id) else {
            return Ok(Dispatch::Nothing); // the read model lags
        };
        let meta = system_meta(
            "queue-dispatcher",
            Uuid::now_v7(),
            &call_id.to_string(),
            customer,
        );
        let now = Utc::now();
        let waited = (now - entry.tm_join).num_milliseconds();
        if ended || waited >= i64::from(q.wait_timeout_ms) {
            let reason = if ended {
                AbandonReason::Hangup
            } else {
                AbandonReason::Timeout
            };
            let cmd = QueueCommand::Abandon {
                call_id,
                reason,
                at: now,
            };
            *q = self
                .executor
                .execute::<Queue>(queue_id.as_uuid(), customer, None, cmd, &meta)
                .await?
                .state;
            return Ok(Dispatch::Nothing);
        }
        if saturated.contains(&queue_id) {
            return Ok(Dispatch::Nothing);
        }
        // Agents that did not answer this call are tried again only once every agent has been.
        let untried: Vec<_> = q
            .agent_ids
            .iter()
            .copied()
            .filter(|a| !entry.tried.contains(a))
            .collect();
        let candidates = if untried.is_empty() {
            q.agent_ids.clone()
        } else {
            untried
        };
        let assign = CustomerCommand::AssignAgent {
            call_id,
            candidates,
            routing: q.routing_method,
            at: now,
        };
        let owner = match self
            .executor
            .execute::<Customer>(customer.as_uuid(), customer, None, assign, &meta)
            .await
        {
            Ok(done) => done.state,
            Err(ExecError::Domain(DomainError::FailedPrecondition(_))) => {
                return Ok(Dispatch::NoAgent)
            }
            Err(e) => return Err(e.into()),
        };
        let agent_id = owner
            .agent_on(call_id)
            .map(|a| a.id)
            .ok_or_else(|| ProcessError::BadEvent("assigned agent not found".into()))?;
        let serve = QueueCommand::Serve {
            call_id,
            agent_id,
            at: Utc::now(),
        };
        match self
            .executor
            .execute::<Queue>(queue_id.as_uuid(), customer, None, serve, &meta)
            .await
        {
            Ok(done) => {
                *q = done.state;
                tracing::info!(queue_id = %queue_id, %call_id, %agent_id, "queue call served");
                Ok(Dispatch::Served)
            }
            Err(ExecError::Domain(DomainError::FailedPrecondition(_))) => {
                // The call left the queue after we looked: give the agent back.
                self.release(customer, call_id, &meta).await?;
                Ok(Dispatch::Nothing)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn release(
        &self,
        customer: CustomerId,
        call_id: CallId,
        meta: &vbin_eventlog::CommandMeta,
    ) -> Result<(), ProcessError> {
        let cmd = CustomerCommand::ReleaseAgentOf {
            call_id,
            at: Utc::now(),
        };
        self.executor
            .execute::<Customer>(customer.as_uuid(), customer, None, cmd, meta)
            .await?;
        Ok(())
    }

    /// `call_progressing`: a campaign call with a queue joins it. `call_hungup`: the call
    /// leaves its queue (abandoned or done, agent released).
    async fn on_call(self, e: PublishedEvent) -> Result<(), ProcessError> {
        let customer = CustomerId(e.customer_id);
        let call_id = CallId(e.aggregate_id);
        let meta = system_meta(CALLS, e.event_id, &call_id.to_string(), customer);
        match e.decode()? {
            CallEvent::CallProgressing { .. } => {
                let Some(campaign_id) = e.view::<CallView>().ok().and_then(|v| v.campaign_id)
                else {
                    return Ok(());
                };
                let Some(queue_id) = self.campaign_queue(customer, campaign_id).await? else {
                    return Ok(());
                };
                // The same use case as `POST /v1.0/queues/{id}/calls`: once per call.
                match applied(join(&self.executor, customer, queue_id, call_id, &meta).await) {
                    Ok(_) => self.wake.notify_one(),
                    Err(ExecError::Domain(err)) => {
                        tracing::warn!(%call_id, queue_id = %queue_id, error = %err, "campaign call not queued")
                    }
                    Err(err) => return Err(err.into()),
                }
                Ok(())
            }
            // Only an answered call joins a queue (the API and flows check that it is
            // progressing; a campaign's call joins on `call_progressing`): a call that was
            // never answered is in no queue.
            CallEvent::CallHungup { status, .. } if status.was_answered() => {
                self.on_ended(customer, call_id, &meta).await
            }
            _ => Ok(()),
        }
    }

    /// A call ended: it leaves its queue, if it is in one.
    async fn on_ended(
        &self,
        customer: CustomerId,
        call_id: CallId,
        meta: &vbin_eventlog::CommandMeta,
    ) -> Result<(), ProcessError> {
        let queue: Option<Uuid> =
            sqlx::query_scalar("SELECT queue_id FROM queue_calls WHERE call_id = $1")
                .bind(call_id.as_uuid())
                .fetch_optional(&self.pool)
                .await?;
        let Some(queue_id) = queue else {
            return Ok(());
        };
        let at = Utc::now();
        let abandon = QueueCommand::Abandon {
            call_id,
            reason: AbandonReason::Hangup,
            at,
        };
        self.executor
            .execute::<Queue>(queue_id, customer, None, abandon, meta)
            .await?;
        // Release before finishing: if we crash in between, the redelivery still finds the
        // call in service and finishes it.
        self.release(customer, call_id, meta).await?;
        let finish = QueueCommand::Finish { call_id, at };
        self.executor
            .execute::<Queue>(queue_id, customer, None, finish, meta)
            .await?;
        self.wake.notify_one();
        Ok(())
    }

    /// `queuecall_served`: dials the agent's addresses as legs of the call, to bridge the
    /// first that answers (an agent without addresses is not dialed: it only gets the call
    /// assigned). Should the legs not be placed, the call goes back to the queue.
    async fn on_served(self, e: PublishedEvent) -> Result<(), ProcessError> {
        let QueueEvent::QueuecallServed { call, .. } = e.decode()? else {
            return Ok(());
        };
        let Some(agent_id) = call.agent_id else {
            return Ok(());
        };
        let customer = CustomerId(e.customer_id);
        let queue_id = QueueId(e.aggregate_id);
        let addresses: Vec<_> = self
            .executor
            .load::<Customer>(customer.as_uuid(), Some(customer))
            .await?
            .and_then(|c| c.agent(agent_id).map(|a| a.addresses.clone()))
            .unwrap_or_default();
        if addresses.is_empty() {
            return Ok(());
        }
        let meta = system_meta(
            "queue-agents",
            e.event_id,
            &call.call_id.to_string(),
            customer,
        );
        let acting = vbin_app::Acting {
            customer,
            meta: meta.clone(),
        };
        // Each handing of the call to an agent dials once, however often the event comes.
        let seed = vbin_eventlog::reexec::seed_for(
            call.queuecall_id,
            &format!("agent:{agent_id}:{}", call.tried.len()),
        );
        let chain = NewChain {
            master: call.call_id,
            destinations: addresses.into_iter().map(|a| a.0).collect(),
            source: None,
            dial_timeout_ms: AGENT_RING_TIMEOUT_MS,
            sandbox: self.join_sandbox(customer, call.call_id).await?,
            execution: None,
            purpose: ChainPurpose::Queue { queue_id, agent_id },
        };
        let app = vbin_app::App {
            executor: self.executor.clone(),
            pool: self.pool.clone(),
            sealer: None,
            max_live_aicalls: 0,
            funds_checks: Default::default(),
        };
        match app.dial_chain(&acting, seed, chain).await {
            Ok(legs) => {
                tracing::info!(call_id = %call.call_id, %agent_id, legs = legs.len(), "dialing the agent");
                Ok(())
            }
            Err(
                err @ (AppError::PaymentRequired
                | AppError::NotFound(_)
                | AppError::Invalid(_)
                | AppError::Conflict(_)
                | AppError::Exec(ExecError::Domain(_))),
            ) => {
                tracing::warn!(call_id = %call.call_id, %agent_id, error = %err, "cannot dial the agent: back to the queue");
                let cmd = QueueCommand::Requeue {
                    call_id: call.call_id,
                    agent_id,
                    at: Utc::now(),
                };
                self.executor
                    .execute::<Queue>(queue_id.as_uuid(), customer, None, cmd, &meta)
                    .await?;
                self.release(customer, call.call_id, &meta).await
            }
            Err(err) => Err(ProcessError::App(err)),
        }
    }

    /// The sandbox script the call's flow gave its `queue_join` for the agents.
    async fn join_sandbox(
        &self,
        customer: CustomerId,
        call: CallId,
    ) -> Result<Option<SandboxScript>, ProcessError> {
        Ok(crate::call_flow(&self.executor, customer, call)
            .await?
            .and_then(|f| f.current)
            .and_then(|a| match a.kind {
                ActionKind::QueueJoin(j) => j.sandbox,
                _ => None,
            }))
    }

    /// `queuecall_abandoned` with reason `timeout`: the flow's `queue_join` goes on with
    /// `voipbin.queue.result` = `timeout`; a call not joined by its flow is hung up.
    async fn on_abandoned(self, e: PublishedEvent) -> Result<(), ProcessError> {
        let QueueEvent::QueuecallAbandoned {
            call,
            reason: AbandonReason::Timeout,
            ..
        } = e.decode()?
        else {
            return Ok(());
        };
        let call_id = call.call_id;
        let customer = CustomerId(e.customer_id);
        let meta = system_meta("queue-timeouts", e.event_id, &call_id.to_string(), customer);
        let mut timeout = ActionResult::default();
        timeout
            .variables
            .insert(QUEUE_RESULT_VARIABLE.into(), "timeout".into());
        let waits = |k: &ActionKind| matches!(k, ActionKind::QueueJoin(_));
        if crate::complete_waiting(&self.executor, customer, call_id, waits, timeout, &meta)
            .await?
            .is_some()
        {
            return Ok(());
        }
        let cmd = CallCommand::Hangup {
            request: HangupRequest::Local,
            at: Utc::now(),
        };
        match self
            .executor
            .execute::<Call>(call_id.as_uuid(), customer, None, cmd, &meta)
            .await
        {
            Ok(_) | Err(ExecError::Domain(_)) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// How many more calls a campaign with queue `queue_id` may have ringing or waiting:
    /// `service_level`% of the queue's available agents. Calls already with an agent do not
    /// count against it.
    pub async fn campaign_limit(
        &self,
        campaign: &Campaign,
        queue_id: QueueId,
    ) -> Result<u64, ProcessError> {
        let customer = campaign.customer_id;
        let (Some(q), Some(owner)) = (
            self.executor
                .load::<Queue>(queue_id.as_uuid(), Some(customer))
                .await?,
            self.executor
                .load::<Customer>(customer.as_uuid(), Some(customer))
                .await?,
        ) else {
            return Ok(0);
        };
        let available = owner.available_among(&q.agent_ids) as u64;
        let with_agent = campaign
            .in_flight
            .keys()
            .filter(|c| q.serving.contains_key(c))
            .count() as u64;
        Ok(available * u64::from(campaign.service_level) / 100 + with_agent)
    }
}

/// What one dispatch did.
enum Dispatch {
    Served,
    NoAgent,
    Nothing,
}
