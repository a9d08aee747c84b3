//! Links, published ports and egress in the lab (issue 4): TCP probes with busybox `nc` from
//! containers and from the simulated hosts, a listener outside every network, what identifies
//! a running container, a link's Ready condition and what the consumer's agent reported.
//!
//! The busybox of the lab's image has `nc` but its `wget` crashes, so every service of the
//! seed scenarios is an `nc -ll -p PORT -e echo TEXT` server and every probe is
//! `echo | nc -w 2 ADDR PORT`, which prints what the server answered.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use topo_schema::api::ObservedReport;
use topo_schema::{Kind, keys};

use crate::cmd::Background;
use crate::lab::{Lab, node_name};
use crate::poll::poll;

/// What `echo | nc -w 2 ADDR PORT` run inside `from` printed, trimmed; an error when it
/// failed or printed nothing (nothing listens, or the connection went nowhere).
pub fn nc(lab: &Lab, from: &str, addr: &str, port: u16) -> Result<String, String> {
    let script = format!("echo | nc -w 2 {addr} {port}");
    let out = lab.exec(from, &["sh", "-c", &script]);
    answer(out, &format!("{from} -> {addr}:{port}"))
}

/// The same probe from the namespace of host `node` (the node itself, not a container).
pub fn node_nc(lab: &Lab, node: u32, addr: &str, port: u16) -> Result<String, String> {
    let script = format!("echo | busybox nc -w 2 {addr} {port}");
    let out = lab.on_node(node, &["busybox", "sh", "-c", &script]);
    answer(out, &format!("{} -> {addr}:{port}", node_name(node)))
}

fn answer(out: crate::cmd::Output, what: &str) -> Result<String, String> {
    let text = out.stdout.trim().to_string();
    if out.success() && !text.is_empty() {
        Ok(text)
    } else {
        Err(format!(
            "{what}: exit {:?}, stdout {:?}, stderr {:?}",
            out.code,
            out.stdout.trim(),
            out.stderr.trim()
        ))
    }
}

/// Polls until a probe from `from` to `addr:port` answers `expect`; returns how long it took.
#[track_caller]
pub fn wait_nc(
    lab: &Lab,
    from: &str,
    addr: &str,
    port: u16,
    expect: &str,
    timeout: Duration,
) -> Duration {
    poll(
        &format!("{from} to get {expect:?} from {addr}:{port}"),
        timeout,
        || match nc(lab, from, addr, port)? {
            a if a == expect => Ok(()),
            other => Err(format!("answer {other:?}")),
        },
    )
    .1
}

/// Polls until a probe from host `node` to `addr:port` answers `expect`.
#[track_caller]
pub fn wait_node_nc(
    lab: &Lab,
    node: u32,
    addr: &str,
    port: u16,
    expect: &str,
    timeout: Duration,
) -> Duration {
    poll(
        &format!("{} to get {expect:?} from {addr}:{port}", node_name(node)),
        timeout,
        || match node_nc(lab, node, addr, port)? {
            a if a == expect => Ok(()),
            other => Err(format!("answer {other:?}")),
        },
    )
    .1
}

/// What tells one run of a container from another: Docker's id and start time, and the
/// restart count topo reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub id: String,
    pub started_at: String,
    pub restart_count: u64,
}

#[track_caller]
pub fn identity(lab: &Lab, container: &str) -> Identity {
    let d = lab
        .inspect(container)
        .unwrap_or_else(|| panic!("container {container} is not in Docker"));
    let st = lab.status("container", container);
    Identity {
        id: d["Id"].as_str().unwrap_or_default().to_string(),
        started_at: d
            .pointer("/State/StartedAt")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        restart_count: st.get("restartCount").and_then(Value::as_u64).unwrap_or(0),
    }
}

/// The environment of the running container (`env` inside it).
#[track_caller]
pub fn env_of(lab: &Lab, container: &str) -> BTreeMap<String, String> {
    let out = lab.exec(container, &["env"]).ok();
    out.stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A link's Ready condition and endpoint, as `topoctl get link NAME -o json` shows them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkState {
    pub status: String,
    pub reason: String,
    pub message: String,
    pub endpoint: Option<String>,
    pub generation: Option<i64>,
}

pub fn link_state(lab: &Lab, link: &str) -> Result<LinkState, String> {
    let v = lab.get_json("link", link)?;
    let ready = v
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or(Value::Null);
    let s = |k: &str| {
        ready
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    Ok(LinkState {
        status: s("status"),
        reason: s("reason"),
        message: s("message"),
        endpoint: v
            .pointer("/status/endpoint")
            .and_then(Value::as_str)
            .map(str::to_string),
        generation: v.pointer("/metadata/generation").and_then(Value::as_i64),
    })
}

/// Polls until the link's Ready condition has `status` and `reason`.
#[track_caller]
pub fn wait_link(
    lab: &Lab,
    link: &str,
    status: &str,
    reason: &str,
    timeout: Duration,
) -> LinkState {
    poll(
        &format!("link/{link} to be Ready={status} ({reason})"),
        timeout,
        || {
            let st = link_state(lab, link)?;
            if st.status == status && st.reason == reason {
                Ok(st)
            } else {
                Err(format!("{st:?}"))
            }
        },
    )
    .0
}

/// The report node N's agent wrote for `kind/name` (None when there is none).
pub fn report(
    lab: &Lab,
    node: u32,
    kind: Kind,
    name: &str,
) -> Result<Option<ObservedReport>, String> {
    lab.etcd_json(
        &keys::report(&node_name(node), kind, name),
        "an ObservedReport",
    )
}

/// A TCP server in the lab's root namespace (192.168.100.254, outside every network) that
/// answers `text` to every connection: the "outside" containers egress to.
pub struct Listener {
    pub port: u16,
    _server: Background,
}

impl Listener {
    #[track_caller]
    pub fn start(lab: &Lab, port: u16, text: &str) -> Listener {
        let mut c = lab.command("busybox");
        c.args([
            "nc",
            "-ll",
            "-p",
            &port.to_string(),
            "-e",
            "busybox",
            "echo",
            text,
        ]);
        let server = lab.spawn(c);
        // Ready when it answers from the root namespace itself.
        poll(
            &format!("the root namespace's listener on port {port}"),
            Duration::from_secs(20),
            || {
                let script = format!("echo | busybox nc -w 2 127.0.0.1 {port}");
                let out = lab.sh("busybox", &["sh", "-c", &script]);
                if out.stdout.trim() == text {
                    Ok(())
                } else {
                    Err(out.combined())
                }
            },
        );
        Listener {
            port,
            _server: server,
        }
    }
}

/// The documents of a multi-document manifest.
pub fn split_docs(yaml: &str) -> Vec<String> {
    yaml.split("\n---\n")
        .map(|d| d.trim_matches('\n').to_string() + "\n")
        .collect()
}

/// The document of `kind` named `name` (by its `  name: NAME` line).
pub fn doc_named<'a>(docs: &'a [String], kind: &str, name: &str) -> Option<&'a String> {
    let kind_line = format!("\nkind: {kind}\n");
    let name_line = format!("\n  name: {name}\n");
    docs.iter().find(|d| {
        let d = format!("\n{d}");
        d.contains(&kind_line) && d.contains(&name_line)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_by_kind_and_name() {
        let y = "# c\napiVersion: v\nkind: Network\nmetadata:\n  name: n\n---\napiVersion: v\nkind: Container\nmetadata:\n  name: redis\nspec: {}\n---\nkind: Container\nmetadata:\n  name: redis2\n";
        let d = split_docs(y);
        assert_eq!(d.len(), 3);
        assert!(
            doc_named(&d, "Container", "redis")
                .unwrap()
                .contains("spec: {}")
        );
        assert!(
            doc_named(&d, "Container", "redis2")
                .unwrap()
                .ends_with("name: redis2\n")
        );
        assert!(doc_named(&d, "Network", "redis").is_none());
        assert!(doc_named(&d, "Network", "n").unwrap().starts_with("# c\n"));
    }
}
