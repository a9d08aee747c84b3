//! A cluster on the secure path, as deployed: the PKI made by `topo-pki`'s library, etcd
//! with TLS, client certificates and auth on, the controller's and every node's etcd user
//! and role (`topo_pki::etcd`, as `topo-pki etcd-setup` makes them), and the real
//! `topo-controller` binary over HTTPS. Temporary directory, free loopback ports; the
//! processes are killed when the [`Cluster`] is dropped (the controller first).

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use etcd_client::Client;
use futures::{StreamExt, TryStreamExt};
use topo_schema::keys;

use super::https::Https;

/// The `topo-controller` binary the bench starts (`explicit`, or the one beside this bench's
/// own binary), after checking that it and `etcd` are there.
pub fn binaries(explicit: Option<&Path>, etcd: &Path) -> Result<PathBuf> {
    let controller = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .context("failed to find this binary's path")?
            .with_file_name("topo-controller"),
    };
    if !controller.exists() {
        bail!(
            "{} not found: build it (cargo build --release -p topo-controller) or pass --controller-bin",
            controller.display()
        );
    }
    if !etcd.exists() {
        bail!("{} not found: install etcd-server", etcd.display());
    }
    Ok(controller)
}

pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("failed to bind an ephemeral port")?;
    Ok(l.local_addr()?.port())
}

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory removed on drop unless kept (`--keep`).
pub struct TempDir(pub PathBuf, pub bool);

impl TempDir {
    /// A fresh directory under the system's temporary directory.
    pub fn new(prefix: &str, keep: bool) -> Result<TempDir> {
        let dir = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        Ok(TempDir(dir, keep))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.1 {
            eprintln!("kept {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// What to start.
pub struct ClusterSpec<'a> {
    pub dir: &'a Path,
    pub etcd_bin: &'a Path,
    pub controller_bin: &'a Path,
    /// Nodes to make identities and etcd users for, with their addresses.
    pub nodes: Vec<(String, Option<IpAddr>)>,
    pub deadline: Instant,
    /// etcd's `--max-txn-ops`, given to etcd and the controller alike (None: etcd's 128).
    pub max_txn_ops: Option<usize>,
}

/// A running etcd and controller. Fields drop in order: the controller goes before etcd.
pub struct Cluster {
    pub pki: PathBuf,
    pub api: SocketAddr,
    /// etcd's client URL and address.
    pub etcd_endpoint: String,
    pub etcd_addr: SocketAddr,
    /// etcd's root identity, for set-up and inspection.
    pub root: Client,
    /// The API's admin.
    pub https: Https,
    pub controller: Proc,
    pub etcd: Proc,
}

impl Cluster {
    /// Starts etcd, makes its users, starts the controller and waits until it leads.
    pub async fn start(spec: ClusterSpec<'_>) -> Result<Cluster> {
        let etcd_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let etcd_endpoint = format!("https://{etcd_addr}");
        let api = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let pki = spec.dir.join("pki");
        topo_pki::init::init(&topo_pki::init::InitOptions {
            dir: pki.clone(),
            cluster: "bench".into(),
            controller_sans: vec!["127.0.0.1".into()],
            etcd_sans: vec!["127.0.0.1".into()],
            nodes: spec.nodes.clone(),
            server: format!("https://{api}"),
            etcd_endpoints: vec![etcd_endpoint.clone()],
            days: 2,
            force: false,
        })?;
        let etcd = start_etcd(&spec, &pki, &etcd_endpoint)?;
        let mut root = connect_root(&spec, &pki, &etcd_endpoint).await?;
        let names: Vec<String> = spec.nodes.iter().map(|(n, _)| n.clone()).collect();
        add_nodes(&root, &names).await?;
        topo_pki::etcd::setup(&mut root, &[]).await?;
        let controller = start_controller(&spec, &pki, &etcd_endpoint, api)?;
        let https = Https::admin(&pki)?;
        let cluster = Cluster {
            pki,
            api,
            etcd_endpoint,
            etcd_addr,
            root,
            https,
            controller,
            etcd,
        };
        cluster.wait_leading(&spec).await?;
        Ok(cluster)
    }

    /// Until the API answers and the controller won the election (before any clock starts).
    async fn wait_leading(&self, spec: &ClusterSpec<'_>) -> Result<()> {
        loop {
            if let Ok((200, _)) = self.https.request(self.api, "GET", "/healthz", None).await {
                break;
            }
            if Instant::now() > spec.deadline {
                bail!(
                    "the controller did not answer (see {})",
                    spec.dir.join("controller.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        loop {
            let resp = self.root.kv_client().get(keys::leader(), None).await?;
            if !resp.kvs().is_empty() {
                return Ok(());
            }
            if Instant::now() > spec.deadline {
                bail!("the controller did not take the lead");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn start_etcd(spec: &ClusterSpec<'_>, pki: &Path, endpoint: &str) -> Result<Proc> {
    let peer = format!("http://127.0.0.1:{}", free_port()?);
    let etcd_log = std::fs::File::create(spec.dir.join("etcd.log"))?;
    let server = topo_pki::layout::etcd_server(pki);
    Ok(Proc(
        Command::new(spec.etcd_bin)
            .arg("--name")
            .arg("bench")
            .arg("--data-dir")
            .arg(spec.dir.join("etcd"))
            .arg("--listen-client-urls")
            .arg(endpoint)
            .arg("--advertise-client-urls")
            .arg(endpoint)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("bench={peer}"))
            .arg("--client-cert-auth")
            .arg("--trusted-ca-file")
            .arg(topo_pki::layout::ca(pki).cert)
            .arg("--cert-file")
            .arg(&server.cert)
            .arg("--key-file")
            .arg(&server.key)
            .args(
                spec.max_txn_ops
                    .map(|n| vec!["--max-txn-ops".to_string(), n.to_string()])
                    .unwrap_or_default(),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::from(etcd_log))
            .spawn()
            .context("failed to start etcd")?,
    ))
}

async fn connect_root(spec: &ClusterSpec<'_>, pki: &Path, endpoint: &str) -> Result<Client> {
    let root = topo_pki::etcd::EtcdTls::from_pair(pki, &topo_pki::layout::etcd_root(pki));
    let endpoints = [endpoint.to_string()];
    loop {
        if let Ok(mut c) = topo_pki::etcd::connect(&endpoints, &root).await
            && c.status().await.is_ok()
        {
            return Ok(c);
        }
        if Instant::now() > spec.deadline {
            bail!(
                "etcd did not start (see {})",
                spec.dir.join("etcd.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every node's etcd role and user, several at once (a thousand one after the other is a
/// thousand × eight raft round trips).
async fn add_nodes(root: &Client, names: &[String]) -> Result<()> {
    futures::stream::iter(names)
        .map(|n| {
            let mut c = root.clone();
            async move { topo_pki::etcd::add_node(&mut c, n).await }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

fn start_controller(
    spec: &ClusterSpec<'_>,
    pki: &Path,
    etcd_endpoint: &str,
    api: SocketAddr,
) -> Result<Proc> {
    let ctl_log = std::fs::File::create(spec.dir.join("controller.log"))?;
    Ok(Proc(
        Command::new(spec.controller_bin)
            .arg("--config")
            .arg(topo_pki::layout::controller_config(pki))
            .arg("--etcd-endpoints")
            .arg(etcd_endpoint)
            .arg("--listen")
            .arg(api.to_string())
            .arg("--log")
            // A finer filter for a look inside a run, e.g. `info,topo_controller::commit=debug`.
            .arg(std::env::var("BENCH_CONTROLLER_LOG").unwrap_or_else(|_| "info".into()))
            .args(
                spec.max_txn_ops
                    .map(|n| vec!["--max-txn-ops".to_string(), n.to_string()])
                    .unwrap_or_default(),
            )
            .env("NO_COLOR", "1")
            .stdout(Stdio::from(ctl_log.try_clone()?))
            .stderr(Stdio::from(ctl_log))
            .spawn()
            .context("failed to start the controller")?,
    ))
}
