//! Observed reports: what the agent saw of each object of its slice, under
//! `keys::report(node, kind, name)`, for the controller to fold into status.
//!
//! A report is written only when its content (everything but `time`) changed, so a steady
//! node writes nothing. Each slice entry key owns the reports its reconcile produced
//! (a container entry: its Container and the Links it consumes; a tunnel entry: its Tunnel);
//! when an entry stops producing one (or goes), the report is deleted. Reports that no key
//! owns after a restart are removed by [`Reporter::retain`] during garbage collection.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, GetOptions, Txn, TxnOp};
use tokio::sync::{mpsc, oneshot};
use topo_schema::api::ObservedReport;
use topo_schema::keys;
use topo_schema::kinds::ObjectRef;

use crate::key::Key;

/// Cheap to clone: one failed transaction is the answer to every submission in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReportError {
    #[error("failed to write the report of {object}: {source}")]
    Write {
        object: String,
        #[source]
        source: Arc<etcd_client::Error>,
    },
    #[error("failed to write the report of {object}: the agent's report writer has stopped")]
    WriterGone { object: String },
    #[error("failed to {what}: etcd did not answer within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    #[error("failed to list the node's reports: {0}")]
    List(#[source] Arc<etcd_client::Error>),
    #[error("failed to encode the report of {object}: {source}")]
    Encode {
        object: String,
        #[source]
        source: Arc<serde_json::Error>,
    },
}

/// One change to the node's stored reports.
#[derive(Debug, Clone, PartialEq)]
pub enum ReportWrite {
    Put(ObservedReport),
    Delete(ObjectRef),
}

impl ReportWrite {
    fn object(&self) -> &ObjectRef {
        match self {
            ReportWrite::Put(r) => &r.object,
            ReportWrite::Delete(o) => o,
        }
    }
}

/// The outcome of a submitted write, once it is known.
pub type WriteDone = Pin<Box<dyn Future<Output = Result<(), ReportError>> + Send>>;

#[async_trait]
pub trait ReportSink: Send + Sync {
    /// Queues `writes` after every earlier submission (so the store sees them in submission
    /// order) and returns what they come to. Not async: the [`Reporter`] submits under its
    /// lock and waits outside it.
    fn submit(&self, node: &str, writes: Vec<ReportWrite>) -> WriteDone;
    async fn list(&self, node: &str) -> Result<Vec<ObservedReport>, ReportError>;
}

/// Reports in etcd, written by one writer task per agent that puts whatever was submitted
/// while its last transaction was in flight into the next one. Eight workers finishing
/// containers at once cost etcd one revision, not eight, and none waits behind the others'
/// round trips.
pub struct EtcdReports {
    client: Client,
    queue: mpsc::UnboundedSender<Submission>,
}

struct Submission {
    /// Keys with the value to put, or None to delete.
    ops: Vec<(String, Option<Vec<u8>>)>,
    /// The first object written, to name in an error.
    object: String,
    done: oneshot::Sender<Result<(), ReportError>>,
    queued: std::time::Instant,
}

/// Operations per transaction, within etcd's default `--max-txn-ops` of 128.
const MAX_TXN_OPS: usize = 120;

impl EtcdReports {
    /// Starts the writer task (needs a tokio runtime).
    pub fn new(client: Client) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_reports(client.clone(), rx));
        EtcdReports { client, queue }
    }
}

#[async_trait]
impl ReportSink for EtcdReports {
    fn submit(&self, node: &str, writes: Vec<ReportWrite>) -> WriteDone {
        let object = writes
            .first()
            .map(|w| w.object().to_string())
            .unwrap_or_default();
        let mut ops = Vec::with_capacity(writes.len());
        for w in &writes {
            let o = w.object();
            let key = keys::report(node, o.kind, &o.name);
            match w {
                ReportWrite::Put(r) => match serde_json::to_vec(r) {
                    Ok(value) => ops.push((key, Some(value))),
                    Err(e) => {
                        let err = ReportError::Encode {
                            object: o.to_string(),
                            source: Arc::new(e),
                        };
                        return Box::pin(std::future::ready(Err(err)));
                    }
                },
                ReportWrite::Delete(_) => ops.push((key, None)),
            }
        }
        let (done, result) = oneshot::channel();
        let queued = self.queue.send(Submission {
            ops,
            object: object.clone(),
            done,
            queued: std::time::Instant::now(),
        });
        Box::pin(async move {
            if queued.is_err() {
                return Err(ReportError::WriterGone { object });
            }
            result
                .await
                .unwrap_or(Err(ReportError::WriterGone { object }))
        })
    }

    async fn list(&self, node: &str) -> Result<Vec<ObservedReport>, ReportError> {
        let resp = self
            .client
            .clone()
            .get(
                keys::node_reports_prefix(node),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(|e| ReportError::List(Arc::new(e)))?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| match serde_json::from_slice::<ObservedReport>(kv.value()) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(key = %String::from_utf8_lossy(kv.key()), error = %e, "undecodable report; ignored");
                    None
                }
            })
            .collect())
    }
}

/// The writer task: takes a submission, adds those queued behind it (whole, in order, while
/// they fit one transaction and name no key twice, which etcd refuses), writes them and
/// answers each.
async fn write_reports(client: Client, mut rx: mpsc::UnboundedReceiver<Submission>) {
    let mut next = None;
    loop {
        let first = match next.take() {
            Some(s) => s,
            None => match rx.recv().await {
                Some(s) => s,
                None => return,
            },
        };
        let mut keys_in: HashSet<String> = first.ops.iter().map(|(k, _)| k.clone()).collect();
        let mut ops = first.ops.len();
        let mut batch = vec![first];
        while let Ok(s) = rx.try_recv() {
            if ops + s.ops.len() > MAX_TXN_OPS || s.ops.iter().any(|(k, _)| keys_in.contains(k)) {
                next = Some(s);
                break;
            }
            ops += s.ops.len();
            keys_in.extend(s.ops.iter().map(|(k, _)| k.clone()));
            batch.push(s);
        }
        let waited = batch
            .first()
            .map(|s| s.queued.elapsed())
            .unwrap_or_default();
        let t = std::time::Instant::now();
        let result = write_batch(&client, &mut batch).await;
        tracing::debug!(
            submissions = batch.len(),
            ops,
            waited_ms = waited.as_secs_f64() * 1000.0,
            txn_ms = t.elapsed().as_secs_f64() * 1000.0,
            "reports written"
        );
        for s in batch {
            let answer = result.clone().map_err(|source| ReportError::Write {
                object: s.object,
                source,
            });
            let _ = s.done.send(answer);
        }
    }
}

/// One transaction per [`MAX_TXN_OPS`] operations (more only when a single submission is
/// that large: a collection deleting many orphans).
async fn write_batch(
    client: &Client,
    batch: &mut [Submission],
) -> Result<(), Arc<etcd_client::Error>> {
    let ops: Vec<TxnOp> = batch
        .iter_mut()
        .flat_map(|s| std::mem::take(&mut s.ops))
        .map(|(key, value)| match value {
            Some(v) => TxnOp::put(key, v, None),
            None => TxnOp::delete(key, None),
        })
        .collect();
    let mut client = client.clone();
    let mut ops = ops.into_iter().peekable();
    while ops.peek().is_some() {
        let txn = Txn::new().and_then(ops.by_ref().take(MAX_TXN_OPS).collect::<Vec<_>>());
        topo_watcher::metrics::etcd_timed("txn", client.txn(txn))
            .await
            .map_err(Arc::new)?;
    }
    Ok(())
}

/// The in-memory sink for tests (the `testing` feature).
#[cfg(any(test, feature = "testing"))]
mod memory {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// Reports kept in memory, for tests; counts writes so tests can assert "no write".
    #[derive(Default)]
    pub struct MemoryReports {
        inner: Mutex<MemoryReportsInner>,
    }

    #[derive(Default)]
    struct MemoryReportsInner {
        reports: BTreeMap<ObjectRef, ObservedReport>,
        puts: usize,
        deletes: usize,
    }

    impl MemoryReports {
        pub fn new() -> Arc<Self> {
            Arc::new(MemoryReports::default())
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, MemoryReportsInner> {
            self.inner.lock().unwrap_or_else(|e| e.into_inner())
        }

        pub fn get(&self, object: &ObjectRef) -> Option<ObservedReport> {
            self.lock().reports.get(object).cloned()
        }

        pub fn all(&self) -> BTreeMap<ObjectRef, ObservedReport> {
            self.lock().reports.clone()
        }

        /// (puts, deletes) so far.
        pub fn writes(&self) -> (usize, usize) {
            let i = self.lock();
            (i.puts, i.deletes)
        }

        pub fn insert(&self, report: ObservedReport) {
            self.lock().reports.insert(report.object.clone(), report);
        }
    }

    #[async_trait]
    impl ReportSink for MemoryReports {
        /// Applied at once, in submission order.
        fn submit(&self, _node: &str, writes: Vec<ReportWrite>) -> WriteDone {
            let mut i = self.lock();
            for w in writes {
                match w {
                    ReportWrite::Put(r) => {
                        i.puts += 1;
                        i.reports.insert(r.object.clone(), r);
                    }
                    ReportWrite::Delete(o) => {
                        i.deletes += 1;
                        i.reports.remove(&o);
                    }
                }
            }
            Box::pin(std::future::ready(Ok(())))
        }

        async fn list(&self, _node: &str) -> Result<Vec<ObservedReport>, ReportError> {
            Ok(self.lock().reports.values().cloned().collect())
        }
    }
}

#[cfg(any(test, feature = "testing"))]
pub use memory::MemoryReports;

/// Same content, ignoring `time`.
pub fn same_content(a: &ObservedReport, b: &ObservedReport) -> bool {
    let mut b = b.clone();
    b.time = a.time;
    *a == b
}

/// How long one report write may take. Reconciles wait for their reports; an etcd that does
/// not answer must not stop the host from being repaired.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

async fn bounded<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, ReportError>>,
) -> Result<T, ReportError> {
    match tokio::time::timeout(WRITE_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(ReportError::Timeout {
            what: what.to_string(),
            timeout: WRITE_TIMEOUT,
        }),
    }
}

/// Writes reports through a cache of what is stored, so unchanged reports cost nothing.
pub struct Reporter {
    sink: Arc<dyn ReportSink>,
    node: String,
    state: tokio::sync::Mutex<ReporterState>,
}

#[derive(Default)]
struct ReporterState {
    stored: HashMap<ObjectRef, ObservedReport>,
    owners: HashMap<Key, BTreeSet<ObjectRef>>,
}

impl ReporterState {
    fn claimed_elsewhere(&self, key: &Key, object: &ObjectRef) -> bool {
        self.owners
            .iter()
            .any(|(k, objs)| k != key && objs.contains(object))
    }
}

impl Reporter {
    pub fn new(sink: Arc<dyn ReportSink>, node: &str) -> Self {
        Reporter {
            sink,
            node: node.to_string(),
            state: tokio::sync::Mutex::new(ReporterState::default()),
        }
    }

    /// Fills the cache with what is stored (an agent restart then rewrites nothing that is
    /// still true, and keeps restart counts).
    pub async fn load(&self) -> Result<usize, ReportError> {
        let reports = bounded("list reports", self.sink.list(&self.node)).await?;
        let mut st = self.state.lock().await;
        let n = reports.len();
        for r in reports {
            st.stored.insert(r.object.clone(), r);
        }
        Ok(n)
    }

    /// The report stored for `object`, as far as this agent knows.
    pub async fn stored(&self, object: &ObjectRef) -> Option<ObservedReport> {
        self.state.lock().await.stored.get(object).cloned()
    }

    /// Sets the reports `key` produces now: writes the changed ones, deletes the ones it
    /// produced before and no longer does (unless another key took them over). Returns how
    /// many writes it made.
    ///
    /// The cache is updated and the writes submitted under the lock, so they reach the store
    /// in the order the cache saw them; the write itself is awaited outside the lock, so the
    /// agent's workers report side by side and their writes share transactions. A write that
    /// fails is forgotten by the cache (written again by the next sync) and `key` keeps its
    /// old reports too (so the next sync deletes what it should have).
    pub async fn sync(
        &self,
        key: &Key,
        reports: Vec<ObservedReport>,
    ) -> Result<usize, ReportError> {
        let (before, writes, done) = {
            let mut st = self.state.lock().await;
            let now: BTreeSet<ObjectRef> = reports.iter().map(|r| r.object.clone()).collect();
            let before = st.owners.get(key).cloned().unwrap_or_default();
            let mut writes = vec![];
            for r in reports {
                if st
                    .stored
                    .get(&r.object)
                    .is_some_and(|s| same_content(s, &r))
                {
                    continue;
                }
                st.stored.insert(r.object.clone(), r.clone());
                writes.push(ReportWrite::Put(r));
            }
            for gone in before.difference(&now) {
                if st.claimed_elsewhere(key, gone) {
                    continue;
                }
                st.stored.remove(gone);
                writes.push(ReportWrite::Delete(gone.clone()));
            }
            if now.is_empty() {
                st.owners.remove(key);
            } else {
                st.owners.insert(key.clone(), now);
            }
            if writes.is_empty() {
                return Ok(0);
            }
            let done = self.sink.submit(&self.node, writes.clone());
            (before, writes, done)
        };
        match bounded("write reports", done).await {
            Ok(()) => Ok(writes.len()),
            Err(e) => {
                let mut st = self.state.lock().await;
                for w in &writes {
                    st.stored.remove(w.object());
                }
                st.owners.entry(key.clone()).or_default().extend(before);
                Err(e)
            }
        }
    }

    /// Deletes every stored report of an object not in `expected` (garbage collection).
    pub async fn retain(&self, expected: &BTreeSet<ObjectRef>) -> Result<usize, ReportError> {
        let (stale, done) = {
            let mut st = self.state.lock().await;
            let stale: Vec<ObservedReport> = st
                .stored
                .values()
                .filter(|r| !expected.contains(&r.object))
                .cloned()
                .collect();
            if stale.is_empty() {
                return Ok(0);
            }
            for r in &stale {
                st.stored.remove(&r.object);
                for objs in st.owners.values_mut() {
                    objs.remove(&r.object);
                }
            }
            let writes = stale
                .iter()
                .map(|r| ReportWrite::Delete(r.object.clone()))
                .collect();
            (stale, self.sink.submit(&self.node, writes))
        };
        if let Err(e) = bounded("delete reports", done).await {
            // Still stored as far as we know: the next collection tries again.
            let mut st = self.state.lock().await;
            for r in stale {
                st.stored.entry(r.object.clone()).or_insert(r);
            }
            return Err(e);
        }
        Ok(stale.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use topo_schema::kinds::Kind;

    fn report(kind: Kind, name: &str, ready: bool) -> ObservedReport {
        ObservedReport {
            uid: None,
            object: ObjectRef::new(kind, name),
            observed_generation: 1,
            ready,
            reason: if ready {
                "Running".into()
            } else {
                "Pending".into()
            },
            message: String::new(),
            container_id: None,
            restart_count: 0,
            endpoint: None,
            time: Utc::now(),
        }
    }

    #[tokio::test]
    async fn writes_only_changes_and_deletes_dropped() {
        let mem = MemoryReports::new();
        let r = Reporter::new(mem.clone(), "node1");
        let key = &Key::Container("app".into());
        assert_eq!(
            r.sync(
                key,
                vec![
                    report(Kind::Container, "app", false),
                    report(Kind::Link, "l", false)
                ]
            )
            .await
            .unwrap(),
            2
        );
        // Same content, later time: nothing written.
        assert_eq!(
            r.sync(
                key,
                vec![
                    report(Kind::Container, "app", false),
                    report(Kind::Link, "l", false)
                ]
            )
            .await
            .unwrap(),
            0
        );
        assert_eq!(
            r.sync(key, vec![report(Kind::Container, "app", true)])
                .await
                .unwrap(),
            2
        );
        assert!(mem.get(&ObjectRef::new(Kind::Link, "l")).is_none());
        assert!(
            mem.get(&ObjectRef::new(Kind::Container, "app"))
                .unwrap()
                .ready
        );
        assert_eq!(r.sync(key, vec![]).await.unwrap(), 1);
        assert!(mem.all().is_empty());
    }

    #[tokio::test]
    async fn a_link_moving_between_consumers_keeps_its_report() {
        let mem = MemoryReports::new();
        let r = Reporter::new(mem.clone(), "node1");
        let (a, b) = (Key::Container("a".into()), Key::Container("b".into()));
        r.sync(&a, vec![report(Kind::Link, "l", true)])
            .await
            .unwrap();
        r.sync(&b, vec![report(Kind::Link, "l", false)])
            .await
            .unwrap();
        r.sync(&a, vec![]).await.unwrap();
        assert!(!mem.get(&ObjectRef::new(Kind::Link, "l")).unwrap().ready);
    }

    #[tokio::test]
    async fn load_then_retain_removes_orphans() {
        let mem = MemoryReports::new();
        mem.insert(report(Kind::Container, "old", true));
        mem.insert(report(Kind::Container, "app", true));
        let r = Reporter::new(mem.clone(), "node1");
        assert_eq!(r.load().await.unwrap(), 2);
        // Adopted state equal to what is stored: no write.
        assert_eq!(
            r.sync(
                &Key::Container("app".into()),
                vec![report(Kind::Container, "app", true)]
            )
            .await
            .unwrap(),
            0
        );
        let expected = BTreeSet::from([ObjectRef::new(Kind::Container, "app")]);
        assert_eq!(r.retain(&expected).await.unwrap(), 1);
        assert_eq!(mem.all().len(), 1);
    }
}
