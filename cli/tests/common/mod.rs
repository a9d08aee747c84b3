//! topoctl's integration harness: a real etcd (TLS, auth) on free loopback ports with a temp
//! data dir, the controller in-process over HTTPS, and the real `topoctl` binary run against
//! them with the admin identity of the test PKI (TOPO_CONFIG).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use topo_schema::api::{Heartbeat, ObservedReport};
use topo_schema::{Kind, ObjectRef, keys};

pub const TOPOCTL: &str = env!("CARGO_BIN_EXE_topoctl");

/// A single-member etcd owned by the test, on the secure path (TLS, client certificates,
/// auth on); killed on drop. `client()` is etcd's root, for playing agents and inspection.
pub struct Etcd(topo_pki::testing::SecureEtcd);

impl Etcd {
    /// Fails the test when etcd is missing: these tests need the real thing.
    pub async fn start() -> Etcd {
        Etcd(topo_pki::testing::SecureEtcd::start(&["node1", "node2"]).await)
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.0.endpoints()
    }

    pub fn pki_dir(&self) -> PathBuf {
        self.0.pki_dir()
    }

    pub async fn client(&self) -> etcd_client::Client {
        self.0.client().await
    }
}

/// The topoctl configuration of `who` (admin.yaml, viewer.yaml from topo-pki init).
pub fn config_of(who: &str) -> PathBuf {
    topo_pki::layout::topoctl_config(&topo_pki::testing::shared_pki(), who)
}

/// etcd, a controller, and a scratch directory for manifests.
pub struct Lab {
    pub server: topo_controller::TestServer,
    pub etcd: Etcd,
    pub dir: tempfile::TempDir,
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A topoctl command with a clean environment (no TOPO_* and a HOME without a config).
pub fn topoctl_command(home: &Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(TOPOCTL);
    cmd.args(args)
        .env_remove("TOPO_SERVER")
        .env_remove("TOPO_CONFIG")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("KUBE_EDITOR")
        .env_remove("EDITOR")
        .env("HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

pub async fn run_command(mut cmd: tokio::process::Command, stdin: &str) -> Out {
    let mut child = cmd.spawn().expect("run topoctl");
    if let Some(mut si) = child.stdin.take() {
        let _ = si.write_all(stdin.as_bytes()).await;
    }
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("topoctl finished within 120s")
        .expect("topoctl output");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Lab {
    pub async fn start() -> Lab {
        let etcd = Etcd::start().await;
        let server = topo_controller::serve_for_test(&etcd.endpoints(), &etcd.pki_dir())
            .await
            .expect("start the controller");
        Lab {
            server,
            etcd,
            dir: tempfile::tempdir().expect("scratch dir"),
        }
    }

    pub fn url(&self) -> &str {
        &self.server.url
    }

    pub fn write(&self, name: &str, content: &str) -> String {
        let p: PathBuf = self.dir.path().join(name);
        std::fs::write(&p, content).expect("write manifest");
        p.display().to_string()
    }

    /// Runs topoctl against this lab's controller.
    pub async fn topoctl(&self, args: &[&str]) -> Out {
        self.topoctl_stdin(args, "").await
    }

    pub async fn topoctl_stdin(&self, args: &[&str], stdin: &str) -> Out {
        self.topoctl_as("admin", args, stdin).await
    }

    /// Runs topoctl with `who`'s configuration (admin, viewer) against this controller.
    pub async fn topoctl_as(&self, who: &str, args: &[&str], stdin: &str) -> Out {
        let mut all = vec!["--server", self.url()];
        all.extend_from_slice(args);
        let mut cmd = topoctl_command(self.dir.path(), &all);
        cmd.env("TOPO_CONFIG", config_of(who));
        run_command(cmd, stdin).await
    }

    /// Runs topoctl as admin with extra environment (an $EDITOR, say).
    pub async fn topoctl_env(&self, args: &[&str], envs: &[(&str, &str)]) -> Out {
        let mut all = vec!["--server", self.url()];
        all.extend_from_slice(args);
        let mut cmd = topoctl_command(self.dir.path(), &all);
        cmd.env("TOPO_CONFIG", config_of("admin"));
        for (k, v) in envs {
            cmd.env(k, v);
        }
        run_command(cmd, "").await
    }

    /// Writes an executable shell script (an $EDITOR for `topoctl edit`).
    pub fn script(&self, name: &str, body: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = self.write(name, &format!("#!/bin/sh\nset -e\n{body}"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("make the script executable");
        path
    }

    /// Spawns topoctl (for --wait and -w), output piped.
    pub fn spawn(&self, args: &[&str]) -> tokio::process::Child {
        let mut all = vec!["--server", self.url()];
        all.extend_from_slice(args);
        let mut cmd = topoctl_command(self.dir.path(), &all);
        cmd.env("TOPO_CONFIG", config_of("admin"));
        cmd.spawn().expect("spawn topoctl")
    }

    /// Plays a node agent: a heartbeat for `node`.
    pub async fn heartbeat(&self, node: &str) {
        let hb = Heartbeat {
            node: node.into(),
            agent_version: "fake-0.1".into(),
            started: chrono::Utc::now(),
        };
        let mut c = self.etcd.client().await;
        c.put(
            keys::heartbeat(node),
            serde_json::to_string(&hb).expect("heartbeat json"),
            None,
        )
        .await
        .expect("write heartbeat");
    }

    /// Plays a node agent: reports `object` on `node` as ready (or not) at `generation`.
    pub async fn report(
        &self,
        node: &str,
        object: ObjectRef,
        generation: i64,
        ready: bool,
        reason: &str,
    ) {
        let rep = ObservedReport {
            uid: None,
            object: object.clone(),
            observed_generation: generation,
            ready,
            reason: reason.into(),
            message: format!("fake agent says {reason}"),
            container_id: (object.kind == Kind::Container).then(|| "feedc0ffee0123456789".into()),
            restart_count: 0,
            endpoint: None,
            time: chrono::Utc::now(),
        };
        let mut c = self.etcd.client().await;
        c.put(
            keys::report(node, object.kind, &object.name),
            serde_json::to_string(&rep).expect("report json"),
            None,
        )
        .await
        .expect("write report");
    }

    /// Retries `f` until it returns true, for up to `secs` seconds.
    pub async fn eventually<F, Fut>(&self, secs: u64, what: &str, mut f: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if f().await {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

pub const BASE: &str = "\
apiVersion: topo.dev/v1alpha1
kind: Node
metadata:
  name: node1
  labels: {zone: a}
spec:
  address: 192.168.100.1
---
apiVersion: topo.dev/v1alpha1
kind: Network
metadata:
  name: overlay
spec:
  cidr: 10.2.0.0/16
  blockSize: 24
---
apiVersion: topo.dev/v1alpha1
kind: Container
metadata:
  name: redis
  labels: {app: redis}
spec:
  node: node1
  image: topo/busybox:latest
  command: [httpd, -f, -p, '6379']
  networks:
    - network: overlay
";
