//! Issue 12, `topoctl exec`: a command run in a container through the controller and the
//! agent of its node — its stdout, its stderr apart, its exit code as topoctl's (also 126
//! and 127 when the engine cannot run it), stdin with `-i` (end of file reaching the
//! command), a terminal with `-t` under a pty (the size sent first, a resize followed),
//! the warning without one — and who may: not the view role, and at the agent endpoint
//! nobody but the controller. Each exec leaves an audit line naming user, container,
//! command and exit code.

use std::path::PathBuf;

use topo_e2e::https::{agent_url, get_as};
use topo_e2e::manifest::{container, docs, network, on};
use topo_e2e::{Lab, Scenario, converge, poll, run_scenarios, secs};

const NET: &str = "e2e-exec";
/// A container that only waits (on node2, so that the controller must reach another host).
const SHELL: &str = "shell";

#[test]
fn exec() {
    let lab = Lab::up("exec", 2);
    run_scenarios(&lab, &[("exec", exec_in_a_container)]);
}

fn exec_in_a_container(sc: &Scenario) {
    sc.apply(
        &docs(&[
            network(NET, "10.64.0.0/16"),
            container(
                SHELL,
                "node2",
                &["sleep".to_string(), "1000000".to_string()],
                &[on(NET)],
            ),
        ]),
        converge(),
    );
    output_and_exit_codes(sc);
    standard_input(sc);
    terminals(sc);
    who_may_exec(sc);
    audited(sc);
    agent_away(sc);
}

/// With the agent of the container's node gone, exec is 503 naming the node; once it is
/// back, exec works again.
fn agent_away(sc: &Scenario) {
    sc.lab_sh(&["kill-agent", "2"]).ok();
    let out = topoctl_exec(sc, &[SHELL, "--", "true"]);
    assert!(
        out.code == Some(1) && out.stderr.contains("node node2"),
        "exec while node2's agent is down: {}",
        out.describe_failure()
    );
    sc.step("exec with the node's agent down fails naming the node");
    sc.lab_sh(&["start-agent", "2"]).ok();
    poll(
        "exec to work again once the agent is back",
        secs(60),
        || {
            let out = topoctl_exec(sc, &[SHELL, "--", "echo", "back"]);
            match out.stdout.as_str() {
                "back\n" => Ok(()),
                _ => Err(out.describe_failure()),
            }
        },
    );
}

/// `topoctl exec ARGS...` as the lab's admin, however it ends.
fn topoctl_exec(sc: &Scenario, args: &[&str]) -> topo_e2e::cmd::Output {
    let mut all = vec!["exec"];
    all.extend_from_slice(args);
    sc.topoctl(&all)
}

fn output_and_exit_codes(sc: &Scenario) {
    let out = topoctl_exec(sc, &[SHELL, "--", "echo", "hello", "from exec"]).ok();
    assert_eq!(
        out.stdout,
        "hello from exec\n",
        "{}",
        out.describe_failure()
    );
    let out = topoctl_exec(
        sc,
        &["container/shell", "-c", SHELL, "--", "cat", "/etc/hostname"],
    )
    .ok();
    assert!(!out.stdout.trim().is_empty(), "{}", out.describe_failure());
    sc.step("exec prints the command's stdout and exits 0");

    let out = topoctl_exec(
        sc,
        &[SHELL, "--", "sh", "-c", "echo out; echo err >&2; exit 3"],
    );
    assert_eq!(out.code, Some(3), "{}", out.describe_failure());
    assert_eq!(out.stdout, "out\n", "{}", out.describe_failure());
    assert!(
        out.stderr.contains("err\n") && !out.stdout.contains("err"),
        "stderr is kept apart: {}",
        out.describe_failure()
    );
    sc.step("the exit code is topoctl's (3); stderr goes to stderr");

    let out = topoctl_exec(sc, &[SHELL, "--", "no-such-command"]);
    assert_eq!(out.code, Some(127), "{}", out.describe_failure());
    let out = topoctl_exec(sc, &[SHELL, "--", "/etc/passwd"]);
    assert_eq!(out.code, Some(126), "{}", out.describe_failure());
    sc.step("a command not found exits 127, one not executable 126");

    let out = topoctl_exec(sc, &["no-such-container", "--", "true"]);
    assert!(
        out.code == Some(1) && out.stderr.contains("not found"),
        "{}",
        out.describe_failure()
    );
}

/// `sh -c SCRIPT topoctl`: SCRIPT sees topoctl's path as `$0`.
fn shell_with_topoctl(sc: &Scenario, script: &str) -> topo_e2e::cmd::Output {
    let mut c = sc.command("sh");
    c.args(["-c", script]).arg(sc.topoctl_bin());
    sc.run(c, secs(120))
}

fn standard_input(sc: &Scenario) {
    let out = shell_with_topoctl(
        sc,
        &format!("printf 'line one\\nline two\\n' | \"$0\" exec -i {SHELL} -- cat"),
    )
    .ok();
    assert_eq!(
        out.stdout,
        "line one\nline two\n",
        "{}",
        out.describe_failure()
    );
    // wc prints only once its stdin has ended: end of file reached the command.
    let out = shell_with_topoctl(
        sc,
        &format!("head -c 100000 /dev/zero | \"$0\" exec -i {SHELL} -- wc -c"),
    )
    .ok();
    assert_eq!(out.stdout.trim(), "100000", "{}", out.describe_failure());
    sc.step("-i passes stdin to the command and its end of file closes the command's");
}

fn terminals(sc: &Scenario) {
    let out = topoctl_exec(sc, &["-it", SHELL, "--", "echo", "no tty"]).ok();
    assert_eq!(out.stdout, "no tty\n");
    assert!(
        out.stderr
            .contains("Unable to use a TTY - input is not a terminal or the right kind of file"),
        "{}",
        out.describe_failure()
    );
    sc.step("-it without a terminal warns as kubectl does and goes on without one");

    // script(1) gives topoctl a pty of 37x91 as its terminal; the command reads a line
    // first (the engine sizes a terminal only once the command runs; input reaches it
    // after that), then fails, and the pty's settings are printed after topoctl.
    let mut c = sc.command("sh");
    c.args([
        "-c",
        r#"printf 'go\n' | script -q -e -c "stty cols 91 rows 37; \"\$TOPOCTL\" exec -it shell -- sh -c 'read x; stty size; tty; exit 5'; echo topoctl-exit=\$?; stty -a" /dev/null"#,
    ])
    .env("SHELL", "/bin/sh")
    .env("TOPOCTL", sc.topoctl_bin());
    let out = sc.run(c, secs(120)).ok();
    assert!(
        out.stdout.contains("37 91") && out.stdout.contains("/dev/pts/"),
        "the command runs on a terminal of the caller's size: {}",
        out.describe_failure()
    );
    assert!(
        out.stdout.contains("topoctl-exit=5"),
        "the exit code under a terminal: {}",
        out.describe_failure()
    );
    let settings: Vec<&str> = out
        .stdout
        .split(|c: char| c.is_whitespace() || c == ';')
        .collect();
    for mode in ["icanon", "echo", "isig"] {
        assert!(
            settings.contains(&mode) && !settings.contains(&format!("-{mode}").as_str()),
            "topoctl left the terminal in raw mode ({mode} is off): {}",
            out.describe_failure()
        );
    }
    sc.step("-it under a pty: a terminal of the caller's size, the exit code, raw mode undone");
    resize_is_followed(sc);
}

/// The pty is resized while the command runs; the command's terminal follows (SIGWINCH →
/// a resize frame → the engine's exec resize).
fn resize_is_followed(sc: &Scenario) {
    let mark = tempfile::NamedTempFile::new().expect("a temporary file");
    let mark: PathBuf = mark.into_temp_path().keep().expect("keep the file");
    std::fs::remove_file(&mark).ok();
    // topoctl runs in the background of the pty's shell, its stdin kept on the pty through
    // fd 3: a shell without job control (dash, CI's /bin/sh) gives a background job
    // /dev/null as stdin before its redirections, so `<&0` would not do. The shell resizes
    // the pty once the test has seen the first size.
    let script = format!(
        "stty cols 91 rows 37; exec 3<&0; \
         \"$TOPOCTL\" exec -it shell -- sh -c 'while :; do stty size; sleep 0.2; done' <&3 & \
         while [ ! -e {m} ]; do sleep 0.1; done; stty cols 100 rows 50; wait",
        m = mark.display()
    );
    let mut c = sc.command("script");
    c.args(["-q", "-e", "-c"])
        .arg(script)
        .arg("/dev/null")
        // script(1) runs its command with $SHELL: the same shell on every machine.
        .env("SHELL", "/bin/sh")
        .env("TOPOCTL", sc.topoctl_bin());
    let session = sc.spawn(c);
    poll("the command to print its first size", secs(60), || {
        let out = session.stdout_so_far();
        if out.contains("37 91") {
            Ok(())
        } else {
            Err(format!("printed so far: {out:?}"))
        }
    });
    std::fs::write(&mark, b"").expect("write the mark");
    poll("the command to see the new size", secs(60), || {
        let out = session.stdout_so_far();
        if out.contains("50 100") {
            Ok(())
        } else {
            Err(format!("printed so far: {out:?}"))
        }
    });
    drop(session);
    std::fs::remove_file(&mark).ok();
    sc.step("a resize of the local terminal reaches the command's");
}

fn who_may_exec(sc: &Scenario) {
    let pki = sc.pki_dir();
    let mut viewer = sc.command(sc.topoctl_bin());
    viewer
        .env("TOPO_CONFIG", pki.join("viewer.yaml"))
        .args(["exec", SHELL, "--", "true"]);
    let out = sc.run(viewer, secs(60));
    assert!(
        out.code == Some(1)
            && out
                .stderr
                .contains("user \"viewer\" cannot create container/shell/exec"),
        "the viewer's exec is refused naming user, verb and object: {}",
        out.describe_failure()
    );

    let direct = agent_url(2, &format!("/containers/{SHELL}/exec?command=true"));
    for who in ["nodes/node1", "nodes/node2", "admin", "viewer"] {
        let (code, body) = get_as(sc, Some(who), &direct);
        assert_eq!(code, 403, "{who} at the agent endpoint: {body}");
        assert!(body.contains("only the controller"), "{body}");
    }
    let (code, body) = get_as(sc, None, &direct);
    assert_eq!(code, 401, "no certificate at the agent endpoint: {body}");
    let (code, body) = get_as(sc, Some("controller-etcd"), &direct);
    assert_eq!(
        code, 400,
        "the controller's identity without an upgrade: {body}"
    );
    assert!(body.contains("WebSocket"), "{body}");
    sc.step("view may not exec (403); at the agent endpoint only the controller may");
}

fn audited(sc: &Scenario) {
    let log = sc.dir().join("controller.log");
    poll("the audit line of the exec that exited 3", secs(30), || {
        let text = strip_ansi(&std::fs::read_to_string(&log).map_err(|e| e.to_string())?);
        let found = text.lines().any(|l| {
            l.contains("audit")
                && l.contains("verb=\"exec\"")
                && l.contains("user=admin")
                && l.contains("object=\"container/shell\"")
                && l.contains("exit 3")
                && l.contains("exit_code=3")
        });
        if found {
            Ok(())
        } else {
            Err("no such line in controller.log".to_string())
        }
    });
    sc.step("each exec is audited with user, container, command and exit code");
}

/// The text without terminal colour sequences (the lab's logs are coloured).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
