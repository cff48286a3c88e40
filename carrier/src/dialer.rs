//! The call dialer process manager: a durable JetStream consumer that hands new calls to the
//! carrier and tells it when our side hangs up.

use crate::{Carrier, CarrierError, DialRequest};
use std::sync::Arc;
use vbin_bus::{run_consumer, Bus, ConsumerSpec};
use vbin_event_schema::{CallEvent, CallId, CustomerId, HangupBy, PublishedEvent};

/// Durable consumer name.
pub const CONSUMER: &str = "carrier-dialer";

/// Runs the dialer until `shutdown`.
pub async fn run(
    bus: Bus,
    carrier: Arc<dyn Carrier>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    // Lanes keep each call's events in order (created before hungup).
    let spec = ConsumerSpec::for_events_of::<CallEvent>(
        CONSUMER,
        &[CallEvent::CALL_CREATED, CallEvent::CALL_HUNGUP],
    )
    .lanes(8);
    run_consumer(bus, spec, |e| handle(carrier.clone(), e), shutdown).await
}

async fn handle(carrier: Arc<dyn Carrier>, e: PublishedEvent) -> Result<(), CarrierError> {
    let event = e
        .decode::<CallEvent>()
        .map_err(|err| CarrierError(format!("bad event: {err}")))?;
    match event {
        CallEvent::CallCreated {
            call_id,
            source,
            destination,
            variables,
            dial_timeout_ms,
            sandbox,
            ..
        } => {
            let talk_seconds = variables
                .get("talk_seconds")
                .and_then(|v| {
                    v.as_u64()
                        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                })
                .unwrap_or(2);
            // A script's hangup step ends the call; a script without one talks as long as
            // talk_seconds says.
            let talk_ms = sandbox
                .as_ref()
                .and_then(|s| s.hangup_at_ms())
                .map(u64::from)
                .unwrap_or(talk_seconds * 1000);
            let req = DialRequest {
                call_id,
                customer_id: CustomerId(e.customer_id),
                source,
                destination,
                dial_timeout_ms,
                talk_ms,
            };
            carrier.dial(&req).await
        }
        CallEvent::CallHungup {
            hangup_by: HangupBy::Local,
            ..
        } => carrier.hangup(CallId(e.aggregate_id)).await,
        _ => Ok(()),
    }
}
