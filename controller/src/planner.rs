//! The planner: from the desired objects and the IPAM assignment to derived mesh tunnels, GRE
//! keys, MTUs and every node's slice. Pure; the leader runs it on each new snapshot and
//! writes what changed.
//!
//! A node's slice is self-contained (SPEC: an agent watches only its own prefix): the node
//! entry, one bridge per network the node hosts (with its block and gateway), one GRE port
//! per tunnel ending on it, and one entry per container scheduled on it with its
//! attachments, published ports, link rules and Docker-link environment. A container on a
//! node that has no Node object is not planned anywhere: it stays Pending (`NodeNotFound`).
//!
//! Host interface names (bridges, GRE ports, host veths) come from the [`Namer`]: an owner
//! keeps the name the last written slices gave it, and a new one gets a name nobody on its
//! node holds (`ifnames.rs` says why they are allocated rather than derived). A name is asked
//! for only when its entry goes into a slice, so the plan's slices are the next name table.
//!
//! Cost: one pass is linear in containers + links + tunnels. A mesh network hosted by N nodes
//! has N(N-1)/2 tunnels and gives each node N-1 GRE ports, so mesh slices grow with N by
//! nature; explicit topologies (a tree, a ring) keep every slice bounded.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};

use ipnet::Ipv4Net;
use topo_schema::slice::{
    AttachmentEntry, BridgeEntry, ContainerEntry, HostEntry, LinkRule, NodeEntry, PublishedPort,
    SliceEntry, SliceEnvelope, TunnelEntry,
};
use topo_schema::{
    Container, Datapath, Kind, LABEL_DERIVED_FROM, Link, Network, Node, ObjectMeta, Resource,
    Topology, Tunnel, TunnelSpec, names, net,
};

use crate::ifnames::{NameTable, Namer};
use crate::ipam::Assignment;

/// The user's objects the planner reads, by name. Derived tunnels are left out: the planner
/// derives them itself.
#[derive(Debug, Default, Clone)]
pub struct Desired<'a> {
    pub nodes: BTreeMap<&'a str, &'a Node>,
    pub networks: BTreeMap<&'a str, &'a Network>,
    pub containers: BTreeMap<&'a str, &'a Container>,
    pub links: BTreeMap<&'a str, &'a Link>,
    /// Tunnels the user wrote.
    pub tunnels: BTreeMap<&'a str, &'a Tunnel>,
}

impl<'a> Desired<'a> {
    pub fn from_resources(resources: impl IntoIterator<Item = &'a Resource>) -> Self {
        let mut d = Desired::default();
        for r in resources {
            match r {
                Resource::Node(o) => {
                    d.nodes.insert(&o.metadata.name, o);
                }
                Resource::Network(o) => {
                    d.networks.insert(&o.metadata.name, o);
                }
                Resource::Container(o) => {
                    d.containers.insert(&o.metadata.name, o);
                }
                Resource::Link(o) => {
                    d.links.insert(&o.metadata.name, o);
                }
                Resource::Tunnel(o) => {
                    if !o.metadata.labels.contains_key(LABEL_DERIVED_FROM) {
                        d.tunnels.insert(&o.metadata.name, o);
                    }
                }
            }
        }
        d
    }
}

/// Why something is not (yet) planned, in status-condition terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    pub reason: String,
    pub message: String,
}

impl Reason {
    pub fn new(reason: &str, message: impl Into<String>) -> Self {
        Reason {
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPlan {
    pub gre_key: u32,
    pub mtu: u32,
    /// Every pair of hosting nodes is joined by a tunnel: split horizon, no RSTP.
    pub full_mesh: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPlan {
    pub node: String,
    /// Set when the container has no slice entry, with why.
    pub pending: Option<Reason>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPlan {
    /// The consumer container's node, when the consumer exists.
    pub consumer_node: Option<String>,
    /// The target container, when the link points at one.
    pub target_container: Option<String>,
    pub endpoint: Option<SocketAddrV4>,
    pub problem: Option<Reason>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelPlan {
    pub network: String,
    /// The managed nodes it joins.
    pub ends: Vec<String>,
    /// The nodes whose slice holds its GRE port.
    pub programmed_on: Vec<String>,
    pub problem: Option<Reason>,
}

/// node → entry key → entry.
pub type Slices = BTreeMap<String, BTreeMap<String, SliceEnvelope>>;

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub networks: BTreeMap<String, NetworkPlan>,
    /// The mesh tunnels, as the Tunnel objects to store.
    pub derived_tunnels: BTreeMap<String, Tunnel>,
    pub slices: Slices,
    pub containers: BTreeMap<String, ContainerPlan>,
    pub links: BTreeMap<String, LinkPlan>,
    /// Every tunnel, the user's and the derived ones.
    pub tunnels: BTreeMap<String, TunnelPlan>,
    /// The host interface names the slices give, per node.
    pub names: NameTable,
}

impl Plan {
    /// Number of slice entries over all nodes.
    pub fn entry_count(&self) -> usize {
        self.slices.values().map(BTreeMap::len).sum()
    }
}

/// The label value on tunnels derived from `network`.
pub fn derived_from(network: &str) -> String {
    format!("network.{network}")
}

/// `<network>-<a>-<b>` with `a < b`; a readable prefix plus a hash when that exceeds the
/// 63 characters of a DNS-1123 label.
pub fn derived_tunnel_name(network: &str, a: &str, b: &str) -> String {
    let (a, b) = if a <= b { (a, b) } else { (b, a) };
    let readable = format!("{network}-{a}-{b}");
    if readable.len() <= names::MAX_NAME_LEN {
        return readable;
    }
    // FNV-1a: stable across releases, so a derived name never changes under an upgrade.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in [network, a, b] {
        for byte in p.bytes().chain([0u8]) {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    let hash = format!("{h:016x}");
    let room = names::MAX_NAME_LEN - hash.len() - 1;
    let keep: String = readable.chars().take(room).collect();
    format!("{}-{hash}", keep.trim_end_matches('-'))
}

/// The Docker-link environment of an aliased link (SPEC.md, Link): `DB_PORT`,
/// `DB_PORT_<port>_<PROTO>` and its `_ADDR`, `_PORT`, `_PROTO`. The number in the names is
/// the target's port (what Docker-link consumers look for); the values point at the listen
/// address, which is where the consumer connects.
pub fn link_env(
    alias: &str,
    listen: SocketAddrV4,
    target_port: u32,
    protocol: &str,
) -> BTreeMap<String, String> {
    let prefix: String = alias
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    let url = format!("{protocol}://{listen}");
    let base = format!(
        "{prefix}_PORT_{target_port}_{}",
        protocol.to_ascii_uppercase()
    );
    BTreeMap::from([
        (format!("{prefix}_PORT"), url.clone()),
        (base.clone(), url),
        (format!("{base}_ADDR"), listen.ip().to_string()),
        (format!("{base}_PORT"), listen.port().to_string()),
        (format!("{base}_PROTO"), protocol.to_string()),
    ])
}

/// GRE keys: the spec's; else the one recorded in the Network's status; else the lowest
/// unused. Recorded keys are kept so a network's key never changes under running tunnels
/// (unless a user later claims it explicitly for another network).
pub fn gre_keys(networks: &BTreeMap<&str, &Network>) -> BTreeMap<String, u32> {
    let mut keys: BTreeMap<String, u32> = BTreeMap::new();
    let mut used: BTreeSet<u32> = BTreeSet::new();
    for (name, n) in networks {
        if let Some(k) = n.spec.gre_key {
            keys.insert(name.to_string(), k);
            used.insert(k);
        }
    }
    for (name, n) in networks {
        if keys.contains_key(*name) {
            continue;
        }
        if let Some(k) = n.status.as_ref().and_then(|s| s.gre_key)
            && !used.contains(&k)
        {
            keys.insert(name.to_string(), k);
            used.insert(k);
        }
    }
    let mut next = 1u32;
    for name in networks.keys() {
        if keys.contains_key(*name) {
            continue;
        }
        while used.contains(&next) {
            next = next.saturating_add(1);
        }
        keys.insert(name.to_string(), next);
        used.insert(next);
    }
    keys
}

/// An unordered pair of node names, smaller first.
fn pair<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str) {
    if a <= b { (a, b) } else { (b, a) }
}

/// One tunnel to lay out, user-written or derived.
struct TunnelWork<'a> {
    name: String,
    network: &'a str,
    nodes: Vec<&'a str>,
    remote: Option<Ipv4Addr>,
}

/// Node pairs per network that user tunnels already join.
type UserPairs<'a> = BTreeMap<&'a str, BTreeSet<(&'a str, &'a str)>>;

/// The network plans, every tunnel to lay out and the derived Tunnel objects.
fn derive<'a>(
    desired: &Desired<'a>,
    assignment: &'a Assignment,
) -> (
    BTreeMap<String, NetworkPlan>,
    Vec<TunnelWork<'a>>,
    BTreeMap<String, Tunnel>,
) {
    let gre = gre_keys(&desired.networks);
    let mut networks = BTreeMap::new();
    let mut derived = BTreeMap::new();
    // Tunnels: the user's, then the mesh pairs they do not already cover.
    let (mut tunnels, user_pairs) = user_tunnels(desired);
    for (name, n) in &desired.networks {
        let hosts = hosting(assignment, name);
        let pairs = user_pairs.get(*name);
        let full_mesh = match n.spec.topology {
            Topology::Mesh => true,
            Topology::Explicit => hosts.iter().enumerate().all(|(i, a)| {
                hosts[i + 1..]
                    .iter()
                    .all(|b| pairs.is_some_and(|p| p.contains(&pair(a, b))))
            }),
        };
        networks.insert(
            name.to_string(),
            NetworkPlan {
                gre_key: gre.get(*name).copied().unwrap_or(1),
                mtu: net::effective_mtu(n.spec.mtu),
                full_mesh,
            },
        );
        if n.spec.topology == Topology::Mesh {
            mesh_tunnels(n, &hosts, pairs, &mut tunnels, &mut derived);
        }
    }
    (networks, tunnels, derived)
}

/// The tunnels users wrote, and the node pairs they join per network.
fn user_tunnels<'a>(desired: &Desired<'a>) -> (Vec<TunnelWork<'a>>, UserPairs<'a>) {
    let mut tunnels: Vec<TunnelWork<'a>> = Vec::new();
    let mut user_pairs: UserPairs<'a> = BTreeMap::new();
    for (name, t) in &desired.tunnels {
        let nodes: Vec<&str> = match (&t.spec.node, t.spec.remote) {
            (Some(n), Some(_)) => vec![n.as_str()],
            _ => t.spec.nodes.iter().map(String::as_str).collect(),
        };
        if let [a, b] = nodes.as_slice() {
            user_pairs
                .entry(t.spec.network.as_str())
                .or_default()
                .insert(pair(a, b));
        }
        tunnels.push(TunnelWork {
            name: name.to_string(),
            network: &t.spec.network,
            nodes,
            remote: if t.spec.node.is_some() {
                t.spec.remote
            } else {
                None
            },
        });
    }
    (tunnels, user_pairs)
}

/// A mesh network's derived tunnels: one per pair of hosting nodes no user tunnel joins.
fn mesh_tunnels<'a>(
    n: &'a Network,
    hosts: &[&'a str],
    covered: Option<&BTreeSet<(&str, &str)>>,
    tunnels: &mut Vec<TunnelWork<'a>>,
    derived: &mut BTreeMap<String, Tunnel>,
) {
    let name = n.metadata.name.as_str();
    for (i, a) in hosts.iter().enumerate() {
        for b in &hosts[i + 1..] {
            if covered.is_some_and(|p| p.contains(&pair(a, b))) {
                continue;
            }
            let tname = derived_tunnel_name(name, a, b);
            let mut obj = Tunnel::new(
                Kind::Tunnel,
                tname.clone(),
                TunnelSpec {
                    network: name.to_string(),
                    nodes: vec![a.to_string(), b.to_string()],
                    node: None,
                    remote: None,
                },
            );
            obj.metadata = ObjectMeta::named(tname.clone());
            obj.metadata
                .labels
                .insert(LABEL_DERIVED_FROM.to_string(), derived_from(name));
            tunnels.push(TunnelWork {
                name: tname.clone(),
                network: name,
                nodes: vec![a, b],
                remote: None,
            });
            derived.insert(tname, obj);
        }
    }
}

/// Hosting nodes are those with a block: IPAM gives one to every node with a container or a
/// user tunnel end on the network.
fn hosting<'a>(assignment: &'a Assignment, network: &str) -> Vec<&'a str> {
    assignment
        .blocks
        .get(network)
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

/// Only the derived mesh Tunnel objects (what the leader stores), without the slices.
pub fn derived_tunnels(desired: &Desired<'_>, assignment: &Assignment) -> BTreeMap<String, Tunnel> {
    derive(desired, assignment).2
}

/// Plans every slice; `names` is the table the written slices hold (empty for a first
/// pass), the plan's own is in [`Plan::names`].
pub fn plan(desired: &Desired<'_>, assignment: &Assignment, names: &NameTable) -> Plan {
    let mut out = Plan::default();
    let mut namer = Namer::new(names);
    let (networks, tunnels, derived) = derive(desired, assignment);
    out.networks = networks;
    out.derived_tunnels = derived;
    node_and_bridge_entries(&mut out, desired, assignment, &mut namer);
    for t in tunnels {
        let tp = gre_port_entries(&mut out, &t, desired, assignment, &mut namer);
        out.tunnels.insert(t.name, tp);
    }
    // Links, indexed by consumer.
    let mut links_from: BTreeMap<&str, Vec<(&str, &Link)>> = BTreeMap::new();
    for (name, l) in &desired.links {
        links_from
            .entry(l.spec.from.as_str())
            .or_default()
            .push((name, l));
        out.links
            .insert(name.to_string(), resolve_link(l, desired, assignment));
    }
    for (name, c) in &desired.containers {
        let links = links_from.get(name).map(Vec::as_slice).unwrap_or(&[]);
        let cp = place_container(&mut out, name, c, links, desired, assignment, &mut namer);
        out.containers.insert(name.to_string(), cp);
    }
    out.names = NameTable::from_slices(
        out.slices
            .iter()
            .flat_map(|(node, entries)| entries.values().map(move |e| (node.as_str(), &e.entry))),
    );
    out
}

/// Every node's node entry, and a bridge entry on each node that hosts a network.
fn node_and_bridge_entries(
    out: &mut Plan,
    desired: &Desired<'_>,
    assignment: &Assignment,
    namer: &mut Namer<'_>,
) {
    for (node_name, node) in &desired.nodes {
        let mut entries = BTreeMap::new();
        let e = SliceEntry::Node(NodeEntry {
            name: node_name.to_string(),
            address: node.spec.address,
            datapath: node.spec.datapath,
        });
        entries.insert(e.key().to_string(), SliceEnvelope::new(e));
        out.slices.insert(node_name.to_string(), entries);
    }
    for (net_name, n) in &desired.networks {
        let Some(np) = out.networks.get(*net_name).cloned() else {
            continue;
        };
        for node_name in hosting(assignment, net_name) {
            let Some(node) = desired.nodes.get(node_name) else {
                continue;
            };
            let Some(block) = assignment.block(net_name, node_name) else {
                continue;
            };
            let bridge = namer.bridge(node_name, net_name);
            let e = SliceEntry::Bridge(bridge_entry(net_name, n, node, block, &np, bridge));
            if let Some(entries) = out.slices.get_mut(node_name) {
                entries.insert(e.key().to_string(), SliceEnvelope::new(e));
            }
        }
    }
}

/// One GRE port a tunnel needs: (this end, peer name for the port, remote address, peer
/// node).
type PortEnd<'a> = (&'a str, String, Ipv4Addr, Option<&'a str>);

/// The GRE port entries of one tunnel on the slices of its ends, and its plan (with why
/// it is not fully programmed).
fn gre_port_entries(
    out: &mut Plan,
    t: &TunnelWork<'_>,
    desired: &Desired<'_>,
    assignment: &Assignment,
    namer: &mut Namer<'_>,
) -> TunnelPlan {
    let mut tp = TunnelPlan {
        network: t.network.to_string(),
        ends: t.nodes.iter().map(|s| s.to_string()).collect(),
        programmed_on: vec![],
        problem: None,
    };
    let Some(np) = out.networks.get(t.network).cloned() else {
        tp.problem = Some(Reason::new(
            "NetworkNotFound",
            format!("network {} does not exist", t.network),
        ));
        return tp;
    };
    let (ports, mut problems) = port_ends(t, desired);
    for (local, peer_label, remote_ip, peer) in ports {
        if !desired.nodes.contains_key(local) {
            problems.push(format!("node {local} is not registered"));
            continue;
        }
        if assignment.block(t.network, local).is_none() {
            problems.push(format!(
                "node {local} has no block in network {}",
                t.network
            ));
            continue;
        }
        let e = SliceEntry::Tunnel(TunnelEntry {
            tunnel: t.name.clone(),
            network: t.network.to_string(),
            bridge: namer.bridge(local, t.network),
            port: namer.port(local, t.network, &peer_label),
            peer: peer.map(str::to_string),
            remote_ip,
            key: np.gre_key,
            split_horizon: np.full_mesh,
        });
        let key = e.key().to_string();
        let Some(entries) = out.slices.get_mut(local) else {
            continue;
        };
        if let Some(SliceEntry::Tunnel(other)) = entries.get(&key).map(|e| &e.entry) {
            problems.push(format!(
                "node {local} already has GRE port {} for tunnel {}",
                other.port, other.tunnel
            ));
            continue;
        }
        entries.insert(key, SliceEnvelope::new(e));
        tp.programmed_on.push(local.to_string());
    }
    if !problems.is_empty() {
        let reason = if problems.iter().any(|p| p.contains("not registered")) {
            "NodeNotFound"
        } else {
            "NotPlanned"
        };
        tp.problem = Some(Reason::new(reason, problems.join("; ")));
    }
    tp
}

/// The ports a tunnel needs: one towards a remote address, or one on each of two nodes
/// towards the other; and the problems that leave ports out.
fn port_ends<'a>(t: &TunnelWork<'a>, desired: &Desired<'_>) -> (Vec<PortEnd<'a>>, Vec<String>) {
    let mut problems = vec![];
    let mut ports: Vec<PortEnd<'a>> = vec![];
    match (t.nodes.as_slice(), t.remote) {
        ([local], Some(remote)) => ports.push((local, remote.to_string(), remote, None)),
        ([a, b], None) => {
            for (local, peer) in [(*a, *b), (*b, *a)] {
                match desired.nodes.get(peer) {
                    Some(p) => ports.push((local, peer.to_string(), p.spec.address, Some(peer))),
                    None => problems.push(format!("node {peer} is not registered")),
                }
            }
        }
        _ => problems.push("a tunnel joins two nodes, or one node and a remote address".into()),
    }
    (ports, problems)
}

/// A container's entry on its node's slice, or why it stays Pending.
fn place_container(
    out: &mut Plan,
    name: &str,
    c: &Container,
    links: &[(&str, &Link)],
    desired: &Desired<'_>,
    assignment: &Assignment,
    namer: &mut Namer<'_>,
) -> ContainerPlan {
    let node_name = c.spec.node.as_str();
    let mut cp = ContainerPlan {
        node: node_name.to_string(),
        pending: None,
    };
    let entry = match desired.nodes.get(node_name) {
        None => Err(Reason::new(
            "NodeNotFound",
            format!("node {node_name} is not registered (no Node object)"),
        )),
        Some(node) => container_entry(name, c, node, links, out, desired, assignment),
    };
    match entry {
        Ok(mut e) => {
            // Named only now that the entry goes in: a Pending container holds no names.
            for a in &mut e.attachments {
                a.bridge = namer.bridge(node_name, &a.network);
                a.host_veth = namer.veth(node_name, name, &a.interface);
            }
            let e = SliceEntry::Container(e);
            if let Some(entries) = out.slices.get_mut(node_name) {
                entries.insert(e.key().to_string(), SliceEnvelope::new(e));
            }
        }
        Err(r) => cp.pending = Some(r),
    }
    cp
}

fn bridge_entry(
    name: &str,
    n: &Network,
    node: &Node,
    block: Ipv4Net,
    np: &NetworkPlan,
    bridge: String,
) -> BridgeEntry {
    let gateway = Ipv4Net::new(net::gateway_of(block), n.spec.cidr.prefix_len()).unwrap_or(block);
    BridgeEntry {
        network: name.to_string(),
        bridge,
        datapath: node.spec.datapath,
        mtu: np.mtu,
        cidr: n.spec.cidr,
        block,
        gateway,
        gre_key: np.gre_key,
        rstp: !np.full_mesh,
        masquerade: true,
    }
}

fn resolve_link(l: &Link, desired: &Desired<'_>, assignment: &Assignment) -> LinkPlan {
    let consumer = desired.containers.get(l.spec.from.as_str());
    let mut lp = LinkPlan {
        consumer_node: consumer.map(|c| c.spec.node.clone()),
        target_container: l.spec.to.container.clone(),
        endpoint: None,
        problem: None,
    };
    let resolved = (|| {
        let port = u16::try_from(l.spec.to.port).map_err(|_| {
            Reason::new(
                "InvalidPort",
                format!("port {} is out of range", l.spec.to.port),
            )
        })?;
        if let Some(addr) = l.spec.to.address {
            return Ok(SocketAddrV4::new(addr, port));
        }
        let Some(target_name) = l.spec.to.container.as_deref() else {
            return Err(Reason::new(
                "InvalidTarget",
                "the link names neither a container nor an address",
            ));
        };
        let Some(target) = desired.containers.get(target_name) else {
            return Err(Reason::new(
                "TargetNotFound",
                format!("container {target_name} does not exist"),
            ));
        };
        let Some(consumer) = consumer else {
            return Err(Reason::new(
                "ConsumerNotFound",
                format!("container {} does not exist", l.spec.from),
            ));
        };
        let shared = consumer
            .spec
            .networks
            .iter()
            .find(|a| target.spec.networks.iter().any(|t| t.network == a.network));
        let Some(shared) = shared else {
            return Err(Reason::new(
                "NoCommonNetwork",
                format!(
                    "containers {} and {target_name} share no network",
                    l.spec.from
                ),
            ));
        };
        match assignment.address(target_name, &shared.network) {
            Some(ip) => Ok(SocketAddrV4::new(ip, port)),
            None => Err(Reason::new(
                "TargetPending",
                format!(
                    "container {target_name} has no address in network {} yet",
                    shared.network
                ),
            )),
        }
    })();
    match resolved {
        Ok(ep) => lp.endpoint = Some(ep),
        Err(r) => lp.problem = Some(r),
    }
    lp
}

fn container_entry(
    name: &str,
    c: &Container,
    node: &Node,
    links: &[(&str, &Link)],
    out: &Plan,
    desired: &Desired<'_>,
    assignment: &Assignment,
) -> Result<ContainerEntry, Reason> {
    let attachments = attachments(name, c, node, out, desired, assignment)?;
    let ports = match attachments.first() {
        Some(first) => published_ports(c, node.spec.address, first.address.addr()),
        None => vec![],
    };
    // The apply refuses a spec whose hardening Docker would refuse; one stored under older
    // rules waits here, named, rather than reaching the agent.
    let hardening = topo_schema::hardening::resolve(&c.spec)
        .map_err(|e| Reason::new("InvalidSpec", e.to_string()))?;
    let (mut env, hosts) = link_environment(links);
    // The user's own environment wins over generated link variables.
    env.extend(c.spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(ContainerEntry {
        name: name.to_string(),
        uid: c.metadata.uid.clone().unwrap_or_default(),
        generation: c.metadata.generation.unwrap_or(0),
        docker_name: format!("topo-{name}"),
        image: c.spec.image.clone(),
        command: c.spec.command.clone(),
        env,
        pull_policy: c.spec.image_pull_policy,
        hosts: hosts
            .into_iter()
            .map(|(name, ip)| HostEntry { name, ip })
            .collect(),
        attachments,
        ports,
        links: link_rules(links, out),
        hardening: Box::new(hardening),
    })
}

/// One attachment per network of the container, with its address, block gateway and MTU;
/// Pending while a network or an address is missing. Bridge and host veth names are left
/// empty: the caller names them once the entry is placed.
fn attachments(
    name: &str,
    c: &Container,
    node: &Node,
    out: &Plan,
    desired: &Desired<'_>,
    assignment: &Assignment,
) -> Result<Vec<AttachmentEntry>, Reason> {
    let node_name = c.spec.node.as_str();
    let mut attachments = Vec::with_capacity(c.spec.networks.len());
    for (i, a) in c.spec.networks.iter().enumerate() {
        let network = a.network.as_str();
        let (Some(n), Some(np)) = (desired.networks.get(network), out.networks.get(network)) else {
            return Err(Reason::new(
                "NetworkNotFound",
                format!("network {network} does not exist"),
            ));
        };
        let ip = assignment.address(name, network).ok_or_else(|| {
            Reason::new(
                "AddressPending",
                format!("no address in network {network} yet"),
            )
        })?;
        let block = assignment.block(network, node_name).ok_or_else(|| {
            Reason::new(
                "AddressPending",
                format!("node {node_name} has no block in network {network} yet"),
            )
        })?;
        let interface = c.spec.interface_of(i);
        attachments.push(AttachmentEntry {
            network: network.to_string(),
            bridge: String::new(),
            host_veth: String::new(),
            interface,
            address: Ipv4Net::new(ip, n.spec.cidr.prefix_len())
                .unwrap_or_else(|_| Ipv4Net::from(ip)),
            mtu: np.mtu,
            default_gateway: (i == 0).then(|| net::gateway_of(block)),
            tx_checksum_off: node.spec.datapath == Datapath::Netdev,
        });
    }
    Ok(attachments)
}

/// The host ports the container publishes, towards its first address: on the port's hostIP,
/// else only on the node's underlay address (never on every local address unasked, where it
/// would take over the node's own services).
fn published_ports(
    c: &Container,
    node_address: Ipv4Addr,
    container_ip: Ipv4Addr,
) -> Vec<PublishedPort> {
    c.spec
        .ports
        .iter()
        .filter_map(|p| {
            Some(PublishedPort {
                host_ip: p.host_ip.unwrap_or(node_address),
                host_port: u16::try_from(p.host_port?).ok()?,
                container_port: u16::try_from(p.container_port).ok()?,
                protocol: p.protocol,
                container_ip,
            })
        })
        .collect()
}

/// The Docker-link environment and hosts entries of the container's aliased links. Several
/// links may share an alias (MongoDB's 27017 and 27018 as `db`): like Docker, `DB_PORT` and
/// the hosts entry go to the lowest port, whatever the links are named.
fn link_environment(
    links: &[(&str, &Link)],
) -> (BTreeMap<String, String>, BTreeMap<String, Ipv4Addr>) {
    let mut env = BTreeMap::new();
    let mut hosts: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
    let mut aliased: Vec<(&Link, SocketAddrV4)> = links
        .iter()
        .filter(|(_, l)| l.spec.alias.is_some())
        .filter_map(|(_, l)| Some((*l, l.spec.listen_addr()?)))
        .collect();
    aliased.sort_by_key(|(l, listen)| (l.spec.to.port, l.spec.protocol, *listen));
    for (l, listen) in aliased {
        let Some(alias) = &l.spec.alias else { continue };
        for (k, v) in link_env(alias, listen, l.spec.to.port, l.spec.protocol.as_str()) {
            env.entry(k).or_insert(v);
        }
        hosts.entry(alias.clone()).or_insert(*listen.ip());
    }
    (env, hosts)
}

/// One rule per link the container consumes: where it listens and where it forwards (or
/// why it cannot yet).
fn link_rules(links: &[(&str, &Link)], out: &Plan) -> Vec<LinkRule> {
    let mut rules = Vec::with_capacity(links.len());
    for (link_name, l) in links {
        let Some(listen) = l.spec.listen_addr() else {
            continue;
        };
        let (target, reason, message) = match out.links.get(*link_name) {
            Some(LinkPlan {
                endpoint: Some(ep), ..
            }) => (Some(*ep), None, None),
            Some(LinkPlan {
                problem: Some(r), ..
            }) => (None, Some(r.reason.clone()), Some(r.message.clone())),
            _ => (None, None, None),
        };
        rules.push(LinkRule {
            link: link_name.to_string(),
            generation: l.metadata.generation.unwrap_or(0),
            listen,
            protocol: l.spec.protocol,
            target,
            reason,
            message,
        });
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam;
    use topo_schema::{
        ContainerSpec, LinkSpec, LinkTarget, NetworkAttachment, NetworkSpec, NetworkStatus,
        NodeSpec, ObjectRef, PortMapping, Protocol,
    };

    fn node(name: &str, addr: &str, datapath: Datapath) -> Resource {
        Resource::Node(Node::new(
            Kind::Node,
            name,
            NodeSpec {
                address: addr.parse().unwrap(),
                datapath,
                reserved_ports: None,
            },
        ))
    }

    fn network(name: &str, cidr: &str, topology: Topology, gre_key: Option<u32>) -> Resource {
        Resource::Network(Network::new(
            Kind::Network,
            name,
            NetworkSpec {
                cidr: cidr.parse().unwrap(),
                block_size: 24,
                mtu: None,
                topology,
                gre_key,
            },
        ))
    }

    fn container(name: &str, node: &str, nets: &[(&str, Option<&str>)]) -> Resource {
        let mut c = Container::new(
            Kind::Container,
            name,
            ContainerSpec {
                node: node.into(),
                image: "topo/busybox:latest".into(),
                command: vec!["sleep".into(), "1d".into()],
                env: BTreeMap::from([("LOG".to_string(), "info".to_string())]),
                image_pull_policy: Default::default(),
                networks: nets
                    .iter()
                    .map(|(n, ip)| NetworkAttachment {
                        network: n.to_string(),
                        ip: ip.map(|s| s.parse().unwrap()),
                        interface: None,
                    })
                    .collect(),
                ports: vec![],
                ..Default::default()
            },
        );
        c.metadata.uid = Some(format!("uid-{name}"));
        c.metadata.generation = Some(3);
        Resource::Container(c)
    }

    fn link(name: &str, from: &str, to: LinkTarget, alias: Option<&str>) -> Resource {
        Resource::Link(Link::new(
            Kind::Link,
            name,
            LinkSpec {
                from: from.into(),
                to,
                listen: None,
                protocol: Protocol::Tcp,
                alias: alias.map(str::to_string),
            },
        ))
    }

    fn to_container(c: &str, port: u32) -> LinkTarget {
        LinkTarget {
            container: Some(c.into()),
            address: None,
            port,
        }
    }

    fn tunnel(name: &str, net: &str, a: &str, b: &str) -> Resource {
        Resource::Tunnel(Tunnel::new(
            Kind::Tunnel,
            name,
            TunnelSpec {
                network: net.into(),
                nodes: vec![a.into(), b.into()],
                node: None,
                remote: None,
            },
        ))
    }

    /// Plans `objs` as the leader would after an apply of all of them.
    fn plan_all(objs: &[Resource]) -> Plan {
        let changed: Vec<ObjectRef> = objs.iter().map(Resource::object_ref).collect();
        let ch = ipam::plan(
            objs.iter(),
            &changed,
            &Default::default(),
            &Default::default(),
        )
        .unwrap();
        plan(
            &Desired::from_resources(objs.iter()),
            &ch.assignment,
            &NameTable::default(),
        )
    }

    fn entry<'a>(p: &'a Plan, node: &str, key: &str) -> &'a SliceEntry {
        &p.slices[node][key].entry
    }

    fn container_entry<'a>(p: &'a Plan, node: &str, name: &str) -> &'a ContainerEntry {
        match entry(p, node, &format!("containers/{name}")) {
            SliceEntry::Container(c) => c,
            other => panic!("{other:?}"),
        }
    }

    fn three_node_mesh() -> Vec<Resource> {
        vec![
            node("n1", "192.168.100.1", Datapath::Netdev),
            node("n2", "192.168.100.2", Datapath::System),
            node("n3", "192.168.100.3", Datapath::System),
            network("ov", "10.2.0.0/16", Topology::Mesh, None),
            container("a", "n1", &[("ov", None)]),
            container("b", "n2", &[("ov", None)]),
            container("c", "n3", &[("ov", Some("10.2.9.9"))]),
        ]
    }

    #[test]
    fn mesh_derives_one_tunnel_per_pair_with_ports_on_both_ends() {
        let p = plan_all(&three_node_mesh());
        let names: Vec<&String> = p.derived_tunnels.keys().collect();
        assert_eq!(names, ["ov-n1-n2", "ov-n1-n3", "ov-n2-n3"]);
        let t = &p.derived_tunnels["ov-n1-n2"];
        assert_eq!(t.metadata.labels[LABEL_DERIVED_FROM], "network.ov");
        assert_eq!(t.spec.nodes, vec!["n1".to_string(), "n2".to_string()]);
        let port = names::gre_port_name("ov", "n2");
        let SliceEntry::Tunnel(te) = entry(&p, "n1", &format!("tunnels/{port}")) else {
            panic!()
        };
        assert_eq!(te.remote_ip, "192.168.100.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(te.peer.as_deref(), Some("n2"));
        assert!(te.split_horizon);
        assert_eq!(te.key, 1);
        assert_eq!(te.tunnel, "ov-n1-n2");
        for n in ["n1", "n2", "n3"] {
            let tunnels = p.slices[n]
                .keys()
                .filter(|k| k.starts_with("tunnels/"))
                .count();
            assert_eq!(tunnels, 2, "{n}");
        }
        assert_eq!(
            p.tunnels["ov-n2-n3"].programmed_on,
            vec!["n2".to_string(), "n3".to_string()]
        );
    }

    #[test]
    fn bridge_has_block_gateway_datapath_and_no_rstp_in_a_mesh() {
        let p = plan_all(&three_node_mesh());
        let SliceEntry::Bridge(b) = entry(&p, "n1", "bridges/ov") else {
            panic!()
        };
        assert_eq!(b.bridge, "tb-ov");
        assert_eq!(b.block, "10.2.0.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(b.gateway.to_string(), "10.2.0.1/16");
        assert_eq!(b.datapath, Datapath::Netdev);
        assert_eq!(b.mtu, 1458);
        assert!(!b.rstp);
        assert!(b.masquerade);
        let SliceEntry::Node(n) = entry(&p, "n2", "node") else {
            panic!()
        };
        assert_eq!(n.address, "192.168.100.2".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn container_attachments_gateway_and_ports() {
        let mut objs = three_node_mesh();
        objs.push(network("second", "10.3.0.0/16", Topology::Mesh, None));
        let mut web = container("web", "n1", &[("ov", None), ("second", Some("10.3.7.7"))]);
        if let Resource::Container(c) = &mut web {
            c.spec.ports.push(PortMapping {
                container_port: 80,
                host_port: Some(8080),
                protocol: Protocol::Tcp,
                host_ip: None,
            });
            c.spec.ports.push(PortMapping {
                container_port: 81,
                host_port: None,
                protocol: Protocol::Tcp,
                host_ip: None,
            });
            c.spec.ports.push(PortMapping {
                container_port: 53,
                host_port: Some(5353),
                protocol: Protocol::Udp,
                host_ip: Some(Ipv4Addr::UNSPECIFIED),
            });
            c.spec.resources = Some(Box::new(topo_schema::Resources {
                memory: Some(topo_schema::Quantity("64Mi".into())),
                cpus: None,
                pids: Some(32),
            }));
            c.spec.read_only_root_filesystem = true;
        }
        objs.push(web);
        let p = plan_all(&objs);
        let c = container_entry(&p, "n1", "web");
        assert_eq!(c.docker_name, "topo-web");
        assert_eq!(c.uid, "uid-web");
        assert_eq!(c.generation, 3);
        assert_eq!(c.attachments.len(), 2);
        let (a0, a1) = (&c.attachments[0], &c.attachments[1]);
        assert_eq!(a0.interface, "eth0");
        assert_eq!(a1.interface, "eth1");
        assert_eq!(a0.address.to_string(), "10.2.0.3/16");
        assert_eq!(a1.address.to_string(), "10.3.7.7/16");
        assert_eq!(a0.default_gateway, Some("10.2.0.1".parse().unwrap()));
        assert_eq!(a1.default_gateway, None);
        assert!(a0.tx_checksum_off, "n1 runs the netdev datapath");
        assert_eq!(a0.host_veth, names::veth_host_name("web", "eth0"));
        assert_eq!(c.ports.len(), 2);
        assert_eq!(
            c.ports[0].container_ip,
            "10.2.0.3".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(c.ports[0].host_port, 8080);
        assert_eq!(
            c.ports[0].host_ip,
            "192.168.100.1".parse::<Ipv4Addr>().unwrap(),
            "without hostIP: only the node's underlay address"
        );
        assert_eq!(c.ports[1].host_ip, Ipv4Addr::UNSPECIFIED, "hostIP 0.0.0.0");
        assert_eq!(c.hardening.memory_bytes, Some(64 << 20));
        assert_eq!(c.hardening.pids_limit, Some(32));
        assert!(c.hardening.read_only_root_filesystem);
        assert!(!c.hardening.allow_privilege_escalation);
        // n1 now hosts "second" too; n2 does not.
        assert!(p.slices["n1"].contains_key("bridges/second"));
        assert!(!p.slices["n2"].contains_key("bridges/second"));
        let b = container_entry(&p, "n2", "b");
        assert!(!b.attachments[0].tx_checksum_off);
    }

    #[test]
    fn links_resolve_on_the_first_shared_network() {
        let mut objs = three_node_mesh();
        objs.push(network("back", "10.4.0.0/16", Topology::Mesh, None));
        objs.push(container("app", "n1", &[("back", None), ("ov", None)]));
        objs.push(container(
            "db",
            "n2",
            &[("ov", None), ("back", Some("10.4.5.5"))],
        ));
        objs.push(container("lonely", "n3", &[]));
        objs.push(link("l-db", "app", to_container("db", 6379), Some("db")));
        objs.push(link("l-none", "app", to_container("ghost", 80), None));
        objs.push(link("l-nocommon", "app", to_container("lonely", 81), None));
        objs.push(link(
            "l-fixed",
            "app",
            LinkTarget {
                container: None,
                address: Some("203.0.113.7".parse().unwrap()),
                port: 50000,
            },
            None,
        ));
        let p = plan_all(&objs);
        let app = container_entry(&p, "n1", "app");
        let rule = |name: &str| app.links.iter().find(|l| l.link == name).unwrap();
        // "back" is app's first network that db also joins.
        assert_eq!(rule("l-db").target, Some("10.4.5.5:6379".parse().unwrap()));
        assert_eq!(rule("l-db").listen, "127.0.0.1:6379".parse().unwrap());
        assert_eq!(rule("l-none").target, None);
        assert_eq!(rule("l-none").reason.as_deref(), Some("TargetNotFound"));
        assert_eq!(
            rule("l-nocommon").reason.as_deref(),
            Some("NoCommonNetwork")
        );
        assert_eq!(
            rule("l-fixed").target,
            Some("203.0.113.7:50000".parse().unwrap())
        );
        assert_eq!(
            p.links["l-db"].endpoint,
            Some("10.4.5.5:6379".parse().unwrap())
        );
        // The alias: Docker-link environment and a hosts entry, next to the spec's env.
        assert_eq!(app.env["DB_PORT"], "tcp://127.0.0.1:6379");
        assert_eq!(app.env["DB_PORT_6379_TCP"], "tcp://127.0.0.1:6379");
        assert_eq!(app.env["DB_PORT_6379_TCP_ADDR"], "127.0.0.1");
        assert_eq!(app.env["DB_PORT_6379_TCP_PORT"], "6379");
        assert_eq!(app.env["DB_PORT_6379_TCP_PROTO"], "tcp");
        assert_eq!(app.env["LOG"], "info");
        assert_eq!(
            app.hosts,
            vec![HostEntry {
                name: "db".into(),
                ip: Ipv4Addr::LOCALHOST
            }]
        );
    }

    fn link_with(
        name: &str,
        from: &str,
        to: LinkTarget,
        listen: Option<&str>,
        protocol: Protocol,
        alias: Option<&str>,
    ) -> Resource {
        Resource::Link(Link::new(
            Kind::Link,
            name,
            LinkSpec {
                from: from.into(),
                to,
                listen: listen.map(str::to_string),
                protocol,
                alias: alias.map(str::to_string),
            },
        ))
    }

    /// Seed 001's Docker links: Tomcat linked to MongoDB (two ports) as `db` and to
    /// ElasticSearch as `es`. The environment is exactly Docker's variables, pointing at the
    /// stable listen addresses; `DB_PORT` names the lowest port whatever the links' names.
    #[test]
    fn docker_link_environment_for_several_ports_and_aliases() {
        let mut objs = three_node_mesh();
        objs.push(container("tomcat", "n1", &[("ov", None)]));
        objs.push(container("mongodb", "n2", &[("ov", None)]));
        objs.push(container("elasticsearch", "n3", &[("ov", None)]));
        // Named so that the higher port sorts first.
        objs.push(link_with(
            "a-db-27018",
            "tomcat",
            to_container("mongodb", 27018),
            None,
            Protocol::Tcp,
            Some("db"),
        ));
        objs.push(link_with(
            "b-db-27017",
            "tomcat",
            to_container("mongodb", 27017),
            None,
            Protocol::Tcp,
            Some("db"),
        ));
        objs.push(link_with(
            "es",
            "tomcat",
            to_container("elasticsearch", 9200),
            None,
            Protocol::Tcp,
            Some("es"),
        ));
        let p = plan_all(&objs);
        let tomcat = container_entry(&p, "n1", "tomcat");
        let want: BTreeMap<String, String> = [
            ("DB_PORT", "tcp://127.0.0.1:27017"),
            ("DB_PORT_27017_TCP", "tcp://127.0.0.1:27017"),
            ("DB_PORT_27017_TCP_ADDR", "127.0.0.1"),
            ("DB_PORT_27017_TCP_PORT", "27017"),
            ("DB_PORT_27017_TCP_PROTO", "tcp"),
            ("DB_PORT_27018_TCP", "tcp://127.0.0.1:27018"),
            ("DB_PORT_27018_TCP_ADDR", "127.0.0.1"),
            ("DB_PORT_27018_TCP_PORT", "27018"),
            ("DB_PORT_27018_TCP_PROTO", "tcp"),
            ("ES_PORT", "tcp://127.0.0.1:9200"),
            ("ES_PORT_9200_TCP", "tcp://127.0.0.1:9200"),
            ("ES_PORT_9200_TCP_ADDR", "127.0.0.1"),
            ("ES_PORT_9200_TCP_PORT", "9200"),
            ("ES_PORT_9200_TCP_PROTO", "tcp"),
            ("LOG", "info"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(tomcat.env, want);
        assert_eq!(
            tomcat.hosts,
            vec![
                HostEntry {
                    name: "db".into(),
                    ip: Ipv4Addr::LOCALHOST
                },
                HostEntry {
                    name: "es".into(),
                    ip: Ipv4Addr::LOCALHOST
                },
            ]
        );
        let mongo_ip = p.links["b-db-27017"].endpoint.unwrap().ip().to_owned();
        let listens: Vec<(String, Option<String>)> = tomcat
            .links
            .iter()
            .map(|l| (l.listen.to_string(), l.target.map(|t| t.to_string())))
            .collect();
        assert_eq!(
            listens,
            vec![
                (
                    "127.0.0.1:27018".to_string(),
                    Some(format!("{mongo_ip}:27018"))
                ),
                (
                    "127.0.0.1:27017".to_string(),
                    Some(format!("{mongo_ip}:27017"))
                ),
                (
                    "127.0.0.1:9200".to_string(),
                    p.links["es"].endpoint.map(|e| e.to_string())
                ),
            ]
        );

        // The user's own variable wins over the generated one.
        if let Some(Resource::Container(c)) = objs
            .iter_mut()
            .find(|r| r.name() == "tomcat" && r.kind() == Kind::Container)
        {
            c.spec.env.insert("DB_PORT".into(), "mine".into());
        }
        let p = plan_all(&objs);
        let tomcat = container_entry(&p, "n1", "tomcat");
        assert_eq!(tomcat.env["DB_PORT"], "mine");
        assert_eq!(tomcat.env["DB_PORT_27017_TCP_ADDR"], "127.0.0.1");
    }

    /// A UDP link listening on a non-loopback address: the rule, the environment (UDP
    /// variables) and the hosts entry all use that address.
    #[test]
    fn udp_link_on_a_non_loopback_listen_address() {
        let mut objs = three_node_mesh();
        objs.push(link_with(
            "dns",
            "a",
            to_container("b", 5353),
            Some("10.99.0.1:53"),
            Protocol::Udp,
            Some("dns"),
        ));
        let p = plan_all(&objs);
        let a = container_entry(&p, "n1", "a");
        let rule = &a.links[0];
        assert_eq!(rule.listen, "10.99.0.1:53".parse().unwrap());
        assert_eq!(rule.protocol, Protocol::Udp);
        let b_ip = p.links["dns"].endpoint.unwrap().ip().to_owned();
        assert_eq!(rule.target, Some(SocketAddrV4::new(b_ip, 5353)));
        assert_eq!(a.env["DNS_PORT"], "udp://10.99.0.1:53");
        assert_eq!(a.env["DNS_PORT_5353_UDP"], "udp://10.99.0.1:53");
        assert_eq!(a.env["DNS_PORT_5353_UDP_ADDR"], "10.99.0.1");
        assert_eq!(a.env["DNS_PORT_5353_UDP_PORT"], "53");
        assert_eq!(a.env["DNS_PORT_5353_UDP_PROTO"], "udp");
        assert!(!a.env.keys().any(|k| k.contains("_TCP")), "{:?}", a.env);
        assert_eq!(
            a.hosts,
            vec![HostEntry {
                name: "dns".into(),
                ip: "10.99.0.1".parse().unwrap()
            }]
        );
    }

    /// The target moves to another node: the consumer's rule follows its new address (from
    /// the new node's block), the link's endpoint too, and the consumer's config is unchanged.
    #[test]
    fn a_moved_target_is_followed_without_touching_the_consumer_config() {
        let mut objs = three_node_mesh();
        let mut l = link("l", "a", to_container("b", 6379), Some("redis"));
        l.metadata_mut().generation = Some(4);
        objs.push(l);
        let p = plan_all(&objs);
        let before = container_entry(&p, "n1", "a").clone();
        assert_eq!(
            before.links[0].generation, 4,
            "the rule carries the Link's generation (the entry's is the consumer's: 3)"
        );
        let SliceEntry::Bridge(n2) = entry(&p, "n2", "bridges/ov") else {
            panic!()
        };
        let old = before.links[0].target.unwrap();
        assert!(n2.block.contains(old.ip()), "{old} in n2's block");

        if let Some(Resource::Container(c)) = objs
            .iter_mut()
            .find(|r| r.name() == "b" && r.kind() == Kind::Container)
        {
            c.spec.node = "n3".into();
        }
        let p = plan_all(&objs);
        let after = container_entry(&p, "n1", "a").clone();
        let SliceEntry::Bridge(n3) = entry(&p, "n3", "bridges/ov") else {
            panic!()
        };
        let new = after.links[0].target.unwrap();
        assert!(n3.block.contains(new.ip()), "{new} in n3's block");
        assert_eq!(p.links["l"].endpoint, Some(new));
        assert_eq!(p.links["l"].target_container.as_deref(), Some("b"));
        assert_eq!(before.config_hash(), after.config_hash());
        assert_eq!(before.env, after.env);
        assert!(p.slices["n3"].contains_key("containers/b"));
        assert!(!p.slices["n2"].contains_key("containers/b"));
    }

    #[test]
    fn rewiring_a_link_changes_rules_but_not_the_config_hash() {
        let mut objs = three_node_mesh();
        objs.push(link("l", "a", to_container("b", 6379), Some("redis")));
        let before = container_entry(&plan_all(&objs), "n1", "a").clone();
        objs.pop();
        objs.push(link("l", "a", to_container("c", 6379), Some("redis")));
        let after = container_entry(&plan_all(&objs), "n1", "a").clone();
        assert_ne!(before.links, after.links);
        assert_eq!(
            after.links[0].target,
            Some("10.2.9.9:6379".parse().unwrap())
        );
        assert_eq!(before.config_hash(), after.config_hash());
    }

    #[test]
    fn container_on_unregistered_node_is_pending() {
        let mut objs = three_node_mesh();
        objs.push(container("orphan", "n9", &[("ov", None)]));
        let p = plan_all(&objs);
        assert!(!p.slices.contains_key("n9"));
        assert_eq!(
            p.containers["orphan"].pending.as_ref().unwrap().reason,
            "NodeNotFound"
        );
        // n9 hosts the network, but tunnels to it cannot be programmed without its address.
        let t = &p.tunnels["ov-n1-n9"];
        assert_eq!(t.programmed_on, Vec::<String>::new());
        assert_eq!(t.problem.as_ref().unwrap().reason, "NodeNotFound");
    }

    #[test]
    fn explicit_topologies_use_rstp_unless_a_full_mesh() {
        let mut objs = vec![
            node("n1", "192.168.100.1", Datapath::System),
            node("n2", "192.168.100.2", Datapath::System),
            node("n3", "192.168.100.3", Datapath::System),
            network("ex", "10.5.0.0/16", Topology::Explicit, Some(42)),
            container("a", "n1", &[("ex", None)]),
            container("b", "n2", &[("ex", None)]),
            container("c", "n3", &[("ex", None)]),
            tunnel("t12", "ex", "n1", "n2"),
            tunnel("t23", "ex", "n2", "n3"),
        ];
        let p = plan_all(&objs);
        assert!(p.derived_tunnels.is_empty());
        let SliceEntry::Bridge(b) = entry(&p, "n2", "bridges/ex") else {
            panic!()
        };
        assert!(b.rstp);
        assert_eq!(b.gre_key, 42);
        let SliceEntry::Tunnel(t) = entry(
            &p,
            "n2",
            &format!("tunnels/{}", names::gre_port_name("ex", "n3")),
        ) else {
            panic!()
        };
        assert!(!t.split_horizon);
        objs.push(tunnel("t13", "ex", "n1", "n3"));
        let p = plan_all(&objs);
        let SliceEntry::Bridge(b) = entry(&p, "n2", "bridges/ex") else {
            panic!()
        };
        assert!(!b.rstp);
    }

    #[test]
    fn gre_keys_are_spec_recorded_or_lowest_unused() {
        let mut objs = [
            network("a", "10.1.0.0/16", Topology::Mesh, None),
            network("b", "10.2.0.0/16", Topology::Mesh, Some(1)),
            network("c", "10.3.0.0/16", Topology::Mesh, None),
        ];
        if let Resource::Network(n) = &mut objs[2] {
            n.status = Some(NetworkStatus {
                gre_key: Some(2),
                ..Default::default()
            });
        }
        let d = Desired::from_resources(objs.iter());
        let k = gre_keys(&d.networks);
        assert_eq!(k["b"], 1);
        assert_eq!(k["c"], 2);
        assert_eq!(k["a"], 3);
    }

    #[test]
    fn long_derived_names_stay_valid_and_distinct() {
        let long = "a".repeat(40);
        let x = derived_tunnel_name(&long, "node-number-one", "node-number-two");
        let y = derived_tunnel_name(&long, "node-number-one", "node-number-three");
        assert!(x.len() <= 63 && y.len() <= 63);
        assert_ne!(x, y);
        assert!(names::check_dns1123_label(&x).is_ok(), "{x}");
        assert_eq!(derived_tunnel_name("ov", "n2", "n1"), "ov-n1-n2");
    }

    /// A tree of explicit tunnels with 20 containers per node: the median node's slice is the
    /// same size whatever the number of nodes.
    #[test]
    fn median_slice_does_not_grow_with_nodes_in_a_tree() {
        fn median_bytes(nodes: usize) -> usize {
            let mut objs = vec![network("ov", "10.0.0.0/8", Topology::Explicit, None)];
            for n in 0..nodes {
                objs.push(node(
                    &format!("n{n:04}"),
                    &format!("192.168.{}.{}", n / 250, n % 250 + 1),
                    Datapath::System,
                ));
                for i in 0..20 {
                    objs.push(container(
                        &format!("c{n:04}-{i:02}"),
                        &format!("n{n:04}"),
                        &[("ov", None)],
                    ));
                }
                if n > 0 {
                    let parent = (n - 1) / 4;
                    objs.push(tunnel(
                        &format!("t{n:04}"),
                        "ov",
                        &format!("n{parent:04}"),
                        &format!("n{n:04}"),
                    ));
                }
            }
            let p = plan_all(&objs);
            let mut sizes: Vec<usize> = p
                .slices
                .values()
                .map(|entries| {
                    entries
                        .values()
                        .map(|e| serde_json::to_vec(e).unwrap().len())
                        .sum()
                })
                .collect();
            sizes.sort();
            sizes[sizes.len() / 2]
        }
        let small = median_bytes(20);
        let large = median_bytes(200);
        // Names grow by no byte here (fixed-width), so sizes may differ by address digits only.
        assert!(
            large <= small + small / 20,
            "median slice grew from {small} to {large} bytes"
        );
    }
}
