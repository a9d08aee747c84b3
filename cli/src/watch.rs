//! A resumable watch of one kind: resumes from the last seen resourceVersion after a
//! disconnect, and lists again (reporting what changed meanwhile) when told the revision is
//! gone (`ERROR` 410 / `Expired`).
//!
//! [`Known`] (what was seen, pure and tested) is kept apart from `KindWatch` (the loop:
//! follow a stream, resume, relist), so the replay and relist rules are tested without a
//! server.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::mpsc;
use topo_schema::api::{ErrorReason, List, WatchEvent, WatchEventType};
use topo_schema::{Kind, Resource};

use crate::client::{Client, ClientError};

/// Consecutive failed reconnects after which a watch gives up.
const MAX_RECONNECTS: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    Modified,
    Deleted,
}

#[derive(Debug, Clone)]
pub struct Update {
    pub change: Change,
    pub object: Resource,
}

pub type Sink = mpsc::Sender<Result<Update, ClientError>>;

/// Tracks what a watcher has seen, so a relist can be turned into the changes it missed and
/// a replayed event is not reported twice.
#[derive(Debug, Default)]
pub struct Known {
    objects: BTreeMap<String, Resource>,
}

impl Known {
    pub fn from_list(items: &[Resource]) -> Known {
        Known {
            objects: items
                .iter()
                .map(|o| (o.name().to_string(), o.clone()))
                .collect(),
        }
    }

    /// Records an event; `None` when it tells nothing new (a replay of what is known).
    pub fn observe(&mut self, change: Change, object: Resource) -> Option<Update> {
        let name = object.name().to_string();
        match change {
            Change::Deleted => {
                self.objects.remove(&name)?;
                Some(Update { change, object })
            }
            _ => {
                // A status change keeps the object's resourceVersion: compare whole objects.
                let change = match self.objects.get(&name) {
                    Some(old) if *old == object => return None,
                    Some(_) => Change::Modified,
                    None => Change::Added,
                };
                self.objects.insert(name, object.clone());
                Some(Update { change, object })
            }
        }
    }

    /// The changes between what is known and a fresh list; afterwards the list is known.
    pub fn relist(&mut self, items: Vec<Resource>) -> Vec<Update> {
        let mut updates = Vec::new();
        let fresh: std::collections::BTreeSet<String> =
            items.iter().map(|o| o.name().to_string()).collect();
        let gone: Vec<String> = self
            .objects
            .keys()
            .filter(|n| !fresh.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(object) = self.objects.remove(&name) {
                updates.push(Update {
                    change: Change::Deleted,
                    object,
                });
            }
        }
        for o in items {
            updates.extend(self.observe(Change::Modified, o));
        }
        updates
    }
}

/// Watches `kind` from the state `list` described, sending changes to `sink` until the
/// receiver goes away or the watch fails for good.
pub fn spawn(
    client: Client,
    kind: Kind,
    selector: Option<String>,
    list: &List<Resource>,
    sink: Sink,
) {
    let rv = list
        .metadata
        .as_ref()
        .map(|m| m.resource_version.clone())
        .unwrap_or_default();
    let w = KindWatch {
        client,
        kind,
        selector,
        rv,
        known: Known::from_list(&list.items),
        sink,
        failures: 0,
    };
    tokio::spawn(w.run());
}

/// One resumable watch of a kind.
struct KindWatch {
    client: Client,
    kind: Kind,
    selector: Option<String>,
    /// The last resourceVersion seen: where a resumed watch starts.
    rv: String,
    known: Known,
    sink: Sink,
    /// Consecutive failed reconnects.
    failures: u32,
}

/// What to do after a watch stream.
enum Next {
    /// Watch again from the last resourceVersion.
    Resume,
    /// The resourceVersion is gone: list again first.
    Relist,
    /// The receiver went away, or an error was sent that ends the watch.
    Stop,
}

impl KindWatch {
    async fn run(mut self) {
        loop {
            if self.sink.is_closed() {
                return;
            }
            let relist = match self.follow().await {
                Next::Stop => return,
                Next::Relist => true,
                Next::Resume => false,
            };
            if self.failures > MAX_RECONNECTS {
                let err = topo_schema::api::ApiError::new(
                    ErrorReason::ServiceUnavailable,
                    format!(
                        "lost the watch of {} at {} and could not resume it",
                        self.kind.plural(),
                        self.client.server()
                    ),
                );
                let _ = self.sink.send(Err(ClientError::Api(err))).await;
                return;
            }
            if self.failures > 0 {
                let backoff =
                    Duration::from_millis(200u64.saturating_mul(1 << self.failures.min(6)));
                tokio::time::sleep(backoff).await;
            }
            if relist && !self.relist().await {
                return;
            }
        }
    }

    /// One watch stream from the last resourceVersion, forwarded until it ends.
    async fn follow(&mut self) -> Next {
        let mut stream = match self
            .client
            .watch(self.kind, self.selector.as_deref(), &self.rv)
            .await
        {
            Ok(stream) => stream,
            Err(e) if e.reason() == Some(ErrorReason::Expired) => return Next::Relist,
            Err(e) if e.is_unreachable() || e.reason() == Some(ErrorReason::ServiceUnavailable) => {
                self.failures += 1;
                return Next::Resume;
            }
            Err(e) => {
                let _ = self.sink.send(Err(e)).await;
                return Next::Stop;
            }
        };
        loop {
            match stream.next_event().await {
                Ok(Some(ev)) => {
                    self.failures = 0;
                    if let Some(next) = self.on_event(ev).await {
                        return next;
                    }
                }
                // The server ended the stream, or it broke: resume from the last rv.
                Ok(None) | Err(_) => {
                    self.failures += 1;
                    return Next::Resume;
                }
            }
        }
    }

    /// One watch event: a change sent on, or a new resourceVersion; Some when the stream
    /// must end.
    async fn on_event(&mut self, ev: WatchEvent<Resource>) -> Option<Next> {
        let change = match ev.type_ {
            WatchEventType::Added => Change::Added,
            WatchEventType::Modified => Change::Modified,
            WatchEventType::Deleted => Change::Deleted,
            WatchEventType::Bookmark => {
                self.rv = ev.resource_version;
                return None;
            }
            WatchEventType::Error => {
                let err = ev.error.unwrap_or_else(|| {
                    topo_schema::api::ApiError::new(ErrorReason::InternalError, "watch failed")
                });
                if err.reason == ErrorReason::Expired || err.code == 410 {
                    return Some(Next::Relist);
                }
                let _ = self.sink.send(Err(ClientError::Api(err))).await;
                return Some(Next::Stop);
            }
        };
        if !ev.resource_version.is_empty() {
            self.rv = ev.resource_version;
        }
        let object = ev.object?;
        if let Some(u) = self.known.observe(change, object)
            && self.sink.send(Ok(u)).await.is_err()
        {
            return Some(Next::Stop);
        }
        None
    }

    /// Lists again and sends what changed meanwhile; false when the watch must stop.
    async fn relist(&mut self) -> bool {
        match self.client.list(self.kind, self.selector.as_deref()).await {
            Ok(list) => {
                self.rv = list
                    .metadata
                    .map(|m| m.resource_version)
                    .unwrap_or_default();
                for u in self.known.relist(list.items) {
                    if self.sink.send(Ok(u)).await.is_err() {
                        return false;
                    }
                }
                true
            }
            Err(e) if e.is_unreachable() => {
                self.failures += 1;
                true
            }
            Err(e) => {
                let _ = self.sink.send(Err(e)).await;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::tests::container;

    fn with_rv(mut r: Resource, rv: &str) -> Resource {
        r.metadata_mut().resource_version = Some(rv.into());
        r
    }

    #[test]
    fn replays_are_dropped_and_relist_reports_the_gap() {
        let now = chrono::Utc::now();
        let a = with_rv(container("a", now), "5");
        let b = with_rv(container("b", now), "6");
        let mut k = Known::from_list(&[a.clone(), b.clone()]);
        assert!(
            k.observe(Change::Modified, a.clone()).is_none(),
            "the same object is a replay"
        );
        let mut a_status = a.clone();
        a_status.clear_status();
        assert_eq!(
            k.observe(Change::Modified, a_status).unwrap().change,
            Change::Modified,
            "a status change"
        );
        let a7 = with_rv(container("a", now), "7");
        assert_eq!(
            k.observe(Change::Modified, a7.clone()).unwrap().change,
            Change::Modified
        );
        let c = with_rv(container("c", now), "8");
        assert_eq!(
            k.observe(Change::Modified, c).unwrap().change,
            Change::Added
        );

        // Meanwhile (compacted away): b deleted, a changed again, d created.
        let a9 = with_rv(container("a", now), "9");
        let d = with_rv(container("d", now), "10");
        let c8 = with_rv(container("c", now), "8");
        let got: Vec<(Change, String)> = k
            .relist(vec![a9, c8, d])
            .into_iter()
            .map(|u| (u.change, u.object.name().to_string()))
            .collect();
        assert_eq!(
            got,
            [
                (Change::Deleted, "b".into()),
                (Change::Modified, "a".into()),
                (Change::Added, "d".into())
            ]
        );
        assert!(k.observe(Change::Deleted, b).is_none(), "already gone");
    }

    /// A fake controller: the first watch is told its revision was compacted, the relist
    /// shows a changed world, the watch after it carries one more object.
    async fn fake_server() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            let now = chrono::Utc::now();
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
                log.lock().unwrap().push(target.clone());
                let body = if target.contains("watch=true") && target.contains("resourceVersion=10")
                {
                    let err = topo_schema::api::ApiError::new(ErrorReason::Expired, "too old");
                    format!(
                        "{}\n",
                        serde_json::json!({"type": "ERROR", "error": err, "resourceVersion": "0"})
                    )
                } else if target.contains("watch=true") {
                    let c = with_rv(container("c", now), "21");
                    format!(
                        "{}\n",
                        serde_json::json!({"type": "ADDED", "object": c, "resourceVersion": "21"})
                    )
                } else {
                    let list =
                        List::new(vec![with_rv(container("b", now), "15")], Some("20".into()));
                    serde_json::to_string(&list).unwrap()
                };
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            }
        });
        (url, seen)
    }

    #[tokio::test]
    async fn expired_watch_relists_and_goes_on() {
        let (url, seen) = fake_server().await;
        let client = Client::plain_for_test(&url, Some(Duration::from_secs(5)));
        let now = chrono::Utc::now();
        let list = List::new(vec![with_rv(container("a", now), "5")], Some("10".into()));
        let (tx, mut rx) = mpsc::channel(16);
        spawn(client, Kind::Container, None, &list, tx);
        let mut got = Vec::new();
        for _ in 0..3 {
            let u = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            got.push((u.change, u.object.name().to_string()));
        }
        assert_eq!(
            got,
            [
                (Change::Deleted, "a".into()),
                (Change::Added, "b".into()),
                (Change::Added, "c".into())
            ]
        );
        let requests = seen.lock().unwrap().clone();
        assert!(
            requests[0].contains("watch=true") && requests[0].contains("resourceVersion=10"),
            "{requests:?}"
        );
        assert!(!requests[1].contains("watch"), "a relist: {requests:?}");
        assert!(
            requests[2].contains("resourceVersion=20"),
            "watches from the list's revision: {requests:?}"
        );
        // After the stream ends, the watch resumes from the last revision it saw, and the
        // replayed object is not reported again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while seen.lock().unwrap().len() < 4 {
            assert!(tokio::time::Instant::now() < deadline, "no resume");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let resumed = seen.lock().unwrap()[3].clone();
        assert!(
            resumed.contains("watch=true") && resumed.contains("resourceVersion=21"),
            "{resumed}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(rx.try_recv().is_err(), "a replay is no update");
    }
}
