//! What every read handler shares: the read state and cursor pagination.

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;
use vbin_http::ApiError;
use vbin_projections::cache::Cache;

/// What the read handlers need.
#[derive(Clone)]
pub struct ReadState {
    /// Postgres, the primary (read models and the log): admin reads, cache resyncs.
    pub pool: PgPool,
    /// Where customers' reads go: the primary, or a streaming replica while it keeps up.
    pub reads: vbin_replica::ReadPools,
    /// Redis cache; `None` disables caching.
    pub cache: Option<Cache>,
    /// The recordings store; `None`: no recording files are served.
    pub store: Option<vbin_storage::Store>,
}

impl ReadState {
    /// The server a read of `customer`'s data goes to (see [`vbin_replica::ReadPools`]).
    pub async fn db(&self, customer: uuid::Uuid) -> &PgPool {
        self.reads.for_customer(customer).await
    }
}

/// `?page_size=&page_token=`.
#[derive(Debug, Deserialize)]
pub struct Page {
    page_size: Option<String>,
    page_token: Option<String>,
}

/// The cursor of a first page listed newest first: every id is below it. A page's cursor is
/// always bound (never `$n IS NULL OR id < $n`), so the plan Postgres may reuse for a prepared
/// statement (its generic plan) still seeks to the cursor in the index instead of reading
/// every newer row (190 ms instead of 0.1 ms 200,000 rows deep).
pub const FIRST_PAGE_DESC: Uuid = Uuid::max();
/// The cursor of a first page listed oldest first: every id is above it.
pub const FIRST_PAGE_ASC: Uuid = Uuid::nil();

/// Default and largest page size.
pub const DEFAULT_PAGE_SIZE: i64 = 25;
/// The largest page size.
pub const MAX_PAGE_SIZE: i64 = 100;

impl Page {
    /// The validated page size.
    pub fn size(&self) -> Result<i64, ApiError> {
        match self.page_size.as_deref() {
            None | Some("") => Ok(DEFAULT_PAGE_SIZE),
            Some(s) => match s.parse::<i64>() {
                Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => Ok(n),
                _ => Err(ApiError::invalid(format!(
                    "page_size must be an integer from 1 to {MAX_PAGE_SIZE}"
                ))),
            },
        }
    }

    /// The decoded page token (`None` for the first page).
    pub fn token<T: std::str::FromStr>(&self) -> Result<Option<T>, ApiError> {
        let Some(t) = self.page_token.as_deref().filter(|t| !t.is_empty()) else {
            return Ok(None);
        };
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(t)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| ApiError::invalid("page_token is not valid"))
    }
}

/// An opaque page token for a cursor value.
pub fn page_token(cursor: impl std::fmt::Display) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(cursor.to_string())
}

/// `{"result": [...], "next_page_token": "..."}` from up to `size + 1` rows.
pub fn page_body(mut rows: Vec<(String, Value)>, size: i64) -> axum::Json<Value> {
    let more = rows.len() as i64 > size;
    rows.truncate(size as usize);
    let next = if more {
        rows.last().map(|(c, _)| page_token(c)).unwrap_or_default()
    } else {
        String::new()
    };
    axum::Json(json!({
        "result": rows.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        "next_page_token": next,
    }))
}
