//! Prometheus metrics of the API server: requests, watchers, watch caches and store latency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::catalog::Catalog;
use crate::store::{
    Deleted, KeyValue, ListOptions, ListResult, Result, Revision, Store, WatchStream,
};

/// Labels of a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
    /// The resource (`tasks`, `tasks/status`), or the path for non-resource requests.
    pub resource: String,
    /// The HTTP code.
    pub code: String,
}

/// Labels of a latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    /// The verb.
    pub verb: String,
    /// The resource.
    pub resource: String,
}

/// Labels naming a resource.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    /// The resource.
    pub resource: String,
}

/// Labels of a refused request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Which cap refused it (`watches-per-user`, `mutating-inflight`, …).
    pub reason: String,
}

/// Labels of a failed authentication.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthenticationLabels {
    /// `no_credential` (where one is required) or `invalid_credential`.
    pub reason: String,
}

/// Labels naming a store operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// get, list, create, update, delete, watch, compact.
    pub operation: String,
}

/// The subresources the API serves: only these become part of a `resource`
/// label. Any other path segment is a client's choice and would add a label
/// value (and a time series) forever.
pub const KNOWN_SUBRESOURCES: &[&str] = &["status", "log", "binding", "finalize", "token", "scale"];

/// The `resource` label of a request for `plural` (a resource the catalog
/// serves) and its subresource: `tasks`, `tasks/status`, or `tasks/unknown`
/// for a subresource the API does not have.
pub fn resource_label(plural: &str, subresource: Option<&str>) -> String {
    match subresource {
        None => plural.to_owned(),
        Some(sub) if KNOWN_SUBRESOURCES.contains(&sub) => format!("{plural}/{sub}"),
        Some(_) => format!("{plural}/unknown"),
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.5, 14))
}

/// Every metric the API server exports.
pub struct Metrics {
    registry: Registry,
    /// Requests by verb, resource and code.
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency by verb and resource.
    pub latency: Family<VerbLabels, Histogram, fn() -> Histogram>,
    /// Open watches by resource.
    pub watchers: Family<ResourceLabels, Gauge>,
    cache_objects: Family<ResourceLabels, Gauge>,
    cache_events: Family<ResourceLabels, Gauge>,
    slow_watchers: Family<ResourceLabels, Gauge>,
    /// Store operation latency.
    pub store_latency: Family<OperationLabels, Histogram, fn() -> Histogram>,
    /// Requests refused by authentication, by reason.
    pub authentication_failures: Family<AuthenticationLabels, Counter>,
    /// Requests refused with 429, by the cap that refused them.
    pub rejected_requests: Family<ReasonLabels, Counter>,
    /// Audit events written to the audit log.
    pub audit_events: Counter,
    /// Audit events lost: the writer's queue was full, or the write failed.
    pub audit_events_dropped: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("loom_apiserver");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "API requests by verb, resource and code",
            requests.clone(),
        );
        let latency = Family::<VerbLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "request_duration_seconds",
            "API request latency (watches: until the stream starts)",
            latency.clone(),
        );
        let watchers = Family::<ResourceLabels, Gauge>::default();
        registry.register("watchers", "Open watch streams", watchers.clone());
        let cache_objects = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "watch_cache_objects",
            "Objects held in the watch cache",
            cache_objects.clone(),
        );
        let cache_events = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "watch_cache_events",
            "Events held in the watch cache's ring",
            cache_events.clone(),
        );
        let slow_watchers = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "watch_cache_slow_watchers_dropped",
            "Watchers cut off because they fell behind",
            slow_watchers.clone(),
        );
        let store_latency =
            Family::<OperationLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "store_duration_seconds",
            "Store operation latency",
            store_latency.clone(),
        );
        let rejected_requests = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "rejected_requests",
            "Requests refused with 429 Too Many Requests, by the cap that refused them",
            rejected_requests.clone(),
        );
        let audit_events = Counter::default();
        registry.register(
            "audit_events",
            "Audit events written to the audit log",
            audit_events.clone(),
        );
        let audit_events_dropped = Counter::default();
        registry.register(
            "audit_events_dropped",
            "Audit events lost because the audit writer's queue was full or a write failed",
            audit_events_dropped.clone(),
        );
        let authentication_failures = Family::<AuthenticationLabels, Counter>::default();
        registry.register(
            "authentication_failures",
            "Requests refused with 401: a bad credential, or none where one is required",
            authentication_failures.clone(),
        );
        Arc::new(Metrics {
            authentication_failures,
            registry,
            requests,
            latency,
            watchers,
            cache_objects,
            cache_events,
            slow_watchers,
            store_latency,
            rejected_requests,
            audit_events,
            audit_events_dropped,
        })
    }

    /// Counts a request refused with 429 by the cap `reason`.
    pub fn rejected(&self, reason: &str) {
        self.rejected_requests
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a request refused by authentication.
    pub fn authentication_failure(&self, reason: &str) {
        self.authentication_failures
            .get_or_create(&AuthenticationLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Records one request.
    pub fn request(&self, verb: &str, resource: &str, code: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                verb: verb.to_owned(),
                resource: resource.to_owned(),
                code: code.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&VerbLabels {
                verb: verb.to_owned(),
                resource: resource.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The text exposition, with the watch caches' sizes read now.
    pub fn render(&self, catalog: &Catalog) -> String {
        for resource in catalog.resources() {
            let labels = ResourceLabels {
                resource: resource.group_resource().to_string(),
            };
            let (objects, events, _) = resource.cache.sizes();
            self.cache_objects
                .get_or_create(&labels)
                .set(objects as i64);
            self.cache_events.get_or_create(&labels).set(events as i64);
            let dropped = resource
                .cache
                .stats
                .slow_watchers_dropped
                .load(std::sync::atomic::Ordering::Relaxed);
            self.slow_watchers
                .get_or_create(&labels)
                .set(i64::try_from(dropped).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

/// A store that times every operation.
#[derive(Clone)]
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for MeteredStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredStore").finish_non_exhaustive()
    }
}

impl MeteredStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        MeteredStore { inner, metrics }
    }

    fn observe(&self, operation: &str, started: Instant) {
        self.metrics
            .store_latency
            .get_or_create(&OperationLabels {
                operation: operation.to_owned(),
            })
            .observe(started.elapsed().as_secs_f64());
    }
}

#[async_trait]
impl Store for MeteredStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let started = Instant::now();
        let result = self.inner.get(key).await;
        self.observe("get", started);
        result
    }

    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListResult> {
        let started = Instant::now();
        let result = self.inner.list(prefix, options).await;
        self.observe("list", started);
        result
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        let started = Instant::now();
        let result = self.inner.create(key, value).await;
        self.observe("create", started);
        result
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue> {
        let started = Instant::now();
        let result = self.inner.update(key, value, expected).await;
        self.observe("update", started);
        result
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Deleted> {
        let started = Instant::now();
        let result = self.inner.delete(key, expected).await;
        self.observe("delete", started);
        result
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        self.inner.watch(prefix, after).await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let started = Instant::now();
        let result = self.inner.compact(revision).await;
        self.observe("compact", started);
        result
    }

    async fn current_revision(&self) -> Result<Revision> {
        self.inner.current_revision().await
    }

    async fn snapshot(&self) -> Result<crate::store::Snapshot> {
        let started = Instant::now();
        let result = self.inner.snapshot().await;
        self.observe("snapshot", started);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_subresources_become_labels() {
        assert_eq!(resource_label("tasks", None), "tasks");
        assert_eq!(resource_label("tasks", Some("status")), "tasks/status");
        assert_eq!(resource_label("tasks", Some("log")), "tasks/log");
        assert_eq!(
            resource_label("tasks", Some("garbage-sub")),
            "tasks/unknown"
        );
    }
}
