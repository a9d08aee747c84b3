//! `topoctl verify`: the wire types between topoctl, the controller and the agents, and the
//! one-line form of a check.
//!
//! The controller knows the whole topology, an agent only its slice; so the controller names
//! the cross-node targets (a peer per other node and network, the node that tries each
//! published port) in a [`VerifyRequest`], and the agent adds what its slice says (the
//! gateway of each attachment, the links of each container) and runs every check from the
//! right namespace. Each check comes back as a [`Check`]; the controller adds FAIL checks
//! for agents that did not answer and replies with a [`VerifyReport`].

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::kinds::Protocol;

/// The condition type a verification sets on each container it checked.
pub const CONDITION_VERIFIED: &str = "Verified";

/// What the controller asks one agent to check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VerifyRequest {
    /// The node the request is for (an agent refuses another node's request).
    pub node: String,
    /// Containers of this node to check from inside their namespaces.
    pub containers: Vec<SourceChecks>,
    /// Published ports of other nodes to connect to from this node's own namespace.
    pub published: Vec<PublishedTarget>,
}

/// The checks run from inside one container's namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceChecks {
    pub container: String,
    /// A peer per other node per network (ARP, ICMP, then the don't-fragment MTU probe).
    pub peers: Vec<PeerTarget>,
}

/// A container on another node that shares a network with the source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerTarget {
    pub network: String,
    pub container: String,
    pub node: String,
    pub ip: Ipv4Addr,
    /// The network's MTU: the don't-fragment probe is this many bytes of IP.
    pub mtu: u32,
}

/// A published port of a container on another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublishedTarget {
    pub container: String,
    /// The node that publishes the port.
    pub node: String,
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

impl PublishedTarget {
    /// `node2 → web1's 192.168.100.1:8080/tcp on node node1`: the check's subject, tried
    /// from node `from`.
    pub fn subject(&self, from: &str) -> String {
        format!(
            "{from} → {}'s {}:{}/{} on node {}",
            self.container, self.address, self.port, self.protocol, self.node
        )
    }
}

/// What a check tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// ICMP echo from the container to its node's gateway on a network.
    Gateway,
    /// ARP, then ICMP echo, from the container to a peer on another node.
    Peer,
    /// A don't-fragment ICMP echo of the network's MTU to a peer on another node.
    Mtu,
    /// A connection to a link's listen address inside the consumer's namespace.
    Link,
    /// A connection from another node to a published port.
    Port,
    /// The node's agent could not run the checks.
    Agent,
}

impl CheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Gateway => "gateway",
            CheckKind::Peer => "peer",
            CheckKind::Mtu => "mtu",
            CheckKind::Link => "link",
            CheckKind::Port => "port",
            CheckKind::Agent => "agent",
        }
    }
}

/// One check and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Check {
    pub kind: CheckKind,
    /// The container whose `Verified` condition the check counts for.
    pub container: String,
    /// The node the check ran from.
    pub node: String,
    /// What was checked, e.g. `web1 → db (10.2.3.10) on network overlay`.
    pub subject: String,
    pub passed: bool,
    /// On a failure: why, naming the hop where it failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl Check {
    pub fn pass(kind: CheckKind, container: &str, node: &str, subject: String) -> Check {
        Check {
            kind,
            container: container.to_string(),
            node: node.to_string(),
            subject,
            passed: true,
            reason: String::new(),
        }
    }

    pub fn fail(
        kind: CheckKind,
        container: &str,
        node: &str,
        subject: String,
        reason: String,
    ) -> Check {
        Check {
            passed: false,
            reason,
            ..Check::pass(kind, container, node, subject)
        }
    }

    /// `PASS gateway web1 → 10.2.1.1 ...` or `FAIL ...: reason`.
    pub fn line(&self) -> String {
        if self.passed {
            format!("PASS {:<7} {}", self.kind.as_str(), self.subject)
        } else {
            format!(
                "FAIL {:<7} {}: {}",
                self.kind.as_str(),
                self.subject,
                self.reason
            )
        }
    }
}

/// The agent's answer, and (with every node's checks) the controller's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VerifyReport {
    pub checks: Vec<Check>,
}

impl VerifyReport {
    pub fn all_passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let ok = Check::pass(
            CheckKind::Gateway,
            "web1",
            "node1",
            "web1 → 10.2.1.1 (gateway of overlay on node1)".into(),
        );
        assert_eq!(
            ok.line(),
            "PASS gateway web1 → 10.2.1.1 (gateway of overlay on node1)"
        );
        let bad = Check::fail(
            CheckKind::Peer,
            "web1",
            "node1",
            "web1 → db (10.2.3.10) on network overlay".into(),
            "no ARP reply on tb-overlay@node1 within 1 s".into(),
        );
        assert_eq!(
            bad.line(),
            "FAIL peer    web1 → db (10.2.3.10) on network overlay: no ARP reply on tb-overlay@node1 within 1 s"
        );
        let r = VerifyReport {
            checks: vec![ok.clone(), bad],
        };
        assert!(!r.all_passed());
        let json = serde_json::to_value(&ok).unwrap();
        assert!(json.get("reason").is_none(), "{json}");
        assert!(VerifyReport { checks: vec![ok] }.all_passed());
    }
}
