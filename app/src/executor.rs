//! Runs a command against an aggregate: load (cqrs-es, with upcasters and snapshots), decide,
//! append in one transaction; on a concurrency conflict reload and decide again, a bounded
//! number of times, then report the conflict (HTTP 409).

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{AggregateError, DomainEvent, EventStore};
use std::any::Any;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;
use vbin_domain::{
    Activeflow, Ai, Aicall, BillingAccount, Call, Campaign, Conference, Customer, DomainError,
    Flow, Number, Outdial, Outplan, Queue, Recording, ResourceView, Target, Transcribe, Trunk,
};
use vbin_event_schema::CustomerId;
use vbin_eventlog::{AppendError, CommandMeta, NewEvent, PgEventRepository, Recorded};

/// How aggregates are stored: their owner and snapshot policy.
pub trait StoredAggregate:
    ResourceView<Error = DomainError, Services = ()> + Clone + Send + Sync + 'static
{
    /// Take a snapshot every this many events (None: never; short-lived aggregates).
    const SNAPSHOT_EVERY: Option<usize>;
    /// The tenant owning this instance (None until created).
    fn owner(&self) -> Option<CustomerId>;
}

impl StoredAggregate for Customer {
    const SNAPSHOT_EVERY: Option<usize> = Some(100);
    fn owner(&self) -> Option<CustomerId> {
        self.id
    }
}

impl StoredAggregate for BillingAccount {
    const SNAPSHOT_EVERY: Option<usize> = Some(100);
    fn owner(&self) -> Option<CustomerId> {
        self.customer_id
    }
}

/// Implements `StoredAggregate` for aggregates with `id: Option<_>` and `customer_id`.
macro_rules! owned_by_customer_field {
    ($($agg:ty => $snap:expr),* $(,)?) => {$(
        impl StoredAggregate for $agg {
            const SNAPSHOT_EVERY: Option<usize> = $snap;
            fn owner(&self) -> Option<CustomerId> {
                self.id.map(|_| self.customer_id)
            }
        }
    )*};
}
// A campaign's snapshot holds its calls in flight (up to `max_concurrent_calls`, ~200 KB at
// 1,000): taken every 50 events it was written on nearly every round of dials or results.
// Loads are rare (a stale cached campaign catches up on the events it missed), so a longer
// replay on a cold load is the cheaper side.
owned_by_customer_field!(Call => None, Outplan => None, Outdial => None, Target => None, Campaign => Some(1000), Queue => Some(100), Transcribe => Some(100), Flow => Some(50), Activeflow => Some(100), Recording => None, Number => Some(100), Ai => Some(50), Aicall => Some(100), Trunk => Some(50), Conference => Some(100));

/// Why a command did not produce its events.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The aggregate refused it.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// Still conflicting after the retries.
    #[error("concurrent modification; retry the request")]
    Conflict,
    /// A uniqueness rule failed.
    #[error("{0} is already taken")]
    Taken(&'static str),
    /// A command with the same once-key was applied before (nothing was appended).
    #[error("already applied")]
    AlreadyApplied,
    /// Storage failed.
    #[error("event store unavailable")]
    Store(#[from] StoreError),
}

/// What failed in the event store (the cause is kept for the logs).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Postgres.
    #[error("database")]
    Database(#[from] sqlx::Error),
    /// Loading the aggregate (cqrs-es: connection, deserialization, upcasting).
    #[error("loading the aggregate")]
    Load(#[source] AggregateError<DomainError>),
    /// Encoding an event or a snapshot.
    #[error("encoding")]
    Encode(#[from] serde_json::Error),
}

/// The outcome of a command: the aggregate after it and the events it recorded.
#[derive(Debug)]
pub struct Executed<A> {
    /// State after the command.
    pub state: A,
    /// What was recorded (empty when the command changed nothing).
    pub recorded: Vec<Recorded>,
}

/// Executes commands against the Postgres event store.
///
/// Keeps recently used aggregates in memory (state and sequence) to skip the load. A cached
/// state can be stale only if another process appended meanwhile; then the append collides on
/// the sequence primary key and the command is decided again on the cached state caught up
/// with the events it missed. A refusal, or a command that changes nothing, decided on a
/// cached state appends nothing that could collide, so it is checked against the log first
/// (one primary-key probe): the cache never changes a decision.
#[derive(Clone)]
pub struct Executor {
    repo: PgEventRepository,
    cache: moka::sync::Cache<(&'static str, Uuid), Arc<dyn Any + Send + Sync>>,
    /// Commands on one aggregate run one at a time in this process (striped by id): without
    /// it, concurrent commands on a busy aggregate (a campaign) would collide on the sequence
    /// and burn their retries.
    stripes: Arc<[tokio::sync::Mutex<()>]>,
}

const STRIPES: usize = 1024;

/// Aggregates kept in memory per process.
const CACHE_CAPACITY: u64 = 100_000;

const MAX_ATTEMPTS: u32 = 8;

impl Executor {
    /// An executor over `repo`.
    pub fn new(repo: PgEventRepository) -> Self {
        Self::with_cache_capacity(repo, CACHE_CAPACITY)
    }

    /// An executor over `repo` that keeps at most `capacity` aggregates in memory.
    ///
    /// Least recently used goes first. Moka's default (TinyLFU) admits a new entry only if it
    /// looks more popular than the one it would evict: with the cache full of a campaign's
    /// 100,000 targets, each touched twice when created, every new call was refused and each of
    /// its next commands loaded it from the log again (3.5 loads per campaign call at 100,000
    /// targets, none at 10,000). Aggregates are used in bursts (a call's life, a round of
    /// dials), which recency serves.
    pub fn with_cache_capacity(repo: PgEventRepository, capacity: u64) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .time_to_idle(Duration::from_secs(600))
            .build();
        let stripes = (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect();
        Self {
            repo,
            cache,
            stripes,
        }
    }

    fn stripe(&self, kind: &'static str, id: Uuid) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (kind, id).hash(&mut h);
        &self.stripes[(h.finish() as usize) % self.stripes.len()]
    }

    fn cached<A: StoredAggregate>(&self, id: Uuid) -> Option<(A, usize)> {
        self.cache
            .get(&(A::TYPE, id))
            .and_then(|v| v.downcast_ref::<(A, usize)>().cloned())
    }

    /// The repository.
    pub fn repo(&self) -> &PgEventRepository {
        &self.repo
    }

    /// Loads an aggregate's current state (None if it has no events). With `tenant`, an
    /// aggregate owned by another customer is reported as absent.
    ///
    /// Exact, not a guess: a cached state is used only when its sequence is still the last one
    /// in the log (one index probe), which spares process managers from deserializing a large
    /// aggregate (a campaign's calls in flight) on every event.
    pub async fn load<A: StoredAggregate>(
        &self,
        id: Uuid,
        tenant: Option<CustomerId>,
    ) -> Result<Option<A>, ExecError> {
        self.inspect::<A, _>(id, tenant, A::clone).await
    }

    /// [`Executor::load`] without the copy: runs `f` on the current state where the cache
    /// holds it. For a process manager that needs a field or two of a large aggregate on every
    /// event (a campaign's 1,000 calls in flight were cloned for each hangup: 12 % of the
    /// platform's CPU in a campaign).
    pub async fn inspect<A: StoredAggregate, R>(
        &self,
        id: Uuid,
        tenant: Option<CustomerId>,
        f: impl FnOnce(&A) -> R,
    ) -> Result<Option<R>, ExecError> {
        let current = self.current::<A>(id).await?;
        let entry = current
            .downcast_ref::<(A, usize)>()
            .expect("cache entries are keyed by their aggregate type");
        Ok(visible(entry, tenant).map(f))
    }

    /// Applies the cache's pending admissions and evictions now (moka does them in batches);
    /// for tests of what stays cached.
    #[doc(hidden)]
    pub fn settle_cache(&self) {
        self.cache.run_pending_tasks();
    }

    /// Runs `f` on the state of `id` this process last cached, however old (None: not cached,
    /// or another customer's). No I/O. Only for a read that any state at least as new as a
    /// known one answers (a campaign's record of a call, written before the call existed, read
    /// on the call's hangup) and whose outcome is checked again by the command it leads to;
    /// anything else uses [`Executor::inspect`]. A campaign's cached state is usually a round
    /// of results behind while results are recorded, and catching up read and decoded that
    /// round again for every hangup.
    pub fn inspect_cached<A: StoredAggregate, R>(
        &self,
        id: Uuid,
        tenant: Option<CustomerId>,
        f: impl FnOnce(&A) -> R,
    ) -> Option<R> {
        let entry = self.cache.get(&(A::TYPE, id))?;
        visible(entry.downcast_ref::<(A, usize)>()?, tenant).map(f)
    }

    /// The current `(state, sequence)` of `id` (sequence 0: no events), shared with the cache.
    async fn current<A: StoredAggregate>(
        &self,
        id: Uuid,
    ) -> Result<Arc<dyn Any + Send + Sync>, ExecError> {
        // Read the cache, then probe: an entry is only ever inserted after its events
        // committed, so one without an event after its sequence is the current state.
        let entry = self.cache.get(&(A::TYPE, id));
        let stale = match entry
            .as_deref()
            .and_then(|e| e.downcast_ref::<(A, usize)>())
        {
            Some((state, seq)) => {
                let behind = self
                    .repo
                    .has_event_after(A::TYPE, id, *seq)
                    .await
                    .map_err(StoreError::from)?;
                if !behind {
                    return Ok(entry.clone().expect("the entry just read"));
                }
                Some((state.clone(), *seq))
            }
            None => None,
        };
        // Behind (another command committed since it was cached): fold on the events it
        // missed rather than loading the whole aggregate again.
        let (state, seq) = match stale {
            Some((state, seq)) => self.catch_up::<A>(id, state, seq).await?,
            None => self.load_ctx::<A>(id).await?,
        };
        let current: Arc<dyn Any + Send + Sync> = Arc::new((state, seq));
        if seq > 0 {
            self.cache.insert((A::TYPE, id), current.clone());
        }
        Ok(current)
    }

    /// `state` at `seq` brought up to date with the events after `seq` (exact: events are
    /// immutable and a cached state is only ever one that was committed at its sequence).
    async fn catch_up<A: StoredAggregate>(
        &self,
        id: Uuid,
        mut state: A,
        mut seq: usize,
    ) -> Result<(A, usize), ExecError> {
        // Boxed, like `load_ctx`: rarely taken, and inline its future (the log's read) would
        // make every caller's as large.
        Box::pin(async move {
            use cqrs_es::persist::PersistedEventRepository;
            let events = self
                .repo
                .get_last_events::<A>(&id.to_string(), seq)
                .await
                .map_err(|e| StoreError::Load(e.into()))?;
            for event in events {
                let event = vbin_event_schema::upcast::lift(event);
                let envelope = cqrs_es::EventEnvelope::<A>::try_from(event)
                    .map_err(|e| StoreError::Load(e.into()))?;
                seq = envelope.sequence;
                state.apply(envelope.payload);
            }
            Ok((state, seq))
        })
        .await
    }

    async fn load_ctx<A: StoredAggregate>(&self, id: Uuid) -> Result<(A, usize), ExecError> {
        // Boxed: rarely taken (the cache answers most loads), and inline its future (the log's
        // reads) would make every caller's as large (see `run`).
        Box::pin(async move {
            // Cache misses (and the rare re-decide from the log): a rate that climbs with the
            // work says the cache is too small for it.
            metrics::counter!("vbin_aggregate_loads_total", "aggregate" => A::TYPE).increment(1);
            let store = match A::SNAPSHOT_EVERY {
                Some(n) => PersistedEventStore::<_, A>::new_snapshot_store(self.repo.clone(), n),
                None => PersistedEventStore::<_, A>::new_event_store(self.repo.clone()),
            }
            .with_upcasters(vbin_event_schema::upcast::upcasters());
            let ctx = store
                .load_aggregate(&id.to_string())
                .await
                .map_err(StoreError::Load)?;
            Ok((ctx.aggregate, ctx.current_sequence))
        })
        .await
    }

    /// Executes `command` on aggregate `id`. `tenant` (when the caller is a customer) makes
    /// another customer's aggregate look absent (`NotFound`), so ids never leak across
    /// tenants. `owner` is the customer the events are recorded under.
    pub async fn execute<A: StoredAggregate>(
        &self,
        id: Uuid,
        owner: CustomerId,
        tenant: Option<CustomerId>,
        command: A::Command,
        meta: &CommandMeta,
    ) -> Result<Executed<A>, ExecError>
    where
        A::Command: Clone,
    {
        self.run(id, owner, tenant, command, meta, false).await
    }

    /// Like [`Executor::execute`] for an aggregate whose id was just generated (UUIDv7) and so
    /// cannot have events: the first attempt skips the load. Should the id exist after all, the
    /// append collides and the retry loads it as usual.
    pub async fn execute_new<A: StoredAggregate>(
        &self,
        id: Uuid,
        owner: CustomerId,
        command: A::Command,
        meta: &CommandMeta,
    ) -> Result<Executed<A>, ExecError>
    where
        A::Command: Clone,
    {
        self.run(id, owner, None, command, meta, true).await
    }

    async fn run<A: StoredAggregate>(
        &self,
        id: Uuid,
        owner: CustomerId,
        tenant: Option<CustomerId>,
        command: A::Command,
        meta: &CommandMeta,
        fresh: bool,
    ) -> Result<Executed<A>, ExecError>
    where
        A::Command: Clone,
    {
        // Boxed: this future holds the log's reads and the append (about 10 KB), and a handler
        // awaiting `execute` inline would be that large even on its paths that never execute a
        // command; the process managers' routes box their handler's future for every event
        // (allocated and copied for each, and faulting in fresh pages under load).
        Box::pin(async move {
            let _serial = self.stripe(A::TYPE, id).lock().await;
            // A request with an Idempotency-Key: the command's once-key (see
            // `vbin_eventlog::reexec`).
            let request_once = match meta.request_seed {
                Some(seed) if meta.once_keys.is_empty() => Some(CommandMeta {
                    once_keys: vec![format!("request:{seed}:{}:{id}", A::TYPE)],
                    ..meta.clone()
                }),
                _ => None,
            };
            let meta = request_once.as_ref().unwrap_or(meta);
            let mut attempt = 0;
            loop {
                attempt += 1;
                // A retry starts from the cached state (exact at its sequence, if older) caught
                // up with the events it missed: a busy aggregate (a campaign's 1,000 calls in
                // flight) is not loaded whole again on every conflict.
                let cached = if attempt > 1 {
                    match self.cached::<A>(id) {
                        Some((state, seq)) => Some(self.catch_up::<A>(id, state, seq).await?),
                        None => None,
                    }
                } else if fresh {
                    Some((A::default(), 0))
                } else {
                    self.cached::<A>(id)
                };
                let from_cache = attempt == 1 && cached.is_some() && !fresh;
                let (mut state, seq) = match cached {
                    Some(hit) => hit,
                    None => self.load_ctx::<A>(id).await?,
                };
                if let (Some(t), Some(o)) = (tenant, state.owner()) {
                    if t != o {
                        return Err(ExecError::Domain(DomainError::NotFound(A::TYPE)));
                    }
                }
                let before = state.clone();
                let sink = EventSink::<A>::default();
                let decided = state.handle(command.clone(), &(), &sink).await;
                let events = sink.collect().await;
                // A refusal or a command that changes nothing, decided on a cached state: no
                // append's conflict would reveal that another process has moved the aggregate on
                // (a call answered elsewhere, a refusal that no longer holds), so check, and
                // decide again on what it appended.
                if (decided.is_err() || events.is_empty())
                    && from_cache
                    && self
                        .repo
                        .has_event_after(A::TYPE, id, seq)
                        .await
                        .map_err(StoreError::from)?
                {
                    continue;
                }
                decided?;
                if events.is_empty() {
                    return Ok(Executed {
                        state,
                        recorded: vec![],
                    });
                }
                let new = to_new_events(before, &events)?;
                let last = seq + events.len();
                let snapshot = A::SNAPSHOT_EVERY
                    .filter(|n| last / n > seq / n)
                    .map(|_| serde_json::to_value(&state).map(|v| (v, last)))
                    .transpose()
                    .map_err(StoreError::from)?;
                match self
                    .repo
                    .append(A::TYPE, id, owner.as_uuid(), seq, new, meta, snapshot)
                    .await
                {
                    Ok(recorded) => {
                        self.cache
                            .insert((A::TYPE, id), Arc::new((state.clone(), last)));
                        metrics::counter!("vbin_commands_total", "aggregate" => A::TYPE, "outcome" => "ok").increment(1);
                        return Ok(Executed { state, recorded });
                    }
                    Err(AppendError::Conflict) if attempt < MAX_ATTEMPTS => {
                        // The cached entry stays: the retry catches it up.
                        metrics::counter!("vbin_command_conflicts_total", "aggregate" => A::TYPE)
                            .increment(1);
                        let jitter = rand::random::<u64>() % (2u64 << attempt).min(200);
                        tokio::time::sleep(Duration::from_millis(jitter)).await;
                    }
                    Err(AppendError::Conflict) => {
                        self.cache.invalidate(&(A::TYPE, id));
                        return Err(ExecError::Conflict);
                    }
                    Err(AppendError::Taken(what)) => return Err(ExecError::Taken(what)),
                    Err(AppendError::AlreadyApplied) if request_once.is_some() => {
                        // An earlier attempt of this request committed this command: answer with
                        // the aggregate as it is now.
                        self.cache.invalidate(&(A::TYPE, id));
                        let (state, _) = self.load_ctx::<A>(id).await?;
                        return Ok(Executed {
                            state,
                            recorded: vec![],
                        });
                    }
                    Err(AppendError::AlreadyApplied) => return Err(ExecError::AlreadyApplied),
                    Err(AppendError::Database(e)) => return Err(StoreError::from(e).into()),
                }
            }
        })
        .await
    }
}

/// The state of a `(state, sequence)` entry if it exists (sequence > 0) and, with `tenant`,
/// belongs to that customer: another customer's aggregate looks absent.
fn visible<A: StoredAggregate>(
    (state, seq): &(A, usize),
    tenant: Option<CustomerId>,
) -> Option<&A> {
    (*seq > 0 && tenant.is_none_or(|t| state.owner() == Some(t))).then_some(state)
}

/// Serializes events with the resource view after each (folding them onto the prior state).
fn to_new_events<A: StoredAggregate>(
    mut state: A,
    events: &[A::Event],
) -> Result<Vec<NewEvent>, ExecError> {
    events
        .iter()
        .map(|e| {
            state.apply(e.clone());
            Ok(NewEvent {
                event_type: e.event_type(),
                event_version: e.event_version(),
                payload: serde_json::to_value(e).map_err(StoreError::from)?,
                resource: state.resource_after(e),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vbin_domain::CallCommand;
    use vbin_event_schema::{CallId, CallStatus};

    /// A caller awaiting a command holds a pointer, not `run`'s state (the log's reads and the
    /// append): the process managers' routes box their handler's future for every event,
    /// whether or not it runs a command, and at 12-15 KB each that was allocated, copied
    /// and page-faulted for every route an event reached. Fails if `run` or `load_ctx` stops
    /// boxing its body.
    #[tokio::test]
    async fn awaiting_a_command_or_a_load_keeps_the_callers_future_small() {
        let pool = sqlx::PgPool::connect_lazy("postgres://127.0.0.1/unused").expect("a lazy pool");
        let executor = Executor::new(PgEventRepository::new(pool));
        let (id, customer, meta) = (
            Uuid::now_v7(),
            CustomerId(Uuid::now_v7()),
            CommandMeta::default(),
        );
        let command = CallCommand::LegEnded {
            leg: CallId(id),
            status: CallStatus::Canceled,
            at: chrono::Utc::now(),
        };
        let execute = executor.execute::<Call>(id, customer, None, command.clone(), &meta);
        let execute_new = executor.execute_new::<Call>(id, customer, command, &meta);
        let load = executor.load::<Call>(id, None);
        // 600, 584 and 1,256 bytes in a debug build. With `run` not boxed, `execute` is 5.8 KB
        // (11.9 KB in a release build); with `load_ctx` not boxed, `load` is 1.7 KB.
        let limit = 1536;
        for (what, size) in [
            ("execute", std::mem::size_of_val(&execute)),
            ("execute_new", std::mem::size_of_val(&execute_new)),
            ("load", std::mem::size_of_val(&load)),
        ] {
            assert!(size <= limit, "{what}'s future is {size} bytes");
        }
    }
}
