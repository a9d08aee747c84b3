//! Image pulls, off the reconcile workers. A pull can take minutes or stall forever (a
//! registry that accepts the connection and then sends nothing); a worker waiting for it
//! would hold up every other key behind it. So a container whose image must be pulled asks
//! [`ImagePulls`] to start the pull in a task of its own and returns at once (its status says
//! `ImagePulling`, with the progress); the task queues the container's key when the pull ends.
//!
//! Each pull has two deadlines, as kubelet's had: no progress message for
//! [`PullConfig::progress_timeout`] (stalled), or not finished within [`PullConfig::timeout`].
//! Dropping the engine's stream then abandons the pull (the engine cancels a pull whose client
//! went). A failed pull is retried after kubelet's image backoff (10 s doubling to 5 min);
//! meanwhile the container's status is `ImagePullBackOff` with the registry's error. At most
//! [`PullConfig::parallel`] pulls run at once; one image is pulled once for all the
//! containers that want it.
//!
//! Events go to every container waiting for the image: `Pulling` when the pull starts and
//! then its progress every [`PullConfig::progress_events`], `Pulled` at the end, or
//! `ImagePullFailed` with the error (repeats of one error fold into one counted event).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::Semaphore;
use topo_schema::kinds::{Kind, ObjectRef};

use crate::backend::{ContainerError, Containers, PullProgress};
use crate::error_chain::error_chain;
use crate::events::Recorder;
use crate::key::Key;
use crate::queue::WorkQueue;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullConfig {
    /// A pull that sends no progress for this long has stalled: it is abandoned and failed.
    pub progress_timeout: Duration,
    /// A pull not finished after this long is abandoned and failed.
    pub timeout: Duration,
    /// After the n-th failure in a row the next attempt waits `backoff_initial · 2^(n-1)`, up
    /// to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Pulls at once; more wait for a slot.
    pub parallel: usize,
    /// How often a long pull's progress becomes an event.
    pub progress_events: Duration,
}

impl Default for PullConfig {
    fn default() -> Self {
        PullConfig {
            progress_timeout: Duration::from_secs(60),
            timeout: Duration::from_secs(600),
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            parallel: 3,
            progress_events: Duration::from_secs(15),
        }
    }
}

impl PullConfig {
    /// The wait before the next attempt after `failures` failures in a row.
    pub fn retry_delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let doublings = (failures - 1).min(30);
        self.backoff_initial
            .saturating_mul(1u32 << doublings)
            .min(self.backoff_max)
    }
}

/// Bytes of one layer as the engine last reported them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Layer {
    current: u64,
    total: u64,
    done: bool,
}

/// What a pull has done so far, summed over its layers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Progress {
    layers: BTreeMap<String, Layer>,
}

impl Progress {
    /// Takes one message in; whether it moved the pull on (bytes, or a layer's step).
    pub fn update(&mut self, p: &PullProgress) -> bool {
        // About the image as a whole ("Pulling from REPO" carries the tag as its id,
        // "Digest: ...", "Status: ..."): still news, but no layer.
        let whole_image = p.status.starts_with("Pulling from ")
            || p.status.starts_with("Digest:")
            || p.status.starts_with("Status:");
        let Some(id) = p.layer.as_ref().filter(|_| !whole_image) else {
            return true;
        };
        let before = self.layers.get(id).copied();
        let l = self.layers.entry(id.clone()).or_default();
        if p.status.starts_with("Downloading") {
            l.current = p.current.unwrap_or(l.current);
            l.total = p.total.unwrap_or(l.total).max(l.current);
        }
        if matches!(
            p.status.as_str(),
            "Pull complete" | "Already exists" | "Download complete"
        ) {
            l.done |= p.status != "Download complete";
            l.current = l.total;
        }
        before != Some(*l) || p.status != "Downloading"
    }

    /// `3 of 5 layers done, 12.0 of 40.1 MiB`, or `starting` before the engine said more.
    pub fn summary(&self) -> String {
        if self.layers.is_empty() {
            return "starting".to_string();
        }
        let done = self.layers.values().filter(|l| l.done).count();
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let current: u64 = self.layers.values().map(|l| l.current).sum();
        let total: u64 = self.layers.values().map(|l| l.total).sum();
        format!(
            "{done} of {} layers done, {:.1} of {:.1} MiB",
            self.layers.len(),
            mib(current),
            mib(total)
        )
    }
}

/// Where the pull of one image stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullState {
    /// Pulling (or waiting for a slot) since `started`.
    Pulling {
        started: Instant,
        progress: Progress,
    },
    /// Pulled at `at`.
    Pulled { at: Instant },
    /// The last attempt failed at `at` with the registry's (or a deadline's) `error`;
    /// `failures` in a row so far.
    Failed {
        error: String,
        failures: u32,
        at: Instant,
    },
}

struct Entry {
    state: PullState,
    /// Container object names waiting for the image.
    waiting: BTreeSet<String>,
    task: Option<tokio::task::AbortHandle>,
}

struct Shared {
    containers: Arc<dyn Containers>,
    queue: Arc<WorkQueue>,
    recorder: Recorder,
    config: PullConfig,
    slots: Arc<Semaphore>,
    entries: Mutex<HashMap<String, Entry>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // Never held across an await; every section leaves the map consistent.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn waiting(&self, image: &str) -> Vec<String> {
        self.lock()
            .get(image)
            .map(|e| e.waiting.iter().cloned().collect())
            .unwrap_or_default()
    }

    async fn tell(&self, image: &str, reason: &str, message: &str, warning: bool) {
        for name in self.waiting(image) {
            let object = ObjectRef::new(Kind::Container, &name);
            if warning {
                self.recorder.warning(object, reason, message).await;
            } else {
                self.recorder.normal(object, reason, message).await;
            }
        }
    }
}

/// The node's image pulls (one per image at a time).
#[derive(Clone)]
pub struct ImagePulls {
    shared: Arc<Shared>,
}

impl ImagePulls {
    pub fn new(
        containers: Arc<dyn Containers>,
        queue: Arc<WorkQueue>,
        recorder: Recorder,
        config: PullConfig,
    ) -> Self {
        ImagePulls {
            shared: Arc::new(Shared {
                containers,
                queue,
                recorder,
                slots: Arc::new(Semaphore::new(config.parallel.max(1))),
                config,
                entries: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn config(&self) -> &PullConfig {
        &self.shared.config
    }

    /// Where the pull of `image` stands (None: never pulled, or forgotten).
    pub fn state(&self, image: &str) -> Option<PullState> {
        self.shared.lock().get(image).map(|e| e.state.clone())
    }

    /// Container `name` waits for `image`: its key is queued when the pull ends.
    pub fn wait(&self, image: &str, name: &str) {
        if let Some(e) = self.shared.lock().get_mut(image) {
            e.waiting.insert(name.to_string());
        }
    }

    /// Starts a pull of `image` for container `name`, unless one is under way (then `name`
    /// joins it).
    pub async fn start(&self, image: &str, name: &str) {
        let failures = {
            let mut entries = self.shared.lock();
            let e = entries.entry(image.to_string()).or_insert_with(|| Entry {
                state: PullState::Pulled { at: Instant::now() },
                waiting: BTreeSet::new(),
                task: None,
            });
            e.waiting.insert(name.to_string());
            if matches!(e.state, PullState::Pulling { .. }) {
                return;
            }
            let failures = match &e.state {
                PullState::Failed { failures, .. } => *failures,
                _ => 0,
            };
            e.state = PullState::Pulling {
                started: Instant::now(),
                progress: Progress::default(),
            };
            failures
        };
        let task = tokio::spawn(run_pull(self.shared.clone(), image.to_string(), failures));
        if let Some(e) = self.shared.lock().get_mut(image) {
            e.task = Some(task.abort_handle());
        }
        let message = format!("pulling image {image}");
        let object = ObjectRef::new(Kind::Container, name);
        self.shared
            .recorder
            .normal(object, "Pulling", message)
            .await;
    }

    /// The pulled image was used (an `Always` container was created): the next create of
    /// such a container pulls again.
    pub fn consume(&self, image: &str) {
        let mut entries = self.shared.lock();
        if matches!(
            entries.get(image).map(|e| &e.state),
            Some(PullState::Pulled { .. })
        ) {
            entries.remove(image);
        }
    }

    /// Abandons every pull (the agent is shutting down).
    pub fn stop_all(&self) {
        for (_, e) in self.shared.lock().drain() {
            if let Some(t) = e.task {
                t.abort();
            }
        }
    }
}

/// One pull: a slot, the engine's stream under both deadlines, then the outcome for every
/// container that waits.
async fn run_pull(shared: Arc<Shared>, image: String, failures: u32) {
    let started = Instant::now();
    // The semaphore is never closed: acquiring fails only if it were.
    let _slot = shared.slots.clone().acquire_owned().await;
    let outcome = pull_with_deadlines(&shared, &image).await;
    let waiting: Vec<String> = {
        let mut entries = shared.lock();
        let Some(e) = entries.get_mut(&image) else {
            return;
        };
        e.task = None;
        e.state = match &outcome {
            Ok(()) => PullState::Pulled { at: Instant::now() },
            Err(error) => PullState::Failed {
                error: error.clone(),
                failures: failures + 1,
                at: Instant::now(),
            },
        };
        e.waiting.iter().cloned().collect()
    };
    match outcome {
        Ok(()) => {
            let message = format!(
                "pulled image {image} in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            tracing::info!(%image, "image pulled");
            shared.tell(&image, "Pulled", &message, false).await;
        }
        Err(error) => {
            let message = format!("failed to pull image {image}: {error}");
            tracing::warn!(%image, %error, "image pull failed");
            shared.tell(&image, "ImagePullFailed", &message, true).await;
        }
    }
    if let Some(e) = shared.lock().get_mut(&image) {
        e.waiting.clear();
    }
    shared
        .queue
        .add_all(waiting.into_iter().map(Key::Container));
}

/// The registry's words for a failed pull.
fn pull_error(e: &ContainerError) -> String {
    match e {
        ContainerError::ImagePullFailed { reason, .. } => reason.clone(),
        other => error_chain(other),
    }
}

/// Follows the engine's stream until it ends (Ok), fails or misses a deadline (Err with why).
async fn pull_with_deadlines(shared: &Shared, image: &str) -> Result<(), String> {
    let cfg = shared.config;
    let mut stream = shared.containers.pull(image);
    let deadline = Instant::now() + cfg.timeout;
    let mut last_progress = Instant::now();
    let mut next_event = Instant::now() + cfg.progress_events;
    let mut progress = Progress::default();
    loop {
        let wake = deadline
            .min(last_progress + cfg.progress_timeout)
            .min(next_event);
        match tokio::time::timeout_at(wake.into(), stream.next()).await {
            Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => return Err(pull_error(&e)),
            Ok(Some(Ok(p))) => {
                if progress.update(&p) {
                    last_progress = Instant::now();
                    if let Some(e) = shared.lock().get_mut(image)
                        && let PullState::Pulling {
                            progress: shown, ..
                        } = &mut e.state
                    {
                        *shown = progress.clone();
                    }
                }
            }
            Err(_) => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "the pull did not finish within {} s (abandoned)",
                cfg.timeout.as_secs()
            ));
        }
        if now >= last_progress + cfg.progress_timeout {
            return Err(format!(
                "the registry sent nothing for {} s ({}; abandoned as stalled)",
                cfg.progress_timeout.as_secs_f64(),
                progress.summary()
            ));
        }
        if now >= next_event {
            next_event = now + cfg.progress_events;
            let message = format!("pulling image {image}: {}", progress.summary());
            shared.tell(image, "Pulling", &message, false).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(layer: &str, status: &str, current: u64, total: u64) -> PullProgress {
        PullProgress {
            layer: Some(layer.into()),
            status: status.into(),
            current: Some(current),
            total: Some(total),
        }
    }

    #[test]
    fn progress_sums_layers_and_notices_a_standstill() {
        let mut p = Progress::default();
        assert_eq!(p.summary(), "starting");
        assert!(p.update(&msg("1.0", "Pulling from library/app", 0, 0)));
        assert_eq!(p.summary(), "starting", "the tag is no layer");
        assert!(p.update(&msg("a", "Pulling fs layer", 0, 0)));
        assert!(p.update(&msg("a", "Downloading", 1 << 20, 4 << 20)));
        assert!(
            !p.update(&msg("a", "Downloading", 1 << 20, 4 << 20)),
            "the same bytes again are no progress"
        );
        assert!(p.update(&msg("b", "Downloading", 1 << 20, 2 << 20)));
        assert_eq!(p.summary(), "0 of 2 layers done, 2.0 of 6.0 MiB");
        assert!(p.update(&msg("b", "Pull complete", 0, 0)));
        assert_eq!(p.summary(), "1 of 2 layers done, 3.0 of 6.0 MiB");
    }

    #[test]
    fn retries_back_off_like_kubelets_image_pulls() {
        let c = PullConfig::default();
        let waits: Vec<u64> = [0, 1, 2, 3, 5, 6, 100]
            .iter()
            .map(|n| c.retry_delay(*n).as_secs())
            .collect();
        assert_eq!(waits, vec![0, 10, 20, 40, 160, 300, 300]);
    }
}
