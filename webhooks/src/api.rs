//! The deliveries API: list a customer's webhook deliveries with their attempts, retry one,
//! and recover every failed delivery since a time. Customer admins only (webhook settings
//! are theirs).

use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;
use vbin_http::extract::{CustomerAdmin, Json, Path, Query};
use vbin_http::ApiError;
use vbin_http::HttpState;
use vbin_read_api::{page_body, Page};

/// The routes (merged into the command API's listener).
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/v1.0/webhook_deliveries", get(list))
        .route("/v1.0/webhook_deliveries/{id}/retry", post(retry))
        .route("/v1.0/webhook_deliveries/recover", post(recover))
}

fn db(e: sqlx::Error) -> ApiError {
    ApiError::unavailable("webhook deliveries", e)
}

/// `?status=&event_id=`.
#[derive(Deserialize)]
pub struct Filter {
    status: Option<String>,
    event_id: Option<String>,
}

const VIEW: &str = "SELECT d.id::text, json_build_object( \
      'id', d.id, 'type', 'webhook_delivery', 'event_id', d.event_id, 'event_type', d.event_type, \
      'resource_type', d.resource_type, 'resource_id', d.resource_id, 'uri', d.uri, 'method', d.method, 'status', d.status, \
      'attempts', d.attempts, \
      'next_attempt_at', CASE WHEN d.status = 'pending' THEN d.next_attempt_at END, \
      'last_status_code', d.last_status_code, 'last_error', d.last_error, \
      'tm_create', d.created_at, 'tm_update', d.updated_at, \
      'attempt_log', COALESCE((SELECT json_agg(json_build_object('attempt', a.attempt, 'at', a.at, \
            'status_code', a.status_code, 'latency_ms', a.latency_ms, 'error', a.error) ORDER BY a.attempt) \
          FROM webhook_attempts a WHERE a.delivery_id = d.id), '[]'::json))::jsonb \
    FROM webhook_deliveries d";

/// `GET /v1.0/webhook_deliveries?status=&event_id=`: newest first, with every attempt.
async fn list(
    State(s): State<HttpState>,
    CustomerAdmin(c): CustomerAdmin,
    Query(p): Query<Page>,
    Query(f): Query<Filter>,
) -> Result<axum::Json<Value>, ApiError> {
    let size = p.size()?;
    let before: Option<Uuid> = p.token()?;
    let status = f.status.filter(|s| !s.is_empty());
    if let Some(st) = &status {
        if !matches!(st.as_str(), "pending" | "delivered" | "failed") {
            return Err(ApiError::invalid(
                "status must be pending, delivered or failed",
            ));
        }
    }
    let event_id = match f.event_id.as_deref().filter(|e| !e.is_empty()) {
        Some(e) => Some(
            e.parse::<Uuid>()
                .map_err(|_| ApiError::invalid("event_id must be a UUID"))?,
        ),
        None => None,
    };
    let sql = format!(
        "{VIEW} WHERE d.customer_id = $1 AND ($2::text IS NULL OR d.status = $2) \
         AND ($3::uuid IS NULL OR d.event_id = $3) AND d.id < $4 \
         ORDER BY d.id DESC LIMIT $5"
    );
    let rows: Vec<(String, Value)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(c.customer_id.as_uuid())
        .bind(status)
        .bind(event_id)
        .bind(before.unwrap_or(vbin_read_api::FIRST_PAGE_DESC))
        .bind(size + 1)
        .fetch_all(&s.pool)
        .await
        .map_err(db)?;
    Ok(page_body(rows, size))
}

async fn one(s: &HttpState, customer: Uuid, id: Uuid) -> Result<Value, ApiError> {
    let sql = format!("{VIEW} WHERE d.customer_id = $1 AND d.id = $2");
    let row: Option<(String, Value)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(customer)
        .bind(id)
        .fetch_optional(&s.pool)
        .await
        .map_err(db)?;
    row.map(|r| r.1)
        .ok_or_else(|| ApiError::not_found("webhook delivery"))
}

/// `POST /v1.0/webhook_deliveries/{id}/retry`: a failed or delivered delivery is sent again
/// (one more attempt; it keeps its place in its resource's order). 409 while pending.
async fn retry(
    State(s): State<HttpState>,
    CustomerAdmin(c): CustomerAdmin,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, ApiError> {
    let customer = c.customer_id.as_uuid();
    let done = sqlx::query(
        "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now(), updated_at = now() \
         WHERE customer_id = $1 AND id = $2 AND status <> 'pending'",
    )
    .bind(customer)
    .bind(id)
    .execute(&s.pool)
    .await
    .map_err(db)?;
    let view = one(&s, customer, id).await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::conflict("the delivery is pending already"));
    }
    Ok(Json(view))
}

/// `POST /v1.0/webhook_deliveries/recover` body.
#[derive(Deserialize)]
pub struct Recover {
    since: DateTime<Utc>,
}

/// `POST /v1.0/webhook_deliveries/recover {"since"}`: every failed delivery created since then
/// is sent again -> `{"recovered": n}`.
async fn recover(
    State(s): State<HttpState>,
    CustomerAdmin(c): CustomerAdmin,
    Json(b): Json<Recover>,
) -> Result<Json<Value>, ApiError> {
    let done = sqlx::query(
        "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now(), updated_at = now() \
         WHERE customer_id = $1 AND status = 'failed' AND created_at >= $2",
    )
    .bind(c.customer_id.as_uuid())
    .bind(b.since)
    .execute(&s.pool)
    .await
    .map_err(db)?;
    Ok(Json(json!({ "recovered": done.rows_affected() })))
}
