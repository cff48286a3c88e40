//! The sandbox carrier: a simulated network that behaves by destination (API.md):
//! `...0486` busy, `...0487` no answer at the dial timeout, `...0404` failed (unallocated
//! number), anything else rings, answers after ~0.5 s and the far end hangs up after
//! `talk_seconds`.
//!
//! Its plans are durable timers in Postgres (`carrier_timers`), written when it is asked to
//! dial and executed by [`TimerWorker`], so a call ringing when the process dies is resolved
//! after the restart instead of dialing forever. A dial's plan is one row: its first step
//! carries the later ones with their due times ([`chain`]), and the next row is written when
//! a step fires on a live call, so a call our side ends before it rings costs one timer.
//! Executing a timer sends a command to the Call aggregate; the aggregate ignores stale or
//! repeated ones, so a timer that fires twice (crash between the command and the timer's
//! deletion) is harmless.

use crate::{Carrier, CarrierError, DialRequest};
use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use futures::StreamExt;
use sqlx::PgPool;
use uuid::Uuid;
use vbin_app::together::Together;
use vbin_app::{ExecError, Executor};
use vbin_domain::{Call, CallCommand, HangupRequest};
use vbin_event_schema::{CallId, CallStatus, CustomerId, HangupCause};

/// Delay before a normal destination starts ringing.
pub const RING_AFTER_MS: i64 = 100;
/// Delay before a normal destination answers (~0.5 s of ringing).
pub const ANSWER_AFTER_MS: i64 = 600;
/// Delay before a busy or unallocated destination is reported.
pub const REJECT_AFTER_MS: i64 = 200;

/// A step the simulated network takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Far end rings.
    Ring,
    /// Far end answers, then talks this many milliseconds (the hangup is planned at the
    /// answer, so `duration` is never short of it however late the answer fires).
    Answer(u64),
    /// Far end hangs up with this cause.
    Hangup(HangupCause),
}

impl Action {
    fn name(self) -> String {
        match self {
            Action::Ring => "ring".into(),
            Action::Answer(talk_ms) => format!("answer_ms:{talk_ms}"),
            Action::Hangup(c) => format!(
                "hangup:{}",
                serde_json::to_value(c)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            ),
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "ring" => Some(Action::Ring),
            // Timers planned before talk times were in milliseconds said seconds.
            _ if s.starts_with("answer:") => s["answer:".len()..]
                .parse::<u64>()
                .ok()
                .map(|secs| Action::Answer(secs * 1000)),
            _ if s.starts_with("answer_ms:") => {
                s["answer_ms:".len()..].parse().ok().map(Action::Answer)
            }
            _ => s
                .strip_prefix("hangup:")
                .and_then(|c| serde_json::from_value(serde_json::Value::String(c.into())).ok())
                .map(Action::Hangup),
        }
    }
}

/// A timer's action text with the steps that follow it: `first|next@due_ms|...` (due times
/// in Unix milliseconds; action names hold neither `|` nor `@`).
pub fn chain(first: Action, then: &[(Action, DateTime<Utc>)]) -> String {
    let mut text = first.name();
    for (a, due) in then {
        text.push_str(&format!("|{}@{}", a.name(), due.timestamp_millis()));
    }
    text
}

/// The timer a chain writes after its step: (its action text, due).
type Then = (String, DateTime<Utc>);

/// Splits a timer's action text into its step and the timer to write after it if the call is
/// still live then. `None` for a text that is not a chain.
fn unchain(text: &str) -> Option<(Action, Option<Then>)> {
    let Some((first, rest)) = text.split_once('|') else {
        return Action::parse(text).map(|a| (a, None));
    };
    let (head, tail) = match rest.split_once('|') {
        Some((h, t)) => (h, Some(t)),
        None => (rest, None),
    };
    let (name, due) = head.rsplit_once('@')?;
    let due = DateTime::from_timestamp_millis(due.parse().ok()?)?;
    Action::parse(name)?;
    let next = match tail {
        Some(t) => format!("{name}|{t}"),
        None => name.to_string(),
    };
    Action::parse(first).map(|a| (a, Some((next, due))))
}

/// What the sandbox network does for a dial request, as (delay ms, action) steps.
pub fn plan(req: &DialRequest) -> Vec<(i64, Action)> {
    let d = req.destination.as_str();
    if d.ends_with("0486") {
        vec![(REJECT_AFTER_MS, Action::Hangup(HangupCause::UserBusy))]
    } else if d.ends_with("0404") {
        vec![(
            REJECT_AFTER_MS,
            Action::Hangup(HangupCause::UnallocatedNumber),
        )]
    } else if d.ends_with("0487") {
        vec![
            (RING_AFTER_MS, Action::Ring),
            (
                req.dial_timeout_ms as i64,
                Action::Hangup(HangupCause::NoAnswer),
            ),
        ]
    } else {
        let answer = ANSWER_AFTER_MS.min(req.dial_timeout_ms as i64 - 1);
        vec![
            (RING_AFTER_MS, Action::Ring),
            (answer, Action::Answer(req.talk_ms)),
        ]
    }
}

/// The sandbox carrier.
#[derive(Clone)]
pub struct SandboxCarrier {
    pool: PgPool,
    /// Timers planned by concurrent dials, written together (one statement and commit for
    /// all that wait, rather than one per call).
    plans: Together<&'static str, Vec<Timer>>,
}

/// A timer to write: (call, customer, action, due).
type Timer = (Uuid, Uuid, String, DateTime<Utc>);

impl SandboxCarrier {
    /// A sandbox carrier writing timers to `pool` (the [`TimerWorker`]s poll them: the earliest
    /// step is 100 ms away, so waking them per dial would only cost queries).
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            plans: Together::default(),
        }
    }
}

impl SandboxCarrier {
    /// Writes `steps` as timers relative to now (the moment the network sees the call), as
    /// one chained timer or one timer per step; a redelivered event finds them already planned
    /// and changes nothing. Returns once they are committed.
    async fn plan(
        &self,
        req: &DialRequest,
        steps: &[(i64, Action)],
        chained: bool,
    ) -> Result<(), CarrierError> {
        let now = Utc::now();
        let (call, customer) = (req.call_id.as_uuid(), req.customer_id.as_uuid());
        let due: Vec<(Action, DateTime<Utc>)> = steps
            .iter()
            .map(|(ms, a)| (*a, now + Duration::milliseconds(*ms)))
            .collect();
        let timers: Vec<Timer> = match due.split_first() {
            Some((&(first, at), then)) if chained => vec![(call, customer, chain(first, then), at)],
            _ => due
                .iter()
                .map(|&(a, at)| (call, customer, a.name(), at))
                .collect(),
        };
        let pool = self.pool.clone();
        self.plans
            .submit("carrier_timers", timers, move |batch| {
                let pool = pool.clone();
                async move { insert_timers(&pool, batch.into_iter().flatten()).await }
            })
            .await
            .map_err(|e| CarrierError(e.to_string()))
    }
}

/// Writes `timers` in one statement (a (call, action) already planned is left as it is).
async fn insert_timers<'e>(
    db: impl sqlx::PgExecutor<'e>,
    timers: impl Iterator<Item = Timer>,
) -> Result<(), sqlx::Error> {
    let (mut calls, mut customers, mut actions, mut due) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (call, customer, action, at) in timers {
        calls.push(call);
        customers.push(customer);
        actions.push(action);
        due.push(at);
    }
    sqlx::query(
        "INSERT INTO carrier_timers (call_id, customer_id, action, due_at) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[]) \
         ON CONFLICT (call_id, action) DO NOTHING",
    )
    .bind(&calls)
    .bind(&customers)
    .bind(&actions)
    .bind(&due)
    .execute(db)
    .await?;
    Ok(())
}

#[async_trait]
impl Carrier for SandboxCarrier {
    async fn dial(&self, req: &DialRequest) -> Result<(), CarrierError> {
        self.plan(req, &plan(req), true).await
    }

    async fn arrived(&self, req: &DialRequest) -> Result<(), CarrierError> {
        // Ringing at our side at once; the flow answers it (or the caller gives up after the
        // dial timeout, as a caller would). Two timers, not a chain: the answer deletes the
        // caller's giving up, which a chain would only write after the ring fired.
        self.plan(
            req,
            &[
                (0, Action::Ring),
                (
                    req.dial_timeout_ms as i64,
                    Action::Hangup(HangupCause::OriginatorCancel),
                ),
            ],
            false,
        )
        .await
    }

    async fn answered(&self, req: &DialRequest) -> Result<(), CarrierError> {
        // Answered: the caller no longer gives up.
        sqlx::query("DELETE FROM carrier_timers WHERE call_id = $1 AND action = $2")
            .bind(req.call_id.as_uuid())
            .bind(Action::Hangup(HangupCause::OriginatorCancel).name())
            .execute(&self.pool)
            .await
            .map_err(|e| CarrierError(e.to_string()))?;
        self.plan(
            req,
            &[(
                req.talk_ms as i64,
                Action::Hangup(HangupCause::NormalClearing),
            )],
            false,
        )
        .await
    }

    async fn hangup(&self, _call_id: CallId) -> Result<(), CarrierError> {
        // Nothing to tear down: the simulated far end's remaining steps (ring/answer, at most
        // ANSWER_AFTER_MS away; the talk timer is only planned at answer) reach a call that has
        // ended, the aggregate ignores them, and the worker deletes them in its batch. Deleting
        // them here would cost a write per hangup for no change in outcome.
        Ok(())
    }
}

/// Executes due sandbox timers. Several workers may run (one per process): each claims timers
/// by deleting them (`FOR UPDATE SKIP LOCKED`) in a transaction that stays open while their
/// commands run and commits after; a step that failed is written back in it, and a crash
/// before the commit leaves them all as they were.
pub struct TimerWorker {
    pool: PgPool,
    executor: Executor,
}

/// One call's claimed timers: (action, due), in due order.
type Steps = Vec<(String, DateTime<Utc>)>;

/// Calls whose timers one worker fires at once.
const FIRE_CONCURRENCY: usize = 32;

const IDLE_POLL: std::time::Duration = std::time::Duration::from_millis(50);

impl TimerWorker {
    /// A worker.
    pub fn new(pool: PgPool, executor: Executor) -> Self {
        Self { pool, executor }
    }

    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let fired = match self.fire_due().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "sandbox timers: will retry");
                    0
                }
            };
            if fired > 0 {
                continue;
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
        }
    }

    /// Fires the timers that are due now; returns how many fired (not those put back after a
    /// failure, so that a failing step waits for the next poll instead of being claimed again
    /// at once).
    pub async fn fire_due(&self) -> Result<usize, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // Claimed by deleting them: one statement, and no row lock written before the delete.
        let mut due: Vec<(i64, Uuid, Uuid, String, DateTime<Utc>)> = sqlx::query_as(
            "DELETE FROM carrier_timers WHERE id IN (SELECT id FROM carrier_timers \
               WHERE due_at <= now() ORDER BY due_at, id LIMIT 100 FOR UPDATE SKIP LOCKED) \
             RETURNING id, call_id, customer_id, action, due_at",
        )
        .fetch_all(&mut *tx)
        .await?;
        due.sort_by_key(|t| (t.4, t.0));
        // Calls are independent aggregates: fire them concurrently (a command costs a commit),
        // each call's own timers in due order.
        let mut by_call: Vec<(Uuid, Uuid, Steps)> = Vec::new();
        for (_, call_id, customer_id, action, at) in due {
            match by_call.iter_mut().find(|(c, _, _)| *c == call_id) {
                Some((_, _, steps)) => steps.push((action, at)),
                None => by_call.push((call_id, customer_id, vec![(action, at)])),
            }
        }
        let fired: Vec<(usize, Vec<Timer>)> =
            futures::stream::iter(by_call.into_iter().map(|(call_id, customer_id, steps)| {
                self.fire_steps(CallId(call_id), CustomerId(customer_id), steps)
            }))
            .buffer_unordered(FIRE_CONCURRENCY)
            .collect()
            .await;
        let mut done = 0;
        let mut write = Vec::new();
        for (n, timers) in fired {
            done += n;
            write.extend(timers);
        }
        // The steps that failed go back as they were, and the far end's next steps (the rest
        // of a chain, the hangup after an answer) are planned: one statement for the pass.
        if !write.is_empty() {
            insert_timers(&mut *tx, write.into_iter()).await?;
        }
        tx.commit().await?;
        metrics::counter!("vbin_sandbox_timers_fired_total").increment(done as u64);
        Ok(done)
    }

    /// Fires one call's due steps in order; returns how many are done and the timers to write
    /// after them: the steps that are not done (a failed one and those after it, for the
    /// retry), then what follows the done ones (a chain's next step, the far end's hangup
    /// after an answer), only for a call still live.
    async fn fire_steps(
        &self,
        call_id: CallId,
        customer_id: CustomerId,
        steps: Steps,
    ) -> (usize, Vec<Timer>) {
        // The far end's steps reach a call that has ended when our side hung up first (a
        // caller giving up while it rings). Every step is then a no-op: the call's machine only
        // moves forward and never out of an ended status, so an ended state this process
        // cached is exact however old it is. Done without a command (each cost a decision and
        // a probe of the log) and without planning the far end's hangup.
        let ended =
            self.executor
                .inspect_cached::<Call, _>(call_id.as_uuid(), Some(customer_id), |c| {
                    c.status.is_terminal()
                });
        if ended == Some(true) {
            metrics::counter!("vbin_sandbox_timers_skipped_total").increment(steps.len() as u64);
            return (steps.len(), Vec::new());
        }
        let (call, customer) = (call_id.as_uuid(), customer_id.as_uuid());
        let (mut done, mut next) = (0, Vec::new());
        let mut steps = steps.into_iter();
        while let Some((action, at)) = steps.next() {
            let outcome = match unchain(&action) {
                None => {
                    tracing::error!(%call_id, %action, "unknown sandbox timer action; dropped");
                    Ok(())
                }
                Some((a, then)) => {
                    let r = self.fire(call_id, customer_id, a).await;
                    // Planned on a repeated step too (a crash before the claim's commit: the
                    // same text, so written once), but not for a call that ended instead.
                    if let Ok(Some(status)) = &r {
                        if !status.is_terminal() {
                            if let Some((text, due)) = then {
                                next.push((call, customer, text, due));
                            }
                            if let Action::Answer(talk) = a {
                                let due = Utc::now() + Duration::milliseconds(talk as i64);
                                let hangup = Action::Hangup(HangupCause::NormalClearing);
                                next.push((call, customer, hangup.name(), due));
                            }
                        }
                    }
                    r.map(|_| ())
                }
            };
            match outcome {
                Ok(()) => done += 1,
                Err(e) => {
                    tracing::warn!(%call_id, %action, error = %e, "sandbox timer failed; will retry");
                    // Keep it and the call's later steps for the retry, in order.
                    let kept = std::iter::once((action, at)).chain(steps);
                    let mut timers: Vec<Timer> = kept
                        .map(|(action, at)| (call, customer, action, at))
                        .collect();
                    timers.extend(next);
                    return (done, timers);
                }
            }
        }
        (done, next)
    }

    async fn fire(
        &self,
        call_id: CallId,
        customer_id: CustomerId,
        action: Action,
    ) -> Result<Option<CallStatus>, ExecError> {
        let at = Utc::now();
        let cmd = match action {
            Action::Ring => CallCommand::MarkRinging { at },
            Action::Answer(_) => CallCommand::MarkAnswered { at },
            Action::Hangup(cause) => CallCommand::Hangup {
                request: HangupRequest::Remote(cause),
                at,
            },
        };
        crate::report(&self.executor, "sandbox-carrier", call_id, customer_id, cmd).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vbin_event_schema::E164;

    fn req(dest: &str) -> DialRequest {
        DialRequest {
            call_id: CallId::new(),
            customer_id: CustomerId::new(),
            source: E164::parse("+15550000001").unwrap(),
            destination: E164::parse(dest).unwrap(),
            dial_timeout_ms: 5_000,
            talk_ms: 3_000,
            trunk_id: None,
        }
    }

    #[test]
    fn plans_follow_the_magic_destinations() {
        assert_eq!(
            plan(&req("+15551230486")),
            vec![(200, Action::Hangup(HangupCause::UserBusy))]
        );
        assert_eq!(
            plan(&req("+15551230404"))[0].1,
            Action::Hangup(HangupCause::UnallocatedNumber)
        );
        assert_eq!(
            plan(&req("+15551230487"))[1],
            (5_000, Action::Hangup(HangupCause::NoAnswer))
        );
        let normal = plan(&req("+15551230000"));
        assert_eq!(
            normal,
            vec![(100, Action::Ring), (600, Action::Answer(3_000))]
        );
        assert_eq!(Action::parse("answer:3"), Some(Action::Answer(3_000)));
        let at = |ms| DateTime::from_timestamp_millis(ms).unwrap();
        let text = chain(
            Action::Ring,
            &[
                (Action::Answer(3_000), at(1_700_000_000_600)),
                (Action::Hangup(HangupCause::NoAnswer), at(1_700_000_005_000)),
            ],
        );
        assert_eq!(
            text,
            "ring|answer_ms:3000@1700000000600|hangup:no_answer@1700000005000"
        );
        let (first, then) = unchain(&text).unwrap();
        assert_eq!(first, Action::Ring);
        let (rest, due) = then.unwrap();
        assert_eq!(due, at(1_700_000_000_600));
        assert_eq!(rest, "answer_ms:3000|hangup:no_answer@1700000005000");
        assert_eq!(
            unchain(&rest).unwrap(),
            (
                Action::Answer(3_000),
                Some(("hangup:no_answer".to_string(), at(1_700_000_005_000)))
            )
        );
        assert_eq!(
            unchain("hangup:no_answer").unwrap(),
            (Action::Hangup(HangupCause::NoAnswer), None)
        );
        assert_eq!(unchain("ring|answer_ms:3000@soon"), None);
        for a in [
            Action::Ring,
            Action::Answer(3_000),
            Action::Hangup(HangupCause::NoAnswer),
        ] {
            assert_eq!(Action::parse(&a.name()), Some(a));
        }
    }
}
