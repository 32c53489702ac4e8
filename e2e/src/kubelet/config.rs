//! Configuration files of the node's components, rendered (pure).

use super::*;

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
pub(super) fn containerd_config(sandbox_image: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
