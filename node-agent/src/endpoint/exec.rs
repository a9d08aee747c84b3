//! `/containers/NAME/exec`: a command run in one of this node's containers, attached over a
//! WebSocket in kubectl's `v5.channel.k8s.io` framing (`topo_schema::exec` documents the
//! channels). Only the controller reaches this handler (the endpoint's gate); the user it
//! asks for rides in `Topo-User`, for this side's log line.
//!
//! Everything that can be refused is refused before the upgrade, as plain HTTP the
//! controller passes on: a bad query (400), a container not in this node's slice or without
//! its Docker container (404), one that is not running (409). After the upgrade the session
//! is: with a TTY, the first resize frame (the caller's terminal size, given to the engine
//! at create and again right after the start, before any input is fed), the exec started
//! attached, stdin and resize frames to the engine, output frames back as they come, and
//! once the output has ended the status frame with the exit code. (The engine applies a
//! size only to a running exec; a command that reads its size before reading any input
//! may still see 0x0, as with `docker exec -it`.)

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use topo_schema::exec::{
    EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, ExecOptions, ExecStatus, Frame, PROTOCOL, TerminalSize,
    channel,
};

use super::{EndpointState, USER_HEADER, own_observed, plain};
use crate::backend::{Containers, ExecOutput, ExecRequest, ExecSession};
use crate::error_chain::error_chain;

/// How long a TTY session waits for the caller's terminal size before starting at 80x24.
const FIRST_SIZE_WAIT: Duration = Duration::from_secs(2);
/// How long the engine may take to report the exit code once the output has ended.
const EXIT_CODE_WAIT: Duration = Duration::from_secs(10);
const DEFAULT_SIZE: TerminalSize = TerminalSize {
    width: 80,
    height: 24,
};

type Tx = SplitSink<WebSocket, Message>;
type Rx = SplitStream<WebSocket>;

pub(super) async fn container_exec(
    State(st): State<EndpointState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let opts = match ExecOptions::from_query(query.as_deref().unwrap_or("")) {
        Ok(o) => o,
        Err(e) => return plain(StatusCode::BAD_REQUEST, e),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return plain(
                StatusCode::BAD_REQUEST,
                format!("exec needs a WebSocket upgrade with subprotocol {PROTOCOL}: {e}"),
            );
        }
    };
    let container = match own_observed(&st, &name).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    if !container.running {
        return plain(
            StatusCode::CONFLICT,
            format!(
                "container {name} is not running ({}): it cannot exec",
                container.status
            ),
        );
    }
    let user = headers
        .get(USER_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let containers = st.backends.containers.clone();
    ws.protocols([PROTOCOL])
        .on_upgrade(move |socket| async move {
            let who = Who {
                name,
                user,
                id: container.id,
            };
            session(containers, socket, who, opts).await
        })
}

/// The container and the user a session runs for.
struct Who {
    name: String,
    user: String,
    id: String,
}

async fn session(containers: Arc<dyn Containers>, socket: WebSocket, who: Who, opts: ExecOptions) {
    let (mut tx, mut rx) = socket.split();
    let mut early = Vec::new();
    let tty = match opts.tty {
        true => Some(first_size(&mut rx, &mut early).await),
        false => None,
    };
    let request = ExecRequest {
        command: opts.command.clone(),
        stdin: opts.stdin,
        tty,
    };
    tracing::info!(container = %who.name, user = %who.user, command = ?opts.command,
        stdin = opts.stdin, tty = opts.tty, "exec started");
    let status = match containers.exec(&who.id, &request).await {
        Ok(s) => {
            if let Some(size) = tty {
                // Engines that ignore the size given at create (the lab's does) start the
                // terminal at 0x0: size it now, before any of the caller's input is fed,
                // so a command that reads its input first sees the caller's size.
                if let Err(e) = containers.exec_resize(&s.exec_id, size).await {
                    tracing::debug!(error = %error_chain(&e), "first exec resize failed");
                }
            }
            run(containers, s, &mut tx, rx, early).await
        }
        Err(e) => ExecStatus::failed("InternalError", error_chain(&e)),
    };
    tracing::info!(container = %who.name, user = %who.user, command = ?opts.command,
        exit_code = status.exit_code(), message = %status.message, "exec ended");
    let frame = Message::Binary(Frame::Status(status).encode().into());
    if tx.send(frame).await.is_ok() {
        let _ = tx.send(Message::Close(None)).await;
    }
}

/// The caller's terminal size: the first resize frame, or the default when none comes in
/// time. Frames before it are kept in `early` for the command.
async fn first_size(rx: &mut Rx, early: &mut Vec<Frame>) -> TerminalSize {
    let wait = async {
        while let Some(Ok(msg)) = rx.next().await {
            match decode(msg) {
                Some(Frame::Resize(s)) => return Some(s),
                Some(f) => early.push(f),
                None => {}
            }
        }
        None
    };
    tokio::time::timeout(FIRST_SIZE_WAIT, wait)
        .await
        .ok()
        .flatten()
        .unwrap_or(DEFAULT_SIZE)
}

/// The frame of a binary message; None for anything else (pings, text, a close).
fn decode(msg: Message) -> Option<Frame> {
    match msg {
        Message::Binary(b) => match Frame::decode(&b) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::debug!(error = %e, "ignored a frame");
                None
            }
        },
        _ => None,
    }
}

/// Relays until the command's output ends; returns its status.
async fn run(
    containers: Arc<dyn Containers>,
    mut s: ExecSession,
    tx: &mut Tx,
    rx: Rx,
    early: Vec<Frame>,
) -> ExecStatus {
    let input = tokio::spawn(feed(
        containers.clone(),
        s.exec_id.clone(),
        s.input,
        rx,
        early,
    ));
    let mut first: Option<Vec<u8>> = None;
    while let Some(chunk) = s.output.next().await {
        let frame = match chunk {
            Ok(ExecOutput::Stdout(b)) => Frame::Stdout(b.to_vec()),
            Ok(ExecOutput::Stderr(b)) => Frame::Stderr(b.to_vec()),
            Err(e) => {
                input.abort();
                return ExecStatus::failed("InternalError", error_chain(&e));
            }
        };
        if let (None, Frame::Stdout(b) | Frame::Stderr(b)) = (&first, &frame) {
            first = Some(b.iter().take(1024).copied().collect());
        }
        if tx
            .send(Message::Binary(frame.encode().into()))
            .await
            .is_err()
        {
            // The caller went away: the command keeps what it was doing (the engine has no
            // way to stop an exec), but it gets end of file on its standard input.
            break;
        }
    }
    input.abort();
    let status = exit_status(containers.as_ref(), &s.exec_id).await;
    not_found_is_127(status, first.as_deref().unwrap_or_default())
}

/// The engine reports 126 for every command it could not start, and says why as the
/// session's first output (`OCI runtime exec failed: ... executable file not found in
/// $PATH`). A shell — and `kubectl exec` users' scripts — tell "not found" (127) from "not
/// executable" (126): so does topo, from that message.
fn not_found_is_127(status: ExecStatus, first_output: &[u8]) -> ExecStatus {
    let text = String::from_utf8_lossy(first_output);
    let not_found = text.contains("OCI runtime exec failed")
        && (text.contains("executable file not found")
            || text.contains("no such file or directory"));
    if not_found && status.exit_code() == Some(EXIT_NOT_EXECUTABLE) {
        ExecStatus::exited(EXIT_NOT_FOUND)
    } else {
        status
    }
}

/// The caller's stdin, resize and close frames into the command.
async fn feed(
    containers: Arc<dyn Containers>,
    exec_id: String,
    mut input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    mut rx: Rx,
    early: Vec<Frame>,
) {
    let mut frames = futures::stream::iter(early.into_iter().map(Some))
        .chain(futures::stream::poll_fn(move |cx| {
            rx.poll_next_unpin(cx).map(|m| match m {
                Some(Ok(msg)) => Some(decode(msg)),
                _ => None,
            })
        }))
        .boxed();
    let mut open = true;
    while let Some(frame) = frames.next().await {
        match frame {
            Some(Frame::Stdin(b)) if open => {
                let written = input.write_all(&b).await.and(input.flush().await);
                if written.is_err() {
                    open = false;
                }
            }
            Some(Frame::Resize(size)) => {
                if let Err(e) = containers.exec_resize(&exec_id, size).await {
                    tracing::debug!(error = %error_chain(&e), "exec resize failed");
                }
            }
            // End of file for the command; resizes may still follow.
            Some(Frame::Close(channel::STDIN)) if open => {
                open = false;
                let _ = input.shutdown().await;
            }
            _ => {}
        }
    }
    // The caller went away: end of file for the command, if it was not given yet.
    if open {
        let _ = input.shutdown().await;
    }
}

/// The exit code the engine reports once the exec has ended.
async fn exit_status(containers: &dyn Containers, exec_id: &str) -> ExecStatus {
    let deadline = tokio::time::Instant::now() + EXIT_CODE_WAIT;
    loop {
        match containers.exec_exit_code(exec_id).await {
            Ok(Some(code)) => return ExecStatus::exited(i32::try_from(code).unwrap_or(1)),
            Ok(None) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(None) => {
                return ExecStatus::failed(
                    "InternalError",
                    format!(
                        "the engine still reports exec {exec_id} running after its output ended"
                    ),
                );
            }
            Err(e) => return ExecStatus::failed("InternalError", error_chain(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_s_126_for_a_missing_command_becomes_127() {
        let missing = b"OCI runtime exec failed: exec failed: unable to start container process: exec: \"nope\": executable file not found in $PATH: unknown\r\n";
        let denied = b"OCI runtime exec failed: exec failed: unable to start container process: exec: \"/etc/passwd\": permission denied: unknown\r\n";
        let code = |s: ExecStatus| s.exit_code();
        assert_eq!(
            code(not_found_is_127(ExecStatus::exited(126), missing)),
            Some(127)
        );
        assert_eq!(
            code(not_found_is_127(ExecStatus::exited(126), denied)),
            Some(126)
        );
        // A command that ran and printed those words itself keeps its own code.
        assert_eq!(
            code(not_found_is_127(ExecStatus::exited(1), missing)),
            Some(1)
        );
        assert_eq!(
            code(not_found_is_127(ExecStatus::exited(126), b"hello")),
            Some(126)
        );
    }
}
