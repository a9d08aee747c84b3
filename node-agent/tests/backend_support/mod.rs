//! Helpers of the backend integration tests: root check, private network namespaces, a
//! stand-in "container" process, commands. These tests need root and real tools; they fail
//! loudly (never skip) when something is missing.
#![allow(dead_code)]

use std::fs::File;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "backend integration tests need root (network namespaces, OVS, nft, Docker)"
    );
}

pub fn require_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(name).is_file()
        || Path::new("/sbin").join(name).is_file();
    assert!(
        found,
        "{name} is not installed: the backend integration tests need it (see PLATFORM.md packages)"
    );
}

/// Runs a command; panics with its stderr when it fails; returns stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like `run`, but returns None on failure.
pub fn try_run(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique short name for this test process.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}",
        std::process::id() % 100_000,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(prefix: &str) -> NetNs {
        require_root();
        let name = unique(prefix);
        run("ip", &["netns", "add", &name]);
        run(
            "ip",
            &["netns", "exec", &name, "ip", "link", "set", "lo", "up"],
        );
        NetNs { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// `ip netns exec NAME CMD ARGS...`, panicking on failure.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> String {
        let mut a = vec!["netns", "exec", &self.name, cmd];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    pub fn try_exec(&self, cmd: &str, args: &[&str]) -> Option<String> {
        let mut a = vec!["netns", "exec", &self.name, cmd];
        a.extend_from_slice(args);
        try_run("ip", &a)
    }

    /// Runs `body` on a fresh thread that joined this namespace, with its own tokio runtime:
    /// sockets the backends open and processes they spawn live in the namespace.
    pub fn block_on<F, Fut>(&self, body: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let ns = File::open(self.path()).expect("open netns file");
        let h = std::thread::spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns into the test namespace");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(body());
        });
        if let Err(p) = h.join() {
            std::panic::resume_unwind(p);
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A cgroup of its own for a stand-in container: the agent confirms a container's process by
/// its cgroup naming the container's id (as Docker's do), so each stand-in gets one named
/// after its made-up id. Created in the unified (v2) hierarchy when there is one, else in v1's
/// `pids`; removed on drop.
pub struct TestCgroup {
    pub id: String,
    dir: PathBuf,
}

fn cgroup_hierarchy() -> PathBuf {
    for dir in [
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup/pids",
    ] {
        let d = PathBuf::from(dir);
        if d.join("cgroup.procs").is_file() {
            return d;
        }
    }
    panic!("no writable cgroup hierarchy under /sys/fs/cgroup (the namespace checks need one)");
}

impl TestCgroup {
    pub fn new() -> TestCgroup {
        let id = unique("topo-test-container-");
        let dir = cgroup_hierarchy().join(&id);
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("failed to create cgroup {}: {e}", dir.display()));
        TestCgroup { id, dir }
    }

    /// Moves process `pid` into the cgroup.
    pub fn adopt(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap_or_else(|e| {
            panic!(
                "failed to move {pid} into cgroup {}: {e}",
                self.dir.display()
            )
        });
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Its processes are gone by now (the sleeper is killed first); retry briefly while
        // the kernel lets go of them.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A process in a network namespace of its own: the stand-in for a container, with a cgroup
/// named after its made-up container id.
pub struct Sleeper {
    child: Child,
    cgroup: Option<TestCgroup>,
}

impl Sleeper {
    /// `unshare --net sleep 600` (unshare execs sleep, so the child's pid is the sleeper's).
    pub fn new() -> Sleeper {
        Self::spawn(None)
    }

    /// The same inside `ns` (so its namespace is a child of nothing in particular; only the
    /// process matters).
    pub fn spawn(in_ns: Option<&NetNs>) -> Sleeper {
        require_root();
        let mut c = match in_ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args([
                    "netns", "exec", &ns.name, "unshare", "--net", "sleep", "600",
                ]);
                c
            }
            None => {
                let mut c = Command::new("unshare");
                c.args(["--net", "sleep", "600"]);
                c
            }
        };
        let child = c
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn unshare --net sleep");
        let mut s = Sleeper {
            child,
            cgroup: None,
        };
        // Wait until the exec happened and the namespace differs from ours.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mine = std::fs::read_link("/proc/self/ns/net").ok();
        loop {
            let theirs = std::fs::read_link(format!("/proc/{}/ns/net", s.pid())).ok();
            let comm =
                std::fs::read_to_string(format!("/proc/{}/comm", s.pid())).unwrap_or_default();
            if theirs.is_some() && theirs != mine && comm.trim() == "sleep" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the stand-in container did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let cgroup = TestCgroup::new();
        cgroup.adopt(s.pid());
        s.cgroup = Some(cgroup);
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The made-up container id its cgroup is named after.
    pub fn container_id(&self) -> String {
        self.cgroup
            .as_ref()
            .map(|c| c.id.clone())
            .unwrap_or_default()
    }

    /// Its namespace as the agent names a container's.
    pub fn ns(&self) -> topo_agent::backend::ContainerNs {
        topo_agent::backend::ContainerNs::new(self.pid(), self.container_id())
    }

    /// Kills the process without reaping it: a zombie, whose pid is not free yet.
    pub fn kill_unreaped(&mut self) {
        let _ = self.child.kill();
        let pid = self.pid();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if state
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the stand-in container {pid} did not turn into a zombie");
    }

    /// Kills and reaps the process: its pid is free for anyone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Runs CMD inside the sleeper's namespace (nsenter; fine in tests).
    pub fn exec(&self, cmd: &str, args: &[&str]) -> String {
        let pid = self.pid().to_string();
        let mut a = vec!["-t", &pid, "-n", cmd];
        a.extend_from_slice(args);
        run("nsenter", &a)
    }

    pub fn try_exec(&self, cmd: &str, args: &[&str]) -> Option<String> {
        let pid = self.pid().to_string();
        let mut a = vec!["-t", &pid, "-n", cmd];
        a.extend_from_slice(args);
        try_run("nsenter", &a)
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The cgroup goes after its process.
        self.cgroup.take();
    }
}

/// Polls `f` every 20 ms until it returns Some or `timeout` passes.
pub async fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn ns_of_pid(pid: u32) -> String {
    format!("/proc/{pid}/ns/net")
}

/// Runs `f` on a thread inside the namespace at `ns`.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(ns).expect("netns file");
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread")
}

/// A TCP server in the namespace at `ns` answering every connection with `body`. (Rust, not
/// busybox: Debian's static busybox wget/nc crash resolving addresses here.)
pub fn serve(ns: &str, port: u16, body: &'static str) {
    let listener = in_ns(ns, move || {
        TcpListener::bind(("0.0.0.0", port)).expect("bind")
    });
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let _ = s.write_all(body.as_bytes());
        }
    });
}

/// What a TCP connection to `addr` from the namespace at `ns` reads, if it connects.
pub fn fetch(ns: &str, addr: &str) -> Option<String> {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    in_ns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
}
