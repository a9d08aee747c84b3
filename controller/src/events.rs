//! Events: what happened to objects, kept in etcd with a bounded history.
//!
//! One key per distinct (object, reason, message, source) under
//! `keys::object_events_prefix`; a repeat bumps `count` and `lastTimestamp` of that key.
//! At most [`MAX_PER_OBJECT`] events per object (kept on every record) and [`MAX_TOTAL`]
//! overall (kept by [`prune`], which the leader runs); the oldest by `lastTimestamp` go first.
//! Agents write the same JSON (`api::Event`) under the same keys.

use chrono::Utc;
use etcd_client::{Client, Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp};
use topo_schema::api::{Event, EventType};
use topo_schema::keys;
use topo_schema::{Kind, ObjectRef};

use crate::cache::MAX_MESSAGE_BYTES;
use crate::commit::{EncodeError, encode};

/// The `source` of the events the controller records (its own, not an agent's).
pub const EVENT_SOURCE: &str = "controller";

pub const MAX_PER_OBJECT: usize = 20;
pub const MAX_TOTAL: usize = 1000;
const MAX_ATTEMPTS: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("failed to {what} in etcd")]
    Etcd {
        what: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("failed to record an event of {0}: too many concurrent updates")]
    Contended(ObjectRef),
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

fn etcd(what: &'static str) -> impl FnOnce(etcd_client::Error) -> EventsError {
    move |source| EventsError::Etcd { what, source }
}

pub fn event_key(ev: &Event) -> String {
    format!(
        "{}{}",
        keys::object_events_prefix(ev.object.kind, &ev.object.name),
        ev.dedup_id()
    )
}

/// A new event with count 1, stamped now.
pub fn new_event(
    object: ObjectRef,
    type_: EventType,
    reason: &str,
    message: &str,
    source: &str,
) -> Event {
    let now = Utc::now();
    Event {
        object,
        type_,
        reason: reason.to_string(),
        message: message.to_string(),
        count: 1,
        first_timestamp: now,
        last_timestamp: now,
        source: source.to_string(),
    }
}

/// Records `ev`; a repeat of a recorded event bumps its count and lastTimestamp.
pub async fn record(client: &Client, ev: Event) -> Result<(), EventsError> {
    let key = event_key(&ev);
    let mut kv = client.kv_client();
    for _ in 0..MAX_ATTEMPTS {
        let resp = kv
            .get(key.as_str(), None)
            .await
            .map_err(etcd("read an event"))?;
        let (value, compare) = match resp.kvs().first() {
            Some(old) => {
                let merged = match serde_json::from_slice::<Event>(old.value()) {
                    Ok(prev) => Event {
                        count: prev.count.saturating_add(ev.count.max(1)),
                        first_timestamp: prev.first_timestamp.min(ev.first_timestamp),
                        last_timestamp: prev.last_timestamp.max(ev.last_timestamp),
                        ..ev.clone()
                    },
                    Err(_) => ev.clone(),
                };
                (
                    merged,
                    Compare::mod_revision(key.as_str(), CompareOp::Equal, old.mod_revision()),
                )
            }
            None => (
                ev.clone(),
                Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            ),
        };
        let v = encode(&key, &value)?;
        let txn = Txn::new()
            .when(vec![compare])
            .and_then(vec![TxnOp::put(key.as_str(), v, None)]);
        if kv
            .txn(txn)
            .await
            .map_err(etcd("write an event"))?
            .succeeded()
        {
            if resp.kvs().is_empty() {
                prune_object(client, ev.object.kind, &ev.object.name).await?;
            }
            return Ok(());
        }
    }
    Err(EventsError::Contended(ev.object))
}

/// Events of one object, or all, oldest first; with the revision they were read at.
pub async fn list(
    client: &Client,
    object: Option<&ObjectRef>,
) -> Result<(Vec<Event>, i64), EventsError> {
    list_at(client, object, None).await
}

/// Like [`list`], at etcd revision `revision` when given (the pages of one list).
pub async fn list_at(
    client: &Client,
    object: Option<&ObjectRef>,
    revision: Option<i64>,
) -> Result<(Vec<Event>, i64), EventsError> {
    let (mut evs, rev) = read_at(client, &keys::events_prefix(), revision).await?;
    if let Some(o) = object {
        evs.retain(|(_, e)| &e.object == o);
    }
    // Ties (same timestamp) in key order, so pages at one revision cut the same list.
    evs.sort_by(|a, b| {
        a.1.last_timestamp
            .cmp(&b.1.last_timestamp)
            .then(a.0.cmp(&b.0))
    });
    Ok((evs.into_iter().map(|(_, e)| e).collect(), rev))
}

async fn read(client: &Client, prefix: &str) -> Result<(Vec<(String, Event)>, i64), EventsError> {
    read_at(client, prefix, None).await
}

async fn read_at(
    client: &Client,
    prefix: &str,
    revision: Option<i64>,
) -> Result<(Vec<(String, Event)>, i64), EventsError> {
    let mut opts = GetOptions::new().with_prefix();
    if let Some(r) = revision {
        opts = opts.with_revision(r);
    }
    let resp = client
        .kv_client()
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .get(prefix, Some(opts))
        .await
        .map_err(etcd("list events"))?;
    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
    let evs = resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            let k = kv.key_str().ok()?.to_string();
            let e = serde_json::from_slice::<Event>(kv.value()).ok()?;
            Some((k, e))
        })
        .collect();
    Ok((evs, rev))
}

async fn delete_oldest(
    client: &Client,
    mut evs: Vec<(String, Event)>,
    keep: usize,
) -> Result<usize, EventsError> {
    if evs.len() <= keep {
        return Ok(0);
    }
    evs.sort_by_key(|a| a.1.last_timestamp);
    let n = evs.len() - keep;
    let mut kv = client.kv_client();
    for chunk in evs[..n].chunks(100) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|(k, _)| TxnOp::delete(k.as_str(), None))
            .collect();
        kv.txn(Txn::new().and_then(ops))
            .await
            .map_err(etcd("prune events"))?;
    }
    Ok(n)
}

async fn prune_object(client: &Client, kind: Kind, name: &str) -> Result<(), EventsError> {
    let (evs, _) = read(client, &keys::object_events_prefix(kind, name)).await?;
    delete_oldest(client, evs, MAX_PER_OBJECT).await?;
    Ok(())
}

/// Keeps at most [`MAX_PER_OBJECT`] per object and `max_total` overall. Returns how many
/// events it removed.
pub async fn prune(client: &Client, max_total: usize) -> Result<usize, EventsError> {
    let (evs, _) = read(client, &keys::events_prefix()).await?;
    let mut by_object: std::collections::BTreeMap<ObjectRef, Vec<(String, Event)>> =
        Default::default();
    for (k, e) in evs {
        by_object.entry(e.object.clone()).or_default().push((k, e));
    }
    let mut removed = 0;
    let mut rest = Vec::new();
    for (_, evs) in by_object {
        let mut evs = evs;
        evs.sort_by_key(|a| a.1.last_timestamp);
        let cut = evs.len().saturating_sub(MAX_PER_OBJECT);
        let kept = evs.split_off(cut);
        removed += delete_oldest(client, evs, 0).await?;
        rest.extend(kept);
    }
    removed += delete_oldest(client, rest, max_total).await?;
    Ok(removed)
}

/// Removes every event of an object (after it is deleted, if the caller wants that).
pub async fn forget(client: &Client, object: &ObjectRef) -> Result<(), EventsError> {
    client
        .kv_client()
        .delete(
            keys::object_events_prefix(object.kind, &object.name),
            Some(DeleteOptions::new().with_prefix()),
        )
        .await
        .map_err(etcd("delete events"))?;
    Ok(())
}
