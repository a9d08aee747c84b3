//! Host events: changes made to the host (by topo or outside it), noticed through the
//! backends' event streams rather than by polling — Docker events, netlink link/address
//! notifications of the node's namespace, OVSDB monitor updates, nftables notifications of
//! the node's namespace (its `topo` table) here, and the watches inside each container's
//! namespace in [`namespaces`]. Each event is mapped to the keys whose entries own what it
//! touches and those are queued; the reconcile that follows repairs the difference and
//! records `DriftRepaired` with the typed drift. Events caused by the agent's own changes map
//! to keys whose reconcile then finds nothing to do.
//!
//! A `Resync` item (a stream reconnected, notifications may be lost) queues every key (the
//! nftables stream's only the node's NAT key: that is all it covers).

pub mod namespaces;

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::watch;
use topo_schema::kinds::Kind;
use topo_schema::slice::{SliceEntry, SliceKey};

use crate::backend::{ContainerEvent, LinkEvent, NatEvent, OvsEvent};
use crate::key::Key;
use crate::queue::WorkQueue;
use crate::reconcile::{Backends, Context};
use crate::watch::SliceStore;

/// The keys whose entries own a host interface or OVS row named `name`.
pub fn keys_for_name(store: &SliceStore, name: &str) -> Vec<Key> {
    store
        .entries()
        .into_iter()
        .filter(|e| match e {
            SliceEntry::Bridge(b) => b.bridge == name,
            SliceEntry::Tunnel(t) => t.port == name,
            SliceEntry::Container(c) => c.attachments.iter().any(|a| a.host_veth == name),
            SliceEntry::Node(_) => false,
        })
        .map(|e| Key::from(e.key()))
        .collect()
}

/// The keys of the object an OVSDB row's `topo.dev/object` names (`container/web`,
/// `tunnel/overlay-node1-node2`, `network/overlay`).
pub fn keys_for_object(store: &SliceStore, object: &str) -> Vec<Key> {
    let Some((kind, name)) = object.split_once('/') else {
        return vec![];
    };
    let kind = match Kind::parse(kind) {
        Some(k) => k,
        None => return vec![],
    };
    store
        .entries()
        .into_iter()
        .filter(|e| match (e, kind) {
            (SliceEntry::Bridge(b), Kind::Network) => b.network == name,
            (SliceEntry::Tunnel(t), Kind::Tunnel) => t.tunnel == name,
            (SliceEntry::Container(c), Kind::Container) => c.name == name,
            _ => false,
        })
        .map(|e| Key::from(e.key()))
        .collect()
}

/// What to queue for one event; `None` means "everything" (a resync).
pub fn keys_for_container_event(store: &SliceStore, ev: &ContainerEvent) -> Option<Vec<Key>> {
    match ev {
        ContainerEvent::Resync => None,
        // `docker exec` into a container changes nothing topo manages.
        ContainerEvent::Changed { action, .. } if action.starts_with("exec_") => Some(vec![]),
        ContainerEvent::Changed { name, .. } => {
            let key = SliceKey::Container(name.clone());
            // A container of ours that no entry wants: garbage collection removes it.
            Some(if store.get(&key).is_some() {
                vec![Key::from(key)]
            } else {
                vec![Key::Gc]
            })
        }
    }
}

pub fn keys_for_link_event(store: &SliceStore, ev: &LinkEvent) -> Option<Vec<Key>> {
    match ev {
        LinkEvent::Resync => None,
        LinkEvent::Changed { name, .. } => Some(keys_for_name(store, name)),
    }
}

pub fn keys_for_ovs_event(store: &SliceStore, ev: &OvsEvent) -> Option<Vec<Key>> {
    match ev {
        OvsEvent::Resync => None,
        OvsEvent::Changed { name, object, .. } => {
            let mut keys = object
                .as_deref()
                .map(|o| keys_for_object(store, o))
                .unwrap_or_default();
            keys.extend(keys_for_name(store, name));
            keys.sort();
            keys.dedup();
            Some(keys)
        }
    }
}

/// Any change to the node's `topo` table, or lost notifications, is the NAT key's business.
pub fn keys_for_nat_event(_ev: &NatEvent) -> Vec<Key> {
    vec![Key::Nat]
}

fn enqueue(ctx: &Context, source: &str, keys: Option<Vec<Key>>, what: &dyn std::fmt::Debug) {
    match keys {
        None => {
            tracing::info!(source, "event stream resynced; reconciling everything");
            ctx.queue.add_all(ctx.all_keys());
        }
        Some(keys) if keys.is_empty() => {
            tracing::trace!(source, event = ?what, "event touches no slice entry")
        }
        Some(keys) => {
            tracing::debug!(source, event = ?what, ?keys, "host changed; reconciling");
            ctx.queue.add_all(keys);
        }
    }
}

/// Forwards the four event streams of the node into the queue until `shutdown`.
pub async fn run_host_events(
    ctx: Arc<Context>,
    backends: Backends,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut docker = backends.containers.watch();
    let mut links = backends.interfaces.watch();
    let mut ovs = backends.ovs.watch();
    let mut nat = backends.nat.watch();
    let (mut docker_open, mut links_open, mut ovs_open) = (true, true, true);
    let mut nat_open = true;
    while docker_open || links_open || ovs_open || nat_open {
        tokio::select! {
            _ = shutdown.changed() => return,
            ev = docker.next(), if docker_open => match ev {
                Some(ContainerEvent::Changed { ref id, .. }) if ctx.removed_by_agent(id) => {
                    tracing::trace!(event = ?ev, "the agent's own removal");
                }
                Some(ev) => enqueue(&ctx, "docker", keys_for_container_event(&ctx.store, &ev), &ev),
                None => { docker_open = false; tracing::warn!("the Docker event stream ended"); }
            },
            ev = links.next(), if links_open => match ev {
                Some(ev) => enqueue(&ctx, "netlink", keys_for_link_event(&ctx.store, &ev), &ev),
                None => { links_open = false; tracing::warn!("the netlink event stream ended"); }
            },
            ev = ovs.next(), if ovs_open => match ev {
                Some(ev) => enqueue(&ctx, "ovsdb", keys_for_ovs_event(&ctx.store, &ev), &ev),
                None => { ovs_open = false; tracing::warn!("the OVSDB event stream ended"); }
            },
            ev = nat.next(), if nat_open => match ev {
                Some(ev) => enqueue(&ctx, "nftables", Some(keys_for_nat_event(&ev)), &ev),
                None => { nat_open = false; tracing::warn!("the nftables event stream ended"); }
            },
        }
    }
    // Every stream ended: only the periodic resync is left.
    let _ = shutdown.changed().await;
}

/// The periodic safety net: every `period`, every key.
pub async fn run_resync(
    queue: Arc<WorkQueue>,
    ctx: Arc<Context>,
    period: std::time::Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {
                tracing::debug!("periodic resync");
                queue.add_all(ctx.all_keys());
            }
        }
    }
}
