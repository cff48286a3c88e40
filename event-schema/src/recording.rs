//! Events of the Recording aggregate: a call's audio captured by its media session as a
//! stereo WAV (left = what the far end sent, right = what the platform sent), or a
//! conference's mix as a mono WAV, in object storage.

use crate::types::*;
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

/// A recording's status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingStatus {
    /// Capturing.
    #[default]
    Recording,
    /// Stored (or failed: see `error`).
    Ended,
    /// Its file was deleted (retention or API).
    Deleted,
}

/// How a recording ends on its own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingLimits {
    /// Longest recording, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u32>,
    /// Stop after this much silence from the far end, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_of_silence_ms: Option<u32>,
    /// Stop when the far end presses one of these keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_of_key: Option<String>,
}

/// Everything that happens to a recording.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RecordingEvent {
    /// Capture started.
    RecordingStarted {
        /// The recording.
        recording_id: RecordingId,
        /// Owner.
        customer_id: CustomerId,
        /// What is recorded.
        reference_type: ReferenceType,
        /// The call or conference recorded.
        reference_id: uuid::Uuid,
        /// Only `wav`.
        format: String,
        /// When it stops on its own.
        limits: RecordingLimits,
        /// When.
        at: DateTime<Utc>,
    },
    /// Someone asked it to stop (API or flow); the media session ends it.
    RecordingStopRequested {
        /// When.
        at: DateTime<Utc>,
    },
    /// The file is stored (or could not be: `error`).
    RecordingEnded {
        /// Audio length, ms.
        duration_ms: u64,
        /// Object key in the recordings store.
        file: String,
        /// Bytes stored.
        size_bytes: u64,
        /// Why the file is missing or incomplete.
        error: Option<String>,
        /// When.
        at: DateTime<Utc>,
    },
    /// Its file was deleted.
    RecordingDeleted {
        /// When.
        at: DateTime<Utc>,
    },
}

events!(RecordingEvent in "recording" {
    RecordingStarted => RECORDING_STARTED = "recording_started",
    RecordingStopRequested => RECORDING_STOP_REQUESTED = "recording_stop_requested",
    RecordingEnded => RECORDING_ENDED = "recording_ended",
    RecordingDeleted => RECORDING_DELETED = "recording_deleted",
});
impl DomainEvent for RecordingEvent {
    fn event_type(&self) -> String {
        self.name().to_string()
    }
    fn event_version(&self) -> String {
        match self {
            // 2.0: `reference_type` (conferences are recorded too).
            Self::RecordingStarted { .. } => "2.0",
            _ => "1.0",
        }
        .to_string()
    }
}
