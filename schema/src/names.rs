//! Names: DNS-1123 object names, the Linux interface names topo derives from them, and the
//! "did you mean" among names that both manifest parsing and validation offer.
//!
//! It sits below [`crate::manifest`] and [`crate::validate`] and imports neither, so the
//! dependencies between schema's modules point one way (manifest → validate → names).
//!
//! Interface names are the *scheme* only: what each host interface would like to be called
//! ([`NameOwner::candidate`] 0, the readable `tb-overlay` or a prefix plus a hash when that
//! does not fit in 15 characters) and what it may be called instead when another owner on
//! the node holds that (candidates 1, 2, ...). Fifteen characters cannot hold 63-character
//! names injectively, so no scheme alone is collision-free; the controller allocates from
//! these candidates per node and records what it gave (`topo-controller`'s `ifnames`), and
//! agents only ever use the names their slice carries.

use sha2::{Digest, Sha256};

pub const MAX_NAME_LEN: usize = 63;
/// IFNAMSIZ - 1.
pub const MAX_IFNAME_LEN: usize = 15;

/// Checks a DNS-1123 label; the error says what is wrong in one phrase.
pub fn check_dns1123_label(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "{name:?} is {} characters long (at most {MAX_NAME_LEN})",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "{name:?} contains {c:?}; a name is lowercase letters, digits and '-' (DNS-1123 label)"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!(
            "{name:?} must start and end with a letter or digit (DNS-1123 label)"
        ));
    }
    Ok(())
}

/// A Linux interface name as a container may be given one (`eth0`, `net1`).
pub fn check_interface_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_IFNAME_LEN {
        return Err(format!(
            "{name:?} must be 1 to {MAX_IFNAME_LEN} characters long"
        ));
    }
    if name == "lo" || name == "." || name == ".." {
        return Err(format!("{name:?} is reserved"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(format!(
            "{name:?} may hold only letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

fn short_hash(parts: &[&str], len: usize) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    let digest = h.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex[..len].to_string()
}

/// A host interface name: `prefix` + readable `name` when it fits in 15 characters, else
/// `prefix` + a prefix of the name + a hash of every part, so distinct inputs never collide in
/// practice and operators can still guess what an interface belongs to.
pub fn interface_name(prefix: &str, name: &str, extra: &[&str]) -> String {
    let readable = format!("{prefix}{name}");
    if extra.is_empty() && readable.len() <= MAX_IFNAME_LEN {
        return readable;
    }
    let mut parts = vec![name];
    parts.extend_from_slice(extra);
    let hash = short_hash(&parts, 6);
    let room = MAX_IFNAME_LEN - prefix.len() - hash.len();
    let keep: String = name.chars().take(room).collect();
    format!("{prefix}{keep}{hash}")
}

/// The OVS bridge of `network` on every node.
pub fn bridge_name(network: &str) -> String {
    interface_name("tb-", network, &[])
}

/// The GRE port on `network`'s bridge towards `peer` (a node name or a remote address).
pub fn gre_port_name(network: &str, peer: &str) -> String {
    interface_name("tg-", peer, &[network])
}

/// The host end of a container's veth on the network bridge.
pub fn veth_host_name(container: &str, interface: &str) -> String {
    interface_name("tv-", container, &[interface])
}

/// What a host interface topo creates belongs to, on one node: the thing that holds a name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NameOwner {
    /// The OVS bridge (and its internal port) of a network.
    Bridge { network: String },
    /// A GRE port on a network's bridge towards a peer: a node name or a remote address.
    Port { network: String, peer: String },
    /// The host end of a container's veth for one of its interfaces.
    Veth {
        container: String,
        interface: String,
    },
}

/// Salted candidates tried before the exhaustive search ([`NameOwner::candidate`]).
pub const HASHED_CANDIDATES: u32 = 64;
/// Hex digits of the exhaustive search's counter.
const COUNTER_DIGITS: usize = 8;

impl NameOwner {
    fn prefix(&self) -> &'static str {
        match self {
            NameOwner::Bridge { .. } => "tb-",
            NameOwner::Port { .. } => "tg-",
            NameOwner::Veth { .. } => "tv-",
        }
    }

    /// The readable part and the parts the hash covers besides it.
    fn parts(&self) -> (&str, Vec<&str>) {
        match self {
            NameOwner::Bridge { network } => (network, vec![]),
            NameOwner::Port { network, peer } => (peer, vec![network]),
            NameOwner::Veth {
                container,
                interface,
            } => (container, vec![interface]),
        }
    }

    /// The name this owner asks for first: what topo has always called it
    /// ([`bridge_name`], [`gre_port_name`], [`veth_host_name`]), so hosts keep their names
    /// when the controller starts recording them.
    pub fn preferred(&self) -> String {
        self.candidate(0)
    }

    /// The `n`-th name this owner may take: 0 is [`NameOwner::preferred`]; below
    /// [`HASHED_CANDIDATES`] the readable prefix with a hash salted by `n`; from there on the
    /// first letters of the readable part and `n` as a fixed-width hex counter, a space of
    /// four billion names per owner that no node fills, so a free name is always found
    /// whatever names others chose to collide with the hashed ones. Every candidate has the
    /// owner's kind prefix and fits in 15 characters; distinct `n` give distinct names.
    pub fn candidate(&self, n: u32) -> String {
        let prefix = self.prefix();
        let (readable, mut extra) = self.parts();
        if n == 0 {
            return interface_name(prefix, readable, &extra);
        }
        if n < HASHED_CANDIDATES {
            let salt = format!("#{n}");
            extra.push(&salt);
            return interface_name(prefix, readable, &extra);
        }
        let room = MAX_IFNAME_LEN - prefix.len() - COUNTER_DIGITS;
        let keep: String = readable.chars().take(room).collect();
        format!(
            "{prefix}{keep}{:0width$x}",
            n - HASHED_CANDIDATES,
            width = COUNTER_DIGITS
        )
    }
}

/// Prefix of every interface topo creates: nothing else is ever removed by the agent.
pub const IFACE_PREFIXES: [&str; 3] = ["tb-", "tg-", "tv-"];

/// The closest of `candidates` to `word`, if close enough to be a likely typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let w = word.to_ascii_lowercase();
    let limit = match w.chars().count() {
        0..=3 => 1,
        4..=8 => 2,
        _ => 3,
    };
    candidates
        .into_iter()
        .filter(|c| *c != word)
        .map(|c| (strsim::damerau_levenshtein(&w, &c.to_ascii_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::Kind;

    #[test]
    fn dns1123() {
        assert!(check_dns1123_label("node-1").is_ok());
        assert!(check_dns1123_label("Node1").is_err());
        assert!(check_dns1123_label("-a").is_err());
        assert!(check_dns1123_label("a_b").is_err());
        assert!(check_dns1123_label(&"a".repeat(64)).is_err());
        assert!(check_dns1123_label("").is_err());
    }

    #[test]
    fn interface_names_fit_and_differ() {
        let long = "a-very-long-container-name-indeed";
        let a = veth_host_name(long, "eth0");
        let b = veth_host_name(long, "eth1");
        assert!(a.len() <= MAX_IFNAME_LEN && b.len() <= MAX_IFNAME_LEN);
        assert_ne!(a, b);
        assert!(a.starts_with("tv-"));
        assert_eq!(bridge_name("overlay"), "tb-overlay");
        assert!(gre_port_name("overlay", "node2").starts_with("tg-node2"));
        assert_ne!(gre_port_name("a", "node2"), gre_port_name("b", "node2"));
    }

    #[test]
    fn candidates_keep_the_prefix_fit_and_differ() {
        let owners = [
            NameOwner::Bridge {
                network: "abcdefghijklm".into(),
            },
            NameOwner::Port {
                network: "overlay".into(),
                peer: "203.0.113.9".into(),
            },
            NameOwner::Veth {
                container: "x".repeat(63),
                interface: "eth0".into(),
            },
        ];
        for o in owners {
            let all: Vec<String> = (0..HASHED_CANDIDATES + 300)
                .map(|n| o.candidate(n))
                .collect();
            for c in &all {
                assert!(c.len() <= MAX_IFNAME_LEN, "{c}");
                assert!(c.starts_with(o.prefix()), "{c}");
                assert!(check_interface_name(c).is_ok(), "{c}");
            }
            let distinct: std::collections::BTreeSet<&String> = all.iter().collect();
            assert_eq!(distinct.len(), all.len(), "{o:?}");
        }
        // Candidate 0 is what topo always called it.
        let net = NameOwner::Bridge {
            network: "overlay".into(),
        };
        assert_eq!(net.preferred(), bridge_name("overlay"));
        let veth = NameOwner::Veth {
            container: "web".into(),
            interface: "eth1".into(),
        };
        assert_eq!(veth.preferred(), veth_host_name("web", "eth1"));
        // The counter candidates: the first letters and a fixed-width counter.
        assert_eq!(net.candidate(HASHED_CANDIDATES), "tb-over00000000");
        assert_eq!(
            NameOwner::Bridge {
                network: "a".into()
            }
            .candidate(HASHED_CANDIDATES + 255),
            "tb-a000000ff"
        );
        assert_eq!(net.candidate(u32::MAX), "tb-overffffffbf");
    }

    #[test]
    fn the_issue_collision_is_in_the_scheme() {
        // Why the names must be allocated: a readable name equals another's hashed one.
        assert_eq!(bridge_name("abcdefghijklm"), bridge_name("abcdef3a4dcf"));
    }

    #[test]
    fn closest_names() {
        assert_eq!(
            closest("Contianer", Kind::ALL.map(Kind::as_str)),
            Some("Container")
        );
        assert_eq!(
            closest("container", Kind::ALL.map(Kind::as_str)),
            Some("Container")
        );
        assert_eq!(closest("Pod", Kind::ALL.map(Kind::as_str)), None);
        assert_eq!(
            closest("imagee", ["node", "image", "command"]),
            Some("image")
        );
    }
}
