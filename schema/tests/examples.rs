//! Every manifest under the repository's `manifests/` parses without error, the files are
//! consistent together (`topoctl apply -f manifests/` works), and every object as written
//! validates against the JSON Schema of `topoctl schema`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use topo_schema::api::SourceFile;
use topo_schema::jsonschema::{NAME_PATTERN, schema_for};
use topo_schema::manifest::{check_apply, parse_file, parse_files};
use topo_schema::{Kind, names};

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

fn manifest_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            manifest_files(&p, out);
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(p);
        }
    }
}

fn sources() -> Vec<SourceFile> {
    let mut files = Vec::new();
    manifest_files(&manifests_dir(), &mut files);
    assert!(
        !files.is_empty(),
        "no manifests under {}",
        manifests_dir().display()
    );
    files
        .iter()
        .map(|p| SourceFile {
            name: p.display().to_string(),
            content: std::fs::read_to_string(p).unwrap(),
        })
        .collect()
}

/// Each file directly under `manifests/` is applied alone, each directory as one apply
/// (`topoctl apply -f manifests/examples/`).
fn apply_sets() -> Vec<Vec<SourceFile>> {
    let root = manifests_dir();
    let mut sets = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let mut files = Vec::new();
        if p.is_dir() {
            manifest_files(&p, &mut files);
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            files.push(p);
        }
        if !files.is_empty() {
            sets.push(
                files
                    .iter()
                    .map(|p| SourceFile {
                        name: p.display().to_string(),
                        content: std::fs::read_to_string(p).unwrap(),
                    })
                    .collect(),
            );
        }
    }
    sets
}

#[test]
fn every_manifest_parses() {
    let files = sources();
    for f in &files {
        match parse_file(&f.name, &f.content) {
            Ok(docs) => assert!(!docs.is_empty(), "{} holds no object", f.name),
            Err(causes) => {
                let msgs: Vec<String> = causes.iter().map(ToString::to_string).collect();
                panic!("{} does not parse:\n{}", f.name, msgs.join("\n"));
            }
        }
    }
    let sets = apply_sets();
    assert!(
        sets.iter()
            .any(|s| s.iter().any(|f| f.name.ends_with("examples/basic.yaml")))
    );
    for set in sets {
        let names: Vec<&str> = set.iter().map(|f| f.name.as_str()).collect();
        let docs = parse_files(&set).unwrap_or_else(|c| panic!("{names:?}: {c:#?}"));
        let problems = check_apply(&docs, &[]);
        assert!(
            problems.is_empty(),
            "{names:?} are not consistent together: {problems:#?}"
        );
    }
}

#[test]
fn basic_example_has_what_the_tour_shows() {
    let path = manifests_dir().join("examples/basic.yaml");
    let content = std::fs::read_to_string(&path).unwrap();
    let docs = parse_file("basic.yaml", &content).unwrap();
    let count = |k: Kind| docs.iter().filter(|d| d.resource.kind() == k).count();
    assert_eq!(count(Kind::Node), 3);
    assert_eq!(count(Kind::Network), 1);
    assert!(count(Kind::Link) >= 1);
    let containers: Vec<_> = docs
        .iter()
        .filter_map(|d| match &d.resource {
            topo_schema::Resource::Container(c) => Some(c),
            _ => None,
        })
        .collect();
    assert!(
        containers
            .iter()
            .any(|c| c.spec.networks.iter().any(|a| a.ip.is_some())),
        "no static address"
    );
    assert!(
        containers
            .iter()
            .any(|c| c.spec.networks.iter().any(|a| a.ip.is_none())),
        "no allocated address"
    );
    assert!(
        containers
            .iter()
            .any(|c| c.spec.ports.iter().any(|p| p.host_port.is_some())),
        "no published port"
    );
}

// ------------------------------------------------------------------ schema check

/// Each object of a file as written (YAML documents, JSON objects, List items).
fn written_objects(content: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(content) {
        let v = Value::deserialize(doc).unwrap();
        if v.is_null() {
            continue;
        }
        let items = match &v {
            Value::Array(items) => items.clone(),
            Value::Object(o) if o.get("kind") == Some(&Value::from("List")) => {
                o["items"].as_array().cloned().unwrap_or_default()
            }
            _ => vec![v],
        };
        out.extend(items);
    }
    out
}

/// A JSON Schema validator for the keywords schemars emits; returns what does not match.
fn check(root: &Value, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    let Some(s) = schema.as_object() else {
        if schema == &Value::Bool(false) {
            errs.push(format!("{at}: not allowed"));
        }
        return;
    };
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = r.strip_prefix("#/$defs/").expect("local ref");
        check(root, &root["$defs"][name], v, at, errs);
    }
    for sub in s
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        check(root, sub, v, at, errs);
    }
    for (key, exactly_one) in [("anyOf", false), ("oneOf", true)] {
        if let Some(subs) = s.get(key).and_then(Value::as_array) {
            let ok = subs
                .iter()
                .filter(|sub| {
                    let mut e = Vec::new();
                    check(root, sub, v, at, &mut e);
                    e.is_empty()
                })
                .count();
            if ok == 0 || (exactly_one && ok > 1) {
                errs.push(format!("{at}: {ok} of the {key} alternatives match"));
            }
        }
    }
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let is = |t: &str| match t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => false,
        };
        if !types.iter().any(|t| is(t)) {
            errs.push(format!("{at}: {v} is not of type {types:?}"));
        }
    }
    if let Some(c) = s.get("const")
        && c != v
    {
        errs.push(format!("{at}: {v} is not {c}"));
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        errs.push(format!("{at}: {v} is not one of {e:?}"));
    }
    if let (Some(min), Some(n)) = (s.get("minimum").and_then(Value::as_f64), v.as_f64())
        && n < min
    {
        errs.push(format!("{at}: {n} < {min}"));
    }
    if let (Some(max), Some(n)) = (s.get("maximum").and_then(Value::as_f64), v.as_f64())
        && n > max
    {
        errs.push(format!("{at}: {n} > {max}"));
    }
    if let (Some(p), Some(text)) = (s.get("pattern").and_then(Value::as_str), v.as_str()) {
        assert_eq!(p, NAME_PATTERN, "the test knows only the name pattern");
        if names::check_dns1123_label(text).is_err() {
            errs.push(format!("{at}: {text:?} does not match {p}"));
        }
    }
    if let Some(o) = v.as_object() {
        let props = s.get("properties").and_then(Value::as_object);
        for req in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let req = req.as_str().unwrap();
            if !o.contains_key(req) {
                errs.push(format!("{at}: missing {req}"));
            }
        }
        for (k, val) in o {
            let child = format!("{at}.{k}");
            match props.and_then(|p| p.get(k)) {
                Some(ps) => check(root, ps, val, &child, errs),
                None => {
                    if let Some(ap) = s.get("additionalProperties") {
                        check(root, ap, val, &child, errs);
                    }
                }
            }
        }
    }
    if let (Some(items), Some(a)) = (s.get("items"), v.as_array()) {
        for (i, item) in a.iter().enumerate() {
            check(root, items, item, &format!("{at}[{i}]"), errs);
        }
    }
}

fn schema_errors(schema: &Value, v: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    check(schema, schema, v, "", &mut errs);
    errs
}

#[test]
fn every_manifest_validates_against_the_json_schema() {
    let all = schema_for(None);
    let mut seen = 0;
    for f in sources() {
        for obj in written_objects(&f.content) {
            let errs = schema_errors(&all, &obj);
            assert!(
                errs.is_empty(),
                "{}: {} does not match the schema: {errs:?}",
                f.name,
                obj
            );
            let kind = Kind::from_manifest(obj["kind"].as_str().unwrap()).unwrap();
            let errs = schema_errors(&schema_for(Some(kind)), &obj);
            assert!(
                errs.is_empty(),
                "{}: {} does not match the {kind} schema: {errs:?}",
                f.name,
                obj
            );
            seen += 1;
        }
    }
    assert!(seen >= 10, "only {seen} objects checked");
}

#[test]
fn the_schema_refuses_what_the_parser_refuses() {
    let all = schema_for(None);
    let good: Value = serde_json::json!({
        "apiVersion": "topo.dev/v1alpha1", "kind": "Container",
        "metadata": {"name": "web"},
        "spec": {"node": "node1", "image": "topo/busybox:latest", "networks": [{"network": "overlay"}]}
    });
    assert!(schema_errors(&all, &good).is_empty());
    let bad = |path: &[&str], value: Value| {
        let mut v = good.clone();
        let mut at = &mut v;
        for p in &path[..path.len() - 1] {
            at = &mut at[*p];
        }
        at[path[path.len() - 1]] = value;
        v
    };
    for (what, v) in [
        ("unknown field", bad(&["spec", "imagee"], "x".into())),
        ("unknown kind", bad(&["kind"], "Contianer".into())),
        ("apiVersion", bad(&["apiVersion"], "v1".into())),
        ("name", bad(&["metadata", "name"], "Web_1".into())),
        ("type", bad(&["spec", "node"], 3.into())),
        (
            "pull policy",
            bad(&["spec", "imagePullPolicy"], "Sometimes".into()),
        ),
    ] {
        assert!(
            !schema_errors(&all, &v).is_empty(),
            "the schema accepts a bad {what}: {v}"
        );
    }
    let Value::Object(mut missing) = good.clone() else {
        unreachable!()
    };
    missing.remove("spec");
    assert!(!schema_errors(&all, &Value::Object(missing)).is_empty());
}
