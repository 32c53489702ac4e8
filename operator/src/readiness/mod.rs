//! The node agent's readiness API: whether a bridge is Ready on this node, served
//! over a Unix socket on the host to `nno-cni-shim` (and to people with `curl
//! --unix-socket`). The contract is documented in `docs/readiness-api.md`.
//!
//! The agent owns a [`Readiness`] handle and updates it after every pass of its
//! engine; [`Server::bind`] + [`Server::run`] answer requests from it,
//! including long polls that return the moment a bridge becomes Ready.
//!
//! This module knows nothing about Kubernetes or netlink: it serves what it is told.

mod api;
/// Where the agent serves the readiness API, and the shim asks it, by default.
pub const DEFAULT_SOCKET: &str = "/run/nno/agent.sock";

mod server;
mod state;

pub use api::{API_VERSION, AgentStatus, ApiError, BridgeStatus, ErrorBody, MAX_WAIT};
pub use server::{HEADER_READ_TIMEOUT, ServeError, Server};
pub use state::{BridgeOwner, BridgeReadiness, ForNetwork, Readiness, Snapshot, reason};
