//! The API's trust boundary against a real etcd (TLS, auth on): HTTPS only, authentication
//! by client certificate or bearer token, roles, audit, limits (watches per user, quotas,
//! pages), 503 when etcd does not answer, and agent registrations folded into Nodes.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use topo_controller::TestServer;
use topo_schema::api::Registration;
use topo_schema::{Kind, keys};

async fn server_with(etcd: &Etcd, adjust: impl FnOnce(&mut topo_controller::Config)) -> TestServer {
    init_tracing();
    let mut config = topo_controller::test_config(&etcd.endpoints(), &etcd.pki_dir());
    config.lead = false;
    adjust(&mut config);
    topo_controller::serve_for_test_with(config)
        .await
        .expect("start the controller")
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn node(name: &str, addr: &str) -> Value {
    json!({"apiVersion": "topo.dev/v1alpha1", "kind": "Node", "metadata": {"name": name}, "spec": {"address": addr}})
}

fn token_of_ci_viewer(etcd: &Etcd) -> String {
    let text = std::fs::read_to_string(topo_pki::layout::tokens(&etcd.pki_dir())).unwrap();
    let line = text.lines().find(|l| !l.starts_with('#')).unwrap();
    line.split(',').next().unwrap().to_string()
}

#[tokio::test]
async fn every_request_is_authenticated_and_authorized() {
    let etcd = Etcd::start().await;
    let s = server_with(&etcd, |_| {}).await;
    let nodes = format!("{}{API}/nodes", s.url);

    // No credentials: 401 with an ApiError; health stays open.
    let (st, e) = send(http_anonymous().get(&nodes)).await;
    assert_eq!(st, 401, "{e}");
    assert_eq!(e["reason"], "Unauthorized");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("client certificate"),
        "{e}"
    );
    let (st, _) = send(http_anonymous().get(format!("{}/healthz", s.url))).await;
    assert_eq!(st, 200);

    // A wrong token: 401; the token file's token: its user's role (view).
    let (st, e) = send(
        http_anonymous()
            .get(&nodes)
            .bearer_auth("not-a-valid-token-at-all"),
    )
    .await;
    assert_eq!(st, 401, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("invalid bearer token"),
        "{e}"
    );
    let token = token_of_ci_viewer(&etcd);
    let (st, _) = send(http_anonymous().get(&nodes).bearer_auth(&token)).await;
    assert_eq!(st, 200);
    let (st, e) = send(
        http_anonymous()
            .post(&nodes)
            .bearer_auth(&token)
            .json(&node("n1", "192.168.100.1")),
    )
    .await;
    assert_eq!(st, 403, "{e}");
    assert_eq!(
        e["message"],
        "user \"ci-viewer\" cannot create nodes: role view allows get, list, watch"
    );

    // The viewer certificate reads, and is refused writes naming user, verb, object.
    let (st, _) = send(http().post(&nodes).json(&node("node1", "192.168.100.1"))).await;
    assert_eq!(st, 201);
    let viewer = http_as("viewer");
    let (st, _) = send(viewer.get(format!("{nodes}/node1"))).await;
    assert_eq!(st, 200);
    let (st, e) = send(viewer.delete(format!("{nodes}/node1"))).await;
    assert_eq!(st, 403, "{e}");
    assert_eq!(
        e["message"],
        "user \"viewer\" cannot delete node/node1: role view allows get, list, watch"
    );

    // A node identity sees only its own Node.
    let n1 = http_as("node1");
    let (st, _) = send(n1.get(format!("{nodes}/node1"))).await;
    assert_eq!(st, 200);
    let (st, e) = send(n1.get(format!("{nodes}/node2"))).await;
    assert_eq!(st, 403, "{e}");
    let (st, _) = send(n1.get(&nodes)).await;
    assert_eq!(st, 403);
    let (st, _) = send(n1.get(format!("{}{API}/events?object=node/node1", s.url))).await;
    assert_eq!(st, 200);
    let (st, _) = send(n1.get(format!("{}{API}/containers", s.url))).await;
    assert_eq!(st, 403);
}

#[tokio::test]
async fn https_only_and_foreign_certificates_are_refused() {
    let etcd = Etcd::start().await;
    let s = server_with(&etcd, |_| {}).await;
    // Plain HTTP on the port: one plain 400 saying so.
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("HTTPS only"), "{answer}");

    // A client certificate of another CA: the handshake is refused, nothing is served.
    let other = tempfile::tempdir().unwrap();
    topo_pki::init::init(&topo_pki::init::InitOptions {
        dir: other.path().to_path_buf(),
        cluster: "other".into(),
        controller_sans: vec!["127.0.0.1".into()],
        etcd_sans: vec![],
        nodes: vec![],
        server: s.url.clone(),
        etcd_endpoints: vec![],
        days: 30,
        force: false,
    })
    .unwrap();
    let foreign = topo_pki::layout::admin(other.path());
    let tls = topo_pki::tls::client_config(
        &topo_pki::layout::ca(&etcd.pki_dir()).cert,
        Some((&foreign.cert, &foreign.key)),
    )
    .unwrap();
    let c = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let r = c.get(format!("{}{API}/nodes", s.url)).send().await;
    assert!(
        r.is_err(),
        "a foreign certificate must not be served: {r:?}"
    );
}

#[tokio::test]
async fn writes_are_audited() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let a = audit.clone();
    let s = server_with(&etcd, move |c| c.security.audit_file = Some(a)).await;
    let nodes = format!("{}{API}/nodes", s.url);
    let (st, _) = send(http().post(&nodes).json(&node("n1", "192.168.100.1"))).await;
    assert_eq!(st, 201);
    let (st, _) = send(http_as("viewer").delete(format!("{nodes}/n1"))).await;
    assert_eq!(st, 403);
    let (st, _) = send(http().get(&nodes)).await;
    assert_eq!(st, 200);
    let lines: Vec<Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        2,
        "one line per write, reads are not audited: {lines:?}"
    );
    assert_eq!(
        (
            &lines[0]["user"],
            &lines[0]["verb"],
            &lines[0]["object"],
            &lines[0]["result"]
        ),
        (
            &json!("admin"),
            &json!("create"),
            &json!("nodes"),
            &json!(201)
        )
    );
    assert_eq!(
        (
            &lines[1]["user"],
            &lines[1]["verb"],
            &lines[1]["object"],
            &lines[1]["result"]
        ),
        (
            &json!("viewer"),
            &json!("delete"),
            &json!("node/n1"),
            &json!(403)
        )
    );
}

#[tokio::test]
async fn watches_per_user_and_quotas_are_limited() {
    let etcd = Etcd::start().await;
    let s = server_with(&etcd, |c| {
        c.security.limits.watches_per_user = 2;
        c.security.quotas.insert(Kind::Container, 2);
    })
    .await;
    let watch = format!("{}{API}/nodes?watch=true", s.url);
    let c = http();
    let w1 = c.get(&watch).send().await.unwrap();
    let w2 = c.get(&watch).send().await.unwrap();
    assert_eq!((w1.status().as_u16(), w2.status().as_u16()), (200, 200));
    let (st, e) = send(c.get(&watch)).await;
    assert_eq!(st, 429, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("already holds 2 watches"),
        "{e}"
    );
    // Another user has its own budget; a closed watch frees its slot.
    let (st, _) = (
        http_as("viewer")
            .get(&watch)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        (),
    );
    assert_eq!(st, 200);
    drop(w1);
    let mut freed = false;
    for _ in 0..50 {
        let r = c.get(&watch).send().await.unwrap();
        if r.status().as_u16() == 200 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "closing a watch frees its slot");
    drop(w2);

    // A third container is over the quota: refused whole, nothing stored.
    let file = docs(&[
        node_yaml("node1", "192.168.100.1"),
        network_yaml("ov", "10.9.0.0/16", 24),
        container_yaml("a", "node1", "ov", None),
        container_yaml("b", "node1", "ov", None),
        container_yaml("c", "node1", "ov", None),
    ]);
    let (st, e) = send(
        c.post(format!("{}{API}/apply", s.url))
            .json(&apply_body(&[("a.yaml", &file)], false)),
    )
    .await;
    assert_eq!(st, 403, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("quota exceeded: 3 containers would exist, the quota is 2"),
        "{e}"
    );
    assert_eq!(etcd.count(&keys::all_objects_prefix()).await, 0);
}

#[tokio::test]
async fn lists_come_in_consistent_pages() {
    let etcd = Etcd::start().await;
    let s = server_with(&etcd, |_| {}).await;
    let c = http();
    let nodes = format!("{}{API}/nodes", s.url);
    for i in 1..=7 {
        let (st, _) = send(
            c.post(&nodes)
                .json(&node(&format!("n{i}"), &format!("192.168.100.{i}"))),
        )
        .await;
        assert_eq!(st, 201);
    }
    let (st, p1) = send(c.get(format!("{nodes}?limit=3"))).await;
    assert_eq!(st, 200, "{p1}");
    assert_eq!(p1["items"].as_array().unwrap().len(), 3);
    let rv = p1["metadata"]["resourceVersion"].clone();
    let token = p1["metadata"]["continue"].as_str().unwrap().to_string();
    // A write between pages does not show in the later pages of this list.
    let (st, _) = send(c.post(&nodes).json(&node("n0", "192.168.100.20"))).await;
    assert_eq!(st, 201);
    let mut names: Vec<String> = p1["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let mut token = Some(token);
    while let Some(t) = token {
        let (st, p) = send(c.get(format!("{nodes}?limit=3&continue={t}"))).await;
        assert_eq!(st, 200, "{p}");
        assert_eq!(p["metadata"]["resourceVersion"], rv);
        names.extend(
            p["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["metadata"]["name"].as_str().unwrap().to_string()),
        );
        token = p["metadata"]["continue"].as_str().map(str::to_string);
    }
    assert_eq!(names, ["n1", "n2", "n3", "n4", "n5", "n6", "n7"]);
    let (st, e) = send(c.get(format!("{nodes}?continue=bogus"))).await;
    assert_eq!(st, 400, "{e}");
    // Events page too.
    let (st, ev) = send(c.get(format!("{}{API}/events?limit=1", s.url))).await;
    assert_eq!(st, 200, "{ev}");
    assert!(ev["items"].as_array().unwrap().len() <= 1);
}

#[tokio::test]
async fn etcd_that_does_not_answer_is_a_503() {
    let etcd = Etcd::start().await;
    let proxy = Proxy::start(&etcd.endpoint()).await;
    let p = proxy.endpoint.clone();
    let s = server_with(&etcd, move |c| c.etcd_endpoints = vec![p]).await;
    proxy.cut();
    let (st, e) = send(
        http()
            .post(format!("{}{API}/nodes", s.url))
            .json(&node("n1", "192.168.100.1")),
    )
    .await;
    assert_eq!(st, 503, "{e}");
    let m = e["message"].as_str().unwrap();
    assert!(m.starts_with("etcd unavailable: "), "{m}");
    assert!(
        !m.contains("MetadataMap") && m.len() < 300,
        "no transport dump: {m}"
    );
}

#[tokio::test]
async fn registrations_become_nodes() {
    let etcd = Etcd::start().await;
    let s = topo_controller::serve_for_test(&etcd.endpoints(), &etcd.pki_dir())
        .await
        .unwrap();
    let mut agent = topo_pki::etcd::connect(
        &etcd.endpoints(),
        &topo_pki::etcd::EtcdTls::from_pair(
            &etcd.pki_dir(),
            &topo_pki::layout::node(&etcd.pki_dir(), "node1"),
        ),
    )
    .await
    .unwrap();
    let reg = |addr: &str| Registration {
        node: "node1".into(),
        address: addr.parse().unwrap(),
        datapath: topo_schema::Datapath::Netdev,
        agent_version: "test".into(),
        time: chrono::Utc::now(),
    };
    agent
        .put(
            keys::registration("node1"),
            serde_json::to_vec(&reg("192.168.100.1")).unwrap(),
            None,
        )
        .await
        .unwrap();
    let c = http();
    let url = format!("{}{API}/nodes/node1", s.url);
    let mut got = Value::Null;
    for _ in 0..100 {
        let (st, v) = send(c.get(&url)).await;
        if st == 200 {
            got = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got["spec"]["address"], "192.168.100.1", "{got}");
    assert_eq!(got["spec"]["datapath"], "netdev");
    for _ in 0..100 {
        if etcd.count(&keys::registration("node1")).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        etcd.count(&keys::registration("node1")).await,
        0,
        "folded once"
    );

    // A later registration that disagrees leaves the Node and says so.
    agent
        .put(
            keys::registration("node1"),
            serde_json::to_vec(&reg("192.168.100.9")).unwrap(),
            None,
        )
        .await
        .unwrap();
    let mut said = false;
    for _ in 0..100 {
        let (_, ev) = send(c.get(format!("{}{API}/events?object=node/node1", s.url))).await;
        if ev["items"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["reason"] == "RegistrationDiffers"))
        {
            said = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(said, "a RegistrationDiffers event");
    let (_, v) = send(c.get(&url)).await;
    assert_eq!(v["spec"]["address"], "192.168.100.1");
}
