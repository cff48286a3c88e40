//! Transcription commands: start the transcription of an answered call (or of each member of
//! a conference) and stop it. The
//! transcripts are recorded by the media pipeline ([`vbin_app::transcription::record_transcript`]);
//! the reads are the query API's.

use super::campaigns::require;
use super::error::ApiResult;
use super::state::{CmdState, Tenant};
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use serde::Deserialize;
use std::sync::Arc;
use uuid::Uuid;
use vbin_domain::{
    Call, Conference, ConferenceStatus, NewTranscribe, Transcribe, TranscribeCommand,
};
use vbin_event_schema::{
    check_language, CallStatus, MediaReference, ReferenceType, TranscribeDirection, TranscribeId,
};
use vbin_http::extract::{Json, Path};
use vbin_http::ApiError;

/// `POST /v1.0/transcribes` body. Plain strings, checked one by one for clear messages.
#[derive(Deserialize)]
pub struct TranscribeBody {
    reference_type: Option<String>,
    reference_id: Option<String>,
    language: Option<String>,
    direction: Option<String>,
}

/// The validated body.
#[derive(Debug)]
pub struct Settings {
    /// What to transcribe: a call, or a conference's members.
    pub reference: MediaReference,
    /// A language tag (`en-US`).
    pub language: String,
    /// Which audio.
    pub direction: TranscribeDirection,
}

impl TranscribeBody {
    /// The handler's checks, without I/O.
    pub fn validate(self) -> Result<Settings, ApiError> {
        let reference_type = self
            .reference_type
            .as_deref()
            .and_then(ReferenceType::parse)
            .ok_or_else(|| {
                ApiError::invalid("reference_type must be \"call\" or \"conference\"")
            })?;
        let id = self
            .reference_id
            .as_deref()
            .and_then(|r| r.parse::<Uuid>().ok())
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "reference_id must be a {} id (UUID)",
                    reference_type.as_str()
                ))
            })?;
        let reference = MediaReference::new(reference_type, id);
        let language = self
            .language
            .ok_or_else(|| ApiError::invalid("language is required (e.g. \"en-US\")"))?;
        check_language(&language).map_err(|e| ApiError::invalid(e.to_string()))?;
        let direction = match self.direction.as_deref() {
            // A conference is transcribed per member: what each says.
            None if reference_type == ReferenceType::Conference => TranscribeDirection::In,
            Some(d) if reference_type == ReferenceType::Conference && d != "in" => {
                return Err(ApiError::invalid(
                    "a conference is transcribed per member: direction must be \"in\"",
                ))
            }
            None => TranscribeDirection::Both,
            Some(d) => TranscribeDirection::parse(d).ok_or_else(|| {
                ApiError::invalid("direction must be \"in\", \"out\" or \"both\"")
            })?,
        };
        Ok(Settings {
            reference,
            language,
            direction,
        })
    }
}

fn failed_precondition(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "failed_precondition", message)
}

/// `POST /v1.0/transcribes` -> the transcribe (running). The call must be the caller's (404
/// otherwise) and answered (progressing; 409 `failed_precondition` otherwise), and have no
/// running transcribe in the same direction (409). A conference must be the caller's and not
/// ended, with no running transcribe.
pub async fn create_transcribe(
    State(s): State<Arc<CmdState>>,
    Tenant { caller: c, acting }: Tenant,
    Json(b): Json<TranscribeBody>,
) -> ApiResult {
    let t = b.validate()?;
    match t.reference {
        MediaReference::Call(call) => {
            let call = require::<Call>(&s, call.as_uuid(), c.customer_id, "call").await?;
            if call.status != CallStatus::Progressing {
                return Err(failed_precondition(format!(
                    "only an answered (progressing) call can be transcribed; the call is {}",
                    call.status.as_str()
                ))
                .into());
            }
        }
        MediaReference::Conference(conference) => {
            let conference =
                require::<Conference>(&s, conference.as_uuid(), c.customer_id, "conference")
                    .await?;
            if conference.status == ConferenceStatus::Terminated {
                return Err(failed_precondition("the conference has ended").into());
            }
        }
    }
    // Running transcriptions by what they listen to (a call's or a conference's id).
    let running: Option<Uuid> = sqlx::query_scalar(
        "SELECT transcribe_id FROM transcribe_calls WHERE call_id = $1 AND direction = $2",
    )
    .bind(t.reference.id())
    .bind(t.direction.as_str())
    .fetch_optional(&s.app.pool)
    .await?;
    if let Some(running) = running {
        return Err(failed_precondition(format!(
            "the {} has a running transcribe {running} for direction {}",
            t.reference.reference_type().as_str(),
            t.direction.as_str()
        ))
        .into());
    }
    let id = TranscribeId(vbin_app::new_id());
    let cmd = TranscribeCommand::Start {
        transcribe: NewTranscribe {
            transcribe_id: id,
            customer_id: c.customer_id,
            reference: t.reference,
            language: t.language,
            direction: t.direction,
            aicall_id: None,
        },
        at: Utc::now(),
    };
    Ok(Json(
        s.app
            .create::<Transcribe>(&acting, id.as_uuid(), cmd)
            .await?
            .view(),
    ))
}

/// `POST /v1.0/transcribes/{id}/stop` -> the transcribe (completed). Stopping a completed one
/// returns it unchanged.
pub async fn stop_transcribe(
    State(s): State<Arc<CmdState>>,
    Tenant { acting, .. }: Tenant,
    Path(id): Path<Uuid>,
) -> ApiResult {
    let cmd = TranscribeCommand::Stop { at: Utc::now() };
    Ok(Json(
        s.app.update::<Transcribe>(&acting, id, cmd).await?.view(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vbin_event_schema::{CallId, ConferenceId};

    fn body(v: serde_json::Value) -> TranscribeBody {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn body_validation() {
        let call = Uuid::now_v7().to_string();
        let ok = body(
            serde_json::json!({"reference_type": "call", "reference_id": call, "language": "en-US"}),
        )
        .validate().unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(ok.direction, TranscribeDirection::Both);
        assert_eq!(
            ok.reference,
            MediaReference::Call(CallId(call.parse().unwrap()))
        );
        let conf = body(
            serde_json::json!({"reference_type": "conference", "reference_id": call, "language": "en-US"}),
        )
        .validate().unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(conf.direction, TranscribeDirection::In);
        assert_eq!(
            conf.reference,
            MediaReference::Conference(ConferenceId(call.parse().unwrap()))
        );
        for bad in [
            serde_json::json!({"reference_id": call, "language": "en-US"}),
            serde_json::json!({"reference_type": "agent", "reference_id": call, "language": "en-US"}),
            serde_json::json!({"reference_type": "conference", "reference_id": call, "language": "en-US", "direction": "both"}),
            serde_json::json!({"reference_type": "call", "reference_id": "x", "language": "en-US"}),
            serde_json::json!({"reference_type": "call", "reference_id": call}),
            serde_json::json!({"reference_type": "call", "reference_id": call, "language": "english"}),
            serde_json::json!({"reference_type": "call", "reference_id": call, "language": "en-US", "direction": "up"}),
        ] {
            assert!(body(bad.clone()).validate().is_err(), "{bad} accepted");
        }
    }
}
