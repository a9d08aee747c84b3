//! The image a container is created from: present, or being pulled, or backing off after a
//! failed pull — observed (the engine's images, the pull's state in [`ImagePulls`]), planned
//! purely ([`plan`]), applied by starting or joining a pull. The pull itself runs off the
//! worker (`pulls.rs`): the reconcile never waits for it, it returns `ImagePulling` or
//! `ImagePullBackOff` and is queued again when the pull ends.
//!
//! [`ImagePulls`]: crate::pulls::ImagePulls

use std::time::{Duration, Instant};

use topo_schema::kinds::PullPolicy;
use topo_schema::slice::ContainerEntry;

use super::super::context::Context;
use super::super::error::ReconcileError;
use crate::backend::ContainerError;
use crate::pulls::{PullConfig, PullState};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Create the container.
    Ready,
    /// Start a pull.
    Pull,
    /// A pull is under way.
    Pulling { progress: String, since: Duration },
    /// The last pull failed; the next one starts in `retry_in`.
    BackOff {
        error: String,
        failures: u32,
        retry_in: Duration,
    },
    /// Not present, and the policy forbids a pull.
    Missing,
}

/// What to do about the image, given whether the engine has it and where its pull stands.
pub fn plan(
    policy: PullPolicy,
    present: bool,
    pull: Option<&PullState>,
    config: &PullConfig,
    now: Instant,
) -> Plan {
    match (policy, present) {
        (PullPolicy::Never, true) | (PullPolicy::IfNotPresent, true) => return Plan::Ready,
        (PullPolicy::Never, false) => return Plan::Missing,
        _ => {}
    }
    match pull {
        Some(PullState::Pulling { started, progress }) => Plan::Pulling {
            progress: progress.summary(),
            since: now.saturating_duration_since(*started),
        },
        // `Always` creates from what its pull brought; `IfNotPresent` found no image although
        // it was pulled (removed since): pull again.
        Some(PullState::Pulled { .. }) if policy == PullPolicy::Always => Plan::Ready,
        Some(PullState::Failed {
            error,
            failures,
            at,
        }) => {
            let retry_at = *at + config.retry_delay(*failures);
            if now < retry_at {
                Plan::BackOff {
                    error: error.clone(),
                    failures: *failures,
                    retry_in: retry_at - now,
                }
            } else {
                Plan::Pull
            }
        }
        _ => Plan::Pull,
    }
}

/// Makes sure the entry's image is there before its container is created; Err while it is
/// not (pulling, backing off, or missing under `Never`).
pub async fn converge(ctx: &Context, c: &ContainerEntry) -> Result<(), ReconcileError> {
    let present = match c.pull_policy {
        PullPolicy::Always => false,
        _ => ctx.executor().image_present(&c.name, &c.image).await?,
    };
    let pulls = &ctx.pulls;
    let pull = pulls.state(&c.image);
    let pulling = |progress: String| ReconcileError::ImagePulling {
        container: c.name.clone(),
        image: c.image.clone(),
        progress,
    };
    match plan(
        c.pull_policy,
        present,
        pull.as_ref(),
        pulls.config(),
        Instant::now(),
    ) {
        Plan::Ready => {
            if c.pull_policy == PullPolicy::Always {
                pulls.consume(&c.image);
            }
            Ok(())
        }
        Plan::Pull => {
            pulls.start(&c.image, &c.name).await;
            Err(pulling("starting".to_string()))
        }
        Plan::Pulling { progress, since } => {
            pulls.wait(&c.image, &c.name);
            Err(pulling(format!("{progress}, for {} s", since.as_secs())))
        }
        Plan::BackOff {
            error,
            failures,
            retry_in,
        } => Err(ReconcileError::ImagePullBackOff {
            container: c.name.clone(),
            image: c.image.clone(),
            error,
            failures,
            retry_in,
        }),
        Plan::Missing => Err(ReconcileError::ImagePull {
            container: c.name.clone(),
            image: c.image.clone(),
            source: Box::new(ContainerError::ImagePullFailed {
                image: c.image.clone(),
                reason: "the image is not present and imagePullPolicy is Never".to_string(),
            }),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pulls::Progress;

    #[test]
    fn the_plan_by_policy_presence_and_pull() {
        let cfg = PullConfig::default();
        let now = Instant::now();
        let ago = |s: u64| now - Duration::from_secs(s);
        let pulling = PullState::Pulling {
            started: ago(3),
            progress: Progress::default(),
        };
        let pulled = PullState::Pulled { at: ago(1) };
        let failed = |failures: u32, secs_ago: u64| PullState::Failed {
            error: "manifest unknown".into(),
            failures,
            at: ago(secs_ago),
        };
        use PullPolicy::*;
        let backoff = |failures, retry_in| Plan::BackOff {
            error: "manifest unknown".into(),
            failures,
            retry_in: Duration::from_secs(retry_in),
        };
        let table = [
            (IfNotPresent, true, None, Plan::Ready),
            (Never, true, None, Plan::Ready),
            (Never, false, None, Plan::Missing),
            (IfNotPresent, false, None, Plan::Pull),
            (Always, true, None, Plan::Pull),
            (Always, false, Some(&pulled), Plan::Ready),
            (IfNotPresent, false, Some(&pulled), Plan::Pull),
            (
                IfNotPresent,
                false,
                Some(&pulling),
                Plan::Pulling {
                    progress: "starting".into(),
                    since: Duration::from_secs(3),
                },
            ),
            // 10 s after the first failure, 20 s after the second.
            (IfNotPresent, false, Some(&failed(1, 4)), backoff(1, 6)),
            (IfNotPresent, false, Some(&failed(2, 4)), backoff(2, 16)),
            (IfNotPresent, false, Some(&failed(1, 11)), Plan::Pull),
        ];
        for (policy, present, pull, want) in table {
            assert_eq!(
                plan(policy, present, pull, &cfg, now),
                want,
                "{policy:?} present {present} {pull:?}"
            );
        }
    }
}
