//! Slice entries and switches for the reconcilers' plan tests, so each table reads as its
//! rows and not as entry literals.

use topo_schema::kinds::{Datapath, Protocol, PullPolicy};
use topo_schema::names;
use topo_schema::slice::{BridgeEntry, ContainerEntry, LinkRule};

use crate::backend::fake::{FakeOvs, attachment};
use crate::backend::{Ovs, OvsChange, OvsState};

/// The bridge entry of `network` (cidr 10.2.0.0/16, block 10.2.1.0/24, netdev, masquerade).
pub fn bridge(network: &str) -> BridgeEntry {
    BridgeEntry {
        network: network.into(),
        bridge: names::bridge_name(network),
        datapath: Datapath::Netdev,
        mtu: 1458,
        cidr: "10.2.0.0/16".parse().unwrap(),
        block: "10.2.1.0/24".parse().unwrap(),
        gateway: "10.2.1.1/16".parse().unwrap(),
        gre_key: 7,
        rstp: false,
        masquerade: true,
    }
}

/// A container attached to `networks` in order (eth0 on the first, 10.2.1.5; eth1 on the
/// second, 10.3.1.5; ...), without ports or links.
pub fn container(name: &str, networks: &[&str]) -> ContainerEntry {
    ContainerEntry {
        name: name.into(),
        uid: format!("uid-{name}"),
        generation: 1,
        docker_name: format!("topo-{name}"),
        image: "topo/busybox:latest".into(),
        command: vec!["sleep".into()],
        env: Default::default(),
        pull_policy: PullPolicy::IfNotPresent,
        hosts: vec![],
        attachments: networks
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut a = attachment(name, n, &format!("10.{}.1.5/16", i + 2));
                a.interface = format!("eth{i}");
                a.host_veth = names::veth_host_name(name, &a.interface);
                a
            })
            .collect(),
        ports: vec![],
        links: vec![],
        hardening: Default::default(),
    }
}

/// A TCP link rule listening on `listen`, to `target` (None: unresolved).
pub fn link(name: &str, listen: &str, target: Option<&str>) -> LinkRule {
    LinkRule {
        link: name.into(),
        generation: 1,
        listen: listen.parse().unwrap(),
        protocol: Protocol::Tcp,
        target: target.map(|t| t.parse().unwrap()),
        reason: None,
        message: None,
    }
}

pub fn add_bridge(network: &str) -> OvsChange {
    OvsChange::AddBridge {
        name: names::bridge_name(network),
        datapath: Datapath::Netdev,
        rstp: false,
        mtu: 1458,
        object: format!("network/{network}"),
    }
}

/// The switch after `changes` were applied to one that holds only a foreign `br-phy`.
pub async fn switch(changes: &[OvsChange]) -> OvsState {
    let ovs = FakeOvs::new("node1").with_foreign_bridge("br-phy");
    ovs.apply(changes)
        .await
        .unwrap_or_else(|e| panic!("fixture switch: {e}"));
    ovs.state().clone()
}
