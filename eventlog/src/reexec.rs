//! Safe re-execution of a request with an `Idempotency-Key` whose first attempt was cut off
//! (its process died between committing commands and recording the response).
//!
//! The key's record holds a seed (a UUIDv7 drawn when the key is first claimed). While the
//! request runs, [`new_id`] derives the ids of new aggregates from the seed, and every command
//! gets the once-key `request:<seed>:<aggregate type>:<id>` (see
//! [`crate::CommandMeta::request_seed`]). A retry that takes over the abandoned record runs the
//! handler again with the same seed: it creates the same ids, the commands the first attempt
//! committed are recognised by their once-keys and answered with the aggregate's current state,
//! and only what was not committed is. Without a key, ids are fresh UUIDv7s.

use std::sync::atomic::{AtomicU64, Ordering};
use uuid::Uuid;

struct Seeded {
    seed: Uuid,
    next: AtomicU64,
}

tokio::task_local! {
    static SEEDED: Seeded;
}

/// Runs `f` (the request's handler) with ids and once-keys derived from `seed`.
pub async fn with_seed<F: std::future::Future>(seed: Uuid, f: F) -> F::Output {
    SEEDED
        .scope(
            Seeded {
                seed,
                next: AtomicU64::new(0),
            },
            f,
        )
        .await
}

/// The current request's seed, if it carries an `Idempotency-Key`.
pub fn seed() -> Option<Uuid> {
    SEEDED.try_with(|s| s.seed).ok()
}

/// The id of a new aggregate: the n-th id derived from the request's seed, else a fresh UUIDv7.
pub fn new_id() -> Uuid {
    SEEDED
        .try_with(|s| derive(s.seed, s.next.fetch_add(1, Ordering::Relaxed)))
        .unwrap_or_else(|_| Uuid::now_v7())
}

/// A seed for the commands one event causes (a flow action that creates several aggregates):
/// `base`'s time with random bits taken from `key`, the same on every redelivery, so the
/// handler running again under [`with_seed`] creates the same ids and its committed commands
/// are recognised.
pub fn seed_for(base: Uuid, key: &str) -> Uuid {
    const LOW: u64 = (1 << 62) - 1;
    let (hi, _) = base.as_u64_pair();
    let (_, lo) = Uuid::new_v5(&base, key.as_bytes()).as_u64_pair();
    Uuid::from_u64_pair(hi, (lo & LOW) | (0b10 << 62))
}

/// `seed` plus `n` in its 62 random low bits: still a UUIDv7 with the seed's timestamp, ordered
/// within the request like ids drawn one after another.
fn derive(seed: Uuid, n: u64) -> Uuid {
    const LOW: u64 = (1 << 62) - 1;
    let (hi, lo) = seed.as_u64_pair();
    let lo = ((lo & LOW).wrapping_add(n) & LOW) | (0b10 << 62);
    Uuid::from_u64_pair(hi, lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_v7_distinct_ordered_and_reproducible() {
        let seed = Uuid::now_v7();
        let ids: Vec<Uuid> = (0..100).map(|n| derive(seed, n)).collect();
        assert!(ids.iter().all(|id| id.get_version_num() == 7));
        assert!(ids
            .iter()
            .all(|id| id.get_variant() == uuid::Variant::RFC4122));
        assert_eq!(ids[0], seed);
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(ids, (0..100).map(|n| derive(seed, n)).collect::<Vec<_>>());
        assert_eq!(
            ids.iter().collect::<std::collections::HashSet<_>>().len(),
            100
        );
    }

    #[tokio::test]
    async fn new_id_follows_the_seed_inside_and_is_fresh_outside() {
        let seed = Uuid::now_v7();
        let a = with_seed(seed, async { (new_id(), new_id(), self::seed()) }).await;
        let b = with_seed(seed, async { (new_id(), new_id(), self::seed()) }).await;
        assert_eq!(a, b);
        assert_eq!(a.2, Some(seed));
        assert_ne!(new_id(), new_id());
        assert_eq!(self::seed(), None);
    }
}
