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

    async fn start_containerd(&mut self, cluster: &Cluster) -> anyhow::Result<()> {
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

    /// The node's primary network, like kind's: ptp veths with addresses from its pod
    /// CIDR (host-local), a default route to the node, routes to the other nodes'
    /// pod CIDRs over the underlay ([`KubeletNode::route_pods`]), and masquerade for
    /// what leaves the cluster; then multus in front of it, as its thin-plugin
    /// DaemonSet installs itself (`00-multus.conf` delegating to the primary network).
    pub fn install_cni(&self) -> anyhow::Result<()> {
        let cidr = self
            .pod_cidr
            .ok_or_else(|| anyhow::anyhow!("node {} has no pod CIDR", self.name))?;
        let primary = primary_network(cidr);
        self.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        // ClusterIPs need a route before kube-proxy's DNAT (in OUTPUT, after the route
        // lookup) sends them to their endpoints. A node here has no default route (no
        // traffic may leave the machine): the service range alone goes to the
        // underlay, and is translated before it gets there.
        self.ip(&["route", "replace", cluster::SERVICE_CIDR, "dev", "eth0"])?;
        let rule = [
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            &cidr.to_string(),
            "!",
            "-d",
            cluster::CLUSTER_CIDR,
            "-m",
            "comment",
            "--comment",
            "nno-e2e: pod traffic leaving the cluster",
            "-j",
            "MASQUERADE",
        ];
        self.exec("iptables", &rule)?;
        let multus = json!({
            "cniVersion": "1.0.0",
            "name": "multus-cni-network",
            "type": "multus",
            "capabilities": {"portMappings": true},
            "kubeconfig": "/etc/cni/net.d/multus.d/multus.kubeconfig",
            "cniDir": "/var/lib/cni/multus",
            "logFile": "/var/log/multus.log",
            "logLevel": "verbose",
            "delegates": [primary],
        });
        self.write_file(
            "/etc/cni/net.d/10-e2e-pods.conflist",
            &serde_json::to_vec_pretty(&primary)?,
        )?;
        self.write_file(
            "/etc/cni/net.d/00-multus.conf",
            &serde_json::to_vec_pretty(&multus)?,
        )?;
        Ok(())
    }

    /// Routes `cidr` (another node's pods) via `via` (that node's underlay address).
    pub fn route_pods(&self, cidr: ipnet::Ipv4Net, via: Ipv4Addr) -> anyhow::Result<()> {
        self.ip(&[
            "route",
            "replace",
            &cidr.to_string(),
            "via",
            &via.to_string(),
            "dev",
            "eth0",
        ])?;
        Ok(())
    }

    fn write_whereabouts_config(&self, setup: &NodeSetup) -> anyhow::Result<()> {
        let kubeconfig = std::fs::read(&setup.whereabouts_kubeconfig)?;
        self.write_file("/etc/cni/net.d/whereabouts.d/whereabouts.kubeconfig", &kubeconfig)?;
        let conf = json!({
            "datastore": "kubernetes",
            "kubernetes": {"kubeconfig": "/etc/cni/net.d/whereabouts.d/whereabouts.kubeconfig"},
        });
        self.write_file(
            "/etc/cni/net.d/whereabouts.d/whereabouts.conf",
            &serde_json::to_vec_pretty(&conf)?,
        )
    }

    fn write_multus_kubeconfig(&self, setup: &NodeSetup) -> anyhow::Result<()> {
        let kubeconfig = std::fs::read(&setup.multus_kubeconfig)?;
        self.write_file("/etc/cni/net.d/multus.d/multus.kubeconfig", &kubeconfig)
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

/// The primary network's conflist for a node whose pods get addresses from `cidr`.
pub fn primary_network(cidr: ipnet::Ipv4Net) -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0",
        "name": PRIMARY_NETWORK,
        "plugins": [
            {
                "type": "ptp",
                "ipMasq": false,
                "mtu": 1500,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": cidr.to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
}

/// containerd's configuration for a node: everything at its default paths (the
/// node's own `/run`, `/var/lib`, `/etc/cni/net.d`, `/opt/cni/bin`), and what this
/// machine needs (REAL-NODES.md).
fn containerd_config(sandbox_image: &str) -> String {
    format!(
        r#"version = 2
oom_score = 0

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = false

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/opt/cni/bin"
  conf_dir = "/etc/cni/net.d"
"#
    )
}

/// A cgroup v1 (or v2) hierarchy mounted under /sys/fs/cgroup.
struct Hierarchy {
    /// Its directory under /sys/fs/cgroup (`cpu`, `memory`, `systemd`, `unified`).
    name: String,
    /// Mount options of a v1 hierarchy (`cpu`, `name=systemd`); None for cgroup2.
    options: Option<String>,
}

fn hierarchies() -> anyhow::Result<Vec<Hierarchy>> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse_hierarchies(&mountinfo))
}

fn parse_hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(point) = left.split_whitespace().nth(4) else {
            continue;
        };
        let Some(name) = point.strip_prefix("/sys/fs/cgroup/") else {
            continue;
        };
        let mut fields = right.split_whitespace();
        let (fstype, super_options) = (fields.next(), fields.nth(1));
        match fstype {
            Some("cgroup") => {
                let options: Vec<&str> = super_options
                    .unwrap_or_default()
                    .split(',')
                    .filter(|o| !matches!(*o, "rw" | "ro"))
                    .collect();
                out.push(Hierarchy {
                    name: name.to_string(),
                    options: Some(options.join(",")),
                });
            }
            Some("cgroup2") => out.push(Hierarchy {
                name: name.to_string(),
                options: None,
            }),
            _ => {}
        }
    }
    out
}

/// A node's cgroup root (`<hierarchy>/nno-e2e/<id>`) in every hierarchy, with a
/// `system` child for the node's own processes.
struct Cgroup {
    /// `nno-e2e/<id>`, relative to each hierarchy's root.
    rel: String,
}

impl Cgroup {
    fn create(id: &str) -> anyhow::Result<Self> {
        let cgroup = Self {
            rel: format!("{CGROUP_PARENT}/{id}"),
        };
        for h in hierarchies()? {
            let root = Path::new(CGROUP_FS).join(&h.name);
            let mut dir = root.clone();
            for part in cgroup.rel.split('/').chain(["system"]) {
                let parent = dir.clone();
                dir = dir.join(part);
                if !dir.is_dir() {
                    std::fs::create_dir(&dir)
                        .map_err(|e| anyhow::anyhow!("creating cgroup {}: {e}", dir.display()))?;
                }
                // A cpuset cgroup takes no task until it has CPUs and memory nodes.
                if h.name == "cpuset" {
                    for file in ["cpuset.cpus", "cpuset.mems"] {
                        let value = std::fs::read_to_string(parent.join(file))?;
                        if std::fs::read_to_string(dir.join(file))?.trim().is_empty() {
                            std::fs::write(dir.join(file), value.trim())?;
                        }
                    }
                }
            }
        }
        Ok(cgroup)
    }

    /// Makes `cmd` move itself into the node's `system` cgroups before it runs.
    fn join_on_exec(&self, cmd: &mut Command) -> anyhow::Result<()> {
        let files: Vec<CString> = hierarchies()?
            .iter()
            .map(|h| {
                let path = Path::new(CGROUP_FS)
                    .join(&h.name)
                    .join(&self.rel)
                    .join("system/cgroup.procs");
                CString::new(path.as_os_str().as_bytes())
            })
            .collect::<Result<_, _>>()?;
        // SAFETY: between fork and exec the closure only calls open, write and close
        // (async-signal-safe) on memory prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                for file in &files {
                    let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // "0": the writing process itself.
                    let rc = libc::write(fd, c"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if rc != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// Every pid in the tree, from the pids hierarchy (or the first one there is).
    fn pids(&self) -> Vec<u32> {
        pids_under(&self.tree_root())
    }

    fn tree_root(&self) -> PathBuf {
        let hierarchy = hierarchies()
            .ok()
            .and_then(|hs| {
                let names: Vec<String> = hs.into_iter().map(|h| h.name).collect();
                names.iter().find(|n| *n == "pids").or(names.first()).cloned()
            })
            .unwrap_or_else(|| "pids".into());
        Path::new(CGROUP_FS).join(hierarchy).join(&self.rel)
    }

    /// SIGKILLs every process in the tree until none is left (a fork racing the
    /// first pass is caught by the next).
    fn kill_all(&self) {
        kill_tree(&self.tree_root());
    }

    /// Removes the tree from every hierarchy (empty cgroups only), and the shared
    /// parent when no other node uses it.
    fn remove(&self) {
        for h in hierarchies().unwrap_or_default() {
            let root = Path::new(CGROUP_FS).join(&h.name);
            remove_tree(&root.join(&self.rel));
            let _ = std::fs::remove_dir(root.join(CGROUP_PARENT));
        }
    }
}

fn pids_under(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            stack.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
    }
    pids
}

fn kill_tree(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = pids_under(dir);
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids {
            // SAFETY: signalling a process id read from the node's own cgroups.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes a cgroup directory tree, children first; retries briefly while the
/// kernel still counts just-killed tasks.
fn remove_tree(dir: &Path) {
    if !dir.is_dir() {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.path().is_dir() {
                remove_tree(&entry.path());
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::remove_dir(dir).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes what test processes that were killed left behind: the cgroups of their
/// nodes (killing every process still in them: pods, containerd shims) and their
/// cluster directories. The network namespaces of their slots go with the underlay
/// sweep ([`crate::underlay`]). Runs at every cluster start.
pub fn sweep_stale() {
    let alive = |pid: &str| Path::new("/proc").join(pid).exists();
    if let Ok(hs) = hierarchies() {
        for h in &hs {
            let parent = Path::new(CGROUP_FS).join(&h.name).join(CGROUP_PARENT);
            let Ok(entries) = std::fs::read_dir(&parent) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let owner = name.split('-').next().unwrap_or_default();
                if owner.parse::<u32>().is_ok() && !alive(owner) {
                    kill_tree(&entry.path());
                    for h in &hs {
                        remove_tree(&Path::new(CGROUP_FS).join(&h.name).join(CGROUP_PARENT).join(&name));
                    }
                }
            }
        }
        for h in &hs {
            let _ = std::fs::remove_dir(Path::new(CGROUP_FS).join(&h.name).join(CGROUP_PARENT));
        }
    }
    let tmp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for entry in entries.flatten() {
            let path = entry.path();
            if !entry.file_name().to_string_lossy().starts_with("nno-e2e-") {
                continue;
            }
            if let Ok(owner) = std::fs::read_to_string(path.join("owner"))
                && !alive(owner.trim())
            {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hierarchies_from_mountinfo() {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
22 1 0:21 / /proc rw,relatime - proc proc rw
";
        let hs = parse_hierarchies(mountinfo);
        let got: Vec<(&str, Option<&str>)> = hs
            .iter()
            .map(|h| (h.name.as_str(), h.options.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("cpu", Some("cpu")),
                ("cpu,cpuacct", Some("cpu,cpuacct")),
                ("systemd", Some("xattr,name=systemd")),
                ("unified", None),
            ]
        );
    }

    #[test]
    fn the_primary_network_uses_the_node_pod_cidr() {
        let conf = primary_network("198.19.3.0/24".parse().unwrap());
        assert_eq!(conf["plugins"][0]["type"], "ptp");
        assert_eq!(
            conf["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "198.19.3.0/24"
        );
    }
}
