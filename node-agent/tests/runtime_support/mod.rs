//! A node agent runtime on the recording fakes: a slice, a context, a runner, and helpers to
//! drive reconciles to quiescence and to read what the fakes recorded.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use topo_agent::backend::fake::{
    FakeContainers, FakeHostPorts, FakeInterfaces, FakeNat, FakeOvs, FakeProber,
};
use topo_agent::events::{MemoryEvents, Recorder};
use topo_agent::key::Key;
use topo_agent::pulls::PullConfig;
use topo_agent::queue::WorkQueue;
use topo_agent::reconcile::context::CrashBackoff;
use topo_agent::reconcile::{Backends, Context, Runner};
use topo_agent::report::{MemoryReports, Reporter};
use topo_agent::watch::{SliceStore, SliceValue};
use topo_schema::api::{Event, ObservedReport};
use topo_schema::kinds::{Datapath, Kind, ObjectRef, Protocol, PullPolicy};
use topo_schema::names;
use topo_schema::slice::{
    AttachmentEntry, BridgeEntry, ContainerEntry, LinkRule, NodeEntry, PublishedPort, SliceEntry,
    SliceKey, TunnelEntry,
};

/// A slice key from its stored form (`containers/web`).
pub fn key(text: &str) -> SliceKey {
    text.parse()
        .unwrap_or_else(|e| panic!("test slice key {text:?}: {e}"))
}

pub const NODE: &str = "node1";

/// Pull deadlines and backoff in tenths of a second.
pub const TEST_PULLS: PullConfig = PullConfig {
    progress_timeout: Duration::from_millis(300),
    timeout: Duration::from_secs(5),
    backoff_initial: Duration::from_millis(300),
    backoff_max: Duration::from_secs(1),
    parallel: 2,
    progress_events: Duration::from_millis(100),
};

/// Kubelet's schedule in seconds where kubelet's is in tens of them: 0, 1, 2, 4 s.
pub const TEST_CRASH_BACKOFF: CrashBackoff = CrashBackoff {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(4),
    reset_after: Duration::from_secs(600),
};
pub const IMAGE: &str = "topo/busybox:latest";

pub fn node() -> SliceEntry {
    SliceEntry::Node(NodeEntry {
        name: NODE.into(),
        address: Ipv4Addr::new(192, 168, 100, 1),
        datapath: Datapath::Netdev,
    })
}

pub fn bridge() -> BridgeEntry {
    BridgeEntry {
        network: "overlay".into(),
        bridge: names::bridge_name("overlay"),
        datapath: Datapath::Netdev,
        mtu: 1458,
        cidr: "10.2.0.0/16".parse().unwrap(),
        block: "10.2.1.0/24".parse().unwrap(),
        gateway: "10.2.1.1/16".parse().unwrap(),
        gre_key: 7,
        rstp: false,
        masquerade: true,
    }
}

pub fn tunnel(peer: &str, addr: u8) -> TunnelEntry {
    TunnelEntry {
        tunnel: format!("overlay-{NODE}-{peer}"),
        network: "overlay".into(),
        bridge: names::bridge_name("overlay"),
        port: names::gre_port_name("overlay", peer),
        peer: Some(peer.into()),
        remote_ip: Ipv4Addr::new(192, 168, 100, addr),
        key: 7,
        split_horizon: true,
    }
}

pub fn attachment(container: &str, ip: &str) -> AttachmentEntry {
    AttachmentEntry {
        network: "overlay".into(),
        bridge: names::bridge_name("overlay"),
        interface: "eth0".into(),
        host_veth: names::veth_host_name(container, "eth0"),
        address: format!("{ip}/16").parse().unwrap(),
        mtu: 1458,
        default_gateway: Some(Ipv4Addr::new(10, 2, 1, 1)),
        tx_checksum_off: true,
    }
}

pub fn container(name: &str, ip: &str) -> ContainerEntry {
    ContainerEntry {
        name: name.into(),
        uid: format!("uid-{name}"),
        generation: 1,
        docker_name: format!("topo-{name}"),
        image: IMAGE.into(),
        command: vec!["httpd".into(), "-f".into(), "-p".into(), "80".into()],
        env: BTreeMap::new(),
        pull_policy: PullPolicy::IfNotPresent,
        hosts: vec![],
        attachments: vec![attachment(name, ip)],
        ports: vec![],
        links: vec![],
        hardening: Default::default(),
    }
}

/// web (published on 50000) and app (linked to web at 127.0.0.1:8080), one bridge, one tunnel.
pub fn slice() -> Vec<SliceEntry> {
    let mut web = container("web", "10.2.1.5");
    web.ports.push(PublishedPort {
        host_port: 50000,
        container_port: 80,
        protocol: Protocol::Tcp,
        container_ip: Ipv4Addr::new(10, 2, 1, 5),
        host_ip: "192.168.100.1".parse().unwrap(),
    });
    let mut app = container("app", "10.2.1.6");
    app.links.push(link_rule("app-to-web", Some("10.2.1.5:80")));
    vec![
        node(),
        SliceEntry::Bridge(bridge()),
        SliceEntry::Tunnel(tunnel("node2", 2)),
        SliceEntry::Container(web),
        SliceEntry::Container(app),
    ]
}

pub fn link_rule(link: &str, target: Option<&str>) -> LinkRule {
    LinkRule {
        link: link.into(),
        generation: 1,
        listen: "127.0.0.1:8080".parse().unwrap(),
        protocol: Protocol::Tcp,
        target: target.map(|t| t.parse().unwrap()),
        reason: if target.is_none() {
            Some("TargetNotFound".into())
        } else {
            None
        },
        message: if target.is_none() {
            Some("container db does not exist".into())
        } else {
            None
        },
    }
}

pub struct Fakes {
    pub docker: Arc<FakeContainers>,
    pub ifs: Arc<FakeInterfaces>,
    pub ovs: Arc<FakeOvs>,
    pub nat: Arc<FakeNat>,
    pub host_ports: Arc<FakeHostPorts>,
    pub prober: Arc<FakeProber>,
    pub reports: Arc<MemoryReports>,
    pub events: Arc<MemoryEvents>,
}

impl Fakes {
    pub fn new() -> Self {
        let f = Fakes {
            docker: Arc::new(FakeContainers::new(NODE).with_image(IMAGE)),
            ifs: Arc::new(FakeInterfaces::new()),
            ovs: Arc::new(FakeOvs::new(NODE).with_foreign_bridge("br-phy")),
            nat: Arc::new(FakeNat::new()),
            host_ports: Arc::new(FakeHostPorts::new()),
            prober: Arc::new(FakeProber::new()),
            reports: MemoryReports::new(),
            events: MemoryEvents::new(),
        };
        // Each gratuitous ARP records whether its veth's port was on a bridge at the time.
        let ovs = f.ovs.clone();
        f.ifs.probe_ports_with(Arc::new(move |veth: &str| {
            ovs.state()
                .bridges
                .values()
                .any(|b| b.ports.contains_key(veth))
        }));
        f
    }

    pub fn backends(&self) -> Backends {
        Backends {
            containers: self.docker.clone(),
            interfaces: self.ifs.clone(),
            ovs: self.ovs.clone(),
            nat: self.nat.clone(),
            host_ports: self.host_ports.clone(),
            prober: self.prober.clone(),
        }
    }

    /// Every mutating call any host backend made, prefixed with the backend.
    pub fn host_writes(&self) -> Vec<String> {
        let mut w = Vec::new();
        w.extend(
            self.docker
                .writes()
                .into_iter()
                .map(|x| format!("docker: {x}")),
        );
        w.extend(
            self.ifs
                .writes()
                .into_iter()
                .map(|x| format!("netlink: {x}")),
        );
        w.extend(self.ovs.writes().into_iter().map(|x| format!("ovs: {x}")));
        w.extend(self.nat.writes().into_iter().map(|x| format!("nft: {x}")));
        w
    }

    pub fn clear_logs(&self) {
        self.docker.clear_log();
        self.ifs.clear_log();
        self.ovs.clear_log();
        self.nat.clear_log();
        self.host_ports.clear_log();
        self.prober.clear_log();
    }

    pub fn report(&self, kind: Kind, name: &str) -> Option<ObservedReport> {
        self.reports.get(&ObjectRef::new(kind, name))
    }

    pub fn events(&self, reason: &str) -> Vec<Event> {
        self.events.with_reason(reason)
    }
}

/// One agent process on the fakes.
pub struct Agent {
    pub ctx: Arc<Context>,
    pub runner: Arc<Runner>,
    pub store: SliceStore,
    pub queue: Arc<WorkQueue>,
    shutdown: watch::Sender<bool>,
}

impl Agent {
    /// An agent whose store holds `entries` (as after its first list), not started.
    pub fn new(f: &Fakes, entries: Vec<SliceEntry>) -> Self {
        let store = SliceStore::from_entries(entries);
        let queue = WorkQueue::new();
        let ctx = Arc::new(
            Context::new(
                NODE,
                f.backends(),
                store.clone(),
                Reporter::new(f.reports.clone(), NODE),
                Recorder::new(f.events.clone(), NODE),
                queue.clone(),
            )
            .with_crash_backoff(TEST_CRASH_BACKOFF)
            .with_pull_config(TEST_PULLS),
        );
        let runner = Runner::new(ctx.clone());
        let (shutdown, _) = watch::channel(false);
        Agent {
            ctx,
            runner,
            store,
            queue,
            shutdown,
        }
    }

    /// Loads reports, marks the store synced, queues everything and runs to quiescence.
    pub async fn start(&self) {
        self.ctx.reporter.load().await.unwrap();
        self.ctx.mark_synced();
        self.queue.add_all(self.ctx.all_keys());
        self.runner.run_until_idle().await;
    }

    /// Subscribes to the fakes' event streams, like the real agent.
    pub fn watch_drift(&self, f: &Fakes) {
        tokio::spawn(topo_agent::host_events::run_host_events(
            self.ctx.clone(),
            f.backends(),
            self.shutdown.subscribe(),
        ));
    }

    /// Lets queued events arrive and runs reconciles until nothing more is queued.
    pub async fn settle(&self) -> Vec<(Key, Result<topo_agent::reconcile::Action, String>)> {
        let mut out = Vec::new();
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if self.queue.is_empty() {
                break;
            }
            out.extend(self.runner.run_until_idle().await);
        }
        out
    }

    pub async fn resync(&self) -> Vec<(Key, Result<topo_agent::reconcile::Action, String>)> {
        self.queue.add_all(self.ctx.all_keys());
        self.runner.run_until_idle().await
    }

    /// Puts `entry` into the slice (as a watch event would) and queues its key.
    pub fn put(&self, entry: SliceEntry) {
        let key = entry.key();
        self.store.insert(key.clone(), SliceValue::Entry(entry));
        self.queue.add(Key::from(key));
    }

    /// Removes `key` (`containers/web`) from the slice (as a watch event would) and queues it.
    pub fn delete(&self, text: &str) {
        let key = key(text);
        self.store.remove(&key);
        self.queue.add(Key::from(key));
    }

    /// Queues `key` (`containers/web`) again.
    pub fn requeue(&self, text: &str) {
        self.queue.add(Key::from(key(text)));
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}
