//! The reconciler: level-triggered and idempotent, one slice entry key at a time.
//!
//! [`reconcile`] compares one key's desired entry with what the host holds and changes only
//! the difference; a key with nothing to do calls only the backends' observe functions. What
//! failed goes to [`error_policy`], which picks the requeue delay (exponential with jitter per
//! key, like kube-rs's controller runtime). [`Runner`] drives both from the [`WorkQueue`].
//!
//! Keys and what they own on the host:
//! * `node`: nothing (the node's settings reach the host through its bridges).
//! * `bridges/<network>`: the OVS bridge with its internal port, and the gateway address and
//!   MTU on that port.
//! * `tunnels/<port>`: one GRE port on its network's bridge.
//! * `containers/<name>`: the Docker container, one veth pair + OVS port per attachment, and
//!   the link rules (nftables table `topo`) in the container's namespace.
//! * [`NAT_KEY`]: the node's nftables table `topo` (masquerade per network, DNAT of every
//!   published port), derived from the whole slice.
//! * [`GC_KEY`]: removes owned containers, bridges, ports, veths and reports no key wants.
//!
//! Adoption: what exists and matches is left untouched, so an agent restart restarts no
//! container and drops no packet. Drift: a change made to a key that was already in force
//! with the same entry is a repair of something changed outside topo and is recorded as a
//! `DriftRepaired` Warning event.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backoff::ExponentialBackoff;
use backoff::backoff::Backoff;
use chrono::Utc;
use tracing::Instrument;

use topo_schema::api::ObservedReport;
use topo_schema::kinds::{Kind, ObjectRef};
use topo_schema::names;
use topo_schema::slice::{
    AttachmentEntry, BridgeEntry, ContainerEntry, LinkRule, SliceEntry, TunnelEntry, owner,
};

use crate::backend::{
    ContainerError, Containers, DesiredBridge, DesiredPort, InterfaceError, Interfaces, LinkDnat,
    Nat, NatError, NatRules, NetNs, ObservedContainer, Ovs, OvsChange, OvsError, OvsState,
    PortDnat, PortKind, plan_ovs,
};
use crate::events::Recorder;
use crate::queue::{GC_KEY, NAT_KEY, WorkQueue};
use crate::report::{ReportError, Reporter};
use crate::watch::{SliceStore, SliceValue};

/// The four host backends.
#[derive(Clone)]
pub struct Backends {
    pub containers: Arc<dyn Containers>,
    pub interfaces: Arc<dyn Interfaces>,
    pub ovs: Arc<dyn Ovs>,
    pub nat: Arc<dyn Nat>,
}

/// What to do with a key after a successful reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing until the slice or the host changes (or the periodic resync).
    AwaitChange,
    Requeue(Duration),
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("failed to pull image {image} for container {container}: {source}")]
    ImagePull {
        container: String,
        image: String,
        #[source]
        source: Box<ContainerError>,
    },
    #[error("failed to create container {container}: {source}")]
    ContainerCreate {
        container: String,
        #[source]
        source: Box<ContainerError>,
    },
    #[error("failed to start container {container}: {source}")]
    ContainerStart {
        container: String,
        #[source]
        source: Box<ContainerError>,
    },
    #[error("failed to remove container {container}: {source}")]
    ContainerRemove {
        container: String,
        #[source]
        source: Box<ContainerError>,
    },
    #[error("failed to inspect containers: {source}")]
    ContainerInspect {
        #[source]
        source: Box<ContainerError>,
    },
    #[error("container {container} exited (code {exit_code}); restarting in {wait:?}")]
    CrashLoop {
        container: String,
        exit_code: i64,
        wait: Duration,
    },
    #[error("container {container} is not running after it was started")]
    NotRunning { container: String },
    #[error("container {container} exited while it was being plumbed")]
    ContainerGone { container: String },
    #[error("failed to plumb {interface} of container {container}: {source}")]
    Plumbing {
        container: String,
        interface: String,
        #[source]
        source: Box<InterfaceError>,
    },
    #[error("failed to read the node's interfaces: {source}")]
    InterfaceList {
        #[source]
        source: Box<InterfaceError>,
    },
    #[error("failed to remove interface {name}: {source}")]
    InterfaceRemove {
        name: String,
        #[source]
        source: Box<InterfaceError>,
    },
    #[error("failed to set gateway {gateway} on bridge {bridge}: {source}")]
    Gateway {
        bridge: String,
        gateway: String,
        #[source]
        source: Box<InterfaceError>,
    },
    #[error("failed to read the switch: {source}")]
    OvsObserve {
        #[source]
        source: Box<OvsError>,
    },
    #[error("failed to change the switch ({what}): {source}")]
    OvsApply {
        what: String,
        #[source]
        source: Box<OvsError>,
    },
    #[error("bridge {bridge} does not exist yet")]
    BridgeNotReady { bridge: String },
    #[error("bridge {bridge} exists and topo does not own it")]
    BridgeNotOwned { bridge: String },
    #[error("port {port} exists on bridge {bridge} and topo does not own it")]
    PortNotOwned { bridge: String, port: String },
    #[error("failed to program links of container {container}: {source}")]
    Links {
        container: String,
        #[source]
        source: Box<NatError>,
    },
    #[error("failed to program the node's NAT table: {source}")]
    NodeNat {
        #[source]
        source: Box<NatError>,
    },
    #[error("failed to write reports: {source}")]
    Report {
        #[source]
        source: ReportError,
    },
}

impl ReconcileError {
    /// The CamelCase reason shown in status.
    pub fn reason(&self) -> &'static str {
        match self {
            ReconcileError::ImagePull { .. } => "ImagePullFailed",
            ReconcileError::ContainerCreate { source, .. }
                if matches!(**source, ContainerError::NameOwnedByOtherNode { .. }) =>
            {
                "NameHeldByOtherNode"
            }
            ReconcileError::ContainerCreate { .. } => "ContainerCreateFailed",
            ReconcileError::ContainerStart { .. } => "ContainerStartFailed",
            ReconcileError::ContainerRemove { .. } => "ContainerRemoveFailed",
            ReconcileError::ContainerInspect { .. } => "DockerUnavailable",
            ReconcileError::CrashLoop { .. } => "CrashLoopBackOff",
            ReconcileError::NotRunning { .. } | ReconcileError::ContainerGone { .. } => {
                "ContainerExited"
            }
            ReconcileError::Plumbing { .. } | ReconcileError::InterfaceList { .. } => {
                "PlumbingFailed"
            }
            ReconcileError::InterfaceRemove { .. } => "CleanupFailed",
            ReconcileError::Gateway { .. } => "GatewayFailed",
            ReconcileError::OvsObserve { .. } | ReconcileError::OvsApply { .. } => "SwitchFailed",
            ReconcileError::BridgeNotReady { .. } => "WaitingForBridge",
            ReconcileError::BridgeNotOwned { .. } | ReconcileError::PortNotOwned { .. } => {
                "NameConflict"
            }
            ReconcileError::Links { .. } => "LinkProgrammingFailed",
            ReconcileError::NodeNat { .. } => "NatFailed",
            ReconcileError::Report { .. } => "ReportFailed",
        }
    }
}

/// The error with its sources, `: `-joined (backend errors keep details in their sources).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Restart bookkeeping of one container (the agent restarts containers, Docker does not).
#[derive(Debug, Clone, Default)]
struct RestartState {
    id: String,
    count: u32,
    /// Consecutive exits within [`MIN_UPTIME`] of their start.
    quick_exits: u32,
    /// `finished_at` of the last exit counted, so one exit is counted once.
    last_exit: Option<chrono::DateTime<Utc>>,
}

/// A container that exits sooner than this after its start, twice in a row, is crash-looping:
/// its restarts back off (1 s, 2 s, 4 s, ... up to [`MAX_CRASH_BACKOFF`]).
const MIN_UPTIME: Duration = Duration::from_secs(10);
const MAX_CRASH_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Default)]
struct Memory {
    /// The entry each key last reconciled successfully with.
    applied: HashMap<String, SliceEntry>,
    /// The store holds a complete list: removals and garbage collection may act.
    synced: bool,
    restarts: HashMap<String, RestartState>,
    /// The node NAT rules last put in force.
    node_nat: Option<NatRules>,
    /// Host veths made anew whose OVS port has not been re-added since: a reconcile that
    /// failed in between must not leave the port on the old device when it retries.
    stale_ports: HashSet<String>,
}

/// Everything a reconcile needs. Shared by the workers.
pub struct Context {
    pub node: String,
    pub backends: Backends,
    pub store: SliceStore,
    pub reporter: Reporter,
    pub recorder: Recorder,
    pub queue: Arc<WorkQueue>,
    memory: Mutex<Memory>,
}

impl Context {
    pub fn new(
        node: &str,
        backends: Backends,
        store: SliceStore,
        reporter: Reporter,
        recorder: Recorder,
        queue: Arc<WorkQueue>,
    ) -> Self {
        Context {
            node: node.to_string(),
            backends,
            store,
            reporter,
            recorder,
            queue,
            memory: Mutex::new(Memory::default()),
        }
    }

    fn mem(&self) -> std::sync::MutexGuard<'_, Memory> {
        // Never held across an await; every section leaves the memory consistent.
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The store is complete (the first list arrived). Before that no key is reconciled,
    /// so an empty store is never mistaken for "remove everything".
    pub fn mark_synced(&self) {
        self.mem().synced = true;
    }

    pub fn is_synced(&self) -> bool {
        self.mem().synced
    }

    fn applied(&self, key: &str) -> Option<SliceEntry> {
        self.mem().applied.get(key).cloned()
    }

    fn set_applied(&self, key: &str, entry: SliceEntry) {
        self.mem().applied.insert(key.to_string(), entry);
    }

    fn forget(&self, key: &str) {
        let mut m = self.mem();
        m.applied.remove(key);
        if let Some(name) = key.strip_prefix("containers/") {
            m.restarts.remove(name);
        }
    }

    /// Every key the queue should see on a full resync.
    pub fn all_keys(&self) -> Vec<String> {
        let mut keys = self.store.keys();
        // Keys the agent applied and the store lost (removed while a worker was busy) too.
        keys.extend(self.mem().applied.keys().cloned());
        keys.sort();
        keys.dedup();
        keys.push(NAT_KEY.to_string());
        keys.push(GC_KEY.to_string());
        keys
    }
}

// ==================================================================================== entry

/// Reconciles one key. See the module documentation for what each key owns.
pub async fn reconcile(key: &str, ctx: &Context) -> Result<Action, ReconcileError> {
    if !ctx.is_synced() {
        // The first list enqueues every key; anything queued earlier (a drift event) waits.
        return Ok(Action::AwaitChange);
    }
    match key {
        NAT_KEY => return reconcile_node_nat(ctx).await,
        GC_KEY => return collect_garbage(ctx).await,
        _ => {}
    }
    let entry = match ctx.store.get(key) {
        Some(SliceValue::Entry(e)) => e,
        Some(SliceValue::Unsupported { version }) => {
            return leave_alone(
                ctx,
                key,
                &format!("slice version {version} is not supported by this agent"),
            )
            .await;
        }
        Some(SliceValue::Invalid { error }) => {
            return leave_alone(ctx, key, &format!("the slice entry is not valid: {error}")).await;
        }
        None => return remove_key(ctx, key).await,
    };
    let previous = ctx.applied(key);
    let action = match &entry {
        SliceEntry::Node(_) => Action::AwaitChange,
        SliceEntry::Bridge(b) => reconcile_bridge(ctx, b, previous.as_ref()).await?,
        SliceEntry::Tunnel(t) => reconcile_tunnel(ctx, key, t, previous.as_ref()).await?,
        SliceEntry::Container(c) => reconcile_container(ctx, key, c, previous.as_ref()).await?,
    };
    if previous.as_ref() != Some(&entry)
        && !matches!(entry, SliceEntry::Node(_) | SliceEntry::Tunnel(_))
    {
        // Cidrs, masquerade and published ports feed the node's NAT table.
        ctx.queue.add(NAT_KEY);
    }
    ctx.set_applied(key, entry);
    Ok(action)
}

/// The requeue delay after `err`, from the key's backoff.
pub fn error_policy(err: &ReconcileError, backoff: &mut ExponentialBackoff) -> Action {
    let next = backoff.next_backoff().unwrap_or(backoff.max_interval);
    match err {
        // The crash loop carries its own schedule.
        ReconcileError::CrashLoop { wait, .. } => Action::Requeue(*wait),
        // Another node's agent is removing the old container of a moved one: look again
        // soon rather than backing off to a minute.
        ReconcileError::ContainerCreate { source, .. }
            if matches!(**source, ContainerError::NameOwnedByOtherNode { .. }) =>
        {
            Action::Requeue(next.min(Duration::from_secs(2)))
        }
        ReconcileError::BridgeNotReady { .. } => Action::Requeue(next.min(Duration::from_secs(2))),
        // The die event is on its way; look again soon.
        ReconcileError::ContainerGone { .. } => {
            Action::Requeue(next.min(Duration::from_millis(200)))
        }
        _ => Action::Requeue(next),
    }
}

pub fn key_backoff() -> ExponentialBackoff {
    crate::watch::watch_backoff(Duration::from_millis(250), Duration::from_secs(60))
}

async fn leave_alone(ctx: &Context, key: &str, why: &str) -> Result<Action, ReconcileError> {
    tracing::warn!(key, reason = why, "slice entry left alone");
    if let Some(name) = key.strip_prefix("containers/") {
        let report = ObservedReport {
            uid: None,
            object: ObjectRef::new(Kind::Container, name),
            observed_generation: 0,
            ready: false,
            reason: "UnsupportedSliceEntry".into(),
            message: format!(
                "{why}; the agent on {} leaves the container as it is",
                ctx.node
            ),
            container_id: None,
            restart_count: 0,
            endpoint: None,
            time: Utc::now(),
        };
        ctx.reporter
            .sync(key, vec![report])
            .await
            .map_err(|source| ReconcileError::Report { source })?;
    }
    Ok(Action::AwaitChange)
}

fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

// ==================================================================================== bridge

async fn reconcile_bridge(
    ctx: &Context,
    b: &BridgeEntry,
    previous: Option<&SliceEntry>,
) -> Result<Action, ReconcileError> {
    let steady = matches!(previous, Some(SliceEntry::Bridge(p)) if p == b);
    let object = ObjectRef::new(Kind::Network, &b.network);
    let state = ctx
        .backends
        .ovs
        .observe()
        .await
        .map_err(|source| ReconcileError::OvsObserve {
            source: Box::new(source),
        })?;
    let mut changes = Vec::new();
    let mut repairs = Vec::new();
    let mut created = false;
    match state.bridges.get(&b.bridge) {
        None => {
            created = true;
            changes.push(OvsChange::AddBridge {
                name: b.bridge.clone(),
                datapath: b.datapath,
                rstp: b.rstp,
                mtu: b.mtu,
                object: object.to_string(),
            });
            repairs.push(format!(
                "bridge {} was deleted outside topo; recreated",
                b.bridge
            ));
        }
        Some(o) if !o.owned => {
            return Err(ReconcileError::BridgeNotOwned {
                bridge: b.bridge.clone(),
            });
        }
        Some(o) => {
            let internal_mtu = o
                .ports
                .get(&b.bridge)
                .and_then(|p| p.interfaces.iter().find(|i| i.name == b.bridge))
                .and_then(|i| i.mtu_request);
            if o.datapath_type != b.datapath.ovs_type()
                || o.rstp != b.rstp
                || internal_mtu != Some(b.mtu)
            {
                changes.push(OvsChange::UpdateBridge {
                    name: b.bridge.clone(),
                    datapath: b.datapath,
                    rstp: b.rstp,
                    mtu: b.mtu,
                });
                repairs.push(format!(
                    "bridge {} settings (datapath {}, rstp {}, mtu {:?}) were changed outside topo; restored",
                    b.bridge, o.datapath_type, o.rstp, internal_mtu
                ));
            }
        }
    }
    if !changes.is_empty() {
        ctx.backends
            .ovs
            .apply(&changes)
            .await
            .map_err(|source| ReconcileError::OvsApply {
                what: format!("bridge {}", b.bridge),
                source: Box::new(source),
            })?;
    }
    let gw = ctx
        .backends
        .interfaces
        .observe_gateway(&b.bridge)
        .await
        .map_err(|source| ReconcileError::Gateway {
            bridge: b.bridge.clone(),
            gateway: b.gateway.to_string(),
            source: Box::new(source),
        })?;
    let diffs = gw.differences(b.gateway, b.mtu);
    if !diffs.is_empty() {
        ctx.backends
            .interfaces
            .ensure_gateway(&b.bridge, b.gateway, b.mtu)
            .await
            .map_err(|source| ReconcileError::Gateway {
                bridge: b.bridge.clone(),
                gateway: b.gateway.to_string(),
                source: Box::new(source),
            })?;
        if !created {
            repairs.extend(
                diffs
                    .iter()
                    .map(|d| format!("bridge {}: {d} (changed outside topo); restored", b.bridge)),
            );
        }
    }
    if created {
        // Ports go on the bridge once it exists: hand its tunnels and containers on at once
        // instead of leaving them to their backoff.
        for e in ctx.store.entries() {
            match &e {
                SliceEntry::Tunnel(t) if t.bridge == b.bridge => ctx.queue.add(e.key()),
                SliceEntry::Container(c) if c.attachments.iter().any(|a| a.bridge == b.bridge) => {
                    ctx.queue.add(e.key())
                }
                _ => {}
            }
        }
    }
    if steady && !repairs.is_empty() {
        ctx.recorder
            .warning(object, "DriftRepaired", repairs.join("; "))
            .await;
    } else if created {
        ctx.recorder
            .normal(
                object,
                "BridgeCreated",
                format!(
                    "bridge {} ({} datapath) created on {} with gateway {}",
                    b.bridge,
                    b.datapath.ovs_type(),
                    ctx.node,
                    b.gateway
                ),
            )
            .await;
    }
    Ok(Action::AwaitChange)
}

/// The bridge must exist and be ours before ports go on it.
fn check_bridge(state: &OvsState, bridge: &str) -> Result<(), ReconcileError> {
    match state.bridges.get(bridge) {
        None => Err(ReconcileError::BridgeNotReady {
            bridge: bridge.to_string(),
        }),
        Some(b) if !b.owned => Err(ReconcileError::BridgeNotOwned {
            bridge: bridge.to_string(),
        }),
        Some(_) => Ok(()),
    }
}

// ==================================================================================== tunnel

fn gre_kind(t: &TunnelEntry) -> PortKind {
    PortKind::Gre {
        remote_ip: t.remote_ip,
        key: t.key,
    }
}

fn tunnel_report(t: &TunnelEntry, ready: bool, reason: &str, message: String) -> ObservedReport {
    ObservedReport {
        uid: None,
        object: ObjectRef::new(Kind::Tunnel, &t.tunnel),
        observed_generation: 0,
        ready,
        reason: reason.to_string(),
        message,
        container_id: None,
        restart_count: 0,
        endpoint: Some(t.remote_ip.to_string()),
        time: Utc::now(),
    }
}

async fn reconcile_tunnel(
    ctx: &Context,
    key: &str,
    t: &TunnelEntry,
    previous: Option<&SliceEntry>,
) -> Result<Action, ReconcileError> {
    let steady = matches!(previous, Some(SliceEntry::Tunnel(p)) if p == t);
    let object = ObjectRef::new(Kind::Tunnel, &t.tunnel);
    let state = ctx
        .backends
        .ovs
        .observe()
        .await
        .map_err(|source| ReconcileError::OvsObserve {
            source: Box::new(source),
        })?;
    check_bridge(&state, &t.bridge)?;
    let kind = gre_kind(t);
    let mut changes = Vec::new();
    // A tunnel that moved to another port name or bridge leaves its old port behind.
    if let Some(SliceEntry::Tunnel(p)) = previous
        && (p.port != t.port || p.bridge != t.bridge)
        && state
            .bridges
            .get(&p.bridge)
            .and_then(|b| b.ports.get(&p.port))
            .is_some_and(|port| port.owned)
    {
        changes.push(OvsChange::DeletePort {
            bridge: p.bridge.clone(),
            name: p.port.clone(),
        });
    }
    let mut event = None;
    match state
        .bridges
        .get(&t.bridge)
        .and_then(|b| b.ports.get(&t.port))
    {
        None => {
            if state
                .bridges
                .values()
                .any(|b| b.ports.contains_key(&t.port))
            {
                return Err(ReconcileError::PortNotOwned {
                    bridge: t.bridge.clone(),
                    port: t.port.clone(),
                });
            }
            changes.push(OvsChange::AddPort {
                bridge: t.bridge.clone(),
                name: t.port.clone(),
                kind: kind.clone(),
                protected: t.split_horizon,
                object: object.to_string(),
            });
            event = Some(if steady {
                (
                    "DriftRepaired",
                    format!("GRE port {} was deleted outside topo; recreated", t.port),
                )
            } else {
                (
                    "TunnelCreated",
                    format!(
                        "GRE port {} to {} (key {}) created on bridge {}",
                        t.port, t.remote_ip, t.key, t.bridge
                    ),
                )
            });
        }
        Some(p) if !p.owned => {
            return Err(ReconcileError::PortNotOwned {
                bridge: t.bridge.clone(),
                port: t.port.clone(),
            });
        }
        Some(p) if !p.matches(&kind, t.split_horizon) => {
            changes.push(OvsChange::UpdatePort {
                bridge: t.bridge.clone(),
                name: t.port.clone(),
                kind: kind.clone(),
                protected: t.split_horizon,
            });
            event = Some(if steady {
                (
                    "DriftRepaired",
                    format!("GRE port {} was changed outside topo; restored", t.port),
                )
            } else {
                (
                    "TunnelConfigured",
                    format!("GRE port {} set to {} (key {})", t.port, t.remote_ip, t.key),
                )
            });
        }
        Some(_) => {}
    }
    if !changes.is_empty() {
        ctx.backends
            .ovs
            .apply(&changes)
            .await
            .map_err(|source| ReconcileError::OvsApply {
                what: format!("GRE port {}", t.port),
                source: Box::new(source),
            })?;
    }
    let report = tunnel_report(
        t,
        true,
        "PortReady",
        format!(
            "GRE port {} on {} to {} (key {})",
            t.port, t.bridge, t.remote_ip, t.key
        ),
    );
    ctx.reporter
        .sync(key, vec![report])
        .await
        .map_err(|source| ReconcileError::Report { source })?;
    if let Some((reason, message)) = event {
        if reason == "DriftRepaired" {
            ctx.recorder.warning(object, reason, message).await;
        } else {
            ctx.recorder.normal(object, reason, message).await;
        }
    }
    Ok(Action::AwaitChange)
}

// ==================================================================================== container

fn link_rules(c: &ContainerEntry) -> NatRules {
    NatRules {
        masquerade: vec![],
        ports: vec![],
        isolate: vec![],
        links: c
            .links
            .iter()
            .filter_map(|l| {
                l.target.map(|target| LinkDnat {
                    listen: l.listen,
                    protocol: l.protocol,
                    target,
                })
            })
            .collect(),
    }
    .normalized()
}

fn link_report(c: &ContainerEntry, l: &LinkRule, programmed: Result<(), &str>) -> ObservedReport {
    let (ready, reason, message) = match (l.target, programmed) {
        (None, _) => (
            false,
            l.reason.clone().unwrap_or_else(|| "TargetNotFound".into()),
            l.message
                .clone()
                .unwrap_or_else(|| "the link's target cannot be resolved".into()),
        ),
        (Some(t), Ok(())) => (
            true,
            "Programmed".to_string(),
            format!(
                "{} {} in container {} forwards to {t}",
                l.protocol, l.listen, c.name
            ),
        ),
        (Some(_), Err(why)) => (false, "ConsumerNotReady".to_string(), why.to_string()),
    };
    ObservedReport {
        uid: None,
        object: ObjectRef::new(Kind::Link, &l.link),
        observed_generation: l.generation,
        ready,
        reason,
        message,
        container_id: None,
        restart_count: 0,
        endpoint: l.target.map(|t| t.to_string()),
        time: Utc::now(),
    }
}

impl Context {
    /// The restart state of container `name` for Docker container `id`, seeded from the
    /// stored report so counts survive an agent restart.
    async fn restart_state(&self, name: &str, id: &str) -> RestartState {
        if let Some(s) = self.mem().restarts.get(name).filter(|s| s.id == id) {
            return s.clone();
        }
        let stored = self
            .reporter
            .stored(&ObjectRef::new(Kind::Container, name))
            .await;
        let count = stored
            .filter(|r| r.container_id.as_deref() == Some(id))
            .map(|r| r.restart_count)
            .unwrap_or(0);
        let s = RestartState {
            id: id.to_string(),
            count,
            ..Default::default()
        };
        self.mem().restarts.insert(name.to_string(), s.clone());
        s
    }

    fn save_restart_state(&self, name: &str, s: RestartState) {
        self.mem().restarts.insert(name.to_string(), s);
    }
}

/// How long to wait before restarting a container that exited, given how long it ran.
fn crash_wait(s: &mut RestartState, o: &ObservedContainer) -> Duration {
    if o.finished_at.is_some() && o.finished_at != s.last_exit {
        s.last_exit = o.finished_at;
        let uptime = match (o.started_at, o.finished_at) {
            (Some(a), Some(b)) => (b - a).to_std().unwrap_or_default(),
            _ => MIN_UPTIME,
        };
        s.quick_exits = if uptime < MIN_UPTIME {
            s.quick_exits + 1
        } else {
            0
        };
    }
    // The first quick exit restarts at once (a kill is drift, not a crash loop); the ones
    // that follow wait 1 s, 2 s, 4 s, ...
    if s.quick_exits <= 1 {
        return Duration::ZERO;
    }
    let backoff = Duration::from_secs(1 << (s.quick_exits - 2).min(9)).min(MAX_CRASH_BACKOFF);
    let since_exit = o
        .finished_at
        .and_then(|f| (Utc::now() - f).to_std().ok())
        .unwrap_or(backoff);
    backoff.saturating_sub(since_exit)
}

async fn reconcile_container(
    ctx: &Context,
    key: &str,
    c: &ContainerEntry,
    previous: Option<&SliceEntry>,
) -> Result<Action, ReconcileError> {
    let prev = match previous {
        Some(SliceEntry::Container(p)) => Some(p),
        _ => None,
    };
    // A difference found while the entry is the one in force (or on adoption, when the agent
    // has not applied anything yet) was made outside topo.
    let drift_possible = prev.is_none_or(|p| p == c);
    let object = ObjectRef::new(Kind::Container, &c.name);
    let docker = &ctx.backends.containers;
    let inspect = |source| ReconcileError::ContainerInspect {
        source: Box::new(source),
    };
    let mut repairs: Vec<String> = Vec::new();
    let mut configured: Vec<String> = Vec::new();

    // 1. The container itself: recreate on a config change, create, or start it again.
    let mut observed = docker.get(&c.docker_name).await.map_err(inspect)?;
    if let Some(o) = &observed
        && (o.uid != c.uid || o.config_hash != c.config_hash())
    {
        let why = if o.uid != c.uid {
            "it belongs to an earlier object of the same name"
        } else {
            "its image, command, environment or hosts changed"
        };
        docker
            .remove(&o.id)
            .await
            .map_err(|source| ReconcileError::ContainerRemove {
                container: c.name.clone(),
                source: Box::new(source),
            })?;
        ctx.recorder
            .normal(
                object.clone(),
                "Recreating",
                format!(
                    "container {} ({}) removed: {why}",
                    c.docker_name,
                    short_id(&o.id)
                ),
            )
            .await;
        ctx.mem().restarts.remove(&c.name);
        observed = None;
    }
    let mut created = false;
    // Docker's share of a new container's start, against the plumbing after it (lab-bench).
    let started_at = std::time::Instant::now();
    let mut docker_time = None;
    let running = match observed {
        None => {
            docker
                .ensure_image(&c.image, c.pull_policy)
                .await
                .map_err(|source| ReconcileError::ImagePull {
                    container: c.name.clone(),
                    image: c.image.clone(),
                    source: Box::new(source),
                })?;
            let id = docker
                .create_and_start(c)
                .await
                .map_err(|source| match source {
                    ContainerError::ImagePullFailed { .. } => ReconcileError::ImagePull {
                        container: c.name.clone(),
                        image: c.image.clone(),
                        source: Box::new(source),
                    },
                    source => ReconcileError::ContainerCreate {
                        container: c.name.clone(),
                        source: Box::new(source),
                    },
                })?;
            created = true;
            docker_time = Some(started_at.elapsed());
            ctx.save_restart_state(
                &c.name,
                RestartState {
                    id: id.clone(),
                    ..Default::default()
                },
            );
            ctx.recorder
                .normal(
                    object.clone(),
                    "Started",
                    format!(
                        "container {} ({}) created and started",
                        c.docker_name,
                        short_id(&id)
                    ),
                )
                .await;
            docker.get(&c.docker_name).await.map_err(inspect)?
        }
        Some(o) if !o.running => {
            let mut rs = ctx.restart_state(&c.name, &o.id).await;
            let wait = crash_wait(&mut rs, &o);
            if !wait.is_zero() {
                ctx.save_restart_state(&c.name, rs);
                return Err(ReconcileError::CrashLoop {
                    container: c.name.clone(),
                    exit_code: o.exit_code.unwrap_or(-1),
                    wait,
                });
            }
            docker
                .start(&o.id)
                .await
                .map_err(|source| ReconcileError::ContainerStart {
                    container: c.name.clone(),
                    source: Box::new(source),
                })?;
            rs.count += 1;
            repairs.push(format!(
                "container {} had exited (code {}); restarted (restart {})",
                c.docker_name,
                o.exit_code
                    .map(|x| x.to_string())
                    .unwrap_or_else(|| "unknown".into()),
                rs.count
            ));
            ctx.save_restart_state(&c.name, rs);
            docker.get(&c.docker_name).await.map_err(inspect)?
        }
        Some(o) => Some(o),
    };
    let Some(running) = running.filter(|o| o.running) else {
        return Err(ReconcileError::NotRunning {
            container: c.name.clone(),
        });
    };
    let Some(pid) = running.pid else {
        return Err(ReconcileError::NotRunning {
            container: c.name.clone(),
        });
    };
    let restarts = ctx.restart_state(&c.name, &running.id).await;

    // 2. Plumbing: the bridges must exist; then veth pairs and OVS ports.
    let state = ctx
        .backends
        .ovs
        .observe()
        .await
        .map_err(|source| ReconcileError::OvsObserve {
            source: Box::new(source),
        })?;
    for att in &c.attachments {
        check_bridge(&state, &att.bridge)?;
    }
    // Host veths whose pair was (re)created: ovs-vswitchd's userspace datapath keeps its
    // handle on the old device of that name, so their OVS ports are removed and added again.
    let mut recreated: HashSet<String> = HashSet::new();
    // Host veths whose interface changed (new pair, address, ...): announced once on the bridge.
    let mut replumbed: HashSet<String> = HashSet::new();
    for att in &c.attachments {
        let observed = ctx
            .backends
            .interfaces
            .observe_attachment(pid, att)
            .await
            .map_err(|e| plumbing_error(c, att, e))?;
        let diffs = observed.differences(att);
        if diffs.is_empty() {
            continue;
        }
        replumbed.insert(att.host_veth.clone());
        if pair_needs_recreate(&observed) {
            recreated.insert(att.host_veth.clone());
            ctx.mem().stale_ports.insert(att.host_veth.clone());
        }
        ctx.backends
            .interfaces
            .ensure_attachment(pid, att)
            .await
            .map_err(|e| plumbing_error(c, att, e))?;
        if !created {
            let target = if drift_possible {
                &mut repairs
            } else {
                &mut configured
            };
            target.extend(diffs);
        }
    }
    // Veths of attachments the container no longer has.
    if let Some(p) = prev {
        for old in p
            .attachments
            .iter()
            .filter(|o| !c.attachments.iter().any(|a| a.host_veth == o.host_veth))
        {
            ctx.backends
                .interfaces
                .remove_host_veth(&old.host_veth)
                .await
                .map_err(|source| ReconcileError::InterfaceRemove {
                    name: old.host_veth.clone(),
                    source: Box::new(source),
                })?;
        }
    }
    {
        let mem = ctx.mem();
        recreated.extend(
            c.attachments
                .iter()
                .filter(|a| mem.stale_ports.contains(&a.host_veth))
                .map(|a| a.host_veth.clone()),
        );
    }
    let (readd, changes) = container_port_changes(&state, c, &object, &recreated)?;
    tracing::debug!(?recreated, ?readd, ?changes, "container ports");
    if !readd.is_empty() {
        ctx.backends
            .ovs
            .apply_and_wait(&readd)
            .await
            .map_err(|source| ReconcileError::OvsApply {
                what: format!("stale ports of container {}", c.name),
                source: Box::new(source),
            })?;
    }
    if !changes.is_empty() {
        if !created {
            for ch in &changes {
                let phrase = match ch {
                    // The veth's own repair already says what happened.
                    OvsChange::AddPort { name, .. } if recreated.contains(name) => continue,
                    OvsChange::AddPort { bridge, name, .. } => {
                        format!("OVS port {name} was missing from bridge {bridge}")
                    }
                    OvsChange::UpdatePort { name, .. } => format!("OVS port {name} was changed"),
                    OvsChange::DeletePort { bridge, name } => {
                        format!("OVS port {name} left bridge {bridge}")
                    }
                    _ => continue,
                };
                if drift_possible {
                    repairs.push(phrase);
                } else {
                    configured.push(phrase);
                }
            }
        }
        ctx.backends
            .ovs
            .apply(&changes)
            .await
            .map_err(|source| ReconcileError::OvsApply {
                what: format!("ports of container {}", c.name),
                source: Box::new(source),
            })?;
    }
    {
        let mut mem = ctx.mem();
        for a in &c.attachments {
            mem.stale_ports.remove(&a.host_veth);
        }
    }
    replumbed.extend(changes.iter().filter_map(|ch| match ch {
        OvsChange::AddPort { name, .. } | OvsChange::UpdatePort { name, .. } => Some(name.clone()),
        _ => None,
    }));
    let announce: Vec<AttachmentEntry> = c
        .attachments
        .iter()
        .filter(|a| replumbed.contains(&a.host_veth))
        .cloned()
        .collect();
    if !announce.is_empty() {
        spawn_announcements(ctx.backends.interfaces.clone(), &c.name, pid, announce);
    }

    // 3. Links: the nftables table in the container's namespace.
    let rules = link_rules(c);
    let ns = NetNs::Pid(pid);
    let links = |source| match source {
        NatError::Namespace { .. } => ReconcileError::ContainerGone {
            container: c.name.clone(),
        },
        source => ReconcileError::Links {
            container: c.name.clone(),
            source: Box::new(source),
        },
    };
    let observed_nat = ctx.backends.nat.observe(ns).await.map_err(links)?;
    let mut rewired = Vec::new();
    if !observed_nat.satisfies(&rules) {
        ctx.backends.nat.apply(ns, &rules).await.map_err(links)?;
        let prev_links = prev.map(link_rules).unwrap_or_default();
        if prev.is_some() && prev_links == rules {
            if !created && !restarted(&repairs) {
                repairs.push(format!(
                    "link rules in container {} were changed outside topo",
                    c.name
                ));
            }
        } else if !created {
            configured.push("link rules reprogrammed".to_string());
        }
        for l in &c.links {
            let before = prev
                .and_then(|p| p.links.iter().find(|x| x.link == l.link))
                .and_then(|x| x.target);
            if let Some(t) = l.target
                && before != Some(t)
            {
                rewired.push((
                    l.link.clone(),
                    format!("{} {} now forwards to {t}", l.protocol, l.listen),
                ));
            }
        }
    } else if let Some(p) = prev {
        // In force already (adopted, or another reconcile got here first): still tell users
        // about targets that changed.
        for l in &c.links {
            let before = p
                .links
                .iter()
                .find(|x| x.link == l.link)
                .and_then(|x| x.target);
            if let Some(t) = l.target
                && before != Some(t)
            {
                rewired.push((
                    l.link.clone(),
                    format!("{} {} now forwards to {t}", l.protocol, l.listen),
                ));
            }
        }
    }

    if let Some(docker_time) = docker_time {
        tracing::info!(
            container = %c.name,
            docker_ms = docker_time.as_secs_f64() * 1000.0,
            plumbing_ms = (started_at.elapsed() - docker_time).as_secs_f64() * 1000.0,
            "container started and plumbed"
        );
    }

    // 4. Reports.
    let mut reports = vec![ObservedReport {
        uid: Some(c.uid.clone()),
        object: object.clone(),
        observed_generation: c.generation,
        ready: true,
        reason: "Running".into(),
        message: format!(
            "running on {} with {} attachment{} and {} link{}",
            ctx.node,
            c.attachments.len(),
            if c.attachments.len() == 1 { "" } else { "s" },
            rules.links.len(),
            if rules.links.len() == 1 { "" } else { "s" },
        ),
        container_id: Some(running.id.clone()),
        restart_count: restarts.count,
        endpoint: None,
        time: Utc::now(),
    }];
    reports.extend(c.links.iter().map(|l| link_report(c, l, Ok(()))));
    ctx.reporter
        .sync(key, reports)
        .await
        .map_err(|source| ReconcileError::Report { source })?;

    // 5. Events.
    if !repairs.is_empty() {
        ctx.recorder
            .warning(
                object.clone(),
                "DriftRepaired",
                format!("container {}: {}; repaired", c.name, repairs.join("; ")),
            )
            .await;
    }
    if !configured.is_empty() {
        ctx.recorder
            .normal(object.clone(), "Configured", configured.join("; "))
            .await;
    }
    for (link, message) in rewired {
        ctx.recorder
            .normal(ObjectRef::new(Kind::Link, link), "LinkProgrammed", message)
            .await;
    }
    Ok(Action::AwaitChange)
}

/// When the gratuitous ARPs of a replumbed attachment go out, counted from the moment its
/// port is on the bridge: peers that missed the first (a frame lost while the datapath
/// settles) get another.
const ANNOUNCE_AT: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(200),
    Duration::from_secs(1),
];

/// Announces the attachments' addresses from the container (a moved or restarted container
/// keeps its address but not its MAC: peers would keep the old one until their ARP entry
/// expires). In the background: the reconcile does not wait for the later rounds.
fn spawn_announcements(
    interfaces: Arc<dyn crate::backend::Interfaces>,
    container: &str,
    pid: u32,
    atts: Vec<AttachmentEntry>,
) {
    let span = tracing::debug_span!("announce", container = %container, pid);
    tokio::spawn(
        async move {
            let start = tokio::time::Instant::now();
            for at in ANNOUNCE_AT {
                tokio::time::sleep_until(start + at).await;
                for att in &atts {
                    if let Err(e) = interfaces.announce(pid, att).await {
                        // The container went away or was replumbed again: that reconcile
                        // announces for itself.
                        tracing::debug!(interface = %att.interface, error = %error_chain(&e), "gratuitous ARP not sent");
                        return;
                    }
                }
            }
        }
        .instrument(span),
    );
}

fn restarted(repairs: &[String]) -> bool {
    repairs.iter().any(|r| r.contains("restarted"))
}

/// Whether `ensure_attachment` makes a new veth pair for this observation (the trait's rule:
/// the host end is missing or not a veth, or its peer is not in this container).
fn pair_needs_recreate(o: &crate::backend::ObservedAttachment) -> bool {
    !o.host_exists
        || !o.host_is_veth
        || o.peer
            .as_ref()
            .is_none_or(|p| !p.is_veth || !p.paired_with_host)
}

fn plumbing_error(
    c: &ContainerEntry,
    att: &topo_schema::slice::AttachmentEntry,
    e: InterfaceError,
) -> ReconcileError {
    if let InterfaceError::Namespace { .. } = e {
        // The container died between inspect and plumbing: its die event follows.
        return ReconcileError::ContainerGone {
            container: c.name.clone(),
        };
    }
    ReconcileError::Plumbing {
        container: c.name.clone(),
        interface: att.interface.clone(),
        source: Box::new(e),
    }
}

/// OVS changes that put each attachment's host veth on its bridge, and take this container's
/// ports off bridges it no longer attaches to. The first list removes the ports of
/// `recreated` veths (its own transaction: the port must leave the datapath before it is
/// added again); the second holds everything else, in one transaction.
fn container_port_changes(
    state: &OvsState,
    c: &ContainerEntry,
    object: &ObjectRef,
    recreated: &HashSet<String>,
) -> Result<(Vec<OvsChange>, Vec<OvsChange>), ReconcileError> {
    let mut readd = Vec::new();
    let object = object.to_string();
    let mut changes = Vec::new();
    for (bname, b) in &state.bridges {
        if !b.owned {
            continue;
        }
        for (pname, p) in &b.ports {
            if p.owned
                && p.external_ids.get(owner::OBJECT) == Some(&object)
                && !c
                    .attachments
                    .iter()
                    .any(|a| a.bridge == *bname && a.host_veth == *pname)
            {
                changes.push(OvsChange::DeletePort {
                    bridge: bname.clone(),
                    name: pname.clone(),
                });
            }
        }
    }
    for att in &c.attachments {
        let on_bridge = state
            .bridges
            .get(&att.bridge)
            .and_then(|b| b.ports.get(&att.host_veth));
        match on_bridge {
            None => {
                let elsewhere = state
                    .bridges
                    .iter()
                    .find(|(n, b)| **n != att.bridge && b.ports.contains_key(&att.host_veth))
                    .map(|(n, _)| n.clone());
                if let Some(other) = elsewhere
                    && !changes.iter().any(|ch| matches!(ch, OvsChange::DeletePort { name, .. } if *name == att.host_veth))
                {
                    return Err(ReconcileError::PortNotOwned { bridge: other, port: att.host_veth.clone() });
                }
                changes.push(OvsChange::AddPort {
                    bridge: att.bridge.clone(),
                    name: att.host_veth.clone(),
                    kind: PortKind::System,
                    protected: false,
                    object: object.clone(),
                });
            }
            Some(p) if !p.owned => {
                return Err(ReconcileError::PortNotOwned {
                    bridge: att.bridge.clone(),
                    port: att.host_veth.clone(),
                });
            }
            Some(_) if recreated.contains(&att.host_veth) => {
                readd.push(OvsChange::DeletePort {
                    bridge: att.bridge.clone(),
                    name: att.host_veth.clone(),
                });
                changes.push(OvsChange::AddPort {
                    bridge: att.bridge.clone(),
                    name: att.host_veth.clone(),
                    kind: PortKind::System,
                    protected: false,
                    object: object.clone(),
                });
            }
            Some(p) if !p.matches(&PortKind::System, false) => {
                changes.push(OvsChange::UpdatePort {
                    bridge: att.bridge.clone(),
                    name: att.host_veth.clone(),
                    kind: PortKind::System,
                    protected: false,
                })
            }
            Some(_) => {}
        }
    }
    Ok((readd, changes))
}

// ==================================================================================== removal

/// A key left the slice: remove what its last applied entry put on the host. Without one
/// (removed while the agent was down), garbage collection finds what is left.
async fn remove_key(ctx: &Context, key: &str) -> Result<Action, ReconcileError> {
    let Some(old) = ctx.applied(key) else {
        // Nothing this process applied (removed while the agent was down, or its reconcile
        // never succeeded): garbage collection removes what is left, and only then do the
        // reports go (`delete --wait` takes their absence for "gone from the host").
        collect_garbage(ctx).await?;
        ctx.reporter
            .sync(key, vec![])
            .await
            .map_err(|source| ReconcileError::Report { source })?;
        return Ok(Action::AwaitChange);
    };
    match &old {
        SliceEntry::Node(_) => {}
        SliceEntry::Bridge(b) => {
            let state =
                ctx.backends
                    .ovs
                    .observe()
                    .await
                    .map_err(|source| ReconcileError::OvsObserve {
                        source: Box::new(source),
                    })?;
            if state.bridges.get(&b.bridge).is_some_and(|o| o.owned) {
                ctx.backends
                    .ovs
                    .apply(&[OvsChange::DeleteBridge {
                        name: b.bridge.clone(),
                    }])
                    .await
                    .map_err(|source| ReconcileError::OvsApply {
                        what: format!("bridge {}", b.bridge),
                        source: Box::new(source),
                    })?;
                ctx.recorder
                    .normal(
                        ObjectRef::new(Kind::Network, &b.network),
                        "BridgeRemoved",
                        format!("bridge {} removed from {}", b.bridge, ctx.node),
                    )
                    .await;
            }
            ctx.queue.add(NAT_KEY);
        }
        SliceEntry::Tunnel(t) => {
            let state =
                ctx.backends
                    .ovs
                    .observe()
                    .await
                    .map_err(|source| ReconcileError::OvsObserve {
                        source: Box::new(source),
                    })?;
            if state
                .bridges
                .get(&t.bridge)
                .and_then(|b| b.ports.get(&t.port))
                .is_some_and(|p| p.owned)
            {
                ctx.backends
                    .ovs
                    .apply(&[OvsChange::DeletePort {
                        bridge: t.bridge.clone(),
                        name: t.port.clone(),
                    }])
                    .await
                    .map_err(|source| ReconcileError::OvsApply {
                        what: format!("GRE port {}", t.port),
                        source: Box::new(source),
                    })?;
                ctx.recorder
                    .normal(
                        ObjectRef::new(Kind::Tunnel, &t.tunnel),
                        "TunnelRemoved",
                        format!("GRE port {} removed", t.port),
                    )
                    .await;
            }
        }
        SliceEntry::Container(c) => {
            remove_container(ctx, c).await?;
            ctx.queue.add(NAT_KEY);
        }
    }
    ctx.reporter
        .sync(key, vec![])
        .await
        .map_err(|source| ReconcileError::Report { source })?;
    ctx.forget(key);
    Ok(Action::AwaitChange)
}

async fn remove_container(ctx: &Context, c: &ContainerEntry) -> Result<(), ReconcileError> {
    let object = ObjectRef::new(Kind::Container, &c.name);
    if let Some(o) = ctx
        .backends
        .containers
        .get(&c.docker_name)
        .await
        .map_err(|source| ReconcileError::ContainerInspect {
            source: Box::new(source),
        })?
    {
        ctx.backends
            .containers
            .remove(&o.id)
            .await
            .map_err(|source| ReconcileError::ContainerRemove {
                container: c.name.clone(),
                source: Box::new(source),
            })?;
        ctx.recorder
            .normal(
                object.clone(),
                "Removed",
                format!(
                    "container {} ({}) removed from {}",
                    c.docker_name,
                    short_id(&o.id),
                    ctx.node
                ),
            )
            .await;
    }
    // The pair usually died with the container's namespace; remove the host end if not.
    for att in &c.attachments {
        ctx.backends
            .interfaces
            .remove_host_veth(&att.host_veth)
            .await
            .map_err(|source| ReconcileError::InterfaceRemove {
                name: att.host_veth.clone(),
                source: Box::new(source),
            })?;
    }
    let state = ctx
        .backends
        .ovs
        .observe()
        .await
        .map_err(|source| ReconcileError::OvsObserve {
            source: Box::new(source),
        })?;
    let object = object.to_string();
    let changes: Vec<OvsChange> = state
        .bridges
        .iter()
        .filter(|(_, b)| b.owned)
        .flat_map(|(bname, b)| {
            b.ports
                .iter()
                .filter(|(pname, p)| {
                    p.owned
                        && (p.external_ids.get(owner::OBJECT) == Some(&object)
                            || c.attachments
                                .iter()
                                .any(|a| a.bridge == *bname && a.host_veth == **pname))
                })
                .map(|(pname, _)| OvsChange::DeletePort {
                    bridge: bname.clone(),
                    name: pname.clone(),
                })
        })
        .collect();
    if !changes.is_empty() {
        ctx.backends
            .ovs
            .apply(&changes)
            .await
            .map_err(|source| ReconcileError::OvsApply {
                what: format!("ports of container {}", c.name),
                source: Box::new(source),
            })?;
    }
    Ok(())
}

// ==================================================================================== node NAT

/// The node's NAT table as the slice wants it.
pub fn node_nat_rules(entries: &[SliceEntry]) -> NatRules {
    let mut rules = NatRules::default();
    let mut cidrs = Vec::new();
    for e in entries {
        match e {
            SliceEntry::Bridge(b) => {
                cidrs.push(b.cidr);
                if b.masquerade {
                    rules.masquerade.push(b.cidr);
                }
            }
            SliceEntry::Container(c) => rules.ports.extend(c.ports.iter().map(PortDnat::from)),
            _ => {}
        }
    }
    // The node forwards (ip_forward=1), so without these its gateways route between networks.
    rules.isolate = NatRules::isolation_pairs(&cidrs);
    rules.normalized()
}

async fn reconcile_node_nat(ctx: &Context) -> Result<Action, ReconcileError> {
    let snapshot = ctx.store.snapshot();
    if snapshot
        .values()
        .any(|v| !matches!(v, SliceValue::Entry(_)))
    {
        // Part of the slice cannot be read: the table stays as it is rather than losing
        // that part's ports.
        tracing::warn!("the node's NAT table is left alone while part of the slice is unsupported");
        return Ok(Action::AwaitChange);
    }
    let entries: Vec<SliceEntry> = snapshot
        .into_values()
        .filter_map(|v| v.entry().cloned())
        .collect();
    let rules = node_nat_rules(&entries);
    let nat = |source| ReconcileError::NodeNat {
        source: Box::new(source),
    };
    let observed = ctx.backends.nat.observe(NetNs::Node).await.map_err(nat)?;
    let before = ctx.mem().node_nat.clone();
    if !observed.satisfies(&rules) {
        ctx.backends
            .nat
            .apply(NetNs::Node, &rules)
            .await
            .map_err(nat)?;
        let object = ObjectRef::new(Kind::Node, &ctx.node);
        if before.as_ref() == Some(&rules) {
            ctx.recorder
                .warning(
                    object,
                    "DriftRepaired",
                    "nftables table topo of the node was changed outside topo; restored",
                )
                .await;
        } else {
            ctx.recorder
                .normal(
                    object,
                    "NatProgrammed",
                    format!(
                        "node NAT table: masquerade for {} network{}, {} published port{}",
                        rules.masquerade.len(),
                        if rules.masquerade.len() == 1 { "" } else { "s" },
                        rules.ports.len(),
                        if rules.ports.len() == 1 { "" } else { "s" },
                    ),
                )
                .await;
        }
    }
    ctx.mem().node_nat = Some(rules);
    Ok(Action::AwaitChange)
}

// ==================================================================================== garbage

/// The objects whose reports the slice's entries produce.
pub fn expected_reports(entries: &[SliceEntry]) -> BTreeSet<ObjectRef> {
    let mut out = BTreeSet::new();
    for e in entries {
        match e {
            SliceEntry::Tunnel(t) => {
                out.insert(ObjectRef::new(Kind::Tunnel, &t.tunnel));
            }
            SliceEntry::Container(c) => {
                out.insert(ObjectRef::new(Kind::Container, &c.name));
                out.extend(c.links.iter().map(|l| ObjectRef::new(Kind::Link, &l.link)));
            }
            _ => {}
        }
    }
    out
}

/// The switch as the slice wants it (every bridge with every port on it).
pub fn desired_switch(entries: &[SliceEntry]) -> Vec<DesiredBridge> {
    let mut bridges: Vec<DesiredBridge> = entries
        .iter()
        .filter_map(|e| match e {
            SliceEntry::Bridge(b) => Some(DesiredBridge {
                name: b.bridge.clone(),
                datapath: b.datapath,
                rstp: b.rstp,
                mtu: b.mtu,
                object: ObjectRef::new(Kind::Network, &b.network).to_string(),
                ports: vec![],
            }),
            _ => None,
        })
        .collect();
    for e in entries {
        let ports: Vec<(String, DesiredPort)> = match e {
            SliceEntry::Tunnel(t) => vec![(
                t.bridge.clone(),
                DesiredPort {
                    name: t.port.clone(),
                    kind: gre_kind(t),
                    protected: t.split_horizon,
                    object: ObjectRef::new(Kind::Tunnel, &t.tunnel).to_string(),
                },
            )],
            SliceEntry::Container(c) => c
                .attachments
                .iter()
                .map(|a| {
                    (
                        a.bridge.clone(),
                        DesiredPort {
                            name: a.host_veth.clone(),
                            kind: PortKind::System,
                            protected: false,
                            object: ObjectRef::new(Kind::Container, &c.name).to_string(),
                        },
                    )
                })
                .collect(),
            _ => vec![],
        };
        for (bridge, port) in ports {
            if let Some(b) = bridges.iter_mut().find(|b| b.name == bridge) {
                b.ports.push(port);
            }
        }
    }
    bridges
}

async fn collect_garbage(ctx: &Context) -> Result<Action, ReconcileError> {
    // Observe first, read the slice after: whatever a concurrent reconcile creates for a new
    // entry either is not observed yet or its entry is in the snapshot.
    let containers = ctx.backends.containers.list().await.map_err(|source| {
        ReconcileError::ContainerInspect {
            source: Box::new(source),
        }
    })?;
    let switch = ctx
        .backends
        .ovs
        .observe()
        .await
        .map_err(|source| ReconcileError::OvsObserve {
            source: Box::new(source),
        })?;
    let interfaces = ctx
        .backends
        .interfaces
        .list_owned()
        .await
        .map_err(|source| ReconcileError::InterfaceList {
            source: Box::new(source),
        })?;
    let snapshot = ctx.store.snapshot();

    // What unreadable entries may own stays.
    let mut protected_containers = HashSet::new();
    let mut protected_bridges = HashSet::new();
    let mut protected_ports = HashSet::new();
    let mut protected_reports = BTreeSet::new();
    for (key, v) in &snapshot {
        if matches!(v, SliceValue::Entry(_)) {
            continue;
        }
        if let Some(name) = key.strip_prefix("containers/") {
            protected_containers.insert(name.to_string());
            protected_reports.insert(ObjectRef::new(Kind::Container, name));
        } else if let Some(net) = key.strip_prefix("bridges/") {
            protected_bridges.insert(names::bridge_name(net));
        } else if let Some(port) = key.strip_prefix("tunnels/") {
            protected_ports.insert(port.to_string());
        }
    }
    let entries: Vec<SliceEntry> = snapshot
        .into_values()
        .filter_map(|v| v.entry().cloned())
        .collect();
    let wanted_containers: HashSet<&str> = entries
        .iter()
        .filter_map(|e| match e {
            SliceEntry::Container(c) => Some(c.name.as_str()),
            _ => None,
        })
        .collect();
    let wanted_veths: HashSet<&str> = entries
        .iter()
        .flat_map(|e| match e {
            SliceEntry::Container(c) => {
                c.attachments.iter().map(|a| a.host_veth.as_str()).collect()
            }
            _ => vec![],
        })
        .collect();

    for c in containers {
        if wanted_containers.contains(c.name.as_str()) || protected_containers.contains(&c.name) {
            continue;
        }
        ctx.backends
            .containers
            .remove(&c.id)
            .await
            .map_err(|source| ReconcileError::ContainerRemove {
                container: c.name.clone(),
                source: Box::new(source),
            })?;
        ctx.recorder
            .normal(
                ObjectRef::new(Kind::Container, &c.name),
                "Removed",
                format!(
                    "container {} ({}) is not in {}'s slice; removed",
                    c.docker_name,
                    short_id(&c.id),
                    ctx.node
                ),
            )
            .await;
    }

    let changes: Vec<OvsChange> = plan_ovs(&desired_switch(&entries), &switch)
        .into_iter()
        .filter(|ch| match ch {
            OvsChange::DeleteBridge { name } => !protected_bridges.contains(name),
            OvsChange::DeletePort { bridge, name } => {
                let owner_object = switch
                    .bridges
                    .get(bridge)
                    .and_then(|b| b.ports.get(name))
                    .and_then(|p| p.external_ids.get(owner::OBJECT))
                    .cloned()
                    .unwrap_or_default();
                // A bridge's own internal port goes with the bridge, never alone.
                name != bridge
                    && !protected_bridges.contains(bridge)
                    && !protected_ports.contains(name)
                    && !protected_containers
                        .iter()
                        .any(|c| owner_object == ObjectRef::new(Kind::Container, c).to_string())
            }
            _ => false,
        })
        .collect();
    if !changes.is_empty() {
        tracing::info!(changes = ?changes, "removing switch objects no slice entry wants");
        ctx.backends
            .ovs
            .apply(&changes)
            .await
            .map_err(|source| ReconcileError::OvsApply {
                what: "garbage collection".into(),
                source: Box::new(source),
            })?;
    }

    // Host veths: only when every container entry is readable (an unreadable one's veth
    // names are unknown).
    if protected_containers.is_empty() {
        for i in interfaces {
            if i.name.starts_with("tv-") && !wanted_veths.contains(i.name.as_str()) {
                tracing::info!(veth = %i.name, "removing a host veth no slice entry wants");
                ctx.backends
                    .interfaces
                    .remove_host_veth(&i.name)
                    .await
                    .map_err(|source| ReconcileError::InterfaceRemove {
                        name: i.name.clone(),
                        source: Box::new(source),
                    })?;
            }
        }
    }

    let mut expected = expected_reports(&entries);
    expected.extend(protected_reports);
    ctx.reporter
        .retain(&expected)
        .await
        .map_err(|source| ReconcileError::Report { source })?;
    Ok(Action::AwaitChange)
}

// ==================================================================================== runner

/// Failure reports: a key that failed shows why in its objects' status.
fn failure_reports(
    ctx: &Context,
    key: &str,
    err: &ReconcileError,
    container_id: Option<String>,
    restarts: u32,
) -> Vec<ObservedReport> {
    if let ReconcileError::ContainerGone { .. } = err {
        // Transient: the next reconcile restarts it and reports that.
        return vec![];
    }
    let message = error_chain(err);
    match ctx.store.get(key) {
        Some(SliceValue::Entry(SliceEntry::Container(c))) => {
            let mut v = vec![ObservedReport {
                uid: Some(c.uid.clone()),
                object: ObjectRef::new(Kind::Container, &c.name),
                observed_generation: c.generation,
                ready: false,
                reason: err.reason().to_string(),
                message: message.clone(),
                container_id,
                restart_count: restarts,
                endpoint: None,
                time: Utc::now(),
            }];
            let why = format!(
                "consumer container {} is not ready: {}",
                c.name,
                err.reason()
            );
            v.extend(c.links.iter().map(|l| link_report(&c, l, Err(&why))));
            v
        }
        Some(SliceValue::Entry(SliceEntry::Tunnel(t))) => {
            vec![tunnel_report(&t, false, err.reason(), message)]
        }
        _ => vec![],
    }
}

/// Drives reconciles from the queue: one key at a time per worker, the error policy's
/// requeue, a tracing span per reconcile.
pub struct Runner {
    ctx: Arc<Context>,
    backoffs: Mutex<HashMap<String, ExponentialBackoff>>,
}

impl Runner {
    pub fn new(ctx: Arc<Context>) -> Arc<Self> {
        Arc::new(Runner {
            ctx,
            backoffs: Mutex::new(HashMap::new()),
        })
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    fn backoffs(&self) -> std::sync::MutexGuard<'_, HashMap<String, ExponentialBackoff>> {
        self.backoffs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reconciles `key` once and schedules what the outcome asks for. Returns the outcome.
    pub async fn process(&self, key: &str) -> Result<Action, String> {
        let span = tracing::info_span!("reconcile", key = %key, node = %self.ctx.node);
        let started = std::time::Instant::now();
        let result = reconcile(key, &self.ctx).instrument(span.clone()).await;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        match result {
            Ok(action) => {
                self.backoffs().remove(key);
                tracing::debug!(parent: &span, elapsed_ms, ?action, "reconciled");
                if let Action::Requeue(d) = action {
                    self.ctx.queue.add_after(key.to_string(), d);
                }
                Ok(action)
            }
            Err(err) => {
                let action = {
                    let mut b = self.backoffs();
                    let backoff = b.entry(key.to_string()).or_insert_with(key_backoff);
                    error_policy(&err, backoff)
                };
                let (container_id, restarts) = match key.strip_prefix("containers/") {
                    Some(name) => {
                        let m = self.ctx.mem();
                        m.restarts
                            .get(name)
                            .map(|s| (Some(s.id.clone()), s.count))
                            .unwrap_or((None, 0))
                    }
                    None => (None, 0),
                };
                let reports = failure_reports(&self.ctx, key, &err, container_id, restarts);
                if !reports.is_empty()
                    && let Err(e) = self.ctx.reporter.sync(key, reports).await
                {
                    tracing::warn!(parent: &span, error = %error_chain(&e), "failed to report a failure");
                }
                if let ReconcileError::ImagePull { .. } | ReconcileError::ContainerCreate { .. } =
                    &err
                    && let Some(name) = key.strip_prefix("containers/")
                {
                    self.ctx
                        .recorder
                        .warning(
                            ObjectRef::new(Kind::Container, name),
                            err.reason(),
                            error_chain(&err),
                        )
                        .await;
                }
                let delay = match action {
                    Action::Requeue(d) => d,
                    Action::AwaitChange => Duration::ZERO,
                };
                tracing::warn!(parent: &span, elapsed_ms, reason = err.reason(), error = %error_chain(&err), ?delay, "reconcile failed");
                if let Action::Requeue(d) = action {
                    self.ctx.queue.add_after(key.to_string(), d);
                }
                Err(err.reason().to_string())
            }
        }
    }

    /// A worker: pops keys until the queue shuts down.
    pub async fn run_worker(self: Arc<Self>) {
        while let Some(key) = self.ctx.queue.pop().await {
            let _ = self.process(&key).await;
            self.ctx.queue.done(&key);
        }
    }

    /// Processes queued keys in this task until none is queued (delayed requeues are not
    /// waited for). For tests and the first pass.
    pub async fn run_until_idle(&self) -> Vec<(String, Result<Action, String>)> {
        let mut out = Vec::new();
        while !self.ctx.queue.is_empty() {
            let Some(key) = self.ctx.queue.pop().await else {
                break;
            };
            let r = self.process(&key).await;
            self.ctx.queue.done(&key);
            out.push((key, r));
        }
        out
    }
}
