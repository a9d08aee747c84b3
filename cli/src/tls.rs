//! topoctl's TLS: the cluster CA as the only trust anchor, a client certificate when the
//! config names one, and plain words for what goes wrong — a server certificate from
//! another CA, an expired certificate (whose, and when), a refused client certificate, a
//! server that speaks plain HTTP. The verifier wraps rustls' own and remembers why it
//! refused the server's certificate, so the error can name the expiry date.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::{Connection, Credentials};

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error(
        "client certificate {path} expired on {at}\nhint: ask for a new one (topo-pki init --force, or topo-pki node NAME --force for a node)"
    )]
    ClientExpired { path: PathBuf, at: String },
    #[error(
        "{0}\nhint: check certificate-authority, client-certificate and client-key in TOPO_CONFIG"
    )]
    Files(#[from] topo_pki::tls::TlsError),
    #[error("failed to build the TLS configuration: {0}")]
    Config(String),
}

/// Why the server's certificate was refused, as the verifier saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerCertProblem {
    UnknownIssuer,
    Expired { not_after: Option<DateTime<Utc>> },
    Other(String),
}

#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    seen: Arc<Mutex<Option<ServerCertProblem>>>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let r = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        if let Err(rustls::Error::InvalidCertificate(e)) = &r {
            use rustls::CertificateError as C;
            let problem = match e {
                C::UnknownIssuer | C::BadSignature => ServerCertProblem::UnknownIssuer,
                C::Expired | C::ExpiredContext { .. } => ServerCertProblem::Expired {
                    not_after: topo_pki::check::info_der(end_entity.as_ref())
                        .ok()
                        .map(|i| i.not_after),
                },
                other => ServerCertProblem::Other(format!("{other:?}")),
            };
            *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(problem);
        }
        r
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Where the verifier notes why it refused the server's certificate.
pub type SeenSlot = Arc<Mutex<Option<ServerCertProblem>>>;

/// A client configuration for `conn`, and the slot where the verifier notes a refusal.
pub fn client_config(conn: &Connection) -> Result<(rustls::ClientConfig, SeenSlot), TlsSetupError> {
    if let Credentials::Certificate { cert, .. } = &conn.credentials {
        check_not_expired(cert)?;
    }
    let provider = topo_pki::tls::provider();
    let roots = Arc::new(topo_pki::tls::root_store(&conn.ca)?);
    let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsSetupError::Config(e.to_string()))?;
    let seen = Arc::new(Mutex::new(None));
    let verifier = Arc::new(RecordingVerifier {
        inner,
        seen: seen.clone(),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let cfg = match &conn.credentials {
        Credentials::Certificate { cert, key } => builder
            .with_client_auth_cert(
                topo_pki::tls::load_certs(cert)?,
                topo_pki::tls::load_key(key)?,
            )
            .map_err(|e| TlsSetupError::Config(e.to_string()))?,
        Credentials::Token(_) => builder.with_no_client_auth(),
    };
    Ok((cfg, seen))
}

/// Our own certificate, checked before a server has to refuse it.
fn check_not_expired(cert: &Path) -> Result<(), TlsSetupError> {
    if let Ok(info) = topo_pki::check::info_file(cert)
        && info.expired_at(Utc::now())
    {
        return Err(TlsSetupError::ClientExpired {
            path: cert.to_path_buf(),
            at: info.not_after.to_rfc3339(),
        });
    }
    Ok(())
}

/// The rustls error in a chain of sources (also inside an io::Error, whose `source()` skips
/// the error it wraps).
pub fn rustls_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(r) = s.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        // An io::Error's `source()` skips the error it wraps (and they nest): go inside.
        src = match s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => s.source(),
        };
    }
    None
}

/// A TLS failure in words, with a hint; None when it is not one.
pub fn explain(
    e: &(dyn std::error::Error + 'static),
    conn: &Connection,
    seen: Option<ServerCertProblem>,
) -> Option<String> {
    use rustls::AlertDescription as A;
    let r = rustls_cause(e)?;
    let server = &conn.server;
    let ca = conn.ca.display();
    let client_cert = match &conn.credentials {
        Credentials::Certificate { cert, .. } => cert.display().to_string(),
        Credentials::Token(_) => "(none: a token is used)".to_string(),
    };
    let text = match (r, seen) {
        (rustls::Error::InvalidCertificate(_), Some(ServerCertProblem::UnknownIssuer)) => format!(
            "the certificate of {server} is not signed by the certificate authority in {ca} (unknown CA)\nhint: is TOPO_CONFIG the configuration of this cluster? certificate-authority must be the cluster's ca.crt"
        ),
        (rustls::Error::InvalidCertificate(_), Some(ServerCertProblem::Expired { not_after })) => {
            format!(
                "the server certificate of {server} expired{}\nhint: renew the controller's certificate (topo-pki init --force, then restart topo-controller)",
                not_after
                    .map(|t| format!(" on {}", t.to_rfc3339()))
                    .unwrap_or_default()
            )
        }
        (rustls::Error::InvalidCertificate(c), _) => format!(
            "the certificate of {server} was refused: {c:?}\nhint: the certificate must name the address in --server / TOPO_SERVER"
        ),
        (rustls::Error::AlertReceived(A::UnknownCA | A::BadCertificate | A::DecryptError), _) => {
            format!(
                "{server} refused the client certificate {client_cert}: it is not signed by the cluster's CA\nhint: use an identity made by this cluster's topo-pki (client-certificate in TOPO_CONFIG)"
            )
        }
        (rustls::Error::AlertReceived(A::CertificateExpired), _) => format!(
            "{server} refused the client certificate {client_cert}: it expired\nhint: ask for a new one"
        ),
        (rustls::Error::InvalidMessage(_), _) => format!(
            "{server} does not speak TLS (a plain-HTTP server?): topo's API is HTTPS only\nhint: check the port in --server / TOPO_SERVER"
        ),
        (other, _) => format!("TLS with {server} failed: {other}"),
    };
    Some(text)
}
