//! Billing of ended calls: on `call_hungup` of an answered call, charge the customer's billing
//! account for the started minutes at its rate, once per call (once-key `billing:<call id>`).

use crate::{applied, ProcessError};
use chrono::Utc;
use vbin_app::{ExecError, Executor};
use vbin_bus::{run_consumer, Bus, ConsumerSpec};
use vbin_domain::{BillingAccount, BillingCommand, DomainError};
use vbin_event_schema::{BillingId, CallEvent, CallStatus, CustomerId, PublishedEvent};
use vbin_eventlog::CommandMeta;

/// Durable consumer name.
pub const CONSUMER: &str = "billing-charger";

/// Runs the charger until `shutdown`.
pub async fn run(bus: Bus, executor: Executor, shutdown: impl std::future::Future<Output = ()>) {
    let spec =
        ConsumerSpec::for_events_of::<CallEvent>(CONSUMER, &[CallEvent::CALL_HUNGUP]).lanes(8);
    run_consumer(bus, spec, |e| charge(executor.clone(), e), shutdown).await
}

/// Charges the call that `event` (a `call_hungup`) ended, if it was answered.
pub async fn charge(executor: Executor, event: PublishedEvent) -> Result<(), ProcessError> {
    let CallEvent::CallHungup {
        status, duration, ..
    } = event.decode()?
    else {
        return Ok(());
    };
    if status != CallStatus::Completed {
        return Ok(()); // unanswered calls cost nothing
    }
    let call_id = event.aggregate_id;
    let customer = CustomerId(event.customer_id);
    let meta = CommandMeta::caused_by("billing", event.event_id, event.correlation_id())
        .once(customer.as_uuid(), format!("billing:{call_id}"));
    let cmd = BillingCommand::ChargeCall {
        billing_id: BillingId::new(),
        call_id,
        duration_secs: duration,
        at: Utc::now(),
    };
    match applied(
        executor
            .execute::<BillingAccount>(customer.as_uuid(), customer, None, cmd, &meta)
            .await,
    ) {
        Ok(Some(_)) => {
            metrics::counter!("vbin_billing_charges_total").increment(1);
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(ExecError::Domain(DomainError::NotFound(_))) => {
            tracing::error!(%customer, %call_id, "answered call of a customer without a billing account; not charged");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
