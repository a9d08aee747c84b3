//! The HTTP API against a real etcd: CRUD, optimistic concurrency, apply, dry run, bad input,
//! label selectors, watch, events.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use topo_controller::TestServer;
use topo_schema::api::{Event, EventType};
use topo_schema::{Kind, ObjectRef, keys};

async fn server(etcd: &Etcd) -> TestServer {
    init_tracing();
    let mut config = topo_controller::test_config(&etcd.endpoints(), &etcd.pki_dir());
    config.lead = false;
    topo_controller::serve_for_test_with(config)
        .await
        .expect("start the controller")
}

fn node_json(name: &str, addr: &str) -> Value {
    json!({"apiVersion": "topo.dev/v1alpha1", "kind": "Node", "metadata": {"name": name}, "spec": {"address": addr}})
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

#[tokio::test]
async fn crud_generation_and_optimistic_concurrency() {
    let etcd = Etcd::start().await;
    let s = server(&etcd).await;
    let c = http();
    let nodes = format!("{}{API}/nodes", s.url);

    let (st, created) = send(c.post(&nodes).json(&node_json("n1", "192.168.100.1"))).await;
    assert_eq!(st, 201, "{created}");
    let rv1 = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(created["metadata"]["generation"], 1);
    let uid = created["metadata"]["uid"].as_str().unwrap().to_string();
    assert!(created["metadata"]["creationTimestamp"].is_string());

    let (st, e) = send(c.post(&nodes).json(&node_json("n1", "192.168.100.1"))).await;
    assert_eq!(
        (st, e["reason"].as_str()),
        (409, Some("AlreadyExists")),
        "{e}"
    );

    let (st, got) = send(c.get(format!("{nodes}/n1"))).await;
    assert_eq!(st, 200);
    assert_eq!(
        got["metadata"]["resourceVersion"].as_str(),
        Some(rv1.as_str())
    );

    // A spec change bumps generation and resourceVersion; uid and creation stay.
    let mut upd = node_json("n1", "192.168.100.9");
    upd["metadata"]["resourceVersion"] = json!(rv1);
    let (st, replaced) = send(c.put(format!("{nodes}/n1")).json(&upd)).await;
    assert_eq!(st, 200, "{replaced}");
    assert_eq!(replaced["metadata"]["generation"], 2);
    assert_eq!(replaced["metadata"]["uid"].as_str(), Some(uid.as_str()));
    assert_ne!(
        replaced["metadata"]["resourceVersion"].as_str(),
        Some(rv1.as_str())
    );
    assert_eq!(
        replaced["metadata"]["creationTimestamp"],
        created["metadata"]["creationTimestamp"]
    );

    // The old resourceVersion is now stale: conflict, nothing written.
    let (st, e) = send(c.put(format!("{nodes}/n1")).json(&upd)).await;
    assert_eq!((st, e["reason"].as_str()), (409, Some("Conflict")), "{e}");
    assert!(e["message"].as_str().unwrap().contains("stale"), "{e}");

    // Labels only: configured, generation unchanged.
    let mut labelled = node_json("n1", "192.168.100.9");
    labelled["metadata"]["labels"] = json!({"zone": "a"});
    let (st, l) = send(c.put(format!("{nodes}/n1")).json(&labelled)).await;
    assert_eq!(st, 200, "{l}");
    assert_eq!(l["metadata"]["generation"], 2);

    let (st, _) = send(
        c.put(format!("{nodes}/n2"))
            .json(&node_json("n2", "192.168.100.2")),
    )
    .await;
    assert_eq!(st, 404);
    let (st, e) = send(
        c.put(format!("{nodes}/n1"))
            .json(&node_json("n3", "192.168.100.2")),
    )
    .await;
    assert_eq!(st, 400, "{e}");

    // Delete with a stale precondition fails; without, succeeds; then 404.
    let (st, _) = send(c.delete(format!("{nodes}/n1?resourceVersion={rv1}"))).await;
    assert_eq!(st, 409);
    let (st, d) = send(c.delete(format!("{nodes}/n1"))).await;
    assert_eq!(st, 200, "{d}");
    assert_eq!(d["metadata"]["name"], "n1");
    let (st, e) = send(c.get(format!("{nodes}/n1"))).await;
    assert_eq!((st, e["reason"].as_str()), (404, Some("NotFound")));
    let (st, _) = send(c.delete(format!("{nodes}/n1"))).await;
    assert_eq!(st, 404);
    assert_eq!(etcd.count(&keys::all_objects_prefix()).await, 0);
    s.stop().await;
}

#[tokio::test]
async fn apply_reports_created_configured_unchanged_and_is_all_or_nothing() {
    let etcd = Etcd::start().await;
    let s = server(&etcd).await;
    let c = http();
    let apply = format!("{}{API}/apply", s.url);
    let file = docs(&[
        node_yaml("n1", "192.168.100.1"),
        node_yaml("n2", "192.168.100.2"),
        network_yaml("overlay", "10.2.0.0/16", 24),
        container_yaml("web", "n1", "overlay", Some("10.2.4.10")),
        container_yaml("app", "n2", "overlay", None),
    ]);
    let (st, r) = send(
        c.post(&apply)
            .json(&apply_body(&[("a.yaml", &file)], false)),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    let actions: Vec<&str> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, vec!["created"; 5]);
    let web_uid = r["results"][3]["result"]["metadata"]["uid"].clone();
    // Addresses were claimed in the same change.
    let addrs = etcd.keys(&keys::ipam_addrs_prefix("overlay")).await;
    assert!(
        addrs
            .iter()
            .any(|(k, v)| k.ends_with("/10.2.4.10") && v.contains("web")),
        "{addrs:?}"
    );
    assert_eq!(addrs.len(), 2, "{addrs:?}");

    // Same file again: unchanged, nothing written.
    let before = etcd
        .client()
        .await
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let (st, r) = send(
        c.post(&apply)
            .json(&apply_body(&[("a.yaml", &file)], false)),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert!(
        r["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["action"] == "unchanged"),
        "{r}"
    );
    let after = etcd
        .client()
        .await
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    assert_eq!(before, after, "an unchanged apply must not write");

    // Change one container's image: configured, generation 2, uid kept.
    let file2 = file.replacen("image: topo/busybox:latest", "image: topo/busybox:v2", 1);
    let (st, r) = send(
        c.post(&apply)
            .json(&apply_body(&[("a.yaml", &file2)], false)),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    let changed: Vec<_> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["action"] == "configured")
        .collect();
    assert_eq!(changed.len(), 1, "{r}");
    assert_eq!(changed[0]["object"]["name"], "web");
    assert_eq!(changed[0]["result"]["metadata"]["generation"], 2);
    assert_eq!(changed[0]["result"]["metadata"]["uid"], web_uid);

    // A file with one bad document changes nothing at all.
    let objects_before = etcd.keys(&keys::all_objects_prefix()).await;
    let bad = docs(&[
        node_yaml("n3", "192.168.100.3"),
        container_yaml("db", "n1", "overlay", Some("10.3.0.5")),
    ]);
    let (st, e) = send(
        c.post(&apply)
            .json(&apply_body(&[("bad.yaml", &bad)], false)),
    )
    .await;
    assert_eq!((st, e["reason"].as_str()), (422, Some("Invalid")), "{e}");
    let cause = &e["causes"][0];
    assert_eq!(cause["file"], "bad.yaml", "{e}");
    assert!(cause["line"].as_u64().unwrap() > 6, "{e}");
    assert!(e.to_string().contains("10.3.0.5"), "{e}");
    assert_eq!(etcd.keys(&keys::all_objects_prefix()).await, objects_before);

    // A static address already held: refused, naming the holder.
    let dup = container_yaml("db", "n2", "overlay", Some("10.2.4.10"));
    let (st, e) = send(
        c.post(&apply)
            .json(&apply_body(&[("dup.yaml", &dup)], false)),
    )
    .await;
    assert_eq!(st, 422, "{e}");
    assert!(e.to_string().contains("web"), "{e}");

    // Unparseable YAML: 422 with a location, nothing written.
    let (st, e) = send(
        c.post(&apply)
            .json(&apply_body(&[("y.yaml", "kind: [unclosed\n")], false)),
    )
    .await;
    assert_eq!(st, 422, "{e}");
    assert_eq!(e["causes"][0]["file"], "y.yaml");

    // The same object twice in one apply is refused.
    let twice = docs(&[
        node_yaml("n9", "192.168.100.9"),
        node_yaml("n9", "192.168.100.8"),
    ]);
    let (st, e) = send(
        c.post(&apply)
            .json(&apply_body(&[("t.yaml", &twice)], false)),
    )
    .await;
    assert_eq!(st, 422, "{e}");
    assert_eq!(etcd.keys(&keys::all_objects_prefix()).await, objects_before);

    // Deleting a network in use: refused, listing the users.
    let (st, e) = send(c.delete(format!("{}{API}/networks/overlay", s.url))).await;
    assert_eq!(st, 422, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("web") && msg.contains("app"), "{msg}");

    // Deleting a container releases its address in the same change.
    let (st, _) = send(c.delete(format!("{}{API}/containers/web", s.url))).await;
    assert_eq!(st, 200);
    let addrs = etcd.keys(&keys::ipam_addrs_prefix("overlay")).await;
    assert!(
        !addrs.iter().any(|(_, v)| v.contains("\"web\"")),
        "{addrs:?}"
    );
    s.stop().await;
}

#[tokio::test]
async fn dry_run_writes_nothing() {
    let etcd = Etcd::start().await;
    let s = server(&etcd).await;
    let c = http();
    let file = docs(&[
        node_yaml("n1", "192.168.100.1"),
        network_yaml("ov", "10.9.0.0/16", 24),
    ]);
    let root = etcd.client().await;
    let rev = |_: &Etcd| {
        let mut cl = root.clone();
        async move {
            cl.get("x", None)
                .await
                .unwrap()
                .header()
                .unwrap()
                .revision()
        }
    };
    let before = rev(&etcd).await;
    let (st, r) = send(
        c.post(format!("{}{API}/apply", s.url))
            .json(&apply_body(&[("a.yaml", &file)], true)),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["dryRun"], true);
    assert_eq!(r["results"][0]["action"], "created");
    let (st, r) = send(
        c.post(format!("{}{API}/apply?dryRun=All", s.url))
            .json(&apply_body(&[("a.yaml", &file)], false)),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    let (st, r) = send(
        c.post(format!("{}{API}/nodes?dryRun=All", s.url))
            .json(&node_json("n5", "192.168.1.5")),
    )
    .await;
    assert_eq!(st, 201, "{r}");
    assert_eq!(r["metadata"]["name"], "n5");
    // An invalid dry run is still refused.
    let bad = container_yaml("x", "n1", "nope", None);
    let (st, _) = send(
        c.post(format!("{}{API}/apply", s.url))
            .json(&apply_body(&[("b.yaml", &bad)], true)),
    )
    .await;
    assert_eq!(st, 422);
    assert_eq!(rev(&etcd).await, before, "a dry run must not write");
    assert_eq!(etcd.count(keys::ROOT).await, 0);
    s.stop().await;
}

#[tokio::test]
async fn label_selectors_and_lists() {
    let etcd = Etcd::start().await;
    let s = server(&etcd).await;
    let c = http();
    for (n, zone) in [("a1", "a"), ("a2", "a"), ("b1", "b")] {
        let mut o = node_json(n, "192.168.0.1");
        o["metadata"]["labels"] = json!({"zone": zone});
        let (st, r) = send(c.post(format!("{}{API}/nodes", s.url)).json(&o)).await;
        assert_eq!(st, 201, "{r}");
    }
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (st, l) = send(c.get(format!("{}{API}/nodes?labelSelector=zone%3Da", s.url))).await;
    assert_eq!(st, 200);
    assert_eq!(l["kind"], "List");
    assert_eq!(l["apiVersion"], "topo.dev/v1alpha1");
    assert_eq!(names(&l), vec!["a1", "a2"]);
    let (_, l) = send(c.get(format!("{}{API}/nodes?labelSelector=zone!%3Da", s.url))).await;
    assert_eq!(names(&l), vec!["b1"]);
    let (_, l) = send(c.get(format!("{}{API}/no", s.url))).await;
    assert_eq!(names(&l).len(), 3);
    assert!(
        l["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            > 0
    );
    let (st, _) = send(c.get(format!("{}{API}/networks", s.url))).await;
    assert_eq!(st, 200);
    let (st, e) = send(c.get(format!("{}{API}/nodes?labelSelector=%3Dx", s.url))).await;
    assert_eq!(st, 400, "{e}");
    let (st, e) = send(c.get(format!("{}{API}/widgets", s.url))).await;
    assert_eq!((st, e["reason"].as_str()), (404, Some("NotFound")));
    s.stop().await;
}

#[tokio::test]
async fn bad_input_never_hurts_the_server() {
    let etcd = Etcd::start().await;
    let s = server(&etcd).await;
    let c = http();
    let apply = format!("{}{API}/apply", s.url);

    // Over the body limit: 413 with an ApiError.
    let huge = "x".repeat(topo_schema::api::MAX_BODY_BYTES + 10);
    let (st, e) = send(
        c.post(&apply)
            .header("content-type", "application/json")
            .body(huge),
    )
    .await;
    assert_eq!(
        (st, e["reason"].as_str()),
        (413, Some("RequestEntityTooLarge")),
        "{e}"
    );
    // The same without a Content-Length (chunked).
    let chunks = futures::stream::iter(
        (0..9).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 1024 * 1024]))),
    );
    let (st, e) = send(c.post(&apply).body(reqwest::Body::wrap_stream(chunks))).await;
    assert_eq!(st, 413, "{e}");

    for (body, ct) in [
        ("not json", "application/json"),
        ("", "application/json"),
        ("[1,2]", "application/json"),
        ("{\"files\": 3}", "application/json"),
        ("{}", "text/plain"),
    ] {
        let (st, e) = send(c.post(&apply).header("content-type", ct).body(body)).await;
        assert_eq!(st, 400, "{body:?}: {e}");
        assert_eq!(e["reason"], "BadRequest", "{e}");
    }
    let nodes = format!("{}{API}/nodes", s.url);
    let (st, e) = send(
        c.post(&nodes)
            .json(&json!({"kind": "Widget", "apiVersion": "topo.dev/v1alpha1"})),
    )
    .await;
    assert_eq!(st, 422, "{e}");
    let (st, e) = send(
        c.post(&nodes)
            .json(&json!({"apiVersion": "topo.dev/v1alpha1", "kind": "Node",
        "metadata": {"name": "n1"}, "spec": {"address": "192.168.1.1", "colour": "red"}})),
    )
    .await;
    assert_eq!(st, 422, "{e}");
    let (st, e) = send(
        c.post(&nodes)
            .json(&json!({"apiVersion": "topo.dev/v1alpha1", "kind": "Node",
        "metadata": {"name": "Bad_Name"}, "spec": {"address": "192.168.1.1"}})),
    )
    .await;
    assert_eq!(st, 422, "{e}");
    // An object too large for one etcd value is refused before etcd sees it.
    let big = json!({"apiVersion": "topo.dev/v1alpha1", "kind": "Container", "metadata": {"name": "big"},
        "spec": {"node": "n1", "image": "x", "env": {"BLOB": "y".repeat(600 * 1024)}}});
    let (st, e) = send(c.post(format!("{}{API}/containers", s.url)).json(&big)).await;
    assert_eq!(
        st,
        422,
        "{}",
        e.to_string().chars().take(300).collect::<String>()
    );
    assert!(e["message"].as_str().unwrap().contains("bytes"));
    let (st, e) = send(
        c.post(format!("{}{API}/networks", s.url))
            .json(&node_json("n1", "192.168.1.1")),
    )
    .await;
    assert_eq!(st, 400, "{e}");
    let (st, e) = send(c.get(format!("{}/nope", s.url))).await;
    assert_eq!((st, e["reason"].as_str()), (404, Some("NotFound")));
    let (st, _) = send(c.patch(format!("{}{API}/nodes/n1", s.url))).await;
    assert_eq!(st, 405);
    let (st, e) = send(c.get(format!(
        "{}{API}/nodes?watch=true&resourceVersion=abc",
        s.url
    )))
    .await;
    assert_eq!(st, 400, "{e}");

    // Garbage on the raw socket, a few ways.
    for garbage in [
        &b"\x00\x01\x02\xff\xfe garbage\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /apis/topo.dev/v1alpha1/apply HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"POST /apis/topo.dev/v1alpha1/apply HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{\"fi",
    ] {
        let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        sock.write_all(garbage).await.unwrap();
        let _ = sock.shutdown().await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut buf)).await;
    }
    let (st, _) = send(c.get(format!("{}/healthz", s.url))).await;
    assert_eq!(st, 200, "the server must survive garbage");
    let (st, _) = send(c.get(format!("{}/readyz", s.url))).await;
    assert_eq!(st, 200);
    s.stop().await;
}

#[tokio::test]
async fn derived_tunnels_cannot_be_edited() {
    let etcd = Etcd::start().await;
    let s = server(&etcd).await;
    let c = http();
    let file = docs(&[
        node_yaml("n1", "192.168.100.1"),
        node_yaml("n2", "192.168.100.2"),
        network_yaml("overlay", "10.2.0.0/16", 24),
    ]);
    let (st, r) = send(
        c.post(format!("{}{API}/apply", s.url))
            .json(&apply_body(&[("a.yaml", &file)], false)),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    // What the leader writes.
    let tunnel = json!({"apiVersion": "topo.dev/v1alpha1", "kind": "Tunnel",
        "metadata": {"name": "overlay-n1-n2", "labels": {"topo.dev/derived-from": "network.overlay"}},
        "spec": {"network": "overlay", "nodes": ["n1", "n2"]}});
    let mut kv = etcd.client().await;
    kv.put(
        keys::object(Kind::Tunnel, "overlay-n1-n2"),
        tunnel.to_string(),
        None,
    )
    .await
    .unwrap();
    let rev = kv
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    s.controller.cache.wait_for_revision(rev).await;

    let user = "apiVersion: topo.dev/v1alpha1\nkind: Tunnel\nmetadata:\n  name: overlay-n1-n2\nspec:\n  network: overlay\n  nodes: [n1, n2]\n";
    let (st, e) = send(
        c.post(format!("{}{API}/apply", s.url))
            .json(&apply_body(&[("t.yaml", user)], false)),
    )
    .await;
    assert_eq!(st, 422, "{e}");
    assert!(e["message"].as_str().unwrap().contains("derived"), "{e}");
    let (st, e) = send(c.delete(format!("{}{API}/tunnels/overlay-n1-n2", s.url))).await;
    assert_eq!(st, 422, "{e}");
    // Users cannot forge the label either.
    let forged = user.replace("overlay-n1-n2", "mine").replace(
        "metadata:\n",
        "metadata:\n  labels: {topo.dev/derived-from: network.overlay}\n",
    );
    let (st, e) = send(
        c.post(format!("{}{API}/apply", s.url))
            .json(&apply_body(&[("f.yaml", &forged)], false)),
    )
    .await;
    assert_eq!(st, 422, "{e}");
    let (st, l) = send(c.get(format!("{}{API}/tunnels", s.url))).await;
    assert_eq!(st, 200);
    assert_eq!(l["items"].as_array().unwrap().len(), 1);
    s.stop().await;
}

/// Reads newline-delimited JSON events from a watch response.
struct Lines {
    stream: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: Vec<u8>,
}

impl Lines {
    async fn open(url: String) -> Lines {
        let resp = http().get(url).send().await.expect("watch request");
        assert_eq!(resp.status().as_u16(), 200);
        Lines {
            stream: resp.bytes_stream().boxed(),
            buf: Vec::new(),
        }
    }

    /// The next event that is not a BOOKMARK.
    async fn next(&mut self) -> Value {
        loop {
            let v = self.next_any().await;
            if v["type"] != "BOOKMARK" {
                return v;
            }
        }
    }

    async fn next_any(&mut self) -> Value {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return serde_json::from_slice(&line).expect("a JSON line");
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.stream.next())
                .await
                .expect("a watch event within 20s")
                .expect("the stream must go on")
                .expect("stream chunk");
            self.buf.extend_from_slice(&chunk);
        }
    }

    async fn ended(&mut self) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.stream.next()).await,
            Ok(None)
        )
    }
}

#[tokio::test]
async fn watch_resumes_maps_status_and_expires() {
    let etcd = Etcd::start().await;
    let s = server(&etcd).await;
    let c = http();
    let nodes = format!("{}{API}/nodes", s.url);
    let (_, pre) = send(c.post(&nodes).json(&node_json("pre", "192.168.0.9"))).await;
    let (_, l) = send(c.get(&nodes)).await;
    let rv0 = l["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();

    // Without a resourceVersion: the current objects first.
    let mut all = Lines::open(format!("{nodes}?watch=true")).await;
    let first = all.next().await;
    assert_eq!(
        (
            first["type"].as_str(),
            first["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("pre"))
    );

    let mut w = Lines::open(format!("{nodes}?watch=true&resourceVersion={rv0}")).await;
    let (_, n1) = send(c.post(&nodes).json(&node_json("n1", "192.168.0.1"))).await;
    let ev = w.next().await;
    assert_eq!(ev["type"], "ADDED", "{ev}");
    assert_eq!(ev["object"]["metadata"]["name"], "n1");
    assert_eq!(ev["object"]["metadata"]["uid"], n1["metadata"]["uid"]);
    assert_eq!(all.next().await["object"]["metadata"]["name"], "n1");

    // A status written by the leader is a MODIFIED of its object.
    let status = json!({"conditions": [{"type": "Ready", "status": "True", "reason": "Heartbeat", "message": "",
        "lastTransitionTime": "2024-01-01T00:00:00Z"}]});
    etcd.client()
        .await
        .put(keys::status(Kind::Node, "n1"), status.to_string(), None)
        .await
        .unwrap();
    let ev = w.next().await;
    assert_eq!(ev["type"], "MODIFIED", "{ev}");
    assert_eq!(
        ev["object"]["status"]["conditions"][0]["type"], "Ready",
        "{ev}"
    );
    let rv_status = ev["resourceVersion"].as_str().unwrap().to_string();

    let mut upd = node_json("n1", "192.168.0.2");
    upd["metadata"]["labels"] = json!({"x": "y"});
    let (st, _) = send(c.put(format!("{nodes}/n1")).json(&upd)).await;
    assert_eq!(st, 200);
    let ev = w.next().await;
    assert_eq!(ev["type"], "MODIFIED");
    assert_eq!(ev["object"]["spec"]["address"], "192.168.0.2");
    // The object carries its status too.
    assert_eq!(
        ev["object"]["status"]["conditions"][0]["type"], "Ready",
        "{ev}"
    );
    let (st, _) = send(c.delete(format!("{nodes}/n1"))).await;
    assert_eq!(st, 200);
    let ev = w.next().await;
    assert_eq!(ev["type"], "DELETED", "{ev}");
    assert_eq!(ev["object"]["metadata"]["name"], "n1");

    // Resume right after the status event: the update and the delete again, nothing before.
    let mut r = Lines::open(format!("{nodes}?watch=true&resourceVersion={rv_status}")).await;
    assert_eq!(r.next().await["type"], "MODIFIED");
    assert_eq!(r.next().await["type"], "DELETED");

    // A selector: only matching objects, and a label change out of it is a DELETED.
    let mut sel = Lines::open(format!(
        "{nodes}?watch=true&labelSelector=team%3Dred&resourceVersion={rv_status}"
    ))
    .await;
    let mut red = node_json("r1", "192.168.0.3");
    red["metadata"]["labels"] = json!({"team": "red"});
    send(c.post(&nodes).json(&red)).await;
    send(c.post(&nodes).json(&node_json("g1", "192.168.0.4"))).await;
    red["metadata"]["labels"] = json!({"team": "blue"});
    send(c.put(format!("{nodes}/r1")).json(&red)).await;
    let ev = sel.next().await;
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("r1"))
    );
    let ev = sel.next().await;
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["object"]["metadata"]["name"].as_str()
        ),
        (Some("DELETED"), Some("r1"))
    );

    // Compact everything up to now: an old resourceVersion is Expired (410), then the end.
    let mut kv = etcd.client().await;
    let now = kv
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    kv.compact(now, None).await.unwrap();
    let mut old = Lines::open(format!("{nodes}?watch=true&resourceVersion={rv0}")).await;
    let ev = old.next().await;
    assert_eq!(ev["type"], "ERROR", "{ev}");
    assert_eq!(ev["error"]["code"], 410);
    assert_eq!(ev["error"]["reason"], "Expired");
    assert!(old.ended().await, "the stream must end after Expired");
    let _ = pre;
    s.stop().await;
}

#[tokio::test]
async fn events_dedup_and_bounds() {
    let etcd = Etcd::start().await;
    let s = server(&etcd).await;
    let client = etcd.client().await;
    let web = ObjectRef::new(Kind::Container, "web");
    for _ in 0..3 {
        let ev = topo_controller::events::new_event(
            web.clone(),
            EventType::Warning,
            "ImagePullFailed",
            "no such image",
            "agent/n1",
        );
        topo_controller::events::record(&client, ev).await.unwrap();
    }
    let stored = etcd
        .keys(&keys::object_events_prefix(Kind::Container, "web"))
        .await;
    assert_eq!(stored.len(), 1, "repeats share one record");
    let ev: Event = serde_json::from_str(&stored[0].1).unwrap();
    assert_eq!(ev.count, 3);
    assert!(ev.last_timestamp >= ev.first_timestamp);

    for i in 0..25 {
        let ev = topo_controller::events::new_event(
            web.clone(),
            EventType::Normal,
            "Started",
            &format!("attempt {i}"),
            "agent/n1",
        );
        topo_controller::events::record(&client, ev).await.unwrap();
    }
    assert_eq!(
        etcd.count(&keys::object_events_prefix(Kind::Container, "web"))
            .await,
        topo_controller::events::MAX_PER_OBJECT
    );

    for i in 0..30 {
        let o = ObjectRef::new(Kind::Node, format!("n{i}"));
        let ev = topo_controller::events::new_event(
            o,
            EventType::Normal,
            "Registered",
            "hello",
            "controller",
        );
        topo_controller::events::record(&client, ev).await.unwrap();
    }
    let removed = topo_controller::events::prune(&client, 40).await.unwrap();
    assert_eq!(removed, 10);
    assert_eq!(etcd.count(&keys::events_prefix()).await, 40);

    // Over HTTP: the list for one object, newest last, and a watch.
    let c = http();
    let (st, l) = send(c.get(format!("{}{API}/events?object=container/web", s.url))).await;
    assert_eq!(st, 200, "{l}");
    let items = l["items"].as_array().unwrap();
    assert!(!items.is_empty() && items.len() <= 20);
    assert!(items.iter().all(|e| e["object"]["name"] == "web"));
    let rv = l["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut w = Lines::open(format!(
        "{}{API}/events?watch=true&resourceVersion={rv}&object=node/n29",
        s.url
    ))
    .await;
    let ev = topo_controller::events::new_event(
        ObjectRef::new(Kind::Node, "n29"),
        EventType::Normal,
        "Registered",
        "hello",
        "controller",
    );
    topo_controller::events::record(&client, ev).await.unwrap();
    let got = w.next().await;
    assert_eq!(got["type"], "MODIFIED", "{got}");
    assert_eq!(got["object"]["count"], 2);
    let (st, _) = send(c.get(format!("{}{API}/events?object=nope", s.url))).await;
    assert_eq!(st, 400);
    s.stop().await;
}

/// The constructor topoctl's tests use: with the leader, applied objects get derived state.
#[tokio::test]
async fn serve_for_test_runs_the_leader() {
    let etcd = Etcd::start().await;
    init_tracing();
    let s = topo_controller::serve_for_test(&etcd.endpoints(), &etcd.pki_dir())
        .await
        .expect("start");
    let c = http();
    let file = docs(&[
        node_yaml("n1", "192.168.100.1"),
        node_yaml("n2", "192.168.100.2"),
        network_yaml("overlay", "10.2.0.0/16", 24),
        container_yaml("web", "n1", "overlay", None),
        container_yaml("app", "n2", "overlay", None),
    ]);
    let (st, r) = send(
        c.post(format!("{}{API}/apply", s.url))
            .json(&apply_body(&[("a.yaml", &file)], false)),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    // The leader derives the mesh tunnel between the two nodes and folds statuses.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, l) = send(c.get(format!("{}{API}/tunnels", s.url))).await;
        let (_, web) = send(c.get(format!("{}{API}/containers/web", s.url))).await;
        if l["items"].as_array().is_some_and(|i| i.len() == 1)
            && web["status"]["addresses"]["overlay"].is_string()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no derived tunnel/status: {l} {web}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.stop().await;
}
