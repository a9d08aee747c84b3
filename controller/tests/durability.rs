//! Large applies through the intent log, crashes at every step of it, concurrent replicas,
//! and an etcd restart under the cache.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use tokio_util::sync::CancellationToken;
use topo_controller::Controller;
use topo_controller::commit::{Committer, CrashPoint};
use topo_controller::store::{Store, StoreError};
use topo_schema::api::{ApplyRequest, SourceFile};
use topo_schema::{Kind, keys};

const N: usize = 2000;

fn big_file(n: usize, prefix: &str) -> ApplyRequest {
    let parts: Vec<String> = (0..n)
        .map(|i| {
            node_yaml(
                &format!("{prefix}{i}"),
                &format!("192.168.{}.{}", i / 250, i % 250 + 1),
            )
        })
        .collect();
    ApplyRequest {
        files: vec![SourceFile {
            name: "big.yaml".into(),
            content: docs(&parts),
        }],
        dry_run: false,
    }
}

async fn controller(etcd: &Etcd, shutdown: &CancellationToken) -> Controller {
    init_tracing();
    let mut config = topo_controller::test_config(&etcd.endpoints(), &etcd.pki_dir());
    config.lead = false;
    topo_controller::start_controller(&config, shutdown)
        .await
        .expect("start the controller")
}

fn store_crashing_at(c: &Controller, point: CrashPoint) -> Store {
    let committer = Committer::new(c.client.clone(), c.cache.clone(), 128).with_crash(point);
    Store::new(committer)
}

#[tokio::test]
async fn large_apply_is_atomic_for_readers() {
    let etcd = Etcd::start().await;
    let sd = CancellationToken::new();
    let c = controller(&etcd, &sd).await;
    // Every snapshot the cache publishes shows none or all of the apply.
    let mut rx = c.cache.subscribe();
    let torn = Arc::new(AtomicBool::new(false));
    let seen_all = Arc::new(AtomicBool::new(false));
    let (t, s) = (torn.clone(), seen_all.clone());
    let observer = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let n = rx.borrow_and_update().of_kind(Kind::Node).count();
            if n != 0 && n != N {
                t.store(true, Ordering::SeqCst);
            }
            if n == N {
                s.store(true, Ordering::SeqCst);
                return;
            }
        }
    });
    let resp = c.store.apply(big_file(N, "n")).await.expect("apply");
    assert_eq!(resp.results.len(), N);
    assert!(
        resp.results
            .iter()
            .all(|r| r.result.metadata().resource_version.is_some())
    );
    tokio::time::timeout(Duration::from_secs(30), observer)
        .await
        .expect("observer done")
        .unwrap();
    assert!(seen_all.load(Ordering::SeqCst));
    assert!(!torn.load(Ordering::SeqCst), "a reader saw a partial apply");
    assert_eq!(etcd.count(&keys::objects_prefix(Kind::Node)).await, N);
    assert_eq!(
        etcd.count(&keys::intents_prefix()).await,
        0,
        "the intent log is cleaned up"
    );
    let (_, pending) = topo_controller::commit::read_fence(&c.client)
        .await
        .unwrap();
    assert_eq!(pending, None);

    // Re-applying is a no-op; changing every object goes through the log again.
    let again = c.store.apply(big_file(N, "n")).await.expect("re-apply");
    assert!(
        again
            .results
            .iter()
            .all(|r| r.action == topo_schema::api::ApplyAction::Unchanged)
    );
    sd.cancel();
}

#[tokio::test]
async fn crash_before_the_intent_commits_changes_nothing() {
    let etcd = Etcd::start().await;
    let sd = CancellationToken::new();
    let c = controller(&etcd, &sd).await;
    let err = store_crashing_at(&c, CrashPoint::AfterChunks)
        .apply(big_file(N, "n"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Commit(topo_controller::commit::CommitError::InjectedCrash(_))
        ),
        "{err}"
    );
    assert!(
        etcd.count(&keys::intents_prefix()).await > 0,
        "chunks were written"
    );
    assert_eq!(etcd.count(&keys::all_objects_prefix()).await, 0);
    sd.cancel();

    // A new controller discards the undecided intent.
    let sd2 = CancellationToken::new();
    let c2 = controller(&etcd, &sd2).await;
    assert_eq!(etcd.count(&keys::intents_prefix()).await, 0);
    assert_eq!(etcd.count(&keys::all_objects_prefix()).await, 0);
    assert_eq!(c2.cache.current().objects.len(), 0);
    // And it still works.
    c2.store
        .apply(big_file(10, "m"))
        .await
        .expect("apply after recovery");
    assert_eq!(etcd.count(&keys::all_objects_prefix()).await, 10);
    sd2.cancel();
}

#[tokio::test]
async fn crash_after_the_intent_commits_is_rolled_forward_on_restart() {
    for point in [CrashPoint::AfterDecide, CrashPoint::AfterBatches(3)] {
        let etcd = Etcd::start().await;
        let sd = CancellationToken::new();
        let c = controller(&etcd, &sd).await;
        let before = c.cache.current();
        let err = store_crashing_at(&c, point)
            .apply(big_file(N, "n"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Commit(topo_controller::commit::CommitError::InjectedCrash(_))
            ),
            "{err}"
        );
        let raw = etcd.count(&keys::objects_prefix(Kind::Node)).await;
        match point {
            CrashPoint::AfterBatches(n) => assert_eq!(raw, n * 127, "{point:?}"),
            _ => assert_eq!(raw, 0, "{point:?}"),
        }
        // Readers of the running controller still see the objects before the apply. (Not
        // the same revision: the decided intent moved the fence key, which the cache follows
        // too, whenever its watch delivers that — a race the test must not depend on.)
        assert_eq!(c.cache.current().objects.len(), before.objects.len());
        assert_eq!(c.cache.current().objects.len(), 0);
        // "Kill" the process: stop it before its janitor would roll forward.
        sd.cancel();
        tokio::time::sleep(Duration::from_millis(200)).await;

        // A restart rolls the committed intent forward: everything, exactly once.
        let sd2 = CancellationToken::new();
        let c2 = controller(&etcd, &sd2).await;
        assert_eq!(
            etcd.count(&keys::objects_prefix(Kind::Node)).await,
            N,
            "{point:?}"
        );
        assert_eq!(etcd.count(&keys::intents_prefix()).await, 0);
        // Exactly once: the restart went on from the batches the crashed writer had applied
        // (the fence counts them), so no object was written twice.
        let twice: Vec<_> = etcd
            .versions(&keys::objects_prefix(Kind::Node))
            .await
            .into_iter()
            .filter(|(_, v)| *v != 1)
            .collect();
        assert!(
            twice.is_empty(),
            "{point:?}: written more than once: {twice:?}"
        );
        assert_eq!(c2.cache.current().of_kind(Kind::Node).count(), N);
        let (_, pending) = topo_controller::commit::read_fence(&c2.client)
            .await
            .unwrap();
        assert_eq!(pending, None);
        // Writes go on normally afterwards.
        c2.store
            .apply(big_file(5, "x"))
            .await
            .expect("apply after roll-forward");
        sd2.cancel();
    }
}

#[tokio::test]
async fn a_stalled_intent_is_rolled_forward_by_a_live_replica() {
    let etcd = Etcd::start().await;
    let sd = CancellationToken::new();
    let c = controller(&etcd, &sd).await;
    store_crashing_at(&c, CrashPoint::AfterBatches(1))
        .apply(big_file(N, "n"))
        .await
        .unwrap_err();
    // The janitor notices the intent stands still and finishes it.
    let snap = tokio::time::timeout(Duration::from_secs(30), async {
        let mut rx = c.cache.subscribe();
        loop {
            if rx.borrow_and_update().of_kind(Kind::Node).count() == N {
                return;
            }
            rx.changed().await.unwrap();
        }
    })
    .await;
    assert!(snap.is_ok(), "the janitor did not roll the intent forward");
    // A writer arriving meanwhile would have rolled it forward too; its own write still lands.
    c.store.apply(big_file(3, "y")).await.expect("apply");
    assert_eq!(etcd.count(&keys::objects_prefix(Kind::Node)).await, N + 3);
    sd.cancel();
}

#[tokio::test]
async fn concurrent_replicas_serialize_on_the_fence() {
    let etcd = Etcd::start().await;
    let sd = CancellationToken::new();
    let a = controller(&etcd, &sd).await;
    let b = controller(&etcd, &sd).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = if i % 2 == 0 {
            a.store.clone()
        } else {
            b.store.clone()
        };
        tasks.push(tokio::spawn(async move {
            store.apply(big_file(3, &format!("r{i}-"))).await
        }));
    }
    // And one large apply in the middle of them.
    let big = a.store.clone();
    tasks.push(tokio::spawn(async move {
        big.apply(big_file(300, "big")).await
    }));
    for t in tasks {
        t.await.unwrap().expect("every concurrent apply lands");
    }
    assert_eq!(
        etcd.count(&keys::objects_prefix(Kind::Node)).await,
        60 + 300
    );
    // Both caches converge.
    let rev = etcd
        .client()
        .await
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    assert_eq!(a.cache.wait_for_revision(rev).await.objects.len(), 360);
    assert_eq!(b.cache.wait_for_revision(rev).await.objects.len(), 360);
    sd.cancel();
}

#[tokio::test]
async fn cache_survives_an_etcd_restart() {
    let mut etcd = Etcd::start().await;
    let sd = CancellationToken::new();
    let c = controller(&etcd, &sd).await;
    c.store.apply(big_file(3, "a")).await.unwrap();
    etcd.restart().await;
    // The watch is re-established from the last revision; new writes show up.
    let mut cl = etcd.client().await;
    let obj = serde_json::json!({"apiVersion": "topo.dev/v1alpha1", "kind": "Node", "metadata": {"name": "late"}, "spec": {"address": "192.168.9.9"}});
    let rev = cl
        .put(keys::object(Kind::Node, "late"), obj.to_string(), None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let snap = tokio::time::timeout(Duration::from_secs(30), c.cache.wait_for_revision(rev))
        .await
        .expect("cache caught up");
    assert!(
        snap.get(&topo_schema::ObjectRef::new(Kind::Node, "late"))
            .is_some()
    );
    // Writes through the store work again too.
    tokio::time::timeout(Duration::from_secs(30), c.store.apply(big_file(2, "b")))
        .await
        .expect("in time")
        .expect("apply");
    assert_eq!(c.cache.current().objects.len(), 6);
    sd.cancel();
}

/// Reads watch lines from an API watch stream.
async fn next_line(
    stream: &mut topo_controller::watch::LineStream,
    within: Duration,
) -> Option<serde_json::Value> {
    use futures::StreamExt;
    match tokio::time::timeout(within, stream.next()).await {
        Ok(Some(Ok(b))) => Some(serde_json::from_slice(&b).expect("a JSON line")),
        _ => None,
    }
}

#[tokio::test]
async fn api_watchers_see_an_intent_whole_or_not_at_all() {
    let etcd = Etcd::start().await;
    let sd = CancellationToken::new();
    let c = controller(&etcd, &sd).await;
    let from = c.cache.current().revision;
    let w = topo_controller::watch::ObjectWatch {
        kind: Some(Kind::Node),
        selector: Default::default(),
        resource_version: Some(from),
    };
    let mut stream = topo_controller::watch::watch_objects(
        c.client.clone(),
        c.cache.clone(),
        w.clone(),
        sd.clone(),
    );
    store_crashing_at(&c, CrashPoint::AfterBatches(3))
        .apply(big_file(N, "n"))
        .await
        .unwrap_err();
    // 381 objects are in etcd, but the intent is pending: the watcher holds them back.
    assert_eq!(etcd.count(&keys::objects_prefix(Kind::Node)).await, 3 * 127);
    let early = next_line(&mut stream, Duration::from_secs(1)).await;
    assert!(
        early.is_none() || early.as_ref().is_some_and(|e| e["type"] == "BOOKMARK"),
        "{early:?}"
    );
    // A watcher that starts in the middle of the intent holds back too.
    let mid = etcd
        .client()
        .await
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let w2 = topo_controller::watch::ObjectWatch {
        resource_version: Some(mid - 1),
        ..w
    };
    let mut stream2 =
        topo_controller::watch::watch_objects(c.client.clone(), c.cache.clone(), w2, sd.clone());
    assert!(
        next_line(&mut stream2, Duration::from_millis(500))
            .await
            .is_none()
    );

    topo_controller::commit::recover_intents(&c.client, 128)
        .await
        .expect("roll forward");
    let mut added = std::collections::BTreeSet::new();
    while added.len() < N {
        let ev = next_line(&mut stream, Duration::from_secs(20))
            .await
            .expect("events after the roll-forward");
        if ev["type"] == "ADDED" {
            added.insert(
                ev["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
    }
    assert_eq!(added.len(), N);
    let ev = next_line(&mut stream2, Duration::from_secs(20))
        .await
        .expect("the mid-intent watcher resumes");
    assert_eq!(ev["type"], "ADDED");
    sd.cancel();
}

#[tokio::test]
async fn cache_relists_when_its_revision_was_compacted() {
    let etcd = Etcd::start().await;
    let proxy = Proxy::start(&etcd.endpoint()).await;
    let sd = CancellationToken::new();
    init_tracing();
    let mut config =
        topo_controller::test_config(std::slice::from_ref(&proxy.endpoint), &etcd.pki_dir());
    config.lead = false;
    let c = topo_controller::start_controller(&config, &sd)
        .await
        .expect("start the controller");
    c.store.apply(big_file(3, "a")).await.unwrap();
    assert_eq!(c.cache.relist_count(), 0);

    // The cache loses etcd; meanwhile etcd moves on and compacts past what the cache saw.
    proxy.cut();
    let mut cl = etcd.client().await;
    cl.delete(keys::object(Kind::Node, "a0"), None)
        .await
        .unwrap();
    let obj = serde_json::json!({"apiVersion": "topo.dev/v1alpha1", "kind": "Node",
        "metadata": {"name": "late"}, "spec": {"address": "192.168.9.9"}});
    let rev = cl
        .put(keys::object(Kind::Node, "late"), obj.to_string(), None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    cl.compact(rev, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        c.cache.current().of_kind(Kind::Node).count(),
        3,
        "the cache cannot have seen anything yet"
    );
    proxy.restore();

    let snap = tokio::time::timeout(Duration::from_secs(30), c.cache.wait_for_revision(rev))
        .await
        .expect("cache caught up");
    let names: Vec<String> = snap
        .of_kind(Kind::Node)
        .map(|o| o.resource.name().to_string())
        .collect();
    assert_eq!(names, vec!["a1", "a2", "late"]);
    assert_eq!(
        c.cache.relist_count(),
        1,
        "the cache must have listed again"
    );
    sd.cancel();
}
