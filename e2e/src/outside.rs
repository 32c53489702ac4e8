//! A host outside the cluster: a network namespace on the underlay (198.18.N.250)
//! that counts the ICMP packets it receives per source address. The gateway tests
//! and nno-local use it as "the internet" a router pod sends its clients' traffic to.

use crate::cluster::Cluster;
use crate::underlay::ip;

/// A host outside the cluster on the underlay, counting the ICMP it receives per
/// source address. Removed on drop.
pub struct Outside {
    pub netns: String,
    veth: String,
    pub address: String,
}

impl Outside {
    pub fn create(cluster: &Cluster) -> anyhow::Result<Self> {
        let slot = cluster.underlay.bridge.trim_start_matches("nno-ul").to_string();
        let netns = format!("nno{slot}-outside");
        let veth = format!("nno{slot}out");
        let address = cluster.underlay.addr(250).to_string();
        ip(&["netns", "add", &netns])?;
        let outside = Self {
            netns: netns.clone(),
            veth: veth.clone(),
            address: address.clone(),
        };
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ])?;
        ip(&["link", "set", &veth, "master", &cluster.underlay.bridge, "up"])?;
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        Ok(outside)
    }

    /// Starts counting ICMP packets from `source`.
    pub fn count_from(&self, source: &str) -> anyhow::Result<()> {
        run_in(
            &self.netns,
            "iptables",
            &["-A", "INPUT", "-p", "icmp", "-s", source, "-j", "ACCEPT"],
        )?;
        Ok(())
    }

    /// ICMP packets received from `source` since [`Outside::count_from`].
    pub fn received_from(&self, source: &str) -> anyhow::Result<u64> {
        Ok(count_in(&self.counters()?, source))
    }

    /// The counting rules, as `iptables -L -v` prints them.
    pub fn counters(&self) -> anyhow::Result<String> {
        run_in(&self.netns, "iptables", &["-L", "INPUT", "-v", "-x", "-n"])
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", "dev", &self.veth]);
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

/// The packet count of the rule for `source` in `iptables -L -v -x -n` output (0 when
/// there is none).
pub fn count_in(counters: &str, source: &str) -> u64 {
    counters
        .lines()
        .find(|l| l.split_whitespace().any(|w| w == source))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Runs `program` in network namespace `netns`; its stdout, or its stderr as error.
pub fn run_in(netns: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
    crate::underlay::exec_in(netns, netns, program, args)
}

/// What makes `router` (a pod on `node`) a gateway to the outside: it forwards and
/// masquerades its clients' traffic out of its eth0 (the router's own business, as a
/// VPN client or firewall pod would), and `node` forwards and masquerades its pods'
/// traffic onto the underlay, as a cluster's primary CNI does.
pub fn route_out_through(
    router: &crate::pod::Pod,
    node: &crate::node::SimNode,
    cni: &crate::pod::Cni,
) -> anyhow::Result<()> {
    router.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    router.exec(
        "iptables",
        &["-t", "nat", "-A", "POSTROUTING", "-o", "eth0", "-j", "MASQUERADE"],
    )?;
    let subnet = format!("{}/24", cni.pod_subnet(node));
    node.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    node.exec(
        "iptables",
        &[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            &subnet,
            "-o",
            "eth0",
            "-j",
            "MASQUERADE",
        ],
    )?;
    Ok(())
}
