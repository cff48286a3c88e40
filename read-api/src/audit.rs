//! `GET /v1.0/events?resource_type=&resource_id=`: the audit trail, straight from the event log.
//!
//! Each entry is one event that changed the resource: who did it (`actor` from the event's
//! metadata), when, the aggregate `sequence`, the event `data` (upcast to its current version,
//! secrets redacted, exactly as published) and `before_state`: the resource's API view before
//! the event (the view stored with the resource's previous event; `null` for the first). The
//! view rather than the raw aggregate state, because the Customer aggregate's state holds
//! password hashes and secrets that no API may show.
//!
//! Oldest first, paginated by sequence. A resource with no events for the caller's customer is a
//! 404, whether it does not exist or belongs to someone else.

use crate::page::{page_body, Page, ReadState};
use axum::extract::Extension;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::Row;
use std::sync::Arc;
use uuid::Uuid;
use vbin_event_schema::{
    ActiveflowEvent, AiEvent, AicallEvent, BillingEvent, CallEvent, CampaignEvent, ConferenceEvent,
    CustomerEvent, FlowEvent, NumberEvent, OutdialEvent, OutplanEvent, Permission, QueueEvent,
    RecordingEvent, TargetEvent, TranscribeEvent, TrunkEvent,
};
use vbin_eventlog::log::{published_from_row, EVENT_COLUMNS};
use vbin_http::extract::{CustomerCaller, Query};
use vbin_http::ApiError;

/// Query parameters.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    resource_type: Option<String>,
    resource_id: Option<String>,
    #[serde(flatten)]
    page: Page,
}

/// Where a resource type's events live.
struct Holder {
    /// The aggregate type.
    aggregate_type: &'static str,
    /// Reading the trail needs the customer's admin permission.
    needs_admin: bool,
    /// The aggregate's id is the customer's (one per customer), not the resource's.
    per_customer: bool,
}

/// The resource types with a trail (types of resource views, mapped to aggregate types by
/// `aggregate_of`).
pub const RESOURCE_TYPES: &str =
    "call, customer, agent, accesskey, billing_account, billing, campaign, outplan, outdial, outdialtarget, queue, conference, transcribe, flow, activeflow, recording, number, ai, aicall";

fn aggregate_of(resource_type: &str) -> Option<Holder> {
    let (aggregate_type, needs_admin, per_customer) = match resource_type {
        "call" => (CallEvent::AGGREGATE, false, false),
        "customer" | "agent" | "accesskey" => (CustomerEvent::AGGREGATE, true, true),
        "billing_account" | "billing" => (BillingEvent::AGGREGATE, false, true),
        "campaign" => (CampaignEvent::AGGREGATE, false, false),
        "outplan" => (OutplanEvent::AGGREGATE, false, false),
        "outdial" => (OutdialEvent::AGGREGATE, false, false),
        "outdialtarget" => (TargetEvent::AGGREGATE, false, false),
        "queue" => (QueueEvent::AGGREGATE, false, false),
        "conference" => (ConferenceEvent::AGGREGATE, false, false),
        "transcribe" => (TranscribeEvent::AGGREGATE, false, false),
        "flow" => (FlowEvent::AGGREGATE, false, false),
        "activeflow" => (ActiveflowEvent::AGGREGATE, false, false),
        "recording" => (RecordingEvent::AGGREGATE, false, false),
        "number" => (NumberEvent::AGGREGATE, false, false),
        "ai" => (AiEvent::AGGREGATE, false, false),
        "aicall" => (AicallEvent::AGGREGATE, false, false),
        "trunk" => (TrunkEvent::AGGREGATE, false, false),
        _ => return None,
    };
    Some(Holder {
        aggregate_type,
        needs_admin,
        per_customer,
    })
}

/// The handler.
pub async fn list_events(
    Extension(s): Extension<Arc<ReadState>>,
    c: CustomerCaller,
    Query(q): Query<EventsQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let rtype = q
        .resource_type
        .as_deref()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::invalid("resource_type is required"))?;
    let holder = aggregate_of(rtype).ok_or_else(|| {
        ApiError::invalid(format!("resource_type must be one of {RESOURCE_TYPES}"))
    })?;
    let (aggregate_type, needs_admin) = (holder.aggregate_type, holder.needs_admin);
    let rid: Uuid = q
        .resource_id
        .as_deref()
        .and_then(|r| r.parse().ok())
        .ok_or_else(|| ApiError::invalid("resource_id must be a UUID"))?;
    if needs_admin && c.permission != Permission::Admin {
        return Err(ApiError::forbidden("admin permission required"));
    }
    let customer = c.customer_id.as_uuid();
    // Agents, keys and billing records live in per-customer aggregates; the rest are their own.
    let aggregate_id = if holder.per_customer { customer } else { rid };
    let size = q.page.size()?;
    let after: i64 = q.page.token()?.unwrap_or(0);
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT * FROM ( \
           SELECT {EVENT_COLUMNS}, LAG(resource) OVER (ORDER BY sequence) AS before_state \
           FROM events \
           WHERE aggregate_type = $1 AND aggregate_id = $2 AND customer_id = $3 \
             AND resource->>'id' = $4 AND resource->>'type' = $5 \
         ) s WHERE sequence > $6 ORDER BY sequence LIMIT $7"
    )))
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(customer)
    .bind(rid.to_string())
    .bind(rtype)
    .bind(after)
    .bind(size + 1)
    .fetch_all(s.db(c.customer_id.as_uuid()).await)
    .await
    .map_err(|e| ApiError::unavailable("reading the event log", e))?;
    if rows.is_empty() && after == 0 {
        return Err(ApiError::not_found(rtype));
    }
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let (_, e) =
            published_from_row(r).map_err(|e| ApiError::internal("decoding an event", e))?;
        let before: Option<Value> = r
            .try_get("before_state")
            .map_err(|e| ApiError::internal("decoding an event", e))?;
        let metadata: Value = serde_json::from_str(e.metadata.get()).unwrap_or(Value::Null);
        out.push((
            e.sequence.to_string(),
            json!({
                "event_id": e.event_id,
                "event_type": e.event_type,
                "event_version": e.event_version,
                "timestamp": e.timestamp,
                "actor": metadata.get("actor").cloned().unwrap_or(Value::Null),
                "request_id": metadata.get("request_id").cloned().unwrap_or(Value::Null),
                "resource_type": rtype,
                "resource_id": rid,
                "sequence": e.sequence,
                "data": e.data,
                "before_state": before.unwrap_or(Value::Null),
            }),
        ));
    }
    Ok(page_body(out, size))
}
