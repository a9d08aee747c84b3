//! A real etcd for integration tests, on the secure path topo runs in production: TLS,
//! client certificates (`--client-cert-auth`), auth enabled, the controller's and the
//! nodes' users and roles created by [`crate::etcd::setup`]. Free loopback ports, a
//! temporary data directory, killed on drop. A missing etcd fails the test.
//!
//! One PKI serves the whole test process ([`shared_pki`]), so a test's HTTP client trusts
//! every controller any test of the binary starts.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::Client;

use crate::etcd::EtcdTls;
use crate::init::{InitOptions, init};
use crate::layout;

pub const ETCD_BIN: &str = "/usr/bin/etcd";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("failed to bind a free loopback port: {e}"))
}

/// Whose etcd identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    Root,
    Controller,
    Node(String),
}

pub struct SecureEtcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pki: PathBuf,
    pub client_port: u16,
    peer_port: u16,
}

static SHARED: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
static NODES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The PKI of this test process (made once; 127.0.0.1 and localhost in every SAN).
pub fn shared_pki() -> PathBuf {
    let dir = SHARED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let o = InitOptions {
            dir: dir.path().to_path_buf(),
            cluster: "test".into(),
            controller_sans: vec!["127.0.0.1".into(), "localhost".into()],
            etcd_sans: vec!["127.0.0.1".into(), "localhost".into()],
            nodes: vec![],
            server: "https://127.0.0.1:8443".into(),
            etcd_endpoints: vec!["https://127.0.0.1:2379".into()],
            days: 30,
            force: false,
        };
        if let Err(err) = init(&o) {
            panic!("failed to make the test PKI: {err}");
        }
        dir
    });
    dir.path().to_path_buf()
}

/// Makes node `name`'s identity in the shared PKI (idempotent, safe across threads).
pub fn ensure_test_node(name: &str) -> PathBuf {
    let dir = shared_pki();
    let _one = NODES.lock().unwrap_or_else(|p| p.into_inner());
    let ca = crate::issue::Ca::load(&layout::ca(&dir)).unwrap_or_else(|e| panic!("test CA: {e}"));
    crate::issue::ensure_node(&dir, &ca, name, "127.0.0.1".parse().ok(), 30, false)
        .unwrap_or_else(|e| panic!("node identity {name}: {e}"));
    dir
}

impl SecureEtcd {
    /// Starts etcd with identities for `nodes`, sets users and roles up and enables auth.
    pub async fn start(nodes: &[&str]) -> SecureEtcd {
        assert!(
            Path::new(ETCD_BIN).exists(),
            "{ETCD_BIN} not found: install etcd-server (apt-get install etcd-server); these tests need a real etcd"
        );
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let pki = shared_pki();
        for n in nodes {
            ensure_test_node(n);
        }
        let mut e = SecureEtcd {
            child: None,
            dir,
            pki,
            client_port: free_port(),
            peer_port: free_port(),
        };
        // A free port is free when chosen, not necessarily when etcd binds it (other tests
        // start etcds at the same time): on "address already in use", new ports, fresh data.
        let mut tries = 0;
        while !e.spawn().await {
            tries += 1;
            assert!(tries < 5, "etcd found its ports taken {tries} times");
            let _ = std::fs::remove_dir_all(e.dir.path().join("data"));
            e.client_port = free_port();
            e.peer_port = free_port();
        }
        let mut root = e.client_as(&Who::Root).await;
        let names: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
        if let Err(err) = crate::etcd::setup(&mut root, &names).await {
            panic!("failed to set etcd's users and roles up: {err:?}");
        }
        e
    }

    pub fn pki_dir(&self) -> PathBuf {
        self.pki.clone()
    }

    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.client_port)
    }

    pub fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint()]
    }

    pub fn tls(&self, who: &Who) -> EtcdTls {
        let dir = self.pki_dir();
        let pair = match who {
            Who::Root => layout::etcd_root(&dir),
            Who::Controller => layout::controller_etcd(&dir),
            Who::Node(n) => layout::node(&dir, n),
        };
        EtcdTls::from_pair(&dir, &pair)
    }

    /// A client with `who`'s identity (connecting does not check permissions).
    pub async fn client_as(&self, who: &Who) -> Client {
        let tls = self.tls(who);
        crate::etcd::connect(&self.endpoints(), &tls)
            .await
            .unwrap_or_else(|e| panic!("failed to connect to the test etcd as {who:?}: {e}"))
    }

    /// The root client: reads and writes everything (for test set-up and inspection).
    pub async fn client(&self) -> Client {
        self.client_as(&Who::Root).await
    }

    /// Adds node `name`'s identity and etcd user after the start.
    pub async fn add_node(&self, name: &str) {
        let dir = self.pki_dir();
        let ca =
            crate::issue::Ca::load(&layout::ca(&dir)).unwrap_or_else(|e| panic!("test CA: {e}"));
        crate::issue::ensure_node(&dir, &ca, name, "127.0.0.1".parse().ok(), 30, false)
            .unwrap_or_else(|e| panic!("node identity: {e}"));
        let mut root = self.client().await;
        crate::etcd::add_node(&mut root, name)
            .await
            .unwrap_or_else(|e| panic!("etcd user of {name}: {e:?}"));
    }

    /// Starts etcd and waits until it answers; false when a port was taken meanwhile.
    async fn spawn(&mut self) -> bool {
        let pki = self.pki_dir();
        let server = layout::etcd_server(&pki);
        let log_path = self.dir.path().join("etcd.log");
        let log = std::fs::File::create(&log_path).unwrap_or_else(|e| panic!("etcd log: {e}"));
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(ETCD_BIN)
            .arg("--name=test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--client-cert-auth")
            .arg(format!(
                "--trusted-ca-file={}",
                layout::ca(&pki).cert.display()
            ))
            .arg(format!("--cert-file={}", server.cert.display()))
            .arg(format!("--key-file={}", server.key.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start etcd: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let tls = self.tls(&Who::Root);
            if let Ok(mut c) = crate::etcd::connect(&self.endpoints(), &tls).await
                && c.status().await.is_ok()
            {
                return true;
            }
            if let Some(ch) = self.child.as_mut()
                && let Ok(Some(status)) = ch.try_wait()
            {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                if log.contains("address already in use") {
                    self.child = None;
                    return false;
                }
                panic!("etcd exited with {status}:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not answer within 30s at {}",
                self.endpoint()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops etcd hard (SIGKILL), keeping its data.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again on the same ports, data and PKI.
    pub async fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn().await,
            "etcd's port {} was taken while it was stopped",
            self.client_port
        );
    }
}

impl Drop for SecureEtcd {
    fn drop(&mut self) {
        self.kill();
    }
}
