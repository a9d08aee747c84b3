//! A node's slice: everything one node must hold, derived by the controller, stored under
//! `keys::slice_prefix(node)` one entry per key, read by that node's agent only.
//!
//! Each entry is self-contained (an agent never needs another node's data or the user's
//! objects) and carries [`SLICE_VERSION`]; an agent that meets a version it does not know
//! reports it and leaves the entry alone rather than guessing.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::kinds::{Datapath, Protocol, PullPolicy};

pub const SLICE_VERSION: u32 = 1;

/// Label/external_id keys that mark what topo owns on a host.
pub mod owner {
    /// Docker label and OVSDB external_id: present on everything topo created.
    pub const MANAGED: &str = "topo.dev/managed";
    /// The node whose agent owns it.
    pub const NODE: &str = "topo.dev/node";
    /// `kind/name` of the object it belongs to.
    pub const OBJECT: &str = "topo.dev/object";
    /// Docker label: hash of what requires a recreate (image, command, env, hosts,
    /// hardening).
    pub const CONFIG_HASH: &str = "topo.dev/config-hash";
    /// Docker label: the Container object's uid.
    pub const UID: &str = "topo.dev/uid";
    /// The nftables table topo owns in each namespace.
    pub const NFT_TABLE: &str = "topo";
}

/// One value under a node's slice prefix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SliceEnvelope {
    pub version: u32,
    pub entry: SliceEntry,
}

impl SliceEnvelope {
    pub fn new(entry: SliceEntry) -> Self {
        SliceEnvelope {
            version: SLICE_VERSION,
            entry,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum SliceEntry {
    Node(NodeEntry),
    Bridge(BridgeEntry),
    Tunnel(TunnelEntry),
    Container(ContainerEntry),
}

impl SliceEntry {
    /// The entry's key below the node's slice prefix.
    pub fn key(&self) -> SliceKey {
        match self {
            SliceEntry::Node(_) => SliceKey::Node,
            SliceEntry::Bridge(b) => SliceKey::Bridge(b.network.clone()),
            SliceEntry::Tunnel(t) => SliceKey::Tunnel(t.port.clone()),
            SliceEntry::Container(c) => SliceKey::Container(c.name.clone()),
        }
    }
}

/// Where an entry lives below the node's slice prefix: `node`, `bridges/<network>`,
/// `tunnels/<port>`, `containers/<name>`. Both sides hold keys typed; the text form exists
/// only at the etcd boundary ([`Display`](std::fmt::Display) to write, [`FromStr`] to read).
///
/// The variant order is the order a node is built in (its settings, then bridges, then the
/// GRE ports and containers that go on them), so sorting keys sorts work.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SliceKey {
    Node,
    /// A bridge, by network name.
    Bridge(String),
    /// A GRE port, by port name.
    Tunnel(String),
    /// A container, by Container object name.
    Container(String),
}

impl std::fmt::Display for SliceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SliceKey::Node => f.write_str("node"),
            SliceKey::Bridge(network) => write!(f, "bridges/{network}"),
            SliceKey::Tunnel(port) => write!(f, "tunnels/{port}"),
            SliceKey::Container(name) => write!(f, "containers/{name}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "failed to parse slice key {key:?}: expected node, bridges/<network>, tunnels/<port> or containers/<name>"
)]
pub struct SliceKeyError {
    pub key: String,
}

impl std::str::FromStr for SliceKey {
    type Err = SliceKeyError;

    fn from_str(key: &str) -> Result<Self, Self::Err> {
        let err = || SliceKeyError {
            key: key.to_string(),
        };
        if key == "node" {
            return Ok(SliceKey::Node);
        }
        let (kind, name) = key.split_once('/').ok_or_else(err)?;
        if name.is_empty() || name.contains('/') {
            return Err(err());
        }
        let name = name.to_string();
        match kind {
            "bridges" => Ok(SliceKey::Bridge(name)),
            "tunnels" => Ok(SliceKey::Tunnel(name)),
            "containers" => Ok(SliceKey::Container(name)),
            _ => Err(err()),
        }
    }
}

/// The node's own settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeEntry {
    pub name: String,
    pub address: Ipv4Addr,
    pub datapath: Datapath,
}

/// One OVS bridge per network the node hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BridgeEntry {
    pub network: String,
    /// OVS bridge name (`tb-<network>`).
    pub bridge: String,
    pub datapath: Datapath,
    /// Container MTU on the network.
    pub mtu: u32,
    pub cidr: Ipv4Net,
    /// The node's block of the cidr.
    pub block: Ipv4Net,
    /// The node's gateway address with the cidr's prefix (10.2.1.1/16), on the bridge's
    /// internal port.
    pub gateway: Ipv4Net,
    pub gre_key: u32,
    /// RSTP on the bridge: explicit topologies that are not a full mesh.
    pub rstp: bool,
    /// Masquerade traffic from the cidr leaving it through this node.
    pub masquerade: bool,
}

/// One GRE port on a network's bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TunnelEntry {
    /// The Tunnel object.
    pub tunnel: String,
    pub network: String,
    pub bridge: String,
    /// OVS port/interface name.
    pub port: String,
    /// The peer node's name, or None for a remote address outside topo.
    pub peer: Option<String>,
    pub remote_ip: Ipv4Addr,
    pub key: u32,
    /// `Port.protected=true`: no forwarding from one tunnel port to another (mesh).
    pub split_horizon: bool,
}

/// A container and its plumbing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerEntry {
    pub name: String,
    pub uid: String,
    /// The Container object's generation this entry was derived from.
    pub generation: i64,
    /// Docker container name: `topo-<name>`.
    pub docker_name: String,
    pub image: String,
    pub command: Vec<String>,
    /// The spec's env plus Docker-link variables of its aliased links.
    pub env: BTreeMap<String, String>,
    pub pull_policy: PullPolicy,
    /// Extra /etc/hosts entries (link aliases).
    pub hosts: Vec<HostEntry>,
    pub attachments: Vec<AttachmentEntry>,
    pub ports: Vec<PublishedPort>,
    pub links: Vec<LinkRule>,
    /// Limits and privileges; absent when all are Docker's defaults (with
    /// no-new-privileges on).
    #[serde(default, skip_serializing_if = "Hardening::is_default_boxed")]
    pub hardening: Box<Hardening>,
}

/// What a container may use and do, resolved from the Container spec's resources, user,
/// readOnlyRootFilesystem, capabilities and allowPrivilegeEscalation. The default is a
/// container without limits, as the image's user, with a writable root, Docker's default
/// capabilities and no-new-privileges on: what a spec without those fields gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hardening {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<i64>,
    /// CPUs × 10⁹ (Docker's NanoCpus).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nano_cpus: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only_root_filesystem: bool,
    /// `CAP_NET_ADMIN` form, or `ALL`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// False: the container runs with no-new-privileges.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_privilege_escalation: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Hardening {
    pub fn is_default(&self) -> bool {
        *self == Hardening::default()
    }

    #[allow(clippy::borrowed_box)] // serde's skip_serializing_if hands the field as it is
    fn is_default_boxed(h: &Box<Hardening>) -> bool {
        h.is_default()
    }

    /// Docker's `SecurityOpt` for it.
    pub fn security_opt(&self) -> Vec<String> {
        if self.allow_privilege_escalation {
            vec![]
        } else {
            vec!["no-new-privileges".to_string()]
        }
    }
}

impl ContainerEntry {
    /// What a running container was created with: a change means recreate. Rewiring a link
    /// (its rules) is not in it, so it never recreates the consumer.
    pub fn config_hash(&self) -> String {
        let mut h = Sha256::new();
        let mut feed = |s: &str| {
            h.update(s.as_bytes());
            h.update([0u8]);
        };
        feed(&self.image);
        feed("cmd");
        for c in &self.command {
            feed(c);
        }
        feed("env");
        for (k, v) in &self.env {
            feed(k);
            feed(v);
        }
        feed("hosts");
        for e in &self.hosts {
            feed(&e.name);
            feed(&e.ip.to_string());
        }
        // Only a hardening that differs from the default is hashed: containers created
        // before these settings existed keep their hash and are not recreated by an
        // upgrade (they get no-new-privileges when something else recreates them).
        let hd = &self.hardening;
        if !hd.is_default() {
            feed("hardening");
            let opt = |v: Option<i64>| v.map_or_else(|| "-".to_string(), |n| n.to_string());
            feed(&opt(hd.memory_bytes));
            feed(&opt(hd.nano_cpus));
            feed(&opt(hd.pids_limit));
            feed(hd.user.as_deref().unwrap_or("-"));
            feed(if hd.read_only_root_filesystem {
                "ro"
            } else {
                "rw"
            });
            feed("cap-add");
            for c in &hd.cap_add {
                feed(c);
            }
            feed("cap-drop");
            for c in &hd.cap_drop {
                feed(c);
            }
            feed(if hd.allow_privilege_escalation {
                "nnp-off"
            } else {
                "nnp-on"
            });
        }
        h.finalize()
            .iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostEntry {
    pub name: String,
    pub ip: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttachmentEntry {
    pub network: String,
    pub bridge: String,
    /// Name inside the container (eth0).
    pub interface: String,
    /// Host end of the veth pair, a port of `bridge`.
    pub host_veth: String,
    /// The container's address with the cidr's prefix.
    pub address: Ipv4Net,
    pub mtu: u32,
    /// Default route via this gateway; set on the first attachment only.
    pub default_gateway: Option<Ipv4Addr>,
    /// Turn TX checksum offload off (userspace datapath does not complete partial checksums).
    pub tx_checksum_off: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublishedPort {
    /// The node address the port is published on; 0.0.0.0: every local address. An entry
    /// written before the field existed reads as 0.0.0.0, as such entries were programmed.
    #[serde(default = "unspecified")]
    pub host_ip: Ipv4Addr,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
    /// The container's address the port is forwarded to.
    pub container_ip: Ipv4Addr,
}

fn unspecified() -> Ipv4Addr {
    Ipv4Addr::UNSPECIFIED
}

/// A geard-style link programmed in the consumer's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LinkRule {
    /// The Link object.
    pub link: String,
    /// The Link object's generation this rule was derived from: what the agent reports as
    /// the link's observed generation (the entry's own `generation` is the consumer's).
    #[serde(default)]
    pub generation: i64,
    pub listen: SocketAddrV4,
    pub protocol: Protocol,
    /// Where to DNAT; None while the target cannot be resolved (then `reason` says why).
    pub target: Option<SocketAddrV4>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> ContainerEntry {
        ContainerEntry {
            name: "app".into(),
            uid: "u".into(),
            generation: 1,
            docker_name: "topo-app".into(),
            image: "topo/busybox:latest".into(),
            command: vec!["sleep".into(), "1".into()],
            env: BTreeMap::new(),
            pull_policy: PullPolicy::IfNotPresent,
            hosts: vec![],
            attachments: vec![],
            ports: vec![],
            links: vec![],
            hardening: Box::default(),
        }
    }

    /// The hash before hardening existed (image, command, env, hosts), computed by hand:
    /// an upgrade must not recreate every container.
    #[test]
    fn default_hardening_keeps_the_hash_of_before() {
        assert_eq!(entry().config_hash(), "bcd10e1a51f020d99fdc5aad");
        let json = serde_json::to_value(entry()).unwrap();
        assert!(json.get("hardening").is_none(), "{json}");
    }

    #[test]
    fn every_hardening_setting_changes_the_hash() {
        let base = entry().config_hash();
        let variants: Vec<fn(&mut Hardening)> = vec![
            |h| h.memory_bytes = Some(256 << 20),
            |h| h.nano_cpus = Some(500_000_000),
            |h| h.pids_limit = Some(64),
            |h| h.user = Some("1000:1000".into()),
            |h| h.read_only_root_filesystem = true,
            |h| h.cap_add = vec!["CAP_NET_ADMIN".into()],
            |h| h.cap_drop = vec!["ALL".into()],
            |h| h.allow_privilege_escalation = true,
        ];
        let mut seen = std::collections::BTreeSet::from([base.clone()]);
        for set in variants {
            let mut e = entry();
            set(&mut e.hardening);
            let hash = e.config_hash();
            assert!(
                seen.insert(hash),
                "{:?} did not change the hash",
                e.hardening
            );
        }
        // An add and a drop of the same name are not the same hash.
        let mut add = entry();
        add.hardening.cap_add = vec!["CAP_KILL".into()];
        let mut drop = entry();
        drop.hardening.cap_drop = vec!["CAP_KILL".into()];
        assert_ne!(add.config_hash(), drop.config_hash());
    }

    #[test]
    fn an_old_entry_reads_with_defaults() {
        let mut v = serde_json::to_value(entry()).unwrap();
        v["ports"] = serde_json::json!([{"hostPort": 50000, "containerPort": 80, "protocol": "tcp", "containerIp": "10.2.1.5"}]);
        let e: ContainerEntry = serde_json::from_value(v).unwrap();
        assert_eq!(*e.hardening, Hardening::default());
        assert_eq!(
            e.ports[0].host_ip,
            Ipv4Addr::UNSPECIFIED,
            "as old entries were programmed"
        );
        assert_eq!(
            e.hardening.security_opt(),
            vec!["no-new-privileges".to_string()]
        );
    }

    #[test]
    fn rewiring_does_not_change_config_hash() {
        let a = entry();
        let mut b = a.clone();
        b.links.push(LinkRule {
            link: "l".into(),
            generation: 1,
            listen: "127.0.0.1:6379".parse().unwrap(),
            protocol: Protocol::Tcp,
            target: Some("10.2.1.5:6379".parse().unwrap()),
            reason: None,
            message: None,
        });
        assert_eq!(a.config_hash(), b.config_hash());
        b.env
            .insert("DB_PORT".into(), "tcp://127.0.0.1:6379".into());
        assert_ne!(a.config_hash(), b.config_hash());
    }

    #[test]
    fn envelope_roundtrip() {
        let e = SliceEnvelope::new(SliceEntry::Container(entry()));
        let s = serde_json::to_string(&e).unwrap();
        assert!(s.contains("\"type\":\"container\""));
        assert_eq!(serde_json::from_str::<SliceEnvelope>(&s).unwrap(), e);
        assert_eq!(e.entry.key(), SliceKey::Container("app".into()));
        assert_eq!(e.entry.key().to_string(), "containers/app");
    }

    #[test]
    fn slice_keys_round_trip_and_sort_in_work_order() {
        let keys = [
            ("node", SliceKey::Node),
            ("bridges/overlay", SliceKey::Bridge("overlay".into())),
            ("tunnels/tg-x", SliceKey::Tunnel("tg-x".into())),
            ("containers/web", SliceKey::Container("web".into())),
        ];
        for (text, key) in &keys {
            assert_eq!(text.parse::<SliceKey>().as_ref(), Ok(key));
            assert_eq!(key.to_string(), *text);
        }
        let mut shuffled: Vec<SliceKey> = keys.iter().rev().map(|(_, k)| k.clone()).collect();
        shuffled.sort();
        assert_eq!(shuffled, keys.map(|(_, k)| k).to_vec());
        for bad in [
            "",
            "nodes",
            "bridges/",
            "containers/a/b",
            "widgets/x",
            "other",
        ] {
            let err = bad.parse::<SliceKey>().unwrap_err();
            assert_eq!(err.key, bad);
            assert!(err.to_string().contains("expected node, bridges/"), "{err}");
        }
    }
}
