//! One list/watch state machine for everything topo reads from etcd, in the manner of
//! kube-rs's `watcher`: the controller's informer cache and each agent's slice both run it.
//!
//! ```text
//!   Listing ──list ok──▶ Watching{rev} ──events──▶ Watching{rev'}
//!      ▲ list failed         │  ▲   disconnect: back off, watch again from rev+1 (no relist)
//!      └─(back off)          │  └──────────────┘
//!                            └─compacted──▶ Relisting ──list ok──▶ Watching{rev''}
//! ```
//!
//! The machine ([`Watcher`]) owns no domain state: each [`Step`] hands the caller what a list
//! or a watch message brought (raw keys and values with their revisions), and the caller keeps
//! its own store (the agent's `SliceStore`, the controller's `Snapshot`). It talks to etcd only
//! through [`Source`] and [`Watch`], so it is unit-tested with a scripted source; [`etcd`]
//! is the real one. Compaction is recognised the way etcd signals it (a watch response whose
//! `compact_revision` is set, or the gRPC status of `ErrCompacted`), never by error text.
//!
//! [`metrics`] holds the families both programs share (watch restarts and relists, etcd
//! latency) and renders a registry for `/metrics`.
//!
//! [`jittered_backoff`] is the one retry schedule: the machine uses it between failed steps,
//! and the agent and controller use it for their other etcd retries.

pub mod etcd;
pub mod failover;
mod machine;
pub mod metrics;

pub use etcd::{EtcdSource, EtcdWatch, revision_gone, unchanged_between};
pub use machine::{
    Kv, KvEvent, Listing, Source, SourceError, State, Stats, Step, Watch, WatchMessage, Watcher,
};

use std::time::Duration;

use backoff::ExponentialBackoff;

/// Exponential backoff from `initial` doubling up to `max`, each delay jittered by ±30 % so
/// that many agents that lost etcd together do not come back in lockstep; it never gives up.
pub fn jittered_backoff(initial: Duration, max: Duration) -> ExponentialBackoff {
    backoff::ExponentialBackoffBuilder::new()
        .with_initial_interval(initial)
        .with_max_interval(max)
        .with_randomization_factor(0.3)
        .with_multiplier(2.0)
        .with_max_elapsed_time(None)
        .build()
}
