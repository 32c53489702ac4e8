//! The pure heart of the engine: desired links + an [`Observed`] snapshot -> the
//! minimal list of [`Step`]s that makes the node match, and for each desired link
//! what stands in its way. No I/O: every rule about the kernel that matters for
//! correctness lives here, where it is unit-tested.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use super::types::{
    Carrier, DesiredKind, DesiredLink, Family, LinkState, MIN_MTU, Observed, ObservedKind, ObservedLink,
    ObservedVxlan, OperState, VxlanConfig, marker, marker_owner, reason,
};

/// Largest MTU the kernel accepts for a bridge or VXLAN.
const MAX_MTU: u32 = 65535;
/// Largest VXLAN network identifier (24 bits).
const MAX_VNI: u32 = (1 << 24) - 1;

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
            | Step::DelPeer { name, .. } => name,
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

/// Why a desired link is not (or cannot become) Ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Problem {
            reason,
            message: message.into(),
        }
    }
}

/// What the planner worked out for one desired link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkPlan {
    pub name: String,
    /// Writes for this link, in order.
    pub steps: Vec<Step>,
    /// What keeps the link from Ready even once `steps` are applied.
    pub problem: Option<Problem>,
    pub carrier: Option<String>,
    pub carrier_mtu: Option<u32>,
    pub local_address: Option<IpAddr>,
    /// Dependency order of the link's kind: 1 bridge, 2 VXLAN, 3 unmanaged port.
    pub order: u8,
}

/// The planner's output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Deletions of owned interfaces that are no longer desired.
    pub deletions: Vec<Step>,
    /// One entry per desired link, in the order given.
    pub links: Vec<LinkPlan>,
}

impl Plan {
    /// Every write, in dependency order: deletions, bridges, VXLANs, enslaving
    /// unmanaged ports, FDB entries. Within a link, its own order is kept.
    pub fn steps(&self) -> Vec<&Step> {
        let mut all: Vec<(u8, &Step)> = self.deletions.iter().map(|s| (0, s)).collect();
        for link in &self.links {
            for step in &link.steps {
                all.push((phase(step, link), step));
            }
        }
        all.sort_by_key(|(p, _)| *p); // stable: keeps each link's order
        all.into_iter().map(|(_, s)| s).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.deletions.is_empty() && self.links.iter().all(|l| l.steps.is_empty())
    }
}

fn phase(step: &Step, link: &LinkPlan) -> u8 {
    match step {
        Step::Delete { .. } => 0,
        Step::AddPeer { .. } | Step::DelPeer { .. } => 4,
        _ => link.order,
    }
}

/// Plans the writes that make `observed` match `desired`.
pub fn plan(desired: &[DesiredLink], observed: &Observed) -> Plan {
    let desired_names: HashSet<&str> = desired.iter().map(|d| d.name.as_str()).collect();

    let deletions = observed
        .links
        .values()
        .filter(|l| l.owned() && deletable(l) && !desired_names.contains(l.name.as_str()))
        .map(|l| Step::Delete {
            name: l.name.clone(),
            why: "no longer desired".into(),
        })
        .collect();

    let mut ctx = Context {
        observed,
        seen: HashSet::new(),
        bridges: HashMap::new(),
        fresh: HashSet::new(),
    };
    let mut links: Vec<Option<LinkPlan>> = vec![None; desired.len()];

    // Dependency order: bridges (masters, maybe carriers), then VXLANs, then
    // unmanaged ports; results are reported in the caller's order.
    for pass in [Pass::Bridges, Pass::Vxlans, Pass::Unmanaged] {
        for (i, d) in desired.iter().enumerate() {
            if pass != Pass::of(&d.kind) {
                continue;
            }
            links[i] = Some(ctx.plan_link(d));
        }
    }

    Plan {
        deletions,
        links: links.into_iter().map(|l| l.unwrap_or_default()).collect(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Bridges,
    Vxlans,
    Unmanaged,
}

impl Pass {
    fn order(self) -> u8 {
        match self {
            Pass::Bridges => 1,
            Pass::Vxlans => 2,
            Pass::Unmanaged => 3,
        }
    }

    fn of(kind: &DesiredKind) -> Pass {
        match kind {
            DesiredKind::Bridge { .. } => Pass::Bridges,
            DesiredKind::Vxlan(_) => Pass::Vxlans,
            DesiredKind::Unmanaged { .. } => Pass::Unmanaged,
        }
    }
}

/// Only the kinds the engine creates are ever deleted, marker or not.
fn deletable(link: &ObservedLink) -> bool {
    matches!(link.kind, ObservedKind::Bridge { .. } | ObservedKind::Vxlan(_))
}

struct Context<'a> {
    observed: &'a Observed,
    /// Names already planned (duplicates are refused).
    seen: HashSet<String>,
    /// Desired bridges: whether they are usable as a master.
    bridges: HashMap<String, Result<(), Problem>>,
    /// Interfaces (re)created by this plan: their index will change.
    fresh: HashSet<String>,
}

impl<'a> Context<'a> {
    fn plan_link(&mut self, d: &DesiredLink) -> LinkPlan {
        let mut lp = LinkPlan {
            name: d.name.clone(),
            order: Pass::of(&d.kind).order(),
            ..LinkPlan::default()
        };
        if let Err(msg) = validate(d) {
            lp.problem = Some(Problem::new(reason::INVALID_SPEC, msg));
            self.note_bridge(d, &lp);
            return lp;
        }
        if !self.seen.insert(d.name.clone()) {
            lp.problem = Some(Problem::new(
                reason::INVALID_SPEC,
                format!(
                    "interface {} is desired more than once (again by {}); only the first is applied",
                    d.name, d.owner
                ),
            ));
            return lp;
        }
        match &d.kind {
            DesiredKind::Bridge { mtu } => self.plan_bridge(d, *mtu, &mut lp),
            DesiredKind::Vxlan(cfg) => self.plan_vxlan(d, cfg, &mut lp),
            DesiredKind::Unmanaged { master, allow_uplink } => {
                self.plan_unmanaged(d, master.as_deref(), *allow_uplink, &mut lp)
            }
        }
        self.note_bridge(d, &lp);
        lp
    }

    fn note_bridge(&mut self, d: &DesiredLink, lp: &LinkPlan) {
        if !matches!(d.kind, DesiredKind::Bridge { .. }) || self.bridges.contains_key(&d.name) {
            return;
        }
        let usable = match &lp.problem {
            Some(p) if p.reason == reason::NAME_CONFLICT || p.reason == reason::INVALID_SPEC => {
                Err(p.clone())
            }
            _ => Ok(()),
        };
        self.bridges.insert(d.name.clone(), usable);
    }

    /// An existing interface this engine may manage, or the reason it may not.
    /// `Ok(None)`: it does not exist.
    fn existing(&self, d: &DesiredLink) -> Result<Option<&'a ObservedLink>, Problem> {
        match self.observed.links.get(&d.name) {
            None => Ok(None),
            Some(l) if l.owned() => Ok(Some(l)),
            Some(l) if d.adopt => {
                let same_kind = matches!(
                    (&d.kind, &l.kind),
                    (DesiredKind::Bridge { .. }, ObservedKind::Bridge { .. })
                        | (DesiredKind::Vxlan(_), ObservedKind::Vxlan(_))
                );
                if same_kind {
                    Ok(Some(l))
                } else {
                    Err(Problem::new(
                        reason::ADOPTION_REFUSED,
                        format!(
                            "interface {} exists ({}), not made by nno, and is not the kind {} asks for: it is not adopted; remove it or change {}",
                            d.name,
                            l.kind.describe(),
                            d.owner,
                            d.owner
                        ),
                    ))
                }
            }
            Some(l) => Err(Problem::new(
                reason::NAME_CONFLICT,
                format!(
                    "interface {} already exists ({}) and was not created by nno; it is left untouched: \
                     remove or rename it, or choose another name for {}",
                    d.name,
                    l.kind.describe(),
                    d.owner
                ),
            )),
        }
    }

    fn plan_bridge(&mut self, d: &DesiredLink, mtu: Option<u32>, lp: &mut LinkPlan) {
        let existing = match self.existing(d) {
            Ok(e) => e,
            Err(p) => {
                lp.problem = Some(p);
                return;
            }
        };
        let mut attrs = SetAttrs::default();
        // A bridge made for another owner (the object that held the name was
        // deleted) is made again: its ports are the old owner's pods', which must
        // not join the new owner's network.
        // (A bridge without a marker here is one being adopted.)
        let made_for = |l: &ObservedLink| l.alias.as_deref().and_then(marker_owner).map(str::to_string);
        let ours = marker(&d.owner);
        match existing {
            Some(l)
                if matches!(l.kind, ObservedKind::Bridge { .. })
                    && (made_for(l).is_none() || l.alias.as_deref() == Some(ours.as_str())) =>
            {
                if matches!(l.kind, ObservedKind::Bridge { stp: true }) {
                    lp.steps.push(Step::StpOff { name: d.name.clone() });
                }
                attrs = diff_common(d, l, mtu);
            }
            other => {
                if let Some(l) = other {
                    let why = match (&l.kind, made_for(l)) {
                        (ObservedKind::Bridge { .. }, Some(old)) => format!(
                            "recreate: it was made for {old}, and {} wants it now; the ports stay off it",
                            d.owner
                        ),
                        _ => format!("recreate: it is a {}, not a bridge", l.kind.describe()),
                    };
                    lp.steps.push(Step::Delete {
                        name: d.name.clone(),
                        why,
                    });
                }
                self.fresh.insert(d.name.clone());
                lp.steps.push(Step::CreateBridge { name: d.name.clone() });
                // The MTU is set after creation: only an explicit change makes the
                // kernel stop following the smallest port.
                attrs.alias = Some(marker(&d.owner));
                attrs.mtu = mtu;
                attrs.up = d.up.then_some(true);
            }
        }
        if !attrs.is_empty() {
            lp.steps.push(Step::Set {
                name: d.name.clone(),
                attrs,
            });
        }
        if !d.up {
            lp.problem = Some(held_down(d));
        }
    }

    fn plan_vxlan(&mut self, d: &DesiredLink, cfg: &VxlanConfig, lp: &mut LinkPlan) {
        let existing = match self.existing(d) {
            Ok(e) => e,
            Err(p) => {
                lp.problem = Some(p);
                return;
            }
        };
        let carrier = match resolve_carrier(&d.name, cfg, self.observed) {
            Ok(c) => c,
            Err(p) => {
                lp.problem = Some(p);
                return;
            }
        };
        lp.carrier = Some(carrier.link.name.clone());
        lp.carrier_mtu = Some(carrier.link.mtu);
        lp.local_address = Some(carrier.local);

        let family = carrier.family;
        let max = carrier.link.mtu.saturating_sub(family.overhead());
        let mtu = cfg.mtu.unwrap_or(max);
        if mtu > max || mtu < MIN_MTU {
            lp.problem = Some(Problem::new(
                reason::INVALID_SPEC,
                format!(
                    "MTU {mtu} of VXLAN {} does not fit its carrier {}: at most {} MTU - {} {family} overhead = {max}, at least {MIN_MTU}",
                    d.name,
                    carrier.link.name,
                    carrier.link.mtu,
                    family.overhead()
                ),
            ));
            return;
        }

        let (master, master_problem) = self.resolve_master(d, cfg.master.as_deref(), existing);
        let remote = cfg.group.or(cfg.remote);
        let params = VxlanParams {
            vni: cfg.vni,
            port: cfg.port,
            source_ports: cfg.source_ports,
            learning: cfg.learning,
            ttl: cfg.ttl.unwrap_or(0),
            remote,
            local: carrier.local,
            carrier: carrier.link.name.clone(),
        };

        let mut zero_before: BTreeSet<IpAddr> = BTreeSet::new();
        let mut attrs;
        let recreate = existing.and_then(|l| match &l.kind {
            ObservedKind::Vxlan(v) => recreate_reason(v, &params, family),
            other => Some(format!("it is a {}, not a VXLAN", other.describe())),
        });
        let in_place = existing.and_then(|l| match &l.kind {
            ObservedKind::Vxlan(v) if recreate.is_none() => Some((l, v)),
            _ => None,
        });
        if let (Some(l), Some(why)) = (existing, &recreate)
            && !l.owned()
        {
            lp.problem = Some(Problem::new(
                reason::ADOPTION_REFUSED,
                format!(
                    "interface {} exists, not made by nno, and differs from what {} asks for in what cannot change in place ({why}): it is not adopted; make the two match or remove the interface",
                    d.name, d.owner
                ),
            ));
            return;
        }
        match in_place {
            Some((l, v)) => {
                let change = vxlan_change(v, &params, carrier.link.index, family);
                zero_before = self.observed.fdb.get(&l.index).cloned().unwrap_or_default();
                if let Some(rc) = change.remote {
                    if let Some(old) = v.remote {
                        zero_before.remove(&old);
                    }
                    if let RemoteChange::Set(new) = rc {
                        zero_before.insert(new);
                    }
                }
                if change
                    != (VxlanChange {
                        vni: cfg.vni,
                        ..VxlanChange::default()
                    })
                {
                    lp.steps.push(Step::ChangeVxlan {
                        name: d.name.clone(),
                        change,
                    });
                }
                attrs = diff_common(d, l, Some(mtu));
                attrs.master = master;
            }
            None => {
                if let Some(why) = recreate {
                    lp.steps.push(Step::Delete {
                        name: d.name.clone(),
                        why: format!("recreate: {why}"),
                    });
                }
                self.fresh.insert(d.name.clone());
                zero_before.extend(remote);
                lp.steps.push(Step::CreateVxlan {
                    name: d.name.clone(),
                    params,
                });
                attrs = SetAttrs {
                    alias: Some(marker(&d.owner)),
                    mtu: Some(mtu),
                    master: master.filter(|m| *m != MasterChange::Detach),
                    up: d.up.then_some(true),
                };
            }
        }
        if !attrs.is_empty() {
            lp.steps.push(Step::Set {
                name: d.name.clone(),
                attrs,
            });
        }

        let peers: BTreeSet<IpAddr> = cfg.peers.iter().copied().filter(|p| Some(*p) != remote).collect();
        for dst in peers.difference(&zero_before) {
            lp.steps.push(Step::AddPeer {
                name: d.name.clone(),
                dst: *dst,
            });
        }
        for dst in zero_before.difference(&peers) {
            if Some(*dst) != remote {
                lp.steps.push(Step::DelPeer {
                    name: d.name.clone(),
                    dst: *dst,
                });
            }
        }

        lp.problem = if !d.up {
            Some(held_down(d))
        } else if let Some(p) = master_problem {
            Some(p)
        } else if !carrier.link.admin_up {
            Some(Problem::new(
                reason::CARRIER_DOWN,
                format!(
                    "carrier {} of VXLAN {} is admin-down: bring it up",
                    carrier.link.name, d.name
                ),
            ))
        } else if let Some(l) = existing.filter(|l| l.admin_up && lp.steps.is_empty()) {
            oper_down(l)
        } else {
            None
        };
    }

    fn plan_unmanaged(
        &mut self,
        d: &DesiredLink,
        master: Option<&str>,
        allow_uplink: bool,
        lp: &mut LinkPlan,
    ) {
        let Some(l) = self.observed.links.get(&d.name) else {
            lp.problem = Some(Problem::new(
                reason::NOT_FOUND,
                format!(
                    "interface {} does not exist; it is unmanaged, so nno waits for it and never creates it",
                    d.name
                ),
            ));
            return;
        };
        let mut master_problem = None;
        if master.is_some() {
            let (change, problem) = self.resolve_master(d, master, Some(l));
            master_problem = problem;
            // A port's addresses stop working as the node's: enslaving the interface
            // that carries the node's own address cuts the node off (its API server
            // connection among them) until the bridge carries the address instead.
            let held: Vec<String> = self
                .observed
                .addresses
                .get(&l.index)
                .into_iter()
                .flatten()
                .filter(|a| a.global)
                .map(|a| format!("{}/{}", a.address, a.prefix_len))
                .collect();
            if let Some(MasterChange::Attach(bridge)) = &change
                && !held.is_empty()
                && !allow_uplink
            {
                lp.problem = Some(Problem::new(
                    reason::UPLINK_REFUSED,
                    format!(
                        "interface {} holds {}: enslaving it to {bridge} would take the address off the network and can cut the node off; \
                         nno refuses: move the address to the bridge first, or set unmanaged.allowUplink on {}",
                        d.name,
                        held.join(", "),
                        d.owner
                    ),
                ));
                return;
            }
            if let Some(change @ MasterChange::Attach(_)) = change {
                lp.steps.push(Step::Set {
                    name: d.name.clone(),
                    attrs: SetAttrs {
                        master: Some(change),
                        ..SetAttrs::default()
                    },
                });
            }
        }
        lp.problem = if let Some(p) = master_problem {
            Some(p)
        } else if !l.admin_up {
            Some(Problem::new(
                reason::ADMIN_DOWN,
                format!(
                    "interface {} is admin-down; it is unmanaged, so nno does not bring it up",
                    d.name
                ),
            ))
        } else {
            None
        };
    }

    /// The master change a VXLAN or unmanaged port needs, and the problem if the
    /// master cannot be used.
    fn resolve_master(
        &self,
        d: &DesiredLink,
        master: Option<&str>,
        existing: Option<&ObservedLink>,
    ) -> (Option<MasterChange>, Option<Problem>) {
        let current = existing.and_then(|l| l.master);
        let Some(m) = master else {
            return (current.map(|_| MasterChange::Detach), None);
        };
        let missing = |why: String| {
            let problem = Problem::new(reason::MASTER_MISSING, format!("master {m} of {} {why}", d.name));
            // Not enslaved to anything else meanwhile.
            (current.map(|_| MasterChange::Detach), Some(problem))
        };
        if let Some(Err(p)) = self.bridges.get(m) {
            return missing(format!("is not usable: {}", p.reason));
        }
        let desired_bridge = self.bridges.contains_key(m);
        match self.observed.links.get(m) {
            Some(b) if matches!(b.kind, ObservedKind::Bridge { .. }) => {
                if current == Some(b.index) && !self.fresh.contains(m) {
                    (None, None)
                } else {
                    (Some(MasterChange::Attach(m.to_string())), None)
                }
            }
            _ if desired_bridge => (Some(MasterChange::Attach(m.to_string())), None),
            Some(other) => missing(format!("is a {}, not a bridge", other.kind.describe())),
            None => missing("does not exist".into()),
        }
    }
}

fn held_down(d: &DesiredLink) -> Problem {
    Problem::new(
        reason::ADMIN_DOWN,
        format!("{} is held admin-down as requested by {}", d.name, d.owner),
    )
}

fn oper_down(l: &ObservedLink) -> Option<Problem> {
    match l.oper {
        OperState::Up | OperState::Unknown => None,
        _ => Some(Problem::new(
            reason::OPER_DOWN,
            format!(
                "{} is admin-up but the kernel reports it operationally down",
                l.name
            ),
        )),
    }
}

/// Marker, MTU and admin state of an existing owned interface.
fn diff_common(d: &DesiredLink, l: &ObservedLink, mtu: Option<u32>) -> SetAttrs {
    let want = marker(&d.owner);
    SetAttrs {
        alias: (l.alias.as_deref() != Some(want.as_str())).then_some(want),
        mtu: mtu.filter(|m| *m != l.mtu),
        master: None,
        up: (l.admin_up != d.up).then_some(d.up),
    }
}

/// What the kernel refuses to change in place.
fn recreate_reason(v: &ObservedVxlan, p: &VxlanParams, family: Family) -> Option<String> {
    let mut why = Vec::new();
    if v.vni != p.vni {
        why.push(format!("VNI {} -> {}", v.vni, p.vni));
    }
    if v.port != p.port {
        why.push(format!("port {} -> {}", v.port, p.port));
    }
    let range = p.source_ports.unwrap_or((0, 0));
    if v.port_range != range {
        why.push(format!(
            "source ports {}-{} -> {}-{}",
            v.port_range.0, v.port_range.1, range.0, range.1
        ));
    }
    match v.family() {
        Some(f) if f == family => {}
        Some(f) => why.push(format!("underlay {f} -> {family}")),
        None => why.push(format!("no underlay address -> {family}")),
    }
    (!why.is_empty()).then(|| format!("{} cannot change in place", why.join(", ")))
}

fn vxlan_change(v: &ObservedVxlan, p: &VxlanParams, carrier: u32, family: Family) -> VxlanChange {
    VxlanChange {
        vni: p.vni,
        learning: (v.learning != p.learning).then_some(p.learning),
        ttl: (v.ttl != p.ttl).then_some(p.ttl),
        carrier: (v.link != Some(carrier)).then(|| p.carrier.clone()),
        local: (v.local != Some(p.local)).then_some(p.local),
        remote: match (v.remote, p.remote) {
            (old, new) if old == new => None,
            (_, Some(new)) => Some(RemoteChange::Set(new)),
            (Some(_), None) => Some(RemoteChange::Clear(family)),
            (None, None) => None,
        },
    }
}

/// The carrier of a VXLAN as found on the node.
#[derive(Debug)]
struct ResolvedCarrier<'a> {
    link: &'a ObservedLink,
    local: IpAddr,
    family: Family,
}

/// The underlay family: from the group, remote, peers, or carrier address; IPv4
/// when nothing says.
pub fn underlay_family(cfg: &VxlanConfig) -> Family {
    let carrier_ip = match &cfg.carrier {
        Carrier::Named(_) => None,
        Carrier::RouteTo(ip) | Carrier::HoldingAddress(ip) => Some(*ip),
    };
    cfg.group
        .or(cfg.remote)
        .or(cfg.peers.first().copied())
        .or(carrier_ip)
        .map(|ip| Family::of(&ip))
        .unwrap_or(Family::V4)
}

fn resolve_carrier<'a>(
    name: &str,
    cfg: &VxlanConfig,
    obs: &'a Observed,
) -> Result<ResolvedCarrier<'a>, Problem> {
    let family = underlay_family(cfg);
    let missing = |msg: String| Problem::new(reason::CARRIER_MISSING, msg);
    let (link, preferred) = match &cfg.carrier {
        Carrier::Named(c) => {
            let link = obs.links.get(c).ok_or_else(|| {
                missing(format!(
                    "carrier interface {c} of VXLAN {name} does not exist; the VXLAN is created when it appears"
                ))
            })?;
            (link, None)
        }
        Carrier::RouteTo(ip) => {
            let hit = obs.routes.get(ip).copied().flatten().ok_or_else(|| {
                missing(format!(
                    "no route to {ip}, so VXLAN {name} has no carrier; the VXLAN is created when a route appears"
                ))
            })?;
            let link = obs.by_index(hit.oif).ok_or_else(|| {
                missing(format!(
                    "the route to {ip} leaves through interface index {}, which is gone",
                    hit.oif
                ))
            })?;
            (link, hit.prefsrc.filter(|s| Family::of(s) == family))
        }
        Carrier::HoldingAddress(ip) => {
            let link = obs.holder_of(ip).ok_or_else(|| {
                missing(format!(
                    "no interface holds {ip}, so VXLAN {name} has no carrier; the VXLAN is created when the address appears"
                ))
            })?;
            (link, Some(*ip))
        }
    };
    if link.name == name {
        return Err(missing(format!(
            "the carrier of VXLAN {name} resolves to {name} itself; route the underlay over another interface"
        )));
    }
    let local = preferred
        .or_else(|| obs.address_of(link.index, family))
        .ok_or_else(|| {
            Problem::new(
                reason::CARRIER_ADDRESS_MISSING,
                format!(
                    "carrier {} of VXLAN {name} has no {family} address to use as VTEP address; add one",
                    link.name
                ),
            )
        })?;
    Ok(ResolvedCarrier { link, local, family })
}

/// Checks what the kernel would refuse or misread, before any write.
pub fn validate(d: &DesiredLink) -> Result<(), String> {
    let n = &d.name;
    if crate::linux::check_interface_name(n).is_err() {
        return Err(format!(
            "interface name {n:?} is invalid: 1 to {} bytes, no '/', ':' or whitespace, not '.' or '..'",
            crate::linux::MAX_INTERFACE_NAME
        ));
    }
    let mtu_ok = |mtu: Option<u32>| match mtu {
        Some(m) if !(MIN_MTU..=MAX_MTU).contains(&m) => {
            Err(format!("MTU {m} of {n} is out of range {MIN_MTU}..={MAX_MTU}"))
        }
        _ => Ok(()),
    };
    match &d.kind {
        DesiredKind::Bridge { mtu } => mtu_ok(*mtu),
        DesiredKind::Unmanaged { master, .. } => match master {
            Some(m) if m == n => Err(format!("{n} cannot be its own master")),
            _ => Ok(()),
        },
        DesiredKind::Vxlan(cfg) => {
            mtu_ok(cfg.mtu)?;
            validate_vxlan(n, cfg)
        }
    }
}

fn validate_vxlan(n: &str, cfg: &VxlanConfig) -> Result<(), String> {
    if cfg.vni == 0 || cfg.vni > MAX_VNI {
        return Err(format!("VNI {} of {n} is out of range 1..={MAX_VNI}", cfg.vni));
    }
    if cfg.port == 0 {
        return Err(format!("destination port of {n} must not be 0"));
    }
    if let Some((lo, hi)) = cfg.source_ports
        && (lo == 0 || lo > hi)
    {
        return Err(format!("source port range {lo}-{hi} of {n} is invalid"));
    }
    if cfg.group.is_some() && cfg.remote.is_some() {
        return Err(format!(
            "{n}: set a multicast group or a unicast remote, not both"
        ));
    }
    if let Some(g) = cfg.group
        && !g.is_multicast()
    {
        return Err(format!("group {g} of {n} is not a multicast address"));
    }
    for ip in cfg.remote.iter().chain(&cfg.peers) {
        if ip.is_multicast() || ip.is_unspecified() {
            return Err(format!("remote {ip} of {n} is not a unicast address"));
        }
    }
    let family = underlay_family(cfg);
    let carrier_ip = match &cfg.carrier {
        Carrier::Named(c) if c == n => return Err(format!("{n} cannot be its own carrier")),
        Carrier::Named(_) => None,
        Carrier::RouteTo(ip) | Carrier::HoldingAddress(ip) => Some(ip),
    };
    for ip in cfg
        .group
        .iter()
        .chain(&cfg.remote)
        .chain(&cfg.peers)
        .chain(carrier_ip)
    {
        if Family::of(ip) != family {
            return Err(format!(
                "{n} mixes address families: {ip} is not {family} like the rest of its underlay"
            ));
        }
    }
    if cfg.master.as_deref() == Some(n) {
        return Err(format!("{n} cannot be its own master"));
    }
    Ok(())
}

/// The per-link states after a pass: `plan` is the plan of the final observation
/// (what would still be left to do), `errors` what failed in this pass, by name.
pub fn assess(
    desired: &[DesiredLink],
    plan: &Plan,
    observed: &Observed,
    errors: &HashMap<String, Problem>,
) -> Vec<LinkState> {
    desired
        .iter()
        .zip(&plan.links)
        .map(|(d, lp)| {
            let (ready, reason, message) = if let Some(p) = &lp.problem
                && p.reason == reason::INVALID_SPEC
            {
                (false, p.reason.to_string(), p.message.clone())
            } else if let Some(e) = errors.get(&d.name) {
                (false, e.reason.to_string(), e.message.clone())
            } else if let Some(p) = &lp.problem {
                (false, p.reason.to_string(), p.message.clone())
            } else if let Some(step) = lp.steps.first() {
                (
                    false,
                    reason::PENDING.to_string(),
                    format!("{} still needs: {step}", d.name),
                )
            } else {
                (true, reason::READY.to_string(), format!("{} is ready", d.name))
            };
            LinkState {
                name: d.name.clone(),
                ready,
                reason,
                message,
                mtu: observed.links.get(&d.name).map(|l| l.mtu),
                carrier: lp.carrier.clone(),
                carrier_mtu: lp.carrier_mtu,
                local_address: lp.local_address,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::types::{ObservedAddress, RouteHit};

    const OWNER: &str = "Network/gw";

    type Drift = Box<dyn Fn(&mut ObservedLink)>;
    type Edit = Box<dyn Fn(&mut VxlanConfig)>;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn bridge(name: &str, mtu: Option<u32>) -> DesiredLink {
        DesiredLink {
            name: name.into(),
            owner: OWNER.into(),
            kind: DesiredKind::Bridge { mtu },
            up: true,
            adopt: false,
        }
    }

    fn cfg() -> VxlanConfig {
        VxlanConfig {
            vni: 100,
            port: 4789,
            source_ports: None,
            learning: true,
            ttl: None,
            group: None,
            remote: None,
            peers: vec![],
            carrier: Carrier::Named("eth1".into()),
            mtu: None,
            master: None,
        }
    }

    fn vxlan(name: &str, f: impl FnOnce(&mut VxlanConfig)) -> DesiredLink {
        let mut c = cfg();
        f(&mut c);
        DesiredLink {
            name: name.into(),
            owner: OWNER.into(),
            kind: DesiredKind::Vxlan(c),
            up: true,
            adopt: false,
        }
    }

    fn unmanaged(name: &str, master: Option<&str>) -> DesiredLink {
        DesiredLink {
            name: name.into(),
            owner: OWNER.into(),
            // The fixture's eth1 holds the node's address: allowed here; the
            // refusal has its own test.
            kind: DesiredKind::Unmanaged {
                master: master.map(String::from),
                allow_uplink: true,
            },
            up: true,
            adopt: false,
        }
    }

    fn olink(index: u32, name: &str, kind: ObservedKind) -> ObservedLink {
        ObservedLink {
            index,
            name: name.into(),
            kind,
            alias: None,
            mtu: 1500,
            admin_up: true,
            oper: OperState::Up,
            master: None,
        }
    }

    fn owned(mut l: ObservedLink) -> ObservedLink {
        l.alias = Some(marker(OWNER));
        l
    }

    fn ovx(c: impl FnOnce(&mut ObservedVxlan)) -> ObservedKind {
        let mut v = ObservedVxlan {
            vni: 100,
            port: 4789,
            port_range: (0, 0),
            learning: true,
            ttl: 0,
            remote: None,
            local: Some(ip("198.18.0.1")),
            link: Some(2),
        };
        c(&mut v);
        ObservedKind::Vxlan(v)
    }

    /// A node with carrier eth1 (index 2, 198.18.0.1/24 and 2001:db8::1/64).
    fn node(extra: Vec<ObservedLink>) -> Observed {
        let mut o = Observed::default();
        for l in std::iter::once(olink(2, "eth1", ObservedKind::Other("veth".into()))).chain(extra) {
            o.links.insert(l.name.clone(), l);
        }
        o.addresses.insert(
            2,
            vec![
                ObservedAddress {
                    address: ip("fe80::1"),
                    prefix_len: 64,
                    global: false,
                },
                ObservedAddress {
                    address: ip("198.18.0.1"),
                    prefix_len: 24,
                    global: true,
                },
                ObservedAddress {
                    address: ip("2001:db8::1"),
                    prefix_len: 64,
                    global: true,
                },
            ],
        );
        o
    }

    /// The vx0 the tests desire by default, already there and matching.
    fn vx0_ok() -> ObservedLink {
        let mut l = owned(olink(9, "vx0", ovx(|_| {})));
        l.mtu = 1450;
        l.oper = OperState::Unknown;
        l
    }

    fn only(p: &Plan) -> &LinkPlan {
        assert_eq!(p.links.len(), 1);
        &p.links[0]
    }

    fn set(name: &str, attrs: SetAttrs) -> Step {
        Step::Set {
            name: name.into(),
            attrs,
        }
    }

    fn reason_of(lp: &LinkPlan) -> Option<&'static str> {
        lp.problem.as_ref().map(|p| p.reason)
    }

    #[test]
    fn nothing_desired_nothing_there_nothing_to_do() {
        let p = plan(&[], &Observed::default());
        assert!(p.is_empty());
    }

    #[test]
    fn bridge_creation_sets_marker_mtu_and_up_after_creating() {
        let p = plan(&[bridge("br0", Some(1450))], &node(vec![]));
        assert_eq!(
            only(&p).steps,
            vec![
                Step::CreateBridge { name: "br0".into() },
                set(
                    "br0",
                    SetAttrs {
                        alias: Some("nno.dev owner=Network/gw".into()),
                        mtu: Some(1450),
                        master: None,
                        up: Some(true)
                    }
                )
            ]
        );
        assert_eq!(only(&p).problem, None);
    }

    #[test]
    fn bridge_without_mtu_leaves_mtu_alone() {
        let p = plan(&[bridge("br0", None)], &node(vec![]));
        let Step::Set { attrs, .. } = &only(&p).steps[1] else {
            panic!("{p:?}")
        };
        assert_eq!(attrs.mtu, None);
        let mut l = owned(olink(5, "br0", ObservedKind::Bridge { stp: false }));
        l.mtu = 9000;
        assert!(plan(&[bridge("br0", None)], &node(vec![l])).is_empty());
    }

    #[test]
    fn matching_bridge_is_a_no_op() {
        let l = owned(olink(5, "br0", ObservedKind::Bridge { stp: false }));
        let p = plan(&[bridge("br0", Some(1500))], &node(vec![l]));
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(only(&p).problem, None);
    }

    #[test]
    fn bridge_drift_is_one_set_each() {
        let cases: Vec<(&str, Drift, SetAttrs)> = vec![
            (
                "mtu",
                Box::new(|l| l.mtu = 1400),
                SetAttrs {
                    mtu: Some(1500),
                    ..SetAttrs::default()
                },
            ),
            (
                "down",
                Box::new(|l| l.admin_up = false),
                SetAttrs {
                    up: Some(true),
                    ..SetAttrs::default()
                },
            ),
        ];
        for (what, drift, want) in cases {
            let mut l = owned(olink(5, "br0", ObservedKind::Bridge { stp: false }));
            drift(&mut l);
            let p = plan(&[bridge("br0", Some(1500))], &node(vec![l]));
            assert_eq!(only(&p).steps, vec![set("br0", want)], "{what}");
        }
    }

    #[test]
    fn a_bridge_made_for_another_owner_is_made_again() {
        let mut l = owned(olink(5, "br0", ObservedKind::Bridge { stp: false }));
        l.alias = Some(marker("Link/br0"));
        let p = plan(&[bridge("br0", Some(1500))], &node(vec![l]));
        let steps = &only(&p).steps;
        assert!(
            matches!(&steps[0], Step::Delete { why, .. } if why.contains("made for Link/br0")),
            "{steps:?}"
        );
        assert_eq!(steps[1], Step::CreateBridge { name: "br0".into() });
    }

    #[test]
    fn stp_is_turned_off() {
        let l = owned(olink(5, "br0", ObservedKind::Bridge { stp: true }));
        let p = plan(&[bridge("br0", None)], &node(vec![l]));
        assert_eq!(only(&p).steps, vec![Step::StpOff { name: "br0".into() }]);
    }

    #[test]
    fn held_down_bridge_is_brought_down_and_reported() {
        let mut d = bridge("br0", None);
        d.up = false;
        let l = owned(olink(5, "br0", ObservedKind::Bridge { stp: false }));
        let p = plan(&[d.clone()], &node(vec![l]));
        assert_eq!(
            only(&p).steps,
            vec![set(
                "br0",
                SetAttrs {
                    up: Some(false),
                    ..SetAttrs::default()
                }
            )]
        );
        assert_eq!(reason_of(only(&p)), Some(reason::ADMIN_DOWN));
        // Created down: no `up` in the Set.
        let p = plan(&[d], &node(vec![]));
        let Step::Set { attrs, .. } = &only(&p).steps[1] else {
            panic!()
        };
        assert_eq!(attrs.up, None);
    }

    #[test]
    fn foreign_interfaces_are_never_touched() {
        for alias in [None, Some("something else".to_string())] {
            for kind in [
                ObservedKind::Bridge { stp: true },
                ObservedKind::Other("veth".into()),
                ovx(|v| v.vni = 5),
            ] {
                let mut l = olink(5, "br0", kind.clone());
                l.alias = alias.clone();
                l.admin_up = false;
                let p = plan(&[bridge("br0", Some(1400))], &node(vec![l.clone()]));
                assert!(p.is_empty(), "{kind:?}");
                let lp = only(&p);
                assert_eq!(reason_of(lp), Some(reason::NAME_CONFLICT));
                assert!(lp.problem.as_ref().unwrap().message.contains("br0"));
                // Also not deleted when undesired.
                assert!(plan(&[], &node(vec![l])).is_empty());
            }
        }
    }

    #[test]
    fn owned_interface_of_the_wrong_kind_is_recreated() {
        let l = owned(olink(5, "br0", ovx(|_| {})));
        let p = plan(&[bridge("br0", None)], &node(vec![l]));
        let steps = &only(&p).steps;
        assert!(matches!(&steps[0], Step::Delete { name, why } if name == "br0" && why.contains("vxlan")));
        assert_eq!(steps[1], Step::CreateBridge { name: "br0".into() });
    }

    #[test]
    fn only_owned_bridges_and_vxlans_are_deleted_when_undesired() {
        let p = plan(
            &[],
            &node(vec![
                owned(olink(5, "br-old", ObservedKind::Bridge { stp: false })),
                owned(olink(6, "vx-old", ovx(|_| {}))),
                owned(olink(7, "veth-marked", ObservedKind::Other("veth".into()))),
                olink(8, "br-foreign", ObservedKind::Bridge { stp: false }),
            ]),
        );
        let deleted: Vec<&str> = p.deletions.iter().map(|s| s.name()).collect();
        assert_eq!(deleted, vec!["br-old", "vx-old"]);
    }

    #[test]
    fn desired_names_are_protected_even_when_invalid() {
        let l = owned(olink(5, "br0", ObservedKind::Bridge { stp: false }));
        let p = plan(&[bridge("br0", Some(10))], &node(vec![l]));
        assert!(p.is_empty());
        assert_eq!(reason_of(only(&p)), Some(reason::INVALID_SPEC));
    }

    #[test]
    fn vxlan_creation_has_everything_and_peers_follow() {
        let d = vxlan("vx0", |c| {
            c.peers = vec![ip("198.18.0.3"), ip("198.18.0.2")];
            c.source_ports = Some((1000, 2000));
            c.ttl = Some(8);
            c.learning = false;
        });
        let p = plan(&[d], &node(vec![]));
        let lp = only(&p);
        assert_eq!(lp.problem, None);
        assert_eq!(lp.carrier.as_deref(), Some("eth1"));
        assert_eq!(lp.carrier_mtu, Some(1500));
        assert_eq!(lp.local_address, Some(ip("198.18.0.1")));
        assert_eq!(
            lp.steps,
            vec![
                Step::CreateVxlan {
                    name: "vx0".into(),
                    params: VxlanParams {
                        vni: 100,
                        port: 4789,
                        source_ports: Some((1000, 2000)),
                        learning: false,
                        ttl: 8,
                        remote: None,
                        local: ip("198.18.0.1"),
                        carrier: "eth1".into(),
                    }
                },
                set(
                    "vx0",
                    SetAttrs {
                        alias: Some(marker(OWNER)),
                        mtu: Some(1450),
                        master: None,
                        up: Some(true)
                    }
                ),
                Step::AddPeer {
                    name: "vx0".into(),
                    dst: ip("198.18.0.2")
                },
                Step::AddPeer {
                    name: "vx0".into(),
                    dst: ip("198.18.0.3")
                },
            ]
        );
    }

    #[test]
    fn vxlan_mtu_follows_the_underlay_family() {
        let cases = [
            (None, 1500, 1450),
            (Some(ip("2001:db8::2")), 1500, 1430),
            (None, 9000, 8950),
            (Some(ip("2001:db8::2")), 9000, 8930),
        ];
        for (remote, carrier_mtu, want) in cases {
            let mut o = node(vec![]);
            o.links.get_mut("eth1").unwrap().mtu = carrier_mtu;
            let p = plan(&[vxlan("vx0", |c| c.remote = remote)], &o);
            let Step::Set { attrs, .. } = &only(&p).steps[1] else {
                panic!("{p:?}")
            };
            assert_eq!(attrs.mtu, Some(want), "{remote:?} over {carrier_mtu}");
        }
    }

    #[test]
    fn ipv6_underlay_uses_the_carriers_global_ipv6_address() {
        let p = plan(
            &[vxlan("vx0", |c| c.remote = Some(ip("2001:db8::2")))],
            &node(vec![]),
        );
        assert_eq!(only(&p).local_address, Some(ip("2001:db8::1")));
    }

    #[test]
    fn vxlan_mtu_above_what_the_carrier_allows_is_refused() {
        let p = plan(&[vxlan("vx0", |c| c.mtu = Some(1451))], &node(vec![]));
        let lp = only(&p);
        assert!(lp.steps.is_empty());
        assert_eq!(reason_of(lp), Some(reason::INVALID_SPEC));
        assert!(lp.problem.as_ref().unwrap().message.contains("eth1"));
        let p = plan(&[vxlan("vx0", |c| c.mtu = Some(1400))], &node(vec![]));
        assert_eq!(reason_of(only(&p)), None);
    }

    #[test]
    fn missing_carrier_names_the_carrier_and_plans_nothing() {
        let d = vxlan("vx0", |c| c.carrier = Carrier::Named("eth9".into()));
        let p = plan(&[d], &node(vec![]));
        let lp = only(&p);
        assert!(lp.steps.is_empty());
        assert_eq!(reason_of(lp), Some(reason::CARRIER_MISSING));
        assert!(lp.problem.as_ref().unwrap().message.contains("eth9"));
    }

    #[test]
    fn carrier_by_route_uses_the_preferred_source() {
        let d = vxlan("vx0", |c| {
            c.carrier = Carrier::RouteTo(ip("198.18.1.7"));
            c.peers = vec![ip("198.18.1.7")];
        });
        let mut o = node(vec![]);
        o.routes.insert(
            ip("198.18.1.7"),
            Some(RouteHit {
                oif: 2,
                prefsrc: Some(ip("198.18.0.1")),
            }),
        );
        let p = plan(std::slice::from_ref(&d), &o);
        assert_eq!(only(&p).carrier.as_deref(), Some("eth1"));
        assert_eq!(only(&p).local_address, Some(ip("198.18.0.1")));

        o.routes.insert(ip("198.18.1.7"), None);
        let p = plan(&[d], &o);
        assert_eq!(reason_of(only(&p)), Some(reason::CARRIER_MISSING));
        assert!(only(&p).problem.as_ref().unwrap().message.contains("198.18.1.7"));
    }

    #[test]
    fn carrier_by_address_is_the_holder() {
        let d = vxlan("vx0", |c| c.carrier = Carrier::HoldingAddress(ip("2001:db8::1")));
        let p = plan(std::slice::from_ref(&d), &node(vec![]));
        assert_eq!(only(&p).carrier.as_deref(), Some("eth1"));
        assert_eq!(only(&p).local_address, Some(ip("2001:db8::1")));
        let d = vxlan("vx0", |c| c.carrier = Carrier::HoldingAddress(ip("2001:db8::99")));
        assert_eq!(
            reason_of(only(&plan(&[d], &node(vec![])))),
            Some(reason::CARRIER_MISSING)
        );
    }

    #[test]
    fn carrier_without_an_address_of_the_family() {
        let mut o = node(vec![]);
        o.addresses.clear();
        let p = plan(&[vxlan("vx0", |_| {})], &o);
        assert_eq!(reason_of(only(&p)), Some(reason::CARRIER_ADDRESS_MISSING));
        assert!(only(&p).steps.is_empty());
    }

    #[test]
    fn carrier_down_is_reported_but_the_vxlan_is_still_built() {
        let mut o = node(vec![]);
        o.links.get_mut("eth1").unwrap().admin_up = false;
        let p = plan(&[vxlan("vx0", |_| {})], &o);
        assert_eq!(reason_of(only(&p)), Some(reason::CARRIER_DOWN));
        assert!(!only(&p).steps.is_empty());
    }

    #[test]
    fn matching_vxlan_with_operstate_unknown_is_a_no_op_and_fine() {
        let p = plan(&[vxlan("vx0", |_| {})], &node(vec![vx0_ok()]));
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(only(&p).problem, None);
        let mut l = vx0_ok();
        l.oper = OperState::Down;
        let p = plan(&[vxlan("vx0", |_| {})], &node(vec![l]));
        assert_eq!(reason_of(only(&p)), Some(reason::OPER_DOWN));
    }

    #[test]
    fn what_the_kernel_cannot_change_in_place_is_recreated() {
        let cases: Vec<(&str, Edit)> = vec![
            ("VNI", Box::new(|c| c.vni = 101)),
            ("port", Box::new(|c| c.port = 8472)),
            ("source ports", Box::new(|c| c.source_ports = Some((1000, 2000)))),
            ("underlay", Box::new(|c| c.remote = Some(ip("2001:db8::2")))),
        ];
        for (what, change) in cases {
            let p = plan(&[vxlan("vx0", |c| change(c))], &node(vec![vx0_ok()]));
            let steps = &only(&p).steps;
            assert!(
                matches!(&steps[0], Step::Delete { why, .. } if why.contains(what)),
                "{what}: {steps:?}"
            );
            assert!(matches!(&steps[1], Step::CreateVxlan { .. }), "{what}");
        }
    }

    #[test]
    fn the_rest_changes_in_place() {
        type Case = (Edit, VxlanChange);
        let change = |f: fn(&mut VxlanChange)| {
            let mut c = VxlanChange {
                vni: 100,
                ..VxlanChange::default()
            };
            f(&mut c);
            c
        };
        let cases: Vec<Case> = vec![
            (
                Box::new(|c| c.learning = false),
                change(|c| c.learning = Some(false)),
            ),
            (Box::new(|c| c.ttl = Some(16)), change(|c| c.ttl = Some(16))),
            (
                Box::new(|c| c.group = Some(ip("239.1.1.1"))),
                change(|c| c.remote = Some(RemoteChange::Set(ip("239.1.1.1")))),
            ),
        ];
        for (f, want) in cases {
            let p = plan(&[vxlan("vx0", |c| f(c))], &node(vec![vx0_ok()]));
            assert_eq!(
                only(&p).steps,
                vec![Step::ChangeVxlan {
                    name: "vx0".into(),
                    change: want
                }]
            );
        }
    }

    #[test]
    fn carrier_and_local_change_in_place() {
        let mut o = node(vec![vx0_ok()]);
        let mut eth2 = olink(3, "eth2", ObservedKind::Other("veth".into()));
        eth2.mtu = 1500;
        o.links.insert("eth2".into(), eth2);
        o.addresses.insert(
            3,
            vec![ObservedAddress {
                address: ip("198.18.1.1"),
                prefix_len: 24,
                global: true,
            }],
        );
        let p = plan(&[vxlan("vx0", |c| c.carrier = Carrier::Named("eth2".into()))], &o);
        assert_eq!(
            only(&p).steps,
            vec![Step::ChangeVxlan {
                name: "vx0".into(),
                change: VxlanChange {
                    vni: 100,
                    carrier: Some("eth2".into()),
                    local: Some(ip("198.18.1.1")),
                    ..VxlanChange::default()
                }
            }]
        );
    }

    #[test]
    fn removing_the_remote_clears_it_in_its_family() {
        let mut l = vx0_ok();
        l.kind = ovx(|v| v.remote = Some(ip("198.18.0.2")));
        let mut o = node(vec![l]);
        o.fdb.insert(9, [ip("198.18.0.2")].into());
        let p = plan(&[vxlan("vx0", |c| c.peers = vec![ip("198.18.0.2")])], &o);
        // The default entry of the old remote goes with it, so the peer is re-added.
        assert_eq!(
            only(&p).steps,
            vec![
                Step::ChangeVxlan {
                    name: "vx0".into(),
                    change: VxlanChange {
                        vni: 100,
                        remote: Some(RemoteChange::Clear(Family::V4)),
                        ..VxlanChange::default()
                    }
                },
                Step::AddPeer {
                    name: "vx0".into(),
                    dst: ip("198.18.0.2")
                }
            ]
        );
    }

    #[test]
    fn peers_are_diffed_against_the_all_zero_entries() {
        let mut o = node(vec![vx0_ok()]);
        o.fdb.insert(9, [ip("198.18.0.2"), ip("198.18.0.3")].into());
        let d = vxlan("vx0", |c| c.peers = vec![ip("198.18.0.3"), ip("198.18.0.4")]);
        let p = plan(&[d], &o);
        assert_eq!(
            only(&p).steps,
            vec![
                Step::AddPeer {
                    name: "vx0".into(),
                    dst: ip("198.18.0.4")
                },
                Step::DelPeer {
                    name: "vx0".into(),
                    dst: ip("198.18.0.2")
                },
            ]
        );
    }

    #[test]
    fn the_remotes_own_default_entry_is_not_a_stray_peer() {
        let mut l = vx0_ok();
        l.kind = ovx(|v| v.remote = Some(ip("239.1.1.1")));
        let mut o = node(vec![l]);
        o.fdb.insert(9, [ip("239.1.1.1"), ip("198.18.0.3")].into());
        let d = vxlan("vx0", |c| {
            c.group = Some(ip("239.1.1.1"));
            c.peers = vec![ip("198.18.0.3")];
        });
        assert!(plan(&[d], &o).is_empty());
    }

    #[test]
    fn master_is_a_bridge_of_the_same_plan() {
        let desired = [
            vxlan("vx0", |c| c.master = Some("br0".into())),
            bridge("br0", Some(1450)),
        ];
        let p = plan(&desired, &node(vec![]));
        assert_eq!(p.links[0].problem, None);
        let Step::Set { attrs, .. } = &p.links[0].steps[1] else {
            panic!()
        };
        assert_eq!(attrs.master, Some(MasterChange::Attach("br0".into())));
        let order: Vec<String> = p.steps().iter().map(|s| s.to_string()).collect();
        let pos = |prefix: &str| order.iter().position(|s| s.starts_with(prefix)).unwrap();
        assert!(pos("create bridge br0") < pos("create vxlan vx0"), "{order:?}");
        assert!(pos("set br0") < pos("set vx0"), "{order:?}");
    }

    #[test]
    fn enslaved_already_is_a_no_op_and_a_wrong_master_is_fixed() {
        let br = owned(olink(5, "br0", ObservedKind::Bridge { stp: false }));
        let mut vx = vx0_ok();
        vx.master = Some(5);
        let desired = [
            bridge("br0", None),
            vxlan("vx0", |c| c.master = Some("br0".into())),
        ];
        assert!(plan(&desired, &node(vec![br.clone(), vx.clone()])).is_empty());

        vx.master = Some(77);
        let p = plan(&desired, &node(vec![br.clone(), vx.clone()]));
        assert_eq!(
            p.links[1].steps,
            vec![set(
                "vx0",
                SetAttrs {
                    master: Some(MasterChange::Attach("br0".into())),
                    ..SetAttrs::default()
                }
            )]
        );

        let p = plan(&[vxlan("vx0", |_| {})], &node(vec![vx]));
        assert_eq!(
            only(&p).steps,
            vec![set(
                "vx0",
                SetAttrs {
                    master: Some(MasterChange::Detach),
                    ..SetAttrs::default()
                }
            )]
        );
    }

    #[test]
    fn missing_or_unusable_master() {
        let p = plan(&[vxlan("vx0", |c| c.master = Some("br9".into()))], &node(vec![]));
        let lp = only(&p);
        assert_eq!(reason_of(lp), Some(reason::MASTER_MISSING));
        assert!(matches!(lp.steps[0], Step::CreateVxlan { .. }), "still built");

        let foreign = olink(5, "br0", ObservedKind::Bridge { stp: false });
        let desired = [
            bridge("br0", None),
            vxlan("vx0", |c| c.master = Some("br0".into())),
        ];
        let p = plan(&desired, &node(vec![foreign]));
        assert_eq!(reason_of(&p.links[0]), Some(reason::NAME_CONFLICT));
        assert_eq!(reason_of(&p.links[1]), Some(reason::MASTER_MISSING));

        let not_bridge = olink(5, "br0", ObservedKind::Other("veth".into()));
        let p = plan(
            &[vxlan("vx0", |c| c.master = Some("br0".into()))],
            &node(vec![not_bridge]),
        );
        assert!(
            only(&p)
                .problem
                .as_ref()
                .unwrap()
                .message
                .contains("not a bridge")
        );
    }

    #[test]
    fn an_interface_with_a_global_address_is_not_enslaved_unless_allowed() {
        let mut port = unmanaged("eth1", Some("br0"));
        port.kind = DesiredKind::Unmanaged {
            master: Some("br0".into()),
            allow_uplink: false,
        };
        let p = plan(&[bridge("br0", None), port], &node(vec![]));
        let lp = p.links.iter().find(|l| l.name == "eth1").unwrap();
        assert!(lp.steps.is_empty(), "{:?}", lp.steps);
        assert_eq!(lp.problem.as_ref().unwrap().reason, reason::UPLINK_REFUSED);
    }

    #[test]
    fn unmanaged_is_only_ever_enslaved() {
        let p = plan(&[unmanaged("eth9", None)], &node(vec![]));
        assert_eq!(reason_of(only(&p)), Some(reason::NOT_FOUND));
        assert!(p.is_empty());

        let br = owned(olink(5, "br0", ObservedKind::Bridge { stp: false }));
        let mut eth1 = olink(2, "eth1", ObservedKind::Other("veth".into()));
        eth1.admin_up = false;
        eth1.mtu = 9000;
        let mut o = node(vec![br]);
        o.links.insert("eth1".into(), eth1);
        let p = plan(&[unmanaged("eth1", Some("br0"))], &o);
        assert_eq!(
            only(&p).steps,
            vec![set(
                "eth1",
                SetAttrs {
                    master: Some(MasterChange::Attach("br0".into())),
                    ..SetAttrs::default()
                }
            )]
        );
        assert_eq!(reason_of(only(&p)), Some(reason::ADMIN_DOWN));

        let p = plan(&[unmanaged("eth1", None)], &node(vec![]));
        assert!(p.is_empty());
        assert_eq!(only(&p).problem, None);
    }

    #[test]
    fn unmanaged_ports_come_after_their_bridge() {
        let desired = [unmanaged("eth1", Some("br0")), bridge("br0", None)];
        let p = plan(&desired, &node(vec![]));
        let order: Vec<String> = p.steps().iter().map(|s| s.name().to_string()).collect();
        assert_eq!(order, vec!["br0", "br0", "eth1"]);
    }

    #[test]
    fn validation_table() {
        let bad: Vec<(DesiredLink, &str)> = vec![
            (bridge("", None), "invalid"),
            (bridge("a-very-long-name0", None), "invalid"),
            (bridge("br/0", None), "invalid"),
            (bridge("br 0", None), "invalid"),
            (bridge("br0", Some(67)), "MTU"),
            (vxlan("vx0", |c| c.vni = 0), "VNI"),
            (vxlan("vx0", |c| c.vni = 1 << 24), "VNI"),
            (vxlan("vx0", |c| c.port = 0), "port"),
            (
                vxlan("vx0", |c| c.source_ports = Some((2000, 1000))),
                "source port",
            ),
            (vxlan("vx0", |c| c.group = Some(ip("198.18.0.2"))), "multicast"),
            (vxlan("vx0", |c| c.remote = Some(ip("239.1.1.1"))), "unicast"),
            (vxlan("vx0", |c| c.peers = vec![ip("0.0.0.0")]), "unicast"),
            (
                vxlan("vx0", |c| {
                    c.group = Some(ip("239.1.1.1"));
                    c.remote = Some(ip("198.18.0.2"));
                }),
                "not both",
            ),
            (
                vxlan("vx0", |c| c.peers = vec![ip("198.18.0.2"), ip("2001:db8::2")]),
                "families",
            ),
            (
                vxlan("vx0", |c| {
                    c.remote = Some(ip("2001:db8::2"));
                    c.carrier = Carrier::RouteTo(ip("198.18.0.2"));
                }),
                "families",
            ),
            (
                vxlan("vx0", |c| c.carrier = Carrier::Named("vx0".into())),
                "own carrier",
            ),
            (vxlan("vx0", |c| c.master = Some("vx0".into())), "own master"),
            (unmanaged("eth1", Some("eth1")), "own master"),
        ];
        for (d, needle) in bad {
            let err = validate(&d).expect_err(&format!("{d:?} should be invalid"));
            assert!(err.contains(needle), "{err} lacks {needle}");
        }
        assert_eq!(validate(&bridge("br-gw.100", Some(9000))), Ok(()));
        assert_eq!(validate(&vxlan("vx0", |c| c.group = Some(ip("ff05::1")))), Ok(()));
    }

    #[test]
    fn a_name_desired_twice_applies_the_first_only() {
        let p = plan(&[bridge("br0", None), bridge("br0", Some(1400))], &node(vec![]));
        assert_eq!(p.links[0].problem, None);
        assert_eq!(reason_of(&p.links[1]), Some(reason::INVALID_SPEC));
        assert!(p.links[1].steps.is_empty());
    }

    #[test]
    fn one_bad_link_does_not_block_the_others() {
        let desired = [
            vxlan("vx0", |c| c.carrier = Carrier::Named("eth9".into())),
            bridge("br0", None),
        ];
        let foreign = olink(5, "br1", ObservedKind::Bridge { stp: false });
        let mut more = desired.to_vec();
        more.push(bridge("br1", None));
        let p = plan(&more, &node(vec![foreign]));
        assert_eq!(reason_of(&p.links[0]), Some(reason::CARRIER_MISSING));
        assert_eq!(p.links[1].problem, None);
        assert_eq!(p.links[1].steps.len(), 2);
        assert_eq!(reason_of(&p.links[2]), Some(reason::NAME_CONFLICT));
    }

    #[test]
    fn assess_reports_ready_pending_problems_and_errors() {
        let desired = [
            bridge("br0", None),
            bridge("br1", None),
            bridge("br2", None),
            bridge("br3", None),
        ];
        let o = node(vec![
            owned(olink(5, "br0", ObservedKind::Bridge { stp: false })),
            olink(6, "br2", ObservedKind::Bridge { stp: false }),
        ]);
        let p = plan(&desired, &o);
        let errors: HashMap<String, Problem> = [(
            "br3".to_string(),
            Problem::new(reason::NETLINK_ERROR, "cannot create bridge br3: boom"),
        )]
        .into();
        let s = assess(&desired, &p, &o, &errors);
        assert!(s[0].ready);
        assert_eq!(s[0].reason, reason::READY);
        assert_eq!(s[0].mtu, Some(1500));
        assert_eq!((s[1].ready, s[1].reason.as_str()), (false, reason::PENDING));
        assert!(s[1].message.contains("create bridge br1"), "{}", s[1].message);
        assert_eq!(s[2].reason, reason::NAME_CONFLICT);
        assert_eq!(s[3].reason, reason::NETLINK_ERROR);
        assert!(s[3].message.contains("br3"));
    }
}
