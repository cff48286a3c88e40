//! The command REST API (axum): identity and calls, per API.md.

pub mod billing;
pub mod calls;
pub mod campaigns;
pub mod error;
pub mod extract;
pub mod health;
pub mod identity;
pub mod mw;
pub mod openapi;
pub mod queues;
pub mod reexec;
pub mod transcribes;

use crate::auth::AuthKeys;
use crate::executor::Executor;
use crate::meta::CommandMeta;
use axum::extract::DefaultBodyLimit;
use axum::routing::{post, put};
use axum::{middleware, Router};
use error::ApiError;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use vbin_bus::Bus;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// Postgres.
    pub pool: PgPool,
    /// Command executor.
    pub executor: Executor,
    /// Authentication keys.
    pub keys: AuthKeys,
    /// NATS (for readiness).
    pub bus: Bus,
    /// Redis URL (for readiness).
    pub redis: Option<redis::Client>,
    /// Prometheus registry.
    pub metrics: Option<PrometheusHandle>,
}

impl AppState {
    /// Metadata for a command caused by the current request.
    pub fn meta(
        &self,
        caller: &crate::auth::Caller,
        customer: vbin_event_schema::CustomerId,
    ) -> CommandMeta {
        let mut meta = CommandMeta::from_request(
            &caller.actor(),
            &error::request_id(),
            Some(customer.as_uuid()),
        );
        meta.request_seed = reexec::seed();
        meta
    }
}

/// The command API routes (without the cross-cutting layers; see [`with_layers`]).
pub fn routes() -> Router<AppState> {
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
}

/// Wraps routes with the layers every vbin HTTP surface shares: JSON 404, body limit,
/// idempotency, authentication, request id/metrics (outermost), and the health endpoints.
pub fn with_layers(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .merge(health::routes())
        .fallback(|| async { ApiError::not_found("route") })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            mw::idempotency,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            mw::authenticate,
        ))
        .layer(DefaultBodyLimit::max(mw::MAX_BODY_BYTES))
        .layer(middleware::from_fn(mw::request_context))
        .with_state(state)
}
