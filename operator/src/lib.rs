//! node-network-operator: prepares node networking (Linux bridges and VXLAN VTEPs) for
//! multus secondary networks.

pub mod agent;
pub mod api;
pub mod cache;
pub mod controller;
pub mod linux;
pub mod model;
pub mod multus;
pub mod netlink;
pub mod readiness;
pub mod runtime;
pub mod telemetry;
