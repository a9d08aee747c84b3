//! The examples of kubectl's JSONPath documentation (kubernetes.io, "JSONPath Support"),
//! on its own input, then what topo's objects need, then the errors.

use super::*;
use serde_json::json;

fn docs_input() -> Value {
    json!({
      "kind": "List",
      "items": [
        {
          "kind": "None",
          "metadata": {"name": "127.0.0.1", "labels": {"kubernetes.io/hostname": "127.0.0.1"}},
          "status": {
            "capacity": {"cpu": "4"},
            "addresses": [{"type": "LegacyHostIP", "address": "127.0.0.1"}]
          }
        },
        {
          "kind": "None",
          "metadata": {"name": "127.0.0.2"},
          "status": {
            "capacity": {"cpu": "8"},
            "addresses": [
              {"type": "LegacyHostIP", "address": "127.0.0.2"},
              {"type": "another", "address": "127.0.0.3"}
            ]
          }
        }
      ],
      "users": [
        {"name": "myself", "user": {}},
        {"name": "e2e", "user": {"username": "admin", "password": "secret"}}
      ]
    })
}

fn render(template: &str, data: &Value) -> String {
    Template::parse(template)
        .unwrap_or_else(|e| panic!("{template}: {e}"))
        .render(data, true)
        .unwrap_or_else(|e| panic!("{template}: {e}"))
}

#[test]
fn kubectl_documented_examples() {
    let d = docs_input();
    for (template, want) in [
        ("{.kind}", "List"),
        ("{['kind']}", "List"),
        ("{$.kind}", "List"),
        ("{..name}", "127.0.0.1 127.0.0.2 myself e2e"),
        ("{.items[*].metadata.name}", "127.0.0.1 127.0.0.2"),
        ("{.users[0].name}", "myself"),
        ("{.items[0].status.capacity}", r#"{"cpu":"4"}"#),
        ("{.users[?(@.name==\"e2e\")].user.password}", "secret"),
        (
            "{range .items[*]}[{.metadata.name}, {.status.capacity}] {end}",
            r#"[127.0.0.1, {"cpu":"4"}] [127.0.0.2, {"cpu":"8"}] "#,
        ),
        (
            "{range .items[*]}{.metadata.name}{\"\\t\"}{end}",
            "127.0.0.1\t127.0.0.2\t",
        ),
        ("{.items[-1:].metadata.name}", "127.0.0.2"),
        ("{.items[0:1].metadata.name}", "127.0.0.1"),
        (
            "{.items[*].status.addresses[?(@.type=='LegacyHostIP')].address}",
            "127.0.0.1 127.0.0.2",
        ),
        (
            "{.items[0].metadata.labels.kubernetes\\.io/hostname}",
            "127.0.0.1",
        ),
        (
            "{.items[0].metadata.labels['kubernetes.io/hostname']}",
            "127.0.0.1",
        ),
        ("{.users[*].user.username}", "admin"),
        ("{.users[0,1].name}", "myself e2e"),
        ("{.users[*]['name']}", "myself e2e"),
        ("{.users[-1].name}", "e2e"),
        ("{.users[?(@.user.password)].name}", "e2e"),
        ("{.users[?(@.name != 'e2e')].name}", "myself"),
        (
            "names: {.items[*].metadata.name}\n",
            "names: 127.0.0.1 127.0.0.2\n",
        ),
        ("no braces at all", "no braces at all"),
        ("{.kind} {\"and\"} {.users[1].name}", "List and e2e"),
    ] {
        assert_eq!(render(template, &d), want, "{template}");
    }
}

#[test]
fn topo_objects() {
    let list = json!({
      "apiVersion": "topo.dev/v1alpha1", "kind": "List",
      "items": [
        {"kind": "Container", "metadata": {"name": "web", "labels": {"topo.dev/derived-from": "x"}},
         "spec": {"node": "node2", "ports": [{"containerPort": 80, "hostPort": 8080}]},
         "status": {"restartCount": 3, "addresses": {"overlay": "10.2.2.2"}}},
        {"kind": "Container", "metadata": {"name": "db"},
         "spec": {"node": "node1", "ports": []},
         "status": {"restartCount": 0, "addresses": {"overlay": "10.2.1.2"}}}
      ]
    });
    for (template, want) in [
        ("{.items[*].spec.node}", "node2 node1"),
        (
            "{.items[?(@.status.restartCount > 1)].metadata.name}",
            "web",
        ),
        (
            "{.items[?(@.status.restartCount <= 0)].metadata.name}",
            "db",
        ),
        (
            "{.items[?(@.spec.node == 'node1')].status.addresses.overlay}",
            "10.2.1.2",
        ),
        ("{.items[0].spec.ports[0].hostPort}", "8080"),
        ("{.items[0].metadata.labels.topo\\.dev/derived-from}", "x"),
        ("{.items[*].spec.missing}", ""),
        ("{.items[5].metadata.name}", ""),
        (
            "{range .items[*]}{.metadata.name}={.status.addresses.overlay}{\"\\n\"}{end}",
            "web=10.2.2.2\ndb=10.2.1.2\n",
        ),
        (
            "{range .items[*]}{range .spec.ports[*]}{.containerPort}{end}{end}",
            "80",
        ),
        ("{.items[::-1].metadata.name}", "db web"),
        (
            "{.items[0].spec.ports}",
            r#"[{"containerPort":80,"hostPort":8080}]"#,
        ),
    ] {
        assert_eq!(render(template, &list), want, "{template}");
    }
}

#[test]
fn missing_keys_can_be_refused() {
    let t = Template::parse("{.spec.nope}").unwrap();
    let v = json!({"spec": {}});
    assert_eq!(t.render(&v, true).unwrap(), "");
    assert_eq!(
        t.render(&v, false).unwrap_err().to_string(),
        "failed to evaluate jsonpath \"{.spec.nope}\": nope is not found"
    );
    let t = Template::parse("{.a[3]}").unwrap();
    assert!(
        t.render(&json!({"a": [1]}), false)
            .unwrap_err()
            .to_string()
            .contains("array index 3 is out of bounds (length 1)")
    );
}

#[test]
fn errors_name_the_position() {
    for (template, position, message) in [
        ("{.items[}", 9, "unexpected '}'"),
        ("{.items[0", 8, "unclosed [ (expected ])"),
        ("{.metadata.name", 1, "unclosed { (expected })"),
        ("{.metadata.}", 12, "expected a field name after ."),
        (
            "{metadata.name}",
            2,
            "expected a path such as .metadata.name",
        ),
        ("{range .items[*]}{.x}", 1, "{range} without an {end}"),
        ("{.a}{end}", 5, "{end} without a {range} before it"),
        ("{\"abc}", 2, "unterminated string"),
        ("{}", 1, "empty {}"),
        ("{.a[?(@.b = 1)]}", 11, "unknown operator ="),
        ("{.a[?(@.b == )]}", 14, "expected @.field, a quoted string"),
        ("{.a[1:2:0]}", 9, "a slice's step cannot be 0"),
        ("ok {.a[x]}", 8, "expected an index"),
    ] {
        let e = Template::parse(template).expect_err(template);
        assert_eq!(e.position, position, "{template}: {e}");
        assert!(e.message.contains(message), "{template}: {e}");
        assert!(
            e.to_string().starts_with(&format!(
                "invalid jsonpath {template:?} at character {position}: "
            )),
            "{e}"
        );
    }
}

#[test]
fn relaxed_paths() {
    let v = json!({"metadata": {"name": "web"}, "spec": {"networks": [{"network": "a"}, {"network": "b"}]}});
    for src in [
        ".metadata.name",
        "{.metadata.name}",
        "metadata.name",
        " .metadata.name ",
    ] {
        let e = Expr::parse_relaxed(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        assert_eq!(e.find(&v), [&json!("web")], "{src}");
    }
    let e = Expr::parse_relaxed(".spec.networks[*].network").unwrap();
    assert_eq!(e.find(&v), [&json!("a"), &json!("b")]);
    assert!(Expr::parse_relaxed(".nope").unwrap().find(&v).is_empty());

    let err = Expr::parse_relaxed(".metadata.name[").unwrap_err();
    assert_eq!(
        (err.template.as_str(), err.position),
        (".metadata.name[", 15),
        "{err}"
    );
    let err = Expr::parse_relaxed("{.a[}").unwrap_err();
    assert_eq!(err.position, 4, "{err}");
    let err = Expr::parse_relaxed("metadata..").unwrap_err();
    assert_eq!(err.position, 11, "{err}");
    assert!(Expr::parse_relaxed("").is_err());
    assert!(Expr::parse_relaxed(".a .b").is_err());
}
