//! Paginated lists and events, as Kubernetes does them: `limit=N` cuts a list and its
//! metadata carries `continue`, an opaque token; passing it back gives the next page. Every
//! page of one list is the state at the first page's revision: the first comes from the
//! cache snapshot, later ones from etcd read at that revision (a compacted revision is 410
//! Expired: list again). Events are ordered by time, so their token is an offset into the
//! list read at that revision.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use etcd_client::GetOptions;
use serde::{Deserialize, Serialize};
use topo_schema::api::{ApiError, ErrorReason, Event, LabelSelector, List, ListMeta};
use topo_schema::{Kind, ObjectRef, Resource, keys};

use crate::cache::{MAX_MESSAGE_BYTES, decode_object};
use crate::reply::{ApiErr, AppState, etcd_unavailable};

/// The largest page; a bigger `limit` is cut to it.
pub const MAX_LIMIT: usize = 5000;
/// The page size when only `continue` is given.
pub const DEFAULT_LIMIT: usize = 500;
/// Objects read from etcd per round trip while filling a later page.
const ETCD_CHUNK: i64 = 500;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Token {
    /// The revision of the first page.
    rv: i64,
    /// Objects: the last name sent. Events: how many were sent.
    #[serde(default)]
    after: String,
    #[serde(default)]
    offset: usize,
}

impl Token {
    fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    fn decode(s: &str) -> Result<Token, String> {
        URL_SAFE_NO_PAD
            .decode(s)
            .ok()
            .and_then(|b| serde_json::from_slice::<Token>(&b).ok())
            .filter(|t| t.rv > 0)
            .ok_or_else(|| format!("invalid continue token {s:?}: pass the one a list returned"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    limit: usize,
    token: Option<Token>,
}

impl PageRequest {
    /// None when the request asks for no page (no `limit`, no `continue`).
    pub fn from_params(q: &HashMap<String, String>) -> Result<Option<PageRequest>, String> {
        let limit = match q.get("limit").map(String::as_str) {
            None | Some("") | Some("0") => None,
            Some(s) => Some(
                s.parse::<usize>()
                    .map_err(|_| format!("invalid limit {s:?}: expected a positive integer"))?
                    .min(MAX_LIMIT),
            ),
        };
        let token = match q.get("continue").map(String::as_str) {
            None | Some("") => None,
            Some(s) => Some(Token::decode(s)?),
        };
        if limit.is_none() && token.is_none() {
            return Ok(None);
        }
        Ok(Some(PageRequest {
            limit: limit.unwrap_or(DEFAULT_LIMIT),
            token,
        }))
    }
}

fn page<T>(items: Vec<T>, rv: i64, next: Option<Token>) -> List<T> {
    let mut list = List::new(items, Some(rv.to_string()));
    list.metadata = Some(ListMeta {
        resource_version: rv.to_string(),
        continue_: next.map(|t| t.encode()),
    });
    list
}

fn expired_or_unavailable(e: &etcd_client::Error) -> ApiErr {
    if e.to_string().contains("compacted") {
        ApiErr(ApiError::new(
            ErrorReason::Expired,
            "the continue token is too old (its revision was compacted): list again",
        ))
    } else {
        etcd_unavailable(e)
    }
}

/// One page of the objects of `kind` matching `selector`.
pub async fn list_objects(
    st: &AppState,
    kind: Kind,
    selector: &LabelSelector,
    req: PageRequest,
) -> Result<List<Resource>, ApiErr> {
    let snap = st.store.snapshot();
    let (rv, after) = match &req.token {
        None => (snap.revision, String::new()),
        Some(t) => (t.rv, t.after.clone()),
    };
    let mut items: Vec<Resource> = if snap.revision == rv {
        snap.objects
            .range(ObjectRef::new(kind, after.as_str())..)
            .take_while(|(r, _)| r.kind == kind)
            .filter(|(r, _)| r.name != after)
            .map(|(_, o)| &o.resource)
            .filter(|r| selector.matches(&r.metadata().labels))
            .take(req.limit + 1)
            .cloned()
            .collect()
    } else {
        read_objects_at(st, kind, selector, rv, &after, req.limit + 1).await?
    };
    let next = (items.len() > req.limit).then(|| {
        items.truncate(req.limit);
        Token {
            rv,
            after: items
                .last()
                .map(|r| r.name().to_string())
                .unwrap_or_default(),
            offset: 0,
        }
    });
    Ok(page(items, rv, next))
}

/// Up to `want` objects after `after` as they were at revision `rv`, with their status.
async fn read_objects_at(
    st: &AppState,
    kind: Kind,
    selector: &LabelSelector,
    rv: i64,
    after: &str,
    want: usize,
) -> Result<Vec<Resource>, ApiErr> {
    let mut kv = st
        .client
        .kv_client()
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let end = keys::prefix_end(&keys::objects_prefix(kind));
    let mut from = format!("{}\0", keys::object(kind, after)).into_bytes();
    let mut out = Vec::new();
    while out.len() < want {
        let opts = GetOptions::new()
            .with_range(end.clone())
            .with_revision(rv)
            .with_limit(ETCD_CHUNK);
        let resp = kv
            .get(from.clone(), Some(opts))
            .await
            .map_err(|e| expired_or_unavailable(&e))?;
        for o in resp.kvs() {
            let Some((_, name)) = o.key_str().ok().and_then(keys::parse_object_key) else {
                continue;
            };
            if let Some(mut r) = decode_object(kind, name, o.value())
                && selector.matches(&r.metadata().labels)
            {
                r.metadata_mut().resource_version = Some(o.mod_revision().to_string());
                let status = kv
                    .get(
                        keys::status(kind, name),
                        Some(GetOptions::new().with_revision(rv)),
                    )
                    .await
                    .map_err(|e| expired_or_unavailable(&e))?;
                if let Some(s) = status.kvs().first()
                    && let Ok(v) = serde_json::from_slice(s.value())
                {
                    r.set_status_value(v);
                }
                out.push(r);
            }
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => from = [last.key(), b"\0"].concat(),
            _ => break,
        }
    }
    Ok(out)
}

/// One page of events (of one object, or all), oldest first.
pub async fn list_events(
    st: &AppState,
    object: Option<&ObjectRef>,
    req: Option<PageRequest>,
) -> Result<List<Event>, ApiErr> {
    let revision = req.as_ref().and_then(|r| r.token.as_ref()).map(|t| t.rv);
    let (evs, rv) = crate::events::list_at(&st.client, object, revision)
        .await
        .map_err(|e| match &e {
            crate::events::EventsError::Etcd { source, .. } => expired_or_unavailable(source),
            other => ApiErr(ApiError::new(
                ErrorReason::ServiceUnavailable,
                other.to_string(),
            )),
        })?;
    let Some(req) = req else {
        return Ok(List::new(evs, Some(rv.to_string())));
    };
    let offset = req.token.as_ref().map(|t| t.offset).unwrap_or(0);
    let total = evs.len();
    let items: Vec<Event> = evs.into_iter().skip(offset).take(req.limit).collect();
    let sent = offset + items.len();
    let next = (sent < total).then(|| Token {
        rv,
        after: String::new(),
        offset: sent,
    });
    Ok(page(items, rv, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_bad_ones_are_refused() {
        let t = Token {
            rv: 42,
            after: "web-7".into(),
            offset: 0,
        };
        assert_eq!(Token::decode(&t.encode()).unwrap(), t);
        assert!(Token::decode("garbage").is_err());
        let q = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        assert_eq!(PageRequest::from_params(&q(&[])).unwrap(), None);
        let p = PageRequest::from_params(&q(&[("limit", "999999")]))
            .unwrap()
            .unwrap();
        assert_eq!(p.limit, MAX_LIMIT);
        assert!(PageRequest::from_params(&q(&[("limit", "-1")])).is_err());
    }
}
