//! vbin's WebSocket gateway (`GET /v1.0/ws`): clients subscribe to topics
//! (`customer_id:<id>:<resource>:<id|*>`) and receive the matching events as they are
//! committed, each with an offset to resume from after a reconnect.

pub mod hub;
pub mod topic;
pub mod ws;

pub use hub::{Hub, Settings};

use std::sync::Arc;

/// The WebSocket route, served by `hub`; connections close when `stop` turns true.
pub fn routes(
    hub: Arc<Hub>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> axum::Router<vbin_http::HttpState> {
    axum::Router::new()
        .route("/v1.0/ws", axum::routing::get(ws::upgrade))
        .layer(axum::Extension(hub))
        .layer(axum::Extension(stop))
}
