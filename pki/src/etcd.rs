//! etcd over TLS with client certificates, and etcd's users and roles.
//!
//! With `--client-cert-auth` etcd takes the CN of the client certificate as the user, so a
//! user needs no password (users are added with `no_password`: only the certificate logs
//! in). Roles, least privilege:
//!
//! * `topo-controller`: read and write `/topo/v1/` — it owns the whole store.
//! * `topo-node-<name>` for user `node:<name>`: read `slices/<name>/`; read and write
//!   `reports/<name>/`, `events/node/<name>/`, and the single keys `heartbeats/<name>`
//!   (put with a lease) and `registrations/<name>`. Nothing else: not the objects, not
//!   another node's slice. etcd enforces it, so a stolen node key exposes one node.
//!
//! Who creates the users: [`setup`], run by the operator (`topo-pki etcd-setup`, the lab)
//! with the `root` identity. etcd has no delegated user administration — only `root` may add
//! users or roles — so letting the controller add node users would make it etcd root;
//! instead the root key stays with the operator and is used once per added node.

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, Identity, Permission, TlsOptions, UserAddOptions,
};
use topo_schema::keys;

#[derive(Debug, thiserror::Error)]
pub enum EtcdSetupError {
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to connect to etcd at {endpoints}")]
    Connect {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("failed to {what}")]
    Etcd {
        what: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("invalid etcd endpoint {0:?}: etcd is reached over TLS only (https://HOST:PORT)")]
    PlainEndpoint(String),
}

/// The files of an etcd client identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn read(path: &Path) -> Result<Vec<u8>, EtcdSetupError> {
    std::fs::read(path).map_err(|source| EtcdSetupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl EtcdTls {
    pub fn new(ca: impl Into<PathBuf>, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        EtcdTls {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
        }
    }

    /// The identity of a PKI directory's pair.
    pub fn from_pair(dir: &Path, pair: &crate::layout::Pair) -> Self {
        EtcdTls::new(crate::layout::ca(dir).cert, &pair.cert, &pair.key)
    }

    pub fn tls_options(&self) -> Result<TlsOptions, EtcdSetupError> {
        Ok(TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca)?))
            .identity(Identity::from_pem(read(&self.cert)?, read(&self.key)?)))
    }

    /// Connect options with this identity and a 3 s connect timeout; callers add their
    /// keep-alive and request timeouts.
    pub fn connect_options(&self) -> Result<ConnectOptions, EtcdSetupError> {
        Ok(ConnectOptions::new()
            .with_tls(self.tls_options()?)
            .with_connect_timeout(Duration::from_secs(3)))
    }
}

/// Refuses `http://` endpoints: clear-text etcd is gone.
pub fn check_endpoints(endpoints: &[String]) -> Result<(), EtcdSetupError> {
    match endpoints.iter().find(|e| !e.starts_with("https://")) {
        Some(e) => Err(EtcdSetupError::PlainEndpoint(e.clone())),
        None => Ok(()),
    }
}

/// Connects with `tls` (no request is made: connecting is lazy).
pub async fn connect(endpoints: &[String], tls: &EtcdTls) -> Result<Client, EtcdSetupError> {
    check_endpoints(endpoints)?;
    Client::connect(endpoints, Some(tls.connect_options()?))
        .await
        .map_err(|source| EtcdSetupError::Connect {
            endpoints: endpoints.join(","),
            source,
        })
}

pub const CONTROLLER_ROLE: &str = "topo-controller";

pub fn node_role(node: &str) -> String {
    format!("topo-node-{node}")
}

/// The permissions of the controller's role.
pub fn controller_permissions() -> Vec<Permission> {
    vec![Permission::read_write(keys::ROOT).with_prefix()]
}

/// The permissions of node `node`'s role: its share of the key space, nothing more.
pub fn node_permissions(node: &str) -> Vec<Permission> {
    vec![
        Permission::read(keys::slice_prefix(node)).with_prefix(),
        Permission::read_write(keys::node_reports_prefix(node)).with_prefix(),
        Permission::read_write(keys::node_events_prefix(node)).with_prefix(),
        Permission::read_write(keys::heartbeat(node)),
        Permission::read_write(keys::registration(node)),
    ]
}

fn exists(e: &etcd_client::Error) -> bool {
    e.to_string().contains("already exists")
}

async fn ensure_role(
    c: &mut Client,
    role: &str,
    perms: Vec<Permission>,
) -> Result<(), EtcdSetupError> {
    let err = |what: String| move |source| EtcdSetupError::Etcd { what, source };
    match c.role_add(role).await {
        Ok(_) => {}
        Err(e) if exists(&e) => {}
        Err(e) => return Err(err(format!("add role {role}"))(e)),
    }
    for p in perms {
        let key = String::from_utf8_lossy(p.key()).into_owned();
        c.role_grant_permission(role, p)
            .await
            .map_err(err(format!("grant {key} to role {role}")))?;
    }
    Ok(())
}

async fn ensure_user(c: &mut Client, user: &str, role: &str) -> Result<(), EtcdSetupError> {
    let err = |what: String| move |source| EtcdSetupError::Etcd { what, source };
    match c
        .user_add(user, "", Some(UserAddOptions::new().with_no_pwd()))
        .await
    {
        Ok(_) => {}
        Err(e) if exists(&e) => {}
        Err(e) => return Err(err(format!("add user {user}"))(e)),
    }
    c.user_grant_role(user, role)
        .await
        .map_err(err(format!("grant role {role} to user {user}")))?;
    Ok(())
}

/// Creates (or completes) the root user, the controller's user and role, and one user and
/// role per node, then switches auth on. Idempotent; `client` must present the root
/// identity (CN=root).
pub async fn setup(client: &mut Client, nodes: &[String]) -> Result<(), EtcdSetupError> {
    ensure_user(client, "root", "root").await?;
    ensure_role(client, CONTROLLER_ROLE, controller_permissions()).await?;
    ensure_user(client, crate::CONTROLLER_ETCD_USER, CONTROLLER_ROLE).await?;
    for n in nodes {
        add_node(client, n).await?;
    }
    client
        .auth_enable()
        .await
        .map_err(|source| EtcdSetupError::Etcd {
            what: "enable auth".into(),
            source,
        })?;
    Ok(())
}

/// Node `node`'s etcd role and user (root identity required).
pub async fn add_node(client: &mut Client, node: &str) -> Result<(), EtcdSetupError> {
    let role = node_role(node);
    ensure_role(client, &role, node_permissions(node)).await?;
    ensure_user(client, &crate::node_user(node), &role).await
}
