//! What a cache entry holds (shared by Redis's entries and the near cache).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::sync::Arc;
use uuid::Uuid;

/// A cached row.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CachedRow {
    /// Row version.
    pub v: i64,
    /// Owning customer.
    pub c: Uuid,
    /// The API view, as the JSON text it is served as: a hit is answered with these bytes,
    /// never parsed and printed again (shared: a near-cache hit copies nothing).
    #[serde(serialize_with = "raw_out", deserialize_with = "raw_in")]
    pub b: Arc<RawValue>,
}

fn raw_out<S: serde::Serializer>(b: &Arc<RawValue>, s: S) -> Result<S::Ok, S::Error> {
    b.serialize(s)
}

fn raw_in<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Arc<RawValue>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Arc::from)
}
