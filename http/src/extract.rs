//! Extractors whose rejections use the error envelope, and caller guards.

use crate::auth::Caller;
use crate::error::ApiError;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use vbin_event_schema::{CustomerId, Permission};

/// `axum::Json` with envelope errors, refusing strings that contain U+0000.
///
/// Postgres stores neither a NUL character in `text` nor the `\u0000` escape in `jsonb`, so such
/// a string would fail at the database (a 503 for what is the client's mistake); it is refused
/// here with a 400 instead, wherever it is in the body (a value or an object key).
pub struct Json<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Expected request with `Content-Type: application/json`",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|r| {
                let (status, reason) = match r.status() {
                    StatusCode::PAYLOAD_TOO_LARGE => (r.status(), "payload_too_large"),
                    _ => (StatusCode::BAD_REQUEST, "invalid_argument"),
                };
                ApiError::new(status, reason, r.body_text())
            })?;
        if has_nul_escape(&bytes) {
            return Err(ApiError::invalid(
                "strings must not contain the NUL character (\\u0000)",
            ));
        }
        let axum::Json(value) = axum::Json::<T>::from_bytes(&bytes)?;
        Ok(Json(value))
    }
}

/// `application/json` or `application/<anything>+json` (what `axum::Json` accepts).
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or_default().trim();
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    let sub = sub.to_ascii_lowercase();
    kind.eq_ignore_ascii_case("application") && (sub == "json" || sub.ends_with("+json"))
}

/// Whether a JSON text holds the escape `\u0000` (a raw NUL byte is not valid JSON anyway).
/// Backslashes only occur in strings, each starting an escape, so a pair is skipped whole:
/// `\\u0000` is a backslash followed by the text `u0000`, not a NUL.
fn has_nul_escape(json: &[u8]) -> bool {
    let mut i = 0;
    while i < json.len() {
        if json[i] == b'\\' {
            if json[i + 1..].starts_with(b"u0000") {
                return true;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Query` with envelope errors: a malformed or repeated parameter is a 400
/// JSON error like any other bad input (axum's own rejection is plain text).
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// `axum::extract::Path` with envelope errors.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(ApiError::unauthenticated)
    }
}

/// The platform admin.
pub struct Admin;

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, s: &S) -> Result<Self, ApiError> {
        match Caller::from_request_parts(parts, s).await? {
            Caller::Admin => Ok(Admin),
            _ => Err(ApiError::forbidden("platform admin token required")),
        }
    }
}

/// Any authenticated customer identity.
pub struct CustomerCaller {
    /// Tenant.
    pub customer_id: CustomerId,
    /// The whole caller.
    pub caller: Caller,
    /// Permission.
    pub permission: Permission,
}

impl<S: Send + Sync> FromRequestParts<S> for CustomerCaller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, s: &S) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, s).await?;
        match &caller {
            Caller::Customer {
                customer_id,
                permission,
                ..
            } => Ok(CustomerCaller {
                customer_id: *customer_id,
                permission: *permission,
                caller,
            }),
            Caller::Admin => Err(ApiError::forbidden(
                "this endpoint needs a customer's token",
            )),
        }
    }
}

/// A customer identity with admin permission.
pub struct CustomerAdmin(pub CustomerCaller);

impl<S: Send + Sync> FromRequestParts<S> for CustomerAdmin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, s: &S) -> Result<Self, ApiError> {
        let c = CustomerCaller::from_request_parts(parts, s).await?;
        if c.permission != Permission::Admin {
            return Err(ApiError::forbidden("admin permission required"));
        }
        Ok(CustomerAdmin(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_escapes_are_found_only_where_they_are() {
        for (json, nul) in [
            (r#"{"a":"x\u0000"}"#, true),
            (r#"{"\u0000":1}"#, true),
            (r#"["\\\u0000"]"#, true),
            (r#"{"a":"\\u0000"}"#, false),
            (r#"{"a":"\u00001"}"#, true),
            (r#"{"a":"\u0001"}"#, false),
            (r#"{"a":"u0000"}"#, false),
            (r#"{"a":"\""}"#, false),
            ("\\", false),
        ] {
            assert_eq!(has_nul_escape(json.as_bytes()), nul, "{json}");
        }
    }

    #[test]
    fn json_content_types() {
        for (ct, ok) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("Application/JSON", true),
            ("application/vnd.api+json", true),
            ("text/json", false),
            ("application/jsonx", false),
            ("text/plain", false),
            ("", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            assert_eq!(json_content_type(&h), ok, "{ct}");
        }
        assert!(!json_content_type(&HeaderMap::new()));
    }
}
