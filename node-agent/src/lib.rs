//! topo's node agent: watches its node's slice in etcd and keeps the host (Docker containers,
//! veth pairs and addresses, Open vSwitch bridges and GRE ports, nftables NAT) equal to it.
//!
//! * [`watch`]: the slice list/watch state machine and the in-memory desired state.
//! * [`reconcile`]: per-key reconciles against the [`backend`] traits, the error policy and
//!   the worker runner; [`queue`] is their work queue.
//! * [`drift`]: backend event streams → keys to reconcile; the periodic resync.
//! * [`report`], [`events`]: observed reports and events for the controller.
//! * [`heartbeat`]: Node registration and the heartbeat lease.
//! * [`agent`]: wires it all and shuts down in order; [`config`]: the command line.

pub mod agent;
pub mod backend;
pub mod config;
pub mod drift;
pub mod events;
pub mod heartbeat;
pub mod queue;
pub mod reconcile;
pub mod report;
pub mod watch;
