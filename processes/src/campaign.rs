//! The outbound campaign process managers.
//!
//! - **Dialer** (one active instance, advisory-lock lease; the others stand by): every tick
//!   (and whenever a campaign call ends) it looks at each running campaign, computes how many
//!   calls it may add (`max_concurrent_calls`, or `service_level`% of its queue's available
//!   agents, minus the calls in flight), picks pending and due targets from the targets read
//!   model, and dials each: `Target.Dial` (the aggregate refuses a target that is not pending
//!   and due, so a stale read model or a second dialer cannot dial it twice), then
//!   [`place_call`]. When nothing is left (`end_handle: stop`) it completes the campaign.
//! - **Placer** (`campaign-placer` consumer of `outdialtarget_dialing`): runs [`place_call`]
//!   again for every dial, which completes the dials a crash interrupted (a no-op otherwise).
//! - **Results** (`campaign-results` consumer of `call_hungup`): records the result on the
//!   target (pending again or completed) and on the campaign (counters, once per call).
//! - **Chain** (`campaign-chain` consumer of `campaign_status_changed`): starts
//!   `next_campaign_id` when a campaign completes.
//!
//! [`place_call`] records the call on the campaign (once-key `campaign-call:<call id>`) before
//! creating it, so a call's result always finds it in flight.

use crate::{applied, system_meta, ProcessError};
use chrono::Utc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;
use vbin_app::{ExecError, Executor};
use vbin_bus::{Bus, ConsumerSpec, Route};
use vbin_domain::{
    Activeflow, ActiveflowCommand, Call, CallCommand, Campaign, CampaignCommand, DomainError, Flow,
    NewActiveflow, NewCall, Outplan, Target, TargetCommand,
};
use vbin_event_schema::views::{CallView, CampaignView};
use vbin_event_schema::{
    ActiveflowId, CallEvent, CallId, CampaignCallRecord, CampaignEvent, CampaignId, CampaignStatus,
    CustomerId, EndHandle, FlowId, OutplanEvent, OutplanId, PublishedEvent, TargetEvent, TargetId,
    TargetResult, E164,
};
use vbin_eventlog::CommandMeta;

/// How often the dialer looks at running campaigns when nothing wakes it.
pub const TICK: Duration = Duration::from_millis(200);

/// How often a running campaign's targets are counted, at most.
pub const COUNT_EVERY: Duration = Duration::from_secs(2);

/// A count waits at least this many times its own duration before the next: a count reads
/// every row of the outdial, so at a fixed period its cost grew with the campaign (~130 ms
/// every 2 s at 100,000 targets, CPU the dialing needed). Paced by its duration, counting
/// takes at most 1/50 of the time whatever the size.
const COUNT_PACE: u32 = 50;

/// How old a dial must be before the placer checks whether it was interrupted.
pub const PLACER_SETTLE: Duration = Duration::from_secs(5);

/// Hangups the results consumer handles at once. A campaign records the results waiting for
/// it in one command per round, so a round can hold at most this many: with 16 lanes the rounds
/// (a few tens of ms each, one commit) held 16 results, the consumer kept ~850 hangups behind,
/// and those calls counted as in flight, holding back the dialer (~150 calls/s at 10,000
/// targets).
const RESULT_LANES: usize = 256;

/// Advisory lock key of the dialer lease.
const DIALER_LEASE: i64 = 0x7662_696e_6469_616c; // "vbindial"

/// What the campaign process managers share.
#[derive(Clone)]
pub struct Campaigns {
    pool: sqlx::PgPool,
    executor: Executor,
    wake: Arc<Notify>,
    /// When each campaign's targets may be counted again (a count scans the outdial's rows,
    /// so it is done at most every [`COUNT_EVERY`], not on every tick; see [`COUNT_PACE`]).
    counted: Arc<std::sync::Mutex<std::collections::HashMap<CampaignId, std::time::Instant>>>,
    /// Where each campaign's next target scan starts (see [`Campaigns::due_targets`]).
    cursors: Arc<std::sync::Mutex<std::collections::HashMap<CampaignId, Uuid>>>,
    /// Results waiting for their campaign (see [`Campaigns::record_result`]).
    results: vbin_app::together::Together<CampaignId, (CampaignCommand, CommandMeta)>,
    /// Calls this process's dialer placed lately, both steps committed: the placer skips
    /// their dials without asking the database (see [`Campaigns::on_dialing`]).
    placed: moka::sync::Cache<CallId, ()>,
}

/// How long the dialer remembers a call it placed: well past [`PLACER_SETTLE`], after which the
/// placer looks at its dial (a placer that lags further asks the database, as it does for the
/// dials of another process).
const PLACED_MEMORY: Duration = Duration::from_secs(120);

/// The route's name of the campaign calls' results (its own durable consumer's before
/// [`crate::calls`]).
pub const RESULTS: &str = "campaign-results";

/// Runs the dialer and the two consumers until `shutdown`; the results of its calls come
/// through [`Campaigns::results_route`] (in [`crate::calls`]), made from the same `c`.
pub async fn run(c: Campaigns, bus: Bus, shutdown: impl std::future::Future<Output = ()> + Send) {
    let mut group = vbin_bus::Group::new(bus);
    group
        .consumer(
            ConsumerSpec::for_events_of::<TargetEvent>(
                "campaign-placer",
                &[TargetEvent::OUTDIALTARGET_DIALING],
            )
            .lanes(crate::LANES),
            |e| c.clone().on_dialing(e),
        )
        .consumer(
            ConsumerSpec::for_events_of::<CampaignEvent>(
                "campaign-chain",
                &[CampaignEvent::CAMPAIGN_STATUS_CHANGED],
            ),
            |e| c.clone().on_status(e),
        )
        .task(|stop| c.clone().dialer(stop));
    group.run(shutdown).await;
}

impl Campaigns {
    /// The route of the results of campaign calls (`call_hungup`) of the process managers'
    /// call consumer ([`crate::calls`]): it wakes this handle's dialer.
    pub fn results_route(&self) -> Route {
        let c = self.clone();
        Route::of::<CallEvent, _, _, _>(RESULTS, &[CallEvent::CALL_HUNGUP], move |e| {
            c.clone().on_hungup(e)
        })
        .lanes(RESULT_LANES)
    }

    /// What the campaign managers share: one per process, for [`run`] and
    /// [`Campaigns::results_route`] (and for tests and benches).
    pub fn new(pool: sqlx::PgPool, executor: Executor) -> Self {
        Self {
            pool,
            executor,
            wake: Arc::new(Notify::new()),
            counted: Default::default(),
            cursors: Default::default(),
            results: Default::default(),
            placed: moka::sync::Cache::builder()
                .max_capacity(200_000)
                .time_to_live(PLACED_MEMORY)
                .build(),
        }
    }

    async fn dialer(self, shutdown: impl std::future::Future<Output = ()>) {
        crate::leased_loop(
            &self.pool.clone(),
            DIALER_LEASE,
            "campaign dialer",
            TICK,
            &self.wake.clone(),
            shutdown,
            || self.tick(),
        )
        .await
    }

    /// One pass over the running campaigns; returns how many calls it placed.
    pub async fn tick(&self) -> Result<usize, ProcessError> {
        let running: Vec<Uuid> =
            sqlx::query_scalar("SELECT id FROM rm_campaigns WHERE status = 'running'")
                .fetch_all(&self.pool)
                .await?;
        let mut placed = 0;
        for id in running {
            match self.tick_campaign(CampaignId(id)).await {
                Ok(n) => placed += n,
                Err(e) => {
                    tracing::warn!(campaign_id = %id, error = %e, "dialing a campaign failed")
                }
            }
        }
        Ok(placed)
    }

    /// What `f` reads of outplan `id`. An outplan never changes once created (its only event
    /// is its creation), so a state this process cached is current and the log is not probed.
    async fn outplan<R>(
        &self,
        id: OutplanId,
        customer: CustomerId,
        f: impl Fn(&Outplan) -> R,
    ) -> Result<Option<R>, ProcessError> {
        // An event added to outplans (an update) makes this read inexact: revisit it then.
        let _only_created = |e: OutplanEvent| {
            let OutplanEvent::OutplanCreated { .. } = e;
        };
        let cached = self
            .executor
            .inspect_cached::<Outplan, _>(id.as_uuid(), Some(customer), &f);
        if cached.is_some() {
            return Ok(cached);
        }
        Ok(self
            .executor
            .inspect::<Outplan, _>(id.as_uuid(), Some(customer), &f)
            .await?)
    }

    async fn tick_campaign(&self, id: CampaignId) -> Result<usize, ProcessError> {
        let Some(c) = self.executor.load::<Campaign>(id.as_uuid(), None).await? else {
            return Ok(0);
        };
        if c.status != CampaignStatus::Running {
            return Ok(0);
        }
        let Some(plan) = self
            .outplan(c.outplan_id, c.customer_id, Clone::clone)
            .await?
        else {
            tracing::error!(campaign_id = %id, "campaign without its outplan; not dialing");
            return Ok(0);
        };
        let meta = system_meta(
            "campaign-dialer",
            Uuid::now_v7(),
            &id.to_string(),
            c.customer_id,
        );
        if self.count_due(id) {
            let started = std::time::Instant::now();
            let counted = self.count_targets(&c, &meta).await;
            let next = COUNT_EVERY.max(started.elapsed() * COUNT_PACE);
            self.counted
                .lock()
                .expect("count times")
                .insert(id, started + next);
            counted?;
        }
        if !vbin_app::billing::can_start_call(&self.pool, c.customer_id).await? {
            tracing::warn!(campaign_id = %id, customer_id = %c.customer_id, "balance cannot cover a minute; campaign not dialing");
            return Ok(0);
        }
        let limit = self.call_limit(&c).await?;
        let capacity = limit.saturating_sub(c.counters.in_flight);
        let mut placed = 0;
        if capacity > 0 {
            let due = self.due_targets(&c, &plan, capacity).await?;
            // Each target is its own aggregate: dialed in parallel. The campaign records the
            // round's calls in one command, then the calls are created in parallel.
            let dials = due
                .iter()
                .map(|t| self.dial(&c, &plan, TargetId(*t), &meta));
            let mut dialed = Vec::new();
            for r in futures::future::join_all(dials).await {
                match r {
                    Ok(Some(d)) => dialed.push(d),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(campaign_id = %id, error = %e, "dialing a target failed")
                    }
                }
            }
            if !dialed.is_empty() {
                // A failure here leaves the dials to the placer, which completes them.
                self.record_calls(&c, dialed.iter().map(|(_, r)| r.clone()).collect(), &meta)
                    .await?;
                let creates = dialed
                    .iter()
                    .map(|(t, record)| self.create_call(&c, &plan, t, record.clone(), &meta));
                let created = futures::future::join_all(creates).await;
                for ((_, record), r) in dialed.iter().zip(created) {
                    match r {
                        Ok(()) => {
                            self.placed.insert(record.call_id, ());
                            placed += 1;
                        }
                        Err(e) => {
                            tracing::warn!(campaign_id = %id, error = %e, "creating a campaign call failed")
                        }
                    }
                }
            }
        }
        if placed == 0 && c.counters.in_flight == 0 && c.end_handle == EndHandle::Stop {
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM rm_outdialtargets WHERE outdial_id = $1 AND customer_id = $2 \
                   AND status <> 'completed'",
            )
            .bind(c.outdial_id.as_uuid())
            .bind(c.customer_id.as_uuid())
            .fetch_one(&self.pool)
            .await?;
            if open == 0 {
                let cmd = CampaignCommand::Complete { at: Utc::now() };
                self.executor
                    .execute::<Campaign>(id.as_uuid(), c.customer_id, None, cmd, &meta)
                    .await?;
                tracing::info!(campaign_id = %id, "campaign completed");
            }
        }
        metrics::counter!("vbin_campaign_calls_placed_total").increment(placed as u64);
        Ok(placed)
    }

    /// Up to `capacity` pending and due targets. The scan goes on from where the last one
    /// stopped (a cursor per campaign) and wraps around to the start for retries: scanning from
    /// the start every tick would walk over every target already dialed (their old index
    /// entries stay until vacuum), which made a long campaign slower and slower.
    async fn due_targets(
        &self,
        c: &Campaign,
        plan: &Outplan,
        capacity: u64,
    ) -> Result<Vec<Uuid>, ProcessError> {
        let id = c.id.expect("loaded campaign has an id");
        let cursor = self.cursors.lock().expect("cursors").get(&id).copied();
        // The open ends of the range are the nil and max UUIDs rather than NULL: a prepared
        // statement's generic plan (Postgres may switch to it after five runs) cannot turn
        // `($5 IS NULL OR id > $5)` into an index bound, and would read the whole outdial.
        let scan = |after: Option<Uuid>, upto: Option<Uuid>, limit: u64| {
            sqlx::query_scalar::<_, Uuid>(
                "SELECT id FROM rm_outdialtargets WHERE outdial_id = $1 AND customer_id = $2 \
                   AND status = 'pending' AND id > $5 AND id <= $6 \
                   AND (body->>'last_dial_time' IS NULL \
                    OR (body->>'last_dial_time')::timestamptz <= now() - make_interval(secs => $3)) \
                 ORDER BY id LIMIT $4",
            )
            .bind(c.outdial_id.as_uuid())
            .bind(c.customer_id.as_uuid())
            .bind(plan.try_interval_ms as f64 / 1000.0)
            .bind(limit as i64)
            .bind(after.unwrap_or(Uuid::nil()))
            .bind(upto.unwrap_or(Uuid::max()))
            .fetch_all(&self.pool)
        };
        let mut due = scan(cursor, None, capacity).await?;
        let next = due.last().copied();
        if cursor.is_some() && (due.len() as u64) < capacity {
            due.extend(scan(None, cursor, capacity - due.len() as u64).await?);
        }
        // Past the end: start over next time.
        let mut cursors = self.cursors.lock().expect("cursors");
        match next {
            Some(n) => cursors.insert(id, n),
            None => cursors.remove(&id),
        };
        Ok(due)
    }

    fn count_due(&self, id: CampaignId) -> bool {
        let counted = self.counted.lock().expect("count times");
        counted
            .get(&id)
            .is_none_or(|next| std::time::Instant::now() >= *next)
    }

    async fn count_targets(&self, c: &Campaign, meta: &CommandMeta) -> Result<(), ProcessError> {
        let id = c.id.expect("loaded campaign has an id");
        let total: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM rm_outdialtargets WHERE outdial_id = $1 AND customer_id = $2",
        )
        .bind(c.outdial_id.as_uuid())
        .bind(c.customer_id.as_uuid())
        .fetch_one(&self.pool)
        .await?;
        if total as u64 != c.total_targets {
            let cmd = CampaignCommand::CountTargets {
                total_targets: total as u64,
                at: Utc::now(),
            };
            self.executor
                .execute::<Campaign>(id.as_uuid(), c.customer_id, None, cmd, meta)
                .await?;
        }
        Ok(())
    }

    /// How many calls the campaign may have in flight.
    async fn call_limit(&self, c: &Campaign) -> Result<u64, ProcessError> {
        match c.queue_id {
            Some(queue) => {
                crate::queue::Queues::new(self.pool.clone(), self.executor.clone())
                    .campaign_limit(c, queue)
                    .await
            }
            None => Ok(c.max_concurrent_calls as u64),
        }
    }

    /// Dials one target: the target and the call to record on the campaign, None if the
    /// target was not dialable (stale read model).
    async fn dial(
        &self,
        c: &Campaign,
        plan: &Outplan,
        target: TargetId,
        meta: &CommandMeta,
    ) -> Result<Option<(Target, CampaignCallRecord)>, ProcessError> {
        let campaign_id = c.id.expect("loaded campaign has an id");
        let cmd = TargetCommand::Dial {
            campaign_id,
            campaigncall_id: Uuid::now_v7(),
            call_id: CallId::new(),
            max_try_count: plan.max_try_count,
            try_interval_ms: plan.try_interval_ms,
            at: Utc::now(),
        };
        let done = match self
            .executor
            .execute::<Target>(
                target.as_uuid(),
                c.customer_id,
                Some(c.customer_id),
                cmd,
                meta,
            )
            .await
        {
            Ok(done) => done,
            Err(ExecError::Domain(
                DomainError::FailedPrecondition(_) | DomainError::NotFound(_),
            )) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let t = done.state;
        if t.status != vbin_event_schema::TargetStatus::Dialing {
            return Ok(None); // settled instead (out of tries under this plan)
        }
        let record = CampaignCallRecord {
            campaigncall_id: t.campaigncall_id.unwrap_or_default(),
            call_id: t.call_id.expect("dialing target has a call"),
            target_id: target,
            destination: t.destinations[t.destination_index].clone(),
            destination_index: t.destination_index,
            try_count: t.try_counts[t.destination_index],
            tm_create: t.last_dial_time.unwrap_or_else(Utc::now),
        };
        Ok(Some((t, record)))
    }

    /// Records calls on the campaign before they are created (so that a call's result always
    /// finds it in flight), in one command, each call at most once (once-key
    /// `campaign-call:<call id>`). If one of them was recorded already (the placer finishing an
    /// interrupted dial), they are recorded one by one.
    async fn record_calls(
        &self,
        c: &Campaign,
        calls: Vec<CampaignCallRecord>,
        meta: &CommandMeta,
    ) -> Result<(), ProcessError> {
        let campaign_id = c.id.expect("loaded campaign has an id");
        let key = |r: &CampaignCallRecord| format!("campaign-call:{}", r.call_id);
        if let [call] = calls.as_slice() {
            let once = meta.clone().once(c.customer_id.as_uuid(), key(call));
            let cmd = CampaignCommand::RecordCall { call: call.clone() };
            applied(
                self.executor
                    .execute::<Campaign>(campaign_id.as_uuid(), c.customer_id, None, cmd, &once)
                    .await,
            )?;
            return Ok(());
        }
        let once = meta
            .clone()
            .once_all(c.customer_id.as_uuid(), calls.iter().map(key).collect());
        let cmd = CampaignCommand::RecordCalls {
            calls: calls.clone(),
        };
        match self
            .executor
            .execute::<Campaign>(campaign_id.as_uuid(), c.customer_id, None, cmd, &once)
            .await
        {
            Ok(_) => Ok(()),
            Err(ExecError::AlreadyApplied) => {
                for call in calls {
                    Box::pin(self.record_calls(c, vec![call], meta)).await?;
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Records the call on the campaign, then creates it. Both steps are idempotent.
    async fn place_call(
        &self,
        c: &Campaign,
        plan: &Outplan,
        target: &Target,
        record: CampaignCallRecord,
        meta: &CommandMeta,
    ) -> Result<(), ProcessError> {
        self.record_calls(c, vec![record.clone()], meta).await?;
        self.create_call(c, plan, target, record, meta).await
    }

    /// Creates a call recorded on the campaign (with its flow, if the campaign has one); a
    /// no-op if it exists.
    async fn create_call(
        &self,
        c: &Campaign,
        plan: &Outplan,
        target: &Target,
        record: CampaignCallRecord,
        meta: &CommandMeta,
    ) -> Result<(), ProcessError> {
        let campaign_id = c.id.expect("loaded campaign has an id");
        let call_id = record.call_id;
        let destination = record.destination;
        let source = plan.source.clone().expect("created outplan has a source");
        let activeflow_id = match c.flow_id {
            Some(flow) => {
                self.attach_flow(c, flow, call_id, (&source, &destination), target, meta)
                    .await?
            }
            None => None,
        };
        let create = CallCommand::Create {
            call: NewCall {
                call_id,
                customer_id: c.customer_id,
                source,
                destination,
                variables: target.variables.clone(),
                dial_timeout_ms: plan.dial_timeout_ms,
                campaign_id: Some(campaign_id),
                direction: vbin_event_schema::CallDirection::Outgoing,
                activeflow_id,
                // A trunk's far end is real: a sandbox script has nothing to play it.
                sandbox: target.sandbox.clone().filter(|_| plan.trunk_id.is_none()),
                trunk_id: plan.trunk_id,
                master_call_id: None,
            },
            at: Utc::now(),
        };
        // The call id was drawn by the dial (UUIDv7), so the first attempt skips the load; a
        // call the placer finds created already collides and is then loaded as usual.
        match self
            .executor
            .execute_new::<Call>(call_id.as_uuid(), c.customer_id, create, meta)
            .await
        {
            Ok(_) | Err(ExecError::Domain(DomainError::AlreadyExists(_))) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The activeflow running the campaign's flow on `call` once answered: one per call
    /// (its id follows from the call's), however often an interrupted dial is redone. A flow
    /// deleted since the campaign was created is logged and the call placed without it.
    async fn attach_flow(
        &self,
        c: &Campaign,
        flow_id: FlowId,
        call: CallId,
        (source, destination): (&E164, &E164),
        target: &Target,
        meta: &CommandMeta,
    ) -> Result<Option<ActiveflowId>, ProcessError> {
        let id = ActiveflowId(Uuid::new_v5(&call.as_uuid(), b"campaign-activeflow"));
        if self
            .executor
            .load::<Activeflow>(id.as_uuid(), Some(c.customer_id))
            .await?
            .is_some()
        {
            return Ok(Some(id));
        }
        let flow = match self
            .executor
            .load::<Flow>(flow_id.as_uuid(), Some(c.customer_id))
            .await?
        {
            Some(f) if f.is_live() => f,
            _ => {
                tracing::warn!(campaign_id = ?c.id, %flow_id, %call, "the campaign's flow was deleted; the call is placed without a flow");
                return Ok(None);
            }
        };
        let cmd = ActiveflowCommand::Create {
            new: NewActiveflow {
                activeflow_id: id,
                customer_id: c.customer_id,
                flow_id: Some(flow_id),
                reference_id: call,
                actions: flow.actions,
                variables: vbin_app::flows::call_variables(
                    call,
                    source,
                    destination,
                    &target.variables,
                ),
            },
            at: Utc::now(),
        };
        match self
            .executor
            .execute::<Activeflow>(id.as_uuid(), c.customer_id, None, cmd, meta)
            .await
        {
            Ok(_) | Err(ExecError::Domain(DomainError::AlreadyExists(_))) => Ok(Some(id)),
            Err(e) => Err(e.into()),
        }
    }

    /// `outdialtarget_dialing`: finish the dial if a crash interrupted it.
    ///
    /// The event is published while the dialer is still finishing that dial, so the placer
    /// looks only at events at least [`PLACER_SETTLE`] old: otherwise it would race the dialer
    /// and redo (harmlessly, but at a cost) most dials under load. The consumer handles events
    /// in order, so waiting for the oldest one delays the others by as much, not more: the
    /// placer trails the stream by the settle time at full throughput.
    async fn on_dialing(self, e: PublishedEvent) -> Result<(), ProcessError> {
        let age = (Utc::now() - e.timestamp).to_std().unwrap_or_default();
        if let Some(wait) = PLACER_SETTLE.checked_sub(age) {
            tokio::time::sleep(wait).await;
        }
        let TargetEvent::OutdialtargetDialing {
            campaign_id,
            campaigncall_id,
            call_id,
            destination_index,
            try_count,
            at,
        } = e.decode()?
        else {
            return Ok(());
        };
        // The usual case: the dialer did both steps already. Known here without a statement
        // when it was this process's dialer (the call is remembered only once both committed).
        if self.placed.contains_key(&call_id) {
            return Ok(());
        }
        let done: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM processed_commands WHERE key = $1) \
                AND EXISTS (SELECT 1 FROM events WHERE aggregate_type = $3 \
                            AND aggregate_id = $2 AND sequence = 1)",
        )
        .bind(format!("campaign-call:{call_id}"))
        .bind(call_id.as_uuid())
        .bind(CallEvent::AGGREGATE)
        .fetch_one(&self.pool)
        .await?;
        if done {
            return Ok(());
        }
        let customer = CustomerId(e.customer_id);
        let (Some(c), Some(t)) = (
            self.executor
                .load::<Campaign>(campaign_id.as_uuid(), Some(customer))
                .await?,
            self.executor
                .load::<Target>(e.aggregate_id, Some(customer))
                .await?,
        ) else {
            return Err(ProcessError::BadEvent("campaign or target missing".into()));
        };
        let Some(plan) = self.outplan(c.outplan_id, customer, Clone::clone).await? else {
            return Err(ProcessError::BadEvent("outplan missing".into()));
        };
        let destination = t
            .destinations
            .get(destination_index)
            .cloned()
            .ok_or_else(|| ProcessError::BadEvent("destination index out of range".into()))?;
        tracing::info!(%call_id, campaign_id = %campaign_id, "completing an interrupted dial");
        let record = CampaignCallRecord {
            campaigncall_id,
            call_id,
            target_id: TargetId(e.aggregate_id),
            destination,
            destination_index,
            try_count,
            tm_create: at,
        };
        let meta = system_meta(
            "campaign-placer",
            e.event_id,
            &campaign_id.to_string(),
            customer,
        );
        self.place_call(&c, &plan, &t, record, &meta).await
    }

    /// `call_hungup` of a campaign call: record the result on the target, then the campaign.
    async fn on_hungup(self, e: PublishedEvent) -> Result<(), ProcessError> {
        let Some(campaign_id) = e.view::<CallView>().ok().and_then(|v| v.campaign_id) else {
            return Ok(());
        };
        let CallEvent::CallHungup { status, .. } = e.decode()? else {
            return Ok(());
        };
        let result = TargetResult::of_call(status).unwrap_or(TargetResult::Failed);
        let call_id = CallId(e.aggregate_id);
        let customer = CustomerId(e.customer_id);
        // The call's record and the plan, read in place: the campaign holds up to
        // `max_concurrent_calls` records, too many to copy for every hangup. The record was
        // written before the call was created, so a cached campaign that has it answers (even
        // one a round of results behind: recording a result twice does nothing, the target
        // ignores a call it is done with and the campaign's once-key refuses the repeat); one
        // that does not is checked against the log.
        let record = |c: &Campaign| {
            c.in_flight
                .get(&call_id)
                .map(|r| (r.target_id, c.outplan_id))
        };
        let found = match self
            .executor
            .inspect_cached::<Campaign, _>(campaign_id.as_uuid(), Some(customer), record)
            .flatten()
        {
            Some(hit) => Some(hit),
            None => self
                .executor
                .inspect::<Campaign, _>(campaign_id.as_uuid(), Some(customer), record)
                .await?
                .flatten(),
        };
        let Some((target_id, outplan_id)) = found else {
            return Ok(()); // no such campaign, or the result was recorded before
        };
        let max_try_count = self
            .outplan(outplan_id, customer, |p| p.max_try_count)
            .await?
            .unwrap_or(1);
        let meta = system_meta(RESULTS, e.event_id, &campaign_id.to_string(), customer);
        let at = Utc::now();
        let t = self
            .executor
            .execute::<Target>(
                target_id.as_uuid(),
                customer,
                None,
                TargetCommand::RecordResult {
                    call_id,
                    result,
                    max_try_count,
                    at,
                },
                &meta,
            )
            .await?
            .state;
        let cmd = CampaignCommand::RecordResult {
            call_id,
            result,
            target_done: t.done_with(call_id),
            at,
        };
        self.record_result(campaign_id, customer, cmd, meta).await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Records a call's result on its campaign. The results that arrive while the campaign is
    /// busy recording others wait and are then recorded together, in one command (each at most
    /// once: once-key `campaign-result:<call id>`): a campaign takes one command per round of
    /// results, not one per call, so its calls are not serialized on it. The recording runs in
    /// a task of its own, so a handler that is dropped cannot leave the others waiting.
    async fn record_result(
        &self,
        campaign_id: CampaignId,
        customer: CustomerId,
        cmd: CampaignCommand,
        meta: CommandMeta,
    ) -> Result<(), ProcessError> {
        let me = self.clone();
        self.results
            .submit(campaign_id, (cmd, meta), move |batch| {
                let me = me.clone();
                async move {
                    let (commands, metas): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                    me.record_results(campaign_id, customer, commands, &metas)
                        .await
                }
            })
            .await
            .map_err(Into::into)
    }

    /// Records `results` (`RecordResult` commands) on the campaign in one command, or one by
    /// one if one of them was recorded before. The events carry the first result's metadata
    /// (its causation): one command, one metadata.
    async fn record_results(
        &self,
        campaign_id: CampaignId,
        customer: CustomerId,
        results: Vec<CampaignCommand>,
        metas: &[CommandMeta],
    ) -> Result<(), ProcessError> {
        let key = |cmd: &CampaignCommand| match cmd {
            CampaignCommand::RecordResult { call_id, .. } => format!("campaign-result:{call_id}"),
            _ => String::new(),
        };
        let id = campaign_id.as_uuid();
        if let ([cmd], [meta]) = (results.as_slice(), metas) {
            let once = meta.clone().once(customer.as_uuid(), key(cmd));
            applied(
                self.executor
                    .execute::<Campaign>(id, customer, None, cmd.clone(), &once)
                    .await,
            )?;
            return Ok(());
        }
        let once = metas[0]
            .clone()
            .once_all(customer.as_uuid(), results.iter().map(key).collect());
        let cmd = CampaignCommand::RecordResults {
            results: results.clone(),
        };
        match self
            .executor
            .execute::<Campaign>(id, customer, None, cmd, &once)
            .await
        {
            Ok(_) => Ok(()),
            Err(ExecError::AlreadyApplied) => {
                for (cmd, meta) in results.into_iter().zip(metas) {
                    Box::pin(self.record_results(
                        campaign_id,
                        customer,
                        vec![cmd],
                        std::slice::from_ref(meta),
                    ))
                    .await?;
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `campaign_status_changed` to completed: start the next campaign, if any.
    async fn on_status(self, e: PublishedEvent) -> Result<(), ProcessError> {
        let CampaignEvent::CampaignStatusChanged {
            status: CampaignStatus::Completed,
            ..
        } = e.decode()?
        else {
            return Ok(());
        };
        let customer = CustomerId(e.customer_id);
        let Some(next) = e
            .view::<CampaignView>()
            .ok()
            .and_then(|v| v.next_campaign_id)
        else {
            return Ok(());
        };
        let meta = system_meta(
            "campaign-chain",
            e.event_id,
            &e.aggregate_id.to_string(),
            customer,
        );
        let cmd = CampaignCommand::Request {
            status: CampaignStatus::Running,
            at: Utc::now(),
        };
        match self
            .executor
            .execute::<Campaign>(next.as_uuid(), customer, Some(customer), cmd, &meta)
            .await
        {
            Ok(_) => {
                tracing::info!(campaign_id = %e.aggregate_id, next_campaign_id = %next, "next campaign started");
                self.wake.notify_one();
                Ok(())
            }
            Err(ExecError::Domain(err)) => {
                tracing::warn!(next_campaign_id = %next, error = %err, "next campaign not started");
                Ok(())
            }
            Err(err) => Err(err.into()),
        }
    }
}
