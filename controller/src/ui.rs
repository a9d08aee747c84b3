//! `/ui`: a read-only web page drawing the cluster's topology, live.
//!
//! This module owns only the page's static shell — the HTML, the script and the style sheet,
//! compiled into the binary with `include_str!` — and the headers that keep it safe. The
//! shell carries no data, so it is served without credentials (like `/healthz`); every object
//! the page shows comes from the API's own watch endpoints, fetched by the script with the
//! browser's client certificate or a bearer token the user pastes (kept in sessionStorage,
//! sent as `Authorization: Bearer`, never in a URL), through the same guard as any request.
//!
//! The script is a path of its own (not inline) so the Content-Security-Policy can forbid
//! inline script altogether: nothing but this origin's script runs, fetches go only to this
//! origin, no frame may embed the page, and a form can submit nowhere (so a token can never
//! end up in a URL even if the script failed to load).

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::reply::AppState;

/// The page.
pub const PATH: &str = "/ui";
const SCRIPT_PATH: &str = "/ui/app.js";
const STYLE_PATH: &str = "/ui/style.css";

const HTML: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

/// What the page may load and where it may connect: only this origin, no inline script or
/// style, no plugins, no framing, no form targets.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The paths of the shell, served without credentials; nothing else is.
pub fn is_public(path: &str) -> bool {
    matches!(path, PATH | "/ui/" | SCRIPT_PATH | STYLE_PATH)
}

/// The shell's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            PATH,
            get(|| async { shell(HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/ui/",
            get(|| async { shell(HTML, "text/html; charset=utf-8") }),
        )
        .route(
            SCRIPT_PATH,
            get(|| async { shell(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            STYLE_PATH,
            get(|| async { shell(STYLE, "text/css; charset=utf-8") }),
        )
}

/// One static file with the headers every part of the shell carries.
fn shell(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The shell changes with the binary only; revalidating keeps an upgraded controller's
    // page and script in step.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_shell_is_public() {
        for p in ["/ui", "/ui/", "/ui/app.js", "/ui/style.css"] {
            assert!(is_public(p), "{p}");
        }
        for p in [
            "/ui/x",
            "/ui/app.js/..",
            "/apis/topo.dev/v1alpha1/nodes",
            "/metrics",
        ] {
            assert!(!is_public(p), "{p}");
        }
    }

    #[test]
    fn the_page_loads_its_script_and_style_from_their_own_paths() {
        assert!(HTML.contains(&format!("<script src=\"{SCRIPT_PATH}\"")));
        assert!(HTML.contains(&format!("href=\"{STYLE_PATH}\"")));
        // No inline script or style: the policy forbids them and the page must not need them.
        assert!(!HTML.contains("<script>") && !HTML.contains("style="));
        assert!(!HTML.contains("onclick") && !HTML.contains("onsubmit"));
    }

    #[test]
    fn the_script_builds_the_page_from_data_safely() {
        // Names, reasons and messages are data: DOM calls and textContent only, never HTML
        // strings or code built at run time; the token goes in a header, never a query.
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "token=",
        ] {
            assert!(!SCRIPT.contains(banned), "app.js uses {banned}");
        }
        assert!(SCRIPT.contains("Authorization: 'Bearer ' + t"));
        assert!(SCRIPT.contains("sessionStorage") && !SCRIPT.contains("localStorage"));
    }
}
