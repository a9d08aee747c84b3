//! The controller's informer: a consistent in-memory copy of everything it reads from etcd.
//!
//! One etcd watch covers [`keys::CACHE_RANGE_START`, `keys::CACHE_RANGE_END`) (objects, their
//! status, IPAM, agent reports, heartbeats and the fence), so every transaction arrives whole
//! in one watch response and each published [`Snapshot`] is the state at one revision.
//! Snapshots are persistent maps (`imbl`): publishing one after a 10,000-object apply shares
//! almost all of its structure with the previous one.
//!
//! Listing, watching, resuming and relisting after compaction are `topo_watcher`'s state
//! machine, shared with the agents; this module keeps what is the cache's own: decoding keys
//! into the snapshot and publishing snapshots.
//!
//! While the fence names a pending intent (a change set too large for one transaction being
//! rolled forward, see `commit.rs`), the cache keeps applying events but publishes nothing,
//! so readers see a large apply entirely or not at all.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::Client;
use imbl::OrdMap;
use ipnet::Ipv4Net;
use tokio::sync::{Notify, oneshot, watch};
use tokio_util::sync::CancellationToken;
use topo_schema::api::{Heartbeat, ObservedReport, Registration};
use topo_schema::keys::{self, AddrValue, BlockValue, Fence, IpamKey};
use topo_schema::limits;
use topo_schema::{Kind, ObjectRef, Resource};
use topo_watcher::{EtcdSource, Kv, KvEvent, Listing, Step, Watcher};

/// Watch and list responses can be large (a whole apply's worth of objects).
pub const MAX_MESSAGE_BYTES: usize = 512 * 1024 * 1024;
const LIST_PAGE: i64 = 2000;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("failed to start the cache: shut down before the first list completed")]
    ShutDown,
}

/// An object as stored, with its status merged and `resourceVersion` set.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredObject {
    pub resource: Resource,
    /// mod_revision of the object key: the resourceVersion.
    pub mod_revision: i64,
    pub create_revision: i64,
}

impl StoredObject {
    pub fn object_ref(&self) -> ObjectRef {
        self.resource.object_ref()
    }

    /// Whether the controller derived this object (mesh tunnels).
    pub fn is_derived(&self) -> bool {
        self.resource
            .metadata()
            .labels
            .contains_key(topo_schema::LABEL_DERIVED_FROM)
    }
}

/// An immutable view of the cached state at one etcd revision.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The etcd revision the snapshot reflects.
    pub revision: i64,
    /// mod_revision of the fence key (0 when absent).
    pub fence_rev: i64,
    /// The intent the fence names as pending (only seen in the first snapshot after a crash;
    /// later snapshots are held back while one is pending).
    pub pending_intent: Option<String>,
    pub objects: OrdMap<ObjectRef, Arc<StoredObject>>,
    pub statuses: OrdMap<ObjectRef, Arc<serde_json::Value>>,
    /// network → block → node leasing it.
    pub blocks: OrdMap<String, OrdMap<Ipv4Net, String>>,
    /// network → address → container holding it.
    pub addrs: OrdMap<String, OrdMap<Ipv4Addr, String>>,
    /// (node, object) → what the node's agent last reported.
    pub reports: OrdMap<(String, ObjectRef), Arc<ObservedReport>>,
    pub heartbeats: OrdMap<String, Arc<Heartbeat>>,
    /// container → the `Verified` condition of its last `topoctl verify` (folded into its
    /// status by the leader, so a status write of the leader never loses it).
    pub verified: OrdMap<String, Arc<topo_schema::Condition>>,
    /// node → the registration its agent wrote and the controller has not folded yet.
    pub registrations: OrdMap<String, Arc<Registration>>,
}

impl Snapshot {
    pub fn get(&self, r: &ObjectRef) -> Option<&Arc<StoredObject>> {
        self.objects.get(r)
    }

    /// The objects of one kind, in name order.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Arc<StoredObject>> + '_ {
        self.objects
            .range(ObjectRef::new(kind, "")..)
            .take_while(move |(r, _)| r.kind == kind)
            .map(|(_, o)| o)
    }

    /// Applies a put of `key` seen at `mod_revision`. Values that do not decode are logged
    /// and treated as absent: one corrupt key must not stop the controller.
    pub fn apply_put_raw(
        &mut self,
        key: &str,
        value: &[u8],
        mod_revision: i64,
        create_revision: i64,
    ) {
        if key == keys::fence() {
            self.fence_rev = mod_revision;
            self.pending_intent = match serde_json::from_slice::<Fence>(value) {
                Ok(f) => f.pending_intent,
                Err(e) => {
                    tracing::warn!(%key, error = %e, "undecodable fence value");
                    None
                }
            };
        } else if let Some((kind, name)) = keys::parse_object_key(key) {
            let r = ObjectRef::new(kind, name);
            match decode_object(kind, name, value) {
                Some(mut resource) => {
                    if let Some(st) = self.statuses.get(&r) {
                        resource.set_status_value((**st).clone());
                    }
                    resource.metadata_mut().resource_version = Some(mod_revision.to_string());
                    let obj = StoredObject {
                        resource,
                        mod_revision,
                        create_revision,
                    };
                    self.objects.insert(r, Arc::new(obj));
                }
                None => {
                    self.objects.remove(&r);
                }
            }
        } else if let Some((kind, name)) = keys::parse_status_key(key) {
            let r = ObjectRef::new(kind, name);
            match serde_json::from_slice::<serde_json::Value>(value) {
                Ok(st) => {
                    if let Some(obj) = self.objects.get(&r) {
                        let mut obj = (**obj).clone();
                        obj.resource.set_status_value(st.clone());
                        self.objects.insert(r.clone(), Arc::new(obj));
                    }
                    self.statuses.insert(r, Arc::new(st));
                }
                Err(e) => tracing::warn!(%key, error = %e, "undecodable status"),
            }
        } else if let Some(ik) = keys::parse_ipam_key(key) {
            match ik {
                IpamKey::Block { network, block } => {
                    match serde_json::from_slice::<BlockValue>(value) {
                        Ok(v) => {
                            self.blocks
                                .entry(network.to_string())
                                .or_default()
                                .insert(block, v.node);
                        }
                        Err(e) => tracing::warn!(%key, error = %e, "undecodable block lease"),
                    }
                }
                IpamKey::Addr { network, ip } => match serde_json::from_slice::<AddrValue>(value) {
                    Ok(v) => {
                        self.addrs
                            .entry(network.to_string())
                            .or_default()
                            .insert(ip, v.holder);
                    }
                    Err(e) => tracing::warn!(%key, error = %e, "undecodable address claim"),
                },
            }
        } else if let Some((node, kind, name)) = keys::parse_report_key(key) {
            match serde_json::from_slice::<ObservedReport>(value) {
                Ok(mut rep) => {
                    rep.reason = limits::bounded(rep.reason, limits::MAX_REPORT_REASON);
                    rep.message = limits::bounded(rep.message, limits::MAX_REPORT_MESSAGE);
                    self.reports.insert(
                        (node.to_string(), ObjectRef::new(kind, name)),
                        Arc::new(rep),
                    );
                }
                Err(e) => tracing::warn!(%key, error = %e, "undecodable agent report"),
            }
        } else if let Some(node) = keys::parse_heartbeat_key(key) {
            match serde_json::from_slice::<Heartbeat>(value) {
                Ok(hb) => {
                    self.heartbeats.insert(node.to_string(), Arc::new(hb));
                }
                Err(e) => tracing::warn!(%key, error = %e, "undecodable heartbeat"),
            }
        } else if let Some(node) = keys::parse_registration_key(key) {
            apply_registration(self, node, value);
        } else if let Some((Kind::Container, name)) = keys::parse_verified_key(key) {
            apply_verified(self, key, name, value);
        }
    }

    pub fn apply_delete(&mut self, key: &str) {
        if key == keys::fence() {
            self.fence_rev = 0;
            self.pending_intent = None;
        } else if let Some((kind, name)) = keys::parse_object_key(key) {
            self.objects.remove(&ObjectRef::new(kind, name));
        } else if let Some((kind, name)) = keys::parse_status_key(key) {
            let r = ObjectRef::new(kind, name);
            self.statuses.remove(&r);
            if let Some(obj) = self.objects.get(&r) {
                let mut obj = (**obj).clone();
                obj.resource.clear_status();
                self.objects.insert(r, Arc::new(obj));
            }
        } else if let Some(ik) = keys::parse_ipam_key(key) {
            match ik {
                IpamKey::Block { network, block } => {
                    remove_nested(&mut self.blocks, network, &block)
                }
                IpamKey::Addr { network, ip } => remove_nested(&mut self.addrs, network, &ip),
            }
        } else if let Some((node, kind, name)) = keys::parse_report_key(key) {
            self.reports
                .remove(&(node.to_string(), ObjectRef::new(kind, name)));
        } else if let Some(node) = keys::parse_heartbeat_key(key) {
            self.heartbeats.remove(node);
        } else if let Some(node) = keys::parse_registration_key(key) {
            self.registrations.remove(node);
        } else if let Some((Kind::Container, name)) = keys::parse_verified_key(key) {
            self.verified.remove(name);
        }
    }
}

fn remove_nested<K: Ord + Clone>(m: &mut OrdMap<String, OrdMap<K, String>>, network: &str, k: &K) {
    let now_empty = match m.get_mut(network) {
        Some(inner) => {
            inner.remove(k);
            inner.is_empty()
        }
        None => false,
    };
    if now_empty {
        m.remove(network);
    }
}

/// Decodes a stored object, checking it is the object its key names.
pub fn decode_object(kind: Kind, name: &str, value: &[u8]) -> Option<Resource> {
    let decoded = serde_json::from_slice::<serde_json::Value>(value)
        .map_err(|e| e.to_string())
        .and_then(|v| Resource::from_value(v).map_err(|e| e.to_string()));
    match decoded {
        Ok(r) if r.kind() == kind && r.name() == name => Some(r),
        Ok(r) => {
            tracing::warn!(%kind, %name, found = %r.object_ref(), "stored object does not match its key");
            None
        }
        Err(e) => {
            tracing::warn!(%kind, %name, error = %e, "undecodable stored object");
            None
        }
    }
}

/// A pending intent as the cache last saw it: (intent id, fence mod_revision).
pub type PendingIntent = Option<(String, i64)>;

#[derive(Clone)]
pub struct Cache {
    relists: Arc<AtomicU64>,
    rx: watch::Receiver<Arc<Snapshot>>,
    pending_rx: watch::Receiver<PendingIntent>,
    /// Asks the watch for a progress notification (see [`Cache::wait_for_revision`]).
    progress: Arc<Notify>,
}

impl Cache {
    /// Lists, publishes the first snapshot, and keeps watching in a background task until
    /// `shutdown`. Retries etcd with backoff until the first list succeeds.
    pub async fn start(client: Client, shutdown: CancellationToken) -> Result<Cache, CacheError> {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        let (pending_tx, pending_rx) = watch::channel(None);
        let (ready_tx, ready_rx) = oneshot::channel();
        let relists = Arc::new(AtomicU64::new(0));
        let progress = Arc::new(Notify::new());
        let source = EtcdSource::range(client, keys::CACHE_RANGE_START, keys::CACHE_RANGE_END)
            .with_page_size(LIST_PAGE)
            .with_max_message_bytes(MAX_MESSAGE_BYTES)
            .with_verified_progress()
            .with_progress_requests(progress.clone());
        let informer = Informer {
            relists: relists.clone(),
            watcher: Watcher::new("cache", source, new_backoff()),
            tx,
            pending_tx,
            state: Snapshot::default(),
            shutdown: shutdown.clone(),
            ready: Some(ready_tx),
        };
        tokio::spawn(informer.run());
        tokio::select! {
            r = ready_rx => r.map_err(|_| CacheError::ShutDown)?,
            _ = shutdown.cancelled() => return Err(CacheError::ShutDown),
        }
        Ok(Cache {
            relists,
            rx,
            pending_rx,
            progress,
        })
    }

    /// How often the cache had to list again because its revision was compacted.
    pub fn relist_count(&self) -> u64 {
        self.relists.load(Ordering::Relaxed)
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.rx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.rx.clone()
    }

    /// The pending intent the fence names right now, as far as the watch has seen (published
    /// snapshots hold back while one is pending; this does not).
    pub fn pending_intent(&self) -> watch::Receiver<PendingIntent> {
        self.pending_rx.clone()
    }

    /// Waits until the published snapshot reflects `rev`. Revisions that touched nothing the
    /// cache watches are reached through etcd's progress notifications.
    pub async fn wait_for_revision(&self, rev: i64) -> Arc<Snapshot> {
        let mut rx = self.rx.clone();
        loop {
            let cur = rx.borrow_and_update().clone();
            if cur.revision >= rev {
                return cur;
            }
            self.progress.notify_one();
            match tokio::time::timeout(Duration::from_millis(200), rx.changed()).await {
                Ok(Ok(())) | Err(_) => {}
                // The informer is gone (shutdown): nothing newer will come.
                Ok(Err(_)) => return rx.borrow().clone(),
            }
        }
    }
}

/// The controller's retry schedule for etcd (the cache, the leader's election).
pub(crate) fn new_backoff() -> backoff::ExponentialBackoff {
    topo_watcher::jittered_backoff(Duration::from_millis(100), Duration::from_secs(5))
}

/// Used to trust a watch progress notification (see `topo_watcher::etcd`).
pub(crate) use topo_watcher::unchanged_between;

/// The snapshot a listing describes. Statuses must be merged into objects whichever arrives
/// first, so objects are applied after everything else.
fn snapshot_of(listing: &Listing) -> Snapshot {
    let mut snap = Snapshot::default();
    let (objects, rest): (Vec<&Kv>, Vec<&Kv>) = listing
        .kvs
        .iter()
        .partition(|kv| keys::parse_object_key(&kv.key).is_some());
    for kv in rest.into_iter().chain(objects) {
        snap.apply_put_raw(&kv.key, &kv.value, kv.mod_revision, kv.create_revision);
    }
    snap.revision = listing.revision;
    snap
}

/// The informer: the shared list/watch machine, with the cache's own part — applying what
/// it brings to the snapshot and publishing snapshots (held back while an intent is pending).
struct Informer {
    relists: Arc<AtomicU64>,
    watcher: Watcher<EtcdSource>,
    tx: watch::Sender<Arc<Snapshot>>,
    pending_tx: watch::Sender<PendingIntent>,
    state: Snapshot,
    shutdown: CancellationToken,
    /// Told once the first list is published.
    ready: Option<oneshot::Sender<()>>,
}

impl Informer {
    async fn run(mut self) {
        loop {
            let step = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                s = self.watcher.step() => s,
            };
            match step {
                Step::Listed { listing, relist } => self.listed(&listing, relist),
                Step::Events { events, revision } => {
                    for ev in &events {
                        match ev {
                            KvEvent::Put(kv) => self.state.apply_put_raw(
                                &kv.key,
                                &kv.value,
                                kv.mod_revision,
                                kv.create_revision,
                            ),
                            KvEvent::Delete { key, .. } => self.state.apply_delete(key),
                        }
                    }
                    self.state.revision = self.state.revision.max(revision);
                    self.publish();
                }
                Step::Progress { revision } => {
                    if revision > self.state.revision {
                        self.state.revision = revision;
                        self.publish();
                    }
                }
                Step::Idle => {}
                Step::Retry { error, delay } => {
                    tracing::warn!(error = %error, source = ?std::error::Error::source(&error),
                        state = ?self.watcher.state(), ?delay, "cache: etcd failed; retrying");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    fn listed(&mut self, listing: &Listing, relist: bool) {
        self.state = snapshot_of(listing);
        tracing::info!(
            revision = self.state.revision,
            objects = self.state.objects.len(),
            relist,
            "cache: listed"
        );
        if relist {
            self.relists.fetch_add(1, Ordering::Relaxed);
        }
        match self.ready.take() {
            // The first snapshot is published even mid-intent: there must be one, and
            // writers roll the intent forward when they see it.
            Some(ready) => {
                self.publish_always();
                let _ = ready.send(());
            }
            None => self.publish(),
        }
    }

    fn publish_always(&self) {
        self.publish();
        self.tx.send_replace(Arc::new(self.state.clone()));
    }

    fn publish(&self) {
        let pending = self
            .state
            .pending_intent
            .clone()
            .map(|i| (i, self.state.fence_rev));
        self.pending_tx.send_if_modified(|p| {
            if *p != pending {
                *p = pending.clone();
                true
            } else {
                false
            }
        });
        if pending.is_none() {
            self.tx.send_replace(Arc::new(self.state.clone()));
        }
    }
}

/// An agent's registration (`keys::registration(node)`) into the snapshot; the leader
/// turns it into a Node (registration.rs).
fn apply_verified(snap: &mut Snapshot, key: &str, name: &str, value: &[u8]) {
    match serde_json::from_slice::<topo_schema::Condition>(value) {
        Ok(c) => {
            snap.verified.insert(name.to_string(), Arc::new(c));
        }
        Err(e) => tracing::warn!(%key, error = %e, "undecodable Verified condition"),
    }
}

fn apply_registration(snap: &mut Snapshot, node: &str, value: &[u8]) {
    match serde_json::from_slice::<Registration>(value) {
        Ok(r) if r.node == node => {
            snap.registrations.insert(node.to_string(), Arc::new(r));
        }
        Ok(r) => tracing::warn!(
            node,
            claims = %r.node,
            "a registration under another node's key; ignored"
        ),
        Err(e) => tracing::warn!(node, error = %e, "undecodable registration"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Kv(String, String, i64);
    fn kv(key: &str, value: &str, rev: i64) -> Kv {
        Kv(key.to_string(), value.to_string(), rev)
    }
    impl Snapshot {
        fn put(&mut self, kv: Kv) {
            self.apply_put_raw(&kv.0, kv.1.as_bytes(), kv.2, 1);
        }
    }

    #[test]
    fn status_merges_into_object_in_either_order() {
        let obj = r#"{"apiVersion":"topo.dev/v1alpha1","kind":"Node","metadata":{"name":"n1"},"spec":{"address":"192.168.1.1"}}"#;
        let st = r#"{"conditions":[],"agentVersion":"1"}"#;
        let r = ObjectRef::new(Kind::Node, "n1");
        let mut a = Snapshot::default();
        a.put(kv(&keys::object(Kind::Node, "n1"), obj, 5));
        a.put(kv(&keys::status(Kind::Node, "n1"), st, 6));
        let mut b = Snapshot::default();
        b.put(kv(&keys::status(Kind::Node, "n1"), st, 6));
        b.put(kv(&keys::object(Kind::Node, "n1"), obj, 5));
        for s in [&a, &b] {
            let o = s.get(&r).unwrap();
            assert_eq!(o.mod_revision, 5);
            assert_eq!(o.resource.metadata().resource_version.as_deref(), Some("5"));
            assert_eq!(o.resource.status_value()["agentVersion"], "1");
        }
        a.apply_delete(&keys::status(Kind::Node, "n1"));
        assert!(a.get(&r).unwrap().resource.status_value().is_null());
        a.apply_delete(&keys::object(Kind::Node, "n1"));
        assert!(a.get(&r).is_none());
    }

    #[test]
    fn ipam_keys_and_corrupt_values() {
        let mut s = Snapshot::default();
        let b: Ipv4Net = "10.2.1.0/24".parse().unwrap();
        s.put(kv(&keys::ipam_block("ov", b), r#"{"node":"n1"}"#, 3));
        s.put(kv(
            &keys::ipam_addr("ov", "10.2.1.2".parse().unwrap()),
            r#"{"holder":"web"}"#,
            3,
        ));
        s.put(kv(&keys::object(Kind::Node, "bad"), "not json", 4));
        assert_eq!(s.blocks["ov"][&b], "n1");
        assert_eq!(s.addrs["ov"].len(), 1);
        assert!(s.objects.is_empty());
        s.apply_delete(&keys::ipam_block("ov", b));
        assert!(!s.blocks.contains_key("ov"));
    }

    #[test]
    fn verified_conditions_of_containers() {
        let mut s = Snapshot::default();
        let cond = r#"{"type":"Verified","status":"True","reason":"ChecksPassed","message":"3 checks passed","lastTransitionTime":"2026-11-28T22:00:00Z"}"#;
        s.put(kv(&keys::verified(Kind::Container, "web"), cond, 5));
        s.put(kv(&keys::verified(Kind::Container, "bad"), "not json", 5));
        s.put(kv(&keys::verified(Kind::Network, "ov"), cond, 5));
        assert_eq!(s.verified.len(), 1, "{:?}", s.verified);
        assert_eq!(s.verified["web"].reason, "ChecksPassed");
        s.apply_delete(&keys::verified(Kind::Container, "web"));
        assert!(s.verified.is_empty());
    }
}
