//! Events of the Transcribe aggregate: the speech-to-text transcription of a call and the
//! transcripts (recognized segments) it produces. `transcript_created` carries the transcript
//! as its resource, so webhooks and WebSocket pushes deliver each segment as it is recognized.

use crate::types::*;
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

/// Longest language tag accepted.
pub const MAX_LANGUAGE_LEN: usize = 35;

/// Which audio of the call a transcription covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TranscribeDirection {
    /// What the far end says (audio coming in).
    In,
    /// What our side says (audio going out).
    Out,
    /// Both sides.
    #[default]
    Both,
}

impl TranscribeDirection {
    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::In => "in",
            Self::Out => "out",
            Self::Both => "both",
        }
    }

    /// The direction of an API name (`in`, `out`, `both`).
    pub fn parse(s: &str) -> Option<Self> {
        [Self::In, Self::Out, Self::Both]
            .into_iter()
            .find(|d| d.as_str() == s)
    }

    /// Whether a transcript of `direction` belongs to a transcription of this direction.
    pub fn covers(self, direction: TranscriptDirection) -> bool {
        match self {
            Self::Both => true,
            Self::In => direction == TranscriptDirection::In,
            Self::Out => direction == TranscriptDirection::Out,
        }
    }
}

/// Which side of the call a transcript was heard on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TranscriptDirection {
    /// The far end.
    In,
    /// Our side.
    Out,
}

impl TranscriptDirection {
    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::In => "in",
            Self::Out => "out",
        }
    }
}

/// A transcription's status: running until stopped (by the API or when its call ends).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TranscribeStatus {
    /// Transcripts are being recorded.
    #[default]
    Running,
    /// Stopped; no more transcripts.
    Completed,
}

/// Checks a BCP-47-style language tag: a primary language of 2 or 3 letters followed by one
/// to three subtags of 2 to 8 letters or digits (`en-US`, `pt-BR`, `zh-Hant-TW`), at most
/// [`MAX_LANGUAGE_LEN`] characters.
pub fn check_language(tag: &str) -> Result<(), InvalidValue> {
    let bad = || {
        InvalidValue::new(
            "language",
            format!("{tag:?} is not a language tag like \"en-US\""),
        )
    };
    if tag.len() > MAX_LANGUAGE_LEN {
        return Err(bad());
    }
    let mut parts = tag.split('-');
    let primary = parts.next().unwrap_or_default();
    if !(2..=3).contains(&primary.len()) || !primary.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(bad());
    }
    let subtags: Vec<&str> = parts.collect();
    let subtag_ok =
        |s: &&str| (2..=8).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric());
    if subtags.is_empty() || subtags.len() > 3 || !subtags.iter().all(subtag_ok) {
        return Err(bad());
    }
    Ok(())
}

/// Events of a transcription.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TranscribeEvent {
    /// A transcription started (status running).
    TranscribeStarted {
        /// It.
        transcribe_id: TranscribeId,
        /// Owner.
        customer_id: CustomerId,
        /// What it listens to.
        reference_type: ReferenceType,
        /// The call or conference.
        reference_id: uuid::Uuid,
        /// Language tag (`en-US`).
        language: String,
        /// Which audio it covers.
        direction: TranscribeDirection,
        /// Set when it is an AI conversation's messages (no speech-to-text of its own).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        aicall_id: Option<AicallId>,
        /// When.
        at: DateTime<Utc>,
    },
    /// A segment was recognized.
    TranscriptCreated {
        /// The transcript.
        transcript_id: TranscriptId,
        /// The side it was heard on.
        direction: TranscriptDirection,
        /// Who said it: the member, in a conference's transcription (none for a call's).
        #[serde(default)]
        call_id: Option<CallId>,
        /// The recognized text.
        message: String,
        /// Milliseconds from the transcription's start to the segment.
        tm_transcript_ms: u64,
        /// When it was recorded.
        at: DateTime<Utc>,
    },
    /// The transcription stopped (status completed).
    TranscribeCompleted {
        /// When.
        at: DateTime<Utc>,
    },
}
events!(TranscribeEvent in "transcribe" {
    TranscribeStarted => TRANSCRIBE_STARTED = "transcribe_started",
    TranscriptCreated => TRANSCRIPT_CREATED = "transcript_created",
    TranscribeCompleted => TRANSCRIBE_COMPLETED = "transcribe_completed",
});
impl DomainEvent for TranscribeEvent {
    fn event_type(&self) -> String {
        self.name().to_string()
    }
    fn event_version(&self) -> String {
        match self {
            // 2.0: who said it (`call_id`), for conferences.
            Self::TranscriptCreated { .. } => "2.0",
            _ => "1.0",
        }
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_tags() {
        for ok in ["en-US", "pt-BR", "zh-Hant-TW", "es-419", "yue-HK"] {
            assert!(check_language(ok).is_ok(), "{ok} refused");
        }
        for bad in [
            "",
            "en",
            "e-US",
            "english-US",
            "en_US",
            "en-",
            "en-U",
            "en-US-a-b-c",
            "en-US\n",
            "en-ÜS",
        ] {
            assert!(check_language(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn directions_cover() {
        use TranscriptDirection::*;
        assert!(TranscribeDirection::Both.covers(In));
        assert!(TranscribeDirection::Both.covers(Out));
        assert!(TranscribeDirection::In.covers(In));
        assert!(!TranscribeDirection::In.covers(Out));
        assert!(!TranscribeDirection::Out.covers(In));
    }
}
