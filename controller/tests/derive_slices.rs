//! The leader's derivation against a real etcd: slices written diff-only, derived mesh
//! tunnels, statuses folded from agent reports and heartbeats.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use etcd_client::{GetOptions, PutOptions};
use serde_json::Value;
use topo_schema::api::{Heartbeat, ObservedReport};
use topo_schema::keys;
use topo_schema::slice::{SliceEntry, SliceEnvelope};
use topo_schema::{Kind, ObjectRef};

async fn apply(url: &str, yaml: &str) -> Value {
    let resp = http()
        .post(format!("{url}{API}/apply"))
        .json(&apply_body(&[("test.yaml", yaml)], false))
        .send()
        .await
        .expect("apply request");
    let status = resp.status();
    let body: Value = resp.json().await.expect("apply response body");
    assert!(status.is_success(), "apply failed: {status} {body}");
    body
}

async fn get(url: &str, plural: &str, name: &str) -> Value {
    let resp = http()
        .get(format!("{url}{API}/{plural}/{name}"))
        .send()
        .await
        .expect("get");
    assert!(
        resp.status().is_success(),
        "get {plural}/{name}: {}",
        resp.status()
    );
    resp.json().await.expect("get body")
}

/// Slice key → (mod_revision, value).
async fn slices(etcd: &Etcd) -> BTreeMap<String, (i64, String)> {
    let mut c = etcd.client().await;
    let resp = c
        .get(keys::slices_prefix(), Some(GetOptions::new().with_prefix()))
        .await
        .expect("read slices");
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap_or_default().to_string(),
                (
                    kv.mod_revision(),
                    kv.value_str().unwrap_or_default().to_string(),
                ),
            )
        })
        .collect()
}

/// Polls until `check` holds, failing the test after `secs`.
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

fn three_nodes() -> String {
    docs(&[
        node_yaml("n1", "192.168.100.1"),
        node_yaml("n2", "192.168.100.2"),
        node_yaml("n3", "192.168.100.3"),
        network_yaml("ov", "10.2.0.0/16", 24),
        container_yaml("a", "n1", "ov", None),
        container_yaml("b", "n2", "ov", None),
        container_yaml("c", "n3", "ov", Some("10.2.9.9")),
    ])
}

/// node entry + bridge + 2 GRE ports + 1 container, on each of three nodes.
const THREE_NODE_ENTRIES: usize = 3 * 5;

#[tokio::test]
async fn unchanged_entries_are_not_rewritten() {
    init_tracing();
    let etcd = Etcd::start().await;
    let server = lib_server(&etcd).await;
    apply(&server.url, &three_nodes()).await;
    let before = eventually("every slice entry", 30, || async {
        let s = slices(&etcd).await;
        (s.len() == THREE_NODE_ENTRIES).then_some(s)
    })
    .await;
    // Let the leader settle (status writes trigger more passes, which must write nothing).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        slices(&etcd).await,
        before,
        "a pass with nothing new rewrote slice entries"
    );

    // An unrelated change: a second container on n1.
    apply(
        &server.url,
        &docs(&[three_nodes(), container_yaml("d", "n1", "ov", None)]),
    )
    .await;
    let after = eventually("the new container's entry", 30, || async {
        let s = slices(&etcd).await;
        s.contains_key(&keys::slice_entry("n1", "containers/d"))
            .then_some(s)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after_settled = slices(&etcd).await;
    assert_eq!(after, after_settled);
    for (key, (rev, value)) in &before {
        let (rev2, value2) = &after[key];
        assert_eq!(value, value2, "{key} changed");
        assert_eq!(
            rev, rev2,
            "{key} was rewritten (mod_revision {rev} -> {rev2})"
        );
    }
    assert_eq!(after.len(), before.len() + 1);
    server.stop().await;
}

#[tokio::test]
async fn mesh_tunnels_slices_and_statuses() {
    init_tracing();
    let etcd = Etcd::start().await;
    let server = lib_server(&etcd).await;
    apply(&server.url, &three_nodes()).await;
    let s = eventually("every slice entry", 30, || async {
        let s = slices(&etcd).await;
        (s.len() == THREE_NODE_ENTRIES).then_some(s)
    })
    .await;
    let entry = |node: &str, key: &str| -> SliceEntry {
        let (_, v) = &s[&keys::slice_entry(node, key)];
        serde_json::from_str::<SliceEnvelope>(v)
            .expect("slice entry decodes")
            .entry
    };
    let SliceEntry::Container(c) = entry("n3", "containers/c") else {
        panic!("not a container entry")
    };
    assert_eq!(c.attachments[0].address.to_string(), "10.2.9.9/16");
    let SliceEntry::Bridge(b) = entry("n2", "bridges/ov") else {
        panic!("not a bridge entry")
    };
    assert_eq!(b.gateway.addr(), topo_schema::net::gateway_of(b.block));

    // Derived tunnels are objects, labelled.
    let tunnels = eventually("three derived tunnels", 30, || async {
        let resp = http()
            .get(format!(
                "{}{API}/tunnels?labelSelector=topo.dev/derived-from%3Dnetwork.ov",
                server.url
            ))
            .send()
            .await
            .ok()?;
        let v: Value = resp.json().await.ok()?;
        let items = v["items"].as_array()?.clone();
        (items.len() == 3).then_some(items)
    })
    .await;
    let names: Vec<&str> = tunnels
        .iter()
        .filter_map(|t| t["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["ov-n1-n2", "ov-n1-n3", "ov-n2-n3"]);

    // Statuses: network, container, node without an agent.
    let net = eventually("network status", 30, || async {
        let n = get(&server.url, "networks", "ov").await;
        (n["status"]["greKey"].as_u64().is_some() && n["status"]["allocated"] == 3).then_some(n)
    })
    .await;
    assert_eq!(net["status"]["greKey"], 1);
    assert_eq!(net["status"]["mtu"], 1458);
    assert_eq!(net["status"]["blocks"]["n1"], "10.2.0.0/24");
    let a = eventually("container status", 30, || async {
        let c = get(&server.url, "containers", "a").await;
        c["status"]["addresses"]["ov"].is_string().then_some(c)
    })
    .await;
    assert_eq!(a["status"]["addresses"]["ov"], "10.2.0.2");
    assert_eq!(a["status"]["node"], "n1");
    assert_eq!(ready(&a)["reason"], "Pending");
    let n1 = get(&server.url, "nodes", "n1").await;
    assert_eq!(ready(&n1)["status"], "Unknown");
    assert_eq!(ready(&n1)["reason"], "NodeLost");
    assert_eq!(n1["status"]["blocks"]["ov"], "10.2.0.0/24");

    // An agent appears on n1 and reports container a running.
    let mut kv = etcd.client().await;
    let lease = kv.lease_grant(30, None).await.expect("lease").id();
    let hb = Heartbeat {
        node: "n1".into(),
        agent_version: "0.1.0".into(),
        started: chrono::Utc::now(),
        endpoint: None,
    };
    kv.put(
        keys::heartbeat("n1"),
        serde_json::to_string(&hb).unwrap(),
        Some(PutOptions::new().with_lease(lease)),
    )
    .await
    .expect("heartbeat");
    let report = ObservedReport {
        uid: None,
        object: ObjectRef::new(Kind::Container, "a"),
        observed_generation: 1,
        ready: true,
        reason: "Running".into(),
        message: "running, plumbed".into(),
        container_id: Some("abc123".into()),
        restart_count: 2,
        endpoint: None,
        time: chrono::Utc::now(),
    };
    kv.put(
        keys::report("n1", Kind::Container, "a"),
        serde_json::to_string(&report).unwrap(),
        None,
    )
    .await
    .expect("report");
    let a = eventually("container a Ready", 30, || async {
        let c = get(&server.url, "containers", "a").await;
        (ready(&c)["status"] == "True").then_some(c)
    })
    .await;
    assert_eq!(a["status"]["containerID"], "abc123");
    assert_eq!(a["status"]["restartCount"], 2);
    assert_eq!(a["status"]["observedGeneration"], 1);
    assert_eq!(ready(&a)["reason"], "Running");
    let n1 = eventually("node n1 Ready", 30, || async {
        let n = get(&server.url, "nodes", "n1").await;
        (ready(&n)["status"] == "True").then_some(n)
    })
    .await;
    assert_eq!(n1["status"]["agentVersion"], "0.1.0");
    let since = ready(&n1)["lastTransitionTime"].clone();

    // The lease lapses: the node is lost, and its container with it.
    kv.lease_revoke(lease).await.expect("revoke");
    let n1 = eventually("node n1 lost", 30, || async {
        let n = get(&server.url, "nodes", "n1").await;
        (ready(&n)["status"] == "Unknown").then_some(n)
    })
    .await;
    assert_ne!(ready(&n1)["lastTransitionTime"], since);
    let a = get(&server.url, "containers", "a").await;
    assert_eq!(ready(&a)["reason"], "NodeLost");
    server.stop().await;
}

#[tokio::test]
async fn links_follow_their_target_and_report_not_found() {
    init_tracing();
    let etcd = Etcd::start().await;
    let server = lib_server(&etcd).await;
    let link = |target: &str| {
        format!(
            "apiVersion: topo.dev/v1alpha1\nkind: Link\nmetadata:\n  name: app-db\nspec:\n  from: a\n  to:\n    container: {target}\n    port: 6379\n  alias: db\n"
        )
    };
    apply(&server.url, &docs(&[three_nodes(), link("ghost")])).await;
    let l = eventually("link status", 30, || async {
        let l = get(&server.url, "links", "app-db").await;
        (ready(&l)["reason"] == "TargetNotFound").then_some(l)
    })
    .await;
    assert!(l["status"]["endpoint"].is_null());
    let rules = |s: &BTreeMap<String, (i64, String)>| -> Option<(Value, Value)> {
        let (_, v) = s.get(&keys::slice_entry("n1", "containers/a"))?;
        let v: Value = serde_json::from_str(v).ok()?;
        Some((v["entry"]["links"][0].clone(), v["entry"]["env"].clone()))
    };
    let (rule, env) = rules(&slices(&etcd).await).expect("consumer entry");
    assert_eq!(rule["reason"], "TargetNotFound");
    assert_eq!(env["DB_PORT"], "tcp://127.0.0.1:6379");

    // Point it at c (static 10.2.9.9): the rule follows, the environment stays.
    apply(&server.url, &docs(&[three_nodes(), link("c")])).await;
    let (rule, env2) = eventually("rewired rule", 30, || async {
        let r = rules(&slices(&etcd).await)?;
        (r.0["target"] == "10.2.9.9:6379").then_some(r)
    })
    .await;
    assert!(rule.get("reason").is_none());
    assert_eq!(env, env2);
    let l = eventually("link endpoint", 30, || async {
        let l = get(&server.url, "links", "app-db").await;
        (l["status"]["endpoint"] == "10.2.9.9:6379").then_some(l)
    })
    .await;
    // c has no agent yet: the link waits for its target.
    assert_eq!(ready(&l)["reason"], "TargetNotReady");
    server.stop().await;
}

fn ready(obj: &Value) -> Value {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready").cloned())
        .unwrap_or(Value::Null)
}

async fn lib_server(etcd: &Etcd) -> topo_controller::TestServer {
    topo_controller::serve_for_test(&etcd.endpoints(), &etcd.pki_dir())
        .await
        .expect("start the controller")
}

/// Slice entries rewritten with the names the old derivation gives (as a controller before
/// allocation wrote them).
async fn write_old_names(etcd: &Etcd) {
    use topo_schema::names::{bridge_name, gre_port_name, veth_host_name};
    let mut kv = etcd.client().await;
    for (key, (_, value)) in slices(etcd).await {
        let mut env: SliceEnvelope = serde_json::from_str(&value).expect("slice entry decodes");
        match &mut env.entry {
            SliceEntry::Bridge(b) => b.bridge = bridge_name(&b.network),
            SliceEntry::Tunnel(t) => {
                t.bridge = bridge_name(&t.network);
                let peer = t.peer.clone().unwrap_or_else(|| t.remote_ip.to_string());
                t.port = gre_port_name(&t.network, &peer);
            }
            SliceEntry::Container(c) => {
                for a in &mut c.attachments {
                    a.bridge = bridge_name(&a.network);
                    a.host_veth = veth_host_name(&c.name, &a.interface);
                }
            }
            SliceEntry::Node(_) => {}
        }
        kv.put(key, serde_json::to_string(&env).unwrap(), None)
            .await
            .expect("rewrite a slice entry");
    }
}

/// An upgrade from a controller that derived names: the two networks were both given
/// `tb-abcdef3a4dcf` on n1. The new leader keeps every name that did not clash (those
/// entries are not even rewritten), gives the hashed network a bridge of its own, and moves
/// its container's attachment with it; a further leader change rewrites nothing.
#[tokio::test]
async fn an_upgrade_keeps_names_and_resolves_the_clash() {
    init_tracing();
    let etcd = Etcd::start().await;
    let server = lib_server(&etcd).await;
    let manifest = docs(&[
        node_yaml("n1", "192.168.100.1"),
        network_yaml("abcdefghijklm", "10.51.0.0/16", 24),
        network_yaml("abcdef3a4dcf", "10.52.0.0/16", 24),
        container_yaml("a", "n1", "abcdefghijklm", None),
        container_yaml("b", "n1", "abcdef3a4dcf", None),
    ]);
    apply(&server.url, &manifest).await;
    eventually("every slice entry", 30, || async {
        (slices(&etcd).await.len() == 5).then_some(())
    })
    .await;
    server.stop().await;
    write_old_names(&etcd).await;
    let old = slices(&etcd).await;
    let bridge_of = |s: &BTreeMap<String, (i64, String)>, net: &str| -> String {
        let (_, v) = &s[&keys::slice_entry("n1", format!("bridges/{net}"))];
        match serde_json::from_str::<SliceEnvelope>(v).unwrap().entry {
            SliceEntry::Bridge(b) => b.bridge,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(bridge_of(&old, "abcdefghijklm"), "tb-abcdef3a4dcf");
    assert_eq!(bridge_of(&old, "abcdef3a4dcf"), "tb-abcdef3a4dcf");

    let server = lib_server(&etcd).await;
    let new = eventually("the hashed network's own bridge", 30, || async {
        let s = slices(&etcd).await;
        (bridge_of(&s, "abcdefghijklm") != "tb-abcdef3a4dcf").then_some(s)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let new = {
        let settled = slices(&etcd).await;
        assert_eq!(new.len(), settled.len());
        settled
    };
    let moved = bridge_of(&new, "abcdefghijklm");
    assert!(
        moved.starts_with("tb-abcdef") && moved.len() <= 15,
        "{moved}"
    );
    assert_eq!(bridge_of(&new, "abcdef3a4dcf"), "tb-abcdef3a4dcf");
    let (_, a) = &new[&keys::slice_entry("n1", "containers/a")];
    let SliceEntry::Container(a) = serde_json::from_str::<SliceEnvelope>(a).unwrap().entry else {
        panic!("not a container entry")
    };
    assert_eq!(
        a.attachments[0].bridge, moved,
        "a's veth follows its bridge"
    );
    assert_eq!(
        a.attachments[0].host_veth,
        topo_schema::names::veth_host_name("a", "eth0"),
        "a's veth keeps its name"
    );
    for entry in ["node", "bridges/abcdef3a4dcf", "containers/b"] {
        let key = keys::slice_entry("n1", entry);
        assert_eq!(old[&key], new[&key], "{entry} was rewritten");
    }
    server.stop().await;

    let server = lib_server(&etcd).await;
    // The next leader has made a pass once a new network has its status.
    apply(
        &server.url,
        &docs(&[manifest, network_yaml("later", "10.53.0.0/16", 24)]),
    )
    .await;
    eventually("a pass of the next leader", 30, || async {
        let n = get(&server.url, "networks", "later").await;
        n["status"]["greKey"].as_u64()
    })
    .await;
    assert_eq!(slices(&etcd).await, new, "a leader change rewrote slices");
    server.stop().await;
}
