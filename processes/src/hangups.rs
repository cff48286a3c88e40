//! What a call had running ends with it (the `call-hangups` route of `call_hungup`, in the
//! process managers' call consumer [`crate::calls`]): its AI conversations
//! ([`crate::aicalls`]), its transcriptions ([`crate::transcribe`]) and its place in a
//! conference ([`crate::conference`]).
//!
//! These were three durable consumers, each sent every hangup, and the first two each read
//! its own table for it. Nearly every call has none of the three, so one consumer reading
//! both tables in one statement ([`vbin_app::calls::running_on_call`]) does the same work with
//! a third of the deliveries and half the statements. Each part still issues its commands
//! under its own name (the actors `system:aicall-hangups`, `system:transcribe-hangups`,
//! `system:conference-hangups`), and each is idempotent, so a hangup handled again after one
//! part failed is harmless. The consumer took over from the three (`replacing`), starting
//! where the furthest behind of them stood.

use crate::transcribe::Transcribes;
use crate::ProcessError;
use vbin_app::Executor;
use vbin_bus::Route;
use vbin_event_schema::views::CallView;
use vbin_event_schema::{ActiveflowId, CallEvent, CallId, CallStatus, PublishedEvent};

/// The route's name (its own durable consumer's before [`crate::calls`]).
pub const CONSUMER: &str = "call-hangups";

/// The hangups' route of the process managers' call consumer ([`crate::calls`]).
pub fn route(pool: sqlx::PgPool, executor: Executor) -> Route {
    let transcribes = Transcribes::new(pool.clone(), executor.clone());
    Route::of::<CallEvent, _, _, _>(CONSUMER, &[CallEvent::CALL_HUNGUP], move |e| {
        let (pool, executor, transcribes) = (pool.clone(), executor.clone(), transcribes.clone());
        async move { on_hangup(&pool, &executor, &transcribes, e).await }
    })
    .lanes(crate::LANES)
}

/// The consumers this route's own consumer took over from (before [`crate::calls`]).
pub const REPLACED: [&str; 3] = [
    crate::aicalls::HANGUPS,
    crate::transcribe::HANGUPS,
    crate::conference::HANGUPS,
];

/// Ends what the call `e` (a `call_hungup`) had running.
pub async fn on_hangup(
    pool: &sqlx::PgPool,
    executor: &Executor,
    transcribes: &Transcribes,
    e: PublishedEvent,
) -> Result<(), ProcessError> {
    let CallEvent::CallHungup { status, .. } = e.decode::<CallEvent>()? else {
        return Ok(());
    };
    // The flow the call had is in the event's view (set when the call was created).
    let flow = e.view::<CallView>()?.activeflow_id;
    if !could_have_run(status, flow) {
        return Ok(());
    }
    let running = vbin_app::calls::running_on_call(pool, CallId(e.aggregate_id)).await?;
    crate::aicalls::on_hangup(executor, &e, &running.aicalls).await?;
    transcribes.on_hangup(&e, running.transcribes).await?;
    crate::conference::on_hangup(executor, &e, flow).await
}

/// Whether a call that ended in `status`, with flow `flow`, can have had an AI conversation,
/// a transcription or a conference place to end:
/// - an AI conversation starts only on an answered call (`App::start_aicall`, for the API and
///   for flows);
/// - a transcription starts through the API only on an answered call, otherwise only by the
///   call's flow (`transcribe_start`, which may run before the answer);
/// - a conference is joined only by the call's flow.
///
/// So a call that was never answered and had no flow (a caller giving up while it rang, a
/// busy or unanswered number dialed through the API) had none of them, and its hangup costs
/// no statement.
fn could_have_run(status: CallStatus, flow: Option<ActiveflowId>) -> bool {
    status.was_answered() || flow.is_some()
}
