//! Billing: the account (`rm_billing_accounts`, id = customer id) and one row per charge
//! (`rm_billings`). `billing_recorded` carries the billing record as its resource; the
//! account's new balance is patched onto the account row from the event's data.

use crate::{upsert_resource, ApplyError, Projection, RowOp};
use serde_json::json;
use vbin_event_schema::{BillingEvent, PublishedEvent};

/// The billing projection.
pub const PROJECTION: Projection = Projection {
    name: "billing",
    aggregate_type: BillingEvent::AGGREGATE,
    tables: &["rm_billing_accounts", "rm_billings"],
    uses_data: true,
    apply,
};

fn apply(event: &PublishedEvent) -> Result<Vec<RowOp>, ApplyError> {
    match event.resource_type().as_deref() {
        Some("billing_account") => Ok(vec![upsert_resource("rm_billing_accounts", event)?]),
        Some("billing") => {
            let BillingEvent::BillingRecorded {
                balance_after_micros,
                at,
                ..
            } = event.decode()?
            else {
                return Err(ApplyError(format!(
                    "{} carries a billing view",
                    event.event_type
                )));
            };
            Ok(vec![
                upsert_resource("rm_billings", event)?,
                RowOp::Patch {
                    table: "rm_billing_accounts",
                    id: event.aggregate_id,
                    patch: json!({
                        "balance_micros": balance_after_micros,
                        "tm_update": at,
                    }),
                },
            ])
        }
        other => Err(ApplyError(format!(
            "{}: unknown resource type {other:?}",
            event.event_type
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use uuid::Uuid;
    use vbin_event_schema::{BillingId, Micros};

    #[test]
    fn a_charge_patches_the_accounts_balance() {
        let at = chrono::Utc::now();
        let payload = json!(BillingEvent::BillingRecorded {
            billing_id: BillingId::new(),
            reference_type: "call".into(),
            reference_id: Uuid::now_v7(),
            billable_units: 2,
            rate_micros_per_unit: Micros(1_000),
            amount_micros: Micros(2_000),
            balance_after_micros: Micros(-500),
            at,
        });
        let e = PublishedEvent {
            event_id: Uuid::now_v7(),
            event_type: BillingEvent::BILLING_RECORDED.into(),
            event_version: "1.0".into(),
            timestamp: at,
            customer_id: Uuid::now_v7(),
            aggregate_type: BillingEvent::AGGREGATE.into(),
            aggregate_id: Uuid::now_v7(),
            sequence: 3,
            global_position: 5,
            metadata: vbin_event_schema::raw(&Value::Null),
            resource: vbin_event_schema::raw(&json!({"id": Uuid::now_v7(), "type": "billing"})),
            data: vbin_event_schema::raw(&payload),
        };
        let ops = apply(&e).unwrap();
        assert_eq!(ops[0].table(), "rm_billings");
        assert_eq!(
            ops[1],
            RowOp::Patch {
                table: "rm_billing_accounts",
                id: e.aggregate_id,
                patch: json!({
                    "balance_micros": payload["balance_after_micros"],
                    "tm_update": payload["at"],
                }),
            }
        );
    }
}
