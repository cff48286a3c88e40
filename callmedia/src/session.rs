//! One call's media session: a task ticking every 20 ms that takes a frame from the far end
//! (far end -> platform, with DTMF), mixes what the platform plays into a frame for the far
//! end, and carries out the flow's media actions, reporting each one's end.

use crate::far::FarEnd;
use crate::port::PortEnd;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use vbin_agent::In as AgentIn;
use vbin_event_schema::flow::{ActionKind, ActionResult};
use vbin_event_schema::{
    ActiveflowId, AicallId, RecordingId, RecordingLimits, TranscribeId, TranscriptDirection,
};
use vbin_media::tts::Speech;
use vbin_transcription::Feed;

pub use crate::frame::{FRAME, FRAME_SAMPLES, RATE_HZ};

/// An action execution the session reports the end of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Execution {
    /// The activeflow.
    pub activeflow: ActiveflowId,
    /// Its `seq`.
    pub seq: u64,
}

/// What a recording's uploader receives.
#[derive(Debug)]
pub enum RecChunk {
    /// 16-bit little-endian samples: interleaved stereo for a call, mono for a conference.
    Audio(Vec<u8>),
    /// The recording ended after this many frames (why: `None` = asked or call ended).
    End {
        /// Frames captured.
        frames: u64,
        /// Audio was lost (the uploader fell behind).
        dropped: bool,
    },
}

/// A recording to capture.
#[derive(Debug)]
pub struct Capture {
    /// The recording.
    pub id: RecordingId,
    /// When it stops on its own.
    pub limits: RecordingLimits,
    /// Where its audio goes.
    pub chunks: mpsc::Sender<RecChunk>,
}

/// One side of a running transcription, fed from the session.
#[derive(Debug)]
pub struct Tap {
    /// The transcription.
    pub id: TranscribeId,
    /// The side: the far end's audio (`in`) or the platform's (`out`).
    pub side: TranscriptDirection,
    /// Where the audio goes.
    pub feed: Feed,
}

/// A far end handed to a running session.
pub struct NewFar(pub Box<dyn FarEnd>);

impl std::fmt::Debug for NewFar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewFar")
    }
}

/// What an AI conversation does with its audio in the session.
#[derive(Debug)]
pub enum AgentCmd {
    /// Queue this chunk.
    Say(u64, Speech),
    /// Stop playing at once (keep the queue); the conversation is told where.
    Pause,
    /// Play on.
    Resume,
    /// Drop what is queued (and a pause: what is queued next plays).
    Flush,
}

/// What the session is told.
#[derive(Debug)]
pub enum Control {
    /// An AI conversation hears the far end from now on and speaks through the session
    /// (replacing one attached before).
    AttachAgent(AicallId, mpsc::Sender<AgentIn>),
    /// The conversation's audio.
    Agent(AicallId, AgentCmd),
    /// The conversation ended.
    DetachAgent(AicallId),
    /// The call's audio now comes from (and goes to) this far end (an AudioSocket connection
    /// that arrived for the call); the previous one is dropped.
    Attach(NewFar),
    /// Feed one side of a transcription (ignored if that side is fed already).
    Tap(Tap),
    /// Stop feeding this transcription.
    Untap(TranscribeId),
    /// Start capturing (ignored if this recording is already being captured).
    Record(Capture),
    /// Stop capturing this recording.
    StopRecording(RecordingId),
    /// Stop every recording (a flow's `recording_stop`), then report the execution done.
    StopRecordings(Execution),
    /// Carry out a media action.
    Execute(Execution, ActionKind),
    /// Audio to play, ready (a synthesised talk, a beep); `None` for async talks.
    Play(Option<Execution>, Speech),
    /// Audio to play whose execution ends with an error once played (a play some of whose
    /// files could not be fetched: the others are played).
    PlayPartly(Execution, Speech, String),
    /// Bridge: from now on the far end hears what comes through this port (beside what the
    /// platform plays) and the far end's audio goes through it (replacing a port linked
    /// before).
    Link(PortEnd),
    /// End the bridge.
    Unlink,
    /// Play this audio over and over (a queue's wait music) until [`Control::Unhold`]
    /// (replacing one played before).
    Hold(Speech),
    /// Stop the wait music.
    Unhold,
    /// End the session (the call ended).
    Stop,
}

/// What the session reports.
#[derive(Debug)]
pub enum Report {
    /// A media action ended.
    Done(Execution, ActionResult),
    /// The far end pressed a key (for metrics: when).
    Digit(char, Instant),
    /// The first frame of a clip went out.
    FirstFrame(Option<Execution>, Instant),
    /// The far end hung up (its connection ended).
    FarEndGone,
}

struct Source {
    samples: Speech,
    pos: usize,
    done: Option<Execution>,
    /// Reported with the end (a play whose other files failed).
    error: Option<String>,
}

/// The audio of the AI conversation attached to the session.
struct AgentAudio {
    id: AicallId,
    input: mpsc::Sender<AgentIn>,
    queue: VecDeque<(u64, Speech, usize)>,
    paused: bool,
    /// Frames since it was attached.
    frame: u64,
}

impl AgentAudio {
    /// Tells the conversation something it must not miss: a full channel (it fell behind)
    /// delivers it off the tick.
    fn tell(&self, m: AgentIn) {
        if let Err(mpsc::error::TrySendError::Full(m)) = self.input.try_send(m) {
            let tx = self.input.clone();
            tokio::spawn(async move {
                let _ = tx.send(m).await;
            });
        }
    }

    /// The conversation's next 20 ms mixed into `out`, and the far end's frame to it.
    fn tick(&mut self, inbound: &[i16], out: &mut [i32]) {
        // Droppable: a conversation that fell behind loses audio, not the session's pace.
        let _ = self.input.try_send(AgentIn::Frame(inbound.to_vec()));
        let mut told = Vec::new();
        if !self.paused {
            if let Some((chunk, speech, pos)) = self.queue.front_mut() {
                let chunk = *chunk;
                if *pos == 0 {
                    told.push(AgentIn::Started {
                        chunk,
                        frame: self.frame,
                    });
                }
                let end = (*pos + FRAME_SAMPLES).min(speech.len());
                for (o, v) in out.iter_mut().zip(&speech[*pos..end]) {
                    *o += *v as i32;
                }
                *pos = end;
                if end >= speech.len() {
                    self.queue.pop_front();
                    told.push(AgentIn::Finished { chunk });
                }
            }
        }
        for m in told {
            self.tell(m);
        }
        self.frame += 1;
    }

    fn command(&mut self, cmd: AgentCmd) {
        match cmd {
            AgentCmd::Say(chunk, speech) => self.queue.push_back((chunk, speech, 0)),
            AgentCmd::Pause => {
                self.paused = true;
                let (chunk, samples) = self
                    .queue
                    .front()
                    .map_or((None, 0), |(c, _, p)| (Some(*c), *p));
                self.tell(AgentIn::PausedAt { chunk, samples });
            }
            AgentCmd::Resume => self.paused = false,
            AgentCmd::Flush => {
                self.queue.clear();
                self.paused = false;
            }
        }
    }
}

/// Frames of audio gathered before they go to the uploader (one second).
const REC_BATCH_FRAMES: u64 = 50;

/// A recording being captured: batches its audio to the uploader and knows when a limit
/// ends it. A call's session records stereo ([`Recorder::push`]), a conference's mix task
/// mono ([`Recorder::push_mix`]).
pub(crate) struct Recorder {
    pub(crate) capture: Capture,
    frames: u64,
    batch: Vec<u8>,
    silent_ms: u64,
    dropped: bool,
}

impl Recorder {
    pub(crate) fn new(capture: Capture) -> Self {
        Self {
            capture,
            frames: 0,
            batch: Vec::new(),
            silent_ms: 0,
            dropped: false,
        }
    }

    /// One frame of a mono recording (a conference's mix).
    pub(crate) fn push_mix(&mut self, mix: &[i16]) {
        for v in mix {
            self.batch.extend_from_slice(&v.to_le_bytes());
        }
        self.frames += 1;
        if self.frames.is_multiple_of(REC_BATCH_FRAMES) {
            self.flush();
        }
    }

    fn push(&mut self, inbound: &[i16], outbound: &[i16]) {
        vbin_storage::wav::interleave(inbound, outbound, &mut self.batch);
        self.frames += 1;
        if crate::frame::is_silent(inbound) {
            self.silent_ms += FRAME.as_millis() as u64;
        } else {
            self.silent_ms = 0;
        }
        if self.frames.is_multiple_of(REC_BATCH_FRAMES) {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        if self
            .capture
            .chunks
            .try_send(RecChunk::Audio(batch))
            .is_err()
        {
            self.dropped = true;
        }
    }

    /// Whether a limit ends it now.
    pub(crate) fn over(&self) -> bool {
        let l = &self.capture.limits;
        l.duration_ms
            .is_some_and(|d| self.frames * FRAME.as_millis() as u64 >= d as u64)
            || l.end_of_silence_ms
                .is_some_and(|s| self.silent_ms >= s as u64)
    }

    pub(crate) fn end(mut self) {
        self.flush();
        let end = RecChunk::End {
            frames: self.frames,
            dropped: self.dropped,
        };
        // The end must arrive even if the channel is full: wait for room off the tick.
        let tx = self.capture.chunks.clone();
        tokio::spawn(async move {
            let _ = tx.send(end).await;
        });
    }
}

struct Collect {
    exec: Execution,
    digits: String,
    length: Option<usize>,
    keys: String,
    deadline: Instant,
}

/// A running session's state (owned by its task).
pub struct Session {
    far: Box<dyn FarEnd>,
    sources: Vec<Source>,
    received: VecDeque<char>,
    collect: Option<Collect>,
    timers: Vec<(Instant, Execution)>,
    recorders: Vec<Recorder>,
    taps: Vec<Tap>,
    agent: Option<AgentAudio>,
    port: Option<PortEnd>,
    /// Wait music and where it is.
    hold: Option<(Speech, usize)>,
    far_gone: bool,
    reports: mpsc::UnboundedSender<Report>,
    /// Frames sent to the far end so far.
    pub frames: u64,
}

impl Session {
    /// A session with `far` at the other end, reporting to `reports`.
    pub fn new(far: Box<dyn FarEnd>, reports: mpsc::UnboundedSender<Report>) -> Self {
        Self {
            far,
            sources: Vec::new(),
            received: VecDeque::new(),
            collect: None,
            timers: Vec::new(),
            recorders: Vec::new(),
            taps: Vec::new(),
            agent: None,
            port: None,
            hold: None,
            far_gone: false,
            reports,
            frames: 0,
        }
    }

    /// Whether `exec` is being carried out.
    fn running(&self, exec: Execution) -> bool {
        self.sources.iter().any(|s| s.done == Some(exec))
            || self.timers.iter().any(|(_, e)| *e == exec)
            || self.collect.as_ref().is_some_and(|c| c.exec == exec)
    }

    fn report(&self, r: Report) {
        let _ = self.reports.send(r);
    }

    fn done(&self, exec: Execution, result: ActionResult) {
        self.report(Report::Done(exec, result));
    }

    /// Applies a control message; false when the session must end.
    pub fn control(&mut self, c: Control, now: Instant) -> bool {
        match c {
            Control::Stop => {
                for r in self.recorders.drain(..) {
                    r.end();
                }
                return false;
            }
            Control::Link(port) => {
                tracing::debug!(peer = %port.peer, "media session linked");
                self.port = Some(port);
            }
            Control::Unlink => self.port = None,
            Control::Hold(music) => self.hold = (!music.is_empty()).then_some((music, 0)),
            Control::Unhold => self.hold = None,
            Control::Attach(NewFar(far)) => {
                self.far = far;
                self.far_gone = false;
            }
            Control::Tap(tap) => {
                if !self
                    .taps
                    .iter()
                    .any(|t| t.id == tap.id && t.side == tap.side)
                {
                    self.taps.push(tap);
                }
            }
            Control::Untap(id) => self.taps.retain(|t| t.id != id),
            Control::AttachAgent(id, input) => {
                self.agent = Some(AgentAudio {
                    id,
                    input,
                    queue: VecDeque::new(),
                    paused: false,
                    frame: 0,
                })
            }
            Control::Agent(id, cmd) => {
                if let Some(a) = self.agent.as_mut().filter(|a| a.id == id) {
                    a.command(cmd);
                }
            }
            Control::DetachAgent(id) => {
                if self.agent.as_ref().is_some_and(|a| a.id == id) {
                    self.agent = None;
                }
            }
            Control::Record(capture) => {
                if !self.recorders.iter().any(|r| r.capture.id == capture.id) {
                    self.recorders.push(Recorder::new(capture));
                }
            }
            Control::StopRecordings(exec) => {
                for r in self.recorders.drain(..) {
                    r.end();
                }
                self.done(exec, ActionResult::default());
            }
            Control::StopRecording(id) => {
                if let Some(i) = self.recorders.iter().position(|r| r.capture.id == id) {
                    self.recorders.remove(i).end();
                }
            }
            // An execution already under way (a redelivered event, or a takeover resuming what
            // a redelivery also resumes) is not started twice.
            Control::Play(Some(exec), _)
            | Control::PlayPartly(exec, ..)
            | Control::Execute(exec, _)
                if self.running(exec) => {}
            Control::Play(done, samples) => self.sources.push(Source {
                samples,
                pos: 0,
                done,
                error: None,
            }),
            Control::PlayPartly(exec, samples, error) => self.sources.push(Source {
                samples,
                pos: 0,
                done: Some(exec),
                error: Some(error),
            }),
            Control::Execute(exec, kind) => self.execute(exec, kind, now),
        }
        true
    }

    fn execute(&mut self, exec: Execution, kind: ActionKind, now: Instant) {
        match kind {
            ActionKind::Sleep(s) => self
                .timers
                .push((now + Duration::from_millis(s.duration as u64), exec)),
            ActionKind::DigitsReceive(d) => {
                // A new digits_receive replaces one that did not end (stale execution).
                self.collect = Some(Collect {
                    exec,
                    digits: String::new(),
                    length: d.length.map(|l| l as usize),
                    keys: d.key.unwrap_or_default(),
                    deadline: now + Duration::from_millis(d.duration as u64),
                });
            }
            ActionKind::DigitsSend(d) => {
                let (tone, gap) = (d.duration.unwrap_or(100), d.interval.unwrap_or(100));
                if self.far.dtmf(&d.digits) {
                    // Sent out of band: done once the keys would have been played.
                    let ms = (tone + gap) as u64 * d.digits.chars().count() as u64;
                    self.timers.push((now + Duration::from_millis(ms), exec));
                } else {
                    // In band: the tones are mixed into what the far end hears (and recorded).
                    self.sources.push(Source {
                        samples: vbin_media::clip::dtmf(&d.digits, tone, gap).into(),
                        pos: 0,
                        done: Some(exec),
                        error: None,
                    });
                }
            }
            // Talk, play and beep arrive as Play once their audio is ready.
            _ => self.done(exec, ActionResult::default()),
        }
    }

    /// One 20 ms step: a frame in from the far end, a frame out to it.
    pub fn tick(&mut self, now: Instant) {
        let inbound = self.far.next_frame(now);
        if !self.far_gone && self.far.gone() {
            self.far_gone = true;
            // Nothing more will be said: the recognizers finish their last utterances now,
            // while the hangup goes round.
            self.taps.clear();
            self.report(Report::FarEndGone);
        }
        for &d in &inbound.dtmf {
            self.report(Report::Digit(d, now));
            self.received.push_back(d);
        }
        let mut out = vec![0i32; FRAME_SAMPLES];
        let mut finished = Vec::new();
        for (i, s) in self.sources.iter_mut().enumerate() {
            if s.pos == 0 {
                let _ = self.reports.send(Report::FirstFrame(s.done, now));
            }
            let end = (s.pos + FRAME_SAMPLES).min(s.samples.len());
            for (o, v) in out.iter_mut().zip(&s.samples[s.pos..end]) {
                *o += *v as i32;
            }
            s.pos = end;
            if s.pos >= s.samples.len() {
                finished.push(i);
            }
        }
        if let Some(a) = self.agent.as_mut() {
            a.tick(&inbound.audio, &mut out);
        }
        if let Some((music, pos)) = self.hold.as_mut() {
            for o in out.iter_mut() {
                *o += music[*pos] as i32;
                *pos = (*pos + 1) % music.len();
            }
        }
        if let Some(p) = &self.port {
            // The bridged call's far end is heard here, and this far end there.
            p.mix_into(&mut out);
            p.send(&inbound.audio);
        }
        for i in finished.into_iter().rev() {
            let s = self.sources.remove(i);
            if let Some(exec) = s.done {
                let result = ActionResult {
                    error: s.error,
                    ..Default::default()
                };
                self.done(exec, result);
            }
        }
        let frame: Vec<i16> = out
            .into_iter()
            .map(|v| v.clamp(i16::MIN as i32, i16::MAX as i32) as i16)
            .collect();
        self.far.hear(&frame);
        self.frames += 1;
        self.taps.retain(|t| {
            let audio = match t.side {
                TranscriptDirection::In => &inbound.audio,
                TranscriptDirection::Out => &frame,
            };
            match t.feed.push(audio) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(transcribe_id = %t.id, side = t.side.as_str(), error = %e, "transcription stream dropped");
                    false
                }
            }
        });
        let keys = &inbound.dtmf;
        let mut i = 0;
        while i < self.recorders.len() {
            let r = &mut self.recorders[i];
            r.push(&inbound.audio, &frame);
            let key = r
                .capture
                .limits
                .end_of_key
                .as_deref()
                .is_some_and(|k| keys.iter().any(|d| k.contains(*d)));
            if key || r.over() {
                self.recorders.remove(i).end();
            } else {
                i += 1;
            }
        }
        self.collect_digits(now);
        let due: Vec<Execution> = self
            .timers
            .iter()
            .filter(|(at, _)| *at <= now)
            .map(|(_, e)| *e)
            .collect();
        self.timers.retain(|(at, _)| *at > now);
        for exec in due {
            self.done(exec, ActionResult::default());
        }
    }

    fn collect_digits(&mut self, now: Instant) {
        let Some(c) = &mut self.collect else {
            // Keys pressed while nothing collects wait for the next digits_receive.
            return;
        };
        let mut finished = false;
        while let Some(d) = self.received.pop_front() {
            if c.keys.contains(d) {
                finished = true;
                break;
            }
            c.digits.push(d);
            if c.length.is_some_and(|l| c.digits.chars().count() >= l) {
                finished = true;
                break;
            }
        }
        if finished || now >= c.deadline {
            let c = self.collect.take().expect("collecting");
            let mut result = ActionResult::default();
            result.variables.insert(
                vbin_domain::activeflow::DIGITS_VARIABLE.into(),
                serde_json::Value::String(c.digits),
            );
            self.done(c.exec, result);
        }
    }

    /// Runs the session until stopped or the control channel closes.
    pub async fn run(mut self, mut control: mpsc::Receiver<Control>) {
        let mut tick = tokio::time::interval(FRAME);
        // A late tick is made up at once: over time exactly 50 frames a second go out.
        tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
        loop {
            tokio::select! {
                biased;
                c = control.recv() => match c {
                    Some(c) => if !self.control(c, Instant::now()) { return },
                    None => {
                        self.control(Control::Stop, Instant::now());
                        return;
                    }
                },
                at = tick.tick() => {
                    // How late this frame goes out: the session's pacing jitter.
                    metrics::histogram!("vbin_media_tick_lateness_seconds")
                        .record(Instant::now().saturating_duration_since(at).as_secs_f64());
                    self.tick(at)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::far::{FarEnd, Inbound};
    use std::sync::{Arc, Mutex};
    use vbin_event_schema::flow::{DigitsReceive, Sleep};

    #[derive(Default)]
    struct Fake {
        keys: Vec<(u64, char)>,
        heard: Arc<Mutex<Vec<i16>>>,
        frame: u64,
        /// What it says, from the first frame on.
        says: Vec<i16>,
    }

    impl FarEnd for Fake {
        fn next_frame(&mut self, _: Instant) -> Inbound {
            self.frame += 1;
            let dtmf = self
                .keys
                .iter()
                .filter(|(f, _)| *f == self.frame)
                .map(|(_, k)| *k)
                .collect();
            let from = ((self.frame - 1) as usize * FRAME_SAMPLES).min(self.says.len());
            let mut audio = self.says[from..(from + FRAME_SAMPLES).min(self.says.len())].to_vec();
            audio.resize(FRAME_SAMPLES, 0);
            Inbound { audio, dtmf }
        }
        fn hear(&mut self, frame: &[i16]) {
            self.heard.lock().unwrap().extend_from_slice(frame);
        }
        fn dtmf(&mut self, _: &str) -> bool {
            true
        }
    }

    fn exec(seq: u64) -> Execution {
        Execution {
            activeflow: ActiveflowId(uuid::Uuid::nil()),
            seq,
        }
    }

    fn done(rx: &mut mpsc::UnboundedReceiver<Report>) -> Vec<(u64, ActionResult)> {
        let mut out = vec![];
        while let Ok(r) = rx.try_recv() {
            if let Report::Done(e, r) = r {
                out.push((e.seq, r));
            }
        }
        out
    }

    #[test]
    fn plays_clips_bit_exact_and_reports_their_end() {
        let heard = Arc::new(Mutex::new(vec![]));
        let far = Fake {
            heard: heard.clone(),
            ..Default::default()
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut s = Session::new(Box::new(far), tx);
        let now = Instant::now();
        let clip: Vec<i16> = (0..500).map(|i| (i * 37 % 2000) as i16 - 1000).collect();
        s.control(Control::Play(Some(exec(1)), clip.clone().into()), now);
        s.tick(now);
        assert!(done(&mut rx).is_empty());
        s.tick(now);
        assert_eq!(
            done(&mut rx).len(),
            1,
            "ends with the frame holding its last sample"
        );
        let heard = heard.lock().unwrap();
        assert_eq!(&heard[..500], &clip[..]);
        assert!(heard[500..].iter().all(|v| *v == 0));
    }

    #[test]
    fn digits_end_at_the_length_or_the_key_and_sleep_at_its_time() {
        let far = Fake {
            keys: vec![(2, '4'), (3, '2'), (4, '#'), (6, '9')],
            ..Default::default()
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut s = Session::new(Box::new(far), tx);
        let t0 = Instant::now();
        let receive = |length| {
            ActionKind::DigitsReceive(DigitsReceive {
                duration: 1_000,
                length,
                key: Some("#".into()),
            })
        };
        s.control(Control::Execute(exec(1), receive(None)), t0);
        for i in 0..4 {
            s.tick(t0 + FRAME * i);
        }
        let d = done(&mut rx);
        assert_eq!(d[0].1.variables["voipbin.call.digits"], "42");
        // The 9 comes while nothing collects: the next digits_receive takes it.
        for i in 4..6 {
            s.tick(t0 + FRAME * i);
        }
        s.control(Control::Execute(exec(2), receive(Some(1))), t0 + FRAME * 6);
        s.tick(t0 + FRAME * 6);
        assert_eq!(done(&mut rx)[0].1.variables["voipbin.call.digits"], "9");
        // Nothing pressed: the duration ends it with no digits.
        s.control(Control::Execute(exec(3), receive(None)), t0);
        s.control(
            Control::Execute(exec(4), ActionKind::Sleep(Sleep { duration: 100 })),
            t0,
        );
        s.tick(t0 + Duration::from_millis(99));
        assert!(done(&mut rx).is_empty());
        s.tick(t0 + Duration::from_millis(1_000));
        let d = done(&mut rx);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].1.variables["voipbin.call.digits"], "");
    }

    #[test]
    fn bridged_sessions_hear_each_other_bit_exact_and_not_themselves() {
        let speech = |seed: i32| -> Vec<i16> {
            (0..FRAME_SAMPLES * 100)
                .map(|i| ((i as i32 * seed) % 4000 - 2000) as i16 | 1)
                .collect()
        };
        let (sa, sb) = (speech(37), speech(53));
        let (ha, hb) = (Arc::new(Mutex::new(vec![])), Arc::new(Mutex::new(vec![])));
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut a = Session::new(
            Box::new(Fake {
                heard: ha.clone(),
                says: sa.clone(),
                ..Default::default()
            }),
            tx.clone(),
        );
        let mut b = Session::new(
            Box::new(Fake {
                heard: hb.clone(),
                says: sb.clone(),
                ..Default::default()
            }),
            tx,
        );
        let now = Instant::now();
        let (pa, pb) = crate::port::pair("a", "b");
        a.control(Control::Link(pa), now);
        b.control(Control::Link(pb), now);
        for _ in 0..60 {
            a.tick(now);
            b.tick(now);
        }
        // What each far end heard is the other's speech, whole and in order, a few frames late.
        let find = |heard: &[i16], said: &[i16]| -> Option<usize> {
            let said = &said[..50 * FRAME_SAMPLES];
            (0..=3 * FRAME_SAMPLES).find(|&lag| heard[lag..lag + said.len()] == *said)
        };
        let (heard_a, heard_b) = (ha.lock().unwrap().clone(), hb.lock().unwrap().clone());
        let lag_a = find(&heard_a, &sb).expect("a hears b bit-exact, at most 3 frames late");
        let lag_b = find(&heard_b, &sa).expect("b hears a bit-exact, at most 3 frames late");
        assert!(lag_a <= 3 * FRAME_SAMPLES && lag_b <= 3 * FRAME_SAMPLES);
        assert!(find(&heard_a, &sa).is_none() && find(&heard_b, &sb).is_none());
        // Unlinked: b hears silence though a's far end still speaks.
        a.control(Control::Unlink, now);
        b.control(Control::Unlink, now);
        let before = hb.lock().unwrap().len();
        for _ in 0..5 {
            a.tick(now);
            b.tick(now);
        }
        assert!(hb.lock().unwrap()[before..].iter().all(|v| *v == 0));
    }
}
