//! A client of OpenAI-compatible chat-completions servers (OpenAI, vLLM, llama.cpp server,
//! Ollama, LiteLLM, …): `POST …/chat/completions` with `"stream": true`, answered with
//! server-sent events (`data: {chunk}` lines, `data: [DONE]` at the end).
//!
//! The HTTP client is the caller's: the platform's resolves names through its SSRF guard and
//! speaks its TLS, so this module never builds one. The API key, when set, is sent as
//! `Authorization: Bearer …` and appears in no `Debug` output or error.

use crate::{ChatMessage, ChatRequest, LlmError, LlmEvent, LlmProvider, LlmStream, Role, ToolCall};
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::stream::{BoxStream, StreamExt};
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION};
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use tokio::time::{timeout, timeout_at, Instant};

/// Default time from sending the request to the first event (connection included).
pub const DEFAULT_FIRST_EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default longest silence between two events of a reply.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Most bytes read of one reply: a spoken reply is a few kB, this bounds a runaway server.
const MAX_STREAM_BYTES: usize = 8 << 20;

/// Most bytes read of an error reply.
const MAX_ERROR_BODY: usize = 16 << 10;

/// Most bytes of a server's error message quoted in an [`LlmError`].
const EXCERPT_BYTES: usize = 300;

/// A provider for any OpenAI-compatible chat-completions server.
#[derive(Clone)]
pub struct OpenAiCompatible {
    http: reqwest::Client,
    endpoint: url::Url,
    /// `Bearer {key}`, marked sensitive.
    authorization: Option<HeaderValue>,
    first_event_timeout: Duration,
    idle_timeout: Duration,
}

// By hand, so that the key never shows.
impl std::fmt::Debug for OpenAiCompatible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiCompatible")
            .field("endpoint", &self.endpoint.as_str())
            .field(
                "api_key",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .field("first_event_timeout", &self.first_event_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

impl OpenAiCompatible {
    /// A provider for the server at `base_url`, an `http(s)://` URL without credentials, query
    /// or fragment, e.g. `https://api.openai.com`, `http://127.0.0.1:8000` or
    /// `http://host/openai`. Requests go to `{base_url}/v1/chat/completions`, or to
    /// `{base_url}/chat/completions` when `base_url` already ends with `/v1` (as many
    /// servers' documentation writes it). `api_key`, if set and not empty, is sent as a bearer
    /// token. `http` is used as given (its DNS resolver, TLS, proxies and redirects).
    pub fn new(
        base_url: &str,
        api_key: Option<String>,
        http: reqwest::Client,
    ) -> Result<Self, LlmError> {
        let bad = |why: &str| LlmError::Config(format!("base URL: {why}"));
        let base = url::Url::parse(base_url).map_err(|e| bad(&e.to_string()))?;
        if base.scheme() != "http" && base.scheme() != "https" {
            return Err(bad("only http:// and https:// are supported"));
        }
        // Credentials in the URL would end up in error messages, which quote it.
        if !base.username().is_empty() || base.password().is_some() {
            return Err(bad("credentials belong in the API key"));
        }
        if base.query().is_some() || base.fragment().is_some() || base.cannot_be_a_base() {
            return Err(bad("no query or fragment allowed"));
        }
        let base = base.as_str().trim_end_matches('/');
        let path = if base.ends_with("/v1") {
            "/chat/completions"
        } else {
            "/v1/chat/completions"
        };
        let endpoint =
            url::Url::parse(&format!("{base}{path}")).map_err(|e| bad(&e.to_string()))?;
        let authorization = match api_key.filter(|k| !k.is_empty()) {
            None => None,
            Some(key) => {
                let mut value = HeaderValue::try_from(format!("Bearer {key}")).map_err(|_| {
                    LlmError::Config("the API key is not a valid header value".into())
                })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(Self {
            http,
            endpoint,
            authorization,
            first_event_timeout: DEFAULT_FIRST_EVENT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        })
    }

    /// How long the connection, the request and the wait for the first event may take
    /// (default [`DEFAULT_FIRST_EVENT_TIMEOUT`]).
    pub fn with_first_event_timeout(mut self, timeout: Duration) -> Self {
        self.first_event_timeout = timeout;
        self
    }

    /// Longest silence between two events once the reply has started (default
    /// [`DEFAULT_IDLE_TIMEOUT`]). SSE comments (keep-alives) do not count as events.
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// The URL requests are sent to.
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }
}

#[async_trait::async_trait]
impl LlmProvider for OpenAiCompatible {
    fn name(&self) -> &'static str {
        "openai"
    }

    /// Returns once the first event has arrived, so that a server failing before it says
    /// anything (error status, error event, silence) fails the request itself.
    async fn stream(&self, req: ChatRequest) -> Result<LlmStream, LlmError> {
        let body = request_body(&req)?;
        let deadline = Instant::now() + self.first_event_timeout;
        let mut request = self
            .http
            .post(self.endpoint.clone())
            .header(ACCEPT, "text/event-stream")
            .json(&body);
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let response = timeout_at(deadline, request.send())
            .await
            .map_err(|_| LlmError::Timeout)?
            .map_err(transport_error)?;
        let status = response.status();
        if !status.is_success() {
            // The status is the news; a body that does not come in time is left out.
            let body = timeout_at(deadline, read_prefix(response, MAX_ERROR_BODY))
                .await
                .unwrap_or_default();
            return Err(LlmError::Status {
                status: status.as_u16(),
                message: error_message(&body),
            });
        }
        let mut total = 0;
        let bytes = response.bytes_stream().map(move |chunk| {
            let chunk = chunk.map_err(transport_error)?;
            total += chunk.len();
            if total > MAX_STREAM_BYTES {
                return Err(LlmError::Protocol(format!(
                    "the reply is longer than {MAX_STREAM_BYTES} bytes"
                )));
            }
            Ok(chunk)
        });
        let mut reader = Reader {
            events: bytes.eventsource().boxed(),
            idle_timeout: self.idle_timeout,
            calls: BTreeMap::new(),
            pending: VecDeque::new(),
            finished: false,
        };
        let first = timeout_at(deadline, reader.events.next())
            .await
            .map_err(|_| LlmError::Timeout)?;
        reader.handle(first);
        match reader.pending.pop_front() {
            Some(Err(e)) => return Err(e),
            Some(Ok(event)) => reader.pending.push_front(Ok(event)),
            None => {}
        }
        Ok(futures::stream::unfold(reader, Reader::next).boxed())
    }
}

/// The JSON body of a request, or why it cannot be sent.
fn request_body(req: &ChatRequest) -> Result<Value, LlmError> {
    let bad = |why: &str| Err(LlmError::BadRequest(why.into()));
    if req.model.trim().is_empty() {
        return bad("no model");
    }
    if req.messages.is_empty() {
        return bad("no message");
    }
    if req.temperature.is_some_and(|t| !t.is_finite()) {
        return bad("the temperature is not a number");
    }
    if req.tools.iter().any(|t| t.name.is_empty()) {
        return bad("a tool without a name");
    }
    let messages = req
        .messages
        .iter()
        .map(message_json)
        .collect::<Result<Vec<_>, _>>()?;
    let mut body = json!({ "model": req.model, "messages": messages, "stream": true });
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.parameters,
                }})
            })
            .collect();
        body["tools"] = tools.into();
    }
    if let Some(max_tokens) = req.max_tokens {
        body["max_tokens"] = max_tokens.into();
    }
    if let Some(temperature) = req.temperature {
        body["temperature"] = temperature.into();
    }
    Ok(body)
}

/// A message as OpenAI's API writes it.
fn message_json(m: &ChatMessage) -> Result<Value, LlmError> {
    Ok(match m.role {
        Role::Assistant if !m.tool_calls.is_empty() => {
            let calls: Vec<Value> = m
                .tool_calls
                .iter()
                .map(|c| {
                    json!({"id": c.id, "type": "function",
                           "function": {"name": c.name, "arguments": c.arguments}})
                })
                .collect();
            // A turn that only called tools has null content, as OpenAI writes it.
            let content = (!m.content.is_empty()).then_some(m.content.as_str());
            json!({"role": m.role, "content": content, "tool_calls": calls})
        }
        Role::Tool => {
            let Some(id) = &m.tool_call_id else {
                return Err(LlmError::BadRequest(
                    "a tool result without a call id".into(),
                ));
            };
            json!({"role": m.role, "tool_call_id": id, "content": m.content})
        }
        _ => json!({"role": m.role, "content": m.content}),
    })
}

/// A reqwest error as ours: its message names the URL (no secret there) and the causes.
fn transport_error(e: reqwest::Error) -> LlmError {
    if e.is_timeout() {
        return LlmError::Timeout;
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    LlmError::Connect(text)
}

/// At most about `limit` bytes of the body (less if reading fails).
async fn read_prefix(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() >= limit {
            break;
        }
    }
    body
}

/// The message of an error reply: OpenAI's `{"error": {"message": …}}` (or Ollama's
/// `{"error": "…"}`), else the start of the body.
fn error_message(body: &[u8]) -> String {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(error_text));
    excerpt(&message.unwrap_or_else(|| String::from_utf8_lossy(body).into_owned()))
}

/// The message of an OpenAI error object, or an error given as a string.
fn error_text(error: &Value) -> Option<String> {
    let message = error.get("message").unwrap_or(error);
    message.as_str().map(str::to_string)
}

/// `text` on one line, cut to [`EXCERPT_BYTES`].
fn excerpt(text: &str) -> String {
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".into();
    }
    if text.len() <= EXCERPT_BYTES {
        return text.to_string();
    }
    let mut end = EXCERPT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// An error the server reported inside the stream: [`LlmError::Status`] if it gave an HTTP
/// status code (vLLM does), else [`LlmError::Protocol`].
fn stream_error(error: &Value) -> LlmError {
    let message = excerpt(&error_text(error).unwrap_or_else(|| error.to_string()));
    match error.get("code").and_then(Value::as_u64) {
        Some(status @ 400..=599) => LlmError::Status {
            status: status as u16,
            message,
        },
        _ => LlmError::Protocol(format!("the server reported: {message}")),
    }
}

/// The reply stream's state: the events read, and what they decoded to.
struct Reader {
    events: BoxStream<'static, Result<Event, EventStreamError<LlmError>>>,
    idle_timeout: Duration,
    /// Tool calls being received, by index: id and name come in a call's first delta, its
    /// arguments in pieces.
    calls: BTreeMap<u64, ToolCall>,
    /// Decoded items not yet yielded; an error is the last.
    pending: VecDeque<Result<LlmEvent, LlmError>>,
    /// Nothing more is read: the reply is done or failed.
    finished: bool,
}

impl Reader {
    /// The next item (for `unfold`).
    async fn next(mut self) -> Option<(Result<LlmEvent, LlmError>, Self)> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some((item, self));
            }
            if self.finished {
                return None;
            }
            match timeout(self.idle_timeout, self.events.next()).await {
                Ok(item) => self.handle(item),
                Err(_) => {
                    self.finished = true;
                    return Some((Err(LlmError::Timeout), self));
                }
            }
        }
    }

    /// Decodes one item of the event stream into `pending`.
    fn handle(&mut self, item: Option<Result<Event, EventStreamError<LlmError>>>) {
        let result = match item {
            // Closed before the reply finished (finishing stops reading).
            None => Err(LlmError::Protocol("stream ended early".into())),
            Some(Err(EventStreamError::Transport(e))) => Err(e),
            Some(Err(e)) => Err(LlmError::Protocol(format!("malformed event stream: {e}"))),
            Some(Ok(event)) => self.decode(&event.data),
        };
        if let Err(e) = result {
            self.pending.push_back(Err(e));
            self.finished = true;
        }
    }

    /// Decodes one `data:` chunk (only its first choice: we never ask for more).
    fn decode(&mut self, data: &str) -> Result<(), LlmError> {
        if data.trim() == "[DONE]" {
            return self.finish("stop");
        }
        let chunk: Value = serde_json::from_str(data)
            .map_err(|e| LlmError::Protocol(format!("bad JSON in the stream: {e}")))?;
        if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
            return Err(stream_error(error));
        }
        // Indexing a Value never panics: what is missing (e.g. the choices of a usage chunk)
        // reads as null.
        let choice = &chunk["choices"][0];
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            self.pending.push_back(Ok(LlmEvent::Token(text.into())));
        }
        for part in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = match part["index"].as_u64() {
                Some(index) => index,
                // Servers that send no index: a delta with an id starts a new call.
                None if part["id"].is_string() => self.calls.len() as u64,
                None => self.calls.keys().next_back().copied().unwrap_or(0),
            };
            let call = self.calls.entry(index).or_default();
            let function = &part["function"];
            for (field, value) in [
                (&mut call.id, &part["id"]),
                (&mut call.name, &function["name"]),
            ] {
                if field.is_empty() {
                    *field = value.as_str().unwrap_or_default().to_string();
                }
            }
            call.arguments
                .push_str(function["arguments"].as_str().unwrap_or_default());
        }
        match choice["finish_reason"].as_str().filter(|r| !r.is_empty()) {
            Some(reason) => self.finish(reason),
            None => Ok(()),
        }
    }

    /// Emits the gathered tool calls in index order, then `Done`, and stops reading: what
    /// may follow (usage, `[DONE]`) says nothing the caller needs.
    fn finish(&mut self, reason: &str) -> Result<(), LlmError> {
        self.finished = true;
        for (index, mut call) in std::mem::take(&mut self.calls) {
            if call.name.is_empty() {
                return Err(LlmError::Protocol(format!("tool call {index} has no name")));
            }
            // Some servers send no id; the tool result still needs one to answer.
            if call.id.is_empty() {
                call.id = format!("call_{index}");
            }
            // A call without arguments may send none; `{}` is what it means.
            if call.arguments.trim().is_empty() {
                call.arguments = "{}".into();
            }
            self.pending.push_back(Ok(LlmEvent::ToolCall(call)));
        }
        self.pending.push_back(Ok(LlmEvent::Done {
            finish_reason: reason.into(),
        }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ToolSpec;
    use axum::body::{Body, Bytes};
    use axum::http::HeaderMap;
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    const KEY: &str = "sk-test-5ecret-k3y";
    const SHORT: Duration = Duration::from_millis(300);
    const LONG: Duration = Duration::from_secs(5);

    /// How the fake server answers: a status, a content type and the body's chunks, then the
    /// end of the body or, if `hang`, silence.
    struct Reply {
        status: u16,
        content_type: &'static str,
        chunks: Vec<String>,
        hang: bool,
    }

    fn sse(chunks: Vec<String>) -> Reply {
        let content_type = "text/event-stream";
        let (status, hang) = (200, false);
        Reply {
            status,
            content_type,
            chunks,
            hang,
        }
    }

    /// What the fake server received: the Authorization header and the JSON body.
    type Seen = Arc<Mutex<Option<(Option<String>, Value)>>>;

    /// Starts a fake server answering `reply`; returns its base URL.
    async fn server(reply: Reply) -> (String, Seen) {
        let seen = Seen::default();
        let reply = Arc::new(reply);
        let saw = seen.clone();
        let handler = move |headers: HeaderMap, body: Bytes| async move {
            let auth = headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_string());
            *saw.lock().unwrap() = Some((auth, serde_json::from_slice(&body).unwrap()));
            let chunks = reply.chunks.clone().into_iter().map(Ok::<_, Infallible>);
            let body = match reply.hang {
                true => futures::stream::iter(chunks)
                    .chain(futures::stream::pending())
                    .boxed(),
                false => futures::stream::iter(chunks).boxed(),
            };
            axum::response::Response::builder()
                .status(reply.status)
                .header("content-type", reply.content_type)
                .body(Body::from_stream(body))
                .unwrap()
        };
        let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), seen)
    }

    fn provider(base: &str) -> OpenAiCompatible {
        let http = vbin_netguard::tls::client_builder().build().unwrap();
        OpenAiCompatible::new(base, Some(KEY.into()), http).unwrap()
    }

    fn request() -> ChatRequest {
        ChatRequest {
            model: "test-model".into(),
            messages: vec![
                ChatMessage::system("You answer calls."),
                ChatMessage::user("Hi"),
            ],
            ..Default::default()
        }
    }

    fn data(chunk: Value) -> String {
        format!("data: {chunk}\n\n")
    }

    fn delta(delta: Value) -> String {
        data(json!({"choices": [{"index": 0, "delta": delta, "finish_reason": null}]}))
    }

    fn content(text: &str) -> String {
        delta(json!({ "content": text }))
    }

    fn finish(reason: &str) -> String {
        data(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}))
    }

    fn done() -> String {
        "data: [DONE]\n\n".into()
    }

    /// The stream's events, and the error that ended it, if one did.
    async fn collect(mut stream: LlmStream) -> (Vec<LlmEvent>, Option<LlmError>) {
        let mut events = Vec::new();
        let next = async {
            while let Some(item) = stream.next().await {
                match item {
                    Ok(event) => events.push(event),
                    Err(e) => return Some(e),
                }
            }
            None
        };
        let error = timeout(LONG, next).await.expect("the stream hangs");
        (events, error)
    }

    fn token(text: &str) -> LlmEvent {
        LlmEvent::Token(text.into())
    }

    fn done_with(reason: &str) -> LlmEvent {
        LlmEvent::Done {
            finish_reason: reason.into(),
        }
    }

    #[tokio::test]
    async fn streams_tokens_in_order() {
        let split = content(" there");
        let (base, seen) = server(sse(vec![
            delta(json!({"role": "assistant", "content": ""})),
            ": keep-alive\n\n".into(),
            content("Hello"),
            split[..12].into(),
            split[12..].into(),
            data(json!({"choices": [], "usage": {"total_tokens": 9}})),
            content(", how can I help?"),
            finish("stop"),
            done(),
        ]))
        .await;
        let req = ChatRequest {
            max_tokens: Some(64),
            temperature: Some(0.5),
            ..request()
        };
        let (events, error) = collect(provider(&base).stream(req).await.unwrap()).await;
        assert!(error.is_none(), "{error:?}");
        let expected = [token("Hello"), token(" there"), token(", how can I help?")];
        assert_eq!(events, [&expected[..], &[done_with("stop")]].concat());

        let (auth, body) = seen.lock().unwrap().clone().unwrap();
        assert_eq!(auth.as_deref(), Some(format!("Bearer {KEY}").as_str()));
        assert_eq!(body["model"], "test-model");
        assert_eq!(body["stream"], true);
        assert_eq!(body["max_tokens"], 64);
        assert_eq!(body["temperature"], 0.5);
        assert_eq!(
            body["messages"],
            json!([{"role": "system", "content": "You answer calls."},
                   {"role": "user", "content": "Hi"}])
        );
        assert!(body.get("tools").is_none());
    }

    #[tokio::test]
    async fn done_marker_without_finish_reason_means_stop() {
        let (base, _) = server(sse(vec![content("Hi"), done()])).await;
        let (events, error) = collect(provider(&base).stream(request()).await.unwrap()).await;
        assert!(error.is_none(), "{error:?}");
        assert_eq!(events, [token("Hi"), done_with("stop")]);
    }

    #[tokio::test]
    async fn streams_parallel_tool_calls_and_sends_tool_turns() {
        let call = |c: Value| delta(json!({ "tool_calls": [c] }));
        let args = |i: u32, a: &str| call(json!({"index": i, "function": {"arguments": a}}));
        let (base, seen) = server(sse(vec![
            call(json!({"index": 0, "id": "call_a", "type": "function",
                        "function": {"name": "lookup_order", "arguments": ""}})),
            args(0, "{\"order"),
            call(json!({"index": 1, "id": "call_b", "type": "function",
                        "function": {"name": "transfer", "arguments": "{}"}})),
            args(0, "_id\": "),
            args(0, "\"A17\"}"),
            finish("tool_calls"),
            done(),
        ]))
        .await;
        let earlier = ToolCall {
            id: "call_0".into(),
            name: "lookup_order".into(),
            arguments: "{\"order_id\":\"A16\"}".into(),
        };
        let mut req = request();
        req.messages.push(ChatMessage {
            tool_calls: vec![earlier],
            ..ChatMessage::assistant("")
        });
        req.messages.push(ChatMessage::tool_result(
            "call_0",
            "{\"status\":\"shipped\"}",
        ));
        let schema = json!({"type": "object", "properties": {"order_id": {"type": "string"}}});
        req.tools.push(ToolSpec {
            name: "lookup_order".into(),
            description: "Finds an order".into(),
            parameters: schema.clone(),
        });

        let (events, error) = collect(provider(&base).stream(req).await.unwrap()).await;
        assert!(error.is_none(), "{error:?}");
        let tool_call = |id: &str, name: &str, arguments: &str| {
            LlmEvent::ToolCall(ToolCall {
                id: id.into(),
                name: name.into(),
                arguments: arguments.into(),
            })
        };
        assert_eq!(
            events,
            [
                tool_call("call_a", "lookup_order", "{\"order_id\": \"A17\"}"),
                tool_call("call_b", "transfer", "{}"),
                done_with("tool_calls"),
            ]
        );

        let (_, body) = seen.lock().unwrap().clone().unwrap();
        assert_eq!(
            body["messages"][2],
            json!({"role": "assistant", "content": null, "tool_calls": [{
                "id": "call_0", "type": "function",
                "function": {"name": "lookup_order", "arguments": "{\"order_id\":\"A16\"}"}}]})
        );
        assert_eq!(
            body["messages"][3],
            json!({"role": "tool", "tool_call_id": "call_0", "content": "{\"status\":\"shipped\"}"})
        );
        assert_eq!(
            body["tools"],
            json!([{"type": "function", "function": {
                "name": "lookup_order", "description": "Finds an order", "parameters": schema}}])
        );
    }

    #[test]
    fn tool_call_deltas_without_index_are_told_apart_by_id() {
        let mut reader = Reader {
            events: futures::stream::empty().boxed(),
            idle_timeout: LONG,
            calls: BTreeMap::new(),
            pending: VecDeque::new(),
            finished: false,
        };
        for (id, name, args) in [("a", "one", "{\"x\":"), ("", "", "1}"), ("b", "two", "")] {
            let id = (!id.is_empty()).then_some(id);
            let part = json!({"id": id, "function": {"name": name, "arguments": args}});
            let chunk = json!({"choices": [{"delta": {"tool_calls": [part]}}]});
            reader.decode(&chunk.to_string()).unwrap();
        }
        reader.decode("[DONE]").unwrap();
        let calls: Vec<_> = reader.pending.into_iter().map(Result::unwrap).collect();
        let call = |id: &str, name: &str, arguments: &str| {
            let (id, name, arguments) = (id.into(), name.into(), arguments.into());
            LlmEvent::ToolCall(ToolCall {
                id,
                name,
                arguments,
            })
        };
        let expected = [
            call("a", "one", "{\"x\":1}"),
            call("b", "two", "{}"),
            done_with("stop"),
        ];
        assert_eq!(calls, expected);
    }

    #[tokio::test]
    async fn error_statuses_carry_the_message() {
        let reply = |status, content_type, body: String| Reply {
            status,
            content_type,
            chunks: vec![body],
            hang: false,
        };
        let openai =
            json!({"error": {"message": "Incorrect API key", "type": "invalid_request_error"}});
        let (base, _) = server(reply(401, "application/json", openai.to_string())).await;
        let error = provider(&base).stream(request()).await.err().unwrap();
        assert!(!error.to_string().contains(KEY));
        assert!(
            matches!(&error, LlmError::Status { status: 401, message } if message == "Incorrect API key"),
            "{error:?}"
        );

        let long = format!("Internal failure {}", "x".repeat(1000));
        let (base, _) = server(reply(500, "text/plain", long)).await;
        match provider(&base).stream(request()).await.err().unwrap() {
            LlmError::Status { status, message } => {
                assert_eq!(status, 500);
                assert!(message.starts_with("Internal failure xxx"), "{message}");
                assert!(message.len() <= EXCERPT_BYTES + 3, "{}", message.len());
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn silence_before_the_first_event_times_out() {
        // A server that accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mute = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        // One that answers 200 and then sends only a keep-alive.
        let (silent, _) = server(Reply {
            hang: true,
            ..sse(vec![": keep-alive\n\n".into()])
        })
        .await;
        for base in [mute, silent] {
            let provider = provider(&base)
                .with_first_event_timeout(SHORT)
                .with_idle_timeout(LONG);
            let start = Instant::now();
            let result = timeout(LONG, provider.stream(request())).await.unwrap();
            assert!(matches!(result, Err(LlmError::Timeout)), "{base}");
            let waited = start.elapsed();
            // Well before the idle timeout (LONG), which must not apply yet.
            assert!(
                waited >= SHORT && waited < Duration::from_secs(3),
                "{waited:?}"
            );
        }
    }

    #[tokio::test]
    async fn silence_mid_stream_times_out() {
        let (base, _) = server(Reply {
            hang: true,
            ..sse(vec![content("Hello")])
        })
        .await;
        let provider = provider(&base)
            .with_first_event_timeout(LONG)
            .with_idle_timeout(SHORT);
        let stream = provider.stream(request()).await.unwrap();
        let start = Instant::now();
        let (events, error) = collect(stream).await;
        assert_eq!(events, [token("Hello")]);
        assert!(matches!(error, Some(LlmError::Timeout)), "{error:?}");
        assert!(start.elapsed() >= SHORT);
    }

    #[tokio::test]
    async fn malformed_and_truncated_streams_fail() {
        let run = |chunks| async move {
            let (base, _) = server(sse(chunks)).await;
            collect(provider(&base).stream(request()).await.unwrap()).await
        };
        let (events, error) = run(vec![content("Hi"), "data: {not json\n\n".into()]).await;
        assert_eq!(events, [token("Hi")]);
        assert!(matches!(error, Some(LlmError::Protocol(_))), "{error:?}");

        let (events, error) = run(vec![content("Hi")]).await;
        assert_eq!(events, [token("Hi")]);
        assert!(
            matches!(&error, Some(LlmError::Protocol(m)) if m == "stream ended early"),
            "{error:?}"
        );

        let failure = data(json!({"error": {"message": "the model crashed"}}));
        let (events, error) = run(vec![content("Hi"), failure]).await;
        assert_eq!(events, [token("Hi")]);
        assert!(
            matches!(&error, Some(LlmError::Protocol(m)) if m.contains("the model crashed")),
            "{error:?}"
        );

        // An error before any event fails the request itself, with the status given.
        let overloaded = json!({"error": {"message": "overloaded", "code": 503}});
        let (base, _) = server(sse(vec![data(overloaded)])).await;
        let error = provider(&base).stream(request()).await.err().unwrap();
        assert!(
            matches!(&error, LlmError::Status { status: 503, message } if message == "overloaded"),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn settings_and_bad_requests() {
        let http = || vbin_netguard::tls::client_builder().build().unwrap();
        for bad in [
            "ftp://host",
            "not a url",
            "http://user:pw@host",
            "http://host/?a=1",
        ] {
            let result = OpenAiCompatible::new(bad, None, http());
            assert!(matches!(result, Err(LlmError::Config(_))), "{bad}");
        }
        let endpoint = |base| provider(base).endpoint().to_string();
        assert_eq!(endpoint("https://h"), "https://h/v1/chat/completions");
        assert_eq!(
            endpoint("http://h:8000/"),
            "http://h:8000/v1/chat/completions"
        );
        assert_eq!(
            endpoint("http://h/openai"),
            "http://h/openai/v1/chat/completions"
        );
        assert_eq!(
            endpoint("http://h:11434/v1/"),
            "http://h:11434/v1/chat/completions"
        );
        let shown = format!("{:?}", provider("https://api.openai.com"));
        assert!(
            !shown.contains(KEY) && shown.contains("<redacted>"),
            "{shown}"
        );

        // A port nobody listens on.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let result = provider(&closed).stream(request()).await;
        assert!(
            matches!(result, Err(LlmError::Connect(_))),
            "{:?}",
            result.err()
        );
        let empty = ChatRequest {
            messages: vec![],
            ..request()
        };
        let result = provider(&closed).stream(empty).await;
        assert!(
            matches!(result, Err(LlmError::BadRequest(_))),
            "{:?}",
            result.err()
        );
    }
}
