//! The reconciler against the recording fakes: from an empty host, no-op passes, adoption,
//! removal, recreate vs rewire, failures in status, garbage collection.

mod runtime_support;

use std::net::Ipv4Addr;
use std::time::Duration;

use runtime_support::*;
use topo_agent::backend::arp::assigned_mac;
use topo_agent::backend::fake::NsKey;
use topo_agent::backend::{Mac, NatRules, Ovs, OvsChange, PortKind, ProbeError};
use topo_agent::watch::SliceValue;
use topo_schema::api::EventType;
use topo_schema::kinds::{Kind, PullPolicy};
use topo_schema::names;
use topo_schema::slice::SliceEntry;

fn web_port() -> String {
    names::veth_host_name("web", "eth0")
}

#[tokio::test]
async fn reconcile_from_an_empty_host_builds_everything() {
    let f = Fakes::new();
    let agent = Agent::new(&f, slice());
    agent.start().await;

    // Docker: both containers running.
    for name in ["web", "app"] {
        let c = f
            .docker
            .container(name)
            .unwrap_or_else(|| panic!("container {name} missing"));
        assert!(c.running);
    }
    // OVS: the bridge with its GRE port and both container ports, in the node's datapath.
    let ovs = f.ovs.state().clone();
    let b = &ovs.bridges["tb-overlay"];
    assert!(b.owned);
    assert_eq!(b.datapath_type, "netdev");
    let gre = &b.ports[&names::gre_port_name("overlay", "node2")];
    assert!(gre.protected, "split horizon in a mesh");
    assert!(gre.matches(
        &PortKind::Gre {
            remote_ip: "192.168.100.2".parse().unwrap(),
            key: 7
        },
        true
    ));
    assert!(b.ports.contains_key(&web_port()));
    assert!(b.ports.contains_key(&names::veth_host_name("app", "eth0")));
    assert!(
        ovs.bridges.contains_key("br-phy"),
        "the foreign bridge is untouched"
    );
    // Netlink: gateway on the bridge, the veth pairs plumbed.
    let gw = f.ifs.host().gateways["tb-overlay"].clone();
    assert!(gw.addresses.contains(&"10.2.1.1/16".parse().unwrap()));
    assert_eq!(gw.mtu, 1458);
    assert!(f.ifs.host().attachments.contains_key(&web_port()));
    // NAT: masquerade + published port on the node, the link in app's namespace.
    let node_nat = f.nat.rules(NsKey::Node);
    assert_eq!(node_nat.masquerade, vec!["10.2.0.0/16".parse().unwrap()]);
    assert_eq!(node_nat.ports.len(), 1);
    assert_eq!(node_nat.ports[0].host_port, 50000);
    let app_pid = f.docker.container("app").unwrap().pid.unwrap();
    let app_nat = f.nat.rules(NsKey::Pid(app_pid));
    assert_eq!(app_nat.links.len(), 1);
    assert_eq!(app_nat.links[0].target, "10.2.1.5:80".parse().unwrap());
    let web_pid = f.docker.container("web").unwrap().pid.unwrap();
    assert_eq!(
        f.nat.rules(NsKey::Pid(web_pid)),
        NatRules::default(),
        "no links, no table"
    );

    // Reports.
    let web = f.report(Kind::Container, "web").unwrap();
    assert!(web.ready, "{web:?}");
    assert_eq!(web.reason, "Running");
    assert_eq!(
        web.container_id,
        Some(f.docker.container("web").unwrap().id)
    );
    assert_eq!(web.restart_count, 0);
    let t = f.report(Kind::Tunnel, "overlay-node1-node2").unwrap();
    assert!(t.ready);
    let l = f.report(Kind::Link, "app-to-web").unwrap();
    assert!(l.ready);
    assert_eq!(l.endpoint.as_deref(), Some("10.2.1.5:80"));
    // Creation is not drift.
    assert!(f.events("DriftRepaired").is_empty(), "{:?}", f.events.all());
    assert_eq!(f.events("Started").len(), 2);
}

#[tokio::test]
async fn a_second_pass_writes_nothing() {
    let f = Fakes::new();
    let agent = Agent::new(&f, slice());
    agent.start().await;
    f.clear_logs();
    let (puts, deletes) = f.reports.writes();
    let events = f.events.all().len();

    let results = agent.resync().await;
    assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
    assert_eq!(f.host_writes(), Vec::<String>::new());
    assert_eq!(
        f.reports.writes(),
        (puts, deletes),
        "unchanged reports are not rewritten"
    );
    assert_eq!(f.events.all().len(), events, "a no-op records no event");
    // It did look: every backend was observed.
    assert!(!f.ovs.calls().is_empty() && !f.ifs.calls().is_empty() && !f.nat.calls().is_empty());
}

#[tokio::test]
async fn a_new_container_is_plumbed_without_a_look_into_its_empty_namespace() {
    let f = Fakes::new();
    let agent = Agent::new(&f, slice());
    agent.start().await;
    let observe = format!("observe_attachment {}", web_port());
    let ensure = format!("ensure_attachment {}", web_port());
    // Docker made it without a network: planned as missing at once; the ensure looks itself.
    let calls = f.ifs.calls();
    assert!(calls.contains(&ensure), "{calls:?}");
    assert!(!calls.contains(&observe), "{calls:?}");
    assert_eq!(f.events("Started").len(), 2, "{:?}", f.events.all());
    // A container that runs already is looked at (adoption, drift).
    f.clear_logs();
    let results = agent.resync().await;
    assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
    assert!(f.ifs.calls().contains(&observe), "{:?}", f.ifs.calls());
}

#[tokio::test]
async fn a_restarted_agent_adopts_the_host_without_a_write() {
    let f = Fakes::new();
    let first = Agent::new(&f, slice());
    first.start().await;
    let ids: Vec<String> = ["web", "app"]
        .iter()
        .map(|n| f.docker.container(n).unwrap().id)
        .collect();
    drop(first);
    f.clear_logs();
    let (puts, deletes) = f.reports.writes();

    // A new process: empty memory, the host and stored reports as the old one left them.
    let second = Agent::new(&f, slice());
    second.start().await;
    assert_eq!(
        f.host_writes(),
        Vec::<String>::new(),
        "adoption restarts and rewrites nothing"
    );
    assert_eq!(f.reports.writes(), (puts, deletes));
    let after: Vec<String> = ["web", "app"]
        .iter()
        .map(|n| f.docker.container(n).unwrap().id)
        .collect();
    assert_eq!(ids, after);
    assert!(f.events("DriftRepaired").is_empty());
    assert_eq!(
        f.prober.calls(),
        Vec::<String>::new(),
        "addresses already configured are not probed again"
    );
}

/// Issue 12: an address another host answers for, from a MAC topo did not assign, stays off
/// the container's interface (the rest of its plumbing is made) and the container says so;
/// the retry takes it once nobody answers. An answer from a MAC topo gives its own
/// interfaces (a container moving between nodes) is no conflict.
#[tokio::test]
async fn a_squatted_address_is_withheld_until_its_holder_leaves() {
    let f = Fakes::new();
    let (web_ip, app_ip) = (Ipv4Addr::new(10, 2, 1, 5), Ipv4Addr::new(10, 2, 1, 6));
    let squatter = Mac([0x02, 0x42, 0xac, 0x11, 0x00, 0x02]);
    f.prober.squat(web_ip, squatter);
    f.prober.squat(app_ip, assigned_mac(app_ip));
    let agent = Agent::new(&f, slice());
    agent.start().await;

    let web = f.report(Kind::Container, "web").unwrap();
    assert!(!web.ready, "{web:?}");
    assert_eq!(web.reason, "AddressConflict");
    for part in ["10.2.1.5", "02:42:ac:11:00:02", "tb-overlay", "eth0"] {
        assert!(web.message.contains(part), "{part} in {:?}", web.message);
    }
    let (_, plumbed) = f.ifs.host().attachments[&web_port()].clone();
    let peer = plumbed.peer.expect("the pair is made");
    assert_eq!(peer.addresses, vec![], "the address is not configured");
    assert_eq!(peer.default_gateway, None);
    assert!(
        f.ovs.state().bridges["tb-overlay"]
            .ports
            .contains_key(&web_port())
    );
    let events = f.events("AddressConflict");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].type_, EventType::Warning);
    assert!(events[0].message.contains("02:42:ac:11:00:02"));
    // The first round of announcements goes at once (in the background).
    tokio::time::sleep(Duration::from_millis(50)).await;
    let announced = f.ifs.announced();
    assert!(
        announced.iter().any(|a| a.address.addr() == app_ip),
        "app's address is announced: {announced:?}"
    );
    assert!(
        announced.iter().all(|a| a.address.addr() != web_ip),
        "a withheld address is never announced: {announced:?}"
    );
    let app = f.report(Kind::Container, "app").unwrap();
    assert!(app.ready, "topo's own MAC is no squatter: {app:?}");
    let mut probes = f.prober.calls();
    probes.sort();
    assert_eq!(
        probes,
        ["probe tb-overlay 10.2.1.5", "probe tb-overlay 10.2.1.6"],
        "each new address once, while Docker created its container"
    );

    // The retry probes again and changes nothing while the squatter stays.
    f.clear_logs();
    agent.requeue("containers/web");
    agent.settle().await;
    assert_eq!(f.prober.calls().len(), 1, "{:?}", f.prober.calls());
    assert_eq!(f.ifs.writes(), Vec::<String>::new());
    assert_eq!(
        f.report(Kind::Container, "web").unwrap().reason,
        "AddressConflict"
    );

    // Gone: the next reconcile takes the address.
    f.prober.leave(web_ip);
    agent.requeue("containers/web");
    agent.settle().await;
    let web = f.report(Kind::Container, "web").unwrap();
    assert!(web.ready, "{web:?}");
    let (_, plumbed) = f.ifs.host().attachments[&web_port()].clone();
    assert_eq!(
        plumbed.peer.unwrap().addresses,
        vec!["10.2.1.5/16".parse().unwrap()]
    );
    let claimed = f.events("AddressClaimed");
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    assert!(
        claimed[0]
            .message
            .contains("10.2.1.5 is free on bridge tb-overlay")
    );
    assert!(
        f.events("DriftRepaired").is_empty(),
        "taking a withheld address is no repair: {:?}",
        f.events("DriftRepaired")
    );
    f.clear_logs();
    agent.resync().await;
    assert_eq!(
        f.prober.calls(),
        Vec::<String>::new(),
        "configured: not probed again"
    );
    // A repair puts back an address the container held without probing for it.
    f.ifs.drop_address_by_hand(&web_port());
    agent.requeue("containers/web");
    agent.settle().await;
    let (_, plumbed) = f.ifs.host().attachments[&web_port()].clone();
    assert_eq!(plumbed.peer.unwrap().addresses.len(), 1);
    assert_eq!(
        f.prober.calls(),
        Vec::<String>::new(),
        "a repair is not probed"
    );
}

/// The probe made while Docker creates a container could not run (a new network's bridge
/// not made yet): the plumbing probes itself, once the bridge is there.
#[tokio::test]
async fn a_probe_ahead_that_fails_is_made_by_the_plumbing() {
    let f = Fakes::new();
    f.prober.fail_next(ProbeError::NoBridgePort {
        bridge: "tb-overlay".into(),
    });
    let agent = Agent::new(&f, slice());
    agent.start().await;
    for name in ["web", "app"] {
        let r = f.report(Kind::Container, name).unwrap();
        assert!(r.ready, "{r:?}");
    }
    assert_eq!(f.prober.calls().len(), 3, "{:?}", f.prober.calls());
}

#[tokio::test]
async fn a_failed_probe_configures_nothing_and_is_retried() {
    let f = Fakes::new();
    let agent = Agent::new(&f, slice());
    agent.start().await;
    // Renumbered: the new addresses are probed by the plumbing (the containers exist).
    for (name, ip) in [("web", "10.2.1.15"), ("app", "10.2.1.16")] {
        let mut c = container(name, ip);
        c.generation = 2;
        agent.put(SliceEntry::Container(c));
    }
    f.prober.fail_next(ProbeError::NoBridgePort {
        bridge: "tb-overlay".into(),
    });
    agent.settle().await;
    let failed: Vec<_> = ["web", "app"]
        .iter()
        .filter_map(|n| f.report(Kind::Container, n))
        .filter(|r| r.reason == "AddressProbeFailed")
        .collect();
    assert_eq!(failed.len(), 1, "one of the two probes failed: {failed:?}");
    let name = failed[0].object.name.clone();
    let veth = names::veth_host_name(&name, "eth0");
    let (_, o) = f.ifs.host().attachments[&veth].clone();
    let ip = if name == "web" {
        "10.2.1.5/16"
    } else {
        "10.2.1.6/16"
    };
    assert_eq!(
        o.peer.unwrap().addresses,
        vec![ip.parse().unwrap()],
        "nothing changes before the probe answers"
    );
    agent.requeue(&format!("containers/{name}"));
    agent.settle().await;
    assert!(f.report(Kind::Container, &name).unwrap().ready);
}

#[tokio::test]
async fn removal_from_the_slice_cleans_the_host() {
    let f = Fakes::new();
    let agent = Agent::new(&f, slice());
    agent.start().await;
    let id = f.docker.container("web").unwrap().id;

    agent.delete("containers/web");
    agent.delete(&format!(
        "tunnels/{}",
        names::gre_port_name("overlay", "node2")
    ));
    agent.runner.run_until_idle().await;

    assert!(f.docker.container("web").is_none());
    assert!(f.docker.writes().contains(&format!("remove {id}")));
    assert!(
        !f.ifs.host().attachments.contains_key(&web_port()),
        "veth removed"
    );
    let ovs = f.ovs.state().clone();
    assert!(
        !ovs.bridges["tb-overlay"].ports.contains_key(&web_port()),
        "OVS port removed"
    );
    assert!(
        !ovs.bridges["tb-overlay"]
            .ports
            .contains_key(&names::gre_port_name("overlay", "node2"))
    );
    assert!(
        f.nat.rules(NsKey::Node).ports.is_empty(),
        "published port no longer DNATed"
    );
    assert!(f.report(Kind::Container, "web").is_none(), "report deleted");
    assert!(f.report(Kind::Tunnel, "overlay-node1-node2").is_none());
    // app is untouched.
    assert!(f.docker.container("app").unwrap().running);
    assert!(f.report(Kind::Link, "app-to-web").is_some());
}

#[tokio::test]
async fn removing_the_bridge_removes_it_and_everything_on_it() {
    let f = Fakes::new();
    let agent = Agent::new(&f, slice());
    agent.start().await;
    for key in ["containers/web", "containers/app", "bridges/overlay"] {
        agent.delete(key);
    }
    agent.delete(&format!(
        "tunnels/{}",
        names::gre_port_name("overlay", "node2")
    ));
    agent.runner.run_until_idle().await;
    let ovs = f.ovs.state().clone();
    assert!(!ovs.bridges.contains_key("tb-overlay"));
    assert!(ovs.bridges.contains_key("br-phy"));
    assert_eq!(
        f.nat.rules(NsKey::Node),
        NatRules::default(),
        "empty table removed"
    );
    assert!(f.reports.all().is_empty());
}

#[tokio::test]
async fn a_config_change_recreates_the_container() {
    let f = Fakes::new();
    let agent = Agent::new(&f, slice());
    agent.start().await;
    let old = f.docker.container("web").unwrap().id;

    let mut web = match agent.store.get(&key("containers/web")) {
        Some(SliceValue::Entry(SliceEntry::Container(c))) => c,
        other => panic!("{other:?}"),
    };
    web.env.insert("LOG_LEVEL".into(), "debug".into());
    web.generation = 2;
    agent.put(SliceEntry::Container(web.clone()));
    agent.runner.run_until_idle().await;

    let new = f.docker.container("web").unwrap();
    assert_ne!(new.id, old);
    assert_eq!(new.config_hash, web.config_hash());
    assert!(f.docker.writes().contains(&format!("remove {old}")));
    assert_eq!(f.events("Recreating").len(), 1);
    let r = f.report(Kind::Container, "web").unwrap();
    assert!(r.ready);
    assert_eq!(r.observed_generation, 2);
    assert_eq!(r.container_id, Some(new.id));
    // Its new namespace was plumbed again.
    let pid = new.pid.unwrap();
    assert_eq!(f.ifs.host().attachments[&web_port()].0, pid);
}

#[tokio::test]
async fn a_link_rewire_reprograms_without_recreating() {
    let f = Fakes::new();
    let agent = Agent::new(&f, slice());
    agent.start().await;
    let before = f.docker.container("app").unwrap();
    f.clear_logs();

    let mut app = match agent.store.get(&key("containers/app")) {
        Some(SliceValue::Entry(SliceEntry::Container(c))) => c,
        other => panic!("{other:?}"),
    };
    app.links = vec![link_rule("app-to-web", Some("10.2.3.9:6379"))];
    agent.put(SliceEntry::Container(app));
    agent.runner.run_until_idle().await;

    let after = f.docker.container("app").unwrap();
    assert_eq!(after.id, before.id, "a rewire never recreates the consumer");
    assert_eq!(after.started_at, before.started_at);
    assert!(f.docker.writes().is_empty(), "{:?}", f.docker.writes());
    assert!(f.ovs.writes().is_empty() && f.ifs.writes().is_empty());
    let rules = f.nat.rules(NsKey::Pid(after.pid.unwrap()));
    assert_eq!(rules.links[0].target, "10.2.3.9:6379".parse().unwrap());
    let l = f.report(Kind::Link, "app-to-web").unwrap();
    assert_eq!(l.endpoint.as_deref(), Some("10.2.3.9:6379"));
    let programmed: Vec<String> = f
        .events("LinkProgrammed")
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert!(
        programmed
            .iter()
            .any(|m| m.ends_with("now forwards to 10.2.3.9:6379")),
        "{programmed:?}"
    );

    // A target that cannot be resolved: the rule goes, the link reports why.
    let mut app = match agent.store.get(&key("containers/app")) {
        Some(SliceValue::Entry(SliceEntry::Container(c))) => c,
        other => panic!("{other:?}"),
    };
    app.links = vec![link_rule("app-to-web", None)];
    agent.put(SliceEntry::Container(app));
    agent.runner.run_until_idle().await;
    assert!(f.nat.rules(NsKey::Pid(after.pid.unwrap())).links.is_empty());
    let l = f.report(Kind::Link, "app-to-web").unwrap();
    assert!(!l.ready);
    assert_eq!(l.reason, "TargetNotFound");
    assert_eq!(f.docker.container("app").unwrap().id, before.id);
}

fn app_entry(agent: &Agent) -> topo_schema::slice::ContainerEntry {
    match agent.store.get(&key("containers/app")) {
        Some(SliceValue::Entry(SliceEntry::Container(c))) => c,
        other => panic!("{other:?}"),
    }
}

/// Recreating events, repeats included (the fake's ids share their first 12 characters,
/// so two recreations of one container aggregate into one event with count 2).
fn recreations(f: &Fakes) -> u32 {
    f.events("Recreating").iter().map(|e| e.count).sum()
}

/// The environment is fixed when a container is created: giving a link an alias (its
/// Docker-link variables and hosts entry) recreates the consumer, and so does taking it
/// away; repointing or moving the link's target in between never does.
#[tokio::test]
async fn an_alias_change_recreates_the_consumer_and_rewires_never_do() {
    let f = Fakes::new();
    let agent = Agent::new(&f, slice());
    agent.start().await;
    let first = f.docker.container("app").unwrap();

    // Add `alias: web`: what the planner adds to the entry.
    let mut app = app_entry(&agent);
    app.env
        .insert("WEB_PORT".into(), "tcp://127.0.0.1:8080".into());
    app.env
        .insert("WEB_PORT_80_TCP_ADDR".into(), "127.0.0.1".into());
    app.hosts.push(topo_schema::slice::HostEntry {
        name: "web".into(),
        ip: "127.0.0.1".parse().unwrap(),
    });
    app.generation = 2;
    agent.put(SliceEntry::Container(app.clone()));
    agent.runner.run_until_idle().await;
    let aliased = f.docker.container("app").unwrap();
    assert_ne!(
        aliased.id, first.id,
        "adding an alias recreates the consumer"
    );
    assert_eq!(aliased.config_hash, app.config_hash());
    assert!(
        f.docker.writes().contains(&format!("remove {}", first.id)),
        "{:?}",
        f.docker.writes()
    );
    assert_eq!(recreations(&f), 1);
    // The new container's namespace got the link rules again.
    let rules = f.nat.rules(NsKey::Pid(aliased.pid.unwrap()));
    assert_eq!(rules.links[0].target, "10.2.1.5:80".parse().unwrap());

    // Rewires: the target moves (new address), then the link points elsewhere.
    for target in ["10.2.2.7:80", "10.2.3.9:6379"] {
        f.clear_logs();
        let mut app = app_entry(&agent);
        app.links = vec![link_rule("app-to-web", Some(target))];
        agent.put(SliceEntry::Container(app));
        agent.runner.run_until_idle().await;
        let now = f.docker.container("app").unwrap();
        assert_eq!(now.id, aliased.id, "rewire to {target} kept the consumer");
        assert_eq!(now.started_at, aliased.started_at);
        assert!(f.docker.writes().is_empty(), "{:?}", f.docker.writes());
        let rules = f.nat.rules(NsKey::Pid(now.pid.unwrap()));
        assert_eq!(rules.links[0].target, target.parse().unwrap());
        let l = f.report(Kind::Link, "app-to-web").unwrap();
        assert_eq!(l.endpoint.as_deref(), Some(target));
        assert!(l.ready);
        assert_eq!(
            l.observed_generation, 1,
            "a link reports its own generation, not its consumer's (2)"
        );
        let c = f.report(Kind::Container, "app").unwrap();
        assert_eq!(c.container_id.as_deref(), Some(aliased.id.as_str()));
        assert_eq!(c.restart_count, 0);
    }
    assert_eq!(recreations(&f), 1);

    // Remove the alias again: recreated once more.
    let mut app = app_entry(&agent);
    app.env.clear();
    app.hosts.clear();
    app.generation = 3;
    agent.put(SliceEntry::Container(app));
    agent.runner.run_until_idle().await;
    let plain = f.docker.container("app").unwrap();
    assert_ne!(
        plain.id, aliased.id,
        "removing an alias recreates the consumer"
    );
    assert_eq!(recreations(&f), 2);
    let rules = f.nat.rules(NsKey::Pid(plain.pid.unwrap()));
    assert_eq!(rules.links[0].target, "10.2.3.9:6379".parse().unwrap());
}

/// Issue 9: a failed pull is `ImagePullBackOff` with the registry's error, one counted
/// event per error, and is retried after the backoff; the other container is not held back.
#[tokio::test]
async fn a_missing_image_backs_off_with_the_registrys_error_and_is_retried() {
    let f = Fakes::new();
    let mut entries = slice();
    if let SliceEntry::Container(c) = &mut entries[3] {
        c.image = "nope:1".into();
        c.pull_policy = PullPolicy::IfNotPresent;
    }
    let agent = Agent::new(&f, entries);
    agent.start().await;
    agent.settle().await;
    let r = f.report(Kind::Container, "web").unwrap();
    assert!(!r.ready);
    assert_eq!(r.reason, "ImagePullBackOff");
    assert!(
        r.message
            .contains("pull access denied for nope:1, repository does not exist"),
        "{}",
        r.message
    );
    assert_eq!(f.events("Pulling").len(), 1);
    let ev = f.events("ImagePullFailed");
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].type_, EventType::Warning);
    assert!(f.docker.container("web").is_none());
    // The other container is not held back.
    assert!(f.report(Kind::Container, "app").unwrap().ready);

    // The retry after the backoff fails the same way: counted on the same event.
    tokio::time::sleep(Duration::from_millis(400)).await;
    agent.settle().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    agent.settle().await;
    let ev = f.events("ImagePullFailed");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].count, 2, "{ev:?}");

    // Once the image can be pulled, the next retry succeeds.
    f.docker.host().registry.insert("nope:1".into());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    agent.settle().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    agent.settle().await;
    assert!(f.report(Kind::Container, "web").unwrap().ready);
    assert_eq!(f.events("Pulled").len(), 1);
}

/// Issue 9: a registry that accepts the pull and then sends nothing holds up no reconcile
/// (the pull runs off the worker), is pulled once for every container that wants the image,
/// and is abandoned after the progress deadline as `ImagePullBackOff`.
#[tokio::test]
async fn a_stalled_pull_blocks_nothing_and_is_abandoned() {
    let f = Fakes::new();
    f.docker.host().stalled.insert("stall:1".into());
    let mut entries = slice();
    let mut second = container("second", "10.2.1.7");
    second.image = "stall:1".into();
    entries.push(SliceEntry::Container(second));
    if let SliceEntry::Container(c) = &mut entries[3] {
        c.image = "stall:1".into();
    }
    let agent = Agent::new(&f, entries);
    // With the pull inline this would never return: the stream never ends.
    tokio::time::timeout(Duration::from_secs(5), agent.start())
        .await
        .expect("the first pass waited for the stalled pull");
    assert!(f.report(Kind::Container, "app").unwrap().ready);
    for name in ["web", "second"] {
        let r = f.report(Kind::Container, name).unwrap();
        assert_eq!(r.reason, "ImagePulling", "{name}: {r:?}");
        assert!(r.message.contains("pulling image stall:1"), "{}", r.message);
    }
    let pulls = |f: &Fakes| {
        f.docker
            .writes()
            .iter()
            .filter(|w| *w == "pull stall:1")
            .count()
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(pulls(&f), 1, "one pull for both: {:?}", f.docker.writes());

    tokio::time::sleep(Duration::from_millis(450)).await;
    agent.settle().await;
    for name in ["web", "second"] {
        let r = f.report(Kind::Container, name).unwrap();
        assert_eq!(r.reason, "ImagePullBackOff", "{name}: {r:?}");
        assert!(
            r.message.contains("sent nothing for 0.3 s"),
            "{}",
            r.message
        );
    }
    let failed = f.events("ImagePullFailed");
    assert_eq!(failed.len(), 2, "one per waiting container: {failed:?}");
    assert!(failed[0].message.contains("stalled"), "{failed:?}");
    assert!(f.docker.container("web").is_none());
}

#[tokio::test]
async fn garbage_collection_removes_only_owned_leftovers() {
    let f = Fakes::new();
    // A previous slice had container old; the agent was down when it was removed.
    let mut old_slice = slice();
    old_slice.push(SliceEntry::Container(container("old", "10.2.1.9")));
    let first = Agent::new(&f, old_slice);
    first.start().await;
    assert!(f.docker.container("old").is_some());
    drop(first);

    let second = Agent::new(&f, slice());
    second.start().await;
    assert!(
        f.docker.container("old").is_none(),
        "owned leftover container removed"
    );
    assert!(
        !f.ovs.state().bridges["tb-overlay"]
            .ports
            .contains_key(&names::veth_host_name("old", "eth0"))
    );
    assert!(
        !f.ifs
            .host()
            .attachments
            .contains_key(&names::veth_host_name("old", "eth0"))
    );
    assert!(
        f.report(Kind::Container, "old").is_none(),
        "orphan report removed"
    );
    assert!(f.ovs.state().bridges.contains_key("br-phy"));
    assert!(
        f.ovs.state().bridges["tb-overlay"]
            .ports
            .contains_key("tb-overlay"),
        "internal port kept"
    );
    assert!(f.docker.container("web").unwrap().running);
}

#[tokio::test]
async fn unsupported_entries_are_left_alone() {
    let f = Fakes::new();
    let mut with_old = slice();
    with_old.push(SliceEntry::Container(container("future", "10.2.1.9")));
    let first = Agent::new(&f, with_old);
    first.start().await;
    drop(first);
    f.clear_logs();

    let second = Agent::new(&f, slice());
    second.store.insert(
        key("containers/future"),
        SliceValue::Unsupported { version: 2 },
    );
    second.start().await;
    assert!(f.docker.container("future").unwrap().running, "not removed");
    assert!(
        f.ovs.state().bridges["tb-overlay"]
            .ports
            .contains_key(&names::veth_host_name("future", "eth0"))
    );
    assert_eq!(f.host_writes(), Vec::<String>::new());
    let r = f.report(Kind::Container, "future").unwrap();
    assert_eq!(r.reason, "UnsupportedSliceEntry");
}

#[tokio::test]
async fn a_foreign_port_name_is_a_conflict_not_a_takeover() {
    let f = Fakes::new();
    let agent = Agent::new(&f, slice());
    // Someone else's port already has the GRE port's name.
    f.ovs
        .apply(&[OvsChange::AddBridge {
            name: "tb-overlay".into(),
            datapath: topo_schema::kinds::Datapath::Netdev,
            rstp: false,
            mtu: 1458,
            object: "network/overlay".into(),
        }])
        .await
        .unwrap();
    {
        let mut s = f.ovs.state();
        let b = s.bridges.get_mut("br-phy").unwrap();
        let mut p = b.ports["br-phy"].clone();
        p.name = names::gre_port_name("overlay", "node2");
        b.ports.insert(p.name.clone(), p);
    }
    agent.start().await;
    let t = f.report(Kind::Tunnel, "overlay-node1-node2").unwrap();
    assert!(!t.ready);
    assert_eq!(t.reason, "NameConflict");
    assert!(
        f.ovs.state().bridges["br-phy"]
            .ports
            .contains_key(&names::gre_port_name("overlay", "node2"))
    );
}

fn web_entry() -> topo_schema::slice::ContainerEntry {
    slice()
        .into_iter()
        .find_map(|e| match e {
            SliceEntry::Container(c) if c.name == "web" => Some(c),
            _ => None,
        })
        .unwrap()
}

/// Deleted, then applied again under the same name (a new object, a new uid), whether the
/// agent saw the delete or only the new entry: the new container's veth gets its OVS port
/// afresh (the old port leaves the bridge in a transaction of its own first), and the
/// report names the new uid. The report of the deleted object goes only once the host
/// holds nothing of it.
#[tokio::test]
async fn a_container_deleted_and_applied_again_gets_a_fresh_port() {
    let f = Fakes::new();
    let agent = Agent::new(&f, slice());
    agent.start().await;
    let first = web_entry();
    assert_eq!(
        f.report(Kind::Container, "web").unwrap().uid.as_deref(),
        Some(first.uid.as_str())
    );

    // The agent sees the delete.
    agent.delete("containers/web");
    agent.runner.run_until_idle().await;
    assert!(f.report(Kind::Container, "web").is_none());
    assert!(f.docker.container("web").is_none());
    assert!(
        !f.ovs.state().bridges["tb-overlay"]
            .ports
            .contains_key(&web_port())
    );
    f.clear_logs();
    let mut second = first.clone();
    second.uid = "uid-second".into();
    agent.put(SliceEntry::Container(second.clone()));
    agent.runner.run_until_idle().await;
    let w = f.ovs.writes();
    assert!(
        w.iter()
            .any(|x| x.contains("AddPort") && x.contains(&web_port())),
        "{w:?}"
    );
    assert_eq!(
        f.report(Kind::Container, "web").unwrap().uid.as_deref(),
        Some("uid-second")
    );

    // The agent sees only the new entry: the old container goes, and so does its port.
    f.clear_logs();
    let mut third = first.clone();
    third.uid = "uid-third".into();
    agent.put(SliceEntry::Container(third));
    agent.runner.run_until_idle().await;
    let w = f.ovs.writes();
    let del = w
        .iter()
        .position(|x| x.contains("DeletePort") && x.contains(&web_port()));
    let add = w
        .iter()
        .position(|x| x.contains("AddPort") && x.contains(&web_port()));
    assert!(matches!((del, add), (Some(d), Some(a)) if d < a), "{w:?}");
    assert_eq!(
        f.report(Kind::Container, "web").unwrap().uid.as_deref(),
        Some("uid-third")
    );
}

/// An entry removed before any reconcile of it succeeded: whatever the host holds of it
/// goes before its report does (`delete --wait` takes a missing report for "gone").
#[tokio::test]
async fn a_never_applied_container_is_cleaned_before_its_report_goes() {
    let f = Fakes::new();
    let agent = Agent::new(&f, slice());
    agent.start().await;
    let mut late = web_entry();
    late.name = "late".into();
    late.docker_name = "topo-late".into();
    late.uid = "uid-late".into();
    late.attachments.clear();
    late.ports.clear();
    late.links.clear();
    // Created, then its reconcile fails: nothing applied, a failure report stored.
    f.ovs
        .fail_next("observe", topo_agent::backend::OvsError::Disconnected);
    agent.put(SliceEntry::Container(late));
    agent.runner.run_until_idle().await;
    assert!(f.docker.container("late").is_some());
    let r = f.report(Kind::Container, "late").unwrap();
    assert!(!r.ready);
    assert_eq!(r.uid.as_deref(), Some("uid-late"));

    // The removal fails once: the report stays while the container does.
    let id = f.docker.container("late").unwrap().id;
    f.docker.fail_next(
        "remove",
        topo_agent::backend::ContainerError::NotOwned { id },
    );
    agent.delete("containers/late");
    agent.runner.run_until_idle().await;
    assert!(f.docker.container("late").is_some());
    assert!(f.report(Kind::Container, "late").is_some());
    agent.requeue("containers/late");
    agent.runner.run_until_idle().await;
    assert!(f.docker.container("late").is_none());
    assert!(f.report(Kind::Container, "late").is_none());
}

/// The switch's first GRE port on the userspace datapath is followed by one purge of
/// ovs-vswitchd's datapath flows (a flow made while no tunnel port existed hands GRE to the
/// host's stack and is not revalidated when the port comes); a second tunnel is not.
#[tokio::test]
async fn the_first_tunnel_purges_the_datapath_flows_once_it_is_in_place() {
    let f = Fakes::new();
    let agent = Agent::new(&f, slice());
    agent.start().await;
    let gre = names::gre_port_name("overlay", "node2");
    let writes = f.ovs.writes();
    let added = writes
        .iter()
        .position(|w| w.contains("AddPort") && w.contains(&gre))
        .unwrap_or_else(|| panic!("no GRE port added: {writes:?}"));
    let purges: Vec<usize> = (0..writes.len())
        .filter(|&i| writes[i] == "purge datapath flows")
        .collect();
    assert_eq!(purges, vec![added + 1], "{writes:?}");

    f.clear_logs();
    agent.put(SliceEntry::Tunnel(tunnel("node3", 3)));
    agent.settle().await;
    let writes = f.ovs.writes();
    assert!(
        writes.iter().any(|w| w.contains("AddPort")),
        "the second tunnel's port: {writes:?}"
    );
    assert!(
        !writes.contains(&"purge datapath flows".to_string()),
        "{writes:?}"
    );

    // Both gone, then one back: the switch's first again.
    f.clear_logs();
    agent.delete(&format!("tunnels/{gre}"));
    agent.delete(&format!(
        "tunnels/{}",
        names::gre_port_name("overlay", "node3")
    ));
    agent.settle().await;
    agent.put(SliceEntry::Tunnel(tunnel("node2", 2)));
    agent.settle().await;
    let purges = f
        .ovs
        .writes()
        .iter()
        .filter(|w| *w == "purge datapath flows")
        .count();
    assert_eq!(purges, 1, "{:?}", f.ovs.writes());
}
