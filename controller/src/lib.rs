//! topo-controller: the API server and the controller, as a library so tests (and topoctl's
//! tests) can run it in-process.
//!
//! * [`cache`]: the informer over etcd, publishing immutable snapshots.
//! * [`commit`]: fenced change sets, and the intent log for those too large for one txn.
//! * [`store`]: apply/create/replace/delete computed against snapshots.
//! * [`api`], [`watch`]: the HTTP API and its watch streams; [`decode`]: what its requests
//!   carry (query strings, bodies), pure, so it can be fuzzed; [`reply`]: the state and the
//!   error responses every HTTP module shares.
//! * [`guard`], [`auth`], [`config`]: HTTPS only (`topo_pki::serve`); authentication
//!   (client certificates, bearer tokens), roles, audit, limits; the configuration file.
//! * [`metrics`]: `/metrics` (Prometheus text) for the `view` and `metrics` roles.
//! * [`logs`]: a container's log, read from its node's agent endpoint.
//! * [`ui`]: the `/ui` page's static shell (its data comes from the API itself).
//! * [`events`]: bounded event history.
//! * [`health`], [`probes`]: whether etcd answers and the cache is current; `/healthz`,
//!   `/readyz` and the stale-read warning.
//! * [`ipam`], [`planner`], [`leader`]: addresses, derivation, and the leader's loop;
//!   [`ifnames`]: the host interface names the planner hands out per node.
//! * [`verify`]: `topoctl verify`, the checks planned here and run by the nodes' agents,
//!   folded into one answer and a `Verified` condition per container.

pub mod api;
pub mod auth;
pub mod cache;
pub mod commit;
pub mod config;
pub mod decode;
pub mod events;
pub mod exec;
pub mod guard;
pub mod health;
pub mod ifnames;
pub mod ipam;
pub mod leader;
pub mod logs;
pub mod metrics;
pub mod pages;
pub mod planner;
pub mod probes;
pub mod quota;
pub mod registration;
pub mod reply;
pub mod store;
pub mod ui;
pub mod verify;
pub mod watch;

use std::net::SocketAddr;
use std::time::Duration;

use backoff::backoff::Backoff;
use etcd_client::Client;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cache::{Cache, CacheError};
use crate::commit::{CommitError, Committer};
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("failed to connect to etcd at {endpoints}: shut down while retrying")]
    Connect { endpoints: String },
    #[error("failed to recover the intent log")]
    Recover(#[source] CommitError),
    #[error("failed to start the cache")]
    Cache(#[source] CacheError),
    #[error("failed to listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to serve HTTPS")]
    Serve(#[source] std::io::Error),
    #[error("failed to load the etcd client identity")]
    EtcdTls(#[source] topo_pki::etcd::EtcdSetupError),
    #[error("failed to load the API's TLS files")]
    Tls(#[source] topo_pki::tls::TlsError),
    #[error("failed to load the token file")]
    Tokens(#[source] auth::TokenFileError),
    #[error("failed to open the audit file")]
    Audit(#[source] guard::AuditError),
}

/// What a controller process runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub etcd_endpoints: Vec<String>,
    pub listen: SocketAddr,
    /// etcd's `--max-txn-ops`: change sets larger than this go through the intent log.
    pub max_txn_ops: usize,
    /// This replica's name in the leader election.
    pub id: String,
    /// Whether to take part in the leader election (derivation, status). Tests of the API
    /// alone turn it off.
    pub lead: bool,
    /// TLS, credentials, roles, quotas, limits (the configuration file).
    pub security: config::Security,
}

impl Config {
    pub fn new(
        etcd_endpoints: Vec<String>,
        listen: SocketAddr,
        security: config::Security,
    ) -> Self {
        Config {
            etcd_endpoints,
            listen,
            max_txn_ops: commit::DEFAULT_MAX_TXN_OPS,
            id: default_id(),
            lead: true,
            security,
        }
    }
}

/// `hostname-pid`, unique enough among replicas.
pub fn default_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host = if host.is_empty() {
        "controller".to_string()
    } else {
        host
    };
    format!("{host}-{}", std::process::id())
}

/// The parts of a running controller.
#[derive(Clone)]
pub struct Controller {
    pub client: Client,
    pub cache: Cache,
    pub committer: Committer,
    pub store: Store,
    pub health: health::Health,
    pub id: String,
}

/// Connects to etcd over TLS with the controller's identity, retrying with backoff until it
/// answers or `shutdown`. Every request carries the configured timeout (at most 5 s), so an
/// etcd that hangs turns into a 503, not a hung client. With several endpoints the client
/// stays on one member and fails over when it dies (`topo_watcher::failover`).
pub async fn connect(
    endpoints: &[String],
    security: &config::Security,
    shutdown: &CancellationToken,
) -> Result<Client, ServerError> {
    topo_pki::etcd::check_endpoints(endpoints).map_err(ServerError::EtcdTls)?;
    let options = topo_watcher::failover::EndpointOptions {
        tls: Some(
            security
                .etcd_tls()
                .tls_options()
                .map_err(ServerError::EtcdTls)?,
        ),
        connect_timeout: Some(Duration::from_secs(3)),
        request_timeout: Some(security.limits.etcd_timeout()),
        // A member that stops answering (paused, partitioned) is noticed within 8 s even
        // by a watch that is otherwise idle.
        keep_alive: Some((Duration::from_secs(5), Duration::from_secs(3))),
        keep_alive_while_idle: true,
    };
    let mut backoff = cache::new_backoff();
    loop {
        let attempt = async {
            let mut c = topo_watcher::failover::connect(endpoints, &options)
                .await
                .map_err(|e| e.to_string())?;
            // Connecting is lazy; make sure etcd answers.
            c.status().await.map_err(|e| health::etcd_summary(&e))?;
            Ok::<_, String>(c)
        };
        match attempt.await {
            Ok(c) => return Ok(c),
            Err(e) => {
                let wait = backoff.next_backoff().unwrap_or(Duration::from_secs(5));
                tracing::warn!(endpoints = ?endpoints, error = %e, ?wait, "etcd not reachable, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(ServerError::Connect { endpoints: endpoints.join(",") }),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Connects, recovers the intent log and starts the cache (no HTTP, no leader).
pub async fn start_controller(
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<Controller, ServerError> {
    let client = connect(&config.etcd_endpoints, &config.security, shutdown).await?;
    commit::recover_intents(&client, config.max_txn_ops)
        .await
        .map_err(ServerError::Recover)?;
    let cache = Cache::start(client.clone(), shutdown.clone())
        .await
        .map_err(ServerError::Cache)?;
    tokio::spawn(commit::run_intent_janitor(
        client.clone(),
        cache.clone(),
        config.max_txn_ops,
        shutdown.clone(),
    ));
    let committer = Committer::new(client.clone(), cache.clone(), config.max_txn_ops);
    let store = Store::new(committer.clone()).with_quotas(config.security.quotas.clone());
    let health = health::Health::start(client.clone(), cache.clone(), shutdown.clone());
    Ok(Controller {
        client,
        cache,
        committer,
        store,
        health,
        id: config.id.clone(),
    })
}

/// A controller serving HTTPS.
pub struct Running {
    pub addr: SocketAddr,
    pub controller: Controller,
    /// Ends when the server has shut down (after `shutdown` and in-flight requests).
    pub handle: JoinHandle<Result<(), ServerError>>,
}

/// The API's TLS configuration and gate, loaded before anything starts so a missing file
/// fails at once.
fn load_security(
    s: &config::Security,
) -> Result<(std::sync::Arc<rustls::ServerConfig>, guard::Guard), ServerError> {
    let tls =
        topo_pki::tls::server_config(&s.tls.cert_file, &s.tls.key_file, &s.tls.client_ca_file)
            .map_err(ServerError::Tls)?;
    let tokens = match &s.token_file {
        Some(p) => auth::Tokens::load(p).map_err(ServerError::Tokens)?,
        None => auth::Tokens::default(),
    };
    let gate = guard::Guard::new(
        tokens,
        auth::Authorizer::new(s.bindings.clone()),
        s.limits.watches_per_user,
        s.audit_file.as_deref(),
    )
    .map_err(ServerError::Audit)?;
    Ok((std::sync::Arc::new(tls), gate))
}

/// Starts everything and serves HTTPS until `shutdown`.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, ServerError> {
    let (tls, gate) = load_security(&config.security)?;
    let controller = start_controller(&config, &shutdown).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;
    let leader = if config.lead {
        spawn_leader(&controller, &config, &shutdown)
    } else {
        None
    };
    let state = api::AppState {
        store: controller.store.clone(),
        client: controller.client.clone(),
        cache: controller.cache.clone(),
        shutdown: shutdown.clone(),
        etcd_timeout: config.security.limits.etcd_timeout(),
        health: controller.health.clone(),
    };
    let agents = logs::AgentClient::new(&config.security).map_err(ServerError::Tls)?;
    let app = api::router(state, std::sync::Arc::new(gate))
        .layer(axum::Extension(std::sync::Arc::new(agents)));
    let sd = shutdown.clone();
    let handle = tokio::spawn(async move {
        tracing::info!(%addr, "serving the API over HTTPS");
        let peer =
            |cert: Option<&[u8]>| guard::PeerIdentity(cert.and_then(auth::identity_from_cert));
        let served = topo_pki::serve::serve_tls(listener, tls, app, sd, peer).await;
        if let Some(l) = leader {
            // The leader resigns on shutdown; wait so a successor does not wait out the lease.
            let _ = tokio::time::timeout(Duration::from_secs(5), l).await;
        }
        served.map_err(ServerError::Serve)
    });
    Ok(Running {
        addr,
        controller,
        handle,
    })
}

fn spawn_leader(
    c: &Controller,
    config: &Config,
    shutdown: &CancellationToken,
) -> Option<JoinHandle<()>> {
    let leader_config = leader::LeaderConfig {
        id: c.id.clone(),
        txn_ops: config.max_txn_ops.saturating_sub(8).max(4),
        ..Default::default()
    };
    let committer = c.committer.clone();
    let shutdown = shutdown.clone();
    Some(tokio::spawn(async move {
        if let Err(e) = leader::run(committer, leader_config, shutdown).await {
            tracing::error!(error = %e, "the leader loop failed");
        }
    }))
}

/// Runs until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ServerError> {
    let running = start(config, shutdown).await?;
    match running.handle.await {
        Ok(r) => r,
        Err(e) => Err(ServerError::Serve(std::io::Error::other(e))),
    }
}

/// An in-process controller on a free loopback port, for tests (topoctl's too). Stops when
/// dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    /// `https://127.0.0.1:PORT`
    pub url: String,
    pub controller: Controller,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<Result<(), ServerError>>>,
}

impl TestServer {
    /// Stops serving and waits for in-flight requests.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts a controller (with the leader) against `endpoints` on 127.0.0.1:0, with the
/// identities of the PKI directory `pki` (`topo-pki init`'s layout).
pub async fn serve_for_test(
    endpoints: &[String],
    pki: &std::path::Path,
) -> Result<TestServer, ServerError> {
    serve_for_test_with(test_config(endpoints, pki)).await
}

/// The configuration [`serve_for_test`] uses, to adjust before [`serve_for_test_with`].
pub fn test_config(endpoints: &[String], pki: &std::path::Path) -> Config {
    let security = config::Security::from_pki_dir(pki, endpoints.to_vec());
    Config::new(
        endpoints.to_vec(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        security,
    )
}

/// Like [`serve_for_test`] with a chosen configuration (the listen address is kept).
pub async fn serve_for_test_with(config: Config) -> Result<TestServer, ServerError> {
    let shutdown = CancellationToken::new();
    let running = start(config, shutdown.clone()).await?;
    Ok(TestServer {
        addr: running.addr,
        url: format!("https://{}", running.addr),
        controller: running.controller,
        shutdown,
        handle: Some(running.handle),
    })
}
