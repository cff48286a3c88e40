//! Flow commands (create, update, delete) and stopping an activeflow.

use super::error::ApiResult;
use super::state::{CmdState, Tenant};
use axum::extract::State;
use serde::Deserialize;
use std::sync::Arc;
use uuid::Uuid;
use vbin_app::flows::FlowInput;
use vbin_domain::flow::{check_names, validate_actions};
use vbin_event_schema::flow::{ActionId, RawAction};
use vbin_http::extract::{Json, Path};
use vbin_http::ApiError;

/// `POST /v1.0/flows` and `PUT /v1.0/flows/{id}` body.
#[derive(Deserialize)]
pub struct FlowBody {
    #[serde(default)]
    name: String,
    #[serde(default)]
    detail: String,
    actions: Vec<RawAction>,
}

impl FlowBody {
    /// The handler's checks, without I/O: name and detail, and every action (missing ids are
    /// drawn).
    pub fn validate(self) -> Result<FlowInput, ApiError> {
        let invalid = |e: vbin_domain::DomainError| ApiError::invalid(e.to_string());
        check_names(&self.name, &self.detail).map_err(invalid)?;
        let actions =
            validate_actions(self.actions, || ActionId(vbin_app::new_id())).map_err(invalid)?;
        Ok(FlowInput {
            name: self.name,
            detail: self.detail,
            actions,
        })
    }
}

/// `POST /v1.0/flows` -> the flow (actions without an id get one).
pub async fn create_flow(
    State(s): State<Arc<CmdState>>,
    t: Tenant,
    Json(b): Json<FlowBody>,
) -> ApiResult {
    Ok(Json(
        s.app.create_flow(&t.acting, b.validate()?).await?.view(),
    ))
}

/// `PUT /v1.0/flows/{id}` -> the flow (running activeflows keep the program they copied).
pub async fn update_flow(
    State(s): State<Arc<CmdState>>,
    t: Tenant,
    Path(id): Path<Uuid>,
    Json(b): Json<FlowBody>,
) -> ApiResult {
    Ok(Json(
        s.app
            .update_flow(&t.acting, id, b.validate()?)
            .await?
            .view(),
    ))
}

/// `DELETE /v1.0/flows/{id}` -> the deleted flow.
pub async fn delete_flow(
    State(s): State<Arc<CmdState>>,
    t: Tenant,
    Path(id): Path<Uuid>,
) -> ApiResult {
    Ok(Json(s.app.delete_flow(&t.acting, id).await?.view()))
}

/// `POST /v1.0/activeflows/{id}/stop` -> the activeflow, ended (the call goes on).
pub async fn stop_activeflow(
    State(s): State<Arc<CmdState>>,
    t: Tenant,
    Path(id): Path<Uuid>,
) -> ApiResult {
    Ok(Json(s.app.stop_activeflow(&t.acting, id).await?.view()))
}
