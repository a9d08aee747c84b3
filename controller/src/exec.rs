//! `GET /apis/topo.dev/v1alpha1/containers/NAME/exec?command=...` (`topoctl exec`): a
//! command run in a container by the agent of its node, streamed both ways over
//! WebSockets in kubectl's `v5.channel.k8s.io` framing (`topo_schema::exec` documents the
//! channels).
//!
//! End to end: `guard.rs` authenticates the user and authorizes verb `create` on
//! `container/NAME/exec` (kube's pods/exec is a create: `admin` may, `view` may not) and
//! audits the start. This module finds the container's node and its agent's endpoint as
//! `logs.rs` does, and opens the agent's `/containers/NAME/exec` WebSocket *before*
//! answering the user's upgrade, so that whatever the agent refuses (404 not on that node,
//! 409 not running) or cannot answer (503 naming the node) comes back as the API's error
//! rather than as a dead socket. The TLS is the controller's client identity
//! (CN=topo-controller, the only one agents accept here), the user rides in `Topo-User`.
//!
//! Then each message is relayed as it arrives, both ways, one at a time (nothing is
//! buffered beyond the message in hand): frames are passed on unchanged, only the status
//! frame is read on its way, for the audit line of the end of the exec (user, container,
//! command, exit code).

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::ws::{
    Message as UserMessage, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderValue;
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message as AgentMessage};
use topo_schema::api::ErrorReason;
use topo_schema::exec::{ExecOptions, ExecStatus, Frame, PROTOCOL, channel};
use topo_schema::{Kind, ObjectRef};

use crate::auth::Identity;
use crate::guard::{ExecEnd, Guard};
use crate::logs::{AgentClient, USER_HEADER, agent_of, err};
use crate::reply::{ApiErr, AppState};

/// How long the agent may take to accept the connection and the upgrade.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type AgentSocket = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// The agent of a container, as the relay addresses it.
struct Route {
    node: String,
    endpoint: String,
    name: String,
}

impl Route {
    fn unreachable(&self, detail: impl std::fmt::Display) -> ApiErr {
        err(
            ErrorReason::ServiceUnavailable,
            format!(
                "container/{}: cannot reach the agent of node {} at {}: {detail}",
                self.name, self.node, self.endpoint
            ),
        )
    }
}

/// `GET .../containers/NAME/exec` (authorized by the guard).
pub async fn container_exec(
    State(st): State<AppState>,
    Path((plural, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    Extension(agents): Extension<Arc<AgentClient>>,
    Extension(id): Extension<Identity>,
    Extension(gate): Extension<Arc<Guard>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiErr> {
    if Kind::parse(&plural) != Some(Kind::Container) {
        return Err(err(
            ErrorReason::NotFound,
            format!("only containers run commands, not {plural}"),
        ));
    }
    let opts = ExecOptions::from_query(query.as_deref().unwrap_or(""))
        .map_err(|m| err(ErrorReason::BadRequest, m))?;
    let ws = ws.map_err(|e| {
        err(
            ErrorReason::BadRequest,
            format!("exec needs a WebSocket upgrade with subprotocol {PROTOCOL}: {e}"),
        )
    })?;
    let (node, endpoint) = agent_of(&st, &name)?;
    let route = Route {
        node,
        endpoint,
        name,
    };
    let agent = dial_agent(&agents, &route, &opts, &id.user).await?;
    let object = ObjectRef::new(Kind::Container, route.name.as_str()).to_string();
    Ok(ws.protocols([PROTOCOL]).on_upgrade(move |user| async move {
        let end = relay(user, agent).await;
        gate.audit_exec(&id, &object, &opts.command, end);
    }))
}

/// The agent's exec WebSocket, or the API error its refusal or absence means.
async fn dial_agent(
    agents: &AgentClient,
    route: &Route,
    opts: &ExecOptions,
    user: &str,
) -> Result<AgentSocket, ApiErr> {
    let host = route
        .endpoint
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(&route.endpoint);
    let server_name = ServerName::try_from(host.to_string()).map_err(|e| route.unreachable(e))?;
    let connect = async {
        let tcp = TcpStream::connect(&route.endpoint)
            .await
            .map_err(|e| route.unreachable(e))?;
        tokio_rustls::TlsConnector::from(agents.tls.clone())
            .connect(server_name, tcp)
            .await
            .map_err(|e| route.unreachable(format!("TLS: {e}")))
    };
    let tls = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| route.unreachable(format!("no connection within {CONNECT_TIMEOUT:?}")))??;
    let url = format!(
        "wss://{}/containers/{}/exec?{}",
        route.endpoint,
        route.name,
        opts.to_query()
    );
    let mut req = url
        .into_client_request()
        .map_err(|e| err(ErrorReason::InternalError, format!("bad agent URL: {e}")))?;
    req.headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static(PROTOCOL));
    if let Ok(v) = HeaderValue::from_str(user) {
        req.headers_mut().insert(USER_HEADER, v);
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::client_async(req, tls)).await {
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(tungstenite::Error::Http(resp))) => Err(refusal(route, &resp)),
        Ok(Err(e)) => Err(route.unreachable(e)),
        Err(_) => Err(route.unreachable(format!(
            "no answer to the upgrade within {CONNECT_TIMEOUT:?}"
        ))),
    }
}

/// What the agent's refusal of the upgrade means for the user.
fn refusal(route: &Route, resp: &tungstenite::http::Response<Option<Vec<u8>>>) -> ApiErr {
    let status = resp.status();
    let text = resp
        .body()
        .as_deref()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    let reason = match status.as_u16() {
        404 => ErrorReason::NotFound,
        400 => ErrorReason::BadRequest,
        409 => ErrorReason::Conflict,
        _ => ErrorReason::ServiceUnavailable,
    };
    err(
        reason,
        format!(
            "container/{}: the agent of node {} answered {status}: {}",
            route.name,
            route.node,
            text.trim()
        ),
    )
}

/// Relays until the agent has sent the status (or either side went away); how it ended.
async fn relay(user: WebSocket, agent: AgentSocket) -> ExecEnd {
    let (mut user_tx, mut user_rx) = user.split();
    let (mut agent_tx, mut agent_rx) = agent.split();
    let up = async move {
        while let Some(Ok(m)) = user_rx.next().await {
            let m = match m {
                UserMessage::Binary(b) => AgentMessage::Binary(b),
                UserMessage::Close(_) => break,
                _ => continue,
            };
            if agent_tx.send(m).await.is_err() {
                break;
            }
        }
        let _ = agent_tx.close().await;
    };
    let down = async move {
        while let Some(Ok(m)) = agent_rx.next().await {
            let b = match m {
                AgentMessage::Binary(b) => b,
                AgentMessage::Close(_) => break,
                _ => continue,
            };
            let status = match b.first() {
                Some(&channel::STATUS) => Some(Frame::decode(&b)),
                _ => None,
            };
            if user_tx.send(UserMessage::Binary(b)).await.is_err() {
                return ExecEnd::Failed("the user went away".into());
            }
            if let Some(s) = status {
                let _ = user_tx.send(UserMessage::Close(None)).await;
                return end_of(s);
            }
        }
        let _ = user_tx.send(UserMessage::Close(None)).await;
        ExecEnd::Failed("the agent closed the session without a status".into())
    };
    tokio::pin!(up, down);
    tokio::select! {
        biased;
        end = &mut down => end,
        () = &mut up => ExecEnd::Failed("the user closed the session before the command ended".into()),
    }
}

fn end_of(status: Result<Frame, topo_schema::exec::FrameError>) -> ExecEnd {
    match status {
        Ok(Frame::Status(s)) => match s.exit_code() {
            Some(code) => ExecEnd::Exited(code),
            None => ExecEnd::Failed(failure_text(&s)),
        },
        Ok(_) => ExecEnd::Failed("an unexpected frame on the status channel".into()),
        Err(e) => ExecEnd::Failed(e.to_string()),
    }
}

fn failure_text(s: &ExecStatus) -> String {
    format!("{}: {}", s.reason, s.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_frame_becomes_the_audit_s_end() {
        let f = |s: ExecStatus| Frame::decode(&Frame::Status(s).encode());
        assert_eq!(end_of(f(ExecStatus::exited(0))), ExecEnd::Exited(0));
        assert_eq!(end_of(f(ExecStatus::exited(127))), ExecEnd::Exited(127));
        assert_eq!(
            end_of(f(ExecStatus::failed("InternalError", "docker went away"))),
            ExecEnd::Failed("InternalError: docker went away".into())
        );
        assert!(matches!(
            end_of(Frame::decode(b"\x03{")),
            ExecEnd::Failed(_)
        ));
    }

    #[test]
    fn the_agent_s_refusals_keep_their_meaning() {
        let route = Route {
            node: "node2".into(),
            endpoint: "192.168.100.2:10250".into(),
            name: "db".into(),
        };
        let resp = |code: u16, body: &str| {
            tungstenite::http::Response::builder()
                .status(code)
                .body(Some(body.as_bytes().to_vec()))
                .unwrap()
        };
        let e = refusal(&route, &resp(404, "container db is not on this node\n"));
        assert_eq!(e.0.reason, ErrorReason::NotFound);
        assert!(e.0.message.contains("node node2"), "{}", e.0.message);
        assert!(e.0.message.ends_with("not on this node"), "{}", e.0.message);
        assert_eq!(
            refusal(&route, &resp(409, "not running")).0.reason,
            ErrorReason::Conflict
        );
        assert_eq!(
            refusal(&route, &resp(403, "only the controller")).0.reason,
            ErrorReason::ServiceUnavailable
        );
        let e = route.unreachable("connection refused");
        assert_eq!(e.0.code, 503);
        assert_eq!(
            e.0.message,
            "container/db: cannot reach the agent of node node2 at 192.168.100.2:10250: connection refused"
        );
    }
}
