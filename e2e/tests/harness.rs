//! The harness runs the control plane the way a real cluster does: service-account
//! tokens authenticate, RBAC authorizes, and the controller manager garbage-collects
//! owned objects and finishes namespace deletion. Later tests rely on all of it.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use nno::api::Network;
use nno_e2e::{Cluster, eventually};
use serde_json::json;

#[tokio::test]
async fn service_account_tokens_authenticate_and_rbac_authorizes() {
    let cluster = Cluster::start().await.unwrap();
    let (_, sa) = cluster.service_account("nno-system", "reader").await.unwrap();
    let networks: Api<Network> = Api::all(sa.clone());
    match networks.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403, "{status:?}");
            assert!(
                status.message.contains("system:serviceaccount:nno-system:reader"),
                "{}",
                status.message
            );
        }
        other => panic!("an ungranted ServiceAccount must be forbidden, got {other:?}"),
    }

    let admin = cluster.client();
    let params = PatchParams::apply(nno_e2e::cluster::MANAGER);
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "network-reader"},
        "rules": [{"apiGroups": ["nno.dev"], "resources": ["networks"], "verbs": ["get", "list", "watch"]}]
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "network-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "network-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "nno-system"}]
    });
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    Api::<ClusterRole>::all(admin.clone())
        .patch("network-reader", &params, &Patch::Apply(&role))
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::all(admin.clone())
        .patch("network-reader", &params, &Patch::Apply(&binding))
        .await
        .unwrap();
    eventually("granted list", Duration::from_secs(10), || {
        let networks = networks.clone();
        async move {
            networks
                .list(&ListParams::default())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    // Granted reading, not writing.
    let net: Network = serde_json::from_value(json!({
        "apiVersion": "nno.dev/v1alpha1", "kind": "Network", "metadata": {"name": "x"},
        "spec": {"bridge": {"name": "br-x"}, "ipam": {"range": "192.168.50.0/24"}, "attachments": {"namespaces": ["default"]}}
    }))
    .unwrap();
    let refused = networks.create(&PostParams::default(), &net).await;
    assert!(
        matches!(refused, Err(kube::Error::Api(ref s)) if s.code == 403),
        "{refused:?}"
    );
}

#[tokio::test]
async fn owned_objects_are_collected_and_namespaces_deleted() {
    let cluster = Cluster::start().await.unwrap();
    let client = cluster.client();
    let networks: Api<Network> = Api::all(client.clone());
    let net: Network = serde_json::from_value(json!({
        "apiVersion": "nno.dev/v1alpha1", "kind": "Network", "metadata": {"name": "owner"},
        "spec": {"bridge": {"name": "br-o"}, "ipam": {"range": "192.168.50.0/24"}, "attachments": {"namespaces": ["default"]}}
    }))
    .unwrap();
    let owner = networks.create(&PostParams::default(), &net).await.unwrap();
    let owner_ref = owner.controller_owner_ref(&()).unwrap();

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "doomed"}})).unwrap();
    namespaces.create(&PostParams::default(), &ns).await.unwrap();
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    let mut owned: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "owned"}})).unwrap();
    owned.metadata.owner_references = Some(vec![owner_ref]);
    maps.create(&PostParams::default(), &owned).await.unwrap();

    networks.delete("owner", &DeleteParams::default()).await.unwrap();
    eventually(
        "garbage collection of the owned ConfigMap",
        Duration::from_secs(30),
        || {
            let maps = maps.clone();
            async move { gone(maps.get_opt("owned").await.unwrap()) }
        },
    )
    .await;

    namespaces
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    eventually("namespace deletion", Duration::from_secs(30), || {
        let namespaces = namespaces.clone();
        async move { gone(namespaces.get_opt("doomed").await.unwrap()) }
    })
    .await;
    let gone = namespaces.list(&ListParams::default()).await.unwrap();
    assert!(gone.items.iter().all(|n| n.name_any() != "doomed"));
}

fn gone<T>(found: Option<T>) -> Result<(), String> {
    match found {
        None => Ok(()),
        Some(_) => Err("still there".into()),
    }
}
