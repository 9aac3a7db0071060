//! Prometheus metrics of the proxy, served at `/metrics` on its endpoint; the
//! autoscaler reads `loom_proxy_active_connections` (concurrency per Service).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A Service, `namespace/name`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// `namespace/name`.
    pub service: String,
}

type HistogramFamily = Family<ServiceLabels, Histogram, fn() -> Histogram>;

fn cold_start_histogram() -> Histogram {
    // 50 ms to ~100 s.
    Histogram::new(exponential_buckets(0.05, 2.0, 12))
}

/// Every metric the proxy exports. Cheap to clone (shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Connections proxied, by Service.
    pub connections: Family<ServiceLabels, Counter>,
    /// Connections open now, by Service.
    pub active: Family<ServiceLabels, Gauge>,
    /// Connections no endpoint took, by Service.
    pub failed: Family<ServiceLabels, Counter>,
    /// Connections to an address no Service has.
    pub unrouted: Counter,
    /// Seconds a held connection waited for a Service scaling from zero.
    pub cold_start: HistogramFamily,
    /// Held connections no endpoint came up for in time.
    pub cold_start_timeouts: Family<ServiceLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("loom_proxy");
        let connections = Family::<ServiceLabels, Counter>::default();
        let active = Family::<ServiceLabels, Gauge>::default();
        let failed = Family::<ServiceLabels, Counter>::default();
        let unrouted = Counter::default();
        let cold_start: HistogramFamily = Family::new_with_constructor(cold_start_histogram);
        let cold_start_timeouts = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "connections",
            "Connections proxied to a Service's endpoints",
            connections.clone(),
        );
        registry.register(
            "active_connections",
            "Connections to a Service open now (its concurrency at this node)",
            active.clone(),
        );
        registry.register(
            "failed_connections",
            "Connections to a Service no endpoint accepted",
            failed.clone(),
        );
        registry.register(
            "unrouted_connections",
            "Connections to a virtual address no Service has",
            unrouted.clone(),
        );
        registry.register(
            "cold_start_seconds",
            "Seconds a connection waited for a Service scaling from zero to have an endpoint",
            cold_start.clone(),
        );
        registry.register(
            "cold_start_timeouts",
            "Held connections for which no endpoint came up in time",
            cold_start_timeouts.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            connections,
            active,
            failed,
            unrouted,
            cold_start,
            cold_start_timeouts,
        }
    }
}

impl Metrics {
    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
