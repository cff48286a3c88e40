//! Redis cache-aside for single read-model rows.
//!
//! Keys are `<prefix>rm:<table>:<id>` (the prefix, `vbin:<installation>:`, keeps installations
//! sharing one Redis apart; what the log and `cache_invalidations` hold is the key without it),
//! values `{"v":version,"c":customer_id,"b":body}`. Readers fill
//! the cache after a miss; projections, after their commit, overwrite the key with a short-lived
//! **tombstone** `{"v":version,"t":1}` instead of deleting it. Every write goes through one Lua
//! script that refuses to replace a value with a lower version, so a reader that read Postgres
//! just before a projection commit cannot put the old row back after the tombstone (the classic
//! cache-aside race). A tombstone reads as a miss.
//!
//! Redis is optional at run time: every call has a short timeout, and after a failure the cache
//! is bypassed for a second (reads go to Postgres, logged), so an outage costs no latency.
//! Invalidations that could not reach Redis stay in `cache_invalidations` and are retried by
//! the sweeper ([`crate::runtime::sweep_invalidations`]) until Redis takes them, so no stale value
//! survives an outage.
//!
//! In front of Redis, each reading process keeps the rows it read in a [`near`] cache that
//! Redis's invalidation broadcasts keep exact, so a repeated hit costs no round trip.

mod near;
mod row;

pub use row::CachedRow;

use redis::aio::ConnectionManager;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::OnceCell;
use uuid::Uuid;

/// How long a filled entry lives.
pub const TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a tombstone lives: longer than any read that could race with it.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(60);
/// The version of a deleted row's tombstone (above any real version, exact in Lua's doubles).
pub const DELETED_VERSION: i64 = 1 << 52;
/// Timeout of one Redis call.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// How long the cache is bypassed after a failure.
const BACKOFF: Duration = Duration::from_secs(1);

// KEYS[1] key; ARGV: 1 value, 2 its version, 3 TTL ms, 4 "v" (a row) or "t" (a tombstone).
// Refused if the current entry is newer, or equally new unless it is a tombstone being replaced
// by the row of that version (the fresh row a tombstone asks for).
const SET_IF_NEWER: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, c = pcall(cjson.decode, cur)
  if ok and type(c) == 'table' and tonumber(c.v) then
    local cv, nv = tonumber(c.v), tonumber(ARGV[2])
    if cv > nv or (cv == nv and not (c.t and ARGV[4] == 'v')) then
      return 0
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"#;

#[derive(Deserialize)]
struct Stored {
    v: i64,
    c: Option<Uuid>,
    b: Option<Box<RawValue>>,
    t: Option<u8>,
}

/// Cache failures (callers log them and go on without the cache).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Redis answered with an error or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No answer in time.
    #[error("redis: timed out")]
    Timeout,
    /// Bypassed after a recent failure.
    #[error("redis: bypassed after a recent failure")]
    Bypassed,
}

/// The key of a row, without the installation's prefix (the cache adds it).
pub fn key(table: &str, id: Uuid) -> String {
    format!("{}{id}", key_prefix(table))
}

/// What every key of `table` starts with: [`key`] is this followed by the row's id (the
/// projection runtime composes keys in SQL as this prefix `||` the id's text, which Postgres
/// writes as `Uuid`'s `Display` does: lowercase, hyphenated).
pub fn key_prefix(table: &str) -> String {
    format!("rm:{table}:")
}

/// The read-model cache.
#[derive(Clone)]
pub struct Cache {
    client: redis::Client,
    prefix: Arc<str>,
    /// Set once: the manager reconnects by itself, so the hot path reads it without a lock.
    conn: Arc<OnceCell<ConnectionManager>>,
    bypass_until_ms: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    resynced_at: Arc<AtomicU64>,
    script: Arc<redis::Script>,
    /// Started by the first read: processes that only write never track.
    near: Arc<OnceLock<Arc<near::Near>>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Cache {
    /// A cache on `client` whose keys start with `prefix` (connects lazily: Redis may be down
    /// at start).
    pub fn new(client: redis::Client, prefix: &str) -> Self {
        Self {
            client,
            prefix: prefix.into(),
            conn: Arc::new(OnceCell::new()),
            bypass_until_ms: Arc::new(AtomicU64::new(0)),
            failures: Arc::new(AtomicU64::new(0)),
            resynced_at: Arc::new(AtomicU64::new(0)),
            script: Arc::new(redis::Script::new(SET_IF_NEWER)),
            near: Arc::new(OnceLock::new()),
        }
    }

    /// The Redis key of `key`: with the installation's prefix.
    pub fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    async fn connection(&self) -> Result<ConnectionManager, CacheError> {
        if now_ms() < self.bypass_until_ms.load(Ordering::Relaxed) {
            return Err(CacheError::Bypassed);
        }
        if let Some(c) = self.conn.get() {
            return Ok(c.clone());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(CALL_TIMEOUT)
            .set_response_timeout(CALL_TIMEOUT)
            .set_number_of_retries(1);
        // Concurrent first calls wait for one attempt; a failed attempt leaves it unset.
        self.conn
            .get_or_try_init(|| {
                self.guard(ConnectionManager::new_with_config(
                    self.client.clone(),
                    config,
                ))
            })
            .await
            .cloned()
    }

    /// Runs a Redis call with the timeout; a failure starts the bypass period.
    async fn guard<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, CacheError> {
        let res = match tokio::time::timeout(CALL_TIMEOUT, fut).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => CacheError::Redis(e),
            Err(_) => CacheError::Timeout,
        };
        self.bypass_until_ms
            .store(now_ms() + BACKOFF.as_millis() as u64, Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::SeqCst);
        Err(res)
    }

    fn near(&self) -> &near::Near {
        self.near
            .get_or_init(|| near::Near::start(&self.client, &self.prefix))
    }

    /// The cached row, `Ok(None)` on a miss or a tombstone: from this process's near cache
    /// when it holds it, else from Redis (and then kept near).
    pub async fn get(&self, table: &str, id: Uuid) -> Result<Option<CachedRow>, CacheError> {
        let near = self.near();
        if let Some(row) = near.get(table, id) {
            metrics::counter!("vbin_near_cache_hits_total").increment(1);
            return Ok(Some(row));
        }
        let ticket = near.ticket(id);
        let full = self.full(&key(table, id));
        let mut c = self.connection().await?;
        let raw: Option<String> = self
            .guard(redis::cmd("GET").arg(&full).query_async(&mut c))
            .await?;
        let row = raw
            .and_then(|r| serde_json::from_str::<Stored>(&r).ok())
            .and_then(|s| match (s.t, s.c, s.b) {
                (None, Some(c), Some(b)) => Some(CachedRow {
                    v: s.v,
                    c,
                    b: b.into(),
                }),
                _ => None,
            });
        if let (Some(row), Some(ticket)) = (&row, ticket) {
            near.keep(table, id, row.clone(), ticket);
        }
        Ok(row)
    }

    /// Whether this process's near cache holds the row (tests: a hit costs no round trip).
    #[doc(hidden)]
    pub fn near_holds(&self, table: &str, id: Uuid) -> bool {
        self.near.get().is_some_and(|n| n.get(table, id).is_some())
    }

    /// `Some(mark)` if this process saw Redis fail since the last [`Cache::resynced`]:
    /// invalidations may have been missed meanwhile, so the pending ones must be applied before a
    /// hit is trusted; then call `resynced(mark)`.
    pub fn needs_resync(&self) -> Option<u64> {
        let f = self.failures.load(Ordering::SeqCst);
        (f != self.resynced_at.load(Ordering::SeqCst)).then_some(f)
    }

    /// Stops trusting hits until the next resync (another process failed to invalidate).
    pub fn distrust(&self) {
        self.failures.fetch_add(1, Ordering::SeqCst);
    }

    /// Records that the pending invalidations were applied after the failures counted by `mark`
    /// (a failure during the resync keeps the cache in need of another).
    pub fn resynced(&self, mark: u64) {
        // The pending invalidations just applied reach the near cache as pushes a little
        // later: forget it all rather than serve from it meanwhile.
        if let Some(near) = self.near.get() {
            near.forget_all();
        }
        self.resynced_at.fetch_max(mark, Ordering::SeqCst);
    }

    /// Fills the cache after a miss (refused if a newer version or tombstone is there).
    pub async fn fill(&self, table: &str, id: Uuid, row: &CachedRow) -> Result<(), CacheError> {
        let mut c = self.connection().await?;
        let value = serde_json::to_string(row).unwrap_or_default();
        let mut inv = self.script.key(self.full(&key(table, id)));
        inv.arg(value)
            .arg(row.v)
            .arg(TTL.as_millis() as u64)
            .arg("v");
        self.guard(inv.invoke_async::<i64>(&mut c))
            .await
            .map(|_| ())
    }

    /// Tombstones `keys` (key, new version), in one round trip.
    pub async fn tombstone(&self, keys: &[(String, i64)]) -> Result<(), CacheError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut c = self.connection().await?;
        // Load once, then EVALSHA in a pipeline.
        let hash = self.script.get_hash().to_string();
        let mut pipe = redis::pipe();
        for (k, v) in keys {
            pipe.cmd("EVALSHA")
                .arg(&hash)
                .arg(1)
                .arg(self.full(k))
                .arg(format!("{{\"v\":{v},\"t\":1}}"))
                .arg(*v)
                .arg(TOMBSTONE_TTL.as_millis() as u64)
                .arg("t")
                .ignore();
        }
        match self.guard(pipe.query_async::<()>(&mut c)).await {
            Err(CacheError::Redis(e)) if e.kind() == redis::ErrorKind::NoScriptError => {
                self.guard(self.script.load_async(&mut c)).await?;
                self.bypass_until_ms.store(0, Ordering::Relaxed);
                self.guard(pipe.query_async::<()>(&mut c)).await
            }
            other => other,
        }
    }

    /// Deletes every key of `table` (after a replay swapped the table in).
    pub async fn purge_table(&self, table: &str) -> Result<u64, CacheError> {
        let mut c = self.connection().await?;
        let pattern = self.full(&format!("rm:{table}:*"));
        let mut cursor: u64 = 0;
        let mut deleted = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .guard(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c),
                )
                .await?;
            if !keys.is_empty() {
                deleted += self
                    .guard(redis::cmd("UNLINK").arg(&keys).query_async::<u64>(&mut c))
                    .await?;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}
