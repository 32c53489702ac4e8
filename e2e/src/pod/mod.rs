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
//!
//! The module in parts: [`cni`] sets a cluster up for pods and runs the CNI plugins
//! on a node; [`whereabouts`] installs whereabouts and reads its allocations; this
//! module is the pod itself.

pub mod cni;
pub mod whereabouts;

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

use self::cni::{CNI_TIMEOUT, on_node};
pub use self::cni::{
    Cni, CniOutput, DEFAULT_BRIDGE, DEFAULT_NETWORK, PLUGINS, POD_IFNAME, bin_dir, create_nad,
    create_namespace,
};
pub use self::whereabouts::{Allocation, WHEREABOUTS_ACCOUNT, WHEREABOUTS_NAMESPACE, install_whereabouts};

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
        crate::underlay::ip_in(&self.netns, args)
    }

    /// Runs a command in the pod's network namespace; fails with its output.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let place = format!("pod {}/{}", self.namespace, self.name);
        crate::underlay::exec_in(&self.netns, &place, program, args)
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
