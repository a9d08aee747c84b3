//! The controller's probe endpoints and the stale-read warning: `/healthz` (the process
//! serves HTTP: 200 whatever etcd does, so a supervisor does not restart a controller that
//! only waits for etcd) and `/readyz` (etcd answers quorum reads and the cache is current:
//! `health::Health`'s last verdict, so the answer is immediate), both outside the guard; and
//! the middleware that marks a read served from the cache while etcd is unavailable with a
//! `Warning: 299` header (topoctl prints it on stderr).
//!
//! A module of its own so that other endpoints of operations (metrics) sit beside, not in,
//! the API's router.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use topo_schema::api::{self, ApiError, ErrorReason};

use crate::health::{Health, State as Verdict};
use crate::reply::{ApiErr, AppState};

/// `/healthz` and `/readyz`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
}

/// 200 "ok" while etcd answers and the cache is current; 503 "etcd unavailable: <reason>
/// (since <time>)" otherwise.
async fn readyz(State(st): State<AppState>) -> Result<Response, ApiErr> {
    match st.health.state() {
        Verdict::Fresh => Ok("ok".into_response()),
        Verdict::Stale { since, reason } => Err(ApiErr(ApiError::new(
            ErrorReason::ServiceUnavailable,
            format!(
                "etcd unavailable: {reason} (since {})",
                since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        ))),
    }
}

/// A successful read of the API while etcd is unavailable came from the cache: it says so in
/// a `Warning` header.
pub async fn warn_if_stale(State(health): State<Health>, req: Request, next: Next) -> Response {
    let is_read = req.method() == Method::GET && req.uri().path().starts_with(api::API_PREFIX);
    let mut resp = next.run(req).await;
    if is_read
        && resp.status().is_success()
        && let Some(w) = health.stale_warning()
        && let Ok(v) = HeaderValue::from_str(&w)
    {
        resp.headers_mut().append(header::WARNING, v);
    }
    resp
}
