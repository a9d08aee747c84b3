//! OVN on a running lab, for `make bench-peers` (issue 11): the peer topo is compared with,
//! set up the way its documentation sets up a small deployment, on the same hosts.
//!
//! - Central, in the lab's control namespace (where etcd and the controller run): the NB and
//!   SB ovsdb-servers (unix sockets under `$TOPO_LAB_DIR/ovn/`, the SB also on
//!   `tcp:192.168.100.254:6642` for the hosts) and ovn-northd.
//! - Per host, in its namespace: the host's own Open_vSwitch gets OVN's external_ids
//!   (`ovn-remote`, geneve encapsulation on its underlay address, `br-int` on the netdev
//!   datapath), and one ovn-controller talks to that host's ovsdb-server and ovs-vswitchd
//!   (`OVS_RUNDIR` = the host's state directory, where its bridges' OpenFlow sockets are).
//! - A container is plugged the way an OVN CNI plugs one: the logical switch port with
//!   `addresses="MAC IP"`, a veth pair whose inner end is made in the container's namespace
//!   as `eth0` with the MAC, then its address, default route and offload, and the host end
//!   on `br-int` with `external_ids:iface-id` naming the logical switch port.
//!
//! Every daemon is a child of the bench in the foreground ([`Background`]): dropping [`Ovn`]
//! kills them, also when the bench panics; `lab.sh down` then removes the hosts, `br-int`
//! with them. Commands are argv vectors; nothing is parsed by a shell.

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cmd::{Background, Output};
use crate::lab::{Lab, node_address, node_name};
use crate::poll::{poll, secs};

/// Where the hosts reach the southbound database: the lab's root side of the underlay.
const SB_ADDRESS: &str = "192.168.100.254";
const SB_PORT: u16 = 6642;
/// Geneve costs 58 bytes over the underlay's 1500 (outer IP, UDP, Geneve with OVN's
/// option, inner Ethernet): 1400 leaves room.
pub const MTU: u32 = 1400;

/// One container's attachment to a logical switch.
#[derive(Debug, Clone)]
pub struct Port {
    /// The logical switch port (and the host end's `iface-id`).
    pub lsp: String,
    /// The veth's host end, on `br-int`.
    pub host_veth: String,
    pub mac: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
}

impl Port {
    /// The port of container `name` at `address` in a /16: its MAC and host veth numbered by
    /// the address's last two bytes (unique within the /16).
    pub fn numbered(name: &str, address: Ipv4Addr) -> Port {
        let [_, _, c, d] = address.octets();
        Port {
            lsp: name.to_string(),
            // IFNAMSIZ: 15 bytes at most.
            host_veth: format!("ovn{c}x{d}"),
            mac: format!("0a:99:00:00:{c:02x}:{d:02x}"),
            address,
            prefix: 16,
        }
    }
}

/// [`Lab::run_unnetworked`]: the pid of the container's main process, for [`Ovn::plug`].
pub fn run_unnetworked(lab: &Lab, name: &str) -> u32 {
    lab.run_unnetworked(name);
    let out = lab.docker(&["inspect", "-f", "{{.State.Pid}}", name]).ok();
    out.stdout
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .unwrap_or_else(|| panic!("{name} is not running"))
}

/// How long each step of [`Ovn::plug`] took.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlugTimes {
    pub nbctl: Duration,
    pub veth: Duration,
    pub address: Duration,
    pub ovs_port: Duration,
}

pub struct Ovn<'a> {
    lab: &'a Lab,
    dir: PathBuf,
    central: Vec<Background>,
    controllers: BTreeMap<u32, Background>,
}

impl<'a> Ovn<'a> {
    /// Starts the central daemons and an ovn-controller on every host of `lab`, and waits
    /// until every host is a chassis in the SB with its `br-int`.
    pub fn up(lab: &'a Lab) -> Result<Ovn<'a>, String> {
        let dir = lab.dir().join("ovn");
        fs::create_dir_all(&dir).map_err(|e| format!("failed to create {}: {e}", dir.display()))?;
        let mut ovn = Ovn {
            lab,
            dir,
            central: Vec::new(),
            controllers: BTreeMap::new(),
        };
        ovn.start_central()?;
        for node in 1..=lab.nodes() {
            ovn.configure_host(node)?;
            ovn.start_controller(node)?;
        }
        let nodes = lab.nodes() as usize;
        poll("every host to be an OVN chassis", secs(60), || {
            let out = ovn.sbctl(&["--bare", "--columns=name", "list", "Chassis"]);
            let chassis = out.stdout.split_whitespace().count();
            (chassis == nodes)
                .then_some(())
                .ok_or_else(|| format!("{chassis} of {nodes} chassis: {}", out.stderr))
        });
        for node in 1..=lab.nodes() {
            poll(&format!("br-int on node{node}"), secs(60), || {
                let out = lab.vsctl(node, &["br-exists", "br-int"]);
                out.success().then_some(()).ok_or(out.stderr)
            });
        }
        Ok(ovn)
    }

    pub fn lab(&self) -> &'a Lab {
        self.lab
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }

    fn spawn(&self, program: &str, args: &[String], rundir: &str) -> Result<Background, String> {
        let mut c = self.lab.command(program);
        c.args(args)
            .env("OVS_RUNDIR", rundir)
            .env("OVN_RUNDIR", rundir)
            .env("OVS_LOGDIR", rundir)
            .env("OVN_LOGDIR", rundir);
        Background::spawn(c).map_err(|e| e.to_string())
    }

    /// The NB and SB databases and ovn-northd, in the lab's control namespace.
    fn start_central(&mut self) -> Result<(), String> {
        let rundir = self.dir.to_string_lossy().into_owned();
        for (db, schema) in [
            ("nb", "/usr/share/ovn/ovn-nb.ovsschema"),
            ("sb", "/usr/share/ovn/ovn-sb.ovsschema"),
        ] {
            let file = self.path(&format!("{db}.db"));
            let _ = fs::remove_file(&file);
            self.lab.sh("ovsdb-tool", &["create", &file, schema]).ok();
            let mut args = vec![
                file,
                format!("--remote=punix:{}", self.path(&format!("{db}.sock"))),
                format!("--unixctl={}", self.path(&format!("{db}.ctl"))),
                format!("--pidfile={}", self.path(&format!("{db}.pid"))),
                format!("--log-file={}", self.path(&format!("ovsdb-{db}.log"))),
                "-vconsole:off".into(),
                "--no-chdir".into(),
            ];
            if db == "sb" {
                args.push(format!("--remote=ptcp:{SB_PORT}:{SB_ADDRESS}"));
            }
            let server = self.spawn("ovsdb-server", &args, &rundir)?;
            self.central.push(server);
            let sock = self.dir.join(format!("{db}.sock"));
            poll(&format!("the OVN {db} database"), secs(30), || {
                sock.exists()
                    .then_some(())
                    .ok_or_else(|| format!("no {}", sock.display()))
            });
        }
        let northd = self.spawn(
            "ovn-northd",
            &[
                format!("--ovnnb-db=unix:{}", self.path("nb.sock")),
                format!("--ovnsb-db=unix:{}", self.path("sb.sock")),
                format!("--unixctl={}", self.path("northd.ctl")),
                format!("--pidfile={}", self.path("northd.pid")),
                format!("--log-file={}", self.path("northd.log")),
                "-vconsole:off".into(),
                "--no-chdir".into(),
            ],
            &rundir,
        )?;
        self.central.push(northd);
        Ok(())
    }

    /// OVN's settings in host `node`'s Open_vSwitch table.
    fn configure_host(&self, node: u32) -> Result<(), String> {
        let ids = [
            format!("external_ids:ovn-remote=\"tcp:{SB_ADDRESS}:{SB_PORT}\""),
            "external_ids:ovn-encap-type=geneve".to_string(),
            format!("external_ids:ovn-encap-ip={}", node_address(node)),
            format!("external_ids:system-id={}", node_name(node)),
            "external_ids:ovn-bridge=br-int".to_string(),
            "external_ids:ovn-bridge-datapath-type=netdev".to_string(),
        ];
        let mut args = vec!["set", "Open_vSwitch", "."];
        args.extend(ids.iter().map(String::as_str));
        let out = self.lab.vsctl(node, &args);
        out.success().then_some(()).ok_or(out.describe_failure())
    }

    /// Starts host `node`'s ovn-controller (again, after [`Ovn::kill_controller`]).
    pub fn start_controller(&mut self, node: u32) -> Result<(), String> {
        let nd = self.lab.node_dir(node);
        let f = |name: &str| nd.join(name).to_string_lossy().into_owned();
        let args = [
            "netns".to_string(),
            "exec".into(),
            node_name(node),
            "ovn-controller".into(),
            format!("unix:{}", f("db.sock")),
            format!("--pidfile={}", f("ovn-controller.pid")),
            format!("--log-file={}", f("ovn-controller.log")),
            "-vconsole:off".into(),
            "--no-chdir".into(),
        ];
        let child = self.spawn("ip", &args, &f(""))?;
        self.controllers.insert(node, child);
        Ok(())
    }

    /// The pid of host `node`'s ovn-controller (`ip netns exec` execs it: the child's pid).
    pub fn controller_pid(&self, node: u32) -> Option<u32> {
        self.controllers.get(&node).map(Background::pid)
    }

    /// SIGKILLs host `node`'s ovn-controller and waits until it is gone.
    pub fn kill_controller(&mut self, node: u32) -> Result<(), String> {
        let child = self
            .controllers
            .remove(&node)
            .ok_or_else(|| format!("node{node} has no ovn-controller"))?;
        let pid = child.pid().to_string();
        self.lab.sh("kill", &["-KILL", &pid]).ok();
        child
            .wait(secs(10))
            .map(|_| ())
            .map_err(|e| format!("ovn-controller of node{node} did not die: {e}"))
    }

    /// `ovn-appctl -t ovn-controller connection-status` of host `node`: "connected" when it
    /// talks to the SB.
    pub fn connection_status(&self, node: u32) -> String {
        // 23.03's ovn-controller takes no --unixctl: its socket is OVN_RUNDIR/NAME.PID.ctl.
        let Some(pid) = self.controller_pid(node) else {
            return String::new();
        };
        let ctl = self
            .lab
            .node_dir(node)
            .join(format!("ovn-controller.{pid}.ctl"));
        let ctl = ctl.to_string_lossy();
        let out = self
            .lab
            .sh("ovn-appctl", &["-t", &ctl, "connection-status"]);
        out.stdout.trim().to_string()
    }

    /// How many OpenFlow flows `br-int` of host `node` holds (None: it did not answer).
    pub fn flow_count(&self, node: u32) -> Option<u64> {
        let mgmt = self.lab.node_dir(node).join("br-int.mgmt");
        let target = format!("unix:{}", mgmt.to_string_lossy());
        let out = self.lab.sh(
            "ovs-ofctl",
            &["-O", "OpenFlow15", "dump-aggregate", &target],
        );
        out.stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix("flow_count="))
            .and_then(|n| n.parse().ok())
    }

    pub fn nbctl(&self, args: &[&str]) -> Output {
        self.plugger().nbctl(args)
    }

    /// What plugs containers, for threads (the daemons stay with `self`).
    pub fn plugger(&self) -> Plugger<'a> {
        Plugger {
            lab: self.lab,
            dir: self.dir.clone(),
        }
    }

    pub fn sbctl(&self, args: &[&str]) -> Output {
        let db = format!("--db=unix:{}", self.path("sb.sock"));
        let mut a = vec![db.as_str()];
        a.extend_from_slice(args);
        self.lab.sh("ovn-sbctl", &a)
    }

    /// The logical switch `name`.
    pub fn add_switch(&self, name: &str) -> Result<(), String> {
        let out = self.nbctl(&["ls-add", name]);
        out.success().then_some(()).ok_or(out.describe_failure())
    }

    /// [`Plugger::plug`].
    pub fn plug(
        &self,
        switch: &str,
        node: u32,
        pid: u32,
        port: &Port,
    ) -> Result<PlugTimes, String> {
        self.plugger().plug(switch, node, pid, port)
    }

    /// Stops every OVN daemon (SIGKILL: nothing of theirs outlives the lab).
    pub fn down(mut self) {
        self.controllers.clear();
        self.central.clear();
    }
}

/// Plugs containers into logical switches: the NB database and the hosts' tools, nothing of
/// the daemons' handles, so threads (one per host, as a CNI per host) share it.
#[derive(Clone)]
pub struct Plugger<'a> {
    lab: &'a Lab,
    dir: PathBuf,
}

impl Plugger<'_> {
    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }

    pub fn nbctl(&self, args: &[&str]) -> Output {
        let db = format!("--db=unix:{}", self.path("nb.sock"));
        let mut a = vec![db.as_str()];
        a.extend_from_slice(args);
        self.lab.sh("ovn-nbctl", &a)
    }

    /// Plugs the container whose main process is `pid` on host `node` into `switch` as
    /// `port` (see the module's comment for the steps, in this order).
    pub fn plug(
        &self,
        switch: &str,
        node: u32,
        pid: u32,
        port: &Port,
    ) -> Result<PlugTimes, String> {
        let mut times = PlugTimes::default();
        let ok = |out: Output| out.success().then_some(()).ok_or(out.describe_failure());
        let t = Instant::now();
        let addresses = format!("{} {}", port.mac, port.address);
        ok(self.nbctl(&[
            "lsp-add",
            switch,
            &port.lsp,
            "--",
            "lsp-set-addresses",
            &port.lsp,
            &addresses,
        ]))?;
        times.nbctl = t.elapsed();
        let t = Instant::now();
        let (mtu, pid_s, ns) = (MTU.to_string(), pid.to_string(), node_name(node));
        ok(self.lab.sh(
            "ip",
            &[
                "-n",
                &ns,
                "link",
                "add",
                &port.host_veth,
                "mtu",
                &mtu,
                "up",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "address",
                &port.mac,
                "mtu",
                &mtu,
                "netns",
                &pid_s,
            ],
        ))?;
        times.veth = t.elapsed();
        let t = Instant::now();
        let batch = self.dir.join(format!("{}.ip", port.lsp));
        let script = format!(
            "addr add {}/{} dev eth0\nlink set eth0 up\nroute add default dev eth0\n",
            port.address, port.prefix
        );
        fs::write(&batch, script)
            .map_err(|e| format!("failed to write {}: {e}", batch.display()))?;
        let batch_s = batch.to_string_lossy();
        ok(self.lab.sh(
            "nsenter",
            &["-t", &pid_s, "-n", "--", "ip", "-batch", &batch_s],
        ))?;
        ok(self.lab.sh(
            "nsenter",
            &[
                "-t", &pid_s, "-n", "--", "ethtool", "-K", "eth0", "tx", "off",
            ],
        ))?;
        times.address = t.elapsed();
        let t = Instant::now();
        let iface_id = format!("external_ids:iface-id={}", port.lsp);
        ok(self.lab.vsctl(
            node,
            &[
                "add-port",
                "br-int",
                &port.host_veth,
                "--",
                "set",
                "Interface",
                &port.host_veth,
                &iface_id,
            ],
        ))?;
        times.ovs_port = t.elapsed();
        Ok(times)
    }
}
