//! vbin's webhook delivery: what is sent for an event (the body and signed headers of API.md
//! "Webhooks", pure functions in [`signing`]) and the durable delivery ([`delivery`]).

pub mod api;
pub mod delivery;
pub mod direct;
/// The SSRF guard (its own crate, shared with flows and media).
pub use vbin_netguard as guard;
pub mod retention;
pub mod signing;

pub use api::routes;
pub use signing::{body_for, signed_headers, Secrets};
