//! Simulated pods attached by the real multus, the way a kubelet and its container
//! runtime attach them: a Pod object bound to a [`SimNode`], a network namespace for
//! its sandbox, and CNI ADD/DEL by running the multus thin plugin with the kubelet's
//! CNI environment, inside the node's network namespace (so the host ends of the veths
//! land in the node).
//!
//! [`Cni::install`] prepares a cluster once per test: a CNI bin directory (the pinned
//! multus, bridge, host-local, static, loopback and whereabouts, plus whichever of our
//! own binaries the test asks for), the whereabouts CRDs, its ServiceAccount and RBAC,
//! and the kubeconfig its NADs name. Every node gets a multus configuration whose
//! cluster default network is the bridge plugin on `cni0` with host-local addresses
//! from its own /24 in 198.19.0.0/16 (see [`Cni::pod_subnet`]), with its own state
//! directories, so nodes share nothing but the API server.
//!
//! Each CNI invocation runs in a private mount namespace in which
//! - the node's [`SimNode::run_dir`] is bind-mounted over [`NODE_RUN_DIR`]: a plugin on
//!   node X that opens [`SHIM_SOCKET`] reaches node X's agent, as `/run/nno/agent.sock`
//!   does on real nodes;
//! - `/etc` is a read-only overlay of the host's `/etc` under [`Cni::etc_layer`], which
//!   holds `/etc/cni/net.d/whereabouts.d/whereabouts.conf`: whereabouts (v0.9.2) fails
//!   every ADD with "config file not found" unless it finds that "flat file" (its
//!   DaemonSet writes it on real nodes), even when the NAD names a kubeconfig.
//!
//! The host's own `/etc` and `/run` are not changed, apart from the empty mount point
//! [`NODE_RUN_DIR`]. Start the controller with [`Cni::controller_args`] so that its NADs
//! name that socket and the whereabouts kubeconfig.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use nno_e2e::node::SimNode;
//! use nno_e2e::pod::{self, Cni, Pod};
//! use nno_e2e::Cluster;
//! use serde_json::json;
//!
//! let cluster = Cluster::start().await?;
//! let cni = Cni::install(&cluster, &[]).await?; // or &["nno-cni-shim"]
//! let node = SimNode::create(&cluster, "node-a", 1, 1500, &[]).await?;
//! pod::create_namespace(&cluster, "apps").await?;
//! let ipam = cni.whereabouts_ipam(json!({"range": "192.168.50.0/24"}));
//! let config = json!({"cniVersion": "1.0.0", "name": "wb", "plugins": [
//!     {"type": "bridge", "bridge": "br-e2e", "ipam": ipam}]});
//! pod::create_nad(&cluster, "apps", "wb", &config).await?;
//! let pod = Pod::create(&cluster, &cni, &node, "apps", "client", Some("wb")).await?;
//! let result = pod.add_ok().await?; // the CNI result multus printed
//! let net1 = pod.ipv4("net1")?;
//! let status = pod.network_status().await?; // k8s.v1.cni.cncf.io/network-status
//! pod.del_ok().await?;
//! pod.delete().await?;
//! # Ok(())
//! # }
//! ```
//!
//! What the pinned plugins do that a test author may not expect (each shown in
//! `e2e/tests/pods.rs`):
//! - the multus annotation's `default-route` has no effect in multus v4.2.3 while the
//!   default network gives eth0 a default route (as here, and on real clusters): its
//!   DeleteDefaultGW misses the route and its EEXIST is ignored (multus-cni PR
//!   #1552). A default route in the NAD's IPAM `routes` does win: the bridge plugin
//!   adds it in front of eth0's;
//! - whereabouts keeps one IPPool per range (and `network_name`) in its namespace,
//!   plus one OverlappingRangeIPReservation per address (`enable_overlapping_ranges`
//!   defaults to true); DEL releases both.
//!
//! Nothing here sends traffic: pods get addresses in 198.19.0.0/16 on their node's
//! `cni0` (whose gateway address lives in the node, which has no route off the
//! underlay) and whatever the test's NADs give them.

use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod as PodObject};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::wait::{await_condition, conditions};
use nno::multus::{
    NETWORK_STATUS_ANNOTATION, NETWORKS_ANNOTATION, NetworkAttachmentDefinition,
    NetworkAttachmentDefinitionSpec,
};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::cluster::{Cluster, MANAGER};
use crate::node::{NODE_RUN_DIR, SHIM_SOCKET, SimNode};
use crate::operator::bin;
use crate::tools::tool;
use crate::underlay::ip;

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
/// Where whereabouts keeps its IPPools, OverlappingRangeIPReservations and leader
/// Lease: the namespace of its kubeconfig's context (kube-system is also its default).
pub const WHEREABOUTS_NAMESPACE: &str = "kube-system";
/// The ServiceAccount whereabouts authenticates as.
pub const WHEREABOUTS_ACCOUNT: &str = "whereabouts";
/// Name of the cluster default network (the first multus delegate, the pod's `eth0`).
pub const DEFAULT_NETWORK: &str = "e2e-default";
/// Bridge of the cluster default network on every node.
pub const DEFAULT_BRIDGE: &str = "cni0";
/// The interface the kubelet names in CNI_IFNAME.
pub const POD_IFNAME: &str = "eth0";
/// How long one CNI invocation may take (whereabouts alone may wait up to 2 minutes).
const CNI_TIMEOUT: Duration = Duration::from_secs(150);
/// The whereabouts CRD files `hack/tools.sh` copies from the pinned module.
const WHEREABOUTS_CRDS: &[&str] = &[
    "whereabouts.cni.cncf.io_ippools.yaml",
    "whereabouts.cni.cncf.io_overlappingrangeipreservations.yaml",
    "whereabouts.cni.cncf.io_nodeslicepools.yaml",
];

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
    underlay_in_pod_space: Option<u8>,
    client: kube::Client,
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

    /// A whereabouts `ipam` object with this cluster's kubeconfig, merged with `extra`
    /// (`range`, `exclude`, `gateway`, `network_name`, ...).
    pub fn whereabouts_ipam(&self, extra: Value) -> Value {
        let mut ipam = json!({
            "type": "whereabouts",
            "kubernetes": {"kubeconfig": self.whereabouts_kubeconfig.display().to_string()},
        });
        if let (Some(ipam), Some(extra)) = (ipam.as_object_mut(), extra.as_object()) {
            ipam.extend(extra.clone());
        }
        ipam
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

    /// Every whereabouts allocation in [`WHEREABOUTS_NAMESPACE`], from the IPPools.
    pub async fn allocations(&self) -> anyhow::Result<Vec<Allocation>> {
        let pools = self.whereabouts_objects("IPPool", "ippools").await?;
        let mut out = Vec::new();
        for pool in pools {
            let name = pool.metadata.name.clone().unwrap_or_default();
            let range = pool.data["spec"]["range"].as_str().unwrap_or_default();
            let first: IpAddr = range
                .split('/')
                .next()
                .unwrap_or_default()
                .parse()
                .map_err(|e| anyhow::anyhow!("IPPool {name}: range {range:?}: {e}"))?;
            let empty = serde_json::Map::new();
            let allocations = pool.data["spec"]["allocations"].as_object().unwrap_or(&empty);
            for (offset, a) in allocations {
                let offset: u128 = offset
                    .parse()
                    .map_err(|e| anyhow::anyhow!("IPPool {name}: offset {offset:?}: {e}"))?;
                out.push(Allocation {
                    pool: name.clone(),
                    ip: add(first, offset),
                    pod_ref: a["podref"].as_str().unwrap_or_default().to_string(),
                    ifname: a["ifname"].as_str().unwrap_or_default().to_string(),
                    container_id: a["id"].as_str().unwrap_or_default().to_string(),
                });
            }
        }
        out.sort_by_key(|a| a.ip);
        Ok(out)
    }

    /// Every whereabouts OverlappingRangeIPReservation (`name`, `spec.podref`).
    pub async fn reservations(&self) -> anyhow::Result<Vec<(String, String)>> {
        let list = self
            .whereabouts_objects("OverlappingRangeIPReservation", "overlappingrangeipreservations")
            .await?;
        let mut out: Vec<(String, String)> = list
            .into_iter()
            .map(|r| {
                let podref = r.data["spec"]["podref"].as_str().unwrap_or_default().to_string();
                (r.metadata.name.unwrap_or_default(), podref)
            })
            .collect();
        out.sort();
        Ok(out)
    }

    async fn whereabouts_objects(&self, kind: &str, plural: &str) -> anyhow::Result<Vec<DynamicObject>> {
        let gvk = GroupVersionKind::gvk("whereabouts.cni.cncf.io", "v1alpha1", kind);
        let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), WHEREABOUTS_NAMESPACE, &resource);
        Ok(api.list(&ListParams::default()).await?.items)
    }
}

/// One address whereabouts handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub pool: String,
    pub ip: IpAddr,
    /// `namespace/name` of the pod.
    pub pod_ref: String,
    pub ifname: String,
    pub container_id: String,
}

fn add(ip: IpAddr, offset: u128) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from((u32::from(v4) as u128 + offset) as u32)),
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) + offset).into()),
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

/// Installs the whereabouts CRDs (from the pinned module, copied by `hack/tools.sh`),
/// a ServiceAccount in [`WHEREABOUTS_NAMESPACE`] with only what the IPAM plugin calls,
/// and a kubeconfig for it whose context names that namespace. Returns its path.
pub async fn install_whereabouts(cluster: &Cluster) -> anyhow::Result<PathBuf> {
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client());
    let params = PatchParams::apply(MANAGER).force();
    let mut names = Vec::new();
    for file in WHEREABOUTS_CRDS {
        let path = tool(&format!("whereabouts-crds/{file}"));
        let crd: CustomResourceDefinition = serde_yaml::from_str(&std::fs::read_to_string(&path)?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .map_err(|e| anyhow::anyhow!("installing CRD {name}: {e}"))?;
        names.push(name);
    }
    for name in &names {
        let established = await_condition(crds.clone(), name, conditions::is_crd_established());
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .map_err(|_| anyhow::anyhow!("CRD {name} not established after 30s"))??;
    }

    // What the IPAM plugin calls on ADD and DEL (read from its sources, v0.9.2):
    // IPPools get/list (a connectivity check)/create/patch; with
    // enable_overlapping_ranges (its default) OverlappingRangeIPReservations
    // get/create/delete; and a leader-election Lease named "whereabouts" that
    // serialises allocations (get/create/update). All namespaced.
    let ns = WHEREABOUTS_NAMESPACE;
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "nno-e2e-whereabouts", "namespace": ns},
        "rules": [
            {"apiGroups": ["whereabouts.cni.cncf.io"], "resources": ["ippools"],
             "verbs": ["get", "list", "create", "patch"]},
            {"apiGroups": ["whereabouts.cni.cncf.io"], "resources": ["overlappingrangeipreservations"],
             "verbs": ["get", "create", "delete"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
             "verbs": ["get", "create", "update"]},
        ],
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "nno-e2e-whereabouts", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "nno-e2e-whereabouts"},
        "subjects": [{"kind": "ServiceAccount", "name": WHEREABOUTS_ACCOUNT, "namespace": ns}],
    });
    let roles: Api<Role> = Api::namespaced(cluster.client(), ns);
    roles
        .patch("nno-e2e-whereabouts", &params, &Patch::Apply(&role))
        .await?;
    let bindings: Api<RoleBinding> = Api::namespaced(cluster.client(), ns);
    bindings
        .patch("nno-e2e-whereabouts", &params, &Patch::Apply(&binding))
        .await?;

    let (token_kubeconfig, _) = cluster.service_account(ns, WHEREABOUTS_ACCOUNT).await?;
    // whereabouts takes its namespace from the current context (NewKubernetesIPAM).
    let mut config: Value = serde_yaml::from_str(&std::fs::read_to_string(&token_kubeconfig)?)?;
    for context in config["contexts"].as_array_mut().into_iter().flatten() {
        context["context"]["namespace"] = json!(ns);
    }
    let path = cluster.dir().join("whereabouts.kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&config)?)?;
    Ok(path)
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
fn on_node(
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

/// A simulated pod: a Pod object bound to a node and its sandbox network namespace.
/// Dropping it deletes both (also when the test panics); it does not run CNI DEL.
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The sandbox's network namespace (`/run/netns/<netns>`).
    pub netns: String,
    /// The sandbox ID the runtime would pass (CNI_CONTAINERID, K8S_POD_INFRA_CONTAINER_ID).
    pub container_id: String,
    pub node: String,
    node_netns: String,
    node_run_dir: PathBuf,
    etc_layer: PathBuf,
    bin_dir: PathBuf,
    config: Vec<u8>,
    client: kube::Client,
    kubectl: PathBuf,
    admin_kubeconfig: PathBuf,
    object_deleted: bool,
}

impl Pod {
    /// Creates Pod `namespace/name` bound to `node` (`spec.nodeName`), with the multus
    /// annotation `k8s.v1.cni.cncf.io/networks` set to `networks` when given (`name`,
    /// `ns/name`, `name@ifname`, or a JSON list), and its sandbox network namespace
    /// with `lo` up. Attaching is a separate step: [`Pod::add`].
    pub async fn create(
        cluster: &Cluster,
        cni: &Cni,
        node: &SimNode,
        namespace: &str,
        name: &str,
        networks: Option<&str>,
    ) -> anyhow::Result<Self> {
        let slot = cluster.underlay.bridge.trim_start_matches("nno-ul");
        let netns = format!("nno{slot}-pod-{namespace}-{name}");
        ip(&["netns", "add", &netns])?;
        let mut pod = Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: String::new(),
            netns,
            container_id: random_hex(32)?,
            node: node.name.clone(),
            node_netns: node.netns.clone(),
            node_run_dir: node.run_dir.clone(),
            etc_layer: cni.etc_layer.clone(),
            bin_dir: cni.bin_dir.clone(),
            config: serde_json::to_vec(&cni.multus_config(node))?,
            client: cluster.client(),
            kubectl: tool("kubectl"),
            admin_kubeconfig: cluster.kubeconfig().to_path_buf(),
            object_deleted: false,
        };
        pod.ip(&["link", "set", "lo", "up"])?;

        let mut object = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "nodeName": node.name,
                "automountServiceAccountToken": false,
                // Never pulled: no kubelet runs here.
                "containers": [{"name": "app", "image": "registry.invalid/nno-e2e/pause:1"}],
            },
        });
        if let Some(networks) = networks {
            object["metadata"]["annotations"] = json!({ NETWORKS_ANNOTATION: networks });
        }
        let object: PodObject = serde_json::from_value(object)?;
        let api: Api<PodObject> = Api::namespaced(cluster.client(), namespace);
        // A namespace created a moment ago may not have its default ServiceAccount yet,
        // which admission requires.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let created = loop {
            match api.create(&PostParams::default(), &object).await {
                Ok(created) => break created,
                Err(e)
                    if e.to_string().contains("serviceaccount") && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => anyhow::bail!("creating Pod {namespace}/{name}: {e}"),
            }
        };
        pod.uid = created.metadata.uid.unwrap_or_default();
        Ok(pod)
    }

    /// Runs the multus thin plugin for this pod with CNI_COMMAND `command` (ADD, DEL,
    /// CHECK), the environment the kubelet gives it and the node's multus configuration
    /// on stdin, on the pod's node (see [`Cni::node_command`]). Fails only when the plugin
    /// cannot be run or exceeds its time; its own failure is in the output.
    pub async fn invoke(&self, command: &str) -> anyhow::Result<CniOutput> {
        let what = format!("{command} {}/{} on {}", self.namespace, self.name, self.node);
        let cni_args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            self.namespace, self.name, self.container_id, self.uid
        );
        let mut cmd = on_node(
            &self.node_netns,
            &self.node_run_dir,
            &self.etc_layer,
            &self.bin_dir.join("multus"),
        )?;
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &self.container_id)
            .env("CNI_NETNS", format!("/run/netns/{}", self.netns))
            .env("CNI_IFNAME", POD_IFNAME)
            .env("CNI_PATH", &self.bin_dir)
            .env("CNI_ARGS", cni_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("CNI {what}: cannot run multus: {e}"))?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(&self.config).await?;
        drop(stdin);
        let out = tokio::time::timeout(CNI_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| anyhow::anyhow!("CNI {what}: no answer within {CNI_TIMEOUT:?}"))??;
        Ok(CniOutput {
            what,
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// CNI ADD.
    pub async fn add(&self) -> anyhow::Result<CniOutput> {
        self.invoke("ADD").await
    }

    /// CNI ADD, which must succeed; the CNI result. Like a kubelet, it tries again
    /// (up to three times) when multus could not read the Pod in time: multus v4.2.3
    /// gives each GET 250 ms and stops at the first that times out, which a loaded
    /// test machine's API server can exceed. Nothing is attached before that read.
    pub async fn add_ok(&self) -> anyhow::Result<Value> {
        for attempt in 1.. {
            let out = self.add().await?;
            let transient = !out.success() && out.stdout.contains("error waiting for pod");
            if transient && attempt < 3 {
                eprintln!("{}: multus timed out reading the Pod; trying again", out.what);
                continue;
            }
            return out.ok();
        }
        unreachable!("the loop returns")
    }

    /// CNI DEL.
    pub async fn del(&self) -> anyhow::Result<CniOutput> {
        self.invoke("DEL").await
    }

    /// CNI DEL, which must succeed.
    pub async fn del_ok(&self) -> anyhow::Result<()> {
        self.del().await?.ok().map(|_| ())
    }

    /// Runs `ip` in the pod.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["-n", &self.netns];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Runs a command in the pod's network namespace; fails with its output.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.netns, program])
            .args(args)
            .output()?;
        if !out.status.success() {
            anyhow::bail!(
                "{program} {} in pod {}/{}: {}{}",
                args.join(" "),
                self.namespace,
                self.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether the pod has interface `ifname`.
    pub fn has_interface(&self, ifname: &str) -> bool {
        self.ip(&["link", "show", "dev", ifname]).is_ok()
    }

    /// The global addresses of `ifname` as `address/prefix`.
    pub fn addresses(&self, ifname: &str) -> anyhow::Result<Vec<String>> {
        let out = self.ip(&["-j", "addr", "show", "dev", ifname])?;
        let links: Vec<Value> = serde_json::from_str(&out)?;
        Ok(links
            .iter()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .filter(|a| a["scope"] == "global")
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or_default(), a["prefixlen"]))
            .collect())
    }

    /// The one IPv4 address of `ifname`.
    pub fn ipv4(&self, ifname: &str) -> anyhow::Result<Ipv4Addr> {
        let v4: Vec<Ipv4Addr> = self
            .addresses(ifname)?
            .iter()
            .filter_map(|a| a.split('/').next()?.parse().ok())
            .collect();
        match v4.as_slice() {
            [one] => Ok(*one),
            _ => anyhow::bail!(
                "pod {}/{}: {ifname} has IPv4 addresses {v4:?}",
                self.namespace,
                self.name
            ),
        }
    }

    /// The IPv4 routes of the main table, as `ip -j route` prints them.
    pub fn routes(&self) -> anyhow::Result<Vec<Value>> {
        Ok(serde_json::from_str(&self.ip(&["-j", "-4", "route", "show"])?)?)
    }

    /// The IPv4 default routes (gateway, device), in the order the kernel lists them.
    pub fn default_routes(&self) -> anyhow::Result<Vec<(IpAddr, String)>> {
        self.routes()?
            .iter()
            .filter(|r| r["dst"] == "default")
            .map(|r| {
                let gateway = r["gateway"]
                    .as_str()
                    .ok_or_else(|| anyhow::anyhow!("default route without gateway: {r}"))?;
                Ok((
                    gateway.parse()?,
                    r["dev"].as_str().unwrap_or_default().to_string(),
                ))
            })
            .collect()
    }

    /// The route the kernel picks for `dst` (`ip route get`, a lookup: nothing is
    /// sent): its gateway, if any, and device.
    pub fn route_to(&self, dst: IpAddr) -> anyhow::Result<(Option<IpAddr>, String)> {
        let out = self.ip(&["-j", "route", "get", &dst.to_string()])?;
        let routes: Vec<Value> = serde_json::from_str(&out)?;
        let route = routes
            .first()
            .ok_or_else(|| anyhow::anyhow!("no route to {dst}: {out}"))?;
        let gateway = route["gateway"].as_str().map(str::parse).transpose()?;
        Ok((gateway, route["dev"].as_str().unwrap_or_default().to_string()))
    }

    /// The Pod object as the API server has it.
    pub async fn object(&self) -> anyhow::Result<PodObject> {
        let api: Api<PodObject> = Api::namespaced(self.client.clone(), &self.namespace);
        Ok(api.get(&self.name).await?)
    }

    /// The `k8s.v1.cni.cncf.io/network-status` annotation multus wrote (empty when
    /// there is none).
    pub async fn network_status(&self) -> anyhow::Result<Vec<Value>> {
        let object = self.object().await?;
        match object
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(NETWORK_STATUS_ANNOTATION))
        {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| anyhow::anyhow!("{NETWORK_STATUS_ANNOTATION} is not a JSON list ({e}): {text}")),
            None => Ok(Vec::new()),
        }
    }

    /// Deletes the Pod object (at once, as the kubelet confirms a deletion) and the
    /// sandbox network namespace. Run [`Pod::del`] first to detach it the way a
    /// kubelet would.
    pub async fn delete(mut self) -> anyhow::Result<()> {
        let api: Api<PodObject> = Api::namespaced(self.client.clone(), &self.namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        api.delete(&self.name, &params).await?;
        self.object_deleted = true;
        ip(&["netns", "del", &self.netns])?;
        Ok(())
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // Deleting the namespace deletes the pod's interfaces, and with them the
        // veth ends in the node.
        let _ = ip(&["netns", "del", &self.netns]);
        if !self.object_deleted {
            // Drop cannot await: kubectl, bounded, and never mind a stopped cluster.
            let _ = std::process::Command::new(&self.kubectl)
                .arg("--kubeconfig")
                .arg(&self.admin_kubeconfig)
                .args(["delete", "pod", "-n", &self.namespace, &self.name])
                .args([
                    "--grace-period=0",
                    "--force",
                    "--wait=false",
                    "--request-timeout=5s",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `bytes` random bytes as hex, like a container runtime's sandbox ID.
fn random_hex(bytes: usize) -> anyhow::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
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
    fn allocation_offsets_count_from_the_range_address() {
        let v4: IpAddr = "192.168.50.0".parse().unwrap();
        assert_eq!(add(v4, 5), "192.168.50.5".parse::<IpAddr>().unwrap());
        assert_eq!(add(v4, 300), "192.168.51.44".parse::<IpAddr>().unwrap());
        let v6: IpAddr = "fd00::".parse().unwrap();
        assert_eq!(add(v6, 0x1_0001), "fd00::1:1".parse::<IpAddr>().unwrap());
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
