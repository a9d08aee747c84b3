//! Issue 3, "How it is checked": two networks are isolated; a container moved to another
//! host keeps its static address and its reachability; a deleted container leaves no veth,
//! OVS port or Docker container behind. Issue 8 (the agent's half of Trust): a host's own
//! service keeps its port (HostPortInUse until it is free), a published port answers only at
//! the node's underlay address unless hostIP says otherwise, and a hardened container really
//! has its limits, read-only root, capabilities and no-new-privileges.

use std::net::Ipv4Addr;

use serde_json::Value;
use topo_e2e::links::{node_nc, wait_node_nc};
use topo_e2e::manifest::{docs, network, on, on_static, web};
use topo_e2e::{Lab, Scenario, converge, node_address, node_name, poll, run_scenarios, secs};
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
            ("host_port_in_use_then_free", host_port_in_use_then_free),
            ("hardened_container", hardened_container),
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

const HP_NET: &str = "e2e-hp";
const HP_PORT: u16 = 50180;

/// A container answering `hello-from-NAME` on TCP port 80 (busybox nc).
fn nc_server(name: &str, node: &str, ports: &str, extra: &str) -> String {
    format!(
        "apiVersion: topo.dev/v1alpha1\nkind: Container\nmetadata:\n  name: {name}\nspec:\n  node: {node}\n  image: topo/busybox:latest\n  command: [nc, -ll, -p, \"80\", -e, echo, hello-from-{name}]\n  networks:\n    - network: {HP_NET}\n  ports:\n{ports}{extra}"
    )
}

/// The Ready condition of container `name`: (status, reason, message).
fn ready_condition(sc: &Scenario, name: &str) -> Result<(String, String, String), String> {
    let st = sc.get_json("container", name)?;
    let c = st
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .ok_or_else(|| format!("container/{name} has no Ready condition: {st}"))?;
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Ok((s("status"), s("reason"), s("message")))
}

/// Issue 8: a process of node1 listens on a port a container wants to publish. The port is
/// not taken over and the container says who holds it; once the process is gone the port is
/// published. It answers at node1's underlay address, from another host and from node1, and
/// not at node1's other addresses (127.0.0.1, a second address) unless hostIP is 0.0.0.0.
fn host_port_in_use_then_free(sc: &Scenario) {
    let node1 = node_address(1).to_string();
    let mut service = sc.command("ip");
    let port = HP_PORT.to_string();
    service.args([
        "netns", "exec", "node1", "busybox", "nc", "-ll", "-p", &port, "-e",
    ]);
    service.args(["busybox", "echo", "node-service"]);
    let service = sc.spawn(service);
    let pid = service.pid();
    wait_node_nc(sc, 1, "127.0.0.1", HP_PORT, "node-service", secs(20));
    sc.step(&format!(
        "node1's own service (pid {pid}) listens on {HP_PORT}"
    ));

    sc.apply_nowait(&docs(&[
        network(HP_NET, "10.51.0.0/16"),
        nc_server(
            "hp",
            "node1",
            &format!("    - {{containerPort: 80, hostPort: {HP_PORT}}}\n"),
            "",
        ),
    ]));
    let (_, _, message) =
        poll(
            "container hp to report HostPortInUse",
            secs(90),
            || match ready_condition(sc, "hp")? {
                (s, r, m) if s == "False" && r == "HostPortInUse" => Ok((s, r, m)),
                other => Err(format!("Ready is {other:?}")),
            },
        )
        .0;
    let want = format!("hostPort {HP_PORT}/tcp is in use by busybox (pid {pid})");
    assert!(
        message.starts_with(&want),
        "{message:?} does not start with {want:?}"
    );
    // Not taken over: node1's service still answers at node1's address, from node2 too.
    for _ in 0..3 {
        assert_eq!(
            node_nc(sc, 2, &node1, HP_PORT).as_deref(),
            Ok("node-service"),
            "the port was taken over"
        );
    }
    assert!(
        sc.events()
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .any(|e| e.reason == "HostPortInUse" && e.object.name == "hp"),
        "no HostPortInUse event"
    );
    sc.step("HostPortInUse names the process; the node's service keeps its port");

    drop(service);
    sc.wait_ready(&["container/hp"], secs(60));
    wait_node_nc(sc, 2, &node1, HP_PORT, "hello-from-hp", secs(30));
    wait_node_nc(sc, 1, &node1, HP_PORT, "hello-from-hp", secs(30));
    sc.step("the port freed: published, from node2 and from node1 itself");

    // Only at the underlay address: not at 127.0.0.1 nor at a second address of node1.
    sc.on_node(1, &["ip", "addr", "add", "10.99.0.1/32", "dev", "lo"])
        .ok();
    let elsewhere = [
        ("127.0.0.1", node_nc(sc, 1, "127.0.0.1", HP_PORT)),
        ("10.99.0.1", node_nc(sc, 1, "10.99.0.1", HP_PORT)),
    ];
    // hostIP 0.0.0.0 asks for every address of the node.
    sc.apply(
        &nc_server(
            "hpall",
            "node1",
            &format!(
                "    - {{containerPort: 80, hostPort: {}, hostIP: 0.0.0.0}}\n",
                HP_PORT + 1
            ),
            "",
        ),
        converge(),
    );
    wait_node_nc(
        sc,
        1,
        "10.99.0.1",
        HP_PORT + 1,
        "hello-from-hpall",
        secs(30),
    );
    sc.on_node(1, &["ip", "addr", "del", "10.99.0.1/32", "dev", "lo"])
        .ok();
    for (addr, got) in elsewhere {
        assert!(
            got.is_err(),
            "{addr}:{HP_PORT} answered {got:?}: published beyond the underlay address"
        );
    }
    sc.step("published at 192.168.100.1 only; hostIP 0.0.0.0 takes every address");
}

/// Issue 8: resources, user, read-only root, capabilities and no-new-privileges reach the
/// container: Docker reports them and the container lives by them.
fn hardened_container(sc: &Scenario) {
    let hard = format!(
        "apiVersion: topo.dev/v1alpha1\nkind: Container\nmetadata:\n  name: hard\nspec:\n  node: node2\n  image: topo/busybox:latest\n  command: [sleep, \"3600\"]\n  networks:\n    - network: {HP_NET}\n  resources: {{memory: 64Mi, cpus: \"0.5\", pids: 32}}\n  user: \"1000:1000\"\n  readOnlyRootFilesystem: true\n  capabilities: {{drop: [ALL], add: [NET_BIND_SERVICE]}}\n"
    );
    sc.apply(&docs(&[network(HP_NET, "10.51.0.0/16"), hard]), converge());
    let i = sc.inspect("hard").expect("docker inspect topo-hard");
    let hc = &i["HostConfig"];
    assert_eq!(hc["Memory"], 67_108_864, "{hc}");
    assert_eq!(hc["NanoCpus"], 500_000_000, "{hc}");
    assert_eq!(hc["PidsLimit"], 32, "{hc}");
    assert_eq!(hc["ReadonlyRootfs"], true, "{hc}");
    assert_eq!(hc["CapDrop"], serde_json::json!(["ALL"]), "{hc}");
    assert_eq!(
        hc["CapAdd"],
        serde_json::json!(["CAP_NET_BIND_SERVICE"]),
        "{hc}"
    );
    assert_eq!(
        hc["SecurityOpt"],
        serde_json::json!(["no-new-privileges"]),
        "{hc}"
    );
    assert_eq!(i["Config"]["User"], "1000:1000");
    sc.step(
        "docker inspect shows the limits, user, read-only root, capabilities, no-new-privileges",
    );

    let write = sc.exec("hard", &["sh", "-c", "echo x > /probe"]);
    assert!(!write.success(), "a write to / succeeded");
    assert!(
        write.stderr.contains("Read-only file system"),
        "{}",
        write.describe_failure()
    );
    let status = sc.exec("hard", &["cat", "/proc/self/status"]).ok().stdout;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    assert_eq!(field("CapBnd:"), "0000000000000400", "{status}");
    assert_eq!(
        field("Uid:").split_whitespace().next(),
        Some("1000"),
        "{status}"
    );
    // The pids limit holds: 40 sleepers cannot all start under a limit of 32.
    let fork = sc.exec(
        "hard",
        &["sh", "-c", "for i in $(seq 40); do sleep 2 & done; wait"],
    );
    assert!(
        fork.combined().contains("Resource temporarily unavailable")
            || fork.combined().contains("can't fork"),
        "40 processes started under pids 32: {}",
        fork.describe_failure()
    );
    sc.step(
        "inside: / is read-only, NoNewPrivs 1, only CAP_NET_BIND_SERVICE, uid 1000, pids capped",
    );
}
