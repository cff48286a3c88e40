//! vbin's webhook delivery. This module: what is sent for an event — the body and the signed
//! headers of API.md "Webhooks" — as pure functions.

pub mod signing;

pub use signing::{body_for, signed_headers, Secrets};
