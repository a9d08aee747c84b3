//! Tables for the verification's planning and folding.

use std::sync::Arc;

use serde_json::json;
use topo_schema::api::Heartbeat;

use super::*;

fn put(s: &mut Snapshot, kind: Kind, name: &str, spec: serde_json::Value) {
    let labels = spec.get("_labels").cloned().unwrap_or(json!({}));
    let mut spec = spec;
    if let Some(o) = spec.as_object_mut() {
        o.remove("_labels");
    }
    let obj = json!({
        "apiVersion": "topo.dev/v1alpha1", "kind": kind.as_str(),
        "metadata": {"name": name, "labels": labels}, "spec": spec,
    });
    s.apply_put_raw(&keys::object(kind, name), obj.to_string().as_bytes(), 2, 1);
}

fn addresses(s: &mut Snapshot, name: &str, addrs: serde_json::Value) {
    let st = json!({"addresses": addrs});
    let key = keys::status(Kind::Container, name);
    s.apply_put_raw(&key, st.to_string().as_bytes(), 3, 3);
}

fn agent(s: &mut Snapshot, node: &str) {
    s.heartbeats.insert(
        node.to_string(),
        Arc::new(Heartbeat {
            node: node.into(),
            agent_version: "1".into(),
            started: Utc::now(),
            endpoint: Some(format!("{node}:10250")),
        }),
    );
}

/// Three nodes; `ov` spans them all, `back` only node1 and node2; web1 publishes 8080.
fn lab() -> Snapshot {
    let mut s = Snapshot::default();
    for (i, n) in ["node1", "node2", "node3"].iter().enumerate() {
        put(
            &mut s,
            Kind::Node,
            n,
            json!({"address": format!("192.168.100.{}", i + 1)}),
        );
        agent(&mut s, n);
    }
    put(
        &mut s,
        Kind::Network,
        "ov",
        json!({"cidr": "10.2.0.0/16", "mtu": 1400}),
    );
    put(
        &mut s,
        Kind::Network,
        "back",
        json!({"cidr": "10.3.0.0/16"}),
    );
    let c = |node: &str, app: &str| json!({"node": node, "image": "i", "networks": [{"network": "ov"}], "_labels": {"app": app}});
    put(&mut s, Kind::Container, "web1", {
        let mut v = c("node1", "web");
        v["ports"] = json!([{"containerPort": 80, "hostPort": 8080}]);
        v
    });
    put(&mut s, Kind::Container, "web2", c("node2", "web"));
    put(&mut s, Kind::Container, "db", c("node3", "db"));
    put(&mut s, Kind::Container, "db2", c("node3", "db"));
    addresses(
        &mut s,
        "web1",
        json!({"ov": "10.2.1.2", "back": "10.3.1.2"}),
    );
    addresses(
        &mut s,
        "web2",
        json!({"ov": "10.2.2.2", "back": "10.3.2.2"}),
    );
    addresses(&mut s, "db", json!({"ov": "10.2.3.2"}));
    addresses(&mut s, "db2", json!({"ov": "10.2.3.3"}));
    s
}

fn peers(p: &Plan, node: &str, container: &str) -> Vec<(String, String, String, u32)> {
    p.requests[node]
        .containers
        .iter()
        .find(|c| c.container == container)
        .unwrap()
        .peers
        .iter()
        .map(|t| {
            (
                t.network.clone(),
                t.container.clone(),
                t.node.clone(),
                t.mtu,
            )
        })
        .collect()
}

#[test]
fn one_peer_per_other_node_and_network() {
    let s = lab();
    let p = plan(&s, &LabelSelector::default());
    assert_eq!(p.selected, ["db", "db2", "web1", "web2"]);
    let t =
        |n: &str, c: &str, node: &str, mtu| (n.to_string(), c.to_string(), node.to_string(), mtu);
    assert_eq!(
        peers(&p, "node1", "web1"),
        [
            t("back", "web2", "node2", 1458),
            t("ov", "web2", "node2", 1400),
            t("ov", "db", "node3", 1400)
        ]
    );
    // db2 is never a peer (db is the first on node3), but is checked itself.
    assert_eq!(
        peers(&p, "node3", "db2"),
        [
            t("ov", "web1", "node1", 1400),
            t("ov", "web2", "node2", 1400)
        ]
    );
    // web1's published port is tried from the first other node with an agent.
    let tried = &p.requests["node2"].published;
    assert_eq!(tried.len(), 1);
    assert_eq!(
        (tried[0].address, tried[0].port, tried[0].container.as_str()),
        ("192.168.100.1".parse().unwrap(), 8080, "web1")
    );
    assert!(p.requests["node1"].published.is_empty());
}

#[test]
fn the_selector_picks_the_sources_and_the_prober_skips_nodes_without_agents() {
    let mut s = lab();
    s.heartbeats.remove("node2");
    let p = plan(&s, &LabelSelector::parse("app=web").unwrap());
    assert_eq!(p.selected, ["web1", "web2"]);
    assert_eq!(p.requests["node1"].containers.len(), 1);
    // node2 has no agent: node3 tries web1's port, though none of its containers is checked.
    assert_eq!(p.requests["node2"].published.len(), 0);
    assert_eq!(p.requests["node3"].published.len(), 1);
    assert!(p.requests["node3"].containers.is_empty());
    let r = ask_offline(&s, p.requests["node2"].clone());
    assert_eq!(r.len(), 1);
    assert!(!r[0].passed);
    assert_eq!(r[0].kind, CheckKind::Agent);
    assert!(r[0].reason.contains("no heartbeat"), "{}", r[0].reason);
}

fn ask_offline(s: &Snapshot, req: VerifyRequest) -> Vec<Check> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let agents = AgentClient::for_tests();
    rt.block_on(ask(&agents, s, req, "admin"))
}

#[test]
fn unanswered_requests_fail_each_check_naming_the_node() {
    let s = lab();
    let p = plan(&s, &LabelSelector::default());
    let checks = unanswered(
        &p.requests["node2"],
        "the agent of node node2: no answer within 10s",
    );
    let lines: Vec<String> = checks.iter().map(Check::line).collect();
    assert_eq!(
        lines,
        [
            "FAIL agent   web2 on node node2: the agent of node node2: no answer within 10s",
            "FAIL port    node2 → web1's 192.168.100.1:8080/tcp on node node1: the agent of node node2: no answer within 10s",
        ]
    );
    assert_eq!(
        checks[1].container, "web1",
        "counts for the published container"
    );
}

#[test]
fn verified_conditions_fold_each_containers_checks() {
    let now = Utc::now();
    let pass = |c: &str, s: &str| Check::pass(CheckKind::Gateway, c, "n", s.into());
    let fail = |c: &str, s: &str| Check::fail(CheckKind::Mtu, c, "n", s.into(), "too big".into());
    let selected: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let checks = [
        pass("a", "a1"),
        pass("a", "a2"),
        pass("b", "b1"),
        fail("b", "b2"),
    ];
    let got: Vec<(String, ConditionStatus, String, String)> = fold(&selected, &checks, now)
        .into_iter()
        .map(|(n, c)| (n, c.status, c.reason, c.message))
        .collect();
    let row = |n: &str, s, r: &str, m: &str| (n.to_string(), s, r.to_string(), m.to_string());
    assert_eq!(
        got,
        [
            row(
                "a",
                ConditionStatus::True,
                "ChecksPassed",
                "2 checks passed"
            ),
            row(
                "b",
                ConditionStatus::False,
                "ChecksFailed",
                "1 of 2 checks failed: FAIL mtu     b2: too big"
            ),
            row(
                "c",
                ConditionStatus::Unknown,
                "NoChecks",
                "nothing to check: no network, link or published port"
            ),
        ]
    );
    let many: Vec<Check> = (0..500).map(|i| fail("a", &format!("check {i}"))).collect();
    let (_, c) = &fold(&selected[..1], &many, now)[0];
    assert!(
        c.message.len() <= MAX_MESSAGE + '…'.len_utf8(),
        "{}",
        c.message.len()
    );
}
