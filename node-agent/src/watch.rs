//! The node's slice as the agent sees it: the desired state ([`SliceStore`]) and the watch
//! that keeps it ([`SliceWatcher`]).
//!
//! Listing, watching from a revision, resuming after a disconnect and relisting after
//! compaction are `topo_watcher`'s state machine, shared with the controller's cache. This
//! module is the etcd boundary of the slice: it parses each key into a [`SliceKey`] and
//! decodes each value once ([`SliceValue`]), applies what the machine brings to the store,
//! and hands the caller the keys that changed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use backoff::ExponentialBackoff;
use etcd_client::Client;
use topo_schema::keys;
use topo_schema::slice::{SLICE_VERSION, SliceEntry, SliceEnvelope, SliceKey};
use topo_watcher::{EtcdSource, KvEvent};

pub use topo_watcher::jittered_backoff as watch_backoff;
pub use topo_watcher::{
    EtcdSource as EtcdSliceSource, EtcdWatch as EtcdSliceWatch, Listing, Source as SliceSource,
    SourceError, State as WatchState, Stats as WatchStats, Watch as SliceWatch, WatchMessage,
};

/// The etcd source of `node`'s slice: keys come without the slice prefix.
pub fn slice_source(client: Client, node: &str) -> EtcdSource {
    EtcdSource::prefix(client, &keys::slice_prefix(node))
}

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

#[derive(Debug, Default)]
struct Slice {
    values: BTreeMap<SliceKey, SliceValue>,
    /// Keys this agent cannot parse (a newer controller's): nothing is done for them, but
    /// while there are any the slice is not wholly understood.
    unknown: BTreeSet<String>,
}

/// The desired state of the node. Shared between the watcher (the only writer) and the
/// reconcilers.
#[derive(Debug, Clone, Default)]
pub struct SliceStore {
    inner: Arc<RwLock<Slice>>,
}

impl SliceStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store pre-filled with entries (tests, and the reconciler's own unit tests).
    pub fn from_entries(entries: impl IntoIterator<Item = SliceEntry>) -> Self {
        let store = SliceStore::new();
        {
            let mut s = store.write();
            for e in entries {
                s.values.insert(e.key(), SliceValue::Entry(e));
            }
        }
        store
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Slice> {
        // A panic while holding the lock cannot leave the map half-updated (every write is a
        // single insert/remove/replace), so a poisoned lock is still consistent.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Slice> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: &SliceKey) -> Option<SliceValue> {
        self.read().values.get(key).cloned()
    }

    pub fn keys(&self) -> Vec<SliceKey> {
        self.read().values.keys().cloned().collect()
    }

    pub fn snapshot(&self) -> BTreeMap<SliceKey, SliceValue> {
        self.read().values.clone()
    }

    /// Every decodable entry.
    pub fn entries(&self) -> Vec<SliceEntry> {
        self.read()
            .values
            .values()
            .filter_map(|v| v.entry().cloned())
            .collect()
    }

    /// Whether every key and value of the slice is one this agent understands.
    pub fn is_whole(&self) -> bool {
        let s = self.read();
        s.unknown.is_empty() && s.values.values().all(|v| v.entry().is_some())
    }

    pub fn insert(&self, key: SliceKey, value: SliceValue) -> bool {
        let mut s = self.write();
        s.values.get(&key) != Some(&value) && {
            s.values.insert(key, value);
            true
        }
    }

    pub fn remove(&self, key: &SliceKey) -> bool {
        self.write().values.remove(key).is_some()
    }

    /// Replaces everything; returns the keys whose value differs (added, changed or gone).
    pub fn replace(&self, listing: &Listing) -> Vec<SliceKey> {
        let mut new = BTreeMap::new();
        let mut unknown = BTreeSet::new();
        for kv in &listing.kvs {
            match parse_key(&kv.key) {
                Some(k) => {
                    new.insert(k, SliceValue::decode(&kv.value));
                }
                None => {
                    unknown.insert(kv.key.clone());
                }
            }
        }
        let mut s = self.write();
        let mut changed: Vec<SliceKey> = s
            .values
            .iter()
            .filter(|(k, v)| new.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        changed.extend(new.keys().filter(|k| !s.values.contains_key(*k)).cloned());
        changed.sort();
        s.values = new;
        s.unknown = unknown;
        changed
    }

    /// Applies watch events; returns the keys whose value changed, in first-change order.
    pub fn apply(&self, events: &[KvEvent]) -> Vec<SliceKey> {
        let mut changed: Vec<SliceKey> = Vec::new();
        for ev in events {
            let Some(key) = parse_key(ev.key()) else {
                let mut s = self.write();
                match ev {
                    KvEvent::Put(_) => s.unknown.insert(ev.key().to_string()),
                    KvEvent::Delete { .. } => s.unknown.remove(ev.key()),
                };
                continue;
            };
            let touched = match ev {
                KvEvent::Put(kv) => self.insert(key.clone(), SliceValue::decode(&kv.value)),
                KvEvent::Delete { .. } => self.remove(&key),
            };
            if touched && !changed.contains(&key) {
                changed.push(key);
            }
        }
        changed
    }
}

/// A slice key as stored in etcd, or None (logged) for one this agent does not know.
fn parse_key(raw: &str) -> Option<SliceKey> {
    match raw.parse::<SliceKey>() {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::warn!(key = raw, error = %e, "slice key left alone");
            None
        }
    }
}

/// What one step of the slice watch produced for the caller.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// A (re)list completed: the store is complete. `changed` holds every key whose value
    /// differs from before the list (everything on the first list).
    Synced {
        changed: Vec<SliceKey>,
        relist: bool,
    },
    /// Keys changed by watch events.
    Changed(Vec<SliceKey>),
    /// Nothing for the caller (watch established, progress notification, empty batch).
    Idle,
    /// Something failed; the caller waits `delay` before the next step.
    Retry { error: String, delay: Duration },
}

/// The shared list/watch machine over the slice, writing into a [`SliceStore`].
pub struct SliceWatcher<S: SliceSource> {
    machine: topo_watcher::Watcher<S>,
    store: SliceStore,
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
            machine: topo_watcher::Watcher::new("slice", source, backoff),
            store,
        }
    }

    pub fn state(&self) -> WatchState {
        self.machine.state()
    }

    pub fn stats(&self) -> WatchStats {
        self.machine.stats()
    }

    pub fn store(&self) -> &SliceStore {
        &self.store
    }

    /// Performs one transition of the machine and applies it to the store.
    pub async fn step(&mut self) -> Step {
        match self.machine.step().await {
            topo_watcher::Step::Listed { listing, relist } => Step::Synced {
                changed: self.store.replace(&listing),
                relist,
            },
            topo_watcher::Step::Events { events, .. } => {
                let changed = self.store.apply(&events);
                if changed.is_empty() {
                    Step::Idle
                } else {
                    Step::Changed(changed)
                }
            }
            topo_watcher::Step::Progress { .. } | topo_watcher::Step::Idle => Step::Idle,
            topo_watcher::Step::Retry { error, delay } => Step::Retry {
                error: crate::error_chain::error_chain(&error),
                delay,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use topo_schema::kinds::Datapath;
    use topo_schema::slice::NodeEntry;
    use topo_watcher::Kv;

    fn node_value(addr: u8) -> Vec<u8> {
        serde_json::to_vec(&SliceEnvelope::new(SliceEntry::Node(NodeEntry {
            name: "node1".into(),
            address: Ipv4Addr::new(192, 168, 100, addr),
            datapath: Datapath::Netdev,
        })))
        .unwrap()
    }

    fn kv(key: &str, value: Vec<u8>, rev: i64) -> Kv {
        Kv {
            key: key.into(),
            value,
            mod_revision: rev,
            create_revision: rev,
        }
    }

    fn key(s: &str) -> SliceKey {
        s.parse().unwrap()
    }

    #[test]
    fn events_apply_and_undecodable_values_are_kept_apart() {
        let store = SliceStore::new();
        let changed = store.apply(&[
            KvEvent::Put(kv("bridges/x", b"{}".to_vec(), 11)),
            KvEvent::Put(kv("node", node_value(1), 11)),
            KvEvent::Put(kv("node", node_value(1), 12)),
        ]);
        assert_eq!(changed, vec![key("bridges/x"), key("node")]);
        assert!(matches!(
            store.get(&key("bridges/x")),
            Some(SliceValue::Invalid { .. })
        ));
        assert!(!store.is_whole());
        let changed = store.apply(&[KvEvent::Delete {
            key: "bridges/x".into(),
            mod_revision: 13,
        }]);
        assert_eq!(changed, vec![key("bridges/x")]);
        assert_eq!(store.get(&key("bridges/x")), None);
        assert!(store.is_whole());
        // The same value again changes nothing.
        assert!(
            store
                .apply(&[KvEvent::Put(kv("node", node_value(1), 14))])
                .is_empty()
        );
    }

    #[test]
    fn a_relist_delivers_only_differences() {
        let store = SliceStore::new();
        let first = Listing {
            revision: 5,
            kvs: vec![
                kv("node", node_value(1), 2),
                kv("bridges/a", b"x".to_vec(), 3),
            ],
        };
        assert_eq!(store.replace(&first), vec![key("node"), key("bridges/a")]);
        let second = Listing {
            revision: 60,
            kvs: vec![
                kv("node", node_value(1), 2),
                kv("tunnels/tg-x", b"y".to_vec(), 55),
            ],
        };
        assert_eq!(
            store.replace(&second),
            vec![key("bridges/a"), key("tunnels/tg-x")]
        );
        assert_eq!(store.keys(), vec![key("node"), key("tunnels/tg-x")]);
    }

    #[test]
    fn keys_this_agent_does_not_know_are_left_alone_but_remembered() {
        let store = SliceStore::new();
        let changed = store.replace(&Listing {
            revision: 3,
            kvs: vec![
                kv("node", node_value(1), 2),
                kv("widgets/w", b"{}".to_vec(), 3),
            ],
        });
        assert_eq!(changed, vec![key("node")]);
        assert!(!store.is_whole(), "an unknown key makes the slice partial");
        assert!(
            store
                .apply(&[KvEvent::Delete {
                    key: "widgets/w".into(),
                    mod_revision: 4
                }])
                .is_empty()
        );
        assert!(store.is_whole());
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
}
