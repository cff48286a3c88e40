//! The query REST API: every GET of API.md for the read models that exist, and the audit trail.
//!
//! - Single resources go through the Redis cache-aside layer ([`vbin_projections::cache`]): a hit
//!   is served if it belongs to the caller's customer, a miss reads Postgres and fills the cache.
//!   Redis trouble never fails a read: it is logged and the row comes from Postgres.
//! - Lists read Postgres directly, newest first, keyset-paginated by id (UUIDv7, so by
//!   creation time) with an opaque `next_page_token`.
//! - Every query filters by the caller's `customer_id`; another tenant's id is a 404.
//! - `GET /v1.0/events` reads the event log itself (see [`audit`]).
//!
//! The routes share the command API's layers (request context, authentication, error envelope),
//! see `vbin_http::with_layers`.

pub mod admin;
pub mod audit;
pub mod page;
mod recordings;

pub use page::{
    page_body, page_token, Page, ReadState, DEFAULT_PAGE_SIZE, FIRST_PAGE_ASC, FIRST_PAGE_DESC,
    MAX_PAGE_SIZE,
};

use axum::extract::Extension;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;
use vbin_event_schema::CallStatus;
use vbin_http::extract::{CustomerAdmin, CustomerCaller, Path, Query};
use vbin_http::ApiError;
use vbin_http::HttpState;
use vbin_projections::cache::{Cache, CacheError, CachedRow};

/// The query API routes (to be wrapped by `with_layers` together with the command routes).
pub fn routes(state: ReadState) -> Router<HttpState> {
    Router::new()
        .route("/v1.0/customers", get(admin::list_customers))
        .route("/v1.0/platform/status", get(admin::platform_status))
        .route("/v1.0/calls", get(list_calls))
        .route("/v1.0/calls/{id}", get(get_call))
        .route("/v1.0/agents", get(list_agents))
        .route("/v1.0/agents/{id}", get(get_agent))
        .route("/v1.0/accesskeys", get(list_access_keys))
        .route("/v1.0/accesskeys/{id}", get(get_access_key))
        .route("/v1.0/customer", get(get_customer))
        .route("/v1.0/events", get(audit::list_events))
        .route("/v1.0/billing_account", get(get_billing_account))
        .route("/v1.0/billings", get(list_billings))
        .route("/v1.0/outplans", get(list_outplans))
        .route("/v1.0/outplans/{id}", get(get_outplan))
        .route("/v1.0/outdials", get(list_outdials))
        .route("/v1.0/outdials/{id}", get(get_outdial))
        .route("/v1.0/outdials/{id}/targets", get(list_targets))
        .route("/v1.0/campaigns", get(list_campaigns))
        .route("/v1.0/campaigns/{id}", get(get_campaign))
        .route("/v1.0/campaigncalls", get(list_campaigncalls))
        .route("/v1.0/queues", get(list_queues))
        .route("/v1.0/queues/{id}", get(get_queue))
        .route("/v1.0/queuecalls", get(list_queuecalls))
        .route("/v1.0/conferences", get(list_conferences))
        .route("/v1.0/conferences/{id}", get(get_conference))
        .route("/v1.0/conferencecalls", get(list_conferencecalls))
        .route("/v1.0/transcribes", get(list_transcribes))
        .route("/v1.0/transcribes/{id}", get(get_transcribe))
        .route("/v1.0/transcripts", get(list_transcripts))
        .route("/v1.0/flows", get(list_flows))
        .route("/v1.0/flows/{id}", get(get_flow))
        .route("/v1.0/activeflows", get(list_activeflows))
        .route("/v1.0/activeflows/{id}", get(get_activeflow))
        .route("/v1.0/numbers", get(list_numbers))
        .route("/v1.0/numbers/{id}", get(get_number))
        .route("/v1.0/ais", get(list_ais))
        .route("/v1.0/ais/{id}", get(get_ai))
        .route("/v1.0/trunks", get(list_trunks))
        .route("/v1.0/trunks/{id}", get(get_trunk))
        .route("/v1.0/aicalls", get(list_aicalls))
        .route("/v1.0/aicalls/{id}", get(get_aicall))
        .route("/v1.0/aimessages", get(list_aimessages))
        .route("/v1.0/aimessages/{id}", get(get_aimessage))
        .route("/v1.0/recordings", get(list_recordings))
        .route("/v1.0/recordings/{id}", get(get_recording))
        .route(
            "/v1.0/recordings/{id}/file",
            get(recordings::get_recording_file),
        )
        .layer(Extension(Arc::new(state)))
}

fn db_error(e: sqlx::Error) -> ApiError {
    ApiError::unavailable("reading the read model", e)
}

/// One page of `table` for `customer`, newest first.
pub async fn list_rows(
    pool: &PgPool,
    table: &'static str,
    customer: Uuid,
    page: &Page,
) -> Result<axum::Json<Value>, ApiError> {
    list_rows_where::<Uuid>(pool, table, customer, page, None).await
}

/// Like [`list_rows`], only rows whose filter column (a generated column such as
/// `campaign_id`, or an expression such as `body->>'status'`, indexed) equals the value, when
/// one is given.
pub async fn list_rows_where<V>(
    pool: &PgPool,
    table: &'static str,
    customer: Uuid,
    page: &Page,
    filter: Option<(&'static str, V)>,
) -> Result<axum::Json<Value>, ApiError>
where
    V: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + 'static,
{
    let size = page.size()?;
    let after: Option<Uuid> = page.token()?;
    let clause = match &filter {
        Some((column, _)) => format!(" AND {column} = $4"),
        None => String::new(),
    };
    let query = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, body FROM {table} WHERE customer_id = $1 AND id < $2\
         {clause} ORDER BY id DESC LIMIT $3"
    )))
    .bind(customer)
    .bind(after.unwrap_or(FIRST_PAGE_DESC))
    .bind(size + 1);
    let query = match filter {
        Some((_, value)) => query.bind(value),
        None => query,
    };
    let rows: Vec<(Uuid, Value)> = query.fetch_all(pool).await.map_err(db_error)?;
    Ok(page_body(
        rows.into_iter()
            .map(|(id, b)| (id.to_string(), b))
            .collect(),
        size,
    ))
}

fn log_cache_error(table: &str, e: &CacheError) {
    if !matches!(e, CacheError::Bypassed) {
        tracing::warn!(table, error = %e, "redis unavailable; serving from postgres");
    }
}

/// One row of `table` owned by `customer`, through the cache. `None`: no such row for this
/// customer (a 404 either way, so another tenant's id reveals nothing).
pub async fn get_row(
    state: &ReadState,
    table: &'static str,
    id: Uuid,
    customer: Uuid,
) -> Result<Option<Arc<RawValue>>, ApiError> {
    // After an outage this process may have missed invalidations: apply the pending ones
    // before trusting any hit (until that works, read Postgres only).
    let cache = match &state.cache {
        Some(c) => match c.needs_resync() {
            None => Some(c),
            Some(mark) => {
                match vbin_projections::runtime::sweep_once(&state.pool, c, Duration::ZERO).await {
                    Ok(n) => {
                        tracing::info!(applied = n, "redis is back; pending invalidations applied");
                        c.resynced(mark);
                        Some(c)
                    }
                    Err(_) => None,
                }
            }
        },
        None => None,
    };
    if let Some(cache) = cache {
        match cache.get(table, id).await {
            Ok(Some(row)) => {
                metrics::counter!("vbin_cache_requests_total", "table" => table, "outcome" => "hit")
                    .increment(1);
                return Ok((row.c == customer).then_some(row.b));
            }
            Ok(None) => {
                metrics::counter!("vbin_cache_requests_total", "table" => table, "outcome" => "miss")
                    .increment(1)
            }
            Err(e) => {
                metrics::counter!("vbin_cache_requests_total", "table" => table, "outcome" => "error")
                    .increment(1);
                log_cache_error(table, &e);
            }
        }
    }
    let row: Option<(Uuid, Value, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT customer_id, body, version FROM {table} WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(state.db(customer).await)
    .await
    .map_err(db_error)?;
    let Some((c, b, v)) = row else {
        return Ok(None);
    };
    let b: Arc<RawValue> = serde_json::value::to_raw_value(&b)
        .map_err(|e| ApiError::internal("encoding a read model row", e))?
        .into();
    if let Some(cache) = cache {
        let cached = CachedRow { v, c, b };
        if let Err(e) = cache.fill(table, id, &cached).await {
            log_cache_error(table, &e);
        }
        return Ok((cached.c == customer).then_some(cached.b));
    }
    Ok((c == customer).then_some(b))
}

/// A JSON body sent as the bytes it already is (a cached row's view, shared with the cache:
/// the response borrows it, nothing is copied).
pub struct RawJson(pub Arc<RawValue>);

/// The bytes of a shared JSON text, as a response body's owner.
struct RawBytes(Arc<RawValue>);

impl AsRef<[u8]> for RawBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.get().as_bytes()
    }
}

impl axum::response::IntoResponse for RawJson {
    fn into_response(self) -> axum::response::Response {
        (
            [(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            )],
            bytes::Bytes::from_owner(RawBytes(self.0)),
        )
            .into_response()
    }
}

async fn get_one(
    state: &ReadState,
    table: &'static str,
    what: &str,
    id: &str,
    customer: Uuid,
) -> Result<RawJson, ApiError> {
    let id: Uuid = id
        .parse()
        .map_err(|_| ApiError::invalid(format!("{what} id must be a UUID")))?;
    get_row(state, table, id, customer)
        .await?
        .map(RawJson)
        .ok_or_else(|| ApiError::not_found(what))
}

/// `?status=` of `GET /v1.0/calls`.
#[derive(Deserialize)]
struct CallFilter {
    status: Option<String>,
}

async fn list_calls(
    Extension(s): Extension<Arc<ReadState>>,
    c: CustomerCaller,
    Query(p): Query<Page>,
    Query(f): Query<CallFilter>,
) -> Result<axum::Json<Value>, ApiError> {
    let status = match f.status.as_deref().filter(|st| !st.is_empty()) {
        None => None,
        Some(st) => Some(CallStatus::parse(st).ok_or_else(|| {
            let all: Vec<&str> = CallStatus::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::invalid(format!("status must be one of {}", all.join(", ")))
        })?),
    };
    // The expression matches the index rm_calls_customer_status.
    let filter = status.map(|st| ("body->>'status'", st.as_str()));
    list_rows_where(
        s.db(c.customer_id.as_uuid()).await,
        "rm_calls",
        c.customer_id.as_uuid(),
        &p,
        filter,
    )
    .await
}

async fn get_call(
    Extension(s): Extension<Arc<ReadState>>,
    c: CustomerCaller,
    Path(id): Path<String>,
) -> Result<RawJson, ApiError> {
    get_one(&s, "rm_calls", "call", &id, c.customer_id.as_uuid()).await
}

async fn list_agents(
    Extension(s): Extension<Arc<ReadState>>,
    c: CustomerCaller,
    Query(p): Query<Page>,
) -> Result<axum::Json<Value>, ApiError> {
    list_rows(
        s.db(c.customer_id.as_uuid()).await,
        "rm_agents",
        c.customer_id.as_uuid(),
        &p,
    )
    .await
}

async fn get_agent(
    Extension(s): Extension<Arc<ReadState>>,
    c: CustomerCaller,
    Path(id): Path<String>,
) -> Result<RawJson, ApiError> {
    get_one(&s, "rm_agents", "agent", &id, c.customer_id.as_uuid()).await
}

async fn list_access_keys(
    Extension(s): Extension<Arc<ReadState>>,
    CustomerAdmin(c): CustomerAdmin,
    Query(p): Query<Page>,
) -> Result<axum::Json<Value>, ApiError> {
    list_rows(
        s.db(c.customer_id.as_uuid()).await,
        "rm_accesskeys",
        c.customer_id.as_uuid(),
        &p,
    )
    .await
}

async fn get_access_key(
    Extension(s): Extension<Arc<ReadState>>,
    CustomerAdmin(c): CustomerAdmin,
    Path(id): Path<String>,
) -> Result<RawJson, ApiError> {
    get_one(
        &s,
        "rm_accesskeys",
        "access key",
        &id,
        c.customer_id.as_uuid(),
    )
    .await
}

/// An optional UUID query filter (`?reference_id=`), validated.
#[derive(Debug, Deserialize)]
pub struct Filter {
    reference_id: Option<String>,
    campaign_id: Option<String>,
    queue_id: Option<String>,
    conference_id: Option<String>,
    transcribe_id: Option<String>,
    aicall_id: Option<String>,
}

fn uuid_param(name: &str, v: &Option<String>) -> Result<Option<Uuid>, ApiError> {
    match v.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| ApiError::invalid(format!("{name} must be a UUID"))),
    }
}

async fn get_billing_account(
    Extension(s): Extension<Arc<ReadState>>,
    c: CustomerCaller,
) -> Result<RawJson, ApiError> {
    let id = c.customer_id.as_uuid();
    get_row(&s, "rm_billing_accounts", id, id)
        .await?
        .map(RawJson)
        .ok_or_else(|| ApiError::not_found("billing account"))
}

async fn list_billings(
    Extension(s): Extension<Arc<ReadState>>,
    c: CustomerCaller,
    Query(p): Query<Page>,
    Query(f): Query<Filter>,
) -> Result<axum::Json<Value>, ApiError> {
    let filter = uuid_param("reference_id", &f.reference_id)?.map(|v| ("reference_id", v));
    list_rows_where(
        s.db(c.customer_id.as_uuid()).await,
        "rm_billings",
        c.customer_id.as_uuid(),
        &p,
        filter,
    )
    .await
}

/// A customer's resources of one read model table: `list` (paginated) and `get` (by id).
macro_rules! list_and_get {
    ($($list:ident, $get:ident => $table:literal, $what:literal;)*) => {$(
        async fn $list(
            Extension(s): Extension<Arc<ReadState>>,
            c: CustomerCaller,
            Query(p): Query<Page>,
        ) -> Result<axum::Json<Value>, ApiError> {
            list_rows(s.db(c.customer_id.as_uuid()).await, $table, c.customer_id.as_uuid(), &p).await
        }

        async fn $get(
            Extension(s): Extension<Arc<ReadState>>,
            c: CustomerCaller,
            Path(id): Path<String>,
        ) -> Result<RawJson, ApiError> {
            get_one(&s, $table, $what, &id, c.customer_id.as_uuid()).await
        }
    )*};
}

list_and_get! {
    list_outplans, get_outplan => "rm_outplans", "outplan";
    list_outdials, get_outdial => "rm_outdials", "outdial";
    list_campaigns, get_campaign => "rm_campaigns", "campaign";
    list_queues, get_queue => "rm_queues", "queue";
    list_conferences, get_conference => "rm_conferences", "conference";
    list_transcribes, get_transcribe => "rm_transcribes", "transcribe";
    list_flows, get_flow => "rm_flows", "flow";
    list_numbers, get_number => "rm_numbers", "number";
    list_ais, get_ai => "rm_ais", "ai";
    list_trunks, get_trunk => "rm_trunks", "trunk";
}

/// A customer's resources of calls, in a read model table with a `reference_id` column:
/// `list` (`?reference_id=` narrows to one call's; newest first) and `get` (by id).
macro_rules! list_by_reference_and_get {
    ($($list:ident, $get:ident => $table:literal, $what:literal;)*) => {$(
        async fn $list(
            Extension(s): Extension<Arc<ReadState>>,
            c: CustomerCaller,
            Query(p): Query<Page>,
            Query(f): Query<Filter>,
        ) -> Result<axum::Json<Value>, ApiError> {
            let filter = uuid_param("reference_id", &f.reference_id)?.map(|v| ("reference_id", v));
            list_rows_where(s.db(c.customer_id.as_uuid()).await, $table, c.customer_id.as_uuid(), &p, filter).await
        }

        async fn $get(
            Extension(s): Extension<Arc<ReadState>>,
            c: CustomerCaller,
            Path(id): Path<String>,
        ) -> Result<RawJson, ApiError> {
            get_one(&s, $table, $what, &id, c.customer_id.as_uuid()).await
        }
    )*};
}

list_by_reference_and_get! {
    list_recordings, get_recording => "rm_recordings", "recording";
    list_activeflows, get_activeflow => "rm_activeflows", "activeflow";
    list_aicalls, get_aicall => "rm_aicalls", "aicall";
}

/// `GET /v1.0/aimessages/{id}`.
async fn get_aimessage(
    Extension(s): Extension<Arc<ReadState>>,
    c: CustomerCaller,
    Path(id): Path<String>,
) -> Result<RawJson, ApiError> {
    get_one(
        &s,
        "rm_aimessages",
        "aimessage",
        &id,
        c.customer_id.as_uuid(),
    )
    .await
}

/// `GET /v1.0/aimessages?aicall_id=`: a conversation's messages in the order they were said
/// (their ids are time-ordered); empty if it has none. Without `aicall_id`: all the
/// customer's messages, newest first.
async fn list_aimessages(
    Extension(s): Extension<Arc<ReadState>>,
    c: CustomerCaller,
    Query(p): Query<Page>,
    Query(f): Query<Filter>,
) -> Result<axum::Json<Value>, ApiError> {
    let customer = c.customer_id.as_uuid();
    let Some(aicall) = uuid_param("aicall_id", &f.aicall_id)? else {
        return list_rows(s.db(customer).await, "rm_aimessages", customer, &p).await;
    };
    let size = p.size()?;
    let after: Option<Uuid> = p.token()?;
    let rows: Vec<(Uuid, Value)> = sqlx::query_as(
        "SELECT id, body FROM rm_aimessages WHERE customer_id = $1 AND aicall_id = $2 \
           AND id > $3 ORDER BY id LIMIT $4",
    )
    .bind(customer)
    .bind(aicall)
    .bind(after.unwrap_or(FIRST_PAGE_ASC))
    .bind(size + 1)
    .fetch_all(s.db(customer).await)
    .await
    .map_err(db_error)?;
    Ok(page_body(
        rows.into_iter()
            .map(|(id, b)| (id.to_string(), b))
            .collect(),
        size,
    ))
}

/// `GET /v1.0/outdials/{id}/targets`: the outdial's targets (none for another tenant's).
async fn list_targets(
    Extension(s): Extension<Arc<ReadState>>,
    c: CustomerCaller,
    Path(id): Path<String>,
    Query(p): Query<Page>,
) -> Result<axum::Json<Value>, ApiError> {
    let outdial = uuid_param("outdial id", &Some(id))?;
    let customer = c.customer_id.as_uuid();
    // Both reads from one server (one choice, one write-mark lookup).
    let db = s.db(customer).await;
    // Another tenant's (or an unknown) outdial is not found, like its other endpoints.
    let owned: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM rm_outdials WHERE id = $1 AND customer_id = $2")
            .bind(outdial)
            .bind(customer)
            .fetch_optional(db)
            .await
            .map_err(|e| ApiError::unavailable("read store unavailable", e))?;
    if owned.is_none() {
        return Err(ApiError::not_found("outdial"));
    }
    let filter = outdial.map(|v| ("outdial_id", v));
    list_rows_where(db, "rm_outdialtargets", customer, &p, filter).await
}

async fn list_campaigncalls(
    Extension(s): Extension<Arc<ReadState>>,
    c: CustomerCaller,
    Query(p): Query<Page>,
    Query(f): Query<Filter>,
) -> Result<axum::Json<Value>, ApiError> {
    let filter = uuid_param("campaign_id", &f.campaign_id)?.map(|v| ("campaign_id", v));
    list_rows_where(
        s.db(c.customer_id.as_uuid()).await,
        "rm_campaigncalls",
        c.customer_id.as_uuid(),
        &p,
        filter,
    )
    .await
}

/// `GET /v1.0/queuecalls?queue_id=`: queue calls, newest first.
async fn list_queuecalls(
    Extension(s): Extension<Arc<ReadState>>,
    c: CustomerCaller,
    Query(p): Query<Page>,
    Query(f): Query<Filter>,
) -> Result<axum::Json<Value>, ApiError> {
    let filter = uuid_param("queue_id", &f.queue_id)?.map(|v| ("queue_id", v));
    list_rows_where(
        s.db(c.customer_id.as_uuid()).await,
        "rm_queuecalls",
        c.customer_id.as_uuid(),
        &p,
        filter,
    )
    .await
}

/// `GET /v1.0/conferencecalls?conference_id=`: conference calls, newest first.
async fn list_conferencecalls(
    Extension(s): Extension<Arc<ReadState>>,
    c: CustomerCaller,
    Query(p): Query<Page>,
    Query(f): Query<Filter>,
) -> Result<axum::Json<Value>, ApiError> {
    let filter = uuid_param("conference_id", &f.conference_id)?.map(|v| ("conference_id", v));
    list_rows_where(
        s.db(c.customer_id.as_uuid()).await,
        "rm_conferencecalls",
        c.customer_id.as_uuid(),
        &p,
        filter,
    )
    .await
}

/// `GET /v1.0/transcripts?transcribe_id=`: a transcription's transcripts in the order they
/// were spoken (`tm_transcript`, then id), keyset-paginated on both. Another customer's
/// transcription has none. Without `transcribe_id`: all the customer's transcripts, newest
/// first, like the other lists.
async fn list_transcripts(
    Extension(s): Extension<Arc<ReadState>>,
    c: CustomerCaller,
    Query(p): Query<Page>,
    Query(f): Query<Filter>,
) -> Result<axum::Json<Value>, ApiError> {
    let customer = c.customer_id.as_uuid();
    let Some(transcribe) = uuid_param("transcribe_id", &f.transcribe_id)? else {
        return list_rows(s.db(customer).await, "rm_transcripts", customer, &p).await;
    };
    let size = p.size()?;
    let after = p
        .token::<String>()?
        .map(|t| {
            t.split_once(':')
                .and_then(|(tm, id)| Some((tm.parse::<i64>().ok()?, id.parse::<Uuid>().ok()?)))
                .ok_or_else(|| ApiError::invalid("page_token is not valid"))
        })
        .transpose()?;
    let (after_tm, after_id) = after.unzip();
    let rows: Vec<(Uuid, i64, Value)> = sqlx::query_as(
        "SELECT id, tm_transcript, body FROM rm_transcripts \
         WHERE customer_id = $1 AND transcribe_id = $2 \
           AND (tm_transcript, id) > ($3, $4) \
         ORDER BY tm_transcript, id LIMIT $5",
    )
    .bind(customer)
    .bind(transcribe)
    .bind(after_tm.unwrap_or(i64::MIN))
    .bind(after_id.unwrap_or(FIRST_PAGE_ASC))
    .bind(size + 1)
    .fetch_all(s.db(customer).await)
    .await
    .map_err(db_error)?;
    Ok(page_body(
        rows.into_iter()
            .map(|(id, tm, b)| (format!("{tm}:{id}"), b))
            .collect(),
        size,
    ))
}

/// `GET /v1.0/customer`: the read model plus, for the customer's admins, the webhook secret,
/// which only the command side's lookup table holds (it never enters the read models, the
/// stream or Redis).
async fn get_customer(
    Extension(s): Extension<Arc<ReadState>>,
    c: CustomerCaller,
) -> Result<axum::Json<Value>, ApiError> {
    let id = c.customer_id.as_uuid();
    let raw = get_row(&s, "rm_customers", id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("customer"))?;
    let mut body: Value = serde_json::from_str(raw.get())
        .map_err(|e| ApiError::internal("decoding a cached customer", e))?;
    if c.permission != vbin_event_schema::Permission::Admin {
        return Ok(axum::Json(body));
    }
    let secret: Option<(String, Option<chrono::DateTime<chrono::Utc>>)> = sqlx::query_as(
        "SELECT secret, previous_valid_until FROM webhook_secrets WHERE customer_id = $1",
    )
    .bind(id)
    .fetch_optional(s.db(id).await)
    .await
    .map_err(db_error)?;
    if let Some((secret, until)) = secret {
        body["webhook_secret"] = json!(secret);
        body["previous_webhook_secret_valid_until"] = json!(until);
    }
    Ok(axum::Json(body))
}

/// Watches for invalidations that some projection process could not deliver (intents older than
/// a second) and makes this process's cache resync before trusting a hit again, so a query API
/// running apart from the projections never serves a value whose invalidation is stuck.
pub async fn watch_invalidations(
    pool: PgPool,
    cache: Cache,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        // The oldest intent by id (ids follow insertion), found at the head of the primary
        // key: a scan for any old `created_at` read the whole table, dead rows included, and
        // under a campaign's churn took 5 ms at 3,000 calls and 32 ms at 20,000. A younger
        // intent ahead of an older one (a long transaction) only delays the alarm until it
        // is swept.
        let stuck: Result<bool, _> = sqlx::query_scalar(
            "SELECT COALESCE((SELECT created_at < now() - interval '1 second' \
                                FROM cache_invalidations ORDER BY id LIMIT 1), false)",
        )
        .fetch_one(&pool)
        .await;
        if let Ok(true) = stuck {
            if cache.needs_resync().is_none() {
                tracing::warn!("cache invalidations are pending; not trusting redis until applied");
            }
            cache.distrust();
        }
    }
}
