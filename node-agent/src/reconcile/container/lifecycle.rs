//! The Docker container itself: keep it, create it (replacing one made for an earlier
//! object or an earlier configuration), or start it again after it exited — backing off when
//! it keeps exiting soon after its start (a crash loop).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use topo_schema::kinds::{Kind, ObjectRef};
use topo_schema::slice::ContainerEntry;

use super::super::context::{Context, RestartState};
use super::super::drift::Drift;
use super::super::error::ReconcileError;
use super::super::executor::Change;
use crate::backend::ObservedContainer;

/// A container that exits sooner than this after its start, twice in a row, is crash-looping:
/// its restarts back off (1 s, 2 s, 4 s, ... up to [`MAX_CRASH_BACKOFF`]).
pub const MIN_UPTIME: Duration = Duration::from_secs(10);
pub const MAX_CRASH_BACKOFF: Duration = Duration::from_secs(300);

/// Why a container of the entry's name is removed before the entry's is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replaced {
    /// It was made for an earlier object of the same name (another uid).
    OtherObject,
    /// Its image, command, environment or hosts differ from the entry's.
    ConfigChanged,
}

impl Replaced {
    fn why(self) -> &'static str {
        match self {
            Replaced::OtherObject => "it belongs to an earlier object of the same name",
            Replaced::ConfigChanged => "its image, command, environment or hosts changed",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Running with the entry's configuration.
    Keep,
    /// Create the entry's container, after removing the one named (id) if any.
    Create { replace: Option<(String, Replaced)> },
    /// Start the exited container `id` again; `state` counts this restart.
    Restart {
        id: String,
        exit_code: Option<i64>,
        state: RestartState,
    },
    /// It keeps exiting: wait `wait` before the next start.
    CrashLoop {
        exit_code: i64,
        wait: Duration,
        state: RestartState,
    },
}

/// What to do with the container `observed` (Docker's view) for entry `c`. `restart` is the
/// restart bookkeeping of an exited container; `now` the time of the decision.
pub fn plan(
    c: &ContainerEntry,
    observed: Option<&ObservedContainer>,
    restart: Option<RestartState>,
    now: DateTime<Utc>,
) -> Plan {
    let Some(o) = observed else {
        return Plan::Create { replace: None };
    };
    if o.uid != c.uid {
        return Plan::Create {
            replace: Some((o.id.clone(), Replaced::OtherObject)),
        };
    }
    if o.config_hash != c.config_hash() {
        return Plan::Create {
            replace: Some((o.id.clone(), Replaced::ConfigChanged)),
        };
    }
    if o.running {
        return Plan::Keep;
    }
    let mut state = restart.unwrap_or_else(|| RestartState {
        id: o.id.clone(),
        ..Default::default()
    });
    let wait = crash_wait(&mut state, o, now);
    if !wait.is_zero() {
        return Plan::CrashLoop {
            exit_code: o.exit_code.unwrap_or(-1),
            wait,
            state,
        };
    }
    state.count += 1;
    Plan::Restart {
        id: o.id.clone(),
        exit_code: o.exit_code,
        state,
    }
}

/// How long to wait before restarting a container that exited, given how long it ran.
fn crash_wait(s: &mut RestartState, o: &ObservedContainer, now: DateTime<Utc>) -> Duration {
    if o.finished_at.is_some() && o.finished_at != s.last_exit {
        s.last_exit = o.finished_at;
        let uptime = match (o.started_at, o.finished_at) {
            (Some(a), Some(b)) => (b - a).to_std().unwrap_or_default(),
            _ => MIN_UPTIME,
        };
        s.quick_exits = if uptime < MIN_UPTIME {
            s.quick_exits + 1
        } else {
            0
        };
    }
    // The first quick exit restarts at once (a kill is drift, not a crash loop); the ones
    // that follow wait 1 s, 2 s, 4 s, ...
    if s.quick_exits <= 1 {
        return Duration::ZERO;
    }
    let backoff = Duration::from_secs(1 << (s.quick_exits - 2).min(9)).min(MAX_CRASH_BACKOFF);
    let since_exit = o
        .finished_at
        .and_then(|f| (now - f).to_std().ok())
        .unwrap_or(backoff);
    backoff.saturating_sub(since_exit)
}

pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The running container the rest of the reconcile plumbs.
pub struct Running {
    pub container: ObservedContainer,
    pub pid: u32,
    /// Created by this reconcile (so nothing found on it is drift).
    pub created: bool,
    /// Docker's share of a new container's start, and when it ended (the plumbing's time
    /// counts from there; lab-bench reads both from the log).
    pub docker_time: Option<(Duration, Instant)>,
    /// It had exited and was started again.
    pub restarted: Option<Drift>,
}

/// Observes the container, applies its plan, and observes it again running.
pub async fn converge(ctx: &Context, c: &ContainerEntry) -> Result<Running, ReconcileError> {
    let exec = ctx.executor();
    let observed = exec.container(&c.docker_name).await?;
    let restart = match &observed {
        Some(o) if !o.running => Some(ctx.restart_state(&c.name, &o.id).await),
        _ => None,
    };
    let (mut created, mut docker_time, mut restarted) = (false, None, None);
    match plan(c, observed.as_ref(), restart, Utc::now()) {
        Plan::Keep => {}
        Plan::Create { replace } => {
            docker_time = Some(create(ctx, c, replace).await?);
            created = true;
        }
        Plan::Restart {
            id,
            exit_code,
            state,
        } => {
            exec.run(Change::StartContainer {
                container: c.name.clone(),
                id,
            })
            .await?;
            restarted = Some(Drift::Restarted {
                docker_name: c.docker_name.clone(),
                exit_code,
                restart: state.count,
            });
            ctx.save_restart_state(&c.name, state);
        }
        Plan::CrashLoop {
            exit_code,
            wait,
            state,
        } => {
            ctx.save_restart_state(&c.name, state);
            return Err(ReconcileError::CrashLoop {
                container: c.name.clone(),
                exit_code,
                wait,
            });
        }
    }
    let not_running = || ReconcileError::NotRunning {
        container: c.name.clone(),
    };
    let container = match observed {
        Some(o) if !created && restarted.is_none() => o,
        _ => exec
            .container(&c.docker_name)
            .await?
            .ok_or_else(not_running)?,
    };
    let pid = container
        .pid
        .filter(|_| container.running)
        .ok_or_else(not_running)?;
    Ok(Running {
        container,
        pid,
        created,
        docker_time,
        restarted,
    })
}

/// Creates and starts the entry's container, after removing the one it replaces; returns
/// Docker's share of the time (image, create, start) and when it ended.
async fn create(
    ctx: &Context,
    c: &ContainerEntry,
    replace: Option<(String, Replaced)>,
) -> Result<(Duration, Instant), ReconcileError> {
    let exec = ctx.executor();
    let object = ObjectRef::new(Kind::Container, &c.name);
    if let Some((id, why)) = replace {
        exec.run(Change::RemoveContainer {
            container: c.name.clone(),
            id: id.clone(),
        })
        .await?;
        let message = format!(
            "container {} ({}) removed: {}",
            c.docker_name,
            short_id(&id),
            why.why()
        );
        ctx.recorder
            .normal(object.clone(), "Recreating", message)
            .await;
        ctx.forget_restarts(&c.name);
    }
    let started = Instant::now();
    exec.run(Change::EnsureImage {
        container: c.name.clone(),
        image: c.image.clone(),
        policy: c.pull_policy,
    })
    .await?;
    let id = exec.create_container(c).await?;
    let docker_time = (started.elapsed(), Instant::now());
    let state = RestartState {
        id: id.clone(),
        ..Default::default()
    };
    ctx.save_restart_state(&c.name, state);
    let message = format!(
        "container {} ({}) created and started",
        c.docker_name,
        short_id(&id)
    );
    ctx.recorder.normal(object, "Started", message).await;
    Ok(docker_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> ContainerEntry {
        crate::reconcile::fixtures::container("app", &[])
    }

    fn observed(running: bool, ran_secs: i64, exited_secs_ago: i64) -> ObservedContainer {
        let now = Utc::now();
        let finished = now - chrono::Duration::seconds(exited_secs_ago);
        ObservedContainer {
            id: "c1".into(),
            docker_name: "topo-app".into(),
            name: "app".into(),
            uid: entry().uid,
            config_hash: entry().config_hash(),
            image: entry().image,
            running,
            pid: running.then_some(42),
            restart_count: 0,
            started_at: Some(finished - chrono::Duration::seconds(ran_secs)),
            finished_at: (!running).then_some(finished),
            exit_code: (!running).then_some(137),
            status: if running { "running" } else { "exited" }.into(),
        }
    }

    #[test]
    fn the_plan_by_what_docker_holds() {
        let c = entry();
        let now = Utc::now();
        let mut other = observed(true, 60, 0);
        other.uid = "uid-0".into();
        let mut changed = observed(true, 60, 0);
        changed.config_hash = "old".into();
        let mut stopped_and_changed = observed(false, 60, 1);
        stopped_and_changed.config_hash = "old".into();
        let table = [
            (None, Plan::Create { replace: None }),
            (Some(observed(true, 60, 0)), Plan::Keep),
            (
                Some(other),
                Plan::Create {
                    replace: Some(("c1".into(), Replaced::OtherObject)),
                },
            ),
            (
                Some(changed),
                Plan::Create {
                    replace: Some(("c1".into(), Replaced::ConfigChanged)),
                },
            ),
            (
                Some(stopped_and_changed),
                Plan::Create {
                    replace: Some(("c1".into(), Replaced::ConfigChanged)),
                },
            ),
        ];
        for (o, want) in table {
            assert_eq!(plan(&c, o.as_ref(), None, now), want, "{o:?}");
        }
    }

    #[test]
    fn an_exit_restarts_at_once_and_a_second_quick_one_backs_off() {
        let c = entry();
        let now = Utc::now();
        // Killed after a long run: restarted, counted.
        let o = observed(false, 60, 0);
        let Plan::Restart { state, .. } = plan(&c, Some(&o), None, now) else {
            panic!()
        };
        assert_eq!((state.count, state.quick_exits), (1, 0));
        // A quick exit: restarted at once (it may be a kill).
        let o = observed(false, 1, 0);
        let Plan::Restart {
            state, exit_code, ..
        } = plan(&c, Some(&o), Some(state), now)
        else {
            panic!()
        };
        assert_eq!(
            (state.count, state.quick_exits, exit_code),
            (2, 1, Some(137))
        );
        // The same exit seen again is not counted twice.
        let Plan::Restart { state: again, .. } = plan(&c, Some(&o), Some(state.clone()), now)
        else {
            panic!()
        };
        assert_eq!(again.quick_exits, 1);
        // A second quick exit: wait 1 s from the exit.
        let o2 = ObservedContainer {
            finished_at: o.finished_at.map(|f| f + chrono::Duration::seconds(2)),
            started_at: o.finished_at,
            ..o.clone()
        };
        match plan(&c, Some(&o2), Some(state), o2.finished_at.unwrap()) {
            Plan::CrashLoop {
                wait, exit_code, ..
            } => {
                assert_eq!(wait, Duration::from_secs(1));
                assert_eq!(exit_code, 137);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn crash_backoff_doubles_up_to_its_bound() {
        let o = observed(false, 1, 0);
        let waits: Vec<u64> = [2u32, 3, 4, 11, 30]
            .iter()
            .map(|q| {
                let mut s = RestartState {
                    quick_exits: *q,
                    last_exit: o.finished_at,
                    ..Default::default()
                };
                crash_wait(&mut s, &o, o.finished_at.unwrap()).as_secs()
            })
            .collect();
        assert_eq!(waits, vec![1, 2, 4, 300, 300]);
    }
}
