//! What every command handler reads: the shared state and who a request acts as.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use vbin_app::{Acting, App};
use vbin_event_schema::CustomerId;
use vbin_http::auth::{AuthKeys, Caller};
use vbin_http::extract::CustomerCaller;
use vbin_http::ApiError;

/// What the command handlers share: the application and the authentication keys (logins
/// issue tokens; deleting an agent or key revokes cached ones).
#[derive(Clone)]
pub struct CmdState {
    /// The use cases.
    pub app: App,
    /// Authentication keys.
    pub keys: AuthKeys,
}

/// The command metadata of the current request for `caller` acting on `customer`.
pub fn acting(caller: &Caller, customer: CustomerId) -> Acting {
    Acting::request(&caller.actor(), &vbin_http::error::request_id(), customer)
}

/// A customer's command request: the caller, and what its commands act as.
pub struct Tenant {
    /// The authenticated customer identity.
    pub caller: CustomerCaller,
    /// Tenant and metadata for the commands.
    pub acting: Acting,
}

impl<S: Send + Sync> FromRequestParts<S> for Tenant {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, s: &S) -> Result<Self, ApiError> {
        let caller = CustomerCaller::from_request_parts(parts, s).await?;
        let acting = acting(&caller.caller, caller.customer_id);
        Ok(Tenant { caller, acting })
    }
}
