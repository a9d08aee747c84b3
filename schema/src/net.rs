//! Address arithmetic the controller and the agent must agree on.
//!
//! A network's cidr is cut into blocks of `/blockSize`; each node that hosts the network
//! leases one. Offset 0 of a block is never handed out, offset 1 is the node's gateway on the
//! network, and the cidr's broadcast address is never handed out. Any block's offset 1 is
//! refused as a static address, whether or not the block is leased yet: a block can be
//! leased later, and its gateway must be free then.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Underlay MTU assumed when a network gives none (Ethernet).
pub const DEFAULT_UNDERLAY_MTU: u32 = 1500;
/// Outer IPv4 header of a GRE packet.
pub const OUTER_IPV4_HEADER: u32 = 20;
/// GRE header with the key field (topo always sets a key, so two networks never mix).
pub const GRE_HEADER_WITH_KEY: u32 = 8;
/// The inner Ethernet header OVS carries inside GRE (transparent Ethernet bridging).
pub const INNER_ETHERNET_HEADER: u32 = 14;
/// Everything a frame gains crossing a tunnel: 20 + 8 + 14 = 42 bytes.
pub const GRE_OVERHEAD: u32 = OUTER_IPV4_HEADER + GRE_HEADER_WITH_KEY + INNER_ETHERNET_HEADER;
/// The container MTU of a network that gives none: 1500 - 42 = 1458.
pub const DEFAULT_MTU: u32 = DEFAULT_UNDERLAY_MTU - GRE_OVERHEAD;
/// The smallest block that holds a gateway and a container.
pub const MAX_BLOCK_PREFIX: u8 = 30;

fn u(ip: Ipv4Addr) -> u32 {
    u32::from(ip)
}

/// Number of blocks of `/block_size` in `cidr`; None when the block does not fit.
pub fn block_count(cidr: Ipv4Net, block_size: u8) -> Option<u64> {
    if block_size < cidr.prefix_len() || block_size > MAX_BLOCK_PREFIX {
        return None;
    }
    Some(1u64 << (block_size - cidr.prefix_len()))
}

/// Block number `i` of `cidr`.
pub fn block_at(cidr: Ipv4Net, block_size: u8, i: u64) -> Option<Ipv4Net> {
    if i >= block_count(cidr, block_size)? {
        return None;
    }
    let size = 1u64 << (32 - block_size);
    let start = u64::from(u(cidr.network())) + i * size;
    Ipv4Net::new(Ipv4Addr::from(start as u32), block_size).ok()
}

/// The block of `cidr` that holds `ip`.
pub fn block_of(cidr: Ipv4Net, block_size: u8, ip: Ipv4Addr) -> Option<Ipv4Net> {
    if !cidr.contains(&ip) || block_count(cidr, block_size).is_none() {
        return None;
    }
    Ipv4Net::new(ip, block_size).ok().map(|n| n.trunc())
}

/// The node's gateway in its block: the block's first host address.
pub fn gateway_of(block: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u(block.network()) + 1)
}

/// Why `ip` cannot be a container's static address in `cidr`, if it cannot.
pub fn reserved_reason(cidr: Ipv4Net, block_size: u8, ip: Ipv4Addr) -> Option<String> {
    if !cidr.contains(&ip) {
        return Some(format!("is outside the network's cidr {cidr}"));
    }
    if ip == cidr.network() {
        return Some(format!("is the network address of {cidr}"));
    }
    if ip == cidr.broadcast() {
        return Some(format!("is the broadcast address of {cidr}"));
    }
    if let Some(block) = block_of(cidr, block_size, ip)
        && gateway_of(block) == ip
    {
        return Some(format!("is the gateway address of block {block}"));
    }
    None
}

/// The addresses allocation may hand out in `block`, in order.
pub fn allocatable(cidr: Ipv4Net, block: Ipv4Net) -> impl Iterator<Item = Ipv4Addr> {
    let first = u(block.network()) + 2;
    let last = u(block.broadcast());
    let bcast = cidr.broadcast();
    (first..=last)
        .map(Ipv4Addr::from)
        .filter(move |ip| *ip != bcast)
}

/// The container MTU a network gets.
pub fn effective_mtu(spec_mtu: Option<u32>) -> u32 {
    spec_mtu.unwrap_or(DEFAULT_MTU)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn blocks() {
        let c = net("10.2.0.0/16");
        assert_eq!(block_count(c, 24), Some(256));
        assert_eq!(block_count(c, 15), None);
        assert_eq!(block_count(c, 31), None);
        assert_eq!(block_at(c, 24, 1), Some(net("10.2.1.0/24")));
        assert_eq!(block_at(c, 24, 256), None);
        assert_eq!(
            block_of(c, 24, "10.2.4.10".parse().unwrap()),
            Some(net("10.2.4.0/24"))
        );
        assert_eq!(
            gateway_of(net("10.2.1.0/24")),
            "10.2.1.1".parse::<Ipv4Addr>().unwrap()
        );
    }

    #[test]
    fn reserved() {
        let c = net("10.2.0.0/16");
        let r = |s: &str| reserved_reason(c, 24, s.parse().unwrap());
        assert!(r("10.2.0.0").unwrap().contains("network address"));
        assert!(r("10.2.255.255").unwrap().contains("broadcast"));
        assert!(r("10.2.7.1").unwrap().contains("gateway"));
        assert!(r("10.3.0.5").unwrap().contains("outside"));
        assert_eq!(r("10.2.4.10"), None);
    }

    #[test]
    fn allocation_skips_gateway_and_broadcast() {
        let c = net("10.9.0.0/24");
        let b = block_at(c, 30, 63).unwrap();
        let v: Vec<_> = allocatable(c, b).collect();
        assert_eq!(v, vec!["10.9.0.254".parse::<Ipv4Addr>().unwrap()]);
        let b0 = block_at(c, 30, 0).unwrap();
        assert_eq!(allocatable(c, b0).count(), 2);
    }

    #[test]
    fn mtu() {
        assert_eq!(GRE_OVERHEAD, 42);
        assert_eq!(effective_mtu(None), 1458);
        assert_eq!(effective_mtu(Some(1400)), 1400);
    }
}
