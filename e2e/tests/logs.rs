//! Issue 12, `topoctl logs`: a container's log through the controller from its node's
//! agent — tail, since (a duration and a time), follow seeing a new line — and who may read
//! it: the view role through the controller, only the controller at the agent endpoint.

use topo_e2e::https::{agent_url, controller_url, get_as};
use topo_e2e::manifest::{container, docs, network, on};
use topo_e2e::{Lab, Scenario, converge, poll, run_scenarios, secs};

const NET: &str = "e2e-logs";
/// A container that says `first`, then `tick N` every second.
const TICKER: &str = "ticker";

#[test]
fn logs() {
    let lab = Lab::up("logs", 2);
    run_scenarios(&lab, &[("logs", logs_of_a_ticker)]);
}

fn ticker_command() -> Vec<String> {
    [
        "sh",
        "-c",
        "echo first; i=0; while true; do echo \"tick $i\"; i=$((i+1)); sleep 1; done",
    ]
    .map(String::from)
    .to_vec()
}

/// `topoctl logs ARGS...` as the lab's admin: its stdout, or a panic naming the failure.
#[track_caller]
fn topoctl_logs(sc: &Scenario, args: &[&str]) -> String {
    let mut all = vec!["logs"];
    all.extend_from_slice(args);
    sc.topoctl(&all).ok().stdout
}

/// The numbers of the `tick N` lines of `text`, in order.
fn ticks(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("tick ")?.trim().parse().ok())
        .collect()
}

fn logs_of_a_ticker(sc: &Scenario) {
    sc.apply(
        &docs(&[
            network(NET, "10.63.0.0/16"),
            container(TICKER, "node2", &ticker_command(), &[on(NET)]),
        ]),
        converge(),
    );
    poll("the ticker to have ticked 4 times", secs(30), || {
        let text = topoctl_logs(sc, &[TICKER]);
        match ticks(&text).last() {
            Some(n) if *n >= 4 && text.starts_with("first\n") => Ok(()),
            _ => Err(format!("its log: {text:?}")),
        }
    });
    sc.step("topoctl logs prints the whole log, from the first line");

    let tail = topoctl_logs(sc, &[TICKER, "--tail", "2"]);
    let t = ticks(&tail);
    assert_eq!(tail.lines().count(), 2, "--tail 2 printed: {tail:?}");
    assert!(
        t.len() == 2 && t[1] == t[0] + 1,
        "--tail 2 printed: {tail:?}"
    );

    let recent = topoctl_logs(sc, &[TICKER, "--since", "2s"]);
    assert!(
        !recent.contains("first") && !ticks(&recent).is_empty() && ticks(&recent)[0] >= 2,
        "--since 2s printed lines older than 2 s: {recent:?}"
    );
    let all = topoctl_logs(sc, &[TICKER, "--since", "2020-01-01T00:00:00Z"]);
    assert!(all.starts_with("first\n"), "--since 2020: {all:?}");
    sc.step("--tail and --since (a duration, a time) pick the right lines");

    follow_sees_new_lines(sc);
    who_may_read_logs(sc);
}

fn follow_sees_new_lines(sc: &Scenario) {
    let mut cmd = sc.command(sc.topoctl_bin());
    cmd.args(["logs", TICKER, "-f", "--tail", "1"]);
    let follow = sc.spawn(cmd);
    let (seen, _) = poll(
        "logs -f to print a line written after it started",
        secs(20),
        || {
            let out = follow.stdout_so_far();
            let t = ticks(&out);
            match (t.first(), t.last()) {
                (Some(a), Some(b)) if b >= &(a + 2) => Ok(t),
                _ => Err(format!("printed so far: {out:?}")),
            }
        },
    );
    assert!(
        seen.windows(2).all(|w| w[1] == w[0] + 1),
        "logs -f skipped or repeated lines: {seen:?}"
    );
    drop(follow);
    sc.step("logs -f prints new lines as they are written");
}

fn who_may_read_logs(sc: &Scenario) {
    let pki = sc.pki_dir();
    let mut viewer = sc.command(sc.topoctl_bin());
    viewer
        .env("TOPO_CONFIG", pki.join("viewer.yaml"))
        .args(["logs", TICKER, "--tail", "1"]);
    let out = sc.run(viewer, secs(30)).ok();
    assert_eq!(ticks(&out.stdout).len(), 1, "the viewer's logs: {out:?}");

    let path = format!("/apis/topo.dev/v1alpha1/containers/{TICKER}/log?tailLines=1");
    for (who, user) in [("nodes/node1", "node:node1"), ("metrics", "metrics")] {
        let (code, body) = get_as(sc, Some(who), &controller_url(&path));
        assert_eq!(
            code, 403,
            "{who} reading the log through the controller: {body}"
        );
        assert!(
            body.contains(&format!(
                "user \\\"{user}\\\" cannot get the log of container/{TICKER}"
            )),
            "the refusal names user, verb and object: {body}"
        );
    }
    let missing = sc.topoctl(&["logs", "no-such-container"]);
    assert!(
        !missing.success() && missing.stderr.contains("not found"),
        "logs of a missing container: {}",
        missing.describe_failure()
    );

    let direct = agent_url(2, &format!("/containers/{TICKER}/logs?tailLines=1"));
    for who in ["nodes/node1", "nodes/node2", "admin", "viewer"] {
        let (code, body) = get_as(sc, Some(who), &direct);
        assert_eq!(code, 403, "{who} at the agent endpoint: {body}");
        assert!(body.contains("only the controller"), "{body}");
    }
    let (code, body) = get_as(sc, None, &direct);
    assert_eq!(code, 401, "no certificate at the agent endpoint: {body}");
    let (code, body) = get_as(sc, Some("controller-etcd"), &direct);
    assert_eq!(
        code, 200,
        "the controller's identity at the agent endpoint: {body}"
    );
    assert_eq!(ticks(&body).len(), 1, "{body:?}");
    let (code, body) = get_as(
        sc,
        Some("controller-etcd"),
        &agent_url(1, &format!("/containers/{TICKER}/logs")),
    );
    assert_eq!(
        code, 404,
        "node1's agent asked for node2's container: {body}"
    );
    sc.step("view reads logs; node and metrics identities do not; agents serve only the controller, and only their own containers");
}
