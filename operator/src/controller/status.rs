//! Network and Link status from what the agents report: pure functions, so the
//! status a user sees is unit-tested without a cluster.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::rollout::Plan;
use crate::api::common::{condition, set_condition, status};
use crate::api::link::LinkStatus;
use crate::api::network::NetworkStatus;
use crate::api::node_state::{NodeNetworkStateStatus, Owner};
use crate::api::{NodeProblem, condition as cond};
use crate::model::claims::Conflict;
use crate::model::mtu::Effective;

/// How many not-Ready nodes a status lists.
pub const MAX_LISTED_NODES: usize = 5;

/// Reasons of the conditions the controller writes.
pub mod reason {
    pub const READY: &str = "Ready";
    pub const NODES_NOT_READY: &str = "NodesNotReady";
    pub const NO_NODES_SELECTED: &str = "NoNodesSelected";
    pub const WAITING_FOR_NODES: &str = "WaitingForNodes";
    pub const MTU_TOO_LARGE: &str = "MtuTooLarge";
    pub const CONFLICT: &str = "Conflict";
    pub const NO_CONFLICT: &str = "NoConflict";
    /// This object keeps a claim that a newer object also wants.
    pub const CONTESTED: &str = "Contested";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const ATTACHMENTS_FAILED: &str = "AttachmentDefinitionsFailed";
    pub const AS_EXPECTED: &str = "AsExpected";
    /// Some selected nodes keep an older generation until the rollout reaches them.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// A node rolled the current generation back; the rollout halts.
    pub const ROLLED_BACK: &str = "RolledBack";
    /// Per node: no NodeNetworkState from its agent.
    pub const AGENT_NOT_REPORTING: &str = "AgentNotReporting";
    /// Per node: the agent has not reported the interface (for this generation) yet.
    pub const PENDING: &str = "Pending";
}

/// A selected node and what its agent reported.
#[derive(Clone, Copy, Debug)]
pub struct NodeReport<'a> {
    pub node: &'a str,
    pub state: Option<&'a NodeNetworkStateStatus>,
}

/// Whether the interfaces `expected` of `owner` are Ready on one node, at
/// `generation`; the problem when not.
pub fn node_problem(
    report: &NodeReport<'_>,
    owner: &Owner,
    expected: &[String],
    generation: Option<i64>,
) -> Option<NodeProblem> {
    let problem = |reason: &str, message: String| {
        Some(NodeProblem {
            node: report.node.to_string(),
            reason: reason.to_string(),
            message,
        })
    };
    let Some(state) = report.state else {
        return problem(
            reason::AGENT_NOT_REPORTING,
            format!(
                "no NodeNetworkState from the agent on node {}: is the agent running there?",
                report.node
            ),
        );
    };
    for name in expected {
        let iface = state
            .interfaces
            .iter()
            .find(|i| &i.name.to_string() == name && &i.owner == owner);
        match iface {
            None => return problem(reason::PENDING, format!("interface {name} not reported yet")),
            Some(i) if generation.is_some() && i.observed_generation != generation => {
                return problem(
                    reason::PENDING,
                    format!(
                        "interface {name} reflects generation {}, not {}",
                        i.observed_generation.unwrap_or_default(),
                        generation.unwrap_or_default()
                    ),
                );
            }
            Some(i) if !i.ready => {
                let message = if i.message.is_empty() {
                    format!("interface {name}")
                } else {
                    format!("{name}: {}", i.message)
                };
                return problem(&i.reason, message);
            }
            Some(_) => {}
        }
    }
    None
}

/// Everything the controller learned about one Network in a reconcile.
#[derive(Clone, Debug)]
pub struct NetworkFacts<'a> {
    pub generation: Option<i64>,
    pub owner: Owner,
    /// Interfaces the Network has on every node (bridge, VXLAN).
    pub interfaces: Vec<String>,
    pub nodes: Vec<NodeReport<'a>>,
    pub conflict: Option<Conflict>,
    /// Newer objects waiting for a claim this one keeps.
    pub contested: Vec<(Owner, Conflict)>,
    /// Why the NADs could not be rendered (a spec the schema did not catch).
    pub invalid: Option<String>,
    /// `spec.mtu`: while set, no MTU is established.
    pub spec_mtu: Option<u32>,
    /// With `spec.gateway`: the prefixes kept on eth0.
    pub gateway_excludes: Vec<String>,
    pub mtu: Effective,
    /// NADs written (`ns/name`), or why writing failed.
    pub attachments: Result<Vec<String>, String>,
    /// The rollout of the current generation.
    pub rollout: Option<Plan>,
}

/// The Network's new status; `old` provides the condition transition times.
pub fn network_status(facts: &NetworkFacts<'_>, old: Option<&NetworkStatus>) -> NetworkStatus {
    let Rollup {
        problems,
        desired,
        ready,
    } = Rollup::of(&facts.nodes, &facts.owner, &facts.interfaces, facts.generation);

    let (ready_status, ready_reason, ready_message) = if let Some(conflict) = &facts.conflict {
        (status::FALSE, reason::CONFLICT, conflict.message())
    } else if let Some(invalid) = &facts.invalid {
        (status::FALSE, reason::INVALID_SPEC, invalid.clone())
    } else if let Effective::TooLarge {
        mtu,
        nodes,
        established,
    } = &facts.mtu
    {
        let list: Vec<String> = nodes.iter().map(|l| l.to_string()).collect();
        let message = if *established {
            let smallest = nodes.iter().map(|l| l.max).min().unwrap_or(*mtu);
            format!(
                "MTU {mtu} is kept for the pods already on this network, and the VXLAN carrier of these nodes cannot carry it: {}; \
                 give them larger carriers, or set spec.mtu (at most {smallest}) to lower the MTU of the whole network",
                list.join(", ")
            )
        } else {
            format!(
                "spec.mtu {mtu} is more than the VXLAN carrier of these nodes can carry: {}",
                list.join(", ")
            )
        };
        (status::FALSE, reason::MTU_TOO_LARGE, message)
    } else if matches!(facts.mtu, Effective::Unknown) && desired > 0 {
        let message =
            "the MTU is derived from the nodes' VXLAN carriers, and no selected node has reported one yet";
        (status::FALSE, reason::WAITING_FOR_NODES, message.to_string())
    } else if let Err(e) = &facts.attachments {
        (status::FALSE, reason::ATTACHMENTS_FAILED, e.clone())
    } else if let Some(verdict) = rollout_verdict(facts.rollout.as_ref()) {
        verdict
    } else {
        ready_over_nodes(desired, ready)
    };

    let degraded = match (&facts.mtu, halted_verdict(facts.rollout.as_ref())) {
        (Effective::TooLarge { .. }, _) => (status::TRUE, reason::MTU_TOO_LARGE, ready_message.clone()),
        (_, Some(halted)) => halted,
        _ => degraded_over_nodes(&problems, desired),
    };
    let conditions = rolled_up(
        old.map(|o| o.conditions.as_slice()),
        facts.generation,
        (ready_status, ready_reason, ready_message),
        degraded,
        conflict_condition(facts.conflict.as_ref(), &facts.contested),
    );
    let generation = facts.generation;

    let mtu = match &facts.mtu {
        Effective::Known { mtu, .. } | Effective::TooLarge { mtu, .. } => Some(*mtu),
        Effective::Unknown => None,
    };
    // Established once Ready everywhere with a derived MTU; kept from then on.
    let established_mtu = match facts.spec_mtu {
        Some(_) => None,
        None => old
            .and_then(|o| o.established_mtu)
            .or(mtu.filter(|_| ready_status == status::TRUE)),
    };
    NetworkStatus {
        conditions,
        observed_generation: generation,
        desired_nodes: desired,
        ready_nodes: ready,
        nodes: Some(format!("{ready}/{desired}")),
        mtu,
        established_mtu,
        attachment_definitions: facts.attachments.clone().unwrap_or_default(),
        gateway_excludes: facts.gateway_excludes.clone(),
        not_ready_nodes: problems.into_iter().take(MAX_LISTED_NODES).collect(),
        rollout: facts.rollout.as_ref().map(|p| p.status.clone()),
    }
}

/// `Ready` while a rollout is halted or under way.
fn rollout_verdict(plan: Option<&Plan>) -> Option<Verdict> {
    let plan = plan?;
    if let Some((_, reason, message)) = halted_verdict(Some(plan)) {
        return Some((status::FALSE, reason, message));
    }
    let s = &plan.status;
    plan.in_progress.then(|| {
        (
            status::FALSE,
            reason::ROLLING_OUT,
            format!(
                "rolling out generation {}: in force on {} nodes; the others keep theirs until they are let in",
                s.generation,
                s.progress.as_deref().unwrap_or_default(),
            ),
        )
    })
}

/// `Degraded` when a node rolled the current generation back.
fn halted_verdict(plan: Option<&Plan>) -> Option<Verdict> {
    let s = &plan?.status;
    let h = s.halted.as_ref()?;
    let why = if h.message.is_empty() {
        h.reason.clone()
    } else {
        format!("{}: {}", h.reason, h.message)
    };
    Some((
        status::TRUE,
        reason::ROLLED_BACK,
        format!(
            "node {} rolled generation {} back ({why}); the rollout is halted: the nodes not yet changed keep their configuration until the spec changes",
            h.node, s.generation
        ),
    ))
}

/// What the selected nodes report of one Network or Link, the part of the status
/// both kinds share.
struct Rollup {
    problems: Vec<NodeProblem>,
    desired: u32,
    ready: u32,
}

impl Rollup {
    fn of(nodes: &[NodeReport<'_>], owner: &Owner, expected: &[String], generation: Option<i64>) -> Self {
        let problems: Vec<NodeProblem> = nodes
            .iter()
            .filter_map(|n| node_problem(n, owner, expected, generation))
            .collect();
        let desired = nodes.len() as u32;
        let ready = desired - problems.len() as u32;
        Self {
            problems,
            desired,
            ready,
        }
    }
}

/// A condition's (status, reason, message).
type Verdict = (&'static str, &'static str, String);

/// `Ready` as the nodes say it, once nothing else stands in the way.
fn ready_over_nodes(desired: u32, ready: u32) -> Verdict {
    if desired == 0 {
        (
            status::FALSE,
            reason::NO_NODES_SELECTED,
            "spec.nodeSelector matches no node".to_string(),
        )
    } else if ready < desired {
        (
            status::FALSE,
            reason::NODES_NOT_READY,
            format!("{ready} of {desired} nodes are Ready"),
        )
    } else {
        (
            status::TRUE,
            reason::READY,
            format!("Ready on all {desired} selected nodes"),
        )
    }
}

/// `Degraded` as the nodes say it.
fn degraded_over_nodes(problems: &[NodeProblem], desired: u32) -> Verdict {
    if problems.is_empty() {
        (status::FALSE, reason::AS_EXPECTED, String::new())
    } else {
        (
            status::TRUE,
            reason::NODES_NOT_READY,
            format!("{} of {desired} selected nodes are not Ready", problems.len()),
        )
    }
}

/// The three conditions both kinds carry, on top of the old ones (which keep their
/// transition times where nothing changed).
fn rolled_up(
    old: Option<&[Condition]>,
    generation: Option<i64>,
    ready: Verdict,
    degraded: Verdict,
    conflict: Verdict,
) -> Vec<Condition> {
    let mut conditions = old.map(<[Condition]>::to_vec).unwrap_or_default();
    for (type_, (s, r, m)) in [
        (cond::READY, ready),
        (cond::DEGRADED, degraded),
        (cond::CONFLICT, conflict),
    ] {
        set_condition(&mut conditions, condition(type_, s, r, m, generation));
    }
    conditions
}

/// The `Conflict` condition of a Network or Link: True when it lost a claim; False,
/// and saying so, when it keeps one that a newer object waits for.
fn conflict_condition(conflict: Option<&Conflict>, contested: &[(Owner, Conflict)]) -> Verdict {
    match conflict {
        Some(c) => (status::TRUE, reason::CONFLICT, c.message()),
        None if !contested.is_empty() => (
            status::FALSE,
            reason::CONTESTED,
            crate::model::claims::contested_message(contested),
        ),
        None => (status::FALSE, reason::NO_CONFLICT, String::new()),
    }
}

/// Everything the controller learned about one Link in a reconcile.
#[derive(Clone, Debug)]
pub struct LinkFacts<'a> {
    pub generation: Option<i64>,
    pub owner: &'a Owner,
    pub interface: &'a str,
    pub nodes: &'a [NodeReport<'a>],
    pub conflict: Option<&'a Conflict>,
    /// Newer objects waiting for a claim this one keeps.
    pub contested: &'a [(Owner, Conflict)],
    pub rollout: Option<&'a Plan>,
}

/// A Link's status: like a Network's, without MTU and attachments.
pub fn link_status(facts: &LinkFacts<'_>, old: Option<&LinkStatus>) -> LinkStatus {
    let LinkFacts {
        generation,
        owner,
        interface,
        nodes,
        conflict,
        contested,
        rollout,
    } = *facts;
    let Rollup {
        problems,
        desired,
        ready,
    } = Rollup::of(nodes, owner, &[interface.to_string()], generation);
    let ready_condition = match conflict {
        Some(c) => (status::FALSE, reason::CONFLICT, c.message()),
        None => rollout_verdict(rollout).unwrap_or_else(|| ready_over_nodes(desired, ready)),
    };
    let conditions = rolled_up(
        old.map(|o| o.conditions.as_slice()),
        generation,
        ready_condition,
        halted_verdict(rollout).unwrap_or_else(|| degraded_over_nodes(&problems, desired)),
        conflict_condition(conflict, contested),
    );
    LinkStatus {
        conditions,
        observed_generation: generation,
        desired_nodes: desired,
        ready_nodes: ready,
        nodes: Some(format!("{ready}/{desired}")),
        not_ready_nodes: problems.into_iter().take(MAX_LISTED_NODES).collect(),
        rollout: rollout.map(|p| p.status.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::InterfaceName;
    use crate::api::common::differs;
    use crate::api::common::find_condition;
    use crate::api::link::LinkKind;
    use crate::api::node_state::{InterfaceState, OwnerKind};

    fn owner() -> Owner {
        Owner {
            kind: OwnerKind::Network,
            name: "gw".into(),
        }
    }

    fn iface(name: &str, ready: bool, generation: i64) -> InterfaceState {
        InterfaceState {
            name: InterfaceName::new(name).unwrap(),
            owner: owner(),
            kind: LinkKind::Bridge,
            ready,
            reason: if ready {
                "Ready".into()
            } else {
                "CarrierMissing".into()
            },
            message: if ready {
                String::new()
            } else {
                "no route to 239.1.1.1".into()
            },
            mtu: Some(1450),
            carrier: None,
            carrier_mtu: Some(1500),
            vtep_address: None,
            observed_generation: Some(generation),
        }
    }

    fn state(ifaces: Vec<InterfaceState>) -> NodeNetworkStateStatus {
        NodeNetworkStateStatus {
            interfaces: ifaces,
            ..Default::default()
        }
    }

    fn facts<'a>(nodes: Vec<NodeReport<'a>>) -> NetworkFacts<'a> {
        NetworkFacts {
            generation: Some(2),
            owner: owner(),
            interfaces: vec!["br-gw".into(), "vxlan1".into()],
            nodes,
            conflict: None,
            contested: vec![],
            invalid: None,
            spec_mtu: None,
            gateway_excludes: vec![],
            mtu: Effective::Known {
                mtu: 1450,
                limited_by: Some("a".into()),
            },
            attachments: Ok(vec!["default/gw".into()]),
            rollout: None,
        }
    }

    fn cond<'a>(s: &'a NetworkStatus, t: &str) -> (&'a str, &'a str) {
        let c = find_condition(&s.conditions, t).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn all_nodes_ready() {
        let a = state(vec![iface("br-gw", true, 2), iface("vxlan1", true, 2)]);
        let b = a.clone();
        let s = network_status(
            &facts(vec![
                NodeReport {
                    node: "a",
                    state: Some(&a),
                },
                NodeReport {
                    node: "b",
                    state: Some(&b),
                },
            ]),
            None,
        );
        assert_eq!(cond(&s, "Ready"), ("True", "Ready"));
        assert_eq!(cond(&s, "Degraded"), ("False", "AsExpected"));
        assert_eq!(cond(&s, "Conflict"), ("False", "NoConflict"));
        assert_eq!(
            (s.desired_nodes, s.ready_nodes, s.nodes.as_deref(), s.mtu),
            (2, 2, Some("2/2"), Some(1450))
        );
        assert_eq!(s.observed_generation, Some(2));
        assert!(s.not_ready_nodes.is_empty());
        assert_eq!(s.attachment_definitions, ["default/gw"]);
    }

    #[test]
    fn per_node_problems_are_listed_with_reasons() {
        let ok = state(vec![iface("br-gw", true, 2), iface("vxlan1", true, 2)]);
        let carrier = state(vec![iface("br-gw", true, 2), iface("vxlan1", false, 2)]);
        let old_gen = state(vec![iface("br-gw", true, 1), iface("vxlan1", true, 1)]);
        let missing = state(vec![iface("br-gw", true, 2)]);
        let nodes = vec![
            NodeReport {
                node: "a",
                state: Some(&ok),
            },
            NodeReport {
                node: "b",
                state: Some(&carrier),
            },
            NodeReport {
                node: "c",
                state: Some(&old_gen),
            },
            NodeReport {
                node: "d",
                state: Some(&missing),
            },
            NodeReport {
                node: "e",
                state: None,
            },
        ];
        let s = network_status(&facts(nodes), None);
        assert_eq!(cond(&s, "Ready"), ("False", "NodesNotReady"));
        assert_eq!(cond(&s, "Degraded"), ("True", "NodesNotReady"));
        assert_eq!(s.nodes.as_deref(), Some("1/5"));
        let reasons: Vec<(&str, &str)> = s
            .not_ready_nodes
            .iter()
            .map(|p| (p.node.as_str(), p.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                ("b", "CarrierMissing"),
                ("c", "Pending"),
                ("d", "Pending"),
                ("e", "AgentNotReporting")
            ]
        );
        assert_eq!(s.not_ready_nodes[0].message, "vxlan1: no route to 239.1.1.1");
        assert!(s.not_ready_nodes[1].message.contains("generation 1, not 2"));
    }

    #[test]
    fn interfaces_of_another_owner_do_not_count() {
        let mut theirs = iface("br-gw", true, 2);
        theirs.owner = Owner {
            kind: OwnerKind::Link,
            name: "br-gw".into(),
        };
        let st = state(vec![theirs, iface("vxlan1", true, 2)]);
        let s = network_status(
            &facts(vec![NodeReport {
                node: "a",
                state: Some(&st),
            }]),
            None,
        );
        assert_eq!(s.not_ready_nodes[0].reason, "Pending");
    }

    #[test]
    fn blocking_reasons_in_order() {
        let none: Vec<NodeReport> = vec![];
        let mut f = facts(none.clone());
        assert_eq!(
            cond(&network_status(&f, None), "Ready"),
            ("False", "NoNodesSelected")
        );
        f.attachments = Err("namespace default: forbidden".into());
        assert_eq!(
            cond(&network_status(&f, None), "Ready"),
            ("False", "AttachmentDefinitionsFailed")
        );
        f.mtu = Effective::Unknown;
        let unreported = [NodeReport {
            node: "a",
            state: None,
        }];
        f.nodes = unreported.to_vec();
        let s = network_status(&f, None);
        assert_eq!(cond(&s, "Ready"), ("False", "WaitingForNodes"));
        assert_eq!(s.mtu, None, "never a guessed MTU");
        f.mtu = Effective::TooLarge {
            mtu: 9000,
            nodes: vec![crate::model::mtu::Limit {
                node: "b".into(),
                max: 1450,
                carrier: None,
            }],
            established: false,
        };
        let s = network_status(&f, None);
        assert_eq!(cond(&s, "Ready"), ("False", "MtuTooLarge"));
        assert_eq!(cond(&s, "Degraded"), ("True", "MtuTooLarge"));
        assert!(
            find_condition(&s.conditions, "Ready")
                .unwrap()
                .message
                .contains("b (at most 1450)")
        );
        f.invalid = Some("spec.ipam.range \"x\" is not a CIDR".into());
        assert_eq!(cond(&network_status(&f, None), "Ready"), ("False", "InvalidSpec"));
        f.conflict = Some(Conflict {
            winner: Owner {
                kind: OwnerKind::Network,
                name: "old".into(),
            },
            what: "interface br-gw".into(),
            node: "a".into(),
        });
        let s = network_status(&f, None);
        assert_eq!(cond(&s, "Ready"), ("False", "Conflict"));
        assert_eq!(cond(&s, "Conflict"), ("True", "Conflict"));
    }

    #[test]
    fn a_winner_says_who_waits_for_its_claims() {
        let owner = Owner {
            kind: OwnerKind::Link,
            name: "eth0".into(),
        };
        let waiting = vec![(
            Owner {
                kind: OwnerKind::Network,
                name: "gw".into(),
            },
            Conflict {
                winner: owner.clone(),
                what: "interface eth0".into(),
                node: "a".into(),
            },
        )];
        let facts = |contested| LinkFacts {
            generation: Some(1),
            owner: &owner,
            interface: "eth0",
            nodes: &[],
            conflict: None,
            contested,
            rollout: None,
        };
        let s = link_status(&facts(&waiting), None);
        let c = find_condition(&s.conditions, "Conflict").unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Contested"));
        assert!(
            c.message.contains("newer Network gw (on node a)"),
            "{}",
            c.message
        );
        let s = link_status(&facts(&[]), None);
        let c = find_condition(&s.conditions, "Conflict").unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "NoConflict"));
    }

    #[test]
    fn the_mtu_is_established_once_ready_everywhere_and_kept() {
        let ready_iface = |name: &str| iface(name, true, 2);
        let st = state(vec![ready_iface("br-gw"), ready_iface("vxlan1")]);
        let nodes = [NodeReport {
            node: "a",
            state: Some(&st),
        }];
        let mut f = facts(nodes.to_vec());
        let first = network_status(&f, None);
        assert_eq!(cond(&first, "Ready").0, "True");
        assert_eq!(first.established_mtu, Some(1450));
        // A smaller node joined: the MTU is kept, the message says how to change it.
        f.mtu = Effective::TooLarge {
            mtu: 1450,
            nodes: vec![crate::model::mtu::Limit {
                node: "c".into(),
                max: 1400,
                carrier: Some("eth0".into()),
            }],
            established: true,
        };
        let kept = network_status(&f, Some(&first));
        assert_eq!(kept.established_mtu, Some(1450));
        assert_eq!(kept.mtu, Some(1450));
        let message = &find_condition(&kept.conditions, "Ready").unwrap().message;
        assert!(message.contains("MTU 1450 is kept"), "{message}");
        assert!(message.contains("c (carrier eth0: at most 1400)"), "{message}");
        assert!(message.contains("set spec.mtu (at most 1400)"), "{message}");
        // spec.mtu takes over: nothing established while it is set.
        f.spec_mtu = Some(1400);
        assert_eq!(network_status(&f, Some(&kept)).established_mtu, None);
        // Not Ready yet: nothing established.
        let mut g = facts(vec![NodeReport {
            node: "a",
            state: None,
        }]);
        g.mtu = Effective::Known {
            mtu: 8950,
            limited_by: None,
        };
        assert_eq!(network_status(&g, None).established_mtu, None);
    }

    #[test]
    fn not_ready_list_is_capped() {
        let names: Vec<String> = (0..9).map(|i| format!("n{i}")).collect();
        let nodes: Vec<NodeReport> = names
            .iter()
            .map(|n| NodeReport { node: n, state: None })
            .collect();
        let s = network_status(&facts(nodes), None);
        assert_eq!(s.not_ready_nodes.len(), MAX_LISTED_NODES);
        assert_eq!(s.desired_nodes, 9);
    }

    #[test]
    fn steady_state_keeps_times_and_compares_equal() {
        let st = state(vec![iface("br-gw", true, 2), iface("vxlan1", true, 2)]);
        let f = facts(vec![NodeReport {
            node: "a",
            state: Some(&st),
        }]);
        let mut first = network_status(&f, None);
        for c in &mut first.conditions {
            c.last_transition_time.0 -= jiff::SignedDuration::from_secs(60);
        }
        let second = network_status(&f, Some(&first));
        assert!(!differs(&first, &second));
        assert_eq!(first.conditions, second.conditions, "transition times are kept");
        let mut f2 = f.clone();
        f2.mtu = Effective::Known {
            mtu: 1400,
            limited_by: None,
        };
        assert!(differs(&first, &network_status(&f2, Some(&first))));
    }

    #[test]
    fn link_status_counts_nodes() {
        let link_owner = Owner {
            kind: OwnerKind::Link,
            name: "br0".into(),
        };
        let mut i = iface("br0", true, 1);
        i.owner = link_owner.clone();
        let st = state(vec![i]);
        let nodes = [
            NodeReport {
                node: "a",
                state: Some(&st),
            },
            NodeReport {
                node: "b",
                state: None,
            },
        ];
        let facts = LinkFacts {
            generation: Some(1),
            owner: &link_owner,
            interface: "br0",
            nodes: &nodes,
            conflict: None,
            contested: &[],
            rollout: None,
        };
        let s = link_status(&facts, None);
        assert_eq!(s.nodes.as_deref(), Some("1/2"));
        assert_eq!(
            find_condition(&s.conditions, "Ready").unwrap().reason,
            "NodesNotReady"
        );
        assert_eq!(s.not_ready_nodes[0].node, "b");
    }

    #[test]
    fn a_rollout_under_way_or_halted_shows_in_the_conditions() {
        let ready_iface = |name: &str| iface(name, true, 2);
        let st = state(vec![ready_iface("br-gw"), ready_iface("vxlan1")]);
        let nodes = vec![NodeReport {
            node: "a",
            state: Some(&st),
        }];
        let mut f = facts(nodes);
        let mut plan = Plan {
            status: crate::api::rollout::RolloutStatus {
                generation: 2,
                nodes: vec!["a".into()],
                updated_nodes: 1,
                progress: Some("1/3".into()),
                halted: None,
            },
            in_progress: true,
        };
        f.rollout = Some(plan.clone());
        let s = network_status(&f, None);
        assert_eq!(cond(&s, "Ready"), ("False", "RollingOut"));
        assert!(
            find_condition(&s.conditions, "Ready")
                .unwrap()
                .message
                .contains("1/3")
        );
        assert_eq!(s.rollout.as_ref().unwrap().progress.as_deref(), Some("1/3"));

        plan.status.halted = Some(NodeProblem {
            node: "b".into(),
            reason: "NotReadyAfterChange".into(),
            message: "vxlan1: carrier eth9 missing".into(),
        });
        f.rollout = Some(plan);
        let s = network_status(&f, None);
        assert_eq!(cond(&s, "Ready"), ("False", "RolledBack"));
        assert_eq!(cond(&s, "Degraded"), ("True", "RolledBack"));
        let m = &find_condition(&s.conditions, "Degraded").unwrap().message;
        assert!(
            m.contains("node b rolled generation 2 back") && m.contains("eth9"),
            "{m}"
        );
    }
}
