//! The controller's `/metrics`: Prometheus text with the `topo_` prefix.
//!
//! Who may read it: the `view` role (an operator's own credentials) and the `metrics` role,
//! which allows nothing else — bind it to the group of the scrape identity `topo-pki init`
//! issues (`metrics.crt`, CN=metrics O=topo:metrics) so that Prometheus holds a credential
//! that reads no object. `guard.rs` authorizes the path like any other (verb get, target
//! metrics), so the route needs no check of its own.
//!
//! What it holds: the families shared with the agents (`topo_watcher::metrics`: watch
//! restarts and relists of the cache, etcd request latency of commits and lists), the
//! leader's passes as reconciles (kind `derive`, by result, with their duration), and gauges
//! read from the current snapshot at scrape time — objects per kind, IPAM use per network
//! (addresses held and the network's size) and tunnels whose Ready condition is True — so
//! a deleted network leaves no stale series behind.
//!
//! This module is the only place the controller names metrics; its route is added in
//! `api::router` with one line.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use topo_schema::Kind;
use topo_schema::meta::ConditionStatus;

use crate::cache::Snapshot;
use crate::reply::AppState;

/// The path, outside the API prefix as Prometheus expects it.
pub const PATH: &str = "/metrics";

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct NetworkLabels {
    network: String,
}

/// One reconcile of `kind` (`derive`: the leader's pass) finished.
pub fn reconciled(kind: &'static str, ok: bool, took: Duration) {
    topo_watcher::metrics::reconciled(kind, ok, took);
}

/// Addresses a network holds for containers: its cidr less network and broadcast address.
fn network_size(cidr: ipnet::Ipv4Net) -> i64 {
    let bits = 32 - u32::from(cidr.prefix_len());
    let all = 1i64 << bits;
    if bits >= 2 { all - 2 } else { all }
}

/// The gauges read from one snapshot, registered into `reg`.
fn snapshot_gauges(reg: &mut Registry, snap: &Snapshot) {
    let objects = Family::<KindLabels, Gauge>::default();
    for kind in Kind::ALL {
        let n = snap.of_kind(kind).count() as i64;
        objects
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .set(n);
    }
    let used = Family::<NetworkLabels, Gauge>::default();
    let size = Family::<NetworkLabels, Gauge>::default();
    for o in snap.of_kind(Kind::Network) {
        let topo_schema::Resource::Network(net) = &o.resource else {
            continue;
        };
        let labels = NetworkLabels {
            network: net.metadata.name.clone(),
        };
        let held = snap.addrs.get(&net.metadata.name).map_or(0, |a| a.len());
        used.get_or_create(&labels).set(held as i64);
        size.get_or_create(&labels).set(network_size(net.spec.cidr));
    }
    let up = snap
        .of_kind(Kind::Tunnel)
        .filter(|o| {
            o.resource
                .conditions()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == ConditionStatus::True)
        })
        .count();
    let tunnels_up = Gauge::<i64>::default();
    tunnels_up.set(up as i64);
    reg.register("objects", "Objects stored, by kind", objects);
    reg.register(
        "ipam_addresses_used",
        "Addresses of a network held by containers",
        used,
    );
    reg.register(
        "ipam_addresses",
        "Addresses a network's cidr offers to containers",
        size,
    );
    reg.register(
        "tunnels_up",
        "Tunnels whose Ready condition is True",
        tunnels_up,
    );
}

/// Every metric of this controller, in Prometheus's text format.
pub fn scrape(snap: &Snapshot) -> String {
    let mut reg = topo_watcher::metrics::registry();
    snapshot_gauges(&mut reg, snap);
    topo_watcher::metrics::render(&reg)
}

/// `GET /metrics` (authorized by the guard).
pub async fn serve(State(st): State<AppState>) -> Response {
    let body = scrape(&st.cache.current());
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(topo_watcher::metrics::CONTENT_TYPE),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_leave_out_network_and_broadcast() {
        let n = |s: &str| network_size(s.parse().unwrap());
        assert_eq!(n("10.2.0.0/16"), 65534);
        assert_eq!(n("10.2.0.0/24"), 254);
        assert_eq!(n("10.2.0.0/31"), 2);
    }

    #[test]
    fn an_empty_snapshot_scrapes_every_family() {
        reconciled("derive", true, Duration::from_millis(3));
        let text = scrape(&Snapshot::default());
        for name in [
            "topo_objects{kind=\"Container\"} 0",
            "topo_tunnels_up 0",
            "topo_reconciles_total{kind=\"derive\",result=\"success\"}",
            "# TYPE topo_reconcile_duration_seconds histogram",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
