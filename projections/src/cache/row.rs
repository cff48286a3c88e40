//! What a cache entry holds (shared by Redis's entries and the near cache).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// A cached row.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CachedRow {
    /// Row version.
    pub v: i64,
    /// Owning customer.
    pub c: Uuid,
    /// The API view, as the JSON text it is served as: a hit is answered with these bytes,
    /// never parsed and printed again.
    pub b: Box<RawValue>,
}
