//! The ports of owned bridges that the engine did not create: the pods' veths, which
//! the bridge CNI plugin enslaved. The kernel releases them when their bridge goes
//! (deleted out of band, or recreated for a change) and keeps them, unattached, on
//! the node; a port can also be detached by hand (`ip link set ... nomaster`). The
//! engine remembers them from every observation and attaches them again, so the pods
//! behind them keep their traffic. Pure: what to remember and what to write.
//!
//! The memory lives as long as the engine: a bridge deleted while the agent is down
//! comes back without its ports (the pods' attachments must then be recreated).

use std::collections::{BTreeMap, HashSet};

use super::plan::Plan;
use super::step::{MasterChange, SetAttrs, Step};
use super::types::{DesiredKind, DesiredLink, Observed, ObservedKind, marker};

/// Foreign ports by bridge name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PortMemory {
    by_bridge: BTreeMap<String, Remembered>,
}

/// What is remembered of one bridge.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Remembered {
    /// The owner the bridge is desired for.
    owner: String,
    /// Whether this engine has seen the bridge carry that owner's marker: only then
    /// are its ports that owner's pods'. A bridge that still carries another owner's
    /// marker is being handed over (e.g. the Network that won its name was deleted):
    /// its ports are the old owner's pods', and are never attached to the new one's.
    held: bool,
    /// Interface index -> name when last seen.
    ports: BTreeMap<u32, String>,
}

impl PortMemory {
    /// Learns from `observed`: the foreign ports each desired bridge has now are
    /// remembered; a remembered port is forgotten once it is gone, or enslaved to
    /// another master (someone moved it on purpose). Bridges no longer desired are
    /// forgotten with their ports.
    pub(crate) fn learn(&mut self, desired: &[DesiredLink], observed: &Observed) {
        let managed: HashSet<&str> = desired.iter().map(|d| d.name.as_str()).collect();
        let bridges: Vec<&DesiredLink> = desired
            .iter()
            .filter(|d| matches!(d.kind, DesiredKind::Bridge { .. }))
            .collect();
        self.by_bridge
            .retain(|name, _| bridges.iter().any(|d| d.name == *name));
        for d in bridges {
            let observed_bridge = observed
                .links
                .get(&d.name)
                .filter(|b| b.owned() && matches!(b.kind, ObservedKind::Bridge { .. }));
            let memory = self.by_bridge.entry(d.name.clone()).or_default();
            if memory.owner != d.owner {
                *memory = Remembered {
                    owner: d.owner.clone(),
                    ..Remembered::default()
                };
            }
            if observed_bridge.is_some_and(|b| b.alias.as_deref() == Some(marker(&d.owner).as_str())) {
                memory.held = true;
            }
            let current = observed_bridge.filter(|_| memory.held).map(|b| b.index);
            memory.ports.retain(|index, _| {
                observed
                    .by_index(*index)
                    .is_some_and(|l| l.master.is_none() || (current.is_some() && l.master == current))
            });
            if let Some(index) = current {
                for l in observed.links.values() {
                    if l.master == Some(index) && !l.owned() && !managed.contains(l.name.as_str()) {
                        memory.ports.insert(l.index, l.name.clone());
                    }
                }
            }
        }
    }

    /// Adds to `plan` the writes attaching every remembered port that has no master
    /// back to its bridge, each to the bridge's own steps (after its creation, if it
    /// is created in this plan): the bridge is not Ready until they are done.
    pub(crate) fn restore(&self, desired: &[DesiredLink], observed: &Observed, plan: &mut Plan) {
        for (d, lp) in desired.iter().zip(plan.links.iter_mut()) {
            if !matches!(d.kind, DesiredKind::Bridge { .. }) || lp.problem.is_some() {
                continue;
            }
            let Some(memory) = self.by_bridge.get(&d.name) else {
                continue;
            };
            for index in memory.ports.keys() {
                if let Some(port) = observed.by_index(*index).filter(|l| l.master.is_none()) {
                    lp.steps.push(Step::Set {
                        name: port.name.clone(),
                        attrs: SetAttrs {
                            master: Some(MasterChange::Attach(d.name.clone())),
                            ..SetAttrs::default()
                        },
                    });
                }
            }
        }
    }

    /// Every remembered port's index (their events are cues to observe again).
    pub(crate) fn indices(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_bridge.values().flat_map(|m| m.ports.keys().copied())
    }

    /// How many ports are remembered for `bridge`.
    #[cfg(test)]
    pub(crate) fn count(&self, bridge: &str) -> usize {
        self.by_bridge.get(bridge).map_or(0, |m| m.ports.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::plan::LinkPlan;
    use crate::netlink::types::{ObservedLink, OperState, marker};

    fn bridge(name: &str) -> DesiredLink {
        DesiredLink::bridge(name, "Network/gw", None)
    }

    fn link(index: u32, name: &str, kind: &str, master: Option<u32>, owned: bool) -> ObservedLink {
        ObservedLink {
            index,
            name: name.into(),
            kind: if kind == "bridge" {
                ObservedKind::Bridge { stp: false }
            } else {
                ObservedKind::Other(kind.into())
            },
            alias: owned.then(|| marker("Network/gw")),
            mtu: 1500,
            admin_up: true,
            oper: OperState::Up,
            master,
        }
    }

    fn observed(links: Vec<ObservedLink>) -> Observed {
        Observed {
            links: links.into_iter().map(|l| (l.name.clone(), l)).collect(),
            ..Observed::default()
        }
    }

    fn plan_for(desired: &[DesiredLink]) -> Plan {
        Plan {
            deletions: vec![],
            links: desired
                .iter()
                .map(|d| LinkPlan {
                    name: d.name.clone(),
                    order: 1,
                    ..LinkPlan::default()
                })
                .collect(),
        }
    }

    fn attach(port: &str, bridge: &str) -> Step {
        Step::Set {
            name: port.into(),
            attrs: SetAttrs {
                master: Some(MasterChange::Attach(bridge.into())),
                ..SetAttrs::default()
            },
        }
    }

    #[test]
    fn a_deleted_bridge_gets_its_pod_ports_back() {
        let desired = vec![bridge("br-gw")];
        let mut memory = PortMemory::default();
        // The pods' veths and the engine's own VXLAN on the bridge.
        let before = observed(vec![
            link(5, "br-gw", "bridge", None, true),
            link(6, "vxlan1", "vxlan", Some(5), true),
            link(7, "veth1", "veth", Some(5), false),
            link(8, "veth2", "veth", Some(5), false),
            link(9, "eth0", "veth", None, false),
        ]);
        memory.learn(&desired, &before);
        assert_eq!(memory.count("br-gw"), 2, "only foreign ports are remembered");

        // Deleted out of band: the ports stay, unattached; the bridge is not there.
        let deleted = observed(vec![
            link(7, "veth1", "veth", None, false),
            link(8, "veth2", "veth", None, false),
            link(9, "eth0", "veth", None, false),
        ]);
        memory.learn(&desired, &deleted);
        assert_eq!(memory.count("br-gw"), 2, "kept while the bridge is away");
        let mut plan = plan_for(&desired);
        memory.restore(&desired, &deleted, &mut plan);
        assert_eq!(
            plan.links[0].steps,
            vec![attach("veth1", "br-gw"), attach("veth2", "br-gw")]
        );

        // Recreated with a new index, ports attached again: nothing more to do.
        let back = observed(vec![
            link(10, "br-gw", "bridge", None, true),
            link(7, "veth1", "veth", Some(10), false),
            link(8, "veth2", "veth", Some(10), false),
        ]);
        memory.learn(&desired, &back);
        let mut plan = plan_for(&desired);
        memory.restore(&desired, &back, &mut plan);
        assert!(plan.links[0].steps.is_empty());
        assert_eq!(memory.count("br-gw"), 2);
    }

    #[test]
    fn a_bridge_handed_to_a_new_owner_never_gets_the_old_owners_ports() {
        let mut memory = PortMemory::default();
        let old = vec![bridge("br-gw")];
        let with_pods = observed(vec![
            link(5, "br-gw", "bridge", None, true),
            link(7, "veth1", "veth", Some(5), false),
        ]);
        memory.learn(&old, &with_pods);
        assert_eq!(memory.count("br-gw"), 1);
        // Network/gw was deleted; Network/next wants the name. The bridge still
        // carries gw's marker and gw's pod: nothing of it is remembered for next,
        // nor once the bridge is made again for next (veth1 left unattached).
        let new = vec![DesiredLink {
            owner: "Network/next".into(),
            ..bridge("br-gw")
        }];
        memory.learn(&new, &with_pods);
        assert_eq!(memory.count("br-gw"), 0);
        let remade = observed(vec![
            ObservedLink {
                alias: Some(marker("Network/next")),
                ..link(10, "br-gw", "bridge", None, true)
            },
            link(7, "veth1", "veth", None, false),
        ]);
        memory.learn(&new, &remade);
        let mut plan = plan_for(&new);
        memory.restore(&new, &remade, &mut plan);
        assert!(plan.links[0].steps.is_empty(), "{:?}", plan.links[0].steps);

        // A marker rewritten by hand on a bridge the engine holds: its ports stay
        // remembered (the engine makes the bridge again and attaches them).
        let mut memory = PortMemory::default();
        memory.learn(&old, &with_pods);
        let tampered = observed(vec![
            ObservedLink {
                alias: Some(marker("Network/next")),
                ..link(5, "br-gw", "bridge", None, true)
            },
            link(7, "veth1", "veth", Some(5), false),
        ]);
        memory.learn(&old, &tampered);
        assert_eq!(memory.count("br-gw"), 1);
    }

    #[test]
    fn a_detached_port_is_attached_again() {
        let desired = vec![bridge("br-gw")];
        let mut memory = PortMemory::default();
        memory.learn(
            &desired,
            &observed(vec![
                link(5, "br-gw", "bridge", None, true),
                link(7, "veth1", "veth", Some(5), false),
            ]),
        );
        let detached = observed(vec![
            link(5, "br-gw", "bridge", None, true),
            link(7, "veth1", "veth", None, false),
        ]);
        memory.learn(&desired, &detached);
        let mut plan = plan_for(&desired);
        memory.restore(&desired, &detached, &mut plan);
        assert_eq!(plan.links[0].steps, vec![attach("veth1", "br-gw")]);
    }

    #[test]
    fn gone_or_moved_ports_and_undesired_bridges_are_forgotten() {
        let desired = vec![bridge("br-gw")];
        let mut memory = PortMemory::default();
        memory.learn(
            &desired,
            &observed(vec![
                link(5, "br-gw", "bridge", None, true),
                link(7, "veth1", "veth", Some(5), false),
                link(8, "veth2", "veth", Some(5), false),
                link(9, "br-other", "bridge", None, false),
            ]),
        );
        // veth1's pod was deleted; veth2 was moved to another bridge on purpose.
        let now = observed(vec![
            link(5, "br-gw", "bridge", None, true),
            link(8, "veth2", "veth", Some(9), false),
            link(9, "br-other", "bridge", None, false),
        ]);
        memory.learn(&desired, &now);
        assert_eq!(memory.count("br-gw"), 0);

        memory.learn(
            &desired,
            &observed(vec![
                link(5, "br-gw", "bridge", None, true),
                link(7, "veth3", "veth", Some(5), false),
            ]),
        );
        assert_eq!(memory.count("br-gw"), 1);
        // The Network is deleted: its bridge goes, and so does the memory of its ports.
        memory.learn(&[], &observed(vec![link(7, "veth3", "veth", None, false)]));
        assert_eq!(memory, PortMemory::default());
    }

    #[test]
    fn a_bridge_that_is_not_ours_or_has_a_problem_gets_nothing() {
        let desired = vec![bridge("br-gw")];
        let mut memory = PortMemory::default();
        // A foreign bridge of that name (a name conflict): its ports are not ours.
        memory.learn(
            &desired,
            &observed(vec![
                link(5, "br-gw", "bridge", None, false),
                link(7, "veth1", "veth", Some(5), false),
            ]),
        );
        assert_eq!(memory.count("br-gw"), 0);

        memory.learn(
            &desired,
            &observed(vec![
                link(5, "br-gw", "bridge", None, true),
                link(7, "veth1", "veth", Some(5), false),
            ]),
        );
        let detached = observed(vec![link(7, "veth1", "veth", None, false)]);
        let mut plan = plan_for(&desired);
        plan.links[0].problem = Some(crate::netlink::Problem::new("NameConflict", "x"));
        memory.restore(&desired, &detached, &mut plan);
        assert!(
            plan.links[0].steps.is_empty(),
            "no attaching to a bridge that is not ours"
        );
    }
}
