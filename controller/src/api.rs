//! The HTTP JSON API (paths in `topo_schema::api`).
//!
//! Every failure is an `ApiError` body with its status code: bad bodies are 400, invalid
//! objects 422 with one cause per problem, bodies over `api::MAX_BODY_BYTES` 413, no
//! credentials 401, a role that does not allow it or a full quota 403, too many watches 429,
//! etcd not answering (each etcd request times out after at most 5 s) 503 "etcd
//! unavailable: ...". A panic in a handler (a bug) becomes a 500 and leaves the server
//! running. Everything but `/healthz`, `/readyz` and the `/ui` page's static shell passes
//! `guard.rs` first. Lists and events are paginated with `limit` and `continue` (`pages.rs`).

use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::Serialize;
use topo_schema::ObjectRef;
use topo_schema::api::{self, ApiError, ErrorReason, LabelSelector, List};
use tracing::Instrument;

use crate::decode::{
    Params, apply_request, dry_run, event_object, kind_of, params, parse_resource, revision_param,
    truthy,
};
use crate::watch::{self, ObjectWatch};

pub use crate::reply::{ApiErr, AppState, etcd_unavailable, one_line};
use crate::reply::{ApiResult, json_response};

fn ok<T: Serialize>(body: &T) -> ApiResult {
    Ok(json_response(StatusCode::OK, body))
}

fn bad_request(msg: impl Into<String>) -> ApiErr {
    ApiErr(ApiError::new(ErrorReason::BadRequest, msg))
}

pub fn router(state: AppState, gate: std::sync::Arc<crate::guard::Guard>) -> Router {
    let p = api::API_PREFIX;
    Router::new()
        .merge(crate::probes::routes())
        .merge(crate::ui::routes())
        .route(crate::metrics::PATH, get(crate::metrics::serve))
        .route(&format!("{p}/apply"), post(apply))
        .route(&format!("{p}/events"), get(events))
        .route(&format!("{p}/verify"), post(crate::verify::verify))
        .route(&format!("{p}/{{plural}}"), get(list_or_watch).post(create))
        .route(
            &format!("{p}/{{plural}}/{{name}}"),
            get(get_one).put(replace).delete(delete_one),
        )
        .route(&format!("{p}/{{plural}}/{{name}}/reports"), get(reports_of))
        .route(
            &format!("{p}/{{plural}}/{{name}}/log"),
            get(crate::logs::container_log),
        )
        .route(
            &format!("{p}/{{plural}}/{{name}}/exec"),
            get(crate::exec::container_exec),
        )
        .fallback(|| async {
            ApiErr(ApiError::new(
                ErrorReason::NotFound,
                "no such path; the API is under /apis/topo.dev/v1alpha1",
            ))
        })
        .method_not_allowed_fallback(|| async {
            ApiErr(ApiError {
                reason: ErrorReason::BadRequest,
                code: 405,
                message: "method not allowed on this path".into(),
                causes: vec![],
            })
        })
        // Bodies are read (and limited) by `read_body`, which answers with an ApiError.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(
            state.health.clone(),
            crate::probes::warn_if_stale,
        ))
        .layer(middleware::from_fn_with_state(gate, crate::guard::guard))
        .layer(middleware::from_fn(log_request))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .with_state(state)
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiErr(ApiError::new(
        ErrorReason::InternalError,
        "internal error: the request handler failed",
    ))
    .into_response()
}

async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let span = tracing::info_span!("request", %method, %path);
    let start = Instant::now();
    let resp = next.run(req).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::info!(
            status = resp.status().as_u16(),
            ms = start.elapsed().as_millis() as u64,
            "done"
        )
    });
    resp
}

/// Reads a request body up to the limit.
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiErr> {
    let too_large = || {
        ApiErr(ApiError::new(
            ErrorReason::RequestEntityTooLarge,
            format!(
                "request body is larger than the limit of {} bytes",
                api::MAX_BODY_BYTES
            ),
        ))
    };
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        if !(ct.starts_with("application/json") || ct.ends_with("+json")) {
            return Err(bad_request(format!(
                "content type {ct:?} is not accepted: send application/json"
            )));
        }
    }
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        && len > api::MAX_BODY_BYTES
    {
        return Err(too_large());
    }
    match axum::body::to_bytes(body, api::MAX_BODY_BYTES).await {
        Ok(b) => Ok(b),
        Err(e) => {
            let mut src: Option<&dyn std::error::Error> = Some(&e);
            while let Some(s) = src {
                if s.to_string().contains("length limit exceeded") {
                    return Err(too_large());
                }
                src = s.source();
            }
            Err(bad_request(format!("failed to read the request body: {e}")))
        }
    }
}

fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiErr> {
    p.map(|Path(t)| t)
        .map_err(|e| bad_request(format!("invalid path: {e}")))
}

async fn list_or_watch(
    State(st): State<AppState>,
    p: Result<Path<String>, PathRejection>,
    q: Params,
) -> ApiResult {
    let kind = kind_of(&path(p)?)?;
    let q = params(q)?;
    let selector = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(bad_request)?;
    if truthy(&q, "watch") {
        let w = ObjectWatch {
            kind: Some(kind),
            selector,
            resource_version: revision_param(&q)?,
        };
        let stream =
            watch::watch_objects(st.client.clone(), st.cache.clone(), w, st.shutdown.clone());
        return Ok(ndjson(stream));
    }
    let page = crate::pages::PageRequest::from_params(&q).map_err(bad_request)?;
    match page {
        None => {
            let (items, rev) = st.store.list(Some(kind), &selector);
            ok(&List::new(items, Some(rev.to_string())))
        }
        Some(page) => ok(&crate::pages::list_objects(&st, kind, &selector, page).await?),
    }
}

fn ndjson(stream: watch::LineStream) -> Response {
    let mut resp = Body::from_stream(stream).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp
}

async fn get_one(
    State(st): State<AppState>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult {
    let (plural, name) = path(p)?;
    let kind = kind_of(&plural)?;
    let _span = tracing::info_span!("get", object = %ObjectRef::new(kind, name.as_str())).entered();
    ok(&st.store.get(kind, &name)?)
}

/// What the agents still report about an object, whatever became of the object: `delete
/// --wait` waits until this is empty, i.e. every node has removed what it held for it.
async fn reports_of(
    State(st): State<AppState>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult {
    let (plural, name) = path(p)?;
    let r = ObjectRef::new(kind_of(&plural)?, name);
    let snap = st.cache.current();
    let reports: Vec<_> = snap
        .reports
        .iter()
        .filter(|((_, obj), _)| *obj == r)
        .map(|(_, rep)| (**rep).clone())
        .collect();
    ok(&api::List::new(reports, Some(snap.revision.to_string())))
}

async fn create(
    State(st): State<AppState>,
    p: Result<Path<String>, PathRejection>,
    q: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let kind = kind_of(&path(p)?)?;
    let q = params(q)?;
    let dry = dry_run(&q)?;
    let r = parse_resource(&read_body(&headers, body).await?)?;
    if r.kind() != kind {
        return Err(bad_request(format!(
            "a {} cannot be created at /{}",
            r.kind(),
            kind.plural()
        )));
    }
    let span = tracing::info_span!("create", object = %r.object_ref(), dry_run = dry);
    let created = st.store.create(r, dry).instrument(span).await?;
    Ok(json_response(StatusCode::CREATED, &created))
}

async fn replace(
    State(st): State<AppState>,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let (plural, name) = path(p)?;
    let kind = kind_of(&plural)?;
    let dry = dry_run(&params(q)?)?;
    let r = parse_resource(&read_body(&headers, body).await?)?;
    if r.kind() != kind || r.name() != name {
        return Err(bad_request(format!(
            "the body is {} but the path names {}",
            r.object_ref(),
            ObjectRef::new(kind, name)
        )));
    }
    let span = tracing::info_span!("replace", object = %r.object_ref(), dry_run = dry);
    ok(&st.store.replace(r, dry).instrument(span).await?)
}

async fn delete_one(
    State(st): State<AppState>,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Params,
) -> ApiResult {
    let (plural, name) = path(p)?;
    let kind = kind_of(&plural)?;
    let q = params(q)?;
    let dry = dry_run(&q)?;
    let pre = q.get("resourceVersion").filter(|s| !s.is_empty()).cloned();
    let span =
        tracing::info_span!("delete", object = %ObjectRef::new(kind, name.as_str()), dry_run = dry);
    ok(&st
        .store
        .delete(kind, &name, pre.as_deref(), dry)
        .instrument(span)
        .await?)
}

async fn apply(
    State(st): State<AppState>,
    who: Option<axum::Extension<crate::auth::Identity>>,
    gate: Option<axum::Extension<std::sync::Arc<crate::guard::Guard>>>,
    q: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let q = params(q)?;
    let dry = dry_run(&q)?;
    let mut req = apply_request(&read_body(&headers, body).await?)?;
    req.dry_run |= dry;
    let names: Vec<&str> = req.files.iter().map(|f| f.name.as_str()).collect();
    let span = tracing::info_span!("apply", files = ?names, dry_run = req.dry_run);
    let resp = st.store.apply(req).instrument(span).await?;
    if let (Some(who), Some(gate), false) = (who, gate, resp.dry_run) {
        for r in &resp.results {
            if r.action != api::ApplyAction::Unchanged {
                let action = serde_json::to_value(r.action).unwrap_or_default();
                gate.audit_line(
                    &who,
                    "apply",
                    &r.object.to_string(),
                    action.as_str().unwrap_or(""),
                );
            }
        }
    }
    ok(&resp)
}

async fn events(State(st): State<AppState>, q: Params) -> ApiResult {
    let q = params(q)?;
    let object = event_object(&q)?;
    if truthy(&q, "watch") {
        let stream = watch::watch_events(
            st.client.clone(),
            object,
            revision_param(&q)?,
            st.shutdown.clone(),
        );
        return Ok(ndjson(stream));
    }
    let page = crate::pages::PageRequest::from_params(&q).map_err(bad_request)?;
    ok(&crate::pages::list_events(&st, object.as_ref(), page).await?)
}
