//! Reading from a Postgres streaming replica (`DATABASE_READ_URL`) without reading stale data
//! a customer could notice.
//!
//! - **Which server:** a watcher samples the primary's WAL position and the replica's replay
//!   position every [`SAMPLE_EVERY`]. The replica is used while it has caught up with a
//!   primary position sampled at most `max_lag` ago; when it falls further behind, or stops
//!   answering, every read goes to the primary until it is back.
//! - **Read-your-writes:** after a command of a customer succeeds, the command API records the
//!   primary's WAL position in Redis as that customer's *write mark* ([`mark_writes`]). A read
//!   of that customer goes to the replica once its replay position has passed the mark; it
//!   waits for that at most `wait`, then reads the primary. A customer with no recent write
//!   (marks live [`MARK_TTL`]) reads the replica at once. If Redis cannot be asked, the read
//!   goes to the primary: never a stale read for want of a mark.
//!
//! Positions are LSNs as bytes since `0/0` (`pg_lsn - '0/0'`), which orders them as numbers.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Mutex};
use uuid::Uuid;
use vbin_http::auth::Caller;

/// How often the watcher compares the two servers' positions.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// How long a customer's write mark lives: well past any lag the replica is used with.
pub const MARK_TTL: Duration = Duration::from_secs(60);
/// Timeout of one Redis call.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// Why a write mark could not be recorded or read.
#[derive(Debug, thiserror::Error)]
pub enum MarkError {
    /// Redis refused or failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer in time.
    #[error("redis did not answer within {REDIS_TIMEOUT:?}")]
    Timeout,
    /// The primary's position could not be read.
    #[error("reading the primary's WAL position: {0}")]
    Postgres(#[from] sqlx::Error),
}

/// The primary's WAL position now (bytes since `0/0`).
pub async fn current_lsn(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")
        .fetch_one(pool)
        .await
}

// KEYS[1] the mark; ARGV: 1 position, 2 TTL ms. Keeps the highest position (two commands of
// one customer may record theirs out of order).
const SET_IF_HIGHER: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local new = tonumber(ARGV[1])
if new > cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
"#;

/// Customers' write marks in Redis (`<prefix>wmark:<customer id>`).
#[derive(Clone)]
pub struct WriteMarks {
    client: redis::Client,
    prefix: Arc<str>,
    conn: Arc<Mutex<Option<ConnectionManager>>>,
    script: Arc<redis::Script>,
}

impl WriteMarks {
    /// Marks on `client`, keys starting with the installation's `prefix` (connects lazily).
    pub fn new(client: redis::Client, prefix: &str) -> Self {
        Self {
            client,
            prefix: prefix.into(),
            conn: Arc::default(),
            script: Arc::new(redis::Script::new(SET_IF_HIGHER)),
        }
    }

    fn key(&self, customer: Uuid) -> String {
        format!("{}wmark:{customer}", self.prefix)
    }

    async fn connection(&self) -> Result<ConnectionManager, MarkError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(REDIS_TIMEOUT)
            .set_response_timeout(REDIS_TIMEOUT)
            .set_number_of_retries(1);
        let c = timed(ConnectionManager::new_with_config(
            self.client.clone(),
            config,
        ))
        .await?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Records that `customer` wrote up to `lsn`.
    pub async fn mark(&self, customer: Uuid, lsn: i64) -> Result<(), MarkError> {
        let mut c = self.connection().await?;
        let mut inv = self.script.key(self.key(customer));
        inv.arg(lsn).arg(MARK_TTL.as_millis() as u64);
        timed(inv.invoke_async::<i64>(&mut c)).await.map(|_| ())
    }

    /// The position `customer` last wrote up to, if within [`MARK_TTL`].
    pub async fn get(&self, customer: Uuid) -> Result<Option<i64>, MarkError> {
        let mut c = self.connection().await?;
        timed(
            redis::cmd("GET")
                .arg(self.key(customer))
                .query_async::<Option<i64>>(&mut c),
        )
        .await
    }
}

async fn timed<T>(
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, MarkError> {
    match tokio::time::timeout(REDIS_TIMEOUT, fut).await {
        Ok(r) => r.map_err(MarkError::Redis),
        Err(_) => Err(MarkError::Timeout),
    }
}

/// What the command API needs to record its customers' writes.
#[derive(Clone)]
pub struct WriteMarker {
    /// The primary.
    pub primary: PgPool,
    /// Where the marks go.
    pub marks: WriteMarks,
}

/// Middleware of the command API: after a customer's successful write (POST, PUT, PATCH,
/// DELETE answered 2xx), records the primary's WAL position as that customer's write mark,
/// before the answer leaves, so the customer's next read cannot miss the write.
pub async fn mark_writes(State(m): State<WriteMarker>, req: Request, next: Next) -> Response {
    let writes = !matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    let customer = writes
        .then(|| {
            req.extensions()
                .get::<Caller>()
                .and_then(Caller::customer_id)
        })
        .flatten();
    let res = next.run(req).await;
    if let (Some(c), true) = (customer, res.status().is_success()) {
        let marked = async {
            let lsn = current_lsn(&m.primary).await?;
            m.marks.mark(c.as_uuid(), lsn).await
        };
        if let Err(e) = marked.await {
            // The customer's reads find no mark: those within the replica's lag may miss this
            // write (the lag stays bounded by the watcher's `max_lag`).
            metrics::counter!("vbin_write_marks_failed_total").increment(1);
            tracing::warn!(customer_id = %c, error = %e, "recording the customer's write mark failed");
        }
    }
    res
}

/// How the replica is used.
#[derive(Clone, Copy, Debug)]
pub struct ReplicaSettings {
    /// Longest a read of a customer who just wrote waits for the replica before it reads the
    /// primary.
    pub wait: Duration,
    /// The replica is used while it is at most this far behind the primary.
    pub max_lag: Duration,
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        Self {
            wait: Duration::from_millis(200),
            max_lag: Duration::from_secs(5),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Position {
    /// The replica's replay position (its own WAL position once it is promoted).
    replayed: i64,
    /// Whether it is close enough behind the primary to be read.
    usable: bool,
}

/// The two servers a query may read, and the choice between them.
#[derive(Clone)]
pub struct ReadPools {
    primary: PgPool,
    replica: Option<Replica>,
}

#[derive(Clone)]
struct Replica {
    pool: PgPool,
    marks: WriteMarks,
    settings: ReplicaSettings,
    position: watch::Receiver<Position>,
}

/// Feeds the [`ReadPools`]' view of the replica; run it as a task ([`ReplicaWatch::run`]).
pub struct ReplicaWatch {
    primary: PgPool,
    replica: PgPool,
    settings: ReplicaSettings,
    tx: watch::Sender<Position>,
}

impl ReadPools {
    /// Reads always go to `primary`.
    pub fn primary_only(primary: PgPool) -> Self {
        Self {
            primary,
            replica: None,
        }
    }

    /// Reads go to `replica` when it is fresh enough ([`ReadPools::for_customer`]); the
    /// returned watcher must run for the replica to be used at all.
    pub fn with_replica(
        primary: PgPool,
        replica: PgPool,
        marks: WriteMarks,
        settings: ReplicaSettings,
    ) -> (Self, ReplicaWatch) {
        let (tx, position) = watch::channel(Position {
            replayed: 0,
            usable: false,
        });
        let pools = Self {
            primary: primary.clone(),
            replica: Some(Replica {
                pool: replica.clone(),
                marks,
                settings,
                position,
            }),
        };
        (
            pools,
            ReplicaWatch {
                primary,
                replica,
                settings,
                tx,
            },
        )
    }

    /// The primary (for reads that must see the latest, and for admin reads).
    pub fn primary(&self) -> &PgPool {
        &self.primary
    }

    /// Where a read of `customer` goes: the replica if it is fresh enough and, when the
    /// customer wrote recently, has replayed that write (waiting up to `wait`); else the
    /// primary.
    pub async fn for_customer(&self, customer: Uuid) -> &PgPool {
        let Some(r) = &self.replica else {
            return &self.primary;
        };
        let (replica, reason) = r.choose(customer).await;
        let server = if replica { "replica" } else { "primary" };
        metrics::counter!("vbin_reads_total", "server" => server, "reason" => reason).increment(1);
        if replica {
            &r.pool
        } else {
            &self.primary
        }
    }
}

impl Replica {
    /// (`true` for the replica, why).
    async fn choose(&self, customer: Uuid) -> (bool, &'static str) {
        if !self.position.borrow().usable {
            return (false, "replica_behind");
        }
        let mark = match self.marks.get(customer).await {
            Ok(None) => return (true, "no_recent_write"),
            Ok(Some(m)) => m,
            Err(_) => return (false, "no_write_mark"),
        };
        let mut rx = self.position.clone();
        let caught_up = tokio::time::timeout(
            self.settings.wait,
            rx.wait_for(|p| !p.usable || p.replayed >= mark),
        )
        .await;
        match caught_up {
            Ok(Ok(p)) if p.usable => (true, "write_replayed"),
            Ok(_) => (false, "replica_behind"),
            Err(_) => (false, "write_not_replayed"),
        }
    }
}

impl ReplicaWatch {
    /// Samples both servers every [`SAMPLE_EVERY`] until `shutdown`.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        // Primary positions sampled recently, oldest first.
        let mut samples: VecDeque<(Instant, i64)> = VecDeque::new();
        let mut caught_up_at: Option<Instant> = None;
        let mut was_usable = false;
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            }
            let now = Instant::now();
            match current_lsn(&self.primary).await {
                Ok(p) => samples.push_back((now, p)),
                Err(e) => tracing::debug!(error = %e, "sampling the primary's WAL position"),
            }
            while samples
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > self.settings.max_lag * 2)
            {
                samples.pop_front();
            }
            let replayed: Result<i64, _> = sqlx::query_scalar(
                "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                 ELSE pg_current_wal_lsn() END - '0/0'::pg_lsn)::bigint",
            )
            .fetch_one(&self.replica)
            .await;
            let position = match replayed {
                Ok(r) => {
                    // The latest primary sample the replica has passed.
                    if let Some((t, _)) = samples.iter().rev().find(|(_, p)| *p <= r) {
                        caught_up_at = Some(caught_up_at.map_or(*t, |c| c.max(*t)));
                    }
                    let usable = caught_up_at
                        .is_some_and(|t| now.duration_since(t) <= self.settings.max_lag);
                    Position {
                        replayed: r,
                        usable,
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "sampling the replica's replay position");
                    Position {
                        replayed: 0,
                        usable: false,
                    }
                }
            };
            if position.usable != was_usable {
                was_usable = position.usable;
                if position.usable {
                    tracing::info!("the read replica has caught up: reads use it");
                } else {
                    tracing::warn!(max_lag = ?self.settings.max_lag, "the read replica is down or too far behind: reads use the primary");
                }
            }
            metrics::gauge!("vbin_read_replica_usable").set(if position.usable {
                1.0
            } else {
                0.0
            });
            self.tx.send_replace(position);
        }
    }
}
