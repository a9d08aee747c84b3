//! Host interface names per node: which bridge, GRE port and host veth is called what on
//! each node, allocated so that no two owners on a node ever share a name, and kept once
//! given.
//!
//! Why allocation: an interface name has 15 characters and object names 63, so no derivation
//! is injective. Derived names collided (network `abcdefghijklm` hashes to the bridge
//! `tb-abcdef3a4dcf`, which is also the readable bridge of network `abcdef3a4dcf`; hashed veth
//! names meet by the birthday bound after a few thousand per node), and two owners of one
//! name share one device on the host. So the leader, the one writer of slices, hands out
//! names from each owner's candidates (`topo_schema::names::NameOwner::candidate`: the name
//! topo always derived first, then salted hashes, then a counter) and skips every name
//! another owner on the node holds.
//!
//! Where they are recorded: in the slices themselves. A slice entry carries the names of what
//! it owns (a bridge entry its bridge, a tunnel entry its port, a container entry its host
//! veths), the leader writes the slices, and the agents use no other names. A leader taking
//! over reads the written slices anyway ([`NameTable::from_slices`]), so the table is rebuilt
//! from exactly what the agents were told; no second record can disagree with the first, and
//! nothing new is stored in etcd nor granted to any role. Upgrades keep names: the slices an
//! older controller wrote carry the derived names, which the table adopts as they are; only
//! where two owners on a node were given one name (the clash above) does the first in key
//! order keep it and the other get a free one.
//!
//! Stability: an owner keeps its name while it has an entry on the node; a name is free again
//! only after the pass that dropped its owner was written, and a name held by anyone at the
//! start of a pass is never given to another owner in that pass.
//!
//! Everything here is pure: [`Namer`] answers the planner's questions against the table the
//! last written slices hold, and the plan's slices give the next table.

use std::collections::BTreeMap;

use topo_schema::names::NameOwner;
use topo_schema::slice::{SliceEntry, SliceEnvelope};

/// One node's names: each owner's name and each name's owner, kept in step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeNames {
    by_owner: BTreeMap<NameOwner, String>,
    by_name: BTreeMap<String, NameOwner>,
}

impl NodeNames {
    pub fn name_of(&self, owner: &NameOwner) -> Option<&str> {
        self.by_owner.get(owner).map(String::as_str)
    }

    pub fn owner_of(&self, name: &str) -> Option<&NameOwner> {
        self.by_name.get(name)
    }

    pub fn len(&self) -> usize {
        self.by_owner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_owner.is_empty()
    }

    /// `(owner, name)` pairs in owner order.
    pub fn iter(&self) -> impl Iterator<Item = (&NameOwner, &str)> {
        self.by_owner.iter().map(|(o, n)| (o, n.as_str()))
    }

    /// Records `name` for `owner` unless either is already taken by another; says whether
    /// the pair is recorded now.
    fn record(&mut self, owner: &NameOwner, name: &str) -> bool {
        match (self.by_owner.get(owner), self.by_name.get(name)) {
            (Some(n), _) => n == name,
            (None, Some(_)) => false,
            (None, None) => {
                self.by_owner.insert(owner.clone(), name.to_string());
                self.by_name.insert(name.to_string(), owner.clone());
                true
            }
        }
    }
}

/// node → its names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameTable {
    nodes: BTreeMap<String, NodeNames>,
}

/// What one slice entry names: `(owner, name)` for each interface it owns.
pub fn named_by(entry: &SliceEntry) -> Vec<(NameOwner, &str)> {
    match entry {
        SliceEntry::Node(_) => vec![],
        SliceEntry::Bridge(b) => vec![(
            NameOwner::Bridge {
                network: b.network.clone(),
            },
            b.bridge.as_str(),
        )],
        SliceEntry::Tunnel(t) => vec![(
            NameOwner::Port {
                network: t.network.clone(),
                peer: t.peer.clone().unwrap_or_else(|| t.remote_ip.to_string()),
            },
            t.port.as_str(),
        )],
        SliceEntry::Container(c) => c
            .attachments
            .iter()
            .map(|a| {
                (
                    NameOwner::Veth {
                        container: c.name.clone(),
                        interface: a.interface.clone(),
                    },
                    a.host_veth.as_str(),
                )
            })
            .collect(),
    }
}

impl NameTable {
    /// The names `entries` (node, entry) give, in the order given: where two owners hold one
    /// name, or one owner two names, the first keeps it and the other is left out (it gets a
    /// free name when next planned).
    pub fn from_slices<'a>(entries: impl IntoIterator<Item = (&'a str, &'a SliceEntry)>) -> Self {
        let mut t = NameTable::default();
        for (node, entry) in entries {
            for (owner, name) in named_by(entry) {
                if !t
                    .nodes
                    .entry(node.to_string())
                    .or_default()
                    .record(&owner, name)
                {
                    tracing::warn!(
                        node,
                        name,
                        ?owner,
                        "a slice gave one name to two owners; the first in key order keeps it"
                    );
                }
            }
        }
        t
    }

    /// The table the written slices hold, from their etcd keys and values. Keys are sorted
    /// first so a clash resolves the same way on every replica; values that do not decode
    /// (an entry of a newer version) name nothing.
    pub fn from_written<'a>(written: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        let mut decoded: Vec<(&str, SliceEntry)> = written
            .into_iter()
            .filter_map(|(key, value)| {
                let node = topo_schema::keys::parse_slice_key(key)?.0;
                let env: SliceEnvelope = serde_json::from_slice(value).ok()?;
                Some((node, env.entry))
            })
            .collect();
        decoded.sort_by(|a, b| a.0.cmp(b.0).then_with(|| a.1.key().cmp(&b.1.key())));
        NameTable::from_slices(decoded.iter().map(|(n, e)| (*n, e)))
    }

    pub fn node(&self, node: &str) -> Option<&NodeNames> {
        self.nodes.get(node)
    }

    pub fn nodes(&self) -> impl Iterator<Item = (&str, &NodeNames)> {
        self.nodes.iter().map(|(n, names)| (n.as_str(), names))
    }

    /// Number of names over all nodes.
    pub fn len(&self) -> usize {
        self.nodes.values().map(NodeNames::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.values().all(NodeNames::is_empty)
    }
}

/// Hands out names for one planning pass against the table the written slices hold.
#[derive(Debug)]
pub struct Namer<'a> {
    given: &'a NameTable,
    /// What this pass asked for and got.
    next: NameTable,
}

impl<'a> Namer<'a> {
    pub fn new(given: &'a NameTable) -> Self {
        Namer {
            given,
            next: NameTable::default(),
        }
    }

    /// `owner`'s name on `node`: the one it holds, else its first candidate that nobody
    /// holds on the node, neither in the written slices nor in this pass.
    pub fn name(&mut self, node: &str, owner: &NameOwner) -> String {
        let given = self.given.nodes.get(node);
        let next = self.next.nodes.entry(node.to_string()).or_default();
        if let Some(n) = next.by_owner.get(owner) {
            return n.clone();
        }
        let held = given.and_then(|g| g.by_owner.get(owner));
        let name = match held {
            Some(n) => n.clone(),
            None => {
                let free = |c: &String| {
                    !next.by_name.contains_key(c)
                        && !given.is_some_and(|g| g.by_name.contains_key(c))
                };
                (0..=u32::MAX)
                    .map(|i| owner.candidate(i))
                    .find(free)
                    .unwrap_or_else(|| owner.preferred())
            }
        };
        next.record(owner, &name);
        name
    }

    pub fn bridge(&mut self, node: &str, network: &str) -> String {
        self.name(
            node,
            &NameOwner::Bridge {
                network: network.to_string(),
            },
        )
    }

    pub fn port(&mut self, node: &str, network: &str, peer: &str) -> String {
        self.name(
            node,
            &NameOwner::Port {
                network: network.to_string(),
                peer: peer.to_string(),
            },
        )
    }

    pub fn veth(&mut self, node: &str, container: &str, interface: &str) -> String {
        self.name(
            node,
            &NameOwner::Veth {
                container: container.to_string(),
                interface: interface.to_string(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bridge(network: &str) -> NameOwner {
        NameOwner::Bridge {
            network: network.into(),
        }
    }

    #[test]
    fn the_issue_networks_get_two_bridges() {
        let table = NameTable::default();
        let mut namer = Namer::new(&table);
        let a = namer.bridge("node1", "abcdef3a4dcf");
        let b = namer.bridge("node1", "abcdefghijklm");
        assert_eq!(a, "tb-abcdef3a4dcf");
        assert_ne!(a, b);
        assert!(b.starts_with("tb-abcdef") && b.len() <= 15, "{b}");
        // On another node the same owner asks afresh and may get its preferred name.
        assert_eq!(namer.bridge("node2", "abcdefghijklm"), "tb-abcdef3a4dcf");
        // Asked again in the pass: the same answer.
        assert_eq!(namer.bridge("node1", "abcdefghijklm"), b);
    }

    #[test]
    fn held_names_are_kept_and_never_given_to_another_in_the_pass() {
        let mut given = NameTable::default();
        let node = given.nodes.entry("n".into()).or_default();
        // The hashed network holds the contested name (an upgrade where it came first).
        assert!(node.record(&bridge("abcdefghijklm"), "tb-abcdef3a4dcf"));
        let mut namer = Namer::new(&given);
        let readable = namer.bridge("n", "abcdef3a4dcf");
        assert_ne!(readable, "tb-abcdef3a4dcf");
        assert_eq!(namer.bridge("n", "abcdefghijklm"), "tb-abcdef3a4dcf");
        // A name whose owner left is not reused in the same pass.
        let mut namer = Namer::new(&given);
        assert_ne!(namer.bridge("n", "abcdef3a4dcf"), "tb-abcdef3a4dcf");
        // ...but is free once the pass without the owner is the written one.
        let written = namer.next.clone();
        let mut namer = Namer::new(&written);
        let again = namer.bridge("n", "abcdef3a4dcf");
        assert_eq!(
            again, readable,
            "kept, not moved back to the preferred name"
        );
    }

    #[test]
    fn exhausted_hashed_candidates_fall_back_to_the_counter() {
        let owner = bridge("abcdefghijklm");
        let mut given = NameTable::default();
        let node = given.nodes.entry("n".into()).or_default();
        for i in 0..topo_schema::names::HASHED_CANDIDATES + 3 {
            assert!(node.record(&bridge(&format!("squatter{i}")), &owner.candidate(i)));
        }
        let mut namer = Namer::new(&given);
        let name = namer.name("n", &owner);
        assert_eq!(
            name,
            owner.candidate(topo_schema::names::HASHED_CANDIDATES + 3)
        );
    }

    #[test]
    fn slices_clash_resolves_first_in_key_order() {
        use topo_schema::slice::BridgeEntry;
        let entry = |network: &str| {
            SliceEntry::Bridge(BridgeEntry {
                network: network.into(),
                bridge: "tb-abcdef3a4dcf".into(),
                datapath: Default::default(),
                mtu: 1450,
                cidr: "10.0.0.0/16".parse().unwrap(),
                block: "10.0.1.0/24".parse().unwrap(),
                gateway: "10.0.1.1/16".parse().unwrap(),
                gre_key: 1,
                rstp: false,
                masquerade: true,
            })
        };
        let a = serde_json::to_vec(&SliceEnvelope::new(entry("abcdefghijklm"))).unwrap();
        let b = serde_json::to_vec(&SliceEnvelope::new(entry("abcdef3a4dcf"))).unwrap();
        let ka = topo_schema::keys::slice_entry("n", "bridges/abcdefghijklm");
        let kb = topo_schema::keys::slice_entry("n", "bridges/abcdef3a4dcf");
        // Given in either order, the same one keeps the name.
        for written in [
            vec![(ka.as_str(), a.as_slice()), (kb.as_str(), b.as_slice())],
            vec![(kb.as_str(), b.as_slice()), (ka.as_str(), a.as_slice())],
        ] {
            let t = NameTable::from_written(written);
            let n = t.node("n").unwrap();
            assert_eq!(n.len(), 1);
            assert_eq!(n.owner_of("tb-abcdef3a4dcf"), Some(&bridge("abcdef3a4dcf")));
        }
    }
}
