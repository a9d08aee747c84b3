//! `topo-bench`: how long the control plane takes to derive every node's slice for a large
//! manifest, and what it costs.
//!
//! For each run it starts its own etcd (temporary data dir, free loopback ports) and a
//! `topo-controller` subprocess, generates a manifest (nodes, two networks, containers spread
//! evenly, links between containers, and the tunnels of the chosen topology), applies it
//! through the HTTP API and watches the slices prefix until every planned entry is written.
//! It reports the apply time, the time until all slices and all statuses are written, the
//! controller's peak RSS (VmHWM), the bytes of the largest and the median node slice, and how
//! many entries were rewritten after that (should be none). A second, smaller run shows
//! whether the median slice grows with the number of nodes.
//!
//! Topologies: `tree` (default) joins each network's nodes with explicit tunnels in a
//! `--fanout`-ary tree, so a node holds at most fanout+1 GRE ports per network whatever the
//! cluster size; `mesh` lets the controller derive a full mesh (N-1 ports per node per
//! network, N(N-1)/2 Tunnel objects): use it with small sizes to see that growth.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, ValueEnum};
use etcd_client::{EventType, GetOptions, WatchOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use topo_controller::ipam;
use topo_controller::planner::{self, Desired};
use topo_schema::api::{ApplyRequest, SourceFile};
use topo_schema::keys;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TopologyArg {
    Tree,
    Mesh,
}

/// Measures slice derivation for a large manifest against a real etcd.
#[derive(Debug, Parser)]
#[command(name = "topo-bench")]
struct Args {
    /// Nodes in the main run.
    #[arg(long, default_value_t = 500)]
    nodes: usize,
    /// Containers in the main run.
    #[arg(long, default_value_t = 10_000)]
    containers: usize,
    /// Links in the main run.
    #[arg(long, default_value_t = 10_000)]
    links: usize,
    /// Nodes in the comparison run (0: skip it).
    #[arg(long, default_value_t = 100)]
    small_nodes: usize,
    /// Containers in the comparison run.
    #[arg(long, default_value_t = 2_000)]
    small_containers: usize,
    /// Links in the comparison run.
    #[arg(long, default_value_t = 2_000)]
    small_links: usize,
    /// How the nodes of each network are joined.
    #[arg(long, value_enum, default_value_t = TopologyArg::Tree)]
    topology: TopologyArg,
    /// Children per node in the tree topology.
    #[arg(long, default_value_t = 4)]
    fanout: usize,
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd_bin: PathBuf,
    /// The controller binary (default: topo-controller next to this binary).
    #[arg(long)]
    controller_bin: Option<PathBuf>,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Keep the temporary directories (etcd data, controller log).
    #[arg(long)]
    keep: bool,
}

#[derive(Debug, Clone, Copy)]
struct Size {
    nodes: usize,
    containers: usize,
    links: usize,
}

#[derive(Debug, Default)]
struct Outcome {
    size_label: String,
    nodes: usize,
    containers: usize,
    links: usize,
    tunnels: usize,
    objects: usize,
    manifest_bytes: usize,
    entries: usize,
    apply: Duration,
    slices: Duration,
    statuses: Option<Duration>,
    peak_rss_kib: u64,
    largest: usize,
    median: usize,
    rewrites: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start tokio")?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let controller_bin = match &args.controller_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("failed to find this binary's path")?
            .with_file_name("topo-controller"),
    };
    if !controller_bin.exists() {
        bail!(
            "{} not found: build it (cargo build --release -p topo-controller) or pass --controller-bin",
            controller_bin.display()
        );
    }
    if !args.etcd_bin.exists() {
        bail!("{} not found: install etcd-server", args.etcd_bin.display());
    }
    let mut sizes = vec![];
    if args.small_nodes > 0 {
        sizes.push((
            "small",
            Size {
                nodes: args.small_nodes,
                containers: args.small_containers,
                links: args.small_links,
            },
        ));
    }
    sizes.push((
        "main",
        Size {
            nodes: args.nodes,
            containers: args.containers,
            links: args.links,
        },
    ));
    let mut outcomes = vec![];
    for (label, size) in sizes {
        eprintln!(
            "== {label} run: {} nodes, {} containers, {} links",
            size.nodes, size.containers, size.links
        );
        let mut o = bench_one(&args, &controller_bin, size)
            .await
            .with_context(|| format!("the {label} run failed"))?;
        o.size_label = label.to_string();
        outcomes.push(o);
    }
    println!("{}", report(&args, &outcomes));
    Ok(())
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("failed to bind an ephemeral port")?;
    Ok(l.local_addr()?.port())
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct TempDir(PathBuf, bool);

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.1 {
            eprintln!("kept {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn bench_one(args: &Args, controller_bin: &Path, size: Size) -> Result<Outcome> {
    let dir = std::env::temp_dir().join(format!(
        "topo-bench-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let dir = TempDir(dir, args.keep);
    let deadline = Instant::now() + Duration::from_secs(args.timeout);

    // The manifest, and what the planner will make of it (checked offline first).
    let (manifest, tunnels) = generate(size, args.topology, args.fanout);
    let docs = topo_schema::manifest::parse_file("bench.yaml", &manifest).map_err(|causes| {
        anyhow!(
            "the generated manifest is invalid: {}",
            causes
                .iter()
                .take(5)
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    let resources: Vec<_> = docs.into_iter().map(|d| d.resource).collect();
    let changed: Vec<_> = resources.iter().map(|r| r.object_ref()).collect();
    let assignment = ipam::plan(
        resources.iter(),
        &changed,
        &Default::default(),
        &Default::default(),
    )
    .map_err(|e| {
        anyhow!(
            "IPAM cannot satisfy the generated manifest: {:?}",
            e.first()
        )
    })?
    .assignment;
    let plan = planner::plan(
        &Desired::from_resources(resources.iter()),
        &assignment,
        &Default::default(),
    );
    let expected_entries = plan.entry_count();
    let derived = plan.derived_tunnels.len();
    let objects = resources.len() + derived;
    drop(plan);
    drop(resources);

    // The PKI, etcd with TLS, client certificates and auth, the controller over HTTPS: the
    // secure path, as deployed.
    let client_port = free_port()?;
    let peer_port = free_port()?;
    let endpoint = format!("https://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let pki = dir.0.join("pki");
    let api: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    topo_pki::init::init(&topo_pki::init::InitOptions {
        dir: pki.clone(),
        cluster: "bench".into(),
        controller_sans: vec!["127.0.0.1".into()],
        etcd_sans: vec!["127.0.0.1".into()],
        nodes: vec![],
        server: format!("https://{api}"),
        etcd_endpoints: vec![endpoint.clone()],
        days: 2,
        force: false,
    })?;
    let etcd_log = std::fs::File::create(dir.0.join("etcd.log"))?;
    let server = topo_pki::layout::etcd_server(&pki);
    let _etcd = Proc(
        Command::new(&args.etcd_bin)
            .arg("--name")
            .arg("bench")
            .arg("--data-dir")
            .arg(dir.0.join("etcd"))
            .arg("--listen-client-urls")
            .arg(&endpoint)
            .arg("--advertise-client-urls")
            .arg(&endpoint)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("bench={peer}"))
            .arg("--client-cert-auth")
            .arg("--trusted-ca-file")
            .arg(topo_pki::layout::ca(&pki).cert)
            .arg("--cert-file")
            .arg(&server.cert)
            .arg("--key-file")
            .arg(&server.key)
            .stdout(Stdio::null())
            .stderr(Stdio::from(etcd_log))
            .spawn()
            .context("failed to start etcd")?,
    );
    let root = topo_pki::etcd::EtcdTls::from_pair(&pki, &topo_pki::layout::etcd_root(&pki));
    let endpoints = [endpoint.clone()];
    let mut client = loop {
        if let Ok(mut c) = topo_pki::etcd::connect(&endpoints, &root).await
            && c.status().await.is_ok()
        {
            break c;
        }
        if Instant::now() > deadline {
            bail!(
                "etcd did not start (see {})",
                dir.0.join("etcd.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    topo_pki::etcd::setup(&mut client, &[]).await?;

    // The controller.
    let ctl_log = std::fs::File::create(dir.0.join("controller.log"))?;
    let controller = Proc(
        Command::new(controller_bin)
            .arg("--config")
            .arg(topo_pki::layout::controller_config(&pki))
            .arg("--etcd-endpoints")
            .arg(&endpoint)
            .arg("--listen")
            .arg(api.to_string())
            .arg("--log")
            .arg("info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::from(ctl_log.try_clone()?))
            .stderr(Stdio::from(ctl_log))
            .spawn()
            .context("failed to start the controller")?,
    );
    let pid = controller.0.id();
    let https = Https::admin(&pki)?;
    loop {
        if let Ok((200, _)) = https.request(api, "GET", "/healthz", None).await {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the controller did not answer (see {})",
                dir.0.join("controller.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let it win the election before the clock starts.
    loop {
        let resp = client.kv_client().get(keys::leader(), None).await?;
        if !resp.kvs().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Watch the slices from now on.
    let start_rev = client
        .kv_client()
        .get("/", Some(GetOptions::new().with_count_only()))
        .await?
        .header()
        .map(|h| h.revision())
        .unwrap_or(0);
    let mut wc = client
        .watch_client()
        .max_decoding_message_size(256 * 1024 * 1024);
    let (_w, mut stream) = wc
        .watch(
            keys::slices_prefix(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(start_rev + 1),
            ),
        )
        .await
        .context("failed to watch the slices")?
        .split();

    // Requests stay under the API's body limit (as a user splits a large manifest): nodes,
    // networks and tunnels come first in the manifest, so every chunk's references resolve.
    let bodies = apply_bodies(&manifest)?;
    let manifest_bytes = bodies.iter().map(Vec::len).sum();
    eprintln!("   applying in {} request(s)", bodies.len());
    let started = Instant::now();
    let mut apply = tokio::spawn(async move {
        for body in bodies {
            // A 503 is etcd slower than the controller's 5 s request deadline (a loaded
            // machine): the apply is declarative, so sending it again is what a script does.
            let mut tries = 0;
            loop {
                let r = https
                    .request(
                        api,
                        "POST",
                        "/apis/topo.dev/v1alpha1/apply",
                        Some(body.clone()),
                    )
                    .await;
                match r {
                    Ok((200, _)) => break,
                    Ok((503, _)) if tries < 5 => {
                        tries += 1;
                        eprintln!("   apply answered 503 (etcd slow); sending it again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    _ => return (r, started.elapsed()),
                }
            }
        }
        (Ok((200, Vec::new())), started.elapsed())
    });

    let mut puts: HashMap<String, usize> = HashMap::new();
    let mut apply_done = None;
    while puts.len() < expected_entries {
        if Instant::now() > deadline {
            bail!(
                "timed out with {} of {expected_entries} slice entries written",
                puts.len()
            );
        }
        // A refused apply ends the run at once, with the API's answer.
        if apply_done.is_none() && apply.is_finished() {
            let (result, took) = (&mut apply).await?;
            check_apply(result)?;
            apply_done = Some(took);
        }
        let Ok(msg) = tokio::time::timeout(Duration::from_millis(500), stream.message()).await
        else {
            continue;
        };
        let msg = msg?.ok_or_else(|| anyhow!("the slice watch ended"))?;
        for ev in msg.events() {
            if let (EventType::Put, Some(kv)) = (ev.event_type(), ev.kv()) {
                *puts.entry(kv.key_str()?.to_string()).or_default() += 1;
            }
        }
    }
    let slices = started.elapsed();
    let apply_time = match apply_done {
        Some(t) => t,
        None => {
            let (result, took) = apply.await?;
            check_apply(result)?;
            took
        }
    };
    eprintln!("   all {expected_entries} slice entries written after {slices:.2?}");

    // Statuses: one per object, written once the leader folded them.
    let mut statuses = None;
    while Instant::now() < deadline {
        let n = client
            .kv_client()
            .get(
                keys::all_status_prefix(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await?
            .count() as usize;
        if n >= objects {
            statuses = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Settle, then count entries written more than once (agents would see those as events).
    tokio::time::sleep(Duration::from_secs(2)).await;
    while let Ok(msg) = tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
        let Some(msg) = msg? else { break };
        for ev in msg.events() {
            if let (EventType::Put, Some(kv)) = (ev.event_type(), ev.kv()) {
                *puts.entry(kv.key_str()?.to_string()).or_default() += 1;
            }
        }
    }
    let rewrites = puts.values().map(|n| n - 1).sum();
    let peak_rss_kib = vm_hwm(pid).unwrap_or(0);

    // Slice sizes per node, from etcd.
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    let mut kv = client
        .kv_client()
        .max_decoding_message_size(512 * 1024 * 1024);
    let resp = kv
        .get(keys::slices_prefix(), Some(GetOptions::new().with_prefix()))
        .await?;
    for item in resp.kvs() {
        let key = item.key_str()?;
        let node = key
            .strip_prefix(&keys::slices_prefix())
            .and_then(|r| r.split('/').next())
            .unwrap_or_default();
        *per_node.entry(node.to_string()).or_default() += item.value().len();
    }
    let mut sizes: Vec<usize> = per_node.values().copied().collect();
    sizes.sort_unstable();
    drop(controller);
    Ok(Outcome {
        size_label: String::new(),
        nodes: size.nodes,
        containers: size.containers,
        links: size.links,
        tunnels: tunnels + derived,
        objects,
        manifest_bytes,
        entries: expected_entries,
        apply: apply_time,
        slices,
        statuses,
        peak_rss_kib,
        largest: sizes.last().copied().unwrap_or(0),
        median: sizes.get(sizes.len() / 2).copied().unwrap_or(0),
        rewrites,
    })
}

/// The apply request bodies for `manifest`: its documents in order, each body about 1 MiB
/// (an eighth of the API's limit: small enough that each apply's etcd transactions stay well
/// inside the controller's 5 s deadline on a loaded machine).
fn apply_bodies(manifest: &str) -> Result<Vec<Vec<u8>>> {
    let limit = topo_schema::api::MAX_BODY_BYTES / 8;
    let mut chunks: Vec<String> = Vec::new();
    let mut chunk = String::new();
    for doc in manifest.split("---\n").filter(|d| !d.trim().is_empty()) {
        if !chunk.is_empty() && chunk.len() + doc.len() + 4 > limit {
            chunks.push(std::mem::take(&mut chunk));
        }
        chunk.push_str("---\n");
        chunk.push_str(doc);
    }
    chunks.push(chunk);
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, content)| {
            Ok(serde_json::to_vec(&ApplyRequest {
                files: vec![SourceFile {
                    name: format!("bench-{i}.yaml"),
                    content,
                }],
                dry_run: false,
            })?)
        })
        .collect()
}

/// An error carrying the API's answer when the apply was refused.
fn check_apply(result: Result<(u16, Vec<u8>)>) -> Result<()> {
    let (status, resp) = result?;
    if status != 200 {
        bail!(
            "apply answered {status}: {}",
            String::from_utf8_lossy(&resp[..resp.len().min(2000)])
        );
    }
    Ok(())
}

/// Peak resident set of `pid`, in KiB.
fn vm_hwm(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A bare HTTP/1.1 client over TLS with the admin identity (`Connection: close`).
struct Https(tokio_rustls::TlsConnector);

impl Https {
    fn admin(pki: &std::path::Path) -> Result<Https> {
        let admin = topo_pki::layout::admin(pki);
        let cfg = topo_pki::tls::client_config(
            &topo_pki::layout::ca(pki).cert,
            Some((&admin.cert, &admin.key)),
        )?;
        Ok(Https(tokio_rustls::TlsConnector::from(
            std::sync::Arc::new(cfg),
        )))
    }

    /// The status and the raw body.
    async fn request(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Vec<u8>)> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let mut s = self.0.connect(name, tcp).await?;
        let body = body.unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await?;
        s.write_all(&body).await?;
        let mut resp = vec![];
        // A server that closes without close_notify still sent the whole response.
        match s.read_to_end(&mut resp).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !resp.is_empty() => {}
            Err(e) => return Err(e.into()),
        }
        let text = String::from_utf8_lossy(&resp[..resp.len().min(64)]);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("malformed HTTP response"))?;
        let split = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4)
            .unwrap_or(resp.len());
        Ok((status, resp[split..].to_vec()))
    }
}

/// The bench manifest: `nodes` nodes, networks `net-a` (every container) and `net-b` (half of
/// each node's containers, some with static addresses), containers spread evenly, links from
/// each container to a pseudo-random other one (every tenth with an alias), and for the tree
/// topology the explicit tunnels. Returns the YAML and the number of Tunnel objects in it.
fn generate(size: Size, topology: TopologyArg, fanout: usize) -> (String, usize) {
    let Size {
        nodes,
        containers,
        links,
    } = size;
    let mut y = String::with_capacity(containers * 260 + links * 200);
    let topo = match topology {
        TopologyArg::Tree => "explicit",
        TopologyArg::Mesh => "mesh",
    };
    let node_name = |n: usize| format!("node-{n:04}");
    for n in 0..nodes {
        let _ = write!(
            y,
            "---\napiVersion: topo.dev/v1alpha1\nkind: Node\nmetadata: {{name: {}}}\nspec: {{address: 10.255.{}.{}, datapath: netdev}}\n",
            node_name(n),
            n / 250,
            n % 250 + 1
        );
    }
    for (net, cidr, prefix) in [("net-a", "10.0.0.0/8", 8), ("net-b", "172.16.0.0/12", 12)] {
        // /24 blocks, or narrower ones when the cidr has fewer /24s than there are nodes
        // (a /12 holds 4,096: the 5,000-node run needs /25s in net-b).
        let block = (24..=28)
            .find(|b| 1usize << (b - prefix) >= nodes)
            .unwrap_or(28);
        let _ = write!(
            y,
            "---\napiVersion: topo.dev/v1alpha1\nkind: Network\nmetadata: {{name: {net}}}\nspec: {{cidr: {cidr}, blockSize: {block}, topology: {topo}}}\n"
        );
    }
    let mut tunnels = 0;
    if topology == TopologyArg::Tree {
        for net in ["net-a", "net-b"] {
            for n in 1..nodes {
                let parent = (n - 1) / fanout.max(1);
                let _ = write!(
                    y,
                    "---\napiVersion: topo.dev/v1alpha1\nkind: Tunnel\nmetadata: {{name: {net}-{n:04}}}\nspec: {{network: {net}, nodes: [{}, {}]}}\n",
                    node_name(parent),
                    node_name(n)
                );
                tunnels += 1;
            }
        }
    }
    let nodes = nodes.max(1);
    for i in 0..containers {
        let node = i % nodes;
        let round = i / nodes;
        let mut nets = String::from("{network: net-a}");
        if round % 2 == 0 {
            if i % 50 == 0 {
                let _ = write!(
                    nets,
                    ", {{network: net-b, ip: 172.31.{}.{}}}",
                    // Every 50th container: one address each, unique up to 51,200 of them.
                    (i / 50) / 200,
                    (i / 50) % 200 + 2
                );
            } else {
                nets.push_str(", {network: net-b}");
            }
        }
        let ports = if i % 20 == 0 {
            format!(
                ", ports: [{{containerPort: 80, hostPort: {}}}]",
                30000 + round
            )
        } else {
            String::new()
        };
        let _ = write!(
            y,
            "---\napiVersion: topo.dev/v1alpha1\nkind: Container\nmetadata: {{name: c-{i:05}, labels: {{app: bench}}}}\nspec: {{node: {}, image: topo/busybox:latest, command: [httpd, -f, -p, \"80\"], env: {{ROLE: worker}}, networks: [{nets}]{ports}}}\n",
            node_name(node)
        );
    }
    let containers = containers.max(2);
    for i in 0..links {
        let from = i % containers;
        let mut to = (i.wrapping_mul(7919) + 13) % containers;
        if to == from {
            to = (to + 1) % containers;
        }
        let port = 6000 + i / containers;
        let alias = if i % 10 == 0 {
            ", alias: svc".to_string()
        } else {
            String::new()
        };
        let _ = write!(
            y,
            "---\napiVersion: topo.dev/v1alpha1\nkind: Link\nmetadata: {{name: l-{i:05}}}\nspec: {{from: c-{from:05}, to: {{container: c-{to:05}, port: {port}}}{alias}}}\n"
        );
    }
    (y, tunnels)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|kib| format!("{:.0} GiB", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem}")
}

fn report(args: &Args, outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### topo-bench: slice derivation ({} topology{})\n",
        match args.topology {
            TopologyArg::Tree => "explicit tree",
            TopologyArg::Mesh => "mesh",
        },
        if args.topology == TopologyArg::Tree {
            format!(", fanout {}", args.fanout)
        } else {
            String::new()
        }
    );
    let _ = writeln!(s, "Machine: {}\n", machine());
    let _ = writeln!(
        s,
        "| run | nodes | containers | links | tunnels | objects | manifest | slice entries | apply (HTTP) | all slices written | all statuses written | controller peak RSS | largest node slice | median node slice | rewrites after done |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for o in outcomes {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {:.1} MiB | {} | {:.2} s | {:.2} s | {} | {:.0} MiB | {:.1} KiB | {:.1} KiB | {} |",
            o.size_label,
            o.nodes,
            o.containers,
            o.links,
            o.tunnels,
            o.objects,
            o.manifest_bytes as f64 / 1048576.0,
            o.entries,
            o.apply.as_secs_f64(),
            o.slices.as_secs_f64(),
            o.statuses
                .map(|d| format!("{:.2} s", d.as_secs_f64()))
                .unwrap_or_else(|| "timed out".into()),
            o.peak_rss_kib as f64 / 1024.0,
            o.largest as f64 / 1024.0,
            o.median as f64 / 1024.0,
            o.rewrites,
        );
    }
    s
}
