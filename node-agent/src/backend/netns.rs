//! Running code inside another process's network namespace.
//!
//! `setns(CLONE_NEWNET)` changes the namespace of the calling *thread* only. Doing it on a
//! tokio worker would leave that worker (and every task later scheduled on it) in the
//! container's namespace, so namespace work always runs on a fresh OS thread that exits
//! afterwards. What such a thread creates keeps the namespace it was created in:
//! - sockets (netlink, AF_INET for ethtool ioctls, AF_PACKET) stay bound to the container's
//!   namespace after the thread is gone, so the netlink backend opens its socket there and
//!   hands it back to the async side;
//! - child processes inherit the spawning thread's namespace, so `nft` spawned from such a
//!   thread programs the container's tables (no `nsenter`, no shell);
//! - files under /proc/sys/net opened from it address the thread's namespace.

use std::fs::File;
use std::io;

use nix::sched::{CloneFlags, setns};

/// The network namespace file of process `pid`.
pub fn open_netns(pid: u32) -> io::Result<File> {
    File::open(format!("/proc/{pid}/ns/net"))
}

/// Runs `f` on a new OS thread that has joined the network namespace of `pid`, and waits for
/// it without blocking the async runtime.
pub async fn run_in_netns<T, F>(pid: u32, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let ns = open_netns(pid)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("netns-{pid}"))
        .spawn(move || {
            let r = setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)
                .map(|()| f());
            // The receiver is gone only when the caller was cancelled; nothing to do then.
            let _ = tx.send(r);
        })?;
    rx.await
        .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// Like [`run_in_netns`] for `Some(pid)`; for `None` runs `f` on a blocking thread of the
/// agent's own namespace (so callers treat both alike).
pub async fn run_in_ns_of<T, F>(pid: Option<u32>, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    match pid {
        Some(pid) => run_in_netns(pid, f).await,
        None => tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| io::Error::other(format!("the blocking task failed: {e}"))),
    }
}
