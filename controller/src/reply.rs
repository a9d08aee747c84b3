//! What every HTTP handler of the controller shares: the state they serve from
//! ([`AppState`]), the error that becomes an `ApiError` response ([`ApiErr`], with the
//! mapping of store and etcd failures to 503 "etcd unavailable"), and JSON responses.
//!
//! It sits below every module that answers HTTP (`api`, `guard`, `probes`, `pages`,
//! `logs`, `metrics`) so that they depend on it and not on each other: the router in
//! `api.rs` uses them all, and none of them uses the router.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use etcd_client::Client;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use topo_schema::api::{ApiError, ErrorReason};

use crate::cache::Cache;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub client: Client,
    pub cache: Cache,
    /// Ends watch streams when the server shuts down.
    pub shutdown: CancellationToken,
    /// How long one etcd request may take (the client enforces it).
    pub etcd_timeout: Duration,
    /// Whether etcd answers and the cache is current (`/readyz`, stale-read warnings).
    pub health: crate::health::Health,
}

/// An `ApiError` as an HTTP response.
#[derive(Debug)]
pub struct ApiErr(pub ApiError);

impl From<ApiError> for ApiErr {
    fn from(e: ApiError) -> Self {
        ApiErr(e)
    }
}

impl From<crate::store::StoreError> for ApiErr {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::commit::CommitError;
        use crate::store::StoreError;
        match &e {
            StoreError::Commit(CommitError::CompareFailed | CommitError::TooManyAttempts(_))
            | StoreError::Rejected(_)
            | StoreError::Encode(_) => ApiErr(e.into()),
            StoreError::Commit(CommitError::CacheLagging(rev)) => ApiErr(ApiError::new(
                ErrorReason::ServiceUnavailable,
                format!(
                    "etcd unavailable: the controller's cache did not reach revision {rev} in time"
                ),
            )),
            StoreError::Commit(c) => match etcd_cause(c) {
                Some(etcd) => etcd_unavailable(etcd),
                None => ApiErr(e.into()),
            },
        }
    }
}

/// The etcd error in a chain of sources, if any.
fn etcd_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a etcd_client::Error> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(etcd) = s.downcast_ref::<etcd_client::Error>() {
            return Some(etcd);
        }
        src = s.source();
    }
    None
}

use crate::health::etcd_summary;

pub fn etcd_unavailable(e: &etcd_client::Error) -> ApiErr {
    ApiErr(ApiError::new(
        ErrorReason::ServiceUnavailable,
        format!("etcd unavailable: {}", etcd_summary(e)),
    ))
}

/// An ApiError on one line: the message and its causes.
pub fn one_line(e: &ApiError) -> String {
    let mut s = e.message.clone();
    for c in &e.causes {
        s.push_str("; ");
        s.push_str(&c.to_string());
    }
    s
}

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json_response(status, &self.0)
    }
}

pub type ApiResult = Result<Response, ApiErr>;

pub fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let (status, bytes) = match serde_json::to_vec(body) {
        Ok(bytes) => (status, bytes),
        // Only a type that cannot be JSON gets here; say so instead of sending an empty body.
        Err(e) => {
            tracing::error!(error = %e, "failed to encode a response body");
            let err = serde_json::json!({
                "reason": ErrorReason::InternalError,
                "code": 500,
                "message": format!("failed to encode the response: {e}"),
            });
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                err.to_string().into_bytes(),
            )
        }
    };
    let mut resp = (status, bytes).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
