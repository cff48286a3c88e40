//! The near cache: an in-process copy of the rows this process read from Redis, so a hit
//! costs no round trip.
//!
//! It is kept exact by Redis itself: one RESP3 connection per process asks for
//! `CLIENT TRACKING ON BCAST PREFIX <prefix>rm:`, so every write to a row key (a fill, a
//! projection's tombstone, an expiry, a flush) is pushed to it as an invalidation, whoever
//! wrote it. Entries are used only while that connection is up; when it drops (or stops
//! answering its PING) everything is forgotten and reads go to Redis until it is back.
//!
//! The race every client-side cache must close: a reader's GET is answered with the old value,
//! the key is then written and its invalidation arrives (on the other connection) before the
//! reader stores what it read. Each row id maps to a generation counter that an invalidation
//! bumps before removing the entry; a reader notes the generation (and the connection's
//! epoch) before its GET, stores, then checks them again and removes what it stored if either
//! moved. Whatever the interleaving, a value read before a write does not outlive that write's
//! invalidation.

use super::row::CachedRow;
use redis::{PushInfo, PushKind, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::time::Duration;
use uuid::Uuid;

/// How many bytes of rows a process keeps.
const CAPACITY_BYTES: u64 = 64 * 1024 * 1024;
/// An entry's longest life: a bound should an invalidation ever be missed.
const MAX_AGE: Duration = Duration::from_secs(600);
/// How often the tracking connection is checked: a Redis that hangs is noticed within this
/// plus the PING's timeout, and until then the rows it could not invalidate may be served.
const PING_EVERY: Duration = Duration::from_millis(250);
/// The PING's and the connection's timeout.
const TIMEOUT: Duration = Duration::from_millis(250);
/// Generation counters (rows share them by id: a shared bump only costs a miss).
const STRIPES: usize = 4096;

/// What a reader notes before its GET.
#[derive(Clone, Copy)]
pub(super) struct Ticket {
    epoch: u64,
    generation: u64,
    stripe: usize,
}

/// The near cache of one [`super::Cache`].
pub(super) struct Near {
    /// By row id alone (ids are UUIDs, unique across tables; the table is checked on a hit):
    /// a hit builds no key string. quick_cache rather than moka: a hit is a shard's read lock
    /// and a probe, where moka also logged each read for its eviction policy (at 10,000 rows
    /// read in turn, moka was 7.7 % of the query API's CPU, `docs/benchmarks.md`).
    rows: quick_cache::sync::Cache<Uuid, Arc<Held>, ByBytes>,
    /// The tracking connection is up and subscribed.
    live: AtomicBool,
    /// Bumped each time the tracking connection is lost (and on a resync).
    epoch: AtomicU64,
    generations: Box<[AtomicU64]>,
}

/// A row held, with its table (behind an `Arc`: a hit clones only the row).
struct Held {
    table: Box<str>,
    row: CachedRow,
    /// When it was stored (an entry older than [`MAX_AGE`] is not used).
    at: std::time::Instant,
}

/// An entry's weight: its bytes, roughly.
#[derive(Clone)]
struct ByBytes;

impl quick_cache::Weighter<Uuid, Arc<Held>> for ByBytes {
    fn weight(&self, _: &Uuid, h: &Arc<Held>) -> u64 {
        (64 + h.table.len() + h.row.b.get().len()) as u64
    }
}

/// Rows of about this size are expected (sizes the cache's tables, not a limit).
const TYPICAL_ROW_BYTES: u64 = 1024;

impl Near {
    /// A near cache fed by a tracking connection on `client` for keys starting with
    /// `prefix` (the connection runs on a task that ends when the cache is dropped).
    pub(super) fn start(client: &redis::Client, prefix: &str) -> Arc<Self> {
        let near = Arc::new(Self::new());
        let mut info = client.get_connection_info().clone();
        info.redis.protocol = redis::ProtocolVersion::RESP3;
        match redis::Client::open(info) {
            Ok(resp3) => {
                tokio::spawn(track(Arc::downgrade(&near), resp3, format!("{prefix}rm:")));
            }
            Err(e) => tracing::warn!(error = %e, "near cache off: no RESP3 client"),
        }
        near
    }

    /// Empty and offline until a tracking connection says otherwise.
    fn new() -> Self {
        Self {
            rows: quick_cache::sync::Cache::with_weighter(
                (CAPACITY_BYTES / TYPICAL_ROW_BYTES) as usize,
                CAPACITY_BYTES,
                ByBytes,
            ),
            live: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            generations: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The low bits of an id: random in UUIDv4 and v7 alike.
    fn stripe(id: Uuid) -> usize {
        (id.as_u128() % STRIPES as u128) as usize
    }

    /// Row `id` of `table`, if held and the tracking connection is up.
    pub(super) fn get(&self, table: &str, id: Uuid) -> Option<CachedRow> {
        if !self.live.load(SeqCst) {
            return None;
        }
        self.rows
            .get(&id)
            .filter(|h| &*h.table == table && h.at.elapsed() < MAX_AGE)
            .map(|h| h.row.clone())
    }

    /// Notes the state before a GET of row `id`; `None` while the tracking connection is down
    /// (what is read then must not be kept).
    pub(super) fn ticket(&self, id: Uuid) -> Option<Ticket> {
        // The epoch before `live`: `lost` clears `live` before it bumps the epoch, so a reader
        // that sees `live` either noted the old epoch (and its check fails) or the new one
        // after the connection came back.
        let epoch = self.epoch.load(SeqCst);
        if !self.live.load(SeqCst) {
            return None;
        }
        let stripe = Self::stripe(id);
        Some(Ticket {
            epoch,
            generation: self.generations[stripe].load(SeqCst),
            stripe,
        })
    }

    /// Keeps what a GET under `ticket` read, unless row `id` was written (or the connection
    /// lost) since the ticket was taken.
    pub(super) fn keep(&self, table: &str, id: Uuid, row: CachedRow, ticket: Ticket) {
        let unchanged = |n: &Self| {
            n.epoch.load(SeqCst) == ticket.epoch
                && n.generations[ticket.stripe].load(SeqCst) == ticket.generation
        };
        if !unchanged(self) {
            return;
        }
        let table = table.into();
        let at = std::time::Instant::now();
        self.rows.insert(id, Arc::new(Held { table, row, at }));
        // An invalidation bumps the generation before it removes: if it removed before the
        // insert, the bump shows here.
        if !unchanged(self) {
            self.rows.remove(&id);
        }
    }

    /// Row `id` was written.
    fn invalidate(&self, id: Uuid) {
        self.generations[Self::stripe(id)].fetch_add(1, SeqCst);
        self.rows.remove(&id);
    }

    /// A key of the tracked prefix was written: `<prefix>rm:<table>:<id>`.
    fn invalidate_key(&self, key: &[u8]) {
        let id = std::str::from_utf8(key)
            .ok()
            .and_then(|k| k.rsplit(':').next())
            .and_then(|id| Uuid::parse_str(id).ok());
        match id {
            Some(id) => self.invalidate(id),
            // Not a row's key: nothing held can be under it, but be safe.
            None => self.forget_all(),
        }
    }

    /// Forgets every row (a flush, a resync after an outage) without going offline.
    pub(super) fn forget_all(&self) {
        self.epoch.fetch_add(1, SeqCst);
        self.rows.clear();
    }

    /// The tracking connection is lost: nothing held can be trusted any more.
    fn lost(&self) {
        self.live.store(false, SeqCst);
        self.forget_all();
    }

    fn on_push(&self, push: PushInfo) -> bool {
        match push.kind {
            PushKind::Invalidate => {
                match push.data.first() {
                    Some(Value::Array(keys)) => {
                        for k in keys {
                            if let Value::BulkString(b) = k {
                                self.invalidate_key(b);
                            }
                        }
                    }
                    // A flush (FLUSHDB/FLUSHALL) invalidates everything.
                    _ => self.forget_all(),
                }
                true
            }
            PushKind::Disconnection => false,
            _ => true,
        }
    }
}

/// Holds the tracking connection up for as long as the near cache lives.
async fn track(near: Weak<Near>, client: redis::Client, prefix: String) {
    let mut logged = false;
    loop {
        let (tx, mut pushes) = tokio::sync::mpsc::unbounded_channel::<PushInfo>();
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(TIMEOUT)
            .set_response_timeout(TIMEOUT)
            .set_push_sender(tx);
        let subscribed = async {
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("CLIENT")
                .arg("TRACKING")
                .arg("ON")
                .arg("BCAST")
                .arg("PREFIX")
                .arg(&prefix)
                .query_async::<()>(&mut conn)
                .await?;
            Ok::<_, redis::RedisError>(conn)
        }
        .await;
        let Some(n) = near.upgrade() else { return };
        let mut conn = match subscribed {
            Ok(c) => c,
            Err(e) => {
                if !logged {
                    tracing::warn!(error = %e, "near cache off: no tracking connection to redis");
                    logged = true;
                }
                drop(n);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if logged {
            tracing::info!("near cache on again: redis tracking connection back");
        }
        n.live.store(true, SeqCst);
        drop(n);
        let mut tick = tokio::time::interval(PING_EVERY);
        loop {
            tokio::select! {
                push = pushes.recv() => {
                    let Some(n) = near.upgrade() else { return };
                    if !push.is_some_and(|p| n.on_push(p)) {
                        break;
                    }
                }
                _ = tick.tick() => {
                    if near.strong_count() == 0 {
                        return;
                    }
                    let ping = redis::cmd("PING");
                    let pong = tokio::time::timeout(TIMEOUT, ping.query_async::<()>(&mut conn));
                    if !matches!(pong.await, Ok(Ok(()))) {
                        break;
                    }
                }
            }
        }
        let Some(n) = near.upgrade() else { return };
        n.lost();
        tracing::warn!("near cache off: redis tracking connection lost");
        logged = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    const T: &str = "rm_calls";

    fn row(v: i64) -> CachedRow {
        CachedRow {
            v,
            c: Uuid::nil(),
            b: RawValue::from_string(format!("{{\"n\":{v}}}"))
                .unwrap()
                .into(),
        }
    }

    fn live() -> Near {
        let n = Near::new();
        n.live.store(true, SeqCst);
        n
    }

    fn read(n: &Near, id: Uuid, v: i64) {
        let t = n.ticket(id).unwrap();
        n.keep(T, id, row(v), t);
    }

    #[test]
    fn a_read_is_kept_for_its_table_and_a_write_takes_it_out() {
        let n = live();
        let k = Uuid::new_v4();
        read(&n, k, 1);
        assert_eq!(n.get(T, k).map(|r| r.v), Some(1));
        assert!(n.get("rm_flows", k).is_none(), "another table's row");
        n.invalidate(k);
        assert!(n.get(T, k).is_none());
    }

    #[test]
    fn a_read_overtaken_by_its_rows_invalidation_is_not_kept() {
        let n = live();
        let k = Uuid::new_v4();
        let t = n.ticket(k).unwrap();
        n.invalidate(k);
        n.keep(T, k, row(1), t);
        assert!(n.get(T, k).is_none());
        // Another row's reads go on being kept (unless it shares the stripe).
        let other = std::iter::repeat_with(Uuid::new_v4)
            .find(|o| Near::stripe(*o) != Near::stripe(k))
            .unwrap();
        let t = n.ticket(other).unwrap();
        n.invalidate(k);
        n.keep(T, other, row(1), t);
        assert!(n.get(T, other).is_some());
    }

    #[test]
    fn nothing_is_kept_or_served_across_a_lost_connection() {
        let n = live();
        let (k, j) = (Uuid::new_v4(), Uuid::new_v4());
        read(&n, k, 1);
        let before = n.ticket(j).unwrap();
        n.lost();
        assert!(n.get(T, k).is_none());
        assert!(n.ticket(j).is_none(), "no ticket while offline");
        n.live.store(true, SeqCst);
        n.keep(T, j, row(1), before);
        assert!(n.get(T, j).is_none(), "read before the loss kept after it");
        assert!(n.get(T, k).is_none());
    }

    #[test]
    fn pushes_name_keys_or_flush_everything() {
        let n = live();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        read(&n, a, 1);
        read(&n, b, 1);
        let key = format!("vbin:0123456789ab:rm:{T}:{a}");
        assert!(n.on_push(PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Array(vec![Value::BulkString(key.into_bytes())])],
        }));
        assert!(n.get(T, a).is_none() && n.get(T, b).is_some());
        assert!(n.on_push(PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Nil],
        }));
        assert!(n.get(T, b).is_none());
        assert!(!n.on_push(PushInfo {
            kind: PushKind::Disconnection,
            data: vec![],
        }));
    }
}
