//! Call commands: create (one call per destination) and hangup.

use super::error::ApiResult;
use super::state::{CmdState, Tenant};
use axum::extract::State;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use uuid::Uuid;
pub use vbin_app::calls::NewCalls as ValidCalls;
use vbin_app::flows::Program;
use vbin_event_schema::flow::{is_dtmf, RawAction, SandboxScript};
use vbin_event_schema::{CallId, FlowId, MediaReference, RecordingLimits, TrunkId, E164};
use vbin_http::extract::{Json, Path};
use vbin_http::ApiError;

/// Most destinations in one request.
pub const MAX_DESTINATIONS: usize = 100;
/// Default ring timeout.
pub const DEFAULT_DIAL_TIMEOUT_MS: u32 = 30_000;
const MAX_VARIABLES: usize = 32;

/// A phone address: `"+1555..."` or VoIPBIN's `{"type":"tel","target":"+1555..."}`.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Address {
    /// Plain E.164 string.
    Plain(String),
    /// Typed address.
    Typed {
        /// Must be "tel".
        #[serde(rename = "type")]
        kind: String,
        /// The number.
        target: String,
    },
}

impl Address {
    pub(crate) fn parse(&self, field: &str) -> Result<E164, ApiError> {
        let n = match self {
            Address::Plain(n) => n,
            Address::Typed { kind, target } if kind == "tel" => target,
            Address::Typed { kind, .. } => {
                return Err(ApiError::invalid(format!(
                    "{field}: address type {kind:?} is not supported (use \"tel\")"
                )))
            }
        };
        E164::parse(n).map_err(|e| ApiError::invalid(format!("{field}: {e}")))
    }
}

/// `POST /v1.0/calls` body.
#[derive(Deserialize)]
pub struct CreateCalls {
    source: Address,
    destinations: Vec<Address>,
    #[serde(default)]
    variables: Map<String, Value>,
    dial_timeout_ms: Option<u32>,
    /// A stored flow to run once answered.
    flow_id: Option<Uuid>,
    /// Inline actions to run once answered.
    actions: Option<Vec<RawAction>>,
    /// The sandbox far end's script.
    sandbox: Option<SandboxScript>,
    /// The customer's SIP trunk to place the calls through (none: the sandbox carrier).
    trunk_id: Option<Uuid>,
}

pub use vbin_domain::call::MAX_SANDBOX_STEPS;

/// Checks a sandbox script (see [`vbin_domain::call::check_sandbox`]).
pub(crate) fn check_sandbox(s: &SandboxScript) -> Result<(), ApiError> {
    vbin_domain::call::check_sandbox(s).map_err(ApiError::invalid)
}

/// `flow_id` or `actions` (not both) as a program.
pub(crate) fn program(
    flow_id: Option<Uuid>,
    actions: Option<Vec<RawAction>>,
) -> Result<Option<Program>, ApiError> {
    match (flow_id, actions) {
        (Some(_), Some(_)) => Err(ApiError::invalid("give flow_id or actions, not both")),
        (Some(id), None) => Ok(Some(Program::Flow(FlowId(id)))),
        (None, Some(a)) => Ok(Some(Program::Inline(a))),
        (None, None) => Ok(None),
    }
}

/// Parses a `destinations` list of 1 to `max` addresses, naming the bad entry in the error.
pub(crate) fn parse_destinations(list: &[Address], max: usize) -> Result<Vec<E164>, ApiError> {
    if list.is_empty() || list.len() > max {
        return Err(ApiError::invalid(format!(
            "destinations must hold 1 to {max} numbers"
        )));
    }
    list.iter()
        .enumerate()
        .map(|(i, d)| d.parse(&format!("destinations[{i}]")))
        .collect()
}

pub(crate) fn check_variables(vars: &Map<String, Value>) -> Result<(), ApiError> {
    if vars.len() > MAX_VARIABLES {
        return Err(ApiError::invalid(format!(
            "at most {MAX_VARIABLES} variables"
        )));
    }
    for (k, v) in vars {
        if k.is_empty() || k.len() > 64 {
            return Err(ApiError::invalid(
                "variable names must be 1 to 64 characters",
            ));
        }
        let ok = match v {
            Value::String(s) => s.len() <= 1024,
            Value::Number(_) | Value::Bool(_) | Value::Null => true,
            _ => false,
        };
        if !ok {
            return Err(ApiError::invalid(format!(
                "variable {k:?} must be a string (at most 1024 bytes), number, boolean or null"
            )));
        }
    }
    if let Some(t) = vars.get("talk_seconds") {
        let secs = t
            .as_u64()
            .or_else(|| t.as_str().and_then(|s| s.parse().ok()));
        if secs.is_none_or(|s| s > 3600) {
            return Err(ApiError::invalid(
                "variables.talk_seconds must be a whole number from 0 to 3600",
            ));
        }
    }
    Ok(())
}

impl CreateCalls {
    /// The handler's checks, without I/O.
    pub fn validate(self) -> Result<ValidCalls, ApiError> {
        let source = self.source.parse("source")?;
        let destinations = parse_destinations(&self.destinations, MAX_DESTINATIONS)?;
        check_variables(&self.variables)?;
        let dial_timeout_ms = self.dial_timeout_ms.unwrap_or(DEFAULT_DIAL_TIMEOUT_MS);
        if !(1_000..=300_000).contains(&dial_timeout_ms) {
            return Err(ApiError::invalid("dial_timeout_ms must be 1000 to 300000"));
        }
        if let Some(s) = &self.sandbox {
            check_sandbox(s)?;
        }
        Ok(ValidCalls {
            source,
            destinations,
            variables: self.variables,
            dial_timeout_ms,
            program: program(self.flow_id, self.actions)?,
            sandbox: self.sandbox,
            trunk_id: self.trunk_id.map(TrunkId),
            master_call_id: None,
            ids: vec![],
        })
    }
}

/// `POST /v1.0/calls` -> `{"calls":[call...]}`: one call per destination, each dialed by the
/// carrier as soon as its `call_created` event is published.
pub async fn create_calls(
    State(s): State<Arc<CmdState>>,
    t: Tenant,
    Json(b): Json<CreateCalls>,
) -> ApiResult {
    let calls = s.app.create_calls(&t.acting, b.validate()?).await?;
    let views: Vec<Value> = calls.iter().map(|c| c.view()).collect();
    Ok(Json(json!({ "calls": views })))
}

/// `POST /v1.0/calls/{id}/hangup`: cancels an unanswered call, clears an answered one; a call
/// that has already ended is returned unchanged.
pub async fn hangup_call(
    State(s): State<Arc<CmdState>>,
    t: Tenant,
    Path(id): Path<Uuid>,
) -> ApiResult {
    Ok(Json(s.app.hangup_call(&t.acting, id).await?.view()))
}

/// `POST /v1.0/calls/{id}/recording_start` body (all optional).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RecordingBody {
    /// Only "wav".
    format: Option<String>,
    /// Longest recording, ms.
    duration: Option<u32>,
    /// Stop after this much far-end silence, ms.
    end_of_silence: Option<u32>,
    /// Stop at one of these keys.
    end_of_key: Option<String>,
}

impl RecordingBody {
    /// The handler's checks, without I/O.
    pub fn validate(self) -> Result<RecordingLimits, ApiError> {
        if self.format.as_deref().is_some_and(|f| f != "wav") {
            return Err(ApiError::invalid("format must be \"wav\""));
        }
        for (name, v) in [
            ("duration", self.duration),
            ("end_of_silence", self.end_of_silence),
        ] {
            if v.is_some_and(|v| v == 0 || v > 3_600_000) {
                return Err(ApiError::invalid(format!("{name} must be 1 to 3600000 ms")));
            }
        }
        if let Some(k) = &self.end_of_key {
            if k.is_empty() || k.len() > 16 || !k.chars().all(is_dtmf) {
                return Err(ApiError::invalid(
                    "end_of_key must be 1 to 16 of the keys 0-9 * # A-D",
                ));
            }
        }
        Ok(RecordingLimits {
            duration_ms: self.duration,
            end_of_silence_ms: self.end_of_silence,
            end_of_key: self.end_of_key,
        })
    }
}

/// `POST /v1.0/calls/{id}/recording_start` -> the recording (status recording). The call must
/// be answered; the call's media session captures it.
pub async fn start_recording(
    State(s): State<Arc<CmdState>>,
    t: Tenant,
    Path(id): Path<Uuid>,
    body: axum::body::Bytes,
) -> ApiResult {
    record(&s, &t, MediaReference::Call(CallId(id)), &body).await
}

/// Starts recording `reference` with the limits of an optional JSON `body`.
pub(super) async fn record(
    s: &CmdState,
    t: &Tenant,
    reference: MediaReference,
    body: &[u8],
) -> ApiResult {
    // The body is optional: none (or only whitespace) means no limits.
    let body: RecordingBody = if body.iter().all(u8::is_ascii_whitespace) {
        RecordingBody::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))?
    };
    let limits = body.validate()?;
    let r = s.app.start_recording(&t.acting, reference, limits).await?;
    Ok(Json(r.view()))
}

/// `POST /v1.0/calls/{id}/recording_stop` -> the call's recordings asked to stop (each ends
/// with `recording_ended` once stored).
pub async fn stop_recording(
    State(s): State<Arc<CmdState>>,
    t: Tenant,
    Path(id): Path<Uuid>,
) -> ApiResult {
    stop_recordings(&s, &t, MediaReference::Call(CallId(id))).await
}

/// Asks `reference`'s running recordings to stop: `{recordings: [...]}`.
pub(super) async fn stop_recordings(
    s: &CmdState,
    t: &Tenant,
    reference: MediaReference,
) -> ApiResult {
    let stopped = s.app.stop_recordings(&t.acting, reference).await?;
    let views: Vec<Value> = stopped.iter().map(|r| r.view()).collect();
    Ok(Json(json!({ "recordings": views })))
}
