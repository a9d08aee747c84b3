//! The agent's unit of work: one [`Key`] per slice entry plus the two node-wide keys, typed
//! from the moment a slice key leaves etcd (`watch.rs` parses it) until it is reconciled.
//!
//! The variant order is the work order: the node's settings, then bridges, then the GRE
//! ports and containers that go on them, then the node's NAT table (derived from bridges and
//! containers) and last garbage collection. The queue pops keys in this order.

use std::fmt;

use topo_schema::slice::SliceKey;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// The node's own entry (its settings reach the host through its bridges).
    Node,
    /// A network's bridge, by network name.
    Bridge(String),
    /// A GRE port, by port name.
    Tunnel(String),
    /// A container, by Container object name.
    Container(String),
    /// The node's nftables table: masquerade and published ports of the whole slice.
    Nat,
    /// Garbage collection of owned host objects no entry wants.
    Gc,
}

impl Key {
    /// The slice entry this key reconciles; None for the node-wide keys.
    pub fn slice_key(&self) -> Option<SliceKey> {
        match self {
            Key::Node => Some(SliceKey::Node),
            Key::Bridge(n) => Some(SliceKey::Bridge(n.clone())),
            Key::Tunnel(p) => Some(SliceKey::Tunnel(p.clone())),
            Key::Container(c) => Some(SliceKey::Container(c.clone())),
            Key::Nat | Key::Gc => None,
        }
    }

    /// The container this key reconciles, if it is a container's.
    pub fn container(&self) -> Option<&str> {
        match self {
            Key::Container(name) => Some(name),
            _ => None,
        }
    }

    /// The key with its name left out: all keys of one kind have the same class, and classes
    /// sort in the work order (the queue orders by class, then by arrival).
    pub fn class(&self) -> Key {
        match self {
            Key::Bridge(_) => Key::Bridge(String::new()),
            Key::Tunnel(_) => Key::Tunnel(String::new()),
            Key::Container(_) => Key::Container(String::new()),
            other => other.clone(),
        }
    }
}

impl From<SliceKey> for Key {
    fn from(k: SliceKey) -> Self {
        match k {
            SliceKey::Node => Key::Node,
            SliceKey::Bridge(n) => Key::Bridge(n),
            SliceKey::Tunnel(p) => Key::Tunnel(p),
            SliceKey::Container(c) => Key::Container(c),
        }
    }
}

impl From<&SliceKey> for Key {
    fn from(k: &SliceKey) -> Self {
        Key::from(k.clone())
    }
}

/// Slice keys as they are stored; `~nat` and `~gc` for the node-wide keys (logs only).
impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Nat => f.write_str("~nat"),
            Key::Gc => f.write_str("~gc"),
            other => match other.slice_key() {
                Some(k) => fmt::Display::fmt(&k, f),
                None => Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_in_work_order_and_classes_keep_it() {
        let mut keys = vec![
            Key::Gc,
            Key::Container("a".into()),
            Key::Nat,
            Key::Tunnel("tg-x".into()),
            Key::Container("0".into()),
            Key::Bridge("n".into()),
            Key::Node,
        ];
        keys.sort();
        assert_eq!(
            keys,
            vec![
                Key::Node,
                Key::Bridge("n".into()),
                Key::Tunnel("tg-x".into()),
                Key::Container("0".into()),
                Key::Container("a".into()),
                Key::Nat,
                Key::Gc,
            ]
        );
        assert_eq!(
            Key::Container("z".into()).class(),
            Key::Container("a".into()).class()
        );
        assert!(Key::Tunnel("z".into()).class() < Key::Container("a".into()).class());
        assert!(Key::Container("z".into()).class() < Key::Nat);
    }

    #[test]
    fn slice_keys_convert_both_ways_and_print_as_stored() {
        for text in ["node", "bridges/ov", "tunnels/tg-x", "containers/web"] {
            let sk: SliceKey = text.parse().unwrap();
            let k = Key::from(&sk);
            assert_eq!(k.slice_key(), Some(sk));
            assert_eq!(k.to_string(), text);
        }
        assert_eq!(Key::Nat.slice_key(), None);
        assert_eq!(Key::Gc.to_string(), "~gc");
        assert_eq!(Key::Container("web".into()).container(), Some("web"));
    }
}
