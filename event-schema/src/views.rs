//! Typed partial views: the fields of a published event's `resource` (the API view of the
//! resource after the event, written by the domain's `view()`s) that consumers read but the
//! event's own data does not carry. Read them with [`crate::PublishedEvent::view`]; fields not
//! listed here are ignored. The domain's tests check that its views decode into these.

use crate::flow::SandboxScript;
use crate::types::{
    ActiveflowId, AicallId, CallDirection, CallId, CampaignId, MediaReference, ReferenceType,
    TrunkId,
};
use chrono::{DateTime, Utc};
use serde::Deserialize;

/// What consumers read of a call's view.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct CallView {
    /// The campaign that placed the call, if any.
    #[serde(default)]
    pub campaign_id: Option<CampaignId>,
    /// The flow running on the call, if any.
    #[serde(default)]
    pub activeflow_id: Option<ActiveflowId>,
    /// Outgoing or incoming.
    #[serde(default)]
    pub direction: CallDirection,
    /// The call's variables.
    #[serde(default)]
    pub variables: serde_json::Map<String, serde_json::Value>,
    /// The sandbox far end's script.
    #[serde(default)]
    pub sandbox: Option<SandboxScript>,
    /// Caller id.
    #[serde(default)]
    pub source: Option<crate::types::E164>,
    /// Number called.
    #[serde(default)]
    pub destination: Option<crate::types::E164>,
    /// The SIP trunk the call goes through (none: the sandbox carrier).
    #[serde(default)]
    pub trunk_id: Option<TrunkId>,
    /// The call this one is a leg of (a `connect`).
    #[serde(default)]
    pub master_call_id: Option<CallId>,
    /// Every leg this call has dialed (a `connect`), ended ones too.
    #[serde(default)]
    pub chained_call_ids: Vec<CallId>,
}

/// What consumers read of an activeflow's view: the call it is about.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct ReferenceView {
    /// The call.
    #[serde(default)]
    pub reference_id: Option<CallId>,
    /// The activeflow's variables.
    #[serde(default)]
    pub variables: serde_json::Map<String, serde_json::Value>,
}

/// What consumers read of a campaign's view.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct CampaignView {
    /// The campaign to start when this one completes.
    #[serde(default)]
    pub next_campaign_id: Option<CampaignId>,
}

/// What consumers read of a recording's view.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct RecordingView {
    /// What is recorded.
    #[serde(default)]
    pub reference_type: ReferenceType,
    /// The call or conference.
    #[serde(default)]
    pub reference_id: Option<uuid::Uuid>,
}

impl RecordingView {
    /// What is recorded, typed.
    pub fn reference(&self) -> Option<MediaReference> {
        self.reference_id
            .map(|id| MediaReference::new(self.reference_type, id))
    }
}

/// What consumers read of a transcription's view.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct TranscribeView {
    /// What is transcribed.
    #[serde(default)]
    pub reference_type: ReferenceType,
    /// The call or conference.
    #[serde(default)]
    pub reference_id: Option<uuid::Uuid>,
    /// The AI conversation whose messages it holds (no speech-to-text of its own).
    #[serde(default)]
    pub aicall_id: Option<AicallId>,
}

impl TranscribeView {
    /// What is transcribed, typed.
    pub fn reference(&self) -> Option<MediaReference> {
        self.reference_id
            .map(|id| MediaReference::new(self.reference_type, id))
    }
}

/// The last change of a child resource's view (a campaign call, a queue call), which the
/// parent's read-model row takes as its own.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Touched {
    /// When the resource last changed.
    pub tm_update: DateTime<Utc>,
}
