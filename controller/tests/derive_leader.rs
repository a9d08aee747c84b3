//! Leadership against a real etcd: a deposed leader cannot write, replicas hand over, and a
//! new leader rebuilds IPAM from the specs.

mod common;

use std::time::{Duration, Instant};

use common::*;
use etcd_client::GetOptions;
use serde_json::Value;
use topo_controller::TestServer;
use topo_schema::keys;

async fn apply(url: &str, yaml: &str) {
    let resp = http()
        .post(format!("{url}{API}/apply"))
        .json(&apply_body(&[("test.yaml", yaml)], false))
        .send()
        .await
        .expect("apply request");
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or_default();
    assert!(status.is_success(), "apply failed: {status} {body}");
}

async fn eventually<T, F, Fut>(what: &str, secs: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn server(etcd: &Etcd, id: &str) -> TestServer {
    let mut config = topo_controller::test_config(&etcd.endpoints(), &etcd.pki_dir());
    config.id = id.to_string();
    topo_controller::serve_for_test_with(config)
        .await
        .expect("start the controller")
}

/// (value, lease) of the leader key.
async fn leader(etcd: &Etcd) -> Option<(String, i64)> {
    let mut c = etcd.client().await;
    let resp = c
        .get(keys::leader(), None)
        .await
        .expect("read the leader key");
    resp.kvs()
        .first()
        .map(|kv| (kv.value_str().unwrap_or_default().to_string(), kv.lease()))
}

fn base() -> String {
    docs(&[
        node_yaml("n1", "192.168.100.1"),
        node_yaml("n2", "192.168.100.2"),
        network_yaml("ov", "10.2.0.0/16", 24),
        container_yaml("a", "n1", "ov", None),
        container_yaml("b", "n2", "ov", None),
    ])
}

async fn has_entry(etcd: &Etcd, node: &str, entry: &str) -> bool {
    etcd.count(&keys::slice_entry(node, entry)).await == 1
}

#[tokio::test]
async fn a_deposed_leader_cannot_write() {
    init_tracing();
    let etcd = Etcd::start().await;
    let s = server(&etcd, "replica-a").await;
    apply(&s.url, &base()).await;
    eventually("a's slice entry", 30, || async {
        has_entry(&etcd, "n1", "containers/a").await.then_some(())
    })
    .await;
    assert_eq!(
        leader(&etcd).await.map(|l| l.0).as_deref(),
        Some("replica-a")
    );

    // Someone else takes the leader key behind the leader's back (as after a lapsed lease
    // and a successor's election while the old leader was paused).
    let mut c = etcd.client().await;
    c.delete(keys::leader(), None)
        .await
        .expect("drop the leader key");
    c.put(keys::leader(), "intruder", None)
        .await
        .expect("hijack the leader key");

    // The API still takes writes, but the deposed leader derives nothing from them.
    apply(
        &s.url,
        &docs(&[base(), container_yaml("d", "n1", "ov", None)]),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !has_entry(&etcd, "n1", "containers/d").await,
        "a deposed leader wrote a slice entry"
    );
    assert_eq!(
        etcd.count(&keys::status(topo_schema::Kind::Container, "d"))
            .await,
        0,
        "a deposed leader wrote a status"
    );
    assert_eq!(
        leader(&etcd).await.map(|l| l.0).as_deref(),
        Some("intruder")
    );

    // The intruder goes away: the replica campaigns again, wins and catches up.
    c.delete(keys::leader(), None)
        .await
        .expect("drop the intruder");
    eventually("d's slice entry from the new term", 30, || async {
        has_entry(&etcd, "n1", "containers/d").await.then_some(())
    })
    .await;
    assert_eq!(
        leader(&etcd).await.map(|l| l.0).as_deref(),
        Some("replica-a")
    );
    s.stop().await;
}

#[tokio::test]
async fn replicas_hand_over_when_the_leader_stops_or_its_lease_lapses() {
    init_tracing();
    let etcd = Etcd::start().await;
    let a = server(&etcd, "replica-a").await;
    let b = server(&etcd, "replica-b").await;
    apply(&a.url, &base()).await;
    eventually("slices", 30, || async {
        has_entry(&etcd, "n2", "containers/b").await.then_some(())
    })
    .await;
    let (first, lease) = leader(&etcd).await.expect("a leader");
    assert!(first == "replica-a" || first == "replica-b");
    assert_ne!(lease, 0, "the leader key is bound to a lease");

    // The leader's lease lapses (revoked here, as if it stopped renewing): the other replica
    // takes over and derives the next change.
    let mut c = etcd.client().await;
    c.lease_revoke(lease)
        .await
        .expect("revoke the leader's lease");
    let (second, _) = eventually("a new leader", 30, || async {
        leader(&etcd)
            .await
            .filter(|(id, l)| *l != lease && !id.is_empty())
    })
    .await;
    apply(
        &a.url,
        &docs(&[base(), container_yaml("d", "n1", "ov", None)]),
    )
    .await;
    eventually("d's slice entry", 30, || async {
        has_entry(&etcd, "n1", "containers/d").await.then_some(())
    })
    .await;

    // The current leader shuts down: it resigns, and the other takes over at once.
    let (stopping, staying) = if second == "replica-a" {
        (a, b)
    } else {
        (b, a)
    };
    let started = Instant::now();
    stopping.stop().await;
    eventually("the remaining replica leads", 30, || async {
        leader(&etcd).await.filter(|(id, _)| *id != second)
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the successor waited for the lease to expire"
    );
    apply(
        &staying.url,
        &docs(&[
            base(),
            container_yaml("d", "n1", "ov", None),
            container_yaml("e", "n2", "ov", None),
        ]),
    )
    .await;
    eventually("e's slice entry", 30, || async {
        has_entry(&etcd, "n2", "containers/e").await.then_some(())
    })
    .await;
    staying.stop().await;
}

#[tokio::test]
async fn a_new_leader_rebuilds_ipam_from_the_specs() {
    init_tracing();
    let etcd = Etcd::start().await;
    // Objects written by an API-only replica: IPAM keys are committed with them.
    let mut config = topo_controller::test_config(&etcd.endpoints(), &etcd.pki_dir());
    config.lead = false;
    let api_only = topo_controller::serve_for_test_with(config)
        .await
        .expect("start the controller");
    apply(&api_only.url, &base()).await;
    api_only.stop().await;
    let a_key = keys::ipam_addr("ov", "10.2.0.2".parse().unwrap());
    let b_key = keys::ipam_addr("ov", "10.2.1.2".parse().unwrap());
    assert_eq!(etcd.count(&a_key).await, 1);

    // What a crash of some older, buggier writer might leave: a ghost holder, a block of a
    // node hosting nothing, keys of a network that no longer exists, and a missing claim.
    let mut c = etcd.client().await;
    let ghost = keys::ipam_addr("ov", "10.2.0.77".parse().unwrap());
    let stale_block = keys::ipam_block("ov", "10.2.9.0/24".parse().unwrap());
    let dead_net = keys::ipam_addr("gone", "10.9.0.2".parse().unwrap());
    c.put(ghost.as_str(), r#"{"holder":"ghost"}"#, None)
        .await
        .expect("put");
    c.put(stale_block.as_str(), r#"{"node":"n9"}"#, None)
        .await
        .expect("put");
    c.put(dead_net.as_str(), r#"{"holder":"a"}"#, None)
        .await
        .expect("put");
    c.delete(b_key.as_str(), None).await.expect("delete");
    let fence_before = c.get(keys::fence(), None).await.expect("fence").kvs()[0].mod_revision();

    let s = server(&etcd, "replica-a").await;
    eventually("the rebuild", 30, || async {
        (etcd.count(&ghost).await == 0
            && etcd.count(&stale_block).await == 0
            && etcd.count(&dead_net).await == 0
            && etcd.count(&b_key).await == 1)
            .then_some(())
    })
    .await;
    // a kept its address; b got its own back (lowest free in n2's block).
    let ipam = etcd.keys(&keys::ipam_prefix("ov")).await;
    assert!(
        ipam.contains(&(a_key.clone(), r#"{"holder":"a"}"#.to_string())),
        "{ipam:?}"
    );
    assert!(
        ipam.contains(&(b_key.clone(), r#"{"holder":"b"}"#.to_string())),
        "{ipam:?}"
    );
    assert_eq!(ipam.len(), 4, "two blocks and two addresses: {ipam:?}");
    // The rebuild went through the fence like any other write.
    let fence_after = c.get(keys::fence(), None).await.expect("fence").kvs()[0].mod_revision();
    assert!(fence_after > fence_before);
    let (id, _) = leader(&etcd).await.expect("a leader");
    assert_eq!(id, "replica-a");
    let events = c
        .get(
            keys::events_prefix(),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("events");
    assert!(events.count() > 0, "the leader records what it does");
    s.stop().await;
}
