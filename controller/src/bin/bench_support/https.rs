//! A bare HTTP/1.1 client over TLS with one of the PKI's identities (`Connection: close`):
//! the admin for the API, the metrics identity for `/metrics`, etcd's root for etcd's.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Result, anyhow};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone)]
pub struct Https(tokio_rustls::TlsConnector);

impl Https {
    /// The cluster admin (`admin.crt`): applies.
    pub fn admin(pki: &Path) -> Result<Https> {
        Https::identity(pki, &topo_pki::layout::admin(pki))
    }

    /// Any pair of the PKI directory `pki`, trusting its CA.
    pub fn identity(pki: &Path, pair: &topo_pki::layout::Pair) -> Result<Https> {
        let cfg = topo_pki::tls::client_config(
            &topo_pki::layout::ca(pki).cert,
            Some((&pair.cert, &pair.key)),
        )?;
        Ok(Https(tokio_rustls::TlsConnector::from(
            std::sync::Arc::new(cfg),
        )))
    }

    /// The status and the raw body.
    pub async fn request(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Vec<u8>)> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let mut s = self.0.connect(name, tcp).await?;
        let body = body.unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await?;
        s.write_all(&body).await?;
        // rustls keeps the last record until flushed: without it a body can wait forever.
        s.flush().await?;
        let mut resp = vec![];
        // A server that closes without close_notify still sent the whole response.
        match s.read_to_end(&mut resp).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !resp.is_empty() => {}
            Err(e) => return Err(e.into()),
        }
        let text = String::from_utf8_lossy(&resp[..resp.len().min(64)]);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("malformed HTTP response"))?;
        let split = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4)
            .unwrap_or(resp.len());
        let head = String::from_utf8_lossy(&resp[..split]).to_ascii_lowercase();
        let body = &resp[split..];
        if head.contains("transfer-encoding: chunked") {
            return Ok((status, dechunk(body)?));
        }
        Ok((status, body.to_vec()))
    }
}

/// The body of a chunked response (a `/metrics` page without a Content-Length).
fn dechunk(mut body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len());
    loop {
        let eol = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("malformed chunked body: no chunk size line"))?;
        let line = String::from_utf8_lossy(&body[..eol]);
        let hex = line.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(hex, 16).map_err(|_| anyhow!("malformed chunk size {hex:?}"))?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = body
            .get(..size)
            .ok_or_else(|| anyhow!("chunked body ends inside a chunk"))?;
        out.extend_from_slice(chunk);
        body = body.get(size + 2..).unwrap_or_default();
    }
}
