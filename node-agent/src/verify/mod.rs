//! `POST /verify` on the agent's endpoint (the controller only): the checks of
//! `topoctl verify` that start on this node, run from inside the real namespaces.
//!
//! The controller's request names this node's containers to check, a peer per other node
//! and network for each, and other nodes' published ports to try from here
//! (`topo_schema::verify`). This side adds what its slice knows: the gateway of each of a
//! container's attachments and each link the container consumes. Every check runs at once,
//! each on its own OS thread inside the container's namespace (`backend::netns`, entered
//! through the pid Docker gives and confirmed by its cgroup), or in the agent's own
//! namespace for published ports, with a [`PROBE_DEADLINE`] per probe (an echo is sent again
//! every 250 ms within it: one lost packet on a busy host is not a broken path):
//!
//! | check | probe | a failure names |
//! |---|---|---|
//! | gateway | ICMP echo to the node's gateway on the network | no ARP reply on the interface, or no echo reply |
//! | peer | ICMP echo to the peer; the ARP entry after a timeout | no ARP reply on the bridge of this node (towards the peer's node), or no echo reply |
//! | mtu | ICMP echo of the network's MTU with DF | the container's interface refusing it, a hop asking to fragment, or a silent drop between the two nodes |
//! | link | TCP connect to the listen address (UDP: a datagram, failing on an ICMP port unreachable; silence passes, UDP has no handshake) | the missing DNAT rule (listen refused while the target answers) or the target refusing |
//! | port | TCP connect (UDP: as links) from this node to the publishing node's address | refused or unanswered, and by which node |
//!
//! Everything here only reads and sends probes: nothing of the host is changed.

pub mod probe;

use std::net::SocketAddrV4;
use std::time::Duration;

use futures::future::join_all;
use topo_schema::Protocol;
use topo_schema::slice::{AttachmentEntry, ContainerEntry, LinkRule, SliceEntry, SliceKey};
use topo_schema::verify::{
    Check, CheckKind, PeerTarget, PublishedTarget, SourceChecks, VerifyReport, VerifyRequest,
};

use self::probe::{Connect, Echo, Neighbour};
use crate::backend::netns::{ContainerNs, run_in_container};
use crate::reconcile::Backends;
use crate::watch::SliceStore;

/// How long one probe waits for its answer.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(1);
/// How long a check may take in all (a thread to start and a namespace to enter, under
/// load, besides the probe).
const CHECK_BUDGET: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("failed to verify: the request is for node {asked}, this agent is node {me}")]
    WrongNode { asked: String, me: String },
    #[error("failed to verify: the node's slice has not been listed yet")]
    NotSynced,
}

/// One check to run: where from, and what.
enum Task {
    Gateway(AttachmentEntry, std::net::Ipv4Addr),
    Peer(AttachmentEntry, PeerTarget),
    Mtu(AttachmentEntry, PeerTarget),
    Link(LinkRule),
}

/// Runs the checks of `req` (see the module documentation).
pub async fn run(
    backends: &Backends,
    store: &SliceStore,
    req: &VerifyRequest,
) -> Result<VerifyReport, VerifyError> {
    let me = match store.get(&SliceKey::Node).as_ref().and_then(|v| v.entry()) {
        Some(SliceEntry::Node(n)) => n.name.clone(),
        _ => return Err(VerifyError::NotSynced),
    };
    if req.node != me {
        return Err(VerifyError::WrongNode {
            asked: req.node.clone(),
            me,
        });
    }
    let sources = req
        .containers
        .iter()
        .map(|s| from_container(backends, store, &me, s));
    let ports = req.published.iter().map(|t| published(&me, t));
    let (a, b) = futures::join!(join_all(sources), join_all(ports));
    let checks = a.into_iter().flatten().chain(b).collect();
    Ok(VerifyReport { checks })
}

/// The gateway of `network` on this node, from its bridge entry.
fn gateway(store: &SliceStore, network: &str) -> Option<std::net::Ipv4Addr> {
    match store
        .get(&SliceKey::Bridge(network.to_string()))
        .as_ref()
        .and_then(|v| v.entry())
    {
        Some(SliceEntry::Bridge(b)) => Some(b.gateway.addr()),
        _ => None,
    }
}

/// Every check of one container, run from its namespace.
async fn from_container(
    backends: &Backends,
    store: &SliceStore,
    me: &str,
    s: &SourceChecks,
) -> Vec<Check> {
    let name = s.container.as_str();
    let agent_fail = |why: String| {
        vec![Check::fail(
            CheckKind::Agent,
            name,
            me,
            format!("{name} on node {me}"),
            why,
        )]
    };
    let entry = match store
        .get(&SliceKey::Container(name.to_string()))
        .as_ref()
        .and_then(|v| v.entry())
    {
        Some(SliceEntry::Container(c)) => c.clone(),
        _ => return agent_fail(format!("container {name} is not in node {me}'s slice")),
    };
    let ns = match backends.containers.get(&entry.docker_name).await {
        Ok(Some(o)) => match o.pid.filter(|_| o.running) {
            Some(pid) => ContainerNs::new(pid, o.id),
            None => return agent_fail(format!("container {name} is not running ({})", o.status)),
        },
        Ok(None) => return agent_fail(format!("container {name} has no Docker container")),
        Err(e) => return agent_fail(crate::error_chain::error_chain(&e)),
    };
    let tasks = tasks(store, &entry, s);
    let runs = tasks
        .into_iter()
        .map(|t| run_task(ns.clone(), &entry, me, t));
    join_all(runs).await
}

fn tasks(store: &SliceStore, entry: &ContainerEntry, s: &SourceChecks) -> Vec<Task> {
    let mut out = Vec::new();
    for a in &entry.attachments {
        if let Some(gw) = gateway(store, &a.network) {
            out.push(Task::Gateway(a.clone(), gw));
        }
    }
    for p in &s.peers {
        if let Some(a) = entry.attachments.iter().find(|a| a.network == p.network) {
            out.push(Task::Peer(a.clone(), p.clone()));
            out.push(Task::Mtu(a.clone(), p.clone()));
        }
    }
    out.extend(entry.links.iter().cloned().map(Task::Link));
    out
}

/// Runs `f` in the container's namespace within [`CHECK_BUDGET`]; Err says why it did not.
async fn in_ns<T: Send + 'static>(
    ns: ContainerNs,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    match tokio::time::timeout(CHECK_BUDGET, run_in_container(&ns, f)).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(crate::error_chain::error_chain(&e)),
        Err(_) => Err(format!(
            "the check did not finish within {}s",
            CHECK_BUDGET.as_secs()
        )),
    }
}

/// An echo and, when it went unanswered, the ARP entry of its destination.
fn echo_and_arp(dst: std::net::Ipv4Addr, size: usize, df: bool) -> (Echo, Neighbour) {
    let e = probe::echo(dst, size, df, PROBE_DEADLINE);
    let n = match e {
        Echo::Timeout => probe::neighbour(dst),
        _ => Neighbour::Absent,
    };
    (e, n)
}

async fn run_task(ns: ContainerNs, c: &ContainerEntry, me: &str, task: Task) -> Check {
    let name = c.name.as_str();
    match task {
        Task::Gateway(a, gw) => {
            let subject = format!("{name} → gateway {gw} of network {} on {me}", a.network);
            let r = in_ns(ns, move || echo_and_arp(gw, probe::PLAIN_ECHO, false)).await;
            judge(CheckKind::Gateway, name, me, subject, r, |(e, n)| {
                echo_failure(&e, &n, &a, me, "the gateway")
            })
        }
        Task::Peer(a, p) => {
            let subject = format!(
                "{name} → {} ({}) on network {}, {me} → {}",
                p.container, p.ip, p.network, p.node
            );
            let ip = p.ip;
            let r = in_ns(ns, move || echo_and_arp(ip, probe::PLAIN_ECHO, false)).await;
            judge(CheckKind::Peer, name, me, subject, r, |(e, n)| {
                echo_failure(&e, &n, &a, me, &p.container)
            })
        }
        Task::Mtu(a, p) => {
            let subject = format!(
                "{name} → {} ({}) on network {}: {} bytes, don't fragment, {me} → {}",
                p.container, p.ip, p.network, p.mtu, p.node
            );
            let (ip, size) = (p.ip, p.mtu as usize);
            let r = in_ns(ns, move || echo_and_arp(ip, size, true)).await;
            judge(CheckKind::Mtu, name, me, subject, r, |(e, _)| {
                mtu_failure(&e, &a, name, me, &p)
            })
        }
        Task::Link(rule) => link_check(ns, name, me, rule).await,
    }
}

/// PASS, or FAIL with the reason `why` gives (None: it passed).
fn judge<T>(
    kind: CheckKind,
    container: &str,
    node: &str,
    subject: String,
    outcome: Result<T, String>,
    why: impl FnOnce(T) -> Option<String>,
) -> Check {
    match outcome.map(why) {
        Ok(None) => Check::pass(kind, container, node, subject),
        Ok(Some(reason)) | Err(reason) => Check::fail(kind, container, node, subject, reason),
    }
}

fn secs() -> String {
    format!("{} s", PROBE_DEADLINE.as_secs())
}

/// Why an ordinary echo to `whom` failed (None: it was answered), naming the hop.
pub fn echo_failure(
    e: &Echo,
    n: &Neighbour,
    a: &AttachmentEntry,
    me: &str,
    whom: &str,
) -> Option<String> {
    let at = format!("{}@{me}", a.bridge);
    Some(match e {
        Echo::Reply => return None,
        Echo::Timeout => match n {
            Neighbour::Answered { mac, device } => format!(
                "ARP answered by {mac} on {device}, but no echo reply from {whom} within {}",
                secs()
            ),
            _ => format!(
                "no ARP reply on {at} within {} ({} of the container, host side {})",
                secs(),
                a.interface,
                a.host_veth
            ),
        },
        Echo::NoRoute(why) => format!("{why} inside the container ({})", a.interface),
        Echo::Unreachable { from, what } => format!("{what}, says {from}"),
        Echo::FragNeeded { from, mtu } => {
            format!("fragmentation needed at {from} (next-hop MTU {mtu})")
        }
        Echo::TooBig => format!("{} refuses the packet as too long", a.interface),
        Echo::Failed(why) => why.clone(),
    })
}

/// Why the don't-fragment echo of the network's MTU failed, naming the hop.
pub fn mtu_failure(
    e: &Echo,
    a: &AttachmentEntry,
    container: &str,
    me: &str,
    p: &PeerTarget,
) -> Option<String> {
    Some(match e {
        Echo::Reply => return None,
        Echo::TooBig => format!(
            "{} of {container} refuses a {}-byte packet: its MTU is below the network's",
            a.interface, p.mtu
        ),
        Echo::FragNeeded { from, mtu } => format!(
            "fragmentation needed at {from} (next-hop MTU {mtu}, the network's is {})",
            p.mtu
        ),
        Echo::Timeout => format!(
            "no reply within {}: a hop between {}@{me} and {} on {} drops {}-byte packets (an MTU below the network's on a veth, a bridge port or the tunnel)",
            secs(),
            a.bridge,
            p.container,
            p.node,
            p.mtu
        ),
        Echo::NoRoute(why) => format!("{why} inside the container ({})", a.interface),
        Echo::Unreachable { from, what } => format!("{what}, says {from}"),
        Echo::Failed(why) => why.clone(),
    })
}

fn connect(to: SocketAddrV4, protocol: Protocol) -> Connect {
    match protocol {
        Protocol::Tcp => probe::connect_tcp(to, PROBE_DEADLINE),
        Protocol::Udp => probe::send_udp(to, PROBE_DEADLINE),
    }
}

async fn link_check(ns: ContainerNs, name: &str, me: &str, rule: LinkRule) -> Check {
    let target = rule.target;
    let subject = format!(
        "{name}: link {} {}/{} → {}",
        rule.link,
        rule.listen,
        rule.protocol,
        target.map_or_else(|| "(no target)".to_string(), |t| t.to_string())
    );
    let Some(target) = target else {
        let why = format!(
            "the link has no target: {}: {}",
            rule.reason.as_deref().unwrap_or("Unresolved"),
            rule.message.as_deref().unwrap_or("")
        );
        return Check::fail(CheckKind::Link, name, me, subject, why);
    };
    let (listen, proto) = (rule.listen, rule.protocol);
    let r = in_ns(ns, move || {
        let first = connect(listen, proto);
        // Refused at the listen address: does the target itself answer (then the rule is
        // what is missing)?
        let direct = (first == Connect::Refused).then(|| connect(target, proto));
        (first, direct)
    })
    .await;
    judge(CheckKind::Link, name, me, subject, r, |(first, direct)| {
        link_failure(&first, direct.as_ref(), &rule, name)
    })
}

/// Why a link's listen address did not connect (None: it did).
pub fn link_failure(
    first: &Connect,
    direct: Option<&Connect>,
    rule: &LinkRule,
    container: &str,
) -> Option<String> {
    let target = rule.target.map(|t| t.to_string()).unwrap_or_default();
    Some(match (first, direct) {
        (Connect::Ok, _) => return None,
        (Connect::Refused, Some(Connect::Ok)) => format!(
            "{} is refused in {container} while {target} answers: the link's DNAT rule in {container} is missing",
            rule.listen
        ),
        (Connect::Refused, _) if rule.protocol == Protocol::Udp => format!(
            "ICMP port unreachable: nothing receives on {target} (or the link's rule in {container} is missing)"
        ),
        (Connect::Refused, _) => format!("{target} refuses the connection: nothing listens there"),
        (Connect::Timeout, _) => format!(
            "no answer within {} from {} (forwarded to {target})",
            secs(),
            rule.listen
        ),
        (Connect::Failed(why), _) => why.clone(),
    })
}

/// A published port of another node, tried from this node's own namespace.
async fn published(me: &str, t: &PublishedTarget) -> Check {
    let subject = t.subject(me);
    let to = SocketAddrV4::new(t.address, t.port);
    let proto = t.protocol;
    let r = tokio::time::timeout(
        CHECK_BUDGET,
        tokio::task::spawn_blocking(move || connect(to, proto)),
    )
    .await;
    let outcome = match r {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("the check failed: {e}")),
        Err(_) => Err(format!(
            "the check did not finish within {}s",
            CHECK_BUDGET.as_secs()
        )),
    };
    judge(CheckKind::Port, &t.container, me, subject, outcome, |c| {
        port_failure(&c, t)
    })
}

/// Why a published port did not answer (None: it did).
pub fn port_failure(c: &Connect, t: &PublishedTarget) -> Option<String> {
    let at = format!("{}:{}", t.address, t.port);
    Some(match c {
        Connect::Ok => return None,
        Connect::Refused => format!(
            "{at} refused the connection: node {} does not forward hostPort {} to {}, or nothing listens in {}",
            t.node, t.port, t.container, t.container
        ),
        Connect::Timeout => format!("no answer from {at} within {}", secs()),
        Connect::Failed(why) => why.clone(),
    })
}

#[cfg(test)]
mod tests;
