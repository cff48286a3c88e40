//! SIP trunks (create, update, delete); the reads are the query API's.

use super::error::ApiResult;
use super::state::{CmdState, Tenant};
use axum::extract::State;
use serde::Deserialize;
use std::sync::Arc;
use uuid::Uuid;
use vbin_app::ai::KeyChange;
use vbin_event_schema::{Codec, SipTransport, TrunkSettings};
use vbin_http::extract::{Json, Path};
use vbin_http::ApiError;

/// `POST /v1.0/trunks` and `PUT /v1.0/trunks/{id}` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkBody {
    name: String,
    host: String,
    port: Option<u16>,
    transport: Option<String>,
    username: Option<String>,
    /// Write-only. On an update: absent or null keeps the current one, `""` removes it.
    password: Option<String>,
    codecs: Option<Vec<String>>,
}

impl TrunkBody {
    /// The settings (checked by the aggregate) and what to do with the password.
    fn settings(self) -> Result<(TrunkSettings, KeyChange), ApiError> {
        let transport = match self.transport.as_deref() {
            None => SipTransport::Udp,
            Some(t) => SipTransport::parse(t)
                .ok_or_else(|| ApiError::invalid("transport must be \"udp\" or \"tcp\""))?,
        };
        let codecs = match self.codecs {
            None => vec![Codec::Pcmu, Codec::Pcma],
            Some(names) => names
                .iter()
                .map(|n| {
                    Codec::parse(n).ok_or_else(|| {
                        let all: Vec<&str> = Codec::ALL.iter().map(|c| c.as_str()).collect();
                        ApiError::invalid(format!("codecs: {n:?} is not one of {all:?}"))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let password = match self.password {
            None => KeyChange::Keep,
            Some(p) if p.is_empty() => KeyChange::Remove,
            Some(p) => KeyChange::Set(p),
        };
        let settings = TrunkSettings {
            name: self.name,
            host: self.host,
            port: self.port.unwrap_or(5060),
            transport,
            username: self.username.filter(|u| !u.is_empty()),
            password_sealed: None,
            codecs,
        };
        Ok((settings, password))
    }
}

/// `POST /v1.0/trunks` -> the trunk (its password shown only as `password_set`).
pub async fn create_trunk(
    State(s): State<Arc<CmdState>>,
    t: Tenant,
    Json(b): Json<TrunkBody>,
) -> ApiResult {
    let (settings, password) = b.settings()?;
    let password = match password {
        KeyChange::Set(p) => Some(p),
        KeyChange::Keep | KeyChange::Remove => None,
    };
    Ok(Json(
        s.app
            .create_trunk(&t.acting, settings, password)
            .await?
            .view(),
    ))
}

/// `PUT /v1.0/trunks/{id}` -> the trunk with its new settings.
pub async fn update_trunk(
    State(s): State<Arc<CmdState>>,
    t: Tenant,
    Path(id): Path<Uuid>,
    Json(b): Json<TrunkBody>,
) -> ApiResult {
    let (settings, password) = b.settings()?;
    Ok(Json(
        s.app
            .update_trunk(&t.acting, id, settings, password)
            .await?
            .view(),
    ))
}

/// `DELETE /v1.0/trunks/{id}` -> the deleted trunk.
pub async fn delete_trunk(
    State(s): State<Arc<CmdState>>,
    t: Tenant,
    Path(id): Path<Uuid>,
) -> ApiResult {
    Ok(Json(s.app.delete_trunk(&t.acting, id).await?.view()))
}
