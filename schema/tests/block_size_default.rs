//! `spec.blockSize` of a Network is optional (SPEC.md): 24, or the cidr's own prefix when
//! that is narrower; the effective value is what the parsed (and so stored) object holds.

use topo_schema::jsonschema::schema_for;
use topo_schema::manifest::parse_file;
use topo_schema::{Kind, Resource};

fn network(spec: &str) -> Result<Resource, String> {
    let content = format!(
        "apiVersion: topo.dev/v1alpha1\nkind: Network\nmetadata:\n  name: n\nspec:\n{spec}"
    );
    let docs = parse_file("n.yaml", &content).map_err(|causes| {
        causes
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    docs.into_iter()
        .next()
        .map(|d| d.resource)
        .ok_or_else(|| "no document".to_string())
}

fn block_size(r: &Resource) -> u8 {
    match r {
        Resource::Network(n) => n.spec.block_size,
        other => panic!("not a network: {other:?}"),
    }
}

#[test]
fn absent_block_size_is_24_or_the_cidr_prefix() {
    for (cidr, want) in [
        ("10.2.0.0/16", 24),
        ("10.0.0.0/8", 24),
        ("10.2.0.0/24", 24),
        ("10.2.0.0/26", 26),
        ("10.2.0.0/30", 30),
    ] {
        let r = network(&format!("  cidr: {cidr}\n")).unwrap_or_else(|e| panic!("{cidr}: {e}"));
        assert_eq!(block_size(&r), want, "{cidr}");
    }
    let r = network("  cidr: 10.2.0.0/16\n  blockSize: 20\n").unwrap();
    assert_eq!(block_size(&r), 20, "an explicit blockSize is kept");
}

#[test]
fn the_effective_value_is_written_out() {
    let r = network("  cidr: 10.2.0.0/16\n").unwrap();
    let v = r.to_value();
    assert_eq!(v["spec"]["blockSize"], 24, "{v}");
    // And reads back the same (what etcd stores and `get -o yaml | apply -f -` sends).
    let again = Resource::from_value(v).unwrap();
    assert_eq!(again, r);
}

#[test]
fn wrong_block_sizes_are_still_refused() {
    let e = network("  cidr: 10.2.0.0/16\n  blockSize: 12\n").unwrap_err();
    assert!(e.contains("spec.blockSize"), "{e}");
    let e = network("  cidr: 10.2.0.0/16\n  blockSize: x\n").unwrap_err();
    assert!(e.contains("spec.blockSize"), "{e}");
    let e = network("  cidr: 10.2.0.0/16\n  blokSize: 24\n").unwrap_err();
    assert!(e.contains("blockSize"), "the nearest field is named: {e}");
}

#[test]
fn the_json_schema_does_not_require_block_size() {
    let s = schema_for(Some(Kind::Network));
    let spec = &s["$defs"]["NetworkSpec"];
    let required: Vec<&str> = spec["required"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    assert_eq!(required, ["cidr"], "{spec}");
    let desc = spec["properties"]["blockSize"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(desc.contains("default 24"), "{desc}");
}
