//! The data path across repairs, agent restarts, gating and drift.

use super::*;

/// Pings the router's gateway address from the client until one is answered (every
/// 100 ms); how long that took.
pub(super) async fn ping_back(tb: &dyn Testbed, within: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    until(
        "the client reaches the router across the VXLAN",
        within,
        || async { in_pod(tb, "client", &["ping", "-c", "1", "-W", "1", "192.168.50.1"]).map(|_| ()) },
    )
    .await?;
    Ok(started.elapsed())
}

/// `count` pings from the client to the router, every 100 ms: (sent, received).
pub(super) fn ping_router(tb: &dyn Testbed, count: u32) -> anyhow::Result<(u64, u64)> {
    let out = in_pod(
        tb,
        "client",
        &[
            "ping",
            "-c",
            &count.to_string(),
            "-i",
            "0.1",
            "-W",
            "1",
            "192.168.50.1",
        ],
    )
    .or_else(|e| Ok::<_, anyhow::Error>(format!("{e:#}")))?;
    ping_counts(&out)
}

/// Out-of-band changes on the router's node, each repaired by the agent, the
/// pods' traffic across the gateway network back at once and staying up: the bridge
/// deleted (its pod ports attached again), the VXLAN deleted, the router's port
/// removed from the bridge, the bridge set down, the VXLAN's MTU changed, the
/// VXLAN's FDB entry for its group removed.
pub(super) async fn repair(tb: &dyn Testbed) -> anyhow::Result<()> {
    let node = pod_node(tb, "default", "router").await?;
    let (sent, received) = ping_router(tb, 5)?;
    anyhow::ensure!(sent == 5 && received == 5, "before: {received} of {sent}");
    let router_port = tb
        .on_node(
            &node,
            "ip",
            &["-o", "link", "show", "master", "br-gateway", "type", "veth"],
        )?
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .next()
        .ok_or_else(|| anyhow::anyhow!("no pod port in br-gateway on {node}"))?;
    // The FDB entry removed: the group's own all-zero entry, after the MACs the
    // VXLAN learned, so that every frame to the client needs the flood it gave.
    let fdb_removed = "bridge fdb show dev vxlan5088 | awk '/ self/ && $1 != \"00:00:00:00:00:00\" {print $1}' \
        | while read -r mac; do bridge fdb del \"$mac\" dev vxlan5088 self; done; \
        via=$(bridge fdb show dev vxlan5088 | awk '$1 == \"00:00:00:00:00:00\" && $3 == \"239.1.1.88\" {print $5}'); \
        bridge fdb del 00:00:00:00:00:00 dev vxlan5088 dst 239.1.1.88 via \"$via\"";
    let changes: Vec<(&str, &str, Vec<&str>)> = vec![
        ("bridge deleted", "ip", vec!["link", "del", "br-gateway"]),
        ("VXLAN deleted", "ip", vec!["link", "del", "vxlan5088"]),
        (
            "pod port removed",
            "ip",
            vec!["link", "set", &router_port, "nomaster"],
        ),
        ("bridge set down", "ip", vec!["link", "set", "br-gateway", "down"]),
        (
            "VXLAN MTU changed",
            "ip",
            vec!["link", "set", "vxlan5088", "mtu", "1300"],
        ),
        ("FDB entry removed", "sh", vec!["-c", fdb_removed]),
    ];
    for (what, command, args) in changes {
        tb.on_node(&node, command, &args)?;
        let back = ping_back(tb, Duration::from_secs(10)).await?;
        let (sent, received) = ping_router(tb, 10)?;
        println!("{what} on {node}: traffic back in {back:.1?}, then {received} of {sent} pings answered");
        anyhow::ensure!(
            back < Duration::from_secs(3),
            "{what}: traffic back only after {back:?}"
        );
        anyhow::ensure!(
            sent == 10 && received == 10,
            "{what}: traffic does not stay up: {received} of {sent}"
        );
        vxlan_in_bridge(tb, &node, "vxlan5088", "br-gateway")?;
        let ports = tb.on_node(&node, "ip", &["-o", "link", "show", "master", "br-gateway"])?;
        anyhow::ensure!(
            ports.contains(&router_port),
            "{what}: the router's port is back: {ports}"
        );
        let fdb = tb.on_node(&node, "bridge", &["fdb", "show", "dev", "vxlan5088"])?;
        anyhow::ensure!(
            fdb.contains("00:00:00:00:00:00 dst 239.1.1.88"),
            "{what}: the group's FDB entry is there: {fdb}"
        );
    }
    Ok(())
}

/// The agent killed (SIGKILL) during a ping through the gateway: restarted by the
/// kubelet, it makes no netlink write, and no packet is lost.
pub(super) async fn restart(tb: &dyn Testbed) -> anyhow::Result<()> {
    let node = pod_node(tb, "default", "router").await?;
    let agent = agent_pod_on(tb, &node).await?;
    let restarts = |pod: &Pod| {
        pod.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.iter().find(|c| c.name == "agent"))
            .map_or(0, |c| c.restart_count)
    };
    let pods: Api<Pod> = Api::namespaced(tb.client(), NAMESPACE);
    let before = restarts(&pods.get(&agent).await?);
    // Under the chart's security context (read-only root filesystem) the agent keeps
    // the generations in force in its socket directory, the hostPath that outlives it.
    let state: Value = serde_json::from_str(&tb.on_node(&node, "cat", &["/run/nno/agent-state.json"])?)?;
    anyhow::ensure!(
        state["Network/gateway"]["good"]["generation"].is_i64(),
        "the agent's state file has the gateway Network's generation: {state}"
    );
    let mut ping = background_ping(tb, "client", "/tmp/restart-ping.log")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    tb.signal_agent(&node, "KILL")?;
    until("the agent restarted and Ready", WAIT, || async {
        let pod = pods.get(&agent).await?;
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        anyhow::ensure!(restarts(&pod) > before && ready, "restarts {}", restarts(&pod));
        Ok(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = agent_metric(tb, &node, "nno_agent_netlink_writes")?;
    let (sent, received, _) = stop_background_ping(tb, "client", &mut ping, "/tmp/restart-ping.log")?;
    println!(
        "agent on {node} killed and restarted: {writes} netlink writes; {received} of {sent} pings answered"
    );
    anyhow::ensure!(writes == 0.0, "the restarted agent wrote {writes} times");
    anyhow::ensure!(
        sent > 10 && sent == received,
        "packets lost across the restart: {received} of {sent}"
    );
    Ok(())
}

/// A ping from `pod` to the outside host in the background, every 100 ms, each
/// line stamped (`-D`) and each missing answer said (`-O`), logging to `log` in
/// the pod.
pub(super) fn background_ping(tb: &dyn Testbed, pod: &str, log: &str) -> anyhow::Result<std::process::Child> {
    Ok(std::process::Command::new(crate::tools::tool("kubectl"))
        .arg("--kubeconfig")
        .arg(tb.kubeconfig())
        .args(["exec", "-n", "default", pod, "--", "sh", "-c"])
        .arg(format!(
            "ping -D -O -i 0.1 -W 1 {} > {log} 2>&1",
            tb.outside().address()
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?)
}

/// Stops [`background_ping`] (SIGINT, so that ping prints its summary): (sent,
/// received) and the log.
pub(super) fn stop_background_ping(
    tb: &dyn Testbed,
    pod: &str,
    ping: &mut std::process::Child,
    log: &str,
) -> anyhow::Result<(u64, u64, String)> {
    let _ = in_pod(tb, pod, &["pkill", "-INT", "ping"]);
    let _ = ping.wait();
    let out = in_pod(tb, pod, &["cat", log])?;
    let (sent, received) = ping_counts(&out)?;
    Ok((sent, received, out))
}

/// A metric of the agent on `node`, read from its port on the node's loopback.
pub(super) fn agent_metric(tb: &dyn Testbed, node: &str, name: &str) -> anyhow::Result<f64> {
    let text = tb.on_node(
        node,
        "bash",
        &[
            "-c",
            "exec 3<>/dev/tcp/127.0.0.1/9092 && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3",
        ],
    )?;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            key.starts_with(name).then(|| value.trim().parse().ok())?
        })
        .ok_or_else(|| anyhow::anyhow!("no metric {name} from the agent on {node}:\n{}", tail(&text, 20)))
}

/// A pod on a node whose bridge is not Ready waits in ContainerCreating with the
/// shim's reason in its events, never attached by the bridge plugin, and starts on
/// its own once the bridge is Ready.
pub(super) async fn gating(tb: &dyn Testbed) -> anyhow::Result<()> {
    let node = tb
        .nodes()
        .last()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no nodes"))?;
    let network = format!(
        r#"apiVersion: nno.dev/v1alpha1
kind: Network
metadata:
  name: late
spec:
  nodeSelector:
    matchLabels:
      kubernetes.io/hostname: {node}
  bridge:
    name: br-late
  vxlan:
    vni: 5077
    group: 239.1.1.77
    device: carrier0
  mtu: 1400
  ipam:
    range: 192.168.51.0/24
  attachments:
    namespaces: [default]
"#
    );
    apply(tb, &network)?;
    until("the NAD default/late", WAIT, || async {
        kubectl(tb, &["get", "net-attach-def", "-n", "default", "late"]).map(|_| ())
    })
    .await?;
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: waits
  namespace: default
  annotations:
    k8s.v1.cni.cncf.io/networks: late
spec:
  nodeSelector:
    kubernetes.io/hostname: {node}
  terminationGracePeriodSeconds: 1
  containers:
    - name: app
      image: {}
      imagePullPolicy: IfNotPresent
      command: [sleep, infinity]
"#,
        crate::image::TOOLS_IMAGE
    );
    apply(tb, &pod)?;
    let refusal = until("the shim's refusal in the pod's events", WAIT, || async {
        let events: Api<Event> = Api::namespaced(tb.client(), "default");
        let list = events
            .list(&ListParams::default().fields("involvedObject.name=waits"))
            .await?;
        list.items
            .iter()
            .filter_map(|e| e.message.clone())
            .find(|m| m.contains("br-late"))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "events: {:?}",
                    list.items.iter().map(|e| &e.message).collect::<Vec<_>>()
                )
            })
    })
    .await?;
    println!("event: {refusal}");
    for expected in ["br-late", &node, "CarrierMissing", "carrier0"] {
        anyhow::ensure!(
            refusal.contains(expected),
            "the refusal names {expected}: {refusal}"
        );
    }
    let pods: Api<Pod> = Api::namespaced(tb.client(), "default");
    let status = serde_json::to_value(pods.get("waits").await?.status)?;
    anyhow::ensure!(
        status["containerStatuses"].is_null()
            || status["containerStatuses"][0]["state"]["waiting"]["reason"] == "ContainerCreating",
        "the pod waits in ContainerCreating: {status}"
    );
    let ports = tb
        .on_node(&node, "ip", &["-o", "link", "show", "master", "br-late"])
        .unwrap_or_default();
    anyhow::ensure!(
        !ports.contains("veth"),
        "the bridge plugin ran while not Ready: {ports}"
    );

    tb.on_node(
        &node,
        "ip",
        &[
            "link",
            "add",
            "carrier0",
            "type",
            "veth",
            "peer",
            "name",
            "carrier0p",
        ],
    )?;
    tb.on_node(
        &node,
        "ip",
        &["addr", "add", "198.19.254.1/32", "dev", "carrier0"],
    )?;
    tb.on_node(&node, "ip", &["link", "set", "carrier0p", "up"])?;
    tb.on_node(&node, "ip", &["link", "set", "carrier0", "up"])?;
    let carrier_at = Instant::now();
    pods_ready(tb, &["pod/waits"], 120)?;
    println!(
        "pod Running {:.1?} after the carrier appeared",
        carrier_at.elapsed()
    );
    let ports = tb.on_node(&node, "ip", &["-o", "link", "show", "master", "br-late"])?;
    anyhow::ensure!(ports.contains("veth"), "the pod's veth in br-late: {ports}");
    kubectl(tb, &["delete", "-n", "default", "pod/waits", "--wait=true"])?;
    kubectl(tb, &["delete", "network/late", "--wait=true", "--timeout=60s"])?;
    tb.on_node(&node, "ip", &["link", "del", "carrier0"])?;
    Ok(())
}

/// The agent under the chart's security context repairs drift: a bridge deleted
/// out of band is back at once; and also after its netlink event subscription
/// ended (the agent stopped while the node's links churned overflows its socket)
/// and was renewed.
pub(super) async fn drift(tb: &dyn Testbed) -> anyhow::Result<()> {
    let network = r#"apiVersion: nno.dev/v1alpha1
kind: Network
metadata:
  name: drift
spec:
  bridge:
    name: br-drift
  vxlan:
    vni: 5090
    group: 239.1.1.90
  ipam:
    range: 192.168.52.0/24
  attachments:
    namespaces: [default]
"#;
    apply(tb, network)?;
    kubectl(
        tb,
        &["wait", "--for=condition=Ready", "network/drift", "--timeout=120s"],
    )?;
    let node = tb.nodes()[0].clone();

    let before = ifindex(tb, &node, "br-drift")?;
    tb.on_node(&node, "ip", &["link", "del", "br-drift"])?;
    let deleted = Instant::now();
    let after = until(
        "br-drift back with its VXLAN",
        Duration::from_secs(10),
        || async {
            vxlan_in_bridge(tb, &node, "vxlan5090", "br-drift")?;
            ifindex(tb, &node, "br-drift")
        },
    )
    .await?;
    println!(
        "br-drift on {node} back in {:.0?} (ifindex {before} -> {after})",
        deleted.elapsed()
    );
    anyhow::ensure!(before != after, "a new bridge");

    // Stop the agent, churn enough link events to overflow its event socket, delete
    // the bridge meanwhile, let it run again: it finds the overflow, subscribes
    // again, and repairs what happened while it slept.
    tb.on_node(
        &node,
        "ip",
        &[
            "link",
            "add",
            "nnoflood0",
            "type",
            "veth",
            "peer",
            "name",
            "nnoflood1",
        ],
    )?;
    tb.signal_agent(&node, "STOP")?;
    let churn = tb.on_node(
        &node,
        "sh",
        &[
            "-c",
            "i=0; while [ $i -lt 12000 ]; do echo \"link set nnoflood0 mtu $((1400 + i % 2))\"; i=$((i+1)); done | ip -batch - && ip link del br-drift",
        ],
    );
    tb.signal_agent(&node, "CONT")?;
    churn?;
    let resumed = Instant::now();
    until(
        "br-drift back after the overflow",
        Duration::from_secs(10),
        || async { vxlan_in_bridge(tb, &node, "vxlan5090", "br-drift") },
    )
    .await?;
    println!(
        "br-drift on {node} back {:.0?} after the agent resumed",
        resumed.elapsed()
    );
    let agent = agent_pod_on(tb, &node).await?;
    let logs = kubectl(tb, &["logs", "-n", NAMESPACE, &agent, "-c", "agent"])?;
    anyhow::ensure!(
        logs.contains("subscribing again"),
        "the agent renewed its subscription:\n{}",
        tail(&logs, 20)
    );
    tb.on_node(&node, "ip", &["link", "del", "nnoflood0"])?;

    // The node's state says so.
    until("NodeNetworkState reports br-drift Ready", WAIT, || async {
        let state: Value = json(tb, &["get", "nodenetworkstate", &node])?;
        let ready = state["status"]["interfaces"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| i["name"] == "br-drift" && i["ready"] == true);
        anyhow::ensure!(ready, "{}", state["status"]);
        Ok(())
    })
    .await?;
    kubectl(tb, &["delete", "network/drift", "--wait=true", "--timeout=60s"])?;
    Ok(())
}
