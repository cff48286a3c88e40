//! The transcription pipeline: the AudioSocket server receives a call's audio (the UUID
//! frame names the call); for every running transcription of that call whose direction
//! covers it, the audio is resampled to 16 kHz and streamed to the speech-to-text provider;
//! each final segment becomes a `transcript_created` event through
//! [`vbin_app::transcription::record_transcript`].
//!
//! The audio Asterisk sends is what the call's remote party says: direction `in`.
//! A session looks up the call's running transcriptions when it starts, and again when a
//! `transcribe_started` or `transcribe_completed` of its call goes by on the event stream
//! ([`Pipeline::follow`]), or at the latest every [`Settings::recheck`] (in case the stream
//! was interrupted). A completed transcription stops receiving audio then; its last segments
//! are still recorded (they are refused once it completed, and logged).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};
use uuid::Uuid;
use vbin_app::transcription::{record_transcript, running_transcribes, RunningTranscribe};
use vbin_app::Executor;
use vbin_bus::Chain;
use vbin_event_schema::views::TranscribeView;
use vbin_event_schema::{
    subject_filter, CallId, CustomerId, PublishedEvent, TranscribeEvent, TranscribeId,
    TranscriptDirection,
};
use vbin_media::audiosocket::{self, Inbound, ServerSettings, Session};
use vbin_media::resample::{ResampleError, Resampler};
use vbin_media::stt::{Segment, SttError, SttProvider, STT_RATE_HZ};

/// Pipeline settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often a session looks for transcriptions started or stopped meanwhile without
    /// being told (the event stream normally tells it at once).
    pub recheck: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            recheck: Duration::from_secs(30),
        }
    }
}

/// The sessions waiting for changes of their call's transcriptions, by call id.
type Watchers = Mutex<HashMap<Uuid, Vec<Arc<Notify>>>>;

/// What the pipeline needs.
#[derive(Clone)]
pub struct Pipeline {
    pool: sqlx::PgPool,
    executor: Executor,
    provider: Arc<dyn SttProvider>,
    settings: Settings,
    watchers: Arc<Watchers>,
}

impl Pipeline {
    /// A pipeline recording through `executor` and recognizing with `provider`.
    pub fn new(
        pool: sqlx::PgPool,
        executor: Executor,
        provider: Arc<dyn SttProvider>,
        settings: Settings,
    ) -> Self {
        Self {
            pool,
            executor,
            provider,
            settings,
            watchers: Arc::default(),
        }
    }

    /// Wakes the sessions of a call whenever one of its transcriptions starts or completes, as
    /// those events go by on `bus` (core NATS subjects of just these two event types, no
    /// consumer state); runs until dropped.
    pub fn follow(&self, bus: vbin_bus::Bus) -> impl std::future::Future<Output = ()> + Send {
        use futures::StreamExt;
        let watchers = self.watchers.clone();
        let subject = |t| subject_filter(TranscribeEvent::AGGREGATE, t);
        async move {
            loop {
                let subs = futures::future::try_join(
                    bus.client
                        .subscribe(subject(TranscribeEvent::TRANSCRIBE_STARTED)),
                    bus.client
                        .subscribe(subject(TranscribeEvent::TRANSCRIBE_COMPLETED)),
                )
                .await;
                match subs {
                    Ok((started, completed)) => {
                        let mut msgs = futures::stream::select(started, completed);
                        while let Some(msg) = msgs.next().await {
                            // Both events show the transcription, which names its call.
                            let call = serde_json::from_slice::<PublishedEvent>(&msg.payload)
                                .ok()
                                .and_then(|e| e.view::<TranscribeView>().ok()?.reference_id)
                                .map(|c| c.as_uuid());
                            if let Some(ws) =
                                call.and_then(|c| watchers.lock().unwrap().get(&c).cloned())
                            {
                                // A stored permit: a session busy with a frame sees it next.
                                ws.iter().for_each(|n| n.notify_one());
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot follow transcriptions; retrying"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Serves AudioSocket connections on `listener` until `shutdown`.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let this = Arc::new(self);
        let serve = audiosocket::serve(listener, ServerSettings::default(), move |s| {
            let this = this.clone();
            async move { this.session(s).await }
        });
        tokio::select! {
            _ = serve => {}
            _ = shutdown => {}
        }
    }

    async fn session(&self, mut s: Session) {
        let call = s.call_id;
        tracing::info!(call_id = %call, peer = %s.peer, "AudioSocket session started");
        let mut streams: HashMap<Uuid, Stream> = HashMap::new();
        let mut ended = "hangup".to_string();
        // Registered before the first look-up: a transcription started after it is told.
        let changed = Arc::new(Notify::new());
        self.watchers
            .lock()
            .unwrap()
            .entry(call)
            .or_default()
            .push(changed.clone());
        let mut recheck = tokio::time::interval(self.settings.recheck);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let frame = tokio::select! {
                _ = recheck.tick() => None,
                _ = changed.notified() => None,
                f = s.next() => Some(f),
            };
            let (rate_hz, samples) = match frame {
                None => {
                    self.attach(call, &mut streams).await;
                    continue;
                }
                Some(None) => break,
                Some(Some(Err(e))) => {
                    ended = e.to_string();
                    break;
                }
                Some(Some(Ok(Inbound::Dtmf(_)))) => continue,
                Some(Some(Ok(Inbound::Audio { rate_hz, samples }))) => (rate_hz, samples),
            };
            let t = Instant::now();
            streams.retain(|id, st| match st.push(rate_hz, &samples) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(call_id = %call, transcribe_id = %id, error = %Chain(&e), "transcription stream dropped");
                    false
                }
            });
            metrics::histogram!("vbin_media_frame_seconds").record(t.elapsed().as_secs_f64());
        }
        {
            let mut w = self.watchers.lock().unwrap();
            if let Some(ws) = w.get_mut(&call) {
                ws.retain(|n| !Arc::ptr_eq(n, &changed));
                if ws.is_empty() {
                    w.remove(&call);
                }
            }
        }
        tracing::info!(call_id = %call, %ended, "AudioSocket session ended");
        // Dropping the audio ends each recognizer stream; its recorder task records the rest.
        drop(streams);
    }

    /// Starts a stream for each running transcription of the call not yet fed, and drops
    /// those no longer running.
    async fn attach(&self, call: Uuid, streams: &mut HashMap<Uuid, Stream>) {
        let running = match running_transcribes(&self.pool, CallId(call)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(call_id = %call, error = %e, "looking up transcriptions failed");
                return;
            }
        };
        streams.retain(|id, _| running.iter().any(|r| r.transcribe_id == *id));
        for r in running {
            if streams.contains_key(&r.transcribe_id)
                || !(r.direction == "in" || r.direction == "both")
            {
                continue;
            }
            match self.start_stream(call, &r) {
                Ok(s) => {
                    tracing::info!(call_id = %call, transcribe_id = %r.transcribe_id, provider = self.provider.name(), "transcribing");
                    streams.insert(r.transcribe_id, s);
                }
                Err(e) => {
                    tracing::error!(call_id = %call, transcribe_id = %r.transcribe_id, error = %Chain(&e), "starting speech-to-text failed")
                }
            }
        }
    }

    fn start_stream(&self, call: Uuid, r: &RunningTranscribe) -> Result<Stream, SttError> {
        let session = self.provider.start(&r.language)?;
        let mut results = session.results;
        let (executor, customer, transcribe) = (
            self.executor.clone(),
            CustomerId(r.customer_id),
            TranscribeId(r.transcribe_id),
        );
        tokio::spawn(async move {
            while let Some(res) = results.recv().await {
                match res {
                    Ok(seg) if seg.is_final && !seg.text.trim().is_empty() => {
                        record(&executor, customer, transcribe, call, &seg).await;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(call_id = %call, transcribe_id = %transcribe.as_uuid(), error = %e, "speech-to-text failed");
                    }
                }
            }
        });
        Ok(Stream {
            audio: session.audio,
            resamplers: HashMap::new(),
            pending: HashMap::new(),
            out: Vec::with_capacity(640),
        })
    }
}

/// Records one segment, retrying a few times (the transcript id is derived from its content,
/// so a retry after an unknown outcome cannot duplicate it).
async fn record(
    executor: &Executor,
    customer: CustomerId,
    transcribe: TranscribeId,
    call: Uuid,
    seg: &Segment,
) {
    for attempt in 1..=3 {
        match record_transcript(
            executor,
            customer,
            transcribe,
            TranscriptDirection::In,
            &seg.text,
            seg.start_ms,
        )
        .await
        {
            Ok(_) => {
                metrics::counter!("vbin_transcripts_recorded_total").increment(1);
                return;
            }
            Err(e) if attempt < 3 => {
                tracing::warn!(call_id = %call, error = %e, attempt, "recording a transcript failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => {
                tracing::error!(call_id = %call, transcribe_id = %transcribe.as_uuid(), error = %e, text = %seg.text, "transcript not recorded");
            }
        }
    }
}

/// One transcription being fed.
struct Stream {
    audio: mpsc::Sender<Vec<i16>>,
    /// By input rate (the switch may change it mid-call).
    resamplers: HashMap<u32, Resampler>,
    /// Samples waiting for a whole frame, by input rate.
    pending: HashMap<u32, Vec<i16>>,
    out: Vec<i16>,
}

impl Stream {
    /// Resamples one frame to 16 kHz and hands it to the recognizer without waiting: a
    /// recognizer 10 s behind loses this stream rather than stalling the call's audio.
    fn push(&mut self, rate_hz: u32, samples: &[i16]) -> Result<(), StreamError> {
        self.out.clear();
        if rate_hz == STT_RATE_HZ {
            self.out.extend_from_slice(samples);
        } else {
            let r = match self.resamplers.entry(rate_hz) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(Resampler::new(rate_hz, STT_RATE_HZ)?)
                }
            };
            // The resampler takes 20 ms frames; Asterisk sends those, but any size is
            // gathered into them.
            let pending = self.pending.entry(rate_hz).or_default();
            pending.extend_from_slice(samples);
            let n = r.input_frame_len();
            let mut used = 0;
            while pending.len() - used >= n {
                r.process(&pending[used..used + n], &mut self.out)?;
                used += n;
            }
            pending.drain(..used);
            if self.out.is_empty() {
                return Ok(());
            }
        }
        self.audio
            .try_send(self.out.clone())
            .map_err(StreamError::Behind)
    }
}

/// Why a transcription stream is dropped.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    /// The call's audio could not be resampled to 16 kHz.
    #[error("resampling")]
    Resample(#[from] ResampleError),
    /// The recognizer's queue is full (10 s behind) or it is gone.
    #[error("recognizer not keeping up")]
    Behind(#[source] mpsc::error::TrySendError<Vec<i16>>),
}
