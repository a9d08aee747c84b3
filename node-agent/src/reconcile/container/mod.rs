//! A container and its plumbing (`containers/<name>`), in phases, each observe → plan →
//! apply, each needing the one before:
//!
//! 1. [`lifecycle`]: the Docker container running with the entry's configuration (its
//!    image first, [`image`]: pulled off the worker);
//! 2. [`plumbing`]: its veth pairs in its namespace and their ports on the bridges;
//! 3. [`links`]: the link rules in its namespace;
//! 4. reports and events: what was found and done, as drift repaired (the entry was already in
//!    force, or the agent is adopting the host) or as configuration (the entry changed).
//!
//! Removal ([`remove`]) is a teardown: it goes on past failures and returns them all.

pub mod image;
pub mod lifecycle;
pub mod links;
pub mod plumbing;

use topo_schema::kinds::{Kind, ObjectRef};
use topo_schema::slice::{ContainerEntry, owner};

use super::Action;
use super::context::Context;
use super::drift::{Drift, describe, with_kinds};
use super::error::ReconcileError;
use super::executor::{Change, NatScope};
use super::hostports::Hold;
use super::{nat, reports};
use crate::backend::{OvsChange, OvsState, PortDnat};
use crate::key::Key;

/// What the phases found, sorted by what it means.
#[derive(Debug, Default)]
struct Findings {
    /// Changes made outside topo, repaired.
    repairs: Vec<Drift>,
    /// Differences that follow a changed entry.
    configured: Vec<Drift>,
}

impl Findings {
    fn found(&mut self, drift: impl IntoIterator<Item = Drift>, outside_topo: bool) {
        if outside_topo {
            self.repairs.extend(drift);
        } else {
            self.configured.extend(drift);
        }
    }
}

pub async fn reconcile(
    ctx: &Context,
    c: &ContainerEntry,
    previous: Option<&ContainerEntry>,
) -> Result<Action, ReconcileError> {
    // A difference found while the entry is the one in force (or on adoption, when the agent
    // has not applied anything yet) was made outside topo.
    let outside_topo = previous.is_none_or(|p| p == c);
    let mut findings = Findings::default();

    let mut running = lifecycle::converge(ctx, c, previous).await?;
    let restarted = running.restarted.is_some();
    findings.repairs.extend(running.restarted.clone());
    let restarts = ctx.restart_state(&c.name, &running.container.id).await;

    let probed = running.probed.take();
    let plumbing = plumbing::converge(ctx, c, previous, &running.ns, probed, running.created).await;
    if running.created {
        lifecycle::record_started(ctx, c, &running.container.id).await;
    }
    let plumbing = plumbing?;
    if !running.created {
        findings.found(plumbing, outside_topo);
    }

    let exec = ctx.executor();
    let links_started = std::time::Instant::now();
    let scope = NatScope::Container {
        name: c.name.clone(),
        ns: running.ns.clone(),
    };
    let observed = exec.nat(&scope).await?;
    let links = links::plan(c, previous, &observed, running.created, restarted);
    if let Some(rules) = links.apply {
        exec.run(Change::Nat { scope, rules }).await?;
    }
    findings.repairs.extend(links.drift);
    findings.configured.extend(links.configured);

    if let Some((docker_time, docker_done)) = running.docker_time {
        tracing::info!(
            container = %c.name,
            docker_ms = docker_time.as_secs_f64() * 1000.0,
            plumbing_ms = docker_done.elapsed().as_secs_f64() * 1000.0,
            links_ms = links_started.elapsed().as_secs_f64() * 1000.0,
            "container started and plumbed"
        );
    }

    let reporting = std::time::Instant::now();
    let held = held_ports(ctx, c).await?;
    let programmed = links::rules(c).links.len();
    let report = reports::container_running(
        c,
        &ctx.node,
        &running.container.id,
        restarts.count,
        programmed,
        &held,
    );
    ctx.reporter
        .sync(&Key::Container(c.name.clone()), report)
        .await
        .map_err(|source| ReconcileError::Report { source })?;
    let reported = reporting.elapsed();
    record(ctx, c, findings, links.rewired).await;
    let recorded = reporting.elapsed();
    // From now on a change inside the container's namespace is heard at once.
    ctx.watches.ensure(&c.name, &running.ns).await;
    tracing::debug!(
        container = %c.name,
        report_ms = reported.as_secs_f64() * 1000.0,
        events_ms = (recorded - reported).as_secs_f64() * 1000.0,
        watch_ms = (reporting.elapsed() - recorded).as_secs_f64() * 1000.0,
        "container reported"
    );
    Ok(Action::AwaitChange)
}

/// The container's published ports the node cannot give yet: as the last NAT pass judged
/// them, or (ports it has not judged: a new container) judged here the same way, so the
/// first status already says so.
async fn held_ports(ctx: &Context, c: &ContainerEntry) -> Result<Vec<Hold>, ReconcileError> {
    let mine: Vec<PortDnat> = c.ports.iter().map(PortDnat::from).collect();
    if mine.is_empty() {
        return Ok(vec![]);
    }
    if let Some(holds) = ctx.judged_holds(&c.name, &mine) {
        return Ok(holds);
    }
    let observed = ctx.executor().nat(&NatScope::Node).await?;
    let published: Vec<(String, PortDnat)> =
        mine.into_iter().map(|p| (c.name.clone(), p)).collect();
    let mut holds = nat::judge_ports(ctx, &published, &observed).await?;
    Ok(holds.remove(&c.name).unwrap_or_default())
}

async fn record(ctx: &Context, c: &ContainerEntry, f: Findings, rewired: Vec<(String, String)>) {
    let object = ObjectRef::new(Kind::Container, &c.name);
    if !f.repairs.is_empty() {
        let text = format!("container {}: {}; repaired", c.name, describe(&f.repairs));
        let message = with_kinds(text, &f.repairs);
        ctx.recorder
            .warning(object.clone(), "DriftRepaired", message)
            .await;
    }
    if !f.configured.is_empty() {
        ctx.recorder
            .normal(object, "Configured", describe(&f.configured))
            .await;
    }
    for (link, message) in rewired {
        ctx.recorder
            .normal(ObjectRef::new(Kind::Link, link), "LinkProgrammed", message)
            .await;
    }
}

/// The ports of `c` to remove from the switch: its own (by owner) and those named by its
/// attachments.
pub fn plan_port_removal(c: &ContainerEntry, state: &OvsState) -> Vec<OvsChange> {
    let object = ObjectRef::new(Kind::Container, &c.name).to_string();
    state
        .bridges
        .iter()
        .filter(|(_, b)| b.owned)
        .flat_map(|(bname, b)| {
            b.ports
                .iter()
                .filter(|(pname, p)| {
                    p.owned
                        && (p.external_ids.get(owner::OBJECT) == Some(&object)
                            || c.attachments
                                .iter()
                                .any(|a| a.bridge == *bname && a.host_veth == **pname))
                })
                .map(|(pname, _)| OvsChange::DeletePort {
                    bridge: bname.clone(),
                    name: pname.clone(),
                })
        })
        .collect()
}

/// The entry left the slice: the container, its host veths (usually gone with its
/// namespace) and its ports go, each whatever the others do.
pub async fn remove(ctx: &Context, c: &ContainerEntry) -> Result<(), ReconcileError> {
    // Its end is no news: the watch must not queue the key when the process exits.
    ctx.watches.forget(&c.name);
    let exec = ctx.executor();
    let mut errors = Vec::new();
    match exec.container(&c.docker_name).await {
        Ok(Some(o)) => match ctx.remove_container(&c.name, &o.id).await {
            Ok(()) => {
                let message = format!(
                    "container {} ({}) removed from {}",
                    c.docker_name,
                    lifecycle::short_id(&o.id),
                    ctx.node
                );
                ctx.recorder
                    .normal(ObjectRef::new(Kind::Container, &c.name), "Removed", message)
                    .await;
            }
            Err(e) => errors.push(e),
        },
        Ok(None) => {}
        Err(e) => errors.push(e),
    }
    let veths = c.attachments.iter().map(|a| Change::RemoveVeth {
        name: a.host_veth.clone(),
    });
    errors.extend(exec.teardown(veths.collect()).await);
    match exec.switch().await {
        Ok(state) => {
            let ports = Change::Switch {
                what: format!("ports of container {}", c.name),
                changes: plan_port_removal(c, &state),
            };
            errors.extend(exec.teardown(vec![ports]).await);
        }
        Err(e) => errors.push(e),
    }
    if !c.ports.is_empty() {
        // Its published ports leave the node's table (and may free a port held for another).
        ctx.queue.add(Key::Nat);
    }
    ReconcileError::teardown(errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::PortKind;
    use crate::reconcile::fixtures::{add_bridge, container, switch};

    #[tokio::test]
    async fn removal_takes_the_containers_ports_and_nothing_else() {
        let c = container("web", &["ov"]);
        let att = c.attachments[0].clone();
        let port = |name: &str, object: &str| OvsChange::AddPort {
            bridge: "tb-ov".into(),
            name: name.into(),
            kind: PortKind::System,
            protected: false,
            object: object.into(),
        };
        let state = switch(&[
            add_bridge("ov"),
            port(&att.host_veth, "container/web"),
            port("tv-web-eth9", "container/web"),
            port("tv-db-eth0", "container/db"),
        ])
        .await;
        let planned = plan_port_removal(&c, &state);
        let delete = |name: &str| OvsChange::DeletePort {
            bridge: "tb-ov".into(),
            name: name.into(),
        };
        let mut want = vec![delete(&att.host_veth), delete("tv-web-eth9")];
        want.sort_by_key(|ch| format!("{ch:?}"));
        assert_eq!(planned, want, "its own ports, not db's nor the bridge's");
    }
}
