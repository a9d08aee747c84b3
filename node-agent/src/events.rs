//! Events the agent records about the objects of its slice (`Started`, `DriftRepaired`,
//! `ImagePullFailed`, ...), under the node's own prefix (its etcd role reaches nothing
//! else): the key is `keys::node_object_events_prefix(node, kind, name)` followed by
//! [`Event::dedup_id`], the value an
//! [`api::Event`](Event). A repeat of the same (reason, message, source) bumps `count` and
//! `lastTimestamp` of the existing record instead of adding one. At most
//! [`MAX_EVENTS_PER_OBJECT`] records are kept per object; the oldest go first.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::{mpsc, oneshot};
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
    #[error("failed to queue event for {object}: the queue to etcd is full")]
    QueueFull { object: String },
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

/// Events to etcd, written off the caller's path: `publish` queues the event and returns; one
/// writer task per agent drains the queue and writes what it holds together. A burst of new
/// records (a node's containers starting: `Created`, `Started`, `Configured` each) costs etcd
/// one transaction instead of a read and a write per event, and a reconcile never waits on
/// etcd for an event. Events are best effort, as kubelet's are: a full queue drops the event
/// (logged), and those still queued when the agent stops are lost.
pub struct EtcdEvents {
    queue: mpsc::Sender<Queued>,
}

enum Queued {
    Event(Event),
    /// Answered once everything queued before it is written (tests, shutdown).
    Flush(oneshot::Sender<()>),
}

/// Events waiting for the writer; beyond this `publish` drops them.
const QUEUE_LEN: usize = 4096;
/// New records per transaction: a compare and a put each, within etcd's default
/// `--max-txn-ops` of 128 per branch.
const MAX_BATCH: usize = 64;

impl EtcdEvents {
    /// Starts the writer task (needs a tokio runtime).
    pub fn new(client: Client, node: &str) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE_LEN);
        let writer = EventWriter {
            client,
            node: node.to_string(),
        };
        tokio::spawn(writer.run(rx));
        EtcdEvents { queue }
    }

    /// Waits until every event published before is written (or failed).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.queue.send(Queued::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

#[async_trait]
impl EventSink for EtcdEvents {
    async fn publish(&self, event: Event) -> Result<(), EventError> {
        let object = event.object.to_string();
        self.queue
            .try_send(Queued::Event(event))
            .map_err(|_| EventError::QueueFull { object })
    }
}

/// One event's record: its key and its object's prefix.
struct Record {
    key: String,
    prefix: String,
    event: Event,
}

struct EventWriter {
    client: Client,
    node: String,
}

impl EventWriter {
    async fn run(self, mut rx: mpsc::Receiver<Queued>) {
        let mut flushes = vec![];
        while let Some(first) = rx.recv().await {
            let mut batch = vec![];
            let mut next = Some(first);
            // Whatever queued up while the last write was in flight goes in this one.
            while let Some(item) = next {
                match item {
                    Queued::Event(e) => batch.push(e),
                    Queued::Flush(done) => flushes.push(done),
                }
                next = if batch.len() < MAX_BATCH {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            self.write(batch).await;
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
        }
    }

    /// Writes a batch: repeats within it folded, then one transaction creating every record
    /// if none exists yet; otherwise (a repeat of an earlier event) each one folded into its
    /// stored record.
    async fn write(&self, batch: Vec<Event>) {
        let records = self.fold(batch);
        if records.is_empty() {
            return;
        }
        match self.create_all(&records).await {
            Ok(true) => {
                let prefixes: BTreeSet<&str> = records.iter().map(|r| r.prefix.as_str()).collect();
                if let Err(e) = self.trim(&prefixes).await {
                    tracing::warn!(error = %e, "failed to trim events");
                }
            }
            Ok(false) => {
                for r in &records {
                    if let Err(e) = self.merge_one(r).await {
                        tracing::warn!(error = %e, "failed to record event");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, events = records.len(), "failed to record events"),
        }
    }

    /// The batch as records, a repeat folded into the first of its kind.
    fn fold(&self, batch: Vec<Event>) -> Vec<Record> {
        let mut records: Vec<Record> = Vec::with_capacity(batch.len());
        for event in batch {
            let prefix =
                keys::node_object_events_prefix(&self.node, event.object.kind, &event.object.name);
            let key = format!("{prefix}{}", event.dedup_id());
            match records.iter_mut().find(|r| r.key == key) {
                Some(r) => r.event = merged(&r.event, &event),
                None => records.push(Record { key, prefix, event }),
            }
        }
        records
    }

    /// Creates every record in one transaction if none of them exists. False when one does.
    async fn create_all(&self, records: &[Record]) -> Result<bool, EventError> {
        let mut puts = Vec::with_capacity(records.len());
        for r in records {
            puts.push(TxnOp::put(r.key.clone(), encode(&r.event)?, None));
        }
        let txn = Txn::new()
            .when(
                records
                    .iter()
                    .map(|r| Compare::create_revision(r.key.clone(), CompareOp::Equal, 0))
                    .collect::<Vec<_>>(),
            )
            .and_then(puts);
        let resp = topo_watcher::metrics::etcd_timed("txn", self.client.clone().txn(txn))
            .await
            .map_err(|source| EventError::Write {
                object: records[0].event.object.to_string(),
                source,
            })?;
        Ok(resp.succeeded())
    }

    /// Folds `r` into its stored record (or creates it), comparing the revision read.
    async fn merge_one(&self, r: &Record) -> Result<(), EventError> {
        let object = r.event.object.to_string();
        let mut client = self.client.clone();
        let write = |source| EventError::Write {
            object: object.clone(),
            source,
        };
        for _ in 0..WRITE_ATTEMPTS {
            let resp = client.get(r.key.clone(), None).await.map_err(write)?;
            let (value, compare, created) = match resp.kvs().first() {
                Some(kv) => {
                    let value = match serde_json::from_slice::<Event>(kv.value()) {
                        Ok(old) => merged(&old, &r.event),
                        Err(_) => r.event.clone(),
                    };
                    let rev = kv.mod_revision();
                    (
                        value,
                        Compare::mod_revision(r.key.clone(), CompareOp::Equal, rev),
                        false,
                    )
                }
                None => (
                    r.event.clone(),
                    Compare::create_revision(r.key.clone(), CompareOp::Equal, 0),
                    true,
                ),
            };
            let txn = Txn::new().when([compare]).and_then([TxnOp::put(
                r.key.clone(),
                encode(&value)?,
                None,
            )]);
            if topo_watcher::metrics::etcd_timed("txn", client.txn(txn))
                .await
                .map_err(write)?
                .succeeded()
            {
                if created {
                    self.trim(&BTreeSet::from([r.prefix.as_str()])).await?;
                }
                return Ok(());
            }
        }
        Err(EventError::Contended {
            object,
            attempts: WRITE_ATTEMPTS,
        })
    }

    /// Deletes the oldest records (by `lastTimestamp`, as the controller does) of each object
    /// beyond the bound. Counts first, without values and without a round through raft, so
    /// the usual case (objects with a few records) reads next to nothing: every count of a
    /// batch in one transaction of reads (a batch names at most [`MAX_BATCH`] objects, within
    /// etcd's 128 operations) — one read per object was most of etcd's requests at 1,000
    /// nodes (scale-bench).
    async fn trim(&self, prefixes: &BTreeSet<&str>) -> Result<(), EventError> {
        let counts: Vec<TxnOp> = prefixes
            .iter()
            .map(|p| TxnOp::get(*p, Some(count_only())))
            .collect();
        let resp = topo_watcher::metrics::etcd_timed(
            "txn",
            self.client.clone().txn(Txn::new().and_then(counts)),
        )
        .await
        .map_err(|source| EventError::Write {
            object: prefixes.first().copied().unwrap_or_default().to_string(),
            source,
        })?;
        for (prefix, op) in prefixes.iter().zip(resp.op_responses()) {
            if let TxnOpResponse::Get(r) = op
                && r.count() > MAX_EVENTS_PER_OBJECT as i64
                && let Err(e) = self.trim_over(prefix).await
            {
                // One object's failure leaves the others' trims to go on.
                tracing::warn!(error = %e, "failed to trim events");
            }
        }
        Ok(())
    }

    /// Deletes the oldest records of an object that has more than the bound.
    async fn trim_over(&self, prefix: &str) -> Result<(), EventError> {
        let mut client = self.client.clone();
        let read = |source| EventError::Write {
            object: prefix.to_string(),
            source,
        };
        let resp = client
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(read)?;
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
        let excess = kvs.len().saturating_sub(MAX_EVENTS_PER_OBJECT);
        for (_, key) in kvs.into_iter().take(excess) {
            client.delete(key, None).await.map_err(read)?;
        }
        Ok(())
    }
}

/// `new` folded into `old`: one more occurrence, the widest time span.
fn merged(old: &Event, new: &Event) -> Event {
    let mut merged = new.clone();
    merged.count = old.count.saturating_add(new.count.max(1));
    merged.first_timestamp = old.first_timestamp.min(new.first_timestamp);
    merged.last_timestamp = old.last_timestamp.max(new.last_timestamp);
    merged
}

fn encode(event: &Event) -> Result<String, EventError> {
    serde_json::to_string(event).map_err(|source| EventError::Encode {
        object: event.object.to_string(),
        source,
    })
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

/// A count of a prefix's keys, without values and without a round through raft.
fn count_only() -> GetOptions {
    GetOptions::new()
        .with_prefix()
        .with_count_only()
        .with_serializable()
}

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
