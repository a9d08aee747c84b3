//! One etcd client over several members that fails over between them.
//!
//! etcd-client's own channel (tonic's balance channel) keeps every endpoint in rotation: when
//! a member dies, its connection keeps reconnecting and keeps taking its share of requests,
//! each failing with a connect error. In the lab, with one member of three killed, about one
//! write in five failed for as long as the member stayed down. This channel pins each client
//! to one member instead — the first endpoint given, as etcd's Go client once did, so an
//! operator spreads clients over members by ordering their endpoints — and moves on to the
//! next when that member fails:
//! * a request that could not be sent at all (the member refused the connection) goes to the
//!   next member: nothing reached etcd, so even a write is safe to send again;
//! * any other transport failure or a request timeout marks the member down for a while (1 s,
//!   doubling up to 10 s) and moves the pin, but the request fails: it may have been applied,
//!   and only the caller knows whether repeating it is safe;
//! * when every member is marked down, the one whose mark ends first is tried anyway, so a
//!   cluster that comes back is used at once.
//!
//! Streams (watch, lease keep-alive) are neither buffered nor retried here; their callers
//! resume them (the watcher from its revision). Unary requests are buffered (they are one
//! small message) so that they can be sent again.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use etcd_client::{Client, TlsOptions};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceExt};

/// How a member marked down is left alone: 1 s, doubling per failure in a row, at most 10 s.
const DOWN_FIRST: Duration = Duration::from_secs(1);
const DOWN_MAX: Duration = Duration::from_secs(10);

/// The request limit when no request timeout is configured.
const DEFAULT_LIMIT: Duration = Duration::from_secs(5);

/// gRPC methods whose request is a stream: never buffered, never sent twice.
const STREAMING: [&str; 2] = [
    "/etcdserverpb.Watch/Watch",
    "/etcdserverpb.Lease/LeaseKeepAlive",
];

#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    #[error("failed to connect to etcd: no endpoints given")]
    NoEndpoints,
    #[error("failed to use etcd endpoint {endpoint:?}")]
    Endpoint {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("failed to set up the etcd client")]
    Client(#[source] etcd_client::Error),
}

/// How each member's connection is made.
#[derive(Debug, Clone, Default)]
pub struct EndpointOptions {
    pub tls: Option<TlsOptions>,
    pub connect_timeout: Option<Duration>,
    /// Each request's deadline (a stream's: until its response starts).
    pub request_timeout: Option<Duration>,
    /// HTTP/2 keep-alive: ping interval and how long an answer may take.
    pub keep_alive: Option<(Duration, Duration)>,
    pub keep_alive_while_idle: bool,
}

impl EndpointOptions {
    /// A lazily connecting channel to `url`. Through a connector of our own rather than
    /// `connect_lazy`: tonic then applies the connect timeout to TCP and TLS together (with
    /// `connect_lazy` it bounds the TCP connect only, and a member that accepts TCP but never
    /// answers the handshake — a paused process — would hold requests forever).
    fn channel(&self, url: &str) -> Result<Channel, FailoverError> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(self.connect_timeout);
        Ok(self.endpoint(url)?.connect_with_connector_lazy(tcp))
    }

    fn endpoint(&self, url: &str) -> Result<Endpoint, FailoverError> {
        let fail = |source| FailoverError::Endpoint {
            endpoint: url.to_string(),
            source,
        };
        let mut e = Endpoint::from_shared(url.to_string()).map_err(fail)?;
        if let Some(tls) = &self.tls {
            e = e.tls_config(tls.clone()).map_err(fail)?;
        }
        if let Some(t) = self.connect_timeout {
            e = e.connect_timeout(t);
        }
        if let Some(t) = self.request_timeout {
            e = e.timeout(t);
        }
        if let Some((interval, timeout)) = self.keep_alive {
            e = e
                .http2_keep_alive_interval(interval)
                .keep_alive_timeout(timeout)
                .keep_alive_while_idle(self.keep_alive_while_idle);
        }
        Ok(e)
    }
}

/// An etcd client over `endpoints` that fails over between them (see the module
/// documentation). Connecting is lazy: no request is made here.
pub async fn connect(
    endpoints: &[String],
    options: &EndpointOptions,
) -> Result<Client, FailoverError> {
    let list = endpoints
        .iter()
        .map(|url| {
            Ok(Member {
                url: url.clone(),
                channel: options.channel(url)?,
                health: Mutex::new(Health::default()),
            })
        })
        .collect::<Result<Vec<_>, FailoverError>>()?;
    if list.is_empty() {
        return Err(FailoverError::NoEndpoints);
    }
    let members = Arc::new(Members {
        list,
        pinned: AtomicUsize::new(0),
        request_limit: options.request_timeout.unwrap_or(DEFAULT_LIMIT),
    });
    let channel = etcd_client::Channel::Custom(BoxCloneSyncService::new(Failover { members }));
    Client::from_channel(channel, None)
        .await
        .map_err(FailoverError::Client)
}

#[derive(Debug, Default)]
struct Health {
    /// Failures in a row.
    failures: u32,
    down_until: Option<Instant>,
}

struct Member {
    url: String,
    channel: Channel,
    health: Mutex<Health>,
}

impl Member {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        // Health is two plain fields: a panic elsewhere cannot leave it inconsistent.
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn down_until(&self) -> Option<Instant> {
        self.health().down_until
    }
}

struct Members {
    list: Vec<Member>,
    pinned: AtomicUsize,
    /// The longest a request may take, connecting included, whatever member serves it.
    request_limit: Duration,
}

/// Why a request to a member failed, as far as retrying goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// No connection could be made (refused, or TCP and TLS not done within the connect
    /// timeout): the request never left.
    NotSent,
    /// Anything else: the request may have reached etcd.
    Ambiguous,
}

/// A connection that could not be made fails with a bare I/O error (refused, or the connect
/// timeout's "timed out"); a request that failed on a connection that was made carries
/// hyper's error (stream reset, connection closed, ...) or tonic's request timeout.
fn classify(e: &(dyn std::error::Error + 'static)) -> Failure {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut connect_failed = false;
    while let Some(s) = src {
        if s.downcast_ref::<hyper::Error>().is_some()
            || s.downcast_ref::<tonic::TimeoutExpired>().is_some()
        {
            return Failure::Ambiguous;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            connect_failed |= matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut
            );
        }
        src = s.source();
    }
    if connect_failed {
        Failure::NotSent
    } else {
        Failure::Ambiguous
    }
}

impl Members {
    /// The pinned member if it is up, else the next one that is (and it becomes the pin),
    /// else the one whose down mark ends first.
    fn pick(&self) -> usize {
        let now = Instant::now();
        let n = self.list.len();
        let start = self.pinned.load(Ordering::Relaxed) % n;
        for k in 0..n {
            let i = (start + k) % n;
            if self.list[i].down_until().is_none_or(|t| t <= now) {
                if k > 0 {
                    self.pinned.store(i, Ordering::Relaxed);
                    tracing::info!(endpoint = %self.list[i].url, "etcd: now using this endpoint");
                }
                return i;
            }
        }
        (0..n)
            .min_by_key(|&i| self.list[i].down_until())
            .unwrap_or(start)
    }

    fn failed(&self, i: usize, error: &BoxError, failure: Failure) {
        let m = &self.list[i];
        let mut h = m.health();
        let was_up = h.failures == 0;
        h.failures = h.failures.saturating_add(1);
        let wait = DOWN_FIRST
            .saturating_mul(1 << (h.failures - 1).min(4))
            .min(DOWN_MAX);
        h.down_until = Some(Instant::now() + wait);
        drop(h);
        if was_up {
            tracing::warn!(endpoint = %m.url, error = %error_chain(error.as_ref()), ?failure, ?wait,
                "etcd: endpoint failed; using the others");
        }
    }

    fn succeeded(&self, i: usize) {
        let m = &self.list[i];
        let mut h = m.health();
        if h.failures > 0 {
            tracing::info!(endpoint = %m.url, "etcd: endpoint answers again");
        }
        *h = Health::default();
    }

    async fn send_to(
        &self,
        i: usize,
        req: http::Request<Body>,
        limit: Duration,
    ) -> Result<http::Response<Body>, (BoxError, Failure)> {
        let mut channel = self.list[i].channel.clone();
        // tonic's channel buffers the request until its connection is made, and its request
        // timeout starts only then: the attempt as a whole is bounded here.
        let attempt = async {
            channel.ready().await?;
            channel.call(req).await
        };
        let sent = match tokio::time::timeout(limit, attempt).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                let e = BoxError::from(e);
                let failure = classify(e.as_ref());
                Err((e, failure))
            }
            Err(_) => Err((
                BoxError::from(format!("no answer from {} in time", self.list[i].url)),
                Failure::Ambiguous,
            )),
        };
        match sent {
            Ok(resp) => {
                self.succeeded(i);
                Ok(resp)
            }
            Err((e, failure)) => {
                self.failed(i, &e, failure);
                Err((e, failure))
            }
        }
    }

    /// Sends `req`, to the next members too while the connection is refused; the whole is
    /// bounded by the request limit, as one request to one member would be.
    async fn send(&self, req: http::Request<Body>) -> Result<http::Response<Body>, BoxError> {
        let deadline = Instant::now() + self.request_limit;
        if STREAMING.contains(&req.uri().path()) {
            let sent = self.send_to(self.pick(), req, self.request_limit).await;
            return sent.map_err(|(e, _)| e);
        }
        let (parts, body) = req.into_parts();
        let bytes = body.collect().await?.to_bytes();
        let mut last = None;
        for _ in 0..self.list.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let req = http::Request::from_parts(parts.clone(), Body::new(Full::new(bytes.clone())));
            match self.send_to(self.pick(), req, left).await {
                Ok(resp) => return Ok(resp),
                Err((e, Failure::NotSent)) => last = Some(e),
                Err((e, Failure::Ambiguous)) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| "no etcd endpoint answered in time".into()))
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

#[derive(Clone)]
struct Failover {
    members: Arc<Members>,
}

impl Service<http::Request<Body>> for Failover {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Each member's channel is made ready inside `call`, once the member is chosen.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let members = self.members.clone();
        Box::pin(async move { members.send(req).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Members {
        let list = (0..n)
            .map(|i| {
                let url = format!("http://127.0.0.1:{}", 1 + i);
                Member {
                    channel: Endpoint::from_shared(url.clone()).unwrap().connect_lazy(),
                    url,
                    health: Mutex::new(Health::default()),
                }
            })
            .collect();
        Members {
            list,
            pinned: AtomicUsize::new(0),
            request_limit: Duration::from_secs(2),
        }
    }

    #[tokio::test]
    async fn a_failed_member_is_skipped_until_its_mark_ends() {
        let m = members(3);
        assert_eq!(m.pick(), 0);
        let e: BoxError = "boom".into();
        m.failed(0, &e, Failure::Ambiguous);
        assert_eq!(m.pick(), 1, "the pin moves to the next member");
        assert_eq!(m.pick(), 1, "and stays there");
        m.failed(1, &e, Failure::Ambiguous);
        m.failed(2, &e, Failure::Ambiguous);
        m.failed(2, &e, Failure::Ambiguous);
        // All down: the one whose mark ends first (member 0, marked first).
        assert_eq!(m.pick(), 0);
        m.succeeded(0);
        assert_eq!(m.pick(), 0);
        assert!(m.list[0].down_until().is_none());
    }

    #[tokio::test]
    async fn refused_connections_are_retried_elsewhere_and_nothing_else_is() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let wrapped: BoxError = Box::new(tonic::Status::from_error(Box::new(refused)));
        assert_eq!(classify(wrapped.as_ref()), Failure::NotSent);
        let reset: BoxError = Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(classify(reset.as_ref()), Failure::Ambiguous);
        let timeout: BoxError = Box::new(tonic::TimeoutExpired(()));
        assert_eq!(classify(timeout.as_ref()), Failure::Ambiguous);
        // The connect timeout (TCP and TLS) is a bare "timed out": nothing was sent.
        let connect: BoxError = Box::new(tonic::Status::from_error(Box::new(
            std::io::Error::from(std::io::ErrorKind::TimedOut),
        )));
        assert_eq!(classify(connect.as_ref()), Failure::NotSent);
    }

    #[tokio::test]
    async fn every_member_refusing_fails_after_one_try_each() {
        // Nothing listens on these ports: each try is refused at once.
        let m = members(2);
        let req = http::Request::builder()
            .uri("http://x/etcdserverpb.KV/Range")
            .body(Body::empty())
            .unwrap();
        let err = m.send(req).await.unwrap_err();
        assert_eq!(classify(err.as_ref()), Failure::NotSent, "{err}");
        assert!(m.list.iter().all(|x| x.down_until().is_some()));
    }
}
