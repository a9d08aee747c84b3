//! A small image registry for the pull tests, speaking just enough of the registry v2 HTTP
//! API for the lab's dockerd to pull from it (`GET /v2/`, manifests, blobs), each repository
//! with a behaviour of its own:
//!
//! - `stall/...`: the manifest and config are served; the layer's response starts (headers and
//!   2 MiB of a 16 MiB body, enough for the engine to report progress) and then nothing more
//!   is ever sent — a registry that accepted the pull and stalled;
//! - `missing/...`: the manifest is unknown (404 `MANIFEST_UNKNOWN`, the registry's own
//!   error, which must reach the container's status).
//!
//! It listens on 127.0.0.1 of the lab's namespace (where dockerd runs; the engine trusts
//! plain HTTP on 127.0.0.0/8 without `--insecure-registry`). Each connection gets a thread;
//! stalled ones end when the registry is dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use crate::lab::Lab;

/// Bytes of the stalled layer sent before the stall, and the size it claims.
const STALL_SENT: usize = 2 * 1024 * 1024;
const STALL_CLAIMED: usize = 16 * 1024 * 1024;

pub struct Registry {
    port: u16,
    stop: Arc<AtomicBool>,
    /// Layer downloads started (each a stalled connection).
    pub layer_requests: Arc<AtomicUsize>,
}

struct Blobs {
    manifest: Vec<u8>,
    manifest_digest: String,
    config: Vec<u8>,
    config_digest: String,
    layer_digest: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn blobs() -> Blobs {
    // A made-up layer: only its digest is ever named, its bytes never finish.
    let layer_digest = format!("sha256:{}", sha256_hex(b"topo-e2e stalled layer"));
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(b"diff"))]},
    })
    .to_string()
    .into_bytes();
    let config_digest = format!("sha256:{}", sha256_hex(&config));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": config.len(),
            "digest": config_digest,
        },
        "layers": [{
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "size": STALL_CLAIMED,
            "digest": layer_digest,
        }],
    })
    .to_string()
    .into_bytes();
    let manifest_digest = format!("sha256:{}", sha256_hex(&manifest));
    Blobs {
        manifest,
        manifest_digest,
        config,
        config_digest,
        layer_digest,
    }
}

/// A TCP listener on 127.0.0.1 (any port) inside the lab's network namespace: a thread joins
/// the namespace of the lab's holder process just to bind it (a socket keeps the namespace it
/// was made in).
pub fn listen_in_lab(lab: &Lab) -> TcpListener {
    let holder = lab.holder_pid();
    thread::spawn(move || {
        if let Some(pid) = holder {
            let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
                .unwrap_or_else(|e| panic!("failed to open the lab's namespace: {e}"));
            use std::os::fd::AsRawFd;
            // SAFETY: setns(2) on a namespace file we hold open; it changes only this
            // short-lived thread's network namespace.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                r,
                0,
                "failed to join the lab's namespace: {}",
                std::io::Error::last_os_error()
            );
        }
        TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("failed to listen in the lab's namespace: {e}"))
    })
    .join()
    .unwrap_or_else(|_| panic!("the listening thread panicked"))
}

impl Registry {
    /// Starts the registry in the lab's namespace.
    pub fn start(lab: &Lab) -> Registry {
        let listener = listen_in_lab(lab);
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let stop = Arc::new(AtomicBool::new(false));
        let layer_requests = Arc::new(AtomicUsize::new(0));
        let blobs = Arc::new(blobs());
        let (s, n) = (stop.clone(), layer_requests.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (s, n, b) = (s.clone(), n.clone(), blobs.clone());
                thread::spawn(move || serve(conn, &b, &s, &n));
            }
        });
        Registry {
            port,
            stop,
            layer_requests,
        }
    }

    /// `127.0.0.1:PORT/REPO:TAG`
    pub fn image(&self, repo: &str, tag: &str) -> String {
        format!("127.0.0.1:{}/{repo}:{tag}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_millis(200),
        );
    }
}

fn respond(c: &mut TcpStream, status: &str, headers: &[(&str, &str)], body: &[u8], head: bool) {
    let mut out = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
    out.push_str("Docker-Distribution-Api-Version: registry/2.0\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let _ = c.write_all(out.as_bytes());
    if !head {
        let _ = c.write_all(body);
    }
}

/// Serves the requests of one connection (HTTP/1.1 keep-alive) until it closes or stalls.
fn serve(conn: TcpStream, b: &Blobs, stop: &AtomicBool, layers: &AtomicUsize) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut rd = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if rd.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
            return; // not HTTP (a TLS hello first: the engine then falls back to HTTP)
        };
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if rd.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length.min(1 << 20)];
        if rd.read_exact(&mut body).is_err() {
            return;
        }
        let head = method == "HEAD";
        if !route(&mut out, path, head, b, stop, layers) {
            return;
        }
    }
}

/// Answers one request; false when the connection must end (or stalled until the stop).
fn route(
    out: &mut TcpStream,
    path: &str,
    head: bool,
    b: &Blobs,
    stop: &AtomicBool,
    layers: &AtomicUsize,
) -> bool {
    let json = ("Content-Type", "application/json");
    if path == "/v2/" || path == "/v2" {
        respond(out, "200 OK", &[json], b"{}", head);
        return true;
    }
    let manifest_type = "application/vnd.docker.distribution.manifest.v2+json";
    if path.starts_with("/v2/missing/") {
        let err = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":"topo-e2e registry: no such image"}]}"#;
        respond(out, "404 Not Found", &[json], err, head);
        return true;
    }
    if path.starts_with("/v2/stall/") && path.contains("/manifests/") {
        let headers = [
            ("Content-Type", manifest_type),
            ("Docker-Content-Digest", b.manifest_digest.as_str()),
        ];
        respond(out, "200 OK", &headers, &b.manifest, head);
        return true;
    }
    if path.ends_with(&b.config_digest) {
        let headers = [
            ("Content-Type", "application/octet-stream"),
            ("Docker-Content-Digest", b.config_digest.as_str()),
        ];
        respond(out, "200 OK", &headers, &b.config, head);
        return true;
    }
    if path.ends_with(&b.layer_digest) {
        layers.fetch_add(1, Ordering::SeqCst);
        let headers = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {STALL_CLAIMED}\r\nContent-Type: application/octet-stream\r\nDocker-Content-Digest: {}\r\n\r\n",
            b.layer_digest
        );
        let _ = out.write_all(headers.as_bytes());
        let _ = out.write_all(&vec![0x1f; STALL_SENT]);
        let _ = out.flush();
        // The stall: the connection stays open and silent.
        while !stop.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(100));
        }
        return false;
    }
    let err = br#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#;
    respond(out, "404 Not Found", &[json], err, head);
    true
}
