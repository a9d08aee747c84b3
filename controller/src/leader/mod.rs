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
//!
//! The three concerns live apart because they change for different reasons and are tested
//! differently: `election` (the lease, the leader key and the fence compare: etcd I/O
//! only), `derive` (one term's passes: plan, diff, fenced writes) and [`status`] (a pure
//! fold from a snapshot and a plan to status writes, tested as tables); what they share, the
//! configuration and the error type, sits below them in `config`. This file holds the
//! campaign → lead → step down loop, so the modules' dependencies point one way: this file
//! uses `derive` and `election`, `derive` uses `election` and `status`, all use `config`.

mod config;
mod derive;
mod election;
pub mod status;

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::commit::Committer;

pub use self::config::{EVENT_SOURCE, LeaderConfig, LeaderError};
use self::derive::Leader;
use self::election::campaign;
pub use self::status::{Folded, fold_statuses};

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

#[cfg(test)]
mod fixtures;
