//! The engine's data model: what the caller desires ([`DesiredLink`]), what it gets
//! back ([`LinkState`]), and what the engine reads from the kernel ([`Observed`]).
//! Plain data, no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// One interface the node should have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredLink {
    /// Interface name (at most 15 bytes, no `/` or whitespace).
    pub name: String,
    /// Who wants it, e.g. `Network/gw` or `Link/br0`. Written into the ownership
    /// marker of interfaces the engine creates, for diagnostics.
    pub owner: String,
    pub kind: DesiredKind,
    /// `false`: keep the interface (or bring it) admin-down, e.g. while a
    /// non-optional dependency is not Ready. Ignored for [`DesiredKind::Unmanaged`].
    pub up: bool,
    /// Take over an interface of this name that this engine did not create, when it
    /// is of the desired kind and its settings match or can change in place: it
    /// keeps its ifindex and ports and gets the ownership marker. Never by default.
    pub adopt: bool,
}

impl DesiredLink {
    /// A bridge for `owner`, up, with MTU `mtu` (the kernel's default without).
    pub fn bridge(name: impl Into<String>, owner: impl Into<String>, mtu: Option<u32>) -> Self {
        Self {
            name: name.into(),
            owner: owner.into(),
            kind: DesiredKind::Bridge { mtu },
            up: true,
            adopt: false,
        }
    }

    /// A VXLAN for `owner`, up.
    pub fn vxlan(name: impl Into<String>, owner: impl Into<String>, config: VxlanConfig) -> Self {
        Self {
            name: name.into(),
            owner: owner.into(),
            kind: DesiredKind::Vxlan(config),
            up: true,
            adopt: false,
        }
    }
}

impl VxlanConfig {
    /// VNI `vni` on `carrier`: the IANA port 4789, learning on, and nothing else
    /// (no group, remote or peers, no master, the MTU the carrier allows).
    pub fn new(vni: u32, carrier: Carrier) -> Self {
        Self {
            vni,
            port: 4789,
            source_ports: None,
            learning: true,
            ttl: None,
            group: None,
            remote: None,
            peers: vec![],
            carrier,
            mtu: None,
            master: None,
        }
    }
}

/// What kind of interface, and its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DesiredKind {
    /// A Linux bridge, STP off. `mtu: None` leaves the MTU alone.
    Bridge { mtu: Option<u32> },
    /// A VXLAN VTEP.
    Vxlan(VxlanConfig),
    /// An existing interface: never created, deleted or reconfigured, except
    /// being enslaved to `master` when asked. An interface that holds a global
    /// address (the node's own, typically) is enslaved only with `allow_uplink`.
    Unmanaged {
        master: Option<String>,
        allow_uplink: bool,
        /// Without `master`: take it out of whatever bridge it is a port of (a
        /// rolled-back enslavement), instead of leaving that alone.
        release: bool,
    },
}

/// VXLAN settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanConfig {
    /// VXLAN network identifier, 1 ..= 2^24-1.
    pub vni: u32,
    /// UDP destination port.
    pub port: u16,
    /// UDP source port range (inclusive); `None` = kernel default.
    pub source_ports: Option<(u16, u16)>,
    /// Learn remote MAC addresses from received packets.
    pub learning: bool,
    /// TTL of encapsulated packets; `None` = kernel default (inherit from route).
    pub ttl: Option<u8>,
    /// Multicast group (`IFLA_VXLAN_GROUP`).
    pub group: Option<IpAddr>,
    /// A single unicast remote VTEP (also `IFLA_VXLAN_GROUP`, unicast).
    pub remote: Option<IpAddr>,
    /// Unicast peers, programmed as all-zero-MAC FDB entries (head-end replication).
    pub peers: Vec<IpAddr>,
    /// The interface that carries the encapsulated traffic.
    pub carrier: Carrier,
    /// `None` = carrier MTU minus the VXLAN overhead (50 for IPv4, 70 for IPv6).
    pub mtu: Option<u32>,
    /// Bridge to enslave the VTEP to.
    pub master: Option<String>,
}

/// How the carrier (underlay) interface of a VXLAN is found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Carrier {
    /// This interface.
    Named(String),
    /// The interface the kernel routes this address through (a route lookup).
    RouteTo(IpAddr),
    /// The interface that holds this address (which is then the local address).
    HoldingAddress(IpAddr),
}

/// What the engine reports for each desired link after a pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub name: String,
    pub ready: bool,
    /// CamelCase reason, one of the constants in [`reason`].
    pub reason: String,
    /// What is wrong and what to do about it; names the interface and carrier.
    pub message: String,
    /// MTU of the interface as read back from the kernel.
    pub mtu: Option<u32>,
    /// The carrier interface (VXLAN only).
    pub carrier: Option<String>,
    /// The carrier's MTU (VXLAN only): the controller derives the network MTU from it.
    pub carrier_mtu: Option<u32>,
    /// The VTEP address: the carrier's address of the underlay family (VXLAN only).
    pub local_address: Option<IpAddr>,
}

/// Reasons of [`LinkState`].
pub mod reason {
    /// The interface matches what was desired and is up.
    pub const READY: &str = "Ready";
    /// The interface was not brought to the desired state in this pass (yet).
    pub const PENDING: &str = "Pending";
    /// The carrier interface (or route, or address) of a VXLAN does not exist.
    pub const CARRIER_MISSING: &str = "CarrierMissing";
    /// The carrier has no address of the underlay family to use as VTEP address.
    pub const CARRIER_ADDRESS_MISSING: &str = "CarrierAddressMissing";
    /// The carrier exists but is admin-down.
    pub const CARRIER_DOWN: &str = "CarrierDown";
    /// An interface of that name exists and was not created by this engine.
    pub const NAME_CONFLICT: &str = "NameConflict";
    /// Adoption was asked for, but the existing interface is of another kind or has
    /// settings that cannot change in place.
    pub const ADOPTION_REFUSED: &str = "AdoptionRefused";
    /// The master bridge does not exist (or is not a usable bridge).
    pub const MASTER_MISSING: &str = "MasterMissing";
    /// The interface is held admin-down on request, or (unmanaged) is down.
    pub const ADMIN_DOWN: &str = "AdminDown";
    /// Admin-up but the kernel reports it operationally down.
    pub const OPER_DOWN: &str = "OperDown";
    /// An unmanaged interface does not exist.
    pub const NOT_FOUND: &str = "NotFound";
    /// The desired settings are invalid (name, VNI, addresses, MTU).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Enslaving the interface would take a global address (the node's own,
    /// typically its uplink) off the network: refused unless allowed.
    pub const UPLINK_REFUSED: &str = "UplinkRefused";
    /// The kernel refused a request; the message has the operation and errno.
    pub const NETLINK_ERROR: &str = "NetlinkError";
}

pub use crate::linux::{MIN_MTU, VXLAN_OVERHEAD_V4, VXLAN_OVERHEAD_V6};

/// Prefix of the ownership marker the engine writes into `IFLA_IFALIAS` of every
/// interface it creates: `nno.dev owner=<owner>`.
pub const MARKER_PREFIX: &str = "nno.dev owner=";

/// The longest alias written: `IFLA_IFALIAS` holds 255 bytes (IFALIASZ - 1), and the
/// netlink crate sends the string with its NUL, which the kernel's attribute policy
/// counts (ERANGE at 255 here, measured).
pub const ALIAS_MAX: usize = 254;

/// The ownership marker for an interface created on behalf of `owner`. An owner too
/// long for the alias (a Network name may have 253 bytes) keeps a readable head and
/// a hash of the whole owner, so the marker still tells owners apart and an engine
/// that restarts finds its interfaces. Compare markers, not owners.
pub fn marker(owner: &str) -> String {
    let full = format!("{MARKER_PREFIX}{owner}");
    if full.len() <= ALIAS_MAX {
        return full;
    }
    let suffix = format!("~{:016x}", fnv1a64(owner.as_bytes()));
    let mut keep = ALIAS_MAX - MARKER_PREFIX.len() - suffix.len();
    while !owner.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{MARKER_PREFIX}{}{suffix}", &owner[..keep])
}

/// 64-bit FNV-1a: a hash that never changes between builds or versions, which a
/// marker written by one engine and read by the next needs.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Whether an interface alias is an ownership marker of this engine, and whose.
pub fn marker_owner(alias: &str) -> Option<&str> {
    alias.strip_prefix(MARKER_PREFIX)
}

/// The underlay address family of a VXLAN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Bytes of encapsulation a VXLAN over this family adds.
    pub fn overhead(self) -> u32 {
        match self {
            Family::V4 => VXLAN_OVERHEAD_V4,
            Family::V6 => VXLAN_OVERHEAD_V6,
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// A snapshot of the node as read over rtnetlink: the input of the planner.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Every interface, by name.
    pub links: BTreeMap<String, ObservedLink>,
    /// Addresses by interface index.
    pub addresses: BTreeMap<u32, Vec<ObservedAddress>>,
    /// Route lookups done for [`Carrier::RouteTo`]; `None`: no route.
    pub routes: BTreeMap<IpAddr, Option<RouteHit>>,
    /// Destinations of the all-zero-MAC FDB entries, by VXLAN interface index.
    pub fdb: BTreeMap<u32, BTreeSet<IpAddr>>,
}

impl Observed {
    pub fn by_index(&self, index: u32) -> Option<&ObservedLink> {
        self.links.values().find(|l| l.index == index)
    }

    /// The interface holding `ip`, if any.
    pub fn holder_of(&self, ip: &IpAddr) -> Option<&ObservedLink> {
        let index = self
            .addresses
            .iter()
            .find(|(_, addrs)| addrs.iter().any(|a| a.address == *ip))
            .map(|(i, _)| *i)?;
        self.by_index(index)
    }

    /// First usable address of `family` on interface `index`: global scope
    /// preferred, IPv6 link-local never.
    pub fn address_of(&self, index: u32, family: Family) -> Option<IpAddr> {
        let addrs = self.addresses.get(&index)?;
        let usable = |a: &&ObservedAddress| {
            Family::of(&a.address) == family
                && !matches!(a.address, IpAddr::V6(v6) if v6.is_unicast_link_local())
        };
        addrs
            .iter()
            .filter(usable)
            .find(|a| a.global)
            .or_else(|| addrs.iter().find(usable))
            .map(|a| a.address)
    }
}

/// One interface as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedLink {
    pub index: u32,
    pub name: String,
    pub kind: ObservedKind,
    pub alias: Option<String>,
    pub mtu: u32,
    /// `IFF_UP`.
    pub admin_up: bool,
    pub oper: OperState,
    /// Index of the master device.
    pub master: Option<u32>,
}

impl ObservedLink {
    /// Whether this engine created the interface (it carries the marker).
    pub fn owned(&self) -> bool {
        self.alias.as_deref().and_then(marker_owner).is_some()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObservedKind {
    Bridge {
        stp: bool,
    },
    Vxlan(ObservedVxlan),
    /// Any other kind (`veth`, ...) or a device without a kind (physical NIC).
    Other(String),
}

impl ObservedKind {
    pub fn describe(&self) -> &str {
        match self {
            ObservedKind::Bridge { .. } => "bridge",
            ObservedKind::Vxlan(_) => "vxlan",
            ObservedKind::Other(k) => k,
        }
    }
}

/// The VXLAN attributes the engine manages, as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedVxlan {
    pub vni: u32,
    pub port: u16,
    /// `(0, 0)` is the kernel default.
    pub port_range: (u16, u16),
    pub learning: bool,
    /// `0` is the kernel default (inherit).
    pub ttl: u8,
    /// Multicast group or unicast remote.
    pub remote: Option<IpAddr>,
    pub local: Option<IpAddr>,
    /// Index of the carrier.
    pub link: Option<u32>,
}

impl ObservedVxlan {
    /// The underlay family the kernel fixed for this device, if any address says.
    pub fn family(&self) -> Option<Family> {
        self.local.or(self.remote).as_ref().map(Family::of)
    }
}

/// Operational state (`IFLA_OPERSTATE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperState {
    Up,
    /// What an up VXLAN reports: counts as up.
    Unknown,
    Down,
    LowerLayerDown,
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedAddress {
    pub address: IpAddr,
    pub prefix_len: u8,
    /// Scope global (not host or link).
    pub global: bool,
}

/// Result of a route lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteHit {
    pub oif: u32,
    pub prefsrc: Option<IpAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_of_long_owners_fit_the_alias_and_stay_distinct() {
        assert_eq!(marker("Network/gw"), "nno.dev owner=Network/gw");
        let long = |last: char| format!("Network/{}{last}", "n".repeat(252));
        let (a, b) = (marker(&long('a')), marker(&long('b')));
        assert!(
            a.len() <= ALIAS_MAX && b.len() <= ALIAS_MAX,
            "{} {}",
            a.len(),
            b.len()
        );
        assert_ne!(a, b);
        assert!(a.starts_with("nno.dev owner=Network/nnn"), "{a}");
        assert_eq!(
            marker_owner(&a).map(str::len),
            Some(ALIAS_MAX - MARKER_PREFIX.len())
        );
        // Stable across builds: a known FNV-1a value.
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        // Multi-byte characters are never cut in half.
        let wide = format!("Link/{}", "é".repeat(130));
        assert!(marker(&wide).len() <= ALIAS_MAX);
    }
}
