//! The agent's host backends: one small trait per thing a node holds (Docker containers,
//! interfaces, Open vSwitch, nftables NAT, the sockets on its host ports) or asks (who
//! answers for an address on a bridge: ARP probes), a real
//! implementation of each, and a recording fake of each for tests (`fake`, compiled only for
//! tests and the `testing` feature).
//!
//! Every trait keeps *observing* apart from *changing*: a reconcile with nothing to do calls
//! only the observe functions and so makes no write (the host ports are only observed: topo
//! never touches a socket it does not own). Every change function is idempotent
//! (calling it twice with the same input leaves the host as calling it once) and touches
//! nothing topo does not own (Docker labels, OVSDB `external_ids`, `tv-`/`tb-`/`tg-` names,
//! the nftables table `topo`).
//!
//! Each trait also offers a `watch()` stream of out-of-band changes (Docker events, netlink
//! notifications, OVSDB monitor updates). Streams reconnect by themselves; after a reconnect
//! (or anything else that may have lost notifications) they yield a `Resync` item, on which
//! the runtime should reconcile everything.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use ipnet::Ipv4Net;
use topo_schema::kinds::{Datapath, Protocol};
use topo_schema::slice::{AttachmentEntry, ContainerEntry, PublishedPort};

pub mod arp;
pub mod docker;
mod docker_exec;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod nat;
pub mod netlink;
pub mod netns;
pub mod nft_events;
pub mod ovs;
pub mod ovsdb_rpc;
pub mod sockets;

pub use arp::{ArpProber, ProbeError};
pub use docker::{ContainerError, DockerContainers};
pub use nat::{NatError, NftNat};
pub use netlink::{InterfaceError, NetlinkInterfaces};
pub use netns::{ContainerNs, NsError};
pub use nft_events::{NatEvent, NftObject};
pub use ovs::{OvsError, OvsdbSwitch};
pub use sockets::{HostPortsError, NodeSockets};
pub use topo_schema::exec::TerminalSize;

// ====================================================================== Containers

/// A Docker container carrying topo's labels for this node, as Docker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedContainer {
    /// Docker's container id.
    pub id: String,
    /// Docker name without the leading '/': `topo-<name>`.
    pub docker_name: String,
    /// The Container object's name (from the `topo.dev/object` label `container/<name>`).
    pub name: String,
    /// `topo.dev/uid` label.
    pub uid: String,
    /// `topo.dev/config-hash` label: compare with `ContainerEntry::config_hash()`.
    pub config_hash: String,
    pub image: String,
    pub running: bool,
    /// The container's init process as the agent sees it (only while running).
    pub pid: Option<u32>,
    /// Docker's own restart count (always 0 with restart policy "no": the agent counts).
    pub restart_count: u32,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i64>,
    /// Docker's state word (created, running, exited, dead, ...).
    pub status: String,
}

/// One message of an image pull as the engine reports it (per layer, or about the image).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PullProgress {
    /// The layer the message is about (None: the image as a whole).
    pub layer: Option<String>,
    /// The engine's word: "Pulling fs layer", "Downloading", "Pull complete", ...
    pub status: String,
    /// Bytes done and in all, while downloading or extracting.
    pub current: Option<u64>,
    pub total: Option<u64>,
}

/// What happened to a container outside the agent's own calls (or because of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerEvent {
    /// Notifications may have been lost (the event stream reconnected): reconcile everything.
    Resync,
    Changed {
        /// The Container object's name.
        name: String,
        id: String,
        /// Docker's action: start, die, destroy, kill, oom, stop, ...
        action: String,
    },
}

#[async_trait]
pub trait Containers: Send + Sync {
    /// Every container labelled managed=true and node=<this node>, running or not.
    async fn list(&self) -> Result<Vec<ObservedContainer>, ContainerError>;
    /// One container by its Docker name, if it exists and is ours.
    async fn get(&self, docker_name: &str) -> Result<Option<ObservedContainer>, ContainerError>;
    /// Whether the engine has `image` locally.
    async fn image_present(&self, image: &str) -> Result<bool, ContainerError>;
    /// Pulls `image`: the engine's progress messages, then the end of the stream on success,
    /// or an `ImagePullFailed` item carrying the registry's error. Dropping the stream
    /// abandons the pull (the engine cancels it when its client goes). Deadlines are the
    /// caller's (`pulls.rs`): a stalled registry just sends nothing.
    fn pull(&self, image: &str) -> BoxStream<'static, Result<PullProgress, ContainerError>>;
    /// Creates (networking disabled, ownership labels, restart policy "no") and starts the
    /// container of `entry`; returns its id. A container of that name owned by another node
    /// is `ContainerError::NameOwnedByOtherNode` (retry later); one not owned by topo is
    /// `ContainerError::NameTaken`.
    async fn create_and_start(&self, entry: &ContainerEntry) -> Result<String, ContainerError>;
    /// Starts a stopped container of ours (no-op when running).
    async fn start(&self, id: &str) -> Result<(), ContainerError>;
    /// Removes a container of ours, forcefully; absent is fine. A container without our
    /// labels is `ContainerError::NotOwned`.
    async fn remove(&self, id: &str) -> Result<(), ContainerError>;
    /// Docker events of our containers (die, destroy, start, ...).
    fn watch(&self) -> BoxStream<'static, ContainerEvent>;
    /// The log of one of our containers by Docker id, stdout and stderr interleaved as the
    /// engine keeps them (`topoctl logs`). Backends without logs (the fakes) say so.
    fn logs(
        &self,
        id: &str,
        request: &LogRequest,
    ) -> BoxStream<'static, Result<bytes::Bytes, ContainerError>> {
        let _ = request;
        let id = id.to_string();
        Box::pin(futures::stream::once(async move {
            Err(ContainerError::NoLogs { id })
        }))
    }
    /// Runs a command in one of our containers by Docker id (`topoctl exec`), attached.
    /// Backends without exec (the fakes) say so.
    async fn exec(&self, id: &str, request: &ExecRequest) -> Result<ExecSession, ContainerError> {
        let _ = request;
        Err(ContainerError::NoExec { id: id.to_string() })
    }
    /// Resizes the terminal of a running exec.
    async fn exec_resize(&self, exec_id: &str, size: TerminalSize) -> Result<(), ContainerError> {
        let _ = size;
        Err(ContainerError::NoExec {
            id: exec_id.to_string(),
        })
    }
    /// The exit code of an exec whose output has ended (None while it still runs).
    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>, ContainerError> {
        Err(ContainerError::NoExec {
            id: exec_id.to_string(),
        })
    }
}

/// What `topoctl exec` runs in a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub command: Vec<String>,
    /// Attach the command's standard input.
    pub stdin: bool,
    /// Run it on a terminal of this size (stdout and stderr are then one stream).
    pub tty: Option<TerminalSize>,
}

/// A chunk of an exec'd command's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecOutput {
    Stdout(bytes::Bytes),
    Stderr(bytes::Bytes),
}

/// A command started in a container, attached: its output until it exits, its standard
/// input (shut down for end of file), and the engine's id of the exec for resizes and the
/// exit code.
pub struct ExecSession {
    pub exec_id: String,
    pub output: BoxStream<'static, Result<ExecOutput, ContainerError>>,
    pub input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
}

/// Which part of a container's log to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogRequest {
    /// Keep the stream open and send new lines as they come.
    pub follow: bool,
    /// Only the last N lines (all when None).
    pub tail: Option<u64>,
    /// Only lines written at or after this time (UNIX seconds).
    pub since: Option<i64>,
}

// ====================================================================== Interfaces

/// The namespace end of an attachment as seen inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedPeer {
    pub name: String,
    pub is_veth: bool,
    /// The peer's `IFLA_LINK` is the host veth's ifindex (it is *our* pair).
    pub paired_with_host: bool,
    pub mtu: u32,
    pub up: bool,
    pub addresses: Vec<Ipv4Net>,
    /// The gateway of the main table's default route leaving through this interface.
    pub default_gateway: Option<Ipv4Addr>,
    /// TX checksum offload state; None when it could not be read.
    pub tx_checksum: Option<bool>,
}

/// An attachment on the host: the host veth and its peer in the container.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedAttachment {
    /// Host end exists (under `host_veth`).
    pub host_exists: bool,
    pub host_is_veth: bool,
    pub host_mtu: u32,
    pub host_up: bool,
    /// None when no interface named `interface` exists in the container.
    pub peer: Option<ObservedPeer>,
}

impl ObservedAttachment {
    /// Whether `ensure_attachment` will (re)create the veth pair: the host end is missing, is
    /// not a veth, or its peer is not in this container. After that the pair's OVS port must
    /// be re-added with [`Ovs::reattach_port`] (see there why).
    /// Whether making the attachment as wanted adds its address to the interface (a new
    /// pair, or a peer without it): the address is probed for first (RFC 5227).
    pub fn adds_address(&self, want: &AttachmentEntry) -> bool {
        self.needs_new_pair()
            || !self
                .peer
                .as_ref()
                .is_some_and(|p| p.addresses.contains(&want.address))
    }

    pub fn needs_new_pair(&self) -> bool {
        !self.host_exists
            || !self.host_is_veth
            || !self
                .peer
                .as_ref()
                .is_some_and(|p| p.is_veth && p.paired_with_host)
    }

    /// What differs from `want`; empty when the attachment is as desired. When the pair
    /// itself is wrong, that is the only difference named.
    pub fn differences(&self, want: &AttachmentEntry) -> Vec<AttachmentDrift> {
        use AttachmentDrift as D;
        let veth = || want.host_veth.clone();
        let interface = || want.interface.clone();
        if !self.host_exists {
            return vec![D::HostVethMissing { veth: veth() }];
        }
        if !self.host_is_veth {
            return vec![D::HostNotVeth { veth: veth() }];
        }
        let Some(p) = &self.peer else {
            return vec![D::PeerMissing {
                interface: interface(),
            }];
        };
        if !p.is_veth || !p.paired_with_host {
            return vec![D::NotPaired {
                interface: interface(),
                veth: veth(),
            }];
        }
        let mut d = Vec::new();
        if self.host_mtu != want.mtu {
            d.push(D::HostVethMtu {
                veth: veth(),
                mtu: self.host_mtu,
                want: want.mtu,
            });
        }
        if !self.host_up {
            d.push(D::HostVethDown { veth: veth() });
        }
        if p.mtu != want.mtu {
            d.push(D::PeerMtu {
                interface: interface(),
                mtu: p.mtu,
                want: want.mtu,
            });
        }
        if !p.up {
            d.push(D::PeerDown {
                interface: interface(),
            });
        }
        if !p.addresses.contains(&want.address) {
            d.push(D::AddressMissing {
                interface: interface(),
                address: want.address,
            });
        }
        d.extend(
            p.addresses
                .iter()
                .filter(|a| **a != want.address)
                .map(|a| D::StrayAddress {
                    interface: interface(),
                    address: *a,
                }),
        );
        if p.default_gateway != want.default_gateway {
            d.push(match want.default_gateway {
                Some(gateway) => D::DefaultRouteMissing {
                    interface: interface(),
                    gateway,
                },
                None => D::UnwantedDefaultRoute {
                    interface: interface(),
                },
            });
        }
        if want.tx_checksum_off && p.tx_checksum == Some(true) {
            d.push(D::TxChecksumOn {
                interface: interface(),
            });
        }
        d
    }
}

impl ObservedAttachment {
    /// What differs from `want` with its address withheld (see
    /// [`Interfaces::ensure_attachment_unaddressed`]): the address and a default route are
    /// differences, their absence is not.
    pub fn differences_unaddressed(&self, want: &AttachmentEntry) -> Vec<AttachmentDrift> {
        use AttachmentDrift as D;
        let mut d: Vec<AttachmentDrift> = self
            .differences(want)
            .into_iter()
            .filter(|x| {
                !matches!(
                    x,
                    D::AddressMissing { .. }
                        | D::DefaultRouteMissing { .. }
                        | D::UnwantedDefaultRoute { .. }
                )
            })
            .collect();
        if let Some(p) = &self.peer
            && self.host_exists
            && p.is_veth
            && p.paired_with_host
        {
            if p.addresses.contains(&want.address) {
                d.push(D::StrayAddress {
                    interface: want.interface.clone(),
                    address: want.address,
                });
            }
            if p.default_gateway.is_some() {
                d.push(D::UnwantedDefaultRoute {
                    interface: want.interface.clone(),
                });
            }
        }
        d
    }
}

/// One way an attachment differs from its entry (see [`ObservedAttachment::differences`]).
/// Displayed as users read it in events ("eth0 has no address 10.2.1.5/16").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachmentDrift {
    HostVethMissing {
        veth: String,
    },
    HostNotVeth {
        veth: String,
    },
    PeerMissing {
        interface: String,
    },
    /// The interface in the container is not the peer of the host veth.
    NotPaired {
        interface: String,
        veth: String,
    },
    HostVethMtu {
        veth: String,
        mtu: u32,
        want: u32,
    },
    HostVethDown {
        veth: String,
    },
    PeerMtu {
        interface: String,
        mtu: u32,
        want: u32,
    },
    PeerDown {
        interface: String,
    },
    AddressMissing {
        interface: String,
        address: Ipv4Net,
    },
    StrayAddress {
        interface: String,
        address: Ipv4Net,
    },
    DefaultRouteMissing {
        interface: String,
        gateway: Ipv4Addr,
    },
    UnwantedDefaultRoute {
        interface: String,
    },
    TxChecksumOn {
        interface: String,
    },
}

impl AttachmentDrift {
    /// The variant's name, as events name the drift.
    pub fn kind(&self) -> &'static str {
        use AttachmentDrift as D;
        match self {
            D::HostVethMissing { .. } => "HostVethMissing",
            D::HostNotVeth { .. } => "HostNotVeth",
            D::PeerMissing { .. } => "PeerMissing",
            D::NotPaired { .. } => "NotPaired",
            D::HostVethMtu { .. } => "HostVethMtu",
            D::HostVethDown { .. } => "HostVethDown",
            D::PeerMtu { .. } => "PeerMtu",
            D::PeerDown { .. } => "PeerDown",
            D::AddressMissing { .. } => "AddressMissing",
            D::StrayAddress { .. } => "StrayAddress",
            D::DefaultRouteMissing { .. } => "DefaultRouteMissing",
            D::UnwantedDefaultRoute { .. } => "UnwantedDefaultRoute",
            D::TxChecksumOn { .. } => "TxChecksumOn",
        }
    }
}

impl std::fmt::Display for AttachmentDrift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use AttachmentDrift as D;
        match self {
            D::HostVethMissing { veth } => write!(f, "host veth {veth} is missing"),
            D::HostNotVeth { veth } => write!(f, "host interface {veth} is not a veth"),
            D::PeerMissing { interface } => write!(f, "{interface} is missing in the container"),
            D::NotPaired { interface, veth } => {
                write!(f, "{interface} in the container is not the peer of {veth}")
            }
            D::HostVethMtu { veth, mtu, want } => {
                write!(f, "host veth {veth} has MTU {mtu} (want {want})")
            }
            D::HostVethDown { veth } => write!(f, "host veth {veth} is down"),
            D::PeerMtu {
                interface,
                mtu,
                want,
            } => write!(f, "{interface} has MTU {mtu} (want {want})"),
            D::PeerDown { interface } => write!(f, "{interface} is down"),
            D::AddressMissing { interface, address } => {
                write!(f, "{interface} has no address {address}")
            }
            D::StrayAddress { interface, address } => {
                write!(f, "{interface} has a stray address {address}")
            }
            D::DefaultRouteMissing { interface, gateway } => {
                write!(f, "{interface} has no default route via {gateway}")
            }
            D::UnwantedDefaultRoute { interface } => {
                write!(f, "{interface} has a default route it should not have")
            }
            D::TxChecksumOn { interface } => write!(f, "{interface} has TX checksum offload on"),
        }
    }
}

/// The bridge's internal interface as netlink sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedGateway {
    pub exists: bool,
    pub mtu: u32,
    pub up: bool,
    pub addresses: Vec<Ipv4Net>,
    /// TX checksum offload; ensure turns it off (trap 1 of PLATFORM.md, node side).
    pub tx_checksum: Option<bool>,
}

impl ObservedGateway {
    /// What differs from the bridge's wanted gateway address and MTU; empty when none.
    pub fn differences(&self, gateway: Ipv4Net, mtu: u32) -> Vec<GatewayDrift> {
        if !self.exists {
            return vec![GatewayDrift::Missing];
        }
        let mut d = Vec::new();
        if self.mtu != mtu {
            d.push(GatewayDrift::Mtu {
                mtu: self.mtu,
                want: mtu,
            });
        }
        if !self.up {
            d.push(GatewayDrift::Down);
        }
        if !self.addresses.contains(&gateway) {
            d.push(GatewayDrift::AddressMissing { address: gateway });
        }
        d.extend(
            self.addresses
                .iter()
                .filter(|a| **a != gateway)
                .map(|a| GatewayDrift::StrayAddress { address: *a }),
        );
        if self.tx_checksum == Some(true) {
            d.push(GatewayDrift::TxChecksumOn);
        }
        d
    }
}

/// One way a bridge's internal interface differs from what its bridge entry wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayDrift {
    Missing,
    Mtu { mtu: u32, want: u32 },
    Down,
    AddressMissing { address: Ipv4Net },
    StrayAddress { address: Ipv4Net },
    TxChecksumOn,
}

impl GatewayDrift {
    /// The variant's name, as events name the drift.
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayDrift::Missing => "Missing",
            GatewayDrift::Mtu { .. } => "Mtu",
            GatewayDrift::Down => "Down",
            GatewayDrift::AddressMissing { .. } => "AddressMissing",
            GatewayDrift::StrayAddress { .. } => "StrayAddress",
            GatewayDrift::TxChecksumOn => "TxChecksumOn",
        }
    }
}

impl std::fmt::Display for GatewayDrift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GatewayDrift::Missing => f.write_str("bridge interface is missing"),
            GatewayDrift::Mtu { mtu, want } => write!(f, "MTU is {mtu} (want {want})"),
            GatewayDrift::Down => f.write_str("it is down"),
            GatewayDrift::AddressMissing { address } => {
                write!(f, "gateway address {address} is missing")
            }
            GatewayDrift::StrayAddress { address } => write!(f, "stray address {address}"),
            GatewayDrift::TxChecksumOn => f.write_str("TX checksum offload is on"),
        }
    }
}

/// A topo-owned interface (`tv-`, `tb-`, `tg-` prefix) in the node's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInterface {
    pub name: String,
    pub index: u32,
    /// Link kind (veth, tun, openvswitch, ...), empty when the kernel gave none.
    pub kind: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkChangeKind {
    /// The interface appeared or its flags/MTU/name changed.
    Changed,
    Removed,
    AddressAdded,
    AddressRemoved,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    Resync,
    /// A topo-owned interface in the node's namespace changed.
    Changed {
        name: String,
        kind: LinkChangeKind,
    },
}

/// What changed inside a container's network namespace (its interfaces, addresses or
/// routes): the container's reconcile looks at everything it owns there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceChange {
    Link,
    Address,
    Route,
    /// Notifications were lost (the socket overran): look again.
    Resync,
}

#[async_trait]
pub trait Interfaces: Send + Sync {
    /// Host veth + peer in the container's namespace; reads only.
    async fn observe_attachment(
        &self,
        ns: &ContainerNs,
        att: &AttachmentEntry,
    ) -> Result<ObservedAttachment, InterfaceError>;
    /// Makes the attachment as desired, changing only what differs (a healthy one costs no
    /// write); returns what it changed. Recreates the pair when the host veth
    /// is missing or its peer is not in this container (e.g. after the container restarted).
    /// Sends a gratuitous ARP when it created or re-addressed the interface.
    async fn ensure_attachment(
        &self,
        ns: &ContainerNs,
        att: &AttachmentEntry,
    ) -> Result<Vec<AttachmentDrift>, InterfaceError>;
    /// The attachment as `ensure_attachment` makes it, but with no address on the interface
    /// (any it has is removed) and so no default route: another host answers for the
    /// address. Returns what it changed.
    async fn ensure_attachment_unaddressed(
        &self,
        ns: &ContainerNs,
        att: &AttachmentEntry,
    ) -> Result<Vec<AttachmentDrift>, InterfaceError>;
    /// Broadcasts a gratuitous ARP (an RFC 5227 announcement) for the attachment's address
    /// from its interface in the container, so peers replace the MAC they cached for that
    /// address (after a move or a restart the address keeps its name but gets a new MAC).
    /// Only useful once the host veth's port is on the bridge: the runtime calls it then.
    /// A missing interface is `InterfaceError::NotFound`.
    async fn announce(&self, ns: &ContainerNs, att: &AttachmentEntry)
    -> Result<(), InterfaceError>;
    /// Every topo-owned interface of the node's namespace (for garbage collection).
    async fn list_owned(&self) -> Result<Vec<HostInterface>, InterfaceError>;
    /// Deletes a host veth (names with the `tv-` prefix only; absent is fine).
    async fn remove_host_veth(&self, name: &str) -> Result<(), InterfaceError>;
    /// The bridge's internal interface (created by ovs-vswitchd).
    async fn observe_gateway(&self, bridge: &str) -> Result<ObservedGateway, InterfaceError>;
    /// Gateway address (with the cidr's prefix, replacing any other), MTU, link up and TX
    /// checksum offload off on the bridge's internal interface; waits a while for ovs-vswitchd to create it (`InterfaceError::NotFound`
    /// after that). Returns what it changed.
    async fn ensure_gateway(
        &self,
        bridge: &str,
        gateway: Ipv4Net,
        mtu: u32,
    ) -> Result<Vec<GatewayDrift>, InterfaceError>;
    /// Link and IPv4 address notifications for topo-owned names in the node's namespace.
    fn watch(&self) -> BoxStream<'static, LinkEvent>;
    /// Link, IPv4 address and route notifications of the container's namespace, from a
    /// socket opened in it. The stream ends when the container's process exits (the socket,
    /// which keeps the namespace alive, is closed then) or when it is dropped.
    async fn watch_container(
        &self,
        ns: &ContainerNs,
    ) -> Result<BoxStream<'static, NamespaceChange>, InterfaceError>;
}

// ====================================================================== Open vSwitch

/// The type of a port's single interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortKind {
    /// An existing network device (a container's host veth).
    System,
    Internal,
    /// GRE with one key for both directions (`options:key`).
    Gre {
        remote_ip: Ipv4Addr,
        key: u32,
    },
}

impl PortKind {
    /// OVSDB `Interface.type` of a GRE port.
    pub const GRE_TYPE: &'static str = "gre";

    /// OVSDB `Interface.type` value.
    pub fn ovs_type(&self) -> &'static str {
        match self {
            PortKind::System => "",
            PortKind::Internal => "internal",
            PortKind::Gre { .. } => Self::GRE_TYPE,
        }
    }

    /// OVSDB `Interface.options` value.
    pub fn options(&self) -> BTreeMap<String, String> {
        match self {
            PortKind::Gre { remote_ip, key } => BTreeMap::from([
                ("remote_ip".to_string(), remote_ip.to_string()),
                ("key".to_string(), key.to_string()),
            ]),
            _ => BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedInterface {
    pub name: String,
    /// OVSDB `type` ("" is system).
    pub kind: String,
    pub options: BTreeMap<String, String>,
    pub mtu_request: Option<u32>,
    pub ofport: Option<i64>,
    /// ovs-vswitchd's `error` column (e.g. "could not open network device tv-x").
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedPort {
    pub name: String,
    pub protected: bool,
    pub external_ids: BTreeMap<String, String>,
    /// `external_ids` say topo.dev/managed=true.
    pub owned: bool,
    pub interfaces: Vec<ObservedInterface>,
}

impl ObservedPort {
    /// Whether the port is exactly `kind` with `protected` (a single interface of that name).
    pub fn matches(&self, kind: &PortKind, protected: bool) -> bool {
        self.protected == protected
            && self.interfaces.len() == 1
            && self.interfaces[0].name == self.name
            && self.interfaces[0].kind == kind.ovs_type()
            && self.interfaces[0].options == kind.options()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedBridge {
    pub name: String,
    pub datapath_type: String,
    pub rstp: bool,
    pub external_ids: BTreeMap<String, String>,
    pub owned: bool,
    /// Every port of the bridge by name, including its own internal port (same name).
    pub ports: BTreeMap<String, ObservedPort>,
}

/// Every bridge of the switch (owned or not; `owned` says), by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OvsState {
    pub bridges: BTreeMap<String, ObservedBridge>,
}

/// One change in a transaction. `object` is the owning object as `ObjectRef` displays it
/// (`network/overlay`, `tunnel/overlay-node2`, `container/web`), stored in external_ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OvsChange {
    /// A bridge with its internal port (same name) whose interface gets `mtu_request = mtu`
    /// (OVS otherwise lowers a bridge's internal MTU to the smallest port's).
    AddBridge {
        name: String,
        datapath: Datapath,
        rstp: bool,
        mtu: u32,
        object: String,
    },
    /// Datapath type, RSTP and internal MTU of an existing owned bridge.
    UpdateBridge {
        name: String,
        datapath: Datapath,
        rstp: bool,
        mtu: u32,
    },
    /// Deletes an owned bridge (and so its ports).
    DeleteBridge { name: String },
    AddPort {
        bridge: String,
        name: String,
        kind: PortKind,
        protected: bool,
        object: String,
    },
    /// Type/options of the interface and `protected` of an existing owned port.
    UpdatePort {
        bridge: String,
        name: String,
        kind: PortKind,
        protected: bool,
    },
    /// Deletes an owned port from `bridge`.
    DeletePort { bridge: String, name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OvsTable {
    Bridge,
    Port,
    Interface,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowChange {
    Inserted,
    Deleted,
    Modified,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OvsEvent {
    Resync,
    Changed {
        table: OvsTable,
        /// The row's `name`.
        name: String,
        change: RowChange,
        /// The owning object from the row's (old, for a deletion) external_ids, if ours.
        object: Option<String>,
    },
}

#[async_trait]
pub trait Ovs: Send + Sync {
    /// Bridges, ports and interfaces as OVSDB holds them.
    async fn observe(&self) -> Result<OvsState, OvsError>;
    /// Every bridge, but of the ports only those topo made for `object` and those named
    /// `ports`: what one container's plumbing needs, without reading every port of a bridge
    /// that holds hundreds. Only the named ports come with their interfaces (a port found by
    /// its owner alone is one the plumbing removes). By default (the fakes) the whole of
    /// [`Ovs::observe`].
    async fn observe_container(
        &self,
        object: &str,
        ports: &[String],
    ) -> Result<OvsState, OvsError> {
        let _ = (object, ports);
        self.observe().await
    }
    /// Applies all `changes` in ONE OVSDB transaction (nothing is sent for an empty list).
    /// Deleting or updating anything without topo's external_ids is refused
    /// (`OvsError::NotOwned`) before anything is sent.
    async fn apply(&self, changes: &[OvsChange]) -> Result<(), OvsError>;
    /// Deletes the port `name` of `bridge` and adds it back with the same settings, in two
    /// transactions. Needed after a port's device was deleted and recreated under the same
    /// name (a container restart recreates its veth pair): ovs-vswitchd's userspace datapath
    /// keeps reading the deleted device and the new one gets no traffic, while OVSDB shows the
    /// port as healthy. One transaction would not do: ovs-vswitchd would see the same port.
    /// An absent port is fine (nothing to do); a foreign one is `OvsError::NotOwned`.
    async fn reattach_port(&self, bridge: &str, name: &str) -> Result<(), OvsError>;
    /// [`Ovs::apply`], then waits (a bounded while) until ovs-vswitchd has reconfigured with
    /// the change. Removing a port before adding it back under the same name needs this:
    /// when ovs-vswitchd reads both transactions in one pass it sees the same port and keeps
    /// its handle on the deleted device.
    async fn apply_and_wait(&self, changes: &[OvsChange]) -> Result<(), OvsError> {
        self.apply(changes).await
    }
    /// Asks ovs-vswitchd to drop every datapath flow, so that the next packet of each flow is
    /// translated again. Needed after a node's first tunnel port with the userspace (`netdev`)
    /// datapath: GRE that arrived while the node had none was given a flow to the host's stack
    /// (which answers "protocol 47 unreachable"), and ovs-vswitchd does not revalidate that flow
    /// when the tunnel port comes; it stays as long as GRE keeps arriving at least every 10 s.
    /// By default (the fakes) nothing.
    async fn purge_datapath_flows(&self) -> Result<(), OvsError> {
        Ok(())
    }
    /// Monitor updates of Bridge/Port/Interface rows.
    fn watch(&self) -> BoxStream<'static, OvsEvent>;
}

/// What a node wants on its switch, for [`plan_ovs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredBridge {
    pub name: String,
    pub datapath: Datapath,
    pub rstp: bool,
    pub mtu: u32,
    pub object: String,
    pub ports: Vec<DesiredPort>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredPort {
    pub name: String,
    pub kind: PortKind,
    pub protected: bool,
    pub object: String,
}

/// The changes that turn `observed` into `desired`: owned bridges/ports not desired are
/// deleted, missing ones added, differing ones updated. Never touches what is not owned
/// (a desired name held by a foreign bridge/port is left alone and reported by the caller).
pub fn plan_ovs(desired: &[DesiredBridge], observed: &OvsState) -> Vec<OvsChange> {
    let mut out = Vec::new();
    let want: BTreeMap<&str, &DesiredBridge> =
        desired.iter().map(|b| (b.name.as_str(), b)).collect();
    for (name, b) in &observed.bridges {
        if b.owned && !want.contains_key(name.as_str()) {
            out.push(OvsChange::DeleteBridge { name: name.clone() });
        }
    }
    for d in desired {
        let Some(b) = observed.bridges.get(&d.name) else {
            out.push(OvsChange::AddBridge {
                name: d.name.clone(),
                datapath: d.datapath,
                rstp: d.rstp,
                mtu: d.mtu,
                object: d.object.clone(),
            });
            for p in &d.ports {
                out.push(add_port(&d.name, p));
            }
            continue;
        };
        if !b.owned {
            continue;
        }
        let internal_mtu = b
            .ports
            .get(&d.name)
            .and_then(|p| p.interfaces.iter().find(|i| i.name == d.name))
            .and_then(|i| i.mtu_request);
        if b.datapath_type != d.datapath.ovs_type()
            || b.rstp != d.rstp
            || internal_mtu != Some(d.mtu)
        {
            out.push(OvsChange::UpdateBridge {
                name: d.name.clone(),
                datapath: d.datapath,
                rstp: d.rstp,
                mtu: d.mtu,
            });
        }
        let want_ports: BTreeMap<&str, &DesiredPort> =
            d.ports.iter().map(|p| (p.name.as_str(), p)).collect();
        for (pname, p) in &b.ports {
            // The bridge's own internal port goes with the bridge.
            if p.owned && *pname != d.name && !want_ports.contains_key(pname.as_str()) {
                out.push(OvsChange::DeletePort {
                    bridge: d.name.clone(),
                    name: pname.clone(),
                });
            }
        }
        for p in &d.ports {
            match b.ports.get(&p.name) {
                None => out.push(add_port(&d.name, p)),
                Some(o) if o.owned && !o.matches(&p.kind, p.protected) => {
                    out.push(OvsChange::UpdatePort {
                        bridge: d.name.clone(),
                        name: p.name.clone(),
                        kind: p.kind.clone(),
                        protected: p.protected,
                    })
                }
                Some(_) => {}
            }
        }
    }
    out
}

fn add_port(bridge: &str, p: &DesiredPort) -> OvsChange {
    OvsChange::AddPort {
        bridge: bridge.to_string(),
        name: p.name.clone(),
        kind: p.kind.clone(),
        protected: p.protected,
        object: p.object.clone(),
    }
}

// ====================================================================== NAT

/// Which network namespace a NAT table lives in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NetNs {
    /// The agent's own namespace (the node's).
    Node,
    /// A container's.
    Container(ContainerNs),
}

impl NetNs {
    pub fn container(&self) -> Option<&ContainerNs> {
        match self {
            NetNs::Node => None,
            NetNs::Container(c) => Some(c),
        }
    }
}

/// A geard link as programmed in the consumer's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkDnat {
    pub listen: SocketAddrV4,
    pub protocol: Protocol,
    pub target: SocketAddrV4,
}

/// A published port as programmed in the node's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortDnat {
    pub host_port: u16,
    pub protocol: Protocol,
    /// The local address it is published on; 0.0.0.0: every local address.
    pub host_ip: Ipv4Addr,
    pub target: SocketAddrV4,
}

impl PortDnat {
    /// What the port takes on the node (address, port, protocol), whatever it forwards to.
    pub fn binding(&self) -> (Ipv4Addr, u16, Protocol) {
        (self.host_ip, self.host_port, self.protocol)
    }
}

impl From<&PublishedPort> for PortDnat {
    fn from(p: &PublishedPort) -> Self {
        PortDnat {
            host_port: p.host_port,
            protocol: p.protocol,
            host_ip: p.host_ip,
            target: SocketAddrV4::new(p.container_ip, p.container_port),
        }
    }
}

/// The whole content of one `topo` table. The node's table uses `masquerade` and `ports`;
/// a consumer container's uses `links`. Compare values after [`NatRules::normalized`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NatRules {
    /// Network cidrs whose traffic leaving the cidr is masqueraded.
    pub masquerade: Vec<Ipv4Net>,
    pub ports: Vec<PortDnat>,
    pub links: Vec<LinkDnat>,
    /// Ordered pairs of network cidrs (from, to) whose traffic the node must not forward:
    /// with `ip_forward=1` the node's gateways would otherwise route between networks.
    pub isolate: Vec<(Ipv4Net, Ipv4Net)>,
}

impl NatRules {
    /// Every ordered pair of distinct `cidrs`, for [`NatRules::isolate`].
    pub fn isolation_pairs(cidrs: &[Ipv4Net]) -> Vec<(Ipv4Net, Ipv4Net)> {
        let mut out = Vec::new();
        for a in cidrs {
            for b in cidrs {
                if a != b {
                    out.push((*a, *b));
                }
            }
        }
        out
    }

    pub fn normalized(mut self) -> Self {
        self.isolate.sort();
        self.isolate.dedup();
        self.masquerade.sort();
        self.masquerade.dedup();
        self.ports.sort();
        self.ports.dedup();
        self.links.sort();
        self.links.dedup();
        self
    }

    pub fn is_empty(&self) -> bool {
        self.masquerade.is_empty()
            && self.ports.is_empty()
            && self.links.is_empty()
            && self.isolate.is_empty()
    }

    /// Links whose listen address is loopback need `route_localnet=1` in the namespace.
    pub fn needs_route_localnet(&self) -> bool {
        self.links.iter().any(|l| l.listen.ip().is_loopback())
    }

    /// Masquerade and published ports route packets through the namespace: without
    /// `ip_forward=1` (a new namespace's default is 0) they are dropped silently.
    pub fn needs_forwarding(&self) -> bool {
        !self.masquerade.is_empty() || !self.ports.is_empty()
    }
}

/// What a namespace holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedNat {
    /// The `topo` table exists.
    pub table_exists: bool,
    /// The rules of the table that are exactly as topo renders them, normalized.
    pub rules: NatRules,
    /// The table holds only topo's chains and rules (nothing tampered or foreign).
    pub exact: bool,
    /// `net.ipv4.conf.all.route_localnet` of the namespace.
    pub route_localnet: bool,
    /// `net.ipv4.ip_forward` of the namespace.
    pub ip_forward: bool,
}

impl ObservedNat {
    /// Whether `desired` is in force: no write is needed. An empty desired set is satisfied
    /// by an absent table.
    pub fn satisfies(&self, desired: &NatRules) -> bool {
        let desired = desired.clone().normalized();
        if desired.is_empty() {
            return !self.table_exists;
        }
        self.table_exists
            && self.exact
            && self.rules == desired
            && (!desired.needs_route_localnet() || self.route_localnet)
            && (!desired.needs_forwarding() || self.ip_forward)
    }

    /// What differs from `desired`; empty exactly when [`ObservedNat::satisfies`] holds.
    pub fn differences(&self, desired: &NatRules) -> Vec<NatDrift> {
        let desired = desired.clone().normalized();
        if desired.is_empty() {
            return if self.table_exists {
                vec![NatDrift::Unwanted]
            } else {
                vec![]
            };
        }
        if !self.table_exists {
            return vec![NatDrift::TableDeleted];
        }
        let mut d = Vec::new();
        if self.exact && self.rules.is_empty() {
            d.push(NatDrift::TableFlushed);
        } else if !self.exact || self.rules != desired {
            let in_force = nat::items(&self.rules);
            let missing = nat::items(&desired)
                .iter()
                .filter(|i| !in_force.contains(i))
                .count();
            d.push(NatDrift::RulesChanged {
                missing,
                foreign: !self.exact,
            });
        }
        if desired.needs_route_localnet() && !self.route_localnet {
            d.push(NatDrift::SysctlOff {
                key: "net.ipv4.conf.all.route_localnet",
            });
        }
        if desired.needs_forwarding() && !self.ip_forward {
            d.push(NatDrift::SysctlOff {
                key: "net.ipv4.ip_forward",
            });
        }
        d
    }
}

/// One way a namespace's `topo` table differs from the rules wanted in it (see
/// [`ObservedNat::differences`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatDrift {
    /// The table is gone (`nft delete table`, or the whole ruleset flushed).
    TableDeleted,
    /// The table and its chains are there without a rule (`nft flush table`).
    TableFlushed,
    /// Wanted rules are missing or were edited (`missing` of them), or the table holds
    /// something topo did not put there (`foreign`).
    RulesChanged { missing: usize, foreign: bool },
    /// A table no rule wants.
    Unwanted,
    /// A switch the rules depend on was turned off.
    SysctlOff { key: &'static str },
}

impl NatDrift {
    /// The variant's name, as events name the drift.
    pub fn kind(&self) -> &'static str {
        match self {
            NatDrift::TableDeleted => "TableDeleted",
            NatDrift::TableFlushed => "TableFlushed",
            NatDrift::RulesChanged { .. } => "RulesChanged",
            NatDrift::Unwanted => "TableUnwanted",
            NatDrift::SysctlOff { .. } => "SysctlOff",
        }
    }
}

impl std::fmt::Display for NatDrift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatDrift::TableDeleted => f.write_str("table ip topo was deleted"),
            NatDrift::TableFlushed => f.write_str("table ip topo was flushed"),
            NatDrift::RulesChanged { missing, foreign } => {
                write!(
                    f,
                    "table ip topo was edited ({missing} rule(s) missing or changed"
                )?;
                if *foreign {
                    f.write_str(", foreign chains or rules")?;
                }
                f.write_str(")")
            }
            NatDrift::Unwanted => f.write_str("table ip topo exists and no rule wants it"),
            NatDrift::SysctlOff { key } => write!(f, "{key} was turned off"),
        }
    }
}

#[async_trait]
pub trait Nat: Send + Sync {
    async fn observe(&self, ns: &NetNs) -> Result<ObservedNat, NatError>;
    /// Replaces the `topo` table of `ns` atomically with `rules` (one nft transaction), and sets
    /// route_localnet=1 when a link listens on loopback and ip_forward=1 when packets are
    /// forwarded (masquerade, published ports). Empty rules delete the table.
    async fn apply(&self, ns: &NetNs, rules: &NatRules) -> Result<(), NatError>;
    /// Deletes the `topo` table of `ns` if present.
    async fn remove(&self, ns: &NetNs) -> Result<(), NatError>;
    /// nftables notifications about the `topo` table of the node's namespace (it deleted,
    /// flushed or edited by anyone). Reconnects by itself and then yields `Resync`.
    fn watch(&self) -> BoxStream<'static, NatEvent>;
    /// The same for a container's namespace, from a socket opened in it; the stream ends when
    /// the container's process exits or when it is dropped.
    async fn watch_container(
        &self,
        ns: &ContainerNs,
    ) -> Result<BoxStream<'static, NatEvent>, NatError>;
}

// ====================================================================== Address probes

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// How a host claimed the probed address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimKind {
    /// An ARP reply from the address (the answer to the probe, or to anyone's request).
    Reply,
    /// An ARP request sent from the address (an announcement, or the holder asking).
    Announcement,
    /// Another host's probe for the same address (RFC 5227 §2.1.1: both back off).
    Probe,
}

/// One host's claim on a probed address, heard on the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The claimant's sender hardware address.
    pub mac: Mac,
    pub kind: ClaimKind,
}

#[async_trait]
pub trait AddressProber: Send + Sync {
    /// Sends ARP probes for `address` (sender address 0.0.0.0, from the port's own MAC) out
    /// of `bridge`'s internal port and returns every claim on the address heard meanwhile,
    /// one per claimant MAC (its own probes are not claims). Whether a claim is a conflict
    /// is the caller's judgement.
    async fn probe(&self, bridge: &str, address: Ipv4Addr) -> Result<Vec<Claim>, ProbeError>;
}

// ====================================================================== Host ports

/// A process of the node, as /proc names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeProcess {
    pub pid: u32,
    /// `/proc/PID/comm`.
    pub name: String,
}

/// A socket that holds a port of the node: TCP in LISTEN, or UDP bound and not connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub protocol: Protocol,
    pub address: IpAddr,
    pub port: u16,
    /// An IPv6 socket with IPV6_V6ONLY (it receives no IPv4).
    pub v6_only: bool,
    pub inode: u32,
    pub uid: u32,
    /// The process holding the socket, when the agent can see one.
    pub process: Option<NodeProcess>,
}

impl Listener {
    /// The IPv4 address the socket receives on (0.0.0.0: every one), if it receives IPv4 at
    /// all: an IPv6 wildcard socket without IPV6_V6ONLY does, on every address.
    fn ipv4(&self) -> Option<Ipv4Addr> {
        match self.address {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(m) => Some(m),
                None if a.is_unspecified() && !self.v6_only => Some(Ipv4Addr::UNSPECIFIED),
                None => None,
            },
        }
    }

    /// Whether a DNAT of this port for traffic to `host_ip` (0.0.0.0: to any local address)
    /// would take traffic the socket receives today.
    pub fn clashes_with(&self, host_ip: Ipv4Addr) -> bool {
        self.ipv4()
            .is_some_and(|a| a.is_unspecified() || host_ip.is_unspecified() || a == host_ip)
    }

    /// Who holds it, in words: `nginx (pid 1234)`.
    pub fn holder(&self) -> String {
        match &self.process {
            Some(p) => format!("{} (pid {})", p.name, p.pid),
            None => format!(
                "a socket of uid {} (inode {}) whose process the agent cannot see",
                self.uid, self.inode
            ),
        }
    }

    /// `0.0.0.0:8080`, `[::]:8080`.
    pub fn local(&self) -> String {
        std::net::SocketAddr::new(self.address, self.port).to_string()
    }
}

/// The node as its published ports meet it: who holds which port, and its addresses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostPortsView {
    pub listeners: Vec<Listener>,
    /// Every IPv4 address of the node's namespace.
    pub addresses: Vec<Ipv4Addr>,
}

#[async_trait]
pub trait HostPorts: Send + Sync {
    /// The sockets of the node's namespace holding any of `ports` (with their processes
    /// when the agent can see them) and the node's IPv4 addresses. Reads only.
    async fn observe(&self, ports: &[(u16, Protocol)]) -> Result<HostPortsView, HostPortsError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, kind: PortKind, protected: bool, owned: bool) -> ObservedPort {
        ObservedPort {
            name: name.into(),
            protected,
            external_ids: BTreeMap::new(),
            owned,
            interfaces: vec![ObservedInterface {
                name: name.into(),
                kind: kind.ovs_type().into(),
                options: kind.options(),
                mtu_request: None,
                ofport: Some(1),
                error: None,
            }],
        }
    }

    fn desired() -> Vec<DesiredBridge> {
        vec![DesiredBridge {
            name: "tb-net".into(),
            datapath: Datapath::Netdev,
            rstp: false,
            mtu: 1458,
            object: "network/net".into(),
            ports: vec![
                DesiredPort {
                    name: "tg-node2".into(),
                    kind: PortKind::Gre {
                        remote_ip: Ipv4Addr::new(192, 168, 100, 2),
                        key: 7,
                    },
                    protected: true,
                    object: "tunnel/t".into(),
                },
                DesiredPort {
                    name: "tv-web".into(),
                    kind: PortKind::System,
                    protected: false,
                    object: "container/web".into(),
                },
            ],
        }]
    }

    fn observed_like_desired() -> OvsState {
        let mut internal = port("tb-net", PortKind::Internal, false, true);
        internal.interfaces[0].mtu_request = Some(1458);
        let gre = PortKind::Gre {
            remote_ip: Ipv4Addr::new(192, 168, 100, 2),
            key: 7,
        };
        let b = ObservedBridge {
            name: "tb-net".into(),
            datapath_type: "netdev".into(),
            rstp: false,
            external_ids: BTreeMap::new(),
            owned: true,
            ports: BTreeMap::from([
                ("tb-net".to_string(), internal),
                ("tg-node2".to_string(), port("tg-node2", gre, true, true)),
                (
                    "tv-web".to_string(),
                    port("tv-web", PortKind::System, false, true),
                ),
            ]),
        };
        let phy = ObservedBridge {
            name: "br-phy".into(),
            datapath_type: "netdev".into(),
            ..Default::default()
        };
        OvsState {
            bridges: BTreeMap::from([("tb-net".to_string(), b), ("br-phy".to_string(), phy)]),
        }
    }

    #[test]
    fn plan_is_empty_when_in_sync() {
        // The bridge's own internal port is not in `desired.ports` but is owned: it must not
        // be planned for deletion.
        assert_eq!(plan_ovs(&desired(), &observed_like_desired()), vec![]);
    }

    #[test]
    fn plan_adds_missing_and_fixes_changed() {
        let mut obs = observed_like_desired();
        let b = obs.bridges.get_mut("tb-net").unwrap();
        b.ports.remove("tg-node2");
        b.ports.get_mut("tv-web").unwrap().protected = true;
        b.ports.insert(
            "tv-gone".into(),
            port("tv-gone", PortKind::System, false, true),
        );
        b.ports.insert(
            "foreign".into(),
            port("foreign", PortKind::System, false, false),
        );
        let plan = plan_ovs(&desired(), &obs);
        assert_eq!(plan.len(), 3, "{plan:?}");
        assert!(plan.contains(&OvsChange::DeletePort {
            bridge: "tb-net".into(),
            name: "tv-gone".into()
        }));
        assert!(matches!(&plan[1], OvsChange::AddPort { name, .. } if name == "tg-node2"));
        assert!(
            matches!(&plan[2], OvsChange::UpdatePort { name, protected: false, .. } if name == "tv-web")
        );
    }

    #[test]
    fn plan_deletes_only_owned_bridges() {
        let plan = plan_ovs(&[], &observed_like_desired());
        assert_eq!(
            plan,
            vec![OvsChange::DeleteBridge {
                name: "tb-net".into()
            }]
        );
    }

    #[test]
    fn attachment_differences() {
        let att = AttachmentEntry {
            network: "net".into(),
            bridge: "tb-net".into(),
            interface: "eth0".into(),
            host_veth: "tv-web".into(),
            address: "10.2.1.5/16".parse().unwrap(),
            mtu: 1458,
            default_gateway: Some(Ipv4Addr::new(10, 2, 1, 1)),
            tx_checksum_off: true,
        };
        let mut o = ObservedAttachment {
            host_exists: true,
            host_is_veth: true,
            host_mtu: 1458,
            host_up: true,
            peer: Some(ObservedPeer {
                name: "eth0".into(),
                is_veth: true,
                paired_with_host: true,
                mtu: 1458,
                up: true,
                addresses: vec![att.address],
                default_gateway: att.default_gateway,
                tx_checksum: Some(false),
            }),
        };
        assert!(o.differences(&att).is_empty());
        assert!(!o.needs_new_pair());
        o.peer.as_mut().unwrap().paired_with_host = false;
        assert!(o.needs_new_pair());
        o.peer.as_mut().unwrap().paired_with_host = true;
        o.peer.as_mut().unwrap().addresses.clear();
        assert!(!o.needs_new_pair());
        o.peer.as_mut().unwrap().tx_checksum = Some(true);
        let d = o.differences(&att);
        assert_eq!(d.len(), 2, "{d:?}");
        o.host_exists = false;
        assert_eq!(
            o.differences(&att),
            vec![AttachmentDrift::HostVethMissing {
                veth: "tv-web".into()
            }]
        );
        assert_eq!(
            o.differences(&att)[0].to_string(),
            "host veth tv-web is missing"
        );
    }

    #[test]
    fn nat_satisfies() {
        let rules = NatRules {
            masquerade: vec!["10.2.0.0/16".parse().unwrap()],
            ports: vec![],
            links: vec![LinkDnat {
                listen: "127.0.0.1:6379".parse().unwrap(),
                protocol: Protocol::Tcp,
                target: "10.2.3.4:6379".parse().unwrap(),
            }],
            isolate: NatRules::isolation_pairs(&[
                "10.2.0.0/16".parse().unwrap(),
                "10.3.0.0/16".parse().unwrap(),
            ]),
        };
        let mut o = ObservedNat {
            table_exists: true,
            rules: rules.clone(),
            exact: true,
            route_localnet: false,
            ip_forward: true,
        };
        assert!(!o.satisfies(&rules), "loopback link needs route_localnet");
        o.route_localnet = true;
        assert!(o.satisfies(&rules));
        o.ip_forward = false;
        assert!(!o.satisfies(&rules), "masquerade needs ip_forward");
        o.ip_forward = true;
        o.exact = false;
        assert!(!o.satisfies(&rules));
        assert!(!o.satisfies(&NatRules::default()));
        assert!(ObservedNat::default().satisfies(&NatRules::default()));
        o.exact = true;
        assert!(o.satisfies(&rules));
        o.rules.isolate.pop();
        assert!(
            !o.satisfies(&rules),
            "a missing isolation pair needs a write"
        );
    }

    #[test]
    fn isolation_pairs_cover_both_directions() {
        let a: Ipv4Net = "10.41.0.0/16".parse().unwrap();
        let b: Ipv4Net = "10.42.0.0/16".parse().unwrap();
        let c: Ipv4Net = "10.43.0.0/16".parse().unwrap();
        assert!(NatRules::isolation_pairs(&[a]).is_empty());
        assert_eq!(NatRules::isolation_pairs(&[a, b]), vec![(a, b), (b, a)]);
        assert_eq!(NatRules::isolation_pairs(&[a, b, c]).len(), 6);
        let only = NatRules {
            isolate: NatRules::isolation_pairs(&[a, b]),
            ..Default::default()
        };
        assert!(!only.is_empty(), "an isolation-only table is still a table");
        assert!(!only.needs_forwarding());
    }
}
