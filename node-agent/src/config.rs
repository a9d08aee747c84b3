//! The agent's command line (clap), turned into an [`AgentConfig`]. Every flag also reads an
//! environment variable, so the lab and a systemd unit can configure the agent either way.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use topo_schema::kinds::Datapath;

use crate::agent::AgentConfig;
use crate::pulls::PullConfig;

/// topo's node agent: keeps this host's Docker containers, veth pairs and addresses, Open
/// vSwitch bridges and GRE ports, and nftables NAT equal to the node's slice in etcd.
#[derive(Debug, Clone, Parser)]
#[command(name = "topo-agent", version, about, long_about = None)]
pub struct Cli {
    /// This node's name (the Node object and the slice the agent serves).
    #[arg(long, env = "TOPO_NODE")]
    pub node: String,

    /// etcd client URLs (https://HOST:PORT), comma-separated.
    #[arg(
        long,
        env = "TOPO_ETCD_ENDPOINTS",
        value_delimiter = ',',
        required = true
    )]
    pub etcd_endpoints: Vec<String>,

    /// The cluster CA that signed etcd's certificate.
    #[arg(long, env = "TOPO_ETCD_CA")]
    pub etcd_ca: PathBuf,

    /// This node's certificate (CN=node:<name>: its etcd user; `topo-pki node` makes it).
    #[arg(long, env = "TOPO_ETCD_CERT")]
    pub etcd_cert: PathBuf,

    /// The key of --etcd-cert.
    #[arg(long, env = "TOPO_ETCD_KEY")]
    pub etcd_key: PathBuf,

    /// The node's underlay IPv4 address (registered for the controller, which creates the
    /// Node with it when none exists; the remote_ip of every GRE port towards this node).
    #[arg(long, env = "TOPO_ADDRESS")]
    pub address: Ipv4Addr,

    /// OVS datapath registered for a new Node: system (kernel) or netdev (userspace).
    #[arg(long, env = "TOPO_DATAPATH", default_value = "system", value_parser = parse_datapath)]
    pub datapath: Datapath,

    /// The OVSDB server's socket.
    #[arg(
        long,
        env = "TOPO_OVSDB",
        default_value = "unix:/var/run/openvswitch/db.sock"
    )]
    pub ovsdb: String,

    /// The Docker engine (unix:///path/docker.sock); Docker's default when absent.
    #[arg(long, env = "DOCKER_HOST")]
    pub docker: Option<String>,

    /// Period of the full resync, the safety net behind event-driven repair (300s, 5m, ...).
    #[arg(long, env = "TOPO_RESYNC", default_value = "300s", value_parser = parse_duration)]
    pub resync: Duration,

    /// TTL of the heartbeat lease; the Node turns NotReady this long after the agent stops
    /// renewing it (renewed every TTL/3).
    #[arg(long, env = "TOPO_HEARTBEAT_TTL", default_value = "10s", value_parser = parse_duration)]
    pub heartbeat_ttl: Duration,

    /// Reconciles in flight at once.
    #[arg(long, env = "TOPO_WORKERS", default_value_t = 8)]
    pub workers: usize,

    /// How long in-flight reconciles may take to finish on SIGTERM.
    #[arg(long, env = "TOPO_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Address of the agent's HTTPS endpoint (/healthz, /readyz, /metrics), served with the
    /// node's identity (--etcd-cert); default: the node's --address, port 10250.
    #[arg(long, env = "TOPO_AGENT_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// An image pull that sends no progress for this long has stalled: it is abandoned and
    /// retried after a backoff (10 s doubling to 5 min).
    #[arg(long, env = "TOPO_IMAGE_PULL_PROGRESS_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub image_pull_progress_timeout: Duration,

    /// An image pull not finished after this long is abandoned and retried after a backoff.
    #[arg(long, env = "TOPO_IMAGE_PULL_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub image_pull_timeout: Duration,

    /// How often a long image pull's progress becomes a `Pulling` event.
    #[arg(long, env = "TOPO_IMAGE_PULL_PROGRESS_EVENTS", default_value = "15s", value_parser = parse_duration)]
    pub image_pull_progress_events: Duration,

    /// Log format: text or json. The level comes from RUST_LOG (default info).
    #[arg(long, env = "TOPO_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

impl Cli {
    pub fn etcd_tls(&self) -> topo_pki::etcd::EtcdTls {
        topo_pki::etcd::EtcdTls::new(&self.etcd_ca, &self.etcd_cert, &self.etcd_key)
    }

    /// The agent endpoint's address and TLS files (the node's identity, the cluster CA).
    pub fn endpoint_config(&self) -> crate::endpoint::EndpointConfig {
        crate::endpoint::EndpointConfig {
            listen: self.listen.unwrap_or(std::net::SocketAddr::from((
                self.address,
                crate::endpoint::DEFAULT_PORT,
            ))),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
            ca: self.etcd_ca.clone(),
        }
    }

    pub fn agent_config(&self) -> AgentConfig {
        AgentConfig {
            node: self.node.clone(),
            address: self.address,
            datapath: self.datapath,
            heartbeat_ttl: self.heartbeat_ttl,
            resync: self.resync,
            workers: self.workers,
            shutdown_grace: self.shutdown_grace,
            endpoint: Some(self.endpoint_config().listen),
            image_pulls: PullConfig {
                progress_timeout: self.image_pull_progress_timeout,
                timeout: self.image_pull_timeout,
                progress_events: self.image_pull_progress_events,
                ..PullConfig::default()
            },
        }
    }

    /// The OVSDB socket path (`unix:` stripped; only unix sockets are supported).
    pub fn ovsdb_path(&self) -> Result<&str, String> {
        match self.ovsdb.strip_prefix("unix:") {
            Some(p) if !p.is_empty() => Ok(p),
            _ if self.ovsdb.starts_with('/') => Ok(&self.ovsdb),
            _ => Err(format!(
                "--ovsdb {:?}: expected unix:/path/to/db.sock",
                self.ovsdb
            )),
        }
    }
}

pub fn parse_datapath(s: &str) -> Result<Datapath, String> {
    match s {
        "system" => Ok(Datapath::System),
        "netdev" => Ok(Datapath::Netdev),
        _ => Err(format!("{s:?} is not a datapath (system or netdev)")),
    }
}

/// `300s`, `5m`, `1h`, `250ms`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (like 300s, 5m, 250ms)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?} has an unknown unit {unit:?} (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 7.0 * 24.0 * 3600.0 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_command_line_parses() {
        let cli = Cli::try_parse_from([
            "topo-agent",
            "--node",
            "node1",
            "--address",
            "192.168.100.1",
            "--datapath",
            "netdev",
            "--etcd-endpoints",
            "https://192.168.100.254:2379,https://127.0.0.1:2379",
            "--etcd-ca",
            "/lab/pki/ca.crt",
            "--etcd-cert",
            "/lab/pki/nodes/node1.crt",
            "--etcd-key",
            "/lab/pki/nodes/node1.key",
            "--ovsdb",
            "unix:/tmp/lab/node1/db.sock",
            "--docker",
            "unix:///tmp/lab/docker.sock",
        ])
        .unwrap();
        assert_eq!(cli.node, "node1");
        assert_eq!(cli.datapath, Datapath::Netdev);
        assert_eq!(cli.etcd_endpoints.len(), 2);
        assert_eq!(cli.ovsdb_path().unwrap(), "/tmp/lab/node1/db.sock");
        assert_eq!(cli.resync, Duration::from_secs(300));
        assert_eq!(cli.heartbeat_ttl, Duration::from_secs(10));
        assert_eq!(
            cli.endpoint_config().listen,
            "192.168.100.1:10250".parse().unwrap()
        );
        let pulls = cli.agent_config().image_pulls;
        assert_eq!(pulls.progress_timeout, Duration::from_secs(60));
        assert_eq!(pulls.timeout, Duration::from_secs(600));
        assert_eq!(pulls.progress_events, Duration::from_secs(15));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(
            Cli::try_parse_from([
                "topo-agent",
                "--node",
                "n",
                "--etcd-endpoints",
                "x",
                "--etcd-ca",
                "c",
                "--etcd-cert",
                "c",
                "--etcd-key",
                "k",
                "--address",
                "nope"
            ])
            .is_err()
        );
        assert!(parse_datapath("kernel").is_err());
    }
}
