//! kubectl's habits in topoctl (SPEC.md, "Operating"): `get KIND/NAME`, `-o jsonpath`,
//! `-o custom-columns`, `--sort-by`, `get --raw`, `label`, `annotate`, `edit`, `explain`,
//! and the default `blockSize` — the real binary against a real etcd and an in-process
//! controller over TLS.

mod common;

use common::*;
use serde_json::Value;

/// BASE and two more containers: web publishes port 80, api port 10000 (so a numeric sort
/// and a string sort disagree).
const MORE: &str = "
---
apiVersion: topo.dev/v1alpha1
kind: Container
metadata:
  name: web
  labels: {app: web}
spec:
  node: node1
  image: topo/busybox:latest
  networks:
    - network: overlay
  ports:
    - {containerPort: 80, hostPort: 8080}
---
apiVersion: topo.dev/v1alpha1
kind: Container
metadata:
  name: api
  labels: {app: api}
spec:
  node: node1
  image: topo/busybox:latest
  networks:
    - network: overlay
  ports:
    - {containerPort: 10000}
";

async fn lab_with_three() -> Lab {
    let lab = Lab::start().await;
    let f = lab.write("all.yaml", &format!("{BASE}{MORE}"));
    let out = lab.topoctl(&["apply", "-f", &f]).await;
    assert_eq!(out.code, 0, "{out:?}");
    lab
}

fn ok(out: &Out) -> &str {
    assert_eq!(out.code, 0, "{out:?}");
    &out.stdout
}

fn failed<'a>(out: &'a Out, want: &str) -> &'a str {
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains(want), "stderr lacks {want:?}: {out:?}");
    assert_eq!(
        out.stderr.trim_end().lines().count(),
        1,
        "one line: {out:?}"
    );
    &out.stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_by_kind_and_name_mixed() {
    let lab = lab_with_three().await;
    let out = lab.topoctl(&["get", "container/redis"]).await;
    let text = ok(&out);
    assert!(text.starts_with("NAME    STATUS"), "{out:?}");
    assert!(text.contains("\nredis   "), "{out:?}");

    let out = lab
        .topoctl(&["get", "container/redis", "network/overlay", "c/web"])
        .await;
    let text = ok(&out);
    assert!(text.contains("\ncontainer/redis "), "{out:?}");
    assert!(text.contains("\ncontainer/web "), "{out:?}");
    assert!(text.contains("\nnetwork/overlay "), "{out:?}");

    let out = lab.topoctl(&["get", "c,net", "-o", "name"]).await;
    assert_eq!(
        ok(&out),
        "container/api\ncontainer/redis\ncontainer/web\nnetwork/overlay\n"
    );
    let out = lab.topoctl(&["get", "container/redis", "-o", "json"]).await;
    let v: Value = serde_json::from_str(ok(&out)).expect("one object");
    assert_eq!(v["metadata"]["name"], "redis", "{out:?}");
    let out = lab
        .topoctl(&["get", "container/redis", "net/overlay", "-o", "json"])
        .await;
    let v: Value = serde_json::from_str(ok(&out)).expect("a list");
    assert_eq!(v["kind"], "List", "{out:?}");

    let out = lab.topoctl(&["get", "container/redis", "c/nope"]).await;
    failed(&out, "error: container \"nope\" not found");
    assert!(
        out.stdout.contains("redis"),
        "what exists is shown: {out:?}"
    );
    let out = lab.topoctl(&["get", "c", "container/redis"]).await;
    failed(
        &out,
        "there is no need to name a kind as a separate argument",
    );
    let out = lab.topoctl(&["get", "pod/x"]).await;
    failed(&out, "error: unknown kind \"pod\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonpath_custom_columns_and_sort_by() {
    let lab = lab_with_three().await;
    let get = |args: &'static [&'static str]| {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all
    };
    let out = lab
        .topoctl(&get(&["c", "-o", "jsonpath={.items[*].metadata.name}"]))
        .await;
    assert_eq!(ok(&out), "api redis web", "no newline added, as kubectl");
    let out = lab
        .topoctl(&get(&[
            "c/redis",
            "-o",
            "jsonpath={.metadata.name} on {.spec.node}",
        ]))
        .await;
    assert_eq!(ok(&out), "redis on node1");
    let out = lab
        .topoctl(&get(&[
            "c",
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name}{"\t"}{.metadata.labels.app}{"\n"}{end}"#,
        ]))
        .await;
    assert_eq!(ok(&out), "api\tapi\nredis\tredis\nweb\tweb\n");
    let out = lab
        .topoctl(&get(&[
            "c",
            "-o",
            r#"jsonpath={.items[?(@.spec.ports[0].hostPort==8080)].metadata.name}"#,
        ]))
        .await;
    assert_eq!(ok(&out), "web");
    let out = lab
        .topoctl(&get(&["net/overlay", "-o", "jsonpath={.spec.nope}"]))
        .await;
    assert_eq!(ok(&out), "", "missing keys print nothing by default");
    let out = lab
        .topoctl(&get(&[
            "net/overlay",
            "-o",
            "jsonpath={.spec.nope}",
            "--allow-missing-template-keys=false",
        ]))
        .await;
    failed(
        &out,
        "error: failed to evaluate jsonpath \"{.spec.nope}\": nope is not found",
    );
    let out = lab.topoctl(&get(&["c", "-o", "jsonpath={.items["])).await;
    failed(
        &out,
        "error: invalid jsonpath \"{.items[\" at character 8: unclosed [ (expected ])",
    );
    let tpl = lab.write("names.tpl", "{range .items[*]}{.metadata.name},{end}");
    let out = lab
        .topoctl(&["get", "c", "-o", &format!("jsonpath-file={tpl}")])
        .await;
    assert_eq!(ok(&out), "api,redis,web,");

    let out = lab
        .topoctl(&get(&[
            "c",
            "-o",
            "custom-columns=NAME:.metadata.name,NODE:.spec.node,PORTS:.spec.ports[*].containerPort",
        ]))
        .await;
    assert_eq!(
        ok(&out),
        "NAME    NODE    PORTS\napi     node1   10000\nredis   node1   <none>\nweb     node1   80\n"
    );
    let cols = lab.write(
        "cols.txt",
        "NAME  APP\n.metadata.name  .metadata.labels.app\n",
    );
    let out = lab
        .topoctl(&["get", "c", "-o", &format!("custom-columns-file={cols}")])
        .await;
    assert_eq!(
        ok(&out),
        "NAME    APP\napi     api\nredis   redis\nweb     web\n"
    );
    let out = lab.topoctl(&get(&["c", "-o", "custom-columns=NAME"])).await;
    failed(
        &out,
        "error: invalid custom-columns \"NAME\": \"NAME\" is not HEADER:JSONPATH",
    );

    // Numbers sort as numbers (80 < 10000), objects without the field first.
    let out = lab
        .topoctl(&get(&[
            "c",
            "--sort-by=.spec.ports[0].containerPort",
            "-o",
            "name",
        ]))
        .await;
    assert_eq!(ok(&out), "container/redis\ncontainer/web\ncontainer/api\n");
    let out = lab
        .topoctl(&get(&[
            "c",
            "--sort-by={.metadata.labels.app}",
            "-o",
            "name",
        ]))
        .await;
    assert_eq!(ok(&out), "container/api\ncontainer/redis\ncontainer/web\n");
    let out = lab
        .topoctl(&get(&["c", "--sort-by=.spec.ports[0].containerPort"]))
        .await;
    let names: Vec<&str> = ok(&out)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["redis", "web", "api"], "{out:?}");
    let out = lab.topoctl(&get(&["c", "--sort-by=.spec.nope"])).await;
    failed(&out, "couldn't find any field with path \".spec.nope\"");
    let out = lab.topoctl(&get(&["c", "--sort-by=.spec["])).await;
    failed(&out, "invalid jsonpath \".spec[\" at character 6");
    let out = lab.topoctl(&get(&["c", "-o", "table"])).await;
    failed(
        &out,
        "unable to match a printer suitable for the output format \"table\"",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_raw() {
    let lab = lab_with_three().await;
    let out = lab
        .topoctl(&["get", "--raw", "/apis/topo.dev/v1alpha1/networks"])
        .await;
    let v: Value = serde_json::from_str(ok(&out)).expect("the API's own JSON");
    assert_eq!(v["items"][0]["metadata"]["name"], "overlay", "{out:?}");
    let out = lab
        .topoctl(&[
            "get",
            "--raw",
            "/apis/topo.dev/v1alpha1/containers?labelSelector=app%3Dweb",
        ])
        .await;
    let v: Value = serde_json::from_str(ok(&out)).expect("json");
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1), "{out:?}");
    let out = lab.topoctl(&["get", "--raw", "/readyz"]).await;
    assert_eq!(ok(&out), "ok\n");
    let out = lab.topoctl(&["get", "--raw", "/nope"]).await;
    failed(&out, "error: no such path");
    let out = lab.topoctl(&["get", "--raw", "nope"]).await;
    failed(&out, "--raw takes an absolute path");
    // The viewer reads through --raw too, authenticated as itself.
    let out = lab
        .topoctl_as(
            "viewer",
            &["get", "--raw", "/apis/topo.dev/v1alpha1/nodes"],
            "",
        )
        .await;
    assert!(ok(&out).contains("node1"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_and_annotate() {
    let lab = lab_with_three().await;
    let value_of = |path: &str| format!("jsonpath={path}");

    let out = lab
        .topoctl(&["label", "container/redis", "tier=back"])
        .await;
    assert_eq!(ok(&out), "container/redis labeled\n");
    let out = lab
        .topoctl(&["get", "c/redis", "-o", &value_of("{.metadata.labels.tier}")])
        .await;
    assert_eq!(ok(&out), "back");
    let out = lab.topoctl(&["label", "c", "redis", "tier=back"]).await;
    assert_eq!(ok(&out), "container/redis not labeled\n");
    let out = lab.topoctl(&["label", "c", "redis", "tier=front"]).await;
    failed(
        &out,
        "error: container/redis: 'tier' already has a value (back), and --overwrite is false",
    );
    let out = lab
        .topoctl(&["label", "c", "redis", "tier=front", "--overwrite"])
        .await;
    assert_eq!(ok(&out), "container/redis labeled\n");
    let out = lab
        .topoctl(&[
            "label",
            "c/redis",
            "tier=x",
            "--overwrite",
            "--dry-run=server",
        ])
        .await;
    assert_eq!(ok(&out), "container/redis labeled (server dry run)\n");
    let out = lab
        .topoctl(&["get", "c/redis", "-o", &value_of("{.metadata.labels.tier}")])
        .await;
    assert_eq!(ok(&out), "front", "a dry run changes nothing");
    let out = lab.topoctl(&["label", "c/redis", "tier-"]).await;
    assert_eq!(ok(&out), "container/redis labeled\n");
    let out = lab.topoctl(&["label", "c/redis", "tier-"]).await;
    assert_eq!(ok(&out), "container/redis not labeled\n");
    assert!(out.stderr.contains("label \"tier\" not found."), "{out:?}");

    let out = lab
        .topoctl(&["label", "c", "-l", "app!=redis", "team=a"])
        .await;
    assert_eq!(ok(&out), "container/api labeled\ncontainer/web labeled\n");
    let out = lab
        .topoctl(&["get", "c", "-l", "team=a", "-o", "name"])
        .await;
    assert_eq!(ok(&out), "container/api\ncontainer/web\n");

    let out = lab.topoctl(&["label", "c/nope", "a=b"]).await;
    failed(&out, "error: container \"nope\" not found");
    let out = lab.topoctl(&["label", "c/redis", "a=b c"]).await;
    failed(&out, "error: invalid label value \"b c\"");
    let out = lab
        .topoctl(&["label", "c/redis", "topo.dev/derived-from=x"])
        .await;
    failed(&out, "error: container/redis: metadata.labels");
    let out = lab
        .topoctl_as("viewer", &["label", "c/redis", "a=b"], "")
        .await;
    failed(
        &out,
        "error: container/redis: user \"viewer\" cannot update container/redis",
    );

    let out = lab
        .topoctl(&["annotate", "c/redis", "note=the main one"])
        .await;
    assert_eq!(ok(&out), "container/redis annotated\n");
    let out = lab.topoctl(&["annotate", "c/redis", "note=other"]).await;
    failed(
        &out,
        "error: container/redis: --overwrite is false but found the following declared annotation(s): 'note' already has a value (the main one)",
    );
    let out = lab
        .topoctl(&["annotate", "c/redis", "note=other", "--overwrite"])
        .await;
    assert_eq!(ok(&out), "container/redis annotated\n");
    let out = lab
        .topoctl(&[
            "get",
            "c/redis",
            "-o",
            &value_of("{.metadata.annotations.note}"),
        ])
        .await;
    assert_eq!(ok(&out), "other");
    let out = lab.topoctl(&["annotate", "c/redis", "note-"]).await;
    assert_eq!(ok(&out), "container/redis annotated\n");
}

/// Writers racing on one object: each label is read, changed and written with its
/// resourceVersion, and a conflict is retried on a fresh read, so none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_labels_are_all_kept() {
    let lab = lab_with_three().await;
    let children: Vec<_> = (0..4)
        .map(|i| lab.spawn(&["label", "container/redis", &format!("k{i}=v{i}")]))
        .collect();
    for child in children {
        let out = child.wait_with_output().await.expect("label ran");
        assert!(out.status.success(), "{out:?}");
    }
    let out = lab
        .topoctl(&["get", "c/redis", "-o", "jsonpath={.metadata.labels}"])
        .await;
    let labels: Value = serde_json::from_str(ok(&out)).expect("labels as JSON");
    for i in 0..4 {
        assert_eq!(labels[format!("k{i}")], format!("v{i}"), "{out:?}");
    }
}

async fn image(lab: &Lab) -> String {
    let out = lab
        .topoctl(&["get", "c/redis", "-o", "jsonpath={.spec.image}"])
        .await;
    ok(&out).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_with_an_editor_script() {
    let lab = lab_with_three().await;
    let out = lab
        .topoctl_env(&["edit", "c/redis"], &[("EDITOR", "true")])
        .await;
    assert_eq!(ok(&out), "");
    assert!(
        out.stderr.contains("Edit cancelled, no changes made."),
        "{out:?}"
    );
    let out = lab
        .topoctl_env(&["edit", "c/redis"], &[("EDITOR", "truncate -s 0")])
        .await;
    assert!(
        out.stderr.contains("Edit cancelled, saved file was empty."),
        "{out:?}"
    );
    assert_eq!(out.code, 0, "{out:?}");

    // A change is written back; KUBE_EDITOR wins over EDITOR.
    let change = lab.script(
        "change.sh",
        "sed -i 's|topo/busybox:latest|topo/busybox:2|' \"$1\"\n",
    );
    let out = lab
        .topoctl_env(
            &["edit", "container", "redis"],
            &[("KUBE_EDITOR", &change), ("EDITOR", "false")],
        )
        .await;
    assert_eq!(ok(&out), "container/redis edited\n");
    assert_eq!(image(&lab).await, "topo/busybox:2");

    // Invalid (here: a bad node name; at the controller: an address outside the network):
    // the editor reopens with the errors on top; the script records what it was shown and
    // fixes it.
    let shown = lab.dir.path().join("shown.yaml");
    let fix = lab.script(
        "fix.sh",
        &format!(
            "if grep -q 'was not valid' \"$1\"; then\n  cat \"$1\" >> {shown}\n  sed -i -e 's|node: Node_1|node: node1|' -e 's|    ip: 10.3.0.5|    ip: 10.2.1.77|' -e 's|busybox:2|busybox:3|' \"$1\"\nelif grep -q 'node: node1' \"$1\" && ! grep -q 'ip:' \"$1\"; then\n  if [ -e {marker} ]; then\n    sed -i 's|- network: overlay|- network: overlay\\n    ip: 10.3.0.5|' \"$1\"\n  else\n    touch {marker}\n    sed -i 's|node: node1|node: Node_1|' \"$1\"\n  fi\nfi\n",
            shown = shown.display(),
            marker = lab.dir.path().join("first-done").display()
        ),
    );
    let out = lab
        .topoctl_env(&["edit", "c/redis"], &[("EDITOR", &fix)])
        .await;
    assert_eq!(ok(&out), "container/redis edited\n");
    let seen = std::fs::read_to_string(&shown).expect("the reopened file");
    assert!(
        seen.contains("# container/redis was not valid:\n# * spec.node: "),
        "{seen}"
    );
    assert_eq!(image(&lab).await, "topo/busybox:3");
    std::fs::remove_file(&shown).expect("reset");
    let out = lab
        .topoctl_env(&["edit", "c/redis"], &[("EDITOR", &fix)])
        .await;
    assert_eq!(ok(&out), "container/redis edited\n");
    let seen = std::fs::read_to_string(&shown).expect("the reopened file");
    assert!(
        seen.contains("# * spec.networks[0].ip: 10.3.0.5 is outside network overlay"),
        "the controller's error is shown too: {seen}"
    );
    let out = lab
        .topoctl(&["get", "c/redis", "-o", "jsonpath={.spec.networks[0].ip}"])
        .await;
    assert_eq!(ok(&out), "10.2.1.77");

    // Saving the refused text again gives up, keeping the copy.
    let stubborn = lab.script(
        "stubborn.sh",
        "sed -i 's|node: node1|node: Node_1|' \"$1\"\n",
    );
    let out = lab
        .topoctl_env(&["edit", "c/redis"], &[("EDITOR", &stubborn)])
        .await;
    let err = failed(
        &out,
        "error: container/redis: Edit cancelled, no valid changes were saved; your edited copy is in ",
    );
    let copy = err
        .trim_end()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        std::fs::read_to_string(&copy)
            .expect("the copy")
            .contains("node: Node_1")
    );
    let _ = std::fs::remove_file(&copy);

    // Someone else writes while the editor is open: a conflict naming the versions, and
    // the edited copy kept.
    let racer = lab.script(
        "racer.sh",
        &format!(
            "{topoctl} --server {url} label container/redis raced=yes\nsed -i 's|busybox:3|busybox:4|' \"$1\"\n",
            topoctl = TOPOCTL,
            url = lab.url()
        ),
    );
    let out = lab
        .topoctl_env(&["edit", "c/redis"], &[("EDITOR", &racer)])
        .await;
    let err = failed(&out, "error: container/redis: resourceVersion ");
    assert!(err.contains("is stale"), "{out:?}");
    let copy = err
        .trim_end()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        std::fs::read_to_string(&copy)
            .expect("the copy")
            .contains("busybox:4"),
        "{out:?}"
    );
    let _ = std::fs::remove_file(&copy);
    assert_eq!(
        image(&lab).await,
        "topo/busybox:3",
        "the conflicting edit is not written"
    );

    let out = lab
        .topoctl_env(&["edit", "c/redis"], &[("EDITOR", "false")])
        .await;
    failed(&out, "error: the editor \"false\" failed");
    let out = lab
        .topoctl_env(&["edit", "c/nope"], &[("EDITOR", "true")])
        .await;
    failed(&out, "error: container \"nope\" not found");
    let out = lab
        .topoctl_env(&["edit", "c/redis", "c/web"], &[("EDITOR", "true")])
        .await;
    failed(&out, "edit one object at a time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_size_defaults_to_24() {
    let lab = Lab::start().await;
    let f = lab.write(
        "nets.yaml",
        "apiVersion: topo.dev/v1alpha1\nkind: Network\nmetadata: {name: wide}\nspec: {cidr: 10.2.0.0/16}\n---\napiVersion: topo.dev/v1alpha1\nkind: Network\nmetadata: {name: small}\nspec: {cidr: 10.9.0.0/26}\n",
    );
    let out = lab.topoctl(&["apply", "-f", &f]).await;
    ok(&out);
    let out = lab.topoctl(&["apply", "-f", &f]).await;
    assert_eq!(
        ok(&out),
        "network/wide unchanged\nnetwork/small unchanged\n",
        "leaving blockSize out is no change"
    );
    let out = lab
        .topoctl(&[
            "get",
            "net",
            "-o",
            "custom-columns=NAME:.metadata.name,BLOCK:.spec.blockSize",
        ])
        .await;
    assert_eq!(ok(&out), "NAME    BLOCK\nsmall   26\nwide    24\n");
    let out = lab.topoctl(&["get", "net", "wide", "-o", "yaml"]).await;
    assert!(ok(&out).contains("  blockSize: 24\n"), "{out:?}");
    let out = lab.topoctl(&["get", "net", "wide"]).await;
    assert!(ok(&out).contains("10.2.0.0/16   /24"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_kinds_and_fields() {
    let home = tempfile::tempdir().expect("home");
    let run = |args: &'static [&'static str]| run_command(topoctl_command(home.path(), args), "");
    let out = run(&["explain", "container.spec.networks"]).await;
    let text = ok(&out);
    assert!(text.contains("KIND:       Container\n"), "{out:?}");
    assert!(text.contains("FIELD: networks <[]Object>\n"), "{out:?}");
    assert!(text.contains("  network\t<string> -required-\n"), "{out:?}");
    let out = run(&["explain", "network.spec.blockSize"]).await;
    assert!(ok(&out).contains("default 24"), "{out:?}");
    let out = run(&["explain", "c.spec.netwroks"]).await;
    failed(
        &out,
        "error: field \"netwroks\" does not exist in container.spec; did you mean \"networks\"?",
    );
    let out = run(&["explain", "pods"]).await;
    failed(&out, "error: unknown kind \"pods\"");
}
