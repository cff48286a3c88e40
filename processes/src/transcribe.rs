//! Transcriptions end with their call.
//!
//! - **Hangups** (`transcribe-hangups` consumer of `call_hungup`): stops every running
//!   transcription of the call. They come from `transcribe_calls`, written in the transactions
//!   that start and complete transcriptions, so a lagging read model cannot make a hangup
//!   miss one.
//! - **Starts** (`transcribe-starts` consumer of `transcribe_started`): stops a transcription
//!   whose call had already ended when it started (the API checks the call is answered, but
//!   the call may hang up between that check and the start's commit, and then its hangup may
//!   have been handled before the transcription was recorded).
//!
//! `Stop` is idempotent (a completed transcription records nothing), so redelivery and the
//! two consumers stopping the same transcription are harmless.

use crate::{system_meta, ProcessError};
use chrono::Utc;
use uuid::Uuid;
use vbin_app::{ExecError, Executor};
use vbin_bus::{run_consumer, Bus, ConsumerSpec};
use vbin_domain::{Call, DomainError, Transcribe, TranscribeCommand};
use vbin_event_schema::{CallEvent, CallId, CustomerId, PublishedEvent, TranscribeEvent};

/// Durable consumer of `call_hungup`.
pub const HANGUPS: &str = "transcribe-hangups";
/// Durable consumer of `transcribe_started`.
pub const STARTS: &str = "transcribe-starts";

/// What the transcription process managers share.
#[derive(Clone)]
pub struct Transcribes {
    pool: sqlx::PgPool,
    executor: Executor,
}

/// Runs both consumers until `shutdown`.
pub async fn run(
    pool: sqlx::PgPool,
    executor: Executor,
    bus: Bus,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let t = Transcribes::new(pool, executor);
    let (tx, stop) = vbin_bus::stop_signal();
    let hangups = run_consumer(
        bus.clone(),
        ConsumerSpec::for_events_of::<CallEvent>(HANGUPS, &[CallEvent::CALL_HUNGUP]).lanes(8),
        |e| t.clone().on_hangup(e),
        stop(),
    );
    let starts = run_consumer(
        bus,
        ConsumerSpec::for_events_of::<TranscribeEvent>(
            STARTS,
            &[TranscribeEvent::TRANSCRIBE_STARTED],
        )
        .lanes(8),
        |e| t.clone().on_started(e),
        stop(),
    );
    let all = futures::future::join(hangups, starts);
    tokio::pin!(all);
    tokio::select! {
        _ = shutdown => { let _ = tx.send(true); all.await; }
        _ = &mut all => {}
    }
}

impl Transcribes {
    /// A handle for tests.
    pub fn new(pool: sqlx::PgPool, executor: Executor) -> Self {
        Self { pool, executor }
    }

    /// Stops the running transcriptions of the call `e` (a `call_hungup`) ended.
    pub async fn on_hangup(self, e: PublishedEvent) -> Result<(), ProcessError> {
        let call_id = CallId(e.aggregate_id);
        let running: Vec<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT transcribe_id, customer_id FROM transcribe_calls WHERE call_id = $1",
        )
        .bind(call_id.as_uuid())
        .fetch_all(&self.pool)
        .await?;
        for (transcribe_id, customer) in running {
            self.stop(&e, HANGUPS, transcribe_id, CustomerId(customer))
                .await?;
        }
        Ok(())
    }

    /// Stops the transcription `e` (a `transcribe_started`) started if its call has ended.
    pub async fn on_started(self, e: PublishedEvent) -> Result<(), ProcessError> {
        let customer = CustomerId(e.customer_id);
        let TranscribeEvent::TranscribeStarted {
            reference_id: call_id,
            ..
        } = e.decode()?
        else {
            return Ok(());
        };
        let ended = self
            .executor
            .load::<Call>(call_id.as_uuid(), Some(customer))
            .await?
            .is_none_or(|c| c.status.is_terminal());
        if ended {
            self.stop(&e, STARTS, e.aggregate_id, customer).await?;
        }
        Ok(())
    }

    async fn stop(
        &self,
        cause: &PublishedEvent,
        part: &'static str,
        transcribe_id: Uuid,
        customer: CustomerId,
    ) -> Result<(), ProcessError> {
        let meta = system_meta(part, cause.event_id, cause.correlation_id(), customer);
        let cmd = TranscribeCommand::Stop { at: Utc::now() };
        match self
            .executor
            .execute::<Transcribe>(transcribe_id, customer, Some(customer), cmd, &meta)
            .await
        {
            Ok(done) => {
                if !done.recorded.is_empty() {
                    metrics::counter!("vbin_transcribes_stopped_total", "by" => part).increment(1);
                }
                Ok(())
            }
            Err(ExecError::Domain(DomainError::NotFound(_))) => {
                tracing::warn!(%transcribe_id, "running transcribe not found; not stopped");
                Ok(())
            }
            Err(err) => Err(err.into()),
        }
    }
}
