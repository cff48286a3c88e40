//! Passed funds checks kept for reuse (see [`crate::billing`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use vbin_event_schema::CustomerId;

/// How long a passed funds check is reused by default (see [`crate::billing`]).
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
    pub(crate) fn fresh(&self, customer: CustomerId, epoch: u64) -> bool {
        self.passed
            .lock()
            .expect("funds checks")
            .get(&customer)
            .is_some_and(|(at, e)| *e == epoch && at.elapsed() < self.fresh_for)
    }

    /// Keeps a check `customer` passed, reading the balance after epoch `epoch`.
    pub(crate) fn passed(&self, customer: CustomerId, epoch: u64, at: Instant) {
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
