//! A small OVSDB JSON-RPC 1.0 connection (RFC 7047 section 4) over a unix socket.
//!
//! Written here rather than taken from the `ovsdb` crate: its 0.0.6 client panics
//! (an unfinished `todo` macro) on any message the server starts (monitor `update`, `echo`) and on decode
//! errors, and its protocol types know neither `monitor` nor `update` (the agent's drift
//! stream), so they would not serve either; the crate is not a dependency. This one answers `echo`, routes notifications to a channel, matches responses to
//! requests by id, and turns every failure into an error (the connection then reports itself
//! closed and the owner reconnects).
//!
//! OVSDB messages are bare JSON objects written back to back with no framing. The reader
//! finds where each ends with a byte scanner that follows strings, escapes and nesting and
//! remembers where it stopped ([`FrameDecoder`]), and hands each complete message to
//! `serde_json` once: every byte is looked at twice whatever the message size and however
//! the socket splits it. (It used to reparse the buffered bytes from the start on every read,
//! quadratic in the size of a message that spans many reads: a 16 MiB monitor reply took
//! seconds; BENCHMARKS.md has the figures.) What a message means is [`classify`]'s, pure, so
//! both halves are fuzzed without a socket (`node-agent/tests/fuzz_ovsdb.rs`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

/// What can go wrong on the connection; `ovs.rs` maps it into its `RpcError`.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("failed to connect to ovsdb-server at {path}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to talk to ovsdb-server: the connection is closed")]
    Disconnected,
    #[error("failed to get an answer from ovsdb-server to {method} in time")]
    Timeout { method: String },
    #[error("failed to run {method}: {error}")]
    Rpc { method: String, error: String },
}

/// How long a request may wait for its answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest incomplete message the decoder buffers: a guard against a peer that never ends one.
pub const MAX_PENDING_BYTES: usize = 64 << 20;

/// Why the byte stream cannot be read on: the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("failed to decode a message from ovsdb-server")]
    Json(#[source] serde_json::Error),
    /// RFC 7047 messages are JSON objects; a top-level scalar has no end the scanner could see.
    #[error("failed to decode a message from ovsdb-server: byte {byte:#04x} starts no JSON object")]
    NotAnObject { byte: u8 },
    #[error("failed to decode a message from ovsdb-server: over {limit} bytes without its end")]
    TooLarge { limit: usize },
}

/// Splits a byte stream into JSON values (objects, or arrays), in one pass over each byte.
#[derive(Debug)]
pub struct FrameDecoder {
    /// The unfinished message, from its first byte (whitespace before it is dropped).
    buf: Vec<u8>,
    /// How much of `buf` the scanner has seen.
    scanned: usize,
    /// Open `{` and `[` of the message; 0 between messages.
    depth: usize,
    in_string: bool,
    /// The previous byte was a backslash inside a string.
    escaped: bool,
    limit: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::with_limit(MAX_PENDING_BYTES)
    }
}

impl FrameDecoder {
    /// A decoder that fails once an unfinished message exceeds `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            scanned: 0,
            depth: 0,
            in_string: false,
            escaped: false,
            limit,
        }
    }

    /// Adds `bytes` and returns every value completed by them, in order. After an error the
    /// stream is lost (the caller closes the connection).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Value>, FrameError> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        // Start of the unfinished message in `buf`.
        let mut start = 0;
        let mut i = self.scanned;
        while i < self.buf.len() {
            let b = self.buf[i];
            i += 1;
            if self.depth == 0 {
                match b {
                    b' ' | b'\t' | b'\n' | b'\r' => start = i,
                    b'{' | b'[' => self.depth = 1,
                    _ => return Err(FrameError::NotAnObject { byte: b }),
                }
            } else if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
            } else {
                match b {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth -= 1;
                        if self.depth == 0 {
                            let v = serde_json::from_slice(&self.buf[start..i])
                                .map_err(FrameError::Json)?;
                            out.push(v);
                            start = i;
                        }
                    }
                    _ => {}
                }
            }
        }
        // Only the unfinished message stays; it began in this read whenever one ended in it,
        // so what moves is never more than the bytes just added.
        if start > 0 {
            self.buf.drain(..start);
        }
        self.scanned = self.buf.len();
        if self.buf.len() > self.limit {
            return Err(FrameError::TooLarge { limit: self.limit });
        }
        Ok(out)
    }

    /// Bytes of the unfinished message.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// A message the server started that is not an `echo`: monitor updates and the like.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub method: String,
    pub params: Value,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, RpcError>>>>>;

/// One connection. Cloning shares it. Dropping the last clone closes it.
#[derive(Clone)]
pub struct RpcClient {
    out: mpsc::UnboundedSender<Value>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
    closed: Arc<tokio::sync::watch::Sender<bool>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RpcClient {
    /// Connects to the unix socket at `path`; notifications arrive on the returned receiver.
    pub async fn connect(
        path: &Path,
    ) -> Result<(RpcClient, mpsc::UnboundedReceiver<Notification>), RpcError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| RpcError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Self::from_stream(stream))
    }

    /// Runs the protocol over an established stream (tests use a socket pair).
    pub fn from_stream(stream: UnixStream) -> (RpcClient, mpsc::UnboundedReceiver<Notification>) {
        let (mut rd, mut wr) = stream.into_split();
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Value>();
        let (note_tx, note_rx) = mpsc::unbounded_channel();
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let (closed_tx, _) = tokio::sync::watch::channel(false);
        let closed = Arc::new(closed_tx);

        // Writer: serialises outgoing messages in order.
        let closed_w = closed.clone();
        tokio::spawn(async move {
            let mut closed_rx = closed_w.subscribe();
            loop {
                tokio::select! {
                    msg = out_rx.recv() => {
                        let Some(msg) = msg else { break };
                        let mut bytes = msg.to_string().into_bytes();
                        bytes.push(b'\n');
                        if let Err(e) = wr.write_all(&bytes).await {
                            debug!(error = %e, "ovsdb write failed");
                            break;
                        }
                    }
                    () = wait_closed(&mut closed_rx) => break,
                }
            }
            closed_w.send_replace(true);
        });

        // Reader: routes responses, answers echo, forwards notifications.
        let pending_r = pending.clone();
        let closed_r = closed.clone();
        let echo_tx = out_tx.clone();
        tokio::spawn(async move {
            let mut dec = FrameDecoder::default();
            let mut buf = vec![0u8; 64 * 1024];
            let mut closed_rx = closed_r.subscribe();
            loop {
                let n = tokio::select! {
                    r = rd.read(&mut buf) => match r {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) => {
                            debug!(error = %e, "ovsdb read failed");
                            break;
                        }
                    },
                    () = wait_closed(&mut closed_rx) => break,
                };
                let values = match dec.push(&buf[..n]) {
                    Ok(v) => v,
                    Err(e) => {
                        warn!(error = %e, source = ?std::error::Error::source(&e), "closing the connection");
                        break;
                    }
                };
                for v in values {
                    route(v, &pending_r, &echo_tx, &note_tx);
                }
            }
            closed_r.send_replace(true);
            // Everyone still waiting learns the connection is gone.
            for (_, tx) in lock(&pending_r).drain() {
                let _ = tx.send(Err(RpcError::Disconnected));
            }
        });

        (
            RpcClient {
                out: out_tx,
                pending,
                next_id: Arc::new(AtomicU64::new(1)),
                closed,
            },
            note_rx,
        )
    }

    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Closes the connection (both tasks end; pending calls fail with `Disconnected`).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Sends a request and waits for its result.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        if self.is_closed() {
            return Err(RpcError::Disconnected);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        if self
            .out
            .send(json!({"method": method, "params": params, "id": id}))
            .is_err()
        {
            lock(&self.pending).remove(&id);
            return Err(RpcError::Disconnected);
        }
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(r)) => r.map_err(|e| match e {
                RpcError::Rpc { error, .. } => RpcError::Rpc {
                    method: method.to_string(),
                    error,
                },
                other => other,
            }),
            Ok(Err(_)) => Err(RpcError::Disconnected),
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(RpcError::Timeout {
                    method: method.to_string(),
                })
            }
        }
    }
}

/// Resolves once the connection is marked closed (the guard `wait_for` returns is not `Send`,
/// so it must not live in a task's select output).
async fn wait_closed(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|c| *c).await;
}

/// What one message from the server is.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// The server's inactivity probe: answer with the same params.
    Echo { id: Value, params: Value },
    /// A message the server started that is not an `echo` (monitor `update`, ...).
    Notification(Notification),
    /// A request we do not serve: answer so the server does not wait.
    Request { id: Value },
    /// The answer to our request `id`: its result, or its error as text.
    Response {
        id: u64,
        result: Result<Value, String>,
    },
    /// Nothing we can act on (not an object, or an answer to no request of ours).
    Ignored { why: &'static str },
}

/// Says what `v` is (RFC 7047 section 4: requests have a method, notifications a null id,
/// responses a result and an error). Never fails: anything else is [`Incoming::Ignored`].
pub fn classify(v: Value) -> Incoming {
    let Value::Object(mut obj) = v else {
        return Incoming::Ignored {
            why: "a message that is not an object",
        };
    };
    if let Some(Value::String(method)) = obj.remove("method") {
        let params = obj.remove("params").unwrap_or(Value::Null);
        let id = obj.remove("id").unwrap_or(Value::Null);
        return if method == "echo" {
            Incoming::Echo { id, params }
        } else if id.is_null() {
            Incoming::Notification(Notification { method, params })
        } else {
            Incoming::Request { id }
        };
    }
    let Some(id) = obj.get("id").and_then(Value::as_u64) else {
        return Incoming::Ignored {
            why: "a response to no request of ours",
        };
    };
    let result = match obj.remove("error").unwrap_or(Value::Null) {
        Value::Null => Ok(obj.remove("result").unwrap_or(Value::Null)),
        Value::String(s) => Err(s),
        other => Err(other.to_string()),
    };
    Incoming::Response { id, result }
}

fn route(
    v: Value,
    pending: &Pending,
    out: &mpsc::UnboundedSender<Value>,
    notes: &mpsc::UnboundedSender<Notification>,
) {
    match classify(v) {
        // Keeps the server's inactivity probe from dropping us.
        Incoming::Echo { id, params } => {
            let _ = out.send(json!({"id": id, "result": params, "error": null}));
        }
        Incoming::Notification(n) => {
            let _ = notes.send(n);
        }
        Incoming::Request { id } => {
            let _ = out.send(json!({"id": id, "result": null, "error": "unknown method"}));
        }
        Incoming::Response { id, result } => {
            // None: the caller timed out and left.
            if let Some(tx) = lock(pending).remove(&id) {
                let _ = tx.send(result.map_err(|error| RpcError::Rpc {
                    method: String::new(),
                    error,
                }));
            }
        }
        Incoming::Ignored { why } => debug!("ovsdb-server sent {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_splits_and_keeps_partial_values() {
        let mut d = FrameDecoder::default();
        let a = br#"{"id":1,"result":[]}{"method":"echo","#;
        let v = d.push(a).unwrap();
        assert_eq!(v, vec![json!({"id":1,"result":[]})]);
        assert!(d.pending() > 0);
        let v = d.push(br#""params":[],"id":"echo"} "#).unwrap();
        assert_eq!(v, vec![json!({"method":"echo","params":[],"id":"echo"})]);
        assert_eq!(d.pending(), 0);
        // A value split inside a string and a number.
        let mut d = FrameDecoder::default();
        assert!(d.push(br#"{"a":"x"#).unwrap().is_empty());
        assert!(d.push(br#"y","n":12"#).unwrap().is_empty());
        assert_eq!(d.push(b"3}").unwrap(), vec![json!({"a":"xy","n":123})]);
        assert!(FrameDecoder::default().push(b"}{").is_err());
        // Brackets and quotes inside strings, escaped quotes, nested arrays.
        let mut d = FrameDecoder::default();
        let tricky = br#" {"a":"}{\"]","b":[[1],{"c":"\\"}]} ["x"] "#;
        for chunk in tricky.chunks(3) {
            let _ = d.push(chunk).unwrap();
        }
        let mut d = FrameDecoder::default();
        assert_eq!(
            d.push(tricky).unwrap(),
            vec![json!({"a":"}{\"]","b":[[1],{"c":"\\"}]}), json!(["x"])]
        );
        assert_eq!(d.pending(), 0);
        // Mismatched brackets and top-level scalars are errors, not hangs.
        assert!(matches!(
            FrameDecoder::default().push(b"[}"),
            Err(FrameError::Json(_))
        ));
        assert!(matches!(
            FrameDecoder::default().push(b"12 "),
            Err(FrameError::NotAnObject { byte: b'1' })
        ));
        // An unfinished message over the limit.
        let mut d = FrameDecoder::with_limit(8);
        assert!(d.push(br#"{"a":"#).unwrap().is_empty());
        assert!(matches!(
            d.push(b"\"0123\""),
            Err(FrameError::TooLarge { limit: 8 })
        ));
    }

    #[test]
    fn classify_says_what_a_message_is() {
        assert_eq!(
            classify(json!({"method":"echo","params":[1],"id":"e"})),
            Incoming::Echo {
                id: json!("e"),
                params: json!([1])
            }
        );
        assert_eq!(
            classify(json!({"method":"update","params":["m",{}],"id":null})),
            Incoming::Notification(Notification {
                method: "update".into(),
                params: json!(["m", {}])
            })
        );
        assert_eq!(
            classify(json!({"method":"lock","params":[],"id":7})),
            Incoming::Request { id: json!(7) }
        );
        assert_eq!(
            classify(json!({"id":3,"result":[{}],"error":null})),
            Incoming::Response {
                id: 3,
                result: Ok(json!([{}]))
            }
        );
        assert_eq!(
            classify(json!({"id":3,"result":null,"error":{"error":"x"}})),
            Incoming::Response {
                id: 3,
                result: Err(r#"{"error":"x"}"#.into())
            }
        );
        assert!(matches!(
            classify(json!({"id":"x","result":1})),
            Incoming::Ignored { .. }
        ));
        assert!(matches!(classify(json!([1])), Incoming::Ignored { .. }));
    }

    #[tokio::test]
    async fn client_answers_echo_routes_updates_and_fails_pending_on_close() {
        let (a, b) = UnixStream::pair().unwrap();
        let (client, mut notes) = RpcClient::from_stream(a);
        let (mut srd, mut swr) = b.into_split();

        let call = tokio::spawn({
            let c = client.clone();
            async move { c.call("transact", json!(["Open_vSwitch"])).await }
        });
        // Server side: read the request, send an echo, an update and then the response.
        let mut dec = FrameDecoder::default();
        let mut buf = vec![0u8; 4096];
        let req = loop {
            let n = srd.read(&mut buf).await.unwrap();
            if let Some(v) = dec.push(&buf[..n]).unwrap().pop() {
                break v;
            }
        };
        assert_eq!(req["method"], "transact");
        let id = req["id"].clone();
        let msgs = format!(
            "{}{}{}",
            json!({"method":"echo","params":["x"],"id":"echo"}),
            json!({"method":"update","params":["topo",{"Port":{}}],"id":null}),
            json!({"id":id,"result":[{"count":1}],"error":null})
        );
        swr.write_all(msgs.as_bytes()).await.unwrap();
        assert_eq!(call.await.unwrap().unwrap(), json!([{"count":1}]));
        let n = notes.recv().await.unwrap();
        assert_eq!(n.method, "update");
        // The echo reply.
        let reply = loop {
            let n = srd.read(&mut buf).await.unwrap();
            if let Some(v) = dec.push(&buf[..n]).unwrap().pop() {
                break v;
            }
        };
        assert_eq!(reply, json!({"id":"echo","result":["x"],"error":null}));

        // An error answer, then the server goes away while a call waits.
        let call = tokio::spawn({
            let c = client.clone();
            async move { c.call("transact", json!([])).await }
        });
        let req = loop {
            let n = srd.read(&mut buf).await.unwrap();
            if let Some(v) = dec.push(&buf[..n]).unwrap().pop() {
                break v;
            }
        };
        let err = json!({"id":req["id"],"result":null,"error":"not allowed"}).to_string();
        swr.write_all(err.as_bytes()).await.unwrap();
        assert!(
            matches!(call.await.unwrap(), Err(RpcError::Rpc { error, .. }) if error == "not allowed")
        );
        let call = tokio::spawn({
            let c = client.clone();
            async move { c.call("transact", json!([])).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(swr);
        drop(srd);
        assert!(matches!(call.await.unwrap(), Err(RpcError::Disconnected)));
        assert!(client.is_closed());
    }
}
