//! Billing: the account (`rm_billing_accounts`, id = customer id) and one row per charge
//! (`rm_billings`). `billing_recorded` carries the billing record as its resource; the
//! account's new balance is patched onto the account row from the event's data.

use crate::{upsert_resource, ApplyError, Projection, RowOp};
use serde_json::json;
use vbin_event_schema::PublishedEvent;

/// The billing projection.
pub const PROJECTION: Projection = Projection {
    name: "billing",
    aggregate_type: "billing_account",
    tables: &["rm_billing_accounts", "rm_billings"],
    uses_data: true,
    apply,
};

fn apply(event: &PublishedEvent) -> Result<Vec<RowOp>, ApplyError> {
    match event.resource.get("type").and_then(|t| t.as_str()) {
        Some("billing_account") => Ok(vec![upsert_resource("rm_billing_accounts", event)?]),
        Some("billing") => Ok(vec![
            upsert_resource("rm_billings", event)?,
            RowOp::Patch {
                table: "rm_billing_accounts",
                id: event.aggregate_id,
                patch: json!({
                    "balance_micros": event.data["balance_after_micros"],
                    "tm_update": event.data["at"],
                }),
            },
        ]),
        other => Err(ApplyError(format!(
            "{}: unknown resource type {other:?}",
            event.event_type
        ))),
    }
}
