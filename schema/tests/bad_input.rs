//! Bad input of issue 2 item 5, as far as the schema sees it: each case gets one clear error
//! naming the file, line, column and field path.

use topo_schema::api::{Cause, SourceFile};
use topo_schema::manifest::{ParsedDoc, check_apply, locate_cause, parse_file, parse_files};
use topo_schema::validate::{check_update_with_users, network_users, validate_consistency};
use topo_schema::{Kind, ObjectRef, Resource};

const NETWORK: &str = "\
apiVersion: topo.dev/v1alpha1
kind: Network
metadata:
  name: overlay
spec:
  cidr: 10.2.0.0/16
  blockSize: 24
";

fn container(name: &str, node: &str, ip: Option<&str>) -> String {
    let mut s = format!(
        "apiVersion: topo.dev/v1alpha1\nkind: Container\nmetadata:\n  name: {name}\nspec:\n  node: {node}\n  image: topo/busybox:latest\n  networks:\n    - network: overlay\n"
    );
    if let Some(ip) = ip {
        s.push_str(&format!("      ip: {ip}\n"));
    }
    s
}

/// The one error `content` has.
fn only_error(file: &str, content: &str) -> Cause {
    match parse_file(file, content) {
        Ok(docs) => panic!("{file} parsed without error: {docs:?}"),
        Err(mut causes) => {
            assert_eq!(causes.len(), 1, "{causes:#?}");
            causes.remove(0)
        }
    }
}

fn parsed(file: &str, content: &str) -> Vec<ParsedDoc> {
    parse_file(file, content).unwrap_or_else(|c| panic!("{file}: {c:#?}"))
}

#[track_caller]
fn assert_cause(
    c: &Cause,
    file: &str,
    line: usize,
    column: usize,
    field: Option<&str>,
    message: &str,
) {
    assert_eq!(c.file.as_deref(), Some(file), "{c}");
    assert_eq!((c.line, c.column), (Some(line), Some(column)), "{c}");
    assert_eq!(c.field.as_deref(), field, "{c}");
    assert!(
        c.message.starts_with(message),
        "message {:?} does not start with {message:?}",
        c.message
    );
}

#[test]
fn yaml_syntax_error() {
    // Line 7 opens a flow sequence that never closes.
    let content = format!(
        "{NETWORK}---\napiVersion: topo.dev/v1alpha1\nkind: Node\nmetadata:\n  name: node1\n  labels: {{zone: [a}}\nspec:\n  address: 192.168.100.1\n"
    );
    let c = only_error("syntax.yaml", &content);
    assert_cause(
        &c,
        "syntax.yaml",
        13,
        20,
        None,
        "invalid YAML: did not find expected ',' or ']'",
    );
    assert!(
        c.message
            .contains("while parsing a flow sequence at line 13 column 18"),
        "{}",
        c.message
    );
    let c = only_error(
        "tabs.yaml",
        "apiVersion: topo.dev/v1alpha1\nkind: Node\nmetadata:\n\tname: x\n",
    );
    assert_cause(
        &c,
        "tabs.yaml",
        4,
        1,
        None,
        "invalid YAML: found character that cannot start any token",
    );
}

#[test]
fn unknown_field_suggests_the_nearest_name() {
    let content = format!(
        "{NETWORK}---\n{}",
        container("web", "node1", None).replace("  image:", "  imagee:")
    );
    let c = only_error("web.yaml", &content);
    assert_cause(
        &c,
        "web.yaml",
        15,
        3,
        Some("spec"),
        "unknown field \"imagee\" (did you mean \"image\"?)",
    );
    assert_eq!(c.object.as_deref(), Some("container/web"));
    assert_eq!(
        c.to_string(),
        "web.yaml:15:3: container/web: spec: unknown field \"imagee\" (did you mean \"image\"?)"
    );
}

#[test]
fn unknown_kind() {
    let c = only_error(
        "k.yaml",
        "apiVersion: topo.dev/v1alpha1\nkind: Contianer\nmetadata: {name: web}\nspec: {}\n",
    );
    assert_cause(
        &c,
        "k.yaml",
        2,
        1,
        Some("kind"),
        "unknown kind \"Contianer\" (did you mean \"Container\"?)",
    );
    assert!(
        c.message.contains("Node, Network, Container, Link, Tunnel"),
        "{}",
        c.message
    );
}

#[test]
fn unknown_api_version() {
    let c = only_error(
        "v.yaml",
        &NETWORK.replace("topo.dev/v1alpha1", "networking.k8s.io/v1"),
    );
    assert_cause(
        &c,
        "v.yaml",
        1,
        1,
        Some("apiVersion"),
        "unsupported apiVersion \"networking.k8s.io/v1\" (expected topo.dev/v1alpha1)",
    );
    assert_eq!(c.object.as_deref(), Some("network/overlay"));
}

#[test]
fn invalid_name() {
    let c = only_error(
        "n.yaml",
        &NETWORK.replace("name: overlay", "name: Overlay_1"),
    );
    assert_cause(
        &c,
        "n.yaml",
        4,
        3,
        Some("metadata.name"),
        "\"Overlay_1\" contains 'O'",
    );
    assert!(c.message.contains("DNS-1123"), "{}", c.message);
}

#[test]
fn invalid_cidr() {
    let c = only_error("c.yaml", &NETWORK.replace("10.2.0.0/16", "10.2.0.0/33"));
    assert_cause(
        &c,
        "c.yaml",
        6,
        3,
        Some("spec.cidr"),
        "\"10.2.0.0/33\" is not an IPv4 CIDR (expected e.g. 10.2.0.0/16)",
    );
    let c = only_error("c.yaml", &NETWORK.replace("10.2.0.0/16", "10.2.0.1/16"));
    assert_cause(
        &c,
        "c.yaml",
        6,
        3,
        Some("spec.cidr"),
        "10.2.0.1/16 has host bits set (did you mean 10.2.0.0/16?)",
    );
}

#[test]
fn block_size_that_does_not_fit() {
    let c = only_error("b.yaml", &NETWORK.replace("blockSize: 24", "blockSize: 12"));
    assert_cause(
        &c,
        "b.yaml",
        7,
        3,
        Some("spec.blockSize"),
        "blockSize 12 does not fit cidr 10.2.0.0/16 (expected 16 to 30)",
    );
}

/// Cross-object errors of applying `content` on top of `existing`.
fn apply_errors(file: &str, content: &str, existing: &[&Resource]) -> Vec<Cause> {
    check_apply(&parsed(file, content), existing)
}

#[test]
fn static_ip_outside_the_cidr() {
    let content = format!(
        "{NETWORK}---\n{}",
        container("web", "node1", Some("10.3.0.5"))
    );
    let errs = apply_errors("ip.yaml", &content, &[]);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_cause(
        &errs[0],
        "ip.yaml",
        18,
        7,
        Some("spec.networks[0].ip"),
        "10.3.0.5 is outside network overlay (10.2.0.0/16)",
    );
    assert_eq!(
        errs[0].to_string(),
        "ip.yaml:18:7: container/web: spec.networks[0].ip: 10.3.0.5 is outside network overlay (10.2.0.0/16)"
    );
}

#[test]
fn static_ip_equal_to_a_gateway() {
    let content = format!(
        "{NETWORK}---\n{}",
        container("web", "node1", Some("10.2.7.1"))
    );
    let errs = apply_errors("gw.yaml", &content, &[]);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_cause(
        &errs[0],
        "gw.yaml",
        18,
        7,
        Some("spec.networks[0].ip"),
        "10.2.7.1 is the gateway address of block 10.2.7.0/24",
    );
}

#[test]
fn static_ip_equal_to_the_network_or_broadcast_address() {
    for (ip, what) in [
        ("10.2.0.0", "network address"),
        ("10.2.255.255", "broadcast address"),
    ] {
        let content = format!("{NETWORK}---\n{}", container("web", "node1", Some(ip)));
        let errs = apply_errors("nb.yaml", &content, &[]);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_cause(
            &errs[0],
            "nb.yaml",
            18,
            7,
            Some("spec.networks[0].ip"),
            &format!("{ip} is the {what} of 10.2.0.0/16"),
        );
    }
}

#[test]
fn static_ip_already_held_by_another_object() {
    let stored = parsed(
        "stored.yaml",
        &format!(
            "{NETWORK}---\n{}",
            container("redis", "node2", Some("10.2.4.10"))
        ),
    );
    let existing: Vec<&Resource> = stored.iter().map(|d| &d.resource).collect();
    let errs = apply_errors(
        "web.yaml",
        &container("web", "node1", Some("10.2.4.10")),
        &existing,
    );
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_cause(
        &errs[0],
        "web.yaml",
        10,
        7,
        Some("spec.networks[0].ip"),
        "10.2.4.10 is already held by container/redis",
    );
}

#[test]
fn static_ip_twice_in_the_same_file() {
    let content = format!(
        "{NETWORK}---\n{}---\n{}",
        container("redis", "node2", Some("10.2.4.10")),
        container("web", "node1", Some("10.2.4.10"))
    );
    let errs = apply_errors("twice.yaml", &content, &[]);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    // The second claim is refused, naming the first.
    assert_cause(
        &errs[0],
        "twice.yaml",
        29,
        7,
        Some("spec.networks[0].ip"),
        "10.2.4.10 is already held by container/redis",
    );
    assert_eq!(errs[0].object.as_deref(), Some("container/web"));
}

#[test]
fn port_out_of_range() {
    let content = format!(
        "{}  ports:\n    - containerPort: 70000\n      hostPort: 8080\n",
        container("web", "node1", None)
    );
    let c = only_error("p.yaml", &content);
    assert_cause(
        &c,
        "p.yaml",
        11,
        7,
        Some("spec.ports[0].containerPort"),
        "70000 is out of range (expected 1-65535)",
    );
    // Beyond u32 serde refuses it already, at the value.
    let content = format!(
        "{}  ports:\n    - {{containerPort: 80, hostPort: 99999999999}}\n",
        container("web", "node1", None)
    );
    let c = only_error("p.yaml", &content);
    assert_cause(
        &c,
        "p.yaml",
        11,
        37,
        Some("spec.ports[0].hostPort"),
        "99999999999 is out of range",
    );
}

/// Issue 8: a hostIP is 0.0.0.0 or a unicast address, and comes with a hostPort.
#[test]
fn host_ip_that_cannot_be_published_on() {
    let with = |ports: &str| format!("{}  ports:\n{ports}", container("web", "node1", None));
    let c = only_error(
        "h.yaml",
        &with("    - {containerPort: 80, hostPort: 8080, hostIP: 127.0.0.1}\n"),
    );
    assert_cause(
        &c,
        "h.yaml",
        11,
        43,
        Some("spec.ports[0].hostIP"),
        "127.0.0.1 is a loopback address",
    );
    assert!(
        c.message.contains("0.0.0.0 for every address of the node"),
        "{c}"
    );
    let c = only_error(
        "h.yaml",
        &with("    - {containerPort: 80, hostIP: 192.168.100.1}\n"),
    );
    assert_cause(
        &c,
        "h.yaml",
        11,
        27,
        Some("spec.ports[0].hostIP"),
        "hostIP 192.168.100.1 without a hostPort publishes nothing",
    );
    let c = only_error(
        "h.yaml",
        &with("    - {containerPort: 80, hostPort: 8080, hostIP: 224.0.0.1}\n"),
    );
    assert!(
        c.message.starts_with("224.0.0.1 is a multicast address"),
        "{c}"
    );
    let c = only_error(
        "h.yaml",
        &with("    - {containerPort: 80, hostPort: 8080, hostIP: node1}\n"),
    );
    assert_eq!(c.field.as_deref(), Some("spec.ports[0].hostIP"), "{c}");
    assert!(c.message.contains("is not an IPv4 address"), "{c}");
    for ok in ["0.0.0.0", "192.168.100.1", "10.9.9.9"] {
        parsed(
            "h.yaml",
            &with(&format!(
                "    - {{containerPort: 80, hostPort: 8080, hostIP: {ok}}}\n"
            )),
        );
    }
}

/// Issue 8: the docker-run hardening fields, each refused at its own line and field.
#[test]
fn hardening_that_docker_would_refuse() {
    let content = format!(
        "{}  resources:\n    memory: 4Mi\n    cpus: half\n    pids: 0\n  user: \"root;id\"\n  capabilities:\n    add: [NET_ADMIN, NET_ADMN]\n    drop: [NET_ADMIN]\n",
        container("web", "node1", None)
    );
    let causes = parse_file("hard.yaml", &content).unwrap_err();
    let got: Vec<(usize, Option<&str>)> = causes
        .iter()
        .map(|c| (c.line.unwrap_or(0), c.field.as_deref()))
        .collect();
    assert_eq!(
        got,
        vec![
            (11, Some("spec.resources.memory")),
            (12, Some("spec.resources.cpus")),
            (13, Some("spec.resources.pids")),
            (14, Some("spec.user")),
            (16, Some("spec.capabilities.add[1]")),
            (16, Some("spec.capabilities.add[0]")),
        ],
        "{causes:#?}"
    );
    assert!(
        causes[0].message.contains("Docker's minimum of 6Mi"),
        "{}",
        causes[0]
    );
    assert!(
        causes[4].message.contains("did you mean NET_ADMIN?"),
        "{}",
        causes[4]
    );
    assert!(
        causes[5].message.contains("both added and dropped"),
        "{}",
        causes[5]
    );
    // A bare number is a quantity too; a list is not.
    parsed(
        "ok.yaml",
        &format!(
            "{}  resources: {{memory: 268435456, cpus: 0.5, pids: 100}}\n  user: \"1000:1000\"\n  readOnlyRootFilesystem: true\n  capabilities: {{drop: [ALL], add: [net_bind_service]}}\n  allowPrivilegeEscalation: false\n",
            container("web", "node1", None)
        ),
    );
    let c = only_error(
        "q.yaml",
        &format!(
            "{}  resources: {{memory: [1]}}\n",
            container("web", "node1", None)
        ),
    );
    assert_eq!(c.field.as_deref(), Some("spec.resources.memory"), "{c}");
    assert!(c.message.contains("a quantity such as \"256Mi\""), "{c}");
}

#[test]
fn two_containers_with_the_same_host_port_on_one_node() {
    let with_port = |name: &str, node: &str| {
        format!(
            "{}  ports:\n    - {{containerPort: 80, hostPort: 8080}}\n",
            container(name, node, None)
        )
    };
    let content = format!(
        "{NETWORK}---\n{}---\n{}---\n{}",
        with_port("web", "node1"),
        with_port("other-node", "node2"),
        with_port("api", "node1")
    );
    let errs = apply_errors("ports.yaml", &content, &[]);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_cause(
        &errs[0],
        "ports.yaml",
        43,
        27,
        Some("spec.ports[0].hostPort"),
        "host port 8080/tcp on node node1 is already published by container/web",
    );
    assert_eq!(errs[0].object.as_deref(), Some("container/api"));
}

#[test]
fn deleting_a_network_that_containers_still_use() {
    // `topoctl delete -f net.yaml` while two containers use the network.
    let deleting = parsed("net.yaml", &format!("# the network\n{NETWORK}"));
    let users = parsed(
        "users.yaml",
        &format!(
            "{}---\n{}",
            container("a", "node1", None),
            container("b", "node2", None)
        ),
    );
    let all: Vec<&Resource> = users.iter().map(|d| &d.resource).collect();
    let gone = ObjectRef::new(Kind::Network, "overlay");
    let errs = validate_consistency(&all, std::slice::from_ref(&gone));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let c = locate_cause(&deleting, &errs[0].0, &errs[0].1);
    assert_cause(
        &c,
        "net.yaml",
        2,
        1,
        None,
        "network overlay is still used by container/a, container/b",
    );
    assert_eq!(c.object.as_deref(), Some("network/overlay"));
    // `topoctl delete network overlay`: no file to point into.
    let c = locate_cause(&[], &errs[0].0, &errs[0].1);
    assert_eq!((c.file.as_deref(), c.line), (None, None));
    assert_eq!(
        c.to_string(),
        format!("network/overlay: {}", errs[0].1.message)
    );
}

#[test]
fn changing_a_network_cidr_while_addresses_are_allocated() {
    let stored = parsed(
        "stored.yaml",
        &format!("{NETWORK}---\n{}", container("web", "node1", None)),
    );
    let all: Vec<&Resource> = stored.iter().map(|d| &d.resource).collect();
    let users = network_users(&all, "overlay");
    let new = parsed("net.yaml", &NETWORK.replace("10.2.0.0/16", "10.9.0.0/16"));
    let errs = check_update_with_users(&stored[0].resource, &new[0].resource, &users);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let c = new[0].cause(&errs[0]);
    assert_cause(
        &c,
        "net.yaml",
        6,
        3,
        Some("spec.cidr"),
        "spec.cidr is immutable while addresses are allocated in it (used by 1 container: container/web)",
    );
}

#[test]
fn every_error_of_every_file_at_once() {
    let files = [
        SourceFile {
            name: "a.yaml".into(),
            content: NETWORK.replace("blockSize: 24", "blockSize: 8"),
        },
        SourceFile {
            name: "b.yaml".into(),
            content: format!("{}---\nkind: Contianer\n", container("Web", "node1", None)),
        },
    ];
    let errs = parse_files(&files).unwrap_err();
    let at: Vec<(Option<&str>, Option<usize>)> =
        errs.iter().map(|c| (c.file.as_deref(), c.line)).collect();
    assert_eq!(
        at,
        vec![
            (Some("a.yaml"), Some(7)),
            (Some("b.yaml"), Some(4)),
            (Some("b.yaml"), Some(11)),
            (Some("b.yaml"), Some(11)),
        ],
        "{errs:#?}"
    );
}
