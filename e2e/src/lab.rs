//! One lab (e2e/lab/lab.sh) per test binary, and everything a test does to it.
//!
//! By default the lab runs inside a private network + mount namespace held by a `sleep`
//! process (the "holder"): the lab's fixed names (netns `node1`…, bridge `topo-ul`,
//! 192.168.100.0/24, ports 2379/8080) then never meet another lab on the same machine — a
//! developer's `make lab-up`, or another engineer's lab — and a crashed run leaves nothing in
//! the root namespace. Every command the harness runs enters that namespace with `nsenter`.
//! `TOPO_E2E_ISOLATE=0` runs the lab in the root namespace instead, exactly as `make lab-up`.
//!
//! Environment:
//! - `TOPO_BIN`: where topo-controller, topo-agent, topoctl and topo-pki are (default
//!   `<repo>/target/debug`).
//! - `TOPO_E2E_ISOLATE=0`: no private namespace (see above).
//! - `TOPO_E2E_KEEP=1`: leave the lab up at the end (the command to enter it is printed);
//!   a failed scenario keeps its objects and no further scenario runs.
//! - `TOPO_E2E_DIR`: parent of the labs' state directories (default `/run/topo-e2e`).
//! - `TOPO_E2E_ONLY=a,b`: run only these scenarios (see [`crate::run_scenarios`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io::BufRead;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, SystemTime};

use ipnet::Ipv4Net;
use serde_json::Value;
use topo_schema::api::{Event, Heartbeat, List};
use topo_schema::{Kind, keys};

use crate::cmd::{self, Background, Output};
use crate::parse::{self, PingStats, PortCounters};
use crate::poll::{poll, secs, try_poll};

/// The lab's underlay: node I is 192.168.100.I, the root side .254 (see lab.sh).
pub const UNDERLAY_PREFIX: [u8; 3] = [192, 168, 100];

pub fn node_name(i: u32) -> String {
    format!("node{i}")
}

pub fn node_address(i: u32) -> Ipv4Addr {
    let [a, b, c] = UNDERLAY_PREFIX;
    Ipv4Addr::new(a, b, c, u8::try_from(i).unwrap_or(0))
}

/// Docker's name of a topo container.
pub fn docker_name(container: &str) -> String {
    format!("topo-{container}")
}

/// Default time for one command (a docker exec, an ovs-vsctl, a topoctl get).
const CMD_TIMEOUT: Duration = Duration::from_secs(120);

struct Holder {
    child: Child,
    pidfile: PathBuf,
}

impl Holder {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

pub struct Lab {
    name: String,
    repo: PathBuf,
    bin: PathBuf,
    dir: PathBuf,
    holder: Option<Holder>,
    nodes: AtomicU32,
    exports: BTreeMap<String, String>,
    /// Extra environment of every lab command (so of the daemons lab.sh starts).
    env: Vec<(String, String)>,
    docker_cli: String,
    keep: bool,
    is_down: AtomicBool,
}

fn env_flag(name: &str, default: bool) -> bool {
    match std::env::var(name) {
        Ok(v) => !matches!(v.trim(), "0" | "false" | "no" | ""),
        Err(_) => default,
    }
}

fn in_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| fs::metadata(d.join(tool)).is_ok_and(|m| m.is_file()))
    })
}

fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// `/proc/PID/cmdline` with NULs as spaces, when the process exists.
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        String::from_utf8_lossy(&raw)
            .split('\0')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Alive and not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(after != 'Z')
        })
        .unwrap_or(false)
}

fn newest_source(dirs: &[PathBuf]) -> Option<SystemTime> {
    let mut newest = None;
    let mut stack: Vec<PathBuf> = dirs.to_vec();
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs")
                && let Ok(t) = e.metadata().and_then(|m| m.modified())
            {
                newest = Some(newest.map_or(t, |n: SystemTime| n.max(t)));
            }
        }
    }
    newest
}

impl Lab {
    /// Brings up a lab of `nodes` hosts for the test binary `name` (after tearing down any
    /// leftover of an earlier run of the same binary). Panics, failing the test, when not
    /// root, when a tool or a topo binary is missing, or when the lab does not come up.
    #[track_caller]
    pub fn up(name: &str, nodes: u32) -> Lab {
        Self::up_full(name, nodes, &[], &[])
    }

    /// [`Lab::up`] with `env` set for every lab command, and so for the agents and the
    /// controller lab.sh starts (`TOPO_IMAGE_PULL_PROGRESS_TIMEOUT=5s`, ...).
    #[track_caller]
    pub fn up_with_env(name: &str, nodes: u32, env: &[(&str, &str)]) -> Lab {
        Self::up_full(name, nodes, &[], env)
    }

    /// [`Lab::up`] with more `lab.sh up` options (`--etcd 3`, `--controllers 2`, ...).
    #[track_caller]
    pub fn up_with(name: &str, nodes: u32, options: &[&str]) -> Lab {
        Self::up_full(name, nodes, options, &[])
    }

    /// [`Lab::up`] with `lab.sh up` options and an environment for every lab command.
    #[track_caller]
    pub fn up_full(name: &str, nodes: u32, options: &[&str], env: &[(&str, &str)]) -> Lab {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let bin = std::env::var_os("TOPO_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo.join("target/debug"));
        let base = std::env::var_os("TOPO_E2E_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/run/topo-e2e"));
        let docker_cli = if Path::new("/usr/bin/docker").exists() {
            "/usr/bin/docker".to_string()
        } else {
            "docker".to_string()
        };
        preflight(&repo, &bin, &docker_cli);
        if let Err(e) = fs::create_dir_all(&base) {
            panic!("failed to create {}: {e}", base.display());
        }
        let isolate = env_flag("TOPO_E2E_ISOLATE", true);
        let holder = isolate.then(|| start_holder(name, &base));
        let mut lab = Lab {
            name: name.to_string(),
            dir: base.join(name),
            repo,
            bin,
            holder,
            nodes: AtomicU32::new(nodes),
            exports: BTreeMap::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            docker_cli,
            keep: env_flag("TOPO_E2E_KEEP", false),
            is_down: AtomicBool::new(false),
        };
        // From here on, a panic drops `lab`, which tears down whatever came up.
        lab.bring_up(nodes, options);
        lab
    }

    fn bring_up(&mut self, nodes: u32, options: &[&str]) {
        let leftover = self.lab_sh(&["down"]);
        if !leftover.success() {
            eprintln!(
                "e2e: lab.sh down (leftovers) failed:\n{}",
                leftover.describe_failure()
            );
        }
        let n = nodes.to_string();
        eprintln!(
            "e2e[{}]: lab.sh up --nodes {n} {} (state in {}{})",
            self.name,
            options.join(" "),
            self.dir.display(),
            match &self.holder {
                Some(h) => format!(", private namespace of pid {}", h.pid()),
                None => ", root namespace".to_string(),
            }
        );
        let mut args = vec!["up", "--nodes", &n];
        args.extend_from_slice(options);
        let out = self.run(self.lab_sh_command(&args), Duration::from_secs(600));
        if !out.success() {
            panic!("the lab did not come up:\n{}", out.describe_failure());
        }
        for line in out.stdout.lines() {
            if let Some((k, v)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
                self.exports.insert(k.to_string(), v.to_string());
            }
        }
        for k in [
            "TOPO_SERVER",
            "TOPO_CONFIG",
            "TOPO_ETCD_ENDPOINTS",
            "ETCDCTL_CACERT",
            "ETCDCTL_CERT",
            "ETCDCTL_KEY",
            "DOCKER_HOST",
            "TOPO_LAB_DIR",
        ] {
            if !self.exports.contains_key(k) {
                panic!(
                    "lab.sh up printed no `export {k}=...`; stdout was:\n{}",
                    out.stdout
                );
            }
        }
        eprintln!(
            "e2e[{}]: lab up in {:.1} s",
            self.name,
            out.elapsed.as_secs_f64()
        );
    }

    // ------------------------------------------------------------------ plumbing

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the lab stays up at the end (`TOPO_E2E_KEEP=1`).
    pub fn keep(&self) -> bool {
        self.keep
    }

    pub fn repo(&self) -> &Path {
        &self.repo
    }

    /// Where the topo binaries are (`TOPO_BIN`).
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// What `lab.sh up` exported (`TOPO_SERVER`, `TOPO_LAB_SERVERS`, ...).
    pub fn exports(&self) -> &BTreeMap<String, String> {
        &self.exports
    }

    /// The lab's state directory (`TOPO_LAB_DIR`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn node_dir(&self, node: u32) -> PathBuf {
        self.dir.join(node_name(node))
    }

    pub fn nodes(&self) -> u32 {
        self.nodes.load(Ordering::SeqCst)
    }

    /// `https://192.168.100.254:8443`
    pub fn server(&self) -> &str {
        self.exports
            .get("TOPO_SERVER")
            .map_or("https://192.168.100.254:8443", String::as_str)
    }

    pub fn etcd_endpoints(&self) -> &str {
        self.exports
            .get("TOPO_ETCD_ENDPOINTS")
            .map_or("https://192.168.100.254:2379", String::as_str)
    }

    /// The lab's PKI directory (`topo-pki init`'s layout).
    pub fn pki_dir(&self) -> PathBuf {
        self.dir.join("pki")
    }

    pub fn docker_host(&self) -> String {
        format!("unix://{}/docker.sock", self.dir.display())
    }

    /// The pid whose namespaces the lab lives in (None: the root namespaces).
    pub fn holder_pid(&self) -> Option<u32> {
        self.holder.as_ref().map(Holder::pid)
    }

    /// A command that runs in the lab's namespaces, from the repository root, with the
    /// lab's environment (TOPO_SERVER, TOPO_LAB_DIR, TOPO_BIN, DOCKER_HOST).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = match &self.holder {
            Some(h) => {
                let mut c = Command::new("nsenter");
                c.arg("-t")
                    .arg(h.pid().to_string())
                    .args(["-n", "-m"])
                    .arg(format!("--wd={}", self.repo.display()))
                    .arg("--")
                    .arg(program);
                c
            }
            None => {
                let mut c = Command::new(program);
                c.current_dir(&self.repo);
                c
            }
        };
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c.env("TOPO_LAB_DIR", &self.dir)
            .env("TOPO_BIN", &self.bin)
            .env("TOPO_SERVER", self.server())
            .env("TOPO_ETCD_ENDPOINTS", self.etcd_endpoints())
            .env("DOCKER_HOST", self.docker_host());
        // topoctl as the lab's admin; etcdctl as the controller's etcd user (TLS, auth on).
        for k in [
            "TOPO_CONFIG",
            "ETCDCTL_CACERT",
            "ETCDCTL_CERT",
            "ETCDCTL_KEY",
        ] {
            if let Some(v) = self.exports.get(k) {
                c.env(k, v);
            }
        }
        c
    }

    /// Runs a command; panics only when it cannot start or times out.
    #[track_caller]
    pub fn run(&self, cmd: Command, timeout: Duration) -> Output {
        match cmd::run(cmd, timeout) {
            Ok(o) => o,
            Err(e) => panic!("{e}"),
        }
    }

    /// Runs `program args...` in the lab with the default timeout.
    #[track_caller]
    pub fn sh(&self, program: &str, args: &[&str]) -> Output {
        let mut c = self.command(program);
        c.args(args);
        self.run(c, CMD_TIMEOUT)
    }

    /// Starts a command in the lab that runs in the background.
    #[track_caller]
    pub fn spawn(&self, cmd: Command) -> Background {
        match Background::spawn(cmd) {
            Ok(b) => b,
            Err(e) => panic!("{e}"),
        }
    }

    fn lab_sh_command(&self, args: &[&str]) -> Command {
        let mut c = self.command("bash");
        c.arg(self.repo.join("e2e/lab/lab.sh")).args(args);
        c
    }

    /// `e2e/lab/lab.sh ARGS...` for this lab.
    #[track_caller]
    pub fn lab_sh(&self, args: &[&str]) -> Output {
        self.run(self.lab_sh_command(args), Duration::from_secs(300))
    }

    // ------------------------------------------------------------------ topoctl and the API

    /// topoctl as the tests run it (for commands built by hand: another identity, a
    /// background follow).
    pub fn topoctl_bin(&self) -> PathBuf {
        self.bin.join("topoctl")
    }

    /// `topoctl ARGS...` against the lab's controller.
    #[track_caller]
    pub fn topoctl(&self, args: &[&str]) -> Output {
        let mut c = self.command(self.bin.join("topoctl"));
        c.args(args);
        self.run(c, Duration::from_secs(600))
    }

    /// Writes `yaml` to a temporary file and runs `topoctl apply -f FILE EXTRA...`.
    #[track_caller]
    pub fn apply_raw(&self, yaml: &str, extra: &[&str]) -> Output {
        let file = match tempfile::Builder::new()
            .prefix("topo-e2e-")
            .suffix(".yaml")
            .tempfile()
        {
            Ok(f) => f,
            Err(e) => panic!("failed to create a temporary manifest: {e}"),
        };
        if let Err(e) = fs::write(file.path(), yaml) {
            panic!("failed to write {}: {e}", file.path().display());
        }
        let path = file.path().to_string_lossy().into_owned();
        let mut args = vec!["apply", "-f", path.as_str()];
        args.extend_from_slice(extra);
        self.topoctl(&args)
    }

    /// Applies `yaml` and waits (topoctl's `--wait`) until every object is Ready. Returns the
    /// applied objects (`kind/name`). Panics with diagnostics when it fails.
    #[track_caller]
    pub fn apply(&self, yaml: &str, timeout: Duration) -> Vec<String> {
        let t = format!("{}s", timeout.as_secs());
        let out = self.apply_raw(yaml, &["--wait", "--timeout", &t]);
        if !out.success() {
            panic!(
                "apply failed:\n{}\n\nthe manifest:\n{yaml}\n{}",
                out.describe_failure(),
                self.diagnostics()
            );
        }
        applied_refs(&out.stdout)
    }

    /// Deletes objects (`kind/name`), links and containers first, and waits until the agents
    /// have removed them.
    #[track_caller]
    pub fn delete(&self, refs: &[String], timeout: Duration) -> Result<(), String> {
        let t = format!("{}s", timeout.as_secs());
        for kind in [
            Kind::Link,
            Kind::Container,
            Kind::Tunnel,
            Kind::Network,
            Kind::Node,
        ] {
            let names: Vec<&str> = refs
                .iter()
                .filter_map(|r| r.split_once('/'))
                .filter(|(k, _)| Kind::parse(k) == Some(kind))
                .map(|(_, n)| n)
                .collect();
            if names.is_empty() {
                continue;
            }
            let mut args = vec!["delete", kind.plural()];
            args.extend(names.iter().copied());
            args.extend(["--ignore-not-found", "--wait", "--timeout", &t]);
            let out = self.topoctl(&args);
            if !out.success() {
                return Err(out.describe_failure());
            }
        }
        // `delete --wait` may return before the agents are done (it waits for the objects
        // to leave the API): wait for the hosts too, so the next scenario starts clean.
        try_poll(
            "the agents to remove the deleted objects from the hosts",
            timeout,
            || {
                let left = self.leftovers(refs);
                if left.is_empty() {
                    Ok(())
                } else {
                    Err(left.join("; "))
                }
            },
        )
        .map(|_| ())
    }

    /// What the hosts still hold of the objects `refs` (containers in Docker, network
    /// bridges in OVS); empty when nothing.
    pub fn leftovers(&self, refs: &[String]) -> Vec<String> {
        let mut left = Vec::new();
        for r in refs {
            match r.split_once('/').map(|(k, n)| (Kind::parse(k), n)) {
                Some((Some(Kind::Container), name)) => {
                    let filter = format!(
                        "label={}=container/{name}",
                        topo_schema::slice::owner::OBJECT
                    );
                    let ps = self.docker(&["ps", "-a", "-q", "--filter", &filter]);
                    if !ps.success() || !ps.stdout.trim().is_empty() {
                        left.push(format!("Docker container of {r}: {}", ps.combined().trim()));
                    }
                }
                Some((Some(Kind::Network), name)) => {
                    for n in 1..=self.nodes() {
                        match self.try_bridges_of(n, name) {
                            Ok(bridges) => left.extend(
                                bridges
                                    .iter()
                                    .map(|br| format!("bridge {br} of {r} on node{n}")),
                            ),
                            Err(e) => left.push(e),
                        }
                    }
                }
                _ => {}
            }
        }
        left
    }

    /// `topoctl wait REFS --for=condition=Ready`; panics with diagnostics on timeout.
    #[track_caller]
    pub fn wait_ready(&self, refs: &[&str], timeout: Duration) {
        let t = format!("{}s", timeout.as_secs());
        let mut args = vec!["wait"];
        args.extend_from_slice(refs);
        args.extend(["--for=condition=Ready", "--timeout", &t]);
        let out = self.topoctl(&args);
        if !out.success() {
            panic!("{}\n{}", out.describe_failure(), self.diagnostics());
        }
    }

    /// `topoctl get KIND NAME -o json`.
    pub fn get_json(&self, kind: &str, name: &str) -> Result<Value, String> {
        let out = self.topoctl(&["get", kind, name, "-o", "json"]);
        if !out.success() {
            return Err(out.describe_failure());
        }
        let v: Value = serde_json::from_str(&out.stdout).map_err(|e| {
            format!(
                "topoctl get {kind} {name} -o json is not JSON ({e}): {}",
                out.stdout
            )
        })?;
        // One named object prints the object; accept a one-item List too.
        if v.get("kind").and_then(Value::as_str) == Some("List") {
            return v
                .get("items")
                .and_then(|i| i.get(0))
                .cloned()
                .ok_or_else(|| format!("{kind}/{name} not in {}", out.stdout));
        }
        Ok(v)
    }

    /// `topoctl get KIND -o json` (with a label selector when given): the items.
    pub fn list_json(&self, kind: &str, selector: Option<&str>) -> Result<Vec<Value>, String> {
        let mut args = vec!["get", kind, "-o", "json"];
        if let Some(s) = selector {
            args.extend(["-l", s]);
        }
        let out = self.topoctl(&args);
        if !out.success() {
            return Err(out.describe_failure());
        }
        let v: Value = serde_json::from_str(&out.stdout)
            .map_err(|e| format!("not JSON ({e}): {}", out.stdout))?;
        Ok(v.get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// The object's `status`, or panics.
    #[track_caller]
    pub fn status(&self, kind: &str, name: &str) -> Value {
        match self.get_json(kind, name) {
            Ok(v) => v.get("status").cloned().unwrap_or(Value::Null),
            Err(e) => panic!("{e}"),
        }
    }

    /// The container's address on `network` from its status.
    pub fn try_address(&self, container: &str, network: &str) -> Result<Ipv4Addr, String> {
        let c = self.get_json("container", container)?;
        let a = c
            .pointer(&format!("/status/addresses/{network}"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                format!(
                    "container/{container} has no address on {network} in its status: {}",
                    c.get("status").unwrap_or(&Value::Null)
                )
            })?;
        let ip = a.split('/').next().unwrap_or(a);
        ip.parse()
            .map_err(|e| format!("address {a:?} of container/{container}: {e}"))
    }

    #[track_caller]
    pub fn address(&self, container: &str, network: &str) -> Ipv4Addr {
        self.try_address(container, network)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The block `node` leased in `network` (from the Network's status).
    #[track_caller]
    pub fn block(&self, network: &str, node: u32) -> Ipv4Net {
        let st = self.status("network", network);
        let b = st
            .pointer(&format!("/blocks/{}", node_name(node)))
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("network/{network} has no block for node{node}: {st}"));
        b.parse().unwrap_or_else(|e| panic!("block {b:?}: {e}"))
    }

    /// The container MTU of `network` (from its status).
    #[track_caller]
    pub fn network_mtu(&self, network: &str) -> u32 {
        let st = self.status("network", network);
        st.get("mtu")
            .and_then(Value::as_u64)
            .and_then(|m| u32::try_from(m).ok())
            .unwrap_or_else(|| panic!("network/{network} has no mtu in its status: {st}"))
    }

    /// Every event the controller keeps (the API's JSON, which `topoctl events` shows).
    pub fn events(&self) -> Result<Vec<Event>, String> {
        let url = format!("{}{}/events", self.server(), topo_schema::api::API_PREFIX);
        let pki = self.pki_dir();
        let file = |f: &str| pki.join(f).display().to_string();
        let (ca, cert, key) = (file("ca.crt"), file("admin.crt"), file("admin.key"));
        let out = self.sh(
            "curl",
            &[
                "-sS",
                "--fail",
                "--max-time",
                "20",
                "--cacert",
                &ca,
                "--cert",
                &cert,
                "--key",
                &key,
                &url,
            ],
        );
        if !out.success() {
            return Err(out.describe_failure());
        }
        let list: List<Event> = serde_json::from_str(&out.stdout)
            .map_err(|e| format!("events are not a List of Event ({e}): {}", out.stdout))?;
        Ok(list.items)
    }

    /// What the events are now, to find the ones that come after.
    #[track_caller]
    pub fn event_mark(&self) -> EventMark {
        let evs = self.events().unwrap_or_else(|e| panic!("{e}"));
        EventMark(evs.iter().map(|e| (event_key(e), e.count)).collect())
    }

    /// Events recorded (or repeated) since `mark`.
    pub fn events_since(&self, mark: &EventMark) -> Result<Vec<Event>, String> {
        Ok(self
            .events()?
            .into_iter()
            .filter(|e| e.count > mark.0.get(&event_key(e)).copied().unwrap_or(0))
            .collect())
    }

    /// Waits for an event after `mark` with `reason` that `pred` accepts.
    #[track_caller]
    pub fn wait_event(
        &self,
        mark: &EventMark,
        reason: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Event) -> bool,
    ) -> Event {
        poll(&format!("a {reason} event for {what}"), timeout, || {
            let new = self.events_since(mark)?;
            new.iter()
                .find(|e| e.reason == reason && pred(e))
                .cloned()
                .ok_or_else(|| {
                    if new.is_empty() {
                        "no new event".to_string()
                    } else {
                        new.iter().map(show_event).collect::<Vec<_>>().join(" | ")
                    }
                })
        })
        .0
    }

    /// The node's heartbeat, as its agent last wrote it (None when the lease lapsed).
    pub fn heartbeat(&self, node: u32) -> Result<Option<Heartbeat>, String> {
        self.etcd_json(&keys::heartbeat(&node_name(node)), "a Heartbeat")
    }

    /// The JSON value under an etcd `key` (None when absent); `what` names the expected type
    /// in the error.
    pub fn etcd_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        what: &str,
    ) -> Result<Option<T>, String> {
        let endpoints = format!("--endpoints={}", self.etcd_endpoints());
        let out = self.sh(
            "etcdctl",
            &[
                &endpoints,
                "--dial-timeout=3s",
                "--command-timeout=10s",
                "get",
                key,
                "--print-value-only",
            ],
        );
        if !out.success() {
            return Err(out.describe_failure());
        }
        let v = out.stdout.trim();
        if v.is_empty() {
            return Ok(None);
        }
        serde_json::from_str(v)
            .map(Some)
            .map_err(|e| format!("{key} is not {what} ({e}): {v}"))
    }

    // ------------------------------------------------------------------ Docker and containers

    /// `docker -H unix://DIR/docker.sock ARGS...`
    #[track_caller]
    pub fn docker(&self, args: &[&str]) -> Output {
        let mut c = self.command(&self.docker_cli);
        c.arg("-H").arg(self.docker_host()).args(args);
        self.run(c, CMD_TIMEOUT)
    }

    /// `docker exec topo-CONTAINER ARGS...`
    #[track_caller]
    pub fn exec(&self, container: &str, args: &[&str]) -> Output {
        let mut c = self.command(&self.docker_cli);
        c.arg("-H")
            .arg(self.docker_host())
            .args(["exec", &docker_name(container)])
            .args(args);
        self.run(c, CMD_TIMEOUT)
    }

    /// `docker exec` in the background.
    #[track_caller]
    pub fn exec_bg(&self, container: &str, args: &[&str]) -> Background {
        let mut c = self.command(&self.docker_cli);
        c.arg("-H")
            .arg(self.docker_host())
            .args(["exec", &docker_name(container)])
            .args(args);
        self.spawn(c)
    }

    /// `docker inspect topo-CONTAINER` (None when Docker has no such container).
    pub fn inspect(&self, container: &str) -> Option<Value> {
        let out = self.docker(&["inspect", "--type", "container", &docker_name(container)]);
        if !out.success() {
            return None;
        }
        serde_json::from_str::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.get(0).cloned())
    }

    /// Docker's StartedAt of each topo container of `names` (empty when it has none): a
    /// container restarted or recreated across something shows a new one.
    pub fn started_at(&self, names: &[String]) -> BTreeMap<String, String> {
        names
            .iter()
            .map(|n| {
                let at = self
                    .inspect(n)
                    .and_then(|v| v["State"]["StartedAt"].as_str().map(str::to_string))
                    .unwrap_or_default();
                (n.clone(), at)
            })
            .collect()
    }

    /// The pid of the container's main process (None when it does not run); its
    /// `/proc/PID/ns/net` is the container's network namespace.
    pub fn container_pid(&self, container: &str) -> Option<u32> {
        self.inspect(container)
            .and_then(|v| v.pointer("/State/Pid").and_then(Value::as_u64))
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0)
    }

    /// Runs the host's `ARGS...` (e.g. `ip route add ...`) in the container's network
    /// namespace: the container's own tools run without NET_ADMIN.
    #[track_caller]
    pub fn in_container_netns(&self, container: &str, args: &[&str]) -> Output {
        let pid = self
            .container_pid(container)
            .unwrap_or_else(|| panic!("container {container} is not running"));
        let pid = pid.to_string();
        let mut a = vec!["-t", pid.as_str(), "-n", "--"];
        a.extend_from_slice(args);
        self.sh("nsenter", &a)
    }

    /// `ping -c COUNT -W WAIT [-s SIZE] IP` from inside `from`.
    #[track_caller]
    pub fn ping(&self, from: &str, ip: Ipv4Addr, count: u32, size: Option<u32>) -> PingStats {
        let (c, ip_s) = (count.to_string(), ip.to_string());
        let size_s = size.map(|s| s.to_string());
        let mut args = vec!["ping", "-c", &c, "-W", "2"];
        if let Some(s) = &size_s {
            args.extend(["-s", s]);
        }
        args.push(&ip_s);
        let out = self.exec(from, &args);
        PingStats::parse(&out.stdout).unwrap_or_else(|| {
            panic!(
                "no ping summary from {from} to {ip}:\n{}",
                out.describe_failure()
            )
        })
    }

    /// Polls until one ping from `from` to `ip` is answered; returns how long that took.
    #[track_caller]
    pub fn wait_ping(&self, from: &str, ip: Ipv4Addr, timeout: Duration) -> Duration {
        let ip_s = ip.to_string();
        poll(&format!("{from} to ping {ip}"), timeout, || {
            let out = self.exec(from, &["ping", "-c", "1", "-W", "2", &ip_s]);
            if out.success() {
                Ok(())
            } else {
                Err(out.combined().trim().to_string())
            }
        })
        .1
    }

    /// Fetches `url` from inside `from` with busybox wget (its -T crashes: `timeout` instead).
    pub fn http_get(&self, from: &str, url: &str, timeout_secs: u32) -> Result<String, String> {
        let t = timeout_secs.to_string();
        let out = self.exec(from, &["timeout", &t, "wget", "-q", "-O", "-", url]);
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(out.combined().trim().to_string())
        }
    }

    /// Polls until `url` fetched from `from` answers `expect` (trimmed).
    #[track_caller]
    pub fn wait_http(&self, from: &str, url: &str, expect: &str, timeout: Duration) -> Duration {
        poll(&format!("{from} to fetch {url}"), timeout, || {
            let body = self.http_get(from, url, 10)?;
            if body.trim() == expect {
                Ok(())
            } else {
                Err(format!("body {body:?}"))
            }
        })
        .1
    }

    // ------------------------------------------------------------------ the simulated hosts

    /// `ip netns exec nodeN ARGS...`
    #[track_caller]
    pub fn on_node(&self, node: u32, args: &[&str]) -> Output {
        let ns = node_name(node);
        let mut a = vec!["netns", "exec", ns.as_str()];
        a.extend_from_slice(args);
        self.sh("ip", &a)
    }

    /// The interfaces of node N's namespace: name → ifindex.
    #[track_caller]
    pub fn links(&self, node: u32) -> BTreeMap<String, u32> {
        let out = self
            .sh("ip", &["-n", &node_name(node), "-o", "link", "show"])
            .ok();
        parse::ip_links(&out.stdout)
    }

    /// `ovs-vsctl` against node N's OVSDB.
    #[track_caller]
    pub fn vsctl(&self, node: u32, args: &[&str]) -> Output {
        let db = format!("--db=unix:{}/db.sock", self.node_dir(node).display());
        let mut a = vec![db.as_str(), "--timeout=30"];
        a.extend_from_slice(args);
        self.sh("ovs-vsctl", &a)
    }

    /// `docker run -d --network none --name NAME` of the lab's image, sleeping: a container
    /// no topo object owns (the benches' plain Docker and OVN sides).
    pub fn run_unnetworked(&self, name: &str) {
        self.docker(&[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            name,
            "topo/busybox:latest",
            "sleep",
            "3600",
        ])
        .ok();
    }

    /// `ovs-appctl` on node N's ovs-vswitchd.
    pub fn appctl(&self, node: u32, args: &[&str]) -> Output {
        let ctl = format!("{}/ovs-vswitchd.ctl", self.node_dir(node).display());
        let mut a = vec!["-t", ctl.as_str()];
        a.extend_from_slice(args);
        self.sh("ovs-appctl", &a)
    }

    /// Rows of an OVSDB table of node N (`ovs-vsctl --format=json list TABLE`).
    #[track_caller]
    pub fn ovs_rows(&self, node: u32, table: &str) -> Vec<BTreeMap<String, Value>> {
        let out = self.vsctl(node, &["--format=json", "list", table]).ok();
        parse::ovsdb_rows(&out.stdout).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The bridges on node N that topo made for `network` (by their external_ids: the
    /// controller allocates bridge names, so the name alone does not say).
    #[track_caller]
    pub fn bridges_of(&self, node: u32, network: &str) -> Vec<String> {
        self.try_bridges_of(node, network)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_bridges_of(&self, node: u32, network: &str) -> Result<Vec<String>, String> {
        let out = self.vsctl(node, &["--format=json", "list", "Bridge"]);
        if !out.success() {
            return Err(format!(
                "cannot list node{node}'s bridges: {}",
                out.describe_failure()
            ));
        }
        let owner = format!("network/{network}");
        Ok(parse::ovsdb_rows(&out.stdout)?
            .iter()
            .filter(|row| {
                parse::string_map(row, "external_ids").get(topo_schema::slice::owner::OBJECT)
                    == Some(&owner)
            })
            .filter_map(|row| row.get("name").and_then(Value::as_str).map(str::to_string))
            .collect())
    }

    /// The ports of `bridge` on node N; None when the bridge does not exist.
    #[track_caller]
    pub fn ovs_ports(&self, node: u32, bridge: &str) -> Option<Vec<String>> {
        if self.vsctl(node, &["br-exists", bridge]).code != Some(0) {
            return None;
        }
        let out = self.vsctl(node, &["list-ports", bridge]).ok();
        Some(out.stdout.lines().map(str::to_string).collect())
    }

    /// Live packet counters of every port of `bridge` on node N.
    #[track_caller]
    pub fn port_counters(&self, node: u32, bridge: &str) -> BTreeMap<String, PortCounters> {
        let mgmt = format!("unix:{}/{bridge}.mgmt", self.node_dir(node).display());
        let out = self.sh("ovs-ofctl", &["--names", "dump-ports", &mgmt]).ok();
        parse::dump_ports(&out.stdout)
    }

    /// The MAC addresses that answer an ARP request for host N's underlay address, asked
    /// from the lab's root namespace (broadcasts only, so every interface that would answer
    /// does). One is right: br-phy's (see lab.sh on ARP flux from ul0).
    #[track_caller]
    pub fn underlay_arp_macs(&self, node: u32) -> BTreeSet<String> {
        let ip = node_address(node).to_string();
        let out = self.sh(
            "busybox",
            &["arping", "-b", "-I", "topo-ul", "-c", "2", "-w", "3", &ip],
        );
        parse::arping_macs(&out.stdout)
    }

    /// The MAC address of host N's br-phy (the one its tunnels must be addressed to).
    #[track_caller]
    pub fn underlay_mac(&self, node: u32) -> String {
        let out = self
            .sh(
                "ip",
                &["-n", &node_name(node), "-br", "link", "show", "br-phy"],
            )
            .ok();
        out.stdout
            .split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_ascii_lowercase()
    }

    /// Adds host N (lab.sh add-node) with its agent.
    #[track_caller]
    pub fn add_node(&self, node: u32) {
        self.lab_sh(&["add-node", &node.to_string()]).ok();
        self.nodes.fetch_max(node, Ordering::SeqCst);
    }

    /// Removes host N (lab.sh remove-node): its agent, Open vSwitch, namespace and underlay
    /// port. Its Node object stays in the API.
    #[track_caller]
    pub fn remove_node(&self, node: u32) {
        self.lab_sh(&["remove-node", &node.to_string()]).ok();
        // Hosts are numbered 1..=nodes(): only the last one can leave without a gap.
        let _ = self.nodes.compare_exchange(
            node,
            node.saturating_sub(1),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// The agent's pid on node N, when it runs.
    pub fn agent_pid(&self, node: u32) -> Option<u32> {
        let p: u32 = fs::read_to_string(self.node_dir(node).join("agent.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        pid_alive(p).then_some(p)
    }

    /// Sends `signal` (KILL, TERM, ...) to node N's agent and, for KILL, waits until it died.
    #[track_caller]
    pub fn kill_agent(&self, node: u32, signal: &str) {
        self.lab_sh(&["kill-agent", &node.to_string(), signal]).ok();
    }

    #[track_caller]
    pub fn start_agent(&self, node: u32) {
        self.lab_sh(&["start-agent", &node.to_string()]).ok();
    }

    // ------------------------------------------------------------------ diagnostics, teardown

    /// What to look at when something failed: objects, recent events, the lab's processes,
    /// the last lines of the agents' and the controller's logs.
    pub fn diagnostics(&self) -> String {
        let mut s = String::from("\n========== diagnostics ==========\n");
        let show = |s: &mut String, title: &str, o: Output| {
            s.push_str(&format!("----- {title}\n{}{}\n", o.stdout, o.stderr));
        };
        let mut get = self.command(self.bin.join("topoctl"));
        get.args(["get", "all", "-o", "wide"]);
        if let Ok(o) = cmd::run(get, Duration::from_secs(30)) {
            show(&mut s, "topoctl get all -o wide", o);
        }
        match self.events() {
            Ok(mut evs) => {
                evs.sort_by_key(|e| e.last_timestamp);
                let tail: Vec<String> = evs.iter().rev().take(40).rev().map(show_event).collect();
                s.push_str(&format!(
                    "----- last {} events\n{}\n",
                    tail.len(),
                    tail.join("\n")
                ));
            }
            Err(e) => s.push_str(&format!("----- events: {e}\n")),
        }
        if let Ok(o) = cmd::run(self.lab_sh_command(&["status"]), Duration::from_secs(30)) {
            show(&mut s, "lab.sh status", o);
        }
        // The datapath as ovs-vswitchd runs it: a flow that sends a tunnel's packets to the
        // wrong place shows here and nowhere in OVSDB (RELIABILITY.md, "A node's first tunnel").
        for n in 1..=self.nodes() {
            for args in [&["tnl/ports/show"][..], &["dpctl/dump-flows"]] {
                let out = self.appctl(n, args).combined();
                let lines: Vec<&str> = out.lines().collect();
                let shown = lines.len().min(40);
                s.push_str(&format!(
                    "----- node{n}: ovs-appctl {} ({shown} of {} lines)\n{}\n",
                    args.join(" "),
                    lines.len(),
                    lines[..shown].join("\n")
                ));
            }
        }
        let mut logs = vec![self.dir.join("controller.log")];
        logs.extend((1..=self.nodes()).map(|i| self.node_dir(i).join("agent.log")));
        for l in logs {
            if let Ok(text) = fs::read_to_string(&l) {
                let text = strip_ansi(&text);
                let lines: Vec<&str> = text.lines().collect();
                let from = lines.len().saturating_sub(25);
                s.push_str(&format!(
                    "----- {} (last 25 lines)\n{}\n",
                    l.display(),
                    lines[from..].join("\n")
                ));
            }
        }
        s.push_str("=================================\n");
        s
    }

    /// Copies the lab's logs to `target/e2e-logs/<name>/` (kept after the lab is gone).
    pub fn save_logs(&self) -> PathBuf {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.repo.join("target"));
        let dest = target.join("e2e-logs").join(&self.name);
        let _ = fs::remove_dir_all(&dest);
        let _ = fs::create_dir_all(&dest);
        let mut dirs = vec![(self.dir.clone(), String::new())];
        if let Ok(rd) = fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with("node") && e.path().is_dir() {
                    dirs.push((e.path(), format!("{n}-")));
                }
            }
        }
        for (d, prefix) in dirs {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.ends_with(".log") {
                    let _ = fs::copy(e.path(), dest.join(format!("{prefix}{n}")));
                }
            }
        }
        dest
    }

    /// Tears the lab down now (lab.sh down); the holder namespace stays until drop.
    pub fn down(&self) -> Output {
        let logs = self.save_logs();
        eprintln!("e2e[{}]: logs saved in {}", self.name, logs.display());
        let out = self.run(self.lab_sh_command(&["down"]), Duration::from_secs(300));
        self.is_down.store(true, Ordering::SeqCst);
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep && !self.is_down.load(Ordering::SeqCst) {
            let logs = self.save_logs();
            eprintln!(
                "e2e[{}]: TOPO_E2E_KEEP: lab left up (logs also in {}). Enter it with:\n  {}export TOPO_SERVER={} TOPO_CONFIG={}/pki/admin.yaml DOCKER_HOST={} TOPO_LAB_DIR={}\nand tear it down with:\n  {}TOPO_LAB_DIR={} e2e/lab/lab.sh down{}",
                self.name,
                logs.display(),
                self.holder_pid().map_or(String::new(), |p| format!(
                    "nsenter -t {p} -n -m bash   # then: "
                )),
                self.server(),
                self.dir.display(),
                self.docker_host(),
                self.dir.display(),
                self.holder_pid()
                    .map_or(String::new(), |p| format!("nsenter -t {p} -n -m env ")),
                self.dir.display(),
                self.holder_pid()
                    .map_or(String::new(), |p| format!("; kill {p}")),
            );
            return;
        }
        if !self.is_down.load(Ordering::SeqCst) {
            let out = self.down();
            if !out.success() {
                eprintln!(
                    "e2e[{}]: lab.sh down failed:\n{}",
                    self.name,
                    out.describe_failure()
                );
            }
        }
        if let Some(h) = &mut self.holder {
            let _ = h.child.kill();
            let _ = h.child.wait();
            let _ = fs::remove_file(&h.pidfile);
        }
    }
}

/// Text without terminal colour sequences (ESC [ ... letter).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' && it.peek() == Some(&'[') {
            it.next();
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Events as (object, reason, message): repeats of one event share the key.
#[derive(Debug, Clone, Default)]
pub struct EventMark(BTreeMap<(String, String, String), u32>);

fn event_key(e: &Event) -> (String, String, String) {
    (e.object.to_string(), e.reason.clone(), e.message.clone())
}

pub fn show_event(e: &Event) -> String {
    format!(
        "{} {:?} {} x{} [{}]: {}",
        e.object, e.type_, e.reason, e.count, e.source, e.message
    )
}

/// `kind/name` of each `kind/name created|configured|unchanged` line of `topoctl apply`.
pub fn applied_refs(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let r = it.next()?;
            let action = it.next()?;
            (it.next().is_none()
                && r.contains('/')
                && matches!(action, "created" | "configured" | "unchanged"))
            .then(|| r.to_string())
        })
        .collect()
}

#[track_caller]
fn preflight(repo: &Path, bin: &Path, docker_cli: &str) {
    match effective_uid() {
        Some(0) => {}
        uid => panic!(
            "the end-to-end tests must run as root (they create network namespaces, Open vSwitch, \
             etcd and Docker daemons); effective uid is {uid:?}. Run them as root, e.g. `sudo make test`."
        ),
    }
    let tools = [
        "bash",
        "unshare",
        "nsenter",
        "ip",
        "ovs-vsctl",
        "ovs-ofctl",
        "ovsdb-server",
        "ovs-vswitchd",
        "ovsdb-tool",
        "etcd",
        "etcdctl",
        "dockerd",
        "containerd",
        "curl",
        "busybox",
        "ethtool",
        "timeout",
        "ss",
    ];
    let mut missing: Vec<&str> = tools.into_iter().filter(|t| !in_path(t)).collect();
    if !Path::new(docker_cli).exists() && !in_path(docker_cli) {
        missing.push("docker");
    }
    if !missing.is_empty() {
        panic!(
            "the end-to-end tests need {} (not found in PATH): run `make deps` (e2e/lab/install-deps.sh) as root",
            missing.join(", ")
        );
    }
    let bins = ["topo-controller", "topo-agent", "topoctl", "topo-pki"];
    let absent: Vec<&str> = bins
        .into_iter()
        .filter(|b| !bin.join(b).is_file())
        .collect();
    if !absent.is_empty() {
        panic!(
            "{} not found in {} (TOPO_BIN): build them first with `cargo build --workspace --bins` \
             (`make test` does)",
            absent.join(", "),
            bin.display()
        );
    }
    let oldest_bin = bins
        .iter()
        .filter_map(|b| fs::metadata(bin.join(b)).and_then(|m| m.modified()).ok())
        .min();
    let sources =
        ["schema/src", "controller/src", "node-agent/src", "cli/src"].map(|d| repo.join(d));
    if let (Some(b), Some(s)) = (oldest_bin, newest_source(&sources))
        && s > b
    {
        eprintln!(
            "e2e: warning: a source file is newer than the binaries in {}: run `cargo build --workspace --bins` to test the current code",
            bin.display()
        );
    }
}

/// A process in a fresh network + mount namespace, with its own empty `/run/netns` and `lo`
/// up; the lab lives there. A holder left by an earlier, crashed run of the same binary is
/// killed first (its lab's daemons are found by state directory and stopped by `lab.sh down`).
#[track_caller]
fn start_holder(name: &str, base: &Path) -> Holder {
    let pidfile = base.join(format!("{name}.holder"));
    let marker = format!("topo-e2e-holder:{name}");
    if let Some(pid) = fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        && cmdline(pid).is_some_and(|c| c.starts_with(&marker))
    {
        eprintln!("e2e[{name}]: killing the namespace holder {pid} of an earlier run");
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    let script = "mkdir -p /run/netns && mount -t tmpfs topo-e2e-netns /run/netns && \
                  ip link set lo up && echo ready && exec -a \"$0\" sleep infinity";
    let mut child = Command::new("unshare")
        .args([
            "--net",
            "--mount",
            "--propagation",
            "private",
            "--",
            "bash",
            "-c",
            script,
            &marker,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("failed to start unshare (util-linux): {e}"));
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
    }
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(l) if l.trim() == "ready" => {}
        other => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "failed to make the lab's private namespace with unshare (got {other:?}); TOPO_E2E_ISOLATE=0 runs the lab in the root namespace"
            );
        }
    }
    let _ = fs::write(&pidfile, child.id().to_string());
    Holder { child, pidfile }
}

/// Polls `check` and returns its value, for use with `?` inside other polls.
pub fn try_wait<T>(
    what: &str,
    timeout: Duration,
    check: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    try_poll(what, timeout, check).map(|(v, _)| v)
}

/// Default timeout for the lab to converge after a change (2 cores, debug binaries).
pub fn converge() -> Duration {
    secs(120)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_of_apply_output() {
        let out = "network/overlay created\ncontainer/web1 configured\ncontainer/db unchanged\nwaiting for 4 objects to be Ready (0/4 Ready)\ncontainer/db Ready (2/4)\n4/4 Ready\n";
        assert_eq!(
            applied_refs(out),
            vec!["network/overlay", "container/web1", "container/db"]
        );
    }

    #[test]
    fn ansi() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m x"),
            "2026  INFO x"
        );
    }

    #[test]
    fn addresses() {
        assert_eq!(node_address(3), Ipv4Addr::new(192, 168, 100, 3));
        assert_eq!(docker_name("db"), "topo-db");
    }
}
