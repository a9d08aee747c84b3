//! topoctl's errors on the trust boundary, one line and a hint each: a server certificate
//! of another CA, an expired client or server certificate, a client certificate the server
//! refuses, a wrong token (401), a refused verb (403), a plain-HTTP server.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use tokio::io::AsyncWriteExt;
use topo_pki::issue::{Ca, Subject, Usage, Validity};
use topo_pki::layout;

fn write_config(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

async fn topoctl_with(config: &Path, server: &str, args: &[&str]) -> Out {
    let home = tempfile::tempdir().unwrap();
    let mut all = vec!["--server", server];
    all.extend_from_slice(args);
    let mut cmd = topoctl_command(home.path(), &all);
    cmd.env("TOPO_CONFIG", config);
    run_command(cmd, "").await
}

fn other_pki(dir: &Path) {
    topo_pki::init::init(&topo_pki::init::InitOptions {
        dir: dir.to_path_buf(),
        cluster: "other".into(),
        controller_sans: vec!["127.0.0.1".into()],
        etcd_sans: vec![],
        nodes: vec![],
        server: "https://127.0.0.1:1".into(),
        etcd_endpoints: vec![],
        days: 30,
        force: false,
    })
    .unwrap();
}

fn past() -> Validity {
    let now = time::OffsetDateTime::now_utc();
    Validity {
        not_before: now - time::Duration::days(10),
        not_after: now - time::Duration::days(1),
    }
}

fn one_error_line_and_a_hint(out: &Out) {
    assert_eq!(out.code, 1, "{out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "one line, then a hint: {out:?}");
    assert!(lines[0].starts_with("error: "), "{out:?}");
    assert!(lines[1].starts_with("hint: "), "{out:?}");
}

#[tokio::test]
async fn certificate_trouble_is_named() {
    let lab = Lab::start().await;
    let pki = topo_pki::testing::shared_pki();
    let scratch = tempfile::tempdir().unwrap();
    let other = scratch.path().join("other");
    other_pki(&other);
    let admin = layout::admin(&pki);

    // The configured CA is not the one that signed the server.
    let cfg = write_config(
        scratch.path(),
        "unknown-ca.yaml",
        &format!(
            "certificate-authority: {}\nclient-certificate: {}\nclient-key: {}\n",
            layout::ca(&other).cert.display(),
            admin.cert.display(),
            admin.key.display()
        ),
    );
    let out = topoctl_with(&cfg, lab.url(), &["get", "nodes"]).await;
    one_error_line_and_a_hint(&out);
    assert!(
        out.stderr
            .contains("is not signed by the certificate authority in"),
        "{out:?}"
    );

    // A client certificate of another CA: the server refuses it.
    let foreign = layout::admin(&other);
    let cfg = write_config(
        scratch.path(),
        "foreign.yaml",
        &format!(
            "certificate-authority: {}\nclient-certificate: {}\nclient-key: {}\n",
            layout::ca(&pki).cert.display(),
            foreign.cert.display(),
            foreign.key.display()
        ),
    );
    let out = topoctl_with(&cfg, lab.url(), &["get", "nodes"]).await;
    one_error_line_and_a_hint(&out);
    assert!(
        out.stderr.contains("refused the client certificate"),
        "{out:?}"
    );

    // An expired client certificate: said before anything is sent, with the date.
    let ca = Ca::load(&layout::ca(&pki)).unwrap();
    let (cert, key) = ca
        .issue(
            &Subject::client("admin", Some(topo_pki::ADMINS_GROUP)),
            past(),
        )
        .unwrap();
    std::fs::write(scratch.path().join("old.crt"), cert).unwrap();
    std::fs::write(scratch.path().join("old.key"), key).unwrap();
    let cfg = write_config(
        scratch.path(),
        "expired.yaml",
        &format!(
            "certificate-authority: {}\nclient-certificate: old.crt\nclient-key: old.key\n",
            layout::ca(&pki).cert.display()
        ),
    );
    let out = topoctl_with(&cfg, lab.url(), &["get", "nodes"]).await;
    one_error_line_and_a_hint(&out);
    assert!(out.stderr.contains("old.crt expired on"), "{out:?}");
}

#[tokio::test]
async fn an_expired_server_certificate_is_named_with_its_date() {
    let pki = topo_pki::testing::shared_pki();
    let ca = Ca::load(&layout::ca(&pki)).unwrap();
    let subject = Subject {
        cn: "topo-controller".into(),
        group: None,
        sans: vec!["127.0.0.1".into()],
        usage: Usage::Server,
    };
    let (cert, key) = ca.issue(&subject, past()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s.crt"), cert).unwrap();
    std::fs::write(dir.path().join("s.key"), key).unwrap();
    let tls = topo_pki::tls::server_config(
        &dir.path().join("s.crt"),
        &dir.path().join("s.key"),
        &layout::ca(&pki).cert,
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = acceptor.accept(tcp).await;
        }
    });
    let out = topoctl_with(&config_of("admin"), &url, &["get", "nodes"]).await;
    one_error_line_and_a_hint(&out);
    assert!(
        out.stderr
            .contains(&format!("the server certificate of {url} expired on")),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_plain_http_server_is_named() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let _ = tcp
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
        }
    });
    let out = topoctl_with(&config_of("admin"), &url, &["get", "nodes"]).await;
    one_error_line_and_a_hint(&out);
    assert!(out.stderr.contains("does not speak TLS"), "{out:?}");
}

#[tokio::test]
async fn wrong_tokens_and_refused_verbs_are_401_and_403() {
    let lab = Lab::start().await;
    let pki = topo_pki::testing::shared_pki();
    let scratch = tempfile::tempdir().unwrap();
    let cfg = write_config(
        scratch.path(),
        "token.yaml",
        &format!(
            "certificate-authority: {}\ntoken: 0000000000000000000000000000000000\n",
            layout::ca(&pki).cert.display()
        ),
    );
    let out = topoctl_with(&cfg, lab.url(), &["get", "nodes"]).await;
    one_error_line_and_a_hint(&out);
    assert!(
        out.stderr.contains("error: invalid bearer token"),
        "{out:?}"
    );

    let manifest = lab.write("base.yaml", BASE);
    let out = lab
        .topoctl_as("viewer", &["apply", "-f", &manifest], "")
        .await;
    one_error_line_and_a_hint(&out);
    assert!(
        out.stderr.starts_with(
            "error: user \"viewer\" cannot apply manifests: role view allows get, list, watch"
        ),
        "{out:?}"
    );
    let out = lab.topoctl_as("viewer", &["get", "nodes"], "").await;
    assert_eq!(out.code, 0, "the viewer reads: {out:?}");
    let out = lab.topoctl(&["get", "nodes", "-o", "name"]).await;
    assert_eq!(out.stdout, "", "nothing was applied: {out:?}");
}
