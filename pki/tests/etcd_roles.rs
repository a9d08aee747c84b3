//! etcd itself enforces least privilege: with the real etcd (TLS, client certificates, auth
//! on), node1's identity reads only node1's slice and writes only node1's reports,
//! heartbeat, registration and events; node2's keys and the objects are refused.

use etcd_client::{Client, GetOptions, PutOptions, WatchOptions};
use topo_pki::testing::{SecureEtcd, Who};
use topo_schema::Kind;
use topo_schema::keys;

fn denied(r: Result<impl std::fmt::Debug, etcd_client::Error>, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected permission denied, got {v:?}"),
        Err(e) => assert!(
            e.to_string().contains("permission denied"),
            "{what}: expected permission denied, got {e}"
        ),
    }
}

fn allowed<T>(r: Result<T, etcd_client::Error>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: expected it to be allowed, got {e}"))
}

async fn setup() -> (SecureEtcd, Client, Client) {
    let etcd = SecureEtcd::start(&["node1", "node2"]).await;
    let mut root = etcd.client().await;
    for n in ["node1", "node2"] {
        root.put(keys::slice_entry(n, "node"), "{}", None)
            .await
            .unwrap();
        root.put(keys::report(n, Kind::Container, "c"), "{}", None)
            .await
            .unwrap();
    }
    root.put(keys::object(Kind::Node, "node1"), "{}", None)
        .await
        .unwrap();
    let node1 = etcd.client_as(&Who::Node("node1".into())).await;
    (etcd, root, node1)
}

#[tokio::test]
async fn node_reads_only_its_own_slice() {
    let (_etcd, _root, mut n1) = setup().await;
    let own = allowed(
        n1.get(
            keys::slice_prefix("node1"),
            Some(GetOptions::new().with_prefix()),
        )
        .await,
        "node1 lists its slice",
    );
    assert_eq!(own.kvs().len(), 1);
    denied(
        n1.get(
            keys::slice_prefix("node2"),
            Some(GetOptions::new().with_prefix()),
        )
        .await,
        "node1 lists node2's slice",
    );
    denied(
        n1.get(keys::slices_prefix(), Some(GetOptions::new().with_prefix()))
            .await,
        "node1 lists every slice",
    );
    denied(
        n1.put(keys::slice_entry("node1", "node"), "x", None).await,
        "node1 writes its own slice",
    );
    denied(
        n1.get(keys::object(Kind::Node, "node1"), None).await,
        "node1 reads a Node object",
    );
    denied(
        n1.put(keys::object(Kind::Node, "node3"), "{}", None).await,
        "node1 writes a Node object",
    );
    // A watch of another node's slice is cancelled by etcd.
    let mut stream = allowed(
        n1.watch(
            keys::slice_prefix("node2"),
            Some(WatchOptions::new().with_prefix()),
        )
        .await,
        "node1 opens a watch",
    );
    let first = stream.message().await;
    match first {
        Ok(Some(resp)) => assert!(
            resp.canceled(),
            "a watch of node2's slice must be cancelled"
        ),
        Ok(None) => {}
        Err(e) => assert!(e.to_string().contains("permission denied"), "{e}"),
    }
}

#[tokio::test]
async fn node_writes_only_its_own_reports_heartbeat_registration_and_events() {
    let (_etcd, _root, mut n1) = setup().await;
    allowed(
        n1.put(keys::report("node1", Kind::Container, "c"), "{}", None)
            .await,
        "node1 writes its report",
    );
    allowed(
        n1.get(
            keys::node_reports_prefix("node1"),
            Some(GetOptions::new().with_prefix()),
        )
        .await,
        "node1 lists its reports",
    );
    allowed(
        n1.delete(keys::report("node1", Kind::Container, "c"), None)
            .await,
        "node1 deletes its report",
    );
    denied(
        n1.put(keys::report("node2", Kind::Container, "c"), "{}", None)
            .await,
        "node1 writes node2's report",
    );
    denied(
        n1.get(
            keys::node_reports_prefix("node2"),
            Some(GetOptions::new().with_prefix()),
        )
        .await,
        "node1 reads node2's reports",
    );
    // The heartbeat: a lease, the key attached to it, kept alive and revoked.
    let lease = allowed(n1.lease_grant(10, None).await, "node1 grants a lease").id();
    allowed(
        n1.put(
            keys::heartbeat("node1"),
            "{}",
            Some(PutOptions::new().with_lease(lease)),
        )
        .await,
        "node1 puts its heartbeat with a lease",
    );
    denied(
        n1.put(
            keys::heartbeat("node2"),
            "{}",
            Some(PutOptions::new().with_lease(lease)),
        )
        .await,
        "node1 puts node2's heartbeat",
    );
    allowed(n1.lease_keep_alive(lease).await, "node1 keeps its lease");
    allowed(n1.lease_revoke(lease).await, "node1 revokes its lease");
    allowed(
        n1.put(keys::registration("node1"), "{}", None).await,
        "node1 registers",
    );
    denied(
        n1.put(keys::registration("node2"), "{}", None).await,
        "node1 registers node2",
    );
    let ev = |n: &str| {
        format!(
            "{}x",
            keys::node_object_events_prefix(n, Kind::Container, "c")
        )
    };
    allowed(
        n1.put(ev("node1"), "{}", None).await,
        "node1 records an event",
    );
    denied(
        n1.put(ev("node2"), "{}", None).await,
        "node1 records an event as node2",
    );
    denied(
        n1.put(
            format!("{}x", keys::object_events_prefix(Kind::Container, "c")),
            "{}",
            None,
        )
        .await,
        "node1 records an event as the controller",
    );
}

#[tokio::test]
async fn controller_owns_the_topo_prefix_only() {
    let etcd = SecureEtcd::start(&["node1"]).await;
    let mut c = etcd.client_as(&Who::Controller).await;
    allowed(
        c.put(keys::object(Kind::Node, "n"), "{}", None).await,
        "controller writes an object",
    );
    allowed(
        c.get(keys::ROOT, Some(GetOptions::new().with_prefix()))
            .await,
        "controller reads everything under /topo/v1/",
    );
    denied(
        c.put("/elsewhere", "x", None).await,
        "controller writes outside /topo/v1/",
    );
    denied(c.user_list().await, "controller lists etcd users");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let etcd = SecureEtcd::start(&[]).await;
    let other = tempfile::tempdir().unwrap();
    let o = topo_pki::init::InitOptions {
        dir: other.path().to_path_buf(),
        cluster: "other".into(),
        controller_sans: vec!["127.0.0.1".into()],
        etcd_sans: vec![],
        nodes: vec![],
        server: "https://127.0.0.1:1".into(),
        etcd_endpoints: vec![],
        days: 30,
        force: false,
    };
    topo_pki::init::init(&o).unwrap();
    // Trusts the real etcd's CA but presents a root certificate of another CA.
    let tls = topo_pki::etcd::EtcdTls::new(
        topo_pki::layout::ca(&etcd.pki_dir()).cert,
        topo_pki::layout::etcd_root(other.path()).cert,
        topo_pki::layout::etcd_root(other.path()).key,
    );
    let mut c = topo_pki::etcd::connect(&etcd.endpoints(), &tls)
        .await
        .unwrap();
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        c.get("/topo/v1/x", None),
    )
    .await
    .expect("etcd answers or refuses in time");
    assert!(r.is_err(), "a foreign root certificate must not read etcd");
}
