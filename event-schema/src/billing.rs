//! Events of the BillingAccount aggregate (aggregate type `billing_account`, one per customer,
//! its id is the customer's id).

use crate::types::*;
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Everything that happens to a customer's balance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BillingEvent {
    /// The account was opened with the customer.
    BillingAccountCreated {
        /// The owner (and the account's id).
        customer_id: CustomerId,
        /// Opening balance.
        balance_micros: Micros,
        /// Price of one started minute of an answered call.
        rate_micros_per_minute: Micros,
        /// When.
        at: DateTime<Utc>,
    },
    /// A platform admin added money.
    BillingAccountBalanceAdded {
        /// Added (positive).
        amount_micros: Micros,
        /// Balance afterwards.
        balance_micros: Micros,
        /// When.
        at: DateTime<Utc>,
    },
    /// A platform admin changed the per-minute rate.
    BillingAccountRateChanged {
        /// The new rate.
        rate_micros_per_minute: Micros,
        /// When.
        at: DateTime<Utc>,
    },
    /// A call was charged.
    BillingRecorded {
        /// The billing record.
        billing_id: BillingId,
        /// What was billed (`call`).
        reference_type: String,
        /// The call.
        reference_id: Uuid,
        /// Started minutes.
        billable_units: u64,
        /// Price per unit.
        rate_micros_per_unit: Micros,
        /// units x rate.
        amount_micros: Micros,
        /// Balance after the charge (may be negative).
        balance_after_micros: Micros,
        /// When.
        at: DateTime<Utc>,
    },
}

events!(BillingEvent in "billing_account" {
    BillingAccountCreated => BILLING_ACCOUNT_CREATED = "billing_account_created",
    BillingAccountBalanceAdded => BILLING_ACCOUNT_BALANCE_ADDED = "billing_account_balance_added",
    BillingAccountRateChanged => BILLING_ACCOUNT_RATE_CHANGED = "billing_account_rate_changed",
    BillingRecorded => BILLING_RECORDED = "billing_recorded",
});
version_1!(BillingEvent);
