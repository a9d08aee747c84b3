//! IPAM: which node leases which block of a network, and which container holds which address.
//!
//! Everything here is pure. [`plan`] takes the desired objects *after* a change together with
//! the blocks and addresses currently held in etcd, and returns the IPAM keys to put and delete
//! plus the resulting [`Assignment`]. The caller commits those keys in the same transaction as
//! the objects, so a crash can never leave an address handed out without its holder or the
//! other way round. [`rebuild`] is the same computation with conflicts resolved instead of
//! refused: the leader runs it when it takes over, to drop anything a bug or an interrupted
//! older version may have leaked.
//!
//! Rules (SPEC.md, Network and Container):
//! * a node hosts a network when a container on it attaches to the network or a user Tunnel
//!   of the network ends on it; each hosting node leases one block of `blockSize` (the lowest
//!   free one) and keeps it while it hosts the network;
//! * a static address may be anywhere in the cidr except a network, broadcast or gateway
//!   address, and is unique in its network;
//! * an allocated address comes from the container's node's block, lowest free first, never
//!   the block's first address or its gateway; a container keeps it across unrelated changes
//!   and gets a new one only when its node (and so its block) changes.
//!
//! Each network is planned on its own, as a `NetworkPass` whose phases run in the order of
//! these rules (cidr immutability, blocks, static claims, kept addresses, new allocations,
//! the difference to the stored keys); each phase is short enough to check against its rule.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use topo_schema::keys::{self, AddrValue, BlockValue};
use topo_schema::net;
use topo_schema::validate::FieldError;
use topo_schema::{Kind, LABEL_DERIVED_FROM, NetworkSpec, ObjectRef, Resource};

/// network → block → node, as the controller's cache holds the block keys.
pub type BlockMap = imbl::OrdMap<String, imbl::OrdMap<Ipv4Net, String>>;
/// network → address → holding container, as the controller's cache holds the address keys.
pub type AddrMap = imbl::OrdMap<String, imbl::OrdMap<Ipv4Addr, String>>;

/// Who holds what once the change is committed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// container → network → address.
    pub addresses: BTreeMap<String, BTreeMap<String, Ipv4Addr>>,
    /// network → node → block.
    pub blocks: BTreeMap<String, BTreeMap<String, Ipv4Net>>,
}

impl Assignment {
    /// Reads the assignment back from the stored keys. A holder with several addresses in one
    /// network (only possible after a leak) is given its lowest; [`rebuild`] cleans that up.
    pub fn from_state(blocks: &BlockMap, addrs: &AddrMap) -> Self {
        let mut a = Assignment::default();
        for (network, held) in addrs {
            for (ip, holder) in held {
                a.addresses
                    .entry(holder.clone())
                    .or_default()
                    .entry(network.clone())
                    .or_insert(*ip);
            }
        }
        for (network, leased) in blocks {
            for (block, node) in leased {
                a.blocks
                    .entry(network.clone())
                    .or_default()
                    .entry(node.clone())
                    .or_insert(*block);
            }
        }
        a
    }

    pub fn address(&self, container: &str, network: &str) -> Option<Ipv4Addr> {
        self.addresses.get(container)?.get(network).copied()
    }

    pub fn block(&self, network: &str, node: &str) -> Option<Ipv4Net> {
        self.blocks.get(network)?.get(node).copied()
    }

    /// Number of addresses held in `network`.
    pub fn allocated_in(&self, network: &str) -> usize {
        self.addresses
            .values()
            .filter(|m| m.contains_key(network))
            .count()
    }
}

/// The value of an IPAM key. Kept typed here and encoded where the change is committed, so
/// IPAM stays pure and an encoding failure fails the write.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum IpamValue {
    /// `{"node":..}`: the node that leases a block.
    Block(BlockValue),
    /// `{"holder":..}`: the container that holds an address.
    Addr(AddrValue),
}

impl IpamValue {
    pub fn block(node: &str) -> Self {
        IpamValue::Block(BlockValue {
            node: node.to_string(),
        })
    }

    pub fn addr(holder: &str) -> Self {
        IpamValue::Addr(AddrValue {
            holder: holder.to_string(),
        })
    }
}

/// The IPAM keys a change implies, and what they amount to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpamChanges {
    /// `(key, value)` to put.
    pub puts: Vec<(String, IpamValue)>,
    pub deletes: Vec<String>,
    /// The keys among `puts` that do not exist yet. A writer that wants flannel's per-key
    /// compare-and-swap on top of the global fence can require them absent.
    pub created: Vec<String>,
    pub assignment: Assignment,
}

impl IpamChanges {
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty()
    }
}

/// What [`rebuild`] found: the changes that make the stored keys match the specs, and what
/// could not be satisfied (those containers stay without an address until fixed).
#[derive(Debug, Clone, Default)]
pub struct Rebuild {
    pub changes: IpamChanges,
    pub problems: Vec<(ObjectRef, FieldError)>,
}

/// Computes the IPAM keys for the desired state after a change.
///
/// `desired` is every object that will exist (derived tunnels are ignored), `changed` the
/// objects the change creates, updates or deletes: when something cannot be satisfied the
/// error goes to a changed object where one is involved, and an untouched container never
/// loses its address to a changed one. Call it after validation passed: it does not repeat
/// reference checks (unknown networks are skipped), only what needs the stored state.
pub fn plan<'a>(
    desired: impl IntoIterator<Item = &'a Resource>,
    changed: &[ObjectRef],
    blocks: &BlockMap,
    addrs: &AddrMap,
) -> Result<IpamChanges, Vec<(ObjectRef, FieldError)>> {
    let changed: BTreeSet<&ObjectRef> = changed.iter().collect();
    let (changes, errors) = compute(desired, &|r: &ObjectRef| changed.contains(r), blocks, addrs);
    if errors.is_empty() {
        Ok(changes)
    } else {
        Err(errors)
    }
}

/// Recomputes every IPAM key from the specs and returns the difference to the stored keys:
/// addresses and blocks whose holder no longer exists or no longer matches are released,
/// holders that lost theirs get new ones. Conflicts are resolved, not refused: a static
/// address wins over an allocated one, and among equal claims the current holder wins.
pub fn rebuild<'a>(
    desired: impl IntoIterator<Item = &'a Resource>,
    blocks: &BlockMap,
    addrs: &AddrMap,
) -> Rebuild {
    let (changes, problems) = compute(desired, &|_: &ObjectRef| true, blocks, addrs);
    Rebuild { changes, problems }
}

// ------------------------------------------------------------------------------------------

/// One attachment of a container to a network.
#[derive(Debug, Clone, Copy)]
struct Attach<'a> {
    container: &'a str,
    node: &'a str,
    /// Index in `spec.networks`, for error field paths.
    index: usize,
    ip: Option<Ipv4Addr>,
}

impl Attach<'_> {
    fn object(&self) -> ObjectRef {
        ObjectRef::new(Kind::Container, self.container)
    }
    fn error(&self, field: &str, message: String) -> (ObjectRef, FieldError) {
        (
            self.object(),
            FieldError {
                field: format!("spec.networks[{}].{field}", self.index),
                message,
            },
        )
    }
}

struct NetworkWork<'a> {
    spec: &'a NetworkSpec,
    attaches: Vec<Attach<'a>>,
    /// node → the objects that make it host the network (containers and tunnels).
    hosting: BTreeMap<&'a str, Vec<ObjectRef>>,
}

type Errors = Vec<(ObjectRef, FieldError)>;

fn compute<'a>(
    desired: impl IntoIterator<Item = &'a Resource>,
    is_changed: &dyn Fn(&ObjectRef) -> bool,
    cur_blocks: &BlockMap,
    cur_addrs: &AddrMap,
) -> (IpamChanges, Errors) {
    let mut errors = Errors::new();
    let networks = gather(desired, &mut errors);
    let mut out = IpamChanges::default();
    for (name, work) in &networks {
        plan_network(
            name,
            work,
            is_changed,
            cur_blocks.get(*name),
            cur_addrs.get(*name),
            &mut out,
            &mut errors,
        );
    }
    // A deleted network releases everything it held.
    for (network, leased) in cur_blocks {
        if !networks.contains_key(network.as_str()) {
            out.deletes
                .extend(leased.keys().map(|b| keys::ipam_block(network, *b)));
        }
    }
    for (network, held) in cur_addrs {
        if !networks.contains_key(network.as_str()) {
            out.deletes
                .extend(held.keys().map(|ip| keys::ipam_addr(network, *ip)));
        }
    }
    (out, errors)
}

/// Per network, the attachments of containers (in name order, a network attached twice
/// refused) and the nodes that host it.
fn gather<'a>(
    desired: impl IntoIterator<Item = &'a Resource>,
    errors: &mut Errors,
) -> BTreeMap<&'a str, NetworkWork<'a>> {
    let mut networks: BTreeMap<&'a str, NetworkWork<'a>> = BTreeMap::new();
    let mut containers = Vec::new();
    let mut tunnels = Vec::new();
    for r in desired {
        match r {
            Resource::Network(n) => {
                networks.insert(
                    n.metadata.name.as_str(),
                    NetworkWork {
                        spec: &n.spec,
                        attaches: vec![],
                        hosting: BTreeMap::new(),
                    },
                );
            }
            Resource::Container(c) => containers.push(c),
            Resource::Tunnel(t) if !t.metadata.labels.contains_key(LABEL_DERIVED_FROM) => {
                tunnels.push(t)
            }
            _ => {}
        }
    }
    containers.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for c in containers {
        let mut seen = BTreeSet::new();
        for (index, a) in c.spec.networks.iter().enumerate() {
            let Some(work) = networks.get_mut(a.network.as_str()) else {
                continue;
            };
            let attach = Attach {
                container: &c.metadata.name,
                node: &c.spec.node,
                index,
                ip: a.ip,
            };
            if !seen.insert(a.network.as_str()) {
                errors.push(attach.error(
                    "network",
                    format!(
                        "container is attached to network {} more than once",
                        a.network
                    ),
                ));
                continue;
            }
            work.hosting
                .entry(&c.spec.node)
                .or_default()
                .push(attach.object());
            work.attaches.push(attach);
        }
    }
    for t in tunnels {
        let Some(work) = networks.get_mut(t.spec.network.as_str()) else {
            continue;
        };
        for node in t.spec.nodes.iter().chain(t.spec.node.iter()) {
            work.hosting
                .entry(node.as_str())
                .or_default()
                .push(ObjectRef::new(Kind::Tunnel, &t.metadata.name));
        }
    }
    networks
}

/// The block's address range may hand `ip` out (not its first address, not its gateway, not
/// the cidr's broadcast address).
fn allocatable_in(cidr: Ipv4Net, block: Ipv4Net, ip: Ipv4Addr) -> bool {
    let first = u32::from(block.network()).saturating_add(2);
    block.contains(&ip) && u32::from(ip) >= first && ip != cidr.broadcast()
}

fn block_fits(spec: &NetworkSpec, block: Ipv4Net) -> bool {
    block.prefix_len() == spec.block_size
        && net::block_of(spec.cidr, spec.block_size, block.addr()) == Some(block)
}

/// Picks who gets the error among the objects involved: the changed ones, or all of them
/// when none changed (the state itself cannot be satisfied).
fn blame(objects: &[ObjectRef], is_changed: &dyn Fn(&ObjectRef) -> bool) -> Vec<ObjectRef> {
    let changed: Vec<ObjectRef> = objects.iter().filter(|o| is_changed(o)).cloned().collect();
    if changed.is_empty() {
        objects.to_vec()
    } else {
        changed
    }
}

/// One network's IPAM pass, in the order its phases run: the immutability check, blocks,
/// static claims, kept addresses, new allocations, then the difference to the stored keys.
struct NetworkPass<'a, 'p> {
    name: &'p str,
    work: &'p NetworkWork<'a>,
    spec: &'a NetworkSpec,
    is_changed: &'p dyn Fn(&ObjectRef) -> bool,
    cur_blocks: &'p imbl::OrdMap<Ipv4Net, String>,
    cur_addrs: &'p imbl::OrdMap<Ipv4Addr, String>,
    /// The containers attached to the network.
    attached: BTreeSet<&'a str>,
    errors: &'p mut Errors,
}

/// Addresses of one network once every claim is settled: address → container.
type Addresses<'a> = BTreeMap<Ipv4Addr, &'a str>;

fn plan_network<'a>(
    name: &str,
    work: &NetworkWork<'a>,
    is_changed: &dyn Fn(&ObjectRef) -> bool,
    cur_blocks: Option<&imbl::OrdMap<Ipv4Net, String>>,
    cur_addrs: Option<&imbl::OrdMap<Ipv4Addr, String>>,
    out: &mut IpamChanges,
    errors: &mut Errors,
) {
    let Some(block_count) = net::block_count(work.spec.cidr, work.spec.block_size) else {
        // An invalid spec is validation's to report; its stored keys are left alone.
        return;
    };
    let empty_blocks = imbl::OrdMap::new();
    let empty_addrs = imbl::OrdMap::new();
    let mut pass = NetworkPass {
        name,
        work,
        spec: work.spec,
        is_changed,
        cur_blocks: cur_blocks.unwrap_or(&empty_blocks),
        cur_addrs: cur_addrs.unwrap_or(&empty_addrs),
        attached: work.attaches.iter().map(|a| a.container).collect(),
        errors,
    };
    if !pass.cidr_change_allowed() {
        return;
    }
    let node_block = pass.lease_blocks(block_count);
    let mut statics = pass.static_claims();
    let kept = pass.kept_addresses(&node_block, &mut statics);
    let addresses = pass.allocate(&node_block, &statics, &kept);
    pass.record(&node_block, &addresses, out);
}

impl<'a, 'p> NetworkPass<'a, 'p> {
    /// cidr and blockSize are immutable while anyone still holds an address under them.
    fn cidr_change_allowed(&mut self) -> bool {
        let (name, spec, cidr) = (self.name, self.spec, self.spec.cidr);
        let network_ref = ObjectRef::new(Kind::Network, name);
        if !(self.is_changed)(&network_ref) {
            return true;
        }
        let stale_block = self.cur_blocks.keys().any(|b| !block_fits(spec, *b));
        let stale_addr = self.cur_addrs.keys().any(|ip| !cidr.contains(ip));
        let holders: BTreeSet<&str> = self
            .cur_addrs
            .values()
            .map(String::as_str)
            .filter(|h| self.attached.contains(h))
            .collect();
        if !(stale_block || stale_addr) || holders.is_empty() {
            return true;
        }
        let listed: Vec<String> = holders
            .iter()
            .take(5)
            .map(|h| format!("container/{h}"))
            .collect();
        let more = holders.len().saturating_sub(listed.len());
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        self.errors.push((
            network_ref,
            FieldError {
                field: if stale_addr {
                    "spec.cidr"
                } else {
                    "spec.blockSize"
                }
                .to_string(),
                message: format!(
                    "cannot change the cidr or blockSize of network {name} while addresses \
                     are allocated (held by {}{more})",
                    listed.join(", ")
                ),
            },
        ));
        false
    }

    /// Blocks: hosting nodes keep theirs, newcomers take the lowest free one.
    fn lease_blocks(&mut self, block_count: u64) -> BTreeMap<&'a str, Ipv4Net> {
        let (spec, cidr) = (self.spec, self.spec.cidr);
        let mut node_block: BTreeMap<&'a str, Ipv4Net> = BTreeMap::new();
        let mut leased: BTreeSet<Ipv4Net> = BTreeSet::new();
        let work = self.work;
        for (block, node) in self.cur_blocks {
            if let Some((node, _)) = work.hosting.get_key_value(node.as_str())
                && !node_block.contains_key(node)
                && block_fits(spec, *block)
            {
                node_block.insert(*node, *block);
                leased.insert(*block);
            }
        }
        let mut next_block = 0u64;
        for (node, objects) in &work.hosting {
            if node_block.contains_key(node) {
                continue;
            }
            let mut found = None;
            while next_block < block_count {
                let candidate = net::block_at(cidr, spec.block_size, next_block);
                next_block += 1;
                if let Some(b) = candidate
                    && !leased.contains(&b)
                {
                    found = Some(b);
                    break;
                }
            }
            match found {
                Some(b) => {
                    node_block.insert(*node, b);
                    leased.insert(b);
                }
                None => self.no_block_left(node, objects, block_count),
            }
        }
        node_block
    }

    fn no_block_left(&mut self, node: &str, objects: &[ObjectRef], block_count: u64) {
        let (name, cidr) = (self.name, self.spec.cidr);
        for o in blame(objects, self.is_changed) {
            let field = match o.kind {
                Kind::Container => self
                    .work
                    .attaches
                    .iter()
                    .find(|a| a.container == o.name)
                    .map(|a| format!("spec.networks[{}].network", a.index))
                    .unwrap_or_else(|| "spec.networks".to_string()),
                _ => "spec.network".to_string(),
            };
            self.errors.push((
                o,
                FieldError {
                    field,
                    message: format!(
                        "network {name} ({cidr}) has no free /{} block left for node \
                         {node}: all {block_count} blocks are leased",
                        self.spec.block_size
                    ),
                },
            ));
        }
    }

    /// Static claims: unique in the network, never a reserved address. An unchanged
    /// claimant wins, then the current holder, then the first.
    fn static_claims(&mut self) -> BTreeMap<Ipv4Addr, &'p Attach<'a>> {
        let (name, cidr) = (self.name, self.spec.cidr);
        let mut claims: BTreeMap<Ipv4Addr, Vec<&'p Attach<'a>>> = BTreeMap::new();
        let work = self.work;
        for a in &work.attaches {
            let Some(ip) = a.ip else { continue };
            if let Some(reason) = net::reserved_reason(cidr, self.spec.block_size, ip) {
                self.errors.push(a.error("ip", format!("{ip} {reason}")));
                continue;
            }
            claims.entry(ip).or_default().push(a);
        }
        let mut statics = BTreeMap::new();
        for (ip, claimants) in claims {
            let winner = claimants
                .iter()
                .find(|a| !(self.is_changed)(&a.object()))
                .or_else(|| {
                    claimants
                        .iter()
                        .find(|a| self.cur_addrs.get(&ip).map(String::as_str) == Some(a.container))
                })
                .or(claimants.first())
                .copied();
            let Some(winner) = winner else { continue };
            for a in claimants.iter().filter(|a| a.container != winner.container) {
                self.errors.push(a.error(
                    "ip",
                    format!(
                        "{ip} is already held by container/{} in network {name}",
                        winner.container
                    ),
                ));
            }
            statics.insert(ip, winner);
        }
        statics
    }

    /// Allocated addresses a container may keep (one it holds inside its node's block), as
    /// address → container. A static claim on a kept address: an untouched holder keeps it
    /// (the claim is refused, naming it and dropped from `statics`); a changed holder gives
    /// it up and gets another.
    fn kept_addresses(
        &mut self,
        node_block: &BTreeMap<&'a str, Ipv4Net>,
        statics: &mut BTreeMap<Ipv4Addr, &'p Attach<'a>>,
    ) -> Addresses<'a> {
        let cidr = self.spec.cidr;
        let mut held_by: BTreeMap<&str, Vec<Ipv4Addr>> = BTreeMap::new();
        for (ip, holder) in self.cur_addrs {
            if self.attached.contains(holder.as_str()) {
                held_by.entry(holder.as_str()).or_default().push(*ip);
            }
        }
        let mut kept_ips: Addresses<'a> = BTreeMap::new();
        for a in self.work.attaches.iter().filter(|a| a.ip.is_none()) {
            let Some(block) = node_block.get(a.node) else {
                continue;
            };
            let keep = held_by
                .get(a.container)
                .and_then(|ips| ips.iter().find(|ip| allocatable_in(cidr, *block, **ip)));
            if let Some(ip) = keep {
                kept_ips.insert(*ip, a.container);
            }
        }
        let mut refused: Vec<Ipv4Addr> = vec![];
        for (ip, claimant) in statics.iter() {
            let Some(holder) = kept_ips.get(ip).copied() else {
                continue;
            };
            if holder == claimant.container {
                continue;
            }
            if (self.is_changed)(&ObjectRef::new(Kind::Container, holder)) {
                kept_ips.remove(ip);
            } else {
                self.errors.push(claimant.error(
                    "ip",
                    format!(
                        "{ip} is already held by container/{holder} in network {}",
                        self.name
                    ),
                ));
                refused.push(*ip);
            }
        }
        for ip in refused {
            statics.remove(&ip);
        }
        kept_ips
    }

    /// Every address of the network: the static ones, the kept ones, and new allocations,
    /// lowest free first. Nothing is freed during the pass, so a cursor per block never has
    /// to look back.
    fn allocate(
        &mut self,
        node_block: &BTreeMap<&'a str, Ipv4Net>,
        statics: &BTreeMap<Ipv4Addr, &'p Attach<'a>>,
        kept_ips: &Addresses<'a>,
    ) -> Addresses<'a> {
        let kept: BTreeSet<&str> = kept_ips.values().copied().collect();
        let mut taken: BTreeSet<Ipv4Addr> = statics.keys().copied().collect();
        taken.extend(kept_ips.keys().copied());
        let mut addresses: Addresses<'a> = kept_ips.clone();
        for (ip, a) in statics {
            addresses.insert(*ip, a.container);
        }
        let mut cursors: BTreeMap<Ipv4Net, u32> = BTreeMap::new();
        for a in self.work.attaches.iter().filter(|a| a.ip.is_none()) {
            if kept.contains(a.container) {
                continue;
            }
            let Some(block) = node_block.get(a.node).copied() else {
                continue;
            };
            let cursor = cursors
                .entry(block)
                .or_insert_with(|| u32::from(block.network()).saturating_add(2));
            match self.next_free(block, cursor, &taken) {
                Some(ip) => {
                    taken.insert(ip);
                    addresses.insert(ip, a.container);
                }
                None => self.errors.push(a.error(
                    "network",
                    format!(
                        "no free address left in block {block} of network {} on node {}",
                        self.name, a.node
                    ),
                )),
            }
        }
        addresses
    }

    /// The lowest address of `block` from `cursor` on that is not taken (nor the cidr's
    /// broadcast address); moves the cursor past it.
    fn next_free(
        &self,
        block: Ipv4Net,
        cursor: &mut u32,
        taken: &BTreeSet<Ipv4Addr>,
    ) -> Option<Ipv4Addr> {
        let last = u32::from(block.broadcast());
        while *cursor <= last {
            let ip = Ipv4Addr::from(*cursor);
            *cursor = cursor.saturating_add(1);
            if ip != self.spec.cidr.broadcast() && !taken.contains(&ip) {
                return Some(ip);
            }
            if *cursor == u32::MAX {
                break;
            }
        }
        None
    }

    /// The assignment, and the difference to the stored keys.
    fn record(
        &self,
        node_block: &BTreeMap<&'a str, Ipv4Net>,
        addresses: &Addresses<'a>,
        out: &mut IpamChanges,
    ) {
        let name = self.name;
        for (ip, c) in addresses {
            out.assignment
                .addresses
                .entry(c.to_string())
                .or_default()
                .insert(name.to_string(), *ip);
        }
        if !node_block.is_empty() {
            let nb = out.assignment.blocks.entry(name.to_string()).or_default();
            for (node, block) in node_block {
                nb.insert(node.to_string(), *block);
            }
        }
        let desired_blocks: BTreeMap<Ipv4Net, &str> =
            node_block.iter().map(|(n, b)| (*b, *n)).collect();
        for block in self.cur_blocks.keys() {
            if !desired_blocks.contains_key(block) {
                out.deletes.push(keys::ipam_block(name, *block));
            }
        }
        for (block, node) in &desired_blocks {
            let current = self.cur_blocks.get(block);
            if current.map(String::as_str) != Some(*node) {
                let key = keys::ipam_block(name, *block);
                if current.is_none() {
                    out.created.push(key.clone());
                }
                out.puts.push((key, IpamValue::block(node)));
            }
        }
        for ip in self.cur_addrs.keys() {
            if !addresses.contains_key(ip) {
                out.deletes.push(keys::ipam_addr(name, *ip));
            }
        }
        for (ip, holder) in addresses {
            let current = self.cur_addrs.get(ip);
            if current.map(String::as_str) != Some(*holder) {
                let key = keys::ipam_addr(name, *ip);
                if current.is_none() {
                    out.created.push(key.clone());
                }
                out.puts.push((key, IpamValue::addr(holder)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use topo_schema::{
        Container, ContainerSpec, Network, NetworkAttachment, Topology, Tunnel, TunnelSpec,
    };

    fn network(name: &str, cidr: &str, block_size: u8) -> Resource {
        Resource::Network(Network::new(
            Kind::Network,
            name,
            topo_schema::NetworkSpec {
                cidr: cidr.parse().unwrap(),
                block_size,
                mtu: None,
                topology: Topology::Mesh,
                gre_key: None,
            },
        ))
    }

    fn container(name: &str, node: &str, nets: &[(&str, Option<&str>)]) -> Resource {
        Resource::Container(Container::new(
            Kind::Container,
            name,
            ContainerSpec {
                node: node.into(),
                image: "topo/busybox:latest".into(),
                command: vec![],
                env: Default::default(),
                image_pull_policy: Default::default(),
                networks: nets
                    .iter()
                    .map(|(n, ip)| NetworkAttachment {
                        network: n.to_string(),
                        ip: ip.map(|s| s.parse().unwrap()),
                        interface: None,
                    })
                    .collect(),
                ports: vec![],
                ..Default::default()
            },
        ))
    }

    fn tunnel(name: &str, net: &str, a: &str, b: &str) -> Resource {
        Resource::Tunnel(Tunnel::new(
            Kind::Tunnel,
            name,
            TunnelSpec {
                network: net.into(),
                nodes: vec![a.into(), b.into()],
                node: None,
                remote: None,
            },
        ))
    }

    fn cref(name: &str) -> ObjectRef {
        ObjectRef::new(Kind::Container, name)
    }

    /// The stored IPAM keys, as the cache would hold them after committing.
    #[derive(Debug, Clone, Default)]
    struct State {
        blocks: BlockMap,
        addrs: AddrMap,
    }

    impl State {
        fn commit(&mut self, ch: &IpamChanges) {
            for k in &ch.deletes {
                match keys::parse_ipam_key(k).unwrap() {
                    keys::IpamKey::Block { network, block } => {
                        if let Some(m) = self.blocks.get_mut(network) {
                            m.remove(&block);
                        }
                    }
                    keys::IpamKey::Addr { network, ip } => {
                        if let Some(m) = self.addrs.get_mut(network) {
                            m.remove(&ip);
                        }
                    }
                }
            }
            for (k, v) in &ch.puts {
                // Through the wire form, as etcd and the cache would see it.
                let v = serde_json::to_string(v).unwrap();
                match keys::parse_ipam_key(k).unwrap() {
                    keys::IpamKey::Block { network, block } => {
                        let v: BlockValue = serde_json::from_str(&v).unwrap();
                        self.blocks
                            .entry(network.to_string())
                            .or_default()
                            .insert(block, v.node);
                    }
                    keys::IpamKey::Addr { network, ip } => {
                        let v: AddrValue = serde_json::from_str(&v).unwrap();
                        self.addrs
                            .entry(network.to_string())
                            .or_default()
                            .insert(ip, v.holder);
                    }
                }
            }
            self.blocks = self
                .blocks
                .clone()
                .into_iter()
                .filter(|(_, m)| !m.is_empty())
                .collect();
            self.addrs = self
                .addrs
                .clone()
                .into_iter()
                .filter(|(_, m)| !m.is_empty())
                .collect();
        }

        fn apply(
            &mut self,
            objs: &[Resource],
            changed: &[ObjectRef],
        ) -> Result<IpamChanges, Vec<(ObjectRef, FieldError)>> {
            let ch = plan(objs.iter(), changed, &self.blocks, &self.addrs)?;
            self.commit(&ch);
            Ok(ch)
        }

        fn assignment(&self) -> Assignment {
            Assignment::from_state(&self.blocks, &self.addrs)
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_per_node_and_lowest_free_addresses() {
        let mut st = State::default();
        let objs = vec![
            network("ov", "10.2.0.0/16", 24),
            container("a", "n1", &[("ov", None)]),
            container("b", "n1", &[("ov", None)]),
            container("c", "n2", &[("ov", None)]),
        ];
        let ch = st.apply(&objs, &[cref("a"), cref("b"), cref("c")]).unwrap();
        let a = &ch.assignment;
        assert_eq!(a.block("ov", "n1"), Some("10.2.0.0/24".parse().unwrap()));
        assert_eq!(a.block("ov", "n2"), Some("10.2.1.0/24".parse().unwrap()));
        // .0 is the block's first address, .1 the gateway.
        assert_eq!(a.address("a", "ov"), Some(ip("10.2.0.2")));
        assert_eq!(a.address("b", "ov"), Some(ip("10.2.0.3")));
        assert_eq!(a.address("c", "ov"), Some(ip("10.2.1.2")));
        assert_eq!(ch.created.len(), 5);
        assert_eq!(st.assignment(), ch.assignment);
        let json = |v: &IpamValue| serde_json::to_string(v).unwrap();
        assert!(
            ch.puts
                .iter()
                .any(|(k, v)| k == "/topo/v1/ipam/ov/blocks/10.2.1.0-24"
                    && json(v) == r#"{"node":"n2"}"#)
        );
        assert!(
            ch.puts
                .iter()
                .any(|(k, v)| k == "/topo/v1/ipam/ov/addrs/10.2.0.3"
                    && json(v) == r#"{"holder":"b"}"#)
        );
    }

    #[test]
    fn stable_across_unrelated_changes_and_released_on_delete() {
        let mut st = State::default();
        let mut objs = vec![
            network("ov", "10.2.0.0/16", 24),
            container("a", "n1", &[("ov", None)]),
            container("b", "n1", &[("ov", None)]),
        ];
        st.apply(&objs, &[cref("a"), cref("b")]).unwrap();
        // Deleting a frees .2; a newcomer takes it, b keeps .3.
        objs.remove(1);
        let ch = st.apply(&objs, &[cref("a")]).unwrap();
        assert_eq!(
            ch.deletes,
            vec!["/topo/v1/ipam/ov/addrs/10.2.0.2".to_string()]
        );
        objs.push(container("z", "n1", &[("ov", None)]));
        let ch = st.apply(&objs, &[cref("z")]).unwrap();
        assert_eq!(ch.assignment.address("b", "ov"), Some(ip("10.2.0.3")));
        assert_eq!(ch.assignment.address("z", "ov"), Some(ip("10.2.0.2")));
        // Nothing changes: nothing to write.
        let ch = st.apply(&objs, &[]).unwrap();
        assert!(ch.is_empty());
        // Removing the last containers of n1 releases the block.
        let ch = st.apply(&objs[..1], &[cref("b"), cref("z")]).unwrap();
        assert!(
            ch.deletes
                .contains(&"/topo/v1/ipam/ov/blocks/10.2.0.0-24".to_string())
        );
        assert!(st.blocks.is_empty() && st.addrs.is_empty());
    }

    #[test]
    fn move_reallocates_allocated_and_keeps_static() {
        let mut st = State::default();
        let mut objs = vec![
            network("ov", "10.2.0.0/16", 24),
            container("a", "n1", &[("ov", None)]),
            container("s", "n1", &[("ov", Some("10.2.9.9"))]),
            container("keep", "n2", &[("ov", None)]),
        ];
        st.apply(&objs, &[cref("a"), cref("s"), cref("keep")])
            .unwrap();
        objs[1] = container("a", "n2", &[("ov", None)]);
        objs[2] = container("s", "n2", &[("ov", Some("10.2.9.9"))]);
        let ch = st.apply(&objs, &[cref("a"), cref("s")]).unwrap();
        let n2 = ch.assignment.block("ov", "n2").unwrap();
        assert!(n2.contains(&ch.assignment.address("a", "ov").unwrap()));
        assert_eq!(ch.assignment.address("s", "ov"), Some(ip("10.2.9.9")));
        // n1 hosts nothing any more: its block is released.
        assert_eq!(ch.assignment.block("ov", "n1"), None);
        assert_eq!(ch.assignment.address("keep", "ov"), Some(ip("10.2.1.2")));
    }

    #[test]
    fn allocation_skips_static_claims_in_the_block() {
        let mut st = State::default();
        let objs = vec![
            network("ov", "10.2.0.0/16", 24),
            container("s", "n9", &[("ov", Some("10.2.0.2"))]),
            container("a", "n1", &[("ov", None)]),
        ];
        let ch = st.apply(&objs, &[cref("s"), cref("a")]).unwrap();
        assert_eq!(ch.assignment.address("a", "ov"), Some(ip("10.2.0.3")));
    }

    #[test]
    fn static_claim_on_a_held_address_names_the_holder() {
        let mut st = State::default();
        let mut objs = vec![
            network("ov", "10.2.0.0/16", 24),
            container("a", "n1", &[("ov", None)]),
        ];
        st.apply(&objs, &[cref("a")]).unwrap();
        objs.push(container("b", "n2", &[("ov", Some("10.2.0.2"))]));
        let errs = st.apply(&objs, &[cref("b")]).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].0, cref("b"));
        assert_eq!(errs[0].1.field, "spec.networks[0].ip");
        assert!(
            errs[0].1.message.contains("already held by container/a"),
            "{}",
            errs[0].1.message
        );
        // Two new claims of one address in the same change: the second is refused.
        objs.pop();
        objs.push(container("c", "n2", &[("ov", Some("10.2.5.5"))]));
        objs.push(container("d", "n2", &[("ov", Some("10.2.5.5"))]));
        let errs = st.apply(&objs, &[cref("c"), cref("d")]).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].1.message.contains("already held by container/c"));
    }

    #[test]
    fn static_address_can_be_handed_over_within_one_change() {
        let mut st = State::default();
        let mut objs = vec![
            network("ov", "10.2.0.0/16", 24),
            container("a", "n1", &[("ov", Some("10.2.0.7"))]),
        ];
        st.apply(&objs, &[cref("a")]).unwrap();
        objs[1] = container("a", "n1", &[("ov", None)]);
        objs.push(container("b", "n1", &[("ov", Some("10.2.0.7"))]));
        let ch = st.apply(&objs, &[cref("a"), cref("b")]).unwrap();
        assert_eq!(ch.assignment.address("b", "ov"), Some(ip("10.2.0.7")));
        assert_eq!(ch.assignment.address("a", "ov"), Some(ip("10.2.0.2")));
    }

    #[test]
    fn exhaustion_names_network_and_node() {
        let mut st = State::default();
        // 10.9.0.0/28 in /30 blocks: 4 blocks; addresses .2,.3 / .6,.7 / .10,.11 / .14 (.15 is
        // the broadcast).
        let mut objs = vec![network("small", "10.9.0.0/28", 30)];
        for i in 0..3 {
            objs.push(container(&format!("c{i}"), "n1", &[("small", None)]));
        }
        let errs = st
            .apply(&objs, &[cref("c0"), cref("c1"), cref("c2")])
            .unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0]
                .1
                .message
                .contains("block 10.9.0.0/30 of network small on node n1"),
            "{}",
            errs[0].1.message
        );
        objs.truncate(1);
        for n in 0..5 {
            objs.push(container(
                &format!("c{n}"),
                &format!("n{n}"),
                &[("small", None)],
            ));
        }
        let changed: Vec<_> = (0..5).map(|n| cref(&format!("c{n}"))).collect();
        let errs = st.apply(&objs, &changed).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].0, cref("c4"));
        assert!(
            errs[0]
                .1
                .message
                .contains("network small (10.9.0.0/28) has no free /30 block left for node n4")
        );
        // Nothing was committed by the failed plans.
        assert!(st.blocks.is_empty());
    }

    #[test]
    fn tunnel_ends_host_the_network() {
        let mut st = State::default();
        let objs = vec![
            network("ov", "10.2.0.0/16", 24),
            tunnel("t", "ov", "hub", "n1"),
        ];
        let ch = st
            .apply(&objs, &[ObjectRef::new(Kind::Tunnel, "t")])
            .unwrap();
        assert!(ch.assignment.block("ov", "hub").is_some());
        assert!(ch.assignment.block("ov", "n1").is_some());
    }

    #[test]
    fn cidr_is_immutable_while_allocated() {
        let mut st = State::default();
        let mut objs = vec![
            network("ov", "10.2.0.0/16", 24),
            container("a", "n1", &[("ov", None)]),
        ];
        st.apply(&objs, &[cref("a")]).unwrap();
        objs[0] = network("ov", "10.3.0.0/16", 24);
        let errs = st
            .apply(&objs, &[ObjectRef::new(Kind::Network, "ov")])
            .unwrap_err();
        assert_eq!(errs[0].1.field, "spec.cidr");
        assert!(errs[0].1.message.contains("container/a"));
        // Without holders the network may change; its blocks are re-leased.
        let objs = vec![
            network("ov", "10.3.0.0/16", 24),
            container("a", "n1", &[("other", None)]),
        ];
        let ch = st
            .apply(&objs, &[ObjectRef::new(Kind::Network, "ov"), cref("a")])
            .unwrap();
        assert!(ch.assignment.blocks.is_empty());
        assert!(st.addrs.is_empty());
    }

    #[test]
    fn deleted_network_releases_everything() {
        let mut st = State::default();
        let objs = vec![
            network("ov", "10.2.0.0/16", 24),
            container("a", "n1", &[("ov", None)]),
        ];
        st.apply(&objs, &[cref("a")]).unwrap();
        let ch = st
            .apply(&[], &[ObjectRef::new(Kind::Network, "ov"), cref("a")])
            .unwrap();
        assert_eq!(ch.deletes.len(), 2);
        assert!(st.blocks.is_empty() && st.addrs.is_empty());
    }

    #[test]
    fn rebuild_drops_leaks_and_fills_gaps() {
        let mut st = State::default();
        let objs = vec![
            network("ov", "10.2.0.0/16", 24),
            container("a", "n1", &[("ov", None)]),
            container("b", "n1", &[("ov", None)]),
        ];
        st.apply(&objs, &[cref("a"), cref("b")]).unwrap();
        let before = st.assignment();
        // Leaks a crashed writer could leave: a ghost holder, a second address of a, a block
        // of a node that hosts nothing; and a gap: b's address key is gone.
        let ov = st.addrs.get_mut("ov").unwrap();
        ov.insert(ip("10.2.0.50"), "ghost".into());
        ov.insert(ip("10.2.0.51"), "a".into());
        ov.remove(&ip("10.2.0.3"));
        st.blocks
            .get_mut("ov")
            .unwrap()
            .insert("10.2.7.0/24".parse().unwrap(), "gone".into());
        st.addrs.insert(
            "deleted-net".into(),
            imbl::OrdMap::unit(ip("10.8.0.2"), "a".into()),
        );
        let r = rebuild(objs.iter(), &st.blocks, &st.addrs);
        assert!(r.problems.is_empty());
        st.commit(&r.changes);
        let after = st.assignment();
        assert_eq!(after.address("a", "ov"), before.address("a", "ov"));
        assert!(after.address("b", "ov").is_some());
        assert_eq!(st.addrs["ov"].len(), 2);
        assert_eq!(st.blocks["ov"].len(), 1);
        assert!(!st.addrs.contains_key("deleted-net"));
        // A second rebuild has nothing left to do.
        assert!(
            rebuild(objs.iter(), &st.blocks, &st.addrs)
                .changes
                .is_empty()
        );
    }

    // ------------------------------------------------------------------ properties

    #[derive(Debug, Clone)]
    enum Op {
        /// Create or update container `c` on `node` in the networks of `nets` (bitmask).
        Apply {
            c: u8,
            node: u8,
            nets: u8,
        },
        Delete {
            c: u8,
        },
        Move {
            c: u8,
            node: u8,
        },
        /// Give `c` a static address in network `net` (offset into the cidr).
        Static {
            c: u8,
            net: u8,
            offset: u8,
        },
        /// Drop `c`'s static addresses.
        Unstatic {
            c: u8,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..8u8, 0..5u8, 1..4u8).prop_map(|(c, node, nets)| Op::Apply { c, node, nets }),
            2 => (0..8u8).prop_map(|c| Op::Delete { c }),
            2 => (0..8u8, 0..5u8).prop_map(|(c, node)| Op::Move { c, node }),
            2 => (0..8u8, 0..2u8, 0..64u8).prop_map(|(c, net, offset)| Op::Static { c, net, offset }),
            1 => (0..8u8).prop_map(|c| Op::Unstatic { c }),
        ]
    }

    /// Small on purpose: five nodes compete for four blocks of `a`, and a block of `a` holds
    /// at most six containers.
    const NETS: [(&str, &str, u8); 2] = [("a", "10.1.0.0/27", 29), ("b", "10.2.0.0/24", 26)];

    #[derive(Debug, Clone)]
    struct Spec {
        node: u8,
        /// network index → static address
        nets: BTreeMap<u8, Option<Ipv4Addr>>,
    }

    fn objects(specs: &BTreeMap<u8, Spec>) -> Vec<Resource> {
        let mut v: Vec<Resource> = NETS.iter().map(|(n, c, b)| network(n, c, *b)).collect();
        for (c, s) in specs {
            let ips: Vec<(String, Option<String>)> = s
                .nets
                .iter()
                .map(|(n, ip)| (NETS[*n as usize].0.to_string(), ip.map(|i| i.to_string())))
                .collect();
            let ips: Vec<(&str, Option<&str>)> = ips
                .iter()
                .map(|(n, i)| (n.as_str(), i.as_deref()))
                .collect();
            v.push(container(&format!("c{c}"), &format!("n{}", s.node), &ips));
        }
        v
    }

    fn check_invariants(st: &State, specs: &BTreeMap<u8, Spec>) -> Result<(), TestCaseError> {
        let a = st.assignment();
        for (ni, (net, cidr, bs)) in NETS.iter().enumerate() {
            let cidr: Ipv4Net = cidr.parse().unwrap();
            let held = st.addrs.get(*net).cloned().unwrap_or_default();
            let blocks = st.blocks.get(*net).cloned().unwrap_or_default();
            // Every address key has a live holder attached to the network, inside the cidr,
            // never reserved; every attachment holds exactly one address.
            let mut per_holder: BTreeMap<&str, usize> = BTreeMap::new();
            for (ip, holder) in &held {
                let c: u8 = holder.trim_start_matches('c').parse().unwrap();
                let spec = specs.get(&c);
                prop_assert!(
                    spec.is_some_and(|s| s.nets.contains_key(&(ni as u8))),
                    "leak: {ip} held by {holder}"
                );
                prop_assert!(
                    net::reserved_reason(cidr, *bs, *ip).is_none(),
                    "{ip} is reserved"
                );
                *per_holder.entry(holder).or_default() += 1;
                let spec = spec.unwrap();
                match spec.nets[&(ni as u8)] {
                    Some(s) => prop_assert_eq!(s, *ip),
                    None => {
                        let node = format!("n{}", spec.node);
                        let block = a.block(net, &node);
                        prop_assert!(
                            block.is_some_and(|b| b.contains(ip)),
                            "{ip} of {holder} outside its node's block"
                        );
                    }
                }
            }
            for (c, s) in specs {
                if s.nets.contains_key(&(ni as u8)) {
                    prop_assert_eq!(
                        per_holder.get(format!("c{c}").as_str()).copied(),
                        Some(1),
                        "c{} in {}",
                        c,
                        net
                    );
                }
            }
            // Blocks: one per hosting node, none for others, all distinct (map keys).
            let hosting: BTreeSet<String> = specs
                .values()
                .filter(|s| s.nets.contains_key(&(ni as u8)))
                .map(|s| format!("n{}", s.node))
                .collect();
            let leasing: Vec<&String> = blocks.values().collect();
            let leasing_set: BTreeSet<String> = leasing.iter().map(|s| s.to_string()).collect();
            prop_assert_eq!(leasing.len(), leasing_set.len(), "a node leases two blocks");
            prop_assert_eq!(&leasing_set, &hosting);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn random_changes_never_duplicate_leak_or_disturb(ops in proptest::collection::vec(op(), 1..40)) {
            let mut st = State::default();
            let mut specs: BTreeMap<u8, Spec> = BTreeMap::new();
            for op in ops {
                let mut next = specs.clone();
                let touched = match op {
                    Op::Apply { c, node, nets } => {
                        let mut m = BTreeMap::new();
                        for n in 0..2u8 {
                            if nets & (1 << n) != 0 {
                                let old = specs.get(&c).and_then(|s| s.nets.get(&n).copied()).flatten();
                                m.insert(n, old);
                            }
                        }
                        next.insert(c, Spec { node, nets: m });
                        c
                    }
                    Op::Delete { c } => { next.remove(&c); c }
                    Op::Move { c, node } => {
                        if let Some(s) = next.get_mut(&c) { s.node = node; }
                        c
                    }
                    Op::Static { c, net, offset } => {
                        let (_, cidr, _) = NETS[net as usize];
                        let cidr: Ipv4Net = cidr.parse().unwrap();
                        let ip = Ipv4Addr::from(u32::from(cidr.network()) + u32::from(offset) % (1 << (32 - cidr.prefix_len())));
                        if let Some(s) = next.get_mut(&c) { s.nets.insert(net, Some(ip)); }
                        c
                    }
                    Op::Unstatic { c } => {
                        if let Some(s) = next.get_mut(&c) { for v in s.nets.values_mut() { *v = None; } }
                        c
                    }
                };
                let before = st.assignment();
                let objs = objects(&next);
                match st.apply(&objs, &[cref(&format!("c{touched}"))]) {
                    Ok(ch) => {
                        specs = next;
                        prop_assert_eq!(&st.assignment(), &ch.assignment);
                        // Untouched containers keep every address.
                        for (c, addrs) in &before.addresses {
                            if *c != format!("c{touched}") {
                                prop_assert_eq!(Some(addrs), ch.assignment.addresses.get(c), "{} moved", c);
                            }
                        }
                        // And the state is already what a rebuild would make of it.
                        let r = rebuild(objs.iter(), &st.blocks, &st.addrs);
                        prop_assert!(r.changes.is_empty(), "rebuild would change {:?}", r.changes);
                    }
                    Err(errs) => {
                        prop_assert!(!errs.is_empty());
                        prop_assert_eq!(&st.assignment(), &before);
                    }
                }
                check_invariants(&st, &specs)?;
            }
        }

        /// Whatever garbage a crash left in the IPAM keys, one rebuild makes them consistent
        /// and keeps every valid allocation.
        #[test]
        fn rebuild_repairs_any_leak(
            ops in proptest::collection::vec(op(), 1..25),
            garbage in proptest::collection::vec((0..2u8, 0..64u8, 0..10u8), 0..10),
            dropped in proptest::collection::vec(0..64u8, 0..4),
        ) {
            let mut st = State::default();
            let mut specs: BTreeMap<u8, Spec> = BTreeMap::new();
            for op in ops {
                let mut next = specs.clone();
                let c = match op {
                    Op::Apply { c, node, nets } => {
                        let m = (0..2u8).filter(|n| nets & (1 << n) != 0).map(|n| (n, None)).collect();
                        next.insert(c, Spec { node, nets: m });
                        c
                    }
                    Op::Delete { c } => { next.remove(&c); c }
                    Op::Move { c, node } => { if let Some(s) = next.get_mut(&c) { s.node = node; } c }
                    _ => continue,
                };
                if st.apply(&objects(&next), &[cref(&format!("c{c}"))]).is_ok() {
                    specs = next;
                }
            }
            let before = st.assignment();
            for (net, offset, holder) in garbage {
                let (name, cidr, _) = NETS[net as usize];
                let cidr: Ipv4Net = cidr.parse().unwrap();
                let ip = Ipv4Addr::from(u32::from(cidr.network()) + u32::from(offset) % (1 << (32 - cidr.prefix_len())));
                if st.addrs.get(name).is_some_and(|m| m.contains_key(&ip)) {
                    continue;
                }
                st.addrs.entry(name.to_string()).or_default().insert(ip, format!("c{holder}"));
            }
            for d in dropped {
                if let Some(m) = st.addrs.get_mut("a") {
                    let k = m.keys().nth(d as usize % m.len().max(1)).copied();
                    if let Some(k) = k { m.remove(&k); }
                }
            }
            let objs = objects(&specs);
            let damaged = st.clone();
            let r = rebuild(objs.iter(), &st.blocks, &st.addrs);
            st.commit(&r.changes);
            check_invariants(&st, &specs)?;
            // A container that still held a valid address keeps one it held: nobody is
            // renumbered because of somebody else's leak.
            let after = st.assignment();
            for (c, addrs) in &before.addresses {
                for (net, old) in addrs {
                    let held = |ip: &Ipv4Addr| damaged.addrs.get(net.as_str()).and_then(|m| m.get(ip)) == Some(c);
                    if held(old) {
                        let now = after.address(c, net);
                        prop_assert!(now.is_some_and(|ip| held(&ip)), "{} had {} in {}, now {:?}", c, old, net, now);
                    }
                }
            }
        }
    }
}
