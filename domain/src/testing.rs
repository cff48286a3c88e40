//! Given/when/then for the aggregates' unit tests (test builds only): a history, one command,
//! and what the aggregate decided (events or an error) and the state it is left in.
//!
//! cqrs-es' `test::TestFramework` checks the events or the error of one command on a history,
//! but hides the state afterwards, which these tests assert on; this keeps the state, lets a
//! history be given as commands too, and decides without a runtime (a decision awaits nothing).

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::task::{Context, Poll, Waker};

/// An aggregate under test: its state after the history so far (read through `Deref`).
#[derive(Clone, Debug)]
pub(crate) struct Given<A>(A);

/// The aggregate after `history`, events as the log holds them.
pub(crate) fn given<A: Aggregate>(history: impl IntoIterator<Item = A::Event>) -> Given<A> {
    let mut state = A::default();
    for event in history {
        state.apply(event);
    }
    Given(state)
}

/// An aggregate with no history yet.
pub(crate) fn given_nothing<A: Aggregate>() -> Given<A> {
    given(std::iter::empty())
}

impl<A: Aggregate<Services = ()>> Given<A> {
    /// The history goes on with `command`, which must be accepted.
    #[track_caller]
    pub(crate) fn and(mut self, command: A::Command) -> Self {
        self.when(command).then_ok();
        self
    }

    /// Decides `command` on the state so far; what an accepted command decides is applied.
    pub(crate) fn when(&mut self, command: A::Command) -> Then<A> {
        let sink = EventSink::default();
        let decided = now(self.0.handle(command, &(), &sink));
        Then(decided.map(|()| now(sink.collect())))
    }
}

impl<A> Deref for Given<A> {
    type Target = A;
    fn deref(&self) -> &A {
        &self.0
    }
}

impl<A> DerefMut for Given<A> {
    fn deref_mut(&mut self) -> &mut A {
        &mut self.0
    }
}

/// What one command decided.
#[must_use]
pub(crate) struct Then<A: Aggregate>(Result<Vec<A::Event>, A::Error>);

impl<A: Aggregate> Then<A> {
    /// Accepted: its events.
    #[track_caller]
    pub(crate) fn then_ok(self) -> Vec<A::Event> {
        match self.0 {
            Ok(events) => events,
            Err(e) => panic!("expected the command to be accepted, it was refused: {e:?}"),
        }
    }

    /// Accepted with exactly `expected`.
    #[track_caller]
    pub(crate) fn then_events(self, expected: &[A::Event]) {
        assert_eq!(self.then_ok(), expected);
    }

    /// Accepted with `n` events.
    #[track_caller]
    pub(crate) fn then_count(self, n: usize) {
        let events = self.then_ok();
        assert_eq!(events.len(), n, "{events:?}");
    }

    /// Accepted without an event (a repeat, or nothing to do).
    #[track_caller]
    pub(crate) fn then_nothing(self) {
        self.then_count(0)
    }

    /// Refused: the error.
    #[track_caller]
    pub(crate) fn then_refused(self) -> A::Error {
        match self.0 {
            Ok(events) => panic!("expected the command to be refused, it decided {events:?}"),
            Err(e) => e,
        }
    }
}

impl<A: Aggregate> Then<A>
where
    A::Error: PartialEq,
{
    /// Refused with exactly `expected`.
    #[track_caller]
    pub(crate) fn then_error(self, expected: A::Error) {
        assert_eq!(self.then_refused(), expected);
    }
}

/// Runs a future that never waits (an aggregate's decision: pure, its sink's lock free).
fn now<T>(f: impl Future<Output = T>) -> T {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a decision waited for something"),
    }
}
