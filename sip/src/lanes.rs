//! Work in order per key, keys in parallel: the dialog-state loop hands each call's database
//! writes (its reports to the call, its `sip_calls` state) to the call's lane instead of
//! awaiting them, so a slow or retried write of one call never holds up the ringing, answer or
//! BYE of the others, while one call's writes keep their order.

use futures::future::BoxFuture;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// The lanes, by key; a lane's task ends when its queue is empty.
pub(crate) struct Lanes<K> {
    lanes: Arc<Mutex<HashMap<K, mpsc::UnboundedSender<BoxFuture<'static, ()>>>>>,
}

impl<K> Clone for Lanes<K> {
    fn clone(&self) -> Self {
        Self {
            lanes: self.lanes.clone(),
        }
    }
}

impl<K> Default for Lanes<K> {
    fn default() -> Self {
        Self {
            lanes: Arc::default(),
        }
    }
}

impl<K: Hash + Eq + Clone + Send + 'static> Lanes<K> {
    /// Runs `work` after the work already queued for `key`.
    pub(crate) fn push(&self, key: K, work: BoxFuture<'static, ()>) {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let work = match lanes.get(&key) {
            // The lane's task takes it (it checks for more under this lock before ending).
            Some(tx) => match tx.send(work) {
                Ok(()) => return,
                Err(e) => e.0,
            },
            None => work,
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _ = tx.send(work);
        lanes.insert(key.clone(), tx);
        let all = self.lanes.clone();
        tokio::spawn(async move {
            loop {
                let next = match rx.try_recv() {
                    Ok(w) => Some(w),
                    Err(_) => {
                        let mut lanes = all.lock().unwrap_or_else(|p| p.into_inner());
                        // Nothing queued: end the lane, unless work came in meanwhile.
                        match rx.try_recv() {
                            Ok(w) => Some(w),
                            Err(_) => {
                                lanes.remove(&key);
                                None
                            }
                        }
                    }
                };
                match next {
                    Some(w) => w.await,
                    None => return,
                }
            }
        });
    }

    /// How many lanes have work.
    fn busy(&self) -> usize {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Waits until no lane has work (at most `within`); whether they all ran out.
    pub(crate) async fn idle(&self, within: std::time::Duration) -> bool {
        let until = tokio::time::Instant::now() + within;
        while self.busy() > 0 {
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::time::Duration;

    /// One key's work runs in order even when it waits; another key's is not held up by it.
    #[tokio::test]
    async fn a_keys_work_runs_in_order_and_other_keys_go_on() {
        let lanes = Lanes::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        for (key, i, wait) in [("a", 1, 200), ("a", 2, 0), ("b", 3, 0), ("a", 4, 0)] {
            let tx = tx.clone();
            lanes.push(
                key,
                async move {
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    let _ = tx.send(i);
                }
                .boxed(),
            );
        }
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(
                tokio::time::timeout(Duration::from_secs(2), rx.recv())
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        assert_eq!(got, [3, 1, 2, 4], "b first: a's first write waits");
        // Idle lanes are gone; a key gets a new lane when work comes again.
        assert!(lanes.idle(Duration::from_secs(1)).await);
        assert_eq!(lanes.busy(), 0);
        let tx2 = tx.clone();
        lanes.push("a", async move { tx2.send(5).unwrap() }.boxed());
        assert_eq!(rx.recv().await, Some(5));
    }
}
