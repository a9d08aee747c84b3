//! Running code inside a container's network namespace, without ever entering the namespace
//! of a process that merely reuses a dead container's pid.
//!
//! Docker reports a container's init process by pid. By the time the agent acts on it the
//! container may have died and the pid (32768 of them by default) may belong to another
//! process: entering "its" namespace would plumb a veth into, or program NAT in, a stranger's.
//! So a [`ContainerNs`] (pid + container id) is confirmed on every entry, race-free:
//!
//! 1. `pidfd_open(pid)` pins the process that holds the pid *now*;
//! 2. its `/proc/PID/cgroup` must name the container's id (Docker puts every process of a
//!    container in a cgroup named after it, whatever the cgroup driver or version), and its
//!    `/proc/PID/ns/net` is opened;
//! 3. the pidfd must not have become readable (the pinned process has not exited): a pid is
//!    not reused before its process is reaped, so steps 2 read the pinned process.
//!
//! Anything else is [`NsError::Exited`] or [`NsError::NotTheContainer`], which the reconcile
//! reads as "the container is gone". The namespace file from step 2 then names the namespace
//! itself, so nothing after that depends on the pid.
//!
//! `setns(CLONE_NEWNET)` changes the namespace of the calling *thread* only. Doing it on a
//! tokio worker would leave that worker (and every task later scheduled on it) in the
//! container's namespace, so namespace work always runs on a fresh OS thread that exits
//! afterwards. What such a thread creates keeps the namespace it was created in:
//! - sockets (netlink, AF_INET for ethtool ioctls, AF_PACKET) stay bound to the container's
//!   namespace after the thread is gone, so the backends open their sockets there and hand
//!   them back to the async side;
//! - child processes inherit the spawning thread's namespace, so `nft` spawned from such a
//!   thread programs the container's tables (no `nsenter`, no shell);
//! - files under /proc/sys/net opened from it address the thread's namespace.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::sched::{CloneFlags, setns};

/// A container's network namespace, named by the container's init process as Docker
/// reported it and the container's id (which the kernel's view of that pid must confirm).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerNs {
    pub pid: u32,
    /// Docker's container id (the full 64 hex digits).
    pub container_id: String,
}

impl ContainerNs {
    pub fn new(pid: u32, container_id: impl Into<String>) -> Self {
        ContainerNs {
            pid,
            container_id: container_id.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error("failed to find process {pid}: it has exited")]
    Exited { pid: u32 },
    #[error(
        "failed to confirm process {pid} as container {container}: the pid belongs to a process of another cgroup (the container died and its pid was reused)"
    )]
    NotTheContainer { pid: u32, container: String },
    #[error("failed to open {what} of process {pid}")]
    Open {
        pid: u32,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("failed to join the network namespace of process {pid}")]
    Join {
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("failed to start a thread for the namespace of process {pid}")]
    Thread {
        pid: u32,
        #[source]
        source: io::Error,
    },
}

impl NsError {
    /// The process is gone (or is not the container's any more): not a fault of the agent.
    pub fn is_gone(&self) -> bool {
        matches!(
            self,
            NsError::Exited { .. } | NsError::NotTheContainer { .. }
        )
    }
}

/// A pidfd: a handle on one process that stays valid (and never names another process)
/// after the process exits and its pid is reused.
#[derive(Debug)]
pub struct Pidfd {
    fd: OwnedFd,
    pid: u32,
}

impl Pidfd {
    /// Pins the process that holds `pid` now.
    pub fn open(pid: u32) -> Result<Pidfd, NsError> {
        let raw_pid = libc::pid_t::try_from(pid).map_err(|_| NsError::Exited { pid })?;
        // SAFETY: pidfd_open(2) takes a pid and flags (none: a pidfd is always close-on-exec)
        // and returns a new file descriptor or -1 with errno; glibc < 2.36 has no wrapper,
        // hence the raw syscall.
        let r = unsafe { libc::syscall(libc::SYS_pidfd_open, raw_pid, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ESRCH) => NsError::Exited { pid },
                _ => NsError::Open {
                    pid,
                    what: "a pidfd",
                    source: e,
                },
            });
        }
        let raw = i32::try_from(r).map_err(|_| NsError::Open {
            pid,
            what: "a pidfd",
            source: io::Error::other("pidfd_open returned an out-of-range descriptor"),
        })?;
        // SAFETY: `raw` is a descriptor pidfd_open just returned; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Pidfd { fd, pid })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the pinned process has exited (a zombie counts: its pid is about to be freed).
    pub fn exited(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, a zero timeout; a pidfd turns readable when its process
        // exits.
        let r = unsafe { libc::poll(&mut p, 1, 0) };
        r != 0 && (r < 0 || p.revents != 0)
    }

    /// Waits until the pinned process exits.
    pub async fn wait_exit(self) {
        let interest = tokio::io::Interest::READABLE;
        // SAFETY: `register_with_interest` needs the descriptor to stay open while registered:
        // the AsyncFd owns the OwnedFd and closes it only when dropped, after deregistering.
        match unsafe { tokio::io::unix::AsyncFd::register_with_interest(self.fd, interest) } {
            Ok(fd) => {
                let _ = fd.readable().await;
            }
            // Not pollable through the reactor (should not happen): never report an exit
            // that did not happen; the other event sources still see it.
            Err(_) => std::future::pending::<()>().await,
        }
    }
}

impl AsFd for Pidfd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Whether a `/proc/PID/cgroup` listing puts the process in a cgroup named after
/// `container_id` (`/docker/<id>`, `/system.slice/docker-<id>.scope`, ...).
pub fn cgroup_names_container(listing: &str, container_id: &str) -> bool {
    !container_id.is_empty()
        && listing.lines().any(|l| {
            l.splitn(3, ':')
                .nth(2)
                .is_some_and(|path| path.contains(container_id))
        })
}

fn read_proc(pid: u32, what: &'static str, file: &str) -> Result<String, NsError> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).map_err(|source| {
        match source.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ESRCH) => NsError::Exited { pid },
            _ => NsError::Open { pid, what, source },
        }
    })
}

/// The network namespace of the container `ns` names, confirmed as described in the module
/// documentation, with the pidfd of its process.
pub fn open_container_netns(ns: &ContainerNs) -> Result<(File, Pidfd), NsError> {
    let pid = ns.pid;
    let pidfd = Pidfd::open(pid)?;
    let read = read_proc(pid, "the cgroup listing", "cgroup").and_then(|cgroup| {
        let file = File::open(format!("/proc/{pid}/ns/net")).map_err(|source| NsError::Open {
            pid,
            what: "the network namespace",
            source,
        })?;
        Ok((cgroup, file))
    });
    // Checked after both reads: while the pinned process lives, the pid is its own. An exited
    // one (a zombie has no namespace left to open) is gone, whatever the reads said.
    if pidfd.exited() {
        return Err(NsError::Exited { pid });
    }
    let (cgroup, file) = read?;
    if !cgroup_names_container(&cgroup, &ns.container_id) {
        return Err(NsError::NotTheContainer {
            pid,
            container: ns.container_id.clone(),
        });
    }
    Ok((file, pidfd))
}

/// Runs `f` on a new OS thread that has joined the network namespace `ns` (a namespace file),
/// and waits for it without blocking the async runtime.
async fn run_in_netns_file<T, F>(pid: u32, ns: File, f: F) -> Result<T, NsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("netns-{pid}"))
        .spawn(move || {
            let r = setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(|e| NsError::Join {
                    pid,
                    source: e.into(),
                })
                .map(|()| f());
            // The receiver is gone only when the caller was cancelled; nothing to do then.
            let _ = tx.send(r);
        })
        .map_err(|source| NsError::Thread { pid, source })?;
    rx.await.map_err(|_| NsError::Thread {
        pid,
        source: io::Error::other("the namespace thread panicked"),
    })?
}

/// Runs `f` on a new OS thread inside the container's network namespace (confirmed first).
pub async fn run_in_container<T, F>(ns: &ContainerNs, f: F) -> Result<T, NsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    run_in_container_pinned(ns, f).await.map(|(r, _)| r)
}

/// [`run_in_container`], also returning the pidfd of the container's process (to notice its
/// exit later, e.g. to close a socket `f` opened in its namespace).
pub async fn run_in_container_pinned<T, F>(ns: &ContainerNs, f: F) -> Result<(T, Pidfd), NsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (file, pidfd) = open_container_netns(ns)?;
    let r = run_in_netns_file(ns.pid, file, f).await?;
    Ok((r, pidfd))
}

/// Like [`run_in_container`] for `Some(ns)`; for `None` runs `f` on a blocking thread of the
/// agent's own namespace (so callers treat both alike).
pub async fn run_in_ns_of<T, F>(ns: Option<&ContainerNs>, f: F) -> Result<T, NsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    match ns {
        Some(ns) => run_in_container(ns, f).await,
        None => tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| NsError::Thread {
                pid: std::process::id(),
                source: io::Error::other(format!("the blocking task failed: {e}")),
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_listings_of_docker_containers() {
        let id = "4f1c3a0e9b7d6c5a4f1c3a0e9b7d6c5a4f1c3a0e9b7d6c5a4f1c3a0e9b7d6c5a";
        let cgroupfs_v1 = format!("12:pids:/docker/{id}\n4:memory:/docker/{id}\n0::/\n");
        let systemd_v2 = format!("0::/system.slice/docker-{id}.scope\n");
        let in_cgroupns = format!("0::/../../docker/{id}\n");
        for l in [&cgroupfs_v1, &systemd_v2, &in_cgroupns] {
            assert!(cgroup_names_container(l, id), "{l}");
        }
        let other = "0::/user.slice/user-0.slice/session-3.scope\n";
        assert!(!cgroup_names_container(other, id));
        assert!(
            !cgroup_names_container(&cgroupfs_v1, ""),
            "an empty id names nothing"
        );
        // The id must be in the path, not in the controller list.
        assert!(!cgroup_names_container("3:abc:/\n", "abc"));
    }

    #[test]
    fn a_pid_that_does_not_exist_is_an_exited_process() {
        // Above pid_max (at most 2^22): never a process.
        let ns = ContainerNs::new(u32::MAX - 1, "abc");
        assert!(matches!(
            open_container_netns(&ns),
            Err(NsError::Exited { .. })
        ));
    }

    /// A process that has exited but is not reaped yet (a zombie) still holds its pid; the
    /// pidfd sees it exited, so its namespace is never opened.
    #[test]
    fn an_exited_unreaped_process_is_exited() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        let zombie = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('Z')))
                .unwrap_or(false)
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !zombie() {
            assert!(
                std::time::Instant::now() < deadline,
                "`true` did not exit within 10 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let err = open_container_netns(&ContainerNs::new(pid, "abc")).unwrap_err();
        assert!(matches!(err, NsError::Exited { .. }), "{err:?}");
        let _ = child.wait();
    }

    #[test]
    fn our_own_process_is_not_a_container_of_another_cgroup() {
        let ns = ContainerNs::new(std::process::id(), "no-such-container-0123456789");
        let err = open_container_netns(&ns).unwrap_err();
        assert!(matches!(err, NsError::NotTheContainer { .. }), "{err:?}");
        assert!(err.is_gone());
    }
}
