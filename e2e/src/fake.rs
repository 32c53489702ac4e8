//! Stand-ins for the kubelet's and the agents' API writes, for tests of the
//! controller alone: Node objects with a Ready condition, and NodeNetworkState
//! reports. (Tests of the whole product run the real agents instead.)

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use nno::api::node_state::{InterfaceState, NodeNetworkStateStatus, Owner, OwnerKind};
use nno::api::{InterfaceName, LinkKind, NodeNetworkState, NodeNetworkStateSpec};
use serde_json::json;

use crate::cluster::{Cluster, MANAGER};

/// Creates (or relabels) a Node and marks it Ready, as a kubelet would.
pub async fn node(cluster: &Cluster, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(cluster.client());
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let body = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}});
    api.patch(
        name,
        &PatchParams::apply("nno.dev/e2e-kubelet").force(),
        &Patch::Apply(&body),
    )
    .await?;
    set_node_ready(cluster, name, true).await
}

/// Sets the Node's Ready condition.
pub async fn set_node_ready(cluster: &Cluster, name: &str, ready: bool) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(cluster.client());
    let now = jiff::Timestamp::now().to_string();
    let body = json!({"apiVersion": "v1", "kind": "Node", "status": {"conditions": [{
        "type": "Ready", "status": if ready { "True" } else { "False" }, "reason": "E2E",
        "lastHeartbeatTime": now, "lastTransitionTime": now
    }]}});
    api.patch_status(
        name,
        &PatchParams::apply("nno.dev/e2e-kubelet").force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// One interface as an agent would report it.
pub fn interface(
    network: &str,
    name: &str,
    kind: LinkKind,
    generation: i64,
    carrier_mtu: Option<u32>,
) -> InterfaceState {
    InterfaceState {
        name: InterfaceName::new(name).expect("valid interface name"),
        owner: Owner {
            kind: OwnerKind::Network,
            name: network.into(),
        },
        kind,
        ready: true,
        reason: "Ready".into(),
        message: String::new(),
        mtu: carrier_mtu.map(|c| c - 50),
        carrier: carrier_mtu.map(|_| InterfaceName::new("eth0").unwrap()),
        carrier_mtu,
        vtep_address: None,
        observed_generation: Some(generation),
    }
}

/// Writes node `node`'s NodeNetworkState status, as its agent would.
pub async fn report(cluster: &Cluster, node: &str, interfaces: Vec<InterfaceState>) -> anyhow::Result<()> {
    let api: Api<NodeNetworkState> = Api::all(cluster.client());
    if api.get_opt(node).await?.is_none() {
        api.create(
            &PostParams::default(),
            &NodeNetworkState::new(node, NodeNetworkStateSpec {}),
        )
        .await?;
    }
    let status = NodeNetworkStateStatus {
        interfaces,
        ..Default::default()
    };
    let body = json!({"apiVersion": "nno.dev/v1alpha1", "kind": "NodeNetworkState", "status": status});
    api.patch_status(node, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body))
        .await?;
    Ok(())
}
