//! The chart's life as a user lives it: `helm install`, `helm upgrade`, `helm uninstall`.

use super::repair::{background_ping, stop_background_ping};
use super::*;

/// `helm install` of the chart, as the README says, and what it must leave running:
/// two controller replicas, an agent on every node under the chart's exact security
/// context (CAP_NET_ADMIN, nothing more), nno-cni-shim in every node's CNI bin
/// directory, every node's NodeNetworkState; `kubectl logs` and `kubectl exec` work.
pub(super) async fn chart(tb: &dyn Testbed) -> anyhow::Result<()> {
    install_chart(tb, &[]).await?;

    let deploy: Value = json(
        tb,
        &[
            "get",
            "deployment",
            "-n",
            NAMESPACE,
            "-l",
            "app.kubernetes.io/component=controller",
        ],
    )?;
    let controller = &deploy["items"][0];
    anyhow::ensure!(
        controller["status"]["readyReplicas"] == 2,
        "controller replicas ready: {}",
        controller["status"]
    );
    let nodes = tb.nodes();
    let agents = agent_pods(tb).await?;
    anyhow::ensure!(
        agents.len() == nodes.len(),
        "{} agents for {} nodes",
        agents.len(),
        nodes.len()
    );

    // The agent runs with exactly the security context the chart renders.
    let rendered = render_chart(tb)?;
    let ds = rendered
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .ok_or_else(|| anyhow::anyhow!("no DaemonSet in the chart"))?;
    let want = &ds["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    for pod in &agents {
        let pod = serde_json::to_value(pod)?;
        let got = &pod["spec"]["containers"][0]["securityContext"];
        anyhow::ensure!(got == want, "agent security context {got} != chart's {want}");
        anyhow::ensure!(pod["spec"]["hostNetwork"] == true);
    }
    for node in &nodes {
        tb.on_node(node, "test", &["-x", "/opt/cni/bin/nno-cni-shim"])
            .map_err(|e| anyhow::anyhow!("nno-cni-shim not installed on {node}: {e}"))?;
    }
    until("every node's NodeNetworkState", WAIT, || async {
        let states: Value = json(tb, &["get", "nodenetworkstates"])?;
        let names: Vec<&str> = states["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["metadata"]["name"].as_str())
            .collect();
        let missing: Vec<&String> = nodes.iter().filter(|n| !names.contains(&n.as_str())).collect();
        anyhow::ensure!(missing.is_empty(), "missing for {missing:?}");
        Ok(())
    })
    .await?;

    let agent = agents[0].metadata.name.clone().unwrap_or_default();
    let logs = kubectl(tb, &["logs", "-n", NAMESPACE, &agent, "-c", "agent"])?;
    anyhow::ensure!(!logs.trim().is_empty(), "kubectl logs {agent}: empty");
    let version = kubectl(
        tb,
        &[
            "exec",
            "-n",
            NAMESPACE,
            &agent,
            "-c",
            "agent",
            "--",
            "/usr/local/bin/node-network-operator",
            "--version",
        ],
    )?;
    anyhow::ensure!(
        version.contains("node-network-operator"),
        "kubectl exec: {version}"
    );
    Ok(())
}

/// `helm upgrade` to a new image tag rolls every agent and the controller with no
/// link recreated and no packet lost: the client pings the outside host through the
/// router across the whole upgrade.
pub(super) async fn upgrade(tb: &dyn Testbed) -> anyhow::Result<()> {
    let nodes = tb.nodes();
    let links_before = gateway_links(tb, &nodes);
    let old: Vec<String> = agent_pods(tb)
        .await?
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    let mut ping = background_ping(tb, "client", "/tmp/upgrade-ping.log")?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let started = Instant::now();
    let upgraded = helm_chart(tb, "upgrade", &[format!("image.tag={}", tb.upgrade_tag())]);
    let rolled = agents_rolled_out(tb, 300);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pinged = stop_background_ping(tb, "client", &mut ping, "/tmp/upgrade-ping.log");
    upgraded?;
    rolled?;
    println!("helm upgrade and agent rollout: {:.1?}", started.elapsed());
    let (sent, received, _) = pinged?;
    println!("ping through the gateway across the upgrade: {sent} sent, {received} received");
    anyhow::ensure!(
        sent > 20 && sent == received,
        "packets lost across the upgrade: {received} of {sent}"
    );

    let agents = agent_pods(tb).await?;
    anyhow::ensure!(agents.len() == nodes.len(), "{} agents", agents.len());
    for pod in &agents {
        anyhow::ensure!(
            !old.contains(pod.metadata.uid.as_ref().unwrap_or(&String::new())),
            "agent {:?} was not replaced",
            pod.metadata.name
        );
        let image = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        anyhow::ensure!(
            image.ends_with(&format!(":{}", tb.upgrade_tag())),
            "agent image {image}"
        );
    }
    let links_after = gateway_links(tb, &nodes);
    anyhow::ensure!(
        links_before == links_after,
        "links recreated by the upgrade: {links_before:?} -> {links_after:?}"
    );
    Ok(())
}

/// `helm uninstall` removes the controller and the agents; what they made stays (the
/// links on the nodes, the NADs, the Networks) and the pods keep their traffic.
pub(super) async fn uninstall(tb: &dyn Testbed) -> anyhow::Result<()> {
    let nodes = tb.nodes();
    let links = gateway_links(tb, &nodes);
    helm(
        tb,
        &[
            "uninstall",
            RELEASE,
            "--namespace",
            NAMESPACE,
            "--wait",
            "--timeout=3m",
        ],
    )?;
    until("no operator pods left", WAIT, || async {
        let pods = kubectl(tb, &["get", "pods", "-n", NAMESPACE, "-o", "name"])?;
        anyhow::ensure!(pods.trim().is_empty(), "{pods}");
        Ok(())
    })
    .await?;
    anyhow::ensure!(
        gateway_links(tb, &nodes) == links,
        "links changed by the uninstall"
    );
    kubectl(
        tb,
        &[
            "get",
            "net-attach-def",
            "-n",
            "default",
            "gateway",
            "gateway-router",
        ],
    )?;
    let ping = in_pod(
        tb,
        "client",
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", &tb.outside().address()],
    )?;
    let (sent, received) = ping_counts(&ping)?;
    anyhow::ensure!(sent == 3 && received == 3, "traffic after uninstall: {ping}");
    Ok(())
}
