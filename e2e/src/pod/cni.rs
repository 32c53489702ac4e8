//! Sets a test cluster up for pods (a CNI bin directory, a multus configuration per
//! node) and runs CNI plugins on a node the way the kubelet does.

use super::*;

/// The third-party plugins every CNI bin directory holds, named after their CNI `type`.
pub const PLUGINS: &[&str] = &[
    "multus",
    "bridge",
    "host-local",
    "static",
    "loopback",
    "whereabouts",
    "tuning",
];
/// Name of the cluster default network (the first multus delegate, the pod's `eth0`).
pub const DEFAULT_NETWORK: &str = "e2e-default";
/// Bridge of the cluster default network on every node.
pub const DEFAULT_BRIDGE: &str = "cni0";
/// The interface the kubelet names in CNI_IFNAME.
pub const POD_IFNAME: &str = "eth0";
/// How long one CNI invocation may take (whereabouts alone may wait up to 2 minutes).
pub(super) const CNI_TIMEOUT: Duration = Duration::from_secs(150);

/// A CNI bin directory at `dir`: symlinks to the pinned [`PLUGINS`] and to `ours`, this
/// workspace's binaries (e.g. `nno-cni-shim`), built by `cargo build --workspace --bins`.
pub fn bin_dir(dir: &Path, ours: &[&str]) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let targets = PLUGINS
        .iter()
        .map(|name| (*name, tool(name)))
        .chain(ours.iter().map(|name| (*name, bin(name))));
    for (name, target) in targets {
        let link = dir.join(name);
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link)?;
        }
        std::os::unix::fs::symlink(&target, &link)
            .map_err(|e| anyhow::anyhow!("linking {} to {}: {e}", link.display(), target.display()))?;
    }
    Ok(dir.to_path_buf())
}

/// The CNI set-up of one test cluster.
pub struct Cni {
    /// `<cluster dir>/cni`: the bin directory and each node's CNI state.
    pub dir: PathBuf,
    /// The CNI bin directory (CNI_PATH and multus `binDir`).
    pub bin_dir: PathBuf,
    /// The kubeconfig multus reads pods and NADs and writes the network-status with.
    pub multus_kubeconfig: PathBuf,
    /// The kubeconfig whereabouts allocates with: put it into a NAD's
    /// `ipam.kubernetes.kubeconfig` ([`Cni::whereabouts_ipam`] does).
    pub whereabouts_kubeconfig: PathBuf,
    /// A directory laid over `/etc` (read-only) for the CNI plugins: it holds
    /// `cni/net.d/whereabouts.d/whereabouts.conf`.
    pub etc_layer: PathBuf,
    /// multus `logLevel` (its log goes to stderr, see [`CniOutput::stderr`]) for pods
    /// created from now on: `verbose` (default), `debug`, `error`, `panic`.
    pub multus_log_level: String,
    /// The third octet of the cluster's underlay /24 when it lies in 198.19.0.0/16:
    /// the pod subnets skip it.
    pub(super) underlay_in_pod_space: Option<u8>,
    pub(super) client: kube::Client,
}

impl Cni {
    /// Sets the cluster up for pods, once per test: a CNI bin directory with the
    /// pinned plugins and `ours` (names of this workspace's binaries, e.g.
    /// `&["nno-cni-shim"]`), and whereabouts (CRDs, ServiceAccount, RBAC, kubeconfig).
    pub async fn install(cluster: &Cluster, ours: &[&str]) -> anyhow::Result<Self> {
        let dir = cluster.dir().join("cni");
        let bin_dir = bin_dir(&dir.join("bin"), ours)?;
        let whereabouts_kubeconfig = install_whereabouts(cluster).await?;
        // What the whereabouts DaemonSet writes on a real node (its install-cni.sh).
        let etc_layer = dir.join("etc");
        let flat = etc_layer.join("cni/net.d/whereabouts.d");
        std::fs::create_dir_all(&flat)?;
        let conf = json!({"datastore": "kubernetes", "kubernetes": {"kubeconfig": whereabouts_kubeconfig}});
        std::fs::write(flat.join("whereabouts.conf"), serde_json::to_vec_pretty(&conf)?)?;
        let underlay = cluster.underlay.host_addr().octets();
        Ok(Self {
            dir,
            bin_dir,
            etc_layer,
            multus_log_level: "verbose".into(),
            // Multus runs as cluster-admin here, as the thin plugin does with the
            // kubeconfig its DaemonSet writes for its own (broad) ServiceAccount. It
            // reads Pods and NADs and updates pods/status; narrowing that is multus's
            // deployment's business, not what these tests are about.
            multus_kubeconfig: cluster.kubeconfig().to_path_buf(),
            whereabouts_kubeconfig,
            underlay_in_pod_space: (underlay[1] == 19).then_some(underlay[2]),
            client: cluster.client(),
        })
    }

    /// Arguments for `operator::start_controller` so that its NADs work on simulated
    /// nodes: the shim socket at [`SHIM_SOCKET`] and this cluster's whereabouts
    /// kubeconfig.
    pub fn controller_args(&self) -> Vec<String> {
        vec![
            format!("--shim-socket={SHIM_SOCKET}"),
            format!(
                "--whereabouts-kubeconfig={}",
                self.whereabouts_kubeconfig.display()
            ),
        ]
    }

    /// A command running `program` on `node` the way its CNI plugins run (see the
    /// module documentation): in the node's network namespace, with the node's run
    /// directory at [`NODE_RUN_DIR`] and [`Cni::etc_layer`] over `/etc`.
    pub fn node_command(&self, node: &SimNode, program: &Path) -> anyhow::Result<tokio::process::Command> {
        on_node(&node.netns, &node.run_dir, &self.etc_layer, program)
    }

    /// The /24 of `node`'s default-network pods (gateway `.1` on its `cni0`).
    pub fn pod_subnet(&self, node: &SimNode) -> Ipv4Addr {
        pod_subnet(node.index, self.underlay_in_pod_space)
    }

    /// The multus configuration of `node`, as the kubelet hands it to the thin plugin:
    /// the cluster default network as its only delegate, state under
    /// `<cni dir>/<node>/`, logs on stderr.
    pub fn multus_config(&self, node: &SimNode) -> Value {
        let state = self.dir.join(&node.name);
        let subnet = self.pod_subnet(node);
        let gateway = Ipv4Addr::from(u32::from(subnet) + 1);
        let default = json!({
            "cniVersion": "1.0.0",
            "name": DEFAULT_NETWORK,
            "plugins": [{
                "type": "bridge",
                "bridge": DEFAULT_BRIDGE,
                "isGateway": true,
                "isDefaultGateway": false,
                "ipMasq": false,
                "hairpinMode": false,
                "promiscMode": false,
                "preserveDefaultVlan": false,
                "ipam": {
                    "type": "host-local",
                    "dataDir": state.join("host-local"),
                    "ranges": [[{"subnet": format!("{subnet}/24"), "gateway": gateway.to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            }],
        });
        json!({
            "cniVersion": "1.0.0",
            "name": "multus-cni-network",
            "type": "multus",
            "kubeconfig": self.multus_kubeconfig,
            "cniDir": state.join("multus"),
            "confDir": state.join("multus-conf"),
            "binDir": self.bin_dir,
            "logToStderr": true,
            "logLevel": self.multus_log_level,
            "delegates": [default],
        })
    }
}

/// `198.19.C.0` for node `index`: C = index, moved up by one from the underlay's third
/// octet on when the cluster's own underlay /24 lies in 198.19.0.0/16, so that a
/// node's pod subnet never overlaps the underlay it sits on.
fn pod_subnet(index: u8, underlay_in_pod_space: Option<u8>) -> Ipv4Addr {
    let c = match underlay_in_pod_space {
        Some(u) if index >= u => index + 1,
        _ => index,
    };
    Ipv4Addr::new(198, 19, c, 0)
}

/// Creates namespace `name`.
pub async fn create_namespace(cluster: &Cluster, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(cluster.client());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    api.create(&PostParams::default(), &ns).await?;
    Ok(())
}

/// Creates NetworkAttachmentDefinition `namespace/name` with this CNI configuration.
pub async fn create_nad(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    config: &Value,
) -> anyhow::Result<()> {
    let api: Api<NetworkAttachmentDefinition> = Api::namespaced(cluster.client(), namespace);
    let nad = NetworkAttachmentDefinition::new(
        name,
        NetworkAttachmentDefinitionSpec {
            config: config.to_string(),
        },
    );
    api.create(&PostParams::default(), &nad).await?;
    Ok(())
}

/// A command that runs "on" a node the way the kubelet runs CNI plugins there: in
/// the node's network namespace (through `ip netns exec`), in a private mount
/// namespace in which `etc_layer` lies over `/etc` (read-only) and `run_dir` is
/// bind-mounted over [`NODE_RUN_DIR`].
pub(super) fn on_node(
    netns: &str,
    run_dir: &Path,
    etc_layer: &Path,
    program: &Path,
) -> anyhow::Result<tokio::process::Command> {
    // The mount point on the host; it stays empty there.
    std::fs::create_dir_all(NODE_RUN_DIR)?;
    let source = CString::new(run_dir.as_os_str().as_bytes())?;
    let target = CString::new(NODE_RUN_DIR)?;
    let layer = etc_layer.display().to_string();
    anyhow::ensure!(
        !layer.contains([':', ',']),
        "{layer}: overlayfs cannot take ':' or ',' in a layer path"
    );
    let overlay = CString::new(format!("lowerdir={layer}:/etc"))?;
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(["netns", "exec", netns]).arg(program);
    // SAFETY: between fork and exec the closure only makes async-signal-safe system
    // calls on memory prepared before the fork, and reads errno.
    unsafe {
        cmd.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Nothing mounted here propagates back to the host.
            check(libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                c"overlay".as_ptr(),
                c"/etc".as_ptr(),
                c"overlay".as_ptr(),
                libc::MS_RDONLY,
                overlay.as_ptr().cast(),
            ))?;
            check(libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ))
        });
    }
    Ok(cmd)
}

/// What one CNI invocation did.
#[derive(Debug)]
pub struct CniOutput {
    /// e.g. `ADD apps/client on node-a`.
    pub what: String,
    pub status: ExitStatus,
    /// The CNI result (ADD) or error object.
    pub stdout: String,
    /// The plugins' logs.
    pub stderr: String,
}

impl CniOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// stdout as JSON (null when empty, as after a successful DEL).
    pub fn json(&self) -> anyhow::Result<Value> {
        if self.stdout.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&self.stdout)
            .map_err(|e| anyhow::anyhow!("CNI {}: stdout is not JSON ({e}): {}", self.what, self.stdout))
    }

    /// The result, or an error naming the invocation, the CNI error code and message,
    /// and the plugins' logs.
    pub fn ok(self) -> anyhow::Result<Value> {
        if self.success() {
            return self.json();
        }
        let error = match self.json() {
            Ok(e) if e.is_object() => format!(
                "code {}: {} {}",
                e["code"],
                e["msg"].as_str().unwrap_or_default(),
                e["details"].as_str().unwrap_or_default()
            ),
            _ => self.stdout.clone(),
        };
        anyhow::bail!(
            "CNI {} failed ({}): {}\n--- stderr ---\n{}",
            self.what,
            self.status,
            error.trim(),
            self.stderr.trim()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_subnets_skip_the_underlay() {
        // Underlay in 198.18.0.0/16: nothing to avoid.
        assert_eq!(pod_subnet(1, None), Ipv4Addr::new(198, 19, 1, 0));
        assert_eq!(pod_subnet(200, None), Ipv4Addr::new(198, 19, 200, 0));
        // Underlay 198.19.5.0/24: nodes 1..=4 keep theirs, 5.. move up by one.
        assert_eq!(pod_subnet(4, Some(5)), Ipv4Addr::new(198, 19, 4, 0));
        assert_eq!(pod_subnet(5, Some(5)), Ipv4Addr::new(198, 19, 6, 0));
        assert_eq!(pod_subnet(200, Some(5)), Ipv4Addr::new(198, 19, 201, 0));
        assert_eq!(pod_subnet(1, Some(0)), Ipv4Addr::new(198, 19, 2, 0));
        assert_eq!(pod_subnet(3, Some(255)), Ipv4Addr::new(198, 19, 3, 0));
        for u in 0..=255u8 {
            for i in 1..=200u8 {
                assert_ne!(
                    pod_subnet(i, Some(u)).octets()[2],
                    u,
                    "node {i}, underlay 198.19.{u}.0/24"
                );
            }
        }
    }

    #[test]
    fn failed_invocations_read_well() {
        use std::os::unix::process::ExitStatusExt;
        let out = CniOutput {
            what: "ADD apps/client on node-a".into(),
            status: ExitStatus::from_raw(1 << 8),
            stdout:
                r#"{"cniVersion":"1.0.0","code":11,"msg":"bridge br-gw not ready","details":"on node-a"}"#
                    .into(),
            stderr: "multus log line\n".into(),
        };
        let err = out.ok().unwrap_err().to_string();
        assert!(err.starts_with("CNI ADD apps/client on node-a failed (exit status: 1): code 11: bridge br-gw not ready on node-a"), "{err}");
        assert!(err.ends_with("--- stderr ---\nmultus log line"), "{err}");

        let ok = CniOutput {
            what: "DEL".into(),
            status: ExitStatus::from_raw(0),
            stdout: String::new(),
            stderr: String::new(),
        };
        assert_eq!(ok.ok().unwrap(), Value::Null);
    }
}
