//! The multus NetworkAttachmentDefinition (k8s.cni.cncf.io/v1). Its `spec.config` is a
//! CNI configuration carried as a JSON *string*; without a top-level `"type"` it is a
//! conflist with `"plugins"`.

use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// A multus NetworkAttachmentDefinition. Multus installs the CRD; the operator only
/// writes objects of it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[kube(
    group = "k8s.cni.cncf.io",
    version = "v1",
    kind = "NetworkAttachmentDefinition",
    plural = "network-attachment-definitions",
    namespaced,
    schema = "disabled"
)]
pub struct NetworkAttachmentDefinitionSpec {
    /// The CNI configuration, JSON in a string.
    #[serde(default)]
    pub config: String,
}

/// Pod annotation naming the secondary networks to attach.
pub const NETWORKS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";
/// Pod annotation multus writes back with the attachments' addresses.
pub const NETWORK_STATUS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/network-status";
