//! `topo-agent`: parses the command line, connects the four host backends and etcd, and
//! runs the agent (`agent.rs`) until SIGTERM or SIGINT.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use etcd_client::Client;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use topo_agent::backend::{DockerContainers, NetlinkInterfaces, NftNat, NodeSockets, OvsdbSwitch};
use topo_agent::config::Cli;
use topo_agent::reconcile::Backends;

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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    let cfg = cli.agent_config();
    tracing::info!(node = %cfg.node, address = %cfg.address, datapath = cfg.datapath.ovs_type(),
        etcd = ?cli.etcd_endpoints, version = env!("CARGO_PKG_VERSION"), "topo-agent starting");

    let ovsdb = cli.ovsdb_path().map_err(anyhow::Error::msg)?;
    let containers = DockerContainers::connect(cli.docker.as_deref(), &cfg.node)
        .await
        .context("failed to connect to the Docker engine")?;
    let interfaces = NetlinkInterfaces::new().context("failed to open netlink")?;
    let ovs = OvsdbSwitch::connect(ovsdb, &cfg.node)
        .await
        .context("failed to connect to ovsdb-server")?;
    let nat = NftNat::new();
    let backends = Backends {
        containers: Arc::new(containers),
        interfaces: Arc::new(interfaces),
        ovs: Arc::new(ovs),
        nat: Arc::new(nat),
        host_ports: Arc::new(NodeSockets::new()),
    };

    // The channel connects lazily: an agent may start before etcd and catches up.
    // TLS with the node's own identity: its etcd user may read only this node's slice.
    topo_pki::etcd::check_endpoints(&cli.etcd_endpoints)?;
    let options = cli
        .etcd_tls()
        .connect_options()
        .context("failed to load the node's etcd identity")?
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
        .with_keep_alive_while_idle(true);
    let client = Client::connect(&cli.etcd_endpoints, Some(options))
        .await
        .context("failed to set up the etcd client")?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
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

    topo_agent::agent::run(cfg, client, backends, shutdown_rx, None).await;
    Ok(())
}
