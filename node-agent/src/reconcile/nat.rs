//! The node's nftables table `topo` (the [`Key::Nat`](crate::key::Key::Nat) key): masquerade
//! per network, DNAT of every published port, and isolation between networks — derived from
//! the whole slice, so it is one key of its own that bridge and container reconciles queue.

use topo_schema::kinds::{Kind, ObjectRef};
use topo_schema::slice::SliceEntry;

use super::Action;
use super::context::Context;
use super::drift::{Drift, describe, with_kinds};
use super::error::ReconcileError;
use super::executor::{Change, NatScope};
use crate::backend::{NatRules, ObservedNat, PortDnat};

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

pub async fn reconcile(ctx: &Context) -> Result<Action, ReconcileError> {
    if !ctx.store.is_whole() {
        // Part of the slice cannot be read: the table stays as it is rather than losing
        // that part's ports.
        tracing::warn!("the node's NAT table is left alone while part of the slice is unsupported");
        return Ok(Action::AwaitChange);
    }
    let want = rules(&ctx.store.entries());
    let exec = ctx.executor();
    let observed = exec.nat(&NatScope::Node).await?;
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
    ctx.set_node_nat(want);
    Ok(Action::AwaitChange)
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
        });
        SliceEntry::Container(c)
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
