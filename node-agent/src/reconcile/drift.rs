//! [`Drift`]: one way the host differs from what a slice entry wants, as a plan finds it.
//!
//! Plans return drift typed, and the reconcile decides what it means: a difference found
//! while the entry was already in force is a repair of a change made outside topo (a
//! `DriftRepaired` warning event), one found because the entry changed is configuration (a
//! `Configured` event). Only the events turn it into words, through [`Display`].

use std::fmt;

use crate::backend::{AttachmentDrift, GatewayDrift};

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
    /// The container had exited and was started again.
    Restarted {
        docker_name: String,
        exit_code: Option<i64>,
        restart: u32,
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
    /// The link rules in a container differ from the ones in force.
    LinkRulesTampered {
        container: String,
    },
    /// The link rules in a container follow a changed entry.
    LinkRulesStale,
    /// The node's nftables table differs from the one in force.
    NodeNat,
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
                restart,
            } => {
                let code = exit_code.map_or_else(|| "unknown".to_string(), |c| c.to_string());
                write!(
                    f,
                    "container {docker_name} had exited (code {code}); restarted (restart {restart})"
                )
            }
            Drift::Attachment(d) => d.fmt(f),
            Drift::PortMissing { bridge, port } => {
                write!(f, "OVS port {port} was missing from bridge {bridge}")
            }
            Drift::PortChanged { port } => write!(f, "OVS port {port} was changed"),
            Drift::PortLeft { bridge, port } => write!(f, "OVS port {port} left bridge {bridge}"),
            Drift::LinkRulesTampered { container } => write!(
                f,
                "link rules in container {container} were changed outside topo"
            ),
            Drift::LinkRulesStale => f.write_str("link rules reprogrammed"),
            Drift::NodeNat => {
                f.write_str("nftables table topo of the node was changed outside topo; restored")
            }
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
                    restart: 1,
                },
                "container topo-app had exited (code 137); restarted (restart 1)",
            ),
            (
                Drift::Restarted {
                    docker_name: "topo-app".into(),
                    exit_code: None,
                    restart: 2,
                },
                "container topo-app had exited (code unknown); restarted (restart 2)",
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
}
