//! Issue 12, pictures: `topoctl graph` draws a live cluster — DOT for Graphviz, and SVG laid
//! out without a Graphviz binary — with each object coloured by its Ready condition.

use topo_e2e::manifest::{docs, network, on, web};
use topo_e2e::{Lab, converge};

#[test]
fn graph_of_a_live_cluster() {
    let lab = Lab::up("graph", 2);
    lab.apply(
        &docs(&[
            network("e2e-graph", "10.63.0.0/16"),
            web("g1", "node1", &[on("e2e-graph")]),
            web("g2", "node2", &[on("e2e-graph")]),
        ]),
        converge(),
    );
    let g1 = lab.address("g1", "e2e-graph").to_string();

    let out = lab.topoctl(&["graph"]);
    assert!(out.success(), "{}", out.describe_failure());
    let dot = &out.stdout;
    for want in [
        "digraph topo {",
        "\"container/g1\" [shape=box, style=filled, fillcolor=\"#c8e6c9\"",
        "\"container/g1\" -> \"node/node1\"",
        "\"container/g2\" -> \"node/node2\"",
        &format!("\"container/g1\" -> \"network/e2e-graph\" [label=\"{g1}\"]"),
        "\"node/node1\" [shape=box, style=filled, fillcolor=\"#c8e6c9\"",
    ] {
        assert!(dot.contains(want), "graph lacks {want}:\n{dot}");
    }

    let out = lab.topoctl(&["graph", "-o", "svg"]);
    assert!(out.success(), "{}", out.describe_failure());
    let svg = &out.stdout;
    assert!(svg.contains("<svg"), "not an SVG:\n{svg}");
    for label in ["container g1", "container g2", "network e2e-graph", &g1] {
        assert!(svg.contains(label), "the SVG does not draw {label}");
    }

    let out = lab.topoctl(&["graph", "-o", "png"]);
    assert!(!out.success(), "an unknown format must be refused");
    assert!(out.stderr.contains("png"), "{}", out.stderr);
}
