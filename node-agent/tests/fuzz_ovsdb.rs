//! Fuzzing the agent's OVSDB JSON-RPC decoder (`make fuzz`; `make test` runs it with a few
//! cases): the framing (`FrameDecoder`, which finds where each message ends in the byte
//! stream) and the meaning (`classify`, which says what a message is). Whatever the server
//! sends and however the socket splits it, the decoder never panics and keeps no more than its
//! limit; a stream of well-formed messages comes out exactly as it went in, whatever the
//! splits; damaged streams fail or decode, never hang or panic.

#[path = "../../schema/tests/support/fuzz.rs"]
mod fuzz;

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use topo_agent::backend::ovsdb_rpc::{FrameDecoder, Incoming, classify};

/// A small limit, so that the fuzzer reaches it.
const LIMIT: usize = 4096;

/// Strings that stress the scanner: brackets, quotes and backslashes inside strings,
/// multi-byte characters, control characters (serialized as escapes).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[{}\\[\\]\"\\\\a-z0-9 :,é😀\n\t\u{0}]{0,16}",
        1 => any::<String>(),
    ]
}

/// Any JSON value, nested a few levels.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A message as a server could send it: RFC 7047 shapes (responses, echo, update
/// notifications, requests) and arbitrary objects and arrays.
fn message() -> impl Strategy<Value = Value> {
    let id = prop_oneof![
        any::<u64>().prop_map(Value::from),
        Just(Value::Null),
        text().prop_map(Value::from),
        value(),
    ];
    prop_oneof![
        (id.clone(), value(), prop_oneof![Just(Value::Null), value()])
            .prop_map(|(id, result, error)| json!({"id": id, "result": result, "error": error})),
        (id.clone(), value()).prop_map(|(id, p)| json!({"method": "echo", "params": p, "id": id})),
        (value(), value())
            .prop_map(|(m, p)| json!({"method": "update", "params": [m, p], "id": null})),
        (text(), value(), id).prop_map(|(m, p, id)| json!({"method": m, "params": p, "id": id})),
        prop::collection::btree_map(text(), value(), 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        prop::collection::vec(value(), 0..4).prop_map(Value::Array),
    ]
}

/// Whitespace a server may put between messages.
fn gap() -> impl Strategy<Value = String> {
    "[ \t\r\n]{0,3}"
}

/// Messages written back to back (compact or pretty, with gaps) and where the reads end.
fn stream() -> impl Strategy<Value = (Vec<Value>, Vec<u8>, Vec<usize>)> {
    (
        prop::collection::vec((message(), any::<bool>(), gap()), 0..6),
        prop::collection::vec(any::<usize>(), 0..12),
    )
        .prop_map(|(msgs, cuts)| {
            let mut bytes = Vec::new();
            let mut values = Vec::new();
            for (v, pretty, gap) in msgs {
                bytes.extend_from_slice(gap.as_bytes());
                let text = if pretty {
                    serde_json::to_vec_pretty(&v)
                } else {
                    serde_json::to_vec(&v)
                }
                .unwrap_or_default();
                // What one parse of the message's own text gives (floats do not round-trip
                // exactly through serde_json's text; that is not the decoder's to fix).
                values.push(serde_json::from_slice(&text).unwrap_or(Value::Null));
                bytes.extend(text);
            }
            (values, bytes, cuts)
        })
}

/// `bytes` in reads ending at `cuts` (taken modulo the length, any order).
fn reads(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect()
}

/// Feeds the reads; stops at the first error as the agent's reader does. The values decoded,
/// and whether the stream failed.
fn decode(limit: usize, reads: &[Vec<u8>]) -> Result<(Vec<Value>, bool), String> {
    let mut d = FrameDecoder::with_limit(limit);
    let mut out = Vec::new();
    for r in reads {
        match d.push(r) {
            Ok(vs) => out.extend(vs),
            Err(_) => return Ok((out, true)),
        }
        if d.pending() > limit {
            return Err(format!(
                "{} bytes pending over the limit {limit}",
                d.pending()
            ));
        }
    }
    if let Some(v) = out.iter().find(|v| !v.is_object() && !v.is_array()) {
        return Err(format!(
            "decoded a message that is neither object nor array: {v}"
        ));
    }
    for v in &out {
        // What a message means is never a panic.
        let _ = classify(v.clone());
    }
    Ok((out, false))
}

#[test]
fn arbitrary_bytes_in_arbitrary_reads() {
    fuzz::fuzz(
        "ovsdb/arbitrary-bytes",
        || {
            (
                prop::collection::vec(any::<u8>(), 0..1024),
                prop::collection::vec(any::<usize>(), 0..8),
            )
        },
        |(bytes, cuts)| decode(LIMIT, &reads(&bytes, &cuts)).map(drop),
    );
}

#[test]
fn messages_come_out_as_they_went_in() {
    fuzz::fuzz(
        "ovsdb/well-formed-streams",
        stream,
        |(values, bytes, cuts)| {
            let (got, failed) = decode(usize::MAX, &reads(&bytes, &cuts))?;
            if failed || got != values {
                return Err(format!(
                    "sent {values:?}\ngot {got:?} (failed: {failed})\nbytes {:?}",
                    String::from_utf8_lossy(&bytes)
                ));
            }
            Ok(())
        },
    );
}

/// A byte changed, dropped or added somewhere in a well-formed stream.
#[derive(Debug, Clone)]
enum Damage {
    Set(usize, u8),
    Drop(usize),
    Add(usize, u8),
}

#[test]
fn damaged_streams_fail_or_decode() {
    let damage = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Damage::Set(i, b)),
        any::<usize>().prop_map(Damage::Drop),
        (
            any::<usize>(),
            prop::sample::select(b"{}[]\"\\ ,:".to_vec())
        )
            .prop_map(|(i, b)| Damage::Add(i, b)),
    ];
    fuzz::fuzz(
        "ovsdb/damaged-streams",
        || (stream(), prop::collection::vec(damage, 1..4)),
        |((_, mut bytes, cuts), damage)| {
            for d in damage {
                let n = bytes.len();
                match d {
                    Damage::Set(i, b) if n > 0 => bytes[i % n] = b,
                    Damage::Drop(i) if n > 0 => drop(bytes.remove(i % n)),
                    Damage::Add(i, b) => bytes.insert(i % (n + 1), b),
                    _ => {}
                }
            }
            decode(LIMIT, &reads(&bytes, &cuts)).map(drop)
        },
    );
}

#[test]
fn classify_answers_every_message() {
    fuzz::fuzz("ovsdb/classify", message, |v| {
        let method = v.get("method").and_then(Value::as_str).map(str::to_string);
        let incoming = classify(v.clone());
        // Anything with a string method is the server's: never taken for an answer.
        if method.is_some()
            && matches!(
                incoming,
                Incoming::Response { .. } | Incoming::Ignored { .. }
            )
        {
            return Err(format!("{v} taken for {incoming:?}"));
        }
        if let Incoming::Response { id, .. } = incoming
            && v.get("id").and_then(Value::as_u64) != Some(id)
        {
            return Err(format!("{v} answered request {id}"));
        }
        Ok(())
    });
}

/// A message larger than the limit fails the stream rather than growing the buffer.
#[test]
fn an_endless_message_is_refused_at_the_limit() {
    let mut d = FrameDecoder::with_limit(LIMIT);
    assert!(d.push(b"{\"a\": [").unwrap().is_empty());
    let chunk = [b'1', b','].repeat(512);
    let mut failed = false;
    for _ in 0..(4 * LIMIT / chunk.len()) {
        if d.push(&chunk).is_err() {
            failed = true;
            break;
        }
        assert!(d.pending() <= LIMIT);
    }
    assert!(failed, "never refused; {} bytes pending", d.pending());
}
