//! The process managers' one durable consumer of call events, `process-calls`
//! ([`vbin_bus::Shared`]).
//!
//! Chains, queues, what a call had running, billing, campaign results and (added by the
//! platform, another crate in the same part) the flow engine each took some call event types
//! from a consumer of its own, so each was sent every call event and skipped most: six
//! deliveries and acks of every call event. Now each call event is delivered once and handed
//! to the routes taking its type; an event one route failed with comes back to that route
//! alone (in this process). Each route keeps its name: its counters, its errors, the actor of
//! its commands.

use crate::campaign::Campaigns;
use crate::queue::Queues;
use vbin_app::Executor;
use vbin_bus::Shared;
use vbin_event_schema::CallEvent;

/// The durable consumer's name.
pub const CONSUMER: &str = "process-calls";

/// The consumer with the process managers' routes. `campaigns` and `queues` are the handles
/// their `run` gets too (a result wakes the campaign dialer, a call leaving a queue its
/// dispatcher). It takes over from the routes' own consumers of before (and from those the
/// hangups' had replaced).
pub fn consumer(
    pool: &sqlx::PgPool,
    executor: &Executor,
    campaigns: &Campaigns,
    queues: &Queues,
) -> Shared {
    Shared::new::<CallEvent>(CONSUMER)
        .replacing(&crate::hangups::REPLACED)
        .with_route(crate::chain::route(executor.clone()))
        .with_route(queues.calls_route())
        .with_route(crate::hangups::route(pool.clone(), executor.clone()))
        .with_route(crate::billing::route(executor.clone()))
        .with_route(campaigns.results_route())
}
