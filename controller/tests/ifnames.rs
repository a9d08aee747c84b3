//! Host interface names under adversarial object names: no two owners on a node ever share
//! a bridge, GRE port or host veth name, a name once given stays while its owner stays, and
//! names the old derivation gave are kept where they did not clash.
//!
//! The adversaries are built to collide in the old scheme: a long network name and the
//! 12-character network whose readable bridge equals its hashed one (the issue's
//! `abcdefghijklm` / `abcdef3a4dcf`), container and network names found by a birthday search
//! to share prefix and hash, names that squat on another owner's alternates, and names of
//! the maximal 63 characters.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use proptest::prelude::*;
use topo_controller::ifnames::NameTable;
use topo_controller::ipam;
use topo_controller::planner::{self, Desired, Plan};
use topo_schema::names::{self, NameOwner};
use topo_schema::slice::{SliceEntry, SliceEnvelope};
use topo_schema::{
    Container, ContainerSpec, Kind, Network, NetworkAttachment, NetworkSpec, Node, NodeSpec,
    ObjectRef, Resource, Topology, Tunnel, TunnelSpec,
};

// ---- builders ---------------------------------------------------------------------------

fn node(i: usize) -> Resource {
    Resource::Node(Node::new(
        Kind::Node,
        format!("node{i}"),
        NodeSpec {
            address: format!("192.168.100.{}", i + 1).parse().unwrap(),
            datapath: Default::default(),
            reserved_ports: None,
        },
    ))
}

fn network(name: &str, i: usize, topology: Topology) -> Resource {
    Resource::Network(Network::new(
        Kind::Network,
        name,
        NetworkSpec {
            cidr: format!("10.{}.0.0/16", i % 250).parse().unwrap(),
            block_size: 24,
            mtu: None,
            topology,
            gre_key: None,
        },
    ))
}

fn container(name: &str, node: &str, networks: &[String]) -> Resource {
    let mut c = Container::new(
        Kind::Container,
        name,
        ContainerSpec {
            node: node.into(),
            image: "topo/busybox:latest".into(),
            command: vec![],
            env: BTreeMap::new(),
            image_pull_policy: Default::default(),
            networks: networks
                .iter()
                .map(|n| NetworkAttachment {
                    network: n.clone(),
                    ip: None,
                    interface: None,
                })
                .collect(),
            ports: vec![],
            ..Default::default()
        },
    );
    c.metadata.uid = Some(format!("uid-{name}"));
    Resource::Container(c)
}

fn tunnel(name: &str, network: &str, a: &str, b: &str) -> Resource {
    Resource::Tunnel(Tunnel::new(
        Kind::Tunnel,
        name,
        TunnelSpec {
            network: network.into(),
            nodes: vec![a.into(), b.into()],
            node: None,
            remote: None,
        },
    ))
}

// ---- adversarial names --------------------------------------------------------------------

/// Pairs of distinct names, each pair with equal `key`, found by a birthday search over
/// `make(0..)`. The old scheme's hash has 24 bits, so a few thousand tries give a pair.
fn birthday_pairs(
    make: impl Fn(usize) -> String,
    key: impl Fn(&str) -> String,
) -> Vec<(String, String)> {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut pairs = vec![];
    for i in 0..40_000 {
        let name = make(i);
        let k = key(&name);
        match seen.get(&k) {
            Some(other) => pairs.push((other.clone(), name)),
            None => {
                seen.insert(k, name);
            }
        }
        if pairs.len() >= 6 {
            break;
        }
    }
    assert!(pairs.len() >= 2, "the birthday search found too few pairs");
    pairs
}

/// Container names whose old host veth name (for eth0) is the same.
fn veth_twins() -> &'static [(String, String)] {
    static PAIRS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    PAIRS.get_or_init(|| {
        birthday_pairs(
            |i| format!("twin-c-{i}"),
            |n| names::veth_host_name(n, "eth0"),
        )
    })
}

/// Network names whose old GRE port name towards `node1` is the same.
fn port_twins() -> &'static [(String, String)] {
    static PAIRS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    PAIRS.get_or_init(|| {
        birthday_pairs(
            |i| format!("twin-n-{i}"),
            |n| names::gre_port_name(n, "node1"),
        )
    })
}

/// A network name (13 to 63 characters) and the 12-character name whose readable bridge is
/// the first one's hashed bridge.
fn bridge_twins() -> impl Strategy<Value = (String, String)> {
    "[a-z][a-z0-9]{12,62}".prop_map(|long| {
        let hashed = names::bridge_name(&long);
        (long, hashed["tb-".len()..].to_string())
    })
}

/// A network that squats on the first hashed alternates of another network's bridge.
fn squatters(of: &str, how_many: u32) -> Vec<String> {
    let owner = NameOwner::Bridge {
        network: of.to_string(),
    };
    (0..how_many)
        .map(|i| owner.candidate(i)["tb-".len()..].to_string())
        .filter(|n| names::check_dns1123_label(n).is_ok())
        .collect()
}

fn twin_nets_of(ports: &[(String, String)], network: &str) -> bool {
    ports.iter().any(|(a, b)| a == network || b == network)
}

/// One adversarial cluster: nodes, networks, containers and user tunnels.
#[derive(Debug, Clone)]
struct Cluster {
    nodes: usize,
    networks: Vec<(String, Topology)>,
    /// name → (node index, network indices)
    containers: BTreeMap<String, (usize, Vec<usize>)>,
}

impl Cluster {
    fn resources(&self) -> Vec<Resource> {
        let mut out: Vec<Resource> = (0..self.nodes).map(node).collect();
        for (i, (name, topology)) in self.networks.iter().enumerate() {
            out.push(network(name, i, *topology));
            if *topology == Topology::Explicit && self.nodes > 1 {
                out.push(tunnel(&format!("t-{i}"), name, "node0", "node1"));
            }
        }
        for (name, (n, nets)) in &self.containers {
            let nets: Vec<String> = nets.iter().map(|i| self.networks[*i].0.clone()).collect();
            out.push(container(name, &format!("node{}", n % self.nodes), &nets));
        }
        out
    }
}

fn cluster() -> impl Strategy<Value = Cluster> {
    let max_name = "[a-z][a-z0-9-]{61}[a-z0-9]";
    (
        1usize..4,
        proptest::collection::vec(bridge_twins(), 1..3),
        proptest::collection::vec(max_name, 0..3),
        proptest::collection::vec((0usize..6, 0usize..4), 0..6),
        proptest::collection::vec(max_name, 0..4),
        any::<bool>(),
    )
        .prop_map(
            |(nodes, bridges, long_nets, twins, long_containers, squat)| {
                let mut networks: Vec<(String, Topology)> = vec![];
                let mut add = |n: String, t: Topology| {
                    if !networks.iter().any(|(m, _)| *m == n) {
                        networks.push((n, t));
                    }
                };
                for (long, short) in &bridges {
                    add(long.clone(), Topology::Mesh);
                    add(short.clone(), Topology::Explicit);
                    if squat {
                        for s in squatters(long, 4) {
                            add(s, Topology::Mesh);
                        }
                    }
                }
                for n in long_nets {
                    add(n, Topology::Mesh);
                }
                let ports = port_twins();
                for (a, b) in ports.iter().take(2) {
                    add(a.clone(), Topology::Mesh);
                    add(b.clone(), Topology::Mesh);
                }
                let nets = networks.len();
                let mut containers = BTreeMap::new();
                // The port twins hosted on node0 and node1: their GRE ports meet on both.
                let twin_nets: Vec<usize> = (0..nets)
                    .filter(|i| twin_nets_of(ports, &networks[*i].0))
                    .collect();
                containers.insert("ports-a".to_string(), (0, twin_nets.clone()));
                containers.insert("ports-b".to_string(), (1, twin_nets));
                // Every bridge twin (and squatter) hosted on node0.
                let bridge_nets: Vec<usize> = (0..nets)
                    .filter(|i| !twin_nets_of(ports, &networks[*i].0))
                    .collect();
                containers.insert("bridges".to_string(), (0, bridge_nets));
                for (pair, n) in twins {
                    let (a, b) = &veth_twins()[pair % veth_twins().len()];
                    containers.insert(a.clone(), (n, (0..nets).collect()));
                    containers.insert(b.clone(), (n, vec![n % nets]));
                }
                for (i, name) in long_containers.into_iter().enumerate() {
                    containers.insert(name, (i, vec![i % nets, (i + 1) % nets]));
                }
                Cluster {
                    nodes,
                    networks,
                    containers,
                }
            },
        )
}

// ---- planning and checks ------------------------------------------------------------------

/// Plans `objs` after an apply of all of them, against the names `given`.
fn plan(objs: &[Resource], given: &NameTable) -> Plan {
    let changed: Vec<ObjectRef> = objs.iter().map(Resource::object_ref).collect();
    let ch = ipam::plan(
        objs.iter(),
        &changed,
        &Default::default(),
        &Default::default(),
    )
    .expect("IPAM plans the cluster");
    planner::plan(&Desired::from_resources(objs.iter()), &ch.assignment, given)
}

/// node → owner → name, as the plan's slices say it (every occurrence, not just the first).
fn names_in(plan: &Plan) -> BTreeMap<String, Vec<(NameOwner, String)>> {
    let mut out: BTreeMap<String, Vec<(NameOwner, String)>> = BTreeMap::new();
    for (node, entries) in &plan.slices {
        for env in entries.values() {
            for (owner, name) in topo_controller::ifnames::named_by(&env.entry) {
                out.entry(node.clone())
                    .or_default()
                    .push((owner, name.to_string()));
            }
        }
    }
    out
}

/// No name has two owners on a node; each is a valid interface name of its owner's kind;
/// every GRE port and veth sits on the bridge its node has for the network.
fn assert_collision_free(plan: &Plan) {
    for (node, owned) in names_in(plan) {
        let mut by_name: BTreeMap<&str, &NameOwner> = BTreeMap::new();
        for (owner, name) in &owned {
            assert!(
                names::check_interface_name(name).is_ok(),
                "{node}: {name:?} is not an interface name"
            );
            assert!(
                names::IFACE_PREFIXES.iter().any(|p| name.starts_with(p)),
                "{node}: {name} has no topo prefix"
            );
            if let Some(other) = by_name.insert(name, owner) {
                assert_eq!(other, owner, "{node}: {name} is given to two owners");
            }
        }
        let bridges: BTreeMap<&str, &str> = plan.slices[&node]
            .values()
            .filter_map(|e| match &e.entry {
                SliceEntry::Bridge(b) => Some((b.network.as_str(), b.bridge.as_str())),
                _ => None,
            })
            .collect();
        for e in plan.slices[&node].values() {
            match &e.entry {
                SliceEntry::Tunnel(t) => {
                    assert_eq!(Some(&t.bridge.as_str()), bridges.get(t.network.as_str()))
                }
                SliceEntry::Container(c) => {
                    for a in &c.attachments {
                        assert_eq!(Some(&a.bridge.as_str()), bridges.get(a.network.as_str()));
                    }
                }
                _ => {}
            }
        }
    }
}

/// Every owner on a node in both plans has the same name in both.
fn assert_stable(before: &Plan, after: &Plan) {
    for (node, names) in before.names.nodes() {
        let Some(now) = after.names.node(node) else {
            continue;
        };
        for (owner, name) in names.iter() {
            if let Some(n) = now.name_of(owner) {
                assert_eq!(n, name, "{node}: {owner:?} was renamed");
            }
        }
    }
}

/// The slices as an older controller wrote them: every name the old derivation's.
/// Keyed as etcd holds them: of two entries with one key (two tunnels given one port), the
/// last written is there.
fn as_written_by_the_old_scheme(plan: &Plan) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for (node, entries) in &plan.slices {
        for env in entries.values() {
            let mut entry = env.entry.clone();
            match &mut entry {
                SliceEntry::Bridge(b) => b.bridge = names::bridge_name(&b.network),
                SliceEntry::Tunnel(t) => {
                    let peer = t.peer.clone().unwrap_or_else(|| t.remote_ip.to_string());
                    t.bridge = names::bridge_name(&t.network);
                    t.port = names::gre_port_name(&t.network, &peer);
                }
                SliceEntry::Container(c) => {
                    for a in &mut c.attachments {
                        a.bridge = names::bridge_name(&a.network);
                        a.host_veth = names::veth_host_name(&c.name, &a.interface);
                    }
                }
                SliceEntry::Node(_) => {}
            }
            let key = topo_schema::keys::slice_entry(node, entry.key());
            let bytes = serde_json::to_vec(&SliceEnvelope::new(entry)).unwrap();
            out.insert(key, bytes);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// No two owners on a node share a name, however the names were built to collide.
    #[test]
    fn adversarial_names_never_share_an_interface(c in cluster()) {
        let p = plan(&c.resources(), &NameTable::default());
        assert_collision_free(&p);
        // The cluster is adversarial: the old scheme gives some name on node0 twice.
        let owners: Vec<(NameOwner, String)> = names_in(&p).remove("node0").unwrap_or_default();
        let old: BTreeSet<String> = owners.iter().map(|(o, _)| o.preferred()).collect();
        prop_assert!(old.len() < owners.len(), "no clash in the old scheme");
    }

    /// Objects come and go, containers move: every owner that stays keeps its name, and
    /// the names stay collision-free at every step.
    #[test]
    fn names_once_given_are_stable(
        c in cluster(),
        steps in proptest::collection::vec((0usize..8, 0usize..64, 0usize..4), 1..8),
    ) {
        let mut cluster = c;
        let mut before = plan(&cluster.resources(), &NameTable::default());
        for (op, pick, to) in steps {
            let names: Vec<String> = cluster.containers.keys().cloned().collect();
            match op {
                // Remove a container.
                0 | 1 if !names.is_empty() => {
                    cluster.containers.remove(&names[pick % names.len()]);
                }
                // Move a container to another node.
                2 | 3 if !names.is_empty() => {
                    if let Some(c) = cluster.containers.get_mut(&names[pick % names.len()]) {
                        c.0 = to;
                    }
                }
                // Add a twin of an existing veth pair, or a squatter of a network.
                4 => {
                    let (a, b) = &veth_twins()[pick % veth_twins().len()];
                    let nets = cluster.networks.len();
                    cluster.containers.insert(a.clone(), (to, vec![pick % nets]));
                    cluster.containers.insert(b.clone(), (to, vec![pick % nets]));
                }
                5 if cluster.networks.len() > 1 => {
                    let victim = cluster.networks[pick % cluster.networks.len()].0.clone();
                    for s in squatters(&victim, 3) {
                        if !cluster.networks.iter().any(|(n, _)| *n == s) {
                            cluster.networks.push((s, Topology::Mesh));
                        }
                    }
                }
                // Drop the last network when nobody uses it.
                6 => {
                    let last = cluster.networks.len() - 1;
                    if last > 0 && !cluster.containers.values().any(|(_, n)| n.contains(&last)) {
                        cluster.networks.pop();
                    }
                }
                _ => cluster.nodes = (cluster.nodes % 3) + 1,
            }
            let after = plan(&cluster.resources(), &before.names);
            assert_collision_free(&after);
            assert_stable(&before, &after);
            before = after;
        }
    }

    /// After an upgrade, what the old scheme named keeps its name unless two owners on a
    /// node had it; of those, one keeps it and the other gets a free name.
    #[test]
    fn an_upgrade_keeps_every_name_that_did_not_clash(c in cluster()) {
        let objs = c.resources();
        let first = plan(&objs, &NameTable::default());
        let old = as_written_by_the_old_scheme(&first);
        let table = NameTable::from_written(old.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        let p = plan(&objs, &table);
        assert_collision_free(&p);
        for (node, owned) in names_in(&p) {
            let mut preferred: BTreeMap<String, BTreeSet<&NameOwner>> = BTreeMap::new();
            for (owner, _) in &owned {
                preferred.entry(owner.preferred()).or_default().insert(owner);
            }
            for (owner, name) in &owned {
                let rivals = &preferred[&owner.preferred()];
                if rivals.len() == 1 {
                    prop_assert_eq!(name, &owner.preferred(), "{}: {:?} was renamed", node, owner);
                }
            }
            for (wanted, rivals) in preferred.iter().filter(|(_, r)| r.len() > 1) {
                let keepers = owned.iter().filter(|(o, n)| rivals.contains(o) && n == wanted).map(|(o, _)| o).collect::<BTreeSet<_>>();
                prop_assert_eq!(keepers.len(), 1, "{}: {} kept by {:?}", node, wanted, keepers);
            }
        }
    }
}

/// The issue, planned: two bridges on node1, the readable one keeping its name.
#[test]
fn the_issue_networks_get_two_bridges() {
    let objs = vec![
        node(0),
        network("abcdefghijklm", 1, Topology::Mesh),
        network("abcdef3a4dcf", 2, Topology::Mesh),
        container("a", "node0", &["abcdefghijklm".into()]),
        container("b", "node0", &["abcdef3a4dcf".into()]),
    ];
    let p = plan(&objs, &NameTable::default());
    assert_collision_free(&p);
    let bridge = |net: &str| match &p.slices["node0"][&format!("bridges/{net}")].entry {
        SliceEntry::Bridge(b) => b.bridge.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(bridge("abcdef3a4dcf"), "tb-abcdef3a4dcf");
    assert_ne!(bridge("abcdefghijklm"), "tb-abcdef3a4dcf");
}

/// Five thousand containers on one node whose names share their first six letters: the old
/// scheme gives some of them one veth name (24-bit hash, birthday bound); allocation none.
#[test]
fn many_containers_on_one_node_get_distinct_veths() {
    let mut objs = vec![node(0), network("overlay", 1, Topology::Mesh)];
    let nets = vec!["overlay".to_string()];
    let mut names: Vec<String> = (0..5000).map(|i| format!("shared-{i}")).collect();
    for (a, b) in veth_twins() {
        names.extend([a.clone(), b.clone()]);
    }
    for n in &names {
        objs.push(container(n, "node0", &nets));
    }
    if let Resource::Network(n) = &mut objs[1] {
        n.spec.cidr = "10.0.0.0/8".parse().unwrap();
        n.spec.block_size = 16;
    }
    let old: BTreeSet<String> = names
        .iter()
        .map(|n| names::veth_host_name(n, "eth0"))
        .collect();
    let p = plan(&objs, &NameTable::default());
    assert_collision_free(&p);
    let given = p.names.node("node0").expect("node0's names");
    assert_eq!(given.len(), names.len() + 1, "every veth and the bridge");
    assert!(
        old.len() < names.len(),
        "the old scheme gave {} distinct names to {} veths",
        old.len(),
        names.len()
    );
}
