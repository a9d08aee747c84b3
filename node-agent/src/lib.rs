//! topo's node agent: watches its node's slice in etcd and keeps the host (Docker containers,
//! veth pairs and addresses, Open vSwitch bridges and GRE ports, nftables NAT) equal to it.
//!
//! The way of a slice entry to the host, one module each:
//!
//! * [`watch`]: the slice in etcd → the in-memory desired state ([`watch::SliceStore`]), by
//!   the list/watch machine shared with the controller (`topo-watcher`); keys are typed
//!   ([`key::Key`]) from here on.
//! * [`queue`]: the work queue of keys, in work order; [`host_events`]: backend event
//!   streams → keys (so changes made by hand are repaired), and the periodic resync;
//!   [`pulls`]: image pulls, run off the workers with deadlines and backoff.
//! * [`reconcile`]: one module per resource (bridge, tunnel, container, node NAT, garbage
//!   collection), each observe → plan → apply through one executor; the error policy and the
//!   runner that drives them from the queue.
//! * [`backend`]: the host, one trait per thing it holds (Docker, netlink, OVSDB, nftables).
//! * [`report`], [`events`]: observed reports and events for the controller.
//! * [`heartbeat`]: Node registration and the heartbeat lease.
//! * [`endpoint`]: the agent's own HTTPS endpoint (`/healthz`, `/readyz`, `/metrics`) with
//!   the node's identity; [`metrics`]: what `/metrics` holds.
//! * [`agent`]: wires it all and shuts down in order; [`config`]: the command line.

pub mod agent;
pub mod backend;
pub mod config;
pub mod endpoint;
pub mod error_chain;
pub mod events;
pub mod heartbeat;
pub mod host_events;
pub mod key;
pub mod metrics;
pub mod pulls;
pub mod queue;
pub mod reconcile;
pub mod report;
pub mod slice_sync;
pub mod verify;
pub mod watch;
