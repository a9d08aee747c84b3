//! Running commands with a deadline: a hung `docker exec` or `topoctl` must fail a test with
//! what it printed so far, never hang the CI job.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("failed to start `{cmd}`")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to wait for `{cmd}`")]
    Wait {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "`{cmd}` did not finish within {timeout:?} (killed); stdout so far: {stdout:?}; stderr so far: {stderr:?}"
    )]
    Timeout {
        cmd: String,
        timeout: Duration,
        stdout: String,
        stderr: String,
    },
}

/// What a finished command printed and how it ended.
#[derive(Debug, Clone)]
pub struct Output {
    pub cmd: String,
    /// None when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The output, or a panic that shows the command, its exit status and both streams.
    #[track_caller]
    pub fn ok(self) -> Output {
        if !self.success() {
            panic!("{}", self.describe_failure());
        }
        self
    }

    pub fn describe_failure(&self) -> String {
        format!(
            "`{}` exited with {}\n--- stdout\n{}\n--- stderr\n{}",
            self.cmd,
            self.code
                .map_or_else(|| "a signal".to_string(), |c| format!("status {c}")),
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    /// stdout and stderr together (e.g. for searching a message wherever it went).
    pub fn combined(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// A shell-like rendering of a command line, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut parts = vec![quote(&cmd.get_program().to_string_lossy())];
    parts.extend(cmd.get_args().map(|a| quote(&a.to_string_lossy())));
    parts.join(" ")
}

fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A pipe read on its own thread, so a child that fills one pipe never blocks on it.
struct Collector {
    buf: Arc<Mutex<Vec<u8>>>,
    done: mpsc::Receiver<()>,
}

impl Collector {
    fn start<R: Read + Send + 'static>(pipe: Option<R>) -> Collector {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let (tx, done) = mpsc::channel();
        let b = Arc::clone(&buf);
        thread::spawn(move || {
            if let Some(mut p) = pipe {
                let mut chunk = [0u8; 8192];
                loop {
                    match p.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => b
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .extend_from_slice(&chunk[..n]),
                    }
                }
            }
            let _ = tx.send(());
        });
        Collector { buf, done }
    }

    fn snapshot(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Everything read, once the pipe closed or `grace` passed (a grandchild may hold it).
    fn finish(&self, grace: Duration) -> String {
        let _ = self.done.recv_timeout(grace);
        self.snapshot()
    }
}

/// A command running in the background (a long ping while an agent restarts, ...).
pub struct Background {
    cmd: String,
    child: Child,
    stdout: Collector,
    stderr: Collector,
    started: Instant,
}

impl Background {
    pub fn spawn(mut cmd: Command) -> Result<Background, CmdError> {
        let desc = describe(&cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| CmdError::Spawn {
            cmd: desc.clone(),
            source,
        })?;
        let stdout = Collector::start(child.stdout.take());
        let stderr = Collector::start(child.stderr.take());
        Ok(Background {
            cmd: desc,
            child,
            stdout,
            stderr,
            started: Instant::now(),
        })
    }

    /// Its process id (the program's own when the launchers exec it, as nsenter and `ip
    /// netns exec` do).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it printed on stdout so far.
    pub fn stdout_so_far(&self) -> String {
        self.stdout.snapshot()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until it ends; kills it after `timeout`.
    pub fn wait(mut self, timeout: Duration) -> Result<Output, CmdError> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) => {}
                Err(source) => {
                    return Err(CmdError::Wait {
                        cmd: self.cmd.clone(),
                        source,
                    });
                }
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        };
        let grace = Duration::from_secs(2);
        let stdout = self.stdout.finish(grace);
        let stderr = self.stderr.finish(grace);
        match status {
            None => Err(CmdError::Timeout {
                cmd: self.cmd.clone(),
                timeout,
                stdout,
                stderr,
            }),
            Some(s) => Ok(Output {
                cmd: self.cmd.clone(),
                code: s.code(),
                stdout,
                stderr,
                elapsed: self.started.elapsed(),
            }),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `cmd` to completion (stdin closed), killing it after `timeout`.
pub fn run(cmd: Command, timeout: Duration) -> Result<Output, CmdError> {
    Background::spawn(cmd)?.wait(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_both_streams_and_status() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo out; echo err >&2; exit 3"]);
        let o = run(c, Duration::from_secs(10)).unwrap();
        assert_eq!(o.code, Some(3));
        assert_eq!(o.stdout, "out\n");
        assert_eq!(o.stderr, "err\n");
        assert!(!o.success());
        assert!(o.describe_failure().contains("status 3"));
    }

    #[test]
    fn kills_on_timeout() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo started; exec sleep 30"]);
        let t = Instant::now();
        match run(c, Duration::from_millis(300)) {
            Err(CmdError::Timeout { stdout, .. }) => assert_eq!(stdout, "started\n"),
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_grandchild_holding_the_pipe_does_not_hang() {
        let mut c = Command::new("sh");
        c.args(["-c", "sleep 30 & echo done"]);
        let t = Instant::now();
        let o = run(c, Duration::from_secs(10)).unwrap();
        assert!(o.success());
        assert_eq!(o.stdout, "done\n");
        assert!(t.elapsed() < Duration::from_secs(8));
    }

    #[test]
    fn quoting() {
        let mut c = Command::new("ovs-vsctl");
        c.args(["--db=unix:/x/db.sock", "set", "a b", "it's"]);
        assert_eq!(
            describe(&c),
            r"ovs-vsctl --db=unix:/x/db.sock set 'a b' 'it'\''s'"
        );
    }
}
