//! The agent's runtime: registration, heartbeat, slice watch, workers, host events and
//! resync, and an orderly shutdown.
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
use crate::pulls::PullConfig;
use crate::queue::WorkQueue;
use crate::reconcile::{Backends, Context, Runner};
use crate::report::{EtcdReports, Reporter};
use crate::watch::{SliceStore, SliceWatcher, slice_source};

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
    /// The agent endpoint's address (`endpoint.rs`), announced in the heartbeat so that
    /// the controller can reach it; None when it does not serve one (tests).
    pub endpoint: Option<std::net::SocketAddr>,
    /// Image pull deadlines and backoff.
    pub image_pulls: PullConfig,
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
    let registered = until_ok("register the node", &mut shutdown, || {
        let (mut c, node) = (client.clone(), node.clone());
        async move { register_node(&mut c, &node, cfg.address, cfg.datapath).await }
    })
    .await;
    if registered.is_none() {
        return;
    }
    tracing::info!(node = %node, "node registration written");

    // 2. Heartbeat.
    let (lease_tx, lease_rx) = watch::channel(0i64);
    let heartbeat = tokio::spawn(run_heartbeat(
        client.clone(),
        heartbeat_config(&cfg),
        shutdown.clone(),
        lease_tx,
    ));

    // 3. Reports as stored (restart counts, and no rewrite of what is still true).
    let reporter = Reporter::new(Arc::new(EtcdReports::new(client.clone())), &node);
    let Some(n) = until_ok("load reports", &mut shutdown, || reporter.load()).await else {
        let _ = heartbeat.await;
        return;
    };
    tracing::debug!(reports = n, "loaded stored reports");

    let store = SliceStore::new();
    let queue = WorkQueue::new();
    let events = Arc::new(EtcdEvents::new(client.clone(), &node));
    let recorder = Recorder::new(events.clone(), &node);
    let ctx = Arc::new(
        Context::new(
            &node,
            backends.clone(),
            store.clone(),
            reporter,
            recorder,
            queue.clone(),
        )
        .with_pull_config(cfg.image_pulls),
    );
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
    let watcher = SliceWatcher::new(slice_source(client.clone(), &node), store.clone());
    tasks.spawn(crate::slice_sync::run(
        watcher,
        ctx.clone(),
        synced_tx,
        shutdown.clone(),
    ));
    // 5. Host events and the periodic resync.
    tasks.spawn(crate::host_events::run_host_events(
        ctx.clone(),
        backends,
        shutdown.clone(),
    ));
    tasks.spawn(crate::host_events::run_resync(
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
    ctx.watches.stop_all();
    ctx.pulls.stop_all();
    drain(workers, cfg.shutdown_grace, &events).await;
    let _ = tokio::time::timeout(Duration::from_secs(3), heartbeat).await;
    tracing::info!(node = %node, "stopped; containers keep running");
}

fn heartbeat_config(cfg: &AgentConfig) -> HeartbeatConfig {
    HeartbeatConfig {
        node: cfg.node.clone(),
        ttl: cfg.heartbeat_ttl,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        endpoint: cfg.endpoint.map(|a| a.to_string()),
    }
}

/// Tries `attempt` until it succeeds, backing off between failures; None when `shutdown`
/// comes first.
async fn until_ok<T, E: std::error::Error, F: Future<Output = Result<T, E>>>(
    what: &str,
    shutdown: &mut watch::Receiver<bool>,
    mut attempt: impl FnMut() -> F,
) -> Option<T> {
    let mut backoff =
        crate::watch::watch_backoff(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match attempt().await {
            Ok(v) => return Some(v),
            Err(e) => {
                let delay = backoff.next_backoff().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %crate::error_chain::error_chain(&e), ?delay, "failed to {what}; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return None,
                }
            }
        }
    }
}

/// Lets in-flight reconciles finish within `grace`, then abandons them; then writes their
/// last events, as far as etcd takes them within one write bound.
async fn drain(mut workers: JoinSet<()>, grace: Duration, events: &EtcdEvents) {
    let drained = tokio::time::timeout(grace, async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            ?grace,
            "reconciles still running at the end of the grace period; abandoning them"
        );
        workers.abort_all();
    }
    let _ = tokio::time::timeout(crate::report::WRITE_TIMEOUT, events.flush()).await;
}
