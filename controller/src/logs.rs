//! `GET /apis/topo.dev/v1alpha1/containers/NAME/log` (`topoctl logs`): a container's log,
//! read from the agent of the container's node and streamed through.
//!
//! End to end: `guard.rs` authenticates the user and authorizes verb `get` on "the log of
//! container/NAME" (roles `admin` and `view`; not `node`, not `metrics`). This module then
//! finds the container's node in the cache and the agent's endpoint in the node's heartbeat
//! (the agent announces it there), and asks the agent over HTTPS, verifying the agent's
//! certificate against the cluster CA (the node identity names the node's address) and
//! presenting the controller's client identity (CN=topo-controller, the certificate of its
//! etcd user: the one identity the agents accept for logs). The user's name rides along in
//! `Topo-User` for the agent's log line; the decision was made here, once.
//!
//! The query is kube's pod-log options, checked here and passed on: `follow`, `tailLines`,
//! `sinceSeconds`, `sinceTime` (RFC 3339). The body is the log as bytes, chunked: a follow
//! stays open until the client or the container goes away. What the agent refuses comes
//! back as the API's errors (404 for a container the agent does not have yet, 503 when the
//! agent cannot be reached).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use topo_schema::api::{ApiError, ErrorReason};
use topo_schema::{Kind, ObjectRef, Resource};

use crate::auth::Identity;
use crate::reply::{ApiErr, AppState};

/// The query keys passed on to the agent.
const LOG_PARAMS: [&str; 4] = ["follow", "tailLines", "sinceSeconds", "sinceTime"];
/// The header naming the user (the agent's `endpoint::USER_HEADER`).
pub(crate) const USER_HEADER: &str = "topo-user";

/// HTTPS to the agents with the controller's client identity.
#[derive(Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    /// The same identity and trust for the WebSockets of `exec.rs`, HTTP/1.1 only (a
    /// WebSocket upgrade is an HTTP/1.1 request).
    pub(crate) tls: Arc<rustls::ClientConfig>,
}

impl AgentClient {
    /// Trusts the cluster CA and presents the controller's etcd client identity
    /// (`etcd.caFile`, `etcd.certFile`, `etcd.keyFile` of the configuration).
    pub fn new(security: &crate::config::Security) -> Result<AgentClient, topo_pki::tls::TlsError> {
        let e = &security.etcd;
        let tls = topo_pki::tls::client_config(&e.ca_file, Some((&e.cert_file, &e.key_file)))?;
        let mut ws_tls = tls.clone();
        ws_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        // reqwest (rustls without a built-in provider) wants a process-wide provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| topo_pki::tls::TlsError::Config(e.to_string()))?;
        Ok(AgentClient {
            http,
            tls: Arc::new(ws_tls),
        })
    }

    /// A client without an identity, for tests that never reach an agent.
    #[cfg(test)]
    pub(crate) fn for_tests() -> AgentClient {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        AgentClient {
            http: reqwest::Client::new(),
            tls: Arc::new(tls),
        }
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

pub(crate) fn err(reason: ErrorReason, message: String) -> ApiErr {
    ApiErr(ApiError::new(reason, message))
}

/// The agent endpoint (`ADDRESS:PORT`) of the node that runs container `name`.
pub(crate) fn agent_of(st: &AppState, name: &str) -> Result<(String, String), ApiErr> {
    let snap = st.cache.current();
    let r = ObjectRef::new(Kind::Container, name);
    let Some(Resource::Container(c)) = snap.get(&r).map(|o| &o.resource) else {
        return Err(err(ErrorReason::NotFound, format!("{r} not found")));
    };
    let node = c.spec.node.clone();
    let Some(beat) = snap.heartbeats.get(&node) else {
        return Err(err(
            ErrorReason::ServiceUnavailable,
            format!("{r}: the agent of node {node} is not running (no heartbeat)"),
        ));
    };
    match &beat.endpoint {
        Some(e) => Ok((node, e.clone())),
        None => Err(err(
            ErrorReason::ServiceUnavailable,
            format!("{r}: the agent of node {node} announces no endpoint (it is older than logs)"),
        )),
    }
}

/// The query, with only the known keys and values of the right shape.
fn log_query(q: &HashMap<String, String>) -> Result<Vec<(String, String)>, ApiErr> {
    let bad = |m: String| err(ErrorReason::BadRequest, m);
    let mut out = Vec::new();
    for (k, v) in q {
        if !LOG_PARAMS.contains(&k.as_str()) {
            return Err(bad(format!(
                "unknown log option {k:?} (follow, tailLines, sinceSeconds, sinceTime)"
            )));
        }
        let ok = match k.as_str() {
            "follow" => matches!(v.as_str(), "true" | "false"),
            "tailLines" | "sinceSeconds" => v.parse::<u64>().is_ok(),
            _ => chrono::DateTime::parse_from_rfc3339(v).is_ok(),
        };
        if !ok {
            return Err(bad(format!("invalid {k} {v:?}")));
        }
        out.push((k.clone(), v.clone()));
    }
    Ok(out)
}

/// `GET .../containers/NAME/log` (authorized by the guard).
pub async fn container_log(
    State(st): State<AppState>,
    Path((plural, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    Extension(agents): Extension<Arc<AgentClient>>,
    Extension(id): Extension<Identity>,
) -> Result<Response, ApiErr> {
    if Kind::parse(&plural) != Some(Kind::Container) {
        return Err(err(
            ErrorReason::NotFound,
            format!("only containers have logs, not {plural}"),
        ));
    }
    let query = log_query(&q)?;
    let (node, endpoint) = agent_of(&st, &name)?;
    let url = reqwest::Url::parse_with_params(
        &format!("https://{endpoint}/containers/{name}/logs"),
        &query,
    )
    .map_err(|e| err(ErrorReason::InternalError, format!("bad agent URL: {e}")))?;
    let unreachable = |detail: String| {
        err(
            ErrorReason::ServiceUnavailable,
            format!("cannot reach the agent of node {node} at {endpoint}: {detail}"),
        )
    };
    let resp = agents
        .http
        .get(url)
        .header(USER_HEADER, id.user.as_str())
        .send()
        .await
        .map_err(|e| unreachable(error_detail(&e)))?;
    let status = resp.status();
    if status != StatusCode::OK {
        let text = resp.text().await.unwrap_or_default();
        let text = text.trim();
        let reason = match status {
            StatusCode::NOT_FOUND => ErrorReason::NotFound,
            StatusCode::BAD_REQUEST => ErrorReason::BadRequest,
            _ => ErrorReason::ServiceUnavailable,
        };
        return Err(err(
            reason,
            format!("container/{name}: the agent of node {node} answered {status}: {text}"),
        ));
    }
    let mut out = Body::from_stream(resp.bytes_stream()).into_response();
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(out)
}

/// The innermost cause of a transport error, which says what went wrong.
pub(crate) fn error_detail(e: &reqwest::Error) -> String {
    let mut last = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        last = s.to_string();
        src = s.source();
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_options_are_checked() {
        let q = |pairs: &[(&str, &str)]| {
            log_query(
                &pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        assert_eq!(q(&[("tailLines", "5")]).unwrap().len(), 1);
        assert!(q(&[("sinceTime", "2026-01-01T00:00:00Z")]).is_ok());
        assert!(q(&[("follow", "yes")]).is_err());
        assert!(q(&[("tailLines", "-1")]).is_err());
        assert!(q(&[("sinceTime", "yesterday")]).is_err());
        let e = q(&[("previous", "true")]).unwrap_err();
        assert!(
            e.0.message.contains("unknown log option"),
            "{}",
            e.0.message
        );
    }
}
