//! The real `topoctl` binary against a real etcd and an in-process controller.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use topo_schema::{Kind, ObjectRef};

async fn lab_with_base() -> (Lab, String) {
    let lab = Lab::start().await;
    let f = lab.write("base.yaml", BASE);
    let out = lab.topoctl(&["apply", "-f", &f]).await;
    assert_eq!(out.code, 0, "{out:?}");
    (lab, f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_describe_delete() {
    let lab = Lab::start().await;
    let f = lab.write("base.yaml", BASE);

    let out = lab.topoctl(&["apply", "-f", &f, "--dry-run=server"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains("container/redis created (server dry run)"),
        "{out:?}"
    );
    let out = lab.topoctl(&["get", "containers"]).await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, ""),
        "a dry run stores nothing: {out:?}"
    );
    assert!(out.stderr.contains("No resources found."), "{out:?}");

    let out = lab.topoctl(&["apply", "-f", &f]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout, "node/node1 created\nnetwork/overlay created\ncontainer/redis created\n",
        "{out:?}"
    );
    let out = lab.topoctl(&["apply", "-f", &f]).await;
    assert_eq!(
        out.stdout, "node/node1 unchanged\nnetwork/overlay unchanged\ncontainer/redis unchanged\n",
        "{out:?}"
    );
    let out = lab.topoctl(&["apply", "-f", &f, "--dry-run=client"]).await;
    assert!(
        out.stdout.contains("container/redis unchanged (dry run)"),
        "{out:?}"
    );
    // The same file through stdin, changed: configured.
    let changed = BASE.replace("topo/busybox:latest", "topo/busybox:1");
    let out = lab.topoctl_stdin(&["apply", "-f", "-"], &changed).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("container/redis configured"), "{out:?}");

    let out = lab.topoctl(&["get", "c"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let mut lines = out.stdout.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "STATUS", "AGE", "NODE", "IMAGE", "ADDRESSES"],
        "{out:?}"
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        (row[0], row[3], row[4]),
        ("redis", "node1", "topo/busybox:1"),
        "{out:?}"
    );

    let out = lab.topoctl(&["get", "networks", "-o", "wide"]).await;
    assert!(out.stdout.starts_with("NAME      STATUS"), "{out:?}");
    assert!(out.stdout.contains("10.2.0.0/16   /24"), "{out:?}");

    // -o json: a List of many, the object itself for one name.
    let out = lab.topoctl(&["get", "no", "-o", "json"]).await;
    let v: Value = serde_json::from_str(&out.stdout).expect("json list");
    assert_eq!(v["apiVersion"], "topo.dev/v1alpha1");
    assert_eq!(v["kind"], "List");
    assert_eq!(v["items"][0]["metadata"]["name"], "node1");
    let out = lab
        .topoctl(&["get", "container", "redis", "-o", "json"])
        .await;
    let v: Value = serde_json::from_str(&out.stdout).expect("json object");
    assert_eq!(
        (v["kind"].as_str(), v["metadata"]["name"].as_str()),
        (Some("Container"), Some("redis"))
    );
    let out = lab.topoctl(&["get", "c", "redis", "-o", "yaml"]).await;
    assert!(out.stdout.contains("kind: Container\n"), "{out:?}");

    let out = lab.topoctl(&["get", "all", "-o", "name"]).await;
    assert_eq!(
        out.stdout, "node/node1\nnetwork/overlay\ncontainer/redis\n",
        "{out:?}"
    );
    let out = lab.topoctl(&["get", "all"]).await;
    assert!(out.stdout.contains("\ncontainer/redis "), "{out:?}");
    assert!(out.stdout.contains("node/node1 "), "{out:?}");

    let out = lab
        .topoctl(&["get", "no", "-l", "zone=a", "-o", "name"])
        .await;
    assert_eq!(out.stdout, "node/node1\n", "{out:?}");
    let out = lab
        .topoctl(&["get", "no", "-l", "zone=b", "-o", "name"])
        .await;
    assert_eq!(out.stdout, "", "{out:?}");

    let out = lab.topoctl(&["get", "c", "nope"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("error: container \"nope\" not found"),
        "{out:?}"
    );
    let out = lab.topoctl(&["get", "pods"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.starts_with("error: unknown kind \"pods\""),
        "{out:?}"
    );

    let out = lab.topoctl(&["describe", "c", "redis"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    for want in [
        "Name:",
        "redis",
        "Kind:",
        "Container",
        "Labels:",
        "app=redis",
        "Spec:",
        "Conditions:",
        "Events:",
    ] {
        assert!(
            out.stdout.contains(want),
            "describe lacks {want:?}: {out:?}"
        );
    }

    let out = lab
        .topoctl(&["delete", "c", "redis", "--dry-run=server"])
        .await;
    assert_eq!(
        out.stdout, "container \"redis\" deleted (server dry run)\n",
        "{out:?}"
    );
    let out = lab
        .topoctl(&["delete", "c", "redis", "--wait", "--timeout", "30s"])
        .await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "container \"redis\" deleted\n"),
        "{out:?}"
    );
    let out = lab.topoctl(&["get", "c", "redis"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    let out = lab.topoctl(&["delete", "c", "redis"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("error: container \"redis\" not found"),
        "{out:?}"
    );
    let out = lab
        .topoctl(&["delete", "c", "redis", "--ignore-not-found"])
        .await;
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{out:?}");

    // delete -f removes what the file names, referrers first.
    let out = lab
        .topoctl(&["delete", "-f", &f, "--ignore-not-found"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout, "network \"overlay\" deleted\nnode \"node1\" deleted\n",
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_exit_codes() {
    let (lab, f) = lab_with_base().await;
    let out = lab.topoctl(&["diff", "-f", &f]).await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, ""),
        "no change: {out:?}"
    );

    let changed = lab.write(
        "changed.yaml",
        &BASE.replace("topo/busybox:latest", "topo/busybox:2"),
    );
    let out = lab.topoctl(&["diff", "-f", &changed]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout
            .contains("--- live/container/redis\n+++ merged/container/redis\n"),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("-  image: topo/busybox:latest\n+  image: topo/busybox:2\n"),
        "{out:?}"
    );
    assert!(
        !out.stdout.contains("node/node1"),
        "unchanged objects are not shown: {out:?}"
    );
    // diff changes nothing.
    let out = lab.topoctl(&["get", "c", "redis", "-o", "json"]).await;
    assert!(out.stdout.contains("topo/busybox:latest"), "{out:?}");

    let bad = lab.write("bad.yaml", "apiVersion: topo.dev/v1alpha1\nkind: Container\nmetadata: {name: x}\nspec:\n  nod: node1\n");
    let out = lab.topoctl(&["diff", "-f", &bad]).await;
    assert_eq!(out.code, 2, "errors are >1: {out:?}");
    let out = topoctl_unreachable(&["diff", "-f", &f]).await;
    assert_eq!(out.code, 2, "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifest_names_file_line_column_and_changes_nothing() {
    let lab = Lab::start().await;
    let bad = BASE.replace(
        "    - network: overlay\n",
        "    - network: overlay\n      ip: 10.3.0.5\n",
    );
    let f = lab.write("bad.yaml", &bad);
    let out = lab.topoctl(&["apply", "-f", &f]).await;
    assert_eq!(out.code, 1, "{out:?}");
    let line = bad
        .lines()
        .position(|l| l.contains("ip: 10.3.0.5"))
        .expect("ip line")
        + 1;
    let want = format!("{f}:{line}:");
    assert!(out.stderr.starts_with("error: "), "{out:?}");
    assert!(out.stderr.contains(&want), "want {want}: {out:?}");
    assert!(
        out.stderr.contains("container/redis: spec.networks[0].ip:"),
        "{out:?}"
    );
    assert!(out.stderr.contains("outside"), "{out:?}");
    assert_eq!(out.stdout, "", "{out:?}");

    let yaml = lab.write(
        "syntax.yaml",
        "apiVersion: topo.dev/v1alpha1\nkind: Node\nmetadata: {name: n1\nspec: {}\n",
    );
    let name = lab.write("name.yaml", &BASE.replace("name: redis", "name: Bad_Name"));
    let out = lab.topoctl(&["apply", "-f", &yaml, "-f", &name]).await;
    assert_eq!(out.code, 1, "{out:?}");
    let mut lines = out.stderr.lines();
    assert_eq!(
        lines.next(),
        Some("error: 2 errors; nothing was changed"),
        "{out:?}"
    );
    assert!(
        lines
            .next()
            .unwrap_or_default()
            .starts_with(&format!("  {yaml}:4:")),
        "{out:?}"
    );
    let name_line = BASE
        .lines()
        .position(|l| l.contains("name: redis"))
        .expect("name line")
        + 1;
    assert!(
        lines
            .next()
            .unwrap_or_default()
            .starts_with(&format!("  {name}:{name_line}:")),
        "every file's errors, each on its own line: {out:?}"
    );

    let typo = lab.write("typo.yaml", "apiVersion: topo.dev/v1alpha1\nkind: Node\nmetadata: {name: n1}\nspec:\n  adress: 10.0.0.1\n");
    let out = lab.topoctl(&["apply", "-f", &typo]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains(&format!("{typo}:5:3")), "{out:?}");
    assert!(
        out.stderr.contains("address"),
        "suggests the field: {out:?}"
    );

    for kind in ["nodes", "networks", "containers"] {
        let out = lab.topoctl(&["get", kind, "-o", "name"]).await;
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (0, ""),
            "nothing was stored: {out:?}"
        );
    }
}

async fn topoctl_unreachable(args: &[&str]) -> Out {
    let home = tempfile::tempdir().expect("home");
    let mut all = vec!["--server", "https://127.0.0.1:1"];
    all.extend_from_slice(args);
    let mut cmd = topoctl_command(home.path(), &all);
    cmd.env("TOPO_CONFIG", config_of("admin"));
    run_command(cmd, "").await
}

#[tokio::test]
async fn server_address_errors_are_clear() {
    let out = topoctl_unreachable(&["get", "c"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        out.stderr,
        "error: cannot reach the controller at https://127.0.0.1:1: connection refused (is topo-controller running? set --server or TOPO_SERVER)\n"
    );

    let home = tempfile::tempdir().expect("home");
    let out = run_command(topoctl_command(home.path(), &["get", "c"]), "").await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("--server") && out.stderr.contains("TOPO_SERVER"),
        "{out:?}"
    );

    // The environment, then the config file, are used when there is no flag; the
    // credentials always come from the config file.
    let admin = std::fs::read_to_string(config_of("admin")).expect("admin.yaml");
    let creds: String = admin
        .lines()
        .filter(|l| !l.starts_with("server:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let cfg = home.path().join("topo.yaml");
    std::fs::write(&cfg, format!("server: https://127.0.0.1:3\n{creds}")).expect("config");
    let mut cmd = topoctl_command(home.path(), &["get", "c"]);
    cmd.env("TOPO_CONFIG", &cfg)
        .env("TOPO_SERVER", "https://127.0.0.1:2");
    let out = run_command(cmd, "").await;
    assert!(out.stderr.contains("at https://127.0.0.1:2:"), "{out:?}");
    let mut cmd = topoctl_command(home.path(), &["get", "c"]);
    cmd.env("TOPO_CONFIG", &cfg);
    let out = run_command(cmd, "").await;
    assert!(out.stderr.contains("at https://127.0.0.1:3:"), "{out:?}");
    std::fs::create_dir_all(home.path().join(".config/topo")).expect("config dir");
    std::fs::write(
        home.path().join(".config/topo/config.yaml"),
        format!("server: https://127.0.0.1:4\n{creds}"),
    )
    .expect("config");
    let out = run_command(topoctl_command(home.path(), &["get", "c"]), "").await;
    assert!(out.stderr.contains("at https://127.0.0.1:4:"), "{out:?}");

    // Plain HTTP is refused before anything is sent.
    let mut cmd = topoctl_command(home.path(), &["--server", "http://127.0.0.1:4", "get", "c"]);
    cmd.env("TOPO_CONFIG", &cfg);
    let out = run_command(cmd, "").await;
    assert!(out.stderr.contains("HTTPS only"), "{out:?}");
}

#[tokio::test]
async fn offline_verbs() {
    let home = tempfile::tempdir().expect("home");
    let out = run_command(topoctl_command(home.path(), &["schema", "container"]), "").await;
    assert_eq!(out.code, 0, "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).expect("schema json");
    assert_eq!(v["allOf"][0]["$ref"], "#/$defs/Container");
    assert_eq!(
        v["$defs"]["Container"]["properties"]["kind"]["const"],
        "Container"
    );
    let out = run_command(topoctl_command(home.path(), &["schema"]), "").await;
    let v: Value = serde_json::from_str(&out.stdout).expect("schema json");
    assert_eq!(v["oneOf"].as_array().map(Vec::len), Some(5));
    for shell in ["bash", "zsh", "fish"] {
        let out = run_command(topoctl_command(home.path(), &["completion", shell]), "").await;
        assert_eq!(out.code, 0, "{out:?}");
        assert!(
            out.stdout.contains("topoctl") && out.stdout.contains("apply"),
            "{shell}: {out:?}"
        );
    }
    let out = run_command(topoctl_command(home.path(), &["version", "--client"]), "").await;
    assert_eq!(
        out.stdout,
        format!("topoctl version {}\n", env!("CARGO_PKG_VERSION"))
    );
    let out = run_command(topoctl_command(home.path(), &["apply", "--help"]), "").await;
    assert!(
        out.stdout.contains("--dry-run") && out.stdout.contains("--wait"),
        "{out:?}"
    );
}

/// Reports node1 and redis Ready, as an agent would.
async fn fake_agent_ready(lab: &Lab) {
    lab.heartbeat("node1").await;
    let out = lab.topoctl(&["get", "c", "redis", "-o", "json"]).await;
    let v: Value = serde_json::from_str(&out.stdout).expect("container json");
    let generation = v["metadata"]["generation"].as_i64().unwrap_or(1);
    lab.report(
        "node1",
        ObjectRef::new(Kind::Container, "redis"),
        generation,
        true,
        "Running",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_wait_finishes_once_the_agent_reports_ready() {
    let lab = Lab::start().await;
    let f = lab.write("base.yaml", BASE);
    let child = lab.spawn(&["apply", "-f", &f, "--wait", "--timeout", "60s"]);
    // Let topoctl apply and start waiting, then play the agent.
    lab.eventually(30, "the apply", || async {
        lab.topoctl(&["get", "c", "redis", "-o", "name"]).await.code == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    fake_agent_ready(&lab).await;
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("apply --wait finished")
        .expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout
            .starts_with("node/node1 created\nnetwork/overlay created\ncontainer/redis created\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("waiting for 3 objects to be Ready"),
        "{stdout}"
    );
    assert!(
        stdout.contains("container/redis not Ready: "),
        "progress names what is pending: {stdout}"
    );
    assert!(stdout.ends_with("3/3 Ready\n"), "{stdout}");

    let out = lab.topoctl(&["get", "c"]).await;
    assert!(out.stdout.contains(" Ready "), "{out:?}");
    let out = lab
        .topoctl(&[
            "wait",
            "container/redis",
            "node/node1",
            "--for=condition=Ready",
            "--timeout=10s",
        ])
        .await;
    assert_eq!(
        out.stdout, "container/redis condition met\nnode/node1 condition met\n",
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_time_out_saying_what_is_not_ready() {
    let (lab, f) = lab_with_base().await;
    let out = lab
        .topoctl(&["apply", "-f", &f, "--wait", "--timeout", "2s"])
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .starts_with("error: timed out after 2s waiting for 2 of 3 objects (Ready=True):"),
        "{out:?}"
    );
    assert!(out.stderr.contains("\n  container/redis: "), "{out:?}");
    assert!(out.stderr.contains("\n  node/node1: NodeLost"), "{out:?}");

    let out = lab
        .topoctl(&[
            "wait",
            "c/redis",
            "--for",
            "condition=Ready",
            "--timeout",
            "1s",
        ])
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("container/redis: "), "{out:?}");
    let out = lab
        .topoctl(&["wait", "c/ghost", "--for", "condition=Ready"])
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("container \"ghost\" not found"),
        "{out:?}"
    );

    // --for=delete ends once the object is gone.
    let child = lab.spawn(&["wait", "container/redis", "--for=delete", "--timeout=30s"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = lab.topoctl(&["delete", "c", "redis"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("wait --for=delete finished")
        .expect("output");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "container/redis deleted\n"
    );
}

async fn next(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("a line in 30s")
        .expect("read")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_streams_changes() {
    let (lab, _) = lab_with_base().await;
    let mut child = lab.spawn(&["get", "containers", "-w"]);
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    assert!(
        next(&mut lines)
            .await
            .unwrap_or_default()
            .starts_with("NAME")
    );
    assert!(
        next(&mut lines)
            .await
            .unwrap_or_default()
            .starts_with("redis ")
    );

    let more = BASE.replace("name: redis", "name: web");
    let f = lab.write("web.yaml", &more);
    assert_eq!(lab.topoctl(&["apply", "-f", &f]).await.code, 0);
    loop {
        let line = next(&mut lines).await.expect("the watch goes on");
        if line.starts_with("web ") {
            break;
        }
        assert!(
            line.starts_with("redis ") || line.starts_with("web "),
            "{line}"
        );
    }
    // A status change shows up too.
    fake_agent_ready(&lab).await;
    loop {
        let line = next(&mut lines).await.expect("the watch goes on");
        if line.starts_with("redis ") && line.contains(" Ready ") {
            break;
        }
    }
    let _ = child.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_list_and_filter() {
    let (lab, _) = lab_with_base().await;
    lab.eventually(30, "an AddressAllocated event", || async {
        let out = lab.topoctl(&["events", "--for", "container/redis"]).await;
        out.code == 0 && out.stdout.contains("AddressAllocated")
    })
    .await;
    let out = lab.topoctl(&["events"]).await;
    let header: Vec<&str> = out
        .stdout
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["OBJECT", "TYPE", "REASON", "AGE", "COUNT", "MESSAGE"],
        "{out:?}"
    );
    let out = lab.topoctl(&["describe", "container", "redis"]).await;
    assert!(
        out.stdout.contains("AddressAllocated"),
        "describe shows events: {out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_wait_waits_until_the_agents_removed_the_object() {
    let (lab, _) = lab_with_base().await;
    let redis = ObjectRef::new(Kind::Container, "redis");
    // The node's agent still holds the container: its report is there.
    lab.report("node1", redis.clone(), 1, true, "Running").await;
    let out = lab
        .topoctl(&["delete", "c", "redis", "--wait", "--timeout", "2s"])
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("container/redis")
            && out.stderr.contains("agent still reports it (Running)"),
        "{out:?}"
    );
    // The object is gone from the API already; the wait is for the node.
    let out = lab.topoctl(&["get", "c", "redis"]).await;
    assert_eq!(out.code, 1, "{out:?}");

    // Created again and deleted again: this time the agent removes it from the host and
    // then its report, and the wait ends then, not before.
    let f = lab.write("base.yaml", BASE);
    let out = lab.topoctl(&["apply", "-f", &f]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let mut child = lab.spawn(&["delete", "c", "redis", "--wait", "--timeout", "30s"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "delete --wait ended while the agent still reported the container"
    );
    let mut c = lab.etcd.client().await;
    c.delete(
        topo_schema::keys::report("node1", Kind::Container, "redis"),
        None,
    )
    .await
    .expect("delete report");
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("delete --wait finished")
        .expect("output");
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_round_reports_static_and_cross_object_errors_together() {
    let (lab, _) = lab_with_base().await;
    let f = lab.write(
        "two.yaml",
        "apiVersion: topo.dev/v1alpha1\nkind: Container\nmetadata: {name: bad1}\nspec:\n  node: node1\n  image: topo/busybox:latest\n  networks:\n    - network: overlay\n      ip: 10.3.0.5\n---\napiVersion: topo.dev/v1alpha1\nkind: Container\nmetadata: {name: bad2}\nspec:\n  node: node1\n  image: topo/busybox:latest\n  networks: [{network: overlay}]\n  ports:\n    - {containerPort: 70000}\n",
    );
    let out = lab.topoctl(&["apply", "-f", &f]).await;
    assert_eq!(out.code, 1, "{out:?}");
    let mut lines = out.stderr.lines();
    assert_eq!(
        lines.next(),
        Some("error: 2 errors; nothing was changed"),
        "{out:?}"
    );
    assert!(
        lines.next().unwrap_or_default().starts_with(&format!(
            "  {f}:9:7: container/bad1: spec.networks[0].ip: 10.3.0.5 is outside network overlay"
        )),
        "the cross-object error, located, comes with the static one: {out:?}"
    );
    assert!(
        lines.next().unwrap_or_default().starts_with(&format!(
            "  {f}:19:8: container/bad2: spec.ports[0].containerPort: 70000 is out of range"
        )),
        "{out:?}"
    );
    let out = lab.topoctl(&["get", "c", "bad1"]).await;
    assert_eq!(out.code, 1, "nothing was created: {out:?}");
}
