//! A consumer container's links: the nftables table `topo` in its namespace, DNATing each
//! link's listen address to the target's current address (geard's rules). A rewire changes
//! only this table: the consumer is never restarted for it.

use topo_schema::slice::ContainerEntry;

use super::super::drift::Drift;
use crate::backend::{LinkDnat, NatRules, ObservedNat};

/// The table the entry's links want (links without a target program nothing).
pub fn rules(c: &ContainerEntry) -> NatRules {
    NatRules {
        links: c
            .links
            .iter()
            .filter_map(|l| {
                l.target.map(|target| LinkDnat {
                    listen: l.listen,
                    protocol: l.protocol,
                    target,
                })
            })
            .collect(),
        ..NatRules::default()
    }
    .normalized()
}

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// The table to put in force, if the namespace's differs.
    pub apply: Option<NatRules>,
    /// Why it differs: changed outside topo (drift), or the entry changed (configuration).
    pub drift: Vec<Drift>,
    pub configured: Option<Drift>,
    /// (link, message) for each link whose target is new to it.
    pub rewired: Vec<(String, String)>,
}

/// `created`: the container was made by this reconcile; `restarted`: it was started again
/// (either way its namespace is new, so a missing table is no one's tampering).
pub fn plan(
    c: &ContainerEntry,
    previous: Option<&ContainerEntry>,
    observed: &ObservedNat,
    created: bool,
    restarted: bool,
) -> Plan {
    let want = rules(c);
    let mut plan = Plan::default();
    if observed.satisfies(&want) {
        // In force already (adopted, or another reconcile got here first): still tell users
        // about targets that changed.
        if let Some(p) = previous {
            plan.rewired = rewired(c, Some(p));
        }
        return plan;
    }
    let in_force = previous.map(rules);
    if in_force.as_ref() == Some(&want) {
        if !created && !restarted {
            plan.drift = observed
                .differences(&want)
                .into_iter()
                .map(|drift| Drift::LinkRules {
                    container: c.name.clone(),
                    drift,
                })
                .collect();
        }
    } else if !created {
        plan.configured = Some(Drift::LinkRulesStale);
    }
    plan.rewired = rewired(c, previous);
    plan.apply = Some(want);
    plan
}

fn rewired(c: &ContainerEntry, previous: Option<&ContainerEntry>) -> Vec<(String, String)> {
    c.links
        .iter()
        .filter_map(|l| {
            let before = previous
                .and_then(|p| p.links.iter().find(|x| x.link == l.link))
                .and_then(|x| x.target);
            let t = l.target?;
            (before != Some(t)).then(|| {
                (
                    l.link.clone(),
                    format!("{} {} now forwards to {t}", l.protocol, l.listen),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::NatDrift;
    use crate::reconcile::fixtures::{container, link};

    fn consumer(target: Option<&str>) -> ContainerEntry {
        let mut c = container("app", &[]);
        c.links.push(link("to-db", "127.0.0.1:6379", target));
        c
    }

    fn in_force(c: &ContainerEntry) -> ObservedNat {
        ObservedNat {
            table_exists: true,
            rules: rules(c),
            exact: true,
            route_localnet: true,
            ip_forward: false,
        }
    }

    #[test]
    fn the_plan_by_what_the_namespace_holds() {
        let old = consumer(Some("10.2.1.5:6379"));
        let new = consumer(Some("10.2.3.9:6379"));
        let gone = consumer(None);
        let empty = ObservedNat::default();
        let msg = |t: &str| {
            vec![(
                "to-db".to_string(),
                format!("tcp 127.0.0.1:6379 now forwards to {t}"),
            )]
        };
        // (entry, previous, namespace, created, restarted) → (apply, drift, configured, rewired)
        struct Row<'a> {
            c: &'a ContainerEntry,
            prev: Option<&'a ContainerEntry>,
            ns: ObservedNat,
            created: bool,
            restarted: bool,
            want: Plan,
        }
        let rows = [
            // Steady: nothing.
            Row {
                c: &old,
                prev: Some(&old),
                ns: in_force(&old),
                created: false,
                restarted: false,
                want: Plan::default(),
            },
            // Adopted after a restart of the agent: nothing, no rewire news.
            Row {
                c: &old,
                prev: None,
                ns: in_force(&old),
                created: false,
                restarted: false,
                want: Plan::default(),
            },
            // Tampered with: restored, drift.
            Row {
                c: &old,
                prev: Some(&old),
                ns: empty.clone(),
                created: false,
                restarted: false,
                want: Plan {
                    apply: Some(rules(&old)),
                    drift: vec![Drift::LinkRules {
                        container: "app".into(),
                        drift: NatDrift::TableDeleted,
                    }],
                    ..Plan::default()
                },
            },
            // Restarted container: its new namespace is empty, and that is no drift.
            Row {
                c: &old,
                prev: Some(&old),
                ns: empty.clone(),
                created: false,
                restarted: true,
                want: Plan {
                    apply: Some(rules(&old)),
                    ..Plan::default()
                },
            },
            // Rewired: configured, and the link says where it goes now.
            Row {
                c: &new,
                prev: Some(&old),
                ns: in_force(&old),
                created: false,
                restarted: false,
                want: Plan {
                    apply: Some(rules(&new)),
                    configured: Some(Drift::LinkRulesStale),
                    rewired: msg("10.2.3.9:6379"),
                    ..Plan::default()
                },
            },
            // A new container: programmed, announced, no drift or configuration news.
            Row {
                c: &old,
                prev: None,
                ns: empty.clone(),
                created: true,
                restarted: false,
                want: Plan {
                    apply: Some(rules(&old)),
                    rewired: msg("10.2.1.5:6379"),
                    ..Plan::default()
                },
            },
            // Already rewired by another pass: only the news.
            Row {
                c: &new,
                prev: Some(&old),
                ns: in_force(&new),
                created: false,
                restarted: false,
                want: Plan {
                    rewired: msg("10.2.3.9:6379"),
                    ..Plan::default()
                },
            },
            // The target went away: the rule goes, nothing to announce.
            Row {
                c: &gone,
                prev: Some(&old),
                ns: in_force(&old),
                created: false,
                restarted: false,
                want: Plan {
                    apply: Some(NatRules::default()),
                    configured: Some(Drift::LinkRulesStale),
                    ..Plan::default()
                },
            },
        ];
        for (i, r) in rows.into_iter().enumerate() {
            assert_eq!(
                plan(r.c, r.prev, &r.ns, r.created, r.restarted),
                r.want,
                "row {i}"
            );
        }
    }
}
