//! The node's containerd: started in the node, images imported and tagged with `ctr`.

use super::*;

impl KubeletNode {
    pub(super) async fn start_containerd(&mut self, cluster: &Cluster) -> anyhow::Result<()> {
        let _ = cluster;
        let config = self.dir.join("config/containerd.toml");
        std::fs::write(&config, containerd_config(crate::image::PAUSE_IMAGE))?;
        let mut cmd = self.command("containerd")?;
        cmd.arg("--config").arg(&config).arg("--log-level=warn");
        self.containerd = Some(Process::spawn(
            &format!("containerd-{}", self.name),
            cmd,
            &self.dir,
        )?);
        let socket = self.dir.join("run/containerd/containerd.sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.containerd.as_mut().and_then(Process::exited) {
                anyhow::bail!(
                    "containerd on {} exited ({status}):\n{}",
                    self.name,
                    self.containerd
                        .as_ref()
                        .map(|p| p.log_tail(30))
                        .unwrap_or_default()
                );
            }
            if socket.exists() && self.ctr(&["version"]).is_ok() {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "containerd on {} not serving in 30s",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `ctr` against the node's containerd (namespace k8s.io).
    pub fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        let socket = self.dir.join("run/containerd/containerd.sock");
        crate::process::run(
            Command::new("ctr")
                .arg("--address")
                .arg(&socket)
                .args(["--namespace", "k8s.io"])
                .args(args),
            &format!("ctr {} on {}", args.join(" "), self.name),
        )
    }

    /// Imports an image archive into the node's containerd, under its name.
    pub fn import(&self, image: &Archive) -> anyhow::Result<()> {
        let path = image.path.display().to_string();
        self.ctr(&["images", "import", "--no-unpack=false", &path])
            .map_err(|e| anyhow::anyhow!("importing {} ({}): {e}", image.name, image.path.display()))?;
        let listed = self.ctr(&["images", "list", "--quiet"])?;
        anyhow::ensure!(
            listed.lines().any(|l| l == image.name),
            "{} not among the images of {} after import:\n{listed}",
            image.name,
            self.name
        );
        Ok(())
    }

    /// Tags image `from` (present on the node) as `to`, as a registry push of a new
    /// tag would make it available.
    pub fn tag(&self, from: &str, to: &str) -> anyhow::Result<()> {
        let _ = self.ctr(&["images", "rm", to]);
        self.ctr(&["images", "tag", from, to])?;
        Ok(())
    }
}
