//! The netlink Interfaces backend against the real kernel (root): a private "node" namespace,
//! `unshare --net sleep` processes standing in for containers.

mod backend_support;

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use backend_support::{NetNs, Sleeper, require_root, require_tool, run, unique};
use futures::StreamExt;
use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};
use topo_agent::backend::{
    AddressProber, ArpProber, Claim, ClaimKind, ContainerNs, InterfaceError, Interfaces,
    LinkChangeKind, LinkEvent, Mac, NamespaceChange, NetlinkInterfaces, NsError, ProbeError,
};
use topo_schema::slice::AttachmentEntry;

fn attachment(host_veth: &str) -> AttachmentEntry {
    AttachmentEntry {
        network: "net".into(),
        bridge: "tb-net".into(),
        interface: "eth0".into(),
        host_veth: host_veth.into(),
        address: "10.77.1.5/16".parse().unwrap(),
        mtu: 1458,
        default_gateway: Some(Ipv4Addr::new(10, 77, 1, 1)),
        tx_checksum_off: true,
    }
}

/// An AF_PACKET socket receiving ARP frames on `ifname` (in the caller's namespace), with a
/// receive timeout.
fn arp_capture(ifname: &str) -> OwnedFd {
    let proto = (libc::ETH_P_ARP as u16).to_be();
    let fd = socket(
        AddressFamily::Packet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None::<SockProtocol>,
    )
    .expect("AF_PACKET socket");
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: plain libc calls on a socket we own with correctly sized arguments.
    unsafe {
        let idx = libc::if_nametoindex(name.as_ptr());
        assert!(idx > 0, "{ifname} has no index");
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = idx as i32;
        let r = libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(r, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 3,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
    fd
}

/// The sender IP of ARP frames received until one announces `ip` (or the timeout).
fn wait_announcement(fd: &OwnedFd, ip: Ipv4Addr) -> bool {
    let mut buf = [0u8; 1500];
    for _ in 0..20 {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 28 {
            return false;
        }
        let spa = Ipv4Addr::new(buf[14], buf[15], buf[16], buf[17]);
        let tpa = Ipv4Addr::new(buf[24], buf[25], buf[26], buf[27]);
        if spa == ip && tpa == ip {
            return true;
        }
    }
    false
}

#[test]
fn backend_netlink_veth_into_container_namespace() {
    require_root();
    require_tool("ip");
    require_tool("ethtool");
    require_tool("nsenter");
    let node = NetNs::new("tbn");
    let c1 = Sleeper::new();
    let c2 = Sleeper::new();
    let (pid1, ns1, ns2) = (c1.pid(), c1.ns(), c2.ns());
    let veth = unique("tv-t");
    let att = attachment(&veth);
    let node_name = node.name.clone();

    // Commands run from the test body look at absolute namespaces (nsenter -t PID, ip netns
    // exec), so it does not matter that the body's thread sits in the node namespace.
    let in_c = move |cmd: &str, args: &[&str]| {
        let p = pid1.to_string();
        let mut a = vec!["-t", p.as_str(), "-n", cmd];
        a.extend_from_slice(args);
        run("nsenter", &a)
    };
    let check_created = {
        let veth = veth.clone();
        move || {
            let addr = in_c("ip", &["-o", "addr", "show", "dev", "eth0"]);
            assert!(addr.contains("inet 10.77.1.5/16"), "{addr}");
            let link = in_c("ip", &["-o", "link", "show", "dev", "eth0"]);
            assert!(link.contains("mtu 1458") && link.contains("UP"), "{link}");
            // The MAC topo gives 10.77.1.5 (issue 12: how agents know their own).
            assert!(link.contains("link/ether 0a:58:0a:4d:01:05"), "{link}");
            let route = in_c("ip", &["route", "show", "default"]);
            assert!(route.contains("default via 10.77.1.1 dev eth0"), "{route}");
            let k = in_c("ethtool", &["-k", "eth0"]);
            assert!(k.contains("tx-checksumming: off"), "{k}");
            let host = run(
                "ip",
                &[
                    "netns", "exec", &node_name, "ip", "-o", "link", "show", "dev", &veth,
                ],
            );
            assert!(host.contains("mtu 1458") && host.contains("UP"), "{host}");
        }
    };
    let node_name2 = node.name.clone();

    node.block_on(move || async move {
        let ifs = NetlinkInterfaces::new().expect("netlink");
        let mut events = ifs.watch();

        let before = ifs.observe_attachment(&ns1, &att).await.unwrap();
        assert!(!before.host_exists && before.peer.is_none());
        let changed = ifs.ensure_attachment(&ns1, &att).await.unwrap();
        assert!(!changed.is_empty());
        let obs = ifs.observe_attachment(&ns1, &att).await.unwrap();
        assert!(
            obs.differences(&att).is_empty(),
            "{:?}",
            obs.differences(&att)
        );
        assert_eq!(obs.peer.as_ref().unwrap().tx_checksum, Some(false));
        check_created();

        // Nothing to do: no change reported.
        assert!(ifs.ensure_attachment(&ns1, &att).await.unwrap().is_empty());

        // Drift inside the container: the address (and so the route) is flushed by hand.
        in_c("ip", &["addr", "flush", "dev", "eth0"]);
        let diffs = ifs
            .observe_attachment(&ns1, &att)
            .await
            .unwrap()
            .differences(&att);
        assert!(
            diffs.iter().any(|d| d.to_string().contains("no address")),
            "{diffs:?}"
        );
        let cap = arp_capture(&veth);
        let changed = ifs.ensure_attachment(&ns1, &att).await.unwrap();
        assert!(
            changed.iter().any(|d| d.to_string().contains("no address")),
            "{changed:?}"
        );
        assert!(
            wait_announcement(&cap, Ipv4Addr::new(10, 77, 1, 5)),
            "no gratuitous ARP seen on {veth}"
        );
        check_created();

        // On demand (the runtime's, once the port is on the bridge): from the container's
        // interface, so it leaves through the host veth.
        ifs.announce(&ns1, &att).await.unwrap();
        assert!(
            wait_announcement(&cap, Ipv4Addr::new(10, 77, 1, 5)),
            "no gratuitous ARP seen on {veth} after announce"
        );
        let mut missing = att.clone();
        missing.interface = "eth9".into();
        assert!(matches!(
            ifs.announce(&ns1, &missing).await,
            Err(InterfaceError::NotFound { .. })
        ));

        // The host end deleted by hand: a notification, then recreation.
        run(
            "ip",
            &["netns", "exec", &node_name2, "ip", "link", "del", &veth],
        );
        let mut saw_removed = false;
        while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(5), events.next()).await {
            if ev
                == (LinkEvent::Changed {
                    name: veth.clone(),
                    kind: LinkChangeKind::Removed,
                })
            {
                saw_removed = true;
                break;
            }
        }
        assert!(saw_removed, "no Removed notification for {veth}");
        let obs = ifs.observe_attachment(&ns1, &att).await.unwrap();
        assert!(
            !obs.host_exists && obs.peer.is_none(),
            "deleting one end removes the pair"
        );
        ifs.ensure_attachment(&ns1, &att).await.unwrap();
        check_created();

        // The "container" was replaced (new process, new namespace): the pair moves.
        let stale = ifs.observe_attachment(&ns2, &att).await.unwrap();
        assert!(stale.host_exists && stale.peer.is_none());
        ifs.ensure_attachment(&ns2, &att).await.unwrap();
        assert!(
            ifs.observe_attachment(&ns2, &att)
                .await
                .unwrap()
                .differences(&att)
                .is_empty()
        );
        assert!(
            ifs.observe_attachment(&ns1, &att)
                .await
                .unwrap()
                .peer
                .is_none(),
            "old namespace lost its eth0"
        );

        let owned = ifs.list_owned().await.unwrap();
        assert!(
            owned.iter().any(|i| i.name == veth && i.kind == "veth"),
            "{owned:?}"
        );
        assert!(matches!(
            ifs.remove_host_veth("lo").await,
            Err(InterfaceError::NotOwned { .. })
        ));
        ifs.remove_host_veth(&veth).await.unwrap();
        ifs.remove_host_veth(&veth).await.unwrap();
        assert!(
            !ifs.observe_attachment(&ns2, &att)
                .await
                .unwrap()
                .host_exists
        );

        // A gone process is a namespace error, not a panic.
        assert!(matches!(
            ifs.observe_attachment(&ContainerNs::new(u32::MAX - 1, "gone"), &att)
                .await,
            Err(InterfaceError::Namespace { .. })
        ));
    });
    drop((c1, c2));
}

/// Issue 12, the prober against the kernel: a stand-in for a bridge's internal port in the
/// node namespace (one end of a veth pair) whose other end is in a namespace that holds
/// 10.77.9.9 with a MAC of its own. A probe for that address hears its kernel's reply, one
/// for a free address hears nothing; an attachment made with its address withheld holds no
/// address and no default route, and gets them when made as wanted.
#[test]
fn backend_arp_probe_hears_the_holder_and_addresses_wait() {
    require_root();
    require_tool("ip");
    require_tool("nsenter");
    let node = NetNs::new("tbp");
    let squatter = Sleeper::new();
    let container = Sleeper::new();
    let port = unique("tb-p");
    let pid = squatter.pid().to_string();
    node.exec(
        "ip",
        &[
            "link", "add", &port, "type", "veth", "peer", "name", "sq0", "netns", &pid,
        ],
    );
    node.exec("ip", &["link", "set", &port, "up"]);
    squatter.exec(
        "ip",
        &["link", "set", "sq0", "address", "02:42:ac:11:00:09"],
    );
    squatter.exec("ip", &["addr", "add", "10.77.9.9/16", "dev", "sq0"]);
    squatter.exec("ip", &["link", "set", "sq0", "up"]);
    let ns = container.ns();
    let pid = container.pid();
    let att = attachment(&unique("tv-p"));
    let in_c = move |args: &[&str]| {
        let p = pid.to_string();
        let mut a = vec!["-t", p.as_str(), "-n", "ip"];
        a.extend_from_slice(args);
        run("nsenter", &a)
    };

    node.block_on(move || async move {
        let prober = ArpProber;
        let taken = Ipv4Addr::new(10, 77, 9, 9);
        let claims = prober.probe(&port, taken).await.unwrap();
        assert_eq!(
            claims,
            vec![Claim {
                mac: Mac([0x02, 0x42, 0xac, 0x11, 0x00, 0x09]),
                kind: ClaimKind::Reply
            }]
        );
        let free = Ipv4Addr::new(10, 77, 9, 10);
        let claims = prober.probe(&port, free).await.unwrap();
        assert_eq!(claims, vec![], "nobody holds {free}");
        assert!(matches!(
            prober.probe("tb-nosuch0", free).await,
            Err(ProbeError::NoBridgePort { .. })
        ));

        let ifs = NetlinkInterfaces::new().expect("netlink");
        let changed = ifs.ensure_attachment_unaddressed(&ns, &att).await.unwrap();
        assert!(!changed.is_empty());
        let addr = in_c(&["-o", "-4", "addr", "show", "dev", "eth0"]);
        assert_eq!(addr.trim(), "", "no address while withheld");
        assert_eq!(in_c(&["route", "show", "default"]).trim(), "");
        let o = ifs.observe_attachment(&ns, &att).await.unwrap();
        assert!(o.differences_unaddressed(&att).is_empty(), "{o:?}");
        assert!(o.adds_address(&att));
        assert!(
            ifs.ensure_attachment_unaddressed(&ns, &att)
                .await
                .unwrap()
                .is_empty(),
            "withheld again: nothing to do"
        );
        ifs.ensure_attachment(&ns, &att).await.unwrap();
        let addr = in_c(&["-o", "-4", "addr", "show", "dev", "eth0"]);
        assert!(addr.contains("inet 10.77.1.5/16"), "{addr}");
        let route = in_c(&["route", "show", "default"]);
        assert!(route.contains("default via 10.77.1.1 dev eth0"), "{route}");
    });
    drop(squatter);
}

#[test]
fn backend_netlink_gateway_on_bridge_interface() {
    require_root();
    require_tool("ip");
    let node = NetNs::new("tbg");
    let bridge = unique("tb-g");
    // A veth stands in for ovs-vswitchd's internal port here (no dummy module on these
    // machines); the OVS test does the same on a real one.
    node.exec(
        "ip",
        &[
            "link",
            "add",
            &bridge,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{bridge}p"),
        ],
    );
    node.exec("ip", &["addr", "add", "10.99.9.9/24", "dev", &bridge]);
    let b = bridge.clone();
    node.block_on(move || async move {
        let ifs = NetlinkInterfaces::new().expect("netlink");
        let gw: ipnet::Ipv4Net = "10.78.1.1/16".parse().unwrap();
        let changed = ifs.ensure_gateway(&b, gw, 1400).await.unwrap();
        assert!(
            changed
                .iter()
                .any(|c| c.to_string().contains("stray address 10.99.9.9/24")),
            "{changed:?}"
        );
        let g = ifs.observe_gateway(&b).await.unwrap();
        assert_eq!(g.addresses, vec![gw]);
        assert!(g.up);
        assert_eq!(g.mtu, 1400);
        assert!(
            g.differences(gw, 1400).is_empty(),
            "{:?}",
            g.differences(gw, 1400)
        );
        assert!(ifs.ensure_gateway(&b, gw, 1400).await.unwrap().is_empty());
        assert!(matches!(
            ifs.ensure_gateway("eth9", gw, 1400).await,
            Err(InterfaceError::NotOwned { .. })
        ));
    });
    let shown = node.exec("ip", &["-o", "addr", "show", "dev", &bridge]);
    assert!(
        shown.contains("10.78.1.1/16") && !shown.contains("10.99.9.9"),
        "{shown}"
    );
}

/// Issue 9: a dead container's pid is never used to enter a namespace. A container whose
/// process was killed (reaped or not), or whose pid now names a process of another cgroup
/// (the pid reused), is refused before anything is created — and the namespace watch hears
/// changes made inside a live container and ends when its process exits.
#[test]
fn backend_netlink_dead_container_is_detected_not_entered() {
    require_root();
    require_tool("ip");
    require_tool("nsenter");
    let node = NetNs::new("tbd");
    let mut zombie = Sleeper::new();
    let mut reaped = Sleeper::new();
    let live = Sleeper::new();
    let stranger = Sleeper::new();
    let (zombie_ns, reaped_ns, live_ns) = (zombie.ns(), reaped.ns(), live.ns());
    // The stranger holds a pid the container named: as if the container died and its pid
    // went to another process (which has a cgroup of its own).
    let reused = ContainerNs::new(stranger.pid(), live.container_id());
    zombie.kill_unreaped();
    reaped.kill();
    let veth = unique("tv-d");
    let att = attachment(&veth);
    node.block_on(move || async move {
        let ifs = NetlinkInterfaces::new().expect("netlink");
        for (what, ns) in [
            ("zombie", &zombie_ns),
            ("reaped", &reaped_ns),
            ("reused", &reused),
        ] {
            let err = ifs.ensure_attachment(ns, &att).await.unwrap_err();
            match (&err, what) {
                (
                    InterfaceError::Namespace {
                        source: NsError::Exited { .. },
                        ..
                    },
                    "zombie" | "reaped",
                ) => {}
                (
                    InterfaceError::Namespace {
                        source: NsError::NotTheContainer { .. },
                        ..
                    },
                    "reused",
                ) => {}
                _ => panic!("{what}: {err:?}"),
            }
            assert!(
                ifs.list_owned()
                    .await
                    .unwrap()
                    .iter()
                    .all(|i| i.name != veth),
                "{what}: a veth was created for a dead container"
            );
        }

        // A live container: its namespace watch hears an address added inside it.
        let mut watch = ifs.watch_container(&live_ns).await.unwrap();
        ifs.ensure_attachment(&live_ns, &att).await.unwrap();
        let p = live_ns.pid.to_string();
        run(
            "nsenter",
            &[
                "-t",
                &p,
                "-n",
                "ip",
                "addr",
                "add",
                "10.77.9.9/16",
                "dev",
                "eth0",
            ],
        );
        let mut heard = false;
        while let Ok(Some(ch)) = tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
            if ch == NamespaceChange::Address {
                heard = true;
                break;
            }
        }
        assert!(heard, "no address notification from inside the container");
        // The container's process exits: the watch ends (its socket must not keep the dead
        // namespace alive).
        let mut live = live;
        live.kill();
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            while watch.next().await.is_some() {}
        })
        .await;
        assert!(ended.is_ok(), "the watch outlived the container's process");
        assert!(matches!(
            ifs.observe_attachment(&live_ns, &att).await,
            Err(InterfaceError::Namespace {
                source: NsError::Exited { .. },
                ..
            })
        ));
    });
    drop((stranger, zombie, reaped));
}
