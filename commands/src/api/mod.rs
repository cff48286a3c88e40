//! The command REST API (axum), per API.md: each handler checks its body, builds the command
//! and runs it through the application layer ([`vbin_app::App`]); the view of the resulting
//! state is the answer.

pub mod ais;
pub mod billing;
pub mod calls;
pub mod campaigns;
pub mod conferences;
pub mod error;
pub mod flows;
pub mod identity;
pub mod numbers;
pub mod queues;
pub mod state;
pub mod transcribes;
pub mod trunks;

pub use state::{acting, CmdState, Tenant};

use axum::routing::{post, put};
use axum::Router;
use vbin_http::HttpState;

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
        .route(
            "/v1.0/calls/{id}/recording_start",
            post(calls::start_recording),
        )
        .route(
            "/v1.0/calls/{id}/recording_stop",
            post(calls::stop_recording),
        )
        .route("/v1.0/numbers", post(numbers::create_number))
        .route(
            "/v1.0/numbers/{id}",
            put(numbers::update_number).delete(numbers::delete_number),
        )
        .route(
            "/v1.0/sandbox/incoming_calls",
            post(numbers::sandbox_incoming_call),
        )
        .route("/v1.0/flows", post(flows::create_flow))
        .route(
            "/v1.0/flows/{id}",
            put(flows::update_flow).delete(flows::delete_flow),
        )
        .route("/v1.0/activeflows/{id}/stop", post(flows::stop_activeflow))
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
        .route("/v1.0/conferences", post(conferences::create_conference))
        .route(
            "/v1.0/conferences/{id}/stop",
            post(conferences::stop_conference),
        )
        .route(
            "/v1.0/conferences/{id}/recording_start",
            post(conferences::start_recording),
        )
        .route(
            "/v1.0/conferences/{id}/recording_stop",
            post(conferences::stop_recording),
        )
        .route("/v1.0/queues", post(queues::create_queue))
        .route("/v1.0/queues/{id}", put(queues::update_queue))
        .route("/v1.0/queues/{id}/calls", post(queues::join_queue))
        .route("/v1.0/ais", post(ais::create_ai))
        .route("/v1.0/ais/{id}", put(ais::update_ai).delete(ais::delete_ai))
        .route("/v1.0/trunks", post(trunks::create_trunk))
        .route(
            "/v1.0/trunks/{id}",
            put(trunks::update_trunk).delete(trunks::delete_trunk),
        )
        .route("/v1.0/aicalls", post(ais::create_aicall))
        .route("/v1.0/aicalls/{id}/stop", post(ais::stop_aicall))
        .route("/v1.0/transcribes", post(transcribes::create_transcribe))
        .route(
            "/v1.0/transcribes/{id}/stop",
            post(transcribes::stop_transcribe),
        )
        .with_state(std::sync::Arc::new(state))
}
