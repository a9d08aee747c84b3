//! Garbage collection (the [`Key::Gc`](crate::key::Key::Gc) key): what topo owns on the host
//! (containers, switch bridges and ports, host veths) and no slice entry wants goes, and so
//! do reports no entry produces. It catches what removals could not see: entries removed
//! while the agent was down, or whose removal failed.
//!
//! A teardown: every removal is tried whatever the others do, and every failure is returned.
//! Reports are trimmed only when the host part went through whole — a report's absence tells
//! `delete --wait` that the host holds nothing of its object.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use topo_schema::kinds::{Kind, ObjectRef};
use topo_schema::slice::{SliceEntry, SliceKey, owner};

use super::Action;
use super::container::lifecycle::short_id;
use super::context::Context;
use super::error::ReconcileError;
use super::executor::Change;
use super::reports;
use super::tunnel::gre_kind;
use crate::backend::{
    DesiredBridge, DesiredPort, HostInterface, ObservedContainer, OvsChange, OvsState, PortKind,
    plan_ovs,
};
use crate::watch::SliceValue;

/// The switch as the slice wants it (every bridge with every port on it).
pub fn desired_switch(entries: &[SliceEntry]) -> Vec<DesiredBridge> {
    let mut bridges: Vec<DesiredBridge> = entries
        .iter()
        .filter_map(|e| match e {
            SliceEntry::Bridge(b) => Some(DesiredBridge {
                name: b.bridge.clone(),
                datapath: b.datapath,
                rstp: b.rstp,
                mtu: b.mtu,
                object: ObjectRef::new(Kind::Network, &b.network).to_string(),
                ports: vec![],
            }),
            _ => None,
        })
        .collect();
    for e in entries {
        let ports: Vec<(String, DesiredPort)> = match e {
            SliceEntry::Tunnel(t) => vec![(
                t.bridge.clone(),
                DesiredPort {
                    name: t.port.clone(),
                    kind: gre_kind(t),
                    protected: t.split_horizon,
                    object: ObjectRef::new(Kind::Tunnel, &t.tunnel).to_string(),
                },
            )],
            SliceEntry::Container(c) => c
                .attachments
                .iter()
                .map(|a| {
                    (
                        a.bridge.clone(),
                        DesiredPort {
                            name: a.host_veth.clone(),
                            kind: PortKind::System,
                            protected: false,
                            object: ObjectRef::new(Kind::Container, &c.name).to_string(),
                        },
                    )
                })
                .collect(),
            _ => vec![],
        };
        for (bridge, port) in ports {
            if let Some(b) = bridges.iter_mut().find(|b| b.name == bridge) {
                b.ports.push(port);
            }
        }
    }
    bridges
}

/// What entries this agent cannot read may own: it stays. A bridge is known by the network
/// its external_ids name, not by its name: the controller allocates bridge names, and an
/// unreadable entry's name is unknown.
#[derive(Debug, Default)]
struct Protected {
    containers: HashSet<String>,
    /// Bridges by owner (`network/<name>`, as external_ids hold it).
    networks: HashSet<String>,
    ports: HashSet<String>,
    reports: BTreeSet<ObjectRef>,
}

impl Protected {
    fn of(slice: &BTreeMap<SliceKey, SliceValue>) -> Self {
        let mut p = Protected::default();
        for key in slice
            .iter()
            .filter(|(_, v)| v.entry().is_none())
            .map(|(k, _)| k)
        {
            p.reports.extend(reports::protected(key));
            match key {
                SliceKey::Container(name) => {
                    p.containers.insert(name.clone());
                }
                SliceKey::Bridge(net) => {
                    p.networks
                        .insert(ObjectRef::new(Kind::Network, net).to_string());
                }
                SliceKey::Tunnel(port) => {
                    p.ports.insert(port.clone());
                }
                SliceKey::Node => {}
            }
        }
        p
    }

    /// Whether `bridge` belongs to a network whose entry is unreadable.
    fn bridge(&self, bridge: &str, switch: &OvsState) -> bool {
        switch
            .bridges
            .get(bridge)
            .and_then(|b| b.external_ids.get(owner::OBJECT))
            .is_some_and(|o| self.networks.contains(o))
    }

    /// Whether the switch change touches nothing protected (and never a bridge's own port).
    fn allows(&self, ch: &OvsChange, switch: &OvsState) -> bool {
        match ch {
            OvsChange::DeleteBridge { name } => !self.bridge(name, switch),
            OvsChange::DeletePort { bridge, name } => {
                let owner_object = switch
                    .bridges
                    .get(bridge)
                    .and_then(|b| b.ports.get(name))
                    .and_then(|p| p.external_ids.get(owner::OBJECT))
                    .cloned()
                    .unwrap_or_default();
                // A bridge's own internal port goes with the bridge, never alone.
                name != bridge
                    && !self.bridge(bridge, switch)
                    && !self.ports.contains(name)
                    && !self
                        .containers
                        .iter()
                        .any(|c| owner_object == ObjectRef::new(Kind::Container, c).to_string())
            }
            _ => false,
        }
    }
}

/// What garbage collection removes.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub containers: Vec<ObservedContainer>,
    pub switch: Vec<OvsChange>,
    pub veths: Vec<String>,
    /// The reports to keep.
    pub reports: BTreeSet<ObjectRef>,
}

pub fn plan(
    slice: &BTreeMap<SliceKey, SliceValue>,
    containers: Vec<ObservedContainer>,
    switch: &OvsState,
    interfaces: &[HostInterface],
) -> Plan {
    let protected = Protected::of(slice);
    let entries: Vec<SliceEntry> = slice.values().filter_map(|v| v.entry().cloned()).collect();
    let wanted: HashSet<&str> = entries
        .iter()
        .filter_map(|e| match e {
            SliceEntry::Container(c) => Some(c.name.as_str()),
            _ => None,
        })
        .collect();
    let wanted_veths: HashSet<&str> = entries
        .iter()
        .filter_map(|e| match e {
            SliceEntry::Container(c) => Some(c.attachments.iter().map(|a| a.host_veth.as_str())),
            _ => None,
        })
        .flatten()
        .collect();
    let containers = containers
        .into_iter()
        .filter(|c| !wanted.contains(c.name.as_str()) && !protected.containers.contains(&c.name))
        .collect();
    let switch_changes = plan_ovs(&desired_switch(&entries), switch)
        .into_iter()
        .filter(|ch| protected.allows(ch, switch))
        .collect();
    // Host veths only when every container entry is readable (an unreadable one's veth
    // names are unknown).
    let veths = if protected.containers.is_empty() {
        interfaces
            .iter()
            .filter(|i| i.name.starts_with("tv-") && !wanted_veths.contains(i.name.as_str()))
            .map(|i| i.name.clone())
            .collect()
    } else {
        vec![]
    };
    let mut reports = reports::expected(&entries);
    reports.extend(protected.reports);
    Plan {
        containers,
        switch: switch_changes,
        veths,
        reports,
    }
}

pub async fn collect(ctx: &Context) -> Result<Action, ReconcileError> {
    // Observe first, read the slice after: whatever a concurrent reconcile creates for a new
    // entry either is not observed yet or its entry is in the snapshot.
    let exec = ctx.executor();
    let containers = exec.containers().await?;
    let switch = exec.switch().await?;
    let interfaces = exec.owned_interfaces().await?;
    let plan = plan(&ctx.store.snapshot(), containers, &switch, &interfaces);

    let mut errors = Vec::new();
    for c in plan.containers {
        match ctx.remove_container(&c.name, &c.id).await {
            Ok(()) => {
                let message = format!(
                    "container {} ({}) is not in {}'s slice; removed",
                    c.docker_name,
                    short_id(&c.id),
                    ctx.node
                );
                ctx.recorder
                    .normal(ObjectRef::new(Kind::Container, &c.name), "Removed", message)
                    .await;
            }
            Err(e) => errors.push(e),
        }
    }
    if !plan.switch.is_empty() {
        tracing::info!(changes = ?plan.switch, "removing switch objects no slice entry wants");
    }
    let mut changes = vec![Change::Switch {
        what: "garbage collection".into(),
        changes: plan.switch,
    }];
    for veth in plan.veths {
        tracing::info!(%veth, "removing a host veth no slice entry wants");
        changes.push(Change::RemoveVeth { name: veth });
    }
    errors.extend(exec.teardown(changes).await);
    ReconcileError::teardown(errors)?;
    ctx.reporter
        .retain(&plan.reports)
        .await
        .map_err(|source| ReconcileError::Report { source })?;
    Ok(Action::AwaitChange)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::fixtures::{add_bridge, bridge, container, switch};

    fn docker(name: &str) -> ObservedContainer {
        ObservedContainer {
            id: format!("id-{name}"),
            docker_name: format!("topo-{name}"),
            name: name.into(),
            uid: "u".into(),
            config_hash: String::new(),
            image: "i".into(),
            running: true,
            pid: Some(1),
            restart_count: 0,
            started_at: None,
            finished_at: None,
            exit_code: None,
            status: "running".into(),
        }
    }

    fn veth(name: &str) -> HostInterface {
        HostInterface {
            name: topo_schema::names::veth_host_name(name, "eth0"),
            index: 1,
            kind: "veth".into(),
        }
    }

    async fn switch_with_ports(names: &[&str]) -> OvsState {
        let mut changes = vec![add_bridge("ov")];
        changes.extend(names.iter().map(|n| OvsChange::AddPort {
            bridge: "tb-ov".into(),
            name: topo_schema::names::veth_host_name(n, "eth0"),
            kind: PortKind::System,
            protected: false,
            object: format!("container/{n}"),
        }));
        switch(&changes).await
    }

    fn slice(entries: Vec<SliceEntry>) -> BTreeMap<SliceKey, SliceValue> {
        entries
            .into_iter()
            .map(|e| (e.key(), SliceValue::Entry(e)))
            .collect()
    }

    #[tokio::test]
    async fn leftovers_go_and_what_the_slice_wants_stays() {
        let bridge = bridge("ov");
        let s = slice(vec![
            SliceEntry::Bridge(bridge),
            SliceEntry::Container(container("web", &["ov"])),
        ]);
        let switch = switch_with_ports(&["web", "old"]).await;
        let p = plan(
            &s,
            vec![docker("web"), docker("old")],
            &switch,
            &[veth("web"), veth("old")],
        );
        assert_eq!(
            p.containers
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            vec!["old"]
        );
        assert_eq!(
            p.switch,
            vec![OvsChange::DeletePort {
                bridge: "tb-ov".into(),
                name: topo_schema::names::veth_host_name("old", "eth0")
            }],
            "the bridge, its own port, web's port and the foreign bridge stay"
        );
        assert_eq!(
            p.veths,
            vec![topo_schema::names::veth_host_name("old", "eth0")]
        );
        assert_eq!(
            p.reports,
            BTreeSet::from([ObjectRef::new(Kind::Container, "web")])
        );
    }

    #[tokio::test]
    async fn what_an_unreadable_entry_may_own_stays() {
        let bridge = bridge("ov");
        let mut s = slice(vec![SliceEntry::Bridge(bridge)]);
        s.insert(
            SliceKey::Container("future".into()),
            SliceValue::Unsupported { version: 2 },
        );
        let switch = switch_with_ports(&["future"]).await;
        let p = plan(&s, vec![docker("future")], &switch, &[veth("future")]);
        assert!(p.containers.is_empty());
        assert!(p.switch.is_empty(), "{:?}", p.switch);
        assert!(p.veths.is_empty(), "its veth names are unknown");
        assert!(
            p.reports
                .contains(&ObjectRef::new(Kind::Container, "future"))
        );
        // An unreadable bridge entry keeps the bridge.
        let mut s = BTreeMap::new();
        s.insert(
            SliceKey::Bridge("ov".into()),
            SliceValue::Invalid { error: "x".into() },
        );
        assert!(plan(&s, vec![], &switch, &[]).switch.is_empty());
        // Without it the bridge goes (with its ports).
        assert_eq!(
            plan(&BTreeMap::new(), vec![], &switch, &[]).switch,
            vec![OvsChange::DeleteBridge {
                name: "tb-ov".into()
            }]
        );
        // A bridge is known by its network, whatever name the controller gave it.
        let allocated = super::super::fixtures::switch(&[OvsChange::AddBridge {
            name: "tb-ov1a2b3c".into(),
            datapath: topo_schema::Datapath::Netdev,
            rstp: false,
            mtu: 1458,
            object: "network/ov".into(),
        }])
        .await;
        assert!(plan(&s, vec![], &allocated, &[]).switch.is_empty());
        assert_eq!(
            plan(&BTreeMap::new(), vec![], &allocated, &[]).switch.len(),
            1
        );
    }
}
