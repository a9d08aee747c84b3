//! The files of a PKI directory. One place names them so `topo-pki`, the lab, and the
//! tests agree.
//!
//! ```text
//! ca.crt ca.key                     the cluster CA
//! controller.crt controller.key     the API's serving certificate (serverAuth, --controller-san)
//! controller-etcd.crt .key          the controller's etcd client identity (CN=topo-controller)
//! etcd.crt etcd.key                 etcd's serving certificate (--etcd-san)
//! etcd-root.crt etcd-root.key       etcd's root user (CN=root): bootstrap only, keep it offline
//! admin.crt admin.key               CN=admin, O=topo:admins
//! viewer.crt viewer.key             CN=viewer, O=topo:viewers
//! metrics.crt metrics.key           CN=metrics, O=topo:metrics: Prometheus's scrape identity
//! nodes/<name>.crt nodes/<name>.key CN=node:<name>, O=topo:nodes, client+server, SAN = address
//! tokens.csv                        bearer tokens (token,user,uid,"group1,group2")
//! controller.yaml                   a controller configuration using the files above
//! admin.yaml viewer.yaml            topoctl configurations (TOPO_CONFIG)
//! ```

use std::path::{Path, PathBuf};

/// A certificate and its key, by base name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pair {
    pub fn new(dir: &Path, base: &str) -> Pair {
        Pair {
            cert: dir.join(format!("{base}.crt")),
            key: dir.join(format!("{base}.key")),
        }
    }
}

pub fn ca(dir: &Path) -> Pair {
    Pair::new(dir, "ca")
}
pub fn controller(dir: &Path) -> Pair {
    Pair::new(dir, "controller")
}
pub fn controller_etcd(dir: &Path) -> Pair {
    Pair::new(dir, "controller-etcd")
}
pub fn etcd_server(dir: &Path) -> Pair {
    Pair::new(dir, "etcd")
}
pub fn etcd_root(dir: &Path) -> Pair {
    Pair::new(dir, "etcd-root")
}
pub fn admin(dir: &Path) -> Pair {
    Pair::new(dir, "admin")
}
pub fn viewer(dir: &Path) -> Pair {
    Pair::new(dir, "viewer")
}
/// The scrape identity Prometheus presents (CN=metrics, O=topo:metrics).
pub fn metrics(dir: &Path) -> Pair {
    Pair::new(dir, "metrics")
}
pub fn nodes_dir(dir: &Path) -> PathBuf {
    dir.join("nodes")
}
pub fn node(dir: &Path, name: &str) -> Pair {
    Pair::new(&nodes_dir(dir), name)
}
pub fn tokens(dir: &Path) -> PathBuf {
    dir.join("tokens.csv")
}
pub fn controller_config(dir: &Path) -> PathBuf {
    dir.join("controller.yaml")
}
pub fn topoctl_config(dir: &Path, who: &str) -> PathBuf {
    dir.join(format!("{who}.yaml"))
}

/// The node names that have an identity in `dir` (from `nodes/*.crt`), sorted.
pub fn node_names(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    let entries = match std::fs::read_dir(nodes_dir(dir)) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let p = entry?.path();
        if p.extension().is_some_and(|e| e == "crt")
            && let Some(stem) = p.file_stem().and_then(|s| s.to_str())
        {
            names.push(stem.to_string());
        }
    }
    names.sort();
    Ok(names)
}
