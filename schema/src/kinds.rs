//! The five kinds of SPEC.md.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::meta::{Condition, ObjectMeta};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum Kind {
    Node,
    Network,
    Container,
    Link,
    Tunnel,
}

impl Kind {
    /// In the order objects are applied: what others refer to comes first.
    pub const ALL: [Kind; 5] = [
        Kind::Node,
        Kind::Network,
        Kind::Container,
        Kind::Link,
        Kind::Tunnel,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Node => "Node",
            Kind::Network => "Network",
            Kind::Container => "Container",
            Kind::Link => "Link",
            Kind::Tunnel => "Tunnel",
        }
    }

    /// The lowercase plural used in API paths and by `topoctl get`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Node => "nodes",
            Kind::Network => "networks",
            Kind::Container => "containers",
            Kind::Link => "links",
            Kind::Tunnel => "tunnels",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Kind::Node => "no",
            Kind::Network => "net",
            Kind::Container => "c",
            Kind::Link => "ln",
            Kind::Tunnel => "tun",
        }
    }

    /// Accepts the kind, its lowercase singular, plural or short form.
    pub fn parse(s: &str) -> Option<Kind> {
        let l = s.to_ascii_lowercase();
        Kind::ALL
            .into_iter()
            .find(|k| l == k.as_str().to_ascii_lowercase() || l == k.plural() || l == k.short())
    }

    /// The kind written in a manifest's `kind:` field (exact case).
    pub fn from_manifest(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An object of one kind: `apiVersion`, `kind`, `metadata`, `spec`, server-written `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Object<S, St> {
    /// The API version: topo.dev/v1alpha1.
    pub api_version: String,
    /// The kind of the object: Node, Network, Container, Link or Tunnel.
    pub kind: String,
    /// The object's name, labels and annotations, and the fields the server sets.
    pub metadata: ObjectMeta,
    /// What the object should be: written by the user.
    pub spec: S,
    /// What the object is: written by the controller from what the agents report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<St>,
}

impl<S, St> Object<S, St> {
    pub fn new(kind: Kind, name: impl Into<String>, spec: S) -> Self {
        Object {
            api_version: crate::API_VERSION.to_string(),
            kind: kind.as_str().to_string(),
            metadata: ObjectMeta::named(name),
            spec,
            status: None,
        }
    }
}

// ---------------------------------------------------------------- Node

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Datapath {
    /// The kernel datapath (needs the openvswitch module).
    #[default]
    System,
    /// OVS's userspace datapath; OVS itself encapsulates GRE.
    Netdev,
}

impl Datapath {
    /// The OVSDB `Bridge.datapath_type` value.
    pub fn ovs_type(self) -> &'static str {
        match self {
            Datapath::System => "system",
            Datapath::Netdev => "netdev",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    /// Underlay IPv4 address: the remote_ip of every GRE port towards this node.
    #[serde(with = "crate::serde_ip::ipv4")]
    #[schemars(with = "String")]
    pub address: Ipv4Addr,
    /// system (the kernel's, default) or netdev (OVS's userspace datapath).
    #[serde(default)]
    pub datapath: Datapath,
    /// Host ports no container may publish on this node. Absent: 22, 2379, 2380 and 8443
    /// (ssh, etcd, the API; `hostports::DEFAULT_RESERVED_PORTS`); `[]` reserves nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_ports: Option<Vec<u16>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeStatus {
    /// The metadata.generation the status was last computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The object's conditions; Ready is the one every kind has.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// network → the node's address block in it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub blocks: BTreeMap<String, String>,
    /// Version of the agent that last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
}

// ---------------------------------------------------------------- Network

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    /// Tunnels among all nodes that host the network, derived by the controller.
    #[default]
    Mesh,
    /// Only the Tunnel objects the user writes.
    Explicit,
}

// `blockSize` is optional in manifests and defaulted as it is read (`NetworkSpecWire`), so
// every part — validation, IPAM, the agents, `get -o yaml` — sees the effective value and a
// manifest that leaves it out applies `unchanged` again.
/// The network's address range, how it is cut into per-node blocks, and how it is carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(
    rename_all = "camelCase",
    deny_unknown_fields,
    from = "NetworkSpecWire"
)]
pub struct NetworkSpec {
    /// The network's address range, an IPv4 CIDR such as 10.2.0.0/16.
    #[serde(with = "crate::serde_ip::cidr")]
    #[schemars(with = "String")]
    pub cidr: Ipv4Net,
    /// Prefix length of the block each hosting node leases (24 = a /24 per node).
    pub block_size: u8,
    /// Container MTU; default: underlay MTU minus the GRE overhead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// mesh: tunnels among all nodes that host the network; explicit: only Tunnel objects.
    #[serde(default)]
    pub topology: Topology,
    /// GRE key; unique per network; assigned by the controller when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gre_key: Option<u32>,
}

/// The block prefix a network gets when its manifest names none: a /24 per node, never
/// wider than the cidr itself (a /26 network is one /26 block).
pub const DEFAULT_BLOCK_PREFIX: u8 = 24;

impl NetworkSpec {
    /// `blockSize` when absent: [`DEFAULT_BLOCK_PREFIX`], or the cidr's prefix when that is
    /// narrower.
    pub fn default_block_size(cidr: Ipv4Net) -> u8 {
        DEFAULT_BLOCK_PREFIX.max(cidr.prefix_len())
    }
}

// [`NetworkSpec`] as written: `blockSize` may be left out. Its default depends on the
// sibling `cidr`, which serde's per-field defaults cannot see, hence the extra type.
/// The network's address range, how it is cut into per-node blocks, and how it is carried.
#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(rename = "NetworkSpec")]
pub struct NetworkSpecWire {
    /// The network's address range, an IPv4 CIDR such as 10.2.0.0/16.
    #[serde(with = "crate::serde_ip::cidr")]
    #[schemars(with = "String")]
    cidr: Ipv4Net,
    /// Prefix length of the block each hosting node leases (24 = a /24 per node). Optional:
    /// default 24, or the cidr's own prefix when that is narrower (never wider than the cidr).
    #[serde(default)]
    block_size: Option<u8>,
    /// Container MTU; default: underlay MTU minus the GRE overhead.
    #[serde(default)]
    mtu: Option<u32>,
    /// mesh: tunnels among all nodes that host the network; explicit: only Tunnel objects.
    #[serde(default)]
    topology: Topology,
    /// GRE key; unique per network; assigned by the controller when absent.
    #[serde(default)]
    gre_key: Option<u32>,
}

impl From<NetworkSpecWire> for NetworkSpec {
    fn from(w: NetworkSpecWire) -> Self {
        NetworkSpec {
            block_size: w
                .block_size
                .unwrap_or_else(|| NetworkSpec::default_block_size(w.cidr)),
            cidr: w.cidr,
            mtu: w.mtu,
            topology: w.topology,
            gre_key: w.gre_key,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkStatus {
    /// The metadata.generation the status was last computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The object's conditions; Ready is the one every kind has.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The GRE key in force (the spec's, or the assigned one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gre_key: Option<u32>,
    /// The container MTU in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// node → block.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub blocks: BTreeMap<String, String>,
    /// How many addresses of the network are allocated.
    #[serde(default)]
    pub allocated: u32,
}

// ---------------------------------------------------------------- Container

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum PullPolicy {
    #[default]
    IfNotPresent,
    Never,
    Always,
}

#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkAttachment {
    /// The Network to join.
    pub network: String,
    /// Static address (pipework); else allocated from the node's block.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::serde_ip::opt_ipv4"
    )]
    #[schemars(with = "Option<String>")]
    pub ip: Option<Ipv4Addr>,
    /// Default eth0, eth1, ... in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortMapping {
    /// The port inside the container.
    pub container_port: u32,
    /// The port published on the node, like docker run -p; none: not published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u32>,
    /// tcp (default) or udp.
    #[serde(default)]
    pub protocol: Protocol,
    /// The node address the host port is published on, as in `docker run -p
    /// IP:HOSTPORT:CONTAINERPORT`. Absent: only the node's underlay address (its Node's
    /// spec.address), so a published port never takes over a service listening on the node's
    /// other addresses. "0.0.0.0": every local address of the node. Another address: that
    /// one, which must be an address of the node (the agent reports HostIPNotLocal and
    /// publishes nothing while it is not).
    #[serde(
        default,
        rename = "hostIP",
        skip_serializing_if = "Option::is_none",
        with = "crate::serde_ip::opt_ipv4"
    )]
    #[schemars(with = "Option<String>")]
    pub host_ip: Option<Ipv4Addr>,
}

/// A resource quantity written as a string or a bare number (`"256Mi"`, `0.5`), kept as the
/// text the user wrote; [`crate::hardening`] reads it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Quantity(pub String);

impl Quantity {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Quantity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Quantity;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a quantity such as \"256Mi\" or 0.5")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Quantity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Quantity".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "anyOf": [{"type": "string"}, {"type": "number"}]
        })
    }
}

/// Limits of what the container may use, as `docker run --memory/--cpus/--pids-limit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    /// Memory limit: bytes, or a number with a suffix Ki, Mi, Gi, Ti (powers of 1024) or k,
    /// M, G, T (powers of 1000): "256Mi", "1Gi", "1.5G". At least 6Mi (Docker's minimum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// CPU limit in CPUs, like `docker run --cpus`: "0.5" is half a CPU. At least 0.01.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Quantity>,
    /// The most processes and threads the container may hold at once (`--pids-limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4_194_304))]
    pub pids: Option<i64>,
}

/// Linux capabilities added to or dropped from Docker's default set (`--cap-add`,
/// `--cap-drop`). Names as `capabilities(7)` has them, with or without the `CAP_` prefix
/// (`NET_ADMIN`, `CAP_NET_ADMIN`), or `ALL`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop: Vec<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerSpec {
    /// The Node that runs the container; changing it moves the container.
    pub node: String,
    /// The Docker image, e.g. topo/busybox:latest.
    pub image: String,
    /// The command and its arguments; default: the image's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Environment variables of the container.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// When Docker pulls the image: IfNotPresent, Never or Always.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,
    /// The networks the container joins, each on its own interface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkAttachment>,
    /// Ports published on the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
    /// Memory, CPU and process limits. Absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Box<Resources>>,
    /// The user the container's processes run as, `docker run --user`: a name or a numeric
    /// id, with an optional group ("1000:1000", "nobody", "app:app"). Absent: the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Mounts the container's root filesystem read-only (`docker run --read-only`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only_root_filesystem: bool,
    /// Capabilities added to or dropped from Docker's default set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Box<Capabilities>>,
    /// Lets processes gain privileges (setuid binaries, file capabilities). Default false:
    /// the container runs with `no-new-privileges`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_privilege_escalation: bool,
}

impl ContainerSpec {
    /// The interface name of attachment `i`: explicit, or eth0, eth1, ... in order.
    pub fn interface_of(&self, i: usize) -> String {
        self.networks[i]
            .interface
            .clone()
            .unwrap_or_else(|| format!("eth{i}"))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerStatus {
    /// The metadata.generation the status was last computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The object's conditions; Ready is the one every kind has.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The node the container runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// network → address.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub addresses: BTreeMap<String, String>,
    #[serde(
        default,
        rename = "containerID",
        skip_serializing_if = "Option::is_none"
    )]
    pub container_id: Option<String>,
    /// How many times Docker restarted the container.
    #[serde(default)]
    pub restart_count: u32,
}

// ---------------------------------------------------------------- Link

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LinkTarget {
    /// A container, resolved on the network it shares with the consumer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Or a fixed address (geard's remote host).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::serde_ip::opt_ipv4"
    )]
    #[schemars(with = "Option<String>")]
    pub address: Option<Ipv4Addr>,
    /// The target's port.
    pub port: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LinkSpec {
    /// The consumer container.
    pub from: String,
    /// The service reached: a container and port, or an address and port.
    pub to: LinkTarget,
    /// `ip:port` inside the consumer; default 127.0.0.1:<to.port>.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// tcp (default) or udp.
    #[serde(default)]
    pub protocol: Protocol,
    /// Docker-link style alias: environment variables and a hosts entry in the consumer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
}

impl LinkSpec {
    /// The listen address, defaulted. Only valid after validation.
    pub fn listen_addr(&self) -> Option<std::net::SocketAddrV4> {
        match &self.listen {
            Some(l) => l.parse().ok(),
            None => u16::try_from(self.to.port)
                .ok()
                .map(|p| std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, p)),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LinkStatus {
    /// The metadata.generation the status was last computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The object's conditions; Ready is the one every kind has.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The resolved `ip:port` the listen address is forwarded to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

// ---------------------------------------------------------------- Tunnel

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TunnelSpec {
    /// The Network the tunnel carries.
    pub network: String,
    /// Two managed nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// Or one managed node ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// ... and a remote underlay address.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::serde_ip::opt_ipv4"
    )]
    #[schemars(with = "Option<String>")]
    pub remote: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TunnelStatus {
    /// The metadata.generation the status was last computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The object's conditions; Ready is the one every kind has.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

pub type Node = Object<NodeSpec, NodeStatus>;
pub type Network = Object<NetworkSpec, NetworkStatus>;
pub type Container = Object<ContainerSpec, ContainerStatus>;
pub type Link = Object<LinkSpec, LinkStatus>;
pub type Tunnel = Object<TunnelSpec, TunnelStatus>;

/// Any object. Serialized as the object itself (its `kind` field tells which).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Resource {
    Node(Node),
    Network(Network),
    Container(Container),
    Link(Link),
    Tunnel(Tunnel),
}

/// Why a JSON value is not an object of a known kind.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("missing field `kind`")]
    MissingKind,
    #[error("unknown kind {0:?} (expected one of Node, Network, Container, Link, Tunnel)")]
    UnknownKind(String),
    #[error("unsupported apiVersion {0:?} (expected {api})", api = crate::API_VERSION)]
    UnknownApiVersion(String),
    #[error("{0}")]
    Invalid(#[from] serde_json::Error),
}

impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        Resource::from_value(v).map_err(serde::de::Error::custom)
    }
}

macro_rules! each_kind {
    ($r:expr, $o:ident => $e:expr) => {
        match $r {
            Resource::Node($o) => $e,
            Resource::Network($o) => $e,
            Resource::Container($o) => $e,
            Resource::Link($o) => $e,
            Resource::Tunnel($o) => $e,
        }
    };
}

impl Resource {
    pub fn kind_of_value(v: &serde_json::Value) -> Result<Kind, DecodeError> {
        let kind = v
            .get("kind")
            .and_then(|k| k.as_str())
            .ok_or(DecodeError::MissingKind)?;
        let kind =
            Kind::from_manifest(kind).ok_or_else(|| DecodeError::UnknownKind(kind.into()))?;
        match v.get("apiVersion").and_then(|a| a.as_str()) {
            Some(crate::API_VERSION) => Ok(kind),
            Some(other) => Err(DecodeError::UnknownApiVersion(other.into())),
            None => Err(DecodeError::UnknownApiVersion(String::new())),
        }
    }

    pub fn from_value(v: serde_json::Value) -> Result<Resource, DecodeError> {
        fn typed<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, DecodeError> {
            Ok(serde_json::from_value(v)?)
        }
        Ok(match Resource::kind_of_value(&v)? {
            Kind::Node => Resource::Node(typed(v)?),
            Kind::Network => Resource::Network(typed(v)?),
            Kind::Container => Resource::Container(typed(v)?),
            Kind::Link => Resource::Link(typed(v)?),
            Kind::Tunnel => Resource::Tunnel(typed(v)?),
        })
    }

    pub fn kind(&self) -> Kind {
        match self {
            Resource::Node(_) => Kind::Node,
            Resource::Network(_) => Kind::Network,
            Resource::Container(_) => Kind::Container,
            Resource::Link(_) => Kind::Link,
            Resource::Tunnel(_) => Kind::Tunnel,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        each_kind!(self, o => &o.metadata)
    }

    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        each_kind!(self, o => &mut o.metadata)
    }

    pub fn name(&self) -> &str {
        &self.metadata().name
    }

    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef {
            kind: self.kind(),
            name: self.name().to_string(),
        }
    }

    pub fn api_version(&self) -> &str {
        each_kind!(self, o => &o.api_version)
    }

    /// The spec alone, as JSON: what `generation` tracks.
    pub fn spec_value(&self) -> serde_json::Value {
        each_kind!(self, o => serde_json::to_value(&o.spec).unwrap_or_default())
    }

    /// The status as JSON (`null` when none).
    pub fn status_value(&self) -> serde_json::Value {
        each_kind!(self, o => serde_json::to_value(&o.status).unwrap_or_default())
    }

    /// Replaces the status from JSON; a status of the wrong shape is dropped.
    pub fn set_status_value(&mut self, v: serde_json::Value) {
        each_kind!(self, o => o.status = serde_json::from_value(v).ok())
    }

    pub fn clear_status(&mut self) {
        each_kind!(self, o => o.status = None)
    }

    /// Conditions of the status, empty when there is no status.
    pub fn conditions(&self) -> &[Condition] {
        each_kind!(self, o => o.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or(&[]))
    }

    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// `Kind/name`, how users and events name an object.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub struct ObjectRef {
    pub kind: Kind,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        ObjectRef {
            kind,
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}",
            self.kind.as_str().to_ascii_lowercase(),
            self.name
        )
    }
}

/// Conditions live in every status; this lets generic code reach them.
pub trait HasConditions {
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
    fn observed_generation_mut(&mut self) -> &mut Option<i64>;
}

macro_rules! has_conditions {
    ($($t:ty),*) => {$(
        impl HasConditions for $t {
            fn conditions_mut(&mut self) -> &mut Vec<Condition> { &mut self.conditions }
            fn observed_generation_mut(&mut self) -> &mut Option<i64> { &mut self.observed_generation }
        }
    )*};
}
has_conditions!(
    NodeStatus,
    NetworkStatus,
    ContainerStatus,
    LinkStatus,
    TunnelStatus
);
