//! Issue 3, "How it is checked": three hosts with containers on each reach one another over
//! GRE (ping, TCP, a full-MTU ping), a mesh never loops, and manifests/demo.yaml comes up.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use topo_e2e::manifest::{docs, network, on, on_static, web};
use topo_e2e::{Lab, Scenario, converge, node_address, node_name, poll, run_scenarios, secs};
use topo_schema::names::{bridge_name, gre_port_name};
use topo_schema::net::DEFAULT_MTU;

#[test]
fn reachability() {
    let lab = Lab::up("reachability", 3);
    run_scenarios(
        &lab,
        &[
            ("demo_manifest", demo_manifest),
            ("mesh_reachability", mesh_reachability),
            ("mesh_no_broadcast_loop", mesh_no_broadcast_loop),
        ],
    );
}

/// manifests/demo.yaml: Ready on three hosts, addresses as declared or from each node's
/// block, the mesh's tunnels derived, web1 reaches web2 and db over HTTP, and db's published
/// port answers at node3's underlay address from node1.
fn demo_manifest(sc: &Scenario) {
    let refs = sc.apply_file("manifests/demo.yaml", converge());
    for r in [
        "network/overlay",
        "container/web1",
        "container/web2",
        "container/db",
    ] {
        assert!(
            refs.iter().any(|x| x == r),
            "apply did not report {r}: {refs:?}"
        );
    }
    sc.step("demo applied and Ready");

    assert_eq!(
        sc.address("db", "overlay"),
        Ipv4Addr::new(10, 2, 200, 10),
        "db keeps its static address"
    );
    for (c, node) in [("web1", 1), ("web2", 2)] {
        let ip = sc.address(c, "overlay");
        let block = sc.block("overlay", node);
        assert!(
            block.contains(&ip),
            "{c} got {ip}, outside node{node}'s block {block}"
        );
        let st = sc.status("container", c);
        assert_eq!(st["node"], node_name(node), "status.node of {c}: {st}");
    }
    let tunnels = sc
        .list_json("tunnels", Some("topo.dev/derived-from=network.overlay"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        tunnels.len(),
        3,
        "a mesh of 3 nodes has 3 tunnels: {tunnels:?}"
    );

    let wide = sc.topoctl(&["get", "all", "-o", "wide"]).ok();
    for name in ["web1", "web2", "db", "overlay"] {
        assert!(
            wide.stdout.contains(name),
            "get all -o wide lacks {name}:\n{}",
            wide.stdout
        );
    }

    let web2 = sc.address("web2", "overlay");
    sc.wait_http(
        "web1",
        &format!("http://{web2}/"),
        "hello from web2",
        secs(60),
    );
    sc.wait_http("web1", "http://10.2.200.10/", "hello from db", secs(60));
    sc.wait_ping("web2", Ipv4Addr::new(10, 2, 200, 10), secs(60));
    sc.step("web1 reaches web2 and db over HTTP across GRE");

    let url = format!("http://{}:50080/", node_address(3));
    poll(
        &format!("node1 to fetch db's published port at {url}"),
        secs(60),
        || {
            let out = sc.on_node(1, &["curl", "-sS", "--max-time", "5", &url]);
            if out.success() && out.stdout.trim() == "hello from db" {
                Ok(())
            } else {
                Err(out.combined().trim().to_string())
            }
        },
    );
    sc.step("db's hostPort 50080 answers at node3's underlay address from node1");

    // The demo's links (issue 4): each consumer reaches its target at its listen address.
    let links = sc
        .list_json("links", None)
        .unwrap_or_else(|e| panic!("{e}"));
    for l in &links {
        let name = l
            .pointer("/metadata/name")
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_string();
        let from = l
            .pointer("/spec/from")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        let target = l
            .pointer("/spec/to/container")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let port = l
            .pointer("/spec/to/port")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        let listen = l
            .pointer("/spec/listen")
            .and_then(|v| v.as_str())
            .map_or_else(|| format!("127.0.0.1:{port}"), str::to_string);
        let Some(target) = target else { continue };
        sc.check(&format!("link_{name}"), || {
            sc.wait_http(
                &from,
                &format!("http://{listen}/"),
                &format!("hello from {target}"),
                secs(60),
            );
        });
    }
}

const NET: &str = "e2e-mesh";

/// Four containers: two on node1 (one allocated, one static outside node1's block), one on
/// node2 (allocated), one on node3 (static).
fn mesh_manifest() -> String {
    docs(&[
        network(NET, "10.31.0.0/16"),
        web("m1a", "node1", &[on(NET)]),
        web("m1b", "node1", &[on_static(NET, "10.31.100.11")]),
        web("m2", "node2", &[on(NET)]),
        web("m3", "node3", &[on_static(NET, "10.31.200.3")]),
    ])
}

const MESH: [(&str, u32); 4] = [("m1a", 1), ("m1b", 1), ("m2", 2), ("m3", 3)];

fn mesh_addresses(sc: &Scenario) -> BTreeMap<&'static str, Ipv4Addr> {
    MESH.iter().map(|(c, _)| (*c, sc.address(c, NET))).collect()
}

/// Every ordered pair: ping, HTTP, 1 MiB over TCP (md5 checked), and a ping whose packet
/// fills the container MTU exactly (the kernel sets DF on it) crosses the tunnel.
fn mesh_reachability(sc: &Scenario) {
    sc.apply(&mesh_manifest(), converge());
    let ips = mesh_addresses(sc);
    assert_eq!(ips["m1b"], Ipv4Addr::new(10, 31, 100, 11));
    assert_eq!(ips["m3"], Ipv4Addr::new(10, 31, 200, 3));

    let mtu = sc.network_mtu(NET);
    assert_eq!(
        mtu, DEFAULT_MTU,
        "a network without mtu gets underlay 1500 minus the GRE overhead"
    );
    for (c, _) in MESH {
        let out = sc.exec(c, &["cat", "/sys/class/net/eth0/mtu"]).ok();
        assert_eq!(out.stdout.trim(), mtu.to_string(), "eth0 MTU in {c}");
    }

    for (from, from_node) in MESH {
        for (to, to_node) in MESH {
            if from == to {
                continue;
            }
            let ip = ips[to];
            let took = sc.wait_ping(from, ip, secs(60));
            let p = sc.ping(from, ip, 3, None);
            assert!(
                p.received + 1 >= p.transmitted,
                "{from} -> {to} ({ip}): {p:?}"
            );
            // 20 (IP) + 8 (ICMP) + payload = MTU: the largest packet that needs no fragment.
            let full = sc.ping(from, ip, 2, Some(mtu - 28));
            assert!(
                full.received >= 1,
                "{from} -> {to}: a {mtu}-byte packet did not cross: {full:?}"
            );
            sc.wait_http(
                from,
                &format!("http://{ip}/"),
                &format!("hello from {to}"),
                secs(60),
            );
            let want = sc
                .exec(to, &["cat", "/www/big.md5"])
                .ok()
                .stdout
                .trim()
                .to_string();
            let got = sc
                .exec(
                    from,
                    &[
                        "sh",
                        "-c",
                        &format!("timeout 30 wget -q -O - http://{ip}/big | md5sum"),
                    ],
                )
                .ok();
            assert!(
                !want.is_empty() && got.stdout.starts_with(&want),
                "1 MiB over TCP {from} -> {to}: md5 {:?}, want {want:?}",
                got.stdout
            );
            sc.step(&format!(
                "{from} (node{from_node}) -> {to} (node{to_node}, {ip}): ping (first after {:.1} s), {mtu}-byte ping, HTTP, 1 MiB md5 ok",
                took.as_secs_f64()
            ));
        }
    }
}

/// Sum of the tunnel ports' counters per node.
fn tunnel_rx(sc: &Scenario) -> BTreeMap<u32, u64> {
    let br = bridge_name(NET);
    (1..=3)
        .map(|n| {
            let c = sc.port_counters(n, &br);
            let gre: Vec<_> = c.iter().filter(|(p, _)| p.starts_with("tg-")).collect();
            assert_eq!(
                gre.len(),
                2,
                "node{n} should have 2 tunnel ports on {br}: {c:?}"
            );
            (n, gre.iter().map(|(_, v)| v.rx_packets).sum())
        })
        .collect()
}

fn tx_packets(sc: &Scenario, c: &str) -> u64 {
    let out = sc
        .exec(c, &["cat", "/sys/class/net/eth0/statistics/tx_packets"])
        .ok();
    out.stdout
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("tx_packets of {c}: {e}: {out:?}"))
}

/// Under an ARP flood from one container (pings to 200 unassigned addresses of the cidr),
/// every other node receives each broadcast once over its tunnels (split horizon: none is
/// relayed from tunnel to tunnel), and the counters stop when the flood stops.
fn mesh_no_broadcast_loop(sc: &Scenario) {
    sc.apply(&mesh_manifest(), converge());
    let ips = mesh_addresses(sc);
    // Tunnels are up in both directions before counting.
    sc.wait_ping("m2", ips["m3"], secs(60));
    sc.wait_ping("m1a", ips["m2"], secs(60));
    sc.wait_ping("m1a", ips["m3"], secs(60));
    for n in 1..=3u32 {
        for peer in (1..=3u32).filter(|p| *p != n) {
            let port = gre_port_name(NET, &node_name(peer));
            let rows = sc.vsctl(n, &["get", "Port", &port, "protected"]).ok();
            assert_eq!(
                rows.stdout.trim(),
                "true",
                "node{n}: tunnel port {port} is not protected (split horizon)"
            );
        }
    }

    let sent0 = tx_packets(sc, "m1a");
    let rx0 = tunnel_rx(sc);
    // 10.31.250.0/24 is no node's block: nobody answers, the kernel broadcasts ARP requests
    // (3 per address) and the pings never leave.
    let flood = "i=10; while [ $i -lt 210 ]; do ping -c 1 -W 1 10.31.250.$i >/dev/null 2>&1 & i=$((i+1)); done; wait";
    sc.exec("m1a", &["sh", "-c", flood]);
    // The kernel keeps probing for 3 s: wait until the sender is quiet.
    let mut last = tx_packets(sc, "m1a");
    let (sent, _) = poll("the ARP flood to end", secs(60), || {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let now = tx_packets(sc, "m1a");
        let prev = std::mem::replace(&mut last, now);
        if now == prev {
            Ok(now - sent0)
        } else {
            Err(format!("m1a still sending ({prev} -> {now})"))
        }
    });
    assert!(sent >= 200, "the flood sent only {sent} frames");
    let rx1 = tunnel_rx(sc);
    sc.step(&format!(
        "m1a sent {sent} frames; tunnel rx per node before {rx0:?} after {rx1:?}"
    ));
    for n in [2u32, 3] {
        let got = rx1[&n] - rx0[&n];
        assert!(
            got * 10 >= sent * 9,
            "node{n} received {got} frames over its tunnels for {sent} broadcasts: the flood did not cross"
        );
        assert!(
            got <= sent + sent / 10 + 30,
            "node{n} received {got} frames over its tunnels for {sent} broadcasts from node1: broadcasts are relayed between tunnels (no split horizon / a loop)"
        );
    }
    let got1 = rx1[&1] - rx0[&1];
    assert!(
        got1 <= 30 + sent / 10,
        "node1 received {got1} frames back over its tunnels: its own broadcasts came back (a loop)"
    );

    // A loop keeps counting after the source stops; the mesh does not.
    let before = tunnel_rx(sc);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let after = tunnel_rx(sc);
    for n in 1..=3u32 {
        let grew = after[&n] - before[&n];
        assert!(
            grew <= 20,
            "node{n}'s tunnel ports received {grew} frames in 3 s after the flood stopped (a broadcast loop?)"
        );
    }
    sc.step("no relay between tunnels, counters still after the flood");
}
