//! `topo-agent`: parses the command line, connects the four host backends (waiting for the
//! Docker engine and ovsdb-server if they are not up yet) and etcd, binds the agent's HTTPS
//! endpoint (`endpoint.rs`), and runs the agent (`agent.rs`) until SIGTERM or SIGINT.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use topo_agent::backend::{
    ArpProber, DockerContainers, NetlinkInterfaces, NftNat, NodeSockets, OvsdbSwitch,
};
use topo_agent::config::Cli;
use topo_agent::reconcile::Backends;

/// No etcd request of the agent waits longer (a stream: for its start); a member that hangs
/// then costs one failed request and the client moves to another.
const ETCD_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Calls `connect` until it succeeds — the Docker engine or ovsdb-server may start after the
/// agent, or be restarting — backing off (200 ms doubling to 5 s) between attempts; None when
/// `shutdown` comes first.
async fn connect_retrying<T, E, Fut>(
    what: &str,
    shutdown: &mut watch::Receiver<bool>,
    mut connect: impl FnMut() -> Fut,
) -> Option<T>
where
    E: std::error::Error,
    Fut: Future<Output = Result<T, E>>,
{
    use backoff::backoff::Backoff;
    let mut backoff =
        topo_watcher::jittered_backoff(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match connect().await {
            Ok(v) => return Some(v),
            Err(e) => {
                let delay = backoff.next_backoff().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %topo_agent::error_chain::error_chain(&e), ?delay, "failed to connect to {what}; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return None,
                }
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    let cfg = cli.agent_config();
    tracing::info!(node = %cfg.node, address = %cfg.address, datapath = cfg.datapath.ovs_type(),
        etcd = ?cli.etcd_endpoints, version = env!("CARGO_PKG_VERSION"), "topo-agent starting");

    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let mut term =
        signal(SignalKind::terminate()).context("failed to install the SIGTERM handler")?;
    let mut int =
        signal(SignalKind::interrupt()).context("failed to install the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        let _ = shutdown_tx.send(true);
    });

    let ovsdb = cli.ovsdb_path().map_err(anyhow::Error::msg)?;
    let docker = cli.docker.as_deref();
    let Some(containers) = connect_retrying("the Docker engine", &mut shutdown_rx, || {
        DockerContainers::connect(docker, &cfg.node)
    })
    .await
    else {
        return Ok(());
    };
    let interfaces = NetlinkInterfaces::new().context("failed to open netlink")?;
    let Some(ovs) = connect_retrying("ovsdb-server", &mut shutdown_rx, || {
        OvsdbSwitch::connect(ovsdb, &cfg.node)
    })
    .await
    else {
        return Ok(());
    };
    let nat = NftNat::new();
    let backends = Backends {
        containers: Arc::new(containers),
        interfaces: Arc::new(interfaces),
        ovs: Arc::new(ovs),
        nat: Arc::new(nat),
        host_ports: Arc::new(NodeSockets::new()),
        prober: Arc::new(ArpProber),
    };

    // The channel connects lazily: an agent may start before etcd and catches up.
    // TLS with the node's own identity: its etcd user may read only this node's slice.
    topo_pki::etcd::check_endpoints(&cli.etcd_endpoints)?;
    // With several endpoints the client stays on one member and fails over when it dies.
    let options = topo_watcher::failover::EndpointOptions {
        tls: Some(
            cli.etcd_tls()
                .tls_options()
                .context("failed to load the node's etcd identity")?,
        ),
        connect_timeout: Some(Duration::from_secs(3)),
        request_timeout: Some(ETCD_REQUEST_TIMEOUT),
        keep_alive: Some((Duration::from_secs(5), Duration::from_secs(3))),
        keep_alive_while_idle: true,
    };
    let client = topo_watcher::failover::connect(&cli.etcd_endpoints, &options)
        .await
        .context("failed to set up the etcd client")?;

    // A taken port or a bad identity stops the agent here, before it reconciles anything.
    let endpoint = topo_agent::endpoint::Endpoint::bind(&cli.endpoint_config())
        .await
        .context("failed to start the agent endpoint")?;
    let (handles_tx, handles_rx) = tokio::sync::oneshot::channel();
    let serving = tokio::spawn(endpoint.serve(backends.clone(), handles_rx, shutdown_rx.clone()));
    topo_agent::agent::run(cfg, client, backends, shutdown_rx, Some(handles_tx)).await;
    match serving.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(anyhow::Error::new(e)),
        Err(e) => Err(anyhow::anyhow!("the agent endpoint task failed: {e}")),
    }
}
