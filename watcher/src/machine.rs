//! The state machine itself, over an abstract [`Source`]: its states, the [`Step`]s it hands
//! its caller, and the retry schedule. Kept apart from etcd so each transition is tested with
//! a scripted source.

use std::future::Future;
use std::time::Duration;

use backoff::ExponentialBackoff;
use backoff::backoff::Backoff;

/// One key as etcd holds it. `key` is relative to the source's prefix (if it strips one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    pub create_revision: i64,
}

/// A full read of the source's range at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub revision: i64,
    pub kvs: Vec<Kv>,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvEvent {
    Put(Kv),
    Delete { key: String, mod_revision: i64 },
}

impl KvEvent {
    pub fn key(&self) -> &str {
        match self {
            KvEvent::Put(kv) => &kv.key,
            KvEvent::Delete { key, .. } => key,
        }
    }

    pub fn mod_revision(&self) -> i64 {
        match self {
            KvEvent::Put(kv) => kv.mod_revision,
            KvEvent::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// One message of a watch, reduced to what the machine acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMessage {
    /// The events of one etcd response (a transaction arrives whole in one).
    Events(Vec<KvEvent>),
    /// Nothing in the range changed up to `revision`.
    Progress { revision: i64 },
    /// The start revision is gone: only a relist can catch up.
    Compacted { compact_revision: i64 },
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("failed to list {range} from etcd")]
    List {
        range: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("failed to watch {range} in etcd")]
    Watch {
        range: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("failed to watch {range}: etcd canceled the watch ({reason})")]
    Canceled { range: String, reason: String },
    #[error("failed to keep watching: the watch stream ended")]
    Ended,
    /// A source that is not etcd failed (`what` says how).
    #[error("failed to {what}")]
    Failed { what: String },
}

/// Where the machine lists and watches. Both calls are cancel-safe: dropping one midway
/// loses nothing the next call needs.
pub trait Source: Send {
    type Watch: Watch;
    fn list(&mut self) -> impl Future<Output = Result<Listing, SourceError>> + Send;
    /// Watches the range from `start_revision` (inclusive).
    fn watch(
        &mut self,
        start_revision: i64,
    ) -> impl Future<Output = Result<Self::Watch, SourceError>> + Send;
}

pub trait Watch: Send {
    /// The next message; `Ok(None)` when the stream ended (a disconnect).
    fn next(&mut self) -> impl Future<Output = Result<Option<WatchMessage>, SourceError>> + Send;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Nothing known yet: list the range.
    Listing,
    /// Everything up to `revision` was handed out; watch from `revision + 1`.
    Watching { revision: i64 },
    /// The watched revision was compacted: list again.
    Relisting,
}

/// What one step produced for the caller.
#[derive(Debug)]
pub enum Step {
    /// A (re)list completed: `listing` replaces whatever the caller held.
    Listed { listing: Listing, relist: bool },
    /// Watch events in order; with them the caller's state is at `revision`.
    Events { events: Vec<KvEvent>, revision: i64 },
    /// Nothing in the range changed up to `revision`.
    Progress { revision: i64 },
    /// Nothing for the caller (a watch opened, a compaction noticed, an empty response).
    Idle,
    /// Something failed; the caller waits `delay` before the next step.
    Retry { error: SourceError, delay: Duration },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub lists: u64,
    pub relists: u64,
    /// Watches opened after the first, from a kept revision.
    pub rewatches: u64,
}

pub struct Watcher<S: Source> {
    /// What is watched, for logs ("slice", "cache").
    name: &'static str,
    source: S,
    state: State,
    watch: Option<S::Watch>,
    backoff: ExponentialBackoff,
    stats: Stats,
    opened_once: bool,
}

impl<S: Source> Watcher<S> {
    pub fn new(name: &'static str, source: S, backoff: ExponentialBackoff) -> Self {
        crate::metrics::watch_created(name);
        Watcher {
            name,
            source,
            state: State::Listing,
            watch: None,
            backoff,
            stats: Stats::default(),
            opened_once: false,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn source(&self) -> &S {
        &self.source
    }

    /// Performs one transition. Cancel-safe: every change of the machine's own state happens
    /// after the step's only await.
    pub async fn step(&mut self) -> Step {
        match self.state {
            State::Listing | State::Relisting => self.list().await,
            State::Watching { revision } => self.watch_from(revision).await,
        }
    }

    fn retry(&mut self, error: SourceError) -> Step {
        let delay = self
            .backoff
            .next_backoff()
            .unwrap_or(self.backoff.max_interval);
        Step::Retry { error, delay }
    }

    async fn list(&mut self) -> Step {
        let relist = self.state == State::Relisting;
        let listing = match crate::metrics::etcd_timed("list", self.source.list()).await {
            Ok(l) => l,
            Err(e) => return self.retry(e),
        };
        self.stats.lists += 1;
        if relist {
            self.stats.relists += 1;
            crate::metrics::watch_relisted(self.name);
        }
        self.watch = None;
        self.state = State::Watching {
            revision: listing.revision,
        };
        self.backoff.reset();
        Step::Listed { listing, relist }
    }

    async fn watch_from(&mut self, revision: i64) -> Step {
        let watch = match &mut self.watch {
            Some(w) => w,
            None => match self.source.watch(revision + 1).await {
                Ok(w) => {
                    if self.opened_once {
                        self.stats.rewatches += 1;
                        // What the fault tests look for: a resumed watch, not a relist.
                        tracing::info!(
                            watcher = self.name,
                            from_revision = revision + 1,
                            rewatches = self.stats.rewatches,
                            relists = self.stats.relists,
                            "watch resumed from its revision"
                        );
                        crate::metrics::watch_restarted(self.name);
                    }
                    self.opened_once = true;
                    self.watch.insert(w)
                }
                Err(e) => return self.retry(e),
            },
        };
        match watch.next().await {
            Ok(Some(WatchMessage::Events(events))) => {
                self.backoff.reset();
                let revision = events
                    .iter()
                    .map(KvEvent::mod_revision)
                    .fold(revision, i64::max);
                self.state = State::Watching { revision };
                if events.is_empty() {
                    Step::Idle
                } else {
                    Step::Events { events, revision }
                }
            }
            Ok(Some(WatchMessage::Progress { revision: r })) => {
                self.backoff.reset();
                if r <= revision {
                    return Step::Idle;
                }
                self.state = State::Watching { revision: r };
                Step::Progress { revision: r }
            }
            Ok(Some(WatchMessage::Compacted { compact_revision })) => {
                tracing::info!(
                    watcher = self.name,
                    revision,
                    compact_revision,
                    "watched revision compacted; relisting"
                );
                self.watch = None;
                self.state = State::Relisting;
                Step::Idle
            }
            Ok(None) => {
                self.watch = None;
                self.retry(SourceError::Ended)
            }
            Err(e) => {
                self.watch = None;
                self.retry(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    type Messages = VecDeque<Result<Option<WatchMessage>, String>>;

    /// A scripted source: each list/watch call takes the next scripted answer.
    #[derive(Default)]
    struct Script {
        lists: VecDeque<Result<Listing, String>>,
        /// Each opened watch gets the next message queue; the start revision is recorded.
        watches: VecDeque<Result<Messages, String>>,
        watch_starts: Vec<i64>,
        list_calls: usize,
    }

    struct ScriptWatch(Messages);

    fn failed(what: impl Into<String>) -> SourceError {
        SourceError::Failed { what: what.into() }
    }

    impl Source for Script {
        type Watch = ScriptWatch;
        async fn list(&mut self) -> Result<Listing, SourceError> {
            self.list_calls += 1;
            match self.lists.pop_front() {
                Some(Ok(l)) => Ok(l),
                Some(Err(what)) => Err(failed(what)),
                None => Err(failed("list (script exhausted)")),
            }
        }
        async fn watch(&mut self, start: i64) -> Result<ScriptWatch, SourceError> {
            self.watch_starts.push(start);
            match self.watches.pop_front() {
                Some(Ok(q)) => Ok(ScriptWatch(q)),
                Some(Err(what)) => Err(failed(what)),
                None => Err(failed("watch (script exhausted)")),
            }
        }
    }

    impl Watch for ScriptWatch {
        async fn next(&mut self) -> Result<Option<WatchMessage>, SourceError> {
            match self.0.pop_front() {
                Some(Ok(m)) => Ok(m),
                Some(Err(what)) => Err(failed(what)),
                None => Ok(None),
            }
        }
    }

    fn kv(key: &str, value: &str, rev: i64) -> Kv {
        Kv {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            mod_revision: rev,
            create_revision: rev,
        }
    }

    fn listing(revision: i64, keys: &[&str]) -> Listing {
        Listing {
            revision,
            kvs: keys.iter().map(|k| kv(k, "v", revision)).collect(),
        }
    }

    fn watcher(s: Script) -> Watcher<Script> {
        Watcher::new(
            "test",
            s,
            crate::jittered_backoff(Duration::from_millis(1), Duration::from_millis(4)),
        )
    }

    fn events(step: Step) -> (Vec<String>, i64) {
        match step {
            Step::Events { events, revision } => (
                events.iter().map(|e| e.key().to_string()).collect(),
                revision,
            ),
            other => panic!("expected events, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn lists_then_watches_from_the_next_revision() {
        let mut s = Script::default();
        s.lists.push_back(Ok(listing(10, &["a"])));
        s.watches.push_back(Ok(VecDeque::from([
            Ok(Some(WatchMessage::Events(vec![KvEvent::Put(kv(
                "b", "x", 11,
            ))]))),
            Ok(Some(WatchMessage::Events(vec![
                KvEvent::Delete {
                    key: "b".into(),
                    mod_revision: 12,
                },
                KvEvent::Put(kv("c", "y", 12)),
            ]))),
            Ok(Some(WatchMessage::Events(vec![]))),
        ])));
        let mut w = watcher(s);
        assert_eq!(w.state(), State::Listing);
        match w.step().await {
            Step::Listed { listing, relist } => {
                assert!(!relist);
                assert_eq!(listing.kvs.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(w.state(), State::Watching { revision: 10 });
        assert_eq!(events(w.step().await), (vec!["b".to_string()], 11));
        assert_eq!(
            events(w.step().await),
            (vec!["b".to_string(), "c".to_string()], 12),
            "one response is one batch, in order"
        );
        assert!(matches!(w.step().await, Step::Idle), "an empty response");
        assert_eq!(w.state(), State::Watching { revision: 12 });
        assert_eq!(w.source().watch_starts, vec![11]);
        assert_eq!(w.stats().lists, 1);
    }

    #[tokio::test]
    async fn a_disconnect_rewatches_from_the_last_revision_without_relisting() {
        let mut s = Script::default();
        s.lists.push_back(Ok(listing(5, &[])));
        s.watches.push_back(Ok(VecDeque::from([
            Ok(Some(WatchMessage::Events(vec![KvEvent::Put(kv(
                "node", "1", 7,
            ))]))),
            Err("connection reset".into()),
        ])));
        s.watches.push_back(Err("etcd unavailable".into()));
        s.watches
            .push_back(Ok(VecDeque::from([Ok(Some(WatchMessage::Events(vec![
                KvEvent::Put(kv("node", "2", 9)),
            ])))])));
        s.watches.push_back(Ok(VecDeque::new()));
        let mut w = watcher(s);
        assert!(matches!(w.step().await, Step::Listed { .. }));
        assert_eq!(events(w.step().await).1, 7);
        assert!(matches!(w.step().await, Step::Retry { .. }));
        assert_eq!(w.state(), State::Watching { revision: 7 });
        assert!(matches!(w.step().await, Step::Retry { .. }));
        assert_eq!(events(w.step().await).1, 9);
        // The stream ends: a disconnect too.
        assert!(matches!(
            w.step().await,
            Step::Retry {
                error: SourceError::Ended,
                ..
            }
        ));
        assert!(matches!(w.step().await, Step::Retry { .. }));
        assert_eq!(w.source().watch_starts, vec![6, 8, 8, 10]);
        assert_eq!(w.source().list_calls, 1, "a disconnect must not relist");
        assert_eq!(w.stats().rewatches, 2, "two successful reopens");
        assert_eq!(w.state(), State::Watching { revision: 9 });
    }

    #[tokio::test]
    async fn compaction_relists_then_watches_after_the_new_listing() {
        let mut s = Script::default();
        s.lists.push_back(Ok(listing(5, &["node", "bridges/a"])));
        s.watches
            .push_back(Ok(VecDeque::from([Ok(Some(WatchMessage::Compacted {
                compact_revision: 50,
            }))])));
        s.lists.push_back(Err("timeout".into()));
        s.lists
            .push_back(Ok(listing(60, &["node", "tunnels/tg-x"])));
        s.watches.push_back(Ok(VecDeque::new()));
        let mut w = watcher(s);
        assert!(matches!(w.step().await, Step::Listed { relist: false, .. }));
        assert!(matches!(w.step().await, Step::Idle));
        assert_eq!(w.state(), State::Relisting);
        assert!(matches!(w.step().await, Step::Retry { .. }));
        assert_eq!(w.state(), State::Relisting, "a failed relist stays one");
        match w.step().await {
            Step::Listed { listing, relist } => {
                assert!(relist);
                assert_eq!(listing.revision, 60);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(w.state(), State::Watching { revision: 60 });
        assert_eq!(w.stats().relists, 1);
        assert_eq!(w.stats().lists, 2);
        let _ = w.step().await;
        assert_eq!(w.source().watch_starts, vec![6, 61]);
    }

    #[tokio::test]
    async fn progress_advances_the_revision_and_never_moves_it_back() {
        let mut s = Script::default();
        s.lists.push_back(Ok(listing(3, &[])));
        s.watches.push_back(Ok(VecDeque::from([
            Ok(Some(WatchMessage::Progress { revision: 40 })),
            Ok(Some(WatchMessage::Progress { revision: 20 })),
            Ok(None),
        ])));
        s.watches.push_back(Ok(VecDeque::new()));
        let mut w = watcher(s);
        let _ = w.step().await;
        assert!(matches!(w.step().await, Step::Progress { revision: 40 }));
        assert!(matches!(w.step().await, Step::Idle));
        assert_eq!(w.state(), State::Watching { revision: 40 });
        assert!(matches!(w.step().await, Step::Retry { .. }));
        let _ = w.step().await;
        assert_eq!(w.source().watch_starts, vec![4, 41]);
    }

    #[tokio::test]
    async fn failures_back_off_with_growing_delays_and_success_resets_them() {
        let mut s = Script::default();
        for _ in 0..3 {
            s.lists.push_back(Err("down".into()));
        }
        s.lists.push_back(Ok(listing(1, &[])));
        s.watches.push_back(Err("down".into()));
        let mut w = Watcher::new(
            "test",
            s,
            crate::jittered_backoff(Duration::from_millis(100), Duration::from_secs(10)),
        );
        let mut delays = vec![];
        for _ in 0..3 {
            match w.step().await {
                Step::Retry { delay, .. } => delays.push(delay),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(w.state(), State::Listing);
        // Jitter is ±30 %, doubling each time: the third is always above the first.
        assert!(delays[2] > delays[0], "{delays:?}");
        assert!(matches!(w.step().await, Step::Listed { .. }));
        match w.step().await {
            Step::Retry { delay, .. } => assert!(
                delay <= Duration::from_millis(130),
                "the list's success reset the schedule: {delay:?}"
            ),
            other => panic!("unexpected {other:?}"),
        }
    }
}
