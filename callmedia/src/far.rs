//! The far end of a call's media: what a transport delivers each 20 ms and what it is given.

use crate::frame::FRAME_SAMPLES;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use vbin_media::tts::Speech;

/// One frame's worth from the far end.
#[derive(Debug, Default)]
pub struct Inbound {
    /// The far end's audio (one frame, [`FRAME_SAMPLES`] samples).
    pub audio: Vec<i16>,
    /// Keys pressed during the frame.
    pub dtmf: Vec<char>,
}

/// The other side of a session (the sandbox's simulated person, AudioSocket, RTP).
pub trait FarEnd: Send {
    /// The far end's frame for the tick at `now` (its audio goes to recorders; its keys to
    /// digit collection).
    fn next_frame(&mut self, now: Instant) -> Inbound;
    /// What the platform sends it this tick (one frame).
    fn hear(&mut self, frame: &[i16]);
    /// Keys the platform sends it out of band; false when the transport has no way to (the
    /// session then plays them in band, as tones in the audio).
    fn dtmf(&mut self, digits: &str) -> bool;
    /// Whether it hung up (its connection ended): the call is hung up.
    fn gone(&self) -> bool {
        false
    }
}

/// A step of the simulated person, ready to run.
#[derive(Debug)]
pub enum PersonStep {
    /// Speak this audio.
    Say(Speech),
    /// Press a key.
    Key(char),
}

/// The sandbox carrier's simulated person: it follows its script (steps at times after the
/// answer; speech arrives already synthesised on `steps`) and listens to what it is sent.
pub struct SandboxPerson {
    answered: Instant,
    steps: mpsc::UnboundedReceiver<(Duration, PersonStep)>,
    pending: Vec<(Duration, PersonStep)>,
    speaking: VecDeque<i16>,
    /// Everything it heard (kept short: only the last minute).
    heard: VecDeque<i16>,
}

/// Longest audio the person remembers hearing, in samples (one minute).
const HEARD_MAX: usize = 16_000 * 60;

impl SandboxPerson {
    /// A person whose call was answered at `answered`, taking its steps from `steps`.
    pub fn new(answered: Instant, steps: mpsc::UnboundedReceiver<(Duration, PersonStep)>) -> Self {
        Self {
            answered,
            steps,
            pending: Vec::new(),
            speaking: VecDeque::new(),
            heard: VecDeque::new(),
        }
    }

    /// The last samples it heard.
    pub fn heard(&self) -> Vec<i16> {
        self.heard.iter().copied().collect()
    }
}

impl FarEnd for SandboxPerson {
    fn next_frame(&mut self, now: Instant) -> Inbound {
        while let Ok(s) = self.steps.try_recv() {
            self.pending.push(s);
        }
        let since = now.saturating_duration_since(self.answered);
        let mut inbound = Inbound::default();
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].0 <= since {
                match self.pending.remove(i).1 {
                    PersonStep::Say(s) => self.speaking.extend(s.iter().copied()),
                    PersonStep::Key(k) => inbound.dtmf.push(k),
                }
            } else {
                i += 1;
            }
        }
        let n = FRAME_SAMPLES.min(self.speaking.len());
        inbound.audio = self.speaking.drain(..n).collect();
        inbound.audio.resize(FRAME_SAMPLES, 0);
        inbound
    }

    fn hear(&mut self, frame: &[i16]) {
        self.heard.extend(frame.iter().copied());
        let excess = self.heard.len().saturating_sub(HEARD_MAX);
        self.heard.drain(..excess);
    }

    fn dtmf(&mut self, _digits: &str) -> bool {
        // It hears the keys as tones.
        false
    }
}
