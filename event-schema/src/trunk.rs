//! Events of the Trunk aggregate: a customer's SIP trunk (where its calls go out and come in).
//! The password is never here in clear: `password_sealed` holds it encrypted with the
//! platform's sealing key, like an assistant's engine key.

use crate::types::*;
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

/// How a trunk is reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SipTransport {
    /// SIP over UDP.
    #[default]
    Udp,
    /// SIP over TCP.
    Tcp,
}

impl SipTransport {
    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
        }
    }

    /// The transport of an API name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Udp, Self::Tcp].into_iter().find(|t| t.as_str() == s)
    }
}

/// An audio codec a trunk may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Codec {
    /// G.711 µ-law.
    #[serde(rename = "PCMU")]
    Pcmu,
    /// G.711 A-law.
    #[serde(rename = "PCMA")]
    Pcma,
    /// G.722 (wideband).
    #[serde(rename = "G722")]
    G722,
    /// Opus.
    #[serde(rename = "opus")]
    Opus,
}

impl Codec {
    /// Every codec, in the default order of preference.
    pub const ALL: [Codec; 4] = [Codec::Pcmu, Codec::Pcma, Codec::G722, Codec::Opus];

    /// The API (and SDP) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pcmu => "PCMU",
            Self::Pcma => "PCMA",
            Self::G722 => "G722",
            Self::Opus => "opus",
        }
    }

    /// The codec of an API name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// Everything a trunk is made of, as events carry it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrunkSettings {
    /// Name.
    pub name: String,
    /// The carrier's SIP host (name or IP address).
    pub host: String,
    /// Its SIP port.
    pub port: u16,
    /// UDP or TCP.
    pub transport: SipTransport,
    /// Digest authentication user, if the carrier asks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Digest authentication password, sealed (never in clear in an event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_sealed: Option<String>,
    /// Codecs offered, in order of preference.
    pub codecs: Vec<Codec>,
}

/// Everything that happens to a trunk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TrunkEvent {
    /// A trunk was set up.
    TrunkCreated {
        /// The resource.
        trunk_id: TrunkId,
        /// Owner.
        customer_id: CustomerId,
        /// Its settings.
        settings: TrunkSettings,
        /// When.
        at: DateTime<Utc>,
    },
    /// Its settings were replaced.
    TrunkUpdated {
        /// The new settings.
        settings: TrunkSettings,
        /// When.
        at: DateTime<Utc>,
    },
    /// The trunk was deleted.
    TrunkDeleted {
        /// When.
        at: DateTime<Utc>,
    },
    /// Whether the trunk answers our SIP OPTIONS changed (or was first found out).
    TrunkReachabilityChanged {
        /// It answered (any final response).
        reachable: bool,
        /// The status code of its answer, if any.
        code: Option<u16>,
        /// When.
        at: DateTime<Utc>,
    },
}

events!(TrunkEvent in "trunk" {
    TrunkCreated => TRUNK_CREATED = "trunk_created",
    TrunkUpdated => TRUNK_UPDATED = "trunk_updated",
    TrunkDeleted => TRUNK_DELETED = "trunk_deleted",
    TrunkReachabilityChanged => TRUNK_REACHABILITY_CHANGED = "trunk_reachability_changed",
});
version_1!(TrunkEvent);
