//! The metrics every topo program shares, and how they are served.
//!
//! The list/watch machine counts its own restarts and relists, every etcd request that
//! goes through [`etcd_timed`] lands in one latency histogram, and both programs count
//! their reconciles with [`reconciled`] (the agent per key, the controller per leader
//! pass): the families live here, once, as process-wide statics (a family is cheap to clone and every clone counts into the same cells). Each
//! program registers them with [`register_shared`] next to its own families and answers
//! `/metrics` with [`render`], Prometheus's text format 0.0.4 (what `promtool check
//! metrics` and every Prometheus version read). Names carry the `topo_` prefix of the
//! registry and the base unit (seconds) as their suffix.

use std::sync::LazyLock;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Labels naming one list/watch machine (`slice`, `cache`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct WatchLabels {
    pub watch: &'static str,
}

/// Labels naming one kind of etcd request (`list`, `watch`, `txn`, `put`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EtcdLabels {
    pub op: &'static str,
}

/// Labels of one reconcile: what was reconciled and how it ended (success, error).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// One reconcile takes from a millisecond (nothing to do) to tens of seconds (an image
/// pulled, a large pass of the leader).
fn reconcile_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Request latencies from 0.5 ms to about 8 s (etcd's own timeout is at most 5 s).
fn etcd_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

static WATCH_RESTARTS: LazyLock<Family<WatchLabels, Counter>> = LazyLock::new(Family::default);
static WATCH_RELISTS: LazyLock<Family<WatchLabels, Counter>> = LazyLock::new(Family::default);
static ETCD_REQUESTS: LazyLock<HistogramFamily<EtcdLabels>> =
    LazyLock::new(|| Family::new_with_constructor(etcd_histogram as fn() -> Histogram));

static RECONCILES: LazyLock<Family<ReconcileLabels, Counter>> = LazyLock::new(Family::default);
static RECONCILE_SECONDS: LazyLock<HistogramFamily<ReconcileLabels>> =
    LazyLock::new(|| Family::new_with_constructor(reconcile_histogram as fn() -> Histogram));

/// One reconcile of `kind` finished after `took`.
pub fn reconciled(kind: &'static str, ok: bool, took: std::time::Duration) {
    let labels = ReconcileLabels {
        kind,
        result: if ok { "success" } else { "error" },
    };
    RECONCILES.get_or_create(&labels).inc();
    RECONCILE_SECONDS
        .get_or_create(&labels)
        .observe(took.as_secs_f64());
}

/// A machine named `watch` exists: its series start at 0, so a dashboard shows a flat
/// line rather than no data until the first restart.
pub(crate) fn watch_created(watch: &'static str) {
    let labels = WatchLabels { watch };
    let _ = WATCH_RESTARTS.get_or_create(&labels);
    let _ = WATCH_RELISTS.get_or_create(&labels);
}

/// A watch was opened again from a kept revision (after a disconnect).
pub(crate) fn watch_restarted(watch: &'static str) {
    WATCH_RESTARTS.get_or_create(&WatchLabels { watch }).inc();
}

/// A watched revision was compacted and the range listed again.
pub(crate) fn watch_relisted(watch: &'static str) {
    WATCH_RELISTS.get_or_create(&WatchLabels { watch }).inc();
}

/// Runs one etcd request and records how long it took (also when it failed: a slow
/// failure is what an operator looks for).
pub async fn etcd_timed<T>(op: &'static str, request: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let out = request.await;
    ETCD_REQUESTS
        .get_or_create(&EtcdLabels { op })
        .observe(started.elapsed().as_secs_f64());
    out
}

/// A registry with the `topo_` prefix holding the shared families.
pub fn registry() -> Registry {
    let mut reg = Registry::with_prefix("topo");
    reg.register(
        "reconciles",
        "Reconciles by kind and result (agent: per key kind; controller: derive, a pass of the leader)",
        RECONCILES.clone(),
    );
    reg.register_with_unit(
        "reconcile_duration",
        "How long reconciles took, by kind and result",
        Unit::Seconds,
        RECONCILE_SECONDS.clone(),
    );
    reg.register(
        "watch_restarts",
        "Watches of etcd opened again from a kept revision after a disconnect",
        WATCH_RESTARTS.clone(),
    );
    reg.register(
        "watch_relists",
        "Ranges listed again because the watched revision was compacted",
        WATCH_RELISTS.clone(),
    );
    reg.register_with_unit(
        "etcd_request_duration",
        "Latency of etcd requests by operation",
        Unit::Seconds,
        ETCD_REQUESTS.clone(),
    );
    reg
}

/// The registry's metrics in Prometheus's text format.
pub fn render(reg: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; an encoding error would be a bug in a family.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, reg) {
        tracing::error!(error = %e, "failed to encode the metrics");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shared_families_render_with_prefix_and_unit() {
        watch_restarted("slice");
        watch_relisted("slice");
        etcd_timed("txn", async {}).await;
        let text = render(&registry());
        assert!(
            text.contains("topo_watch_restarts_total{watch=\"slice\"} "),
            "{text}"
        );
        assert!(
            text.contains("topo_watch_relists_total{watch=\"slice\"} "),
            "{text}"
        );
        assert!(
            text.contains("# TYPE topo_etcd_request_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("topo_etcd_request_duration_seconds_count{op=\"txn\"} "),
            "{text}"
        );
    }
}
