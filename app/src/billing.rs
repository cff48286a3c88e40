//! The funds check: a customer whose balance cannot cover one minute of a call cannot start one
//! (the command API answers 402, the campaign dialer does not dial).
//!
//! The check reads the committed balance, so it was never exact against what commits
//! meanwhile: concurrent calls of one customer all pass on the same balance, and a call's
//! charge commits after its hangup. A passed check is therefore kept for a short while
//! ([`crate::funds::FUNDS_FRESH`] by default, `VBIN_FUNDS_CHECK_FRESH_MS`) and reused while
//! no change of the customer's billing account has been committed through this process
//! ([`vbin_eventlog::PgEventRepository::balance_epoch`]): a top-up, a rate change or a
//! charge made here is seen at once, one made by another process within that bound. A
//! refusal is never kept, so a top-up is seen at the next call. Under load this removes the
//! one statement every `POST /calls` made besides its append.

use crate::{App, AppError};
use sqlx::PgPool;
use std::time::Instant;
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
        // The epoch and the instant before the read: a change committed after them makes the
        // kept check stale (epoch), and its age counts from before the read.
        let epoch = self.executor.repo().balance_epoch(customer.as_uuid());
        if self.funds_checks.fresh(customer, epoch) {
            return Ok(());
        }
        let at = Instant::now();
        if can_start_call(&self.pool, customer).await? {
            self.funds_checks.passed(customer, epoch, at);
            Ok(())
        } else {
            Err(AppError::PaymentRequired)
        }
    }
}
