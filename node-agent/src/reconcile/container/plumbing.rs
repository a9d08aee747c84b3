//! A running container's plumbing: one veth pair per attachment (address, MTU, route,
//! offload) and the host end's port on its network's bridge.
//!
//! Two plans, applied in this order: the veths ([`plan_veths`]), then the ports
//! ([`plan_ports`]). A veth pair made anew needs its port re-added in a transaction of its
//! own: ovs-vswitchd's userspace datapath keeps its handle on the deleted device of that
//! name, so the port must leave the datapath before it comes back.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;

use topo_schema::kinds::{Kind, ObjectRef};
use topo_schema::slice::{AttachmentEntry, ContainerEntry, owner};
use tracing::Instrument;

use super::super::bridge;
use super::super::context::Context;
use super::super::drift::Drift;
use super::super::error::ReconcileError;
use super::super::executor::Change;
use crate::backend::{
    Claim, ContainerNs, Interfaces, ObservedAttachment, OvsChange, OvsState, PortKind, arp,
};
use crate::error_chain::error_chain;

#[derive(Debug, Default, PartialEq)]
pub struct VethPlan {
    /// Attachments to make as wanted, then host veths of attachments the entry dropped.
    pub changes: Vec<Change>,
    /// Host veths whose pair is made anew (their port must be re-added).
    pub new_pairs: Vec<String>,
    /// Host veths whose interface changes: announced once their port is on the bridge.
    pub replumbed: BTreeSet<String>,
    pub drift: Vec<Drift>,
}

/// `observed[i]` is what the host holds of `c.attachments[i]`; the attachments whose host
/// veth is in `withheld` are made without their address (another host answers for it), and
/// are not announced.
pub fn plan_veths(
    c: &ContainerEntry,
    previous: Option<&ContainerEntry>,
    ns: &ContainerNs,
    observed: &[ObservedAttachment],
    withheld: &BTreeSet<String>,
) -> VethPlan {
    let mut plan = VethPlan::default();
    for (att, o) in c.attachments.iter().zip(observed) {
        let withhold_address = withheld.contains(&att.host_veth);
        let diffs = if withhold_address {
            o.differences_unaddressed(att)
        } else {
            o.differences(att)
        };
        if diffs.is_empty() {
            continue;
        }
        if !withhold_address {
            plan.replumbed.insert(att.host_veth.clone());
        }
        if o.needs_new_pair() {
            plan.new_pairs.push(att.host_veth.clone());
        }
        plan.changes.push(Change::Attachment {
            container: c.name.clone(),
            ns: ns.clone(),
            attachment: att.clone(),
            withhold_address,
        });
        plan.drift.extend(diffs.into_iter().map(Drift::Attachment));
    }
    if let Some(p) = previous {
        plan.changes.extend(
            p.attachments
                .iter()
                .filter(|o| !c.attachments.iter().any(|a| a.host_veth == o.host_veth))
                .map(|o| Change::RemoveVeth {
                    name: o.host_veth.clone(),
                }),
        );
    }
    plan
}

#[derive(Debug, Default, PartialEq)]
pub struct PortsPlan {
    /// Ports of recreated veths leaving the bridge, before `changes` adds them back.
    pub readd: Vec<OvsChange>,
    /// Everything else, in one transaction.
    pub changes: Vec<OvsChange>,
}

fn system_port(att: &AttachmentEntry, object: &str) -> OvsChange {
    OvsChange::AddPort {
        bridge: att.bridge.clone(),
        name: att.host_veth.clone(),
        kind: PortKind::System,
        protected: false,
        object: object.to_string(),
    }
}

/// The OVS changes that put each attachment's host veth on its bridge and take this
/// container's ports off bridges it no longer attaches to; `recreated` veths' ports leave
/// and come back.
pub fn plan_ports(
    state: &OvsState,
    c: &ContainerEntry,
    recreated: &HashSet<String>,
) -> Result<PortsPlan, ReconcileError> {
    let object = ObjectRef::new(Kind::Container, &c.name).to_string();
    let mut plan = PortsPlan::default();
    for (bname, b) in state.bridges.iter().filter(|(_, b)| b.owned) {
        for (pname, p) in &b.ports {
            if p.owned
                && p.external_ids.get(owner::OBJECT) == Some(&object)
                && !c
                    .attachments
                    .iter()
                    .any(|a| a.bridge == *bname && a.host_veth == *pname)
            {
                plan.changes.push(OvsChange::DeletePort {
                    bridge: bname.clone(),
                    name: pname.clone(),
                });
            }
        }
    }
    for att in &c.attachments {
        let not_owned = |bridge: &str| ReconcileError::PortNotOwned {
            bridge: bridge.to_string(),
            port: att.host_veth.clone(),
        };
        match state
            .bridges
            .get(&att.bridge)
            .and_then(|b| b.ports.get(&att.host_veth))
        {
            None => {
                let leaving = plan.changes.iter().any(
                    |ch| matches!(ch, OvsChange::DeletePort { name, .. } if *name == att.host_veth),
                );
                if let Some((other, _)) = state
                    .bridges
                    .iter()
                    .find(|(n, b)| **n != att.bridge && b.ports.contains_key(&att.host_veth))
                    && !leaving
                {
                    return Err(not_owned(other));
                }
                plan.changes.push(system_port(att, &object));
            }
            Some(p) if !p.owned => return Err(not_owned(&att.bridge)),
            Some(_) if recreated.contains(&att.host_veth) => {
                plan.readd.push(OvsChange::DeletePort {
                    bridge: att.bridge.clone(),
                    name: att.host_veth.clone(),
                });
                plan.changes.push(system_port(att, &object));
            }
            Some(p) if !p.matches(&PortKind::System, false) => {
                plan.changes.push(OvsChange::UpdatePort {
                    bridge: att.bridge.clone(),
                    name: att.host_veth.clone(),
                    kind: PortKind::System,
                    protected: false,
                })
            }
            Some(_) => {}
        }
    }
    Ok(plan)
}

/// What the port changes say about the host (a re-added port of a recreated veth says
/// nothing: its veth's own drift does).
pub fn port_drift(changes: &[OvsChange], recreated: &HashSet<String>) -> Vec<Drift> {
    changes
        .iter()
        .filter_map(|ch| match ch {
            OvsChange::AddPort { name, .. } if recreated.contains(name) => None,
            OvsChange::AddPort { bridge, name, .. } => Some(Drift::PortMissing {
                bridge: bridge.clone(),
                port: name.clone(),
            }),
            OvsChange::UpdatePort { name, .. } => Some(Drift::PortChanged { port: name.clone() }),
            OvsChange::DeletePort { bridge, name } => Some(Drift::PortLeft {
                bridge: bridge.clone(),
                port: name.clone(),
            }),
            _ => None,
        })
        .collect()
}

/// The attachments of `c` whose address is probed for before it is configured
/// (`observed[i]` is what the host holds of `c.attachments[i]`, `previous` the entry last
/// put in force): those whose address making them would add and that did not hold it under
/// `previous` — the container's first plumbing on a network, a changed address. An address
/// already on its interface (a running container adopted after an agent restart) is not
/// probed, nor one a repair puts back (the pair or the address removed by hand, the
/// container restarted): the container held it already, and a repair is not held up.
pub fn to_probe<'a>(
    c: &'a ContainerEntry,
    previous: Option<&ContainerEntry>,
    observed: &[ObservedAttachment],
) -> Vec<&'a AttachmentEntry> {
    let held = |a: &AttachmentEntry| {
        previous.is_some_and(|p| {
            p.attachments
                .iter()
                .any(|b| b.host_veth == a.host_veth && b.address == a.address)
        })
    };
    c.attachments
        .iter()
        .zip(observed)
        .filter(|(a, o)| o.adds_address(a) && !held(a))
        .map(|(a, _)| a)
        .collect()
}

/// The claim that makes `att`'s address unusable, if any: one from a MAC topo did not give
/// an interface of the address's network (topo's own interfaces, on any node, answer with
/// [`assigned_mac`](crate::backend::arp::assigned_mac)s: a container moving between nodes,
/// or renumbered, is not a squatter).
pub fn conflict(att: &AttachmentEntry, claims: &[Claim]) -> Option<Claim> {
    let network = att.address.trunc();
    claims
        .iter()
        .find(|c| !arp::assigned_in(c.mac, network))
        .copied()
}

/// What the probes of a container's new addresses heard.
#[derive(Debug, Default)]
pub struct Probed {
    /// By host veth: the address another host answers for, as the error to return.
    conflicts: Vec<(String, ReconcileError)>,
    /// Attachments whose address nobody answered for.
    free: Vec<AttachmentEntry>,
}

/// Probes every address `c`'s plumbing would add, all at once.
async fn probe_addresses(
    ctx: &Context,
    c: &ContainerEntry,
    previous: Option<&ContainerEntry>,
    observed: &[ObservedAttachment],
) -> Result<Probed, ReconcileError> {
    let wanted = to_probe(c, previous, observed);
    let mut probed = Probed::default();
    if wanted.is_empty() {
        return Ok(probed);
    }
    let exec = ctx.executor();
    let started = std::time::Instant::now();
    let heard = join_all(wanted.iter().map(|a| exec.probe(&c.name, a))).await;
    let (probe_ms, addresses) = (started.elapsed().as_secs_f64() * 1000.0, wanted.len());
    for (att, claims) in wanted.into_iter().zip(heard) {
        let claims = claims?;
        tracing::debug!(address = %att.address, ?claims, "probe answered");
        match conflict(att, &claims) {
            Some(claim) => {
                let err = ReconcileError::AddressConflict {
                    container: c.name.clone(),
                    interface: att.interface.clone(),
                    address: att.address.addr().to_string(),
                    mac: claim.mac,
                    bridge: att.bridge.clone(),
                };
                probed.conflicts.push((att.host_veth.clone(), err));
            }
            None => probed.free.push(att.clone()),
        }
    }
    // Only probes that ran are timed (lab-bench reads this line).
    tracing::info!(container = %c.name, addresses, probe_ms, "addresses probed");
    Ok(probed)
}

/// Probes for a container Docker is about to create, meanwhile: its interfaces will all be
/// new, so the addresses are those [`to_probe`] picks from nothing.
pub async fn probe_ahead(
    ctx: &Context,
    c: &ContainerEntry,
    previous: Option<&ContainerEntry>,
) -> Result<Probed, ReconcileError> {
    let fresh = vec![ObservedAttachment::default(); c.attachments.len()];
    probe_addresses(ctx, c, previous, &fresh).await
}

/// Whether `d` is `att`'s address (or the default route that needs it) missing.
fn is_address_drift(d: &Drift, att: &AttachmentEntry) -> bool {
    use crate::backend::AttachmentDrift as D;
    matches!(d, Drift::Attachment(
        D::AddressMissing { interface, .. } | D::DefaultRouteMissing { interface, .. }
    ) if *interface == att.interface)
}

/// Remembers the withheld addresses; of the free ones, those withheld until now are
/// announced as claimed (an event) and their taking is not drift.
async fn record_claims(ctx: &Context, c: &ContainerEntry, probed: &Probed, drift: &mut Vec<Drift>) {
    for (veth, _) in &probed.conflicts {
        ctx.set_withheld(veth, true);
    }
    for att in probed.free.iter().filter(|a| ctx.is_withheld(&a.host_veth)) {
        drift.retain(|d| !is_address_drift(d, att));
        let message = format!(
            "address {} is free on bridge {}: configured on {} of container {}",
            att.address.addr(),
            att.bridge,
            att.interface,
            c.name
        );
        ctx.recorder
            .normal(
                ObjectRef::new(Kind::Container, &c.name),
                "AddressClaimed",
                message,
            )
            .await;
        ctx.set_withheld(&att.host_veth, false);
    }
}

/// Observes, plans and applies the veths and then the ports of `c` in `pid`'s namespace.
/// Returns what differed; announces the replumbed attachments once their ports are in place.
/// An address another host answers for is left off its interface (the rest is made) and
/// the first such conflict is the error. `ahead`: the probes already made while the
/// container was created; `fresh`: this reconcile created the container.
pub async fn converge(
    ctx: &Context,
    c: &ContainerEntry,
    previous: Option<&ContainerEntry>,
    ns: &ContainerNs,
    ahead: Option<Probed>,
    fresh: bool,
) -> Result<Vec<Drift>, ReconcileError> {
    let exec = ctx.executor();
    let started = Instant::now();
    let object = ObjectRef::new(Kind::Container, &c.name).to_string();
    let veth_ports: Vec<String> = c.attachments.iter().map(|a| a.host_veth.clone()).collect();
    let state = exec.switch_for(&object, &veth_ports).await?;
    for att in &c.attachments {
        bridge::check_ready(&state, &att.bridge)?;
    }
    let switch_ms = ms_since(started);
    // A container this reconcile created has nothing in its namespace but `lo` (Docker made
    // it without a network): entering the namespace to look (a thread, a netlink
    // connection, dumps) would only find every attachment missing, which is what
    // `default` says. The ensure that follows looks for itself before it changes anything.
    let observed = if fresh {
        vec![ObservedAttachment::default(); c.attachments.len()]
    } else {
        let mut observed = Vec::with_capacity(c.attachments.len());
        for att in &c.attachments {
            observed.push(exec.attachment(&c.name, ns, att).await?);
        }
        observed
    };
    let mut probed = match ahead {
        Some(p) => p,
        None => probe_addresses(ctx, c, previous, &observed).await?,
    };
    let withheld: BTreeSet<String> = probed.conflicts.iter().map(|(v, _)| v.clone()).collect();
    let veths = plan_veths(c, previous, ns, &observed, &withheld);
    ctx.mark_stale_ports(veths.new_pairs.iter().cloned());
    let observe_ms = ms_since(started);
    let veths_started = Instant::now();
    exec.apply(veths.changes).await?;
    let veths_ms = ms_since(veths_started);
    let veth_names: Vec<&String> = c.attachments.iter().map(|a| &a.host_veth).collect();
    let recreated = ctx.stale_ports(veth_names.iter().copied());
    let ports = plan_ports(&state, c, &recreated)?;
    tracing::debug!(?recreated, ?ports, "container ports");
    let mut drift = veths.drift;
    drift.extend(port_drift(&ports.changes, &recreated));
    let mut replumbed = veths.replumbed;
    let ports_started = Instant::now();
    replumbed.extend(ports.changes.iter().filter_map(|ch| match ch {
        OvsChange::AddPort { name, .. } | OvsChange::UpdatePort { name, .. } => Some(name.clone()),
        _ => None,
    }));
    exec.apply(vec![
        Change::SwitchSettled {
            what: format!("stale ports of container {}", c.name),
            changes: ports.readd,
        },
        Change::Switch {
            what: format!("ports of container {}", c.name),
            changes: ports.changes,
        },
    ])
    .await?;
    // Where a container's plumbing time goes (peers-bench reads this line at debug level).
    let ports_ms = ms_since(ports_started);
    tracing::debug!(
        container = %c.name,
        switch_ms,
        observe_ms,
        veths_ms,
        ports_ms,
        "plumbing steps"
    );
    ctx.clear_stale_ports(veth_names);
    // A withheld address is never announced, whatever else changed on its attachment.
    let announce: Vec<AttachmentEntry> = c
        .attachments
        .iter()
        .filter(|a| replumbed.contains(&a.host_veth) && !withheld.contains(&a.host_veth))
        .cloned()
        .collect();
    if !announce.is_empty() {
        spawn_announcements(ctx.backends.interfaces.clone(), &c.name, ns, announce);
    }
    record_claims(ctx, c, &probed, &mut drift).await;
    if !probed.conflicts.is_empty() {
        return Err(probed.conflicts.swap_remove(0).1);
    }
    Ok(drift)
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// When the gratuitous ARPs of a replumbed attachment go out, counted from the moment its
/// port is on the bridge: peers that missed the first (a frame lost while the datapath
/// settles) get another.
const ANNOUNCE_AT: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(200),
    Duration::from_secs(1),
];

/// Announces the attachments' addresses from the container (a moved or restarted container
/// keeps its address but not its MAC: peers would keep the old one until their ARP entry
/// expires). In the background: the reconcile does not wait for the later rounds.
fn spawn_announcements(
    interfaces: Arc<dyn Interfaces>,
    container: &str,
    ns: &ContainerNs,
    atts: Vec<AttachmentEntry>,
) {
    let span = tracing::debug_span!("announce", container = %container, pid = ns.pid);
    let ns = ns.clone();
    tokio::spawn(
        async move {
            let start = tokio::time::Instant::now();
            for at in ANNOUNCE_AT {
                tokio::time::sleep_until(start + at).await;
                for att in &atts {
                    if let Err(e) = interfaces.announce(&ns, att).await {
                        // The container went away or was replumbed again: that reconcile
                        // announces for itself.
                        tracing::debug!(interface = %att.interface, error = %error_chain(&e), "gratuitous ARP not sent");
                        return;
                    }
                }
            }
        }
        .instrument(span),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::fake::{healthy_attachment, unaddressed_attachment};
    use crate::backend::{AttachmentDrift, ClaimKind, Mac};
    use crate::reconcile::fixtures::{add_bridge, container as entry, switch};

    #[test]
    fn the_veth_plan_by_what_the_host_holds() {
        let c = entry("web", &["ov"]);
        let att = &c.attachments[0];
        let healthy = healthy_attachment(att);
        let mut no_address = healthy.clone();
        if let Some(p) = no_address.peer.as_mut() {
            p.addresses.clear();
        }
        let missing = ObservedAttachment::default();
        let ns = ContainerNs::new(7, "c1");
        let ensure = Change::Attachment {
            container: "web".into(),
            ns: ns.clone(),
            attachment: att.clone(),
            withhold_address: false,
        };
        // observed → (changes, new pair, drift)
        let table = [
            (healthy.clone(), vec![], false, vec![]),
            (
                no_address,
                vec![ensure.clone()],
                false,
                vec![Drift::Attachment(AttachmentDrift::AddressMissing {
                    interface: "eth0".into(),
                    address: att.address,
                })],
            ),
            (
                missing,
                vec![ensure],
                true,
                vec![Drift::Attachment(AttachmentDrift::HostVethMissing {
                    veth: att.host_veth.clone(),
                })],
            ),
        ];
        for (o, changes, new_pair, drift) in table {
            let p = plan_veths(&c, None, &ns, &[o], &BTreeSet::new());
            assert_eq!(p.changes, changes);
            assert_eq!(p.new_pairs.len(), usize::from(new_pair));
            assert_eq!(p.replumbed.len(), usize::from(!drift.is_empty()));
            assert_eq!(p.drift, drift);
        }
        // An attachment the entry dropped: its host veth goes.
        let before = entry("web", &["ov", "other"]);
        let p = plan_veths(&c, Some(&before), &ns, &[healthy], &BTreeSet::new());
        assert_eq!(
            p.changes,
            vec![Change::RemoveVeth {
                name: before.attachments[1].host_veth.clone()
            }]
        );
    }

    #[test]
    fn what_is_probed_and_what_is_a_conflict() {
        let c = entry("web", &["ov"]);
        let att = &c.attachments[0];
        let healthy = healthy_attachment(att);
        let mut other_address = healthy.clone();
        if let Some(p) = other_address.peer.as_mut() {
            p.addresses = vec!["10.2.1.9/16".parse().unwrap()];
        }
        let mut mtu_only = healthy.clone();
        if let Some(p) = mtu_only.peer.as_mut() {
            p.mtu = 1500;
        }
        let mut renumbered = c.clone();
        renumbered.attachments[0].address = "10.2.1.9/16".parse().unwrap();
        // (observed, previous) → probed
        let table = [
            (ObservedAttachment::default(), None, true),
            (other_address.clone(), None, true),
            (other_address, Some(&renumbered), true),
            (healthy.clone(), None, false),
            (mtu_only, None, false),
            // A repair: the pair (or the address) went while the entry was in force.
            (ObservedAttachment::default(), Some(&c), false),
        ];
        for (o, previous, probed) in table {
            assert_eq!(
                to_probe(&c, previous, std::slice::from_ref(&o)).len(),
                usize::from(probed),
                "{o:?} after {previous:?}"
            );
        }

        let topo = |ip: &str| arp::assigned_mac(ip.parse().unwrap());
        let squatter = Mac([2, 0x42, 10, 2, 1, 5]);
        let claim = |mac| Claim {
            mac,
            kind: ClaimKind::Reply,
        };
        // claims → conflict
        let table = [
            (vec![], None),
            (vec![claim(topo("10.2.1.5"))], None),
            (vec![claim(topo("10.2.200.7"))], None),
            (vec![claim(topo("10.3.0.1"))], Some(claim(topo("10.3.0.1")))),
            (
                vec![claim(topo("10.2.1.5")), claim(squatter)],
                Some(claim(squatter)),
            ),
        ];
        for (claims, want) in table {
            assert_eq!(conflict(att, &claims), want, "{claims:?}");
        }
    }

    #[test]
    fn a_withheld_address_is_left_off_and_not_announced() {
        let c = entry("web", &["ov"]);
        let att = &c.attachments[0];
        let ns = ContainerNs::new(7, "c1");
        let withheld = BTreeSet::from([att.host_veth.clone()]);
        let p = plan_veths(&c, None, &ns, &[ObservedAttachment::default()], &withheld);
        assert_eq!(
            p.changes,
            vec![Change::Attachment {
                container: "web".into(),
                ns: ns.clone(),
                attachment: att.clone(),
                withhold_address: true,
            }]
        );
        assert_eq!(p.new_pairs, vec![att.host_veth.clone()]);
        assert!(p.replumbed.is_empty(), "nothing to announce");
        // Made without it already: nothing to do until the address is free.
        let unaddressed = unaddressed_attachment(att);
        assert_eq!(
            plan_veths(&c, None, &ns, std::slice::from_ref(&unaddressed), &withheld),
            VethPlan::default()
        );
        // Free again: the address is added.
        let p = plan_veths(&c, None, &ns, &[unaddressed], &BTreeSet::new());
        assert!(matches!(
            &p.changes[..],
            [Change::Attachment {
                withhold_address: false,
                ..
            }]
        ));
        assert!(p.replumbed.contains(&att.host_veth));
    }

    #[tokio::test]
    async fn the_port_plan_by_what_the_switch_holds() {
        let c = entry("web", &["ov"]);
        let add = system_port(&c.attachments[0], "container/web");
        let veth = c.attachments[0].host_veth.clone();
        let empty = switch(&[add_bridge("ov")]).await;
        let with_port = switch(&[add_bridge("ov"), add.clone()]).await;
        let none = HashSet::new();
        let recreated = HashSet::from([veth.clone()]);
        let leave = OvsChange::DeletePort {
            bridge: "tb-ov".into(),
            name: veth.clone(),
        };
        // (switch, recreated) → plan
        let table = [
            (
                &empty,
                &none,
                PortsPlan {
                    readd: vec![],
                    changes: vec![add.clone()],
                },
            ),
            (&with_port, &none, PortsPlan::default()),
            (
                &with_port,
                &recreated,
                PortsPlan {
                    readd: vec![leave.clone()],
                    changes: vec![add.clone()],
                },
            ),
        ];
        for (state, recreated, want) in table {
            assert_eq!(plan_ports(state, &c, recreated).unwrap(), want);
        }
        // Moved to another network: the old port leaves, the new one comes.
        let moved = entry("web", &["other"]);
        let both = switch(&[add_bridge("ov"), add_bridge("other"), add]).await;
        let p = plan_ports(&both, &moved, &none).unwrap();
        assert_eq!(
            p.changes,
            vec![leave, system_port(&moved.attachments[0], "container/web")]
        );
        assert_eq!(
            port_drift(&p.changes, &none),
            vec![
                Drift::PortLeft {
                    bridge: "tb-ov".into(),
                    port: veth.clone()
                },
                Drift::PortMissing {
                    bridge: "tb-other".into(),
                    port: veth.clone()
                }
            ]
        );
        assert!(
            port_drift(&p.changes[1..], &HashSet::from([veth])).is_empty(),
            "a re-added port says nothing of its own"
        );
    }
}
