//! Events of AI voice agents: the `ai` resource (an assistant's configuration) and the
//! `aicall` (one conversation of an assistant on a call, with its messages).

use crate::types::*;
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

/// A tool the assistant may call (LLM function calling).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AiTool {
    /// Hang up the call.
    Hangup,
    /// Connect the caller to someone (the multi-party issue; refused until then).
    Connect,
    /// Set a flow variable.
    VariableSet,
    /// Send a signed webhook.
    WebhookSend,
    /// End the conversation; the flow goes on.
    Stop,
}

impl AiTool {
    /// Every tool.
    pub const ALL: [AiTool; 5] = [
        AiTool::Hangup,
        AiTool::Connect,
        AiTool::VariableSet,
        AiTool::WebhookSend,
        AiTool::Stop,
    ];

    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            AiTool::Hangup => "hangup",
            AiTool::Connect => "connect",
            AiTool::VariableSet => "variable_set",
            AiTool::WebhookSend => "webhook_send",
            AiTool::Stop => "stop",
        }
    }

    /// The tool of an API name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// How the assistant listens: barge-in and silence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VadConfig {
    /// Caller speech while the assistant speaks interrupts it.
    pub barge_in: bool,
    /// Speech shorter than this does not interrupt ("mhm", a cough), in ms.
    pub min_speech_ms: u32,
    /// Silence from the caller after which the assistant asks again (then ends), in ms.
    pub no_input_ms: u32,
    /// Silence after the caller's speech that ends their turn (the assistant answers), in ms.
    pub end_of_turn_ms: u32,
}

impl Default for VadConfig {
    fn default() -> Self {
        Self {
            barge_in: true,
            min_speech_ms: 200,
            no_input_ms: 8_000,
            end_of_turn_ms: 500,
        }
    }
}

/// Everything an assistant is made of (the `ai` resource), as events carry it. The engine
/// key is never here in clear: `engine_key_sealed` holds it encrypted with the platform's
/// sealing key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AiSettings {
    /// Name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub detail: String,
    /// The system prompt.
    pub init_prompt: String,
    /// `<provider>.<model>`: `openai.<model>` or `local.<model>`.
    pub engine_model: String,
    /// The OpenAI-compatible server (`openai.*`).
    #[serde(default)]
    pub engine_url: Option<String>,
    /// The engine key, sealed (`v1:` + base64 of nonce and ciphertext); None: no key.
    #[serde(default)]
    pub engine_key_sealed: Option<String>,
    /// Speech-to-text provider (None: the platform's).
    #[serde(default)]
    pub stt_type: Option<String>,
    /// Language of the conversation.
    pub stt_language: String,
    /// Text-to-speech provider (None: the platform's).
    #[serde(default)]
    pub tts_type: Option<String>,
    /// Voice of that provider.
    #[serde(default)]
    pub tts_voice_id: Option<String>,
    /// Listening.
    #[serde(default)]
    pub vad_config: VadConfig,
    /// Tools the model may call.
    #[serde(default)]
    pub tool_names: Vec<AiTool>,
}

/// Events of an assistant's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AiEvent {
    /// Created.
    AiCreated {
        /// It.
        ai_id: AiId,
        /// Owner.
        customer_id: CustomerId,
        /// What it is.
        settings: AiSettings,
        /// When.
        at: DateTime<Utc>,
    },
    /// Changed (conversations under way keep what they started with).
    AiUpdated {
        /// What it is now.
        settings: AiSettings,
        /// When.
        at: DateTime<Utc>,
    },
    /// Deleted.
    AiDeleted {
        /// When.
        at: DateTime<Utc>,
    },
}

events!(AiEvent in "ai" {
    AiCreated => AI_CREATED = "ai_created",
    AiUpdated => AI_UPDATED = "ai_updated",
    AiDeleted => AI_DELETED = "ai_deleted",
});
version_1!(AiEvent);

/// Who said a message of a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AiRole {
    /// The caller (what speech-to-text heard).
    User,
    /// The assistant (what the caller heard of it).
    Assistant,
    /// A tool call and its result.
    Tool,
}

impl AiRole {
    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            AiRole::User => "user",
            AiRole::Assistant => "assistant",
            AiRole::Tool => "tool",
        }
    }
}

/// Where a turn's time went, in ms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AiLatency {
    /// End of the caller's speech -> its transcript.
    pub stt_ms: Option<u64>,
    /// Request to the model -> its first token.
    pub llm_first_token_ms: Option<u64>,
    /// First sentence -> its first audio.
    pub tts_first_audio_ms: Option<u64>,
    /// End of the caller's speech -> the first frame of the answer sent to the caller.
    pub voice_to_voice_ms: Option<u64>,
}

/// Why a conversation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AicallEndReason {
    /// The assistant called its `stop` tool: the flow goes on.
    Stopped,
    /// Stopped through the API.
    StoppedByApi,
    /// The assistant hung up (its `hangup` tool).
    Hangup,
    /// The call ended.
    CallEnded,
    /// The caller said nothing, even when asked again.
    NoInput,
    /// The conversation reached its duration limit.
    DurationLimit,
    /// The model could not be reached or failed (the caller heard the apology).
    EngineFailed,
    /// The conversation could not start (the assistant was deleted, the customer is at its
    /// limit of concurrent conversations, no media).
    Failed,
}

/// Events of one conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AicallEvent {
    /// Asked for (status initiating): the media session picks it up.
    AicallCreated {
        /// It.
        aicall_id: AicallId,
        /// Owner.
        customer_id: CustomerId,
        /// The assistant.
        ai_id: AiId,
        /// The assistant as it was when the conversation started (boxed: the other events
        /// are small).
        settings: Box<AiSettings>,
        /// The call.
        reference_id: CallId,
        /// The flow whose `ai_talk` started it, if one did.
        activeflow_id: Option<ActiveflowId>,
        /// That `ai_talk`'s execution (its `seq`): it ends when the conversation does.
        #[serde(default)]
        activeflow_seq: Option<u64>,
        /// Longest conversation the `ai_talk` asked for, in seconds.
        #[serde(default)]
        max_secs: Option<u32>,
        /// When.
        at: DateTime<Utc>,
    },
    /// The conversation is under way on the call's media.
    AicallStatusProgressing {
        /// When.
        at: DateTime<Utc>,
    },
    /// A message of the conversation.
    AimessageCreated {
        /// The message.
        aimessage_id: AimessageId,
        /// Who said it.
        role: AiRole,
        /// What (for a tool: the call and its result).
        content: String,
        /// The assistant was interrupted: `content` is what was played.
        interrupted: bool,
        /// Where the turn's time went (assistant messages).
        latency: Option<AiLatency>,
        /// When.
        at: DateTime<Utc>,
    },
    /// Ended.
    AicallStatusTerminated {
        /// Why.
        reason: AicallEndReason,
        /// Details (an engine's error).
        #[serde(default)]
        detail: Option<String>,
        /// When.
        at: DateTime<Utc>,
    },
}

events!(AicallEvent in "aicall" {
    AicallCreated => AICALL_CREATED = "aicall_created",
    AicallStatusProgressing => AICALL_STATUS_PROGRESSING = "aicall_status_progressing",
    AimessageCreated => AIMESSAGE_CREATED = "aimessage_created",
    AicallStatusTerminated => AICALL_STATUS_TERMINATED = "aicall_status_terminated",
});
version_1!(AicallEvent);
