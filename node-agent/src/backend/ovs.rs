//! Open vSwitch through the OVSDB protocol (RFC 7047) on the local unix socket.
//!
//! Ownership is by `external_ids` (`topo.dev/managed`, `topo.dev/node`, `topo.dev/object`):
//! [`check_changes`] refuses to delete or update any row without them before a transaction
//! is sent. Every [`Ovs::apply`] is ONE OVSDB transaction built from the changes
//! ([`transaction_ops`]), so the switch never holds half a change; the monitor feeds the
//! drift stream. The connection itself (framing, echo, request ids) is `ovsdb_rpc.rs`,
//! which knows nothing of the switch.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::{Value, json};
use topo_schema::slice::owner;
use tracing::{debug, info, warn};

use super::ovsdb_rpc::{Notification, RpcClient, RpcError};
use super::{
    ObservedBridge, ObservedInterface, ObservedPort, Ovs, OvsEvent, OvsTable, PortKind, RowChange,
};

#[derive(Debug, thiserror::Error)]
pub enum OvsError {
    #[error("failed to connect to ovsdb-server at {path}")]
    Connect {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to talk to ovsdb-server")]
    Io(#[source] io::Error),
    #[error("failed to talk to ovsdb-server: the connection is closed")]
    Disconnected,
    #[error("failed to get an answer from ovsdb-server to {method} in time")]
    Timeout { method: String },
    #[error("failed to run {method}: {error}")]
    Rpc { method: String, error: String },
    #[error("failed to commit the OVSDB transaction: {error}{}", details.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Transaction {
        error: String,
        details: Option<String>,
    },
    #[error("failed to decode {what}")]
    Decode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("failed to understand ovsdb-server's answer: {0}")]
    Protocol(String),
    #[error("refused to change {what}: it has no topo external_ids")]
    NotOwned { what: String },
    #[error("failed to find {what}")]
    NotFound { what: String },
    #[error("failed to add {what}: it exists")]
    Exists { what: String },
    #[error(
        "failed to find ovs-vswitchd's control socket in {dir}: neither ovs-vswitchd.ctl nor a readable ovs-vswitchd.pid"
    )]
    NoControlSocket { dir: String },
    #[error("failed to run {command} on ovs-vswitchd's control socket {path}")]
    Control {
        path: String,
        command: String,
        #[source]
        source: RpcError,
    },
}

use super::{OvsChange, OvsState};

impl From<RpcError> for OvsError {
    fn from(e: RpcError) -> Self {
        match e {
            RpcError::Connect { path, source } => OvsError::Connect { path, source },
            RpcError::Disconnected => OvsError::Disconnected,
            RpcError::Timeout { method } => OvsError::Timeout { method },
            RpcError::Rpc { method, error } => OvsError::Rpc { method, error },
        }
    }
}

const DB: &str = "Open_vSwitch";

/// Checks `changes` against `state` before anything is sent: what is deleted or updated must
/// carry topo's external_ids, ports go only on owned bridges (existing or added in the same
/// transaction), and nothing is added under a name that exists. Deleting something absent is
/// allowed (idempotent) and left out by [`effective_changes`].
pub fn check_changes(state: &OvsState, changes: &[OvsChange]) -> Result<(), OvsError> {
    let mut added_bridges: Vec<&str> = Vec::new();
    for c in changes {
        match c {
            OvsChange::AddBridge { name, .. } => {
                if state.bridges.contains_key(name) || added_bridges.contains(&name.as_str()) {
                    return Err(OvsError::Exists {
                        what: format!("bridge {name}"),
                    });
                }
                added_bridges.push(name);
            }
            OvsChange::UpdateBridge { name, .. } => match state.bridges.get(name) {
                None => {
                    return Err(OvsError::NotFound {
                        what: format!("bridge {name}"),
                    });
                }
                Some(b) if !b.owned => {
                    return Err(OvsError::NotOwned {
                        what: format!("bridge {name}"),
                    });
                }
                Some(_) => {}
            },
            OvsChange::DeleteBridge { name } => {
                if let Some(b) = state.bridges.get(name)
                    && !b.owned
                {
                    return Err(OvsError::NotOwned {
                        what: format!("bridge {name}"),
                    });
                }
            }
            OvsChange::AddPort { bridge, name, .. } => {
                if !added_bridges.contains(&bridge.as_str()) {
                    match state.bridges.get(bridge) {
                        None => {
                            return Err(OvsError::NotFound {
                                what: format!("bridge {bridge}"),
                            });
                        }
                        Some(b) if !b.owned => {
                            return Err(OvsError::NotOwned {
                                what: format!("bridge {bridge}"),
                            });
                        }
                        Some(_) => {}
                    }
                }
                if state.bridges.values().any(|b| b.ports.contains_key(name)) {
                    return Err(OvsError::Exists {
                        what: format!("port {name}"),
                    });
                }
            }
            OvsChange::UpdatePort { bridge, name, .. } => {
                match state.bridges.get(bridge).and_then(|b| b.ports.get(name)) {
                    None => {
                        return Err(OvsError::NotFound {
                            what: format!("port {name} on bridge {bridge}"),
                        });
                    }
                    Some(p) if !p.owned => {
                        return Err(OvsError::NotOwned {
                            what: format!("port {name}"),
                        });
                    }
                    Some(_) => {}
                }
            }
            OvsChange::DeletePort { bridge, name } => {
                if let Some(p) = state.bridges.get(bridge).and_then(|b| b.ports.get(name))
                    && !p.owned
                {
                    return Err(OvsError::NotOwned {
                        what: format!("port {name}"),
                    });
                }
            }
        }
    }
    Ok(())
}

/// `changes` without deletions of what is already absent.
pub fn effective_changes(state: &OvsState, changes: &[OvsChange]) -> Vec<OvsChange> {
    changes
        .iter()
        .filter(|c| match c {
            OvsChange::DeleteBridge { name } => state.bridges.contains_key(name),
            OvsChange::DeletePort { bridge, name } => state
                .bridges
                .get(bridge)
                .is_some_and(|b| b.ports.contains_key(name)),
            _ => true,
        })
        .cloned()
        .collect()
}

// ---------------------------------------------------------------- OVSDB value encoding

/// The atoms of an OVSDB set value (`["set", [..]]`, or a single atom).
fn set_items(v: &Value) -> Vec<&Value> {
    match v.as_array() {
        Some(a) if a.len() == 2 && a[0] == "set" => a[1]
            .as_array()
            .map(|x| x.iter().collect())
            .unwrap_or_default(),
        _ => vec![v],
    }
}

/// An OVSDB map of strings (`["map", [[k, v], ..]]`).
fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(pairs) = v
        .and_then(Value::as_array)
        .filter(|a| a.len() == 2 && a[0] == "map")
        .and_then(|a| a[1].as_array())
    {
        for p in pairs {
            if let (Some(k), Some(v)) = (
                p.get(0).and_then(Value::as_str),
                p.get(1).and_then(Value::as_str),
            ) {
                out.insert(k.to_string(), v.to_string());
            }
        }
    }
    out
}

fn map_value(m: &BTreeMap<String, String>) -> Value {
    json!([
        "map",
        m.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>()
    ])
}

fn uuid_of(v: &Value) -> Option<String> {
    let a = v.as_array()?;
    (a.len() == 2 && a[0] == "uuid").then(|| a[1].as_str().map(str::to_string))?
}

fn uuids(v: Option<&Value>) -> Vec<String> {
    v.map(|v| set_items(v).into_iter().filter_map(uuid_of).collect())
        .unwrap_or_default()
}

/// An optional (min 0, max 1) integer column.
fn opt_int(v: Option<&Value>) -> Option<i64> {
    v.and_then(|v| set_items(v).first().and_then(|x| x.as_i64()))
}

fn opt_string(v: Option<&Value>) -> Option<String> {
    v.and_then(|v| {
        set_items(v)
            .first()
            .and_then(|x| x.as_str().map(str::to_string))
    })
}

fn owned(ids: &BTreeMap<String, String>) -> bool {
    ids.get(owner::MANAGED).map(String::as_str) == Some("true")
}

/// Rows of one table by uuid.
type Rows = BTreeMap<String, serde_json::Map<String, Value>>;

/// What the switch holds, with the row uuids a transaction needs.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub state: OvsState,
    pub bridge_uuid: BTreeMap<String, String>,
    /// (bridge, port) → port uuid.
    pub port_uuid: BTreeMap<(String, String), String>,
}

const BRIDGE_COLUMNS: [&str; 6] = [
    "_uuid",
    "name",
    "datapath_type",
    "rstp_enable",
    "external_ids",
    "ports",
];
const PORT_COLUMNS: [&str; 5] = ["_uuid", "name", "protected", "external_ids", "interfaces"];
const INTERFACE_COLUMNS: [&str; 7] = [
    "_uuid",
    "name",
    "type",
    "options",
    "mtu_request",
    "ofport",
    "error",
];

/// The read-only transaction of [`Snapshot`]: one select per table.
/// How long [`Ovs::apply_and_wait`] waits for ovs-vswitchd to reconfigure.
const RECONFIGURE_WAIT: Duration = Duration::from_secs(3);

/// Operations appended to a transaction so that ovs-vswitchd reports (in `cur_cfg`) when it
/// has applied it: bump `next_cfg`, and read it back (the last result).
pub fn next_cfg_ops() -> [Value; 2] {
    [
        json!({"op": "mutate", "table": DB, "where": [], "mutations": [["next_cfg", "+=", 1]]}),
        json!({"op": "select", "table": DB, "where": [], "columns": ["next_cfg"]}),
    ]
}

fn cur_cfg_ops() -> Value {
    json!([DB, {"op": "select", "table": DB, "where": [], "columns": ["cur_cfg"]}])
}

/// `column` of the Open_vSwitch row in the last result of a transaction's answer.
pub fn selected_cfg(result: &Value, column: &str) -> Option<i64> {
    result
        .as_array()?
        .last()?
        .get("rows")?
        .get(0)?
        .get(column)?
        .as_i64()
}

pub fn select_ops() -> Value {
    json!([
        DB,
        {"op": "select", "table": "Bridge", "where": [], "columns": BRIDGE_COLUMNS},
        {"op": "select", "table": "Port", "where": [], "columns": PORT_COLUMNS},
        {"op": "select", "table": "Interface", "where": [], "columns": INTERFACE_COLUMNS},
    ])
}

fn rows(result: &Value, i: usize) -> Result<Rows, OvsError> {
    let r = result
        .get(i)
        .ok_or_else(|| OvsError::Protocol(format!("select result {i} is missing")))?;
    if let Some(e) = r.get("error") {
        return Err(OvsError::Transaction {
            error: e.to_string(),
            details: r.get("details").map(|d| d.to_string()),
        });
    }
    let list = r
        .get("rows")
        .and_then(Value::as_array)
        .ok_or_else(|| OvsError::Protocol(format!("select result {i} has no rows")))?;
    let mut out = Rows::new();
    for row in list {
        let Some(obj) = row.as_object() else { continue };
        if let Some(u) = obj.get("_uuid").and_then(uuid_of) {
            out.insert(u, obj.clone());
        }
    }
    Ok(out)
}

/// Builds the snapshot from the result of [`select_ops`].
pub fn parse_snapshot(result: &Value) -> Result<Snapshot, OvsError> {
    snapshot_of(rows(result, 0)?, rows(result, 1)?, rows(result, 2)?)
}

/// What a change set must read of the switch before it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every bridge, port and interface: a bridge is added, changed or deleted.
    All,
    /// Every bridge (a node has a handful) and only the named ports and their interfaces
    /// (topo names a port's interface as the port). A container's port added to a bridge of
    /// 250 then reads one port, not 250 ports and interfaces.
    Ports(Vec<String>),
    /// Every bridge, the ports topo made for `object` (by their external_ids) and the ports
    /// named `names` with their interfaces: what one container's plumbing plans against.
    Container { object: String, names: Vec<String> },
}

impl Selection {
    pub fn for_changes(changes: &[OvsChange]) -> Selection {
        let mut names = Vec::new();
        for c in changes {
            match c {
                OvsChange::AddPort { name, .. }
                | OvsChange::UpdatePort { name, .. }
                | OvsChange::DeletePort { name, .. } => {
                    if !names.contains(name) {
                        names.push(name.clone());
                    }
                }
                OvsChange::AddBridge { .. }
                | OvsChange::UpdateBridge { .. }
                | OvsChange::DeleteBridge { .. } => return Selection::All,
            }
        }
        Selection::Ports(names)
    }

    /// The select operations: bridges, then one select of ports and one of interfaces per
    /// name (OVSDB's conditions only AND).
    pub fn ops(&self) -> Value {
        let (object, names) = match self {
            Selection::All => return select_ops(),
            Selection::Ports(names) => (None, names),
            Selection::Container { object, names } => (Some(object), names),
        };
        let mut ops = vec![
            json!(DB),
            json!({"op": "select", "table": "Bridge", "where": [], "columns": BRIDGE_COLUMNS}),
        ];
        if let Some(object) = object {
            let owned_by = json!([[
                "external_ids",
                "includes",
                ["map", [[owner::OBJECT, object]]]
            ]]);
            ops.push(json!({"op": "select", "table": "Port", "where": owned_by, "columns": PORT_COLUMNS}));
        }
        for (table, columns) in [
            ("Port", &PORT_COLUMNS[..]),
            ("Interface", &INTERFACE_COLUMNS[..]),
        ] {
            for name in names {
                ops.push(json!({"op": "select", "table": table, "where": where_name(name), "columns": columns}));
            }
        }
        Value::Array(ops)
    }

    pub fn parse(&self, result: &Value) -> Result<Snapshot, OvsError> {
        let (by_object, names) = match self {
            Selection::All => return parse_snapshot(result),
            Selection::Ports(names) => (0, names),
            Selection::Container { names, .. } => (1, names),
        };
        let merged = |from: usize, n: usize| -> Result<Rows, OvsError> {
            let mut all = Rows::new();
            for i in from..from + n {
                all.extend(rows(result, i)?);
            }
            Ok(all)
        };
        let n = names.len();
        let ports = merged(1, by_object + n)?;
        let ifaces = merged(1 + by_object + n, n)?;
        snapshot_of(rows(result, 0)?, ports, ifaces)
    }
}

fn snapshot_of(bridges: Rows, ports: Rows, ifaces: Rows) -> Result<Snapshot, OvsError> {
    let mut snap = Snapshot::default();
    for (buuid, b) in &bridges {
        let name = b
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let ids = string_map(b.get("external_ids"));
        let mut ob = ObservedBridge {
            name: name.clone(),
            datapath_type: b
                .get("datapath_type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            rstp: b
                .get("rstp_enable")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            owned: owned(&ids),
            external_ids: ids,
            ports: BTreeMap::new(),
        };
        for puuid in uuids(b.get("ports")) {
            let Some(p) = ports.get(&puuid) else { continue };
            let pname = p
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let pids = string_map(p.get("external_ids"));
            let interfaces = uuids(p.get("interfaces"))
                .iter()
                .filter_map(|iu| ifaces.get(iu))
                .map(|i| ObservedInterface {
                    name: i
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    kind: i
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    options: string_map(i.get("options")),
                    mtu_request: opt_int(i.get("mtu_request")).and_then(|m| u32::try_from(m).ok()),
                    ofport: opt_int(i.get("ofport")),
                    error: opt_string(i.get("error")),
                })
                .collect();
            snap.port_uuid
                .insert((name.clone(), pname.clone()), puuid.clone());
            ob.ports.insert(
                pname.clone(),
                ObservedPort {
                    name: pname,
                    protected: p.get("protected").and_then(Value::as_bool).unwrap_or(false),
                    owned: owned(&pids),
                    external_ids: pids,
                    interfaces,
                },
            );
        }
        snap.bridge_uuid.insert(name.clone(), buuid.clone());
        snap.state.bridges.insert(name, ob);
    }
    Ok(snap)
}

fn ids_value(node: &str, object: &str) -> Value {
    map_value(&BTreeMap::from([
        (owner::MANAGED.to_string(), "true".to_string()),
        (owner::NODE.to_string(), node.to_string()),
        (owner::OBJECT.to_string(), object.to_string()),
    ]))
}

/// A name usable as an OVSDB named-uuid (letters, digits, underscores; not starting with a digit).
fn named(prefix: &str, i: usize) -> String {
    format!("{prefix}{i}")
}

fn where_name(name: &str) -> Value {
    json!([["name", "==", name]])
}

/// The operations of ONE transaction carrying `changes` (already checked and filtered by
/// [`check_changes`]/[`effective_changes`] against `snap`). New bridges and their ports are
/// linked by named-uuid; existing rows are addressed by name (each is an index) or, where a
/// set must lose a member, by the uuid from `snap`.
pub fn transaction_ops(
    node: &str,
    snap: &Snapshot,
    changes: &[OvsChange],
) -> Result<Value, OvsError> {
    let mut txn = Txn::new(node, snap, changes);
    for (i, c) in changes.iter().enumerate() {
        txn.change(i, c)?;
    }
    txn.insert_bridges(changes);
    Ok(txn.finish())
}

/// A transaction being built: the operations so far and the references to add to or remove
/// from rows at the end (a bridge's `ports`, the root's `bridges`).
struct Txn<'a> {
    node: &'a str,
    snap: &'a Snapshot,
    ops: Vec<Value>,
    /// Ports of bridges added in this transaction join the bridge's insert.
    new_bridge_ports: BTreeMap<&'a str, Vec<Value>>,
    root_adds: Vec<Value>,
    root_dels: Vec<Value>,
    bridge_port_adds: BTreeMap<&'a str, Vec<Value>>,
    bridge_port_dels: BTreeMap<&'a str, Vec<Value>>,
    /// Bridges added in this transaction.
    added: Vec<&'a str>,
}

impl<'a> Txn<'a> {
    fn new(node: &'a str, snap: &'a Snapshot, changes: &'a [OvsChange]) -> Self {
        Txn {
            node,
            snap,
            ops: vec![
                json!(DB),
                json!({"op": "comment", "comment": format!("topo-agent {node}")}),
            ],
            new_bridge_ports: BTreeMap::new(),
            root_adds: Vec::new(),
            root_dels: Vec::new(),
            bridge_port_adds: BTreeMap::new(),
            bridge_port_dels: BTreeMap::new(),
            added: changes
                .iter()
                .filter_map(|c| match c {
                    OvsChange::AddBridge { name, .. } => Some(name.as_str()),
                    _ => None,
                })
                .collect(),
        }
    }

    /// Inserts a port with its one interface; returns the port's reference.
    fn insert_port(&mut self, i: usize, port: NewPort<'_>) -> Value {
        let iface = named("iface", i);
        let port_ref = named("port", i);
        let mut row = json!({
            "name": port.name,
            "type": port.kind.ovs_type(),
            "options": map_value(&port.kind.options()),
            "external_ids": ids_value(self.node, port.object),
        });
        if let Some(m) = port.mtu {
            row["mtu_request"] = json!(m);
        }
        self.ops
            .push(json!({"op": "insert", "table": "Interface", "uuid-name": iface, "row": row}));
        self.ops.push(
            json!({"op": "insert", "table": "Port", "uuid-name": port_ref, "row": {
                "name": port.name,
                "interfaces": ["named-uuid", iface],
                "protected": port.protected,
                "external_ids": ids_value(self.node, port.object),
            }}),
        );
        json!(["named-uuid", port_ref])
    }

    fn change(&mut self, i: usize, c: &'a OvsChange) -> Result<(), OvsError> {
        match c {
            OvsChange::AddBridge {
                name, mtu, object, ..
            } => {
                let p = self.insert_port(
                    i,
                    NewPort {
                        name,
                        kind: &PortKind::Internal,
                        protected: false,
                        object,
                        mtu: Some(*mtu),
                    },
                );
                self.new_bridge_ports.entry(name).or_default().push(p);
            }
            OvsChange::AddPort {
                bridge,
                name,
                kind,
                protected,
                object,
            } => {
                let p = self.insert_port(
                    i,
                    NewPort {
                        name,
                        kind,
                        protected: *protected,
                        object,
                        mtu: None,
                    },
                );
                if self.added.contains(&bridge.as_str()) {
                    self.new_bridge_ports.entry(bridge).or_default().push(p);
                } else {
                    self.bridge_port_adds.entry(bridge).or_default().push(p);
                }
            }
            OvsChange::UpdateBridge {
                name,
                datapath,
                rstp,
                mtu,
            } => {
                self.ops.push(
                    json!({"op": "update", "table": "Bridge", "where": where_name(name),
                    "row": {"datapath_type": datapath.ovs_type(), "rstp_enable": rstp}}),
                );
                self.ops.push(
                    json!({"op": "update", "table": "Interface", "where": where_name(name),
                    "row": {"mtu_request": mtu}}),
                );
            }
            OvsChange::UpdatePort {
                name,
                kind,
                protected,
                ..
            } => {
                self.ops.push(
                    json!({"op": "update", "table": "Port", "where": where_name(name),
                    "row": {"protected": protected}}),
                );
                self.ops.push(
                    json!({"op": "update", "table": "Interface", "where": where_name(name),
                    "row": {"type": kind.ovs_type(), "options": map_value(&kind.options())}}),
                );
            }
            OvsChange::DeletePort { bridge, name } => {
                let u = self
                    .snap
                    .port_uuid
                    .get(&(bridge.clone(), name.clone()))
                    .ok_or_else(|| OvsError::NotFound {
                        what: format!("port {name} on bridge {bridge}"),
                    })?;
                self.bridge_port_dels
                    .entry(bridge)
                    .or_default()
                    .push(json!(["uuid", u]));
            }
            OvsChange::DeleteBridge { name } => {
                let u = self
                    .snap
                    .bridge_uuid
                    .get(name)
                    .ok_or_else(|| OvsError::NotFound {
                        what: format!("bridge {name}"),
                    })?;
                self.root_dels.push(json!(["uuid", u]));
            }
        }
        Ok(())
    }

    /// The bridges added in this transaction, each with the ports inserted for it.
    fn insert_bridges(&mut self, changes: &[OvsChange]) {
        for (i, c) in changes.iter().enumerate() {
            if let OvsChange::AddBridge {
                name,
                datapath,
                rstp,
                object,
                ..
            } = c
            {
                let b = named("bridge", i);
                let ports = self
                    .new_bridge_ports
                    .remove(name.as_str())
                    .unwrap_or_default();
                self.ops.push(
                    json!({"op": "insert", "table": "Bridge", "uuid-name": b, "row": {
                        "name": name,
                        "datapath_type": datapath.ovs_type(),
                        "rstp_enable": rstp,
                        "ports": ["set", ports],
                        "external_ids": ids_value(self.node, object),
                    }}),
                );
                self.root_adds.push(json!(["named-uuid", b]));
            }
        }
    }

    /// The operations, with the row references mutated in at the end.
    fn finish(mut self) -> Value {
        for (bridge, del) in self.bridge_port_dels {
            self.ops.push(
                json!({"op": "mutate", "table": "Bridge", "where": where_name(bridge),
                "mutations": [["ports", "delete", ["set", del]]]}),
            );
        }
        for (bridge, add) in self.bridge_port_adds {
            self.ops.push(
                json!({"op": "mutate", "table": "Bridge", "where": where_name(bridge),
                "mutations": [["ports", "insert", ["set", add]]]}),
            );
        }
        if !self.root_dels.is_empty() {
            self.ops
                .push(json!({"op": "mutate", "table": DB, "where": [],
                "mutations": [["bridges", "delete", ["set", self.root_dels]]]}));
        }
        if !self.root_adds.is_empty() {
            self.ops
                .push(json!({"op": "mutate", "table": DB, "where": [],
                "mutations": [["bridges", "insert", ["set", self.root_adds]]]}));
        }
        Value::Array(self.ops)
    }
}

/// A port (with its one interface) a transaction inserts.
struct NewPort<'p> {
    name: &'p str,
    kind: &'p PortKind,
    protected: bool,
    object: &'p str,
    /// `mtu_request` of the interface (a bridge's internal port).
    mtu: Option<u32>,
}

/// The first failed operation of a transact result, if any (RFC 7047 5.2: an error object in
/// the result array; a commit failure is an extra element past the operations).
pub fn transaction_error(result: &Value) -> Option<OvsError> {
    let list = result.as_array()?;
    list.iter().find_map(|r| {
        let e = r.get("error")?;
        if e.is_null() {
            return None;
        }
        Some(OvsError::Transaction {
            error: e
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| e.to_string()),
            details: r.get("details").and_then(Value::as_str).map(str::to_string),
        })
    })
}

/// What an owned port is re-added with by `reattach_port`.
pub fn reattach_settings(port: &ObservedPort) -> Result<(PortKind, bool, String), OvsError> {
    if !port.owned {
        return Err(OvsError::NotOwned {
            what: format!("port {}", port.name),
        });
    }
    let iface = port
        .interfaces
        .iter()
        .find(|i| i.name == port.name)
        .ok_or_else(|| {
            OvsError::Protocol(format!("port {} has no interface of its name", port.name))
        })?;
    let kind = match iface.kind.as_str() {
        "" | "system" => PortKind::System,
        "internal" => PortKind::Internal,
        "gre" => {
            let remote_ip = iface.options.get("remote_ip").and_then(|v| v.parse().ok());
            let key = iface.options.get("key").and_then(|v| v.parse().ok());
            match (remote_ip, key) {
                (Some(remote_ip), Some(key)) => PortKind::Gre { remote_ip, key },
                _ => {
                    return Err(OvsError::Protocol(format!(
                        "GRE port {} lacks remote_ip or key",
                        port.name
                    )));
                }
            }
        }
        other => {
            return Err(OvsError::Protocol(format!(
                "port {} has type {other:?}, which topo does not create",
                port.name
            )));
        }
    };
    let object = port
        .external_ids
        .get(owner::OBJECT)
        .cloned()
        .unwrap_or_default();
    Ok((kind, port.protected, object))
}

// ---------------------------------------------------------------- monitor

const MONITOR_ID: &str = "topo";

/// The `monitor` request: only configuration columns, so ovs-vswitchd's own bookkeeping
/// (ofport, statistics, link state) does not wake the agent. Not a bridge's `ports`: every
/// port added or removed anywhere on the bridge would send its whole port set (hundreds of
/// uuids on a dense node) and queue the bridge's key for nothing; a port taken off a bridge
/// is a Port row deleted (OVSDB collects unreferenced ports), heard in the Port table.
pub fn monitor_params() -> Value {
    json!([DB, MONITOR_ID, {
        "Bridge": {"columns": ["name", "datapath_type", "rstp_enable", "external_ids"]},
        "Port": {"columns": ["name", "protected", "external_ids", "interfaces"]},
        "Interface": {"columns": ["name", "type", "options", "mtu_request", "external_ids"]},
    }])
}

/// One event per changed row of a `table-updates` object (RFC 7047 4.1.6).
pub fn events_from_updates(updates: &Value) -> Vec<OvsEvent> {
    let mut out = Vec::new();
    let Some(tables) = updates.as_object() else {
        return out;
    };
    for (tname, rows) in tables {
        let table = match tname.as_str() {
            "Bridge" => OvsTable::Bridge,
            "Port" => OvsTable::Port,
            "Interface" => OvsTable::Interface,
            _ => continue,
        };
        let Some(rows) = rows.as_object() else {
            continue;
        };
        for update in rows.values() {
            let old = update.get("old").filter(|v| v.is_object());
            let new = update.get("new").filter(|v| v.is_object());
            let change = match (old, new) {
                (None, Some(_)) => RowChange::Inserted,
                (Some(_), None) => RowChange::Deleted,
                (Some(_), Some(_)) => RowChange::Modified,
                (None, None) => continue,
            };
            // `new` has every monitored column; a deleted row's `old` does too.
            let full = new.or(old);
            let name = full
                .and_then(|r| r.get("name"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let ids = string_map(full.and_then(|r| r.get("external_ids")));
            let ids = if ids.is_empty() {
                string_map(old.and_then(|r| r.get("external_ids")))
            } else {
                ids
            };
            let object = owned(&ids)
                .then(|| ids.get(owner::OBJECT).cloned())
                .flatten();
            out.push(OvsEvent::Changed {
                table,
                name,
                change,
                object,
            });
        }
    }
    out
}

// ---------------------------------------------------------------- the backend

/// Open vSwitch of one node, through its ovsdb-server socket.
pub struct OvsdbSwitch {
    path: PathBuf,
    node: String,
    client: tokio::sync::Mutex<Option<RpcClient>>,
}

impl OvsdbSwitch {
    /// Connects to ovsdb-server at `path` (`/var/run/openvswitch/db.sock`, or in OVS's
    /// remote syntax `unix:/var/run/openvswitch/db.sock`).
    pub async fn connect(path: impl AsRef<Path>, node: &str) -> Result<Self, OvsError> {
        let raw = path.as_ref();
        let path = match raw.to_str().and_then(|s| s.strip_prefix("unix:")) {
            Some(p) => PathBuf::from(p),
            None => raw.to_path_buf(),
        };
        let (client, _notes) = RpcClient::connect(&path).await?;
        Ok(OvsdbSwitch {
            path,
            node: node.to_string(),
            client: tokio::sync::Mutex::new(Some(client)),
        })
    }

    /// A call on the shared connection, reconnecting when it was lost. `read_only` calls are
    /// repeated once on a connection that died under them; a write is not (a lost answer may
    /// hide a committed change: the caller re-observes and plans again).
    async fn call(&self, method: &str, params: Value, read_only: bool) -> Result<Value, OvsError> {
        let mut retried = false;
        loop {
            let client = {
                let mut g = self.client.lock().await;
                match g.as_ref() {
                    Some(c) if !c.is_closed() => c.clone(),
                    _ => {
                        let (c, _notes) = RpcClient::connect(&self.path).await?;
                        *g = Some(c.clone());
                        c
                    }
                }
            };
            match client.call(method, params.clone()).await {
                Err(RpcError::Disconnected) if read_only && !retried => retried = true,
                r => return r.map_err(OvsError::from),
            }
        }
    }

    /// Bridges, ports and interfaces with their uuids.
    /// Waits until ovs-vswitchd's `cur_cfg` reaches `target` (it has reconfigured with every
    /// transaction up to the one that set `next_cfg` to `target`). Gives up after
    /// [`RECONFIGURE_WAIT`] with a warning: a slow ovs-vswitchd must not stop the reconcile.
    async fn wait_for_cfg(&self, target: i64) -> Result<(), OvsError> {
        let deadline = tokio::time::Instant::now() + RECONFIGURE_WAIT;
        loop {
            let r = self.call("transact", cur_cfg_ops(), true).await?;
            if selected_cfg(&r, "cur_cfg").is_some_and(|c| c >= target) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                warn!(
                    next_cfg = target,
                    "ovs-vswitchd did not apply the transaction in time; going on"
                );
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn snapshot(&self) -> Result<Snapshot, OvsError> {
        let r = self.call("transact", select_ops(), true).await?;
        parse_snapshot(&r)
    }

    /// What `changes` must see of the switch to be checked and written.
    async fn snapshot_for(&self, changes: &[OvsChange]) -> Result<Snapshot, OvsError> {
        self.select(&Selection::for_changes(changes)).await
    }

    async fn select(&self, selection: &Selection) -> Result<Snapshot, OvsError> {
        let r = self.call("transact", selection.ops(), true).await?;
        selection.parse(&r)
    }
}

/// The ovs-vswitchd command that drops every datapath flow (its revalidators translate the next
/// packet of each flow again).
const PURGE: &str = "revalidator/purge";

/// ovs-vswitchd's control (unixctl) socket beside the database's socket `db`:
/// `ovs-vswitchd.ctl` where it was started with `--unixctl` there (the lab), else
/// `ovs-vswitchd.<pid>.ctl` with the pid its `ovs-vswitchd.pid` holds (Debian's service). Looked
/// up at each use: a restarted ovs-vswitchd has another pid.
pub fn vswitchd_ctl(db: &Path) -> Result<PathBuf, OvsError> {
    let dir = db.parent().unwrap_or(Path::new("/"));
    let fixed = dir.join("ovs-vswitchd.ctl");
    if fixed.exists() {
        return Ok(fixed);
    }
    std::fs::read_to_string(dir.join("ovs-vswitchd.pid"))
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        .map(|pid| dir.join(format!("ovs-vswitchd.{pid}.ctl")))
        .ok_or_else(|| OvsError::NoControlSocket {
            dir: dir.display().to_string(),
        })
}

#[async_trait]
impl Ovs for OvsdbSwitch {
    async fn observe(&self) -> Result<OvsState, OvsError> {
        Ok(self.snapshot().await?.state)
    }

    async fn observe_container(
        &self,
        object: &str,
        ports: &[String],
    ) -> Result<OvsState, OvsError> {
        let selection = Selection::Container {
            object: object.to_string(),
            names: ports.to_vec(),
        };
        Ok(self.select(&selection).await?.state)
    }

    async fn apply(&self, changes: &[OvsChange]) -> Result<(), OvsError> {
        if changes.is_empty() {
            return Ok(());
        }
        let snap = self.snapshot_for(changes).await?;
        check_changes(&snap.state, changes)?;
        let changes = effective_changes(&snap.state, changes);
        if changes.is_empty() {
            return Ok(());
        }
        let ops = transaction_ops(&self.node, &snap, &changes)?;
        debug!(changes = changes.len(), "ovsdb transaction");
        let r = self.call("transact", ops, false).await?;
        match transaction_error(&r) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn apply_and_wait(&self, changes: &[OvsChange]) -> Result<(), OvsError> {
        if changes.is_empty() {
            return Ok(());
        }
        let snap = self.snapshot_for(changes).await?;
        check_changes(&snap.state, changes)?;
        let changes = effective_changes(&snap.state, changes);
        if changes.is_empty() {
            return Ok(());
        }
        let mut ops = transaction_ops(&self.node, &snap, &changes)?;
        if let Some(a) = ops.as_array_mut() {
            a.extend(next_cfg_ops());
        }
        debug!(
            changes = changes.len(),
            "ovsdb transaction, waiting for ovs-vswitchd"
        );
        let r = self.call("transact", ops, false).await?;
        if let Some(e) = transaction_error(&r) {
            return Err(e);
        }
        let Some(target) = selected_cfg(&r, "next_cfg") else {
            return Err(OvsError::Protocol(
                "the transaction's answer holds no next_cfg".into(),
            ));
        };
        self.wait_for_cfg(target).await
    }

    async fn purge_datapath_flows(&self) -> Result<(), OvsError> {
        let ctl = vswitchd_ctl(&self.path)?;
        let control = |source| OvsError::Control {
            path: ctl.display().to_string(),
            command: PURGE.to_string(),
            source,
        };
        // unixctl speaks JSON-RPC as ovsdb-server does; one short connection per purge.
        let (client, _notes) = RpcClient::connect(&ctl).await.map_err(control)?;
        let answer = client.call(PURGE, json!([])).await;
        client.close();
        answer.map(drop).map_err(control)
    }

    async fn reattach_port(&self, bridge: &str, name: &str) -> Result<(), OvsError> {
        let snap = self
            .select(&Selection::Ports(vec![name.to_string()]))
            .await?;
        let Some(port) = snap
            .state
            .bridges
            .get(bridge)
            .and_then(|b| b.ports.get(name))
        else {
            return Ok(());
        };
        let (kind, protected, object) = reattach_settings(port)?;
        let del = [OvsChange::DeletePort {
            bridge: bridge.to_string(),
            name: name.to_string(),
        }];
        self.apply_and_wait(&del).await?;
        let add = [OvsChange::AddPort {
            bridge: bridge.to_string(),
            name: name.to_string(),
            kind,
            protected,
            object,
        }];
        let snap = self.snapshot_for(&add).await?;
        check_changes(&snap.state, &add)?;
        let r = self
            .call("transact", transaction_ops(&self.node, &snap, &add)?, false)
            .await?;
        match transaction_error(&r) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn watch(&self) -> BoxStream<'static, OvsEvent> {
        let path = self.path.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            use backoff::backoff::Backoff;
            let mut first = true;
            // While ovsdb-server is away (restarted), reconnect with a jittered backoff that
            // starts over after a session that lasted.
            let mut backoff =
                topo_watcher::jittered_backoff(Duration::from_millis(100), Duration::from_secs(5));
            loop {
                let started = tokio::time::Instant::now();
                match monitor_once(&path, &tx, first).await {
                    Ok(()) => return, // the receiver is gone
                    Err(e) => {
                        warn!(error = %e, path = %path.display(), "ovsdb monitor lost; reconnecting");
                    }
                }
                first = false;
                if tx.is_closed() {
                    return;
                }
                if started.elapsed() > Duration::from_secs(10) {
                    backoff.reset();
                }
                let delay = backoff.next_backoff().unwrap_or(Duration::from_secs(5));
                tokio::time::sleep(delay).await;
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
    }
}

/// One monitor session; returns Ok when the receiver went away, Err when the connection did.
async fn monitor_once(
    path: &Path,
    tx: &tokio::sync::mpsc::Sender<OvsEvent>,
    first: bool,
) -> Result<(), OvsError> {
    let (client, mut notes) = RpcClient::connect(path).await?;
    // The initial rows are what the caller reconciles against anyway; after a reconnect the
    // gap may have hidden changes, so ask for a full reconcile instead.
    client.call("monitor", monitor_params()).await?;
    if !first {
        info!("ovsdb monitor re-established");
        if tx.send(OvsEvent::Resync).await.is_err() {
            return Ok(());
        }
    }
    loop {
        tokio::select! {
            _ = tx.closed() => {
                client.close();
                return Ok(());
            }
            n = notes.recv() => {
                let Some(Notification { method, params }) = n else {
                    return Err(OvsError::Disconnected);
                };
                if method != "update" {
                    continue;
                }
                let Some(updates) = params.get(1) else { continue };
                for ev in events_from_updates(updates) {
                    if tx.send(ev).await.is_err() {
                        client.close();
                        return Ok(());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use topo_schema::kinds::Datapath;

    use super::*;

    #[test]
    fn vswitchd_control_socket_beside_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db.sock");
        assert!(matches!(
            vswitchd_ctl(&db),
            Err(OvsError::NoControlSocket { .. })
        ));
        std::fs::write(dir.path().join("ovs-vswitchd.pid"), "4242\n").unwrap();
        assert_eq!(
            vswitchd_ctl(&db).unwrap(),
            dir.path().join("ovs-vswitchd.4242.ctl"),
            "Debian's service: the pid names the socket"
        );
        std::fs::write(dir.path().join("ovs-vswitchd.ctl"), "").unwrap();
        assert_eq!(
            vswitchd_ctl(&db).unwrap(),
            dir.path().join("ovs-vswitchd.ctl"),
            "started with --unixctl there (the lab)"
        );
    }

    fn select_result() -> Value {
        json!([
            {"rows": [
                {"_uuid": ["uuid", "b1"], "name": "tb-net", "datapath_type": "netdev", "rstp_enable": false,
                 "external_ids": ["map", [["topo.dev/managed", "true"], ["topo.dev/object", "network/net"]]],
                 "ports": ["set", [["uuid", "p1"], ["uuid", "p2"]]]},
                {"_uuid": ["uuid", "b2"], "name": "br-phy", "datapath_type": "netdev", "rstp_enable": false,
                 "external_ids": ["map", []], "ports": ["uuid", "p3"]}
            ]},
            {"rows": [
                {"_uuid": ["uuid", "p1"], "name": "tb-net", "protected": false,
                 "external_ids": ["map", [["topo.dev/managed", "true"]]], "interfaces": ["uuid", "i1"]},
                {"_uuid": ["uuid", "p2"], "name": "tg-node2", "protected": true,
                 "external_ids": ["map", [["topo.dev/managed", "true"], ["topo.dev/object", "tunnel/t"]]],
                 "interfaces": ["uuid", "i2"]},
                {"_uuid": ["uuid", "p3"], "name": "br-phy", "protected": false,
                 "external_ids": ["map", []], "interfaces": ["uuid", "i3"]}
            ]},
            {"rows": [
                {"_uuid": ["uuid", "i1"], "name": "tb-net", "type": "internal", "options": ["map", []],
                 "mtu_request": 1458, "ofport": 65534, "error": ["set", []]},
                {"_uuid": ["uuid", "i2"], "name": "tg-node2", "type": "gre",
                 "options": ["map", [["key", "7"], ["remote_ip", "192.168.100.2"]]],
                 "mtu_request": ["set", []], "ofport": 1, "error": ["set", []]},
                {"_uuid": ["uuid", "i3"], "name": "br-phy", "type": "internal", "options": ["map", []],
                 "mtu_request": ["set", []], "ofport": ["set", []], "error": "could not open network device br-phy"}
            ]}
        ])
    }

    /// The answer to `Selection::Ports(["tg-node2", "br-phy"]).ops()` on the switch of
    /// `select_result`: the bridges, then per name its port, then per name its interface.
    fn selected_ports_result() -> Value {
        let all = select_result();
        let row = |table: usize, uuid: &str| {
            let rows = all[table]["rows"].as_array().unwrap();
            rows.iter()
                .find(|r| r["_uuid"][1] == uuid)
                .cloned()
                .unwrap()
        };
        json!([
            all[0].clone(),
            {"rows": [row(1, "p2")]},
            {"rows": [row(1, "p3")]},
            {"rows": [row(2, "i2")]},
            {"rows": [row(2, "i3")]},
        ])
    }

    #[test]
    fn port_changes_read_only_the_ports_they_name() {
        let add = OvsChange::AddPort {
            bridge: "tb-net".into(),
            name: "tv-web".into(),
            kind: PortKind::System,
            protected: false,
            object: "container/web".into(),
        };
        let del = OvsChange::DeletePort {
            bridge: "tb-net".into(),
            name: "tv-old".into(),
        };
        assert_eq!(
            Selection::for_changes(&[add.clone(), del.clone(), add.clone()]),
            Selection::Ports(vec!["tv-web".into(), "tv-old".into()])
        );
        let ops = Selection::for_changes(&[add.clone(), del]).ops();
        // The database, every bridge, two port selects and two interface selects.
        assert_eq!(ops.as_array().unwrap().len(), 6);
        assert_eq!(ops[2]["where"], json!([["name", "==", "tv-web"]]));
        assert_eq!(ops[5]["table"], "Interface");
        // A bridge among the changes: everything is read, as before.
        let bridge = OvsChange::DeleteBridge {
            name: "tb-net".into(),
        };
        assert_eq!(Selection::for_changes(&[add, bridge]), Selection::All);
    }

    #[test]
    fn a_narrow_read_sees_what_the_checks_need() {
        let selection = Selection::Ports(vec!["tg-node2".into(), "br-phy".into()]);
        let s = selection.parse(&selected_ports_result()).unwrap();
        // Every bridge, with only the selected ports.
        assert_eq!(s.state.bridges.len(), 2);
        assert_eq!(s.state.bridges["tb-net"].ports.len(), 1);
        assert_eq!(
            s.port_uuid[&("tb-net".to_string(), "tg-node2".to_string())],
            "p2"
        );
        // A port of that name on another bridge is still found, and a foreign one refused.
        let again = OvsChange::AddPort {
            bridge: "tb-net".into(),
            name: "br-phy".into(),
            kind: PortKind::System,
            protected: false,
            object: "container/web".into(),
        };
        assert!(matches!(
            check_changes(&s.state, &[again]),
            Err(OvsError::Exists { .. })
        ));
        let foreign = OvsChange::DeletePort {
            bridge: "br-phy".into(),
            name: "br-phy".into(),
        };
        assert!(matches!(
            check_changes(&s.state, &[foreign]),
            Err(OvsError::NotOwned { .. })
        ));
        // The same answer read whole gives the same view of those ports.
        let whole = parse_snapshot(&select_result()).unwrap();
        assert_eq!(
            whole.state.bridges["tb-net"].ports["tg-node2"],
            s.state.bridges["tb-net"].ports["tg-node2"]
        );
    }

    #[test]
    fn a_containers_read_finds_its_ports_by_owner_and_by_name() {
        let selection = Selection::Container {
            object: "tunnel/t".into(),
            names: vec!["tv-new".into()],
        };
        let ops = selection.ops();
        assert_eq!(ops.as_array().unwrap().len(), 5);
        assert_eq!(
            ops[2]["where"],
            json!([[
                "external_ids",
                "includes",
                ["map", [["topo.dev/object", "tunnel/t"]]]
            ]])
        );
        let all = select_result();
        // Its one port by owner; nothing yet of the name it is about to add.
        let answer = json!([
            all[0].clone(),
            {"rows": [all[1]["rows"][1].clone()]},
            {"rows": []},
            {"rows": []},
        ]);
        let s = selection.parse(&answer).unwrap();
        assert_eq!(s.state.bridges.len(), 2);
        assert!(s.state.bridges["tb-net"].ports.contains_key("tg-node2"));
        assert!(s.state.bridges["br-phy"].ports.is_empty());
    }

    #[test]
    fn snapshot_parses_sets_maps_and_optionals() {
        let s = parse_snapshot(&select_result()).unwrap();
        let b = &s.state.bridges["tb-net"];
        assert!(b.owned);
        assert_eq!(b.datapath_type, "netdev");
        assert_eq!(b.ports.len(), 2);
        let gre = &b.ports["tg-node2"];
        assert!(gre.protected && gre.owned);
        assert!(gre.matches(
            &PortKind::Gre {
                remote_ip: Ipv4Addr::new(192, 168, 100, 2),
                key: 7
            },
            true
        ));
        assert_eq!(b.ports["tb-net"].interfaces[0].mtu_request, Some(1458));
        assert_eq!(gre.interfaces[0].mtu_request, None);
        let phy = &s.state.bridges["br-phy"];
        assert!(!phy.owned);
        assert_eq!(phy.ports["br-phy"].interfaces[0].ofport, None);
        assert!(
            phy.ports["br-phy"].interfaces[0]
                .error
                .as_deref()
                .unwrap()
                .contains("could not open")
        );
        assert_eq!(
            s.port_uuid[&("tb-net".to_string(), "tg-node2".to_string())],
            "p2"
        );
        assert_eq!(s.bridge_uuid["br-phy"], "b2");
    }

    #[test]
    fn one_transaction_with_named_uuids() {
        let snap = parse_snapshot(&select_result()).unwrap();
        let changes = vec![
            OvsChange::AddBridge {
                name: "tb-b".into(),
                datapath: Datapath::Netdev,
                rstp: true,
                mtu: 1400,
                object: "network/b".into(),
            },
            OvsChange::AddPort {
                bridge: "tb-b".into(),
                name: "tg-b-node3".into(),
                kind: PortKind::Gre {
                    remote_ip: Ipv4Addr::new(192, 168, 100, 3),
                    key: 9,
                },
                protected: false,
                object: "tunnel/x".into(),
            },
            OvsChange::AddPort {
                bridge: "tb-net".into(),
                name: "tv-web".into(),
                kind: PortKind::System,
                protected: false,
                object: "container/web".into(),
            },
            OvsChange::DeletePort {
                bridge: "tb-net".into(),
                name: "tg-node2".into(),
            },
            OvsChange::DeleteBridge {
                name: "tb-old".into(),
            },
        ];
        check_changes(&snap.state, &changes).unwrap();
        let eff = effective_changes(&snap.state, &changes);
        assert_eq!(eff.len(), 4, "deleting an absent bridge is dropped");
        let ops = transaction_ops("node1", &snap, &eff).unwrap();
        let ops = ops.as_array().unwrap();
        assert_eq!(ops[0], "Open_vSwitch");
        let find =
            |f: &dyn Fn(&Value) -> bool| ops.iter().filter(|o| f(o)).cloned().collect::<Vec<_>>();
        let bridge = find(&|o| o["op"] == "insert" && o["table"] == "Bridge");
        assert_eq!(bridge.len(), 1);
        assert_eq!(bridge[0]["row"]["rstp_enable"], true);
        // Its internal port and the GRE port ride in the bridge's own insert.
        assert_eq!(bridge[0]["row"]["ports"][1].as_array().unwrap().len(), 2);
        let internal = find(&|o| {
            o["op"] == "insert" && o["table"] == "Interface" && o["row"]["name"] == "tb-b"
        });
        assert_eq!(internal[0]["row"]["mtu_request"], 1400);
        assert_eq!(internal[0]["row"]["type"], "internal");
        let gre = find(&|o| {
            o["op"] == "insert" && o["table"] == "Interface" && o["row"]["name"] == "tg-b-node3"
        });
        assert_eq!(gre[0]["row"]["type"], "gre");
        assert_eq!(
            gre[0]["row"]["options"],
            json!(["map", [["key", "9"], ["remote_ip", "192.168.100.3"]]])
        );
        let ids = &gre[0]["row"]["external_ids"];
        assert!(ids.to_string().contains("\"topo.dev/node\",\"node1\""));
        let mutates = find(&|o| o["op"] == "mutate" && o["table"] == "Bridge");
        assert_eq!(mutates.len(), 2, "one delete, one insert on tb-net");
        assert_eq!(mutates[0]["mutations"][0][1], "delete");
        assert_eq!(
            mutates[0]["mutations"][0][2],
            json!(["set", [["uuid", "p2"]]])
        );
        let root = find(&|o| o["table"] == "Open_vSwitch");
        assert_eq!(root.len(), 1);
        assert_eq!(root[0]["mutations"][0][1], "insert");
        // Every named-uuid used is declared.
        let text = Value::Array(ops.clone()).to_string();
        for i in [
            "iface0", "port0", "iface1", "port1", "iface2", "port2", "bridge0",
        ] {
            assert!(
                text.contains(&format!("\"uuid-name\":\"{i}\"")),
                "{i} not declared"
            );
        }
    }

    #[test]
    fn ownership_is_checked_before_sending() {
        let snap = parse_snapshot(&select_result()).unwrap();
        assert!(matches!(
            check_changes(
                &snap.state,
                &[OvsChange::DeleteBridge {
                    name: "br-phy".into()
                }]
            ),
            Err(OvsError::NotOwned { .. })
        ));
        assert!(matches!(
            check_changes(
                &snap.state,
                &[OvsChange::AddPort {
                    bridge: "br-phy".into(),
                    name: "tv-x".into(),
                    kind: PortKind::System,
                    protected: false,
                    object: "c".into()
                }]
            ),
            Err(OvsError::NotOwned { .. })
        ));
        assert!(matches!(
            check_changes(
                &snap.state,
                &[OvsChange::AddPort {
                    bridge: "tb-net".into(),
                    name: "tg-node2".into(),
                    kind: PortKind::System,
                    protected: false,
                    object: "c".into()
                }]
            ),
            Err(OvsError::Exists { .. })
        ));
    }

    #[test]
    fn next_cfg_is_bumped_and_read_back() {
        let [mutate, select] = next_cfg_ops();
        assert_eq!(mutate["mutations"], json!([["next_cfg", "+=", 1]]));
        assert_eq!(select["columns"], json!(["next_cfg"]));
        let answer = json!([{"uuid": ["uuid", "p"]}, {"count": 1}, {"rows": [{"next_cfg": 42}]}]);
        assert_eq!(selected_cfg(&answer, "next_cfg"), Some(42));
        assert_eq!(selected_cfg(&answer, "cur_cfg"), None);
        assert_eq!(selected_cfg(&json!([{"rows": []}]), "cur_cfg"), None);
    }

    #[test]
    fn transaction_errors_are_found() {
        assert!(transaction_error(&json!([{"uuid": ["uuid", "x"]}, {}])).is_none());
        let e = transaction_error(
            &json!([{}, {"error": "constraint violation", "details": "dup name"}]),
        )
        .unwrap();
        assert!(
            e.to_string().contains("constraint violation (dup name)"),
            "{e}"
        );
    }

    #[test]
    fn monitor_updates_become_events() {
        let u = json!({
            "Port": {
                "p2": {"old": {"name": "tg-node2", "external_ids": ["map", [["topo.dev/managed", "true"], ["topo.dev/object", "tunnel/t"]]]}},
                "p9": {"new": {"name": "tv-x", "external_ids": ["map", []]}}
            },
            "Interface": {"i1": {"old": {"mtu_request": 1500}, "new": {"name": "tb-net", "external_ids": ["map", []]}}}
        });
        let ev = events_from_updates(&u);
        assert_eq!(ev.len(), 3);
        assert!(ev.contains(&OvsEvent::Changed {
            table: OvsTable::Port,
            name: "tg-node2".into(),
            change: RowChange::Deleted,
            object: Some("tunnel/t".into())
        }));
        assert!(ev.contains(&OvsEvent::Changed {
            table: OvsTable::Port,
            name: "tv-x".into(),
            change: RowChange::Inserted,
            object: None
        }));
        assert!(ev.contains(&OvsEvent::Changed {
            table: OvsTable::Interface,
            name: "tb-net".into(),
            change: RowChange::Modified,
            object: None
        }));
    }
}
