//! What a restart (of the agent, of a daemon) must leave alone on the hosts: the uuids of
//! topo's OVS interfaces and the ifindexes of its links. A recreated interface gets a new
//! one of each, so comparing the maps before and after tells "adopted" from "recreated".

use std::collections::BTreeMap;

use serde_json::Value;

use crate::lab::Lab;

/// `nodeN OVS interface NAME` → uuid and `nodeN link NAME` → ifindex, of every topo
/// interface (`tg-` GRE ports, `tv-` veths, `tb-` bridges) on `nodes`.
pub fn plumbing(lab: &Lab, nodes: &[u32]) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let ours = |name: &str| ["tg-", "tv-", "tb-"].iter().any(|p| name.starts_with(p));
    for &n in nodes {
        for row in lab.ovs_rows(n, "Interface") {
            let name = row.get("name").and_then(Value::as_str).unwrap_or_default();
            if ours(name) {
                m.insert(
                    format!("node{n} OVS interface {name}"),
                    row["_uuid"].to_string(),
                );
            }
        }
        for (name, idx) in lab.links(n) {
            if name.starts_with("tv-") || name.starts_with("tb-") {
                m.insert(format!("node{n} link {name}"), idx.to_string());
            }
        }
    }
    m
}

/// The entries of `before` that differ in (or are missing from) `after`, one per line.
pub fn changed(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> String {
    before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}: {v} -> {:?}", after.get(k)))
        .collect::<Vec<_>>()
        .join("\n")
}
