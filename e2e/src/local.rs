//! The local cluster of real nodes: a control plane with kube-scheduler, real kubelet
//! nodes in network namespaces ([`KubeletNode`]) with a primary pod network, multus
//! and whereabouts installed on every node, the images the chart and the samples name
//! imported into every node's containerd, and a host outside the cluster. What
//! `hack/run.sh` starts and the real-node tests run on ([`Testbed`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::cluster::{Cluster, MANAGER, Nodes};
use crate::image;
use crate::kubelet::{KubeletNode, NodeSetup};
use crate::outside::Outside;
use crate::testbed::{OutsideHost, Testbed};

/// The operator image tag the chart installs by default (its appVersion), and a second
/// tag of the same image for upgrades.
pub const OPERATOR_TAG: &str = "0.1.0";
pub const UPGRADE_TAG: &str = "0.1.0-upgrade";
/// The namespace multus's ServiceAccount lives in.
const MULTUS_NAMESPACE: &str = "kube-system";
const READY: Duration = Duration::from_secs(120);

/// One node to start: its name and labels.
pub struct NodeSpec<'a> {
    pub name: &'a str,
    pub labels: &'a [(&'a str, &'a str)],
}

pub struct LocalCluster {
    // Drop order: the outside host and the nodes, then the control plane.
    pub outside: Outside,
    pub nodes: Vec<KubeletNode>,
    setup: NodeSetup,
    pub cluster: Cluster,
}

impl LocalCluster {
    /// Starts the control plane and `nodes`, each Ready with its pod network.
    pub async fn start(nodes: &[NodeSpec<'_>]) -> anyhow::Result<Self> {
        let started = Instant::now();
        let images = build_images()?;
        let cluster = Cluster::start_for(Nodes::Real).await?;
        let whereabouts_kubeconfig = crate::pod::install_whereabouts(&cluster).await?;
        let multus_kubeconfig = install_multus(&cluster).await?;
        let setup = NodeSetup {
            images,
            multus_kubeconfig,
            whereabouts_kubeconfig,
        };
        let outside = Outside::create(&cluster)?;
        let mut local = Self {
            outside,
            nodes: Vec::new(),
            setup,
            cluster,
        };
        for spec in nodes {
            local.add_node(spec).await?;
        }
        tracing::info!(elapsed = ?started.elapsed(), nodes = nodes.len(), "local cluster ready");
        Ok(local)
    }

    /// Starts one more node, routes pods between it and every other node, and waits
    /// until it is Ready.
    pub async fn add_node(&mut self, spec: &NodeSpec<'_>) -> anyhow::Result<()> {
        let index = u8::try_from(self.nodes.len() + 1)?;
        let node = KubeletNode::start(&self.cluster, &self.setup, spec.name, index, spec.labels).await?;
        let cidr = node
            .pod_cidr
            .ok_or_else(|| anyhow::anyhow!("{} has no pod CIDR", spec.name))?;
        for other in &self.nodes {
            let other_cidr = other
                .pod_cidr
                .ok_or_else(|| anyhow::anyhow!("{} has no pod CIDR", other.name))?;
            other.route_pods(cidr, node.address)?;
            node.route_pods(other_cidr, other.address)?;
        }
        node.install_cni()?;
        self.nodes.push(node);
        self.wait_node_ready(spec.name).await
    }

    async fn wait_node_ready(&self, name: &str) -> anyhow::Result<()> {
        let api: Api<Node> = Api::all(self.cluster.client());
        let deadline = Instant::now() + READY;
        let mut last = String::new();
        while Instant::now() < deadline {
            let node = api.get(name).await?;
            let ready = node
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == "Ready");
            match ready {
                Some(c) if c.status == "True" => return Ok(()),
                Some(c) => {
                    last = format!(
                        "{}: {}",
                        c.reason.unwrap_or_default(),
                        c.message.unwrap_or_default()
                    )
                }
                None => last = "no Ready condition".into(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let node = self.node(name)?;
        anyhow::bail!("node {name} not Ready within {READY:?} ({last})\n{}", node.logs())
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> anyhow::Result<&KubeletNode> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| anyhow::anyhow!("no node {name}"))
    }
}

impl Testbed for LocalCluster {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn kubeconfig(&self) -> &Path {
        self.cluster.kubeconfig()
    }

    fn client(&self) -> kube::Client {
        self.cluster.client()
    }

    fn nodes(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    fn on_node(&self, node: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
        self.node(node)?.run(program, args)
    }

    fn signal_agent(&self, node: &str, signal: &str) -> anyhow::Result<()> {
        let node = self.node(node)?;
        let agents: Vec<u32> = node
            .processes()
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
                    let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
                    args.first()
                        .is_some_and(|a| a.ends_with(b"node-network-operator"))
                        && args.get(1).is_some_and(|a| *a == b"agent")
                })
            })
            .collect();
        anyhow::ensure!(agents.len() == 1, "agent processes on {}: {agents:?}", node.name);
        crate::testbed::run(
            std::process::Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(agents[0].to_string()),
            &format!("kill -{signal} the agent on {}", node.name),
        )?;
        Ok(())
    }

    fn outside(&self) -> &dyn OutsideHost {
        &self.outside
    }

    fn chart_values(&self) -> Vec<String> {
        // The images are imported, never pulled.
        vec!["image.pullPolicy=Never".into()]
    }

    fn upgrade_tag(&self) -> String {
        UPGRADE_TAG.into()
    }

    fn work_dir(&self) -> &Path {
        self.cluster.dir()
    }
}

impl OutsideHost for Outside {
    fn address(&self) -> String {
        self.address.clone()
    }

    fn count_from(&self, source: &str) -> anyhow::Result<()> {
        if !self.counters()?.split_whitespace().any(|w| w == source) {
            Outside::count_from(self, source)?;
        }
        Ok(())
    }

    fn received_from(&self, source: &str) -> anyhow::Result<u64> {
        Outside::received_from(self, source)
    }
}

/// The image archives every node imports: pause, the sample pods' tools, and the
/// operator image under the chart's tag and [`UPGRADE_TAG`].
pub fn build_images() -> anyhow::Result<Vec<image::Archive>> {
    let release = image::release_dir();
    Ok(vec![
        image::pause()?.archive()?,
        image::tools()?.archive()?,
        image::operator(OPERATOR_TAG, &release)?.archive()?,
        image::operator(UPGRADE_TAG, &release)?.archive()?,
    ])
}

/// multus's ServiceAccount and ClusterRole as its thin-plugin DaemonSet manifest
/// creates them (NADs, pods and their status, events), and the kubeconfig with its
/// token that the DaemonSet writes to `/etc/cni/net.d/multus.d/`.
async fn install_multus(cluster: &Cluster) -> anyhow::Result<PathBuf> {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let params = PatchParams::apply(MANAGER).force();
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "multus"},
        "rules": [
            {"apiGroups": ["k8s.cni.cncf.io"], "resources": ["*"], "verbs": ["*"]},
            {"apiGroups": [""], "resources": ["pods", "pods/status"], "verbs": ["get", "list", "update", "watch"]},
            {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch", "update"]},
        ],
    });
    Api::<ClusterRole>::all(cluster.client())
        .patch("multus", &params, &Patch::Apply(&role))
        .await?;
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "multus"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "multus"},
        "subjects": [{"kind": "ServiceAccount", "name": "multus", "namespace": MULTUS_NAMESPACE}],
    });
    Api::<ClusterRoleBinding>::all(cluster.client())
        .patch("multus", &params, &Patch::Apply(&binding))
        .await?;
    let (kubeconfig, _) = cluster.service_account(MULTUS_NAMESPACE, "multus").await?;
    Ok(kubeconfig)
}
