//! The nftables NAT backend against the real kernel (root): table replace + observe round
//! trip in a container's namespace and the node's, and traffic through the rules.

mod backend_support;

use backend_support::{NetNs, Sleeper, fetch, ns_of_pid, require_root, require_tool, run, serve};
use topo_agent::backend::{LinkDnat, Nat, NatRules, NetNs as Ns, NftNat, PortDnat};
use topo_schema::kinds::Protocol;

/// Joins two namespaces with a veth pair: `a_if` with `a_addr` in A, `b_if` with `b_addr` in
/// B. A namespace is given as its file and as what `ip link ... netns` takes (pid or name).
/// Interface names must be unique machine-wide: iproute2 names both ends in our namespace
/// before moving them.
fn wire(a: (&str, &str), a_if: &str, a_addr: &str, b: (&str, &str), b_if: &str, b_addr: &str) {
    run(
        "ip",
        &[
            "link", "add", a_if, "netns", a.1, "type", "veth", "peer", "name", b_if, "netns", b.1,
        ],
    );
    for (ns, ifn, addr) in [(a.0, a_if, a_addr), (b.0, b_if, b_addr)] {
        let net = format!("--net={ns}");
        run("nsenter", &[&net, "ip", "addr", "add", addr, "dev", ifn]);
        run("nsenter", &[&net, "ip", "link", "set", ifn, "up"]);
        run("nsenter", &[&net, "ip", "link", "set", "lo", "up"]);
    }
}

#[test]
fn backend_nat_link_in_container_namespace() {
    require_root();
    require_tool("nft");
    require_tool("nsenter");
    let consumer = Sleeper::new();
    let target = Sleeper::new();
    let (c, t) = (ns_of_pid(consumer.pid()), ns_of_pid(target.pid()));
    let (cp, tp) = (consumer.pid().to_string(), target.pid().to_string());
    wire(
        (&c, &cp),
        "tnc0",
        "10.88.0.1/24",
        (&t, &tp),
        "tnt0",
        "10.88.0.2/24",
    );
    let root_localnet =
        std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/route_localnet").unwrap();
    serve(&t, 6380, "from-target");
    assert_eq!(
        fetch(&c, "10.88.0.2:6380").as_deref(),
        Some("from-target"),
        "plain path works"
    );
    assert_eq!(fetch(&c, "127.0.0.1:6379"), None, "nothing listens locally");

    let rules = NatRules {
        links: vec![
            LinkDnat {
                listen: "127.0.0.1:6379".parse().unwrap(),
                protocol: Protocol::Tcp,
                target: "10.88.0.2:6380".parse().unwrap(),
            },
            LinkDnat {
                listen: "127.0.0.1:5353".parse().unwrap(),
                protocol: Protocol::Udp,
                target: "10.88.0.2:53".parse().unwrap(),
            },
        ],
        ..Default::default()
    };
    let pid = consumer.pid();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let nat = NftNat::new();
        let ns = Ns::Pid(pid);
        let before = nat.observe(ns).await.unwrap();
        assert!(!before.table_exists && !before.route_localnet);
        assert!(!before.satisfies(&rules));
        nat.apply(ns, &rules).await.unwrap();
        let after = nat.observe(ns).await.unwrap();
        assert!(after.satisfies(&rules), "{after:?}");
        assert!(after.route_localnet);
        assert_eq!(after.rules, rules.clone().normalized());
    });
    // route_localnet was set in the consumer's namespace, not in the agent's.
    let here = std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/route_localnet").unwrap();
    assert_eq!(here, root_localnet);
    assert!(
        run(
            "nsenter",
            &[
                &format!("--net={}", &c),
                "nft",
                "list",
                "table",
                "ip",
                "topo"
            ]
        )
        .contains("dnat to 10.88.0.2:6380")
    );

    // The link works: 127.0.0.1:6379 inside the consumer reaches the target.
    assert_eq!(fetch(&c, "127.0.0.1:6379").as_deref(), Some("from-target"));

    // Tampering is seen; re-apply restores; a repoint replaces atomically.
    run(
        "nsenter",
        &[
            &format!("--net={}", &c),
            "nft",
            "add",
            "rule",
            "ip",
            "topo",
            "output",
            "tcp",
            "dport",
            "1",
            "accept",
        ],
    );
    let repointed = NatRules {
        links: vec![LinkDnat {
            listen: "127.0.0.1:6379".parse().unwrap(),
            protocol: Protocol::Tcp,
            target: "10.88.0.2:6381".parse().unwrap(),
        }],
        ..Default::default()
    };
    serve(&t, 6381, "second-target");
    rt.block_on(async {
        let nat = NftNat::new();
        let ns = Ns::Pid(pid);
        let o = nat.observe(ns).await.unwrap();
        assert!(
            !o.exact && !o.satisfies(&rules),
            "a foreign rule makes the table inexact"
        );
        nat.apply(ns, &repointed).await.unwrap();
        assert!(nat.observe(ns).await.unwrap().satisfies(&repointed));
    });
    assert_eq!(
        fetch(&c, "127.0.0.1:6379").as_deref(),
        Some("second-target")
    );

    rt.block_on(async {
        let nat = NftNat::new();
        let ns = Ns::Pid(pid);
        nat.remove(ns).await.unwrap();
        nat.remove(ns).await.unwrap();
        let o = nat.observe(ns).await.unwrap();
        assert!(!o.table_exists && o.satisfies(&NatRules::default()));
        assert!(
            nat.observe(Ns::Pid(u32::MAX - 1)).await.is_err(),
            "a gone process is an error"
        );
    });
    assert_eq!(fetch(&c, "127.0.0.1:6379"), None);
}

#[test]
fn backend_nat_node_masquerade_and_published_port() {
    require_root();
    require_tool("nft");
    // node: the agent's namespace; container: behind it on 10.89.1.0/24; client: another host.
    let node = NetNs::new("tnn");
    let container = Sleeper::new();
    let client = Sleeper::new();
    let n = node.path().display().to_string();
    let (c, x) = (ns_of_pid(container.pid()), ns_of_pid(client.pid()));
    let (cp, xp) = (container.pid().to_string(), client.pid().to_string());
    wire(
        (&n, &node.name),
        "tv-tnc",
        "10.89.1.1/24",
        (&c, &cp),
        "tnc1",
        "10.89.1.5/24",
    );
    wire(
        (&n, &node.name),
        "tnul0",
        "192.168.77.1/24",
        (&x, &xp),
        "tnx0",
        "192.168.77.2/24",
    );
    run(
        "nsenter",
        &[
            &format!("--net={}", &c),
            "ip",
            "route",
            "add",
            "default",
            "via",
            "10.89.1.1",
        ],
    );
    // other: a container of a second network behind the same node, on 10.90.1.0/24.
    let other = Sleeper::new();
    let o = ns_of_pid(other.pid());
    let op = other.pid().to_string();
    wire(
        (&n, &node.name),
        "tv-tnd",
        "10.90.1.1/24",
        (&o, &op),
        "tnd1",
        "10.90.1.5/24",
    );
    run(
        "nsenter",
        &[
            &format!("--net={}", &o),
            "ip",
            "route",
            "add",
            "default",
            "via",
            "10.90.1.1",
        ],
    );
    node.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    serve(&c, 80, "published");
    assert_eq!(
        fetch(&o, "10.89.1.5:80").as_deref(),
        Some("published"),
        "without the table the node routes between the networks"
    );

    let rules = NatRules {
        masquerade: vec!["10.89.0.0/16".parse().unwrap()],
        ports: vec![
            PortDnat {
                host_port: 50000,
                protocol: Protocol::Tcp,
                host_ip: "192.168.77.1".parse().unwrap(),
                target: "10.89.1.5:80".parse().unwrap(),
            },
            PortDnat {
                host_port: 50001,
                protocol: Protocol::Tcp,
                host_ip: "0.0.0.0".parse().unwrap(),
                target: "10.89.1.5:80".parse().unwrap(),
            },
        ],
        links: vec![],
        isolate: NatRules::isolation_pairs(&[
            "10.89.0.0/16".parse().unwrap(),
            "10.90.0.0/16".parse().unwrap(),
        ]),
    };
    let r2 = rules.clone();
    node.block_on(move || async move {
        let nat = NftNat::new();
        assert!(!nat.observe(Ns::Node).await.unwrap().table_exists);
        nat.apply(Ns::Node, &r2).await.unwrap();
        let o = nat.observe(Ns::Node).await.unwrap();
        assert!(o.satisfies(&r2), "{o:?}");
        assert!(o.exact && o.rules == r2.clone().normalized(), "{o:?}");
    });
    // Isolation: the other network's container no longer reaches this one through the node,
    // except through the published port (a DNATed connection, replies included).
    assert_eq!(fetch(&o, "10.89.1.5:80"), None, "networks are isolated");
    assert_eq!(
        fetch(&o, "192.168.77.1:50000").as_deref(),
        Some("published")
    );
    // From another host, and from the node itself, at the node's address.
    assert_eq!(
        fetch(&x, "192.168.77.1:50000").as_deref(),
        Some("published")
    );
    assert_eq!(
        fetch(&n, "192.168.77.1:50000").as_deref(),
        Some("published")
    );
    // Published on the node's address only: not at its other address (the gateway), which
    // a rule matching every local address would have taken over; 0.0.0.0 takes every one.
    assert_eq!(fetch(&n, "10.89.1.1:50000"), None, "not on another address");
    assert_eq!(
        fetch(&n, "10.89.1.1:50001").as_deref(),
        Some("published"),
        "hostIP 0.0.0.0: every local address"
    );
    // Egress: the container reaches the client host masqueraded as the node.
    serve(&x, 8080, "outside");
    assert_eq!(fetch(&c, "192.168.77.2:8080").as_deref(), Some("outside"));
    let ct = node
        .try_exec("nft", &["list", "table", "ip", "topo"])
        .unwrap_or_default();
    assert!(ct.contains("masquerade"), "{ct}");

    node.block_on(move || async move {
        let nat = NftNat::new();
        nat.apply(Ns::Node, &NatRules::default()).await.unwrap();
        assert!(!nat.observe(Ns::Node).await.unwrap().table_exists);
    });
    assert_eq!(fetch(&x, "192.168.77.1:50000"), None);
}
