//! One durable consumer for several handlers ("routes") of one aggregate's events.
//!
//! NATS 2.9 gives a consumer one filter subject, so a handler of a few call event types is
//! sent every call event and skips most of them. Seven such consumers made each call event
//! cost seven deliveries and acks (NATS's CPU and ours, and a task woken for each). A part
//! whose handlers live in one process gives them one [`Shared`] consumer instead: each event
//! is delivered once and handed to every route that takes its type, concurrently.
//!
//! What a route keeps from having had its own consumer:
//! - **Order**: one aggregate's events reach every route in stream order (the consumer's
//!   lanes are by aggregate id, as many as the route wanting the most).
//! - **Retries of its own**: an event is acked when every route that takes it succeeded. If
//!   one fails, the event comes back, and only the routes that have not yet succeeded are run
//!   again in this process. After a restart, or in another instance, they all run again,
//!   which every handler must allow anyway (delivery is at least once).
//! - **Its name**: in its counters (`vbin_consumer_events_total{consumer=<route>}`) and its
//!   errors.
//!
//! What it gives up: a route waits for the slowest route on its lane. Routes that must be
//! redelivered until another process owns the event (the media bridge's second side) keep
//! their own consumer.

use crate::{assert_events_of, run_consumer, ConsumerSpec, Counted};
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use uuid::Uuid;
use vbin_event_schema::{AggregateEvent, PublishedEvent};

type Handler = dyn Fn(PublishedEvent) -> BoxFuture<'static, Result<(), String>> + Send + Sync;

/// One handler of a [`Shared`] consumer: its name, the event types it takes and how many of
/// its events may be handled at once.
pub struct Route {
    name: String,
    aggregate: &'static str,
    event_types: Vec<String>,
    lanes: usize,
    handle: Box<Handler>,
    counted: Counted,
}

impl Route {
    /// A route named `name` (as its own consumer was: it labels its counters and errors) for
    /// the events `event_types` of `E`'s aggregate, handled by `handle`. `Ok` means done;
    /// `Err` that the event must come back to it.
    ///
    /// Panics if a name is not one of `E`'s events, or if there is none (a route of every
    /// event of an aggregate would be sent all of them anyway: give it its own consumer).
    pub fn of<E, H, F, Er>(name: &str, event_types: &[&str], handle: H) -> Self
    where
        E: AggregateEvent,
        H: Fn(PublishedEvent) -> F + Send + Sync + 'static,
        F: Future<Output = Result<(), Er>> + Send + 'static,
        Er: std::fmt::Display,
    {
        assert!(
            !event_types.is_empty(),
            "{name}: a route takes named events"
        );
        assert_events_of::<E>(name, event_types);
        Self {
            name: name.to_string(),
            aggregate: E::AGGREGATE,
            event_types: event_types.iter().map(|t| t.to_string()).collect(),
            lanes: 1,
            handle: Box::new(move |e| {
                let f = handle(e);
                Box::pin(async move { f.await.map_err(|e| e.to_string()) })
            }),
            counted: Counted::new(name),
        }
    }

    /// The same with up to `lanes` of its events handled at once (ordered per aggregate).
    pub fn lanes(mut self, lanes: usize) -> Self {
        self.lanes = lanes.max(1);
        self
    }

    fn takes(&self, event_type: &str) -> bool {
        self.event_types.iter().any(|t| t == event_type)
    }
}

/// A durable consumer of one aggregate's events shared by several [`Route`]s (see the module
/// documentation).
pub struct Shared {
    name: String,
    aggregate: &'static str,
    replaces: Vec<String>,
    routes: Vec<Route>,
}

/// Events some routes have succeeded with and others not, by event id: at most this many are
/// remembered (beyond it the memory is cleared, and their routes all run again: allowed).
const REMEMBERED: usize = 10_000;

impl Shared {
    /// A shared consumer named `name` of `E`'s aggregate's events, without routes yet.
    pub fn new<E: AggregateEvent>(name: &str) -> Self {
        Self {
            name: name.to_string(),
            aggregate: E::AGGREGATE,
            replaces: Vec::new(),
            routes: Vec::new(),
        }
    }

    /// The same, also taking over from the durable consumers `old`
    /// ([`ConsumerSpec::replacing`]). It always takes over from the consumers named as its
    /// routes (their own consumers of before, if any are left): these are for older ones.
    pub fn replacing(mut self, old: &[&str]) -> Self {
        self.replaces.extend(old.iter().map(|n| n.to_string()));
        self
    }

    /// Adds a route. Panics if it is of another aggregate, if its name is taken, or past 64
    /// routes.
    pub fn with_route(mut self, route: Route) -> Self {
        assert_eq!(
            route.aggregate, self.aggregate,
            "{}: route {} is of another aggregate",
            self.name, route.name
        );
        assert!(
            self.routes.iter().all(|r| r.name != route.name),
            "{}: two routes named {}",
            self.name,
            route.name
        );
        assert!(self.routes.len() < 64, "{}: more than 64 routes", self.name);
        self.routes.push(route);
        self
    }

    /// The consumer's settings: every type a route takes, the most lanes a route wants, and
    /// the consumers it takes over from (the routes' names, then [`Shared::replacing`]'s).
    pub fn spec(&self) -> ConsumerSpec {
        let mut types: Vec<&str> = Vec::new();
        for t in self.routes.iter().flat_map(|r| &r.event_types) {
            if !types.contains(&t.as_str()) {
                types.push(t);
            }
        }
        let lanes = self.routes.iter().map(|r| r.lanes).max().unwrap_or(1);
        let old: Vec<&str> = self
            .routes
            .iter()
            .map(|r| r.name.as_str())
            .chain(self.replaces.iter().map(String::as_str))
            .collect();
        ConsumerSpec::for_events(&self.name, self.aggregate, &types)
            .lanes(lanes)
            .replacing(&old)
    }

    /// The settings and the handler that hands each event to its routes, for
    /// [`crate::Group::consumer`] or [`run_consumer`].
    pub fn into_consumer(
        self,
    ) -> (
        ConsumerSpec,
        impl Fn(PublishedEvent) -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
    ) {
        let spec = self.spec();
        let routes: Arc<[Route]> = self.routes.into();
        let partly = Arc::new(Mutex::new(HashMap::<Uuid, u64>::new()));
        let handle = move |e: PublishedEvent| -> BoxFuture<'static, Result<(), String>> {
            Box::pin(dispatch(routes.clone(), partly.clone(), e))
        };
        (spec, handle)
    }

    /// Runs the consumer until `shutdown`.
    pub async fn run(self, bus: crate::Bus, shutdown: impl Future<Output = ()>) {
        let (spec, handle) = self.into_consumer();
        run_consumer(bus, spec, handle, shutdown).await
    }
}

/// Hands `e` to the routes that take it and have not yet succeeded with it.
async fn dispatch(
    routes: Arc<[Route]>,
    partly: Arc<Mutex<HashMap<Uuid, u64>>>,
    e: PublishedEvent,
) -> Result<(), String> {
    let id = e.event_id;
    let lock = || partly.lock().unwrap_or_else(|p| p.into_inner());
    let done_before = lock().remove(&id).unwrap_or(0);
    let todo: Vec<usize> = routes
        .iter()
        .enumerate()
        .filter(|(i, r)| done_before & (1 << i) == 0 && r.takes(&e.event_type))
        .map(|(i, _)| i)
        .collect();
    // Each route gets the event; the last one the original (most events have one route).
    let mut event = Some(e);
    let runs = todo.iter().enumerate().map(|(k, &i)| {
        let e = if k + 1 == todo.len() {
            event.take().expect("the last route takes the event")
        } else {
            event.clone().expect("the event is kept for the last route")
        };
        (routes[i].handle)(e)
    });
    let results = futures::future::join_all(runs.collect::<Vec<_>>()).await;
    let mut done = done_before;
    let mut failed = Vec::new();
    for (&i, res) in todo.iter().zip(results) {
        let r = &routes[i];
        match res {
            Ok(()) => {
                done |= 1 << i;
                r.counted.ok.increment(1);
            }
            Err(err) => {
                r.counted.retry.increment(1);
                failed.push(format!("{}: {err}", r.name));
            }
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    let mut partly = lock();
    if partly.len() >= REMEMBERED {
        partly.clear();
    }
    partly.insert(id, done);
    Err(failed.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use vbin_event_schema::CallEvent;

    fn event(event_type: &str) -> PublishedEvent {
        serde_json::from_str(
            &serde_json::json!({
                "event_id": Uuid::now_v7(),
                "event_type": event_type,
                "event_version": "1.0",
                "timestamp": "2026-12-03T00:00:00Z",
                "customer_id": Uuid::now_v7(),
                "aggregate_type": "call",
                "aggregate_id": Uuid::now_v7(),
                "sequence": 1,
                "global_position": 1,
                "metadata": {},
                "data": {},
                "resource": {},
            })
            .to_string(),
        )
        .expect("an envelope")
    }

    /// A route counting its runs, failing its first `fail` runs.
    fn counting(name: &str, types: &[&str], fail: usize) -> (Route, Arc<AtomicUsize>) {
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let route = Route::of::<CallEvent, _, _, _>(name, types, move |_| {
            let n = r.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < fail {
                    Err("not yet")
                } else {
                    Ok(())
                }
            }
        });
        (route, runs)
    }

    #[test]
    fn the_spec_takes_every_routes_types_once_and_the_most_lanes() {
        let (a, _) = counting("a", &[CallEvent::CALL_CREATED, CallEvent::CALL_HUNGUP], 0);
        let (b, _) = counting("b", &[CallEvent::CALL_HUNGUP], 0);
        let s = Shared::new::<CallEvent>("both")
            .replacing(&["older"])
            .with_route(a.lanes(16))
            .with_route(b.lanes(256));
        let spec = s.spec();
        assert_eq!(spec.name, "both");
        assert_eq!(spec.filter_subject, "*.call.*");
        assert_eq!(
            spec.event_types,
            [CallEvent::CALL_CREATED, CallEvent::CALL_HUNGUP]
        );
        assert_eq!(spec.lanes, 256);
        assert_eq!(
            spec.replaces,
            ["a", "b", "older"],
            "its routes' consumers, then others"
        );
    }

    #[tokio::test]
    async fn an_event_goes_to_the_routes_taking_it_and_a_retry_only_to_those_that_failed() {
        let (a, runs_a) = counting("a", &[CallEvent::CALL_CREATED, CallEvent::CALL_HUNGUP], 0);
        let (b, runs_b) = counting("b", &[CallEvent::CALL_HUNGUP], 2);
        let (c, runs_c) = counting("c", &[CallEvent::CALL_PROGRESSING], 0);
        let (_, handle) = Shared::new::<CallEvent>("s")
            .with_route(a)
            .with_route(b)
            .with_route(c)
            .into_consumer();
        handle(event(CallEvent::CALL_CREATED)).await.unwrap();
        assert_eq!(
            [&runs_a, &runs_b, &runs_c].map(|r| r.load(Ordering::SeqCst)),
            [1, 0, 0],
            "created: a only"
        );
        let hungup = event(CallEvent::CALL_HUNGUP);
        let err = handle(hungup.clone()).await.unwrap_err();
        assert_eq!(err, "b: not yet");
        assert!(handle(hungup.clone()).await.is_err(), "b fails twice");
        handle(hungup.clone()).await.unwrap();
        assert_eq!(
            [&runs_a, &runs_b, &runs_c].map(|r| r.load(Ordering::SeqCst)),
            [2, 3, 0],
            "the hangup reached a once (its retries were b's alone) and b three times"
        );
        handle(hungup).await.unwrap();
        assert_eq!(
            runs_a.load(Ordering::SeqCst),
            3,
            "a redelivery after success (another instance, a restart) runs every route again"
        );
    }

    #[test]
    #[should_panic(expected = "two routes named a")]
    fn two_routes_of_one_name_are_refused() {
        let (a, _) = counting("a", &[CallEvent::CALL_CREATED], 0);
        let (a2, _) = counting("a", &[CallEvent::CALL_HUNGUP], 0);
        let _ = Shared::new::<CallEvent>("s").with_route(a).with_route(a2);
    }
}
