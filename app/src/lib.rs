//! vbin's application layer: transport-free use cases over the aggregates. The command API's
//! axum handlers and the process managers (campaign dialer, queues, billing, transcription,
//! webhooks) call the same functions here; none of them imports another's HTTP module.
//!
//! - [`Executor`]: load, decide, append with retries (the one write path of commands).
//! - [`App`]: the use cases (create calls, can-start-call funds check, queue join, ...) and the
//!   one path every command request takes: metadata -> execute -> state.
//! - [`transcription`]: what the media pipeline records.

pub mod ai;
pub mod billing;
pub mod calls;
pub mod executor;
pub mod flows;
pub mod funds;
pub mod numbers;
pub mod queues;
pub mod recordings;
pub mod seal;
pub mod together;
pub mod transcription;
pub mod trunks;

pub use executor::{ExecError, Executed, Executor, StoreError, StoredAggregate};

use sqlx::PgPool;
use uuid::Uuid;
use vbin_domain::DomainError;
use vbin_event_schema::CustomerId;
use vbin_eventlog::{Actor, CommandMeta, PgEventRepository};

/// Why a use case failed, transport-free: each API maps it to its protocol once.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The command failed (refused by the aggregate, conflict, store down).
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// A resource the use case needs does not exist (or is another tenant's).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The input is wrong in a way only the use case can tell (e.g. an unknown agent id).
    #[error("{0}")]
    Invalid(String),
    /// The resources are not in a state that allows it.
    #[error("{0}")]
    Conflict(String),
    /// The customer's balance cannot cover one minute of a call.
    #[error("the balance cannot cover one minute of a call; top up the billing account")]
    PaymentRequired,
    /// A limit of the customer's is reached (429).
    #[error("{0}")]
    Limit(String),
    /// Postgres failed outside the event store.
    #[error("database unavailable")]
    Database(#[from] sqlx::Error),
}

impl From<DomainError> for AppError {
    fn from(e: DomainError) -> Self {
        AppError::Exec(ExecError::Domain(e))
    }
}

/// Conversations with assistants a customer may have under way at once unless the platform
/// says otherwise.
pub const DEFAULT_MAX_LIVE_AICALLS: u32 = 20;

/// Who a command acts for: the tenant and the metadata its events carry.
#[derive(Clone, Debug)]
pub struct Acting {
    /// The tenant: owner of what is created, the only one whose aggregates are visible.
    pub customer: CustomerId,
    /// Actor, request, correlation and causation (and the request's once-key seed).
    pub meta: CommandMeta,
}

impl Acting {
    /// A command caused by a request of `actor` (request id `request_id`) for `customer`; a
    /// request with an `Idempotency-Key` carries its seed (see [`vbin_eventlog::reexec`]).
    pub fn request(actor: &Actor, request_id: &str, customer: CustomerId) -> Self {
        let mut meta = CommandMeta::from_request(actor, request_id, Some(customer.as_uuid()));
        meta.request_seed = vbin_eventlog::reexec::seed();
        Self { customer, meta }
    }

    /// A command of platform part `part` (a carrier, a process manager) for `customer`, not
    /// caused by an event: `correlation` ties what follows together (a SIP Call-ID, say).
    pub fn system(part: &'static str, customer: CustomerId, correlation: &str) -> Self {
        let mut meta = CommandMeta::caused_by(part, uuid::Uuid::now_v7(), correlation);
        meta.customer_id = Some(customer.as_uuid());
        Self { customer, meta }
    }
}

/// The application: the executor and the Postgres pool the use cases read lookup tables from.
#[derive(Clone)]
pub struct App {
    /// Runs commands.
    pub executor: Executor,
    /// Postgres (inline lookup tables).
    pub pool: PgPool,
    /// Seals engine keys (None: none can be kept).
    pub sealer: Option<std::sync::Arc<seal::Sealer>>,
    /// Conversations with assistants a customer may have under way.
    pub max_live_aicalls: u32,
    /// Funds checks passed recently ([`funds`]).
    pub funds_checks: std::sync::Arc<funds::PassedChecks>,
}

impl App {
    /// The application over `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self {
            executor: Executor::new(PgEventRepository::new(pool.clone())),
            pool,
            sealer: None,
            max_live_aicalls: DEFAULT_MAX_LIVE_AICALLS,
            funds_checks: Default::default(),
        }
    }

    /// The same, sealing engine keys with `sealer`.
    pub fn with_sealer(mut self, sealer: seal::Sealer) -> Self {
        self.sealer = Some(std::sync::Arc::new(sealer));
        self
    }

    /// Aggregate `id` if it exists and belongs to `tenant`, else `NotFound(what)`.
    pub async fn find<A: StoredAggregate>(
        &self,
        id: Uuid,
        tenant: CustomerId,
        what: &'static str,
    ) -> Result<A, AppError> {
        self.executor
            .load::<A>(id, Some(tenant))
            .await?
            .ok_or(AppError::NotFound(what))
    }

    /// Runs `command` on the tenant's aggregate `id` (another tenant's is not found).
    pub async fn update<A: StoredAggregate>(
        &self,
        acting: &Acting,
        id: Uuid,
        command: A::Command,
    ) -> Result<A, AppError>
    where
        A::Command: Clone,
    {
        self.execute(acting, id, Some(acting.customer), command)
            .await
    }

    /// Runs `command` on aggregate `id` of the platform's (the admin acting for
    /// `acting.customer`, which owns it): no tenant check.
    pub async fn update_as_platform<A: StoredAggregate>(
        &self,
        acting: &Acting,
        id: Uuid,
        command: A::Command,
    ) -> Result<A, AppError>
    where
        A::Command: Clone,
    {
        self.execute(acting, id, None, command).await
    }

    async fn execute<A: StoredAggregate>(
        &self,
        acting: &Acting,
        id: Uuid,
        tenant: Option<CustomerId>,
        command: A::Command,
    ) -> Result<A, AppError>
    where
        A::Command: Clone,
    {
        let done = self
            .executor
            .execute::<A>(id, acting.customer, tenant, command, &acting.meta)
            .await?;
        Ok(done.state)
    }

    /// Creates aggregate `id` (just drawn with [`new_id`]) with `command`.
    pub async fn create<A: StoredAggregate>(
        &self,
        acting: &Acting,
        id: Uuid,
        command: A::Command,
    ) -> Result<A, AppError>
    where
        A::Command: Clone,
    {
        let done = self
            .executor
            .execute_new::<A>(id, acting.customer, command, &acting.meta)
            .await?;
        Ok(done.state)
    }
}

/// The id of a new aggregate (derived from the request's seed under an `Idempotency-Key`).
pub fn new_id() -> Uuid {
    vbin_eventlog::reexec::new_id()
}
