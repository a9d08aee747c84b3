//! Containers through the Docker Engine API (bollard).
//!
//! Ownership is by label: every container topo creates carries `topo.dev/managed=true`,
//! `topo.dev/node=<node>`, `topo.dev/object=container/<name>`, `topo.dev/uid` and
//! `topo.dev/config-hash`; the backend lists, starts and removes nothing else. In the lab one
//! engine serves every simulated node, so the node label is what keeps agents apart.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, CreateImageInfo, EventMessage, HostConfig,
    RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, WaitContainerOptionsBuilder,
};
use chrono::{DateTime, Datelike, Utc};
use futures::StreamExt;
use futures::stream::BoxStream;
use topo_schema::slice::{ContainerEntry, owner};
use tracing::{debug, warn};

use super::{ContainerEvent, Containers, LogRequest, ObservedContainer, PullProgress};

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("failed to connect to the Docker engine at {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: DockerError,
    },
    #[error("failed to {what}")]
    Docker {
        what: String,
        #[source]
        source: DockerError,
    },
    /// The image is missing and may not or could not be pulled. `reason` is for status.
    #[error("failed to pull image {image}: {reason}")]
    ImagePullFailed { image: String, reason: String },
    /// The Docker name is held by a container of another node (lab: one engine serves every
    /// node): retry once that node has removed it.
    #[error("failed to create container {name}: the name is held by a container of node {node}")]
    NameOwnedByOtherNode { name: String, node: String },
    #[error("failed to create container {name}: the name is held by a container topo does not own")]
    NameTaken { name: String },
    /// A container of ours with that name already exists (created concurrently): list again.
    #[error("failed to create container {name}: it already exists as {id}")]
    AlreadyExists { name: String, id: String },
    #[error("refused to touch container {id}: it does not carry topo's labels for this node")]
    NotOwned { id: String },
    /// Another request was removing the container and it was still there after a while.
    #[error("failed to see container {id} removed within {secs} s (its removal was in progress)")]
    RemovalTimedOut { id: String, secs: u64 },
    #[error("failed to read the log of container {id}: this backend keeps no logs")]
    NoLogs { id: String },
    #[error("failed to run a command in container {id}: this backend cannot exec")]
    NoExec { id: String },
    #[error("failed to run a command in container {id}: the engine started the exec detached")]
    ExecDetached { id: String },
}

impl ContainerError {
    pub(super) fn docker(what: impl Into<String>, source: DockerError) -> Self {
        ContainerError::Docker {
            what: what.into(),
            source,
        }
    }
}

/// The Docker backend of one node.
#[derive(Clone)]
pub struct DockerContainers {
    pub(super) docker: Docker,
    node: String,
}

fn status_code(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The labels topo puts on the container of `entry` on `node`.
pub fn labels_for(node: &str, entry: &ContainerEntry) -> HashMap<String, String> {
    HashMap::from([
        (owner::MANAGED.to_string(), "true".to_string()),
        (owner::NODE.to_string(), node.to_string()),
        (
            owner::OBJECT.to_string(),
            format!("container/{}", entry.name),
        ),
        (owner::UID.to_string(), entry.uid.clone()),
        (owner::CONFIG_HASH.to_string(), entry.config_hash()),
    ])
}

/// The create request for `entry`: no networking of Docker's own (`NetworkMode: none`; topo
/// plumbs the namespace), restart policy "no" (the agent restarts, so it can count), the
/// link aliases as extra /etc/hosts entries, and the entry's hardening (limits, user,
/// read-only root, capabilities, no-new-privileges unless allowed).
pub fn create_body(node: &str, entry: &ContainerEntry) -> ContainerCreateBody {
    let h = &entry.hardening;
    let list = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let env: Vec<String> = entry.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let hosts: Vec<String> = entry
        .hosts
        .iter()
        .map(|h| format!("{}:{}", h.name, h.ip))
        .collect();
    ContainerCreateBody {
        image: Some(entry.image.clone()),
        cmd: (!entry.command.is_empty()).then(|| entry.command.clone()),
        env: Some(env),
        labels: Some(labels_for(node, entry)),
        hostname: Some(entry.name.clone()),
        user: h.user.clone(),
        host_config: Some(HostConfig {
            network_mode: Some("none".to_string()),
            extra_hosts: Some(hosts),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            memory: h.memory_bytes,
            nano_cpus: h.nano_cpus,
            pids_limit: h.pids_limit,
            readonly_rootfs: h.read_only_root_filesystem.then_some(true),
            cap_add: list(&h.cap_add),
            cap_drop: list(&h.cap_drop),
            security_opt: list(&h.security_opt()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Docker writes "0001-01-01T00:00:00Z" for "never".
fn parse_time(s: Option<&String>) -> Option<DateTime<Utc>> {
    let t = DateTime::parse_from_rfc3339(s?).ok()?.with_timezone(&Utc);
    (t.year() > 1).then_some(t)
}

/// An inspected container as topo sees it, when it is ours on `node`.
pub fn observed_from_inspect(
    node: &str,
    c: &ContainerInspectResponse,
) -> Option<ObservedContainer> {
    let labels = c.config.as_ref()?.labels.as_ref()?;
    if labels.get(owner::MANAGED).map(String::as_str) != Some("true")
        || labels.get(owner::NODE).map(String::as_str) != Some(node)
    {
        return None;
    }
    let name = labels
        .get(owner::OBJECT)?
        .strip_prefix("container/")?
        .to_string();
    let state = c.state.clone().unwrap_or_default();
    let running = state.running.unwrap_or(false);
    Some(ObservedContainer {
        id: c.id.clone()?,
        docker_name: c
            .name
            .clone()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        name,
        uid: labels.get(owner::UID).cloned().unwrap_or_default(),
        config_hash: labels.get(owner::CONFIG_HASH).cloned().unwrap_or_default(),
        image: c
            .config
            .as_ref()
            .and_then(|x| x.image.clone())
            .unwrap_or_default(),
        running,
        pid: state
            .pid
            .filter(|p| running && *p > 0)
            .and_then(|p| u32::try_from(p).ok()),
        restart_count: c
            .restart_count
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0),
        started_at: parse_time(state.started_at.as_ref()),
        finished_at: parse_time(state.finished_at.as_ref()),
        exit_code: state.exit_code,
        status: state.status.map(|s| s.to_string()).unwrap_or_default(),
    })
}

/// The object a Docker event is about, when it is one of ours on `node`.
pub fn event_from_message(node: &str, m: &EventMessage) -> Option<ContainerEvent> {
    let actor = m.actor.as_ref()?;
    let attrs = actor.attributes.as_ref()?;
    if attrs.get(owner::MANAGED).map(String::as_str) != Some("true")
        || attrs.get(owner::NODE).map(String::as_str) != Some(node)
    {
        return None;
    }
    let name = attrs
        .get(owner::OBJECT)?
        .strip_prefix("container/")?
        .to_string();
    // exec_start etc. carry a suffix ("exec_start: sh"); keep the verb.
    let action = m
        .action
        .as_deref()?
        .split(':')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    Some(ContainerEvent::Changed {
        name,
        id: actor.id.clone().unwrap_or_default(),
        action,
    })
}

/// How long `remove` waits for a removal that another request started.
const REMOVAL_WAIT: Duration = Duration::from_secs(60);

impl DockerContainers {
    /// Connects to `endpoint` (`unix:///path` or a plain socket path; None: Docker's local
    /// defaults, honouring DOCKER_HOST) and negotiates the API version with the engine.
    pub async fn connect(endpoint: Option<&str>, node: &str) -> Result<Self, ContainerError> {
        let shown = endpoint.unwrap_or("the local default").to_string();
        let docker = match endpoint {
            Some(e) => {
                let path = e.strip_prefix("unix://").unwrap_or(e);
                Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)
            }
            None => Docker::connect_with_local_defaults(),
        }
        .map_err(|source| ContainerError::Connect {
            endpoint: shown.clone(),
            source,
        })?;
        // Debian's engine 20.10 speaks API 1.41; bollard defaults to a newer one.
        let docker =
            docker
                .negotiate_version()
                .await
                .map_err(|source| ContainerError::Connect {
                    endpoint: shown,
                    source,
                })?;
        Ok(DockerContainers {
            docker,
            node: node.to_string(),
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn owned_filter(&self) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_string(),
            vec![
                format!("{}=true", owner::MANAGED),
                format!("{}={}", owner::NODE, self.node),
            ],
        )])
    }

    /// Returns once Docker has removed container `id` (the engine's own wait for the
    /// `removed` condition: no polling).
    async fn wait_removed(&self, id: &str) -> Result<(), ContainerError> {
        let opts = WaitContainerOptionsBuilder::new()
            .condition("removed")
            .build();
        let mut waiting = self.docker.wait_container(id, Some(opts));
        match tokio::time::timeout(REMOVAL_WAIT, waiting.next()).await {
            Err(_) => Err(ContainerError::RemovalTimedOut {
                id: id.to_string(),
                secs: REMOVAL_WAIT.as_secs(),
            }),
            // The answer carries the exit code of the removed container; bollard turns a
            // non-zero one into an error, which still means it is gone.
            Ok(None | Some(Ok(_)) | Some(Err(DockerError::DockerContainerWaitError { .. }))) => {
                Ok(())
            }
            Ok(Some(Err(e))) if status_code(&e) == Some(404) => Ok(()),
            Ok(Some(Err(e))) => Err(ContainerError::docker(
                format!("wait for the removal of container {id}"),
                e,
            )),
        }
    }

    async fn inspect(&self, id: &str) -> Result<Option<ContainerInspectResponse>, ContainerError> {
        match self.docker.inspect_container(id, None).await {
            Ok(c) => Ok(Some(c)),
            Err(e) if status_code(&e) == Some(404) => Ok(None),
            Err(e) => Err(ContainerError::docker(format!("inspect container {id}"), e)),
        }
    }

    /// What holds `docker_name` when a create collided.
    async fn collision(&self, docker_name: &str) -> ContainerError {
        match self.inspect(docker_name).await {
            Ok(Some(c)) => {
                let labels = c
                    .config
                    .as_ref()
                    .and_then(|x| x.labels.clone())
                    .unwrap_or_default();
                let managed = labels.get(owner::MANAGED).map(String::as_str) == Some("true");
                match labels.get(owner::NODE) {
                    Some(n) if managed && *n != self.node => ContainerError::NameOwnedByOtherNode {
                        name: docker_name.to_string(),
                        node: n.clone(),
                    },
                    Some(_) if managed => ContainerError::AlreadyExists {
                        name: docker_name.to_string(),
                        id: c.id.unwrap_or_default(),
                    },
                    _ => ContainerError::NameTaken {
                        name: docker_name.to_string(),
                    },
                }
            }
            // Gone meanwhile: the caller retries.
            Ok(None) => ContainerError::NameTaken {
                name: docker_name.to_string(),
            },
            Err(e) => e,
        }
    }

    pub(super) async fn owned(
        &self,
        id: &str,
    ) -> Result<Option<ContainerInspectResponse>, ContainerError> {
        let Some(c) = self.inspect(id).await? else {
            return Ok(None);
        };
        if observed_from_inspect(&self.node, &c).is_none() {
            return Err(ContainerError::NotOwned { id: id.to_string() });
        }
        Ok(Some(c))
    }
}

/// `repo[:tag]` (a registry port is not a tag); `latest` when none.
fn split_image(image: &str) -> (&str, &str) {
    let image = image.split('@').next().unwrap_or(image);
    match image.rfind(':') {
        Some(i) if !image[i + 1..].contains('/') => (&image[..i], &image[i + 1..]),
        _ => (image, "latest"),
    }
}

fn pull_reason(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        DockerError::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

/// One message of the engine's pull stream; an error message (the registry's, relayed) is
/// `ImagePullFailed`.
pub fn pull_progress(image: &str, info: CreateImageInfo) -> Result<PullProgress, ContainerError> {
    if let Some(e) = info.error_detail.and_then(|d| d.message) {
        return Err(ContainerError::ImagePullFailed {
            image: image.to_string(),
            reason: e,
        });
    }
    let detail = info.progress_detail.unwrap_or_default();
    let bytes = |v: Option<i64>| v.and_then(|n| u64::try_from(n).ok());
    Ok(PullProgress {
        layer: info.id,
        status: info.status.unwrap_or_default(),
        current: bytes(detail.current),
        total: bytes(detail.total),
    })
}

/// Forwards the engine's pull of `image` into `tx` until it ends, fails or `tx` closes
/// (dropping the engine's stream closes the request, and the engine cancels the pull).
async fn forward_pull(
    docker: Docker,
    image: String,
    tx: tokio::sync::mpsc::Sender<Result<PullProgress, ContainerError>>,
) {
    let (repo, tag) = split_image(&image);
    let opts = CreateImageOptions {
        from_image: Some(repo.to_string()),
        tag: Some(tag.to_string()),
        ..Default::default()
    };
    let mut s = docker.create_image(Some(opts), None, None);
    loop {
        let item = tokio::select! {
            _ = tx.closed() => return,
            item = s.next() => item,
        };
        let msg = match item {
            None => return,
            Some(Ok(info)) => pull_progress(&image, info),
            Some(Err(e)) => Err(ContainerError::ImagePullFailed {
                image: image.clone(),
                reason: pull_reason(&e),
            }),
        };
        let failed = msg.is_err();
        if tx.send(msg).await.is_err() || failed {
            return;
        }
    }
}

#[async_trait]
impl Containers for DockerContainers {
    async fn list(&self) -> Result<Vec<ObservedContainer>, ContainerError> {
        let opts = ListContainersOptions {
            all: true,
            filters: Some(self.owned_filter()),
            ..Default::default()
        };
        let summaries = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| ContainerError::docker("list containers", e))?;
        // The summary has no pid nor start time: inspect each, concurrently.
        let ids: Vec<String> = summaries.into_iter().filter_map(|s| s.id).collect();
        let inspected = futures::future::join_all(ids.iter().map(|id| self.inspect(id))).await;
        let mut out = Vec::new();
        for c in inspected {
            // Removed between list and inspect: simply gone.
            if let Some(c) = c? {
                out.extend(observed_from_inspect(&self.node, &c));
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn get(&self, docker_name: &str) -> Result<Option<ObservedContainer>, ContainerError> {
        Ok(self
            .inspect(docker_name)
            .await?
            .and_then(|c| observed_from_inspect(&self.node, &c)))
    }

    async fn image_present(&self, image: &str) -> Result<bool, ContainerError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if status_code(&e) == Some(404) => Ok(false),
            Err(e) => Err(ContainerError::docker(format!("inspect image {image}"), e)),
        }
    }

    fn pull(&self, image: &str) -> BoxStream<'static, Result<PullProgress, ContainerError>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(forward_pull(self.docker.clone(), image.to_string(), tx));
        tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
    }

    async fn create_and_start(&self, entry: &ContainerEntry) -> Result<String, ContainerError> {
        let opts = CreateContainerOptions {
            name: Some(entry.docker_name.clone()),
            ..Default::default()
        };
        let created = match self
            .docker
            .create_container(Some(opts), create_body(&self.node, entry))
            .await
        {
            Ok(c) => c,
            Err(e) if status_code(&e) == Some(409) => {
                return Err(self.collision(&entry.docker_name).await);
            }
            Err(e) if status_code(&e) == Some(404) => {
                return Err(ContainerError::ImagePullFailed {
                    image: entry.image.clone(),
                    reason: pull_reason(&e),
                });
            }
            Err(e) => {
                return Err(ContainerError::docker(
                    format!("create container {}", entry.docker_name),
                    e,
                ));
            }
        };
        for w in &created.warnings {
            warn!(container = %entry.name, warning = %w, "docker warned on create");
        }
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            // A container that never started is useless to adopt: drop it so the next
            // attempt starts from scratch.
            let rm = RemoveContainerOptions {
                force: true,
                ..Default::default()
            };
            if let Err(rm_err) = self.docker.remove_container(&created.id, Some(rm)).await {
                debug!(id = %created.id, error = %rm_err, "could not remove a container that failed to start");
            }
            return Err(ContainerError::docker(
                format!("start container {}", entry.docker_name),
                e,
            ));
        }
        Ok(created.id)
    }

    async fn start(&self, id: &str) -> Result<(), ContainerError> {
        let Some(c) = self.owned(id).await? else {
            return Err(ContainerError::docker(
                format!("start container {id}"),
                DockerError::DockerResponseServerError {
                    status_code: 404,
                    message: "no such container".into(),
                },
            ));
        };
        if c.state.and_then(|s| s.running).unwrap_or(false) {
            return Ok(());
        }
        match self.docker.start_container(id, None).await {
            // 304: already started.
            Err(e) if status_code(&e) != Some(304) => {
                Err(ContainerError::docker(format!("start container {id}"), e))
            }
            _ => Ok(()),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), ContainerError> {
        if self.owned(id).await?.is_none() {
            return Ok(());
        }
        let rm = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match self.docker.remove_container(id, Some(rm)).await {
            Ok(()) => Ok(()),
            Err(e) if status_code(&e) == Some(404) => Ok(()),
            // 409 "removal already in progress": a concurrent reconcile asked first. It is
            // gone only once Docker says so; returning now would let the caller drop the
            // object's report while `docker ps -a` still lists the container (issue 13:
            // `delete --wait` returned too early).
            Err(e) if status_code(&e) == Some(409) => self.wait_removed(id).await,
            Err(e) => Err(ContainerError::docker(format!("remove container {id}"), e)),
        }
    }

    fn logs(
        &self,
        id: &str,
        request: &LogRequest,
    ) -> BoxStream<'static, Result<bytes::Bytes, ContainerError>> {
        let opts = LogsOptions {
            follow: request.follow,
            stdout: true,
            stderr: true,
            // The engine's API takes 32-bit UNIX seconds; 0 means from the start.
            since: request
                .since
                .map_or(0, |s| i32::try_from(s.max(0)).unwrap_or(i32::MAX)),
            until: 0,
            timestamps: false,
            tail: request
                .tail
                .map_or_else(|| "all".to_string(), |n| n.to_string()),
        };
        let what = format!("read the log of container {id}");
        self.docker
            .logs(id, Some(opts))
            .map(move |chunk| {
                chunk
                    .map(|out| bytes::Bytes::copy_from_slice(out.as_ref()))
                    .map_err(|e| ContainerError::docker(what.clone(), e))
            })
            .boxed()
    }

    async fn exec(
        &self,
        id: &str,
        request: &super::ExecRequest,
    ) -> Result<super::ExecSession, ContainerError> {
        self.exec_attached(id, request).await
    }

    async fn exec_resize(
        &self,
        exec_id: &str,
        size: super::TerminalSize,
    ) -> Result<(), ContainerError> {
        self.resize_exec(exec_id, size).await
    }

    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>, ContainerError> {
        self.exit_code_of_exec(exec_id).await
    }

    fn watch(&self) -> BoxStream<'static, ContainerEvent> {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(watch_events(self.docker.clone(), self.node.clone(), tx));
        tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
    }
}

/// The engine's events of this node's containers into `tx`, reconnecting with a jittered
/// backoff (100 ms doubling to 5 s) while the engine is away (dockerd restarted). A `Resync`
/// follows every reconnect, once the engine answers again: the events of the gap are lost,
/// and everything reconciled before the engine was back would only have failed.
async fn watch_events(docker: Docker, node: String, tx: tokio::sync::mpsc::Sender<ContainerEvent>) {
    use backoff::backoff::Backoff;
    let filters = HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        (
            "label".to_string(),
            vec![
                format!("{}=true", owner::MANAGED),
                format!("{}={}", owner::NODE, node),
            ],
        ),
    ]);
    let mut backoff =
        topo_watcher::jittered_backoff(Duration::from_millis(100), Duration::from_secs(5));
    let mut first = true;
    loop {
        if !first {
            let delay = backoff.next_backoff().unwrap_or(Duration::from_secs(5));
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            if docker.ping().await.is_err() {
                continue;
            }
            debug!("the Docker engine answers again; resyncing");
            if tx.send(ContainerEvent::Resync).await.is_err() {
                return;
            }
        }
        first = false;
        let opts = EventsOptions {
            filters: Some(filters.clone()),
            ..Default::default()
        };
        let mut events = docker.events(Some(opts));
        let connected = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                item = events.next() => match item {
                    Some(Ok(m)) => {
                        if let Some(ev) = event_from_message(&node, &m)
                            && tx.send(ev).await.is_err()
                        {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        warn!(error = %e, "docker event stream failed; reconnecting");
                        break;
                    }
                    None => {
                        debug!("docker event stream ended; reconnecting");
                        break;
                    }
                }
            }
        }
        // A stream that lasted was a good connection: the next outage starts the backoff over.
        if connected.elapsed() > Duration::from_secs(10) {
            backoff.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bollard::models::{
        ContainerConfig, ContainerState, ContainerStateStatusEnum, ErrorDetail, EventActor,
        ProgressDetail,
    };
    use topo_schema::kinds::PullPolicy;
    use topo_schema::slice::{Hardening, HostEntry};

    use super::*;

    fn entry() -> ContainerEntry {
        ContainerEntry {
            name: "web".into(),
            uid: "uid-1".into(),
            generation: 3,
            docker_name: "topo-web".into(),
            image: "topo/busybox:latest".into(),
            command: vec!["httpd".into(), "-f".into()],
            env: BTreeMap::from([("A".into(), "1".into())]),
            pull_policy: PullPolicy::IfNotPresent,
            hosts: vec![HostEntry {
                name: "db".into(),
                ip: "127.0.0.1".parse().unwrap(),
            }],
            attachments: vec![],
            ports: vec![],
            links: vec![],
            hardening: Box::default(),
        }
    }

    #[test]
    fn create_body_carries_the_hardening() {
        let b = create_body("node1", &entry());
        let hc = b.host_config.unwrap();
        assert_eq!(
            hc.security_opt,
            Some(vec!["no-new-privileges".to_string()]),
            "on by default"
        );
        assert_eq!((hc.memory, hc.nano_cpus, hc.pids_limit), (None, None, None));
        assert_eq!(
            (hc.readonly_rootfs, hc.cap_add, hc.cap_drop),
            (None, None, None)
        );
        assert_eq!(b.user, None);

        let mut e = entry();
        *e.hardening = Hardening {
            memory_bytes: Some(256 << 20),
            nano_cpus: Some(500_000_000),
            pids_limit: Some(64),
            user: Some("1000:1000".into()),
            read_only_root_filesystem: true,
            cap_add: vec!["CAP_NET_BIND_SERVICE".into()],
            cap_drop: vec!["ALL".into()],
            allow_privilege_escalation: true,
        };
        let b = create_body("node1", &e);
        let hc = b.host_config.unwrap();
        assert_eq!(hc.memory, Some(268_435_456));
        assert_eq!(hc.nano_cpus, Some(500_000_000));
        assert_eq!(hc.pids_limit, Some(64));
        assert_eq!(hc.readonly_rootfs, Some(true));
        assert_eq!(hc.cap_add, Some(vec!["CAP_NET_BIND_SERVICE".to_string()]));
        assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(hc.security_opt, None, "allowPrivilegeEscalation: true");
        assert_eq!(b.user.as_deref(), Some("1000:1000"));
        assert_eq!(
            b.labels.unwrap()[owner::CONFIG_HASH],
            e.config_hash(),
            "the label carries the hash with the hardening"
        );
    }

    #[test]
    fn create_body_disables_networking_and_labels() {
        let b = create_body("node1", &entry());
        let hc = b.host_config.unwrap();
        assert_eq!(hc.network_mode.as_deref(), Some("none"));
        assert_eq!(
            hc.restart_policy.unwrap().name,
            Some(RestartPolicyNameEnum::NO)
        );
        assert_eq!(hc.extra_hosts.unwrap(), vec!["db:127.0.0.1".to_string()]);
        assert_eq!(b.env.unwrap(), vec!["A=1".to_string()]);
        assert_eq!(b.cmd.unwrap(), vec!["httpd".to_string(), "-f".to_string()]);
        let l = b.labels.unwrap();
        assert_eq!(l[owner::MANAGED], "true");
        assert_eq!(l[owner::NODE], "node1");
        assert_eq!(l[owner::OBJECT], "container/web");
        assert_eq!(l[owner::UID], "uid-1");
        assert_eq!(l[owner::CONFIG_HASH], entry().config_hash());
    }

    #[test]
    fn empty_command_keeps_image_default() {
        let mut e = entry();
        e.command.clear();
        assert_eq!(create_body("n", &e).cmd, None);
    }

    fn inspected(node: &str, running: bool) -> ContainerInspectResponse {
        let e = entry();
        ContainerInspectResponse {
            id: Some("abc".into()),
            name: Some("/topo-web".into()),
            restart_count: Some(0),
            config: Some(ContainerConfig {
                image: Some(e.image.clone()),
                labels: Some(labels_for(node, &e)),
                ..Default::default()
            }),
            state: Some(ContainerState {
                running: Some(running),
                pid: Some(if running { 4242 } else { 0 }),
                status: Some(if running {
                    ContainerStateStatusEnum::RUNNING
                } else {
                    ContainerStateStatusEnum::EXITED
                }),
                started_at: Some("2024-05-01T10:00:00.123Z".into()),
                finished_at: Some("0001-01-01T00:00:00Z".into()),
                exit_code: Some(0),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn inspect_is_ours_only_for_our_node() {
        let o = observed_from_inspect("node1", &inspected("node1", true)).unwrap();
        assert_eq!(o.name, "web");
        assert_eq!(o.docker_name, "topo-web");
        assert_eq!(o.pid, Some(4242));
        assert!(o.started_at.is_some());
        assert_eq!(o.finished_at, None);
        assert_eq!(o.status, "running");
        assert_eq!(o.config_hash, entry().config_hash());
        assert!(observed_from_inspect("node2", &inspected("node1", true)).is_none());
        let stopped = observed_from_inspect("node1", &inspected("node1", false)).unwrap();
        assert_eq!(stopped.pid, None);
        let mut foreign = inspected("node1", true);
        foreign.config.as_mut().unwrap().labels = Some(HashMap::new());
        assert!(observed_from_inspect("node1", &foreign).is_none());
    }

    #[test]
    fn events_name_the_object() {
        let m = EventMessage {
            action: Some("die".into()),
            actor: Some(EventActor {
                id: Some("abc".into()),
                attributes: Some(labels_for("node1", &entry())),
            }),
            ..Default::default()
        };
        assert_eq!(
            event_from_message("node1", &m),
            Some(ContainerEvent::Changed {
                name: "web".into(),
                id: "abc".into(),
                action: "die".into()
            })
        );
        assert_eq!(event_from_message("node2", &m), None);
    }

    #[test]
    fn pull_messages_and_the_registrys_error() {
        let p = pull_progress(
            "reg:5000/x:1",
            CreateImageInfo {
                id: Some("a1b2c3".into()),
                status: Some("Downloading".into()),
                progress_detail: Some(ProgressDetail {
                    current: Some(100),
                    total: Some(1000),
                }),
                error_detail: None,
            },
        )
        .unwrap();
        assert_eq!(p.layer.as_deref(), Some("a1b2c3"));
        assert_eq!((p.current, p.total), (Some(100), Some(1000)));
        let e = pull_progress(
            "reg:5000/x:1",
            CreateImageInfo {
                error_detail: Some(ErrorDetail {
                    code: None,
                    message: Some("manifest unknown".into()),
                }),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "failed to pull image reg:5000/x:1: manifest unknown"
        );
    }

    #[test]
    fn image_references() {
        assert_eq!(
            split_image("topo/busybox:latest"),
            ("topo/busybox", "latest")
        );
        assert_eq!(split_image("busybox"), ("busybox", "latest"));
        assert_eq!(split_image("reg:5000/x/y"), ("reg:5000/x/y", "latest"));
        assert_eq!(split_image("reg:5000/x/y:1.2"), ("reg:5000/x/y", "1.2"));
    }
}
