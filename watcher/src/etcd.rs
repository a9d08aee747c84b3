//! The etcd [`Source`]: a key range (or a prefix) listed page by page at one revision and
//! watched from a revision, with what etcd's protocol asks of a careful client:
//!
//! * compaction comes as a watch response with `compact_revision` set ([`WatchMessage::Compacted`]);
//!   a stream error carrying gRPC `OUT_OF_RANGE` ([`revision_gone`]) means the same;
//! * progress notifications can be asked for ([`EtcdSource::with_progress_requests`]); etcd
//!   3.4 answers such a request with its current revision even when events up to it are still
//!   on their way (3.5 fixed that), so a source built [`EtcdSource::with_verified_progress`]
//!   hands a progress revision on only once [`last_change`] shows nothing in its range
//!   changed after what the stream handed out.

use std::sync::Arc;

use etcd_client::{Client, EventType, GetOptions, KeyValue, SortOrder, SortTarget, WatchOptions};
use tokio::sync::Notify;

use crate::machine::{Kv, KvEvent, Listing, Source, SourceError, Watch, WatchMessage};

/// Keys per range request of a list, unless the source says otherwise.
const DEFAULT_PAGE: i64 = 500;

/// Whether etcd refused a revision as out of range: `ErrCompacted` ("required revision has
/// been compacted") or `ErrFutureRev`, both gRPC `OUT_OF_RANGE`. A watcher only ever asks for
/// revisions etcd handed it, so for it this means compacted.
pub fn revision_gone(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::OutOfRange)
}

/// The end of the range of keys that start with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Whether no key in [`start`, `end`) has a mod_revision in (`after`, `at`], as etcd sees it
/// at `at`. Deleted keys are not seen this way; their events still arrive and are applied.
pub async fn unchanged_between(
    client: &Client,
    start: impl AsRef<[u8]>,
    end: impl AsRef<[u8]>,
    after: i64,
    at: i64,
) -> bool {
    last_change(client, start, end, at)
        .await
        .is_ok_and(|last| last <= after)
}

/// The highest mod_revision of a key in [`start`, `end`) as etcd sees it at `at` (0 when the
/// range is empty). etcd 3.4 reads every key of the range to sort them: on a range of a
/// quarter of a million keys one call costs etcd about half a second.
pub async fn last_change(
    client: &Client,
    start: impl AsRef<[u8]>,
    end: impl AsRef<[u8]>,
    at: i64,
) -> Result<i64, etcd_client::Error> {
    let opts = GetOptions::new()
        .with_range(end.as_ref().to_vec())
        .with_revision(at)
        .with_sort(SortTarget::Mod, SortOrder::Descend)
        .with_limit(1)
        .with_keys_only();
    let resp = client
        .kv_client()
        .get(start.as_ref().to_vec(), Some(opts))
        .await?;
    Ok(resp.kvs().first().map_or(0, |kv| kv.mod_revision()))
}

pub struct EtcdSource {
    client: Client,
    start: Vec<u8>,
    end: Vec<u8>,
    /// Removed from the front of every key handed out (the prefix of a prefix source).
    strip: String,
    page: i64,
    max_message_bytes: Option<usize>,
    verify_progress: bool,
    progress_requests: Option<Arc<Notify>>,
}

impl EtcdSource {
    /// Every key under `prefix`; keys are handed out without it.
    pub fn prefix(client: Client, prefix: &str) -> Self {
        let mut s = Self::range(client, prefix, prefix_end(prefix.as_bytes()));
        s.strip = prefix.to_string();
        s
    }

    /// Every key in [`start`, `end`), handed out whole.
    pub fn range(client: Client, start: &str, end: impl Into<Vec<u8>>) -> Self {
        EtcdSource {
            client,
            start: start.as_bytes().to_vec(),
            end: end.into(),
            strip: String::new(),
            page: DEFAULT_PAGE,
            max_message_bytes: None,
            verify_progress: false,
            progress_requests: None,
        }
    }

    /// Keys per range request of a list.
    pub fn with_page_size(mut self, page: i64) -> Self {
        self.page = page.max(1);
        self
    }

    /// Largest list page or watch response accepted (etcd-client's default is 4 MiB).
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = Some(bytes);
        self
    }

    /// Hands a progress revision on only once etcd confirms nothing in the range changed up
    /// to it (see the module documentation).
    pub fn with_verified_progress(mut self) -> Self {
        self.verify_progress = true;
        self
    }

    /// Each notification asks the open watch for a progress notification (at once if a watch
    /// is open, else as soon as one is).
    pub fn with_progress_requests(mut self, requests: Arc<Notify>) -> Self {
        self.progress_requests = Some(requests);
        self
    }

    /// The range as logs and errors name it.
    fn describe(&self) -> String {
        if self.strip.is_empty() {
            format!(
                "[{}, {})",
                String::from_utf8_lossy(&self.start),
                String::from_utf8_lossy(&self.end)
            )
        } else {
            self.strip.clone()
        }
    }

    fn kv(&self, kv: &KeyValue) -> Kv {
        Kv {
            key: strip(&self.strip, kv.key()),
            value: kv.value().to_vec(),
            mod_revision: kv.mod_revision(),
            create_revision: kv.create_revision(),
        }
    }
}

fn strip(prefix: &str, key: &[u8]) -> String {
    let key = String::from_utf8_lossy(key);
    key.strip_prefix(prefix).unwrap_or(&key).to_string()
}

impl Source for EtcdSource {
    type Watch = EtcdWatch;

    async fn list(&mut self) -> Result<Listing, SourceError> {
        let mut kv = self.client.kv_client();
        if let Some(n) = self.max_message_bytes {
            kv = kv.max_decoding_message_size(n);
        }
        let mut from = self.start.clone();
        let mut listing = Listing::default();
        loop {
            // Later pages read at the first page's revision, so the listing is one state.
            let mut opts = GetOptions::new()
                .with_range(self.end.clone())
                .with_limit(self.page)
                .with_sort(SortTarget::Key, SortOrder::Ascend);
            if listing.revision > 0 {
                opts = opts.with_revision(listing.revision);
            }
            let resp =
                kv.get(from.clone(), Some(opts))
                    .await
                    .map_err(|source| SourceError::List {
                        range: self.describe(),
                        source,
                    })?;
            if listing.revision == 0 {
                listing.revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            listing.kvs.extend(resp.kvs().iter().map(|kv| self.kv(kv)));
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(listing),
            }
        }
    }

    async fn watch(&mut self, start_revision: i64) -> Result<EtcdWatch, SourceError> {
        let opts = WatchOptions::new()
            .with_range(self.end.clone())
            .with_start_revision(start_revision)
            .with_progress_notify();
        let mut client = self.client.watch_client();
        if let Some(n) = self.max_message_bytes {
            client = client.max_decoding_message_size(n);
        }
        let stream = client
            .watch(self.start.clone(), Some(opts))
            .await
            .map_err(|source| SourceError::Watch {
                range: self.describe(),
                source,
            })?;
        Ok(EtcdWatch {
            stream,
            range: self.describe(),
            strip: self.strip.clone(),
            seen: start_revision - 1,
            verify: self
                .verify_progress
                .then(|| (self.client.clone(), self.start.clone(), self.end.clone())),
            change_on_its_way: 0,
            progress_requests: self.progress_requests.clone(),
        })
    }
}

pub struct EtcdWatch {
    stream: etcd_client::WatchStream,
    range: String,
    strip: String,
    /// The revision everything handed out so far brings the caller to.
    seen: i64,
    /// (client, start, end) to confirm progress notifications with.
    verify: Option<(Client, Vec<u8>, Vec<u8>)>,
    /// A change in the range a confirmation found that the stream has not handed out yet:
    /// no progress can be confirmed before it arrives, so none is asked of etcd until then.
    /// Asking anyway, once per progress request, kept etcd busy reading the whole range back
    /// to back while the stream fell further behind (topo-bench at 5,000 nodes: the cache 20 s
    /// behind, etcd's CPU doubled).
    change_on_its_way: i64,
    progress_requests: Option<Arc<Notify>>,
}

impl EtcdWatch {
    fn watch_error(&self, source: etcd_client::Error) -> SourceError {
        SourceError::Watch {
            range: self.range.clone(),
            source,
        }
    }

    /// The next response, asking for progress whenever a request comes in meanwhile.
    async fn message(&mut self) -> Result<Option<etcd_client::WatchResponse>, SourceError> {
        let Some(requests) = self.progress_requests.clone() else {
            return self.stream.message().await.map_err(|e| self.watch_error(e));
        };
        loop {
            tokio::select! {
                m = self.stream.message() => return m.map_err(|e| self.watch_error(e)),
                () = requests.notified() => {
                    self.stream
                        .request_progress()
                        .await
                        .map_err(|e| self.watch_error(e))?;
                }
            }
        }
    }

    /// A progress notification at `revision`, if it may be trusted.
    async fn progress(&mut self, revision: i64) -> Option<WatchMessage> {
        if revision <= self.seen {
            return None;
        }
        if let Some((client, start, end)) = &self.verify {
            if self.change_on_its_way > self.seen {
                return None;
            }
            match last_change(client, start, end, revision).await {
                Ok(last) if last <= self.seen => {}
                Ok(last) => {
                    self.change_on_its_way = last;
                    return None;
                }
                Err(_) => return None,
            }
        }
        self.seen = revision;
        Some(WatchMessage::Progress { revision })
    }
}

impl Watch for EtcdWatch {
    async fn next(&mut self) -> Result<Option<WatchMessage>, SourceError> {
        loop {
            let resp = match self.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(None),
                Err(SourceError::Watch { source, .. }) if revision_gone(&source) => {
                    return Ok(Some(WatchMessage::Compacted {
                        compact_revision: 0,
                    }));
                }
                Err(e) => return Err(e),
            };
            if resp.compact_revision() > 0 {
                return Ok(Some(WatchMessage::Compacted {
                    compact_revision: resp.compact_revision(),
                }));
            }
            if resp.canceled() {
                return Err(SourceError::Canceled {
                    range: self.range.clone(),
                    reason: resp.cancel_reason().to_string(),
                });
            }
            if resp.events().is_empty() {
                // The creation answer's header is the current revision, but events between
                // the start revision and it may still follow: it is no progress.
                if resp.created() {
                    continue;
                }
                let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
                match self.progress(revision).await {
                    Some(m) => return Ok(Some(m)),
                    None => continue,
                }
            }
            let mut events = Vec::with_capacity(resp.events().len());
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                self.seen = self.seen.max(kv.mod_revision());
                events.push(match ev.event_type() {
                    EventType::Put => KvEvent::Put(Kv {
                        key: strip(&self.strip, kv.key()),
                        value: kv.value().to_vec(),
                        mod_revision: kv.mod_revision(),
                        create_revision: kv.create_revision(),
                    }),
                    EventType::Delete => KvEvent::Delete {
                        key: strip(&self.strip, kv.key()),
                        mod_revision: kv.mod_revision(),
                    },
                });
            }
            return Ok(Some(WatchMessage::Events(events)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_covers_the_prefix() {
        assert_eq!(
            prefix_end(b"/topo/v1/slices/n1/"),
            b"/topo/v1/slices/n10".to_vec()
        );
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn out_of_range_is_a_gone_revision_and_nothing_else_is() {
        let compacted = etcd_client::Error::GRpcStatus(tonic::Status::out_of_range(
            "etcdserver: mvcc: required revision has been compacted",
        ));
        assert!(revision_gone(&compacted));
        // The text alone does not make it so.
        let text = etcd_client::Error::WatchError("required revision has been compacted".into());
        assert!(!revision_gone(&text));
        let unavailable =
            etcd_client::Error::GRpcStatus(tonic::Status::unavailable("connection refused"));
        assert!(!revision_gone(&unavailable));
    }

    #[test]
    fn keys_are_handed_out_without_the_prefix() {
        assert_eq!(
            strip("/topo/v1/slices/n1/", b"/topo/v1/slices/n1/node"),
            "node"
        );
        assert_eq!(strip("", b"/topo/v1/fence"), "/topo/v1/fence");
    }
}
