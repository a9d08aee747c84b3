//! What a reconcile can fail with, named for what failed, and the CamelCase reason each
//! shows in status. Backend errors are mapped into these in one place (`executor.rs`).

use std::time::Duration;

use crate::backend::{
    ContainerError, HostPortsError, InterfaceError, Mac, NatError, OvsError, ProbeError,
};
use crate::error_chain::error_chain;
use crate::report::ReportError;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("failed to pull image {image} for container {container}: {source}")]
    ImagePull {
        container: String,
        image: String,
        #[source]
        source: Box<ContainerError>,
    },
    /// The image is being pulled (off the worker); the key is queued when the pull ends.
    #[error("pulling image {image} for container {container}: {progress}")]
    ImagePulling {
        container: String,
        image: String,
        progress: String,
    },
    /// The last pull failed with `error` (the registry's words, or a deadline); the next
    /// attempt is in `retry_in`.
    #[error(
        "back-off pulling image {image} for container {container}: {error} (failed {failures} time(s); next attempt in {} s)", retry_in.as_secs()
    )]
    ImagePullBackOff {
        container: String,
        image: String,
        error: String,
        failures: u32,
        retry_in: Duration,
    },
    #[error("failed to create container {container}: {source}")]
    ContainerCreate {
        container: String,
        #[source]
        source: Box<ContainerError>,
    },
    #[error("failed to start container {container}: {source}")]
    ContainerStart {
        container: String,
        #[source]
        source: Box<ContainerError>,
    },
    #[error("failed to remove container {container}: {source}")]
    ContainerRemove {
        container: String,
        #[source]
        source: Box<ContainerError>,
    },
    #[error("failed to inspect containers: {source}")]
    ContainerInspect {
        #[source]
        source: Box<ContainerError>,
    },
    #[error("container {container} exited (code {exit_code}); restarting in {wait:?}")]
    CrashLoop {
        container: String,
        exit_code: i64,
        wait: Duration,
    },
    #[error("container {container} is not running after it was started")]
    NotRunning { container: String },
    #[error("container {container} exited while it was being plumbed")]
    ContainerGone { container: String },
    #[error("failed to plumb {interface} of container {container}: {source}")]
    Plumbing {
        container: String,
        interface: String,
        #[source]
        source: Box<InterfaceError>,
    },
    #[error(
        "failed to probe for address {address} of container {container} on bridge {bridge}: {source}"
    )]
    AddressProbe {
        container: String,
        address: String,
        bridge: String,
        #[source]
        source: Box<ProbeError>,
    },
    /// Another host answers for the address: it stays off the interface until a probe
    /// hears nobody.
    #[error(
        "failed to claim address {address} for {interface} of container {container}: {mac} answers for it on bridge {bridge}, and topo did not assign that MAC; the address is configured once it is free"
    )]
    AddressConflict {
        container: String,
        interface: String,
        address: String,
        mac: Mac,
        bridge: String,
    },
    #[error("failed to read the node's interfaces: {source}")]
    InterfaceList {
        #[source]
        source: Box<InterfaceError>,
    },
    #[error("failed to remove interface {name}: {source}")]
    InterfaceRemove {
        name: String,
        #[source]
        source: Box<InterfaceError>,
    },
    #[error("failed to set gateway {gateway} on bridge {bridge}: {source}")]
    Gateway {
        bridge: String,
        gateway: String,
        #[source]
        source: Box<InterfaceError>,
    },
    #[error("failed to read the switch: {source}")]
    OvsObserve {
        #[source]
        source: Box<OvsError>,
    },
    #[error("failed to change the switch ({what}): {source}")]
    OvsApply {
        what: String,
        #[source]
        source: Box<OvsError>,
    },
    #[error("bridge {bridge} does not exist yet")]
    BridgeNotReady { bridge: String },
    #[error("bridge {bridge} exists and topo does not own it")]
    BridgeNotOwned { bridge: String },
    #[error("port {port} exists on bridge {bridge} and topo does not own it")]
    PortNotOwned { bridge: String, port: String },
    #[error("failed to program links of container {container}: {source}")]
    Links {
        container: String,
        #[source]
        source: Box<NatError>,
    },
    #[error("failed to program the node's NAT table: {source}")]
    NodeNat {
        #[source]
        source: Box<NatError>,
    },
    #[error("failed to read who holds the node's host ports: {source}")]
    HostPorts {
        #[source]
        source: Box<HostPortsError>,
    },
    #[error("failed to write reports: {source}")]
    Report {
        #[source]
        source: ReportError,
    },
    /// A teardown went on past its failures: each is here. Holds at least two (one failure
    /// is returned as itself).
    #[error("failed to remove everything ({} failures): {summary}", errors.len())]
    Teardown {
        summary: String,
        errors: Vec<ReconcileError>,
    },
}

impl ReconcileError {
    /// The CamelCase reason shown in status.
    pub fn reason(&self) -> &'static str {
        match self {
            ReconcileError::ImagePull { .. } => "ImagePullFailed",
            ReconcileError::ImagePulling { .. } => "ImagePulling",
            ReconcileError::ImagePullBackOff { .. } => "ImagePullBackOff",
            ReconcileError::ContainerCreate { source, .. }
                if matches!(**source, ContainerError::NameOwnedByOtherNode { .. }) =>
            {
                "NameHeldByOtherNode"
            }
            ReconcileError::ContainerCreate { .. } => "ContainerCreateFailed",
            ReconcileError::ContainerStart { .. } => "ContainerStartFailed",
            ReconcileError::ContainerRemove { .. } => "ContainerRemoveFailed",
            ReconcileError::ContainerInspect { .. } => "DockerUnavailable",
            ReconcileError::CrashLoop { .. } => "CrashLoopBackOff",
            ReconcileError::NotRunning { .. } | ReconcileError::ContainerGone { .. } => {
                "ContainerExited"
            }
            ReconcileError::Plumbing { .. } | ReconcileError::InterfaceList { .. } => {
                "PlumbingFailed"
            }
            ReconcileError::AddressProbe { .. } => "AddressProbeFailed",
            ReconcileError::AddressConflict { .. } => "AddressConflict",
            ReconcileError::InterfaceRemove { .. } => "CleanupFailed",
            ReconcileError::Gateway { .. } => "GatewayFailed",
            ReconcileError::OvsObserve { .. } | ReconcileError::OvsApply { .. } => "SwitchFailed",
            ReconcileError::BridgeNotReady { .. } => "WaitingForBridge",
            ReconcileError::BridgeNotOwned { .. } | ReconcileError::PortNotOwned { .. } => {
                "NameConflict"
            }
            ReconcileError::Links { .. } => "LinkProgrammingFailed",
            ReconcileError::NodeNat { .. } | ReconcileError::HostPorts { .. } => "NatFailed",
            ReconcileError::Report { .. } => "ReportFailed",
            ReconcileError::Teardown { .. } => "CleanupFailed",
        }
    }

    /// The outcome of a teardown that went on past its failures: Ok when there were none,
    /// the failure itself when there was one, every failure when there were several.
    pub fn teardown(mut errors: Vec<ReconcileError>) -> Result<(), ReconcileError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(ReconcileError::Teardown {
                summary: errors
                    .iter()
                    .map(|e| error_chain(e))
                    .collect::<Vec<_>>()
                    .join("; "),
                errors,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_teardown_keeps_every_failure() {
        assert!(ReconcileError::teardown(vec![]).is_ok());
        let one = ReconcileError::teardown(vec![ReconcileError::NotRunning {
            container: "a".into(),
        }]);
        assert!(matches!(one, Err(ReconcileError::NotRunning { .. })));
        let two = ReconcileError::teardown(vec![
            ReconcileError::NotRunning {
                container: "a".into(),
            },
            ReconcileError::InterfaceRemove {
                name: "tv-a".into(),
                source: Box::new(InterfaceError::NotOwned {
                    name: "tv-a".into(),
                }),
            },
        ])
        .unwrap_err();
        assert_eq!(two.reason(), "CleanupFailed");
        let text = two.to_string();
        assert!(text.contains("2 failures"), "{text}");
        assert!(text.contains("container a is not running"), "{text}");
        assert!(text.contains("failed to remove interface tv-a"), "{text}");
    }
}
