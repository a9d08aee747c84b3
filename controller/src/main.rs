//! `topo-controller`: the API server and the controller.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

// The controller builds and drops millions of small strings and maps per pass; glibc's
// allocator spent a third of its CPU at 5,000 nodes (BENCHMARKS.md, "5,000 nodes").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The topo API server and controller: validates manifests, stores them in etcd, allocates
/// addresses and (as the elected leader) derives every node's slice. Serves HTTPS only;
/// every request is authenticated (client certificate or bearer token) and authorized.
#[derive(Debug, Parser)]
#[command(name = "topo-controller", version)]
struct Args {
    /// The configuration file: TLS files, token file, etcd identity, role bindings, quotas,
    /// limits, audit file (`topo-pki init` writes one; see README "The controller's
    /// configuration").
    #[arg(long, env = "TOPO_CONTROLLER_CONFIG")]
    config: PathBuf,
    /// etcd client URLs (https://HOST:PORT), comma-separated; overrides the configuration's.
    #[arg(long, env = "TOPO_ETCD_ENDPOINTS", value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Address the HTTPS API listens on (ADDR:PORT).
    #[arg(long, env = "TOPO_LISTEN", default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// etcd's --max-txn-ops: change sets with more operations go through the intent log.
    #[arg(long, env = "TOPO_MAX_TXN_OPS", default_value_t = 128, value_parser = clap::value_parser!(u32).range(4..))]
    max_txn_ops: u32,
    /// This replica's name in the leader election (default: hostname-pid).
    #[arg(long, env = "TOPO_ID")]
    id: Option<String>,
    /// Serve the API only; never lead (derive slices, fold status).
    #[arg(long, env = "TOPO_NO_LEAD")]
    no_lead: bool,
    /// Log filter (tracing EnvFilter syntax), e.g. info or topo_controller=debug.
    #[arg(long, env = "TOPO_LOG", default_value = "info")]
    log: String,
    /// Log as JSON lines.
    #[arg(long, env = "TOPO_LOG_JSON")]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = EnvFilter::try_new(&args.log).context("invalid --log filter")?;
    if args.log_json {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let security = topo_controller::config::Security::load(&args.config)
        .context("failed to load the configuration")?;
    let endpoints = if args.etcd_endpoints.is_empty() {
        security.etcd.endpoints.clone()
    } else {
        args.etcd_endpoints
    };
    if endpoints.is_empty() {
        anyhow::bail!(
            "no etcd endpoints: pass --etcd-endpoints or set etcd.endpoints in {}",
            args.config.display()
        );
    }
    let mut config = topo_controller::Config::new(endpoints, args.listen, security);
    config.max_txn_ops = args.max_txn_ops as usize;
    config.lead = !args.no_lead;
    if let Some(id) = args.id {
        config.id = id;
    }
    let shutdown = CancellationToken::new();
    let sd = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        sd.cancel();
    });
    topo_controller::run(config, shutdown)
        .await
        .context("topo-controller failed")?;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
