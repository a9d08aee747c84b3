//! Issue 12, the web page: the controller's `/ui` opened in a real headless Chromium in the
//! lab, trusting the controller by its pinned key. Without credentials and with a wrong
//! token the page says 401 in the API's words; with the lab's token it draws the applied
//! nodes, network, containers, link and tunnel with their Ready status (a container whose
//! image cannot be pulled: not Ready, with the API's reason), and follows the watch: a
//! container applied or deleted afterwards appears or disappears without a reload; `?l=`
//! narrows containers and links to a label selector, and a bad one shows the API's 400. A
//! screenshot is kept at `target/ui/screenshot.png`.

use std::collections::BTreeMap;

use serde::Deserialize;
use topo_e2e::chromium::{Chromium, spki_pin};
use topo_e2e::https::controller_url;
use topo_e2e::manifest::{container_of, docs, link, network, on, web};
use topo_e2e::{Lab, Scenario, converge, poll, run_scenarios, secs};

const NET: &str = "e2e-ui";
/// A container whose image cannot be pulled (nothing listens on port 1): never Ready.
const BAD: &str = "ui-bad";

#[test]
fn ui() {
    let lab = Lab::up("ui", 2);
    run_scenarios(&lab, &[("live-page", live_page)]);
}

/// What the page shows, read from its DOM.
#[derive(Debug, Deserialize)]
struct Page {
    /// `body[data-state]`: connecting, live, refused.
    state: String,
    /// The indicator: "live" while every kind's watch is connected.
    live: String,
    /// The alert's text when shown.
    error: String,
    login_shown: bool,
    href: String,
    /// `kind/name` -> "READY REASON" of every box in the picture.
    boxes: BTreeMap<String, String>,
    /// `kind/name` of every row of the objects table.
    rows: Vec<String>,
}

const READ_PAGE: &str = r#"JSON.stringify({
  state: document.body.dataset.state || '',
  live: document.getElementById('live').textContent,
  error: document.getElementById('error').hidden ? '' : document.getElementById('error').textContent,
  login_shown: !document.getElementById('login').hidden,
  href: location.href,
  boxes: Object.fromEntries([...document.querySelectorAll('#picture g[data-ref]')]
    .map(g => [g.dataset.ref, g.dataset.ready + ' ' + g.dataset.reason])),
  rows: [...document.querySelectorAll('#objects tbody tr[data-ref]')].map(r => r.dataset.ref),
})"#;

#[track_caller]
fn read(b: &mut Chromium) -> Result<Page, String> {
    let v = b.eval(READ_PAGE).map_err(|e| e.to_string())?;
    let text = v.as_str().ok_or_else(|| format!("not a string: {v}"))?;
    serde_json::from_str(text).map_err(|e| format!("{e}: {text}"))
}

/// Polls the page until `check` accepts what it shows.
#[track_caller]
fn wait_page(b: &mut Chromium, what: &str, check: impl Fn(&Page) -> bool) -> Page {
    poll(what, secs(90), || {
        let p = read(b)?;
        if check(&p) {
            Ok(p)
        } else {
            Err(format!("{p:?}"))
        }
    })
    .0
}

/// Types `token` into the page's form and submits it, as a user would.
fn sign_in(b: &mut Chromium, token: &str) {
    let js = format!(
        "document.getElementById('token').value = {}; \
         document.getElementById('login').requestSubmit(); true",
        serde_json::Value::from(token)
    );
    b.eval(&js).unwrap_or_else(|e| panic!("signing in: {e}"));
}

/// The bearer token of the lab's token file (`topo-pki init`'s ci-viewer, role view).
fn lab_token(sc: &Scenario) -> String {
    let path = sc.pki_dir().join("tokens.csv");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()));
    text.lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .and_then(|l| l.split(',').next())
        .unwrap_or_else(|| panic!("no token in {}", path.display()))
        .to_string()
}

fn draws_a_ready_tunnel(p: &Page) -> bool {
    p.boxes
        .iter()
        .any(|(k, s)| k.starts_with("tunnel/") && s.starts_with("True"))
}

fn shows_ready(p: &Page, refs: &[&str]) -> bool {
    refs.iter()
        .all(|r| p.boxes.get(*r).is_some_and(|s| s.starts_with("True")))
}

fn live_page(sc: &Scenario) {
    sc.apply(
        &docs(&[
            network(NET, "10.64.0.0/16"),
            web("ui-a", "node1", &[on(NET)]),
            web("ui-b", "node2", &[on(NET)]),
            link("ui-b-to-a", "ui-b", "ui-a", 80, "127.0.0.1:8080"),
        ]),
        converge(),
    );
    sc.apply_nowait(&container_of(
        BAD,
        "node2",
        "127.0.0.1:1/topo-e2e/none:1",
        &["true".to_string()],
        &[on(NET)],
    ));
    let pin = spki_pin(&sc.pki_dir().join("controller.crt")).unwrap_or_else(|e| panic!("{e}"));
    let mut b = Chromium::launch(sc, &pin).unwrap_or_else(|e| panic!("{e}"));
    let url = controller_url("/ui");
    b.navigate(&url)
        .unwrap_or_else(|e| panic!("{e}\nchromium: {}", b.log()));

    let p = wait_page(&mut b, "the page to ask for credentials", |p| {
        p.state == "refused"
    });
    assert!(p.login_shown, "no token form: {p:?}");
    assert!(
        p.error.starts_with("401 Unauthorized: no credentials"),
        "without credentials the page must say 401 in the API's words: {p:?}"
    );
    assert!(
        p.boxes.is_empty() && p.rows.is_empty(),
        "data without credentials: {p:?}"
    );
    sc.step("without credentials: 401 and the token form, no data");

    sign_in(&mut b, "not-the-token");
    let p = wait_page(&mut b, "the wrong token to be refused", |p| {
        p.error.contains("invalid bearer token")
    });
    assert!(
        p.state == "refused" && p.login_shown && p.error.starts_with("401 Unauthorized:"),
        "{p:?}"
    );
    sc.step("a wrong token: a clear 401 message");

    sign_in(&mut b, &lab_token(sc));
    let objects = [
        "node/node1",
        "node/node2",
        "network/e2e-ui",
        "container/ui-a",
        "container/ui-b",
        "link/ui-b-to-a",
    ];
    // The tunnel between the nodes is an object of its own, made Ready by the agents after
    // the containers may already be: the page is read until it is drawn too.
    let p = wait_page(&mut b, "the applied objects and a tunnel, Ready", |p| {
        p.state == "live" && shows_ready(p, &objects) && draws_a_ready_tunnel(p)
    });
    assert!(
        objects.iter().all(|o| p.rows.iter().any(|r| r == o)),
        "the table lacks objects: {p:?}"
    );
    assert_eq!(p.href, url, "the token must never reach the URL");
    assert!(p.error.is_empty() && !p.login_shown, "{p:?}");
    sc.step("with the token: nodes, network, containers, link and tunnel drawn, Ready");
    shows_the_apis_reason(sc, &mut b);

    follows_changes(sc, &mut b);
}

/// The not-Ready container is drawn not Ready, with the reason the API gives.
fn shows_the_apis_reason(sc: &Scenario, b: &mut Chromium) {
    let bad = format!("container/{BAD}");
    let (shown, _) = poll(
        "the page to show the API's reason for the bad container",
        secs(90),
        || {
            let status = sc.get_json("container", BAD)?["status"].clone();
            let ready = status["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"));
            let want = match ready {
                Some(c) if c["status"] == "False" => {
                    format!("False {}", c["reason"].as_str().unwrap_or(""))
                }
                other => return Err(format!("the API says {other:?}")),
            };
            let page = read(b)?;
            match page.boxes.get(&bad) {
                Some(s) if *s == want => Ok(want),
                s => Err(format!("the API says {want:?}, the page {s:?}")),
            }
        },
    );
    sc.step(&format!("{bad} drawn as {shown}, as the API says"));
}

fn follows_changes(sc: &Scenario, b: &mut Chromium) {
    let front = web("ui-c", "node1", &[on(NET)]).replace(
        r#"{"topo-e2e":"true"}"#,
        r#"{"topo-e2e":"true","tier":"front"}"#,
    );
    assert!(front.contains("tier"), "the label was not added: {front}");
    sc.apply(&front, converge());
    wait_page(
        b,
        "container/ui-c to appear, Ready, without a reload",
        |p| shows_ready(p, &["container/ui-c"]),
    );
    sc.step("an applied container appears without a reload");
    screenshot(sc, b);

    let out = sc.topoctl(&["delete", "link", "ui-b-to-a"]);
    assert!(out.success(), "{}", out.describe_failure());
    let out = sc.topoctl(&["delete", "container", "ui-a"]);
    assert!(out.success(), "{}", out.describe_failure());
    sc.forget(&["link/ui-b-to-a", "container/ui-a"]);
    let p = wait_page(b, "container/ui-a and its link to disappear", |p| {
        !p.boxes.contains_key("container/ui-a") && !p.boxes.contains_key("link/ui-b-to-a")
    });
    assert!(
        shows_ready(&p, &["container/ui-b", "container/ui-c", "node/node1"]),
        "{p:?}"
    );
    assert_eq!(
        p.state, "live",
        "the page must still be following the watch: {p:?}"
    );
    sc.step("a deleted container disappears without a reload");
    survives_a_controller_restart(sc, b);
    narrowed_by_a_selector(sc, b);
}

/// The controller restarts under the page: its streams break, it resumes from the last
/// resourceVersion it saw, and a change made after the restart still shows without a reload.
fn survives_a_controller_restart(sc: &Scenario, b: &mut Chromium) {
    sc.lab_sh(&["restart-controller"]).ok();
    let out = sc.topoctl(&["delete", "container", BAD]);
    assert!(out.success(), "{}", out.describe_failure());
    sc.forget(&[&format!("container/{BAD}")]);
    let p = wait_page(b, "the page to follow again after the restart", |p| {
        p.state == "live" && p.live == "live" && !p.boxes.contains_key(&format!("container/{BAD}"))
    });
    assert!(
        shows_ready(&p, &["container/ui-b", "container/ui-c"]),
        "{p:?}"
    );
    sc.step("after a controller restart the page resumes and shows a deletion");
}

/// `/ui?l=tier=front`: only the labelled container (nodes, networks, tunnels stay); a
/// selector the API refuses is shown as its 400.
fn narrowed_by_a_selector(sc: &Scenario, b: &mut Chromium) {
    b.navigate(&controller_url("/ui?l=tier%3Dfront"))
        .unwrap_or_else(|e| panic!("{e}"));
    let p = wait_page(b, "only container/ui-c under -l tier=front", |p| {
        p.state == "live"
            && shows_ready(p, &["container/ui-c", "node/node1", "node/node2"])
            && !p.boxes.contains_key("container/ui-b")
    });
    assert!(
        p.rows.iter().any(|r| r == "container/ui-c")
            && !p.rows.iter().any(|r| r == "container/ui-b"),
        "the table is not narrowed: {p:?}"
    );
    sc.step("?l=tier=front narrows the containers; the token survived the navigation");

    b.navigate(&controller_url("/ui?l=%3Dfront"))
        .unwrap_or_else(|e| panic!("{e}"));
    let p = wait_page(b, "a bad selector to be refused", |p| p.state == "failed");
    assert!(
        p.error
            .starts_with("400 Bad Request: invalid label selector"),
        "{p:?}"
    );
    sc.step("a bad selector: the API's 400 on the page");
}

/// Keeps a picture of the page at `target/ui/screenshot.png`.
fn screenshot(sc: &Scenario, b: &mut Chromium) {
    let png = b.screenshot().unwrap_or_else(|e| panic!("{e}"));
    let dir = sc.repo().join("target/ui");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let file = dir.join("screenshot.png");
    std::fs::write(&file, &png).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    sc.step(&format!("screenshot kept at {}", file.display()));
}
