//! vbin's read side.
//!
//! A **projection** turns the events of one aggregate type into rows of read-model tables. Its
//! `apply` is a pure function from one published event to [`RowOp`]s, so the same code serves
//! the live runtime ([`runtime`]: a durable JetStream consumer writing to Postgres with
//! exactly-once effect) and replay ([`replay`]: a rebuild from the Postgres log into shadow
//! tables). Every read-model table has the same writable shape, `(id, customer_id, body,
//! version)`: `body` is the API view of the resource and `version` counts the events applied to
//! the row. Adding a read model is one module in [`models`] plus its tables in a migration.

pub mod cache;
pub mod models;
pub mod replay;
pub mod runtime;

use serde_json::value::RawValue;
use serde_json::Value;
use uuid::Uuid;
use vbin_event_schema::{raw, PublishedEvent};

/// One change to one read-model row.
#[derive(Clone, Debug)]
pub enum RowOp {
    /// Insert or replace the row `id` of `table` with `body` (the full API view).
    Upsert {
        /// Logical table name (`rm_calls`).
        table: &'static str,
        /// Row id (the resource id).
        id: Uuid,
        /// Owning customer (tenant scoping of every read).
        customer_id: Uuid,
        /// The API view (as the event's `resource` was written, most often).
        body: Box<RawValue>,
    },
    /// Remove the row.
    Delete {
        /// Logical table name.
        table: &'static str,
        /// Row id.
        id: Uuid,
    },
    /// Merge `patch` (an object) into the body of the existing row `id` (top-level keys
    /// replaced, as Postgres `||`); nothing if the row does not exist. For events whose
    /// resource is another row (a billing record) but which also change this one.
    Patch {
        /// Logical table name.
        table: &'static str,
        /// Row id.
        id: Uuid,
        /// Keys to set.
        patch: Value,
    },
}

/// Equal ops; bodies compared as written.
impl PartialEq for RowOp {
    fn eq(&self, o: &Self) -> bool {
        match (self, o) {
            (
                RowOp::Upsert {
                    table,
                    id,
                    customer_id,
                    body,
                },
                RowOp::Upsert {
                    table: t,
                    id: i,
                    customer_id: c,
                    body: b,
                },
            ) => table == t && id == i && customer_id == c && body.get() == b.get(),
            (RowOp::Delete { table, id }, RowOp::Delete { table: t, id: i }) => {
                table == t && id == i
            }
            (
                RowOp::Patch { table, id, patch },
                RowOp::Patch {
                    table: t,
                    id: i,
                    patch: p,
                },
            ) => table == t && id == i && patch == p,
            _ => false,
        }
    }
}

impl RowOp {
    /// The table this op writes.
    pub fn table(&self) -> &'static str {
        match self {
            RowOp::Upsert { table, .. }
            | RowOp::Delete { table, .. }
            | RowOp::Patch { table, .. } => table,
        }
    }

    /// The row this op writes.
    pub fn id(&self) -> Uuid {
        match self {
            RowOp::Upsert { id, .. } | RowOp::Delete { id, .. } | RowOp::Patch { id, .. } => *id,
        }
    }
}

/// Why an event could not be applied (it is parked in `projection_dead_letters`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ApplyError(pub String);

impl From<vbin_event_schema::DecodeError> for ApplyError {
    fn from(e: vbin_event_schema::DecodeError) -> Self {
        Self(e.to_string())
    }
}

/// A projection: which events it reads and how they become rows.
#[derive(Clone, Copy, Debug)]
pub struct Projection {
    /// Name: durable consumer `projection-<name>`, checkpoint row, positions table `pp_<name>`.
    pub name: &'static str,
    /// The aggregate type whose events it reads (one: a consumer has one filter subject).
    pub aggregate_type: &'static str,
    /// The read-model tables it owns (all of the common shape).
    pub tables: &'static [&'static str],
    /// Whether `apply` reads the event's `data` (replay leaves it null otherwise, which makes
    /// reading the log much cheaper; the live runtime always has it).
    pub uses_data: bool,
    /// Event to row changes. Pure; an error parks the event.
    pub apply: fn(&PublishedEvent) -> Result<Vec<RowOp>, ApplyError>,
}

impl Projection {
    /// The per-aggregate positions table.
    pub fn positions_table(&self) -> String {
        format!("pp_{}", self.name)
    }

    /// The durable consumer name.
    pub fn consumer_name(&self) -> String {
        format!("projection-{}", self.name)
    }
}

/// Every projection, in the order `vbin replay` rebuilds them.
pub fn all() -> &'static [Projection] {
    &[
        models::calls::PROJECTION,
        models::identity::PROJECTION,
        models::billing::PROJECTION,
        models::campaigns::OUTPLANS,
        models::campaigns::OUTDIALS,
        models::campaigns::TARGETS,
        models::campaigns::CAMPAIGNS,
        models::queues::PROJECTION,
        models::transcribes::PROJECTION,
        models::flows::FLOWS,
        models::flows::ACTIVEFLOWS,
        models::flows::RECORDINGS,
        models::flows::NUMBERS,
        models::ais::AIS,
        models::ais::AICALLS,
        models::trunks::TRUNKS,
        models::conferences::PROJECTION,
    ]
}

/// The projection called `name`.
pub fn by_name(name: &str) -> Option<Projection> {
    all().iter().find(|p| p.name == name).copied()
}

/// The common apply for an event that carries its resource's full view: upsert the resource
/// into `table`. Fails if the view lacks an id.
pub fn upsert_resource(table: &'static str, event: &PublishedEvent) -> Result<RowOp, ApplyError> {
    let id = resource_id(event)?;
    Ok(RowOp::Upsert {
        table,
        id,
        customer_id: event.customer_id,
        body: event.resource.clone(),
    })
}

/// [`merge_into`] for a body held as raw JSON (a patch onto a row this batch upserts: rare).
pub fn merge_into_raw(body: &mut Box<RawValue>, patch: &Value) {
    let mut merged: Value = serde_json::from_str(body.get()).unwrap_or(Value::Null);
    merge_into(&mut merged, patch);
    *body = raw(&merged);
}

/// Merges the top-level keys of `patch` into `body` (what Postgres `body || patch` does).
pub fn merge_into(body: &mut Value, patch: &Value) {
    if let (Value::Object(b), Value::Object(p)) = (body, patch) {
        for (k, v) in p {
            b.insert(k.clone(), v.clone());
        }
    }
}

/// The `id` of the event's resource view.
pub fn resource_id(event: &PublishedEvent) -> Result<Uuid, ApplyError> {
    event
        .resource_id()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            ApplyError(format!(
                "resource without a valid id: {}",
                event.resource.get()
            ))
        })
}
