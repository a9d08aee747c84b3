//! `POST /apis/topo.dev/v1alpha1/verify?labelSelector=...` (`topoctl verify`): the agents
//! test the live dataplane from inside the real namespaces, and the controller folds their
//! checks into one answer and a `Verified` condition on each container checked.
//!
//! The way a verification takes, authenticated at each hop as `logs` is:
//! 1. `guard.rs` authorizes verb `verify` on "the dataplane": role `admin` only. A
//!    verification makes every agent send probe packets and open connections into the
//!    users' containers (a peer's listener sees them) and writes a condition on each
//!    container; `view` promises reading only, so it may not.
//! 2. This module plans the checks from the cache ([`plan`], pure): every container the
//!    selector picks is checked from its own node; for each of its networks it gets one peer
//!    on each other node that has containers on that network (the first by name: a bound of
//!    containers × networks × other nodes pairs, which still crosses every tunnel each
//!    container's traffic uses), and each published port is tried from one other node (the
//!    first by name whose agent runs; its own node when there is no other).
//! 3. Each node's agent gets its share over HTTPS (`POST https://ADDRESS:10250/verify`, the
//!    endpoint its heartbeat announces, with the controller's client identity, which the
//!    agent alone accepts) and answers within [`AGENT_DEADLINE`]: it adds the checks its
//!    slice knows (the gateway of each attachment, the links of each container) and runs
//!    everything concurrently, each check within 1 s (`node-agent/src/verify/`).
//! 4. An agent that has no heartbeat, cannot be reached or does not answer in time gives a
//!    FAIL check per container it was to check (naming the node and why) and per published
//!    port it was to try. [`fold`] then turns the checks into each container's `Verified`
//!    condition (True when all of its checks passed; else False naming the failed ones),
//!    written under `objverify/Container/NAME`, from where the leader folds it into the
//!    container's status: the leader's own status writes never lose it.
//!
//! Direct HTTPS to the agents rather than requests and results through etcd: the path and
//! the identities already exist for `logs`, nothing new is granted to the agents' etcd
//! roles, and a verification costs no etcd writes but the conditions.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Query, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use etcd_client::{Txn, TxnOp};
use topo_schema::api::{ApiError, ErrorReason, LabelSelector};
use topo_schema::verify::{
    CONDITION_VERIFIED, Check, CheckKind, PeerTarget, PublishedTarget, SourceChecks, VerifyReport,
    VerifyRequest,
};
use topo_schema::{Condition, ConditionStatus, Container, Kind, Resource, keys, net};

use crate::cache::Snapshot;
use crate::logs::AgentClient;
use crate::reply::{ApiErr, AppState};

/// How long the controller waits for an agent's checks.
pub const AGENT_DEADLINE: Duration = Duration::from_secs(10);
/// The longest `Verified` message (the failed checks, joined).
const MAX_MESSAGE: usize = 2048;
/// Condition writes per etcd transaction (etcd's default limit is 128 operations).
const WRITES_PER_TXN: usize = 100;

/// What one verification asks of whom.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// node → its share of the checks.
    pub requests: BTreeMap<String, VerifyRequest>,
    /// Containers checked, in name order.
    pub selected: Vec<String>,
}

fn err(reason: ErrorReason, message: String) -> ApiErr {
    ApiErr(ApiError::new(reason, message))
}

/// A container with the addresses its status holds.
struct Placed<'a> {
    name: &'a str,
    c: &'a Container,
    addresses: BTreeMap<&'a str, Ipv4Addr>,
}

fn placed(snap: &Snapshot) -> Vec<Placed<'_>> {
    snap.of_kind(Kind::Container)
        .filter_map(|o| match &o.resource {
            Resource::Container(c) => Some(Placed {
                name: c.metadata.name.as_str(),
                c,
                addresses: c
                    .status
                    .iter()
                    .flat_map(|s| s.addresses.iter())
                    .filter_map(|(n, ip)| Some((n.as_str(), ip.parse().ok()?)))
                    .collect(),
            }),
            _ => None,
        })
        .collect()
}

/// Network → its MTU (as the planner derives it).
fn mtus(snap: &Snapshot) -> HashMap<&str, u32> {
    snap.of_kind(Kind::Network)
        .filter_map(|o| match &o.resource {
            Resource::Network(n) => Some((
                n.metadata.name.as_str(),
                n.status
                    .as_ref()
                    .and_then(|s| s.mtu)
                    .unwrap_or_else(|| net::effective_mtu(n.spec.mtu)),
            )),
            _ => None,
        })
        .collect()
}

/// The checks of the containers `selector` picks, per node (see the module documentation).
pub fn plan(snap: &Snapshot, selector: &LabelSelector) -> Plan {
    let all = placed(snap);
    let mtus = mtus(snap);
    // network → node → the first container there with an address on it.
    let mut first: BTreeMap<&str, BTreeMap<&str, (&str, Ipv4Addr)>> = BTreeMap::new();
    for p in &all {
        for (net, ip) in &p.addresses {
            first
                .entry(net)
                .or_default()
                .entry(p.c.spec.node.as_str())
                .or_insert((p.name, *ip));
        }
    }
    let agents: Vec<&str> = snap
        .heartbeats
        .iter()
        .filter(|(_, hb)| hb.endpoint.is_some())
        .map(|(n, _)| n.as_str())
        .collect();
    let mut out = Plan::default();
    for p in all
        .iter()
        .filter(|p| selector.matches(&p.c.metadata.labels))
    {
        let node = p.c.spec.node.as_str();
        out.selected.push(p.name.to_string());
        let peers = p
            .addresses
            .keys()
            .flat_map(|net| {
                let mtu = mtus.get(net).copied().unwrap_or(net::effective_mtu(None));
                first
                    .get(net)
                    .into_iter()
                    .flatten()
                    .filter(|(n, _)| **n != node)
                    .map(move |(peer_node, (peer, ip))| PeerTarget {
                        network: net.to_string(),
                        container: peer.to_string(),
                        node: peer_node.to_string(),
                        ip: *ip,
                        mtu,
                    })
            })
            .collect();
        request(&mut out, node).containers.push(SourceChecks {
            container: p.name.to_string(),
            peers,
        });
        for t in published(snap, p) {
            let prober = agents.iter().find(|a| **a != node).copied().unwrap_or(node);
            request(&mut out, prober).published.push(t);
        }
    }
    out
}

fn request<'a>(plan: &'a mut Plan, node: &str) -> &'a mut VerifyRequest {
    plan.requests
        .entry(node.to_string())
        .or_insert_with(|| VerifyRequest {
            node: node.to_string(),
            ..Default::default()
        })
}

/// The published ports of `p`, at the address they answer on from another node.
fn published(snap: &Snapshot, p: &Placed<'_>) -> Vec<PublishedTarget> {
    let node = p.c.spec.node.as_str();
    let address = snap
        .get(&topo_schema::ObjectRef::new(Kind::Node, node))
        .and_then(|o| match &o.resource {
            Resource::Node(n) => Some(n.spec.address),
            _ => None,
        });
    p.c.spec
        .ports
        .iter()
        .filter_map(|port| {
            let host_port = u16::try_from(port.host_port?).ok()?;
            let address = match port.host_ip {
                Some(ip) if !ip.is_unspecified() => ip,
                _ => address?,
            };
            Some(PublishedTarget {
                container: p.name.to_string(),
                node: node.to_string(),
                address,
                port: host_port,
                protocol: port.protocol,
            })
        })
        .collect()
}

/// The FAIL checks standing for what `req` asked of an agent that could not answer.
pub fn unanswered(req: &VerifyRequest, why: &str) -> Vec<Check> {
    let node = req.node.as_str();
    let mut out: Vec<Check> = req
        .containers
        .iter()
        .map(|s| {
            Check::fail(
                CheckKind::Agent,
                &s.container,
                node,
                format!("{} on node {node}", s.container),
                why.to_string(),
            )
        })
        .collect();
    out.extend(req.published.iter().map(|t| {
        Check::fail(
            CheckKind::Port,
            &t.container,
            node,
            t.subject(node),
            why.to_string(),
        )
    }));
    out
}

/// Each selected container's `Verified` condition from the checks counted for it.
pub fn fold(selected: &[String], checks: &[Check], now: DateTime<Utc>) -> Vec<(String, Condition)> {
    selected
        .iter()
        .map(|name| {
            let mine: Vec<&Check> = checks.iter().filter(|c| &c.container == name).collect();
            let failed: Vec<String> = mine
                .iter()
                .filter(|c| !c.passed)
                .map(|c| c.line())
                .collect();
            let (status, reason, message) = if mine.is_empty() {
                (
                    ConditionStatus::Unknown,
                    "NoChecks",
                    "nothing to check: no network, link or published port".to_string(),
                )
            } else if failed.is_empty() {
                (
                    ConditionStatus::True,
                    "ChecksPassed",
                    format!("{} checks passed", mine.len()),
                )
            } else {
                let m = format!(
                    "{} of {} checks failed: {}",
                    failed.len(),
                    mine.len(),
                    failed.join("; ")
                );
                (ConditionStatus::False, "ChecksFailed", bounded(m))
            };
            let cond = Condition {
                type_: CONDITION_VERIFIED.to_string(),
                status,
                reason: reason.to_string(),
                message,
                last_transition_time: now,
            };
            (name.clone(), cond)
        })
        .collect()
}

fn bounded(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Asks one agent; its checks, or FAIL checks saying why it did not answer.
async fn ask(agents: &AgentClient, snap: &Snapshot, req: VerifyRequest, user: &str) -> Vec<Check> {
    let node = req.node.clone();
    let endpoint = match snap.heartbeats.get(&node) {
        None => {
            let why = format!("the agent of node {node} is not running (no heartbeat)");
            return unanswered(&req, &why);
        }
        Some(hb) => match &hb.endpoint {
            Some(e) => e.clone(),
            None => return unanswered(&req, &format!("the agent of node {node} has no endpoint")),
        },
    };
    let sent = agents
        .http()
        .post(format!("https://{endpoint}/verify"))
        .header(crate::logs::USER_HEADER, user)
        .timeout(AGENT_DEADLINE)
        .json(&req)
        .send()
        .await;
    let failed = |why: String| unanswered(&req, &format!("the agent of node {node}: {why}"));
    let resp = match sent {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return failed(format!("no answer within {}s", AGENT_DEADLINE.as_secs()));
        }
        Err(e) => {
            return failed(format!(
                "unreachable at {endpoint}: {}",
                crate::logs::error_detail(&e)
            ));
        }
    };
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return failed(format!("answered {status}: {}", text.trim()));
    }
    match resp.json::<VerifyReport>().await {
        Ok(r) => r.checks,
        Err(e) => failed(format!(
            "unreadable answer: {}",
            crate::logs::error_detail(&e)
        )),
    }
}

/// Writes the conditions (plain puts: only this key family holds them, and the leader
/// folds it).
async fn record(st: &AppState, conditions: &[(String, Condition)]) -> Result<(), ApiErr> {
    for chunk in conditions.chunks(WRITES_PER_TXN) {
        let mut ops = Vec::with_capacity(chunk.len());
        for (name, cond) in chunk {
            let key = keys::verified(Kind::Container, name);
            let value = serde_json::to_string(cond).map_err(|e| {
                err(
                    ErrorReason::InternalError,
                    format!("failed to encode {key}: {e}"),
                )
            })?;
            ops.push(TxnOp::put(key, value, None));
        }
        let mut kv = st.client.kv_client();
        let txn = Txn::new().and_then(ops);
        tokio::time::timeout(st.etcd_timeout, kv.txn(txn))
            .await
            .map_err(|_| "timed out".to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|e| {
                err(
                    ErrorReason::ServiceUnavailable,
                    format!("etcd unavailable: failed to record the Verified conditions: {e}"),
                )
            })?;
    }
    Ok(())
}

/// `POST .../verify` (authorized by the guard).
pub async fn verify(
    State(st): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    Extension(agents): Extension<Arc<AgentClient>>,
    Extension(id): Extension<crate::auth::Identity>,
) -> Result<Response, ApiErr> {
    if let Some(k) = q.keys().find(|k| k.as_str() != "labelSelector") {
        return Err(err(
            ErrorReason::BadRequest,
            format!("unknown verify option {k:?} (labelSelector)"),
        ));
    }
    let selector = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| err(ErrorReason::BadRequest, e))?;
    let snap = st.cache.current();
    let plan = plan(&snap, &selector);
    let asks = plan
        .requests
        .into_values()
        .map(|req| ask(&agents, &snap, req, &id.user));
    let mut checks: Vec<Check> = futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect();
    drop(snap);
    checks.sort_by(|a, b| {
        (&a.container, a.kind, &a.subject).cmp(&(&b.container, b.kind, &b.subject))
    });
    let conditions = fold(&plan.selected, &checks, Utc::now());
    record(&st, &conditions).await?;
    tracing::info!(
        user = %id.user,
        containers = plan.selected.len(),
        checks = checks.len(),
        failed = checks.iter().filter(|c| !c.passed).count(),
        "verified the dataplane"
    );
    Ok(crate::reply::json_response(
        axum::http::StatusCode::OK,
        &VerifyReport { checks },
    ))
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
