//! Whether this controller can trust etcd and its own cache right now: what `/readyz`
//! answers, and what reads served from the cache warn about.
//!
//! Reads come from the cache and keep working while etcd is unreachable, but then they may
//! be stale, and the client must be told (a `Warning: 299` header, as Kubernetes sends; topoctl
//! prints it). Neither a failed watch nor a quiet one says so in time: a watch on a paused
//! member simply gets no events. So a probe runs every second: a linearizable read of the
//! fence (it needs an etcd quorum), after which the cache must reach that read's revision
//! (it asks etcd for progress notifications, so this holds on an idle cluster too). Either
//! failing makes the state stale until a later probe passes.
//!
//! The probe's verdict is kept, not recomputed per request: `/readyz` answers at once (probes
//! time out in a second or two), and a read costs one atomic load.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use etcd_client::Client;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use topo_schema::keys;

use crate::cache::Cache;

/// Time between probes.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// The longest one probe step (the read, then the cache catching up) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the last probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// etcd answered a quorum read and the cache has caught up with it.
    Fresh,
    /// Since `since`, etcd has not answered (or the cache lags it); `reason` is the latest
    /// failure in a few words.
    Stale {
        since: DateTime<Utc>,
        reason: String,
    },
}

/// The controller's view of etcd's health; cheap to clone.
#[derive(Clone)]
pub struct Health {
    rx: watch::Receiver<State>,
}

impl Health {
    /// Starts the probe loop (until `shutdown`). The state starts fresh: the controller has
    /// just listed etcd to build its cache.
    pub fn start(client: Client, cache: Cache, shutdown: CancellationToken) -> Health {
        let (tx, rx) = watch::channel(State::Fresh);
        tokio::spawn(probe_loop(client, cache, Arc::new(tx), shutdown));
        Health { rx }
    }

    /// A health that never changes (tests of the API alone).
    pub fn fixed(state: State) -> Health {
        let (tx, rx) = watch::channel(state);
        // The receiver keeps its last value once the sender is gone.
        drop(tx);
        Health { rx }
    }

    pub fn state(&self) -> State {
        self.rx.borrow().clone()
    }

    /// The text of the `Warning` header a read served from the cache carries while stale.
    pub fn stale_warning(&self) -> Option<String> {
        match &*self.rx.borrow() {
            State::Fresh => None,
            State::Stale { since, reason } => Some(warning_text(since, reason)),
        }
    }
}

/// `299 - "..."`: RFC 7234's warn-code 299 (a persistent warning), no agent, the text quoted.
pub fn warning_text(since: &DateTime<Utc>, reason: &str) -> String {
    let text = format!(
        "etcd unavailable since {} ({}): this answer comes from the controller's cache and may be stale",
        since.to_rfc3339_opts(SecondsFormat::Secs, true),
        reason
    );
    // A header value: visible ASCII only, and no quote or backslash inside the quoted text.
    let clean: String = text
        .chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if c.is_ascii_graphic() || c == ' ' => c,
            _ => '?',
        })
        .collect();
    format!("299 - \"{clean}\"")
}

/// What went wrong with etcd in a few words (not tonic's debug dump of the status).
pub fn etcd_summary(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            let m = s.message();
            let code = format!("{:?}", s.code());
            if m.contains("Timeout expired") || code == "DeadlineExceeded" {
                "no answer in time".to_string()
            } else if m.is_empty() {
                code
            } else {
                // A failed connection says only "transport error" or "http2 error"; its
                // causes say what happened (keep-alive timed out, connection reset, ...).
                with_causes(m, std::error::Error::source(s))
            }
        }
        etcd_client::Error::TransportError(_) => "cannot connect".to_string(),
        other => other
            .to_string()
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect(),
    }
}

/// `first: cause: cause...` (each said once), at most 200 characters.
fn with_causes(first: &str, mut cause: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut parts = vec![first.to_string()];
    while let Some(c) = cause {
        let text = c.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cause = c.source();
    }
    parts.join(": ").chars().take(200).collect()
}

/// One probe: a quorum read of the fence, then the cache at its revision.
async fn probe(client: &Client, cache: &Cache) -> Result<(), String> {
    let mut kv = client.kv_client();
    let rev = match tokio::time::timeout(PROBE_TIMEOUT, kv.get(keys::fence(), None)).await {
        Ok(Ok(resp)) => resp.header().map(|h| h.revision()).unwrap_or(0),
        Ok(Err(e)) => return Err(etcd_summary(&e)),
        Err(_) => return Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    };
    match tokio::time::timeout(PROBE_TIMEOUT, cache.wait_for_revision(rev)).await {
        Ok(snap) if snap.revision >= rev => Ok(()),
        _ => Err(format!(
            "the controller's cache lags etcd (at revision {}, etcd at {rev})",
            cache.current().revision
        )),
    }
}

async fn probe_loop(
    client: Client,
    cache: Cache,
    tx: Arc<watch::Sender<State>>,
    shutdown: CancellationToken,
) {
    loop {
        let verdict = tokio::select! {
            _ = shutdown.cancelled() => return,
            v = probe(&client, &cache) => v,
        };
        tx.send_if_modified(|state| next_state(state, verdict));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PROBE_EVERY) => {}
        }
    }
}

/// Folds a probe's verdict into the state; true when it changed. A failure while already
/// stale keeps `since` and updates the reason.
fn next_state(state: &mut State, verdict: Result<(), String>) -> bool {
    match (&*state, verdict) {
        (State::Fresh, Ok(())) => false,
        (State::Stale { since, .. }, Ok(())) => {
            tracing::info!(stale_since = %since, "etcd answers again and the cache is current: ready");
            *state = State::Fresh;
            true
        }
        (State::Fresh, Err(reason)) => {
            tracing::warn!(%reason, "etcd unavailable: not ready; reads come from the cache and may be stale");
            *state = State::Stale {
                since: Utc::now(),
                reason,
            };
            true
        }
        (State::Stale { since, reason: old }, Err(reason)) => {
            if *old == reason {
                return false;
            }
            *state = State::Stale {
                since: *since,
                reason,
            };
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_keeps_its_start_and_fresh_forgets_it() {
        let mut s = State::Fresh;
        assert!(!next_state(&mut s, Ok(())));
        assert!(next_state(&mut s, Err("no answer in time".into())));
        let State::Stale { since, .. } = s.clone() else {
            panic!("{s:?}")
        };
        assert!(!next_state(&mut s, Err("no answer in time".into())));
        assert!(next_state(&mut s, Err("cannot connect".into())));
        assert_eq!(
            s,
            State::Stale {
                since,
                reason: "cannot connect".into()
            }
        );
        assert!(next_state(&mut s, Ok(())));
        assert_eq!(s, State::Fresh);
    }

    #[test]
    fn the_warning_is_a_valid_header_value() {
        let since = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let w = warning_text(&since, "h2 \"error\" é");
        assert_eq!(
            w,
            "299 - \"etcd unavailable since 2026-01-02T03:04:05Z (h2 'error' ?): this answer comes from the controller's cache and may be stale\""
        );
        assert!(axum::http::HeaderValue::from_str(&w).is_ok());
        assert!(Health::fixed(State::Fresh).stale_warning().is_none());
    }

    #[test]
    fn a_failed_connection_is_summed_up_with_its_causes() {
        assert_eq!(
            with_causes(
                "transport error",
                Some(&std::io::Error::other("keep-alive timed out"))
            ),
            "transport error: keep-alive timed out"
        );
    }
}
