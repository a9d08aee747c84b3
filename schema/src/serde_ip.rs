//! serde helpers whose errors say what was expected in operators' words
//! ("expected an IPv4 address like 10.2.0.5") rather than the std parser's.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Deserializer, Serializer, de::Error};

pub fn parse_ipv4(s: &str) -> Result<Ipv4Addr, String> {
    s.parse::<Ipv4Addr>()
        .map_err(|_| format!("{s:?} is not an IPv4 address (expected e.g. 10.2.0.5)"))
}

/// A network in CIDR form whose host bits are zero.
pub fn parse_cidr(s: &str) -> Result<Ipv4Net, String> {
    let net = s
        .parse::<Ipv4Net>()
        .map_err(|_| format!("{s:?} is not an IPv4 CIDR (expected e.g. 10.2.0.0/16)"))?;
    if net.addr() != net.network() {
        return Err(format!(
            "{s} has host bits set (did you mean {}/{}?)",
            net.network(),
            net.prefix_len()
        ));
    }
    Ok(net)
}

pub mod ipv4 {
    use super::*;
    pub fn serialize<S: Serializer>(ip: &Ipv4Addr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(ip)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Addr, D::Error> {
        let s = String::deserialize(d)?;
        parse_ipv4(&s).map_err(D::Error::custom)
    }
}

pub mod opt_ipv4 {
    use super::*;
    pub fn serialize<S: Serializer>(ip: &Option<Ipv4Addr>, s: S) -> Result<S::Ok, S::Error> {
        match ip {
            Some(ip) => s.collect_str(ip),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv4Addr>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => parse_ipv4(&s).map(Some).map_err(D::Error::custom),
        }
    }
}

pub mod cidr {
    use super::*;
    pub fn serialize<S: Serializer>(net: &Ipv4Net, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(net)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Net, D::Error> {
        let s = String::deserialize(d)?;
        parse_cidr(&s).map_err(D::Error::custom)
    }
}

/// An address with its prefix length (10.2.1.5/16): an interface address, host bits allowed.
pub mod ifaddr {
    use super::*;
    pub fn serialize<S: Serializer>(net: &Ipv4Net, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(net)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Net, D::Error> {
        let s = String::deserialize(d)?;
        s.parse::<Ipv4Net>()
            .map_err(|_| D::Error::custom(format!("{s:?} is not an IPv4 address/prefix")))
    }
}
