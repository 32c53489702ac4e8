//! Planning a VXLAN: what changes in place, what makes it again, its FDB peers.

use super::carrier::resolve_carrier;
use super::*;

impl Context<'_> {
    pub(super) fn plan_vxlan(&mut self, d: &DesiredLink, cfg: &VxlanConfig, lp: &mut LinkPlan) {
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
                if change.remote.is_none()
                    && let Some(dst) = remote
                    && !zero_before.contains(&dst)
                {
                    lp.steps.push(Step::RestoreDefault {
                        name: d.name.clone(),
                        dst,
                        carrier: carrier.link.name.clone(),
                    });
                    zero_before.insert(dst);
                }
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
