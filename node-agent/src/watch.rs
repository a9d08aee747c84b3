//! The node's slice as the agent sees it: an explicit list/watch state machine in the manner of
//! kube-rs's watcher.
//!
//! ```text
//!   Listing ──list ok──▶ Watching{rev} ──events──▶ Watching{rev'}
//!      ▲ list failed         │  ▲   disconnect: back off, watch again from rev+1 (no relist)
//!      └─(back off)          │  └──────────────┘
//!                            └─compacted──▶ Relisting ──list ok (diff)──▶ Watching{rev''}
//! ```
//!
//! The watcher owns the in-memory desired state ([`SliceStore`]) and hands the keys that
//! changed to its caller, which queues them for the reconciler. It talks to etcd only through
//! [`SliceSource`], so the machine is unit-tested with a scripted source.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use backoff::ExponentialBackoff;
use backoff::backoff::Backoff;
use etcd_client::{Client, EventType, GetOptions, SortOrder, SortTarget, WatchOptions};
use topo_schema::keys;
use topo_schema::slice::{SLICE_VERSION, SliceEntry, SliceEnvelope};

/// What one slice key holds, decoded once when it arrives.
// Nearly every value is an Entry: boxing it would add an indirection and save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum SliceValue {
    Entry(SliceEntry),
    /// Written by a controller that speaks a slice version this agent does not know: reported
    /// and left alone (nothing on the host that belongs to the key is changed or removed).
    Unsupported {
        version: u64,
    },
    /// Not an envelope at all; also left alone.
    Invalid {
        error: String,
    },
}

impl SliceValue {
    pub fn decode(bytes: &[u8]) -> SliceValue {
        let value: serde_json::Value = match serde_json::from_slice(bytes) {
            Ok(v) => v,
            Err(e) => {
                return SliceValue::Invalid {
                    error: e.to_string(),
                };
            }
        };
        match value.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(SLICE_VERSION) => {}
            Some(version) => return SliceValue::Unsupported { version },
            None => {
                return SliceValue::Invalid {
                    error: "missing field `version`".into(),
                };
            }
        }
        match serde_json::from_value::<SliceEnvelope>(value) {
            Ok(env) => SliceValue::Entry(env.entry),
            Err(e) => SliceValue::Invalid {
                error: e.to_string(),
            },
        }
    }

    pub fn entry(&self) -> Option<&SliceEntry> {
        match self {
            SliceValue::Entry(e) => Some(e),
            _ => None,
        }
    }
}

/// The desired state of the node: slice entry key (below the node's prefix) → value.
/// Shared between the watcher (the only writer) and the reconcilers.
#[derive(Debug, Clone, Default)]
pub struct SliceStore {
    inner: Arc<RwLock<BTreeMap<String, SliceValue>>>,
}

impl SliceStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store pre-filled with entries (tests, and the reconciler's own unit tests).
    pub fn from_entries(entries: impl IntoIterator<Item = SliceEntry>) -> Self {
        let store = SliceStore::new();
        {
            let mut map = store.write();
            for e in entries {
                map.insert(e.key(), SliceValue::Entry(e));
            }
        }
        store
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, SliceValue>> {
        // A panic while holding the lock cannot leave the map half-updated (every write is a
        // single insert/remove/replace), so a poisoned lock is still consistent.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, SliceValue>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: &str) -> Option<SliceValue> {
        self.read().get(key).cloned()
    }

    pub fn keys(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    pub fn snapshot(&self) -> BTreeMap<String, SliceValue> {
        self.read().clone()
    }

    /// Every decodable entry.
    pub fn entries(&self) -> Vec<SliceEntry> {
        self.read()
            .values()
            .filter_map(|v| v.entry().cloned())
            .collect()
    }

    pub fn insert(&self, key: String, value: SliceValue) -> bool {
        let mut map = self.write();
        map.get(&key) != Some(&value) && {
            map.insert(key, value);
            true
        }
    }

    pub fn remove(&self, key: &str) -> bool {
        self.write().remove(key).is_some()
    }

    /// Replaces everything; returns the keys whose value differs (added, changed or gone).
    pub fn replace(&self, new: BTreeMap<String, SliceValue>) -> Vec<String> {
        let mut map = self.write();
        let mut changed: Vec<String> = map
            .iter()
            .filter(|(k, v)| new.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        changed.extend(new.keys().filter(|k| !map.contains_key(*k)).cloned());
        changed.sort();
        *map = new;
        changed
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("failed to list the slice: {0}")]
    List(#[source] etcd_client::Error),
    #[error("failed to watch the slice: {0}")]
    Watch(#[source] etcd_client::Error),
    #[error("the slice watch was canceled by etcd: {reason}")]
    Canceled { reason: String },
    #[error("failed to {what} (scripted)")]
    Scripted { what: String },
}

/// A full read of the slice prefix at one revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listing {
    pub revision: i64,
    /// Entry key (below the prefix) → raw value.
    pub kvs: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum KvChange {
    Put(Vec<u8>),
    Delete,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KvEvent {
    pub key: String,
    pub change: KvChange,
    pub mod_revision: i64,
}

/// One message of a watch, reduced to what the state machine acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchMessage {
    Events(Vec<KvEvent>),
    /// Nothing under the prefix changed up to `revision`.
    Progress {
        revision: i64,
    },
    /// The start revision is gone: only a relist can catch up.
    Compacted {
        compact_revision: i64,
    },
}

pub trait SliceSource: Send {
    type Watch: SliceWatch;
    fn list(&mut self) -> impl Future<Output = Result<Listing, SourceError>> + Send;
    /// Watches the prefix from `start_revision` (inclusive).
    fn watch(
        &mut self,
        start_revision: i64,
    ) -> impl Future<Output = Result<Self::Watch, SourceError>> + Send;
}

pub trait SliceWatch: Send {
    /// The next message; `Ok(None)` when the stream ended (a disconnect).
    fn next(&mut self) -> impl Future<Output = Result<Option<WatchMessage>, SourceError>> + Send;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchState {
    /// No desired state yet: list the prefix.
    Listing,
    /// The store holds everything up to `revision`; watch from `revision + 1`.
    Watching { revision: i64 },
    /// The watch revision was compacted: list again and deliver the differences.
    Relisting,
}

/// What one step of the machine produced for the caller.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// A (re)list completed: the store is complete. `changed` holds every key whose value
    /// differs from before the list (everything on the first list).
    Synced { changed: Vec<String>, relist: bool },
    /// Keys changed by watch events.
    Changed(Vec<String>),
    /// Nothing for the caller (watch established, progress notification, empty batch).
    Idle,
    /// Something failed; the caller waits `delay` before the next step.
    Retry { error: String, delay: Duration },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchStats {
    pub lists: u64,
    pub relists: u64,
    /// Watches opened after the first, from a kept revision.
    pub rewatches: u64,
}

pub struct SliceWatcher<S: SliceSource> {
    source: S,
    state: WatchState,
    watch: Option<S::Watch>,
    store: SliceStore,
    backoff: ExponentialBackoff,
    stats: WatchStats,
    opened_once: bool,
}

pub fn watch_backoff(initial: Duration, max: Duration) -> ExponentialBackoff {
    backoff::ExponentialBackoffBuilder::new()
        .with_initial_interval(initial)
        .with_max_interval(max)
        .with_randomization_factor(0.3)
        .with_multiplier(2.0)
        .with_max_elapsed_time(None)
        .build()
}

impl<S: SliceSource> SliceWatcher<S> {
    pub fn new(source: S, store: SliceStore) -> Self {
        Self::with_backoff(
            source,
            store,
            watch_backoff(Duration::from_millis(200), Duration::from_secs(10)),
        )
    }

    pub fn with_backoff(source: S, store: SliceStore, backoff: ExponentialBackoff) -> Self {
        SliceWatcher {
            source,
            state: WatchState::Listing,
            watch: None,
            store,
            backoff,
            stats: WatchStats::default(),
            opened_once: false,
        }
    }

    pub fn state(&self) -> WatchState {
        self.state
    }

    pub fn stats(&self) -> WatchStats {
        self.stats
    }

    pub fn store(&self) -> &SliceStore {
        &self.store
    }

    fn retry(&mut self, error: impl std::fmt::Display) -> Step {
        let delay = self
            .backoff
            .next_backoff()
            .unwrap_or(Duration::from_secs(10));
        Step::Retry {
            error: error.to_string(),
            delay,
        }
    }

    /// Performs one transition.
    pub async fn step(&mut self) -> Step {
        match self.state {
            WatchState::Listing | WatchState::Relisting => {
                let relist = self.state == WatchState::Relisting;
                let listing = match self.source.list().await {
                    Ok(l) => l,
                    Err(e) => return self.retry(e),
                };
                let new: BTreeMap<String, SliceValue> = listing
                    .kvs
                    .iter()
                    .map(|(k, v)| (k.clone(), SliceValue::decode(v)))
                    .collect();
                let changed = self.store.replace(new);
                self.stats.lists += 1;
                if relist {
                    self.stats.relists += 1;
                }
                self.watch = None;
                self.state = WatchState::Watching {
                    revision: listing.revision,
                };
                self.backoff.reset();
                Step::Synced { changed, relist }
            }
            WatchState::Watching { revision } => {
                let watch = match &mut self.watch {
                    Some(w) => w,
                    None => match self.source.watch(revision + 1).await {
                        Ok(w) => {
                            if self.opened_once {
                                self.stats.rewatches += 1;
                            }
                            self.opened_once = true;
                            self.watch.insert(w)
                        }
                        Err(e) => return self.retry(e),
                    },
                };
                match watch.next().await {
                    Ok(Some(WatchMessage::Events(events))) => {
                        self.backoff.reset();
                        let mut changed = Vec::new();
                        let mut rev = revision;
                        for ev in events {
                            rev = rev.max(ev.mod_revision);
                            let touched = match ev.change {
                                KvChange::Put(v) => {
                                    self.store.insert(ev.key.clone(), SliceValue::decode(&v))
                                }
                                KvChange::Delete => self.store.remove(&ev.key),
                            };
                            if touched && !changed.contains(&ev.key) {
                                changed.push(ev.key);
                            }
                        }
                        self.state = WatchState::Watching { revision: rev };
                        if changed.is_empty() {
                            Step::Idle
                        } else {
                            Step::Changed(changed)
                        }
                    }
                    Ok(Some(WatchMessage::Progress { revision: r })) => {
                        self.backoff.reset();
                        self.state = WatchState::Watching {
                            revision: revision.max(r),
                        };
                        Step::Idle
                    }
                    Ok(Some(WatchMessage::Compacted { compact_revision })) => {
                        tracing::info!(
                            revision,
                            compact_revision,
                            "slice watch revision compacted; relisting"
                        );
                        self.watch = None;
                        self.state = WatchState::Relisting;
                        Step::Idle
                    }
                    Ok(None) => {
                        self.watch = None;
                        self.retry("the slice watch stream ended")
                    }
                    Err(e) => {
                        self.watch = None;
                        self.retry(e)
                    }
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------ etcd

/// Keys per range request of a list; the list pages at one revision so it stays consistent.
const LIST_PAGE: i64 = 500;

pub struct EtcdSliceSource {
    client: Client,
    prefix: String,
}

impl EtcdSliceSource {
    pub fn new(client: Client, node: &str) -> Self {
        EtcdSliceSource {
            client,
            prefix: keys::slice_prefix(node),
        }
    }

    fn strip(&self, key: &[u8]) -> String {
        let key = String::from_utf8_lossy(key);
        key.strip_prefix(&self.prefix).unwrap_or(&key).to_string()
    }
}

impl SliceSource for EtcdSliceSource {
    type Watch = EtcdSliceWatch;

    async fn list(&mut self) -> Result<Listing, SourceError> {
        let end = keys::prefix_end(&self.prefix);
        let mut from = self.prefix.as_bytes().to_vec();
        let mut listing = Listing::default();
        loop {
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE)
                .with_sort(SortTarget::Key, SortOrder::Ascend);
            if listing.revision > 0 {
                opts = opts.with_revision(listing.revision);
            }
            let resp = self
                .client
                .get(from.clone(), Some(opts))
                .await
                .map_err(SourceError::List)?;
            if listing.revision == 0 {
                listing.revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            for kv in resp.kvs() {
                listing
                    .kvs
                    .push((self.strip(kv.key()), kv.value().to_vec()));
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(listing),
            }
        }
    }

    async fn watch(&mut self, start_revision: i64) -> Result<EtcdSliceWatch, SourceError> {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start_revision)
            .with_progress_notify();
        let stream = self
            .client
            .watch(self.prefix.clone(), Some(opts))
            .await
            .map_err(SourceError::Watch)?;
        Ok(EtcdSliceWatch {
            stream,
            prefix: self.prefix.clone(),
        })
    }
}

pub struct EtcdSliceWatch {
    stream: etcd_client::WatchStream,
    prefix: String,
}

fn is_compaction_error(e: &etcd_client::Error) -> bool {
    e.to_string().contains("compacted")
}

impl SliceWatch for EtcdSliceWatch {
    async fn next(&mut self) -> Result<Option<WatchMessage>, SourceError> {
        loop {
            let resp = match self.stream.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(None),
                Err(e) if is_compaction_error(&e) => {
                    return Ok(Some(WatchMessage::Compacted {
                        compact_revision: 0,
                    }));
                }
                Err(e) => return Err(SourceError::Watch(e)),
            };
            if resp.compact_revision() > 0 {
                return Ok(Some(WatchMessage::Compacted {
                    compact_revision: resp.compact_revision(),
                }));
            }
            if resp.canceled() {
                if resp.cancel_reason().contains("compacted") {
                    return Ok(Some(WatchMessage::Compacted {
                        compact_revision: 0,
                    }));
                }
                return Err(SourceError::Canceled {
                    reason: resp.cancel_reason().to_string(),
                });
            }
            if resp.events().is_empty() {
                if resp.created() {
                    // The header of the creation answer is the current revision, but events
                    // between the start revision and it may still follow: no progress yet.
                    continue;
                }
                let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
                return Ok(Some(WatchMessage::Progress { revision }));
            }
            let mut events = Vec::with_capacity(resp.events().len());
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key());
                let key = key.strip_prefix(&self.prefix).unwrap_or(&key).to_string();
                let change = match ev.event_type() {
                    EventType::Put => KvChange::Put(kv.value().to_vec()),
                    EventType::Delete => KvChange::Delete,
                };
                events.push(KvEvent {
                    key,
                    change,
                    mod_revision: kv.mod_revision(),
                });
            }
            return Ok(Some(WatchMessage::Events(events)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::net::Ipv4Addr;
    use topo_schema::kinds::Datapath;
    use topo_schema::slice::NodeEntry;

    type Messages = VecDeque<Result<Option<WatchMessage>, String>>;

    /// A scripted source: each list/watch call takes the next scripted answer.
    #[derive(Default)]
    struct Script {
        lists: VecDeque<Result<Listing, String>>,
        /// Each opened watch gets the next message queue; the start revision is recorded.
        watches: VecDeque<Result<Messages, String>>,
        watch_starts: Vec<i64>,
        list_calls: usize,
    }

    struct ScriptWatch(Messages);

    impl SliceSource for Script {
        type Watch = ScriptWatch;
        async fn list(&mut self) -> Result<Listing, SourceError> {
            self.list_calls += 1;
            match self.lists.pop_front() {
                Some(Ok(l)) => Ok(l),
                Some(Err(what)) => Err(SourceError::Scripted { what }),
                None => Err(SourceError::Scripted {
                    what: "list (script exhausted)".into(),
                }),
            }
        }
        async fn watch(&mut self, start: i64) -> Result<ScriptWatch, SourceError> {
            self.watch_starts.push(start);
            match self.watches.pop_front() {
                Some(Ok(q)) => Ok(ScriptWatch(q)),
                Some(Err(what)) => Err(SourceError::Scripted { what }),
                None => Err(SourceError::Scripted {
                    what: "watch (script exhausted)".into(),
                }),
            }
        }
    }

    impl SliceWatch for ScriptWatch {
        async fn next(&mut self) -> Result<Option<WatchMessage>, SourceError> {
            match self.0.pop_front() {
                Some(Ok(m)) => Ok(m),
                Some(Err(what)) => Err(SourceError::Scripted { what }),
                None => Ok(None),
            }
        }
    }

    fn node_value(addr: u8) -> Vec<u8> {
        serde_json::to_vec(&SliceEnvelope::new(SliceEntry::Node(NodeEntry {
            name: "node1".into(),
            address: Ipv4Addr::new(192, 168, 100, addr),
            datapath: Datapath::Netdev,
        })))
        .unwrap()
    }

    fn put(key: &str, v: Vec<u8>, rev: i64) -> KvEvent {
        KvEvent {
            key: key.into(),
            change: KvChange::Put(v),
            mod_revision: rev,
        }
    }

    fn watcher(s: Script) -> SliceWatcher<Script> {
        SliceWatcher::with_backoff(
            s,
            SliceStore::new(),
            watch_backoff(Duration::from_millis(1), Duration::from_millis(4)),
        )
    }

    #[tokio::test]
    async fn list_then_watch_applies_events() {
        let mut s = Script::default();
        s.lists.push_back(Ok(Listing {
            revision: 10,
            kvs: vec![("node".into(), node_value(1))],
        }));
        s.watches.push_back(Ok(VecDeque::from([
            Ok(Some(WatchMessage::Events(vec![put(
                "other",
                b"{}".to_vec(),
                11,
            )]))),
            Ok(Some(WatchMessage::Events(vec![KvEvent {
                key: "other".into(),
                change: KvChange::Delete,
                mod_revision: 12,
            }]))),
        ])));
        let mut w = watcher(s);
        assert_eq!(w.state(), WatchState::Listing);
        assert_eq!(
            w.step().await,
            Step::Synced {
                changed: vec!["node".into()],
                relist: false
            }
        );
        assert_eq!(w.state(), WatchState::Watching { revision: 10 });
        assert_eq!(w.step().await, Step::Changed(vec!["other".into()]));
        assert!(matches!(
            w.store().get("other"),
            Some(SliceValue::Invalid { .. })
        ));
        assert_eq!(w.state(), WatchState::Watching { revision: 11 });
        assert_eq!(w.step().await, Step::Changed(vec!["other".into()]));
        assert_eq!(w.store().get("other"), None);
        assert_eq!(w.source.watch_starts, vec![11]);
    }

    #[tokio::test]
    async fn disconnect_rewatches_from_last_revision_without_relisting() {
        let mut s = Script::default();
        s.lists.push_back(Ok(Listing {
            revision: 5,
            kvs: vec![],
        }));
        s.watches.push_back(Ok(VecDeque::from([
            Ok(Some(WatchMessage::Events(vec![put(
                "node",
                node_value(1),
                7,
            )]))),
            Err("connection reset".into()),
        ])));
        s.watches.push_back(Err("etcd unavailable".into()));
        s.watches
            .push_back(Ok(VecDeque::from([Ok(Some(WatchMessage::Events(vec![
                put("node", node_value(2), 9),
            ])))])));
        let mut w = watcher(s);
        assert!(matches!(w.step().await, Step::Synced { .. }));
        assert_eq!(w.step().await, Step::Changed(vec!["node".into()]));
        assert!(matches!(w.step().await, Step::Retry { .. }));
        assert_eq!(w.state(), WatchState::Watching { revision: 7 });
        assert!(matches!(w.step().await, Step::Retry { .. }));
        assert_eq!(w.step().await, Step::Changed(vec!["node".into()]));
        assert_eq!(w.source.watch_starts, vec![6, 8, 8]);
        assert_eq!(w.source.list_calls, 1, "a disconnect must not relist");
        assert_eq!(
            w.stats().rewatches,
            1,
            "one successful reopen after the failed attempt"
        );
        assert_eq!(w.state(), WatchState::Watching { revision: 9 });
    }

    #[tokio::test]
    async fn compaction_relists_and_delivers_only_differences() {
        let mut s = Script::default();
        s.lists.push_back(Ok(Listing {
            revision: 5,
            kvs: vec![
                ("node".into(), node_value(1)),
                ("bridges/a".into(), b"x".to_vec()),
            ],
        }));
        s.watches
            .push_back(Ok(VecDeque::from([Ok(Some(WatchMessage::Compacted {
                compact_revision: 50,
            }))])));
        s.lists.push_back(Err("timeout".into()));
        s.lists.push_back(Ok(Listing {
            revision: 60,
            kvs: vec![
                ("node".into(), node_value(1)),
                ("tunnels/tg-x".into(), b"y".to_vec()),
            ],
        }));
        s.watches.push_back(Ok(VecDeque::new()));
        let mut w = watcher(s);
        assert!(matches!(w.step().await, Step::Synced { relist: false, .. }));
        assert_eq!(w.step().await, Step::Idle);
        assert_eq!(w.state(), WatchState::Relisting);
        assert!(matches!(w.step().await, Step::Retry { .. }));
        assert_eq!(w.state(), WatchState::Relisting);
        assert_eq!(
            w.step().await,
            Step::Synced {
                changed: vec!["bridges/a".into(), "tunnels/tg-x".into()],
                relist: true
            }
        );
        assert_eq!(w.state(), WatchState::Watching { revision: 60 });
        assert_eq!(w.stats().relists, 1);
        // The next watch starts after the relist's revision.
        let _ = w.step().await;
        assert_eq!(w.source.watch_starts, vec![6, 61]);
    }

    #[tokio::test]
    async fn progress_advances_revision() {
        let mut s = Script::default();
        s.lists.push_back(Ok(Listing {
            revision: 3,
            kvs: vec![],
        }));
        s.watches.push_back(Ok(VecDeque::from([
            Ok(Some(WatchMessage::Progress { revision: 40 })),
            Ok(None),
        ])));
        s.watches.push_back(Ok(VecDeque::new()));
        let mut w = watcher(s);
        let _ = w.step().await;
        assert_eq!(w.step().await, Step::Idle);
        assert_eq!(w.state(), WatchState::Watching { revision: 40 });
        assert!(matches!(w.step().await, Step::Retry { .. }));
        let _ = w.step().await;
        assert_eq!(w.source.watch_starts, vec![4, 41]);
    }

    #[test]
    fn unknown_versions_are_kept_apart() {
        assert_eq!(
            SliceValue::decode(br#"{"version":2,"entry":{"type":"warp"}}"#),
            SliceValue::Unsupported { version: 2 }
        );
        assert!(matches!(
            SliceValue::decode(b"nope"),
            SliceValue::Invalid { .. }
        ));
        assert!(matches!(
            SliceValue::decode(&node_value(1)),
            SliceValue::Entry(SliceEntry::Node(_))
        ));
    }

    #[tokio::test]
    async fn list_failure_backs_off_with_growing_delay() {
        let mut s = Script::default();
        for _ in 0..3 {
            s.lists.push_back(Err("down".into()));
        }
        let mut w = SliceWatcher::with_backoff(
            s,
            SliceStore::new(),
            watch_backoff(Duration::from_millis(100), Duration::from_secs(10)),
        );
        let mut delays = vec![];
        for _ in 0..3 {
            match w.step().await {
                Step::Retry { delay, .. } => delays.push(delay),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(w.state(), WatchState::Listing);
        // Jitter is ±30 %, doubling each time: the third is always above the first.
        assert!(delays[2] > delays[0], "{delays:?}");
    }
}
