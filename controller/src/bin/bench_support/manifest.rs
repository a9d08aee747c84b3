//! The generated bench manifest (nodes, two networks, containers spread evenly, links, and
//! the tunnels of the chosen topology) and how it is sent: documents in order, in applies
//! as large as the API's body limit lets them be, as a user splits a manifest over it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::ValueEnum;
use topo_schema::api::{ApplyRequest, SourceFile};

use super::https::Https;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TopologyArg {
    Tree,
    Mesh,
}

#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub nodes: usize,
    pub containers: usize,
    pub links: usize,
}

/// The address of node `n` (`node-{n:04}`) in the bench manifest.
pub fn node_address(n: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(10, 255, (n / 250) as u8, (n % 250 + 1) as u8)
}

/// The name of node `n` in the bench manifest.
pub fn node_name(n: usize) -> String {
    format!("node-{n:04}")
}

/// The bench manifest: `nodes` nodes, networks `net-a` (every container) and `net-b` (half of
/// each node's containers, some with static addresses), containers spread evenly, links from
/// each container to a pseudo-random other one (every tenth with an alias), and for the tree
/// topology the explicit tunnels. Returns the YAML and the number of Tunnel objects in it.
pub fn generate(size: Size, topology: TopologyArg, fanout: usize) -> (String, usize) {
    let Size {
        nodes,
        containers,
        links,
    } = size;
    let mut y = String::with_capacity(containers * 260 + links * 200);
    let topo = match topology {
        TopologyArg::Tree => "explicit",
        TopologyArg::Mesh => "mesh",
    };
    for n in 0..nodes {
        let _ = write!(
            y,
            "---\napiVersion: topo.dev/v1alpha1\nkind: Node\nmetadata: {{name: {}}}\nspec: {{address: {}, datapath: netdev}}\n",
            node_name(n),
            node_address(n)
        );
    }
    for (net, cidr, prefix) in [("net-a", "10.0.0.0/8", 8), ("net-b", "172.16.0.0/12", 12)] {
        // /24 blocks, or narrower ones when the cidr has fewer /24s than there are nodes
        // (a /12 holds 4,096: the 5,000-node run needs /25s in net-b).
        let block = (24..=28)
            .find(|b| 1usize << (b - prefix) >= nodes)
            .unwrap_or(28);
        let _ = write!(
            y,
            "---\napiVersion: topo.dev/v1alpha1\nkind: Network\nmetadata: {{name: {net}}}\nspec: {{cidr: {cidr}, blockSize: {block}, topology: {topo}}}\n"
        );
    }
    let mut tunnels = 0;
    if topology == TopologyArg::Tree {
        for net in ["net-a", "net-b"] {
            for n in 1..nodes {
                let parent = (n - 1) / fanout.max(1);
                let _ = write!(
                    y,
                    "---\napiVersion: topo.dev/v1alpha1\nkind: Tunnel\nmetadata: {{name: {net}-{n:04}}}\nspec: {{network: {net}, nodes: [{}, {}]}}\n",
                    node_name(parent),
                    node_name(n)
                );
                tunnels += 1;
            }
        }
    }
    let nodes = nodes.max(1);
    for i in 0..containers {
        let node = i % nodes;
        let round = i / nodes;
        let mut nets = String::from("{network: net-a}");
        if round % 2 == 0 {
            if i % 50 == 0 {
                let _ = write!(
                    nets,
                    ", {{network: net-b, ip: 172.31.{}.{}}}",
                    // Every 50th container: one address each, unique up to 51,200 of them.
                    (i / 50) / 200,
                    (i / 50) % 200 + 2
                );
            } else {
                nets.push_str(", {network: net-b}");
            }
        }
        let ports = if i % 20 == 0 {
            format!(
                ", ports: [{{containerPort: 80, hostPort: {}}}]",
                30000 + round
            )
        } else {
            String::new()
        };
        let _ = write!(
            y,
            "---\napiVersion: topo.dev/v1alpha1\nkind: Container\nmetadata: {{name: c-{i:05}, labels: {{app: bench}}}}\nspec: {{node: {}, image: topo/busybox:latest, command: [httpd, -f, -p, \"80\"], env: {{ROLE: worker}}, networks: [{nets}]{ports}}}\n",
            node_name(node)
        );
    }
    let containers = containers.max(2);
    for i in 0..links {
        let from = i % containers;
        let mut to = (i.wrapping_mul(7919) + 13) % containers;
        if to == from {
            to = (to + 1) % containers;
        }
        let port = 6000 + i / containers;
        let alias = if i % 10 == 0 {
            ", alias: svc".to_string()
        } else {
            String::new()
        };
        let _ = write!(
            y,
            "---\napiVersion: topo.dev/v1alpha1\nkind: Link\nmetadata: {{name: l-{i:05}}}\nspec: {{from: c-{from:05}, to: {{container: c-{to:05}, port: {port}}}{alias}}}\n"
        );
    }
    (y, tunnels)
}

/// The most manifest one apply carries: three quarters of the API's body limit, the rest
/// room for the JSON envelope's escaping of newlines and quotes. A 5 MiB manifest goes in one
/// request, as `topoctl apply -f` sends a file.
pub const DEFAULT_APPLY_BYTES: usize = topo_schema::api::MAX_BODY_BYTES * 3 / 4;

/// The apply request bodies for `manifest`: its documents in order, each body about `limit`
/// bytes of manifest (at most [`DEFAULT_APPLY_BYTES`]).
pub fn apply_bodies(manifest: &str, limit: usize) -> Result<Vec<Vec<u8>>> {
    let limit = limit.min(DEFAULT_APPLY_BYTES);
    let mut chunks: Vec<String> = Vec::new();
    let mut chunk = String::new();
    for doc in manifest.split("---\n").filter(|d| !d.trim().is_empty()) {
        if !chunk.is_empty() && chunk.len() + doc.len() + 4 > limit {
            chunks.push(std::mem::take(&mut chunk));
        }
        chunk.push_str("---\n");
        chunk.push_str(doc);
    }
    chunks.push(chunk);
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, content)| {
            Ok(serde_json::to_vec(&ApplyRequest {
                files: vec![SourceFile {
                    name: format!("bench-{i}.yaml"),
                    content,
                }],
                dry_run: false,
            })?)
        })
        .collect()
}

/// An error carrying the API's answer when the apply was refused.
pub fn check_apply(result: Result<(u16, Vec<u8>)>) -> Result<()> {
    let (status, resp) = result?;
    if status != 200 {
        bail!(
            "apply answered {status}: {}",
            String::from_utf8_lossy(&resp[..resp.len().min(2000)])
        );
    }
    Ok(())
}

/// Sends `bodies` in order; the first one refused ends it with the API's answer. A 503 is
/// etcd slower than the controller's 5 s request deadline (a loaded machine): the apply is
/// declarative, so sending it again (up to 5 times) is what a script does.
pub async fn send_applies(https: &Https, api: SocketAddr, bodies: Vec<Vec<u8>>) -> Result<()> {
    for body in bodies {
        let mut tries = 0;
        loop {
            let r = https
                .request(
                    api,
                    "POST",
                    "/apis/topo.dev/v1alpha1/apply",
                    Some(body.clone()),
                )
                .await;
            match r {
                Ok((200, _)) => break,
                Ok((503, _)) if tries < 5 => {
                    tries += 1;
                    eprintln!("   apply answered 503 (etcd slow); sending it again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                other => check_apply(other)?,
            }
        }
    }
    Ok(())
}
