//! Identity commands: customers (admin), login, own customer settings, access keys, agents.

use super::error::{ApiResult, CmdError};
use super::state::{acting, CmdState, Tenant};
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{Duration, Utc};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use uuid::Uuid;
use vbin_domain::billing::DEFAULT_RATE_MICROS_PER_MINUTE;
use vbin_domain::customer::MAX_AGENT_ADDRESSES;
use vbin_domain::{BillingAccount, BillingCommand, Customer, CustomerCommand, NewAgent};
use vbin_event_schema::flow::TelAddress;
use vbin_event_schema::{
    AccessKeyId, AgentId, AgentStatus, CustomerId, Micros, Permission, WebhookMethod,
};
use vbin_http::auth::{self, Actor, Caller};
use vbin_http::extract::{Admin, CustomerAdmin, CustomerCaller, Json, Path};
use vbin_http::ApiError;

/// Grace period during which the previous webhook secret is still used after a rotation.
pub const WEBHOOK_SECRET_GRACE_HOURS: i64 = 24;

fn check_len(field: &str, v: &str, min: usize, max: usize) -> Result<(), ApiError> {
    let n = v.chars().count();
    if n < min || n > max {
        return Err(ApiError::invalid(format!(
            "{field} must be {min} to {max} characters"
        )));
    }
    if v.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(())
}

fn check_username(u: &str) -> Result<(), ApiError> {
    check_len("username", u, 3, 64)?;
    if !u
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._@-+".contains(c))
    {
        return Err(ApiError::invalid(
            "username may contain letters, digits and . _ @ - + only",
        ));
    }
    Ok(())
}

/// An empty string (no webhooks) or an absolute http(s) URL.
fn check_webhook_uri(u: &str) -> Result<(), ApiError> {
    if u.is_empty() {
        return Ok(());
    }
    if u.len() > 2048 {
        return Err(ApiError::invalid(
            "webhook_uri must be at most 2048 characters",
        ));
    }
    let url = url::Url::parse(u).map_err(|e| ApiError::invalid(format!("webhook_uri: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ApiError::invalid(
            "webhook_uri must be an absolute http or https URL",
        ));
    }
    Ok(())
}

fn check_password(p: &str) -> Result<(), ApiError> {
    check_len("password", p, 8, 256)
}

/// Hashes a password already checked by [`check_password`].
async fn hash_password(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || crate::password::hash_password(&password))
        .await
        .map_err(|e| ApiError::internal("password hashing task failed", e))?
        .map_err(|e| ApiError::internal("password hashing failed", e))
}

/// `POST /v1.0/customers` body.
#[derive(Deserialize)]
pub struct CreateCustomer {
    name: String,
    username: String,
    password: String,
    #[serde(default)]
    webhook_uri: String,
    #[serde(default)]
    webhook_method: WebhookMethod,
    #[serde(default)]
    balance_micros: i64,
    rate_micros_per_minute: Option<i64>,
}

/// A validated `POST /v1.0/customers` body (the amounts are checked by the billing account).
#[derive(Debug)]
pub struct ValidCustomer {
    /// Display name, 1 to 200 characters.
    pub name: String,
    /// The first agent's login.
    pub username: String,
    /// Its password, 8 to 256 characters.
    pub password: String,
    /// Empty or an absolute http(s) URL.
    pub webhook_uri: String,
    /// Webhook method.
    pub webhook_method: WebhookMethod,
    /// Opening balance.
    pub balance_micros: Micros,
    /// Per-minute rate (default [`DEFAULT_RATE_MICROS_PER_MINUTE`]).
    pub rate_micros_per_minute: Micros,
}

impl CreateCustomer {
    /// The handler's checks, without I/O.
    pub fn validate(self) -> Result<ValidCustomer, ApiError> {
        check_len("name", &self.name, 1, 200)?;
        check_username(&self.username)?;
        check_webhook_uri(&self.webhook_uri)?;
        check_password(&self.password)?;
        Ok(ValidCustomer {
            name: self.name,
            username: self.username,
            password: self.password,
            webhook_uri: self.webhook_uri,
            webhook_method: self.webhook_method,
            balance_micros: Micros(self.balance_micros),
            rate_micros_per_minute: Micros(
                self.rate_micros_per_minute
                    .unwrap_or(DEFAULT_RATE_MICROS_PER_MINUTE),
            ),
        })
    }
}

/// `POST /v1.0/customers` (platform admin): the customer, its first (admin) agent and its
/// billing account. The account is opened first: should the customer then fail (a taken
/// username), the orphan account belongs to an id nobody can use, whereas the reverse order
/// could leave a customer without an account.
pub async fn create_customer(
    State(s): State<Arc<CmdState>>,
    _: Admin,
    Json(b): Json<CreateCustomer>,
) -> ApiResult {
    let b = b.validate()?;
    let customer_id = CustomerId(vbin_app::new_id());
    let agent = NewAgent {
        agent_id: AgentId(vbin_app::new_id()),
        username: b.username.clone(),
        password_hash: hash_password(b.password).await?,
        name: b.username,
        permission: Permission::Admin,
    };
    let cmd = CustomerCommand::Create {
        customer_id,
        name: b.name,
        webhook_uri: b.webhook_uri,
        webhook_method: b.webhook_method,
        webhook_secret: auth::random_token(32),
        first_agent: agent,
        at: Utc::now(),
    };
    let acting = acting(&Caller::Admin, customer_id);
    let open = BillingCommand::Open {
        customer_id,
        balance_micros: b.balance_micros,
        rate_micros_per_minute: b.rate_micros_per_minute,
        at: Utc::now(),
    };
    let id = customer_id.as_uuid();
    s.app.create::<BillingAccount>(&acting, id, open).await?;
    Ok(Json(
        s.app.create::<Customer>(&acting, id, cmd).await?.view(),
    ))
}

/// `POST /auth/login` body.
#[derive(Deserialize)]
pub struct Login {
    username: String,
    password: String,
}

/// A `POST /auth/login` body worth looking up.
#[derive(Debug)]
pub struct Credentials {
    /// At most 64 bytes.
    pub username: String,
    /// At most 256 bytes.
    pub password: String,
}

impl Login {
    /// The handler's checks, without I/O: credentials that cannot exist are 401 at once.
    pub fn validate(self) -> Result<Credentials, ApiError> {
        if self.username.len() > 64 || self.password.len() > 256 {
            return Err(ApiError::unauthenticated());
        }
        Ok(Credentials {
            username: self.username,
            password: self.password,
        })
    }
}

/// A hash of a random password: verifying against it when the user does not exist keeps the
/// response time the same as for a wrong password (no username oracle).
static DUMMY_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    crate::password::hash_password(&auth::random_token(16)).expect("hashing a random password")
});

/// `POST /auth/login` -> `{token}` (HS256 JWT).
pub async fn login(State(s): State<Arc<CmdState>>, Json(b): Json<Login>) -> ApiResult {
    let b = b.validate()?;
    if s.keys.login_blocked(&b.username) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "resource_exhausted",
            "too many failed logins for this username; try again later",
        )
        .into());
    }
    let row: Option<(Uuid, Uuid, String, String)> = sqlx::query_as(
        "SELECT agent_id, customer_id, password_hash, permission FROM auth_agents WHERE username = $1",
    )
    .bind(&b.username)
    .fetch_optional(&s.app.pool)
    .await?;
    let phc = row
        .as_ref()
        .map(|r| r.2.clone())
        .unwrap_or_else(|| DUMMY_HASH.clone());
    let password = b.password;
    let ok = tokio::task::spawn_blocking(move || crate::password::verify_password(&password, &phc))
        .await
        .map_err(|e| ApiError::internal("password check task failed", e))?;
    match row {
        Some((agent_id, customer_id, _, permission)) if ok => {
            let perm = if permission == "admin" {
                Permission::Admin
            } else {
                Permission::Agent
            };
            Ok(Json(
                json!({"token": s.keys.issue(agent_id, customer_id, perm)}),
            ))
        }
        _ => {
            s.keys.login_failed(&b.username);
            Err(ApiError::unauthenticated().into())
        }
    }
}

/// Runs `cmd` on the caller's own customer.
async fn customer_cmd(
    s: &CmdState,
    c: &CustomerCaller,
    cmd: CustomerCommand,
) -> Result<Customer, CmdError> {
    let acting = acting(&c.caller, c.customer_id);
    Ok(s.app
        .update::<Customer>(&acting, c.customer_id.as_uuid(), cmd)
        .await?)
}

/// `PUT /v1.0/customer` body.
#[derive(Deserialize)]
pub struct UpdateCustomer {
    webhook_uri: String,
    #[serde(default)]
    webhook_method: WebhookMethod,
}

/// Validated webhook settings.
#[derive(Debug)]
pub struct WebhookSettings {
    /// Empty or an absolute http(s) URL.
    pub webhook_uri: String,
    /// Webhook method.
    pub webhook_method: WebhookMethod,
}

impl UpdateCustomer {
    /// The handler's checks, without I/O.
    pub fn validate(self) -> Result<WebhookSettings, ApiError> {
        check_webhook_uri(&self.webhook_uri)?;
        Ok(WebhookSettings {
            webhook_uri: self.webhook_uri,
            webhook_method: self.webhook_method,
        })
    }
}

/// `PUT /v1.0/customer`: webhook settings.
pub async fn update_customer(
    State(s): State<Arc<CmdState>>,
    CustomerAdmin(c): CustomerAdmin,
    Json(b): Json<UpdateCustomer>,
) -> ApiResult {
    let b = b.validate()?;
    let cmd = CustomerCommand::Update {
        webhook_uri: b.webhook_uri,
        webhook_method: b.webhook_method,
        at: Utc::now(),
    };
    Ok(Json(customer_cmd(&s, &c, cmd).await?.view()))
}

/// `POST /v1.0/customer/webhook_secret/rotate`: a new secret; the old one stays in use for the
/// grace period.
pub async fn rotate_webhook_secret(
    State(s): State<Arc<CmdState>>,
    CustomerAdmin(c): CustomerAdmin,
) -> ApiResult {
    let cmd = CustomerCommand::RotateWebhookSecret {
        webhook_secret: auth::random_token(32),
        grace: Duration::hours(WEBHOOK_SECRET_GRACE_HOURS),
        at: Utc::now(),
    };
    let state = customer_cmd(&s, &c, cmd).await?;
    let mut v = state.view();
    v["webhook_secret"] = json!(state.webhook_secret);
    v["previous_webhook_secret_valid_until"] = json!(state.previous_webhook_secret.map(|p| p.1));
    Ok(Json(v))
}

/// `POST /v1.0/accesskeys` body.
#[derive(Deserialize)]
pub struct CreateAccessKey {
    #[serde(default)]
    name: String,
    expire_sec: Option<i64>,
}

/// Longest access key lifetime: ten years.
pub const MAX_EXPIRE_SEC: i64 = 10 * 365 * 24 * 3600;

/// A validated `POST /v1.0/accesskeys` body.
#[derive(Debug)]
pub struct ValidAccessKey {
    /// Label, at most 200 characters.
    pub name: String,
    /// Lifetime, 60 to [`MAX_EXPIRE_SEC`]; none for a key that does not expire.
    pub expire_sec: Option<i64>,
}

impl CreateAccessKey {
    /// The handler's checks, without I/O.
    pub fn validate(self) -> Result<ValidAccessKey, ApiError> {
        check_len("name", &self.name, 0, 200)?;
        if let Some(e) = self.expire_sec {
            if !(60..=MAX_EXPIRE_SEC).contains(&e) {
                return Err(ApiError::invalid(format!(
                    "expire_sec must be 60 to {MAX_EXPIRE_SEC}"
                )));
            }
        }
        Ok(ValidAccessKey {
            name: self.name,
            expire_sec: self.expire_sec,
        })
    }
}

/// `POST /v1.0/accesskeys`: returns the token once; only its hash is kept.
pub async fn create_access_key(
    State(s): State<Arc<CmdState>>,
    CustomerAdmin(c): CustomerAdmin,
    Json(b): Json<CreateAccessKey>,
) -> ApiResult {
    let b = b.validate()?;
    let token = auth::new_access_key();
    let key_id = AccessKeyId(vbin_app::new_id());
    let now = Utc::now();
    let cmd = CustomerCommand::CreateAccessKey {
        key_id,
        name: b.name,
        token_hash: auth::hash_access_key(&token),
        token_prefix: token[..10].to_string(),
        expire_at: b.expire_sec.map(|e| now + Duration::seconds(e)),
        at: now,
    };
    let state = customer_cmd(&s, &c, cmd).await?;
    let mut v = state.access_key_view(&state.access_keys[&key_id]);
    v["token"] = json!(token);
    Ok(Json(v))
}

/// `DELETE /v1.0/accesskeys/{id}`: revoke.
pub async fn delete_access_key(
    State(s): State<Arc<CmdState>>,
    CustomerAdmin(c): CustomerAdmin,
    Path(id): Path<Uuid>,
) -> ApiResult {
    let key_id = AccessKeyId(id);
    let cmd = CustomerCommand::DeleteAccessKey {
        key_id,
        at: Utc::now(),
    };
    let state = customer_cmd(&s, &c, cmd).await?;
    s.keys.revoke(id);
    Ok(Json(state.access_key_view(&state.access_keys[&key_id])))
}

/// `POST /v1.0/agents` body.
#[derive(Deserialize)]
pub struct CreateAgent {
    username: String,
    password: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    permission: Permission,
    /// Where a queue dials it.
    #[serde(default)]
    addresses: Option<Vec<TelAddress>>,
}

/// A validated `POST /v1.0/agents` body.
#[derive(Debug)]
pub struct ValidAgent {
    /// Login name.
    pub username: String,
    /// 8 to 256 characters.
    pub password: String,
    /// Display name (the username if none was given).
    pub name: String,
    /// Permission.
    pub permission: Permission,
    /// Where a queue dials it (unchanged if absent).
    pub addresses: Option<Vec<TelAddress>>,
}

/// At most [`MAX_AGENT_ADDRESSES`] numbers.
fn check_addresses(a: &Option<Vec<TelAddress>>) -> Result<(), ApiError> {
    if a.as_ref().is_some_and(|a| a.len() > MAX_AGENT_ADDRESSES) {
        return Err(ApiError::invalid(format!(
            "addresses must hold at most {MAX_AGENT_ADDRESSES} numbers"
        )));
    }
    Ok(())
}

impl CreateAgent {
    /// The handler's checks, without I/O.
    pub fn validate(self) -> Result<ValidAgent, ApiError> {
        check_username(&self.username)?;
        check_len("name", &self.name, 0, 200)?;
        check_password(&self.password)?;
        check_addresses(&self.addresses)?;
        Ok(ValidAgent {
            name: if self.name.is_empty() {
                self.username.clone()
            } else {
                self.name
            },
            username: self.username,
            password: self.password,
            permission: self.permission,
            addresses: self.addresses,
        })
    }
}

/// `POST /v1.0/agents`.
pub async fn create_agent(
    State(s): State<Arc<CmdState>>,
    CustomerAdmin(c): CustomerAdmin,
    Json(b): Json<CreateAgent>,
) -> ApiResult {
    let b = b.validate()?;
    let agent_id = AgentId(vbin_app::new_id());
    let agent = NewAgent {
        agent_id,
        name: b.name,
        username: b.username,
        password_hash: hash_password(b.password).await?,
        permission: b.permission,
    };
    let state = customer_cmd(
        &s,
        &c,
        CustomerCommand::CreateAgent {
            agent,
            at: Utc::now(),
        },
    )
    .await?;
    let state = set_addresses(&s, &c, agent_id, b.addresses, state).await?;
    Ok(Json(state.agent_view(&state.agents[&agent_id])))
}

/// Sets the agent's addresses if the request gave them; the customer after.
async fn set_addresses(
    s: &CmdState,
    c: &CustomerCaller,
    agent_id: AgentId,
    addresses: Option<Vec<TelAddress>>,
    state: Customer,
) -> Result<Customer, CmdError> {
    let Some(addresses) = addresses else {
        return Ok(state);
    };
    let cmd = CustomerCommand::SetAgentAddresses {
        agent_id,
        addresses,
        at: Utc::now(),
    };
    customer_cmd(s, c, cmd).await
}

/// `PUT /v1.0/agents/{id}` body.
#[derive(Deserialize)]
pub struct UpdateAgent {
    name: String,
    permission: Permission,
    /// Where a queue dials it (unchanged if absent).
    #[serde(default)]
    addresses: Option<Vec<TelAddress>>,
}

/// A validated `PUT /v1.0/agents/{id}` body.
#[derive(Debug)]
pub struct ValidAgentUpdate {
    /// Display name, 1 to 200 characters.
    pub name: String,
    /// Permission.
    pub permission: Permission,
    /// Where a queue dials it (unchanged if absent).
    pub addresses: Option<Vec<TelAddress>>,
}

impl UpdateAgent {
    /// The handler's checks, without I/O.
    pub fn validate(self) -> Result<ValidAgentUpdate, ApiError> {
        check_len("name", &self.name, 1, 200)?;
        check_addresses(&self.addresses)?;
        Ok(ValidAgentUpdate {
            name: self.name,
            permission: self.permission,
            addresses: self.addresses,
        })
    }
}

/// `PUT /v1.0/agents/{id}`.
pub async fn update_agent(
    State(s): State<Arc<CmdState>>,
    CustomerAdmin(c): CustomerAdmin,
    Path(id): Path<Uuid>,
    Json(b): Json<UpdateAgent>,
) -> ApiResult {
    let b = b.validate()?;
    let agent_id = AgentId(id);
    let cmd = CustomerCommand::UpdateAgent {
        agent_id,
        name: b.name,
        permission: b.permission,
        at: Utc::now(),
    };
    let state = customer_cmd(&s, &c, cmd).await?;
    let state = set_addresses(&s, &c, agent_id, b.addresses, state).await?;
    s.keys.revoke(id);
    Ok(Json(state.agent_view(&state.agents[&agent_id])))
}

/// `DELETE /v1.0/agents/{id}`.
pub async fn delete_agent(
    State(s): State<Arc<CmdState>>,
    CustomerAdmin(c): CustomerAdmin,
    Path(id): Path<Uuid>,
) -> ApiResult {
    let agent_id = AgentId(id);
    let state = customer_cmd(
        &s,
        &c,
        CustomerCommand::DeleteAgent {
            agent_id,
            at: Utc::now(),
        },
    )
    .await?;
    s.keys.revoke(id);
    Ok(Json(state.agent_view(&state.agents[&agent_id])))
}

/// `PUT /v1.0/agents/{id}/status` body.
#[derive(Deserialize)]
pub struct AgentStatusBody {
    /// The new status.
    pub status: AgentStatus,
}

/// `PUT /v1.0/agents/{id}/status`: an agent may set its own; an admin anyone's.
pub async fn set_agent_status(
    State(s): State<Arc<CmdState>>,
    Tenant { caller: c, acting }: Tenant,
    Path(id): Path<Uuid>,
    Json(b): Json<AgentStatusBody>,
) -> ApiResult {
    let own = c.caller.actor() == Actor::Agent(id);
    if !own && c.permission != Permission::Admin {
        return Err(ApiError::forbidden("agents may only set their own status").into());
    }
    let agent_id = AgentId(id);
    let cmd = CustomerCommand::SetAgentStatus {
        agent_id,
        status: b.status,
        at: Utc::now(),
    };
    let state = s
        .app
        .update::<Customer>(&acting, c.customer_id.as_uuid(), cmd)
        .await?;
    Ok(Json(state.agent_view(&state.agents[&agent_id])))
}
