//! vbin's HTTP edge, shared by every HTTP surface (command API, query API, webhook deliveries
//! API, WebSocket gateway): the error envelope, extractors that answer with it (NUL refusal,
//! body limit), request context (request id, span, metrics), authentication (token
//! resolution, auth cache, revocations), `Idempotency-Key` replay, and the health, metrics
//! and OpenAPI routes.
//!
//! The only crate that knows axum extractors and middleware; it knows no aggregate.

pub mod auth;
pub mod error;
pub mod extract;
pub mod health;
pub mod mw;
pub mod openapi;
pub mod state;

pub use error::ApiError;
pub use state::{HttpParts, HttpState};

use axum::extract::DefaultBodyLimit;
use axum::{middleware, Router};

/// Wraps routes with the layers every vbin HTTP surface shares: JSON 404, body limit,
/// idempotency, authentication, request id/metrics (outermost), and the health endpoints.
/// Each part's router brings its own state (`Router::with_state`) before it is merged here.
pub fn with_layers(routes: Router<HttpState>, state: HttpState) -> Router {
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
