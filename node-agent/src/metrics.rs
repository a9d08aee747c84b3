//! The agent's metrics, served at `/metrics` by [`crate::endpoint`] in Prometheus's text
//! format with the `topo_` prefix.
//!
//! * `topo_reconciles_total{kind,result}` and `topo_reconcile_duration_seconds{kind,result}`:
//!   every reconcile the runner does, by key kind (node, bridge, tunnel, container, nat, gc)
//!   and result (success, error).
//! * `topo_drift_repairs_total{kind}`: `DriftRepaired` events (a change made outside topo,
//!   undone), by the kind of the object repaired.
//! * `topo_slice_entries{kind}`: what the node's slice holds now, per entry kind (the
//!   agent's "objects per kind"); `topo_tunnels_up`: GRE ports of the slice whose last
//!   reconcile succeeded.
//! * From `topo_watcher::metrics`: the slice watch's restarts and relists, and the latency
//!   of the agent's etcd requests (lists, report, event and heartbeat writes).
//!
//! Counters are process-wide statics, counted where the thing happens (the runner, the event
//! recorder); the gauges are computed from the slice at scrape time, so an entry that left
//! the slice leaves no stale series.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use topo_schema::kinds::Kind;
use topo_schema::slice::SliceKey;

use crate::key::Key;
use crate::watch::SliceStore;

/// The event reason that counts as a drift repair.
pub const DRIFT_REPAIRED: &str = "DriftRepaired";

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

static DRIFT_REPAIRS: LazyLock<Family<KindLabels, Counter>> = LazyLock::new(Family::default);
/// GRE port name → whether its last reconcile succeeded.
static TUNNELS: LazyLock<Mutex<HashMap<String, bool>>> = LazyLock::new(Default::default);

fn key_kind(key: &Key) -> &'static str {
    match key {
        Key::Node => "node",
        Key::Bridge(_) => "bridge",
        Key::Tunnel(_) => "tunnel",
        Key::Container(_) => "container",
        Key::Nat => "nat",
        Key::Gc => "gc",
    }
}

fn entry_kind(key: &SliceKey) -> &'static str {
    match key {
        SliceKey::Node => "node",
        SliceKey::Bridge(_) => "bridge",
        SliceKey::Tunnel(_) => "tunnel",
        SliceKey::Container(_) => "container",
    }
}

/// The runner finished one reconcile of `key`.
pub fn reconciled(key: &Key, ok: bool, took: Duration) {
    topo_watcher::metrics::reconciled(key_kind(key), ok, took);
    if let Key::Tunnel(port) = key {
        let mut t = TUNNELS.lock().unwrap_or_else(|e| e.into_inner());
        t.insert(port.clone(), ok);
    }
}

/// A change made outside topo to an object of `kind` was undone.
pub fn drift_repaired(kind: Kind) {
    DRIFT_REPAIRS
        .get_or_create(&KindLabels {
            kind: kind.as_str(),
        })
        .inc();
}

/// Every metric of this agent, in Prometheus's text format.
pub fn scrape(slice: &SliceStore) -> String {
    let mut reg = topo_watcher::metrics::registry();
    reg.register(
        "drift_repairs",
        "Changes made outside topo that the agent undid, by object kind",
        DRIFT_REPAIRS.clone(),
    );
    let entries = Family::<KindLabels, Gauge>::default();
    for kind in ["node", "bridge", "tunnel", "container"] {
        entries.get_or_create(&KindLabels { kind }).set(0);
    }
    let keys = slice.keys();
    for k in &keys {
        entries
            .get_or_create(&KindLabels {
                kind: entry_kind(k),
            })
            .inc();
    }
    let up = {
        let t = TUNNELS.lock().unwrap_or_else(|e| e.into_inner());
        keys.iter()
            .filter(|k| matches!(k, SliceKey::Tunnel(p) if t.get(p) == Some(&true)))
            .count()
    };
    let tunnels_up = Gauge::<i64>::default();
    tunnels_up.set(up as i64);
    reg.register(
        "slice_entries",
        "Entries of the node's slice, by kind",
        entries,
    );
    reg.register(
        "tunnels_up",
        "GRE ports of the slice whose last reconcile succeeded",
        tunnels_up,
    );
    topo_watcher::metrics::render(&reg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_drift_and_tunnels_are_counted() {
        reconciled(
            &Key::Tunnel("gre-metrics-test".into()),
            true,
            Duration::from_millis(2),
        );
        reconciled(&Key::Container("c".into()), false, Duration::from_millis(2));
        drift_repaired(Kind::Tunnel);
        let text = scrape(&SliceStore::new());
        for want in [
            "topo_reconciles_total{kind=\"tunnel\",result=\"success\"}",
            "topo_reconciles_total{kind=\"container\",result=\"error\"}",
            "topo_reconcile_duration_seconds_count{kind=\"tunnel\",result=\"success\"}",
            "topo_drift_repairs_total{kind=\"Tunnel\"}",
            "topo_slice_entries{kind=\"container\"} 0",
            // Not in the (empty) slice: not up.
            "topo_tunnels_up 0",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
    }
}
