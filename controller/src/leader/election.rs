//! The election: a lease kept alive, and the leader key created under it. Only etcd I/O
//! lives here; what a term does is [`super::derive`]'s.
//!
//! A [`Term`] is the proof of leadership every leader write carries (a compare on the leader
//! key's create_revision), and a token cancelled the moment the lease may have lapsed, so the
//! term's work stops before a successor can have started.

use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, EventType, Txn, TxnOp, WatchOptions};
use tokio_util::sync::CancellationToken;
use topo_schema::keys;

use super::config::{LeaderConfig, LeaderError};

/// One term of leadership: the leader key as we created it.
#[derive(Debug, Clone)]
pub(super) struct Term {
    pub(super) create_revision: i64,
    /// Cancelled when the lease lapses (or could not be renewed for a whole TTL).
    pub(super) lost: CancellationToken,
    pub(super) lease: i64,
}

impl Term {
    /// The compare every leader write carries.
    pub(super) fn compare(&self) -> Compare {
        Compare::create_revision(keys::leader(), CompareOp::Equal, self.create_revision)
    }
}

/// Grants a lease, keeps it alive, and waits until this replica creates the leader key.
/// None on shutdown.
pub(super) async fn campaign(
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
    loop {
        if lost.is_cancelled() {
            return Err(LeaderError::Deposed);
        }
        let rev = match claim_leader_key(client, config, lease).await {
            Ok(Claim::Won(create_revision)) => {
                return Ok(Some(Term {
                    create_revision,
                    lost,
                    lease,
                }));
            }
            Ok(Claim::Held { rev, holder }) => {
                tracing::info!(leader = %holder, "following");
                rev
            }
            Err(e) => {
                lost.cancel();
                return Err(LeaderError::Campaign(e));
            }
        };
        match wait_for_vacancy(client, rev, &lost, shutdown).await {
            Ok(Wait::MaybeVacant) => {}
            Ok(Wait::Shutdown) => {
                lost.cancel();
                let _ = client.lease_client().revoke(lease).await;
                return Ok(None);
            }
            Ok(Wait::LeaseLost) => return Err(LeaderError::Deposed),
            Err(e) => {
                lost.cancel();
                return Err(LeaderError::Campaign(e));
            }
        }
    }
}

/// What one attempt to create the leader key found.
enum Claim {
    /// Created, at this revision: this replica leads.
    Won(i64),
    /// Someone else holds it, as of `rev`.
    Held { rev: i64, holder: String },
}

/// Creates the leader key under `lease` unless it exists.
async fn claim_leader_key(
    client: &Client,
    config: &LeaderConfig,
    lease: i64,
) -> Result<Claim, etcd_client::Error> {
    let key = keys::leader();
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
    let resp = client.kv_client().txn(txn).await?;
    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
    if resp.succeeded() {
        return Ok(Claim::Won(rev));
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
    Ok(Claim::Held { rev, holder })
}

/// How waiting for the leader key to go away ended.
enum Wait {
    /// It was deleted, or the watch ended: look at the key again.
    MaybeVacant,
    Shutdown,
    /// Our own lease lapsed meanwhile.
    LeaseLost,
}

/// Waits for the leader key to go away after `rev` (its holder resigned or its lease
/// lapsed).
async fn wait_for_vacancy(
    client: &Client,
    rev: i64,
    lost: &CancellationToken,
    shutdown: &CancellationToken,
) -> Result<Wait, etcd_client::Error> {
    let mut wc = client.watch_client();
    let (_watcher, mut stream) = wc
        .watch(
            keys::leader(),
            Some(WatchOptions::new().with_start_revision(rev + 1)),
        )
        .await?
        .split();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(Wait::Shutdown),
            _ = lost.cancelled() => return Ok(Wait::LeaseLost),
            msg = stream.message() => match msg {
                Ok(Some(resp)) => {
                    if resp.events().iter().any(|e| e.event_type() == EventType::Delete) {
                        return Ok(Wait::MaybeVacant);
                    }
                    if resp.canceled() || resp.compact_revision() > 0 {
                        return Ok(Wait::MaybeVacant);
                    }
                }
                Ok(None) | Err(_) => return Ok(Wait::MaybeVacant),
            },
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
