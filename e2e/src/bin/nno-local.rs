//! `nno-local`: node-network-operator on its embedded default, a simulated
//! multi-node cluster on this machine. A real control plane (etcd, kube-apiserver,
//! kube-controller-manager) on a 198.18.0.0/15 underlay bridge; three nodes, each a
//! network namespace with the real agent inside; the controller; the samples
//! applied. Runs until interrupted; everything is torn down on exit.

use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use nno_e2e::node::SimNode;
use nno_e2e::{Cluster, operator, samples};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    println!("control plane ready at {}", cluster.server());
    operator::install_rbac(&cluster).await?;
    let controller_kubeconfig = operator::component_kubeconfig(&cluster, "controller").await?;
    let agent_kubeconfig = operator::component_kubeconfig(&cluster, "agent").await?;
    let _controller = operator::start_controller(&cluster, &controller_kubeconfig, "local", &[])?;

    let gateway = [("nno.dev/gateway-network", "true")];
    let mut nodes = vec![
        SimNode::create(&cluster, "node-a", 1, 1500, &gateway).await?,
        SimNode::create(&cluster, "node-b", 2, 1500, &gateway).await?,
        SimNode::create(&cluster, "node-c", 3, 9000, &[]).await?,
    ];
    for node in &mut nodes {
        node.start_agent(&agent_kubeconfig)?;
        println!(
            "node {} ({}) in network namespace {}, agent running",
            node.name, node.address, node.netns
        );
    }

    let client = cluster.client();
    let params = PatchParams::apply("nno.dev/local").force();
    for (file, doc) in samples::documents()? {
        if doc["apiVersion"]
            .as_str()
            .is_none_or(|v| !v.starts_with("nno.dev/"))
        {
            continue; // e.g. the example pods: no kubelet runs them here
        }
        let obj: DynamicObject = serde_json::from_value(doc.clone())?;
        let types = obj
            .types
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("{}: no kind", file.display()))?;
        let gvk = GroupVersionKind::try_from(types)?;
        let plural = format!("{}s", gvk.kind.to_lowercase());
        let api: Api<DynamicObject> =
            Api::all_with(client.clone(), &ApiResource::from_gvk_with_plural(&gvk, &plural));
        let name = obj.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &params, &Patch::Apply(&obj))
            .await
            .map_err(|e| anyhow::anyhow!("applying {} {}/{name}: {e}", file.display(), gvk.kind))?;
        println!("applied {} {}/{name}", file.display(), gvk.kind);
    }

    tokio::time::sleep(Duration::from_secs(5)).await;
    println!();
    println!(
        "{}",
        cluster.kubectl_ok(&["get", "networks,links,nodenetworkstates", "-o", "wide"])?
    );
    println!("logs of every component: {}", cluster.dir().display());
    println!("  export KUBECONFIG={}", cluster.kubeconfig().display());
    println!("  kubectl get networks,links,nodenetworkstates");
    println!("  ip netns exec {} ip -d link show type bridge", nodes[0].netns);
    println!("press Ctrl-C to stop and remove everything");
    tokio::signal::ctrl_c().await?;
    println!("stopping");
    Ok(())
}
