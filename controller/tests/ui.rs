//! The `/ui` page's shell against a real controller: served without credentials with its
//! security headers (a Content-Security-Policy without inline script, nosniff), its script
//! and style sheet on their own paths, and nothing beside it public — the data the page
//! draws still needs credentials, and a token is refused with the API's 401 message.

mod common;

use common::*;
use reqwest::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};

async fn server(etcd: &Etcd) -> topo_controller::TestServer {
    init_tracing();
    let mut config = topo_controller::test_config(&etcd.endpoints(), &etcd.pki_dir());
    config.lead = false;
    topo_controller::serve_for_test_with(config)
        .await
        .expect("start the controller")
}

#[tokio::test]
async fn the_shell_is_public_and_locked_down_and_the_data_is_not() {
    let etcd = Etcd::start().await;
    let s = server(&etcd).await;
    let anon = http_anonymous();
    for (path, mime, needle) in [
        ("/ui", "text/html", "<script src=\"/ui/app.js\"></script>"),
        (
            "/ui/app.js",
            "text/javascript",
            "?watch=true&resourceVersion=",
        ),
        ("/ui/style.css", "text/css", "#picture"),
    ] {
        let resp = anon.get(format!("{}{path}", s.url)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let h = resp.headers().clone();
        let header = |n| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
        assert!(header(CONTENT_TYPE).starts_with(mime), "{path}: {h:?}");
        assert_eq!(header(X_CONTENT_TYPE_OPTIONS), "nosniff", "{path}");
        let csp = header(CONTENT_SECURITY_POLICY);
        assert!(
            csp.contains("script-src 'self'")
                && csp.contains("default-src 'none'")
                && !csp.contains("unsafe-inline"),
            "{path}: {csp}"
        );
        let body = resp.text().await.unwrap();
        assert!(body.contains(needle), "{path} lacks {needle}");
    }

    // Beside the shell, nothing is public: other /ui paths and the data need credentials.
    for path in ["/ui/other.js".to_string(), format!("{API}/containers")] {
        let resp = anon.get(format!("{}{path}", s.url)).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{path}");
    }
    let resp = anon
        .get(format!("{}{API}/nodes?watch=true", s.url))
        .bearer_auth("pasted-the-wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body = resp.text().await.unwrap();
    assert!(body.contains("invalid bearer token"), "{body}");
}
