//! What must hold after any fault, read straight from etcd (the controller's cache is part of
//! what is under test): no acknowledged write lost, no address held twice, none leaked.
//!
//! A [`Census`] is one read of the containers, their statuses and the IPAM address claims.
//! Address rules, for every container and every network it is attached to:
//! * exactly one claim `ipam/<network>/addrs/<ip>` names it (none: an address was never
//!   allocated or was lost; two: one leaked);
//! * a static address is the claimed one;
//! * the address its status shows (once it shows one) is the claimed one;
//!
//! and every claim names a container attached to that network (else it leaked), and no two
//! containers show the same address on one network.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde_json::Value;
use topo_schema::{Kind, keys};

use crate::lab::Lab;

/// One container as stored: its attachments (network, static address) and the addresses its
/// status shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stored {
    pub networks: Vec<(String, Option<Ipv4Addr>)>,
    pub status: BTreeMap<String, Ipv4Addr>,
}

#[derive(Debug, Clone, Default)]
pub struct Census {
    pub containers: BTreeMap<String, Stored>,
    /// (network, address) → the container the claim names.
    pub claims: BTreeMap<(String, Ipv4Addr), String>,
}

fn ip_of(s: &str) -> Option<Ipv4Addr> {
    s.split('/').next()?.parse().ok()
}

/// The attachments in a stored Container's JSON.
fn attachments(object: &Value) -> Vec<(String, Option<Ipv4Addr>)> {
    object
        .pointer("/spec/networks")
        .and_then(Value::as_array)
        .map(|nets| {
            nets.iter()
                .filter_map(|n| {
                    let net = n.get("network")?.as_str()?.to_string();
                    Some((net, n.get("ip").and_then(Value::as_str).and_then(ip_of)))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn status_addresses(status: &Value) -> BTreeMap<String, Ipv4Addr> {
    status
        .get("addresses")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(net, a)| Some((net.clone(), ip_of(a.as_str()?)?)))
                .collect()
        })
        .unwrap_or_default()
}

impl Census {
    /// Reads the containers, their statuses and every address claim from etcd.
    pub fn read(lab: &Lab) -> Result<Census, String> {
        let objects = lab.etcd_prefix(&keys::objects_prefix(Kind::Container))?;
        let statuses = lab.etcd_prefix(&keys::status_prefix(Kind::Container))?;
        let ipam = lab.etcd_prefix(&format!("{}ipam/", keys::ROOT))?;
        Census::from_kvs(&objects, &statuses, &ipam)
    }

    /// The census of etcd's key-values (`read`'s pure part).
    pub fn from_kvs(
        objects: &BTreeMap<String, String>,
        statuses: &BTreeMap<String, String>,
        ipam: &BTreeMap<String, String>,
    ) -> Result<Census, String> {
        let mut census = Census::default();
        let json = |k: &str, v: &str| -> Result<Value, String> {
            serde_json::from_str(v).map_err(|e| format!("{k} is not JSON ({e}): {v}"))
        };
        for (k, v) in objects {
            let name = k.rsplit('/').next().unwrap_or(k).to_string();
            census.containers.insert(
                name,
                Stored {
                    networks: attachments(&json(k, v)?),
                    status: BTreeMap::new(),
                },
            );
        }
        for (k, v) in statuses {
            let name = k.rsplit('/').next().unwrap_or(k);
            if let Some(c) = census.containers.get_mut(name) {
                c.status = status_addresses(&json(k, v)?);
            }
        }
        for (k, v) in ipam {
            let Some(keys::IpamKey::Addr { network, ip }) = keys::parse_ipam_key(k) else {
                continue;
            };
            let holder = json(k, v)?
                .get("holder")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("{k} names no holder: {v}"))?;
            census.claims.insert((network.to_string(), ip), holder);
        }
        Ok(census)
    }

    /// Everything wrong with the addresses (see the module documentation); empty when
    /// nothing is.
    pub fn address_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut held: BTreeMap<(&str, &str), Vec<Ipv4Addr>> = BTreeMap::new();
        for ((net, ip), holder) in &self.claims {
            let attached = self
                .containers
                .get(holder)
                .is_some_and(|c| c.networks.iter().any(|(n, _)| n == net));
            if !attached {
                problems.push(format!(
                    "leaked: {net} address {ip} is claimed for {holder}, which is not attached to {net}"
                ));
            }
            held.entry((holder, net)).or_default().push(*ip);
        }
        for (name, c) in &self.containers {
            for (net, fixed) in &c.networks {
                let ips = held
                    .get(&(name.as_str(), net.as_str()))
                    .cloned()
                    .unwrap_or_default();
                match ips.as_slice() {
                    [] => problems.push(format!("container/{name} holds no address on {net}")),
                    [ip] => {
                        if fixed.is_some_and(|f| f != *ip) {
                            problems.push(format!(
                                "container/{name} asks for {net} address {} but holds {ip}",
                                fixed.map(|f| f.to_string()).unwrap_or_default()
                            ));
                        }
                        if let Some(shown) = c.status.get(net)
                            && shown != ip
                        {
                            problems.push(format!(
                                "container/{name}'s status shows {net} address {shown} but it holds {ip}"
                            ));
                        }
                    }
                    many => problems.push(format!(
                        "leaked: container/{name} holds {} addresses on {net}: {many:?}",
                        many.len()
                    )),
                }
            }
        }
        let mut shown: BTreeMap<(&str, Ipv4Addr), &str> = BTreeMap::new();
        for (name, c) in &self.containers {
            for (net, ip) in &c.status {
                if let Some(other) = shown.insert((net.as_str(), *ip), name.as_str()) {
                    problems.push(format!(
                        "duplicate: container/{other} and container/{name} both show {net} address {ip}"
                    ));
                }
            }
        }
        problems
    }

    /// The containers of `names` that etcd does not hold.
    pub fn missing<'a>(&self, names: impl IntoIterator<Item = &'a String>) -> Vec<String> {
        names
            .into_iter()
            .filter(|n| !self.containers.contains_key(*n))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kvs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn container(net: &str, ip: Option<&str>) -> String {
        let ip = ip.map(|i| format!(",\"ip\":\"{i}\"")).unwrap_or_default();
        format!("{{\"spec\":{{\"networks\":[{{\"network\":\"{net}\"{ip}}}]}}}}")
    }

    #[test]
    fn every_address_rule_is_checked() {
        let objects = kvs(&[
            ("/topo/v1/objects/Container/a", &container("n", None)),
            (
                "/topo/v1/objects/Container/b",
                &container("n", Some("10.0.0.9")),
            ),
            ("/topo/v1/objects/Container/c", &container("n", None)),
            ("/topo/v1/objects/Container/d", &container("n", None)),
        ]);
        let statuses = kvs(&[
            (
                "/topo/v1/objstatus/Container/a",
                r#"{"addresses":{"n":"10.0.0.2"}}"#,
            ),
            (
                "/topo/v1/objstatus/Container/b",
                r#"{"addresses":{"n":"10.0.0.2"}}"#,
            ),
        ]);
        let ipam = kvs(&[
            ("/topo/v1/ipam/n/addrs/10.0.0.2", r#"{"holder":"a"}"#),
            ("/topo/v1/ipam/n/addrs/10.0.0.3", r#"{"holder":"b"}"#),
            ("/topo/v1/ipam/n/addrs/10.0.0.4", r#"{"holder":"c"}"#),
            ("/topo/v1/ipam/n/addrs/10.0.0.5", r#"{"holder":"c"}"#),
            ("/topo/v1/ipam/n/addrs/10.0.0.6", r#"{"holder":"gone"}"#),
            ("/topo/v1/ipam/n/blocks/10.0.0.0-24", r#"{"node":"n1"}"#),
        ]);
        let c = Census::from_kvs(&objects, &statuses, &ipam).unwrap();
        let p = c.address_problems();
        let has = |s: &str| p.iter().any(|x| x.contains(s));
        assert!(
            has("container/b asks for n address 10.0.0.9 but holds 10.0.0.3"),
            "{p:#?}"
        );
        assert!(
            has("container/b's status shows n address 10.0.0.2"),
            "{p:#?}"
        );
        assert!(has("container/c holds 2 addresses"), "{p:#?}");
        assert!(has("container/d holds no address"), "{p:#?}");
        assert!(has("10.0.0.6 is claimed for gone"), "{p:#?}");
        assert!(has("duplicate: container/a and container/b"), "{p:#?}");
        assert_eq!(p.len(), 6, "{p:#?}");
        assert_eq!(c.missing(&["a".to_string(), "z".to_string()]), vec!["z"]);
    }

    #[test]
    fn a_consistent_census_has_no_problem() {
        let objects = kvs(&[("/topo/v1/objects/Container/a", &container("n", None))]);
        let statuses = kvs(&[]);
        let ipam = kvs(&[("/topo/v1/ipam/n/addrs/10.0.0.2", r#"{"holder":"a"}"#)]);
        let c = Census::from_kvs(&objects, &statuses, &ipam).unwrap();
        assert!(c.address_problems().is_empty());
    }
}
