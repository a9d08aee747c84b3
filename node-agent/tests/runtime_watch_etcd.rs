//! The slice watch state machine against a real etcd: list, watch, resume after an etcd
//! restart without relisting, relist after compaction.

mod runtime_etcd;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use etcd_client::{Client, CompactionOptions};
use runtime_etcd::Etcd;
use topo_agent::watch::{
    EtcdSliceSource, EtcdSliceWatch, Listing, SliceSource, SliceStore, SliceValue, SliceWatch,
    SliceWatcher, SourceError, Step, WatchMessage, WatchState, slice_source, watch_backoff,
};
use topo_schema::keys;
use topo_schema::slice::{SliceEntry, SliceEnvelope, SliceKey};

fn key(text: &str) -> SliceKey {
    text.parse().expect("slice key")
}

fn texts(keys: &[SliceKey]) -> Vec<String> {
    keys.iter().map(ToString::to_string).collect()
}

const NODE: &str = "node1";

fn bridge(net: &str) -> Vec<u8> {
    let mut b = serde_json::json!({
        "network": net, "bridge": format!("tb-{net}"), "datapath": "netdev", "mtu": 1458,
        "cidr": "10.2.0.0/16", "block": "10.2.1.0/24", "gateway": "10.2.1.1/16",
        "greKey": 7, "rstp": false, "masquerade": true
    });
    b["type"] = "bridge".into();
    let entry: SliceEntry = serde_json::from_value(b).expect("bridge entry");
    serde_json::to_vec(&SliceEnvelope::new(entry)).unwrap()
}

async fn put(c: &mut Client, entry_key: &str, v: Vec<u8>) -> i64 {
    let r = c
        .put(keys::slice_entry(NODE, entry_key), v, None)
        .await
        .unwrap();
    r.header().unwrap().revision()
}

/// The etcd source with a switch that ends the current watch stream (a disconnect).
struct Cuttable {
    inner: EtcdSliceSource,
    cut: Arc<AtomicBool>,
}

struct CuttableWatch {
    inner: EtcdSliceWatch,
    cut: Arc<AtomicBool>,
}

impl SliceSource for Cuttable {
    type Watch = CuttableWatch;
    async fn list(&mut self) -> Result<Listing, SourceError> {
        self.inner.list().await
    }
    async fn watch(&mut self, start: i64) -> Result<CuttableWatch, SourceError> {
        Ok(CuttableWatch {
            inner: self.inner.watch(start).await?,
            cut: self.cut.clone(),
        })
    }
}

impl SliceWatch for CuttableWatch {
    async fn next(&mut self) -> Result<Option<WatchMessage>, SourceError> {
        if self.cut.swap(false, Ordering::SeqCst) {
            return Ok(None);
        }
        self.inner.next().await
    }
}

async fn step(w: &mut SliceWatcher<impl SliceSource>) -> Step {
    tokio::time::timeout(Duration::from_secs(15), w.step())
        .await
        .expect("watch step timed out")
}

/// Steps until something other than Idle/Retry happens.
async fn next_delivery(w: &mut SliceWatcher<impl SliceSource>) -> Step {
    for _ in 0..100 {
        match step(w).await {
            Step::Idle => {}
            Step::Retry { delay, .. } => tokio::time::sleep(delay).await,
            other => return other,
        }
    }
    panic!("no delivery after 100 steps");
}

#[tokio::test]
async fn lists_watches_resumes_and_relists() {
    let mut etcd = Etcd::start().await;
    let mut c = etcd.client().await;
    put(&mut c, "bridges/a", bridge("a")).await;
    put(&mut c, "bridges/b", bridge("b")).await;
    put(
        &mut c,
        "bridges/future",
        br#"{"version":9,"entry":{"type":"warp"}}"#.to_vec(),
    )
    .await;
    // Another node's slice is not ours.
    c.put(keys::slice_entry("node2", "bridges/z"), bridge("z"), None)
        .await
        .unwrap();

    let cut = Arc::new(AtomicBool::new(false));
    let source = Cuttable {
        inner: slice_source(etcd.agent_client().await, NODE),
        cut: cut.clone(),
    };
    let store = SliceStore::new();
    let mut w = SliceWatcher::with_backoff(
        source,
        store.clone(),
        watch_backoff(Duration::from_millis(50), Duration::from_millis(500)),
    );

    // Listing.
    match step(&mut w).await {
        Step::Synced {
            changed,
            relist: false,
        } => {
            assert_eq!(
                texts(&changed),
                vec!["bridges/a", "bridges/b", "bridges/future"]
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        store.get(&key("bridges/future")),
        Some(SliceValue::Unsupported { version: 9 })
    );
    assert!(store.get(&key("bridges/z")).is_none());
    let WatchState::Watching { revision: listed } = w.state() else {
        panic!("{:?}", w.state())
    };

    // Watching: a put and a delete.
    let rev = put(&mut c, "bridges/c", bridge("c")).await;
    assert_eq!(
        next_delivery(&mut w).await,
        Step::Changed(vec![key("bridges/c")])
    );
    assert_eq!(w.state(), WatchState::Watching { revision: rev });
    assert!(rev > listed);
    c.delete(keys::slice_entry(NODE, "bridges/a"), None)
        .await
        .unwrap();
    assert_eq!(
        next_delivery(&mut w).await,
        Step::Changed(vec![key("bridges/a")])
    );
    assert!(store.get(&key("bridges/a")).is_none());

    // etcd restarts: the watch resumes from its revision, without a relist, and sees what
    // happened while it was away.
    etcd.kill();
    let rewatches = w.stats().rewatches;
    match step(&mut w).await {
        Step::Retry { .. } => {}
        other => panic!("expected a retry after etcd died, got {other:?}"),
    }
    etcd.restart().await;
    let mut c = etcd.client().await;
    put(&mut c, "bridges/d", bridge("d")).await;
    assert_eq!(
        next_delivery(&mut w).await,
        Step::Changed(vec![key("bridges/d")])
    );
    assert_eq!(w.stats().lists, 1, "a disconnect must not relist");
    assert!(w.stats().rewatches > rewatches);

    // Compaction while disconnected: the resumed watch finds its revision gone and relists,
    // delivering only the differences.
    cut.store(true, Ordering::SeqCst);
    put(&mut c, "bridges/e", bridge("e")).await;
    match step(&mut w).await {
        Step::Retry { .. } => {}
        other => panic!("expected the cut, got {other:?}"),
    }
    put(&mut c, "bridges/f", bridge("f")).await;
    c.delete(keys::slice_entry(NODE, "bridges/b"), None)
        .await
        .unwrap();
    let rev = put(&mut c, "bridges/c", bridge("c2")).await;
    c.compact(rev, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();

    match next_delivery(&mut w).await {
        Step::Synced {
            changed,
            relist: true,
        } => {
            assert_eq!(
                texts(&changed),
                vec!["bridges/b", "bridges/c", "bridges/e", "bridges/f"]
            );
        }
        other => panic!("expected a relist, got {other:?}"),
    }
    assert_eq!(w.stats().relists, 1);
    assert_eq!(w.state(), WatchState::Watching { revision: rev });
    let mut keys = texts(&store.keys());
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "bridges/c",
            "bridges/d",
            "bridges/e",
            "bridges/f",
            "bridges/future"
        ]
    );

    // And it keeps watching after the relist.
    put(&mut c, "bridges/g", bridge("g")).await;
    assert_eq!(
        next_delivery(&mut w).await,
        Step::Changed(vec![key("bridges/g")])
    );
}

#[tokio::test]
async fn a_large_slice_lists_in_pages_at_one_revision() {
    let etcd = Etcd::start().await;
    let mut c = etcd.client().await;
    for i in 0..1234 {
        put(
            &mut c,
            &format!("bridges/n{i:04}"),
            bridge(&format!("n{i:04}")),
        )
        .await;
    }
    let mut source = slice_source(etcd.agent_client().await, NODE);
    let listing = source.list().await.unwrap();
    assert_eq!(listing.kvs.len(), 1234);
    assert_eq!(listing.kvs[0].key, "bridges/n0000");
    assert_eq!(listing.kvs[1233].key, "bridges/n1233");
}
