//! The API's request decoders: query strings and their parameters (`dryRun`,
//! `resourceVersion`, `watch`, `object`), resource paths, and the bodies of apply, create and
//! replace. They are pure (bytes and strings in, typed values or the `ApiError` to answer
//! out) and every handler decodes through them, so the fuzzer (`tests/fuzz_api.rs`) feeds
//! them exactly what a client can send, without a server or etcd. Lists' `limit` and
//! `continue` are `pages::PageRequest`'s, label selectors `LabelSelector::parse`'s.
//!
//! They answer with `topo_schema`'s `ApiError`, which the handlers turn into responses, so
//! this module depends on nothing else of the controller.

use std::collections::HashMap;

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::http::Uri;
use topo_schema::api::{ApiError, Cause, ErrorReason};
use topo_schema::{Kind, ObjectRef, Resource};

/// The query string as axum's extractor hands it to a handler.
pub type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

pub fn bad_request(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorReason::BadRequest, msg)
}

pub fn params(q: Params) -> Result<HashMap<String, String>, ApiError> {
    q.map(|Query(m)| m)
        .map_err(|e| bad_request(format!("invalid query string: {e}")))
}

/// The query string of `uri`, decoded as a handler gets it (axum's extractor does this).
pub fn query(uri: &Uri) -> Result<HashMap<String, String>, ApiError> {
    params(Query::try_from_uri(uri))
}

pub fn kind_of(plural: &str) -> Result<Kind, ApiError> {
    Kind::parse(plural).ok_or_else(|| {
        ApiError::new(
            ErrorReason::NotFound,
            format!(
                "unknown resource type {plural:?} (nodes, networks, containers, links, tunnels)"
            ),
        )
    })
}

pub fn dry_run(p: &HashMap<String, String>) -> Result<bool, ApiError> {
    match p.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(false),
        Some("All") | Some("all") | Some("true") => Ok(true),
        Some(other) => Err(bad_request(format!(
            "invalid dryRun {other:?}: the only value is All"
        ))),
    }
}

pub fn truthy(p: &HashMap<String, String>, k: &str) -> bool {
    matches!(
        p.get(k).map(String::as_str),
        Some("true") | Some("1") | Some("")
    )
}

pub fn revision_param(p: &HashMap<String, String>) -> Result<Option<i64>, ApiError> {
    match p.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => Ok(None),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|r| *r > 0)
            .map(Some)
            .ok_or_else(|| {
                bad_request(format!(
                    "invalid resourceVersion {s:?}: expected a positive integer"
                ))
            }),
    }
}

/// The `object` parameter of events: `kind/name`, or nothing.
pub fn event_object(p: &HashMap<String, String>) -> Result<Option<ObjectRef>, ApiError> {
    let Some(s) = p.get("object").filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let (k, n) = s
        .split_once('/')
        .ok_or_else(|| bad_request(format!("invalid object {s:?}: expected kind/name")))?;
    let kind = Kind::parse(k)
        .ok_or_else(|| bad_request(format!("invalid object {s:?}: unknown kind {k:?}")))?;
    Ok(Some(ObjectRef::new(kind, n)))
}

pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(bad_request(format!("empty request body: expected {what}")));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| bad_request(format!("request body is not {what}: {e}")))
}

/// The body of an apply.
pub fn apply_request(bytes: &[u8]) -> Result<topo_schema::api::ApplyRequest, ApiError> {
    parse_json(bytes, "an ApplyRequest ({\"files\": [...]})")
}

/// Decodes and statically validates an object from a request body (create, replace).
pub fn parse_resource(bytes: &[u8]) -> Result<Resource, ApiError> {
    let v: serde_json::Value = parse_json(bytes, "a JSON object")?;
    if !v.is_object() {
        return Err(bad_request("request body must be a JSON object"));
    }
    let r = Resource::from_value(v)
        .map_err(|e| ApiError::invalid(vec![cause(None, None, e.to_string())]))?;
    let errs = topo_schema::validate::validate_object(&r);
    if !errs.is_empty() {
        let obj = r.object_ref().to_string();
        let causes = errs
            .into_iter()
            .map(|e| cause(Some(obj.clone()), Some(e.field), e.message))
            .collect();
        return Err(ApiError::invalid(causes));
    }
    Ok(r)
}

fn cause(object: Option<String>, field: Option<String>, message: String) -> Cause {
    Cause {
        file: None,
        line: None,
        column: None,
        object,
        field: field.filter(|f| !f.is_empty()),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode_as_the_extractor_does() {
        let q = query(
            &"/x?dryRun=All&watch&resourceVersion=7&a=%F0%9F%98%80"
                .parse()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(dry_run(&q), Ok(true));
        assert!(truthy(&q, "watch"));
        assert_eq!(revision_param(&q), Ok(Some(7)));
        assert_eq!(q["a"], "😀");
        let q = query(&"/x?resourceVersion=-3&dryRun=maybe".parse().unwrap()).unwrap();
        assert!(revision_param(&q).is_err());
        assert!(dry_run(&q).is_err());
        let q = query(&"/x?object=container/web".parse().unwrap()).unwrap();
        assert_eq!(
            event_object(&q),
            Ok(Some(ObjectRef::new(Kind::Container, "web")))
        );
        let q = query(&"/x?object=widget/web".parse().unwrap()).unwrap();
        assert!(event_object(&q).is_err());
    }

    #[test]
    fn bodies_decode_or_say_why_not() {
        assert_eq!(apply_request(b"").unwrap_err().code, 400);
        assert!(apply_request(br#"{"files":[{"name":"a","content":"x"}]}"#).is_ok());
        assert_eq!(parse_resource(b"[1]").unwrap_err().code, 400);
        let e = parse_resource(br#"{"apiVersion":"topo.dev/v1alpha1","kind":"Node","metadata":{"name":"N"},"spec":{"address":"1.2.3.4"}}"#).unwrap_err();
        assert_eq!(e.code, 422);
        assert_eq!(e.causes[0].object.as_deref(), Some("node/N"));
    }
}
