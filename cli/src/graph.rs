//! `topoctl graph`: the cluster's topology as a picture — nodes, networks, containers, links
//! and tunnels, each coloured by its Ready condition.
//!
//! One rendering, two outputs: [`dot`] writes Graphviz DOT (for `dot -Tpng` or any viewer),
//! and [`svg`] lays that same DOT out with the pure-Rust `layout-rs` crate, so an SVG needs
//! no Graphviz binary on the operator's machine. Both are pure functions of the objects, so
//! they are tested as such; the verb that fetches the objects is `cmd/graph.rs`.
//!
//! The DOT stays inside what layout-rs understands: boxes, single-line labels, fill and
//! edge colours, dashed edges, no subgraphs. Object names are DNS-1123 labels and
//! addresses are digits and dots, so nothing needs escaping but what [`quote`] escapes.

use std::fmt::Write as _;

use topo_schema::{ConditionStatus, Resource};

/// Fill colours: a kind's own colour when Ready, red when not, grey while unknown.
const READY: &str = "#c8e6c9";
const NOT_READY: &str = "#ffcdd2";
const UNKNOWN: &str = "#e0e0e0";
const NETWORK: &str = "#bbdefb";

const EMPTY_SVG: &str =
    "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"0\" height=\"0\"></svg>\n";

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// layout-rs refused the DOT we wrote: a bug here, reported rather than panicked.
    #[error("failed to lay the graph out: {0}")]
    Layout(String),
}

/// The objects of a cluster, as `topoctl get` lists them.
#[derive(Debug, Default)]
pub struct Topology {
    pub objects: Vec<Resource>,
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn id(kind: &str, name: &str) -> String {
    quote(&format!("{kind}/{name}"))
}

/// The fill colour of an object by its Ready condition.
fn fill(r: &Resource) -> &'static str {
    match r
        .conditions()
        .iter()
        .find(|c| c.type_ == topo_schema::CONDITION_READY)
        .map(|c| c.status)
    {
        Some(ConditionStatus::True) => READY,
        Some(ConditionStatus::False) => NOT_READY,
        _ => UNKNOWN,
    }
}

fn vertex(out: &mut String, id: &str, label: &str, fill: &str) {
    let _ = writeln!(
        out,
        "  {id} [shape=box, style=filled, fillcolor={}, label={}];",
        quote(fill),
        quote(label)
    );
}

fn edge(out: &mut String, from: &str, to: &str, label: &str, dashed: bool) {
    let style = if dashed { ", style=dashed" } else { "" };
    let _ = writeln!(out, "  {from} -> {to} [label={}{style}];", quote(label));
}

/// The topology as Graphviz DOT: a vertex per object; edges container → node (runs on),
/// container → network (its address), link consumer → target (listen address), tunnel
/// vertex → each node it joins.
pub fn dot(t: &Topology) -> String {
    let mut out = String::from("digraph topo {\n  rankdir=LR;\n");
    let mut edges = String::new();
    for r in &t.objects {
        match r {
            Resource::Node(n) => {
                let addr = n.spec.address.to_string();
                vertex(
                    &mut out,
                    &id("node", r.name()),
                    &format!("node {} {addr}", r.name()),
                    fill(r),
                );
            }
            Resource::Network(n) => {
                let label = format!("network {} {}", r.name(), n.spec.cidr);
                let filled = if fill(r) == READY { NETWORK } else { fill(r) };
                vertex(&mut out, &id("network", r.name()), &label, filled);
            }
            Resource::Container(c) => {
                let me = id("container", r.name());
                vertex(&mut out, &me, &format!("container {}", r.name()), fill(r));
                edge(&mut edges, &me, &id("node", &c.spec.node), "on", true);
                let addrs = c.status.as_ref().map(|s| &s.addresses);
                for a in &c.spec.networks {
                    let ip = addrs
                        .and_then(|m| m.get(&a.network).cloned())
                        .or_else(|| a.ip.map(|ip| ip.to_string()))
                        .unwrap_or_default();
                    edge(&mut edges, &me, &id("network", &a.network), &ip, false);
                }
            }
            Resource::Link(l) => {
                let from = id("container", &l.spec.from);
                let listen = l
                    .spec
                    .listen_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                let label = format!("link {} {listen}", r.name());
                match (&l.spec.to.container, l.spec.to.address) {
                    (Some(c), _) => edge(&mut edges, &from, &id("container", c), &label, false),
                    (None, Some(ip)) => {
                        let target = quote(&format!("{ip}:{}", l.spec.to.port));
                        vertex(
                            &mut out,
                            &target,
                            &format!("{ip}:{}", l.spec.to.port),
                            UNKNOWN,
                        );
                        edge(&mut edges, &from, &target, &label, false);
                    }
                    (None, None) => {}
                }
            }
            Resource::Tunnel(tun) => {
                let me = id("tunnel", r.name());
                let label = format!("tunnel {} ({})", r.name(), tun.spec.network);
                vertex(&mut out, &me, &label, fill(r));
                let ends = tun.spec.nodes.iter().chain(tun.spec.node.iter());
                for n in ends {
                    edge(&mut edges, &me, &id("node", n), "gre", true);
                }
            }
        }
    }
    out.push_str(&edges);
    out.push_str("}\n");
    out
}

/// The DOT of [`dot`] laid out and drawn as SVG, without a Graphviz binary.
pub fn svg(dot: &str) -> Result<String, GraphError> {
    use layout::backends::svg::SVGWriter;
    use layout::gv::{DotParser, GraphBuilder};
    // layout-rs cannot lay out a graph without vertices (it asserts): draw the empty page.
    if !dot.contains(" [shape=") {
        return Ok(EMPTY_SVG.to_string());
    }
    let graph = DotParser::new(dot).process().map_err(GraphError::Layout)?;
    // layout-rs asserts on inputs it does not expect; ours are well formed by
    // construction, but a panic must still not take the command down.
    std::panic::catch_unwind(|| {
        let mut builder = GraphBuilder::new();
        builder.visit_graph(&graph);
        let mut visual = builder.get();
        let mut writer = SVGWriter::new();
        visual.do_it(false, false, false, &mut writer);
        writer.finalize()
    })
    .map_err(|_| GraphError::Layout("the layout engine failed on this graph".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(yaml: &str) -> Topology {
        let objects = yaml
            .split("\n---\n")
            .map(|d| Resource::from_value(serde_yaml::from_str(d).unwrap()).unwrap())
            .collect();
        Topology { objects }
    }

    const CLUSTER: &str = r#"apiVersion: topo.dev/v1alpha1
kind: Node
metadata: {name: node1}
spec: {address: 192.168.100.1}
status:
  conditions: [{type: Ready, status: "True", reason: Ready, message: "", lastTransitionTime: "2026-01-01T00:00:00Z"}]
---
apiVersion: topo.dev/v1alpha1
kind: Network
metadata: {name: app}
spec: {cidr: 10.1.0.0/16}
---
apiVersion: topo.dev/v1alpha1
kind: Container
metadata: {name: db}
spec: {node: node1, image: busybox, networks: [{network: app}]}
status:
  conditions: [{type: Ready, status: "False", reason: ImagePullBackOff, message: "", lastTransitionTime: "2026-01-01T00:00:00Z"}]
  addresses: {app: 10.1.0.2}
---
apiVersion: topo.dev/v1alpha1
kind: Container
metadata: {name: web}
spec: {node: node1, image: busybox, networks: [{network: app}]}
---
apiVersion: topo.dev/v1alpha1
kind: Link
metadata: {name: web-to-db}
spec: {from: web, to: {container: db, port: 5432}}
"#;

    #[test]
    fn dot_has_every_object_and_relation() {
        let d = dot(&objects(CLUSTER));
        for want in [
            "\"node/node1\" [shape=box, style=filled, fillcolor=\"#c8e6c9\", label=\"node node1 192.168.100.1\"];",
            "\"network/app\" [shape=box, style=filled, fillcolor=\"#e0e0e0\", label=\"network app 10.1.0.0/16\"];",
            "\"container/db\" [shape=box, style=filled, fillcolor=\"#ffcdd2\", label=\"container db\"];",
            "\"container/db\" -> \"node/node1\" [label=\"on\", style=dashed];",
            "\"container/db\" -> \"network/app\" [label=\"10.1.0.2\"];",
            "\"container/web\" -> \"network/app\" [label=\"\"];",
            "\"container/web\" -> \"container/db\" [label=\"link web-to-db 127.0.0.1:5432\"];",
        ] {
            assert!(d.contains(want), "missing {want} in\n{d}");
        }
        assert!(d.starts_with("digraph topo {") && d.ends_with("}\n"));
    }

    #[test]
    fn svg_draws_every_vertex_without_graphviz() {
        let s = svg(&dot(&objects(CLUSTER))).unwrap();
        assert!(s.starts_with("<svg") || s.contains("<svg"), "{s}");
        for label in [
            "node node1 192.168.100.1",
            "container db",
            "container web",
            "link web-to-db",
        ] {
            assert!(s.contains(label), "{label} not drawn");
        }
        assert!(
            s.contains("#ffcdd2") || s.contains("#FFCDD2"),
            "not-Ready colour missing"
        );
    }

    #[test]
    fn an_empty_cluster_is_an_empty_graph() {
        assert_eq!(
            dot(&Topology::default()),
            "digraph topo {\n  rankdir=LR;\n}\n"
        );
        assert!(svg(&dot(&Topology::default())).is_ok());
    }
}
