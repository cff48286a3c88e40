//! The state the edge's middleware and routes read: no command executor, no read models.

use crate::auth::AuthKeys;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use std::sync::Arc;
use vbin_bus::Bus;

/// What the edge itself needs: no command executor, no read models. Cloned for every request
/// (by each middleware and extractor), so it is one `Arc`: cloning the parts themselves (the
/// NATS client's channel, the caches, the Redis URL) cost a third of a cached GET's CPU.
#[derive(Clone)]
pub struct HttpState(Arc<HttpParts>);

/// The parts of [`HttpState`].
pub struct HttpParts {
    /// Postgres (token lookups, idempotency records, readiness).
    pub pool: PgPool,
    /// Authentication keys and the resolved-token cache.
    pub keys: AuthKeys,
    /// NATS (for readiness).
    pub bus: Bus,
    /// Redis (for readiness), if this process uses it.
    pub redis: Option<redis::Client>,
    /// Prometheus registry.
    pub metrics: Option<PrometheusHandle>,
}

impl HttpState {
    /// The state of `parts`.
    pub fn new(parts: HttpParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for HttpState {
    type Target = HttpParts;
    fn deref(&self) -> &HttpParts {
        &self.0
    }
}
