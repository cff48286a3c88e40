//! The Transcribe aggregate: the speech-to-text transcription of one call, or of each member
//! of a conference (what each says, `direction: in`, every transcript naming its member).
//!
//! It runs from `Start` until `Stop` (an API request, or its call's hangup through the
//! transcribe process manager) and records the transcripts the media pipeline recognizes in
//! between. The transcripts themselves are not kept in the state (a long call has many): each
//! is its own resource in the read model, built from its `transcript_created` event. Whether
//! the call is answered is checked by the API before `Start` (the call is another aggregate).

use crate::{DomainError, ResourceView};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use vbin_event_schema::*;

/// Longest transcript message, in characters.
pub const MAX_TRANSCRIPT_CHARS: usize = 10_000;

/// How long after a transcription completed a transcript of what was said before its end is
/// still recorded (a recognizer finishes the last utterance only once its audio ended, which
/// for a call that hangs up is after the hangup stopped the transcription).
pub const LATE_TRANSCRIPT_GRACE_MS: i64 = 60_000;

/// A new transcription, validated by the API.
#[derive(Clone, Debug, PartialEq)]
pub struct NewTranscribe {
    /// Id.
    pub transcribe_id: TranscribeId,
    /// Owner.
    pub customer_id: CustomerId,
    /// The call or conference it listens to.
    pub reference: MediaReference,
    /// Language tag (checked with [`check_language`]).
    pub language: String,
    /// Which audio it covers.
    pub direction: TranscribeDirection,
    /// Set when it holds an AI conversation's messages rather than speech-to-text's.
    pub aicall_id: Option<AicallId>,
}

/// Transcribe commands.
#[derive(Clone, Debug, PartialEq)]
pub enum TranscribeCommand {
    /// Start it (status running).
    Start {
        /// Settings.
        transcribe: NewTranscribe,
        /// When.
        at: DateTime<Utc>,
    },
    /// Record a recognized segment (once the transcription is completed, only a segment that
    /// starts before its end, within [`LATE_TRANSCRIPT_GRACE_MS`] of it).
    AddTranscript {
        /// The transcript's id.
        transcript_id: TranscriptId,
        /// The side it was heard on (one the transcription covers).
        direction: TranscriptDirection,
        /// Who said it: the member, for a conference's transcription (which needs it); none
        /// for a call's.
        call_id: Option<CallId>,
        /// The text (1 to [`MAX_TRANSCRIPT_CHARS`] characters).
        message: String,
        /// Milliseconds from the transcription's start.
        tm_transcript_ms: u64,
        /// When.
        at: DateTime<Utc>,
    },
    /// Stop it (status completed). A no-op when it is completed already.
    Stop {
        /// When.
        at: DateTime<Utc>,
    },
}

/// A transcription's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Transcribe {
    /// None until started.
    pub id: Option<TranscribeId>,
    /// Owner.
    pub customer_id: CustomerId,
    /// The call or conference it listens to.
    pub reference: MediaReference,
    /// Language tag.
    pub language: String,
    /// Which audio it covers.
    pub direction: TranscribeDirection,
    /// The AI conversation whose messages it holds.
    pub aicall_id: Option<AicallId>,
    /// Running or completed.
    pub status: TranscribeStatus,
    /// Transcripts recorded so far.
    pub transcripts: u64,
    /// Started.
    pub tm_create: Option<DateTime<Utc>>,
    /// Last change of the transcription itself (transcripts do not count).
    pub tm_update: Option<DateTime<Utc>>,
    /// Completed.
    pub tm_end: Option<DateTime<Utc>>,
}

impl Transcribe {
    /// API view.
    pub fn view(&self) -> Value {
        let status = match self.status {
            TranscribeStatus::Running => "running",
            TranscribeStatus::Completed => "completed",
        };
        json!({
            "id": self.id, "type": "transcribe", "customer_id": self.customer_id,
            "reference_type": self.reference.reference_type(), "reference_id": self.reference.id(),
            "language": self.language, "direction": self.direction, "status": status,
            "aicall_id": self.aicall_id,
            "tm_create": self.tm_create, "tm_update": self.tm_update, "tm_end": self.tm_end,
        })
    }

    /// The view of a transcript event's transcript (None for the transcription's own events).
    pub fn transcript_view(&self, event: &TranscribeEvent) -> Option<Value> {
        let TranscribeEvent::TranscriptCreated {
            transcript_id,
            direction,
            call_id,
            message,
            tm_transcript_ms,
            at,
        } = event
        else {
            return None;
        };
        Some(json!({
            "id": transcript_id, "type": "transcript", "customer_id": self.customer_id,
            "transcribe_id": self.id, "direction": direction, "call_id": call_id,
            "message": message,
            "tm_transcript": tm_transcript_ms, "tm_create": at,
        }))
    }

    /// Whether a segment starting `tm_transcript_ms` into the transcription, arriving `at`, was
    /// said while it ran and arrives within the grace period after its end.
    fn heard_before_the_end(&self, tm_transcript_ms: u64, at: DateTime<Utc>) -> bool {
        let (Some(start), Some(end)) = (self.tm_create, self.tm_end) else {
            return false;
        };
        let ran_ms = (end - start).num_milliseconds().max(0) as u64;
        tm_transcript_ms <= ran_ms && (at - end).num_milliseconds() <= LATE_TRANSCRIPT_GRACE_MS
    }

    fn decide(&self, command: TranscribeCommand) -> Result<Vec<TranscribeEvent>, DomainError> {
        if let TranscribeCommand::Start { transcribe: t, at } = command {
            if self.id.is_some() {
                return Err(DomainError::AlreadyExists("transcribe exists".into()));
            }
            check_language(&t.language).map_err(|e| DomainError::Invalid(e.to_string()))?;
            if matches!(t.reference, MediaReference::Conference(_))
                && t.direction != TranscribeDirection::In
            {
                return Err(DomainError::Invalid(
                    "a conference is transcribed per member, direction \"in\" (what each \
                     member says)"
                        .into(),
                ));
            }
            return Ok(vec![TranscribeEvent::TranscribeStarted {
                transcribe_id: t.transcribe_id,
                customer_id: t.customer_id,
                reference_type: t.reference.reference_type(),
                reference_id: t.reference.id(),
                language: t.language,
                direction: t.direction,
                aicall_id: t.aicall_id,
                at,
            }]);
        }
        if self.id.is_none() {
            return Err(DomainError::NotFound("transcribe"));
        }
        let completed = self.status == TranscribeStatus::Completed;
        Ok(match command {
            TranscribeCommand::Start { .. } => unreachable!("handled above"),
            TranscribeCommand::AddTranscript {
                transcript_id,
                direction,
                call_id,
                message,
                tm_transcript_ms,
                at,
            } => {
                let conference = matches!(self.reference, MediaReference::Conference(_));
                if conference != call_id.is_some() {
                    return Err(DomainError::Invalid(
                        "a conference's transcript names its member (call_id); a call's does not"
                            .into(),
                    ));
                }
                if completed && !self.heard_before_the_end(tm_transcript_ms, at) {
                    return Err(DomainError::FailedPrecondition(
                        "the transcribe is completed".into(),
                    ));
                }
                if !self.direction.covers(direction) {
                    return Err(DomainError::Invalid(format!(
                        "a transcribe of direction {} takes no {} transcripts",
                        self.direction.as_str(),
                        direction.as_str()
                    )));
                }
                let chars = message.chars().count();
                if message.trim().is_empty() || chars > MAX_TRANSCRIPT_CHARS {
                    return Err(DomainError::Invalid(format!(
                        "message must be 1 to {MAX_TRANSCRIPT_CHARS} characters, not blank"
                    )));
                }
                vec![TranscribeEvent::TranscriptCreated {
                    transcript_id,
                    direction,
                    call_id,
                    message,
                    tm_transcript_ms,
                    at,
                }]
            }
            TranscribeCommand::Stop { at } => {
                if completed {
                    return Ok(vec![]);
                }
                vec![TranscribeEvent::TranscribeCompleted { at }]
            }
        })
    }

    fn fold(&mut self, event: TranscribeEvent) {
        match event {
            TranscribeEvent::TranscribeStarted {
                transcribe_id,
                customer_id,
                reference_type,
                reference_id,
                language,
                direction,
                aicall_id,
                at,
            } => {
                *self = Transcribe {
                    id: Some(transcribe_id),
                    customer_id,
                    reference: MediaReference::new(reference_type, reference_id),
                    language,
                    direction,
                    aicall_id,
                    status: TranscribeStatus::Running,
                    transcripts: 0,
                    tm_create: Some(at),
                    tm_update: Some(at),
                    tm_end: None,
                }
            }
            TranscribeEvent::TranscriptCreated { .. } => self.transcripts += 1,
            TranscribeEvent::TranscribeCompleted { at } => {
                self.status = TranscribeStatus::Completed;
                self.tm_update = Some(at);
                self.tm_end = Some(at);
            }
        }
    }
}

decided_aggregate!(Transcribe, TranscribeCommand, TranscribeEvent);

impl ResourceView for Transcribe {
    /// `transcript_created` shows the transcript; the other events show the transcription.
    fn resource_after(&self, event: &TranscribeEvent) -> Value {
        self.transcript_view(event).unwrap_or_else(|| self.view())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{given_nothing, Given};
    use chrono::TimeZone;

    fn t(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_700_000_000_000 + ms).unwrap()
    }

    fn new(direction: TranscribeDirection, language: &str) -> NewTranscribe {
        NewTranscribe {
            transcribe_id: TranscribeId::new(),
            customer_id: CustomerId::new(),
            reference: MediaReference::Call(CallId::new()),
            language: language.into(),
            direction,
            aicall_id: None,
        }
    }

    fn started(direction: TranscribeDirection) -> Given<Transcribe> {
        given_nothing::<Transcribe>().and(TranscribeCommand::Start {
            transcribe: new(direction, "en-US"),
            at: t(0),
        })
    }

    fn add(direction: TranscriptDirection, message: &str, ms: u64) -> TranscribeCommand {
        TranscribeCommand::AddTranscript {
            transcript_id: TranscriptId::new(),
            direction,
            call_id: None,
            message: message.into(),
            tm_transcript_ms: ms,
            at: t(ms as i64 + 50),
        }
    }

    #[test]
    fn start_add_stop() {
        let mut x = started(TranscribeDirection::Both);
        let v = x.view();
        assert_eq!(v["type"], "transcribe");
        assert_eq!(v["status"], "running");
        assert_eq!(v["direction"], "both");
        assert_eq!(v["reference_type"], "call");
        assert_eq!(v["language"], "en-US");
        assert!(v["tm_end"].is_null());
        let typed: vbin_event_schema::views::TranscribeView =
            serde_json::from_value(v.clone()).unwrap();
        assert_eq!(typed.reference(), Some(x.reference));
        // Starting twice is refused.
        assert!(matches!(
            x.when(TranscribeCommand::Start {
                transcribe: new(TranscribeDirection::Both, "en-US"),
                at: t(1)
            })
            .then_refused(),
            DomainError::AlreadyExists(_)
        ));

        let ev = x
            .when(add(TranscriptDirection::In, "hello there", 1_200))
            .then_ok();
        assert_eq!(ev.len(), 1);
        let tv = x.resource_after(&ev[0]);
        assert_eq!(tv["type"], "transcript");
        assert_eq!(tv["transcribe_id"], json!(x.id));
        assert_eq!(tv["direction"], "in");
        assert_eq!(tv["message"], "hello there");
        assert_eq!(tv["tm_transcript"], 1_200);
        assert_eq!(tv["tm_create"], json!(t(1_250)));
        x.when(add(TranscriptDirection::Out, "hi", 2_000)).then_ok();
        assert_eq!(x.transcripts, 2);

        let ev = vec![TranscribeEvent::TranscribeCompleted { at: t(3_000) }];
        x.when(TranscribeCommand::Stop { at: t(3_000) })
            .then_events(&ev);
        let v = x.resource_after(&ev[0]);
        assert_eq!(v["status"], "completed");
        assert_eq!(v["tm_end"], json!(t(3_000)));

        // Stopping again changes nothing.
        let before = x.clone();
        x.when(TranscribeCommand::Stop { at: t(4_000) })
            .then_nothing();
        assert_eq!(*x, *before);

        // No transcript of what was said after the end, nor one arriving long after it; one
        // said before the end and recognized a little after is recorded.
        assert!(matches!(
            x.when(add(TranscriptDirection::In, "late", 5_000))
                .then_refused(),
            DomainError::FailedPrecondition(_)
        ));
        let mut stale = add(TranscriptDirection::In, "stale", 2_500);
        if let TranscribeCommand::AddTranscript { at, .. } = &mut stale {
            *at = t(3_000 + LATE_TRANSCRIPT_GRACE_MS + 1);
        }
        assert!(matches!(
            x.when(stale).then_refused(),
            DomainError::FailedPrecondition(_)
        ));
        assert_eq!(x.transcripts, 2);
        x.when(add(TranscriptDirection::In, "said before the end", 2_500))
            .then_ok();
        assert_eq!(x.transcripts, 3);
    }

    #[test]
    fn refusals() {
        // Nothing but Start before the start.
        let mut x = given_nothing::<Transcribe>();
        x.when(TranscribeCommand::Stop { at: t(0) })
            .then_error(DomainError::NotFound("transcribe"));
        x.when(add(TranscriptDirection::In, "hi", 0))
            .then_error(DomainError::NotFound("transcribe"));
        // A bad language tag.
        assert!(matches!(
            x.when(TranscribeCommand::Start {
                transcribe: new(TranscribeDirection::In, "english"),
                at: t(0)
            })
            .then_refused(),
            DomainError::Invalid(_)
        ));
        // A direction the transcription does not cover, an empty or an oversized message.
        let mut x = started(TranscribeDirection::In);
        assert!(matches!(
            x.when(add(TranscriptDirection::Out, "hi", 10))
                .then_refused(),
            DomainError::Invalid(_)
        ));
        assert!(matches!(
            x.when(add(TranscriptDirection::In, "  ", 10))
                .then_refused(),
            DomainError::Invalid(_)
        ));
        let long = "a".repeat(MAX_TRANSCRIPT_CHARS + 1);
        assert!(matches!(
            x.when(add(TranscriptDirection::In, &long, 10))
                .then_refused(),
            DomainError::Invalid(_)
        ));
        assert_eq!(x.transcripts, 0);
    }

    #[test]
    fn a_conference_is_transcribed_per_member_as_they_speak() {
        let conference = ConferenceId::new();
        let start = |direction| TranscribeCommand::Start {
            transcribe: NewTranscribe {
                reference: MediaReference::Conference(conference),
                ..new(direction, "en-US")
            },
            at: t(0),
        };
        for d in [TranscribeDirection::Out, TranscribeDirection::Both] {
            assert!(matches!(
                given_nothing::<Transcribe>().when(start(d)).then_refused(),
                DomainError::Invalid(_)
            ));
        }
        let mut x = given_nothing::<Transcribe>().and(start(TranscribeDirection::In));
        assert_eq!(x.view()["reference_type"], "conference");
        assert_eq!(x.view()["reference_id"], conference.to_string());
        // A transcript that names no member is refused; one that does is recorded with it.
        assert!(matches!(
            x.when(add(TranscriptDirection::In, "hello", 10))
                .then_refused(),
            DomainError::Invalid(_)
        ));
        let member = CallId::new();
        let mut said = add(TranscriptDirection::In, "hello", 10);
        if let TranscribeCommand::AddTranscript { call_id, .. } = &mut said {
            *call_id = Some(member);
        }
        let ev = x.when(said).then_ok();
        assert_eq!(x.resource_after(&ev[0])["call_id"], member.to_string());
        // A call's transcription takes no member.
        let mut c = started(TranscribeDirection::In);
        let mut named = add(TranscriptDirection::In, "hi", 10);
        if let TranscribeCommand::AddTranscript { call_id, .. } = &mut named {
            *call_id = Some(member);
        }
        assert!(matches!(
            c.when(named).then_refused(),
            DomainError::Invalid(_)
        ));
    }
}
