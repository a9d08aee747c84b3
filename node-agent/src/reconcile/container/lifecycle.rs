//! The Docker container itself: keep it, create it (replacing one made for an earlier
//! object or an earlier configuration), or start it again after it exited — backing off as
//! kubelet does when it keeps exiting (a crash loop), however long each run lasted.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use topo_schema::kinds::{Kind, ObjectRef};
use topo_schema::slice::ContainerEntry;

use super::super::context::{Context, RestartState};
use super::super::drift::Drift;
use super::super::error::ReconcileError;
use super::super::executor::Change;
use super::plumbing;
use crate::backend::{ContainerNs, ObservedContainer};

/// Kubelet's restart backoff: the first restart after an exit is at once (a container killed
/// by hand is drift, not a crash loop); each further one waits `initial`, then twice as long
/// each time up to `max`, counted from the exit. A run of `reset_after` without an exit starts
/// the schedule over. The length of each run does not matter otherwise: a container that
/// crashes after 30 s backs off like one that crashes at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashBackoff {
    pub initial: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for CrashBackoff {
    fn default() -> Self {
        CrashBackoff {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

impl CrashBackoff {
    /// The wait before the restart that follows the `exits`-th exit of a run of exits.
    pub fn delay(&self, exits: u32) -> Duration {
        if exits <= 1 {
            return Duration::ZERO;
        }
        let doublings = (exits - 2).min(30);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }
}

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
    backoff: &CrashBackoff,
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
    let wait = crash_wait(&mut state, o, backoff, now);
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

/// How long to wait before restarting a container that exited: counts the exit (once) and
/// looks the wait up in `backoff`, less the time since the exit.
fn crash_wait(
    s: &mut RestartState,
    o: &ObservedContainer,
    backoff: &CrashBackoff,
    now: DateTime<Utc>,
) -> Duration {
    if o.finished_at.is_some() && o.finished_at != s.last_exit {
        s.last_exit = o.finished_at;
        let ran = match (o.started_at, o.finished_at) {
            (Some(a), Some(b)) => (b - a).to_std().unwrap_or_default(),
            _ => Duration::ZERO,
        };
        s.backoff_exits = if ran >= backoff.reset_after {
            1
        } else {
            s.backoff_exits + 1
        };
    }
    let delay = backoff.delay(s.backoff_exits);
    let since_exit = o
        .finished_at
        .and_then(|f| (now - f).to_std().ok())
        .unwrap_or(delay);
    delay.saturating_sub(since_exit)
}

pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The running container the rest of the reconcile plumbs.
pub struct Running {
    pub container: ObservedContainer,
    /// Its namespace, by its init process and its id (confirmed on every entry).
    pub ns: ContainerNs,
    /// Created by this reconcile (so nothing found on it is drift).
    pub created: bool,
    /// Docker's share of a new container's start, and when it ended (the plumbing's time
    /// counts from there; lab-bench reads both from the log).
    pub docker_time: Option<(Duration, Instant)>,
    /// It had exited and was started again.
    pub restarted: Option<Drift>,
    /// A new container's addresses, probed for while Docker created it (see
    /// [`plumbing::probe_ahead`]).
    pub probed: Option<plumbing::Probed>,
}

/// Observes the container, applies its plan, and observes it again running. `previous` is
/// the entry last put in force (for the addresses a new container probes for).
pub async fn converge(
    ctx: &Context,
    c: &ContainerEntry,
    previous: Option<&ContainerEntry>,
) -> Result<Running, ReconcileError> {
    let exec = ctx.executor();
    let observed = exec.container(&c.docker_name).await?;
    let restart = match &observed {
        Some(o) if !o.running => Some(ctx.restart_state(&c.name, &o.id).await),
        _ => None,
    };
    let (mut created, mut docker_time, mut restarted, mut probed) = (false, None, None, None);
    match plan(
        c,
        observed.as_ref(),
        restart,
        &ctx.crash_backoff,
        Utc::now(),
    ) {
        Plan::Keep => {}
        Plan::Create { replace } => {
            // The probes wait for answers while Docker works: off the start's critical path.
            let (made, ahead) = tokio::join!(
                create(ctx, c, replace),
                plumbing::probe_ahead(ctx, c, previous)
            );
            docker_time = Some(made?);
            // A probe that could not run (the bridge not made yet) is made again, after the
            // plumbing's own checks, by the plumbing.
            probed = ahead.ok();
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
            });
            ctx.save_restart_state(&c.name, state);
        }
        Plan::CrashLoop {
            exit_code,
            wait,
            state,
        } => {
            ctx.save_restart_state(&c.name, state);
            // One message per exit code: repeats fold into one counted event.
            let message = format!(
                "back-off restarting failed container {} (exit code {exit_code})",
                c.docker_name
            );
            ctx.recorder
                .warning(ObjectRef::new(Kind::Container, &c.name), "BackOff", message)
                .await;
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
        ns: ContainerNs::new(pid, &container.id),
        container,
        created,
        docker_time,
        restarted,
        probed,
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
    let started = Instant::now();
    // The image first: a container being replaced keeps running until its successor's image
    // is there (a stalled pull must not leave nothing running).
    super::image::converge(ctx, c).await?;
    if let Some((id, why)) = replace {
        ctx.remove_container(&c.name, &id).await?;
        let message = format!(
            "container {} ({}) removed: {}",
            c.docker_name,
            short_id(&id),
            why.why()
        );
        ctx.recorder
            .normal(
                ObjectRef::new(Kind::Container, &c.name),
                "Recreating",
                message,
            )
            .await;
        ctx.forget_restarts(&c.name);
    }
    let id = exec.create_container(c).await?;
    let docker_time = (started.elapsed(), Instant::now());
    let state = RestartState {
        id: id.clone(),
        ..Default::default()
    };
    ctx.save_restart_state(&c.name, state);
    Ok(docker_time)
}

/// The `Started` event of a container this reconcile created (Docker's `id`). The caller
/// records it once the plumbing is done: the event's etcd write (a read and a transaction)
/// would otherwise stand between the container's start and its network.
pub async fn record_started(ctx: &Context, c: &ContainerEntry, id: &str) {
    let message = format!(
        "container {} ({}) created and started",
        c.docker_name,
        short_id(id)
    );
    ctx.recorder
        .normal(ObjectRef::new(Kind::Container, &c.name), "Started", message)
        .await;
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
            assert_eq!(
                plan(&c, o.as_ref(), None, &CrashBackoff::default(), now),
                want,
                "{o:?}"
            );
        }
    }

    /// The wait before each restart of a container that keeps exiting after `ran` seconds:
    /// exit after exit, what the plan says at the moment of the exit.
    fn schedule(ran: i64, exits: usize) -> Vec<Option<u64>> {
        let c = entry();
        let backoff = CrashBackoff::default();
        let mut state = None;
        let mut t = Utc::now();
        let mut out = Vec::new();
        for _ in 0..exits {
            t += chrono::Duration::seconds(ran);
            let mut o = observed(false, ran, 0);
            o.started_at = Some(t - chrono::Duration::seconds(ran));
            o.finished_at = Some(t);
            match plan(&c, Some(&o), state.clone(), &backoff, t) {
                Plan::Restart { state: s, .. } => {
                    out.push(Some(0));
                    state = Some(s);
                }
                Plan::CrashLoop { wait, state: s, .. } => {
                    out.push(Some(wait.as_secs()));
                    // Restarted once the wait is over.
                    t += chrono::Duration::from_std(wait).unwrap();
                    let Plan::Restart { state: s, .. } = plan(&c, Some(&o), Some(s), &backoff, t)
                    else {
                        panic!("not restarted after the wait")
                    };
                    state = Some(s);
                }
                other => panic!("{other:?}"),
            }
        }
        out
    }

    #[test]
    fn crash_loops_back_off_like_kubelet_whatever_the_uptime() {
        let kubelet = vec![0, 10, 20, 40, 80, 160, 300, 300];
        for ran in [1, 5, 30, 300] {
            let waits: Vec<u64> = schedule(ran, 8).into_iter().flatten().collect();
            assert_eq!(
                waits, kubelet,
                "a container that runs {ran} s before each exit"
            );
        }
        // Ten minutes of running start the schedule over: every exit restarts at once.
        let waits: Vec<u64> = schedule(600, 4).into_iter().flatten().collect();
        assert_eq!(waits, vec![0, 0, 0, 0]);
    }

    #[test]
    fn an_exit_is_counted_once_and_the_wait_counts_from_it() {
        let c = entry();
        let now = Utc::now();
        let backoff = CrashBackoff::default();
        // Killed after a long run: restarted, counted.
        let o = observed(false, 60, 0);
        let Plan::Restart { state, .. } = plan(&c, Some(&o), None, &backoff, now) else {
            panic!()
        };
        assert_eq!((state.count, state.backoff_exits), (1, 1));
        // The same exit seen again (another event) is not counted twice.
        let Plan::Restart { state: again, .. } =
            plan(&c, Some(&o), Some(state.clone()), &backoff, now)
        else {
            panic!()
        };
        assert_eq!(again.backoff_exits, 1);
        // A second exit, 4 s after it: 6 s left of the 10.
        let o2 = ObservedContainer {
            started_at: o.finished_at,
            finished_at: o.finished_at.map(|f| f + chrono::Duration::seconds(2)),
            ..o.clone()
        };
        let at = o2.finished_at.unwrap() + chrono::Duration::seconds(4);
        match plan(&c, Some(&o2), Some(state), &backoff, at) {
            Plan::CrashLoop {
                wait, exit_code, ..
            } => {
                assert_eq!(wait, Duration::from_secs(6));
                assert_eq!(exit_code, 137);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        let b = CrashBackoff::default();
        let waits: Vec<u64> = [0u32, 1, 2, 3, 4, 7, 8, 40, u32::MAX]
            .iter()
            .map(|n| b.delay(*n).as_secs())
            .collect();
        assert_eq!(waits, vec![0, 0, 10, 20, 40, 300, 300, 300, 300]);
    }
}
