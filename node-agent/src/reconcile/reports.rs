//! The observed reports reconciles write for the controller (see `report.rs` for how they
//! are stored): what each slice entry's objects look like on this node, on success and on
//! failure. Pure builders, so each reconciler says only which one applies.

use std::collections::BTreeSet;

use chrono::Utc;
use topo_schema::api::ObservedReport;
use topo_schema::kinds::{Kind, ObjectRef};
use topo_schema::slice::{ContainerEntry, LinkRule, SliceEntry, SliceKey, TunnelEntry};

use super::error::ReconcileError;
use super::hostports::{self, Hold};
use crate::error_chain::error_chain;
use crate::watch::SliceValue;

fn report(object: ObjectRef, ready: bool, reason: &str, message: String) -> ObservedReport {
    ObservedReport {
        uid: None,
        object,
        observed_generation: 0,
        ready,
        reason: reason.to_string(),
        message,
        container_id: None,
        restart_count: 0,
        endpoint: None,
        time: Utc::now(),
    }
}

pub fn tunnel(t: &TunnelEntry, ready: bool, reason: &str, message: String) -> ObservedReport {
    ObservedReport {
        endpoint: Some(t.remote_ip.to_string()),
        ..report(
            ObjectRef::new(Kind::Tunnel, &t.tunnel),
            ready,
            reason,
            message,
        )
    }
}

/// A tunnel whose GRE port is on its bridge.
pub fn tunnel_ready(t: &TunnelEntry) -> ObservedReport {
    tunnel(
        t,
        true,
        "PortReady",
        format!(
            "GRE port {} on {} to {} (key {})",
            t.port, t.bridge, t.remote_ip, t.key
        ),
    )
}

/// A link as its consumer's reconcile leaves it: programmed, or why not.
pub fn link(c: &ContainerEntry, l: &LinkRule, programmed: Result<(), &str>) -> ObservedReport {
    let (ready, reason, message) = match (l.target, programmed) {
        (None, _) => (
            false,
            l.reason.clone().unwrap_or_else(|| "TargetNotFound".into()),
            l.message
                .clone()
                .unwrap_or_else(|| "the link's target cannot be resolved".into()),
        ),
        (Some(t), Ok(())) => (
            true,
            "Programmed".to_string(),
            format!(
                "{} {} in container {} forwards to {t}",
                l.protocol, l.listen, c.name
            ),
        ),
        (Some(_), Err(why)) => (false, "ConsumerNotReady".to_string(), why.to_string()),
    };
    ObservedReport {
        observed_generation: l.generation,
        endpoint: l.target.map(|t| t.to_string()),
        ..report(ObjectRef::new(Kind::Link, &l.link), ready, &reason, message)
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// A running, plumbed container, and the links it consumes. Not Ready while published
/// ports are held back (`held`): the reason and message name them.
pub fn container_running(
    c: &ContainerEntry,
    node: &str,
    container_id: &str,
    restarts: u32,
    programmed_links: usize,
    held: &[Hold],
) -> Vec<ObservedReport> {
    let (ready, reason, message) = match hostports::not_ready(held) {
        Some((reason, message)) => (false, reason, message),
        None => (
            true,
            "Running",
            format!(
                "running on {node} with {} attachment{} and {programmed_links} link{}",
                c.attachments.len(),
                plural(c.attachments.len()),
                plural(programmed_links),
            ),
        ),
    };
    let mut reports = vec![ObservedReport {
        uid: Some(c.uid.clone()),
        observed_generation: c.generation,
        container_id: Some(container_id.to_string()),
        restart_count: restarts,
        ..report(
            ObjectRef::new(Kind::Container, &c.name),
            ready,
            reason,
            message,
        )
    }];
    reports.extend(c.links.iter().map(|l| link(c, l, Ok(()))));
    reports
}

/// A container entry this agent leaves alone (a slice version it does not speak).
pub fn left_alone(name: &str, node: &str, why: &str) -> ObservedReport {
    report(
        ObjectRef::new(Kind::Container, name),
        false,
        "UnsupportedSliceEntry",
        format!("{why}; the agent on {node} leaves the container as it is"),
    )
}

/// Failure reports: a key that failed shows why in its objects' status.
pub fn failure(
    value: Option<&SliceValue>,
    err: &ReconcileError,
    container_id: Option<String>,
    restarts: u32,
) -> Vec<ObservedReport> {
    if let ReconcileError::ContainerGone { .. } = err {
        // Transient: the next reconcile restarts it and reports that.
        return vec![];
    }
    let message = error_chain(err);
    match value {
        Some(SliceValue::Entry(SliceEntry::Container(c))) => {
            let mut v = vec![ObservedReport {
                uid: Some(c.uid.clone()),
                observed_generation: c.generation,
                container_id,
                restart_count: restarts,
                ..report(
                    ObjectRef::new(Kind::Container, &c.name),
                    false,
                    err.reason(),
                    message,
                )
            }];
            let why = format!(
                "consumer container {} is not ready: {}",
                c.name,
                err.reason()
            );
            v.extend(c.links.iter().map(|l| link(c, l, Err(&why))));
            v
        }
        Some(SliceValue::Entry(SliceEntry::Tunnel(t))) => {
            vec![tunnel(t, false, err.reason(), message)]
        }
        _ => vec![],
    }
}

/// The objects whose reports the slice's entries produce.
pub fn expected(entries: &[SliceEntry]) -> BTreeSet<ObjectRef> {
    let mut out = BTreeSet::new();
    for e in entries {
        match e {
            SliceEntry::Tunnel(t) => {
                out.insert(ObjectRef::new(Kind::Tunnel, &t.tunnel));
            }
            SliceEntry::Container(c) => {
                out.insert(ObjectRef::new(Kind::Container, &c.name));
                out.extend(c.links.iter().map(|l| ObjectRef::new(Kind::Link, &l.link)));
            }
            _ => {}
        }
    }
    out
}

/// The reports an unreadable entry under `key` may own: kept until it can be read.
pub fn protected(key: &SliceKey) -> Option<ObjectRef> {
    match key {
        SliceKey::Container(name) => Some(ObjectRef::new(Kind::Container, name)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::fixtures::{self, container};

    fn consumer() -> ContainerEntry {
        let mut c = container("app", &[]);
        c.generation = 3;
        c.links = vec![
            fixtures::link("to-db", "127.0.0.1:6379", Some("10.2.1.5:6379")),
            fixtures::link("to-nowhere", "127.0.0.1:80", None),
        ];
        c.links[1].generation = 2;
        c
    }

    #[test]
    fn link_reports_by_target_and_consumer_state() {
        let c = consumer();
        // (link, consumer outcome) → (ready, reason, endpoint)
        let table = [
            (0, Ok(()), (true, "Programmed", Some("10.2.1.5:6379"))),
            (
                0,
                Err("down"),
                (false, "ConsumerNotReady", Some("10.2.1.5:6379")),
            ),
            (1, Ok(()), (false, "TargetNotFound", None)),
            (1, Err("down"), (false, "TargetNotFound", None)),
        ];
        for (i, outcome, (ready, reason, endpoint)) in table {
            let r = link(&c, &c.links[i], outcome);
            assert_eq!(
                (r.ready, r.reason.as_str(), r.endpoint.as_deref()),
                (ready, reason, endpoint),
                "link {i} {outcome:?}"
            );
            assert_eq!(r.observed_generation, c.links[i].generation);
        }
    }

    #[test]
    fn failure_reports_name_the_container_and_its_links() {
        let c = consumer();
        let err = ReconcileError::NotRunning {
            container: "app".into(),
        };
        let v = failure(
            Some(&SliceValue::Entry(SliceEntry::Container(c.clone()))),
            &err,
            Some("id".into()),
            2,
        );
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].reason, "ContainerExited");
        assert_eq!(v[0].restart_count, 2);
        assert_eq!(v[0].observed_generation, 3);
        assert_eq!(v[1].reason, "ConsumerNotReady");
        assert!(
            failure(
                Some(&SliceValue::Entry(SliceEntry::Container(c))),
                &ReconcileError::ContainerGone {
                    container: "app".into()
                },
                None,
                0
            )
            .is_empty(),
            "a gone container is transient"
        );
        let running = container_running(&consumer(), "node1", "id", 0, 1, &[]);
        assert_eq!(
            running[0].message,
            "running on node1 with 0 attachments and 1 link"
        );
    }
}
