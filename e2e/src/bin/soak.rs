//! Issue 9's soak: random changes and faults on a lab of three hosts and three etcd members,
//! with topo's invariants checked throughout.
//!
//! Each step is one of: apply a new container, delete one, move one to another host, tamper
//! with what an agent made (delete a container's veth, its OVS port, the node's nftables
//! table, or its Docker container), SIGKILL an agent (started again at once), SIGKILL an
//! etcd member (started again 2 s later). After every step:
//! - no address is held twice (read from etcd, `topo_e2e::integrity`), and
//! - the time until every container is Ready again is recorded (after a tampering, first
//!   until the agent has put back what was broken (15 s at most), then topoctl wait (60 s));
//!   over 10 s counts as a violation.
//!
//! Every tenth step, and at the end, is a quiet period: once everything is Ready, nothing may
//! be wrong with the addresses, and the hosts hold no veth, OVS port or Docker container of a
//! container that does not exist there. At the end every container and the network are
//! deleted, and no host may hold anything of topo's but its empty nftables table.
//!
//! Seeded (xorshift64): the seed is printed, `SOAK_SEED` replays a run; `SOAK_SECS` (default
//! 600) is how long it injects. Prints the counts of each step, the worst time to Ready by
//! step, and every violation; exits 1 if there was one. `make soak` runs it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use topo_e2e::integrity::Census;
use topo_e2e::lab::Lab;
use topo_e2e::manifest::{container, docs, network, on};
use topo_e2e::{docker_name, node_name};
use topo_schema::names::{bridge_name, veth_host_name};
use topo_schema::slice::owner;

const NET: &str = "soak";
const NODES: u32 = 3;
const MAX_CONTAINERS: usize = 9;
const READY_WITHIN: Duration = Duration::from_secs(10);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Apply,
    Delete,
    Move,
    DeleteVeth,
    DeleteOvsPort,
    DeleteNftTable,
    RemoveContainer,
    KillAgent,
    KillEtcdMember,
}

const STEPS: [Step; 9] = [
    Step::Apply,
    Step::Delete,
    Step::Move,
    Step::DeleteVeth,
    Step::DeleteOvsPort,
    Step::DeleteNftTable,
    Step::RemoveContainer,
    Step::KillAgent,
    Step::KillEtcdMember,
];

/// What a tampering step broke, to see when the agent has put it back.
enum Repair {
    Veth(u32, String),
    OvsPort(u32, String),
    NftTable(u32),
    Docker(String),
}

#[derive(Default)]
struct Tally {
    count: BTreeMap<Step, u32>,
    worst: BTreeMap<Step, Duration>,
    violations: Vec<String>,
}

struct Soak<'a> {
    lab: &'a Lab,
    rng: Rng,
    /// Container name → host index.
    placed: BTreeMap<String, u32>,
    next_name: u32,
    started: Instant,
}

fn main() {
    let seed = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
        .max(1);
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    println!("soak: seed {seed} (SOAK_SEED={seed} replays), {secs} s of steps");
    let lab = Lab::up_with("soak", NODES, &["--etcd", "3"]);
    let mut soak = Soak {
        lab: &lab,
        rng: Rng(seed),
        placed: BTreeMap::new(),
        next_name: 0,
        started: Instant::now(),
    };
    let mut tally = Tally::default();
    soak.setup();
    let mut n = 0u32;
    while soak.started.elapsed() < Duration::from_secs(secs) {
        n += 1;
        let step = STEPS[soak.rng.below(STEPS.len() as u64) as usize];
        soak.run_step(n, step, &mut tally);
        if n.is_multiple_of(10) {
            soak.quiet(&mut tally);
        }
    }
    soak.quiet(&mut tally);
    soak.teardown(&mut tally);
    let failed = report(seed, secs, n, &tally);
    drop(lab);
    if failed {
        std::process::exit(1);
    }
}

impl Soak<'_> {
    fn setup(&mut self) {
        let out = self.lab.apply_raw(&network(NET, "10.90.0.0/16"), &[]);
        assert!(out.success(), "{}", out.describe_failure());
        for i in 0..NODES * 2 {
            self.apply(&format!("k{i}"), 1 + i % NODES);
        }
        self.lab.wait_ready(
            &self
                .refs_owned()
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            Duration::from_secs(180),
        );
    }

    fn apply(&mut self, name: &str, node: u32) -> bool {
        let cmd = ["sleep".to_string(), "1000000".to_string()];
        let yaml = docs(&[container(name, &node_name(node), &cmd, &[on(NET)])]);
        let ok = self.lab.apply_raw(&yaml, &[]).success();
        if ok {
            self.placed.insert(name.to_string(), node);
        }
        ok
    }

    fn refs_owned(&self) -> Vec<String> {
        self.placed
            .keys()
            .map(|c| format!("container/{c}"))
            .collect()
    }

    fn pick(&mut self) -> Option<(String, u32)> {
        let i = self.rng.below(self.placed.len() as u64) as usize;
        self.placed.iter().nth(i).map(|(c, n)| (c.clone(), *n))
    }

    /// Runs one step; returns what it did, for the log, and what the agent must put back.
    fn inject(&mut self, step: Step) -> (String, Option<Repair>) {
        let node = 1 + self.rng.below(u64::from(NODES)) as u32;
        let done = |ok: bool| if ok { "ok" } else { "refused" };
        match (step, self.pick()) {
            (Step::Apply, _) | (_, None) if self.placed.len() < MAX_CONTAINERS => {
                self.next_name += 1;
                let name = format!("s{}", self.next_name);
                let ok = self.apply(&name, node);
                (format!("apply {name} on node{node}: {}", done(ok)), None)
            }
            (Step::Apply | Step::Delete, Some((c, _))) if self.placed.len() > 2 => {
                let args = ["delete", "container", &c, "--wait", "--timeout", "60s"];
                let ok = self.lab.topoctl(&args).success();
                self.placed.remove(&c);
                (format!("delete {c}: {}", done(ok)), None)
            }
            (Step::Move, Some((c, from))) => {
                let to = 1 + (from % NODES);
                let ok = self.apply(&c, to);
                (
                    format!("move {c} node{from} -> node{to}: {}", done(ok)),
                    None,
                )
            }
            (Step::DeleteVeth, Some((c, n))) => {
                let veth = veth_host_name(&c, "eth0");
                self.lab.on_node(n, &["ip", "link", "del", &veth]);
                let what = format!("delete veth {veth} of {c} on node{n}");
                (what, Some(Repair::Veth(n, veth)))
            }
            (Step::DeleteOvsPort, Some((c, n))) => {
                let veth = veth_host_name(&c, "eth0");
                self.lab.vsctl(n, &["del-port", &bridge_name(NET), &veth]);
                let what = format!("delete OVS port {veth} of {c} on node{n}");
                (what, Some(Repair::OvsPort(n, veth)))
            }
            (Step::DeleteNftTable, _) => {
                // A host without the network's bridge has no table to delete.
                let args = ["nft", "delete", "table", "ip", owner::NFT_TABLE];
                let deleted = self.lab.on_node(node, &args).success();
                let what = format!("delete nft table ip {} on node{node}", owner::NFT_TABLE);
                if deleted {
                    (what, Some(Repair::NftTable(node)))
                } else {
                    (format!("{what}: there was none"), None)
                }
            }
            (Step::RemoveContainer, Some((c, n))) => {
                let name = docker_name(&c);
                self.lab.docker(&["rm", "-f", &name]);
                (
                    format!("docker rm -f {c} (node{n})"),
                    Some(Repair::Docker(name)),
                )
            }
            (Step::KillAgent, _) => {
                self.lab.lab_sh(&["kill-agent", &node.to_string(), "KILL"]);
                self.lab.lab_sh(&["start-agent", &node.to_string()]);
                (
                    format!("SIGKILL of node{node}'s agent, started again"),
                    None,
                )
            }
            (Step::KillEtcdMember, _) => {
                let m = 1 + self.rng.below(3) as u32;
                self.lab.signal_etcd(m, "KILL");
                std::thread::sleep(Duration::from_secs(2));
                self.lab.start_etcd(m);
                (
                    format!("SIGKILL of etcd member {m}, started again after 2 s"),
                    None,
                )
            }
            (s, _) => (format!("{s:?}: nothing to do"), None),
        }
    }

    fn run_step(&mut self, n: u32, step: Step, tally: &mut Tally) {
        let (what, repair) = self.inject(step);
        *tally.count.entry(step).or_default() += 1;
        let t = Instant::now();
        // A tampered container may still show Ready for a moment: wait for the repair first.
        let repaired = match &repair {
            // Past 10 s it is a violation anyway; the soak moves on after 15 s.
            Some(r) => self.wait_repaired(r, Duration::from_secs(15)),
            None => Ok(()),
        };
        let ready = repaired.and_then(|()| {
            self.wait_all_ready(Duration::from_secs(60))
                .map_err(|e| format!("not Ready within 60 s: {e}"))
        });
        let took = t.elapsed();
        let worst = tally.worst.entry(step).or_default();
        *worst = (*worst).max(took);
        println!(
            "soak: {:>4} s step {n} {what}; repaired and all Ready after {:.2} s",
            self.started.elapsed().as_secs(),
            took.as_secs_f64()
        );
        if let Err(e) = ready {
            tally.violations.push(format!("step {n} ({what}): {e}"));
        } else if took > READY_WITHIN {
            tally.violations.push(format!(
                "step {n} ({what}): Ready again only after {:.2} s",
                took.as_secs_f64()
            ));
        }
        match Census::read(self.lab) {
            Ok(c) => tally.violations.extend(
                c.address_problems()
                    .into_iter()
                    .filter(|p| p.starts_with("duplicate"))
                    .map(|p| format!("step {n} ({what}): {p}")),
            ),
            Err(e) => tally
                .violations
                .push(format!("step {n}: etcd not readable: {e}")),
        }
    }

    fn repaired(&self, r: &Repair) -> bool {
        match r {
            Repair::Veth(n, veth) => self.lab.links(*n).contains_key(veth),
            Repair::OvsPort(n, port) => self
                .lab
                .ovs_ports(*n, &bridge_name(NET))
                .is_some_and(|p| p.contains(port)),
            Repair::NftTable(n) => self
                .lab
                .on_node(*n, &["nft", "list", "table", "ip", owner::NFT_TABLE])
                .success(),
            Repair::Docker(name) => {
                let out = self
                    .lab
                    .docker(&["inspect", "-f", "{{.State.Running}}", name]);
                out.success() && out.stdout.trim() == "true"
            }
        }
    }

    fn wait_repaired(&self, r: &Repair, timeout: Duration) -> Result<(), String> {
        let t = Instant::now();
        while !self.repaired(r) {
            if t.elapsed() > timeout {
                return Err(format!("not put back within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn wait_all_ready(&self, timeout: Duration) -> Result<(), String> {
        let refs = self.refs_owned();
        if refs.is_empty() {
            return Ok(());
        }
        let t = format!("{}s", timeout.as_secs());
        let mut args = vec!["wait"];
        args.extend(refs.iter().map(String::as_str));
        args.extend(["--for=condition=Ready", "--timeout", &t]);
        let out = self.lab.topoctl(&args);
        if out.success() {
            Ok(())
        } else {
            Err(out.stderr.trim().to_string())
        }
    }

    /// Everything Ready, the addresses right, and no host holding what no container needs.
    fn quiet(&self, tally: &mut Tally) {
        if let Err(e) = self.wait_all_ready(Duration::from_secs(120)) {
            tally
                .violations
                .push(format!("quiet period: not Ready: {e}"));
        }
        match Census::read(self.lab) {
            Ok(c) => tally.violations.extend(
                c.address_problems()
                    .into_iter()
                    .map(|p| format!("quiet period: {p}")),
            ),
            Err(e) => tally.violations.push(format!("quiet period: {e}")),
        }
        tally.violations.extend(self.settled_leaks());
    }

    /// What [`Self::leaks`] still finds after up to 30 s (a moved container's old host removes
    /// its veth a moment after the new one is Ready).
    fn settled_leaks(&self) -> Vec<String> {
        let t = Instant::now();
        loop {
            let leaks = self.leaks();
            if leaks.is_empty() || t.elapsed() > Duration::from_secs(30) {
                return leaks;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// veths and OVS ports of containers not placed on that host; Docker containers of
    /// topo's that are not placed anywhere.
    fn leaks(&self) -> Vec<String> {
        let mut leaks = vec![];
        for n in 1..=NODES {
            let want: BTreeSet<String> = self
                .placed
                .iter()
                .filter(|(_, node)| **node == n)
                .map(|(c, _)| veth_host_name(c, "eth0"))
                .collect();
            for l in self.lab.links(n).keys().filter(|l| l.starts_with("tv-")) {
                if !want.contains(l) {
                    leaks.push(format!("leaked veth {l} on node{n}"));
                }
            }
            let ports = self.lab.ovs_ports(n, &bridge_name(NET)).unwrap_or_default();
            for p in ports.iter().filter(|p| p.starts_with("tv-")) {
                if !want.contains(p) {
                    leaks.push(format!("leaked OVS port {p} on node{n}"));
                }
            }
        }
        let want: BTreeSet<String> = self.placed.keys().map(|c| docker_name(c)).collect();
        let filter = format!("label={}", owner::OBJECT);
        let ps = self
            .lab
            .docker(&["ps", "-a", "--format", "{{.Names}}", "--filter", &filter]);
        for name in ps.stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if !want.contains(name) {
                leaks.push(format!("leaked Docker container {name}"));
            }
        }
        leaks
    }

    /// Deletes everything; then no host may hold anything of topo's.
    fn teardown(&mut self, tally: &mut Tally) {
        let mut refs = self.refs_owned();
        refs.push(format!("network/{NET}"));
        if let Err(e) = self.lab.delete(&refs, Duration::from_secs(180)) {
            tally.violations.push(format!("teardown: {e}"));
        }
        self.placed.clear();
        tally
            .violations
            .extend(self.leaks().into_iter().map(|l| format!("teardown: {l}")));
        tally.violations.extend(
            self.lab
                .leftovers(&refs)
                .into_iter()
                .map(|l| format!("teardown: {l}")),
        );
        for n in 1..=NODES {
            let out = self
                .lab
                .on_node(n, &["nft", "list", "table", "ip", owner::NFT_TABLE]);
            let rules = out
                .stdout
                .lines()
                .filter(|l| l.contains(" comment "))
                .count();
            if rules > 0 {
                tally.violations.push(format!(
                    "teardown: {rules} nft rules left on node{n}:\n{}",
                    out.stdout
                ));
            }
        }
    }
}

fn report(seed: u64, secs: u64, steps: u32, tally: &Tally) -> bool {
    println!("\nsoak: seed {seed}, {secs} s, {steps} steps");
    println!("| step | count | worst time to all Ready (s) |\n|---|---|---|");
    for (step, count) in &tally.count {
        let worst = tally.worst.get(step).copied().unwrap_or_default();
        println!("| {step:?} | {count} | {:.2} |", worst.as_secs_f64());
    }
    println!("\n{} violation(s)", tally.violations.len());
    for v in &tally.violations {
        println!("- {v}");
    }
    !tally.violations.is_empty()
}
