//! topo-pki: the cluster's identities and how topo's programs present them.
//!
//! * [`issue`]: the certificate authority and every certificate topo needs, written to one
//!   directory ([`layout`] names the files), idempotently.
//! * [`check`]: what expires when, so an expired certificate is diagnosed, not guessed at.
//! * [`etcd`]: TLS options for etcd clients, and etcd's users and roles (least privilege:
//!   each node's etcd user reads only its slice and writes only its own reports, heartbeat,
//!   registration and events).
//! * [`tls`]: rustls configurations (ring provider) built from the PEM files.
//! * [`serve`] (feature `serve`): the HTTPS-only accept loop of the controller's API and
//!   the agent's endpoint.
//! * [`testing`] (feature `testing`): a real etcd with TLS, client certificates and auth on,
//!   for integration tests.
//!
//! Identities map to topo's roles by subject: user = CN, groups = O. Nodes are
//! `CN=node:<name>, O=topo:nodes` — the API's `node` role for that node and, since etcd
//! takes the CN of a client certificate as its user name, the etcd user `node:<name>`.

pub mod check;
pub mod etcd;
pub mod init;
pub mod issue;
pub mod layout;
#[cfg(feature = "serve")]
pub mod serve;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;

/// The CN prefix of node identities: `node:<name>`.
pub const NODE_USER_PREFIX: &str = "node:";
/// The organisation (group) of node identities.
pub const NODES_GROUP: &str = "topo:nodes";
pub const ADMINS_GROUP: &str = "topo:admins";
pub const VIEWERS_GROUP: &str = "topo:viewers";
/// The group of scrape identities: the controller's `metrics` role and the agents' `/metrics`.
pub const METRICS_GROUP: &str = "topo:metrics";
/// The CN of the controller's etcd client certificate, also its etcd user.
pub const CONTROLLER_ETCD_USER: &str = "topo-controller";

/// The user name of node `name`.
pub fn node_user(name: &str) -> String {
    format!("{NODE_USER_PREFIX}{name}")
}

/// The node a user name stands for (`node:node1` → `node1`).
pub fn node_of_user(user: &str) -> Option<&str> {
    user.strip_prefix(NODE_USER_PREFIX)
        .filter(|n| !n.is_empty())
}
