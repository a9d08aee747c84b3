//! The OVSDB JSON-RPC decoder's cost per byte as messages grow: `cargo bench -p topo-agent
//! --bench ovsdb_decode` (a plain binary; `make bench` runs it). Each message is a monitor
//! reply of N bytes fed in 64 KiB reads, as the agent's reader gets them from the socket.
//! The decoder of this crate should cost the same per byte at every size; the decoder it
//! replaced (kept below for the comparison) reparsed its buffer on every read, so its cost
//! per byte grows with the message.

use std::hint::black_box;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use topo_agent::backend::ovsdb_rpc::FrameDecoder;

const READ: usize = 64 * 1024;

/// A monitor reply (RFC 7047 4.1.5) of about `bytes` bytes: Interface rows as the agent
/// monitors them.
fn monitor_reply(bytes: usize) -> Vec<u8> {
    let mut rows = serde_json::Map::new();
    let mut i = 0usize;
    let mut size = 0usize;
    while size < bytes {
        let row = json!({"new": {
            "name": format!("tv-web{i:06x}"),
            "type": "",
            "external_ids": ["map", [["topo.dev/managed", "true"], ["topo.dev/node", "node1"],
                                      ["topo.dev/object", format!("container/web-{i}")]]],
            "statistics": ["map", [["rx_packets", i * 7], ["tx_packets", i * 3], ["rx_bytes", i * 1000]]],
            "mtu_request": 1458,
            "options": ["map", []],
        }});
        size += row.to_string().len() + 48;
        rows.insert(format!("8e3b{i:08x}-0000-4000-8000-{i:012x}"), row);
        i += 1;
    }
    json!({"id": 1, "result": {"Interface": rows}, "error": null})
        .to_string()
        .into_bytes()
}

/// The decoder this crate had before: `serde_json`'s stream over the whole buffer per read.
#[derive(Default)]
struct Reparsing {
    buf: Vec<u8>,
}

impl Reparsing {
    fn push(&mut self, bytes: &[u8]) -> Vec<Value> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut stream = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
        let consumed = loop {
            match stream.next() {
                Some(Ok(v)) => out.push(v),
                Some(Err(e)) if e.is_eof() => break stream.byte_offset(),
                Some(Err(e)) => panic!("{e}"),
                None => break stream.byte_offset(),
            }
        };
        self.buf.drain(..consumed);
        out
    }
}

/// Best of `runs`: the time to decode `msg` read by read, and the values decoded.
fn time(runs: usize, msg: &[u8], mut decode: impl FnMut(&[u8]) -> usize) -> Duration {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            let n = decode(msg);
            let took = t.elapsed();
            assert_eq!(n, 1, "one message decoded");
            took
        })
        .min()
        .unwrap_or_default()
}

fn ns_per_byte(d: Duration, bytes: usize) -> f64 {
    d.as_nanos() as f64 / bytes as f64
}

fn main() {
    println!(
        "| message | reads | this decoder | ns/byte | one serde_json::from_slice | ns/byte | the reparsing decoder | ns/byte |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for kib in [16usize, 256, 1024, 4096, 16384, 65536 - 1024] {
        let msg = monitor_reply(kib * 1024);
        let runs = if kib <= 1024 { 5 } else { 2 };
        let new = time(runs, &msg, |m| {
            let mut d = FrameDecoder::default();
            m.chunks(READ)
                .map(|c| black_box(d.push(c).expect("decodes")).len())
                .sum()
        });
        let whole = time(runs, &msg, |m| {
            usize::from(black_box(serde_json::from_slice::<Value>(m).is_ok()))
        });
        let old = (kib <= 16384).then(|| {
            time(1, &msg, |m| {
                let mut d = Reparsing::default();
                m.chunks(READ).map(|c| black_box(d.push(c)).len()).sum()
            })
        });
        let (old_ms, old_nspb) = match old {
            Some(d) => (
                format!("{:.1} ms", d.as_secs_f64() * 1e3),
                format!("{:.1}", ns_per_byte(d, msg.len())),
            ),
            None => ("(minutes)".to_string(), "-".to_string()),
        };
        println!(
            "| {:.1} MiB | {} | {:.1} ms | {:.1} | {:.1} ms | {:.1} | {old_ms} | {old_nspb} |",
            msg.len() as f64 / (1024.0 * 1024.0),
            msg.len().div_ceil(READ),
            new.as_secs_f64() * 1e3,
            ns_per_byte(new, msg.len()),
            whole.as_secs_f64() * 1e3,
            ns_per_byte(whole, msg.len()),
        );
    }
}
