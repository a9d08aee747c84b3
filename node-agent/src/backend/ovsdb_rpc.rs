//! A small OVSDB JSON-RPC 1.0 connection (RFC 7047 section 4) over a unix socket.
//!
//! Written here rather than taken from the `ovsdb` crate: its 0.0.6 client panics
//! (an unfinished `todo` macro) on any message the server starts (monitor `update`, `echo`) and on decode
//! errors, and its protocol types know neither `monitor` nor `update` (the agent's drift
//! stream), so they would not serve either; the crate is not a dependency. This one answers `echo`, routes notifications to a channel, matches responses to
//! requests by id, and turns every failure into an error (the connection then reports itself
//! closed and the owner reconnects).
//!
//! OVSDB messages are bare JSON values written back to back with no framing, so the reader
//! runs `serde_json`'s streaming deserializer over a growing buffer and keeps the bytes of an
//! incomplete value for the next read ([`FrameDecoder`]).

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
/// Largest buffered incomplete message: a guard against a peer that never ends a value.
const MAX_PENDING_BYTES: usize = 64 << 20;

/// Splits a byte stream into JSON values.
#[derive(Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// Adds `bytes` and returns every value completed by them, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Value>, serde_json::Error> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut stream = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
        let consumed = loop {
            match stream.next() {
                Some(Ok(v)) => out.push(v),
                Some(Err(e)) if e.is_eof() => break stream.byte_offset(),
                Some(Err(e)) => return Err(e),
                None => break stream.byte_offset(),
            }
        };
        self.buf.drain(..consumed);
        // Whitespace between values is skipped by the next parse; drop a buffer of only that.
        if self.buf.iter().all(u8::is_ascii_whitespace) {
            self.buf.clear();
        }
        Ok(out)
    }

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
                        warn!(error = %e, "ovsdb-server sent something that is not JSON; closing");
                        break;
                    }
                };
                if dec.pending() > MAX_PENDING_BYTES {
                    warn!("ovsdb-server message too large; closing");
                    break;
                }
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

fn route(
    v: Value,
    pending: &Pending,
    out: &mpsc::UnboundedSender<Value>,
    notes: &mpsc::UnboundedSender<Notification>,
) {
    let Some(obj) = v.as_object() else {
        warn!("ovsdb-server sent a message that is not an object");
        return;
    };
    if let Some(method) = obj.get("method").and_then(Value::as_str) {
        let params = obj.get("params").cloned().unwrap_or(Value::Null);
        let id = obj.get("id").cloned().unwrap_or(Value::Null);
        if method == "echo" {
            // Keeps the server's inactivity probe from dropping us.
            let _ = out.send(json!({"id": id, "result": params, "error": null}));
        } else if id.is_null() {
            let _ = notes.send(Notification {
                method: method.to_string(),
                params,
            });
        } else {
            // A request we do not serve: say so rather than leave the server waiting.
            let _ = out.send(json!({"id": id, "result": null, "error": "unknown method"}));
        }
        return;
    }
    let Some(id) = obj.get("id").and_then(Value::as_u64) else {
        debug!("ovsdb-server sent a response to no request of ours");
        return;
    };
    let Some(tx) = lock(pending).remove(&id) else {
        // The caller timed out and left.
        return;
    };
    let error = obj.get("error").cloned().unwrap_or(Value::Null);
    let r = if error.is_null() {
        Ok(obj.get("result").cloned().unwrap_or(Value::Null))
    } else {
        let text = match &error {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Err(RpcError::Rpc {
            method: String::new(),
            error: text,
        })
    };
    let _ = tx.send(r);
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
