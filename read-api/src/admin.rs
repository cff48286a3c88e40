//! The operator's reads (admin token only): every customer with its balance, and the
//! platform's state (how far the relay is behind the event log, where each projection is,
//! parked events, webhook deliveries waiting or failed). The web console's operator view shows them.

use crate::page::{page_body, Page, ReadState, FIRST_PAGE_DESC};
use axum::extract::Extension;
use serde_json::{json, Value};
use std::sync::Arc;
use uuid::Uuid;
use vbin_http::extract::{Admin, Query};
use vbin_http::ApiError;

fn db_error(e: sqlx::Error) -> ApiError {
    ApiError::unavailable("reading the platform's state", e)
}

/// A parked event: id, projection, event type, event id, error, when.
type Parked = (
    i64,
    String,
    Option<String>,
    Option<Uuid>,
    String,
    chrono::DateTime<chrono::Utc>,
);

/// `GET /v1.0/customers` (admin): every customer, newest first, each with `balance_micros`.
pub async fn list_customers(
    Extension(s): Extension<Arc<ReadState>>,
    _: Admin,
    Query(p): Query<Page>,
) -> Result<axum::Json<Value>, ApiError> {
    let size = p.size()?;
    let after: Option<Uuid> = p.token()?;
    let rows: Vec<(Uuid, Value, Option<i64>)> = sqlx::query_as(
        "SELECT c.id, c.body, (b.body->>'balance_micros')::bigint FROM rm_customers c \
         LEFT JOIN rm_billing_accounts b ON b.customer_id = c.id \
         WHERE c.id < $1 ORDER BY c.id DESC LIMIT $2",
    )
    .bind(after.unwrap_or(FIRST_PAGE_DESC))
    .bind(size + 1)
    .fetch_all(&s.pool)
    .await
    .map_err(db_error)?;
    Ok(page_body(
        rows.into_iter()
            .map(|(id, mut body, balance)| {
                body["balance_micros"] = json!(balance);
                (id.to_string(), body)
            })
            .collect(),
        size,
    ))
}

/// `GET /v1.0/platform/status` (admin): the event log's head, how far behind it the relay is,
/// each projection's position, parked events (the latest 20), webhook deliveries by status.
pub async fn platform_status(
    Extension(s): Extension<Arc<ReadState>>,
    _: Admin,
) -> Result<axum::Json<Value>, ApiError> {
    let head: i64 = sqlx::query_scalar("SELECT COALESCE(max(global_position), 0) FROM events")
        .fetch_one(&s.pool)
        .await
        .map_err(db_error)?;
    let relays: Vec<(String, i64, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT name, global_position, updated_at FROM log_checkpoints ORDER BY name",
    )
    .fetch_all(&s.pool)
    .await
    .map_err(db_error)?;
    let projections: Vec<(String, i64, i64, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT name, global_position, events_applied, updated_at FROM projection_checkpoints \
         ORDER BY name",
    )
    .fetch_all(&s.pool)
    .await
    .map_err(db_error)?;
    let parked: Vec<Parked> = sqlx::query_as(
        "SELECT id, projection, event_type, event_id, error, created_at \
             FROM projection_dead_letters ORDER BY id DESC LIMIT 20",
    )
    .fetch_all(&s.pool)
    .await
    .map_err(db_error)?;
    let parked_total: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_dead_letters")
        .fetch_one(&s.pool)
        .await
        .map_err(db_error)?;
    let deliveries: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM webhook_deliveries WHERE status <> 'delivered' GROUP BY status",
    )
    .fetch_all(&s.pool)
    .await
    .map_err(db_error)?;
    Ok(axum::Json(json!({
        "log_head": head,
        "relays": relays.into_iter().map(|(name, pos, at)| json!({
            "name": name, "global_position": pos, "behind": (head - pos).max(0), "tm_update": at,
        })).collect::<Vec<_>>(),
        // A projection takes only its aggregates' events, so the log's head minus its position
        // is not its lag: its position and last update are shown as they are (its lag in
        // seconds is the metric `vbin_projection_lag_seconds`).
        "projections": projections.into_iter().map(|(name, pos, applied, at)| json!({
            "name": name, "global_position": pos, "events_applied": applied, "tm_update": at,
        })).collect::<Vec<_>>(),
        "dead_letters": {
            "total": parked_total,
            "latest": parked.into_iter().map(|(id, projection, event_type, event_id, error, at)| json!({
                "id": id, "projection": projection, "event_type": event_type,
                "event_id": event_id, "error": error, "tm_create": at,
            })).collect::<Vec<_>>(),
        },
        "webhook_deliveries": deliveries
            .into_iter()
            .map(|(status, n)| (status, json!(n)))
            .collect::<serde_json::Map<String, Value>>(),
    })))
}
