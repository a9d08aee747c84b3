//! The leader's configuration and the error type its modules share. It sits below
//! election, derivation and status folding and imports none of them.

use std::time::Duration;

use crate::commit::{CommitError, EncodeError};

pub use crate::events::EVENT_SOURCE;

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
    #[error(transparent)]
    Encode(#[from] EncodeError),
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
