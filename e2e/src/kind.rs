//! A kind cluster as a [`Testbed`], for machines with Docker (`hack/kind-e2e.sh` sets
//! it up: one control plane, three workers, multus and whereabouts from their published
//! manifests, the images loaded). Nodes are kind's node containers (`docker exec`);
//! the host outside the cluster is a container of the tools image on kind's Docker
//! network, counting ICMP with iptables.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::local::UPGRADE_TAG;
use crate::testbed::{OutsideHost, Testbed, run};

/// Name of the outside host's container.
const OUTSIDE: &str = "nno-e2e-outside";

pub struct KindCluster {
    kubeconfig: PathBuf,
    client: kube::Client,
    workers: Vec<String>,
    outside: KindOutside,
    work: tempfile::TempDir,
}

impl KindCluster {
    /// Connects to the kind cluster of `kubeconfig` and starts the outside host.
    pub async fn connect(kubeconfig: &Path) -> anyhow::Result<Self> {
        let client = crate::cluster::client_from(kubeconfig).await?;
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
        let list = nodes
            .list(&kube::api::ListParams::default().labels("!node-role.kubernetes.io/control-plane"))
            .await?;
        let mut workers: Vec<String> = list.items.into_iter().filter_map(|n| n.metadata.name).collect();
        workers.sort();
        anyhow::ensure!(
            workers.len() >= 3,
            "the kind cluster needs three workers, has {workers:?}"
        );
        Ok(Self {
            kubeconfig: kubeconfig.to_path_buf(),
            client,
            workers,
            outside: KindOutside::start()?,
            work: tempfile::Builder::new().prefix("nno-kind-").tempdir()?,
        })
    }
}

fn docker(args: &[&str]) -> anyhow::Result<String> {
    run(
        Command::new("docker").args(args),
        &format!("docker {}", args.join(" ")),
    )
}

impl Testbed for KindCluster {
    fn kind(&self) -> &'static str {
        "kind"
    }

    fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    fn client(&self) -> kube::Client {
        self.client.clone()
    }

    fn nodes(&self) -> Vec<String> {
        self.workers.clone()
    }

    fn on_node(&self, node: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["exec", node, program];
        full.extend_from_slice(args);
        docker(&full)
    }

    fn signal_agent(&self, node: &str, signal: &str) -> anyhow::Result<()> {
        docker(&[
            "exec",
            node,
            "pkill",
            &format!("-{signal}"),
            "-f",
            "node-network-operator agent",
        ])?;
        Ok(())
    }

    fn outside(&self) -> &dyn OutsideHost {
        &self.outside
    }

    fn chart_values(&self) -> Vec<String> {
        // `kind load` put the images on the nodes.
        vec!["image.pullPolicy=IfNotPresent".into()]
    }

    fn upgrade_tag(&self) -> String {
        UPGRADE_TAG.into()
    }

    fn work_dir(&self) -> &Path {
        self.work.path()
    }
}

/// The outside host: a container of the tools image on the `kind` network.
struct KindOutside {
    address: String,
}

impl KindOutside {
    fn start() -> anyhow::Result<Self> {
        let _ = docker(&["rm", "-f", OUTSIDE]);
        docker(&[
            "run",
            "-d",
            "--rm",
            "--name",
            OUTSIDE,
            "--network",
            "kind",
            "--cap-add",
            "NET_ADMIN",
            crate::image::TOOLS_IMAGE,
            "sleep",
            "infinity",
        ])?;
        let address = docker(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            OUTSIDE,
        ])?
        .trim()
        .to_string();
        anyhow::ensure!(!address.is_empty(), "the outside container has no address");
        Ok(Self { address })
    }

    fn counters(&self) -> anyhow::Result<String> {
        docker(&["exec", OUTSIDE, "iptables", "-L", "INPUT", "-v", "-x", "-n"])
    }
}

impl Drop for KindOutside {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", OUTSIDE]);
    }
}

impl OutsideHost for KindOutside {
    fn address(&self) -> String {
        self.address.clone()
    }

    fn count_from(&self, source: &str) -> anyhow::Result<()> {
        if !self.counters()?.split_whitespace().any(|w| w == source) {
            docker(&[
                "exec", OUTSIDE, "iptables", "-A", "INPUT", "-p", "icmp", "-s", source, "-j", "ACCEPT",
            ])?;
        }
        Ok(())
    }

    fn received_from(&self, source: &str) -> anyhow::Result<u64> {
        Ok(crate::outside::count_in(&self.counters()?, source))
    }
}
