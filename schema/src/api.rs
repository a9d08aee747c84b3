//! Wire types of the controller's HTTP API, and of what agents write for the controller.
//!
//! Paths (all JSON; errors are [`ApiError`] bodies with a matching HTTP status):
//! ```text
//! GET    /healthz
//! GET    /apis/topo.dev/v1alpha1/{plural}?labelSelector=&watch=&resourceVersion=
//! POST   /apis/topo.dev/v1alpha1/{plural}?dryRun=All              create
//! GET    /apis/topo.dev/v1alpha1/{plural}/{name}
//! PUT    /apis/topo.dev/v1alpha1/{plural}/{name}?dryRun=All       replace (resourceVersion-checked)
//! DELETE /apis/topo.dev/v1alpha1/{plural}/{name}?dryRun=All
//! GET    /apis/topo.dev/v1alpha1/{plural}/{name}/reports          what agents still report
//! POST   /apis/topo.dev/v1alpha1/apply                            ApplyRequest -> ApplyResponse
//! GET    /apis/topo.dev/v1alpha1/events?object=kind/name&watch=
//! ```
//! A watch answers with newline-delimited [`WatchEvent`]s. When the requested revision has
//! been compacted the stream carries one `ERROR` event with code 410 and ends: the client
//! lists again and watches from the list's resourceVersion.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::kinds::{ObjectRef, Resource};

pub const API_PREFIX: &str = "/apis/topo.dev/v1alpha1";
/// Largest request body the controller reads.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// One manifest file, sent whole so the server's errors can name its lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceFile {
    pub name: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyRequest {
    pub files: Vec<SourceFile>,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyAction {
    Created,
    Configured,
    Unchanged,
    Deleted,
}

impl std::fmt::Display for ApplyAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ApplyAction::Created => "created",
            ApplyAction::Configured => "configured",
            ApplyAction::Unchanged => "unchanged",
            ApplyAction::Deleted => "deleted",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResult {
    pub object: ObjectRef,
    pub action: ApplyAction,
    /// The object as stored (or as it would be, in a dry run), with the server's fields.
    pub result: Resource,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResponse {
    pub results: Vec<ApplyResult>,
    pub dry_run: bool,
    /// The etcd revision of the apply (the current one for a dry run or a no-op).
    pub resource_version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMeta {
    pub resource_version: String,
    /// Set when the list was cut at `limit`: pass it as `continue` for the next page (the
    /// pages of one list are all at `resourceVersion`).
    #[serde(default, rename = "continue", skip_serializing_if = "Option::is_none")]
    pub continue_: Option<String>,
}

/// `{"apiVersion":"topo.dev/v1alpha1","kind":"List","items":[...]}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct List<T> {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ListMeta>,
    pub items: Vec<T>,
}

impl<T> List<T> {
    /// The token of the next page, if the list was cut.
    pub fn continue_token(&self) -> Option<&str> {
        self.metadata
            .as_ref()
            .and_then(|m| m.continue_.as_deref())
            .filter(|c| !c.is_empty())
    }

    pub fn new(items: Vec<T>, resource_version: Option<String>) -> Self {
        List {
            api_version: crate::API_VERSION.to_string(),
            kind: "List".to_string(),
            metadata: resource_version.map(|rv| ListMeta {
                resource_version: rv,
                continue_: None,
            }),
            items,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum WatchEventType {
    Added,
    Modified,
    Deleted,
    /// Progress: nothing changed up to `resourceVersion`.
    Bookmark,
    Error,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchEvent<T> {
    #[serde(rename = "type")]
    pub type_: WatchEventType,
    /// The object (for ERROR: absent; see `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    pub resource_version: String,
}

/// Why a request failed, k8s-style reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorReason {
    BadRequest,
    Invalid,
    NotFound,
    AlreadyExists,
    Conflict,
    /// The requested resourceVersion was compacted: list again (HTTP 410).
    Expired,
    RequestEntityTooLarge,
    /// Not the leader / etcd unreachable: retry.
    ServiceUnavailable,
    InternalError,
    /// No (valid) credentials: HTTP 401.
    Unauthorized,
    /// Authenticated, but the role does not allow it; also a quota that is full: HTTP 403.
    Forbidden,
    /// Too many concurrent requests of a kind (watches): HTTP 429.
    TooManyRequests,
}

impl ErrorReason {
    pub fn http_status(self) -> u16 {
        match self {
            ErrorReason::BadRequest => 400,
            ErrorReason::Invalid => 422,
            ErrorReason::NotFound => 404,
            ErrorReason::AlreadyExists | ErrorReason::Conflict => 409,
            ErrorReason::Expired => 410,
            ErrorReason::RequestEntityTooLarge => 413,
            ErrorReason::ServiceUnavailable => 503,
            ErrorReason::InternalError => 500,
            ErrorReason::Unauthorized => 401,
            ErrorReason::Forbidden => 403,
            ErrorReason::TooManyRequests => 429,
        }
    }
}

/// One thing wrong with the input, located as precisely as known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cause {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// `kind/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// `spec.networks[0].ip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Cause {
    /// `file:line:col: container/web: spec.networks[0].ip: message`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}")?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
                if let Some(col) = self.column {
                    write!(f, ":{col}")?;
                }
            }
            write!(f, ": ")?;
        }
        if let Some(o) = &self.object {
            write!(f, "{o}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiError {
    pub reason: ErrorReason,
    pub code: u16,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<Cause>,
}

impl ApiError {
    pub fn new(reason: ErrorReason, message: impl Into<String>) -> Self {
        ApiError {
            reason,
            code: reason.http_status(),
            message: message.into(),
            causes: vec![],
        }
    }

    pub fn invalid(causes: Vec<Cause>) -> Self {
        let message = match causes.len() {
            1 => causes[0].to_string(),
            n => format!("{n} errors; nothing was changed"),
        };
        ApiError {
            reason: ErrorReason::Invalid,
            code: 422,
            message,
            causes,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        if self.causes.len() > 1 {
            for c in &self.causes {
                write!(f, "\n  {c}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    Normal,
    Warning,
}

/// Something that happened to an object. Repeats of the same (object, reason, message) bump
/// `count` and `lastTimestamp` instead of adding a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub object: ObjectRef,
    #[serde(rename = "type")]
    pub type_: EventType,
    pub reason: String,
    pub message: String,
    pub count: u32,
    pub first_timestamp: DateTime<Utc>,
    pub last_timestamp: DateTime<Utc>,
    /// `controller` or `agent/<node>`.
    pub source: String,
}

impl Event {
    /// The key suffix under the object's event prefix: repeats of the same event share it.
    pub fn dedup_id(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.reason.as_bytes());
        h.update([0]);
        h.update(self.message.as_bytes());
        h.update([0]);
        h.update(self.source.as_bytes());
        h.finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// What an agent observed of one object of its slice, under `keys::report`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedReport {
    pub object: ObjectRef,
    /// The object's uid as the slice gave it: a report about an earlier object of the same
    /// name (deleted and created again) is not about this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The generation of the slice entry the agent acted on (the object's generation).
    pub observed_generation: i64,
    pub ready: bool,
    /// CamelCase reason (`Running`, `ImagePullFailed`, `TargetNotFound`, ...).
    pub reason: String,
    pub message: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "containerID"
    )]
    pub container_id: Option<String>,
    #[serde(default)]
    pub restart_count: u32,
    /// For links: the endpoint programmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub time: DateTime<Utc>,
}

/// Value of `keys::registration(node)`: what an agent that starts says about its node. The
/// controller creates the Node from it when none exists (agents may not write objects), then
/// deletes the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    pub node: String,
    pub address: std::net::Ipv4Addr,
    pub datapath: crate::kinds::Datapath,
    pub agent_version: String,
    pub time: DateTime<Utc>,
}

/// Heartbeat value, bound to the agent's lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    pub node: String,
    pub agent_version: String,
    pub started: DateTime<Utc>,
    /// The agent's HTTPS endpoint (`ADDRESS:PORT`), where the controller reaches it for
    /// `logs`; absent from agents older than the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// A parsed `-l` selector: `a=b,c!=d,e,!f`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    reqs: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    Exists(String),
    NotExists(String),
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = vec![];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            let key = match &req {
                Requirement::Eq(k, _) | Requirement::NotEq(k, _) => k,
                Requirement::Exists(k) | Requirement::NotExists(k) => k,
            };
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(format!("invalid label selector {s:?}: bad key in {part:?}"));
            }
            reqs.push(req);
        }
        Ok(LabelSelector { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    pub fn matches(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.reqs.iter().all(|r| match r {
            Requirement::Eq(k, v) => labels.get(k) == Some(v),
            Requirement::NotEq(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn selector() {
        let l: BTreeMap<String, String> = [("app".to_string(), "redis".to_string())].into();
        assert!(LabelSelector::parse("app=redis").unwrap().matches(&l));
        assert!(
            LabelSelector::parse("app==redis,!tier")
                .unwrap()
                .matches(&l)
        );
        assert!(!LabelSelector::parse("app!=redis").unwrap().matches(&l));
        assert!(!LabelSelector::parse("tier").unwrap().matches(&l));
        assert!(LabelSelector::parse("=x").is_err());
    }

    #[test]
    fn cause_display() {
        let c = Cause {
            file: Some("a.yaml".into()),
            line: Some(3),
            column: Some(9),
            object: Some("container/web".into()),
            field: Some("spec.networks[0].ip".into()),
            message: "10.3.0.5 is outside network overlay (10.2.0.0/16)".into(),
        };
        assert_eq!(
            c.to_string(),
            "a.yaml:3:9: container/web: spec.networks[0].ip: 10.3.0.5 is outside network overlay (10.2.0.0/16)"
        );
    }
}
