//! Planning a bridge: created, kept, or made again for a new owner.

use super::*;

impl Context<'_> {
    pub(super) fn plan_bridge(&mut self, d: &DesiredLink, mtu: Option<u32>, lp: &mut LinkPlan) {
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
}
