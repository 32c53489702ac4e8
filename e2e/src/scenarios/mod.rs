//! The end-to-end scenarios, written once against [`Testbed`]: what a user does with
//! `helm`, `kubectl` and the samples, and what they must see, proven with traffic.
//! They share one cluster and run in order ([`run`]); each leaves the cluster as the
//! next expects it (the chart installed, the sample gateway pods running, until
//! `uninstall`).

//!
//! In parts: [`install`] (the chart's life: install, upgrade, uninstall),
//! [`gateway`] (the headline and the cluster around it), [`repair`] (repairs,
//! restarts, gating and drift). This module runs them and holds what they share.

mod gateway;
mod ha;
mod install;
mod repair;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams};
use serde_json::Value;

use crate::testbed::{Testbed, apply, helm, kubectl, until};

pub use self::gateway::{GatewayDemo, gateway_demo};
use self::gateway::{cluster, gateway};
use self::install::{chart, uninstall, upgrade};
use self::repair::{drift, gating, repair, restart};

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
    "ha",
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
            "ha" => self::ha::ha(tb).await,
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

/// `kubectl wait` until `pods` (`pod/<name>` in namespace default) are Ready,
/// within `seconds`.
fn pods_ready(tb: &dyn Testbed, pods: &[&str], seconds: u32) -> anyhow::Result<()> {
    let timeout = format!("--timeout={seconds}s");
    let mut args = vec!["wait", "-n", "default", "--for=condition=Ready"];
    args.extend_from_slice(pods);
    args.push(&timeout);
    kubectl(tb, &args).map(|_| ())
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

/// `kubectl rollout status` of the agent DaemonSet, within `seconds`.
fn agents_rolled_out(tb: &dyn Testbed, seconds: u32) -> anyhow::Result<String> {
    let timeout = format!("--timeout={seconds}s");
    kubectl(
        tb,
        &[
            "rollout",
            "status",
            "-n",
            NAMESPACE,
            "daemonset",
            "-l",
            "app.kubernetes.io/component=agent",
            &timeout,
        ],
    )
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
