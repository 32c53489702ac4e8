//! The CRDs of group `nno.dev`, version `v1alpha1`, all cluster-scoped. Validation
//! lives in the schema (OpenAPI and CEL rules), so the API server itself refuses bad
//! input: no webhook.

pub mod common;
pub mod link;
pub mod network;
pub mod node_state;
pub mod rollout;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use common::{InterfaceName, IpFamily, LabelSelector, PortRange};
pub use link::{Link, LinkKind, LinkSpec, LinkStatus};
pub use network::{Network, NetworkSpec, NetworkStatus};
pub use node_state::{
    InterfaceState, NodeNetworkState, NodeNetworkStateSpec, NodeNetworkStateStatus, Owner, OwnerKind,
};

/// API group of every kind here.
pub const GROUP: &str = "nno.dev";

/// Condition types.
pub mod condition {
    /// Everything asked for is in place on every selected node.
    pub const READY: &str = "Ready";
    /// Some selected nodes are not Ready.
    pub const DEGRADED: &str = "Degraded";
    /// Another object already claims the same interface name or VNI.
    pub const CONFLICT: &str = "Conflict";
}

/// A selected node that is not Ready, and why.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeProblem {
    pub node: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// A DNS-1123 subdomain: the names of Kubernetes objects.
pub const DNS_SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// A DNS-1123 label: the names of namespaces.
pub const DNS_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// CEL rules of a single IP address field.
fn ip_rules() -> serde_json::Value {
    serde_json::json!([{
        "rule": "isIP(self)",
        "message": "must be an IP address such as 192.168.50.1 or 2001:db8::1"
    }])
}

/// CEL rules of a VTEP address that may also be a multicast group (a Link's
/// `remoteIPAddress`): no loopback, link-local, broadcast or unspecified address,
/// which no remote VTEP can have.
fn vtep_or_group_rules() -> serde_json::Value {
    serde_json::json!([
        {
            "rule": "isIP(self)",
            "message": "must be an IP address such as 192.168.50.1 or 2001:db8::1"
        },
        {
            "rule": "!isIP(self) || ip(self).isGlobalUnicast() || cidr('224.0.0.0/4').containsIP(self) || cidr('ff00::/8').containsIP(self)",
            "message": "must be a unicast address of another host or a multicast group, not loopback, link-local, broadcast or unspecified"
        }
    ])
}

/// CEL rules of one unicast VTEP address (a node's report).
fn vtep_rules() -> serde_json::Value {
    serde_json::json!([{
        "rule": "isIP(self) && ip(self).isGlobalUnicast()",
        "message": "must be a unicast IP address, not multicast, loopback, link-local, broadcast or unspecified"
    }])
}

/// CEL rules of a list of unicast VTEP addresses. `isGlobalUnicast` is false for
/// multicast, loopback, link-local, the limited broadcast and the unspecified
/// address (and true for private ranges).
fn unicast_list_rules() -> serde_json::Value {
    serde_json::json!([
        {
            "rule": "self.all(x, isIP(x) && ip(x).isGlobalUnicast())",
            "message": "every entry must be a unicast IP address of another host, not multicast, loopback, link-local, broadcast or unspecified"
        },
        {
            "rule": "self.all(x, !isIP(x) || !isIP(self[0]) || ip(x).family() == ip(self[0]).family())",
            "message": "all entries must be of one address family"
        }
    ])
}

/// The CRDs, in the order they are installed.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![Network::crd(), Link::crd(), NodeNetworkState::crd()]
        .into_iter()
        .map(known_formats_only)
        .collect()
}

/// Drops the `format`s schemars writes for unsigned integers (`uint8` ... `uint64`):
/// the API server does not know them and warns about them on every apply of an
/// object ("unrecognized format"). The bounds (`minimum`, `maximum`) stay.
fn known_formats_only(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                if map
                    .get("format")
                    .and_then(|f| f.as_str())
                    .is_some_and(|f| f.starts_with("uint"))
                {
                    map.remove("format");
                }
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(&crd).expect("a CRD serializes");
    strip(&mut value);
    serde_json::from_value(value).expect("a CRD without formats deserializes")
}

/// The CRDs as one multi-document YAML stream: what `node-network-operator crds`
/// prints and the chart ships.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::from(
        "# Generated by `node-network-operator crds`. Do not edit: change operator/src/api and regenerate.\n",
    );
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}
