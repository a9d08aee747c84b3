//! Observed reports: what the agent saw of each object of its slice, under
//! `keys::report(node, kind, name)`, for the controller to fold into status.
//!
//! A report is written only when its content (everything but `time`) changed, so a steady
//! node writes nothing. Each slice entry key owns the reports its reconcile produced
//! (a container entry: its Container and the Links it consumes; a tunnel entry: its Tunnel);
//! when an entry stops producing one (or goes), the report is deleted. Reports that no key
//! owns after a restart are removed by [`Reporter::retain`] during garbage collection.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, GetOptions};
use topo_schema::api::ObservedReport;
use topo_schema::keys;
use topo_schema::kinds::ObjectRef;

use crate::key::Key;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("failed to write the report of {object}: {source}")]
    Write {
        object: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("failed to delete the report of {object}: {source}")]
    Delete {
        object: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("failed to {what}: etcd did not answer within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    #[error("failed to list the node's reports: {0}")]
    List(#[source] etcd_client::Error),
    #[error("failed to encode the report of {object}: {source}")]
    Encode {
        object: String,
        #[source]
        source: serde_json::Error,
    },
}

#[async_trait]
pub trait ReportSink: Send + Sync {
    async fn put(&self, node: &str, report: &ObservedReport) -> Result<(), ReportError>;
    async fn delete(&self, node: &str, object: &ObjectRef) -> Result<(), ReportError>;
    async fn list(&self, node: &str) -> Result<Vec<ObservedReport>, ReportError>;
}

pub struct EtcdReports {
    client: Client,
}

impl EtcdReports {
    pub fn new(client: Client) -> Self {
        EtcdReports { client }
    }
}

#[async_trait]
impl ReportSink for EtcdReports {
    async fn put(&self, node: &str, report: &ObservedReport) -> Result<(), ReportError> {
        let object = report.object.to_string();
        let value = serde_json::to_vec(report).map_err(|source| ReportError::Encode {
            object: object.clone(),
            source,
        })?;
        let mut client = self.client.clone();
        let put = client.put(
            keys::report(node, report.object.kind, &report.object.name),
            value,
            None,
        );
        topo_watcher::metrics::etcd_timed("put", put)
            .await
            .map_err(|source| ReportError::Write { object, source })?;
        Ok(())
    }

    async fn delete(&self, node: &str, object: &ObjectRef) -> Result<(), ReportError> {
        self.client
            .clone()
            .delete(keys::report(node, object.kind, &object.name), None)
            .await
            .map_err(|source| ReportError::Delete {
                object: object.to_string(),
                source,
            })?;
        Ok(())
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
            .map_err(ReportError::List)?;
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
        async fn put(&self, _node: &str, report: &ObservedReport) -> Result<(), ReportError> {
            let mut i = self.lock();
            i.puts += 1;
            i.reports.insert(report.object.clone(), report.clone());
            Ok(())
        }

        async fn delete(&self, _node: &str, object: &ObjectRef) -> Result<(), ReportError> {
            let mut i = self.lock();
            i.deletes += 1;
            i.reports.remove(object);
            Ok(())
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
    pub async fn sync(
        &self,
        key: &Key,
        reports: Vec<ObservedReport>,
    ) -> Result<usize, ReportError> {
        let mut st = self.state.lock().await;
        let now: BTreeSet<ObjectRef> = reports.iter().map(|r| r.object.clone()).collect();
        let before = st.owners.get(key).cloned().unwrap_or_default();
        let mut writes = 0;
        for r in &reports {
            if st.stored.get(&r.object).is_some_and(|s| same_content(s, r)) {
                continue;
            }
            bounded("write a report", self.sink.put(&self.node, r)).await?;
            writes += 1;
            st.stored.insert(r.object.clone(), r.clone());
        }
        for gone in before.difference(&now) {
            if st.claimed_elsewhere(key, gone) {
                continue;
            }
            bounded("delete a report", self.sink.delete(&self.node, gone)).await?;
            writes += 1;
            st.stored.remove(gone);
        }
        if now.is_empty() {
            st.owners.remove(key);
        } else {
            st.owners.insert(key.clone(), now);
        }
        Ok(writes)
    }

    /// Deletes every stored report of an object not in `expected` (garbage collection).
    pub async fn retain(&self, expected: &BTreeSet<ObjectRef>) -> Result<usize, ReportError> {
        let mut st = self.state.lock().await;
        let stale: Vec<ObjectRef> = st
            .stored
            .keys()
            .filter(|o| !expected.contains(*o))
            .cloned()
            .collect();
        for o in &stale {
            bounded("delete a report", self.sink.delete(&self.node, o)).await?;
            st.stored.remove(o);
            for objs in st.owners.values_mut() {
                objs.remove(o);
            }
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
