//! The probes `topoctl verify` sends, as blocking functions for a thread that has joined the
//! namespace to probe from (`backend::netns`): every socket they open belongs to that
//! thread's network namespace, so the probe leaves from inside the container.
//!
//! - [`echo`]: an ICMP echo on a raw socket (sent again every 250 ms until answered) (the agent is root with CAP_NET_RAW; an
//!   unprivileged ICMP datagram socket would depend on each container's
//!   `net.ipv4.ping_group_range`). The answer is matched by the echo's id, so concurrent
//!   probes in one namespace (each with its own socket, each seeing every ICMP packet) never
//!   take each other's replies. A don't-fragment probe uses `IP_PMTUDISC_PROBE`: DF set,
//!   sized against the interface's MTU and not against a path MTU the namespace may have
//!   learnt from an earlier failure, so every probe tests the wire as it is now.
//! - [`neighbour`]: the kernel's ARP entry for an address, read from
//!   `/proc/thread-self/net/arp` (the calling thread's namespace; `/proc/self/net` would be
//!   the agent's): after an echo went unanswered it tells "no ARP reply" from "no echo
//!   reply", which is the hop.
//! - [`connect_tcp`] and [`send_udp`]: a connection to a link's listen address or a
//!   published port.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, recv, sendto,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

/// IPv4 header (without options) and ICMP header: what an echo adds to its payload.
pub const ECHO_OVERHEAD: usize = 28;
/// The size of an ordinary echo, as ping sends it (56 bytes of payload).
pub const PLAIN_ECHO: usize = 84;

/// How an echo ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Echo {
    Reply,
    /// The namespace refused to send it: larger than the interface's MTU (with DF).
    TooBig,
    /// A hop answered "fragmentation needed" (its next-hop MTU, when it says).
    FragNeeded {
        from: Ipv4Addr,
        mtu: u16,
    },
    /// A hop answered "destination unreachable" or "time exceeded".
    Unreachable {
        from: Ipv4Addr,
        what: String,
    },
    /// No route, or the interface is down, inside the namespace.
    NoRoute(String),
    Timeout,
    /// The probe could not be made (socket, send).
    Failed(String),
}

/// Ids of echoes in flight in this process.
static NEXT_ID: AtomicU16 = AtomicU16::new(1);

/// The Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo request of `ip_len` bytes of IP (at least the headers).
pub fn echo_request(id: u16, ip_len: usize) -> Vec<u8> {
    let mut p = vec![0u8; ip_len.max(ECHO_OVERHEAD) - 20];
    p[0] = 8;
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&1u16.to_be_bytes());
    for (i, b) in p.iter_mut().enumerate().skip(8) {
        *b = (i % 251) as u8;
    }
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// What a packet a raw ICMP socket received says about echo `id` to `dst`, if anything.
pub fn classify(packet: &[u8], id: u16, dst: Ipv4Addr) -> Option<Echo> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    let src = Ipv4Addr::new(
        *packet.get(12)?,
        *packet.get(13)?,
        *packet.get(14)?,
        *packet.get(15)?,
    );
    let icmp = packet.get(ihl..)?;
    let (ty, code) = (*icmp.first()?, *icmp.get(1)?);
    let id_at = |b: &[u8], at: usize| Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]));
    if ty == 0 {
        return (src == dst && id_at(icmp, 4)? == id).then_some(Echo::Reply);
    }
    if ty != 3 && ty != 11 {
        return None;
    }
    // The error quotes the original IP header and the first 8 bytes of the echo.
    let inner = icmp.get(8..)?;
    let inner_ihl = usize::from(inner.first()? & 0x0f) * 4;
    let inner_dst = Ipv4Addr::new(
        *inner.get(16)?,
        *inner.get(17)?,
        *inner.get(18)?,
        *inner.get(19)?,
    );
    let quoted = inner.get(inner_ihl..)?;
    if inner_dst != dst || *quoted.first()? != 8 || id_at(quoted, 4)? != id {
        return None;
    }
    Some(match (ty, code) {
        (3, 4) => Echo::FragNeeded {
            from: src,
            mtu: id_at(icmp, 6)?,
        },
        (3, c) => Echo::Unreachable {
            from: src,
            what: match c {
                0 => "network unreachable".to_string(),
                1 => "host unreachable".to_string(),
                13 => "administratively prohibited".to_string(),
                c => format!("destination unreachable (code {c})"),
            },
        },
        _ => Echo::Unreachable {
            from: src,
            what: "time exceeded".to_string(),
        },
    })
}

fn raw_icmp_socket(dont_fragment: bool) -> io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Icmp,
    )?;
    if dont_fragment {
        let mode: libc::c_int = libc::IP_PMTUDISC_PROBE;
        // SAFETY: setsockopt(2) on a socket we own, with a pointer to a c_int and its size,
        // as IP_MTU_DISCOVER expects; nix has no wrapper for this option.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&mode as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(fd)
}

/// How often an unanswered echo is sent again within its deadline: one packet lost on a
/// busy host is not a broken path (ping, too, sends more than one).
pub const RESEND_EVERY: Duration = Duration::from_millis(250);

/// Sends an echo of `ip_len` bytes of IP to `dst` (again every [`RESEND_EVERY`], same id)
/// and waits up to `deadline` for its fate.
pub fn echo(dst: Ipv4Addr, ip_len: usize, dont_fragment: bool, deadline: Duration) -> Echo {
    let started = Instant::now();
    let fd = match raw_icmp_socket(dont_fragment) {
        Ok(fd) => fd,
        Err(e) => return Echo::Failed(format!("failed to open a raw ICMP socket: {e}")),
    };
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed) ^ (std::process::id() as u16);
    let request = echo_request(id, ip_len);
    let to = SockaddrIn::from(SocketAddrV4::new(dst, 0));
    let mut buf = vec![0u8; 65536];
    let mut next_send = Duration::ZERO;
    loop {
        let elapsed = started.elapsed();
        if elapsed >= deadline {
            return Echo::Timeout;
        }
        if elapsed >= next_send {
            if let Some(e) = send_echo(&fd, &request, &to) {
                return e;
            }
            next_send = elapsed + RESEND_EVERY;
        }
        let wait = deadline.min(next_send).saturating_sub(started.elapsed());
        let tv = TimeVal::new(
            wait.as_secs() as libc::time_t,
            wait.subsec_micros().max(1) as libc::suseconds_t,
        );
        if let Err(e) = setsockopt(&fd, sockopt::ReceiveTimeout, &tv) {
            return Echo::Failed(format!("failed to set a receive timeout: {}", e.desc()));
        }
        match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) => {
                if let Some(e) = buf.get(..n).and_then(|p| classify(p, id, dst)) {
                    return e;
                }
            }
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            // A "fragmentation needed" reported as the socket's error; its packet follows.
            Err(Errno::EMSGSIZE) => {}
            Err(e @ (Errno::EHOSTUNREACH | Errno::ENETUNREACH)) => {
                return Echo::NoRoute(e.desc().to_string());
            }
            Err(e) => return Echo::Failed(format!("failed to receive: {}", e.desc())),
        }
    }
}

/// Sends one echo; None when it left, else how the probe ends.
fn send_echo(fd: &OwnedFd, request: &[u8], to: &SockaddrIn) -> Option<Echo> {
    match sendto(fd.as_raw_fd(), request, to, MsgFlags::empty()) {
        Ok(_) => None,
        Err(Errno::EMSGSIZE) => Some(Echo::TooBig),
        Err(e @ (Errno::ENETUNREACH | Errno::EHOSTUNREACH | Errno::ENETDOWN)) => {
            Some(Echo::NoRoute(e.desc().to_string()))
        }
        Err(e) => Some(Echo::Failed(format!("failed to send: {}", e.desc()))),
    }
}

/// The kernel's neighbour entry for an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Neighbour {
    /// Resolved: the MAC that answered.
    Answered { mac: String, device: String },
    /// Asked, no answer (yet).
    Incomplete { device: String },
    /// Never asked (no route sent anything there).
    Absent,
}

/// `ip`'s entry in a `/proc/net/arp` listing.
pub fn parse_arp(listing: &str, ip: Ipv4Addr) -> Neighbour {
    let ip = ip.to_string();
    for line in listing.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[0] != ip {
            continue;
        }
        let flags = u32::from_str_radix(f[2].trim_start_matches("0x"), 16).unwrap_or(0);
        let device = f[5].to_string();
        // ATF_COM: the entry is complete.
        return if flags & 0x2 != 0 {
            Neighbour::Answered {
                mac: f[3].to_string(),
                device,
            }
        } else {
            Neighbour::Incomplete { device }
        };
    }
    Neighbour::Absent
}

/// The calling thread's namespace's neighbour entry for `ip`.
pub fn neighbour(ip: Ipv4Addr) -> Neighbour {
    std::fs::read_to_string("/proc/thread-self/net/arp")
        .map(|l| parse_arp(&l, ip))
        .unwrap_or(Neighbour::Absent)
}

/// How a connection attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connect {
    Ok,
    Refused,
    Timeout,
    Failed(String),
}

fn connect_outcome(e: &io::Error) -> Connect {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Connect::Refused,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Connect::Timeout,
        _ => Connect::Failed(e.to_string()),
    }
}

/// A TCP connection to `to`, closed at once.
pub fn connect_tcp(to: SocketAddrV4, deadline: Duration) -> Connect {
    match TcpStream::connect_timeout(&SocketAddr::V4(to), deadline) {
        Ok(_) => Connect::Ok,
        Err(e) => connect_outcome(&e),
    }
}

/// A datagram to `to`: Refused when an ICMP port unreachable comes back within `deadline`;
/// silence is Ok (UDP has no handshake: a listener need not answer).
pub fn send_udp(to: SocketAddrV4, deadline: Duration) -> Connect {
    let run = || -> io::Result<Connect> {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.connect(to)?;
        s.set_read_timeout(Some(deadline))?;
        s.send(b"topo verify\n")?;
        let mut buf = [0u8; 512];
        Ok(match s.recv(&mut buf) {
            Ok(_) => Connect::Ok,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Connect::Refused,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Connect::Ok
            }
            Err(e) => Connect::Failed(e.to_string()),
        })
    };
    run().unwrap_or_else(|e| connect_outcome(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip_header(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut h = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0];
        h.extend(src);
        h.extend(dst);
        h
    }

    #[test]
    fn echo_requests_have_the_size_and_checksum_asked() {
        let p = echo_request(0x1234, 1400);
        assert_eq!(p.len() + 20, 1400);
        assert_eq!((p[0], p[1], &p[4..8]), (8, 0, &[0x12, 0x34, 0, 1][..]));
        assert_eq!(checksum(&p), 0, "a packet with its checksum sums to zero");
        assert_eq!(echo_request(1, 0).len(), 8, "never shorter than the header");
    }

    #[test]
    fn replies_and_errors_are_matched_by_id_and_destination() {
        let dst = Ipv4Addr::new(10, 2, 3, 2);
        let mut reply = ip_header([10, 2, 3, 2], [10, 2, 1, 2]);
        reply.extend([0, 0, 0, 0, 0x12, 0x34, 0, 1]);
        assert_eq!(classify(&reply, 0x1234, dst), Some(Echo::Reply));
        assert_eq!(classify(&reply, 0x9999, dst), None, "another probe's reply");
        assert_eq!(classify(&reply, 0x1234, Ipv4Addr::new(10, 2, 3, 9)), None);
        // Our own request, seen on the raw socket (loopback): not an answer.
        let mut own = ip_header([10, 2, 1, 2], [10, 2, 3, 2]);
        own.extend(echo_request(0x1234, 84));
        assert_eq!(classify(&own, 0x1234, dst), None);
        // A hop's "fragmentation needed, next-hop MTU 1400", quoting our echo.
        let mut frag = ip_header([10, 2, 1, 1], [10, 2, 1, 2]);
        frag.extend([3, 4, 0, 0, 0, 0, 0x05, 0x78]);
        frag.extend(ip_header([10, 2, 1, 2], [10, 2, 3, 2]));
        frag.extend([8, 0, 0, 0, 0x12, 0x34, 0, 1]);
        assert_eq!(
            classify(&frag, 0x1234, dst),
            Some(Echo::FragNeeded {
                from: Ipv4Addr::new(10, 2, 1, 1),
                mtu: 1400
            })
        );
        frag[21] = 1;
        assert_eq!(
            classify(&frag, 0x1234, dst),
            Some(Echo::Unreachable {
                from: Ipv4Addr::new(10, 2, 1, 1),
                what: "host unreachable".into()
            })
        );
        assert_eq!(classify(&frag[..30], 0x1234, dst), None, "truncated");
        assert_eq!(classify(&[], 1, dst), None);
    }

    #[test]
    fn arp_entries() {
        let listing =
            "IP address       HW type     Flags       HW address            Mask     Device
10.2.1.1         0x1         0x2         02:42:0a:02:01:01     *        eth0
10.2.3.2         0x1         0x0         00:00:00:00:00:00     *        eth0
";
        assert_eq!(
            parse_arp(listing, Ipv4Addr::new(10, 2, 1, 1)),
            Neighbour::Answered {
                mac: "02:42:0a:02:01:01".into(),
                device: "eth0".into()
            }
        );
        assert_eq!(
            parse_arp(listing, Ipv4Addr::new(10, 2, 3, 2)),
            Neighbour::Incomplete {
                device: "eth0".into()
            }
        );
        assert_eq!(
            parse_arp(listing, Ipv4Addr::new(10, 2, 9, 9)),
            Neighbour::Absent
        );
    }

    /// Needs root (CAP_NET_RAW), as the agent has: fails loudly without it.
    #[test]
    fn echoes_in_the_own_namespace() {
        let lo = Ipv4Addr::LOCALHOST;
        assert_eq!(
            echo(lo, PLAIN_ECHO, false, Duration::from_secs(5)),
            Echo::Reply
        );
        assert_eq!(echo(lo, 9000, true, Duration::from_secs(5)), Echo::Reply);
    }

    #[test]
    fn connections_in_the_own_namespace() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let SocketAddr::V4(at) = l.local_addr().unwrap() else {
            unreachable!()
        };
        assert_eq!(connect_tcp(at, Duration::from_secs(5)), Connect::Ok);
        drop(l);
        assert_eq!(connect_tcp(at, Duration::from_secs(5)), Connect::Refused);
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let SocketAddr::V4(uat) = u.local_addr().unwrap() else {
            unreachable!()
        };
        drop(u);
        assert_eq!(send_udp(uat, Duration::from_secs(5)), Connect::Refused);
    }
}
