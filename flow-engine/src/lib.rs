//! The flow engine: a process manager between calls and their activeflows.
//!
//! - A call with a flow is answered (outgoing) or arrives (incoming): `Start` its activeflow.
//! - A call ends: `Stop` its activeflow (`call_ended`).
//! - An activeflow executes an action the engine carries out: do it, then report
//!   `Complete{seq}` (the aggregate ignores a report for any other `seq`, so redelivered
//!   events are harmless):
//!   - `answer`: answer the call;
//!   - `hangup`: hang up the call (the activeflow has ended itself);
//!   - `webhook_send`: a request signed like webhooks (the `webhook-id` is the activeflow id
//!     and `seq`, the same on every retry of one execution); with `sync`, the actions of a 2xx
//!     `{"actions":[...]}` body run next;
//!   - `fetch_flow`: the customer's flow's actions run next;
//!   - `transcribe_stop`: the call's running transcriptions stop.
//!   - `connect`: the call chains legs (one per destination, created as calls whose master
//!     it is); the execution completes when the chain ends (the `call-chains` process manager);
//!   - `call`: new independent calls with their own flow; completes at once.
//!
//!   Actions that create aggregates run under a seed derived from the execution
//!   (`vbin_eventlog::reexec`), so a redelivery creates the same ids and nothing twice.
//!
//!   Media actions (talk, digits, recording and transcription starts, ...) are the media
//!   session's ([`ActionKind::is_media`]).

use chrono::Utc;
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;
use vbin_app::calls::{NewCalls, NewChain};
use vbin_app::flows::validate;
use vbin_app::flows::Program;
use vbin_app::{AppError, ExecError, Executor};
use vbin_bus::{Bus, ConsumerSpec, Route};
use vbin_domain::flow::renumber;
use vbin_domain::{
    Activeflow, ActiveflowCommand, Call, CallCommand, Conference, ConferenceCommand, DomainError,
    HangupRequest,
};
use vbin_event_schema::call::{ChainExecution, ChainPurpose, ChainResult, CONNECT_RESULT_VARIABLE};
use vbin_event_schema::flow::{
    ActionId, ActionKind, ActionResult, AiTalk, CallAction, ConferenceJoin, Connect, QueueJoin,
    RawAction, WebhookSend, QUEUE_RESULT_VARIABLE,
};
use vbin_event_schema::views::{CallView, ReferenceView};
use vbin_event_schema::{
    ActiveflowEvent, ActiveflowId, AicallId, CallDirection, CallEvent, CustomerId, PublishedEvent,
};
use vbin_eventlog::CommandMeta;
use vbin_netguard::AddressPolicy;
use vbin_webhooks::direct::{Direct, DirectRequest};

/// The route's name of call events (its own durable consumer's before the process managers'
/// shared one).
pub const CALLS_CONSUMER: &str = "flow-engine-calls";
/// Durable consumer of activeflow events.
pub const ACTIONS_CONSUMER: &str = "flow-engine-actions";
/// The flow variable listing the calls a `call` action placed.
pub const CALL_IDS_VARIABLE: &str = "voipbin.call.call_ids";
/// How long legs ring unless the action says.
pub const DEFAULT_DIAL_TIMEOUT_MS: u32 = 30_000;
/// Largest `webhook_send` answer read.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Why handling an event failed (it is redelivered).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The event did not decode.
    #[error("undecodable event")]
    Decode(#[from] vbin_event_schema::DecodeError),
    /// A command failed.
    #[error("command failed")]
    Exec(#[from] ExecError),
    /// A lookup failed.
    #[error("use case failed")]
    App(#[from] AppError),
    /// Postgres failed.
    #[error("database")]
    Database(#[from] sqlx::Error),
}

/// What the engine needs.
#[derive(Clone)]
pub struct Engine {
    app: vbin_app::App,
    direct: Direct,
}

impl Engine {
    /// An engine sending `webhook_send` requests under `policy` (the webhooks' SSRF guard).
    pub fn new(app: vbin_app::App, policy: AddressPolicy, timeout: Duration) -> Self {
        let direct = Direct::new(app.pool.clone(), policy, timeout, "vbin-flows/1");
        Self { app, direct }
    }

    fn executor(&self) -> &Executor {
        &self.app.executor
    }

    /// The engine's route of call events (a call starting, answered or ended moves its
    /// flow), for the process managers' call consumer (`vbin_processes::calls`, in the same
    /// part).
    pub fn call_route(&self) -> Route {
        let engine = self.clone();
        Route::of::<CallEvent, _, _, _>(
            CALLS_CONSUMER,
            &[
                CallEvent::CALL_CREATED,
                CallEvent::CALL_PROGRESSING,
                CallEvent::CALL_HUNGUP,
            ],
            move |e| engine.clone().on_call(e),
        )
        .lanes(16)
    }

    /// Runs the consumer of activeflow events until `shutdown` (its call events come through
    /// [`Engine::call_route`]).
    pub async fn run(self, bus: Bus, shutdown: impl std::future::Future<Output = ()>) {
        let mut group = vbin_bus::Group::new(bus);
        group.consumer(
            ConsumerSpec::for_events_of::<ActiveflowEvent>(
                ACTIONS_CONSUMER,
                &[ActiveflowEvent::ACTIVEFLOW_ACTION_EXECUTED],
            )
            .lanes(16),
            |e| self.clone().on_action(e),
        );
        group.run(shutdown).await;
    }

    fn meta(e: &PublishedEvent, customer: CustomerId) -> CommandMeta {
        let mut meta = CommandMeta::caused_by("flow-engine", e.event_id, &e.correlation_id());
        meta.customer_id = Some(customer.as_uuid());
        meta
    }

    async fn on_call(self, e: PublishedEvent) -> Result<(), EngineError> {
        let Some(activeflow) = e.view::<CallView>()?.activeflow_id else {
            return Ok(());
        };
        let customer = CustomerId(e.customer_id);
        let at = Utc::now();
        let cmd = match e.decode::<CallEvent>()? {
            CallEvent::CallCreated {
                direction: CallDirection::Incoming,
                ..
            } => ActiveflowCommand::Start { at },
            CallEvent::CallProgressing { .. } => ActiveflowCommand::Start { at },
            CallEvent::CallHungup { .. } => ActiveflowCommand::Stop {
                reason: "call_ended".into(),
                at,
            },
            _ => return Ok(()),
        };
        self.activeflow(&e, customer, activeflow.as_uuid(), cmd)
            .await
    }

    async fn activeflow(
        &self,
        e: &PublishedEvent,
        customer: CustomerId,
        id: Uuid,
        cmd: ActiveflowCommand,
    ) -> Result<(), EngineError> {
        match self
            .executor()
            .execute::<Activeflow>(id, customer, Some(customer), cmd, &Self::meta(e, customer))
            .await
        {
            Ok(_) | Err(ExecError::Domain(DomainError::NotFound(_))) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    async fn on_action(self, e: PublishedEvent) -> Result<(), EngineError> {
        let ActiveflowEvent::ActiveflowActionExecuted { seq, action, .. } =
            e.decode::<ActiveflowEvent>()?
        else {
            return Ok(());
        };
        let customer = CustomerId(e.customer_id);
        let result = match &action.kind {
            ActionKind::Answer(_) => {
                self.call(&e, customer, |at| CallCommand::MarkAnswered { at })
                    .await?;
                ActionResult::default()
            }
            ActionKind::Hangup(_) => {
                self.call(&e, customer, |at| CallCommand::Hangup {
                    request: HangupRequest::Local,
                    at,
                })
                .await?;
                return Ok(());
            }
            ActionKind::WebhookSend(w) => {
                let result = self.webhook(&e, customer, seq, w).await;
                if !w.sync {
                    if let Some(err) = result.error {
                        tracing::warn!(activeflow = %e.aggregate_id, seq, error = %err, "webhook_send failed");
                    }
                    return Ok(());
                }
                result
            }
            ActionKind::FetchFlow(f) => match self.app.live_flow(customer, f.flow_id).await {
                Ok(flow) => ActionResult {
                    actions: renumber(flow.actions, || ActionId(Uuid::now_v7())),
                    ..Default::default()
                },
                Err(AppError::NotFound(_)) => ActionResult {
                    error: Some(format!("fetch_flow: no flow {}", f.flow_id)),
                    ..Default::default()
                },
                Err(err) => return Err(err.into()),
            },
            ActionKind::TranscribeStop(_) => self.transcribe_stop(&e, customer).await?,
            ActionKind::Connect(c) => match self.connect(&e, customer, seq, c).await? {
                Some(failed) => failed,
                // The chain completes the execution when it ends.
                None => return Ok(()),
            },
            ActionKind::Call(c) => self.place_calls(&e, customer, seq, c).await?,
            ActionKind::ConferenceJoin(c) => {
                match self.conference_join(&e, customer, seq, c).await? {
                    Some(failed) => failed,
                    // The conference completes the execution when it is stopped.
                    None => return Ok(()),
                }
            }
            ActionKind::QueueJoin(q) => match self.queue_join(&e, customer, q).await? {
                Some(failed) => failed,
                // The queue completes the execution (agent done, or timeout).
                None => return Ok(()),
            },
            ActionKind::AiTalk(t) => match self.ai_talk(&e, customer, seq, t).await? {
                Some(refused) => refused,
                // The conversation completes the execution when it ends.
                None => return Ok(()),
            },
            _ => return Ok(()),
        };
        let cmd = ActiveflowCommand::Complete {
            seq,
            result,
            at: Utc::now(),
        };
        self.activeflow(&e, customer, e.aggregate_id, cmd).await
    }

    /// The acting of commands an execution sends that create aggregates: under the
    /// execution's seed (see the module's notes), with the customer's authority.
    fn seeded(e: &PublishedEvent, customer: CustomerId, key: &str) -> (Uuid, vbin_app::Acting) {
        let seed = vbin_eventlog::reexec::seed_for(e.aggregate_id, key);
        let mut meta = Self::meta(e, customer);
        meta.request_seed = Some(seed);
        (seed, vbin_app::Acting { customer, meta })
    }

    /// Dials the `connect`'s legs and chains them to the call; `Some(result)` when the action
    /// ends at once (no funds, the call is not answered, a trunk is gone).
    async fn connect(
        &self,
        e: &PublishedEvent,
        customer: CustomerId,
        seq: u64,
        c: &Connect,
    ) -> Result<Option<ActionResult>, EngineError> {
        let failed = |why: String| {
            let mut r = ActionResult {
                error: Some(format!("connect: {why}")),
                ..Default::default()
            };
            r.variables.insert(
                CONNECT_RESULT_VARIABLE.into(),
                Value::String(ChainResult::Failed.as_str().into()),
            );
            Ok(Some(r))
        };
        let Some(master) = e.view::<ReferenceView>()?.reference_id else {
            return failed("the flow has no call".into());
        };
        let (seed, acting) = Self::seeded(e, customer, &format!("connect:{seq}"));
        let chain = NewChain {
            master,
            destinations: c.destinations.iter().map(|d| d.0.clone()).collect(),
            source: c.source.as_ref().map(|s| s.0.clone()),
            dial_timeout_ms: c.dial_timeout.unwrap_or(DEFAULT_DIAL_TIMEOUT_MS),
            sandbox: c.sandbox.clone(),
            execution: Some(ChainExecution {
                activeflow_id: ActiveflowId(e.aggregate_id),
                seq,
            }),
            purpose: ChainPurpose::Connect,
        };
        let dialed = self.app.dial_chain(&acting, seed, chain).await.map(|_| ());
        match dialed {
            Ok(()) => Ok(None),
            Err(
                e @ (AppError::PaymentRequired
                | AppError::NotFound(_)
                | AppError::Invalid(_)
                | AppError::Conflict(_)
                | AppError::Exec(ExecError::Domain(_))),
            ) => failed(e.to_string()),
            Err(err) => Err(err.into()),
        }
    }

    /// Makes the call a member of the conference; `Some(result)` when it cannot join.
    async fn conference_join(
        &self,
        e: &PublishedEvent,
        customer: CustomerId,
        seq: u64,
        c: &ConferenceJoin,
    ) -> Result<Option<ActionResult>, EngineError> {
        let Some(call) = e.view::<ReferenceView>()?.reference_id else {
            return Ok(None);
        };
        let key = format!("conference-join:{}:{seq}", e.aggregate_id);
        let meta = Self::meta(e, customer).once(customer.as_uuid(), key);
        let cmd = ConferenceCommand::Join {
            conferencecall_id: Uuid::new_v5(
                &e.aggregate_id,
                format!("conference:{seq}").as_bytes(),
            ),
            call_id: call,
            at: Utc::now(),
        };
        let why = match self
            .executor()
            .execute::<Conference>(
                c.conference_id.as_uuid(),
                customer,
                Some(customer),
                cmd,
                &meta,
            )
            .await
        {
            Ok(_) | Err(ExecError::AlreadyApplied) => return Ok(None),
            Err(ExecError::Domain(DomainError::NotFound(_))) => {
                format!("conference_join: no conference {}", c.conference_id)
            }
            Err(ExecError::Domain(d)) => format!("conference_join: {d}"),
            Err(err) => return Err(err.into()),
        };
        Ok(Some(ActionResult {
            error: Some(why),
            ..Default::default()
        }))
    }

    /// Puts the call in the queue; `Some(result)` when it cannot join.
    async fn queue_join(
        &self,
        e: &PublishedEvent,
        customer: CustomerId,
        q: &QueueJoin,
    ) -> Result<Option<ActionResult>, EngineError> {
        let Some(call) = e.view::<ReferenceView>()?.reference_id else {
            return Ok(None);
        };
        let acting = vbin_app::Acting {
            customer,
            meta: Self::meta(e, customer),
        };
        let why = match self.app.join_queue(&acting, q.queue_id, call).await {
            // Joined now, or before this redelivery.
            Ok(_) | Err(AppError::Exec(ExecError::AlreadyApplied)) => return Ok(None),
            Err(AppError::NotFound(what)) => format!("queue_join: no {what} {}", q.queue_id),
            Err(
                e @ (AppError::Conflict(_)
                | AppError::Invalid(_)
                | AppError::Exec(ExecError::Domain(_))),
            ) => format!("queue_join: {e}"),
            Err(err) => return Err(err.into()),
        };
        let mut r = ActionResult {
            error: Some(why),
            ..Default::default()
        };
        r.variables
            .insert(QUEUE_RESULT_VARIABLE.into(), Value::String("failed".into()));
        Ok(Some(r))
    }

    /// Places the `call` action's calls, each running its own flow; completes at once with
    /// `voipbin.call.call_ids` (or the reason none was placed).
    async fn place_calls(
        &self,
        e: &PublishedEvent,
        customer: CustomerId,
        seq: u64,
        c: &CallAction,
    ) -> Result<ActionResult, EngineError> {
        let mut result = ActionResult::default();
        let source = match &c.source {
            Some(s) => Some(s.0.clone()),
            None => match e.view::<ReferenceView>()?.reference_id {
                Some(call) => self
                    .executor()
                    .load::<Call>(call.as_uuid(), Some(customer))
                    .await?
                    .and_then(|c| c.source.or(c.destination)),
                None => None,
            },
        };
        let Some(source) = source else {
            result.error = Some("call: no source (the flow has no call; give one)".into());
            return Ok(result);
        };
        let program = match (&c.flow_id, &c.actions) {
            (Some(id), _) => Program::Flow(*id),
            (None, Some(actions)) => Program::Inline(actions.clone()),
            (None, None) => {
                result.error = Some("call: give flow_id or actions".into());
                return Ok(result);
            }
        };
        let (seed, acting) = Self::seeded(e, customer, &format!("call:{seq}"));
        let new = NewCalls {
            source,
            destinations: c.destinations.iter().map(|d| d.0.clone()).collect(),
            variables: Default::default(),
            dial_timeout_ms: c.dial_timeout.unwrap_or(DEFAULT_DIAL_TIMEOUT_MS),
            program: Some(program),
            sandbox: c.sandbox.clone(),
            trunk_id: None,
            master_call_id: None,
            ids: vec![],
        };
        let app = self.app.clone();
        match vbin_eventlog::reexec::with_seed(
            seed,
            async move { app.create_calls(&acting, new).await },
        )
        .await
        {
            Ok(calls) => {
                let ids: Vec<Value> = calls
                    .iter()
                    .filter_map(|c| c.id.map(|id| Value::String(id.to_string())))
                    .collect();
                result
                    .variables
                    .insert(CALL_IDS_VARIABLE.into(), Value::Array(ids));
            }
            Err(
                e @ (AppError::PaymentRequired
                | AppError::NotFound(_)
                | AppError::Invalid(_)
                | AppError::Conflict(_)
                | AppError::Limit(_)
                | AppError::Exec(ExecError::Domain(_))),
            ) => result.error = Some(format!("call: {e}")),
            Err(err) => return Err(err.into()),
        }
        Ok(result)
    }

    /// Starts the execution's conversation with an assistant on the activeflow's call;
    /// `Some(result)` when it cannot start (the execution ends with that error).
    async fn ai_talk(
        &self,
        e: &PublishedEvent,
        customer: CustomerId,
        seq: u64,
        t: &AiTalk,
    ) -> Result<Option<ActionResult>, EngineError> {
        let Some(call) = e.view::<ReferenceView>()?.reference_id else {
            return Ok(None);
        };
        let id = AicallId(Uuid::new_v5(
            &e.aggregate_id,
            format!("ai_talk:{seq}").as_bytes(),
        ));
        let acting = vbin_app::Acting {
            customer,
            meta: Self::meta(e, customer),
        };
        let activeflow = ActiveflowId(e.aggregate_id);
        let error = match self
            .app
            .start_aicall(
                &acting,
                id,
                t.ai_id,
                call,
                vbin_app::ai::TalkOptions {
                    execution: Some((activeflow, seq)),
                    language: t.language.clone(),
                    max_secs: t.duration,
                },
            )
            .await
        {
            // Started now, or before this redelivery.
            Ok(_) | Err(AppError::Exec(ExecError::Domain(DomainError::AlreadyExists(_)))) => {
                return Ok(None)
            }
            Err(AppError::NotFound(what)) => format!("ai_talk: no {what} {}", t.ai_id),
            Err(
                e @ (AppError::Conflict(_)
                | AppError::Limit(_)
                | AppError::Invalid(_)
                | AppError::Exec(ExecError::Domain(_))),
            ) => format!("ai_talk: {e}"),
            Err(err) => return Err(err.into()),
        };
        Ok(Some(ActionResult {
            error: Some(error),
            ..Default::default()
        }))
    }

    /// Stops the running transcriptions of the activeflow's call.
    async fn transcribe_stop(
        &self,
        e: &PublishedEvent,
        customer: CustomerId,
    ) -> Result<ActionResult, EngineError> {
        let Some(call) = e.view::<ReferenceView>()?.reference_id else {
            return Ok(ActionResult::default());
        };
        vbin_app::transcription::stop_running(
            &self.app.pool,
            self.executor(),
            call,
            Some(customer),
            &Self::meta(e, customer),
        )
        .await?;
        Ok(ActionResult::default())
    }

    /// Sends a command to the activeflow's call.
    async fn call(
        &self,
        e: &PublishedEvent,
        customer: CustomerId,
        cmd: impl FnOnce(chrono::DateTime<Utc>) -> CallCommand,
    ) -> Result<(), EngineError> {
        let Some(flow) = self
            .executor()
            .load::<Activeflow>(e.aggregate_id, Some(customer))
            .await?
        else {
            return Ok(());
        };
        let call = flow.reference_id.as_uuid();
        match self
            .executor()
            .execute::<Call>(
                call,
                customer,
                Some(customer),
                cmd(Utc::now()),
                &Self::meta(e, customer),
            )
            .await
        {
            Ok(_) | Err(ExecError::Domain(DomainError::NotFound(_))) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Sends one `webhook_send` request; what it produced (actions for `sync`, or an error).
    async fn webhook(
        &self,
        e: &PublishedEvent,
        customer: CustomerId,
        seq: u64,
        w: &WebhookSend,
    ) -> ActionResult {
        match self.send(e, customer, seq, w).await {
            Ok(actions) => ActionResult {
                actions,
                ..Default::default()
            },
            Err(error) => ActionResult {
                error: Some(format!("webhook_send: {error}")),
                ..Default::default()
            },
        }
    }

    async fn send(
        &self,
        e: &PublishedEvent,
        customer: CustomerId,
        seq: u64,
        w: &WebhookSend,
    ) -> Result<Vec<vbin_event_schema::flow::Action>, String> {
        let body = match &w.data {
            Some(Value::String(s)) => s.clone().into_bytes(),
            Some(v) => serde_json::to_vec(v).unwrap_or_default(),
            None => {
                let view = e
                    .view::<ReferenceView>()
                    .map_err(|err| format!("reading the activeflow: {err}"))?;
                serde_json::to_vec(&json!({
                    "activeflow_id": e.aggregate_id,
                    "reference_id": view.reference_id,
                    "variables": view.variables,
                }))
                .unwrap_or_default()
            }
        };
        let webhook_id = format!("{}-{seq}", e.aggregate_id);
        let method = match w.method.as_deref() {
            Some("GET") => reqwest::Method::GET,
            Some("PUT") => reqwest::Method::PUT,
            _ => reqwest::Method::POST,
        };
        let mut resp = self
            .direct
            .send(DirectRequest {
                customer,
                url: &w.uri,
                method,
                content_type: w.data_type.as_deref(),
                id: &webhook_id,
                event_type: "activeflow_webhook_send",
                body,
            })
            .await
            .map_err(|err| err.to_string())?;
        if !w.sync {
            return Ok(vec![]);
        }
        let mut answer = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|err| err.to_string())? {
            if answer.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(format!("answer larger than {MAX_ANSWER_BYTES} bytes"));
            }
            answer.extend_from_slice(&chunk);
        }
        if answer.iter().all(u8::is_ascii_whitespace) {
            return Ok(vec![]);
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            #[serde(default)]
            actions: Vec<RawAction>,
        }
        let parsed: Answer = serde_json::from_slice(&answer)
            .map_err(|err| format!("answer is not {{\"actions\":[...]}}: {err}"))?;
        if parsed.actions.is_empty() {
            return Ok(vec![]);
        }
        let actions = validate(parsed.actions).map_err(|err| format!("answer: {err}"))?;
        Ok(renumber(actions, || ActionId(Uuid::now_v7())))
    }
}
