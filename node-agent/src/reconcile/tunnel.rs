//! One GRE port on its network's bridge (`tunnels/<port>`): observe the switch, plan the
//! port (add, restore, or move it from where an earlier entry had it), apply it in one
//! transaction, report the tunnel.

use topo_schema::kinds::{Datapath, Kind, ObjectRef};
use topo_schema::slice::TunnelEntry;

use super::Action;
use super::bridge;
use super::context::Context;
use super::drift::{Drift, with_kinds};
use super::error::ReconcileError;
use super::executor::Change;
use super::reports;
use crate::backend::{OvsChange, OvsState, PortKind};
use crate::error_chain::error_chain;
use crate::key::Key;

/// The GRE interface an entry wants.
pub fn gre_kind(t: &TunnelEntry) -> PortKind {
    PortKind::Gre {
        remote_ip: t.remote_ip,
        key: t.key,
    }
}

/// What the port needed, for the event that tells about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortOutcome {
    Unchanged,
    Added,
    Updated,
}

#[derive(Debug, PartialEq)]
pub struct Plan {
    pub changes: Vec<OvsChange>,
    pub outcome: PortOutcome,
    /// The port is the switch's first GRE port and its bridge is on the userspace datapath:
    /// once it is in place, ovs-vswitchd's datapath flows are purged
    /// ([`crate::backend::Ovs::purge_datapath_flows`] says why).
    pub purge_flows: bool,
}

/// Whether a GRE port added to `bridge` is the switch's first on the userspace datapath, where
/// a tunnel's packets are taken off the underlay by a datapath flow (the kernel's datapath
/// has a tunnel device instead, which needs no flow).
fn first_userspace_tunnel(state: &OvsState, bridge: &str) -> bool {
    let userspace = state
        .bridges
        .get(bridge)
        .is_some_and(|b| b.datapath_type == Datapath::Netdev.ovs_type());
    userspace
        && !state
            .bridges
            .values()
            .flat_map(|b| b.ports.values())
            .flat_map(|p| &p.interfaces)
            .any(|i| i.kind == PortKind::GRE_TYPE)
}

pub fn plan(
    t: &TunnelEntry,
    previous: Option<&TunnelEntry>,
    state: &OvsState,
) -> Result<Plan, ReconcileError> {
    bridge::check_ready(state, &t.bridge)?;
    let not_owned = || ReconcileError::PortNotOwned {
        bridge: t.bridge.clone(),
        port: t.port.clone(),
    };
    let kind = gre_kind(t);
    let mut changes = Vec::new();
    // A tunnel that moved to another port name or bridge leaves its old port behind.
    if let Some(p) = previous
        && (p.port != t.port || p.bridge != t.bridge)
        && state
            .bridges
            .get(&p.bridge)
            .and_then(|b| b.ports.get(&p.port))
            .is_some_and(|port| port.owned)
    {
        changes.push(OvsChange::DeletePort {
            bridge: p.bridge.clone(),
            name: p.port.clone(),
        });
    }
    let port = state
        .bridges
        .get(&t.bridge)
        .and_then(|b| b.ports.get(&t.port));
    let outcome = match port {
        None if state
            .bridges
            .values()
            .any(|b| b.ports.contains_key(&t.port)) =>
        {
            return Err(not_owned());
        }
        None => {
            changes.push(OvsChange::AddPort {
                bridge: t.bridge.clone(),
                name: t.port.clone(),
                kind,
                protected: t.split_horizon,
                object: ObjectRef::new(Kind::Tunnel, &t.tunnel).to_string(),
            });
            PortOutcome::Added
        }
        Some(p) if !p.owned => return Err(not_owned()),
        Some(p) if !p.matches(&kind, t.split_horizon) => {
            changes.push(OvsChange::UpdatePort {
                bridge: t.bridge.clone(),
                name: t.port.clone(),
                kind,
                protected: t.split_horizon,
            });
            PortOutcome::Updated
        }
        Some(_) => PortOutcome::Unchanged,
    };
    let purge_flows = outcome == PortOutcome::Added && first_userspace_tunnel(state, &t.bridge);
    Ok(Plan {
        changes,
        outcome,
        purge_flows,
    })
}

/// The event for what the port needed: drift when the entry was already in force.
fn event(t: &TunnelEntry, outcome: &PortOutcome, steady: bool) -> Option<(&'static str, String)> {
    let port = t.port.clone();
    match (outcome, steady) {
        (PortOutcome::Unchanged, _) => None,
        (PortOutcome::Added, true) => {
            let d = Drift::GrePortDeleted { port };
            Some(("DriftRepaired", with_kinds(&d, std::slice::from_ref(&d))))
        }
        (PortOutcome::Added, false) => Some((
            "TunnelCreated",
            format!(
                "GRE port {} to {} (key {}) created on bridge {}",
                t.port, t.remote_ip, t.key, t.bridge
            ),
        )),
        (PortOutcome::Updated, true) => {
            let d = Drift::GrePortChanged { port };
            Some(("DriftRepaired", with_kinds(&d, std::slice::from_ref(&d))))
        }
        (PortOutcome::Updated, false) => Some((
            "TunnelConfigured",
            format!("GRE port {} set to {} (key {})", t.port, t.remote_ip, t.key),
        )),
    }
}

pub async fn reconcile(
    ctx: &Context,
    t: &TunnelEntry,
    previous: Option<&TunnelEntry>,
) -> Result<Action, ReconcileError> {
    let steady = previous == Some(t);
    let exec = ctx.executor();
    let Plan {
        changes,
        outcome,
        purge_flows,
    } = plan(t, previous, &exec.switch().await?)?;
    let what = format!("GRE port {}", t.port);
    let object = ObjectRef::new(Kind::Tunnel, &t.tunnel);
    if purge_flows {
        // After ovs-vswitchd has taken the port: a purge before it would let the flows that
        // hand GRE to the host's stack come back as they were.
        exec.run(Change::SwitchSettled { what, changes }).await?;
        purge_datapath_flows(ctx, t, &object).await;
    } else {
        exec.run(Change::Switch { what, changes }).await?;
    }
    ctx.reporter
        .sync(&Key::Tunnel(t.port.clone()), vec![reports::tunnel_ready(t)])
        .await
        .map_err(|source| ReconcileError::Report { source })?;
    match event(t, &outcome, steady) {
        Some((reason @ "DriftRepaired", message)) => {
            ctx.recorder.warning(object, reason, message).await
        }
        Some((reason, message)) => ctx.recorder.normal(object, reason, message).await,
        None => {}
    }
    Ok(Action::AwaitChange)
}

/// Purges ovs-vswitchd's datapath flows after the switch's first tunnel. A failure is told
/// (log and event), not retried: the port is in place, and the flow it leaves behind idles out
/// once GRE from that node pauses for 10 s.
async fn purge_datapath_flows(ctx: &Context, t: &TunnelEntry, object: &ObjectRef) {
    match ctx.executor().run(Change::PurgeDatapathFlows).await {
        Ok(()) => {
            tracing::info!(port = %t.port, "datapath flows purged after the switch's first tunnel")
        }
        Err(e) => {
            let error = error_chain(&e);
            tracing::warn!(%error, "datapath flows not purged after the switch's first tunnel");
            let message = format!(
                "{error}; GRE from other nodes may reach the host's stack instead of bridge {} until ovs-vswitchd's flow for it idles out (10 s without GRE)",
                t.bridge
            );
            ctx.recorder
                .warning(object.clone(), "DatapathFlowsKept", message)
                .await;
        }
    }
}

/// The entry left the slice: its port goes if it is ours.
pub fn plan_removal(t: &TunnelEntry, state: &OvsState) -> Option<Change> {
    state
        .bridges
        .get(&t.bridge)
        .and_then(|b| b.ports.get(&t.port))
        .is_some_and(|p| p.owned)
        .then(|| Change::Switch {
            what: format!("GRE port {}", t.port),
            changes: vec![OvsChange::DeletePort {
                bridge: t.bridge.clone(),
                name: t.port.clone(),
            }],
        })
}

pub async fn remove(ctx: &Context, t: &TunnelEntry) -> Result<(), ReconcileError> {
    let exec = ctx.executor();
    if let Some(change) = plan_removal(t, &exec.switch().await?) {
        exec.run(change).await?;
        ctx.recorder
            .normal(
                ObjectRef::new(Kind::Tunnel, &t.tunnel),
                "TunnelRemoved",
                format!("GRE port {} removed", t.port),
            )
            .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Ovs;
    use crate::backend::fake::FakeOvs;
    use crate::reconcile::fixtures::{add_bridge, switch};

    fn entry(port: &str, key: u32) -> TunnelEntry {
        TunnelEntry {
            tunnel: "ov-n1-n2".into(),
            network: "ov".into(),
            bridge: "tb-ov".into(),
            port: port.into(),
            peer: Some("n2".into()),
            remote_ip: "192.168.100.2".parse().unwrap(),
            key,
            split_horizon: true,
        }
    }

    fn add_port(t: &TunnelEntry) -> OvsChange {
        OvsChange::AddPort {
            bridge: t.bridge.clone(),
            name: t.port.clone(),
            kind: gre_kind(t),
            protected: true,
            object: "tunnel/ov-n1-n2".into(),
        }
    }

    #[tokio::test]
    async fn the_port_plan_by_what_the_switch_holds() {
        let t = entry("tg-n2", 7);
        let rekeyed = entry("tg-n2", 9);
        let renamed = entry("tg-old", 7);
        let bridge_only = switch(&[add_bridge("ov")]).await;
        let with_port = switch(&[add_bridge("ov"), add_port(&t)]).await;
        let with_old = switch(&[add_bridge("ov"), add_port(&renamed)]).await;
        let with_rekeyed = switch(&[add_bridge("ov"), add_port(&rekeyed)]).await;
        // (previous, switch) → (changes, outcome, purge_flows): only the switch's first GRE
        // port (the fixture's bridges are on the userspace datapath) purges.
        type Row<'a> = (
            Option<&'a TunnelEntry>,
            &'a OvsState,
            Vec<OvsChange>,
            PortOutcome,
            bool,
        );
        let table: Vec<Row> = vec![
            (
                None,
                &bridge_only,
                vec![add_port(&t)],
                PortOutcome::Added,
                true,
            ),
            (Some(&t), &with_port, vec![], PortOutcome::Unchanged, false),
            (
                Some(&rekeyed),
                &with_rekeyed,
                vec![OvsChange::UpdatePort {
                    bridge: "tb-ov".into(),
                    name: "tg-n2".into(),
                    kind: gre_kind(&t),
                    protected: true,
                }],
                PortOutcome::Updated,
                false,
            ),
            (
                Some(&renamed),
                &with_old,
                vec![
                    OvsChange::DeletePort {
                        bridge: "tb-ov".into(),
                        name: "tg-old".into(),
                    },
                    add_port(&t),
                ],
                PortOutcome::Added,
                false,
            ),
        ];
        for (previous, state, changes, outcome, purge_flows) in table {
            assert_eq!(
                plan(&t, previous, state).unwrap(),
                Plan {
                    changes,
                    outcome,
                    purge_flows
                },
                "previous {previous:?}"
            );
        }
        // A second network's first tunnel is not the switch's first; nor is a tunnel on the
        // kernel's datapath.
        let other = TunnelEntry {
            bridge: "tb-other".into(),
            ..entry("tg-n3", 7)
        };
        let two_bridges = switch(&[add_bridge("ov"), add_port(&t), add_bridge("other")]).await;
        assert!(!plan(&other, None, &two_bridges).unwrap().purge_flows);
        let system = switch(&[OvsChange::AddBridge {
            name: "tb-ov".into(),
            datapath: Datapath::System,
            rstp: false,
            mtu: 1458,
            object: "network/ov".into(),
        }])
        .await;
        let on_system = plan(&t, None, &system).unwrap();
        assert_eq!(
            (on_system.outcome, on_system.purge_flows),
            (PortOutcome::Added, false)
        );
        assert!(matches!(
            plan(&t, None, &OvsState::default()),
            Err(ReconcileError::BridgeNotReady { .. })
        ));
        assert_eq!(plan_removal(&t, &bridge_only), None);
        assert!(plan_removal(&t, &with_port).is_some());
    }

    #[tokio::test]
    async fn a_foreign_port_of_that_name_is_a_conflict() {
        let t = entry("tg-n2", 7);
        let ovs = FakeOvs::new("node1").with_foreign_bridge("br-phy");
        ovs.apply(&[add_bridge("ov")]).await.unwrap();
        {
            let mut s = ovs.state();
            let b = s.bridges.get_mut("br-phy").unwrap();
            let mut p = b.ports["br-phy"].clone();
            p.name = "tg-n2".into();
            b.ports.insert(p.name.clone(), p);
        }
        let state = ovs.state().clone();
        assert!(matches!(
            plan(&t, None, &state),
            Err(ReconcileError::PortNotOwned { .. })
        ));
    }

    #[test]
    fn events_tell_drift_from_configuration() {
        let t = entry("tg-n2", 7);
        let table = [
            (PortOutcome::Unchanged, true, None),
            (
                PortOutcome::Added,
                true,
                Some((
                    "DriftRepaired",
                    "GRE port tg-n2 was deleted outside topo; recreated [drift: GrePortDeleted]",
                )),
            ),
            (PortOutcome::Added, false, Some(("TunnelCreated", ""))),
            (
                PortOutcome::Updated,
                true,
                Some((
                    "DriftRepaired",
                    "GRE port tg-n2 was changed outside topo; restored [drift: GrePortChanged]",
                )),
            ),
            (PortOutcome::Updated, false, Some(("TunnelConfigured", ""))),
        ];
        for (outcome, steady, want) in table {
            let got = event(&t, &outcome, steady);
            assert_eq!(got.as_ref().map(|(r, _)| *r), want.map(|(r, _)| r));
            if let Some((_, m)) = want
                && !m.is_empty()
            {
                assert_eq!(got.map(|(_, msg)| msg).as_deref(), Some(m));
            }
        }
    }
}
