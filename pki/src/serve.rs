//! Serving HTTPS only, for the controller's API and the agent's endpoint alike: a TCP
//! accept loop, rustls (ring provider), and hyper on each connection with what the caller
//! makes of the verified client certificate (`peer`) attached to every request of that
//! connection. A client that speaks plain HTTP gets one plain-text 400 saying to use https
//! (rather than a confusing TLS alert) and the connection is closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How long a client may take to send its first byte and finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests get after shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: 101\r\n\r\n{\"reason\":\"BadRequest\",\"code\":400,\"message\":\"this server speaks HTTPS only: use https:// in the URL\"}";

/// Accepts until `shutdown`, then drains the connections. `peer` turns the client
/// certificate the handshake verified (None: the client presented none) into the request
/// extension handlers authenticate by.
pub async fn serve_tls<P, T>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: CancellationToken,
    peer: P,
) -> std::io::Result<()>
where
    P: Fn(Option<&[u8]>) -> T + Clone + Send + 'static,
    T: Clone + Send + Sync + 'static,
{
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, addr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        let identify = peer.clone();
        tokio::spawn(async move {
            let Some(stream) = handshake(acceptor, tcp, addr).await else {
                return;
            };
            let peer_identity = identify(
                stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.as_ref()),
            );
            let svc = app.map_request(move |mut req: axum::http::Request<_>| {
                req.extensions_mut().insert(peer_identity.clone());
                req
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(svc),
            );
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
    }
    Ok(())
}

/// The TLS handshake, or None (plain HTTP answered, handshake failed or too slow).
async fn handshake(
    acceptor: TlsAcceptor,
    mut tcp: TcpStream,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return None,
    }
    // 0x16: a TLS handshake record. Anything else printable is someone speaking HTTP.
    if first[0] != 0x16 {
        tracing::info!(%peer, "plain HTTP on the HTTPS port; answered 400");
        let _ = tcp.write_all(PLAIN_HTTP_ANSWER).await;
        let _ = tcp.shutdown().await;
        return None;
    }
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            // An unknown CA, an expired certificate: the client got the alert; say it here too.
            tracing::info!(%peer, error = %e, "TLS handshake refused");
            None
        }
        Err(_) => {
            tracing::info!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// Who a verified client certificate names: user = CN, groups = every O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub user: String,
    pub groups: Vec<String>,
}

/// The subject of a client certificate (DER); None when it has no CN.
pub fn peer_of_cert(der: &[u8]) -> Option<Peer> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let user = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups = cert
        .subject()
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    (!user.is_empty()).then_some(Peer { user, groups })
}
