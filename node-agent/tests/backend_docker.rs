//! The Docker backend against a real engine (root): a private dockerd started for the test
//! (`--bridge=none --iptables=false`, temp data root) and a busybox image imported locally.

mod backend_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backend_support::{require_root, require_tool, run, try_run};
use futures::StreamExt;
use std::os::fd::AsRawFd;

use topo_agent::backend::netns::{open_container_netns, run_in_container};
use topo_agent::backend::{
    ContainerError, ContainerEvent, ContainerNs, Containers, DockerContainers,
};
use topo_schema::kinds::PullPolicy;
use topo_schema::slice::{ContainerEntry, Hardening, HostEntry};

const IMAGE: &str = "topo/busybox:latest";

fn docker_cli() -> &'static str {
    if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    }
}

/// A dockerd of the test's own, stopped on drop.
struct Engine {
    child: Child,
    dir: tempfile::TempDir,
}

impl Engine {
    fn start() -> Engine {
        require_root();
        require_tool("dockerd");
        require_tool("busybox");
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(d.join("daemon.json"), "{}").unwrap();
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .arg(format!("--config-file={}", d.join("daemon.json").display()))
            .arg(format!("--data-root={}", d.join("data").display()))
            .arg(format!("--exec-root={}", d.join("exec").display()))
            .arg(format!("--pidfile={}", d.join("dockerd.pid").display()))
            .arg(format!("--host=unix://{}", d.join("docker.sock").display()))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
                "--ip-forward=false",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn dockerd");
        let mut e = Engine { child, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while try_run(docker_cli(), &["-H", &e.host(), "info"]).is_none() {
            if let Ok(Some(st)) = e.child.try_wait() {
                panic!(
                    "dockerd exited ({st}): {}",
                    std::fs::read_to_string(e.dir.path().join("dockerd.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer within 60 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        e
    }

    fn host(&self) -> String {
        format!("unix://{}", self.dir.path().join("docker.sock").display())
    }

    fn cli(&self, args: &[&str]) -> String {
        let h = self.host();
        let mut a = vec!["-H", h.as_str()];
        a.extend_from_slice(args);
        run(docker_cli(), &a)
    }

    /// `topo/busybox:latest` from the static busybox, as the lab makes it.
    fn import_busybox(&self) {
        let root = self.dir.path().join("rootfs");
        for sub in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        let bb = run("sh", &["-c", "command -v busybox"]);
        std::fs::copy(bb.trim(), root.join("bin/busybox")).unwrap();
        for a in ["sh", "sleep", "cat", "env"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
        }
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let h = self.host();
        let st = Command::new(docker_cli())
            .args(["-H", &h, "import", "--change", "ENV PATH=/bin", "-", IMAGE])
            .stdin(tar.stdout.take().unwrap())
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(tar.wait().unwrap().success(), "tar failed");
        assert!(st.success(), "docker import failed");
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let h = self.host();
        // Containers first, so their shims go away with the engine.
        if let Some(ids) = try_run(docker_cli(), &["-H", &h, "ps", "-aq"]) {
            for id in ids.split_whitespace() {
                let _ = try_run(docker_cli(), &["-H", &h, "rm", "-f", id]);
            }
        }
        // SAFETY: signalling the dockerd this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path().join("data"))
            .status();
    }
}

fn entry(name: &str) -> ContainerEntry {
    ContainerEntry {
        name: name.into(),
        uid: format!("uid-{name}"),
        generation: 1,
        docker_name: format!("topo-{name}"),
        image: IMAGE.into(),
        command: vec!["sleep".into(), "300".into()],
        env: BTreeMap::from([("DB_PORT".into(), "tcp://127.0.0.1:6379".into())]),
        pull_policy: PullPolicy::IfNotPresent,
        hosts: vec![HostEntry {
            name: "db".into(),
            ip: "127.0.0.1".parse().unwrap(),
        }],
        attachments: vec![],
        ports: vec![],
        links: vec![],
        hardening: Default::default(),
    }
}

async fn next_event(
    events: &mut futures::stream::BoxStream<'static, ContainerEvent>,
    action: &str,
) -> Option<ContainerEvent> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, events.next()).await {
            Ok(Some(ev @ ContainerEvent::Changed { .. })) if matches!(&ev, ContainerEvent::Changed { action: a, .. } if a == action) =>
            {
                return Some(ev);
            }
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

#[test]
fn backend_docker_lifecycle_ownership_and_events() {
    let engine = Engine::start();
    let host = engine.host();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let docker = rt
        .block_on(DockerContainers::connect(Some(&host), "node1"))
        .expect("connect");
    let other = rt
        .block_on(DockerContainers::connect(Some(&host), "node2"))
        .expect("connect");

    rt.block_on(async {
        // No image yet; a pull fails here (no registry), with the engine's words.
        assert!(!docker.image_present(IMAGE).await.unwrap());
        let t = Instant::now();
        let pulled: Vec<_> = docker.pull("topo/does-not-exist:1").collect().await;
        let e = match pulled.last() {
            Some(Err(e)) => e.to_string(),
            other => panic!("the pull did not fail: {other:?}"),
        };
        assert!(
            matches!(pulled.last(), Some(Err(ContainerError::ImagePullFailed { reason, .. })) if !reason.is_empty()),
            "{e}"
        );
        eprintln!("failed pull took {:?}: {e}", t.elapsed());
        let e = docker.create_and_start(&entry("web")).await.unwrap_err();
        assert!(
            matches!(e, ContainerError::ImagePullFailed { .. }),
            "create without the image: {e}"
        );
    });
    engine.import_busybox();

    rt.block_on(async {
        assert!(docker.image_present(IMAGE).await.unwrap());
        let mut events = docker.watch();

        let web = entry("web");
        let id = docker.create_and_start(&web).await.unwrap();
        let list = docker.list().await.unwrap();
        assert_eq!(list.len(), 1, "{list:?}");
        let c = &list[0];
        assert_eq!(
            (c.id.as_str(), c.name.as_str(), c.docker_name.as_str()),
            (id.as_str(), "web", "topo-web")
        );
        assert!(c.running && c.started_at.is_some());
        assert_eq!(c.config_hash, web.config_hash());
        assert_eq!(c.uid, "uid-web");
        let pid = c.pid.expect("pid of a running container");
        assert!(
            next_event(&mut events, "start").await.is_some(),
            "start event"
        );

        // Docker gave it no network of its own; env and hosts are what the entry said.
        let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap();
        let ifaces: Vec<&str> = dev
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(str::trim)
            .collect();
        assert_eq!(ifaces, vec!["lo"], "{dev}");
        // Docker's start returns once runc has told the container's init to exec, not once
        // it has: until then /proc/PID/environ is runc's. Poll for the container's own.
        let mut env = String::new();
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            env = String::from_utf8_lossy(
                &std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default(),
            )
            .into_owned();
            if env.contains("DB_PORT=tcp://127.0.0.1:6379") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            env.contains("DB_PORT=tcp://127.0.0.1:6379"),
            "environ of {pid}: {env:?}"
        );
        let hosts = std::fs::read_to_string(format!("/proc/{pid}/root/etc/hosts")).unwrap();
        assert!(
            hosts
                .lines()
                .any(|l| l.starts_with("127.0.0.1") && l.split_whitespace().any(|w| w == "db")),
            "{hosts}"
        );
        assert!(
            engine
                .cli(&[
                    "inspect",
                    "-f",
                    "{{.HostConfig.NetworkMode}} {{.HostConfig.RestartPolicy.Name}}",
                    &id
                ])
                .trim()
                == "none no"
        );

        // Its namespace is entered through the confirmed process: the thread that runs the
        // closure is in the container's network namespace.
        let ns = ContainerNs::new(pid, id.clone());
        let container_net = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
        let entered = run_in_container(&ns, || std::fs::read_link("/proc/thread-self/ns/net"))
            .await
            .expect("enter the running container's namespace")
            .unwrap();
        assert_eq!(entered, container_net);

        // Killed outside topo: a die event, then a start brings it back with a new process.
        engine.cli(&["kill", &id]);
        let ev = next_event(&mut events, "die").await.expect("die event");
        assert!(matches!(ev, ContainerEvent::Changed { ref name, .. } if name == "web"));
        let stopped = docker.get("topo-web").await.unwrap().unwrap();
        assert!(!stopped.running && stopped.pid.is_none() && stopped.finished_at.is_some());
        // Issue 9: the dead container's pid is never entered — whether it is free now or
        // already another process's, it is found gone, and the closure never runs.
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let r = {
            let ran = ran.clone();
            run_in_container(&ns, move || {
                ran.store(true, std::sync::atomic::Ordering::SeqCst)
            })
            .await
        };
        let e = r.expect_err("entered the namespace of a dead container's pid");
        assert!(e.is_gone(), "{e}");
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
        docker.start(&id).await.unwrap();
        docker.start(&id).await.unwrap();
        let again = docker.get("topo-web").await.unwrap().unwrap();
        assert!(again.running && again.pid.is_some() && again.pid != Some(pid));
        // The restarted container is entered by its new process, not its old pid.
        let e = open_container_netns(&ns).expect_err("the old pid still opened");
        assert!(e.is_gone(), "{e}");
        let new_pid = again.pid.unwrap();
        let (file, _pidfd) = open_container_netns(&ContainerNs::new(new_pid, id.clone()))
            .expect("open the restarted container's namespace");
        assert_eq!(
            std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap(),
            std::fs::read_link(format!("/proc/{new_pid}/ns/net")).unwrap()
        );

        // Another node's agent sees nothing of it and collides by name (lab: one engine).
        assert!(other.list().await.unwrap().is_empty());
        assert!(other.get("topo-web").await.unwrap().is_none());
        let e = other.create_and_start(&web).await.unwrap_err();
        assert!(
            matches!(&e, ContainerError::NameOwnedByOtherNode { node, .. } if node == "node1"),
            "{e}"
        );
        assert!(matches!(
            other.remove(&id).await,
            Err(ContainerError::NotOwned { .. })
        ));
        let e = docker.create_and_start(&web).await.unwrap_err();
        assert!(matches!(e, ContainerError::AlreadyExists { .. }), "{e}");

        // A container without our labels is never touched.
        let foreign = engine.cli(&["create", "--name", "topo-foreign", IMAGE, "sleep", "1"]);
        let foreign = foreign.trim().to_string();
        let e = docker
            .create_and_start(&entry("foreign"))
            .await
            .unwrap_err();
        assert!(matches!(e, ContainerError::NameTaken { .. }), "{e}");
        assert!(matches!(
            docker.remove(&foreign).await,
            Err(ContainerError::NotOwned { .. })
        ));
        assert!(matches!(
            docker.start(&foreign).await,
            Err(ContainerError::NotOwned { .. })
        ));
        assert_eq!(docker.list().await.unwrap().len(), 1);

        // Removals asked at once, as a container's reconcile and the garbage collector may:
        // each returns only once the container is gone, also those Docker answers "removal
        // already in progress" (409), so no caller reports it removed while `docker ps -a`
        // still lists it.
        let removals: Vec<_> = (0..3)
            .map(|_| {
                let (d, id) = (docker.clone(), id.clone());
                tokio::spawn(async move {
                    d.remove(&id).await?;
                    Ok::<_, ContainerError>(d.list().await?.iter().any(|c| c.id == id))
                })
            })
            .collect();
        for r in removals {
            let still_listed = r.await.expect("removal task").expect("remove");
            assert!(
                !still_listed,
                "remove returned while Docker still lists {id}"
            );
        }
        assert!(
            next_event(&mut events, "destroy").await.is_some(),
            "destroy event"
        );
        docker.remove(&id).await.unwrap();
        assert!(docker.list().await.unwrap().is_empty());
        assert!(
            engine
                .cli(&["ps", "-aq", "--filter", "name=topo-foreign"])
                .contains(&foreign[..12])
        );
    });
    rt.block_on(hardening(&engine, &docker));
}

/// The controller-derived limit of `controller` of process `pid` (cgroup v2, else v1).
fn cgroup_value(pid: u32, v2_file: &str, v1: (&str, &str)) -> String {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let mut tried = Vec::new();
    for line in cgroups.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        let file = if controllers.is_empty() {
            format!("/sys/fs/cgroup{path}/{v2_file}")
        } else if controllers.split(',').any(|c| c == v1.0) {
            format!("/sys/fs/cgroup/{}{path}/{}", v1.0, v1.1)
        } else {
            continue;
        };
        if let Ok(v) = std::fs::read_to_string(&file) {
            return v.trim().to_string();
        }
        tried.push(file);
    }
    panic!(
        "no {v2_file} nor {} for pid {pid}; tried {tried:?}\n{cgroups}",
        v1.1
    )
}

/// Issue 8: a hardened entry's container really has its limits, user, read-only root,
/// capabilities and no-new-privileges — as Docker reports them and as the kernel holds them.
async fn hardening(engine: &Engine, docker: &DockerContainers) {
    let mut hard = entry("hard");
    *hard.hardening = Hardening {
        memory_bytes: Some(64 << 20),
        nano_cpus: Some(500_000_000),
        pids_limit: Some(32),
        user: Some("1000:1000".into()),
        read_only_root_filesystem: true,
        cap_add: vec!["CAP_NET_BIND_SERVICE".into()],
        cap_drop: vec!["ALL".into()],
        allow_privilege_escalation: false,
    };
    let id = docker.create_and_start(&hard).await.unwrap();
    let inspected = engine.cli(&[
        "inspect",
        "-f",
        "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.HostConfig.PidsLimit}} {{.HostConfig.ReadonlyRootfs}} {{json .HostConfig.CapAdd}} {{json .HostConfig.CapDrop}} {{json .HostConfig.SecurityOpt}} {{.Config.User}}",
        &id,
    ]);
    assert_eq!(
        inspected.trim(),
        r#"67108864 500000000 32 true ["CAP_NET_BIND_SERVICE"] ["ALL"] ["no-new-privileges"] 1000:1000"#
    );
    let c = docker.get("topo-hard").await.unwrap().unwrap();
    assert_eq!(c.config_hash, hard.config_hash());
    let pid = c.pid.unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    assert_eq!(
        field("CapBnd:"),
        "0000000000000400",
        "only CAP_NET_BIND_SERVICE (bit 10) is left"
    );
    assert_eq!(field("Uid:").split_whitespace().next(), Some("1000"));
    assert_eq!(
        cgroup_value(pid, "memory.max", ("memory", "memory.limit_in_bytes")),
        "67108864"
    );
    assert_eq!(cgroup_value(pid, "pids.max", ("pids", "pids.max")), "32");
    let h = engine.host();
    let write = Command::new(docker_cli())
        .args(["-H", &h, "exec", &id, "sh", "-c", "echo x > /probe"])
        .output()
        .unwrap();
    assert!(!write.status.success(), "a write to / succeeded");
    assert!(
        String::from_utf8_lossy(&write.stderr).contains("Read-only file system"),
        "{}",
        String::from_utf8_lossy(&write.stderr)
    );

    // allowPrivilegeEscalation: true leaves no-new-privileges off.
    let mut open = entry("open");
    open.hardening.allow_privilege_escalation = true;
    let id2 = docker.create_and_start(&open).await.unwrap();
    let opt = engine.cli(&["inspect", "-f", "{{json .HostConfig.SecurityOpt}}", &id2]);
    assert_eq!(opt.trim(), "null");
    docker.remove(&id).await.unwrap();
    docker.remove(&id2).await.unwrap();
}
