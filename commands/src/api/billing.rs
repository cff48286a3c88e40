//! Billing commands: top-ups and rates (platform admin), and the balance check that refuses
//! new calls with 402.

use super::error::ApiError;
use super::extract::{Admin, Json, Path};
use super::AppState;
use crate::auth::Caller;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use serde::Deserialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;
use vbin_domain::{BillingAccount, BillingCommand};
use vbin_event_schema::{CustomerId, Micros};

/// Whether `customer`'s balance covers one minute at its rate (from the inline balance table,
/// exact at commit). A customer without an account cannot call.
pub async fn can_start_call(pool: &PgPool, customer: CustomerId) -> Result<bool, sqlx::Error> {
    let ok: Option<bool> = sqlx::query_scalar(
        "SELECT balance_micros >= rate_micros_per_minute FROM billing_balances WHERE customer_id = $1",
    )
    .bind(customer.as_uuid())
    .fetch_optional(pool)
    .await?;
    Ok(ok.unwrap_or(false))
}

/// 402 unless the balance covers one minute.
pub async fn require_funds(pool: &PgPool, customer: CustomerId) -> Result<(), ApiError> {
    if can_start_call(pool, customer).await? {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::PAYMENT_REQUIRED,
        "payment_required",
        "the balance cannot cover one minute of a call; top up the billing account",
    ))
}

/// `POST /v1.0/customers/{id}/balance_add` body.
#[derive(Deserialize)]
pub struct BalanceAdd {
    /// Micros to add (the billing account checks the range).
    pub amount_micros: i64,
}

/// `POST /v1.0/customers/{id}/balance_add` (platform admin) -> the billing account.
pub async fn balance_add(
    State(s): State<AppState>,
    _: Admin,
    Path(id): Path<Uuid>,
    Json(b): Json<BalanceAdd>,
) -> Result<Json<Value>, ApiError> {
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
    State(s): State<AppState>,
    _: Admin,
    Path(id): Path<Uuid>,
    Json(b): Json<SetRate>,
) -> Result<Json<Value>, ApiError> {
    let cmd = BillingCommand::SetRate {
        rate_micros_per_minute: Micros(b.rate_micros_per_minute),
        at: Utc::now(),
    };
    account_command(&s, id, cmd).await
}

async fn account_command(
    s: &AppState,
    customer: Uuid,
    cmd: BillingCommand,
) -> Result<Json<Value>, ApiError> {
    let customer = CustomerId(customer);
    let meta = s.meta(&Caller::Admin, customer);
    let done = s
        .executor
        .execute::<BillingAccount>(customer.as_uuid(), customer, None, cmd, &meta)
        .await?;
    Ok(Json(done.state.view()))
}
