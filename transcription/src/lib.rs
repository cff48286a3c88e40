//! Transcription of call audio: the call's media session (vbin-callmedia) hands each side of a
//! running transcription to [`Transcriber::start`] — the far end's audio for `in`, the
//! platform's for `out`, both for `both` — as 16 kHz frames; the speech-to-text provider's
//! final segments become `transcript_created` events through
//! [`vbin_app::transcription::record_transcript`], tagged with the side they were heard on.
//!
//! A conference's transcription has one stream per member ([`Transcriber::start_member`]),
//! started by the media process that runs the member's session; its transcripts name the
//! member (`call_id`).
//!
//! A transcription that completes stops receiving audio (the session drops its [`Feed`]); its
//! last segments are still recorded if it is running then (they are refused once it
//! completed, and logged). Transcript ids follow their contents, so audio transcribed again
//! after a media takeover records nothing twice.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use vbin_app::transcription::{record_said, Said};
use vbin_app::Executor;
use vbin_event_schema::{
    CallId, CustomerId, TranscribeDirection, TranscribeId, TranscriptDirection,
};
use vbin_media::stt::{Segment, SttError, SttInput, SttProvider};

/// Starts speech-to-text streams for transcriptions and records what they recognize.
#[derive(Clone)]
pub struct Transcriber {
    executor: Executor,
    provider: Arc<dyn SttProvider>,
}

/// The sides of a call a transcription direction covers.
pub fn sides(direction: TranscribeDirection) -> &'static [TranscriptDirection] {
    match direction {
        TranscribeDirection::In => &[TranscriptDirection::In],
        TranscribeDirection::Out => &[TranscriptDirection::Out],
        TranscribeDirection::Both => &[TranscriptDirection::In, TranscriptDirection::Out],
    }
}

/// Whose audio a stream recognizes.
#[derive(Clone, Copy, Debug)]
struct Heard {
    /// The call whose session feeds it.
    call: CallId,
    /// The side.
    side: TranscriptDirection,
    /// The conference member, in a conference's transcription.
    speaker: Option<CallId>,
    /// How long after the transcription's start the stream starts.
    offset_ms: u64,
}

/// Where one side of one transcription's audio goes: 16 kHz frames, taken without waiting.
#[derive(Debug)]
pub struct Feed {
    audio: mpsc::Sender<SttInput>,
}

/// Why a feed is dropped.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The recognizer's queue is full (10 s behind): the stream is dropped rather than stall
    /// the call's audio.
    #[error("the recognizer is not keeping up")]
    Behind,
    /// The recognizer stopped.
    #[error("the recognizer stopped")]
    Closed,
}

impl Feed {
    /// Hands one frame (16 kHz samples) to the recognizer.
    pub fn push(&self, frame: &[i16]) -> Result<(), FeedError> {
        self.audio
            .try_send(SttInput::Audio(frame.to_vec()))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => FeedError::Behind,
                mpsc::error::TrySendError::Closed(_) => FeedError::Closed,
            })
    }
}

impl Transcriber {
    /// A transcriber recording through `executor`, recognizing with `provider`.
    pub fn new(executor: Executor, provider: Arc<dyn SttProvider>) -> Self {
        Self { executor, provider }
    }

    /// The provider's name.
    pub fn provider(&self) -> &'static str {
        self.provider.name()
    }

    /// Starts recognizing `side` of `call` for transcription `transcribe` in `language`:
    /// returns where the audio goes. Dropping the feed ends the stream; its last segments are
    /// recorded after.
    pub fn start(
        &self,
        call: CallId,
        customer: CustomerId,
        transcribe: TranscribeId,
        language: &str,
        side: TranscriptDirection,
    ) -> Result<Feed, SttError> {
        let heard = Heard {
            call,
            side,
            speaker: None,
            offset_ms: 0,
        };
        self.listen(customer, transcribe, language, heard)
    }

    /// Starts recognizing what conference member `member` says, for the conference's
    /// transcription `transcribe`, which started `offset_ms` before this feed does (its
    /// transcripts are timed from the transcription's start and name the member).
    pub fn start_member(
        &self,
        member: CallId,
        customer: CustomerId,
        transcribe: TranscribeId,
        language: &str,
        offset_ms: u64,
    ) -> Result<Feed, SttError> {
        let heard = Heard {
            call: member,
            side: TranscriptDirection::In,
            speaker: Some(member),
            offset_ms,
        };
        self.listen(customer, transcribe, language, heard)
    }

    fn listen(
        &self,
        customer: CustomerId,
        transcribe: TranscribeId,
        language: &str,
        heard: Heard,
    ) -> Result<Feed, SttError> {
        let Heard { call, side, .. } = heard;
        let session = self.provider.start(language)?;
        let mut results = session.results;
        let executor = self.executor.clone();
        tokio::spawn(async move {
            while let Some(res) = results.recv().await {
                match res {
                    Ok(seg) if seg.is_final && !seg.text.trim().is_empty() => {
                        record(&executor, customer, transcribe, heard, &seg).await;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(call_id = %call, transcribe_id = %transcribe, error = %e, "speech-to-text failed");
                    }
                }
            }
        });
        tracing::info!(call_id = %call, transcribe_id = %transcribe, side = side.as_str(), provider = self.provider.name(), "transcribing");
        Ok(Feed {
            audio: session.audio,
        })
    }
}

/// Records one segment, retrying a few times (the transcript id is derived from its content,
/// so a retry after an unknown outcome cannot duplicate it).
async fn record(
    executor: &Executor,
    customer: CustomerId,
    transcribe: TranscribeId,
    heard: Heard,
    seg: &Segment,
) {
    let call = heard.call;
    let said = Said {
        direction: heard.side,
        speaker: heard.speaker,
        message: &seg.text,
        tm_transcript_ms: heard.offset_ms + seg.start_ms,
    };
    for attempt in 1..=3 {
        match record_said(executor, customer, transcribe, said).await {
            Ok(_) => {
                metrics::counter!("vbin_transcripts_recorded_total").increment(1);
                return;
            }
            Err(e) if attempt < 3 => {
                tracing::warn!(call_id = %call, error = %e, attempt, "recording a transcript failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => {
                tracing::error!(call_id = %call, transcribe_id = %transcribe, error = %e, text = %seg.text, "transcript not recorded");
            }
        }
    }
}
