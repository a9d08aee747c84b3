//! Shared helpers for the controller's integration tests: a real etcd on free loopback ports
//! with a temporary data dir, and small HTTP helpers.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ETCD_BIN: &str = "/usr/bin/etcd";

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A single-member etcd owned by the test; killed on drop.
pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub endpoint: String,
    client_port: u16,
    peer_port: u16,
}

impl Etcd {
    /// Starts etcd and waits until it answers. Panics (fails the test) when etcd is missing:
    /// these tests need the real thing (`apt-get install etcd-server`).
    pub async fn start() -> Etcd {
        assert!(
            std::path::Path::new(ETCD_BIN).exists(),
            "{ETCD_BIN} not found: install etcd-server (apt-get install etcd-server) to run the controller tests"
        );
        let dir = tempfile::tempdir().expect("temp dir for etcd");
        let mut e = Etcd {
            child: None,
            dir,
            endpoint: String::new(),
            client_port: free_port(),
            peer_port: free_port(),
        };
        e.endpoint = format!("http://127.0.0.1:{}", e.client_port);
        e.spawn().await;
        e
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    async fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).expect("etcd log file");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(ETCD_BIN)
            .arg("--name")
            .arg("test")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg(&self.endpoint)
            .arg("--advertise-client-urls")
            .arg(&self.endpoint)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("test={peer}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("failed to start etcd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut c) = etcd_client::Client::connect([self.endpoint.as_str()], None).await
                && c.status().await.is_ok()
            {
                return;
            }
            if let Some(ch) = self.child.as_mut()
                && let Ok(Some(status)) = ch.try_wait()
            {
                let log =
                    std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
                panic!("etcd exited with {status}:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not answer within 30s at {}",
                self.endpoint
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint.clone()]
    }

    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint.as_str()], None)
            .await
            .expect("connect to test etcd")
    }

    /// Stops etcd hard (SIGKILL), keeping its data.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again on the same ports and data.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Keys (and values) under `prefix`, read directly from etcd.
    pub async fn keys(&self, prefix: &str) -> Vec<(String, String)> {
        let mut c = self.client().await;
        let resp = c
            .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .expect("read etcd");
        resp.kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key_str().unwrap_or("").to_string(),
                    kv.value_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    pub async fn count(&self, prefix: &str) -> usize {
        let mut c = self.client().await;
        let resp = c
            .get(
                prefix,
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_count_only(),
                ),
            )
            .await
            .expect("count etcd keys");
        resp.count() as usize
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Test logging, once per process (RUST_LOG controls it).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// An HTTP client with a timeout.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
}

pub const API: &str = "/apis/topo.dev/v1alpha1";

/// A manifest file for apply.
pub fn apply_body(files: &[(&str, &str)], dry_run: bool) -> serde_json::Value {
    serde_json::json!({
        "files": files.iter().map(|(n, c)| serde_json::json!({"name": n, "content": c})).collect::<Vec<_>>(),
        "dryRun": dry_run,
    })
}

/// Nodes, a network and containers, as YAML.
pub fn node_yaml(name: &str, addr: &str) -> String {
    format!(
        "apiVersion: topo.dev/v1alpha1\nkind: Node\nmetadata:\n  name: {name}\nspec:\n  address: {addr}\n"
    )
}

pub fn network_yaml(name: &str, cidr: &str, block: u8) -> String {
    format!(
        "apiVersion: topo.dev/v1alpha1\nkind: Network\nmetadata:\n  name: {name}\nspec:\n  cidr: {cidr}\n  blockSize: {block}\n"
    )
}

pub fn container_yaml(name: &str, node: &str, network: &str, ip: Option<&str>) -> String {
    let ip = ip.map(|i| format!("\n      ip: {i}")).unwrap_or_default();
    format!(
        "apiVersion: topo.dev/v1alpha1\nkind: Container\nmetadata:\n  name: {name}\n  labels:\n    app: {name}\nspec:\n  node: {node}\n  image: topo/busybox:latest\n  networks:\n    - network: {network}{ip}\n"
    )
}

pub fn docs(parts: &[String]) -> String {
    parts.join("---\n")
}

/// A TCP proxy in front of etcd that a test can cut and restore, to make a client lose
/// etcd deterministically while the test keeps talking to etcd directly.
pub struct Proxy {
    pub endpoint: String,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cuts: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: &str) -> Proxy {
        use std::sync::atomic::Ordering;
        let target = target.trim_start_matches("http://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("proxy addr"));
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cuts, cuts_rx) = tokio::sync::watch::channel(0u64);
        let o = open.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !o.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let mut cut = cuts_rx.clone();
                cut.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy {
            endpoint,
            open,
            cuts,
            task,
        }
    }

    /// Drops every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
