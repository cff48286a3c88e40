//! Events of the Customer aggregate: the customer itself, its agents and its access keys.

use crate::types::*;
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

/// Everything that happens to a customer (tenant) and its identities.
///
/// Secrets appear here only as hashes (passwords: Argon2id PHC strings; access keys: SHA-256),
/// except the webhook secret, which must be known to sign webhooks. Readers that expose events
/// (audit trail, exports) must pass them through [`CustomerEvent::redacted`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CustomerEvent {
    /// A platform admin created the customer.
    CustomerCreated {
        /// The new customer's id.
        customer_id: CustomerId,
        /// Display name.
        name: String,
        /// Where webhooks go; empty for none.
        webhook_uri: String,
        /// Webhook HTTP method.
        webhook_method: WebhookMethod,
        /// HMAC key for webhook signatures.
        webhook_secret: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// Webhook settings changed.
    CustomerUpdated {
        /// New webhook target; empty for none.
        webhook_uri: String,
        /// New webhook method.
        webhook_method: WebhookMethod,
        /// When.
        at: DateTime<Utc>,
    },
    /// Webhook delivery stopped using the endpoint (it answered 410 Gone, or kept failing):
    /// the customer's `webhook_uri` is cleared until set again.
    WebhookEndpointDisabled {
        /// The endpoint disabled.
        webhook_uri: String,
        /// Why.
        reason: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The webhook secret was replaced; the previous one stays valid for signing until
    /// `previous_valid_until` so receivers can roll over.
    WebhookSecretRotated {
        /// The new secret.
        webhook_secret: String,
        /// The secret it replaces.
        previous_secret: String,
        /// End of the grace period during which both are sent.
        previous_valid_until: DateTime<Utc>,
        /// When.
        at: DateTime<Utc>,
    },
    /// An agent (login) was added.
    AgentCreated {
        /// The agent.
        agent_id: AgentId,
        /// Unique login name (platform-wide).
        username: String,
        /// Argon2id PHC string.
        password_hash: String,
        /// Display name.
        name: String,
        /// Permission level.
        permission: Permission,
        /// When.
        at: DateTime<Utc>,
    },
    /// An agent's name or permission changed.
    AgentUpdated {
        /// The agent.
        agent_id: AgentId,
        /// Display name.
        name: String,
        /// Permission level.
        permission: Permission,
        /// When.
        at: DateTime<Utc>,
    },
    /// An agent's availability changed.
    AgentStatusChanged {
        /// The agent.
        agent_id: AgentId,
        /// New status.
        status: AgentStatus,
        /// The queue call it was assigned (with `busy`); absent otherwise. Added without a
        /// version bump: older events simply lack it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        call_id: Option<CallId>,
        /// When.
        at: DateTime<Utc>,
    },
    /// Where an agent is dialed when a queue hands it a call (all at once; the first to
    /// answer takes it).
    AgentAddressesChanged {
        /// The agent.
        agent_id: AgentId,
        /// Its phone numbers (none: it is not dialed, as before addresses existed).
        addresses: Vec<crate::flow::TelAddress>,
        /// When.
        at: DateTime<Utc>,
    },
    /// An agent was removed; its logins and tokens stop working.
    AgentDeleted {
        /// The agent.
        agent_id: AgentId,
        /// When.
        at: DateTime<Utc>,
    },
    /// An access key was issued. Only its hash is kept.
    AccessKeyCreated {
        /// The key.
        key_id: AccessKeyId,
        /// Label.
        name: String,
        /// Lowercase hex SHA-256 of the whole token.
        token_hash: String,
        /// The first characters of the token, to recognise it in lists.
        token_prefix: String,
        /// Expiry, if any.
        expire_at: Option<DateTime<Utc>>,
        /// When.
        at: DateTime<Utc>,
    },
    /// An access key was revoked.
    AccessKeyDeleted {
        /// The key.
        key_id: AccessKeyId,
        /// When.
        at: DateTime<Utc>,
    },
}

events!(CustomerEvent in "customer" {
    CustomerCreated => CUSTOMER_CREATED = "customer_created",
    CustomerUpdated => CUSTOMER_UPDATED = "customer_updated",
    WebhookEndpointDisabled => WEBHOOK_ENDPOINT_DISABLED = "webhook_endpoint_disabled",
    WebhookSecretRotated => WEBHOOK_SECRET_ROTATED = "webhook_secret_rotated",
    AgentCreated => AGENT_CREATED = "agent_created",
    AgentUpdated => AGENT_UPDATED = "agent_updated",
    AgentStatusChanged => AGENT_STATUS_CHANGED = "agent_status_changed",
    AgentDeleted => AGENT_DELETED = "agent_deleted",
    AgentAddressesChanged => AGENT_ADDRESSES_CHANGED = "agent_addresses_changed",
    AccessKeyCreated => ACCESSKEY_CREATED = "accesskey_created",
    AccessKeyDeleted => ACCESSKEY_DELETED = "accesskey_deleted",
});
version_1!(CustomerEvent);

impl CustomerEvent {
    /// A copy safe to show outside the command side: secrets and hashes replaced.
    pub fn redacted(&self) -> Self {
        let mut e = self.clone();
        match &mut e {
            Self::CustomerCreated { webhook_secret, .. } => *webhook_secret = REDACTED.into(),
            Self::WebhookSecretRotated {
                webhook_secret,
                previous_secret,
                ..
            } => {
                *webhook_secret = REDACTED.into();
                *previous_secret = REDACTED.into();
            }
            Self::AgentCreated { password_hash, .. } => *password_hash = REDACTED.into(),
            Self::AccessKeyCreated { token_hash, .. } => *token_hash = REDACTED.into(),
            _ => {}
        }
        e
    }
}

/// What secrets are replaced with in redacted copies.
pub const REDACTED: &str = "[redacted]";
