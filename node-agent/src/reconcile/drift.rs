//! [`Drift`]: one way the host differs from what a slice entry wants, as a plan finds it.
//!
//! Plans return drift typed, and the reconcile decides what it means: a difference found
//! while the entry was already in force is a repair of a change made outside topo (a
//! `DriftRepaired` warning event), one found because the entry changed is configuration (a
//! `Configured` event). Only the events turn it into words, through [`Display`], and each
//! event ends with the drift's kinds ([`Drift::kind`], `... [drift: NodeNatTableDeleted]`)
//! so tools and tests can tell repairs apart without reading prose.

use std::fmt;

use crate::backend::{AttachmentDrift, GatewayDrift, NatDrift};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    BridgeDeleted {
        bridge: String,
    },
    /// Datapath, RSTP or internal MTU of the bridge, as found.
    BridgeSettings {
        bridge: String,
        datapath: String,
        rstp: bool,
        mtu: Option<u32>,
    },
    /// The bridge's internal interface (the node's gateway on the network).
    Gateway {
        bridge: String,
        drift: GatewayDrift,
    },
    GrePortDeleted {
        port: String,
    },
    GrePortChanged {
        port: String,
    },
    /// The container had exited and was started again (the count is in its status, not
    /// here: repeated restarts fold into one counted event).
    Restarted {
        docker_name: String,
        exit_code: Option<i64>,
    },
    /// A container's veth pair, address, MTU, route or offload.
    Attachment(AttachmentDrift),
    PortMissing {
        bridge: String,
        port: String,
    },
    PortChanged {
        port: String,
    },
    /// A container's port on a bridge it no longer attaches to.
    PortLeft {
        bridge: String,
        port: String,
    },
    /// The link table in a container differs from the one in force.
    LinkRules {
        container: String,
        drift: NatDrift,
    },
    /// The link rules in a container follow a changed entry.
    LinkRulesStale,
    /// The node's nftables table differs from the one in force.
    NodeNat(NatDrift),
}

impl Drift {
    /// The drift's kind, CamelCase, as events name it.
    pub fn kind(&self) -> String {
        match self {
            Drift::BridgeDeleted { .. } => "BridgeDeleted".into(),
            Drift::BridgeSettings { .. } => "BridgeSettingsChanged".into(),
            Drift::Gateway { drift, .. } => format!("Gateway{}", drift.kind()),
            Drift::GrePortDeleted { .. } => "GrePortDeleted".into(),
            Drift::GrePortChanged { .. } => "GrePortChanged".into(),
            Drift::Restarted { .. } => "ContainerExited".into(),
            Drift::Attachment(d) => d.kind().into(),
            Drift::PortMissing { .. } => "PortMissing".into(),
            Drift::PortChanged { .. } => "PortChanged".into(),
            Drift::PortLeft { .. } => "PortLeft".into(),
            Drift::LinkRules { drift, .. } => format!("Link{}", drift.kind()),
            Drift::LinkRulesStale => "LinkRulesStale".into(),
            Drift::NodeNat(d) => format!("NodeNat{}", d.kind()),
        }
    }
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drift::BridgeDeleted { bridge } => {
                write!(f, "bridge {bridge} was deleted outside topo; recreated")
            }
            Drift::BridgeSettings {
                bridge,
                datapath,
                rstp,
                mtu,
            } => write!(
                f,
                "bridge {bridge} settings (datapath {datapath}, rstp {rstp}, mtu {mtu:?}) were changed outside topo; restored"
            ),
            Drift::Gateway { bridge, drift } => {
                write!(
                    f,
                    "bridge {bridge}: {drift} (changed outside topo); restored"
                )
            }
            Drift::GrePortDeleted { port } => {
                write!(f, "GRE port {port} was deleted outside topo; recreated")
            }
            Drift::GrePortChanged { port } => {
                write!(f, "GRE port {port} was changed outside topo; restored")
            }
            Drift::Restarted {
                docker_name,
                exit_code,
            } => {
                let code = exit_code.map_or_else(|| "unknown".to_string(), |c| c.to_string());
                write!(
                    f,
                    "container {docker_name} had exited (code {code}); restarted"
                )
            }
            Drift::Attachment(d) => d.fmt(f),
            Drift::PortMissing { bridge, port } => {
                write!(f, "OVS port {port} was missing from bridge {bridge}")
            }
            Drift::PortChanged { port } => write!(f, "OVS port {port} was changed"),
            Drift::PortLeft { bridge, port } => write!(f, "OVS port {port} left bridge {bridge}"),
            Drift::LinkRules { container, drift } => {
                write!(f, "link rules of {container}: {drift} outside topo")
            }
            Drift::LinkRulesStale => f.write_str("link rules reprogrammed"),
            Drift::NodeNat(d) => write!(f, "the node's nftables {d} outside topo; restored"),
        }
    }
}

/// The drift joined for one event message.
pub fn describe(drift: &[Drift]) -> String {
    drift
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// `text` followed by the kinds of `drift` (`text [drift: A, B]`), each kind once.
pub fn with_kinds(text: impl fmt::Display, drift: &[Drift]) -> String {
    let mut kinds: Vec<String> = Vec::new();
    for k in drift.iter().map(Drift::kind) {
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    format!("{text} [drift: {}]", kinds.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_reads_as_the_events_say_it() {
        let cases = [
            (
                Drift::Restarted {
                    docker_name: "topo-app".into(),
                    exit_code: Some(137),
                },
                "container topo-app had exited (code 137); restarted",
            ),
            (
                Drift::Restarted {
                    docker_name: "topo-app".into(),
                    exit_code: None,
                },
                "container topo-app had exited (code unknown); restarted",
            ),
            (
                Drift::NodeNat(NatDrift::TableDeleted),
                "the node's nftables table ip topo was deleted outside topo; restored",
            ),
            (
                Drift::LinkRules {
                    container: "app".into(),
                    drift: NatDrift::TableFlushed,
                },
                "link rules of app: table ip topo was flushed outside topo",
            ),
            (
                Drift::Gateway {
                    bridge: "tb-ov".into(),
                    drift: GatewayDrift::Down,
                },
                "bridge tb-ov: it is down (changed outside topo); restored",
            ),
            (
                Drift::BridgeSettings {
                    bridge: "tb-ov".into(),
                    datapath: "system".into(),
                    rstp: true,
                    mtu: None,
                },
                "bridge tb-ov settings (datapath system, rstp true, mtu None) were changed outside topo; restored",
            ),
            (
                Drift::Attachment(AttachmentDrift::HostVethMissing {
                    veth: "tv-a".into(),
                }),
                "host veth tv-a is missing",
            ),
        ];
        for (d, text) in cases {
            assert_eq!(d.to_string(), text);
        }
        assert_eq!(
            describe(&[
                Drift::LinkRulesStale,
                Drift::PortChanged { port: "p".into() }
            ]),
            "link rules reprogrammed; OVS port p was changed"
        );
    }

    #[test]
    fn events_name_each_kind_once() {
        let d = [
            Drift::NodeNat(NatDrift::TableFlushed),
            Drift::NodeNat(NatDrift::SysctlOff {
                key: "net.ipv4.ip_forward",
            }),
            Drift::Attachment(AttachmentDrift::StrayAddress {
                interface: "eth0".into(),
                address: "10.9.9.9/16".parse().unwrap(),
            }),
            Drift::Attachment(AttachmentDrift::StrayAddress {
                interface: "eth1".into(),
                address: "10.9.9.8/16".parse().unwrap(),
            }),
            Drift::Gateway {
                bridge: "tb-ov".into(),
                drift: GatewayDrift::Down,
            },
            Drift::LinkRules {
                container: "app".into(),
                drift: NatDrift::TableDeleted,
            },
        ];
        assert_eq!(
            with_kinds("x", &d),
            "x [drift: NodeNatTableFlushed, NodeNatSysctlOff, StrayAddress, GatewayDown, LinkTableDeleted]"
        );
    }
}
