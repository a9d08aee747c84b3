//! The reconcile work queue, keyed by slice entry key (plus the node-wide keys [`NAT_KEY`] and
//! [`GC_KEY`]).
//!
//! Like client-go's workqueue: a key is queued at most once; a key being processed is never
//! handed to a second worker — adding it meanwhile marks it dirty and it is queued again when
//! the first worker is done. Keys pop in dependency order (node, bridges, tunnels, containers,
//! NAT, GC) so a fresh start builds bridges before it plumbs containers into them.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// The node's own NAT table (masquerade + published ports): derived from the whole slice.
pub const NAT_KEY: &str = "~nat";
/// Garbage collection of owned host objects that no slice entry wants.
pub const GC_KEY: &str = "~gc";

/// Pop order of a key: lower first.
pub fn priority(key: &str) -> u8 {
    if key == "node" {
        0
    } else if key.starts_with("bridges/") {
        1
    } else if key.starts_with("tunnels/") {
        2
    } else if key.starts_with("containers/") {
        3
    } else if key == NAT_KEY {
        4
    } else if key == GC_KEY {
        5
    } else {
        6
    }
}

#[derive(Default)]
struct State {
    ready: BTreeMap<(u8, u64), String>,
    queued: HashSet<String>,
    processing: HashSet<String>,
    dirty: HashSet<String>,
    seq: u64,
    shutdown: bool,
}

impl State {
    fn push(&mut self, key: String) {
        self.seq += 1;
        self.queued.insert(key.clone());
        self.ready.insert((priority(&key), self.seq), key);
    }
}

#[derive(Default)]
pub struct WorkQueue {
    state: Mutex<State>,
    notify: Notify,
}

impl WorkQueue {
    pub fn new() -> Arc<Self> {
        Arc::new(WorkQueue::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add(&self, key: impl Into<String>) {
        let key = key.into();
        let mut s = self.lock();
        if s.shutdown || s.queued.contains(&key) {
            return;
        }
        if s.processing.contains(&key) {
            s.dirty.insert(key);
            return;
        }
        s.push(key);
        drop(s);
        self.notify.notify_one();
    }

    pub fn add_all<I: IntoIterator<Item = String>>(&self, keys: I) {
        for k in keys {
            self.add(k);
        }
    }

    /// Adds `key` after `delay` (a requeue with backoff).
    pub fn add_after(self: &Arc<Self>, key: String, delay: Duration) {
        let q = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            q.add(key);
        });
    }

    /// The next key to process, or None once the queue is shut down. The caller must call
    /// [`WorkQueue::done`] with it.
    pub async fn pop(&self) -> Option<String> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.lock();
                if s.shutdown {
                    return None;
                }
                if let Some((_, key)) = s.ready.pop_first() {
                    s.queued.remove(&key);
                    s.processing.insert(key.clone());
                    let more = !s.ready.is_empty();
                    drop(s);
                    if more {
                        // Hand the permit on: several keys may have been queued by one add_all
                        // while a single waiter was woken.
                        self.notify.notify_one();
                    }
                    return Some(key);
                }
            }
            notified.await;
        }
    }

    pub fn done(&self, key: &str) {
        let mut s = self.lock();
        s.processing.remove(key);
        if s.dirty.remove(key) && !s.shutdown {
            s.push(key.to_string());
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Stops handing out keys; workers' `pop` returns None.
    pub fn shutdown(&self) {
        self.lock().shutdown = true;
        self.notify.notify_waiters();
    }

    pub fn len(&self) -> usize {
        self.lock().ready.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Nothing queued, nothing in flight.
    pub fn is_idle(&self) -> bool {
        let s = self.lock();
        s.ready.is_empty() && s.processing.is_empty() && s.dirty.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dedups_and_orders_by_dependency() {
        let q = WorkQueue::new();
        q.add(GC_KEY);
        q.add("containers/a");
        q.add("containers/a");
        q.add("tunnels/tg-x");
        q.add("bridges/n");
        q.add("node");
        assert_eq!(q.len(), 5);
        let mut order = vec![];
        while !q.is_empty() {
            let k = q.pop().await.unwrap();
            q.done(&k);
            order.push(k);
        }
        assert_eq!(
            order,
            vec!["node", "bridges/n", "tunnels/tg-x", "containers/a", GC_KEY]
        );
    }

    #[tokio::test]
    async fn one_in_flight_per_key_and_dirty_requeue() {
        let q = WorkQueue::new();
        q.add("containers/a");
        let k = q.pop().await.unwrap();
        q.add("containers/a");
        assert!(q.is_empty(), "a key in flight is not handed out twice");
        q.done(&k);
        assert_eq!(q.len(), 1, "added while in flight: queued again when done");
        let k = q.pop().await.unwrap();
        q.done(&k);
        assert!(q.is_idle());
    }

    #[tokio::test]
    async fn shutdown_wakes_waiters() {
        let q = WorkQueue::new();
        let q2 = Arc::clone(&q);
        let h = tokio::spawn(async move { q2.pop().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.shutdown();
        assert_eq!(h.await.unwrap(), None);
    }

    #[tokio::test]
    async fn waiter_gets_later_add() {
        let q = WorkQueue::new();
        let q2 = Arc::clone(&q);
        let h = tokio::spawn(async move { q2.pop().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.add("node");
        assert_eq!(h.await.unwrap().as_deref(), Some("node"));
    }
}
