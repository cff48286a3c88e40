//! The funds check: a customer whose balance cannot cover one minute of a call cannot start one
//! (the command API answers 402, the campaign dialer does not dial).
//!
//! The check reads the committed balance, so it was never exact against what commits
//! meanwhile: concurrent calls of one customer all pass on the same balance, and a call's
//! charge commits after its hangup. A passed check is therefore kept for a short while
//! ([`FUNDS_FRESH`] by default, `VBIN_FUNDS_CHECK_FRESH_MS`) and reused while no change of the
//! customer's billing account has been committed through this process
//! ([`vbin_eventlog::PgEventRepository::balance_epoch`]): a top-up, a rate change or a charge
//! made here is seen at once, one made by another process within that bound. A refusal is
//! never kept, so a top-up is seen at the next call. Under load this removes the one
//! statement every `POST /calls` made besides its append.

use crate::{App, AppError};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use vbin_event_schema::CustomerId;

/// How long a passed funds check is reused by default (see the module's documentation).
pub const FUNDS_FRESH: Duration = Duration::from_millis(100);

/// Customers kept before the stale ones are dropped.
const KEPT: usize = 10_000;

/// Passed funds checks: when, and at which balance epoch.
pub struct PassedChecks {
    fresh_for: Duration,
    passed: Mutex<HashMap<CustomerId, (Instant, u64)>>,
}

impl Default for PassedChecks {
    fn default() -> Self {
        Self::new(FUNDS_FRESH)
    }
}

impl PassedChecks {
    /// Checks reused for `fresh_for` (zero: never reused).
    pub fn new(fresh_for: Duration) -> Self {
        Self {
            fresh_for,
            passed: Mutex::default(),
        }
    }

    /// Whether `customer` passed a check within the freshness bound at balance epoch `epoch`.
    fn fresh(&self, customer: CustomerId, epoch: u64) -> bool {
        self.passed
            .lock()
            .expect("funds checks")
            .get(&customer)
            .is_some_and(|(at, e)| *e == epoch && at.elapsed() < self.fresh_for)
    }

    /// Keeps a check `customer` passed, reading the balance after epoch `epoch`.
    fn passed(&self, customer: CustomerId, epoch: u64, at: Instant) {
        if self.fresh_for.is_zero() {
            return;
        }
        let mut m = self.passed.lock().expect("funds checks");
        if m.len() >= KEPT {
            m.retain(|_, (t, _)| t.elapsed() < self.fresh_for);
        }
        m.insert(customer, (at, epoch));
    }
}

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
