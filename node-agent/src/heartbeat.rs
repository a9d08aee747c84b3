//! Node registration and the heartbeat lease.
//!
//! The agent writes its registration (address, datapath) under its own key; the controller
//! folds it into a Node object when none exists. It keeps `keys::heartbeat(node)` attached to an etcd lease it keeps alive every TTL/3. The
//! controller folds Node Ready from that key: when the agent dies or loses etcd for longer
//! than the TTL, the lease expires, the key goes and the Node turns NotReady.
//!
//! When the keepalive stream breaks (etcd restart, partition), the agent first tries to keep
//! its old lease (a short outage keeps the same key); if etcd says the lease is gone it grants
//! a new one and puts the key again.
//!
//! On shutdown the lease is revoked, so the Node turns NotReady at once instead of after the
//! TTL: an agent that is stopped on purpose is not serving its slice, and the containers it
//! leaves running are still reported by their last reports.

use std::net::Ipv4Addr;
use std::time::Duration;

use backoff::backoff::Backoff;
use chrono::Utc;
use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper, PutOptions};
use tokio::sync::watch;
use topo_schema::api::{Heartbeat, Registration};
use topo_schema::keys;
use topo_schema::kinds::Datapath;

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("failed to write the registration of node {node}: {source}")]
    Write {
        node: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("failed to encode the registration of node {node}: {source}")]
    Encode {
        node: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Writes `keys::registration(name)`: the node's address and datapath as this agent's flags
/// say. The agent may not write objects (its etcd role reaches only its own keys); the
/// controller creates the Node from this when none exists, or keeps the existing Node and
/// says so in an event when they differ. Written on every start: idempotent.
pub async fn register_node(
    client: &mut Client,
    name: &str,
    address: Ipv4Addr,
    datapath: Datapath,
) -> Result<(), RegisterError> {
    let reg = Registration {
        node: name.to_string(),
        address,
        datapath,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        time: Utc::now(),
    };
    let value = serde_json::to_vec(&reg).map_err(|source| RegisterError::Encode {
        node: name.into(),
        source,
    })?;
    topo_watcher::metrics::etcd_timed("put", client.put(keys::registration(name), value, None))
        .await
        .map_err(|source| RegisterError::Write {
            node: name.into(),
            source,
        })?;
    tracing::info!(node = name, %address, datapath = datapath.ovs_type(), "registration written");
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    #[error("failed to grant the heartbeat lease: {0}")]
    Grant(#[source] etcd_client::Error),
    #[error("failed to put the heartbeat key: {0}")]
    Put(#[source] etcd_client::Error),
    #[error("failed to keep the heartbeat lease alive: {0}")]
    KeepAlive(#[source] etcd_client::Error),
    #[error("failed to encode the heartbeat: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("the heartbeat lease {0:x} expired")]
    Expired(i64),
    #[error("the heartbeat keepalive stream ended")]
    StreamEnded,
    #[error("no keepalive answer within {0:?}")]
    Timeout(Duration),
}

pub struct HeartbeatConfig {
    pub node: String,
    pub ttl: Duration,
    pub agent_version: String,
    /// The agent endpoint's address, announced to the controller.
    pub endpoint: Option<String>,
}

/// Keeps the heartbeat alive until `shutdown` turns true, then revokes the lease.
/// `lease_tx` publishes the lease in force (0 while there is none), for tests and logs.
pub async fn run_heartbeat(
    client: Client,
    cfg: HeartbeatConfig,
    mut shutdown: watch::Receiver<bool>,
    lease_tx: watch::Sender<i64>,
) {
    let ttl_secs = i64::try_from(cfg.ttl.as_secs().max(2)).unwrap_or(10);
    let interval = Duration::from_secs(ttl_secs as u64) / 3;
    let beat = Heartbeat {
        node: cfg.node.clone(),
        agent_version: cfg.agent_version.clone(),
        started: Utc::now(),
        endpoint: cfg.endpoint.clone(),
    };
    let key = keys::heartbeat(&cfg.node);
    let mut backoff = crate::watch::watch_backoff(
        Duration::from_millis(200),
        interval.max(Duration::from_millis(500)),
    );
    let mut lease: i64 = 0;
    let mut hb = HeartbeatSession {
        client,
        key,
        beat,
        ttl_secs,
    };
    loop {
        if *shutdown.borrow() {
            break;
        }
        let session = tokio::select! {
            s = hb.establish(lease) => s,
            _ = shutdown.changed() => break,
        };
        let (id, mut keeper, mut stream) = match session {
            Ok(s) => s,
            Err(e) => {
                if matches!(e, HeartbeatError::Expired(_)) {
                    // The old lease is gone for good: the next attempt grants a new one.
                    lease = 0;
                }
                let _ = lease_tx.send(0);
                let delay = backoff.next_backoff().unwrap_or(interval);
                tracing::warn!(node = %cfg.node, error = %e, ?delay, "heartbeat lost; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = shutdown.changed() => break,
                }
            }
        };
        if lease != id {
            tracing::info!(node = %cfg.node, lease = format!("{id:x}"), ttl = ttl_secs, "heartbeat lease granted");
        }
        lease = id;
        backoff.reset();
        let _ = lease_tx.send(id);
        let err = tokio::select! {
            e = keep_alive_loop(&mut keeper, &mut stream, interval) => e,
            _ = shutdown.changed() => break,
        };
        tracing::warn!(node = %cfg.node, error = %err, "heartbeat keepalive interrupted");
        if matches!(err, HeartbeatError::Expired(_)) {
            lease = 0;
        }
        let _ = lease_tx.send(0);
    }
    if lease != 0 {
        let mut client = hb.client.clone();
        match tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease)).await {
            Ok(Ok(_)) => tracing::info!(node = %cfg.node, "heartbeat lease revoked"),
            Ok(Err(e)) => {
                tracing::warn!(node = %cfg.node, error = %e, "failed to revoke the heartbeat lease")
            }
            Err(_) => {
                tracing::warn!(node = %cfg.node, "failed to revoke the heartbeat lease in 2s")
            }
        }
    }
    let _ = lease_tx.send(0);
}

struct HeartbeatSession {
    client: Client,
    key: String,
    beat: Heartbeat,
    ttl_secs: i64,
}

impl HeartbeatSession {
    /// Resumes lease `old` when etcd still has it, else grants a new one and puts the key.
    async fn establish(
        &mut self,
        old: i64,
    ) -> Result<(i64, LeaseKeeper, LeaseKeepAliveStream), HeartbeatError> {
        if old != 0 {
            // keep_alive fails with "lease not found" when the lease expired meanwhile.
            let (keeper, stream) = self.client.lease_keep_alive(old).await.map_err(|e| {
                if e.to_string().contains("lease not found") {
                    HeartbeatError::Expired(old)
                } else {
                    HeartbeatError::KeepAlive(e)
                }
            })?;
            // The key may have been removed by hand while the lease lived: put it again; the
            // put is idempotent.
            self.put(old).await?;
            return Ok((old, keeper, stream));
        }
        let grant = self
            .client
            .lease_grant(self.ttl_secs, None)
            .await
            .map_err(HeartbeatError::Grant)?;
        let id = grant.id();
        self.put(id).await?;
        let (keeper, stream) = self
            .client
            .lease_keep_alive(id)
            .await
            .map_err(HeartbeatError::KeepAlive)?;
        Ok((id, keeper, stream))
    }

    async fn put(&mut self, lease: i64) -> Result<(), HeartbeatError> {
        let value = serde_json::to_vec(&self.beat).map_err(HeartbeatError::Encode)?;
        let put = self.client.put(
            self.key.clone(),
            value,
            Some(PutOptions::new().with_lease(lease)),
        );
        topo_watcher::metrics::etcd_timed("put", put)
            .await
            .map_err(HeartbeatError::Put)?;
        Ok(())
    }
}

async fn keep_alive_loop(
    keeper: &mut LeaseKeeper,
    stream: &mut LeaseKeepAliveStream,
    interval: Duration,
) -> HeartbeatError {
    loop {
        tokio::time::sleep(interval).await;
        if let Err(e) = keeper.keep_alive().await {
            return HeartbeatError::KeepAlive(e);
        }
        match tokio::time::timeout(interval, stream.message()).await {
            Ok(Ok(Some(resp))) if resp.ttl() <= 0 => return HeartbeatError::Expired(keeper.id()),
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => return HeartbeatError::StreamEnded,
            Ok(Err(e)) => return HeartbeatError::KeepAlive(e),
            Err(_) => return HeartbeatError::Timeout(interval),
        }
    }
}
