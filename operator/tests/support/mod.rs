//! Test support for the link engine: throw-away network namespaces, and iproute2
//! as an independent oracle. Shared by the integration tests and the benchmark.

#![allow(dead_code)] // each user takes what it needs

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

/// Fails loudly unless run as root: these tests need real netlink.
pub fn require_root() {
    let euid = nix::unistd::geteuid();
    assert!(
        euid.is_root(),
        "these tests create network namespaces and links over real netlink: run them as root \
         (euid is {euid}); they are never skipped"
    );
}

/// A network namespace created for one test, deleted on drop (also on panic).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        require_root();
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("nno-{tag}-{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name]).expect("ip netns add");
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n NS ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        self.try_ip(args)
            .unwrap_or_else(|e| panic!("ip {}: {e}", args.join(" ")))
    }

    pub fn try_ip(&self, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// `bridge -n NS ARGS`, which must succeed.
    pub fn bridge(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("bridge", &full).unwrap_or_else(|e| panic!("bridge {}: {e}", args.join(" ")))
    }

    /// `ip -d -j link show dev NAME`, or `None` when it does not exist.
    pub fn link(&self, name: &str) -> Option<Value> {
        let out = self.try_ip(&["-d", "-j", "link", "show", "dev", name]).ok()?;
        let v: Value = serde_json::from_str(&out).expect("ip -j output is JSON");
        v.as_array().and_then(|a| a.first()).cloned()
    }

    pub fn ifindex(&self, name: &str) -> Option<u64> {
        self.link(name).and_then(|l| l["ifindex"].as_u64())
    }

    /// Destinations of the all-zero-MAC FDB entries of `dev`.
    pub fn zero_fdb(&self, dev: &str) -> BTreeSet<String> {
        let out = self.bridge(&["-j", "fdb", "show", "dev", dev]);
        let v: Value = serde_json::from_str(&out).expect("bridge -j output is JSON");
        v.as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["mac"] == "00:00:00:00:00:00")
            .filter_map(|e| e["dst"].as_str().map(String::from))
            .collect()
    }

    /// A veth pair `a` <-> `b`, both up, `addrs` on `a` (IPv6 without DAD).
    pub fn veth(&self, a: &str, b: &str, addrs: &[&str]) {
        self.ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
        for addr in addrs {
            if addr.contains(':') {
                self.ip(&["addr", "add", addr, "dev", a, "nodad"]);
            } else {
                self.ip(&["addr", "add", addr, "dev", a]);
            }
        }
        self.ip(&["link", "set", a, "up"]);
        self.ip(&["link", "set", b, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("cannot remove network namespace {}: {e}", self.name);
        }
    }
}

pub fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd} {} exited with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether the interface's admin flag is up (`IFF_UP`).
pub fn is_up(link: &Value) -> bool {
    link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP"))
}

/// `linkinfo.info_data` of a link.
pub fn info_data(link: &Value) -> &Value {
    &link["linkinfo"]["info_data"]
}
