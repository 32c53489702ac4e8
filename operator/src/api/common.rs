//! Types shared by the CRDs: interface names, port ranges, node selection and
//! conditions.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::{Expression, Selector, SelectorExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::linux::MAX_INTERFACE_NAME;

/// A Linux network interface name: 1 to 15 bytes, no '/', ':' or whitespace, and not
/// "." or "..", exactly what the kernel's `dev_valid_name` accepts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[serde(transparent)]
pub struct InterfaceName(
    #[schemars(
        length(min = 1, max = 15),
        regex(pattern = r"^[^\s/:]+$"),
        extend("x-kubernetes-validations" = [{
            "rule": "self != '.' && self != '..'",
            "message": "an interface name cannot be '.' or '..'"
        }])
    )]
    String,
);

/// Why a string is not a valid interface name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterfaceNameError {
    #[error("an interface name cannot be empty")]
    Empty,
    #[error("interface name {0:?} is longer than {MAX_INTERFACE_NAME} bytes")]
    TooLong(String),
    #[error("interface name {0:?} contains '/', ':' or whitespace")]
    BadCharacter(String),
    #[error("an interface name cannot be '.' or '..'")]
    Dots,
}

impl InterfaceName {
    /// Checks `name` the way the kernel (and the CRD schema) does.
    pub fn new(name: impl Into<String>) -> Result<Self, InterfaceNameError> {
        use crate::linux::{NameProblem, check_interface_name};
        let name = name.into();
        match check_interface_name(&name) {
            Ok(()) => Ok(Self(name)),
            Err(NameProblem::Empty) => Err(InterfaceNameError::Empty),
            Err(NameProblem::TooLong) => Err(InterfaceNameError::TooLong(name)),
            Err(NameProblem::BadCharacter) => Err(InterfaceNameError::BadCharacter(name)),
            Err(NameProblem::Dots) => Err(InterfaceNameError::Dots),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InterfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for InterfaceName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// An inclusive UDP port range.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.start <= self.end",
    "message": "start must not be greater than end"
}]))]
pub struct PortRange {
    #[schemars(range(min = 1, max = 65535))]
    pub start: u16,
    #[schemars(range(min = 1, max = 65535))]
    pub end: u16,
}

/// Underlay address family.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum IpFamily {
    #[default]
    IPv4,
    IPv6,
}

impl IpFamily {
    pub fn of(addr: &std::net::IpAddr) -> Self {
        match addr {
            std::net::IpAddr::V4(_) => IpFamily::IPv4,
            std::net::IpAddr::V6(_) => IpFamily::IPv6,
        }
    }

    /// Bytes a VXLAN encapsulation adds on an underlay of this family: outer IP
    /// header, UDP and VXLAN headers and the inner Ethernet header (20/40 + 8 + 8 + 14).
    pub fn vxlan_overhead(self) -> u32 {
        match self {
            IpFamily::IPv4 => crate::linux::VXLAN_OVERHEAD_V4,
            IpFamily::IPv6 => crate::linux::VXLAN_OVERHEAD_V6,
        }
    }
}

/// A label selector with the wire shape of metav1.LabelSelector, but a schema that
/// the API server can check: known operators only, values exactly where the operator
/// needs them, bounded lists.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must all be present with these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub match_labels: BTreeMap<String, String>,
    /// Requirements that must all hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One requirement of a label selector.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
    "message": "In and NotIn need values; Exists and DoesNotExist take none"
}]))]
pub struct LabelSelectorRequirement {
    /// The label key.
    #[schemars(length(min = 1, max = 317))]
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 63)))]
    pub values: Vec<String>,
}

/// Operator of a label selector requirement.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether the selector selects an object with `labels`. An empty selector
    /// selects everything, as in the Go node-network-operator.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.to_selector().matches(labels)
    }

    /// The selector in kube's form, e.g. for list and watch parameters.
    pub fn to_selector(&self) -> Selector {
        let equal = self
            .match_labels
            .iter()
            .map(|(k, v)| Expression::Equal(k.clone(), v.clone()));
        let exprs = self.match_expressions.iter().map(|r| {
            let key = r.key.clone();
            let values = || r.values.iter().cloned().collect();
            match r.operator {
                SelectorOperator::In => Expression::In(key, values()),
                SelectorOperator::NotIn => Expression::NotIn(key, values()),
                SelectorOperator::Exists => Expression::Exists(key),
                SelectorOperator::DoesNotExist => Expression::DoesNotExist(key),
            }
        });
        equal.chain(exprs).collect()
    }
}

/// Condition status values.
pub mod status {
    pub const TRUE: &str = "True";
    pub const FALSE: &str = "False";
    pub const UNKNOWN: &str = "Unknown";
}

/// Sets `new` into `conditions`, keeping `lastTransitionTime` of an existing condition
/// of the same type whose status did not change. Returns whether anything other than
/// the timestamp changed.
pub fn set_condition(conditions: &mut Vec<Condition>, new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            let changed = old.status != new.status
                || old.reason != new.reason
                || old.message != new.message
                || old.observed_generation != new.observed_generation;
            let keep_time = old.status == new.status;
            let time = old.last_transition_time.clone();
            *old = new;
            if keep_time {
                old.last_transition_time = time;
            }
            changed
        }
        None => {
            conditions.push(new);
            true
        }
    }
}

/// Now, at the one-second precision the API server stores metav1.Time with, so that a
/// status read back compares equal to the one written.
pub fn now() -> Time {
    let now = jiff::Timestamp::now();
    Time(jiff::Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// Builds a condition stamped now.
pub fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation,
        last_transition_time: now(),
    }
}

/// The condition of `type_`, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether two statuses differ in anything but condition timestamps: a steady state
/// makes no status writes (the controller's and the agents' alike).
pub fn differs<T: serde::Serialize>(a: &T, b: &T) -> bool {
    fn strip(mut v: serde_json::Value) -> serde_json::Value {
        if let Some(conditions) = v.get_mut("conditions").and_then(|c| c.as_array_mut()) {
            for c in conditions {
                if let Some(obj) = c.as_object_mut() {
                    obj.remove("lastTransitionTime");
                }
            }
        }
        v
    }
    strip(serde_json::to_value(a).unwrap_or_default()) != strip(serde_json::to_value(b).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_follow_the_kernel() {
        for ok in ["br0", "vxlan-100", "a", "abcdefghijklmno", "br.gw", "eth0@x"] {
            assert!(InterfaceName::new(ok).is_ok(), "{ok} should be valid");
        }
        let cases = [
            ("", InterfaceNameError::Empty),
            (
                "abcdefghijklmnop",
                InterfaceNameError::TooLong("abcdefghijklmnop".into()),
            ),
            ("br/0", InterfaceNameError::BadCharacter("br/0".into())),
            ("br:0", InterfaceNameError::BadCharacter("br:0".into())),
            ("br 0", InterfaceNameError::BadCharacter("br 0".into())),
            ("br\t0", InterfaceNameError::BadCharacter("br\t0".into())),
            (".", InterfaceNameError::Dots),
            ("..", InterfaceNameError::Dots),
        ];
        for (name, err) in cases {
            assert_eq!(InterfaceName::new(name), Err(err), "{name:?}");
        }
    }

    #[test]
    fn interface_name_is_a_plain_string_on_the_wire() {
        let name = InterfaceName::new("br0").unwrap();
        assert_eq!(serde_json::to_string(&name).unwrap(), r#""br0""#);
        let back: InterfaceName = serde_json::from_str(r#""br0""#).unwrap();
        assert_eq!(back, name);
    }

    #[test]
    fn vxlan_overhead_per_family() {
        assert_eq!(IpFamily::IPv4.vxlan_overhead(), 50);
        assert_eq!(IpFamily::IPv6.vxlan_overhead(), 70);
        assert_eq!(IpFamily::of(&"198.18.0.1".parse().unwrap()), IpFamily::IPv4);
        assert_eq!(IpFamily::of(&"2001:db8::1".parse().unwrap()), IpFamily::IPv6);
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, operator: SelectorOperator, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn selectors() {
        use SelectorOperator::*;
        let node = labels(&[("zone", "a"), ("gw", "true")]);
        let by_labels = |pairs: &[(&str, &str)]| LabelSelector {
            match_labels: labels(pairs),
            ..Default::default()
        };
        let by_exprs = |e: Vec<LabelSelectorRequirement>| LabelSelector {
            match_expressions: e,
            ..Default::default()
        };
        let cases = [
            (LabelSelector::default(), true),
            (by_labels(&[("zone", "a")]), true),
            (by_labels(&[("zone", "b")]), false),
            (by_labels(&[("zone", "a"), ("gw", "false")]), false),
            (by_exprs(vec![expr("zone", In, &["a", "b"])]), true),
            (by_exprs(vec![expr("zone", In, &["b"])]), false),
            (by_exprs(vec![expr("zone", NotIn, &["a"])]), false),
            (by_exprs(vec![expr("rack", NotIn, &["a"])]), true),
            (by_exprs(vec![expr("gw", Exists, &[])]), true),
            (by_exprs(vec![expr("gw", DoesNotExist, &[])]), false),
            (by_exprs(vec![expr("rack", DoesNotExist, &[])]), true),
            (
                LabelSelector {
                    match_labels: labels(&[("zone", "a")]),
                    match_expressions: vec![expr("gw", DoesNotExist, &[])],
                },
                false,
            ),
        ];
        for (i, (selector, want)) in cases.into_iter().enumerate() {
            assert_eq!(selector.matches(&node), want, "case {i}: {selector:?}");
        }
        assert!(LabelSelector::default().is_empty());
        assert!(!by_labels(&[("zone", "a")]).is_empty());
    }

    #[test]
    fn selector_wire_shape_is_metav1() {
        let json = serde_json::json!({
            "matchLabels": {"zone": "a"},
            "matchExpressions": [{"key": "gw", "operator": "In", "values": ["x"]}]
        });
        let ours: LabelSelector = serde_json::from_value(json.clone()).unwrap();
        let theirs: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector =
            serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&ours).unwrap(), json);
        assert_eq!(serde_json::to_value(&theirs).unwrap(), json);
        assert_eq!(
            serde_json::to_value(LabelSelector::default()).unwrap(),
            serde_json::json!({})
        );
    }

    #[test]
    fn set_condition_keeps_transition_time_while_status_holds() {
        let mut conditions = Vec::new();
        let first = condition("Ready", status::FALSE, "Pending", "waiting", Some(1));
        let t0 = first.last_transition_time.clone();
        assert!(set_condition(&mut conditions, first));

        let mut same = condition("Ready", status::FALSE, "Pending", "waiting", Some(1));
        same.last_transition_time = Time(t0.0 + jiff::SignedDuration::from_secs(60));
        assert!(!set_condition(&mut conditions, same), "only the time differs");
        assert_eq!(conditions[0].last_transition_time, t0);

        let mut reworded = condition("Ready", status::FALSE, "Pending", "still waiting", Some(1));
        reworded.last_transition_time = Time(t0.0 + jiff::SignedDuration::from_secs(60));
        assert!(set_condition(&mut conditions, reworded));
        assert_eq!(conditions[0].last_transition_time, t0, "status did not flip");

        let mut flipped = condition("Ready", status::TRUE, "Ready", "", Some(2));
        let t1 = Time(t0.0 + jiff::SignedDuration::from_secs(120));
        flipped.last_transition_time = t1.clone();
        assert!(set_condition(&mut conditions, flipped));
        assert_eq!(conditions[0].last_transition_time, t1);
        assert_eq!(conditions.len(), 1);
        assert_eq!(find_condition(&conditions, "Ready").unwrap().reason, "Ready");
        assert!(find_condition(&conditions, "Degraded").is_none());
    }
}
