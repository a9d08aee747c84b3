//! The controller's configuration file (`--config FILE`): TLS files, the token file, etcd's
//! endpoints and the controller's etcd identity, role bindings, quotas and limits, the audit
//! file. Relative paths are relative to the file. `topo-pki init` writes one.
//!
//! ```yaml
//! tls: {certFile: controller.crt, keyFile: controller.key, clientCAFile: ca.crt}
//! tokenFile: tokens.csv                 # optional: bearer tokens, kube-apiserver's CSV
//! etcd: {endpoints: ["https://127.0.0.1:2379"], caFile: ca.crt,
//!        certFile: controller-etcd.crt, keyFile: controller-etcd.key}
//! bindings:                             # roles: admin, view, node
//!   - {role: admin, groups: ["topo:admins"], users: []}
//! quotas: {Container: 10000}            # objects per kind (defaults: DEFAULT_QUOTAS)
//! limits: {watchesPerUser: 64, etcdTimeoutSeconds: 5}
//! auditFile: audit.log                  # optional; audit lines also go to tracing target `audit`
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use topo_schema::Kind;

pub use crate::auth::Binding;
use crate::auth::Role;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read the configuration {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to parse the configuration {path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("invalid configuration {path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The CA client certificates must chain to.
    #[serde(rename = "clientCAFile")]
    pub client_ca_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EtcdSection {
    #[serde(default)]
    pub endpoints: Vec<String>,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Watches one user may hold open at once; more are answered 429.
    #[serde(default = "default_watches")]
    pub watches_per_user: usize,
    /// How long a request may wait for etcd before it is answered 503 (at most 5).
    #[serde(default = "default_etcd_timeout")]
    pub etcd_timeout_seconds: u64,
}

fn default_watches() -> usize {
    64
}
fn default_etcd_timeout() -> u64 {
    5
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            watches_per_user: default_watches(),
            etcd_timeout_seconds: default_etcd_timeout(),
        }
    }
}

impl Limits {
    pub fn etcd_timeout(&self) -> Duration {
        Duration::from_secs(self.etcd_timeout_seconds.clamp(1, 5))
    }
}

/// Objects per kind a cluster may hold, unless the configuration says otherwise.
/// Generous for a real cluster (the bench's 10,000 containers fit), small enough that a
/// runaway script cannot fill etcd's 2 GiB.
pub const DEFAULT_QUOTAS: [(Kind, usize); 5] = [
    (Kind::Node, 5_000),
    (Kind::Network, 5_000),
    (Kind::Container, 100_000),
    (Kind::Link, 100_000),
    (Kind::Tunnel, 100_000),
];

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileConfig {
    tls: TlsFiles,
    #[serde(default)]
    token_file: Option<PathBuf>,
    etcd: EtcdSection,
    #[serde(default)]
    bindings: Vec<Binding>,
    #[serde(default)]
    quotas: BTreeMap<String, usize>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    audit_file: Option<PathBuf>,
}

/// The loaded configuration, paths resolved.
#[derive(Debug, Clone)]
pub struct Security {
    pub tls: TlsFiles,
    pub token_file: Option<PathBuf>,
    pub etcd: EtcdSection,
    pub bindings: Vec<Binding>,
    pub quotas: BTreeMap<Kind, usize>,
    pub limits: Limits,
    pub audit_file: Option<PathBuf>,
}

impl Security {
    pub fn etcd_tls(&self) -> topo_pki::etcd::EtcdTls {
        topo_pki::etcd::EtcdTls::new(
            &self.etcd.ca_file,
            &self.etcd.cert_file,
            &self.etcd.key_file,
        )
    }

    /// The quota of `kind`.
    pub fn quota(&self, kind: Kind) -> usize {
        self.quotas.get(&kind).copied().unwrap_or(usize::MAX)
    }

    /// The configuration `topo-pki init` writes for a PKI directory `dir` (what tests and
    /// `serve_for_test` use).
    pub fn from_pki_dir(dir: &Path, etcd_endpoints: Vec<String>) -> Security {
        use topo_pki::layout;
        let bind = |role, group: &str| Binding {
            role,
            users: vec![],
            groups: vec![group.to_string()],
        };
        Security {
            tls: TlsFiles {
                cert_file: layout::controller(dir).cert,
                key_file: layout::controller(dir).key,
                client_ca_file: layout::ca(dir).cert,
            },
            token_file: Some(layout::tokens(dir)).filter(|p| p.exists()),
            etcd: EtcdSection {
                endpoints: etcd_endpoints,
                ca_file: layout::ca(dir).cert,
                cert_file: layout::controller_etcd(dir).cert,
                key_file: layout::controller_etcd(dir).key,
            },
            bindings: vec![
                bind(Role::Admin, topo_pki::ADMINS_GROUP),
                bind(Role::View, topo_pki::VIEWERS_GROUP),
                bind(Role::Node, topo_pki::NODES_GROUP),
                bind(Role::Metrics, topo_pki::METRICS_GROUP),
            ],
            quotas: DEFAULT_QUOTAS.into_iter().collect(),
            limits: Limits::default(),
            audit_file: None,
        }
    }

    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Security, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Security::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Security, ConfigError> {
        let f: FileConfig = serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let abs = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let mut quotas: BTreeMap<Kind, usize> = DEFAULT_QUOTAS.into_iter().collect();
        for (k, v) in &f.quotas {
            let kind = Kind::from_manifest(k).ok_or_else(|| {
                invalid(
                    &format!("quotas.{k}"),
                    "unknown kind (Node, Network, Container, Link, Tunnel)".into(),
                )
            })?;
            quotas.insert(kind, *v);
        }
        if f.bindings.is_empty() {
            return Err(invalid(
                "bindings",
                "no role is bound: nobody could use the API (bind admin to a user or group)".into(),
            ));
        }
        if f.limits.etcd_timeout_seconds == 0 || f.limits.etcd_timeout_seconds > 5 {
            return Err(invalid("limits.etcdTimeoutSeconds", "expected 1-5".into()));
        }
        Ok(Security {
            tls: TlsFiles {
                cert_file: abs(&f.tls.cert_file),
                key_file: abs(&f.tls.key_file),
                client_ca_file: abs(&f.tls.client_ca_file),
            },
            token_file: f.token_file.as_deref().map(abs),
            etcd: EtcdSection {
                endpoints: f.etcd.endpoints,
                ca_file: abs(&f.etcd.ca_file),
                cert_file: abs(&f.etcd.cert_file),
                key_file: abs(&f.etcd.key_file),
            },
            bindings: f.bindings,
            quotas,
            limits: f.limits,
            audit_file: f.audit_file.as_deref().map(abs),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "tls: {certFile: c.crt, keyFile: c.key, clientCAFile: ca.crt}
etcd: {endpoints: [\"https://127.0.0.1:2379\"], caFile: ca.crt, certFile: e.crt, keyFile: e.key}
bindings:
  - {role: admin, groups: [\"topo:admins\"]}
quotas: {Container: 5}
";

    #[test]
    fn paths_are_relative_to_the_file_and_quotas_default() {
        let s = Security::parse(Path::new("/etc/topo/controller.yaml"), GOOD).unwrap();
        assert_eq!(s.tls.cert_file, PathBuf::from("/etc/topo/c.crt"));
        assert_eq!(s.etcd.key_file, PathBuf::from("/etc/topo/e.key"));
        assert_eq!(s.quota(Kind::Container), 5);
        assert_eq!(s.quota(Kind::Node), 5_000);
        assert_eq!(s.limits.watches_per_user, 64);
    }

    #[test]
    fn bad_files_name_the_field() {
        let p = Path::new("/x/c.yaml");
        let e = Security::parse(p, &GOOD.replace("Container", "Pod")).unwrap_err();
        assert!(e.to_string().contains("quotas.Pod"), "{e}");
        let e = Security::parse(p, &GOOD.replace("admin", "root")).unwrap_err();
        assert!(e.to_string().contains("/x/c.yaml"), "{e}");
        let no_bindings = GOOD.replace(
            "bindings:\n  - {role: admin, groups: [\"topo:admins\"]}\n",
            "",
        );
        let e = Security::parse(p, &no_bindings).unwrap_err();
        assert!(e.to_string().contains("bindings"), "{e}");
    }
}
