//! The node's pod networking: the primary CNI network, multus and whereabouts configuration, routes to the other nodes' pods.

use super::*;

impl KubeletNode {
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

    pub(super) fn write_whereabouts_config(&self, setup: &NodeSetup) -> anyhow::Result<()> {
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

    pub(super) fn write_multus_kubeconfig(&self, setup: &NodeSetup) -> anyhow::Result<()> {
        let kubeconfig = std::fs::read(&setup.multus_kubeconfig)?;
        self.write_file("/etc/cni/net.d/multus.d/multus.kubeconfig", &kubeconfig)
    }
}
