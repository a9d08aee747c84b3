//! `topoctl exec NAME [-i] [-t] [-c NAME] -- CMD...`: a command run in a container, as
//! `kubectl exec` runs one in a pod. The way (controller → the node's agent → the Docker
//! engine) and who may take it are the controller's `exec.rs`; the framing is
//! `topo_schema::exec`.
//!
//! What the user sees is kubectl's: the command's stdout and stderr on ours, its exit code
//! as ours (126/127 when the engine could not run it); `-i` forwards our stdin, and its end
//! of file closes the command's; `-t` runs the command on a terminal: ours goes into raw
//! mode for the session (restored on every way out: a [`RawMode`] guard, dropped on return,
//! error and unwinding; Ctrl-C is then a byte for the remote terminal, as in kubectl, and
//! SIGTERM or SIGHUP end the session), and its size is sent first and again on every
//! SIGWINCH. `-it` where stdin is not a terminal warns as kubectl does and goes on without
//! one; `-t` without `-i` is no terminal, silently, as in kubectl.

use std::io::{IsTerminal, Write};

use futures::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use topo_schema::Kind;
use topo_schema::exec::{ExecOptions, ExecStatus, Frame, TerminalSize};

use super::{CliError, Ctx, parse_ref};
use crate::args::ExecArgs;
use crate::client::ClientError;
use crate::config::resolve;
use crate::exec::{ExecError, ExecSocket};

/// kubectl's words, so that scripts and people recognise them.
pub const NO_TTY_WARNING: &str =
    "Unable to use a TTY - input is not a terminal or the right kind of file";

/// NAME or container/NAME; `-c` may only repeat it.
fn container_name(a: &ExecArgs) -> Result<String, CliError> {
    let name = if a.name.contains('/') {
        let r = parse_ref(&a.name)?;
        if r.kind != Kind::Container {
            return Err(CliError::Usage(format!(
                "only containers run commands; {:?} names a {}",
                a.name,
                r.kind.as_str()
            )));
        }
        r.name
    } else {
        a.name.clone()
    };
    match &a.container {
        Some(c) if *c != name => Err(CliError::Usage(format!(
            "-c {c}: container/{name} is a single container; -c can only name it"
        ))),
        _ => Ok(name),
    }
}

pub async fn exec(ctx: &Ctx, a: ExecArgs) -> Result<i32, CliError> {
    let name = container_name(&a)?;
    // kubectl's rules: -t without -i is silently no terminal; -it without one warns.
    let tty = a.tty && a.stdin && std::io::stdin().is_terminal();
    if a.tty && a.stdin && !tty {
        eprintln!("{NO_TTY_WARNING}");
    }
    let conn = resolve(ctx.server_flag.as_deref(), &ctx.env)?;
    let opts = ExecOptions {
        command: a.command,
        stdin: a.stdin,
        tty,
    };
    let socket = crate::exec::connect(&conn, &name, &opts).await?;
    let _raw = match tty {
        true => Some(RawMode::enable()?),
        false => None,
    };
    let status = session(socket, &opts).await?;
    match status.exit_code() {
        Some(code) => Ok(code),
        None => Err(ClientError::from(ExecError::Remote(status.message)).into()),
    }
}

/// The local terminal in raw mode for as long as this lives.
struct RawMode;

impl RawMode {
    fn enable() -> Result<RawMode, CliError> {
        crossterm::terminal::enable_raw_mode().map_err(|e| {
            CliError::from(ClientError::from(ExecError::Session(format!(
                "failed to put the terminal in raw mode: {e}"
            ))))
        })?;
        Ok(RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

fn session_err(detail: impl Into<String>) -> CliError {
    ClientError::from(ExecError::Session(detail.into())).into()
}

/// Runs the session until the status arrives.
async fn session(socket: ExecSocket, opts: &ExecOptions) -> Result<ExecStatus, CliError> {
    let (mut tx, mut rx) = socket.split();
    let (frames, mut outgoing) = mpsc::channel::<Frame>(16);
    if opts.tty {
        // The size goes first: the agent starts the command at it.
        let _ = frames.send(Frame::Resize(terminal_size())).await;
        tokio::spawn(follow_resizes(frames.clone()));
    }
    if opts.stdin {
        tokio::spawn(forward_stdin(frames.clone()));
    }
    drop(frames);
    let writer = tokio::spawn(async move {
        while let Some(f) = outgoing.recv().await {
            if tx.send(Message::Binary(f.encode().into())).await.is_err() {
                return;
            }
        }
    });
    let mut term = signal(SignalKind::terminate()).map_err(|e| session_err(e.to_string()))?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| session_err(e.to_string()))?;
    let result = loop {
        let msg = tokio::select! {
            m = rx.next() => m,
            _ = term.recv() => break Err(session_err("interrupted (SIGTERM)")),
            _ = hup.recv() => break Err(session_err("interrupted (SIGHUP)")),
        };
        let bytes = match msg {
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Close(_))) | None => {
                break Err(session_err(
                    "the connection closed before the command's exit status arrived",
                ));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => break Err(session_err(e.to_string())),
        };
        match Frame::decode(&bytes) {
            Ok(Frame::Stdout(b)) => write_all(std::io::stdout(), &b)?,
            Ok(Frame::Stderr(b)) => write_all(std::io::stderr(), &b)?,
            Ok(Frame::Status(s)) => break Ok(s),
            Ok(_) => {}
            Err(e) => break Err(session_err(e.to_string())),
        }
    };
    writer.abort();
    result
}

fn write_all(mut out: impl Write, b: &[u8]) -> Result<(), CliError> {
    out.write_all(b)
        .and_then(|_| out.flush())
        .map_err(CliError::Write)
}

/// Our terminal's size (80x24 when it cannot be read).
fn terminal_size() -> TerminalSize {
    let (width, height) = crossterm::terminal::size().unwrap_or((80, 24));
    TerminalSize { width, height }
}

async fn follow_resizes(frames: mpsc::Sender<Frame>) {
    let Ok(mut winch) = signal(SignalKind::window_change()) else {
        return;
    };
    while winch.recv().await.is_some() {
        if frames.send(Frame::Resize(terminal_size())).await.is_err() {
            return;
        }
    }
}

async fn forward_stdin(frames: mpsc::Sender<Frame>) {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let frame = match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => Frame::Close(topo_schema::exec::channel::STDIN),
            Ok(n) => Frame::Stdin(buf[..n].to_vec()),
        };
        let last = matches!(frame, Frame::Close(_));
        if frames.send(frame).await.is_err() || last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(name: &str, container: Option<&str>) -> ExecArgs {
        ExecArgs {
            name: name.into(),
            stdin: false,
            tty: false,
            container: container.map(String::from),
            command: vec!["ls".into()],
        }
    }

    #[test]
    fn the_container_is_named_as_kubectl_names_a_pod() {
        assert_eq!(container_name(&args("db", None)).unwrap(), "db");
        assert_eq!(container_name(&args("container/db", None)).unwrap(), "db");
        assert_eq!(container_name(&args("db", Some("db"))).unwrap(), "db");
        assert!(container_name(&args("db", Some("web"))).is_err());
        assert!(container_name(&args("network/db", None)).is_err());
    }
}
