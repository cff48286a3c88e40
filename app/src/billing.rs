//! The funds check: a customer whose balance cannot cover one minute of a call cannot start one
//! (the command API answers 402, the campaign dialer does not dial).

use crate::{App, AppError};
use sqlx::PgPool;
use vbin_event_schema::CustomerId;

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

impl App {
    /// [`AppError::PaymentRequired`] unless the balance covers one minute.
    pub async fn require_funds(&self, customer: CustomerId) -> Result<(), AppError> {
        if can_start_call(&self.pool, customer).await? {
            Ok(())
        } else {
            Err(AppError::PaymentRequired)
        }
    }
}
