//! Extractors whose rejections use the error envelope, and caller guards.

use super::error::ApiError;
use crate::auth::Caller;
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::request::Parts;
use vbin_event_schema::{CustomerId, Permission};

/// `axum::Json` with envelope errors.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

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
