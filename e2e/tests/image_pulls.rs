//! Issue 9, image pulls: a registry that accepts a pull and then stalls never blocks other
//! work — another container on the same node is created and becomes Ready meanwhile — and the
//! stalled pull is abandoned after the agent's progress deadline, leaving the container
//! `ImagePullBackOff` with why, and retried after the backoff; a registry that answers with an
//! error (an unknown manifest) puts its own words in the container's status.
//!
//! The registry is the harness's (`topo_e2e::registry`), in the lab's namespace on 127.0.0.1
//! where the lab's dockerd pulls from it. The agents run with a 5 s progress deadline
//! (`TOPO_IMAGE_PULL_PROGRESS_TIMEOUT`) so the test does not wait the default minute, and a
//! progress event every second (`TOPO_IMAGE_PULL_PROGRESS_EVENTS`, default 15 s).

use std::sync::atomic::Ordering;

use serde_json::Value;
use topo_e2e::lab::show_event;
use topo_e2e::manifest::{container_of, docs, network, on, web};
use topo_e2e::registry::Registry;
use topo_e2e::{Lab, Scenario, converge, poll, run_scenarios, secs};

const NET: &str = "e2e-pulls";
const PROGRESS_TIMEOUT: &str = "5s";

#[test]
fn image_pulls() {
    let lab = Lab::up_with_env(
        "image-pulls",
        1,
        &[
            ("TOPO_IMAGE_PULL_PROGRESS_TIMEOUT", PROGRESS_TIMEOUT),
            ("TOPO_IMAGE_PULL_PROGRESS_EVENTS", "1s"),
        ],
    );
    let registry = Registry::start(&lab);
    REGISTRY.with(|r| *r.borrow_mut() = Some(registry));
    run_scenarios(
        &lab,
        &[
            ("stalled_pull_blocks_nothing", stalled_pull_blocks_nothing),
            ("registry_error_in_status", registry_error_in_status),
        ],
    );
    REGISTRY.with(|r| r.borrow_mut().take());
}

thread_local! {
    /// The test's registry (scenarios are plain functions of the scenario).
    static REGISTRY: std::cell::RefCell<Option<Registry>> = const { std::cell::RefCell::new(None) };
}

fn with_registry<T>(f: impl FnOnce(&Registry) -> T) -> T {
    REGISTRY.with(|r| f(r.borrow().as_ref().expect("the registry is started")))
}

/// The container's Ready condition: (status, reason, message).
fn ready(sc: &Scenario, name: &str) -> Result<(String, String, String), String> {
    let v = sc.get_json("container", name)?;
    let c = v
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .ok_or_else(|| format!("container/{name} has no Ready condition yet"))?;
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Ok((s("status"), s("reason"), s("message")))
}

/// Waits until container `name` is not Ready with `reason` and a message `pred` accepts.
#[track_caller]
fn wait_reason(sc: &Scenario, name: &str, reason: &str, pred: impl Fn(&str) -> bool) -> String {
    poll(
        &format!("container/{name} to say {reason}"),
        secs(90),
        || {
            let (status, r, message) = ready(sc, name)?;
            if status == "False" && r == reason && pred(&message) {
                Ok(message)
            } else {
                Err(format!("Ready {status} {r}: {message}"))
            }
        },
    )
    .0
}

fn sleeper() -> Vec<String> {
    vec!["sleep".into(), "3600".into()]
}

/// A pull that stalls after its first 2 MiB: the web container applied meanwhile on the same
/// node becomes Ready; the stalled one goes ImagePullBackOff naming the stall, its waiters get
/// ImagePullFailed, and the pull is tried again after the backoff.
fn stalled_pull_blocks_nothing(sc: &Scenario) {
    let (image, layers) = with_registry(|r| (r.image("stall/app", "1"), r.layer_requests.clone()));
    let mark = sc.event_mark();
    sc.apply_nowait(&docs(&[
        network(NET, "10.61.0.0/16"),
        container_of("stalled", "node1", &image, &sleeper(), &[on(NET)]),
    ]));
    poll(
        "the engine to start downloading the layer",
        secs(60),
        || {
            if layers.load(Ordering::SeqCst) >= 1 {
                Ok(())
            } else {
                Err("no layer request yet".to_string())
            }
        },
    );
    let message = wait_reason(sc, "stalled", "ImagePulling", |_| true);
    sc.step(&format!("stalled: ImagePulling: {message}"));

    // Other work on the node goes on while the pull hangs.
    sc.apply(&web("w1", "node1", &[on(NET)]), converge());
    let (status, reason, _) = ready(sc, "stalled").unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(status, "True", "the stalled container is Ready ({reason})");
    sc.step("w1 became Ready while the pull of stalled hung");

    let message = wait_reason(sc, "stalled", "ImagePullBackOff", |m| {
        m.contains("sent nothing for 5 s") && m.contains("stalled")
    });
    // The progress the engine reported before the stall (the layer's size is known only
    // from a download progress message).
    assert!(
        message.contains(" of 16.0 MiB"),
        "no download progress in {message:?}"
    );
    sc.step(&format!("stalled: ImagePullBackOff: {message}"));
    let e = sc.wait_event(
        &mark,
        "ImagePullFailed",
        "container/stalled",
        secs(30),
        |e| e.object.to_string() == "container/stalled" && e.message.contains(&image),
    );
    sc.step(&format!("event: {}", show_event(&e)));
    // The pull's progress, every second while it lasted (`TOPO_IMAGE_PULL_PROGRESS_EVENTS`).
    let e = sc.wait_event(&mark, "Pulling", "container/stalled", secs(30), |e| {
        e.object.to_string() == "container/stalled" && e.message.contains(" of 16.0 MiB")
    });
    sc.step(&format!("event: {}", show_event(&e)));

    // kubelet's image backoff starts at 10 s: the pull is tried again.
    let before = layers.load(Ordering::SeqCst);
    poll(
        "the pull to be tried again after the backoff",
        secs(60),
        || {
            let now = layers.load(Ordering::SeqCst);
            if now > before {
                Ok(())
            } else {
                Err(format!("{now} layer requests"))
            }
        },
    );
    sc.step("the pull was tried again after the backoff");
    let (status, ..) = ready(sc, "w1").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, "True", "w1 stopped being Ready");
}

/// An image the registry does not know: its error reaches the container's status.
fn registry_error_in_status(sc: &Scenario) {
    let image = with_registry(|r| r.image("missing/app", "1"));
    let mark = sc.event_mark();
    sc.apply_nowait(&docs(&[
        network(NET, "10.61.0.0/16"),
        container_of("missing", "node1", &image, &sleeper(), &[on(NET)]),
    ]));
    let message = wait_reason(sc, "missing", "ImagePullBackOff", |m| {
        m.contains("manifest unknown")
    });
    sc.step(&format!("missing: ImagePullBackOff: {message}"));
    let e = sc.wait_event(
        &mark,
        "ImagePullFailed",
        "container/missing",
        secs(30),
        |e| e.object.to_string() == "container/missing" && e.message.contains("manifest unknown"),
    );
    sc.step(&format!("event: {}", show_event(&e)));
}
