//! Issue 9, etcd as a real cluster: a lab with three etcd members (TLS, client certificates,
//! auth) and two controller replicas; every client gets all three endpoints and stays on its
//! first (agent or replica I starts with member I), so whichever member leads, one agent's
//! watch runs through it.
//!
//! * `leader_killed`: the raft leader is SIGKILLed while writes stream in and containers on
//!   three hosts probe each other (deadline probers, `topo_e2e::probe`, every 20 ms). Every
//!   acknowledged write is in etcd afterwards (read back with etcdctl), no address is held
//!   twice or leaked, writes keep being acknowledged by the two members left, no probe is
//!   lost, and no agent relists its slice (the watcher's relist counter stays 0): the one
//!   whose watch ran through the dead member resumes it from its revision, and the slice
//!   changes made after the kill reach it.
//! * `majority_stopped`: two members paused (SIGSTOP): the outage checks of
//!   `topo_e2e::outage` (writes 503 "etcd unavailable" in time, reads warn, /readyz 503,
//!   /healthz 200), then everything converges by itself once they resume; the times are
//!   printed for RELIABILITY.md.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use std::net::Ipv4Addr;

use topo_e2e::integrity::Census;
use topo_e2e::manifest::{container, docs, network, on};
use topo_e2e::mesh;
use topo_e2e::outage::{self, ghost_node, manifest_file, sleepers};
use topo_e2e::probe::Prober;
use topo_e2e::{Lab, Scenario, converge, node_name, poll, run_scenarios, secs};

#[test]
fn etcd_cluster() {
    let lab = Lab::up_with("etcd-cluster", 3, &["--etcd", "3", "--controllers", "2"]);
    run_scenarios(
        &lab,
        &[
            ("leader_killed", leader_killed),
            ("majority_stopped", majority_stopped),
        ],
    );
}

const NET: &str = "e2e-etcd";
const BULK: &str = "e2e-etcd-bulk";
const GHOST: &str = "ghost";
/// Containers made outside the scenario's own applies.
const STREAM_PREFIXES: &[&str] = &["w-", "outage-", "after-"];

fn sleeper(name: &str, node: u32) -> String {
    let cmd = ["sleep".to_string(), "1000000".to_string()];
    container(name, &node_name(node), &cmd, &[on(NET)])
}

/// Three containers, one per host, on one mesh network; and a node without agent with its
/// own network, where the write stream puts its containers.
fn base(sc: &Scenario) {
    let yaml = docs(&[
        network(NET, "10.62.0.0/16"),
        network(BULK, "10.63.0.0/16"),
        ghost_node(GHOST, 200),
        sleeper("e1", 1),
        sleeper("e2", 2),
        sleeper("e3", 3),
    ]);
    sc.apply_nowait(&yaml);
    sc.wait_ready(
        &["container/e1", "container/e2", "container/e3"],
        converge(),
    );
}

/// Deadline probers e1→e2, e2→e3, e3→e1 (`topo_e2e::probe`), once all reach each other.
fn start_probers(sc: &Scenario) -> Vec<Prober> {
    let mesh: Vec<(String, Ipv4Addr)> = ["e1", "e2", "e3"]
        .iter()
        .map(|c| (c.to_string(), sc.address(c, NET)))
        .collect();
    outage::wait_all_ping(sc, &mesh);
    mesh::start_probes(sc, &mesh)
}

/// One write of the stream and what became of it.
#[derive(Debug, Clone)]
struct Write {
    /// Container created, or deleted when `delete`.
    name: String,
    delete: bool,
    started: Instant,
    acknowledged: bool,
    error: String,
}

/// Writes until `stop`: creates `w-<i>` on the ghost node, and every third write deletes an
/// earlier acknowledged one.
fn write_stream(lab: &Lab, stop: &AtomicBool, log: &Mutex<Vec<Write>>) {
    let mut created: Vec<String> = vec![];
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let started = Instant::now();
        let (name, delete, out) = if i % 3 == 0 && !created.is_empty() {
            let name = created.remove(0);
            let out = lab.topoctl(&["delete", "container", &name]);
            (name, true, out)
        } else {
            let name = format!("w-{i}");
            let file = manifest_file(&sleepers(&name, GHOST, BULK, 1));
            let path = file.path().display().to_string();
            let out = lab.topoctl(&["apply", "-f", &path]);
            // `sleepers` names its containers <prefix>-<index>.
            let name = format!("{name}-0");
            if out.success() {
                created.push(name.clone());
            }
            (name, false, out)
        };
        let w = Write {
            name,
            delete,
            started,
            acknowledged: out.success(),
            error: out.stderr.trim().to_string(),
        };
        log.lock().unwrap_or_else(|e| e.into_inner()).push(w);
        thread::sleep(Duration::from_millis(100));
    }
}

fn leader_killed(sc: &Scenario) {
    base(sc);
    let probers = start_probers(sc);
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::<Write>::new()));
    let lab: &Lab = sc;
    let kill_at = thread::scope(|s| {
        s.spawn(|| write_stream(lab, &stop, &log));
        thread::sleep(secs(8));
        let leader = sc.etcd_leader().unwrap_or_else(|e| panic!("{e}"));
        sc.step(&format!("SIGKILL of the etcd leader, member {leader}"));
        let kill_at = Instant::now();
        sc.signal_etcd(leader, "KILL");
        thread::sleep(secs(20));
        stop.store(true, Ordering::SeqCst);
        (leader, kill_at)
    });
    let (leader, kill_at) = kill_at;
    let writes = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
    sc.start_etcd(leader);
    sc.check("no ping lost while the etcd leader died", || {
        outage::no_probe_lost(
            &mesh::finish_probes(probers),
            "while the etcd leader was killed",
            100,
        )
    });
    sc.check("writes went on on two members", || {
        report_writes(&writes, kill_at);
        let after: Vec<&Write> = writes
            .iter()
            .filter(|w| w.started > kill_at + secs(8))
            .collect();
        assert!(!after.is_empty(), "no write was attempted after the kill");
        let refused: Vec<&&Write> = after.iter().filter(|w| !w.acknowledged).collect();
        assert!(
            refused.is_empty(),
            "writes failed well after the kill: {refused:#?}"
        );
    });
    sc.check(
        "every acknowledged write is in etcd; no address duplicated or leaked",
        || acknowledged_writes_kept(sc, &writes),
    );
    sc.check("agents resumed their watch without relisting", || {
        watches_resumed(sc, leader)
    });
    outage::delete_named(sc, STREAM_PREFIXES);
}

/// Prints what the stream did around the kill.
fn report_writes(writes: &[Write], kill_at: Instant) {
    let acked = writes.iter().filter(|w| w.acknowledged).count();
    eprintln!(
        "e2e[etcd-cluster]: {} writes, {acked} acknowledged; refused ones (s after the kill):",
        writes.len()
    );
    for w in writes.iter().filter(|w| !w.acknowledged) {
        let at = w.started.saturating_duration_since(kill_at).as_secs_f64()
            - kill_at.saturating_duration_since(w.started).as_secs_f64();
        eprintln!(
            "  {:+.2} s {} {}: {}",
            at,
            if w.delete { "delete" } else { "create" },
            w.name,
            w.error
        );
    }
}

/// The last acknowledged write of each container decides whether etcd must hold it.
#[track_caller]
fn acknowledged_writes_kept(sc: &Scenario, writes: &[Write]) {
    let (_, took) = poll("the addresses to be consistent", secs(60), || {
        let census = Census::read(sc)?;
        let problems = census.address_problems();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let mut lost = vec![];
        for w in writes.iter().filter(|w| w.acknowledged) {
            let later = writes
                .iter()
                .any(|x| x.acknowledged && x.name == w.name && x.started > w.started);
            if later {
                continue;
            }
            let present = census.containers.contains_key(&w.name);
            if present == w.delete {
                lost.push(format!(
                    "acknowledged {} of {} {}",
                    if w.delete { "delete" } else { "create" },
                    w.name,
                    if w.delete {
                        "but etcd still holds it"
                    } else {
                        "but etcd does not hold it"
                    }
                ));
            }
        }
        if lost.is_empty() {
            Ok(census.containers.len())
        } else {
            Err(lost.join("; "))
        }
    });
    sc.step(&format!(
        "etcd agrees with every acknowledged write ({:.1} s)",
        took.as_secs_f64()
    ));
}

/// No agent relisted; the agent whose first endpoint was the killed member resumed its watch
/// and still gets slice changes: a container added on its node after the kill becomes Ready.
#[track_caller]
fn watches_resumed(sc: &Scenario, killed: u32) {
    for n in 1..=sc.nodes() {
        let log = sc.log_text(&format!("node{n}/agent.log"));
        assert!(
            !log.contains("slice relisted"),
            "node{n}'s agent relisted its slice:\n{}",
            tail(&log, 30)
        );
        // The watcher's relist counter, as each resumed watch logs it.
        let counted: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("watch resumed from its revision"))
            .filter(|l| !l.contains(" relists=0"))
            .collect();
        assert!(
            counted.is_empty(),
            "node{n}'s slice watcher counts relists: {counted:#?}"
        );
    }
    for i in 1..=sc.controllers() {
        let log = sc.log_text(&Lab::controller_log(i));
        assert!(
            !log.contains("relist=true"),
            "controller {i}'s cache relisted:\n{}",
            tail(&log, 30)
        );
    }
    // Agent I's first endpoint is member I (three agents, three members).
    let log = sc.log_text(&format!("node{killed}/agent.log"));
    assert!(
        log.lines()
            .any(|l| l.contains("watch resumed from its revision")
                && l.contains("watcher=\"slice\"")),
        "node{killed}'s agent, whose etcd member was killed, did not resume its slice watch:\n{}",
        tail(&log, 30)
    );
    let name = format!("after-kill-{killed}");
    sc.apply_nowait(&sleeper(&name, killed));
    sc.wait_ready(&[&format!("container/{name}")], converge());
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn majority_stopped(sc: &Scenario) {
    base(sc);
    // The delete refused during the outage may be applied when etcd resumes (it was queued
    // there): its victim is a container of the ghost node.
    sc.apply_nowait(&sleepers("outage-victim", GHOST, BULK, 1));
    let leader = sc.etcd_leader().unwrap_or_else(|e| panic!("{e}"));
    let stopped: Vec<u32> = (1..=3).filter(|m| *m != leader).collect();
    sc.step(&format!(
        "SIGSTOP of etcd members {stopped:?} (member {leader} alone has no quorum)"
    ));
    for m in &stopped {
        sc.signal_etcd(*m, "STOP");
    }
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        outage::check_unavailable(sc, GHOST, BULK, "outage-victim-0")
    }));
    let since = Instant::now();
    for m in &stopped {
        sc.signal_etcd(*m, "CONT");
    }
    let refused = match checked {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e),
    };
    for (what, took) in &refused {
        sc.step(&format!("{what}: refused in {:.2} s", took.as_secs_f64()));
    }
    let probe = sleeper("after-majority", 2);
    let r = outage::recover(sc, since, &probe, &["container/after-majority"]);
    sc.step(&format!(
        "recovered: /readyz 200 after {:.2} s, first write acknowledged after {:.2} s, a new container Ready after {:.2} s",
        r.ready.as_secs_f64(),
        r.first_write.as_secs_f64(),
        r.converged.as_secs_f64()
    ));
    sc.wait_ready(
        &["container/e1", "container/e2", "container/e3"],
        converge(),
    );
    let problems = Census::read(sc)
        .map(|c| c.address_problems())
        .unwrap_or_else(|e| vec![e]);
    assert!(problems.is_empty(), "after the outage: {problems:#?}");
    outage::no_intent_left(sc);
    outage::delete_named(sc, STREAM_PREFIXES);
}
