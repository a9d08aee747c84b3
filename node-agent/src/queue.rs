//! The reconcile work queue of [`Key`]s.
//!
//! Like client-go's workqueue: a key is queued at most once; a key being processed is never
//! handed to a second worker — adding it meanwhile marks it dirty and it is queued again when
//! the first worker is done. Keys pop in the work order of [`Key`]'s `Ord` (node, bridges,
//! tunnels, containers, NAT, GC), first come first served within a kind, so a fresh start
//! builds bridges before it plumbs containers into them.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::key::Key;

#[derive(Default)]
struct State {
    /// (the key's class, arrival) → key.
    ready: BTreeMap<(Key, u64), Key>,
    queued: HashSet<Key>,
    processing: HashSet<Key>,
    dirty: HashSet<Key>,
    seq: u64,
    shutdown: bool,
}

impl State {
    fn push(&mut self, key: Key) {
        self.seq += 1;
        self.queued.insert(key.clone());
        self.ready.insert((key.class(), self.seq), key);
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

    pub fn add(&self, key: Key) {
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

    pub fn add_all<I: IntoIterator<Item = Key>>(&self, keys: I) {
        for k in keys {
            self.add(k);
        }
    }

    /// Adds `key` after `delay` (a requeue with backoff).
    pub fn add_after(self: &Arc<Self>, key: Key, delay: Duration) {
        let q = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            q.add(key);
        });
    }

    /// The next key to process, or None once the queue is shut down. The caller must call
    /// [`WorkQueue::done`] with it.
    pub async fn pop(&self) -> Option<Key> {
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

    pub fn done(&self, key: &Key) {
        let mut s = self.lock();
        s.processing.remove(key);
        if s.dirty.remove(key) && !s.shutdown {
            s.push(key.clone());
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
        q.add(Key::Gc);
        q.add(Key::Container("b".into()));
        q.add(Key::Container("a".into()));
        q.add(Key::Container("b".into()));
        q.add(Key::Tunnel("tg-x".into()));
        q.add(Key::Bridge("n".into()));
        q.add(Key::Node);
        assert_eq!(q.len(), 6);
        let mut order = vec![];
        while !q.is_empty() {
            let k = q.pop().await.unwrap();
            q.done(&k);
            order.push(k);
        }
        assert_eq!(
            order,
            vec![
                Key::Node,
                Key::Bridge("n".into()),
                Key::Tunnel("tg-x".into()),
                // Within a kind, first come first served.
                Key::Container("b".into()),
                Key::Container("a".into()),
                Key::Gc
            ]
        );
    }

    #[tokio::test]
    async fn one_in_flight_per_key_and_dirty_requeue() {
        let q = WorkQueue::new();
        q.add(Key::Container("a".into()));
        let k = q.pop().await.unwrap();
        q.add(Key::Container("a".into()));
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
        q.add(Key::Node);
        assert_eq!(h.await.unwrap(), Some(Key::Node));
    }
}
