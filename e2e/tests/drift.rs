//! Issue 3, "How it is checked": what is deleted or killed by hand on a host — a GRE port, a
//! container's OVS port, the network's bridge, a veth, a container — is restored and
//! reported; an agent killed with SIGKILL and restarted while a ping runs between hosts
//! restarts no container, and the lost pings are counted.
//!
//! Issue 9: drift that makes no event in the node's namespace — the node's nftables table
//! deleted or flushed, a container's address or route changed inside its own namespace, a
//! link's table removed inside its consumer — is heard (nftables and rtnetlink notifications,
//! in the node's and in each container's namespace), repaired and reported with the drift's
//! kind. The lab's agents resync every 300 s: a repair within [`REPAIR`] came from the event.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::Value;
use topo_e2e::manifest::{docs, link, network, on, on_static, web};
use topo_e2e::parse::{PingStats, string_map};
use topo_e2e::{Lab, Scenario, converge, node_address, node_name, poll, run_scenarios, secs};
use topo_schema::names::{bridge_name, gre_port_name, veth_host_name};

#[test]
fn drift() {
    let lab = Lab::up("drift", 3);
    run_scenarios(
        &lab,
        &[
            ("repairs", repairs),
            ("repairs_by_event", repairs_by_event),
            (
                "agent_restart_keeps_containers",
                agent_restart_keeps_containers,
            ),
        ],
    );
}

const NET: &str = "e2e-drift";
const CONTAINERS: [(&str, u32); 3] = [("d1", 1), ("d2", 2), ("d3", 3)];
/// Time allowed for a repair (the aim is under 1 s; this is a 2-core machine).
const REPAIR: Duration = Duration::from_secs(30);

fn manifest() -> String {
    docs(&[
        network(NET, "10.51.0.0/16"),
        web("d1", "node1", &[on(NET)]),
        web("d2", "node2", &[on_static(NET, "10.51.200.2")]),
        web("d3", "node3", &[on(NET)]),
    ])
}

fn ips(sc: &Scenario) -> BTreeMap<&'static str, Ipv4Addr> {
    CONTAINERS
        .iter()
        .map(|(c, _)| (*c, sc.address(c, NET)))
        .collect()
}

/// Every container pings every other one (polling: right after a repair ARP may be relearnt).
fn all_reach(sc: &Scenario, ips: &BTreeMap<&str, Ipv4Addr>) {
    for (a, _) in CONTAINERS {
        for (b, _) in CONTAINERS {
            if a != b {
                sc.wait_ping(a, ips[b], secs(60));
            }
        }
    }
}

fn describe_repair(what: &str, took: Duration) -> String {
    format!(
        "{what} restored {:.0} ms after the tampering",
        took.as_secs_f64() * 1000.0
    )
}

fn gre_interface(sc: &Scenario, node: u32, port: &str) -> Result<BTreeMap<String, String>, String> {
    let rows = sc.ovs_rows(node, "Interface");
    let row = rows
        .iter()
        .find(|r| r.get("name").and_then(Value::as_str) == Some(port))
        .ok_or_else(|| format!("no interface {port} on node{node}"))?;
    if row.get("type").and_then(Value::as_str) != Some("gre") {
        return Err(format!(
            "{port} on node{node} has type {:?}",
            row.get("type")
        ));
    }
    Ok(string_map(row, "options"))
}

/// Each tampering, its repair (polled), its DriftRepaired event, and reachability after it.
fn repairs(sc: &Scenario) {
    sc.apply(&manifest(), converge());
    let ips = ips(sc);
    all_reach(sc, &ips);
    let br = bridge_name(NET);
    sc.step("d1, d2, d3 reach one another");

    sc.check("gre_port_deleted", || {
        let port = gre_port_name(NET, "node2");
        gre_interface(sc, 1, &port).unwrap_or_else(|e| panic!("before: {e}"));
        let mark = sc.event_mark();
        let t = Instant::now();
        sc.vsctl(1, &["del-port", &br, &port]).ok();
        poll(
            &format!("GRE port {port} on node1 to come back"),
            REPAIR,
            || {
                let opts = gre_interface(sc, 1, &port)?;
                let want = node_address(2).to_string();
                if opts.get("remote_ip") != Some(&want) {
                    return Err(format!("options {opts:?}"));
                }
                let ports = sc.ovs_ports(1, &br).unwrap_or_default();
                if ports.contains(&port) {
                    Ok(())
                } else {
                    Err(format!("ports of {br}: {ports:?}"))
                }
            },
        );
        sc.step(&describe_repair(&format!("GRE port {port}"), t.elapsed()));
        let e = sc.wait_event(&mark, "DriftRepaired", &port, REPAIR, |e| {
            e.message.contains(&port)
        });
        sc.step(&format!("event: {} {}: {}", e.object, e.reason, e.message));
        sc.wait_ping("d1", ips["d2"], secs(60));
        sc.wait_ping("d2", ips["d1"], secs(60));
    });

    sc.check("container_port_deleted", || {
        let veth = veth_host_name("d2", "eth0");
        let mark = sc.event_mark();
        let t = Instant::now();
        sc.vsctl(2, &["del-port", &br, &veth]).ok();
        poll(
            &format!("{veth} to be a port of {br} on node2 again"),
            REPAIR,
            || {
                let ports = sc.ovs_ports(2, &br).unwrap_or_default();
                if ports.contains(&veth) {
                    Ok(())
                } else {
                    Err(format!("ports of {br}: {ports:?}"))
                }
            },
        );
        sc.step(&describe_repair(&format!("OVS port {veth}"), t.elapsed()));
        let e = sc.wait_event(&mark, "DriftRepaired", "container/d2", REPAIR, |e| {
            e.object.to_string() == "container/d2" || e.message.contains(&veth)
        });
        sc.step(&format!("event: {} {}: {}", e.object, e.reason, e.message));
        sc.wait_ping("d1", ips["d2"], secs(60));
        sc.wait_ping("d3", ips["d2"], secs(60));
    });

    sc.check("bridge_deleted", || {
        let gw = topo_schema::net::gateway_of(sc.block(NET, 3));
        let wanted = [
            gre_port_name(NET, "node1"),
            gre_port_name(NET, "node2"),
            veth_host_name("d3", "eth0"),
        ];
        let mark = sc.event_mark();
        let t = Instant::now();
        sc.vsctl(3, &["del-br", &br]).ok();
        poll(
            &format!("bridge {br} on node3 to come back with its ports and gateway {gw}"),
            REPAIR,
            || {
                let ports = sc
                    .ovs_ports(3, &br)
                    .ok_or_else(|| format!("no bridge {br}"))?;
                if let Some(p) = wanted.iter().find(|w| !ports.contains(w)) {
                    return Err(format!("{p} missing from {ports:?}"));
                }
                let addr = sc.on_node(3, &["ip", "-4", "-o", "addr", "show", "dev", &br]);
                if !addr.stdout.contains(&format!(" {gw}/")) {
                    return Err(format!("{br} addresses: {}", addr.combined().trim()));
                }
                Ok(())
            },
        );
        sc.step(&describe_repair(
            &format!("bridge {br} with its ports and gateway"),
            t.elapsed(),
        ));
        let e = sc.wait_event(&mark, "DriftRepaired", &br, REPAIR, |e| {
            e.message.contains(&br) || e.object.to_string() == format!("network/{NET}")
        });
        sc.step(&format!("event: {} {}: {}", e.object, e.reason, e.message));
        sc.wait_ping("d1", ips["d3"], secs(60));
        sc.wait_ping("d3", ips["d2"], secs(60));
    });

    sc.check("veth_deleted", || {
        let veth = veth_host_name("d1", "eth0");
        let ip = ips["d1"];
        let mark = sc.event_mark();
        let t = Instant::now();
        sc.sh("ip", &["-n", &node_name(1), "link", "del", &veth])
            .ok();
        poll(
            &format!("{veth} and d1's eth0 ({ip}) to come back"),
            REPAIR,
            || {
                if !sc.links(1).contains_key(&veth) {
                    return Err(format!("no {veth} on node1"));
                }
                let ports = sc.ovs_ports(1, &br).unwrap_or_default();
                if !ports.contains(&veth) {
                    return Err(format!("{veth} not a port of {br}: {ports:?}"));
                }
                let a = sc.exec("d1", &["ip", "-4", "addr", "show", "eth0"]);
                if !a.stdout.contains(&format!("inet {ip}/")) {
                    return Err(format!("d1 eth0: {}", a.combined().trim()));
                }
                Ok(())
            },
        );
        sc.step(&describe_repair(&format!("veth {veth}"), t.elapsed()));
        let e = sc.wait_event(&mark, "DriftRepaired", "container/d1", REPAIR, |e| {
            e.object.to_string() == "container/d1"
        });
        sc.step(&format!("event: {} {}: {}", e.object, e.reason, e.message));
        sc.check("veth_repaired_container_reachable_within_5s", || {
            sc.wait_ping("d3", ips["d1"], secs(5));
            sc.wait_ping("d2", ips["d1"], secs(5));
        });
        sc.wait_ping("d1", ips["d2"], secs(60));
        sc.wait_ping("d3", ips["d1"], secs(60));
    });

    sc.check("container_killed", || {
        let before = sc.inspect("d2").expect("d2 runs");
        let started = before.pointer("/State/StartedAt").cloned();
        let restarts = sc.status("container", "d2")["restartCount"]
            .as_u64()
            .unwrap_or(0);
        let mark = sc.event_mark();
        let t = Instant::now();
        sc.docker(&["kill", &topo_e2e::docker_name("d2")]).ok();
        let (after, _) = poll("d2 to run again", REPAIR, || {
            let v = sc.inspect("d2").ok_or("no container topo-d2")?;
            let running = v.pointer("/State/Running") == Some(&Value::Bool(true));
            if running && v.pointer("/State/StartedAt").cloned() != started {
                Ok(v)
            } else {
                Err(format!("State {}", v.get("State").unwrap_or(&Value::Null)))
            }
        });
        sc.step(&describe_repair(
            &format!(
                "container d2 (same Docker container: {})",
                after["Id"] == before["Id"]
            ),
            t.elapsed(),
        ));
        let running_at = Instant::now();
        // d1 and d3 still hold d2's old MAC (its veth is new): the restarted container's
        // gratuitous ARP is what makes it reachable at once.
        sc.check("killed_container_reachable_within_5s", || {
            sc.wait_ping("d1", ips["d2"], secs(5));
            sc.wait_ping("d3", ips["d2"], secs(5));
        });
        sc.wait_ping("d1", ips["d2"], secs(60));
        sc.step(&format!(
            "d1 reaches d2 again {:.1} s after d2 runs again",
            running_at.elapsed().as_secs_f64()
        ));
        sc.wait_http(
            "d3",
            &format!("http://{}/", ips["d2"]),
            "hello from d2",
            secs(60),
        );
        let (how, _) = poll(
            "the restart of d2 to be reported (event or restartCount)",
            REPAIR,
            || {
                let n = sc.status("container", "d2")["restartCount"]
                    .as_u64()
                    .unwrap_or(0);
                let evs = sc.events_since(&mark)?;
                let ev = evs.iter().find(|e| e.object.to_string() == "container/d2");
                match ev {
                    Some(e) if e.reason == "DriftRepaired" || n > restarts => Ok(format!(
                        "restartCount {restarts} -> {n}; event {} {}: {}",
                        e.object, e.reason, e.message
                    )),
                    _ if n > restarts => Ok(format!("restartCount {restarts} -> {n}")),
                    _ => Err(format!(
                        "restartCount {n}; new events of d2: {:?}",
                        ev.map(|e| (&e.reason, &e.message))
                    )),
                }
            },
        );
        sc.step(&format!("reported: {how}"));
    });

    let out = sc.topoctl(&["events"]).ok();
    assert!(
        out.stdout.contains("DriftRepaired"),
        "topoctl events shows no DriftRepaired:\n{}",
        out.stdout
    );
}

#[derive(Debug, PartialEq)]
struct Identity {
    id: Value,
    started_at: Value,
    docker_restarts: Value,
    status_restarts: Value,
}

fn identity(sc: &Scenario, c: &str) -> Identity {
    let v = sc
        .inspect(c)
        .unwrap_or_else(|| panic!("{c} is not in Docker"));
    Identity {
        id: v["Id"].clone(),
        started_at: v
            .pointer("/State/StartedAt")
            .cloned()
            .unwrap_or(Value::Null),
        docker_restarts: v["RestartCount"].clone(),
        status_restarts: sc.status("container", c)["restartCount"].clone(),
    }
}

/// SIGKILL the agents of node1 and node2 while d1 pings d2 five times a second, then start
/// them again: no container restarts, no interface is recreated, few pings are lost.
fn agent_restart_keeps_containers(sc: &Scenario) {
    sc.apply(&manifest(), converge());
    let ips = ips(sc);
    all_reach(sc, &ips);
    let before: Vec<Identity> = CONTAINERS.iter().map(|(c, _)| identity(sc, c)).collect();
    let plumbing_before = topo_e2e::plumbing::plumbing(sc, &[1, 2]);
    let mark = sc.event_mark();

    let target = ips["d2"].to_string();
    let mut ping = sc.exec_bg(
        "d1",
        &["ping", "-i", "0.2", "-c", "150", "-W", "2", &target],
    );
    poll("the background ping to get answers", secs(30), || {
        let so_far = ping.stdout_so_far();
        if so_far.contains("seq=4 ") {
            Ok(())
        } else {
            Err(format!("ping output {so_far:?}"))
        }
    });
    let killed_at = chrono::Utc::now();
    let t = Instant::now();
    for n in [1, 2] {
        let pid = sc
            .agent_pid(n)
            .unwrap_or_else(|| panic!("node{n}'s agent is not running"));
        sc.kill_agent(n, "KILL");
        assert!(
            sc.agent_pid(n).is_none(),
            "node{n}'s agent (pid {pid}) survived SIGKILL"
        );
    }
    sc.step("agents of node1 and node2 killed with SIGKILL");
    for n in [1, 2] {
        sc.start_agent(n);
    }
    for n in [1, 2] {
        poll(
            &format!("node{n}'s new agent to renew its heartbeat"),
            secs(60),
            || match sc.heartbeat(n)? {
                Some(h) if h.started > killed_at => Ok(()),
                other => Err(format!("heartbeat {other:?}")),
            },
        );
    }
    sc.step(&format!(
        "agents back (heartbeats) {:.1} s after the kill",
        t.elapsed().as_secs_f64()
    ));
    assert!(
        ping.is_running(),
        "the 30 s ping ended before the restarted agents were back: the restart was not measured under traffic"
    );
    let out = ping.wait(secs(120)).unwrap_or_else(|e| panic!("{e}"));
    let stats = PingStats::parse(&out.stdout)
        .unwrap_or_else(|| panic!("no ping summary:\n{}", out.describe_failure()));
    eprintln!(
        "e2e[drift]: agent restart under traffic: {} of {} pings lost (d1 on node1 -> d2 on node2, every 200 ms)",
        stats.lost(),
        stats.transmitted
    );
    assert!(
        stats.transmitted >= 140,
        "the ping sent only {} packets: {}",
        stats.transmitted,
        out.stdout
    );
    assert!(
        stats.lost() <= 5,
        "{} of {} pings lost while the agents restarted",
        stats.lost(),
        stats.transmitted
    );

    // The restarted agents have had the rest of the ping (over 20 s) to do anything rash.
    let after: Vec<Identity> = CONTAINERS.iter().map(|(c, _)| identity(sc, c)).collect();
    for (((c, _), b), a) in CONTAINERS.iter().zip(&before).zip(&after) {
        assert_eq!(
            b, a,
            "container {c} changed across the agent restart (restarted or recreated)"
        );
    }
    let plumbing_after = topo_e2e::plumbing::plumbing(sc, &[1, 2]);
    assert_eq!(
        plumbing_before, plumbing_after,
        "interfaces were recreated across the agent restart"
    );
    let noisy: Vec<String> = sc
        .events_since(&mark)
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .filter(|e| e.reason == "DriftRepaired" || e.reason == "Started")
        .map(topo_e2e::lab::show_event)
        .collect();
    assert!(
        noisy.is_empty(),
        "the restarted agents repaired or started something: {noisy:?}"
    );
    all_reach(sc, &ips);
    sc.step("no container restarted, no interface recreated, nothing repaired");
}

/// The link of [`repairs_by_event`]: d1 reaches d2's web server at 127.0.0.1:8081.
const LINK_LISTEN: &str = "127.0.0.1:8081";

/// `nft list table ip topo` run by `run` (in a node's or a container's namespace), its lines
/// sorted; an error when there is no table.
fn topo_table(run: impl Fn(&[&str]) -> topo_e2e::cmd::Output) -> Result<Vec<String>, String> {
    let out = run(&["nft", "list", "table", "ip", "topo"]);
    if !out.success() {
        return Err(out.combined().trim().to_string());
    }
    let mut lines: Vec<String> = out
        .stdout
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    lines.sort();
    Ok(lines)
}

/// Waits for a DriftRepaired event of `object` after `mark` whose message names one of
/// `kinds` among its drift kinds, and prints it.
fn wait_drift_event(sc: &Scenario, mark: &topo_e2e::lab::EventMark, object: &str, kinds: &[&str]) {
    let e = sc.wait_event(
        mark,
        "DriftRepaired",
        &format!("{object} [{}]", kinds.join(" or ")),
        REPAIR,
        |e| {
            e.object.to_string() == object
                && e.message.rsplit_once("[drift: ").is_some_and(|(_, named)| {
                    named
                        .trim_end_matches(']')
                        .split(", ")
                        .any(|k| kinds.contains(&k))
                })
        },
    );
    sc.step(&format!("event: {} {}: {}", e.object, e.reason, e.message));
}

/// Tampers with the table `run` lists (`tamper` is the nft command after `nft`), then waits
/// until it is back as it was and the event of `object` names `kind`.
fn table_repaired(
    sc: &Scenario,
    what: &str,
    object: &str,
    kind: &str,
    tamper: &[&str],
    run: &dyn Fn(&[&str]) -> topo_e2e::cmd::Output,
) {
    let before = topo_table(run).unwrap_or_else(|e| panic!("{what} has no table ip topo: {e}"));
    let mark = sc.event_mark();
    let t = Instant::now();
    let mut cmd = vec!["nft"];
    cmd.extend_from_slice(tamper);
    let out = run(&cmd);
    assert!(out.success(), "{}", out.describe_failure());
    poll(
        &format!("table ip topo of {what} to be restored"),
        REPAIR,
        || {
            let now = topo_table(run)?;
            if now == before {
                Ok(())
            } else {
                Err(format!("table now {now:?}, was {before:?}"))
            }
        },
    );
    sc.step(&describe_repair(
        &format!("table ip topo of {what} ({kind})"),
        t.elapsed(),
    ));
    wait_drift_event(sc, &mark, object, &[kind]);
}

/// d3's eth0 addresses (`A/P`) and its default route's gateway, as `ip` shows them.
fn eth0_of(sc: &Scenario, c: &str) -> (Vec<String>, Option<String>) {
    let a = sc.in_container_netns(c, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    let addrs = a
        .stdout
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace().skip_while(|w| *w != "inet");
            w.next().and(w.next()).map(str::to_string)
        })
        .collect();
    let r = sc.in_container_netns(c, &["ip", "-4", "route", "show", "default"]);
    let gw = r
        .stdout
        .split_whitespace()
        .skip_while(|w| *w != "via")
        .nth(1)
        .map(str::to_string);
    (addrs, gw)
}

/// Changes d3's address and then deletes its default route inside its namespace; each is
/// restored and reported by the container's own namespace watch.
fn container_namespace_repairs(sc: &Scenario, ips: &BTreeMap<&str, Ipv4Addr>) {
    let (addrs, gw) = eth0_of(sc, "d3");
    let want = format!("{}/", ips["d3"]);
    let own = addrs
        .iter()
        .find(|a| a.starts_with(&want))
        .unwrap_or_else(|| panic!("d3's eth0 has no {}: {addrs:?}", ips["d3"]))
        .clone();
    let gw = gw.unwrap_or_else(|| panic!("d3 has no default route"));
    let restored = || {
        let (now_addrs, now_gw) = eth0_of(sc, "d3");
        if now_addrs == [own.clone()] && now_gw.as_deref() == Some(gw.as_str()) {
            Ok(())
        } else {
            Err(format!("eth0 {now_addrs:?}, default via {now_gw:?}"))
        }
    };
    sc.check("container_address_changed", || {
        let mark = sc.event_mark();
        let t = Instant::now();
        let stray = "10.51.250.250/16";
        for args in [
            ["ip", "addr", "add", stray, "dev", "eth0"],
            ["ip", "addr", "del", own.as_str(), "dev", "eth0"],
        ] {
            let out = sc.in_container_netns("d3", &args);
            assert!(out.success(), "{}", out.describe_failure());
        }
        poll("d3's address and route to be restored", REPAIR, restored);
        sc.step(&describe_repair(
            &format!("d3's address {own}"),
            t.elapsed(),
        ));
        // Two tamperings, a stray address then the own one deleted: when the agent sees the
        // first alone, its repair (which sets the whole address list) also puts back the
        // second, and only the stray is named (1 run in ~20 of make test).
        wait_drift_event(
            sc,
            &mark,
            "container/d3",
            &["AddressMissing", "StrayAddress"],
        );
        sc.wait_ping("d1", ips["d3"], secs(60));
    });
    sc.check("container_route_deleted", || {
        let mark = sc.event_mark();
        let t = Instant::now();
        let out = sc.in_container_netns("d3", &["ip", "route", "del", "default"]);
        assert!(out.success(), "{}", out.describe_failure());
        poll("d3's default route to be restored", REPAIR, restored);
        sc.step(&describe_repair(
            &format!("d3's default route via {gw}"),
            t.elapsed(),
        ));
        wait_drift_event(sc, &mark, "container/d3", &["DefaultRouteMissing"]);
    });
}

/// Tampering that the node's namespace never hears of, each repaired by its own event.
fn repairs_by_event(sc: &Scenario) {
    let m = docs(&[
        manifest(),
        link("e2e-drift-web", "d1", "d2", 80, LINK_LISTEN),
    ]);
    sc.apply(&m, converge());
    let ips = ips(sc);
    all_reach(sc, &ips);
    let through_link = format!("http://{LINK_LISTEN}/");
    sc.wait_http("d1", &through_link, "hello from d2", secs(60));
    sc.step("d1, d2, d3 reach one another; d1 reaches d2 through its link");

    let on_node1 = |args: &[&str]| sc.on_node(1, args);
    sc.check("node_nat_table_deleted", || {
        let tamper = ["delete", "table", "ip", "topo"];
        table_repaired(
            sc,
            "node1",
            "node/node1",
            "NodeNatTableDeleted",
            &tamper,
            &on_node1,
        );
    });
    sc.check("node_nat_table_flushed", || {
        let tamper = ["flush", "table", "ip", "topo"];
        table_repaired(
            sc,
            "node1",
            "node/node1",
            "NodeNatTableFlushed",
            &tamper,
            &on_node1,
        );
        sc.wait_ping("d1", ips["d2"], secs(60));
    });
    container_namespace_repairs(sc, &ips);
    sc.check("link_table_deleted_in_consumer", || {
        let in_d1 = |args: &[&str]| sc.in_container_netns("d1", args);
        let tamper = ["delete", "table", "ip", "topo"];
        table_repaired(
            sc,
            "d1",
            "container/d1",
            "LinkTableDeleted",
            &tamper,
            &in_d1,
        );
        sc.wait_http("d1", &through_link, "hello from d2", secs(60));
    });
}
