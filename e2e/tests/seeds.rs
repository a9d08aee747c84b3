//! Issue 4, the seed scenarios end to end: each applies its manifest of `manifests/seeds/`
//! on a three-host lab and checks what the seed document did by hand — geard links and a
//! published port, Docker-link aliases, pipework's static addresses, the ambassador pattern
//! without ambassadors, per-host subnets behind an ingress, and OVS + GRE with a fourth host
//! joining and leaving under traffic (last, as it adds and removes node4).
//!
//! Services are busybox `nc -ll -p PORT -e echo TEXT` servers; every probe is
//! `echo | nc -w 2 ADDR PORT` (see `topo_e2e::links`). The only address outside the lab's
//! networks that traffic goes to is the lab's own root namespace, 192.168.100.254.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Instant;

use topo_e2e::links::{
    Identity, Listener, doc_named, env_of, identity, link_state, nc, report, split_docs, wait_link,
    wait_nc, wait_node_nc,
};
use topo_e2e::mesh;
use topo_e2e::probe::ProbeRun;
use topo_e2e::{Lab, Scenario, converge, node_address, node_name, poll, run_scenarios, secs};
use topo_schema::Kind;

#[test]
fn seeds() {
    let lab = Lab::up("seeds", 3);
    run_scenarios(
        &lab,
        &[
            ("geard", geard),
            ("docker_links", docker_links),
            ("pipework", pipework),
            ("ambassador", ambassador),
            ("per_host_subnets", per_host_subnets),
            ("ovs_gre_fourth_host", ovs_gre_fourth_host),
        ],
    );
}

/// The root namespace's address on the underlay: outside every network.
const OUTSIDE: &str = "192.168.100.254";
const OUTSIDE_PORT: u16 = 9099;

#[track_caller]
fn seed(sc: &Scenario, file: &str) -> String {
    let path = sc.repo().join("manifests/seeds").join(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()))
}

/// `yaml` with the document of `kind` `name` rewritten by `f`.
#[track_caller]
fn edit(yaml: &str, kind: &str, name: &str, f: impl Fn(&str) -> String) -> String {
    let docs = split_docs(yaml);
    let target = doc_named(&docs, kind, name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the manifest"))
        .clone();
    let edited = f(&target);
    assert_ne!(edited, target, "the edit of {kind} {name} changed nothing");
    docs.iter()
        .map(|d| {
            if *d == target {
                edited.clone()
            } else {
                d.clone()
            }
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

#[track_caller]
fn replace_once(doc: &str, from: &str, to: &str) -> String {
    assert_eq!(
        doc.matches(from).count(),
        1,
        "{from:?} is not in the document exactly once:\n{doc}"
    );
    doc.replacen(from, to, 1)
}

#[track_caller]
fn pick(docs: &[String], kind: &str, name: &str) -> String {
    doc_named(docs, kind, name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the manifest"))
        .clone()
}

#[track_caller]
fn same_identity(sc: &Scenario, c: &str, before: &Identity, after_what: &str) {
    let now = identity(sc, c);
    assert_eq!(
        &now, before,
        "{c} was restarted or recreated by {after_what}"
    );
}

/// seed 000: redisdb on node3 published on hostPort 50000; app1 on node1 reaches it at
/// 127.0.0.1:6379 (link to the container) and 127.0.0.2:6379 (link to node3's address and
/// the host port); geard's sysctl and DNAT rules are in app1's namespace; the host port
/// answers at node3's address from the other hosts and from node3 itself; containers reach
/// an address outside their network through their node.
fn geard(sc: &Scenario) {
    sc.apply(&seed(sc, "geard.yaml"), converge());
    let redis_ip = sc.address("redisdb", "geard");
    let n3 = node_address(3).to_string();
    let direct = link_state(sc, "app1-redisdb").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        direct.endpoint,
        Some(format!("{redis_ip}:6379")),
        "{direct:?}"
    );
    let hostport = link_state(sc, "app1-redisdb-hostport").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        hostport.endpoint,
        Some(format!("{n3}:50000")),
        "{hostport:?}"
    );

    wait_nc(
        sc,
        "app1",
        "127.0.0.1",
        6379,
        "+PONG from redisdb",
        secs(60),
    );
    wait_nc(
        sc,
        "app1",
        "127.0.0.2",
        6379,
        "+PONG from redisdb",
        secs(60),
    );
    sc.step("app1 on node1 reaches redisdb on node3 at 127.0.0.1:6379 and, via node3:50000, at 127.0.0.2:6379");

    let localnet = sc
        .in_container_netns(
            "app1",
            &["cat", "/proc/sys/net/ipv4/conf/all/route_localnet"],
        )
        .ok();
    assert_eq!(
        localnet.stdout.trim(),
        "1",
        "route_localnet in app1's namespace"
    );
    let table = sc
        .in_container_netns("app1", &["nft", "list", "table", "ip", "topo"])
        .ok();
    for want in [
        format!("dnat to {redis_ip}:6379"),
        format!("dnat to {n3}:50000"),
        "masquerade".to_string(),
    ] {
        assert!(
            table.stdout.contains(&want),
            "app1's table lacks {want:?}:\n{}",
            table.stdout
        );
    }
    sc.step("geard's rules (route_localnet, DNAT, masquerade) are in app1's namespace");

    for n in [1, 2, 3] {
        wait_node_nc(sc, n, &n3, 50000, "+PONG from redisdb", secs(60));
    }
    sc.step("hostPort 50000 answers at node3's address from node1, node2 and node3 itself");

    let _outside = Listener::start(sc, OUTSIDE_PORT, "outside");
    // The root namespace has no route to the containers' networks: an answer means the
    // node masqueraded the connection.
    wait_nc(sc, "app1", OUTSIDE, OUTSIDE_PORT, "outside", secs(60));
    wait_nc(sc, "redisdb", OUTSIDE, OUTSIDE_PORT, "outside", secs(60));
    sc.step("egress: app1 (node1) and redisdb (node3) reach 192.168.100.254 through their node");
}

fn docker_link_env(with_es: bool) -> BTreeMap<String, String> {
    let mut want = vec![
        ("DB_PORT", "tcp://127.0.0.1:27017"),
        ("DB_PORT_27017_TCP", "tcp://127.0.0.1:27017"),
        ("DB_PORT_27017_TCP_ADDR", "127.0.0.1"),
        ("DB_PORT_27017_TCP_PORT", "27017"),
        ("DB_PORT_27017_TCP_PROTO", "tcp"),
        ("DB_PORT_27018_TCP", "tcp://127.0.0.1:27018"),
        ("DB_PORT_27018_TCP_ADDR", "127.0.0.1"),
        ("DB_PORT_27018_TCP_PORT", "27018"),
        ("DB_PORT_27018_TCP_PROTO", "tcp"),
    ];
    if with_es {
        want.extend([
            ("ES_PORT", "tcp://127.0.0.1:9200"),
            ("ES_PORT_9200_TCP", "tcp://127.0.0.1:9200"),
            ("ES_PORT_9200_TCP_ADDR", "127.0.0.1"),
            ("ES_PORT_9200_TCP_PORT", "9200"),
            ("ES_PORT_9200_TCP_PROTO", "tcp"),
        ]);
    }
    want.into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[track_caller]
fn link_vars(sc: &Scenario, c: &str) -> BTreeMap<String, String> {
    env_of(sc, c)
        .into_iter()
        .filter(|(k, _)| k.starts_with("DB_") || k.starts_with("ES_"))
        .collect()
}

/// The names /etc/hosts maps to 127.0.0.1 inside `c`.
#[track_caller]
fn loopback_names(sc: &Scenario, c: &str) -> Vec<String> {
    let hosts = sc.exec(c, &["cat", "/etc/hosts"]).ok();
    hosts
        .stdout
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("127.0.0.1")).then(|| w.map(str::to_string).collect::<Vec<_>>())
        })
        .flatten()
        .collect()
}

/// seed 001, Docker links: tomcat's environment holds exactly Docker's DB_/ES_ variables
/// pointing at the links' listen addresses, /etc/hosts has `db` and `es`, the stand-ins answer
/// through the variables (and tomcat's service, configured only by them, too); mongodb moving
/// to another host does not restart tomcat; removing an alias recreates it, adding it back
/// again.
fn docker_links(sc: &Scenario) {
    let yaml = seed(sc, "docker-links.yaml");
    sc.apply(&yaml, converge());
    assert_eq!(
        link_vars(sc, "tomcat"),
        docker_link_env(true),
        "tomcat's Docker-link variables"
    );
    let names = loopback_names(sc, "tomcat");
    for n in ["db", "es"] {
        assert!(
            names.iter().any(|x| x == n),
            "tomcat's /etc/hosts does not map {n} to 127.0.0.1: {names:?}"
        );
    }
    sc.step("tomcat has DB_PORT_27017_TCP_ADDR=127.0.0.1 ... ES_PORT_9200_TCP_PORT=9200 and hosts entries db, es");

    for (var, expect) in [
        ("DB_PORT_27017_TCP", "mongodb 27017"),
        ("DB_PORT_27018_TCP", "mongodb 27018"),
        ("ES_PORT_9200_TCP", "elasticsearch 9200"),
    ] {
        let script = format!("echo | nc -w 2 ${var}_ADDR ${var}_PORT");
        poll(
            &format!("tomcat to reach {expect} through ${var}_ADDR:${var}_PORT"),
            secs(60),
            || {
                let out = sc.exec("tomcat", &["sh", "-c", &script]);
                if out.success() && out.stdout.trim() == expect {
                    Ok(())
                } else {
                    Err(out.combined())
                }
            },
        );
    }
    let all = "mongodb 27017\nmongodb 27018\nelasticsearch 9200";
    wait_nc(sc, "tomcat", "127.0.0.1", 8080, all, secs(60));
    sc.step(
        "mongodb (node2) and elasticsearch (node3) answer tomcat (node1) through the variables",
    );

    // A rewire: mongodb moves to node3.
    let before = identity(sc, "tomcat");
    let moved = edit(&yaml, "Container", "mongodb", |d| {
        replace_once(d, "node: node2", "node: node3")
    });
    sc.apply(&moved, converge());
    let st = sc.status("container", "mongodb");
    assert_eq!(st["node"], "node3", "mongodb's status after the move: {st}");
    let ep = link_state(sc, "tomcat-db-27017")
        .unwrap_or_else(|e| panic!("{e}"))
        .endpoint;
    assert_eq!(
        ep,
        Some(format!("{}:27017", sc.address("mongodb", "dockerlinks")))
    );
    wait_nc(sc, "tomcat", "127.0.0.1", 8080, all, secs(60));
    same_identity(sc, "tomcat", &before, "mongodb's move");
    assert_eq!(link_vars(sc, "tomcat"), docker_link_env(true));
    sc.step("mongodb moved to node3: tomcat follows it without a restart");

    // Removing the alias `es` recreates tomcat without ES_ variables; the link still works.
    let no_es = edit(&moved, "Link", "tomcat-es", |d| {
        replace_once(d, "  alias: es\n", "")
    });
    sc.apply(&no_es, converge());
    let without = identity(sc, "tomcat");
    assert_ne!(
        without.id, before.id,
        "removing an alias must recreate tomcat (its environment is fixed at creation)"
    );
    assert_eq!(link_vars(sc, "tomcat"), docker_link_env(false));
    assert!(
        !loopback_names(sc, "tomcat").iter().any(|n| n == "es"),
        "es is still in tomcat's /etc/hosts"
    );
    wait_nc(
        sc,
        "tomcat",
        "127.0.0.1",
        9200,
        "elasticsearch 9200",
        secs(60),
    );
    sc.step(
        "alias es removed: tomcat recreated without ES_ variables; the link itself still works",
    );

    sc.apply(&moved, converge());
    let with = identity(sc, "tomcat");
    assert_ne!(with.id, without.id, "adding an alias must recreate tomcat");
    assert_eq!(link_vars(sc, "tomcat"), docker_link_env(true));
    wait_nc(sc, "tomcat", "127.0.0.1", 8080, all, secs(60));
    sc.step("alias es added back: tomcat recreated with its ES_ variables");
}

/// seed 001 pipework and seed 003's manual addresses: the addresses chosen in the manifest,
/// on three hosts, reachable from each container and from each host.
fn pipework(sc: &Scenario) {
    sc.apply(&seed(sc, "pipework.yaml"), converge());
    let statics = [
        ("static1", 1u32, "10.42.100.11"),
        ("static2", 2, "10.42.100.12"),
        ("static3", 3, "10.42.100.13"),
    ];
    for (c, n, ip) in statics {
        assert_eq!(sc.address(c, "pipework").to_string(), ip, "{c}'s address");
        let st = sc.status("container", c);
        assert_eq!(st["node"], node_name(n), "{c}'s node: {st}");
        let inside = sc.exec(c, &["ip", "-o", "-4", "addr", "show", "eth0"]).ok();
        assert!(
            inside.stdout.contains(&format!("{ip}/16")),
            "{c}'s eth0: {}",
            inside.stdout
        );
    }
    for (from, _, _) in statics {
        for (to, _, ip) in statics {
            if from != to {
                wait_nc(sc, from, ip, 80, to, secs(60));
            }
        }
    }
    sc.step("each static container reaches the two others at their declared addresses");
    for n in 1..=3 {
        for (to, _, ip) in statics {
            wait_node_nc(sc, n, ip, 80, to, secs(60));
        }
    }
    sc.wait_ping(
        "static1",
        "10.42.100.13".parse().unwrap_or(Ipv4Addr::UNSPECIFIED),
        secs(30),
    );
    sc.step("every host reaches the three declared addresses");
}

/// seed 002: the consumer talks to 127.0.0.1:6379. The link is accepted before its target
/// exists (TargetNotFound), says TargetNotReady while the target cannot start, and becomes
/// Ready by itself; then the target moves to another host and the link is pointed at a
/// second target: the consumer keeps its container ID and start time throughout, the link's
/// endpoint follows, and the next connection reaches the new target.
fn ambassador(sc: &Scenario) {
    let yaml = seed(sc, "ambassador.yaml");
    let docs = split_docs(&yaml);
    let net = pick(&docs, "Network", "ambassador");
    let consumer = pick(&docs, "Container", "consumer");
    let link = pick(&docs, "Link", "consumer-redis");
    let redis = pick(&docs, "Container", "redis");

    sc.apply_nowait(&[net.clone(), consumer, link].join("---\n"));
    sc.wait_ready(&["container/consumer"], converge());
    let st = wait_link(sc, "consumer-redis", "False", "TargetNotFound", secs(60));
    assert!(st.message.contains("redis"), "{st:?}");
    let generation = st.generation;
    let first = identity(sc, "consumer");
    sc.step("a link to a container that does not exist yet: accepted, not Ready (TargetNotFound)");

    let broken = replace_once(
        &redis,
        "  image: topo/busybox:latest\n",
        "  image: topo/missing:latest\n  imagePullPolicy: Never\n",
    );
    sc.apply_nowait(&[net, broken].join("---\n"));
    let st = wait_link(sc, "consumer-redis", "False", "TargetNotReady", converge());
    assert!(
        st.message.contains("container redis is not ready"),
        "{st:?}"
    );
    assert!(
        nc(sc, "consumer", "127.0.0.1", 6379).is_err(),
        "nothing should answer while redis cannot start"
    );
    sc.step(&format!(
        "the target exists but cannot start: TargetNotReady ({})",
        st.message
    ));

    sc.apply(&yaml, converge());
    let st = wait_link(sc, "consumer-redis", "True", "Programmed", converge());
    assert_eq!(st.generation, generation, "the Link itself was not changed");
    let redis_ep = format!("{}:6379", sc.address("redis", "ambassador"));
    assert_eq!(st.endpoint.as_deref(), Some(redis_ep.as_str()));
    wait_nc(
        sc,
        "consumer",
        "127.0.0.1",
        6379,
        "+PONG from redis",
        secs(60),
    );
    assert_eq!(
        env_of(sc, "consumer")
            .get("REDIS_PORT_6379_TCP")
            .map(String::as_str),
        Some("tcp://127.0.0.1:6379")
    );
    same_identity(sc, "consumer", &first, "its link becoming Ready");
    sc.step(
        "redis runs: the link became Ready by itself; the consumer reaches it at 127.0.0.1:6379",
    );

    // 1. The target moves to another host.
    let moved = edit(&yaml, "Container", "redis", |d| {
        replace_once(d, "node: node2", "node: node3")
    });
    sc.apply(&moved, converge());
    let t = Instant::now();
    let st = sc.status("container", "redis");
    assert_eq!(st["node"], "node3", "redis's status after the move: {st}");
    let new_ip = sc.address("redis", "ambassador");
    assert!(
        sc.block("ambassador", 3).contains(&new_ip),
        "redis got {new_ip}, outside node3's block"
    );
    let ep = wait_link(sc, "consumer-redis", "True", "Programmed", converge()).endpoint;
    assert_eq!(
        ep,
        Some(format!("{new_ip}:6379")),
        "the link's endpoint follows redis"
    );
    assert_ne!(ep.as_deref(), Some(redis_ep.as_str()));
    sc.check("next_connection_after_the_move_reaches_redis", || {
        wait_nc(
            sc,
            "consumer",
            "127.0.0.1",
            6379,
            "+PONG from redis",
            secs(5),
        );
    });
    wait_nc(
        sc,
        "consumer",
        "127.0.0.1",
        6379,
        "+PONG from redis",
        secs(60),
    );
    same_identity(sc, "consumer", &first, "redis's move");
    sc.step(&format!("redis moved to node3 ({new_ip}); the consumer reached it {:.1} s after Ready, not restarted", t.elapsed().as_secs_f64()));

    // 2. The link is pointed at a second target.
    let repointed = edit(&moved, "Link", "consumer-redis", |d| {
        replace_once(
            d,
            "{container: redis, port: 6379}",
            "{container: redis2, port: 6379}",
        )
    });
    sc.apply(&repointed, converge());
    let redis2_ep = format!("{}:6379", sc.address("redis2", "ambassador"));
    let st = wait_link(sc, "consumer-redis", "True", "Programmed", converge());
    assert_eq!(st.endpoint.as_deref(), Some(redis2_ep.as_str()), "{st:?}");
    sc.check("next_connection_after_the_repoint_reaches_redis2", || {
        wait_nc(
            sc,
            "consumer",
            "127.0.0.1",
            6379,
            "+PONG from redis2",
            secs(5),
        );
    });
    wait_nc(
        sc,
        "consumer",
        "127.0.0.1",
        6379,
        "+PONG from redis2",
        secs(60),
    );
    let rep = report(sc, 1, Kind::Link, "consumer-redis").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        rep.and_then(|r| r.endpoint).as_deref(),
        Some(redis2_ep.as_str()),
        "node1's agent report"
    );
    same_identity(sc, "consumer", &first, "the repoint to redis2");
    let table = sc
        .in_container_netns("consumer", &["nft", "list", "table", "ip", "topo"])
        .ok();
    assert!(
        table.stdout.contains(&format!("dnat to {redis2_ep}")),
        "{}",
        table.stdout
    );
    sc.step(
        "the link points at redis2: the consumer's next connection reaches it, never restarted",
    );
}

/// seed 004: node1 and node2 each hand out addresses from their own block; the ingress,
/// published on node1's ports 8000 and 8001, forwards to api (node1) and shop (node2) by
/// their addresses, from every host and from node1 itself; containers reach outside.
fn per_host_subnets(sc: &Scenario) {
    sc.apply(&seed(sc, "per-host-subnets.yaml"), converge());
    let (b1, b2) = (sc.block("weave", 1), sc.block("weave", 2));
    assert_ne!(b1, b2, "node1 and node2 share a block");
    assert!(b1.prefix_len() == 24 && b2.prefix_len() == 24, "{b1} {b2}");
    let blocks = sc.status("network", "weave")["blocks"].clone();
    assert_eq!(
        blocks.as_object().map(|m| m.len()),
        Some(2),
        "only node1 and node2 host weave: {blocks}"
    );
    let (api, shop, ingress) = (
        sc.address("api", "weave"),
        sc.address("shop", "weave"),
        sc.address("ingress", "weave"),
    );
    assert!(
        b1.contains(&api) && b1.contains(&ingress),
        "api {api} and ingress {ingress} outside node1's block {b1}"
    );
    assert!(b2.contains(&shop), "shop {shop} outside node2's block {b2}");
    sc.step(&format!(
        "node1 hands out {b1}, node2 {b2}: api {api}, ingress {ingress}, shop {shop}"
    ));

    let n1 = node_address(1).to_string();
    for n in [1, 2, 3] {
        wait_node_nc(sc, n, &n1, 8000, "api on node1", secs(60));
        wait_node_nc(sc, n, &n1, 8001, "shop on node2", secs(60));
    }
    sc.step("the ingress answers on node1:8000 (api) and node1:8001 (shop) from every host and node1 itself");

    wait_nc(
        sc,
        "ingress",
        &api.to_string(),
        80,
        "api on node1",
        secs(60),
    );
    wait_nc(
        sc,
        "ingress",
        &shop.to_string(),
        80,
        "shop on node2",
        secs(60),
    );
    wait_nc(sc, "shop", &api.to_string(), 80, "api on node1", secs(60));
    let _outside = Listener::start(sc, OUTSIDE_PORT, "outside");
    wait_nc(sc, "api", OUTSIDE, OUTSIDE_PORT, "outside", secs(60));
    wait_nc(sc, "shop", OUTSIDE, OUTSIDE_PORT, "outside", secs(60));
    sc.step("services reach each other across the two blocks, and the outside through their node");
}

/// seeds 001/003: one L2 network over three hosts with a derived GRE mesh; a fourth host
/// joins (lab.sh add-node 4, a container on it) and then leaves (the container deleted,
/// lab.sh remove-node 4, its Node deleted) while probers run between the first three
/// (issue 13: an ICMP echo every 20 ms, stopped by a deadline, not a signal): none is lost,
/// none of their containers restarts, and the new host reaches them all while it is there.
fn ovs_gre_fourth_host(sc: &Scenario) {
    sc.apply(&seed(sc, "ovs-gre.yaml"), converge());
    let mesh: Vec<(String, Ipv4Addr)> = ["gre1", "gre2", "gre3"]
        .iter()
        .map(|c| (c.to_string(), sc.address(c, mesh::NETWORK)))
        .collect();
    mesh::wait_tunnels(sc, 3);
    mesh::wait_all_reach(sc, &mesh);
    sc.step("three hosts on one L2 network over a GRE mesh (3 tunnels)");
    mesh::assert_one_underlay_mac(sc, &[1, 2, 3]);
    sc.step("node1..3 answer ARP for their underlay address from br-phy alone");

    let before: Vec<Identity> = mesh.iter().map(|(c, _)| identity(sc, c)).collect();
    let probers = mesh::start_probes(sc, &mesh);
    let t = Instant::now();
    sc.add_node(4);
    let (gre4, yaml) = mesh::joiner(4);
    sc.apply(&yaml, converge());
    mesh::wait_tunnels(sc, 6);
    let ip4 = sc.address(&gre4, mesh::NETWORK);
    mesh::wait_reachable(sc, (&gre4, ip4), &mesh);
    mesh::assert_one_underlay_mac(sc, &[4]);
    sc.step(&format!(
        "node4 joined, {gre4} ({ip4}) reaches gre1..3 and back, {:.1} s after add-node",
        t.elapsed().as_secs_f64()
    ));
    mesh::keep_probing(&probers, mesh::PROBES_AFTER);
    hitless(sc, "node4 joined", mesh::finish_probes(probers), &mesh);
    for ((c, _), b) in mesh.iter().zip(&before) {
        same_identity(sc, c, b, "node4 joining");
    }
    sc.step("no probe lost between the first three hosts while node4 joined; none of their containers restarted");

    let probers = mesh::start_probes(sc, &mesh);
    let t = Instant::now();
    let gone = format!("container/{gre4}");
    sc.delete(std::slice::from_ref(&gone), converge())
        .unwrap_or_else(|e| panic!("{e}"));
    sc.forget(&[gone.as_str()]);
    mesh::wait_tunnels(sc, 3);
    mesh::wait_no_port_towards(sc, &[1, 2, 3], node_address(4));
    sc.remove_node(4);
    sc.delete(&["node/node4".to_string()], converge())
        .unwrap_or_else(|e| panic!("{e}"));
    sc.step(&format!(
        "node4 left: {gre4} deleted, node1..3 dropped their GRE port towards it, host and Node removed, {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    mesh::keep_probing(&probers, mesh::PROBES_AFTER);
    hitless(sc, "node4 left", mesh::finish_probes(probers), &mesh);
    for ((c, _), b) in mesh.iter().zip(&before) {
        same_identity(sc, c, b, "node4 leaving");
    }
    sc.step("no probe lost between the first three hosts while node4 left; none of their containers restarted");
}

/// Every probe of `runs` answered once within its window; otherwise what the switches and
/// containers of `mesh` hold is printed before failing.
#[track_caller]
fn hitless(sc: &Scenario, while_what: &str, runs: Vec<ProbeRun>, mesh: &[(String, Ipv4Addr)]) {
    for r in &runs {
        sc.step(&format!("{while_what}: {}", r.summary()));
    }
    if runs
        .iter()
        .any(|r| !r.lost().is_empty() || r.duplicates() > 0)
    {
        eprintln!("{}", mesh::diagnose(sc, &[1, 2, 3], mesh));
    }
    for r in &runs {
        assert!(
            r.sent() >= mesh::PROBES_AFTER as usize,
            "{}: only {} probes sent",
            r.label,
            r.sent()
        );
        assert!(
            r.lost().is_empty() && r.duplicates() == 0,
            "{while_what}, probes between the hosts already connected were lost or duplicated: {}",
            r.summary()
        );
    }
}
