//! Simulated pods attached by the real multus thin plugin, bridge plugin, host-local,
//! static and whereabouts IPAM, against a real API server, on simulated nodes. No
//! operator runs here: the NADs are written by hand and the bridges made with `ip`,
//! so that these tests show the harness (`nno_e2e::pod`) itself.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use nno_e2e::node::{NODE_RUN_DIR, SHIM_SOCKET, SimNode};
use nno_e2e::pod::{self, Cni, DEFAULT_NETWORK, Pod};
use nno_e2e::{Cluster, eventually, operator, require_root};
use serde_json::{Value, json};

const RANGE: &str = "192.168.50.0/24";
const GATEWAY: &str = "192.168.50.1";
const FLAT: &str = "/etc/cni/net.d/whereabouts.d/whereabouts.conf";

fn bridge_nad(ipam: Value) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "plugins": [{
            "type": "bridge", "bridge": "br-e2e", "mtu": 1500,
            "isGateway": false, "isDefaultGateway": false, "ipMasq": false,
            "hairpinMode": false, "promiscMode": false, "preserveDefaultVlan": false,
            "ipam": ipam,
        }]
    })
}

/// Names of the interfaces enslaved to `bridge` on `node`.
fn ports(node: &SimNode, bridge: &str) -> Vec<String> {
    node.ports(bridge).unwrap()
}

fn in_range(ip: Ipv4Addr) -> bool {
    ip.octets()[..3] == [192, 168, 50]
}

/// Two nodes with a bridge `br-e2e` each (unconnected: no VXLAN here), the NADs
/// `apps/clients` (whereabouts) and `apps/router` (static IPAM) on it.
async fn setup() -> (Cluster, Cni, SimNode, SimNode) {
    require_root();
    let cluster = Cluster::start().await.unwrap();
    let cni = Cni::install(&cluster, &[]).await.unwrap();
    let a = SimNode::create(&cluster, "node-a", 1, 1500, &[]).await.unwrap();
    let b = SimNode::create(&cluster, "node-b", 2, 1500, &[]).await.unwrap();
    for node in [&a, &b] {
        node.ip(&["link", "add", "br-e2e", "type", "bridge"]).unwrap();
        node.ip(&["link", "set", "br-e2e", "up"]).unwrap();
    }
    pod::create_namespace(&cluster, "apps").await.unwrap();
    // whereabouts does not exclude its own `gateway` from the pool: exclude it here.
    let clients = bridge_nad(cni.whereabouts_ipam(json!({
        "range": RANGE, "exclude": [format!("{GATEWAY}/32")], "gateway": GATEWAY,
    })));
    pod::create_nad(&cluster, "apps", "clients", &clients)
        .await
        .unwrap();
    let router = bridge_nad(json!({"type": "static", "addresses": [{"address": format!("{GATEWAY}/24")}]}));
    pod::create_nad(&cluster, "apps", "router", &router)
        .await
        .unwrap();
    (cluster, cni, a, b)
}

fn gateway_of(subnet: Ipv4Addr) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(subnet) + 1))
}

#[tokio::test]
async fn multus_attaches_pods_with_whereabouts_and_static_ipam_and_detaches_them() {
    let (cluster, cni, a, b) = setup().await;
    let router = Pod::create(&cluster, &cni, &a, "apps", "router", Some("router"))
        .await
        .unwrap();
    let client_a = Pod::create(&cluster, &cni, &a, "apps", "client-a", Some("clients"))
        .await
        .unwrap();
    let client_b = Pod::create(&cluster, &cni, &b, "apps", "client-b", Some("apps/clients"))
        .await
        .unwrap();
    let result = router.add_ok().await.unwrap();
    client_a.add_ok().await.unwrap();
    client_b.add_ok().await.unwrap();

    // multus returns the default network's result, as the kubelet expects.
    assert_eq!(result["cniVersion"], "1.0.0");
    let eth0 = router.ipv4("eth0").unwrap();
    assert_eq!(
        result["ips"][0]["address"],
        format!("{eth0}/24"),
        "result: {result}"
    );

    // eth0 from each node's own default-network subnet, with the default route via
    // the node's cni0; net1 from the NADs.
    let subnet_a = cni.pod_subnet(&a);
    let subnet_b = cni.pod_subnet(&b);
    assert_ne!(subnet_a, subnet_b);
    for (pod, subnet) in [(&router, subnet_a), (&client_a, subnet_a), (&client_b, subnet_b)] {
        let eth0 = pod.ipv4("eth0").unwrap();
        assert_eq!(
            eth0.octets()[..3],
            subnet.octets()[..3],
            "{} eth0 {eth0}",
            pod.name
        );
        assert_ne!(IpAddr::V4(eth0), gateway_of(subnet), "{}", pod.name);
        assert_eq!(
            pod.default_routes().unwrap(),
            vec![(gateway_of(subnet), "eth0".to_string())]
        );
    }
    assert_eq!(router.addresses("net1").unwrap(), vec![format!("{GATEWAY}/24")]);
    let (net1_a, net1_b) = (client_a.ipv4("net1").unwrap(), client_b.ipv4("net1").unwrap());
    assert_ne!(net1_a, net1_b, "both nodes allocate from one pool");
    for ip in [net1_a, net1_b] {
        assert!(in_range(ip) && ip.to_string() != GATEWAY, "{ip}");
    }
    // The router answers client-a over node-a's br-e2e.
    client_a.exec("ping", &["-c", "1", "-W", "2", GATEWAY]).unwrap();

    // One pool, through the real API, holding both allocations.
    let allocations = cni.allocations().await.unwrap();
    let got: Vec<(IpAddr, &str, &str, &str)> = allocations
        .iter()
        .map(|a| {
            (
                a.ip,
                a.pod_ref.as_str(),
                a.ifname.as_str(),
                a.container_id.as_str(),
            )
        })
        .collect();
    let mut want = vec![
        (
            IpAddr::V4(net1_a),
            "apps/client-a",
            "net1",
            client_a.container_id.as_str(),
        ),
        (
            IpAddr::V4(net1_b),
            "apps/client-b",
            "net1",
            client_b.container_id.as_str(),
        ),
    ];
    want.sort();
    assert_eq!(got, want);
    assert!(
        allocations.iter().all(|a| a.pool == "192.168.50.0-24"),
        "{allocations:?}"
    );
    // With enable_overlapping_ranges (its default), one cluster-wide reservation per address.
    let mut want = vec![
        (net1_a.to_string(), "apps/client-a".to_string()),
        (net1_b.to_string(), "apps/client-b".to_string()),
    ];
    want.sort();
    assert_eq!(cni.reservations().await.unwrap(), want);

    // multus wrote the network-status back.
    let status = client_a.network_status().await.unwrap();
    assert_eq!(status.len(), 2, "{status:?}");
    assert_eq!(status[0]["name"], DEFAULT_NETWORK);
    assert_eq!(status[0]["interface"], "eth0");
    assert_eq!(status[0]["default"], true);
    assert_eq!(
        status[0]["ips"],
        json!([client_a.ipv4("eth0").unwrap().to_string()])
    );
    assert_eq!(status[1]["name"], "apps/clients");
    assert_eq!(status[1]["interface"], "net1");
    assert_eq!(status[1]["ips"], json!([net1_a.to_string()]));
    let link = client_a.ip(&["-j", "link", "show", "dev", "net1"]).unwrap();
    let link: Vec<Value> = serde_json::from_str(&link).unwrap();
    assert_eq!(status[1]["mac"], link[0]["address"]);
    let router_status = router.network_status().await.unwrap();
    assert_eq!(router_status[1]["name"], "apps/router");
    assert_eq!(router_status[1]["ips"], json!([GATEWAY]));

    // The host ends of the veths are in the nodes, on the bridges.
    assert_eq!(ports(&a, "br-e2e").len(), 2);
    assert_eq!(ports(&a, "cni0").len(), 2);
    assert_eq!(ports(&b, "br-e2e").len(), 1);
    assert_eq!(ports(&b, "cni0").len(), 1);

    // DEL releases the address and removes the veths; a repeated DEL (the kubelet
    // retries) succeeds too.
    client_b.del_ok().await.unwrap();
    let left: Vec<String> = cni
        .allocations()
        .await
        .unwrap()
        .iter()
        .map(|a| a.pod_ref.clone())
        .collect();
    assert_eq!(left, vec!["apps/client-a"]);
    assert_eq!(
        cni.reservations().await.unwrap(),
        vec![(net1_a.to_string(), "apps/client-a".to_string())]
    );
    assert!(ports(&b, "br-e2e").is_empty());
    assert!(ports(&b, "cni0").is_empty());
    assert!(!client_b.has_interface("net1") && !client_b.has_interface("eth0"));
    client_b.del_ok().await.unwrap();

    // Released addresses are handed out again.
    client_a.del_ok().await.unwrap();
    assert!(cni.allocations().await.unwrap().is_empty());
    assert!(cni.reservations().await.unwrap().is_empty());
    client_b.add_ok().await.unwrap();
    assert!(in_range(client_b.ipv4("net1").unwrap()));
    assert_eq!(cni.allocations().await.unwrap().len(), 1);

    for pod in [router, client_a, client_b] {
        pod.delete().await.unwrap();
    }
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(cluster.client(), "apps");
    assert!(pods.list(&Default::default()).await.unwrap().items.is_empty());
}

/// Two ways to send a client pod's traffic to the router on net1.
#[tokio::test]
async fn default_route_to_the_router() {
    let (cluster, mut cni, a, b) = setup().await;
    let subnet_a = cni.pod_subnet(&a);
    let gateway: IpAddr = GATEWAY.parse().unwrap();
    // A documentation address (TEST-NET-3) the route lookups ask about; nothing is sent.
    let outside: IpAddr = "203.0.113.7".parse().unwrap();

    // 1. The multus annotation `default-route`. multus v4.2.3 means to delete the
    // default network's default route from eth0 and add one via the gateway on net1,
    // but does neither: its DeleteDefaultGW deletes routes whose Dst is nil, and the
    // netlink library it is built with (vishvananda/netlink v1.3.1) reports a default
    // route's Dst as 0.0.0.0/0; its SetDefaultGW then gets EEXIST from the kernel and
    // ignores it (multus-cni PR #1552, open). The ADD succeeds and the annotation is
    // without effect while eth0 has a default route, as it has on real clusters.
    // This asserts what the pinned multus does, so that moving the pin shows up here.
    let annotation = json!([{"name": "clients", "default-route": [GATEWAY]}]).to_string();
    cni.multus_log_level = "debug".into();
    let client = Pod::create(&cluster, &cni, &a, "apps", "client", Some(&annotation))
        .await
        .unwrap();
    let out = client.add().await.unwrap();
    let log = out.stderr.clone();
    out.ok().unwrap();
    assert!(
        log.contains("Detected gateway override on interface net1"),
        "{log}"
    );
    assert!(
        log.contains("SetDefaultGW: Route already exists, ignoring"),
        "{log}"
    );
    assert!(in_range(client.ipv4("net1").unwrap()));
    assert_eq!(
        client.default_routes().unwrap(),
        vec![(gateway_of(subnet_a), "eth0".to_string())],
        "multus v4.2.3 leaves the default route on eth0 (multus-cni PR #1552)"
    );
    assert_eq!(
        client.route_to(outside).unwrap(),
        (Some(gateway_of(subnet_a)), "eth0".to_string())
    );
    let status = client.network_status().await.unwrap();
    assert_eq!(status[1]["name"], "apps/clients");
    client.del_ok().await.unwrap();

    // 2. A default route in the NAD's IPAM routes (what a Network's
    // `spec.ipam.routes: [{dst: 0.0.0.0/0}]` renders). The bridge plugin (v1.9.1) adds
    // IPAM routes with NLM_F_CREATE but not NLM_F_EXCL, which puts the new default
    // route in front of eth0's: the kernel picks it.
    let via_router = bridge_nad(cni.whereabouts_ipam(json!({
        "range": RANGE, "exclude": [format!("{GATEWAY}/32")], "gateway": GATEWAY,
        "routes": [{"dst": "0.0.0.0/0", "gw": GATEWAY}],
    })));
    pod::create_nad(&cluster, "apps", "via-router", &via_router)
        .await
        .unwrap();
    let client_b = Pod::create(&cluster, &cni, &b, "apps", "client-b", Some("via-router"))
        .await
        .unwrap();
    client_b.add_ok().await.unwrap();
    assert_eq!(
        client_b.default_routes().unwrap(),
        vec![
            (gateway, "net1".to_string()),
            (gateway_of(cni.pod_subnet(&b)), "eth0".to_string())
        ]
    );
    assert_eq!(
        client_b.route_to(outside).unwrap(),
        (Some(gateway), "net1".to_string())
    );
    client_b.del_ok().await.unwrap();
    assert!(cni.allocations().await.unwrap().is_empty());
}

/// What a plugin running on node X finds at /run/nno-e2e is node X's run directory,
/// with its agent's readiness socket, and whereabouts' flat file is in its /etc; the
/// host's /run/nno-e2e stays empty and its /etc unchanged.
#[tokio::test]
async fn cni_invocations_see_their_own_nodes_run_directory() {
    use std::os::unix::fs::MetadataExt;
    require_root();
    let host_flat = std::fs::read(FLAT).ok();
    let cluster = Cluster::start().await.unwrap();
    let cni = Cni::install(&cluster, &[]).await.unwrap();
    operator::install_rbac(&cluster).await.unwrap();
    let mut a = SimNode::create(&cluster, "node-a", 1, 1500, &[]).await.unwrap();
    let mut b = SimNode::create(&cluster, "node-b", 2, 1500, &[]).await.unwrap();
    for node in [&mut a, &mut b] {
        assert_eq!(node.socket, node.run_dir.join("agent.sock"));
        std::fs::write(node.run_dir.join("marker"), &node.name).unwrap();
        node.start_agent(&cluster).await.unwrap();
    }
    let on = |node: &SimNode, script: String| {
        let mut cmd = cni.node_command(node, Path::new("/bin/sh")).unwrap();
        cmd.args(["-c", &script]);
        async move {
            let out = cmd.output().await.unwrap();
            assert!(
                out.status.success(),
                "{script}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        }
    };
    for node in [&a, &b] {
        assert_eq!(on(node, format!("cat {NODE_RUN_DIR}/marker")).await, node.name);
        let addr = on(node, "ip -o -4 addr show dev eth0".into()).await;
        assert!(
            addr.contains(&format!(" {}/24 ", node.address)),
            "runs in the node's netns: {addr}"
        );
        let flat: Value = serde_json::from_str(&on(node, format!("cat {FLAT}")).await).unwrap();
        assert_eq!(
            flat["kubernetes"]["kubeconfig"],
            json!(cni.whereabouts_kubeconfig)
        );

        // The node's agent serves on its socket; at SHIM_SOCKET the plugins on the node
        // find that very socket (same device and inode), not another node's.
        let answer = eventually("the agent serving", Duration::from_secs(30), || async {
            node.readiness("/v1/bridges/br-none")
                .await
                .map_err(|e| e.to_string())
        })
        .await;
        assert_eq!(answer["node"], json!(node.name));
        let host = std::fs::metadata(&node.socket).unwrap();
        let seen = on(
            node,
            format!("test -S {SHIM_SOCKET} && stat -c %d:%i {SHIM_SOCKET}"),
        )
        .await;
        assert_eq!(
            seen.trim(),
            format!("{}:{}", host.dev(), host.ino()),
            "{}",
            node.name
        );
    }
    assert!(!Path::new(NODE_RUN_DIR).join("marker").exists());
    assert!(!Path::new(SHIM_SOCKET).exists());
    assert_eq!(std::fs::read(FLAT).ok(), host_flat);
}
