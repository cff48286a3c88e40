//! Authentication: JWTs (HS256), access keys (`vb_` tokens stored as
//! SHA-256), the platform admin token, and resolving a request's bearer to a [`Caller`].

use base64::Engine;
use chrono::{DateTime, Utc};
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;
use vbin_event_schema::{CustomerEvent, CustomerId, Permission};
pub use vbin_eventlog::Actor;

/// Prefix of every access key token.
pub const ACCESS_KEY_PREFIX: &str = "vb_";
/// JWT lifetime.
pub const JWT_TTL_SECS: i64 = 24 * 3600;

/// Who is calling, once authenticated.
#[derive(Clone, Debug, PartialEq)]
pub enum Caller {
    /// The platform admin.
    Admin,
    /// A customer's agent or access key.
    Customer {
        /// Tenant.
        customer_id: CustomerId,
        /// Agent or access key.
        actor: Actor,
        /// Permission (access keys act with admin permission for their customer).
        permission: Permission,
    },
}

impl Caller {
    /// The actor for command metadata.
    pub fn actor(&self) -> Actor {
        match self {
            Caller::Admin => Actor::Admin,
            Caller::Customer { actor, .. } => actor.clone(),
        }
    }

    /// The tenant, if a customer.
    pub fn customer_id(&self) -> Option<CustomerId> {
        match self {
            Caller::Admin => None,
            Caller::Customer { customer_id, .. } => Some(*customer_id),
        }
    }
}

/// JWT claims.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// Agent id.
    pub sub: Uuid,
    /// Tenant.
    pub customer_id: Uuid,
    /// `admin` or `agent`.
    pub permission: Permission,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Expiry (unix seconds).
    pub exp: i64,
}

/// Keys and secrets for authentication, and a short-lived cache of resolved bearers.
///
/// A resolved token is trusted for [`AUTH_CACHE_TTL`] without asking Postgres again, except
/// that deleting or changing an agent or revoking a key marks its id revoked at once in this
/// process (and, through the event stream, in the others: see [`AuthKeys::revoke`]), which
/// forces a fresh lookup.
#[derive(Clone)]
pub struct AuthKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    admin_token_hash: [u8; 32],
    resolved: moka::sync::Cache<String, (Caller, Option<DateTime<Utc>>)>,
    revoked: moka::sync::Cache<Uuid, ()>,
    /// Failed logins per username in the current window (see [`MAX_LOGIN_FAILURES`]).
    login_failures: moka::sync::Cache<String, std::sync::Arc<std::sync::atomic::AtomicU32>>,
}

/// Failed logins of one username allowed per [`LOGIN_WINDOW`] (per process); then `/auth/login`
/// answers 429 for that username until the window, which starts at the first failure, ends.
pub const MAX_LOGIN_FAILURES: u32 = 10;
/// The login failure window.
pub const LOGIN_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// How long a resolved bearer is trusted without a lookup.
pub const AUTH_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(10);

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Lowercase hex SHA-256 of an access key token (what is stored).
pub fn hash_access_key(token: &str) -> String {
    hex::encode(sha256(token.as_bytes()))
}

/// `n` random bytes as URL-safe base64 without padding.
pub fn random_token(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::fill(&mut bytes[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A new access key token: `vb_` + 43 characters of 256-bit randomness.
pub fn new_access_key() -> String {
    format!("{ACCESS_KEY_PREFIX}{}", random_token(32))
}

impl AuthKeys {
    /// Keys from the JWT secret and the admin token.
    pub fn new(jwt_secret: &str, admin_token: &str) -> Self {
        Self {
            encoding: EncodingKey::from_secret(jwt_secret.as_bytes()),
            decoding: DecodingKey::from_secret(jwt_secret.as_bytes()),
            admin_token_hash: sha256(admin_token.as_bytes()),
            resolved: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(AUTH_CACHE_TTL)
                .build(),
            // Longer than the positive TTL, so no cached entry outlives its revocation.
            revoked: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(AUTH_CACHE_TTL * 6)
                .build(),
            login_failures: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(LOGIN_WINDOW)
                .build(),
        }
    }

    /// Whether `username` has used up its failed logins for now (password guessing).
    pub fn login_blocked(&self, username: &str) -> bool {
        self.login_failures
            .get(&username.to_lowercase())
            .is_some_and(|n| n.load(std::sync::atomic::Ordering::Relaxed) >= MAX_LOGIN_FAILURES)
    }

    /// Counts a failed login of `username`.
    pub fn login_failed(&self, username: &str) {
        self.login_failures
            .get_with(username.to_lowercase(), Default::default)
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Stops trusting cached bearers of this agent or access key (deleted, revoked or changed).
    pub fn revoke(&self, actor_id: Uuid) {
        self.revoked.insert(actor_id, ());
    }

    fn actor_id(caller: &Caller) -> Option<Uuid> {
        match caller.actor() {
            Actor::Agent(id) | Actor::AccessKey(id) => Some(id),
            _ => None,
        }
    }

    /// Issues a JWT for an agent.
    pub fn issue(&self, agent_id: Uuid, customer_id: Uuid, permission: Permission) -> String {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: agent_id,
            customer_id,
            permission,
            iat: now,
            exp: now + JWT_TTL_SECS,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 encoding with a valid key cannot fail")
    }

    /// Verifies a JWT (HS256 only: `alg: none` and other algorithms are refused).
    pub fn verify(&self, token: &str) -> Option<Claims> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 5;
        decode::<Claims>(token, &self.decoding, &v)
            .ok()
            .map(|d| d.claims)
    }

    /// Compares with the admin token (hashes first, so the comparison time leaks nothing).
    pub fn is_admin_token(&self, token: &str) -> bool {
        let h = sha256(token.as_bytes());
        h.iter()
            .zip(self.admin_token_hash.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// Resolves a bearer token to a caller, checking that the agent or key still exists
    /// (deleted agents' JWTs and revoked or expired keys stop working at once).
    pub async fn resolve(&self, pool: &PgPool, token: &str) -> Result<Option<Caller>, sqlx::Error> {
        Ok(self.resolve_with_expiry(pool, token).await?.map(|f| f.0))
    }

    /// [`AuthKeys::resolve`], with when the token expires (`None`: never, as for the admin
    /// token and keys without expiry). Long-lived connections close at that time.
    pub async fn resolve_with_expiry(
        &self,
        pool: &PgPool,
        token: &str,
    ) -> Result<Option<(Caller, Option<DateTime<Utc>>)>, sqlx::Error> {
        if self.is_admin_token(token) {
            return Ok(Some((Caller::Admin, None)));
        }
        if let Some((caller, expire_at)) = self.resolved.get(token) {
            let live = expire_at.is_none_or(|e| e > Utc::now());
            let revoked = Self::actor_id(&caller).is_some_and(|id| self.revoked.contains_key(&id));
            if live && !revoked {
                return Ok(Some((caller, expire_at)));
            }
            self.resolved.invalidate(token);
        }
        let found = self.lookup(pool, token).await?;
        if let Some((caller, expire_at)) = &found {
            self.resolved
                .insert(token.to_string(), (caller.clone(), *expire_at));
        }
        Ok(found)
    }

    async fn lookup(
        &self,
        pool: &PgPool,
        token: &str,
    ) -> Result<Option<(Caller, Option<DateTime<Utc>>)>, sqlx::Error> {
        if token.starts_with(ACCESS_KEY_PREFIX) {
            let row: Option<(Uuid, Uuid, Option<DateTime<Utc>>)> = sqlx::query_as(
                "SELECT key_id, customer_id, expire_at FROM auth_access_keys WHERE token_hash = $1",
            )
            .bind(hash_access_key(token))
            .fetch_optional(pool)
            .await?;
            return Ok(row.and_then(|(key_id, customer_id, expire_at)| {
                let caller = Caller::Customer {
                    customer_id: CustomerId(customer_id),
                    actor: Actor::AccessKey(key_id),
                    permission: Permission::Admin,
                };
                (expire_at.is_none_or(|e| e > Utc::now())).then_some((caller, expire_at))
            }));
        }
        let Some(claims) = self.verify(token) else {
            return Ok(None);
        };
        let row: Option<(Uuid, String)> =
            sqlx::query_as("SELECT customer_id, permission FROM auth_agents WHERE agent_id = $1")
                .bind(claims.sub)
                .fetch_optional(pool)
                .await?;
        Ok(row
            .filter(|(customer_id, _)| *customer_id == claims.customer_id)
            .map(|(customer_id, permission)| {
                let caller = Caller::Customer {
                    customer_id: CustomerId(customer_id),
                    actor: Actor::Agent(claims.sub),
                    permission: if permission == "admin" {
                        Permission::Admin
                    } else {
                        Permission::Agent
                    },
                };
                let exp = DateTime::<Utc>::from_timestamp(claims.exp, 0);
                (caller, exp)
            }))
    }
}

/// Returns the platform secret `name`: from `configured` if given, else the one stored in the
/// database, else a new random one stored there (so every process of the platform agrees).
pub async fn platform_secret(
    pool: &PgPool,
    name: &str,
    configured: Option<&str>,
) -> Result<(String, bool), sqlx::Error> {
    if let Some(v) = configured.filter(|v| !v.is_empty()) {
        return Ok((v.to_string(), false));
    }
    let candidate = random_token(32);
    let inserted: Option<String> = sqlx::query_scalar(
        "INSERT INTO platform_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING RETURNING value",
    )
    .bind(name)
    .bind(&candidate)
    .fetch_optional(pool)
    .await?;
    if let Some(v) = inserted {
        return Ok((v, true));
    }
    let v = sqlx::query_scalar("SELECT value FROM platform_secrets WHERE name = $1")
        .bind(name)
        .fetch_one(pool)
        .await?;
    Ok((v, false))
}

/// Customer events that invalidate cached bearers of the agent or key they name.
pub const REVOKING_EVENTS: [&str; 3] = [
    CustomerEvent::AGENT_DELETED,
    CustomerEvent::AGENT_UPDATED,
    CustomerEvent::ACCESSKEY_DELETED,
];

/// Follows customer events on NATS (core subscription: only live events matter, a process that
/// starts has an empty cache) and revokes cached bearers named by [`REVOKING_EVENTS`], so other
/// processes stop trusting a deleted agent or key within the relay's latency. If NATS is down the
/// cache TTL still bounds the staleness.
pub async fn follow_revocations(keys: AuthKeys, bus: vbin_bus::Bus) {
    use futures::StreamExt;
    let subject = bus
        .namespace()
        .subject(&vbin_event_schema::relative_subject_filter(
            CustomerEvent::AGGREGATE,
            "*",
        ));
    loop {
        match bus.client.subscribe(subject.clone()).await {
            Ok(mut sub) => {
                while let Some(msg) = sub.next().await {
                    if bus.foreign_publisher(msg.headers.as_ref()).is_some() {
                        continue;
                    }
                    let Ok(e) =
                        serde_json::from_slice::<vbin_event_schema::PublishedEvent>(&msg.payload)
                    else {
                        continue;
                    };
                    if REVOKING_EVENTS.contains(&e.event_type.as_str()) {
                        if let Some(id) = e.resource_id().and_then(|i| i.parse().ok()) {
                            keys.revoke(id);
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot follow revocations; retrying"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_roundtrip_and_forgeries() {
        let keys = AuthKeys::new("secret-a", "admin");
        let t = keys.issue(Uuid::nil(), Uuid::nil(), Permission::Admin);
        assert!(keys.verify(&t).is_some());
        assert!(AuthKeys::new("secret-b", "admin").verify(&t).is_none());
        // alg: none with the same claims.
        let parts: Vec<&str> = t.split('.').collect();
        let none = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"alg":"none","typ":"JWT"}"#);
        assert!(keys.verify(&format!("{none}.{}.", parts[1])).is_none());
        assert!(keys.is_admin_token("admin") && !keys.is_admin_token("admin2"));
    }

    #[test]
    fn access_keys() {
        let k = new_access_key();
        assert!(k.starts_with("vb_") && k.len() == 46);
        assert_eq!(hash_access_key(&k).len(), 64);
    }
}
