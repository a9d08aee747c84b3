//! `topo-pki init` and `node`: every identity with the right subject and usage, keys 0600,
//! re-runs keep what exists, `--force` replaces, `check` finds an expired certificate.

use std::os::unix::fs::PermissionsExt;

use topo_pki::check::{check_dir, info_file};
use topo_pki::init::{InitOptions, init};
use topo_pki::issue::{Ca, Outcome, Subject, Validity, ensure_node};
use topo_pki::layout;

fn options(dir: &std::path::Path) -> InitOptions {
    InitOptions {
        dir: dir.to_path_buf(),
        cluster: "t".into(),
        controller_sans: vec!["192.168.100.254".into(), "ctl.example".into()],
        etcd_sans: vec!["192.168.100.254".into()],
        nodes: vec![("node1".into(), "192.168.100.1".parse().ok())],
        server: "https://192.168.100.254:8443".into(),
        etcd_endpoints: vec!["https://192.168.100.254:2379".into()],
        days: 30,
        force: false,
    }
}

#[test]
fn init_makes_every_identity_once_with_private_keys() {
    let d = tempfile::tempdir().unwrap();
    let report = init(&options(d.path())).unwrap();
    assert!(
        report.iter().all(|(_, o)| *o == Outcome::Created),
        "{report:?}"
    );
    for pair in [
        layout::ca(d.path()),
        layout::controller(d.path()),
        layout::controller_etcd(d.path()),
        layout::etcd_server(d.path()),
        layout::etcd_root(d.path()),
        layout::admin(d.path()),
        layout::viewer(d.path()),
        layout::metrics(d.path()),
        layout::node(d.path(), "node1"),
    ] {
        let mode = std::fs::metadata(&pair.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", pair.key.display());
    }
    let node = info_file(&layout::node(d.path(), "node1").cert).unwrap();
    assert_eq!(node.common_name.as_deref(), Some("node:node1"));
    assert!(node.subject.contains("O=topo:nodes"), "{}", node.subject);
    let admin = info_file(&layout::admin(d.path()).cert).unwrap();
    assert!(admin.subject.contains("CN=admin") && admin.subject.contains("O=topo:admins"));
    let scraper = info_file(&layout::metrics(d.path()).cert).unwrap();
    assert!(
        scraper.subject.contains("CN=metrics") && scraper.subject.contains("O=topo:metrics"),
        "{}",
        scraper.subject
    );
    let controller = std::fs::read_to_string(layout::controller_config(d.path())).unwrap();
    assert!(controller.contains("role: metrics"), "{controller}");
    let root = info_file(&layout::etcd_root(d.path()).cert).unwrap();
    assert_eq!(root.common_name.as_deref(), Some("root"));
    let config = std::fs::read_to_string(layout::topoctl_config(d.path(), "admin")).unwrap();
    assert!(
        config.contains("server: https://192.168.100.254:8443"),
        "{config}"
    );
    let tokens = std::fs::read_to_string(layout::tokens(d.path())).unwrap();
    assert!(
        tokens
            .lines()
            .any(|l| l.ends_with(",ci-viewer,ci-viewer-1,\"topo:viewers\"")),
        "{tokens}"
    );

    // Idempotent: nothing is replaced; --force replaces.
    let ca_before = std::fs::read(layout::ca(d.path()).cert).unwrap();
    let again = init(&options(d.path())).unwrap();
    assert!(again.iter().all(|(_, o)| *o == Outcome::Kept), "{again:?}");
    assert_eq!(std::fs::read(layout::ca(d.path()).cert).unwrap(), ca_before);
    let forced = init(&InitOptions {
        force: true,
        ..options(d.path())
    })
    .unwrap();
    assert!(forced.iter().all(|(_, o)| *o == Outcome::Created));
    assert_ne!(std::fs::read(layout::ca(d.path()).cert).unwrap(), ca_before);

    // A node added later; a bad name is refused.
    let ca = Ca::load(&layout::ca(d.path())).unwrap();
    let out = ensure_node(
        d.path(),
        &ca,
        "node2",
        "192.168.100.2".parse().ok(),
        30,
        false,
    )
    .unwrap();
    assert_eq!(out, Outcome::Created);
    assert_eq!(layout::node_names(d.path()).unwrap(), ["node1", "node2"]);
    assert!(ensure_node(d.path(), &ca, "Node_2", None, 30, false).is_err());
}

#[test]
fn check_finds_expired_and_expiring_certificates() {
    let d = tempfile::tempdir().unwrap();
    init(&options(d.path())).unwrap();
    let now = chrono::Utc::now();
    assert!(check_dir(d.path(), now, 7).iter().all(|f| !f.bad));
    // 30-day identities expire within a 60-day warning window.
    assert!(
        check_dir(d.path(), now, 60)
            .iter()
            .any(|f| f.bad && f.verdict.starts_with("expires in"))
    );
    let ca = Ca::load(&layout::ca(d.path())).unwrap();
    let t = time::OffsetDateTime::now_utc();
    let (cert, _) = ca
        .issue(
            &Subject::client("old", None),
            Validity {
                not_before: t - time::Duration::days(3),
                not_after: t - time::Duration::days(1),
            },
        )
        .unwrap();
    std::fs::write(d.path().join("old.crt"), cert).unwrap();
    let f = check_dir(d.path(), now, 7)
        .into_iter()
        .find(|f| f.path.ends_with("old.crt"))
        .unwrap();
    assert!(f.bad && f.verdict.starts_with("EXPIRED on"), "{f:?}");
}
