//! Numbers (create, update, delete) and the sandbox network's incoming calls (admin).

use super::calls::{check_sandbox, Address};
use super::error::ApiResult;
use super::state::{acting, CmdState, Tenant};
use axum::extract::State;
use serde::Deserialize;
use std::sync::Arc;
use uuid::Uuid;
use vbin_app::numbers::IncomingCall;
use vbin_event_schema::flow::SandboxScript;
use vbin_event_schema::{CallId, CustomerId, FlowId, TrunkId};
use vbin_http::auth::Caller;
use vbin_http::extract::{Admin, Json, Path};

/// `POST /v1.0/numbers` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateNumber {
    number: Address,
    call_flow_id: Uuid,
    /// The SIP trunk its calls come from (none: the sandbox network's only).
    #[serde(default)]
    trunk_id: Option<Uuid>,
}

/// `PUT /v1.0/numbers/{id}` body (the whole routing: no `trunk_id` means none).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateNumber {
    call_flow_id: Uuid,
    #[serde(default)]
    trunk_id: Option<Uuid>,
}

/// `POST /v1.0/numbers` -> the number (409 when it is taken).
pub async fn create_number(
    State(s): State<Arc<CmdState>>,
    t: Tenant,
    Json(b): Json<CreateNumber>,
) -> ApiResult {
    let number = b.number.parse("number")?;
    let n = s
        .app
        .create_number(
            &t.acting,
            number,
            FlowId(b.call_flow_id),
            b.trunk_id.map(TrunkId),
        )
        .await?;
    Ok(Json(n.view()))
}

/// `PUT /v1.0/numbers/{id}` -> the number, routed to another flow.
pub async fn update_number(
    State(s): State<Arc<CmdState>>,
    t: Tenant,
    Path(id): Path<Uuid>,
    Json(b): Json<UpdateNumber>,
) -> ApiResult {
    let n = s
        .app
        .update_number(
            &t.acting,
            id,
            FlowId(b.call_flow_id),
            b.trunk_id.map(TrunkId),
        )
        .await?;
    Ok(Json(n.view()))
}

/// `DELETE /v1.0/numbers/{id}` -> the released number.
pub async fn delete_number(
    State(s): State<Arc<CmdState>>,
    t: Tenant,
    Path(id): Path<Uuid>,
) -> ApiResult {
    Ok(Json(s.app.delete_number(&t.acting, id).await?.view()))
}

/// `POST /v1.0/sandbox/incoming_calls` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxIncoming {
    customer_id: Uuid,
    source: Address,
    destination: Address,
    sandbox: Option<SandboxScript>,
}

/// `POST /v1.0/sandbox/incoming_calls` (platform admin) -> the incoming call: the sandbox
/// network calls one of the customer's numbers, which runs the number's flow.
pub async fn sandbox_incoming_call(
    State(s): State<Arc<CmdState>>,
    _: Admin,
    Json(b): Json<SandboxIncoming>,
) -> ApiResult {
    let source = b.source.parse("source")?;
    let destination = b.destination.parse("destination")?;
    if let Some(script) = &b.sandbox {
        check_sandbox(script)?;
    }
    let customer = CustomerId(b.customer_id);
    let acting = acting(&Caller::Admin, customer);
    let call = s
        .app
        .incoming_call(
            &acting,
            IncomingCall {
                call_id: CallId(vbin_app::new_id()),
                customer,
                source,
                destination,
                sandbox: b.sandbox,
                trunk_id: None,
            },
        )
        .await?;
    Ok(Json(call.view()))
}
