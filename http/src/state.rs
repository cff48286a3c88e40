//! The state the edge's middleware and routes read: no command executor, no read models.

use crate::auth::AuthKeys;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use vbin_bus::Bus;

/// What the edge itself needs: no command executor, no read models.
#[derive(Clone)]
pub struct HttpState {
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
