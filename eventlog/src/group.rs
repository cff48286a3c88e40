//! Group commit: the appends of concurrent commands written in one statement and one commit.
//!
//! Each command of the plain kind (events only: no once-key, lookup table or snapshot) hands
//! its append to a queue. Two writer tasks each take whatever is queued when their previous
//! batch is done and write it with one statement: one round trip, one WAL flush, one
//! `events_notify` for the whole batch. No timer: a lone command waits for nobody. While one
//! batch commits, the next gathers until that commit ends or enough commands are waiting to
//! be worth a second commit at once ([`SECOND_BATCH_MIN`]).
//!
//! Optimistic concurrency stays per command. Every append starts at its aggregate's next
//! sequence, and sequences have no gaps, so a command's *first* event decides for the whole
//! command: the statement inserts the first events with `ON CONFLICT DO NOTHING`, then the
//! rest of the events only of the commands whose first event went in. A command whose first
//! event collided gets [`AppendError::Conflict`], exactly as a lone append would; the others
//! in its batch are not affected. Two commands of one batch never touch the same aggregate
//! (the second waits for the next batch).
//!
//! A batch the database refuses (an error of one command's data, say) is split in halves and
//! written again, down to the command at fault, so each command gets its own answer. A batch
//! whose outcome is unknown (the connection broke) reports that to every command in it, as a
//! lone append would.

use crate::event::NewEvent;
use crate::outcome::{classify, AppendError, Recorded};
use serde_json::Value;
use sqlx::{PgPool, Row};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Mutex};
use uuid::Uuid;

/// Commands per batch, at most.
const MAX_COMMANDS: usize = 256;
/// Events per batch, at most (bind arrays stay small).
const MAX_EVENTS: usize = 2048;
/// Writer tasks: batches in flight at once. Two let a second batch commit while the first
/// waits for its WAL flush, when enough commands are waiting ([`SECOND_BATCH_MIN`]).
const WRITERS: usize = 2;

/// Commands that must be waiting before a second batch starts while another one is
/// committing. Fewer wait for that commit (at most one commit's time: the wait of a command
/// that had come a moment earlier). A batch of one or two commands committed beside a running
/// one costs a statement, a commit and a WAL flush for almost nothing: under load, half the
/// batches were single commands. With 16 clients, `vbin bench commands` measured 8 best
/// among 1, 4, 8 and one batch at a time (docs/benchmarks.md, twenty-eighth pass).
const SECOND_BATCH_MIN: usize = 8;

/// One command's append.
pub(crate) struct Append {
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    pub customer_id: Uuid,
    pub expected_sequence: usize,
    pub events: Vec<NewEvent>,
    /// The events' ids (UUIDv7), chosen here: the first one names the command in a batch's
    /// returned rows.
    pub ids: Vec<Uuid>,
    pub metadata: Value,
}

impl Append {
    /// An append of `events` after `expected_sequence`.
    pub fn new(
        aggregate_type: &str,
        aggregate_id: Uuid,
        customer_id: Uuid,
        expected_sequence: usize,
        events: Vec<NewEvent>,
        metadata: Value,
    ) -> Self {
        Self {
            aggregate_type: aggregate_type.to_string(),
            aggregate_id,
            customer_id,
            expected_sequence,
            ids: events.iter().map(|_| Uuid::now_v7()).collect(),
            events,
            metadata,
        }
    }

    fn sequences(&self) -> impl Iterator<Item = i64> + '_ {
        (1..=self.events.len() as i64).map(|i| self.expected_sequence as i64 + i)
    }
}

struct Job {
    append: Append,
    done: oneshot::Sender<Result<Vec<Recorded>, AppendError>>,
}

/// The queue in front of the writer tasks.
#[derive(Clone)]
pub(crate) struct GroupCommit {
    queue: mpsc::UnboundedSender<Job>,
}

/// What the writer tasks share: the queue's receiving end (one writer gathers at a time) and
/// how many batches are being written.
struct Writers {
    rx: Mutex<mpsc::UnboundedReceiver<Job>>,
    in_flight: tokio::sync::watch::Sender<usize>,
}

impl GroupCommit {
    /// Starts the writers on `runtime`.
    pub fn start(pool: PgPool, runtime: &tokio::runtime::Handle) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        let writers = Arc::new(Writers {
            rx: Mutex::new(rx),
            in_flight: tokio::sync::watch::channel(0).0,
        });
        for _ in 0..WRITERS {
            runtime.spawn(writer(pool.clone(), writers.clone()));
        }
        Self { queue }
    }

    /// Whether the writers are gone (their runtime shut down).
    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// Appends through a batch. `Err(append)` gives the append back when the writers are gone
    /// (their runtime shut down): the caller writes it alone.
    pub async fn append(
        &self,
        append: Append,
    ) -> Result<Result<Vec<Recorded>, AppendError>, Append> {
        let (done, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(job)) = self.queue.send(Job { append, done }) {
            return Err(job.append);
        }
        match answer.await {
            Ok(result) => Ok(result),
            // The writer was dropped with the job (its runtime is shutting down): whether the
            // batch committed is unknown, as with a broken connection.
            Err(_) => Ok(Err(AppendError::Database(sqlx::Error::WorkerCrashed))),
        }
    }
}

async fn writer(pool: PgPool, writers: Arc<Writers>) {
    let mut carry: VecDeque<Job> = VecDeque::new();
    let mut busy = writers.in_flight.subscribe();
    loop {
        let (batch, _writing) = if !carry.is_empty() {
            // Jobs held back from this writer's last batch (their aggregate was in it) go
            // first, now that batch has committed. They must not wait for the queue: the other
            // writer may hold it while waiting for a job, and with nothing more to write a
            // held-back command went unanswered until some other command came.
            let held = std::mem::take(&mut carry);
            let mut rx = writers.rx.try_lock().ok();
            (
                gather(held, rx.as_deref_mut(), &mut carry),
                writers.writing(),
            )
        } else {
            let mut rx = writers.rx.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut held = VecDeque::from([first]);
            // Another batch is committing: the commands gathered here wait for it (or until
            // enough of them are waiting to be worth a batch of their own).
            while held.len() < SECOND_BATCH_MIN && *busy.borrow_and_update() > 0 {
                tokio::select! {
                    changed = busy.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                    job = rx.recv() => match job {
                        Some(job) => held.push_back(job),
                        None => break,
                    },
                }
            }
            // Counted as committing before the queue is let go, so that the other writer,
            // taking it next, sees this batch.
            (gather(held, Some(&mut rx), &mut carry), writers.writing())
        };
        metrics::histogram!("vbin_append_batch_commands").record(batch.len() as f64);
        write(&pool, batch).await;
    }
}

impl Writers {
    /// Counts a batch as committing until the guard is dropped (also if its writer's task
    /// ends mid-write: a count left at one would make every later lone command wait for eight).
    fn writing(&self) -> Writing<'_> {
        self.in_flight.send_modify(|n| *n += 1);
        Writing(&self.in_flight)
    }
}

/// A batch being committed ([`Writers::writing`]).
struct Writing<'a>(&'a tokio::sync::watch::Sender<usize>);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// A batch of the jobs `held` (in order) and of what else is queued in `rx`, within the
/// limits and with one job per aggregate. A job of an aggregate already in the batch, and
/// every job after it in `held`, go to `carry`, to go first in the writer's next batch; the
/// queue is then not read further.
fn gather(
    held: VecDeque<Job>,
    rx: Option<&mut mpsc::UnboundedReceiver<Job>>,
    carry: &mut VecDeque<Job>,
) -> Vec<Job> {
    let mut batch = Batch::default();
    for job in held {
        batch.offer(job, carry);
    }
    if let Some(rx) = rx {
        // The queue is read until a job is held back or the batch is full.
        while carry.is_empty() && !batch.is_full() {
            let Ok(job) = rx.try_recv() else { break };
            batch.offer(job, carry);
        }
    }
    batch.jobs
}

/// A batch being gathered.
#[derive(Default)]
struct Batch {
    jobs: Vec<Job>,
    aggregates: HashSet<(String, Uuid)>,
    events: usize,
}

impl Batch {
    fn is_full(&self) -> bool {
        self.jobs.len() >= MAX_COMMANDS || self.events >= MAX_EVENTS
    }

    /// Takes `job`, or holds it back in `carry` (as every job after one held back, to keep
    /// their order) if the batch is full or has its aggregate already.
    fn offer(&mut self, job: Job, carry: &mut VecDeque<Job>) {
        let key = (job.append.aggregate_type.clone(), job.append.aggregate_id);
        if !carry.is_empty() || self.is_full() || self.aggregates.contains(&key) {
            carry.push_back(job);
            return;
        }
        self.aggregates.insert(key);
        self.events += job.append.events.len();
        self.jobs.push(job);
    }
}

/// Writes a batch and answers each of its commands. A batch the database refuses is split in
/// two and each half written again, down to single commands: the command at fault gets its
/// error while the others still commit together.
fn write(pool: &PgPool, batch: Vec<Job>) -> futures::future::BoxFuture<'_, ()> {
    Box::pin(async move {
        if batch.len() == 1 {
            let job = batch.into_iter().next().expect("one job");
            let _ = job.done.send(insert_one(pool, &job.append).await);
            return;
        }
        match insert_batch(pool, &batch).await {
            Ok(mut recorded) => {
                for job in batch {
                    let result = match recorded.remove(&job.append.ids[0]) {
                        Some(rows) if rows.len() == job.append.events.len() => Ok(rows),
                        Some(_) => Err(AppendError::Database(sqlx::Error::Protocol(
                            "a batched append recorded only part of its events".into(),
                        ))),
                        None => Err(AppendError::Conflict),
                    };
                    let _ = job.done.send(result);
                }
            }
            Err(sqlx::Error::Database(e)) => {
                // The statement failed and rolled back: nothing of the batch was written.
                tracing::debug!(error = %e, commands = batch.len(), "batched append refused; splitting it");
                let mut first = batch;
                let second = first.split_off(first.len() / 2);
                write(pool, first).await;
                write(pool, second).await;
            }
            Err(e) => {
                // The outcome is unknown (the connection broke): as for a lone append.
                let message = e.to_string();
                for job in batch {
                    let _ = job.done.send(Err(AppendError::Database(sqlx::Error::Io(
                        std::io::Error::other(message.clone()),
                    ))));
                }
            }
        }
    })
}

const INSERT_ONE: &str =
    "INSERT INTO events (event_id, customer_id, aggregate_type, aggregate_id, sequence, \
         event_type, event_version, payload, metadata, resource) \
     SELECT e.id, $2, $3, $4, e.seq, e.typ, e.ver, e.payload, $9, e.resource \
     FROM UNNEST($1::uuid[], $5::bigint[], $6::text[], $7::text[], $8::jsonb[], $10::jsonb[]) \
          AS e(id, seq, typ, ver, payload, resource) \
     RETURNING event_id, sequence, global_position, recorded_at";

/// One command alone (on a pool, or inside a caller's transaction): one statement, atomic by
/// itself. A collision on the sequence key is [`AppendError::Conflict`] (see `classify`).
pub(crate) async fn insert_one<'c>(
    db: impl sqlx::PgExecutor<'c>,
    a: &Append,
) -> Result<Vec<Recorded>, AppendError> {
    let seqs: Vec<i64> = a.sequences().collect();
    let types: Vec<&str> = a.events.iter().map(|e| e.event_type.as_str()).collect();
    let versions: Vec<&str> = a.events.iter().map(|e| e.event_version.as_str()).collect();
    let payloads: Vec<&Value> = a.events.iter().map(|e| &e.payload).collect();
    let resources: Vec<&Value> = a.events.iter().map(|e| &e.resource).collect();
    let rows = sqlx::query(INSERT_ONE)
        .bind(&a.ids)
        .bind(a.customer_id)
        .bind(&a.aggregate_type)
        .bind(a.aggregate_id)
        .bind(&seqs)
        .bind(&types)
        .bind(&versions)
        .bind(&payloads)
        .bind(&a.metadata)
        .bind(&resources)
        .fetch_all(db)
        .await
        .map_err(classify)?;
    let mut recorded = rows
        .iter()
        .map(to_recorded)
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    recorded.sort_by_key(|r| r.sequence);
    Ok(recorded)
}

/// Every command's first event with `ON CONFLICT DO NOTHING`, then the other events of the
/// commands whose first event went in (`rest` reads `firsts`' rows, so it runs after it and a
/// command's events keep their order in `global_position`).
const INSERT_BATCH: &str = "WITH input AS ( \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::uuid[], \
             $6::bigint[], $7::text[], $8::text[], $9::jsonb[], $10::jsonb[], $11::jsonb[]) \
             WITH ORDINALITY AS e(id, first_id, customer, agg_type, agg_id, seq, typ, ver, \
                                  payload, metadata, resource, ord) \
     ), firsts AS ( \
         INSERT INTO events (event_id, customer_id, aggregate_type, aggregate_id, sequence, \
             event_type, event_version, payload, metadata, resource) \
         SELECT id, customer, agg_type, agg_id, seq, typ, ver, payload, metadata, resource \
         FROM input WHERE id = first_id ORDER BY ord \
         ON CONFLICT (aggregate_type, aggregate_id, sequence) DO NOTHING \
         RETURNING event_id, sequence, global_position, recorded_at \
     ), rest AS ( \
         INSERT INTO events (event_id, customer_id, aggregate_type, aggregate_id, sequence, \
             event_type, event_version, payload, metadata, resource) \
         SELECT i.id, i.customer, i.agg_type, i.agg_id, i.seq, i.typ, i.ver, i.payload, \
             i.metadata, i.resource \
         FROM input i JOIN firsts f ON f.event_id = i.first_id \
         WHERE i.id <> i.first_id ORDER BY i.ord \
         RETURNING event_id, sequence, global_position, recorded_at \
     ) \
     SELECT event_id, sequence, global_position, recorded_at FROM firsts \
     UNION ALL SELECT event_id, sequence, global_position, recorded_at FROM rest";

/// Writes a batch; the recorded events by the first event id of their command (commands that
/// collided are absent).
async fn insert_batch(
    pool: &PgPool,
    batch: &[Job],
) -> Result<HashMap<Uuid, Vec<Recorded>>, sqlx::Error> {
    let n: usize = batch.iter().map(|j| j.append.events.len()).sum();
    let mut ids = Vec::with_capacity(n);
    let mut firsts = Vec::with_capacity(n);
    let mut customers = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut aggregates = Vec::with_capacity(n);
    let mut seqs = Vec::with_capacity(n);
    let mut event_types = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    let mut metadata = Vec::with_capacity(n);
    let mut resources = Vec::with_capacity(n);
    for a in batch.iter().map(|j| &j.append) {
        for ((e, id), seq) in a.events.iter().zip(&a.ids).zip(a.sequences()) {
            ids.push(*id);
            firsts.push(a.ids[0]);
            customers.push(a.customer_id);
            types.push(a.aggregate_type.as_str());
            aggregates.push(a.aggregate_id);
            seqs.push(seq);
            event_types.push(e.event_type.as_str());
            versions.push(e.event_version.as_str());
            payloads.push(&e.payload);
            metadata.push(&a.metadata);
            resources.push(&e.resource);
        }
    }
    let rows = sqlx::query(INSERT_BATCH)
        .bind(&ids)
        .bind(&firsts)
        .bind(&customers)
        .bind(&types)
        .bind(&aggregates)
        .bind(&seqs)
        .bind(&event_types)
        .bind(&versions)
        .bind(&payloads)
        .bind(&metadata)
        .bind(&resources)
        .fetch_all(pool)
        .await?;
    let first_of: HashMap<Uuid, Uuid> = ids.iter().copied().zip(firsts).collect();
    let mut by_command: HashMap<Uuid, Vec<Recorded>> = HashMap::new();
    for row in &rows {
        let r = to_recorded(row)?;
        let first = first_of.get(&r.event_id).copied().unwrap_or(r.event_id);
        by_command.entry(first).or_default().push(r);
    }
    for rows in by_command.values_mut() {
        rows.sort_by_key(|r| r.sequence);
    }
    Ok(by_command)
}

fn to_recorded(r: &sqlx::postgres::PgRow) -> Result<Recorded, sqlx::Error> {
    Ok(Recorded {
        event_id: r.try_get(0)?,
        sequence: r.try_get(1)?,
        global_position: r.try_get(2)?,
        recorded_at: r.try_get(3)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(aggregate: Uuid, n: u64) -> Job {
        let event = NewEvent {
            event_type: "probe_recorded".into(),
            event_version: "1.0".into(),
            payload: serde_json::json!({ "n": n }),
            resource: Value::Null,
        };
        let append = Append::new("probe", aggregate, Uuid::nil(), 0, vec![event], Value::Null);
        Job {
            append,
            done: oneshot::channel().0,
        }
    }

    fn numbers(jobs: &[Job]) -> Vec<u64> {
        jobs.iter()
            .map(|j| j.append.events[0].payload["n"].as_u64().unwrap())
            .collect()
    }

    /// A second append of an aggregate already in the batch is held back with everything
    /// gathered after it, in order, and the queue is not read past it: what one writer
    /// gathered is written in the order it came. (Across the two writers there is no order:
    /// two appends of one aggregate at once are decided by the sequence key, as ever.)
    #[test]
    fn a_held_back_append_keeps_its_place_and_stops_the_gathering() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let (tx, mut rx) = mpsc::unbounded_channel();
        tx.send(job(c, 5)).unwrap();
        let held = VecDeque::from([job(a, 1), job(b, 2), job(a, 3), job(c, 4)]);
        let mut carry = VecDeque::new();
        let batch = gather(held, Some(&mut rx), &mut carry);
        assert_eq!(numbers(&batch), [1, 2]);
        assert_eq!(numbers(carry.make_contiguous()), [3, 4]);
        assert_eq!(numbers(&[rx.try_recv().unwrap()]), [5], "left in the queue");

        // The next batch starts with them, then reads the queue.
        tx.send(job(b, 6)).unwrap();
        let held = std::mem::take(&mut carry);
        let batch = gather(held, Some(&mut rx), &mut carry);
        assert_eq!(numbers(&batch), [3, 4, 6]);
        assert!(carry.is_empty());
    }
}
