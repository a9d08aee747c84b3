//! Leadership and derivation: one replica, elected through an etcd lease, turns snapshots
//! into derived tunnels, node slices and statuses.
//!
//! Election: the leader key ([`keys::leader`]) is created with a lease (TTL a few seconds,
//! kept alive); whoever creates it leads until the lease lapses or it resigns. Every write the
//! leader makes carries a compare on the leader key's create_revision, so a deposed leader
//! (its lease expired while it was paused or partitioned) cannot write anything: its
//! transactions fail and it steps down.
//!
//! While leading, on each new snapshot (debounced, so a burst of watch events becomes one
//! pass):
//! 1. on taking over, IPAM is rebuilt from the specs once (drops leaks an older leader or
//!    version may have left);
//! 2. the planner derives mesh tunnels (committed as Tunnel objects through the fenced
//!    commit) and every node's slice;
//! 3. slices are written diff-only: the leader remembers the bytes it last wrote per slice key
//!    (read back once when it takes over) and puts only entries whose bytes changed, deletes
//!    entries no longer planned, in transactions of at most `txn_ops` operations; an
//!    unchanged entry is never rewritten, so agents see no spurious events;
//! 4. statuses are folded from agent reports, heartbeats and IPAM and written only when they
//!    changed (conditions keep their lastTransitionTime);
//! 5. a few events say what the controller did.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use etcd_client::{Client, Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use topo_schema::api::{Event, EventType as EvType};
use topo_schema::keys;
use topo_schema::meta::{CONDITION_READY, Condition, ConditionStatus, set_condition};
use topo_schema::{
    Container, ContainerStatus, Kind, Link, LinkStatus, Network, NetworkStatus, Node, NodeStatus,
    ObjectRef, Resource, Tunnel, TunnelStatus,
};
use tracing::Instrument;

use crate::cache::{MAX_MESSAGE_BYTES, Snapshot};
use crate::commit::{ChangeSet, CommitError, Committer};
use crate::ipam::{self, Assignment};
use crate::planner::{self, Desired, Plan};

/// The `source` of the events the controller records.
pub const EVENT_SOURCE: &str = "controller";
/// Bytes of values per slice or status transaction (etcd refuses requests over 1.5 MiB).
const MAX_TXN_BYTES: usize = 1024 * 1024;
/// Events recorded per pass at most; the rest are only logged.
const MAX_EVENTS_PER_PASS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("failed to grant the leadership lease")]
    Lease(#[source] etcd_client::Error),
    #[error("failed to campaign for leadership")]
    Campaign(#[source] etcd_client::Error),
    #[error("failed to read the slices already written")]
    ListSlices(#[source] etcd_client::Error),
    #[error("failed to write {what}")]
    Write {
        what: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("failed to commit {what}")]
    Commit {
        what: &'static str,
        #[source]
        source: CommitError,
    },
    #[error("failed to encode slice entry {key}")]
    Encode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("failed to keep leading: the leadership was lost")]
    Deposed,
}

impl From<CommitError> for LeaderError {
    fn from(source: CommitError) -> Self {
        LeaderError::Commit {
            what: "a change set",
            source,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// This replica's identity, stored as the leader key's value.
    pub id: String,
    /// Lease TTL in seconds: how long a dead leader blocks a successor.
    pub lease_ttl: i64,
    /// A pass starts once no new snapshot arrived for this long ...
    pub quiet: Duration,
    /// ... or at the latest this long after the first unhandled one.
    pub max_delay: Duration,
    /// Operations per slice/status transaction (etcd's default limit is 128).
    pub txn_ops: usize,
    /// Slice/status transactions in flight at once.
    pub write_concurrency: usize,
    /// How often old events are pruned.
    pub prune_every: Duration,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        LeaderConfig {
            id: format!("controller-{}", uuid::Uuid::new_v4().simple()),
            lease_ttl: 5,
            // Every millisecond of quiet is added to each rewire's network programming
            // latency (issue 4 aims at a p99 under 100 ms), while one apply arrives as one
            // transaction anyway and a pass on a quiet cluster costs a few ms; `max_delay`
            // still bounds a storm of agent reports.
            quiet: Duration::from_millis(10),
            max_delay: Duration::from_millis(500),
            txn_ops: 120,
            write_concurrency: 4,
            prune_every: Duration::from_secs(300),
        }
    }
}

/// One term of leadership: the leader key as we created it.
#[derive(Debug, Clone)]
struct Term {
    create_revision: i64,
    /// Cancelled when the lease lapses (or could not be renewed for a whole TTL).
    lost: CancellationToken,
    lease: i64,
}

impl Term {
    /// The compare every leader write carries.
    fn compare(&self) -> Compare {
        Compare::create_revision(keys::leader(), CompareOp::Equal, self.create_revision)
    }
}

/// Campaigns, and derives while leading, until `shutdown`. A lost term (lease lapsed, etcd
/// unreachable, a write refused by the fence) ends in stepping down and campaigning again.
pub async fn run(
    committer: Committer,
    config: LeaderConfig,
    shutdown: CancellationToken,
) -> Result<(), LeaderError> {
    let client = committer.client().clone();
    let mut backoff = crate::cache::new_backoff();
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let term = match campaign(&client, &config, &shutdown).await {
            Ok(Some(t)) => t,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "campaign failed");
                if !sleep_backoff(&mut backoff, &shutdown).await {
                    return Ok(());
                }
                continue;
            }
        };
        backoff = crate::cache::new_backoff();
        let span = tracing::info_span!("leader", id = %config.id, term = term.create_revision);
        tracing::info!(parent: &span, "became leader");
        let mut leader = Leader::new(committer.clone(), config.clone(), term.clone());
        let result = leader.lead(&shutdown).instrument(span.clone()).await;
        term.lost.cancel();
        // Resign so a successor need not wait for the TTL (harmless if already expired).
        let _ = client.lease_client().revoke(term.lease).await;
        match result {
            Ok(()) => {
                tracing::info!(parent: &span, "resigned");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(parent: &span, error = %e, source = ?std::error::Error::source(&e), "stepped down");
                if !sleep_backoff(&mut backoff, &shutdown).await {
                    return Ok(());
                }
            }
        }
    }
}

async fn sleep_backoff(b: &mut backoff::ExponentialBackoff, shutdown: &CancellationToken) -> bool {
    use backoff::backoff::Backoff;
    let wait = b.next_backoff().unwrap_or(Duration::from_secs(5));
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

/// Grants a lease, keeps it alive, and waits until this replica creates the leader key.
/// None on shutdown.
async fn campaign(
    client: &Client,
    config: &LeaderConfig,
    shutdown: &CancellationToken,
) -> Result<Option<Term>, LeaderError> {
    let ttl = config.lease_ttl.max(2);
    let lease = client
        .lease_client()
        .grant(ttl, None)
        .await
        .map_err(LeaderError::Lease)?
        .id();
    let lost = CancellationToken::new();
    tokio::spawn(keep_alive(
        client.clone(),
        lease,
        ttl,
        lost.clone(),
        shutdown.clone(),
    ));
    let key = keys::leader();
    let mut kv = client.kv_client();
    loop {
        if lost.is_cancelled() {
            return Err(LeaderError::Deposed);
        }
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                key.as_str(),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![TxnOp::put(
                key.as_str(),
                config.id.as_str(),
                Some(etcd_client::PutOptions::new().with_lease(lease)),
            )])
            .or_else(vec![TxnOp::get(key.as_str(), None)]);
        let resp = match kv.txn(txn).await {
            Ok(r) => r,
            Err(e) => {
                lost.cancel();
                return Err(LeaderError::Campaign(e));
            }
        };
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        if resp.succeeded() {
            return Ok(Some(Term {
                create_revision: rev,
                lost,
                lease,
            }));
        }
        let holder = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                etcd_client::TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).to_string()),
                _ => None,
            })
            .unwrap_or_default();
        tracing::info!(leader = %holder, "following");
        // Wait for the key to go away (its holder resigned or its lease lapsed).
        let mut wc = client.watch_client();
        let (_watcher, mut stream) = match wc
            .watch(
                key.as_str(),
                Some(WatchOptions::new().with_start_revision(rev + 1)),
            )
            .await
        {
            Ok(s) => s.split(),
            Err(e) => {
                lost.cancel();
                return Err(LeaderError::Campaign(e));
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    lost.cancel();
                    let _ = client.lease_client().revoke(lease).await;
                    return Ok(None);
                }
                _ = lost.cancelled() => return Err(LeaderError::Deposed),
                msg = stream.message() => match msg {
                    Ok(Some(resp)) => {
                        if resp.events().iter().any(|e| e.event_type() == EventType::Delete) {
                            break;
                        }
                        if resp.canceled() || resp.compact_revision() > 0 {
                            break;
                        }
                    }
                    // The watch ended: look at the key again.
                    Ok(None) | Err(_) => break,
                },
            }
        }
    }
}

/// Renews `lease` every third of its TTL; cancels `lost` once it could not be renewed for a
/// whole TTL, or etcd says it expired.
async fn keep_alive(
    client: Client,
    lease: i64,
    ttl: i64,
    lost: CancellationToken,
    shutdown: CancellationToken,
) {
    let period = Duration::from_millis((ttl as u64 * 1000) / 3);
    let ttl = Duration::from_secs(ttl as u64);
    let mut last_ok = Instant::now();
    let mut keeper: Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)> = None;
    loop {
        if last_ok.elapsed() >= ttl {
            tracing::warn!(lease, "leadership lease could not be renewed in time");
            lost.cancel();
            return;
        }
        if keeper.is_none() {
            keeper = client.lease_client().keep_alive(lease).await.ok();
        }
        if let Some((k, s)) = keeper.as_mut() {
            let renewed = async {
                k.keep_alive().await.ok()?;
                s.message().await.ok().flatten()
            };
            match tokio::time::timeout(period, renewed).await {
                Ok(Some(r)) if r.ttl() > 0 => last_ok = Instant::now(),
                Ok(Some(_)) => {
                    tracing::warn!(lease, "leadership lease expired");
                    lost.cancel();
                    return;
                }
                Ok(None) | Err(_) => keeper = None,
            }
        }
        tokio::select! {
            _ = lost.cancelled() => return,
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

/// What one term of leadership remembers.
struct Leader {
    committer: Committer,
    config: LeaderConfig,
    term: Term,
    /// Slice key → the bytes last written (or found when taking over).
    written: HashMap<String, Vec<u8>>,
    events: mpsc::Sender<Event>,
}

impl Leader {
    fn new(committer: Committer, config: LeaderConfig, term: Term) -> Self {
        let (events, rx) = mpsc::channel(256);
        tokio::spawn(record_events(
            committer.client().clone(),
            rx,
            config.prune_every,
            term.lost.clone(),
        ));
        Leader {
            committer,
            config,
            term,
            written: HashMap::new(),
            events,
        }
    }

    fn client(&self) -> &Client {
        self.committer.client()
    }

    /// Derives until shutdown (Ok) or until the term is lost (Err).
    async fn lead(&mut self, shutdown: &CancellationToken) -> Result<(), LeaderError> {
        self.written = load_slices(self.client()).await?;
        tracing::info!(entries = self.written.len(), "read the written slices");
        self.rebuild_ipam().await?;
        let cache = self.committer.cache().clone();
        let mut rx = cache.subscribe();
        loop {
            let snap = rx.borrow_and_update().clone();
            self.reconcile(snap).await?;
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = self.term.lost.cancelled() => return Err(LeaderError::Deposed),
                changed = rx.changed() => if changed.is_err() { return Ok(()); },
            }
            // Coalesce a burst of snapshots into one pass.
            let first = Instant::now();
            loop {
                let left = self.config.max_delay.saturating_sub(first.elapsed());
                if left.is_zero() {
                    break;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(self.config.quiet.min(left)) => break,
                    changed = rx.changed() => if changed.is_err() { return Ok(()); },
                }
            }
        }
    }

    /// Recomputes IPAM from the specs and commits the difference (fenced, as leader).
    async fn rebuild_ipam(&self) -> Result<(), LeaderError> {
        let term = self.term.clone();
        let (problems, rev, _) = self
            .committer
            .run(
                || vec![term.compare()],
                |snap| -> Result<(Option<ChangeSet>, _), LeaderError> {
                    let objects = snap
                        .objects
                        .values()
                        .filter(|o| !o.is_derived())
                        .map(|o| &o.resource);
                    let r = ipam::rebuild(objects, &snap.blocks, &snap.addrs);
                    let cs = ChangeSet {
                        puts: r.changes.puts,
                        deletes: r.changes.deletes,
                        compares: vec![],
                    };
                    Ok((Some(cs), r.problems))
                },
            )
            .await
            .map_err(|e| self.commit_error("the IPAM rebuild", e))?;
        for (r, e) in &problems {
            tracing::warn!(object = %r, field = %e.field, message = %e.message, "IPAM rebuild could not satisfy");
        }
        if let Some(rev) = rev {
            tracing::info!(rev, "IPAM rebuilt: released leaks and filled gaps");
            self.committer.cache().wait_for_revision(rev).await;
        }
        Ok(())
    }

    fn commit_error(&self, what: &'static str, e: LeaderError) -> LeaderError {
        match e {
            LeaderError::Commit {
                source: CommitError::CompareFailed,
                ..
            } => LeaderError::Deposed,
            LeaderError::Commit { source, .. } => LeaderError::Commit { what, source },
            other => other,
        }
    }

    /// One pass. Everything is computed first and the snapshot dropped before writing: the
    /// status writes make the cache publish new snapshots, and holding the old one meanwhile
    /// would keep two copies of every object alive.
    async fn reconcile(&mut self, snap: Arc<Snapshot>) -> Result<(), LeaderError> {
        let revision = snap.revision;
        crate::registration::fold(&self.committer, &snap).await;
        let span = tracing::debug_span!("reconcile", revision);
        async {
            let started = Instant::now();
            let (slice_ops, derived, folded, planned) = {
                let desired = Desired::from_resources(snap.objects.values().map(|o| &o.resource));
                let assignment = Assignment::from_state(&snap.blocks, &snap.addrs);
                let plan = planner::plan(&desired, &assignment);
                let planned = started.elapsed();
                let slice_ops = self.slice_changes(&plan)?;
                let folded = fold_statuses(&snap, &desired, &plan, &assignment, Utc::now());
                (slice_ops, plan.derived_tunnels, folded, planned)
            };
            drop(snap);

            let n_slices = slice_ops.len();
            let done = self.write_batches(slice_ops, "slices").await?;
            for w in done {
                match w {
                    Write::Put(k, v) => {
                        self.written.insert(k, v);
                    }
                    Write::Delete(k) => {
                        self.written.remove(&k);
                    }
                }
            }
            let n_tunnels = self.write_derived_tunnels(revision, &derived).await?;
            drop(derived);
            let n_statuses = folded.puts.len() + folded.deletes.len();
            let ops: Vec<Write> = folded
                .puts
                .into_iter()
                .map(|(k, v)| Write::Put(k, v.into_bytes()))
                .chain(folded.deletes.into_iter().map(Write::Delete))
                .collect();
            self.write_batches(ops, "statuses").await?;
            self.emit(folded.events);
            if n_slices + n_tunnels + n_statuses > 0 {
                tracing::info!(
                    revision,
                    slice_ops = n_slices,
                    tunnel_ops = n_tunnels,
                    status_ops = n_statuses,
                    plan_ms = planned.as_millis() as u64,
                    total_ms = started.elapsed().as_millis() as u64,
                    "reconciled"
                );
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    fn emit(&self, events: Vec<Event>) {
        let total = events.len();
        for ev in events.into_iter().take(MAX_EVENTS_PER_PASS) {
            if self.events.try_send(ev).is_err() {
                break;
            }
        }
        if total > MAX_EVENTS_PER_PASS {
            tracing::info!(
                suppressed = total - MAX_EVENTS_PER_PASS,
                "events not recorded this pass"
            );
        }
    }

    /// The slice entries whose bytes changed since last written, and those no longer planned.
    fn slice_changes(&self, plan: &Plan) -> Result<Vec<Write>, LeaderError> {
        let mut ops = Vec::new();
        let mut planned: HashSet<String> = HashSet::with_capacity(self.written.len());
        for (node, entries) in &plan.slices {
            for (entry_key, env) in entries {
                let key = keys::slice_entry(node, entry_key);
                let bytes = serde_json::to_vec(env).map_err(|source| LeaderError::Encode {
                    key: key.clone(),
                    source,
                })?;
                if self.written.get(&key) != Some(&bytes) {
                    ops.push(Write::Put(key.clone(), bytes));
                }
                planned.insert(key);
            }
        }
        for key in self.written.keys() {
            if !planned.contains(key) {
                ops.push(Write::Delete(key.clone()));
            }
        }
        Ok(ops)
    }

    /// Writes `ops` in leader-fenced transactions, a few in flight; returns the ops written.
    /// Any refused transaction means the term is over.
    async fn write_batches(
        &self,
        ops: Vec<Write>,
        what: &'static str,
    ) -> Result<Vec<Write>, LeaderError> {
        if ops.is_empty() {
            return Ok(vec![]);
        }
        let mut batches: Vec<Vec<Write>> = vec![];
        let mut cur: Vec<Write> = vec![];
        let mut bytes = 0;
        for op in ops {
            let size = op.size();
            if !cur.is_empty() && (cur.len() >= self.config.txn_ops || bytes + size > MAX_TXN_BYTES)
            {
                batches.push(std::mem::take(&mut cur));
                bytes = 0;
            }
            bytes += size;
            cur.push(op);
        }
        if !cur.is_empty() {
            batches.push(cur);
        }
        let client = self.client().clone();
        let compare = self.term.compare();
        let results: Vec<Result<Vec<Write>, LeaderError>> =
            futures::stream::iter(batches.into_iter().map(|batch| {
                let mut kv = client.kv_client();
                let compare = compare.clone();
                async move {
                    let txn = Txn::new()
                        .when(vec![compare])
                        .and_then(batch.iter().map(Write::txn_op).collect::<Vec<_>>());
                    let resp = kv
                        .txn(txn)
                        .await
                        .map_err(|source| LeaderError::Write { what, source })?;
                    if resp.succeeded() {
                        Ok(batch)
                    } else {
                        Err(LeaderError::Deposed)
                    }
                }
            }))
            .buffer_unordered(self.config.write_concurrency.max(1))
            .collect()
            .await;
        let mut done = vec![];
        let mut first_err = None;
        for r in results {
            match r {
                Ok(b) => done.extend(b),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            // Report what did get written, then step down.
            Some(e) if done.is_empty() => Err(e),
            Some(e) => {
                tracing::warn!(written = done.len(), error = %e, "some {what} were written before the term ended");
                Err(e)
            }
            None => Ok(done),
        }
    }

    /// Stores the derived mesh tunnels as Tunnel objects, through the fenced commit.
    async fn write_derived_tunnels(
        &self,
        plan_revision: i64,
        planned: &BTreeMap<String, Tunnel>,
    ) -> Result<usize, LeaderError> {
        let term = self.term.clone();
        let (summary, _, _) = self
            .committer
            .run(
                || vec![term.compare()],
                |snap| -> Result<(Option<ChangeSet>, TunnelDiff), LeaderError> {
                    let fresh;
                    let wanted = if snap.revision == plan_revision {
                        planned
                    } else {
                        let desired =
                            Desired::from_resources(snap.objects.values().map(|o| &o.resource));
                        let assignment = Assignment::from_state(&snap.blocks, &snap.addrs);
                        fresh = planner::derived_tunnels(&desired, &assignment);
                        &fresh
                    };
                    let (cs, diff) = derived_tunnel_changes(snap, wanted, Utc::now());
                    Ok((Some(cs), diff))
                },
            )
            .await
            .map_err(|e| self.commit_error("derived tunnels", e))?;
        for (network, (added, removed)) in &summary.per_network {
            let _ = self.events.try_send(crate::events::new_event(
                ObjectRef::new(Kind::Network, network),
                EvType::Normal,
                "TunnelsDerived",
                &format!("mesh tunnels: {added} added, {removed} removed"),
                EVENT_SOURCE,
            ));
        }
        Ok(summary.ops)
    }
}

/// Records events one by one in the background, and prunes the history when the term starts
/// and every `prune_every`. Ends with the term.
async fn record_events(
    client: Client,
    mut rx: mpsc::Receiver<Event>,
    prune_every: Duration,
    lost: CancellationToken,
) {
    let mut prune = tokio::time::interval(prune_every.max(Duration::from_secs(1)));
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = lost.cancelled() => return,
            _ = prune.tick() => match crate::events::prune(&client, crate::events::MAX_TOTAL).await {
                Ok(n) if n > 0 => tracing::info!(removed = n, "pruned events"),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "failed to prune events"),
            },
            ev = rx.recv() => {
                let Some(ev) = ev else { return };
                if let Err(e) = crate::events::record(&client, ev).await {
                    tracing::debug!(error = %e, "failed to record an event");
                }
            }
        }
    }
}

/// Reads every slice key and value written so far.
async fn load_slices(client: &Client) -> Result<HashMap<String, Vec<u8>>, LeaderError> {
    let mut kv = client
        .kv_client()
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let prefix = keys::slices_prefix();
    let end = keys::prefix_end(&prefix);
    let mut out = HashMap::new();
    let mut start = prefix.as_bytes().to_vec();
    let mut revision = 0;
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(2000);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let resp = kv
            .get(start.clone(), Some(opts))
            .await
            .map_err(LeaderError::ListSlices)?;
        if revision == 0 {
            revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        }
        for item in resp.kvs() {
            if let Ok(k) = item.key_str() {
                out.insert(k.to_string(), item.value().to_vec());
            }
        }
        match (resp.more(), resp.kvs().last()) {
            (true, Some(last)) => {
                start = last.key().to_vec();
                start.push(0);
            }
            _ => break,
        }
    }
    Ok(out)
}

/// One slice or status write.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Write {
    Put(String, Vec<u8>),
    Delete(String),
}

impl Write {
    fn size(&self) -> usize {
        match self {
            Write::Put(k, v) => k.len() + v.len() + 16,
            Write::Delete(k) => k.len() + 16,
        }
    }
    fn txn_op(&self) -> TxnOp {
        match self {
            Write::Put(k, v) => TxnOp::put(k.as_str(), v.clone(), None),
            Write::Delete(k) => TxnOp::delete(k.as_str(), None),
        }
    }
}

#[derive(Debug, Default)]
struct TunnelDiff {
    ops: usize,
    /// network → (added, removed)
    per_network: BTreeMap<String, (usize, usize)>,
}

/// The change set that makes the stored derived tunnels equal `wanted`.
fn derived_tunnel_changes(
    snap: &Snapshot,
    wanted: &BTreeMap<String, Tunnel>,
    now: DateTime<Utc>,
) -> (ChangeSet, TunnelDiff) {
    let mut cs = ChangeSet::default();
    let mut diff = TunnelDiff::default();
    for (name, t) in wanted {
        let r = ObjectRef::new(Kind::Tunnel, name);
        let existing = snap.get(&r);
        let mut obj = t.clone();
        match existing.map(|o| (&o.resource, o)) {
            Some((Resource::Tunnel(old), stored)) if stored.is_derived() => {
                if old.spec == t.spec && old.metadata.labels == t.metadata.labels {
                    continue;
                }
                obj.metadata.uid = old.metadata.uid.clone();
                obj.metadata.creation_timestamp = old.metadata.creation_timestamp;
                let generation = old.metadata.generation.unwrap_or(1);
                obj.metadata.generation = Some(if old.spec == t.spec {
                    generation
                } else {
                    generation + 1
                });
                cs.compare(keys::object(Kind::Tunnel, name), stored.mod_revision);
            }
            Some(_) => {
                // A user object of the same name: theirs stays; the pair goes unplanned.
                tracing::warn!(tunnel = %name, "a user object holds a derived tunnel's name");
                continue;
            }
            None => {
                obj.metadata.uid = Some(uuid::Uuid::new_v4().to_string());
                obj.metadata.creation_timestamp = Some(now);
                obj.metadata.generation = Some(1);
                cs.compare(keys::object(Kind::Tunnel, name), 0);
                diff.per_network
                    .entry(t.spec.network.clone())
                    .or_default()
                    .0 += 1;
            }
        }
        cs.put(
            keys::object(Kind::Tunnel, name),
            crate::store::encode_object(&Resource::Tunnel(obj)),
        );
    }
    for o in snap.of_kind(Kind::Tunnel).filter(|o| o.is_derived()) {
        let name = o.resource.name();
        if wanted.contains_key(name) {
            continue;
        }
        cs.delete(keys::object(Kind::Tunnel, name));
        cs.delete(keys::status(Kind::Tunnel, name));
        cs.compare(keys::object(Kind::Tunnel, name), o.mod_revision);
        if let Resource::Tunnel(t) = &o.resource {
            diff.per_network
                .entry(t.spec.network.clone())
                .or_default()
                .1 += 1;
        }
    }
    diff.ops = cs.puts.len() + cs.deletes.len();
    (cs, diff)
}

// ------------------------------------------------------------------------------ status

/// Status writes and events of one pass.
#[derive(Debug, Default)]
pub struct Folded {
    /// `(status key, JSON)` for every status that changed.
    pub puts: Vec<(String, String)>,
    /// Status keys of objects that no longer exist.
    pub deletes: Vec<String>,
    pub events: Vec<Event>,
}

fn ready(
    conditions: &mut Vec<Condition>,
    status: ConditionStatus,
    reason: &str,
    message: impl Into<String>,
    now: DateTime<Utc>,
) {
    set_condition(
        conditions,
        Condition {
            type_: CONDITION_READY.to_string(),
            status,
            reason: reason.to_string(),
            message: message.into(),
            last_transition_time: now,
        },
    );
}

/// None when the Ready condition is True, else why not (`Reason: message`), which a link to
/// the container passes on to its users.
fn not_ready_why(conditions: &[Condition]) -> Option<String> {
    match conditions.iter().find(|c| c.type_ == CONDITION_READY) {
        Some(c) if c.status == ConditionStatus::True => None,
        Some(c) => Some(format!("{}: {}", c.reason, c.message)),
        None => Some("no Ready condition yet".to_string()),
    }
}

fn event(object: ObjectRef, type_: EvType, reason: &str, message: String) -> Event {
    crate::events::new_event(object, type_, reason, &message, EVENT_SOURCE)
}

/// Computes every object's status from the plan, agent reports, heartbeats and IPAM, and
/// returns those that differ from what is stored.
pub fn fold_statuses(
    snap: &Snapshot,
    desired: &Desired<'_>,
    plan: &Plan,
    assignment: &Assignment,
    now: DateTime<Utc>,
) -> Folded {
    let mut out = Folded::default();
    let mut container_ready: HashMap<&str, Option<String>> = HashMap::new();
    // The stored status is compared typed (it is merged into the object when it decodes), so
    // an unchanged status costs no serialization; one that does not decode is rewritten.
    fn push<S: PartialEq + serde::Serialize>(
        out: &mut Folded,
        r: &ObjectRef,
        new: &S,
        old: Option<&S>,
    ) {
        if old != Some(new) {
            let value = serde_json::to_string(new).unwrap_or_default();
            out.puts.push((keys::status(r.kind, &r.name), value));
        }
    }
    let node_ready = |node: &str| snap.heartbeats.contains_key(node);

    for (name, n) in &desired.nodes {
        let r = ObjectRef::new(Kind::Node, *name);
        let st = fold_node(n, snap, assignment, now);
        let old = n.status.clone().unwrap_or_default();
        for (net, block) in &st.blocks {
            if old.blocks.get(net) != Some(block) {
                out.events.push(event(
                    r.clone(),
                    EvType::Normal,
                    "BlockLeased",
                    format!("leased block {block} of network {net}"),
                ));
            }
        }
        for (net, block) in &old.blocks {
            if !st.blocks.contains_key(net) {
                out.events.push(event(
                    r.clone(),
                    EvType::Normal,
                    "BlockReleased",
                    format!("released block {block} of network {net}"),
                ));
            }
        }
        push(&mut out, &r, &st, n.status.as_ref());
    }
    for (name, n) in &desired.networks {
        let r = ObjectRef::new(Kind::Network, *name);
        let st = fold_network(name, n, plan, assignment, now);
        push(&mut out, &r, &st, n.status.as_ref());
    }
    for (name, c) in &desired.containers {
        let r = ObjectRef::new(Kind::Container, *name);
        let st = fold_container(name, c, snap, plan, assignment, now);
        container_ready.insert(name, not_ready_why(&st.conditions));
        let old = c.status.clone().unwrap_or_default();
        for (net, ip) in &st.addresses {
            if old.addresses.get(net) != Some(ip) {
                out.events.push(event(
                    r.clone(),
                    EvType::Normal,
                    "AddressAllocated",
                    format!("{ip} in network {net}"),
                ));
            }
        }
        push(&mut out, &r, &st, c.status.as_ref());
    }
    for (name, l) in &desired.links {
        let r = ObjectRef::new(Kind::Link, *name);
        let st = fold_link(name, l, snap, plan, &container_ready, now);
        push(&mut out, &r, &st, l.status.as_ref());
    }
    // Tunnels: the user's and the stored derived ones (a derived tunnel gets a status once
    // its object exists).
    for o in snap.of_kind(Kind::Tunnel) {
        let Resource::Tunnel(t) = &o.resource else {
            continue;
        };
        let r = o.object_ref();
        let st = fold_tunnel(t, snap, plan, &node_ready, now);
        push(&mut out, &r, &st, t.status.as_ref());
    }
    for r in snap.statuses.keys() {
        if snap.objects.get(r).is_none() {
            out.deletes.push(keys::status(r.kind, &r.name));
        }
    }
    out
}

fn fold_node(n: &Node, snap: &Snapshot, assignment: &Assignment, now: DateTime<Utc>) -> NodeStatus {
    let name = n.metadata.name.as_str();
    let mut st = n.status.clone().unwrap_or_default();
    st.observed_generation = n.metadata.generation;
    st.blocks = assignment
        .blocks
        .iter()
        .filter_map(|(net, m)| m.get(name).map(|b| (net.clone(), b.to_string())))
        .collect();
    match snap.heartbeats.get(name) {
        Some(hb) => {
            st.agent_version = Some(hb.agent_version.clone());
            ready(
                &mut st.conditions,
                ConditionStatus::True,
                "AgentReady",
                format!("agent {} is heartbeating", hb.agent_version),
                now,
            );
        }
        None => ready(
            &mut st.conditions,
            ConditionStatus::Unknown,
            "NodeLost",
            "no heartbeat from the node's agent (its lease lapsed, or it never started)",
            now,
        ),
    }
    st
}

fn fold_network(
    name: &str,
    n: &Network,
    plan: &Plan,
    assignment: &Assignment,
    now: DateTime<Utc>,
) -> NetworkStatus {
    let mut st = n.status.clone().unwrap_or_default();
    st.observed_generation = n.metadata.generation;
    let np = plan.networks.get(name);
    st.gre_key = np.map(|p| p.gre_key);
    st.mtu = np.map(|p| p.mtu);
    st.blocks = assignment
        .blocks
        .get(name)
        .map(|m| {
            m.iter()
                .map(|(node, b)| (node.clone(), b.to_string()))
                .collect()
        })
        .unwrap_or_default();
    st.allocated = u32::try_from(assignment.allocated_in(name)).unwrap_or(u32::MAX);
    ready(
        &mut st.conditions,
        ConditionStatus::True,
        "Planned",
        format!("{} nodes, {} addresses", st.blocks.len(), st.allocated),
        now,
    );
    st
}

fn fold_container(
    name: &str,
    c: &Container,
    snap: &Snapshot,
    plan: &Plan,
    assignment: &Assignment,
    now: DateTime<Utc>,
) -> ContainerStatus {
    let node = c.spec.node.as_str();
    let mut st = c.status.clone().unwrap_or_default();
    st.node = Some(node.to_string());
    st.addresses = assignment
        .addresses
        .get(name)
        .map(|m| {
            m.iter()
                .map(|(net, ip)| (net.clone(), ip.to_string()))
                .collect()
        })
        .unwrap_or_default();
    // A report about an earlier container of the same name (deleted, then created again
    // before its node cleaned up) says nothing about this one.
    let report = snap
        .reports
        .get(&(node.to_string(), ObjectRef::new(Kind::Container, name)))
        .filter(|r| match (r.uid.as_deref(), c.metadata.uid.as_deref()) {
            (Some(reported), Some(current)) => reported == current,
            _ => true,
        });
    st.container_id = report.and_then(|r| r.container_id.clone());
    st.restart_count = report.map(|r| r.restart_count).unwrap_or(0);
    st.observed_generation = report.map(|r| r.observed_generation);
    let generation = c.metadata.generation.unwrap_or(0);
    let pending = plan.containers.get(name).and_then(|p| p.pending.as_ref());
    let conds = &mut st.conditions;
    match (pending, report) {
        (Some(p), _) => ready(
            conds,
            ConditionStatus::False,
            &p.reason,
            p.message.clone(),
            now,
        ),
        (None, None) => ready(
            conds,
            ConditionStatus::False,
            "Pending",
            format!("waiting for the agent on node {node}"),
            now,
        ),
        (None, Some(_)) if !snap.heartbeats.contains_key(node) => ready(
            conds,
            ConditionStatus::Unknown,
            "NodeLost",
            format!("node {node}'s agent stopped heartbeating"),
            now,
        ),
        (None, Some(r)) if r.observed_generation < generation => ready(
            conds,
            ConditionStatus::False,
            "Progressing",
            format!("the agent on node {node} has not acted on generation {generation} yet"),
            now,
        ),
        (None, Some(r)) => {
            let status = if r.ready {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            };
            ready(conds, status, &r.reason, r.message.clone(), now)
        }
    }
    st
}

fn fold_link(
    name: &str,
    l: &Link,
    snap: &Snapshot,
    plan: &Plan,
    container_ready: &HashMap<&str, Option<String>>,
    now: DateTime<Utc>,
) -> LinkStatus {
    let mut st = l.status.clone().unwrap_or_default();
    let lp = plan.links.get(name);
    st.endpoint = lp.and_then(|p| p.endpoint).map(|e| e.to_string());
    let consumer = l.spec.from.as_str();
    let consumer_plan = plan.containers.get(consumer);
    let report = lp.and_then(|p| p.consumer_node.as_ref()).and_then(|node| {
        snap.reports
            .get(&(node.clone(), ObjectRef::new(Kind::Link, name)))
    });
    st.observed_generation = report.map(|r| r.observed_generation);
    let conds = &mut st.conditions;
    if let Some(problem) = lp.and_then(|p| p.problem.as_ref()) {
        ready(
            conds,
            ConditionStatus::False,
            &problem.reason,
            problem.message.clone(),
            now,
        );
        return st;
    }
    if let Some(p) = consumer_plan.and_then(|p| p.pending.as_ref()) {
        ready(
            conds,
            ConditionStatus::False,
            "ConsumerPending",
            format!("container {consumer}: {}", p.message),
            now,
        );
        return st;
    }
    if let Some(target) = lp.and_then(|p| p.target_container.as_deref())
        && let Some(why) = container_ready
            .get(target)
            .cloned()
            .unwrap_or_else(|| Some("not planned".to_string()))
    {
        ready(
            conds,
            ConditionStatus::False,
            "TargetNotReady",
            format!("container {target} is not ready ({why})"),
            now,
        );
        return st;
    }
    let node = lp.and_then(|p| p.consumer_node.clone()).unwrap_or_default();
    match report {
        None => ready(
            conds,
            ConditionStatus::False,
            "Pending",
            format!("waiting for the agent on node {node} to program the link"),
            now,
        ),
        Some(r) if !r.ready => ready(
            conds,
            ConditionStatus::False,
            &r.reason,
            r.message.clone(),
            now,
        ),
        Some(r) if r.endpoint.is_some() && r.endpoint != st.endpoint => ready(
            conds,
            ConditionStatus::False,
            "Rewiring",
            format!(
                "programmed {}, moving to {}",
                r.endpoint.as_deref().unwrap_or_default(),
                st.endpoint.as_deref().unwrap_or_default()
            ),
            now,
        ),
        Some(_) => ready(
            conds,
            ConditionStatus::True,
            "Programmed",
            format!(
                "forwarding to {}",
                st.endpoint.as_deref().unwrap_or_default()
            ),
            now,
        ),
    }
    st
}

fn fold_tunnel(
    t: &Tunnel,
    snap: &Snapshot,
    plan: &Plan,
    node_ready: &dyn Fn(&str) -> bool,
    now: DateTime<Utc>,
) -> TunnelStatus {
    let name = t.metadata.name.as_str();
    let mut st = t.status.clone().unwrap_or_default();
    st.observed_generation = t.metadata.generation;
    let conds = &mut st.conditions;
    let Some(tp) = plan.tunnels.get(name) else {
        ready(
            conds,
            ConditionStatus::False,
            "NotPlanned",
            "the tunnel is being removed",
            now,
        );
        return st;
    };
    if let Some(p) = &tp.problem {
        ready(
            conds,
            ConditionStatus::False,
            &p.reason,
            p.message.clone(),
            now,
        );
        return st;
    }
    for end in &tp.ends {
        if !node_ready(end) {
            ready(
                conds,
                ConditionStatus::False,
                "NodeNotReady",
                format!("node {end} is not ready"),
                now,
            );
            return st;
        }
        match snap
            .reports
            .get(&(end.clone(), ObjectRef::new(Kind::Tunnel, name)))
        {
            None => {
                ready(
                    conds,
                    ConditionStatus::False,
                    "Pending",
                    format!("waiting for node {end} to report its GRE port"),
                    now,
                );
                return st;
            }
            Some(r) if !r.ready => {
                ready(
                    conds,
                    ConditionStatus::False,
                    &r.reason,
                    format!("node {end}: {}", r.message),
                    now,
                );
                return st;
            }
            Some(_) => {}
        }
    }
    ready(
        conds,
        ConditionStatus::True,
        "Established",
        format!("GRE ports up on {}", tp.ends.join(" and ")),
        now,
    );
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::StoredObject;
    use topo_schema::api::{Heartbeat, ObservedReport};
    use topo_schema::{
        ContainerSpec, Datapath, LinkSpec, LinkTarget, NetworkAttachment, NetworkSpec, NodeSpec,
        Protocol, Topology, TunnelSpec,
    };

    fn node(name: &str, addr: &str) -> Resource {
        Resource::Node(Node::new(
            Kind::Node,
            name,
            NodeSpec {
                address: addr.parse().unwrap(),
                datapath: Datapath::System,
                reserved_ports: None,
            },
        ))
    }

    fn container(name: &str, node: &str) -> Resource {
        let mut c = Container::new(
            Kind::Container,
            name,
            ContainerSpec {
                node: node.into(),
                image: "img".into(),
                command: vec![],
                env: Default::default(),
                image_pull_policy: Default::default(),
                networks: vec![NetworkAttachment {
                    network: "ov".into(),
                    ip: None,
                    interface: None,
                }],
                ports: vec![],
            },
        );
        c.metadata.generation = Some(2);
        Resource::Container(c)
    }

    fn objects() -> Vec<Resource> {
        vec![
            node("n1", "192.168.0.1"),
            node("n2", "192.168.0.2"),
            Resource::Network(Network::new(
                Kind::Network,
                "ov",
                NetworkSpec {
                    cidr: "10.2.0.0/16".parse().unwrap(),
                    block_size: 24,
                    mtu: Some(1400),
                    topology: Topology::Explicit,
                    gre_key: None,
                },
            )),
            container("app", "n1"),
            container("db", "n2"),
            Resource::Link(Link::new(
                Kind::Link,
                "app-db",
                LinkSpec {
                    from: "app".into(),
                    to: LinkTarget {
                        container: Some("db".into()),
                        address: None,
                        port: 6379,
                    },
                    listen: None,
                    protocol: Protocol::Tcp,
                    alias: None,
                },
            )),
            Resource::Tunnel(Tunnel::new(
                Kind::Tunnel,
                "t",
                TunnelSpec {
                    network: "ov".into(),
                    nodes: vec!["n1".into(), "n2".into()],
                    node: None,
                    remote: None,
                },
            )),
        ]
    }

    fn snapshot(objs: &[Resource]) -> Snapshot {
        let mut s = Snapshot::default();
        let changed: Vec<_> = objs.iter().map(Resource::object_ref).collect();
        let ch = ipam::plan(objs.iter(), &changed, &s.blocks, &s.addrs).unwrap();
        for (net, m) in &ch.assignment.blocks {
            for (node, b) in m {
                s.blocks
                    .entry(net.clone())
                    .or_default()
                    .insert(*b, node.clone());
            }
        }
        for (c, m) in &ch.assignment.addresses {
            for (net, ip) in m {
                s.addrs
                    .entry(net.clone())
                    .or_default()
                    .insert(*ip, c.clone());
            }
        }
        for r in objs {
            let o = StoredObject {
                resource: r.clone(),
                mod_revision: 1,
                create_revision: 1,
            };
            s.objects.insert(r.object_ref(), Arc::new(o));
        }
        s
    }

    /// Folds, then stores the written statuses in the snapshot as the cache would.
    fn fold(s: &mut Snapshot, now: DateTime<Utc>) -> Folded {
        let f = {
            let desired = Desired::from_resources(s.objects.values().map(|o| &o.resource));
            let assignment = Assignment::from_state(&s.blocks, &s.addrs);
            let plan = planner::plan(&desired, &assignment);
            fold_statuses(s, &desired, &plan, &assignment, now)
        };
        for (key, value) in &f.puts {
            let (kind, name) = keys::parse_status_key(key).unwrap();
            let r = ObjectRef::new(kind, name);
            let v: serde_json::Value = serde_json::from_str(value).unwrap();
            if let Some(o) = s.objects.get(&r) {
                let mut o = (**o).clone();
                o.resource.set_status_value(v.clone());
                s.objects.insert(r.clone(), Arc::new(o));
            }
            s.statuses.insert(r, Arc::new(v));
        }
        f
    }

    fn ready_of(s: &Snapshot, kind: Kind, name: &str) -> Condition {
        let o = s.get(&ObjectRef::new(kind, name)).unwrap();
        o.resource
            .conditions()
            .iter()
            .find(|c| c.type_ == CONDITION_READY)
            .unwrap()
            .clone()
    }

    fn report(
        node: &str,
        kind: Kind,
        name: &str,
        generation: i64,
        ready: bool,
        endpoint: Option<&str>,
    ) -> (String, ObjectRef, ObservedReport) {
        let object = ObjectRef::new(kind, name);
        let rep = ObservedReport {
            uid: None,
            object: object.clone(),
            observed_generation: generation,
            ready,
            reason: if ready {
                "Running".into()
            } else {
                "ImagePullFailed".into()
            },
            message: "m".into(),
            container_id: Some("cid".into()),
            restart_count: 1,
            endpoint: endpoint.map(str::to_string),
            time: Utc::now(),
        };
        (node.to_string(), object, rep)
    }

    fn put_report(s: &mut Snapshot, r: (String, ObjectRef, ObservedReport)) {
        s.reports.insert((r.0, r.1), Arc::new(r.2));
    }

    fn heartbeat(s: &mut Snapshot, node: &str) {
        s.heartbeats.insert(
            node.to_string(),
            Arc::new(Heartbeat {
                node: node.into(),
                agent_version: "1.2".into(),
                started: Utc::now(),
            }),
        );
    }

    #[test]
    fn a_report_about_an_earlier_object_of_the_same_name_is_ignored() {
        let t0 = Utc::now();
        let mut s = snapshot(&objects());
        heartbeat(&mut s, "n1");
        let app = ObjectRef::new(Kind::Container, "app");
        let mut o = (**s.objects.get(&app).unwrap()).clone();
        o.resource.metadata_mut().uid = Some("new-uid".into());
        s.objects.insert(app.clone(), Arc::new(o));
        let mut stale = report("n1", Kind::Container, "app", 2, true, None);
        stale.2.uid = Some("old-uid".into());
        put_report(&mut s, stale);
        fold(&mut s, t0);
        assert_eq!(ready_of(&s, Kind::Container, "app").reason, "Pending");
        let mut fresh = report("n1", Kind::Container, "app", 2, true, None);
        fresh.2.uid = Some("new-uid".into());
        put_report(&mut s, fresh);
        fold(&mut s, t0 + chrono::Duration::seconds(1));
        assert_eq!(ready_of(&s, Kind::Container, "app").reason, "Running");
    }

    #[test]
    fn statuses_follow_reports_and_are_written_only_when_changed() {
        let t0 = Utc::now();
        let mut s = snapshot(&objects());
        let f = fold(&mut s, t0);
        assert_eq!(f.puts.len(), 7, "every object gets a first status");
        assert_eq!(ready_of(&s, Kind::Node, "n1").reason, "NodeLost");
        assert_eq!(ready_of(&s, Kind::Container, "app").reason, "Pending");
        assert_eq!(ready_of(&s, Kind::Link, "app-db").reason, "TargetNotReady");
        assert_eq!(ready_of(&s, Kind::Tunnel, "t").reason, "NodeNotReady");
        let net = s
            .get(&ObjectRef::new(Kind::Network, "ov"))
            .unwrap()
            .resource
            .status_value();
        assert_eq!(net["greKey"], 1);
        assert_eq!(net["mtu"], 1400);
        assert_eq!(net["allocated"], 2);
        assert_eq!(net["blocks"]["n2"], "10.2.1.0/24");
        // Nothing changed: nothing is written, and no event repeats.
        let f = fold(&mut s, t0 + chrono::Duration::seconds(5));
        assert!(f.puts.is_empty(), "{:?}", f.puts);
        assert!(f.events.is_empty());

        // Agents come up and report.
        heartbeat(&mut s, "n1");
        heartbeat(&mut s, "n2");
        put_report(&mut s, report("n1", Kind::Container, "app", 2, true, None));
        put_report(&mut s, report("n2", Kind::Container, "db", 1, true, None));
        let t1 = t0 + chrono::Duration::seconds(10);
        fold(&mut s, t1);
        let app = ready_of(&s, Kind::Container, "app");
        assert_eq!(
            (app.status, app.reason.as_str(), app.last_transition_time),
            (ConditionStatus::True, "Running", t1)
        );
        let app = s
            .get(&ObjectRef::new(Kind::Container, "app"))
            .unwrap()
            .resource
            .status_value();
        assert_eq!(app["containerID"], "cid");
        assert_eq!(app["observedGeneration"], 2);
        assert_eq!(app["addresses"]["ov"], "10.2.0.2");
        // db's agent acted on an older generation.
        assert_eq!(ready_of(&s, Kind::Container, "db").reason, "Progressing");
        assert_eq!(ready_of(&s, Kind::Node, "n1").status, ConditionStatus::True);

        // db catches up; the link is programmed, but towards an old endpoint first.
        put_report(&mut s, report("n2", Kind::Container, "db", 2, true, None));
        put_report(
            &mut s,
            report("n1", Kind::Link, "app-db", 1, true, Some("10.2.9.9:6379")),
        );
        fold(&mut s, t1);
        let l = ready_of(&s, Kind::Link, "app-db");
        assert_eq!(l.reason, "Rewiring");
        let lst = s
            .get(&ObjectRef::new(Kind::Link, "app-db"))
            .unwrap()
            .resource
            .status_value();
        assert_eq!(lst["endpoint"], "10.2.1.2:6379");
        put_report(
            &mut s,
            report("n1", Kind::Link, "app-db", 1, true, Some("10.2.1.2:6379")),
        );
        fold(&mut s, t1);
        assert_eq!(
            ready_of(&s, Kind::Link, "app-db").status,
            ConditionStatus::True
        );

        // The tunnel: Ready once both ends report their port.
        put_report(&mut s, report("n1", Kind::Tunnel, "t", 1, true, None));
        fold(&mut s, t1);
        assert_eq!(ready_of(&s, Kind::Tunnel, "t").reason, "Pending");
        put_report(&mut s, report("n2", Kind::Tunnel, "t", 1, true, None));
        fold(&mut s, t1);
        assert_eq!(
            ready_of(&s, Kind::Tunnel, "t").status,
            ConditionStatus::True
        );

        // n2's heartbeat lapses: its container is Unknown, the tunnel and the link go down;
        // app's condition keeps its transition time.
        s.heartbeats.remove("n2");
        let t2 = t1 + chrono::Duration::seconds(30);
        fold(&mut s, t2);
        let db = ready_of(&s, Kind::Container, "db");
        assert_eq!(
            (db.status, db.reason.as_str(), db.last_transition_time),
            (ConditionStatus::Unknown, "NodeLost", t2)
        );
        assert_eq!(ready_of(&s, Kind::Tunnel, "t").reason, "NodeNotReady");
        assert_eq!(ready_of(&s, Kind::Link, "app-db").reason, "TargetNotReady");
        assert_eq!(
            ready_of(&s, Kind::Container, "app").last_transition_time,
            t1
        );
    }

    /// A link to a container that does not exist yet is accepted and not Ready
    /// (TargetNotFound); once the target exists but is not Ready, the link says so with the
    /// target's reason; when the target runs and the consumer's agent programmed the rule,
    /// the link is Ready, without the Link object being touched.
    #[test]
    fn a_link_waits_for_its_target_and_becomes_ready_by_itself() {
        let t0 = Utc::now();
        let without_db: Vec<Resource> = objects()
            .into_iter()
            .filter(|r| !(r.kind() == Kind::Container && r.name() == "db"))
            .collect();
        let mut s = snapshot(&without_db);
        heartbeat(&mut s, "n1");
        heartbeat(&mut s, "n2");
        put_report(&mut s, report("n1", Kind::Container, "app", 2, true, None));
        fold(&mut s, t0);
        let l = ready_of(&s, Kind::Link, "app-db");
        assert_eq!(
            (l.status, l.reason.as_str()),
            (ConditionStatus::False, "TargetNotFound")
        );
        assert!(l.message.contains("db"), "{}", l.message);
        let link_ref = ObjectRef::new(Kind::Link, "app-db");
        let link_before = s.get(&link_ref).unwrap().resource.clone();

        // db is created (the Link is not applied again).
        let mut s2 = snapshot(&objects());
        s2.heartbeats = s.heartbeats.clone();
        s2.reports = s.reports.clone();
        s2.objects.insert(
            link_ref.clone(),
            Arc::new(StoredObject {
                resource: link_before.clone(),
                mod_revision: 1,
                create_revision: 1,
            }),
        );
        let mut s = s2;
        put_report(&mut s, report("n2", Kind::Container, "db", 2, false, None));
        let t1 = t0 + chrono::Duration::seconds(1);
        fold(&mut s, t1);
        let l = ready_of(&s, Kind::Link, "app-db");
        assert_eq!(
            (l.status, l.reason.as_str()),
            (ConditionStatus::False, "TargetNotReady")
        );
        assert!(
            l.message
                .contains("container db is not ready (ImagePullFailed: m)"),
            "{}",
            l.message
        );
        let endpoint = s
            .get(&link_ref)
            .unwrap()
            .resource
            .status_value()
            .get("endpoint")
            .and_then(|e| e.as_str())
            .map(str::to_string)
            .expect("the endpoint is known as soon as the target has an address");

        // db runs and app's agent programmed the rule towards it.
        put_report(&mut s, report("n2", Kind::Container, "db", 2, true, None));
        put_report(
            &mut s,
            report("n1", Kind::Link, "app-db", 1, true, Some(&endpoint)),
        );
        let t2 = t1 + chrono::Duration::seconds(1);
        fold(&mut s, t2);
        let l = ready_of(&s, Kind::Link, "app-db");
        assert_eq!(
            (l.status, l.reason.as_str(), l.last_transition_time),
            (ConditionStatus::True, "Programmed", t2)
        );
        assert_eq!(
            s.get(&link_ref).unwrap().resource.spec_value(),
            link_before.spec_value()
        );
    }

    #[test]
    fn orphan_statuses_are_deleted_and_block_events_emitted() {
        let mut s = snapshot(&objects());
        let f = fold(&mut s, Utc::now());
        let leased: Vec<_> = f
            .events
            .iter()
            .filter(|e| e.reason == "BlockLeased")
            .collect();
        assert_eq!(leased.len(), 2);
        assert!(leased[0].message.contains("10.2.0.0/24"));
        s.objects.remove(&ObjectRef::new(Kind::Container, "app"));
        let f = fold(&mut s, Utc::now());
        assert_eq!(f.deletes, vec![keys::status(Kind::Container, "app")]);
    }

    #[test]
    fn derived_tunnel_changes_create_update_and_delete() {
        let now = Utc::now();
        let mut objs = objects();
        if let Resource::Network(n) = &mut objs[2] {
            n.spec.topology = Topology::Mesh;
        }
        objs.retain(|r| r.kind() != Kind::Tunnel);
        let mut s = snapshot(&objs);
        let desired = Desired::from_resources(objs.iter());
        let assignment = Assignment::from_state(&s.blocks, &s.addrs);
        let wanted = planner::derived_tunnels(&desired, &assignment);
        assert_eq!(wanted.len(), 1);
        let (cs, diff) = derived_tunnel_changes(&s, &wanted, now);
        assert_eq!(cs.puts.len(), 1);
        assert_eq!(
            cs.compares,
            vec![(keys::object(Kind::Tunnel, "ov-n1-n2"), 0)]
        );
        assert_eq!(diff.per_network["ov"], (1, 0));
        let stored: Resource = serde_json::from_str(&cs.puts[0].1).unwrap();
        assert!(stored.metadata().uid.is_some());
        assert_eq!(stored.metadata().generation, Some(1));
        // Stored: nothing more to do.
        let o = StoredObject {
            resource: stored,
            mod_revision: 9,
            create_revision: 9,
        };
        s.objects.insert(o.object_ref(), Arc::new(o));
        let (cs, _) = derived_tunnel_changes(&s, &wanted, now);
        assert!(cs.is_empty());
        // No longer wanted: deleted with its status.
        let (cs, diff) = derived_tunnel_changes(&s, &BTreeMap::new(), now);
        assert_eq!(
            cs.deletes,
            vec![
                keys::object(Kind::Tunnel, "ov-n1-n2"),
                keys::status(Kind::Tunnel, "ov-n1-n2")
            ]
        );
        assert_eq!(
            cs.compares,
            vec![(keys::object(Kind::Tunnel, "ov-n1-n2"), 9)]
        );
        assert_eq!(diff.per_network["ov"], (0, 1));
    }
}
