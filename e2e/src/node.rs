//! Simulated nodes: each a network namespace on the cluster's underlay bridge (its
//! `eth0`, 198.18.N.x/24 and 2001:db8:N::x/64), a dual-stack Node object with those
//! InternalIPs, and optionally the
//! real agent running inside the namespace with the chart's agent credentials.
//!
//! Simulated nodes share the host's filesystem, but each real node has its own `/run`.
//! Each SimNode therefore has a run directory of its own ([`SimNode::run_dir`], where
//! its agent's readiness socket lives), and whatever runs "on the node" for the CNI
//! (see [`crate::pod`]) sees that directory at [`NODE_RUN_DIR`] through a private bind
//! mount. So one socket path, [`SHIM_SOCKET`], means "this node's agent" on every node,
//! as `/run/nno/agent.sock` does on real nodes.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

use crate::cluster::Cluster;
use crate::operator::bin;
use crate::process::Process;
use crate::underlay::ip;

/// Field manager of the harness's kubelet stand-in.
const KUBELET: &str = "nno.dev/e2e-kubelet";

/// Where a node's [`SimNode::run_dir`] appears to the CNI plugins running on it.
pub const NODE_RUN_DIR: &str = "/run/nno-e2e";
/// The agent's readiness socket as the CNI plugins on every node see it: start the
/// controller with `--shim-socket=/run/nno-e2e/agent.sock` so that the NADs name it.
pub const SHIM_SOCKET: &str = "/run/nno-e2e/agent.sock";

/// A node's network: a network namespace with `eth0` on the cluster's underlay
/// bridge (198.18.N.(10+index)/24 and 2001:db8:N::(10+index)/64), `lo` up and a route
/// for multicast VXLAN groups. Removed on drop. Both node kinds stand on one
/// ([`SimNode`], [`crate::kubelet::KubeletNode`]).
pub struct NodeNet {
    pub name: String,
    /// The `index` given to [`NodeNet::create`] (1..=200).
    pub index: u8,
    pub netns: String,
    pub address: Ipv4Addr,
    /// IPv6 underlay address (documentation prefix), for IPv6 VXLAN underlays.
    pub address6: std::net::Ipv6Addr,
    host_veth: String,
}

impl NodeNet {
    /// The network of node `name` (the `index`-th of the cluster, 1..=200) with
    /// carrier MTU `mtu`.
    pub fn create(cluster: &Cluster, name: &str, index: u8, mtu: u32) -> anyhow::Result<Self> {
        assert!((1..=200).contains(&index), "node index 1..=200");
        let slot = cluster.underlay.bridge.trim_start_matches("nno-ul");
        let netns = format!("nno{slot}-{name}");
        let address = cluster.underlay.addr(10 + index);
        let [_, b, c, _] = address.octets();
        let address6 = std::net::Ipv6Addr::new(
            0x2001,
            0xdb8,
            u16::from(b) << 8 | u16::from(c),
            0,
            0,
            0,
            0,
            u16::from(10 + index),
        );
        let host_veth = format!("nno{slot}n{index}");
        let mtu_s = mtu.to_string();
        ip(&["netns", "add", &netns])?;
        let net = Self {
            name: name.to_string(),
            index,
            netns: netns.clone(),
            address,
            address6,
            host_veth: host_veth.clone(),
        };
        ip(&[
            "link", "add", &host_veth, "mtu", &mtu_s, "type", "veth", "peer", "name", "eth0", "netns",
            &netns, "mtu", &mtu_s,
        ])?;
        ip(&[
            "link",
            "set",
            &host_veth,
            "master",
            &cluster.underlay.bridge,
            "up",
        ])?;
        net.ip(&["link", "set", "lo", "up"])?;
        net.ip(&["addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
        net.ip(&["addr", "add", &format!("{address6}/64"), "dev", "eth0", "nodad"])?;
        net.ip(&["link", "set", "eth0", "up"])?;
        // Multicast VXLAN groups route over the underlay; nothing else leaves it.
        net.ip(&["route", "add", "224.0.0.0/4", "dev", "eth0"])?;
        Ok(net)
    }

    /// Runs `ip` inside the node.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        crate::underlay::ip_in(&self.netns, args)
    }

    /// Runs a command inside the node's network namespace; fails with its output.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        crate::underlay::exec_in(&self.netns, &self.netns, program, args)
    }

    /// Names of the interfaces enslaved to `bridge` on the node.
    pub fn ports(&self, bridge: &str) -> anyhow::Result<Vec<String>> {
        let out = self.ip(&["-j", "link", "show", "master", bridge])?;
        let links: Vec<serde_json::Value> = serde_json::from_str(&out)?;
        Ok(links
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(String::from))
            .collect())
    }

    /// The interface's index, or None when it does not exist.
    pub fn ifindex(&self, name: &str) -> Option<u32> {
        let out = self.ip(&["-o", "link", "show", "dev", name]).ok()?;
        out.split(':').next()?.trim().parse().ok()
    }

    /// Adds a carrier interface `name` (one end of a veth pair, both up) with the host
    /// address `address`, e.g. for a VXLAN waiting for its `device`.
    pub fn add_carrier(&self, name: &str, address: std::net::IpAddr) -> anyhow::Result<()> {
        let peer = format!("{name}p");
        self.ip(&["link", "add", name, "type", "veth", "peer", "name", &peer])?;
        let prefix = if address.is_ipv4() { 32 } else { 128 };
        self.ip(&[
            "addr",
            "add",
            &format!("{address}/{prefix}"),
            "dev",
            name,
            "nodad",
        ])?;
        self.ip(&["link", "set", &peer, "up"])?;
        self.ip(&["link", "set", name, "up"])?;
        Ok(())
    }

    /// Polls the kernel (every 2 ms) until `iface` is up and enslaved to `bridge`; the
    /// moment it saw that.
    pub async fn enslaved_and_up(&self, iface: &str, bridge: &str) -> std::time::Instant {
        loop {
            let done = self.link(iface).is_some_and(|l| {
                l["master"] == bridge && l["flags"].as_array().is_some_and(|f| f.iter().any(|x| x == "UP"))
            });
            if done {
                return std::time::Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// `ip -d -j link show dev NAME` as JSON.
    pub fn link(&self, name: &str) -> Option<serde_json::Value> {
        let out = self.ip(&["-d", "-j", "link", "show", "dev", name]).ok()?;
        let list: Vec<serde_json::Value> = serde_json::from_str(&out).ok()?;
        list.into_iter().next()
    }
}

impl Drop for NodeNet {
    fn drop(&mut self) {
        // The kernel tears a namespace down asynchronously: delete the veth pair now so
        // its name is free at once, then the namespace (and whatever is left in it).
        let _ = ip(&["link", "del", "dev", &self.host_veth]);
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

pub struct SimNode {
    pub net: NodeNet,
    /// This node's own run directory on the host, seen at [`NODE_RUN_DIR`] by the CNI
    /// plugins running on the node.
    pub run_dir: PathBuf,
    /// The agent's readiness socket, as a host path (`<run_dir>/agent.sock`).
    pub socket: PathBuf,
    log_dir: PathBuf,
    agent: Option<Process>,
    starts: u32,
    /// Further arguments of every agent this node starts (e.g. `--probe-timeout=3s`).
    pub agent_args: Vec<String>,
}

impl std::ops::Deref for SimNode {
    type Target = NodeNet;
    fn deref(&self) -> &NodeNet {
        &self.net
    }
}

impl SimNode {
    /// Creates node `name` (the `index`-th of the cluster, 1..=200) with carrier MTU
    /// `mtu` and these labels.
    pub async fn create(
        cluster: &Cluster,
        name: &str,
        index: u8,
        mtu: u32,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let run_dir = cluster.dir().join(format!("node-{name}")).join("run");
        std::fs::create_dir_all(&run_dir)?;
        let node = Self {
            net: NodeNet::create(cluster, name, index, mtu)?,
            socket: run_dir.join("agent.sock"),
            run_dir,
            log_dir: cluster.dir().to_path_buf(),
            agent: None,
            starts: 0,
            agent_args: Vec::new(),
        };
        node.register(cluster, labels).await?;
        Ok(node)
    }

    /// Creates or relabels the Node object, Ready, with this node's InternalIP.
    pub async fn register(&self, cluster: &Cluster, labels: &[(&str, &str)]) -> anyhow::Result<()> {
        let api: Api<Node> = Api::all(cluster.client());
        let mut all: serde_json::Map<String, serde_json::Value> =
            labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        all.insert("kubernetes.io/hostname".into(), json!(self.name));
        all.insert("kubernetes.io/os".into(), json!("linux"));
        let body =
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.name, "labels": all}});
        let params = PatchParams::apply(KUBELET).force();
        api.patch(&self.name, &params, &Patch::Apply(&body)).await?;
        let now = jiff::Timestamp::now().to_string();
        let status = json!({"apiVersion": "v1", "kind": "Node", "status": {
            "addresses": [
                {"type": "InternalIP", "address": self.address.to_string()},
                {"type": "InternalIP", "address": self.address6.to_string()},
                {"type": "Hostname", "address": self.name},
            ],
            "conditions": [{"type": "Ready", "status": "True", "reason": "E2E", "lastHeartbeatTime": now, "lastTransitionTime": now}],
        }});
        // A merge patch: server-side apply refuses two InternalIP entries (the list is
        // keyed by type), though dual-stack nodes have them.
        api.patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        Ok(())
    }

    /// Deletes the Node object (the namespace stays until drop).
    pub async fn deregister(&self, cluster: &Cluster) -> anyhow::Result<()> {
        let api: Api<Node> = Api::all(cluster.client());
        api.delete(&self.name, &DeleteParams::default()).await?;
        Ok(())
    }

    /// Starts the real agent inside the node as the chart's agent ServiceAccount
    /// (applied by [`crate::operator::install_rbac`]), with a token bound to this
    /// node the way the agent pod's own token is: the chart's admission policy lets
    /// it write this node's NodeNetworkState only.
    pub async fn start_agent(&mut self, cluster: &Cluster) -> anyhow::Result<()> {
        let kubeconfig = crate::operator::agent_kubeconfig(cluster, &self.name).await?;
        self.start_agent_with(&kubeconfig)
    }

    /// Starts the real agent inside the node with `kubeconfig`.
    pub fn start_agent_with(&mut self, kubeconfig: &Path) -> anyhow::Result<()> {
        self.start_agent_binary(kubeconfig, &bin("node-network-operator"))
    }

    /// Starts the agent of another build (`binary`, a `node-network-operator`)
    /// inside the node with `kubeconfig`, e.g. to benchmark two builds side by side.
    pub fn start_agent_binary(&mut self, kubeconfig: &Path, binary: &Path) -> anyhow::Result<()> {
        assert!(self.agent.is_none(), "agent already running on {}", self.name);
        self.starts += 1;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns])
            .arg(binary)
            .arg("agent")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg(format!("--node-name={}", self.name))
            .arg("--socket")
            .arg(&self.socket)
            .arg(format!("--metrics-addr={}:9092", self.address))
            .args(&self.agent_args)
            .env("RUST_LOG", "info,kube=warn,nno::netlink=debug");
        let log_name = format!("agent-{}-{}", self.name, self.starts);
        self.agent = Some(Process::spawn(&log_name, cmd, &self.log_dir)?);
        Ok(())
    }

    /// Stops the agent (SIGTERM, as the kubelet would).
    pub fn stop_agent(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            agent.stop(Duration::from_secs(5));
        }
    }

    /// The running agent's process ID (`ip netns exec` execs the agent in place).
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Process::pid)
    }

    /// The running agent's log so far.
    pub fn agent_log(&self) -> String {
        self.agent.as_ref().map(|a| a.log_tail(200)).unwrap_or_default()
    }

    /// `GET path` on the agent's health/metrics port.
    pub async fn agent_http(&self, path: &str) -> anyhow::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect((self.address, 9092)).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n").as_bytes())
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok(response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default())
    }

    /// The value of an agent metric (first sample of that name).
    pub async fn agent_metric(&self, name: &str) -> anyhow::Result<f64> {
        let text = self.agent_http("/metrics").await?;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (key, value) = l.rsplit_once(' ')?;
                (key == name || key.starts_with(&format!("{name}{{"))).then(|| value.parse().ok())?
            })
            .ok_or_else(|| anyhow::anyhow!("no metric {name} in:\n{text}"))
    }

    /// Asks the agent's readiness socket `GET path` (e.g. `/v1/bridges/br0`).
    pub async fn readiness(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        readiness_get(&self.socket, path).await
    }
}

/// One HTTP GET on the readiness socket; the JSON body.
pub async fn readiness_get(socket: &Path, path: &str) -> anyhow::Result<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::UnixStream::connect(socket).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: nno\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    // Chunked or not, the JSON object is the body's only brace-delimited text.
    let start = body
        .find('{')
        .ok_or_else(|| anyhow::anyhow!("no JSON in {response:?}"))?;
    let end = body
        .rfind('}')
        .ok_or_else(|| anyhow::anyhow!("no JSON in {response:?}"))?;
    Ok(serde_json::from_str(&body[start..=end])?)
}

impl Drop for SimNode {
    fn drop(&mut self) {
        if std::thread::panicking() && self.agent.is_some() {
            eprintln!("--- agent on {} ---\n{}", self.name, self.agent_log());
        }
        self.stop_agent();
    }
}
