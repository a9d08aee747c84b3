//! `make bench`, the lab half (issue 3): what topo adds on top of Docker, how fast it repairs
//! drift, and what the agent costs at rest. Prints Markdown for BENCHMARKS.md.
//!
//! 1. Networking cost per container: N containers started one after another with plain
//!    `docker run --network none` (Docker's own start), then the same N applied one after
//!    another with `topoctl apply --wait` (apply → Ready: API, etcd, derivation, the agent's
//!    create/start, veth, ARP probe, address, OVS port, report, status). Both in the same
//!    run, on the same lab, so the difference of the medians is topo's cost per container.
//! 2. Drift repair: a GRE port and a container's veth deleted by hand, time until they are
//!    back (OVSDB `wait-until` / polling the namespace's links), repeated. Then the drift
//!    that only an event inside the right namespace reveals (issue 9): the node's `topo`
//!    table deleted, a container's address deleted inside its namespace, a link's table
//!    deleted inside its consumer — each polled every few milliseconds until it is back.
//! 3. The agent at rest: CPU seconds over an idle minute and its RSS.
//!
//! Usage: `lab-bench [--containers 30] [--repairs 20] [--idle-secs 60]`

use std::time::{Duration, Instant};

use topo_e2e::stats::{cpu_seconds, median_p99, rss_kib};
use topo_e2e::{Lab, poll, secs};
use topo_schema::names;

struct Args {
    containers: usize,
    repairs: usize,
    idle_secs: u64,
}

fn parse_args() -> Result<Args, String> {
    let f = topo_e2e::flags::numeric(
        &[("containers", 30), ("repairs", 20), ("idle-secs", 60)],
        std::env::args().skip(1),
    )?;
    Ok(Args {
        containers: f["containers"] as usize,
        repairs: f["repairs"] as usize,
        idle_secs: f["idle-secs"],
    })
}

const NETWORK: &str = "benchnet";

fn network_yaml() -> String {
    format!(
        "apiVersion: topo.dev/v1alpha1\nkind: Network\nmetadata: {{name: {NETWORK}}}\n\
         spec: {{cidr: 10.77.0.0/16, blockSize: 24}}\n"
    )
}

fn container_yaml(name: &str, node: u32) -> String {
    format!(
        "apiVersion: topo.dev/v1alpha1\nkind: Container\nmetadata: {{name: {name}}}\n\
         spec:\n  node: node{node}\n  image: topo/busybox:latest\n  command: [sleep, \"3600\"]\n\
         \x20 networks: [{{network: {NETWORK}}}]\n"
    )
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let lab = Lab::up("bench", 3);
    let nodes = 3u32;

    // ---- 1. Docker's own start, one after another.
    let mut docker_times = Vec::new();
    for i in 0..args.containers {
        let name = format!("plain-{i}");
        let t = Instant::now();
        lab.run_unnetworked(&name);
        docker_times.push(t.elapsed());
    }
    for i in 0..args.containers {
        lab.docker(&["rm", "-f", &format!("plain-{i}")]);
    }

    // ---- 1. topo: apply one container and wait until it is Ready, one after another.
    lab.apply(&network_yaml(), secs(120));
    let mut topo_times = Vec::new();
    for i in 0..args.containers {
        let name = format!("bench-{i}");
        let node = (i as u32 % nodes) + 1;
        let t = Instant::now();
        lab.apply(&container_yaml(&name, node), secs(120));
        topo_times.push(t.elapsed());
    }
    let (d_med, d_p99) = median_p99(docker_times.iter().copied());
    let (t_med, t_p99) = median_p99(topo_times.iter().copied());
    // Inside the agent: Docker's create + start, then the plumbing (veth in the container's
    // namespace, address, route, offload, OVS port, announcement).
    let (mut agent_docker, mut agent_plumbing) = (Vec::new(), Vec::new());
    // The ARP probes of the container's address (issue 12): made while Docker creates it.
    let mut agent_probe = Vec::new();
    for node in 1..=nodes {
        let log = std::fs::read_to_string(lab.node_dir(node).join("agent.log")).unwrap_or_default();
        let lines: Vec<String> = log
            .lines()
            .map(topo_e2e::lab::strip_ansi)
            .filter(|l| l.contains("container=bench-"))
            .collect();
        agent_probe.extend(
            lines
                .iter()
                .filter(|l| l.contains("addresses probed"))
                .filter_map(|l| field_ms(l, "probe_ms=")),
        );
        for line in lines
            .iter()
            .filter(|l| l.contains("container started and plumbed"))
        {
            if let (Some(d), Some(p)) =
                (field_ms(line, "docker_ms="), field_ms(line, "plumbing_ms="))
            {
                agent_docker.push(d);
                agent_plumbing.push(p);
            }
        }
    }
    let (ad_med, ad_p99) = median_p99(agent_docker.iter().copied());
    let (ap_med, ap_p99) = median_p99(agent_plumbing.iter().copied());
    let (pr_med, pr_p99) = median_p99(agent_probe.iter().copied());

    // ---- 2. Drift repair: GRE port on node1 towards node2, and bench-0's veth (node1).
    let gre = names::gre_port_name(NETWORK, "node2");
    let bridge = names::bridge_name(NETWORK);
    let mut gre_times = Vec::new();
    for _ in 0..args.repairs {
        lab.vsctl(1, &["del-port", &bridge, &gre]).ok();
        let t = Instant::now();
        lab.vsctl(1, &["wait-until", "Interface", &gre]).ok();
        gre_times.push(t.elapsed());
        // Let the agent finish its reconcile before tampering again.
        std::thread::sleep(Duration::from_millis(300));
    }
    let veth = names::veth_host_name("bench-0", "eth0");
    let mut veth_times = Vec::new();
    for _ in 0..args.repairs {
        lab.on_node(1, &["ip", "link", "del", &veth]).ok();
        let t = Instant::now();
        poll(&format!("{veth} to come back"), secs(30), || {
            let out = lab.on_node(1, &["ip", "link", "show", &veth]);
            if out.success() {
                Ok(())
            } else {
                Err(out.stderr)
            }
        });
        veth_times.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(300));
    }
    let (g_med, g_p99) = median_p99(gre_times.iter().copied());
    let (v_med, v_p99) = median_p99(veth_times.iter().copied());
    let by_event = drift_by_event(&lab, args.repairs);

    // ---- 3. The agent at rest.
    let pid = lab
        .agent_pid(1)
        .unwrap_or_else(|| panic!("node1's agent is not running"));
    let cpu0 = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(args.idle_secs));
    let cpu1 = cpu_seconds(pid);
    let rss = rss_kib(pid);

    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "### Agent and lab ({} containers on {nodes} hosts, {} repairs each; {machine}, {} cores)\n",
        args.containers,
        args.repairs,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!("| measure | median | p99 |");
    println!("|---|---:|---:|");
    println!(
        "| `docker run --network none` (Docker's own start) | {d_med:.0} ms | {d_p99:.0} ms |"
    );
    println!(
        "| `topoctl apply --wait` of one container (apply → Ready) | {t_med:.0} ms | {t_p99:.0} ms |"
    );
    println!(
        "| topo's cost per container (difference of the medians) | {:.0} ms | |",
        t_med - d_med
    );
    println!(
        "| inside the agent: Docker create + start ({} containers) | {ad_med:.0} ms | {ad_p99:.0} ms |",
        agent_docker.len()
    );
    println!(
        "| inside the agent: plumbing after the start (networking cost) | {ap_med:.0} ms | {ap_p99:.0} ms |"
    );
    println!(
        "| inside the agent: ARP probes of its address (RFC 5227; during Docker's create + start, {} probes) | {pr_med:.0} ms | {pr_p99:.0} ms |",
        agent_probe.len()
    );
    println!("| drift: GRE port deleted → recreated | {g_med:.0} ms | {g_p99:.0} ms |");
    println!("| drift: container veth deleted → recreated | {v_med:.0} ms | {v_p99:.0} ms |");
    for (what, times) in &by_event {
        let (med, p99) = median_p99(times.iter().copied());
        println!("| drift by event: {what} | {med:.0} ms | {p99:.0} ms |");
    }
    println!();
    println!(
        "Agent at rest (node1, {} containers on it): {:.2} CPU-seconds over {} s ({:.2} % of a core), RSS {:.1} MiB.",
        args.containers.div_ceil(nodes as usize),
        cpu1 - cpu0,
        args.idle_secs,
        (cpu1 - cpu0) / args.idle_secs as f64 * 100.0,
        rss as f64 / 1024.0
    );
}

/// How long after `tamper` (which must succeed) `restored` holds, checked every 5 ms.
fn time_repair(
    what: &str,
    tamper: impl Fn() -> topo_e2e::cmd::Output,
    restored: impl Fn() -> bool,
) -> Duration {
    let out = tamper();
    assert!(out.success(), "{what}: {}", out.describe_failure());
    let t = Instant::now();
    while !restored() {
        assert!(t.elapsed() < secs(30), "{what}: not repaired within 30 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = t.elapsed();
    // Let the agent finish its reconcile before tampering again.
    std::thread::sleep(Duration::from_millis(300));
    took
}

/// Issue 9's drift, `repairs` times each: the node's nftables table deleted (heard by the
/// node's nftables notifications), bench-0's address deleted inside its namespace (its
/// rtnetlink watch), and the table of a link deleted inside its consumer bench-0 (the
/// consumer's nftables notifications).
fn drift_by_event(lab: &Lab, repairs: usize) -> Vec<(&'static str, Vec<Duration>)> {
    let link = topo_e2e::manifest::link("bench-link", "bench-0", "bench-1", 80, "127.0.0.1:8081");
    lab.apply(&link, secs(120));
    let pid = lab
        .container_pid("bench-0")
        .unwrap_or_else(|| panic!("bench-0 is not running"))
        .to_string();
    let in_bench0 = |args: &[&str]| {
        let mut a = vec!["-t", pid.as_str(), "-n", "--"];
        a.extend_from_slice(args);
        lab.sh("nsenter", &a)
    };
    let addr = lab.address("bench-0", NETWORK);
    let cidr = in_bench0(&["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
        .stdout
        .split_whitespace()
        .find(|w| w.starts_with(&format!("{addr}/")))
        .unwrap_or_else(|| panic!("bench-0 has no {addr} on eth0"))
        .to_string();
    let table = ["nft", "list", "table", "ip", "topo"];
    let delete = ["nft", "delete", "table", "ip", "topo"];
    let mut out = vec![
        ("node's nft table deleted → restored", Vec::new()),
        (
            "container address deleted in its namespace → restored",
            Vec::new(),
        ),
        ("link table deleted in its consumer → restored", Vec::new()),
    ];
    for _ in 0..repairs {
        out[0].1.push(time_repair(
            "node1's table",
            || lab.on_node(1, &delete),
            || lab.on_node(1, &table).success(),
        ));
        out[1].1.push(time_repair(
            "bench-0's address",
            || in_bench0(&["ip", "addr", "del", &cidr, "dev", "eth0"]),
            || {
                in_bench0(&["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
                    .stdout
                    .contains(&cidr)
            },
        ));
        out[2].1.push(time_repair(
            "bench-0's link table",
            || in_bench0(&delete),
            || in_bench0(&table).success(),
        ));
    }
    out
}

/// `docker_ms=12.3` in a tracing line, as a Duration.
fn field_ms(line: &str, key: &str) -> Option<Duration> {
    let v = line.split_once(key)?.1.split_whitespace().next()?;
    let ms: f64 = v.parse().ok()?;
    Some(Duration::from_secs_f64(ms / 1000.0))
}
