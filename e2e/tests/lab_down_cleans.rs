//! Issue 3, the lab: after `lab.sh down` nothing of a lab that ran containers remains — no
//! namespace, interface, process, mount or state — and a second `down` is harmless.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde_json::Value;
use topo_e2e::lab::{cmdline, pid_alive};
use topo_e2e::manifest::{docs, network, on, web};
use topo_e2e::{Lab, converge, node_name};

/// Every pid file under DIR (depth 2) and its process's command line.
fn pids_of_lab(dir: &Path) -> BTreeMap<u32, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![dir.to_path_buf()];
    if let Ok(rd) = fs::read_dir(dir) {
        dirs.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for d in dirs {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if e.path().extension().is_some_and(|x| x == "pid")
                && let Some(pid) = fs::read_to_string(e.path())
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                && let Some(c) = cmdline(pid)
            {
                out.insert(pid, c);
            }
        }
    }
    out
}

fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = vec![];
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == std::process::id() {
                continue;
            }
            if let Some(c) = cmdline(pid)
                && c.contains(needle)
                && pid_alive(pid)
            {
                out.push(format!("{pid}: {c}"));
            }
        }
    }
    out
}

#[test]
fn lab_down_cleans() {
    let lab = Lab::up("lab-down", 3);
    lab.apply(
        &docs(&[
            network("e2e-down", "10.61.0.0/16"),
            web("x1", "node1", &[on("e2e-down")]),
            web("x2", "node2", &[on("e2e-down")]),
            web("x3", "node3", &[on("e2e-down")]),
        ]),
        converge(),
    );
    let dir = lab.dir().to_path_buf();
    let dir_s = dir.to_string_lossy().into_owned();
    let mut pids = pids_of_lab(&dir);
    for c in ["x1", "x2", "x3"] {
        let v = lab
            .inspect(c)
            .unwrap_or_else(|| panic!("{c} is not running"));
        if let Some(p) = v
            .pointer("/State/Pid")
            .and_then(Value::as_u64)
            .and_then(|p| u32::try_from(p).ok())
            && let Some(cl) = cmdline(p)
        {
            pids.insert(p, cl);
        }
    }
    for name in ["etcd", "dockerd", "containerd", "topo-controller"] {
        assert!(
            pids.values().any(|c| c.contains(name)),
            "no {name} among the lab's processes: {pids:?}"
        );
    }
    assert!(
        pids.values().filter(|c| c.contains("topo-agent")).count() == 3,
        "3 agents expected: {pids:?}"
    );
    let netns = lab.sh("ip", &["netns", "list"]).ok().stdout;
    for n in 1..=3 {
        assert!(
            netns.contains(&node_name(n)),
            "no netns node{n} before down: {netns}"
        );
    }

    let out = lab.down();
    assert!(
        out.success(),
        "lab.sh down failed:\n{}",
        out.describe_failure()
    );

    let mut left = vec![];
    for (pid, c) in &pids {
        // Same pid and same command line: the very process (not a reused pid).
        if pid_alive(*pid) && cmdline(*pid).as_deref() == Some(c.as_str()) {
            left.push(format!("process {pid} ({c})"));
        }
    }
    left.extend(
        processes_mentioning(&format!("{dir_s}/"))
            .into_iter()
            .map(|p| format!("process {p}")),
    );
    let netns = lab.sh("ip", &["netns", "list"]).ok().stdout;
    left.extend(
        netns
            .lines()
            .filter(|l| l.starts_with("node"))
            .map(|l| format!("netns {l}")),
    );
    let links = lab.sh("ip", &["-o", "link", "show"]).ok().stdout;
    let names = topo_e2e::parse::ip_links(&links);
    for n in names.keys() {
        let ours = n.starts_with("topo-ul")
            || n.starts_with("tv-")
            || n.starts_with("tb-")
            || n.starts_with("tg-");
        // In the lab's private namespace, anything but lo was the lab's.
        if ours || (lab.holder_pid().is_some() && n != "lo") {
            left.push(format!("interface {n}"));
        }
    }
    let mounts_file = match lab.holder_pid() {
        Some(p) => format!("/proc/{p}/mounts"),
        None => "/proc/self/mounts".to_string(),
    };
    let mounts = fs::read_to_string(&mounts_file).unwrap_or_default();
    left.extend(
        mounts
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|m| m == dir_s || m.starts_with(&format!("{dir_s}/")))
            })
            .map(|l| format!("mount {l}")),
    );
    if dir.exists() {
        left.push(format!("state directory {dir_s}"));
    }
    assert!(
        left.is_empty(),
        "left after lab.sh down:\n  {}",
        left.join("\n  ")
    );

    let again = lab.lab_sh(&["down"]);
    assert!(
        again.success(),
        "a second lab.sh down failed:\n{}",
        again.describe_failure()
    );
}
