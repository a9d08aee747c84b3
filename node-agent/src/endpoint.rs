//! The agent's own HTTPS endpoint: `/healthz`, `/readyz` and `/metrics`.
//!
//! It serves with the node's identity (`nodes/NAME.crt` from `topo-pki`: serverAuth, the
//! node's address as SAN — the same certificate is the agent's etcd client identity) and
//! checks client certificates against the cluster CA, through the accept loop the
//! controller's API uses (`topo_pki::serve`: HTTPS only, a plain-HTTP request gets a 400).
//!
//! Who may call what:
//!
//! | path | caller |
//! |---|---|
//! | `/healthz`, `/readyz` | anyone: probes carry no credentials, and the answers name nothing but the agent's own state |
//! | `/metrics` | a certificate in group `topo:metrics` (the scrape identity `topo-pki init` issues as `metrics.crt`) |
//! | `/containers/NAME/logs`, `/containers/NAME/exec` | the controller only (CN=topo-controller, its client identity) |
//! | `POST /verify` | the controller only: the checks of `topoctl verify` (`verify/`) |
//! | anything else | 404 after authentication |
//!
//! Without a client certificate the answer is 401, with one of another group (an admin, a
//! viewer, another node) 403 naming the user: the agent does not know the controller's role
//! bindings, so it grants by group, and only the one group that reads nothing but numbers.
//!
//! `topoctl logs` (and `exec`) reaches a container's log through the controller, which authenticates and
//! authorizes the user (the `view` role may read logs) and then asks the agent of the
//! container's node with its own client certificate, naming the user in `Topo-User` (for
//! this side's log line only: the agent cannot check a user it did not authenticate, so it
//! trusts the controller's decision and nobody else's). The agent serves only containers of
//! its own slice that it finds among its own Docker containers; anything else is 404. The
//! log streams as plain bytes (stdout and stderr interleaved as the engine keeps them, as
//! `kubectl logs` prints them), over chunked HTTP: one direction needs no upgrade.
//!
//! `topoctl exec` takes the same way and the same checks (`exec.rs`): a WebSocket, since
//! it streams both ways.
//!
//! `/readyz` is 200 when the first list of the slice has arrived and the Docker engine,
//! ovsdb-server and netlink each answer a read within [`PROBE_TIMEOUT`]; else 503 with one
//! line per thing that is not ready.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use topo_pki::serve::Peer;
use topo_schema::slice::{SliceEntry, SliceKey};

use crate::agent::AgentHandles;
use crate::backend::LogRequest;
use crate::reconcile::Backends;

mod exec;

/// The header in which the controller names the user it asks on behalf of.
pub const USER_HEADER: &str = "topo-user";

/// The port the agent listens on unless `--listen` says otherwise.
pub const DEFAULT_PORT: u16 = 10250;
/// How long each backend may take to answer a readiness probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("failed to load the node's TLS identity for the agent endpoint")]
    Tls(#[source] topo_pki::tls::TlsError),
    #[error("failed to listen on {addr} for the agent endpoint")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to serve the agent endpoint")]
    Serve(#[source] std::io::Error),
}

/// Where and as whom the endpoint serves.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    pub listen: SocketAddr,
    /// The node's certificate and key (client and server).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The cluster CA client certificates must chain to.
    pub ca: PathBuf,
}

/// What the handlers read: the agent's handles once it has wired its runtime.
#[derive(Clone)]
struct EndpointState {
    backends: Backends,
    handles: Arc<OnceLock<AgentHandles>>,
}

/// The endpoint's identity extension: the caller's certificate subject, if any.
#[derive(Debug, Clone)]
struct Caller(Option<Peer>);

/// A bound, configured endpoint; [`Endpoint::serve`] runs it.
pub struct Endpoint {
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    pub addr: SocketAddr,
}

impl Endpoint {
    /// Loads the identity and binds, so that a bad file or a taken port stops the agent at
    /// start rather than later.
    pub async fn bind(cfg: &EndpointConfig) -> Result<Endpoint, EndpointError> {
        let tls = topo_pki::tls::server_config(&cfg.cert, &cfg.key, &cfg.ca)
            .map_err(EndpointError::Tls)?;
        let listen_err = |source| EndpointError::Listen {
            addr: cfg.listen,
            source,
        };
        let listener = TcpListener::bind(cfg.listen).await.map_err(listen_err)?;
        let addr = listener.local_addr().map_err(listen_err)?;
        Ok(Endpoint {
            listener,
            tls: Arc::new(tls),
            addr,
        })
    }

    /// Serves until `shutdown` turns true. The handles arrive once the agent has wired its
    /// runtime; until then `/readyz` says so.
    pub async fn serve(
        self,
        backends: Backends,
        handles: tokio::sync::oneshot::Receiver<AgentHandles>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), EndpointError> {
        let cell = Arc::new(OnceLock::new());
        let fill = cell.clone();
        tokio::spawn(async move {
            if let Ok(h) = handles.await {
                let _ = fill.set(h);
            }
        });
        let token = CancellationToken::new();
        let cancel = token.clone();
        tokio::spawn(async move {
            let _ = shutdown.wait_for(|s| *s).await;
            cancel.cancel();
        });
        let app = router(EndpointState {
            backends,
            handles: cell,
        });
        tracing::info!(addr = %self.addr, "serving the agent endpoint over HTTPS");
        let peer = |cert: Option<&[u8]>| Caller(cert.and_then(topo_pki::serve::peer_of_cert));
        topo_pki::serve::serve_tls(self.listener, self.tls, app, token, peer)
            .await
            .map_err(EndpointError::Serve)
    }
}

fn router(state: EndpointState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/containers/{name}/logs", get(container_logs))
        .route("/verify", post(verify))
        .route("/containers/{name}/exec", get(exec::container_exec))
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such path\n") })
        .layer(middleware::from_fn(gate))
        .with_state(state)
}

/// What a path needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Anyone,
    Metrics,
    Controller,
    Authenticated,
}

fn access(path: &str) -> Access {
    match path {
        "/healthz" | "/readyz" => Access::Anyone,
        "/metrics" => Access::Metrics,
        p if p.starts_with("/containers/") || p == "/verify" => Access::Controller,
        _ => Access::Authenticated,
    }
}

/// Ok, or the status and message refusing `caller` on `path`.
fn authorize(path: &str, caller: Option<&Peer>) -> Result<(), (StatusCode, String)> {
    let need = access(path);
    if need == Access::Anyone {
        return Ok(());
    }
    let Some(peer) = caller else {
        return Err((
            StatusCode::UNAUTHORIZED,
            "no credentials: present a client certificate signed by the cluster CA".into(),
        ));
    };
    match need {
        Access::Metrics if !peer.groups.iter().any(|g| g == topo_pki::METRICS_GROUP) => Err((
            StatusCode::FORBIDDEN,
            format!(
                "user {:?} cannot get {path} on this agent: only group {} may",
                peer.user,
                topo_pki::METRICS_GROUP
            ),
        )),
        Access::Controller if peer.user != topo_pki::CONTROLLER_ETCD_USER => Err((
            StatusCode::FORBIDDEN,
            format!(
                "user {:?} cannot get {path} on this agent: only the controller ({}) may",
                peer.user,
                topo_pki::CONTROLLER_ETCD_USER
            ),
        )),
        _ => Ok(()),
    }
}

async fn gate(req: Request, next: Next) -> Response {
    let caller = req.extensions().get::<Caller>().and_then(|c| c.0.clone());
    let path = req.uri().path().to_string();
    match authorize(&path, caller.as_ref()) {
        Ok(()) => next.run(req).await,
        Err((status, message)) => {
            if let Some(p) = &caller {
                tracing::info!(user = %p.user, %path, "forbidden");
            }
            (status, format!("{message}\n")).into_response()
        }
    }
}

/// The query of `/containers/NAME/logs` (the names of kube's pod log options).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LogQuery {
    #[serde(default)]
    follow: bool,
    tail_lines: Option<u64>,
    since_seconds: Option<u64>,
    /// RFC 3339.
    since_time: Option<String>,
}

impl LogQuery {
    fn request(&self, now: chrono::DateTime<chrono::Utc>) -> Result<LogRequest, String> {
        let since = match (&self.since_seconds, &self.since_time) {
            (Some(_), Some(_)) => {
                return Err("give sinceSeconds or sinceTime, not both".to_string());
            }
            (Some(s), None) => Some(now.timestamp() - i64::try_from(*s).unwrap_or(i64::MAX / 2)),
            (None, Some(t)) => Some(
                chrono::DateTime::parse_from_rfc3339(t)
                    .map_err(|e| format!("invalid sinceTime {t:?}: {e} (expected RFC 3339)"))?
                    .timestamp(),
            ),
            (None, None) => None,
        };
        Ok(LogRequest {
            follow: self.follow,
            tail: self.tail_lines,
            since,
        })
    }
}

fn plain(status: StatusCode, message: String) -> Response {
    (status, format!("{message}\n")).into_response()
}

/// The Docker id of container `name`, if it is in this node's slice and its Docker
/// container is one of ours.
async fn own_container(st: &EndpointState, name: &str) -> Result<String, Response> {
    own_observed(st, name).await.map(|o| o.id)
}

/// Docker's view of container `name`, if it is in this node's slice and its Docker
/// container is one of ours.
async fn own_observed(
    st: &EndpointState,
    name: &str,
) -> Result<crate::backend::ObservedContainer, Response> {
    let Some(h) = st.handles.get() else {
        return Err(plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent has not started its slice watch yet".into(),
        ));
    };
    let entry = h.store.get(&SliceKey::Container(name.to_string()));
    let Some(SliceEntry::Container(c)) = entry.as_ref().and_then(|v| v.entry()) else {
        return Err(plain(
            StatusCode::NOT_FOUND,
            format!("container {name} is not on this node"),
        ));
    };
    match st.backends.containers.get(&c.docker_name).await {
        Ok(Some(o)) => Ok(o),
        Ok(None) => Err(plain(
            StatusCode::NOT_FOUND,
            format!("container {name} has no Docker container on this node yet"),
        )),
        Err(e) => Err(plain(
            StatusCode::SERVICE_UNAVAILABLE,
            crate::error_chain::error_chain(&e),
        )),
    }
}

async fn container_logs(
    State(st): State<EndpointState>,
    Path(name): Path<String>,
    query: Result<Query<LogQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let request = match query
        .map_err(|e| e.body_text())
        .and_then(|Query(q)| q.request(chrono::Utc::now()))
    {
        Ok(r) => r,
        Err(e) => return plain(StatusCode::BAD_REQUEST, e),
    };
    let id = match own_container(&st, &name).await {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    let user = headers
        .get(USER_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info!(container = %name, %user, follow = request.follow, "serving a container log");
    let stream =
        st.backends.containers.logs(&id, &request).map(|chunk| {
            chunk.map_err(|e| std::io::Error::other(crate::error_chain::error_chain(&e)))
        });
    let mut resp = Body::from_stream(stream).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// `POST /verify`: the controller's [`VerifyRequest`](topo_schema::verify::VerifyRequest),
/// answered with the checks as JSON.
async fn verify(
    State(st): State<EndpointState>,
    headers: HeaderMap,
    body: Result<
        axum::Json<topo_schema::verify::VerifyRequest>,
        axum::extract::rejection::JsonRejection,
    >,
) -> Response {
    let req = match body {
        Ok(axum::Json(r)) => r,
        Err(e) => return plain(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let Some(h) = st.handles.get() else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent has not started its slice watch yet".into(),
        );
    };
    let user = headers
        .get(USER_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info!(%user, containers = req.containers.len(), ports = req.published.len(), "verifying the dataplane");
    match crate::verify::run(&st.backends, &h.store, &req).await {
        Ok(report) => axum::Json(report).into_response(),
        Err(e @ crate::verify::VerifyError::WrongNode { .. }) => {
            plain(StatusCode::BAD_REQUEST, e.to_string())
        }
        Err(e) => plain(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn metrics(State(st): State<EndpointState>) -> Response {
    let slice = st
        .handles
        .get()
        .map(|h| h.store.clone())
        .unwrap_or_default();
    let mut resp = crate::metrics::scrape(&slice).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(topo_watcher::metrics::CONTENT_TYPE),
    );
    resp
}

/// One line per thing that is not ready; empty when all are.
async fn not_ready(st: &EndpointState) -> Vec<String> {
    let mut problems = Vec::new();
    match st.handles.get() {
        None => problems.push("the agent has not started its slice watch yet".to_string()),
        Some(h) if !*h.synced.borrow() => {
            problems.push("the node's slice has not been listed from etcd yet".to_string())
        }
        Some(_) => {}
    }
    let b = &st.backends;
    let (docker, ovs, netlink) = tokio::join!(
        probe("the Docker engine", b.containers.list()),
        probe("ovsdb-server", b.ovs.observe()),
        probe("netlink", b.interfaces.list_owned()),
    );
    problems.extend([docker, ovs, netlink].into_iter().flatten());
    problems
}

/// None when `read` answered in time; else what failed.
async fn probe<T, E: std::error::Error>(
    what: &str,
    read: impl Future<Output = Result<T, E>>,
) -> Option<String> {
    match tokio::time::timeout(PROBE_TIMEOUT, read).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(format!(
            "{what} does not answer: {}",
            crate::error_chain::error_chain(&e)
        )),
        Err(_) => Some(format!("{what} did not answer within {PROBE_TIMEOUT:?}")),
    }
}

async fn readyz(State(st): State<EndpointState>) -> Response {
    let problems = not_ready(&st).await;
    if problems.is_empty() {
        "ok\n".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready:\n{}\n", problems.join("\n")),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(user: &str, groups: &[&str]) -> Peer {
        Peer {
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn who_may_call_what() {
        let scraper = peer("metrics", &[topo_pki::METRICS_GROUP]);
        let admin = peer("admin", &[topo_pki::ADMINS_GROUP]);
        let node2 = peer("node:node2", &[topo_pki::NODES_GROUP]);
        assert!(authorize("/healthz", None).is_ok());
        assert!(authorize("/readyz", None).is_ok());
        assert!(authorize("/metrics", Some(&scraper)).is_ok());
        assert_eq!(
            authorize("/metrics", None).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        for other in [&admin, &node2] {
            let (status, msg) = authorize("/metrics", Some(other)).unwrap_err();
            assert_eq!(status, StatusCode::FORBIDDEN);
            assert!(msg.contains(&format!("{:?}", other.user)), "{msg}");
        }
        assert_eq!(
            authorize("/other", None).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        let controller = peer(topo_pki::CONTROLLER_ETCD_USER, &[]);
        let logs = "/containers/web/logs";
        assert!(authorize(logs, Some(&controller)).is_ok());
        assert!(authorize("/verify", Some(&controller)).is_ok());
        for other in [&admin, &node2, &scraper] {
            let (status, msg) = authorize("/verify", Some(other)).unwrap_err();
            assert_eq!(status, StatusCode::FORBIDDEN);
            assert!(msg.contains("only the controller"), "{msg}");
        }
        assert!(authorize("/metrics", Some(&controller)).is_err());
        for other in [&admin, &node2, &scraper] {
            let (status, msg) = authorize(logs, Some(other)).unwrap_err();
            assert_eq!(status, StatusCode::FORBIDDEN);
            assert!(msg.contains("only the controller"), "{msg}");
        }
    }

    #[tokio::test]
    async fn readyz_names_what_is_not_ready() {
        use crate::backend::fake::{
            FakeContainers, FakeHostPorts, FakeInterfaces, FakeNat, FakeOvs, FakeProber,
        };
        let docker = Arc::new(FakeContainers::new("node1"));
        let st = EndpointState {
            backends: Backends {
                containers: docker.clone(),
                interfaces: Arc::new(FakeInterfaces::new()),
                ovs: Arc::new(FakeOvs::new("node1")),
                nat: Arc::new(FakeNat::new()),
                host_ports: Arc::new(FakeHostPorts::new()),
                prober: Arc::new(FakeProber::new()),
            },
            handles: Arc::new(OnceLock::new()),
        };
        let problems = not_ready(&st).await;
        assert_eq!(problems, ["the agent has not started its slice watch yet"]);
        let (synced_tx, synced) = watch::channel(false);
        let (_lease_tx, lease) = watch::channel(0i64);
        let handles = AgentHandles {
            store: crate::watch::SliceStore::new(),
            queue: crate::queue::WorkQueue::new(),
            synced,
            lease,
        };
        assert!(st.handles.set(handles).is_ok());
        docker.fail_next(
            "list",
            crate::backend::ContainerError::NotOwned { id: "x".into() },
        );
        let problems = not_ready(&st).await;
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("has not been listed"), "{problems:?}");
        assert!(
            problems[1].starts_with("the Docker engine does not answer"),
            "{problems:?}"
        );
        synced_tx.send_replace(true);
        assert!(not_ready(&st).await.is_empty());
    }

    #[test]
    fn log_queries() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:01:00Z")
            .unwrap()
            .to_utc();
        let q = LogQuery {
            follow: true,
            tail_lines: Some(5),
            since_seconds: Some(60),
            since_time: None,
        };
        let r = q.request(now).unwrap();
        assert_eq!((r.follow, r.tail), (true, Some(5)));
        assert_eq!(r.since, Some(now.timestamp() - 60));
        let q = LogQuery {
            since_time: Some("2026-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        assert_eq!(q.request(now).unwrap().since, Some(now.timestamp() - 60));
        let q = LogQuery {
            since_time: Some("yesterday".into()),
            ..Default::default()
        };
        assert!(q.request(now).unwrap_err().contains("RFC 3339"));
        let q = LogQuery {
            since_seconds: Some(1),
            since_time: Some("2026-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        assert!(q.request(now).is_err());
    }
}
