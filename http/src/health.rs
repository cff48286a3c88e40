//! `/healthz` (process up), `/readyz` (Postgres, NATS, Redis reachable), `/metrics`, and
//! `/openapi.json` (the API description, [`crate::openapi`]).

use crate::state::HttpState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::time::Duration;

/// The health routes.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(crate::openapi::spec))
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    let t = Duration::from_secs(2);
    let pg = tokio::time::timeout(t, sqlx::query("SELECT 1").execute(&s.pool))
        .await
        .map(|r| r.is_ok())
        .unwrap_or(false);
    let nats = s.bus.is_connected();
    let redis = match &s.redis {
        None => true,
        Some(c) => tokio::time::timeout(t, async {
            let mut conn = c.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        })
        .await
        .map(|r| r.is_ok())
        .unwrap_or(false),
    };
    let ok = pg && nats && redis;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"ready": ok, "postgres": pg, "nats": nats, "redis": redis})),
    )
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    let body = s.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    ([("content-type", "text/plain; version=0.0.4")], body)
}
