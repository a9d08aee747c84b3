//! The one way reconciles reach the host: observations and [`Change`]s go through the
//! [`Executor`], which calls the backends and maps each backend error to the
//! [`ReconcileError`] that names what failed — once, here, for every reconciler.
//!
//! Plans are lists of changes. [`Executor::apply`] runs them in order and stops at the first
//! failure (a later change may need an earlier one: a port needs its bridge).
//! [`Executor::teardown`] runs every change and returns every failure, as netavark's firewall
//! drivers do: removing one thing must not be held up by another that cannot go yet.

use ipnet::Ipv4Net;
use topo_schema::kinds::Protocol;
use topo_schema::slice::{AttachmentEntry, ContainerEntry};

use super::Backends;
use super::error::ReconcileError;
use crate::backend::{
    Claim, ContainerError, ContainerNs, HostInterface, HostPortsView, InterfaceError, NatError,
    NatRules, NetNs, ObservedAttachment, ObservedContainer, ObservedGateway, ObservedNat,
    OvsChange, OvsState,
};

/// Whose nftables table: the node's, or the one in a container's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatScope {
    Node,
    Container { name: String, ns: ContainerNs },
}

impl NatScope {
    fn ns(&self) -> NetNs {
        match self {
            NatScope::Node => NetNs::Node,
            NatScope::Container { ns, .. } => NetNs::Container(ns.clone()),
        }
    }
}

/// One change to the host, as a plan lists it.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// One OVSDB transaction; `what` names its object in errors ("bridge tb-ov").
    Switch {
        what: String,
        changes: Vec<OvsChange>,
    },
    /// One OVSDB transaction, then a wait until ovs-vswitchd has applied it (a port that
    /// leaves before it comes back must have left the datapath).
    SwitchSettled {
        what: String,
        changes: Vec<OvsChange>,
    },
    /// ovs-vswitchd drops its datapath flows ([`crate::backend::Ovs::purge_datapath_flows`]).
    PurgeDatapathFlows,
    /// Gateway address, MTU and offload on a bridge's internal interface.
    Gateway {
        bridge: String,
        gateway: Ipv4Net,
        mtu: u32,
    },
    /// A container's veth pair as its attachment wants it; with `withhold_address`, without
    /// the address (another host answers for it).
    Attachment {
        container: String,
        ns: ContainerNs,
        attachment: AttachmentEntry,
        withhold_address: bool,
    },
    RemoveVeth {
        name: String,
    },
    RemoveContainer {
        container: String,
        id: String,
    },
    Nat {
        scope: NatScope,
        rules: NatRules,
    },
    StartContainer {
        container: String,
        id: String,
    },
}

pub struct Executor<'a> {
    backends: &'a Backends,
}

impl<'a> Executor<'a> {
    pub fn new(backends: &'a Backends) -> Self {
        Executor { backends }
    }

    /// Runs `changes` in order; the first failure ends the run.
    pub async fn apply(&self, changes: Vec<Change>) -> Result<(), ReconcileError> {
        for c in changes {
            self.run(c).await?;
        }
        Ok(())
    }

    /// Runs every change, whatever fails; returns every failure.
    pub async fn teardown(&self, changes: Vec<Change>) -> Vec<ReconcileError> {
        let mut errors = Vec::new();
        for c in changes {
            if let Err(e) = self.run(c).await {
                errors.push(e);
            }
        }
        errors
    }

    /// One change, with its backend's error mapped.
    pub async fn run(&self, change: Change) -> Result<(), ReconcileError> {
        let b = self.backends;
        match change {
            Change::Switch { what, changes } => {
                if changes.is_empty() {
                    return Ok(());
                }
                b.ovs
                    .apply(&changes)
                    .await
                    .map_err(|source| ovs_apply(what, source))
            }
            Change::SwitchSettled { what, changes } => {
                if changes.is_empty() {
                    return Ok(());
                }
                b.ovs
                    .apply_and_wait(&changes)
                    .await
                    .map_err(|source| ovs_apply(what, source))
            }
            Change::PurgeDatapathFlows => {
                b.ovs.purge_datapath_flows().await.map_err(|source| {
                    ovs_apply("ovs-vswitchd's datapath flows".to_string(), source)
                })
            }
            Change::Gateway {
                bridge,
                gateway,
                mtu,
            } => b
                .interfaces
                .ensure_gateway(&bridge, gateway, mtu)
                .await
                .map(drop)
                .map_err(|source| gateway_error(&bridge, gateway, source)),
            Change::Attachment {
                container,
                ns,
                attachment,
                withhold_address,
            } => if withhold_address {
                b.interfaces
                    .ensure_attachment_unaddressed(&ns, &attachment)
                    .await
            } else {
                b.interfaces.ensure_attachment(&ns, &attachment).await
            }
            .map(drop)
            .map_err(|e| plumbing_error(&container, &attachment, e)),
            Change::RemoveVeth { name } => {
                b.interfaces
                    .remove_host_veth(&name)
                    .await
                    .map_err(|source| ReconcileError::InterfaceRemove {
                        name,
                        source: Box::new(source),
                    })
            }
            Change::RemoveContainer { container, id } => {
                b.containers
                    .remove(&id)
                    .await
                    .map_err(|source| ReconcileError::ContainerRemove {
                        container,
                        source: Box::new(source),
                    })
            }
            Change::Nat { scope, rules } => b
                .nat
                .apply(&scope.ns(), &rules)
                .await
                .map_err(|e| nat_error(&scope, e)),
            Change::StartContainer { container, id } => {
                b.containers
                    .start(&id)
                    .await
                    .map_err(|source| ReconcileError::ContainerStart {
                        container,
                        source: Box::new(source),
                    })
            }
        }
    }

    /// Creates and starts the entry's container; its Docker id.
    pub async fn create_container(&self, entry: &ContainerEntry) -> Result<String, ReconcileError> {
        self.backends
            .containers
            .create_and_start(entry)
            .await
            .map_err(|source| match source {
                ContainerError::ImagePullFailed { .. } => ReconcileError::ImagePull {
                    container: entry.name.clone(),
                    image: entry.image.clone(),
                    source: Box::new(source),
                },
                source => ReconcileError::ContainerCreate {
                    container: entry.name.clone(),
                    source: Box::new(source),
                },
            })
    }

    // ------------------------------------------------------------------ observations

    pub async fn switch(&self) -> Result<OvsState, ReconcileError> {
        self.backends
            .ovs
            .observe()
            .await
            .map_err(|source| ReconcileError::OvsObserve {
                source: Box::new(source),
            })
    }

    /// The switch as one container's plumbing needs it ([`crate::backend::Ovs::observe_container`]).
    pub async fn switch_for(
        &self,
        object: &str,
        ports: &[String],
    ) -> Result<OvsState, ReconcileError> {
        self.backends
            .ovs
            .observe_container(object, ports)
            .await
            .map_err(|source| ReconcileError::OvsObserve {
                source: Box::new(source),
            })
    }

    pub async fn container(
        &self,
        docker_name: &str,
    ) -> Result<Option<ObservedContainer>, ReconcileError> {
        self.backends
            .containers
            .get(docker_name)
            .await
            .map_err(inspect_error)
    }

    /// Whether the engine has `image` (for container `container`'s errors).
    pub async fn image_present(
        &self,
        container: &str,
        image: &str,
    ) -> Result<bool, ReconcileError> {
        self.backends
            .containers
            .image_present(image)
            .await
            .map_err(|source| ReconcileError::ImagePull {
                container: container.to_string(),
                image: image.to_string(),
                source: Box::new(source),
            })
    }

    pub async fn containers(&self) -> Result<Vec<ObservedContainer>, ReconcileError> {
        self.backends.containers.list().await.map_err(inspect_error)
    }

    pub async fn attachment(
        &self,
        container: &str,
        ns: &ContainerNs,
        attachment: &AttachmentEntry,
    ) -> Result<ObservedAttachment, ReconcileError> {
        self.backends
            .interfaces
            .observe_attachment(ns, attachment)
            .await
            .map_err(|e| plumbing_error(container, attachment, e))
    }

    /// Who answers for `attachment`'s address on its bridge.
    pub async fn probe(
        &self,
        container: &str,
        attachment: &AttachmentEntry,
    ) -> Result<Vec<Claim>, ReconcileError> {
        let address = attachment.address.addr();
        self.backends
            .prober
            .probe(&attachment.bridge, address)
            .await
            .map_err(|source| ReconcileError::AddressProbe {
                container: container.to_string(),
                address: address.to_string(),
                bridge: attachment.bridge.clone(),
                source: Box::new(source),
            })
    }

    pub async fn gateway(
        &self,
        bridge: &str,
        gateway: Ipv4Net,
    ) -> Result<ObservedGateway, ReconcileError> {
        self.backends
            .interfaces
            .observe_gateway(bridge)
            .await
            .map_err(|source| gateway_error(bridge, gateway, source))
    }

    pub async fn nat(&self, scope: &NatScope) -> Result<ObservedNat, ReconcileError> {
        self.backends
            .nat
            .observe(&scope.ns())
            .await
            .map_err(|e| nat_error(scope, e))
    }

    /// Who holds `ports` on the node, and its addresses.
    pub async fn host_ports(
        &self,
        ports: &[(u16, Protocol)],
    ) -> Result<HostPortsView, ReconcileError> {
        self.backends
            .host_ports
            .observe(ports)
            .await
            .map_err(|source| ReconcileError::HostPorts {
                source: Box::new(source),
            })
    }

    pub async fn owned_interfaces(&self) -> Result<Vec<HostInterface>, ReconcileError> {
        self.backends
            .interfaces
            .list_owned()
            .await
            .map_err(|source| ReconcileError::InterfaceList {
                source: Box::new(source),
            })
    }
}

fn ovs_apply(what: String, source: crate::backend::OvsError) -> ReconcileError {
    ReconcileError::OvsApply {
        what,
        source: Box::new(source),
    }
}

fn inspect_error(source: ContainerError) -> ReconcileError {
    ReconcileError::ContainerInspect {
        source: Box::new(source),
    }
}

fn gateway_error(bridge: &str, gateway: Ipv4Net, source: InterfaceError) -> ReconcileError {
    ReconcileError::Gateway {
        bridge: bridge.to_string(),
        gateway: gateway.to_string(),
        source: Box::new(source),
    }
}

fn plumbing_error(container: &str, att: &AttachmentEntry, e: InterfaceError) -> ReconcileError {
    if let InterfaceError::Namespace { source, .. } = &e
        && source.is_gone()
    {
        // The container died between inspect and plumbing (its pid may even belong to
        // another process now): its die event follows.
        return ReconcileError::ContainerGone {
            container: container.to_string(),
        };
    }
    ReconcileError::Plumbing {
        container: container.to_string(),
        interface: att.interface.clone(),
        source: Box::new(e),
    }
}

fn nat_error(scope: &NatScope, e: NatError) -> ReconcileError {
    match scope {
        NatScope::Node => ReconcileError::NodeNat {
            source: Box::new(e),
        },
        // The container's namespace went away under us: its die event follows.
        NatScope::Container { name, .. } if matches!(&e, NatError::Namespace { source, .. } if source.is_gone()) => {
            ReconcileError::ContainerGone {
                container: name.clone(),
            }
        }
        NatScope::Container { name, .. } => ReconcileError::Links {
            container: name.clone(),
            source: Box::new(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::NsError;
    use crate::backend::fake::{
        FakeContainers, FakeHostPorts, FakeInterfaces, FakeNat, FakeOvs, FakeProber,
    };
    use std::sync::Arc;

    fn backends() -> (Backends, Arc<FakeContainers>, Arc<FakeInterfaces>) {
        let docker = Arc::new(FakeContainers::new("node1"));
        let ifs = Arc::new(FakeInterfaces::new());
        let b = Backends {
            containers: docker.clone(),
            interfaces: ifs.clone(),
            ovs: Arc::new(FakeOvs::new("node1")),
            nat: Arc::new(FakeNat::new()),
            host_ports: Arc::new(FakeHostPorts::new()),
            prober: Arc::new(FakeProber::new()),
        };
        (b, docker, ifs)
    }

    #[tokio::test]
    async fn apply_stops_at_the_first_failure_and_teardown_goes_on() {
        let (b, docker, ifs) = backends();
        let exec = Executor::new(&b);
        let changes = || {
            vec![
                Change::RemoveContainer {
                    container: "a".into(),
                    id: "id-a".into(),
                },
                Change::RemoveVeth {
                    name: "tv-a".into(),
                },
            ]
        };
        docker.fail_next("remove", ContainerError::NotOwned { id: "id-a".into() });
        let err = exec.apply(changes()).await.unwrap_err();
        assert!(
            matches!(err, ReconcileError::ContainerRemove { ref container, .. } if container == "a")
        );
        assert!(
            !ifs.calls().iter().any(|c| c.contains("remove_host_veth")),
            "apply stopped: {:?}",
            ifs.calls()
        );

        docker.fail_next("remove", ContainerError::NotOwned { id: "id-a".into() });
        ifs.fail_next(
            "remove_host_veth",
            InterfaceError::NotOwned {
                name: "tv-a".into(),
            },
        );
        let errors = exec.teardown(changes()).await;
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0].reason(), "ContainerRemoveFailed");
        assert_eq!(errors[1].reason(), "CleanupFailed");
    }

    #[test]
    fn a_namespace_that_went_away_is_a_gone_container() {
        let att = crate::backend::fake::attachment("a", "ov", "10.2.1.5/16");
        let exited = || NsError::Exited { pid: 7 };
        let reused = || NsError::NotTheContainer {
            pid: 7,
            container: "c1".into(),
        };
        for source in [exited(), reused()] {
            let gone = plumbing_error("a", &att, InterfaceError::Namespace { pid: 7, source });
            assert!(matches!(gone, ReconcileError::ContainerGone { .. }));
        }
        // A namespace the agent could not join is the agent's failure, not a gone container.
        let refused = plumbing_error(
            "a",
            &att,
            InterfaceError::Namespace {
                pid: 7,
                source: NsError::Join {
                    pid: 7,
                    source: std::io::Error::from_raw_os_error(libc::EPERM),
                },
            },
        );
        assert!(matches!(refused, ReconcileError::Plumbing { .. }));
        let scope = NatScope::Container {
            name: "a".into(),
            ns: ContainerNs::new(7, "c1"),
        };
        let nat = nat_error(
            &scope,
            NatError::Namespace {
                pid: 7,
                source: reused(),
            },
        );
        assert!(matches!(nat, ReconcileError::ContainerGone { .. }));
        assert!(matches!(
            nat_error(
                &NatScope::Node,
                NatError::Namespace {
                    pid: 7,
                    source: exited(),
                }
            ),
            ReconcileError::NodeNat { .. }
        ));
    }
}
