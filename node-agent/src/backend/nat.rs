//! NAT with nftables: topo owns the table `ip topo` of a namespace and replaces it whole.
//!
//! The table is programmed through the `nftables` crate, which runs `nft -j -f -` with the
//! JSON on stdin (no shell, nothing user-provided on a command line). For a container's
//! namespace, `nft` is spawned from a thread that joined that namespace (see `netns`): a child
//! process inherits the namespace of the thread that forks it.
//!
//! Every rule carries a comment naming the item it realises (`masquerade 10.2.0.0/16`,
//! `port tcp 50000 10.2.1.5:6379`, `link tcp 127.0.0.1:6379 10.2.3.4:6379`). Observing lists
//! the table, re-renders each commented item and compares it with what the kernel holds, so a
//! rule edited by hand shows as drift and a table in order costs no write.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::SocketAddrV4;

use async_trait::async_trait;
use ipnet::Ipv4Net;
use serde_json::{Value, json};
use topo_schema::kinds::Protocol;
use topo_schema::slice::owner;
use tracing::debug;

use super::netns::run_in_ns_of;
use super::{LinkDnat, Nat, NatRules, NetNs, ObservedNat, PortDnat};

#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("failed to enter the network namespace of process {pid}")]
    Namespace {
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("failed to {what}")]
    Nft {
        what: String,
        #[source]
        source: nftables::helper::NftablesError,
    },
    #[error("failed to set {key}")]
    Sysctl {
        key: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to read the nftables listing: {0}")]
    Listing(String),
}

const TABLE: &str = owner::NFT_TABLE;
/// `/proc/sys` path and sysctl name of the two switches the rules depend on.
const ROUTE_LOCALNET: (&str, &str) = (
    "/proc/sys/net/ipv4/conf/all/route_localnet",
    "net.ipv4.conf.all.route_localnet",
);
const IP_FORWARD: (&str, &str) = ("/proc/sys/net/ipv4/ip_forward", "net.ipv4.ip_forward");

/// The chains of every topo table (the same four whatever the content, so a table is checked
/// against one fixed shape): name, type, hook, priority.
const CHAINS: [(&str, &str, &str, i32); 4] = [
    ("prerouting", "nat", "prerouting", -100),
    ("output", "nat", "output", -100),
    ("postrouting", "nat", "postrouting", 100),
    ("forward", "filter", "forward", 0),
];

/// One thing a table realises; it may take several rules.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Item {
    Masquerade(Ipv4Net),
    Port(PortDnat),
    Link(LinkDnat),
    /// Traffic from the first network's cidr to the second's is not forwarded.
    Isolate(Ipv4Net, Ipv4Net),
}

impl Item {
    pub fn comment(&self) -> String {
        match self {
            Item::Masquerade(c) => format!("masquerade {c}"),
            Item::Port(p) => format!(
                "port {} {} {}",
                p.protocol,
                SocketAddrV4::new(p.host_ip, p.host_port),
                p.target
            ),
            Item::Link(l) => format!("link {} {} {}", l.protocol, l.listen, l.target),
            Item::Isolate(from, to) => format!("isolate {from} {to}"),
        }
    }

    pub fn parse(comment: &str) -> Option<Item> {
        let w: Vec<&str> = comment.split(' ').collect();
        let proto = |s: &str| match s {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            _ => None,
        };
        match w.as_slice() {
            ["masquerade", c] => Some(Item::Masquerade(c.parse().ok()?)),
            ["port", p, hp, t] => {
                let host: SocketAddrV4 = hp.parse().ok()?;
                Some(Item::Port(PortDnat {
                    protocol: proto(p)?,
                    host_port: host.port(),
                    host_ip: *host.ip(),
                    target: t.parse().ok()?,
                }))
            }
            ["link", p, l, t] => Some(Item::Link(LinkDnat {
                protocol: proto(p)?,
                listen: l.parse().ok()?,
                target: t.parse().ok()?,
            })),
            ["isolate", from, to] => Some(Item::Isolate(from.parse().ok()?, to.parse().ok()?)),
            _ => None,
        }
    }

    /// The rules of the item: (chain, expressions), in nft's own JSON form (as `nft -j list`
    /// prints it, so a listing compares equal).
    pub fn rules(&self) -> Vec<(&'static str, Value)> {
        match self {
            Item::Masquerade(c) => vec![(
                "postrouting",
                json!([
                    match_eq("==", payload("ip", "saddr"), prefix(c)),
                    match_eq("!=", payload("ip", "daddr"), prefix(c)),
                    {"masquerade": null}
                ]),
            )],
            Item::Port(p) => {
                // Only traffic to the node itself, and (unless published on every address)
                // only to the port's address: sshd on another address keeps its port 22.
                let mut matches = vec![match_eq(
                    "==",
                    json!({"fib": {"result": "type", "flags": ["daddr"]}}),
                    json!("local"),
                )];
                if !p.host_ip.is_unspecified() {
                    matches.push(match_eq(
                        "==",
                        payload("ip", "daddr"),
                        json!(p.host_ip.to_string()),
                    ));
                }
                matches.push(match_eq(
                    "==",
                    payload(p.protocol.as_str(), "dport"),
                    json!(p.host_port),
                ));
                matches.push(dnat(p.target));
                let dnat = Value::Array(matches);
                let forward = json!([
                    match_eq("==", payload("ip", "daddr"), json!(p.target.ip().to_string())),
                    match_eq("==", payload(p.protocol.as_str(), "dport"), json!(p.target.port())),
                    ct_dnat(),
                    {"accept": null}
                ]);
                vec![
                    ("prerouting", dnat.clone()),
                    ("output", dnat),
                    ("forward", forward),
                ]
            }
            Item::Link(l) => vec![
                (
                    "output",
                    json!([
                        match_eq(
                            "==",
                            payload("ip", "daddr"),
                            json!(l.listen.ip().to_string())
                        ),
                        match_eq(
                            "==",
                            payload(l.protocol.as_str(), "dport"),
                            json!(l.listen.port())
                        ),
                        dnat(l.target)
                    ]),
                ),
                (
                    "postrouting",
                    json!([
                        match_eq("==", payload("ip", "daddr"), json!(l.target.ip().to_string())),
                        match_eq("==", payload(l.protocol.as_str(), "dport"), json!(l.target.port())),
                        ct_dnat(),
                        {"masquerade": null}
                    ]),
                ),
            ],
            // A published port's DNATed connection may cross networks (the port is public),
            // replies included: only traffic nobody DNATed is dropped.
            Item::Isolate(from, to) => {
                let between = [
                    match_eq("==", payload("ip", "saddr"), prefix(from)),
                    match_eq("==", payload("ip", "daddr"), prefix(to)),
                ];
                vec![
                    (
                        "forward",
                        json!([between[0], between[1], ct_dnat(), {"accept": null}]),
                    ),
                    ("forward", json!([between[0], between[1], {"drop": null}])),
                ]
            }
        }
    }
}

fn match_eq(op: &str, left: Value, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

fn prefix(c: &Ipv4Net) -> Value {
    json!({"prefix": {"addr": c.network().to_string(), "len": c.prefix_len()}})
}

fn dnat(t: SocketAddrV4) -> Value {
    json!({"dnat": {"addr": t.ip().to_string(), "port": t.port()}})
}

fn ct_dnat() -> Value {
    match_eq("in", json!({"ct": {"key": "status"}}), json!("dnat"))
}

pub fn items(rules: &NatRules) -> Vec<Item> {
    let r = rules.clone().normalized();
    r.masquerade
        .into_iter()
        .map(Item::Masquerade)
        .chain(r.ports.into_iter().map(Item::Port))
        .chain(r.links.into_iter().map(Item::Link))
        .chain(r.isolate.into_iter().map(|(a, b)| Item::Isolate(a, b)))
        .collect()
}

fn table_obj() -> Value {
    json!({"table": {"family": "ip", "name": TABLE}})
}

/// The batch that replaces the table with `rules` in one nft transaction: `add table` (so the
/// delete cannot fail), `delete table`, then the table, its chains and rules afresh. Empty
/// rules give only the add + delete: no table.
pub fn render_batch(rules: &NatRules) -> Value {
    let mut cmds = vec![json!({"add": table_obj()}), json!({"delete": table_obj()})];
    let items = items(rules);
    if !items.is_empty() {
        cmds.push(json!({"add": table_obj()}));
        for (name, kind, hook, prio) in CHAINS {
            cmds.push(json!({"add": {"chain": {
                "family": "ip", "table": TABLE, "name": name,
                "type": kind, "hook": hook, "prio": prio, "policy": "accept"
            }}}));
        }
        for item in &items {
            let comment = item.comment();
            for (chain, expr) in item.rules() {
                cmds.push(json!({"add": {"rule": {
                    "family": "ip", "table": TABLE, "chain": chain, "expr": expr, "comment": comment
                }}}));
            }
        }
    }
    json!({"nftables": cmds})
}

/// Reads a `nft -j list table ip topo` listing back into the rules it realises exactly.
pub fn parse_listing(listing: &Value) -> Result<(NatRules, bool), NatError> {
    let list = listing
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| NatError::Listing("no \"nftables\" array".into()))?;
    let mut exact = true;
    let mut chains = BTreeSet::new();
    // comment → (chain, expr) observed
    let mut by_comment: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
    for obj in list {
        if let Some(c) = obj.get("chain") {
            let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
            let ok = CHAINS.iter().any(|(n, t, h, p)| {
                *n == name
                    && c.get("type").and_then(Value::as_str) == Some(*t)
                    && c.get("hook").and_then(Value::as_str) == Some(*h)
                    && c.get("prio").and_then(Value::as_i64) == Some(i64::from(*p))
                    && c.get("policy").and_then(Value::as_str) == Some("accept")
            });
            exact &= ok;
            chains.insert(name.to_string());
        } else if let Some(r) = obj.get("rule") {
            let chain = r
                .get("chain")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let expr = r.get("expr").cloned().unwrap_or(Value::Null);
            match r.get("comment").and_then(Value::as_str) {
                Some(c) => by_comment
                    .entry(c.to_string())
                    .or_default()
                    .push((chain, expr)),
                None => exact = false,
            }
        } else if obj.get("set").is_some()
            || obj.get("map").is_some()
            || obj.get("element").is_some()
        {
            exact = false;
        }
    }
    exact &= chains.len() == CHAINS.len();
    let mut rules = NatRules::default();
    for (comment, mut observed) in by_comment {
        let Some(item) = Item::parse(&comment) else {
            exact = false;
            continue;
        };
        let mut want: Vec<(String, Value)> = item
            .rules()
            .into_iter()
            .map(|(c, e)| (c.to_string(), e))
            .collect();
        let key = |x: &(String, Value)| format!("{}{}", x.0, x.1);
        want.sort_by_key(key);
        observed.sort_by_key(key);
        if want != observed {
            exact = false;
            continue;
        }
        match item {
            Item::Masquerade(c) => rules.masquerade.push(c),
            Item::Port(p) => rules.ports.push(p),
            Item::Link(l) => rules.links.push(l),
            Item::Isolate(a, b) => rules.isolate.push((a, b)),
        }
    }
    Ok((rules.normalized(), exact))
}

/// nftables of the agent's namespaces.
#[derive(Debug, Clone, Default)]
pub struct NftNat {
    /// The `nft` program (None: `nft` from PATH).
    nft: Option<String>,
}

enum Listed {
    Absent,
    Table(Value),
}

fn list_table(nft: Option<&str>) -> Result<Listed, NatError> {
    let args = ["list", "table", "ip", TABLE];
    match nftables::helper::get_current_ruleset_raw(nft, args.iter().copied()) {
        Ok(out) => serde_json::from_str(&out)
            .map(Listed::Table)
            .map_err(|e| NatError::Listing(e.to_string())),
        Err(nftables::helper::NftablesError::NftFailed { stderr, .. })
            if stderr.contains("No such file or directory") =>
        {
            Ok(Listed::Absent)
        }
        Err(source) => Err(NatError::Nft {
            what: format!("list table ip {TABLE}"),
            source,
        }),
    }
}

/// /proc/sys/net belongs to the namespace of the thread that opens it: the caller's.
fn read_sysctl((path, key): (&str, &str)) -> Result<bool, NatError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim() == "1")
        .map_err(|source| NatError::Sysctl {
            key: key.into(),
            source,
        })
}

fn enable_sysctl((path, key): (&str, &str)) -> Result<(), NatError> {
    if read_sysctl((path, key))? {
        return Ok(());
    }
    std::fs::write(path, "1").map_err(|source| NatError::Sysctl {
        key: key.into(),
        source,
    })
}

fn observe_here(nft: Option<&str>) -> Result<ObservedNat, NatError> {
    let route_localnet = read_sysctl(ROUTE_LOCALNET)?;
    let ip_forward = read_sysctl(IP_FORWARD)?;
    Ok(match list_table(nft)? {
        Listed::Absent => ObservedNat {
            table_exists: false,
            rules: NatRules::default(),
            exact: true,
            route_localnet,
            ip_forward,
        },
        Listed::Table(v) => {
            let (rules, exact) = parse_listing(&v)?;
            ObservedNat {
                table_exists: true,
                rules,
                exact,
                route_localnet,
                ip_forward,
            }
        }
    })
}

fn apply_here(nft: Option<&str>, rules: &NatRules) -> Result<(), NatError> {
    if rules.needs_route_localnet() {
        enable_sysctl(ROUTE_LOCALNET)?;
    }
    if rules.needs_forwarding() {
        enable_sysctl(IP_FORWARD)?;
    }
    let batch = render_batch(rules);
    nftables::helper::apply_ruleset_raw(&batch.to_string(), nft, std::iter::empty::<&str>())
        .map(|_| ())
        .map_err(|source| NatError::Nft {
            what: format!("replace table ip {TABLE}"),
            source,
        })
}

fn remove_here(nft: Option<&str>) -> Result<(), NatError> {
    if let Listed::Absent = list_table(nft)? {
        return Ok(());
    }
    apply_here(nft, &NatRules::default())
}

impl NftNat {
    pub fn new() -> Self {
        NftNat { nft: None }
    }

    /// With a specific `nft` program.
    pub fn with_program(nft: impl Into<String>) -> Self {
        NftNat {
            nft: Some(nft.into()),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        ns: NetNs,
        f: impl FnOnce(Option<&str>) -> Result<T, NatError> + Send + 'static,
    ) -> Result<T, NatError> {
        let nft = self.nft.clone();
        let pid = match ns {
            NetNs::Node => None,
            NetNs::Pid(p) => Some(p),
        };
        run_in_ns_of(pid, move || f(nft.as_deref()))
            .await
            .map_err(|source| NatError::Namespace {
                pid: pid.unwrap_or(0),
                source,
            })?
    }
}

#[async_trait]
impl Nat for NftNat {
    async fn observe(&self, ns: NetNs) -> Result<ObservedNat, NatError> {
        self.run(ns, observe_here).await
    }

    async fn apply(&self, ns: NetNs, rules: &NatRules) -> Result<(), NatError> {
        let rules = rules.clone().normalized();
        debug!(?ns, items = items(&rules).len(), "replacing nft table");
        if rules.is_empty() {
            return self.run(ns, remove_here).await;
        }
        self.run(ns, move |nft| apply_here(nft, &rules)).await
    }

    async fn remove(&self, ns: NetNs) -> Result<(), NatError> {
        self.run(ns, remove_here).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn sample() -> NatRules {
        NatRules {
            masquerade: vec!["10.2.0.0/16".parse().unwrap()],
            ports: vec![
                PortDnat {
                    host_port: 50000,
                    protocol: Protocol::Tcp,
                    host_ip: "192.168.100.1".parse().unwrap(),
                    target: "10.2.1.5:6379".parse().unwrap(),
                },
                PortDnat {
                    host_port: 5353,
                    protocol: Protocol::Udp,
                    host_ip: Ipv4Addr::UNSPECIFIED,
                    target: "10.2.1.5:53".parse().unwrap(),
                },
            ],
            links: vec![LinkDnat {
                listen: "127.0.0.1:6379".parse().unwrap(),
                protocol: Protocol::Udp,
                target: "10.2.3.4:53".parse().unwrap(),
            }],
            isolate: NatRules::isolation_pairs(&[
                "10.2.0.0/16".parse().unwrap(),
                "10.3.0.0/24".parse().unwrap(),
            ]),
        }
    }

    #[test]
    fn comments_round_trip() {
        for i in items(&sample()) {
            assert_eq!(
                Item::parse(&i.comment()),
                Some(i.clone()),
                "{}",
                i.comment()
            );
        }
        assert_eq!(Item::parse("port sctp 1.2.3.4:1 1.2.3.4:5"), None);
        // Before hostIP the comment had no address: such a rule is rewritten.
        assert_eq!(Item::parse("port tcp 50000 10.2.1.5:6379"), None);
        assert_eq!(
            items(&sample())
                .iter()
                .map(Item::comment)
                .filter(|c| c.starts_with("port"))
                .collect::<Vec<_>>(),
            [
                "port udp 0.0.0.0:5353 10.2.1.5:53",
                "port tcp 192.168.100.1:50000 10.2.1.5:6379"
            ]
        );
        assert_eq!(Item::parse("hello"), None);
    }

    #[test]
    fn batch_replaces_table_atomically() {
        let b = render_batch(&sample());
        let cmds = b["nftables"].as_array().unwrap();
        assert_eq!(
            cmds[0],
            json!({"add": {"table": {"family": "ip", "name": "topo"}}})
        );
        assert_eq!(
            cmds[1],
            json!({"delete": {"table": {"family": "ip", "name": "topo"}}})
        );
        assert_eq!(
            cmds[2],
            json!({"add": {"table": {"family": "ip", "name": "topo"}}})
        );
        let rules: Vec<&Value> = cmds.iter().filter_map(|c| c["add"].get("rule")).collect();
        // masquerade 1 + port 2 × 3 + link 2 + isolation 2 pairs × 2
        assert_eq!(rules.len(), 13);
        let text = b.to_string();
        assert!(text.contains(r#"{"dnat":{"addr":"10.2.1.5","port":6379}}"#));
        assert!(text.contains(r#""right":{"prefix":{"addr":"10.2.0.0","len":16}}"#));
        let empty = render_batch(&NatRules::default());
        assert_eq!(
            empty["nftables"].as_array().unwrap().len(),
            2,
            "empty rules: no table"
        );
    }

    /// The rules of `rules`' batch as (chain, expressions, comment).
    fn rendered(rules: &NatRules) -> Vec<(String, Value, String)> {
        render_batch(rules)["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["add"].get("rule"))
            .map(|r| {
                (
                    r["chain"].as_str().unwrap().to_string(),
                    r["expr"].clone(),
                    r["comment"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// geard's rules, per protocol: DNAT of locally sent traffic to `listen` (nat output)
    /// and masquerade of what was DNATed towards the target (nat postrouting).
    #[test]
    fn link_rules_for_tcp_and_udp() {
        for (proto, word) in [(Protocol::Tcp, "tcp"), (Protocol::Udp, "udp")] {
            let rules = NatRules {
                links: vec![LinkDnat {
                    listen: "127.0.0.1:6379".parse().unwrap(),
                    protocol: proto,
                    target: "10.2.3.4:50000".parse().unwrap(),
                }],
                ..Default::default()
            };
            let comment = format!("link {word} 127.0.0.1:6379 10.2.3.4:50000");
            assert_eq!(
                rendered(&rules),
                vec![
                    (
                        "output".to_string(),
                        json!([
                            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "127.0.0.1"}},
                            {"match": {"op": "==", "left": {"payload": {"protocol": word, "field": "dport"}}, "right": 6379}},
                            {"dnat": {"addr": "10.2.3.4", "port": 50000}}
                        ]),
                        comment.clone()
                    ),
                    (
                        "postrouting".to_string(),
                        json!([
                            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "10.2.3.4"}},
                            {"match": {"op": "==", "left": {"payload": {"protocol": word, "field": "dport"}}, "right": 50000}},
                            {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
                            {"masquerade": null}
                        ]),
                        comment
                    ),
                ]
            );
            assert!(rules.needs_route_localnet(), "loopback listen");
            assert!(!rules.needs_forwarding(), "a consumer only sends");
        }
    }

    /// A listen address that is not loopback (geard's cluster addresses) is matched as such
    /// and needs no route_localnet.
    #[test]
    fn link_on_a_non_loopback_listen_address() {
        let rules = NatRules {
            links: vec![LinkDnat {
                listen: "192.168.1.10:27017".parse().unwrap(),
                protocol: Protocol::Tcp,
                target: "10.2.3.4:27017".parse().unwrap(),
            }],
            ..Default::default()
        };
        let r = rendered(&rules);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].0, "output");
        assert_eq!(r[0].1[0]["match"]["right"], "192.168.1.10");
        assert_eq!(r[0].1[1]["match"]["right"], 27017);
        assert!(!rules.needs_route_localnet());
    }

    /// A published port is DNATed for traffic from other hosts (prerouting) and from the
    /// node itself (output), both only when addressed to the node, and to the port's host
    /// address unless that is 0.0.0.0; and accepted on its way to the container (forward).
    #[test]
    fn published_port_rules_for_tcp_and_udp() {
        let cases = [
            (Protocol::Tcp, "tcp", "192.168.100.1"),
            (Protocol::Udp, "udp", "192.168.100.1"),
            (Protocol::Tcp, "tcp", "0.0.0.0"),
        ];
        for (proto, word, host_ip) in cases {
            let rules = NatRules {
                ports: vec![PortDnat {
                    host_port: 50000,
                    protocol: proto,
                    host_ip: host_ip.parse().unwrap(),
                    target: "10.2.1.5:6379".parse().unwrap(),
                }],
                ..Default::default()
            };
            let mut dnat = vec![
                json!({"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}}),
            ];
            if host_ip != "0.0.0.0" {
                dnat.push(json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": host_ip}}));
            }
            dnat.push(json!({"match": {"op": "==", "left": {"payload": {"protocol": word, "field": "dport"}}, "right": 50000}}));
            dnat.push(json!({"dnat": {"addr": "10.2.1.5", "port": 6379}}));
            let dnat = Value::Array(dnat);
            let comment = format!("port {word} {host_ip}:50000 10.2.1.5:6379");
            let r = rendered(&rules);
            assert_eq!(
                r,
                vec![
                    ("prerouting".to_string(), dnat.clone(), comment.clone()),
                    ("output".to_string(), dnat, comment.clone()),
                    (
                        "forward".to_string(),
                        json!([
                            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "10.2.1.5"}},
                            {"match": {"op": "==", "left": {"payload": {"protocol": word, "field": "dport"}}, "right": 6379}},
                            {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
                            {"accept": null}
                        ]),
                        comment
                    ),
                ]
            );
            assert!(rules.needs_forwarding());
        }
    }

    /// Egress: traffic from a network's cidr to anywhere outside it is masqueraded.
    #[test]
    fn masquerade_rule_leaves_traffic_inside_the_cidr_alone() {
        let rules = NatRules {
            masquerade: vec!["10.2.0.0/16".parse().unwrap()],
            ..Default::default()
        };
        let prefix = json!({"prefix": {"addr": "10.2.0.0", "len": 16}});
        assert_eq!(
            rendered(&rules),
            vec![(
                "postrouting".to_string(),
                json!([
                    {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": prefix}},
                    {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": prefix}},
                    {"masquerade": null}
                ]),
                "masquerade 10.2.0.0/16".to_string()
            )]
        );
        assert!(rules.needs_forwarding() && !rules.needs_route_localnet());
    }

    /// Each pair of networks: DNATed traffic (a published port) passes, anything else from
    /// one cidr to the other is dropped in the forward chain, after the published ports'
    /// accept rules.
    #[test]
    fn isolation_drops_traffic_between_networks() {
        let a: Ipv4Net = "10.41.0.0/16".parse().unwrap();
        let b: Ipv4Net = "10.42.0.0/16".parse().unwrap();
        let rules = NatRules {
            masquerade: vec![a, b],
            ports: vec![PortDnat {
                host_port: 50000,
                protocol: Protocol::Tcp,
                host_ip: "192.168.100.1".parse().unwrap(),
                target: "10.42.1.5:80".parse().unwrap(),
            }],
            isolate: NatRules::isolation_pairs(&[a, b]),
            ..Default::default()
        };
        let r = rendered(&rules);
        let forward: Vec<&(String, Value, String)> =
            r.iter().filter(|x| x.0 == "forward").collect();
        assert_eq!(forward.len(), 5, "{forward:?}");
        assert!(forward[0].2.starts_with("port "), "port accept first");
        let between = |from: &str, to: &str| {
            json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": from, "len": 16}}}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": to, "len": 16}}}}
            ])
        };
        for (i, (from, to)) in [("10.41.0.0", "10.42.0.0"), ("10.42.0.0", "10.41.0.0")]
            .into_iter()
            .enumerate()
        {
            let comment = format!("isolate {from}/16 {to}/16");
            let mut accept = between(from, to);
            accept.as_array_mut().unwrap().extend([
                json!({"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}}),
                json!({"accept": null}),
            ]);
            let mut drop = between(from, to);
            drop.as_array_mut().unwrap().push(json!({"drop": null}));
            assert_eq!(forward[1 + 2 * i].1, accept);
            assert_eq!(forward[1 + 2 * i].2, comment);
            assert_eq!(forward[2 + 2 * i].1, drop);
            assert_eq!(forward[2 + 2 * i].2, comment);
        }
        let (back, exact) = parse_listing(&listing_of(&rules)).unwrap();
        assert!(exact);
        assert_eq!(back, rules.clone().normalized());
        assert_eq!(Item::parse("isolate 10.41.0.0/16 nope"), None);
    }

    /// A listing shaped like `nft -j list table ip topo` of the rendered batch.
    fn listing_of(rules: &NatRules) -> Value {
        let b = render_batch(rules);
        let mut out = vec![
            json!({"metainfo": {"version": "1.0.6"}}),
            json!({"table": {"family": "ip", "name": "topo", "handle": 1}}),
        ];
        for c in b["nftables"].as_array().unwrap().iter().skip(3) {
            let add = &c["add"];
            if let Some(ch) = add.get("chain") {
                let mut ch = ch.clone();
                ch["handle"] = json!(1);
                out.push(json!({"chain": ch}));
            } else if let Some(r) = add.get("rule") {
                let mut r = r.clone();
                r["handle"] = json!(9);
                out.push(json!({"rule": r}));
            }
        }
        json!({"nftables": out})
    }

    #[test]
    fn listing_round_trip_and_tamper_detection() {
        let (rules, exact) = parse_listing(&listing_of(&sample())).unwrap();
        assert!(exact);
        assert_eq!(rules, sample().normalized());

        // A rule edited by hand (port changed) under the same comment.
        let mut l = listing_of(&sample());
        let arr = l["nftables"].as_array_mut().unwrap();
        let i = arr
            .iter()
            .position(|o| o["rule"]["chain"] == "prerouting")
            .unwrap();
        let comment = arr[i]["rule"]["comment"].as_str().unwrap().to_string();
        arr[i]["rule"]["expr"][1]["match"]["right"] = json!(50001);
        let (rules, exact) = parse_listing(&l).unwrap();
        assert!(!exact);
        assert_eq!(rules.ports.len(), 1, "the tampered item is not in force");
        assert_ne!(Item::Port(rules.ports[0].clone()).comment(), comment);
        assert_eq!(rules.masquerade.len(), 1);

        // A foreign rule without a comment.
        let mut l = listing_of(&sample());
        l["nftables"]
            .as_array_mut()
            .unwrap()
            .push(json!({"rule": {"chain": "output", "expr": [{"accept": null}]}}));
        assert!(!parse_listing(&l).unwrap().1);

        // An isolation drop rule deleted by hand: that pair is not in force.
        let mut l = listing_of(&sample());
        let arr = l["nftables"].as_array_mut().unwrap();
        let i = arr
            .iter()
            .position(|o| o["rule"]["expr"][2] == json!({"drop": null}))
            .unwrap();
        arr.remove(i);
        let (rules, exact) = parse_listing(&l).unwrap();
        assert!(!exact);
        assert_eq!(rules.isolate.len(), 1);

        // A missing rule of a multi-rule item.
        let mut l = listing_of(&sample());
        let arr = l["nftables"].as_array_mut().unwrap();
        let i = arr
            .iter()
            .position(|o| o["rule"]["chain"] == "forward")
            .unwrap();
        arr.remove(i);
        let (rules, exact) = parse_listing(&l).unwrap();
        assert!(!exact && rules.ports.len() == 1);
    }
}
