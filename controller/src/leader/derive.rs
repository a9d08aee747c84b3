//! One term of leadership: the passes that turn snapshots into derived tunnels, slice
//! writes and status writes, all fenced by the term.
//!
//! A pass computes everything from one snapshot first (the planner and the status fold are
//! pure) and writes afterwards, so the snapshot can be dropped before the writes make the
//! cache publish new ones. Slices are written diff-only against the bytes this term
//! remembers writing, so an unchanged entry never reaches etcd and agents see no spurious
//! events.
//!
//! A pass starts from a snapshot that holds the previous pass's own writes (it waits for the
//! cache to reach their revision): under load the cache lags etcd, and a pass on an older
//! snapshot would fold every status it just wrote once more, from before, with a new
//! lastTransitionTime — a rewrite per status per pass (measured with `scale-bench`: 3.75
//! writes per status at 1,000 nodes), which loads etcd further and lags the cache further.
//!
//! The host interface names a term hands out are those its slices carry: the term reads them
//! back from the written slices when it starts and keeps the table of the last slices it
//! wrote (`ifnames.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use etcd_client::{Client, GetOptions, Txn, TxnOp};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use topo_schema::api::{Event, EventType as EvType};
use topo_schema::keys;
use topo_schema::{Kind, ObjectRef, Resource, Tunnel};
use tracing::Instrument;

use crate::cache::{MAX_MESSAGE_BYTES, Snapshot};
use crate::commit::{ChangeSet, CommitError, Committer, EncodeError};
use crate::ifnames::NameTable;
use crate::ipam::{self, Assignment};
use crate::planner::{self, Desired, Plan};

use super::config::{EVENT_SOURCE, LeaderConfig, LeaderError};
use super::election::Term;
use super::status::fold_statuses;

/// Bytes of values per slice or status transaction (etcd refuses requests over 1.5 MiB).
const MAX_TXN_BYTES: usize = 1024 * 1024;
/// Events recorded per pass at most; the rest are only logged.
const MAX_EVENTS_PER_PASS: usize = 40;

/// What one term of leadership remembers.
pub(super) struct Leader {
    committer: Committer,
    config: LeaderConfig,
    term: Term,
    /// Slice key → the bytes last written (or found when taking over).
    written: HashMap<String, Vec<u8>>,
    /// The host interface names `written` gives, per node.
    names: NameTable,
    events: mpsc::Sender<Event>,
    /// The highest etcd revision this term's slice and status writes reached: the next pass
    /// waits until the cache holds it.
    last_write: AtomicI64,
}

impl Leader {
    pub(super) fn new(committer: Committer, config: LeaderConfig, term: Term) -> Self {
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
            names: NameTable::default(),
            events,
            last_write: AtomicI64::new(0),
        }
    }

    fn client(&self) -> &Client {
        self.committer.client()
    }

    /// Derives until shutdown (Ok) or until the term is lost (Err).
    pub(super) async fn lead(&mut self, shutdown: &CancellationToken) -> Result<(), LeaderError> {
        self.written = load_slices(self.client()).await?;
        self.names =
            NameTable::from_written(self.written.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        tracing::info!(
            entries = self.written.len(),
            names = self.names.len(),
            "read the written slices"
        );
        self.rebuild_ipam().await?;
        let cache = self.committer.cache().clone();
        let mut rx = cache.subscribe();
        loop {
            let snap = rx.borrow_and_update().clone();
            let started = Instant::now();
            let pass = self.reconcile(snap).await;
            crate::metrics::reconciled("derive", pass.is_ok(), started.elapsed());
            pass?;
            let own = self.last_write.load(Ordering::Relaxed);
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = self.term.lost.cancelled() => return Err(LeaderError::Deposed),
                _ = cache.wait_for_revision(own) => {}
            }
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
                    let mut cs = ChangeSet {
                        deletes: r.changes.deletes,
                        ..ChangeSet::default()
                    };
                    cs.put_all_json(&r.changes.puts)?;
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
            let (slice_ops, derived, folded, planned, names) = {
                let desired = Desired::from_resources(snap.objects.values().map(|o| &o.resource));
                let assignment = Assignment::from_state(&snap.blocks, &snap.addrs);
                let plan = planner::plan(&desired, &assignment, &self.names);
                let planned = started.elapsed();
                let slice_ops = self.slice_changes(&plan)?;
                let folded = fold_statuses(&snap, &desired, &plan, &assignment, Utc::now())?;
                (slice_ops, plan.derived_tunnels, folded, planned, plan.names)
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
            // Every slice is written as planned (a failed write ended the term above).
            self.names = names;
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
                let bytes = serde_json::to_vec(env).map_err(|source| EncodeError {
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
        let last_write = &self.last_write;
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
                        if let Some(h) = resp.header() {
                            last_write.fetch_max(h.revision(), Ordering::Relaxed);
                        }
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
                    let (cs, diff) = derived_tunnel_changes(snap, wanted, Utc::now())?;
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
) -> Result<(ChangeSet, TunnelDiff), EncodeError> {
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
            crate::store::encode_object(&Resource::Tunnel(obj))?,
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
    Ok((cs, diff))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::StoredObject;
    use crate::leader::fixtures::{objects, snapshot};
    use topo_schema::Topology;

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
        let (cs, diff) = derived_tunnel_changes(&s, &wanted, now).unwrap();
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
        let (cs, _) = derived_tunnel_changes(&s, &wanted, now).unwrap();
        assert!(cs.is_empty());
        // No longer wanted: deleted with its status.
        let (cs, diff) = derived_tunnel_changes(&s, &BTreeMap::new(), now).unwrap();
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
