//! topoctl: the command line of topo (SPEC.md, "Command line: topoctl").
//!
//! Rendering is kept apart from I/O so it can be tested: [`output`] (tables, `-o`),
//! [`describe`], [`diff`], [`timefmt`]; [`client`] speaks the controller's HTTP API and
//! [`watch`] keeps a watch going across disconnects and compactions.

pub mod args;
pub mod client;
pub mod cmd;
pub mod config;
pub mod describe;
pub mod diff;
pub mod inputs;
pub mod manifests;
pub mod output;
pub mod timefmt;
pub mod tls;
pub mod waiter;
pub mod watch;
