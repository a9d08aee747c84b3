//! `make bench`, link rewire latency (issue 4). Prints Markdown for BENCHMARKS.md.
//!
//! A consumer on node1 reaches a target through a link at 127.0.0.1:6379. Each rewire is
//! one `topoctl apply` that either
//! - moves the link's target container to the other host (node2 <-> node3): it is started
//!   anew there, with an address from that host's block; or
//! - points the link at the other of two running targets (on node2 and node3).
//!
//! Measured from the moment the apply starts (`topoctl apply` spawned), on one clock:
//! - **first connection**: a probe loop inside the consumer (a new `nc` to 127.0.0.1:6379
//!   every 10 ms) gets an answer from the new target (every target answers with its name
//!   and a token drawn when its container started, so the old one never counts);
//! - **target start**: Docker's `State.StartedAt` of the moved target's new container (0 for
//!   a repoint: that target already runs);
//! - **programming**: the time of the report in which node1's agent says the rule towards the
//!   new endpoint is in force (written right after the nftables table was replaced): API,
//!   etcd, the leader's derivation, the agent's watch and the nft transaction.
//!
//! Usage: `rewire-bench [--rewires 20]` (per kind; TOPO_BIN as for the tests).

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use serde_json::Value;
use topo_e2e::links::{identity, link_state, nc, report};
use topo_e2e::stats::median_p99;
use topo_e2e::{Lab, poll, secs};
use topo_schema::Kind;

const NETWORK: &str = "rewire";
const LINK: &str = "consumer-target";

fn parse_args() -> Result<usize, String> {
    let mut rewires = 20;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--rewires" => {
                let v = it.next().ok_or("--rewires needs a value")?;
                rewires = v
                    .parse()
                    .map_err(|_| format!("--rewires: {v:?} is not a number"))?;
            }
            "-h" | "--help" => {
                println!(
                    "usage: rewire-bench [--rewires N]   (N rewires of each kind, default 20)"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if rewires == 0 {
        return Err("--rewires must be at least 1".into());
    }
    Ok(rewires)
}

/// A target: answers every connection on 6379 with its name and a token drawn when its
/// container started, so a moved target's new container answers differently from the old
/// one (both are named `left`, and Docker's hostname is the container's name).
fn target(name: &str, node: u32) -> String {
    format!(
        "apiVersion: topo.dev/v1alpha1\nkind: Container\nmetadata: {{name: {name}}}\n\
         spec:\n  node: node{node}\n  image: topo/busybox:latest\n\
         \x20 command: [sh, -c, \"t=$(head -c 8 /dev/urandom | md5sum | cut -c1-12); exec nc -ll -p 6379 -e echo {name}-$t\"]\n\
         \x20 networks: [{{network: {NETWORK}}}]\n"
    )
}

fn link(to: &str) -> String {
    format!(
        "apiVersion: topo.dev/v1alpha1\nkind: Link\nmetadata: {{name: {LINK}}}\n\
         spec:\n  from: consumer\n  to: {{container: {to}, port: 6379}}\n  listen: 127.0.0.1:6379\n"
    )
}

fn base() -> Vec<String> {
    vec![
        format!(
            "apiVersion: topo.dev/v1alpha1\nkind: Network\nmetadata: {{name: {NETWORK}}}\n\
             spec: {{cidr: 10.78.0.0/16, blockSize: 24}}\n"
        ),
        "apiVersion: topo.dev/v1alpha1\nkind: Container\nmetadata: {name: consumer}\n\
         spec:\n  node: node1\n  image: topo/busybox:latest\n  command: [sleep, \"1000000\"]\n\
         \x20 networks: [{network: rewire}]\n"
            .to_string(),
        target("left", 2),
        target("right", 3),
    ]
}

fn topoctl_path(lab: &Lab) -> PathBuf {
    std::env::var_os("TOPO_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| lab.repo().join("target/debug"))
        .join("topoctl")
}

/// The probe loop run inside the consumer: prints `ready`, then starts one `nc` every 10 ms
/// until one gets an answer other than `$1` (the old target's), prints it and stops.
const PROBE: &str = r#"old="$1"; rm -f /tmp/rewired; echo ready; i=0
while [ ! -e /tmp/rewired ] && [ $i -lt 6000 ]; do
  ( a=$(echo | nc -w 1 127.0.0.1 6379 2>/dev/null)
    if [ -n "$a" ] && [ "$a" != "$old" ] && [ ! -e /tmp/rewired ]; then touch /tmp/rewired; echo "got $a"; fi ) &
  usleep 10000; i=$((i+1))
done"#;

struct Sample {
    total: Duration,
    target_start: Duration,
    programming: Duration,
}

fn since(t0: DateTime<Utc>, t: DateTime<Utc>) -> Duration {
    (t - t0).to_std().unwrap_or_default()
}

/// One rewire: applies `yaml` and measures it.
fn rewire(lab: &Lab, yaml: &str, moved: Option<&str>) -> Result<Sample, String> {
    let old = nc(lab, "consumer", "127.0.0.1", 6379)?;
    let old_endpoint = link_state(lab, LINK)?.endpoint;
    let probe = lab.exec_bg("consumer", &["sh", "-c", PROBE, "sh", &old]);
    poll("the probe loop to start", secs(30), || {
        if probe.stdout_so_far().contains("ready") {
            Ok(())
        } else {
            Err(probe.stdout_so_far())
        }
    });

    let file = tempfile::Builder::new()
        .prefix("rewire-")
        .suffix(".yaml")
        .tempfile()
        .map_err(|e| format!("failed to create a temporary file: {e}"))?;
    fs::write(file.path(), yaml).map_err(|e| format!("failed to write the manifest: {e}"))?;
    let mut cmd = lab.command(topoctl_path(lab));
    cmd.args(["apply", "-f"]).arg(file.path());
    let t0: DateTime<Utc> = SystemTime::now().into();
    let start = Instant::now();
    let apply = lab.spawn(cmd);
    let mut total = None;
    while start.elapsed() < secs(60) {
        if probe.stdout_so_far().contains("got ") {
            total = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let applied = apply.wait(secs(60)).map_err(|e| e.to_string())?;
    if !applied.success() {
        return Err(applied.describe_failure());
    }
    let out = probe.wait(secs(30)).map_err(|e| e.to_string())?;
    let total = total.ok_or_else(|| {
        format!(
            "no connection reached the new target within 60 s: {}",
            out.stdout
        )
    })?;

    // The agent's report of the rule towards the new endpoint.
    let (programmed, _) = poll("node1's report of the rewired link", secs(60), || {
        let r = report(lab, 1, Kind::Link, LINK)?.ok_or("no report")?;
        if r.endpoint.is_some() && r.endpoint != old_endpoint && r.ready {
            Ok(r.time)
        } else {
            Err(format!("{r:?}"))
        }
    });
    let target_start = match moved {
        None => Duration::ZERO,
        Some(c) => {
            let d = lab
                .inspect(c)
                .ok_or_else(|| format!("{c} is not in Docker"))?;
            let s = d
                .pointer("/State/StartedAt")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let at: DateTime<Utc> = s.parse().map_err(|e| format!("StartedAt {s:?}: {e}"))?;
            since(t0, at)
        }
    };
    // Settle before the next rewire: everything Ready.
    let mut refs = vec![format!("link/{LINK}")];
    if let Some(c) = moved {
        refs.push(format!("container/{c}"));
    }
    let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
    lab.wait_ready(&refs, secs(120));
    Ok(Sample {
        total,
        target_start,
        programming: since(t0, programmed),
    })
}

fn row(what: &str, samples: &[Sample]) {
    let (t, tp) = median_p99(samples.iter().map(|s| s.total));
    let (s, sp) = median_p99(samples.iter().map(|s| s.target_start));
    let (p, pp) = median_p99(samples.iter().map(|s| s.programming));
    println!(
        "| {what} | {} | {t:.0} / {tp:.0} ms | {s:.0} / {sp:.0} ms | {p:.0} / {pp:.0} ms |",
        samples.len()
    );
}

fn main() {
    let n = match parse_args() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let lab = Lab::up("rewire-bench", 3);
    let mut docs = base();
    docs.push(link("left"));
    lab.apply(&docs.join("---\n"), secs(180));
    poll(
        "the consumer to reach left through the link",
        secs(60),
        || nc(&lab, "consumer", "127.0.0.1", 6379).map(|_| ()),
    );
    let consumer = identity(&lab, "consumer");

    // Repoints: the link alternates between left (node2) and right (node3).
    let mut repoints = Vec::new();
    for i in 0..n {
        let to = if i % 2 == 0 { "right" } else { "left" };
        let mut d = base();
        d.push(link(to));
        match rewire(&lab, &d.join("---\n"), None) {
            Ok(s) => repoints.push(s),
            Err(e) => panic!("repoint {i} to {to}: {e}\n{}", lab.diagnostics()),
        }
    }
    // Moves: the link stays on `left`, which alternates between node3 and node2.
    let mut d = base();
    d.push(link("left"));
    lab.apply(&d.join("---\n"), secs(180));
    let mut moves = Vec::new();
    for i in 0..n {
        let node = if i % 2 == 0 { 3 } else { 2 };
        let mut d = base();
        d[2] = target("left", node);
        d.push(link("left"));
        match rewire(&lab, &d.join("---\n"), Some("left")) {
            Ok(s) => moves.push(s),
            Err(e) => panic!("move {i} of left to node{node}: {e}\n{}", lab.diagnostics()),
        }
    }
    let after = identity(&lab, "consumer");
    assert_eq!(
        after, consumer,
        "the consumer was restarted or recreated by a rewire"
    );

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let machine = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let profile = if topoctl_path(&lab).to_string_lossy().contains("release") {
        "release"
    } else {
        "debug"
    };
    println!(
        "### Link rewire latency ({n} rewires of each kind, 3 hosts; {machine}, {cores} cores, {profile} binaries)\n"
    );
    println!(
        "Median / p99, from the start of `topoctl apply` (the consumer is never restarted):\n"
    );
    println!(
        "| rewire | n | first connection through the link | target's own start | topo's programming |"
    );
    println!("|---|---:|---:|---:|---:|");
    row("link pointed at another running target", &repoints);
    row("target moved to another host", &moves);
    println!();
    println!(
        "*first connection*: a probe inside the consumer (a new `nc` every 10 ms) answered by the new \
         target; *target's own start*: Docker's StartedAt of the moved target's new container (none for a \
         repoint); *topo's programming*: the time in node1's agent report that the rule towards the new \
         endpoint is in force (API + etcd + derivation + the agent's watch + nft transaction)."
    );
}
