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

/// Checks that each host of `nodes` answers ARP for its underlay address with its br-phy
/// MAC alone: a second answer (from the OVS port ul0, ARP flux) lets peers address their
/// GRE packets to a MAC that ovs-vswitchd does not decapsulate (issue 13).
#[track_caller]
pub fn assert_one_underlay_mac(lab: &Lab, nodes: &[u32]) {
    for &n in nodes {
        let answers = lab.underlay_arp_macs(n);
        let want = lab.underlay_mac(n);
        assert!(
            answers.len() == 1 && answers.contains(&want),
            "{} answers ARP for {} from {answers:?}; only its br-phy ({want}) should",
            node_name(n),
            crate::lab::node_address(n)
        );
    }
}

/// Waits until every container of `mesh` reaches every other one on port 80.
#[track_caller]
pub fn wait_all_reach(lab: &Lab, mesh: &[(String, Ipv4Addr)]) {
    for (from, _) in mesh {
        for (to, ip) in mesh {
            if from != to {
                wait_nc(lab, from, &ip.to_string(), 80, to, secs(60));
            }
        }
    }
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

/// The MAC address of `container`'s eth0.
fn eth0_mac(lab: &Lab, container: &str) -> Option<String> {
    let out = lab.in_container_netns(container, &["ip", "-o", "link", "show", "eth0"]);
    let text = out.stdout;
    let i = text.find("link/ether ")? + "link/ether ".len();
    text.get(i..i + 17).map(str::to_string)
}

/// What the old hosts' switches and the containers believe, for a failure message: each
/// node's MAC table, tunnel neighbours, routes, datapath flows and drop counters, how its
/// switch forwards a probe from its container to the next one (`ofproto/trace`), and each
/// container's MAC and ARP entries. `mesh[i]` runs on `nodes[i]`.
pub fn diagnose(lab: &Lab, nodes: &[u32], mesh: &[(String, Ipv4Addr)]) -> String {
    let mut s = String::from("\n========== mesh diagnostics ==========\n");
    let macs: Vec<Option<String>> = mesh.iter().map(|(c, _)| eth0_mac(lab, c)).collect();
    for (c, _) in mesh {
        for args in [
            ["ip", "-o", "link", "show", "eth0"],
            ["ip", "neigh", "show", "dev", "eth0"],
        ] {
            let out = lab.in_container_netns(c, &args);
            s.push_str(&format!(
                "----- {c}: {}\n{}\n",
                args.join(" "),
                out.combined().trim_end()
            ));
        }
    }
    for (i, &n) in nodes.iter().enumerate() {
        let appctl = |args: &[&str]| lab.appctl(n, args).combined();
        for args in [
            &["fdb/show", "tb-gre"][..],
            &["tnl/neigh/show"],
            &["ovs/route/show"],
            &["dpctl/dump-flows", "-m"],
        ] {
            s.push_str(&format!(
                "----- node{n}: {}\n{}\n",
                args.join(" "),
                appctl(args).trim_end()
            ));
        }
        let coverage: Vec<String> = appctl(&["coverage/show"])
            .lines()
            .filter(|l| l.contains("drop") || l.contains("mac_learning") || l.contains("tunnel"))
            .map(str::to_string)
            .collect();
        s.push_str(&format!(
            "----- node{n}: coverage (drops, MAC learning, tunnels)\n{}\n",
            coverage.join("\n")
        ));
        let next = (i + 1) % mesh.len();
        let port = lab
            .ovs_ports(n, "tb-gre")
            .unwrap_or_default()
            .into_iter()
            .find(|p| p.starts_with("tv-"));
        if let (Some(port), Some(src), Some(dst), Some((_, from_ip))) =
            (port, &macs[i], &macs[next], mesh.get(i))
        {
            let flow = format!(
                "in_port={port},icmp,dl_src={src},dl_dst={dst},nw_src={from_ip},nw_dst={},nw_ttl=64",
                mesh[next].1
            );
            s.push_str(&format!(
                "----- node{n}: ofproto/trace tb-gre {flow}\n{}\n",
                appctl(&["ofproto/trace", "tb-gre", &flow]).trim_end()
            ));
        }
    }
    s.push_str("======================================\n");
    s
}
