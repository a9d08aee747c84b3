//! Recording fakes of the six backends, for the runtime's tests: compiled only for the
//! crate's own tests and for the `testing` feature the integration tests under `tests/`
//! enable, never into the agent a node runs.
//!
//! Each fake holds an in-memory "host" (reach it with `host()` to arrange or tamper), records
//! every call in `calls()` and every mutation in `writes()` (so a test can assert that a
//! reconcile with nothing to do wrote nothing), fails the next call of an operation on demand
//! (`fail_next`), and feeds its `watch()` streams from `emit()` and the tamper helpers.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::Utc;
use futures::StreamExt;
use futures::stream::BoxStream;
use ipnet::Ipv4Net;
use tokio::sync::mpsc;
use topo_schema::kinds::Protocol;
use topo_schema::slice::{AttachmentEntry, ContainerEntry, owner};

use super::ovs::{check_changes, effective_changes};
use super::{
    AddressProber, AttachmentDrift, Claim, ClaimKind, ContainerError, ContainerEvent, ContainerNs,
    Containers, GatewayDrift, HostInterface, HostPorts, HostPortsError, HostPortsView,
    InterfaceError, Interfaces, LinkChangeKind, LinkEvent, Listener, Mac, NamespaceChange, Nat,
    NatError, NatEvent, NatRules, NetNs, NftObject, NodeProcess, NsError, ObservedAttachment,
    ObservedBridge, ObservedContainer, ObservedGateway, ObservedInterface, ObservedNat,
    ObservedPeer, ObservedPort, Ovs, OvsChange, OvsError, OvsEvent, OvsState, OvsTable, PortKind,
    ProbeError, PullProgress, RowChange,
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding the lock already failed; keep going for the others.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Subscribers of a fake's `watch()`.
struct Watchers<T>(Mutex<Vec<mpsc::UnboundedSender<T>>>);

impl<T: Clone + Send + 'static> Watchers<T> {
    fn new() -> Self {
        Watchers(Mutex::new(Vec::new()))
    }
    fn subscribe(&self) -> BoxStream<'static, T> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.0).push(tx);
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx).boxed()
    }
    fn emit(&self, ev: T) {
        lock(&self.0).retain(|tx| tx.send(ev.clone()).is_ok());
    }
}

/// Subscribers of the per-namespace `watch_container()` streams, by container pid; a
/// namespace's streams end when its process is killed.
struct NsWatchers<T>(Mutex<BTreeMap<u32, Vec<mpsc::UnboundedSender<T>>>>);

impl<T: Clone + Send + 'static> NsWatchers<T> {
    fn new() -> Self {
        NsWatchers(Mutex::new(BTreeMap::new()))
    }
    fn subscribe(&self, pid: u32) -> BoxStream<'static, T> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.0).entry(pid).or_default().push(tx);
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx).boxed()
    }
    fn emit(&self, pid: u32, ev: T) {
        if let Some(v) = lock(&self.0).get_mut(&pid) {
            v.retain(|tx| tx.send(ev.clone()).is_ok());
        }
    }
    /// Ends the streams of `pid`'s namespace (its process exited).
    fn end(&self, pid: u32) {
        lock(&self.0).remove(&pid);
    }
    /// Open streams of `pid`'s namespace.
    fn open(&self, pid: u32) -> usize {
        lock(&self.0)
            .get_mut(&pid)
            .map(|v| {
                v.retain(|tx| !tx.is_closed());
                v.len()
            })
            .unwrap_or(0)
    }
}

fn gone(pid: u32) -> NsError {
    NsError::Exited { pid }
}

/// The call log and the queued failures of one fake.
struct Log<E> {
    calls: Vec<String>,
    writes: Vec<String>,
    failures: VecDeque<(String, E)>,
}

impl<E> Default for Log<E> {
    fn default() -> Self {
        Log {
            calls: Vec::new(),
            writes: Vec::new(),
            failures: VecDeque::new(),
        }
    }
}

impl<E> Log<E> {
    /// Records a call of `op` on `target`; returns the failure queued for `op`, if any.
    fn call(&mut self, op: &str, target: &str) -> Result<(), E> {
        self.calls
            .push(format!("{op} {target}").trim_end().to_string());
        if let Some(i) = self.failures.iter().position(|(o, _)| o == op)
            && let Some((_, e)) = self.failures.remove(i)
        {
            return Err(e);
        }
        Ok(())
    }
    fn write(&mut self, what: String) {
        self.writes.push(what);
    }
}

// ====================================================================== Containers

/// The fake Docker engine.
#[derive(Default)]
pub struct DockerHost {
    /// By container id.
    pub containers: BTreeMap<String, ObservedContainer>,
    /// Images present locally.
    pub images: BTreeSet<String>,
    /// Images a pull succeeds for (none by default: no registry here either).
    pub registry: BTreeSet<String>,
    /// Images whose pull stalls: accepted, then nothing more is ever sent.
    pub stalled: BTreeSet<String>,
    /// Docker names held by containers that are not this node's: `Some(node)` for another
    /// node's, `None` for a container topo does not own.
    pub foreign_names: BTreeMap<String, Option<String>>,
    next: u32,
}

pub struct FakeContainers {
    node: String,
    host: Mutex<DockerHost>,
    log: Mutex<Log<ContainerError>>,
    watchers: Watchers<ContainerEvent>,
}

impl FakeContainers {
    pub fn new(node: &str) -> Self {
        FakeContainers {
            node: node.to_string(),
            host: Mutex::new(DockerHost::default()),
            log: Mutex::new(Log::default()),
            watchers: Watchers::new(),
        }
    }

    /// With `image` present locally.
    pub fn with_image(self, image: &str) -> Self {
        lock(&self.host).images.insert(image.to_string());
        self
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn host(&self) -> MutexGuard<'_, DockerHost> {
        lock(&self.host)
    }

    /// Every call, as "op target" (`list`, `get topo-web`, `ensure_image topo/busybox:latest`,
    /// `create_and_start topo-web`, `start ID`, `remove ID`).
    pub fn calls(&self) -> Vec<String> {
        lock(&self.log).calls.clone()
    }

    /// Every change made to the engine (`pull IMAGE`, `create topo-web`, `start ID`, `remove ID`).
    pub fn writes(&self) -> Vec<String> {
        lock(&self.log).writes.clone()
    }

    pub fn clear_log(&self) {
        let mut l = lock(&self.log);
        l.calls.clear();
        l.writes.clear();
    }

    /// The next call of `op` (a name as in `calls()`) fails with `err`.
    pub fn fail_next(&self, op: &str, err: ContainerError) {
        lock(&self.log).failures.push_back((op.to_string(), err));
    }

    pub fn emit(&self, ev: ContainerEvent) {
        self.watchers.emit(ev);
    }

    /// The container of object `name`, if any.
    pub fn container(&self, name: &str) -> Option<ObservedContainer> {
        self.host()
            .containers
            .values()
            .find(|c| c.name == name)
            .cloned()
    }

    /// Stops the container of `name` as if its process exited (and emits `die`).
    pub fn kill(&self, name: &str, exit_code: i64) {
        let id = {
            let mut h = self.host();
            let Some(c) = h.containers.values_mut().find(|c| c.name == name) else {
                return;
            };
            c.running = false;
            c.pid = None;
            c.exit_code = Some(exit_code);
            c.finished_at = Some(Utc::now());
            c.status = "exited".to_string();
            c.id.clone()
        };
        self.emit(ContainerEvent::Changed {
            name: name.to_string(),
            id,
            action: "die".to_string(),
        });
    }

    /// Removes the container of `name` behind the agent's back (and emits `destroy`).
    pub fn destroy(&self, name: &str) {
        let id = {
            let mut h = self.host();
            let Some(id) = h
                .containers
                .values()
                .find(|c| c.name == name)
                .map(|c| c.id.clone())
            else {
                return;
            };
            h.containers.remove(&id);
            id
        };
        self.emit(ContainerEvent::Changed {
            name: name.to_string(),
            id,
            action: "destroy".to_string(),
        });
    }
}

#[async_trait]
impl Containers for FakeContainers {
    async fn list(&self) -> Result<Vec<ObservedContainer>, ContainerError> {
        lock(&self.log).call("list", "")?;
        let mut v: Vec<_> = self.host().containers.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    async fn get(&self, docker_name: &str) -> Result<Option<ObservedContainer>, ContainerError> {
        lock(&self.log).call("get", docker_name)?;
        Ok(self
            .host()
            .containers
            .values()
            .find(|c| c.docker_name == docker_name)
            .cloned())
    }

    async fn image_present(&self, image: &str) -> Result<bool, ContainerError> {
        lock(&self.log).call("image_present", image)?;
        Ok(self.host().images.contains(image))
    }

    fn pull(&self, image: &str) -> BoxStream<'static, Result<PullProgress, ContainerError>> {
        let called = {
            let mut l = lock(&self.log);
            l.write(format!("pull {image}"));
            l.call("pull", image)
        };
        if let Err(e) = called {
            return futures::stream::iter([Err(e)]).boxed();
        }
        let mut h = self.host();
        if h.stalled.contains(image) {
            return futures::stream::pending().boxed();
        }
        if !h.registry.contains(image) {
            let e = ContainerError::ImagePullFailed {
                image: image.to_string(),
                reason: format!("pull access denied for {image}, repository does not exist"),
            };
            return futures::stream::iter([Err(e)]).boxed();
        }
        h.images.insert(image.to_string());
        let done = PullProgress {
            layer: Some("0123456789ab".into()),
            status: "Pull complete".into(),
            current: None,
            total: None,
        };
        futures::stream::iter([Ok(done)]).boxed()
    }

    async fn create_and_start(&self, entry: &ContainerEntry) -> Result<String, ContainerError> {
        lock(&self.log).call("create_and_start", &entry.docker_name)?;
        let mut h = self.host();
        if let Some(holder) = h.foreign_names.get(&entry.docker_name) {
            return Err(match holder {
                Some(node) => ContainerError::NameOwnedByOtherNode {
                    name: entry.docker_name.clone(),
                    node: node.clone(),
                },
                None => ContainerError::NameTaken {
                    name: entry.docker_name.clone(),
                },
            });
        }
        if let Some(c) = h
            .containers
            .values()
            .find(|c| c.docker_name == entry.docker_name)
        {
            return Err(ContainerError::AlreadyExists {
                name: entry.docker_name.clone(),
                id: c.id.clone(),
            });
        }
        if !h.images.contains(&entry.image) {
            return Err(ContainerError::ImagePullFailed {
                image: entry.image.clone(),
                reason: format!("No such image: {}", entry.image),
            });
        }
        h.next += 1;
        let id = format!("{:064x}", h.next);
        let c = ObservedContainer {
            id: id.clone(),
            docker_name: entry.docker_name.clone(),
            name: entry.name.clone(),
            uid: entry.uid.clone(),
            config_hash: entry.config_hash(),
            image: entry.image.clone(),
            running: true,
            pid: Some(10_000 + h.next),
            restart_count: 0,
            started_at: Some(Utc::now()),
            finished_at: None,
            exit_code: None,
            status: "running".to_string(),
        };
        h.containers.insert(id.clone(), c);
        drop(h);
        lock(&self.log).write(format!("create {}", entry.docker_name));
        self.emit(ContainerEvent::Changed {
            name: entry.name.clone(),
            id: id.clone(),
            action: "start".into(),
        });
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<(), ContainerError> {
        lock(&self.log).call("start", id)?;
        let mut h = self.host();
        h.next += 1;
        let pid = 10_000 + h.next;
        let Some(c) = h.containers.get_mut(id) else {
            return Err(ContainerError::Docker {
                what: format!("start container {id}"),
                source: bollard::errors::Error::DockerResponseServerError {
                    status_code: 404,
                    message: format!("No such container: {id}"),
                },
            });
        };
        if c.running {
            return Ok(());
        }
        c.running = true;
        c.pid = Some(pid);
        c.started_at = Some(Utc::now());
        c.status = "running".to_string();
        let name = c.name.clone();
        drop(h);
        lock(&self.log).write(format!("start {id}"));
        self.emit(ContainerEvent::Changed {
            name,
            id: id.to_string(),
            action: "start".into(),
        });
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), ContainerError> {
        lock(&self.log).call("remove", id)?;
        let removed = self.host().containers.remove(id);
        if let Some(c) = removed {
            lock(&self.log).write(format!("remove {id}"));
            self.emit(ContainerEvent::Changed {
                name: c.name,
                id: id.to_string(),
                action: "destroy".into(),
            });
        }
        Ok(())
    }

    fn watch(&self) -> BoxStream<'static, ContainerEvent> {
        self.watchers.subscribe()
    }
}

// ====================================================================== Interfaces

/// The fake node's (and containers') interfaces.
#[derive(Default)]
pub struct InterfacesHost {
    /// By host veth name: the container pid its peer lives in, and the state.
    pub attachments: BTreeMap<String, (u32, ObservedAttachment)>,
    /// Bridge internal interfaces by bridge name (present once the fake OVS "created" them:
    /// tests add them, or `ensure_gateway` does unless the bridge is in `missing_bridges`).
    pub gateways: BTreeMap<String, ObservedGateway>,
    pub missing_bridges: BTreeSet<String>,
    /// Processes whose namespace is gone.
    pub dead_pids: BTreeSet<u32>,
}

pub struct FakeInterfaces {
    host: Mutex<InterfacesHost>,
    log: Mutex<Log<InterfaceError>>,
    watchers: Watchers<LinkEvent>,
    ns_watchers: NsWatchers<NamespaceChange>,
    announced: Mutex<Vec<Announcement>>,
    port_probe: Mutex<Option<PortProbe>>,
}

/// Tells whether a host veth's port is on a bridge (see [`FakeInterfaces::probe_ports_with`]).
pub type PortProbe = std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// One gratuitous ARP the fake sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub host_veth: String,
    pub pid: u32,
    pub address: Ipv4Net,
    /// Whether the veth's port was on a bridge when it was sent (None: no probe set).
    pub on_bridge: Option<bool>,
}

impl Default for FakeInterfaces {
    fn default() -> Self {
        Self::new()
    }
}

/// The state `ensure_attachment` leaves.
pub fn healthy_attachment(att: &AttachmentEntry) -> ObservedAttachment {
    ObservedAttachment {
        host_exists: true,
        host_is_veth: true,
        host_mtu: att.mtu,
        host_up: true,
        peer: Some(ObservedPeer {
            name: att.interface.clone(),
            is_veth: true,
            paired_with_host: true,
            mtu: att.mtu,
            up: true,
            addresses: vec![att.address],
            default_gateway: att.default_gateway,
            tx_checksum: Some(!att.tx_checksum_off),
        }),
    }
}

/// The state `ensure_attachment_unaddressed` leaves.
pub fn unaddressed_attachment(att: &AttachmentEntry) -> ObservedAttachment {
    let mut o = healthy_attachment(att);
    if let Some(p) = o.peer.as_mut() {
        p.addresses.clear();
        p.default_gateway = None;
    }
    o
}

impl FakeInterfaces {
    pub fn new() -> Self {
        FakeInterfaces {
            host: Mutex::new(InterfacesHost::default()),
            log: Mutex::new(Log::default()),
            watchers: Watchers::new(),
            ns_watchers: NsWatchers::new(),
            announced: Mutex::new(Vec::new()),
            port_probe: Mutex::new(None),
        }
    }

    /// Lets each announcement record whether its veth's port was on a bridge then (e.g.
    /// by looking at a `FakeOvs`).
    pub fn probe_ports_with(&self, probe: PortProbe) {
        *lock(&self.port_probe) = Some(probe);
    }

    /// Every gratuitous ARP sent, in order.
    pub fn announced(&self) -> Vec<Announcement> {
        lock(&self.announced).clone()
    }

    pub fn host(&self) -> MutexGuard<'_, InterfacesHost> {
        lock(&self.host)
    }

    /// Every call: `observe_attachment VETH`, `ensure_attachment VETH`, `list_owned`,
    /// `remove_host_veth NAME`, `observe_gateway BRIDGE`, `ensure_gateway BRIDGE`.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.log).calls.clone()
    }

    /// Every change: `veth VETH: <what>`, `remove VETH`, `gateway BRIDGE: <what>`.
    pub fn writes(&self) -> Vec<String> {
        lock(&self.log).writes.clone()
    }

    pub fn clear_log(&self) {
        let mut l = lock(&self.log);
        l.calls.clear();
        l.writes.clear();
    }

    pub fn fail_next(&self, op: &str, err: InterfaceError) {
        lock(&self.log).failures.push_back((op.to_string(), err));
    }

    pub fn emit(&self, ev: LinkEvent) {
        self.watchers.emit(ev);
    }

    /// Deletes a host veth behind the agent's back (and notifies).
    pub fn delete_by_hand(&self, host_veth: &str) {
        self.host().attachments.remove(host_veth);
        self.emit(LinkEvent::Changed {
            name: host_veth.to_string(),
            kind: LinkChangeKind::Removed,
        });
    }

    /// Removes the container-side address behind the agent's back (and notifies).
    pub fn drop_address_by_hand(&self, host_veth: &str) {
        if let Some((_, a)) = self.host().attachments.get_mut(host_veth)
            && let Some(p) = a.peer.as_mut()
        {
            p.addresses.clear();
        }
        self.emit(LinkEvent::Changed {
            name: host_veth.to_string(),
            kind: LinkChangeKind::AddressRemoved,
        });
    }

    /// Changes the container-side address inside the container's namespace (only the
    /// namespace's own watch hears of it: no host interface changes).
    pub fn readdress_in_container(&self, host_veth: &str, address: Ipv4Net) {
        let pid = {
            let mut h = self.host();
            let Some((pid, a)) = h.attachments.get_mut(host_veth) else {
                return;
            };
            if let Some(p) = a.peer.as_mut() {
                p.addresses = vec![address];
            }
            *pid
        };
        self.ns_watchers.emit(pid, NamespaceChange::Address);
    }

    /// The process of `pid` exited: its namespace is gone and its watches end.
    pub fn kill_pid(&self, pid: u32) {
        self.host().dead_pids.insert(pid);
        self.ns_watchers.end(pid);
    }

    /// How many `watch_container` streams of `pid`'s namespace are open.
    pub fn namespace_watches(&self, pid: u32) -> usize {
        self.ns_watchers.open(pid)
    }

    fn observe(
        &self,
        pid: u32,
        att: &AttachmentEntry,
    ) -> Result<ObservedAttachment, InterfaceError> {
        let h = self.host();
        if h.dead_pids.contains(&pid) {
            return Err(InterfaceError::Namespace {
                pid,
                source: gone(pid),
            });
        }
        Ok(match h.attachments.get(&att.host_veth) {
            Some((p, o)) if *p == pid => o.clone(),
            Some((_, o)) => ObservedAttachment {
                peer: None,
                ..o.clone()
            },
            None => ObservedAttachment::default(),
        })
    }
}

#[async_trait]
impl Interfaces for FakeInterfaces {
    async fn observe_attachment(
        &self,
        ns: &ContainerNs,
        att: &AttachmentEntry,
    ) -> Result<ObservedAttachment, InterfaceError> {
        lock(&self.log).call("observe_attachment", &att.host_veth)?;
        self.observe(ns.pid, att)
    }

    async fn ensure_attachment(
        &self,
        ns: &ContainerNs,
        att: &AttachmentEntry,
    ) -> Result<Vec<AttachmentDrift>, InterfaceError> {
        let pid = ns.pid;
        lock(&self.log).call("ensure_attachment", &att.host_veth)?;
        let diffs = self.observe(pid, att)?.differences(att);
        if !diffs.is_empty() {
            self.host()
                .attachments
                .insert(att.host_veth.clone(), (pid, healthy_attachment(att)));
            let mut l = lock(&self.log);
            for d in &diffs {
                l.write(format!("veth {}: {d}", att.host_veth));
            }
        }
        Ok(diffs)
    }

    async fn ensure_attachment_unaddressed(
        &self,
        ns: &ContainerNs,
        att: &AttachmentEntry,
    ) -> Result<Vec<AttachmentDrift>, InterfaceError> {
        let pid = ns.pid;
        lock(&self.log).call("ensure_attachment_unaddressed", &att.host_veth)?;
        let diffs = self.observe(pid, att)?.differences_unaddressed(att);
        if !diffs.is_empty() {
            self.host()
                .attachments
                .insert(att.host_veth.clone(), (pid, unaddressed_attachment(att)));
            let mut l = lock(&self.log);
            for d in &diffs {
                l.write(format!("veth {}: {d}", att.host_veth));
            }
        }
        Ok(diffs)
    }

    async fn announce(
        &self,
        ns: &ContainerNs,
        att: &AttachmentEntry,
    ) -> Result<(), InterfaceError> {
        let pid = ns.pid;
        lock(&self.log).call("announce", &att.host_veth)?;
        let present = self
            .host()
            .attachments
            .get(&att.host_veth)
            .is_some_and(|(p, o)| *p == pid && o.peer.is_some());
        if !present {
            return Err(InterfaceError::NotFound {
                name: att.interface.clone(),
            });
        }
        let probe = lock(&self.port_probe).clone();
        let on_bridge = probe.map(|f| f(&att.host_veth));
        lock(&self.announced).push(Announcement {
            host_veth: att.host_veth.clone(),
            pid,
            address: att.address,
            on_bridge,
        });
        Ok(())
    }

    async fn list_owned(&self) -> Result<Vec<HostInterface>, InterfaceError> {
        lock(&self.log).call("list_owned", "")?;
        let h = self.host();
        let mut v: Vec<HostInterface> = h
            .attachments
            .keys()
            .map(|n| HostInterface {
                name: n.clone(),
                index: 0,
                kind: "veth".into(),
            })
            .chain(h.gateways.keys().map(|n| HostInterface {
                name: n.clone(),
                index: 0,
                kind: "tun".into(),
            }))
            .collect();
        for (i, x) in v.iter_mut().enumerate() {
            x.index = u32::try_from(i).unwrap_or(u32::MAX).saturating_add(10);
        }
        Ok(v)
    }

    async fn remove_host_veth(&self, name: &str) -> Result<(), InterfaceError> {
        lock(&self.log).call("remove_host_veth", name)?;
        if !name.starts_with("tv-") {
            return Err(InterfaceError::NotOwned {
                name: name.to_string(),
            });
        }
        if self.host().attachments.remove(name).is_some() {
            lock(&self.log).write(format!("remove {name}"));
        }
        Ok(())
    }

    async fn observe_gateway(&self, bridge: &str) -> Result<ObservedGateway, InterfaceError> {
        lock(&self.log).call("observe_gateway", bridge)?;
        Ok(self
            .host()
            .gateways
            .get(bridge)
            .cloned()
            .unwrap_or_default())
    }

    async fn ensure_gateway(
        &self,
        bridge: &str,
        gateway: Ipv4Net,
        mtu: u32,
    ) -> Result<Vec<GatewayDrift>, InterfaceError> {
        lock(&self.log).call("ensure_gateway", bridge)?;
        let mut h = self.host();
        if h.missing_bridges.contains(bridge) {
            return Err(InterfaceError::NotFound {
                name: bridge.to_string(),
            });
        }
        let cur = h.gateways.get(bridge).cloned().unwrap_or(ObservedGateway {
            exists: true,
            ..Default::default()
        });
        let diffs = cur.differences(gateway, mtu);
        if !diffs.is_empty() {
            h.gateways.insert(
                bridge.to_string(),
                ObservedGateway {
                    exists: true,
                    mtu,
                    up: true,
                    addresses: vec![gateway],
                    tx_checksum: Some(false),
                },
            );
            let mut l = lock(&self.log);
            for d in &diffs {
                l.write(format!("gateway {bridge}: {d}"));
            }
        }
        Ok(diffs)
    }

    fn watch(&self) -> BoxStream<'static, LinkEvent> {
        self.watchers.subscribe()
    }

    async fn watch_container(
        &self,
        ns: &ContainerNs,
    ) -> Result<BoxStream<'static, NamespaceChange>, InterfaceError> {
        lock(&self.log).call("watch_container", &ns.pid.to_string())?;
        if self.host().dead_pids.contains(&ns.pid) {
            return Err(InterfaceError::Namespace {
                pid: ns.pid,
                source: gone(ns.pid),
            });
        }
        Ok(self.ns_watchers.subscribe(ns.pid))
    }
}

// ====================================================================== Address probes

/// The fake segments behind the bridges: who answers a probe for which address.
pub struct FakeProber {
    /// Claims heard for an address, on whichever bridge it is probed.
    claims: Mutex<BTreeMap<Ipv4Addr, Vec<Claim>>>,
    log: Mutex<Log<ProbeError>>,
}

impl Default for FakeProber {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeProber {
    pub fn new() -> Self {
        FakeProber {
            claims: Mutex::new(BTreeMap::new()),
            log: Mutex::new(Log::default()),
        }
    }

    /// A host with `mac` answers probes for `address` from now on.
    pub fn squat(&self, address: Ipv4Addr, mac: Mac) {
        lock(&self.claims).entry(address).or_default().push(Claim {
            mac,
            kind: ClaimKind::Reply,
        });
    }

    /// Nobody answers for `address` any more.
    pub fn leave(&self, address: Ipv4Addr) {
        lock(&self.claims).remove(&address);
    }

    /// Every probe: `probe BRIDGE ADDRESS`.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.log).calls.clone()
    }

    pub fn clear_log(&self) {
        lock(&self.log).calls.clear();
    }

    pub fn fail_next(&self, err: ProbeError) {
        lock(&self.log).failures.push_back(("probe".into(), err));
    }
}

#[async_trait]
impl AddressProber for FakeProber {
    async fn probe(&self, bridge: &str, address: Ipv4Addr) -> Result<Vec<Claim>, ProbeError> {
        lock(&self.log).call("probe", &format!("{bridge} {address}"))?;
        Ok(lock(&self.claims)
            .get(&address)
            .cloned()
            .unwrap_or_default())
    }
}

// ====================================================================== Open vSwitch

pub struct FakeOvs {
    node: String,
    state: Mutex<OvsState>,
    log: Mutex<Log<OvsError>>,
    watchers: Watchers<OvsEvent>,
}

fn owned_ids(node: &str, object: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (owner::MANAGED.to_string(), "true".to_string()),
        (owner::NODE.to_string(), node.to_string()),
        (owner::OBJECT.to_string(), object.to_string()),
    ])
}

fn fake_port(
    name: &str,
    kind: &PortKind,
    protected: bool,
    ids: BTreeMap<String, String>,
    mtu: Option<u32>,
) -> ObservedPort {
    ObservedPort {
        name: name.to_string(),
        protected,
        owned: ids.get(owner::MANAGED).map(String::as_str) == Some("true"),
        external_ids: ids,
        interfaces: vec![ObservedInterface {
            name: name.to_string(),
            kind: kind.ovs_type().to_string(),
            options: kind.options(),
            mtu_request: mtu,
            ofport: Some(1),
            error: None,
        }],
    }
}

impl FakeOvs {
    pub fn new(node: &str) -> Self {
        FakeOvs {
            node: node.to_string(),
            state: Mutex::new(OvsState::default()),
            log: Mutex::new(Log::default()),
            watchers: Watchers::new(),
        }
    }

    /// With a bridge topo does not own (like the lab's `br-phy`).
    pub fn with_foreign_bridge(self, name: &str) -> Self {
        self.state().bridges.insert(
            name.to_string(),
            ObservedBridge {
                name: name.to_string(),
                datapath_type: "netdev".into(),
                ports: BTreeMap::from([(
                    name.to_string(),
                    fake_port(name, &PortKind::Internal, false, BTreeMap::new(), None),
                )]),
                ..Default::default()
            },
        );
        self
    }

    pub fn state(&self) -> MutexGuard<'_, OvsState> {
        lock(&self.state)
    }

    /// Every call: `observe`, `apply N`, `reattach_port BRIDGE/PORT`.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.log).calls.clone()
    }

    /// One entry per committed transaction: the changes, `Debug`-formatted, `; `-separated;
    /// `reattach BRIDGE/PORT` for a `reattach_port` of an existing port.
    pub fn writes(&self) -> Vec<String> {
        lock(&self.log).writes.clone()
    }

    pub fn clear_log(&self) {
        let mut l = lock(&self.log);
        l.calls.clear();
        l.writes.clear();
    }

    pub fn fail_next(&self, op: &str, err: OvsError) {
        lock(&self.log).failures.push_back((op.to_string(), err));
    }

    pub fn emit(&self, ev: OvsEvent) {
        self.watchers.emit(ev);
    }

    /// Deletes a port behind the agent's back (and sends the monitor update).
    pub fn delete_port_by_hand(&self, bridge: &str, port: &str) {
        let removed = self
            .state()
            .bridges
            .get_mut(bridge)
            .and_then(|b| b.ports.remove(port));
        if let Some(p) = removed {
            let object = p.external_ids.get(owner::OBJECT).cloned();
            self.emit(OvsEvent::Changed {
                table: OvsTable::Port,
                name: port.to_string(),
                change: RowChange::Deleted,
                object: object.clone(),
            });
            self.emit(OvsEvent::Changed {
                table: OvsTable::Interface,
                name: port.to_string(),
                change: RowChange::Deleted,
                object,
            });
        }
    }

    /// Deletes a bridge behind the agent's back (and sends the monitor update).
    pub fn delete_bridge_by_hand(&self, bridge: &str) {
        let removed = self.state().bridges.remove(bridge);
        if let Some(b) = removed {
            self.emit(OvsEvent::Changed {
                table: OvsTable::Bridge,
                name: bridge.to_string(),
                change: RowChange::Deleted,
                object: b.external_ids.get(owner::OBJECT).cloned(),
            });
        }
    }

    fn apply_one(&self, s: &mut OvsState, c: &OvsChange) {
        match c {
            OvsChange::AddBridge {
                name,
                datapath,
                rstp,
                mtu,
                object,
            } => {
                let ids = owned_ids(&self.node, object);
                let internal = fake_port(name, &PortKind::Internal, false, ids.clone(), Some(*mtu));
                s.bridges.insert(
                    name.clone(),
                    ObservedBridge {
                        name: name.clone(),
                        datapath_type: datapath.ovs_type().to_string(),
                        rstp: *rstp,
                        owned: true,
                        external_ids: ids,
                        ports: BTreeMap::from([(name.clone(), internal)]),
                    },
                );
            }
            OvsChange::UpdateBridge {
                name,
                datapath,
                rstp,
                mtu,
            } => {
                if let Some(b) = s.bridges.get_mut(name) {
                    b.datapath_type = datapath.ovs_type().to_string();
                    b.rstp = *rstp;
                    if let Some(i) = b.ports.get_mut(name).and_then(|p| p.interfaces.first_mut()) {
                        i.mtu_request = Some(*mtu);
                    }
                }
            }
            OvsChange::DeleteBridge { name } => {
                s.bridges.remove(name);
            }
            OvsChange::AddPort {
                bridge,
                name,
                kind,
                protected,
                object,
            } => {
                if let Some(b) = s.bridges.get_mut(bridge) {
                    b.ports.insert(
                        name.clone(),
                        fake_port(name, kind, *protected, owned_ids(&self.node, object), None),
                    );
                }
            }
            OvsChange::UpdatePort {
                bridge,
                name,
                kind,
                protected,
            } => {
                if let Some(p) = s
                    .bridges
                    .get_mut(bridge)
                    .and_then(|b| b.ports.get_mut(name))
                {
                    p.protected = *protected;
                    if let Some(i) = p.interfaces.first_mut() {
                        i.kind = kind.ovs_type().to_string();
                        i.options = kind.options();
                    }
                }
            }
            OvsChange::DeletePort { bridge, name } => {
                if let Some(b) = s.bridges.get_mut(bridge) {
                    b.ports.remove(name);
                }
            }
        }
    }
}

#[async_trait]
impl Ovs for FakeOvs {
    async fn observe(&self) -> Result<OvsState, OvsError> {
        lock(&self.log).call("observe", "")?;
        Ok(self.state().clone())
    }

    async fn apply(&self, changes: &[OvsChange]) -> Result<(), OvsError> {
        lock(&self.log).call("apply", &changes.len().to_string())?;
        let mut s = self.state();
        check_changes(&s, changes)?;
        let changes = effective_changes(&s, changes);
        if changes.is_empty() {
            return Ok(());
        }
        for c in &changes {
            self.apply_one(&mut s, c);
        }
        drop(s);
        let text: Vec<String> = changes.iter().map(|c| format!("{c:?}")).collect();
        lock(&self.log).write(text.join("; "));
        Ok(())
    }

    async fn reattach_port(&self, bridge: &str, name: &str) -> Result<(), OvsError> {
        lock(&self.log).call("reattach_port", &format!("{bridge}/{name}"))?;
        let s = self.state();
        let Some(port) = s.bridges.get(bridge).and_then(|b| b.ports.get(name)) else {
            return Ok(());
        };
        crate::backend::ovs::reattach_settings(port)?;
        drop(s);
        lock(&self.log).write(format!("reattach {bridge}/{name}"));
        Ok(())
    }

    async fn purge_datapath_flows(&self) -> Result<(), OvsError> {
        lock(&self.log).call("purge_datapath_flows", "")?;
        lock(&self.log).write("purge datapath flows".to_string());
        Ok(())
    }

    fn watch(&self) -> BoxStream<'static, OvsEvent> {
        self.watchers.subscribe()
    }
}

// ====================================================================== NAT

pub struct FakeNat {
    /// By namespace: `node`, or the container's pid.
    tables: Mutex<BTreeMap<NsKey, ObservedNat>>,
    dead_pids: Mutex<BTreeSet<u32>>,
    log: Mutex<Log<NatError>>,
    node_watchers: Watchers<NatEvent>,
    ns_watchers: NsWatchers<NatEvent>,
}

/// A namespace of the fake: the node's, or a container's by pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NsKey {
    Node,
    Pid(u32),
}

impl From<&NetNs> for NsKey {
    fn from(ns: &NetNs) -> Self {
        match ns {
            NetNs::Node => NsKey::Node,
            NetNs::Container(c) => NsKey::Pid(c.pid),
        }
    }
}

impl Default for FakeNat {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeNat {
    pub fn new() -> Self {
        FakeNat {
            tables: Mutex::new(BTreeMap::new()),
            dead_pids: Mutex::new(BTreeSet::new()),
            log: Mutex::new(Log::default()),
            node_watchers: Watchers::new(),
            ns_watchers: NsWatchers::new(),
        }
    }

    /// What each namespace holds (absent: never touched).
    pub fn tables(&self) -> MutexGuard<'_, BTreeMap<NsKey, ObservedNat>> {
        lock(&self.tables)
    }

    /// The rules in force in `ns` (empty when no table).
    pub fn rules(&self, ns: NsKey) -> NatRules {
        self.tables()
            .get(&ns)
            .filter(|o| o.table_exists)
            .map(|o| o.rules.clone())
            .unwrap_or_default()
    }

    /// Makes the namespace of `pid` unreachable (the container is gone); its watches end.
    pub fn kill_pid(&self, pid: u32) {
        lock(&self.dead_pids).insert(pid);
        self.ns_watchers.end(pid);
    }

    /// Marks the table of `ns` as edited by hand (observe reports it not exact), and
    /// notifies as the kernel would.
    pub fn tamper(&self, ns: NsKey) {
        if let Some(o) = self.tables().get_mut(&ns) {
            o.exact = false;
        }
        self.notify(ns, NftObject::Rule, false);
    }

    /// Deletes the table of `ns` by hand (`nft delete table ip topo`), and notifies.
    pub fn delete_by_hand(&self, ns: NsKey) {
        if let Some(o) = self.tables().get_mut(&ns) {
            *o = ObservedNat {
                route_localnet: o.route_localnet,
                ip_forward: o.ip_forward,
                ..ObservedNat::default()
            };
        }
        self.notify(ns, NftObject::Table, true);
    }

    /// Flushes the table of `ns` by hand (`nft flush table ip topo`: chains stay), and notifies.
    pub fn flush_by_hand(&self, ns: NsKey) {
        if let Some(o) = self.tables().get_mut(&ns) {
            o.rules = NatRules::default();
        }
        self.notify(ns, NftObject::Rule, true);
    }

    fn notify(&self, ns: NsKey, object: NftObject, deleted: bool) {
        let ev = NatEvent::Changed { object, deleted };
        match ns {
            NsKey::Node => self.node_watchers.emit(ev),
            NsKey::Pid(pid) => self.ns_watchers.emit(pid, ev),
        }
    }

    /// How many `watch_container` streams of `pid`'s namespace are open.
    pub fn namespace_watches(&self, pid: u32) -> usize {
        self.ns_watchers.open(pid)
    }

    /// Every call: `observe NS`, `apply NS`, `remove NS` (NS: `node` or `pid:N`).
    pub fn calls(&self) -> Vec<String> {
        lock(&self.log).calls.clone()
    }

    /// Every change: `replace NS: <rules>` / `delete NS` / `route_localnet NS` / `ip_forward NS`.
    pub fn writes(&self) -> Vec<String> {
        lock(&self.log).writes.clone()
    }

    pub fn clear_log(&self) {
        let mut l = lock(&self.log);
        l.calls.clear();
        l.writes.clear();
    }

    pub fn fail_next(&self, op: &str, err: NatError) {
        lock(&self.log).failures.push_back((op.to_string(), err));
    }

    fn check_ns(&self, ns: NsKey) -> Result<(), NatError> {
        if let NsKey::Pid(pid) = ns
            && lock(&self.dead_pids).contains(&pid)
        {
            return Err(NatError::Namespace {
                pid,
                source: gone(pid),
            });
        }
        Ok(())
    }
}

fn ns_name(ns: NsKey) -> String {
    match ns {
        NsKey::Node => "node".to_string(),
        NsKey::Pid(p) => format!("pid:{p}"),
    }
}

#[async_trait]
impl Nat for FakeNat {
    async fn observe(&self, ns: &NetNs) -> Result<ObservedNat, NatError> {
        let ns = NsKey::from(ns);
        lock(&self.log).call("observe", &ns_name(ns))?;
        self.check_ns(ns)?;
        Ok(self.tables().get(&ns).cloned().unwrap_or_default())
    }

    async fn apply(&self, ns: &NetNs, rules: &NatRules) -> Result<(), NatError> {
        let ns = NsKey::from(ns);
        lock(&self.log).call("apply", &ns_name(ns))?;
        self.check_ns(ns)?;
        let rules = rules.clone().normalized();
        if rules.is_empty() {
            self.remove_table(ns);
            return Ok(());
        }
        let mut t = self.tables();
        let o = t.entry(ns).or_default();
        let mut l = lock(&self.log);
        if rules.needs_route_localnet() && !o.route_localnet {
            o.route_localnet = true;
            l.write(format!("route_localnet {}", ns_name(ns)));
        }
        if rules.needs_forwarding() && !o.ip_forward {
            o.ip_forward = true;
            l.write(format!("ip_forward {}", ns_name(ns)));
        }
        l.write(format!("replace {}: {rules:?}", ns_name(ns)));
        o.table_exists = true;
        o.exact = true;
        o.rules = rules;
        Ok(())
    }

    async fn remove(&self, ns: &NetNs) -> Result<(), NatError> {
        let ns = NsKey::from(ns);
        lock(&self.log).call("remove", &ns_name(ns))?;
        self.check_ns(ns)?;
        self.remove_table(ns);
        Ok(())
    }

    fn watch(&self) -> BoxStream<'static, NatEvent> {
        self.node_watchers.subscribe()
    }

    async fn watch_container(
        &self,
        ns: &ContainerNs,
    ) -> Result<BoxStream<'static, NatEvent>, NatError> {
        let key = NsKey::Pid(ns.pid);
        lock(&self.log).call("watch_container", &ns_name(key))?;
        self.check_ns(key)?;
        Ok(self.ns_watchers.subscribe(ns.pid))
    }
}

impl FakeNat {
    fn remove_table(&self, ns: NsKey) {
        let mut t = self.tables();
        let Some(o) = t.get_mut(&ns) else { return };
        if o.table_exists {
            o.table_exists = false;
            o.exact = true;
            o.rules = NatRules::default();
            lock(&self.log).write(format!("delete {}", ns_name(ns)));
        }
    }
}

// ====================================================================== Host ports

/// The node's sockets and addresses as the fake holds them: arrange them with `host()`.
pub struct FakeHostPorts {
    host: Mutex<HostPortsView>,
    log: Mutex<Log<HostPortsError>>,
}

impl Default for FakeHostPorts {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeHostPorts {
    /// A node with the addresses 127.0.0.1 and 192.168.100.1 and no listening socket.
    pub fn new() -> Self {
        FakeHostPorts {
            host: Mutex::new(HostPortsView {
                listeners: vec![],
                addresses: vec![Ipv4Addr::LOCALHOST, Ipv4Addr::new(192, 168, 100, 1)],
            }),
            log: Mutex::new(Log::default()),
        }
    }

    pub fn host(&self) -> MutexGuard<'_, HostPortsView> {
        lock(&self.host)
    }

    /// A process named `name` (pid `pid`) listening on `address:port`.
    pub fn listen(&self, protocol: Protocol, address: &str, port: u16, name: &str, pid: u32) {
        self.host().listeners.push(Listener {
            protocol,
            address: address
                .parse()
                .unwrap_or(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            port,
            v6_only: false,
            inode: 1000 + pid,
            uid: 0,
            process: Some(NodeProcess {
                pid,
                name: name.to_string(),
            }),
        });
    }

    /// Closes every socket on `port`.
    pub fn close(&self, port: u16) {
        self.host().listeners.retain(|l| l.port != port);
    }

    /// Every call: `observe PORTS`.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.log).calls.clone()
    }

    pub fn clear_log(&self) {
        lock(&self.log).calls.clear();
    }

    pub fn fail_next(&self, op: &str, err: HostPortsError) {
        lock(&self.log).failures.push_back((op.to_string(), err));
    }
}

#[async_trait]
impl HostPorts for FakeHostPorts {
    async fn observe(&self, ports: &[(u16, Protocol)]) -> Result<HostPortsView, HostPortsError> {
        let shown: Vec<String> = ports.iter().map(|(p, pr)| format!("{p}/{pr}")).collect();
        lock(&self.log).call("observe", &shown.join(","))?;
        let h = self.host();
        Ok(HostPortsView {
            listeners: h
                .listeners
                .iter()
                .filter(|l| ports.contains(&(l.port, l.protocol)))
                .cloned()
                .collect(),
            addresses: h.addresses.clone(),
        })
    }
}

/// An attachment for tests (`eth0` of `container` with `address` on `network`).
pub fn attachment(container: &str, network: &str, address: &str) -> AttachmentEntry {
    let address: Ipv4Net = address
        .parse()
        .unwrap_or_else(|_| Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 2), 24).unwrap_or_default());
    let gw = Ipv4Addr::from(u32::from(address.network()) + 1);
    AttachmentEntry {
        network: network.to_string(),
        bridge: topo_schema::names::bridge_name(network),
        interface: "eth0".to_string(),
        host_veth: topo_schema::names::veth_host_name(container, "eth0"),
        address,
        mtu: topo_schema::net::DEFAULT_MTU,
        default_gateway: Some(gw),
        tx_checksum_off: true,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap as Map;

    use topo_schema::kinds::{Datapath, Protocol};

    use super::*;
    use crate::backend::{LinkDnat, plan_ovs};

    fn entry(name: &str) -> ContainerEntry {
        ContainerEntry {
            name: name.into(),
            uid: "u".into(),
            generation: 1,
            docker_name: format!("topo-{name}"),
            image: "topo/busybox:latest".into(),
            command: vec![],
            env: Map::new(),
            pull_policy: topo_schema::kinds::PullPolicy::IfNotPresent,
            hosts: vec![],
            attachments: vec![],
            ports: vec![],
            links: vec![],
            hardening: Default::default(),
        }
    }

    #[tokio::test]
    async fn containers_record_and_collide() {
        let f = FakeContainers::new("node1").with_image("topo/busybox:latest");
        let mut events = f.watch();
        assert!(f.image_present("topo/busybox:latest").await.unwrap());
        assert!(f.writes().is_empty());
        let pulled: Vec<_> = f.pull("nope:1").collect().await;
        assert!(matches!(
            pulled.as_slice(),
            [Err(ContainerError::ImagePullFailed { .. })]
        ));
        let id = f.create_and_start(&entry("web")).await.unwrap();
        assert!(
            matches!(events.next().await, Some(ContainerEvent::Changed { action, .. }) if action == "start")
        );
        assert!(matches!(
            f.create_and_start(&entry("web")).await,
            Err(ContainerError::AlreadyExists { .. })
        ));
        f.host()
            .foreign_names
            .insert("topo-db".into(), Some("node2".into()));
        assert!(matches!(
            f.create_and_start(&entry("db")).await,
            Err(ContainerError::NameOwnedByOtherNode { node, .. }) if node == "node2"
        ));
        f.kill("web", 137);
        assert!(!f.container("web").unwrap().running);
        f.start(&id).await.unwrap();
        assert!(f.container("web").unwrap().running);
        f.fail_next("list", ContainerError::NotOwned { id: "x".into() });
        assert!(f.list().await.is_err());
        assert_eq!(f.list().await.unwrap().len(), 1);
        f.remove(&id).await.unwrap();
        assert_eq!(
            f.writes(),
            vec![
                "pull nope:1".to_string(),
                "create topo-web".into(),
                format!("start {id}"),
                format!("remove {id}")
            ]
        );
    }

    #[tokio::test]
    async fn interfaces_write_only_differences() {
        let f = FakeInterfaces::new();
        let att = attachment("web", "net", "10.2.1.5/16");
        let (c100, c101) = (ContainerNs::new(100, "c100"), ContainerNs::new(101, "c101"));
        let changed = f.ensure_attachment(&c100, &att).await.unwrap();
        assert_eq!(
            changed.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec![format!("host veth {} is missing", att.host_veth)]
        );
        assert!(
            f.observe_attachment(&c100, &att)
                .await
                .unwrap()
                .differences(&att)
                .is_empty()
        );
        f.clear_log();
        assert!(f.ensure_attachment(&c100, &att).await.unwrap().is_empty());
        assert!(f.writes().is_empty());
        // A new container process: the old pair is not in its namespace.
        assert!(
            f.observe_attachment(&c101, &att)
                .await
                .unwrap()
                .peer
                .is_none()
        );
        assert!(matches!(
            f.remove_host_veth("eth0").await,
            Err(InterfaceError::NotOwned { .. })
        ));
        let mut w = f.watch();
        f.delete_by_hand(&att.host_veth);
        assert!(matches!(
            w.next().await,
            Some(LinkEvent::Changed {
                kind: LinkChangeKind::Removed,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn ovs_applies_plan_and_refuses_foreign() {
        let f = FakeOvs::new("node1").with_foreign_bridge("br-phy");
        let desired = vec![crate::backend::DesiredBridge {
            name: "tb-net".into(),
            datapath: Datapath::Netdev,
            rstp: false,
            mtu: 1458,
            object: "network/net".into(),
            ports: vec![crate::backend::DesiredPort {
                name: "tg-node2".into(),
                kind: PortKind::Gre {
                    remote_ip: Ipv4Addr::new(192, 168, 100, 2),
                    key: 1,
                },
                protected: true,
                object: "tunnel/t".into(),
            }],
        }];
        let plan = plan_ovs(&desired, &f.observe().await.unwrap());
        f.apply(&plan).await.unwrap();
        assert_eq!(f.writes().len(), 1, "one transaction");
        assert!(plan_ovs(&desired, &f.observe().await.unwrap()).is_empty());
        f.apply(&[]).await.unwrap();
        assert_eq!(f.writes().len(), 1, "an empty change list writes nothing");
        assert!(matches!(
            f.apply(&[OvsChange::DeleteBridge {
                name: "br-phy".into()
            }])
            .await,
            Err(OvsError::NotOwned { .. })
        ));
        f.clear_log();
        f.reattach_port("tb-net", "tg-node2").await.unwrap();
        f.reattach_port("tb-net", "absent").await.unwrap();
        assert!(matches!(
            f.reattach_port("br-phy", "br-phy").await,
            Err(OvsError::NotOwned { .. })
        ));
        assert_eq!(f.writes(), vec!["reattach tb-net/tg-node2".to_string()]);
        let mut w = f.watch();
        f.delete_port_by_hand("tb-net", "tg-node2");
        assert!(
            matches!(w.next().await, Some(OvsEvent::Changed { object: Some(o), .. }) if o == "tunnel/t")
        );
        assert_eq!(plan_ovs(&desired, &f.observe().await.unwrap()).len(), 1);
    }

    #[tokio::test]
    async fn nat_replaces_and_observes() {
        let f = FakeNat::new();
        let rules = NatRules {
            links: vec![LinkDnat {
                listen: "127.0.0.1:6379".parse().unwrap(),
                protocol: Protocol::Tcp,
                target: "10.2.3.4:6379".parse().unwrap(),
            }],
            ..Default::default()
        };
        let c = ContainerNs::new(42, "c42");
        let ns = &NetNs::Container(c.clone());
        let mut watch = f.watch_container(&c).await.unwrap();
        assert!(!f.observe(ns).await.unwrap().satisfies(&rules));
        f.apply(ns, &rules).await.unwrap();
        assert!(f.observe(ns).await.unwrap().satisfies(&rules));
        f.tamper(NsKey::Pid(42));
        assert!(matches!(watch.next().await, Some(NatEvent::Changed { .. })));
        assert!(!f.observe(ns).await.unwrap().satisfies(&rules));
        f.apply(ns, &NatRules::default()).await.unwrap();
        assert!(f.observe(ns).await.unwrap().satisfies(&NatRules::default()));
        f.kill_pid(42);
        assert_eq!(watch.next().await, None, "a dead namespace's watch ends");
        assert!(matches!(
            f.observe(ns).await,
            Err(NatError::Namespace { pid: 42, .. })
        ));
        assert_eq!(f.writes().len(), 3, "{:?}", f.writes());
    }
}
