//! One AI voice conversation on a call's audio.
//!
//! The call's media session feeds [`In::Frame`]s (20 ms of the caller, 16 kHz) and reports what
//! it played; the conversation answers with [`Out`]s: audio to queue, pause/resume/flush of
//! that audio (barge-in), messages to record, and its end. Every stage streams: the caller's
//! audio goes to speech-to-text as it arrives, the model's tokens are cut into sentences
//! ([`sentences::Splitter`]) and each sentence is synthesised as soon as it is complete, so the
//! first sentence plays while the model still writes the rest.
//!
//! End of turn: a voice activity detector (Silero VAD) watches the caller; `end_of_turn_ms`
//! of silence after speech ends the caller's turn, and all the final text of the turn goes to
//! the model. Speech-to-text does not wait for its own end of utterance: at the first 200 ms
//! of silence it is told to recognize what it holds ([`SttInput::Flush`]), so it decodes
//! while the rest of the end-of-turn silence passes; speech that resumes just goes on as more
//! of the same turn.
//!
//! Barge-in: speech longer than `min_speech_ms` while the assistant speaks pauses the
//! assistant's audio at once. What speech-to-text hears at the end of that turn decides:
//! words (not a mere "mhm") interrupt the answer (its message keeps only what was played,
//! `interrupted: true`) and start the next turn; nothing, or a backchannel, resumes the answer
//! where it paused.
//!
//! Knows nothing of events, calls or the database: the media part turns [`Out`] into commands.

pub mod sentences;

use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use vbin_event_schema::{AiLatency, AiRole, AiTool, AicallEndReason, VadConfig};
use vbin_llm::{ChatMessage, ChatRequest, LlmEvent, LlmProvider, ToolCall, ToolSpec};
use vbin_media::stt::vad::{Vad, VAD_CHUNK};
use vbin_media::stt::{SttError, SttInput, SttProvider};
use vbin_media::tts::{Speech, TtsProvider, TtsRequest, TTS_RATE_HZ};

/// Length of one frame of the session.
pub const FRAME: Duration = Duration::from_millis(20);
/// VAD chunks above this probability are speech.
const SPEECH_PROB: f32 = 0.5;
/// Within speech, chunks below this probability are silence.
const SILENCE_PROB: f32 = 0.35;
/// Speech shorter than this is not a turn (a click, a breath), in ms.
const MIN_TURN_SPEECH_MS: u64 = 64;
/// Silence after which speech-to-text is told to recognize what it holds (if the turn is
/// not over by then), in ms.
const PREPARE_MS: u64 = 200;
/// How long speech-to-text may take to answer the end of a turn before the conversation goes
/// on with what it has (a paused answer resumes).
const FLUSH_WAIT: Duration = Duration::from_millis(2_000);
/// Replies the model may write for one turn, tools included (a loop of tool calls ends).
const MAX_ROUNDS: usize = 4;
/// Largest `webhook_send` data, as JSON.
const MAX_WEBHOOK_DATA: usize = 16 * 1024;

/// How a conversation goes.
#[derive(Clone, Debug)]
pub struct Setup {
    /// The system prompt.
    pub system_prompt: String,
    /// The model (as the engine names it).
    pub model: String,
    /// Language of speech-to-text and text-to-speech.
    pub language: String,
    /// Voice of text-to-speech.
    pub voice: Option<String>,
    /// Tools the model may call.
    pub tools: Vec<AiTool>,
    /// Listening.
    pub vad: VadConfig,
    /// Said when the model fails.
    pub apology: String,
    /// Said when the caller says nothing for `vad.no_input_ms`.
    pub reprompt: String,
    /// The conversation ends after this long.
    pub max_duration: Duration,
    /// The assistant speaks first.
    pub greet: bool,
    /// The first words, made before the conversation started ([`prepare_greeting`]); the
    /// model is asked for them otherwise.
    pub greeting: Option<Greeting>,
}

/// The assistant's first words made ahead (while the call rings): each sentence with its
/// audio.
#[derive(Clone, Debug, PartialEq)]
pub struct Greeting {
    /// Sentences in order, with their audio (16 kHz).
    pub sentences: Vec<(String, Speech)>,
}

/// Asks the model for the assistant's first words (the system prompt alone, as a
/// conversation's first turn does) and synthesises them. None when the model fails, says
/// nothing or wants a tool first: the conversation then asks itself.
pub async fn prepare_greeting(setup: &Setup, engines: &Engines) -> Option<Greeting> {
    let req = ChatRequest {
        model: setup.model.clone(),
        messages: vec![ChatMessage::system(setup.system_prompt.clone())],
        tools: tool_specs(&setup.tools),
        max_tokens: Some(400),
        temperature: None,
    };
    let mut stream = engines.llm.stream(req).await.ok()?;
    let mut splitter = sentences::Splitter::default();
    let mut said = Vec::new();
    while let Some(ev) = stream.next().await {
        match ev.ok()? {
            LlmEvent::Token(t) => said.extend(splitter.push(&t)),
            LlmEvent::ToolCall(_) => return None,
            LlmEvent::Done { .. } => break,
        }
    }
    said.extend(splitter.finish());
    if said.is_empty() {
        return None;
    }
    let speech = futures::future::join_all(said.iter().map(|text| {
        let req = TtsRequest {
            text: text.clone(),
            language: setup.language.clone(),
            voice: setup.voice.clone(),
        };
        let tts = engines.tts.clone();
        async move { tts.synthesize(&req).await }
    }))
    .await;
    let sentences = said
        .into_iter()
        .zip(speech)
        .map(|(text, s)| s.ok().map(|s| (text, s)))
        .collect::<Option<Vec<_>>>()?;
    Some(Greeting { sentences })
}

/// Makes a voice activity detector for one stream.
pub type VadFactory = Arc<dyn Fn() -> Result<Box<dyn Vad + Send>, SttError> + Send + Sync>;

/// The engines a conversation uses.
#[derive(Clone)]
pub struct Engines {
    /// Speech-to-text.
    pub stt: Arc<dyn SttProvider>,
    /// Text-to-speech.
    pub tts: Arc<dyn TtsProvider>,
    /// The model.
    pub llm: Arc<dyn LlmProvider>,
    /// Barge-in detection.
    pub vad: VadFactory,
}

/// What the session tells the conversation.
#[derive(Debug)]
pub enum In {
    /// 20 ms of the caller (16 kHz).
    Frame(Vec<i16>),
    /// The first frame of a chunk went out (at this frame of the conversation).
    Started {
        /// The chunk.
        chunk: u64,
        /// Frames of the conversation so far.
        frame: u64,
    },
    /// The last frame of a chunk went out.
    Finished {
        /// The chunk.
        chunk: u64,
    },
    /// The audio paused here (answer to [`Out::Pause`]): in this chunk after this many samples
    /// (None: nothing was playing).
    PausedAt {
        /// The chunk.
        chunk: Option<u64>,
        /// Samples of it played.
        samples: usize,
    },
    /// End now (the call ended, the API stopped it).
    Stop(AicallEndReason),
    /// The answer to an [`Out::Tool`]: what the model is told (`Err`: the tool failed, why).
    ToolDone {
        /// The request's token.
        token: ToolToken,
        /// Its outcome.
        result: Result<String, String>,
    },
}

/// Names one [`Out::Tool`] request (its answer and its model turn).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ToolToken {
    gen: u64,
    index: usize,
}

/// What a tool asks of the platform (the conversation itself does no I/O).
#[derive(Clone, Debug, PartialEq)]
pub enum ToolRequest {
    /// Send `data` to the customer's webhook endpoint, signed like its webhooks.
    WebhookSend {
        /// What the model sends (a JSON object).
        data: serde_json::Value,
    },
}

/// A message of the conversation to record.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// Who.
    pub role: AiRole,
    /// What (for the assistant: what the caller heard).
    pub content: String,
    /// The caller interrupted it.
    pub interrupted: bool,
    /// The turn's latencies (assistant messages).
    pub latency: Option<AiLatency>,
}

/// What the conversation tells the session and the media part.
#[derive(Debug)]
pub enum Out {
    /// Queue this audio (chunk ids grow).
    Say {
        /// The chunk.
        chunk: u64,
        /// 16 kHz.
        speech: Speech,
    },
    /// Stop playing at once (keep the queue); answer with [`In::PausedAt`].
    Pause,
    /// Play on from where it paused.
    Resume,
    /// Drop everything queued (and the paused chunk's rest); what is queued next plays.
    Flush,
    /// Record a message.
    Message(Message),
    /// Carry out a tool call and answer with [`In::ToolDone`] (the model waits for it).
    Tool {
        /// Names the answer.
        token: ToolToken,
        /// What to do.
        request: ToolRequest,
    },
    /// The conversation is over: why, details, and the variables the model set.
    End {
        /// Why.
        reason: AicallEndReason,
        /// Details (an engine's error).
        detail: Option<String>,
        /// Flow variables the model set (`variable_set`).
        variables: HashMap<String, String>,
    },
}

/// A chunk of the assistant's speech.
struct Chunk {
    text: String,
    samples: usize,
    finished: bool,
}

/// The assistant's answer under way.
struct Answer {
    /// Generation: events of an older one are dropped.
    gen: u64,
    /// Rounds of the model so far (a tool call asks again).
    rounds: usize,
    splitter: sentences::Splitter,
    /// Sentences sent to text-to-speech, by order.
    next_seq: u64,
    /// Synthesised sentences waiting for their turn.
    ready: BTreeMap<u64, (String, Result<Speech, String>)>,
    /// The next sequence number to queue.
    next_to_say: u64,
    /// Chunks queued, in order.
    chunks: Vec<u64>,
    llm_done: bool,
    /// Tool calls of the current round, then (once the round is done) each with its result
    /// when it has one.
    tool_calls: Vec<ToolCall>,
    tool_round: Vec<(ToolCall, Option<String>)>,
    /// Text of the current round.
    round_text: String,
    /// When the model was asked, and latencies.
    asked_at: Instant,
    first_sentence_at: Option<Instant>,
    latency: AiLatency,
    /// Frame of the end of the caller's speech that this answers.
    speech_end_frame: Option<u64>,
    /// Said without the model (the apology, a reprompt): not part of the model's history.
    canned: bool,
}

impl Answer {
    /// A new answer of generation `gen` to the caller speech that ended at `speech_end_frame`.
    fn new(gen: u64, speech_end_frame: Option<u64>, latency: AiLatency, canned: bool) -> Self {
        Self {
            gen,
            rounds: if canned { MAX_ROUNDS } else { 0 },
            splitter: sentences::Splitter::default(),
            next_seq: 0,
            ready: BTreeMap::new(),
            next_to_say: 0,
            chunks: Vec::new(),
            llm_done: canned,
            tool_calls: Vec::new(),
            tool_round: Vec::new(),
            round_text: String::new(),
            asked_at: Instant::now(),
            first_sentence_at: None,
            latency,
            speech_end_frame,
            canned,
        }
    }
}

/// What a spawned model or synthesis task reports.
enum Work {
    /// An event of the model in (generation, round).
    Llm(u64, usize, Result<LlmEvent, String>),
    /// The model's stream of (generation, round) ended.
    LlmEnd(u64, usize),
    Tts(u64, u64, String, Result<Speech, String>),
}

/// Runs one conversation until it ends (or `input` closes).
pub async fn run(
    setup: Setup,
    engines: Engines,
    mut input: mpsc::Receiver<In>,
    out: mpsc::Sender<Out>,
) {
    let mut c = match Conversation::new(setup, engines, out) {
        Ok(c) => c,
        Err((out, e)) => {
            let _ = out
                .send(Out::End {
                    reason: AicallEndReason::Failed,
                    detail: Some(e),
                    variables: HashMap::new(),
                })
                .await;
            return;
        }
    };
    c.run(&mut input).await;
}

struct Conversation {
    setup: Setup,
    engines: Engines,
    out: mpsc::Sender<Out>,
    /// In a mutex only so that the conversation is `Sync` (its futures hold `&self`).
    vad: std::sync::Mutex<Box<dyn Vad + Send>>,
    vad_buf: Vec<f32>,
    stt_audio: Option<mpsc::Sender<SttInput>>,
    stt_results: mpsc::Receiver<Result<vbin_media::stt::Segment, SttError>>,
    work_tx: mpsc::UnboundedSender<Work>,
    work_rx: mpsc::UnboundedReceiver<Work>,
    history: Vec<ChatMessage>,
    variables: HashMap<String, String>,
    /// Frames received.
    frames: u64,
    /// Caller speech: ms of speech in this turn, ms of silence since, whether it is long
    /// enough to interrupt, and when the last speech chunk arrived (frame and instant).
    speech_ms: u64,
    silence_ms: u64,
    in_speech: bool,
    last_speech_frame: u64,
    last_speech_at: Option<Instant>,
    /// The caller's turn: final text heard so far; flushes awaiting speech-to-text's answer
    /// (when each was sent); whether the speech so far was flushed; whether the turn's
    /// silence has passed (it is over once the flushes are answered).
    turn_text: String,
    /// How long speech-to-text took to answer the turn's last flush.
    turn_stt_ms: Option<u64>,
    /// Flushes given up on (not answered in time): their late answers are not this turn's.
    stale_flushes: usize,
    /// Without barge-in: what the caller said while the assistant spoke, answered after it.
    held_text: String,
    held_stt_ms: Option<u64>,
    flushes: std::collections::VecDeque<Instant>,
    flushed: bool,
    turn_ended: bool,
    answer: Option<Answer>,
    gen: u64,
    next_chunk: u64,
    chunk_info: HashMap<u64, Chunk>,
    /// Barge-in: the audio is paused, and where.
    paused: bool,
    paused_at: Option<(Option<u64>, usize)>,
    /// Caller silence: when the assistant last finished speaking or the caller last spoke.
    idle_since: Instant,
    reprompted: bool,
    /// The end, once decided, waits for the speech under way.
    ending: Option<(AicallEndReason, Option<String>)>,
    deadline: Instant,
    done: bool,
}

impl Conversation {
    fn new(
        setup: Setup,
        engines: Engines,
        out: mpsc::Sender<Out>,
    ) -> Result<Self, (mpsc::Sender<Out>, String)> {
        let vad = match (engines.vad)() {
            Ok(v) => v,
            Err(e) => return Err((out, format!("voice activity detection: {e}"))),
        };
        let stt = match engines.stt.start(&setup.language) {
            Ok(s) => s,
            Err(e) => return Err((out, format!("speech-to-text: {e}"))),
        };
        let (work_tx, work_rx) = mpsc::unbounded_channel();
        let now = Instant::now();
        let deadline = now + setup.max_duration;
        let history = vec![ChatMessage::system(setup.system_prompt.clone())];
        Ok(Self {
            setup,
            engines,
            out,
            vad: std::sync::Mutex::new(vad),
            vad_buf: Vec::with_capacity(VAD_CHUNK),
            stt_audio: Some(stt.audio),
            stt_results: stt.results,
            work_tx,
            work_rx,
            history,
            variables: HashMap::new(),
            frames: 0,
            speech_ms: 0,
            silence_ms: 0,
            in_speech: false,
            last_speech_frame: 0,
            last_speech_at: None,
            turn_text: String::new(),
            turn_stt_ms: None,
            stale_flushes: 0,
            held_text: String::new(),
            held_stt_ms: None,
            flushes: std::collections::VecDeque::new(),
            flushed: false,
            turn_ended: false,
            answer: None,
            gen: 0,
            next_chunk: 1,
            chunk_info: HashMap::new(),
            paused: false,
            paused_at: None,
            idle_since: now,
            reprompted: false,
            ending: None,
            deadline,
            done: false,
        })
    }

    async fn send(&self, o: Out) {
        let _ = self.out.send(o).await;
    }

    async fn run(&mut self, input: &mut mpsc::Receiver<In>) {
        if self.setup.greet {
            match self.setup.greeting.take() {
                Some(g) => self.say_prepared(g).await,
                None => self.ask(None).await,
            }
        }
        while !self.done {
            let no_input =
                self.idle_since + Duration::from_millis(self.setup.vad.no_input_ms as u64);
            let flush_due = self
                .flushes
                .front()
                .filter(|_| self.turn_ended)
                .map(|t| *t + FLUSH_WAIT);
            // Waiting for the caller: nothing said, no turn under way or being recognized.
            let listening = self.answer.is_none()
                && self.ending.is_none()
                && self.speech_ms == 0
                && !self.turn_ended
                && self.flushes.is_empty();
            tokio::select! {
                m = input.recv() => match m {
                    Some(m) => self.on_input(m).await,
                    // The session is gone.
                    None => self.end(AicallEndReason::CallEnded, None).await,
                },
                Some(r) = self.stt_results.recv() => match r {
                    Ok(seg) if seg.is_final => self.on_segment(seg).await,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "ai: speech-to-text failed"),
                },
                Some(w) = self.work_rx.recv() => self.on_work(w).await,
                _ = tokio::time::sleep_until(no_input), if listening => {
                    self.on_no_input().await
                }
                _ = tokio::time::sleep_until(flush_due.unwrap_or(self.deadline)), if flush_due.is_some() => {
                    tracing::warn!("ai: speech-to-text did not answer the end of the turn in time");
                    self.stale_flushes += self.flushes.len();
                    self.flushes.clear();
                    self.turn_over().await
                }
                _ = tokio::time::sleep_until(self.deadline) => {
                    self.send(Out::Flush).await;
                    self.end(AicallEndReason::DurationLimit, None).await;
                }
            }
        }
    }

    async fn end(&mut self, reason: AicallEndReason, detail: Option<String>) {
        if self.done {
            return;
        }
        self.done = true;
        self.stt_audio = None;
        let variables = std::mem::take(&mut self.variables);
        self.send(Out::End {
            reason,
            detail,
            variables,
        })
        .await;
    }

    async fn on_input(&mut self, m: In) {
        match m {
            In::Frame(f) => self.on_frame(f).await,
            In::Started { chunk, frame } => {
                if let Some(a) = self.answer.as_mut() {
                    if a.chunks.first() == Some(&chunk) {
                        if let Some(end) = a.speech_end_frame {
                            a.latency.voice_to_voice_ms =
                                Some(frame.saturating_sub(end) * FRAME.as_millis() as u64);
                        }
                    }
                }
            }
            In::Finished { chunk } => {
                if let Some(c) = self.chunk_info.get_mut(&chunk) {
                    c.finished = true;
                }
                self.maybe_finish_answer().await;
            }
            In::PausedAt { chunk, samples } => self.paused_at = Some((chunk, samples)),
            In::Stop(reason) => {
                self.send(Out::Flush).await;
                self.end(reason, None).await;
            }
            In::ToolDone { token, result } => self.on_tool_done(token, result).await,
        }
    }

    async fn on_frame(&mut self, f: Vec<i16>) {
        self.frames += 1;
        if let Some(a) = &self.stt_audio {
            // Speech-to-text that falls 10 s behind loses audio rather than stalling the
            // conversation.
            let _ = a.try_send(SttInput::Audio(f.clone()));
        }
        self.vad_buf
            .extend(f.iter().map(|&s| f32::from(s) / 32768.0));
        while self.vad_buf.len() >= VAD_CHUNK {
            let chunk: Vec<f32> = self.vad_buf.drain(..VAD_CHUNK).collect();
            let arr: &[f32; VAD_CHUNK] = chunk.as_slice().try_into().expect("a chunk");
            let p = match self.vad.lock().expect("vad").speech_prob(arr) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "ai: voice activity detection failed");
                    0.0
                }
            };
            self.on_vad(p).await;
        }
    }

    async fn on_vad(&mut self, p: f32) {
        let chunk_ms = (VAD_CHUNK as u64 * 1000) / TTS_RATE_HZ as u64;
        let turn = self.speech_ms > 0;
        if p >= SPEECH_PROB || (turn && p >= SILENCE_PROB) {
            self.speech_ms += chunk_ms;
            self.silence_ms = 0;
            self.flushed = false;
            self.last_speech_frame = self.frames;
            self.last_speech_at = Some(Instant::now());
            self.idle_since = Instant::now();
            if self.speech_ms >= self.setup.vad.min_speech_ms as u64 {
                self.in_speech = true;
                if self.setup.vad.barge_in && !self.paused && self.speaking() {
                    self.paused = true;
                    self.paused_at = None;
                    self.send(Out::Pause).await;
                }
            }
        } else if turn {
            self.silence_ms += chunk_ms;
            let eot = self.setup.vad.end_of_turn_ms as u64;
            let speech = self.speech_ms >= MIN_TURN_SPEECH_MS;
            if speech && !self.flushed && self.silence_ms >= PREPARE_MS.min(eot) {
                self.flush();
            }
            if self.silence_ms >= eot {
                self.in_speech = false;
                self.speech_ms = 0;
                if speech {
                    self.turn_ended = true;
                    if self.flushes.is_empty() {
                        self.turn_over().await;
                    }
                }
            }
        }
    }

    /// Tells speech-to-text to recognize what it holds now.
    fn flush(&mut self) {
        let Some(a) = &self.stt_audio else {
            return;
        };
        self.flushed = true;
        // A full queue means speech-to-text is 10 s behind: the turn goes on without it.
        if a.try_send(SttInput::Flush).is_ok() {
            self.flushes.push_back(Instant::now());
        }
    }

    /// A final segment of the caller's speech.
    async fn on_segment(&mut self, mut seg: vbin_media::stt::Segment) {
        if seg.flushed && self.stale_flushes > 0 {
            // The late answer of a flush given up on: its words (if any) come on their own.
            self.stale_flushes -= 1;
            seg.flushed = false;
        }
        let text = seg.text.trim();
        if !text.is_empty() {
            if !self.turn_text.is_empty() {
                self.turn_text.push(' ');
            }
            self.turn_text.push_str(text);
        }
        let answered = if seg.flushed {
            self.flushes.pop_front()
        } else {
            None
        };
        if let Some(t) = answered {
            self.turn_stt_ms = Some(t.elapsed().as_millis() as u64);
        }
        if !self.flushes.is_empty() {
            // More of the turn is being recognized.
        } else if self.turn_ended {
            self.turn_over().await;
        } else if answered.is_none() && self.speech_ms == 0 && !self.turn_text.is_empty() {
            // Words that came after the turn on their own: a recognizer that ends utterances
            // itself, or an answer later than the wait.
            self.turn_stt_ms = self.last_speech_at.map(|t| t.elapsed().as_millis() as u64);
            self.turn_over().await;
        }
    }

    /// The caller's turn is over: what they said is answered; nothing resumes a paused
    /// answer.
    async fn turn_over(&mut self) {
        self.turn_ended = false;
        let stt_ms = self.turn_stt_ms.take();
        let text = std::mem::take(&mut self.turn_text);
        if text.is_empty() {
            if self.paused {
                // Speech that speech-to-text did not take for words: a false interruption.
                self.resume().await;
            }
            return;
        }
        self.on_user_text(text, stt_ms).await;
    }

    /// Whether the assistant's audio is queued or playing.
    fn speaking(&self) -> bool {
        self.answer.as_ref().is_some_and(|a| {
            a.chunks
                .iter()
                .any(|c| self.chunk_info.get(c).is_some_and(|i| !i.finished))
        })
    }

    async fn resume(&mut self) {
        if self.paused {
            self.paused = false;
            self.send(Out::Resume).await;
        }
    }

    async fn on_user_text(&mut self, text: String, stt_ms: Option<u64>) {
        if self.paused {
            if text.is_empty() || backchannel(&text) {
                self.resume().await;
                return;
            }
            self.interrupt().await;
        } else if self.answer.is_some() {
            if !self.setup.vad.barge_in {
                // Without barge-in the answer plays out; the caller's words are the next turn,
                // answered once it is over (the history stays in order).
                if !self.held_text.is_empty() {
                    self.held_text.push(' ');
                }
                self.held_text.push_str(&text);
                self.held_stt_ms = stt_ms;
                return;
            }
            self.interrupt().await;
        }
        if self.ending.is_some() {
            // The caller spoke over the last words (a goodbye, the apology): theirs are kept,
            // and the end goes on.
            self.record(AiRole::User, text, false, None).await;
            self.maybe_finish_answer().await;
            return;
        }
        self.answer_turn(text, stt_ms).await;
    }

    /// Records the caller's turn and asks the model to answer it.
    async fn answer_turn(&mut self, text: String, stt_ms: Option<u64>) {
        self.reprompted = false;
        self.idle_since = Instant::now();
        self.record(AiRole::User, text.clone(), false, None).await;
        self.history.push(ChatMessage::user(text));
        let latency = AiLatency {
            stt_ms,
            ..AiLatency::default()
        };
        self.ask(Some((self.last_speech_frame, latency))).await;
    }

    /// The caller interrupted the answer: drop its audio, keep what was played.
    async fn interrupt(&mut self) {
        self.send(Out::Flush).await;
        self.paused = false;
        // The model's history needs an answer to each of its tool calls.
        self.settle_tools(true).await;
        let Some(a) = self.answer.take() else {
            return;
        };
        let mut played = Vec::new();
        for id in &a.chunks {
            let Some(c) = self.chunk_info.remove(id) else {
                continue;
            };
            if c.finished {
                played.push(c.text);
            } else if let Some((Some(at), samples)) = self.paused_at {
                if at == *id && c.samples > 0 {
                    played.push(prefix(&c.text, samples as f64 / c.samples as f64));
                }
            }
        }
        let content = played.join(" ").trim().to_string();
        // An answer cut before any of it was heard leaves no message.
        if !content.is_empty() {
            if !a.canned {
                self.history.push(ChatMessage::assistant(content.clone()));
            }
            self.record(AiRole::Assistant, content, true, Some(a.latency))
                .await;
        }
    }

    /// Asks the model for the next answer (`speech_end` is the turn's caller speech, if
    /// any).
    async fn ask(&mut self, speech_end: Option<(u64, AiLatency)>) {
        self.gen += 1;
        let (speech_end_frame, latency) = speech_end.unzip();
        self.answer = Some(Answer::new(
            self.gen,
            speech_end_frame,
            latency.unwrap_or_default(),
            false,
        ));
        self.start_round();
    }

    /// Says a greeting made ahead: as if the model had just written it.
    async fn say_prepared(&mut self, g: Greeting) {
        self.gen += 1;
        let mut a = Answer::new(self.gen, None, AiLatency::default(), false);
        a.llm_done = true;
        a.first_sentence_at = Some(Instant::now());
        for (text, speech) in g.sentences {
            a.ready.insert(a.next_seq, (text, Ok(speech)));
            a.next_seq += 1;
        }
        self.answer = Some(a);
        self.say_ready().await;
    }

    /// Streams one reply of the model into the work channel.
    fn start_round(&mut self) {
        let tools = tool_specs(&self.setup.tools);
        let Some(a) = self.answer.as_mut() else {
            return;
        };
        a.rounds += 1;
        a.llm_done = false;
        a.tool_calls.clear();
        a.round_text.clear();
        let req = ChatRequest {
            model: self.setup.model.clone(),
            messages: self.history.clone(),
            tools,
            max_tokens: Some(400),
            temperature: None,
        };
        let (llm, tx, gen, round) = (
            self.engines.llm.clone(),
            self.work_tx.clone(),
            a.gen,
            a.rounds,
        );
        tokio::spawn(async move {
            match llm.stream(req).await {
                Ok(mut s) => {
                    while let Some(ev) = s.next().await {
                        let failed = ev.is_err();
                        let ev = ev.map_err(|e| e.to_string());
                        if tx.send(Work::Llm(gen, round, ev)).is_err() || failed {
                            return;
                        }
                    }
                    let _ = tx.send(Work::LlmEnd(gen, round));
                }
                Err(e) => {
                    let _ = tx.send(Work::Llm(gen, round, Err(e.to_string())));
                }
            }
        });
    }

    async fn on_work(&mut self, w: Work) {
        let current = self.answer.as_ref().map(|a| a.gen);
        let round = self.answer.as_ref().map(|a| a.rounds);
        match w {
            Work::Llm(gen, r, ev) if Some(gen) == current && Some(r) == round => match ev {
                Ok(LlmEvent::Token(t)) => {
                    let a = self.answer.as_mut().expect("answer");
                    if a.latency.llm_first_token_ms.is_none() {
                        a.latency.llm_first_token_ms =
                            Some(a.asked_at.elapsed().as_millis() as u64);
                    }
                    a.round_text.push_str(&t);
                    for s in a.splitter.push(&t) {
                        self.synthesize(s);
                    }
                }
                Ok(LlmEvent::ToolCall(call)) => {
                    self.answer.as_mut().expect("answer").tool_calls.push(call);
                }
                Ok(LlmEvent::Done { .. }) => self.round_done().await,
                Err(e) => self.engine_failed(e).await,
            },
            // A stream that ended without saying it was done.
            Work::LlmEnd(gen, r)
                if Some(gen) == current
                    && Some(r) == round
                    && !self.answer.as_ref().is_some_and(|a| a.llm_done) =>
            {
                self.round_done().await
            }
            Work::Tts(gen, seq, text, speech) if Some(gen) == current => {
                let a = self.answer.as_mut().expect("answer");
                a.ready.insert(seq, (text, speech));
                self.say_ready().await;
            }
            _ => {}
        }
    }

    /// Sends a sentence to text-to-speech (results come back in any order).
    fn synthesize(&mut self, sentence: String) {
        let Some(a) = self.answer.as_mut() else {
            return;
        };
        let seq = a.next_seq;
        a.next_seq += 1;
        if a.first_sentence_at.is_none() {
            a.first_sentence_at = Some(Instant::now());
        }
        let req = TtsRequest {
            text: sentence.clone(),
            language: self.setup.language.clone(),
            voice: self.setup.voice.clone(),
        };
        let (tts, tx, gen) = (self.engines.tts.clone(), self.work_tx.clone(), a.gen);
        tokio::spawn(async move {
            let r = tts.synthesize(&req).await.map_err(|e| e.to_string());
            let _ = tx.send(Work::Tts(gen, seq, sentence, r));
        });
    }

    /// Queues the synthesised sentences that are next in order.
    async fn say_ready(&mut self) {
        loop {
            let Some(a) = self.answer.as_mut() else {
                return;
            };
            let Some((text, speech)) = a.ready.remove(&a.next_to_say) else {
                break;
            };
            a.next_to_say += 1;
            match speech {
                Ok(speech) => {
                    if a.latency.tts_first_audio_ms.is_none() {
                        if let Some(t) = a.first_sentence_at {
                            a.latency.tts_first_audio_ms = Some(t.elapsed().as_millis() as u64);
                        }
                    }
                    let chunk = self.next_chunk;
                    self.next_chunk += 1;
                    a.chunks.push(chunk);
                    self.chunk_info.insert(
                        chunk,
                        Chunk {
                            text,
                            samples: speech.len(),
                            finished: false,
                        },
                    );
                    self.send(Out::Say { chunk, speech }).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, sentence = %text, "ai: a sentence could not be synthesised; skipped")
                }
            }
        }
        self.maybe_finish_answer().await;
    }

    /// The model finished a reply: the rest of its text, then its tool calls.
    async fn round_done(&mut self) {
        let Some(a) = self.answer.as_mut() else {
            return;
        };
        a.llm_done = true;
        if let Some(rest) = a.splitter.finish() {
            self.synthesize(rest);
        }
        let a = self.answer.as_mut().expect("answer");
        let calls = std::mem::take(&mut a.tool_calls);
        if calls.is_empty() {
            self.maybe_finish_answer().await;
            return;
        }
        let text = a.round_text.clone();
        let mut msg = ChatMessage::assistant(text);
        msg.tool_calls = calls.clone();
        self.history.push(msg);
        let mut round = Vec::with_capacity(calls.len());
        for (index, call) in calls.into_iter().enumerate() {
            let result = self.run_tool(&call, index).await;
            round.push((call, result));
        }
        if let Some(a) = self.answer.as_mut() {
            a.tool_round = round;
        }
        self.tools_answered().await;
    }

    /// A tool answered (`In::ToolDone`).
    async fn on_tool_done(&mut self, token: ToolToken, result: Result<String, String>) {
        let Some(a) = self.answer.as_mut().filter(|a| a.gen == token.gen) else {
            return;
        };
        if let Some((_, r @ None)) = a.tool_round.get_mut(token.index) {
            *r = Some(match result {
                Ok(ok) => format!("ok: {ok}"),
                Err(e) => format!("error: {e}"),
            });
            self.tools_answered().await;
        }
    }

    /// Records the round's tool results in order (`cancelled`: the ones still waiting are
    /// told to the model as cancelled); false while some are still waiting.
    async fn settle_tools(&mut self, cancelled: bool) -> bool {
        let Some(a) = self.answer.as_mut() else {
            return true;
        };
        if !cancelled && a.tool_round.iter().any(|(_, r)| r.is_none()) {
            return false;
        }
        let round = std::mem::take(&mut a.tool_round);
        for (call, result) in round {
            let result =
                result.unwrap_or_else(|| "error: cancelled, the caller spoke first".into());
            self.record(
                AiRole::Tool,
                format!("{}({}) -> {}", call.name, call.arguments, result),
                false,
                None,
            )
            .await;
            self.history.push(ChatMessage::tool_result(call.id, result));
        }
        true
    }

    /// Once every tool of the round answered: the model goes on (or the answer ends).
    async fn tools_answered(&mut self) {
        if !self.settle_tools(false).await {
            return;
        }
        let rounds = self.answer.as_ref().map_or(0, |a| a.rounds);
        if self.ending.is_none() && rounds < MAX_ROUNDS {
            // The model is told the tools' results and goes on.
            self.start_round();
        } else {
            self.maybe_finish_answer().await;
        }
    }

    /// Carries out tool call `index` of the round; returns what the model is told, or None
    /// when the platform carries it out ([`Out::Tool`]) and answers later.
    async fn run_tool(&mut self, call: &ToolCall, index: usize) -> Option<String> {
        let Some(tool) = AiTool::parse(&call.name).filter(|t| self.setup.tools.contains(t)) else {
            return Some(format!("error: there is no tool {:?}", call.name));
        };
        let args: serde_json::Value = match serde_json::from_str(&call.arguments) {
            Ok(v) => v,
            Err(e) => return Some(format!("error: the arguments are not JSON ({e})")),
        };
        if tool == AiTool::WebhookSend {
            let data = args.get("data").cloned().unwrap_or(serde_json::Value::Null);
            if !data.is_object() {
                return Some("error: data must be a JSON object".into());
            }
            if data.to_string().len() > MAX_WEBHOOK_DATA {
                return Some(format!(
                    "error: data must be at most {MAX_WEBHOOK_DATA} bytes of JSON"
                ));
            }
            let token = ToolToken {
                gen: self.answer.as_ref().map_or(0, |a| a.gen),
                index,
            };
            self.send(Out::Tool {
                token,
                request: ToolRequest::WebhookSend { data },
            })
            .await;
            return None;
        }
        Some(self.run_local_tool(tool, &args))
    }

    /// The tools the conversation carries out itself.
    fn run_local_tool(&mut self, tool: AiTool, args: &serde_json::Value) -> String {
        match tool {
            AiTool::Hangup => {
                self.ending = Some((AicallEndReason::Hangup, None));
                "ok: the call ends after what you are saying".into()
            }
            AiTool::Stop => {
                self.ending = Some((AicallEndReason::Stopped, None));
                "ok: the conversation ends after what you are saying".into()
            }
            AiTool::VariableSet => {
                let key = args["key"].as_str().unwrap_or_default();
                let value = match &args["value"] {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => String::new(),
                    v => v.to_string(),
                };
                if key.is_empty() || key.len() > 128 || value.len() > 1024 {
                    return "error: key must be 1 to 128 bytes, value at most 1024".into();
                }
                self.variables.insert(key.to_string(), value);
                "ok".into()
            }
            // webhook_send is the platform's (run_tool); connect waits for issue 19.
            AiTool::WebhookSend | AiTool::Connect => {
                format!("error: {} is not available", tool.as_str())
            }
        }
    }

    /// The model failed: the caller hears the apology, then the conversation ends.
    async fn engine_failed(&mut self, error: String) {
        tracing::warn!(%error, "ai: the model failed");
        if self.ending.is_some() {
            return;
        }
        self.ending = Some((AicallEndReason::EngineFailed, Some(error)));
        self.say_canned(self.setup.apology.clone()).await;
    }

    /// Says `text` without the model (the apology, a reprompt).
    async fn say_canned(&mut self, text: String) {
        self.gen += 1;
        let speech_end_frame = self.answer.as_ref().and_then(|a| a.speech_end_frame);
        if self.answer.is_some() {
            self.send(Out::Flush).await;
        }
        self.answer = Some(Answer::new(
            self.gen,
            speech_end_frame,
            AiLatency::default(),
            true,
        ));
        self.synthesize(text);
    }

    async fn on_no_input(&mut self) {
        if self.reprompted {
            self.end(AicallEndReason::NoInput, None).await;
            return;
        }
        self.reprompted = true;
        self.say_canned(self.setup.reprompt.clone()).await;
    }

    /// Ends the answer once the model is done and everything queued has played.
    async fn maybe_finish_answer(&mut self) {
        let Some(a) = &self.answer else {
            if let Some((reason, detail)) = self.ending.take() {
                self.end(reason, detail).await;
            }
            return;
        };
        // Tools still to answer: the model goes on after them.
        let all_said = a.llm_done
            && a.tool_round.is_empty()
            && a.next_to_say == a.next_seq
            && a.ready.is_empty();
        let all_played = a
            .chunks
            .iter()
            .all(|c| self.chunk_info.get(c).is_none_or(|i| i.finished));
        if !all_said || !all_played {
            return;
        }
        let a = self.answer.take().expect("answer");
        let text: Vec<String> = a
            .chunks
            .iter()
            .filter_map(|c| self.chunk_info.remove(c).map(|i| i.text))
            .collect();
        let content = text.join(" ");
        if !content.is_empty() {
            if !a.canned {
                self.history.push(ChatMessage::assistant(content.clone()));
            }
            self.record(AiRole::Assistant, content, false, Some(a.latency))
                .await;
            if !a.canned {
                let l = a.latency;
                for (name, ms) in [
                    ("vbin_ai_voice_to_voice_seconds", l.voice_to_voice_ms),
                    ("vbin_ai_stt_seconds", l.stt_ms),
                    ("vbin_ai_llm_first_token_seconds", l.llm_first_token_ms),
                    ("vbin_ai_tts_first_audio_seconds", l.tts_first_audio_ms),
                ] {
                    if let Some(ms) = ms {
                        metrics::histogram!(name).record(ms as f64 / 1000.0);
                    }
                }
            }
        }
        self.idle_since = Instant::now();
        if let Some((reason, detail)) = self.ending.take() {
            self.end(reason, detail).await;
            return;
        }
        if !self.held_text.is_empty() {
            // What the caller said over the answer (without barge-in) is the next turn.
            let text = std::mem::take(&mut self.held_text);
            let stt_ms = self.held_stt_ms.take();
            self.answer_turn(text, stt_ms).await;
        }
    }

    async fn record(
        &self,
        role: AiRole,
        content: String,
        interrupted: bool,
        latency: Option<AiLatency>,
    ) {
        self.send(Out::Message(Message {
            role,
            content,
            interrupted,
            latency,
        }))
        .await;
    }
}

/// The first `share` (0..1) of `text`'s words, rounded up.
fn prefix(text: &str, share: f64) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let n = ((words.len() as f64) * share.clamp(0.0, 1.0)).ceil() as usize;
    words[..n.min(words.len())].join(" ")
}

/// Whether what the caller said while the assistant spoke only acknowledges it.
fn backchannel(text: &str) -> bool {
    const WORDS: [&str; 14] = [
        "mhm", "mm", "mmhmm", "hmm", "uhhuh", "uh", "um", "ah", "oh", "yeah", "yep", "ok", "okay",
        "right",
    ];
    let words: Vec<String> = text
        .split(|c: char| c.is_whitespace() || c == '-')
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphabetic())
                .collect::<String>()
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect();
    let joined = words.concat();
    words.is_empty()
        || WORDS.contains(&joined.as_str())
        || words.iter().all(|w| WORDS.contains(&w.as_str()))
}

/// The functions `tools` are offered to the model as.
fn tool_specs(tools: &[AiTool]) -> Vec<ToolSpec> {
    tools.iter().filter_map(|t| tool_spec(*t)).collect()
}

/// The function a tool is offered to the model as.
fn tool_spec(tool: AiTool) -> Option<ToolSpec> {
    let (description, parameters) = match tool {
        AiTool::Hangup => (
            "Hang up the call after what you are saying now (say goodbye first).",
            serde_json::json!({"type": "object", "properties": {}}),
        ),
        AiTool::Stop => (
            "End this conversation and hand the caller back to the call's flow.",
            serde_json::json!({"type": "object", "properties": {}}),
        ),
        AiTool::VariableSet => (
            "Remember a value for the rest of the call (e.g. what the caller chose).",
            serde_json::json!({"type": "object", "required": ["key", "value"], "properties": {
                "key": {"type": "string"}, "value": {"type": "string"}}}),
        ),
        AiTool::WebhookSend => (
            "Send data to the business's server (an order, a booking, a callback request). \
             Answers whether it was received.",
            serde_json::json!({"type": "object", "required": ["data"], "properties": {
                "data": {"type": "object", "description": "What to send."}}}),
        ),
        AiTool::Connect => return None,
    };
    Some(ToolSpec {
        name: tool.as_str().into(),
        description: description.into(),
        parameters,
    })
}

#[cfg(test)]
mod tests;
