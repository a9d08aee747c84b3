//! `scale-bench` (`make bench-scale`): a thousand hollow nodes against the real etcd and the
//! real controller (issue 11).
//!
//! Per size, in a fresh cluster on the secure path (`bench_support::cluster`: etcd with TLS,
//! client certificates and one etcd user and role per node, the `topo-controller` binary):
//! N hollow agents run in this one process, as kubemark's hollow nodes do. Each is the real
//! agent runtime (`topo_agent::agent::run`: registration, heartbeat lease, its own slice
//! watch, workers, reports and events) with its own etcd channel under its own node's
//! identity; only the host is fake (the recording fakes of `topo_agent::backend::fake`).
//! Once every node is registered, heartbeating and synced, the clock starts: the bench
//! manifest of `topo-bench` (two networks joined by a tree of tunnels, containers spread
//! evenly, no links) is applied through the API as the admin in requests of up to 6 MiB, and the
//! run ends when the controller has folded every container's status to Ready.
//!
//! Besides S (apply start → all Ready) it records when the agents had reported every
//! container Ready (so S splits into the agents' part and the controller's folding), the
//! controller's, etcd's and this process's CPU-seconds over S, the controller's peak RSS,
//! etcd's key writes (`etcd_mvcc_put_total` + `etcd_mvcc_delete_total`) and revisions per
//! second, etcd's db size, and the leader's derive passes and their total time (the
//! controller's `topo_reconcile_duration_seconds{kind="derive"}`).

mod bench_support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use etcd_client::{Client, EventType, GetOptions, WatchOptions, WatchStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use topo_agent::agent::{AgentConfig, AgentHandles, run};
use topo_agent::backend::fake::{
    FakeContainers, FakeHostPorts, FakeInterfaces, FakeNat, FakeOvs, FakeProber,
};
use topo_agent::reconcile::Backends;
use topo_schema::api::ObservedReport;
use topo_schema::keys;
use topo_schema::kinds::{Datapath, Kind};
use topo_schema::meta::{CONDITION_READY, ConditionStatus};

use bench_support::cluster::{self, Cluster, ClusterSpec, TempDir};
use bench_support::https::Https;
use bench_support::manifest::{
    DEFAULT_APPLY_BYTES, Size, TopologyArg, apply_bodies, generate, node_address, node_name,
    send_applies,
};
use bench_support::procfs::{cpu_seconds, load_average, machine, vm_hwm};

/// The image of the bench manifest's containers, present on every hollow node.
const IMAGE: &str = "topo/busybox:latest";

/// The leader's passes in the controller's `/metrics` (`topo_watcher::metrics`).
const DERIVE_COUNT: &str = "topo_reconcile_duration_seconds_count";
const DERIVE_SUM: &str = "topo_reconcile_duration_seconds_sum";
const DERIVE: &str = "kind=\"derive\"";

/// Children per node in the tunnel tree (as `topo-bench`).
const FANOUT: usize = 4;

/// Hollow nodes against the real etcd and controller.
#[derive(Debug, Parser)]
#[command(name = "scale-bench")]
struct Args {
    /// Cluster sizes, in nodes: one run each, in a fresh etcd and controller.
    #[arg(long, value_delimiter = ',', default_value = "100,300,1000")]
    nodes: Vec<usize>,
    /// Containers per node.
    #[arg(long, default_value_t = 20)]
    containers_per_node: usize,
    /// Give up on a size after this many seconds from its start (set-up included).
    #[arg(long, default_value_t = 1200)]
    timeout: u64,
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd_bin: PathBuf,
    /// The controller binary (default: topo-controller next to this binary).
    #[arg(long)]
    controller_bin: Option<PathBuf>,
    /// Keep the temporary directories (etcd data, controller log).
    #[arg(long)]
    keep: bool,
    /// etcd's `--max-txn-ops` for etcd and the controller alike (default: etcd's 128).
    #[arg(long)]
    max_txn_ops: Option<usize>,
    /// Bytes of manifest per apply request (default and most: three quarters of the API's
    /// body limit, the rest room for the JSON envelope's escaping).
    #[arg(long, default_value_t = DEFAULT_APPLY_BYTES)]
    apply_bytes: usize,
}

/// One size's figures. Times are from the start of the first apply.
#[derive(Debug, Default)]
struct Row {
    nodes: usize,
    containers: usize,
    /// Agents started → every node registered, heartbeating and synced (before the clock).
    setup: Duration,
    applies: usize,
    apply: Duration,
    /// Every container reported Ready by its agent.
    reported: Option<Duration>,
    /// S: every container's status Ready (the controller folded the reports).
    ready: Option<Duration>,
    ready_count: usize,
    window: Duration,
    controller_cpu: f64,
    controller_rss_kib: u64,
    etcd_cpu: f64,
    etcd_rss_kib: u64,
    agents_cpu: f64,
    agents_rss_kib: u64,
    key_writes: f64,
    revisions: i64,
    db_bytes: f64,
    derive_passes: f64,
    derive_secs: f64,
    load: String,
    /// etcd's writes over the window by key class.
    writes: WriteProfile,
    /// etcd's gRPC requests over the window by method (`Range`, `Txn`, `Put`, …).
    requests: BTreeMap<String, f64>,
}

/// Counters read at the start and the end of the window.
#[derive(Debug, Default, Clone)]
struct Counters {
    controller_cpu: f64,
    etcd_cpu: f64,
    agents_cpu: f64,
    key_writes: f64,
    db_bytes: f64,
    revision: i64,
    derive_passes: f64,
    derive_secs: f64,
    requests: BTreeMap<String, f64>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start tokio")?;
    rt.block_on(run_all(args))
}

async fn run_all(args: Args) -> Result<()> {
    let controller_bin = cluster::binaries(args.controller_bin.as_deref(), &args.etcd_bin)?;
    let mut rows = vec![];
    for &nodes in &args.nodes {
        let containers = nodes * args.containers_per_node;
        eprintln!("== {nodes} hollow nodes, {containers} containers");
        let row = bench_size(&args, &controller_bin, nodes)
            .await
            .with_context(|| format!("the run with {nodes} nodes failed"))?;
        eprintln!("   {}", last_line(&row, args.timeout));
        rows.push(row);
    }
    println!("{}", report(&args, &rows));
    if let Some(last) = rows.last() {
        println!("{}", last_line(last, args.timeout));
    }
    Ok(())
}

async fn bench_size(args: &Args, controller_bin: &std::path::Path, nodes: usize) -> Result<Row> {
    let dir = TempDir::new("scale-bench", args.keep)?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let size = Size {
        nodes,
        containers: nodes * args.containers_per_node,
        links: 0,
    };
    let (manifest, _) = generate(size, TopologyArg::Tree, FANOUT);
    let bodies = apply_bodies(&manifest, args.apply_bytes)?;
    drop(manifest);
    let hollow: Vec<(String, Ipv4Addr)> = (0..nodes)
        .map(|n| (node_name(n), node_address(n)))
        .collect();
    let set_up = Instant::now();
    let cluster = Cluster::start(ClusterSpec {
        dir: &dir.0,
        etcd_bin: &args.etcd_bin,
        controller_bin,
        nodes: hollow
            .iter()
            .map(|(n, a)| (n.clone(), Some((*a).into())))
            .collect(),
        deadline,
        max_txn_ops: args.max_txn_ops,
    })
    .await?;
    eprintln!(
        "   etcd and controller up with {nodes} node identities after {:.1?}",
        set_up.elapsed()
    );
    let agents_started = Instant::now();
    let agents = Hollow::start(&cluster, &hollow, deadline).await?;
    let setup = agents_started.elapsed();
    eprintln!("   {nodes} hollow agents registered, heartbeating and synced after {setup:.1?}");

    let scrape = Scrape::new(&cluster)?;
    let before = scrape.counters(&cluster).await?;
    let mut row = Row {
        nodes,
        containers: size.containers,
        setup,
        applies: bodies.len(),
        ..Row::default()
    };
    let ready = watch_ready(&cluster, before.revision, size.containers, bodies, deadline).await?;
    let after = scrape.counters(&cluster).await?;
    row.apply = ready.apply;
    row.reported = ready.reported;
    row.ready = ready.ready;
    row.ready_count = ready.ready_count;
    row.window = ready.window;
    row.controller_cpu = after.controller_cpu - before.controller_cpu;
    row.etcd_cpu = after.etcd_cpu - before.etcd_cpu;
    row.agents_cpu = after.agents_cpu - before.agents_cpu;
    row.key_writes = after.key_writes - before.key_writes;
    row.revisions = after.revision - before.revision;
    row.db_bytes = after.db_bytes;
    row.derive_passes = after.derive_passes - before.derive_passes;
    row.derive_secs = after.derive_secs - before.derive_secs;
    row.controller_rss_kib = vm_hwm(cluster.controller.pid()).unwrap_or(0);
    row.etcd_rss_kib = vm_hwm(cluster.etcd.pid()).unwrap_or(0);
    row.agents_rss_kib = vm_hwm(std::process::id()).unwrap_or(0);
    row.load = load_average();
    row.requests = after
        .requests
        .iter()
        .map(|(m, n)| {
            (
                m.clone(),
                n - before.requests.get(m).copied().unwrap_or(0.0),
            )
        })
        .collect();
    row.writes = WriteProfile::read(&cluster, before.revision, after.revision)
        .await
        .unwrap_or_else(|e| {
            eprintln!("   (no write profile: {e:#})");
            WriteProfile::default()
        });
    agents.stop().await;
    drop(cluster);
    Ok(row)
}

/// The hollow agents of one run, in this process.
struct Hollow {
    stop: watch::Sender<bool>,
    agents: JoinSet<()>,
}

impl Hollow {
    /// Starts one agent per node, each with its own etcd channel and identity, and waits
    /// until every one is registered (its Node exists), heartbeating and synced.
    async fn start(
        cluster: &Cluster,
        nodes: &[(String, Ipv4Addr)],
        deadline: Instant,
    ) -> Result<Hollow> {
        let (stop, stop_rx) = watch::channel(false);
        let mut agents = JoinSet::new();
        let mut readies = Vec::with_capacity(nodes.len());
        for (name, address) in nodes {
            let client = hollow_client(cluster, name).await?;
            let (ready_tx, ready_rx) = oneshot::channel();
            agents.spawn(run(
                hollow_config(name, *address),
                client,
                hollow_backends(name, *address),
                stop_rx.clone(),
                Some(ready_tx),
            ));
            readies.push(ready_rx);
        }
        let hollow = Hollow { stop, agents };
        let mut handles: Vec<AgentHandles> = Vec::with_capacity(readies.len());
        for r in readies {
            handles.push(
                r.await
                    .map_err(|_| anyhow!("a hollow agent ended before it was wired"))?,
            );
        }
        for h in &mut handles {
            let synced = tokio::time::timeout_at(deadline.into(), h.synced.wait_for(|s| *s)).await;
            if !matches!(synced, Ok(Ok(_))) {
                bail!("a hollow agent did not list its slice in time");
            }
        }
        let mut root = cluster.root.clone();
        loop {
            let nodes_stored = count(&mut root, &keys::objects_prefix(Kind::Node)).await?;
            let beating = count(&mut root, &keys::heartbeats_prefix()).await?;
            if nodes_stored >= nodes.len() && beating >= nodes.len() {
                return Ok(hollow);
            }
            if Instant::now() > deadline {
                bail!(
                    "{nodes_stored} of {} nodes registered and {beating} heartbeating when the time ran out",
                    nodes.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops every agent as SIGTERM would (the heartbeat leases are revoked).
    async fn stop(mut self) {
        let _ = self.stop.send(true);
        let all = async { while self.agents.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(30), all)
            .await
            .is_err()
        {
            self.agents.abort_all();
        }
    }
}

/// The agent's defaults (`topo-agent --help`), with no endpoint of its own.
fn hollow_config(node: &str, address: Ipv4Addr) -> AgentConfig {
    AgentConfig {
        node: node.to_string(),
        address,
        datapath: Datapath::Netdev,
        heartbeat_ttl: Duration::from_secs(10),
        resync: Duration::from_secs(300),
        workers: 8,
        shutdown_grace: Duration::from_secs(2),
        endpoint: None,
        image_pulls: topo_agent::pulls::PullConfig::default(),
    }
}

/// A fake host: the bench image is present, the node's address is its own, nothing else.
fn hollow_backends(node: &str, address: Ipv4Addr) -> Backends {
    let host_ports = FakeHostPorts::new();
    host_ports.host().addresses = vec![Ipv4Addr::LOCALHOST, address];
    Backends {
        containers: Arc::new(FakeContainers::new(node).with_image(IMAGE)),
        interfaces: Arc::new(FakeInterfaces::new()),
        ovs: Arc::new(FakeOvs::new(node)),
        nat: Arc::new(FakeNat::new()),
        host_ports: Arc::new(host_ports),
        prober: Arc::new(FakeProber::new()),
    }
}

/// Node `node`'s own etcd channel with the options `topo-agent` connects with.
async fn hollow_client(cluster: &Cluster, node: &str) -> Result<Client> {
    let tls = topo_pki::etcd::EtcdTls::from_pair(
        &cluster.pki,
        &topo_pki::layout::node(&cluster.pki, node),
    );
    let options = topo_watcher::failover::EndpointOptions {
        tls: Some(tls.tls_options()?),
        connect_timeout: Some(Duration::from_secs(3)),
        request_timeout: Some(Duration::from_secs(5)),
        keep_alive: Some((Duration::from_secs(5), Duration::from_secs(3))),
        keep_alive_while_idle: true,
    };
    Ok(
        topo_watcher::failover::connect(std::slice::from_ref(&cluster.etcd_endpoint), &options)
            .await?,
    )
}

async fn count(c: &mut Client, prefix: &str) -> Result<usize> {
    Ok(c.get(
        prefix,
        Some(GetOptions::new().with_prefix().with_count_only()),
    )
    .await?
    .count() as usize)
}

/// When the applies ended, the agents had reported every container Ready, and the
/// controller had folded every container's status to Ready.
struct ReadyTimes {
    apply: Duration,
    reported: Option<Duration>,
    ready: Option<Duration>,
    ready_count: usize,
    /// Start of the applies → end of the wait (S, or the deadline).
    window: Duration,
}

/// Applies `bodies` and waits until `containers` statuses are Ready, watching container
/// reports and statuses from `from_rev` on.
async fn watch_ready(
    cluster: &Cluster,
    from_rev: i64,
    containers: usize,
    bodies: Vec<Vec<u8>>,
    deadline: Instant,
) -> Result<ReadyTimes> {
    let mut reports = watch_prefix(cluster, keys::reports_prefix(), from_rev).await?;
    let mut statuses =
        watch_prefix(cluster, keys::status_prefix(Kind::Container), from_rev).await?;
    let started = Instant::now();
    let (https, api) = (cluster.https.clone(), cluster.api);
    let mut apply = tokio::spawn(async move {
        let sent = send_applies(&https, api, bodies).await;
        (sent, started.elapsed())
    });
    let mut t = ReadyTimes {
        apply: Duration::ZERO,
        reported: None,
        ready: None,
        ready_count: 0,
        window: Duration::ZERO,
    };
    let mut apply_done = false;
    let (mut reported, mut ready) = (HashSet::new(), HashSet::new());
    let mut waiting = HashMap::new();
    while t.ready.is_none() && Instant::now() < deadline {
        if !apply_done && apply.is_finished() {
            let (sent, took) = (&mut apply).await?;
            sent?;
            t.apply = took;
            apply_done = true;
            eprintln!("   applied after {took:.1?}");
        }
        tokio::select! {
            msg = reports.message() => {
                let msg = msg?.ok_or_else(|| anyhow!("the report watch ended"))?;
                for ev in msg.events() {
                    fold_report(ev, &mut reported, &mut waiting)?;
                }
                if t.reported.is_none() && reported.len() >= containers {
                    t.reported = Some(started.elapsed());
                    eprintln!("   every container reported Ready by its agent after {:.1?}", started.elapsed());
                }
            }
            msg = statuses.message() => {
                let msg = msg?.ok_or_else(|| anyhow!("the status watch ended"))?;
                for ev in msg.events() {
                    fold_status(ev, &mut ready)?;
                }
                if ready.len() >= containers {
                    t.ready = Some(started.elapsed());
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    t.window = started.elapsed();
    t.ready_count = ready.len();
    if t.ready.is_none() {
        eprintln!(
            "   {} containers reported not Ready, e.g. {:?}",
            waiting.len(),
            waiting.iter().take(5).collect::<Vec<_>>()
        );
    }
    if !apply_done {
        apply.abort();
    }
    Ok(t)
}

async fn watch_prefix(cluster: &Cluster, prefix: String, from_rev: i64) -> Result<WatchStream> {
    let mut wc = cluster
        .root
        .watch_client()
        .max_decoding_message_size(256 * 1024 * 1024);
    // Kept whole: its request side open keeps the watch open.
    wc.watch(
        prefix.clone(),
        Some(
            WatchOptions::new()
                .with_prefix()
                .with_start_revision(from_rev + 1),
        ),
    )
    .await
    .with_context(|| format!("failed to watch {prefix}"))
}

/// A container report's event: the container is in `reported` while its report says Ready,
/// in `waiting` with its report's reason while it says not Ready.
fn fold_report(
    ev: &etcd_client::Event,
    reported: &mut HashSet<String>,
    waiting: &mut HashMap<String, String>,
) -> Result<()> {
    let Some(kv) = ev.kv() else { return Ok(()) };
    let key = kv.key_str()?;
    let Some((_, Kind::Container, name)) = keys::parse_report_key(key) else {
        return Ok(());
    };
    let report = (ev.event_type() == EventType::Put)
        .then(|| serde_json::from_slice::<ObservedReport>(kv.value()).ok())
        .flatten();
    match report {
        Some(r) if r.ready => {
            reported.insert(name.to_string());
            waiting.remove(name);
        }
        Some(r) => {
            reported.remove(name);
            waiting.insert(name.to_string(), format!("{}: {}", r.reason, r.message));
        }
        None => {
            reported.remove(name);
        }
    }
    Ok(())
}

/// A container status's event: the container is in `ready` while its Ready condition is True.
fn fold_status(ev: &etcd_client::Event, ready: &mut HashSet<String>) -> Result<()> {
    let Some(kv) = ev.kv() else { return Ok(()) };
    let Some((Kind::Container, name)) = keys::parse_status_key(kv.key_str()?) else {
        return Ok(());
    };
    let is_ready = ev.event_type() == EventType::Put
        && serde_json::from_slice::<topo_schema::ContainerStatus>(kv.value()).is_ok_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == CONDITION_READY && c.status == ConditionStatus::True)
        });
    if is_ready {
        ready.insert(name.to_string());
    } else {
        ready.remove(name);
    }
    Ok(())
}

/// Reads the counters: /proc for CPU time, etcd's and the controller's `/metrics`.
struct Scrape {
    etcd: Https,
    controller: Https,
}

impl Scrape {
    fn new(cluster: &Cluster) -> Result<Scrape> {
        Ok(Scrape {
            etcd: Https::identity(&cluster.pki, &topo_pki::layout::etcd_root(&cluster.pki))?,
            controller: Https::identity(&cluster.pki, &topo_pki::layout::metrics(&cluster.pki))?,
        })
    }

    async fn counters(&self, cluster: &Cluster) -> Result<Counters> {
        let etcd = self.metrics(&self.etcd, cluster.etcd_addr, "etcd").await?;
        let ctl = self
            .metrics(&self.controller, cluster.api, "the controller")
            .await?;
        let revision = cluster
            .root
            .kv_client()
            .get("/", Some(GetOptions::new().with_count_only()))
            .await?
            .header()
            .map(|h| h.revision())
            .unwrap_or(0);
        let proc_cpu = |pid: u32| cpu_seconds(pid).unwrap_or(0.0);
        Ok(Counters {
            controller_cpu: proc_cpu(cluster.controller.pid()),
            etcd_cpu: proc_cpu(cluster.etcd.pid()),
            agents_cpu: proc_cpu(std::process::id()),
            key_writes: metric(&etcd, "etcd_mvcc_put_total", &[])
                + metric(&etcd, "etcd_mvcc_delete_total", &[]),
            db_bytes: metric(&etcd, "etcd_mvcc_db_total_size_in_bytes", &[]),
            revision,
            derive_passes: metric(&ctl, DERIVE_COUNT, &[DERIVE]),
            derive_secs: metric(&ctl, DERIVE_SUM, &[DERIVE]),
            requests: [
                "Range",
                "Txn",
                "Put",
                "DeleteRange",
                "LeaseKeepAlive",
                "LeaseGrant",
            ]
            .into_iter()
            .map(|m| {
                let label = format!("grpc_method=\"{m}\"");
                (
                    m.to_string(),
                    metric(&etcd, "grpc_server_handled_total", &[&label]),
                )
            })
            .collect(),
        })
    }

    async fn metrics(&self, who: &Https, addr: std::net::SocketAddr, what: &str) -> Result<String> {
        match who.request(addr, "GET", "/metrics", None).await {
            Ok((200, body)) => Ok(String::from_utf8_lossy(&body).into_owned()),
            Ok((status, body)) => bail!(
                "{what}'s /metrics answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            ),
            Err(e) => Err(e.context(format!("failed to read {what}'s /metrics"))),
        }
    }
}

/// etcd's writes over the window by what was written (the key's class: `objects/container`,
/// `ipam`, `txlog`, `objstatus`, `slices`, `reports`, `events`, …): how many puts and deletes,
/// and in how many revisions (transactions) they came. Read back from etcd's own history with
/// a watch from the window's first revision, so it counts every write, also rewrites.
#[derive(Debug, Default)]
struct WriteProfile {
    by_class: BTreeMap<String, ClassWrites>,
}

#[derive(Debug, Default, Clone, Copy)]
struct ClassWrites {
    puts: u64,
    deletes: u64,
    revisions: u64,
    last_revision: i64,
}

impl WriteProfile {
    async fn read(cluster: &Cluster, from_rev: i64, to_rev: i64) -> Result<WriteProfile> {
        let mut stream = watch_prefix(cluster, keys::ROOT.to_string(), from_rev).await?;
        let mut profile = WriteProfile::default();
        let mut seen = from_rev;
        while seen < to_rev {
            let next = tokio::time::timeout(Duration::from_secs(10), stream.message()).await;
            let Ok(msg) = next else {
                bail!("etcd's history stopped at revision {seen} of {to_rev}");
            };
            let msg = msg?.ok_or_else(|| anyhow!("the history watch ended"))?;
            if msg.canceled() {
                bail!("etcd cancelled the history watch: {}", msg.cancel_reason());
            }
            for ev in msg.events() {
                let Some(kv) = ev.kv() else { continue };
                let rev = kv.mod_revision();
                if rev > to_rev {
                    continue;
                }
                seen = seen.max(rev);
                let class = key_class(kv.key_str().unwrap_or(""));
                let c = profile.by_class.entry(class).or_default();
                match ev.event_type() {
                    EventType::Put => c.puts += 1,
                    EventType::Delete => c.deletes += 1,
                }
                if c.last_revision != rev {
                    c.revisions += 1;
                    c.last_revision = rev;
                }
            }
        }
        Ok(profile)
    }

    fn table(&self) -> String {
        let mut s =
            String::from("| keys | puts | deletes | revisions with one |\n|---|---:|---:|---:|\n");
        for (class, c) in &self.by_class {
            let _ = writeln!(
                s,
                "| `{class}` | {} | {} | {} |",
                c.puts, c.deletes, c.revisions
            );
        }
        s
    }
}

/// `/topo/v1/objects/container/web` → `objects/container`; `/topo/v1/reports/n1/…` →
/// `reports`.
fn key_class(key: &str) -> String {
    let rest = key.strip_prefix(keys::ROOT).unwrap_or(key);
    let mut parts = rest.split('/');
    match (parts.next(), parts.next()) {
        (Some(first @ ("objects" | "objstatus")), Some(kind)) => format!("{first}/{kind}"),
        (Some(first), _) => first.to_string(),
        _ => rest.to_string(),
    }
}

/// The sum of the samples of metric `name` whose labels include every one of `labels`
/// (`kind="derive"`), 0 when there is none.
fn metric(page: &str, name: &str, labels: &[&str]) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (sample, value) = l.rsplit_once(' ')?;
            let (metric, set) = sample.split_once('{').unwrap_or((sample, ""));
            let matches = metric == name && labels.iter().all(|want| set.contains(want));
            matches.then(|| value.trim().parse::<f64>().ok()).flatten()
        })
        .sum()
}

fn secs(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1} s", d.as_secs_f64()))
        .unwrap_or_else(|| "not within the timeout".into())
}

fn report(args: &Args, rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### scale-bench: hollow nodes against the real etcd and controller\n\n\
         Machine: {}. {} containers per node, two networks, tunnels in a tree of fan-out {FANOUT}.\n",
        machine(),
        args.containers_per_node
    );
    let _ = writeln!(
        s,
        "| nodes | containers | set-up (register + sync) | applies | apply (HTTP) | agents reported all Ready | S: all Ready | controller CPU-s | controller peak RSS | derive passes / time | etcd CPU-s / peak RSS | hollow agents CPU-s / peak RSS | etcd key writes/s | etcd revisions/s | etcd db size | load avg at end |"
    );
    let _ = writeln!(
        s,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for r in rows {
        let over = r.window.as_secs_f64().max(0.001);
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} s | {} | {:.1} s | {} | {} | {:.1} | {:.0} MiB | {:.0} / {:.1} s | {:.1} / {:.0} MiB | {:.1} / {:.0} MiB | {:.0} | {:.0} | {:.1} MiB | {} |",
            r.nodes,
            r.containers,
            r.setup.as_secs_f64(),
            r.applies,
            r.apply.as_secs_f64(),
            secs(r.reported),
            secs(r.ready),
            r.controller_cpu,
            r.controller_rss_kib as f64 / 1024.0,
            r.derive_passes,
            r.derive_secs,
            r.etcd_cpu,
            r.etcd_rss_kib as f64 / 1024.0,
            r.agents_cpu,
            r.agents_rss_kib as f64 / 1024.0,
            r.key_writes / over,
            r.revisions as f64 / over,
            r.db_bytes / 1048576.0,
            r.load,
        );
    }
    for r in rows {
        let requests: Vec<String> = r
            .requests
            .iter()
            .map(|(m, n)| format!("{m} {n:.0}"))
            .collect();
        let _ = writeln!(
            s,
            "\n{} nodes: etcd's writes over S by key (from etcd's history); gRPC requests: {}.\n\n{}",
            r.nodes,
            requests.join(", "),
            r.writes.table()
        );
    }
    s
}

/// `1000 nodes, 20000 containers: all Ready in S s`, or how far it got.
fn last_line(r: &Row, timeout: u64) -> String {
    match r.ready {
        Some(d) => format!(
            "{} nodes, {} containers: all Ready in {:.1} s",
            r.nodes,
            r.containers,
            d.as_secs_f64()
        ),
        None => format!(
            "{} nodes, {} containers: {} Ready when the {timeout} s timeout ran out",
            r.nodes, r.containers, r.ready_count
        ),
    }
}
