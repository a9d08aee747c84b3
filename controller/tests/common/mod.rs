//! Shared helpers for the controller's integration tests: a real etcd (TLS, auth) on free
//! loopback ports with a temporary data dir, and small HTTPS helpers.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use topo_pki::testing::SecureEtcd;

/// A single-member etcd owned by the test on the secure path (TLS, client certificates,
/// auth on, the controller's etcd user); killed on drop. `client()` is etcd's root, for
/// set-up and inspection; the controller under test uses its own identity.
pub struct Etcd(SecureEtcd);

impl Etcd {
    /// Starts etcd and waits until it answers. Panics (fails the test) when etcd is missing:
    /// these tests need the real thing (`apt-get install etcd-server`).
    pub async fn start() -> Etcd {
        Etcd(SecureEtcd::start(&["node1", "node2", "node3"]).await)
    }

    pub fn endpoint(&self) -> String {
        self.0.endpoint()
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

    /// Stops etcd hard (SIGKILL), keeping its data.
    pub fn kill(&mut self) {
        self.0.kill();
    }

    /// Starts etcd again on the same ports and data.
    pub async fn restart(&mut self) {
        self.0.restart().await;
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

    /// How many times each key under `prefix` was written since it was created.
    pub async fn versions(&self, prefix: &str) -> Vec<(String, i64)> {
        let mut c = self.client().await;
        let resp = c
            .get(
                prefix,
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_keys_only(),
                ),
            )
            .await
            .expect("read etcd keys");
        resp.kvs()
            .iter()
            .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.version()))
            .collect()
    }
}

/// Test logging, once per process (RUST_LOG controls it).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// An HTTPS client with the admin identity of the test PKI, and a timeout.
pub fn http() -> reqwest::Client {
    http_as("admin")
}

/// An HTTPS client presenting `who`'s identity (admin, viewer, or a node name), trusting
/// the test CA.
pub fn http_as(who: &str) -> reqwest::Client {
    let dir = topo_pki::testing::shared_pki();
    let pair = match who {
        "admin" => topo_pki::layout::admin(&dir),
        "viewer" => topo_pki::layout::viewer(&dir),
        node => topo_pki::layout::node(&topo_pki::testing::ensure_test_node(node), node),
    };
    let tls = topo_pki::tls::client_config(
        &topo_pki::layout::ca(&dir).cert,
        Some((&pair.cert, &pair.key)),
    )
    .expect("client TLS config");
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("https client")
}

/// An HTTPS client with no credentials (it trusts the test CA).
pub fn http_anonymous() -> reqwest::Client {
    let dir = topo_pki::testing::shared_pki();
    let tls = topo_pki::tls::client_config(&topo_pki::layout::ca(&dir).cert, None)
        .expect("client TLS config");
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("https client")
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
        let target = target.trim_start_matches("https://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let endpoint = format!("https://{}", listener.local_addr().expect("proxy addr"));
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
