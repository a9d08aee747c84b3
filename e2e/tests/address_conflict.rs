//! Issue 12, an ARP probe (RFC 5227) before a container takes its address: a network
//! namespace outside topo (the test's own, not named with topo's prefixes) is plugged into
//! the network's bridge on node2 by a veth of the test's own name, without topo's
//! external_ids, and holds an address. A container applied on node1 with that static address
//! hears the squatter's answer across the GRE tunnel: it is not Ready (`AddressConflict`
//! naming the address, the squatter's MAC and the bridge), a Warning event says the same,
//! and the address is not configured in its namespace; the rest of the network is
//! unaffected. Once the squatter is gone the container takes the address and is reached.

use std::net::Ipv4Addr;

use serde_json::Value;
use topo_e2e::manifest::{docs, network, on, on_static, web};
use topo_e2e::{Lab, Scenario, converge, poll, run_scenarios, secs};

const NET: &str = "e2e-arp";
const CIDR: &str = "10.64.0.0/16";
/// The address the squatter holds and the container is given.
const SQUATTED: &str = "10.64.200.7";
const SQUATTER_MAC: &str = "02:53:51:00:00:07";
/// The squatter's namespace and its veth's two ends: none of topo's names (`tv-`, `tb-`,
/// `tg-`, `topo`).
const SQUATTER_NS: &str = "e2e-squatter";
const SQUATTER_PORT: &str = "sqh0";
const SQUATTER_IF: &str = "sq0";

#[test]
fn address_conflict() {
    let lab = Lab::up("address-conflict", 2);
    run_scenarios(&lab, &[("squatted_address", squatted_address)]);
}

/// The squatter on node2's bridge; removed when dropped (also when the test fails).
struct Squatter<'a> {
    lab: &'a Lab,
    bridge: String,
}

impl<'a> Squatter<'a> {
    fn plug(lab: &'a Lab, bridge: &str) -> Squatter<'a> {
        let s = Squatter {
            lab,
            bridge: bridge.to_string(),
        };
        lab.sh("ip", &["netns", "add", SQUATTER_NS]).ok();
        lab.on_node(
            2,
            &[
                "ip",
                "link",
                "add",
                SQUATTER_PORT,
                "type",
                "veth",
                "peer",
                "name",
                SQUATTER_IF,
                "netns",
                SQUATTER_NS,
            ],
        )
        .ok();
        lab.on_node(2, &["ip", "link", "set", SQUATTER_PORT, "up"])
            .ok();
        let inside = |args: &[&str]| {
            let mut a = vec!["-n", SQUATTER_NS];
            a.extend_from_slice(args);
            lab.sh("ip", &a).ok();
        };
        inside(&["link", "set", SQUATTER_IF, "address", SQUATTER_MAC]);
        inside(&["addr", "add", &format!("{SQUATTED}/16"), "dev", SQUATTER_IF]);
        inside(&["link", "set", SQUATTER_IF, "up"]);
        lab.vsctl(2, &["add-port", bridge, SQUATTER_PORT]).ok();
        s
    }
}

impl Drop for Squatter<'_> {
    fn drop(&mut self) {
        let _ = self
            .lab
            .vsctl(2, &["--if-exists", "del-port", &self.bridge, SQUATTER_PORT]);
        let _ = self.lab.sh("ip", &["netns", "del", SQUATTER_NS]);
        let _ = self.lab.on_node(2, &["ip", "link", "del", SQUATTER_PORT]);
    }
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

/// The IPv4 addresses on eth0 in the container's namespace (`ip -o -4 addr`).
fn addresses_in(sc: &Scenario, container: &str) -> String {
    sc.in_container_netns(
        container,
        &["ip", "-o", "-4", "addr", "show", "dev", "eth0"],
    )
    .stdout
}

fn squatted_address(sc: &Scenario) {
    sc.apply(
        &docs(&[
            network(NET, CIDR),
            web("arp1", "node1", &[on(NET)]),
            web("arp2", "node2", &[on(NET)]),
        ]),
        converge(),
    );
    let (a1, a2) = (sc.address("arp1", NET), sc.address("arp2", NET));
    sc.wait_ping("arp1", a2, secs(60));
    let bridge = sc
        .bridges_of(2, NET)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("node2 has no bridge for {NET}"));
    let squatter = Squatter::plug(sc, &bridge);
    let ports = sc.ovs_ports(2, &bridge).unwrap_or_default();
    assert!(
        ports.iter().any(|p| p == SQUATTER_PORT),
        "ports of {bridge}: {ports:?}"
    );
    // The squatter answers on the segment: arp2 reaches it (an ARP exchange across nothing
    // but node2's bridge).
    let squatted: Ipv4Addr = SQUATTED.parse().unwrap_or_else(|e| panic!("{e}"));
    sc.wait_ping("arp2", squatted, secs(30));
    sc.step(&format!(
        "a namespace outside topo holds {SQUATTED} ({SQUATTER_MAC}) on node2's {bridge}"
    ));

    let mark = sc.event_mark();
    sc.apply_nowait(&docs(&[web(
        "victim",
        "node1",
        &[on_static(NET, SQUATTED)],
    )]));
    let (_, _, message) = poll(
        "container victim to report AddressConflict",
        secs(120),
        || match ready_condition(sc, "victim")? {
            (s, r, m) if s == "False" && r == "AddressConflict" => Ok((s, r, m)),
            other => Err(format!("Ready is {other:?}")),
        },
    )
    .0;
    for part in [SQUATTED, SQUATTER_MAC, "bridge tb-"] {
        assert!(message.contains(part), "{part:?} not in {message:?}");
    }
    let e = sc.wait_event(
        &mark,
        "AddressConflict",
        "container/victim",
        secs(60),
        |e| e.object.name == "victim" && e.message.contains(SQUATTER_MAC),
    );
    sc.step(&format!("Ready False: {message}; event: {}", e.message));
    let held = addresses_in(sc, "victim");
    assert!(
        !held.contains(SQUATTED),
        "the squatted address was configured: {held}"
    );
    sc.step("the address is not configured in victim's namespace");
    sc.wait_ping("arp1", a2, secs(30));
    sc.wait_ping("arp2", a1, secs(30));
    assert_eq!(
        ready_condition(sc, "arp1").map(|c| c.0),
        Ok("True".to_string())
    );
    sc.step("the rest of the network is unaffected");

    drop(squatter);
    sc.wait_ready(&["container/victim"], secs(90));
    let held = addresses_in(sc, "victim");
    assert!(
        held.contains(&format!("{SQUATTED}/16")),
        "victim's eth0 after the squatter left: {held}"
    );
    sc.wait_ping("arp2", squatted, secs(60));
    sc.wait_ping("victim", a2, secs(60));
    sc.step("the squatter gone, victim takes the address and is reached from node2");
}
