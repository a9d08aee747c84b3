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

// Shared with scale-bench, which uses parts of it this bench does not.
#[allow(dead_code)]
mod bench_support;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use etcd_client::{EventType, GetOptions, WatchOptions};
use topo_controller::ipam;
use topo_controller::planner::{self, Desired};
use topo_schema::keys;

use bench_support::cluster::{self, Cluster, ClusterSpec, TempDir};
use bench_support::manifest::{
    DEFAULT_APPLY_BYTES, Size, TopologyArg, apply_bodies, generate, send_applies,
};
use bench_support::procfs::{load_average, machine, vm_hwm};

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
    /// Bytes of manifest per apply request (default and most: three quarters of the API's
    /// body limit, the rest room for the JSON envelope's escaping).
    #[arg(long, default_value_t = DEFAULT_APPLY_BYTES)]
    apply_bytes: usize,
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
    let controller_bin = cluster::binaries(args.controller_bin.as_deref(), &args.etcd_bin)?;
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

async fn bench_one(args: &Args, controller_bin: &Path, size: Size) -> Result<Outcome> {
    let dir = TempDir::new("topo-bench", args.keep)?;
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
    let cluster = Cluster::start(ClusterSpec {
        dir: &dir.0,
        etcd_bin: &args.etcd_bin,
        controller_bin,
        nodes: vec![],
        deadline,
        max_txn_ops: None,
    })
    .await?;
    let pid = cluster.controller.pid();
    let client = cluster.root.clone();

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
    let bodies = apply_bodies(&manifest, args.apply_bytes)?;
    let manifest_bytes = bodies.iter().map(Vec::len).sum();
    eprintln!("   applying in {} request(s)", bodies.len());
    let started = Instant::now();
    let (https, api) = (cluster.https.clone(), cluster.api);
    let mut apply = tokio::spawn(async move {
        let sent = send_applies(&https, api, bodies).await;
        (sent, started.elapsed())
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
            result?;
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
            result?;
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
    drop(cluster);
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
    let _ = writeln!(
        s,
        "Machine: {}; load average at the end: {}\n",
        machine(),
        load_average()
    );
    let _ = writeln!(
        s,
        "| run | nodes | containers | links | tunnels | objects | manifest | slice entries | apply (HTTP) | all slices written | all statuses written | controller peak RSS | per object: time / RSS | largest node slice | median node slice | rewrites after done |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for o in outcomes {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {:.1} MiB | {} | {:.2} s | {:.2} s | {} | {:.0} MiB | {:.0} µs / {:.1} KiB | {:.1} KiB | {:.1} KiB | {} |",
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
            // Until every slice is written, over every object applied.
            o.slices.as_secs_f64() * 1e6 / o.objects.max(1) as f64,
            o.peak_rss_kib as f64 / o.objects.max(1) as f64,
            o.largest as f64 / 1024.0,
            o.median as f64 / 1024.0,
            o.rewrites,
        );
    }
    s
}
