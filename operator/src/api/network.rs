//! `Network`: the user-facing object. One bridge per selected node, joined across
//! nodes by a VXLAN, and the multus NetworkAttachmentDefinitions that attach pods.

use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::NodeProblem;
use super::common::{InterfaceName, IpFamily, LabelSelector, PortRange};

/// The IANA VXLAN port, the default destination port.
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
/// MTU of a bridge-only network (no VXLAN): the Linux default for an Ethernet device.
pub const DEFAULT_LOCAL_MTU: u32 = 1500;

/// A secondary pod network: a Linux bridge on every selected node, joined by a VXLAN
/// when more than one node takes part, plus the multus NetworkAttachmentDefinitions
/// that attach pods to it.
// printcolumn(..) repeats `type_ = ..` by design; clippy reads that as a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "nno.dev",
    version = "v1alpha1",
    kind = "Network",
    doc = "A secondary pod network: a bridge on every selected node, a VXLAN between them, and the multus NetworkAttachmentDefinitions that attach pods to it.",
    status = "NetworkStatus",
    shortname = "nnonet",
    category = "nno",
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
        name = "MTU",
        type_ = "integer",
        description = "effective MTU of bridge, VXLAN and pods",
        json_path = ".status.mtu"
    ),
    printcolumn(
        name = "Bridge",
        type_ = "string",
        json_path = ".spec.bridge.name",
        priority = 1
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
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.attachments.router) || !has(self.attachments.router.address) || !isCIDR(self.ipam.range) || !isIP(self.attachments.router.address) || cidr(self.ipam.range).containsIP(self.attachments.router.address)",
        "fieldPath": ".attachments.router.address",
        "message": "the router address must be inside ipam.range"
    },
    {
        "rule": "!has(self.attachments.router) || !has(self.attachments.router.addresses) || !isCIDR(self.ipam.range) || [self.attachments.router.addresses.start, self.attachments.router.addresses.end].all(a, !isIP(a) || cidr(self.ipam.range).containsIP(a))",
        "fieldPath": ".attachments.router.addresses",
        "message": "the router addresses must be inside ipam.range"
    },
    {
        "rule": "!has(self.attachments.router) || !has(self.attachments.router.addresses) || has(self.ipam.gateway)",
        "fieldPath": ".attachments.router.addresses",
        "message": "routers that share a gateway need ipam.gateway, the virtual address they hold in turn (outside router.addresses)"
    },
    {
        "rule": "!has(self.vxlan) || !has(self.vxlan.interfaceName) || self.vxlan.interfaceName != self.bridge.name",
        "fieldPath": ".vxlan.interfaceName",
        "message": "the VXLAN interface name must differ from the bridge name"
    },
    {
        "rule": "!has(self.gateway) || has(self.ipam.gateway)",
        "fieldPath": ".gateway",
        "message": "gateway routing needs ipam.gateway, the router address the routes point to"
    },
    {
        "rule": "!has(self.attachments.router) || !has(self.attachments.router.name) || !has(self.attachments.name) || self.attachments.router.name != self.attachments.name",
        "fieldPath": ".attachments.router.name",
        "message": "the router attachment needs a name of its own, different from attachments.name"
    }
]))]
pub struct NetworkSpec {
    /// Nodes that get the network. Empty selects every node.
    #[serde(default, skip_serializing_if = "LabelSelector::is_empty")]
    pub node_selector: LabelSelector,

    /// The Linux bridge built on every selected node.
    pub bridge: NetworkBridge,

    /// The VXLAN that joins the bridges of different nodes. Without it the network is
    /// local to each node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan: Option<NetworkVxlan>,

    /// MTU of the bridge, the VXLAN and the pod interfaces. When unset it is derived:
    /// the smallest carrier MTU over the selected nodes minus the VXLAN overhead (50
    /// bytes on an IPv4 underlay, 70 on IPv6), or 1500 without a VXLAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 68, max = 65535))]
    pub mtu: Option<u32>,

    /// Address management for the pods, rendered as whereabouts IPAM.
    pub ipam: Ipam,

    /// Gateway routing for the client pods: everything but the cluster's own networks
    /// goes through the router (`ipam.gateway`). The client attachment gets the
    /// complement of the excluded prefixes as routes via the gateway, so the pods'
    /// default route (eth0) stays and the cluster keeps using it: Services, other
    /// pods, the nodes. The prefixes in force are in `status.gatewayExcludes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Gateway>,

    /// Where the NetworkAttachmentDefinitions are written and what they are called.
    pub attachments: Attachments,

    /// How a change reaches the nodes: a few at a time, each node probing after it
    /// applies and going back to its last good configuration when the probe fails.
    #[serde(default, skip_serializing_if = "crate::api::rollout::RolloutSpec::is_default")]
    pub rollout: crate::api::rollout::RolloutSpec,
}

/// The node bridge.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkBridge {
    /// Interface name of the bridge on every node.
    pub name: InterfaceName,
}

/// VXLAN between the nodes. Set `group` (multicast), or `remotes` and/or `nodePeers`
/// (unicast head-end replication, for underlays without multicast).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.group) != (has(self.remotes) || has(self.nodePeers))",
    "message": "set either group (multicast) or remotes and/or nodePeers (unicast), not both and not neither"
}]))]
pub struct NetworkVxlan {
    /// VXLAN network identifier.
    #[schemars(range(min = 1, max = 16777215))]
    pub vni: u32,

    /// Name of the VXLAN interface on the nodes. Defaults to `vxlan<vni>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<InterfaceName>,

    /// Multicast group for broadcast, unknown-unicast and multicast traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 45), extend("x-kubernetes-validations" = [{
        "rule": "isIP(self) && (cidr('224.0.0.0/4').containsIP(self) || cidr('ff00::/8').containsIP(self))",
        "message": "group must be a multicast address (224.0.0.0/4 or ff00::/8)"
    }]))]
    pub group: Option<String>,

    /// Unicast VTEP addresses of other hosts; each is programmed as an all-zero FDB
    /// entry, so broadcast traffic is replicated to every one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(min = 1, max = 256),
        inner(length(max = 45)),
        extend("x-kubernetes-list-type" = "set", "x-kubernetes-validations" = super::unicast_list_rules())
    )]
    pub remotes: Vec<String>,

    /// Also peer with the VTEP address of every other selected node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_peers: Option<NodePeers>,

    /// UDP destination port.
    #[serde(default = "default_vxlan_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,

    /// UDP source port range of encapsulated packets. Kernel default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_port_range: Option<PortRange>,

    /// Learn remote MAC addresses from received packets.
    #[serde(default = "default_true")]
    pub learning: bool,

    /// TTL of encapsulated packets. Kernel default when unset (1 for multicast).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 255))]
    pub ttl: Option<u8>,

    /// Carrier interface of the VXLAN. When unset, the interface that routes to the
    /// group or first remote; with only nodePeers, the interface holding the node's
    /// InternalIP of the peers' family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<InterfaceName>,
}

/// Automatic unicast peers: the other selected nodes' VTEP addresses.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePeers {
    /// Underlay address family of the VTEPs.
    #[serde(default)]
    pub ip_family: IpFamily,
}

/// whereabouts IPAM for the pod attachments.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.rangeStart) || !isCIDR(self.range) || !isIP(self.rangeStart) || cidr(self.range).containsIP(self.rangeStart)",
        "fieldPath": ".rangeStart", "message": "rangeStart must be inside range"
    },
    {
        "rule": "!has(self.rangeEnd) || !isCIDR(self.range) || !isIP(self.rangeEnd) || cidr(self.range).containsIP(self.rangeEnd)",
        "fieldPath": ".rangeEnd", "message": "rangeEnd must be inside range"
    },
    {
        "rule": "!has(self.gateway) || !isCIDR(self.range) || !isIP(self.gateway) || cidr(self.range).containsIP(self.gateway)",
        "fieldPath": ".gateway", "message": "gateway must be inside range"
    },
    {
        "rule": "!has(self.exclude) || !isCIDR(self.range) || self.exclude.all(x, !isCIDR(x) || cidr(self.range).containsCIDR(x))",
        "fieldPath": ".exclude", "message": "every exclude entry must be inside range"
    }
]))]
pub struct Ipam {
    /// Pod address range, a CIDR such as 192.168.50.0/24 or fd00:50::/64.
    #[schemars(length(max = 49), extend("x-kubernetes-validations" = [{
        "rule": "isCIDR(self)", "message": "range must be a CIDR such as 192.168.50.0/24"
    }]))]
    pub range: String,

    /// First address handed out. Defaults to the first address of the range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 45), extend("x-kubernetes-validations" = super::ip_rules()))]
    pub range_start: Option<String>,

    /// Last address handed out. Defaults to the last address of the range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 45), extend("x-kubernetes-validations" = super::ip_rules()))]
    pub range_end: Option<String>,

    /// CIDRs inside the range that are never handed out. The gateway and the router
    /// address are excluded automatically.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 128),
        inner(length(max = 49)),
        extend("x-kubernetes-list-type" = "set", "x-kubernetes-validations" = [{
            "rule": "self.all(x, isCIDR(x))", "message": "every exclude entry must be a CIDR such as 192.168.50.0/28"
        }])
    )]
    pub exclude: Vec<String>,

    /// Gateway reported to the pods in the IPAM result (usually the router address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 45), extend("x-kubernetes-validations" = super::ip_rules()))]
    pub gateway: Option<String>,

    /// Routes installed in the client pods for this interface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub routes: Vec<Route>,
}

/// What gateway routing keeps on the pods' eth0.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Gateway {
    /// Prefixes that stay on eth0 besides the cluster's own (CIDRs; those of the other
    /// address family than ipam.range are ignored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(length(max = 49)),
        extend("x-kubernetes-list-type" = "set", "x-kubernetes-validations" = [{
            "rule": "self.all(x, isCIDR(x))", "message": "every exclude entry must be a CIDR such as 10.0.0.0/8"
        }])
    )]
    pub exclude: Vec<String>,

    /// Also keep the cluster's own networks on eth0, discovered and followed as they
    /// change: the Service CIDRs (networking.k8s.io/v1 ServiceCIDR objects), the
    /// nodes' pod CIDRs (`Node.spec.podCIDRs`) and the nodes' InternalIPs.
    #[serde(default = "default_true")]
    pub exclude_cluster: bool,
}

/// A route in the pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Destination CIDR, e.g. 0.0.0.0/0.
    #[schemars(length(max = 49), extend("x-kubernetes-validations" = [{
        "rule": "isCIDR(self)", "message": "dst must be a CIDR such as 0.0.0.0/0"
    }]))]
    pub dst: String,
    /// Next hop. Defaults to ipam.gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 45), extend("x-kubernetes-validations" = super::ip_rules()))]
    pub gw: Option<String>,
}

/// Where NetworkAttachmentDefinitions are written.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.namespaces) && size(self.namespaces) > 0) || has(self.namespaceSelector)",
    "message": "list namespaces or set a namespaceSelector: the NetworkAttachmentDefinitions need somewhere to go"
}]))]
pub struct Attachments {
    /// Namespaces that get the NetworkAttachmentDefinitions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(length(min = 1, max = 63), regex(pattern = super::DNS_LABEL)),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub namespaces: Vec<String>,

    /// Namespaces selected by label also get them, including ones created later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// Name of the client NetworkAttachmentDefinition. Defaults to the Network's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = super::DNS_SUBDOMAIN))]
    pub name: Option<String>,

    /// A second NetworkAttachmentDefinition with a static address, for the gateway
    /// (router) pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<RouterAttachment>,
}

/// The router (gateway pod) attachment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.address) != has(self.addresses)",
    "message": "set address (one router) or addresses (routers sharing ipam.gateway), one of the two"
}]))]
pub struct RouterAttachment {
    /// Name of the router NetworkAttachmentDefinition. Defaults to `<network>-router`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = super::DNS_SUBDOMAIN))]
    pub name: Option<String>,

    /// Static address of the router pod, inside ipam.range. It is excluded from the
    /// client pool. One router; for several, `addresses`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 45), extend("x-kubernetes-validations" = super::ip_rules()))]
    pub address: Option<String>,

    /// Routers that share the gateway (high availability): each router pod gets an
    /// address of this range (whereabouts), and `ipam.gateway` is the virtual address
    /// the routers hold in turn (VRRP, e.g. keepalived, in the router pods). The range
    /// and the gateway are excluded from the client pool. At most 64 addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<AddressRange>,

    /// The namespace the router runs in: the router NetworkAttachmentDefinition is
    /// written there alone, so no pod elsewhere can take the gateway address. Unset:
    /// in every attachment namespace (any pod there can then attach as the router).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = super::DNS_LABEL))]
    pub namespace: Option<String>,
}

/// An inclusive range of addresses, `start` to `end`, of one family.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct AddressRange {
    #[schemars(length(max = 45), extend("x-kubernetes-validations" = super::ip_rules()))]
    pub start: String,
    #[schemars(length(max = 45), extend("x-kubernetes-validations" = super::ip_rules()))]
    pub end: String,
}

/// Observed state, written by the controller.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStatus {
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

    /// Selected nodes whose links are Ready.
    #[serde(default)]
    pub ready_nodes: u32,

    /// `ready/desired`, for display.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<String>,

    /// Effective MTU of the bridge, the VXLAN and the pod interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,

    /// The derived MTU the Network was first Ready with on every selected node: its
    /// pods use it, so it is kept when a node with a smaller carrier joins later (that
    /// node is not Ready, with the reason). Unset while `spec.mtu` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub established_mtu: Option<u32>,

    /// NetworkAttachmentDefinitions written, as `namespace/name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachment_definitions: Vec<String>,

    /// With `spec.gateway`: the prefixes kept on the client pods' eth0 (merged), the
    /// client attachment routing the rest via the gateway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateway_excludes: Vec<String>,

    /// The first few selected nodes that are not Ready, with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ready_nodes: Vec<NodeProblem>,

    /// The rollout of the current generation to the nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::api::rollout::RolloutStatus>,
}

fn default_vxlan_port() -> u16 {
    DEFAULT_VXLAN_PORT
}

fn default_true() -> bool {
    true
}

impl NetworkVxlan {
    /// Interface name of the VXLAN device: `interfaceName` or `vxlan<vni>`.
    pub fn interface_name(&self) -> InterfaceName {
        self.interface_name.clone().unwrap_or_else(|| {
            InterfaceName::new(format!("vxlan{}", self.vni))
                .expect("vxlan + at most 8 digits is a valid interface name")
        })
    }

    /// Underlay family, from the group, the remotes or nodePeers.
    pub fn underlay_family(&self) -> IpFamily {
        let explicit = self
            .group
            .iter()
            .chain(self.remotes.iter())
            .find_map(|a| a.parse::<IpAddr>().ok());
        match (explicit, &self.node_peers) {
            (Some(addr), _) => IpFamily::of(&addr),
            (None, Some(peers)) => peers.ip_family,
            (None, None) => IpFamily::IPv4,
        }
    }
}

impl Network {
    /// Name of the client NetworkAttachmentDefinition.
    pub fn attachment_name(&self) -> String {
        self.spec
            .attachments
            .name
            .clone()
            .unwrap_or_else(|| kube::ResourceExt::name_any(self))
    }

    /// Name of the router NetworkAttachmentDefinition, when one is asked for.
    pub fn router_attachment_name(&self) -> Option<String> {
        self.spec.attachments.router.as_ref().map(|router| {
            router
                .name
                .clone()
                .unwrap_or_else(|| format!("{}-router", kube::ResourceExt::name_any(self)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vxlan(json: serde_json::Value) -> NetworkVxlan {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn vxlan_defaults() {
        let v = vxlan(serde_json::json!({"vni": 100, "group": "239.1.1.1"}));
        assert_eq!(v.port, 4789);
        assert!(v.learning);
        assert_eq!(v.interface_name().as_str(), "vxlan100");
        assert_eq!(
            vxlan(serde_json::json!({"vni": 16777215, "group": "239.1.1.1"}))
                .interface_name()
                .as_str(),
            "vxlan16777215"
        );
        let named = vxlan(serde_json::json!({"vni": 7, "group": "239.1.1.1", "interfaceName": "vx-gw"}));
        assert_eq!(named.interface_name().as_str(), "vx-gw");
    }

    #[test]
    fn underlay_family_follows_the_addresses() {
        let cases = [
            (
                serde_json::json!({"vni": 1, "group": "239.1.1.1"}),
                IpFamily::IPv4,
            ),
            (serde_json::json!({"vni": 1, "group": "ff05::1"}), IpFamily::IPv6),
            (
                serde_json::json!({"vni": 1, "remotes": ["2001:db8::2"]}),
                IpFamily::IPv6,
            ),
            (serde_json::json!({"vni": 1, "nodePeers": {}}), IpFamily::IPv4),
            (
                serde_json::json!({"vni": 1, "nodePeers": {"ipFamily": "IPv6"}}),
                IpFamily::IPv6,
            ),
            (
                serde_json::json!({"vni": 1, "remotes": ["198.18.0.9"], "nodePeers": {}}),
                IpFamily::IPv4,
            ),
        ];
        for (json, family) in cases {
            assert_eq!(vxlan(json.clone()).underlay_family(), family, "{json}");
        }
    }

    #[test]
    fn attachment_names() {
        let mut net: Network = serde_json::from_value(serde_json::json!({
            "apiVersion": "nno.dev/v1alpha1", "kind": "Network",
            "metadata": {"name": "gw"},
            "spec": {
                "bridge": {"name": "br-gw"},
                "ipam": {"range": "192.168.50.0/24"},
                "attachments": {"namespaces": ["default"], "router": {"address": "192.168.50.1"}}
            }
        }))
        .unwrap();
        assert_eq!(net.attachment_name(), "gw");
        assert_eq!(net.router_attachment_name().as_deref(), Some("gw-router"));
        net.spec.attachments.name = Some("clients".into());
        net.spec.attachments.router.as_mut().unwrap().name = Some("router".into());
        assert_eq!(net.attachment_name(), "clients");
        assert_eq!(net.router_attachment_name().as_deref(), Some("router"));
        net.spec.attachments.router = None;
        assert_eq!(net.router_attachment_name(), None);
    }
}
