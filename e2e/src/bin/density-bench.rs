//! Issue 11, density: 10, 100 and 250 containers on one node, each size from nothing.
//!
//! Per size, on a one-host lab (the previous size deleted first):
//! 1. **converge**: one `topoctl apply --wait` of the network and N containers on node1 —
//!    the time until every one is Ready;
//! 2. **at rest**: 15 s after the last Ready, the agent's CPU over `--idle-secs` (from
//!    /proc/PID/stat) and its RSS;
//! 3. **adopt**: the agent SIGKILLed and started again; the time until it has reconciled
//!    every container once (its `/metrics`, `topo_reconciles_total{kind="container"}`), and
//!    what that cost: containers restarted (Docker's StartedAt) and reports rewritten (the
//!    etcd mod revisions of the node's report keys) — both should be zero;
//! 4. **one change**: one more container applied among them (apply → Ready), then deleted
//!    and 2 s left for the node to come to rest; the median of `--changes` rounds.
//!
//! With `--ovn`, then OVN (Debian's 23.03, set up as `bench-peers` does) on the same host at
//! the same sizes: N containers started without a network and plugged into one logical switch
//! as a CNI plugs them, and once ovn-controller has caught up (`ovn-nbctl --wait=hv sync`) and
//! 15 s more, ovn-controller's CPU over the same idle window and its RSS, and one change
//! among them (one more container run and plugged, until `--wait=hv sync`) — the agent's
//! figures against OVN's in one run.
//!
//! Usage: `density-bench [--sizes 10,100,250] [--idle-secs 60] [--changes 5] [--ovn]`
//! (TOPO_BIN, TOPO_E2E_DIR as for the tests). Prints a Markdown table (two with `--ovn`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use topo_e2e::https::{agent_url, try_get_as};
use topo_e2e::manifest::{container, docs, network, on};
use topo_e2e::ovn::{self, Ovn, Port};
use topo_e2e::stats::{cpu_seconds, median_p99, rss_kib};
use topo_e2e::{Lab, poll, secs};
use topo_schema::keys;

const NET: &str = "dense";
const OVN_SWITCH: &str = "dense";
/// How long after the last container turned Ready the agent's idle sample starts.
const SETTLE: Duration = Duration::from_secs(15);
/// The pause after each change's deletion, before the next change.
const CHANGE_REST: Duration = Duration::from_secs(2);

struct Args {
    sizes: Vec<usize>,
    idle_secs: u64,
    changes: usize,
    ovn: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        sizes: vec![10, 100, 250],
        idle_secs: 60,
        changes: 5,
        ovn: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--sizes" => {
                a.sizes = value()?
                    .split(',')
                    .map(|s| s.trim().parse().map_err(|e| format!("--sizes: {s}: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--idle-secs" => {
                a.idle_secs = value()?.parse().map_err(|e| format!("--idle-secs: {e}"))?
            }
            "--changes" => a.changes = value()?.parse().map_err(|e| format!("--changes: {e}"))?,
            "--ovn" => a.ovn = true,
            "--help" | "-h" => {
                return Err(
                    "usage: density-bench [--sizes 10,100,250] [--idle-secs 60] [--changes 5] [--ovn]"
                        .into(),
                );
            }
            other => return Err(format!("unknown flag {other} (see --help)")),
        }
    }
    if a.sizes.is_empty() || a.changes == 0 {
        return Err("--sizes and --changes need at least one".into());
    }
    Ok(a)
}

fn sleeper(name: &str) -> String {
    let cmd = ["sleep".to_string(), "1000000".to_string()];
    container(name, "node1", &cmd, &[on(NET)])
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("d-{i}")).collect()
}

/// One row of the table.
struct Row {
    size: usize,
    converge: Duration,
    idle_cpu_pct: f64,
    rss_mib: f64,
    adopt: Duration,
    restarted: usize,
    rewritten: usize,
    change_ms: f64,
}

impl Row {
    fn line(&self) -> String {
        format!(
            "| {} | {:.1} s | {:.3} % | {:.1} MiB | {:.2} s | {} / {} | {:.0} ms |",
            self.size,
            self.converge.as_secs_f64(),
            self.idle_cpu_pct,
            self.rss_mib,
            self.adopt.as_secs_f64(),
            self.restarted,
            self.rewritten,
            self.change_ms
        )
    }
}

fn agent_pid(lab: &Lab) -> u32 {
    lab.agent_pid(1)
        .unwrap_or_else(|| panic!("node1's agent is not running"))
}

/// Report key → mod revision, for node1's reports.
fn report_revisions(lab: &Lab) -> BTreeMap<String, i64> {
    let prefix = keys::node_reports_prefix("node1");
    let endpoints = format!("--endpoints={}", lab.etcd_endpoints());
    let out = lab.sh(
        "etcdctl",
        &[
            &endpoints,
            "--command-timeout=30s",
            "get",
            &prefix,
            "--prefix",
            "--keys-only",
            "-w",
            "json",
        ],
    );
    assert!(
        out.success(),
        "etcdctl get {prefix}: {}",
        out.describe_failure()
    );
    let v: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("etcdctl's JSON: {e}: {}", out.stdout));
    v["kvs"]
        .as_array()
        .map(|kvs| {
            kvs.iter()
                .map(|kv| {
                    (
                        kv["key"].as_str().unwrap_or("").to_string(),
                        kv["mod_revision"].as_i64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `topo_reconciles_total{kind="container",...}` summed over results, from node1's agent.
fn container_reconciles(lab: &Lab) -> Result<u64, String> {
    let (code, body) = try_get_as(lab, Some("metrics"), &agent_url(1, "/metrics"))?;
    if code != 200 {
        return Err(format!("/metrics answered {code}: {body}"));
    }
    Ok(body
        .lines()
        .filter(|l| l.starts_with("topo_reconciles_total{") && l.contains("kind=\"container\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum())
}

fn converge(lab: &Lab, size: usize) -> (Duration, Vec<String>) {
    let mut parts = vec![network(NET, "10.88.0.0/16")];
    parts.extend(names(size).iter().map(|n| sleeper(n)));
    let t = Instant::now();
    let refs = lab.apply(&docs(&parts), secs(120 + 6 * size as u64));
    (t.elapsed(), refs)
}

fn at_rest(lab: &Lab, idle: Duration) -> (f64, f64) {
    // Ready is reported before the agent's last writes of a burst (events, the ARP probes'
    // claims) are done: the sample starts once those had time to end.
    std::thread::sleep(SETTLE);
    sample(agent_pid(lab), idle)
}

/// % of a core `pid` used over `idle`, and its RSS in MiB at the end.
fn sample(pid: u32, idle: Duration) -> (f64, f64) {
    let c0 = cpu_seconds(pid);
    std::thread::sleep(idle);
    let cpu = (cpu_seconds(pid) - c0) / idle.as_secs_f64() * 100.0;
    (cpu, rss_kib(pid) as f64 / 1024.0)
}

/// The agent restarted; (time to reconcile every container once, containers restarted,
/// reports rewritten).
fn adopt(lab: &Lab, size: usize) -> (Duration, usize, usize) {
    let all = names(size);
    let started = lab.started_at(&all);
    let revisions = report_revisions(lab);
    lab.kill_agent(1, "KILL");
    let t = Instant::now();
    lab.start_agent(1);
    poll(
        "node1's agent to reconcile every container once",
        secs(120 + size as u64),
        || {
            let n = container_reconciles(lab)?;
            if n >= size as u64 {
                Ok(())
            } else {
                Err(format!("{n} of {size} container reconciles"))
            }
        },
    );
    let took = t.elapsed();
    // Anything the restart would rewrite comes with those reconciles; a moment more lets a
    // late write show.
    std::thread::sleep(secs(2));
    let restarted = lab
        .started_at(&all)
        .iter()
        .filter(|(n, at)| started.get(*n) != Some(*at))
        .count();
    let after = report_revisions(lab);
    let rewritten = after
        .iter()
        .filter(|(k, r)| revisions.get(*k).is_some_and(|b| b != *r))
        .count();
    (took, restarted, rewritten)
}

fn one_change(lab: &Lab, rounds: usize) -> f64 {
    let mut took = Vec::new();
    for i in 0..rounds {
        let name = format!("extra-{i}");
        let t = Instant::now();
        let refs = lab.apply(&sleeper(&name), secs(120));
        took.push(t.elapsed());
        lab.delete(&refs, secs(120))
            .unwrap_or_else(|e| panic!("{e}"));
        // The deletion's tail (ovs-vswitchd reconfiguring around the port it lost, Docker
        // unmounting) must not be timed as part of the next change: each change is made on a
        // node at rest, as a user's would be.
        std::thread::sleep(CHANGE_REST);
    }
    median_p99(took).0
}

/// OVN's figures at one size.
struct OvnRow {
    size: usize,
    idle_cpu_pct: f64,
    rss_mib: f64,
    change_ms: f64,
}

/// OVN's one change among the containers plugged so far: one more container run without a
/// network and plugged as the others were, until `ovn-nbctl --wait=hv sync` returns (its port
/// is bound and its flows installed), then unplugged and removed, and the node left 2 s to
/// come to rest; the median of `rounds`. Like topo's change it includes Docker's create and
/// start and the OVS port; unlike it, the CLI processes of each step.
fn ovn_one_change(ovn: &Ovn, lab: &Lab, rounds: usize) -> f64 {
    let mut took = Vec::new();
    for i in 0..rounds {
        let name = format!("ovn-extra-{i}");
        let port = Port::numbered(&name, Ipv4Addr::new(10, 88, 200, 1 + i as u8));
        let t = Instant::now();
        let pid = ovn::run_unnetworked(lab, &name);
        ovn.plug(OVN_SWITCH, 1, pid, &port)
            .unwrap_or_else(|e| panic!("{e}"));
        let synced = ovn.nbctl(&["--wait=hv", "--timeout=120", "sync"]);
        assert!(synced.success(), "{}", synced.describe_failure());
        took.push(t.elapsed());
        lab.vsctl(1, &["--if-exists", "del-port", "br-int", &port.host_veth]);
        ovn.nbctl(&["--if-exists", "lsp-del", &port.lsp]);
        lab.docker(&["rm", "-f", &name]).ok();
        std::thread::sleep(CHANGE_REST);
    }
    median_p99(took).0
}

/// OVN on the same host at each of `sizes` (see the module's comment): ovn-controller's % of
/// a core at rest and its RSS, and one change among them. The containers are added to reach
/// each size.
fn ovn_at_rest(lab: &Lab, sizes: &[usize], idle: Duration, changes: usize) -> Vec<OvnRow> {
    let ovn = Ovn::up(lab).unwrap_or_else(|e| panic!("OVN did not come up: {e}"));
    ovn.add_switch(OVN_SWITCH).unwrap_or_else(|e| panic!("{e}"));
    let mut sorted = sizes.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut names: Vec<String> = Vec::new();
    let mut rows = Vec::new();
    for size in sorted {
        while names.len() < size {
            let i = names.len();
            let name = format!("ovn-dense-{i}");
            let pid = ovn::run_unnetworked(lab, &name);
            let address = Ipv4Addr::new(10, 88, 1 + (i / 250) as u8, 1 + (i % 250) as u8);
            ovn.plug(OVN_SWITCH, 1, pid, &Port::numbered(&name, address))
                .unwrap_or_else(|e| panic!("{e}"));
            names.push(name);
        }
        let synced = ovn.nbctl(&["--wait=hv", "--timeout=300", "sync"]);
        assert!(
            synced.success(),
            "ovn-controller did not catch up with {size} ports: {}",
            synced.describe_failure()
        );
        eprintln!("density: OVN, {size} containers bound");
        std::thread::sleep(SETTLE);
        let pid = ovn
            .controller_pid(1)
            .unwrap_or_else(|| panic!("node1 has no ovn-controller"));
        let (cpu, rss) = sample(pid, idle);
        let change_ms = ovn_one_change(&ovn, lab, changes);
        eprintln!(
            "density: OVN, {size} containers: ovn-controller {cpu:.3} %, {rss:.1} MiB, one change {change_ms:.0} ms"
        );
        rows.push(OvnRow {
            size,
            idle_cpu_pct: cpu,
            rss_mib: rss,
            change_ms,
        });
    }
    ovn.down();
    let mut rm = vec!["rm", "-f"];
    rm.extend(names.iter().map(String::as_str));
    lab.docker(&rm).ok();
    rows
}

/// The agent's figures at rest and one change against OVN's, size by size, with their
/// ratios; then how one change grows with the size on each side.
fn print_against_ovn(rows: &[Row], ovn: &[OvnRow]) {
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}", a / b)
        } else {
            "—".to_string()
        }
    };
    println!();
    println!(
        "| containers on the node | topo-agent idle CPU | ovn-controller idle CPU | ratio | topo-agent RSS | ovn-controller RSS | ratio | one change, topo | one change, OVN | ratio |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut paired = Vec::new();
    for r in rows {
        let Some(o) = ovn.iter().find(|o| o.size == r.size) else {
            continue;
        };
        println!(
            "| {} | {:.3} % | {:.3} % | {} | {:.1} MiB | {:.1} MiB | {} | {:.0} ms | {:.0} ms | {} |",
            r.size,
            r.idle_cpu_pct,
            o.idle_cpu_pct,
            ratio(r.idle_cpu_pct, o.idle_cpu_pct),
            r.rss_mib,
            o.rss_mib,
            ratio(r.rss_mib, o.rss_mib),
            r.change_ms,
            o.change_ms,
            ratio(r.change_ms, o.change_ms)
        );
        paired.push((r.size, r.change_ms, o.change_ms));
    }
    if let (Some(first), Some(last)) = (paired.first(), paired.last())
        && first.0 != last.0
    {
        println!();
        println!(
            "one change at {} against at {}: topo {}×, OVN {}×",
            last.0,
            first.0,
            ratio(last.1, first.1),
            ratio(last.2, first.2)
        );
    }
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("density-bench: {e}");
        std::process::exit(2);
    });
    let lab = Lab::up("density", 1);
    let mut rows = Vec::new();
    for &size in &args.sizes {
        let (converge, refs) = converge(&lab, size);
        eprintln!(
            "density: {size} containers Ready in {:.1} s",
            converge.as_secs_f64()
        );
        let (idle_cpu_pct, rss_mib) = at_rest(&lab, secs(args.idle_secs));
        let (adopt, restarted, rewritten) = adopt(&lab, size);
        let change_ms = one_change(&lab, args.changes);
        let row = Row {
            size,
            converge,
            idle_cpu_pct,
            rss_mib,
            adopt,
            restarted,
            rewritten,
            change_ms,
        };
        // Each row also as soon as it is measured: a later size that fails keeps the others.
        eprintln!("density: {}", row.line());
        rows.push(row);
        let containers: Vec<String> = refs
            .into_iter()
            .filter(|r| r.starts_with("container/"))
            .collect();
        lab.delete(&containers, secs(120 + 2 * size as u64))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    println!(
        "| containers on the node | converge from nothing | agent idle CPU | agent RSS | adopt after a restart | containers restarted / reports rewritten by it | one change, median of {} |",
        args.changes
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for r in &rows {
        println!("{}", r.line());
    }
    if args.ovn {
        let ovn = ovn_at_rest(&lab, &args.sizes, secs(args.idle_secs), args.changes);
        print_against_ovn(&rows, &ovn);
    }
}
