//! The node's nftables table `topo` (the [`Key::Nat`](crate::key::Key::Nat) key): masquerade
//! per network, DNAT of every published port the node can give (see [`hostports`]: not one
//! a process of the node listens on), and isolation between networks — derived from the whole
//! slice, so it is one key of its own that bridge and container reconciles queue. Held ports
//! are rechecked with a backoff; a container whose held ports change is queued so its status
//! follows.

use std::collections::BTreeMap;

use topo_schema::kinds::{Kind, ObjectRef};
use topo_schema::slice::SliceEntry;

use super::Action;
use super::context::{Context, HoldChange};
use super::drift::{Drift, describe, with_kinds};
use super::error::ReconcileError;
use super::executor::{Change, NatScope};
use super::hostports::{self, Hold};
use crate::backend::{HostPortsView, NatRules, ObservedNat, PortDnat};
use crate::key::Key;

/// The node's NAT table as the slice wants it.
pub fn rules(entries: &[SliceEntry]) -> NatRules {
    let mut rules = NatRules::default();
    let mut cidrs = Vec::new();
    for e in entries {
        match e {
            SliceEntry::Bridge(b) => {
                cidrs.push(b.cidr);
                if b.masquerade {
                    rules.masquerade.push(b.cidr);
                }
            }
            SliceEntry::Container(c) => rules.ports.extend(c.ports.iter().map(PortDnat::from)),
            _ => {}
        }
    }
    // The node forwards (ip_forward=1), so without these its gateways route between networks.
    rules.isolate = NatRules::isolation_pairs(&cidrs);
    rules.normalized()
}

#[derive(Debug, PartialEq)]
pub enum Plan {
    InForce,
    /// Put `rules` in force; `drift` is how the table in force was changed outside topo
    /// (empty when the rules themselves changed, or nothing is known to be in force).
    Apply {
        rules: NatRules,
        drift: Vec<Drift>,
    },
}

/// `in_force`: the rules this agent last put in force, if any.
pub fn plan(want: NatRules, observed: &ObservedNat, in_force: Option<&NatRules>) -> Plan {
    if observed.satisfies(&want) {
        return Plan::InForce;
    }
    let drift = if in_force == Some(&want) {
        observed
            .differences(&want)
            .into_iter()
            .map(Drift::NodeNat)
            .collect()
    } else {
        vec![]
    };
    Plan::Apply { rules: want, drift }
}

/// What the node's table should hold, judged against the table in force and the host.
pub struct Judged {
    /// The slice's rules less the published ports held back.
    pub rules: NatRules,
    /// Every published port of the slice, with its container.
    pub published: Vec<(String, PortDnat)>,
    /// The ports held back, by container.
    pub holds: BTreeMap<String, Vec<Hold>>,
}

/// Judges `published` ports against the table in force (`observed`) and, for those not in
/// force, against who holds them on the node.
pub async fn judge_ports(
    ctx: &Context,
    published: &[(String, PortDnat)],
    observed: &ObservedNat,
) -> Result<BTreeMap<String, Vec<Hold>>, ReconcileError> {
    let check = hostports::to_check(published, &observed.rules.ports);
    let view = if check.is_empty() {
        HostPortsView::default()
    } else {
        ctx.executor().host_ports(&check).await?
    };
    Ok(hostports::holds(
        &ctx.node,
        published,
        &observed.rules.ports,
        &view,
    ))
}

async fn judge(
    ctx: &Context,
    entries: &[SliceEntry],
    observed: &ObservedNat,
) -> Result<Judged, ReconcileError> {
    let mut rules = rules(entries);
    let published = hostports::published(entries);
    let holds = judge_ports(ctx, &published, observed).await?;
    rules
        .ports
        .retain(|p| !holds.values().flatten().any(|h| h.port() == p));
    Ok(Judged {
        rules,
        published,
        holds,
    })
}

pub async fn reconcile(ctx: &Context) -> Result<Action, ReconcileError> {
    if !ctx.store.is_whole() {
        // Part of the slice cannot be read: the table stays as it is rather than losing
        // that part's ports.
        tracing::warn!("the node's NAT table is left alone while part of the slice is unsupported");
        return Ok(Action::AwaitChange);
    }
    let entries = ctx.store.entries();
    let exec = ctx.executor();
    let observed = exec.nat(&NatScope::Node).await?;
    let Judged {
        rules: want,
        published,
        holds,
    } = judge(ctx, &entries, &observed).await?;
    let anything_held = !holds.is_empty();
    if let Plan::Apply { rules, drift } = plan(want.clone(), &observed, ctx.node_nat().as_ref()) {
        exec.run(Change::Nat {
            scope: NatScope::Node,
            rules: rules.clone(),
        })
        .await?;
        let object = ObjectRef::new(Kind::Node, &ctx.node);
        if drift.is_empty() {
            ctx.recorder
                .normal(object, "NatProgrammed", programmed_message(&rules))
                .await
        } else {
            let message = with_kinds(describe(&drift), &drift);
            ctx.recorder.warning(object, "DriftRepaired", message).await
        }
    }
    for change in ctx.set_port_verdicts(&published, holds) {
        // A container that left the slice took its ports along: nothing to say or redo.
        if published.iter().any(|(name, _)| *name == change.container) {
            announce_holds(ctx, &change, &want.ports).await;
            ctx.queue.add(Key::Container(change.container));
        }
    }
    ctx.set_node_nat(want);
    Ok(match ctx.next_hold_recheck(anything_held) {
        Some(after) => Action::Requeue(after),
        None => Action::AwaitChange,
    })
}

/// Events for held ports that appeared on a container, and for held ports now `in_force`.
async fn announce_holds(ctx: &Context, change: &HoldChange, in_force: &[PortDnat]) {
    let object = ObjectRef::new(Kind::Container, &change.container);
    for h in change.after.iter().filter(|h| !change.before.contains(h)) {
        tracing::warn!(container = %change.container, reason = h.reason(), message = %h.message(), "published port held back");
        ctx.recorder
            .warning(object.clone(), h.reason(), h.message())
            .await;
    }
    for h in change.before.iter().filter(|h| in_force.contains(h.port())) {
        let p = h.port();
        let message = format!(
            "hostPort {}/{} is published on {}",
            p.host_port,
            p.protocol,
            if p.host_ip.is_unspecified() {
                "every address of the node".to_string()
            } else {
                p.host_ip.to_string()
            }
        );
        ctx.recorder
            .normal(object.clone(), "HostPortPublished", message)
            .await;
    }
}

fn programmed_message(rules: &NatRules) -> String {
    let s = |n: usize| if n == 1 { "" } else { "s" };
    format!(
        "node NAT table: masquerade for {} network{}, {} published port{}",
        rules.masquerade.len(),
        s(rules.masquerade.len()),
        rules.ports.len(),
        s(rules.ports.len()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::NatDrift;
    use crate::reconcile::fixtures;
    use topo_schema::kinds::Protocol;
    use topo_schema::slice::PublishedPort;

    fn bridge(net: &str, cidr: &str, masquerade: bool) -> SliceEntry {
        let mut b = fixtures::bridge(net);
        b.cidr = cidr.parse().unwrap();
        b.masquerade = masquerade;
        SliceEntry::Bridge(b)
    }

    fn published(port: u16) -> SliceEntry {
        let mut c = fixtures::container(&format!("c{port}"), &[]);
        c.ports.push(PublishedPort {
            host_port: port,
            container_port: 80,
            protocol: Protocol::Tcp,
            container_ip: "10.2.1.5".parse().unwrap(),
            host_ip: "192.168.100.1".parse().unwrap(),
        });
        SliceEntry::Container(c)
    }

    #[test]
    fn only_cidrs_masquerade_and_published_ports_queue_the_node_table() {
        use crate::reconcile::feeds_nat;
        let plain = SliceEntry::Container(fixtures::container("web", &["a"]));
        let mut moved = fixtures::container("web", &["b"]);
        moved.generation = 2;
        let moved = SliceEntry::Container(moved);
        assert!(!feeds_nat(&plain, None), "a new container without ports");
        assert!(!feeds_nat(&moved, Some(&plain)), "its attachments changed");
        assert!(
            feeds_nat(&published(80), None),
            "a new container with ports"
        );
        assert!(feeds_nat(&published(80), Some(&plain)), "ports added");
        assert!(feeds_nat(&plain, Some(&published(80))), "ports removed");
        assert!(!feeds_nat(&published(80), Some(&published(80))));
        let a = bridge("a", "10.2.0.0/16", true);
        assert!(feeds_nat(&a, None), "a new bridge");
        assert!(!feeds_nat(&a, Some(&a)));
        assert!(
            feeds_nat(&bridge("a", "10.2.0.0/16", false), Some(&a)),
            "masquerade"
        );
        assert!(
            feeds_nat(&bridge("a", "10.4.0.0/16", true), Some(&a)),
            "cidr"
        );
    }

    #[test]
    fn the_table_follows_bridges_and_published_ports() {
        let entries = [
            bridge("a", "10.2.0.0/16", true),
            bridge("b", "10.3.0.0/16", false),
            published(50001),
            published(50000),
        ];
        let r = rules(&entries);
        assert_eq!(r.masquerade, vec!["10.2.0.0/16".parse().unwrap()]);
        assert_eq!(
            r.ports.iter().map(|p| p.host_port).collect::<Vec<_>>(),
            vec![50000, 50001]
        );
        assert_eq!(r.isolate.len(), 2, "both directions between a and b");
        assert!(rules(&[]).is_empty());
    }

    #[test]
    fn the_plan_tells_tampering_from_a_new_table() {
        let want = rules(&[bridge("a", "10.2.0.0/16", true)]);
        let in_force = ObservedNat {
            table_exists: true,
            rules: want.clone(),
            exact: true,
            route_localnet: false,
            ip_forward: true,
        };
        let tampered = ObservedNat {
            exact: false,
            ..in_force.clone()
        };
        let flushed = ObservedNat {
            rules: NatRules::default(),
            ..in_force.clone()
        };
        let deleted = ObservedNat {
            ip_forward: true,
            ..ObservedNat::default()
        };
        let apply = |drift: Vec<NatDrift>| Plan::Apply {
            rules: want.clone(),
            drift: drift.into_iter().map(Drift::NodeNat).collect(),
        };
        let table = [
            (&in_force, Some(&want), Plan::InForce),
            (&in_force, None, Plan::InForce),
            (
                &tampered,
                Some(&want),
                apply(vec![NatDrift::RulesChanged {
                    missing: 0,
                    foreign: true,
                }]),
            ),
            (&flushed, Some(&want), apply(vec![NatDrift::TableFlushed])),
            (&deleted, Some(&want), apply(vec![NatDrift::TableDeleted])),
            (&tampered, None, apply(vec![])),
        ];
        for (observed, before, expected) in table {
            assert_eq!(plan(want.clone(), observed, before), expected);
        }
    }
}
