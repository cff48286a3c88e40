//! The conversation's turn-taking against a simulated session (frames paced on tokio's paused
//! clock) and stand-ins for the engines: speech is any loud frame, speech-to-text says the
//! next scripted line when an utterance ends, the model replies from a script, and
//! text-to-speech makes 10 ms of audio per character. The real engines are exercised by the
//! media part's end-to-end tests.

use super::*;
use std::collections::VecDeque;
use std::sync::Mutex;
use vbin_llm::{LlmError, LlmStream};
use vbin_media::stt::{Segment, SttSession};
use vbin_media::tts::TtsError;

struct LoudVad;

impl Vad for LoudVad {
    fn speech_prob(&mut self, chunk: &[f32; VAD_CHUNK]) -> Result<f32, SttError> {
        Ok(if chunk.iter().any(|s| s.abs() > 0.1) {
            0.9
        } else {
            0.0
        })
    }
    fn reset(&mut self) {}
}

/// Says the next line of `lines` for an utterance (>= 100 ms loud): as Whisper does, in
/// answer to the conversation's end-of-turn flush; or, as a recognizer that ends utterances on
/// its own (`own_endpoint`), after 300 ms of silence, answering flushes at once with nothing.
/// A flush is answered after `decode` (nothing else is heard meanwhile, as a busy decoder).
struct ScriptedStt {
    lines: Arc<Mutex<VecDeque<String>>>,
    own_endpoint: bool,
    decode: Duration,
}

impl SttProvider for ScriptedStt {
    fn name(&self) -> &'static str {
        "scripted"
    }
    fn start(&self, _: &str) -> Result<SttSession, SttError> {
        let (audio, mut frames) = mpsc::channel::<SttInput>(1000);
        let (tx, results) = mpsc::channel(16);
        let (lines, own_endpoint, decode) = (self.lines.clone(), self.own_endpoint, self.decode);
        tokio::spawn(async move {
            let (mut loud, mut quiet) = (0, 0);
            let next = || lines.lock().unwrap().pop_front().unwrap_or_default();
            while let Some(input) = frames.recv().await {
                let seg = match input {
                    SttInput::Audio(f) if f.iter().any(|s| s.unsigned_abs() > 3000) => {
                        loud += 1;
                        quiet = 0;
                        continue;
                    }
                    SttInput::Audio(_) => {
                        quiet += 1;
                        if !(own_endpoint && loud >= 5 && quiet == 15) {
                            continue;
                        }
                        loud = 0;
                        Segment::final_text(next(), 0, 0)
                    }
                    SttInput::Flush => {
                        tokio::time::sleep(decode).await;
                        let text = if !own_endpoint && loud >= 5 {
                            loud = 0;
                            next()
                        } else {
                            String::new()
                        };
                        Segment {
                            flushed: true,
                            ..Segment::final_text(text, 0, 0)
                        }
                    }
                };
                if tx.send(Ok(seg)).await.is_err() {
                    return;
                }
            }
        });
        Ok(SttSession { audio, results })
    }
}

/// Replies with the next script (events, or a failure), and keeps what it was asked.
struct ScriptedLlm {
    replies: Mutex<VecDeque<Result<Vec<LlmEvent>, String>>>,
    asked: Mutex<Vec<ChatRequest>>,
}

#[async_trait::async_trait]
impl LlmProvider for ScriptedLlm {
    fn name(&self) -> &'static str {
        "scripted"
    }
    async fn stream(&self, req: ChatRequest) -> Result<LlmStream, LlmError> {
        self.asked.lock().unwrap().push(req);
        let reply = self.replies.lock().unwrap().pop_front();
        match reply {
            Some(Ok(events)) => Ok(futures::stream::iter(events.into_iter().map(Ok)).boxed()),
            Some(Err(e)) => Err(LlmError::Connect(e)),
            None => Err(LlmError::Connect("no more replies".into())),
        }
    }
}

struct CharTts;

#[async_trait::async_trait]
impl TtsProvider for CharTts {
    fn name(&self) -> &'static str {
        "chars"
    }
    async fn synthesize(&self, req: &TtsRequest) -> Result<Speech, TtsError> {
        Ok(vec![1000i16; req.text.len() * 160].into())
    }
}

fn tokens(text: &str) -> Vec<LlmEvent> {
    let mut v: Vec<LlmEvent> = text
        .split_inclusive(' ')
        .map(|t| LlmEvent::Token(t.to_string()))
        .collect();
    v.push(LlmEvent::Done {
        finish_reason: "stop".into(),
    });
    v
}

fn setup(greet: bool) -> Setup {
    Setup {
        system_prompt: "You answer the phone for a bakery.".into(),
        model: "m".into(),
        language: "en-US".into(),
        voice: None,
        tools: vec![AiTool::Hangup, AiTool::VariableSet],
        vad: VadConfig::default(),
        apology: "Sorry, I cannot answer now.".into(),
        reprompt: "Are you still there?".into(),
        max_duration: Duration::from_secs(600),
        greet,
        greeting: None,
    }
}

/// The session side: plays queued chunks frame by frame and records what happens.
struct Sim {
    tx: mpsc::Sender<In>,
    rx: mpsc::Receiver<Out>,
    queue: VecDeque<(u64, Speech, usize)>,
    paused: bool,
    frame: u64,
    messages: Vec<Message>,
    end: Option<(AicallEndReason, HashMap<String, String>)>,
    /// Frames at which a pause arrived.
    pauses: Vec<u64>,
    resumes: usize,
    llm: Arc<ScriptedLlm>,
    lines: Arc<Mutex<VecDeque<String>>>,
    /// Tool requests, and the answers to give them (none left: they are never answered).
    tools: Vec<ToolRequest>,
    tool_answers: VecDeque<Result<String, String>>,
}

impl Sim {
    fn start(setup: Setup, replies: Vec<Result<Vec<LlmEvent>, String>>, lines: &[&str]) -> Self {
        Self::with_stt(setup, replies, lines, false, Duration::ZERO)
    }

    fn with_stt(
        setup: Setup,
        replies: Vec<Result<Vec<LlmEvent>, String>>,
        lines: &[&str],
        own_endpoint: bool,
        decode: Duration,
    ) -> Self {
        let llm = Arc::new(ScriptedLlm {
            replies: Mutex::new(replies.into()),
            asked: Mutex::new(vec![]),
        });
        let lines = Arc::new(Mutex::new(lines.iter().map(|s| s.to_string()).collect()));
        let engines = Engines {
            stt: Arc::new(ScriptedStt {
                lines: lines.clone(),
                own_endpoint,
                decode,
            }),
            tts: Arc::new(CharTts),
            llm: llm.clone(),
            vad: Arc::new(|| Ok(Box::new(LoudVad) as Box<dyn Vad + Send>)),
        };
        let (tx, input) = mpsc::channel(256);
        let (out, rx) = mpsc::channel(256);
        tokio::spawn(run(setup, engines, input, out));
        Sim {
            tx,
            rx,
            queue: VecDeque::new(),
            paused: false,
            frame: 0,
            messages: vec![],
            end: None,
            pauses: vec![],
            resumes: 0,
            llm,
            lines,
            tools: vec![],
            tool_answers: VecDeque::new(),
        }
    }

    async fn handle(&mut self) {
        while let Ok(o) = self.rx.try_recv() {
            match o {
                Out::Say { chunk, speech } => self.queue.push_back((chunk, speech, 0)),
                Out::Pause => {
                    self.paused = true;
                    self.pauses.push(self.frame);
                    let (chunk, samples) = self
                        .queue
                        .front()
                        .map_or((None, 0), |(c, _, p)| (Some(*c), *p));
                    let _ = self.tx.send(In::PausedAt { chunk, samples }).await;
                }
                Out::Resume => {
                    self.paused = false;
                    self.resumes += 1;
                }
                Out::Flush => {
                    self.queue.clear();
                    self.paused = false;
                }
                Out::Message(m) => self.messages.push(m),
                Out::Tool { token, request } => {
                    self.tools.push(request);
                    if let Some(result) = self.tool_answers.pop_front() {
                        let _ = self.tx.send(In::ToolDone { token, result }).await;
                    }
                }
                Out::End {
                    reason, variables, ..
                } => self.end = Some((reason, variables)),
            }
        }
    }

    /// One 20 ms frame: the caller's `level`, and a frame of the assistant played.
    async fn step(&mut self, level: i16) {
        let _ = self.tx.send(In::Frame(vec![level; 320])).await;
        tokio::time::sleep(FRAME).await;
        self.handle().await;
        if !self.paused {
            if let Some((chunk, speech, pos)) = self.queue.front_mut() {
                if *pos == 0 {
                    let _ = self
                        .tx
                        .send(In::Started {
                            chunk: *chunk,
                            frame: self.frame,
                        })
                        .await;
                }
                *pos = (*pos + 320).min(speech.len());
                if *pos >= speech.len() {
                    let chunk = *chunk;
                    self.queue.pop_front();
                    let _ = self.tx.send(In::Finished { chunk }).await;
                }
            }
        }
        self.frame += 1;
    }

    async fn silence(&mut self, ms: u64) {
        for _ in 0..ms / 20 {
            self.step(0).await;
        }
    }

    async fn speak(&mut self, ms: u64) {
        for _ in 0..ms / 20 {
            self.step(8000).await;
        }
    }

    fn said(&self, role: AiRole) -> Vec<(String, bool)> {
        self.messages
            .iter()
            .filter(|m| m.role == role)
            .map(|m| (m.content.clone(), m.interrupted))
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn greets_answers_each_turn_and_measures_its_latency() {
    let mut sim = Sim::start(
        setup(true),
        vec![
            Ok(tokens("Hello! How can I help?")),
            Ok(tokens("We open at nine.")),
        ],
        &["when do you open"],
    );
    sim.silence(1_000).await;
    assert_eq!(
        sim.said(AiRole::Assistant),
        [("Hello! How can I help?".to_string(), false)]
    );
    sim.speak(600).await;
    sim.silence(1_500).await;
    assert_eq!(
        sim.said(AiRole::User),
        [("when do you open".to_string(), false)]
    );
    let answers = sim.said(AiRole::Assistant);
    assert_eq!(
        answers.last().unwrap(),
        &("We open at nine.".to_string(), false)
    );
    let latency = sim.messages.last().unwrap().latency.unwrap();
    // The caller's turn ends end_of_turn_ms (500) after its speech (as the VAD's 32 ms
    // chunks fall), speech-to-text answers the flush at once, then the first frame of the
    // answer goes out a frame or two later.
    let v2v = latency.voice_to_voice_ms.unwrap();
    assert!((500..=620).contains(&v2v), "{latency:?}");
    assert!(
        latency.stt_ms.is_some() && latency.llm_first_token_ms.is_some(),
        "{latency:?}"
    );
    // The model saw the system prompt, its greeting and the caller's words.
    let asked = sim.llm.asked.lock().unwrap();
    let last = &asked.last().unwrap().messages;
    assert_eq!(last.len(), 3);
    assert_eq!(last[2].content, "when do you open");
    assert_eq!(asked[0].tools.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn caller_speech_stops_the_answer_which_keeps_only_what_was_played() {
    let long = "We bake bread every morning. We also make cakes to order. Ask about our pies.";
    let mut sim = Sim::start(
        setup(true),
        vec![Ok(tokens(long)), Ok(tokens("Sure, goodbye."))],
        &["please stop"],
    );
    // Well into the second sentence (the first is 28 characters: 280 ms of audio).
    sim.silence(400).await;
    let onset = sim.frame;
    sim.speak(400).await;
    let paused = *sim.pauses.first().expect("a pause");
    // min_speech_ms (200) of speech, detected in 32 ms chunks, then the next frame.
    assert!(
        (paused - onset) * 20 <= 260,
        "paused {} ms after the onset",
        (paused - onset) * 20
    );
    sim.silence(1_000).await;
    let answers = sim.said(AiRole::Assistant);
    let (cut, interrupted) = &answers[0];
    assert!(*interrupted, "{answers:?}");
    assert!(cut.starts_with("We bake bread every morning. We"), "{cut}");
    assert!(!cut.contains("pies"), "{cut}");
    assert_eq!(sim.said(AiRole::User), [("please stop".to_string(), false)]);
    sim.silence(1_000).await;
    assert_eq!(
        sim.said(AiRole::Assistant).last().unwrap().0,
        "Sure, goodbye."
    );
    // The model was told what the caller heard, not what it wrote.
    let asked = sim.llm.asked.lock().unwrap();
    assert_eq!(&asked[1].messages[1].content, cut);
}

#[tokio::test(start_paused = true)]
async fn a_backchannel_or_noise_resumes_the_answer() {
    let long = "We bake bread every morning. We also make cakes to order. \
                Ask about our pies, our tarts and our famous cinnamon rolls.";
    let mut sim = Sim::start(setup(true), vec![Ok(tokens(long))], &["mhm", ""]);
    sim.silence(300).await;
    sim.speak(300).await;
    assert_eq!(sim.pauses.len(), 1);
    sim.silence(600).await;
    assert_eq!(sim.resumes, 1, "resumed after the backchannel");
    sim.speak(300).await;
    sim.silence(3_000).await;
    assert_eq!(sim.resumes, 2, "resumed after noise with no words");
    assert_eq!(sim.said(AiRole::Assistant), [(long.to_string(), false)]);
    assert!(sim.said(AiRole::User).is_empty());
}

#[tokio::test(start_paused = true)]
async fn tools_set_variables_and_hang_up_after_the_goodbye() {
    let call = |id: &str, name: &str, args: &str| {
        LlmEvent::ToolCall(ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: args.into(),
        })
    };
    let done = |r: &str| LlmEvent::Done {
        finish_reason: r.into(),
    };
    let mut sim = Sim::start(
        setup(true),
        vec![
            Ok(vec![
                call(
                    "1",
                    "variable_set",
                    r#"{"key": "order", "value": "two loaves"}"#,
                ),
                call("2", "fly", "{}"),
                call("3", "hangup", "not json"),
                done("tool_calls"),
            ]),
            Ok(vec![
                LlmEvent::Token("Noted. Goodbye!".into()),
                call("4", "hangup", "{}"),
                done("tool_calls"),
            ]),
        ],
        &[],
    );
    sim.silence(1_000).await;
    let (reason, vars) = sim.end.clone().expect("ended");
    assert_eq!(reason, AicallEndReason::Hangup);
    assert_eq!(vars["order"], "two loaves");
    let tools = sim.said(AiRole::Tool);
    assert_eq!(tools.len(), 4, "{tools:?}");
    assert!(tools[1].0.contains("no tool"), "{tools:?}");
    assert!(tools[2].0.contains("not JSON"), "{tools:?}");
    assert_eq!(
        sim.said(AiRole::Assistant),
        [("Noted. Goodbye!".to_string(), false)]
    );
    // The model got each result with its call's id.
    let asked = sim.llm.asked.lock().unwrap();
    let results: Vec<_> = asked[1]
        .messages
        .iter()
        .filter_map(|m| m.tool_call_id.clone())
        .collect();
    assert_eq!(results, ["1", "2", "3"]);
}

fn tool_call(id: &str, name: &str, args: &str) -> LlmEvent {
    LlmEvent::ToolCall(ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: args.into(),
    })
}

fn done(reason: &str) -> LlmEvent {
    LlmEvent::Done {
        finish_reason: reason.into(),
    }
}

/// `webhook_send` is carried out by the platform: the model waits for its answer, then goes
/// on with it; data that is not an object is refused without a request.
#[tokio::test(start_paused = true)]
async fn webhook_send_waits_for_the_platform_and_the_model_goes_on() {
    let mut s = setup(true);
    s.tools.push(AiTool::WebhookSend);
    let mut sim = Sim::start(
        s,
        vec![
            Ok(vec![
                tool_call("1", "webhook_send", r#"{"data": "not an object"}"#),
                tool_call("2", "webhook_send", r#"{"data": {"order": "two loaves"}}"#),
                done("tool_calls"),
            ]),
            Ok(tokens("Your order is in.")),
        ],
        &[],
    );
    sim.tool_answers.push_back(Ok("received (200 OK)".into()));
    sim.silence(1_000).await;
    assert_eq!(
        sim.tools,
        [ToolRequest::WebhookSend {
            data: serde_json::json!({"order": "two loaves"})
        }]
    );
    let tools = sim.said(AiRole::Tool);
    assert_eq!(tools.len(), 2, "{tools:?}");
    assert!(tools[0].0.contains("must be a JSON object"), "{tools:?}");
    assert!(
        tools[1].0.ends_with("-> ok: received (200 OK)"),
        "{tools:?}"
    );
    assert_eq!(
        sim.said(AiRole::Assistant),
        [("Your order is in.".to_string(), false)]
    );
    let asked = sim.llm.asked.lock().unwrap();
    let results: Vec<(&str, &str)> = asked[1]
        .messages
        .iter()
        .filter_map(|m| Some((m.tool_call_id.as_deref()?, m.content.as_str())))
        .collect();
    assert_eq!(results[1], ("2", "ok: received (200 OK)"));
    assert_eq!(asked[1].tools.len(), 3, "webhook_send is offered");
}

/// The caller speaks while a tool is still under way: the model's history still answers
/// its call (as cancelled), and the late answer changes nothing.
#[tokio::test(start_paused = true)]
async fn a_tool_cut_short_by_the_caller_is_answered_as_cancelled() {
    let mut s = setup(true);
    s.tools.push(AiTool::WebhookSend);
    let mut sim = Sim::start(
        s,
        vec![
            Ok(vec![
                LlmEvent::Token("One moment. ".into()),
                tool_call("1", "webhook_send", r#"{"data": {"order": "cake"}}"#),
                done("tool_calls"),
            ]),
            Ok(tokens("Sure.")),
        ],
        &["actually never mind"],
    );
    sim.silence(400).await;
    assert_eq!(sim.tools.len(), 1);
    sim.speak(600).await;
    sim.silence(1_000).await;
    assert_eq!(
        sim.said(AiRole::User),
        [("actually never mind".to_string(), false)]
    );
    let tools = sim.said(AiRole::Tool);
    assert!(tools[0].0.contains("cancelled"), "{tools:?}");
    let asked = sim.llm.asked.lock().unwrap();
    let m = &asked[1].messages;
    let call = m.iter().position(|m| !m.tool_calls.is_empty()).unwrap();
    assert_eq!(m[call + 1].tool_call_id.as_deref(), Some("1"));
    assert_eq!(m.last().unwrap().content, "actually never mind");
}

/// A greeting made ahead is said at once, as the model's first words (in its history); the
/// model is not asked for it again.
#[tokio::test(start_paused = true)]
async fn a_greeting_made_ahead_is_said_at_once() {
    let llm = Arc::new(ScriptedLlm {
        replies: Mutex::new(vec![Ok(tokens("Hello! Bakery here."))].into()),
        asked: Mutex::new(vec![]),
    });
    let engines = Engines {
        stt: Arc::new(ScriptedStt {
            lines: Arc::default(),
            own_endpoint: false,
            decode: Duration::ZERO,
        }),
        tts: Arc::new(CharTts),
        llm: llm.clone(),
        vad: Arc::new(|| Ok(Box::new(LoudVad) as Box<dyn Vad + Send>)),
    };
    let mut s = setup(true);
    let g = prepare_greeting(&s, &engines).await.expect("a greeting");
    assert_eq!(g.sentences.len(), 2);
    assert_eq!(g.sentences[0].1.len(), "Hello!".len() * 160);
    s.greeting = Some(g);
    let mut sim = Sim::start(s, vec![Ok(tokens("We open at nine."))], &["when"]);
    sim.step(0).await;
    sim.step(0).await;
    assert_eq!(sim.queue.len(), 2, "both sentences queued at the start");
    sim.silence(1_000).await;
    assert_eq!(
        sim.said(AiRole::Assistant),
        [("Hello! Bakery here.".to_string(), false)]
    );
    sim.speak(400).await;
    sim.silence(1_000).await;
    {
        let asked = sim.llm.asked.lock().unwrap();
        assert_eq!(asked.len(), 1, "asked only for the answer");
        assert_eq!(asked[0].messages[1].content, "Hello! Bakery here.");
    }
    // A model that wants a tool before speaking gives no greeting.
    let llm = ScriptedLlm {
        replies: Mutex::new(
            vec![Ok(vec![tool_call("1", "hangup", "{}"), done("tool_calls")])].into(),
        ),
        asked: Mutex::new(vec![]),
    };
    let engines = Engines {
        llm: Arc::new(llm),
        ..engines
    };
    assert!(prepare_greeting(&setup(true), &engines).await.is_none());
}

/// The caller speaking over the goodbye does not keep the call up: their words are kept and
/// the hangup goes on.
#[tokio::test(start_paused = true)]
async fn speaking_over_the_goodbye_still_hangs_up() {
    let mut sim = Sim::start(
        setup(false),
        vec![Ok(vec![
            LlmEvent::Token(
                "Thank you for calling the bakery, goodbye and have a lovely day. ".into(),
            ),
            tool_call("1", "hangup", "{}"),
            done("tool_calls"),
        ])],
        &["bye", "wait one more thing"],
    );
    sim.speak(400).await;
    sim.silence(600).await;
    assert!(sim.end.is_none());
    sim.speak(600).await;
    sim.silence(1_000).await;
    assert_eq!(
        sim.end.as_ref().map(|e| e.0),
        Some(AicallEndReason::Hangup),
        "{:?}",
        sim.messages
    );
    assert!(sim
        .said(AiRole::User)
        .contains(&("wait one more thing".to_string(), false)));
}

/// Without barge-in, what the caller says while the assistant speaks is answered after it, in
/// order (the history never has the caller's words inside the answer).
#[tokio::test(start_paused = true)]
async fn without_barge_in_the_callers_words_are_answered_after_the_answer() {
    let mut s = setup(true);
    s.vad.barge_in = false;
    // 10 ms of audio per character: about 2.2 s.
    let long = "We bake bread every morning. We also make cakes to order. Ask about our pies, \
                our tarts, our cookies and our famous cinnamon rolls. We open at nine and \
                close at six, every day but Sunday.";
    let mut sim = Sim::start(
        s,
        vec![Ok(tokens(long)), Ok(tokens("Yes, we do."))],
        &["do you have rye"],
    );
    sim.silence(100).await;
    sim.speak(400).await;
    sim.silence(600).await;
    assert!(
        sim.said(AiRole::User).is_empty(),
        "held until the answer ends"
    );
    sim.silence(2_000).await;
    assert_eq!(sim.said(AiRole::Assistant)[0], (long.to_string(), false));
    assert_eq!(
        sim.said(AiRole::User),
        [("do you have rye".to_string(), false)]
    );
    assert_eq!(sim.said(AiRole::Assistant)[1].0, "Yes, we do.");
    let asked = sim.llm.asked.lock().unwrap();
    let roles: Vec<&str> = asked[1]
        .messages
        .iter()
        .map(|m| match m.role {
            vbin_llm::Role::System => "system",
            vbin_llm::Role::User => "user",
            vbin_llm::Role::Assistant => "assistant",
            vbin_llm::Role::Tool => "tool",
        })
        .collect();
    assert_eq!(roles, ["system", "assistant", "user"]);
}

#[tokio::test(start_paused = true)]
async fn a_failing_model_apologizes_and_ends() {
    let mut sim = Sim::start(setup(true), vec![Err("connection refused".into())], &[]);
    sim.silence(1_000).await;
    assert_eq!(
        sim.said(AiRole::Assistant),
        [("Sorry, I cannot answer now.".to_string(), false)]
    );
    assert_eq!(
        sim.end.as_ref().map(|e| e.0),
        Some(AicallEndReason::EngineFailed)
    );
}

#[tokio::test(start_paused = true)]
async fn silence_is_reprompted_once_then_ends_the_conversation() {
    let mut sim = Sim::start(setup(false), vec![], &[]);
    sim.silence(8_500).await;
    assert_eq!(
        sim.said(AiRole::Assistant),
        [("Are you still there?".to_string(), false)]
    );
    assert!(sim.end.is_none());
    sim.silence(9_000).await;
    assert_eq!(
        sim.end.as_ref().map(|e| e.0),
        Some(AicallEndReason::NoInput)
    );
    let _ = &sim.lines;
}

/// A pause shorter than `end_of_turn_ms` does not end the turn: what a recognizer that cuts
/// utterances on its own says before and after it is one message, answered once, after the
/// configured silence.
#[tokio::test(start_paused = true)]
async fn a_turn_ends_after_its_silence_and_keeps_all_its_words() {
    let mut s = setup(false);
    s.vad.end_of_turn_ms = 900;
    let mut sim = Sim::with_stt(
        s,
        vec![Ok(tokens("We open at nine."))],
        &["when do you open", "tomorrow"],
        true,
        Duration::ZERO,
    );
    sim.speak(600).await;
    sim.silence(600).await;
    sim.speak(400).await;
    assert!(sim.said(AiRole::User).is_empty(), "the turn is not over");
    sim.silence(800).await;
    assert!(sim.said(AiRole::User).is_empty(), "not before 900 ms");
    sim.silence(1_000).await;
    assert_eq!(
        sim.said(AiRole::User),
        [("when do you open tomorrow".to_string(), false)]
    );
    assert_eq!(sim.llm.asked.lock().unwrap().len(), 1);
    let latency = sim.messages.last().unwrap().latency.unwrap();
    let v2v = latency.voice_to_voice_ms.unwrap();
    assert!((900..=1_020).contains(&v2v), "{latency:?}");
}

/// Speech-to-text decodes during the end-of-turn silence: told at its first 200 ms, a 250 ms
/// decode is done before the turn's 500 ms are over, and the answer is not later for it. A
/// pause of 300 ms is decoded too, and the words after it join the same turn.
#[tokio::test(start_paused = true)]
async fn speech_is_recognized_while_the_turn_s_silence_passes() {
    let mut sim = Sim::with_stt(
        setup(false),
        vec![Ok(tokens("We open at nine."))],
        &["when do you open", "tomorrow"],
        false,
        Duration::from_millis(250),
    );
    sim.speak(600).await;
    sim.silence(300).await;
    sim.speak(400).await;
    sim.silence(1_500).await;
    assert_eq!(
        sim.said(AiRole::User),
        [("when do you open tomorrow".to_string(), false)]
    );
    let latency = sim.messages.last().unwrap().latency.unwrap();
    let v2v = latency.voice_to_voice_ms.unwrap();
    assert!((500..=620).contains(&v2v), "{latency:?}");
    assert!(
        (240..=300).contains(&latency.stt_ms.unwrap()),
        "{latency:?}"
    );
}

#[test]
fn backchannels_and_prefixes() {
    for b in ["mhm", "Mm-hmm.", "uh huh", "Okay.", "yeah yeah", ""] {
        assert!(backchannel(b), "{b}");
    }
    for w in ["stop", "what time", "okay stop"] {
        assert!(!backchannel(w), "{w}");
    }
    assert_eq!(prefix("one two three four", 0.5), "one two");
    assert_eq!(prefix("one two three", 0.1), "one");
    assert_eq!(prefix("one two", 2.0), "one two");
}
