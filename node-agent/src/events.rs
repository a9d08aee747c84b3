//! Events the agent records about the objects of its slice (`Started`, `DriftRepaired`,
//! `ImagePullFailed`, ...), under the node's own prefix (its etcd role reaches nothing
//! else): the key is `keys::node_object_events_prefix(node, kind, name)` followed by
//! [`Event::dedup_id`], the value an
//! [`api::Event`](Event). A repeat of the same (reason, message, source) bumps `count` and
//! `lastTimestamp` of the existing record instead of adding one. At most
//! [`MAX_EVENTS_PER_OBJECT`] records are kept per object; the oldest go first.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use topo_schema::api::{Event, EventType};
use topo_schema::keys;
use topo_schema::kinds::ObjectRef;

/// Same bound as the controller's `events::MAX_PER_OBJECT`.
pub const MAX_EVENTS_PER_OBJECT: usize = 20;
const WRITE_ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("failed to write event for {object}: {source}")]
    Write {
        object: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("failed to write event for {object}: it changed {attempts} times under us")]
    Contended { object: String, attempts: usize },
    #[error("failed to encode event for {object}: {source}")]
    Encode {
        object: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Where events go. `publish` folds a repeat into the existing record.
#[async_trait]
pub trait EventSink: Send + Sync {
    async fn publish(&self, event: Event) -> Result<(), EventError>;
}

/// Builds events with the agent's source and never fails the caller: a lost event is logged.
#[derive(Clone)]
pub struct Recorder {
    sink: Arc<dyn EventSink>,
    source: String,
}

impl Recorder {
    pub fn new(sink: Arc<dyn EventSink>, node: &str) -> Self {
        Recorder {
            sink,
            source: format!("agent/{node}"),
        }
    }

    pub async fn record(
        &self,
        object: ObjectRef,
        type_: EventType,
        reason: &str,
        message: impl Into<String>,
    ) {
        let now = Utc::now();
        let message = message.into();
        if reason == crate::metrics::DRIFT_REPAIRED {
            crate::metrics::drift_repaired(object.kind);
        }
        match type_ {
            EventType::Normal => tracing::info!(%object, reason, %message, "event"),
            EventType::Warning => tracing::warn!(%object, reason, %message, "event"),
        }
        let event = Event {
            object,
            type_,
            reason: reason.to_string(),
            message,
            count: 1,
            first_timestamp: now,
            last_timestamp: now,
            source: self.source.clone(),
        };
        match tokio::time::timeout(crate::report::WRITE_TIMEOUT, self.sink.publish(event)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "failed to record event"),
            Err(_) => tracing::warn!("failed to record event: etcd did not answer in time"),
        }
    }

    pub async fn normal(&self, object: ObjectRef, reason: &str, message: impl Into<String>) {
        self.record(object, EventType::Normal, reason, message)
            .await
    }

    pub async fn warning(&self, object: ObjectRef, reason: &str, message: impl Into<String>) {
        self.record(object, EventType::Warning, reason, message)
            .await
    }
}

pub struct EtcdEvents {
    client: Client,
    node: String,
}

impl EtcdEvents {
    pub fn new(client: Client, node: &str) -> Self {
        EtcdEvents {
            client,
            node: node.to_string(),
        }
    }

    /// Deletes the oldest records (by `lastTimestamp`, as the controller does) of the object
    /// beyond the bound.
    async fn trim(&self, prefix: &str, object: &str) -> Result<(), EventError> {
        let mut client = self.client.clone();
        let resp = client
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|source| EventError::Write {
                object: object.into(),
                source,
            })?;
        if resp.kvs().len() <= MAX_EVENTS_PER_OBJECT {
            return Ok(());
        }
        let mut kvs: Vec<(chrono::DateTime<Utc>, Vec<u8>)> = resp
            .kvs()
            .iter()
            .map(|kv| {
                let last = serde_json::from_slice::<Event>(kv.value())
                    .map(|e| e.last_timestamp)
                    .unwrap_or_default();
                (last, kv.key().to_vec())
            })
            .collect();
        kvs.sort();
        let excess = kvs.len() - MAX_EVENTS_PER_OBJECT;
        for (_, key) in kvs.into_iter().take(excess) {
            client
                .delete(key, None)
                .await
                .map_err(|source| EventError::Write {
                    object: object.into(),
                    source,
                })?;
        }
        Ok(())
    }
}

#[async_trait]
impl EventSink for EtcdEvents {
    async fn publish(&self, event: Event) -> Result<(), EventError> {
        let object = event.object.to_string();
        let prefix =
            keys::node_object_events_prefix(&self.node, event.object.kind, &event.object.name);
        let key = format!("{prefix}{}", event.dedup_id());
        let mut client = self.client.clone();
        let write = |source| EventError::Write {
            object: object.clone(),
            source,
        };
        for _ in 0..WRITE_ATTEMPTS {
            let resp = client.get(key.clone(), None).await.map_err(write)?;
            let (merged, compare, created) = match resp.kvs().first() {
                Some(kv) => {
                    let mut merged = event.clone();
                    if let Ok(old) = serde_json::from_slice::<Event>(kv.value()) {
                        merged.count = old.count.saturating_add(event.count.max(1));
                        merged.first_timestamp = old.first_timestamp.min(event.first_timestamp);
                        merged.last_timestamp = old.last_timestamp.max(event.last_timestamp);
                    }
                    (
                        merged,
                        Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision()),
                        false,
                    )
                }
                None => (
                    event.clone(),
                    Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                    true,
                ),
            };
            let value = serde_json::to_vec(&merged).map_err(|source| EventError::Encode {
                object: object.clone(),
                source,
            })?;
            let txn = Txn::new()
                .when([compare])
                .and_then([TxnOp::put(key.clone(), value, None)]);
            if topo_watcher::metrics::etcd_timed("txn", client.txn(txn))
                .await
                .map_err(write)?
                .succeeded()
            {
                if created {
                    self.trim(&prefix, &object).await?;
                }
                return Ok(());
            }
        }
        Err(EventError::Contended {
            object,
            attempts: WRITE_ATTEMPTS,
        })
    }
}

/// The in-memory sink for tests (the `testing` feature).
#[cfg(any(test, feature = "testing"))]
mod memory {
    use super::*;
    use std::sync::Mutex;

    /// Events kept in memory with the same folding, for tests.
    #[derive(Default)]
    pub struct MemoryEvents {
        events: Mutex<Vec<Event>>,
    }

    impl MemoryEvents {
        pub fn new() -> Arc<Self> {
            Arc::new(MemoryEvents::default())
        }

        pub fn all(&self) -> Vec<Event> {
            self.events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        }

        pub fn with_reason(&self, reason: &str) -> Vec<Event> {
            self.all()
                .into_iter()
                .filter(|e| e.reason == reason)
                .collect()
        }

        pub fn clear(&self) {
            self.events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
    }

    #[async_trait]
    impl EventSink for MemoryEvents {
        async fn publish(&self, event: Event) -> Result<(), EventError> {
            let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
            let id = event.dedup_id();
            match events
                .iter_mut()
                .find(|e| e.object == event.object && e.dedup_id() == id)
            {
                Some(old) => {
                    old.count += 1;
                    old.last_timestamp = event.last_timestamp;
                }
                None => events.push(event),
            }
            Ok(())
        }
    }
}

#[cfg(any(test, feature = "testing"))]
pub use memory::MemoryEvents;

#[cfg(test)]
mod tests {
    use super::*;
    use topo_schema::kinds::Kind;

    #[tokio::test]
    async fn repeats_fold_into_one_record() {
        let mem = MemoryEvents::new();
        let rec = Recorder::new(mem.clone(), "node1");
        let obj = ObjectRef::new(Kind::Tunnel, "overlay-node1-node2");
        rec.warning(
            obj.clone(),
            "DriftRepaired",
            "GRE port tg-node2 was deleted outside topo; recreated",
        )
        .await;
        rec.warning(
            obj.clone(),
            "DriftRepaired",
            "GRE port tg-node2 was deleted outside topo; recreated",
        )
        .await;
        rec.normal(obj, "Created", "GRE port tg-node2 created")
            .await;
        let all = mem.all();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].count, 2);
        assert_eq!(all[0].source, "agent/node1");
        assert_eq!(all[0].type_, EventType::Warning);
    }
}
