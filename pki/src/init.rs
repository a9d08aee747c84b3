//! `topo-pki init`: everything a cluster needs in one directory, idempotently.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::issue::{self, Ca, IssueError, Outcome, Subject, Usage, Validity};
use crate::layout;

#[derive(Debug, Clone)]
pub struct InitOptions {
    pub dir: PathBuf,
    pub cluster: String,
    /// Names the API is reached by (IPs or DNS names), for its serving certificate.
    pub controller_sans: Vec<String>,
    /// Names etcd is reached by.
    pub etcd_sans: Vec<String>,
    /// Nodes to make identities for, with their underlay addresses when known.
    pub nodes: Vec<(String, Option<IpAddr>)>,
    /// The API's URL written into the topoctl configurations.
    pub server: String,
    /// etcd's client URLs written into the controller's configuration.
    pub etcd_endpoints: Vec<String>,
    pub days: u32,
    pub force: bool,
}

/// What init did, file by file.
pub type Report = Vec<(PathBuf, Outcome)>;

pub fn init(o: &InitOptions) -> Result<Report, IssueError> {
    for n in &o.nodes {
        issue::check_node_name(&n.0)?;
    }
    if o.controller_sans.is_empty() {
        return Err(IssueError::Invalid {
            what: "--controller-san",
            value: String::new(),
            expected: "at least one IP address or DNS name the API is reached by",
        });
    }
    let dir = &o.dir;
    let (ca, outcome) = issue::ensure_ca(dir, &o.cluster, o.force)?;
    let mut report = vec![(layout::ca(dir).cert, outcome)];
    let v = Validity::days(o.days);
    let mut etcd_sans = o.etcd_sans.clone();
    if etcd_sans.is_empty() {
        etcd_sans = vec!["127.0.0.1".into(), "localhost".into()];
    }
    let server = |cn: &str, sans: &[String]| Subject {
        cn: cn.to_string(),
        group: None,
        sans: sans.to_vec(),
        usage: Usage::Server,
    };
    let identities = [
        (
            layout::controller(dir),
            server("topo-controller", &o.controller_sans),
        ),
        (
            layout::controller_etcd(dir),
            Subject::client(crate::CONTROLLER_ETCD_USER, None),
        ),
        (
            layout::etcd_server(dir),
            Subject {
                usage: Usage::Both,
                ..server("etcd", &etcd_sans)
            },
        ),
        (layout::etcd_root(dir), Subject::client("root", None)),
        (
            layout::admin(dir),
            Subject::client("admin", Some(crate::ADMINS_GROUP)),
        ),
        (
            layout::viewer(dir),
            Subject::client("viewer", Some(crate::VIEWERS_GROUP)),
        ),
        (
            layout::metrics(dir),
            Subject::client("metrics", Some(crate::METRICS_GROUP)),
        ),
    ];
    for (pair, subject) in &identities {
        let out = issue::ensure(&ca, pair, subject, v, o.force)?;
        report.push((pair.cert.clone(), out));
    }
    for (name, addr) in &o.nodes {
        let out = issue::ensure_node(dir, &ca, name, *addr, o.days, o.force)?;
        report.push((layout::node(dir, name).cert, out));
    }
    write_configs(o, &ca, &mut report)?;
    Ok(report)
}

fn keep_or_write(
    path: &Path,
    content: &str,
    mode: u32,
    force: bool,
    report: &mut Report,
) -> Result<(), IssueError> {
    if !force && path.exists() {
        report.push((path.to_path_buf(), Outcome::Kept));
        return Ok(());
    }
    issue::write_file(path, content, mode)?;
    report.push((path.to_path_buf(), Outcome::Created));
    Ok(())
}

fn write_configs(o: &InitOptions, _ca: &Ca, report: &mut Report) -> Result<(), IssueError> {
    let dir = &o.dir;
    keep_or_write(
        &layout::tokens(dir),
        &tokens_example(),
        0o600,
        o.force,
        report,
    )?;
    keep_or_write(
        &layout::controller_config(dir),
        &controller_config(o),
        0o600,
        o.force,
        report,
    )?;
    for who in ["admin", "viewer"] {
        let pair = layout::Pair::new(dir, who);
        let text = topoctl_config(&o.server, &layout::ca(dir).cert, &pair);
        keep_or_write(
            &layout::topoctl_config(dir, who),
            &text,
            0o600,
            o.force,
            report,
        )?;
    }
    Ok(())
}

/// A random bearer token (244 random bits, hex).
pub fn random_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// kube-apiserver's token file format: `token,user,uid,"group1,group2"`.
fn tokens_example() -> String {
    format!(
        "# token,user,uid,\"group1,group2\" (kube-apiserver's --token-auth-file format)\n{},ci-viewer,ci-viewer-1,\"{}\"\n",
        random_token(),
        crate::VIEWERS_GROUP
    )
}

fn controller_config(o: &InitOptions) -> String {
    let endpoints = o
        .etcd_endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "# topo-controller configuration written by topo-pki init (paths relative to this file).
tls:
  certFile: controller.crt
  keyFile: controller.key
  clientCAFile: ca.crt
tokenFile: tokens.csv
etcd:
  endpoints: [{endpoints}]
  caFile: ca.crt
  certFile: controller-etcd.crt
  keyFile: controller-etcd.key
bindings:
  - role: admin
    groups: [\"{admins}\"]
  - role: view
    groups: [\"{viewers}\"]
  - role: node
    groups: [\"{nodes}\"]
  - role: metrics
    groups: [\"{metrics}\"]
",
        admins = crate::ADMINS_GROUP,
        viewers = crate::VIEWERS_GROUP,
        nodes = crate::NODES_GROUP,
        metrics = crate::METRICS_GROUP,
    )
}

/// A topoctl configuration file (SPEC.md "Trust").
pub fn topoctl_config(server: &str, ca: &Path, pair: &layout::Pair) -> String {
    format!(
        "server: {server}\ncertificate-authority: {}\nclient-certificate: {}\nclient-key: {}\n",
        ca.display(),
        pair.cert.display(),
        pair.key.display()
    )
}
