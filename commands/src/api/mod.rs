//! The command REST API (axum), per API.md: each handler checks its body, builds the command
//! and runs it through the application layer ([`vbin_app::App`]); the view of the resulting
//! state is the answer.

pub mod billing;
pub mod calls;
pub mod campaigns;
pub mod error;
pub mod identity;
pub mod queues;
pub mod transcribes;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::routing::{post, put};
use axum::Router;
use vbin_app::{Acting, App};
use vbin_event_schema::CustomerId;
use vbin_http::auth::{AuthKeys, Caller};
use vbin_http::extract::CustomerCaller;
use vbin_http::{ApiError, HttpState};

/// What the command handlers share: the application and the authentication keys (logins
/// issue tokens; deleting an agent or key revokes cached ones).
#[derive(Clone)]
pub struct CmdState {
    /// The use cases.
    pub app: App,
    /// Authentication keys.
    pub keys: AuthKeys,
}

/// The command metadata of the current request for `caller` acting on `customer`.
pub fn acting(caller: &Caller, customer: CustomerId) -> Acting {
    Acting::request(&caller.actor(), &vbin_http::error::request_id(), customer)
}

/// A customer's command request: the caller, and what its commands act as.
pub struct Tenant {
    /// The authenticated customer identity.
    pub caller: CustomerCaller,
    /// Tenant and metadata for the commands.
    pub acting: Acting,
}

impl<S: Send + Sync> FromRequestParts<S> for Tenant {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, s: &S) -> Result<Self, ApiError> {
        let caller = CustomerCaller::from_request_parts(parts, s).await?;
        let acting = acting(&caller.caller, caller.customer_id);
        Ok(Tenant { caller, acting })
    }
}

/// The command API routes, with their state (merged under [`vbin_http::with_layers`]).
pub fn routes(state: CmdState) -> Router<HttpState> {
    Router::new()
        .route("/auth/login", post(identity::login))
        .route("/v1.0/customers", post(identity::create_customer))
        .route(
            "/v1.0/customers/{id}/balance_add",
            post(billing::balance_add),
        )
        .route(
            "/v1.0/customers/{id}/billing_account",
            put(billing::set_rate),
        )
        .route("/v1.0/customer", put(identity::update_customer))
        .route(
            "/v1.0/customer/webhook_secret/rotate",
            post(identity::rotate_webhook_secret),
        )
        .route("/v1.0/accesskeys", post(identity::create_access_key))
        .route(
            "/v1.0/accesskeys/{id}",
            axum::routing::delete(identity::delete_access_key),
        )
        .route("/v1.0/agents", post(identity::create_agent))
        .route(
            "/v1.0/agents/{id}",
            put(identity::update_agent).delete(identity::delete_agent),
        )
        .route("/v1.0/agents/{id}/status", put(identity::set_agent_status))
        .route("/v1.0/calls", post(calls::create_calls))
        .route("/v1.0/calls/{id}/hangup", post(calls::hangup_call))
        .route("/v1.0/outplans", post(campaigns::create_outplan))
        .route("/v1.0/outdials", post(campaigns::create_outdial))
        .route(
            "/v1.0/outdials/{id}/targets",
            post(campaigns::create_target),
        )
        .route("/v1.0/campaigns", post(campaigns::create_campaign))
        .route(
            "/v1.0/campaigns/{id}/status",
            put(campaigns::set_campaign_status),
        )
        .route("/v1.0/queues", post(queues::create_queue))
        .route("/v1.0/queues/{id}", put(queues::update_queue))
        .route("/v1.0/queues/{id}/calls", post(queues::join_queue))
        .route("/v1.0/transcribes", post(transcribes::create_transcribe))
        .route(
            "/v1.0/transcribes/{id}/stop",
            post(transcribes::stop_transcribe),
        )
        .with_state(state)
}
