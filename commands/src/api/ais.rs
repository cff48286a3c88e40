//! AI assistants (create, update, delete) and their conversations on calls (start, stop). The
//! conversations themselves run in the call's media session; the reads are the query API's.

use super::error::ApiResult;
use super::state::{CmdState, Tenant};
use axum::extract::State;
use serde::Deserialize;
use std::sync::Arc;
use uuid::Uuid;
use vbin_app::ai::KeyChange;
use vbin_event_schema::{AiId, AiSettings, AiTool, AicallId, CallId, VadConfig};
use vbin_http::extract::{Json, Path};
use vbin_http::ApiError;

/// `POST /v1.0/ais` and `PUT /v1.0/ais/{id}` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiBody {
    name: String,
    #[serde(default)]
    detail: String,
    #[serde(default)]
    init_prompt: String,
    engine_model: String,
    engine_url: Option<String>,
    /// Write-only. On an update: absent or null keeps the current key, `""` removes it.
    engine_key: Option<String>,
    stt_type: Option<String>,
    stt_language: Option<String>,
    tts_type: Option<String>,
    tts_voice_id: Option<String>,
    vad_config: Option<VadConfig>,
    #[serde(default)]
    tool_names: Vec<String>,
}

impl AiBody {
    /// The settings (checked by the aggregate) and what to do with the key.
    fn settings(self) -> Result<(AiSettings, KeyChange), ApiError> {
        let mut tools = Vec::new();
        for t in &self.tool_names {
            let tool = AiTool::parse(t).ok_or_else(|| {
                let all: Vec<&str> = AiTool::ALL.iter().map(|t| t.as_str()).collect();
                ApiError::invalid(format!("tool_names: {t:?} is not one of {all:?}"))
            })?;
            if !tools.contains(&tool) {
                tools.push(tool);
            }
        }
        let key = match self.engine_key {
            None => KeyChange::Keep,
            Some(k) if k.is_empty() => KeyChange::Remove,
            Some(k) => KeyChange::Set(k),
        };
        let settings = AiSettings {
            name: self.name,
            detail: self.detail,
            init_prompt: self.init_prompt,
            engine_model: self.engine_model,
            engine_url: self.engine_url.filter(|u| !u.is_empty()),
            engine_key_sealed: None,
            stt_type: self.stt_type,
            stt_language: self.stt_language.unwrap_or_else(|| "en-US".into()),
            tts_type: self.tts_type,
            tts_voice_id: self.tts_voice_id,
            vad_config: self.vad_config.unwrap_or_default(),
            tool_names: tools,
        };
        Ok((settings, key))
    }
}

/// `POST /v1.0/ais` -> the assistant (its key shown only as `engine_key_set`).
pub async fn create_ai(
    State(s): State<Arc<CmdState>>,
    t: Tenant,
    Json(b): Json<AiBody>,
) -> ApiResult {
    let (settings, key) = b.settings()?;
    let key = match key {
        KeyChange::Set(k) => Some(k),
        KeyChange::Keep | KeyChange::Remove => None,
    };
    Ok(Json(
        s.app.create_ai(&t.acting, settings, key).await?.view(),
    ))
}

/// `PUT /v1.0/ais/{id}` -> the assistant (conversations under way keep their settings).
pub async fn update_ai(
    State(s): State<Arc<CmdState>>,
    t: Tenant,
    Path(id): Path<Uuid>,
    Json(b): Json<AiBody>,
) -> ApiResult {
    let (settings, key) = b.settings()?;
    Ok(Json(
        s.app.update_ai(&t.acting, id, settings, key).await?.view(),
    ))
}

/// `DELETE /v1.0/ais/{id}` -> the deleted assistant.
pub async fn delete_ai(
    State(s): State<Arc<CmdState>>,
    t: Tenant,
    Path(id): Path<Uuid>,
) -> ApiResult {
    Ok(Json(s.app.delete_ai(&t.acting, id).await?.view()))
}

/// `POST /v1.0/aicalls` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AicallBody {
    ai_id: Uuid,
    reference_type: String,
    reference_id: Uuid,
}

/// `POST /v1.0/aicalls` -> the conversation (initiating; the call's media session runs it).
pub async fn create_aicall(
    State(s): State<Arc<CmdState>>,
    t: Tenant,
    Json(b): Json<AicallBody>,
) -> ApiResult {
    if b.reference_type != "call" {
        return Err(ApiError::invalid("reference_type must be \"call\"").into());
    }
    let c = s
        .app
        .start_aicall(
            &t.acting,
            AicallId(vbin_app::new_id()),
            AiId(b.ai_id),
            CallId(b.reference_id),
            Default::default(),
        )
        .await?;
    Ok(Json(c.view()))
}

/// `POST /v1.0/aicalls/{id}/stop` -> the conversation, terminated.
pub async fn stop_aicall(
    State(s): State<Arc<CmdState>>,
    t: Tenant,
    Path(id): Path<Uuid>,
) -> ApiResult {
    Ok(Json(s.app.stop_aicall(&t.acting, id).await?.view()))
}
