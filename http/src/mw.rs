//! Middleware: request ids and access metrics, authentication, Idempotency-Key replay.

use crate::auth::Caller;
use crate::error::{ApiError, REQUEST_ID};
use crate::state::HttpState;
use axum::body::{to_bytes, Body};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Largest request body accepted anywhere.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

fn valid_request_id(v: &str) -> bool {
    (1..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Assigns the request id (client's if sane), opens the request span, records metrics, and turns
/// the router's bare 405s into the error envelope.
pub async fn request_context(req: Request, next: Next) -> Response {
    let rid = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    let span = tracing::info_span!("http", request_id = %rid, %method, route = %route, customer_id = tracing::field::Empty);
    let started = Instant::now();
    let mut resp = REQUEST_ID
        .scope(rid.clone(), next.run(req).instrument(span.clone()))
        .await;
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED
        && !resp.headers().contains_key("content-type")
    {
        let allow = resp.headers().get("allow").cloned();
        resp = REQUEST_ID
            .scope(rid.clone(), async {
                ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "method not allowed",
                )
                .into_response()
            })
            .await;
        if let Some(a) = allow {
            resp.headers_mut().insert("allow", a);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&rid) {
        resp.headers_mut().insert(X_REQUEST_ID.clone(), v);
    }
    let status = resp.status().as_u16().to_string();
    metrics::counter!("vbin_http_requests_total", "method" => method.to_string(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("vbin_http_request_duration_seconds", "method" => method.to_string(), "route" => route).record(started.elapsed().as_secs_f64());
    if resp.status().is_server_error() {
        span.in_scope(|| tracing::warn!(status = resp.status().as_u16(), "request failed"));
    }
    resp
}

/// The bearer from `Authorization`, `?token=` or `?accesskey=`.
pub fn bearer(req: &Request) -> Option<String> {
    if let Some(h) = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
    {
        return h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
            .map(|t| t.trim().to_owned());
    }
    req.uri().query().and_then(|q| {
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == "token" || k == "accesskey").then(|| v.to_owned())
        })
    })
}

/// Resolves the bearer (if any) to a [`Caller`] extension. A bearer that does not resolve is a
/// 401 at once; no bearer leaves the decision to the handler's extractor.
pub async fn authenticate(
    State(state): State<HttpState>,
    mut req: Request,
    next: Next,
) -> Response {
    if let Some(token) = bearer(&req) {
        match state.keys.resolve(&state.pool, &token).await {
            Ok(Some(caller)) => {
                if let Some(c) = caller.customer_id() {
                    tracing::Span::current().record("customer_id", tracing::field::display(c));
                }
                req.extensions_mut().insert(caller);
            }
            Ok(None) => return ApiError::unauthenticated().into_response(),
            Err(e) => {
                return ApiError::unavailable("authentication store unavailable", e).into_response()
            }
        }
    }
    next.run(req).await
}

/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_TTL_HOURS: i64 = 24;
/// An in-progress record older than this is treated as abandoned (its process died) and the
/// retry runs the request again — safely, see [`vbin_eventlog::reexec`].
const IN_PROGRESS_TIMEOUT_SECS: i64 = 10;

/// `Idempotency-Key` on POST: the same key and request within 24 h returns the first
/// response (marked `Idempotent-Replayed: true`); the same key with another request is 422;
/// while the first is still running, 409. 5xx responses are not kept (the retry runs again,
/// with the same seed).
/// A retry of a request whose process died before answering runs it again with the same seed
/// (see [`vbin_eventlog::reexec`]): whatever the first attempt committed is committed once.
pub async fn idempotency(State(state): State<HttpState>, req: Request, next: Next) -> Response {
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (Some(key), true) = (key, req.method() == Method::POST) else {
        return next.run(req).await;
    };
    if key.is_empty() || key.len() > 255 {
        return ApiError::invalid("Idempotency-Key must be 1 to 255 characters").into_response();
    }
    let scope = match req.extensions().get::<Caller>() {
        Some(Caller::Admin) => "admin".to_string(),
        Some(Caller::Customer { customer_id, .. }) => customer_id.to_string(),
        None => return next.run(req).await,
    };
    let (parts, body) = req.into_parts();
    let bytes = match to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body too large",
            )
            .into_response()
        }
    };
    let mut h = Sha256::new();
    h.update(parts.method.as_str());
    h.update([0]);
    h.update(parts.uri.path());
    h.update([0]);
    h.update(&bytes);
    let hash = h.finalize().to_vec();

    let seed = match claim(&state, &scope, &key, &hash).await {
        Err(e) => return ApiError::unavailable("idempotency store unavailable", e).into_response(),
        Ok(Claim::Replay(status, body)) => {
            let mut resp = Response::new(Body::from(body));
            *resp.status_mut() = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK);
            resp.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            resp.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return resp;
        }
        Ok(Claim::Mismatch) => {
            return ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request",
            )
            .into_response()
        }
        Ok(Claim::InProgress) => {
            return ApiError::conflict("a request with this Idempotency-Key is still in progress")
                .into_response()
        }
        Ok(Claim::Mine(seed)) => seed,
    };
    let resp = vbin_eventlog::reexec::with_seed(
        seed,
        next.run(Request::from_parts(parts, Body::from(bytes))),
    )
    .await;
    let status = resp.status();
    let (rparts, rbody) = resp.into_parts();
    let rbytes = to_bytes(rbody, 4 * 1024 * 1024).await.unwrap_or_default();
    let store = if status.is_server_error() {
        // Not kept, but not forgotten either: some of the request's commands may have been
        // committed before it failed, so the retry must run with the same seed. Marking the
        // attempt abandoned lets the next retry take it over at once.
        sqlx::query(
            "UPDATE idempotency_keys SET created_at = now() - make_interval(secs => $3) \
             WHERE scope = $1 AND key = $2",
        )
        .bind(&scope)
        .bind(&key)
        .bind((IN_PROGRESS_TIMEOUT_SECS + 1) as f64)
        .execute(&state.pool)
        .await
    } else {
        sqlx::query("UPDATE idempotency_keys SET status_code = $3, response = $4 WHERE scope = $1 AND key = $2")
            .bind(&scope)
            .bind(&key)
            .bind(status.as_u16() as i32)
            .bind(rbytes.to_vec())
            .execute(&state.pool)
            .await
    };
    if let Err(e) = store {
        tracing::error!(error = %e, "could not record idempotency result");
    }
    Response::from_parts(rparts, Body::from(rbytes))
}

/// request_hash, status_code, response of a stored idempotency record.
type StoredResult = (Vec<u8>, Option<i32>, Option<Vec<u8>>);

enum Claim {
    /// Run the request, with this id seed.
    Mine(uuid::Uuid),
    Replay(i32, Vec<u8>),
    Mismatch,
    InProgress,
}

async fn claim(
    state: &HttpState,
    scope: &str,
    key: &str,
    hash: &[u8],
) -> Result<Claim, sqlx::Error> {
    // Expired records are released first, then the key is claimed atomically.
    sqlx::query(
        "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND \
         created_at < now() - make_interval(hours => $3)",
    )
    .bind(scope)
    .bind(key)
    .bind(IDEMPOTENCY_TTL_HOURS as i32)
    .execute(&state.pool)
    .await?;
    let mine: Option<uuid::Uuid> = sqlx::query_scalar(
        "INSERT INTO idempotency_keys (scope, key, request_hash, id_seed) VALUES ($1, $2, $3, $4) \
         ON CONFLICT DO NOTHING RETURNING id_seed",
    )
    .bind(scope)
    .bind(key)
    .bind(hash)
    .bind(uuid::Uuid::now_v7())
    .fetch_optional(&state.pool)
    .await?;
    if let Some(seed) = mine {
        return Ok(Claim::Mine(seed));
    }
    // An abandoned attempt of the same request: take it over, keeping its seed.
    let taken: Option<Option<uuid::Uuid>> = sqlx::query_scalar(
        "UPDATE idempotency_keys SET created_at = now() \
         WHERE scope = $1 AND key = $2 AND request_hash = $3 AND status_code IS NULL \
           AND created_at < now() - make_interval(secs => $4) \
         RETURNING id_seed",
    )
    .bind(scope)
    .bind(key)
    .bind(hash)
    .bind(IN_PROGRESS_TIMEOUT_SECS as f64)
    .fetch_optional(&state.pool)
    .await?;
    if let Some(seed) = taken {
        tracing::warn!(
            key,
            "taking over an abandoned attempt of this Idempotency-Key"
        );
        return Ok(Claim::Mine(seed.unwrap_or_else(uuid::Uuid::now_v7)));
    }
    let row: Option<StoredResult> = sqlx::query_as(
        "SELECT request_hash, status_code, response FROM idempotency_keys WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .fetch_optional(&state.pool)
    .await?;
    Ok(match row {
        None => Claim::InProgress,
        Some((h, _, _)) if h != hash => Claim::Mismatch,
        Some((_, Some(status), Some(body))) => Claim::Replay(status, body),
        Some(_) => Claim::InProgress,
    })
}

/// Deletes `Idempotency-Key` records older than their 24 h lifetime and the once-keys of those
/// requests' commands (kept twice as long, so a record never outlives its once-keys); returns
/// how many rows went.
pub async fn prune_idempotency(pool: &sqlx::PgPool) -> Result<u64, sqlx::Error> {
    let ttl = Duration::from_secs(IDEMPOTENCY_TTL_HOURS as u64 * 3_600);
    let keys = vbin_migrations::delete_in_batches(
        pool,
        "DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(SELECT ctid FROM idempotency_keys \
         WHERE created_at < now() - make_interval(secs => $1) LIMIT $2))",
        ttl,
    )
    .await?;
    let once = vbin_migrations::delete_in_batches(
        pool,
        "DELETE FROM processed_commands WHERE ctid = ANY(ARRAY(SELECT ctid FROM processed_commands \
         WHERE key LIKE 'request:%' AND recorded_at < now() - make_interval(secs => $1) \
         LIMIT $2))",
        2 * ttl,
    )
    .await?;
    Ok(keys + once)
}
