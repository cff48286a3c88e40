//! Outbound campaigns: outplans, outdials, targets, campaigns and campaign calls. Campaign
//! call events carry the campaign call as their resource and the campaign's counters in their
//! data, which are patched onto the campaign's row.

use crate::{upsert_resource, ApplyError, Projection, RowOp};
use serde_json::{json, Value};
use vbin_event_schema::views::Touched;
use vbin_event_schema::{CampaignEvent, OutdialEvent, OutplanEvent, PublishedEvent, TargetEvent};

/// Outplans.
pub const OUTPLANS: Projection = Projection {
    name: "outplans",
    aggregate_type: OutplanEvent::AGGREGATE,
    tables: &["rm_outplans"],
    uses_data: false,
    apply: |e| upsert_typed(e, "outplan", "rm_outplans"),
};

/// Outdials.
pub const OUTDIALS: Projection = Projection {
    name: "outdials",
    aggregate_type: OutdialEvent::AGGREGATE,
    tables: &["rm_outdials"],
    uses_data: false,
    apply: |e| upsert_typed(e, "outdial", "rm_outdials"),
};

/// Outdial targets.
pub const TARGETS: Projection = Projection {
    name: "targets",
    aggregate_type: TargetEvent::AGGREGATE,
    tables: &["rm_outdialtargets"],
    uses_data: false,
    apply: |e| upsert_typed(e, "outdialtarget", "rm_outdialtargets"),
};

/// Campaigns and their calls.
pub const CAMPAIGNS: Projection = Projection {
    name: "campaigns",
    aggregate_type: CampaignEvent::AGGREGATE,
    tables: &["rm_campaigns", "rm_campaigncalls"],
    uses_data: true,
    apply: apply_campaign,
};

/// Upserts the event's resource into `table` if it is a `kind`; anything else is an error.
fn upsert_typed(
    event: &PublishedEvent,
    kind: &str,
    table: &'static str,
) -> Result<Vec<RowOp>, ApplyError> {
    if event.resource_type().as_deref() != Some(kind) {
        return Err(ApplyError(format!(
            "{} carries no {kind} view",
            event.event_type
        )));
    }
    Ok(vec![upsert_resource(table, event)?])
}

fn apply_campaign(event: &PublishedEvent) -> Result<Vec<RowOp>, ApplyError> {
    parent_or_child(
        event,
        ("campaign", "rm_campaigns"),
        ("campaigncall", "rm_campaigncalls"),
        counters,
    )
}

/// The campaign's counters a campaign call event carries.
fn counters(event: &PublishedEvent) -> Result<Value, ApplyError> {
    match event.decode()? {
        CampaignEvent::CampaigncallCreated { counters, .. }
        | CampaignEvent::CampaigncallUpdated { counters, .. } => Ok(json!(counters)),
        CampaignEvent::CampaignCreated { .. }
        | CampaignEvent::CampaignStatusChanged { .. }
        | CampaignEvent::CampaignTargetsCounted { .. } => {
            Err(ApplyError(format!("{} without counters", event.event_type)))
        }
    }
}

/// For aggregates whose events show either the aggregate itself or one of its children (a
/// campaign call, a queue call): a child's event upserts the child's row and patches the
/// parent's row with the statistics the event carries (`stats` reads them from the typed
/// event) and the child's last change.
pub(crate) fn parent_or_child(
    event: &PublishedEvent,
    (parent, parent_table): (&str, &'static str),
    (child, child_table): (&str, &'static str),
    stats: fn(&PublishedEvent) -> Result<Value, ApplyError>,
) -> Result<Vec<RowOp>, ApplyError> {
    if event.resource_type().as_deref() != Some(child) {
        return upsert_typed(event, parent, parent_table);
    }
    let mut patch = stats(event)?;
    patch["tm_update"] = event
        .view::<Touched>()
        .map_or(Value::Null, |v| json!(v.tm_update));
    Ok(vec![
        upsert_resource(child_table, event)?,
        RowOp::Patch {
            table: parent_table,
            id: event.aggregate_id,
            patch,
        },
    ])
}
