//! Fuzzing what an API client sends (`make fuzz`; `make test` runs it with a few cases),
//! through the decoders the handlers use (`topo_controller::decode`, `pages::PageRequest`,
//! `LabelSelector`): query strings and their parameters, continue tokens (arbitrary, and
//! well-formed ones damaged), and the bodies of apply, create and replace, arbitrary and
//! generated from manifests that reach validation and the cross-object checks. Nothing
//! panics; every refusal is a 4xx with a message; a body that decodes is encoded for etcd and
//! read back as the same object, as the store and the cache do.

#[path = "../../schema/tests/support/fuzz.rs"]
mod fuzz;
#[path = "../../schema/tests/support/manifests.rs"]
mod manifests;

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use serde_json::{Value, json};
use topo_controller::decode;
use topo_controller::pages::PageRequest;
use topo_schema::api::{ApiError, ApplyRequest, LabelSelector, SourceFile};
use topo_schema::manifest::{check_apply, parse_files_lenient};

/// A refusal a client can act on: a 4xx with something to read.
fn refusal(e: &ApiError) -> Result<(), String> {
    if (400..500).contains(&e.code) && !e.message.is_empty() {
        Ok(())
    } else {
        Err(format!("refused with {} {:?}", e.code, e.message))
    }
}

const PARAMS: [&str; 10] = [
    "dryRun",
    "resourceVersion",
    "watch",
    "object",
    "limit",
    "continue",
    "labelSelector",
    "force",
    "",
    "x",
];

/// Every decoder a handler runs on a query string.
fn query_params(q: &HashMap<String, String>) -> Result<(), String> {
    for r in [
        decode::dry_run(q).map(drop),
        decode::revision_param(q).map(drop),
        decode::event_object(q).map(drop),
    ] {
        if let Err(e) = r {
            refusal(&e)?;
        }
    }
    let _ = decode::truthy(q, "watch");
    if let Err(e) = PageRequest::from_params(q)
        && e.is_empty()
    {
        return Err("a page request refused without a message".into());
    }
    let selector = q.get("labelSelector").map(String::as_str).unwrap_or("");
    if let Ok(s) = LabelSelector::parse(selector) {
        let labels: BTreeMap<String, String> = q.clone().into_iter().collect();
        let _ = s.matches(&labels);
    }
    Ok(())
}

fn query_string() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        "[a-zA-Z0-9=,!()/.-]{0,12}",
        "(%[0-9A-Fa-f]{2}|[^&#]){0,12}",
        prop::sample::select(vec!["All", "true", "1", "0", "-1", "99999999999999999999"])
            .prop_map(str::to_string),
    ];
    prop::collection::vec((prop::sample::select(PARAMS.to_vec()), value), 0..6).prop_map(|pairs| {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    })
}

#[test]
fn query_strings() {
    fuzz::fuzz(
        "api/query-strings",
        || prop_oneof![query_string(), "[ -~]{0,40}", any::<String>()],
        |qs| {
            let Ok(uri) = format!("/apis/topo.dev/v1alpha1/containers?{qs}").parse() else {
                return Ok(());
            };
            match decode::query(&uri) {
                Ok(q) => query_params(&q),
                Err(e) => refusal(&e),
            }
        },
    );
}

#[test]
fn resource_paths() {
    fuzz::fuzz(
        "api/resource-paths",
        || prop_oneof![any::<String>(), "[a-z]{0,12}"],
        |plural| match decode::kind_of(&plural) {
            // Plurals, singulars and short names are all kinds' names (kubectl's habit).
            Ok(k) if decode::kind_of(k.plural()) != Ok(k) => Err(format!("{k:?} lost")),
            Ok(_) => Ok(()),
            Err(e) => refusal(&e),
        },
    );
}

fn token(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap_or_default())
}

/// Continue tokens: noise, any JSON, and the token's own shape with any values.
fn continue_token() -> impl Strategy<Value = (String, Option<bool>)> {
    let shaped = (
        prop_oneof![any::<i64>(), 1i64..1000],
        prop_oneof![manifests::name(), any::<String>()],
        any::<u64>(),
    )
        .prop_map(|(rv, after, offset)| {
            let t = token(&json!({"rv": rv, "after": after, "offset": offset}));
            (t, Some(rv > 0))
        });
    prop_oneof![
        1 => "[A-Za-z0-9_=+/-]{0,40}".prop_map(|s| (s, None)),
        1 => any::<String>().prop_map(|s| (s, None)),
        1 => manifests::any_value().prop_map(|v| (token(&v), None)),
        4 => shaped,
    ]
}

#[test]
fn continue_tokens() {
    fuzz::fuzz(
        "api/continue-tokens",
        || (continue_token(), prop::option::of("[0-9-]{0,6}")),
        |((tok, valid), limit)| {
            let mut q = HashMap::from([("continue".to_string(), tok.clone())]);
            if let Some(l) = limit {
                q.insert("limit".into(), l);
            }
            let limit_ok = q
                .get("limit")
                .is_none_or(|l| l.is_empty() || l.parse::<usize>().is_ok());
            match (PageRequest::from_params(&q), valid) {
                (Ok(_), Some(false)) => {
                    Err(format!("{tok} taken though its revision is not positive"))
                }
                (Err(e), Some(true)) if limit_ok => Err(format!("{tok} refused: {e}")),
                (Err(e), _) if e.is_empty() => Err("refused without a message".into()),
                _ => Ok(()),
            }
        },
    );
}

/// What the store does with an apply before it writes: parse every file leniently, check
/// the whole against what exists, and encode each object for etcd.
fn apply_body(bytes: &[u8]) -> Result<(), String> {
    let req = match decode::apply_request(bytes) {
        Ok(r) => r,
        Err(e) => return refusal(&e),
    };
    let existing = parse_files_lenient(&[SourceFile {
        name: "existing.yaml".into(),
        content: include_str!("../../manifests/examples/basic.yaml").into(),
    }]);
    let existing: Vec<_> = existing.docs.iter().map(|d| &d.resource).collect();
    let parsed = parse_files_lenient(&req.files);
    if parsed.complete {
        let _ = check_apply(&parsed.docs, &existing);
    }
    // The store writes only an apply without errors.
    if parsed.errors.is_empty() {
        for d in &parsed.docs {
            round_trip(&d.resource)?;
        }
    }
    Ok(())
}

/// Encoded as the store writes it and decoded as the cache reads it: the same object.
fn round_trip(r: &topo_schema::Resource) -> Result<(), String> {
    let stored = topo_controller::store::encode_object(r).map_err(|e| e.to_string())?;
    let back = topo_controller::cache::decode_object(r.kind(), r.name(), stored.as_bytes())
        .ok_or_else(|| format!("{} does not read back: {stored}", r.object_ref()))?;
    let mut want = r.clone();
    want.clear_status();
    want.metadata_mut().resource_version = None;
    if back != want {
        return Err(format!(
            "{} read back differently: {stored}",
            r.object_ref()
        ));
    }
    Ok(())
}

fn apply_request() -> impl Strategy<Value = Vec<u8>> {
    let file = (
        prop_oneof!["[a-z]{1,8}\\.(yaml|json)", any::<String>()],
        prop_oneof![4 => manifests::mutated_manifest(), 1 => any::<String>()],
    )
        .prop_map(|(name, content)| SourceFile { name, content });
    (prop::collection::vec(file, 0..3), any::<bool>()).prop_map(|(files, dry_run)| {
        serde_json::to_vec(&ApplyRequest { files, dry_run }).unwrap_or_default()
    })
}

#[test]
fn apply_bodies() {
    fuzz::fuzz(
        "api/apply-bodies",
        || {
            prop_oneof![
                4 => apply_request(),
                1 => prop::collection::vec(any::<u8>(), 0..512),
                1 => manifests::any_value().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
            ]
        },
        |body| apply_body(&body),
    );
}

/// Create and replace bodies: one object as JSON, mostly valid, damaged in structure.
fn object_body() -> impl Strategy<Value = Vec<u8>> {
    let damaged = (
        manifests::resource(),
        prop::collection::vec(manifests::damage(), 0..3),
    )
        .prop_map(|(mut doc, damage)| {
            for d in &damage {
                manifests::apply_damage(&mut doc, d);
            }
            serde_json::to_vec(&doc).unwrap_or_default()
        });
    prop_oneof![
        6 => damaged,
        1 => prop::collection::vec(any::<u8>(), 0..512),
        1 => manifests::any_value().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
    ]
}

#[test]
fn create_and_replace_bodies() {
    fuzz::fuzz(
        "api/object-bodies",
        object_body,
        |body| match decode::parse_resource(&body) {
            Ok(r) => round_trip(&r),
            Err(e) if e.code == 422 && e.causes.is_empty() => {
                Err(format!("422 without causes: {}", e.message))
            }
            Err(e) => refusal(&e),
        },
    );
}
