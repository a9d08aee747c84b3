//! An etcd outage as clients see it, and the recovery (issue 9, "etcd unreachable"): shared
//! by the single-member test (SIGSTOP of the only member) and the three-member one (a
//! majority stopped).
//!
//! While etcd cannot answer: every replica's `/readyz` is 503 and `/healthz` 200; every kind
//! of write — a small apply, an apply large enough for the intent log, a delete, a create —
//! fails with 503 "etcd unavailable" within [`WRITE_LIMIT`]; reads still answer, from the
//! cache, with a `Warning: 299` header that topoctl prints. A write that timed out may still
//! be applied once etcd answers again (etcd had it queued): nothing here assumes it was not.
//!
//! Objects the outage scenarios create run on a "ghost" node: a Node object no agent serves,
//! so its containers get addresses (IPAM is exercised) without starting anything.

use std::time::{Duration, Instant};

use crate::cmd::Output;
use crate::lab::Lab;
use crate::manifest::{container, docs, on};
use crate::poll::try_poll;

/// The bound on a failing write: the controller's 5 s etcd limit, plus topoctl starting and
/// its TLS handshake.
pub const WRITE_LIMIT: Duration = Duration::from_secs(6);

/// A Node no agent serves (address outside the lab's hosts).
pub fn ghost_node(name: &str, last_octet: u8) -> String {
    format!(
        "apiVersion: topo.dev/v1alpha1\nkind: Node\nmetadata:\n  name: {name}\nspec:\n  address: 192.168.100.{last_octet}\n  datapath: netdev\n"
    )
}

/// `n` sleeping containers `<prefix>-<i>` on `node`, attached to `network`.
pub fn sleepers(prefix: &str, node: &str, network: &str, n: usize) -> String {
    let cmd = ["sleep".to_string(), "1000000".to_string()];
    docs(
        &(0..n)
            .map(|i| container(&format!("{prefix}-{i}"), node, &cmd, &[on(network)]))
            .collect::<Vec<_>>(),
    )
}

/// `curl` as the lab's admin against replica `i`: (status code, response headers, body).
pub fn http(
    lab: &Lab,
    replica: u32,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String, String), String> {
    let pki = lab.pki_dir();
    let file = |f: &str| pki.join(f).display().to_string();
    let url = format!("{}{path}", lab.server_url(replica));
    let (ca, cert, key) = (file("ca.crt"), file("admin.crt"), file("admin.key"));
    let mut args = vec![
        "-sS",
        "-D",
        "-",
        "-X",
        method,
        "--max-time",
        "20",
        "--cacert",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
    ];
    if let Some(b) = body {
        args.extend(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    args.push(&url);
    let out = lab.sh("curl", &args);
    if !out.success() {
        return Err(out.describe_failure());
    }
    let (head, body) = out
        .stdout
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP head in {:?}", out.stdout))?;
    let code = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {head:?}"))?;
    Ok((code, head.to_string(), body.to_string()))
}

/// Runs a write with topoctl against replica `replica` and checks that etcd's outage refuses
/// it in time: not acknowledged, "etcd unavailable" on stderr, within [`WRITE_LIMIT`].
/// Returns how long it took.
pub fn refused_write(lab: &Lab, replica: u32, what: &str, args: &[&str]) -> Duration {
    let t = Instant::now();
    let out = lab.topoctl_at(replica, args, Duration::from_secs(120));
    let took = t.elapsed();
    assert!(
        !out.success(),
        "{what} was acknowledged while etcd was unavailable:\n{}",
        out.describe_failure()
    );
    assert!(
        out.stderr.contains("etcd unavailable"),
        "{what} failed without saying etcd is unavailable:\n{}",
        out.describe_failure()
    );
    assert!(
        took < WRITE_LIMIT,
        "{what} took {took:?} to fail (limit {WRITE_LIMIT:?}):\n{}",
        out.describe_failure()
    );
    eprintln!(
        "e2e[{}]: {what} refused in {:.2} s: {}",
        lab.name(),
        took.as_secs_f64(),
        out.stderr.trim()
    );
    took
}

/// Writes a manifest to a temporary file; the file lives as long as the returned handle.
pub fn manifest_file(yaml: &str) -> tempfile::NamedTempFile {
    let f = tempfile::Builder::new()
        .prefix("topo-e2e-")
        .suffix(".yaml")
        .tempfile()
        .unwrap_or_else(|e| panic!("failed to create a temporary manifest: {e}"));
    std::fs::write(f.path(), yaml).unwrap_or_else(|e| panic!("failed to write a manifest: {e}"));
    f
}

/// Polls every replica's `/readyz` until each answers `want` (200 or 503); returns how long
/// that took.
#[track_caller]
pub fn wait_readyz(lab: &Lab, want: u16, timeout: Duration) -> Duration {
    let what = format!("every replica's /readyz to answer {want}");
    match try_poll(&what, timeout, || {
        for i in 1..=lab.controllers() {
            let (code, _, body) = http(lab, i, "GET", "/readyz", None)?;
            if code != want {
                return Err(format!("replica {i}: {code} {body}"));
            }
        }
        Ok(())
    }) {
        Ok(((), took)) => took,
        Err(e) => panic!("{e}\n{}", lab.diagnostics()),
    }
}

/// What a client sees while etcd cannot answer (see the module documentation). `ghost` is a
/// node no agent serves, `network` a network, `existing` a container that exists (to delete;
/// once etcd answers again that delete may have been applied after all: pick a disposable one).
/// Returns each refused write with the time it took.
#[track_caller]
pub fn check_unavailable(
    lab: &Lab,
    ghost: &str,
    network: &str,
    existing: &str,
) -> Vec<(String, Duration)> {
    wait_readyz(lab, 503, Duration::from_secs(30));
    for i in 1..=lab.controllers() {
        let (code, _, body) =
            http(lab, i, "GET", "/readyz", None).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            code == 503 && body.contains("etcd unavailable"),
            "replica {i} /readyz: {code} {body}"
        );
        let (code, _, body) =
            http(lab, i, "GET", "/healthz", None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(code, 200, "replica {i} /healthz while etcd is down: {body}");
    }
    let small = manifest_file(&sleepers("outage-small", ghost, network, 1));
    // 100 containers and their address claims: over etcd's 128 operations per transaction,
    // so the apply goes through the intent log.
    let large = manifest_file(&sleepers("outage-large", ghost, network, 100));
    let (small_p, large_p) = (
        small.path().display().to_string(),
        large.path().display().to_string(),
    );
    let mut took = vec![];
    for (what, args) in [
        ("a one-object apply", vec!["apply", "-f", small_p.as_str()]),
        (
            "a 100-object apply (intent log)",
            vec!["apply", "-f", large_p.as_str()],
        ),
        ("a delete", vec!["delete", "container", existing]),
    ] {
        for i in 1..=lab.controllers() {
            let w = format!("{what} through replica {i}");
            took.push((w.clone(), refused_write(lab, i, &w, &args)));
        }
    }
    let body = serde_json::json!({
        "apiVersion": "topo.dev/v1alpha1", "kind": "Container",
        "metadata": {"name": "outage-create"},
        "spec": {"node": ghost, "image": "topo/busybox:latest", "networks": [{"network": network}]}
    })
    .to_string();
    let path = format!("{}/containers", topo_schema::api::API_PREFIX);
    let t = Instant::now();
    let (code, _, resp) =
        http(lab, 1, "POST", &path, Some(&body)).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        code == 503 && resp.contains("etcd unavailable"),
        "a create while etcd is down answered {code}: {resp}"
    );
    took.push(("a create (POST, 503)".into(), t.elapsed()));
    check_stale_reads(lab);
    took
}

/// Reads answer from the cache and say they may be stale: topoctl prints the warning on
/// stderr, the API sends it as a `Warning: 299` header.
#[track_caller]
fn check_stale_reads(lab: &Lab) {
    for i in 1..=lab.controllers() {
        let out: Output = lab.topoctl_at(i, &["get", "containers"], Duration::from_secs(60));
        assert!(
            out.success(),
            "a read failed while etcd was down:\n{}",
            out.describe_failure()
        );
        assert!(
            out.stderr.contains("Warning: etcd unavailable since")
                && out.stderr.contains("may be stale"),
            "a read from the cache did not warn that it may be stale:\n{}",
            out.describe_failure()
        );
        let path = format!("{}/networks", topo_schema::api::API_PREFIX);
        let (code, head, _) = http(lab, i, "GET", &path, None).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            code == 200
                && head
                    .to_ascii_lowercase()
                    .contains("warning: 299 - \"etcd unavailable"),
            "GET {path} while etcd is down: {code}\n{head}"
        );
    }
}

/// How long recovery took, from the moment etcd could answer again.
#[derive(Debug, Clone, Copy)]
pub struct Recovery {
    /// Until every replica's /readyz is 200.
    pub ready: Duration,
    /// Until a new apply is acknowledged.
    pub first_write: Duration,
    /// Until the object of that apply is Ready (the leader derived it, an agent ran it).
    pub converged: Duration,
}

/// After etcd is back (`since`): waits for readiness, applies `probe` (objects an agent
/// runs) until acknowledged, and waits for them to be Ready.
#[track_caller]
pub fn recover(lab: &Lab, since: Instant, probe: &str, probe_refs: &[&str]) -> Recovery {
    wait_readyz(lab, 200, Duration::from_secs(60));
    let ready = since.elapsed();
    let file = manifest_file(probe);
    let path = file.path().display().to_string();
    let write = try_poll(
        "an apply to be acknowledged after etcd came back",
        Duration::from_secs(60),
        || {
            let out = lab.topoctl(&["apply", "-f", &path]);
            if out.success() {
                Ok(())
            } else {
                Err(out.combined())
            }
        },
    );
    if let Err(e) = write {
        panic!("{e}\n{}", lab.diagnostics());
    }
    let first_write = since.elapsed();
    lab.wait_ready(probe_refs, Duration::from_secs(120));
    Recovery {
        ready,
        first_write,
        converged: since.elapsed(),
    }
}

/// Deletes every container whose name starts with one of `prefixes`: writes a scenario's
/// clean-up does not know of (a write refused during an outage may still be applied when
/// etcd answers again: it was queued there).
#[track_caller]
pub fn delete_named(lab: &Lab, prefixes: &[&str]) {
    let names: Vec<String> = lab
        .list_json("containers", None)
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c.pointer("/metadata/name")?.as_str().map(str::to_string))
        .filter(|n| prefixes.iter().any(|p| n.starts_with(p)))
        .collect();
    if names.is_empty() {
        return;
    }
    let mut args = vec!["delete", "containers"];
    args.extend(names.iter().map(String::as_str));
    args.push("--ignore-not-found");
    let out = lab.topoctl(&args);
    assert!(out.success(), "{}", out.describe_failure());
}

/// Writes cut short by an outage leave no intent behind in the log (a decided one is rolled
/// forward, an undecided one discarded).
#[track_caller]
pub fn no_intent_left(lab: &Lab) {
    let prefix = topo_schema::keys::intents_prefix();
    crate::poll::poll(
        "the intent log to be empty",
        Duration::from_secs(60),
        || {
            let left = lab.etcd_prefix(&prefix)?;
            if left.is_empty() {
                Ok(())
            } else {
                Err(left.keys().cloned().collect::<Vec<_>>().join(", "))
            }
        },
    );
}

/// No probe of `runs` lost (each had its whole reply window), and each sent at least
/// `min_sent`.
#[track_caller]
pub fn no_probe_lost(runs: &[crate::probe::ProbeRun], during: &str, min_sent: usize) {
    for r in runs {
        eprintln!("e2e: {during}: {}", r.summary());
    }
    for r in runs {
        assert!(
            r.sent() >= min_sent,
            "{during}: {} sent only {} probes",
            r.label,
            r.sent()
        );
        assert!(r.lost().is_empty(), "{during}: {}", r.summary());
    }
}

/// Waits until every container of `mesh` answers a ping from every other one.
#[track_caller]
pub fn wait_all_ping(lab: &Lab, mesh: &[(String, std::net::Ipv4Addr)]) {
    for (from, _) in mesh {
        for (to, ip) in mesh {
            if from != to {
                lab.wait_ping(from, *ip, Duration::from_secs(60));
            }
        }
    }
}
