//! ARP probes (RFC 5227) for an address before a container's interface takes it: the
//! [`AddressProber`] of the node, and the MACs topo gives its containers' interfaces.
//!
//! Where the probe leaves from: an `AF_PACKET` socket of the node's namespace bound to the
//! network's bridge's *internal port* (the interface named like the bridge, which holds the
//! gateway address). With the lab's `netdev` datapath that port is a tap device whose other
//! end is ovs-vswitchd, so a frame written to it enters the bridge as if the port had sent
//! it and is flooded to every port: the containers' veths of this node and the GRE tunnels
//! to the other nodes; with the kernel datapath the internal port is an `internal` device
//! and behaves the same. A frame the bridge forwards to the port comes back up the node's
//! stack, where the packet socket sees it whatever its destination MAC. The container's own
//! veth cannot carry the probe: its address must not exist before the probe says it is free,
//! and its port may not be on the bridge yet. A topo-owned tap of its own would add an
//! interface, a port and their cleanup to every node for nothing the internal port lacks.
//!
//! The probe's sender hardware address (and Ethernet source) is the internal port's own MAC,
//! so answers come back to that port and nowhere else. Not the MAC the container's interface
//! gets: that interface may already be a port of the bridge (an address withheld, or removed
//! by hand), and two ports sending from one MAC make the bridge's MAC learning send the
//! answer to whichever spoke last — the probe would miss the squatter. Containers'
//! interfaces get [`assigned_mac`]s, so every agent tells a topo interface (of any node: a
//! container moving between nodes answers for its address until the old node removes it)
//! from a squatter without knowing other nodes' interfaces.
//!
//! Timing: RFC 5227 sends 3 probes 1–2 s apart and then waits 2 s (ANNOUNCE_WAIT), some 4–7 s
//! that were designed for hosts joining an unknown LAN by DHCP or link-local addressing. Here
//! the probe is on the critical path of every container start, the segment is an OVS bridge
//! and GRE tunnels between hosts topo itself set up, and a holder answers from its kernel (no
//! user process in the way): [`PROBES`] probes [`PROBE_INTERVAL`] apart, listening until
//! [`LISTEN`] after the first — 150 ms in all. Three probes, because a frame can be lost while
//! a tunnel's flows are being set up; the last one still has 70 ms to be answered, enough for
//! a reply through two ovs-vswitchd processes on a loaded machine.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use async_trait::async_trait;
use ipnet::Ipv4Net;
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

use super::{AddressProber, Claim, ClaimKind, Mac};

/// Probes sent per address.
pub const PROBES: u32 = 3;
/// Between two probes.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(40);
/// How long after the first probe answers are listened for.
pub const LISTEN: Duration = Duration::from_millis(150);

/// The first two bytes of the MACs topo gives containers' interfaces: locally administered,
/// unicast; the other four are the interface's IPv4 address (as OVN does).
const MAC_PREFIX: [u8; 2] = [0x0a, 0x58];

/// `sll_pkttype` of a frame this host sent (linux/if_packet.h).
const PACKET_OUTGOING: u8 = 4;

const ETHERTYPE_ARP: u16 = 0x0806;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;
/// Ethernet header and an Ethernet/IPv4 ARP payload.
const ARP_FRAME: usize = 14 + 28;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("failed to find the internal port of bridge {bridge}")]
    NoBridgePort { bridge: String },
    #[error("failed to open a packet socket on {bridge}")]
    Socket {
        bridge: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to send an ARP probe on {bridge}")]
    Send {
        bridge: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to read ARP answers on {bridge}")]
    Receive {
        bridge: String,
        #[source]
        source: io::Error,
    },
}

/// The MAC topo gives the interface that holds `address`.
pub fn assigned_mac(address: Ipv4Addr) -> Mac {
    let [a, b, c, d] = address.octets();
    Mac([MAC_PREFIX[0], MAC_PREFIX[1], a, b, c, d])
}

/// Whether topo gave `mac` to an interface of `network` (a container's, on any node; its
/// address may have changed since the MAC was given).
pub fn assigned_in(mac: Mac, network: Ipv4Net) -> bool {
    let [p0, p1, a, b, c, d] = mac.0;
    [p0, p1] == MAC_PREFIX && network.contains(&Ipv4Addr::new(a, b, c, d))
}

/// An ARP probe for `address` from `mac`, as an Ethernet broadcast frame (RFC 5227 §2.1.1:
/// a request with sender IP 0.0.0.0, the target hardware address zero).
pub fn probe_frame(mac: Mac, address: Ipv4Addr) -> [u8; ARP_FRAME] {
    let mut f = [0u8; ARP_FRAME];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac.0);
    f[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    let arp = &mut f[14..];
    arp[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    arp[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    arp[4] = 6;
    arp[5] = 4;
    arp[6..8].copy_from_slice(&ARP_REQUEST.to_be_bytes());
    arp[8..14].copy_from_slice(&mac.0);
    // sender IP and target hardware address stay zero
    arp[24..28].copy_from_slice(&address.octets());
    f
}

/// The claim on `address` that the Ethernet frame `frame` makes, if any: a reply or a
/// request from the address, or someone else's probe for it. `own` is the probes' MAC.
pub fn claim_in(frame: &[u8], address: Ipv4Addr, own: Mac) -> Option<Claim> {
    if frame.len() < ARP_FRAME || frame[12..14] != ETHERTYPE_ARP.to_be_bytes() {
        return None;
    }
    let arp = &frame[14..ARP_FRAME];
    if arp[0..6] != [0, 1, 8, 0, 6, 4] {
        return None;
    }
    let op = u16::from_be_bytes([arp[6], arp[7]]);
    let mac = Mac(arp[8..14].try_into().ok()?);
    let sender = Ipv4Addr::new(arp[14], arp[15], arp[16], arp[17]);
    let target = Ipv4Addr::new(arp[24], arp[25], arp[26], arp[27]);
    let kind = match op {
        ARP_REPLY if sender == address => ClaimKind::Reply,
        ARP_REQUEST if sender == address => ClaimKind::Announcement,
        ARP_REQUEST if sender.is_unspecified() && target == address && mac != own => {
            ClaimKind::Probe
        }
        _ => return None,
    };
    Some(Claim { mac, kind })
}

/// The prober of the node's namespace (it keeps no state: each probe opens its socket).
#[derive(Debug, Default)]
pub struct ArpProber;

#[async_trait]
impl AddressProber for ArpProber {
    async fn probe(&self, bridge: &str, address: Ipv4Addr) -> Result<Vec<Claim>, ProbeError> {
        let ifindex =
            nix::net::if_::if_nametoindex(bridge).map_err(|_| ProbeError::NoBridgePort {
                bridge: bridge.to_string(),
            })?;
        let socket = |source| ProbeError::Socket {
            bridge: bridge.to_string(),
            source,
        };
        let owned = packet_socket(ifindex).map_err(socket)?;
        // SAFETY: `register` needs the descriptor to stay open while registered: the AsyncFd
        // owns the OwnedFd and closes it only when dropped, after deregistering.
        let mac = hardware_address(&owned, bridge).map_err(socket)?;
        let fd = unsafe { AsyncFd::register(owned) }.map_err(|e| socket(e.into()))?;
        let frame = probe_frame(mac, address);
        let start = Instant::now();
        let (mut sent, mut claims) = (0u32, Vec::<Claim>::new());
        let mut buf = [0u8; 256];
        loop {
            let now = Instant::now();
            let next_probe = start + PROBE_INTERVAL * sent;
            if sent < PROBES && now >= next_probe {
                send(fd.get_ref(), &frame).map_err(|source| ProbeError::Send {
                    bridge: bridge.to_string(),
                    source,
                })?;
                sent += 1;
                continue;
            }
            if sent >= PROBES && now >= start + LISTEN {
                return Ok(claims);
            }
            let wake = if sent < PROBES {
                next_probe
            } else {
                start + LISTEN
            };
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                ready = fd.readable() => {
                    let receive = |source| ProbeError::Receive { bridge: bridge.to_string(), source };
                    let mut guard = ready.map_err(receive)?;
                    while let Ok(got) = guard.try_io(|fd| receive_frame(fd.get_ref(), &mut buf)) {
                        let Some(len) = got.map_err(receive)? else { continue };
                        if let Some(c) = claim_in(&buf[..len], address, mac)
                            && !claims.iter().any(|k| k.mac == c.mac)
                        {
                            claims.push(c);
                        }
                    }
                }
            }
        }
    }
}

fn sockaddr_ll(ifindex: u32) -> io::Result<libc::sockaddr_ll> {
    // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (ETHERTYPE_ARP).to_be();
    sll.sll_ifindex = i32::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ifindex"))?;
    Ok(sll)
}

/// A raw, non-blocking packet socket that sees the ARP frames of `ifindex` only.
fn packet_socket(ifindex: u32) -> io::Result<OwnedFd> {
    // Protocol 0: no frame at all until `bind` names the protocol and the interface together
    // (opened with ETH_P_ARP, it would queue other interfaces' ARP frames until then).
    // SAFETY: socket(2) with constant arguments; the descriptor is checked and owned below.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor socket(2) just returned; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let sll = sockaddr_ll(ifindex)?;
    // SAFETY: `sll` is a valid sockaddr_ll for the length given.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// The MAC of interface `name` (SIOCGIFHWADDR, through any socket of its namespace).
fn hardware_address(fd: &OwnedFd, name: &str) -> io::Result<Mac> {
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name",
        ));
    }
    for (d, b) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *b as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq naming the interface; the kernel fills ifru_hwaddr.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR succeeded, so the union holds ifru_hwaddr.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data) {
        *m = d as u8;
    }
    Ok(Mac(mac))
}

/// Writes one whole Ethernet frame out of the port the socket is bound to.
fn send(fd: &OwnedFd, frame: &[u8]) -> io::Result<()> {
    // SAFETY: `frame` is valid for its length; the socket is bound, so no address is needed.
    let r = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One frame the port received (`None`: one it sent, which every packet socket also sees).
fn receive_frame(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
    let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `buf` and `from` are valid for the lengths given; a longer frame is truncated.
    let r = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
            (&mut from as *mut libc::sockaddr_ll).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if from.sll_pkttype == PACKET_OUTGOING {
        return Ok(None);
    }
    Ok(Some(r as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: Ipv4Addr = Ipv4Addr::new(10, 2, 1, 5);

    fn answer(op: u16, mac: Mac, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
        let mut f = probe_frame(mac, target).to_vec();
        f[20..22].copy_from_slice(&op.to_be_bytes());
        f[28..32].copy_from_slice(&sender.octets());
        f
    }

    #[test]
    fn the_probe_is_rfc_5227s() {
        let mac = assigned_mac(ADDR);
        assert_eq!(mac.to_string(), "0a:58:0a:02:01:05");
        let f = probe_frame(mac, ADDR);
        assert_eq!(&f[0..6], &[0xff; 6], "broadcast");
        assert_eq!(&f[6..12], &mac.0, "from the interface's MAC");
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[14..22], &[0, 1, 8, 0, 6, 4, 0, 1], "a request");
        assert_eq!(&f[22..28], &mac.0);
        assert_eq!(&f[28..32], &[0; 4], "sender IP 0.0.0.0");
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &ADDR.octets(), "target: the address");
        assert_eq!(
            claim_in(&f, ADDR, mac),
            None,
            "its own probe claims nothing"
        );
    }

    #[test]
    fn what_claims_the_address() {
        let own = assigned_mac(ADDR);
        let other = Mac([2, 0, 0, 0, 0, 9]);
        let zero = Ipv4Addr::UNSPECIFIED;
        let elsewhere = Ipv4Addr::new(10, 2, 1, 6);
        let claim = |kind| Some(Claim { mac: other, kind });
        // frame → claim
        let table = [
            (
                answer(ARP_REPLY, other, ADDR, zero),
                claim(ClaimKind::Reply),
            ),
            (
                answer(ARP_REQUEST, other, ADDR, ADDR),
                claim(ClaimKind::Announcement),
            ),
            (
                answer(ARP_REQUEST, other, ADDR, elsewhere),
                claim(ClaimKind::Announcement),
            ),
            (
                answer(ARP_REQUEST, other, zero, ADDR),
                claim(ClaimKind::Probe),
            ),
            (answer(ARP_REQUEST, own, zero, ADDR), None),
            (answer(ARP_REPLY, other, elsewhere, zero), None),
            (answer(ARP_REQUEST, other, zero, elsewhere), None),
            (answer(ARP_REQUEST, other, elsewhere, ADDR), None),
            (answer(ARP_REPLY, other, ADDR, zero)[..30].to_vec(), None),
        ];
        for (frame, want) in table {
            assert_eq!(claim_in(&frame, ADDR, own), want, "{frame:02x?}");
        }
        let mut ipv6 = answer(ARP_REPLY, other, ADDR, zero);
        ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(claim_in(&ipv6, ADDR, own), None);
    }

    #[test]
    fn topo_knows_its_macs_by_network() {
        let net: Ipv4Net = "10.2.0.0/16".parse().unwrap();
        assert!(assigned_in(assigned_mac(ADDR), net));
        assert!(
            assigned_in(assigned_mac(Ipv4Addr::new(10, 2, 200, 1)), net),
            "another address of the network: a container renumbered since"
        );
        assert!(!assigned_in(assigned_mac(Ipv4Addr::new(10, 3, 0, 1)), net));
        assert!(!assigned_in(Mac([2, 0x42, 10, 2, 1, 5]), net));
    }
}
