//! Fenced, all-or-nothing commits of change sets.
//!
//! Every mutating operation is a [`ChangeSet`] computed against a cache [`Snapshot`]. The
//! commit compares the fence key's mod_revision with the snapshot's and bumps the fence, so
//! writers (on this replica or another) serialize optimistically: a writer whose snapshot is
//! stale fails the compare, waits for the cache and recomputes.
//!
//! etcd refuses transactions of more than `--max-txn-ops` (default 128) operations and
//! requests over 1.5 MiB. A change set that does not fit one transaction goes through the
//! intent log:
//! 1. its operations are written in chunks under `txlog/<id>/chunk/<n>`;
//! 2. one transaction compares the fence (and the caller's compares, and that every chunk is
//!    there), writes `txlog/<id>/committed` and sets the fence to name the pending intent:
//!    from here the change is decided;
//! 3. the operations are applied in transactions of at most `max_txn_ops`, each comparing and
//!    bumping the fence (so no other write interleaves);
//! 4. one transaction deletes the intent and clears the fence.
//!
//! Whoever finds the fence naming an intent (any writer, the janitor, a controller starting)
//! rolls it forward; re-applying is harmless because a change set holds final values and
//! names each key once. Intents that never reached step 2 are discarded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp, TxnOpResponse,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use topo_schema::keys::{self, Fence};

use crate::cache::{Cache, MAX_MESSAGE_BYTES, PendingIntent, Snapshot};

mod crash;

#[cfg(any(test, feature = "testing"))]
pub use self::crash::CrashPoint;
use self::crash::{CrashHook, Crashed, Stage};

/// etcd's default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;
/// Bytes of values per transaction and per intent chunk (etcd's request limit is 1.5 MiB).
const MAX_TXN_BYTES: usize = 1024 * 1024;
/// Bytes of operations per intent chunk: values are JSON, and escaping them inside the
/// chunk's JSON can double their size; etcd refuses requests over 1.5 MiB.
const MAX_CHUNK_BYTES: usize = 512 * 1024;
/// How long a writer waits for the cache to reach a revision etcd gave it.
const CACHE_CATCH_UP: Duration = Duration::from_secs(5);
/// How many times a commit recomputes after losing the fence before giving up.
const MAX_ATTEMPTS: usize = 50;
/// How long an intent's fence may stay where it is in etcd before it counts as stalled (its
/// writer gone) and someone else rolls it forward.
const INTENT_STALL: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The snapshot was stale: another fenced write happened since.
    #[error("failed to commit: the state changed since it was read (fence moved to {current})")]
    FenceMoved { current: i64 },
    /// The fence held, but one of the change set's own or the caller's compares failed.
    #[error("failed to commit: a compared key changed")]
    CompareFailed,
    #[error("failed to commit: gave up after {0} attempts against concurrent writers")]
    TooManyAttempts(usize),
    #[error("failed to {what} in etcd")]
    Etcd {
        what: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("failed to decode intent {id}: {message}")]
    CorruptIntent { id: String, message: String },
    /// A test asked the committer to stop mid-way, as a crash would.
    #[cfg(any(test, feature = "testing"))]
    #[error("failed to commit: stopped at {0:?} (injected crash)")]
    InjectedCrash(CrashPoint),
    #[error("failed to commit: the cache did not reach revision {0} in time")]
    CacheLagging(i64),
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// A value that could not be encoded as JSON for etcd. The write it belongs to fails rather
/// than storing an empty value.
#[derive(Debug, thiserror::Error)]
#[error("failed to encode the value of {key}")]
pub struct EncodeError {
    pub key: String,
    #[source]
    pub source: serde_json::Error,
}

/// `value` as the JSON stored under `key`.
pub fn encode<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<String, EncodeError> {
    serde_json::to_string(value).map_err(|source| EncodeError {
        key: key.to_string(),
        source,
    })
}

/// A crash test stopped the commit (test builds), or never (release builds: `Crashed` is
/// `Infallible`).
impl From<Crashed> for CommitError {
    #[cfg(any(test, feature = "testing"))]
    fn from(point: Crashed) -> Self {
        CommitError::InjectedCrash(point)
    }

    #[cfg(not(any(test, feature = "testing")))]
    fn from(never: Crashed) -> Self {
        match never {}
    }
}

fn etcd(what: &'static str) -> impl FnOnce(etcd_client::Error) -> CommitError {
    move |source| CommitError::Etcd { what, source }
}

/// Writes and deletes that must happen together, plus the mod_revisions they assume.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangeSet {
    pub puts: Vec<(String, String)>,
    pub deletes: Vec<String>,
    /// `key`'s mod_revision must equal the value (0: the key must not exist).
    pub compares: Vec<(String, i64)>,
}

impl ChangeSet {
    pub fn put(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.puts.push((key.into(), value.into()));
    }

    /// Puts `value` as JSON; a value that does not encode fails here, before anything is
    /// written.
    pub fn put_json<T: Serialize + ?Sized>(
        &mut self,
        key: impl Into<String>,
        value: &T,
    ) -> Result<(), EncodeError> {
        let key = key.into();
        let value = encode(&key, value)?;
        self.puts.push((key, value));
        Ok(())
    }

    /// Puts every `(key, value)` as JSON (see [`ChangeSet::put_json`]).
    pub fn put_all_json<'a, T: Serialize + 'a>(
        &mut self,
        puts: impl IntoIterator<Item = &'a (String, T)>,
    ) -> Result<(), EncodeError> {
        for (key, value) in puts {
            self.put_json(key.as_str(), value)?;
        }
        Ok(())
    }

    pub fn delete(&mut self, key: impl Into<String>) {
        self.deletes.push(key.into());
    }

    pub fn compare(&mut self, key: impl Into<String>, mod_revision: i64) {
        self.compares.push((key.into(), mod_revision));
    }

    pub fn extend(&mut self, other: ChangeSet) {
        self.puts.extend(other.puts);
        self.deletes.extend(other.deletes);
        self.compares.extend(other.compares);
    }

    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty()
    }

    /// The operations in key order, each key once (a later put or delete of a key wins).
    fn ops(&self) -> Vec<Op> {
        let mut m: BTreeMap<&str, Option<&str>> = BTreeMap::new();
        // Deletes first, then puts: a put of a key also deleted means "replace".
        for d in &self.deletes {
            m.insert(d, None);
        }
        for (k, v) in &self.puts {
            m.insert(k, Some(v));
        }
        m.into_iter()
            .map(|(k, v)| match v {
                Some(v) => Op::Put(k.to_string(), v.to_string()),
                None => Op::Delete(k.to_string()),
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Op {
    Put(String, String),
    Delete(String),
}

impl Op {
    fn size(&self) -> usize {
        match self {
            Op::Put(k, v) => k.len() + v.len() + 16,
            Op::Delete(k) => k.len() + 16,
        }
    }

    fn txn_op(&self) -> TxnOp {
        match self {
            Op::Put(k, v) => TxnOp::put(k.as_str(), v.as_str(), None),
            Op::Delete(k) => TxnOp::delete(k.as_str(), None),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct IntentChunk {
    ops: Vec<Op>,
}

#[derive(Debug, Serialize, Deserialize)]
struct IntentCommitted {
    chunks: usize,
}

fn fence_value(pending: Option<&str>, applied_ops: usize) -> Result<String, EncodeError> {
    encode(
        &keys::fence(),
        &Fence {
            pending_intent: pending.map(str::to_string),
            applied_ops,
        },
    )
}

/// Splits `ops` into groups of at most `max_ops` operations and about `max_bytes` bytes.
fn batches(ops: &[Op], max_ops: usize, max_bytes: usize) -> Vec<&[Op]> {
    let mut out = vec![];
    let mut rest = ops;
    while !rest.is_empty() {
        let batch = first_batch(rest, max_ops, max_bytes);
        out.push(batch);
        rest = &rest[batch.len()..];
    }
    out
}

/// The first group of `batches(ops, ..)`: never empty when `ops` is not.
fn first_batch(ops: &[Op], max_ops: usize, max_bytes: usize) -> &[Op] {
    let mut bytes = 0;
    for (i, op) in ops.iter().enumerate() {
        if i > 0 && (i >= max_ops || bytes + op.size() > max_bytes) {
            return &ops[..i];
        }
        bytes += op.size();
    }
    ops
}

/// Commits change sets against the fence. Cheap to clone.
#[derive(Clone)]
pub struct Committer {
    client: Client,
    cache: Cache,
    max_txn_ops: usize,
    crash: CrashHook,
}

impl Committer {
    pub fn new(client: Client, cache: Cache, max_txn_ops: usize) -> Self {
        Committer {
            client,
            cache,
            max_txn_ops: max_txn_ops.max(4),
            crash: CrashHook::none(),
        }
    }

    /// For crash tests only: stop intent commits at `point`.
    #[cfg(any(test, feature = "testing"))]
    pub fn with_crash(mut self, point: CrashPoint) -> Self {
        self.crash = CrashHook::at(point);
        self
    }

    pub fn max_txn_ops(&self) -> usize {
        self.max_txn_ops
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Computes a change set against the current snapshot and commits it; recomputes on a
    /// fresher snapshot when another fenced write got in first. `compute` returns `Ok(None)`
    /// when there is nothing to write. Returns the value `compute` produced with the revision
    /// of the commit (None when nothing was written), and the snapshot it was computed on.
    pub async fn run<T, E>(
        &self,
        extra_compares: impl Fn() -> Vec<Compare>,
        mut compute: impl FnMut(&Arc<Snapshot>) -> Result<(Option<ChangeSet>, T), E>,
    ) -> Result<(T, Option<i64>, Arc<Snapshot>), E>
    where
        E: From<CommitError>,
    {
        let mut snap = self.cache.current();
        for _ in 0..MAX_ATTEMPTS {
            let computing = std::time::Instant::now();
            let (cs, out) = compute(&snap)?;
            tracing::debug!(
                ms = computing.elapsed().as_millis() as u64,
                snapshot = snap.revision,
                "change set computed"
            );
            let Some(cs) = cs.filter(|c| !c.is_empty()) else {
                // Nothing to write, so the answer ("unchanged") rests on the snapshot alone:
                // confirm it is current with a quorum read. While etcd is unreachable this
                // fails as a write would, instead of answering from a stale cache.
                match self.moved_fence(&snap).await? {
                    None => return Ok((out, None, snap)),
                    Some(current) => {
                        snap = self.catch_up(current).await.map_err(E::from)?;
                        continue;
                    }
                }
            };
            match self.commit(&snap, &cs, extra_compares()).await {
                Ok(rev) => return Ok((out, Some(rev), snap)),
                Err(CommitError::FenceMoved { current }) => {
                    tracing::debug!(current, "fence moved, recomputing");
                    snap = self.catch_up(current).await.map_err(E::from)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommitError::TooManyAttempts(MAX_ATTEMPTS).into())
    }

    /// None when the fence (and so every fenced write) is where `snap` saw it; else the
    /// fence's current revision.
    async fn moved_fence(&self, snap: &Snapshot) -> Result<Option<i64>, CommitError> {
        let (rev, pending) = read_fence(&self.client).await?;
        Ok((rev != snap.fence_rev || pending.is_some()).then_some(rev))
    }

    /// After losing the fence: roll forward whatever intent the fence names, then wait for
    /// the cache to reach the fence.
    async fn catch_up(&self, fence_rev: i64) -> Result<Arc<Snapshot>, CommitError> {
        let (mut rev, pending) = read_fence(&self.client).await?;
        if let Some(id) = pending {
            // Its writer is most likely applying it right now: two parties taking turns
            // through the batches double etcd's work (measured with topo-bench, the leader's
            // pass took twice as long), so leave it to the writer unless it stalls.
            rev = match self.wait_for_writer(&id).await? {
                Some(done) => done,
                None => roll_forward(&self.client, &id, self.max_txn_ops).await?,
            };
        }
        let target = rev.max(fence_rev);
        // etcd just answered, so the cache should follow at once; if it does not (etcd went
        // away meanwhile), the write fails within the same bound as one etcd request.
        match tokio::time::timeout(CACHE_CATCH_UP, self.cache.wait_for_revision(target)).await {
            Ok(s) => Ok(s),
            Err(_) => Err(CommitError::CacheLagging(target)),
        }
    }

    /// Waits while intent `id` is applied by its writer: the fence's revision once it is
    /// done, None when the fence stood still in etcd for [`INTENT_STALL`] (the writer is
    /// gone, the intent is ours to roll forward).
    async fn wait_for_writer(&self, id: &str) -> Result<Option<i64>, CommitError> {
        let mut pending = self.cache.pending_intent();
        let names_id = |p: &PendingIntent| p.as_ref().is_some_and(|(p, _)| p == id);
        let mut last_seen: Option<i64> = None;
        loop {
            if !names_id(&pending.borrow_and_update()) {
                return Ok(Some(read_fence(&self.client).await?.0));
            }
            // A fence move goes round again; a quiet spell (or the cache gone, at shutdown)
            // is decided from etcd alone.
            if let Ok(Ok(())) = tokio::time::timeout(INTENT_STALL, pending.changed()).await {
                continue;
            }
            // The cache may lag a busy etcd: only etcd's fence, unmoved, means stalled.
            let state = read_fence_state(&self.client).await?;
            if state.pending.as_deref() != Some(id) {
                return Ok(Some(state.rev));
            }
            if last_seen == Some(state.rev) {
                return Ok(None);
            }
            last_seen = Some(state.rev);
            if pending.has_changed().is_err() {
                tokio::time::sleep(INTENT_STALL).await;
            }
        }
    }

    /// Commits `cs` if the fence still is at `snap.fence_rev` and every compare holds.
    /// Returns the revision at which the whole change set is visible.
    pub async fn commit(
        &self,
        snap: &Snapshot,
        cs: &ChangeSet,
        extra_compares: Vec<Compare>,
    ) -> Result<i64, CommitError> {
        if snap.pending_intent.is_some() {
            // The snapshot may be half-applied: never compute on it.
            return Err(CommitError::FenceMoved {
                current: snap.fence_rev,
            });
        }
        let ops = cs.ops();
        let bytes: usize = ops.iter().map(Op::size).sum();
        let n_compares = 1 + cs.compares.len() + extra_compares.len();
        if ops.len() < self.max_txn_ops && n_compares <= self.max_txn_ops && bytes <= MAX_TXN_BYTES
        {
            self.commit_small(snap, cs, ops, extra_compares).await
        } else {
            self.commit_intent(snap, cs, ops, extra_compares).await
        }
    }

    async fn commit_small(
        &self,
        snap: &Snapshot,
        cs: &ChangeSet,
        ops: Vec<Op>,
        extra: Vec<Compare>,
    ) -> Result<i64, CommitError> {
        let fence = keys::fence();
        let mut compares = vec![Compare::mod_revision(
            fence.as_str(),
            CompareOp::Equal,
            snap.fence_rev,
        )];
        compares.extend(
            cs.compares
                .iter()
                .map(|(k, r)| Compare::mod_revision(k.as_str(), CompareOp::Equal, *r)),
        );
        compares.extend(extra);
        let mut then: Vec<TxnOp> = ops.iter().map(Op::txn_op).collect();
        then.push(TxnOp::put(fence.as_str(), fence_value(None, 0)?, None));
        let txn = Txn::new()
            .when(compares)
            .and_then(then)
            .or_else(vec![TxnOp::get(fence.as_str(), None)]);
        let mut kv = self.client.kv_client();
        let resp = topo_watcher::metrics::etcd_timed("txn", kv.txn(txn))
            .await
            .map_err(etcd("commit a change set"))?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        if resp.succeeded() {
            tracing::debug!(rev, ops = ops.len(), "committed");
            return Ok(rev);
        }
        Err(fence_failure(&resp, snap.fence_rev))
    }

    async fn commit_intent(
        &self,
        snap: &Snapshot,
        cs: &ChangeSet,
        ops: Vec<Op>,
        extra: Vec<Compare>,
    ) -> Result<i64, CommitError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let span = tracing::info_span!("intent", %id, ops = ops.len());
        let _enter = span.enter();
        let mut kv = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let chunks = batches(&ops, usize::MAX, MAX_CHUNK_BYTES);
        let committed = encode(
            &keys::intent_committed(&id),
            &IntentCommitted {
                chunks: chunks.len(),
            },
        )?;
        let pending_fence = fence_value(Some(&id), 0)?;
        // 1. Chunks, encoded one at a time (a whole large change escaped at once would double
        // its memory). One that does not encode leaves the chunks before it undecided, like a
        // failed put: recovery discards them.
        for (n, chunk) in chunks.iter().enumerate() {
            let key = keys::intent_chunk(&id, n);
            let value = encode(
                &key,
                &IntentChunk {
                    ops: chunk.to_vec(),
                },
            )?;
            kv.put(key, value, None)
                .await
                .map_err(etcd("write an intent chunk"))?;
        }
        tracing::debug!(chunks = chunks.len(), "intent chunks written");
        self.crash.check(Stage::ChunksWritten)?;
        // 2. Decide.
        let fence = keys::fence();
        let mut compares = vec![Compare::mod_revision(
            fence.as_str(),
            CompareOp::Equal,
            snap.fence_rev,
        )];
        compares.extend(
            (0..chunks.len())
                .map(|n| Compare::version(keys::intent_chunk(&id, n), CompareOp::Greater, 0)),
        );
        compares.extend(extra);
        // The change set's own compares go in when they fit; the fence covers every fenced
        // writer anyway.
        if compares.len() + cs.compares.len() <= self.max_txn_ops {
            compares.extend(
                cs.compares
                    .iter()
                    .map(|(k, r)| Compare::mod_revision(k.as_str(), CompareOp::Equal, *r)),
            );
        }
        let txn = Txn::new()
            .when(compares)
            .and_then(vec![
                TxnOp::put(keys::intent_committed(&id), committed, None),
                TxnOp::put(fence.as_str(), pending_fence, None),
            ])
            .or_else(vec![TxnOp::get(fence.as_str(), None)]);
        let resp = kv.txn(txn).await.map_err(etcd("commit an intent"))?;
        if !resp.succeeded() {
            let mut err = fence_failure(&resp, snap.fence_rev);
            if matches!(err, CommitError::CompareFailed) {
                // A controller starting up may have discarded our chunks as undecided: that
                // is a reason to try again, not the caller's compare failing.
                let chunk = kv
                    .get(keys::intent_chunk(&id, 0), None)
                    .await
                    .map_err(etcd("read an intent chunk"))?;
                if chunk.kvs().is_empty() {
                    err = CommitError::FenceMoved {
                        current: snap.fence_rev,
                    };
                }
            }
            // Undecided: the chunks are garbage now.
            let _ = kv
                .delete(
                    keys::intent_prefix(&id),
                    Some(DeleteOptions::new().with_prefix()),
                )
                .await;
            return Err(err);
        }
        tracing::info!(chunks = chunks.len(), "intent committed, applying");
        // 3 and 4, from memory (the chunks in etcd are for whoever must take over).
        apply_intent(&self.client, &id, &ops, self.max_txn_ops, self.crash).await
    }
}

/// Tells a lost fence from a failed caller compare, from the failure branch's read of the
/// fence.
fn fence_failure(resp: &etcd_client::TxnResponse, expected: i64) -> CommitError {
    let current = resp
        .op_responses()
        .into_iter()
        .find_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.kvs().first().map(|kv| kv.mod_revision()).unwrap_or(0)),
            _ => None,
        })
        .unwrap_or(0);
    if current != expected {
        CommitError::FenceMoved { current }
    } else {
        CommitError::CompareFailed
    }
}

/// The fence's mod_revision and the intent it names.
pub async fn read_fence(client: &Client) -> Result<(i64, Option<String>), CommitError> {
    let state = read_fence_state(client).await?;
    Ok((state.rev, state.pending))
}

/// What the fence says in etcd.
#[derive(Default)]
struct FenceState {
    rev: i64,
    pending: Option<String>,
    /// Operations of the pending intent already applied.
    applied_ops: usize,
}

async fn read_fence_state(client: &Client) -> Result<FenceState, CommitError> {
    let resp = client
        .kv_client()
        .get(keys::fence(), None)
        .await
        .map_err(etcd("read the fence"))?;
    Ok(match resp.kvs().first() {
        Some(kv) => {
            let fence = serde_json::from_slice::<Fence>(kv.value()).unwrap_or_default();
            FenceState {
                rev: kv.mod_revision(),
                pending: fence.pending_intent,
                applied_ops: fence.applied_ops,
            }
        }
        None => FenceState::default(),
    })
}

/// Steps 3 and 4 for intent `id`, while the fence names it. Returns the revision at which
/// the intent is complete (also when someone else completed it meanwhile).
///
/// Each batch records in the fence how many operations are applied, so two parties rolling
/// the same intent forward (a writer slowed by a busy etcd and the janitor, or a new leader)
/// take turns through it rather than each writing all of it.
async fn apply_intent(
    client: &Client,
    id: &str,
    ops: &[Op],
    max_txn_ops: usize,
    crash: CrashHook,
) -> Result<i64, CommitError> {
    let fence = keys::fence();
    let mut kv = client.kv_client();
    let clear_value = fence_value(None, 0)?;
    let mut applied_here = 0;
    // The fence as our own last batch left it: no read needed to go on from there. Should
    // someone else move it meanwhile, the next compare fails and the fence is read again.
    let mut known: Option<FenceState> = None;
    loop {
        crash.check(Stage::BatchesApplied(applied_here))?;
        let state = match known.take() {
            Some(state) => state,
            None => read_fence_state(client).await?,
        };
        if state.pending.as_deref() != Some(id) {
            // Someone else finished it.
            return Ok(state.rev);
        }
        let fence_is_unchanged = || {
            vec![Compare::mod_revision(
                fence.as_str(),
                CompareOp::Equal,
                state.rev,
            )]
        };
        let done = state.applied_ops.min(ops.len());
        if done == ops.len() {
            // 4. Done: drop the intent, clear the fence.
            let txn = Txn::new().when(fence_is_unchanged()).and_then(vec![
                TxnOp::delete(
                    keys::intent_prefix(id),
                    Some(DeleteOptions::new().with_prefix()),
                ),
                TxnOp::put(fence.as_str(), clear_value.as_str(), None),
            ]);
            let resp = kv.txn(txn).await.map_err(etcd("finish an intent"))?;
            if resp.succeeded() {
                let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
                tracing::info!(%id, rev, "intent applied");
                return Ok(rev);
            }
            continue;
        }
        let batch = first_batch(&ops[done..], max_txn_ops - 1, MAX_TXN_BYTES);
        let applied_ops = done + batch.len();
        let mut then: Vec<TxnOp> = batch.iter().map(Op::txn_op).collect();
        then.push(TxnOp::put(
            fence.as_str(),
            fence_value(Some(id), applied_ops)?,
            None,
        ));
        let txn = Txn::new().when(fence_is_unchanged()).and_then(then);
        let resp = kv.txn(txn).await.map_err(etcd("apply an intent batch"))?;
        if resp.succeeded() {
            applied_here += 1;
            // The fence was written in this transaction: its mod_revision is the answer's.
            known = resp.header().map(|h| FenceState {
                rev: h.revision(),
                pending: Some(id.to_string()),
                applied_ops,
            });
        }
        // On failure another roll-forward moved the fence: re-read it and go on from there.
    }
}

/// Rolls forward intent `id` from its chunks in etcd (someone else committed it and may have
/// died). Returns the revision at which it is complete.
pub async fn roll_forward(
    client: &Client,
    id: &str,
    max_txn_ops: usize,
) -> Result<i64, CommitError> {
    let mut kv = client
        .kv_client()
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let committed = kv
        .get(keys::intent_committed(id), None)
        .await
        .map_err(etcd("read an intent"))?;
    let Some(c) = committed.kvs().first() else {
        // Already finished (its keys are deleted with the fence cleared in one transaction).
        return Ok(read_fence(client).await?.0);
    };
    let corrupt = |message: String| CommitError::CorruptIntent {
        id: id.to_string(),
        message,
    };
    let meta: IntentCommitted =
        serde_json::from_slice(c.value()).map_err(|e| corrupt(e.to_string()))?;
    let mut ops = Vec::new();
    for n in 0..meta.chunks {
        let resp = kv
            .get(keys::intent_chunk(id, n), None)
            .await
            .map_err(etcd("read an intent chunk"))?;
        let Some(chunk) = resp.kvs().first() else {
            return Err(corrupt(format!("chunk {n} is missing")));
        };
        let chunk: IntentChunk =
            serde_json::from_slice(chunk.value()).map_err(|e| corrupt(e.to_string()))?;
        ops.extend(chunk.ops);
    }
    tracing::warn!(%id, ops = ops.len(), "rolling forward a committed intent");
    apply_intent(client, id, &ops, max_txn_ops, CrashHook::none()).await
}

/// Run on start: rolls forward the intent the fence names, and discards intents that were
/// never committed (their writer died before step 2).
pub async fn recover_intents(client: &Client, max_txn_ops: usize) -> Result<(), CommitError> {
    if let (_, Some(id)) = read_fence(client).await? {
        roll_forward(client, &id, max_txn_ops).await?;
    }
    let resp = client
        .kv_client()
        .get(
            keys::intents_prefix(),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .map_err(etcd("list intents"))?;
    let mut ids: Vec<String> = resp
        .kvs()
        .iter()
        .filter_map(|kv| kv.key_str().ok())
        .filter_map(|k| {
            k.strip_prefix(&keys::intents_prefix())
                .and_then(|r| r.split('/').next())
                .map(str::to_string)
        })
        .collect();
    ids.dedup();
    for id in ids {
        // Only if still undecided: a writer racing us to step 2 then fails its chunk compares.
        let txn = Txn::new()
            .when(vec![Compare::version(
                keys::intent_committed(&id),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![TxnOp::delete(
                keys::intent_prefix(&id),
                Some(DeleteOptions::new().with_prefix()),
            )]);
        let resp = client
            .kv_client()
            .txn(txn)
            .await
            .map_err(etcd("discard an intent"))?;
        if resp.succeeded() {
            tracing::info!(%id, "discarded an uncommitted intent");
        } else if let (_, Some(pending)) = read_fence(client).await?
            && pending == id
        {
            roll_forward(client, &id, max_txn_ops).await?;
        }
    }
    Ok(())
}

/// Rolls forward an intent whose writer seems gone: one the fence has named, unchanged, for
/// a few seconds. Runs until `shutdown`.
pub async fn run_intent_janitor(
    client: Client,
    cache: Cache,
    max_txn_ops: usize,
    shutdown: CancellationToken,
) {
    let mut rx = cache.pending_intent();
    loop {
        let pending = rx.borrow_and_update().clone();
        if let Some((id, fence_rev)) = pending {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = rx.changed() => {
                    if changed.is_err() { return; }
                    continue;
                }
                _ = tokio::time::sleep(INTENT_STALL) => {
                    roll_forward_if_stalled(&client, &id, fence_rev, max_txn_ops).await;
                }
            }
        } else {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = rx.changed() => if changed.is_err() { return; },
            }
        }
    }
}

/// The janitor's check: the cache has shown the fence naming `id` at `cache_fence_rev` for a
/// while. Only if etcd says the same (the cache may just lag behind a busy etcd while the
/// writer is applying batch after batch) is the intent stalled and rolled forward here.
async fn roll_forward_if_stalled(
    client: &Client,
    id: &str,
    cache_fence_rev: i64,
    max_txn_ops: usize,
) {
    match read_fence_state(client).await {
        Ok(state) if state.pending.as_deref() == Some(id) && state.rev == cache_fence_rev => {
            tracing::warn!(%id, fence_rev = state.rev, "intent stalled, rolling it forward");
            if let Err(e) = roll_forward(client, id, max_txn_ops).await {
                tracing::error!(%id, error = %e, "failed to roll an intent forward");
            }
        }
        Ok(state) => {
            tracing::debug!(%id, cache_fence_rev, fence_rev = state.rev, "intent moving, cache behind");
        }
        Err(e) => tracing::warn!(%id, error = %e, "failed to read the fence"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_dedup_and_order() {
        let mut cs = ChangeSet::default();
        cs.put("/b", "1");
        cs.delete("/a");
        cs.delete("/b");
        cs.put("/a", "2");
        cs.put("/a", "3");
        assert_eq!(
            cs.ops(),
            vec![
                Op::Put("/a".into(), "3".into()),
                Op::Put("/b".into(), "1".into())
            ]
        );
    }

    #[test]
    fn a_value_that_does_not_encode_fails_instead_of_writing_nothing() {
        let mut cs = ChangeSet::default();
        // JSON object keys must be strings: serde_json refuses a map keyed by pairs.
        let bad: BTreeMap<(u8, u8), u8> = BTreeMap::from([((1, 2), 3)]);
        let err = cs.put_json("/topo/v1/k", &bad).unwrap_err();
        assert_eq!(err.key, "/topo/v1/k");
        assert_eq!(err.to_string(), "failed to encode the value of /topo/v1/k");
        assert!(cs.is_empty());
        cs.put_json("/topo/v1/k", &Fence::default()).unwrap();
        assert_eq!(cs.puts, vec![("/topo/v1/k".to_string(), "{}".to_string())]);
    }

    #[test]
    fn batches_respect_ops_and_bytes() {
        let ops: Vec<Op> = (0..300)
            .map(|i| Op::Put(format!("/k{i:03}"), "x".repeat(100)))
            .collect();
        let b = batches(&ops, 127, usize::MAX);
        assert_eq!(
            b.iter().map(|b| b.len()).collect::<Vec<_>>(),
            vec![127, 127, 46]
        );
        let b = batches(&ops, usize::MAX, 1200);
        assert!(
            b.iter()
                .all(|b| b.iter().map(Op::size).sum::<usize>() <= 1200)
        );
        assert_eq!(b.iter().map(|b| b.len()).sum::<usize>(), 300);
        // One op larger than the byte limit still goes, alone.
        let big = vec![Op::Put("/k".into(), "x".repeat(5000))];
        assert_eq!(batches(&big, 10, 1000).len(), 1);
    }
}
