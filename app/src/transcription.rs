//! The media pipeline's side of transcription: find the running transcriptions of a call and
//! record the transcripts it recognizes.
//!
//! Recording is idempotent: a transcript's id is derived from what it says (transcription,
//! direction, offset and text) and the command carries the once-key `transcript:<id>`, so a
//! retried call (after a timeout whose append did commit) records nothing twice.

use crate::executor::{ExecError, Executor};
use chrono::Utc;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;
use vbin_domain::DomainError;
use vbin_domain::{Transcribe, TranscribeCommand};
use vbin_event_schema::{
    CallId, CustomerId, MediaReference, TranscribeDirection, TranscribeEvent, TranscribeId,
    TranscriptDirection, TranscriptId,
};
use vbin_eventlog::{Actor, CommandMeta};

/// The actor recorded on transcripts.
pub const ACTOR: &str = "transcriber";

/// A running transcription of a call, as the media pipeline needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningTranscribe {
    /// The transcription.
    pub transcribe_id: TranscribeId,
    /// Its owner.
    pub customer_id: CustomerId,
    /// Which audio it covers.
    pub direction: TranscribeDirection,
    /// Language tag (`en-US`).
    pub language: String,
}

/// The running transcriptions of a call (or conference), oldest first. Exact at commit: read from the inline
/// table `transcribe_calls`, written in the transactions that start and complete them (the
/// read model `rm_transcribes` may lag behind).
pub async fn running_transcribes(
    pool: &PgPool,
    reference: impl Into<MediaReference>,
) -> Result<Vec<RunningTranscribe>, sqlx::Error> {
    let rows: Vec<(Uuid, Uuid, String, String)> = sqlx::query_as(
        "SELECT transcribe_id, customer_id, direction, language FROM transcribe_calls \
         WHERE call_id = $1 ORDER BY transcribe_id",
    )
    .bind(reference.into().id())
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(id, customer, direction, language)| {
            let direction = TranscribeDirection::parse(&direction).ok_or_else(|| {
                sqlx::Error::Decode(format!("transcribe_calls.direction {direction:?}").into())
            })?;
            Ok(RunningTranscribe {
                transcribe_id: TranscribeId(id),
                customer_id: CustomerId(customer),
                direction,
                language,
            })
        })
        .collect()
}

/// Stops the running transcriptions of `call` (or conference; only `customer`'s when given)
/// with `meta`; returns how many this stopped. One that vanished or stopped meanwhile is
/// skipped.
pub async fn stop_running(
    pool: &PgPool,
    executor: &Executor,
    call: impl Into<MediaReference>,
    customer: Option<CustomerId>,
    meta: &CommandMeta,
) -> Result<usize, ExecError> {
    let running = running_transcribes(pool, call)
        .await
        .map_err(|e| ExecError::Store(e.into()))?;
    let mine = running
        .into_iter()
        .filter(|r| customer.is_none_or(|c| c == r.customer_id))
        .map(|r| (r.transcribe_id, r.customer_id));
    stop(executor, mine, meta).await
}

/// Stops the transcriptions `running` (id and owner) with `meta`; returns how many this
/// stopped. One that vanished or stopped meanwhile is skipped.
pub async fn stop(
    executor: &Executor,
    running: impl IntoIterator<Item = (TranscribeId, CustomerId)>,
    meta: &CommandMeta,
) -> Result<usize, ExecError> {
    let mut stopped = 0;
    for (id, owner) in running {
        let cmd = TranscribeCommand::Stop { at: Utc::now() };
        match executor
            .execute::<Transcribe>(id.as_uuid(), owner, Some(owner), cmd, meta)
            .await
        {
            Ok(done) => stopped += usize::from(!done.recorded.is_empty()),
            Err(ExecError::Domain(DomainError::NotFound(_))) => {
                tracing::warn!(transcribe_id = %id, "running transcribe not found; not stopped");
            }
            Err(err) => return Err(err),
        }
    }
    Ok(stopped)
}

/// The id of the transcript with these contents: the same arguments give the same id.
pub fn transcript_id(
    transcribe_id: TranscribeId,
    direction: TranscriptDirection,
    speaker: Option<CallId>,
    message: &str,
    tm_transcript_ms: u64,
) -> TranscriptId {
    let mut h = Sha256::new();
    h.update(transcribe_id.as_uuid().as_bytes());
    h.update(direction.as_str().as_bytes());
    // A call's transcripts hash as they did before conferences.
    if let Some(speaker) = speaker {
        h.update(speaker.as_uuid().as_bytes());
    }
    h.update(tm_transcript_ms.to_be_bytes());
    h.update(message.as_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    TranscriptId(uuid::Builder::from_custom_bytes(bytes).into_uuid())
}

/// What [`record_transcript`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum Recorded {
    /// The transcript was recorded: its view (`{id, type:"transcript", ...}`).
    Created(Value),
    /// The same transcript was recorded before (a retry); nothing was appended.
    Duplicate(TranscriptId),
}

impl Recorded {
    /// The transcript's id.
    pub fn transcript_id(&self) -> Option<Uuid> {
        match self {
            Recorded::Created(v) => v["id"].as_str().and_then(|s| s.parse().ok()),
            Recorded::Duplicate(id) => Some(id.as_uuid()),
        }
    }
}

/// Records a recognized segment of `transcribe_id` (of `customer_id`): `direction` is the
/// side it was heard on, `tm_transcript_ms` its offset from the transcription's start.
///
/// Fails with `Domain(NotFound)` for an unknown transcription or one of another customer,
/// `Domain(FailedPrecondition)` once it is completed, `Domain(Invalid)` for an empty or
/// oversized message or a direction it does not cover. A retry with the same arguments
/// returns [`Recorded::Duplicate`].
pub async fn record_transcript(
    executor: &Executor,
    customer_id: CustomerId,
    transcribe_id: TranscribeId,
    direction: TranscriptDirection,
    message: &str,
    tm_transcript_ms: u64,
) -> Result<Recorded, ExecError> {
    let said = Said {
        direction,
        speaker: None,
        message,
        tm_transcript_ms,
    };
    record_said(executor, customer_id, transcribe_id, said).await
}

/// A recognized segment.
#[derive(Clone, Copy, Debug)]
pub struct Said<'a> {
    /// The side it was heard on.
    pub direction: TranscriptDirection,
    /// The conference member who said it (none in a call's transcription).
    pub speaker: Option<CallId>,
    /// The text.
    pub message: &'a str,
    /// Milliseconds from the transcription's start.
    pub tm_transcript_ms: u64,
}

/// [`record_transcript`] of a segment that may name its speaker (a conference's member).
pub async fn record_said(
    executor: &Executor,
    customer_id: CustomerId,
    transcribe_id: TranscribeId,
    said: Said<'_>,
) -> Result<Recorded, ExecError> {
    let Said {
        direction,
        speaker,
        message,
        tm_transcript_ms,
    } = said;
    let id = transcript_id(transcribe_id, direction, speaker, message, tm_transcript_ms);
    let correlation = transcribe_id.to_string();
    let mut meta = CommandMeta::from_request(&Actor::System(ACTOR), "", None)
        .once(customer_id.as_uuid(), format!("transcript:{id}"));
    meta.correlation_id.clone_from(&correlation);
    meta.causation_id = correlation;
    let at = Utc::now();
    let cmd = TranscribeCommand::AddTranscript {
        transcript_id: id,
        direction,
        call_id: speaker,
        message: message.to_string(),
        tm_transcript_ms,
        at,
    };
    match executor
        .execute::<Transcribe>(
            transcribe_id.as_uuid(),
            customer_id,
            Some(customer_id),
            cmd,
            &meta,
        )
        .await
    {
        Ok(done) => {
            // The view stored with the event, rebuilt from the same values.
            let created = TranscribeEvent::TranscriptCreated {
                transcript_id: id,
                direction,
                call_id: speaker,
                message: message.to_string(),
                tm_transcript_ms,
                at,
            };
            let view = done.state.transcript_view(&created).unwrap_or_default();
            Ok(Recorded::Created(view))
        }
        Err(ExecError::AlreadyApplied) => Ok(Recorded::Duplicate(id)),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcript_ids_follow_the_contents() {
        let t = TranscribeId::new();
        let a = transcript_id(t, TranscriptDirection::In, None, "hello", 1_000);
        assert_eq!(
            a,
            transcript_id(t, TranscriptDirection::In, None, "hello", 1_000)
        );
        assert_ne!(
            a,
            transcript_id(t, TranscriptDirection::Out, None, "hello", 1_000)
        );
        assert_ne!(
            a,
            transcript_id(t, TranscriptDirection::In, None, "hello", 1_001)
        );
        assert_ne!(
            a,
            transcript_id(t, TranscriptDirection::In, None, "hullo", 1_000)
        );
        assert_ne!(
            a,
            transcript_id(
                TranscribeId::new(),
                TranscriptDirection::In,
                None,
                "hello",
                1_000
            )
        );
        // Two members saying the same at the same time are two transcripts.
        let (x, y) = (Some(CallId::new()), Some(CallId::new()));
        assert_ne!(
            transcript_id(t, TranscriptDirection::In, x, "yes", 1_000),
            transcript_id(t, TranscriptDirection::In, y, "yes", 1_000)
        );
    }
}
