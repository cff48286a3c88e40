//! The call dialer process manager: a durable JetStream consumer that hands new calls to the
//! carrier and tells it when our side hangs up.

use crate::{Carrier, CarrierError, DialRequest};
use serde_json::{Map, Value};
use std::sync::Arc;
use vbin_bus::{run_consumer, Bus, ConsumerSpec};
use vbin_event_schema::flow::SandboxScript;
use vbin_event_schema::views::CallView;
use vbin_event_schema::{
    CallDirection, CallEvent, CallId, CustomerId, HangupBy, PublishedEvent, TrunkId,
};

/// Durable consumer name.
pub const CONSUMER: &str = "carrier-dialer";

/// The carriers of a process: the sandbox for calls without a trunk, the SIP carrier for
/// calls through one.
#[derive(Clone)]
pub struct Carriers {
    /// The simulated network (calls without a trunk).
    pub sandbox: Arc<dyn Carrier>,
    /// The SIP carrier, if this process runs one.
    pub sip: Option<Arc<dyn Carrier>>,
}

impl Carriers {
    /// The carrier of a call through `trunk` (none: the sandbox).
    fn of(&self, trunk: Option<TrunkId>) -> Result<&Arc<dyn Carrier>, CarrierError> {
        match trunk {
            None => Ok(&self.sandbox),
            Some(_) => self
                .sip
                .as_ref()
                .ok_or_else(|| CarrierError("this process runs no SIP carrier".into())),
        }
    }
}

/// Runs the dialer until `shutdown`.
pub async fn run(bus: Bus, carriers: Carriers, shutdown: impl std::future::Future<Output = ()>) {
    // Lanes keep each call's events in order (created before hungup).
    let spec = ConsumerSpec::for_events_of::<CallEvent>(
        CONSUMER,
        &[
            CallEvent::CALL_CREATED,
            CallEvent::CALL_PROGRESSING,
            CallEvent::CALL_HUNGUP,
        ],
    )
    .lanes(8);
    run_consumer(bus, spec, |e| handle(carriers.clone(), e), shutdown).await
}

/// How long the far end talks: its script's hangup step, else `variables.talk_seconds`
/// (default 2 s).
fn talk_ms(variables: &Map<String, Value>, sandbox: Option<&SandboxScript>) -> u64 {
    let talk_seconds = variables
        .get("talk_seconds")
        .and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .unwrap_or(2);
    sandbox
        .and_then(SandboxScript::hangup_at_ms)
        .map(u64::from)
        .unwrap_or(talk_seconds * 1000)
}

async fn handle(carriers: Carriers, e: PublishedEvent) -> Result<(), CarrierError> {
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
            direction,
            trunk_id,
            ..
        } => {
            let req = DialRequest {
                call_id,
                customer_id: CustomerId(e.customer_id),
                source,
                destination,
                dial_timeout_ms,
                talk_ms: talk_ms(&variables, sandbox.as_ref()),
                trunk_id,
            };
            let carrier = carriers.of(trunk_id)?;
            match direction {
                CallDirection::Outgoing => carrier.dial(&req).await,
                CallDirection::Incoming => carrier.arrived(&req).await,
            }
        }
        CallEvent::CallProgressing { .. } => {
            let view = e
                .view::<CallView>()
                .map_err(|err| CarrierError(format!("bad event: {err}")))?;
            if view.direction != CallDirection::Incoming {
                return Ok(());
            }
            let (Some(source), Some(destination)) = (view.source, view.destination) else {
                return Ok(());
            };
            let req = DialRequest {
                call_id: CallId(e.aggregate_id),
                customer_id: CustomerId(e.customer_id),
                source,
                destination,
                dial_timeout_ms: 0,
                talk_ms: talk_ms(&view.variables, view.sandbox.as_ref()),
                trunk_id: view.trunk_id,
            };
            carriers.of(view.trunk_id)?.answered(&req).await
        }
        CallEvent::CallHungup {
            hangup_by: HangupBy::Local,
            ..
        } => {
            let view = e
                .view::<CallView>()
                .map_err(|err| CarrierError(format!("bad event: {err}")))?;
            carriers
                .of(view.trunk_id)?
                .hangup(CallId(e.aggregate_id))
                .await
        }
        _ => Ok(()),
    }
}
