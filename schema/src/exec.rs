//! `topoctl exec`'s wire protocol, shared by topoctl, the controller and the agent: the
//! query that names the command, and kubectl's `v5.channel.k8s.io` framing of the
//! WebSocket that carries the session.
//!
//! The path is `GET /apis/topo.dev/v1alpha1/containers/NAME/exec?command=sh&command=-c&
//! command=...&stdin=true&stdout=true&stderr=true&tty=true` at the controller (kube's
//! pods/exec query: one `command` per argument), upgraded to a WebSocket whose
//! subprotocol is [`PROTOCOL`]; the controller opens the same to the agent at
//! `/containers/NAME/exec` and relays each message unchanged, both ways.
//!
//! Every binary WebSocket message is one frame: its first byte is the channel, the rest
//! the payload.
//!
//! | channel | direction | payload |
//! |---|---|---|
//! | 0 stdin | to the command | bytes of its standard input |
//! | 1 stdout | from the command | bytes of its standard output (with a TTY: all output) |
//! | 2 stderr | from the command | bytes of its standard error (never with a TTY) |
//! | 3 status | from the command, last | JSON [`ExecStatus`]: kube's `Status`, the exit code in `details.causes` |
//! | 4 resize | to the command | JSON [`TerminalSize`] `{"Width":80,"Height":24}` |
//! | 255 close | either | one byte: the channel that is closed (`[255, 0]`: end of stdin) |
//!
//! The status frame is sent once, after the command has exited and all of its output has
//! been sent; the WebSocket closes after it. Framing is kept here, free of any WebSocket
//! crate, so that each side uses the one its HTTP stack brings.

use serde::{Deserialize, Serialize};

/// The WebSocket subprotocol (kubectl's, whose framing this is).
pub const PROTOCOL: &str = "v5.channel.k8s.io";

/// The channels of [`Frame`].
pub mod channel {
    pub const STDIN: u8 = 0;
    pub const STDOUT: u8 = 1;
    pub const STDERR: u8 = 2;
    pub const STATUS: u8 = 3;
    pub const RESIZE: u8 = 4;
    pub const CLOSE: u8 = 255;
}

/// The exit code of a command that could not be run because it is not executable
/// (Docker's, and the shell's).
pub const EXIT_NOT_EXECUTABLE: i32 = 126;
/// The exit code of a command that was not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// A terminal's size in characters (channel 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

/// One message of the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Stdin(Vec<u8>),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Status(ExecStatus),
    Resize(TerminalSize),
    /// The channel that will carry nothing more.
    Close(u8),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("failed to decode an exec frame: it is empty (expected a channel byte)")]
    Empty,
    #[error("failed to decode an exec frame: unknown channel {0}")]
    UnknownChannel(u8),
    #[error("failed to decode the JSON of exec channel {channel}: {message}")]
    Json { channel: u8, message: String },
    #[error("failed to decode an exec close frame: expected one byte naming the channel")]
    BadClose,
}

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        let (ch, body): (u8, Vec<u8>) = match self {
            Frame::Stdin(b) => (channel::STDIN, b.clone()),
            Frame::Stdout(b) => (channel::STDOUT, b.clone()),
            Frame::Stderr(b) => (channel::STDERR, b.clone()),
            Frame::Status(s) => (channel::STATUS, json_bytes(s)),
            Frame::Resize(s) => (channel::RESIZE, json_bytes(s)),
            Frame::Close(c) => (channel::CLOSE, vec![*c]),
        };
        let mut out = Vec::with_capacity(body.len() + 1);
        out.push(ch);
        out.extend_from_slice(&body);
        out
    }

    pub fn decode(msg: &[u8]) -> Result<Frame, FrameError> {
        let (&ch, body) = msg.split_first().ok_or(FrameError::Empty)?;
        let json_err = |e: serde_json::Error| FrameError::Json {
            channel: ch,
            message: e.to_string(),
        };
        Ok(match ch {
            channel::STDIN => Frame::Stdin(body.to_vec()),
            channel::STDOUT => Frame::Stdout(body.to_vec()),
            channel::STDERR => Frame::Stderr(body.to_vec()),
            channel::STATUS => Frame::Status(serde_json::from_slice(body).map_err(json_err)?),
            channel::RESIZE => Frame::Resize(serde_json::from_slice(body).map_err(json_err)?),
            channel::CLOSE => match body {
                [c] => Frame::Close(*c),
                _ => return Err(FrameError::BadClose),
            },
            other => return Err(FrameError::UnknownChannel(other)),
        })
    }
}

fn json_bytes<T: Serialize>(v: &T) -> Vec<u8> {
    // Both types are plain structs of strings and numbers: serializing cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

/// The end of a session (channel 3), shaped as kube's `metav1.Status` so that tools that
/// read kubectl's protocol read this too: `Success`, or `Failure` with reason
/// `NonZeroExitCode` and the code as the message of an `ExitCode` cause, or `Failure`
/// with another reason and a message when the command could not be run at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStatus {
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusDetails {
    #[serde(default)]
    pub causes: Vec<StatusCause>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCause {
    pub reason: String,
    pub message: String,
}

impl ExecStatus {
    /// The status of a command that exited with `code`.
    pub fn exited(code: i32) -> ExecStatus {
        if code == 0 {
            return ExecStatus {
                status: "Success".into(),
                message: String::new(),
                reason: String::new(),
                details: None,
            };
        }
        ExecStatus {
            status: "Failure".into(),
            message: format!("command terminated with non-zero exit code: {code}"),
            reason: "NonZeroExitCode".into(),
            details: Some(StatusDetails {
                causes: vec![StatusCause {
                    reason: "ExitCode".into(),
                    message: code.to_string(),
                }],
            }),
        }
    }

    /// The status of a session that failed before or around the command (no exit code).
    pub fn failed(reason: &str, message: impl Into<String>) -> ExecStatus {
        ExecStatus {
            status: "Failure".into(),
            message: message.into(),
            reason: reason.into(),
            details: None,
        }
    }

    /// The command's exit code; None when the session failed without one.
    pub fn exit_code(&self) -> Option<i32> {
        if self.status == "Success" {
            return Some(0);
        }
        self.details
            .as_ref()?
            .causes
            .iter()
            .find(|c| c.reason == "ExitCode")?
            .message
            .parse()
            .ok()
    }
}

/// What to run and which streams to attach (the query of the exec path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOptions {
    pub command: Vec<String>,
    pub stdin: bool,
    pub tty: bool,
}

impl ExecOptions {
    /// The query string (without `?`); stdout and stderr are always attached.
    pub fn to_query(&self) -> String {
        let mut parts: Vec<String> = self
            .command
            .iter()
            .map(|c| format!("command={}", percent_encode(c)))
            .collect();
        parts.push(format!("stdin={}", self.stdin));
        parts.push("stdout=true".into());
        parts.push("stderr=true".into());
        parts.push(format!("tty={}", self.tty));
        parts.join("&")
    }

    /// Parses a query string; the error says what is wrong with it.
    pub fn from_query(query: &str) -> Result<ExecOptions, String> {
        let mut o = ExecOptions {
            command: Vec::new(),
            stdin: false,
            tty: false,
        };
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let v = percent_decode(v)?;
            let flag = || match v.as_str() {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(format!("invalid {k} {v:?} (expected true or false)")),
            };
            match k {
                "command" => o.command.push(v),
                "stdin" => o.stdin = flag()?,
                "tty" => o.tty = flag()?,
                "stdout" | "stderr" => {
                    flag()?;
                }
                _ => {
                    return Err(format!(
                        "unknown exec option {k:?} (command, stdin, stdout, stderr, tty)"
                    ));
                }
            }
        }
        if o.command.is_empty() {
            return Err("no command: give at least one command=ARG".into());
        }
        if o.command.len() > crate::limits::MAX_COMMAND_ARGS {
            return Err(format!(
                "the command has {} arguments, more than {}",
                o.command.len(),
                crate::limits::MAX_COMMAND_ARGS
            ));
        }
        Ok(o)
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("invalid percent-encoding in {s:?}"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_with_a_channel_byte_first() {
        let frames = [
            Frame::Stdin(b"ls\n".to_vec()),
            Frame::Stdout(vec![0, 255, 10]),
            Frame::Stderr(Vec::new()),
            Frame::Status(ExecStatus::exited(3)),
            Frame::Status(ExecStatus::exited(0)),
            Frame::Resize(TerminalSize {
                width: 80,
                height: 24,
            }),
            Frame::Close(channel::STDIN),
        ];
        for f in frames {
            let bytes = f.encode();
            assert_eq!(Frame::decode(&bytes).unwrap(), f);
        }
        assert_eq!(Frame::Stdin(b"x".to_vec()).encode(), [0, b'x']);
        assert_eq!(Frame::Close(0).encode(), [255, 0]);
        assert_eq!(
            Frame::Resize(TerminalSize {
                width: 100,
                height: 50
            })
            .encode(),
            b"\x04{\"Width\":100,\"Height\":50}"
        );
    }

    #[test]
    fn bad_frames_are_refused() {
        assert_eq!(Frame::decode(&[]), Err(FrameError::Empty));
        assert_eq!(Frame::decode(&[7, 1]), Err(FrameError::UnknownChannel(7)));
        assert_eq!(Frame::decode(&[255]), Err(FrameError::BadClose));
        assert!(matches!(
            Frame::decode(b"\x04{\"Width\":-1}"),
            Err(FrameError::Json { channel: 4, .. })
        ));
    }

    #[test]
    fn the_status_carries_the_exit_code_as_kube_does() {
        let s = ExecStatus::exited(3);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["status"], "Failure");
        assert_eq!(json["reason"], "NonZeroExitCode");
        assert_eq!(json["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(json["details"]["causes"][0]["message"], "3");
        assert_eq!(s.exit_code(), Some(3));
        assert_eq!(ExecStatus::exited(0).exit_code(), Some(0));
        assert_eq!(
            serde_json::to_string(&ExecStatus::exited(0)).unwrap(),
            r#"{"status":"Success"}"#
        );
        assert_eq!(
            ExecStatus::failed("InternalError", "docker went away").exit_code(),
            None
        );
    }

    #[test]
    fn options_round_trip_through_the_query() {
        let o = ExecOptions {
            command: vec!["sh".into(), "-c".into(), "echo a&b=c %d + é".into()],
            stdin: true,
            tty: false,
        };
        let q = o.to_query();
        assert!(
            q.starts_with("command=sh&command=-c&command=echo%20a%26b%3Dc"),
            "{q}"
        );
        assert_eq!(ExecOptions::from_query(&q).unwrap(), o);
        assert!(
            ExecOptions::from_query("stdin=true")
                .unwrap_err()
                .contains("no command")
        );
        assert!(
            ExecOptions::from_query("command=ls&tty=maybe")
                .unwrap_err()
                .contains("invalid tty")
        );
        assert!(
            ExecOptions::from_query("command=ls&container=x")
                .unwrap_err()
                .contains("unknown exec option")
        );
        assert!(ExecOptions::from_query("command=%zz").is_err());
    }
}
