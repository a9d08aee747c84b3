//! Issue 9's controller failover under load, measured: two controller replicas on one lab
//! (the harness of the end-to-end tests, in a private namespace), and the leading replica
//! SIGKILLed, round after round, in one of two situations:
//!
//! - **bulk**: during a 1,000-container apply (containers of a node no agent serves, so
//!   IPAM and derivation do all the work; blocks of 4,096 addresses, one per node). Odd rounds send the apply to the replica that
//!   survives (it must be acknowledged), even rounds to the leader being killed (it may
//!   fail; then etcd holds all of it or none of it: the intent log is atomic);
//! - **stream**: during 20 single-container applies a second, alternating between replicas:
//!   those to the killed one fail once it is killed; any other refused write is a problem
//!   (writes do not wait for a leader).
//!
//! Per round it records the hand-over — from the kill (taken just before the signal) to the
//! survivor's "became leader" log line, and to its first derivation pass that wrote
//! something ("reconciled") — and then, read straight from etcd (`topo_e2e::integrity`):
//! every acknowledged write is there, no address is held twice or leaked, and how long from
//! the kill until every acknowledged container is derived into its node's slice. The killed replica is started again
//! before the next round, so the two replicas take turns leading.
//!
//! Usage: `failover-bench [--rounds 6] [--out FILE]` (TOPO_BIN, TOPO_E2E_DIR as for the
//! tests). Prints one line per round and a Markdown summary (median and p99 by nearest
//! rank) that RELIABILITY.md quotes; exits 1 when an invariant broke.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use topo_e2e::cmd::{Background, Output};
use topo_e2e::integrity::Census;
use topo_e2e::lab::Lab;
use topo_e2e::outage::{ghost_node, manifest_file};
use topo_e2e::stats::median_p99;

const NET: &str = "bench-failover";
const GHOST: &str = "ghost";
const BULK: usize = 1000;
const STREAM_PER_SEC: u32 = 20;
/// How long the stream runs after the kill.
const STREAM_AFTER_KILL: Duration = Duration::from_secs(12);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Situation {
    Bulk,
    Stream,
}

/// What one round measured.
#[derive(Debug)]
struct Round {
    n: u32,
    situation: Situation,
    killed: u32,
    /// For bulk: whether the apply went to the killed replica.
    to_killed: bool,
    elected: Option<Duration>,
    derived: Option<Duration>,
    converged: Option<Duration>,
    writes: usize,
    acknowledged: usize,
    /// The round's containers etcd holds once converged.
    in_etcd: usize,
    problems: Vec<String>,
}

fn main() {
    let (rounds, out) = parse_args();
    let lab = Lab::up_with("failover-bench", 1, &["--controllers", "2"]);
    setup(&lab);
    let mut results = vec![];
    for n in 1..=rounds {
        let situation = if n % 2 == 1 {
            Situation::Bulk
        } else {
            Situation::Stream
        };
        let r = round(&lab, n, situation);
        eprintln!("{}", row(&r));
        results.push(r);
        cleanup_round(&lab, n);
    }
    let report = summary(&results);
    println!("{report}");
    if let Some(path) = out {
        std::fs::write(&path, &report).unwrap_or_else(|e| panic!("failed to write {path}: {e}"));
    }
    let failed = results.iter().any(|r| !r.problems.is_empty());
    // Tears the lab down and saves its logs (exit would skip it).
    drop(lab);
    if failed {
        std::process::exit(1);
    }
}

fn parse_args() -> (u32, Option<String>) {
    let mut rounds = 6;
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => rounds = args.next().and_then(|v| v.parse().ok()).unwrap_or(rounds),
            "--out" => out = args.next(),
            "-h" | "--help" => {
                println!(
                    "failover-bench [--rounds N (default 6; odd: bulk, even: stream)] [--out FILE]"
                );
                std::process::exit(0);
            }
            other => {
                eprintln!("failover-bench: unknown argument {other} (see --help)");
                std::process::exit(2);
            }
        }
    }
    (rounds, out)
}

fn setup(lab: &Lab) {
    let yaml = format!(
        "{}---\napiVersion: topo.dev/v1alpha1\nkind: Network\nmetadata:\n  name: {NET}\nspec:\n  cidr: 10.80.0.0/14\n  blockSize: 20\n",
        ghost_node(GHOST, 210)
    );
    let f = manifest_file(&yaml);
    let out = lab.topoctl(&["apply", "-f", &f.path().display().to_string()]);
    assert!(out.success(), "{}", out.describe_failure());
}

/// `count` containers `<prefix>-<i>` on the ghost node, labelled with the round.
fn containers(prefix: &str, round: u32, count: usize) -> String {
    (0..count)
        .map(|i| {
            format!(
                "apiVersion: topo.dev/v1alpha1\nkind: Container\nmetadata:\n  name: {prefix}-{i}\n  labels: {{failover-bench: r{round}}}\nspec:\n  node: {GHOST}\n  image: topo/busybox:latest\n  command: [sleep, '1000000']\n  networks:\n    - network: {NET}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

fn topoctl_bg(lab: &Lab, replica: u32, args: &[&str]) -> Background {
    let mut c: Command = lab.command(lab.bin().join("topoctl"));
    c.arg("--server").arg(lab.server_url(replica)).args(args);
    Background::spawn(c).unwrap_or_else(|e| panic!("{e}"))
}

fn finished(bg: Background) -> Output {
    bg.wait(Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn leader(lab: &Lab) -> u32 {
    let t = Instant::now();
    loop {
        match lab.controller_leader() {
            Ok(l) => return l,
            Err(e) if t.elapsed() > Duration::from_secs(60) => panic!("no controller leads: {e}"),
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// One round: who leads, the load, the kill, the measurements, the killed replica back.
fn round(lab: &Lab, n: u32, situation: Situation) -> Round {
    let killed = leader(lab);
    let survivor = 3 - killed;
    let mut r = Round {
        n,
        situation,
        killed,
        to_killed: situation == Situation::Bulk && n % 4 == 3,
        elected: None,
        derived: None,
        converged: None,
        writes: 0,
        acknowledged: 0,
        in_etcd: 0,
        problems: vec![],
    };
    let (kill_at, kill_instant, acked) = match situation {
        Situation::Bulk => bulk(lab, &mut r, survivor),
        Situation::Stream => stream(lab, &mut r),
    };
    r.acknowledged = acked.len();
    // The killed replica stays down until the survivor has taken over (started at once, it
    // would find the leader key of its dead self and wait for the lease like the survivor).
    converge(lab, &mut r, kill_instant, &acked);
    // A pass writes (and logs) only when something changed: after an apply that wrote
    // nothing there may be none.
    let t = Instant::now();
    while r.derived.is_none() && t.elapsed() < Duration::from_secs(60) {
        let log = lab.log_text(&Lab::controller_log(survivor));
        (r.elected, r.derived) = hand_over(&log, kill_at);
        if r.elected.is_some() && r.acknowledged == 0 && t.elapsed() > Duration::from_secs(5) {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    lab.start_controller(killed);
    r
}

/// The 1,000-container apply, and the kill 0.5 s into it. Returns the kill's time and the
/// names etcd must hold.
fn bulk(lab: &Lab, r: &mut Round, survivor: u32) -> (SystemTime, Instant, BTreeSet<String>) {
    let prefix = format!("b{}", r.n);
    let f = manifest_file(&containers(&prefix, r.n, BULK));
    let path = f.path().display().to_string();
    let target = if r.to_killed { r.killed } else { survivor };
    let apply = topoctl_bg(lab, target, &["apply", "-f", &path]);
    thread::sleep(Duration::from_millis(500));
    let (kill_at, kill_instant) = (SystemTime::now(), Instant::now());
    lab.signal_controller(r.killed, "KILL");
    let out = finished(apply);
    r.writes = BULK;
    let names: BTreeSet<String> = (0..BULK).map(|i| format!("{prefix}-{i}")).collect();
    if out.success() {
        return (kill_at, kill_instant, names);
    }
    if !r.to_killed {
        r.problems.push(format!(
            "the apply through the surviving replica failed: {}",
            out.stderr.trim()
        ));
    }
    // Unacknowledged: all or nothing (checked once converged).
    r.writes = BULK;
    (kill_at, kill_instant, BTreeSet::new())
}

/// 20 applies a second for 3 s, the kill, 12 s more. Returns the kill's time and the names of
/// the acknowledged applies.
fn stream(lab: &Lab, r: &mut Round) -> (SystemTime, Instant, BTreeSet<String>) {
    let every = Duration::from_secs(1) / STREAM_PER_SEC;
    let start = Instant::now();
    let before = Duration::from_secs(3);
    let mut kill = None;
    let mut running: Vec<(String, Background, tempfile::NamedTempFile, bool)> = vec![];
    let mut acked = BTreeSet::new();
    let mut i = 0u32;
    while start.elapsed() < before + STREAM_AFTER_KILL {
        if kill.is_none() && start.elapsed() >= before {
            kill = Some((SystemTime::now(), Instant::now()));
            lab.signal_controller(r.killed, "KILL");
        }
        let prefix = format!("s{}-{i}", r.n);
        let f = manifest_file(&containers(&prefix, r.n, 1));
        let replica = 1 + i % 2;
        let bg = topoctl_bg(
            lab,
            replica,
            &["apply", "-f", &f.path().display().to_string()],
        );
        // Only the killed replica, once killed, may refuse (it is not there).
        let may_fail = kill.is_some() && replica == r.killed;
        running.push((format!("{prefix}-0"), bg, f, may_fail));
        i += 1;
        let next = start + every * i;
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    r.writes = running.len();
    for (name, bg, _f, may_fail) in running {
        let out = finished(bg);
        if out.success() {
            acked.insert(name);
        } else if !may_fail {
            r.problems
                .push(format!("apply of {name} refused: {}", out.stderr.trim()));
        }
    }
    let (at, instant) = kill.unwrap_or((SystemTime::now(), Instant::now()));
    (at, instant, acked)
}

fn log_time(line: &str) -> Option<SystemTime> {
    let ts = line.split_whitespace().next()?;
    DateTime::parse_from_rfc3339(ts)
        .ok()
        .map(|t| SystemTime::from(t.with_timezone(&Utc)))
}

/// From the survivor's log: kill → "became leader", kill → its first "reconciled" after that.
fn hand_over(log: &str, kill_at: SystemTime) -> (Option<Duration>, Option<Duration>) {
    let after = |needle: &str, from: SystemTime| {
        log.lines()
            .filter(|l| l.contains(needle))
            .filter_map(log_time)
            .find(|t| *t >= from)
    };
    let elected = after("became leader", kill_at);
    let derived = elected.and_then(|e| after("reconciled", e));
    let since = |t: SystemTime| t.duration_since(kill_at).ok();
    (elected.and_then(since), derived.and_then(since))
}

/// Waits (at most 180 s) until every acknowledged container of the round is in etcd, holds
/// its address and is derived into the ghost node's slice, and nothing is wrong with the
/// addresses; records the time from the kill and any problem left.
fn converge(lab: &Lab, r: &mut Round, kill: Instant, acked: &BTreeSet<String>) {
    let prefix = match r.situation {
        Situation::Bulk => format!("b{}-", r.n),
        Situation::Stream => format!("s{}-", r.n),
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut last = vec![];
    while Instant::now() < deadline {
        last = match Census::read(lab) {
            Ok(c) => {
                r.in_etcd = c
                    .containers
                    .keys()
                    .filter(|k| k.starts_with(&prefix))
                    .count();
                check(lab, &c, acked, &prefix, r)
            }
            Err(e) => vec![e],
        };
        if last.is_empty() {
            r.converged = Some(kill.elapsed());
            return;
        }
        thread::sleep(Duration::from_millis(250));
    }
    r.problems.extend(last);
}

/// What is still wrong: address problems, acknowledged writes etcd lacks or the leader has
/// not derived (no slice entry on the ghost node yet), a half-applied bulk apply.
fn check(lab: &Lab, c: &Census, acked: &BTreeSet<String>, prefix: &str, r: &Round) -> Vec<String> {
    let mut p = c.address_problems();
    let slice = lab
        .etcd_prefix(&topo_schema::keys::slice_prefix(GHOST))
        .unwrap_or_default();
    let underived = acked
        .iter()
        .filter(|n| {
            !slice.contains_key(&topo_schema::keys::slice_entry(
                GHOST,
                format!("containers/{n}"),
            ))
        })
        .count();
    if underived > 0 {
        p.push(format!(
            "{underived} acknowledged containers not derived yet"
        ));
    }
    let lost = c.missing(acked);
    if !lost.is_empty() {
        p.push(format!(
            "{} acknowledged writes lost: {:?}",
            lost.len(),
            lost
        ));
    }
    if r.situation == Situation::Bulk && acked.is_empty() {
        let held = c
            .containers
            .keys()
            .filter(|k| k.starts_with(prefix))
            .count();
        if held != 0 && held != BULK {
            p.push(format!(
                "an unacknowledged apply is half there: {held} of {BULK}"
            ));
        }
    }
    p
}

fn cleanup_round(lab: &Lab, n: u32) {
    let sel = format!("failover-bench=r{n}");
    let out = lab.topoctl(&["delete", "containers", "-l", &sel]);
    if !out.success() {
        eprintln!(
            "failover-bench: cleaning up round {n}: {}",
            out.describe_failure()
        );
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "—".into(), |d| format!("{:.2}", d.as_secs_f64()))
}

fn row(r: &Round) -> String {
    format!(
        "| {} | {} | {} | {} | {} | {} | {}/{} | {} | {} |",
        r.n,
        match (r.situation, r.to_killed) {
            (Situation::Bulk, false) => "1,000-object apply via the survivor",
            (Situation::Bulk, true) => "1,000-object apply via the killed leader",
            (Situation::Stream, _) => "20 applies/s",
        },
        r.killed,
        secs(r.elected),
        secs(r.derived),
        secs(r.converged),
        r.acknowledged,
        r.writes,
        r.in_etcd,
        if r.problems.is_empty() {
            "none".to_string()
        } else {
            r.problems.join("; ")
        }
    )
}

fn summary(results: &[Round]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| round | load | killed replica | kill → elected (s) | kill → first derivation (s) | kill → every write derived (s) | acknowledged/writes | in etcd | problems |\n|---|---|---|---|---|---|---|---|---|"
    );
    for r in results {
        let _ = writeln!(s, "{}", row(r));
    }
    for (what, pick) in [
        (
            "elected",
            (|r: &Round| r.elected) as fn(&Round) -> Option<Duration>,
        ),
        ("first derivation", |r: &Round| r.derived),
        ("every write derived", |r: &Round| r.converged),
    ] {
        let v: Vec<Duration> = results.iter().filter_map(pick).collect();
        let (median, p99) = median_p99(v.iter().copied());
        let _ = writeln!(
            s,
            "\nkill → {what}: median {:.2} s, p99 {:.2} s ({} rounds)",
            median / 1000.0,
            p99 / 1000.0,
            v.len()
        );
    }
    s
}
