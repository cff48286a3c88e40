//! Value types shared by events, aggregates and APIs. Each one rejects bad input at
//! construction so that an invalid state cannot be represented downstream.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// Declares a UUID newtype id with parsing, display and serde as a plain UUID string.
macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new time-ordered (UUIDv7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
            /// The inner UUID.
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self(Uuid::nil())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|_| InvalidValue::new(stringify!($name), "is not a valid UUID"))
            }
        }
    };
}

id_type!(
    /// A customer (tenant). The Customer aggregate's id.
    CustomerId
);
id_type!(
    /// An agent (user) of a customer.
    AgentId
);
id_type!(
    /// An access key of a customer.
    AccessKeyId
);
id_type!(
    /// A call. The Call aggregate's id.
    CallId
);
id_type!(
    /// A campaign.
    CampaignId
);
id_type!(
    /// A billing record (one charge).
    BillingId
);
id_type!(
    /// An outplan (a campaign's dial policy).
    OutplanId
);
id_type!(
    /// An outdial (a list of targets).
    OutdialId
);
id_type!(
    /// A target of an outdial (one party to reach, up to 5 numbers).
    TargetId
);
id_type!(
    /// A queue of calls waiting for agents.
    QueueId
);
id_type!(
    /// A conference (calls that hear each other).
    ConferenceId
);
/// What a recording or a transcription captures (the API's `reference_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceType {
    /// A call (`reference_id` is the call id).
    #[default]
    Call,
    /// A conference (`reference_id` is the conference id).
    Conference,
}

impl ReferenceType {
    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Call => "call",
            Self::Conference => "conference",
        }
    }

    /// The type of an API name (`call`, `conference`).
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Call, Self::Conference]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// What a recording or a transcription captures, typed: events carry it as the two fields
/// `reference_type` and `reference_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(
    tag = "reference_type",
    content = "reference_id",
    rename_all = "snake_case"
)]
pub enum MediaReference {
    /// A call.
    Call(CallId),
    /// A conference (the mix of its members, or each member).
    Conference(ConferenceId),
}

impl Default for MediaReference {
    fn default() -> Self {
        Self::Call(CallId::default())
    }
}

impl From<CallId> for MediaReference {
    fn from(c: CallId) -> Self {
        Self::Call(c)
    }
}

impl From<ConferenceId> for MediaReference {
    fn from(c: ConferenceId) -> Self {
        Self::Conference(c)
    }
}

impl MediaReference {
    /// From an event's two fields.
    pub fn new(reference_type: ReferenceType, reference_id: Uuid) -> Self {
        match reference_type {
            ReferenceType::Call => Self::Call(CallId(reference_id)),
            ReferenceType::Conference => Self::Conference(ConferenceId(reference_id)),
        }
    }

    /// `reference_type`.
    pub fn reference_type(self) -> ReferenceType {
        match self {
            Self::Call(_) => ReferenceType::Call,
            Self::Conference(_) => ReferenceType::Conference,
        }
    }

    /// `reference_id`.
    pub fn id(self) -> Uuid {
        match self {
            Self::Call(c) => c.as_uuid(),
            Self::Conference(c) => c.as_uuid(),
        }
    }

    /// The call, if it is one.
    pub fn call(self) -> Option<CallId> {
        match self {
            Self::Call(c) => Some(c),
            Self::Conference(_) => None,
        }
    }
}

id_type!(
    /// A transcription of a call. The Transcribe aggregate's id.
    TranscribeId
);
id_type!(
    /// One transcript (a recognized segment) of a transcription.
    TranscriptId
);

id_type!(
    /// A flow (a program of actions). The Flow aggregate's id.
    FlowId
);
id_type!(
    /// A phone number of a customer's. The Number aggregate's id.
    NumberId
);
id_type!(
    /// A customer's SIP trunk. The Trunk aggregate's id.
    TrunkId
);
id_type!(
    /// A recording of a call. The Recording aggregate's id.
    RecordingId
);
id_type!(
    /// An AI assistant's configuration. The Ai aggregate's id.
    AiId
);
id_type!(
    /// One conversation of an assistant on a call. The Aicall aggregate's id.
    AicallId
);
id_type!(
    /// One message of a conversation.
    AimessageId
);
id_type!(
    /// One running flow. The Activeflow aggregate's id.
    ActiveflowId
);

/// A value that failed validation, with a message fit for an API client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}")]
pub struct InvalidValue {
    /// Which field or type was invalid.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl InvalidValue {
    /// A new validation failure.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// A phone number in E.164 form: `+`, a non-zero country digit, 8 to 15 digits in all.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct E164(String);

impl E164 {
    /// Validates `s` as an E.164 number.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let digits = s
            .strip_prefix('+')
            .ok_or_else(|| InvalidValue::new("phone number", "must start with '+' (E.164)"))?;
        let ok = (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(InvalidValue::new(
                "phone number",
                format!("{s:?} is not E.164 (+, country code, 8 to 15 digits)"),
            ))
        }
    }

    /// The number as text, `+` included.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for E164 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        E164::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Money in integer micros (1 USD = 1,000,000). Never a float.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Micros(pub i64);

/// A call's status. Forward-only; the terminal statuses never change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    /// Created, the carrier is dialing.
    #[default]
    Dialing,
    /// The far end is ringing.
    Ringing,
    /// Answered; media is flowing.
    Progressing,
    /// Answered and then hung up.
    Completed,
    /// The far end was busy.
    Busy,
    /// Nobody answered before the dial timeout.
    NoAnswer,
    /// The call could not be placed.
    Failed,
    /// Hung up by us before it was answered.
    Canceled,
}

impl CallStatus {
    /// Every status, in the machine's order.
    pub const ALL: [CallStatus; 8] = [
        Self::Dialing,
        Self::Ringing,
        Self::Progressing,
        Self::Completed,
        Self::Busy,
        Self::NoAnswer,
        Self::Failed,
        Self::Canceled,
    ];

    /// The status of an API name (`no_answer`).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// For the status a call ended in: whether it had been answered. Only `progressing` ends
    /// `completed` ([`HangupCause::resulting_status`]) and the machine only moves forward, so
    /// a call that ended any other way was never progressing.
    pub fn was_answered(self) -> bool {
        self == Self::Completed
    }

    /// True for the statuses a call ends in.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Busy | Self::NoAnswer | Self::Failed | Self::Canceled
        )
    }

    fn rank(self) -> u8 {
        match self {
            Self::Dialing => 0,
            Self::Ringing => 1,
            Self::Progressing => 2,
            _ => 3,
        }
    }

    /// Whether the machine may move from `self` to `to`: strictly forward, never out of a
    /// terminal status, and `completed` only after an answer (the others only before one).
    pub fn can_transition_to(self, to: CallStatus) -> bool {
        if self.is_terminal() || to.rank() <= self.rank() {
            return false;
        }
        match to {
            Self::Completed => self == Self::Progressing,
            Self::Busy | Self::NoAnswer | Self::Failed | Self::Canceled => {
                self != Self::Progressing
            }
            _ => true,
        }
    }

    /// The API name of the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dialing => "dialing",
            Self::Ringing => "ringing",
            Self::Progressing => "progressing",
            Self::Completed => "completed",
            Self::Busy => "busy",
            Self::NoAnswer => "no_answer",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }
}

/// Which side ended a call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HangupBy {
    /// Not hung up yet (serialized as `""` in the API).
    #[default]
    #[serde(rename = "")]
    None,
    /// Our side (API client or platform).
    Local,
    /// The far end or the network.
    Remote,
}

/// Why a call ended (Q.850-style names, as the API shows them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HangupCause {
    /// Not hung up yet (serialized as `""`).
    #[default]
    #[serde(rename = "")]
    None,
    /// Ordinary end of an answered call.
    NormalClearing,
    /// The far end was busy.
    UserBusy,
    /// No answer within the dial timeout.
    NoAnswer,
    /// The far end rejected the call.
    CallRejected,
    /// The number does not exist.
    UnallocatedNumber,
    /// We hung up before the call was answered.
    OriginatorCancel,
    /// The network failed.
    NetworkOutOfOrder,
}

impl HangupCause {
    /// The terminal status a call reaches when hung up from `current` with this cause.
    pub fn resulting_status(self, current: CallStatus) -> CallStatus {
        if current == CallStatus::Progressing {
            return CallStatus::Completed;
        }
        match self {
            Self::UserBusy => CallStatus::Busy,
            Self::NoAnswer => CallStatus::NoAnswer,
            Self::OriginatorCancel => CallStatus::Canceled,
            _ => CallStatus::Failed,
        }
    }
}

/// Direction of a call relative to the platform.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallDirection {
    /// Placed by the platform.
    #[default]
    Outgoing,
    /// Received by the platform.
    Incoming,
}

/// An agent's permission level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Manages the customer: agents, keys, webhook settings.
    Admin,
    /// Uses the platform (calls, campaigns) but manages nothing.
    #[default]
    Agent,
}

impl Permission {
    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Agent => "agent",
        }
    }
}

/// An agent's availability, used by queues.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// Can take calls.
    Available,
    /// On a call.
    Busy,
    /// Not working.
    #[default]
    Offline,
}

/// HTTP method used for webhooks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum WebhookMethod {
    /// POST (default).
    #[default]
    Post,
    /// PUT.
    Put,
}

impl WebhookMethod {
    /// The HTTP method's name ("POST", "PUT").
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookMethod::Post => "POST",
            WebhookMethod::Put => "PUT",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_validation() {
        assert!(E164::parse("+15551234567").is_ok());
        assert!(E164::parse("+821012345678").is_ok());
        for bad in [
            "15551234567",
            "+0555123456",
            "+1555",
            "+1555123456789012",
            "+1555abc4567",
            "",
            "+",
        ] {
            assert!(E164::parse(bad).is_err(), "{bad} accepted");
        }
        assert!(serde_json::from_str::<E164>("\"+1234\"").is_err());
    }

    #[test]
    fn call_status_machine_is_forward_only() {
        use CallStatus::*;
        let all = [
            Dialing,
            Ringing,
            Progressing,
            Completed,
            Busy,
            NoAnswer,
            Failed,
            Canceled,
        ];
        for from in all {
            for to in all {
                let ok = from.can_transition_to(to);
                if from.is_terminal() {
                    assert!(!ok, "{from:?} -> {to:?}");
                }
                if ok {
                    assert!(to.rank() > from.rank());
                }
            }
        }
        assert!(Dialing.can_transition_to(Ringing));
        assert!(Dialing.can_transition_to(Progressing));
        assert!(Ringing.can_transition_to(NoAnswer));
        assert!(Progressing.can_transition_to(Completed));
        assert!(!Progressing.can_transition_to(Canceled));
        assert!(!Ringing.can_transition_to(Completed));
        assert!(!Ringing.can_transition_to(Dialing));
    }

    #[test]
    fn hangup_status_by_cause() {
        assert_eq!(
            HangupCause::UserBusy.resulting_status(CallStatus::Dialing),
            CallStatus::Busy
        );
        assert_eq!(
            HangupCause::UnallocatedNumber.resulting_status(CallStatus::Dialing),
            CallStatus::Failed
        );
        assert_eq!(
            HangupCause::OriginatorCancel.resulting_status(CallStatus::Ringing),
            CallStatus::Canceled
        );
        assert_eq!(
            HangupCause::NormalClearing.resulting_status(CallStatus::Progressing),
            CallStatus::Completed
        );
    }

    /// A call ends answered (`was_answered`) exactly when it hangs up while progressing,
    /// whatever the cause.
    #[test]
    fn a_call_ended_answered_exactly_when_it_hung_up_progressing() {
        use HangupCause::*;
        let causes = [
            None,
            NormalClearing,
            UserBusy,
            NoAnswer,
            CallRejected,
            UnallocatedNumber,
            OriginatorCancel,
            NetworkOutOfOrder,
        ];
        for cause in causes {
            for current in [
                CallStatus::Dialing,
                CallStatus::Ringing,
                CallStatus::Progressing,
            ] {
                assert_eq!(
                    cause.resulting_status(current).was_answered(),
                    current == CallStatus::Progressing,
                    "{cause:?} while {current:?}"
                );
            }
        }
    }
}
