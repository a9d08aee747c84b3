//! The WebSocket of `topoctl exec` to the controller: HTTPS with topoctl's own TLS (the
//! cluster CA, the client certificate or the bearer token of TOPO_CONFIG), then an
//! HTTP/1.1 upgrade to `v5.channel.k8s.io` on
//! `/apis/topo.dev/v1alpha1/containers/NAME/exec?command=...`. A refusal before the
//! upgrade is the API's error (403, 404, 409, 503) and reads as every other one; the
//! session's framing is `topo_schema::exec`'s, driven by `cmd/exec.rs`.

use std::time::Duration;

use reqwest::Url;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self};
use topo_schema::api::API_PREFIX;
use topo_schema::exec::{ExecOptions, PROTOCOL};

// The error lives with the client's (which wraps it) so that client.rs needs nothing of this
// module: no import cycle.
pub use crate::client::ExecError;
use crate::client::{ClientError, api_error_from};
use crate::config::{Connection, Credentials};

/// How long the controller may take to accept the connection and the upgrade.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub type ExecSocket = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// The session's socket, once the controller (and the agent behind it) accepted it.
pub async fn connect(
    conn: &Connection,
    name: &str,
    opts: &ExecOptions,
) -> Result<ExecSocket, ClientError> {
    let server = conn.server.clone();
    let url = exec_url(&server, name, opts)?;
    let (host, port) = match (url.host_str(), url.port_or_known_default()) {
        (Some(h), Some(p)) => (
            h.trim_start_matches('[').trim_end_matches(']').to_string(),
            p,
        ),
        _ => return Err(ClientError::BadUrl(server)),
    };
    let connect_err = |detail: String| {
        ClientError::from(ExecError::Connect {
            server: server.clone(),
            detail,
        })
    };
    let (mut tls, seen) = crate::tls::client_config(conn)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server_name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|_| ClientError::BadUrl(server.clone()))?;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| connect_err(format!("no connection within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| connect_err(io_detail(&e)))?;
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(server_name, tcp)
        .await
        .map_err(|e| {
            let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).take();
            match crate::tls::explain(&e, conn, seen) {
                Some(text) => ClientError::Tls(text),
                None => connect_err(io_detail(&e)),
            }
        })?;
    let request = upgrade_request(conn, &url)?;
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::client_async(request, stream),
    )
    .await
    {
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(tungstenite::Error::Http(resp))) => {
            let body = resp
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            Err(ClientError::Api(api_error_from(resp.status(), &body)))
        }
        Ok(Err(e)) => Err(ExecError::Upgrade {
            server,
            detail: e.to_string(),
        }
        .into()),
        Err(_) => Err(ExecError::Upgrade {
            server,
            detail: format!("no answer within {CONNECT_TIMEOUT:?}"),
        }
        .into()),
    }
}

/// `wss://SERVER/apis/topo.dev/v1alpha1/containers/NAME/exec?QUERY`.
fn exec_url(server: &str, name: &str, opts: &ExecOptions) -> Result<Url, ClientError> {
    let bad = || ClientError::BadUrl(server.to_string());
    let mut url = Url::parse(server).map_err(|_| bad())?;
    if url.scheme() != "https" || url.cannot_be_a_base() {
        return Err(bad());
    }
    {
        let mut path = url.path_segments_mut().map_err(|_| bad())?;
        path.pop_if_empty();
        for s in API_PREFIX.split('/').filter(|s| !s.is_empty()) {
            path.push(s);
        }
        path.extend(["containers", name, "exec"]);
    }
    url.set_query(Some(&opts.to_query()));
    url.set_scheme("wss").map_err(|_| bad())?;
    Ok(url)
}

fn upgrade_request(
    conn: &Connection,
    url: &Url,
) -> Result<tungstenite::handshake::client::Request, ClientError> {
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|_| ClientError::BadUrl(conn.server.clone()))?;
    let h = req.headers_mut();
    h.insert("sec-websocket-protocol", HeaderValue::from_static(PROTOCOL));
    h.insert(
        "user-agent",
        HeaderValue::from_static(concat!("topoctl/", env!("CARGO_PKG_VERSION"))),
    );
    if let Credentials::Token(t) = &conn.credentials {
        let mut v = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
            ClientError::Tls("the token in TOPO_CONFIG is not a valid header value".into())
        })?;
        v.set_sensitive(true);
        h.insert("authorization", v);
    }
    Ok(req)
}

fn io_detail(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_the_api_path_over_wss() {
        let opts = ExecOptions {
            command: vec!["sh".into(), "-c".into(), "exit 3".into()],
            stdin: true,
            tty: false,
        };
        let u = exec_url("https://10.0.0.1:8443", "db", &opts).unwrap();
        assert_eq!(
            u.as_str(),
            "wss://10.0.0.1:8443/apis/topo.dev/v1alpha1/containers/db/exec?command=sh&command=-c&command=exit%203&stdin=true&stdout=true&stderr=true&tty=false"
        );
        assert!(exec_url("http://10.0.0.1:8443", "db", &opts).is_err());
    }
}
