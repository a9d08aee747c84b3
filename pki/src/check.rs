//! What each certificate of a PKI directory names and when it expires, so that "the
//! handshake failed" becomes "admin.crt expired on 2026-01-02".

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use x509_parser::prelude::{FromDer, X509Certificate};

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to parse {path}: {detail}")]
    Parse { path: PathBuf, detail: String },
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub common_name: Option<String>,
    pub issuer: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

impl CertInfo {
    pub fn expired_at(&self, now: DateTime<Utc>) -> bool {
        now > self.not_after
    }
    pub fn not_yet_valid_at(&self, now: DateTime<Utc>) -> bool {
        now < self.not_before
    }
}

fn ts(t: x509_parser::time::ASN1Time) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or_default()
}

/// Parses one DER certificate.
pub fn info_der(der: &[u8]) -> Result<CertInfo, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        common_name,
        issuer: cert.issuer().to_string(),
        not_before: ts(cert.validity().not_before),
        not_after: ts(cert.validity().not_after),
    })
}

/// The first certificate of a PEM file.
pub fn info_file(path: &Path) -> Result<CertInfo, CheckError> {
    let text = std::fs::read(path).map_err(|source| CheckError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let perr = |detail: String| CheckError::Parse {
        path: path.to_path_buf(),
        detail,
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text).map_err(|e| perr(e.to_string()))?;
    info_der(&pem.contents).map_err(perr)
}

/// One line of `topo-pki check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub path: PathBuf,
    pub info: Option<CertInfo>,
    /// `ok`, `expires soon`, `EXPIRED`, `not yet valid`, or why it could not be read.
    pub verdict: String,
    pub bad: bool,
}

/// Every `*.crt` of `dir` and `dir/nodes`, judged at `now` with `warn_days` of warning.
pub fn check_dir(dir: &Path, now: DateTime<Utc>, warn_days: i64) -> Vec<Finding> {
    let mut paths = Vec::new();
    for d in [dir.to_path_buf(), crate::layout::nodes_dir(dir)] {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "crt") {
                    paths.push(p);
                }
            }
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p| judge(&p, now, warn_days))
        .collect()
}

pub fn judge(path: &Path, now: DateTime<Utc>, warn_days: i64) -> Finding {
    match info_file(path) {
        Err(e) => Finding {
            path: path.to_path_buf(),
            info: None,
            verdict: e.to_string(),
            bad: true,
        },
        Ok(info) => {
            let (verdict, bad) = if info.expired_at(now) {
                (format!("EXPIRED on {}", info.not_after.to_rfc3339()), true)
            } else if info.not_yet_valid_at(now) {
                (
                    format!("not valid before {}", info.not_before.to_rfc3339()),
                    true,
                )
            } else {
                let left = (info.not_after - now).num_days();
                if left < warn_days {
                    (
                        format!(
                            "expires in {left} days ({})",
                            info.not_after.format("%Y-%m-%d")
                        ),
                        true,
                    )
                } else {
                    (
                        format!("ok until {}", info.not_after.format("%Y-%m-%d")),
                        false,
                    )
                }
            };
            Finding {
                path: path.to_path_buf(),
                info: Some(info),
                verdict,
                bad,
            }
        }
    }
}
