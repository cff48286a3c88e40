//! The far end of a call's media: what a transport delivers each 20 ms and what it is given.

use crate::frame::{is_silent, FRAME, FRAME_SAMPLES};
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
    /// Press these keys, 150 ms apart.
    Keys(String),
}

/// When a step of the simulated person runs: `at` after the answer, then once it has heard
/// `heard` of sound, then once the line has been quiet for `quiet` (both counted in 20 ms
/// frames from `at`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct When {
    /// Earliest, after the answer.
    pub at: Duration,
    /// Sound to hear first.
    pub heard: Duration,
    /// Quiet to hear last.
    pub quiet: Duration,
}

/// A step waiting for its time, with what it heard since that time came.
#[derive(Debug)]
struct Pending {
    when: When,
    step: PersonStep,
    /// Its `at` has come: it counts what it hears.
    armed: bool,
    sound: Duration,
    quiet: Duration,
}

impl Pending {
    fn ready(&self) -> bool {
        self.armed && self.sound >= self.when.heard && self.quiet >= self.when.quiet
    }
}

/// Time between the keys of one step.
const KEY_GAP: Duration = Duration::from_millis(150);

/// The sandbox carrier's simulated person: it follows its script (steps at times after the
/// answer, or once it heard enough, or once the line went quiet; speech arrives already
/// synthesised on `steps`) and listens to what it is sent.
pub struct SandboxPerson {
    answered: Instant,
    steps: mpsc::UnboundedReceiver<(When, PersonStep)>,
    pending: Vec<Pending>,
    speaking: VecDeque<i16>,
    keys: VecDeque<char>,
    next_key: Option<Instant>,
    /// Everything it heard (kept short: only the last minute).
    heard: VecDeque<i16>,
}

/// Longest audio the person remembers hearing, in samples (one minute).
const HEARD_MAX: usize = 16_000 * 60;

impl SandboxPerson {
    /// A person whose call was answered at `answered`, taking its steps from `steps`.
    pub fn new(answered: Instant, steps: mpsc::UnboundedReceiver<(When, PersonStep)>) -> Self {
        Self {
            answered,
            steps,
            pending: Vec::new(),
            speaking: VecDeque::new(),
            keys: VecDeque::new(),
            next_key: None,
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
        while let Ok((when, step)) = self.steps.try_recv() {
            self.pending.push(Pending {
                when,
                step,
                armed: false,
                sound: Duration::ZERO,
                quiet: Duration::ZERO,
            });
        }
        let since = now.saturating_duration_since(self.answered);
        let mut i = 0;
        while i < self.pending.len() {
            let p = &mut self.pending[i];
            p.armed |= p.when.at <= since;
            if p.ready() {
                match self.pending.remove(i).step {
                    PersonStep::Say(s) => self.speaking.extend(s.iter().copied()),
                    PersonStep::Keys(k) => self.keys.extend(k.chars()),
                }
            } else {
                i += 1;
            }
        }
        let mut inbound = Inbound::default();
        if !self.keys.is_empty() && self.next_key.is_none_or(|t| t <= now) {
            inbound.dtmf.extend(self.keys.pop_front());
            self.next_key = Some(now + KEY_GAP);
        }
        let n = FRAME_SAMPLES.min(self.speaking.len());
        inbound.audio = self.speaking.drain(..n).collect();
        inbound.audio.resize(FRAME_SAMPLES, 0);
        inbound
    }

    fn hear(&mut self, frame: &[i16]) {
        let sound = !is_silent(frame);
        for p in self.pending.iter_mut().filter(|p| p.armed) {
            if sound {
                p.sound += FRAME;
                p.quiet = Duration::ZERO;
            } else {
                p.quiet += FRAME;
            }
        }
        self.heard.extend(frame.iter().copied());
        let excess = self.heard.len().saturating_sub(HEARD_MAX);
        self.heard.drain(..excess);
    }

    fn dtmf(&mut self, _digits: &str) -> bool {
        // It hears the keys as tones.
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Ticks `person` for `frames` frames from `*t`, sending `loud` or silent frames, and
    /// returns the tick (frame index from the start) at which it began speaking or keyed.
    fn run(
        person: &mut SandboxPerson,
        t: &mut Instant,
        frames: usize,
        loud: bool,
    ) -> Vec<(usize, Inbound)> {
        let mut out = Vec::new();
        for i in 0..frames {
            let inbound = person.next_frame(*t);
            if inbound.audio.iter().any(|&v| v != 0) || !inbound.dtmf.is_empty() {
                out.push((i, inbound));
            }
            person.hear(&vec![if loud { 1000 } else { 0 }; FRAME_SAMPLES]);
            *t += FRAME;
        }
        out
    }

    fn person(steps: Vec<(When, PersonStep)>) -> (SandboxPerson, Instant) {
        let (tx, rx) = mpsc::unbounded_channel();
        for s in steps {
            tx.send(s).unwrap();
        }
        let t = Instant::now();
        (SandboxPerson::new(t, rx), t)
    }

    fn say() -> PersonStep {
        PersonStep::Say(Speech::from(vec![5000i16; FRAME_SAMPLES * 2]))
    }

    #[test]
    fn a_timed_step_runs_at_its_time_whatever_it_hears() {
        let when = When {
            at: ms(100),
            ..Default::default()
        };
        let (mut p, mut t) = person(vec![(when, say())]);
        let spoke = run(&mut p, &mut t, 20, true);
        assert_eq!(spoke.first().map(|s| s.0), Some(5));
    }

    #[test]
    fn a_step_waits_for_sound_heard_after_its_time_then_for_quiet() {
        let when = When {
            at: ms(100),
            heard: ms(200),
            quiet: ms(400),
        };
        let (mut p, mut t) = person(vec![(when, say())]);
        // Quiet before any sound does not count: it waits for the prompt.
        assert!(run(&mut p, &mut t, 50, false).is_empty());
        // 10 frames of sound: heard enough, but the prompt goes on.
        assert!(run(&mut p, &mut t, 10, true).is_empty());
        let spoke = run(&mut p, &mut t, 30, false);
        // 400 ms of quiet after the sound: the 21st quiet tick.
        assert_eq!(spoke.first().map(|s| s.0), Some(20));
    }

    #[test]
    fn a_step_that_only_waits_for_sound_talks_over_it() {
        let when = When {
            at: ms(0),
            heard: ms(100),
            quiet: ms(0),
        };
        let (mut p, mut t) = person(vec![(when, say())]);
        let spoke = run(&mut p, &mut t, 20, true);
        assert_eq!(spoke.first().map(|s| s.0), Some(5));
    }

    #[test]
    fn keys_come_one_at_a_time_150_ms_apart() {
        let (mut p, mut t) = person(vec![(When::default(), PersonStep::Keys("12#".into()))]);
        let keyed: Vec<(usize, Vec<char>)> = run(&mut p, &mut t, 30, false)
            .into_iter()
            .map(|(i, inbound)| (i, inbound.dtmf))
            .collect();
        assert_eq!(keyed, [(0, vec!['1']), (8, vec!['2']), (16, vec!['#'])]);
    }
}
