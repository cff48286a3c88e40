//! AI conversations end with their call (part of the `call-hangups` consumer, see
//! [`crate::hangups`]): the media process that ran one ends it too, but if that process died
//! with the call, only this does. The conversations under way come from `aicall_live`,
//! written with their events, so a lagging read model cannot make a hangup miss one.
//! `Terminate` is idempotent.

use crate::{system_meta, ProcessError};
use chrono::Utc;
use vbin_app::Executor;
use vbin_domain::{Aicall, AicallCommand};
use vbin_event_schema::{AicallEndReason, AicallId, CustomerId, PublishedEvent};

/// The part's name: the actor of the commands it issues (`system:aicall-hangups`).
pub const HANGUPS: &str = "aicall-hangups";

/// Ends the conversations `live` of the call `e` (a `call_hungup`) ended.
pub async fn on_hangup(
    executor: &Executor,
    e: &PublishedEvent,
    live: &[AicallId],
) -> Result<(), ProcessError> {
    let customer = CustomerId(e.customer_id);
    let meta = system_meta(HANGUPS, e.event_id, &e.correlation_id(), customer);
    for id in live {
        let cmd = AicallCommand::Terminate {
            reason: AicallEndReason::CallEnded,
            detail: None,
            at: Utc::now(),
        };
        match executor
            .execute::<Aicall>(id.as_uuid(), customer, Some(customer), cmd, &meta)
            .await
        {
            Ok(_) | Err(vbin_app::ExecError::Domain(vbin_domain::DomainError::NotFound(_))) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}
