//! Which nodes may apply an object's current generation: a pure decision over what
//! the nodes report, so the pacing rules are unit-tested without a cluster.
//!
//! A node that reports no generation of the object has nothing to keep and gets the
//! current one at once (a new object, a node joining). A node with an older
//! generation in force waits until it is let in; at most `maxUnavailable` nodes are
//! let in and not yet done at any time, in node-name order. A node that rolled the
//! generation back halts the rollout until the spec changes.

use std::collections::BTreeSet;

use crate::api::NodeProblem;
use crate::api::node_state::{NodeNetworkStateStatus, Owner};
use crate::api::rollout::{AppliedGeneration, RolloutStatus};

/// Where one selected node stands with the generation being rolled out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No generation of the object in force there yet: not paced.
    New,
    /// An older generation in force.
    Old,
    /// The generation in force.
    Updated,
    /// The generation was rolled back there.
    Failed { reason: String, message: String },
}

/// The phase of one node for `owner` at `generation`, from its report.
pub fn phase(state: Option<&NodeNetworkStateStatus>, owner: &Owner, generation: i64) -> Phase {
    let Some(entry) = state.and_then(|s| entry(s, owner)) else {
        return Phase::New;
    };
    if entry.failed_generation == Some(generation) {
        Phase::Failed {
            reason: entry.reason.clone(),
            message: entry.message.clone(),
        }
    } else if entry.generation == Some(generation) {
        Phase::Updated
    } else if entry.generation.is_none() {
        // Its first generation there was rolled back: nothing to keep.
        Phase::New
    } else {
        Phase::Old
    }
}

fn entry<'a>(state: &'a NodeNetworkStateStatus, owner: &Owner) -> Option<&'a AppliedGeneration> {
    state
        .generations
        .iter()
        .find(|g| g.kind == owner.kind && g.name == owner.name)
}

/// The rollout status for `generation` over the selected `nodes` (by name, with their
/// phases), continuing `previous`.
pub fn decide(
    generation: i64,
    previous: Option<&RolloutStatus>,
    nodes: &[(String, Phase)],
    max_unavailable: usize,
) -> RolloutStatus {
    let selected: BTreeSet<&str> = nodes.iter().map(|(n, _)| n.as_str()).collect();
    // Admissions of this generation stand (for nodes still selected); a new
    // generation starts over.
    let mut admitted: BTreeSet<String> = previous
        .filter(|p| p.generation == generation)
        .map(|p| {
            p.nodes
                .iter()
                .filter(|n| selected.contains(n.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    for (name, phase) in nodes {
        if matches!(phase, Phase::Updated | Phase::Failed { .. }) {
            admitted.insert(name.clone());
        }
    }
    let halted = nodes.iter().find_map(|(name, phase)| match phase {
        Phase::Failed { reason, message } => Some(NodeProblem {
            node: name.clone(),
            reason: reason.clone(),
            message: message.clone(),
        }),
        _ => None,
    });
    if halted.is_none() {
        let busy = |admitted: &BTreeSet<String>| {
            nodes
                .iter()
                .filter(|(n, p)| *p == Phase::Old && admitted.contains(n))
                .count()
        };
        let mut waiting = nodes
            .iter()
            .filter(|(n, p)| *p == Phase::Old && !admitted.contains(n))
            .map(|(n, _)| n.clone())
            .collect::<BTreeSet<_>>()
            .into_iter();
        while busy(&admitted) < max_unavailable {
            let Some(next) = waiting.next() else { break };
            admitted.insert(next);
        }
    }
    let updated = nodes
        .iter()
        .filter(|(_, p)| matches!(p, Phase::Updated | Phase::New))
        .count() as u32;
    RolloutStatus {
        generation,
        nodes: admitted.into_iter().collect(),
        updated_nodes: updated,
        progress: Some(format!("{updated}/{}", nodes.len())),
        halted,
    }
}

/// Whether the rollout is still under way (some node keeps an older generation).
pub fn in_progress(nodes: &[(String, Phase)]) -> bool {
    nodes.iter().any(|(_, p)| *p == Phase::Old)
}

/// The rollout of one object, as its status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub status: RolloutStatus,
    /// Some selected node keeps an older generation.
    pub in_progress: bool,
}

/// The rollout of `owner`'s `generation` over the selected nodes' reports.
pub fn plan(
    owner: &Owner,
    generation: Option<i64>,
    previous: Option<&RolloutStatus>,
    reports: &[super::status::NodeReport<'_>],
    max_unavailable: Option<&k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>,
) -> Option<Plan> {
    let generation = generation?;
    let nodes: Vec<(String, Phase)> = reports
        .iter()
        .map(|r| (r.node.to_string(), phase(r.state, owner, generation)))
        .collect();
    let max = crate::api::rollout::max_unavailable(max_unavailable, nodes.len());
    Some(Plan {
        status: decide(generation, previous, &nodes, max),
        in_progress: in_progress(&nodes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::node_state::OwnerKind;

    fn nodes(phases: &[(&str, Phase)]) -> Vec<(String, Phase)> {
        phases.iter().map(|(n, p)| (n.to_string(), p.clone())).collect()
    }

    fn failed() -> Phase {
        Phase::Failed {
            reason: "CarrierMissing".into(),
            message: "no eth9".into(),
        }
    }

    #[test]
    fn one_node_at_a_time_in_name_order() {
        let n = nodes(&[
            ("node-c", Phase::Old),
            ("node-a", Phase::Old),
            ("node-b", Phase::Old),
        ]);
        let s = decide(3, None, &n, 1);
        assert_eq!(s.nodes, ["node-a"]);
        assert_eq!(s.progress.as_deref(), Some("0/3"));
        // node-a still applying: nobody else.
        assert_eq!(decide(3, Some(&s), &n, 1).nodes, ["node-a"]);
        // node-a done: node-b next.
        let n = nodes(&[
            ("node-a", Phase::Updated),
            ("node-b", Phase::Old),
            ("node-c", Phase::Old),
        ]);
        let s = decide(3, Some(&s), &n, 1);
        assert_eq!(s.nodes, ["node-a", "node-b"]);
        assert_eq!(s.updated_nodes, 1);
        assert!(in_progress(&n));
    }

    #[test]
    fn several_at_once_and_new_nodes_are_not_paced() {
        let n = nodes(&[
            ("a", Phase::Old),
            ("b", Phase::Old),
            ("c", Phase::Old),
            ("d", Phase::New),
        ]);
        let s = decide(2, None, &n, 2);
        assert_eq!(s.nodes, ["a", "b"]);
        assert_eq!(s.updated_nodes, 1, "the new node counts as having the generation");
    }

    #[test]
    fn a_rollback_halts_and_a_new_generation_starts_over() {
        let n = nodes(&[("a", Phase::Updated), ("b", failed()), ("c", Phase::Old)]);
        let s = decide(3, None, &n, 1);
        assert_eq!(s.nodes, ["a", "b"], "c is never let in");
        let halted = s.halted.as_ref().unwrap();
        assert_eq!(
            (halted.node.as_str(), halted.reason.as_str()),
            ("b", "CarrierMissing")
        );
        // The spec changes: generation 4; everyone has an older one in force.
        let n = nodes(&[("a", Phase::Old), ("b", Phase::Old), ("c", Phase::Old)]);
        let s = decide(4, Some(&s), &n, 1);
        assert_eq!(s.nodes, ["a"]);
        assert!(s.halted.is_none());
    }

    #[test]
    fn nodes_no_longer_selected_drop_out() {
        let prev = RolloutStatus {
            generation: 5,
            nodes: vec!["gone".into()],
            ..Default::default()
        };
        let n = nodes(&[("a", Phase::Old)]);
        assert_eq!(decide(5, Some(&prev), &n, 1).nodes, ["a"]);
    }

    #[test]
    fn phases_from_reports() {
        let owner = Owner {
            kind: OwnerKind::Network,
            name: "n".into(),
        };
        let report = |generation: Option<i64>, failed: Option<i64>| NodeNetworkStateStatus {
            generations: vec![AppliedGeneration {
                kind: OwnerKind::Network,
                name: "n".into(),
                generation,
                failed_generation: failed,
                reason: "ProbeFailed".into(),
                message: String::new(),
            }],
            ..Default::default()
        };
        assert_eq!(phase(None, &owner, 2), Phase::New);
        assert_eq!(
            phase(Some(&NodeNetworkStateStatus::default()), &owner, 2),
            Phase::New
        );
        assert_eq!(phase(Some(&report(Some(2), None)), &owner, 2), Phase::Updated);
        assert_eq!(phase(Some(&report(Some(1), None)), &owner, 2), Phase::Old);
        assert!(matches!(
            phase(Some(&report(Some(1), Some(2))), &owner, 2),
            Phase::Failed { .. }
        ));
        assert_eq!(phase(Some(&report(Some(1), Some(2))), &owner, 3), Phase::Old);
        assert_eq!(phase(Some(&report(None, Some(1))), &owner, 2), Phase::New);
        let other = Owner {
            kind: OwnerKind::Link,
            name: "n".into(),
        };
        assert_eq!(phase(Some(&report(Some(1), None)), &other, 2), Phase::New);
    }
}
