//! nftables change notifications: a `NETLINK_NETFILTER` socket that joined the
//! `NFNLGRP_NFTABLES` group hears every committed change to the ruleset of its namespace
//! (what `nft monitor` prints), so the `topo` table deleted, flushed or edited by hand is
//! noticed at once rather than at the next periodic resync.
//!
//! Only the message header and the first attribute are read: every nf_tables object message
//! (table, chain, rule, set, element, object, flowtable) carries its table's name as attribute
//! 1, and the family in its `nfgenmsg`. That is all the agent needs to tell a change to
//! `ip topo` from anyone else's tables; what changed is then observed as usual.

use std::io;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use netlink_sys::{AsyncSocket, SocketAddr, TokioSocket};
use tokio::sync::mpsc;
use topo_schema::slice::owner;
use tracing::{debug, warn};

use super::netns::{ContainerNs, NsError, run_in_container_pinned};

/// `NFNLGRP_NFTABLES` (linux/netfilter/nfnetlink.h).
pub const NFNLGRP_NFTABLES: u32 = 7;
/// `NFNL_SUBSYS_NFTABLES`: the high byte of an nf_tables message type.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFPROTO_IPV4`: the family of `table ip ...`.
pub const NFPROTO_IPV4: u8 = 2;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

/// What kind of nf_tables object a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NftObject {
    Table,
    Chain,
    Rule,
    Set,
    Element,
    Other,
}

/// A change to the `topo` table of a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatEvent {
    /// Notifications may have been lost (the socket overran or reopened): look again.
    Resync,
    Changed {
        object: NftObject,
        deleted: bool,
    },
}

/// One nf_tables notification, as far as the agent reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftMessage {
    /// `NFT_MSG_*` (the low byte of the netlink message type).
    pub msg: u8,
    pub family: u8,
    /// The table the object belongs to (absent for generation messages).
    pub table: Option<String>,
}

impl NftMessage {
    /// `(object, deleted)` of the message type; None for messages that change nothing
    /// (generation markers, traces, gets).
    pub fn change(&self) -> Option<(NftObject, bool)> {
        // enum nf_tables_msg_types: NEW/GET/DEL per object, DESTROY* from 26 on (Linux 6.3).
        Some(match self.msg {
            0 => (NftObject::Table, false),
            2 | 26 => (NftObject::Table, true),
            3 => (NftObject::Chain, false),
            5 | 27 => (NftObject::Chain, true),
            6 => (NftObject::Rule, false),
            8 | 28 => (NftObject::Rule, true),
            9 => (NftObject::Set, false),
            11 | 29 => (NftObject::Set, true),
            12 => (NftObject::Element, false),
            14 | 30 => (NftObject::Element, true),
            18 | 22 => (NftObject::Other, false),
            20 | 24 | 31 | 32 => (NftObject::Other, true),
            _ => return None,
        })
    }

    /// The event for topo's table (`ip topo`), if this message is about it.
    pub fn topo_event(&self) -> Option<NatEvent> {
        if self.family != NFPROTO_IPV4 || self.table.as_deref() != Some(owner::NFT_TABLE) {
            return None;
        }
        let (object, deleted) = self.change()?;
        Some(NatEvent::Changed { object, deleted })
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The table name in the attributes `attrs` (attribute 1, a NUL-terminated string).
fn table_attribute(attrs: &[u8]) -> Option<String> {
    let mut at = 0;
    while at + 4 <= attrs.len() {
        let len = usize::from(u16_at(attrs, at)?);
        // The top two bits of the type are flags (nested, network byte order).
        let kind = u16_at(attrs, at + 2)? & 0x3fff;
        if len < 4 || at + len > attrs.len() {
            return None;
        }
        if kind == 1 {
            let value = &attrs[at + 4..at + len];
            let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
            return String::from_utf8(value[..end].to_vec()).ok();
        }
        at += (len + 3) & !3;
    }
    None
}

/// Every nf_tables message in one datagram (malformed ones are skipped: they change nothing
/// the next observation would not see).
pub fn parse_datagram(buf: &[u8]) -> Vec<NftMessage> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let Some(len) = u32_at(buf, at).and_then(|l| usize::try_from(l).ok()) else {
            break;
        };
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            break;
        }
        let msg = &buf[at..at + len];
        if let Some(kind) = u16_at(msg, 4)
            && kind >> 8 == NFNL_SUBSYS_NFTABLES
            && msg.len() >= NLMSG_HDRLEN + NFGENMSG_LEN
        {
            out.push(NftMessage {
                msg: (kind & 0xff) as u8,
                family: msg[NLMSG_HDRLEN],
                table: table_attribute(&msg[NLMSG_HDRLEN + NFGENMSG_LEN..]),
            });
        }
        at += (len + 3) & !3;
    }
    out
}

/// A socket of the calling thread's namespace subscribed to nf_tables notifications. Must be
/// called inside the tokio runtime (the socket registers with its reactor).
pub fn subscribe() -> io::Result<TokioSocket> {
    let mut sock = TokioSocket::new(netlink_sys::constants::NETLINK_NETFILTER)?;
    sock.socket_mut().bind(&SocketAddr::new(0, 0))?;
    sock.socket_mut().add_membership(NFNLGRP_NFTABLES)?;
    Ok(sock)
}

/// The next datagram's events for topo's table; `Resync` when notifications were dropped.
async fn next_events(sock: &TokioSocket) -> io::Result<Vec<NatEvent>> {
    match futures::future::poll_fn(|cx| sock.poll_recv_from_full(cx)).await {
        Ok((buf, _)) => Ok(parse_datagram(&buf)
            .iter()
            .filter_map(NftMessage::topo_event)
            .collect()),
        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(vec![NatEvent::Resync]),
        Err(e) => Err(e),
    }
}

/// Forwards the socket's events until it fails (Err), `tx` closes or `until` completes (Ok).
async fn forward(
    sock: &TokioSocket,
    tx: &mpsc::Sender<NatEvent>,
    until: impl Future<Output = ()>,
) -> io::Result<()> {
    tokio::pin!(until);
    loop {
        tokio::select! {
            _ = tx.closed() => return Ok(()),
            _ = &mut until => return Ok(()),
            evs = next_events(sock) => {
                for ev in evs? {
                    if tx.send(ev).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// The node namespace's notifications (the agent's own namespace), reopening the socket
/// after a failure and then yielding `Resync`.
pub fn watch_node() -> BoxStream<'static, NatEvent> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(100);
        loop {
            match subscribe() {
                Ok(sock) => {
                    delay = Duration::from_millis(100);
                    match forward(&sock, &tx, std::future::pending()).await {
                        Ok(()) => return,
                        Err(e) => warn!(error = %e, "nftables notifications failed; reopening"),
                    }
                }
                Err(e) => {
                    warn!(error = %e, "failed to subscribe to nftables notifications; retrying")
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
            if tx.send(NatEvent::Resync).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

/// The container's notifications, from a socket opened in its (confirmed) namespace; the
/// stream ends when the container's process exits, so the socket never keeps a dead
/// container's namespace alive for long.
pub async fn watch_container(ns: &ContainerNs) -> Result<BoxStream<'static, NatEvent>, NsError> {
    let pid = ns.pid;
    let rt = tokio::runtime::Handle::current();
    let (sock, pidfd) = run_in_container_pinned(ns, move || {
        // The socket registers with the agent's reactor from the namespace's thread.
        let _rt = rt.enter();
        subscribe()
    })
    .await?;
    let sock = sock.map_err(|source| NsError::Open {
        pid,
        what: "an nftables notification socket",
        source,
    })?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        if let Err(e) = forward(&sock, &tx, pidfd.wait_exit()).await {
            debug!(pid, error = %e, "container nftables notifications ended");
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A netlink message of nf_tables type `msg` for `table` of `family`.
    fn message(msg: u8, family: u8, table: Option<&str>) -> Vec<u8> {
        let mut attrs = Vec::new();
        if let Some(t) = table {
            let mut v = t.as_bytes().to_vec();
            v.push(0);
            let len = 4 + v.len();
            attrs.extend_from_slice(&(len as u16).to_ne_bytes());
            attrs.extend_from_slice(&1u16.to_ne_bytes());
            attrs.extend_from_slice(&v);
            while attrs.len() % 4 != 0 {
                attrs.push(0);
            }
        }
        let len = NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len();
        let mut b = Vec::new();
        b.extend_from_slice(&(len as u32).to_ne_bytes());
        b.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | u16::from(msg)).to_ne_bytes());
        b.extend_from_slice(&[0; 10]); // flags, seq, pid
        b.extend_from_slice(&[family, 0, 0, 0]);
        b.extend_from_slice(&attrs);
        b
    }

    #[test]
    fn a_batch_of_notifications_reads_as_changes_to_each_table() {
        let mut datagram = message(2, NFPROTO_IPV4, Some("topo")); // delete table ip topo
        datagram.extend(message(8, NFPROTO_IPV4, Some("filter"))); // a rule of someone else
        datagram.extend(message(6, 10, Some("topo"))); // table inet topo: not ours
        datagram.extend(message(15, 0, None)); // the new generation
        let msgs = parse_datagram(&datagram);
        assert_eq!(msgs.len(), 4);
        assert_eq!(msgs[0].table.as_deref(), Some("topo"));
        let events: Vec<NatEvent> = msgs.iter().filter_map(NftMessage::topo_event).collect();
        assert_eq!(
            events,
            vec![NatEvent::Changed {
                object: NftObject::Table,
                deleted: true
            }]
        );
        assert_eq!(
            msgs[3].change(),
            None,
            "a generation marker changes nothing"
        );
    }

    #[test]
    fn flush_and_destroy_messages_are_deletions() {
        for (msg, object) in [
            (8u8, NftObject::Rule),
            (28, NftObject::Rule),
            (27, NftObject::Chain),
        ] {
            let m = &parse_datagram(&message(msg, NFPROTO_IPV4, Some("topo")))[0];
            assert_eq!(
                m.topo_event(),
                Some(NatEvent::Changed {
                    object,
                    deleted: true
                })
            );
        }
    }

    #[test]
    fn malformed_input_is_skipped_without_panic() {
        let good = message(0, NFPROTO_IPV4, Some("topo"));
        for cut in 0..good.len() {
            let _ = parse_datagram(&good[..cut]);
        }
        let mut bad_attr = good.clone();
        // Attribute length beyond the message.
        bad_attr[NLMSG_HDRLEN + NFGENMSG_LEN] = 0xff;
        assert_eq!(parse_datagram(&bad_attr)[0].table, None);
        let mut other = good;
        other[5] = 1; // another subsystem (conntrack)
        assert!(parse_datagram(&other).is_empty());
    }
}
