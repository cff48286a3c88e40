//! Work done together: the commands a process manager sends to one busy aggregate (a
//! campaign's results, a customer's call charges), or the rows many handlers write to one table
//! (the sandbox carrier's timers), would otherwise run one at a time, one commit each, however
//! many handlers wait. Here the first waiting handler starts a task that records what is
//! waiting in one go, then what arrived meanwhile, until nothing waits; every handler gets the
//! outcome of the batch its item was in. Nothing waits for a batch to fill: alone, an item is
//! recorded at once; under load, batches grow with the load.
//!
//! The task is spawned, not run in the handler, so a handler that is dropped (a consumer
//! shutting down) cannot leave the others waiting forever.

use futures::FutureExt;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

type Answer = oneshot::Sender<Result<(), String>>;

/// Why an item's batch was not recorded (the cause is logged where it ran).
#[derive(Debug, thiserror::Error)]
#[error("recording together with others failed: {0}")]
pub struct TogetherError(pub String);

struct Waiting<T> {
    items: Vec<(T, Answer)>,
    recording: bool,
}

impl<T> Default for Waiting<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            recording: false,
        }
    }
}

/// Items waiting to be recorded together, by key (the aggregate).
pub struct Together<K, T> {
    waiting: Arc<Mutex<HashMap<K, Waiting<T>>>>,
}

impl<K, T> Clone for Together<K, T> {
    fn clone(&self) -> Self {
        Self {
            waiting: self.waiting.clone(),
        }
    }
}

impl<K, T> Default for Together<K, T> {
    fn default() -> Self {
        Self {
            waiting: Arc::default(),
        }
    }
}

impl<K, T> Together<K, T>
where
    K: Hash + Eq + Clone + Send + std::fmt::Display + 'static,
    T: Send + 'static,
{
    /// Records `item` with the others waiting for `key`, through `record` (called with one
    /// batch at a time per key); returns when its batch is recorded.
    pub async fn submit<F, Fut, E>(&self, key: K, item: T, record: F) -> Result<(), TogetherError>
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send,
        E: std::fmt::Display,
    {
        let (done, answer) = oneshot::channel();
        let lead = {
            let mut all = self.waiting.lock().expect("waiting");
            let w = all.entry(key.clone()).or_default();
            w.items.push((item, done));
            !std::mem::replace(&mut w.recording, true)
        };
        if lead {
            let waiting = self.waiting.clone();
            tokio::spawn(async move {
                loop {
                    let batch = {
                        let mut all = waiting.lock().expect("waiting");
                        let w = all.entry(key.clone()).or_default();
                        let batch = std::mem::take(&mut w.items);
                        if batch.is_empty() {
                            all.remove(&key);
                            return;
                        }
                        batch
                    };
                    let (items, answers): (Vec<T>, Vec<Answer>) = batch.into_iter().unzip();
                    metrics::histogram!("vbin_recorded_together").record(items.len() as f64);
                    // A panic in `record` is this batch's failure, not the task's end: the
                    // key would stay marked as recording with no task, and every later item
                    // of it (every sandbox timer, for one) would wait forever.
                    let recorded =
                        match std::panic::catch_unwind(AssertUnwindSafe(|| record(items))) {
                            Ok(fut) => AssertUnwindSafe(fut).catch_unwind().await,
                            Err(panic) => Err(panic),
                        };
                    let outcome = match recorded {
                        Ok(r) => r.map_err(|e| e.to_string()),
                        Err(_) => Err("recording panicked".to_string()),
                    }
                    .inspect_err(|e| {
                        tracing::warn!(key = %key, error = %e, "recording together failed; the items will be redelivered");
                    });
                    for a in answers {
                        let _ = a.send(outcome.clone());
                    }
                }
            });
        }
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(TogetherError(e)),
            Err(_) => Err(TogetherError("the recording task ended".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// While a batch is being recorded, the items that arrive wait and go in the next one;
    /// every submitter learns its own batch's outcome.
    #[tokio::test]
    async fn items_arriving_while_one_batch_records_go_together_in_the_next() {
        let together: Together<String, u32> = Together::default();
        let batches = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let calls = Arc::new(AtomicUsize::new(0));
        let record = {
            let (batches, calls) = (batches.clone(), calls.clone());
            move |items: Vec<u32>| {
                let (batches, calls) = (batches.clone(), calls.clone());
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let failed = items.contains(&13);
                    batches.lock().unwrap().push(items);
                    if failed {
                        Err("13")
                    } else {
                        Ok(())
                    }
                }
            }
        };
        let first = tokio::spawn({
            let (t, r) = (together.clone(), record.clone());
            async move { t.submit("a".into(), 0, r).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let rest: Vec<_> = (1..=20)
            .map(|i| {
                let (t, r) = (together.clone(), record.clone());
                tokio::spawn(async move { t.submit("a".into(), i, r).await })
            })
            .collect();
        assert!(first.await.unwrap().is_ok());
        let mut outcomes = vec![];
        for r in rest {
            outcomes.push(r.await.unwrap());
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "{:?}",
            batches.lock().unwrap()
        );
        assert_eq!(batches.lock().unwrap()[1].len(), 20);
        assert!(
            outcomes.iter().all(|o| o.is_err()),
            "the second batch had 13"
        );
        // Nothing left behind: a later item starts a new batch.
        assert!(together.submit("a".into(), 1, record).await.is_ok());
        assert!(together.waiting.lock().unwrap().is_empty());
    }

    /// A batch whose recording panics fails its items, and the key takes items again (before,
    /// the task ended with the key still marked as recording and later items waited forever).
    #[tokio::test]
    async fn a_panic_while_recording_fails_its_batch_and_the_next_item_is_recorded() {
        let together: Together<String, u32> = Together::default();
        let record = |items: Vec<u32>| async move {
            assert!(!items.contains(&13), "thirteen");
            Ok::<(), String>(())
        };
        let failed = together.submit("a".into(), 13, record).await;
        assert!(
            matches!(&failed, Err(TogetherError(e)) if e.contains("panicked")),
            "{failed:?}"
        );
        let next = tokio::time::timeout(
            Duration::from_secs(5),
            together.submit("a".into(), 1, record),
        )
        .await
        .expect("the next item is recorded, not left waiting");
        assert!(next.is_ok(), "{next:?}");
        assert!(together.waiting.lock().unwrap().is_empty());
    }
}
