//! Billing of ended calls: on `call_hungup` of an answered call, charge the customer's billing
//! account for the started minutes at its rate, once per call (once-key `billing:<call id>`).
//! A customer's charges that arrive while its account is busy are made together, in one
//! command (see [`vbin_app::together`]): the account is one aggregate, and one commit per call
//! would cap a busy customer's calls.

use crate::ProcessError;
use chrono::Utc;
use vbin_app::{ExecError, Executor};
use vbin_bus::Route;
use vbin_domain::{BillingAccount, BillingCommand, DomainError};
use vbin_event_schema::{BillingId, CallEvent, CustomerId, PublishedEvent};
use vbin_eventlog::CommandMeta;

use vbin_app::together::Together;

/// The route's name (its own durable consumer's before [`crate::calls`]).
pub const CONSUMER: &str = "billing-charger";

/// Hangups charged at once. A customer's account takes one command per round of the charges
/// waiting for it, so a round holds at most this many: with 8 lanes the charger made rounds of
/// at most 8 charges and fell up to 39,000 hangups behind a 100,000-target campaign.
const LANES: usize = 256;

/// The charger's route of the process managers' call consumer ([`crate::calls`]).
pub fn route(executor: Executor) -> Route {
    let waiting: Together<CustomerId, (BillingCommand, CommandMeta)> = Together::default();
    Route::of::<CallEvent, _, _, _>(CONSUMER, &[CallEvent::CALL_HUNGUP], move |e| {
        charge(executor.clone(), waiting.clone(), e)
    })
    .lanes(LANES)
}

/// Charges the call that `event` (a `call_hungup`) ended, if it was answered.
async fn charge(
    executor: Executor,
    waiting: Together<CustomerId, (BillingCommand, CommandMeta)>,
    event: PublishedEvent,
) -> Result<(), ProcessError> {
    let CallEvent::CallHungup {
        status, duration, ..
    } = event.decode()?
    else {
        return Ok(());
    };
    if !status.was_answered() {
        return Ok(()); // unanswered calls cost nothing
    }
    let customer = CustomerId(event.customer_id);
    let meta = CommandMeta::caused_by("billing", event.event_id, &event.correlation_id());
    let cmd = BillingCommand::ChargeCall {
        billing_id: BillingId::new(),
        call_id: event.aggregate_id,
        duration_secs: duration,
        at: Utc::now(),
    };
    waiting
        .submit(customer, (cmd, meta), move |batch| {
            let executor = executor.clone();
            async move { charge_together(&executor, customer, batch).await }
        })
        .await
        .map_err(Into::into)
}

fn once_key(cmd: &BillingCommand) -> String {
    match cmd {
        BillingCommand::ChargeCall { call_id, .. } => format!("billing:{call_id}"),
        _ => String::new(),
    }
}

/// Makes `charges` in one command (each call at most once: its once-key), or one by one if
/// one of them was made before (a redelivered hangup). The events carry the first charge's
/// metadata (one command, one metadata).
async fn charge_together(
    executor: &Executor,
    customer: CustomerId,
    charges: Vec<(BillingCommand, CommandMeta)>,
) -> Result<(), ProcessError> {
    let id = customer.as_uuid();
    let (cmd, meta) = match charges.as_slice() {
        [(cmd, meta)] => (cmd.clone(), meta.clone().once(id, once_key(cmd))),
        _ => (
            BillingCommand::ChargeCalls {
                charges: charges.iter().map(|(c, _)| c.clone()).collect(),
            },
            charges[0]
                .1
                .clone()
                .once_all(id, charges.iter().map(|(c, _)| once_key(c)).collect()),
        ),
    };
    match executor
        .execute::<BillingAccount>(id, customer, None, cmd, &meta)
        .await
    {
        Ok(_) => {
            metrics::counter!("vbin_billing_charges_total").increment(charges.len() as u64);
            Ok(())
        }
        Err(ExecError::AlreadyApplied) if charges.len() > 1 => {
            for charge in charges {
                Box::pin(charge_together(executor, customer, vec![charge])).await?;
            }
            Ok(())
        }
        // Made before (a redelivered hangup): nothing to do.
        Err(ExecError::AlreadyApplied) => Ok(()),
        Err(e) => match e {
            ExecError::Domain(DomainError::NotFound(_)) => {
                tracing::error!(%customer, "answered calls of a customer without a billing account; not charged");
                Ok(())
            }
            e => Err(e.into()),
        },
    }
}
