//! vbin's language models behind one streaming chat interface.
//!
//! The AI voice agent of a phone call turns the caller's speech into text, asks a model for the
//! reply and speaks it. Replies are streamed ([`LlmProvider::stream`]): the agent cuts the
//! tokens into sentences and speaks the first one while the rest is still being generated,
//! which is most of the perceived latency of a turn.
//!
//! Providers: [`OpenAiCompatible`] (OpenAI, vLLM, llama.cpp server, Ollama, LiteLLM, …), and
//! [`LocalLlama`], a small model run in-process by llama.cpp (offline, no tools).

pub mod local;
pub mod openai;

pub use local::{LocalLlama, LocalSettings};
pub use openai::OpenAiCompatible;

/// Who wrote a message of the conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions to the model (the agent's prompt).
    System,
    /// The caller.
    User,
    /// The model.
    Assistant,
    /// The result of a tool the model called.
    Tool,
}

/// A call of a tool (function) by the model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToolCall {
    /// The call's id, echoed by the tool result that answers it.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments: JSON text as the model sent it (it may be invalid JSON; the caller
    /// validates it against the tool's schema).
    pub arguments: String,
}

/// One message of the conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// The text (may be empty in an assistant turn that only called tools).
    pub content: String,
    /// The tools an assistant turn called.
    pub tool_calls: Vec<ToolCall>,
    /// In a tool result ([`Role::Tool`]): the id of the call it answers.
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    /// Instructions to the model.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }

    /// What the caller said.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    /// What the model said (add its [`ToolCall`]s to `tool_calls` if it called tools).
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }

    /// The result of the tool call `id`.
    pub fn tool_result(id: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            tool_call_id: Some(id.into()),
            ..Self::new(Role::Tool, content)
        }
    }
}

/// A tool (function) the model may call.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSpec {
    /// Its name.
    pub name: String,
    /// What it does, for the model to decide when to call it.
    pub description: String,
    /// Its arguments: a JSON Schema object.
    pub parameters: serde_json::Value,
}

/// A request for the next assistant turn.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChatRequest {
    /// The model's name on the server (e.g. `gpt-4o-mini`, `llama3.1:8b`).
    pub model: String,
    /// The conversation so far, oldest first (at least one message).
    pub messages: Vec<ChatMessage>,
    /// The tools the model may call (none: plain chat).
    pub tools: Vec<ToolSpec>,
    /// Most tokens to generate (the server's default if `None`).
    pub max_tokens: Option<u32>,
    /// Sampling temperature (the server's default if `None`).
    pub temperature: Option<f32>,
}

/// What a reply stream yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LlmEvent {
    /// A piece of the reply's text (never empty), in order.
    Token(String),
    /// A complete tool call, emitted once the model has finished it.
    ToolCall(ToolCall),
    /// The reply is complete; the stream's last item.
    Done {
        /// Why the model stopped: `stop`, `length`, `tool_calls`, … (`stop` if the server
        /// did not say).
        finish_reason: String,
    },
}

/// Why a request or a reply stream failed.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The server could not be reached, or the connection failed (refused, TLS, an address
    /// the platform blocks, reset mid-reply).
    #[error("cannot reach the language model: {0}")]
    Connect(String),
    /// The server answered with an error status, or sent an error with that status code in
    /// the stream.
    #[error("the language model answered {status}: {message}")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The server's error message, or the start of its reply.
        message: String,
    },
    /// The reply is not a well-formed chat-completions stream.
    #[error("bad reply from the language model: {0}")]
    Protocol(String),
    /// No first event within the first-event timeout, or no next event within the idle
    /// timeout.
    #[error("the language model sent nothing in time")]
    Timeout,
    /// The request cannot be sent (e.g. it has no message).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The provider's settings are invalid (e.g. a base URL that is not `http(s)://`).
    #[error("bad language model settings: {0}")]
    Config(String),
    /// The local model's file is missing (at this path).
    #[error("the local model is not installed (no {}): run scripts/models", .0.display())]
    NotInstalled(std::path::PathBuf),
    /// The local model failed: it cannot be loaded, or llama.cpp failed while generating.
    #[error("the local model failed: {0}")]
    Local(String),
}

/// A reply as it is generated: tokens and tool calls, then [`LlmEvent::Done`]; or an error,
/// after which nothing follows.
pub type LlmStream = futures::stream::BoxStream<'static, Result<LlmEvent, LlmError>>;

/// A language model that streams chat replies.
#[async_trait::async_trait]
pub trait LlmProvider: Send + Sync + 'static {
    /// A short name for logs and metrics (e.g. `openai`).
    fn name(&self) -> &'static str;

    /// Sends the request and returns the reply as a stream. `Err` when the request failed
    /// before any event (so the caller can try elsewhere before anything was spoken).
    async fn stream(&self, req: ChatRequest) -> Result<LlmStream, LlmError>;
}
