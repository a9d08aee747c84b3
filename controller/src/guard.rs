//! The API's gate: every request but `/healthz`, `/readyz` and the `/ui` page's static shell
//! (no data; `ui.rs`) is authenticated, authorized, limited (concurrent watches per user)
//! and, when it writes, audited. One middleware in front of the router, so no handler can
//! forget it.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use topo_schema::api::{self, ApiError, ErrorReason};
use topo_schema::{Kind, ObjectRef};

use crate::auth::{Authorizer, Identity, Target, Tokens, Verb};
use crate::reply::ApiErr;

/// The identity of the client certificate verified in the TLS handshake (set per
/// connection by `serve`).
#[derive(Debug, Clone, Default)]
pub struct PeerIdentity(pub Option<Identity>);

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("failed to open the audit file {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub struct Guard {
    tokens: Tokens,
    authz: Authorizer,
    watches_per_user: usize,
    watches: Mutex<HashMap<String, usize>>,
    audit: Option<Mutex<std::fs::File>>,
}

impl Guard {
    pub fn new(
        tokens: Tokens,
        authz: Authorizer,
        watches_per_user: usize,
        audit_file: Option<&Path>,
    ) -> Result<Guard, AuditError> {
        let audit = match audit_file {
            None => None,
            Some(p) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| AuditError::Open {
                        path: p.display().to_string(),
                        source,
                    })?,
            )),
        };
        Ok(Guard {
            tokens,
            authz,
            watches_per_user,
            watches: Mutex::new(HashMap::new()),
            audit,
        })
    }

    fn authenticate(&self, req: &Request) -> Result<Identity, ApiError> {
        let unauthorized = |m: &str| ApiError::new(ErrorReason::Unauthorized, m);
        if let Some(h) = req.headers().get(header::AUTHORIZATION) {
            let token = h
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .ok_or_else(|| {
                    unauthorized("invalid Authorization header: expected \"Bearer TOKEN\"")
                })?;
            return self
                .tokens
                .identify(token)
                .ok_or_else(|| unauthorized("invalid bearer token: it is not in the token file"));
        }
        req.extensions()
            .get::<PeerIdentity>()
            .and_then(|p| p.0.clone())
            .ok_or_else(|| {
                unauthorized(
                    "no credentials: present a client certificate signed by the cluster CA or a bearer token",
                )
            })
    }

    /// Takes a watch slot of `user`; the slot is freed when the returned guard drops.
    fn take_watch(self: &Arc<Self>, user: &str) -> Result<WatchSlot, ApiError> {
        let mut w = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        let n = w.entry(user.to_string()).or_default();
        if *n >= self.watches_per_user {
            return Err(ApiError::new(
                ErrorReason::TooManyRequests,
                format!(
                    "user {user:?} already holds {} watches, the limit; close one (or raise limits.watchesPerUser)",
                    self.watches_per_user
                ),
            ));
        }
        *n += 1;
        Ok(WatchSlot {
            guard: self.clone(),
            user: user.to_string(),
        })
    }

    fn audit(&self, id: &Identity, verb: Verb, target: &Target, code: u16) {
        self.audit_line(id, verb.as_str(), &target.to_string(), &code.to_string());
    }

    /// One audit line: on the tracing target `audit`, and in the audit file when configured.
    /// An apply also gets one line per object it changed (`api.rs`), `result` its action.
    pub fn audit_line(&self, id: &Identity, verb: &str, object: &str, result: &str) {
        tracing::info!(target: "audit", user = %id.user, groups = ?id.groups, verb, object, result, "audit");
        let result: serde_json::Value = result
            .parse::<u16>()
            .map(serde_json::Value::from)
            .unwrap_or_else(|_| serde_json::Value::from(result));
        self.audit_file(serde_json::json!({
            "time": chrono::Utc::now(),
            "user": id.user,
            "groups": id.groups,
            "verb": verb,
            "object": object,
            "result": result,
        }));
    }

    /// The end of an exec (`exec.rs`): who ran which command in which container, and its
    /// exit code (None: the session ended without one; `result` says how). The start was
    /// audited as every write is, as `create` of `container/NAME/exec` with status 101.
    pub fn audit_exec(&self, id: &Identity, object: &str, command: &[String], exit: ExecEnd) {
        let (exit_code, result) = match &exit {
            ExecEnd::Exited(c) => (Some(*c), format!("exited {c}")),
            ExecEnd::Failed(m) => (None, m.clone()),
        };
        tracing::info!(target: "audit", user = %id.user, groups = ?id.groups, verb = "exec",
            object, ?command, exit_code, %result, "audit");
        self.audit_file(serde_json::json!({
            "time": chrono::Utc::now(),
            "user": id.user,
            "groups": id.groups,
            "verb": "exec",
            "object": object,
            "command": command,
            "exitCode": exit_code,
            "result": result,
        }));
    }

    fn audit_file(&self, line: serde_json::Value) {
        if let Some(f) = &self.audit {
            let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = writeln!(f, "{line}") {
                tracing::error!(error = %e, "failed to write the audit file");
            }
        }
    }
}

/// How an exec ended, for its audit line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEnd {
    /// The command exited with this code.
    Exited(i32),
    /// The session ended without an exit code, for this reason.
    Failed(String),
}

/// A held watch slot.
pub struct WatchSlot {
    guard: Arc<Guard>,
    user: String,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut w = self.guard.watches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = w.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                w.remove(&self.user);
            }
        }
    }
}

fn query_flag(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The verb and target of an API request; None for paths the router answers 404.
pub fn classify(method: &Method, path: &str, query: &str) -> Option<(Verb, Target)> {
    if path == crate::metrics::PATH {
        return (method == Method::GET).then_some((Verb::Get, Target::Metrics));
    }
    let rest = path.strip_prefix(api::API_PREFIX)?.trim_start_matches('/');
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let watch = matches!(
        query_flag(query, "watch").as_deref(),
        Some("true") | Some("1") | Some("")
    );
    let read = if watch { Verb::Watch } else { Verb::List };
    match (method, parts.as_slice()) {
        (&Method::POST, ["apply"]) => Some((Verb::Apply, Target::Manifests)),
        (&Method::POST, ["verify"]) => Some((Verb::Verify, Target::Dataplane)),
        (&Method::GET, ["events"]) => {
            let object = query_flag(query, "object").and_then(|o| {
                let (k, n) = o.split_once('/')?;
                Some(ObjectRef::new(Kind::parse(k)?, n))
            });
            Some((read, Target::Events(object)))
        }
        (m, [plural]) => {
            let kind = Kind::parse(plural)?;
            let verb = match *m {
                Method::GET => read,
                Method::POST => Verb::Create,
                _ => return None,
            };
            Some((verb, Target::Objects { kind, name: None }))
        }
        (m, [plural, name]) => {
            let kind = Kind::parse(plural)?;
            let verb = match *m {
                Method::GET => Verb::Get,
                Method::PUT => Verb::Update,
                Method::DELETE => Verb::Delete,
                _ => return None,
            };
            let name = Some(name.to_string());
            Some((verb, Target::Objects { kind, name }))
        }
        (&Method::GET, [plural, name, "log"]) => Some((
            Verb::Get,
            Target::Logs(ObjectRef::new(Kind::parse(plural)?, *name)),
        )),
        (&Method::GET, [plural, name, "exec"]) => Some((
            Verb::Create,
            Target::Exec(ObjectRef::new(Kind::parse(plural)?, *name)),
        )),
        (&Method::GET, [plural, name, "reports"]) => Some((
            Verb::Get,
            Target::Reports(ObjectRef::new(Kind::parse(plural)?, *name)),
        )),
        _ => None,
    }
}

/// The middleware.
pub async fn guard(State(g): State<Arc<Guard>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if path == "/healthz" || path == "/readyz" || crate::ui::is_public(&path) {
        return next.run(req).await;
    }
    let id = match g.authenticate(&req) {
        Ok(id) => id,
        Err(e) => return ApiErr(e).into_response(),
    };
    let query = req.uri().query().unwrap_or("").to_string();
    let Some((verb, target)) = classify(req.method(), &path, &query) else {
        req.extensions_mut().insert(id);
        return next.run(req).await;
    };
    if let Err(e) = g.authz.authorize(&id, verb, &target) {
        if verb.is_write() {
            g.audit(&id, verb, &target, e.code);
        }
        tracing::info!(user = %id.user, verb = verb.as_str(), object = %target, "forbidden");
        return ApiErr(e).into_response();
    }
    let slot = if verb == Verb::Watch {
        match g.take_watch(&id.user) {
            Ok(s) => Some(s),
            Err(e) => return ApiErr(e).into_response(),
        }
    } else {
        None
    };
    req.extensions_mut().insert(id.clone());
    req.extensions_mut().insert(g.clone());
    let resp = next.run(req).await;
    if verb.is_write() {
        g.audit(&id, verb, &target, resp.status().as_u16());
    }
    match slot {
        None => resp,
        Some(slot) => {
            // The slot lives as long as the stream the client reads.
            let (parts, body) = resp.into_parts();
            let stream = body.into_data_stream().map(move |chunk| {
                let _held = &slot;
                chunk
            });
            Response::from_parts(parts, Body::from_stream(stream))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified() {
        let p = api::API_PREFIX;
        let c = |m: Method, path: &str, q: &str| classify(&m, &format!("{p}{path}"), q);
        assert_eq!(
            c(Method::GET, "/containers", "watch=true"),
            Some((
                Verb::Watch,
                Target::Objects {
                    kind: Kind::Container,
                    name: None
                }
            ))
        );
        assert_eq!(
            c(Method::DELETE, "/links/a", "").map(|x| x.0),
            Some(Verb::Delete)
        );
        assert_eq!(
            c(Method::GET, "/events", "object=node%2Fnode1"),
            Some((
                Verb::List,
                Target::Events(Some(ObjectRef::new(Kind::Node, "node1")))
            ))
        );
        assert_eq!(
            c(Method::POST, "/apply", "").map(|x| x.0),
            Some(Verb::Apply)
        );
        assert_eq!(
            c(Method::POST, "/verify", "labelSelector=app%3Dweb"),
            Some((Verb::Verify, Target::Dataplane))
        );
        assert_eq!(
            c(Method::GET, "/containers/web/exec", "command=ls"),
            Some((
                Verb::Create,
                Target::Exec(ObjectRef::new(Kind::Container, "web"))
            ))
        );
        assert_eq!(c(Method::GET, "/pods", ""), None);
        assert_eq!(
            classify(&Method::GET, "/metrics", ""),
            Some((Verb::Get, Target::Metrics))
        );
    }
}
