//! ICMP echo probes sent from inside a container's network namespace, each with its own
//! sequence number, send time and reply time, and stopped by a deadline instead of a signal.
//!
//! Why not busybox `ping` stopped with SIGINT: ping prints its totals the moment the signal
//! lands and counts the echo it sent a few milliseconds earlier, whose reply is still on
//! its way, as lost (issue 13). A [`Prober`] stops *sending* when asked and then keeps
//! listening until the reply window of its last probe has closed, so every probe it counts
//! had its whole window; a probe is lost only when no reply came within it.
//!
//! The prober is a thread of the test process that joined the container's network
//! namespace (setns changes only the calling thread), with a raw ICMP socket there: the
//! echo leaves from the container's own stack and interface, exactly as a ping inside the
//! container would, and the other container's kernel answers it. The thread's sockets and
//! timestamps are the test's, so losses line up with the agents' and OVS's logs (UTC).

use std::fs::File;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use nix::errno::Errno;
use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, recvfrom, sendto,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

/// Marks the payload of our echoes, so replies to anything else are never counted.
const MAGIC: &[u8; 8] = b"topoprob";
const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;

/// One echo request and what came back for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// 0, 1, 2, ... in sending order (the ICMP sequence number is this, modulo 2^16).
    pub seq: u64,
    pub sent: SystemTime,
    /// Round-trip time of the first reply that came within the window.
    pub rtt: Option<Duration>,
    /// A reply that came after the window closed (the probe still counts as lost).
    pub late: Option<Duration>,
    /// Replies beyond the first (a forwarding loop answers twice).
    pub duplicates: u32,
}

/// Everything one prober sent and received.
#[derive(Debug, Clone)]
pub struct ProbeRun {
    pub label: String,
    pub to: Ipv4Addr,
    pub interval: Duration,
    pub window: Duration,
    pub probes: Vec<Probe>,
}

impl ProbeRun {
    pub fn sent(&self) -> usize {
        self.probes.len()
    }

    /// Probes with no reply within the window.
    pub fn lost(&self) -> Vec<&Probe> {
        self.probes.iter().filter(|p| p.rtt.is_none()).collect()
    }

    pub fn duplicates(&self) -> u32 {
        self.probes.iter().map(|p| p.duplicates).sum()
    }

    /// Median and largest round-trip time of the answered probes, in ms (NaN: none).
    pub fn rtt_ms(&self) -> (f64, f64) {
        let rtts = self.probes.iter().filter_map(|p| p.rtt);
        let max = rtts.clone().max().map_or(f64::NAN, crate::stats::ms);
        (crate::stats::median_p99(rtts).0, max)
    }

    /// `label -> to: N of M lost` plus, for each run of consecutive lost probes, its
    /// sequence numbers and send times (UTC, ms).
    pub fn summary(&self) -> String {
        let lost = self.lost();
        let mut s = format!(
            "{} -> {}: {} of {} lost ({} ms apart, {} ms window), {} duplicate(s), rtt median {:.1} ms, max {:.1} ms",
            self.label,
            self.to,
            lost.len(),
            self.sent(),
            self.interval.as_millis(),
            self.window.as_millis(),
            self.duplicates(),
            self.rtt_ms().0,
            self.rtt_ms().1,
        );
        for (first, last) in lost_bursts(&self.probes) {
            s.push_str(&format!(
                "\n  lost seq {}..={} sent {} .. {}",
                first.seq,
                last.seq,
                utc_ms(first.sent),
                utc_ms(last.sent)
            ));
            if let Some(l) = first.late {
                s.push_str(&format!(
                    " (first answered late, after {} ms)",
                    l.as_millis()
                ));
            }
        }
        s
    }
}

/// Runs of consecutive lost probes: (first, last).
pub fn lost_bursts(probes: &[Probe]) -> Vec<(&Probe, &Probe)> {
    let mut out: Vec<(&Probe, &Probe)> = Vec::new();
    for p in probes.iter().filter(|p| p.rtt.is_none()) {
        match out.last_mut() {
            Some((_, last)) if last.seq + 1 == p.seq => *last = p,
            _ => out.push((p, p)),
        }
    }
    out
}

/// `2026-01-02T03:04:05.678Z`
pub fn utc_ms(t: SystemTime) -> String {
    DateTime::<Utc>::from(t)
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// A prober running in a container's network namespace.
pub struct Prober {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    answered: Arc<AtomicU64>,
    thread: JoinHandle<Result<ProbeRun, String>>,
}

impl Prober {
    /// Starts sending an echo to `to` every `interval` from the network namespace of process
    /// `pid` (a container's `State.Pid`). Returns once the socket is open there.
    pub fn start(
        label: &str,
        pid: u32,
        to: Ipv4Addr,
        interval: Duration,
        window: Duration,
    ) -> Result<Prober, String> {
        let ns = File::open(format!("/proc/{pid}/ns/net"))
            .map_err(|e| format!("failed to open the network namespace of pid {pid}: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let run = ProbeRun {
            label: label.to_string(),
            to,
            interval,
            window,
            probes: Vec::new(),
        };
        let sent = Arc::new(AtomicU64::new(0));
        let answered = Arc::new(AtomicU64::new(0));
        let counts = Counts {
            sent: Arc::clone(&sent),
            answered: Arc::clone(&answered),
        };
        let flag = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name(format!("probe-{label}"))
            .spawn(move || {
                let opened = setns(&ns, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("failed to enter the network namespace: {e}"))
                    .and_then(|()| open_socket());
                let _ = ready_tx.send(opened.as_ref().map(|_| ()).map_err(Clone::clone));
                probe_loop(opened?, run, &flag, &counts)
            })
            .map_err(|e| format!("failed to start the probe thread: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Prober {
                stop,
                sent,
                answered,
                thread,
            }),
            Ok(Err(e)) => Err(format!("prober {label}: {e}")),
            Err(_) => Err(format!(
                "prober {label}: the thread ended before it was ready"
            )),
        }
    }

    /// How many probes it has sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// How many probes have had their first reply within their window so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::SeqCst)
    }

    /// Stops sending; the prober keeps listening until its last probe's window closed.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Stops sending and returns once the last probe's reply window has closed.
    pub fn finish(self) -> Result<ProbeRun, String> {
        self.stop();
        self.thread
            .join()
            .map_err(|_| "the probe thread panicked".to_string())?
    }
}

fn open_socket() -> Result<std::os::fd::OwnedFd, String> {
    socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Icmp,
    )
    .map_err(|e| format!("failed to open a raw ICMP socket: {e}"))
}

/// The ICMP identifier of this process's probers (one per prober: a counter).
fn next_ident() -> u16 {
    use std::sync::atomic::AtomicU16;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = (std::process::id() as u16).wrapping_mul(31);
    base.wrapping_add(NEXT.fetch_add(1, Ordering::SeqCst))
}

/// What a prober's thread counts for the test's thread to read meanwhile.
struct Counts {
    sent: Arc<AtomicU64>,
    answered: Arc<AtomicU64>,
}

/// Errors that say the destination cannot be reached now (its ARP went unanswered: the
/// kernel reports the ICMP host-unreachable it made on the socket): that probe is lost, and
/// the prober goes on (a bench probes an address before the container holding it exists).
fn unreachable(e: Errno) -> bool {
    matches!(
        e,
        Errno::EHOSTUNREACH | Errno::ENETUNREACH | Errno::EHOSTDOWN | Errno::ENETDOWN
    )
}

fn probe_loop(
    fd: std::os::fd::OwnedFd,
    mut run: ProbeRun,
    stop: &AtomicBool,
    counts: &Counts,
) -> Result<ProbeRun, String> {
    use std::os::fd::AsRawFd;
    let ident = next_ident();
    let dest = SockaddrIn::from(std::net::SocketAddrV4::new(run.to, 0));
    let mut sent_at: Vec<Instant> = Vec::new();
    let mut next = Instant::now();
    let mut listen_until: Option<Instant> = None;
    let mut buf = [0u8; 2048];
    loop {
        let now = Instant::now();
        if listen_until.is_none() && stop.load(Ordering::SeqCst) {
            listen_until = Some(sent_at.last().map_or(now, |t| *t + run.window).max(now));
        }
        match listen_until {
            Some(end) if now >= end => return Ok(run),
            Some(_) => {}
            None if now >= next => {
                let seq = run.probes.len() as u64;
                let packet = echo_request(ident, seq);
                match sendto(fd.as_raw_fd(), &packet, &dest, MsgFlags::empty()) {
                    Ok(_) => {}
                    Err(e) if unreachable(e) => {}
                    Err(e) => return Err(format!("failed to send probe {seq} to {}: {e}", run.to)),
                }
                sent_at.push(Instant::now());
                counts.sent.fetch_add(1, Ordering::SeqCst);
                run.probes.push(Probe {
                    seq,
                    sent: SystemTime::now(),
                    rtt: None,
                    late: None,
                    duplicates: 0,
                });
                // A stalled thread sends late rather than in a burst.
                next = (next + run.interval).max(Instant::now());
            }
            None => {}
        }
        let wake = listen_until.unwrap_or(next);
        let wait = wake
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let tv = TimeVal::new(
            wait.as_secs() as i64,
            i64::from(wait.subsec_micros()).max(1),
        );
        setsockopt(&fd, sockopt::ReceiveTimeout, &tv)
            .map_err(|e| format!("failed to set the receive timeout: {e}"))?;
        match recvfrom::<SockaddrIn>(fd.as_raw_fd(), &mut buf) {
            Ok((n, from)) => {
                let arrived = Instant::now();
                if from.is_some_and(|a| a.ip() != run.to) {
                    continue;
                }
                if let Some(seq) = echo_reply_seq(&buf[..n], ident)
                    && record_reply(&mut run, &sent_at, seq, arrived)
                {
                    counts.answered.fetch_add(1, Ordering::SeqCst);
                }
            }
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(e) if unreachable(e) => {}
            Err(e) => return Err(format!("failed to receive from {}: {e}", run.to)),
        }
    }
}

/// Records a reply; true when it is the first, within its probe's window.
fn record_reply(run: &mut ProbeRun, sent_at: &[Instant], seq: u64, arrived: Instant) -> bool {
    let (Some(p), Some(t)) = (
        usize::try_from(seq)
            .ok()
            .and_then(|i| run.probes.get_mut(i)),
        usize::try_from(seq).ok().and_then(|i| sent_at.get(i)),
    ) else {
        return false;
    };
    let rtt = arrived.saturating_duration_since(*t);
    if p.rtt.is_some() || p.late.is_some() {
        p.duplicates += 1;
        false
    } else if rtt <= run.window {
        p.rtt = Some(rtt);
        true
    } else {
        p.late = Some(rtt);
        false
    }
}

/// An ICMP echo request: identifier, sequence number (low 16 bits of `seq`), and a payload of
/// [`MAGIC`] and the full `seq`.
pub fn echo_request(ident: u16, seq: u64) -> Vec<u8> {
    let mut p = vec![ECHO_REQUEST, 0, 0, 0];
    p.extend_from_slice(&ident.to_be_bytes());
    p.extend_from_slice(&(seq as u16).to_be_bytes());
    p.extend_from_slice(MAGIC);
    p.extend_from_slice(&seq.to_be_bytes());
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The `seq` of an echo reply to one of our requests with `ident`, from a packet as a raw
/// socket receives it (IPv4 header first).
pub fn echo_reply_seq(packet: &[u8], ident: u16) -> Option<u64> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    let icmp = packet.get(ihl..)?;
    if icmp.len() < 24 || icmp[0] != ECHO_REPLY || icmp[1] != 0 {
        return None;
    }
    if u16::from_be_bytes([icmp[4], icmp[5]]) != ident || &icmp[8..16] != MAGIC {
        return None;
    }
    let seq = u64::from_be_bytes(icmp[16..24].try_into().ok()?);
    (seq as u16 == u16::from_be_bytes([icmp[6], icmp[7]])).then_some(seq)
}

/// The Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_received_reply(mut request: Vec<u8>) -> Vec<u8> {
        request[0] = ECHO_REPLY;
        request[2] = 0;
        request[3] = 0;
        let sum = checksum(&request);
        request[2..4].copy_from_slice(&sum.to_be_bytes());
        let mut ip = vec![0x45u8];
        ip.extend_from_slice(&[0; 19]);
        ip.extend(request);
        ip
    }

    #[test]
    fn a_request_checksums_to_zero_and_its_reply_is_recognised() {
        let req = echo_request(0x1234, 70_000);
        assert_eq!(checksum(&req), 0, "a packet with its checksum sums to 0");
        assert_eq!(&req[6..8], &(70_000u64 as u16).to_be_bytes());
        let reply = as_received_reply(req);
        assert_eq!(echo_reply_seq(&reply, 0x1234), Some(70_000));
        assert_eq!(
            echo_reply_seq(&reply, 0x1235),
            None,
            "another prober's reply"
        );
        let mut request_seen = reply.clone();
        request_seen[20] = ECHO_REQUEST;
        assert_eq!(echo_reply_seq(&request_seen, 0x1234), None);
        assert_eq!(echo_reply_seq(&reply[..30], 0x1234), None, "truncated");
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the sum of 0001 f203 f4f5 f6f7 is ddf2, complemented 220d.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
    }

    fn probe(seq: u64, answered: bool) -> Probe {
        Probe {
            seq,
            sent: SystemTime::UNIX_EPOCH + Duration::from_millis(seq * 20),
            rtt: answered.then(|| Duration::from_millis(1)),
            late: None,
            duplicates: 0,
        }
    }

    #[test]
    fn losses_are_grouped_in_bursts_and_late_replies_count_as_lost() {
        let probes: Vec<Probe> = [true, false, false, true, false, true]
            .iter()
            .enumerate()
            .map(|(i, a)| probe(i as u64, *a))
            .collect();
        let bursts: Vec<(u64, u64)> = lost_bursts(&probes)
            .iter()
            .map(|(a, b)| (a.seq, b.seq))
            .collect();
        assert_eq!(bursts, vec![(1, 2), (4, 4)]);
        let mut run = ProbeRun {
            label: "a".into(),
            to: Ipv4Addr::new(10, 0, 0, 2),
            interval: Duration::from_millis(20),
            window: Duration::from_millis(100),
            probes,
        };
        let t0 = Instant::now();
        let sent: Vec<Instant> = (0..6).map(|_| t0).collect();
        record_reply(&mut run, &sent, 4, t0 + Duration::from_millis(500));
        record_reply(&mut run, &sent, 0, t0 + Duration::from_millis(2));
        assert_eq!(
            run.lost().len(),
            3,
            "a late reply does not make a probe answered"
        );
        assert_eq!(run.probes[4].late, Some(Duration::from_millis(500)));
        assert_eq!(run.duplicates(), 1);
        let s = run.summary();
        assert!(s.starts_with("a -> 10.0.0.2: 3 of 6 lost"), "{s}");
        assert!(
            s.contains("lost seq 1..=2 sent 1970-01-01T00:00:00.020Z"),
            "{s}"
        );
    }
}
