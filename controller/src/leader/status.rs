//! Status folding: every object's status computed from the plan, agent reports, heartbeats
//! and IPAM, and only those that differ from what is stored returned as writes.
//!
//! Pure (the time is a parameter), so it is tested as tables of snapshots and expected
//! conditions; the leader writes what it returns. A condition keeps its lastTransitionTime
//! while its status stays the same ([`set_condition`]).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use topo_schema::api::{Event, EventType as EvType};
use topo_schema::keys;
use topo_schema::meta::{CONDITION_READY, Condition, ConditionStatus, set_condition};
use topo_schema::{
    Container, ContainerStatus, Kind, Link, LinkStatus, Network, NetworkStatus, Node, NodeStatus,
    ObjectRef, Resource, Tunnel, TunnelStatus,
};

use crate::cache::Snapshot;
use crate::commit::{EncodeError, encode};
use crate::ipam::Assignment;
use crate::planner::{Desired, Plan};

use super::config::EVENT_SOURCE;

/// Status writes and events of one pass.
#[derive(Debug, Default)]
pub struct Folded {
    /// `(status key, JSON)` for every status that changed.
    pub puts: Vec<(String, String)>,
    /// Status keys of objects that no longer exist.
    pub deletes: Vec<String>,
    pub events: Vec<Event>,
}

fn ready(
    conditions: &mut Vec<Condition>,
    status: ConditionStatus,
    reason: &str,
    message: impl Into<String>,
    now: DateTime<Utc>,
) {
    set_condition(
        conditions,
        Condition {
            type_: CONDITION_READY.to_string(),
            status,
            reason: reason.to_string(),
            message: message.into(),
            last_transition_time: now,
        },
    );
}

/// None when the Ready condition is True, else why not (`Reason: message`), which a link to
/// the container passes on to its users.
fn not_ready_why(conditions: &[Condition]) -> Option<String> {
    match conditions.iter().find(|c| c.type_ == CONDITION_READY) {
        Some(c) if c.status == ConditionStatus::True => None,
        Some(c) => Some(format!("{}: {}", c.reason, c.message)),
        None => Some("no Ready condition yet".to_string()),
    }
}

fn event(object: ObjectRef, type_: EvType, reason: &str, message: String) -> Event {
    crate::events::new_event(object, type_, reason, &message, EVENT_SOURCE)
}

/// Computes every object's status from the plan, agent reports, heartbeats and IPAM, and
/// returns those that differ from what is stored. A status that does not encode fails the
/// pass (nothing of it is written).
pub fn fold_statuses(
    snap: &Snapshot,
    desired: &Desired<'_>,
    plan: &Plan,
    assignment: &Assignment,
    now: DateTime<Utc>,
) -> Result<Folded, EncodeError> {
    let mut out = Folded::default();
    for (name, n) in &desired.nodes {
        let st = fold_node(n, snap, assignment, now);
        out.node_block_events(name, n.status.as_ref(), &st);
        out.push(&ObjectRef::new(Kind::Node, *name), &st, n.status.as_ref())?;
    }
    for (name, n) in &desired.networks {
        let st = fold_network(name, n, plan, assignment, now);
        out.push(
            &ObjectRef::new(Kind::Network, *name),
            &st,
            n.status.as_ref(),
        )?;
    }
    // A link's readiness follows its target container's, folded first.
    let mut container_ready: HashMap<&str, Option<String>> = HashMap::new();
    for (name, c) in &desired.containers {
        let st = fold_container(name, c, snap, plan, assignment, now);
        container_ready.insert(name, not_ready_why(&st.conditions));
        out.address_events(name, c.status.as_ref(), &st);
        out.push(
            &ObjectRef::new(Kind::Container, *name),
            &st,
            c.status.as_ref(),
        )?;
    }
    for (name, l) in &desired.links {
        let st = fold_link(name, l, snap, plan, &container_ready, now);
        out.push(&ObjectRef::new(Kind::Link, *name), &st, l.status.as_ref())?;
    }
    // Tunnels: the user's and the stored derived ones (a derived tunnel gets a status once
    // its object exists).
    let node_ready = |node: &str| snap.heartbeats.contains_key(node);
    for o in snap.of_kind(Kind::Tunnel) {
        let Resource::Tunnel(t) = &o.resource else {
            continue;
        };
        let st = fold_tunnel(t, snap, plan, &node_ready, now);
        out.push(&o.object_ref(), &st, t.status.as_ref())?;
    }
    for r in snap.statuses.keys() {
        if snap.objects.get(r).is_none() {
            out.deletes.push(keys::status(r.kind, &r.name));
        }
    }
    for name in snap.verified.keys() {
        if !desired.containers.contains_key(name.as_str()) {
            out.deletes.push(keys::verified(Kind::Container, name));
        }
    }
    Ok(out)
}

impl Folded {
    /// Writes `new` unless it equals `old`. The stored status is compared typed (it is merged
    /// into the object when it decodes), so an unchanged status costs no serialization; one
    /// that does not decode is rewritten.
    fn push<S: PartialEq + serde::Serialize>(
        &mut self,
        r: &ObjectRef,
        new: &S,
        old: Option<&S>,
    ) -> Result<(), EncodeError> {
        if old != Some(new) {
            let key = keys::status(r.kind, &r.name);
            let value = encode(&key, new)?;
            self.puts.push((key, value));
        }
        Ok(())
    }

    /// BlockLeased and BlockReleased, for the blocks a node gained or lost.
    fn node_block_events(&mut self, name: &str, old: Option<&NodeStatus>, new: &NodeStatus) {
        let r = ObjectRef::new(Kind::Node, name);
        let old_blocks = old.map(|o| &o.blocks);
        for (net, block) in &new.blocks {
            if old_blocks.and_then(|b| b.get(net)) != Some(block) {
                self.events.push(event(
                    r.clone(),
                    EvType::Normal,
                    "BlockLeased",
                    format!("leased block {block} of network {net}"),
                ));
            }
        }
        for (net, block) in old_blocks.into_iter().flatten() {
            if !new.blocks.contains_key(net) {
                self.events.push(event(
                    r.clone(),
                    EvType::Normal,
                    "BlockReleased",
                    format!("released block {block} of network {net}"),
                ));
            }
        }
    }

    /// AddressAllocated, for each address a container did not hold before.
    fn address_events(&mut self, name: &str, old: Option<&ContainerStatus>, new: &ContainerStatus) {
        for (net, ip) in &new.addresses {
            if old.and_then(|o| o.addresses.get(net)) != Some(ip) {
                self.events.push(event(
                    ObjectRef::new(Kind::Container, name),
                    EvType::Normal,
                    "AddressAllocated",
                    format!("{ip} in network {net}"),
                ));
            }
        }
    }
}

fn fold_node(n: &Node, snap: &Snapshot, assignment: &Assignment, now: DateTime<Utc>) -> NodeStatus {
    let name = n.metadata.name.as_str();
    let mut st = n.status.clone().unwrap_or_default();
    st.observed_generation = n.metadata.generation;
    st.blocks = assignment
        .blocks
        .iter()
        .filter_map(|(net, m)| m.get(name).map(|b| (net.clone(), b.to_string())))
        .collect();
    match snap.heartbeats.get(name) {
        Some(hb) => {
            st.agent_version = Some(hb.agent_version.clone());
            ready(
                &mut st.conditions,
                ConditionStatus::True,
                "AgentReady",
                format!("agent {} is heartbeating", hb.agent_version),
                now,
            );
        }
        None => ready(
            &mut st.conditions,
            ConditionStatus::Unknown,
            "NodeLost",
            "no heartbeat from the node's agent (its lease lapsed, or it never started)",
            now,
        ),
    }
    st
}

fn fold_network(
    name: &str,
    n: &Network,
    plan: &Plan,
    assignment: &Assignment,
    now: DateTime<Utc>,
) -> NetworkStatus {
    let mut st = n.status.clone().unwrap_or_default();
    st.observed_generation = n.metadata.generation;
    let np = plan.networks.get(name);
    st.gre_key = np.map(|p| p.gre_key);
    st.mtu = np.map(|p| p.mtu);
    st.blocks = assignment
        .blocks
        .get(name)
        .map(|m| {
            m.iter()
                .map(|(node, b)| (node.clone(), b.to_string()))
                .collect()
        })
        .unwrap_or_default();
    st.allocated = u32::try_from(assignment.allocated_in(name)).unwrap_or(u32::MAX);
    ready(
        &mut st.conditions,
        ConditionStatus::True,
        "Planned",
        format!("{} nodes, {} addresses", st.blocks.len(), st.allocated),
        now,
    );
    st
}

fn fold_container(
    name: &str,
    c: &Container,
    snap: &Snapshot,
    plan: &Plan,
    assignment: &Assignment,
    now: DateTime<Utc>,
) -> ContainerStatus {
    let node = c.spec.node.as_str();
    let mut st = c.status.clone().unwrap_or_default();
    st.node = Some(node.to_string());
    st.addresses = assignment
        .addresses
        .get(name)
        .map(|m| {
            m.iter()
                .map(|(net, ip)| (net.clone(), ip.to_string()))
                .collect()
        })
        .unwrap_or_default();
    // A report about an earlier container of the same name (deleted, then created again
    // before its node cleaned up) says nothing about this one.
    let report = snap
        .reports
        .get(&(node.to_string(), ObjectRef::new(Kind::Container, name)))
        .filter(|r| match (r.uid.as_deref(), c.metadata.uid.as_deref()) {
            (Some(reported), Some(current)) => reported == current,
            _ => true,
        });
    st.container_id = report.and_then(|r| r.container_id.clone());
    st.restart_count = report.map(|r| r.restart_count).unwrap_or(0);
    st.observed_generation = report.map(|r| r.observed_generation);
    let generation = c.metadata.generation.unwrap_or(0);
    let pending = plan.containers.get(name).and_then(|p| p.pending.as_ref());
    let conds = &mut st.conditions;
    match (pending, report) {
        (Some(p), _) => ready(
            conds,
            ConditionStatus::False,
            &p.reason,
            p.message.clone(),
            now,
        ),
        (None, None) => ready(
            conds,
            ConditionStatus::False,
            "Pending",
            format!("waiting for the agent on node {node}"),
            now,
        ),
        (None, Some(_)) if !snap.heartbeats.contains_key(node) => ready(
            conds,
            ConditionStatus::Unknown,
            "NodeLost",
            format!("node {node}'s agent stopped heartbeating"),
            now,
        ),
        (None, Some(r)) if r.observed_generation < generation => ready(
            conds,
            ConditionStatus::False,
            "Progressing",
            format!("the agent on node {node} has not acted on generation {generation} yet"),
            now,
        ),
        (None, Some(r)) => {
            let status = if r.ready {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            };
            ready(conds, status, &r.reason, r.message.clone(), now)
        }
    }
    if let Some(v) = snap.verified.get(name) {
        set_condition(&mut st.conditions, (**v).clone());
    }
    st
}

fn fold_link(
    name: &str,
    l: &Link,
    snap: &Snapshot,
    plan: &Plan,
    container_ready: &HashMap<&str, Option<String>>,
    now: DateTime<Utc>,
) -> LinkStatus {
    let mut st = l.status.clone().unwrap_or_default();
    let lp = plan.links.get(name);
    st.endpoint = lp.and_then(|p| p.endpoint).map(|e| e.to_string());
    let consumer = l.spec.from.as_str();
    let consumer_plan = plan.containers.get(consumer);
    let report = lp.and_then(|p| p.consumer_node.as_ref()).and_then(|node| {
        snap.reports
            .get(&(node.clone(), ObjectRef::new(Kind::Link, name)))
    });
    st.observed_generation = report.map(|r| r.observed_generation);
    let conds = &mut st.conditions;
    if let Some(problem) = lp.and_then(|p| p.problem.as_ref()) {
        ready(
            conds,
            ConditionStatus::False,
            &problem.reason,
            problem.message.clone(),
            now,
        );
        return st;
    }
    if let Some(p) = consumer_plan.and_then(|p| p.pending.as_ref()) {
        ready(
            conds,
            ConditionStatus::False,
            "ConsumerPending",
            format!("container {consumer}: {}", p.message),
            now,
        );
        return st;
    }
    if let Some(target) = lp.and_then(|p| p.target_container.as_deref())
        && let Some(why) = container_ready
            .get(target)
            .cloned()
            .unwrap_or_else(|| Some("not planned".to_string()))
    {
        ready(
            conds,
            ConditionStatus::False,
            "TargetNotReady",
            format!("container {target} is not ready ({why})"),
            now,
        );
        return st;
    }
    let node = lp.and_then(|p| p.consumer_node.clone()).unwrap_or_default();
    match report {
        None => ready(
            conds,
            ConditionStatus::False,
            "Pending",
            format!("waiting for the agent on node {node} to program the link"),
            now,
        ),
        Some(r) if !r.ready => ready(
            conds,
            ConditionStatus::False,
            &r.reason,
            r.message.clone(),
            now,
        ),
        Some(r) if r.endpoint.is_some() && r.endpoint != st.endpoint => ready(
            conds,
            ConditionStatus::False,
            "Rewiring",
            format!(
                "programmed {}, moving to {}",
                r.endpoint.as_deref().unwrap_or_default(),
                st.endpoint.as_deref().unwrap_or_default()
            ),
            now,
        ),
        Some(_) => ready(
            conds,
            ConditionStatus::True,
            "Programmed",
            format!(
                "forwarding to {}",
                st.endpoint.as_deref().unwrap_or_default()
            ),
            now,
        ),
    }
    st
}

fn fold_tunnel(
    t: &Tunnel,
    snap: &Snapshot,
    plan: &Plan,
    node_ready: &dyn Fn(&str) -> bool,
    now: DateTime<Utc>,
) -> TunnelStatus {
    let name = t.metadata.name.as_str();
    let mut st = t.status.clone().unwrap_or_default();
    st.observed_generation = t.metadata.generation;
    let conds = &mut st.conditions;
    let Some(tp) = plan.tunnels.get(name) else {
        ready(
            conds,
            ConditionStatus::False,
            "NotPlanned",
            "the tunnel is being removed",
            now,
        );
        return st;
    };
    if let Some(p) = &tp.problem {
        ready(
            conds,
            ConditionStatus::False,
            &p.reason,
            p.message.clone(),
            now,
        );
        return st;
    }
    for end in &tp.ends {
        if !node_ready(end) {
            ready(
                conds,
                ConditionStatus::False,
                "NodeNotReady",
                format!("node {end} is not ready"),
                now,
            );
            return st;
        }
        match snap
            .reports
            .get(&(end.clone(), ObjectRef::new(Kind::Tunnel, name)))
        {
            None => {
                ready(
                    conds,
                    ConditionStatus::False,
                    "Pending",
                    format!("waiting for node {end} to report its GRE port"),
                    now,
                );
                return st;
            }
            Some(r) if !r.ready => {
                ready(
                    conds,
                    ConditionStatus::False,
                    &r.reason,
                    format!("node {end}: {}", r.message),
                    now,
                );
                return st;
            }
            Some(_) => {}
        }
    }
    ready(
        conds,
        ConditionStatus::True,
        "Established",
        format!("GRE ports up on {}", tp.ends.join(" and ")),
        now,
    );
    st
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::cache::StoredObject;
    use crate::leader::fixtures::{objects, snapshot};
    use crate::planner;
    use topo_schema::api::{Heartbeat, ObservedReport};

    /// Folds, then stores the written statuses in the snapshot as the cache would.
    fn fold(s: &mut Snapshot, now: DateTime<Utc>) -> Folded {
        let f = {
            let desired = Desired::from_resources(s.objects.values().map(|o| &o.resource));
            let assignment = Assignment::from_state(&s.blocks, &s.addrs);
            let plan = planner::plan(&desired, &assignment, &Default::default());
            fold_statuses(s, &desired, &plan, &assignment, now).unwrap()
        };
        for (key, value) in &f.puts {
            let (kind, name) = keys::parse_status_key(key).unwrap();
            let r = ObjectRef::new(kind, name);
            let v: serde_json::Value = serde_json::from_str(value).unwrap();
            if let Some(o) = s.objects.get(&r) {
                let mut o = (**o).clone();
                o.resource.set_status_value(v.clone());
                s.objects.insert(r.clone(), Arc::new(o));
            }
            s.statuses.insert(r, Arc::new(v));
        }
        f
    }

    fn ready_of(s: &Snapshot, kind: Kind, name: &str) -> Condition {
        let o = s.get(&ObjectRef::new(kind, name)).unwrap();
        o.resource
            .conditions()
            .iter()
            .find(|c| c.type_ == CONDITION_READY)
            .unwrap()
            .clone()
    }

    fn report(
        node: &str,
        kind: Kind,
        name: &str,
        generation: i64,
        ready: bool,
        endpoint: Option<&str>,
    ) -> (String, ObjectRef, ObservedReport) {
        let object = ObjectRef::new(kind, name);
        let rep = ObservedReport {
            uid: None,
            object: object.clone(),
            observed_generation: generation,
            ready,
            reason: if ready {
                "Running".into()
            } else {
                "ImagePullFailed".into()
            },
            message: "m".into(),
            container_id: Some("cid".into()),
            restart_count: 1,
            endpoint: endpoint.map(str::to_string),
            time: Utc::now(),
        };
        (node.to_string(), object, rep)
    }

    fn put_report(s: &mut Snapshot, r: (String, ObjectRef, ObservedReport)) {
        s.reports.insert((r.0, r.1), Arc::new(r.2));
    }

    fn heartbeat(s: &mut Snapshot, node: &str) {
        s.heartbeats.insert(
            node.to_string(),
            Arc::new(Heartbeat {
                node: node.into(),
                agent_version: "1.2".into(),
                started: Utc::now(),
                endpoint: None,
            }),
        );
    }

    #[test]
    fn a_report_about_an_earlier_object_of_the_same_name_is_ignored() {
        let t0 = Utc::now();
        let mut s = snapshot(&objects());
        heartbeat(&mut s, "n1");
        let app = ObjectRef::new(Kind::Container, "app");
        let mut o = (**s.objects.get(&app).unwrap()).clone();
        o.resource.metadata_mut().uid = Some("new-uid".into());
        s.objects.insert(app.clone(), Arc::new(o));
        let mut stale = report("n1", Kind::Container, "app", 2, true, None);
        stale.2.uid = Some("old-uid".into());
        put_report(&mut s, stale);
        fold(&mut s, t0);
        assert_eq!(ready_of(&s, Kind::Container, "app").reason, "Pending");
        let mut fresh = report("n1", Kind::Container, "app", 2, true, None);
        fresh.2.uid = Some("new-uid".into());
        put_report(&mut s, fresh);
        fold(&mut s, t0 + chrono::Duration::seconds(1));
        assert_eq!(ready_of(&s, Kind::Container, "app").reason, "Running");
    }

    /// A container's last verification is folded into its status next to Ready, kept when
    /// other things change, and its record is deleted with the container.
    #[test]
    fn the_verified_condition_is_folded_and_kept() {
        let t0 = Utc::now();
        let mut s = snapshot(&objects());
        let verified = |status, reason: &str| Condition {
            type_: topo_schema::verify::CONDITION_VERIFIED.to_string(),
            status,
            reason: reason.to_string(),
            message: "m".to_string(),
            last_transition_time: t0,
        };
        let of = |s: &Snapshot| {
            s.get(&ObjectRef::new(Kind::Container, "app"))
                .unwrap()
                .resource
                .conditions()
                .iter()
                .find(|c| c.type_ == "Verified")
                .cloned()
        };
        fold(&mut s, t0);
        assert_eq!(of(&s), None);
        s.verified.insert(
            "app".into(),
            Arc::new(verified(ConditionStatus::False, "ChecksFailed")),
        );
        fold(&mut s, t0);
        assert_eq!(of(&s).unwrap().reason, "ChecksFailed");
        heartbeat(&mut s, "n1");
        fold(&mut s, t0 + chrono::Duration::seconds(1));
        assert_eq!(of(&s).unwrap().reason, "ChecksFailed", "kept across passes");
        assert_eq!(ready_of(&s, Kind::Container, "app").reason, "Pending");
        s.verified.insert(
            "app".into(),
            Arc::new(verified(ConditionStatus::True, "ChecksPassed")),
        );
        fold(&mut s, t0 + chrono::Duration::seconds(2));
        assert_eq!(of(&s).unwrap().status, ConditionStatus::True);
        s.objects.remove(&ObjectRef::new(Kind::Container, "app"));
        let f = fold(&mut s, t0 + chrono::Duration::seconds(3));
        assert!(
            f.deletes.contains(&keys::verified(Kind::Container, "app")),
            "{:?}",
            f.deletes
        );
    }

    #[test]
    fn statuses_follow_reports_and_are_written_only_when_changed() {
        let t0 = Utc::now();
        let mut s = snapshot(&objects());
        let f = fold(&mut s, t0);
        assert_eq!(f.puts.len(), 7, "every object gets a first status");
        assert_eq!(ready_of(&s, Kind::Node, "n1").reason, "NodeLost");
        assert_eq!(ready_of(&s, Kind::Container, "app").reason, "Pending");
        assert_eq!(ready_of(&s, Kind::Link, "app-db").reason, "TargetNotReady");
        assert_eq!(ready_of(&s, Kind::Tunnel, "t").reason, "NodeNotReady");
        let net = s
            .get(&ObjectRef::new(Kind::Network, "ov"))
            .unwrap()
            .resource
            .status_value();
        assert_eq!(net["greKey"], 1);
        assert_eq!(net["mtu"], 1400);
        assert_eq!(net["allocated"], 2);
        assert_eq!(net["blocks"]["n2"], "10.2.1.0/24");
        // Nothing changed: nothing is written, and no event repeats.
        let f = fold(&mut s, t0 + chrono::Duration::seconds(5));
        assert!(f.puts.is_empty(), "{:?}", f.puts);
        assert!(f.events.is_empty());

        // Agents come up and report.
        heartbeat(&mut s, "n1");
        heartbeat(&mut s, "n2");
        put_report(&mut s, report("n1", Kind::Container, "app", 2, true, None));
        put_report(&mut s, report("n2", Kind::Container, "db", 1, true, None));
        let t1 = t0 + chrono::Duration::seconds(10);
        fold(&mut s, t1);
        let app = ready_of(&s, Kind::Container, "app");
        assert_eq!(
            (app.status, app.reason.as_str(), app.last_transition_time),
            (ConditionStatus::True, "Running", t1)
        );
        let app = s
            .get(&ObjectRef::new(Kind::Container, "app"))
            .unwrap()
            .resource
            .status_value();
        assert_eq!(app["containerID"], "cid");
        assert_eq!(app["observedGeneration"], 2);
        assert_eq!(app["addresses"]["ov"], "10.2.0.2");
        // db's agent acted on an older generation.
        assert_eq!(ready_of(&s, Kind::Container, "db").reason, "Progressing");
        assert_eq!(ready_of(&s, Kind::Node, "n1").status, ConditionStatus::True);

        // db catches up; the link is programmed, but towards an old endpoint first.
        put_report(&mut s, report("n2", Kind::Container, "db", 2, true, None));
        put_report(
            &mut s,
            report("n1", Kind::Link, "app-db", 1, true, Some("10.2.9.9:6379")),
        );
        fold(&mut s, t1);
        let l = ready_of(&s, Kind::Link, "app-db");
        assert_eq!(l.reason, "Rewiring");
        let lst = s
            .get(&ObjectRef::new(Kind::Link, "app-db"))
            .unwrap()
            .resource
            .status_value();
        assert_eq!(lst["endpoint"], "10.2.1.2:6379");
        put_report(
            &mut s,
            report("n1", Kind::Link, "app-db", 1, true, Some("10.2.1.2:6379")),
        );
        fold(&mut s, t1);
        assert_eq!(
            ready_of(&s, Kind::Link, "app-db").status,
            ConditionStatus::True
        );

        // The tunnel: Ready once both ends report their port.
        put_report(&mut s, report("n1", Kind::Tunnel, "t", 1, true, None));
        fold(&mut s, t1);
        assert_eq!(ready_of(&s, Kind::Tunnel, "t").reason, "Pending");
        put_report(&mut s, report("n2", Kind::Tunnel, "t", 1, true, None));
        fold(&mut s, t1);
        assert_eq!(
            ready_of(&s, Kind::Tunnel, "t").status,
            ConditionStatus::True
        );

        // n2's heartbeat lapses: its container is Unknown, the tunnel and the link go down;
        // app's condition keeps its transition time.
        s.heartbeats.remove("n2");
        let t2 = t1 + chrono::Duration::seconds(30);
        fold(&mut s, t2);
        let db = ready_of(&s, Kind::Container, "db");
        assert_eq!(
            (db.status, db.reason.as_str(), db.last_transition_time),
            (ConditionStatus::Unknown, "NodeLost", t2)
        );
        assert_eq!(ready_of(&s, Kind::Tunnel, "t").reason, "NodeNotReady");
        assert_eq!(ready_of(&s, Kind::Link, "app-db").reason, "TargetNotReady");
        assert_eq!(
            ready_of(&s, Kind::Container, "app").last_transition_time,
            t1
        );
    }

    /// A link to a container that does not exist yet is accepted and not Ready
    /// (TargetNotFound); once the target exists but is not Ready, the link says so with the
    /// target's reason; when the target runs and the consumer's agent programmed the rule,
    /// the link is Ready, without the Link object being touched.
    #[test]
    fn a_link_waits_for_its_target_and_becomes_ready_by_itself() {
        let t0 = Utc::now();
        let without_db: Vec<Resource> = objects()
            .into_iter()
            .filter(|r| !(r.kind() == Kind::Container && r.name() == "db"))
            .collect();
        let mut s = snapshot(&without_db);
        heartbeat(&mut s, "n1");
        heartbeat(&mut s, "n2");
        put_report(&mut s, report("n1", Kind::Container, "app", 2, true, None));
        fold(&mut s, t0);
        let l = ready_of(&s, Kind::Link, "app-db");
        assert_eq!(
            (l.status, l.reason.as_str()),
            (ConditionStatus::False, "TargetNotFound")
        );
        assert!(l.message.contains("db"), "{}", l.message);
        let link_ref = ObjectRef::new(Kind::Link, "app-db");
        let link_before = s.get(&link_ref).unwrap().resource.clone();

        // db is created (the Link is not applied again).
        let mut s2 = snapshot(&objects());
        s2.heartbeats = s.heartbeats.clone();
        s2.reports = s.reports.clone();
        s2.objects.insert(
            link_ref.clone(),
            Arc::new(StoredObject {
                resource: link_before.clone(),
                mod_revision: 1,
                create_revision: 1,
            }),
        );
        let mut s = s2;
        put_report(&mut s, report("n2", Kind::Container, "db", 2, false, None));
        let t1 = t0 + chrono::Duration::seconds(1);
        fold(&mut s, t1);
        let l = ready_of(&s, Kind::Link, "app-db");
        assert_eq!(
            (l.status, l.reason.as_str()),
            (ConditionStatus::False, "TargetNotReady")
        );
        assert!(
            l.message
                .contains("container db is not ready (ImagePullFailed: m)"),
            "{}",
            l.message
        );
        let endpoint = s
            .get(&link_ref)
            .unwrap()
            .resource
            .status_value()
            .get("endpoint")
            .and_then(|e| e.as_str())
            .map(str::to_string)
            .expect("the endpoint is known as soon as the target has an address");

        // db runs and app's agent programmed the rule towards it.
        put_report(&mut s, report("n2", Kind::Container, "db", 2, true, None));
        put_report(
            &mut s,
            report("n1", Kind::Link, "app-db", 1, true, Some(&endpoint)),
        );
        let t2 = t1 + chrono::Duration::seconds(1);
        fold(&mut s, t2);
        let l = ready_of(&s, Kind::Link, "app-db");
        assert_eq!(
            (l.status, l.reason.as_str(), l.last_transition_time),
            (ConditionStatus::True, "Programmed", t2)
        );
        assert_eq!(
            s.get(&link_ref).unwrap().resource.spec_value(),
            link_before.spec_value()
        );
    }

    #[test]
    fn orphan_statuses_are_deleted_and_block_events_emitted() {
        let mut s = snapshot(&objects());
        let f = fold(&mut s, Utc::now());
        let leased: Vec<_> = f
            .events
            .iter()
            .filter(|e| e.reason == "BlockLeased")
            .collect();
        assert_eq!(leased.len(), 2);
        assert!(leased[0].message.contains("10.2.0.0/24"));
        s.objects.remove(&ObjectRef::new(Kind::Container, "app"));
        let f = fold(&mut s, Utc::now());
        assert_eq!(f.deletes, vec![keys::status(Kind::Container, "app")]);
    }
}
