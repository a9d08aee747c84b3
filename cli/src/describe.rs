//! `topoctl describe`: one object, kubectl-style.
//!
//! Pure, like [`crate::output`]: the events are passed in (or why they are unavailable).
//! The text is built section by section (head, spec, status, conditions, events); spec and
//! status are rendered generically from the object's YAML so new fields show up without
//! code here.

use std::fmt::Write;

use chrono::{DateTime, Utc};
use serde_yaml::Value;
use topo_schema::Resource;
use topo_schema::api::Event;

use crate::output::render_table;
use crate::timefmt::{age, human_duration};

/// The object's events, or why they could not be had.
pub enum EventsSection<'a> {
    Known(&'a [Event]),
    Unavailable(String),
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Null => Some("<none>".into()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(if s.is_empty() {
            "\"\"".into()
        } else {
            s.clone()
        }),
        Value::Sequence(a) if a.is_empty() => Some("<none>".into()),
        Value::Mapping(o) if o.is_empty() => Some("<none>".into()),
        Value::Tagged(t) => scalar(&t.value),
        _ => None,
    }
}

fn key_text(k: &Value) -> String {
    scalar(k).unwrap_or_else(|| {
        serde_yaml::to_string(k)
            .unwrap_or_default()
            .trim_end()
            .to_string()
    })
}

/// A value as indented `key:  value` lines, the values of one map aligned, fields in the
/// order the types declare them.
pub fn render_value(out: &mut String, indent: usize, v: &Value) {
    let pad = " ".repeat(indent);
    match v {
        Value::Mapping(map) => {
            let keys: Vec<String> = map.keys().map(key_text).collect();
            let width = keys.iter().map(|k| k.chars().count()).max().unwrap_or(0);
            for (k, v) in keys.iter().zip(map.values()) {
                match scalar(v) {
                    Some(s) => {
                        let gap = " ".repeat(width - k.chars().count() + 2);
                        let _ = writeln!(out, "{pad}{k}:{gap}{s}");
                    }
                    None => {
                        let _ = writeln!(out, "{pad}{k}:");
                        render_value(out, indent + 2, v);
                    }
                }
            }
        }
        Value::Sequence(items) => {
            for item in items {
                match scalar(item) {
                    Some(s) => {
                        let _ = writeln!(out, "{pad}- {s}");
                    }
                    None => {
                        // The item's lines, its first one marked as a list entry.
                        let mut inner = String::new();
                        render_value(&mut inner, indent + 2, item);
                        let mut first = true;
                        for line in inner.lines() {
                            if first {
                                let rest = line.get(indent + 2..).unwrap_or(line);
                                let _ = writeln!(out, "{pad}- {rest}");
                                first = false;
                            } else {
                                let _ = writeln!(out, "{line}");
                            }
                        }
                    }
                }
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", scalar(other).unwrap_or_default());
        }
    }
}

fn map_lines(m: &std::collections::BTreeMap<String, String>) -> Vec<String> {
    if m.is_empty() {
        return vec!["<none>".into()];
    }
    m.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// `AGE` of an event: `5m`, or `5m (x3 over 20m)` for a repeated one.
pub fn event_age(e: &Event, now: DateTime<Utc>) -> String {
    let last = human_duration(now - e.last_timestamp);
    if e.count > 1 {
        format!(
            "{last} (x{} over {})",
            e.count,
            human_duration(now - e.first_timestamp)
        )
    } else {
        last
    }
}

fn indent_block(s: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    s.lines().map(|l| format!("{pad}{l}\n")).collect()
}

pub fn describe(r: &Resource, events: EventsSection<'_>, now: DateTime<Utc>) -> String {
    // Through YAML's ordered maps, so fields keep their declared order.
    let whole = serde_yaml::to_value(r).unwrap_or(Value::Null);
    let spec = whole.get("spec").cloned().unwrap_or(Value::Null);
    let status = whole.get("status").cloned().unwrap_or(Value::Null);
    let mut out = head_section(r, &status, now);
    out.push_str("Spec:\n");
    render_value(&mut out, 2, &spec);
    status_section(&mut out, status);
    conditions_section(&mut out, r, now);
    events_section(&mut out, events, now);
    out
}

/// Name, kind, labels, annotations, times and generations, labels aligned.
fn head_section(r: &Resource, status: &Value, now: DateTime<Utc>) -> String {
    let meta = r.metadata();
    let observed = status.get("observedGeneration").and_then(Value::as_i64);
    let mut head: Vec<(&str, Vec<String>)> = vec![
        ("Name", vec![meta.name.clone()]),
        ("Kind", vec![r.kind().to_string()]),
        ("Labels", map_lines(&meta.labels)),
        ("Annotations", map_lines(&meta.annotations)),
    ];
    let created = match meta.creation_timestamp {
        Some(t) => format!(
            "{} ({} ago)",
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            age(Some(t), now)
        ),
        None => "<unknown>".into(),
    };
    head.push(("Created", vec![created]));
    if let Some(uid) = &meta.uid {
        head.push(("UID", vec![uid.clone()]));
    }
    if let Some(rv) = &meta.resource_version {
        head.push(("Resource Version", vec![rv.clone()]));
    }
    let opt_num = |n: Option<i64>| n.map(|n| n.to_string()).unwrap_or_else(|| "<none>".into());
    head.push(("Generation", vec![opt_num(meta.generation)]));
    head.push(("Observed Generation", vec![opt_num(observed)]));

    let width = head.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
    let mut out = String::new();
    for (k, values) in &head {
        for (i, v) in values.iter().enumerate() {
            let label = if i == 0 {
                format!("{k}:")
            } else {
                String::new()
            };
            let _ = writeln!(out, "{label:<width$}{v}", width = width + 1);
        }
    }
    out
}

/// The status without what other sections show (conditions, observedGeneration).
fn status_section(out: &mut String, mut rest: Value) {
    if let Value::Mapping(m) = &mut rest {
        m.shift_remove("conditions");
        m.shift_remove("observedGeneration");
    }
    match &rest {
        Value::Mapping(m) if !m.is_empty() => {
            out.push_str("Status:\n");
            render_value(out, 2, &rest);
        }
        _ => out.push_str("Status:  <none>\n"),
    }
}

fn conditions_section(out: &mut String, r: &Resource, now: DateTime<Utc>) {
    let conditions = r.conditions();
    if conditions.is_empty() {
        out.push_str("Conditions:  <none>\n");
        return;
    }
    out.push_str("Conditions:\n");
    let header: Vec<String> = ["TYPE", "STATUS", "REASON", "MESSAGE", "LAST-TRANSITION"]
        .map(String::from)
        .to_vec();
    let rows: Vec<Vec<String>> = conditions
        .iter()
        .map(|c| {
            vec![
                c.type_.clone(),
                c.status.to_string(),
                c.reason.clone(),
                c.message.clone(),
                human_duration(now - c.last_transition_time),
            ]
        })
        .collect();
    out.push_str(&indent_block(&render_table(&header, &rows, true, &[]), 2));
}

/// The object's events, oldest first.
fn events_section(out: &mut String, events: EventsSection<'_>, now: DateTime<Utc>) {
    let events = match events {
        EventsSection::Unavailable(why) => {
            let _ = writeln!(out, "Events:  <unavailable: {why}>");
            return;
        }
        EventsSection::Known([]) => {
            out.push_str("Events:  <none>\n");
            return;
        }
        EventsSection::Known(events) => events,
    };
    out.push_str("Events:\n");
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by_key(|e| e.last_timestamp);
    let header: Vec<String> = ["TYPE", "REASON", "AGE", "FROM", "MESSAGE"]
        .map(String::from)
        .to_vec();
    let rows: Vec<Vec<String>> = sorted
        .iter()
        .map(|e| {
            vec![
                format!("{:?}", e.type_),
                e.reason.clone(),
                event_age(e, now),
                e.source.clone(),
                e.message.clone(),
            ]
        })
        .collect();
    out.push_str(&indent_block(&render_table(&header, &rows, true, &[]), 2));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::tests::container;
    use chrono::TimeDelta;
    use topo_schema::api::EventType;
    use topo_schema::{Kind, ObjectRef};

    #[test]
    fn describes_a_container() {
        let now = Utc::now();
        let mut c = container("redis", now - TimeDelta::minutes(5));
        c.metadata_mut().labels.insert("app".into(), "redis".into());
        c.metadata_mut().labels.insert("tier".into(), "db".into());
        c.metadata_mut().generation = Some(2);
        let ev = Event {
            object: ObjectRef::new(Kind::Container, "redis"),
            type_: EventType::Warning,
            reason: "ImagePullFailed".into(),
            message: "pull access denied".into(),
            count: 3,
            first_timestamp: now - TimeDelta::minutes(4),
            last_timestamp: now - TimeDelta::seconds(30),
            source: "agent/node4".into(),
        };
        let text = describe(&c, EventsSection::Known(std::slice::from_ref(&ev)), now);
        assert!(
            text.starts_with("Name:                 redis\nKind:                 Container\n"),
            "{text}"
        );
        assert!(
            text.contains("Labels:               app=redis\n                      tier=db\n"),
            "{text}"
        );
        assert!(text.contains("Generation:           2\n"), "{text}");
        assert!(
            text.contains(
                "Spec:\n  node:             node4\n  image:            topo/busybox:latest\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("  networks:\n    - network:  overlay\n"),
            "{text}"
        );
        assert!(
            text.contains("  ports:\n    - containerPort:  6379\n      hostPort:       50000\n"),
            "{text}"
        );
        assert!(text.contains("Status:\n  addresses:\n    overlay:  10.2.4.10\n  containerID:   0123456789abcdef0123\n"), "{text}");
        assert!(text.contains("  TYPE    STATUS   REASON    MESSAGE   LAST-TRANSITION\n  Ready   True     Running             5m\n"), "{text}");
        assert!(text.contains("  Warning   ImagePullFailed   30s (x3 over 4m)   agent/node4   pull access denied\n"), "{text}");

        let text = describe(&c, EventsSection::Known(&[]), now);
        assert!(text.ends_with("Events:  <none>\n"), "{text}");
    }
}
