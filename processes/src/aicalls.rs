//! AI conversations end with their call (`aicall-hangups` consumer of `call_hungup`): the
//! media process that ran one ends it too, but if that process died with the call, only this
//! does. The conversations under way come from `aicall_live`, written with their events, so a
//! lagging read model cannot make a hangup miss one. `Terminate` is idempotent.

use crate::{system_meta, ProcessError};
use chrono::Utc;
use vbin_app::Executor;
use vbin_bus::{Bus, ConsumerSpec};
use vbin_domain::{Aicall, AicallCommand};
use vbin_event_schema::{AicallEndReason, CallEvent, CallId, CustomerId, PublishedEvent};

/// Durable consumer of `call_hungup`.
pub const HANGUPS: &str = "aicall-hangups";

/// Runs the consumer until `shutdown`.
pub async fn run(
    pool: sqlx::PgPool,
    executor: Executor,
    bus: Bus,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let mut group = vbin_bus::Group::new(bus);
    group.consumer(
        ConsumerSpec::for_events_of::<CallEvent>(HANGUPS, &[CallEvent::CALL_HUNGUP]).lanes(8),
        |e| on_hangup(&pool, &executor, e),
    );
    group.run(shutdown).await;
}

/// Ends the conversations of the call `e` (a `call_hungup`) ended.
pub async fn on_hangup(
    pool: &sqlx::PgPool,
    executor: &Executor,
    e: PublishedEvent,
) -> Result<(), ProcessError> {
    let live = vbin_app::ai::live_on_call(pool, CallId(e.aggregate_id)).await?;
    let customer = CustomerId(e.customer_id);
    let meta = system_meta(HANGUPS, e.event_id, e.correlation_id(), customer);
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
