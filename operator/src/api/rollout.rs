//! Paced rollout, shared by Network and Link: `spec.rollout` says how many nodes may
//! change at once, `status.rollout` which nodes the controller let apply the current
//! generation, and each NodeNetworkState which generation of each object is in force
//! on its node and whether a newer one was rolled back there.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::node_state::OwnerKind;

/// `spec.rollout.maxUnavailable` when unset: a quarter of the selected nodes (at
/// least one) change at a time.
pub const DEFAULT_MAX_UNAVAILABLE: &str = "25%";

/// How a change reaches the nodes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// How many selected nodes may be applying a new generation at once: a count
    /// (at least 1) or a percentage of the selected nodes (rounded up, at least one
    /// node). Default `25%`. A node that already has the object applied keeps its
    /// configuration until the controller lets it change; a node that has none yet
    /// gets the current generation at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "type(self) == int ? self >= 1 : self.matches('^([1-9][0-9]?|100)%$')",
        "message": "must be a count of at least 1 or a percentage from 1% to 100%"
    }]))]
    pub max_unavailable: Option<IntOrString>,
}

/// Where the rollout of the current generation stands; written by the controller.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The generation being rolled out.
    pub generation: i64,
    /// Nodes allowed to apply it (those done among them). The agent of any other
    /// node that has an older generation applied keeps that one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// Selected nodes with the generation in force.
    #[serde(default)]
    pub updated_nodes: u32,
    /// `updated/selected`, for display.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// The node where the generation was rolled back, which halts the rollout until
    /// the spec changes again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted: Option<super::NodeProblem>,
}

impl RolloutSpec {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl RolloutStatus {
    /// Whether `node` may apply `generation`.
    pub fn admits(&self, generation: i64, node: &str) -> bool {
        self.generation == generation && self.nodes.iter().any(|n| n == node)
    }
}

/// On one node: the generation of one object in force there, as its agent applied
/// and probed it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppliedGeneration {
    pub kind: OwnerKind,
    pub name: String,
    /// The last generation that passed its probe on this node (none: the object's
    /// first generation here was rolled back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// A newer generation that failed its probe here and was rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_generation: Option<i64>,
    /// Why it was rolled back (CamelCase).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// The number of nodes `max_unavailable` allows to change at once out of `nodes`
/// (never less than one).
pub fn max_unavailable(spec: Option<&IntOrString>, nodes: usize) -> usize {
    let percent = |p: &str| -> Option<usize> {
        let n: usize = p.strip_suffix('%')?.parse().ok()?;
        Some((nodes * n).div_ceil(100))
    };
    let n = match spec {
        Some(IntOrString::Int(n)) => usize::try_from(*n).unwrap_or(1),
        Some(IntOrString::String(s)) => percent(s).unwrap_or(1),
        None => percent(DEFAULT_MAX_UNAVAILABLE).unwrap_or(1),
    };
    n.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_percentages() {
        assert_eq!(max_unavailable(None, 3), 1);
        assert_eq!(max_unavailable(None, 8), 2);
        assert_eq!(max_unavailable(None, 100), 25);
        assert_eq!(max_unavailable(None, 0), 1);
        assert_eq!(max_unavailable(Some(&IntOrString::Int(2)), 3), 2);
        assert_eq!(max_unavailable(Some(&IntOrString::Int(0)), 3), 1);
        assert_eq!(max_unavailable(Some(&IntOrString::String("100%".into())), 7), 7);
        assert_eq!(max_unavailable(Some(&IntOrString::String("10%".into())), 3), 1);
        assert_eq!(max_unavailable(Some(&IntOrString::String("junk".into())), 3), 1);
    }

    #[test]
    fn admission_is_per_generation() {
        let s = RolloutStatus {
            generation: 3,
            nodes: vec!["node-a".into()],
            ..Default::default()
        };
        assert!(s.admits(3, "node-a"));
        assert!(!s.admits(4, "node-a"));
        assert!(!s.admits(3, "node-b"));
    }
}
