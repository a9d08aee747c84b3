//! The control plane's faults as the tests inject them (issue 9): etcd members and
//! controller replicas killed, paused and restarted through `lab.sh`, topoctl aimed at one
//! replica, the logs the components wrote, and etcd read directly (not through the
//! controller, whose cache is what is under test).
//!
//! A lab with several etcd members or controller replicas comes from
//! `Lab::up_with(name, nodes, &["--etcd", "3", "--controllers", "2"])`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::cmd::Output;
use crate::lab::{Lab, strip_ansi};

impl Lab {
    fn export_count(&self, key: &str) -> u32 {
        self.export(key).and_then(|v| v.parse().ok()).unwrap_or(1)
    }

    /// A value `lab.sh up` exported (`TOPO_LAB_SERVERS`, ...).
    pub fn export(&self, key: &str) -> Option<&str> {
        self.exports().get(key).map(String::as_str)
    }

    /// etcd members of the lab (`--etcd N`).
    pub fn etcd_members(&self) -> u32 {
        self.export_count("TOPO_LAB_ETCD")
    }

    /// Controller replicas of the lab (`--controllers N`).
    pub fn controllers(&self) -> u32 {
        self.export_count("TOPO_LAB_CONTROLLERS")
    }

    /// Replica `i`'s URL (1-based).
    pub fn server_url(&self, i: u32) -> String {
        self.export("TOPO_LAB_SERVERS")
            .and_then(|s| s.split(',').nth(i.saturating_sub(1) as usize))
            .map_or_else(|| self.server().to_string(), str::to_string)
    }

    /// `topoctl --server <replica i> ARGS...`, with a time limit.
    #[track_caller]
    pub fn topoctl_at(&self, i: u32, args: &[&str], timeout: Duration) -> Output {
        let mut c = self.command(self.bin().join("topoctl"));
        c.arg("--server").arg(self.server_url(i)).args(args);
        self.run(c, timeout)
    }

    fn lab_sh_out(&self, args: &[&str]) -> Result<String, String> {
        let out = self.lab_sh(args);
        if out.success() {
            Ok(out.stdout.trim().to_string())
        } else {
            Err(out.describe_failure())
        }
    }

    /// The etcd member that leads the raft group now.
    pub fn etcd_leader(&self) -> Result<u32, String> {
        let s = self.lab_sh_out(&["etcd-leader"])?;
        s.parse()
            .map_err(|_| format!("lab.sh etcd-leader printed {s:?}"))
    }

    /// Sends `signal` (KILL, STOP, CONT, ...) to etcd member `member`; KILL waits until it died.
    #[track_caller]
    pub fn signal_etcd(&self, member: u32, signal: &str) {
        self.lab_sh(&["kill-etcd", &member.to_string(), signal])
            .ok();
    }

    /// Starts etcd member `member` again on its data directory.
    #[track_caller]
    pub fn start_etcd(&self, member: u32) {
        self.lab_sh(&["start-etcd", &member.to_string()]).ok();
    }

    /// The controller replica that holds the leader key now.
    pub fn controller_leader(&self) -> Result<u32, String> {
        let s = self.lab_sh_out(&["controller-leader"])?;
        s.parse()
            .map_err(|_| format!("lab.sh controller-leader printed {s:?}"))
    }

    /// Sends `signal` to controller replica `i`; KILL waits until it died.
    #[track_caller]
    pub fn signal_controller(&self, i: u32, signal: &str) {
        self.lab_sh(&["kill-controller", signal, &i.to_string()])
            .ok();
    }

    /// Starts controller replica `i` and waits for its /healthz.
    #[track_caller]
    pub fn start_controller(&self, i: u32) {
        self.lab_sh(&["start-controller", &i.to_string()]).ok();
    }

    /// A log file of the lab (`controller.log`, `node2/agent.log`, `etcd.log`), without
    /// colours; empty when it does not exist.
    pub fn log_text(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir().join(file))
            .map(|t| strip_ansi(&t))
            .unwrap_or_default()
    }

    /// Controller replica `i`'s log file name.
    pub fn controller_log(i: u32) -> String {
        if i <= 1 {
            "controller.log".into()
        } else {
            format!("controller{i}.log")
        }
    }

    /// Every key under `prefix` with its value, read from etcd as the controller's etcd user
    /// (etcdctl: a linearizable read, so what etcd holds, not what a cache believes).
    pub fn etcd_prefix(&self, prefix: &str) -> Result<BTreeMap<String, String>, String> {
        let endpoints = format!("--endpoints={}", self.etcd_endpoints());
        let out = self.sh(
            "etcdctl",
            &[
                &endpoints,
                "--dial-timeout=3s",
                "--command-timeout=30s",
                "get",
                prefix,
                "--prefix",
            ],
        );
        if !out.success() {
            return Err(out.describe_failure());
        }
        // Keys and values alternate, one per line (topo's values are one-line JSON).
        let lines: Vec<&str> = out.stdout.lines().collect();
        if !lines.len().is_multiple_of(2) {
            return Err(format!(
                "etcdctl get {prefix} --prefix printed an odd number of lines: {}",
                out.stdout
            ));
        }
        Ok(lines
            .chunks(2)
            .map(|kv| (kv[0].to_string(), kv[1].to_string()))
            .collect())
    }
}
