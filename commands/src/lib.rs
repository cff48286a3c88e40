//! vbin's command REST API (axum): the handlers that turn requests into use cases of the
//! application layer (`vbin-app`), with their body checks and the one error-to-HTTP mapping
//! of the command side.

pub mod api;
pub mod password;

pub use api::{routes, CmdState};
