//! The write vocabulary of the engine: what the planner decides and the applier
//! sends to the kernel, one netlink request per [`Step`].

use std::fmt;
use std::net::IpAddr;

use super::types::Family;

/// One netlink write. Steps name interfaces; the applier resolves names to
/// indices, so a step can refer to an interface created earlier in the same plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Delete an interface this engine created (`RTM_DELLINK`).
    Delete { name: String, why: String },
    /// Create a bridge, STP off, admin-down (`RTM_NEWLINK`, create).
    CreateBridge { name: String },
    /// Create a VXLAN, admin-down (`RTM_NEWLINK`, create). The carrier is set in
    /// the same message as (and before) the multicast group.
    CreateVxlan { name: String, params: VxlanParams },
    /// Turn STP off on an existing bridge (`RTM_NEWLINK`, change).
    StpOff { name: String },
    /// Change the VXLAN settings the kernel accepts in place (`RTM_NEWLINK`, change).
    ChangeVxlan { name: String, change: VxlanChange },
    /// Generic settings in one `RTM_SETLINK`: marker, MTU, master, admin state.
    Set { name: String, attrs: SetAttrs },
    /// Add a unicast peer as an all-zero-MAC FDB entry (`RTM_NEWNEIGH`, append).
    AddPeer { name: String, dst: IpAddr },
    /// Remove an all-zero-MAC FDB entry (`RTM_DELNEIGH`).
    DelPeer { name: String, dst: IpAddr },
    /// Put back the VXLAN's own default entry (all-zero MAC to its group or remote,
    /// through its carrier), which the kernel makes at creation and someone deleted
    /// since: without it the VXLAN floods nowhere (`RTM_NEWNEIGH`, append).
    RestoreDefault {
        name: String,
        dst: IpAddr,
        carrier: String,
    },
}

impl Step {
    /// The interface the step writes to.
    pub fn name(&self) -> &str {
        match self {
            Step::Delete { name, .. }
            | Step::CreateBridge { name }
            | Step::CreateVxlan { name, .. }
            | Step::StpOff { name }
            | Step::ChangeVxlan { name, .. }
            | Step::Set { name, .. }
            | Step::AddPeer { name, .. }
            | Step::DelPeer { name, .. }
            | Step::RestoreDefault { name, .. } => name,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Delete { name, why } => write!(f, "delete {name} ({why})"),
            Step::CreateBridge { name } => write!(f, "create bridge {name}"),
            Step::CreateVxlan { name, params } => {
                write!(f, "create vxlan {name} (VNI {})", params.vni)
            }
            Step::StpOff { name } => write!(f, "turn STP off on {name}"),
            Step::ChangeVxlan { name, change } => write!(f, "change vxlan {name} ({change})"),
            Step::Set { name, attrs } => write!(f, "set {name} ({attrs})"),
            Step::AddPeer { name, dst } => write!(f, "add FDB peer {dst} to {name}"),
            Step::DelPeer { name, dst } => write!(f, "remove FDB peer {dst} from {name}"),
            Step::RestoreDefault { name, dst, carrier } => {
                write!(
                    f,
                    "restore the default FDB entry of {name} (to {dst} via {carrier})"
                )
            }
        }
    }
}

/// Everything a new VXLAN is created with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanParams {
    pub vni: u32,
    pub port: u16,
    pub source_ports: Option<(u16, u16)>,
    pub learning: bool,
    /// `0` = kernel default.
    pub ttl: u8,
    /// Multicast group or unicast remote.
    pub remote: Option<IpAddr>,
    pub local: IpAddr,
    /// Name of the carrier (resolved to its index when applied).
    pub carrier: String,
}

/// The in-place changes of an existing VXLAN (`None`: unchanged).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VxlanChange {
    /// The (unchanged) VNI, sent along as `ip link set type vxlan id` does.
    pub vni: u32,
    pub learning: Option<bool>,
    pub ttl: Option<u8>,
    /// New carrier, by name.
    pub carrier: Option<String>,
    pub local: Option<IpAddr>,
    pub remote: Option<RemoteChange>,
}

/// A new multicast group / unicast remote, or none (the all-zero address of the family).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteChange {
    Set(IpAddr),
    Clear(Family),
}

impl fmt::Display for VxlanChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(l) = self.learning {
            parts.push(format!("learning {l}"));
        }
        if let Some(t) = self.ttl {
            parts.push(format!("ttl {t}"));
        }
        if let Some(c) = &self.carrier {
            parts.push(format!("carrier {c}"));
        }
        if let Some(l) = self.local {
            parts.push(format!("local {l}"));
        }
        match self.remote {
            Some(RemoteChange::Set(r)) => parts.push(format!("remote {r}")),
            Some(RemoteChange::Clear(_)) => parts.push("no remote".into()),
            None => {}
        }
        f.write_str(&parts.join(", "))
    }
}

/// Settings of one `RTM_SETLINK` (`None`: unchanged).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAttrs {
    /// The ownership marker (`IFLA_IFALIAS`).
    pub alias: Option<String>,
    pub mtu: Option<u32>,
    pub master: Option<MasterChange>,
    pub up: Option<bool>,
}

impl SetAttrs {
    pub fn is_empty(&self) -> bool {
        *self == SetAttrs::default()
    }
}

impl fmt::Display for SetAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(a) = &self.alias {
            parts.push(format!("alias {a:?}"));
        }
        if let Some(m) = self.mtu {
            parts.push(format!("mtu {m}"));
        }
        match &self.master {
            Some(MasterChange::Attach(m)) => parts.push(format!("master {m}")),
            Some(MasterChange::Detach) => parts.push("nomaster".into()),
            None => {}
        }
        match self.up {
            Some(true) => parts.push("up".into()),
            Some(false) => parts.push("down".into()),
            None => {}
        }
        f.write_str(&parts.join(", "))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MasterChange {
    /// Enslave to this bridge (by name).
    Attach(String),
    Detach,
}
