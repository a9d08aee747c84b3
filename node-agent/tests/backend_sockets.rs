//! The host-ports backend against the real kernel (root): in a private "node" namespace, a
//! busybox listening on TCP (on `::`, which takes IPv4 too) and this test's own UDP socket
//! are found with their pids and names; a socket of another namespace on the same port is
//! not; a connected socket holds no port.

mod backend_support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backend_support::{NetNs, require_root, require_tool};
use topo_agent::backend::{HostPorts, HostPortsView, NodeSockets};
use topo_schema::kinds::Protocol;

/// `ip netns exec NS busybox ARGS...`, killed on drop.
struct Busybox(Child);

impl Busybox {
    fn spawn(ns: &NetNs, args: &[&str]) -> Busybox {
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "busybox"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn busybox");
        Busybox(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Busybox {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn observe(ns: &NetNs, ports: Vec<(u16, Protocol)>) -> HostPortsView {
    let (tx, rx) = std::sync::mpsc::channel();
    ns.block_on(move || async move {
        let v = NodeSockets::new().observe(&ports).await.expect("observe");
        tx.send(v).unwrap();
    });
    rx.recv().unwrap()
}

/// Observes until `done` holds (the spawned busybox takes a moment to bind).
fn observe_until(
    ns: &NetNs,
    ports: &[(u16, Protocol)],
    done: impl Fn(&HostPortsView) -> bool,
) -> HostPortsView {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = observe(ns, ports.to_vec());
        if done(&v) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn backend_sockets_names_who_holds_a_port_in_the_node_namespace() {
    require_root();
    require_tool("busybox");
    let ns = NetNs::new("tsk");
    ns.exec("ip", &["addr", "add", "192.168.91.1/24", "dev", "lo"]);
    // The same port in the test's own namespace: another node's business.
    let elsewhere = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = elsewhere.local_addr().unwrap().port();
    let p = port.to_string();

    let tcp = Busybox::spawn(&ns, &["nc", "-ll", "-p", &p, "-e", "true"]);
    // Busybox has no UDP server: the test binds one itself, in the namespace.
    let (tx, rx) = std::sync::mpsc::channel();
    ns.block_on(move || async move {
        tx.send(UdpSocket::bind(("192.168.91.1", port)).unwrap())
            .unwrap();
    });
    let udp = rx.recv().unwrap();
    let ports = [(port, Protocol::Tcp), (port, Protocol::Udp)];
    let v = observe_until(&ns, &ports, |v| v.listeners.len() >= 2);
    assert_eq!(v.listeners.len(), 2, "{v:#?}");
    let (t, u) = (&v.listeners[0], &v.listeners[1]);
    assert_eq!((t.protocol, t.port), (Protocol::Tcp, port));
    assert_eq!(t.address, IpAddr::V6(Ipv6Addr::UNSPECIFIED), "{t:?}");
    assert!(!t.v6_only);
    let holder = t.process.as_ref().expect("the busybox is visible");
    assert_eq!((holder.pid, holder.name.as_str()), (tcp.pid(), "busybox"));
    assert!(
        t.clashes_with("192.168.91.1".parse().unwrap()),
        "dual-stack"
    );
    assert_eq!((u.protocol, u.port), (Protocol::Udp, port));
    assert_eq!(u.address, IpAddr::V4(Ipv4Addr::new(192, 168, 91, 1)));
    let holder = u.process.as_ref().expect("this test is visible");
    assert_eq!(holder.pid, std::process::id());
    assert!(u.clashes_with("192.168.91.1".parse().unwrap()));
    assert!(!u.clashes_with("192.168.91.2".parse().unwrap()));
    assert!(
        v.addresses.contains(&"192.168.91.1".parse().unwrap()),
        "{:?}",
        v.addresses
    );
    assert!(
        !v.addresses.contains(&"127.0.0.2".parse().unwrap()),
        "only the namespace's own addresses"
    );

    // A connected UDP socket on another port holds nothing; a port nobody holds is free.
    drop(tcp);
    drop(udp);
    let v = observe_until(&ns, &ports, |v| v.listeners.is_empty());
    assert!(v.listeners.is_empty(), "{v:#?}");
    let (tx, rx) = std::sync::mpsc::channel();
    ns.block_on(move || async move {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.connect("127.0.0.1:9").unwrap();
        let p = s.local_addr().unwrap().port();
        let v = NodeSockets::new()
            .observe(&[(p, Protocol::Udp)])
            .await
            .unwrap();
        tx.send(v).unwrap();
    });
    let v = rx.recv().unwrap();
    assert!(v.listeners.is_empty(), "a connected socket: {v:#?}");
    drop(elsewhere);
}
