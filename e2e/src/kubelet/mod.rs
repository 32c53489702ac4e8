//! Real nodes: a network namespace on the underlay ([`NodeNet`]) that runs a real
//! containerd, kubelet and kube-proxy, the way a machine of a cluster does.
//!
//! Each node has
//! - its own mount namespace, held by a small process, in which `/run`, `/var/lib` and
//!   `/var/log` are the node's own directories, `/etc` and `/opt` are writable
//!   overlays of the host's (so `/etc/cni/net.d` and `/opt/cni/bin` are the node's),
//!   `/sys` shows the node's network namespace, and the host sysctls the kubelet
//!   writes at start (`vm.overcommit_memory`, `kernel.panic`, ...) are plain files:
//!   the host's own values stay untouched (`../shared/REAL-NODES.md`);
//! - its own cgroup root `/nno-e2e/<pid>-<slot>-<node>` in every hierarchy: the kubelet
//!   puts its pods under it (`cgroupRoot`), and containerd, the kubelet, kube-proxy
//!   and every containerd shim run in its `system` child, so teardown finds and kills
//!   every process of the node, shims included;
//! - credentials from the cluster CA: the kubelet as `system:node:<node>` (the Node
//!   authorizer and NodeRestriction apply), kube-proxy as `system:kube-proxy`.
//!
//! The cgroup v1 hierarchy, the missing CAP_SYS_RESOURCE and the absence of systemd
//! decide the settings (`failCgroupV1: false`, `cgroupfs`, `oomScoreAdj: 0`,
//! `restrict_oom_score_adj`). What a killed test process leaves behind (its
//! directories, cgroups, shims and pods) is removed by [`sweep_stale`] at the next
//! cluster start.

mod cgroup;
mod config;
mod containerd;
mod network;

pub use self::cgroup::sweep_stale;
use self::cgroup::{Cgroup, hierarchies};
use self::config::containerd_config;
pub use self::config::primary_network;

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use serde_json::json;

use crate::cluster::{self, Cluster, Credentials};
use crate::image::Archive;
use crate::node::NodeNet;
use crate::process::Process;
use crate::tools::tool;

/// Parent of every node's cgroup root, in every hierarchy.
const CGROUP_PARENT: &str = "nno-e2e";
const CGROUP_FS: &str = "/sys/fs/cgroup";
/// Host sysctls the kubelet sets at start, with the values it wants: on a node they
/// are files of that content, bind-mounted over the `/proc/sys` entries.
const KUBELET_SYSCTLS: &[(&str, &str)] = &[
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];
/// Plugins every node's `/opt/cni/bin` holds (what multus, whereabouts and the
/// primary network's installers would put there); `nno-cni-shim` comes from the chart.
pub const NODE_PLUGINS: &[&str] = &[
    "multus",
    "whereabouts",
    "bridge",
    "ptp",
    "host-local",
    "static",
    "loopback",
    "portmap",
    "tuning",
];
/// The primary network's name (pods' eth0).
pub const PRIMARY_NETWORK: &str = "e2e-pods";
/// containerd's socket inside a node.
const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
const STARTUP: Duration = Duration::from_secs(90);

/// What every node of a cluster gets: images to import and the kubeconfigs multus and
/// whereabouts authenticate with (see [`crate::local`]).
pub struct NodeSetup {
    pub images: Vec<Archive>,
    pub multus_kubeconfig: PathBuf,
    pub whereabouts_kubeconfig: PathBuf,
}

/// A real node. Dropping it kills every process of the node and removes its cgroups,
/// mounts (with its mount namespace) and network namespace.
pub struct KubeletNode {
    pub net: NodeNet,
    /// The node's files on the host: configuration, and what the node sees at `/run`,
    /// `/var/lib`, `/var/log` and in its `/etc` and `/opt` overlays.
    pub dir: PathBuf,
    /// `Node.spec.podCIDR`, once kube-controller-manager assigned it.
    pub pod_cidr: Option<ipnet::Ipv4Net>,
    cgroup: Cgroup,
    // Stopped in reverse order (kube-proxy, kubelet, containerd), then the holder.
    holder: Option<Process>,
    containerd: Option<Process>,
    kubelet: Option<Process>,
    kube_proxy: Option<Process>,
    kubelet_starts: u32,
    kubelet_command: Vec<String>,
}

impl std::ops::Deref for KubeletNode {
    type Target = NodeNet;
    fn deref(&self) -> &NodeNet {
        &self.net
    }
}

impl KubeletNode {
    /// Starts node `name` (the `index`-th of the cluster) with these labels: its
    /// mount namespace, containerd (with `setup.images` imported), the kubelet, which
    /// registers the Node, and kube-proxy. Returns once the Node exists and has a pod
    /// CIDR; it is Ready once [`KubeletNode::install_cni`] wrote its CNI configuration.
    pub async fn start(
        cluster: &Cluster,
        setup: &NodeSetup,
        name: &str,
        index: u8,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            cluster.nodes() == cluster::Nodes::Real,
            "KubeletNode needs a cluster started with Cluster::start_for(Nodes::Real)"
        );
        let started = Instant::now();
        let net = NodeNet::create(cluster, name, index, 1500)?;
        let dir = cluster.dir().join(format!("node-{name}"));
        for sub in [
            "run",
            "var-lib",
            "var-log",
            "etc/upper",
            "etc/work",
            "opt/upper",
            "opt/work",
            "sysctl",
            "config",
        ] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let slot = cluster.underlay.bridge.trim_start_matches("nno-ul");
        let cgroup = Cgroup::create(&format!("{}-{slot}-{name}", std::process::id()))?;
        let mut node = Self {
            net,
            dir,
            pod_cidr: None,
            cgroup,
            holder: None,
            containerd: None,
            kubelet: None,
            kube_proxy: None,
            kubelet_starts: 0,
            kubelet_command: Vec::new(),
        };
        node.start_holder()?;
        node.install_plugins()?;
        node.start_containerd(cluster).await?;
        for image in &setup.images {
            node.import(image)?;
        }
        node.write_kubelet_config(cluster, labels)?;
        node.start_kubelet()?;
        node.pod_cidr = Some(node.wait_registered(cluster).await?);
        node.start_kube_proxy(cluster)?;
        node.write_whereabouts_config(setup)?;
        node.write_multus_kubeconfig(setup)?;
        tracing::info!(node = name, elapsed = ?started.elapsed(), "kubelet node started");
        Ok(node)
    }

    /// The path `path` (absolute, as the node sees it) from the host, through the
    /// holder's root: writes land in the node's mount namespace (its overlays).
    pub fn node_path(&self, path: &str) -> PathBuf {
        let pid = self.holder.as_ref().map(Process::pid).unwrap_or(0);
        PathBuf::from(format!("/proc/{pid}/root")).join(path.trim_start_matches('/'))
    }

    /// Writes `content` to `path` on the node (atomically: written next to it, then
    /// renamed, as installers do, so that watchers never see half a file).
    pub fn write_file(&self, path: &str, content: &[u8]) -> anyhow::Result<()> {
        let target = self.node_path(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = target.with_extension("nno-e2e-tmp");
        std::fs::write(&tmp, content)?;
        std::fs::rename(&tmp, &target)
            .map_err(|e| anyhow::anyhow!("writing {path} on {}: {e}", self.name))?;
        Ok(())
    }

    /// The process holding the node's mount namespace: `ip netns exec` (a mount
    /// namespace of its own, `/sys` of the node's network namespace) and a shell
    /// that mounts the node's view, then sleeps.
    fn start_holder(&mut self) -> anyhow::Result<()> {
        let d = self.dir.display().to_string();
        anyhow::ensure!(
            !d.contains([':', ',', ' ', '\'']),
            "{d}: a node directory must not contain ':', ',', spaces or quotes (overlay options)"
        );
        let mut script = String::from("set -eu\n");
        // ip netns exec mounted a fresh /sys: mount the cgroup hierarchies again.
        script.push_str("mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup\n");
        for h in hierarchies()? {
            let dir = format!("{CGROUP_FS}/{}", h.name);
            match &h.options {
                Some(options) => script.push_str(&format!(
                    "mkdir -p {dir} && mount -t cgroup -o {options} cgroup {dir}\n"
                )),
                None => script.push_str(&format!("mkdir -p {dir} && mount -t cgroup2 cgroup2 {dir}\n")),
            }
        }
        for (source, target) in [("run", "/run"), ("var-lib", "/var/lib"), ("var-log", "/var/log")] {
            script.push_str(&format!("mount --bind {d}/{source} {target}\n"));
        }
        for lower in ["etc", "opt"] {
            script.push_str(&format!(
                "mount -t overlay overlay -o lowerdir=/{lower},upperdir={d}/{lower}/upper,workdir={d}/{lower}/work /{lower}\n"
            ));
        }
        for (key, value) in KUBELET_SYSCTLS {
            let file = self.dir.join("sysctl").join(key.replace('/', "."));
            std::fs::write(&file, format!("{value}\n"))?;
            script.push_str(&format!("mount --bind {} /proc/sys/{key}\n", file.display()));
        }
        script.push_str("echo ready\nexec sleep infinity\n");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, "/bin/sh", "-c", &script]);
        self.cgroup.join_on_exec(&mut cmd)?;
        let holder = Process::spawn(&format!("node-{}", self.name), cmd, &self.dir)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        self.holder = Some(holder);
        while !self.holder_log().contains("ready") {
            if let Some(status) = self.holder.as_mut().and_then(Process::exited) {
                anyhow::bail!(
                    "the mount namespace of node {} failed ({status}):\n{}",
                    self.name,
                    self.holder_log()
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "node {}: mounts not ready in 10s",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    fn holder_log(&self) -> String {
        self.holder.as_ref().map(|h| h.log_tail(50)).unwrap_or_default()
    }

    /// A command that runs `program` on the node: in its network and mount
    /// namespaces and its cgroup.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
        let pid = self
            .holder
            .as_ref()
            .map(Process::pid)
            .ok_or_else(|| anyhow::anyhow!("node {} is not running", self.name))?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={pid}"))
            .args(["--mount", "--net", "--"])
            .arg(program);
        self.cgroup.join_on_exec(&mut cmd)?;
        Ok(cmd)
    }

    /// Runs `program args` on the node; its stdout, or an error with its output.
    pub fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        crate::process::run(
            self.command(program)?.args(args),
            &format!("{program} {} on {}", args.join(" "), self.name),
        )
    }

    fn install_plugins(&self) -> anyhow::Result<()> {
        let bin = self.node_path("/opt/cni/bin");
        std::fs::create_dir_all(&bin)?;
        for plugin in NODE_PLUGINS {
            let link = bin.join(plugin);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(tool(plugin), &link)?;
        }
        Ok(())
    }

    fn write_kubelet_config(&mut self, cluster: &Cluster, labels: &[(&str, &str)]) -> anyhow::Result<()> {
        let config = self.dir.join("config");
        let ca = cluster.ca();
        let client = ca.client(&format!("system:node:{}", self.name), &["system:nodes"])?;
        cluster::write_kubeconfig(
            &config.join("kubelet.kubeconfig"),
            &cluster.server(),
            &ca.cert_pem(),
            Credentials::ClientCert(&client),
        )?;
        let serving = ca.server(
            &self.name,
            &[self.name.as_str()],
            &[self.address.into(), self.address6.into()],
        )?;
        std::fs::write(config.join("kubelet.crt"), &serving.cert_pem)?;
        std::fs::write(config.join("kubelet.key"), &serving.key_pem)?;
        std::fs::write(config.join("ca.crt"), ca.cert_pem())?;
        let slot = cluster.underlay.bridge.trim_start_matches("nno-ul");
        let _ = slot;
        let kubelet = json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.address.to_string(),
            "readOnlyPort": 0,
            "authentication": {
                "anonymous": {"enabled": false},
                "webhook": {"enabled": true},
                "x509": {"clientCAFile": config.join("ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": config.join("kubelet.crt"),
            "tlsPrivateKeyFile": config.join("kubelet.key"),
            "containerRuntimeEndpoint": format!("unix://{CONTAINERD_SOCKET}"),
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": format!("/{}", self.cgroup.rel),
            // cgroup v1 here (REAL-NODES.md); the kubelet refuses it unless told.
            "failCgroupV1": false,
            "failSwapOn": false,
            // Nothing may lower oom_score_adj on this machine (no CAP_SYS_RESOURCE).
            "oomScoreAdj": 0,
            // The whole host shows as every node's capacity: no evictions.
            "evictionHard": {"memory.available": "0%", "nodefs.available": "0%", "imagefs.available": "0%"},
            // Images are imported, never pulled: never collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "resolvConf": "",
            "clusterDomain": "cluster.local",
            "podLogsDir": "/var/log/pods",
            "serializeImagePulls": false,
            "registerNode": true,
            "protectKernelDefaults": false,
            "rotateCertificates": false,
            "serverTLSBootstrap": false,
            "shutdownGracePeriod": "0s",
        });
        std::fs::write(
            config.join("kubelet.yaml"),
            serde_json::to_string_pretty(&kubelet)?,
        )?;
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        self.kubelet_command = vec![
            tool("kubelet").display().to_string(),
            format!("--config={}", config.join("kubelet.yaml").display()),
            format!("--kubeconfig={}", config.join("kubelet.kubeconfig").display()),
            format!("--hostname-override={}", self.name),
            format!("--node-ip={},{}", self.address, self.address6),
            format!("--node-labels={}", labels.join(",")),
            "--v=1".into(),
        ];
        Ok(())
    }

    /// Starts the kubelet (again, after [`KubeletNode::stop_kubelet`]).
    pub fn start_kubelet(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.kubelet.is_none(),
            "the kubelet of {} runs already",
            self.name
        );
        self.kubelet_starts += 1;
        let (program, args) = self
            .kubelet_command
            .split_first()
            .ok_or_else(|| anyhow::anyhow!("no kubelet configuration"))?;
        let mut cmd = self.command(program)?;
        cmd.args(args);
        let name = format!("kubelet-{}-{}", self.name, self.kubelet_starts);
        self.kubelet = Some(Process::spawn(&name, cmd, &self.dir)?);
        Ok(())
    }

    /// Stops the kubelet (its pods keep running, as on a real node).
    pub fn stop_kubelet(&mut self) {
        if let Some(mut kubelet) = self.kubelet.take() {
            kubelet.stop(Duration::from_secs(10));
        }
    }

    async fn wait_registered(&mut self, cluster: &Cluster) -> anyhow::Result<ipnet::Ipv4Net> {
        let nodes: Api<Node> = Api::all(cluster.client());
        let deadline = Instant::now() + STARTUP;
        let mut last = String::from("no Node object");
        while Instant::now() < deadline {
            if let Some(status) = self.kubelet.as_mut().and_then(Process::exited) {
                anyhow::bail!(
                    "the kubelet of {} exited ({status}):\n{}",
                    self.name,
                    self.kubelet_log(40)
                );
            }
            if let Some(node) = nodes.get_opt(&self.name).await? {
                match node.spec.and_then(|s| s.pod_cidr) {
                    Some(cidr) => return Ok(cidr.parse()?),
                    None => last = "registered, no podCIDR yet".into(),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!(
            "node {} not registered with a pod CIDR within {STARTUP:?} ({last}):\n{}",
            self.name,
            self.kubelet_log(40)
        )
    }

    /// The tail of the kubelet's log.
    pub fn kubelet_log(&self, lines: usize) -> String {
        self.kubelet
            .as_ref()
            .map(|k| k.log_tail(lines))
            .unwrap_or_default()
    }

    fn start_kube_proxy(&mut self, cluster: &Cluster) -> anyhow::Result<()> {
        let config = self.dir.join("config");
        let cert = cluster.ca().client("system:kube-proxy", &[])?;
        let kubeconfig = config.join("kube-proxy.kubeconfig");
        cluster::write_kubeconfig(
            &kubeconfig,
            &cluster.server(),
            &cluster.ca().cert_pem(),
            Credentials::ClientCert(&cert),
        )?;
        let proxy = json!({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": kubeconfig},
            "hostnameOverride": self.name,
            "bindAddress": self.address.to_string(),
            "clusterCIDR": cluster::CLUSTER_CIDR,
            "healthzBindAddress": format!("{}:10256", self.address),
            "metricsBindAddress": format!("{}:10249", self.address),
            // Leave the conntrack table's size and timeouts alone: the host's (and
            // not every one can be set from a network namespace).
            "conntrack": {
                "maxPerCore": 0, "min": 0,
                "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s",
                "udpTimeout": "0s", "udpStreamTimeout": "0s",
            },
        });
        let file = config.join("kube-proxy.yaml");
        std::fs::write(&file, serde_json::to_string_pretty(&proxy)?)?;
        let mut cmd = self.command(tool("kube-proxy"))?;
        cmd.arg(format!("--config={}", file.display())).arg("--v=0");
        self.kube_proxy = Some(Process::spawn(
            &format!("kube-proxy-{}", self.name),
            cmd,
            &self.dir,
        )?);
        Ok(())
    }

    /// Every process of the node (pids in its cgroups).
    pub fn processes(&self) -> Vec<u32> {
        self.cgroup.pids()
    }

    /// What the node costs now: resident memory per program (summed over its
    /// processes: containerd, kubelet, kube-proxy, the shims, the pods' programs) and
    /// the CPU time its cgroup used so far.
    pub fn usage(&self) -> Usage {
        let mut rss: std::collections::BTreeMap<String, (u32, u64)> = Default::default();
        for pid in self.cgroup.pids() {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                continue;
            };
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
            };
            let comm = field("Name:").unwrap_or_default();
            let kb: u64 = field("VmRSS:")
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            let entry = rss.entry(comm).or_default();
            entry.0 += 1;
            entry.1 += kb * 1024;
        }
        let cpu_ns = std::fs::read_to_string(
            Path::new(CGROUP_FS)
                .join("cpuacct")
                .join(&self.cgroup.rel)
                .join("cpuacct.usage"),
        )
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
        Usage { rss, cpu_ns }
    }

    /// The logs of the node's own processes.
    pub fn logs(&self) -> String {
        [&self.containerd, &self.kubelet, &self.kube_proxy]
            .iter()
            .filter_map(|p| p.as_ref())
            .map(|p| format!("--- {} ({})\n{}\n", p.name, p.log.display(), p.log_tail(30)))
            .collect()
    }
}

impl Drop for KubeletNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- node {} ---\n{}", self.name, self.logs());
        }
        for p in [&mut self.kube_proxy, &mut self.kubelet, &mut self.containerd]
            .into_iter()
            .filter_map(Option::take)
        {
            let mut p = p;
            p.stop(Duration::from_secs(2));
        }
        // Pods, shims and the holder: everything left in the node's cgroups.
        self.cgroup.kill_all();
        if let Some(mut holder) = self.holder.take() {
            holder.stop(Duration::from_secs(1));
        }
        self.cgroup.remove();
    }
}

/// A node's cost at one moment ([`KubeletNode::usage`]).
#[derive(Clone, Debug, Default)]
pub struct Usage {
    /// Program name -> (processes, resident bytes).
    pub rss: std::collections::BTreeMap<String, (u32, u64)>,
    /// CPU time of the node's cgroup since it started, in nanoseconds.
    pub cpu_ns: u64,
}

impl Usage {
    pub fn total_rss(&self) -> u64 {
        self.rss.values().map(|(_, b)| b).sum()
    }
}
