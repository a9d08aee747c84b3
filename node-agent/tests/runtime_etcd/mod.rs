//! A throwaway etcd for integration tests: `/usr/bin/etcd` on free loopback ports with a temp
//! data dir, TLS and auth on. A missing etcd fails the test loudly.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use etcd_client::Client;
use topo_pki::testing::{SecureEtcd, Who};

/// The real etcd on the secure path (TLS, client certificates, auth on) with identities for
/// node1 and node2. `client()` is root, for set-up and inspection; `agent_client()` is
/// node1's identity, what the agent under test runs with.
pub struct Etcd(SecureEtcd);

impl Etcd {
    pub async fn start() -> Etcd {
        Etcd(SecureEtcd::start(&["node1", "node2"]).await)
    }

    pub fn endpoint(&self) -> String {
        self.0.endpoint()
    }

    pub async fn client(&self) -> Client {
        self.0.client().await
    }

    /// node1's identity: reads only node1's slice, writes only node1's keys.
    pub async fn agent_client(&self) -> Client {
        self.0.client_as(&Who::Node("node1".into())).await
    }

    /// Kills etcd (SIGKILL) and keeps its data.
    pub fn kill(&mut self) {
        self.0.kill();
    }

    /// Starts etcd again on the same ports and data.
    pub async fn restart(&mut self) {
        self.0.restart().await;
    }
}

/// Polls `f` until it is true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
