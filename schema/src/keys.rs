//! The etcd key layout. Everything topo stores lives under [`ROOT`].
//!
//! ```text
//! /topo/v1/objects/<Kind>/<name>             object (apiVersion, kind, metadata, spec); its
//!                                            mod_revision is the resourceVersion
//! /topo/v1/objstatus/<Kind>/<name>           status written by the controller
//! /topo/v1/objverify/Container/<name>        the last `topoctl verify` of the container (a
//!                                            Verified condition), folded into its status
//! /topo/v1/ipam/<network>/blocks/<a.b.c.d-p> node that leases the block
//! /topo/v1/ipam/<network>/addrs/<a.b.c.d>    holder of the address (container name)
//! /topo/v1/slices/<node>/<entry>             the node's slice (see slice.rs)
//! /topo/v1/reports/<node>/<Kind>/<name>      what the node's agent observed
//! /topo/v1/heartbeats/<node>                 agent heartbeat, bound to its lease
//! /topo/v1/registrations/<node>              an agent's registration (address, datapath),
//!                                            folded into a Node by the controller
//! /topo/v1/events/<Kind>/<name>/<id>         events the controller records, bounded
//! /topo/v1/events/node/<node>/<Kind>/<name>/<id>  events node <node>'s agent records
//! /topo/v1/leader                            controller election
//! /topo/v1/fence                             bumped by every fenced write (optimistic lock)
//! /topo/v1/txlog/<id>/...                    intent log of change sets too large for one txn
//! ```
//!
//! The order of the prefixes matters: everything the controller caches (fence, heartbeats,
//! ipam, leader, objects, objstatus, objverify, reports) sorts inside [`CACHE_RANGE_START`,
//! [`CACHE_RANGE_END`]), so one etcd watch sees each transaction whole; slices, events and
//! the intent log sort outside it.
//!
//! Everything one node's agent may touch is a prefix (or a single key) that names the node
//! first, so an etcd role can grant exactly that node's share (see `topo-pki`'s etcd roles):
//! read `slices/<node>/`; read and write `reports/<node>/`, `heartbeats/<node>`,
//! `registrations/<node>` and `events/node/<node>/`.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::kinds::Kind;

pub const ROOT: &str = "/topo/v1/";

pub fn objects_prefix(kind: Kind) -> String {
    format!("{ROOT}objects/{}/", kind.as_str())
}
pub fn object(kind: Kind, name: &str) -> String {
    format!("{}{name}", objects_prefix(kind))
}
pub fn all_objects_prefix() -> String {
    format!("{ROOT}objects/")
}
pub fn all_status_prefix() -> String {
    format!("{ROOT}objstatus/")
}
pub fn status_prefix(kind: Kind) -> String {
    format!("{}{}/", all_status_prefix(), kind.as_str())
}
pub fn status(kind: Kind, name: &str) -> String {
    format!("{}{name}", status_prefix(kind))
}
pub fn ipam_prefix(network: &str) -> String {
    format!("{ROOT}ipam/{network}/")
}
pub fn ipam_blocks_prefix(network: &str) -> String {
    format!("{}blocks/", ipam_prefix(network))
}
pub fn ipam_block(network: &str, block: Ipv4Net) -> String {
    format!(
        "{}{}-{}",
        ipam_blocks_prefix(network),
        block.network(),
        block.prefix_len()
    )
}
pub fn ipam_addrs_prefix(network: &str) -> String {
    format!("{}addrs/", ipam_prefix(network))
}
pub fn ipam_addr(network: &str, ip: Ipv4Addr) -> String {
    format!("{}{ip}", ipam_addrs_prefix(network))
}
pub fn slices_prefix() -> String {
    format!("{ROOT}slices/")
}
pub fn slice_prefix(node: &str) -> String {
    format!("{ROOT}slices/{node}/")
}
/// `entry_key` is a [`SliceKey`](crate::slice::SliceKey) (or its text form).
pub fn slice_entry(node: &str, entry_key: impl std::fmt::Display) -> String {
    format!("{}{entry_key}", slice_prefix(node))
}
pub fn reports_prefix() -> String {
    format!("{ROOT}reports/")
}
pub fn node_reports_prefix(node: &str) -> String {
    format!("{ROOT}reports/{node}/")
}
pub fn report(node: &str, kind: Kind, name: &str) -> String {
    format!("{}{}/{name}", node_reports_prefix(node), kind.as_str())
}
pub fn heartbeats_prefix() -> String {
    format!("{ROOT}heartbeats/")
}
pub fn heartbeat(node: &str) -> String {
    format!("{}{node}", heartbeats_prefix())
}
pub fn events_prefix() -> String {
    format!("{ROOT}events/")
}
pub fn object_events_prefix(kind: Kind, name: &str) -> String {
    format!("{}{}/{name}/", events_prefix(), kind.as_str())
}
/// Events agents record live under a per-node prefix (an etcd role grants one node its own);
/// controller events are keyed by kind, which starts with an upper-case letter, so the
/// lower-case `node/` never meets them.
pub fn all_node_events_prefix() -> String {
    format!("{}node/", events_prefix())
}
pub fn node_events_prefix(node: &str) -> String {
    format!("{}{node}/", all_node_events_prefix())
}
pub fn node_object_events_prefix(node: &str, kind: Kind, name: &str) -> String {
    format!("{}{}/{name}/", node_events_prefix(node), kind.as_str())
}
pub fn registrations_prefix() -> String {
    format!("{ROOT}registrations/")
}
pub fn registration(node: &str) -> String {
    format!("{}{node}", registrations_prefix())
}
/// Parses `<ROOT>registrations/<node>`.
pub fn parse_registration_key(key: &str) -> Option<&str> {
    key.strip_prefix(ROOT)?
        .strip_prefix("registrations/")
        .filter(|n| !n.is_empty() && !n.contains('/'))
}
pub fn leader() -> String {
    format!("{ROOT}leader")
}

/// The key every fenced write compares and bumps; its value is a [`Fence`].
pub fn fence() -> String {
    format!("{ROOT}fence")
}
pub fn intents_prefix() -> String {
    format!("{ROOT}txlog/")
}
pub fn intent_prefix(id: &str) -> String {
    format!("{}{id}/", intents_prefix())
}
pub fn intent_chunk(id: &str, n: usize) -> String {
    format!("{}chunk/{n:08}", intent_prefix(id))
}
pub fn intent_committed(id: &str) -> String {
    format!("{}committed", intent_prefix(id))
}

/// First key of the range the controller's cache watches (inclusive).
pub const CACHE_RANGE_START: &str = "/topo/v1/fence";
/// End of the range the controller's cache watches (exclusive): slices start here.
pub const CACHE_RANGE_END: &str = "/topo/v1/slices/";

/// Value of [`fence`]: names the intent being rolled forward, if any. While an intent is
/// pending, readers hold back (the cache does not publish half-applied change sets) and
/// writers roll it forward before writing.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fence {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_intent: Option<String>,
    /// How many of the pending intent's operations are applied. Each batch writes it in the
    /// batch's own transaction, so whoever rolls the intent forward (its writer, the janitor,
    /// a new leader) goes on from there instead of writing every operation again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub applied_ops: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Value of [`ipam_block`]: the node that leases the block.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockValue {
    pub node: String,
}

/// Value of [`ipam_addr`]: the container that holds the address.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AddrValue {
    pub holder: String,
}

pub fn all_verified_prefix() -> String {
    format!("{ROOT}objverify/")
}
/// Where the controller keeps the `Verified` condition of an object (containers only).
pub fn verified(kind: Kind, name: &str) -> String {
    format!("{}{}/{name}", all_verified_prefix(), kind.as_str())
}
/// Parses `<ROOT>objverify/<Kind>/<name>`.
pub fn parse_verified_key(key: &str) -> Option<(Kind, &str)> {
    let rest = key.strip_prefix(ROOT)?.strip_prefix("objverify/")?;
    let (kind, name) = rest.split_once('/')?;
    Some((Kind::from_manifest(kind)?, name)).filter(|(_, n)| !n.is_empty() && !n.contains('/'))
}

/// Parses `<ROOT>objstatus/<Kind>/<name>`.
pub fn parse_status_key(key: &str) -> Option<(Kind, &str)> {
    let rest = key.strip_prefix(ROOT)?.strip_prefix("objstatus/")?;
    let (kind, name) = rest.split_once('/')?;
    Some((Kind::from_manifest(kind)?, name))
}

/// What an IPAM key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpamKey<'a> {
    Block { network: &'a str, block: Ipv4Net },
    Addr { network: &'a str, ip: Ipv4Addr },
}

/// Parses `<ROOT>ipam/<network>/blocks/<a.b.c.d-p>` and `<ROOT>ipam/<network>/addrs/<a.b.c.d>`.
pub fn parse_ipam_key(key: &str) -> Option<IpamKey<'_>> {
    let rest = key.strip_prefix(ROOT)?.strip_prefix("ipam/")?;
    let (network, rest) = rest.split_once('/')?;
    if let Some(b) = rest.strip_prefix("blocks/") {
        let (ip, len) = b.split_once('-')?;
        let block = Ipv4Net::new(ip.parse().ok()?, len.parse().ok()?).ok()?;
        return Some(IpamKey::Block { network, block });
    }
    let ip = rest.strip_prefix("addrs/")?.parse().ok()?;
    Some(IpamKey::Addr { network, ip })
}

/// Parses `<ROOT>heartbeats/<node>`.
pub fn parse_heartbeat_key(key: &str) -> Option<&str> {
    key.strip_prefix(ROOT)?
        .strip_prefix("heartbeats/")
        .filter(|n| !n.is_empty() && !n.contains('/'))
}

/// Parses `<ROOT>objects/<Kind>/<name>`.
pub fn parse_object_key(key: &str) -> Option<(Kind, &str)> {
    let rest = key.strip_prefix(ROOT)?.strip_prefix("objects/")?;
    let (kind, name) = rest.split_once('/')?;
    Some((Kind::from_manifest(kind)?, name))
}

/// Parses `<ROOT>slices/<node>/<entry>` into the node and the entry's key (its text form,
/// see [`SliceKey`](crate::slice::SliceKey)).
pub fn parse_slice_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(ROOT)?.strip_prefix("slices/")?;
    rest.split_once('/')
        .filter(|(node, entry)| !node.is_empty() && !entry.is_empty())
}

/// Parses `<ROOT>reports/<node>/<Kind>/<name>`.
pub fn parse_report_key(key: &str) -> Option<(&str, Kind, &str)> {
    let rest = key.strip_prefix(ROOT)?.strip_prefix("reports/")?;
    let mut it = rest.splitn(3, '/');
    let node = it.next()?;
    let kind = Kind::from_manifest(it.next()?)?;
    Some((node, kind, it.next()?))
}

/// etcd's range end for a prefix (the prefix with its last byte incremented).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_keys() {
        assert_eq!(
            parse_object_key(&object(Kind::Link, "a-b")),
            Some((Kind::Link, "a-b"))
        );
        assert_eq!(parse_object_key("/topo/v1/objects/Nope/x"), None);
        assert_eq!(
            parse_report_key(&report("node1", Kind::Container, "redis")),
            Some(("node1", Kind::Container, "redis"))
        );
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(
            parse_slice_key(&slice_entry("node1", "tunnels/tg-x")),
            Some(("node1", "tunnels/tg-x"))
        );
        assert_eq!(parse_slice_key("/topo/v1/slices/node1/"), None);
        assert_eq!(parse_slice_key("/topo/v1/slices/node1"), None);
        assert_eq!(
            parse_status_key(&status(Kind::Node, "n1")),
            Some((Kind::Node, "n1"))
        );
        let b: Ipv4Net = "10.2.1.0/24".parse().unwrap();
        assert_eq!(
            parse_ipam_key(&ipam_block("overlay", b)),
            Some(IpamKey::Block {
                network: "overlay",
                block: b
            })
        );
        let ip: Ipv4Addr = "10.2.1.7".parse().unwrap();
        assert_eq!(
            parse_ipam_key(&ipam_addr("overlay", ip)),
            Some(IpamKey::Addr {
                network: "overlay",
                ip
            })
        );
        assert_eq!(parse_heartbeat_key(&heartbeat("node1")), Some("node1"));
        assert_eq!(
            parse_verified_key(&verified(Kind::Container, "web")),
            Some((Kind::Container, "web"))
        );
        assert_eq!(parse_verified_key(&status(Kind::Container, "web")), None);
        assert_eq!(
            parse_registration_key(&registration("node1")),
            Some("node1")
        );
        // A node's events never fall under another object's controller events.
        assert!(!node_events_prefix("n").starts_with(&object_events_prefix(Kind::Node, "n")));
    }

    #[test]
    fn cache_range_holds_what_the_cache_needs_and_nothing_else() {
        let inside = |k: &str| (CACHE_RANGE_START..CACHE_RANGE_END).contains(&k);
        let b: Ipv4Net = "10.2.1.0/24".parse().unwrap();
        for k in [
            fence(),
            heartbeat("n"),
            ipam_block("net", b),
            leader(),
            object(Kind::Tunnel, "t"),
            status(Kind::Tunnel, "t"),
            verified(Kind::Container, "c"),
            report("n", Kind::Container, "c"),
            registration("n"),
        ] {
            assert!(inside(&k), "{k} must be cached");
        }
        for k in [
            slice_entry("n", "x"),
            object_events_prefix(Kind::Node, "n"),
            node_object_events_prefix("n", Kind::Node, "n"),
            intent_committed("i"),
        ] {
            assert!(!inside(&k), "{k} must not be cached");
        }
    }
}
