//! `Link`: the low-level building block, one interface on the selected nodes. A
//! superset of the Go node-network-operator's Link: its users move their objects over
//! by changing the API group.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::NodeProblem;
use super::common::{InterfaceName, LabelSelector, PortRange};
use super::network::DEFAULT_VXLAN_PORT;

/// One network interface on every selected node: a bridge, a VXLAN VTEP, or an
/// existing interface the operator does not manage but that others refer to.
// printcolumn(..) repeats `type_ = ..` by design; clippy reads that as a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "nno.dev",
    version = "v1alpha1",
    kind = "Link",
    doc = "One network interface on every selected node: a bridge, a VXLAN VTEP, or an unmanaged interface used as a carrier or port.",
    status = "LinkStatus",
    shortname = "nnolink",
    category = "nno",
    printcolumn(name = "Interface", type_ = "string", json_path = ".spec.interfaceName"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Nodes",
        type_ = "string",
        description = "ready/desired nodes",
        json_path = ".status.nodes"
    ),
    printcolumn(
        name = "Updated",
        type_ = "string",
        description = "nodes with the current generation in force / selected nodes",
        json_path = ".status.rollout.progress"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.bridge) ? 1 : 0) + (has(self.vxlan) ? 1 : 0) + (has(self.unmanaged) ? 1 : 0) == 1",
    "message": "exactly one of bridge, vxlan or unmanaged must be set"
}, {
    "rule": "!(has(self.adopt) && self.adopt && has(self.unmanaged))",
    "message": "adopt is for bridge and vxlan Links: an unmanaged interface is never owned"
}]))]
pub struct LinkSpec {
    /// Name of the interface on the node.
    pub interface_name: InterfaceName,

    /// Nodes that get the interface. Empty selects every node.
    #[serde(default, skip_serializing_if = "LabelSelector::is_empty")]
    pub node_selector: LabelSelector,

    /// The interface is a Linux bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<LinkBridge>,

    /// The interface is a VXLAN VTEP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan: Option<LinkVxlan>,

    /// The interface exists already and is not managed: it is never created, changed
    /// or deleted, only referred to (as a carrier), or enslaved to `master` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmanaged: Option<LinkUnmanaged>,

    /// Take over an interface of this name that nno did not create (e.g. one made by
    /// the Go node-network-operator) when it is of this kind and its settings match
    /// or can change in place: it keeps its ifindex and its ports (the pods' traffic
    /// goes on) and from then on belongs to this Link, which deletes it when it is
    /// deleted. Off by default: such an interface is otherwise a name conflict and
    /// left alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt: bool,

    /// How a change reaches the nodes: a few at a time, each node probing after it
    /// applies and going back to its last good configuration when the probe fails.
    #[serde(default, skip_serializing_if = "crate::api::rollout::RolloutSpec::is_default")]
    pub rollout: crate::api::rollout::RolloutSpec,
}

/// Bridge settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkBridge {
    /// MTU of the bridge. Without it the bridge keeps the kernel default (1500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 68, max = 65535))]
    pub mtu: Option<u32>,
}

/// VXLAN settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!(has(self.remoteIPAddress) && has(self.remotes))",
    "message": "set remoteIPAddress (one remote or a multicast group) or remotes (unicast peers), not both"
}]))]
pub struct LinkVxlan {
    /// VXLAN network identifier.
    #[schemars(range(min = 1, max = 16777215))]
    pub vnid: u32,

    /// Remote VTEP: a unicast address, or a multicast group.
    #[serde(default, rename = "remoteIPAddress", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 45), extend("x-kubernetes-validations" = super::vtep_or_group_rules()))]
    pub remote_ip_address: Option<String>,

    /// Unicast peers, programmed as all-zero FDB entries (head-end replication).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(min = 1, max = 256),
        inner(length(max = 45)),
        extend("x-kubernetes-list-type" = "set", "x-kubernetes-validations" = super::unicast_list_rules())
    )]
    pub remotes: Vec<String>,

    /// UDP destination port.
    #[serde(default = "default_vxlan_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,

    /// UDP source port range. Kernel default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_port: Option<PortRange>,

    /// The carrier: the Link whose interface carries the encapsulated traffic. When
    /// unset, the interface that routes to the remote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<LinkReference>,

    /// The Link (a bridge) this VTEP is enslaved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<LinkReference>,

    /// MTU of the VTEP. When unset, the carrier MTU minus the VXLAN overhead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 68, max = 65535))]
    pub mtu: Option<u32>,

    /// Learn remote MAC addresses from received packets.
    #[serde(default = "default_true")]
    pub learning: bool,

    /// TTL of encapsulated packets. Kernel default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 255))]
    pub ttl: Option<u8>,
}

/// An interface the operator does not manage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkUnmanaged {
    /// Enslave the existing interface to this Link (a bridge), as a bridge port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<LinkReference>,

    /// Enslave it even when it holds a global address (the node's InternalIP on its
    /// uplink, typically): the address stops working there, which can cut the node
    /// off its cluster until the bridge carries it. Off by default: such an
    /// interface is not enslaved and the Link reports `UplinkRefused`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_uplink: bool,
}

/// A reference to another Link, by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkReference {
    /// Name of the referenced Link object.
    #[schemars(length(min = 1, max = 253), regex(pattern = super::DNS_SUBDOMAIN))]
    pub name: String,

    /// When false, this link is brought down (and not Ready) while the referenced
    /// Link is missing or not Ready.
    #[serde(default)]
    pub optional: bool,

    /// Bring this link down while the referenced Link, or anything it depends on, is
    /// being changed, and up again once all are as desired.
    #[serde(default = "default_true")]
    pub set_down_on_dependency_update: bool,
}

/// Observed state, aggregated over the nodes by the controller.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkStatus {
    /// `Ready`, `Degraded` and `Conflict`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Nodes selected.
    #[serde(default)]
    pub desired_nodes: u32,

    /// Selected nodes where the interface is Ready.
    #[serde(default)]
    pub ready_nodes: u32,

    /// `ready/desired`, for display.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<String>,

    /// The first few selected nodes where it is not Ready, with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ready_nodes: Vec<NodeProblem>,

    /// The rollout of the current generation to the nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::api::rollout::RolloutStatus>,
}

/// What kind of interface.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum LinkKind {
    Bridge,
    Vxlan,
    Unmanaged,
}

fn default_vxlan_port() -> u16 {
    DEFAULT_VXLAN_PORT
}

fn default_true() -> bool {
    true
}

impl LinkSpec {
    /// The kind the spec asks for; `None` only for a spec the schema would refuse.
    pub fn kind(&self) -> Option<LinkKind> {
        match (&self.bridge, &self.vxlan, &self.unmanaged) {
            (Some(_), None, None) => Some(LinkKind::Bridge),
            (None, Some(_), None) => Some(LinkKind::Vxlan),
            (None, None, Some(_)) => Some(LinkKind::Unmanaged),
            _ => None,
        }
    }

    /// The Links this one refers to, with how it refers to them.
    pub fn references(&self) -> Vec<(&'static str, &LinkReference)> {
        let mut refs = Vec::new();
        if let Some(vxlan) = &self.vxlan {
            refs.extend(vxlan.device.as_ref().map(|r| ("device", r)));
            refs.extend(vxlan.master.as_ref().map(|r| ("master", r)));
        }
        if let Some(unmanaged) = &self.unmanaged {
            refs.extend(unmanaged.master.as_ref().map(|r| ("master", r)));
        }
        refs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> LinkSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn kind_is_the_one_set() {
        let cases = [
            (
                serde_json::json!({"interfaceName": "br0", "bridge": {}}),
                Some(LinkKind::Bridge),
            ),
            (
                serde_json::json!({"interfaceName": "vx0", "vxlan": {"vnid": 1}}),
                Some(LinkKind::Vxlan),
            ),
            (
                serde_json::json!({"interfaceName": "eth0", "unmanaged": {}}),
                Some(LinkKind::Unmanaged),
            ),
            (
                serde_json::json!({"interfaceName": "x", "bridge": {}, "unmanaged": {}}),
                None,
            ),
            (serde_json::json!({"interfaceName": "x"}), None),
        ];
        for (json, kind) in cases {
            assert_eq!(spec(json.clone()).kind(), kind, "{json}");
        }
    }

    #[test]
    fn go_operator_link_reads_unchanged() {
        // A Link as written for the Go node-network-operator, group changed.
        let s = spec(serde_json::json!({
            "interfaceName": "vxlan0",
            "nodeSelector": {"matchLabels": {"kubernetes.io/os": "linux"}},
            "vxlan": {
                "vnid": 100,
                "remoteIPAddress": "224.0.0.88",
                "port": 4789,
                "sourcePort": {"start": 4789, "end": 4789},
                "device": {"name": "eth0"},
                "master": {"name": "br0", "optional": false, "setDownOnDependencyUpdate": true},
                "mtu": 1450
            }
        }));
        let vxlan = s.vxlan.as_ref().unwrap();
        assert_eq!(vxlan.remote_ip_address.as_deref(), Some("224.0.0.88"));
        assert_eq!(
            vxlan.source_port,
            Some(PortRange {
                start: 4789,
                end: 4789
            })
        );
        assert!(vxlan.learning, "learning defaults to on, as in the kernel");
        assert!(
            vxlan.device.as_ref().unwrap().set_down_on_dependency_update,
            "defaults to true"
        );
        let refs: Vec<_> = s
            .references()
            .iter()
            .map(|(how, r)| (*how, r.name.as_str()))
            .collect();
        assert_eq!(refs, [("device", "eth0"), ("master", "br0")]);
    }

    #[test]
    fn unmanaged_port_refers_to_its_master() {
        let s = spec(serde_json::json!({"interfaceName": "eth1", "unmanaged": {"master": {"name": "br0"}}}));
        assert_eq!(s.references().len(), 1);
        assert!(
            spec(serde_json::json!({"interfaceName": "br0", "bridge": {"mtu": 9000}}))
                .references()
                .is_empty()
        );
    }
}
