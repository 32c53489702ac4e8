//! Planning an unmanaged interface: only ever enslaved, never the uplink unless allowed.

use super::*;

impl Context<'_> {
    pub(super) fn plan_unmanaged(
        &mut self,
        d: &DesiredLink,
        master: Option<&str>,
        allow_uplink: bool,
        release: bool,
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
        if master.is_none() && release && l.master.is_some() {
            lp.steps.push(Step::Set {
                name: d.name.clone(),
                attrs: SetAttrs {
                    master: Some(MasterChange::Detach),
                    ..SetAttrs::default()
                },
            });
        }
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
}
