//! The Customer aggregate: a tenant, its webhook settings, its agents and its access keys.

use crate::{DomainError, ResourceView};
use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use vbin_event_schema::flow::TelAddress;
use vbin_event_schema::{
    AccessKeyId, AgentId, AgentStatus, CallId, CustomerEvent, CustomerId, Permission,
    RoutingMethod, WebhookMethod,
};

/// Most addresses an agent has.
pub const MAX_AGENT_ADDRESSES: usize = 5;

/// A new agent, with its password already hashed by the command layer.
#[derive(Clone, Debug, PartialEq)]
pub struct NewAgent {
    /// Pre-generated id.
    pub agent_id: AgentId,
    /// Login name.
    pub username: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Display name.
    pub name: String,
    /// Permission.
    pub permission: Permission,
}

/// Commands the Customer aggregate accepts.
#[derive(Clone, Debug, PartialEq)]
pub enum CustomerCommand {
    /// Create the customer and its first (admin) agent.
    Create {
        /// The aggregate id.
        customer_id: CustomerId,
        /// Display name.
        name: String,
        /// Webhook target or empty.
        webhook_uri: String,
        /// Webhook method.
        webhook_method: WebhookMethod,
        /// Generated secret.
        webhook_secret: String,
        /// First agent (made admin).
        first_agent: NewAgent,
        /// When.
        at: DateTime<Utc>,
    },
    /// Change webhook settings.
    Update {
        /// Webhook target or empty.
        webhook_uri: String,
        /// Webhook method.
        webhook_method: WebhookMethod,
        /// When.
        at: DateTime<Utc>,
    },
    /// Replace the webhook secret, keeping the old one valid for `grace`.
    RotateWebhookSecret {
        /// New secret.
        webhook_secret: String,
        /// How long the previous secret is still sent.
        grace: Duration,
        /// When.
        at: DateTime<Utc>,
    },
    /// Add an agent.
    CreateAgent {
        /// The agent.
        agent: NewAgent,
        /// When.
        at: DateTime<Utc>,
    },
    /// Change an agent's name or permission.
    UpdateAgent {
        /// Which.
        agent_id: AgentId,
        /// New name.
        name: String,
        /// New permission.
        permission: Permission,
        /// When.
        at: DateTime<Utc>,
    },
    /// Set where an agent is dialed (at most [`MAX_AGENT_ADDRESSES`]).
    SetAgentAddresses {
        /// Which.
        agent_id: AgentId,
        /// Its numbers.
        addresses: Vec<TelAddress>,
        /// When.
        at: DateTime<Utc>,
    },
    /// Change an agent's availability.
    SetAgentStatus {
        /// Which.
        agent_id: AgentId,
        /// New status.
        status: AgentStatus,
        /// When.
        at: DateTime<Utc>,
    },
    /// Assign the queue call `call_id` an available agent among `candidates` (a queue's
    /// agents, in its order): `linear` takes the first available, `ringall` the one idle
    /// longest. A no-op if an agent has this call already (a repeated assignment).
    AssignAgent {
        /// The queue call.
        call_id: CallId,
        /// The queue's agents.
        candidates: Vec<AgentId>,
        /// How to pick.
        routing: RoutingMethod,
        /// When.
        at: DateTime<Utc>,
    },
    /// Make the agent that has the queue call `call_id` available again (no-op if none has).
    ReleaseAgentOf {
        /// The queue call that ended.
        call_id: CallId,
        /// When.
        at: DateTime<Utc>,
    },
    /// Stop sending webhooks to `webhook_uri` (no-op if the customer's endpoint changed since).
    DisableWebhook {
        /// The endpoint that failed.
        webhook_uri: String,
        /// Why.
        reason: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// Remove an agent.
    DeleteAgent {
        /// Which.
        agent_id: AgentId,
        /// When.
        at: DateTime<Utc>,
    },
    /// Issue an access key (hash only).
    CreateAccessKey {
        /// Pre-generated id.
        key_id: AccessKeyId,
        /// Label.
        name: String,
        /// SHA-256 hex of the token.
        token_hash: String,
        /// Visible start of the token.
        token_prefix: String,
        /// Expiry.
        expire_at: Option<DateTime<Utc>>,
        /// When.
        at: DateTime<Utc>,
    },
    /// Revoke an access key.
    DeleteAccessKey {
        /// Which.
        key_id: AccessKeyId,
        /// When.
        at: DateTime<Utc>,
    },
}

/// An agent inside the customer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    /// Id.
    pub id: AgentId,
    /// Login name.
    pub username: String,
    /// Argon2id hash.
    pub password_hash: String,
    /// Display name.
    pub name: String,
    /// Permission.
    pub permission: Permission,
    /// Availability.
    pub status: AgentStatus,
    /// The queue call it is on (with `busy`, when a queue assigned it).
    #[serde(default)]
    pub call_id: Option<CallId>,
    /// When its status last changed (ringall picks the agent idle longest).
    #[serde(default)]
    pub tm_status: Option<DateTime<Utc>>,
    /// Where it is dialed when a queue hands it a call.
    #[serde(default)]
    pub addresses: Vec<TelAddress>,
    /// Created.
    pub tm_create: DateTime<Utc>,
    /// Last change.
    pub tm_update: DateTime<Utc>,
    /// Deleted (kept for the audit trail's sake; no longer usable).
    pub tm_delete: Option<DateTime<Utc>>,
}

/// An access key inside the customer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccessKey {
    /// Id.
    pub id: AccessKeyId,
    /// Label.
    pub name: String,
    /// SHA-256 hex of the token.
    pub token_hash: String,
    /// Visible start of the token.
    pub token_prefix: String,
    /// Expiry.
    pub tm_expire: Option<DateTime<Utc>>,
    /// Created.
    pub tm_create: DateTime<Utc>,
    /// Revoked.
    pub tm_delete: Option<DateTime<Utc>>,
}

/// A customer's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    /// None until created.
    pub id: Option<CustomerId>,
    /// Display name.
    pub name: String,
    /// Webhook target ("" for none).
    pub webhook_uri: String,
    /// Webhook method.
    pub webhook_method: WebhookMethod,
    /// Current webhook secret.
    pub webhook_secret: String,
    /// Since when the current `webhook_uri` is set (events before it are not delivered to it).
    #[serde(default)]
    pub webhook_since: Option<DateTime<Utc>>,
    /// Previous secret and the end of its grace period.
    pub previous_webhook_secret: Option<(String, DateTime<Utc>)>,
    /// Created.
    pub tm_create: Option<DateTime<Utc>>,
    /// Last change.
    pub tm_update: Option<DateTime<Utc>>,
    /// Agents by id, deleted ones included.
    pub agents: BTreeMap<AgentId, Agent>,
    /// Access keys by id, revoked ones included.
    pub access_keys: BTreeMap<AccessKeyId, AccessKey>,
}

impl Customer {
    /// The customer as the API shows it (without the webhook secret).
    pub fn view(&self) -> Value {
        json!({
            "id": self.id,
            "type": "customer",
            "name": self.name,
            "status": "active",
            "webhook_uri": self.webhook_uri,
            "webhook_method": self.webhook_method,
            "tm_create": self.tm_create,
            "tm_update": self.tm_update,
        })
    }

    /// An agent as the API shows it (no password hash).
    pub fn agent_view(&self, a: &Agent) -> Value {
        json!({
            "id": a.id, "type": "agent", "customer_id": self.id, "username": a.username,
            "name": a.name, "permission": a.permission, "status": a.status,
            "call_id": a.call_id, "addresses": a.addresses,
            "tm_create": a.tm_create, "tm_update": a.tm_update, "tm_delete": a.tm_delete,
        })
    }

    /// An access key as the API shows it (no token, no hash).
    pub fn access_key_view(&self, k: &AccessKey) -> Value {
        json!({
            "id": k.id, "type": "accesskey", "customer_id": self.id, "name": k.name,
            "token_prefix": k.token_prefix, "tm_expire": k.tm_expire,
            "tm_create": k.tm_create, "tm_delete": k.tm_delete,
        })
    }

    /// A live (not deleted) agent.
    pub fn agent(&self, id: AgentId) -> Option<&Agent> {
        self.agents.get(&id).filter(|a| a.tm_delete.is_none())
    }

    /// The live agent assigned the queue call `call_id`.
    pub fn agent_on(&self, call_id: CallId) -> Option<&Agent> {
        self.agents
            .values()
            .find(|a| a.tm_delete.is_none() && a.call_id == Some(call_id))
    }

    /// How many of `ids` are live and available.
    pub fn available_among(&self, ids: &[AgentId]) -> usize {
        ids.iter()
            .filter_map(|id| self.agent(*id))
            .filter(|a| a.status == AgentStatus::Available)
            .count()
    }

    fn live_agent(&self, id: AgentId) -> Result<&Agent, DomainError> {
        self.agent(id).ok_or(DomainError::NotFound("agent"))
    }

    fn check_username(&self, username: &str) -> Result<(), DomainError> {
        if self
            .agents
            .values()
            .any(|a| a.tm_delete.is_none() && a.username == username)
        {
            return Err(DomainError::AlreadyExists(format!(
                "username {username:?} is taken"
            )));
        }
        Ok(())
    }

    fn agent_created(agent: NewAgent, at: DateTime<Utc>) -> CustomerEvent {
        CustomerEvent::AgentCreated {
            agent_id: agent.agent_id,
            username: agent.username,
            password_hash: agent.password_hash,
            name: agent.name,
            permission: agent.permission,
            at,
        }
    }

    fn decide(&self, command: CustomerCommand) -> Result<Vec<CustomerEvent>, DomainError> {
        use CustomerCommand as C;
        use CustomerEvent as E;
        if let C::Create {
            customer_id,
            name,
            webhook_uri,
            webhook_method,
            webhook_secret,
            mut first_agent,
            at,
        } = command
        {
            if self.id.is_some() {
                return Err(DomainError::AlreadyExists(format!(
                    "customer {customer_id} exists"
                )));
            }
            first_agent.permission = Permission::Admin;
            return Ok(vec![
                E::CustomerCreated {
                    customer_id,
                    name,
                    webhook_uri,
                    webhook_method,
                    webhook_secret,
                    at,
                },
                Self::agent_created(first_agent, at),
            ]);
        }
        if self.id.is_none() {
            return Err(DomainError::NotFound("customer"));
        }
        let event = match command {
            C::Create { .. } => unreachable!("handled above"),
            C::Update {
                webhook_uri,
                webhook_method,
                at,
            } => E::CustomerUpdated {
                webhook_uri,
                webhook_method,
                at,
            },
            C::DisableWebhook {
                webhook_uri,
                reason,
                at,
            } => {
                if webhook_uri.is_empty() || self.webhook_uri != webhook_uri {
                    return Ok(vec![]);
                }
                E::WebhookEndpointDisabled {
                    webhook_uri,
                    reason,
                    at,
                }
            }
            C::RotateWebhookSecret {
                webhook_secret,
                grace,
                at,
            } => E::WebhookSecretRotated {
                webhook_secret,
                previous_secret: self.webhook_secret.clone(),
                previous_valid_until: at + grace,
                at,
            },
            C::CreateAgent { agent, at } => {
                if self.agents.contains_key(&agent.agent_id) {
                    return Err(DomainError::AlreadyExists(format!(
                        "agent {} exists",
                        agent.agent_id
                    )));
                }
                self.check_username(&agent.username)?;
                Self::agent_created(agent, at)
            }
            C::UpdateAgent {
                agent_id,
                name,
                permission,
                at,
            } => {
                let agent = self.live_agent(agent_id)?;
                if agent.permission == Permission::Admin && permission != Permission::Admin {
                    self.ensure_other_admin(agent_id)?;
                }
                E::AgentUpdated {
                    agent_id,
                    name,
                    permission,
                    at,
                }
            }
            C::SetAgentAddresses {
                agent_id,
                addresses,
                at,
            } => {
                if addresses.len() > MAX_AGENT_ADDRESSES {
                    return Err(DomainError::Invalid(format!(
                        "addresses must hold at most {MAX_AGENT_ADDRESSES} numbers"
                    )));
                }
                if self.live_agent(agent_id)?.addresses == addresses {
                    return Ok(vec![]);
                }
                E::AgentAddressesChanged {
                    agent_id,
                    addresses,
                    at,
                }
            }
            C::SetAgentStatus {
                agent_id,
                status,
                at,
            } => {
                let agent = self.live_agent(agent_id)?;
                if agent.status == status && agent.call_id.is_none() {
                    return Ok(vec![]);
                }
                E::AgentStatusChanged {
                    agent_id,
                    status,
                    call_id: None,
                    at,
                }
            }
            C::AssignAgent {
                call_id,
                candidates,
                routing,
                at,
            } => {
                if self.agent_on(call_id).is_some() {
                    return Ok(vec![]);
                }
                let available = candidates
                    .iter()
                    .filter_map(|id| self.agent(*id))
                    .filter(|a| a.status == AgentStatus::Available);
                let chosen = match routing {
                    RoutingMethod::Linear => available.into_iter().next(),
                    // min_by_key keeps the first of equals: the queue's order breaks ties.
                    RoutingMethod::Ringall => available.min_by_key(|a| a.tm_status),
                };
                let Some(agent) = chosen else {
                    return Err(DomainError::FailedPrecondition(
                        "no agent of the queue is available".into(),
                    ));
                };
                E::AgentStatusChanged {
                    agent_id: agent.id,
                    status: AgentStatus::Busy,
                    call_id: Some(call_id),
                    at,
                }
            }
            C::ReleaseAgentOf { call_id, at } => {
                let Some(agent) = self.agent_on(call_id) else {
                    return Ok(vec![]);
                };
                E::AgentStatusChanged {
                    agent_id: agent.id,
                    status: AgentStatus::Available,
                    call_id: None,
                    at,
                }
            }
            C::DeleteAgent { agent_id, at } => {
                if self.live_agent(agent_id)?.permission == Permission::Admin {
                    self.ensure_other_admin(agent_id)?;
                }
                E::AgentDeleted { agent_id, at }
            }
            C::CreateAccessKey {
                key_id,
                name,
                token_hash,
                token_prefix,
                expire_at,
                at,
            } => {
                if self.access_keys.contains_key(&key_id) {
                    return Err(DomainError::AlreadyExists(format!(
                        "access key {key_id} exists"
                    )));
                }
                E::AccessKeyCreated {
                    key_id,
                    name,
                    token_hash,
                    token_prefix,
                    expire_at,
                    at,
                }
            }
            C::DeleteAccessKey { key_id, at } => {
                match self.access_keys.get(&key_id) {
                    Some(k) if k.tm_delete.is_none() => {}
                    _ => return Err(DomainError::NotFound("access key")),
                }
                E::AccessKeyDeleted { key_id, at }
            }
        };
        Ok(vec![event])
    }

    /// A customer must keep at least one admin, or nobody could manage it any more.
    fn ensure_other_admin(&self, leaving: AgentId) -> Result<(), DomainError> {
        let others = self
            .agents
            .values()
            .filter(|a| a.tm_delete.is_none() && a.id != leaving)
            .any(|a| a.permission == Permission::Admin);
        if others {
            Ok(())
        } else {
            Err(DomainError::FailedPrecondition(
                "a customer must keep at least one admin agent".into(),
            ))
        }
    }
}

impl Aggregate for Customer {
    const TYPE: &'static str = CustomerEvent::AGGREGATE;
    type Command = CustomerCommand;
    type Event = CustomerEvent;
    type Error = DomainError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        use CustomerEvent as E;
        match event {
            E::CustomerCreated {
                customer_id,
                name,
                webhook_uri,
                webhook_method,
                webhook_secret,
                at,
            } => {
                *self = Customer {
                    id: Some(customer_id),
                    name,
                    webhook_since: (!webhook_uri.is_empty()).then_some(at),
                    webhook_uri,
                    webhook_method,
                    webhook_secret,
                    tm_create: Some(at),
                    tm_update: Some(at),
                    ..Customer::default()
                }
            }
            E::CustomerUpdated {
                webhook_uri,
                webhook_method,
                at,
            } => {
                if webhook_uri != self.webhook_uri {
                    self.webhook_since = (!webhook_uri.is_empty()).then_some(at);
                }
                self.webhook_uri = webhook_uri;
                self.webhook_method = webhook_method;
                self.tm_update = Some(at);
            }
            E::WebhookEndpointDisabled { at, .. } => {
                self.webhook_since = None;
                self.webhook_uri = String::new();
                self.tm_update = Some(at);
            }
            E::WebhookSecretRotated {
                webhook_secret,
                previous_secret,
                previous_valid_until,
                at,
            } => {
                self.webhook_secret = webhook_secret;
                self.previous_webhook_secret = Some((previous_secret, previous_valid_until));
                self.tm_update = Some(at);
            }
            E::AgentCreated {
                agent_id,
                username,
                password_hash,
                name,
                permission,
                at,
            } => {
                self.agents.insert(
                    agent_id,
                    Agent {
                        id: agent_id,
                        username,
                        password_hash,
                        name,
                        permission,
                        status: AgentStatus::Offline,
                        call_id: None,
                        tm_status: None,
                        addresses: Vec::new(),
                        tm_create: at,
                        tm_update: at,
                        tm_delete: None,
                    },
                );
            }
            E::AgentUpdated {
                agent_id,
                name,
                permission,
                at,
            } => {
                if let Some(a) = self.agents.get_mut(&agent_id) {
                    a.name = name;
                    a.permission = permission;
                    a.tm_update = at;
                }
            }
            E::AgentStatusChanged {
                agent_id,
                status,
                call_id,
                at,
            } => {
                if let Some(a) = self.agents.get_mut(&agent_id) {
                    a.status = status;
                    a.call_id = call_id;
                    a.tm_status = Some(at);
                    a.tm_update = at;
                }
            }
            E::AgentAddressesChanged {
                agent_id,
                addresses,
                at,
            } => {
                if let Some(a) = self.agents.get_mut(&agent_id) {
                    a.addresses = addresses;
                    a.tm_update = at;
                }
            }
            E::AgentDeleted { agent_id, at } => {
                if let Some(a) = self.agents.get_mut(&agent_id) {
                    a.tm_delete = Some(at);
                    a.tm_update = at;
                }
            }
            E::AccessKeyCreated {
                key_id,
                name,
                token_hash,
                token_prefix,
                expire_at,
                at,
            } => {
                self.access_keys.insert(
                    key_id,
                    AccessKey {
                        id: key_id,
                        name,
                        token_hash,
                        token_prefix,
                        tm_expire: expire_at,
                        tm_create: at,
                        tm_delete: None,
                    },
                );
            }
            E::AccessKeyDeleted { key_id, at } => {
                if let Some(k) = self.access_keys.get_mut(&key_id) {
                    k.tm_delete = Some(at);
                }
            }
        }
    }
}

impl ResourceView for Customer {
    fn resource_after(&self, event: &CustomerEvent) -> Value {
        use CustomerEvent as E;
        let agent = |id: &AgentId| self.agents.get(id).map(|a| self.agent_view(a));
        let key = |id: &AccessKeyId| self.access_keys.get(id).map(|k| self.access_key_view(k));
        match event {
            E::CustomerCreated { .. }
            | E::CustomerUpdated { .. }
            | E::WebhookEndpointDisabled { .. }
            | E::WebhookSecretRotated { .. } => Some(self.view()),
            E::AgentCreated { agent_id, .. }
            | E::AgentUpdated { agent_id, .. }
            | E::AgentStatusChanged { agent_id, .. }
            | E::AgentAddressesChanged { agent_id, .. }
            | E::AgentDeleted { agent_id, .. } => agent(agent_id),
            E::AccessKeyCreated { key_id, .. } | E::AccessKeyDeleted { key_id, .. } => key(key_id),
        }
        .unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{given_nothing, Given};

    fn agent(name: &str) -> NewAgent {
        NewAgent {
            agent_id: AgentId::new(),
            username: name.into(),
            password_hash: "h".into(),
            name: name.into(),
            permission: Permission::Agent,
        }
    }

    fn created() -> (Given<Customer>, AgentId) {
        let first = agent("admin");
        let id = first.agent_id;
        let c = given_nothing::<Customer>().and(CustomerCommand::Create {
            customer_id: CustomerId::new(),
            name: "acme".into(),
            webhook_uri: String::new(),
            webhook_method: WebhookMethod::Post,
            webhook_secret: "s".repeat(32),
            first_agent: first,
            at: Utc::now(),
        });
        (c, id)
    }

    #[test]
    fn queue_assignment_picks_by_routing_and_is_idempotent() {
        let (mut c, _) = created();
        let t0 = Utc::now();
        let ids: Vec<AgentId> = (0..3)
            .map(|i| {
                let a = agent(&format!("a{i}"));
                let id = a.agent_id;
                c.when(CustomerCommand::CreateAgent { agent: a, at: t0 })
                    .then_ok();
                id
            })
            .collect();
        // Available in the order 2, 0 (agent 1 stays offline).
        for (i, id) in [ids[2], ids[0]].into_iter().enumerate() {
            let cmd = CustomerCommand::SetAgentStatus {
                agent_id: id,
                status: AgentStatus::Available,
                at: t0 + Duration::seconds(i as i64),
            };
            c.when(cmd).then_ok();
        }
        let assign = |call_id, routing| CustomerCommand::AssignAgent {
            call_id,
            candidates: ids.clone(),
            routing,
            at: t0 + Duration::seconds(10),
        };
        // ringall: the agent idle longest (2); linear: the first available in order (0).
        let mut ringall = c.clone();
        let call = CallId::new();
        ringall.when(assign(call, RoutingMethod::Ringall)).then_ok();
        assert_eq!(ringall.agent_on(call).unwrap().id, ids[2]);
        ringall
            .when(assign(call, RoutingMethod::Ringall))
            .then_nothing();
        c.when(assign(call, RoutingMethod::Linear)).then_ok();
        assert_eq!(c.agent_on(call).unwrap().id, ids[0]);
        assert_eq!(c.available_among(&ids), 1);
        let other = CallId::new();
        c.when(assign(other, RoutingMethod::Linear)).then_ok();
        assert_eq!(c.agent_on(other).unwrap().id, ids[2]);
        assert!(matches!(
            c.when(assign(CallId::new(), RoutingMethod::Linear))
                .then_refused(),
            DomainError::FailedPrecondition(_)
        ));
        // Release is by call, once.
        let release = CustomerCommand::ReleaseAgentOf {
            call_id: call,
            at: t0 + Duration::seconds(20),
        };
        c.when(release.clone()).then_count(1);
        c.when(release).then_nothing();
        assert_eq!(c.agent(ids[0]).unwrap().status, AgentStatus::Available);
        assert!(c.agent(ids[0]).unwrap().call_id.is_none());
    }

    #[test]
    fn first_agent_is_admin_and_usernames_are_unique() {
        let (mut c, admin) = created();
        assert_eq!(c.agent(admin).unwrap().permission, Permission::Admin);
        let dup = agent("admin");
        assert!(matches!(
            c.when(CustomerCommand::CreateAgent {
                agent: dup,
                at: Utc::now()
            })
            .then_refused(),
            DomainError::AlreadyExists(_)
        ));
    }

    #[test]
    fn last_admin_cannot_be_deleted_or_demoted() {
        let (mut c, admin) = created();
        let del = CustomerCommand::DeleteAgent {
            agent_id: admin,
            at: Utc::now(),
        };
        assert!(matches!(
            c.when(del.clone()).then_refused(),
            DomainError::FailedPrecondition(_)
        ));
        let mut second = agent("second");
        second.permission = Permission::Admin;
        c.when(CustomerCommand::CreateAgent {
            agent: second,
            at: Utc::now(),
        })
        .then_ok();
        c.when(del.clone()).then_count(1);
        assert!(c.agent(admin).is_none());
        c.when(del).then_error(DomainError::NotFound("agent"));
    }

    #[test]
    fn rotation_keeps_previous_secret_for_grace() {
        let (c, _) = created();
        let now = Utc::now();
        let c = c.and(CustomerCommand::RotateWebhookSecret {
            webhook_secret: "n".repeat(32),
            grace: Duration::hours(24),
            at: now,
        });
        assert_eq!(c.webhook_secret, "n".repeat(32));
        assert_eq!(
            c.previous_webhook_secret,
            Some(("s".repeat(32), now + Duration::hours(24)))
        );
    }

    #[test]
    fn access_keys_revoke_once() {
        let key_id = AccessKeyId::new();
        let mut c = created().0.and(CustomerCommand::CreateAccessKey {
            key_id,
            name: "k".into(),
            token_hash: "ab".into(),
            token_prefix: "vb_ab".into(),
            expire_at: None,
            at: Utc::now(),
        });
        let del = CustomerCommand::DeleteAccessKey {
            key_id,
            at: Utc::now(),
        };
        c.when(del.clone()).then_count(1);
        c.when(del).then_error(DomainError::NotFound("access key"));
        let view = c.resource_after(
            &c.decide(CustomerCommand::Update {
                webhook_uri: String::new(),
                webhook_method: WebhookMethod::Post,
                at: Utc::now(),
            })
            .unwrap()[0],
        );
        assert!(view.get("webhook_secret").is_none());
    }
}
