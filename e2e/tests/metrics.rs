//! Issue 12, metrics and health: the controller's `/metrics` and every agent's own HTTPS
//! endpoint (`/healthz`, `/readyz`, `/metrics`) on a lab, scraped with the identities
//! `topo-pki init` issues, checked by `promtool check metrics` (Debian's prometheus
//! package, installed by e2e/lab/install-deps.sh) and refused to everyone else.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use topo_e2e::https::{agent_url, controller_url, get_as};
use topo_e2e::manifest::{docs, network, on, web};
use topo_e2e::{Lab, Scenario, converge, poll, run_scenarios, secs};
use topo_schema::names::{bridge_name, gre_port_name};

const NET: &str = "e2e-metrics";

#[test]
fn metrics() {
    let lab = Lab::up("metrics", 2);
    run_scenarios(
        &lab,
        &[("scrape", scrape), ("who_may_scrape", who_may_scrape)],
    );
}

fn get(sc: &Scenario, who: Option<&str>, url: &str) -> (u16, String) {
    get_as(sc, who, url)
}

/// The value of the sample `series` (name with its labels, as printed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// `promtool check metrics` on `text`: names, units, types and help against Prometheus's
/// conventions. Fails loudly when promtool is missing.
fn promtool_check(what: &str, text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("failed to run promtool (Debian's prometheus package; e2e/lab/install-deps.sh installs it): {e}")
        });
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("failed to feed promtool: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("failed to wait for promtool: {e}"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics found problems in the {what}'s metrics:\n{said}\n--- metrics\n{text}"
    );
}

/// A series and what its value must satisfy.
type Want<'a> = (&'a str, fn(f64) -> bool);

/// Polls the scrape of `url` until every series in `want` has a value `ok` accepts.
fn scrape_until(sc: &Scenario, url: &str, want: &[Want<'_>]) -> String {
    poll(&format!("the metrics of {url}"), secs(60), || {
        let (code, text) = get(sc, Some("metrics"), url);
        if code != 200 {
            return Err(format!("status {code}: {text}"));
        }
        for (series, ok) in want {
            match sample(&text, series) {
                Some(v) if ok(v) => {}
                other => return Err(format!("{series} is {other:?} in:\n{text}")),
            }
        }
        Ok(text)
    })
    .0
}

fn scrape(sc: &Scenario) {
    sc.apply(
        &docs(&[
            network(NET, "10.62.0.0/16"),
            web("m1", "node1", &[on(NET)]),
            web("m2", "node2", &[on(NET)]),
        ]),
        converge(),
    );
    let net = format!("{{network=\"{NET}\"}}");
    let used = format!("topo_ipam_addresses_used{net}");
    let size = format!("topo_ipam_addresses{net}");
    let text = scrape_until(
        sc,
        &controller_url("/metrics"),
        &[
            ("topo_objects{kind=\"Container\"}", |v| v == 2.0),
            ("topo_objects{kind=\"Network\"}", |v| v == 1.0),
            (&used, |v| v == 2.0),
            (&size, |v| v == 65534.0),
            ("topo_tunnels_up", |v| v >= 1.0),
            (
                "topo_reconciles_total{kind=\"derive\",result=\"success\"}",
                |v| v >= 1.0,
            ),
            (
                "topo_etcd_request_duration_seconds_count{op=\"txn\"}",
                |v| v >= 1.0,
            ),
            (
                "topo_etcd_request_duration_seconds_count{op=\"list\"}",
                |v| v >= 1.0,
            ),
        ],
    );
    promtool_check("controller", &text);
    sc.step("the controller's metrics count what was applied and pass promtool");

    let agent = agent_url(1, "/metrics");
    let text = scrape_until(
        sc,
        &agent,
        &[
            ("topo_slice_entries{kind=\"container\"}", |v| v == 1.0),
            ("topo_slice_entries{kind=\"tunnel\"}", |v| v == 1.0),
            ("topo_tunnels_up", |v| v == 1.0),
            (
                "topo_reconciles_total{kind=\"container\",result=\"success\"}",
                |v| v >= 1.0,
            ),
            (
                "topo_reconcile_duration_seconds_count{kind=\"tunnel\",result=\"success\"}",
                |v| v >= 1.0,
            ),
            (
                "topo_etcd_request_duration_seconds_count{op=\"list\"}",
                |v| v >= 1.0,
            ),
            (
                "topo_etcd_request_duration_seconds_count{op=\"put\"}",
                |v| v >= 1.0,
            ),
        ],
    );
    promtool_check("agent", &text);
    sc.step("node1's agent's metrics count its slice and pass promtool");

    let before = sample(&text, "topo_drift_repairs_total{kind=\"Tunnel\"}").unwrap_or(0.0);
    let (br, port) = (bridge_name(NET), gre_port_name(NET, "node2"));
    sc.vsctl(1, &["del-port", &br, &port]).ok();
    let text = poll(
        "the repair of the deleted GRE port to be counted",
        secs(60),
        || {
            let (_, text) = get(sc, Some("metrics"), &agent);
            match sample(&text, "topo_drift_repairs_total{kind=\"Tunnel\"}") {
                Some(v) if v > before => Ok(text.clone()),
                other => Err(format!(
                    "topo_drift_repairs_total{{kind=\"Tunnel\"}} is {other:?} (before: {before})"
                )),
            }
        },
    )
    .0;
    promtool_check("agent", &text);
    sc.step("a GRE port deleted by hand is repaired and counted");

    let (_, controller) = get(sc, Some("metrics"), &controller_url("/metrics"));
    dashboard_queries_only_served_metrics(sc, &[&controller, &text]);
    prometheus_config_checks(sc);
}

/// The names of the samples in scraped texts (`topo_x_total`, `topo_y_bucket`, ...).
fn sample_names(texts: &[&str]) -> BTreeSet<String> {
    texts
        .iter()
        .flat_map(|t| t.lines())
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect()
}

/// Every `topo_` name a query of deploy/grafana/topo.json uses is one a scrape served.
fn dashboard_queries_only_served_metrics(sc: &Scenario, texts: &[&str]) {
    let served = sample_names(texts);
    let path = sc.repo().join("deploy/grafana/topo.json");
    let raw = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()));
    let dash: serde_json::Value = serde_json::from_str(&raw)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap_or_else(|| panic!("{} has no panels", path.display()))
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    assert!(
        exprs.len() >= 10,
        "the dashboard has {} queries",
        exprs.len()
    );
    let mut unknown = BTreeSet::new();
    for e in &exprs {
        for (i, _) in e.match_indices("topo_") {
            let name: String = e[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !served.contains(&name) {
                unknown.insert(name);
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics nobody serves: {unknown:?}; served: {served:?}"
    );
    sc.step("every metric the Grafana dashboard queries is served");
}

/// deploy/prometheus/prometheus.yml with the lab's PKI in place of /etc/topo/pki passes
/// `promtool check config` (which also opens the certificate files).
fn prometheus_config_checks(sc: &Scenario) {
    let path = sc.repo().join("deploy/prometheus/prometheus.yml");
    let raw = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()));
    let pki = sc.pki_dir();
    let text = raw.replace("/etc/topo/pki", &pki.to_string_lossy());
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("failed to make a temp dir: {e}"));
    let file = dir.path().join("prometheus.yml");
    std::fs::write(&file, text).unwrap_or_else(|e| panic!("failed to write {file:?}: {e}"));
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("failed to run promtool: {e}"));
    assert!(
        out.status.success(),
        "promtool check config refused deploy/prometheus/prometheus.yml:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    sc.step("deploy/prometheus/prometheus.yml passes promtool check config");
}

fn who_may_scrape(sc: &Scenario) {
    let agent = agent_url(1, "/metrics");
    for probe in ["/healthz", "/readyz"] {
        let url = agent_url(1, probe);
        let (code, body) = get(sc, None, &url);
        assert_eq!(
            (code, body.trim()),
            (200, "ok"),
            "{url} without credentials"
        );
    }
    let (code, body) = get(sc, None, &agent);
    assert_eq!(
        code, 401,
        "the agent's /metrics without a certificate: {body}"
    );
    for (who, user) in [
        ("nodes/node2", "node:node2"),
        ("admin", "admin"),
        ("viewer", "viewer"),
    ] {
        let (code, body) = get(sc, Some(who), &agent);
        assert_eq!(code, 403, "the agent's /metrics as {who}: {body}");
        assert!(
            body.contains(&format!("user \"{user}\"")),
            "the refusal names the user: {body}"
        );
    }
    let metrics = controller_url("/metrics");
    for who in ["metrics", "viewer", "admin"] {
        let (code, body) = get(sc, Some(who), &metrics);
        assert_eq!(code, 200, "the controller's /metrics as {who}: {body}");
    }
    let (code, body) = get(sc, None, &metrics);
    assert_eq!(
        code, 401,
        "the controller's /metrics without credentials: {body}"
    );
    let (code, body) = get(sc, Some("nodes/node1"), &metrics);
    assert_eq!(code, 403, "the controller's /metrics as node1: {body}");
    assert!(body.contains("node:node1"), "{body}");
    let (code, body) = get(
        sc,
        Some("metrics"),
        &controller_url("/apis/topo.dev/v1alpha1/containers"),
    );
    assert_eq!(code, 403, "the scrape identity listing containers: {body}");
    assert!(
        body.contains("role metrics allows get of /metrics"),
        "the refusal names the role: {body}"
    );
    sc.step("only the scrape identity reads an agent's metrics; view, admin and metrics read the controller's");
}
