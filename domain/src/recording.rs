//! The Recording aggregate: one capture of a call's audio (started by the API or a flow's
//! `recording_start`, ended by the call's media session when it is stored) or of a
//! conference's mix (started by the API, ended by the media process that records it).

use crate::{DomainError, ResourceView};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use vbin_event_schema::*;

/// Recording commands.
#[derive(Clone, Debug, PartialEq)]
pub enum RecordingCommand {
    /// Start capturing (the media session already is, or starts on `recording_started`).
    Start {
        /// Id.
        recording_id: RecordingId,
        /// Owner.
        customer_id: CustomerId,
        /// The call or conference.
        reference: MediaReference,
        /// When it stops on its own.
        limits: RecordingLimits,
        /// When.
        at: DateTime<Utc>,
    },
    /// Ask the media session to stop it (a no-op unless recording).
    RequestStop {
        /// When.
        at: DateTime<Utc>,
    },
    /// The file is stored. A no-op once ended.
    End {
        /// Audio length, ms.
        duration_ms: u64,
        /// Object key.
        file: String,
        /// Bytes.
        size_bytes: u64,
        /// What went wrong, if anything.
        error: Option<String>,
        /// When.
        at: DateTime<Utc>,
    },
    /// Its file was deleted. A no-op once deleted.
    Delete {
        /// When.
        at: DateTime<Utc>,
    },
}

/// A recording's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Recording {
    /// None until started.
    pub id: Option<RecordingId>,
    /// Owner.
    pub customer_id: CustomerId,
    /// The call or conference.
    pub reference: MediaReference,
    /// Status.
    pub status: RecordingStatus,
    /// Limits.
    pub limits: RecordingLimits,
    /// Whether a stop was asked for.
    pub stop_requested: bool,
    /// Audio length.
    pub duration_ms: u64,
    /// Object key.
    pub file: Option<String>,
    /// Bytes.
    pub size_bytes: u64,
    /// Failure.
    pub error: Option<String>,
    /// Started.
    pub tm_start: Option<DateTime<Utc>>,
    /// Ended.
    pub tm_end: Option<DateTime<Utc>>,
    /// Deleted.
    pub tm_delete: Option<DateTime<Utc>>,
}

impl Recording {
    /// The API view (the object key stays internal).
    pub fn view(&self) -> Value {
        json!({
            "id": self.id,
            "type": "recording",
            "customer_id": self.customer_id,
            "reference_type": self.reference.reference_type(),
            "reference_id": self.reference.id(),
            "status": self.status,
            "format": "wav",
            "channels": match self.reference {
                MediaReference::Call(_) => 2,
                MediaReference::Conference(_) => 1,
            },
            "duration_ms": self.duration_ms,
            "size_bytes": self.size_bytes,
            "error": self.error,
            "tm_start": self.tm_start,
            "tm_end": self.tm_end,
            "tm_delete": self.tm_delete,
        })
    }

    fn decide(&self, command: RecordingCommand) -> Result<Vec<RecordingEvent>, DomainError> {
        if let RecordingCommand::Start {
            recording_id,
            customer_id,
            reference,
            limits,
            at,
        } = command
        {
            if self.id.is_some() {
                return Err(DomainError::AlreadyExists(format!(
                    "recording {recording_id} exists"
                )));
            }
            if matches!(reference, MediaReference::Conference(_))
                && (limits.end_of_silence_ms.is_some() || limits.end_of_key.is_some())
            {
                return Err(DomainError::Invalid(
                    "a conference's recording stops on duration only (no end_of_silence or \
                     end_of_key: the mix has no far end)"
                        .into(),
                ));
            }
            return Ok(vec![RecordingEvent::RecordingStarted {
                recording_id,
                customer_id,
                reference_type: reference.reference_type(),
                reference_id: reference.id(),
                format: "wav".into(),
                limits,
                at,
            }]);
        }
        if self.id.is_none() {
            return Err(DomainError::NotFound("recording"));
        }
        Ok(match command {
            RecordingCommand::Start { .. } => vec![],
            RecordingCommand::RequestStop { at }
                if self.status == RecordingStatus::Recording && !self.stop_requested =>
            {
                vec![RecordingEvent::RecordingStopRequested { at }]
            }
            RecordingCommand::RequestStop { .. } => vec![],
            RecordingCommand::End {
                duration_ms,
                file,
                size_bytes,
                error,
                at,
            } if self.status == RecordingStatus::Recording => {
                vec![RecordingEvent::RecordingEnded {
                    duration_ms,
                    file,
                    size_bytes,
                    error,
                    at,
                }]
            }
            RecordingCommand::End { .. } => vec![],
            RecordingCommand::Delete { at } if self.status == RecordingStatus::Ended => {
                vec![RecordingEvent::RecordingDeleted { at }]
            }
            RecordingCommand::Delete { .. } if self.status == RecordingStatus::Recording => {
                return Err(DomainError::FailedPrecondition(
                    "the recording is still running; stop it first".into(),
                ))
            }
            RecordingCommand::Delete { .. } => vec![],
        })
    }

    fn fold(&mut self, event: RecordingEvent) {
        match event {
            RecordingEvent::RecordingStarted {
                recording_id,
                customer_id,
                reference_type,
                reference_id,
                limits,
                at,
                ..
            } => {
                *self = Recording {
                    id: Some(recording_id),
                    customer_id,
                    reference: MediaReference::new(reference_type, reference_id),
                    limits,
                    tm_start: Some(at),
                    ..Recording::default()
                }
            }
            RecordingEvent::RecordingStopRequested { .. } => self.stop_requested = true,
            RecordingEvent::RecordingEnded {
                duration_ms,
                file,
                size_bytes,
                error,
                at,
            } => {
                self.status = RecordingStatus::Ended;
                self.duration_ms = duration_ms;
                self.file = Some(file);
                self.size_bytes = size_bytes;
                self.error = error;
                self.tm_end = Some(at);
            }
            RecordingEvent::RecordingDeleted { at } => {
                self.status = RecordingStatus::Deleted;
                self.tm_delete = Some(at);
            }
        }
    }
}

decided_aggregate!(Recording, RecordingCommand, RecordingEvent);

impl ResourceView for Recording {
    fn resource_after(&self, _: &RecordingEvent) -> Value {
        self.view()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::given_nothing;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    #[test]
    fn a_recording_starts_stops_ends_once_and_is_deleted_after() {
        let mut r = given_nothing::<Recording>().and(RecordingCommand::Start {
            recording_id: RecordingId::new(),
            customer_id: CustomerId::new(),
            reference: MediaReference::Call(CallId::new()),
            limits: RecordingLimits::default(),
            at: t(0),
        });
        assert!(matches!(
            r.when(RecordingCommand::Delete { at: t(1) }).then_refused(),
            DomainError::FailedPrecondition(_)
        ));
        r.when(RecordingCommand::RequestStop { at: t(1) })
            .then_count(1);
        r.when(RecordingCommand::RequestStop { at: t(2) })
            .then_nothing();
        let end = |at| RecordingCommand::End {
            duration_ms: 1500,
            file: "k".into(),
            size_bytes: 96_044,
            error: None,
            at: t(at),
        };
        r.when(end(3)).then_count(1);
        r.when(end(4)).then_nothing();
        assert_eq!((r.status, r.duration_ms), (RecordingStatus::Ended, 1500));
        r.when(RecordingCommand::Delete { at: t(5) }).then_count(1);
        r.when(RecordingCommand::Delete { at: t(6) }).then_nothing();
        assert_eq!(r.view()["status"], "deleted");
        assert_eq!(
            (
                r.view()["reference_type"].clone(),
                r.view()["channels"].clone()
            ),
            ("call".into(), 2.into())
        );
    }

    #[test]
    fn a_conference_recording_is_its_mix_and_stops_on_duration_only() {
        let conference = ConferenceId::new();
        let start = |limits| RecordingCommand::Start {
            recording_id: RecordingId::new(),
            customer_id: CustomerId::new(),
            reference: MediaReference::Conference(conference),
            limits,
            at: t(0),
        };
        let r = given_nothing::<Recording>().and(start(RecordingLimits {
            duration_ms: Some(60_000),
            ..Default::default()
        }));
        let v = r.view();
        assert_eq!(v["reference_type"], "conference");
        assert_eq!(v["reference_id"], conference.to_string());
        assert_eq!(v["channels"], 1);
        let typed: vbin_event_schema::views::RecordingView = serde_json::from_value(v).unwrap();
        assert_eq!(
            typed.reference(),
            Some(MediaReference::Conference(conference))
        );
        assert!(matches!(
            given_nothing::<Recording>()
                .when(start(RecordingLimits {
                    end_of_silence_ms: Some(3000),
                    ..Default::default()
                }))
                .then_refused(),
            DomainError::Invalid(_)
        ));
    }
}
