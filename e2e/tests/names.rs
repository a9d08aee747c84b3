//! Issue 9, "Names collision-free by construction", on the lab: the networks
//! `abcdefghijklm` and `abcdef3a4dcf` (the old scheme gave both the bridge
//! `tb-abcdef3a4dcf`) get two bridges on every node, each with its own gateway and ports,
//! both Ready and isolated; a controller restart renames nothing and recreates nothing; and
//! a container bounced between nodes of the one Docker engine ends with one Docker container
//! of its name.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_json::Value;
use topo_e2e::manifest::{docs, network, on, web};
use topo_e2e::{Lab, Scenario, converge, poll, run_scenarios, secs};

#[test]
fn names() {
    let lab = Lab::up("names", 2);
    run_scenarios(
        &lab,
        &[
            (
                "clashing_networks_get_two_bridges",
                clashing_networks_get_two_bridges,
            ),
            ("docker_names_across_moves", docker_names_across_moves),
        ],
    );
}

/// The network whose hashed bridge name (old scheme) is the other's readable one.
const HASHED: &str = "abcdefghijklm";
const READABLE: &str = "abcdef3a4dcf";

/// The OVS port (host veth) of `container` on node N, by its external_ids.
fn port_of(sc: &Scenario, node: u32, container: &str) -> Option<String> {
    let owner = format!("container/{container}");
    sc.ovs_rows(node, "Interface").iter().find_map(|row| {
        (topo_e2e::parse::string_map(row, "external_ids").get(topo_schema::slice::owner::OBJECT)
            == Some(&owner))
        .then(|| row.get("name").and_then(Value::as_str).map(str::to_string))
        .flatten()
    })
}

/// node → (network → its one bridge), asserting there is exactly one per network.
fn bridges(sc: &Scenario) -> BTreeMap<u32, BTreeMap<&'static str, String>> {
    let mut out = BTreeMap::new();
    for n in 1..=2u32 {
        let mut per = BTreeMap::new();
        for net in [HASHED, READABLE] {
            let found = sc.bridges_of(n, net);
            assert_eq!(found.len(), 1, "node{n}: bridges of {net}: {found:?}");
            per.insert(net, found[0].clone());
        }
        out.insert(n, per);
    }
    out
}

fn clashing_networks_get_two_bridges(sc: &Scenario) {
    assert_eq!(
        topo_schema::names::bridge_name(HASHED),
        topo_schema::names::bridge_name(READABLE),
        "the old scheme's clash this scenario is about"
    );
    sc.apply(
        &docs(&[
            network(HASHED, "10.51.0.0/16"),
            network(READABLE, "10.52.0.0/16"),
            web("h1", "node1", &[on(HASHED)]),
            web("h2", "node2", &[on(HASHED)]),
            web("r1", "node1", &[on(READABLE)]),
            web("r2", "node2", &[on(READABLE)]),
        ]),
        converge(),
    );
    sc.wait_ready(
        &[&format!("network/{HASHED}"), &format!("network/{READABLE}")],
        converge(),
    );
    let before = bridges(sc);
    for (n, per) in &before {
        assert_ne!(per[HASHED], per[READABLE], "node{n}: one bridge for both");
        assert_eq!(
            per[READABLE], "tb-abcdef3a4dcf",
            "node{n}: the readable name"
        );
        // Each bridge holds its own network's container and gateway.
        for (net, c) in [(HASHED, format!("h{n}")), (READABLE, format!("r{n}"))] {
            let br = &per[net];
            let port = port_of(sc, *n, &c).unwrap_or_else(|| panic!("{c} has no OVS port"));
            let ports = sc.ovs_ports(*n, br).unwrap_or_default();
            assert!(
                ports.contains(&port),
                "node{n}: {port} of {c} not on {br}: {ports:?}"
            );
            let gw = topo_schema::net::gateway_of(sc.block(net, *n));
            let addrs = sc
                .on_node(*n, &["ip", "-4", "-o", "addr", "show", "dev", br])
                .ok();
            assert!(
                addrs.stdout.contains(&format!("{gw}/16")),
                "node{n}: {br} lacks {net}'s gateway {gw}: {}",
                addrs.stdout
            );
        }
    }
    sc.step(&format!("two bridges per node: {before:?}"));

    let (h1, h2) = (sc.address("h1", HASHED), sc.address("h2", HASHED));
    let (r1, r2) = (sc.address("r1", READABLE), sc.address("r2", READABLE));
    sc.wait_ping("h1", h2, secs(60));
    sc.wait_ping("r1", r2, secs(60));
    sc.wait_ping("r2", r1, secs(60));
    let mut leaks = vec![];
    let mut unreachable = |from: &str, ip: Ipv4Addr| {
        let p = sc.ping(from, ip, 2, None);
        if p.received > 0 {
            leaks.push(format!("{from} pinged {ip}"));
        }
    };
    unreachable("h1", r1);
    unreachable("h1", r2);
    unreachable("r1", h2);
    // On-link routes: only an L2 path (a shared bridge) would answer.
    sc.in_container_netns("h1", &["ip", "route", "add", "10.52.0.0/16", "dev", "eth0"])
        .ok();
    sc.in_container_netns("r1", &["ip", "route", "add", "10.51.0.0/16", "dev", "eth0"])
        .ok();
    unreachable("h1", r1);
    unreachable("r1", h1);
    unreachable("r1", h2);
    assert!(leaks.is_empty(), "the networks are not isolated: {leaks:?}");
    sc.step("each network reachable within, isolated from the other");

    // A new leader reads the names back from the slices: nothing renamed, nothing recreated.
    let ids: Vec<Value> = ["h1", "h2", "r1", "r2"]
        .iter()
        .map(|c| {
            sc.inspect(c)
                .map(|v| v["Id"].clone())
                .unwrap_or(Value::Null)
        })
        .collect();
    let ports: Vec<Option<String>> = [(1, "h1"), (2, "h2"), (1, "r1"), (2, "r2")]
        .iter()
        .map(|(n, c)| port_of(sc, *n, c))
        .collect();
    sc.lab_sh(&["restart-controller"]).ok();
    let mark = sc.event_mark();
    sc.apply(&network("after-restart", "10.53.0.0/16"), converge());
    sc.wait_ping("h1", h2, secs(60));
    assert_eq!(bridges(sc), before, "bridges renamed by the restart");
    let ids_after: Vec<Value> = ["h1", "h2", "r1", "r2"]
        .iter()
        .map(|c| {
            sc.inspect(c)
                .map(|v| v["Id"].clone())
                .unwrap_or(Value::Null)
        })
        .collect();
    assert_eq!(ids, ids_after, "containers recreated by the restart");
    let ports_after: Vec<Option<String>> = [(1, "h1"), (2, "h2"), (1, "r1"), (2, "r2")]
        .iter()
        .map(|(n, c)| port_of(sc, *n, c))
        .collect();
    assert_eq!(ports, ports_after, "host veths renamed by the restart");
    let events = sc.events_since(&mark).unwrap_or_default();
    let drift: Vec<_> = events
        .iter()
        .filter(|e| {
            e.object.name != "after-restart"
                && [
                    "DriftRepaired",
                    "Created",
                    "Recreating",
                    "BridgeCreated",
                    "BridgeRemoved",
                    "Removed",
                    "TunnelRemoved",
                ]
                .contains(&e.reason.as_str())
        })
        .collect();
    assert!(
        drift.is_empty(),
        "the restart disturbed the hosts: {drift:?}"
    );
    sc.step("after a controller restart: same bridges, veths and containers");
}

/// `bouncer` moves node1 → node2 → node1 without waiting in between: on the lab's one Docker
/// engine the name `topo-bouncer` is held by the other node's container until that agent
/// removes it. The agents wait for each other (never touching the other node's container),
/// and it ends running on node1, as one Docker container, Ready.
fn docker_names_across_moves(sc: &Scenario) {
    const NET: &str = "bounce";
    let on_node = |node: &str| {
        docs(&[
            network(NET, "10.54.0.0/16"),
            web("peer", "node2", &[on(NET)]),
            web("bouncer", node, &[on(NET)]),
        ])
    };
    let held = || -> Vec<String> {
        let ps = sc
            .docker(&[
                "ps",
                "-a",
                "--filter",
                "label=topo.dev/object=container/bouncer",
                "--format",
                "{{.Names}} {{.Label \"topo.dev/node\"}} {{.State}}",
            ])
            .ok();
        ps.stdout.lines().map(str::to_string).collect()
    };
    sc.apply(&on_node("node1"), converge());
    sc.apply_nowait(&on_node("node2"));
    // Back to node1 the moment node2 holds the name (node1 may not have let go yet).
    poll("node2 to hold topo-bouncer", secs(60), || {
        let lines = held();
        if lines.iter().any(|l| l.starts_with("topo-bouncer node2")) {
            Ok(())
        } else {
            Err(format!("{lines:?}"))
        }
    });
    sc.apply(&on_node("node1"), converge());
    let (found, _) = poll(
        "one Docker container topo-bouncer, on node1",
        secs(60),
        || {
            let lines = held();
            if lines == ["topo-bouncer node1 running"] {
                Ok(lines)
            } else {
                Err(format!("{lines:?}"))
            }
        },
    );
    sc.step(&format!("Docker holds {found:?}"));
    let ip = sc.address("bouncer", NET);
    sc.wait_ping("peer", ip, secs(60));
    sc.step("bouncer answers from node1");
}
