//! The agent's runtime: registration, heartbeat, slice watch, workers, drift and resync,
//! and an orderly shutdown.
//!
//! Shutdown (SIGTERM/SIGINT): the watch, drift and resync tasks stop, the queue stops handing
//! out keys, in-flight reconciles get [`AgentConfig::shutdown_grace`] to finish, and the
//! heartbeat lease is revoked (the Node turns NotReady at once). Nothing on the host is
//! removed: containers keep running and the next agent adopts them.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use backoff::backoff::Backoff;
use etcd_client::Client;
use tokio::sync::watch;
use tokio::task::JoinSet;
use topo_schema::kinds::Datapath;

use crate::events::{EtcdEvents, Recorder};
use crate::heartbeat::{HeartbeatConfig, register_node, run_heartbeat};
use crate::queue::{GC_KEY, NAT_KEY, WorkQueue};
use crate::reconcile::{Backends, Context, Runner};
use crate::report::{EtcdReports, Reporter};
use crate::watch::{EtcdSliceSource, SliceStore, SliceWatcher, Step};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node: String,
    pub address: Ipv4Addr,
    pub datapath: Datapath,
    pub heartbeat_ttl: Duration,
    pub resync: Duration,
    /// Reconciles in flight at once (one per key at most).
    pub workers: usize,
    /// How long in-flight reconciles may take to finish on shutdown.
    pub shutdown_grace: Duration,
}

/// Handles a test (or main) can watch while the agent runs.
#[derive(Clone)]
pub struct AgentHandles {
    pub store: SliceStore,
    pub queue: Arc<WorkQueue>,
    /// Turns true once the first list of the slice arrived.
    pub synced: watch::Receiver<bool>,
    /// The heartbeat lease in force (0: none).
    pub lease: watch::Receiver<i64>,
}

/// Runs the agent until `shutdown` turns true. `ready` receives the handles once the runtime
/// is wired (before the first list).
pub async fn run(
    cfg: AgentConfig,
    client: Client,
    backends: Backends,
    mut shutdown: watch::Receiver<bool>,
    ready: Option<tokio::sync::oneshot::Sender<AgentHandles>>,
) {
    let node = cfg.node.clone();
    // 1. Registration: retried until etcd answers (the agent may start before etcd).
    let mut backoff =
        crate::watch::watch_backoff(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let mut c = client.clone();
        match register_node(&mut c, &node, cfg.address, cfg.datapath).await {
            Ok(()) => break,
            Err(e) => {
                let delay = backoff.next_backoff().unwrap_or(Duration::from_secs(5));
                tracing::warn!(node = %node, error = %crate::reconcile::error_chain(&e), ?delay, "failed to register the node; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }

    // 2. Heartbeat.
    let (lease_tx, lease_rx) = watch::channel(0i64);
    let heartbeat = tokio::spawn(run_heartbeat(
        client.clone(),
        HeartbeatConfig {
            node: node.clone(),
            ttl: cfg.heartbeat_ttl,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        },
        shutdown.clone(),
        lease_tx,
    ));

    // 3. Reports as stored (restart counts, and no rewrite of what is still true).
    let reporter = Reporter::new(Arc::new(EtcdReports::new(client.clone())), &node);
    let mut backoff =
        crate::watch::watch_backoff(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match reporter.load().await {
            Ok(n) => {
                tracing::debug!(reports = n, "loaded stored reports");
                break;
            }
            Err(e) => {
                let delay = backoff.next_backoff().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %crate::reconcile::error_chain(&e), ?delay, "failed to load reports; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => {
                        let _ = heartbeat.await;
                        return;
                    }
                }
            }
        }
    }

    let store = SliceStore::new();
    let queue = WorkQueue::new();
    let recorder = Recorder::new(Arc::new(EtcdEvents::new(client.clone(), &node)), &node);
    let ctx = Arc::new(Context::new(
        &node,
        backends.clone(),
        store.clone(),
        reporter,
        recorder,
        queue.clone(),
    ));
    let runner = Runner::new(ctx.clone());
    let (synced_tx, synced_rx) = watch::channel(false);
    if let Some(ready) = ready {
        let _ = ready.send(AgentHandles {
            store: store.clone(),
            queue: queue.clone(),
            synced: synced_rx,
            lease: lease_rx,
        });
    }

    let mut tasks = JoinSet::new();
    // 4. The slice watch.
    {
        let ctx = ctx.clone();
        let mut shutdown = shutdown.clone();
        let source = EtcdSliceSource::new(client.clone(), &node);
        tasks.spawn(async move {
            let mut watcher = SliceWatcher::new(source, ctx.store.clone());
            loop {
                let step = tokio::select! {
                    s = watcher.step() => s,
                    _ = shutdown.changed() => return,
                };
                match step {
                    Step::Synced { changed, relist } => {
                        let stats = watcher.stats();
                        if !ctx.is_synced() {
                            ctx.mark_synced();
                            tracing::info!(entries = ctx.store.keys().len(), "slice listed; adopting and reconciling");
                            ctx.queue.add_all(ctx.all_keys());
                            let _ = synced_tx.send(true);
                        } else {
                            tracing::info!(relist, changed = changed.len(), relists = stats.relists, "slice relisted");
                            ctx.queue.add_all(changed);
                            ctx.queue.add(NAT_KEY);
                            ctx.queue.add(GC_KEY);
                        }
                    }
                    Step::Changed(keys) => {
                        tracing::debug!(?keys, "slice changed");
                        ctx.queue.add_all(keys);
                    }
                    Step::Idle => {}
                    Step::Retry { error, delay } => {
                        tracing::warn!(%error, ?delay, state = ?watcher.state(), "slice watch interrupted; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = shutdown.changed() => return,
                        }
                    }
                }
            }
        });
    }
    // 5. Drift and the periodic resync.
    tasks.spawn(crate::drift::run_drift(
        ctx.clone(),
        backends,
        shutdown.clone(),
    ));
    tasks.spawn(crate::drift::run_resync(
        queue.clone(),
        ctx.clone(),
        cfg.resync,
        shutdown.clone(),
    ));
    // 6. Workers.
    let mut workers = JoinSet::new();
    for _ in 0..cfg.workers.max(1) {
        workers.spawn(runner.clone().run_worker());
    }

    let _ = shutdown.wait_for(|s| *s).await;
    tracing::info!(node = %node, "shutting down: finishing in-flight reconciles");
    queue.shutdown();
    tasks.abort_all();
    let drained = tokio::time::timeout(cfg.shutdown_grace, async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(grace = ?cfg.shutdown_grace, "reconciles still running at the end of the grace period; abandoning them");
        workers.abort_all();
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), heartbeat).await;
    tracing::info!(node = %node, "stopped; containers keep running");
}
