//! Host ports a Node reserves: a container may not publish one (its DNAT would take over
//! the node's sshd, etcd or the API). `spec.reservedPorts` lists them; absent, the
//! [`DEFAULT_RESERVED_PORTS`] apply (an empty list reserves nothing). Checked at apply
//! against the whole desired state, so both a new container on a reserved port and a Node
//! that starts reserving a port in use are refused, naming the container, port and node.

use std::collections::{HashMap, HashSet};

use crate::field::FieldError;
use crate::kinds::{Kind, NodeSpec, ObjectRef, Resource};

/// ssh, etcd's client and peer ports, the API's port.
pub const DEFAULT_RESERVED_PORTS: [u16; 4] = [22, 2379, 2380, 8443];

/// The ports `spec` reserves.
pub fn reserved(spec: Option<&NodeSpec>) -> Vec<u16> {
    match spec.and_then(|s| s.reserved_ports.as_ref()) {
        Some(p) => p.clone(),
        None => DEFAULT_RESERVED_PORTS.to_vec(),
    }
}

fn list(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Containers publishing a port their node reserves, where the container or the node is
/// among `changed`.
pub fn check_reserved(all: &[&Resource], changed: &[ObjectRef]) -> Vec<(ObjectRef, FieldError)> {
    // A set, not the slice: an apply of a few thousand objects into a state of a hundred
    // thousand asked the slice twice per container (quadratic, most of an apply's CPU at
    // 2,500 nodes).
    let changed: HashSet<(Kind, &str)> =
        changed.iter().map(|r| (r.kind, r.name.as_str())).collect();
    let nodes: HashMap<&str, &NodeSpec> = all
        .iter()
        .filter_map(|r| match r {
            Resource::Node(n) => Some((n.metadata.name.as_str(), &n.spec)),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for r in all {
        let Resource::Container(c) = r else { continue };
        let node = c.spec.node.as_str();
        let container_changed = changed.contains(&(Kind::Container, c.metadata.name.as_str()));
        let node_changed = changed.contains(&(Kind::Node, node));
        if !container_changed && !node_changed {
            continue;
        }
        let node_ref = ObjectRef::new(Kind::Node, node);
        let ports = reserved(nodes.get(node).copied());
        for (i, p) in c.spec.ports.iter().enumerate() {
            let Some(hp) = p.host_port else { continue };
            if !ports.iter().any(|&x| u32::from(x) == hp) {
                continue;
            }
            if container_changed {
                out.push((
                    r.object_ref(),
                    FieldError::new(
                        format!("spec.ports[{i}].hostPort"),
                        format!(
                            "container {} cannot publish port {hp} on node {node}: the node reserves it (spec.reservedPorts: {}); choose another hostPort",
                            c.metadata.name,
                            list(&ports)
                        ),
                    ),
                ));
            } else {
                out.push((
                    node_ref.clone(),
                    FieldError::new(
                        "spec.reservedPorts",
                        format!(
                            "port {hp} is published on node {node} by container {}; move it to another hostPort first",
                            c.metadata.name
                        ),
                    ),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::validate_consistency;

    fn parse(y: &str) -> Vec<Resource> {
        y.split("---\n")
            .map(|d| Resource::from_value(serde_yaml::from_str(d).unwrap()).unwrap())
            .collect()
    }

    const NODE: &str = "apiVersion: topo.dev/v1alpha1\nkind: Node\nmetadata: {name: node1}\nspec: {address: 192.168.100.1}\n";

    fn web(port: u32) -> String {
        format!(
            "apiVersion: topo.dev/v1alpha1\nkind: Container\nmetadata: {{name: web}}\nspec:\n  node: node1\n  image: busybox\n  ports: [{{containerPort: 80, hostPort: {port}}}]\n"
        )
    }

    #[test]
    fn a_reserved_port_is_refused_naming_container_port_and_node() {
        let objs = parse(&format!("{NODE}---\n{}", web(22)));
        let all: Vec<&Resource> = objs.iter().collect();
        let changed = vec![objs[1].object_ref()];
        let errs = validate_consistency(&all, &changed);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].1.field, "spec.ports[0].hostPort");
        assert_eq!(
            errs[0].1.message,
            "container web cannot publish port 22 on node node1: the node reserves it (spec.reservedPorts: 22, 2379, 2380, 8443); choose another hostPort"
        );
        let objs = parse(&format!("{NODE}---\n{}", web(50080)));
        let all: Vec<&Resource> = objs.iter().collect();
        assert!(validate_consistency(&all, &[objs[1].object_ref()]).is_empty());
    }

    #[test]
    fn a_node_may_reserve_other_ports_or_none_but_not_one_in_use() {
        let node = |ports: &str| {
            NODE.replace(
                "192.168.100.1}",
                &format!("192.168.100.1, reservedPorts: {ports}}}"),
            )
        };
        let objs = parse(&format!("{}---\n{}", node("[]"), web(22)));
        let all: Vec<&Resource> = objs.iter().collect();
        assert!(validate_consistency(&all, &[objs[1].object_ref()]).is_empty());
        let objs = parse(&format!("{}---\n{}", node("[50080]"), web(50080)));
        let all: Vec<&Resource> = objs.iter().collect();
        let errs = validate_consistency(&all, &[objs[0].object_ref()]);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].0, objs[0].object_ref());
        assert!(
            errs[0]
                .1
                .message
                .contains("published on node node1 by container web")
        );
    }
}
