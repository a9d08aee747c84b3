//! Who holds the node's host ports: the listening sockets of the node's network namespace
//! (the agent's own), read with netlink sock_diag (`inet_diag`, what `ss` uses), and the
//! process behind each socket, found by its inode among `/proc/PID/fd`.
//!
//! sock_diag is asked per family and protocol; where the kernel cannot answer one (built
//! without `inet_diag` or `udp_diag`) that part is read from `/proc/thread-self/net/{tcp,
//! tcp6,udp,udp6}` instead, which lists the same sockets (without IPV6_V6ONLY, so an IPv6
//! wildcard socket read there counts as receiving IPv4 too: the cautious reading).
//!
//! A DNAT rule topo programs is not a socket, so it never shows here: a port topo published
//! is never mistaken for a port someone else holds.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use async_trait::async_trait;
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::inet::nlas::Nla;
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::{
    AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, SockDiagMessage, TCP_CLOSE, TCP_LISTEN,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};
use topo_schema::kinds::Protocol;

use super::{HostPorts, HostPortsView, Listener, NodeProcess};

#[derive(Debug, thiserror::Error)]
pub enum HostPortsError {
    #[error(
        "failed to list the {what} sockets of the node: sock_diag failed ({diag}) and so did reading /proc"
    )]
    List {
        what: String,
        diag: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to list the node's addresses")]
    Addresses(#[source] nix::Error),
    #[error("failed to run the socket listing")]
    Task(#[source] io::Error),
}

/// A socket as the kernel lists it, before its process is looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSocket {
    pub address: IpAddr,
    pub port: u16,
    /// TCP state (10 LISTEN; 7 CLOSE is an unconnected UDP socket).
    pub state: u8,
    /// Remote port: 0 for a socket that is not connected.
    pub remote_port: u16,
    pub v6_only: bool,
    pub uid: u32,
    pub inode: u32,
}

impl RawSocket {
    /// Whether it holds its port: a TCP listener, a UDP socket bound and not connected.
    fn holds_port(&self, protocol: Protocol) -> bool {
        self.port != 0
            && match protocol {
                Protocol::Tcp => self.state == TCP_LISTEN,
                Protocol::Udp => self.state == TCP_CLOSE && self.remote_port == 0,
            }
    }
}

fn protocol_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
    }
}

/// One sock_diag dump of `family`/`protocol` sockets in the states that hold a port.
fn diag_dump(family: u8, protocol: Protocol) -> io::Result<Vec<RawSocket>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let states = match protocol {
        Protocol::Tcp => StateFlags::LISTEN,
        Protocol::Udp => StateFlags::CLOSE,
    };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: protocol_number(protocol),
            // IPV6_V6ONLY comes with every IPv6 listening or closed socket unasked.
            extensions: ExtensionFlags::empty(),
            states,
            socket_id: if family == AF_INET6 {
                SocketId::new_v6()
            } else {
                SocketId::new_v4()
            },
        })
        .into(),
    );
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0)?;
    read_dump(&socket)
}

fn read_dump(socket: &Socket) -> io::Result<Vec<RawSocket>> {
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        buf.clear();
        let n = socket.recv(&mut buf, 0)?;
        let mut at = 0;
        while at < n.min(buf.len()) {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[at..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    out.push(RawSocket {
                        address: r.header.socket_id.source_address,
                        port: r.header.socket_id.source_port,
                        state: r.header.state,
                        remote_port: r.header.socket_id.destination_port,
                        v6_only: r.nlas.iter().any(|n| matches!(n, Nla::SkV6Only(true))),
                        uid: r.header.uid,
                        inode: r.header.inode,
                    });
                }
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => return Err(e.to_io()),
                _ => {}
            }
            if len == 0 {
                break;
            }
            at += len;
        }
    }
}

/// An address of `/proc/net/{tcp,udp}`: the IPv4 address as one host-order hex word, the
/// IPv6 address as four.
fn proc_address(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| {
        hex.get(i * 8..i * 8 + 8)
            .and_then(|w| u32::from_str_radix(w, 16).ok())
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?.to_ne_bytes()))),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?.to_ne_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

/// The sockets of a `/proc/net/{tcp,tcp6,udp,udp6}` listing (lines it cannot read are
/// skipped: the kernel's format, not user input).
pub fn parse_proc_net(text: &str) -> Vec<RawSocket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, remote) = (f.get(1)?.split_once(':')?, f.get(2)?.split_once(':')?);
            Some(RawSocket {
                address: proc_address(local.0)?,
                port: u16::from_str_radix(local.1, 16).ok()?,
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                remote_port: u16::from_str_radix(remote.1, 16).ok()?,
                v6_only: false,
                uid: f.get(7)?.parse().ok()?,
                inode: f.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

fn proc_listing(family: u8, protocol: Protocol) -> io::Result<Vec<RawSocket>> {
    let file = match (family == AF_INET6, protocol) {
        (false, Protocol::Tcp) => "tcp",
        (true, Protocol::Tcp) => "tcp6",
        (false, Protocol::Udp) => "udp",
        (true, Protocol::Udp) => "udp6",
    };
    match std::fs::read_to_string(format!("/proc/thread-self/net/{file}")) {
        Ok(text) => Ok(parse_proc_net(&text)),
        // No IPv6 in this kernel: no IPv6 sockets.
        Err(e) if e.kind() == io::ErrorKind::NotFound && family == AF_INET6 => Ok(vec![]),
        Err(e) => Err(e),
    }
}

/// The sockets holding a port of `protocol` in the calling thread's namespace.
fn holding(protocol: Protocol) -> Result<Vec<RawSocket>, HostPortsError> {
    let mut out = Vec::new();
    for family in [AF_INET, AF_INET6] {
        let listed = match diag_dump(family, protocol) {
            Ok(s) => s,
            Err(diag) => proc_listing(family, protocol).map_err(|source| HostPortsError::List {
                what: format!("{protocol}{}", if family == AF_INET6 { "6" } else { "" }),
                diag: diag.to_string(),
                source,
            })?,
        };
        out.extend(listed.into_iter().filter(|s| s.holds_port(protocol)));
    }
    Ok(out)
}

/// The process of each of `inodes` (the lowest pid among those sharing a socket), found by
/// the `socket:[INODE]` links of every `/proc/PID/fd`. Processes that vanish meanwhile, or
/// whose fds cannot be read, are skipped.
pub fn owners(proc_root: &std::path::Path, inodes: &BTreeSet<u32>) -> BTreeMap<u32, NodeProcess> {
    let mut out: BTreeMap<u32, NodeProcess> = BTreeMap::new();
    if inodes.is_empty() {
        return out;
    }
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return out;
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(proc_root.join(pid.to_string()).join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u32>().ok())
            else {
                continue;
            };
            if inodes.contains(&inode) && !out.contains_key(&inode) {
                let name = std::fs::read_to_string(proc_root.join(pid.to_string()).join("comm"))
                    .map(|c| c.trim_end().to_string())
                    .unwrap_or_else(|_| "?".to_string());
                out.insert(inode, NodeProcess { pid, name });
            }
        }
        if out.len() == inodes.len() {
            break;
        }
    }
    out
}

fn local_addresses() -> Result<Vec<Ipv4Addr>, HostPortsError> {
    let mut out: Vec<Ipv4Addr> = nix::ifaddrs::getifaddrs()
        .map_err(HostPortsError::Addresses)?
        .filter_map(|ifa| ifa.address?.as_sockaddr_in().map(|a| a.ip()))
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// What [`HostPorts::observe`] does, on the calling thread (in its namespace).
pub fn observe_here(ports: &[(u16, Protocol)]) -> Result<HostPortsView, HostPortsError> {
    let mut listeners = Vec::new();
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let wanted: BTreeSet<u16> = ports
            .iter()
            .filter(|(_, p)| *p == protocol)
            .map(|(n, _)| *n)
            .collect();
        if wanted.is_empty() {
            continue;
        }
        for s in holding(protocol)? {
            if wanted.contains(&s.port) {
                listeners.push(Listener {
                    protocol,
                    address: s.address,
                    port: s.port,
                    v6_only: s.v6_only,
                    inode: s.inode,
                    uid: s.uid,
                    process: None,
                });
            }
        }
    }
    let inodes: BTreeSet<u32> = listeners.iter().map(|l| l.inode).collect();
    let procs = owners(std::path::Path::new("/proc"), &inodes);
    for l in &mut listeners {
        l.process = procs.get(&l.inode).cloned();
    }
    Ok(HostPortsView {
        listeners,
        addresses: local_addresses()?,
    })
}

/// The host ports of the agent's own namespace (the node's).
#[derive(Debug, Clone, Default)]
pub struct NodeSockets;

impl NodeSockets {
    pub fn new() -> Self {
        NodeSockets
    }
}

#[async_trait]
impl HostPorts for NodeSockets {
    async fn observe(&self, ports: &[(u16, Protocol)]) -> Result<HostPortsView, HostPortsError> {
        let ports = ports.to_vec();
        tokio::task::spawn_blocking(move || observe_here(&ports))
            .await
            .map_err(|e| HostPortsError::Task(io::Error::other(e.to_string())))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as the kernel writes them (6.1): sshd on 0.0.0.0:22, a client connection, a
    /// listener on 127.0.0.1:8080.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 20512 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 31337 1 0000000000000000 100 0 0 10 0
   2: 0264A8C0:0016 0164A8C0:D431 01 00000000:00000000 02:0009F7BB 00000000     0        0 41000 2 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000164A8C0:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 778 1 0000000000000000 100 0 0 10 0
";
    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  1: 00000000:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 5353 2 0000000000000000 0
  2: 0264A8C0:C350 0164A8C0:0035 01 00000000:00000000 00:00000000 00000000     0        0 6000 2 0000000000000000 0
";

    #[test]
    fn proc_net_listings() {
        let tcp = parse_proc_net(TCP);
        assert_eq!(tcp.len(), 3);
        assert_eq!(tcp[0].address, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!((tcp[0].port, tcp[0].inode, tcp[0].uid), (22, 20512, 0));
        assert!(tcp[0].holds_port(Protocol::Tcp));
        assert_eq!(tcp[1].address, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!((tcp[1].port, tcp[1].uid), (8080, 1000));
        assert_eq!(tcp[2].address, "192.168.100.2".parse::<IpAddr>().unwrap());
        assert!(
            !tcp[2].holds_port(Protocol::Tcp),
            "an established connection"
        );

        let tcp6 = parse_proc_net(TCP6);
        assert_eq!(tcp6[0].address, IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        assert_eq!(tcp6[0].port, 80);
        assert_eq!(
            tcp6[1].address,
            "::ffff:192.168.100.1".parse::<IpAddr>().unwrap()
        );

        let udp = parse_proc_net(UDP);
        assert_eq!((udp[0].port, udp[0].state), (5353, TCP_CLOSE));
        assert!(udp[0].holds_port(Protocol::Udp), "bound, unconnected");
        assert!(
            !udp[1].holds_port(Protocol::Udp),
            "a connected client socket holds no port"
        );
        assert!(parse_proc_net("header only\n  garbage line\n").is_empty());
    }

    #[test]
    fn sockets_are_found_with_their_process() {
        // This test's own listener, in whatever namespace it runs: sock_diag needs no
        // privilege to list.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let view = observe_here(&[(port, Protocol::Tcp)]).unwrap();
        let found: Vec<&Listener> = view.listeners.iter().filter(|x| x.port == port).collect();
        assert_eq!(found.len(), 1, "{view:?}");
        assert_eq!(found[0].address, IpAddr::V4(Ipv4Addr::LOCALHOST));
        let p = found[0]
            .process
            .as_ref()
            .expect("our own process is visible");
        assert_eq!(p.pid, std::process::id());
        assert!(view.addresses.contains(&Ipv4Addr::LOCALHOST), "{view:?}");
        drop(l);
        let view = observe_here(&[(port, Protocol::Tcp)]).unwrap();
        assert!(view.listeners.iter().all(|x| x.port != port), "{view:?}");
    }
}
