//! Watch streams of the HTTP API: newline-delimited `WatchEvent`s from a resourceVersion.
//!
//! A stream watches etcd directly from `resourceVersion + 1`, so a client resumes exactly
//! where it stopped, on any replica. Status keys become MODIFIED events of their object.
//! Events of a change set being rolled forward through the intent log are held back until
//! the fence is clear, then sent together. A compacted resourceVersion yields one ERROR event
//! (reason Expired, code 410) and the end of the stream: the client lists again.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{Client, EventType, GetOptions, KeyValue, WatchOptions};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use topo_schema::api::{ApiError, ErrorReason, Event, LabelSelector, WatchEvent, WatchEventType};
use topo_schema::keys::{self, Fence};
use topo_schema::{Kind, ObjectRef, Resource};

use crate::cache::{Cache, MAX_MESSAGE_BYTES, decode_object, unchanged_between};

/// How often an idle stream carries a BOOKMARK.
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(10);

pub type LineStream = tokio_stream::wrappers::ReceiverStream<Result<Bytes, Infallible>>;

#[derive(Debug, Clone)]
pub struct ObjectWatch {
    /// None: every kind.
    pub kind: Option<Kind>,
    pub selector: LabelSelector,
    /// Start after this revision; None: first an ADDED for every current object.
    pub resource_version: Option<i64>,
}

/// One NDJSON line.
fn line<T: Serialize>(ev: &WatchEvent<T>) -> Result<Bytes, serde_json::Error> {
    let mut v = serde_json::to_vec(ev)?;
    v.push(b'\n');
    Ok(Bytes::from(v))
}

fn event<T>(type_: WatchEventType, object: T, rev: i64) -> WatchEvent<T> {
    WatchEvent {
        type_,
        object: Some(object),
        error: None,
        resource_version: rev.to_string(),
    }
}

fn bookmark<T>(rev: i64) -> WatchEvent<T> {
    WatchEvent {
        type_: WatchEventType::Bookmark,
        object: None,
        error: None,
        resource_version: rev.to_string(),
    }
}

fn error_event<T>(e: ApiError, rev: i64) -> WatchEvent<T> {
    WatchEvent {
        type_: WatchEventType::Error,
        object: None,
        error: Some(e),
        resource_version: rev.to_string(),
    }
}

fn expired(rev: i64) -> ApiError {
    ApiError::new(
        ErrorReason::Expired,
        format!(
            "resourceVersion {rev} is too old (compacted); list again and watch from the list's resourceVersion"
        ),
    )
}

fn is_compacted(e: &etcd_client::Error) -> bool {
    e.to_string().contains("compacted")
}

/// Sends lines to the client; false when the client has gone.
struct Sink(mpsc::Sender<Result<Bytes, Infallible>>);

impl Sink {
    /// Sends one event. An event that does not encode ends the stream (logged) rather than
    /// reaching the client as an empty line; the client resumes from the last
    /// resourceVersion it saw.
    async fn send<T: Serialize>(&self, ev: &WatchEvent<T>) -> bool {
        match line(ev) {
            Ok(l) => self.0.send(Ok(l)).await.is_ok(),
            Err(e) => {
                tracing::error!(error = %e, resource_version = %ev.resource_version, "failed to encode a watch event, ending the stream");
                false
            }
        }
    }
}

/// Starts an object watch; the returned stream ends on compaction, shutdown, or when etcd
/// cannot be watched.
pub fn watch_objects(
    client: Client,
    cache: Cache,
    w: ObjectWatch,
    shutdown: CancellationToken,
) -> LineStream {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let sink = Sink(tx);
        if let Err(e) = run_object_watch(&client, &cache, &w, &sink, &shutdown).await {
            let _ = sink.send(&error_event::<Resource>(e, 0)).await;
        }
    });
    LineStream::new(rx)
}

struct ObjectWatchState<'a> {
    client: &'a Client,
    cache: &'a Cache,
    w: &'a ObjectWatch,
    /// An intent is being rolled forward: events are held until it is applied.
    pending: bool,
    held: Vec<WatchEvent<Resource>>,
    /// The last revision sent (or known to hold nothing this watch covers).
    last: i64,
}

impl ObjectWatchState<'_> {
    fn wants(&self, kind: Kind) -> bool {
        self.w.kind.is_none_or(|k| k == kind)
    }

    fn matches(&self, r: &Resource) -> bool {
        self.w.selector.matches(&r.metadata().labels)
    }

    /// Turns one etcd event into a watch event, if it is one the client asked for.
    async fn translate(&mut self, ev: &etcd_client::Event) -> Option<WatchEvent<Resource>> {
        let kv = ev.kv()?;
        let key = kv.key_str().ok()?;
        let rev = kv.mod_revision();
        if key == keys::fence() {
            let was = self.pending;
            self.pending = ev.event_type() == EventType::Put
                && serde_json::from_slice::<Fence>(kv.value())
                    .ok()
                    .and_then(|f| f.pending_intent)
                    .is_some();
            if was && !self.pending {
                tracing::debug!(
                    held = self.held.len(),
                    "intent applied, releasing held events"
                );
            }
            return None;
        }
        if let Some((kind, name)) = keys::parse_object_key(key) {
            if !self.wants(kind) {
                return None;
            }
            let r = ObjectRef::new(kind, name);
            let prev = ev
                .prev_kv()
                .and_then(|p| decode_object(kind, name, p.value()));
            let prev_matches = prev.as_ref().is_some_and(|p| self.matches(p));
            match ev.event_type() {
                EventType::Delete => {
                    let mut p = prev?;
                    p.metadata_mut().resource_version = Some(rev.to_string());
                    prev_matches.then(|| event(WatchEventType::Deleted, p, rev))
                }
                EventType::Put => {
                    let mut new = decode_object(kind, name, kv.value())?;
                    if let Some(st) = self.cache.current().statuses.get(&r) {
                        new.set_status_value((**st).clone());
                    }
                    new.metadata_mut().resource_version = Some(rev.to_string());
                    let now_matches = self.matches(&new);
                    let t = match (prev_matches && kv.version() > 1, now_matches) {
                        (true, true) => WatchEventType::Modified,
                        (false, true) => WatchEventType::Added,
                        (true, false) => WatchEventType::Deleted,
                        (false, false) => return None,
                    };
                    Some(event(t, new, rev))
                }
            }
        } else if let Some((kind, name)) = keys::parse_status_key(key) {
            if !self.wants(kind) || ev.event_type() == EventType::Delete {
                // A status goes away with its object, whose DELETED says it all.
                return None;
            }
            let status: serde_json::Value = serde_json::from_slice(kv.value()).ok()?;
            let mut obj = self.object_at(kind, name, rev).await?;
            obj.set_status_value(status);
            self.matches(&obj)
                .then(|| event(WatchEventType::Modified, obj, rev))
        } else {
            None
        }
    }

    /// The object as it was at `rev`: the cache's when it is not newer, else etcd's.
    async fn object_at(&self, kind: Kind, name: &str, rev: i64) -> Option<Resource> {
        let r = ObjectRef::new(kind, name);
        if let Some(o) = self.cache.current().get(&r)
            && o.mod_revision <= rev
        {
            return Some(o.resource.clone());
        }
        let resp = self
            .client
            .kv_client()
            .get(
                keys::object(kind, name),
                Some(GetOptions::new().with_revision(rev)),
            )
            .await
            .ok()?;
        let kv = resp.kvs().first()?;
        let mut o = decode_object(kind, name, kv.value())?;
        o.metadata_mut().resource_version = Some(kv.mod_revision().to_string());
        Some(o)
    }
}

/// Whether the fence named a pending intent at revision `rev`.
async fn pending_at(client: &Client, rev: i64) -> Result<bool, ApiError> {
    match client
        .kv_client()
        .get(keys::fence(), Some(GetOptions::new().with_revision(rev)))
        .await
    {
        Ok(resp) => Ok(resp
            .kvs()
            .first()
            .and_then(|kv| serde_json::from_slice::<Fence>(kv.value()).ok())
            .and_then(|f| f.pending_intent)
            .is_some()),
        Err(e) if is_compacted(&e) => Err(expired(rev)),
        // A revision in the future: nothing pending can be known yet.
        Err(e) if e.to_string().contains("future revision") => Ok(false),
        Err(e) => Err(ApiError::new(
            ErrorReason::ServiceUnavailable,
            format!("failed to read from etcd: {e}"),
        )),
    }
}

/// How one etcd watch stream under a client's watch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamEnd {
    /// The client's stream is over: it went away, shutdown, or its revision was compacted.
    Done,
    /// The etcd watch was lost: watch again from the last revision sent.
    Lost,
}

type EtcdWatch = (
    etcd_client::WatchRequestSender,
    etcd_client::WatchResponseStream,
);

async fn run_object_watch(
    client: &Client,
    cache: &Cache,
    w: &ObjectWatch,
    sink: &Sink,
    shutdown: &CancellationToken,
) -> Result<(), ApiError> {
    let mut st = ObjectWatchState {
        client,
        cache,
        w,
        pending: false,
        held: Vec::new(),
        last: 0,
    };
    match st.start(sink).await? {
        Some(last) => st.last = last,
        None => return Ok(()),
    }
    let mut failures = 0;
    loop {
        match st.open().await {
            Ok(watch) => {
                if st.pump(watch, sink, shutdown, &mut failures).await == StreamEnd::Done {
                    return Ok(());
                }
                failures += 1;
                if failures > 5 {
                    return Err(ApiError::new(
                        ErrorReason::ServiceUnavailable,
                        "lost the etcd watch",
                    ));
                }
            }
            Err(e) => {
                failures += 1;
                if failures > 5 {
                    return Err(ApiError::new(
                        ErrorReason::ServiceUnavailable,
                        format!("failed to watch etcd: {e}"),
                    ));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200 * failures)).await;
    }
}

impl ObjectWatchState<'_> {
    /// The revision the etcd watch starts after: the client's, or, without one, the cache's
    /// after an ADDED for every current object. None when the client went away.
    async fn start(&mut self, sink: &Sink) -> Result<Option<i64>, ApiError> {
        if let Some(rv) = self.w.resource_version {
            self.pending = pending_at(self.client, rv).await?;
            return Ok(Some(rv));
        }
        // Published snapshots are never mid-intent.
        let snap = self.cache.current();
        let objs: Vec<_> = match self.w.kind {
            Some(k) => snap.of_kind(k).cloned().collect(),
            None => snap.objects.values().cloned().collect(),
        };
        for o in objs {
            if self.matches(&o.resource)
                && !sink
                    .send(&event(
                        WatchEventType::Added,
                        o.resource.clone(),
                        o.mod_revision,
                    ))
                    .await
            {
                return Ok(None);
            }
        }
        Ok(Some(snap.revision))
    }

    /// Watches the cached range after the last revision sent.
    async fn open(&self) -> Result<EtcdWatch, etcd_client::Error> {
        let opts = WatchOptions::new()
            .with_range(keys::CACHE_RANGE_END)
            .with_start_revision(self.last + 1)
            .with_prev_key()
            .with_progress_notify();
        let mut wc = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        Ok(wc.watch(keys::CACHE_RANGE_START, Some(opts)).await?.split())
    }

    /// Forwards one etcd watch stream to the client until it ends.
    async fn pump(
        &mut self,
        (mut sender, mut stream): EtcdWatch,
        sink: &Sink,
        shutdown: &CancellationToken,
        failures: &mut u64,
    ) -> StreamEnd {
        let mut ticker = tokio::time::interval(BOOKMARK_INTERVAL);
        ticker.tick().await;
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return StreamEnd::Done,
                _ = sink.0.closed() => return StreamEnd::Done,
                _ = ticker.tick() => {
                    let _ = sender.request_progress().await;
                    continue;
                }
                m = stream.message() => m,
            };
            let resp = match msg {
                Ok(Some(r)) => r,
                Ok(None) | Err(_) => return StreamEnd::Lost,
            };
            if resp.compact_revision() > 0 {
                let _ = sink
                    .send(&error_event::<Resource>(
                        expired(self.last),
                        resp.compact_revision(),
                    ))
                    .await;
                return StreamEnd::Done;
            }
            if resp.canceled() {
                return StreamEnd::Lost;
            }
            *failures = 0;
            let sent = if resp.events().is_empty() {
                self.progress(&resp, sink).await
            } else {
                self.forward(resp.events(), sink).await
            };
            if !sent {
                return StreamEnd::Done;
            }
        }
    }

    /// A progress notification: a BOOKMARK, at the notified revision when nothing this
    /// watch covers changed up to it (also when idle: it keeps the connection alive).
    /// False when the client went away.
    async fn progress(&mut self, resp: &etcd_client::WatchResponse, sink: &Sink) -> bool {
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        if resp.created() || self.pending {
            return true;
        }
        if rev > self.last
            && unchanged_between(
                self.client,
                keys::CACHE_RANGE_START,
                keys::CACHE_RANGE_END.as_bytes(),
                self.last,
                rev,
            )
            .await
        {
            self.last = rev;
        }
        sink.send(&bookmark::<Resource>(self.last)).await
    }

    /// Translates and sends etcd events, holding them back while an intent is pending.
    /// False when the client went away.
    async fn forward(&mut self, events: &[etcd_client::Event], sink: &Sink) -> bool {
        for ev in events {
            if let Some(kv) = ev.kv() {
                self.last = self.last.max(kv.mod_revision());
            }
            if let Some(we) = self.translate(ev).await {
                self.held.push(we);
            }
            if !self.pending {
                for we in std::mem::take(&mut self.held) {
                    if !sink.send(&we).await {
                        return false;
                    }
                }
            }
        }
        true
    }
}

/// Starts a watch of events (of one object, or all).
pub fn watch_events(
    client: Client,
    object: Option<ObjectRef>,
    resource_version: Option<i64>,
    shutdown: CancellationToken,
) -> LineStream {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let sink = Sink(tx);
        if let Err(e) =
            run_event_watch(&client, object.as_ref(), resource_version, &sink, &shutdown).await
        {
            let _ = sink.send(&error_event::<Event>(e, 0)).await;
        }
    });
    LineStream::new(rx)
}

fn decode_event(kv: &KeyValue) -> Option<Event> {
    serde_json::from_slice(kv.value()).ok()
}

/// The etcd event behind one event watch event, if it is one.
fn event_watch_event(ev: &etcd_client::Event) -> Option<WatchEvent<Event>> {
    let kv = ev.kv()?;
    match ev.event_type() {
        EventType::Put => decode_event(kv).map(|e| {
            let t = if kv.version() == 1 {
                WatchEventType::Added
            } else {
                WatchEventType::Modified
            };
            event(t, e, kv.mod_revision())
        }),
        EventType::Delete => ev
            .prev_kv()
            .and_then(decode_event)
            .map(|e| event(WatchEventType::Deleted, e, kv.mod_revision())),
    }
}

/// The revision an event watch starts after: the client's, or, without one, that of a
/// list sent as ADDED events. None when the client went away.
async fn start_events(
    client: &Client,
    object: Option<&ObjectRef>,
    resource_version: Option<i64>,
    sink: &Sink,
) -> Result<Option<i64>, ApiError> {
    if let Some(rv) = resource_version {
        return Ok(Some(rv));
    }
    let (evs, rev) = crate::events::list(client, object)
        .await
        .map_err(|e| ApiError::new(ErrorReason::ServiceUnavailable, e.to_string()))?;
    for e in evs {
        if !sink.send(&event(WatchEventType::Added, e, rev)).await {
            return Ok(None);
        }
    }
    Ok(Some(rev))
}

async fn run_event_watch(
    client: &Client,
    object: Option<&ObjectRef>,
    resource_version: Option<i64>,
    sink: &Sink,
    shutdown: &CancellationToken,
) -> Result<(), ApiError> {
    // The whole prefix: an object's events are the controller's and every agent's.
    let prefix = keys::events_prefix();
    let wanted = |e: &Event| object.is_none_or(|o| &e.object == o);
    let Some(mut last) = start_events(client, object, resource_version, sink).await? else {
        return Ok(());
    };
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(last + 1)
        .with_prev_key()
        .with_progress_notify();
    let (mut sender, mut stream) = client
        .watch_client()
        .watch(prefix.as_str(), Some(opts))
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorReason::ServiceUnavailable,
                format!("failed to watch etcd: {e}"),
            )
        })?
        .split();
    let mut ticker = tokio::time::interval(BOOKMARK_INTERVAL);
    ticker.tick().await;
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = sink.0.closed() => return Ok(()),
            _ = ticker.tick() => {
                let _ = sender.request_progress().await;
                continue;
            }
            m = stream.message() => m,
        };
        let resp = match msg {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) => {
                return Err(ApiError::new(
                    ErrorReason::ServiceUnavailable,
                    "lost the etcd watch",
                ));
            }
        };
        if resp.compact_revision() > 0 {
            let _ = sink
                .send(&error_event::<Event>(
                    expired(last),
                    resp.compact_revision(),
                ))
                .await;
            return Ok(());
        }
        if resp.canceled() {
            return Err(ApiError::new(
                ErrorReason::ServiceUnavailable,
                "etcd canceled the watch",
            ));
        }
        if resp.events().is_empty() {
            let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
            if resp.created() {
                continue;
            }
            if rev > last
                && unchanged_between(client, &prefix, &keys::prefix_end(&prefix), last, rev).await
            {
                last = rev;
            }
            if !sink.send(&bookmark::<Event>(last)).await {
                return Ok(());
            }
            continue;
        }
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            last = last.max(kv.mod_revision());
            if let Some(we) =
                event_watch_event(ev).filter(|we| we.object.as_ref().is_some_and(wanted))
                && !sink.send(&we).await
            {
                return Ok(());
            }
        }
    }
}
