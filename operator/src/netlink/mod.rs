//! The node link engine: makes a network namespace's bridges, VXLAN VTEPs and
//! bridge ports match a desired set, over rtnetlink. No Kubernetes types here; the
//! agent translates `Network`/`Link` objects into [`DesiredLink`]s and
//! [`LinkState`]s back into `NodeNetworkState`.
//!
//! # Contract
//!
//! - [`Engine::new`] (or [`Engine::in_netns`]) opens one request connection and one
//!   event connection subscribed to the link, neighbour (FDB), address and route
//!   multicast groups, in the network namespace of the calling thread (or of the
//!   given path).
//! - [`Engine::reconcile`]`(&desired) -> Vec<LinkState>` is one pass: observe the
//!   node, [`plan`] the minimal writes (pure), apply them in dependency order
//!   (carrier, bridge, VXLAN, enslave, MTU, up; deletions first), observe again to
//!   verify. It returns one [`LinkState`] per desired link, in the given order. A
//!   pass that finds nothing to do makes zero netlink writes.
//! - [`Engine::run`] reconciles whenever the `watch` of desired links changes or a
//!   relevant netlink event arrives, and publishes the states, with the desired set
//!   they reflect ([`Applied`]), on a `watch`. Events
//!   are only cues to observe again. It reconciles the current value immediately:
//!   hand it the first desired set only once it is complete, or it deletes owned
//!   links that merely have not been listed yet.
//! - [`Engine::write_counter`] counts netlink write requests (tests, metrics,
//!   benchmark).
//!
//! # Rules it keeps
//!
//! - Every interface it creates carries the ownership marker
//!   `nno.dev owner=<owner>` in `IFLA_IFALIAS` ([`marker`]); after a restart that
//!   is how it knows what it may delete. It deletes owned bridges and VXLANs that
//!   are no longer desired, and never deletes or reconfigures an interface
//!   without the marker: a desired name held by a foreign interface is reported
//!   as [`reason::NAME_CONFLICT`] for that link only.
//! - Bridges: created with STP off, then MTU set explicitly (only a change made
//!   after creation stops the kernel from following the smallest port), then up.
//! - VXLANs: VNI, port, source-port range, learning, TTL, carrier and local
//!   address, multicast group or unicast remote, created in one request with the
//!   carrier before the group; unicast peers as all-zero-MAC FDB entries. The
//!   kernel refuses to change VNI, port, port range and address family in place:
//!   those are recreated, everything else is changed in place. MTU defaults to the
//!   carrier MTU minus 50 (IPv4 underlay) or 70 (IPv6), always set explicitly. An
//!   up VXLAN reports operstate UNKNOWN, which counts as up.
//! - A missing carrier makes the VXLAN not Ready ([`reason::CARRIER_MISSING`],
//!   naming the carrier); it is created on the event that shows the carrier.
//! - One bad link never blocks the others: problems and kernel errors are per link.
//!
//! # Example
//!
//! ```no_run
//! use nno::netlink::{Carrier, DesiredKind, DesiredLink, Engine, VxlanConfig};
//! # async fn demo() -> Result<(), nno::netlink::Error> {
//! let mut engine = Engine::new()?;
//! let desired = vec![
//!     DesiredLink { name: "br-gw".into(), owner: "Network/gw".into(),
//!                   kind: DesiredKind::Bridge { mtu: Some(1450) }, up: true, adopt: false },
//!     DesiredLink { name: "vx-gw".into(), owner: "Network/gw".into(), up: true,
//!                   kind: DesiredKind::Vxlan(VxlanConfig {
//!                       vni: 100, port: 4789, source_ports: None, learning: true, ttl: None,
//!                       group: None, remote: None, peers: vec!["198.18.0.2".parse().unwrap()],
//!                       carrier: Carrier::RouteTo("198.18.0.2".parse().unwrap()),
//!                       mtu: None, master: Some("br-gw".into()) }), adopt: false },
//! ];
//! for state in engine.reconcile(&desired).await {
//!     println!("{}: {} {}", state.name, state.reason, state.message);
//! }
//! # Ok(()) }
//! ```

mod apply;
mod engine;
mod error;
mod events;
mod observe;
pub mod plan;
mod ports;
mod step;
mod types;

pub use apply::{DELETE_GROUP, WriteCounter};
pub use engine::{Applied, Engine};
pub use error::{Error, Operation};
pub use plan::{Plan, Problem, plan};
pub use step::Step;
pub use types::*;
