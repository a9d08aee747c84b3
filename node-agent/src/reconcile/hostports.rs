//! Published ports the node cannot give yet: a port on which a process of the node already
//! listens (`HostPortInUse`: its DNAT would silently take the process's traffic), or a
//! hostIP that is not an address of the node (`HostIPNotLocal`). Such a port is left out of
//! the node's NAT table and its container is not Ready, naming port, protocol and process.
//!
//! Only ports not yet in force are judged. A DNAT rule is not a socket, so a port topo
//! published never looks taken by itself; and once a port is published it stays so (a process
//! that binds it later gets no traffic for that address anyway, and withdrawing the rule
//! would cut the container's users off). The node's NAT reconcile judges every port, keeps
//! the verdicts in the agent's memory and rechecks held ports with a backoff (sock_diag has
//! no event for a socket closing), so a freed port is published within seconds.
//!
//! Pure functions: the reconcilers observe, these decide.

use std::collections::BTreeMap;
use std::time::Duration;

use topo_schema::kinds::Protocol;
use topo_schema::slice::SliceEntry;

use crate::backend::{HostPortsView, Listener, PortDnat};

/// First recheck of held ports after this long, doubling up to [`MAX_RECHECK`].
pub const FIRST_RECHECK: Duration = Duration::from_secs(1);
pub const MAX_RECHECK: Duration = Duration::from_secs(10);

/// Why a published port is not programmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// Another socket of the node takes the port on the address it would be published on.
    InUse { port: PortDnat, listener: Listener },
    /// The port's hostIP is not an address of the node.
    NotLocal { port: PortDnat, node: String },
}

impl Hold {
    pub fn port(&self) -> &PortDnat {
        match self {
            Hold::InUse { port, .. } | Hold::NotLocal { port, .. } => port,
        }
    }

    /// The reason the container's status shows.
    pub fn reason(&self) -> &'static str {
        match self {
            Hold::InUse { .. } => "HostPortInUse",
            Hold::NotLocal { .. } => "HostIPNotLocal",
        }
    }

    pub fn message(&self) -> String {
        let p = self.port();
        match self {
            Hold::InUse { listener, .. } => format!(
                "hostPort {}/{} is in use by {} listening on {}; it is published once the port is free",
                p.host_port,
                p.protocol,
                listener.holder(),
                listener.local()
            ),
            Hold::NotLocal { node, .. } => format!(
                "hostIP {} of hostPort {}/{} is not an address of node {node}; it is published once the node has that address",
                p.host_ip, p.host_port, p.protocol
            ),
        }
    }
}

/// Every published port of the slice, with its container's name.
pub fn published(entries: &[SliceEntry]) -> Vec<(String, PortDnat)> {
    entries
        .iter()
        .filter_map(|e| match e {
            SliceEntry::Container(c) => Some(c),
            _ => None,
        })
        .flat_map(|c| c.ports.iter().map(|p| (c.name.clone(), PortDnat::from(p))))
        .collect()
}

fn in_force(port: &PortDnat, table: &[PortDnat]) -> bool {
    table.iter().any(|t| t.binding() == port.binding())
}

/// The ports to ask the host about: those of `published` not already in force in `table`.
pub fn to_check(published: &[(String, PortDnat)], table: &[PortDnat]) -> Vec<(u16, Protocol)> {
    let mut out: Vec<(u16, Protocol)> = published
        .iter()
        .filter(|(_, p)| !in_force(p, table))
        .map(|(_, p)| (p.host_port, p.protocol))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The ports of `published` that must wait, by container: not in force in `table`, and
/// either on an address the node does not have or taken by a socket of `view`.
pub fn holds(
    node: &str,
    published: &[(String, PortDnat)],
    table: &[PortDnat],
    view: &HostPortsView,
) -> BTreeMap<String, Vec<Hold>> {
    let mut out: BTreeMap<String, Vec<Hold>> = BTreeMap::new();
    for (container, port) in published {
        if in_force(port, table) {
            continue;
        }
        let hold = if !port.host_ip.is_unspecified() && !view.addresses.contains(&port.host_ip) {
            Some(Hold::NotLocal {
                port: port.clone(),
                node: node.to_string(),
            })
        } else {
            view.listeners
                .iter()
                .find(|l| {
                    l.port == port.host_port
                        && l.protocol == port.protocol
                        && l.clashes_with(port.host_ip)
                })
                .map(|l| Hold::InUse {
                    port: port.clone(),
                    listener: l.clone(),
                })
        };
        if let Some(h) = hold {
            out.entry(container.clone()).or_default().push(h);
        }
    }
    out
}

/// The delay before the `n`-th recheck (from 0) of held ports.
pub fn recheck_after(n: u32) -> Duration {
    FIRST_RECHECK
        .saturating_mul(1u32.checked_shl(n).unwrap_or(u32::MAX))
        .min(MAX_RECHECK)
}

/// How a container's status reads with `holds`: None when it has none (Ready as usual).
pub fn not_ready(holds: &[Hold]) -> Option<(&'static str, String)> {
    let first = holds.first()?;
    let message = holds
        .iter()
        .map(Hold::message)
        .collect::<Vec<_>>()
        .join("; ");
    Some((first.reason(), message))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::backend::NodeProcess;

    const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);

    fn port(host_ip: Ipv4Addr, host_port: u16, protocol: Protocol) -> PortDnat {
        PortDnat {
            host_port,
            protocol,
            host_ip,
            target: "10.2.1.5:80".parse().unwrap(),
        }
    }

    fn listener(address: &str, port: u16, protocol: Protocol, v6_only: bool) -> Listener {
        Listener {
            protocol,
            address: address.parse().unwrap(),
            port,
            v6_only,
            inode: 77,
            uid: 0,
            process: Some(NodeProcess {
                pid: 1234,
                name: "nginx".into(),
            }),
        }
    }

    fn view(listeners: Vec<Listener>) -> HostPortsView {
        HostPortsView {
            listeners,
            addresses: vec![Ipv4Addr::LOCALHOST, NODE_IP],
        }
    }

    /// (socket, published on) → held? A DNAT for an address takes what a socket on that
    /// address or on every address receives; IPv6 sockets only when they take IPv4 too.
    #[test]
    fn which_sockets_clash_with_which_publication() {
        let tcp = Protocol::Tcp;
        let any = Ipv4Addr::UNSPECIFIED;
        let table = [
            (listener("0.0.0.0", 8080, tcp, false), NODE_IP, true),
            (listener("0.0.0.0", 8080, tcp, false), any, true),
            (listener("192.168.100.1", 8080, tcp, false), NODE_IP, true),
            (listener("127.0.0.1", 8080, tcp, false), NODE_IP, false),
            (listener("127.0.0.1", 8080, tcp, false), any, true),
            (listener("::", 8080, tcp, false), NODE_IP, true),
            (listener("::", 8080, tcp, true), NODE_IP, false),
            (listener("::1", 8080, tcp, false), any, false),
            (
                listener("::ffff:192.168.100.1", 8080, tcp, false),
                NODE_IP,
                true,
            ),
            (listener("0.0.0.0", 8081, tcp, false), NODE_IP, false),
            (
                listener("0.0.0.0", 8080, Protocol::Udp, false),
                NODE_IP,
                false,
            ),
        ];
        for (l, host_ip, held) in table {
            let published = vec![("web".to_string(), port(host_ip, 8080, tcp))];
            let h = holds("node1", &published, &[], &view(vec![l.clone()]));
            assert_eq!(h.contains_key("web"), held, "{} vs {host_ip}", l.local());
        }
    }

    #[test]
    fn a_held_port_names_port_protocol_and_process() {
        let published = vec![
            ("web".to_string(), port(NODE_IP, 8080, Protocol::Tcp)),
            ("web".to_string(), port(NODE_IP, 9090, Protocol::Tcp)),
            ("dns".to_string(), port(NODE_IP, 53, Protocol::Udp)),
        ];
        let v = view(vec![
            listener("0.0.0.0", 8080, Protocol::Tcp, false),
            listener("0.0.0.0", 53, Protocol::Udp, false),
        ]);
        let h = holds("node1", &published, &[], &v);
        assert_eq!(h.len(), 2);
        assert_eq!(h["web"].len(), 1, "9090 is free");
        let (reason, message) = not_ready(&h["web"]).unwrap();
        assert_eq!(reason, "HostPortInUse");
        assert_eq!(
            message,
            "hostPort 8080/tcp is in use by nginx (pid 1234) listening on 0.0.0.0:8080; it is published once the port is free"
        );
        assert!(
            not_ready(&h["dns"])
                .unwrap()
                .1
                .starts_with("hostPort 53/udp is in use by nginx")
        );
        assert_eq!(not_ready(&[]), None);
        let mut unseen = listener("0.0.0.0", 8080, Protocol::Tcp, false);
        unseen.process = None;
        assert_eq!(
            unseen.holder(),
            "a socket of uid 0 (inode 77) whose process the agent cannot see"
        );
    }

    /// A port topo already publishes is never judged again: its own DNAT is not a socket, and
    /// a socket bound after it was published does not take it back.
    #[test]
    fn a_port_in_force_stays() {
        let p = port(NODE_IP, 8080, Protocol::Tcp);
        let published = vec![("web".to_string(), p.clone())];
        let v = view(vec![listener("0.0.0.0", 8080, Protocol::Tcp, false)]);
        let mut moved = p.clone();
        moved.target = "10.2.1.9:80".parse().unwrap();
        assert!(holds("node1", &published, &[moved.clone()], &v).is_empty());
        assert!(to_check(&published, &[moved]).is_empty());
        assert_eq!(to_check(&published, &[]), vec![(8080, Protocol::Tcp)]);
        let elsewhere = port(Ipv4Addr::UNSPECIFIED, 8080, Protocol::Tcp);
        assert_eq!(
            to_check(&published, &[elsewhere]),
            vec![(8080, Protocol::Tcp)],
            "published on another address is another binding"
        );
    }

    #[test]
    fn a_host_ip_the_node_lacks_is_held() {
        let p = port(Ipv4Addr::new(10, 9, 9, 9), 8080, Protocol::Tcp);
        let h = holds("node1", &[("web".into(), p)], &[], &view(vec![]));
        let (reason, message) = not_ready(&h["web"]).unwrap();
        assert_eq!(reason, "HostIPNotLocal");
        assert_eq!(
            message,
            "hostIP 10.9.9.9 of hostPort 8080/tcp is not an address of node node1; it is published once the node has that address"
        );
        let all = port(Ipv4Addr::UNSPECIFIED, 8080, Protocol::Tcp);
        assert!(holds("node1", &[("web".into(), all)], &[], &view(vec![])).is_empty());
    }

    #[test]
    fn rechecks_back_off_to_ten_seconds() {
        let d: Vec<u64> = (0..7).map(|n| recheck_after(n).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 10, 10, 10]);
        assert_eq!(recheck_after(40), MAX_RECHECK);
    }
}
