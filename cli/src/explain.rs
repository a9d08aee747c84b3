//! `topoctl explain KIND[.FIELD...]`: a kind or a field described from the JSON Schema of
//! `topoctl schema` — its type, description, allowed values and fields — laid out as
//! kubectl's `explain` does.
//!
//! Read from the schema rather than written by hand so it cannot drift from what the parser
//! accepts: the descriptions are the doc comments of the schema crate's types. Pure: the
//! path and the schema in, the text out. Walking a path goes through `$ref`s, optional
//! values (`anyOf` with null) and into the items of arrays, as kubectl does.

use serde_json::{Map, Value};
use topo_schema::jsonschema::schema_for;
use topo_schema::{API_VERSION, Kind, names};

/// Deeper than any topo object; stops a self-referring schema.
const MAX_DEPTH: usize = 12;
/// Where descriptions are wrapped.
const WIDTH: usize = 80;

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(
        "unknown kind {given:?}: expected nodes, networks, containers, links or tunnels (or no, net, c, ln, tun){hint}"
    )]
    UnknownKind { given: String, hint: String },
    #[error("field {field:?} does not exist in {within}{hint}")]
    UnknownField {
        field: String,
        within: String,
        hint: String,
    },
    #[error("{within} is a {type_} and has no fields (so no {field:?})")]
    NoFields {
        within: String,
        type_: String,
        field: String,
    },
}

/// The `$defs` of one kind's schema, to follow `$ref`s.
struct Defs<'a>(&'a Map<String, Value>);

impl<'a> Defs<'a> {
    /// The schema a field's schema stands for: through `$ref`, a single-entry `allOf`, and
    /// an `anyOf`/`oneOf` whose only non-null branch it is (an optional value).
    fn resolve(&self, mut s: &'a Value) -> &'a Value {
        for _ in 0..MAX_DEPTH {
            if let Some(r) = s.get("$ref").and_then(Value::as_str) {
                match r.strip_prefix("#/$defs/").and_then(|n| self.0.get(n)) {
                    Some(d) => s = d,
                    None => return s,
                }
                continue;
            }
            let branches = ["allOf", "anyOf", "oneOf"]
                .iter()
                .find_map(|k| s.get(*k).and_then(Value::as_array));
            let non_null: Vec<&Value> = branches
                .map(|b| {
                    b.iter()
                        .filter(|x| x.get("type") != Some(&Value::from("null")))
                        .collect()
                })
                .unwrap_or_default();
            match non_null.as_slice() {
                [one] if one.get("const").is_none() => s = one,
                _ => return s,
            }
        }
        s
    }

    /// kubectl's type words: string, integer, boolean, Object, []T, map[string]T.
    fn type_name(&self, s: &'a Value) -> String {
        let r = self.resolve(s);
        if r.get("enum").is_some() || r.get("oneOf").is_some() || r.get("const").is_some() {
            return "string".into();
        }
        let t = match r.get("type") {
            Some(Value::String(t)) => t.as_str(),
            Some(Value::Array(ts)) => ts
                .iter()
                .filter_map(Value::as_str)
                .find(|t| *t != "null")
                .unwrap_or("Object"),
            _ => "Object",
        };
        match t {
            "object" => match r.get("additionalProperties") {
                Some(ap @ Value::Object(_)) if r.get("properties").is_none() => {
                    format!("map[string]{}", self.type_name(ap))
                }
                _ => "Object".into(),
            },
            "array" => match r.get("items") {
                Some(items) => format!("[]{}", self.type_name(items)),
                None => "[]Object".into(),
            },
            other => other.to_string(),
        }
    }

    /// The fields below `s` (into an array's items), with whether each is required.
    fn fields(&self, s: &'a Value) -> Vec<(&'a str, &'a Value, bool)> {
        let mut r = self.resolve(s);
        if let Some(items) = r.get("items") {
            r = self.resolve(items);
        }
        let required: Vec<&str> = r
            .get("required")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut out: Vec<(&str, &Value, bool)> = r
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| {
                p.iter()
                    .map(|(k, v)| (k.as_str(), v, required.contains(&k.as_str())))
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a.0.cmp(b.0));
        out
    }

    /// A field's description: its own, else its type's, with the allowed values and the
    /// default when the schema says them.
    fn description(&self, s: &'a Value) -> String {
        let r = self.resolve(s);
        let mut text = s
            .get("description")
            .or_else(|| r.get("description"))
            .and_then(Value::as_str)
            .map(paragraphs)
            .unwrap_or_default();
        let allowed: Vec<String> = match (r.get("enum"), r.get("oneOf")) {
            (Some(Value::Array(e)), _) => e.iter().map(crate::jsonpath::text_of).collect(),
            (_, Some(Value::Array(o))) => o
                .iter()
                .filter_map(|b| b.get("const"))
                .map(crate::jsonpath::text_of)
                .collect(),
            _ => Vec::new(),
        };
        if !allowed.is_empty() {
            text.push_str(&format!("\n\nAllowed values: {}.", allowed.join(", ")));
        }
        if let Some(d) = s.get("default").filter(|d| !is_empty_default(d)) {
            text.push_str(&format!(
                "\n\nDefault: {}.",
                serde_json::to_string(d).unwrap_or_default()
            ));
        }
        text.trim().to_string()
    }
}

fn is_empty_default(d: &Value) -> bool {
    match d {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// Doc-comment text as paragraphs: single line breaks are the source's wrapping.
fn paragraphs(s: &str) -> String {
    s.split("\n\n")
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Wraps at [`WIDTH`], every line indented by `indent` spaces.
fn wrap(text: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::new();
    for para in text.split('\n') {
        let mut line = String::new();
        for word in para.split_whitespace() {
            if !line.is_empty() && indent + line.len() + 1 + word.len() > WIDTH {
                out.push_str(&format!("{pad}{line}\n"));
                line.clear();
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        out.push_str(format!("{pad}{line}").trim_end());
        out.push('\n');
    }
    out
}

/// `explain PATH`: `container`, `containers.spec.networks`, `net.spec.blockSize`.
pub fn explain(path: &str, recursive: bool) -> Result<String, ExplainError> {
    let mut parts = path.split('.');
    let given = parts.next().unwrap_or_default();
    let kind = Kind::parse(given).ok_or_else(|| ExplainError::UnknownKind {
        given: given.to_string(),
        hint: did_you_mean(
            given,
            Kind::ALL.iter().flat_map(|k| [k.plural(), k.short()]),
        ),
    })?;
    let schema = schema_for(Some(kind));
    let empty = Map::new();
    let defs = Defs(
        schema
            .get("$defs")
            .and_then(Value::as_object)
            .unwrap_or(&empty),
    );
    let mut node = defs.0.get(kind.as_str()).unwrap_or(&schema);
    let mut within = kind.as_str().to_ascii_lowercase();
    let mut field: Option<(&str, bool)> = None;
    for name in parts {
        let fields = defs.fields(node);
        if fields.is_empty() {
            return Err(ExplainError::NoFields {
                within,
                type_: defs.type_name(node),
                field: name.to_string(),
            });
        }
        let Some((k, v, required)) = fields.iter().find(|(k, _, _)| *k == name) else {
            return Err(ExplainError::UnknownField {
                field: name.to_string(),
                hint: did_you_mean(name, fields.iter().map(|(k, _, _)| *k)),
                within,
            });
        };
        node = v;
        field = Some((k, *required));
        within = format!("{within}.{k}");
    }
    Ok(render(&defs, kind, node, field, recursive))
}

fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    let candidates: Vec<&str> = candidates.into_iter().collect();
    match names::closest(word, candidates.iter().copied()) {
        Some(c) => format!("; did you mean {c:?}?"),
        None => format!("; it has: {}", candidates.join(", ")),
    }
}

fn render(
    defs: &Defs<'_>,
    kind: Kind,
    node: &Value,
    field: Option<(&str, bool)>,
    recursive: bool,
) -> String {
    let mut out = format!("KIND:       {kind}\nVERSION:    {API_VERSION}\n\n");
    if let Some((name, required)) = field {
        let req = if required { " -required-" } else { "" };
        out.push_str(&format!(
            "FIELD: {name} <{}>{req}\n\n",
            defs.type_name(node)
        ));
    }
    let description = defs.description(node);
    out.push_str("DESCRIPTION:\n");
    out.push_str(&wrap(
        if description.is_empty() {
            "<empty>"
        } else {
            &description
        },
        4,
    ));
    let fields = defs.fields(node);
    if fields.is_empty() {
        return out;
    }
    out.push_str("\nFIELDS:\n");
    if recursive {
        tree(defs, node, 1, &mut out);
        return out;
    }
    for (name, v, required) in fields {
        let req = if required { " -required-" } else { "" };
        out.push_str(&format!("  {name}\t<{}>{req}\n", defs.type_name(v)));
        let d = defs.description(v);
        if !d.is_empty() {
            out.push_str(&wrap(&d, 4));
        }
        out.push('\n');
    }
    out
}

/// `--recursive`: every field below, indented by depth, with its type.
fn tree(defs: &Defs<'_>, node: &Value, depth: usize, out: &mut String) {
    if depth > MAX_DEPTH {
        return;
    }
    for (name, v, required) in defs.fields(node) {
        let req = if required { " -required-" } else { "" };
        out.push_str(&format!(
            "{}{name}\t<{}>{req}\n",
            "  ".repeat(depth),
            defs.type_name(v)
        ));
        tree(defs, v, depth + 1, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind() {
        let text = explain("containers", false).unwrap();
        assert!(text.starts_with("KIND:       Container\nVERSION:    topo.dev/v1alpha1\n\nDESCRIPTION:\n    A Docker container plumbed into networks.\n"), "{text}");
        for want in [
            "\nFIELDS:\n",
            "  apiVersion\t<string> -required-\n",
            "  metadata\t<Object> -required-\n",
            "  spec\t<Object> -required-\n",
            "  status\t<Object>\n",
        ] {
            assert!(text.contains(want), "{want:?} in {text}");
        }
    }

    #[test]
    fn fields_and_types() {
        let text = explain("container.spec.networks", false).unwrap();
        assert!(text.contains("FIELD: networks <[]Object>\n"), "{text}");
        assert!(
            text.contains("  network\t<string> -required-\n    The Network to join.\n"),
            "{text}"
        );
        assert!(text.contains("  ip\t<string>\n"), "{text}");

        let text = explain("net.spec.blockSize", false).unwrap();
        assert!(text.contains("FIELD: blockSize <integer>\n"), "{text}");
        assert!(text.contains("default 24"), "{text}");
        assert!(!text.contains("FIELDS:"), "a leaf has no fields: {text}");

        let text = explain("network.spec.topology", false).unwrap();
        assert!(text.contains("FIELD: topology <string>\n"), "{text}");
        assert!(text.contains("Allowed values: mesh, explicit."), "{text}");
        assert!(text.contains("Default: \"mesh\"."), "{text}");

        let text = explain("container.spec.env", false).unwrap();
        assert!(text.contains("FIELD: env <map[string]string>\n"), "{text}");
        let text = explain("container.spec.command", false).unwrap();
        assert!(text.contains("FIELD: command <[]string>\n"), "{text}");
        let text = explain("c.status.conditions.status", false).unwrap();
        assert!(
            text.contains("Allowed values: True, False, Unknown."),
            "{text}"
        );
    }

    #[test]
    fn recursive_lists_every_field() {
        let text = explain("link", true).unwrap();
        assert!(
            text.contains("\n  spec\t<Object> -required-\n    alias\t<string>\n"),
            "{text}"
        );
        assert!(
            text.contains("\n    to\t<Object> -required-\n      address\t<string>\n"),
            "{text}"
        );
    }

    #[test]
    fn unknown_names_get_the_nearest() {
        let e = explain("container.spec.netwroks", false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "field \"netwroks\" does not exist in container.spec; did you mean \"networks\"?"
        );
        let e = explain("container.spek", false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "field \"spek\" does not exist in container; did you mean \"spec\"?"
        );
        let e = explain("containr", false).unwrap_err();
        assert!(
            e.to_string().ends_with("did you mean \"containers\"?"),
            "{e}"
        );
        let e = explain("container.spec.zzzzzzzz", false).unwrap_err();
        assert!(
            e.to_string().contains("; it has: command, env, image"),
            "{e}"
        );
        let e = explain("container.spec.node.x", false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "container.spec.node is a string and has no fields (so no \"x\")"
        );
    }
}
