//! AI conversations on the calls whose sessions this process runs: an `aicall_created` starts
//! a [`vbin_agent`] conversation attached to the call's session; what it says goes to the
//! session, what it records becomes `aimessage_created` (and, for the caller's and the
//! assistant's words, a transcript of the call: a transcription with the conversation's
//! `aicall_id`), its end becomes `aicall_status_terminated` (and the end of the flow's
//! `ai_talk`, or the call's hangup).

use crate::agents::Prepared;
use crate::session::{AgentCmd, Control, Execution};
use crate::{Media, MediaError};
use chrono::Utc;
use futures::FutureExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use uuid::Uuid;
use vbin_agent::{Engines, In, Out, Setup, ToolRequest};
use vbin_app::ExecError;
use vbin_domain::ai::{parse_engine_model, EngineProvider};
use vbin_domain::transcribe::{NewTranscribe, TranscribeCommand, MAX_TRANSCRIPT_CHARS};
use vbin_domain::{
    Activeflow, Ai, Aicall, AicallCommand, Call, CallCommand, Customer, DomainError, HangupRequest,
    NewAimessage, Transcribe,
};
use vbin_event_schema::flow::{ActionKind, ActionResult};
use vbin_event_schema::views::CallView;
use vbin_event_schema::{
    ActiveflowId, AiId, AiRole, AiSettings, AicallEndReason, AicallEvent, AicallId, AimessageId,
    CallDirection, CallEvent, CallId, CustomerId, MediaReference, PublishedEvent,
    TranscribeDirection, TranscribeId, TranscriptDirection, TranscriptId, WebhookMethod,
};
use vbin_llm::LlmProvider;

/// How long a conversation waits for a greeting still being made.
const GREETING_WAIT: Duration = Duration::from_secs(10);
/// How long a greeting made for a call is kept for its conversation.
const GREETING_TTL: Duration = Duration::from_secs(300);

/// The transcription that holds conversation `id`'s words (one per conversation, named by it so
/// that a redelivered start finds it).
fn transcribe_of(id: AicallId) -> TranscribeId {
    TranscribeId(Uuid::new_v5(&id.as_uuid(), b"transcribe"))
}

impl Media {
    /// Handles the conversation events: starts, and stops through the API.
    pub(crate) async fn on_aicall(self, e: PublishedEvent) -> Result<(), MediaError> {
        let id = AicallId(e.aggregate_id);
        match e.decode::<AicallEvent>()? {
            AicallEvent::AicallCreated { reference_id, .. } => {
                self.start_conversation(id, CustomerId(e.customer_id), reference_id)
                    .await
            }
            AicallEvent::AicallStatusTerminated { reason, .. } => {
                let input = self
                    .agents
                    .lock()
                    .expect("agents")
                    .get(&id)
                    .map(|(_, i)| i.clone());
                if let Some(input) = input {
                    let _ = input.send(In::Stop(reason)).await;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn start_conversation(
        &self,
        id: AicallId,
        customer: CustomerId,
        call: CallId,
    ) -> Result<(), MediaError> {
        if self.agents.lock().expect("agents").contains_key(&id) {
            return Ok(());
        }
        let Some(aicall) = self
            .executor
            .load::<Aicall>(id.as_uuid(), Some(customer))
            .await?
        else {
            return Ok(());
        };
        if aicall.status != vbin_domain::AicallStatus::Initiating {
            // Under way elsewhere (a redelivery after a takeover) or over.
            return Ok(());
        }
        let Some(control) = self.ensure(call, customer).await? else {
            return self
                .conversation_over(
                    &aicall,
                    customer,
                    AicallEndReason::Failed,
                    Some("the call has no media (not answered or ended)".into()),
                    Default::default(),
                )
                .await;
        };
        let parts = match &aicall.settings {
            Some(s) => self.conversation_parts(aicall.ai_id, s, aicall.max_secs),
            None => Err("the conversation has no assistant".into()),
        };
        let (mut setup, engines) = match parts {
            Ok(p) => p,
            Err(why) => {
                return self
                    .conversation_over(
                        &aicall,
                        customer,
                        AicallEndReason::Failed,
                        Some(why),
                        Default::default(),
                    )
                    .await
            }
        };
        let prepared = self.greetings.lock().expect("greetings").remove(&call);
        if let Some(p) = prepared
            .filter(|p| Some(p.ai) == aicall.ai_id && aicall.settings.as_ref() == Some(&p.settings))
        {
            // Made while the call rang; still under way, it is sooner than asking anew.
            setup.greeting = tokio::time::timeout(GREETING_WAIT, p.greeting)
                .await
                .ok()
                .flatten();
            metrics::counter!("vbin_ai_greetings_prepared_total",
                "used" => if setup.greeting.is_some() { "yes" } else { "no" })
            .increment(1);
        }
        if control.is_closed() {
            // The call ended while the greeting was being made.
            return self
                .conversation_over(
                    &aicall,
                    customer,
                    AicallEndReason::CallEnded,
                    None,
                    Default::default(),
                )
                .await;
        }
        let (input_tx, input_rx) = mpsc::channel(1_000);
        let (out_tx, out_rx) = mpsc::channel(256);
        self.agents
            .lock()
            .expect("agents")
            .insert(id, (call, input_tx.clone()));
        let _ = control
            .send(Control::AttachAgent(id, input_tx.clone()))
            .await;
        self.command::<Aicall>(
            customer,
            id.as_uuid(),
            AicallCommand::Progress { at: Utc::now() },
        )
        .await?;
        let transcribe = NewTranscribe {
            transcribe_id: transcribe_of(id),
            customer_id: customer,
            reference: MediaReference::Call(call),
            language: setup.language.clone(),
            direction: TranscribeDirection::Both,
            aicall_id: Some(id),
        };
        let start = TranscribeCommand::Start {
            transcribe,
            at: Utc::now(),
        };
        match self
            .retried::<Transcribe>(customer, transcribe_of(id).as_uuid(), start)
            .await
        {
            Ok(()) | Err(MediaError::Exec(ExecError::Domain(DomainError::AlreadyExists(_)))) => {}
            Err(e) => {
                tracing::warn!(aicall = %id, error = %vbin_bus::Chain(&e), "starting the conversation's transcription failed")
            }
        }
        tracing::info!(aicall = %id, %call, "AI conversation started");
        metrics::gauge!("vbin_ai_conversations").increment(1.0);
        tokio::spawn(vbin_agent::run(setup, engines, input_rx, out_tx));
        tokio::spawn(
            self.clone()
                .follow(aicall, customer, control, input_tx, out_rx),
        );
        Ok(())
    }

    /// A ringing call whose flow's first media action is `ai_talk`: the assistant's greeting
    /// is made now, so that it plays as soon as the call is answered (the conversation takes it
    /// if its assistant and settings are the same; a conversation started by another media
    /// process asks the model itself).
    pub(crate) async fn prepare_greeting(self, e: PublishedEvent) -> Result<(), MediaError> {
        if self.agent_kit.is_none() {
            return Ok(());
        }
        let CallEvent::CallCreated {
            direction: CallDirection::Outgoing,
            ..
        } = e.decode::<CallEvent>()?
        else {
            return Ok(());
        };
        let Some(activeflow) = e.view::<CallView>()?.activeflow_id else {
            return Ok(());
        };
        let (call, customer) = (CallId(e.aggregate_id), CustomerId(e.customer_id));
        let Some(flow) = self
            .executor
            .load::<Activeflow>(activeflow.as_uuid(), Some(customer))
            .await?
        else {
            return Ok(());
        };
        let talk = flow
            .actions
            .iter()
            // A transcription's start makes no sound (a media action only so that it is
            // tapped before the next action's audio): the greeting is looked for past it.
            .find(|a| {
                (a.kind.is_media() && !matches!(a.kind, ActionKind::TranscribeStart(_)))
                    || matches!(a.kind, ActionKind::AiTalk(_))
            })
            .and_then(|a| match &a.kind {
                ActionKind::AiTalk(t) => Some(t.clone()),
                _ => None,
            });
        let Some(talk) = talk else {
            return Ok(());
        };
        let Some(ai) = self
            .executor
            .load::<Ai>(talk.ai_id.as_uuid(), Some(customer))
            .await?
        else {
            return Ok(());
        };
        let Some(mut settings) = ai.settings.clone().filter(|_| ai.live()) else {
            return Ok(());
        };
        if let Some(l) = talk.language {
            settings.stt_language = l;
        }
        let Ok((setup, engines)) =
            self.conversation_parts(Some(talk.ai_id), &settings, talk.duration)
        else {
            return Ok(());
        };
        let greeting = async move { vbin_agent::prepare_greeting(&setup, &engines).await }
            .boxed()
            .shared();
        tokio::spawn(greeting.clone());
        let mut g = self.greetings.lock().expect("greetings");
        // Calls that never reached their conversation (nor hung up here).
        g.retain(|_, p| p.since.elapsed() < GREETING_TTL);
        g.insert(
            call,
            Prepared {
                ai: talk.ai_id,
                settings,
                greeting,
                since: std::time::Instant::now(),
            },
        );
        tracing::debug!(%call, ai = %talk.ai_id, "preparing the assistant's greeting while the call rings");
        Ok(())
    }

    /// The setup and engines of a conversation of assistant `ai` with `settings`, or why it
    /// cannot run.
    fn conversation_parts(
        &self,
        ai: Option<AiId>,
        settings: &AiSettings,
        max_secs: Option<u32>,
    ) -> Result<(Setup, Engines), String> {
        let kit = self
            .agent_kit
            .as_ref()
            .ok_or("this platform runs no AI conversations")?;
        let (provider, model) =
            parse_engine_model(&settings.engine_model).map_err(|e| e.to_string())?;
        let llm: Arc<dyn LlmProvider> = match provider {
            EngineProvider::OpenAi => {
                let url = settings.engine_url.as_deref().ok_or("no engine_url")?;
                let key = match (&settings.engine_key_sealed, ai) {
                    (Some(sealed), Some(ai)) => Some(
                        kit.sealer
                            .open(ai.as_uuid().as_bytes(), sealed)
                            .map_err(|e| format!("engine_key: {e}"))?,
                    ),
                    _ => None,
                };
                Arc::new(
                    vbin_llm::OpenAiCompatible::new(url, key, kit.http.clone())
                        .map_err(|e| format!("engine_url: {e}"))?,
                )
            }
            EngineProvider::Local => kit
                .local
                .clone()
                .ok_or("the local model is not installed (scripts/models)")?,
        };
        let setup = Setup {
            system_prompt: settings.init_prompt.clone(),
            model: model.to_string(),
            language: settings.stt_language.clone(),
            voice: settings.tts_voice_id.clone(),
            tools: settings.tool_names.clone(),
            vad: settings.vad_config,
            apology: kit.apology.clone(),
            reprompt: kit.reprompt.clone(),
            max_duration: max_secs
                .map(|s| Duration::from_secs(s.into()))
                .map_or(kit.max_duration, |d| d.min(kit.max_duration)),
            greet: true,
            greeting: None,
        };
        let engines = Engines {
            stt: kit.speech.stt(settings.stt_type.as_deref())?,
            tts: kit.speech.tts(settings.tts_type.as_deref())?,
            llm,
            vad: kit.vad.clone(),
        };
        Ok((setup, engines))
    }

    /// Carries out what a conversation says until it ends.
    async fn follow(
        self,
        aicall: Aicall,
        customer: CustomerId,
        control: mpsc::Sender<Control>,
        input: mpsc::Sender<In>,
        mut out: mpsc::Receiver<Out>,
    ) {
        let id = aicall.id.expect("a created aicall");
        let mut ended = None;
        let mut tools = 0u32;
        let started = std::time::Instant::now();
        while let Some(o) = out.recv().await {
            let cmd = match o {
                Out::Say { chunk, speech } => AgentCmd::Say(chunk, speech),
                Out::Pause => AgentCmd::Pause,
                Out::Resume => AgentCmd::Resume,
                Out::Flush => AgentCmd::Flush,
                Out::Message(m) => {
                    let aimessage_id = AimessageId(Uuid::now_v7());
                    let side = match m.role {
                        AiRole::User => Some(TranscriptDirection::In),
                        AiRole::Assistant => Some(TranscriptDirection::Out),
                        AiRole::Tool => None,
                    };
                    if let Some(direction) = side {
                        let cmd = TranscribeCommand::AddTranscript {
                            transcript_id: TranscriptId(aimessage_id.as_uuid()),
                            direction,
                            call_id: None,
                            message: m.content.chars().take(MAX_TRANSCRIPT_CHARS).collect(),
                            tm_transcript_ms: started.elapsed().as_millis() as u64,
                            at: Utc::now(),
                        };
                        let tid = transcribe_of(id).as_uuid();
                        if let Err(e) = self.retried::<Transcribe>(customer, tid, cmd).await {
                            tracing::warn!(aicall = %id, error = %vbin_bus::Chain(&e), "recording an AI message's transcript failed");
                        }
                    }
                    let message = NewAimessage {
                        aimessage_id,
                        role: m.role,
                        content: m.content,
                        interrupted: m.interrupted,
                        latency: m.latency,
                    };
                    let cmd = AicallCommand::AddMessage {
                        message,
                        at: Utc::now(),
                    };
                    if let Err(e) = self.retried::<Aicall>(customer, id.as_uuid(), cmd).await {
                        tracing::warn!(aicall = %id, error = %vbin_bus::Chain(&e), "recording an AI message failed");
                    }
                    continue;
                }
                Out::Tool { token, request } => {
                    tools += 1;
                    let (media, aicall, input) = (self.clone(), aicall.clone(), input.clone());
                    tokio::spawn(async move {
                        let result = media.tool(&aicall, customer, tools, request).await;
                        let _ = input.send(In::ToolDone { token, result }).await;
                    });
                    continue;
                }
                Out::End {
                    reason,
                    detail,
                    variables,
                } => {
                    ended = Some((reason, detail, variables));
                    break;
                }
            };
            if control.send(Control::Agent(id, cmd)).await.is_err() {
                // The session is gone (the call ended): the conversation ends with it.
                let _ = input.try_send(In::Stop(AicallEndReason::CallEnded));
            }
        }
        let _ = control.send(Control::DetachAgent(id)).await;
        self.agents.lock().expect("agents").remove(&id);
        metrics::gauge!("vbin_ai_conversations").decrement(1.0);
        let (reason, detail, variables) =
            ended.unwrap_or((AicallEndReason::CallEnded, None, Default::default()));
        tracing::info!(aicall = %id, ?reason, "AI conversation ended");
        if let Err(e) = self
            .conversation_over(&aicall, customer, reason, detail, variables)
            .await
        {
            tracing::warn!(aicall = %id, error = %vbin_bus::Chain(&e), "ending an AI conversation failed");
        }
    }

    /// Carries out a tool request of conversation `aicall` (its `n`th); what the model is
    /// told.
    async fn tool(
        &self,
        aicall: &Aicall,
        customer: CustomerId,
        n: u32,
        request: ToolRequest,
    ) -> Result<String, String> {
        let id = aicall.id.expect("a created aicall");
        let ToolRequest::WebhookSend { data } = request;
        let kit = self.agent_kit.as_ref().ok_or("no AI conversations here")?;
        let c = self
            .executor
            .load::<Customer>(customer.as_uuid(), None)
            .await
            .map_err(|e| {
                tracing::warn!(aicall = %id, error = %vbin_bus::Chain(&e), "webhook_send: loading the customer failed");
                "the business's settings could not be read".to_string()
            })?
            .ok_or("the business's settings could not be read")?;
        if c.webhook_uri.is_empty() {
            return Err("the business has no webhook endpoint configured".into());
        }
        let method = match c.webhook_method {
            WebhookMethod::Post => reqwest::Method::POST,
            WebhookMethod::Put => reqwest::Method::PUT,
        };
        let request_id = format!("{id}-tool-{n}");
        let body = serde_json::to_vec(&serde_json::json!({
            "id": request_id,
            "type": "aicall_webhook_send",
            "created": Utc::now(),
            "data": {
                "aicall_id": id,
                "call_id": aicall.reference_id,
                "activeflow_id": aicall.activeflow_id,
                "data": data,
            },
        }))
        .map_err(|e| e.to_string())?;
        let resp = kit
            .webhooks
            .send(vbin_webhooks::direct::DirectRequest {
                customer,
                url: &c.webhook_uri,
                method,
                content_type: Some("application/json"),
                id: &request_id,
                event_type: "aicall_webhook_send",
                body,
            })
            .await
            .map_err(|e| {
                tracing::info!(aicall = %id, error = %e, "webhook_send tool failed");
                e.to_string()
            })?;
        Ok(format!("received ({})", resp.status()))
    }

    /// Records a conversation's end: the aicall terminated, the call hung up if the assistant
    /// did, the flow's `ai_talk` completed (with the variables the assistant set).
    async fn conversation_over(
        &self,
        aicall: &Aicall,
        customer: CustomerId,
        reason: AicallEndReason,
        detail: Option<String>,
        variables: std::collections::HashMap<String, String>,
    ) -> Result<(), MediaError> {
        let id = aicall.id.expect("a created aicall");
        let cmd = AicallCommand::Terminate {
            reason,
            detail: detail.clone(),
            at: Utc::now(),
        };
        self.retried::<Aicall>(customer, id.as_uuid(), cmd).await?;
        let hangup = reason == AicallEndReason::Hangup;
        if let (Some(activeflow), Some(seq)) = (aicall.activeflow_id, aicall.activeflow_seq) {
            let error = match reason {
                AicallEndReason::Failed | AicallEndReason::EngineFailed => Some(format!(
                    "ai_talk: {}",
                    detail.unwrap_or_else(|| "failed".into())
                )),
                _ => None,
            };
            let result = ActionResult {
                error,
                variables: variables
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::Value::String(v)))
                    .collect(),
                // The flow ends with its variables before the call goes.
                ends_call: hangup,
                ..Default::default()
            };
            let exec = Execution {
                activeflow: ActiveflowId(activeflow.as_uuid()),
                seq,
            };
            self.complete(customer, exec, result).await?;
        }
        if hangup {
            if let Some(call) = aicall.reference_id {
                let cmd = CallCommand::Hangup {
                    request: HangupRequest::Local,
                    at: Utc::now(),
                };
                self.retried::<Call>(customer, call.as_uuid(), cmd).await?;
            }
        }
        // Last and best effort: a conversation that failed before it started has none.
        let stop = TranscribeCommand::Stop { at: Utc::now() };
        if let Err(e) = self
            .retried::<Transcribe>(customer, transcribe_of(id).as_uuid(), stop)
            .await
        {
            tracing::warn!(aicall = %id, error = %vbin_bus::Chain(&e), "completing the conversation's transcription failed");
        }
        Ok(())
    }

    /// A command retried a few times (a conflict or a blip must not lose a message or an
    /// end).
    async fn retried<A: vbin_app::StoredAggregate>(
        &self,
        customer: CustomerId,
        id: Uuid,
        cmd: A::Command,
    ) -> Result<(), MediaError>
    where
        A::Command: Clone,
    {
        let mut attempt = 0u32;
        loop {
            match self.command::<A>(customer, id, cmd.clone()).await {
                Ok(()) => return Ok(()),
                // A refusal is the same the next time.
                Err(e @ MediaError::Exec(ExecError::Domain(_))) => return Err(e),
                Err(e) if attempt >= 4 => return Err(e),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                    attempt += 1;
                }
            }
        }
    }

    /// After a takeover of `call`'s session: a conversation that was under way in the dead
    /// process ends with the messages it has (its `ai_talk` ends with that error, so the flow
    /// goes on: a conversation's state is in no log to resume from); one that had not started
    /// starts here.
    pub(crate) async fn resume_conversations(
        &self,
        call: CallId,
        customer: CustomerId,
    ) -> Result<(), MediaError> {
        for aicall_id in vbin_app::ai::live_on_call(&self.pool, call).await? {
            if self.agents.lock().expect("agents").contains_key(&aicall_id) {
                continue;
            }
            let Some(aicall) = self
                .executor
                .load::<Aicall>(aicall_id.as_uuid(), Some(customer))
                .await?
            else {
                continue;
            };
            match aicall.status {
                vbin_domain::AicallStatus::Initiating => {
                    self.start_conversation(aicall_id, customer, call).await?
                }
                vbin_domain::AicallStatus::Progressing => {
                    tracing::warn!(aicall = %aicall_id, %call, "the media process running an AI conversation died; ending it");
                    self.conversation_over(
                        &aicall,
                        customer,
                        AicallEndReason::Failed,
                        Some("the media process running the conversation stopped".into()),
                        Default::default(),
                    )
                    .await?
                }
                vbin_domain::AicallStatus::Terminated => {}
            }
        }
        Ok(())
    }

    /// Ends the conversations of `call` (its session is ending).
    pub(crate) async fn stop_conversations(&self, call: CallId) {
        let inputs: Vec<mpsc::Sender<In>> = self
            .agents
            .lock()
            .expect("agents")
            .values()
            .filter(|(c, _)| *c == call)
            .map(|(_, i)| i.clone())
            .collect();
        for input in inputs {
            let _ = input.send(In::Stop(AicallEndReason::CallEnded)).await;
        }
    }
}
