//! `make bench-peers` (issue 11): topo side by side with OVN (Debian's 23.03) on one
//! three-host lab, netdev datapath both, one after the other in one run: topo first, its
//! containers and network deleted, then OVN (`topo_e2e::ovn`) with other containers on
//! another network (10.99.0.0/16), so both have the same machine. Prints Markdown (also
//! written to `target/bench/peers.md`).
//!
//! Every "networked" moment is the first echo reply a prober ([`topo_e2e::probe`]) gets in
//! an *anchor* container on another host, probing the new container's address every few
//! milliseconds from before the container exists (the anchor's ARP retransmit time is
//! lowered to the probe interval, so an unanswered ARP does not hold the next try for the
//! kernel's default second). The same probers, anchors and hosts serve both sides.
//!
//! 1. Networking cost per container, one after another: from the container running with no
//!    network (topo: the agent's Docker start returned, read from its "container started and
//!    plumbed" line minus its `plumbing_ms`; OVN: `docker run -d --network none` returned)
//!    to the first reply. Both count the veth's creation, the address, route and offload,
//!    the OVS port and whatever the switch needs before it forwards (topo: nothing after the
//!    port; OVN: northd, the SB, ovn-controller's flows). Neither counts Docker's create and
//!    start, nor topo's API and etcd path.
//! 2. The whole topology: N containers running with no network, then given it at once (topo:
//!    one `topoctl apply` adding the network to all of them — a running container takes a new
//!    attachment without a restart; OVN: the bench plugs them, one thread per host, as a CNI
//!    per host would), until every one answers an anchor on another host.
//! 3. Idle CPU and RSS of topo-agent and ovn-controller per host over `--idle-secs`.
//! 4. Recovery: host 1's topo-agent / ovn-controller SIGKILLed and started again; the time
//!    until it is back in steady state (topo: the restarted agent's metrics count a
//!    successful reconcile of every container of its slice and every tunnel up; OVN:
//!    `connection-status` connected and br-int's flows, re-installed by the new process, as
//!    many as before), and the probes lost meanwhile between host 1 and the other hosts.
//!
//! Usage: `peers-bench [--containers 30] [--idle-secs 60] [--probe-ms 5]`

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use topo_e2e::ovn::{self, Ovn, PlugTimes, Port};
use topo_e2e::probe::{ProbeRun, Prober};
use topo_e2e::stats::{cpu_seconds, median_p99, ms, rss_kib};
use topo_e2e::{Lab, manifest, secs};

struct Args {
    containers: u32,
    idle_secs: u64,
    probe: Duration,
}

fn parse_args() -> Result<Args, String> {
    let f = topo_e2e::flags::numeric(
        &[("containers", 30), ("idle-secs", 60), ("probe-ms", 5)],
        std::env::args().skip(1),
    )?;
    if f["containers"] == 0 || f["containers"] > 200 {
        return Err("--containers must be 1..200".into());
    }
    Ok(Args {
        containers: f["containers"] as u32,
        idle_secs: f["idle-secs"],
        probe: Duration::from_millis(f["probe-ms"].max(1)),
    })
}

const NODES: u32 = 3;
const AGENT_LOG: &str = "info,topo_agent::reconcile::container::plumbing=debug";
const TOPO_NET: &str = "peersnet";
const TOPO_CIDR: &str = "10.77.0.0/16";
const OVN_SWITCH: &str = "peers";
/// Probe replies may take this long (a first ARP, a busy datapath).
const WINDOW: Duration = Duration::from_secs(1);
/// Probing of the whole topology: N probers at once, so less often.
const WHOLE_PROBE: Duration = Duration::from_millis(10);
/// The anchors' ARP retransmit time while N addresses are probed at once (every 5 ms for
/// 30 addresses would flood the hosts with broadcasts).
const WHOLE_ARP: Duration = Duration::from_millis(50);

/// What one side measured.
#[derive(Debug, Default)]
struct Side {
    /// Per container: running with no network → first reply from another host.
    per_container: Vec<Duration>,
    /// Per container: the part done before the switch's own work (topo: the agent's
    /// plumbing; OVN: the bench's plug steps).
    wiring: Vec<Duration>,
    /// OVN: each plug step (nbctl, veth, address, port), for the breakdown.
    steps: Vec<PlugTimes>,
    /// OVN: from the port on br-int to the first reply (northd, SB, ovn-controller, flows).
    after_wiring: Vec<Duration>,
    /// topo: the agent's plumbing steps (observe, veths, ports, links), ms.
    agent_steps: Vec<[f64; 4]>,
    whole: Duration,
    /// Per host: % of a core, RSS KiB.
    idle_cpu: Vec<f64>,
    rss_kib: Vec<f64>,
    recovery: Duration,
    recovery_lost: usize,
    recovery_sent: usize,
    /// topo: containers of host 1 restarted across the agent's restart.
    restarts: usize,
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let load_before = load_average();
    // The agents' plumbing steps (debug lines of one module) say where topo's time goes.
    let lab = Lab::up_with_env("peers", NODES, &[("RUST_LOG", AGENT_LOG)]);
    let topo = run_topo(&lab, &args);
    let ovn = run_ovn(&lab, &args);
    let report = render(&args, &topo, &ovn, &load_before, &load_average());
    print!("{report}");
    let out = lab.repo().join("target/bench");
    if std::fs::create_dir_all(&out).is_ok() {
        let _ = std::fs::write(out.join("peers.md"), &report);
    }
}

// ------------------------------------------------------------------ shared measures

/// Node of the `i`-th container, and the node of the anchor that probes it.
fn node_of(i: u32) -> (u32, u32) {
    let node = i % NODES + 1;
    (node, node % NODES + 1)
}

/// The `i`-th address of a side: anchors at .200.(10+N), measured containers from .100.10,
/// the whole topology's from .150.10 (N ≤ 200 each).
fn address(base: [u8; 2], third: u8, i: u32) -> Ipv4Addr {
    let last = u8::try_from(i + 10).unwrap_or(255);
    Ipv4Addr::new(base[0], base[1], third, last)
}

fn anchor_address(base: [u8; 2], node: u32) -> Ipv4Addr {
    // .1 of a /24 is the gateway of whichever node leases that block.
    Ipv4Addr::new(base[0], base[1], 200, u8::try_from(node + 10).unwrap_or(0))
}

/// Makes the anchor (pid) retry an unanswered ARP every `every` instead of every second.
fn fast_arp(lab: &Lab, pid: u32, every: Duration) {
    let key = format!(
        "net.ipv4.neigh.eth0.retrans_time_ms={}",
        every.as_millis().max(1)
    );
    let pid = pid.to_string();
    lab.sh("nsenter", &["-t", &pid, "-n", "--", "sysctl", "-w", &key])
        .ok();
}

fn start_prober(label: &str, anchor_pid: u32, to: Ipv4Addr, every: Duration) -> Prober {
    Prober::start(label, anchor_pid, to, every, WINDOW).unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until `p` has a reply, then stops it; the moment the first reply arrived.
fn first_reply(p: Prober, timeout: Duration) -> SystemTime {
    let t = Instant::now();
    while p.answered() == 0 {
        assert!(
            t.elapsed() < timeout,
            "no reply within {timeout:?} ({} probes sent)",
            p.sent()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let run = p.finish().unwrap_or_else(|e| panic!("{e}"));
    reply_time(&run).unwrap_or_else(|| panic!("{}: no reply recorded", run.label))
}

fn reply_time(run: &ProbeRun) -> Option<SystemTime> {
    run.probes
        .iter()
        .find_map(|p| p.rtt.map(|rtt| p.sent + rtt))
}

/// Waits until every prober has a reply; the latest first reply.
fn all_replied(probers: Vec<Prober>, timeout: Duration) -> SystemTime {
    let t = Instant::now();
    loop {
        let missing = probers.iter().filter(|p| p.answered() == 0).count();
        if missing == 0 {
            break;
        }
        assert!(
            t.elapsed() < timeout,
            "{missing} containers unanswered after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    probers
        .into_iter()
        .filter_map(|p| p.finish().ok().and_then(|r| reply_time(&r)))
        .max()
        .unwrap_or_else(SystemTime::now)
}

fn since(later: SystemTime, earlier: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or_default()
}

/// % of a core each pid used over `secs` (all measured over the same interval), and RSS.
fn idle(pids: &[u32], secs: u64) -> (Vec<f64>, Vec<f64>) {
    let before: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p)).collect();
    std::thread::sleep(Duration::from_secs(secs));
    let cpu = pids
        .iter()
        .zip(before)
        .map(|(p, b)| (cpu_seconds(*p) - b) / secs as f64 * 100.0)
        .collect();
    (cpu, pids.iter().map(|p| rss_kib(*p) as f64).collect())
}

/// Probers between host 1 and the others, both ways, for a recovery.
fn recovery_probers(pids: &[u32; 3], addrs: &[Ipv4Addr; 3], every: Duration) -> Vec<Prober> {
    vec![
        start_prober("node2->node1", pids[1], addrs[0], every),
        start_prober("node1->node3", pids[0], addrs[2], every),
        start_prober("node3->node1", pids[2], addrs[0], every),
    ]
}

/// Calls `check` every 10 ms until it holds: how long that took (try_poll's intervals,
/// 100 to 500 ms, would blur a recovery of a few hundred ms).
fn wait_steady(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) -> Result<Duration, String> {
    let t = Instant::now();
    loop {
        match check() {
            Ok(()) => return Ok(t.elapsed()),
            Err(e) if t.elapsed() >= timeout => {
                return Err(format!("{what}: not within {timeout:?}; last seen: {e}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Lets the probers run `tail` more, then (lost, sent) over all of them.
fn losses(probers: Vec<Prober>, tail: Duration) -> (usize, usize) {
    std::thread::sleep(tail);
    probers.into_iter().fold((0, 0), |(l, s), p| {
        let run = p.finish().unwrap_or_else(|e| panic!("{e}"));
        eprintln!("peers-bench: {}", run.summary());
        (l + run.lost().len(), s + run.sent())
    })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ------------------------------------------------------------------ topo

const TOPO_BASE: [u8; 2] = [10, 77];

fn sleeper() -> Vec<String> {
    vec!["sleep".into(), "3600".into()]
}

fn topo_container(name: &str, node: u32, ip: Option<Ipv4Addr>) -> String {
    let ip = ip.map(|a| a.to_string());
    let nets: Vec<manifest::Attach<'_>> = ip
        .as_deref()
        .map(|a| manifest::on_static(TOPO_NET, a))
        .into_iter()
        .collect();
    manifest::container(name, &format!("node{node}"), &sleeper(), &nets)
}

fn run_topo(lab: &Lab, args: &Args) -> Side {
    let mut side = Side::default();
    lab.apply(&manifest::network(TOPO_NET, TOPO_CIDR), secs(120));
    let anchors: Vec<String> = (1..=NODES)
        .map(|n| {
            topo_container(
                &format!("anchor-{n}"),
                n,
                Some(anchor_address(TOPO_BASE, n)),
            )
        })
        .collect();
    lab.apply(&anchors.join("---\n"), secs(120));
    let anchor_pid = |n: u32| {
        lab.container_pid(&format!("anchor-{n}"))
            .unwrap_or_else(|| panic!("anchor-{n} is not running"))
    };
    let pids = [anchor_pid(1), anchor_pid(2), anchor_pid(3)];
    for p in pids {
        fast_arp(lab, p, args.probe);
    }
    eprintln!(
        "peers-bench: topo, {} containers one after another",
        args.containers
    );
    for i in 0..args.containers {
        let (node, peer) = node_of(i);
        let name = format!("one-{i}");
        let ip = address(TOPO_BASE, 100, i);
        let prober = start_prober(&name, pids[peer as usize - 1], ip, args.probe);
        lab.apply(&topo_container(&name, node, Some(ip)), secs(120));
        let reply = first_reply(prober, secs(60));
        let (started, plumbing) = agent_start(lab, node, &name);
        side.per_container.push(since(reply, started));
        side.wiring.push(plumbing);
        side.agent_steps.extend(agent_steps(lab, node, &name));
    }
    for p in pids {
        fast_arp(lab, p, WHOLE_ARP);
    }
    side.whole = topo_whole(lab, args, &pids);
    let agents: Vec<u32> = (1..=NODES)
        .map(|n| {
            lab.agent_pid(n)
                .unwrap_or_else(|| panic!("node{n}'s agent is not running"))
        })
        .collect();
    (side.idle_cpu, side.rss_kib) = idle(&agents, args.idle_secs);
    let addrs = [1, 2, 3].map(|n| anchor_address(TOPO_BASE, n));
    topo_recovery(lab, &mut side, &pids, &addrs);
    let mut refs: Vec<String> = (1..=NODES)
        .map(|n| format!("container/anchor-{n}"))
        .collect();
    refs.extend((0..args.containers).map(|i| format!("container/one-{i}")));
    refs.extend((0..args.containers).map(|i| format!("container/all-{i}")));
    refs.push(format!("network/{TOPO_NET}"));
    lab.delete(&refs, secs(300))
        .unwrap_or_else(|e| panic!("topo's objects were not removed: {e}"));
    side
}

/// When the agent of `node` had Docker's start of `container` returned, and how long its
/// plumbing took after that, from its "container started and plumbed" line.
fn agent_start(lab: &Lab, node: u32, container: &str) -> (SystemTime, Duration) {
    let log = std::fs::read_to_string(lab.node_dir(node).join("agent.log")).unwrap_or_default();
    let field = format!("container={container}");
    let line = log
        .lines()
        .map(topo_e2e::lab::strip_ansi)
        .filter(|l| l.contains("container started and plumbed"))
        .find(|l| l.split_whitespace().any(|w| w == field))
        .unwrap_or_else(|| panic!("node{node}'s agent logged no start of {container}"));
    let at = line
        .split_whitespace()
        .next()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| SystemTime::from(t.with_timezone(&Utc)))
        .unwrap_or_else(|| panic!("no timestamp on {line:?}"));
    let plumbing = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("plumbing_ms="))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| Duration::from_secs_f64(v / 1000.0))
        .unwrap_or_else(|| panic!("no plumbing_ms on {line:?}"));
    (at - plumbing, plumbing)
}

/// The agent's line `message` about `container` (ANSI colours stripped).
fn agent_line(lab: &Lab, node: u32, container: &str, message: &str) -> Option<String> {
    let log = std::fs::read_to_string(lab.node_dir(node).join("agent.log")).ok()?;
    let field = format!("container={container}");
    log.lines()
        .map(topo_e2e::lab::strip_ansi)
        .filter(|l| l.contains(message))
        .find(|l| l.split_whitespace().any(|w| w == field))
}

/// `key=NUMBER` in a tracing line.
fn number(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.parse().ok())
}

/// The agent's plumbing of `container` by step (ms): observe, veths, ports (its debug line
/// "plumbing steps"), and the links after them.
fn agent_steps(lab: &Lab, node: u32, container: &str) -> Option<[f64; 4]> {
    let steps = agent_line(lab, node, container, "plumbing steps")?;
    let started = agent_line(lab, node, container, "container started and plumbed")?;
    Some([
        number(&steps, "observe_ms=")?,
        number(&steps, "veths_ms=")?,
        number(&steps, "ports_ms=")?,
        number(&started, "links_ms=")?,
    ])
}

/// N containers running without a network, then one apply gives it to all of them.
fn topo_whole(lab: &Lab, args: &Args, anchors: &[u32; 3]) -> Duration {
    eprintln!(
        "peers-bench: topo, {} containers networked at once",
        args.containers
    );
    let bare: Vec<String> = (0..args.containers)
        .map(|i| topo_container(&format!("all-{i}"), node_of(i).0, None))
        .collect();
    lab.apply(&bare.join("---\n"), secs(300));
    let networked: Vec<String> = (0..args.containers)
        .map(|i| {
            topo_container(
                &format!("all-{i}"),
                node_of(i).0,
                Some(address(TOPO_BASE, 150, i)),
            )
        })
        .collect();
    let probers: Vec<Prober> = (0..args.containers)
        .map(|i| {
            let to = address(TOPO_BASE, 150, i);
            start_prober(
                &format!("all-{i}"),
                anchors[node_of(i).1 as usize - 1],
                to,
                WHOLE_PROBE,
            )
        })
        .collect();
    let t0 = SystemTime::now();
    lab.apply(&networked.join("---\n"), secs(300));
    since(all_replied(probers, secs(120)), t0)
}

/// One metric's value in Prometheus text (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Whether host 1's agent has reconciled every container of its slice and has every
/// tunnel up, by its metrics (counters start at zero in a new process).
fn topo_steady(lab: &Lab) -> Result<(), String> {
    // curl itself, not https::get_as: refused connections are expected while it restarts.
    let pki = lab.pki_dir();
    let mut c = lab.command("curl");
    c.args(["-sf", "--max-time", "5", "--cacert"])
        .arg(pki.join("ca.crt"))
        .arg("--cert")
        .arg(pki.join("metrics.crt"))
        .arg("--key")
        .arg(pki.join("metrics.key"))
        .arg(topo_e2e::https::agent_url(1, "/metrics"));
    let out = lab.run(c, secs(10));
    if !out.success() {
        return Err(format!("metrics: {}", out.stderr.trim()));
    }
    let body = out.stdout;
    let entries = metric(&body, "topo_slice_entries{kind=\"container\"}");
    let done = metric(
        &body,
        "topo_reconciles_total{kind=\"container\",result=\"success\"}",
    );
    let tunnels = metric(&body, "topo_slice_entries{kind=\"tunnel\"}");
    let up = metric(&body, "topo_tunnels_up");
    (entries > 0.0 && done >= entries && up >= tunnels)
        .then_some(())
        .ok_or_else(|| {
            format!("{done} of {entries} containers reconciled, {up} of {tunnels} tunnels up")
        })
}

fn topo_recovery(lab: &Lab, side: &mut Side, anchors: &[u32; 3], addrs: &[Ipv4Addr; 3]) {
    let on_node1: Vec<String> = lab
        .list_json("container", None)
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .filter(|c| c.pointer("/spec/node").and_then(|n| n.as_str()) == Some("node1"))
        .filter_map(|c| {
            c.pointer("/metadata/name")
                .and_then(|n| n.as_str())
                .map(String::from)
        })
        .collect();
    let before = lab.started_at(&on_node1);
    let probers = recovery_probers(anchors, addrs, WHOLE_PROBE);
    std::thread::sleep(Duration::from_millis(500));
    let pid = lab
        .agent_pid(1)
        .unwrap_or_else(|| panic!("node1's agent is not running"));
    lab.sh("kill", &["-KILL", &pid.to_string()]).ok();
    wait_steady(
        "node1's agent to die",
        secs(10),
        || match topo_e2e::lab::pid_alive(pid) {
            true => Err("alive".into()),
            false => Ok(()),
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // From the restart: the kill and the death are the same for both sides.
    let t0 = Instant::now();
    lab.start_agent(1);
    side.recovery = wait_steady(
        "node1's restarted agent to be in steady state",
        secs(120),
        || topo_steady(lab),
    )
    .map(|_| t0.elapsed())
    .unwrap_or_else(|e| {
        eprintln!("peers-bench: {e}");
        Duration::MAX
    });
    (side.recovery_lost, side.recovery_sent) = losses(probers, Duration::from_secs(2));
    let after = lab.started_at(&on_node1);
    side.restarts = before
        .iter()
        .filter(|(n, at)| after.get(*n) != Some(at))
        .count();
}

// ------------------------------------------------------------------ OVN

const OVN_BASE: [u8; 2] = [10, 99];

fn run_ovn(lab: &Lab, args: &Args) -> Side {
    let mut side = Side::default();
    let mut ovn = Ovn::up(lab).unwrap_or_else(|e| panic!("OVN did not come up: {e}"));
    ovn.add_switch(OVN_SWITCH).unwrap_or_else(|e| panic!("{e}"));
    let mut names: Vec<String> = Vec::new();
    let mut pids = [0u32; 3];
    for n in 1..=NODES {
        let name = format!("ovn-anchor-{n}");
        let pid = ovn::run_unnetworked(lab, &name);
        ovn.plug(
            OVN_SWITCH,
            n,
            pid,
            &Port::numbered(&name, anchor_address(OVN_BASE, n)),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        fast_arp(lab, pid, args.probe);
        pids[n as usize - 1] = pid;
        names.push(name);
    }
    eprintln!(
        "peers-bench: OVN, {} containers one after another",
        args.containers
    );
    for i in 0..args.containers {
        let (node, peer) = node_of(i);
        let name = format!("ovn-one-{i}");
        let ip = address(OVN_BASE, 100, i);
        let prober = start_prober(&name, pids[peer as usize - 1], ip, args.probe);
        let pid = ovn::run_unnetworked(lab, &name);
        let started = SystemTime::now();
        let t = Instant::now();
        let steps = ovn
            .plug(OVN_SWITCH, node, pid, &Port::numbered(&name, ip))
            .unwrap_or_else(|e| panic!("{e}"));
        let wired = SystemTime::now();
        side.wiring.push(t.elapsed());
        side.steps.push(steps);
        let reply = first_reply(prober, secs(60));
        side.per_container.push(since(reply, started));
        side.after_wiring.push(since(reply, wired));
        names.push(name);
    }
    for p in pids {
        fast_arp(lab, p, WHOLE_ARP);
    }
    side.whole = ovn_whole(lab, &ovn, args, &pids, &mut names);
    let controllers: Vec<u32> = (1..=NODES)
        .map(|n| {
            ovn.controller_pid(n)
                .unwrap_or_else(|| panic!("node{n} has no ovn-controller"))
        })
        .collect();
    (side.idle_cpu, side.rss_kib) = idle(&controllers, args.idle_secs);
    let addrs = [1, 2, 3].map(|n| anchor_address(OVN_BASE, n));
    ovn_recovery(&mut ovn, &mut side, &pids, &addrs);
    ovn.down();
    let mut rm = vec!["rm", "-f"];
    rm.extend(names.iter().map(String::as_str));
    lab.docker(&rm).ok();
    side
}

/// N containers running without a network, then plugged, one thread per host.
fn ovn_whole(
    lab: &Lab,
    ovn: &Ovn<'_>,
    args: &Args,
    anchors: &[u32; 3],
    names: &mut Vec<String>,
) -> Duration {
    eprintln!(
        "peers-bench: OVN, {} containers networked at once",
        args.containers
    );
    let running: Vec<(u32, u32, String, Ipv4Addr)> = (0..args.containers)
        .map(|i| {
            let name = format!("ovn-all-{i}");
            let pid = ovn::run_unnetworked(lab, &name);
            (i, pid, name, address(OVN_BASE, 150, i))
        })
        .collect();
    names.extend(running.iter().map(|r| r.2.clone()));
    let probers: Vec<Prober> = running
        .iter()
        .map(|(i, _, name, ip)| {
            start_prober(name, anchors[node_of(*i).1 as usize - 1], *ip, WHOLE_PROBE)
        })
        .collect();
    let plugger = ovn.plugger();
    let t0 = SystemTime::now();
    std::thread::scope(|s| {
        for node in 1..=NODES {
            let mine: Vec<&(u32, u32, String, Ipv4Addr)> =
                running.iter().filter(|r| node_of(r.0).0 == node).collect();
            let plugger = plugger.clone();
            s.spawn(move || {
                for (_, pid, name, ip) in mine {
                    plugger
                        .plug(OVN_SWITCH, node, *pid, &Port::numbered(name, *ip))
                        .unwrap_or_else(|e| panic!("{e}"));
                }
            });
        }
    });
    since(all_replied(probers, secs(120)), t0)
}

/// The age in seconds of br-int's oldest flow on host `node`.
fn oldest_flow_secs(lab: &Lab, node: u32) -> f64 {
    let mgmt = lab.node_dir(node).join("br-int.mgmt");
    let target = format!("unix:{}", mgmt.to_string_lossy());
    let out = lab.sh("ovs-ofctl", &["-O", "OpenFlow15", "dump-flows", &target]);
    out.stdout
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter_map(|w| w.strip_prefix("duration="))
        .filter_map(|d| d.trim_end_matches('s').parse::<f64>().ok())
        .fold(0.0, f64::max)
}

fn ovn_recovery(ovn: &mut Ovn<'_>, side: &mut Side, anchors: &[u32; 3], addrs: &[Ipv4Addr; 3]) {
    let flows = ovn
        .flow_count(1)
        .unwrap_or_else(|| panic!("node1's br-int did not answer"));
    let probers = recovery_probers(anchors, addrs, WHOLE_PROBE);
    std::thread::sleep(Duration::from_millis(500));
    ovn.kill_controller(1).unwrap_or_else(|e| panic!("{e}"));
    let t0 = Instant::now();
    ovn.start_controller(1).unwrap_or_else(|e| panic!("{e}"));
    let lab = ovn.lab();
    let steady = wait_steady(
        "node1's restarted ovn-controller to be in steady state",
        secs(120),
        || {
            let status = ovn.connection_status(1);
            let now = ovn.flow_count(1).unwrap_or(0);
            // Flows the new process installed: none older than the kill.
            let oldest = oldest_flow_secs(lab, 1);
            (status == "connected" && now >= flows && oldest <= t0.elapsed().as_secs_f64())
                .then_some(())
                .ok_or_else(|| {
                    format!("status {status:?}, {now} of {flows} flows, oldest {oldest} s")
                })
        },
    );
    // Not reached: the table says so (NaN) rather than losing the rest of the run.
    side.recovery = match steady {
        Ok(_) => t0.elapsed(),
        Err(e) => {
            eprintln!("peers-bench: {e}");
            Duration::MAX
        }
    };
    (side.recovery_lost, side.recovery_sent) = losses(probers, Duration::from_secs(2));
}

// ------------------------------------------------------------------ the table

/// ms, or NaN for a state never reached (`Duration::MAX`).
fn reached(d: Duration) -> f64 {
    if d == Duration::MAX { f64::NAN } else { ms(d) }
}

fn med(v: &[Duration]) -> f64 {
    median_p99(v.iter().copied()).0
}

fn p99(v: &[Duration]) -> f64 {
    median_p99(v.iter().copied()).1
}

fn median_f(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

fn row(out: &mut String, what: &str, topo: f64, ovn: f64, unit: &str, digits: usize) {
    let _ = writeln!(
        out,
        "| {what} | {topo:.digits$} {unit} | {ovn:.digits$} {unit} | {:.2} |",
        topo / ovn
    );
}

fn render(args: &Args, topo: &Side, ovn: &Side, load0: &str, load1: &str) -> String {
    let mut o = String::new();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let n = args.containers;
    let _ = writeln!(
        o,
        "### topo and OVN side by side ({n} containers on {NODES} hosts, netdev datapath; {cores} cores; load average before {load0}, after {load1})\n"
    );
    let _ = writeln!(
        o,
        "| measure | topo | OVN | topo/OVN |\n|---|---:|---:|---:|"
    );
    row(
        &mut o,
        "networking per container, median (running → first reply from another host)",
        med(&topo.per_container),
        med(&ovn.per_container),
        "ms",
        1,
    );
    row(
        &mut o,
        "networking per container, p99",
        p99(&topo.per_container),
        p99(&ovn.per_container),
        "ms",
        1,
    );
    row(
        &mut o,
        &format!("whole topology: {n} running containers networked at once → all answer"),
        ms(topo.whole),
        ms(ovn.whole),
        "ms",
        0,
    );
    row(
        &mut o,
        &format!(
            "idle CPU over {} s, median of the hosts (topo-agent / ovn-controller)",
            args.idle_secs
        ),
        median_f(&topo.idle_cpu),
        median_f(&ovn.idle_cpu),
        "%",
        3,
    );
    row(
        &mut o,
        "RSS, median of the hosts",
        median_f(&topo.rss_kib) / 1024.0,
        median_f(&ovn.rss_kib) / 1024.0,
        "MiB",
        1,
    );
    row(
        &mut o,
        "recovery after SIGKILL + restart on host 1 → steady state",
        reached(topo.recovery),
        reached(ovn.recovery),
        "ms",
        0,
    );
    let _ = writeln!(
        o,
        "| probes lost during the recovery (host 1 ↔ others, every {} ms) | {} of {} | {} of {} | |",
        WHOLE_PROBE.as_millis(),
        topo.recovery_lost,
        topo.recovery_sent,
        ovn.recovery_lost,
        ovn.recovery_sent
    );
    let _ = writeln!(o, "\nWhere the per-container time goes (medians):\n");
    let _ = writeln!(
        o,
        "- topo: the agent's work after Docker's start (veth in the container's namespace, address, route, offload, OVS port, links) {:.1} ms; container restarts across the agent's restart: {}",
        med(&topo.wiring),
        topo.restarts
    );
    let agent = |i: usize| median_f(&topo.agent_steps.iter().map(|s| s[i]).collect::<Vec<_>>());
    let _ = writeln!(
        o,
        "  - of which: observe the switch and the namespace {:.1} ms, make the veth pair with address, route and offload {:.1} ms, put the port on the bridge (one OVSDB transaction, not waiting for ovs-vswitchd) {:.1} ms, the links' nftables in the container's namespace {:.1} ms; the rest (inspecting the started container for its pid; its Started event, queued for the agent's event writer; the ARP probe when it outlasted Docker's start) {:.1} ms ({} containers)",
        agent(0),
        agent(1),
        agent(2),
        agent(3),
        med(&topo.wiring) - agent(0) - agent(1) - agent(2) - agent(3),
        topo.agent_steps.len()
    );
    let step = |f: fn(&PlugTimes) -> Duration| med(&ovn.steps.iter().map(f).collect::<Vec<_>>());
    let _ = writeln!(
        o,
        "- OVN: the bench's plug {:.1} ms (ovn-nbctl lsp-add {:.1}, veth {:.1}, address + route + offload {:.1}, ovs-vsctl add-port {:.1}); then {:.1} ms from the port on br-int to the first reply (northd → SB → ovn-controller → flows)",
        med(&ovn.wiring),
        step(|s| s.nbctl),
        step(|s| s.veth),
        step(|s| s.address),
        step(|s| s.ovs_port),
        med(&ovn.after_wiring)
    );
    let _ = writeln!(
        o,
        "\nratio topo/OVN per-container networking median: {:.2}",
        med(&topo.per_container) / med(&ovn.per_container)
    );
    o
}
