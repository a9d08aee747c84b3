//! `topoctl diff`: the live object against what apply would make of it.

use serde_yaml::Value;
use similar::TextDiff;
use topo_schema::Resource;

/// The object as compared: without status and the fields the server sets on every write.
/// YAML's maps keep the fields in their declared order.
pub fn comparable(r: &Resource) -> Value {
    let mut v = serde_yaml::to_value(r).unwrap_or(Value::Null);
    if let Value::Mapping(m) = &mut v {
        m.shift_remove("status");
        if let Some(Value::Mapping(meta)) = m.get_mut("metadata") {
            for k in ["resourceVersion", "generation", "creationTimestamp", "uid"] {
                meta.shift_remove(k);
            }
        }
    }
    v
}

fn yaml(v: Option<&Resource>) -> String {
    v.map(|r| serde_yaml::to_string(&comparable(r)).unwrap_or_default())
        .unwrap_or_default()
}

/// A unified diff of `live` (None: absent) against `merged` (None: would be deleted), labelled
/// with `object` (`container/redis`); `None` when they are the same.
pub fn unified(object: &str, live: Option<&Resource>, merged: Option<&Resource>) -> Option<String> {
    let (a, b) = (yaml(live), yaml(merged));
    if a == b {
        return None;
    }
    let diff = TextDiff::from_lines(&a, &b);
    let text = diff
        .unified_diff()
        .context_radius(3)
        .header(&format!("live/{object}"), &format!("merged/{object}"))
        .to_string();
    Some(text)
}

/// kubectl's exit codes: 0 when nothing would change, 1 when something would.
pub fn exit_code(diffs: &[Option<String>]) -> i32 {
    if diffs.iter().any(Option::is_some) {
        1
    } else {
        0
    }
}

/// The exit code of a diff that failed.
pub const EXIT_ERROR: i32 = 2;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::tests::container;

    #[test]
    fn server_fields_and_status_are_ignored() {
        let now = chrono::Utc::now();
        let live = container("redis", now);
        let mut merged = live.clone();
        merged.clear_status();
        merged.metadata_mut().resource_version = Some("99".into());
        merged.metadata_mut().generation = Some(5);
        assert_eq!(unified("container/redis", Some(&live), Some(&merged)), None);
        assert_eq!(exit_code(&[None, None]), 0);
    }

    #[test]
    fn a_change_is_a_unified_diff() {
        let now = chrono::Utc::now();
        let live = container("redis", now);
        let mut merged = live.clone();
        if let Resource::Container(c) = &mut merged {
            c.spec.image = "redis:7".into();
        }
        let d = unified("container/redis", Some(&live), Some(&merged)).unwrap();
        assert!(
            d.starts_with("--- live/container/redis\n+++ merged/container/redis\n"),
            "{d}"
        );
        assert!(
            d.contains("-  image: topo/busybox:latest\n+  image: redis:7\n"),
            "{d}"
        );
        assert_eq!(exit_code(&[None, Some(d)]), 1);

        let created = unified("container/redis", None, Some(&live)).unwrap();
        assert!(
            created.lines().skip(3).all(|l| l.starts_with('+')),
            "{created}"
        );
    }
}
