//! Transcriptions end with their call (a conference's end with the conference: see
//! [`crate::conference`]).
//!
//! - **Hangups** (part of the `call-hangups` consumer, see [`crate::hangups`]): stops every
//!   running transcription of the call. They come from `transcribe_calls`, written in the
//!   transactions that start and complete transcriptions, so a lagging read model cannot make
//!   a hangup miss one.
//! - **Starts** (`transcribe-starts` consumer of `transcribe_started`): stops a transcription
//!   whose call had already ended when it started (the API checks the call is answered, but
//!   the call may hang up between that check and the start's commit, and then its hangup may
//!   have been handled before the transcription was recorded).
//!
//! `Stop` is idempotent (a completed transcription records nothing), so redelivery and the
//! two consumers stopping the same transcription are harmless.

use crate::{system_meta, ProcessError};
use vbin_app::Executor;
use vbin_bus::{Bus, ConsumerSpec};
use vbin_domain::{Call, Conference, ConferenceStatus};
use vbin_event_schema::{
    CustomerId, MediaReference, PublishedEvent, TranscribeEvent, TranscribeId,
};

/// The hangups part's name: the actor of the commands it issues
/// (`system:transcribe-hangups`; once a durable consumer of its own).
pub const HANGUPS: &str = "transcribe-hangups";
/// Durable consumer of `transcribe_started`.
pub const STARTS: &str = "transcribe-starts";

/// What the transcription process managers share.
#[derive(Clone)]
pub struct Transcribes {
    pool: sqlx::PgPool,
    executor: Executor,
}

/// Runs the starts consumer until `shutdown`.
pub async fn run(
    pool: sqlx::PgPool,
    executor: Executor,
    bus: Bus,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let t = Transcribes::new(pool, executor);
    let mut group = vbin_bus::Group::new(bus);
    group.consumer(
        ConsumerSpec::for_events_of::<TranscribeEvent>(
            STARTS,
            &[TranscribeEvent::TRANSCRIBE_STARTED],
        )
        .lanes(8),
        |e| t.clone().on_started(e),
    );
    group.run(shutdown).await;
}

impl Transcribes {
    /// A handle for tests.
    pub fn new(pool: sqlx::PgPool, executor: Executor) -> Self {
        Self { pool, executor }
    }

    /// Stops the transcriptions `running` (id, owner) of the call `e` (a `call_hungup`) ended.
    pub async fn on_hangup(
        &self,
        e: &PublishedEvent,
        running: Vec<(TranscribeId, CustomerId)>,
    ) -> Result<(), ProcessError> {
        self.stop(e, HANGUPS, running).await
    }

    /// Stops the transcription `e` (a `transcribe_started`) started if its call has ended
    /// (with any other the call still has running).
    pub async fn on_started(self, e: PublishedEvent) -> Result<(), ProcessError> {
        let customer = CustomerId(e.customer_id);
        let TranscribeEvent::TranscribeStarted {
            reference_type,
            reference_id,
            ..
        } = e.decode()?
        else {
            return Ok(());
        };
        let reference = MediaReference::new(reference_type, reference_id);
        let ended = match reference {
            MediaReference::Call(call) => self
                .executor
                .load::<Call>(call.as_uuid(), Some(customer))
                .await?
                .is_none_or(|c| c.status.is_terminal()),
            MediaReference::Conference(conference) => self
                .executor
                .load::<Conference>(conference.as_uuid(), Some(customer))
                .await?
                .is_none_or(|c| c.status == ConferenceStatus::Terminated),
        };
        if ended {
            self.stop_all(&e, STARTS, reference).await?;
        }
        Ok(())
    }

    async fn stop_all(
        &self,
        cause: &PublishedEvent,
        part: &'static str,
        call: impl Into<MediaReference>,
    ) -> Result<(), ProcessError> {
        let running = vbin_app::transcription::running_transcribes(&self.pool, call).await?;
        let running = running
            .into_iter()
            .map(|r| (r.transcribe_id, r.customer_id));
        self.stop(cause, part, running).await
    }

    /// Stops `running` (id, owner) as `part`, because of `cause`.
    async fn stop(
        &self,
        cause: &PublishedEvent,
        part: &'static str,
        running: impl IntoIterator<Item = (TranscribeId, CustomerId)>,
    ) -> Result<(), ProcessError> {
        let customer = CustomerId(cause.customer_id);
        let meta = system_meta(part, cause.event_id, &cause.correlation_id(), customer);
        let stopped = vbin_app::transcription::stop(&self.executor, running, &meta).await?;
        metrics::counter!("vbin_transcribes_stopped_total", "by" => part).increment(stopped as u64);
        Ok(())
    }
}
