//! Issue 13's evidence: does a host joining or leaving the GRE mesh drop packets between the
//! hosts that were already connected?
//!
//! Brings up one three-host lab (the harness of the end-to-end tests, in a private
//! namespace), applies `manifests/seeds/ovs-gre.yaml`, then repeats RUNS times the seed
//! scenario `ovs_gre_fourth_host`'s join, followed by the reverse (see `topo_e2e::mesh`):
//! - **join**: `lab.sh add-node 4`, container gre4 on node4 applied and Ready, 6 tunnels
//!   Ready, gre4 and gre1..3 reach each other, 150 more probes (3 s);
//! - **leave**: gre4 deleted (the others drop their GRE port towards node4), `lab.sh
//!   remove-node 4`, Node node4 deleted, 150 more probes.
//!
//! During each phase, probers in gre1, gre2, gre3 send an ICMP echo every 20 ms to the next
//! one (`topo_e2e::probe`: per-probe sequence number, send time and reply; stopped by a
//! deadline). Beside them runs the measurement the test used before issue 13, on the same
//! paths: busybox `ping -i 0.2 -W 2` in each container, stopped with `killall -INT ping`;
//! for each of its losses the driver says which sequence number went unanswered (the last
//! one sent is the echo that was in flight when the signal came). On node1..3 it records
//! what changed: every OVSDB row change of Bridge, Port, Interface and Open_vSwitch
//! (`ovsdb-client --timestamp monitor`, running throughout), the deltas of ovs-vswitchd's
//! coverage counters that revalidation, MAC learning, flushes and datapath drops move, the
//! MAC table's statistics, the datapath flows (those that drop, kept), and the agents' log
//! lines of the phase; when a probe was lost, what the switches and containers hold
//! (`topo_e2e::mesh::diagnose`). RELIABILITY.md reports what it found.
//!
//! Usage: `join-leave [--runs 50] [--out DIR] [--fresh] [--diagnose] [--lab NAME]` (TOPO_BIN,
//! TOPO_E2E_DIR as for the tests; `--help` says what the flags do).
//! Prints one line per phase and writes `DIR/runs.md` (a table per run and phase),
//! `DIR/details.txt` (every lost probe, every OVSDB change, every counter delta, the agents'
//! lines) and the raw monitor output; the lab's logs go to `target/e2e-logs/<lab>`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use topo_e2e::cmd::Background;
use topo_e2e::lab::strip_ansi;
use topo_e2e::mesh::{
    NETWORK, PROBES_AFTER, diagnose, finish_probes, joiner, keep_probing, start_probes,
    wait_all_reach, wait_no_port_towards, wait_reachable, wait_tunnels,
};
use topo_e2e::parse::{
    MonitorChange, PingStats, coverage_totals, fdb_stats, ovsdb_monitor, ping_reply_seqs,
};
use topo_e2e::poll::poll;
use topo_e2e::probe::{ProbeRun, lost_bursts};
use topo_e2e::{Lab, converge, node_address};
use topo_schema::names::gre_port_name;

const OLD: [u32; 3] = [1, 2, 3];
const NEW: u32 = 4;
const BRIDGE: &str = "tb-gre";

/// What the monitors watch: configuration columns, plus what ovs-vswitchd writes back
/// about an interface (ofport, link state), so a port that bounced shows up.
const MONITORED: [(&str, &str); 4] = [
    (
        "Bridge",
        "name,ports,datapath_type,rstp_enable,stp_enable,fail_mode,protocols,other_config,external_ids,flood_vlans,mcast_snooping_enable",
    ),
    (
        "Port",
        "name,interfaces,protected,tag,trunks,vlan_mode,bond_mode,other_config,external_ids",
    ),
    (
        "Interface",
        "name,type,options,mtu_request,mtu,ofport,admin_state,link_state,link_resets,mac_in_use,external_ids",
    ),
    ("Open_vSwitch", "next_cfg,cur_cfg,other_config"),
];

/// Coverage counters that move when ovs-vswitchd reconfigures, revalidates, flushes or
/// relearns, or when a datapath drops a packet.
const COUNTER_PREFIXES: [&str; 14] = [
    "bridge_reconfigure",
    "ofproto_flush",
    "ofproto_update_port",
    "rev_",
    "mac_learning_",
    "dpif_flow_flush",
    "dpif_flow_del",
    "dpif_port_",
    "datapath_drop_",
    "drop_action_",
    "upcall_",
    "revalidate_",
    "netdev_vport_",
    "tunnel_",
];

struct Args {
    runs: usize,
    out: PathBuf,
    /// A new mesh (gre1..3 created anew) for every run, as the seed scenario has.
    fresh: bool,
    /// Print the mesh's diagnostics once it is up, and stop.
    diagnose_only: bool,
    /// The lab's name (its state directory under TOPO_E2E_DIR): two drivers need two.
    lab: String,
}

fn parse_args() -> Result<Args, String> {
    let mut runs = 50;
    let mut out = PathBuf::from("target/join-leave");
    let mut fresh = false;
    let mut diagnose_only = false;
    let mut lab = "join-leave".to_string();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--runs" => {
                let v = it.next().ok_or("--runs needs a value")?;
                runs = v
                    .parse()
                    .map_err(|_| format!("--runs: {v:?} is not a number"))?;
            }
            "--out" => out = PathBuf::from(it.next().ok_or("--out needs a directory")?),
            "--fresh" => fresh = true,
            "--diagnose" => diagnose_only = true,
            "--lab" => lab = it.next().ok_or("--lab needs a name")?,
            "-h" | "--help" => {
                println!(
                    "usage: join-leave [--runs N] [--out DIR] [--fresh] [--diagnose] [--lab NAME]\n\
                     (default 50 runs, target/join-leave, lab join-leave;\n\
                     --fresh: the mesh gre1..3 is created anew for every run, seconds before the join;\n\
                     --diagnose: print what the switches and containers hold once the mesh is up, and stop)"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    Ok(Args {
        runs,
        out,
        fresh,
        diagnose_only,
        lab,
    })
}

/// `ovsdb-client monitor` of each table on each old host, running for the whole session.
struct Monitors(Vec<(u32, &'static str, Background)>);

impl Monitors {
    fn start(lab: &Lab) -> Monitors {
        let mut v = Vec::new();
        for n in OLD {
            for (table, columns) in MONITORED {
                let mut c = lab.command("ovsdb-client");
                c.arg("--timestamp")
                    .arg("monitor")
                    .arg(format!("unix:{}/db.sock", lab.node_dir(n).display()))
                    .args(["Open_vSwitch", table, columns]);
                v.push((n, table, lab.spawn(c)));
            }
        }
        Monitors(v)
    }

    /// (node, table, change) between `from` and `to`.
    fn between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Vec<(u32, &'static str, MonitorChange)> {
        let mut out: Vec<_> = self
            .0
            .iter()
            .flat_map(|(n, table, bg)| {
                ovsdb_monitor(&bg.stdout_so_far())
                    .into_iter()
                    .filter(|c| c.action != "initial" && c.time >= from && c.time <= to)
                    .map(|c| (*n, *table, c))
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort_by_key(|(n, _, c)| (c.time, *n));
        out
    }

    fn save(&self, dir: &std::path::Path) {
        for (n, table, bg) in &self.0 {
            let _ = fs::write(
                dir.join(format!("node{n}-monitor-{table}.txt")),
                bg.stdout_so_far(),
            );
        }
    }
}

/// What the old hosts' ovs-vswitchd counts, before and after a phase.
#[derive(Default)]
struct Counters {
    coverage: BTreeMap<u32, BTreeMap<String, u64>>,
    fdb: BTreeMap<u32, BTreeMap<String, u64>>,
    dp_flows: BTreeMap<u32, usize>,
    /// Datapath flows whose action is to drop (all bridges), as `dpctl/dump-flows` prints.
    drop_flows: BTreeMap<u32, Vec<String>>,
}

fn counters(lab: &Lab) -> Counters {
    let mut c = Counters::default();
    for n in OLD {
        c.coverage.insert(
            n,
            coverage_totals(&lab.appctl(n, &["coverage/show"]).stdout),
        );
        c.fdb.insert(
            n,
            fdb_stats(&lab.appctl(n, &["fdb/stats-show", BRIDGE]).stdout),
        );
        let flows = lab.appctl(n, &["dpif/dump-flows", BRIDGE]).stdout;
        c.dp_flows
            .insert(n, flows.lines().filter(|l| !l.trim().is_empty()).count());
        let all = lab.appctl(n, &["dpctl/dump-flows"]).stdout;
        c.drop_flows.insert(
            n,
            all.lines()
                .filter(|l| l.contains("actions:drop"))
                .map(str::to_string)
                .collect(),
        );
    }
    c
}

/// Counters (coverage of [`COUNTER_PREFIXES`], MAC table) that moved, per node.
fn moved(before: &Counters, after: &Counters) -> BTreeMap<u32, Vec<(String, i64)>> {
    let mut out = BTreeMap::new();
    for n in OLD {
        let empty = BTreeMap::new();
        let mut v = Vec::new();
        let pairs = [
            (
                before.coverage.get(&n).unwrap_or(&empty),
                after.coverage.get(&n).unwrap_or(&empty),
                "",
            ),
            (
                before.fdb.get(&n).unwrap_or(&empty),
                after.fdb.get(&n).unwrap_or(&empty),
                "fdb: ",
            ),
        ];
        for (b, a, prefix) in pairs {
            for (k, av) in a {
                let interesting =
                    !prefix.is_empty() || COUNTER_PREFIXES.iter().any(|p| k.starts_with(p));
                let d = *av as i64 - b.get(k).copied().unwrap_or(0) as i64;
                if interesting && d != 0 {
                    v.push((format!("{prefix}{k}"), d));
                }
            }
        }
        out.insert(n, v);
    }
    out
}

/// What the old measurement (busybox ping stopped by SIGINT) said about one path.
struct OldPing {
    from: String,
    transmitted: u32,
    /// Sequence numbers without a reply.
    missing: Vec<u32>,
}

impl OldPing {
    fn describe(&self) -> String {
        let last = self.transmitted.checked_sub(1);
        let what: Vec<String> = self
            .missing
            .iter()
            .map(|m| {
                if Some(*m) == last {
                    format!("seq {m} (the last sent)")
                } else {
                    format!("seq {m}")
                }
            })
            .collect();
        format!(
            "{} lost {} of {}: {}",
            self.from,
            self.missing.len(),
            self.transmitted,
            what.join(", ")
        )
    }
}

/// The old test's pings: `ping -i 0.2 -c 1500 -W 2` in each container of `mesh` towards the
/// next, started and waited for (seq=4 answered) as the test did.
fn start_old_pings(lab: &Lab, mesh: &[(String, Ipv4Addr)]) -> Vec<(String, Background)> {
    let pings: Vec<(String, Background)> = (0..mesh.len())
        .map(|i| {
            let to = mesh[(i + 1) % mesh.len()].1.to_string();
            let from = mesh[i].0.clone();
            let p = lab.exec_bg(&from, &["ping", "-i", "0.2", "-c", "1500", "-W", "2", &to]);
            (from, p)
        })
        .collect();
    for (from, p) in &pings {
        poll(
            &format!("{from}'s ping to get answers"),
            Duration::from_secs(30),
            || {
                let so_far = p.stdout_so_far();
                if so_far.contains("seq=4 ") {
                    Ok(())
                } else {
                    Err(format!("{so_far:?}"))
                }
            },
        );
    }
    pings
}

fn stop_old_pings(lab: &Lab, pings: Vec<(String, Background)>) -> Vec<OldPing> {
    for (c, _) in &pings {
        lab.exec(c, &["killall", "-INT", "ping"]);
    }
    pings
        .into_iter()
        .map(|(from, p)| {
            let out = p
                .wait(Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("{e}"));
            let stats = PingStats::parse(&out.stdout).unwrap_or_else(|| {
                panic!("no ping summary from {from}:\n{}", out.describe_failure())
            });
            let answered = ping_reply_seqs(&out.stdout);
            let missing = (0..stats.transmitted)
                .filter(|s| !answered.contains(s))
                .collect();
            OldPing {
                from,
                transmitted: stats.transmitted,
                missing,
            }
        })
        .collect()
}

struct Phase {
    run: usize,
    name: &'static str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    milestones: Vec<(String, DateTime<Utc>)>,
    probes: Vec<ProbeRun>,
    old_pings: Vec<OldPing>,
    changes: Vec<(u32, &'static str, MonitorChange)>,
    counters: BTreeMap<u32, Vec<(String, i64)>>,
    dp_flows: (BTreeMap<u32, usize>, BTreeMap<u32, usize>),
    drop_flows: BTreeMap<u32, Vec<String>>,
    agent_lines: Vec<String>,
    /// The switches' and containers' state when probes were lost.
    diagnostics: Option<String>,
}

impl Phase {
    fn lost(&self) -> usize {
        self.probes.iter().map(|p| p.lost().len()).sum()
    }

    fn sent(&self) -> usize {
        self.probes.iter().map(ProbeRun::sent).sum()
    }

    fn old_lost(&self) -> usize {
        self.old_pings.iter().map(|p| p.missing.len()).sum()
    }

    fn old_summary(&self) -> String {
        let lossy: Vec<String> = self
            .old_pings
            .iter()
            .filter(|p| !p.missing.is_empty())
            .map(OldPing::describe)
            .collect();
        if lossy.is_empty() {
            format!(
                "0 of {}",
                self.old_pings.iter().map(|p| p.transmitted).sum::<u32>()
            )
        } else {
            lossy.join("; ")
        }
    }

    fn offset(&self, t: DateTime<Utc>) -> f64 {
        (t - self.start).num_milliseconds() as f64 / 1000.0
    }

    /// OVSDB changes other than the GRE port towards the host that joins or leaves (its
    /// Port and Interface rows, whatever ovs-vswitchd writes into them) and the bridge's
    /// port set that holds it: anything else is a rewrite of what the old mesh uses.
    fn rewrites(&self) -> Vec<String> {
        let port = gre_port_name(NETWORK, &format!("node{NEW}"));
        self.changes
            .iter()
            .filter(|(_, table, c)| {
                let expected = c.name == port
                    || (*table == "Bridge" && c.action == "modify" && c.changed == ["ports"])
                    || (*table == "Open_vSwitch"
                        && c.changed.iter().all(|x| x == "next_cfg" || x == "cur_cfg"));
                !expected
            })
            .map(|(n, table, c)| format!("node{n} {table} {} {} {:?}", c.action, c.name, c.changed))
            .collect()
    }

    /// `node1..3: +Interface tg-x, +Port tg-x, ~Bridge tb-gre[ports]` (the same on every old
    /// host is printed once).
    fn ovsdb_summary(&self) -> String {
        let mut per_node: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for (n, table, c) in &self.changes {
            let s = match c.action.as_str() {
                "insert" => format!("+{table} {}", c.name),
                "delete" => format!("-{table} {}", c.name),
                _ => format!("~{table} {}[{}]", c.name, c.changed.join(",")),
            };
            let v = per_node.entry(*n).or_default();
            if !v.contains(&s) {
                v.push(s);
            }
        }
        for v in per_node.values_mut() {
            v.sort();
        }
        let mut groups: Vec<(Vec<u32>, Vec<String>)> = Vec::new();
        for (n, v) in per_node {
            match groups.iter_mut().find(|(_, g)| *g == v) {
                Some((ns, _)) => ns.push(n),
                None => groups.push((vec![n], v)),
            }
        }
        if groups.is_empty() {
            return "none".into();
        }
        groups
            .iter()
            .map(|(ns, v)| {
                let ns: Vec<String> = ns.iter().map(|n| n.to_string()).collect();
                format!("node{}: {}", ns.join(","), v.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn counter_summary(&self) -> String {
        let mut totals: BTreeMap<&str, i64> = BTreeMap::new();
        for v in self.counters.values() {
            for (k, d) in v {
                *totals.entry(k.as_str()).or_default() += d;
            }
        }
        totals
            .iter()
            .map(|(k, d)| format!("{k} {d:+}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn lost_summary(&self) -> String {
        let mut v = Vec::new();
        for p in &self.probes {
            for (a, b) in lost_bursts(&p.probes) {
                let at = self.offset(DateTime::<Utc>::from(a.sent));
                v.push(format!(
                    "{} seq {}..={} at +{at:.2} s",
                    p.label, a.seq, b.seq
                ));
            }
        }
        if v.is_empty() {
            "-".into()
        } else {
            v.join("; ")
        }
    }

    fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.run,
            self.name,
            self.sent(),
            self.lost(),
            self.lost_summary(),
            self.old_summary(),
            self.ovsdb_summary(),
            {
                let r = self.rewrites();
                if r.is_empty() {
                    "none".into()
                } else {
                    r.join("; ")
                }
            },
            self.counter_summary(),
        )
    }

    fn details(&self) -> String {
        let mut s = format!(
            "=== run {} {}: {} -> {} ({:.1} s)\n",
            self.run,
            self.name,
            self.start.format("%H:%M:%S%.3f"),
            self.end.format("%H:%M:%S%.3f"),
            self.offset(self.end)
        );
        for (m, t) in &self.milestones {
            let _ = writeln!(s, "  +{:.3} s {m}", self.offset(*t));
        }
        for p in &self.probes {
            let _ = writeln!(s, "  {}", p.summary().replace('\n', "\n  "));
        }
        for p in &self.old_pings {
            let _ = writeln!(s, "  old ping: {}", p.describe());
        }
        for (n, table, c) in &self.changes {
            let _ = writeln!(
                s,
                "  +{:.3} s node{n} {table} {} {} {}",
                self.offset(c.time),
                c.action,
                c.name,
                if c.changed.is_empty() {
                    String::new()
                } else {
                    format!("{:?}", c.changed)
                }
            );
        }
        for (n, v) in &self.counters {
            let _ = writeln!(s, "  node{n} counters: {v:?}");
        }
        let _ = writeln!(
            s,
            "  datapath flows on tb-gre before {:?} after {:?}",
            self.dp_flows.0, self.dp_flows.1
        );
        for (n, v) in &self.drop_flows {
            for f in v {
                let _ = writeln!(s, "  node{n} drop flow after the phase: {f}");
            }
        }
        for l in &self.agent_lines {
            let _ = writeln!(s, "  {l}");
        }
        if let Some(d) = &self.diagnostics {
            s.push_str(d);
        }
        s
    }
}

/// The old hosts' agent log lines stamped between `from` and `to`.
fn agent_lines(lab: &Lab, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<String> {
    let mut out = Vec::new();
    for n in OLD {
        let Ok(text) = fs::read_to_string(lab.node_dir(n).join("agent.log")) else {
            continue;
        };
        for line in strip_ansi(&text).lines() {
            let stamp = line.split_whitespace().next().unwrap_or("");
            if let Ok(t) = DateTime::parse_from_rfc3339(stamp) {
                let t = t.with_timezone(&Utc);
                if t >= from && t <= to {
                    out.push(format!("node{n} {line}"));
                }
            }
        }
    }
    out
}

/// Runs `act` with the old mesh under probes and collects what happened.
fn phase(
    lab: &Lab,
    monitors: &Monitors,
    mesh: &[(String, Ipv4Addr)],
    run: usize,
    name: &'static str,
    act: impl FnOnce(&mut Vec<(String, DateTime<Utc>)>),
) -> Phase {
    let before = counters(lab);
    let start = Utc::now();
    let probers = start_probes(lab, mesh);
    let mut milestones = vec![("probes started".to_string(), Utc::now())];
    let pings = start_old_pings(lab, mesh);
    milestones.push(("old pings answered seq=4".to_string(), Utc::now()));
    act(&mut milestones);
    keep_probing(&probers, PROBES_AFTER);
    let old_pings = stop_old_pings(lab, pings);
    milestones.push(("old pings stopped (SIGINT)".to_string(), Utc::now()));
    let probes = finish_probes(probers);
    let end = Utc::now();
    milestones.push(("probes finished".to_string(), end));
    let after = counters(lab);
    let lossy = probes
        .iter()
        .any(|p| !p.lost().is_empty() || p.duplicates() > 0);
    let diagnostics = lossy.then(|| diagnose(lab, &OLD, mesh));
    Phase {
        run,
        name,
        start,
        end,
        milestones,
        probes,
        old_pings,
        changes: monitors.between(start, end),
        counters: moved(&before, &after),
        dp_flows: (before.dp_flows, after.dp_flows),
        drop_flows: after.drop_flows,
        agent_lines: agent_lines(lab, start, end),
        diagnostics,
    }
}

fn join(lab: &Lab, mesh: &[(String, Ipv4Addr)], m: &mut Vec<(String, DateTime<Utc>)>) {
    let (name, yaml) = joiner(NEW);
    lab.add_node(NEW);
    m.push((format!("lab.sh add-node {NEW} done"), Utc::now()));
    lab.apply(&yaml, converge());
    m.push((format!("container {name} Ready"), Utc::now()));
    wait_tunnels(lab, 6);
    m.push(("6 tunnels Ready".into(), Utc::now()));
    let ip = lab.address(&name, NETWORK);
    wait_reachable(lab, (&name, ip), mesh);
    m.push((format!("{name} and gre1..3 reach each other"), Utc::now()));
}

fn leave(lab: &Lab, m: &mut Vec<(String, DateTime<Utc>)>) {
    let (name, _) = joiner(NEW);
    lab.delete(&[format!("container/{name}")], converge())
        .unwrap_or_else(|e| panic!("{e}"));
    m.push((format!("container {name} deleted"), Utc::now()));
    wait_tunnels(lab, 3);
    wait_no_port_towards(lab, &OLD, node_address(NEW));
    m.push(("3 tunnels; no GRE port towards node4".into(), Utc::now()));
    lab.remove_node(NEW);
    m.push((format!("lab.sh remove-node {NEW} done"), Utc::now()));
    lab.delete(&[format!("node/node{NEW}")], converge())
        .unwrap_or_else(|e| panic!("{e}"));
    m.push((format!("Node node{NEW} deleted"), Utc::now()));
}

const HEADER: &str = "| run | phase | probes | lost | lost probes (pair, seq, send time after the phase began) | old ping + SIGINT, same paths | OVSDB changes on node1..3 | other OVSDB changes | counters that moved (node1..3 summed) |\n|---|---|---|---|---|---|---|---|---|\n";

/// Applies the seed's mesh and waits until gre1..3 reach each other: the applied objects and
/// (container, address) of each.
fn mesh_up(lab: &Lab, yaml: &str) -> (Vec<String>, Vec<(String, Ipv4Addr)>) {
    let refs = lab.apply(yaml, converge());
    wait_tunnels(lab, 3);
    let mesh: Vec<(String, Ipv4Addr)> = OLD
        .iter()
        .map(|n| {
            let c = format!("gre{n}");
            let ip = lab.address(&c, NETWORK);
            (c, ip)
        })
        .collect();
    wait_all_reach(lab, &mesh);
    (refs, mesh)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("join-leave: {e}");
            std::process::exit(2);
        }
    };
    let out = &args.out;
    if let Err(e) = fs::create_dir_all(out) {
        eprintln!("join-leave: failed to create {}: {e}", out.display());
        std::process::exit(1);
    }
    let lab = Lab::up(&args.lab, 3);
    let seed = lab.repo().join("manifests/seeds/ovs-gre.yaml");
    let yaml = fs::read_to_string(&seed)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", seed.display()));
    let (mut refs, mut mesh) = mesh_up(&lab, &yaml);
    if args.diagnose_only {
        print!("{}", diagnose(&lab, &OLD, &mesh));
        return;
    }
    let monitors = Monitors::start(&lab);
    let mut table = String::from(HEADER);
    let mut details = String::new();
    let mut phases = Vec::new();
    for run in 1..=args.runs {
        if args.fresh && run > 1 {
            lab.delete(&refs, converge())
                .unwrap_or_else(|e| panic!("{e}"));
            (refs, mesh) = mesh_up(&lab, &yaml);
        }
        for name in ["join", "leave"] {
            let p = phase(&lab, &monitors, &mesh, run, name, |m| match name {
                "join" => join(&lab, &mesh, m),
                _ => leave(&lab, m),
            });
            println!(
                "run {run:>3} {name:<5}: {} of {} probes lost{}; other OVSDB changes: {}; old ping: {}",
                p.lost(),
                p.sent(),
                if p.lost() > 0 {
                    format!(" ({})", p.lost_summary())
                } else {
                    String::new()
                },
                p.rewrites().len(),
                p.old_summary()
            );
            table.push_str(&p.row());
            table.push('\n');
            details.push_str(&p.details());
            phases.push((p.name, p.sent(), p.lost(), p.rewrites().len(), p.old_lost()));
            let _ = fs::write(out.join("runs.md"), &table);
            let _ = fs::write(out.join("details.txt"), &details);
        }
    }
    monitors.save(out);
    print_summary(out, &phases);
}

/// Totals per phase kind, printed and written to `out/summary.txt`.
fn print_summary(out: &std::path::Path, phases: &[(&str, usize, usize, usize, usize)]) {
    let mut summary = String::new();
    for name in ["join", "leave"] {
        let of: Vec<_> = phases.iter().filter(|p| p.0 == name).collect();
        let _ = writeln!(
            summary,
            "{name}: {} phases, {} probes, {} lost, {} phases with a loss, {} other OVSDB changes; old ping + SIGINT: {} lost in {} phases",
            of.len(),
            of.iter().map(|p| p.1).sum::<usize>(),
            of.iter().map(|p| p.2).sum::<usize>(),
            of.iter().filter(|p| p.2 > 0).count(),
            of.iter().map(|p| p.3).sum::<usize>(),
            of.iter().map(|p| p.4).sum::<usize>(),
            of.iter().filter(|p| p.4 > 0).count(),
        );
    }
    print!("{summary}");
    let _ = fs::write(out.join("summary.txt"), &summary);
    println!(
        "table: {}; details: {}",
        out.join("runs.md").display(),
        out.join("details.txt").display()
    );
}
