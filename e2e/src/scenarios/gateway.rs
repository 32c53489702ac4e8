//! The headline (client traffic out through the router pod on another node) and the cluster that stays reachable around it.

use super::*;

/// What the sample gateway pods did: where they ran, and what the outside host
/// received from each node while the client pinged it.
pub struct GatewayDemo {
    pub client_node: String,
    pub router_node: String,
    pub sent: u64,
    pub received: u64,
    pub from_router_node: u64,
    pub from_client_node: u64,
}

/// The sample pods (samples/gateway-network/pods.yaml) applied with kubectl next to
/// the sample Network `gateway`, Ready, and the client pinging the outside host.
pub async fn gateway_demo(tb: &dyn Testbed) -> anyhow::Result<GatewayDemo> {
    kubectl(
        tb,
        &[
            "wait",
            "--for=condition=Ready",
            "network/gateway",
            "--timeout=120s",
        ],
    )?;
    let pods = repo("samples/gateway-network/pods.yaml");
    println!("$ kubectl apply -f {}", pods.display());
    kubectl(tb, &["apply", "-n", "default", "-f", &pods.display().to_string()])?;
    pods_ready(tb, &["pod/client", "pod/router"], 180)?;
    let client_node = pod_node(tb, "default", "client").await?;
    let router_node = pod_node(tb, "default", "router").await?;
    let (client_ip, router_ip) = (
        node_ip(tb, &client_node).await?.to_string(),
        node_ip(tb, &router_node).await?.to_string(),
    );
    let outside = tb.outside();
    outside.count_from(&client_ip)?;
    outside.count_from(&router_ip)?;
    let before = (
        outside.received_from(&client_ip)?,
        outside.received_from(&router_ip)?,
    );
    let target = outside.address();
    println!("$ kubectl exec client -- ping -c 5 {target}");
    let ping = in_pod(
        tb,
        "client",
        &["ping", "-c", "5", "-i", "0.2", "-W", "2", &target],
    )?;
    let (sent, received) = ping_counts(&ping)?;
    let demo = GatewayDemo {
        from_client_node: outside.received_from(&client_ip)? - before.0,
        from_router_node: outside.received_from(&router_ip)? - before.1,
        client_node,
        router_node,
        sent,
        received,
    };
    println!(
        "client on {}, router on {}: {} of {} pings answered; the outside host {target} received {} from {} (the router's node) and {} from {} (the client's)",
        demo.client_node,
        demo.router_node,
        demo.received,
        demo.sent,
        demo.from_router_node,
        demo.router_node,
        demo.from_client_node,
        demo.client_node
    );
    Ok(demo)
}

/// The headline, as a user does it: the sample Network and the sample pods applied
/// with kubectl; the scheduler places client and router on different nodes; the
/// client's traffic to a host outside the cluster leaves through the router's node.
pub(super) async fn gateway(tb: &dyn Testbed) -> anyhow::Result<()> {
    let network = repo("samples/gateway-network/multi-node.yaml");
    kubectl(tb, &["apply", "-f", &network.display().to_string()])?;
    let demo = gateway_demo(tb).await?;
    anyhow::ensure!(
        demo.client_node != demo.router_node,
        "client and router both on {}",
        demo.client_node
    );
    let route = in_pod(tb, "client", &["ip", "route", "get", &tb.outside().address()])?;
    anyhow::ensure!(
        route.contains("via 192.168.50.1 dev net1"),
        "client route: {route}"
    );
    anyhow::ensure!(
        demo.sent == 5 && demo.received == 5,
        "{} of {} answered",
        demo.received,
        demo.sent
    );
    anyhow::ensure!(
        demo.from_router_node >= 5,
        "from the router's node: {}",
        demo.from_router_node
    );
    anyhow::ensure!(
        demo.from_client_node == 0,
        "straight from the client's node: {}",
        demo.from_client_node
    );
    Ok(())
}

/// Packets the router pod forwarded so far (its FORWARD chain's policy counter).
fn router_forwarded(tb: &dyn Testbed) -> anyhow::Result<u64> {
    let out = in_pod(tb, "router", &["iptables", "-L", "FORWARD", "-v", "-x", "-n"])?;
    let line = out.lines().next().unwrap_or_default();
    line.split("policy ACCEPT ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no FORWARD counter in: {out}"))
}

/// One TCP exchange from pod `from` to `address:port` (socat): what came back.
fn tcp(tb: &dyn Testbed, from: &str, address: &str, port: u16) -> anyhow::Result<String> {
    let target = format!("TCP:{address}:{port},connect-timeout=3");
    in_pod(tb, from, &["socat", "-T", "3", "-", &target])
}

/// The cluster stays reachable from a gateway client, and the client from the
/// cluster: with gateway routing the client reaches a ClusterIP Service whose
/// backend runs on a third node without the router seeing any of it; a pod on
/// another node reaches the client on its eth0 address and through a Service that
/// selects it, and gets the replies; a ServiceCIDR added to the cluster appears in
/// the NADs' routes without a restart.
pub(super) async fn cluster(tb: &dyn Testbed) -> anyhow::Result<()> {
    let client_node = pod_node(tb, "default", "client").await?;
    let router_node = pod_node(tb, "default", "router").await?;
    let third = tb
        .nodes()
        .into_iter()
        .find(|n| *n != client_node && *n != router_node)
        .ok_or_else(|| anyhow::anyhow!("a third node is needed"))?;
    let echo = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: echo
  namespace: default
  labels: {{app.kubernetes.io/name: echo}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {third}}}
  terminationGracePeriodSeconds: 1
  containers:
    - name: echo
      image: {image}
      imagePullPolicy: IfNotPresent
      command: [socat, "TCP-LISTEN:8080,fork,reuseaddr", "SYSTEM:echo echo-reply"]
---
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: default
spec:
  selector: {{app.kubernetes.io/name: echo}}
  ports: [{{port: 8080}}]
---
apiVersion: v1
kind: Service
metadata:
  name: client
  namespace: default
spec:
  selector: {{app.kubernetes.io/name: gateway-client}}
  ports: [{{port: 8080}}]
"#,
        image = crate::image::TOOLS_IMAGE
    );
    apply(tb, &echo)?;
    pods_ready(tb, &["pod/echo"], 120)?;
    let echo_ip = kubectl(
        tb,
        &[
            "get",
            "service",
            "-n",
            "default",
            "echo",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    )?;
    let client_svc = kubectl(
        tb,
        &[
            "get",
            "service",
            "-n",
            "default",
            "client",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    )?;

    // Client -> a Service backed on a third node: on eth0, never through the router.
    let forwarded = router_forwarded(tb)?;
    let reply = until("the client reaches the echo Service", WAIT, || async {
        let r = tcp(tb, "client", &echo_ip, 8080)?;
        anyhow::ensure!(r.contains("echo-reply"), "reply {r:?}");
        Ok(r)
    })
    .await?;
    let route = in_pod(tb, "client", &["ip", "route", "get", &echo_ip])?;
    anyhow::ensure!(
        route.contains("dev eth0"),
        "the Service is reached over eth0: {route}"
    );
    anyhow::ensure!(
        router_forwarded(tb)? == forwarded,
        "the router forwarded cluster traffic ({} packets)",
        router_forwarded(tb)? - forwarded
    );
    println!(
        "client -> Service echo ({echo_ip}, backend on {third}): {:?} over eth0, 0 packets through the router",
        reply.trim()
    );

    // A pod on another node -> the client, on its eth0 address and through a Service.
    in_pod(
        tb,
        "client",
        &[
            "sh",
            "-c",
            "socat TCP-LISTEN:8080,fork,reuseaddr 'SYSTEM:echo client-reply' >/dev/null 2>&1 &",
        ],
    )?;
    let client_ip = kubectl(
        tb,
        &[
            "get",
            "pod",
            "-n",
            "default",
            "client",
            "-o",
            "jsonpath={.status.podIP}",
        ],
    )?;
    for (what, address) in [
        ("eth0 address", client_ip.as_str()),
        ("Service client", client_svc.as_str()),
    ] {
        let reply = until(&format!("echo reaches the client's {what}"), WAIT, || async {
            let r = tcp(tb, "echo", address, 8080)?;
            anyhow::ensure!(r.contains("client-reply"), "reply {r:?}");
            Ok(r)
        })
        .await?;
        println!(
            "pod echo on {third} -> client's {what} ({address}): {:?}",
            reply.trim()
        );
    }
    anyhow::ensure!(
        router_forwarded(tb)? == forwarded,
        "the router forwarded the replies"
    );

    // A ServiceCIDR added to the cluster: in the NADs' routes at once.
    apply(
        tb,
        "apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata:\n  name: nno-e2e-extra\nspec:\n  cidrs: [198.19.144.0/20]\n",
    )?;
    let probe: std::net::IpAddr = "198.19.144.1".parse()?;
    until("the new ServiceCIDR kept off the gateway", WAIT, || async {
        let nad: Value = json(tb, &["get", "net-attach-def", "-n", "default", "gateway"])?;
        let config: Value = serde_json::from_str(nad["spec"]["config"].as_str().unwrap_or("{}"))?;
        let routes = config["plugins"][1]["ipam"]["routes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        anyhow::ensure!(!routes.is_empty(), "no gateway routes in {config}");
        let covered = routes.iter().any(|r| {
            r["dst"]
                .as_str()
                .and_then(|d| d.parse::<ipnet::IpNet>().ok())
                .is_some_and(|d| d.contains(&probe))
        });
        anyhow::ensure!(!covered, "198.19.144.1 still routed via the gateway");
        let status: Value = json(tb, &["get", "network", "gateway"])?;
        let excludes = status["status"]["gatewayExcludes"].to_string();
        anyhow::ensure!(excludes.contains("198.19.1"), "gatewayExcludes: {excludes}");
        Ok(())
    })
    .await?;
    kubectl(tb, &["delete", "servicecidr", "nno-e2e-extra", "--wait=false"])?;
    kubectl(
        tb,
        &[
            "delete",
            "-n",
            "default",
            "pod/echo",
            "service/echo",
            "service/client",
            "--wait=false",
        ],
    )?;
    Ok(())
}
