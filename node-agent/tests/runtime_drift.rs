//! Drift: each kind of out-of-band change reaches the agent through a backend event stream,
//! is repaired by the reconcile it triggers, and is recorded as a DriftRepaired event.

mod runtime_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use runtime_support::*;
use topo_agent::backend::OvsError;
use topo_agent::backend::fake::{FakeNat, NsKey};
use topo_schema::api::EventType;
use topo_schema::kinds::{Kind, ObjectRef};
use topo_schema::names;

async fn running() -> (Fakes, Agent) {
    let f = Fakes::new();
    let agent = Agent::new(&f, slice());
    agent.start().await;
    agent.watch_drift(&f);
    // The agent's own changes produced events: let them pass as no-ops.
    agent.settle().await;
    f.clear_logs();
    f.events.clear();
    (f, agent)
}

fn drift_messages(f: &Fakes, kind: Kind, name: &str) -> Vec<String> {
    f.events("DriftRepaired")
        .into_iter()
        .filter(|e| e.object == ObjectRef::new(kind, name))
        .inspect(|e| assert_eq!(e.type_, EventType::Warning))
        .map(|e| e.message)
        .collect()
}

#[tokio::test]
async fn a_deleted_gre_port_is_recreated_and_reported() {
    let (f, agent) = running().await;
    let port = names::gre_port_name("overlay", "node2");
    f.ovs.delete_port_by_hand("tb-overlay", &port);
    agent.settle().await;
    assert!(
        f.ovs.state().bridges["tb-overlay"]
            .ports
            .contains_key(&port)
    );
    let msgs = drift_messages(&f, Kind::Tunnel, "overlay-node1-node2");
    assert_eq!(
        msgs,
        vec![format!(
            "GRE port {port} was deleted outside topo; recreated [drift: GrePortDeleted]"
        )]
    );
    // One transaction, then — the node's only GRE port was gone, so this one is its first —
    // the purge of ovs-vswitchd's datapath flows.
    let writes = f.ovs.writes();
    assert_eq!(writes.len(), 2, "{writes:?}");
    assert!(writes[0].contains("AddPort"), "{writes:?}");
    assert_eq!(writes[1], "purge datapath flows");
}

#[tokio::test]
async fn a_deleted_container_port_is_recreated() {
    let (f, agent) = running().await;
    let port = names::veth_host_name("web", "eth0");
    f.ovs.delete_port_by_hand("tb-overlay", &port);
    agent.settle().await;
    assert!(
        f.ovs.state().bridges["tb-overlay"]
            .ports
            .contains_key(&port)
    );
    let msgs = drift_messages(&f, Kind::Container, "web");
    assert_eq!(msgs.len(), 1);
    assert!(
        msgs[0].contains(&format!("OVS port {port} was missing")),
        "{msgs:?}"
    );
    assert!(f.docker.writes().is_empty(), "the container is not touched");
}

#[tokio::test]
async fn a_deleted_bridge_is_rebuilt_with_its_ports() {
    let (f, agent) = running().await;
    f.ovs.delete_bridge_by_hand("tb-overlay");
    agent.settle().await;
    let s = f.ovs.state().clone();
    let b = &s.bridges["tb-overlay"];
    for p in [
        names::gre_port_name("overlay", "node2"),
        names::veth_host_name("web", "eth0"),
        names::veth_host_name("app", "eth0"),
    ] {
        assert!(b.ports.contains_key(&p), "{p} missing after repair");
    }
    let msgs = drift_messages(&f, Kind::Network, "overlay");
    assert_eq!(
        msgs,
        vec![
            "bridge tb-overlay was deleted outside topo; recreated [drift: BridgeDeleted]"
                .to_string()
        ]
    );
    assert!(f.docker.writes().is_empty());
}

#[tokio::test]
async fn a_deleted_veth_is_recreated() {
    let (f, agent) = running().await;
    let veth = names::veth_host_name("app", "eth0");
    f.ifs.delete_by_hand(&veth);
    agent.settle().await;
    let pid = f.docker.container("app").unwrap().pid.unwrap();
    assert_eq!(f.ifs.host().attachments[&veth].0, pid);
    let msgs = drift_messages(&f, Kind::Container, "app");
    assert_eq!(msgs.len(), 1);
    assert!(
        msgs[0].contains(&format!("host veth {veth} is missing")),
        "{msgs:?}"
    );
    assert_port_readded(&f, &veth);
}

/// ovs-vswitchd's userspace datapath keeps a handle on a deleted device: the port of a
/// recreated veth must leave the bridge in one transaction and come back in another.
fn assert_port_readded(f: &Fakes, veth: &str) {
    let w = f.ovs.writes();
    let del = w
        .iter()
        .position(|x| x.contains("DeletePort") && x.contains(veth));
    let add = w
        .iter()
        .position(|x| x.contains("AddPort") && x.contains(veth));
    assert!(matches!((del, add), (Some(d), Some(a)) if d < a), "{w:?}");
    assert!(f.ovs.state().bridges["tb-overlay"].ports.contains_key(veth));
}

#[tokio::test]
async fn a_removed_address_is_restored() {
    let (f, agent) = running().await;
    let veth = names::veth_host_name("web", "eth0");
    f.ifs.drop_address_by_hand(&veth);
    agent.settle().await;
    let addrs = f.ifs.host().attachments[&veth]
        .1
        .peer
        .clone()
        .unwrap()
        .addresses;
    assert_eq!(addrs, vec!["10.2.1.5/16".parse().unwrap()]);
    assert_eq!(drift_messages(&f, Kind::Container, "web").len(), 1);
}

#[tokio::test]
async fn a_killed_container_is_restarted_and_counted() {
    let (f, agent) = running().await;
    let before = f.docker.container("app").unwrap();
    f.docker.kill("app", 137);
    agent.settle().await;
    let after = f.docker.container("app").unwrap();
    assert!(after.running);
    assert_eq!(after.id, before.id, "restarted, not recreated");
    let r = f.report(Kind::Container, "app").unwrap();
    assert_eq!(r.restart_count, 1);
    assert!(r.ready);
    // Its new namespace got its veth and its link rules again.
    let pid = after.pid.unwrap();
    assert_eq!(
        f.ifs.host().attachments[&names::veth_host_name("app", "eth0")].0,
        pid
    );
    assert_eq!(f.nat.rules(NsKey::Pid(pid)).links.len(), 1);
    assert_port_readded(&f, &names::veth_host_name("app", "eth0"));
    let msgs = drift_messages(&f, Kind::Container, "app");
    assert_eq!(msgs.len(), 1);
    assert!(
        msgs[0].contains("exited (code 137); restarted")
            && msgs[0].contains("[drift: ContainerExited"),
        "{msgs:?}"
    );
    // The old process's namespace is no longer watched; the new one's is.
    assert_eq!(f.ifs.namespace_watches(before.pid.unwrap()), 0);
    assert_eq!(f.ifs.namespace_watches(pid), 1);
    assert_eq!(f.nat.namespace_watches(pid), 1);

    // A second exit backs off (the test's schedule: 1 s) instead of restarting at once.
    f.docker.kill("app", 137);
    agent.settle().await;
    assert!(!f.docker.container("app").unwrap().running);
    let r = f.report(Kind::Container, "app").unwrap();
    assert_eq!(r.reason, "CrashLoopBackOff");
    assert!(!r.ready);
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    agent.settle().await;
    assert!(f.docker.container("app").unwrap().running);
    assert_eq!(f.report(Kind::Container, "app").unwrap().restart_count, 2);
    // Repeats are counted on one event, not recorded anew (as Kubernetes does).
    let restarted: Vec<_> = f
        .events("DriftRepaired")
        .into_iter()
        .filter(|e| e.object == ObjectRef::new(Kind::Container, "app"))
        .collect();
    assert_eq!(restarted.len(), 1, "{restarted:?}");
    assert_eq!(restarted[0].count, 2);
    let backoff = f.events("BackOff");
    assert_eq!(backoff.len(), 1, "{backoff:?}");
    assert!(backoff[0].message.contains("exit code 137"));
}

/// Issue 9: an address changed inside a container's namespace makes no event in the node's:
/// the container's own namespace watch hears it, and the reconcile it queues restores it.
#[tokio::test]
async fn an_address_changed_inside_a_container_is_restored_by_its_namespace_watch() {
    let (f, agent) = running().await;
    let veth = names::veth_host_name("web", "eth0");
    f.ifs
        .readdress_in_container(&veth, "10.2.9.9/16".parse().unwrap());
    agent.settle().await;
    let addrs = f.ifs.host().attachments[&veth]
        .1
        .peer
        .clone()
        .unwrap()
        .addresses;
    assert_eq!(addrs, vec!["10.2.1.5/16".parse().unwrap()]);
    let msgs = drift_messages(&f, Kind::Container, "web");
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert!(
        msgs[0].ends_with("[drift: AddressMissing, StrayAddress]"),
        "{msgs:?}"
    );
}

/// Issue 9: the node's `topo` table deleted or flushed by hand is heard (nftables
/// notifications) and restored without waiting for the periodic resync.
#[tokio::test]
async fn the_node_nat_table_deleted_or_flushed_is_restored_by_event() {
    let (f, agent) = running().await;
    let want = f.nat.rules(NsKey::Node);
    for (tamper, kind) in [
        (
            FakeNat::delete_by_hand as fn(&FakeNat, NsKey),
            "NodeNatTableDeleted",
        ),
        (FakeNat::flush_by_hand, "NodeNatTableFlushed"),
    ] {
        f.events.clear();
        tamper(&f.nat, NsKey::Node);
        agent.settle().await;
        assert_eq!(f.nat.rules(NsKey::Node), want);
        let msgs = drift_messages(&f, Kind::Node, NODE);
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert!(msgs[0].ends_with(&format!("[drift: {kind}]")), "{msgs:?}");
    }
}

/// Issue 9: a link's table removed inside its consumer is heard in the consumer's namespace
/// and restored.
#[tokio::test]
async fn a_link_table_removed_inside_its_consumer_is_restored_by_event() {
    let (f, agent) = running().await;
    let pid = f.docker.container("app").unwrap().pid.unwrap();
    let want = f.nat.rules(NsKey::Pid(pid));
    assert_eq!(want.links.len(), 1);
    f.nat.delete_by_hand(NsKey::Pid(pid));
    agent.settle().await;
    assert_eq!(f.nat.rules(NsKey::Pid(pid)), want);
    let msgs = drift_messages(&f, Kind::Container, "app");
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert!(msgs[0].ends_with("[drift: LinkTableDeleted]"), "{msgs:?}");
}

/// A removed container's namespace is watched no more.
#[tokio::test]
async fn removing_a_container_ends_its_namespace_watch() {
    let (f, agent) = running().await;
    let pid = f.docker.container("web").unwrap().pid.unwrap();
    assert_eq!(f.ifs.namespace_watches(pid), 1);
    agent.delete("containers/web");
    agent.settle().await;
    assert!(f.docker.container("web").is_none());
    assert_eq!(f.ifs.namespace_watches(pid), 0);
    assert_eq!(f.nat.namespace_watches(pid), 0);
    assert!(
        agent.ctx.watches.watched().iter().all(|(n, _)| n != "web"),
        "{:?}",
        agent.ctx.watches.watched()
    );
}

#[tokio::test]
async fn a_tampered_nat_table_is_restored_on_resync() {
    let (f, agent) = running().await;
    f.nat.tamper(NsKey::Node);
    agent.resync().await;
    assert_eq!(f.nat.writes().len(), 1, "{:?}", f.nat.writes());
    assert_eq!(drift_messages(&f, Kind::Node, NODE).len(), 1);
}

#[tokio::test]
async fn a_container_removed_by_hand_is_recreated() {
    let (f, agent) = running().await;
    f.docker.destroy("web");
    agent.settle().await;
    let c = f.docker.container("web").unwrap();
    assert!(c.running);
    let pid = c.pid.unwrap();
    assert_eq!(
        f.ifs.host().attachments[&names::veth_host_name("web", "eth0")].0,
        pid
    );
    assert!(f.report(Kind::Container, "web").unwrap().ready);
}

/// Peers learn a restarted container's new MAC from gratuitous ARPs sent from its new
/// interface once its port is back on the bridge (earlier frames would go nowhere): at once,
/// then twice more, without holding up the reconcile. A healthy pass announces nothing.
#[tokio::test]
async fn a_restarted_container_announces_its_address_once_its_port_is_back() {
    let (f, agent) = running().await;
    let veth = names::veth_host_name("app", "eth0");
    // The startup's own announcements end within a second.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let quiet = f.ifs.announced().len();
    agent.resync().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        f.ifs.announced().len(),
        quiet,
        "a healthy pass announces nothing"
    );

    // Strict: the port counts as attached only once it was added again after the restart.
    let ovs = f.ovs.clone();
    f.ifs.probe_ports_with(Arc::new(move |name: &str| {
        ovs.writes()
            .iter()
            .rev()
            .find(|w| w.contains(name))
            .is_some_and(|w| w.contains("AddPort"))
    }));
    f.docker.kill("app", 137);
    let started = Instant::now();
    agent.settle().await;
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "the reconcile does not wait for the later announcements"
    );
    assert_port_readded(&f, &veth);
    let pid = f.docker.container("app").unwrap().pid.unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let sent: Vec<_> = f
        .ifs
        .announced()
        .into_iter()
        .filter(|a| a.pid == pid)
        .collect();
    assert_eq!(sent.len(), 3, "{sent:?}");
    for a in &sent {
        assert_eq!(a.host_veth, veth);
        assert_eq!(a.address, "10.2.1.6/16".parse().unwrap());
        assert_eq!(
            a.on_bridge,
            Some(true),
            "announced before the port was back"
        );
    }
}

/// A reconcile that made a new veth pair but failed before re-adding its OVS port still
/// re-adds it when it is retried (the pair then looks healthy).
#[tokio::test]
async fn a_failed_readd_is_completed_on_retry() {
    let (f, agent) = running().await;
    let veth = names::veth_host_name("app", "eth0");
    f.ovs.fail_next("apply", OvsError::Disconnected);
    f.ifs.delete_by_hand(&veth);
    agent.settle().await;
    assert!(
        !f.ovs.writes().iter().any(|w| w.contains(&veth)),
        "the first attempt failed: {:?}",
        f.ovs.writes()
    );
    agent.resync().await;
    assert_port_readded(&f, &veth);
}

#[tokio::test]
async fn the_agents_own_removals_queue_no_garbage_collection() {
    let (f, agent) = running().await;
    agent.delete("containers/app");
    let done = agent.settle().await;
    assert!(f.docker.container("app").is_none(), "app is removed");
    let keys: Vec<String> = done.iter().map(|(k, _)| k.to_string()).collect();
    // Its Docker events (destroy) are the agent's own doing: no pass over every container.
    assert!(!keys.contains(&"~gc".to_string()), "{keys:?}");
    // The same event for a container the agent did not remove is still collection's.
    f.docker.emit(topo_agent::backend::ContainerEvent::Changed {
        name: "stray".into(),
        id: "0123456789ab".into(),
        action: "die".into(),
    });
    let keys: Vec<String> = agent
        .settle()
        .await
        .iter()
        .map(|(k, _)| k.to_string())
        .collect();
    assert_eq!(keys, vec!["~gc".to_string()]);
}
