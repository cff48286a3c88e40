use thiserror::Error;

/// Why an aggregate refused a command. Each maps to one HTTP status in the API crates.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DomainError {
    /// The aggregate (or an entity inside it) does not exist. HTTP 404.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The thing to create exists already. HTTP 409.
    #[error("{0}")]
    AlreadyExists(String),
    /// The command is valid in form but not allowed in the current state. HTTP 409.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The command's content is invalid. HTTP 400.
    #[error("{0}")]
    Invalid(String),
}
