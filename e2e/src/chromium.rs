//! A headless Chromium in the lab, driven over the DevTools protocol (CDP), for tests of the
//! controller's `/ui` page as a user's browser sees it.
//!
//! Chromium runs in the lab's network namespace (where the controller's address is), with a
//! fresh profile, and trusts the controller only by the pin of its serving key
//! (`--ignore-certificate-errors-spki-list`), never by ignoring certificate errors. It
//! listens for DevTools on a port it picks (`--remote-debugging-port=0`, read back from
//! `DevToolsActivePort` in the profile); that port is on the loopback of the lab's namespace,
//! so the test connects from a thread that joined that namespace (setns changes only the
//! calling thread; the socket stays in the namespace it was made in).
//!
//! The client is synchronous (tungstenite, the protocol core of tokio-tungstenite): the
//! harness is blocking code that polls with deadlines, and one request in flight at a time
//! is all a test needs. Every read has a timeout, so a hung browser fails the test with what
//! Chromium logged instead of hanging it. The whole process group is killed on drop.

use std::fs;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use base64::Engine;
use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tungstenite::{Message, WebSocket};

use crate::lab::Lab;
use crate::poll::{secs, try_poll};

/// How long one DevTools call may take (generous: the machine may be loaded).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ChromiumError {
    #[error("failed to make the browser's profile directory")]
    Profile(#[source] std::io::Error),
    #[error("failed to start chromium (is Debian's chromium installed? e2e/lab/install-deps.sh)")]
    Spawn(#[source] std::io::Error),
    #[error("chromium did not start its DevTools endpoint: {0}")]
    NoEndpoint(String),
    #[error("failed to connect to DevTools at {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed the DevTools WebSocket handshake: {0}")]
    Handshake(String),
    #[error("failed to talk to DevTools: {0}")]
    Socket(#[source] Box<tungstenite::Error>),
    #[error("DevTools answered {method} with an error: {error}")]
    Call { method: String, error: Value },
    #[error("DevTools gave an unexpected answer to {method}: {answer}")]
    Answer { method: String, answer: Value },
    #[error("failed to read the controller's certificate {path}: {reason}")]
    Certificate { path: String, reason: String },
}

/// The pin Chromium's `--ignore-certificate-errors-spki-list` takes: base64 of the SHA-256
/// of the certificate's SubjectPublicKeyInfo (DER).
pub fn spki_pin(cert_pem: &Path) -> Result<String, ChromiumError> {
    let err = |reason: String| ChromiumError::Certificate {
        path: cert_pem.display().to_string(),
        reason,
    };
    let pem = fs::read(cert_pem).map_err(|e| err(e.to_string()))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).map_err(|e| err(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| err(e.to_string()))?;
    let spki = cert.tbs_certificate.subject_pki.raw;
    Ok(base64::engine::general_purpose::STANDARD.encode(Sha256::digest(spki)))
}

/// The browser's process group, killed when dropped (also when the launch fails half-way).
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

/// A running headless Chromium with one page attached.
pub struct Chromium {
    ws: WebSocket<TcpStream>,
    session: String,
    next_id: u64,
    // Dropped after the socket, the process before its profile directory.
    _group: Group,
    profile: tempfile::TempDir,
}

impl Chromium {
    /// Starts Chromium in `lab`'s namespaces trusting the key pinned by `pin`, connects to
    /// DevTools and opens a blank page.
    pub fn launch(lab: &Lab, pin: &str) -> Result<Chromium, ChromiumError> {
        // Under the lab's directory: visible both in the lab's mount namespace and here.
        let profile = tempfile::Builder::new()
            .prefix("chromium-")
            .tempdir_in(lab.dir())
            .map_err(ChromiumError::Profile)?;
        let log = fs::File::create(profile.path().join(LOG)).map_err(ChromiumError::Profile)?;
        let log2 = log.try_clone().map_err(ChromiumError::Profile)?;
        let mut cmd = lab.command("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-port=0",
            "--window-size=1400,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--ignore-certificate-errors-spki-list={pin}"))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Chromium forks helpers (zygote, renderers): one group, killed together.
        .process_group(0);
        let group = Group(cmd.spawn().map_err(ChromiumError::Spawn)?);
        let (port, path) = wait_endpoint(profile.path())?;
        let ws = connect(lab, port, &path)?;
        let mut me = Chromium {
            ws,
            session: String::new(),
            next_id: 0,
            _group: group,
            profile,
        };
        me.attach()?;
        Ok(me)
    }

    /// What Chromium printed (for a failure's message).
    pub fn log(&self) -> String {
        fs::read_to_string(self.profile.path().join(LOG)).unwrap_or_default()
    }

    /// Opens a page target and attaches to it with a flat session: later calls go to it.
    fn attach(&mut self) -> Result<(), ChromiumError> {
        let target = self.browser_call("Target.createTarget", json!({"url": "about:blank"}))?;
        let id = field(&target, "targetId", "Target.createTarget")?;
        let attached = self.browser_call(
            "Target.attachToTarget",
            json!({"targetId": id, "flatten": true}),
        )?;
        self.session = field(&attached, "sessionId", "Target.attachToTarget")?;
        self.call("Page.enable", json!({}))?;
        Ok(())
    }

    fn browser_call(&mut self, method: &str, params: Value) -> Result<Value, ChromiumError> {
        self.send(None, method, params)
    }

    /// Calls `method` on the page; its `result`.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, ChromiumError> {
        let session = self.session.clone();
        self.send(Some(&session), method, params)
    }

    /// Sends one command and reads until its answer, skipping the events between.
    fn send(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, ChromiumError> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let socket = |e| ChromiumError::Socket(Box::new(e));
        self.ws
            .send(Message::text(msg.to_string()))
            .map_err(socket)?;
        loop {
            let text = match self.ws.read().map_err(socket)? {
                Message::Text(t) => t.to_string(),
                Message::Close(_) => {
                    return Err(ChromiumError::Answer {
                        method: method.into(),
                        answer: json!("the browser closed the connection"),
                    });
                }
                _ => continue,
            };
            let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if answer.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(error) = answer.get("error") {
                return Err(ChromiumError::Call {
                    method: method.into(),
                    error: error.clone(),
                });
            }
            return Ok(answer.get("result").cloned().unwrap_or(Value::Null));
        }
    }

    /// Loads `url` in the page (returns once navigation started; poll the DOM for the rest).
    pub fn navigate(&mut self, url: &str) -> Result<(), ChromiumError> {
        let r = self.call("Page.navigate", json!({"url": url}))?;
        match r.get("errorText").and_then(Value::as_str) {
            Some(e) if !e.is_empty() => Err(ChromiumError::Call {
                method: format!("Page.navigate {url}"),
                error: json!(e),
            }),
            _ => Ok(()),
        }
    }

    /// Evaluates a JavaScript expression in the page; its value (promises awaited).
    pub fn eval(&mut self, expression: &str) -> Result<Value, ChromiumError> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            return Err(ChromiumError::Call {
                method: format!("Runtime.evaluate {expression}"),
                error: e.clone(),
            });
        }
        Ok(r.pointer("/result/value").cloned().unwrap_or(Value::Null))
    }

    /// A PNG of the page as drawn (the whole page, not only the window).
    pub fn screenshot(&mut self) -> Result<Vec<u8>, ChromiumError> {
        let method = "Page.captureScreenshot";
        let r = self.call(
            method,
            json!({"format": "png", "captureBeyondViewport": true}),
        )?;
        let data = field(&r, "data", method)?;
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| ChromiumError::Answer {
                method: method.into(),
                answer: json!(e.to_string()),
            })
    }
}

const LOG: &str = "chromium.log";

fn field(v: &Value, name: &str, method: &str) -> Result<String, ChromiumError> {
    v.get(name)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ChromiumError::Answer {
            method: method.into(),
            answer: v.clone(),
        })
}

/// The port and browser path Chromium wrote to `DevToolsActivePort` once it listens.
fn wait_endpoint(profile: &Path) -> Result<(u16, String), ChromiumError> {
    let file = profile.join("DevToolsActivePort");
    try_poll("chromium to write DevToolsActivePort", secs(90), || {
        let text = fs::read_to_string(&file).map_err(|e| e.to_string())?;
        let mut lines = text.lines();
        match (lines.next().map(str::parse::<u16>), lines.next()) {
            (Some(Ok(port)), Some(path)) if path.starts_with('/') => Ok((port, path.to_string())),
            _ => Err(format!("DevToolsActivePort holds {text:?}")),
        }
    })
    .map(|(v, _)| v)
    .map_err(|e| {
        let log = fs::read_to_string(profile.join(LOG)).unwrap_or_default();
        ChromiumError::NoEndpoint(format!("{e}; chromium printed: {log}"))
    })
}

/// A TCP connection to `127.0.0.1:port` of the lab's network namespace.
fn tcp_in_lab(lab: &Lab, port: u16) -> Result<TcpStream, ChromiumError> {
    let addr = format!("127.0.0.1:{port}");
    let err = |source| ChromiumError::Connect {
        addr: addr.clone(),
        source,
    };
    let Some(holder) = lab.holder_pid() else {
        return TcpStream::connect(&addr).map_err(err);
    };
    let ns = format!("/proc/{holder}/ns/net");
    let target = addr.clone();
    std::thread::spawn(move || -> std::io::Result<TcpStream> {
        let f = fs::File::open(&ns)?;
        setns(f, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        TcpStream::connect(&target)
    })
    .join()
    .map_err(|_| err(std::io::Error::other("the connecting thread panicked")))?
    .map_err(err)
}

fn connect(lab: &Lab, port: u16, path: &str) -> Result<WebSocket<TcpStream>, ChromiumError> {
    let tcp = tcp_in_lab(lab, port)?;
    let timeout = |source| ChromiumError::Connect {
        addr: format!("127.0.0.1:{port}"),
        source,
    };
    tcp.set_read_timeout(Some(CALL_TIMEOUT)).map_err(timeout)?;
    tcp.set_write_timeout(Some(CALL_TIMEOUT)).map_err(timeout)?;
    let url = format!("ws://127.0.0.1:{port}{path}");
    let (ws, _) = tungstenite::client(url.as_str(), tcp)
        .map_err(|e| ChromiumError::Handshake(e.to_string()))?;
    Ok(ws)
}
