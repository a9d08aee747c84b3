//! Folding agent registrations into Node objects.
//!
//! An agent may not write objects (its etcd role reaches only its own keys), so when it
//! starts it writes `keys::registration(node)` with its address and datapath. The leader
//! folds each registration once: it creates the Node when none exists (through the store,
//! so the Node is validated like a user's), or keeps the existing Node — the user's word —
//! and records a warning event when the agent's flags disagree. Then it deletes the
//! registration. A registration the store refuses (an address another Node has) is deleted
//! too, with a warning event; one that failed for a transient reason (etcd) stays for the
//! next pass.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use topo_schema::api::{EventType, Registration};
use topo_schema::{Kind, NodeSpec, Object, ObjectRef, Resource};

use crate::cache::Snapshot;
use crate::commit::Committer;
use crate::store::{Store, StoreError};

/// The Node an agent registers: what `topoctl apply` would store for its flags.
pub fn node_from(reg: &Registration) -> Resource {
    Resource::Node(Object::new(
        Kind::Node,
        reg.node.as_str(),
        NodeSpec {
            address: reg.address,
            datapath: reg.datapath,
            reserved_ports: None,
        },
    ))
}

/// Folds every registration of `snap` (the leader calls this on each pass).
pub async fn fold(committer: &Committer, snap: &Snapshot) {
    if snap.registrations.is_empty() {
        return;
    }
    let store = Store::new(committer.clone());
    for (node, reg) in &snap.registrations {
        let r = ObjectRef::new(Kind::Node, node.as_str());
        let (done, warning) = match snap.get(&r) {
            Some(existing) => (true, differs(&existing.resource, reg)),
            None => create(&store, reg).await,
        };
        if let Some(message) = warning {
            let ev = crate::events::new_event(
                r.clone(),
                EventType::Warning,
                "RegistrationDiffers",
                &message,
                crate::events::EVENT_SOURCE,
            );
            if let Err(e) = crate::events::record(committer.client(), ev).await {
                tracing::warn!(object = %r, error = %e, "failed to record an event");
            }
        }
        if done {
            forget(committer, node).await;
        }
    }
}

/// Creates the Node; (whether the registration is dealt with, a warning to record).
async fn create(store: &Store, reg: &Registration) -> (bool, Option<String>) {
    let r = ObjectRef::new(Kind::Node, reg.node.as_str());
    match store.create(node_from(reg), false).await {
        Ok(_) => {
            tracing::info!(target: "audit", user = %topo_pki::node_user(&reg.node), verb = "create", object = %r, result = 201, "audit");
            tracing::info!(object = %r, address = %reg.address, datapath = reg.datapath.ovs_type(), "created the Node its agent registered");
            (true, None)
        }
        Err(StoreError::Rejected(e))
            if e.reason == topo_schema::api::ErrorReason::AlreadyExists =>
        {
            (true, None)
        }
        Err(StoreError::Rejected(e)) => {
            let msg = format!(
                "the agent registered {} ({}) but the Node cannot be created: {}",
                reg.address,
                reg.datapath.ovs_type(),
                crate::reply::one_line(&e)
            );
            tracing::warn!(object = %r, %msg, "registration refused");
            (true, Some(msg))
        }
        Err(e) => {
            tracing::warn!(object = %r, error = %e, "failed to create a registered Node; will retry");
            (false, None)
        }
    }
}

fn differs(existing: &Resource, reg: &Registration) -> Option<String> {
    let spec = existing.spec_value();
    let address = spec.get("address").and_then(|a| a.as_str()).unwrap_or("");
    let datapath = spec
        .get("datapath")
        .and_then(|d| d.as_str())
        .unwrap_or("system");
    (address != reg.address.to_string() || datapath != reg.datapath.ovs_type()).then(|| {
        format!(
            "the agent started with --address {} --datapath {} but the Node says {address} ({datapath}); the Node object is in force",
            reg.address,
            reg.datapath.ovs_type()
        )
    })
}

async fn forget(committer: &Committer, node: &str) {
    let key = topo_schema::keys::registration(node);
    // Delete what is there now, and only that (a concurrent rewrite survives to the next pass).
    let mut kv = committer.client().kv_client();
    let rev = match kv.get(key.as_str(), None).await {
        Ok(r) => match r.kvs().first() {
            Some(kv) => kv.mod_revision(),
            None => return,
        },
        Err(e) => {
            tracing::warn!(node, error = %e, "failed to read a registration");
            return;
        }
    };
    let txn = Txn::new()
        .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)])
        .and_then([TxnOp::delete(key.as_str(), None)]);
    if let Err(e) = kv.txn(txn).await {
        tracing::warn!(node, error = %e, "failed to delete a folded registration");
    }
}
