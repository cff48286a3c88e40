//! Billing commands: top-ups and rates (platform admin). The balance check that refuses new
//! calls with 402 is the application's (`vbin_app::billing`).

use super::error::ApiResult;
use super::state::{acting, CmdState};
use axum::extract::State;
use chrono::Utc;
use serde::Deserialize;
use std::sync::Arc;
use uuid::Uuid;
use vbin_domain::{BillingAccount, BillingCommand};
use vbin_event_schema::{CustomerId, Micros};
use vbin_http::auth::Caller;
use vbin_http::extract::{Admin, Json, Path};

/// `POST /v1.0/customers/{id}/balance_add` body.
#[derive(Deserialize)]
pub struct BalanceAdd {
    /// Micros to add (the billing account checks the range).
    pub amount_micros: i64,
}

/// `POST /v1.0/customers/{id}/balance_add` (platform admin) -> the billing account.
pub async fn balance_add(
    State(s): State<Arc<CmdState>>,
    _: Admin,
    Path(id): Path<Uuid>,
    Json(b): Json<BalanceAdd>,
) -> ApiResult {
    let cmd = BillingCommand::AddBalance {
        amount_micros: Micros(b.amount_micros),
        at: Utc::now(),
    };
    account_command(&s, id, cmd).await
}

/// `PUT /v1.0/customers/{id}/billing_account` body.
#[derive(Deserialize)]
pub struct SetRate {
    /// The new rate (the billing account checks the range).
    pub rate_micros_per_minute: i64,
}

/// `PUT /v1.0/customers/{id}/billing_account` (platform admin): the per-minute rate.
pub async fn set_rate(
    State(s): State<Arc<CmdState>>,
    _: Admin,
    Path(id): Path<Uuid>,
    Json(b): Json<SetRate>,
) -> ApiResult {
    let cmd = BillingCommand::SetRate {
        rate_micros_per_minute: Micros(b.rate_micros_per_minute),
        at: Utc::now(),
    };
    account_command(&s, id, cmd).await
}

async fn account_command(s: &CmdState, customer: Uuid, cmd: BillingCommand) -> ApiResult {
    let customer = CustomerId(customer);
    let acting = acting(&Caller::Admin, customer);
    let account = s
        .app
        .update_as_platform::<BillingAccount>(&acting, customer.as_uuid(), cmd)
        .await?;
    Ok(Json(account.view()))
}
