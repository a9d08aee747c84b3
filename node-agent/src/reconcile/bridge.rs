//! A network's bridge on this node (`bridges/<network>`): the OVS bridge with its internal
//! port, and the gateway address and MTU on that port.
//!
//! Two rounds of observe → plan → apply, because the second needs the first done: the
//! switch (the bridge must exist before ovs-vswitchd makes its internal interface), then the
//! gateway on that interface.

use topo_schema::kinds::{Kind, ObjectRef};
use topo_schema::slice::{BridgeEntry, SliceEntry};

use super::Action;
use super::context::Context;
use super::drift::{Drift, describe, with_kinds};
use super::error::ReconcileError;
use super::executor::Change;
use crate::backend::{ObservedGateway, OvsChange, OvsState};
use crate::key::Key;

/// What the switch needs for the bridge.
#[derive(Debug, Default, PartialEq)]
pub struct SwitchPlan {
    pub changes: Vec<OvsChange>,
    /// The bridge did not exist: everything on it is new too.
    pub created: bool,
    pub drift: Vec<Drift>,
}

pub fn plan_switch(b: &BridgeEntry, state: &OvsState) -> Result<SwitchPlan, ReconcileError> {
    let object = ObjectRef::new(Kind::Network, &b.network).to_string();
    let Some(o) = state.bridges.get(&b.bridge) else {
        return Ok(SwitchPlan {
            changes: vec![OvsChange::AddBridge {
                name: b.bridge.clone(),
                datapath: b.datapath,
                rstp: b.rstp,
                mtu: b.mtu,
                object,
            }],
            created: true,
            drift: vec![Drift::BridgeDeleted {
                bridge: b.bridge.clone(),
            }],
        });
    };
    if !o.owned {
        return Err(ReconcileError::BridgeNotOwned {
            bridge: b.bridge.clone(),
        });
    }
    let internal_mtu = o
        .ports
        .get(&b.bridge)
        .and_then(|p| p.interfaces.iter().find(|i| i.name == b.bridge))
        .and_then(|i| i.mtu_request);
    if o.datapath_type == b.datapath.ovs_type() && o.rstp == b.rstp && internal_mtu == Some(b.mtu) {
        return Ok(SwitchPlan::default());
    }
    Ok(SwitchPlan {
        changes: vec![OvsChange::UpdateBridge {
            name: b.bridge.clone(),
            datapath: b.datapath,
            rstp: b.rstp,
            mtu: b.mtu,
        }],
        created: false,
        drift: vec![Drift::BridgeSettings {
            bridge: b.bridge.clone(),
            datapath: o.datapath_type.clone(),
            rstp: o.rstp,
            mtu: internal_mtu,
        }],
    })
}

/// The gateway change, if the internal interface differs, and what differed.
pub fn plan_gateway(b: &BridgeEntry, observed: &ObservedGateway) -> (Option<Change>, Vec<Drift>) {
    let diffs = observed.differences(b.gateway, b.mtu);
    if diffs.is_empty() {
        return (None, vec![]);
    }
    let change = Change::Gateway {
        bridge: b.bridge.clone(),
        gateway: b.gateway,
        mtu: b.mtu,
    };
    let drift = diffs
        .into_iter()
        .map(|drift| Drift::Gateway {
            bridge: b.bridge.clone(),
            drift,
        })
        .collect();
    (Some(change), drift)
}

/// The keys whose ports go on `bridge`: handed on at once when the bridge is created
/// instead of left to their backoff.
fn keys_on(bridge: &str, entries: &[SliceEntry]) -> Vec<Key> {
    entries
        .iter()
        .filter(|e| match e {
            SliceEntry::Tunnel(t) => t.bridge == bridge,
            SliceEntry::Container(c) => c.attachments.iter().any(|a| a.bridge == bridge),
            _ => false,
        })
        .map(|e| Key::from(e.key()))
        .collect()
}

pub async fn reconcile(
    ctx: &Context,
    b: &BridgeEntry,
    previous: Option<&BridgeEntry>,
) -> Result<Action, ReconcileError> {
    let steady = previous == Some(b);
    let exec = ctx.executor();
    let switch = plan_switch(b, &exec.switch().await?)?;
    exec.apply(vec![Change::Switch {
        what: format!("bridge {}", b.bridge),
        changes: switch.changes,
    }])
    .await?;
    let (gateway, gateway_drift) = plan_gateway(b, &exec.gateway(&b.bridge, b.gateway).await?);
    if let Some(change) = gateway {
        exec.run(change).await?;
    }
    let mut drift = switch.drift;
    if !switch.created {
        drift.extend(gateway_drift);
    }
    if switch.created {
        ctx.queue.add_all(keys_on(&b.bridge, &ctx.store.entries()));
    }
    let object = ObjectRef::new(Kind::Network, &b.network);
    if steady && !drift.is_empty() {
        ctx.recorder
            .warning(
                object,
                "DriftRepaired",
                with_kinds(describe(&drift), &drift),
            )
            .await;
    } else if switch.created {
        ctx.recorder
            .normal(object, "BridgeCreated", created_message(b, &ctx.node))
            .await;
    }
    Ok(Action::AwaitChange)
}

fn created_message(b: &BridgeEntry, node: &str) -> String {
    format!(
        "bridge {} ({} datapath) created on {node} with gateway {}",
        b.bridge,
        b.datapath.ovs_type(),
        b.gateway
    )
}

/// The entry left the slice: the bridge goes (with its ports) if it is ours.
pub fn plan_removal(b: &BridgeEntry, state: &OvsState) -> Option<Change> {
    state
        .bridges
        .get(&b.bridge)
        .is_some_and(|o| o.owned)
        .then(|| Change::Switch {
            what: format!("bridge {}", b.bridge),
            changes: vec![OvsChange::DeleteBridge {
                name: b.bridge.clone(),
            }],
        })
}

pub async fn remove(ctx: &Context, b: &BridgeEntry) -> Result<(), ReconcileError> {
    let exec = ctx.executor();
    if let Some(change) = plan_removal(b, &exec.switch().await?) {
        exec.run(change).await?;
        ctx.recorder
            .normal(
                ObjectRef::new(Kind::Network, &b.network),
                "BridgeRemoved",
                format!("bridge {} removed from {}", b.bridge, ctx.node),
            )
            .await;
    }
    ctx.queue.add(Key::Nat);
    Ok(())
}

/// The bridge must exist and be ours before ports go on it.
pub fn check_ready(state: &OvsState, bridge: &str) -> Result<(), ReconcileError> {
    match state.bridges.get(bridge) {
        None => Err(ReconcileError::BridgeNotReady {
            bridge: bridge.to_string(),
        }),
        Some(b) if !b.owned => Err(ReconcileError::BridgeNotOwned {
            bridge: bridge.to_string(),
        }),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::GatewayDrift;
    use crate::reconcile::fixtures::{add_bridge, bridge, container, switch};
    use topo_schema::kinds::Datapath;

    fn entry() -> BridgeEntry {
        bridge("ov")
    }

    #[tokio::test]
    async fn the_switch_plan_by_what_the_switch_holds() {
        let b = entry();
        let add = add_bridge("ov");
        let update = OvsChange::UpdateBridge {
            name: "tb-ov".into(),
            datapath: Datapath::Netdev,
            rstp: false,
            mtu: 1458,
        };
        let mut rstp = add.clone();
        if let OvsChange::AddBridge { rstp: r, .. } = &mut rstp {
            *r = true;
        }
        // (switch, expected changes, created, drift)
        let table: Vec<(OvsState, Vec<OvsChange>, bool, Vec<Drift>)> = vec![
            (
                OvsState::default(),
                vec![add.clone()],
                true,
                vec![Drift::BridgeDeleted {
                    bridge: "tb-ov".into(),
                }],
            ),
            (
                switch(std::slice::from_ref(&add)).await,
                vec![],
                false,
                vec![],
            ),
            (
                switch(&[rstp]).await,
                vec![update],
                false,
                vec![Drift::BridgeSettings {
                    bridge: "tb-ov".into(),
                    datapath: "netdev".into(),
                    rstp: true,
                    mtu: Some(1458),
                }],
            ),
        ];
        for (state, changes, created, drift) in table {
            let p = plan_switch(&b, &state).unwrap();
            assert_eq!(
                p,
                SwitchPlan {
                    changes,
                    created,
                    drift
                }
            );
        }
        let mut foreign = switch(&[]).await;
        let phy = foreign.bridges["br-phy"].clone();
        foreign.bridges.insert("tb-ov".into(), phy);
        assert!(matches!(
            plan_switch(&b, &foreign),
            Err(ReconcileError::BridgeNotOwned { .. })
        ));
        assert_eq!(plan_removal(&b, &foreign), None, "never someone else's");
        assert!(plan_removal(&b, &switch(&[add]).await).is_some());
        assert_eq!(plan_removal(&b, &OvsState::default()), None);
    }

    #[test]
    fn the_gateway_plan_restores_only_what_differs() {
        let b = entry();
        let good = ObservedGateway {
            exists: true,
            mtu: 1458,
            up: true,
            addresses: vec![b.gateway],
            tx_checksum: Some(false),
        };
        assert_eq!(plan_gateway(&b, &good), (None, vec![]));
        let down = ObservedGateway { up: false, ..good };
        let (change, drift) = plan_gateway(&b, &down);
        assert_eq!(
            change,
            Some(Change::Gateway {
                bridge: "tb-ov".into(),
                gateway: b.gateway,
                mtu: 1458
            })
        );
        assert_eq!(
            drift,
            vec![Drift::Gateway {
                bridge: "tb-ov".into(),
                drift: GatewayDrift::Down
            }]
        );
    }

    #[test]
    fn a_new_bridge_hands_on_the_keys_of_what_goes_on_it() {
        let entries = vec![
            SliceEntry::Bridge(entry()),
            SliceEntry::Container(container("web", &["ov"])),
            SliceEntry::Container(container("db", &["other"])),
        ];
        assert_eq!(
            keys_on("tb-ov", &entries),
            vec![Key::Container("web".into())]
        );
    }
}
