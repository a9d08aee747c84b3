//! `topo-pki`: a working PKI for a topo cluster in one command, nodes added later, expiry
//! checked, and etcd's users and roles set up with the root identity.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use topo_pki::etcd::{self, EtcdTls};
use topo_pki::init::{InitOptions, init};
use topo_pki::issue::{self, LEAF_DAYS, Outcome};
use topo_pki::layout;

/// Certificates and etcd users for a topo cluster. Keys are written 0600; re-running keeps
/// what exists unless --force.
#[derive(Debug, Parser)]
#[command(name = "topo-pki", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Make the CA, the controller's, etcd's, admin's, viewer's and the nodes' identities,
    /// a token file, the controller's configuration and topoctl configurations.
    Init {
        /// The PKI directory.
        #[arg(long, env = "TOPO_PKI_DIR")]
        dir: PathBuf,
        /// The cluster's name (in the CA's subject).
        #[arg(long, env = "TOPO_PKI_CLUSTER", default_value = "topo")]
        cluster: String,
        /// Names the API is reached by (IP or DNS), comma-separated.
        #[arg(
            long,
            env = "TOPO_PKI_CONTROLLER_SAN",
            value_delimiter = ',',
            required = true
        )]
        controller_san: Vec<String>,
        /// Names etcd is reached by (default 127.0.0.1,localhost).
        #[arg(long, env = "TOPO_PKI_ETCD_SAN", value_delimiter = ',')]
        etcd_san: Vec<String>,
        /// Nodes: NAME or NAME=ADDRESS (the address becomes the certificate's SAN).
        #[arg(long, env = "TOPO_PKI_NODES", value_delimiter = ',')]
        nodes: Vec<String>,
        /// The API's URL for the topoctl configurations (default https://FIRST-SAN:8443).
        #[arg(long, env = "TOPO_PKI_SERVER")]
        server: Option<String>,
        /// etcd's URLs for the controller's configuration (default https://FIRST-ETCD-SAN:2379).
        #[arg(long, env = "TOPO_PKI_ETCD_ENDPOINTS", value_delimiter = ',')]
        etcd_endpoints: Vec<String>,
        /// Lifetime of the identities in days.
        #[arg(long, env = "TOPO_PKI_DAYS", default_value_t = LEAF_DAYS)]
        days: u32,
        /// Replace existing material (a new CA invalidates every certificate in use).
        #[arg(long)]
        force: bool,
    },
    /// Add (or keep) one node's identity.
    Node {
        #[arg(long, env = "TOPO_PKI_DIR")]
        dir: PathBuf,
        /// The node's name.
        name: String,
        /// The node's underlay address (the certificate's SAN).
        #[arg(long)]
        address: IpAddr,
        #[arg(long, env = "TOPO_PKI_DAYS", default_value_t = LEAF_DAYS)]
        days: u32,
        #[arg(long)]
        force: bool,
    },
    /// Show what every certificate names and when it expires; exit 1 when one is expired,
    /// not yet valid, or expires within --warn-days.
    Check {
        #[arg(long, env = "TOPO_PKI_DIR")]
        dir: PathBuf,
        #[arg(long, default_value_t = 30)]
        warn_days: i64,
    },
    /// Create etcd's users and roles (root, the controller, one per node in DIR/nodes) and
    /// enable auth, with the root identity of DIR. Idempotent; run again after `node`.
    EtcdSetup {
        #[arg(long, env = "TOPO_PKI_DIR")]
        dir: PathBuf,
        /// etcd client URLs (https://...), comma-separated.
        #[arg(
            long,
            env = "TOPO_ETCD_ENDPOINTS",
            value_delimiter = ',',
            required = true
        )]
        etcd_endpoints: Vec<String>,
    },
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(p).with_context(|| format!("failed to create {}", p.display()))?;
    p.canonicalize()
        .with_context(|| format!("failed to resolve {}", p.display()))
}

fn parse_node(s: &str) -> anyhow::Result<(String, Option<IpAddr>)> {
    match s.split_once('=') {
        None => Ok((s.to_string(), None)),
        Some((n, a)) => {
            let addr = a
                .parse()
                .with_context(|| format!("--nodes {s:?}: {a:?} is not an IP address"))?;
            Ok((n.to_string(), Some(addr)))
        }
    }
}

fn print_report(report: &[(PathBuf, Outcome)]) {
    for (p, o) in report {
        let what = match o {
            Outcome::Created => "created",
            Outcome::Kept => "kept",
        };
        println!("{what:8} {}", p.display());
    }
}

fn host_of(san: &str) -> String {
    if san.contains(':') {
        format!("[{san}]")
    } else {
        san.to_string()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Init {
            dir,
            cluster,
            controller_san,
            etcd_san,
            nodes,
            server,
            etcd_endpoints,
            days,
            force,
        } => {
            let dir = absolute(&dir)?;
            let nodes = nodes
                .iter()
                .map(|n| parse_node(n))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let first = controller_san
                .first()
                .map(|s| host_of(s))
                .unwrap_or_default();
            let etcd_first = etcd_san
                .first()
                .map(|s| host_of(s))
                .unwrap_or_else(|| "127.0.0.1".into());
            let o = InitOptions {
                server: server.unwrap_or_else(|| format!("https://{first}:8443")),
                etcd_endpoints: if etcd_endpoints.is_empty() {
                    vec![format!("https://{etcd_first}:2379")]
                } else {
                    etcd_endpoints
                },
                dir,
                cluster,
                controller_sans: controller_san,
                etcd_sans: etcd_san,
                nodes,
                days,
                force,
            };
            print_report(&init(&o).context("topo-pki init failed")?);
        }
        Cmd::Node {
            dir,
            name,
            address,
            days,
            force,
        } => {
            let dir = absolute(&dir)?;
            let ca = issue::Ca::load(&layout::ca(&dir)).context("no CA: run topo-pki init")?;
            let out = issue::ensure_node(&dir, &ca, &name, Some(address), days, force)?;
            print_report(&[(layout::node(&dir, &name).cert, out)]);
        }
        Cmd::Check { dir, warn_days } => {
            let findings = topo_pki::check::check_dir(&dir, chrono::Utc::now(), warn_days);
            if findings.is_empty() {
                anyhow::bail!("no certificates in {}", dir.display());
            }
            for f in &findings {
                let who = f.info.as_ref().map(|i| i.subject.as_str()).unwrap_or("?");
                println!("{:<40} {:<45} {}", f.path.display(), who, f.verdict);
            }
            if findings.iter().any(|f| f.bad) {
                std::process::exit(1);
            }
        }
        Cmd::EtcdSetup {
            dir,
            etcd_endpoints,
        } => {
            let tls = EtcdTls::from_pair(&dir, &layout::etcd_root(&dir));
            let mut client = etcd::connect(&etcd_endpoints, &tls).await?;
            let nodes = layout::node_names(&dir)
                .with_context(|| format!("failed to list {}", layout::nodes_dir(&dir).display()))?;
            etcd::setup(&mut client, &nodes)
                .await
                .context("etcd setup failed")?;
            println!(
                "etcd: auth enabled; users root, {}{}",
                topo_pki::CONTROLLER_ETCD_USER,
                nodes
                    .iter()
                    .map(|n| format!(", {}", topo_pki::node_user(n)))
                    .collect::<String>()
            );
        }
    }
    Ok(())
}
