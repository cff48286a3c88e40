//! The command side's one error-to-HTTP mapping: body checks answer with [`ApiError`] directly,
//! use cases with [`AppError`]; both become the error envelope here.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use vbin_app::{AppError, ExecError};
use vbin_domain::DomainError;
use vbin_http::error::chain;
use vbin_http::extract::Json;
use vbin_http::ApiError;

/// What a command handler answers: the resource's view, or the error envelope.
pub type ApiResult = Result<Json<Value>, CmdError>;

/// A command handler's failure, as the envelope it answers with.
#[derive(Debug)]
pub struct CmdError(pub ApiError);

impl IntoResponse for CmdError {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

impl From<ApiError> for CmdError {
    fn from(e: ApiError) -> Self {
        CmdError(e)
    }
}

impl From<ExecError> for CmdError {
    fn from(e: ExecError) -> Self {
        CmdError::from(AppError::Exec(e))
    }
}

impl From<sqlx::Error> for CmdError {
    fn from(e: sqlx::Error) -> Self {
        CmdError::from(AppError::Database(e))
    }
}

impl From<AppError> for CmdError {
    fn from(e: AppError) -> Self {
        CmdError(match e {
            AppError::Exec(ExecError::Domain(DomainError::NotFound(what)))
            | AppError::NotFound(what) => ApiError::not_found(what),
            AppError::Exec(ExecError::Domain(DomainError::AlreadyExists(m))) => {
                ApiError::conflict(m)
            }
            AppError::Exec(ExecError::Domain(DomainError::FailedPrecondition(m))) => {
                ApiError::new(StatusCode::CONFLICT, "failed_precondition", m)
            }
            AppError::Exec(ExecError::Domain(DomainError::Invalid(m))) | AppError::Invalid(m) => {
                ApiError::invalid(m)
            }
            AppError::Exec(ExecError::Conflict) => {
                ApiError::conflict("concurrent modification; retry the request")
            }
            AppError::Exec(ExecError::Taken(what)) => {
                ApiError::conflict(format!("{what} is already taken"))
            }
            AppError::Exec(ExecError::AlreadyApplied) => ApiError::conflict("already applied"),
            AppError::Conflict(m) => ApiError::conflict(m),
            AppError::Limit(m) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "limit_reached", m),
            AppError::PaymentRequired => ApiError::new(
                StatusCode::PAYMENT_REQUIRED,
                "payment_required",
                AppError::PaymentRequired.to_string(),
            ),
            e @ AppError::Exec(ExecError::Store(_)) => {
                ApiError::unavailable("event store unavailable", chain(&e))
            }
            e @ AppError::Database(_) => ApiError::unavailable("database unavailable", chain(&e)),
        })
    }
}
