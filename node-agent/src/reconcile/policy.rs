//! The error policy, apart from the reconcilers as in kube-rs's controller runtime: after a
//! failed reconcile, when to look at the key again. Each key keeps its own exponential
//! backoff (with jitter), reset by its next success; some failures know better when to look.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use backoff::ExponentialBackoff;
use backoff::backoff::Backoff;

use super::Action;
use super::error::ReconcileError;
use crate::backend::ContainerError;
use crate::key::Key;

/// How often the status of a container waiting for its image shows the pull's progress.
pub const PULL_STATUS_EVERY: Duration = Duration::from_secs(5);

/// A key's own schedule: 250 ms doubling to a minute.
pub fn key_backoff() -> ExponentialBackoff {
    topo_watcher::jittered_backoff(Duration::from_millis(250), Duration::from_secs(60))
}

/// The requeue delay after `err`, from the key's backoff.
pub fn error_policy(err: &ReconcileError, backoff: &mut ExponentialBackoff) -> Action {
    let next = backoff.next_backoff().unwrap_or(backoff.max_interval);
    match err {
        // The crash loop and the image backoff carry their own schedules.
        ReconcileError::CrashLoop { wait, .. } => Action::Requeue(*wait),
        ReconcileError::ImagePullBackOff { retry_in, .. } => Action::Requeue(*retry_in),
        // The pull queues the key when it ends; meanwhile the status shows its progress.
        ReconcileError::ImagePulling { .. } => Action::Requeue(PULL_STATUS_EVERY),
        // Another node's agent is removing the old container of a moved one: look again
        // soon rather than backing off to a minute.
        ReconcileError::ContainerCreate { source, .. }
            if matches!(**source, ContainerError::NameOwnedByOtherNode { .. }) =>
        {
            Action::Requeue(next.min(Duration::from_secs(2)))
        }
        ReconcileError::BridgeNotReady { .. } => Action::Requeue(next.min(Duration::from_secs(2))),
        // A squatter's going makes no event here: probe again, at most 10 s apart.
        ReconcileError::AddressConflict { .. } => {
            Action::Requeue(next.min(Duration::from_secs(10)))
        }
        // The die event is on its way; look again soon.
        ReconcileError::ContainerGone { .. } => {
            Action::Requeue(next.min(Duration::from_millis(200)))
        }
        _ => Action::Requeue(next),
    }
}

/// The backoff of every key that failed since its last success.
#[derive(Default)]
pub struct Backoffs {
    keys: Mutex<HashMap<Key, ExponentialBackoff>>,
}

impl Backoffs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, ExponentialBackoff>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key succeeded: its next failure starts the schedule over.
    pub fn succeeded(&self, key: &Key) {
        self.lock().remove(key);
    }

    /// The key failed with `err`: what to do next.
    pub fn failed(&self, key: &Key, err: &ReconcileError) -> Action {
        let mut keys = self.lock();
        let backoff = keys.entry(key.clone()).or_insert_with(key_backoff);
        error_policy(err, backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delay(a: Action) -> Duration {
        match a {
            Action::Requeue(d) => d,
            Action::AwaitChange => Duration::ZERO,
        }
    }

    #[test]
    fn failures_back_off_per_key_and_success_resets() {
        let b = Backoffs::default();
        let (a, c) = (Key::Container("a".into()), Key::Container("c".into()));
        let err = ReconcileError::NotRunning {
            container: "a".into(),
        };
        let first = delay(b.failed(&a, &err));
        let _ = delay(b.failed(&a, &err));
        let third = delay(b.failed(&a, &err));
        assert!(third > first, "{first:?} then {third:?}");
        assert!(
            delay(b.failed(&c, &err)) < third,
            "another key has its own schedule"
        );
        b.succeeded(&a);
        assert!(delay(b.failed(&a, &err)) <= Duration::from_millis(325));
    }

    #[test]
    fn some_failures_know_when_to_look_again() {
        let mut bo = key_backoff();
        for _ in 0..10 {
            bo.next_backoff();
        }
        let crash = ReconcileError::CrashLoop {
            container: "a".into(),
            exit_code: 1,
            wait: Duration::from_secs(8),
        };
        assert_eq!(
            error_policy(&crash, &mut bo),
            Action::Requeue(Duration::from_secs(8))
        );
        let bridge = ReconcileError::BridgeNotReady {
            bridge: "tb".into(),
        };
        assert!(delay(error_policy(&bridge, &mut bo)) <= Duration::from_secs(2));
        let gone = ReconcileError::ContainerGone {
            container: "a".into(),
        };
        assert!(delay(error_policy(&gone, &mut bo)) <= Duration::from_millis(200));
    }
}
