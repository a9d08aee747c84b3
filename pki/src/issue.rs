//! Making the cluster's certificates with rcgen (ECDSA P-256): the CA, then each identity
//! signed by it. Writing is idempotent: an existing certificate and key are kept unless the
//! caller forces new ones, so re-running `topo-pki init` never invalidates what is deployed.
//! Keys are written 0600 (created so, never widened afterwards).

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::layout::{self, Pair};

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to load the CA from {path}: {detail}")]
    BadCa { path: PathBuf, detail: String },
    #[error("failed to generate the certificate of {subject}")]
    Generate {
        subject: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("invalid {what} {value:?}: {expected}")]
    Invalid {
        what: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{path} exists but {other} is missing: remove it or pass --force")]
    HalfPair { path: PathBuf, other: PathBuf },
}

/// What a certificate may be used for (extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
    Both,
}

/// Who a certificate names: user = CN, group = O, and the names it serves (SANs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub cn: String,
    pub group: Option<String>,
    pub sans: Vec<String>,
    pub usage: Usage,
}

impl Subject {
    pub fn client(cn: &str, group: Option<&str>) -> Subject {
        Subject {
            cn: cn.to_string(),
            group: group.map(str::to_string),
            sans: vec![],
            usage: Usage::Client,
        }
    }
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clock skew between hosts) for `days` days.
    pub fn days(days: u32) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(i64::from(days.max(1))),
        }
    }
}

/// Default lifetime of the CA and of the identities it signs.
pub const CA_DAYS: u32 = 3650;
pub const LEAF_DAYS: u32 = 365;

/// The cluster's certificate authority.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
}

impl Ca {
    pub fn generate(cluster: &str, validity: Validity) -> Result<Ca, IssueError> {
        let gen_err = |source| IssueError::Generate {
            subject: format!("the CA of {cluster}"),
            source,
        };
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("topo CA {cluster}"));
        dn.push(DnType::OrganizationName, "topo");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.self_signed(&key).map_err(gen_err)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key,
        })
    }

    pub fn load(pair: &Pair) -> Result<Ca, IssueError> {
        let cert_pem = read(&pair.cert)?;
        let key_pem = read(&pair.key)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| IssueError::BadCa {
            path: pair.key.clone(),
            detail: e.to_string(),
        })?;
        // Parse once now, so a broken CA is reported here rather than at the first issue.
        Issuer::from_ca_cert_pem(&cert_pem, &key).map_err(|e| IssueError::BadCa {
            path: pair.cert.clone(),
            detail: e.to_string(),
        })?;
        Ok(Ca { cert_pem, key })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A new key and a certificate for `s`, signed by this CA: (certificate PEM, key PEM).
    pub fn issue(&self, s: &Subject, v: Validity) -> Result<(String, String), IssueError> {
        let gen_err = |source| IssueError::Generate {
            subject: s.cn.clone(),
            source,
        };
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key).map_err(gen_err)?;
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params = CertificateParams::new(s.sans.clone()).map_err(gen_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, s.cn.as_str());
        if let Some(g) = &s.group {
            dn.push(DnType::OrganizationName, g.as_str());
        }
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match s.usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Both => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        params.use_authority_key_identifier_extension = true;
        params.not_before = v.not_before;
        params.not_after = v.not_after;
        let cert = params.signed_by(&key, &issuer).map_err(gen_err)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn read(path: &Path) -> Result<String, IssueError> {
    std::fs::read_to_string(path).map_err(|source| IssueError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `content` to `path` with `mode` (a fresh file: an old one is replaced, so a key
/// never keeps wider permissions from before).
pub fn write_file(path: &Path, content: &str, mode: u32) -> Result<(), IssueError> {
    let werr = |source| IssueError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(werr)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(werr)?;
    f.write_all(content.as_bytes()).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(werr)
}

/// Whether an existing file was kept or a new one written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Kept,
}

/// Whether `pair` exists whole; a lone half is an error (never silently overwritten).
fn exists(pair: &Pair) -> Result<bool, IssueError> {
    match (pair.cert.exists(), pair.key.exists()) {
        (true, true) => Ok(true),
        (false, false) => Ok(false),
        (true, false) => Err(IssueError::HalfPair {
            path: pair.cert.clone(),
            other: pair.key.clone(),
        }),
        (false, true) => Err(IssueError::HalfPair {
            path: pair.key.clone(),
            other: pair.cert.clone(),
        }),
    }
}

/// Writes a certificate and key for `s` to `pair` unless both exist (or `force`).
pub fn ensure(
    ca: &Ca,
    pair: &Pair,
    s: &Subject,
    v: Validity,
    force: bool,
) -> Result<Outcome, IssueError> {
    if !force && exists(pair)? {
        return Ok(Outcome::Kept);
    }
    let (cert, key) = ca.issue(s, v)?;
    write_file(&pair.key, &key, 0o600)?;
    write_file(&pair.cert, &cert, 0o644)?;
    Ok(Outcome::Created)
}

/// Loads the CA of `dir`, or makes one (a new CA only when none exists, or with `force`).
pub fn ensure_ca(dir: &Path, cluster: &str, force: bool) -> Result<(Ca, Outcome), IssueError> {
    let pair = layout::ca(dir);
    if !force && exists(&pair)? {
        return Ok((Ca::load(&pair)?, Outcome::Kept));
    }
    let ca = Ca::generate(cluster, Validity::days(CA_DAYS))?;
    write_file(&pair.key, &ca.key_pem(), 0o600)?;
    write_file(&pair.cert, ca.cert_pem(), 0o644)?;
    Ok((ca, Outcome::Created))
}

/// A DNS-1123 label, as Node names are.
pub fn check_node_name(name: &str) -> Result<(), IssueError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(IssueError::Invalid {
            what: "node name",
            value: name.to_string(),
            expected: "a DNS-1123 label (lowercase letters, digits, '-', at most 63)",
        })
    }
}

/// The identity of node `name`: the API's `node` role and its etcd user, client and server
/// (a later agent endpoint serves with it), its underlay address as SAN.
pub fn node_subject(name: &str, address: Option<IpAddr>) -> Subject {
    Subject {
        cn: crate::node_user(name),
        group: Some(crate::NODES_GROUP.to_string()),
        sans: address.map(|a| vec![a.to_string()]).unwrap_or_default(),
        usage: Usage::Both,
    }
}

/// Writes node `name`'s identity into `dir` (idempotent unless `force`).
pub fn ensure_node(
    dir: &Path,
    ca: &Ca,
    name: &str,
    address: Option<IpAddr>,
    days: u32,
    force: bool,
) -> Result<Outcome, IssueError> {
    check_node_name(name)?;
    ensure(
        ca,
        &layout::node(dir, name),
        &node_subject(name, address),
        Validity::days(days),
        force,
    )
}
