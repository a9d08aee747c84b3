//! Objects and snapshots shared by the leader's unit tests.

use std::sync::Arc;

use topo_schema::{
    Container, ContainerSpec, Datapath, Kind, Link, LinkSpec, LinkTarget, Network,
    NetworkAttachment, NetworkSpec, Node, NodeSpec, Protocol, Resource, Topology, Tunnel,
    TunnelSpec,
};

use crate::cache::{Snapshot, StoredObject};
use crate::ipam;

pub(super) fn node(name: &str, addr: &str) -> Resource {
    Resource::Node(Node::new(
        Kind::Node,
        name,
        NodeSpec {
            address: addr.parse().unwrap(),
            datapath: Datapath::System,
            reserved_ports: None,
        },
    ))
}

pub(super) fn container(name: &str, node: &str) -> Resource {
    let mut c = Container::new(
        Kind::Container,
        name,
        ContainerSpec {
            node: node.into(),
            image: "img".into(),
            command: vec![],
            env: Default::default(),
            image_pull_policy: Default::default(),
            networks: vec![NetworkAttachment {
                network: "ov".into(),
                ip: None,
                interface: None,
            }],
            ports: vec![],
            ..Default::default()
        },
    );
    c.metadata.generation = Some(2);
    Resource::Container(c)
}

pub(super) fn objects() -> Vec<Resource> {
    vec![
        node("n1", "192.168.0.1"),
        node("n2", "192.168.0.2"),
        Resource::Network(Network::new(
            Kind::Network,
            "ov",
            NetworkSpec {
                cidr: "10.2.0.0/16".parse().unwrap(),
                block_size: 24,
                mtu: Some(1400),
                topology: Topology::Explicit,
                gre_key: None,
            },
        )),
        container("app", "n1"),
        container("db", "n2"),
        Resource::Link(Link::new(
            Kind::Link,
            "app-db",
            LinkSpec {
                from: "app".into(),
                to: LinkTarget {
                    container: Some("db".into()),
                    address: None,
                    port: 6379,
                },
                listen: None,
                protocol: Protocol::Tcp,
                alias: None,
            },
        )),
        Resource::Tunnel(Tunnel::new(
            Kind::Tunnel,
            "t",
            TunnelSpec {
                network: "ov".into(),
                nodes: vec!["n1".into(), "n2".into()],
                node: None,
                remote: None,
            },
        )),
    ]
}

pub(super) fn snapshot(objs: &[Resource]) -> Snapshot {
    let mut s = Snapshot::default();
    let changed: Vec<_> = objs.iter().map(Resource::object_ref).collect();
    let ch = ipam::plan(objs.iter(), &changed, &s.blocks, &s.addrs).unwrap();
    for (net, m) in &ch.assignment.blocks {
        for (node, b) in m {
            s.blocks
                .entry(net.clone())
                .or_default()
                .insert(*b, node.clone());
        }
    }
    for (c, m) in &ch.assignment.addresses {
        for (net, ip) in m {
            s.addrs
                .entry(net.clone())
                .or_default()
                .insert(*ip, c.clone());
        }
    }
    for r in objs {
        let o = StoredObject {
            resource: r.clone(),
            mod_revision: 1,
            create_revision: 1,
        };
        s.objects.insert(r.object_ref(), Arc::new(o));
    }
    s
}
