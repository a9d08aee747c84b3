//! Issue 13's second finding: does adding or removing a container's port on a bridge drop
//! packets between the other containers of that bridge?
//!
//! One two-host lab (the harness of the end-to-end tests), one network, containers o1 on
//! node1 and o2 on node2 probing each other (`topo_e2e::probe`: an ICMP echo every 20 ms each
//! way, a probe lost only when no reply came within 2 s, stopped by a deadline). Then RUNS
//! times: a container `churn-N` on the same network is applied (and waited Ready) on node2,
//! then on node1 in the next run (the receiving and the sending side), then deleted; 50
//! probes before, between and after. Every lost probe is printed with its send time, the
//! phase it fell in, and the nearest port change ovs-vswitchd logged on either node.
//!
//! Usage: `port-churn [--runs 50] [--lab NAME]` (TOPO_BIN, TOPO_E2E_DIR as for the tests).
//! The last line: `port churn: N adds, N deletes, P probes, L lost`.

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use topo_e2e::manifest::{container, docs, network, on};
use topo_e2e::mesh::{finish_probes, keep_probing, start_probes};
use topo_e2e::parse::coverage_totals;
use topo_e2e::probe::{ProbeRun, utc_ms};
use topo_e2e::{Lab, converge, node_address, node_name};

const NET: &str = "churn";
/// Probes each prober sends around each change.
const AROUND: u64 = 50;

fn sleeper(name: &str, node: u32) -> String {
    let cmd = ["sleep".to_string(), "1000000".to_string()];
    container(name, &node_name(node), &cmd, &[on(NET)])
}

struct Args {
    runs: u32,
    lab: String,
    /// Where each node's packet capture goes (tcpdump on every interface of the node).
    capture: Option<std::path::PathBuf>,
    /// Give each node's ovs-vswitchd the underlay's route as a user route (`ovs/route/add`).
    user_route: bool,
    /// Instead of topo containers: a veth made by hand (`ip link`) added to and removed from
    /// the bridge with `ovs-vsctl` — Open vSwitch alone, no agent.
    raw: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        runs: 50,
        lab: "port-churn".into(),
        capture: None,
        user_route: false,
        raw: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--runs" => a.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--lab" => a.lab = value()?,
            "--capture" => a.capture = Some(value()?.into()),
            "--user-route" => a.user_route = true,
            "--raw" => a.raw = true,
            "--help" | "-h" => {
                return Err("usage: port-churn [--runs 50] [--lab NAME] [--capture DIR] [--user-route] [--raw]".into());
            }
            other => return Err(format!("unknown flag {other} (see --help)")),
        }
    }
    Ok(a)
}

/// A port change ovs-vswitchd logged: when, on which node, what.
struct PortChange {
    at: DateTime<Utc>,
    node: u32,
    line: String,
}

fn port_changes(logs: &Path, nodes: u32) -> Vec<PortChange> {
    let mut out = Vec::new();
    for node in 1..=nodes {
        let text = fs::read_to_string(logs.join(format!("node{node}-ovs-vswitchd.log")))
            .unwrap_or_default();
        for line in text.lines() {
            if !(line.contains("added interface") || line.contains("deleted interface")) {
                continue;
            }
            let Some(stamp) = line.split('|').next() else {
                continue;
            };
            if let Ok(at) = DateTime::parse_from_rfc3339(stamp) {
                out.push(PortChange {
                    at: at.with_timezone(&Utc),
                    node,
                    line: line.to_string(),
                });
            }
        }
    }
    out
}

fn appctl(lab: &Lab, n: u32, args: &[&str]) -> String {
    let ctl = format!("{}/ovs-vswitchd.ctl", lab.node_dir(n).display());
    let mut a = vec!["-t", ctl.as_str()];
    a.extend_from_slice(args);
    lab.sh("ovs-appctl", &a).stdout
}

/// ovs-vswitchd's coverage counters of both nodes, `nodeN:name` → total.
fn coverage(lab: &Lab) -> BTreeMap<String, u64> {
    let mut all = BTreeMap::new();
    for n in 1..=2 {
        for (k, v) in coverage_totals(&appctl(lab, n, &["coverage/show"])) {
            all.insert(format!("node{n}:{k}"), v);
        }
    }
    all
}

/// Per node: the datapath's port statistics (drops included) and its packet-processing
/// statistics (upcalls lost), as ovs-vswitchd prints them.
fn datapath_stats(lab: &Lab) -> String {
    let mut out = String::new();
    for n in 1..=2 {
        out.push_str(&format!("--- node{n} dpctl/show -s\n"));
        out.push_str(&appctl(lab, n, &["dpctl/show", "-s"]));
        out.push_str(&format!("--- node{n} dpif-netdev/pmd-stats-show\n"));
        out.push_str(&appctl(lab, n, &["dpif-netdev/pmd-stats-show"]));
    }
    out
}

/// The counters that moved between `before` and `after`, as `name +delta`.
fn moved(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> Vec<String> {
    after
        .iter()
        .filter_map(|(k, a)| {
            let d = *a as i64 - before.get(k).copied().unwrap_or(0) as i64;
            (d != 0).then(|| format!("{k} {d:+}"))
        })
        .collect()
}

fn nearest(changes: &[PortChange], t: SystemTime) -> Option<(&PortChange, i64)> {
    let t = DateTime::<Utc>::from(t);
    changes
        .iter()
        .map(|c| (c, (c.at - t).num_milliseconds()))
        .min_by_key(|(_, d)| d.abs())
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("port-churn: {e}");
        std::process::exit(2);
    });
    let lab = Lab::up(&args.lab, 2);
    lab.apply(
        &docs(&[
            network(NET, "10.66.0.0/16"),
            sleeper("o1", 1),
            sleeper("o2", 2),
        ]),
        converge(),
    );
    let mesh: Vec<(String, Ipv4Addr)> = ["o1", "o2"]
        .iter()
        .map(|c| (c.to_string(), lab.address(c, NET)))
        .collect();
    for (from, _) in &mesh {
        let (_, to) = mesh
            .iter()
            .find(|(c, _)| c != from)
            .expect("two containers");
        lab.wait_ping(from, *to, converge());
    }
    // Packet captures on both nodes (kept running until the end: dropping them stops them).
    let lab_ref = &lab;
    let _captures: Vec<_> = args
        .capture
        .iter()
        .flat_map(|dir| {
            fs::create_dir_all(dir).expect("create the capture directory");
            (1..=2).map(move |n| {
                let file = dir.join(format!("node{n}.pcap"));
                let mut c = lab_ref.command("ip");
                c.args(["netns", "exec", &node_name(n), "tcpdump", "-i", "any", "-U"])
                    .args(["-s", "200", "-w"])
                    .arg(file);
                lab_ref.spawn(c)
            })
        })
        .collect();
    if args.user_route {
        let [a, b, c, _] = node_address(1).octets();
        let underlay = format!("{a}.{b}.{c}.0/24");
        for n in 1..=2 {
            appctl(&lab, n, &["ovs/route/add", &underlay, "br-phy"]);
            print!(
                "node{n} ovs/route/show:\n{}",
                appctl(&lab, n, &["ovs/route/show"])
            );
        }
    }
    let mut lost: Vec<(u32, &str, String, SystemTime)> = Vec::new();
    let (mut sent, mut adds) = (0usize, 0u32);
    for run in 1..=args.runs {
        let node = if run % 2 == 1 { 2 } else { 1 };
        let name = format!("churn-{run}");
        let probers = start_probes(&lab, &mesh);
        keep_probing(&probers, AROUND);
        let c0 = coverage(&lab);
        let s0 = datapath_stats(&lab);
        let added_at = SystemTime::now();
        // The veth's name: not topo's prefix, so the agent leaves it alone.
        let raw = format!("xc{run}");
        let refs = if args.raw {
            let peer = format!("xd{run}");
            lab.on_node(
                node,
                &[
                    "ip", "link", "add", &raw, "type", "veth", "peer", "name", &peer,
                ],
            )
            .ok();
            lab.on_node(node, &["ip", "link", "set", &raw, "up"]).ok();
            lab.on_node(node, &["ip", "link", "set", &peer, "up"]).ok();
            std::thread::sleep(std::time::Duration::from_millis(300));
            lab.vsctl(node, &["add-port", "tb-churn", &raw]).ok();
            vec![]
        } else {
            lab.apply(&docs(&[sleeper(&name, node)]), converge())
        };
        adds += 1;
        keep_probing(&probers, AROUND);
        let c1 = coverage(&lab);
        let s1 = datapath_stats(&lab);
        let deleted_at = SystemTime::now();
        if args.raw {
            lab.vsctl(node, &["del-port", "tb-churn", &raw]).ok();
            lab.on_node(node, &["ip", "link", "del", &raw]).ok();
        } else {
            lab.delete(&refs, converge())
                .unwrap_or_else(|e| panic!("{e}"));
        }
        keep_probing(&probers, AROUND);
        let c2 = coverage(&lab);
        let runs: Vec<ProbeRun> = finish_probes(probers);
        let mut run_lost = 0;
        for r in &runs {
            sent += r.sent();
            for p in r.lost() {
                run_lost += 1;
                let phase = if p.sent < added_at {
                    "before"
                } else if p.sent < deleted_at {
                    "add"
                } else {
                    "delete"
                };
                lost.push((run, phase, r.label.clone(), p.sent));
            }
        }
        println!(
            "run {run:>3}: {name} on node{node}: {run_lost} of {} probes lost",
            runs.iter().map(ProbeRun::sent).sum::<usize>()
        );
        let drops = |m: Vec<String>| -> Vec<String> {
            m.into_iter()
                .filter(|k| run_lost > 0 || k.contains("drop") || k.contains("neigh"))
                .collect()
        };
        println!("  add moved: {}", drops(moved(&c0, &c1)).join(", "));
        if run_lost > 0 {
            println!("  datapath before the add:\n{s0}\n  datapath after the add:\n{s1}");
        }
        println!("  delete moved: {}", drops(moved(&c1, &c2)).join(", "));
    }
    let logs = lab.save_logs();
    let changes = port_changes(&logs, 2);
    for (run, phase, label, at) in &lost {
        let near = nearest(&changes, *at).map_or("no port change logged".to_string(), |(c, d)| {
            format!("{d:+} ms: node{} {}", c.node, c.line)
        });
        println!(
            "lost: run {run} {phase} {label} sent {}; nearest port change {near}",
            utc_ms(*at)
        );
    }
    println!(
        "port churn: {adds} adds, {adds} deletes, {sent} probes, {} lost",
        lost.len()
    );
}
