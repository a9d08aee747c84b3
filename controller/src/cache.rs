//! The controller's informer: a consistent in-memory copy of everything it reads from etcd.
//!
//! One etcd watch covers [`keys::CACHE_RANGE_START`, `keys::CACHE_RANGE_END`) (objects, their
//! status, IPAM, agent reports, heartbeats and the fence), so every transaction arrives whole
//! in one watch response and each published [`Snapshot`] is the state at one revision.
//! Snapshots are persistent maps (`imbl`): publishing one after a 10,000-object apply shares
//! almost all of its structure with the previous one.
//!
//! While the fence names a pending intent (a change set too large for one transaction being
//! rolled forward, see `commit.rs`), the cache keeps applying events but publishes nothing,
//! so readers see a large apply entirely or not at all.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backoff::backoff::Backoff;
use etcd_client::{Client, EventType, GetOptions, KeyValue, SortOrder, SortTarget, WatchOptions};
use imbl::OrdMap;
use ipnet::Ipv4Net;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use topo_schema::api::{Heartbeat, ObservedReport, Registration};
use topo_schema::keys::{self, AddrValue, BlockValue, Fence, IpamKey};
use topo_schema::{Kind, ObjectRef, Resource};

/// Watch and list responses can be large (a whole apply's worth of objects).
pub const MAX_MESSAGE_BYTES: usize = 512 * 1024 * 1024;
const LIST_PAGE: i64 = 2000;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("failed to list {prefix} from etcd")]
    List {
        prefix: String,
        #[source]
        source: etcd_client::Error,
    },
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
    pub fn apply_put(&mut self, kv: &KeyValue) {
        if let Ok(key) = kv.key_str() {
            self.apply_put_raw(key, kv.value(), kv.mod_revision(), kv.create_revision());
        }
    }

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
                Ok(rep) => {
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
            crate::registration::apply_put(self, node, value);
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

/// States of the informer loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WatchState {
    /// First list: nothing published yet.
    Listing,
    /// Watching from `revision + 1`; everything up to `revision` is applied.
    Watching { revision: i64 },
    /// The watched revision was compacted: list again and replace the state.
    Relisting,
}

/// A pending intent as the cache last saw it: (intent id, fence mod_revision).
pub type PendingIntent = Option<(String, i64)>;

#[derive(Clone)]
pub struct Cache {
    relists: Arc<AtomicU64>,
    rx: watch::Receiver<Arc<Snapshot>>,
    pending_rx: watch::Receiver<PendingIntent>,
    progress_tx: mpsc::Sender<()>,
}

impl Cache {
    /// Lists, publishes the first snapshot, and keeps watching in a background task until
    /// `shutdown`. Retries etcd with backoff until the first list succeeds.
    pub async fn start(client: Client, shutdown: CancellationToken) -> Result<Cache, CacheError> {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        let (pending_tx, pending_rx) = watch::channel(None);
        let (progress_tx, progress_rx) = mpsc::channel(1);
        let (ready_tx, ready_rx) = oneshot::channel();
        let relists = Arc::new(AtomicU64::new(0));
        let informer = Informer {
            relists: relists.clone(),
            client,
            tx,
            pending_tx,
            progress_rx,
            state: Snapshot::default(),
            shutdown: shutdown.clone(),
            ready: Some(ready_tx),
        };
        tokio::spawn(informer.run(WatchState::Listing));
        tokio::select! {
            r = ready_rx => r.map_err(|_| CacheError::ShutDown)?,
            _ = shutdown.cancelled() => return Err(CacheError::ShutDown),
        }
        Ok(Cache {
            relists,
            rx,
            pending_rx,
            progress_tx,
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
            let _ = self.progress_tx.try_send(());
            match tokio::time::timeout(Duration::from_millis(200), rx.changed()).await {
                Ok(Ok(())) | Err(_) => {}
                // The informer is gone (shutdown): nothing newer will come.
                Ok(Err(_)) => return rx.borrow().clone(),
            }
        }
    }
}

pub(crate) fn new_backoff() -> backoff::ExponentialBackoff {
    backoff::ExponentialBackoffBuilder::new()
        .with_initial_interval(Duration::from_millis(100))
        .with_max_interval(Duration::from_secs(5))
        .with_randomization_factor(0.5)
        .with_max_elapsed_time(None)
        .build()
}

/// Whether no key in [`start`, `end`) has a mod_revision in (`after`, `at`], as etcd sees it
/// at `at`. Used to trust a watch progress notification: etcd 3.4 answers progress requests
/// with its current revision even when events up to it are still on their way (3.5 fixed
/// that). Deleted keys are not seen this way; their events still arrive and are applied.
pub(crate) async fn unchanged_between(
    client: &Client,
    start: &str,
    end: &[u8],
    after: i64,
    at: i64,
) -> bool {
    let opts = GetOptions::new()
        .with_range(end.to_vec())
        .with_revision(at)
        .with_sort(SortTarget::Mod, SortOrder::Descend)
        .with_limit(1)
        .with_keys_only();
    match client.kv_client().get(start, Some(opts)).await {
        Ok(resp) => resp
            .kvs()
            .first()
            .is_none_or(|kv| kv.mod_revision() <= after),
        Err(_) => false,
    }
}

/// Lists the cached range at one revision, page by page.
async fn list(client: &Client) -> Result<Snapshot, CacheError> {
    let mut kv = client
        .kv_client()
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let mut snap = Snapshot::default();
    let mut start = keys::CACHE_RANGE_START.as_bytes().to_vec();
    let mut revision = 0;
    // Statuses must be merged into objects whichever arrives first; collect objects, then
    // apply them after everything else.
    let mut objects = Vec::new();
    loop {
        let mut opts = GetOptions::new()
            .with_range(keys::CACHE_RANGE_END)
            .with_limit(LIST_PAGE);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let resp = kv
            .get(start.clone(), Some(opts))
            .await
            .map_err(|source| CacheError::List {
                prefix: keys::CACHE_RANGE_START.to_string(),
                source,
            })?;
        if revision == 0 {
            revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        }
        let kvs = resp.kvs();
        for kv in kvs {
            if kv
                .key_str()
                .is_ok_and(|k| keys::parse_object_key(k).is_some())
            {
                objects.push(kv.clone());
            } else {
                snap.apply_put(kv);
            }
        }
        match (resp.more(), kvs.last()) {
            (true, Some(last)) => {
                start = last.key().to_vec();
                start.push(0);
            }
            _ => break,
        }
    }
    for kv in &objects {
        snap.apply_put(kv);
    }
    snap.revision = revision;
    Ok(snap)
}

struct Informer {
    relists: Arc<AtomicU64>,
    client: Client,
    tx: watch::Sender<Arc<Snapshot>>,
    pending_tx: watch::Sender<PendingIntent>,
    progress_rx: mpsc::Receiver<()>,
    state: Snapshot,
    shutdown: CancellationToken,
    /// Told once the first list is published.
    ready: Option<oneshot::Sender<()>>,
}

enum WatchEnd {
    Compacted,
    Disconnected(String),
    Shutdown,
}

impl Informer {
    async fn run(mut self, mut state: WatchState) {
        let mut backoff = new_backoff();
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            state = match state {
                WatchState::Listing | WatchState::Relisting => match list(&self.client).await {
                    Ok(s) => {
                        tracing::info!(
                            revision = s.revision,
                            objects = s.objects.len(),
                            "cache: listed"
                        );
                        self.state = s;
                        match self.ready.take() {
                            // The first snapshot is published even mid-intent: there must be
                            // one, and writers roll the intent forward when they see it.
                            Some(ready) => {
                                self.publish_always();
                                let _ = ready.send(());
                            }
                            None => self.publish(),
                        }
                        WatchState::Watching {
                            revision: self.state.revision,
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "cache: list failed");
                        if !self.sleep(&mut backoff).await {
                            return;
                        }
                        state
                    }
                },
                WatchState::Watching { revision } => {
                    match self.watch_from(revision, &mut backoff).await {
                        WatchEnd::Shutdown => return,
                        WatchEnd::Compacted => {
                            self.relists.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(
                                revision,
                                "cache: watched revision was compacted, relisting"
                            );
                            WatchState::Relisting
                        }
                        WatchEnd::Disconnected(why) => {
                            tracing::warn!(revision = self.state.revision, %why, "cache: watch lost, re-watching");
                            if !self.sleep(&mut backoff).await {
                                return;
                            }
                            WatchState::Watching {
                                revision: self.state.revision,
                            }
                        }
                    }
                }
            };
        }
    }

    /// Sleeps one backoff step; false when shut down meanwhile.
    async fn sleep(&self, backoff: &mut backoff::ExponentialBackoff) -> bool {
        let wait = backoff.next_backoff().unwrap_or(Duration::from_secs(5));
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }

    async fn watch_from(
        &mut self,
        revision: i64,
        backoff: &mut backoff::ExponentialBackoff,
    ) -> WatchEnd {
        let opts = WatchOptions::new()
            .with_range(keys::CACHE_RANGE_END)
            .with_start_revision(revision + 1)
            .with_progress_notify();
        let mut wc = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let stream = tokio::select! {
            _ = self.shutdown.cancelled() => return WatchEnd::Shutdown,
            s = wc.watch(keys::CACHE_RANGE_START, Some(opts)) => s,
        };
        let (mut sender, mut stream) = match stream {
            Ok(s) => s.split(),
            Err(e) => return WatchEnd::Disconnected(e.to_string()),
        };
        loop {
            let msg = tokio::select! {
                _ = self.shutdown.cancelled() => return WatchEnd::Shutdown,
                Some(()) = self.progress_rx.recv() => {
                    if let Err(e) = sender.request_progress().await {
                        return WatchEnd::Disconnected(e.to_string());
                    }
                    continue;
                }
                m = stream.message() => m,
            };
            let resp = match msg {
                Ok(Some(r)) => r,
                Ok(None) => return WatchEnd::Disconnected("watch stream ended".into()),
                Err(e) => return WatchEnd::Disconnected(e.to_string()),
            };
            if resp.compact_revision() > 0 {
                return WatchEnd::Compacted;
            }
            if resp.canceled() {
                return WatchEnd::Disconnected(format!("watch canceled: {}", resp.cancel_reason()));
            }
            if resp.created() {
                backoff.reset();
            }
            let events = resp.events();
            if events.is_empty() {
                // A progress notification. etcd 3.4 answers progress requests with its
                // current revision even when events up to it are still on their way (3.5
                // fixed that), so the revision is only taken once etcd confirms nothing in
                // the range was written after what the cache has.
                let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
                if rev > self.state.revision && !resp.created() && self.unchanged_since(rev).await {
                    self.state.revision = rev;
                    self.publish();
                }
                continue;
            }
            for ev in events {
                let Some(kv) = ev.kv() else { continue };
                self.state.revision = self.state.revision.max(kv.mod_revision());
                match ev.event_type() {
                    EventType::Put => self.state.apply_put(kv),
                    EventType::Delete => {
                        if let Ok(k) = kv.key_str() {
                            self.state.apply_delete(k);
                        }
                    }
                }
            }
            self.publish();
        }
    }

    async fn unchanged_since(&self, rev: i64) -> bool {
        unchanged_between(
            &self.client,
            keys::CACHE_RANGE_START,
            keys::CACHE_RANGE_END.as_bytes(),
            self.state.revision,
            rev,
        )
        .await
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
}
