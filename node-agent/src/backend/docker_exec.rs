//! `topoctl exec` on the Docker engine: exec create (attached, with a TTY of the caller's
//! size when asked), exec start attached (the engine hijacks the HTTP connection: output
//! comes back multiplexed, or raw with a TTY, and the connection's write half is the
//! command's standard input), exec resize, exec inspect for the exit code. Only
//! containers that carry topo's labels for this node are exec'd into (`owned`).

use bollard::container::LogOutput;
use bollard::exec::{ResizeExecOptions, StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use futures::StreamExt;

use super::docker::{ContainerError, DockerContainers};
use super::{ExecOutput, ExecRequest, ExecSession, TerminalSize};

impl DockerContainers {
    /// Creates and starts the exec; the session is live when this returns.
    pub(super) async fn exec_attached(
        &self,
        id: &str,
        request: &ExecRequest,
    ) -> Result<ExecSession, ContainerError> {
        if self.owned(id).await?.is_none() {
            return Err(ContainerError::NotOwned { id: id.to_string() });
        }
        let config = ExecConfig {
            attach_stdin: Some(request.stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(request.tty.is_some()),
            console_size: request
                .tty
                .map(|s| vec![usize::from(s.height), usize::from(s.width)]),
            cmd: Some(request.command.clone()),
            ..Default::default()
        };
        let created =
            self.docker.create_exec(id, config).await.map_err(|e| {
                ContainerError::docker(format!("create an exec in container {id}"), e)
            })?;
        let start = StartExecOptions {
            detach: false,
            tty: request.tty.is_some(),
            output_capacity: None,
        };
        let started = self
            .docker
            .start_exec(&created.id, Some(start))
            .await
            .map_err(|e| ContainerError::docker(format!("start the exec in container {id}"), e))?;
        let StartExecResults::Attached { output, input } = started else {
            return Err(ContainerError::ExecDetached { id: id.to_string() });
        };
        let what = format!("read the output of the exec in container {id}");
        let output = output
            .filter_map(move |chunk| {
                let item = match chunk {
                    Ok(LogOutput::StdErr { message }) => Some(Ok(ExecOutput::Stderr(message))),
                    Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                        Some(Ok(ExecOutput::Stdout(message)))
                    }
                    Ok(LogOutput::StdIn { .. }) => None,
                    Err(e) => Some(Err(ContainerError::docker(what.clone(), e))),
                };
                futures::future::ready(item)
            })
            .boxed();
        Ok(ExecSession {
            exec_id: created.id,
            output,
            input,
        })
    }

    pub(super) async fn resize_exec(
        &self,
        exec_id: &str,
        size: TerminalSize,
    ) -> Result<(), ContainerError> {
        let opts = ResizeExecOptions {
            height: size.height,
            width: size.width,
        };
        self.docker
            .resize_exec(exec_id, opts)
            .await
            .map_err(|e| ContainerError::docker(format!("resize exec {exec_id}"), e))
    }

    pub(super) async fn exit_code_of_exec(
        &self,
        exec_id: &str,
    ) -> Result<Option<i64>, ContainerError> {
        let r = self
            .docker
            .inspect_exec(exec_id)
            .await
            .map_err(|e| ContainerError::docker(format!("inspect exec {exec_id}"), e))?;
        Ok(match r.running {
            Some(true) => None,
            _ => r.exit_code,
        })
    }
}
