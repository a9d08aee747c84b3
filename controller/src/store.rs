//! Apply, create, replace, delete, get and list: user writes become fenced change sets.
//!
//! Every write is computed against a cache snapshot: server fields (uid, generation,
//! creationTimestamp) are filled, the whole desired state is validated, IPAM is planned, and
//! the objects and their IPAM keys are committed in one change set, so an apply is all or
//! nothing and addresses never outlive (or precede) their holders.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use topo_schema::api::{
    ApiError, ApplyAction, ApplyRequest, ApplyResponse, ApplyResult, Cause, ErrorReason,
    LabelSelector,
};
use topo_schema::keys;
use topo_schema::manifest::ParsedDoc;
use topo_schema::validate::FieldError;
use topo_schema::{Kind, LABEL_DERIVED_FROM, ObjectRef, Resource};

use crate::cache::{Snapshot, StoredObject};
use crate::commit::{ChangeSet, CommitError, Committer, EncodeError, encode};

/// Largest stored object: etcd refuses requests over 1.5 MiB, and an intent chunk escapes it.
pub const MAX_OBJECT_BYTES: usize = 512 * 1024;

/// How long a write waits for the cache to show it before answering anyway (no longer than
/// one etcd request may take: a write answers within that bound whatever etcd does).
const READ_YOUR_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request is refused; the error says why, for the client.
    #[error("{0}")]
    Rejected(ApiError),
    #[error(transparent)]
    Commit(#[from] CommitError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

impl From<ApiError> for StoreError {
    fn from(e: ApiError) -> Self {
        StoreError::Rejected(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Rejected(e) => e,
            StoreError::Commit(CommitError::CompareFailed) => ApiError::new(
                ErrorReason::Conflict,
                "the object was modified concurrently; read it again and retry",
            ),
            StoreError::Commit(e @ CommitError::TooManyAttempts(_)) => {
                ApiError::new(ErrorReason::Conflict, e.to_string())
            }
            StoreError::Commit(CommitError::Encode(e)) | StoreError::Encode(e) => {
                ApiError::new(ErrorReason::InternalError, with_sources(&e))
            }
            StoreError::Commit(e) => {
                ApiError::new(ErrorReason::ServiceUnavailable, with_sources(&e))
            }
        }
    }
}

/// The error's message followed by those of its sources.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// The stored form of an object: no status, no resourceVersion (that is the key's
/// mod_revision). The leader writes derived tunnels with this too.
pub fn encode_object(r: &Resource) -> Result<String, EncodeError> {
    let mut r = r.clone();
    r.clear_status();
    r.metadata_mut().resource_version = None;
    encode(&keys::object(r.kind(), r.name()), &r)
}

fn not_found(r: &ObjectRef) -> ApiError {
    ApiError::new(ErrorReason::NotFound, format!("{r} not found"))
}

fn conflict(r: &ObjectRef, given: &str, current: Option<i64>) -> ApiError {
    let msg = match current {
        Some(c) => format!(
            "{r}: resourceVersion {given} is stale (the object is at {c}); get it again and reapply"
        ),
        None => format!("{r}: resourceVersion {given} given but the object does not exist"),
    };
    ApiError::new(ErrorReason::Conflict, msg)
}

fn derived_refusal(r: &ObjectRef, o: &StoredObject) -> ApiError {
    let from = o
        .resource
        .metadata()
        .labels
        .get(LABEL_DERIVED_FROM)
        .cloned()
        .unwrap_or_default();
    ApiError::new(
        ErrorReason::Invalid,
        format!(
            "{r} is derived by the controller from {from} and cannot be edited or deleted; change {from} instead"
        ),
    )
}

/// A user object to write, with where it came from (for error locations).
struct Desired<'a> {
    resource: Resource,
    doc: Option<&'a ParsedDoc>,
}

fn cause_for(r: &ObjectRef, e: FieldError, doc: Option<&ParsedDoc>) -> Cause {
    let mut c = Cause {
        file: None,
        line: None,
        column: None,
        object: Some(r.to_string()),
        field: (!e.field.is_empty()).then(|| e.field.clone()),
        message: e.message,
    };
    if let Some(d) = doc {
        let (line, column) = d.locate(&e.field);
        c.file = Some(d.file.clone());
        c.line = Some(line);
        c.column = Some(column);
    }
    c
}

/// Fills the server's fields of `new` from `old` and says what the write amounts to.
fn prepare(old: Option<&StoredObject>, mut new: Resource) -> (Resource, ApplyAction) {
    new.clear_status();
    let m = new.metadata_mut();
    m.resource_version = None;
    match old {
        None => {
            m.uid = Some(uuid::Uuid::new_v4().to_string());
            m.creation_timestamp = Some(Utc::now());
            m.generation = Some(1);
            (new, ApplyAction::Created)
        }
        Some(old) => {
            let om = old.resource.metadata();
            let spec_changed = old.resource.spec_value() != new.spec_value();
            let m = new.metadata_mut();
            m.uid = om.uid.clone();
            m.creation_timestamp = om.creation_timestamp;
            let generation = om.generation.unwrap_or(1);
            m.generation = Some(if spec_changed {
                generation + 1
            } else {
                generation
            });
            let meta_changed = om.labels != m.labels || om.annotations != m.annotations;
            let action = if spec_changed || meta_changed {
                ApplyAction::Configured
            } else {
                ApplyAction::Unchanged
            };
            (new, action)
        }
    }
}

/// What one computed write amounts to.
struct Planned {
    results: Vec<(ObjectRef, ApplyAction, Resource)>,
}

#[derive(Clone)]
pub struct Store {
    committer: Committer,
    /// Objects per kind (none: no limit); see `quota.rs`.
    quotas: Arc<BTreeMap<Kind, usize>>,
}

impl Store {
    pub fn new(committer: Committer) -> Self {
        Store {
            committer,
            quotas: Arc::default(),
        }
    }

    pub fn with_quotas(mut self, quotas: BTreeMap<Kind, usize>) -> Self {
        self.quotas = Arc::new(quotas);
        self
    }

    pub fn committer(&self) -> &Committer {
        &self.committer
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.committer.cache().current()
    }

    pub fn get(&self, kind: Kind, name: &str) -> Result<Resource, ApiError> {
        let r = ObjectRef::new(kind, name);
        self.snapshot()
            .get(&r)
            .map(|o| o.resource.clone())
            .ok_or_else(|| not_found(&r))
    }

    /// Objects of `kind` (all kinds when None) matching `selector`, and the revision.
    pub fn list(&self, kind: Option<Kind>, selector: &LabelSelector) -> (Vec<Resource>, i64) {
        let snap = self.snapshot();
        let matches = |o: &&Arc<StoredObject>| selector.matches(&o.resource.metadata().labels);
        let items = match kind {
            Some(k) => snap
                .of_kind(k)
                .filter(matches)
                .map(|o| o.resource.clone())
                .collect(),
            None => snap
                .objects
                .values()
                .filter(matches)
                .map(|o| o.resource.clone())
                .collect(),
        };
        (items, snap.revision)
    }

    /// Parses and applies whole files as one change.
    pub async fn apply(&self, req: ApplyRequest) -> Result<ApplyResponse, StoreError> {
        let parsed = topo_schema::manifest::parse_files_lenient(&req.files);
        if !parsed.errors.is_empty() {
            return Err(ApiError::invalid(self.all_causes(parsed, &req.files)).into());
        }
        let docs = parsed.docs;
        // parse_files_lenient already refused an object defined twice.
        let desired: Vec<Desired> = docs
            .iter()
            .map(|d| Desired {
                resource: d.resource.clone(),
                doc: Some(d),
            })
            .collect();
        self.write(desired, &[], req.dry_run, WriteMode::Apply)
            .await
    }

    /// The errors of an invalid apply, with the cross-object ones (outside the cidr, held
    /// already, ...) when every document could be read, so one round shows every error.
    fn all_causes(
        &self,
        parsed: topo_schema::manifest::Lenient,
        files: &[topo_schema::api::SourceFile],
    ) -> Vec<Cause> {
        let mut causes = parsed.errors;
        if parsed.complete {
            let snap = self.snapshot();
            let existing: Vec<&Resource> = snap
                .objects
                .values()
                .filter(|o| !o.is_derived())
                .map(|o| &o.resource)
                .collect();
            for c in topo_schema::manifest::check_apply(&parsed.docs, &existing) {
                if !causes.contains(&c) {
                    causes.push(c);
                }
            }
        }
        // In the order of the files as given, then of their lines.
        let file_index = |c: &Cause| files.iter().position(|f| Some(&f.name) == c.file.as_ref());
        causes.sort_by_key(|c| (file_index(c), c.line, c.column));
        causes
    }

    pub async fn create(&self, r: Resource, dry_run: bool) -> Result<Resource, StoreError> {
        let resp = self
            .write(
                vec![Desired {
                    resource: r,
                    doc: None,
                }],
                &[],
                dry_run,
                WriteMode::Create,
            )
            .await?;
        one_result(resp)
    }

    pub async fn replace(&self, r: Resource, dry_run: bool) -> Result<Resource, StoreError> {
        let resp = self
            .write(
                vec![Desired {
                    resource: r,
                    doc: None,
                }],
                &[],
                dry_run,
                WriteMode::Replace,
            )
            .await?;
        one_result(resp)
    }

    /// Deletes an object (and its status), releasing its addresses in the same change.
    /// `precondition` is a resourceVersion the object must still have.
    pub async fn delete(
        &self,
        kind: Kind,
        name: &str,
        precondition: Option<&str>,
        dry_run: bool,
    ) -> Result<Resource, StoreError> {
        let r = ObjectRef::new(kind, name);
        // An unparseable resourceVersion can only be stale.
        let precondition = precondition.map(|rv| rv.parse::<i64>().unwrap_or(-1));
        let resp = self
            .write(
                vec![],
                std::slice::from_ref(&r),
                dry_run,
                WriteMode::Delete(precondition),
            )
            .await?;
        one_result(resp)
    }

    async fn write(
        &self,
        desired: Vec<Desired<'_>>,
        deletes: &[ObjectRef],
        dry_run: bool,
        mode: WriteMode,
    ) -> Result<ApplyResponse, StoreError> {
        let (planned, rev, snap) = self
            .committer
            .run(
                Vec::new,
                |snap| -> Result<(Option<ChangeSet>, Planned), StoreError> {
                    let (cs, planned) = plan_write(snap, &desired, deletes, mode)?;
                    crate::quota::check(&self.quotas, snap, &planned.results)?;
                    Ok((if dry_run { None } else { Some(cs) }, planned))
                },
            )
            .await?;
        let snap = match rev {
            Some(rev) => {
                match tokio::time::timeout(
                    READ_YOUR_WRITE_TIMEOUT,
                    self.committer.cache().wait_for_revision(rev),
                )
                .await
                {
                    Ok(s) => s,
                    Err(_) => {
                        tracing::warn!(rev, "cache did not catch up with a write in time");
                        snap
                    }
                }
            }
            None => snap,
        };
        let results = planned
            .results
            .into_iter()
            .map(|(r, action, computed)| {
                // The stored object when the write is visible (resourceVersion, status).
                let result = match snap.get(&r) {
                    Some(o) if !dry_run => o.resource.clone(),
                    Some(o) if action == ApplyAction::Unchanged => o.resource.clone(),
                    _ => computed,
                };
                ApplyResult {
                    object: r,
                    action,
                    result,
                }
            })
            .collect();
        Ok(ApplyResponse {
            results,
            dry_run,
            resource_version: rev.unwrap_or(snap.revision).to_string(),
        })
    }
}

fn one_result(resp: ApplyResponse) -> Result<Resource, StoreError> {
    resp.results
        .into_iter()
        .next()
        .map(|r| r.result)
        .ok_or_else(|| ApiError::new(ErrorReason::InternalError, "write produced no result").into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteMode {
    Apply,
    Create,
    Replace,
    /// With the resourceVersion the object must still have.
    Delete(Option<i64>),
}

/// Computes the change set of a write against `snap`, or why it is refused.
fn plan_write(
    snap: &Snapshot,
    desired: &[Desired<'_>],
    deletes: &[ObjectRef],
    mode: WriteMode,
) -> Result<(ChangeSet, Planned), StoreError> {
    let mut w = WritePlan::default();
    for d in desired {
        w.write_object(snap, d, mode)?;
    }
    for r in deletes {
        w.delete_object(snap, r, mode)?;
    }
    if !w.causes.is_empty() {
        return Err(ApiError::invalid(w.causes).into());
    }
    if w.changed.is_empty() {
        return Ok((w.cs, Planned { results: w.results }));
    }
    let all = w.objects_after(snap, deletes);
    let update_errors = w.update_errors(snap, &all);
    if !update_errors.is_empty() {
        return Err(ApiError::invalid(w.locate(update_errors)).into());
    }
    let errs = topo_schema::validate::validate_consistency(&all, &w.changed);
    if !errs.is_empty() {
        return Err(ApiError::invalid(w.locate(errs)).into());
    }
    match crate::ipam::plan(all.iter().copied(), &w.changed, &snap.blocks, &snap.addrs) {
        Ok(ipam) => {
            for k in &ipam.created {
                w.cs.compare(k.clone(), 0);
            }
            w.cs.put_all_json(&ipam.puts)?;
            w.cs.deletes.extend(ipam.deletes);
        }
        Err(errs) => return Err(ApiError::invalid(w.locate(errs)).into()),
    }
    Ok((w.cs, Planned { results: w.results }))
}

/// What a write amounts to while it is computed.
#[derive(Default)]
struct WritePlan<'a> {
    cs: ChangeSet,
    results: Vec<(ObjectRef, ApplyAction, Resource)>,
    /// Per-object refusals, all reported together.
    causes: Vec<Cause>,
    /// Objects the write creates, updates or deletes.
    changed: Vec<ObjectRef>,
    docs: BTreeMap<ObjectRef, Option<&'a ParsedDoc>>,
    new_objects: BTreeMap<ObjectRef, Resource>,
    /// (object, its stored version) for objects the write changes.
    updates: Vec<(ObjectRef, &'a Resource)>,
}

impl<'a> WritePlan<'a> {
    /// One object to create or update: refused outright (exists, missing, derived, stale
    /// resourceVersion), a located cause, or its put and compare.
    fn write_object(
        &mut self,
        snap: &'a Snapshot,
        d: &Desired<'a>,
        mode: WriteMode,
    ) -> Result<(), StoreError> {
        let r = d.resource.object_ref();
        let old = snap.get(&r).map(|o| &**o);
        self.docs.insert(r.clone(), d.doc);
        match (mode, old) {
            (WriteMode::Create, Some(_)) => {
                return Err(ApiError::new(
                    ErrorReason::AlreadyExists,
                    format!("{r} already exists"),
                )
                .into());
            }
            (WriteMode::Replace, None) => return Err(not_found(&r).into()),
            _ => {}
        }
        if let Some(o) = old
            && o.is_derived()
        {
            return Err(derived_refusal(&r, o).into());
        }
        if d.resource
            .metadata()
            .labels
            .contains_key(LABEL_DERIVED_FROM)
        {
            self.causes.push(cause_for(
                &r,
                FieldError {
                    field: format!("metadata.labels.{LABEL_DERIVED_FROM}"),
                    message: "is reserved for objects the controller derives".into(),
                },
                d.doc,
            ));
            return Ok(());
        }
        if let Some(rv) = d.resource.metadata().resource_version.as_deref()
            && old.map(|o| o.mod_revision.to_string()).as_deref() != Some(rv)
        {
            return Err(conflict(&r, rv, old.map(|o| o.mod_revision)).into());
        }
        let (resource, action) = prepare(old, d.resource.clone());
        if action != ApplyAction::Unchanged {
            if let Some(o) = old {
                self.updates.push((r.clone(), &o.resource));
            }
            if !self.put_object(&r, &resource, old, d.doc)? {
                return Ok(());
            }
        }
        self.results.push((r, action, resource));
        Ok(())
    }

    /// Puts a changed object with its compare; false (and a cause) when it is too large to
    /// store.
    fn put_object(
        &mut self,
        r: &ObjectRef,
        resource: &Resource,
        old: Option<&StoredObject>,
        doc: Option<&ParsedDoc>,
    ) -> Result<bool, StoreError> {
        let encoded = encode_object(resource)?;
        if encoded.len() > MAX_OBJECT_BYTES {
            self.causes.push(cause_for(
                r,
                FieldError {
                    field: String::new(),
                    message: format!(
                        "the object is {} bytes stored; at most {MAX_OBJECT_BYTES} fit in one etcd value",
                        encoded.len()
                    ),
                },
                doc,
            ));
            return Ok(false);
        }
        self.cs.put(keys::object(r.kind, &r.name), encoded);
        self.cs.compare(
            keys::object(r.kind, &r.name),
            old.map(|o| o.mod_revision).unwrap_or(0),
        );
        self.changed.push(r.clone());
        self.new_objects.insert(r.clone(), resource.clone());
        Ok(true)
    }

    /// One object to delete, with its status.
    fn delete_object(
        &mut self,
        snap: &Snapshot,
        r: &ObjectRef,
        mode: WriteMode,
    ) -> Result<(), StoreError> {
        let Some(o) = snap.get(r) else {
            return Err(not_found(r).into());
        };
        if o.is_derived() {
            return Err(derived_refusal(r, o).into());
        }
        if let WriteMode::Delete(Some(rv)) = mode
            && rv != o.mod_revision
        {
            return Err(conflict(r, &rv.to_string(), Some(o.mod_revision)).into());
        }
        self.cs.delete(keys::object(r.kind, &r.name));
        self.cs.delete(keys::status(r.kind, &r.name));
        self.cs
            .compare(keys::object(r.kind, &r.name), o.mod_revision);
        self.changed.push(r.clone());
        self.results
            .push((r.clone(), ApplyAction::Deleted, o.resource.clone()));
        Ok(())
    }

    /// The user objects that exist after the change.
    fn objects_after<'s>(&'s self, snap: &'s Snapshot, deletes: &[ObjectRef]) -> Vec<&'s Resource> {
        let mut all: BTreeMap<&ObjectRef, &Resource> = snap
            .objects
            .iter()
            .filter(|(_, o)| !o.is_derived())
            .map(|(r, o)| (r, &o.resource))
            .collect();
        for (r, res) in &self.new_objects {
            all.insert(r, res);
        }
        for r in deletes {
            all.remove(r);
        }
        all.into_values().collect()
    }

    /// What the updates may not change (a network's cidr while it is used, a kind).
    fn update_errors(&self, snap: &Snapshot, all: &[&Resource]) -> Vec<(ObjectRef, FieldError)> {
        let mut errors = Vec::new();
        for (r, old) in &self.updates {
            let Some(new) = self.new_objects.get(r) else {
                continue;
            };
            let errs = match new {
                Resource::Network(_) => {
                    let users = topo_schema::validate::network_users(all, &r.name);
                    let allocated = snap.addrs.get(&r.name).is_some_and(|a| !a.is_empty());
                    if users.is_empty() && allocated {
                        topo_schema::validate::check_update(old, new, true)
                    } else {
                        topo_schema::validate::check_update_with_users(old, new, &users)
                    }
                }
                _ => topo_schema::validate::check_update(old, new, false),
            };
            errors.extend(errs.into_iter().map(|e| (r.clone(), e)));
        }
        errors
    }

    /// Field errors as causes located in the documents they came from.
    fn locate(&self, errs: Vec<(ObjectRef, FieldError)>) -> Vec<Cause> {
        errs.into_iter()
            .map(|(r, e)| {
                let doc = self.docs.get(&r).copied().flatten();
                cause_for(&r, e, doc)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use topo_schema::{NodeSpec, Object};

    fn node(addr: &str) -> Resource {
        Resource::Node(Object::new(
            Kind::Node,
            "n1",
            NodeSpec {
                address: addr.parse().unwrap(),
                datapath: Default::default(),
                reserved_ports: None,
            },
        ))
    }

    #[test]
    fn generation_follows_spec_only() {
        let (created, a) = prepare(None, node("192.168.1.1"));
        assert_eq!(a, ApplyAction::Created);
        assert_eq!(created.metadata().generation, Some(1));
        let stored = StoredObject {
            resource: created.clone(),
            mod_revision: 7,
            create_revision: 7,
        };
        let (same, a) = prepare(Some(&stored), node("192.168.1.1"));
        assert_eq!(a, ApplyAction::Unchanged);
        assert_eq!(same.metadata().uid, created.metadata().uid);
        let mut labelled = node("192.168.1.1");
        labelled
            .metadata_mut()
            .labels
            .insert("zone".into(), "a".into());
        let (l, a) = prepare(Some(&stored), labelled);
        assert_eq!(a, ApplyAction::Configured);
        assert_eq!(l.metadata().generation, Some(1));
        let (moved, a) = prepare(Some(&stored), node("192.168.1.2"));
        assert_eq!(a, ApplyAction::Configured);
        assert_eq!(moved.metadata().generation, Some(2));
        assert_eq!(
            moved.metadata().creation_timestamp,
            created.metadata().creation_timestamp
        );
    }

    #[test]
    fn stored_form_has_no_status_or_version() {
        let mut n = node("192.168.1.1");
        n.metadata_mut().resource_version = Some("9".into());
        n.set_status_value(serde_json::json!({"conditions": []}));
        let v: serde_json::Value = serde_json::from_str(&encode_object(&n).unwrap()).unwrap();
        assert!(v.get("status").is_none());
        assert!(v["metadata"].get("resourceVersion").is_none());
    }
}
