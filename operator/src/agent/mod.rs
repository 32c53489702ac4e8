//! The per-node agent: computes the links its node should have from the Networks
//! and Links that select it, drives the netlink engine, reports NodeNetworkState and
//! serves the bridges' readiness to nno-cni-shim.

pub mod deps;
pub mod desired;
pub mod metrics;
pub mod pacing;
pub mod probe;
pub mod report;
pub mod run;
mod writer;

/// Field manager of everything the agents write.
pub const MANAGER: &str = "nno.dev/agent";
