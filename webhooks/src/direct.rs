//! Requests sent to a customer's server now, signed like its webhooks: the flow's
//! `webhook_send` action and the assistant's `webhook_send` tool. The URL passes the SSRF
//! guard (at parse time and again at each DNS answer), the body is signed with the customer's
//! webhook secret(s) ([`signed_headers`]) and the answer must be 2xx. Nothing is recorded as a
//! delivery or retried: the sender decides what a failure means.

use crate::guard::{AddressPolicy, GuardedResolver};
use crate::signing::{signed_headers, Secrets};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use vbin_event_schema::CustomerId;

/// One request.
#[derive(Clone, Debug)]
pub struct DirectRequest<'a> {
    /// Whose secret signs it.
    pub customer: CustomerId,
    /// Where it goes.
    pub url: &'a str,
    /// GET (no body), POST or PUT.
    pub method: reqwest::Method,
    /// `content-type`, if any.
    pub content_type: Option<&'a str>,
    /// `webhook-id`: names this request (receivers deduplicate on it).
    pub id: &'a str,
    /// The event type signed into the seed's headers.
    pub event_type: &'a str,
    /// What is sent (and signed).
    pub body: Vec<u8>,
}

/// Why a request did not get a 2xx answer.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    /// The URL does not parse.
    #[error("bad uri: {0}")]
    BadUrl(String),
    /// The SSRF guard refuses it.
    #[error("{0}")]
    Refused(String),
    /// The customer's secret could not be read.
    #[error("reading the webhook secret: {0}")]
    Secret(#[from] sqlx::Error),
    /// No answer (connection, timeout, a refused address at DNS time).
    #[error("request failed: {0}")]
    Request(String),
    /// An answer other than 2xx.
    #[error("answered {0}")]
    Status(reqwest::StatusCode),
}

/// Sends [`DirectRequest`]s (cheap to clone).
#[derive(Clone)]
pub struct Direct {
    pool: PgPool,
    http: reqwest::Client,
    policy: Arc<AddressPolicy>,
}

impl Direct {
    /// A sender under `policy` (the webhooks' SSRF guard), each request bounded by `timeout`.
    pub fn new(pool: PgPool, policy: AddressPolicy, timeout: Duration, user_agent: &str) -> Self {
        let policy = Arc::new(policy);
        let http = vbin_netguard::tls::client_builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver::new(policy.clone())))
            .user_agent(user_agent)
            .build()
            .expect("a reqwest client builds");
        Self { pool, http, policy }
    }

    /// Sends `r`; the 2xx answer (its body still to read).
    pub async fn send(&self, r: DirectRequest<'_>) -> Result<reqwest::Response, DirectError> {
        let url = reqwest::Url::parse(r.url).map_err(|e| DirectError::BadUrl(e.to_string()))?;
        self.policy
            .check_url(&url)
            .map_err(|b| DirectError::Refused(b.to_string()))?;
        let secrets: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT secret, CASE WHEN previous_valid_until > now() THEN previous_secret END \
             FROM webhook_secrets WHERE customer_id = $1",
        )
        .bind(r.customer.as_uuid())
        .fetch_optional(&self.pool)
        .await?;
        let (current, previous) = secrets.unwrap_or_default();
        let headers = signed_headers(
            &Secrets {
                current: &current,
                previous: previous.as_deref(),
            },
            r.id,
            r.event_type,
            chrono::Utc::now().timestamp(),
            &r.body,
        );
        let get = r.method == reqwest::Method::GET;
        let mut req = self.http.request(r.method, url);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        if let Some(t) = r.content_type {
            req = req.header("content-type", t);
        }
        if !get {
            req = req.body(r.body);
        }
        // The guard's refusals surface as connect errors; the chain says which.
        let resp = req
            .send()
            .await
            .map_err(|e| DirectError::Request(vbin_bus::Chain(&e).to_string()))?;
        if !resp.status().is_success() {
            return Err(DirectError::Status(resp.status()));
        }
        Ok(resp)
    }
}
