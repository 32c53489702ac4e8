//! `nno-local`: node-network-operator on its embedded default, a simulated
//! multi-node cluster on this machine. A real control plane (etcd, kube-apiserver,
//! kube-controller-manager) on a 198.18.0.0/15 underlay bridge; three nodes, each a
//! network namespace with the real agent inside; the controller; the samples
//! applied; and the gateway network at work: a client pod on node-a whose traffic
//! leaves through a router pod on node-b, both attached by the real multus with the
//! NADs the controller wrote. Runs until interrupted; everything is torn down on exit.

use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use nno_e2e::node::SimNode;
use nno_e2e::outside::{self, Outside};
use nno_e2e::pod::{Cni, Pod};
use nno_e2e::{Cluster, operator, samples};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    println!("control plane ready at {}", cluster.server());
    operator::install_rbac(&cluster).await?;
    let controller_kubeconfig = operator::component_kubeconfig(&cluster, "controller").await?;
    let agent_kubeconfig = operator::component_kubeconfig(&cluster, "agent").await?;
    let cni = Cni::install(&cluster, &["nno-cni-shim"]).await?;
    let args = cni.controller_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _controller = operator::start_controller(&cluster, &controller_kubeconfig, "local", &args)?;

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

    cluster.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "network/gateway",
        "--timeout=60s",
    ])?;
    let (_router, _client, _outside) = gateway_demo(&cluster, &cni, &nodes[0], &nodes[1]).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
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

/// The sample gateway network at work: the router pod on `b` NATs for the client pod
/// on `a`, whose ping to a host outside the cluster arrives from `b`.
async fn gateway_demo(
    cluster: &Cluster,
    cni: &Cni,
    a: &SimNode,
    b: &SimNode,
) -> anyhow::Result<(Pod, Pod, Outside)> {
    let router = Pod::create(cluster, cni, b, "default", "router", Some("gateway-router")).await?;
    router.add_ok().await?;
    outside::route_out_through(&router, b, cni)?;
    let outside = Outside::create(cluster)?;
    let (a_ip, b_ip) = (a.address.to_string(), b.address.to_string());
    outside.count_from(&a_ip)?;
    outside.count_from(&b_ip)?;

    let client = Pod::create(cluster, cni, a, "default", "client", Some("gateway")).await?;
    client.add_ok().await?;
    println!();
    println!(
        "gateway demo: pod default/client on {} has {} on net1; pod default/router on {} has {}",
        a.name,
        client.ipv4("net1")?,
        b.name,
        router.ipv4("net1")?
    );
    let ping = client.exec("ping", &["-c", "3", "-i", "0.2", "-W", "2", &outside.address])?;
    println!(
        "{}",
        ping.lines()
            .filter(|l| l.contains("packets") || l.contains("rtt"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    println!(
        "the outside host {} received {} packets from {} (the router's node) and {} from {} (the client's node)",
        outside.address,
        outside.received_from(&b_ip)?,
        b.name,
        outside.received_from(&a_ip)?,
        a.name
    );
    println!(
        "  ip netns exec {} ip route       # the client's routes",
        client.netns
    );
    Ok((router, client, outside))
}
