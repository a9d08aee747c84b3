//! A host joining and leaving a GRE mesh under traffic (issue 13): the steps and the probes
//! that the seed scenario `ovs_gre_fourth_host` and the `join-leave` evidence driver share,
//! so the driver repeats exactly what the test does once.
//!
//! The mesh is `manifests/seeds/ovs-gre.yaml`: network `gre`, containers gre1..gre3 on
//! node1..node3, each serving its name on port 80. A host joins with `lab.sh add-node N`
//! (namespace, Open vSwitch, agent that registers its Node) and a container `greN` on the
//! network; it leaves in the reverse order: the container is deleted (the others lose their
//! GRE port towards it), the host goes (`lab.sh remove-node N`) and its Node object is
//! deleted. Meanwhile probers ([`crate::probe`]) run between the containers that were there
//! before, each towards the next one, so every tunnel of the old mesh carries traffic.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::Value;

use crate::lab::{Lab, converge, node_name};
use crate::links::wait_nc;
use crate::manifest::{container, on};
use crate::parse::string_map;
use crate::poll::{poll, secs};
use crate::probe::{ProbeRun, Prober};

pub const NETWORK: &str = "gre";
/// One probe every 20 ms: an outage of more than 20 ms cannot pass between two probes.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(20);
/// A probe is lost when no reply came within 2 s (busybox ping's `-W 2` of the old test).
pub const PROBE_WINDOW: Duration = Duration::from_secs(2);

/// The container a joining host `node` runs on the mesh.
pub fn joiner(node: u32) -> (String, String) {
    let name = format!("gre{node}");
    let yaml = container(
        &name,
        &node_name(node),
        &["nc", "-ll", "-p", "80", "-e", "echo", &name].map(String::from),
        &[on(NETWORK)],
    );
    (name, yaml)
}

/// Waits until network `gre` has exactly `want` derived tunnels, all Ready.
#[track_caller]
pub fn wait_tunnels(lab: &Lab, want: usize) {
    let selector = format!("topo.dev/derived-from=network.{NETWORK}");
    poll(
        &format!("{want} derived tunnels of network {NETWORK}, all Ready"),
        converge(),
        || {
            let ts = lab.list_json("tunnels", Some(&selector))?;
            let ready = ts
                .iter()
                .filter(|t| {
                    t.pointer("/status/conditions")
                        .and_then(|c| c.as_array())
                        .is_some_and(|cs| {
                            cs.iter()
                                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                        })
                })
                .count();
            if ts.len() == want && ready == want {
                Ok(())
            } else {
                Err(format!("{} tunnels, {ready} Ready", ts.len()))
            }
        },
    );
}

/// Waits until `new` reaches each of `others` (name, address) on port 80 and back.
#[track_caller]
pub fn wait_reachable(lab: &Lab, new: (&str, Ipv4Addr), others: &[(String, Ipv4Addr)]) {
    for (name, ip) in others {
        wait_nc(lab, new.0, &ip.to_string(), 80, name, secs(60));
        wait_nc(lab, name, &new.1.to_string(), 80, new.0, secs(60));
    }
}

/// Waits until hosts `nodes` have no interface with `options:remote_ip` = `peer` any more.
#[track_caller]
pub fn wait_no_port_towards(lab: &Lab, nodes: &[u32], peer: Ipv4Addr) {
    let remote = peer.to_string();
    for &n in nodes {
        poll(
            &format!("{} to drop its GRE port towards {remote}", node_name(n)),
            converge(),
            || {
                let left: Vec<String> = lab
                    .ovs_rows(n, "Interface")
                    .iter()
                    .filter(|r| string_map(r, "options").get("remote_ip") == Some(&remote))
                    .map(|r| {
                        r.get("name")
                            .and_then(Value::as_str)
                            .unwrap_or("?")
                            .to_string()
                    })
                    .collect();
                if left.is_empty() {
                    Ok(())
                } else {
                    Err(format!("still there: {}", left.join(", ")))
                }
            },
        );
    }
}

/// Starts one prober per container of `mesh`, each towards the next one (the last towards
/// the first): every tunnel between them carries probes one way and replies the other.
#[track_caller]
pub fn start_probes(lab: &Lab, mesh: &[(String, Ipv4Addr)]) -> Vec<Prober> {
    (0..mesh.len())
        .map(|i| {
            let (from, _) = &mesh[i];
            let (to, ip) = &mesh[(i + 1) % mesh.len()];
            let pid = lab
                .container_pid(from)
                .unwrap_or_else(|| panic!("container {from} is not running"));
            Prober::start(
                &format!("{from}->{to}"),
                pid,
                *ip,
                PROBE_INTERVAL,
                PROBE_WINDOW,
            )
            .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect()
}

/// Traffic after a change, before the probers stop: what the agents and ovs-vswitchd do
/// right after it (revalidation, MAC aging of a removed port) falls inside the measurement.
pub const PROBES_AFTER: u64 = 150;

/// Waits until each prober has sent `more` probes beyond what it had sent when called
/// (counted, not slept: a stalled machine gets the same amount of traffic).
#[track_caller]
pub fn keep_probing(probers: &[Prober], more: u64) {
    let targets: Vec<u64> = probers.iter().map(|p| p.sent() + more).collect();
    poll(
        &format!("each prober to send {more} more probes"),
        converge(),
        || {
            let behind: Vec<String> = probers
                .iter()
                .zip(&targets)
                .filter(|(p, t)| p.sent() < **t)
                .map(|(p, t)| format!("{} of {t}", p.sent()))
                .collect();
            if behind.is_empty() {
                Ok(())
            } else {
                Err(format!("sent {}", behind.join(", ")))
            }
        },
    );
}

/// Stops the probers together and returns once the last reply window of each closed.
#[track_caller]
pub fn finish_probes(probers: Vec<Prober>) -> Vec<ProbeRun> {
    for p in &probers {
        p.stop();
    }
    probers
        .into_iter()
        .map(|p| p.finish().unwrap_or_else(|e| panic!("{e}")))
        .collect()
}
