//! `NodeNetworkState`: one per node, named after it, owned by the Node object and
//! written only by that node's agent.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::InterfaceName;
use super::link::LinkKind;

/// The network interfaces the operator manages on one node, as that node's agent
/// sees them. Named after the node.
// printcolumn(..) repeats `type_ = ..` by design; clippy reads that as a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[kube(
    group = "nno.dev",
    version = "v1alpha1",
    kind = "NodeNetworkState",
    doc = "The network interfaces the operator manages on one node, reported by that node's agent. Named after the node.",
    status = "NodeNetworkStateStatus",
    shortname = "nns",
    category = "nno",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Interfaces",
        type_ = "string",
        description = "ready/managed interfaces",
        json_path = ".status.readyInterfaces"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
pub struct NodeNetworkStateSpec {}

/// What the agent observed on its node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeNetworkStateStatus {
    /// `Ready`: every interface wanted on the node is Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// One entry per interface wanted on the node (at most 4096: the bound keeps the
    /// cost of the schema's address rules within the API server's budget).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 4096),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"])
    )]
    pub interfaces: Vec<InterfaceState>,

    /// The generation of each object in force on the node, and a newer one that was
    /// rolled back here (see `spec.rollout`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 4096),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["kind", "name"])
    )]
    pub generations: Vec<crate::api::rollout::AppliedGeneration>,

    /// `ready/managed` interfaces, for display.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_interfaces: Option<String>,
}

/// The state of one interface.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceState {
    /// Interface name on the node.
    pub name: InterfaceName,
    /// The object that wants the interface.
    pub owner: Owner,
    /// What kind of interface.
    pub kind: LinkKind,
    /// Whether the interface is as desired and usable.
    pub ready: bool,
    /// Machine-readable reason, CamelCase.
    pub reason: String,
    /// What a person can do about it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// MTU of the interface (65536 is the loopback's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 68, max = 65536))]
    pub mtu: Option<u32>,
    /// The carrier of a VXLAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier: Option<InterfaceName>,
    /// MTU of the carrier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 68, max = 65536))]
    pub carrier_mtu: Option<u32>,
    /// Local VTEP address of a VXLAN (the carrier's address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 45), extend("x-kubernetes-validations" = super::vtep_rules()))]
    pub vtep_address: Option<String>,
    /// Generation of the owner this state reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The object that wants an interface.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    pub kind: OwnerKind,
    pub name: String,
}

/// Kind of the object that wants an interface.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
pub enum OwnerKind {
    Network,
    Link,
}

impl NodeNetworkStateStatus {
    /// The state of interface `name`, if reported.
    pub fn interface(&self, name: &str) -> Option<&InterfaceState> {
        self.interfaces.iter().find(|i| i.name.as_str() == name)
    }

    /// Interfaces wanted by `owner`.
    pub fn owned_by<'a>(&'a self, owner: &'a Owner) -> impl Iterator<Item = &'a InterfaceState> + 'a {
        self.interfaces.iter().filter(move |i| &i.owner == owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(name: &str, owner: &str, ready: bool) -> InterfaceState {
        InterfaceState {
            name: InterfaceName::new(name).unwrap(),
            owner: Owner {
                kind: OwnerKind::Network,
                name: owner.into(),
            },
            kind: LinkKind::Bridge,
            ready,
            reason: if ready {
                "Ready".into()
            } else {
                "CarrierMissing".into()
            },
            message: String::new(),
            mtu: Some(1450),
            carrier: None,
            carrier_mtu: None,
            vtep_address: None,
            observed_generation: Some(1),
        }
    }

    #[test]
    fn lookups() {
        let status = NodeNetworkStateStatus {
            interfaces: vec![
                state("br-a", "a", true),
                state("vxlan1", "a", false),
                state("br-b", "b", true),
            ],
            ..Default::default()
        };
        assert!(!status.interface("vxlan1").unwrap().ready);
        assert!(status.interface("eth0").is_none());
        let a = Owner {
            kind: OwnerKind::Network,
            name: "a".into(),
        };
        let names: Vec<_> = status.owned_by(&a).map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["br-a", "vxlan1"]);
    }

    #[test]
    fn empty_message_is_omitted_on_the_wire() {
        let json = serde_json::to_value(state("br0", "x", true)).unwrap();
        assert!(json.get("message").is_none());
        assert_eq!(json["owner"], serde_json::json!({"kind": "Network", "name": "x"}));
    }
}
