//! The end-to-end test harness of topo (issue 3, reused by issue 4's seed scenarios).
//!
//! Each test binary in `e2e/tests/` has one `#[test]` that brings up a lab with
//! [`Lab::up`] (e2e/lab/lab.sh: etcd, topo-controller, N hosts as network namespaces with
//! their own Open vSwitch and topo-agent, one dockerd) and runs its named scenarios in
//! sequence with [`run_scenarios`]; the lab is torn down when the `Lab` is dropped. See
//! [`lab`] for the environment variables (isolation, keeping the lab, running one scenario).
//!
//! Everything polls with a deadline ([`poll`]) and every failure says what it last saw.
//! Traffic goes only to lab-assigned addresses.

pub mod chromium;
pub mod cmd;
pub mod faults;
pub mod flags;
pub mod https;
pub mod integrity;
pub mod lab;
pub mod links;
pub mod manifest;
pub mod mesh;
pub mod outage;
pub mod ovn;
pub mod parse;
pub mod plumbing;
pub mod poll;
pub mod probe;
pub mod registry;
pub mod scenario;
pub mod stats;

pub use lab::{Lab, converge, docker_name, node_address, node_name};
pub use parse::{PingStats, PortCounters};
pub use poll::{poll, secs, try_poll};
pub use scenario::{Scenario, ScenarioFn, run_scenarios};
