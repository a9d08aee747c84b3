//! Tables: each probe outcome and the reason (with its hop) a check gives for it.

use std::net::Ipv4Addr;

use super::*;

fn attachment() -> AttachmentEntry {
    AttachmentEntry {
        network: "ov".into(),
        bridge: "tb-ov".into(),
        interface: "eth0".into(),
        host_veth: "tv-web1-0".into(),
        address: "10.2.1.2/16".parse().unwrap(),
        mtu: 1400,
        default_gateway: None,
        tx_checksum_off: false,
    }
}

fn peer() -> PeerTarget {
    PeerTarget {
        network: "ov".into(),
        container: "db".into(),
        node: "node3".into(),
        ip: Ipv4Addr::new(10, 2, 3, 2),
        mtu: 1400,
    }
}

#[test]
fn echo_failures_name_the_hop() {
    let a = attachment();
    let answered = Neighbour::Answered {
        mac: "02:00:00:00:00:01".into(),
        device: "eth0".into(),
    };
    let incomplete = Neighbour::Incomplete {
        device: "eth0".into(),
    };
    let from = Ipv4Addr::new(10, 2, 1, 1);
    let rows: Vec<(Echo, Neighbour, Option<&str>)> = vec![
        (Echo::Reply, Neighbour::Absent, None),
        (
            Echo::Timeout,
            incomplete,
            Some(
                "no ARP reply on tb-ov@node1 within 1 s (eth0 of the container, host side tv-web1-0)",
            ),
        ),
        (
            Echo::Timeout,
            Neighbour::Absent,
            Some(
                "no ARP reply on tb-ov@node1 within 1 s (eth0 of the container, host side tv-web1-0)",
            ),
        ),
        (
            Echo::Timeout,
            answered,
            Some("ARP answered by 02:00:00:00:00:01 on eth0, but no echo reply from db within 1 s"),
        ),
        (
            Echo::NoRoute("Network is unreachable".into()),
            Neighbour::Absent,
            Some("Network is unreachable inside the container (eth0)"),
        ),
        (
            Echo::Unreachable {
                from,
                what: "host unreachable".into(),
            },
            Neighbour::Absent,
            Some("host unreachable, says 10.2.1.1"),
        ),
    ];
    for (e, n, want) in rows {
        assert_eq!(
            echo_failure(&e, &n, &a, "node1", "db").as_deref(),
            want,
            "{e:?}"
        );
    }
}

#[test]
fn mtu_failures_name_the_hop() {
    let (a, p) = (attachment(), peer());
    let rows: Vec<(Echo, Option<&str>)> = vec![
        (Echo::Reply, None),
        (
            Echo::TooBig,
            Some("eth0 of web1 refuses a 1400-byte packet: its MTU is below the network's"),
        ),
        (
            Echo::FragNeeded {
                from: Ipv4Addr::new(10, 2, 1, 1),
                mtu: 1300,
            },
            Some("fragmentation needed at 10.2.1.1 (next-hop MTU 1300, the network's is 1400)"),
        ),
        (
            Echo::Timeout,
            Some(
                "no reply within 1 s: a hop between tb-ov@node1 and db on node3 drops 1400-byte packets (an MTU below the network's on a veth, a bridge port or the tunnel)",
            ),
        ),
    ];
    for (e, want) in rows {
        assert_eq!(
            mtu_failure(&e, &a, "web1", "node1", &p).as_deref(),
            want,
            "{e:?}"
        );
    }
}

#[test]
fn link_failures_tell_a_missing_rule_from_a_missing_listener() {
    let rule = |protocol| LinkRule {
        link: "web-db".into(),
        generation: 1,
        listen: "127.0.0.2:6379".parse().unwrap(),
        protocol,
        target: Some("10.2.3.2:6379".parse().unwrap()),
        reason: None,
        message: None,
    };
    let (tcp, udp) = (rule(Protocol::Tcp), rule(Protocol::Udp));
    let rows: Vec<(&LinkRule, Connect, Option<Connect>, Option<&str>)> = vec![
        (&tcp, Connect::Ok, None, None),
        (
            &tcp,
            Connect::Refused,
            Some(Connect::Ok),
            Some(
                "127.0.0.2:6379 is refused in web while 10.2.3.2:6379 answers: the link's DNAT rule in web is missing",
            ),
        ),
        (
            &tcp,
            Connect::Refused,
            Some(Connect::Refused),
            Some("10.2.3.2:6379 refuses the connection: nothing listens there"),
        ),
        (
            &tcp,
            Connect::Timeout,
            None,
            Some("no answer within 1 s from 127.0.0.2:6379 (forwarded to 10.2.3.2:6379)"),
        ),
        (
            &udp,
            Connect::Refused,
            Some(Connect::Refused),
            Some(
                "ICMP port unreachable: nothing receives on 10.2.3.2:6379 (or the link's rule in web is missing)",
            ),
        ),
    ];
    for (r, first, direct, want) in rows {
        assert_eq!(
            link_failure(&first, direct.as_ref(), r, "web").as_deref(),
            want,
            "{first:?} {direct:?}"
        );
    }
}

#[test]
fn port_failures_name_the_node() {
    let t = PublishedTarget {
        container: "web1".into(),
        node: "node1".into(),
        address: Ipv4Addr::new(192, 168, 100, 1),
        port: 8080,
        protocol: Protocol::Tcp,
    };
    assert_eq!(port_failure(&Connect::Ok, &t), None);
    assert_eq!(
        port_failure(&Connect::Refused, &t).as_deref(),
        Some(
            "192.168.100.1:8080 refused the connection: node node1 does not forward hostPort 8080 to web1, or nothing listens in web1"
        )
    );
    assert_eq!(
        port_failure(&Connect::Timeout, &t).as_deref(),
        Some("no answer from 192.168.100.1:8080 within 1 s")
    );
    assert_eq!(
        t.subject("node2"),
        "node2 → web1's 192.168.100.1:8080/tcp on node node1"
    );
}
