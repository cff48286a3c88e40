//! vbin's process managers: durable JetStream consumers (and one polling dialer) that react to
//! events by sending commands, never by writing another aggregate's tables.
//!
//! Every command they send is idempotent: either the aggregate ignores a repeat (a result for
//! a call no longer in flight), or the command carries a once-key (`billing:<call id>`) that
//! the event store records in the same transaction as the events. So redelivery, restarts and
//! several instances change nothing.
//!
//! The two pollers (campaign dialer, queue dispatcher) run in one instance at a time: each
//! holds a Postgres session advisory lock (its lease) while it works; the others wait for it.

pub mod aicalls;
pub mod billing;
pub mod calls;
pub mod campaign;
pub mod chain;
pub mod conference;
pub mod hangups;
pub mod queue;
pub mod transcribe;

/// Events the campaign placer/results and queue-calls consumers handle at once (ordered per
/// aggregate).
pub const LANES: usize = 16;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;
use vbin_app::ExecError;
use vbin_event_schema::CustomerId;
use vbin_eventlog::CommandMeta;

/// Why a handler failed (the event is redelivered later).
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// A command failed for a reason that may pass.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// A read failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The event is not what it claims.
    #[error("bad event: {0}")]
    BadEvent(String),
    /// A use case failed for a reason that may pass.
    #[error(transparent)]
    App(vbin_app::AppError),
    /// The event does not decode as its aggregate's events.
    #[error("bad event: {0}")]
    Decode(#[from] vbin_event_schema::DecodeError),
    /// A command that did the work of several failed (the cause is logged where it ran).
    #[error(transparent)]
    Together(#[from] vbin_app::together::TogetherError),
}

/// Treats "already applied" as success: the command took effect earlier.
pub(crate) fn applied<T>(r: Result<T, ExecError>) -> Result<Option<T>, ExecError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(ExecError::AlreadyApplied) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Runs `tick` every `every` (and whenever `wake` is notified) while this process holds the
/// advisory-lock lease `key`; waits for the lease while another process holds it, and takes
/// it again after losing its connection. Returns at `shutdown`.
pub(crate) async fn leased_loop<F, Fut>(
    pool: &sqlx::PgPool,
    key: i64,
    name: &'static str,
    every: Duration,
    wake: &Notify,
    shutdown: impl Future<Output = ()>,
    tick: F,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<usize, ProcessError>>,
{
    tokio::pin!(shutdown);
    loop {
        match lead(pool, key, name, every, wake, &mut shutdown, &tick).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, "{name} lost its lease; retrying"),
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Takes the lease (waiting for it) and ticks until `shutdown` (Ok) or a lease error.
async fn lead<F, Fut>(
    pool: &sqlx::PgPool,
    key: i64,
    name: &'static str,
    every: Duration,
    wake: &Notify,
    shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    tick: &F,
) -> Result<(), sqlx::Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<usize, ProcessError>>,
{
    let mut lease = pool.acquire().await?.detach();
    loop {
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut lease)
            .await?;
        if got {
            break;
        }
        tokio::select! {
            _ = &mut *shutdown => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    tracing::info!("{name} lease acquired");
    let mut ticks = 0u64;
    loop {
        if let Err(e) = tick().await {
            tracing::warn!(error = %e, "{name} tick failed");
        }
        ticks += 1;
        if ticks.is_multiple_of(25) {
            // The lease lives as long as this connection: make sure it still does.
            sqlx::query("SELECT 1").execute(&mut lease).await?;
        }
        tokio::select! {
            _ = &mut *shutdown => return Ok(()),
            _ = wake.notified() => {}
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Completes the execution the call's flow waits on, if it is of a kind `waits_on` accepts,
/// with `result`. Returns the flow after the command, and whether its flow then ended right
/// there (nothing after the action: the call is to be hung up, as VoIPBIN ends a call whose
/// flow ends after a `connect` or `queue_join`). `None` when the flow waits on nothing such.
pub(crate) async fn complete_waiting(
    executor: &vbin_app::Executor,
    customer: CustomerId,
    call: vbin_event_schema::CallId,
    waits_on: impl Fn(&vbin_event_schema::flow::ActionKind) -> bool,
    result: vbin_event_schema::flow::ActionResult,
    meta: &CommandMeta,
) -> Result<Option<bool>, ProcessError> {
    let Some(flow) = call_flow(executor, customer, call).await? else {
        return Ok(None);
    };
    let (Some(seq), Some(action)) = (flow.waiting, flow.current.as_ref()) else {
        return Ok(None);
    };
    if !waits_on(&action.kind) {
        return Ok(None);
    }
    let af = flow.id.expect("a loaded activeflow has its id");
    complete(executor, customer, af, seq, result, meta).await
}

/// Hangs up the customer's call from our side (a ringing one is canceled, an answered one
/// cleared); a call that does not exist is no error.
pub(crate) async fn hang_up(
    executor: &vbin_app::Executor,
    customer: CustomerId,
    call: vbin_event_schema::CallId,
    meta: &CommandMeta,
) -> Result<(), ProcessError> {
    use vbin_domain::{Call, CallCommand, DomainError, HangupRequest};
    let cmd = CallCommand::Hangup {
        request: HangupRequest::Local,
        at: chrono::Utc::now(),
    };
    match executor
        .execute::<Call>(call.as_uuid(), customer, Some(customer), cmd, meta)
        .await
    {
        Ok(_) | Err(ExecError::Domain(DomainError::NotFound(_))) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// The activeflow of the customer's call, if it has one.
pub(crate) async fn call_flow(
    executor: &vbin_app::Executor,
    customer: CustomerId,
    call: vbin_event_schema::CallId,
) -> Result<Option<vbin_domain::Activeflow>, ProcessError> {
    use vbin_domain::{Activeflow, Call};
    let Some(af) = executor
        .load::<Call>(call.as_uuid(), Some(customer))
        .await?
        .and_then(|c| c.activeflow_id)
    else {
        return Ok(None);
    };
    Ok(executor
        .load::<Activeflow>(af.as_uuid(), Some(customer))
        .await?)
}

/// Completes execution `seq` of activeflow `af` with `result`; returns whether the flow then
/// ended with nothing after it (see [`complete_waiting`]), `None` if the flow is gone.
pub(crate) async fn complete(
    executor: &vbin_app::Executor,
    customer: CustomerId,
    af: vbin_event_schema::ActiveflowId,
    seq: u64,
    result: vbin_event_schema::flow::ActionResult,
    meta: &CommandMeta,
) -> Result<Option<bool>, ProcessError> {
    use vbin_domain::{Activeflow, ActiveflowCommand, DomainError};
    let cmd = ActiveflowCommand::Complete {
        seq,
        result,
        at: chrono::Utc::now(),
    };
    let flow = match executor
        .execute::<Activeflow>(af.as_uuid(), customer, Some(customer), cmd, meta)
        .await
    {
        Ok(done) => done.state,
        Err(ExecError::Domain(DomainError::NotFound(_))) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(Some(
        flow.status == vbin_event_schema::flow::ActiveflowStatus::Ended
            && flow.end_reason.as_deref() == Some("finished")
            && flow.seq == seq,
    ))
}

/// Metadata of a command a process manager sends for `customer`, caused by event `cause`.
pub(crate) fn system_meta(
    part: &'static str,
    cause: Uuid,
    correlation: &str,
    customer: CustomerId,
) -> CommandMeta {
    let mut m = CommandMeta::caused_by(part, cause, correlation);
    m.customer_id = Some(customer.as_uuid());
    m
}
