//! The BillingAccount aggregate: a customer's balance, its per-minute rate, and the charges
//! for answered calls. Its id is the customer's id (one account per customer).

use crate::{DomainError, ResourceView};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;
use vbin_event_schema::{BillingEvent, BillingId, CustomerId, Micros};

/// Default price of one started minute of an answered call (1 cent).
pub const DEFAULT_RATE_MICROS_PER_MINUTE: i64 = 10_000;

/// Largest single top-up and largest balance (10 million USD): keeps sums far from overflow.
pub const MAX_MICROS: i64 = 10_000_000_000_000;

/// Commands a billing account accepts.
#[derive(Clone, Debug, PartialEq)]
pub enum BillingCommand {
    /// Open the account.
    Open {
        /// Owner (and account id).
        customer_id: CustomerId,
        /// Opening balance.
        balance_micros: Micros,
        /// Per-minute rate.
        rate_micros_per_minute: Micros,
        /// When.
        at: DateTime<Utc>,
    },
    /// Add money.
    AddBalance {
        /// Amount (> 0).
        amount_micros: Micros,
        /// When.
        at: DateTime<Utc>,
    },
    /// Change the per-minute rate.
    SetRate {
        /// New rate (>= 0).
        rate_micros_per_minute: Micros,
        /// When.
        at: DateTime<Utc>,
    },
    /// Charge an answered call of `duration_secs` at the current rate. Exactly-once per call
    /// is the caller's job (the billing process manager sends it with a once-key).
    ChargeCall {
        /// The billing record's id.
        billing_id: BillingId,
        /// The call.
        call_id: Uuid,
        /// Whole seconds from answer to hangup.
        duration_secs: u64,
        /// When.
        at: DateTime<Utc>,
    },
    /// Several [`BillingCommand::ChargeCall`]s in one command (the charges that waited while
    /// the account was busy): the same events as one by one, in order.
    ChargeCalls {
        /// `ChargeCall` commands only.
        charges: Vec<BillingCommand>,
    },
}

/// Started minutes of an answered call: at least one, a partial minute counts whole.
pub fn billable_minutes(duration_secs: u64) -> u64 {
    duration_secs.div_ceil(60).max(1)
}

/// A billing account's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BillingAccount {
    /// Owner; None until opened.
    pub customer_id: Option<CustomerId>,
    /// Current balance (may be negative after charges).
    pub balance_micros: Micros,
    /// Price of a started minute.
    pub rate_micros_per_minute: Micros,
    /// Opened.
    pub tm_create: Option<DateTime<Utc>>,
    /// Last change.
    pub tm_update: Option<DateTime<Utc>>,
}

impl BillingAccount {
    /// The account as the API shows it.
    pub fn view(&self) -> Value {
        json!({
            "id": self.customer_id,
            "type": "billing_account",
            "customer_id": self.customer_id,
            "balance_micros": self.balance_micros,
            "rate_micros_per_minute": self.rate_micros_per_minute,
            "tm_create": self.tm_create,
            "tm_update": self.tm_update,
        })
    }

    /// Whether the balance covers one minute of a call (new calls are refused otherwise).
    pub fn covers_one_minute(&self) -> bool {
        self.customer_id.is_some() && self.balance_micros.0 >= self.rate_micros_per_minute.0
    }

    fn decide(&self, command: BillingCommand) -> Result<Vec<BillingEvent>, DomainError> {
        if let BillingCommand::Open {
            customer_id,
            balance_micros,
            rate_micros_per_minute,
            at,
        } = command
        {
            if self.customer_id.is_some() {
                return Err(DomainError::AlreadyExists(
                    "billing account exists".to_string(),
                ));
            }
            check_amount("balance_micros", balance_micros, 0)?;
            check_amount("rate_micros_per_minute", rate_micros_per_minute, 0)?;
            return Ok(vec![BillingEvent::BillingAccountCreated {
                customer_id,
                balance_micros,
                rate_micros_per_minute,
                at,
            }]);
        }
        if self.customer_id.is_none() {
            return Err(DomainError::NotFound("billing account"));
        }
        if let BillingCommand::ChargeCalls { charges } = command {
            let mut state = self.clone();
            let mut events = Vec::new();
            for charge in charges {
                if !matches!(charge, BillingCommand::ChargeCall { .. }) {
                    return Err(DomainError::Invalid(
                        "ChargeCalls takes ChargeCall commands only".into(),
                    ));
                }
                for e in state.decide(charge)? {
                    state.fold(e.clone());
                    events.push(e);
                }
            }
            return Ok(events);
        }
        Ok(vec![match command {
            BillingCommand::ChargeCalls { .. } => unreachable!("handled above"),
            BillingCommand::Open { .. } => unreachable!("handled above"),
            BillingCommand::AddBalance { amount_micros, at } => {
                check_amount("amount_micros", amount_micros, 1)?;
                let balance = self.balance_micros.0 + amount_micros.0;
                if balance > MAX_MICROS {
                    return Err(DomainError::Invalid(format!(
                        "the balance may not exceed {MAX_MICROS} micros"
                    )));
                }
                BillingEvent::BillingAccountBalanceAdded {
                    amount_micros,
                    balance_micros: Micros(balance),
                    at,
                }
            }
            BillingCommand::SetRate {
                rate_micros_per_minute,
                at,
            } => {
                check_amount("rate_micros_per_minute", rate_micros_per_minute, 0)?;
                BillingEvent::BillingAccountRateChanged {
                    rate_micros_per_minute,
                    at,
                }
            }
            BillingCommand::ChargeCall {
                billing_id,
                call_id,
                duration_secs,
                at,
            } => {
                let units = billable_minutes(duration_secs);
                let rate = self.rate_micros_per_minute;
                // Saturating: a call cannot last long enough to overflow, but never panic.
                let amount = (units as i64).saturating_mul(rate.0);
                BillingEvent::BillingRecorded {
                    billing_id,
                    reference_type: "call".to_string(),
                    reference_id: call_id,
                    billable_units: units,
                    rate_micros_per_unit: rate,
                    amount_micros: Micros(amount),
                    balance_after_micros: Micros(self.balance_micros.0.saturating_sub(amount)),
                    at,
                }
            }
        }])
    }
}

fn check_amount(field: &str, v: Micros, min: i64) -> Result<(), DomainError> {
    if v.0 < min || v.0 > MAX_MICROS {
        return Err(DomainError::Invalid(format!(
            "{field} must be from {min} to {MAX_MICROS}"
        )));
    }
    Ok(())
}

impl BillingAccount {
    fn fold(&mut self, event: BillingEvent) {
        match event {
            BillingEvent::BillingAccountCreated {
                customer_id,
                balance_micros,
                rate_micros_per_minute,
                at,
            } => {
                *self = BillingAccount {
                    customer_id: Some(customer_id),
                    balance_micros,
                    rate_micros_per_minute,
                    tm_create: Some(at),
                    tm_update: Some(at),
                }
            }
            BillingEvent::BillingAccountBalanceAdded {
                balance_micros, at, ..
            } => {
                self.balance_micros = balance_micros;
                self.tm_update = Some(at);
            }
            BillingEvent::BillingAccountRateChanged {
                rate_micros_per_minute,
                at,
            } => {
                self.rate_micros_per_minute = rate_micros_per_minute;
                self.tm_update = Some(at);
            }
            BillingEvent::BillingRecorded {
                balance_after_micros,
                at,
                ..
            } => {
                self.balance_micros = balance_after_micros;
                self.tm_update = Some(at);
            }
        }
    }
}

decided_aggregate!(BillingAccount, BillingCommand, BillingEvent);

/// The API view of a billing record, from its event.
pub fn billing_view(customer_id: Option<CustomerId>, event: &BillingEvent) -> Option<Value> {
    let BillingEvent::BillingRecorded {
        billing_id,
        reference_type,
        reference_id,
        billable_units,
        rate_micros_per_unit,
        amount_micros,
        balance_after_micros,
        at,
    } = event
    else {
        return None;
    };
    Some(json!({
        "id": billing_id,
        "type": "billing",
        "customer_id": customer_id,
        "reference_type": reference_type,
        "reference_id": reference_id,
        "billable_units": billable_units,
        "rate_micros_per_unit": rate_micros_per_unit,
        "amount_micros": amount_micros,
        "balance_after_micros": balance_after_micros,
        "tm_create": at,
    }))
}

impl ResourceView for BillingAccount {
    /// `billing_recorded` shows the billing record (what its webhook carries); the other
    /// events show the account.
    fn resource_after(&self, event: &BillingEvent) -> Value {
        billing_view(self.customer_id, event).unwrap_or_else(|| self.view())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::given_nothing;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    #[test]
    fn minutes_are_started_minutes() {
        assert_eq!(billable_minutes(0), 1);
        assert_eq!(billable_minutes(1), 1);
        assert_eq!(billable_minutes(60), 1);
        assert_eq!(billable_minutes(61), 2);
        assert_eq!(billable_minutes(3600), 60);
    }

    #[test]
    fn charges_deduct_and_may_go_negative() {
        let mut a = given_nothing::<BillingAccount>();
        assert!(!a.covers_one_minute());
        a.when(BillingCommand::AddBalance {
            amount_micros: Micros(1),
            at: t(0),
        })
        .then_error(DomainError::NotFound("billing account"));
        a.when(BillingCommand::Open {
            customer_id: CustomerId::new(),
            balance_micros: Micros(15_000),
            rate_micros_per_minute: Micros(DEFAULT_RATE_MICROS_PER_MINUTE),
            at: t(0),
        })
        .then_ok();
        assert!(a.covers_one_minute());
        let evs = a
            .when(BillingCommand::ChargeCall {
                billing_id: BillingId::new(),
                call_id: Uuid::now_v7(),
                duration_secs: 61,
                at: t(70),
            })
            .then_ok();
        assert!(matches!(
            evs[0],
            BillingEvent::BillingRecorded {
                billable_units: 2,
                amount_micros: Micros(20_000),
                balance_after_micros: Micros(-5_000),
                ..
            }
        ));
        assert_eq!(a.balance_micros, Micros(-5_000));
        assert!(!a.covers_one_minute());
        let view = a.resource_after(&evs[0]);
        assert_eq!(view["type"], "billing");
        assert_eq!(view["balance_after_micros"], -5_000);
        for bad in [0, -5, MAX_MICROS + 1] {
            assert!(matches!(
                a.when(BillingCommand::AddBalance {
                    amount_micros: Micros(bad),
                    at: t(80)
                })
                .then_refused(),
                DomainError::Invalid(_)
            ));
        }
        a.when(BillingCommand::AddBalance {
            amount_micros: Micros(10_000),
            at: t(90),
        })
        .then_ok();
        assert_eq!(a.balance_micros, Micros(5_000));
        assert_eq!(a.view()["type"], "billing_account");
    }

    /// Charges made together give the events of the same charges one by one.
    #[test]
    fn charges_made_together_give_the_events_of_one_by_one() {
        let mut account = BillingAccount::default();
        for e in account
            .decide(BillingCommand::Open {
                customer_id: CustomerId::new(),
                balance_micros: Micros(100_000),
                rate_micros_per_minute: Micros(6_000),
                at: t(0),
            })
            .unwrap()
        {
            account.fold(e);
        }
        let charge = |secs| BillingCommand::ChargeCall {
            billing_id: BillingId::new(),
            call_id: Uuid::now_v7(),
            duration_secs: secs,
            at: t(100),
        };
        let charges = vec![charge(10), charge(61), charge(3600)];
        let mut single = account.clone();
        let mut expected = vec![];
        for c in charges.clone() {
            for e in single.decide(c).unwrap() {
                single.fold(e.clone());
                expected.push(e);
            }
        }
        let together = account
            .decide(BillingCommand::ChargeCalls { charges })
            .unwrap();
        assert_eq!(together, expected);
        let mut after = account.clone();
        for e in together {
            after.fold(e);
        }
        assert_eq!(after, single);
        assert_eq!(after.balance_micros, Micros(100_000 - 6_000 * (1 + 2 + 60)));
        assert!(account
            .decide(BillingCommand::ChargeCalls {
                charges: vec![BillingCommand::SetRate {
                    rate_micros_per_minute: Micros(1),
                    at: t(1)
                }]
            })
            .is_err());
    }
}
