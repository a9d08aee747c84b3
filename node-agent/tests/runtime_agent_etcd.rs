//! The agent runtime against a real etcd with fake host backends: registration, heartbeat
//! lease, slice-driven reconciles, reports and events in etcd, shutdown.

mod runtime_etcd;
mod runtime_support;

use std::time::Duration;

use etcd_client::{Client, GetOptions};
use runtime_etcd::{Etcd, eventually};
use runtime_support::{Fakes, NODE, slice};
use tokio::sync::{oneshot, watch};
use topo_agent::agent::{AgentConfig, run};
use topo_agent::events::{EtcdEvents, EventSink, MAX_EVENTS_PER_OBJECT, Recorder};
use topo_agent::heartbeat::{HeartbeatConfig, register_node, run_heartbeat};
use topo_schema::api::{Event, Heartbeat, ObservedReport, Registration};
use topo_schema::keys;
use topo_schema::kinds::{Datapath, Kind, ObjectRef};
use topo_schema::slice::{SliceEntry, SliceEnvelope};

async fn get_json<T: serde::de::DeserializeOwned>(c: &mut Client, key: &str) -> Option<T> {
    let r = c.get(key, None).await.unwrap();
    r.kvs()
        .first()
        .map(|kv| serde_json::from_slice(kv.value()).unwrap())
}

async fn put_entry(c: &mut Client, e: &SliceEntry) {
    c.put(
        keys::slice_entry(NODE, e.key()),
        serde_json::to_vec(&SliceEnvelope::new(e.clone())).unwrap(),
        None,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn registration_is_written_under_the_nodes_own_key() {
    let etcd = Etcd::start().await;
    let mut agent = etcd.agent_client().await;
    register_node(
        &mut agent,
        NODE,
        "192.168.100.1".parse().unwrap(),
        Datapath::Netdev,
    )
    .await
    .unwrap();
    let mut c = etcd.client().await;
    let reg: Registration = get_json(&mut c, &keys::registration(NODE)).await.unwrap();
    assert_eq!(reg.node, NODE);
    assert_eq!(reg.address.to_string(), "192.168.100.1");
    assert_eq!(reg.datapath, Datapath::Netdev);
    assert!(
        c.get(keys::object(Kind::Node, NODE), None)
            .await
            .unwrap()
            .kvs()
            .is_empty(),
        "the agent does not write Node objects; the controller folds the registration"
    );
    // The agent's identity cannot register (nor create) another node.
    let err = register_node(
        &mut agent,
        "node2",
        "192.168.100.2".parse().unwrap(),
        Datapath::Netdev,
    )
    .await
    .unwrap_err();
    assert!(format!("{err:?}").contains("permission denied"), "{err:?}");
}

#[tokio::test]
async fn the_heartbeat_survives_a_lost_lease_and_is_revoked_on_shutdown() {
    let etcd = Etcd::start().await;
    let mut c = etcd.client().await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (lease_tx, mut lease_rx) = watch::channel(0i64);
    let hb = tokio::spawn(run_heartbeat(
        etcd.agent_client().await,
        HeartbeatConfig {
            node: NODE.into(),
            ttl: Duration::from_secs(3),
            agent_version: "test".into(),
            endpoint: Some("192.168.100.1:10250".into()),
        },
        stop_rx,
        lease_tx,
    ));
    let key = keys::heartbeat(NODE);
    lease_rx.wait_for(|l| *l != 0).await.unwrap();
    let first = *lease_rx.borrow();
    let kv = c.get(key.clone(), None).await.unwrap().kvs()[0].clone();
    assert_eq!(kv.lease(), first);
    let beat: topo_schema::api::Heartbeat = serde_json::from_slice(kv.value()).unwrap();
    assert_eq!(
        beat.endpoint.as_deref(),
        Some("192.168.100.1:10250"),
        "the heartbeat announces the agent endpoint"
    );
    let beat: Heartbeat = serde_json::from_slice(kv.value()).unwrap();
    assert_eq!(beat.node, NODE);

    // Kept alive past its TTL.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        get_json::<Heartbeat>(&mut c, &key).await.is_some(),
        "renewed every TTL/3"
    );

    // The lease is lost (as after a long partition): a new one is granted and the key is back.
    c.lease_revoke(first).await.unwrap();
    eventually(Duration::from_secs(10), "a new heartbeat lease", || {
        let rx = lease_rx.clone();
        let mut c = c.clone();
        let key = key.clone();
        async move {
            let l = *rx.borrow();
            l != 0
                && l != first
                && c.get(key, None)
                    .await
                    .unwrap()
                    .kvs()
                    .first()
                    .is_some_and(|kv| kv.lease() == l)
        }
    })
    .await;

    // Shutdown revokes: the key goes at once, not after the TTL.
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), hb)
        .await
        .unwrap()
        .unwrap();
    assert!(c.get(key, None).await.unwrap().kvs().is_empty());
}

#[tokio::test]
async fn events_fold_repeats_and_stay_bounded() {
    let etcd = Etcd::start().await;
    let mut c = etcd.client().await;
    let sink = std::sync::Arc::new(EtcdEvents::new(etcd.agent_client().await, NODE));
    let rec = Recorder::new(sink.clone(), NODE);
    let obj = ObjectRef::new(Kind::Tunnel, "overlay-node1-node2");
    for _ in 0..3 {
        rec.warning(
            obj.clone(),
            "DriftRepaired",
            "GRE port tg-node2 was deleted outside topo; recreated",
        )
        .await;
    }
    // Events are written off the caller's path.
    sink.flush().await;
    let prefix = keys::node_object_events_prefix(NODE, Kind::Tunnel, "overlay-node1-node2");
    let r = c
        .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(r.kvs().len(), 1);
    let e: Event = serde_json::from_slice(r.kvs()[0].value()).unwrap();
    assert_eq!(e.count, 3);
    assert_eq!(e.source, "agent/node1");
    assert!(r.kvs()[0].key_str().unwrap().ends_with(&e.dedup_id()));
    assert!(e.last_timestamp >= e.first_timestamp);

    let sink = EtcdEvents::new(etcd.agent_client().await, NODE);
    // Two objects' records interleaved: a batch's bounds are counted together.
    let other = ObjectRef::new(Kind::Tunnel, "overlay-node1-node3");
    for i in 0..(MAX_EVENTS_PER_OBJECT + 5) {
        let mut ev = e.clone();
        ev.message = format!("message {i}");
        ev.first_timestamp = chrono::Utc::now();
        ev.last_timestamp = ev.first_timestamp;
        let mut ev2 = ev.clone();
        ev2.object = other.clone();
        sink.publish(ev).await.unwrap();
        sink.publish(ev2).await.unwrap();
    }
    sink.flush().await;
    let other_prefix = keys::node_object_events_prefix(NODE, Kind::Tunnel, &other.name);
    let r = c
        .get(other_prefix, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(r.kvs().len(), MAX_EVENTS_PER_OBJECT);
    let r = c
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(r.kvs().len(), MAX_EVENTS_PER_OBJECT);
    let newest: Vec<String> = r
        .kvs()
        .iter()
        .map(|kv| serde_json::from_slice::<Event>(kv.value()).unwrap().message)
        .collect();
    assert!(newest.contains(&format!("message {}", MAX_EVENTS_PER_OBJECT + 4)));
    assert!(
        !newest.iter().any(|m| m.contains("deleted outside topo")),
        "the oldest went first"
    );
}

#[tokio::test]
async fn the_agent_follows_its_slice_and_reports_through_etcd() {
    let etcd = Etcd::start().await;
    let mut c = etcd.client().await;
    // Part of the slice exists before the agent starts, part arrives while it runs.
    let entries = slice();
    for e in &entries[..4] {
        put_entry(&mut c, e).await;
    }
    let f = Fakes::new();
    let cfg = AgentConfig {
        node: NODE.into(),
        address: "192.168.100.1".parse().unwrap(),
        datapath: Datapath::Netdev,
        heartbeat_ttl: Duration::from_secs(3),
        resync: Duration::from_secs(300),
        workers: 4,
        shutdown_grace: Duration::from_secs(5),
        endpoint: None,
        image_pulls: topo_agent::pulls::PullConfig::default(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = oneshot::channel();
    let agent = tokio::spawn(run(
        cfg,
        etcd.agent_client().await,
        f.backends(),
        stop_rx,
        Some(ready_tx),
    ));
    let mut handles = ready_rx.await.unwrap();
    handles.synced.wait_for(|s| *s).await.unwrap();

    let reader = c.clone();
    let report = |kind: Kind, name: &str| {
        let mut c = reader.clone();
        let key = keys::report(NODE, kind, name);
        async move { get_json::<ObservedReport>(&mut c, &key).await }
    };
    eventually(Duration::from_secs(10), "web Ready", || async {
        report(Kind::Container, "web")
            .await
            .is_some_and(|r| r.ready)
    })
    .await;
    assert!(f.docker.container("web").unwrap().running);
    assert!(
        report(Kind::Tunnel, "overlay-node1-node2")
            .await
            .unwrap()
            .ready
    );
    assert!(
        get_json::<Heartbeat>(&mut c, &keys::heartbeat(NODE))
            .await
            .is_some()
    );
    assert!(
        get_json::<Registration>(&mut c, &keys::registration(NODE))
            .await
            .is_some(),
        "registered"
    );

    // A new entry arrives by watch.
    put_entry(&mut c, &entries[4]).await;
    eventually(
        Duration::from_secs(10),
        "app and its link Ready",
        || async {
            report(Kind::Container, "app")
                .await
                .is_some_and(|r| r.ready)
                && report(Kind::Link, "app-to-web")
                    .await
                    .is_some_and(|r| r.ready)
        },
    )
    .await;
    // Events went to etcd under the node's own prefix.
    let ev_prefix = keys::node_object_events_prefix(NODE, Kind::Container, "web");
    let stored = c
        .get(ev_prefix, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let reasons: Vec<String> = stored
        .kvs()
        .iter()
        .map(|kv| serde_json::from_slice::<Event>(kv.value()).unwrap().reason)
        .collect();
    assert!(reasons.contains(&"Started".to_string()), "{reasons:?}");

    // A removed entry is removed from the host and its report goes.
    c.delete(keys::slice_entry(NODE, "containers/web"), None)
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "web removed", || async {
        f.docker.container("web").is_none() && report(Kind::Container, "web").await.is_none()
    })
    .await;

    // Shutdown: nothing on the host goes, the heartbeat does.
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .unwrap()
        .unwrap();
    assert!(
        f.docker.container("app").unwrap().running,
        "containers keep running"
    );
    assert!(
        c.get(keys::heartbeat(NODE), None)
            .await
            .unwrap()
            .kvs()
            .is_empty(),
        "lease revoked"
    );
    assert!(handles.queue.is_empty());
    let _ = handles.lease.borrow_and_update();
}

fn container_report(name: &str) -> ObservedReport {
    ObservedReport {
        uid: None,
        object: ObjectRef::new(Kind::Container, name),
        observed_generation: 1,
        ready: true,
        reason: "Running".into(),
        message: String::new(),
        container_id: None,
        restart_count: 0,
        endpoint: None,
        time: chrono::Utc::now(),
    }
}

async fn count_under(c: &mut Client, prefix: String) -> i64 {
    c.get(
        prefix,
        Some(GetOptions::new().with_prefix().with_count_only()),
    )
    .await
    .unwrap()
    .count()
}

/// Each of `names` gets a Ready report through `reporter`, all at once.
async fn report_all_at_once(
    reporter: &std::sync::Arc<topo_agent::report::Reporter>,
    names: std::ops::Range<usize>,
) {
    use topo_agent::key::Key;
    let mut tasks = tokio::task::JoinSet::new();
    for i in names {
        let r = reporter.clone();
        tasks.spawn(async move {
            let name = format!("c{i}");
            r.sync(&Key::Container(name.clone()), vec![container_report(&name)])
                .await
        });
    }
    while let Some(done) = tasks.join_next().await {
        assert_eq!(done.unwrap().unwrap(), 1);
    }
}

async fn revision(c: &mut Client) -> i64 {
    c.get("/", Some(GetOptions::new().with_count_only()))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}

/// Workers that finish side by side share transactions: 60 reports written at once reach
/// etcd in far fewer revisions than 60, each report stored.
#[tokio::test]
async fn reports_written_side_by_side_share_transactions() {
    use topo_agent::report::{EtcdReports, Reporter};
    let etcd = Etcd::start().await;
    let mut c = etcd.client().await;
    let reporter = std::sync::Arc::new(Reporter::new(
        std::sync::Arc::new(EtcdReports::new(etcd.agent_client().await)),
        NODE,
    ));
    let before = revision(&mut c).await;
    report_all_at_once(&reporter, 0..60).await;
    let revisions = revision(&mut c).await - before;
    assert_eq!(
        count_under(&mut c, keys::node_reports_prefix(NODE)).await,
        60
    );
    assert!(revisions < 30, "60 reports took {revisions} revisions");

    // A collection deleting more orphans than one transaction holds deletes them all.
    report_all_at_once(&reporter, 60..300).await;
    let keep = std::collections::BTreeSet::from([ObjectRef::new(Kind::Container, "c0")]);
    assert_eq!(reporter.retain(&keep).await.unwrap(), 299);
    assert_eq!(
        count_under(&mut c, keys::node_reports_prefix(NODE)).await,
        1
    );
}

/// A burst of new events (a node's containers starting) is written in a few transactions,
/// not one read and one write each; every record is there.
#[tokio::test]
async fn a_burst_of_new_events_shares_transactions() {
    let etcd = Etcd::start().await;
    let mut c = etcd.client().await;
    let sink = std::sync::Arc::new(EtcdEvents::new(etcd.agent_client().await, NODE));
    let rec = Recorder::new(sink.clone(), NODE);
    let before = revision(&mut c).await;
    for i in 0..40 {
        rec.normal(
            ObjectRef::new(Kind::Container, format!("c{i}")),
            "Started",
            "container started",
        )
        .await;
    }
    sink.flush().await;
    let revisions = revision(&mut c).await - before;
    assert_eq!(
        count_under(&mut c, keys::node_events_prefix(NODE)).await,
        40
    );
    assert!(revisions < 20, "40 new events took {revisions} revisions");
}
