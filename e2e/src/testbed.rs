//! What the end-to-end scenarios ([`crate::scenarios`]) need from a cluster, so that
//! they are written once and run on both: the local cluster of real kubelet nodes in
//! network namespaces ([`crate::local::LocalCluster`], what CI runs) and a kind
//! cluster on a machine with Docker (`hack/kind-e2e.sh`, [`crate::kind::KindCluster`]).
//!
//! Everything else the scenarios do goes through the API server, `kubectl` and `helm`
//! with the testbed's kubeconfig, exactly as a user would.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::tools::tool;

/// A host outside the cluster that counts the ICMP packets it receives per source.
pub trait OutsideHost: Send + Sync {
    /// Its IPv4 address, reachable from the nodes.
    fn address(&self) -> String;
    /// Starts counting ICMP from `source` (idempotent).
    fn count_from(&self, source: &str) -> anyhow::Result<()>;
    /// ICMP packets received from `source` since counting started.
    fn received_from(&self, source: &str) -> anyhow::Result<u64>;
}

/// A cluster the scenarios run on.
pub trait Testbed: Send + Sync {
    /// `local` or `kind`, for reports.
    fn kind(&self) -> &'static str;
    /// An admin kubeconfig.
    fn kubeconfig(&self) -> &Path;
    /// An admin client.
    fn client(&self) -> kube::Client;
    /// The worker nodes pods may run on, in a stable order.
    fn nodes(&self) -> Vec<String>;
    /// Runs `program args` as root on `node`, in the node's network namespace; its
    /// stdout, or an error carrying its output.
    fn on_node(&self, node: &str, program: &str, args: &[&str]) -> anyhow::Result<String>;
    /// Sends `signal` (`STOP`, `CONT`, `KILL`) to the agent process on `node`.
    fn signal_agent(&self, node: &str, signal: &str) -> anyhow::Result<()>;
    /// The host outside the cluster.
    fn outside(&self) -> &dyn OutsideHost;
    /// `--set` arguments every `helm install`/`upgrade` of the chart takes here.
    fn chart_values(&self) -> Vec<String>;
    /// A second tag of the operator image, present on every node (for upgrades).
    fn upgrade_tag(&self) -> String;
    /// A directory that lives as long as the testbed (helm's home, scratch files).
    fn work_dir(&self) -> &Path;
}

/// Runs the pinned kubectl with the testbed's kubeconfig; stdout, or an error with
/// stderr.
pub fn kubectl(tb: &dyn Testbed, args: &[&str]) -> anyhow::Result<String> {
    run(
        Command::new(tool("kubectl"))
            .arg("--kubeconfig")
            .arg(tb.kubeconfig())
            .args(args),
        &format!("kubectl {}", args.join(" ")),
    )
}

/// `kubectl apply -f -` of `yaml`.
pub fn apply(tb: &dyn Testbed, yaml: &str) -> anyhow::Result<String> {
    use std::io::Write;
    let mut child = Command::new(tool("kubectl"))
        .arg("--kubeconfig")
        .arg(tb.kubeconfig())
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("kubectl stdin"))?
        .write_all(yaml.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        anyhow::bail!(
            "kubectl apply: {}\n--- input ---\n{yaml}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs the pinned helm with the testbed's kubeconfig and a helm home of its own
/// (nothing is read from or written to the user's helm configuration).
pub fn helm(tb: &dyn Testbed, args: &[&str]) -> anyhow::Result<String> {
    let home = tb.work_dir().join("helm");
    run(
        Command::new(tool("helm"))
            .arg("--kubeconfig")
            .arg(tb.kubeconfig())
            .args(args)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data")),
        &format!("helm {}", args.join(" ")),
    )
}

pub use crate::process::run;

/// Polls `check` every 200 ms until it returns Ok, or fails after `timeout` with the
/// last error.
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                anyhow::bail!("{what}: not within {timeout:?}; last: {e:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
