//! Per-kind object quotas: a write that would leave more objects of a kind than the
//! configuration allows is refused whole (403), before anything is committed. Checked inside
//! the fenced commit against the snapshot it commits on, so concurrent writes cannot both
//! slip under the limit. Objects the controller derives (mesh tunnels) are not counted: they
//! follow from the user's objects.

use std::collections::BTreeMap;

use topo_schema::api::{ApiError, ApplyAction, ErrorReason};
use topo_schema::{Kind, ObjectRef, Resource};

use crate::cache::Snapshot;

/// Refuses `results` (a planned write on `snap`) if a kind would exceed its quota.
pub fn check(
    quotas: &BTreeMap<Kind, usize>,
    snap: &Snapshot,
    results: &[(ObjectRef, ApplyAction, Resource)],
) -> Result<(), ApiError> {
    let mut delta: BTreeMap<Kind, i64> = BTreeMap::new();
    for (r, action, _) in results {
        match action {
            ApplyAction::Created => *delta.entry(r.kind).or_default() += 1,
            ApplyAction::Deleted => *delta.entry(r.kind).or_default() -= 1,
            _ => {}
        }
    }
    for (kind, d) in delta {
        let Some(&quota) = quotas.get(&kind) else {
            continue;
        };
        if d <= 0 {
            continue;
        }
        let now = snap.of_kind(kind).filter(|o| !o.is_derived()).count();
        let after = now as i64 + d;
        if after > quota as i64 {
            return Err(ApiError::new(
                ErrorReason::Forbidden,
                format!(
                    "quota exceeded: {after} {} would exist, the quota is {quota} (quotas.{} in the controller's configuration); nothing was changed",
                    kind.plural(),
                    kind.as_str()
                ),
            ));
        }
    }
    Ok(())
}
