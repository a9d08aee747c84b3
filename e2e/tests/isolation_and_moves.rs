//! Issue 3, "How it is checked": two networks are isolated; a container moved to another
//! host keeps its static address and its reachability; a deleted container leaves no veth,
//! OVS port or Docker container behind.

use std::net::Ipv4Addr;

use serde_json::Value;
use topo_e2e::manifest::{docs, network, on, on_static, web};
use topo_e2e::{Lab, Scenario, converge, node_name, poll, run_scenarios, secs};
use topo_schema::names::{bridge_name, veth_host_name};

#[test]
fn isolation_and_moves() {
    let lab = Lab::up("isolation-and-moves", 3);
    run_scenarios(
        &lab,
        &[
            ("networks_are_isolated", networks_are_isolated),
            (
                "move_keeps_address_and_reachability",
                move_keeps_address_and_reachability,
            ),
            ("delete_leaves_nothing", delete_leaves_nothing),
            ("reapply_after_delete", reapply_after_delete),
        ],
    );
}

const A: &str = "e2e-a";
const B: &str = "e2e-b";

/// No packet from a container on A reaches one on B: not through the node gateways (the
/// default route), and not at L2 when the container believes B's addresses are on its link.
fn networks_are_isolated(sc: &Scenario) {
    sc.apply(
        &docs(&[
            network(A, "10.41.0.0/16"),
            network(B, "10.42.0.0/16"),
            web("a1", "node1", &[on(A)]),
            web("a2", "node2", &[on_static(A, "10.41.200.2")]),
            web("b1", "node1", &[on(B)]),
            web("b2", "node2", &[on_static(B, "10.42.200.2")]),
        ]),
        converge(),
    );
    let (a1, a2) = (sc.address("a1", A), sc.address("a2", A));
    let (b1, b2) = (sc.address("b1", B), sc.address("b2", B));
    // Controls: each network works, within a host and across hosts.
    sc.wait_ping("a1", a2, secs(60));
    sc.wait_ping("b1", b2, secs(60));
    sc.wait_ping("b2", b1, secs(60));
    sc.wait_http("a2", &format!("http://{a1}/"), "hello from a1", secs(60));
    sc.step("within each network: reachable");

    // Every crossing is tried before judging, so the failure lists them all.
    let leaks = std::cell::RefCell::new(Vec::new());
    let unreachable = |from: &str, to: &str, ip: Ipv4Addr| {
        let p = sc.ping(from, ip, 2, None);
        if p.received > 0 {
            leaks.borrow_mut().push(format!(
                "{from} pinged {to} ({ip}): {}/{} answered",
                p.received, p.transmitted
            ));
        }
        if let Ok(body) = sc.http_get(from, &format!("http://{ip}/"), 4) {
            leaks.borrow_mut().push(format!(
                "{from} fetched http://{ip}/ from {to}: {:?}",
                body.trim()
            ));
        }
    };
    // Through the default route (the node's gateway on the container's network).
    unreachable("a1", "b1 (same node, via the gateway)", b1);
    unreachable("a1", "b2 (other node, via the gateway)", b2);
    unreachable("b2", "a1 (other node, via the gateway)", a1);
    unreachable("b1", "a2 (other node, via the gateway)", a2);

    // Same-looking routes: a1 and b1 think the other network is on their own link.
    sc.in_container_netns("a1", &["ip", "route", "add", "10.42.0.0/16", "dev", "eth0"])
        .ok();
    sc.in_container_netns("b1", &["ip", "route", "add", "10.41.0.0/16", "dev", "eth0"])
        .ok();
    unreachable("a1", "b1 (same node, on-link route)", b1);
    unreachable("a1", "b2 (other node, on-link route)", b2);
    unreachable("b1", "a2 (other node, on-link route)", a2);
    // Their ARP requests found nobody.
    let neigh = sc
        .in_container_netns("a1", &["ip", "neigh", "show", &b2.to_string()])
        .ok();
    if neigh.stdout.contains("lladdr") {
        leaks.borrow_mut().push(format!(
            "a1 resolved b2's address on the other network: {}",
            neigh.stdout.trim()
        ));
    }
    let leaks = leaks.into_inner();
    assert!(
        leaks.is_empty(),
        "networks {A} and {B} are not isolated:\n  {}",
        leaks.join("\n  ")
    );
    sc.step("across networks, via the gateways or at L2: unreachable");
}

const MOVER_IP: Ipv4Addr = Ipv4Addr::new(10, 41, 200, 50);

fn mover_manifest(node: &str) -> String {
    docs(&[
        network(A, "10.41.0.0/16"),
        web("a1", "node1", &[on(A)]),
        web("a2", "node2", &[on_static(A, "10.41.200.2")]),
        web("mover", node, &[on_static(A, "10.41.200.50")]),
    ])
}

fn docker_node(sc: &Scenario, c: &str) -> Option<String> {
    sc.inspect(c).and_then(|v| {
        v.pointer("/Config/Labels/topo.dev~1node")
            .and_then(Value::as_str)
            .map(str::to_string)
    })
}

/// Moving `mover` from node1 to node3 (only `spec.node` changes): it runs on node3 with the
/// same static address, answers from both other hosts, and node1 keeps nothing of it.
fn move_keeps_address_and_reachability(sc: &Scenario) {
    sc.apply(&mover_manifest("node1"), converge());
    assert_eq!(sc.address("mover", A), MOVER_IP);
    sc.wait_http(
        "a2",
        &format!("http://{MOVER_IP}/"),
        "hello from mover",
        secs(60),
    );
    let a1 = sc.address("a1", A);
    sc.wait_ping("mover", a1, secs(60));
    let veth = veth_host_name("mover", "eth0");
    assert!(
        sc.links(1).contains_key(&veth),
        "node1 has no {veth} for mover"
    );
    let before = sc.inspect("mover").expect("mover runs in Docker");
    sc.step("mover runs on node1");

    sc.apply(&mover_manifest("node3"), converge());
    let ready_at = std::time::Instant::now();
    let st = sc.status("container", "mover");
    assert_eq!(st["node"], "node3", "status.node after the move: {st}");
    assert_eq!(
        sc.address("mover", A),
        MOVER_IP,
        "the static address after the move"
    );
    let (label, _) = poll(
        "mover's Docker container to be node3's",
        secs(60),
        || match docker_node(sc, "mover") {
            Some(n) if n == "node3" => Ok(n),
            other => Err(format!("topo.dev/node label {other:?}")),
        },
    );
    assert_eq!(label, "node3");
    let after = sc
        .inspect("mover")
        .expect("mover runs in Docker after the move");
    assert_ne!(
        before["Id"], after["Id"],
        "the move should create the container anew on node3"
    );
    assert_eq!(after.pointer("/State/Running"), Some(&Value::Bool(true)));

    // a2 still holds mover's old MAC in its ARP cache: only the moved container's gratuitous
    // ARP (once its tunnels are up) makes it answer at once; else a2 waits for the entry to
    // go stale (15-45 s).
    sc.check("moved_container_answers_within_5s_of_ready", || {
        sc.wait_http(
            "a2",
            &format!("http://{MOVER_IP}/"),
            "hello from mover",
            secs(5),
        );
    });
    sc.wait_http(
        "a2",
        &format!("http://{MOVER_IP}/"),
        "hello from mover",
        secs(60),
    );
    let took = ready_at.elapsed();
    sc.wait_http(
        "a1",
        &format!("http://{MOVER_IP}/"),
        "hello from mover",
        secs(60),
    );
    sc.wait_ping("mover", a1, secs(60));
    sc.wait_ping("mover", sc.address("a2", A), secs(60));
    sc.step(&format!(
        "mover answers a2 at {MOVER_IP} from node3 ({:.1} s after Ready)",
        took.as_secs_f64()
    ));

    let br = bridge_name(A);
    poll("node1 to drop mover's veth and port", secs(60), || {
        let links = sc.links(1);
        let ports = sc.ovs_ports(1, &br).unwrap_or_default();
        if links.contains_key(&veth) || ports.contains(&veth) {
            Err(format!(
                "node1 links {:?}, ports of {br} {ports:?}",
                links.keys().collect::<Vec<_>>()
            ))
        } else {
            Ok(())
        }
    });
    assert!(sc.links(3).contains_key(&veth), "node3 has no {veth}");
    let ports3 = sc
        .ovs_ports(3, &br)
        .unwrap_or_else(|| panic!("node3 has no bridge {br}"));
    assert!(
        ports3.contains(&veth),
        "{veth} is not a port of {br} on node3: {ports3:?}"
    );
    sc.step("node1 kept nothing of mover; node3 has its veth on the bridge");
}

/// Deleting a container removes its veth, its OVS port (and every OVSDB row naming it) and
/// its Docker container, on every node; its neighbour on the same node keeps working.
fn delete_leaves_nothing(sc: &Scenario) {
    sc.apply(
        &docs(&[
            network(A, "10.41.0.0/16"),
            web("a1", "node1", &[on(A)]),
            web("a2", "node2", &[on_static(A, "10.41.200.2")]),
            web("gone", "node2", &[on(A)]),
        ]),
        converge(),
    );
    let veth = veth_host_name("gone", "eth0");
    assert!(
        sc.links(2).contains_key(&veth),
        "node2 has no {veth} before the delete"
    );
    let id = sc
        .inspect("gone")
        .and_then(|v| v["Id"].as_str().map(str::to_string))
        .expect("gone runs");

    sc.topoctl(&["delete", "container", "gone", "--wait", "--timeout", "120s"])
        .ok();
    sc.forget(&["container/gone"]);
    let out = sc.topoctl(&["get", "container", "gone"]);
    assert!(
        !out.success(),
        "container/gone still exists after delete --wait: {}",
        out.stdout
    );

    // SPEC: `delete --wait` waits "until the node agents have removed everything".
    sc.check("delete_wait_waits_for_the_agents", || {
        let mut left = sc.leftovers(&["container/gone".to_string()]);
        left.extend(
            (1..=3u32)
                .filter(|n| sc.links(*n).contains_key(&veth))
                .map(|n| format!("veth {veth} on node{n}")),
        );
        assert!(
            left.is_empty(),
            "`topoctl delete --wait` returned while the hosts still held: {}",
            left.join("; ")
        );
    });
    poll(
        "every trace of container gone to disappear",
        secs(60),
        || {
            let mut left = vec![];
            for n in 1..=3u32 {
                if sc.links(n).keys().any(|l| *l == veth) {
                    left.push(format!("veth {veth} on node{n}"));
                }
                for row in sc.ovs_rows(n, "Interface") {
                    let name = row
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    let ext = topo_e2e::parse::string_map(&row, "external_ids");
                    if name == veth || ext.values().any(|v| v == "container/gone") {
                        left.push(format!("OVS interface {name} on node{n} ({ext:?})"));
                    }
                }
            }
            let ps = sc
                .docker(&[
                    "ps",
                    "-a",
                    "-q",
                    "--no-trunc",
                    "--filter",
                    "label=topo.dev/object=container/gone",
                ])
                .ok();
            if !ps.stdout.trim().is_empty() {
                left.push(format!("Docker container(s) {}", ps.stdout.trim()));
            }
            if sc
                .docker(&["inspect", "--type", "container", &id])
                .success()
            {
                left.push(format!("Docker container {id}"));
            }
            if left.is_empty() {
                Ok(())
            } else {
                Err(left.join("; "))
            }
        },
    );
    sc.wait_ping("a2", sc.address("a1", A), secs(30));
    sc.step(&format!(
        "no veth, OVS row or Docker container left of gone; {} still reaches a1",
        node_name(2)
    ));
}

/// A user deletes a manifest and applies it again at once, three times: each time Ready
/// means the new containers run (Docker's container carries the new object's uid), and all
/// of them reach one another.
fn reapply_after_delete(sc: &Scenario) {
    let m = docs(&[
        network(A, "10.41.0.0/16"),
        web("r1", "node1", &[on(A)]),
        web("r2", "node2", &[on(A)]),
        web("r3", "node3", &[on_static(A, "10.41.200.3")]),
    ]);
    let names = ["r1", "r2", "r3"];
    for round in 1..=3 {
        sc.apply(&m, converge());
        sc.check(&format!("round{round}_ready_means_the_new_container_runs"), || {
            for c in names {
                let obj = sc.get_json("container", c).unwrap_or_else(|e| panic!("{e}"));
                let uid = obj.pointer("/metadata/uid").cloned().unwrap_or(Value::Null);
                let d = sc.inspect(c).unwrap_or_else(|| panic!("{c} is Ready but not in Docker"));
                let running = d.pointer("/State/Running") == Some(&Value::Bool(true));
                let label = d.pointer("/Config/Labels/topo.dev~1uid").cloned().unwrap_or(Value::Null);
                assert!(
                    running && label == uid,
                    "round {round}: {c} is Ready but Docker runs {} (running {running}, uid label {label}, object uid {uid})",
                    d["Id"]
                );
            }
        });
        let ips: Vec<(&str, Ipv4Addr)> = names.iter().map(|c| (*c, sc.address(c, A))).collect();
        let mut slowest = std::time::Duration::ZERO;
        for (a, _) in &ips {
            for (b, ip) in &ips {
                if a != b {
                    slowest = slowest.max(sc.wait_ping(a, *ip, secs(60)));
                }
            }
        }
        sc.step(&format!(
            "round {round}: all pairs reach one another (slowest first ping {:.1} s)",
            slowest.as_secs_f64()
        ));
        if round < 3 {
            sc.topoctl(&[
                "delete",
                "containers",
                "r1",
                "r2",
                "r3",
                "--wait",
                "--timeout",
                "120s",
            ])
            .ok();
            sc.topoctl(&["delete", "network", A, "--wait", "--timeout", "120s"])
                .ok();
        }
    }
}
