//! Manifests for the fuzzers that reach deep: mostly valid objects of every kind whose names
//! refer to one another (so documents get past the header, the typed parse and static
//! validation into the cross-object checks), then broken in structure (a value replaced by
//! one of another type, a key dropped or added, nesting) and in text (bytes deleted,
//! inserted, lines swapped). Shared by schema's and the controller's fuzz tests (`#[path]`).
#![allow(dead_code)]

use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Names objects use and refer to: a small pool so references resolve, plus odd ones.
pub fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        16 => prop::sample::select(vec!["n1", "n2", "overlay", "back", "web", "db", "app", "l-1"])
            .prop_map(str::to_string),
        2 => "[a-z][a-z0-9-]{0,20}[a-z0-9]",
        1 => Just("a".repeat(63)),
        1 => Just("a".repeat(64)),
        1 => "[ -~]{0,10}",
        1 => Just(String::new()),
    ]
}

/// One of `good` nine times in ten, else one of `bad`.
fn mostly(good: Vec<&'static str>, bad: Vec<&'static str>) -> impl Strategy<Value = &'static str> {
    prop_oneof![9 => prop::sample::select(good), 1 => prop::sample::select(bad)]
}

fn ip() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (0u8..4, 0u8..255).prop_map(|(a, b)| format!("10.2.{a}.{b}")),
        2 => any::<[u8; 4]>().prop_map(|o| format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3])),
        1 => Just("10.2.0.1".to_string()),
        1 => "[0-9.]{0,16}",
    ]
}

fn cidr() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("10.2.0.0/16".to_string()),
        2 => (0u8..255, 8u8..31).prop_map(|(a, p)| format!("10.{a}.0.0/{p}")),
        1 => (ip(), 0u8..40).prop_map(|(a, p)| format!("{a}/{p}")),
    ]
}

fn port() -> impl Strategy<Value = Value> {
    prop_oneof![
        16 => (1u32..65536).prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => Just(json!(0)),
        1 => Just(json!("80")),
    ]
}

/// Any JSON value, up to a small depth.
pub fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::from),
        name().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn labels() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(
        prop_oneof![8 => "[a-z]{1,8}", 1 => "[a-z.]{1,8}/[a-z]{1,8}", 1 => ".{0,6}"],
        prop_oneof![8 => "[a-z0-9]{0,8}", 1 => ".{0,6}"],
        0..3,
    )
    .prop_map(|m| json!(m))
}

fn object(kind: &'static str, spec: impl Strategy<Value = Value>) -> impl Strategy<Value = Value> {
    (name(), labels(), spec).prop_map(move |(name, labels, spec)| {
        json!({"apiVersion": "topo.dev/v1alpha1", "kind": kind,
               "metadata": {"name": name, "labels": labels}, "spec": spec})
    })
}

fn node() -> impl Strategy<Value = Value> {
    let spec = (
        ip(),
        mostly(vec!["system", "netdev"], vec!["other"]),
        prop::option::of(prop::collection::vec(port(), 0..4)),
    )
        .prop_map(|(address, datapath, reserved)| {
            let mut s = json!({"address": address, "datapath": datapath});
            if let Some(r) = reserved {
                s["reservedPorts"] = json!(r);
            }
            s
        });
    object("Node", spec)
}

fn network() -> impl Strategy<Value = Value> {
    let spec = (
        cidr(),
        prop::option::of(0u32..40),
        prop::option::of(prop_oneof![Just(1450u32), 0u32..70000]),
        mostly(vec!["mesh", "explicit"], vec!["star"]),
        prop::option::of(any::<u32>()),
    )
        .prop_map(|(cidr, block, mtu, topology, key)| {
            let mut s = json!({"cidr": cidr, "topology": topology});
            if let Some(b) = block {
                s["blockSize"] = json!(b);
            }
            if let Some(m) = mtu {
                s["mtu"] = json!(m);
            }
            if let Some(k) = key {
                s["greKey"] = json!(k);
            }
            s
        });
    object("Network", spec)
}

fn container() -> impl Strategy<Value = Value> {
    let attachment = (
        name(),
        prop::option::of(ip()),
        prop::option::of("eth[0-9]|[a-z]{1,16}"),
    )
        .prop_map(|(network, ip, interface)| {
            let mut a = json!({"network": network});
            if let Some(ip) = ip {
                a["ip"] = json!(ip);
            }
            if let Some(i) = interface {
                a["interface"] = json!(i);
            }
            a
        });
    let mapping = (
        port(),
        prop::option::of(port()),
        mostly(vec!["tcp", "udp"], vec!["sctp"]),
    )
        .prop_map(|(c, h, p)| {
            let mut m = json!({"containerPort": c, "protocol": p});
            if let Some(h) = h {
                m["hostPort"] = h;
            }
            m
        });
    let spec = (
        name(),
        prop_oneof![Just("topo/busybox:latest".to_string()), ".{0,20}"],
        prop::collection::vec(".{0,8}", 0..4),
        prop::collection::btree_map("[A-Z_]{1,8}", ".{0,8}", 0..3),
        mostly(vec!["IfNotPresent", "Never", "Always"], vec!["Sometimes"]),
        prop::collection::vec(attachment, 0..3),
        prop::collection::vec(mapping, 0..3),
    )
        .prop_map(|(node, image, command, env, pull, networks, ports)| {
            json!({"node": node, "image": image, "command": command, "env": env,
                   "imagePullPolicy": pull, "networks": networks, "ports": ports})
        });
    object("Container", spec)
}

fn link() -> impl Strategy<Value = Value> {
    let to = prop_oneof![
        4 => (name(), port()).prop_map(|(c, p)| json!({"container": c, "port": p})),
        4 => (ip(), port()).prop_map(|(a, p)| json!({"address": a, "port": p})),
        1 => (name(), ip(), port()).prop_map(|(c, a, p)| json!({"container": c, "address": a, "port": p})),
    ];
    let spec = (
        name(),
        to,
        prop::option::of(prop_oneof!["127.0.0.1:[0-9]{1,5}", ".{0,12}"]),
        mostly(vec!["tcp", "udp"], vec!["icmp"]),
        prop::option::of(name()),
    )
        .prop_map(|(from, to, listen, protocol, alias)| {
            let mut s = json!({"from": from, "to": to, "protocol": protocol});
            if let Some(l) = listen {
                s["listen"] = json!(l);
            }
            if let Some(a) = alias {
                s["alias"] = json!(a);
            }
            s
        });
    object("Link", spec)
}

fn tunnel() -> impl Strategy<Value = Value> {
    let spec = prop_oneof![
        6 => (name(), name(), name()).prop_map(|(n, a, b)| json!({"network": n, "nodes": [a, b]})),
        1 => (name(), name(), ip()).prop_map(|(n, a, r)| json!({"network": n, "node": a, "remote": r})),
        1 => (name(), prop::collection::vec(name(), 0..4)).prop_map(|(n, ns)| json!({"network": n, "nodes": ns})),
    ];
    object("Tunnel", spec)
}

/// One object of any kind, mostly valid.
pub fn resource() -> impl Strategy<Value = Value> {
    prop_oneof![node(), network(), container(), link(), tunnel()]
}

/// A change to the structure of a document.
#[derive(Debug, Clone)]
pub enum Damage {
    /// Replace the value at a path (indices taken modulo what is there) by another.
    Replace(Vec<usize>, Value),
    /// Remove the key at a path.
    Remove(Vec<usize>),
    /// Add a key to the mapping at a path.
    Add(Vec<usize>, String, Value),
}

pub fn damage() -> impl Strategy<Value = Damage> {
    let path = prop::collection::vec(any::<usize>(), 0..5);
    prop_oneof![
        (path.clone(), any_value()).prop_map(|(p, v)| Damage::Replace(p, v)),
        path.clone().prop_map(Damage::Remove),
        (path, "[a-zA-Z]{0,10}", any_value()).prop_map(|(p, k, v)| Damage::Add(p, k, v)),
    ]
}

/// The key or index of the child of `v` that `i` picks (modulo its size), if it has any.
#[derive(Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn pick(v: &Value, i: usize) -> Option<Step> {
    match v {
        Value::Object(m) if !m.is_empty() => m.keys().nth(i % m.len()).cloned().map(Step::Key),
        Value::Array(a) if !a.is_empty() => Some(Step::Index(i % a.len())),
        _ => None,
    }
}

fn child<'a>(v: &'a mut Value, step: &Step) -> Option<&'a mut Value> {
    match (v, step) {
        (Value::Object(m), Step::Key(k)) => m.get_mut(k),
        (Value::Array(a), Step::Index(i)) => a.get_mut(*i),
        _ => None,
    }
}

pub fn apply_damage(doc: &mut Value, d: &Damage) {
    let (path, last) = match d {
        Damage::Replace(p, _) | Damage::Remove(p) | Damage::Add(p, _, _) => {
            (p.as_slice(), p.last().copied().unwrap_or(0))
        }
    };
    // Down the path through mappings and sequences, as far as it goes.
    let mut steps = vec![];
    {
        let mut at: &Value = doc;
        for i in path.iter().take(path.len().saturating_sub(1)) {
            let Some(step) = pick(at, *i) else { break };
            let next = match (&step, at) {
                (Step::Key(k), Value::Object(m)) => m.get(k),
                (Step::Index(i), Value::Array(a)) => a.get(*i),
                _ => None,
            };
            match next {
                Some(n @ (Value::Object(_) | Value::Array(_))) => {
                    steps.push(step);
                    at = n;
                }
                _ => break,
            }
        }
    }
    let mut at = doc;
    for step in &steps {
        match child(at, step) {
            Some(c) => at = c,
            None => return,
        }
    }
    let picked = pick(at, last);
    match d {
        Damage::Replace(_, v) => match picked {
            Some(step) => {
                if let Some(c) = child(at, &step) {
                    *c = v.clone();
                }
            }
            None => *at = v.clone(),
        },
        Damage::Remove(_) => match at {
            Value::Object(m) if !m.is_empty() => {
                if let Some(k) = m.keys().nth(last % m.len()).cloned() {
                    m.remove(&k);
                }
            }
            Value::Array(a) if !a.is_empty() => {
                let n = a.len();
                a.remove(last % n);
            }
            _ => {}
        },
        Damage::Add(_, k, v) => {
            if let Value::Object(m) = at {
                m.insert(k.clone(), v.clone());
            }
        }
    }
}

/// How the documents are written.
#[derive(Debug, Clone, Copy)]
pub enum Format {
    Yaml,
    JsonList,
    JsonArray,
    JsonOne,
}

/// A manifest's text: documents, damaged, in one of the formats.
pub fn manifest() -> impl Strategy<Value = String> {
    (
        // Most documents undamaged, so that many manifests get through to the cross-object checks.
        prop::collection::vec(
            (
                resource(),
                prop_oneof![
                    3 => Just(vec![]),
                    1 => prop::collection::vec(damage(), 1..3),
                ],
            ),
            1..6,
        ),
        prop::sample::select(vec![
            Format::Yaml,
            Format::Yaml,
            Format::JsonList,
            Format::JsonArray,
            Format::JsonOne,
        ]),
    )
        .prop_map(|(docs, format)| {
            let docs: Vec<Value> = docs
                .into_iter()
                .map(|(mut doc, damages)| {
                    for d in &damages {
                        apply_damage(&mut doc, d);
                    }
                    doc
                })
                .collect();
            write(&docs, format)
        })
}

pub fn write(docs: &[Value], format: Format) -> String {
    match format {
        Format::Yaml => docs
            .iter()
            .map(|d| serde_yaml::to_string(d).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("---\n"),
        Format::JsonList => {
            let mut m = Map::new();
            m.insert("apiVersion".into(), json!("topo.dev/v1alpha1"));
            m.insert("kind".into(), json!("List"));
            m.insert("items".into(), Value::Array(docs.to_vec()));
            serde_json::to_string_pretty(&Value::Object(m)).unwrap_or_default()
        }
        Format::JsonArray => serde_json::to_string(&docs).unwrap_or_default(),
        Format::JsonOne => serde_json::to_string_pretty(&docs[0]).unwrap_or_default(),
    }
}

// ---- text mutations -----------------------------------------------------------------------

#[derive(Debug, Clone)]
pub enum Mutation {
    Delete { at: usize, len: usize },
    Insert { at: usize, text: String },
    Replace { at: usize, ch: char },
    DuplicateLine { line: usize },
    SwapLines { a: usize, b: usize },
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    let snippet = prop_oneof![
        Just(": ".to_string()),
        Just("\n---\n".to_string()),
        Just("- ".to_string()),
        Just("{".to_string()),
        Just("]".to_string()),
        Just("\t".to_string()),
        Just("&a ".to_string()),
        Just("*a".to_string()),
        Just("!!binary ".to_string()),
        Just("!!map ".to_string()),
        Just("? ".to_string()),
        Just("\"".to_string()),
        Just("~".to_string()),
        Just("<<: *a\n".to_string()),
        Just("99999999999999999999".to_string()),
        Just("\u{feff}".to_string()),
        Just("é".to_string()),
        Just("\r\n".to_string()),
        "[ -~]{0,12}",
    ];
    prop_oneof![
        (any::<usize>(), 0usize..40).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), snippet).prop_map(|(at, text)| Mutation::Insert { at, text }),
        (any::<usize>(), any::<char>()).prop_map(|(at, ch)| Mutation::Replace { at, ch }),
        any::<usize>().prop_map(|line| Mutation::DuplicateLine { line }),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines { a, b }),
    ]
}

pub fn mutate(content: &str, m: &Mutation) -> String {
    let mut chars: Vec<char> = content.chars().collect();
    let n = chars.len().max(1);
    match m {
        Mutation::Delete { at, len } => {
            let at = at % n;
            let end = (at + len).min(chars.len());
            chars.drain(at.min(end)..end);
            chars.into_iter().collect()
        }
        Mutation::Insert { at, text } => {
            let at = at % (chars.len() + 1);
            chars.splice(at..at, text.chars());
            chars.into_iter().collect()
        }
        Mutation::Replace { at, ch } => {
            if !chars.is_empty() {
                let i = at % chars.len();
                chars[i] = *ch;
            }
            chars.into_iter().collect()
        }
        Mutation::DuplicateLine { line } => {
            let mut lines: Vec<&str> = content.split('\n').collect();
            let i = line % lines.len();
            lines.insert(i, lines[i]);
            lines.join("\n")
        }
        Mutation::SwapLines { a, b } => {
            let mut lines: Vec<&str> = content.split('\n').collect();
            let (a, b) = (a % lines.len(), b % lines.len());
            lines.swap(a, b);
            lines.join("\n")
        }
    }
}

/// A manifest, damaged in structure and then in text.
pub fn mutated_manifest() -> impl Strategy<Value = String> {
    (manifest(), prop::collection::vec(mutation(), 0..4))
        .prop_map(|(text, ms)| ms.iter().fold(text, |t, m| mutate(&t, m)))
}
