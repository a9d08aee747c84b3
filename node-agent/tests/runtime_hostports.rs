//! Issue 8 on the recording fakes: a published port that a process of the node listens on is
//! not programmed and its container says so, until the port is free; a port already
//! published stays; a hostIP the node lacks waits for the address.

mod runtime_support;

use std::time::Duration;

use runtime_support::*;
use topo_agent::backend::NetNs;
use topo_agent::key::Key;
use topo_agent::reconcile::Action;
use topo_schema::kinds::{Kind, Protocol};
use topo_schema::slice::SliceEntry;

fn nat_ports(f: &Fakes) -> Vec<u16> {
    f.nat
        .rules(NetNs::Node)
        .ports
        .iter()
        .map(|p| p.host_port)
        .collect()
}

/// The outcome of the last Nat reconcile among `results`.
fn nat_action(results: &[(Key, Result<Action, String>)]) -> Option<Action> {
    results
        .iter()
        .rev()
        .find(|(k, _)| *k == Key::Nat)
        .and_then(|(_, r)| r.clone().ok())
}

#[tokio::test]
async fn a_port_a_process_listens_on_waits_until_it_is_free() {
    let f = Fakes::new();
    f.host_ports
        .listen(Protocol::Tcp, "0.0.0.0", 50000, "nginx", 1234);
    let agent = Agent::new(&f, slice());
    agent.ctx.reporter.load().await.unwrap();
    agent.ctx.mark_synced();
    agent.queue.add_all(agent.ctx.all_keys());
    let results = agent.runner.run_until_idle().await;

    assert_eq!(nat_ports(&f), Vec::<u16>::new(), "50000 is not taken over");
    let web = f.report(Kind::Container, "web").unwrap();
    assert!(!web.ready, "{web:?}");
    assert_eq!(web.reason, "HostPortInUse");
    assert_eq!(
        web.message,
        "hostPort 50000/tcp is in use by nginx (pid 1234) listening on 0.0.0.0:50000; it is published once the port is free"
    );
    assert!(
        f.report(Kind::Container, "app").unwrap().ready,
        "the other container is not concerned"
    );
    assert_eq!(f.events("HostPortInUse").len(), 1);
    assert!(
        matches!(nat_action(&results), Some(Action::Requeue(d)) if d == Duration::from_secs(1)),
        "held ports are rechecked: {results:?}"
    );
    // Masquerade and isolation do not wait for the port.
    assert_eq!(f.nat.rules(NetNs::Node).masquerade.len(), 1);

    // Still held: the next recheck waits longer and changes nothing.
    agent.queue.add(Key::Nat);
    let results = agent.runner.run_until_idle().await;
    assert!(
        matches!(nat_action(&results), Some(Action::Requeue(d)) if d == Duration::from_secs(2)),
        "{results:?}"
    );
    assert_eq!(f.events("HostPortInUse").len(), 1, "said once");

    // nginx goes: the recheck publishes the port and the container becomes Ready.
    f.host_ports.close(50000);
    agent.queue.add(Key::Nat);
    let results = agent.runner.run_until_idle().await;
    assert_eq!(nat_action(&results), Some(Action::AwaitChange));
    assert_eq!(nat_ports(&f), vec![50000]);
    assert!(
        results
            .iter()
            .any(|(k, _)| *k == Key::Container("web".into())),
        "the container is reconciled again: {results:?}"
    );
    let web = f.report(Kind::Container, "web").unwrap();
    assert!(web.ready, "{web:?}");
    assert_eq!(web.reason, "Running");
    let published = f.events("HostPortPublished");
    assert_eq!(published.len(), 1);
    assert_eq!(
        published[0].message,
        "hostPort 50000/tcp is published on 192.168.100.1"
    );
}

/// Only a socket on the port's address (or on every address) holds it: a service bound to
/// 127.0.0.1 keeps its port and the container publishes on the underlay address.
#[tokio::test]
async fn a_socket_on_another_address_does_not_hold_the_port() {
    let f = Fakes::new();
    f.host_ports
        .listen(Protocol::Tcp, "127.0.0.1", 50000, "admin", 99);
    f.host_ports
        .listen(Protocol::Udp, "0.0.0.0", 50000, "dns", 98);
    let agent = Agent::new(&f, slice());
    agent.start().await;
    assert_eq!(nat_ports(&f), vec![50000]);
    assert!(f.report(Kind::Container, "web").unwrap().ready);
}

/// The port topo published is its own: a process binding it later (or found there after an
/// agent restart) does not make the agent withdraw it, and costs no write.
#[tokio::test]
async fn a_published_port_stays_published() {
    let f = Fakes::new();
    let agent = Agent::new(&f, slice());
    agent.start().await;
    assert_eq!(nat_ports(&f), vec![50000]);
    f.host_ports
        .listen(Protocol::Tcp, "0.0.0.0", 50000, "latecomer", 4321);
    f.clear_logs();
    agent.resync().await;
    assert_eq!(f.host_writes(), Vec::<String>::new());
    assert!(f.report(Kind::Container, "web").unwrap().ready);

    let restarted = Agent::new(&f, slice());
    restarted.start().await;
    assert_eq!(f.host_writes(), Vec::<String>::new());
    assert!(f.report(Kind::Container, "web").unwrap().ready);
    assert!(
        f.host_ports.calls().iter().all(|c| !c.contains("50000")),
        "a port in force is not even looked up: {:?}",
        f.host_ports.calls()
    );
}

#[tokio::test]
async fn a_host_ip_the_node_lacks_waits_for_the_address() {
    let f = Fakes::new();
    let mut entries = slice();
    for e in &mut entries {
        if let SliceEntry::Container(c) = e
            && c.name == "web"
        {
            c.ports[0].host_ip = "10.9.9.9".parse().unwrap();
        }
    }
    let agent = Agent::new(&f, entries);
    agent.start().await;
    assert_eq!(nat_ports(&f), Vec::<u16>::new());
    let web = f.report(Kind::Container, "web").unwrap();
    assert_eq!(web.reason, "HostIPNotLocal");
    assert!(
        web.message
            .starts_with("hostIP 10.9.9.9 of hostPort 50000/tcp is not an address of node node1"),
        "{}",
        web.message
    );

    f.host_ports
        .host()
        .addresses
        .push("10.9.9.9".parse().unwrap());
    agent.queue.add(Key::Nat);
    agent.runner.run_until_idle().await;
    assert_eq!(nat_ports(&f), vec![50000]);
    assert!(f.report(Kind::Container, "web").unwrap().ready);
}

/// A new container on a held port reports it from its first status on: its own reconcile
/// judges the ports the NAT pass has not judged yet.
#[tokio::test]
async fn a_new_container_on_a_held_port_is_never_ready() {
    let f = Fakes::new();
    let mut entries = slice();
    let web = entries
        .iter()
        .position(|e| matches!(e, SliceEntry::Container(c) if c.name == "web"))
        .unwrap();
    let SliceEntry::Container(web_entry) = entries.remove(web) else {
        unreachable!()
    };
    let agent = Agent::new(&f, entries);
    agent.start().await;
    f.host_ports
        .listen(Protocol::Tcp, "192.168.100.1", 50000, "sshd", 7);

    agent.put(SliceEntry::Container(web_entry));
    // Only the container's key: the NAT pass it queues has not run yet.
    let key = agent.queue.pop().await.unwrap();
    assert_eq!(key, Key::Container("web".into()));
    agent.runner.process(&key).await.unwrap();
    agent.queue.done(&key);
    let r = f.report(Kind::Container, "web").unwrap();
    assert_eq!(r.reason, "HostPortInUse", "{r:?}");
    assert!(r.message.contains("sshd (pid 7)"), "{}", r.message);
    agent.runner.run_until_idle().await;
    assert_eq!(nat_ports(&f), Vec::<u16>::new());
    assert_eq!(
        f.report(Kind::Container, "web").unwrap().reason,
        "HostPortInUse"
    );
}
