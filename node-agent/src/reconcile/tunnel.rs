//! One GRE port on its network's bridge (`tunnels/<port>`): observe the switch, plan the
//! port (add, restore, or move it from where an earlier entry had it), apply it in one
//! transaction, report the tunnel.

use topo_schema::kinds::{Kind, ObjectRef};
use topo_schema::slice::TunnelEntry;

use super::Action;
use super::bridge;
use super::context::Context;
use super::drift::{Drift, with_kinds};
use super::error::ReconcileError;
use super::executor::Change;
use super::reports;
use crate::backend::{OvsChange, OvsState, PortKind};
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
    Ok(Plan { changes, outcome })
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
    let plan = plan(t, previous, &exec.switch().await?)?;
    exec.run(Change::Switch {
        what: format!("GRE port {}", t.port),
        changes: plan.changes,
    })
    .await?;
    ctx.reporter
        .sync(&Key::Tunnel(t.port.clone()), vec![reports::tunnel_ready(t)])
        .await
        .map_err(|source| ReconcileError::Report { source })?;
    let object = ObjectRef::new(Kind::Tunnel, &t.tunnel);
    match event(t, &plan.outcome, steady) {
        Some((reason @ "DriftRepaired", message)) => {
            ctx.recorder.warning(object, reason, message).await
        }
        Some((reason, message)) => ctx.recorder.normal(object, reason, message).await,
        None => {}
    }
    Ok(Action::AwaitChange)
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
        // (previous, switch) → (changes, outcome)
        let table: Vec<(Option<&TunnelEntry>, &OvsState, Vec<OvsChange>, PortOutcome)> = vec![
            (None, &bridge_only, vec![add_port(&t)], PortOutcome::Added),
            (Some(&t), &with_port, vec![], PortOutcome::Unchanged),
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
            ),
        ];
        for (previous, state, changes, outcome) in table {
            assert_eq!(
                plan(&t, previous, state).unwrap(),
                Plan { changes, outcome },
                "previous {previous:?}"
            );
        }
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
