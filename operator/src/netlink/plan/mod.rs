//! The pure heart of the engine: desired links + an [`Observed`] snapshot -> the
//! minimal list of [`Step`]s that makes the node match, and for each desired link
//! what stands in its way. No I/O: every rule about the kernel that matters for
//! correctness lives here, where it is unit-tested.
//!
//! Split by concern: this module drives a pass (`plan`, the context, masters and
//! the attributes every kind shares); `bridge`, `vxlan` and `unmanaged` plan their
//! kind; `carrier` finds a VXLAN's carrier; `validate` checks a desired link before
//! any write; `assess` turns what is left into per-link states.

mod assess;
mod bridge;
mod carrier;
#[cfg(test)]
mod tests;
mod unmanaged;
mod validate;
mod vxlan;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use super::types::{
    Carrier, DesiredKind, DesiredLink, Family, LinkState, MIN_MTU, Observed, ObservedKind, ObservedLink,
    ObservedVxlan, OperState, VxlanConfig, marker, marker_owner, reason,
};

pub use self::assess::assess;
pub use self::carrier::underlay_family;
pub use self::validate::validate;
use super::step::{MasterChange, RemoteChange, SetAttrs, Step, VxlanChange, VxlanParams};

/// Largest MTU the kernel accepts for a bridge or VXLAN.
const MAX_MTU: u32 = 65535;
/// Largest VXLAN network identifier (24 bits).
const MAX_VNI: u32 = (1 << 24) - 1;

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
        Step::AddPeer { .. } | Step::DelPeer { .. } | Step::RestoreDefault { .. } => 4,
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
            DesiredKind::Unmanaged {
                master,
                allow_uplink,
                release,
            } => self.plan_unmanaged(d, master.as_deref(), *allow_uplink, *release, &mut lp),
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
