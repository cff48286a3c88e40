//! A transport as a call's far end: AudioSocket (Asterisk) or RTP (the SIP carrier). The
//! transport's audio and keys come in over a channel, the platform's audio goes back out
//! through its [`Outlet`], resampled at the edge.
//!
//! The transport is read by its own task (for AudioSocket [`pump`]), which hands frames over
//! the channel; the session's tick takes one 20 ms frame from a short jitter buffer (silence
//! when the transport is late), so a slow or bursty one never stalls the session's clock.

use crate::far::{FarEnd, Inbound};
use crate::frame::{FRAME_SAMPLES, RATE_HZ};
use std::collections::{HashMap, VecDeque};
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;
use vbin_media::audiosocket::{self, Player, Session};
use vbin_media::resample::Resampler;

/// Most far-end audio held back, in samples at 16 kHz (200 ms): more means the switch sends
/// faster than real time, and the oldest audio is dropped to keep the delay bounded.
const JITTER_MAX: usize = RATE_HZ as usize / 5;

/// Frames waiting between the connection's reader and the session (2 s).
const QUEUE: usize = 100;

/// What the reader hands the far end.
#[derive(Debug)]
pub enum Incoming {
    /// Audio at a rate.
    Audio(u32, Vec<i16>),
    /// A key.
    Dtmf(char),
}

/// The transport of a far end is gone (its connection closed, its socket failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the transport is gone")]
pub struct TransportGone;

/// Where the platform's audio for a transport goes.
pub trait Outlet: Send {
    /// Sends one frame of `samples` at `rate_hz`: Ok(false) when it had to drop it (the
    /// transport is behind), Err when the transport is gone.
    fn play(&mut self, rate_hz: u32, samples: &[i16]) -> Result<bool, TransportGone>;
    /// Sends keys out of band; false when the transport cannot (the session plays tones).
    fn keys(&mut self, _digits: &str) -> bool {
        false
    }
    /// The platform hung up: the transport ends its side.
    fn hangup(&mut self);
}

impl Outlet for Player {
    fn play(&mut self, rate_hz: u32, samples: &[i16]) -> Result<bool, TransportGone> {
        self.try_play(rate_hz, samples).map_err(|_| TransportGone)
    }

    fn hangup(&mut self) {
        self.try_hangup();
    }
}

/// A transport (AudioSocket connection, RTP stream) as the far end of a session.
pub struct SocketFar {
    call: Uuid,
    rx: mpsc::Receiver<Incoming>,
    player: Box<dyn Outlet>,
    /// Up-samplers by the switch's rate (it may change mid-call).
    up: HashMap<u32, Resampler>,
    /// Far-end samples at the switch's rate waiting for a whole 20 ms frame, by rate.
    partial: HashMap<u32, Vec<i16>>,
    /// Far-end audio at 16 kHz, waiting for its tick.
    jitter: VecDeque<i16>,
    /// The rate the platform's audio is sent at: the switch's (8 kHz until it says), or the
    /// transport's own when it has one ([`SocketFar::sending_at`]).
    out_rate: u32,
    /// Whether `out_rate` is the transport's (it then does not follow the incoming audio).
    fixed_rate: bool,
    down: Option<Resampler>,
    out: Vec<i16>,
    closed: bool,
}

impl SocketFar {
    /// The far end of call `call`: its frames come through `rx` (filled by [`pump`] or the
    /// RTP reader), the platform's audio goes to `outlet`.
    pub fn new(call: Uuid, rx: mpsc::Receiver<Incoming>, outlet: Box<dyn Outlet>) -> Self {
        Self {
            call,
            rx,
            player: outlet,
            up: HashMap::new(),
            partial: HashMap::new(),
            jitter: VecDeque::new(),
            out_rate: 8_000,
            fixed_rate: false,
            down: None,
            out: Vec::with_capacity(FRAME_SAMPLES),
            closed: false,
        }
    }

    /// The platform's audio goes out at `rate_hz` whatever rate the far end's comes in at
    /// (an RTP stream whose codec is settled: the far end may switch codecs, we do not).
    pub fn sending_at(mut self, rate_hz: u32) -> Self {
        self.out_rate = rate_hz;
        self.fixed_rate = true;
        self
    }

    fn take_audio(&mut self, rate: u32, samples: &[i16]) {
        if !self.fixed_rate {
            self.out_rate = rate;
        }
        let up = match self.up.entry(rate) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => match Resampler::new(rate, RATE_HZ) {
                Ok(r) => v.insert(r),
                Err(e) => {
                    tracing::warn!(call_id = %self.call, rate, error = %e, "AudioSocket audio at an unusable rate dropped");
                    return;
                }
            },
        };
        let partial = self.partial.entry(rate).or_default();
        partial.extend_from_slice(samples);
        let n = up.input_frame_len();
        let mut used = 0;
        let mut out = Vec::with_capacity(FRAME_SAMPLES);
        while partial.len() - used >= n {
            if up.process(&partial[used..used + n], &mut out).is_err() {
                break;
            }
            used += n;
        }
        partial.drain(..used);
        self.jitter.extend(out);
        let excess = self.jitter.len().saturating_sub(JITTER_MAX);
        if excess > 0 {
            self.jitter.drain(..excess);
            metrics::counter!("vbin_media_jitter_dropped_samples_total").increment(excess as u64);
        }
    }
}

impl FarEnd for SocketFar {
    fn next_frame(&mut self, _now: Instant) -> Inbound {
        let mut inbound = Inbound::default();
        loop {
            match self.rx.try_recv() {
                Ok(Incoming::Audio(rate, samples)) => self.take_audio(rate, &samples),
                Ok(Incoming::Dtmf(d)) => inbound.dtmf.push(d),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.closed = true;
                    break;
                }
            }
        }
        let n = FRAME_SAMPLES.min(self.jitter.len());
        inbound.audio = self.jitter.drain(..n).collect();
        inbound.audio.resize(FRAME_SAMPLES, 0);
        inbound
    }

    fn hear(&mut self, frame: &[i16]) {
        if self.closed {
            return;
        }
        if self
            .down
            .as_ref()
            .is_none_or(|d| d.to_hz() != self.out_rate)
        {
            self.down = Resampler::new(RATE_HZ, self.out_rate).ok();
        }
        let Some(down) = self.down.as_mut() else {
            return;
        };
        self.out.clear();
        if down.process(frame, &mut self.out).is_err() {
            return;
        }
        // The session paces; a full queue means the switch stopped reading: drop the frame.
        match self.player.play(self.out_rate, &self.out) {
            Ok(true) => {}
            Ok(false) => metrics::counter!("vbin_media_socket_dropped_frames_total").increment(1),
            Err(_) => self.closed = true,
        }
    }

    fn dtmf(&mut self, digits: &str) -> bool {
        !self.closed && self.player.keys(digits)
    }

    fn gone(&self) -> bool {
        self.closed
    }
}

impl Drop for SocketFar {
    fn drop(&mut self) {
        // The session ended (the call was hung up here): the switch hangs up its side too.
        if !self.closed {
            self.player.hangup();
        }
    }
}

/// Reads `session`'s frames into `tx` until the switch hangs up, the connection fails, or the
/// far end is dropped. Returns why it ended.
pub async fn pump(mut session: Session, tx: mpsc::Sender<Incoming>) -> String {
    loop {
        let item = tokio::select! {
            f = session.next() => f,
            _ = tx.closed() => return "the call's media session ended".into(),
        };
        let msg = match item {
            None => return "hangup".into(),
            Some(Err(e)) => return e.to_string(),
            Some(Ok(audiosocket::Inbound::Audio { rate_hz, samples })) => {
                Incoming::Audio(rate_hz, samples)
            }
            Some(Ok(audiosocket::Inbound::Dtmf(d))) => Incoming::Dtmf(d),
        };
        if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(msg) {
            return "the call's media session ended".into();
        }
    }
}

/// A channel for [`pump`] and [`SocketFar::new`].
pub fn channel() -> (mpsc::Sender<Incoming>, mpsc::Receiver<Incoming>) {
    mpsc::channel(QUEUE)
}
