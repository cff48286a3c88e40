//! AI voice agents: the Ai aggregate (an assistant's configuration, checked here) and the
//! Aicall aggregate (one conversation of an assistant on a call: its status and messages).
//!
//! The engine key arrives sealed (the application layer encrypts it before the command): the
//! domain and the log never see it in clear. Messages are not kept in the Aicall's state (a
//! long conversation has many): each is its own resource in the read model, built from its
//! `aimessage_created` event.

use crate::flow::{check_names, MAX_NAME};
use crate::{DomainError, ResourceView};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use vbin_event_schema::*;

/// Longest system prompt, in bytes.
pub const MAX_PROMPT: usize = 32 * 1024;
/// Longest model name (after `<provider>.`), in bytes.
pub const MAX_MODEL: usize = 128;
/// Longest engine URL, in bytes.
pub const MAX_URL: usize = 2_048;
/// Longest engine key, in bytes (as given, before sealing).
pub const MAX_KEY: usize = 1_024;
/// Longest message content kept, in bytes (a longer one is cut at a character boundary).
pub const MAX_MESSAGE: usize = 16 * 1024;
/// Speech-to-text providers an assistant may choose.
pub const STT_TYPES: [&str; 3] = ["whisper", "pocketsphinx", "deepgram"];
/// Text-to-speech providers an assistant may choose.
pub const TTS_TYPES: [&str; 3] = ["piper", "espeak", "openai"];

/// The engine of `engine_model`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineProvider {
    /// Any OpenAI-compatible chat-completions server at `engine_url`.
    OpenAi,
    /// The embedded offline model.
    Local,
}

/// Splits `engine_model` (`<provider>.<model>`) into its provider and model.
pub fn parse_engine_model(s: &str) -> Result<(EngineProvider, &str), DomainError> {
    let bad = || {
        DomainError::Invalid(format!(
            "engine_model must be \"openai.<model>\" or \"local.<model>\" (model: 1 to {MAX_MODEL} \
             letters, digits and . _ - : /), got {s:?}"
        ))
    };
    let (provider, model) = s.split_once('.').ok_or_else(bad)?;
    let provider = match provider {
        "openai" => EngineProvider::OpenAi,
        "local" => EngineProvider::Local,
        _ => return Err(bad()),
    };
    let model_ok = (1..=MAX_MODEL).contains(&model.len())
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:/".contains(&b));
    if !model_ok {
        return Err(bad());
    }
    Ok((provider, model))
}

/// Checks an assistant's settings (the engine key is checked before sealing, by
/// [`check_engine_key`]).
pub fn check_settings(s: &AiSettings) -> Result<(), DomainError> {
    let invalid = |m: String| Err(DomainError::Invalid(m));
    check_names(&s.name, &s.detail)?;
    if s.init_prompt.len() > MAX_PROMPT {
        return invalid(format!("init_prompt must be at most {MAX_PROMPT} bytes"));
    }
    let (provider, _) = parse_engine_model(&s.engine_model)?;
    match (provider, &s.engine_url) {
        (EngineProvider::OpenAi, None) => {
            return invalid("engine_url is required with an openai.* engine_model".into())
        }
        (EngineProvider::OpenAi, Some(u)) => {
            let ok = u.len() <= MAX_URL
                && url::Url::parse(u)
                    .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                return invalid(format!(
                    "engine_url must be an http:// or https:// URL of at most {MAX_URL} bytes"
                ));
            }
        }
        (EngineProvider::Local, Some(_)) => {
            return invalid("engine_url is only for openai.* engine_models".into())
        }
        (EngineProvider::Local, None) => {}
    }
    if let Some(t) = &s.stt_type {
        if !STT_TYPES.contains(&t.as_str()) {
            return invalid(format!("stt_type must be one of {STT_TYPES:?}"));
        }
    }
    check_language(&s.stt_language).map_err(|e| DomainError::Invalid(e.to_string()))?;
    if let Some(t) = &s.tts_type {
        if !TTS_TYPES.contains(&t.as_str()) {
            return invalid(format!("tts_type must be one of {TTS_TYPES:?}"));
        }
    }
    if let Some(v) = &s.tts_voice_id {
        if v.is_empty() || v.len() > MAX_NAME {
            return invalid(format!("tts_voice_id must be 1 to {MAX_NAME} bytes"));
        }
    }
    let v = &s.vad_config;
    if !(60..=2_000).contains(&v.min_speech_ms) {
        return invalid("vad_config.min_speech_ms must be 60 to 2000".into());
    }
    if !(1_000..=60_000).contains(&v.no_input_ms) {
        return invalid("vad_config.no_input_ms must be 1000 to 60000".into());
    }
    if !(200..=5_000).contains(&v.end_of_turn_ms) {
        return invalid("vad_config.end_of_turn_ms must be 200 to 5000".into());
    }
    if s.tool_names.contains(&AiTool::Connect) {
        return invalid("the connect tool is not available yet".into());
    }
    Ok(())
}

/// Checks an engine key as given (before sealing).
pub fn check_engine_key(key: &str) -> Result<(), DomainError> {
    if key.is_empty() || key.len() > MAX_KEY || key.chars().any(char::is_control) {
        return Err(DomainError::Invalid(format!(
            "engine_key must be 1 to {MAX_KEY} bytes without control characters"
        )));
    }
    Ok(())
}

/// The view of settings (the key only as `engine_key_set`).
fn settings_view(s: &AiSettings) -> Value {
    json!({
        "name": s.name,
        "detail": s.detail,
        "init_prompt": s.init_prompt,
        "engine_model": s.engine_model,
        "engine_url": s.engine_url,
        "engine_key_set": s.engine_key_sealed.is_some(),
        "stt_type": s.stt_type,
        "stt_language": s.stt_language,
        "tts_type": s.tts_type,
        "tts_voice_id": s.tts_voice_id,
        "vad_config": s.vad_config,
        "tool_names": s.tool_names,
    })
}

/// Ai commands.
#[derive(Clone, Debug, PartialEq)]
pub enum AiCommand {
    /// Create it.
    Create {
        /// Id.
        ai_id: AiId,
        /// Owner.
        customer_id: CustomerId,
        /// What it is (checked).
        settings: AiSettings,
        /// When.
        at: DateTime<Utc>,
    },
    /// Replace its settings (checked).
    Update {
        /// What it is now.
        settings: AiSettings,
        /// When.
        at: DateTime<Utc>,
    },
    /// Delete it.
    Delete {
        /// When.
        at: DateTime<Utc>,
    },
}

/// An assistant's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ai {
    /// None until created.
    pub id: Option<AiId>,
    /// Owner.
    pub customer_id: CustomerId,
    /// What it is.
    pub settings: Option<AiSettings>,
    /// Deleted.
    pub deleted: bool,
    /// Created.
    pub tm_create: Option<DateTime<Utc>>,
    /// Changed.
    pub tm_update: Option<DateTime<Utc>>,
    /// Deleted.
    pub tm_delete: Option<DateTime<Utc>>,
}

impl Ai {
    /// The API view (never the key).
    pub fn view(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "type": "ai",
            "customer_id": self.customer_id,
            "tm_create": self.tm_create,
            "tm_update": self.tm_update,
            "tm_delete": self.tm_delete,
        });
        if let (Some(s), Value::Object(m)) = (&self.settings, &mut v) {
            if let Value::Object(sv) = settings_view(s) {
                m.extend(sv);
            }
        }
        v
    }

    /// Whether it exists and is not deleted.
    pub fn live(&self) -> bool {
        self.id.is_some() && !self.deleted
    }

    fn decide(&self, command: AiCommand) -> Result<Vec<AiEvent>, DomainError> {
        match command {
            AiCommand::Create {
                ai_id,
                customer_id,
                settings,
                at,
            } => {
                if self.id.is_some() {
                    return Err(DomainError::AlreadyExists(format!("ai {ai_id} exists")));
                }
                check_settings(&settings)?;
                Ok(vec![AiEvent::AiCreated {
                    ai_id,
                    customer_id,
                    settings,
                    at,
                }])
            }
            _ if !self.live() => Err(DomainError::NotFound("ai")),
            AiCommand::Update { settings, at } => {
                check_settings(&settings)?;
                Ok(vec![AiEvent::AiUpdated { settings, at }])
            }
            AiCommand::Delete { at } => Ok(vec![AiEvent::AiDeleted { at }]),
        }
    }

    fn fold(&mut self, event: AiEvent) {
        match event {
            AiEvent::AiCreated {
                ai_id,
                customer_id,
                settings,
                at,
            } => {
                *self = Ai {
                    id: Some(ai_id),
                    customer_id,
                    settings: Some(settings),
                    tm_create: Some(at),
                    tm_update: Some(at),
                    ..Ai::default()
                }
            }
            AiEvent::AiUpdated { settings, at } => {
                self.settings = Some(settings);
                self.tm_update = Some(at);
            }
            AiEvent::AiDeleted { at } => {
                self.deleted = true;
                self.tm_delete = Some(at);
                self.tm_update = Some(at);
            }
        }
    }
}

decided_aggregate!(Ai, AiCommand, AiEvent);

impl ResourceView for Ai {
    fn resource_after(&self, _: &AiEvent) -> Value {
        self.view()
    }
}

/// A conversation's status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AicallStatus {
    /// Asked for; the media session has not picked it up yet.
    #[default]
    Initiating,
    /// Under way.
    Progressing,
    /// Ended.
    Terminated,
}

impl AicallStatus {
    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            AicallStatus::Initiating => "initiating",
            AicallStatus::Progressing => "progressing",
            AicallStatus::Terminated => "terminated",
        }
    }
}

/// What starts a conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct NewAicall {
    /// Id.
    pub aicall_id: AicallId,
    /// Owner.
    pub customer_id: CustomerId,
    /// The assistant.
    pub ai_id: AiId,
    /// Its settings now.
    pub settings: AiSettings,
    /// The call.
    pub reference_id: CallId,
    /// The flow, if an `ai_talk` started it.
    pub activeflow_id: Option<ActiveflowId>,
    /// That `ai_talk`'s execution.
    pub activeflow_seq: Option<u64>,
    /// Longest conversation the `ai_talk` asked for, in seconds.
    pub max_secs: Option<u32>,
}

/// A message to record.
#[derive(Clone, Debug, PartialEq)]
pub struct NewAimessage {
    /// Its id (derived by the recorder, so a retry records nothing twice).
    pub aimessage_id: AimessageId,
    /// Who.
    pub role: AiRole,
    /// What (cut at [`MAX_MESSAGE`]).
    pub content: String,
    /// Interrupted.
    pub interrupted: bool,
    /// Latency of the turn.
    pub latency: Option<AiLatency>,
}

/// Aicall commands.
#[derive(Clone, Debug, PartialEq)]
pub enum AicallCommand {
    /// Start it (initiating).
    Create {
        /// What (boxed: the other commands are small).
        aicall: Box<NewAicall>,
        /// When.
        at: DateTime<Utc>,
    },
    /// The media session runs it.
    Progress {
        /// When.
        at: DateTime<Utc>,
    },
    /// Record a message (refused once terminated; a message recorded before is not again).
    AddMessage {
        /// The message.
        message: NewAimessage,
        /// When.
        at: DateTime<Utc>,
    },
    /// End it (idempotent: an ended conversation records nothing).
    Terminate {
        /// Why.
        reason: AicallEndReason,
        /// Details.
        detail: Option<String>,
        /// When.
        at: DateTime<Utc>,
    },
}

/// A conversation's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Aicall {
    /// None until created.
    pub id: Option<AicallId>,
    /// Owner.
    pub customer_id: CustomerId,
    /// The assistant.
    pub ai_id: Option<AiId>,
    /// Its settings when the conversation started.
    pub settings: Option<AiSettings>,
    /// The call.
    pub reference_id: Option<CallId>,
    /// The flow.
    pub activeflow_id: Option<ActiveflowId>,
    /// The flow's `ai_talk` execution.
    pub activeflow_seq: Option<u64>,
    /// Longest conversation the `ai_talk` asked for, in seconds.
    pub max_secs: Option<u32>,
    /// Status.
    pub status: AicallStatus,
    /// Why it ended.
    pub end_reason: Option<AicallEndReason>,
    /// Details of the end.
    pub end_detail: Option<String>,
    /// Messages recorded (their ids, to refuse a duplicate).
    pub messages: Vec<AimessageId>,
    /// Created.
    pub tm_create: Option<DateTime<Utc>>,
    /// Progressing.
    pub tm_progress: Option<DateTime<Utc>>,
    /// Ended.
    pub tm_end: Option<DateTime<Utc>>,
}

/// Cuts `s` to at most `max` bytes at a character boundary.
fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

impl Aicall {
    /// The API view.
    pub fn view(&self) -> Value {
        json!({
            "id": self.id,
            "type": "aicall",
            "customer_id": self.customer_id,
            "ai_id": self.ai_id,
            "reference_type": "call",
            "reference_id": self.reference_id,
            "activeflow_id": self.activeflow_id,
            "status": self.status.as_str(),
            "end_reason": self.end_reason,
            "end_detail": self.end_detail,
            "tm_create": self.tm_create,
            "tm_progress": self.tm_progress,
            "tm_end": self.tm_end,
        })
    }

    fn message_view(&self, event: &AicallEvent) -> Option<Value> {
        let AicallEvent::AimessageCreated {
            aimessage_id,
            role,
            content,
            interrupted,
            latency,
            at,
        } = event
        else {
            return None;
        };
        Some(json!({
            "id": aimessage_id,
            "type": "aimessage",
            "customer_id": self.customer_id,
            "aicall_id": self.id,
            "role": role,
            "content": content,
            "interrupted": interrupted,
            "latency": latency,
            "tm_create": at,
        }))
    }

    fn decide(&self, command: AicallCommand) -> Result<Vec<AicallEvent>, DomainError> {
        match command {
            AicallCommand::Create { aicall, at } => {
                if self.id.is_some() {
                    return Err(DomainError::AlreadyExists(format!(
                        "aicall {} exists",
                        aicall.aicall_id
                    )));
                }
                Ok(vec![AicallEvent::AicallCreated {
                    aicall_id: aicall.aicall_id,
                    customer_id: aicall.customer_id,
                    ai_id: aicall.ai_id,
                    settings: Box::new(aicall.settings),
                    reference_id: aicall.reference_id,
                    activeflow_id: aicall.activeflow_id,
                    activeflow_seq: aicall.activeflow_seq,
                    max_secs: aicall.max_secs,
                    at,
                }])
            }
            _ if self.id.is_none() => Err(DomainError::NotFound("aicall")),
            AicallCommand::Terminate { .. } | AicallCommand::Progress { .. }
                if self.status == AicallStatus::Terminated =>
            {
                Ok(vec![])
            }
            AicallCommand::Progress { at } => Ok(match self.status {
                AicallStatus::Initiating => vec![AicallEvent::AicallStatusProgressing { at }],
                _ => vec![],
            }),
            AicallCommand::AddMessage { message, at } => {
                if self.status == AicallStatus::Terminated {
                    return Err(DomainError::FailedPrecondition(
                        "the conversation has ended".into(),
                    ));
                }
                if self.messages.contains(&message.aimessage_id) {
                    return Ok(vec![]);
                }
                Ok(vec![AicallEvent::AimessageCreated {
                    aimessage_id: message.aimessage_id,
                    role: message.role,
                    content: cut(message.content, MAX_MESSAGE),
                    interrupted: message.interrupted,
                    latency: message.latency,
                    at,
                }])
            }
            AicallCommand::Terminate { reason, detail, at } => {
                Ok(vec![AicallEvent::AicallStatusTerminated {
                    reason,
                    detail: detail.map(|d| cut(d, MAX_MESSAGE)),
                    at,
                }])
            }
        }
    }

    fn fold(&mut self, event: AicallEvent) {
        match event {
            AicallEvent::AicallCreated {
                aicall_id,
                customer_id,
                ai_id,
                settings,
                reference_id,
                activeflow_id,
                activeflow_seq,
                max_secs,
                at,
            } => {
                *self = Aicall {
                    activeflow_seq,
                    max_secs,
                    id: Some(aicall_id),
                    customer_id,
                    ai_id: Some(ai_id),
                    settings: Some(*settings),
                    reference_id: Some(reference_id),
                    activeflow_id,
                    tm_create: Some(at),
                    ..Aicall::default()
                }
            }
            AicallEvent::AicallStatusProgressing { at } => {
                self.status = AicallStatus::Progressing;
                self.tm_progress = Some(at);
            }
            AicallEvent::AimessageCreated { aimessage_id, .. } => {
                self.messages.push(aimessage_id);
            }
            AicallEvent::AicallStatusTerminated { reason, detail, at } => {
                self.status = AicallStatus::Terminated;
                self.end_reason = Some(reason);
                self.end_detail = detail;
                self.tm_end = Some(at);
            }
        }
    }
}

decided_aggregate!(Aicall, AicallCommand, AicallEvent);

impl ResourceView for Aicall {
    /// `aimessage_created` shows the message; the other events show the conversation.
    fn resource_after(&self, event: &AicallEvent) -> Value {
        self.message_view(event).unwrap_or_else(|| self.view())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::given_nothing;

    fn settings() -> AiSettings {
        AiSettings {
            name: "receptionist".into(),
            detail: String::new(),
            init_prompt: "You answer the phone for a bakery.".into(),
            engine_model: "openai.gpt-4o-mini".into(),
            engine_url: Some("https://llm.example.com".into()),
            engine_key_sealed: Some("v1:sealed".into()),
            stt_type: None,
            stt_language: "en-US".into(),
            tts_type: Some("piper".into()),
            tts_voice_id: None,
            vad_config: VadConfig::default(),
            tool_names: vec![AiTool::Hangup, AiTool::Stop],
        }
    }

    #[test]
    fn settings_are_checked_with_reasons() {
        assert!(check_settings(&settings()).is_ok());
        let local = AiSettings {
            engine_model: "local.gemma-3-270m".into(),
            engine_url: None,
            ..settings()
        };
        assert!(check_settings(&local).is_ok());
        let cases: Vec<(AiSettings, &str)> = vec![
            (
                AiSettings {
                    name: " ".into(),
                    ..settings()
                },
                "name",
            ),
            (
                AiSettings {
                    engine_model: "gpt-4o".into(),
                    ..settings()
                },
                "engine_model",
            ),
            (
                AiSettings {
                    engine_model: "anthropic.claude".into(),
                    ..settings()
                },
                "engine_model",
            ),
            (
                AiSettings {
                    engine_model: "openai.".into(),
                    ..settings()
                },
                "engine_model",
            ),
            (
                AiSettings {
                    engine_model: "openai.a b".into(),
                    ..settings()
                },
                "engine_model",
            ),
            (
                AiSettings {
                    engine_url: None,
                    ..settings()
                },
                "engine_url is required",
            ),
            (
                AiSettings {
                    engine_url: Some("ftp://x".into()),
                    ..settings()
                },
                "engine_url",
            ),
            (
                AiSettings {
                    engine_url: Some("https://x".into()),
                    ..local.clone()
                },
                "only for openai",
            ),
            (
                AiSettings {
                    init_prompt: "x".repeat(MAX_PROMPT + 1),
                    ..settings()
                },
                "init_prompt",
            ),
            (
                AiSettings {
                    stt_type: Some("kaldi".into()),
                    ..settings()
                },
                "stt_type",
            ),
            (
                AiSettings {
                    tts_type: Some("polly".into()),
                    ..settings()
                },
                "tts_type",
            ),
            (
                AiSettings {
                    stt_language: "english".into(),
                    ..settings()
                },
                "language",
            ),
            (
                AiSettings {
                    vad_config: VadConfig {
                        min_speech_ms: 10,
                        ..VadConfig::default()
                    },
                    ..settings()
                },
                "min_speech_ms",
            ),
            (
                AiSettings {
                    vad_config: VadConfig {
                        no_input_ms: 100,
                        ..VadConfig::default()
                    },
                    ..settings()
                },
                "no_input_ms",
            ),
            (
                AiSettings {
                    vad_config: VadConfig {
                        end_of_turn_ms: 100,
                        ..VadConfig::default()
                    },
                    ..settings()
                },
                "end_of_turn_ms",
            ),
            (
                AiSettings {
                    tool_names: vec![AiTool::Connect],
                    ..settings()
                },
                "connect",
            ),
        ];
        for (s, why) in cases {
            let err = check_settings(&s).unwrap_err().to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
        assert!(check_engine_key("sk-123").is_ok());
        assert!(check_engine_key("").is_err());
        assert!(check_engine_key("a\nb").is_err());
    }

    #[test]
    fn an_ai_is_created_updated_and_deleted_and_never_shows_its_key() {
        let id = AiId::new();
        let mut ai = given_nothing::<Ai>().and(AiCommand::Create {
            ai_id: id,
            customer_id: CustomerId::new(),
            settings: settings(),
            at: Utc::now(),
        });
        let v = ai.view();
        assert_eq!(v["engine_key_set"], true);
        assert!(!v.to_string().contains("sealed"), "{v}");
        ai.when(AiCommand::Update {
            settings: AiSettings {
                engine_url: None,
                ..settings()
            },
            at: Utc::now(),
        })
        .then_error(DomainError::Invalid(
            "engine_url is required with an openai.* engine_model".into(),
        ));
        let mut ai = ai.and(AiCommand::Delete { at: Utc::now() });
        assert!(!ai.live());
        ai.when(AiCommand::Delete { at: Utc::now() })
            .then_error(DomainError::NotFound("ai"));
    }

    #[test]
    fn an_aicall_records_each_message_once_and_ends_once() {
        let call = CallId::new();
        let new = NewAicall {
            aicall_id: AicallId::new(),
            customer_id: CustomerId::new(),
            ai_id: AiId::new(),
            settings: settings(),
            reference_id: call,
            activeflow_id: None,
            activeflow_seq: None,
            max_secs: None,
        };
        let at = Utc::now();
        let mut c = given_nothing::<Aicall>()
            .and(AicallCommand::Create {
                aicall: Box::new(new),
                at,
            })
            .and(AicallCommand::Progress { at });
        assert_eq!(c.status, AicallStatus::Progressing);
        let message = NewAimessage {
            aimessage_id: AimessageId::new(),
            role: AiRole::Assistant,
            content: "é".repeat(MAX_MESSAGE),
            interrupted: true,
            latency: Some(AiLatency {
                voice_to_voice_ms: Some(700),
                ..AiLatency::default()
            }),
        };
        let events = c
            .when(AicallCommand::AddMessage {
                message: message.clone(),
                at,
            })
            .then_ok();
        let AicallEvent::AimessageCreated { content, .. } = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(content.len(), MAX_MESSAGE, "cut at a character boundary");
        let view = c.resource_after(&events[0]);
        assert_eq!(view["type"], "aimessage");
        assert_eq!(view["latency"]["voice_to_voice_ms"], 700);
        c.when(AicallCommand::AddMessage {
            message: message.clone(),
            at,
        })
        .then_nothing();
        let end = AicallCommand::Terminate {
            reason: AicallEndReason::Stopped,
            detail: None,
            at,
        };
        c.when(end.clone()).then_count(1);
        c.when(end).then_nothing();
        let other = NewAimessage {
            aimessage_id: AimessageId::new(),
            ..message
        };
        c.when(AicallCommand::AddMessage { message: other, at })
            .then_error(DomainError::FailedPrecondition(
                "the conversation has ended".into(),
            ));
    }
}
