//! The reconciler: level-triggered and idempotent, one [`Key`] at a time.
//!
//! [`reconcile`] looks the key's entry up in the slice and hands it to its resource's module;
//! each compares the entry with what the host holds and changes only the difference, as
//! observe → a pure `plan(desired, observed)` → apply through the one [`Executor`], which
//! maps backend errors to [`ReconcileError`]s. A key with nothing to do only observes. What
//! failed goes to the error policy ([`policy`], a backoff per key, as kube-rs's controller
//! runtime does), and the [`Runner`] drives both from the queue.
//!
//! Keys and what they own on the host:
//! * `node`: nothing (the node's settings reach the host through its bridges).
//! * [`bridge`] (`bridges/<network>`): the OVS bridge with its internal port, and the gateway
//!   address and MTU on that port.
//! * [`tunnel`] (`tunnels/<port>`): one GRE port on its network's bridge.
//! * [`container`] (`containers/<name>`): the Docker container, one veth pair + OVS port per
//!   attachment, and the link rules (nftables table `topo`) in the container's namespace.
//! * [`nat`] ([`Key::Nat`]): the node's nftables table `topo` (masquerade per network, DNAT
//!   of every published port the node can give: [`hostports`] holds back a port another
//!   process of the node listens on), derived from the whole slice.
//! * [`gc`] ([`Key::Gc`]): removes owned containers, bridges, ports, veths and reports no
//!   entry wants.
//!
//! Adoption: what exists and matches is left untouched, so an agent restart restarts no
//! container and drops no packet. Drift: a difference found for a key that was already in
//! force with the same entry is a repair of something changed outside topo and is recorded as
//! a `DriftRepaired` Warning event ([`Drift`]). Removal (an entry gone from the slice) is a
//! teardown: it goes on past failures and returns them all.

pub mod bridge;
pub mod container;
pub mod context;
pub mod drift;
pub mod error;
pub mod executor;
#[cfg(test)]
mod fixtures;
pub mod gc;
pub mod hostports;
pub mod nat;
pub mod policy;
pub mod reports;
pub mod runner;
pub mod tunnel;

use std::sync::Arc;
use std::time::Duration;

use topo_schema::slice::{SliceEntry, SliceKey};

use crate::backend::{AddressProber, Containers, HostPorts, Interfaces, Nat, Ovs};
use crate::key::Key;
use crate::watch::SliceValue;

pub use crate::error_chain::error_chain;
pub use context::Context;
pub use drift::Drift;
pub use error::ReconcileError;
pub use executor::Executor;
pub use runner::Runner;

/// The host backends.
#[derive(Clone)]
pub struct Backends {
    pub containers: Arc<dyn Containers>,
    pub interfaces: Arc<dyn Interfaces>,
    pub ovs: Arc<dyn Ovs>,
    pub nat: Arc<dyn Nat>,
    /// Observed only: who holds the node's host ports.
    pub host_ports: Arc<dyn HostPorts>,
    /// Reads only: who answers for an address on a bridge (ARP probes).
    pub prober: Arc<dyn AddressProber>,
}

/// What to do with a key after a successful reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing until the slice or the host changes (or the periodic resync).
    AwaitChange,
    Requeue(Duration),
}

/// Reconciles one key. See the module documentation for what each key owns.
pub async fn reconcile(key: &Key, ctx: &Context) -> Result<Action, ReconcileError> {
    if !ctx.is_synced() {
        // The first list enqueues every key; anything queued earlier (a drift event) waits.
        return Ok(Action::AwaitChange);
    }
    let slice_key = match key {
        Key::Nat => return nat::reconcile(ctx).await,
        Key::Gc => return gc::collect(ctx).await,
        other => match other.slice_key() {
            Some(k) => k,
            None => return Ok(Action::AwaitChange),
        },
    };
    let entry = match ctx.store.get(&slice_key) {
        Some(SliceValue::Entry(e)) => e,
        Some(SliceValue::Unsupported { version }) => {
            let why = format!("slice version {version} is not supported by this agent");
            return leave_alone(ctx, key, &why).await;
        }
        Some(SliceValue::Invalid { error }) => {
            let why = format!("the slice entry is not valid: {error}");
            return leave_alone(ctx, key, &why).await;
        }
        None => return remove(ctx, key, &slice_key).await,
    };
    let previous = ctx.applied(&slice_key);
    let action = match (&entry, &previous) {
        (SliceEntry::Node(_), _) => Action::AwaitChange,
        (SliceEntry::Bridge(b), p) => {
            let p = match p {
                Some(SliceEntry::Bridge(p)) => Some(p),
                _ => None,
            };
            bridge::reconcile(ctx, b, p).await?
        }
        (SliceEntry::Tunnel(t), p) => {
            let p = match p {
                Some(SliceEntry::Tunnel(p)) => Some(p),
                _ => None,
            };
            tunnel::reconcile(ctx, t, p).await?
        }
        (SliceEntry::Container(c), p) => {
            let p = match p {
                Some(SliceEntry::Container(p)) => Some(p),
                _ => None,
            };
            container::reconcile(ctx, c, p).await?
        }
    };
    if feeds_nat(&entry, previous.as_ref()) {
        ctx.queue.add(Key::Nat);
    }
    ctx.set_applied(slice_key, entry);
    Ok(action)
}

/// Whether `entry`, which replaces `previous`, changes what the node's NAT table is made
/// of: bridges' cidrs and masquerade, containers' published ports. A container without
/// published ports does not: on a node of hundreds, a pass over the whole table for each new
/// container would be work for nothing.
fn feeds_nat(entry: &SliceEntry, previous: Option<&SliceEntry>) -> bool {
    match (entry, previous) {
        (SliceEntry::Bridge(b), Some(SliceEntry::Bridge(p))) => {
            b.cidr != p.cidr || b.masquerade != p.masquerade
        }
        (SliceEntry::Bridge(_), _) => true,
        (SliceEntry::Container(c), Some(SliceEntry::Container(p))) => c.ports != p.ports,
        (SliceEntry::Container(c), _) => !c.ports.is_empty(),
        (SliceEntry::Node(_) | SliceEntry::Tunnel(_), _) => false,
    }
}

/// An entry this agent cannot read: nothing on the host is changed for it; a container's
/// status says why.
async fn leave_alone(ctx: &Context, key: &Key, why: &str) -> Result<Action, ReconcileError> {
    tracing::warn!(%key, reason = why, "slice entry left alone");
    if let Some(name) = key.container() {
        ctx.reporter
            .sync(key, vec![reports::left_alone(name, &ctx.node, why)])
            .await
            .map_err(|source| ReconcileError::Report { source })?;
    }
    Ok(Action::AwaitChange)
}

/// A key left the slice: remove what its last applied entry put on the host. Without one
/// (removed while the agent was down, or its reconcile never succeeded), garbage collection
/// finds what is left, and only then do the reports go (`delete --wait` takes their absence
/// for "gone from the host").
async fn remove(ctx: &Context, key: &Key, slice_key: &SliceKey) -> Result<Action, ReconcileError> {
    match ctx.applied(slice_key) {
        None => {
            gc::collect(ctx).await?;
        }
        Some(SliceEntry::Node(_)) => {}
        Some(SliceEntry::Bridge(b)) => bridge::remove(ctx, &b).await?,
        Some(SliceEntry::Tunnel(t)) => tunnel::remove(ctx, &t).await?,
        Some(SliceEntry::Container(c)) => container::remove(ctx, &c).await?,
    }
    ctx.reporter
        .sync(key, vec![])
        .await
        .map_err(|source| ReconcileError::Report { source })?;
    ctx.forget(slice_key);
    Ok(Action::AwaitChange)
}
