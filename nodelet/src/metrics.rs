//! Prometheus metrics of the nodelet, served at `/metrics` on its endpoint.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// How a run ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndLabels {
    /// The task's phase after the run (`Running` when it restarts).
    pub phase: String,
    /// The reason (`Error`, `OOMKilled`, `TimeLimitExceeded`, ...), empty if none.
    pub reason: String,
}

/// Every metric the nodelet exports.
pub struct Metrics {
    registry: Registry,
    /// Runs started.
    pub runs_started: Counter,
    /// Runs ended, by outcome.
    pub runs_ended: Family<EndLabels, Counter>,
    /// Runs whose process runs now.
    pub running: Gauge,
    /// Seconds from a run's start request to its process running.
    pub start_seconds: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("loom_nodelet");
        let runs_started = Counter::default();
        let runs_ended = Family::<EndLabels, Counter>::default();
        let running = Gauge::default();
        let start_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "runs_started",
            "Runs of tasks started",
            runs_started.clone(),
        );
        registry.register(
            "runs_ended",
            "Runs of tasks ended, by the task's phase and reason",
            runs_ended.clone(),
        );
        registry.register("running", "Runs whose process runs now", running.clone());
        registry.register(
            "start_seconds",
            "Seconds from a run's start to its process running (shim and container creation)",
            start_seconds.clone(),
        );
        Metrics {
            registry,
            runs_started,
            runs_ended,
            running,
            start_seconds,
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
