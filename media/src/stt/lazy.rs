//! A provider loaded on first use: a platform whose calls are never transcribed does not pay
//! for loading a model (Whisper takes a second or two and ~100 MB), and neither does every
//! start of the platform.
//!
//! [`Lazy::start`] returns a session at once; its audio waits in the session's queue (up to
//! [`super::AUDIO_QUEUE`] frames, 10 s) while the model loads on a blocking thread, then
//! flows to the loaded provider. A load that fails is reported on every session's results
//! and retried by the next session.

use super::{SttError, SttInput, SttProvider, SttSession, AUDIO_QUEUE};
use std::sync::Arc;
use tokio::sync::{mpsc, OnceCell};

type Loader = dyn Fn() -> Result<Arc<dyn SttProvider>, SttError> + Send + Sync;

/// A provider built by a loader the first time a session starts.
pub struct Lazy {
    name: &'static str,
    load: Arc<Loader>,
    loaded: Arc<OnceCell<Arc<dyn SttProvider>>>,
}

impl Lazy {
    /// A provider named `name` that `load` builds when first needed.
    pub fn new(
        name: &'static str,
        load: impl Fn() -> Result<Arc<dyn SttProvider>, SttError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name,
            load: Arc::new(load),
            loaded: Arc::new(OnceCell::new()),
        }
    }

    /// Whether the provider has been loaded.
    pub fn is_loaded(&self) -> bool {
        self.loaded.initialized()
    }
}

impl SttProvider for Lazy {
    fn name(&self) -> &'static str {
        self.name
    }

    fn start(&self, language: &str) -> Result<SttSession, SttError> {
        if let Some(p) = self.loaded.get() {
            return p.start(language);
        }
        let (audio, mut frames) = mpsc::channel::<SttInput>(AUDIO_QUEUE);
        let (out, results) = mpsc::channel(64);
        let (load, loaded, language) =
            (self.load.clone(), self.loaded.clone(), language.to_string());
        let name = self.name;
        tokio::spawn(async move {
            let provider = loaded
                .get_or_try_init(|| async {
                    let started = std::time::Instant::now();
                    let p = tokio::task::spawn_blocking(move || load())
                        .await
                        .map_err(|e| SttError::Recognizer(format!("loading panicked: {e}")))??;
                    tracing::info!(
                        provider = name,
                        secs = started.elapsed().as_secs_f64(),
                        "speech-to-text model loaded"
                    );
                    Ok::<_, SttError>(p)
                })
                .await;
            let session = match provider.and_then(|p| p.start(&language)) {
                Ok(s) => s,
                Err(e) => {
                    let _ = out.send(Err(e)).await;
                    return;
                }
            };
            let (inner_audio, mut inner_results) = (session.audio, session.results);
            tokio::spawn(async move {
                while let Some(f) = frames.recv().await {
                    if inner_audio.send(f).await.is_err() {
                        return;
                    }
                }
            });
            while let Some(r) = inner_results.recv().await {
                if out.send(r).await.is_err() {
                    return;
                }
            }
        });
        Ok(SttSession { audio, results })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stt::Segment;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Echoes the number of frames it got as one segment at the end.
    struct Counter;

    impl SttProvider for Counter {
        fn name(&self) -> &'static str {
            "counter"
        }
        fn start(&self, _: &str) -> Result<SttSession, SttError> {
            let (audio, mut rx) = mpsc::channel::<SttInput>(4);
            let (tx, results) = mpsc::channel(4);
            tokio::spawn(async move {
                let mut n = 0;
                while rx.recv().await.is_some() {
                    n += 1;
                }
                let _ = tx.send(Ok(Segment::final_text(n.to_string(), 0, 0))).await;
            });
            Ok(SttSession { audio, results })
        }
    }

    async fn run(p: &Lazy, frames: usize) -> Vec<Result<Segment, SttError>> {
        let mut s = p.start("en-US").unwrap();
        for _ in 0..frames {
            let _ = s.audio.send(vec![0; 320].into()).await;
        }
        drop(s.audio);
        let mut got = Vec::new();
        while let Some(r) = s.results.recv().await {
            got.push(r);
        }
        got
    }

    #[tokio::test]
    async fn loads_once_on_first_use_and_keeps_every_frame() {
        let loads = Arc::new(AtomicUsize::new(0));
        let l = loads.clone();
        let p = Lazy::new("counter", move || {
            l.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(100));
            Ok(Arc::new(Counter) as Arc<dyn SttProvider>)
        });
        assert!(!p.is_loaded());
        let (a, b) = tokio::join!(run(&p, 30), run(&p, 7));
        assert_eq!(a[0].as_ref().unwrap().text, "30");
        assert_eq!(b[0].as_ref().unwrap().text, "7");
        assert!(p.is_loaded());
        assert_eq!(run(&p, 3).await[0].as_ref().unwrap().text, "3");
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_load_is_every_sessions_error_and_is_retried() {
        let loads = Arc::new(AtomicUsize::new(0));
        let l = loads.clone();
        let p = Lazy::new("broken", move || {
            l.fetch_add(1, Ordering::SeqCst);
            Err(SttError::Recognizer("no model".into()))
        });
        let got = run(&p, 2).await;
        assert!(matches!(&got[..], [Err(SttError::Recognizer(m))] if m == "no model"));
        run(&p, 2).await;
        assert_eq!(loads.load(Ordering::SeqCst), 2);
        assert!(!p.is_loaded());
    }
}
