//! Interfaces through rtnetlink: container veth pairs and the bridge's gateway address.
//! A container's interface is born with the MAC topo gives its address (`arp::assigned_mac`),
//! and can be made without its address while another host answers for it.
//!
//! Work inside a container's namespace uses sockets opened there: a short-lived OS thread
//! joins the namespace, opens a netlink socket (registered with the agent's tokio reactor),
//! an AF_INET socket (for ethtool ioctls) and an AF_PACKET socket (for the gratuitous ARP),
//! and hands them back; the thread then exits. A socket keeps the namespace it was created
//! in, so everything after that runs as ordinary async code on the agent's runtime, and no
//! tokio worker ever changes namespace (see `netns`).

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use ipnet::Ipv4Net;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{AsyncSocket, TokioSocket};
use nix::sys::socket::{AddressFamily as SockFamily, SockFlag, SockType, socket};
use rtnetlink::{
    Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, MulticastGroup, RouteMessageBuilder,
};
use topo_schema::names::IFACE_PREFIXES;
use topo_schema::slice::AttachmentEntry;
use tracing::{debug, warn};

use super::arp::assigned_mac;
use super::netns::{
    ContainerNs, NsError, open_container_netns, run_in_container, run_in_container_pinned,
};
use super::{
    AttachmentDrift, GatewayDrift, HostInterface, Interfaces, LinkChangeKind, LinkEvent,
    NamespaceChange, ObservedAttachment, ObservedGateway, ObservedPeer,
};

#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    #[error("failed to open a netlink socket")]
    Socket(#[source] io::Error),
    #[error("failed to enter the network namespace of process {pid}")]
    Namespace {
        pid: u32,
        #[source]
        source: NsError,
    },
    #[error("failed to {what}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("failed to find interface {name}")]
    NotFound { name: String },
    #[error("refused to touch interface {name}: topo does not own it")]
    NotOwned { name: String },
    #[error("failed to turn TX checksum offload off on {name}")]
    Ethtool {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to send a gratuitous ARP from {name}")]
    Garp {
        name: String,
        #[source]
        source: io::Error,
    },
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> InterfaceError {
    let what = what.into();
    move |source| InterfaceError::Netlink { what, source }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// How long `ensure_gateway` waits for ovs-vswitchd to create a bridge's internal interface.
const GATEWAY_WAIT: Duration = Duration::from_secs(10);

/// One link as netlink reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: String,
    pub mtu: u32,
    pub up: bool,
    /// IFLA_LINK: for a veth, the peer's ifindex (in the peer's namespace).
    pub peer_index: Option<u32>,
    pub mac: Vec<u8>,
}

pub fn parse_link(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        up: m.header.flags.contains(LinkFlags::Up),
        ..Default::default()
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::Link(i) => l.peer_index = Some(*i),
            LinkAttribute::Address(mac) => l.mac = mac.clone(),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        l.kind = k.to_string();
                    }
                }
            }
            _ => {}
        }
    }
    l
}

fn address_of(m: &AddressMessage) -> Option<Ipv4Net> {
    let mut addr = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(IpAddr::V4(ip)) => addr = Some(*ip),
            AddressAttribute::Address(IpAddr::V4(ip)) if addr.is_none() => addr = Some(*ip),
            _ => {}
        }
    }
    Ipv4Net::new(addr?, m.header.prefix_len).ok()
}

/// The gateway of a default route of the main table through `oif`, if `r` is one.
fn default_gateway_of(r: &RouteMessage, oif: u32) -> Option<Ipv4Addr> {
    if r.header.address_family != AddressFamily::Inet || r.header.destination_prefix_length != 0 {
        return None;
    }
    let mut table = u32::from(r.header.table);
    let mut gw = None;
    let mut out = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
            RouteAttribute::Oif(i) => out = Some(*i),
            _ => {}
        }
    }
    (table == u32::from(libc::RT_TABLE_MAIN) && out == Some(oif))
        .then_some(gw)
        .flatten()
}

/// A link by name; None when absent.
async fn get_link(h: &Handle, name: &str) -> Result<Option<Link>, InterfaceError> {
    let mut s = h.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(Some(m)) => Ok(Some(parse_link(&m))),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(InterfaceError::Netlink {
            what: format!("get link {name}"),
            source: e,
        }),
    }
}

async fn addresses(
    h: &Handle,
    index: u32,
) -> Result<Vec<(Ipv4Net, AddressMessage)>, InterfaceError> {
    let msgs: Vec<AddressMessage> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(nl(format!("list addresses of link {index}")))?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| address_of(&m).map(|a| (a, m)))
        .collect())
}

async fn default_routes(
    h: &Handle,
    oif: u32,
) -> Result<Vec<(Ipv4Addr, RouteMessage)>, InterfaceError> {
    let msgs: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl("list routes"))?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| default_gateway_of(&m, oif).map(|g| (g, m)))
        .collect())
}

// ---------------------------------------------------------------- ethtool and ARP (raw)

const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

fn ifreq_for(name: &str, data: *mut EthtoolValue) -> io::Result<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = data.cast();
    Ok(ifr)
}

/// SIOCETHTOOL with an `ethtool_value` on `name`, through `sock` (whose namespace decides
/// which interface of that name is meant).
fn ethtool_value(sock: &OwnedFd, name: &str, cmd: u32, data: u32) -> io::Result<u32> {
    let mut v = EthtoolValue { cmd, data };
    let mut ifr = ifreq_for(name, &mut v)?;
    // SAFETY: SIOCETHTOOL reads `ifr` and the ethtool_value it points to, both alive for the
    // call; the kernel writes back at most sizeof(ethtool_value).
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL as _, &mut ifr) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v.data)
}

/// TX checksum offload of `name`.
fn tx_checksum(sock: &OwnedFd, name: &str) -> io::Result<bool> {
    ethtool_value(sock, name, ETHTOOL_GTXCSUM, 0).map(|d| d != 0)
}

fn set_tx_checksum_off(sock: &OwnedFd, name: &str) -> io::Result<()> {
    ethtool_value(sock, name, ETHTOOL_STXCSUM, 0).map(|_| ())
}

/// An ARP announcement (RFC 5227: a request whose sender and target address are both `ip`).
pub fn arp_announcement(mac: &[u8], ip: Ipv4Addr) -> Option<[u8; 28]> {
    let mac: [u8; 6] = mac.try_into().ok()?;
    let mut p = [0u8; 28];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    p[8..14].copy_from_slice(&mac);
    p[14..18].copy_from_slice(&ip.octets());
    // target hardware address stays zero
    p[24..28].copy_from_slice(&ip.octets());
    Some(p)
}

/// Broadcasts `frame` as an ARP payload out of `ifindex` through the AF_PACKET socket `sock`.
fn send_arp(sock: &OwnedFd, ifindex: u32, frame: &[u8]) -> io::Result<()> {
    // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
    sll.sll_ifindex = i32::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ifindex"))?;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: `frame` and `sll` are valid for the lengths given; a SOCK_DGRAM packet socket
    // builds the Ethernet header from sll_addr/sll_protocol.
    let r = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// ---------------------------------------------------------------- namespaces

/// Sockets opened inside a container's namespace.
struct NsSockets {
    handle: Handle,
    inet: OwnedFd,
    packet: OwnedFd,
    conn: tokio::task::JoinHandle<()>,
}

impl Drop for NsSockets {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

async fn enter(ns: &ContainerNs) -> Result<NsSockets, InterfaceError> {
    let rt = tokio::runtime::Handle::current();
    let pid = ns.pid;
    let opened = run_in_container(
        ns,
        move || -> io::Result<(TokioSocket, OwnedFd, OwnedFd)> {
            // The netlink socket registers with the agent's reactor from this thread.
            let _rt = rt.enter();
            let nl = TokioSocket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
            let inet = socket(
                SockFamily::Inet,
                SockType::Datagram,
                SockFlag::SOCK_CLOEXEC,
                None,
            )?;
            let packet = socket(
                SockFamily::Packet,
                SockType::Datagram,
                SockFlag::SOCK_CLOEXEC,
                None,
            )?;
            Ok((nl, inet, packet))
        },
    )
    .await
    .map_err(|source| InterfaceError::Namespace { pid, source })?
    .map_err(InterfaceError::Socket)?;
    let (nl_sock, inet, packet) = opened;
    let (conn, handle, _) = rtnetlink::from_socket(nl_sock);
    let conn = tokio::spawn(conn);
    Ok(NsSockets {
        handle,
        inet,
        packet,
        conn,
    })
}

fn owned_name(name: &str) -> bool {
    IFACE_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The interfaces backend of the node's namespace.
pub struct NetlinkInterfaces {
    handle: Handle,
    /// An AF_INET socket of the node's namespace, for ethtool ioctls on the gateway.
    inet: OwnedFd,
    _conn: tokio::task::JoinHandle<()>,
}

impl Drop for NetlinkInterfaces {
    fn drop(&mut self) {
        self._conn.abort();
    }
}

/// What observe found, with what `ensure` needs to act.
struct Found {
    obs: ObservedAttachment,
    host: Option<Link>,
    peer: Option<Link>,
    peer_addrs: Vec<(Ipv4Net, AddressMessage)>,
    peer_routes: Vec<(Ipv4Addr, RouteMessage)>,
}

impl NetlinkInterfaces {
    /// Opens the node namespace's netlink connection (call inside the tokio runtime).
    pub fn new() -> Result<Self, InterfaceError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(InterfaceError::Socket)?;
        let inet = socket(
            SockFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| InterfaceError::Socket(e.into()))?;
        Ok(NetlinkInterfaces {
            handle,
            inet,
            _conn: tokio::spawn(conn),
        })
    }

    async fn find(&self, ns: &NsSockets, att: &AttachmentEntry) -> Result<Found, InterfaceError> {
        let host = get_link(&self.handle, &att.host_veth).await?;
        let peer = get_link(&ns.handle, &att.interface).await?;
        let mut obs = ObservedAttachment::default();
        let mut peer_addrs = Vec::new();
        let mut peer_routes = Vec::new();
        if let Some(h) = &host {
            obs.host_exists = true;
            obs.host_is_veth = h.kind == "veth";
            obs.host_mtu = h.mtu;
            obs.host_up = h.up;
        }
        if let Some(p) = &peer {
            peer_addrs = addresses(&ns.handle, p.index).await?;
            peer_routes = default_routes(&ns.handle, p.index).await?;
            let paired = match &host {
                Some(h) => {
                    h.kind == "veth"
                        && p.peer_index == Some(h.index)
                        && h.peer_index == Some(p.index)
                }
                None => false,
            };
            obs.peer = Some(ObservedPeer {
                name: p.name.clone(),
                is_veth: p.kind == "veth",
                paired_with_host: paired,
                mtu: p.mtu,
                up: p.up,
                addresses: peer_addrs.iter().map(|(a, _)| *a).collect(),
                default_gateway: peer_routes.first().map(|(g, _)| *g),
                tx_checksum: tx_checksum(&ns.inet, &p.name).ok(),
            });
        }
        Ok(Found {
            obs,
            host,
            peer,
            peer_addrs,
            peer_routes,
        })
    }

    async fn create_pair(
        &self,
        container: &ContainerNs,
        att: &AttachmentEntry,
    ) -> Result<(), InterfaceError> {
        let pid = container.pid;
        // Confirmed like every entry (see `netns`); the file then names the namespace itself.
        let (ns, _pidfd): (File, _) = open_container_netns(container)
            .map_err(|source| InterfaceError::Namespace { pid, source })?;
        // The peer is born in the container's namespace under its final name: no move, no
        // rename, so nothing in the container ever sees a temporary interface. It cannot be
        // created up: the kernel opens it before the pair is joined (ENOTCONN); ensure brings
        // it up next.
        // Its MAC is the one topo gives the address (`arp`): the agents tell topo's own
        // interfaces from squatters by it, and it stays when the container restarts.
        let peer = LinkUnspec::new_with_name(&att.interface)
            .address(assigned_mac(att.address.addr()).0.to_vec())
            .mtu(att.mtu)
            .setns_by_fd(ns.as_raw_fd())
            .build();
        let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(att.host_veth.clone())
            .mtu(att.mtu)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl(format!(
                "create veth pair {} / {} (pid {pid})",
                att.host_veth, att.interface
            )))?;
        drop(ns);
        Ok(())
    }

    /// `ensure_in` for a pair topo owns (its host end carries topo's `tv-` prefix): the one
    /// ownership check both ensures share.
    async fn ensure_owned(
        &self,
        container: &ContainerNs,
        att: &AttachmentEntry,
        address: Option<Ipv4Net>,
    ) -> Result<Vec<AttachmentDrift>, InterfaceError> {
        if !att.host_veth.starts_with("tv-") {
            return Err(InterfaceError::NotOwned {
                name: att.host_veth.clone(),
            });
        }
        let ns = enter(container).await?;
        self.ensure_in(container, &ns, att, address).await
    }

    async fn ensure_in(
        &self,
        container: &ContainerNs,
        ns: &NsSockets,
        att: &AttachmentEntry,
        address: Option<Ipv4Net>,
    ) -> Result<Vec<AttachmentDrift>, InterfaceError> {
        let mut f = self.find(ns, att).await?;
        let diffs = match address {
            Some(_) => f.obs.differences(att),
            None => f.obs.differences_unaddressed(att),
        };
        if diffs.is_empty() {
            return Ok(diffs);
        }
        let paired = f
            .obs
            .peer
            .as_ref()
            .is_some_and(|p| p.is_veth && p.paired_with_host);
        let mut announce = false;
        if !paired {
            self.replace_pair(container, ns, att, &f).await?;
            f = self.find(ns, att).await?;
            announce = true;
        }
        let (Some(host), Some(peer)) = (f.host.clone(), f.peer.clone()) else {
            return Err(InterfaceError::NotFound {
                name: format!("{} / {}", att.host_veth, att.interface),
            });
        };
        set_mtu_up(&self.handle, &host, att.mtu).await?;
        set_mtu_up(&ns.handle, &peer, att.mtu).await?;
        announce |= ensure_address(&ns.handle, &peer, address, &f.peer_addrs).await?;
        let gateway = address.and(att.default_gateway);
        ensure_default_route(&ns.handle, &peer, gateway, &f.peer_routes).await?;
        if att.tx_checksum_off && tx_checksum(&ns.inet, &peer.name).unwrap_or(true) {
            set_tx_checksum_off(&ns.inet, &peer.name).map_err(|source| {
                InterfaceError::Ethtool {
                    name: peer.name.clone(),
                    source,
                }
            })?;
        }
        if announce
            && let Some(a) = address
            && let Some(frame) = arp_announcement(&peer.mac, a.addr())
        {
            send_arp(&ns.packet, peer.index, &frame).map_err(|source| InterfaceError::Garp {
                name: peer.name.clone(),
                source,
            })?;
        }
        Ok(diffs)
    }

    /// Whatever half-pair exists is stale (an old container's, or a leftover): removes both
    /// ends we own and makes the pair anew.
    async fn replace_pair(
        &self,
        container: &ContainerNs,
        ns: &NsSockets,
        att: &AttachmentEntry,
        f: &Found,
    ) -> Result<(), InterfaceError> {
        if let Some(h) = &f.host {
            self.handle
                .link()
                .del(h.index)
                .execute()
                .await
                .or_else(ignore_enodev)
                .map_err(nl(format!("delete stale {}", h.name)))?;
        }
        if let Some(p) = &f.peer {
            ns.handle
                .link()
                .del(p.index)
                .execute()
                .await
                .or_else(ignore_enodev)
                .map_err(nl(format!("delete stale {} in the container", p.name)))?;
        }
        self.create_pair(container, att).await
    }

    async fn gateway_link(
        &self,
        bridge: &str,
    ) -> Result<Option<(Link, Vec<(Ipv4Net, AddressMessage)>)>, InterfaceError> {
        let Some(l) = get_link(&self.handle, bridge).await? else {
            return Ok(None);
        };
        let addrs = addresses(&self.handle, l.index).await?;
        Ok(Some((l, addrs)))
    }
}

fn ignore_enodev(e: rtnetlink::Error) -> Result<(), rtnetlink::Error> {
    if errno(&e) == Some(libc::ENODEV) {
        Ok(())
    } else {
        Err(e)
    }
}

fn ignore_enoent(e: rtnetlink::Error) -> Result<(), rtnetlink::Error> {
    if matches!(
        errno(&e),
        Some(libc::EADDRNOTAVAIL) | Some(libc::ENOENT) | Some(libc::ENODEV)
    ) {
        Ok(())
    } else {
        Err(e)
    }
}

fn ignore_esrch(e: rtnetlink::Error) -> Result<(), rtnetlink::Error> {
    if matches!(errno(&e), Some(libc::ESRCH) | Some(libc::ENOENT)) {
        Ok(())
    } else {
        Err(e)
    }
}

#[async_trait]
impl Interfaces for NetlinkInterfaces {
    async fn observe_attachment(
        &self,
        container: &ContainerNs,
        att: &AttachmentEntry,
    ) -> Result<ObservedAttachment, InterfaceError> {
        let ns = enter(container).await?;
        Ok(self.find(&ns, att).await?.obs)
    }

    async fn ensure_attachment(
        &self,
        container: &ContainerNs,
        att: &AttachmentEntry,
    ) -> Result<Vec<AttachmentDrift>, InterfaceError> {
        self.ensure_owned(container, att, Some(att.address)).await
    }

    async fn ensure_attachment_unaddressed(
        &self,
        container: &ContainerNs,
        att: &AttachmentEntry,
    ) -> Result<Vec<AttachmentDrift>, InterfaceError> {
        self.ensure_owned(container, att, None).await
    }

    async fn announce(
        &self,
        container: &ContainerNs,
        att: &AttachmentEntry,
    ) -> Result<(), InterfaceError> {
        let ns = enter(container).await?;
        let peer = get_link(&ns.handle, &att.interface).await?.ok_or_else(|| {
            InterfaceError::NotFound {
                name: att.interface.clone(),
            }
        })?;
        let frame = arp_announcement(&peer.mac, att.address.addr()).ok_or_else(|| {
            InterfaceError::NotFound {
                name: format!("the MAC address of {}", att.interface),
            }
        })?;
        send_arp(&ns.packet, peer.index, &frame).map_err(|source| InterfaceError::Garp {
            name: peer.name.clone(),
            source,
        })
    }

    async fn list_owned(&self) -> Result<Vec<HostInterface>, InterfaceError> {
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("list links"))?;
        Ok(links
            .iter()
            .map(parse_link)
            .filter(|l| owned_name(&l.name))
            .map(|l| HostInterface {
                name: l.name,
                index: l.index,
                kind: l.kind,
            })
            .collect())
    }

    async fn remove_host_veth(&self, name: &str) -> Result<(), InterfaceError> {
        if !name.starts_with("tv-") {
            return Err(InterfaceError::NotOwned {
                name: name.to_string(),
            });
        }
        let Some(l) = get_link(&self.handle, name).await? else {
            return Ok(());
        };
        self.handle
            .link()
            .del(l.index)
            .execute()
            .await
            .or_else(ignore_enodev)
            .map_err(nl(format!("delete {name}")))
    }

    async fn observe_gateway(&self, bridge: &str) -> Result<ObservedGateway, InterfaceError> {
        Ok(match self.gateway_link(bridge).await? {
            None => ObservedGateway::default(),
            Some((l, addrs)) => ObservedGateway {
                exists: true,
                mtu: l.mtu,
                up: l.up,
                addresses: addrs.into_iter().map(|(a, _)| a).collect(),
                tx_checksum: tx_checksum(&self.inet, bridge).ok(),
            },
        })
    }

    async fn ensure_gateway(
        &self,
        bridge: &str,
        gateway: Ipv4Net,
        mtu: u32,
    ) -> Result<Vec<GatewayDrift>, InterfaceError> {
        if !bridge.starts_with("tb-") {
            return Err(InterfaceError::NotOwned {
                name: bridge.to_string(),
            });
        }
        // ovs-vswitchd creates the internal interface shortly after the bridge is committed.
        let deadline = tokio::time::Instant::now() + GATEWAY_WAIT;
        let (link, addrs) = loop {
            if let Some(found) = self.gateway_link(bridge).await? {
                break found;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(InterfaceError::NotFound {
                    name: bridge.to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let obs = ObservedGateway {
            exists: true,
            mtu: link.mtu,
            up: link.up,
            addresses: addrs.iter().map(|(a, _)| *a).collect(),
            tx_checksum: tx_checksum(&self.inet, bridge).ok(),
        };
        let diffs = obs.differences(gateway, mtu);
        if diffs.is_empty() {
            return Ok(diffs);
        }
        if link.mtu != mtu || !link.up {
            let m = LinkUnspec::new_with_index(link.index).mtu(mtu).up().build();
            self.handle
                .link()
                .set(m)
                .execute()
                .await
                .map_err(nl(format!("set mtu/up on {bridge}")))?;
        }
        // topo owns the interface: another address is a previous gateway of ours.
        for (a, m) in &addrs {
            if *a != gateway {
                self.handle
                    .address()
                    .del(m.clone())
                    .execute()
                    .await
                    .or_else(ignore_enoent)
                    .map_err(nl(format!("delete address {a} of {bridge}")))?;
            }
        }
        if !obs.addresses.contains(&gateway) {
            self.handle
                .address()
                .add(link.index, IpAddr::V4(gateway.addr()), gateway.prefix_len())
                .execute()
                .await
                .map_err(nl(format!("add address {gateway} to {bridge}")))?;
        }
        if obs.tx_checksum == Some(true) {
            set_tx_checksum_off(&self.inet, bridge).map_err(|source| InterfaceError::Ethtool {
                name: bridge.to_string(),
                source,
            })?;
        }
        Ok(diffs)
    }

    fn watch(&self) -> BoxStream<'static, LinkEvent> {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            let mut first = true;
            loop {
                if !first && tx.send(LinkEvent::Resync).await.is_err() {
                    return;
                }
                first = false;
                let (conn, _h, mut messages) = match rtnetlink::new_multicast_connection(&[
                    MulticastGroup::Link,
                    MulticastGroup::Ipv4Ifaddr,
                ]) {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(error = %e, "failed to open the netlink notification socket; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let conn = tokio::spawn(conn);
                loop {
                    tokio::select! {
                        _ = tx.closed() => {
                            conn.abort();
                            return;
                        }
                        m = messages.next() => {
                            let Some((msg, _)) = m else { break };
                            let NetlinkPayload::InnerMessage(inner) = msg.payload else { continue };
                            if let Some(ev) = link_event(&inner)
                                && tx.send(ev).await.is_err()
                            {
                                conn.abort();
                                return;
                            }
                        }
                    }
                }
                conn.abort();
                debug!("netlink notification socket closed; reopening");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
    }

    async fn watch_container(
        &self,
        container: &ContainerNs,
    ) -> Result<BoxStream<'static, NamespaceChange>, InterfaceError> {
        let pid = container.pid;
        let rt = tokio::runtime::Handle::current();
        let (sock, pidfd) = run_in_container_pinned(container, move || {
            // Registered with the agent's reactor, bound to the namespace of this thread.
            let _rt = rt.enter();
            let mut sock = TokioSocket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
            sock.socket_mut()
                .bind(&netlink_sys::SocketAddr::new(0, CONTAINER_GROUPS))?;
            Ok::<_, io::Error>(sock)
        })
        .await
        .map_err(|source| InterfaceError::Namespace { pid, source })?;
        let sock = sock.map_err(InterfaceError::Socket)?;
        let (conn, _handle, mut messages) = rtnetlink::from_socket(sock);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let conn = tokio::spawn(conn);
            let exited = pidfd.wait_exit();
            tokio::pin!(exited);
            loop {
                tokio::select! {
                    _ = tx.closed() => break,
                    _ = &mut exited => break,
                    m = messages.next() => {
                        let Some((msg, _)) = m else { break };
                        let NetlinkPayload::InnerMessage(inner) = msg.payload else { continue };
                        if let Some(ch) = namespace_change(&inner)
                            && tx.send(ch).await.is_err()
                        {
                            break;
                        }
                    }
                }
            }
            // Closing the socket lets a dead container's namespace go.
            conn.abort();
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }
}

/// The rtnetlink groups a container's namespace is watched on (RTMGRP_* bits).
const CONTAINER_GROUPS: u32 =
    (libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV4_ROUTE) as u32;

/// What a notification from a container's namespace is about.
pub fn namespace_change(m: &RouteNetlinkMessage) -> Option<NamespaceChange> {
    Some(match m {
        RouteNetlinkMessage::NewLink(_) | RouteNetlinkMessage::DelLink(_) => NamespaceChange::Link,
        RouteNetlinkMessage::NewAddress(_) | RouteNetlinkMessage::DelAddress(_) => {
            NamespaceChange::Address
        }
        RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_) => {
            NamespaceChange::Route
        }
        _ => return None,
    })
}

/// The event of a notification about a topo-owned interface.
pub fn link_event(m: &RouteNetlinkMessage) -> Option<LinkEvent> {
    let (name, kind) = match m {
        RouteNetlinkMessage::NewLink(l) => (parse_link(l).name, LinkChangeKind::Changed),
        RouteNetlinkMessage::DelLink(l) => (parse_link(l).name, LinkChangeKind::Removed),
        RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a) => {
            let label = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Label(l) => Some(l.clone()),
                _ => None,
            })?;
            let kind = if matches!(m, RouteNetlinkMessage::NewAddress(_)) {
                LinkChangeKind::AddressAdded
            } else {
                LinkChangeKind::AddressRemoved
            };
            (label, kind)
        }
        _ => return None,
    };
    owned_name(&name).then_some(LinkEvent::Changed { name, kind })
}

/// MTU and link up on one end of a pair, if either differs.
async fn set_mtu_up(handle: &Handle, link: &Link, mtu: u32) -> Result<(), InterfaceError> {
    if link.mtu == mtu && link.up {
        return Ok(());
    }
    let m = LinkUnspec::new_with_index(link.index).mtu(mtu).up().build();
    handle
        .link()
        .set(m)
        .execute()
        .await
        .map_err(nl(format!("set mtu/up on {}", link.name)))
}

/// `address` as the peer's only address (None: no address); true when it had to be added
/// (peers must hear of it).
async fn ensure_address(
    handle: &Handle,
    peer: &Link,
    address: Option<Ipv4Net>,
    current: &[(Ipv4Net, AddressMessage)],
) -> Result<bool, InterfaceError> {
    for (a, m) in current {
        if Some(*a) != address {
            handle
                .address()
                .del(m.clone())
                .execute()
                .await
                .or_else(ignore_enoent)
                .map_err(nl(format!("delete address {a} of {}", peer.name)))?;
        }
    }
    let Some(address) = address else {
        return Ok(false);
    };
    if current.iter().any(|(a, _)| *a == address) {
        return Ok(false);
    }
    handle
        .address()
        .add(peer.index, IpAddr::V4(address.addr()), address.prefix_len())
        .execute()
        .await
        .map_err(nl(format!("add address {address} to {}", peer.name)))?;
    Ok(true)
}

/// The peer's default route via `gateway` (or none), replacing whatever it had.
async fn ensure_default_route(
    handle: &Handle,
    peer: &Link,
    gateway: Option<Ipv4Addr>,
    current: &[(Ipv4Addr, RouteMessage)],
) -> Result<(), InterfaceError> {
    let have: BTreeSet<Ipv4Addr> = current.iter().map(|(g, _)| *g).collect();
    let want: BTreeSet<Ipv4Addr> = gateway.into_iter().collect();
    if have == want {
        return Ok(());
    }
    for (_, r) in current {
        handle
            .route()
            .del(r.clone())
            .execute()
            .await
            .or_else(ignore_esrch)
            .map_err(nl(format!("delete default route of {}", peer.name)))?;
    }
    if let Some(g) = gateway {
        let r = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(g)
            .output_interface(peer.index)
            .build();
        handle
            .route()
            .add(r)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("add default route via {g} on {}", peer.name)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_layout() {
        let p = arp_announcement(&[2, 0, 0, 0, 0, 1], Ipv4Addr::new(10, 2, 1, 5)).unwrap();
        assert_eq!(&p[0..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&p[8..14], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&p[14..18], &[10, 2, 1, 5]);
        assert_eq!(&p[18..24], &[0; 6]);
        assert_eq!(&p[24..28], &[10, 2, 1, 5]);
        assert!(arp_announcement(&[1, 2], Ipv4Addr::LOCALHOST).is_none());
    }

    #[test]
    fn link_events_only_for_owned_names() {
        let mut l = LinkMessage::default();
        l.attributes.push(LinkAttribute::IfName("tv-web".into()));
        assert_eq!(
            link_event(&RouteNetlinkMessage::DelLink(l.clone())),
            Some(LinkEvent::Changed {
                name: "tv-web".into(),
                kind: LinkChangeKind::Removed
            })
        );
        l.attributes = vec![LinkAttribute::IfName("eth0".into())];
        assert_eq!(link_event(&RouteNetlinkMessage::NewLink(l)), None);
        let mut a = AddressMessage::default();
        a.attributes.push(AddressAttribute::Label("tb-net".into()));
        assert_eq!(
            link_event(&RouteNetlinkMessage::DelAddress(a)),
            Some(LinkEvent::Changed {
                name: "tb-net".into(),
                kind: LinkChangeKind::AddressRemoved
            })
        );
    }

    #[test]
    fn default_route_detection() {
        let mut r = RouteMessage::default();
        r.header.address_family = AddressFamily::Inet;
        r.header.table = libc::RT_TABLE_MAIN;
        r.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(
                10, 2, 1, 1,
            ))));
        r.attributes.push(RouteAttribute::Oif(7));
        assert_eq!(default_gateway_of(&r, 7), Some(Ipv4Addr::new(10, 2, 1, 1)));
        assert_eq!(default_gateway_of(&r, 8), None);
        r.header.destination_prefix_length = 16;
        assert_eq!(default_gateway_of(&r, 7), None);
    }
}
