//! The chart's admission policy and the NodeNetworkState schema against a real
//! kube-apiserver: an agent's token, bound to its pod on node-a, writes node-a's
//! NodeNetworkState and no other; a token of the agents' ServiceAccount bound to no
//! node writes none; values no node can have (an MTU of 0, a loopback VTEP) are
//! refused whoever writes them.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use nno::api::NodeNetworkState;
use nno_e2e::operator::{self, FULLNAME, NAMESPACE};
use nno_e2e::{Cluster, eventually};
use serde_json::{Value, json};

async fn node(cluster: &Cluster, name: &str, address: &str) {
    let api: Api<Node> = Api::all(cluster.client());
    let body = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}});
    api.create(&PostParams::default(), &serde_json::from_value(body).unwrap())
        .await
        .unwrap();
    let status = json!({"status": {"addresses": [{"type": "InternalIP", "address": address}]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

fn state(name: &str) -> NodeNetworkState {
    serde_json::from_value(json!({
        "apiVersion": "nno.dev/v1alpha1", "kind": "NodeNetworkState",
        "metadata": {"name": name}, "spec": {}
    }))
    .unwrap()
}

/// A report with one VXLAN whose carrier MTU and VTEP address are given.
fn report(carrier_mtu: u32, vtep: &str) -> Value {
    json!({"status": {"interfaces": [{
        "name": "vxlan100", "owner": {"kind": "Network", "name": "gw"}, "kind": "Vxlan",
        "ready": true, "reason": "Ready", "mtu": 1450, "carrier": "eth0",
        "carrierMtu": carrier_mtu, "vtepAddress": vtep
    }]}})
}

/// The refusal of `result`: (HTTP code, message); panics if it was accepted.
fn refusal<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) -> (u16, String) {
    match result {
        Ok(v) => panic!("{what}: accepted ({v:?})"),
        Err(kube::Error::Api(status)) => {
            println!("{what}: {} {}", status.code, status.message);
            (status.code, status.message)
        }
        Err(other) => panic!("{what}: unexpected error {other}"),
    }
}

#[tokio::test]
async fn agents_write_only_the_state_of_the_node_their_token_is_bound_to() {
    let cluster = Cluster::start().await.unwrap();
    operator::install_rbac(&cluster).await.unwrap();
    node(&cluster, "node-a", "198.18.0.1").await;
    node(&cluster, "node-b", "198.18.0.2").await;
    let agent_sa = format!("{FULLNAME}-agent");

    // The agent pod on node-a (no kubelet runs it) and its own token.
    let pods: Api<Pod> = Api::namespaced(cluster.client(), NAMESPACE);
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "agent-a"},
        "spec": {"serviceAccountName": agent_sa, "nodeName": "node-a",
                 "containers": [{"name": "agent", "image": "ghcr.io/nno-dev/node-network-operator:0.1.0"}]}});
    pods.create(&PostParams::default(), &serde_json::from_value(pod).unwrap())
        .await
        .unwrap();
    let (_, agent_a) = cluster
        .service_account_in_pod(NAMESPACE, &agent_sa, "agent-a")
        .await
        .unwrap();
    let (_, unbound) = cluster.service_account(NAMESPACE, &agent_sa).await.unwrap();
    let as_a: Api<NodeNetworkState> = Api::all(agent_a);
    let as_unbound: Api<NodeNetworkState> = Api::all(unbound);
    let admin: Api<NodeNetworkState> = Api::all(cluster.client());

    // The policy takes effect a moment after it is created: wait until it refuses.
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    eventually("the admission policy in force", Duration::from_secs(30), || {
        let as_a = as_a.clone();
        let dry = dry.clone();
        async move {
            match as_a.create(&dry, &state("node-b")).await {
                Err(kube::Error::Api(s)) if s.code == 403 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;

    // Its own node's state: created and reported.
    as_a.create(&PostParams::default(), &state("node-a"))
        .await
        .expect("the agent of node-a creates NodeNetworkState node-a");
    as_a.patch_status(
        "node-a",
        &PatchParams::default(),
        &Patch::Merge(&report(1500, "198.18.0.1")),
    )
    .await
    .expect("the agent of node-a writes node-a's report");

    // Another node's state: neither created nor written.
    let (code, message) = refusal(
        "agent of node-a creates node-b's state",
        as_a.create(&PostParams::default(), &state("node-b")).await,
    );
    assert_eq!(code, 403);
    assert!(
        message.contains("the agent of node node-a may write only NodeNetworkState node-a, not node-b"),
        "{message}"
    );
    admin
        .create(&PostParams::default(), &state("node-b"))
        .await
        .unwrap();
    let (code, message) = refusal(
        "agent of node-a writes node-b's report",
        as_a.patch_status(
            "node-b",
            &PatchParams::default(),
            &Patch::Merge(&report(1500, "198.18.0.1")),
        )
        .await,
    );
    assert_eq!(code, 403);
    assert!(message.contains("not node-b"), "{message}");

    // A token of the same ServiceAccount bound to no node writes nothing.
    let (code, message) = refusal(
        "unbound agent token writes node-a's report",
        as_unbound
            .patch_status(
                "node-a",
                &PatchParams::default(),
                &Patch::Merge(&report(1500, "198.18.0.1")),
            )
            .await,
    );
    assert_eq!(code, 403);
    assert!(message.contains("bound to no node"), "{message}");

    // Values no node has are refused by the schema, also in the node's own report.
    for (case, body, field) in [
        ("carrier MTU 0", report(0, "198.18.0.1"), "carrierMtu"),
        ("carrier MTU too large", report(70000, "198.18.0.1"), "carrierMtu"),
        ("VTEP not an IP", report(1500, "node-a"), "vtepAddress"),
        ("VTEP loopback", report(1500, "127.0.0.1"), "vtepAddress"),
        ("VTEP link-local", report(1500, "fe80::1"), "vtepAddress"),
        ("VTEP unspecified", report(1500, "0.0.0.0"), "vtepAddress"),
        ("VTEP multicast", report(1500, "239.1.1.1"), "vtepAddress"),
    ] {
        let (code, message) = refusal(
            case,
            as_a.patch_status("node-a", &PatchParams::default(), &Patch::Merge(&body))
                .await,
        );
        assert_eq!(code, 422, "{case}: {message}");
        assert!(message.contains(field), "{case}: {message}");
    }
    // The last good report stands.
    let kept = admin.get("node-a").await.unwrap();
    let vx = &kept.status.unwrap().interfaces[0];
    assert_eq!(
        (vx.carrier_mtu, vx.vtep_address.as_deref()),
        (Some(1500), Some("198.18.0.1"))
    );
}
