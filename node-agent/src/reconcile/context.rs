//! What every reconcile shares: the backends, the slice, the report and event writers, the
//! queue, the watches inside containers' namespaces, and the agent's memory of what it did
//! (the entry each key last applied, restart counts, the node NAT rules in force, veths whose
//! OVS port must be re-added).
//!
//! The memory is only ever a hint for telling drift from configuration and for counting:
//! a fresh process starts with it empty and adopts the host as it finds it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use topo_schema::kinds::{Kind, ObjectRef};
use topo_schema::slice::{SliceEntry, SliceKey};

use super::Backends;
pub use super::container::lifecycle::CrashBackoff;
use super::error::ReconcileError;
use super::executor::{Change, Executor};
use super::hostports::{Hold, recheck_after};
use crate::backend::{NatRules, PortDnat};
use crate::events::Recorder;
use crate::host_events::namespaces::NamespaceWatches;
use crate::key::Key;
use crate::pulls::{ImagePulls, PullConfig};
use crate::queue::WorkQueue;
use crate::report::Reporter;
use crate::watch::SliceStore;

/// Restart bookkeeping of one container (the agent restarts containers, Docker does not).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestartState {
    /// The Docker container the counts are about.
    pub id: String,
    pub count: u32,
    /// Exits since the container last ran [`CrashBackoff::reset_after`] without exiting:
    /// they set how long the next restart waits.
    pub backoff_exits: u32,
    /// `finished_at` of the last exit counted, so one exit is counted once.
    pub last_exit: Option<chrono::DateTime<Utc>>,
}

#[derive(Default)]
struct Memory {
    /// The entry each key last reconciled successfully with.
    applied: HashMap<SliceKey, SliceEntry>,
    /// The store holds a complete list: removals and garbage collection may act.
    synced: bool,
    /// By container name.
    restarts: HashMap<String, RestartState>,
    /// The node NAT rules last put in force.
    node_nat: Option<NatRules>,
    /// Host veths made anew whose OVS port has not been re-added since: a reconcile that
    /// failed in between must not leave the port on the old device when it retries.
    stale_ports: HashSet<String>,
    /// By container: the published ports the node's NAT reconcile last judged, and those
    /// it held back.
    port_verdicts: HashMap<String, PortVerdict>,
    /// Rechecks of held ports since none was held.
    hold_rechecks: u32,
    /// Host veths whose address is withheld because another host answered for it: taking
    /// it once it is free is no repair of drift.
    withheld: HashSet<String>,
    /// Docker ids of containers this agent removed, and when: their kill, die and destroy
    /// events are its own doing, not drift (see [`Context::remove_container`]).
    removed: HashMap<String, Instant>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct PortVerdict {
    ports: Vec<PortDnat>,
    holds: Vec<Hold>,
}

fn sorted(ports: &[PortDnat]) -> Vec<PortDnat> {
    let mut v = ports.to_vec();
    v.sort();
    v
}

/// A container whose held ports changed in a NAT pass.
#[derive(Debug, Clone, PartialEq)]
pub struct HoldChange {
    pub container: String,
    pub before: Vec<Hold>,
    pub after: Vec<Hold>,
}

/// How long after the agent removed a container its Docker events are taken for the
/// removal's own (Docker sends them within the removal; this leaves room for a slow daemon).
const OWN_REMOVAL_EVENTS: Duration = Duration::from_secs(60);

/// Everything a reconcile needs. Shared by the workers.
pub struct Context {
    pub node: String,
    pub backends: Backends,
    pub store: SliceStore,
    pub reporter: Reporter,
    pub recorder: Recorder,
    pub queue: Arc<WorkQueue>,
    /// Watches inside each plumbed container's namespace (see `host_events::namespaces`).
    pub watches: NamespaceWatches,
    /// How restarts of a crash-looping container back off (kubelet's, unless a test sets
    /// shorter ones).
    pub crash_backoff: CrashBackoff,
    /// Image pulls, off the workers.
    pub pulls: ImagePulls,
    memory: Mutex<Memory>,
}

impl Context {
    pub fn new(
        node: &str,
        backends: Backends,
        store: SliceStore,
        reporter: Reporter,
        recorder: Recorder,
        queue: Arc<WorkQueue>,
    ) -> Self {
        let watches = NamespaceWatches::new(
            backends.interfaces.clone(),
            backends.nat.clone(),
            queue.clone(),
        );
        let pulls = ImagePulls::new(
            backends.containers.clone(),
            queue.clone(),
            recorder.clone(),
            PullConfig::default(),
        );
        Context {
            node: node.to_string(),
            backends,
            store,
            reporter,
            recorder,
            queue,
            watches,
            crash_backoff: CrashBackoff::default(),
            pulls,
            memory: Mutex::new(Memory::default()),
        }
    }

    /// With other pull deadlines and backoff (the agent's flags; tests use short ones).
    pub fn with_pull_config(mut self, config: PullConfig) -> Self {
        self.pulls = ImagePulls::new(
            self.backends.containers.clone(),
            self.queue.clone(),
            self.recorder.clone(),
            config,
        );
        self
    }

    /// With another crash-loop backoff (tests use a short one).
    pub fn with_crash_backoff(mut self, backoff: CrashBackoff) -> Self {
        self.crash_backoff = backoff;
        self
    }

    pub fn executor(&self) -> Executor<'_> {
        Executor::new(&self.backends)
    }

    /// Removes container `id` (of entry `container`), remembering that the agent did: the
    /// Docker events of its removal then queue nothing. Without this each removal's kill, die
    /// and destroy queued garbage collection, which lists and inspects every container of
    /// the node (250 inspects at 250 containers) to find nothing to do.
    pub async fn remove_container(&self, container: &str, id: &str) -> Result<(), ReconcileError> {
        {
            let mut mem = self.mem();
            let now = Instant::now();
            mem.removed
                .retain(|_, at| now.duration_since(*at) < OWN_REMOVAL_EVENTS);
            mem.removed.insert(id.to_string(), now);
        }
        self.executor()
            .run(Change::RemoveContainer {
                container: container.to_string(),
                id: id.to_string(),
            })
            .await
    }

    /// Whether the agent removed container `id` lately (its events are the agent's own).
    pub fn removed_by_agent(&self, id: &str) -> bool {
        self.mem()
            .removed
            .get(id)
            .is_some_and(|at| at.elapsed() < OWN_REMOVAL_EVENTS)
    }

    fn mem(&self) -> std::sync::MutexGuard<'_, Memory> {
        // Never held across an await; every section leaves the memory consistent.
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The store is complete (the first list arrived). Before that no key is reconciled,
    /// so an empty store is never mistaken for "remove everything".
    pub fn mark_synced(&self) {
        self.mem().synced = true;
    }

    pub fn is_synced(&self) -> bool {
        self.mem().synced
    }

    pub(crate) fn applied(&self, key: &SliceKey) -> Option<SliceEntry> {
        self.mem().applied.get(key).cloned()
    }

    pub(crate) fn set_applied(&self, key: SliceKey, entry: SliceEntry) {
        self.mem().applied.insert(key, entry);
    }

    pub(crate) fn forget(&self, key: &SliceKey) {
        let mut m = self.mem();
        m.applied.remove(key);
        if let SliceKey::Container(name) = key {
            m.restarts.remove(name);
        }
    }

    /// Every key the queue should see on a full resync.
    pub fn all_keys(&self) -> Vec<Key> {
        let mut keys: Vec<Key> = self.store.keys().into_iter().map(Key::from).collect();
        // Keys the agent applied and the store lost (removed while a worker was busy) too.
        keys.extend(self.mem().applied.keys().map(Key::from));
        keys.push(Key::Nat);
        keys.push(Key::Gc);
        keys.sort();
        keys.dedup();
        keys
    }

    /// The restart state of container `name` for Docker container `id`, seeded from the
    /// stored report so counts survive an agent restart.
    pub(crate) async fn restart_state(&self, name: &str, id: &str) -> RestartState {
        if let Some(s) = self.mem().restarts.get(name).filter(|s| s.id == id) {
            return s.clone();
        }
        let stored = self
            .reporter
            .stored(&ObjectRef::new(Kind::Container, name))
            .await;
        let count = stored
            .filter(|r| r.container_id.as_deref() == Some(id))
            .map(|r| r.restart_count)
            .unwrap_or(0);
        let s = RestartState {
            id: id.to_string(),
            count,
            ..Default::default()
        };
        self.mem().restarts.insert(name.to_string(), s.clone());
        s
    }

    /// The restart state as memory holds it (no report lookup): (container id, restarts).
    pub(crate) fn restarts_known(&self, name: &str) -> (Option<String>, u32) {
        self.mem()
            .restarts
            .get(name)
            .map(|s| (Some(s.id.clone()), s.count))
            .unwrap_or((None, 0))
    }

    pub(crate) fn save_restart_state(&self, name: &str, s: RestartState) {
        self.mem().restarts.insert(name.to_string(), s);
    }

    pub(crate) fn forget_restarts(&self, name: &str) {
        self.mem().restarts.remove(name);
    }

    pub(crate) fn node_nat(&self) -> Option<NatRules> {
        self.mem().node_nat.clone()
    }

    pub(crate) fn set_node_nat(&self, rules: NatRules) {
        self.mem().node_nat = Some(rules);
    }

    /// What held `ports` of `container` at the last NAT pass, when that pass judged exactly
    /// these ports (None: not judged yet, the caller must look itself).
    pub(crate) fn judged_holds(&self, container: &str, ports: &[PortDnat]) -> Option<Vec<Hold>> {
        let m = self.mem();
        let v = m.port_verdicts.get(container)?;
        (v.ports == sorted(ports)).then(|| v.holds.clone())
    }

    /// Remembers a NAT pass's verdicts on every published port; returns the containers
    /// whose held ports changed.
    pub(crate) fn set_port_verdicts(
        &self,
        published: &[(String, PortDnat)],
        mut holds: BTreeMap<String, Vec<Hold>>,
    ) -> Vec<HoldChange> {
        let mut next: HashMap<String, PortVerdict> = HashMap::new();
        for (container, port) in published {
            next.entry(container.clone())
                .or_default()
                .ports
                .push(port.clone());
        }
        for (container, v) in &mut next {
            v.ports.sort();
            v.holds = holds.remove(container).unwrap_or_default();
        }
        let mut m = self.mem();
        let mut changes: Vec<HoldChange> = Vec::new();
        let names: HashSet<&String> = next.keys().chain(m.port_verdicts.keys()).collect();
        for name in names {
            let before = m
                .port_verdicts
                .get(name)
                .map(|v| v.holds.clone())
                .unwrap_or_default();
            let after = next.get(name).map(|v| v.holds.clone()).unwrap_or_default();
            if before != after {
                changes.push(HoldChange {
                    container: name.clone(),
                    before,
                    after,
                });
            }
        }
        m.port_verdicts = next;
        changes.sort_by(|a, b| a.container.cmp(&b.container));
        changes
    }

    /// When to look at held ports again: None when nothing is held (the count restarts),
    /// else after a delay that doubles with each recheck, up to ten seconds.
    pub(crate) fn next_hold_recheck(&self, anything_held: bool) -> Option<Duration> {
        let mut m = self.mem();
        if !anything_held {
            m.hold_rechecks = 0;
            return None;
        }
        let d = recheck_after(m.hold_rechecks);
        m.hold_rechecks = m.hold_rechecks.saturating_add(1);
        Some(d)
    }

    /// Marks host veths whose pair is being made anew.
    pub(crate) fn mark_stale_ports(&self, veths: impl IntoIterator<Item = String>) {
        self.mem().stale_ports.extend(veths);
    }

    /// Which of `veths` still wait for their OVS port to be re-added.
    pub(crate) fn stale_ports<'v>(
        &self,
        veths: impl IntoIterator<Item = &'v String>,
    ) -> HashSet<String> {
        let m = self.mem();
        veths
            .into_iter()
            .filter(|v| m.stale_ports.contains(*v))
            .cloned()
            .collect()
    }

    /// Whether `veth`'s address was withheld (see [`Memory::withheld`]).
    pub(crate) fn is_withheld(&self, veth: &str) -> bool {
        self.mem().withheld.contains(veth)
    }

    pub(crate) fn set_withheld(&self, veth: &str, withheld: bool) {
        let mut m = self.mem();
        if withheld {
            m.withheld.insert(veth.to_string());
        } else {
            m.withheld.remove(veth);
        }
    }

    pub(crate) fn clear_stale_ports<'v>(&self, veths: impl IntoIterator<Item = &'v String>) {
        let mut m = self.mem();
        for v in veths {
            m.stale_ports.remove(v);
        }
    }
}
