//! Conference members (`conference-members` consumer): a member's call that ends leaves its
//! conference; a member that leaves because the conference was stopped has its flow's
//! `conference_join` complete, so the flow goes on (and, with nothing after it, the call is
//! hung up). Which conference a call is in comes from its flow: the `conference_join` it
//! executed last (a member joins only through its flow).
//!
//! A conference that ends (`conference-ends` consumer of `conference_terminated`) stops its
//! transcriptions (from `transcribe_calls`, exact at commit) and asks its running recordings
//! to stop (from `rm_recordings`; the process recording one also ends it by itself within
//! seconds of the conference's end, so a recording the read model did not show yet is not
//! left running).

use crate::{system_meta, ProcessError};
use chrono::Utc;
use vbin_app::{ExecError, Executor};
use vbin_bus::{Bus, ConsumerSpec};
use vbin_domain::{
    Activeflow, Conference, ConferenceCommand, DomainError, Recording, RecordingCommand,
};
use vbin_event_schema::flow::{ActionKind, ActionResult};
use vbin_event_schema::{
    ActiveflowId, CallId, ConferenceEvent, ConferenceId, CustomerId, LeaveReason, PublishedEvent,
};

/// The hangups part's name (part of the `call-hangups` consumer, see [`crate::hangups`]): the
/// actor of the commands it issues (`system:conference-hangups`).
pub const HANGUPS: &str = "conference-hangups";
/// Durable consumer of `conferencecall_left`.
pub const LEAVES: &str = "conference-leaves";
/// Durable consumer of `conference_terminated`.
pub const ENDS: &str = "conference-ends";

/// Runs the consumers until `shutdown`.
pub async fn run(
    pool: sqlx::PgPool,
    executor: Executor,
    bus: Bus,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let mut group = vbin_bus::Group::new(bus);
    group.consumer(
        ConsumerSpec::for_events_of::<ConferenceEvent>(
            ENDS,
            &[ConferenceEvent::CONFERENCE_TERMINATED],
        )
        .lanes(crate::LANES),
        |e| on_terminated(&pool, &executor, e),
    );
    group.consumer(
        ConsumerSpec::for_events_of::<ConferenceEvent>(
            LEAVES,
            &[ConferenceEvent::CONFERENCECALL_LEFT],
        )
        .lanes(crate::LANES),
        |e| on_left(&executor, e),
    );
    group.run(shutdown).await;
}

/// A call ended (`e`, with `flow`, the flow the call had): it leaves the conference its flow
/// joined last.
pub(crate) async fn on_hangup(
    executor: &Executor,
    e: &PublishedEvent,
    flow: Option<ActiveflowId>,
) -> Result<(), ProcessError> {
    let customer = CustomerId(e.customer_id);
    let call = CallId(e.aggregate_id);
    // A call without a flow (most calls) was in no conference, and the call itself need not
    // be loaded.
    let Some(af) = flow else {
        return Ok(());
    };
    let joined = |f: &Activeflow| match f.current.as_ref().map(|a| &a.kind) {
        Some(ActionKind::ConferenceJoin(join)) => Some(join.conference_id),
        _ => None,
    };
    let Some(conference_id) = executor
        .inspect::<Activeflow, _>(af.as_uuid(), Some(customer), joined)
        .await?
        .flatten()
    else {
        return Ok(());
    };
    let meta = system_meta(HANGUPS, e.event_id, &e.correlation_id(), customer);
    let cmd = ConferenceCommand::Leave {
        call_id: call,
        reason: LeaveReason::Hangup,
        at: Utc::now(),
    };
    match executor
        .execute::<Conference>(
            conference_id.as_uuid(),
            customer,
            Some(customer),
            cmd,
            &meta,
        )
        .await
    {
        Ok(_) | Err(ExecError::Domain(DomainError::NotFound(_))) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// A member left a stopped conference: its flow goes on.
async fn on_left(executor: &Executor, e: PublishedEvent) -> Result<(), ProcessError> {
    let ConferenceEvent::ConferencecallLeft {
        member,
        reason: LeaveReason::Stopped,
    } = e.decode()?
    else {
        return Ok(());
    };
    let customer = CustomerId(e.customer_id);
    let meta = system_meta(LEAVES, e.event_id, &e.correlation_id(), customer);
    let waits = |k: &ActionKind| matches!(k, ActionKind::ConferenceJoin(_));
    let done = ActionResult::default();
    let ended =
        crate::complete_waiting(executor, customer, member.call_id, waits, done, &meta).await?;
    if ended == Some(true) {
        crate::hang_up(executor, customer, member.call_id, &meta).await?;
    }
    Ok(())
}

/// A conference ended: its transcriptions stop and its recordings are asked to stop.
async fn on_terminated(
    pool: &sqlx::PgPool,
    executor: &Executor,
    e: PublishedEvent,
) -> Result<(), ProcessError> {
    let customer = CustomerId(e.customer_id);
    let conference = ConferenceId(e.aggregate_id);
    let meta = system_meta(ENDS, e.event_id, &e.correlation_id(), customer);
    vbin_app::transcription::stop_running(pool, executor, conference, Some(customer), &meta)
        .await?;
    let running = vbin_app::recordings::running(pool, customer, conference.into()).await?;
    for id in running {
        let cmd = RecordingCommand::RequestStop { at: Utc::now() };
        match executor
            .execute::<Recording>(id, customer, Some(customer), cmd, &meta)
            .await
        {
            Ok(_) | Err(ExecError::Domain(DomainError::NotFound(_))) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}
