//! Real components for the shim's tests and benchmark: network namespaces, the
//! agent's readiness server, and a conflist runner that executes plugins the way
//! libcni does (env + stdin + exit code, `prevResult` threaded between plugins).
#![allow(dead_code)] // each test binary uses a different part

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use nno::readiness::{BridgeReadiness, Readiness, Server};
use serde_json::{Value, json};

pub use nno_e2e::require_root;

/// The shim binary cargo built for these tests.
pub const SHIM: &str = env!("CARGO_BIN_EXE_nno-cni-shim");

const NETNS_PREFIX: &str = "nno-shim-";

/// Runs `ip` with `args`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("cannot run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace created with `ip netns add`, deleted on drop (also when the
/// test panics). Its name carries the test process's pid, so that namespaces left by a
/// killed run are swept by the next one.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(role: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(sweep_stale_netns);
        let name = format!(
            "{NETNS_PREFIX}{}-{}-{role}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The path a CNI runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n NAME args...`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// The names of the interfaces in this namespace.
    pub fn links(&self) -> Vec<String> {
        let out = self.ip(&["-j", "link", "show"]);
        let links: Value = serde_json::from_str(&out).unwrap();
        links
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn has_link(&self, name: &str) -> bool {
        self.links().iter().any(|l| l == name)
    }

    /// The IPv4 addresses (CIDR) on `dev`.
    pub fn addresses(&self, dev: &str) -> Vec<String> {
        let out = self.ip(&["-j", "-4", "addr", "show", "dev", dev]);
        let links: Value = serde_json::from_str(&out).unwrap();
        links[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Deletes namespaces of earlier test processes that are gone.
fn sweep_stale_netns() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(NETNS_PREFIX).and_then(|r| r.split('-').next()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

/// The node agent's readiness server (the real one, `nno::readiness`), in-process on
/// its own tokio runtime, on a socket in a temporary directory.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub readiness: Readiness,
    rt: tokio::runtime::Runtime,
}

impl Agent {
    pub fn start(node: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("nno/agent.sock");
        let readiness = Readiness::new(node);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        {
            let _guard = rt.enter();
            let server = Server::bind(&socket).unwrap();
            rt.spawn(server.run(readiness.clone(), std::future::pending()));
        }
        Self {
            dir,
            socket,
            readiness,
            rt,
        }
    }

    /// What the real agent does when its engine has built a bridge: the bridge exists
    /// in the node's namespace, then it is reported Ready.
    pub fn build_bridge(&self, node: &Netns, bridge: &str) {
        node.ip(&["link", "add", bridge, "type", "bridge"]);
        node.ip(&["link", "set", bridge, "up"]);
        self.readiness.set_synced(true);
        self.readiness
            .set_bridge(bridge, BridgeReadiness::ready("bridge up (test agent)"));
    }
}

/// One attachment, as the kubelet's runtime would describe it.
pub struct Attachment {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
}

impl Attachment {
    pub fn new(pod: &Netns) -> Self {
        Self {
            container_id: format!("c{}", pod.name.replace(NETNS_PREFIX, "")),
            netns: pod.path(),
            ifname: "net1".to_string(),
        }
    }
}

/// A plugin that failed, as libcni reports it.
#[derive(Debug)]
pub struct PluginError {
    pub plugin: String,
    pub exit_code: Option<i32>,
    /// The CNI error JSON the plugin printed.
    pub error: Value,
    pub stderr: String,
}

impl PluginError {
    pub fn code(&self) -> u64 {
        self.error["code"].as_u64().unwrap_or_default()
    }
    pub fn msg(&self) -> &str {
        self.error["msg"].as_str().unwrap_or_default()
    }
}

/// Runs conflists the way libcni does, "as the runtime" of a node: every plugin runs
/// in the node's network namespace with the CNI environment, its configuration on
/// stdin, and the previous plugin's result injected as `prevResult`.
pub struct Runtime {
    pub cni_path: String,
    node_ns: File,
    _bin: tempfile::TempDir,
}

impl Runtime {
    /// A runtime for `node` whose CNI_PATH holds the shim and the reference plugins
    /// built by `hack/tools.sh`.
    pub fn new(node: &Netns) -> Self {
        for plugin in ["bridge", "static", "host-local"] {
            nno_e2e::tools::tool(plugin);
        }
        let bin = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(SHIM, bin.path().join("nno-cni-shim")).unwrap();
        let cni_path = format!("{}:{}", bin.path().display(), nno_e2e::tools::bin_dir().display());
        Self {
            cni_path,
            node_ns: File::open(node.path()).unwrap(),
            _bin: bin,
        }
    }

    /// The version libcni would use for `list`: `cniVersion`, or the highest of
    /// `cniVersions` it knows.
    pub fn list_version(list: &Value) -> String {
        const KNOWN: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
        let mut versions: Vec<&str> = list["cniVersions"]
            .as_array()
            .map(|vs| vs.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        versions.extend(list["cniVersion"].as_str());
        versions
            .into_iter()
            .filter_map(|v| KNOWN.iter().position(|k| *k == v))
            .max()
            .map(|i| KNOWN[i].to_string())
            .unwrap_or_else(|| "0.1.0".to_string())
    }

    /// ADD: every plugin in order; stops at the first failure.
    pub fn add(&self, list: &Value, att: &Attachment) -> Result<Value, PluginError> {
        let mut result: Option<Value> = None;
        for plugin in list["plugins"].as_array().unwrap() {
            let out = self.exec("ADD", list, plugin, result.as_ref(), att)?;
            result = Some(serde_json::from_str(&out).unwrap_or_else(|e| {
                panic!(
                    "{} printed a result that is not JSON ({e}): {out}",
                    plugin["type"]
                )
            }));
        }
        Ok(result.expect("a conflist has plugins"))
    }

    /// CHECK: every plugin in order, each given the cached ADD result.
    pub fn check(&self, list: &Value, att: &Attachment, cached: &Value) -> Result<(), PluginError> {
        for plugin in list["plugins"].as_array().unwrap() {
            self.exec("CHECK", list, plugin, Some(cached), att)?;
        }
        Ok(())
    }

    /// DEL: every plugin in reverse order, given the cached result from 0.4.0 on.
    pub fn del(&self, list: &Value, att: &Attachment, cached: Option<&Value>) -> Result<(), PluginError> {
        let version = Self::list_version(list);
        let cached = cached.filter(|_| !matches!(version.as_str(), "0.3.0" | "0.3.1"));
        for plugin in list["plugins"].as_array().unwrap().iter().rev() {
            self.exec("DEL", list, plugin, cached, att)?;
        }
        Ok(())
    }

    /// Runs one plugin; its stdout on success.
    pub fn exec(
        &self,
        command: &str,
        list: &Value,
        plugin: &Value,
        prev: Option<&Value>,
        att: &Attachment,
    ) -> Result<String, PluginError> {
        let mut conf = plugin.clone();
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = json!(Self::list_version(list));
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        let plugin_type = plugin["type"].as_str().unwrap();
        let mut cmd = Command::new(self.find(plugin_type));
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &att.container_id)
            .env("CNI_NETNS", &att.netns)
            .env("CNI_IFNAME", &att.ifname)
            .env("CNI_PATH", &self.cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = {
            let _in_node = self.enter_node();
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot run {plugin_type}: {e}"))
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return Ok(stdout);
        }
        Err(PluginError {
            plugin: plugin_type.to_string(),
            exit_code: out.status.code(),
            error: serde_json::from_str(&stdout).unwrap_or_else(|_| json!({ "unparsed": stdout })),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn find(&self, plugin_type: &str) -> PathBuf {
        self.cni_path
            .split(':')
            .map(|dir| Path::new(dir).join(plugin_type))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("plugin {plugin_type} is not in CNI_PATH {}", self.cni_path))
    }

    /// Moves the calling thread into the node's network namespace until the guard
    /// drops, so that children spawned meanwhile start there. (Switching the parent's
    /// thread rather than the child keeps `Command::spawn` on posix_spawn: a
    /// `pre_exec` hook would force a full fork of this large test process, a cost no
    /// real runtime pays, that would be charged to every plugin.)
    fn enter_node(&self) -> NetnsGuard {
        let own = File::open("/proc/thread-self/ns/net").unwrap();
        setns(&self.node_ns);
        NetnsGuard { own }
    }
}

/// Returns the calling thread to its own network namespace on drop.
struct NetnsGuard {
    own: File,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        setns(&self.own);
    }
}

fn setns(ns: &File) {
    // SAFETY: setns only changes the calling thread's network namespace.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// A conflist the way the controller renders it: the shim first, then the bridge
/// plugin with `ipam`.
pub fn conflist(version: &str, agent: &Agent, timeout: f64, ipam: Value) -> Value {
    json!({
        "cniVersion": version,
        "name": "gw-test",
        "plugins": [
            {"type": "nno-cni-shim", "bridge": "br-gw", "socket": agent.socket,
             "timeoutSeconds": timeout, "logFile": agent.dir.path().join("shim.log")},
            bridge_plugin(ipam),
        ]
    })
}

/// The same network without the shim.
pub fn conflist_without_shim(version: &str, ipam: Value) -> Value {
    json!({"cniVersion": version, "name": "gw-test", "plugins": [bridge_plugin(ipam)]})
}

fn bridge_plugin(ipam: Value) -> Value {
    json!({"type": "bridge", "bridge": "br-gw", "isGateway": false, "ipMasq": false, "ipam": ipam})
}

/// Static IPAM with one address of the documentation range 192.0.2.0/24.
pub fn static_ipam(host: u8) -> Value {
    json!({"type": "static", "addresses": [{"address": format!("192.0.2.{host}/24")}]})
}

/// host-local IPAM over 192.0.2.0/24, its state in `data_dir`.
pub fn host_local_ipam(data_dir: &Path) -> Value {
    json!({"type": "host-local", "ranges": [[{"subnet": "192.0.2.0/24"}]], "dataDir": data_dir})
}
