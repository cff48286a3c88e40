//! Conference commands: create one, stop one (every member leaves and its flow goes on),
//! record its mix. Calls join through their flow's `conference_join`.

use super::campaigns::check_name;
use super::error::ApiResult;
use super::state::{CmdState, Tenant};
use axum::extract::State;
use chrono::Utc;
use serde::Deserialize;
use std::sync::Arc;
use uuid::Uuid;
use vbin_domain::{Conference, ConferenceCommand};
use vbin_event_schema::{ConferenceId, MediaReference};
use vbin_http::extract::{Json, Path};

/// `POST /v1.0/conferences` body.
#[derive(Deserialize)]
pub struct ConferenceBody {
    #[serde(default)]
    name: String,
}

/// `POST /v1.0/conferences` -> the conference (`pending`).
pub async fn create_conference(
    State(s): State<Arc<CmdState>>,
    Tenant { caller: c, acting }: Tenant,
    Json(b): Json<ConferenceBody>,
) -> ApiResult {
    check_name(&b.name)?;
    let id = ConferenceId(vbin_app::new_id());
    let cmd = ConferenceCommand::Create {
        conference_id: id,
        customer_id: c.customer_id,
        name: b.name,
        at: Utc::now(),
    };
    Ok(Json(
        s.app
            .create::<Conference>(&acting, id.as_uuid(), cmd)
            .await?
            .view(),
    ))
}

/// `POST /v1.0/conferences/{id}/stop` -> the conference (`terminated`; stopping twice
/// changes nothing).
pub async fn stop_conference(
    State(s): State<Arc<CmdState>>,
    Tenant { acting, .. }: Tenant,
    Path(id): Path<Uuid>,
) -> ApiResult {
    let cmd = ConferenceCommand::Stop { at: Utc::now() };
    Ok(Json(
        s.app.update::<Conference>(&acting, id, cmd).await?.view(),
    ))
}

/// `POST /v1.0/conferences/{id}/recording_start` -> the recording (status recording, one
/// channel: the mix of every member). Optional body `{format?: "wav", duration?}`; the
/// conference must not have ended.
pub async fn start_recording(
    State(s): State<Arc<CmdState>>,
    t: Tenant,
    Path(id): Path<Uuid>,
    body: axum::body::Bytes,
) -> ApiResult {
    let reference = MediaReference::Conference(ConferenceId(id));
    super::calls::record(&s, &t, reference, &body).await
}

/// `POST /v1.0/conferences/{id}/recording_stop` -> the conference's recordings asked to stop
/// (each ends with `recording_ended` once stored).
pub async fn stop_recording(
    State(s): State<Arc<CmdState>>,
    t: Tenant,
    Path(id): Path<Uuid>,
) -> ApiResult {
    let reference = MediaReference::Conference(ConferenceId(id));
    super::calls::stop_recordings(&s, &t, reference).await
}
