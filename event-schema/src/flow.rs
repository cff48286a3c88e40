//! Call control: flows of actions (VoIPBIN's model), the Flow aggregate's events and the
//! Activeflow aggregate's events (one running flow on one call).
//!
//! An [`Action`] is `{id, next_id?, type, option?}` on the wire. Each type has its own option
//! struct; they are parsed strictly (unknown fields are refused) through [`RawAction`], so an
//! action in an event is always well-formed. Limits and cross-references (targets that exist,
//! `goto` with a loop count) are checked by the domain's flow validation.

use crate::types::*;
use crate::TranscribeDirection;
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use uuid::Uuid;

/// One action's id within a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ActionId(pub Uuid);

impl std::fmt::Display for ActionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The wire shape of an action, before its option is parsed for its type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RawAction {
    /// Generated when missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<ActionId>,
    /// Where to go after this action (default: the next one in the list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_id: Option<ActionId>,
    /// The action type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The type's options.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub option: Value,
}

/// A well-formed action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawAction", into = "RawAction")]
pub struct Action {
    /// Its id, unique in its flow.
    pub id: ActionId,
    /// Where to go after it, if not the next one.
    pub next_id: Option<ActionId>,
    /// What it does.
    pub kind: ActionKind,
}

/// No options.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoOption {}

fn en_us() -> String {
    "en-US".into()
}

/// `talk`: say a text with text-to-speech.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Talk {
    /// What to say.
    pub text: String,
    /// Language of the text.
    #[serde(default = "en_us")]
    pub language: String,
    /// A voice of the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice_id: Option<String>,
    /// A text-to-speech provider other than the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Do not wait until it has been played.
    #[serde(default, rename = "async")]
    pub is_async: bool,
}

/// `play`: play audio files fetched over http(s).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Play {
    /// Played in order.
    pub stream_urls: Vec<String>,
}

/// `sleep`: wait.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sleep {
    /// How long, ms.
    pub duration: u32,
}

/// `digits_receive`: collect DTMF digits into `voipbin.call.digits`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigitsReceive {
    /// Longest wait, ms.
    pub duration: u32,
    /// Stop after this many digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u32>,
    /// Stop at any of these keys (not included in the digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// `digits_send`: send DTMF digits to the far end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigitsSend {
    /// `0-9`, `*`, `#`, `A-D`.
    pub digits: String,
    /// Length of each digit, ms (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<u32>,
    /// Pause between digits, ms (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<u32>,
}

/// `branch`: jump by a variable's value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Branch {
    /// Default `voipbin.call.digits`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variable: Option<String>,
    /// Value -> action to jump to.
    pub target_ids: BTreeMap<String, ActionId>,
    /// Where to go when no value matches (default: go on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_target_id: Option<ActionId>,
}

/// A comparison of `condition_variable`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    /// Equal.
    #[serde(rename = "==")]
    Eq,
    /// Not equal.
    #[serde(rename = "!=")]
    Ne,
    /// Greater.
    #[serde(rename = ">")]
    Gt,
    /// Greater or equal.
    #[serde(rename = ">=")]
    Ge,
    /// Less.
    #[serde(rename = "<")]
    Lt,
    /// Less or equal.
    #[serde(rename = "<=")]
    Le,
}

/// How `condition_variable` reads the variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueType {
    /// As text.
    String,
    /// As a number.
    Number,
    /// Its length in characters.
    Length,
}

/// `condition_variable`: go on when true, jump when false.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionVariable {
    /// The variable.
    pub variable: String,
    /// The comparison.
    pub condition: Condition,
    /// How to read the variable.
    pub value_type: ValueType,
    /// Compared with, for `string`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_string: Option<String>,
    /// Compared with, for `number`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_number: Option<f64>,
    /// Compared with, for `length`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_length: Option<u64>,
    /// Where to go when false.
    pub false_target_id: ActionId,
}

/// `goto`: jump, at most `loop_count` times (then go on).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Goto {
    /// Where to.
    pub target_id: ActionId,
    /// How many times this goto jumps.
    pub loop_count: u32,
}

/// `variable_set`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariableSet {
    /// Name.
    pub key: String,
    /// Value.
    pub value: String,
}

/// `webhook_send`: a signed request to the customer; with `sync`, a 2xx body
/// `{"actions":[...]}` runs next.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSend {
    /// Where to.
    pub uri: String,
    /// `POST` (default), `PUT` or `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Content type of `data` (default `application/json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_type: Option<String>,
    /// Body (default: the activeflow's variables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// Wait for the answer and run the actions it returns.
    #[serde(default)]
    pub sync: bool,
}

/// `fetch_flow`: run another flow's actions next.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchFlow {
    /// The flow.
    pub flow_id: FlowId,
}

/// `transcribe_start`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranscribeStart {
    /// Language.
    #[serde(default = "en_us")]
    pub language: String,
    /// Which audio.
    #[serde(default)]
    pub direction: TranscribeDirection,
}

/// `recording_start`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingStart {
    /// Only `wav`.
    #[serde(default = "wav")]
    pub format: String,
    /// Longest recording, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<u32>,
    /// Stop after this much silence from the far end, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_of_silence: Option<u32>,
    /// Stop when the far end presses one of these keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_of_key: Option<String>,
    /// Beep before recording.
    #[serde(default)]
    pub beep_start: bool,
}

fn wav() -> String {
    "wav".into()
}

/// `hangup`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hangup {
    /// Free text kept on the activeflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The action types of later work: accepted by name so the error can say so.
pub const NOT_YET_SUPPORTED: &[&str] = &[];

/// `conference_join`: the call joins the conference and hears the others; the flow goes on
/// when the conference is stopped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConferenceJoin {
    /// The conference.
    pub conference_id: ConferenceId,
}

/// `queue_join`: the call waits in the queue until an agent takes it; the platform dials the
/// agent's addresses and bridges. The flow goes on when the agent hangs up or the wait times
/// out, with `voipbin.queue.result` (`answered`, `timeout`, `failed`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueJoin {
    /// The queue.
    pub queue_id: QueueId,
    /// The sandbox far end of the agents dialed for this call (sandbox carrier only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxScript>,
}

/// The flow variable holding how a `queue_join` ended.
pub const QUEUE_RESULT_VARIABLE: &str = "voipbin.queue.result";

/// A phone address in an action's option: `"+1555..."` or VoIPBIN's
/// `{"type":"tel","target":"+1555..."}` (written back in the second form).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TelAddress(pub E164);

impl Serialize for TelAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_json::json!({"type": "tel", "target": self.0}).serialize(s)
    }
}

impl<'de> Deserialize<'de> for TelAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Plain(String),
            Typed {
                #[serde(rename = "type")]
                kind: String,
                target: String,
            },
        }
        let n = match Wire::deserialize(d)? {
            Wire::Plain(n) => n,
            Wire::Typed { kind, target } if kind == "tel" => target,
            Wire::Typed { kind, .. } => {
                return Err(serde::de::Error::custom(format!(
                    "address type {kind:?} is not supported (use \"tel\")"
                )))
            }
        };
        E164::parse(&n)
            .map(TelAddress)
            .map_err(serde::de::Error::custom)
    }
}

/// `connect`: dial the destinations (the first to answer wins, the others are canceled) and
/// bridge it with this call; the flow goes on when the bridge ends, with
/// `voipbin.connect.result` (`answered`, `busy`, `no_answer`, `failed`, `canceled`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connect {
    /// Caller id of the legs (the call's own source if unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<TelAddress>,
    /// Dialed at once, 1 to 5.
    pub destinations: Vec<TelAddress>,
    /// How long the legs ring, ms (30 s if unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dial_timeout: Option<u32>,
    /// The sandbox far end of the legs (sandbox carrier only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxScript>,
}

/// `call`: place new, independent calls running their own flow; the flow goes on at once,
/// with `voipbin.call.call_ids`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallAction {
    /// Caller id (the call's own source if unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<TelAddress>,
    /// One call each, 1 to 5.
    pub destinations: Vec<TelAddress>,
    /// A stored flow they run once answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_id: Option<FlowId>,
    /// Inline actions they run once answered (checked like a flow's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<RawAction>>,
    /// How long they ring, ms (30 s if unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dial_timeout: Option<u32>,
    /// Their sandbox far end (sandbox carrier only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxScript>,
}

/// `ai_talk`: a conversation with an assistant; the flow goes on when it ends (the assistant
/// stops, or its limits end it). The variables the assistant set are the flow's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiTalk {
    /// The assistant.
    pub ai_id: crate::AiId,
    /// Language of the conversation (the assistant's if unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Longest conversation, in seconds (the platform's limit if unset or longer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<u32>,
    /// Accepted for VoIPBIN compatibility (the assistant's voice decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gender: Option<String>,
}

macro_rules! action_kinds {
    ($($v:ident ( $o:ty ) = $n:literal),* $(,)?) => {
        /// What an action does, with its options.
        #[derive(Clone, Debug, PartialEq)]
        pub enum ActionKind {
            $(
                #[doc = concat!("`", $n, "`")]
                $v($o),
            )*
        }

        impl ActionKind {
            /// Every supported type name.
            pub const TYPES: &'static [&'static str] = &[$($n),*];

            /// The type name.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $(Self::$v(_) => $n,)*
                }
            }

            /// The option as JSON (`null` for types without options).
            pub fn option(&self) -> Value {
                match self {
                    $(Self::$v(o) => serde_json::to_value(o).unwrap_or(Value::Null),)*
                }
            }

            /// Parses `option` for `type_name`.
            pub fn parse(type_name: &str, option: Value) -> Result<Self, InvalidValue> {
                let option = if option.is_null() { Value::Object(Map::new()) } else { option };
                match type_name {
                    $($n => serde_json::from_value::<$o>(option)
                        .map(Self::$v)
                        .map_err(|e| InvalidValue::new(concat!($n, " option"), e.to_string())),)*
                    t if NOT_YET_SUPPORTED.contains(&t) => Err(InvalidValue::new(
                        "type",
                        format!("{t:?} is not supported yet"),
                    )),
                    t => Err(InvalidValue::new(
                        "type",
                        format!("{t:?} is not an action type (one of {})", Self::TYPES.join(", ")),
                    )),
                }
            }
        }
    };
}

action_kinds! {
    Answer(NoOption) = "answer",
    Talk(Talk) = "talk",
    Play(Play) = "play",
    Beep(NoOption) = "beep",
    Sleep(Sleep) = "sleep",
    DigitsReceive(DigitsReceive) = "digits_receive",
    DigitsSend(DigitsSend) = "digits_send",
    Branch(Branch) = "branch",
    ConditionVariable(ConditionVariable) = "condition_variable",
    Goto(Goto) = "goto",
    VariableSet(VariableSet) = "variable_set",
    WebhookSend(WebhookSend) = "webhook_send",
    FetchFlow(FetchFlow) = "fetch_flow",
    TranscribeStart(TranscribeStart) = "transcribe_start",
    AiTalk(AiTalk) = "ai_talk",
    Connect(Connect) = "connect",
    Call(CallAction) = "call",
    QueueJoin(QueueJoin) = "queue_join",
    ConferenceJoin(ConferenceJoin) = "conference_join",
    TranscribeStop(NoOption) = "transcribe_stop",
    RecordingStart(RecordingStart) = "recording_start",
    RecordingStop(NoOption) = "recording_stop",
    Hangup(Hangup) = "hangup",
    Stop(NoOption) = "stop",
}

impl ActionKind {
    /// Whether the media session of the call carries this action out (audio, DTMF,
    /// recording, starting a transcription: it completes once the call's audio reaches the
    /// recognizer, so the actions after it are heard from their first frame); the others are
    /// decided by the activeflow itself or done by the flow engine.
    pub fn is_media(&self) -> bool {
        matches!(
            self,
            Self::Talk(_)
                | Self::Play(_)
                | Self::Beep(_)
                | Self::Sleep(_)
                | Self::DigitsReceive(_)
                | Self::DigitsSend(_)
                | Self::RecordingStart(_)
                | Self::RecordingStop(_)
                | Self::TranscribeStart(_)
        )
    }
}

impl TryFrom<RawAction> for Action {
    type Error = InvalidValue;
    fn try_from(raw: RawAction) -> Result<Self, InvalidValue> {
        let id = raw
            .id
            .ok_or_else(|| InvalidValue::new("id", "is missing"))?;
        Ok(Action {
            id,
            next_id: raw.next_id,
            kind: ActionKind::parse(&raw.kind, raw.option)?,
        })
    }
}

impl From<Action> for RawAction {
    fn from(a: Action) -> Self {
        RawAction {
            id: Some(a.id),
            next_id: a.next_id,
            kind: a.kind.type_name().to_string(),
            option: a.kind.option(),
        }
    }
}

/// An activeflow's status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActiveflowStatus {
    /// Created or executing.
    #[default]
    Running,
    /// Finished, stopped, or its call ended.
    Ended,
}

/// What a running flow is attached to. Only calls in this issue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActiveflowReferenceType {
    /// A call.
    #[default]
    Call,
}

/// Events of the Flow aggregate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FlowEvent {
    /// A flow was created.
    FlowCreated {
        /// The flow.
        flow_id: FlowId,
        /// Owner.
        customer_id: CustomerId,
        /// Name.
        name: String,
        /// Description.
        detail: String,
        /// The program.
        actions: Vec<Action>,
        /// When.
        at: DateTime<Utc>,
    },
    /// A flow's name, detail or actions changed.
    FlowUpdated {
        /// Name.
        name: String,
        /// Description.
        detail: String,
        /// The program.
        actions: Vec<Action>,
        /// When.
        at: DateTime<Utc>,
    },
    /// A flow was deleted (running activeflows keep their copy).
    FlowDeleted {
        /// When.
        at: DateTime<Utc>,
    },
}

events!(FlowEvent in "flow" {
    FlowCreated => FLOW_CREATED = "flow_created",
    FlowUpdated => FLOW_UPDATED = "flow_updated",
    FlowDeleted => FLOW_DELETED = "flow_deleted",
});
version_1!(FlowEvent);

/// How an action that waited ended, as reported by whoever carried it out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ActionResult {
    /// Variables it set (e.g. `voipbin.call.digits`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub variables: Map<String, Value>,
    /// Actions to run next (webhook_send sync, fetch_flow), already given ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<Action>,
    /// Why it failed; the flow goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// It hung up the call (an assistant's `hangup` tool): the flow ends here, with its
    /// variables, rather than run its next action on a call that is going away.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ends_call: bool,
}

/// Events of the Activeflow aggregate: one flow running on one call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ActiveflowEvent {
    /// A flow was attached to a call; it starts when the call is answered or arrives.
    ActiveflowCreated {
        /// The activeflow.
        activeflow_id: ActiveflowId,
        /// Owner.
        customer_id: CustomerId,
        /// The flow it copies (none for inline actions).
        flow_id: Option<FlowId>,
        /// What it runs on.
        reference_type: ActiveflowReferenceType,
        /// The call.
        reference_id: CallId,
        /// Its copy of the program.
        actions: Vec<Action>,
        /// Initial variables.
        variables: Map<String, Value>,
        /// When.
        at: DateTime<Utc>,
    },
    /// An action was executed (`seq` counts from 1); its options have variables substituted.
    /// `jump` is where a branch, condition or goto decided to go.
    ActiveflowActionExecuted {
        /// Execution number.
        seq: u64,
        /// The action as executed.
        action: Action,
        /// Where to go after it instead of its default next.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        jump: Option<ActionId>,
        /// When.
        at: DateTime<Utc>,
    },
    /// The action executed as `seq`, which the flow waited for, finished.
    ActiveflowActionCompleted {
        /// Which execution.
        seq: u64,
        /// What it produced.
        result: ActionResult,
        /// When.
        at: DateTime<Utc>,
    },
    /// The flow ended.
    ActiveflowEnded {
        /// `finished`, `stopped`, `hangup`, `call_ended`, `limit`.
        reason: String,
        /// When.
        at: DateTime<Utc>,
    },
}

events!(ActiveflowEvent in "activeflow" {
    ActiveflowCreated => ACTIVEFLOW_CREATED = "activeflow_created",
    ActiveflowActionExecuted => ACTIVEFLOW_ACTION_EXECUTED = "activeflow_action_executed",
    ActiveflowActionCompleted => ACTIVEFLOW_ACTION_COMPLETED = "activeflow_action_completed",
    ActiveflowEnded => ACTIVEFLOW_ENDED = "activeflow_ended",
});
version_1!(ActiveflowEvent);

/// One step of the sandbox far end's script, `at_ms` after the call is answered, or later
/// when it waits for what it hears: a person answers a prompt after it ends, or talks over it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxStep {
    /// When, ms after answer (the earliest, with `heard_ms` or `quiet_ms`).
    pub at_ms: u32,
    /// Then wait until it has heard this much sound from the platform (ms, counted from
    /// `at_ms`): speaks into a prompt this far in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heard_ms: Option<u32>,
    /// Then wait until the platform has been quiet this long (ms): answers once a prompt ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_ms: Option<u32>,
    /// Say this (text-to-speech).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub say: Option<String>,
    /// Press these keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digits: Option<String>,
    /// Hang up.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hangup: bool,
}

/// The simulated person at the far end of a sandbox call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxScript {
    /// Steps, in any order.
    pub script: Vec<SandboxStep>,
}

impl SandboxScript {
    /// When the far end hangs up, if a step says so.
    pub fn hangup_at_ms(&self) -> Option<u32> {
        self.script
            .iter()
            .filter(|s| s.hangup)
            .map(|s| s.at_ms)
            .min()
    }
}

/// Whether `c` is a DTMF key.
pub fn is_dtmf(c: char) -> bool {
    matches!(c, '0'..='9' | '*' | '#' | 'A'..='D')
}
