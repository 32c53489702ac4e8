//! The end-to-end scenarios, written once against [`Testbed`]: what a user does with
//! `helm`, `kubectl` and the samples, and what they must see, proven with traffic.
//! They share one cluster and run in order ([`run`]); each leaves the cluster as the
//! next expects it (the chart installed, the sample gateway pods running, until
//! `uninstall`).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams};
use serde_json::Value;

use crate::testbed::{Testbed, apply, helm, kubectl, until};

/// Helm release and namespace the scenarios install the chart as.
pub const RELEASE: &str = "nno";
pub const NAMESPACE: &str = "nno-system";
/// Seconds nno-cni-shim holds an attachment here (chart default 20): the gating
/// scenario waits for one refusal.
const SHIM_TIMEOUT: &str = "5";
const WAIT: Duration = Duration::from_secs(120);

/// One scenario's outcome.
pub struct Outcome {
    pub name: &'static str,
    pub elapsed: Duration,
    pub result: anyhow::Result<()>,
}

/// The scenarios in the order they run.
pub const ALL: &[&str] = &[
    "chart",
    "gateway",
    "cluster",
    "repair",
    "restart",
    "gating",
    "drift",
    "upgrade",
    "uninstall",
];

/// Runs the scenarios named in `only` (all when empty), in order, each after the
/// ones before it (a failed one does not stop the rest), printing each outcome.
pub async fn run(tb: &dyn Testbed, only: &[String]) -> Vec<Outcome> {
    let mut out = Vec::new();
    for name in ALL {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        let started = Instant::now();
        println!("=== scenario {name} ({})", tb.kind());
        let result = match *name {
            "chart" => chart(tb).await,
            "gateway" => gateway(tb).await,
            "cluster" => cluster(tb).await,
            "repair" => repair(tb).await,
            "restart" => restart(tb).await,
            "gating" => gating(tb).await,
            "drift" => drift(tb).await,
            "upgrade" => upgrade(tb).await,
            "uninstall" => uninstall(tb).await,
            _ => unreachable!("every name in ALL has a scenario"),
        };
        let elapsed = started.elapsed();
        match &result {
            Ok(()) => println!("--- scenario {name}: ok in {elapsed:.1?}"),
            Err(e) => {
                println!("--- scenario {name}: FAILED in {elapsed:.1?}: {e:#}");
                println!("{}", diagnostics(tb));
            }
        }
        out.push(Outcome {
            name,
            elapsed,
            result,
        });
    }
    out
}

/// What the cluster looks like, for a failed scenario's report.
pub fn diagnostics(tb: &dyn Testbed) -> String {
    let mut out = String::new();
    for args in [
        &["get", "nodes,pods", "-A", "-o", "wide"][..],
        &["get", "networks,links,nodenetworkstates", "-o", "wide"][..],
        &["get", "events", "-A", "--sort-by=.lastTimestamp"][..],
    ] {
        out.push_str(&format!("$ kubectl {}\n", args.join(" ")));
        match kubectl(tb, args) {
            Ok(text) => out.push_str(&tail(&text, 40)),
            Err(e) => out.push_str(&format!("{e:#}")),
        }
        out.push('\n');
    }
    out
}

/// The repository's chart and samples.
fn repo(path: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn chart_args(tb: &dyn Testbed, extra: &[String]) -> Vec<String> {
    let mut args = Vec::new();
    for value in tb
        .chart_values()
        .into_iter()
        .chain([format!("controller.shimTimeoutSeconds={SHIM_TIMEOUT}")])
        .chain(extra.iter().cloned())
    {
        args.push("--set".to_string());
        args.push(value);
    }
    args
}

/// `helm install` of the chart with `extra` `--set` values, waiting for it as the
/// README says.
pub async fn install_chart(tb: &dyn Testbed, extra: &[String]) -> anyhow::Result<()> {
    let started = Instant::now();
    helm_chart(tb, "install", extra)?;
    println!("helm install --wait: {:.1?}", started.elapsed());
    Ok(())
}

/// `helm install` or `helm upgrade` of the chart with the testbed's values and
/// `extra` `--set` values, waiting until it is rolled out.
fn helm_chart(tb: &dyn Testbed, verb: &str, extra: &[String]) -> anyhow::Result<String> {
    let chart = repo("charts/node-network-operator").display().to_string();
    let mut args: Vec<String> = [verb, RELEASE, &chart, "--namespace", NAMESPACE]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if verb == "install" {
        args.push("--create-namespace".into());
    }
    args.extend(chart_args(tb, extra));
    args.extend(["--wait".into(), "--timeout=5m".into()]);
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    helm(tb, &args_ref)
}

/// The sample files of nno.dev objects (every file under samples/ but the pods).
pub fn sample_files() -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = crate::samples::documents()?
        .into_iter()
        .filter(|(_, doc)| {
            doc["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("nno.dev/"))
        })
        .map(|(file, _)| file)
        .collect();
    files.dedup();
    Ok(files)
}

/// `helm install` of the chart, as the README says, and what it must leave running:
/// two controller replicas, an agent on every node under the chart's exact security
/// context (CAP_NET_ADMIN, nothing more), nno-cni-shim in every node's CNI bin
/// directory, every node's NodeNetworkState; `kubectl logs` and `kubectl exec` work.
async fn chart(tb: &dyn Testbed) -> anyhow::Result<()> {
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
    kubectl(
        tb,
        &[
            "wait",
            "-n",
            "default",
            "--for=condition=Ready",
            "pod/client",
            "pod/router",
            "--timeout=180s",
        ],
    )?;
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
async fn gateway(tb: &dyn Testbed) -> anyhow::Result<()> {
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
async fn cluster(tb: &dyn Testbed) -> anyhow::Result<()> {
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
    kubectl(
        tb,
        &[
            "wait",
            "-n",
            "default",
            "--for=condition=Ready",
            "pod/echo",
            "--timeout=120s",
        ],
    )?;
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

/// Pings the router's gateway address from the client until one is answered (every
/// 100 ms); how long that took.
async fn ping_back(tb: &dyn Testbed, within: Duration) -> anyhow::Result<Duration> {
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
fn ping_router(tb: &dyn Testbed, count: u32) -> anyhow::Result<(u64, u64)> {
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
/// removed from the bridge, the bridge set down, the VXLAN's MTU changed.
async fn repair(tb: &dyn Testbed) -> anyhow::Result<()> {
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
    let changes: Vec<(&str, Vec<&str>)> = vec![
        ("bridge deleted", vec!["link", "del", "br-gateway"]),
        ("VXLAN deleted", vec!["link", "del", "vxlan5088"]),
        ("pod port removed", vec!["link", "set", &router_port, "nomaster"]),
        ("bridge set down", vec!["link", "set", "br-gateway", "down"]),
        (
            "VXLAN MTU changed",
            vec!["link", "set", "vxlan5088", "mtu", "1300"],
        ),
    ];
    for (what, args) in changes {
        tb.on_node(&node, "ip", &args)?;
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
    }
    Ok(())
}

/// The agent killed (SIGKILL) during a ping through the gateway: restarted by the
/// kubelet, it makes no netlink write, and no packet is lost.
async fn restart(tb: &dyn Testbed) -> anyhow::Result<()> {
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
    let mut ping = background_ping(tb, "/tmp/restart-ping.log")?;
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
    let (sent, received) = stop_background_ping(tb, &mut ping, "/tmp/restart-ping.log")?;
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

/// A ping from the client to the outside host in the background, logging to `log`
/// in the client.
fn background_ping(tb: &dyn Testbed, log: &str) -> anyhow::Result<std::process::Child> {
    Ok(std::process::Command::new(crate::tools::tool("kubectl"))
        .arg("--kubeconfig")
        .arg(tb.kubeconfig())
        .args(["exec", "-n", "default", "client", "--", "sh", "-c"])
        .arg(format!(
            "ping -i 0.2 -W 1 {} > {log} 2>&1",
            tb.outside().address()
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?)
}

/// Stops [`background_ping`] (SIGINT, so that ping prints its summary): (sent, received).
fn stop_background_ping(
    tb: &dyn Testbed,
    ping: &mut std::process::Child,
    log: &str,
) -> anyhow::Result<(u64, u64)> {
    let _ = in_pod(tb, "client", &["pkill", "-INT", "ping"]);
    let _ = ping.wait();
    let out = in_pod(tb, "client", &["cat", log])?;
    ping_counts(&out)
}

/// A metric of the agent on `node`, read from its port on the node's loopback.
fn agent_metric(tb: &dyn Testbed, node: &str, name: &str) -> anyhow::Result<f64> {
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
async fn gating(tb: &dyn Testbed) -> anyhow::Result<()> {
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
    kubectl(
        tb,
        &[
            "wait",
            "-n",
            "default",
            "--for=condition=Ready",
            "pod/waits",
            "--timeout=120s",
        ],
    )?;
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
async fn drift(tb: &dyn Testbed) -> anyhow::Result<()> {
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

/// `helm upgrade` to a new image tag rolls every agent and the controller with no
/// link recreated and no packet lost: the client pings the outside host through the
/// router across the whole upgrade.
async fn upgrade(tb: &dyn Testbed) -> anyhow::Result<()> {
    let nodes = tb.nodes();
    let links_before = gateway_links(tb, &nodes);
    let old: Vec<String> = agent_pods(tb)
        .await?
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    let mut ping = background_ping(tb, "/tmp/upgrade-ping.log")?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let started = Instant::now();
    let upgraded = helm_chart(tb, "upgrade", &[format!("image.tag={}", tb.upgrade_tag())]);
    let rolled = kubectl(
        tb,
        &[
            "rollout",
            "status",
            "-n",
            NAMESPACE,
            "daemonset",
            "-l",
            "app.kubernetes.io/component=agent",
            "--timeout=300s",
        ],
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pinged = stop_background_ping(tb, &mut ping, "/tmp/upgrade-ping.log");
    upgraded?;
    rolled?;
    println!("helm upgrade and agent rollout: {:.1?}", started.elapsed());
    let (sent, received) = pinged?;
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
async fn uninstall(tb: &dyn Testbed) -> anyhow::Result<()> {
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

/// Per node: (name, ifindex of br-gateway, ifindex of vxlan5088), None where absent.
type GatewayLinks = Vec<(String, Option<u32>, Option<u32>)>;

/// The sample Network's links on each node, by ifindex (a recreated link has a new
/// one).
fn gateway_links(tb: &dyn Testbed, nodes: &[String]) -> GatewayLinks {
    nodes
        .iter()
        .map(|n| {
            (
                n.clone(),
                ifindex(tb, n, "br-gateway").ok(),
                ifindex(tb, n, "vxlan5088").ok(),
            )
        })
        .collect()
}

fn ifindex(tb: &dyn Testbed, node: &str, name: &str) -> anyhow::Result<u32> {
    let out = tb.on_node(node, "ip", &["-o", "link", "show", "dev", name])?;
    out.split(':')
        .next()
        .and_then(|i| i.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("ip link show {name} on {node}: {out}"))
}

fn vxlan_in_bridge(tb: &dyn Testbed, node: &str, vxlan: &str, bridge: &str) -> anyhow::Result<()> {
    let out = tb.on_node(node, "ip", &["-o", "link", "show", "dev", vxlan])?;
    anyhow::ensure!(
        out.contains(&format!("master {bridge}")) && out.contains(",UP"),
        "{vxlan} on {node}: {out}"
    );
    Ok(())
}

/// `kubectl exec` of `command` in pod `default/pod`; its stdout.
fn in_pod(tb: &dyn Testbed, pod: &str, command: &[&str]) -> anyhow::Result<String> {
    let mut args = vec!["exec", "-n", "default", pod, "--"];
    args.extend_from_slice(command);
    kubectl(tb, &args)
}

/// `kubectl get ... -o json`.
fn json(tb: &dyn Testbed, args: &[&str]) -> anyhow::Result<Value> {
    let mut full = args.to_vec();
    full.extend(["-o", "json"]);
    Ok(serde_json::from_str(&kubectl(tb, &full)?)?)
}

fn render_chart(tb: &dyn Testbed) -> anyhow::Result<Vec<Value>> {
    let chart = repo("charts/node-network-operator").display().to_string();
    let mut args: Vec<String> = [
        "template",
        RELEASE,
        &chart,
        "--namespace",
        NAMESPACE,
        "--kube-version",
        "v1.37.2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(chart_args(tb, &[]));
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    let text = helm(tb, &args_ref)?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value: Value = serde::Deserialize::deserialize(doc)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

async fn agent_pods(tb: &dyn Testbed) -> anyhow::Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(tb.client(), NAMESPACE);
    let list = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=agent"))
        .await?;
    Ok(list.items)
}

async fn agent_pod_on(tb: &dyn Testbed, node: &str) -> anyhow::Result<String> {
    agent_pods(tb)
        .await?
        .into_iter()
        .find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .and_then(|p| p.metadata.name)
        .ok_or_else(|| anyhow::anyhow!("no agent pod on {node}"))
}

async fn pod_node(tb: &dyn Testbed, namespace: &str, name: &str) -> anyhow::Result<String> {
    let pods: Api<Pod> = Api::namespaced(tb.client(), namespace);
    pods.get(name)
        .await?
        .spec
        .and_then(|s| s.node_name)
        .ok_or_else(|| anyhow::anyhow!("pod {namespace}/{name} is not scheduled"))
}

/// The node's IPv4 InternalIP.
pub async fn node_ip(tb: &dyn Testbed, node: &str) -> anyhow::Result<Ipv4Addr> {
    let nodes: Api<Node> = Api::all(tb.client());
    let node_obj = nodes.get(node).await?;
    node_obj
        .status
        .and_then(|s| s.addresses)
        .unwrap_or_default()
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("node {node} has no IPv4 InternalIP"))
}

/// `(transmitted, received)` from ping's summary line.
pub fn ping_counts(output: &str) -> anyhow::Result<(u64, u64)> {
    let line = output
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .ok_or_else(|| anyhow::anyhow!("no ping summary in: {output}"))?;
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .take(2)
        .map(|w| w.parse())
        .collect::<Result<_, _>>()?;
    match numbers.as_slice() {
        [sent, received] => Ok((*sent, *received)),
        _ => anyhow::bail!("unreadable ping summary: {line}"),
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_summaries() {
        let out = "PING 1.2.3.4\n--- 198.18.5.250 ping statistics ---\n12 packets transmitted, 11 received, 8.33333% packet loss, time 2210ms\n";
        assert_eq!(ping_counts(out).unwrap(), (12, 11));
        let busybox = "3 packets transmitted, 3 packets received, 0% packet loss";
        assert_eq!(ping_counts(busybox).unwrap(), (3, 3));
        assert!(ping_counts("nothing").is_err());
    }
}
