//! `nno-local`: node-network-operator on its embedded default, a local cluster of
//! real nodes. A control plane (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler) on a 198.18.0.0/16 underlay bridge; three nodes, each a network
//! namespace running containerd, the kubelet and kube-proxy, with a primary pod
//! network, multus and whereabouts; the chart installed with `helm install`; the
//! samples applied with kubectl; and the gateway network at work: the sample client
//! and router pods, placed by the scheduler on two nodes, the client's ping to a host
//! outside the cluster leaving through the router's node. Runs until interrupted;
//! everything is torn down on exit.
//!
//!   nno-local [--no-samples] [--no-chart] [--nodes N]
//!
//! `--nodes N` starts node-a, node-b, ... (N from 1 to 26; the first two carry the
//! gateway label); without the chart there are no samples either.

use std::time::Duration;

use nno_e2e::local::{LocalCluster, NodeSpec};
use nno_e2e::scenarios::{self, NAMESPACE, RELEASE};
use nno_e2e::testbed::{Testbed, kubectl};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let chart = !args.iter().any(|a| a == "--no-chart");
    let samples = chart && !args.iter().any(|a| a == "--no-samples");
    let count: usize = match args.iter().position(|a| a == "--nodes") {
        Some(i) => args
            .get(i + 1)
            .and_then(|n| n.parse().ok())
            .filter(|n| (1..=26).contains(n))
            .ok_or_else(|| anyhow::anyhow!("--nodes takes a number from 1 to 26"))?,
        None => 3,
    };
    let gateway = [("nno.dev/gateway-network", "true")];
    let names: Vec<String> = (0..count)
        .map(|i| format!("node-{}", char::from(b'a' + i as u8)))
        .collect();
    let specs: Vec<NodeSpec> = names
        .iter()
        .enumerate()
        .map(|(i, name)| NodeSpec {
            name,
            labels: if i < 2 { &gateway } else { &[] },
        })
        .collect();
    println!("starting the control plane and {count} real nodes (containerd, kubelet, kube-proxy)");
    let local = LocalCluster::start(&specs).await?;
    println!("control plane at {}", local.cluster.server());
    for node in &local.nodes {
        println!(
            "node {} ({}, pods {}) in network namespace {}",
            node.name,
            node.address,
            node.pod_cidr.map(|c| c.to_string()).unwrap_or_default(),
            node.netns
        );
    }
    let tb: &dyn Testbed = &local;
    if chart {
        println!(
            "\n$ helm install {RELEASE} charts/node-network-operator --namespace {NAMESPACE} --create-namespace --wait"
        );
        scenarios::install_chart(tb, &[]).await?;
        println!(
            "{}",
            kubectl(tb, &["get", "pods", "-n", NAMESPACE, "-o", "wide"])?
        );
    }

    if samples {
        for file in scenarios::sample_files()? {
            println!("$ kubectl apply -f {}", file.display());
            print!("{}", kubectl(tb, &["apply", "-f", &file.display().to_string()])?);
        }
        println!("\nthe gateway network at work:");
        scenarios::gateway_demo(tb).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!();
        println!("{}", kubectl(tb, &["get", "networks,links", "-o", "wide"])?);
        println!("{}", kubectl(tb, &["get", "pods", "-o", "wide"])?);
    }
    print_cost(&local).await;
    let node = &local.nodes[0];
    println!("logs of every component: {}", local.cluster.dir().display());
    println!("try it:");
    println!("  export KUBECONFIG={}", local.cluster.kubeconfig().display());
    println!("  kubectl get networks,nodenetworkstates,net-attach-def -A");
    println!(
        "  kubectl exec client -- ping -c 3 {}   # leaves through the router's node",
        local.outside.address
    );
    println!("  kubectl apply -f your-network.yaml    # and pods annotated k8s.v1.cni.cncf.io/networks");
    println!("  ip netns exec {} ip -d link show type bridge", node.netns);
    println!("press Ctrl-C to stop and remove everything");
    tokio::signal::ctrl_c().await?;
    println!("stopping");
    Ok(())
}

/// What each node costs, measured: resident memory by program, and CPU over 10 s
/// of the cluster at rest.
async fn print_cost(local: &LocalCluster) {
    const WINDOW: Duration = Duration::from_secs(10);
    let before: Vec<_> = local.nodes.iter().map(|n| n.usage()).collect();
    tokio::time::sleep(WINDOW).await;
    println!("what a node costs here (resident memory; CPU over {WINDOW:?} at rest):");
    for (node, before) in local.nodes.iter().zip(before) {
        let now = node.usage();
        let cpu = (now.cpu_ns.saturating_sub(before.cpu_ns)) as f64 / WINDOW.as_nanos() as f64 * 100.0;
        let programs: Vec<String> = now
            .rss
            .iter()
            .map(|(name, (count, bytes))| {
                let mib = *bytes as f64 / (1 << 20) as f64;
                if *count > 1 {
                    format!("{name} {count}x {mib:.0} MiB")
                } else {
                    format!("{name} {mib:.0} MiB")
                }
            })
            .collect();
        println!(
            "  {}: {:.0} MiB, {cpu:.1} % of a core ({})",
            node.name,
            now.total_rss() as f64 / (1 << 20) as f64,
            programs.join(", ")
        );
    }
}
