//! The controller's HTTP API, as `schema/src/api.rs` describes it.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use topo_schema::api::{
    API_PREFIX, ApiError, ApplyRequest, ApplyResponse, ErrorReason, Event, List, WatchEvent,
};
use topo_schema::{Kind, ObjectRef, Resource};

use crate::timefmt::format_duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the controller at {server}: {detail} (is topo-controller running? set --server or TOPO_SERVER)"
    )]
    Unreachable {
        server: String,
        detail: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the controller at {server} did not answer within {after} (see --request-timeout)")]
    Timeout {
        server: String,
        after: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{}", format_api_error(.0))]
    Api(ApiError),
    #[error("failed to talk to the controller at {server}: {detail}")]
    Http {
        server: String,
        detail: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("failed to decode the controller's answer to {what}: {source}")]
    Decode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid controller address {0:?}")]
    BadUrl(String),
}

impl ClientError {
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            ClientError::Api(e) => Some(e),
            _ => None,
        }
    }

    pub fn reason(&self) -> Option<ErrorReason> {
        self.api().map(|e| e.reason)
    }

    pub fn is_not_found(&self) -> bool {
        self.reason() == Some(ErrorReason::NotFound)
    }

    /// The controller could not be reached (as opposed to having answered with an error).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable { .. }
                | ClientError::Timeout { .. }
                | ClientError::Http { .. }
        )
    }
}

/// The message, then each cause that adds something on its own line.
pub fn format_api_error(e: &ApiError) -> String {
    let mut out = e.message.clone();
    for c in &e.causes {
        let line = c.to_string();
        if line != e.message {
            out.push_str("\n  ");
            out.push_str(&line);
        }
    }
    out
}

/// The innermost description of a transport error, `connection refused` when that is what
/// happened (reqwest's own message is only "error sending request").
fn transport_detail(e: &reqwest::Error) -> String {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut innermost = e.to_string();
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused".into(),
                std::io::ErrorKind::ConnectionReset => return "connection reset".into(),
                _ => {}
            }
        }
        innermost = s.to_string();
        src = s.source();
    }
    innermost
}

#[derive(Clone)]
pub struct Client {
    base: Url,
    server: String,
    http: reqwest::Client,
    timeout: Option<Duration>,
}

impl Client {
    /// `timeout`: the limit for one ordinary request (watches are not limited).
    pub fn new(server: &str, timeout: Option<Duration>) -> Result<Client, ClientError> {
        let base = Url::parse(server).map_err(|_| ClientError::BadUrl(server.to_string()))?;
        if base.cannot_be_a_base() {
            return Err(ClientError::BadUrl(server.to_string()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("topoctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| ClientError::Http {
                server: server.to_string(),
                detail: transport_detail(&source),
                source,
            })?;
        Ok(Client {
            base,
            server: server.to_string(),
            http,
            timeout: timeout.filter(|t| !t.is_zero()),
        })
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<Url, ClientError> {
        let mut url = self.base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|_| ClientError::BadUrl(self.server.clone()))?;
            path.pop_if_empty();
            for s in API_PREFIX.split('/').filter(|s| !s.is_empty()) {
                path.push(s);
            }
            for s in segments {
                path.push(s);
            }
        }
        if !query.is_empty() {
            let mut q = url.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
        }
        Ok(url)
    }

    fn transport_error(&self, source: reqwest::Error) -> ClientError {
        let server = self.server.clone();
        if source.is_timeout() {
            let after = self
                .timeout
                .map(format_duration)
                .unwrap_or_else(|| "the time limit".into());
            return ClientError::Timeout {
                server,
                after,
                source,
            };
        }
        let detail = transport_detail(&source);
        if source.is_connect() {
            ClientError::Unreachable {
                server,
                detail,
                source,
            }
        } else {
            ClientError::Http {
                server,
                detail,
                source,
            }
        }
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        limited: bool,
    ) -> Result<reqwest::Response, ClientError> {
        let req = match (limited, self.timeout) {
            (true, Some(t)) => req.timeout(t),
            _ => req,
        };
        let resp = req.send().await.map_err(|e| self.transport_error(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.text().await.map_err(|e| self.transport_error(e))?;
        Err(ClientError::Api(api_error_from(status, &body)))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&(impl Serialize + ?Sized)>,
        what: &str,
    ) -> Result<T, ClientError> {
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = self.send(req, true).await?;
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(e))?;
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
            what: what.to_string(),
            source,
        })
    }

    pub async fn healthz(&self) -> Result<(), ClientError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|_| ClientError::BadUrl(self.server.clone()))?
            .pop_if_empty()
            .push("healthz");
        self.send(self.http.get(url), true).await.map(|_| ())
    }

    pub async fn get(&self, kind: Kind, name: &str) -> Result<Resource, ClientError> {
        let url = self.url(&[kind.plural(), name], &[])?;
        self.json(
            Method::GET,
            url,
            None::<&()>,
            &format!("get {}", ObjectRef::new(kind, name)),
        )
        .await
    }

    /// What agents still report about an object (empty once every node removed it).
    pub async fn reports(
        &self,
        kind: Kind,
        name: &str,
    ) -> Result<List<topo_schema::api::ObservedReport>, ClientError> {
        let url = self.url(&[kind.plural(), name, "reports"], &[])?;
        self.json(
            Method::GET,
            url,
            None::<&()>,
            &format!("get the reports of {}", ObjectRef::new(kind, name)),
        )
        .await
    }

    pub async fn list(
        &self,
        kind: Kind,
        selector: Option<&str>,
    ) -> Result<List<Resource>, ClientError> {
        let query: Vec<(&str, &str)> = selector
            .map(|s| vec![("labelSelector", s)])
            .unwrap_or_default();
        let url = self.url(&[kind.plural()], &query)?;
        self.json(
            Method::GET,
            url,
            None::<&()>,
            &format!("list {}", kind.plural()),
        )
        .await
    }

    pub async fn delete(&self, kind: Kind, name: &str, dry_run: bool) -> Result<(), ClientError> {
        let query: &[(&str, &str)] = if dry_run { &[("dryRun", "All")] } else { &[] };
        let url = self.url(&[kind.plural(), name], query)?;
        self.send(self.http.delete(url), true).await.map(|_| ())
    }

    pub async fn apply(&self, req: &ApplyRequest) -> Result<ApplyResponse, ClientError> {
        let url = self.url(&["apply"], &[])?;
        self.json(Method::POST, url, Some(req), "apply").await
    }

    pub async fn events(&self, object: Option<&ObjectRef>) -> Result<List<Event>, ClientError> {
        let obj = object.map(|o| o.to_string());
        let query: Vec<(&str, &str)> = obj
            .as_deref()
            .map(|o| vec![("object", o)])
            .unwrap_or_default();
        let url = self.url(&["events"], &query)?;
        self.json(Method::GET, url, None::<&()>, "list events")
            .await
    }

    /// A watch of one kind from `resource_version` (changes after it).
    pub async fn watch(
        &self,
        kind: Kind,
        selector: Option<&str>,
        resource_version: &str,
    ) -> Result<WatchStream<Resource>, ClientError> {
        let mut query = vec![("watch", "true"), ("resourceVersion", resource_version)];
        if let Some(s) = selector {
            query.push(("labelSelector", s));
        }
        let url = self.url(&[kind.plural()], &query)?;
        self.open_watch(url).await
    }

    pub async fn watch_events(
        &self,
        object: Option<&ObjectRef>,
        resource_version: Option<&str>,
    ) -> Result<WatchStream<Event>, ClientError> {
        let obj = object.map(|o| o.to_string());
        let mut query = vec![("watch", "true")];
        if let Some(o) = obj.as_deref() {
            query.push(("object", o));
        }
        if let Some(rv) = resource_version {
            query.push(("resourceVersion", rv));
        }
        let url = self.url(&["events"], &query)?;
        self.open_watch(url).await
    }

    async fn open_watch<T>(&self, url: Url) -> Result<WatchStream<T>, ClientError> {
        let resp = self.send(self.http.get(url), false).await?;
        Ok(WatchStream {
            client: self.clone(),
            body: Box::pin(resp.bytes_stream()),
            buf: Vec::new(),
            _t: Default::default(),
        })
    }
}

/// An ApiError from a failed response, also when the body is not one.
pub fn api_error_from(status: StatusCode, body: &str) -> ApiError {
    if let Ok(e) = serde_json::from_str::<ApiError>(body) {
        return e;
    }
    let reason = match status.as_u16() {
        400 => ErrorReason::BadRequest,
        404 => ErrorReason::NotFound,
        409 => ErrorReason::Conflict,
        410 => ErrorReason::Expired,
        413 => ErrorReason::RequestEntityTooLarge,
        422 => ErrorReason::Invalid,
        503 => ErrorReason::ServiceUnavailable,
        _ => ErrorReason::InternalError,
    };
    let text = body.trim();
    let message = if text.is_empty() {
        format!("the controller answered {status}")
    } else {
        format!(
            "the controller answered {status}: {}",
            text.chars().take(500).collect::<String>()
        )
    };
    ApiError {
        reason,
        code: status.as_u16(),
        message,
        causes: vec![],
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// Newline-delimited watch events.
pub struct WatchStream<T> {
    client: Client,
    body: ByteStream,
    buf: Vec<u8>,
    _t: std::marker::PhantomData<fn() -> T>,
}

/// A watch line before its object is decoded (so `T` needs no `Default`, as
/// `WatchEvent<T>`'s derived `Deserialize` would ask).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawWatchEvent {
    #[serde(rename = "type")]
    type_: topo_schema::api::WatchEventType,
    #[serde(default)]
    object: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<ApiError>,
    #[serde(default)]
    resource_version: String,
}

fn decode_event<T: DeserializeOwned>(line: &[u8]) -> Result<WatchEvent<T>, ClientError> {
    let decode = |source| ClientError::Decode {
        what: "a watch".into(),
        source,
    };
    let raw: RawWatchEvent = serde_json::from_slice(line).map_err(decode)?;
    let object = raw
        .object
        .map(serde_json::from_value)
        .transpose()
        .map_err(decode)?;
    Ok(WatchEvent {
        type_: raw.type_,
        object,
        error: raw.error,
        resource_version: raw.resource_version,
    })
}

impl<T: DeserializeOwned> WatchStream<T> {
    /// The next event; `None` when the server ended the stream.
    pub async fn next_event(&mut self) -> Result<Option<WatchEvent<T>>, ClientError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                return decode_event(line).map(Some);
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(chunk.as_ref()),
                Some(Err(e)) => return Err(self.client.transport_error(e)),
                None => {
                    let rest = std::mem::take(&mut self.buf);
                    let rest = rest.trim_ascii();
                    if rest.is_empty() {
                        return Ok(None);
                    }
                    return decode_event(rest).map(Some);
                }
            }
        }
    }
}
