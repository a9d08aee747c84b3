//! topo's contract types, shared by the controller, the node agent and topoctl.
//!
//! * [`kinds`]: the five resource kinds of SPEC.md (Node, Network, Container, Link, Tunnel).
//! * [`manifest`]: multi-document YAML/JSON parsing whose errors name file, line and column.
//! * [`jsonschema`]: the JSON Schema of the manifests (`topoctl schema`).
//! * [`validate`]: per-object and cross-object validation that returns every error with its
//!   field path.
//! * [`net`]: address arithmetic (blocks, gateways, MTU overhead) both sides must agree on.
//! * [`slice`]: what one node must hold, as the controller writes it and the agent reads it.
//! * [`hardening`]: the `docker run` hardening of a Container (limits, user, capabilities).
//! * [`hostports`]: host ports a Node reserves.
//! * [`api`]: the wire types of the controller's HTTP API.
//! * [`verify`]: `topoctl verify`'s checks, between topoctl, the controller and the agents.

pub mod api;
pub mod exec;
pub mod field;
pub mod hardening;
pub mod hostports;
pub mod jsonschema;
pub mod keys;
pub mod kinds;
pub mod limits;
pub mod manifest;
pub mod meta;
pub mod names;
pub mod net;
pub mod serde_ip;
pub mod slice;
pub mod validate;
pub mod verify;

pub use kinds::*;
pub use meta::*;

/// The only API version this release speaks.
pub const API_VERSION: &str = "topo.dev/v1alpha1";
/// The API group, used in label and annotation keys.
pub const GROUP: &str = "topo.dev";
/// Label that marks objects the controller derived (mesh tunnels) from another object.
pub const LABEL_DERIVED_FROM: &str = "topo.dev/derived-from";
