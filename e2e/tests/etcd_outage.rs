//! Issue 9, etcd unreachable: the lab's only etcd member is paused (SIGSTOP), so it accepts
//! connections and answers nothing — the hardest kind of outage for a client to notice.
//!
//! While it is paused: `topo_e2e::outage`'s checks (every kind of write — a small apply, one
//! through the intent log, a delete, a create — is refused with 503 "etcd unavailable"
//! within the 5 s bound; reads answer from the cache with a `Warning: 299` header that
//! topoctl prints as `Warning: ...`; `/readyz` 503, `/healthz` 200) and the data plane goes
//! on: deadline probers between containers on two hosts lose nothing. After SIGCONT,
//! everything converges by itself: ready again, a new write acknowledged, a new container
//! Ready, no address duplicated or leaked, no intent left behind (the times are printed for
//! RELIABILITY.md).

use std::net::Ipv4Addr;
use std::time::Instant;

use topo_e2e::integrity::Census;
use topo_e2e::manifest::{container, docs, network, on};
use topo_e2e::outage::{self, ghost_node};
use topo_e2e::{Lab, Scenario, converge, mesh, node_name, run_scenarios};

const NET: &str = "e2e-outage";
const BULK: &str = "e2e-outage-bulk";
const GHOST: &str = "ghost";

#[test]
fn etcd_outage() {
    let lab = Lab::up("etcd-outage", 2);
    run_scenarios(&lab, &[("member_paused", member_paused)]);
}

fn sleeper(name: &str, node: u32) -> String {
    let cmd = ["sleep".to_string(), "1000000".to_string()];
    container(name, &node_name(node), &cmd, &[on(NET)])
}

fn member_paused(sc: &Scenario) {
    sc.apply_nowait(&docs(&[
        network(NET, "10.64.0.0/16"),
        network(BULK, "10.65.0.0/16"),
        ghost_node(GHOST, 201),
        sleeper("o1", 1),
        sleeper("o2", 2),
        outage::sleepers("outage-victim", GHOST, BULK, 1),
    ]));
    sc.wait_ready(&["container/o1", "container/o2"], converge());
    let mesh_: Vec<(String, Ipv4Addr)> = ["o1", "o2"]
        .iter()
        .map(|c| (c.to_string(), sc.address(c, NET)))
        .collect();
    outage::wait_all_ping(sc, &mesh_);
    let probers = mesh::start_probes(sc, &mesh_);
    sc.step("SIGSTOP of etcd (the only member)");
    sc.signal_etcd(1, "STOP");
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let refused = outage::check_unavailable(sc, GHOST, BULK, "outage-victim-0");
        // Traffic while etcd is still paused, after every client gave up on it.
        mesh::keep_probing(&probers, mesh::PROBES_AFTER);
        refused
    }));
    let since = Instant::now();
    sc.signal_etcd(1, "CONT");
    sc.step("SIGCONT of etcd");
    let refused = match checked {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e),
    };
    for (what, took) in &refused {
        sc.step(&format!("{what}: refused in {:.2} s", took.as_secs_f64()));
    }
    // The probes cover the pause, SIGCONT and 150 probes (3 s) of the agents resuming their
    // watches; they end before the new container is applied: adding a port to the netdev
    // datapath can drop one packet in flight on another port (seen this round, 2 runs in 7;
    // a finding of its own, not of an etcd outage — see issue 13's note).
    mesh::keep_probing(&probers, mesh::PROBES_AFTER);
    sc.check("no probe lost while etcd was paused", || {
        outage::no_probe_lost(&mesh::finish_probes(probers), "while etcd was paused", 200)
    });
    let r = outage::recover(
        sc,
        since,
        &sleeper("after-outage", 2),
        &["container/after-outage"],
    );
    sc.step(&format!(
        "recovered: /readyz 200 after {:.2} s, first write acknowledged after {:.2} s, a new container Ready after {:.2} s",
        r.ready.as_secs_f64(),
        r.first_write.as_secs_f64(),
        r.converged.as_secs_f64()
    ));
    sc.wait_ready(&["container/o1", "container/o2"], converge());
    sc.check("no address duplicated or leaked; no intent left", || {
        let problems = Census::read(sc)
            .map(|c| c.address_problems())
            .unwrap_or_else(|e| vec![e]);
        assert!(problems.is_empty(), "after the outage: {problems:#?}");
        outage::no_intent_left(sc);
    });
    outage::delete_named(sc, &["outage-", "after-"]);
}
