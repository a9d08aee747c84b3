//! Issue 12, real hosts: the agent starts from its systemd unit's command line. The unit
//! (deploy/systemd/topo-agent.service) is read as systemd would: `ExecStart=` and the
//! variables of its `EnvironmentFile=`, written from the packaged example
//! (deploy/etc/agent.env) with this lab's values. The agent so started must take over
//! node1 from the lab's own agent: heartbeat again and run a container to Ready. What
//! cannot run here (systemd as PID 1) is checked by deploy/deb-install-check.

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use topo_e2e::manifest::{docs, network, on, web};
use topo_e2e::{Lab, converge, node_address, poll};

/// The PATH systemd gives system services (systemd.exec(5), "Environment variables").
const SYSTEMD_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The `KEY=value` lines of a unit file's `[Service]` section, in order (keys repeat).
fn service_lines(unit: &str) -> Vec<(String, String)> {
    let mut in_service = false;
    let mut out = vec![];
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service
            && !line.starts_with('#')
            && let Some((k, v)) = line.split_once('=')
        {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// An environment file's variables (systemd's syntax as far as the example uses it).
fn env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn unit_file_agent() {
    let lab = Lab::up("unit-file", 1);
    let unit = fs::read_to_string(lab.repo().join("deploy/systemd/topo-agent.service"))
        .expect("deploy/systemd/topo-agent.service");
    let lines = service_lines(&unit);
    let get = |k: &str| {
        lines
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("topo-agent.service has no {k}="))
    };
    assert_eq!(get("EnvironmentFile"), "/etc/topo/agent.env");
    let exec: Vec<String> = get("ExecStart")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(
        exec[0], "/usr/bin/topo-agent",
        "the package installs it there"
    );

    // The packaged example, filled in for node1 of this lab: every variable it sets must be
    // one the agent reads (an unknown one would be ignored silently, so check them all).
    let example =
        fs::read_to_string(lab.repo().join("deploy/etc/agent.env")).expect("deploy/etc/agent.env");
    let mut env = env_file(&example);
    let pki = lab.pki_dir();
    let lab_values = [
        ("TOPO_NODE", "node1".to_string()),
        ("TOPO_ADDRESS", node_address(1).to_string()),
        ("TOPO_DATAPATH", "netdev".to_string()),
        ("TOPO_ETCD_ENDPOINTS", lab.etcd_endpoints().to_string()),
        ("TOPO_ETCD_CA", pki.join("ca.crt").display().to_string()),
        (
            "TOPO_ETCD_CERT",
            pki.join("nodes/node1.crt").display().to_string(),
        ),
        (
            "TOPO_ETCD_KEY",
            pki.join("nodes/node1.key").display().to_string(),
        ),
        (
            "TOPO_OVSDB",
            format!("unix:{}", lab.node_dir(1).join("db.sock").display()),
        ),
        ("DOCKER_HOST", lab.docker_host()),
    ];
    for (k, v) in lab_values {
        assert!(env.contains_key(k), "deploy/etc/agent.env does not set {k}");
        env.insert(k.to_string(), v);
    }
    let agent_bin = lab.bin().join("topo-agent");
    let mut help = lab.command(&agent_bin);
    help.arg("--help");
    let help = lab.run(help, Duration::from_secs(30));
    for k in env
        .keys()
        .filter(|k| k.starts_with("TOPO_") || *k == "DOCKER_HOST")
    {
        assert!(
            help.stdout.contains(&format!("[env: {k}=")),
            "agent.env sets {k}, which topo-agent does not read:\n{}",
            help.stdout
        );
    }

    let out = lab.lab_sh(&["kill-agent", "1", "TERM"]);
    assert!(out.success(), "{}", out.describe_failure());
    let mut cmd = lab.command("ip");
    // systemd's environment for a system service: its own PATH (the agent runs `nft`) and
    // the EnvironmentFile's variables, nothing inherited.
    cmd.args(["netns", "exec", "node1", "env", "-i", SYSTEMD_PATH]);
    cmd.args(env.iter().map(|(k, v)| format!("{k}={v}")));
    cmd.arg(&agent_bin);
    cmd.args(&exec[1..]);
    let mut agent = lab.spawn(cmd);

    lab.apply(
        &docs(&[
            network("e2e-unit", "10.62.0.0/16"),
            web("u1", "node1", &[on("e2e-unit")]),
        ]),
        converge(),
    );
    poll(
        "node1's heartbeat from the unit's agent",
        Duration::from_secs(30),
        || lab.heartbeat(1)?.ok_or_else(|| "no heartbeat".to_string()),
    );
    assert!(
        agent.is_running(),
        "the agent started from the unit's command line exited: {}",
        agent.stdout_so_far()
    );
}
