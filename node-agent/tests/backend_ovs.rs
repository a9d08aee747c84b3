//! The OVSDB backend against a private ovsdb-server + ovs-vswitchd (netdev datapath) in a
//! fresh network namespace (root). `ovs-vsctl` checks what the backend did.

mod backend_support;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use backend_support::{NetNs, Sleeper, fetch, ns_of_pid, require_root, require_tool, run, serve};
use futures::StreamExt;
use topo_agent::backend::{
    DesiredBridge, DesiredPort, Interfaces, NetlinkInterfaces, Ovs, OvsChange, OvsError, OvsEvent,
    OvsTable, OvsdbSwitch, PortKind, RowChange, plan_ovs,
};
use topo_schema::kinds::Datapath;
use topo_schema::slice::AttachmentEntry;

const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// ovsdb-server and ovs-vswitchd of one simulated host, stopped on drop.
struct Switch {
    ns: NetNs,
    dir: tempfile::TempDir,
}

impl Switch {
    fn start() -> Switch {
        require_root();
        for t in ["ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl"] {
            require_tool(t);
        }
        assert!(
            Path::new(SCHEMA).exists(),
            "{SCHEMA} missing: install openvswitch-switch"
        );
        let ns = NetNs::new("tbo");
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Switch { ns, dir };
        run("ovsdb-tool", &["create", &s.p("conf.db"), SCHEMA]);
        s.start_db();
        s.vsctl(&["--no-wait", "init"]);
        let ok = s
            .ovs_cmd("ovs-vswitchd")
            .args([
                format!("unix:{}", s.sock()),
                "--disable-system".into(),
                format!("--pidfile={}", s.p("ovs-vswitchd.pid")),
                format!("--unixctl={}", s.p("ovs-vswitchd.ctl")),
                format!("--log-file={}", s.p("ovs-vswitchd.log")),
                "--detach".into(),
                "--no-chdir".into(),
            ])
            .status()
            .expect("run ovs-vswitchd");
        assert!(
            ok.success(),
            "ovs-vswitchd failed to start; see {}",
            s.p("ovs-vswitchd.log")
        );
        s
    }

    fn p(&self, f: &str) -> String {
        self.dir.path().join(f).display().to_string()
    }

    fn sock(&self) -> String {
        self.p("db.sock")
    }

    fn ovs_cmd(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns.name, prog]);
        let d = self.dir.path();
        c.env("OVS_RUNDIR", d)
            .env("OVS_LOGDIR", d)
            .env("OVS_DBDIR", d);
        // They log to their files; "opened log file" on stderr is noise.
        c.stderr(std::process::Stdio::null());
        c
    }

    fn start_db(&self) {
        let ok = self
            .ovs_cmd("ovsdb-server")
            .args([
                self.p("conf.db"),
                format!("--remote=punix:{}", self.sock()),
                format!("--pidfile={}", self.p("ovsdb-server.pid")),
                format!("--unixctl={}", self.p("ovsdb-server.ctl")),
                format!("--log-file={}", self.p("ovsdb-server.log")),
                "--detach".into(),
                "--no-chdir".into(),
            ])
            .status()
            .expect("run ovsdb-server");
        assert!(
            ok.success(),
            "ovsdb-server failed to start; see {}",
            self.p("ovsdb-server.log")
        );
    }

    fn stop(&self, daemon: &str) {
        let pidfile = self.p(&format!("{daemon}.pid"));
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            // SAFETY: signalling a daemon this test started, by its pid file.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            for _ in 0..100 {
                if !PathBuf::from(format!("/proc/{pid}")).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn vsctl(&self, args: &[&str]) -> String {
        let db = format!("--db=unix:{}", self.sock());
        let mut a = vec![db.as_str(), "--timeout=10"];
        a.extend_from_slice(args);
        run("ovs-vsctl", &a)
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.stop("ovs-vswitchd");
        self.stop("ovsdb-server");
    }
}

fn gre(remote: [u8; 4], key: u32) -> PortKind {
    PortKind::Gre {
        remote_ip: Ipv4Addr::from(remote),
        key,
    }
}

fn desired(key: u32) -> Vec<DesiredBridge> {
    vec![DesiredBridge {
        name: "tb-net".into(),
        datapath: Datapath::Netdev,
        rstp: false,
        mtu: 1400,
        object: "network/net".into(),
        ports: vec![
            DesiredPort {
                name: "tg-node2".into(),
                kind: gre([192, 168, 200, 2], key),
                protected: true,
                object: "tunnel/t12".into(),
            },
            DesiredPort {
                name: "tg-node3".into(),
                kind: gre([192, 168, 200, 3], key),
                protected: true,
                object: "tunnel/t13".into(),
            },
            DesiredPort {
                name: "tv-a".into(),
                kind: PortKind::System,
                protected: false,
                object: "container/a".into(),
            },
            DesiredPort {
                name: "tv-b".into(),
                kind: PortKind::System,
                protected: false,
                object: "container/b".into(),
            },
        ],
    }]
}

async fn next_matching(
    events: &mut futures::stream::BoxStream<'static, OvsEvent>,
    f: impl Fn(&OvsEvent) -> bool,
) -> Option<OvsEvent> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, events.next()).await {
            Ok(Some(ev)) if f(&ev) => return Some(ev),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

fn attachment(host_veth: &str, address: &str) -> AttachmentEntry {
    AttachmentEntry {
        network: "net".into(),
        bridge: "tb-net".into(),
        interface: "eth0".into(),
        host_veth: host_veth.into(),
        address: address.parse().unwrap(),
        mtu: 1400,
        default_gateway: Some(Ipv4Addr::new(10, 2, 1, 1)),
        tx_checksum_off: true,
    }
}

/// `fetch`, retried for a few seconds (a new port takes a moment to forward).
async fn eventually_fetch(ns: &str, addr: &str) -> Option<String> {
    for _ in 0..30 {
        if let Some(v) = fetch(ns, addr) {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

#[test]
fn backend_ovs_bridge_gre_monitor_and_ownership() {
    let sw = Switch::start();
    // Two stand-in containers on the bridge.
    let a = Sleeper::new();
    let b = Sleeper::new();
    let (pid_a, pid_b) = (a.pid(), b.pid());
    let (cns_a, cns_b) = (a.ns(), b.ns());
    let (ns_a, ns_b) = (ns_of_pid(pid_a), ns_of_pid(pid_b));
    let node_ns = sw.ns.path().display().to_string();
    let sock = sw.sock();
    let vs = {
        let sock = sock.clone();
        move |args: &[&str]| {
            let db = format!("--db=unix:{sock}");
            let mut a = vec![db.as_str(), "--timeout=10"];
            a.extend_from_slice(args);
            run("ovs-vsctl", &a)
        }
    };
    let sw_ref = &sw;
    let restart_db = move || {
        sw_ref.stop("ovsdb-server");
        sw_ref.start_db();
    };
    // The body needs the switch to restart ovsdb-server; run that part through a channel.
    let (restart_tx, restart_rx) = std::sync::mpsc::channel::<std::sync::mpsc::Sender<()>>();
    let body = {
        let sock = sock.clone();
        move || async move {
            let ovs = OvsdbSwitch::connect(format!("unix:{sock}"), "node1")
                .await
                .expect("connect");
            let mut events = ovs.watch();

            let empty = ovs.observe().await.unwrap();
            assert!(empty.bridges.is_empty(), "{empty:?}");
            let plan = plan_ovs(&desired(42), &empty);
            assert_eq!(plan.len(), 5, "{plan:?}");
            ovs.apply(&plan).await.unwrap();
            // ovs-vswitchd's control socket is found beside db.sock and answers the purge.
            ovs.purge_datapath_flows()
                .await
                .expect("revalidator/purge on ovs-vswitchd.ctl");

            // What ovs-vsctl sees.
            assert_eq!(
                vs(&["get", "Bridge", "tb-net", "datapath_type"]).trim(),
                "netdev"
            );
            assert_eq!(vs(&["get", "Interface", "tg-node2", "type"]).trim(), "gre");
            let opts = vs(&["get", "Interface", "tg-node2", "options"]);
            assert!(
                opts.contains("key=\"42\"") && opts.contains("remote_ip=\"192.168.200.2\""),
                "{opts}"
            );
            assert_eq!(vs(&["get", "Port", "tg-node2", "protected"]).trim(), "true");
            assert_eq!(
                vs(&["get", "Interface", "tb-net", "mtu_request"]).trim(),
                "1400"
            );
            let ids = vs(&["get", "Bridge", "tb-net", "external_ids"]);
            assert!(
                ids.contains("\"topo.dev/managed\"=\"true\"")
                    && ids.contains("\"topo.dev/node\"=node1"),
                "{ids}"
            );
            let ports = vs(&["list-ports", "tb-net"]);
            assert_eq!(
                ports.lines().collect::<Vec<_>>(),
                vec!["tg-node2", "tg-node3", "tv-a", "tv-b"],
                "{ports}"
            );

            // ovs-vswitchd creates the internal interface; the gateway goes on it by netlink.
            let ifs = NetlinkInterfaces::new().unwrap();
            let gw: ipnet::Ipv4Net = "10.2.1.1/16".parse().unwrap();
            ifs.ensure_gateway("tb-net", gw, 1400)
                .await
                .expect("gateway on the internal port");
            let g = ifs.observe_gateway("tb-net").await.unwrap();
            assert!(
                g.differences(gw, 1400).is_empty(),
                "{:?}",
                g.differences(gw, 1400)
            );

            // The containers' veths, created after their ports (ovs-vswitchd opens a device
            // when it appears).
            let att_a = attachment("tv-a", "10.2.1.10/16");
            let att_b = attachment("tv-b", "10.2.1.11/16");
            ifs.ensure_attachment(&cns_a, &att_a).await.unwrap();
            ifs.ensure_attachment(&cns_b, &att_b).await.unwrap();
            serve(&ns_b, 7000, "from-b");
            // TCP across the netdev bridge (checksum offload off: PLATFORM.md trap 1), from
            // the other container and from the node through the gateway.
            assert_eq!(
                eventually_fetch(&ns_a, "10.2.1.11:7000").await.as_deref(),
                Some("from-b")
            );
            assert_eq!(
                eventually_fetch(&node_ns, "10.2.1.11:7000")
                    .await
                    .as_deref(),
                Some("from-b")
            );

            // In sync: nothing to plan, and every interface got an ofport.
            let st = ovs.observe().await.unwrap();
            assert!(plan_ovs(&desired(42), &st).is_empty());
            let b = &st.bridges["tb-net"];
            assert!(b.owned && b.ports.values().all(|p| p.owned));
            for p in b.ports.values() {
                assert_eq!(p.interfaces[0].error, None, "{p:?}");
            }
            // One container's read: every bridge, its port found by owner and the ports named,
            // nothing of the others; a named port reads as in the whole view, one found only
            // by owner comes without its interfaces.
            let mine = ovs
                .observe_container("container/a", &["tg-node2".to_string()])
                .await
                .unwrap();
            assert_eq!(mine.bridges.len(), st.bridges.len());
            let ports: Vec<&String> = mine.bridges["tb-net"].ports.keys().collect();
            assert_eq!(ports, ["tg-node2", "tv-a"]);
            assert_eq!(
                mine.bridges["tb-net"].ports["tg-node2"],
                st.bridges["tb-net"].ports["tg-node2"]
            );
            assert!(mine.bridges["tb-net"].ports["tv-a"].owned);
            assert!(mine.bridges["tb-net"].ports["tv-a"].interfaces.is_empty());

            // Container a restarts (new process, new namespace): the pair is recreated under
            // the same name and its OVS port must be re-added (see Ovs::reattach_port).
            let a2 = Sleeper::new();
            let ns_a2 = ns_of_pid(a2.pid());
            let obs = ifs.observe_attachment(&a2.ns(), &att_a).await.unwrap();
            assert!(obs.needs_new_pair());
            ifs.ensure_attachment(&a2.ns(), &att_a).await.unwrap();
            ovs.reattach_port("tb-net", "tv-a").await.unwrap();
            let st = ovs.observe().await.unwrap();
            assert!(
                plan_ovs(&desired(42), &st).is_empty(),
                "reattached with the same settings"
            );
            assert_eq!(
                st.bridges["tb-net"].ports["tv-a"].external_ids["topo.dev/object"],
                "container/a"
            );
            assert_eq!(
                eventually_fetch(&ns_a2, "10.2.1.11:7000").await.as_deref(),
                Some("from-b")
            );
            ovs.reattach_port("tb-net", "absent").await.unwrap();
            drop(a2);

            // A GRE port deleted by hand: a monitor update naming the tunnel, then repair.
            vs(&["del-port", "tb-net", "tg-node2"]);
            let ev = next_matching(&mut events, |e| {
                matches!(e, OvsEvent::Changed { table: OvsTable::Port, change: RowChange::Deleted, name, .. } if name == "tg-node2")
            })
            .await
            .expect("monitor update for the deleted port");
            assert!(
                matches!(ev, OvsEvent::Changed { object: Some(ref o), .. } if o == "tunnel/t12"),
                "{ev:?}"
            );
            let plan = plan_ovs(&desired(42), &ovs.observe().await.unwrap());
            assert_eq!(plan.len(), 1, "{plan:?}");
            ovs.apply(&plan).await.unwrap();
            assert!(vs(&["list-ports", "tb-net"]).contains("tg-node2"));

            // A changed key is an update in place.
            let plan = plan_ovs(&desired(43), &ovs.observe().await.unwrap());
            assert_eq!(plan.len(), 2, "{plan:?}");
            assert!(
                plan.iter()
                    .all(|c| matches!(c, OvsChange::UpdatePort { .. }))
            );
            ovs.apply(&plan).await.unwrap();
            assert!(vs(&["get", "Interface", "tg-node3", "options:key"]).contains("43"));

            // Something topo does not own is never deleted.
            vs(&[
                "add-br",
                "br-foreign",
                "--",
                "set",
                "bridge",
                "br-foreign",
                "datapath_type=netdev",
            ]);
            vs(&[
                "add-port",
                "tb-net",
                "foreign0",
                "--",
                "set",
                "Interface",
                "foreign0",
                "type=internal",
            ]);
            let st = ovs.observe().await.unwrap();
            assert!(!st.bridges["br-foreign"].owned);
            assert!(matches!(
                ovs.apply(&[OvsChange::DeleteBridge {
                    name: "br-foreign".into()
                }])
                .await,
                Err(OvsError::NotOwned { .. })
            ));
            assert!(matches!(
                ovs.apply(&[OvsChange::DeletePort {
                    bridge: "tb-net".into(),
                    name: "foreign0".into()
                }])
                .await,
                Err(OvsError::NotOwned { .. })
            ));
            assert!(
                plan_ovs(&desired(43), &st).is_empty(),
                "a foreign port on our bridge is left alone"
            );

            // A re-add waits for ovs-vswitchd to apply the removal (cur_cfg catches up with
            // next_cfg) before the port comes back: well before the wait would give up.
            let started = std::time::Instant::now();
            ovs.reattach_port("tb-net", "tg-node2").await.unwrap();
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "ovs-vswitchd's cur_cfg never caught up"
            );
            let cfg =
                |c: &str| -> i64 { vs(&["get", "Open_vSwitch", ".", c]).trim().parse().unwrap() };
            assert!(cfg("next_cfg") > 0 && cfg("cur_cfg") >= cfg("next_cfg"));
            let st = ovs.observe().await.unwrap();
            assert!(
                st.bridges["tb-net"].ports["tg-node2"].matches(&gre([192, 168, 200, 2], 43), true)
            );

            // ovsdb-server restarts: the monitor reconnects and asks for a resync; calls reconnect.
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            restart_tx.send(done_tx).unwrap();
            tokio::task::spawn_blocking(move || done_rx.recv())
                .await
                .unwrap()
                .unwrap();
            next_matching(&mut events, |e| *e == OvsEvent::Resync)
                .await
                .expect("Resync after ovsdb-server restart");
            assert!(ovs.observe().await.unwrap().bridges.contains_key("tb-net"));

            // Removing the network: only the owned bridge goes.
            let plan = plan_ovs(&[], &ovs.observe().await.unwrap());
            assert_eq!(
                plan,
                vec![OvsChange::DeleteBridge {
                    name: "tb-net".into()
                }]
            );
            ovs.apply(&plan).await.unwrap();
            let brs = vs(&["list-br"]);
            assert_eq!(brs.trim(), "br-foreign", "{brs}");
            // Deleting what is already gone is fine.
            ovs.apply(&plan).await.unwrap();
        }
    };
    let ns_path = sw.ns.path();
    std::thread::scope(|s| {
        let h = s.spawn(move || {
            let f = std::fs::File::open(&ns_path).expect("netns");
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(body());
        });
        // Serve the body's restart request.
        if let Ok(done) = restart_rx.recv_timeout(Duration::from_secs(120)) {
            restart_db();
            let _ = done.send(());
        }
        if let Err(p) = h.join() {
            std::panic::resume_unwind(p);
        }
    });
    drop((a, b));
}
