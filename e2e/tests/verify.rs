//! Issue 12, `topoctl verify`: the agents test the live dataplane from inside the real
//! namespaces. On a topology of the demo's shape (a network over three nodes, a link, a
//! published port) every check passes and each container is `Verified`; then breakages the
//! agents do not repair each give the right FAIL line with its hop, and `Verified` False,
//! then True once repaired:
//! - the published container's listener stopped → the port check (from another node) and
//!   the link check (the target refuses) fail;
//! - a firewall table of the user's own in the consumer dropping the link's traffic (topo
//!   never touches a table it does not own) → the link check fails, unanswered;
//! - a lower MTU on a container's interface while its node's agent is stopped (a running
//!   agent restores the MTU within a second) → the don't-fragment checks towards it fail
//!   and the stopped agent's containers are FAIL lines naming the node; with the container's
//!   port taken off its bridge as well, the peer check names the missing ARP reply.

use std::time::Instant;

use serde_json::Value;
use topo_e2e::{Lab, manifest};
use topo_e2e::{Scenario, converge, poll, run_scenarios, secs};

const NET: &str = "e2e-verify";
const PORT: &str = "50180";

#[test]
fn verify() {
    let lab = Lab::up("verify", 3);
    run_scenarios(
        &lab,
        &[("demo", verify_the_demo), ("verify", verify_the_dataplane)],
    );
}

/// A busybox container on `node` with label app=`app`, running `shell`, publishing `ports`.
fn container(name: &str, node: &str, app: &str, shell: &str, ports: Value) -> String {
    let spec = serde_json::json!({"node": node, "image": "topo/busybox:latest",
        "command": ["sh", "-c", shell], "networks": [{"network": NET}], "ports": ports});
    format!(
        "apiVersion: topo.dev/v1alpha1\nkind: Container\nmetadata: {{name: {name}, labels: {{app: {app}}}}}\nspec: {spec}\n"
    )
}

/// web1 on node1, web2 on node2, db on node3 published on PORT; web1 → db:80 through a
/// link listening on 127.0.0.1:8081. db's httpd runs in the background, so it can be
/// stopped without stopping the container.
fn topology() -> String {
    let web = |n: &str| {
        format!("mkdir -p /www && echo {n} > /www/index.html && exec httpd -f -p 80 -h /www")
    };
    let db =
        "mkdir -p /www && echo db > /www/index.html && httpd -p 80 -h /www && exec sleep 1000000";
    let port: u16 = PORT.parse().unwrap_or(50180);
    let ports = serde_json::json!([{"containerPort": 80, "hostPort": port}]);
    manifest::docs(&[
        manifest::network(NET, "10.64.0.0/16"),
        container("web1", "node1", "web", &web("web1"), serde_json::json!([])),
        container("web2", "node2", "web", &web("web2"), serde_json::json!([])),
        container("db", "node3", "db", db, ports),
        manifest::link("web1-db", "web1", "db", 80, "127.0.0.1:8081"),
    ])
}

/// `topoctl verify ARGS`: its exit code and its check lines.
fn run_verify(sc: &Scenario, args: &[&str]) -> (Option<i32>, Vec<String>, String) {
    let mut all = vec!["verify"];
    all.extend_from_slice(args);
    let out = sc.topoctl(&all);
    eprintln!(
        "e2e[verify]: topoctl {}\n{}",
        all.join(" "),
        out.stdout.trim_end()
    );
    let lines = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("PASS ") || l.starts_with("FAIL "))
        .map(str::to_string)
        .collect();
    (out.code, lines, out.combined())
}

/// The container's `Verified` condition (status, message), if it has one.
fn verified(sc: &Scenario, name: &str) -> Option<(String, String)> {
    let st = sc.status("container", name);
    st["conditions"].as_array()?.iter().find_map(|c| {
        (c["type"] == "Verified").then(|| {
            (
                c["status"].as_str().unwrap_or("").to_string(),
                c["message"].as_str().unwrap_or("").to_string(),
            )
        })
    })
}

#[track_caller]
fn wait_verified(sc: &Scenario, name: &str, status: &str) -> String {
    poll(
        &format!("container {name} to be Verified={status}"),
        secs(30),
        || match verified(sc, name) {
            Some((s, m)) if s == status => Ok(m),
            other => Err(format!("Verified: {other:?}")),
        },
    )
    .0
}

/// Runs verify until every check passes (a repair may take the agents a moment).
#[track_caller]
fn wait_all_pass(sc: &Scenario, what: &str) -> Vec<String> {
    poll(&format!("every check to pass {what}"), secs(60), || {
        let (code, lines, all) = run_verify(sc, &[]);
        if code == Some(0) && !lines.is_empty() && lines.iter().all(|l| l.starts_with("PASS")) {
            Ok(lines)
        } else {
            Err(all)
        }
    })
    .0
}

/// Whether a line starts with `start` and contains each of `contains`.
fn has_line(lines: &[String], start: &str, contains: &[&str]) -> bool {
    lines
        .iter()
        .any(|l| l.starts_with(start) && contains.iter().all(|c| l.contains(c)))
}

/// Runs verify until it exits 1 with exactly `failures` FAIL lines (when given) and every
/// wanted `(start, contains)` line: a breakage may take the dataplane a moment to show, and
/// one lost probe on a loaded machine must not decide the test. Returns the lines.
#[track_caller]
fn wait_lines(
    sc: &Scenario,
    what: &str,
    failures: Option<usize>,
    wants: &[(&str, &[&str])],
) -> Vec<String> {
    poll(what, secs(60), || {
        let (code, lines, all) = run_verify(sc, &[]);
        let failed = lines.iter().filter(|l| l.starts_with("FAIL")).count();
        let missing: Vec<String> = wants
            .iter()
            .filter(|(start, contains)| !has_line(&lines, start, contains))
            .map(|w| format!("{w:?}"))
            .collect();
        if code == Some(1) && failures.is_none_or(|f| f == failed) && missing.is_empty() {
            Ok(lines)
        } else {
            Err(format!(
                "exit {code:?}, {failed} FAIL lines, missing {missing:?}:\n{all}"
            ))
        }
    })
    .0
}

fn verify_the_dataplane(sc: &Scenario) {
    sc.apply(&topology(), converge());
    sc.wait_http("web1", "http://127.0.0.1:8081/", "db", secs(60));
    let started = Instant::now();
    let lines = wait_all_pass(sc, "on the healthy topology");
    let took = started.elapsed();
    let count = |kind: &str| {
        lines
            .iter()
            .filter(|l| l.starts_with(&format!("PASS {kind} ")))
            .count()
    };
    // 3 gateways; each container to the one container of each other node: 6 peers, 6 MTU
    // probes; one link; one published port.
    assert_eq!(
        [
            count("gateway"),
            count("peer"),
            count("mtu"),
            count("link"),
            count("port")
        ],
        [3, 6, 6, 1, 1],
        "{}",
        lines.join("\n")
    );
    has_line(
        &lines,
        "PASS port",
        &[&format!("192.168.100.3:{PORT}/tcp on node node3")],
    );
    for c in ["web1", "web2", "db"] {
        wait_verified(sc, c, "True");
    }
    sc.step(&format!(
        "all 17 checks pass on a healthy topology (verify took {:.2} s) and each container is Verified",
        took.as_secs_f64()
    ));

    selector_json_and_roles(sc);
    stopped_listener(sc);
    firewall_in_the_consumer(sc);
    lower_mtu(sc);
}

fn selector_json_and_roles(sc: &Scenario) {
    let out = sc.topoctl(&["verify", "-l", "app=web", "-o", "json"]).ok();
    let checks: Vec<Value> = serde_json::from_str(&out.stdout).expect("verify -o json is a list");
    assert!(!checks.is_empty());
    for c in &checks {
        assert_eq!(c["passed"], true, "{c}");
        assert!(
            ["web1", "web2"].contains(&c["container"].as_str().unwrap_or("")),
            "-l app=web checked another container: {c}"
        );
    }
    let mut viewer = sc.command(sc.topoctl_bin());
    viewer
        .env("TOPO_CONFIG", sc.pki_dir().join("viewer.yaml"))
        .args(["verify"]);
    let out = sc.run(viewer, secs(30));
    assert!(
        !out.success() && out.stderr.contains("cannot verify the dataplane"),
        "the viewer may not verify: {}",
        out.describe_failure()
    );
    sc.step("-l picks the containers, -o json lists the checks; view may not verify (403)");
}

fn stopped_listener(sc: &Scenario) {
    sc.exec("db", &["killall", "httpd"]).ok();
    let refused = format!("192.168.100.3:{PORT} refused the connection");
    wait_lines(
        sc,
        "the port and link checks to fail",
        Some(2),
        &[
            ("FAIL port", &[refused.as_str()]),
            (
                "FAIL link",
                &[
                    "web1: link web1-db 127.0.0.1:8081/tcp",
                    "refuses the connection: nothing listens there",
                ],
            ),
        ],
    );
    let m = wait_verified(sc, "db", "False");
    assert!(m.contains("FAIL port"), "{m}");
    let m = wait_verified(sc, "web1", "False");
    assert!(m.contains("FAIL link"), "{m}");
    wait_verified(sc, "web2", "True");
    sc.step("db's listener stopped: the published port and the link fail, naming the refusal");

    sc.exec("db", &["httpd", "-p", "80", "-h", "/www"]).ok();
    wait_all_pass(sc, "after db's listener is back");
    wait_verified(sc, "db", "True");
    wait_verified(sc, "web1", "True");
    sc.step("listener back: all pass, Verified True again");
}

fn firewall_in_the_consumer(sc: &Scenario) {
    let db = sc.address("db", NET).to_string();
    let chain = "{ type filter hook output priority 0; }";
    let nft = |args: &[&str]| {
        let mut all = vec!["nft"];
        all.extend_from_slice(args);
        sc.in_container_netns("web1", &all).ok();
    };
    nft(&["add", "table", "ip", "e2e_firewall"]);
    nft(&["add", "chain", "ip", "e2e_firewall", "out", chain]);
    nft(&[
        "add",
        "rule",
        "ip",
        "e2e_firewall",
        "out",
        "ip",
        "daddr",
        &db,
        "tcp",
        "dport",
        "80",
        "drop",
    ]);
    let forwarded = format!("forwarded to {db}:80");
    wait_lines(
        sc,
        "the link check to fail unanswered",
        Some(1),
        &[(
            "FAIL link",
            &[
                "no answer within 1 s from 127.0.0.1:8081",
                forwarded.as_str(),
            ],
        )],
    );
    sc.step("a firewall of the user's in web1 drops the link's traffic: the link check fails, unanswered");
    sc.in_container_netns("web1", &["nft", "delete", "table", "ip", "e2e_firewall"])
        .ok();
    wait_all_pass(sc, "after the firewall table is gone");
}

fn lower_mtu(sc: &Scenario) {
    let mtu = sc.network_mtu(NET);
    sc.kill_agent(2, "KILL");
    sc.in_container_netns("web2", &["ip", "link", "set", "eth0", "mtu", "1000"])
        .ok();
    let size = format!("{mtu} bytes, don't fragment, node1 → node2");
    // The ordinary echo still crosses (only the size is wrong), and node2's containers are
    // checked by nobody: their lines name the node.
    wait_lines(
        sc,
        "the MTU checks towards web2 to fail",
        None,
        &[
            (
                "FAIL mtu",
                &[
                    "web1 → web2 (",
                    size.as_str(),
                    "no reply within 1 s",
                    "@node1 and web2 on node2",
                ],
            ),
            ("FAIL mtu", &["db → web2 (", "node3 → node2"]),
            (
                "FAIL agent",
                &["web2 on node node2", "the agent of node node2"],
            ),
            ("PASS peer", &["web1 → web2 ("]),
        ],
    );
    let m = wait_verified(sc, "web1", "False");
    assert!(m.contains("FAIL mtu"), "{m}");
    sc.step("web2's MTU lowered (its agent stopped): the MTU checks towards it fail, the agent's absence is named");

    // Still without node2's agent: web2's port off its bridge, and web1's ARP cache
    // flushed, so the peer check must resolve web2 again and gets no answer.
    let bridge = "tb-e2e-verify";
    let veth = sc
        .ovs_ports(2, bridge)
        .unwrap_or_default()
        .into_iter()
        .find(|p| !p.starts_with("tg-"))
        .unwrap_or_else(|| panic!("no container port on {bridge} of node2"));
    sc.vsctl(2, &["del-port", bridge, &veth]).ok();
    sc.in_container_netns("web1", &["ip", "neigh", "flush", "dev", "eth0"])
        .ok();
    wait_lines(
        sc,
        "the peer check web1 → web2 to fail on ARP",
        None,
        &[(
            "FAIL peer",
            &[
                "web1 → web2 (",
                "no ARP reply on tb-e2e-verify@node1 within 1 s",
            ],
        )],
    );
    sc.step(
        "web2's port off its bridge too: the peer check names the missing ARP reply and the bridge",
    );

    sc.start_agent(2);
    wait_all_pass(sc, "after node2's agent restored the MTU and the port");
    wait_verified(sc, "web1", "True");
    wait_verified(sc, "web2", "True");
    sc.step("node2's agent back: the MTU is restored, all pass, Verified True");
}

/// `make demo`'s manifest verifies: every check passes. How long `topoctl verify` takes there
/// is printed (BENCHMARKS.md), never asserted.
fn verify_the_demo(sc: &Scenario) {
    let demo = sc.repo().join("manifests/demo.yaml");
    sc.apply_file(&demo.to_string_lossy(), converge());
    sc.wait_http("web1", "http://127.0.0.1:8081/", "hello from db", secs(60));
    wait_all_pass(sc, "on the demo");
    let mut took: Vec<f64> = (0..5)
        .map(|_| {
            let out = sc.topoctl(&["verify"]).ok();
            out.elapsed.as_secs_f64()
        })
        .collect();
    took.sort_by(f64::total_cmp);
    sc.step(&format!(
        "the demo verifies; topoctl verify took {:.2} s median ({:.2}-{:.2} s over 5 runs, the whole command)",
        took[2], took[0], took[4]
    ));
}
