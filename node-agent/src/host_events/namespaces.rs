//! Watches inside containers' network namespaces: what someone changes in a running
//! container (an address, a route, an interface; its link table `topo` deleted or edited)
//! makes no event in the node's namespace, so each plumbed container gets two sockets opened
//! in its own namespace — rtnetlink (links, IPv4 addresses, routes) and nftables
//! notifications — and any change they hear queues the container's key. The reconcile that
//! follows finds what differs and repairs it as drift, as for every other event.
//!
//! A socket keeps its namespace alive, and with it the dead container's veth peer: so a watch
//! ends the moment the container's process exits (the backends close the sockets on its
//! pidfd), and the key is queued then too (the container has to be started again). A watch
//! is opened by the container's reconcile once the container is plumbed, and replaced when
//! the container's process changes; removing the container closes it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::{self, BoxStream};

use crate::backend::{ContainerNs, Interfaces, Nat};
use crate::error_chain::error_chain;
use crate::key::Key;
use crate::queue::WorkQueue;

/// After a watch ended, how soon its container is looked at (its process exited: the die
/// event is on its way too).
const AFTER_END: Duration = Duration::from_millis(100);

struct Watch {
    ns: ContainerNs,
    /// Tells this watch from a later one of the same container.
    serial: u64,
    task: tokio::task::AbortHandle,
}

type WatchMap = Arc<Mutex<HashMap<String, Watch>>>;

/// The namespace watches of the node's containers, by Container object name.
pub struct NamespaceWatches {
    interfaces: Arc<dyn Interfaces>,
    nat: Arc<dyn Nat>,
    queue: Arc<WorkQueue>,
    watches: WatchMap,
    serial: std::sync::atomic::AtomicU64,
}

/// One event of a watch, for the logs.
enum Heard {
    Interfaces(crate::backend::NamespaceChange),
    Nat(crate::backend::NatEvent),
}

impl std::fmt::Display for Heard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Heard::Interfaces(c) => write!(f, "rtnetlink {c:?}"),
            Heard::Nat(e) => write!(f, "nftables {e:?}"),
        }
    }
}

fn lock(m: &Mutex<HashMap<String, Watch>>) -> std::sync::MutexGuard<'_, HashMap<String, Watch>> {
    // Never held across an await; every section leaves the map consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl NamespaceWatches {
    pub fn new(interfaces: Arc<dyn Interfaces>, nat: Arc<dyn Nat>, queue: Arc<WorkQueue>) -> Self {
        NamespaceWatches {
            interfaces,
            nat,
            queue,
            watches: Arc::new(Mutex::new(HashMap::new())),
            serial: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Watches container `name`'s namespace `ns`, unless it is watched already. Failing to
    /// open a watch is not the reconcile's failure (the periodic resync still covers the
    /// container): it is logged, and the next reconcile of the container tries again.
    pub async fn ensure(&self, name: &str, ns: &ContainerNs) {
        if lock(&self.watches)
            .get(name)
            .is_some_and(|w| w.ns == *ns && !w.task.is_finished())
        {
            return;
        }
        let opened = match self.interfaces.watch_container(ns).await {
            Ok(links) => match self.nat.watch_container(ns).await {
                Ok(nat) => Ok((links, nat)),
                Err(e) => Err(error_chain(&e)),
            },
            Err(e) => Err(error_chain(&e)),
        };
        let (links, nat) = match opened {
            Ok(streams) => streams,
            Err(error) => {
                tracing::debug!(container = name, pid = ns.pid, %error, "namespace not watched");
                return;
            }
        };
        // Each stream ends with a None, so the watch ends as soon as either does.
        let end = || stream::once(async { None });
        let heard: BoxStream<'static, Option<Heard>> = stream::select(
            links.map(|c| Some(Heard::Interfaces(c))).chain(end()),
            nat.map(|e| Some(Heard::Nat(e))).chain(end()),
        )
        .boxed();
        let serial = self
            .serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let task = tokio::spawn(run_watch(
            name.to_string(),
            serial,
            heard,
            self.queue.clone(),
            self.watches.clone(),
        ));
        let replaced = lock(&self.watches).insert(
            name.to_string(),
            Watch {
                ns: ns.clone(),
                serial,
                task: task.abort_handle(),
            },
        );
        if let Some(old) = replaced {
            old.task.abort();
        }
        tracing::debug!(
            container = name,
            pid = ns.pid,
            "watching the container's namespace"
        );
    }

    /// Stops watching container `name` (it is being removed).
    pub fn forget(&self, name: &str) {
        if let Some(w) = lock(&self.watches).remove(name) {
            w.task.abort();
        }
    }

    /// The namespaces watched now, by container name.
    pub fn watched(&self) -> Vec<(String, ContainerNs)> {
        let mut v: Vec<(String, ContainerNs)> = lock(&self.watches)
            .iter()
            .filter(|(_, w)| !w.task.is_finished())
            .map(|(n, w)| (n.clone(), w.ns.clone()))
            .collect();
        v.sort();
        v
    }

    /// Stops every watch (the agent is shutting down).
    pub fn stop_all(&self) {
        for (_, w) in lock(&self.watches).drain() {
            w.task.abort();
        }
    }
}

/// Queues the container's key for everything heard; when either stream ends (the process
/// exited), drops both sockets, forgets the watch and queues the key once more.
async fn run_watch(
    name: String,
    serial: u64,
    mut heard: BoxStream<'static, Option<Heard>>,
    queue: Arc<WorkQueue>,
    watches: WatchMap,
) {
    let key = Key::Container(name.clone());
    while let Some(Some(h)) = heard.next().await {
        tracing::debug!(container = %name, heard = %h, "container namespace changed; reconciling");
        queue.add(key.clone());
    }
    drop(heard);
    {
        let mut w = lock(&watches);
        if w.get(&name).is_some_and(|w| w.serial == serial) {
            w.remove(&name);
        }
    }
    tracing::debug!(container = %name, "container namespace watch ended");
    queue.add_after(key, AFTER_END);
}
