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

use crate::config::{Connection, Credentials};
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
    /// A TLS failure in words, with a hint (`tls::explain`).
    #[error("{0}")]
    Tls(String),
    #[error(transparent)]
    TlsSetup(#[from] crate::tls::TlsSetupError),
    #[error(transparent)]
    Exec(#[from] ExecError),
}

/// What failed in `topoctl exec`'s WebSocket session (`exec.rs`).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(
        "cannot reach the controller at {server}: {detail} (is topo-controller running? set --server or TOPO_SERVER)"
    )]
    Connect { server: String, detail: String },
    #[error("failed to open the exec session with {server}: {detail}")]
    Upgrade { server: String, detail: String },
    #[error("the exec session failed: {0}")]
    Session(String),
    #[error("{0}")]
    Remote(String),
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
                | ClientError::Tls(_)
        )
    }
}

/// The message, then each cause that adds something on its own line, then a hint for the
/// refusals a user can act on.
pub fn format_api_error(e: &ApiError) -> String {
    let mut out = e.message.clone();
    for c in &e.causes {
        let line = c.to_string();
        if line != e.message {
            out.push_str("\n  ");
            out.push_str(&line);
        }
    }
    let hint = match e.reason {
        ErrorReason::Unauthorized => Some(
            "the controller did not accept the credentials: check client-certificate/client-key or token in TOPO_CONFIG",
        ),
        ErrorReason::Forbidden if e.message.starts_with("quota exceeded") => None,
        ErrorReason::Forbidden => Some(
            "ask an administrator to bind a role to your user or group (bindings in the controller's configuration)",
        ),
        ErrorReason::TooManyRequests => {
            Some("close other watches (topoctl get -w, events -w) and retry")
        }
        _ => None,
    };
    if let Some(h) = hint {
        out.push_str("\nhint: ");
        out.push_str(h);
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

type Seen = crate::tls::SeenSlot;

#[derive(Clone)]
pub struct Client {
    base: Url,
    server: String,
    http: reqwest::Client,
    timeout: Option<Duration>,
    /// The connection settings (None only for the plain-HTTP unit tests).
    conn: Option<Connection>,
    /// Why the verifier refused the server's certificate, if it did.
    seen: Seen,
}

/// Page size topoctl asks for; it follows `continue` tokens transparently.
pub const PAGE: usize = 500;

impl Client {
    /// HTTPS to `conn.server`, trusting `conn.ca` only, with `conn`'s credentials.
    /// `timeout`: the limit for one ordinary request (watches are not limited).
    pub fn new(conn: &Connection, timeout: Option<Duration>) -> Result<Client, ClientError> {
        let (tls, seen) = crate::tls::client_config(conn)?;
        let mut headers = reqwest::header::HeaderMap::new();
        if let Credentials::Token(t) = &conn.credentials {
            let mut v =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                    ClientError::Tls("the token in TOPO_CONFIG is not a valid header value".into())
                })?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let builder = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .default_headers(headers);
        let mut c = Client::with_builder(&conn.server, timeout, builder)?;
        c.conn = Some(conn.clone());
        c.seen = seen;
        Ok(c)
    }

    /// A client without TLS, for unit tests against a fake plain-HTTP server.
    #[cfg(test)]
    pub(crate) fn plain_for_test(server: &str, timeout: Option<Duration>) -> Client {
        Client::with_builder(server, timeout, reqwest::Client::builder())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn with_builder(
        server: &str,
        timeout: Option<Duration>,
        builder: reqwest::ClientBuilder,
    ) -> Result<Client, ClientError> {
        let base = Url::parse(server).map_err(|_| ClientError::BadUrl(server.to_string()))?;
        if base.cannot_be_a_base() {
            return Err(ClientError::BadUrl(server.to_string()));
        }
        // reqwest (rustls without a built-in provider) panics on build when no process-wide
        // provider is installed, even where our own TLS configuration is used; install ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = builder
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
            conn: None,
            seen: Seen::default(),
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
        if let Some(conn) = &self.conn {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(text) = crate::tls::explain(&source, conn, seen) {
                return ClientError::Tls(text);
            }
        }
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
        print_warnings(resp.headers());
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

    /// Every object of `kind` (matching `selector`), page by page at one revision.
    pub async fn list(
        &self,
        kind: Kind,
        selector: Option<&str>,
    ) -> Result<List<Resource>, ClientError> {
        let mut base: Vec<(&str, &str)> = selector
            .map(|s| vec![("labelSelector", s)])
            .unwrap_or_default();
        let limit = PAGE.to_string();
        base.push(("limit", &limit));
        self.all_pages(&[kind.plural()], base, &format!("list {}", kind.plural()))
            .await
    }

    /// Follows `continue` tokens until the list is whole.
    async fn all_pages<T: DeserializeOwned>(
        &self,
        path: &[&str],
        query: Vec<(&str, &str)>,
        what: &str,
    ) -> Result<List<T>, ClientError> {
        let url = self.url(path, &query)?;
        let mut list: List<T> = self.json(Method::GET, url, None::<&()>, what).await?;
        let mut token = list.continue_token().map(str::to_string);
        while let Some(t) = token {
            let mut q = query.clone();
            q.push(("continue", &t));
            let url = self.url(path, &q)?;
            let next: List<T> = self.json(Method::GET, url, None::<&()>, what).await?;
            token = next.continue_token().map(str::to_string);
            list.items.extend(next.items);
        }
        if let Some(m) = list.metadata.as_mut() {
            m.continue_ = None;
        }
        Ok(list)
    }

    pub async fn delete(&self, kind: Kind, name: &str, dry_run: bool) -> Result<(), ClientError> {
        let query: &[(&str, &str)] = if dry_run { &[("dryRun", "All")] } else { &[] };
        let url = self.url(&[kind.plural(), name], query)?;
        self.send(self.http.delete(url), true).await.map(|_| ())
    }

    /// PUT of a whole object; refused with a conflict when its resourceVersion is stale.
    pub async fn replace(&self, r: &Resource, dry_run: bool) -> Result<Resource, ClientError> {
        let query: &[(&str, &str)] = if dry_run { &[("dryRun", "All")] } else { &[] };
        let url = self.url(&[r.kind().plural(), r.name()], query)?;
        self.json(
            Method::PUT,
            url,
            Some(r),
            &format!("replace {}", r.object_ref()),
        )
        .await
    }

    pub async fn apply(&self, req: &ApplyRequest) -> Result<ApplyResponse, ClientError> {
        let url = self.url(&["apply"], &[])?;
        self.json(Method::POST, url, Some(req), "apply").await
    }

    /// `topoctl verify`: the agents' checks, as the controller folds them.
    pub async fn verify(
        &self,
        selector: Option<&str>,
    ) -> Result<topo_schema::verify::VerifyReport, ClientError> {
        let query: Vec<(&str, &str)> = selector.map(|s| ("labelSelector", s)).into_iter().collect();
        let url = self.url(&["verify"], &query)?;
        self.json(Method::POST, url, None::<&()>, "verify").await
    }

    pub async fn events(&self, object: Option<&ObjectRef>) -> Result<List<Event>, ClientError> {
        let obj = object.map(|o| o.to_string());
        let mut query: Vec<(&str, &str)> = obj
            .as_deref()
            .map(|o| vec![("object", o)])
            .unwrap_or_default();
        let limit = PAGE.to_string();
        query.push(("limit", &limit));
        self.all_pages(&["events"], query, "list events").await
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

    /// A container's log (`topoctl logs`), its body left to read; `query` holds kube's
    /// pod-log options (`follow`, `tailLines`, `sinceSeconds`, `sinceTime`). A follow is
    /// not time-limited.
    pub async fn logs(&self, name: &str, query: &[(&str, &str)]) -> Result<RawBody, ClientError> {
        let url = self.url(&[Kind::Container.plural(), name, "log"], query)?;
        let follow = query.contains(&("follow", "true"));
        let resp = self.send(self.http.get(url), !follow).await?;
        Ok(RawBody {
            client: self.clone(),
            body: Box::pin(resp.bytes_stream()),
        })
    }

    /// GET of any path of the controller (`get --raw`), its body left to read. A watch
    /// (`?watch=true`) is not time-limited.
    pub async fn raw(&self, path_and_query: &str) -> Result<RawBody, ClientError> {
        let url = self
            .base
            .join(path_and_query)
            .map_err(|_| ClientError::BadUrl(format!("{}{path_and_query}", self.server)))?;
        let watching = url
            .query_pairs()
            .any(|(k, v)| k == "watch" && matches!(v.as_ref(), "" | "true" | "1"));
        let resp = self.send(self.http.get(url), !watching).await?;
        Ok(RawBody {
            client: self.clone(),
            body: Box::pin(resp.bytes_stream()),
        })
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

/// The texts of a response's `Warning` headers (`299 - "text"`, RFC 7234: code, agent,
/// quoted text); a value that does not follow that form is shown whole.
pub fn warnings(headers: &reqwest::header::HeaderMap) -> Vec<String> {
    headers
        .get_all(reqwest::header::WARNING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| {
            let mut parts = v.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(code), Some(_agent), Some(text))
                    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    let text = text.trim();
                    let text = text.strip_prefix('"').unwrap_or(text);
                    // A warn-date may follow the closing quote.
                    text.split_once('"').map_or(text, |(t, _)| t).to_string()
                }
                _ => v.to_string(),
            }
        })
        .collect()
}

/// Prints each server warning once per run on stderr, as kubectl does (`Warning: ...`):
/// a list of several pages, or a wait that polls, says it once.
fn print_warnings(headers: &reqwest::header::HeaderMap) {
    static SHOWN: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> =
        std::sync::OnceLock::new();
    for w in warnings(headers) {
        let shown = SHOWN.get_or_init(Default::default);
        let first = shown
            .lock()
            .map(|mut s| s.insert(w.clone()))
            .unwrap_or(true);
        if first {
            eprintln!("Warning: {w}");
        }
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
        401 => ErrorReason::Unauthorized,
        403 => ErrorReason::Forbidden,
        413 => ErrorReason::RequestEntityTooLarge,
        429 => ErrorReason::TooManyRequests,
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

/// The body of a `get --raw`, chunk by chunk.
pub struct RawBody {
    client: Client,
    body: ByteStream,
}

impl RawBody {
    /// The next piece of the body; `None` at its end.
    pub async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>, ClientError> {
        match self.body.next().await {
            Some(Ok(b)) => Ok(Some(b)),
            Some(Err(e)) => Err(self.client.transport_error(e)),
            None => Ok(None),
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue, WARNING};

    #[test]
    fn warning_headers_are_shown_by_their_text() {
        let mut h = HeaderMap::new();
        h.append(
            WARNING,
            HeaderValue::from_static("299 - \"etcd unavailable: this answer may be stale\""),
        );
        h.append(
            WARNING,
            HeaderValue::from_static("299 topo \"with a date\" \"Sat, 28 Nov 2026 18:00:00 GMT\""),
        );
        h.append(WARNING, HeaderValue::from_static("not the usual form"));
        assert_eq!(
            warnings(&h),
            vec![
                "etcd unavailable: this answer may be stale",
                "with a date",
                "not the usual form"
            ]
        );
    }
}
