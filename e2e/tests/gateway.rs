//! The headline: a gateway network across nodes. The controller, the real agents in
//! namespace-nodes, and pods attached by the real multus with the NADs the controller
//! wrote (nno-cni-shim, the bridge plugin, whereabouts). A client pod on one node
//! sends its traffic through a router pod on another node, across the VXLAN, without
//! NET_ADMIN; and nno-cni-shim holds an attachment until the node's bridge is Ready.

use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use nno::api::Network;
use nno_e2e::node::SimNode;
use nno_e2e::outside::{self, Outside};
use nno_e2e::pod::{Cni, Pod};
use nno_e2e::process::Process;
use nno_e2e::{Cluster, eventually, operator, samples};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

struct Product {
    cluster: Cluster,
    cni: Cni,
    _controller: Process,
}

async fn product(extra: &[&str]) -> Product {
    let cluster = Cluster::start().await.unwrap();
    operator::install_rbac(&cluster).await.unwrap();
    let cni = Cni::install(&cluster, &["nno-cni-shim"]).await.unwrap();
    let controller_kubeconfig = operator::component_kubeconfig(&cluster, "controller")
        .await
        .unwrap();
    let mut args = cni.controller_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let controller = operator::start_controller(&cluster, &controller_kubeconfig, "a", &args).unwrap();
    Product {
        cluster,
        cni,
        _controller: controller,
    }
}

async fn node(p: &Product, name: &str, index: u8, labels: &[(&str, &str)]) -> SimNode {
    let mut node = SimNode::create(&p.cluster, name, index, 1500, labels)
        .await
        .unwrap();
    node.start_agent(&p.cluster).await.unwrap();
    node
}

/// The sample Network, as a user would apply it.
fn sample(file: &str) -> Network {
    let (_, doc) = samples::documents()
        .unwrap()
        .into_iter()
        .find(|(path, _)| path.ends_with(file))
        .unwrap_or_else(|| panic!("no sample {file}"));
    serde_json::from_value(doc).unwrap()
}

/// A Network on the nodes labelled gw=true whose VXLAN carrier is `device`, which
/// the test creates (or not): until it exists the bridge is not Ready.
fn waiting_for_carrier(name: &str, vni: u32, device: &str) -> Network {
    serde_json::from_value(json!({
        "apiVersion": "nno.dev/v1alpha1", "kind": "Network", "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"matchLabels": {"gw": "true"}},
            "bridge": {"name": format!("br-{name}")},
            "vxlan": {"vni": vni, "group": format!("239.1.1.{}", vni % 256), "device": device},
            "mtu": 1400,
            "ipam": {"range": "192.168.50.0/24"},
            "attachments": {"namespaces": ["default"], "router": {"address": "192.168.50.1"}}
        }
    }))
    .unwrap()
}

/// Creates `net` and waits for the controller to write its router NAD.
async fn create_and_wait_for_nads(p: &Product, net: &Network) {
    let networks: Api<Network> = Api::all(p.cluster.client());
    networks.create(&PostParams::default(), net).await.unwrap();
    let router = format!("{}-router", kube::ResourceExt::name_any(net));
    let nads = Api::<nno::multus::NetworkAttachmentDefinition>::namespaced(p.cluster.client(), "default");
    eventually("NADs written", WAIT, || async {
        nads.get_opt(&router)
            .await
            .map_err(|e| e.to_string())?
            .map(|_| ())
            .ok_or("not yet".to_string())
    })
    .await;
}

/// The networks annotation of a pod in samples/gateway-network/pods.yaml.
fn sample_pod_networks(name: &str) -> String {
    let (_, doc) = samples::documents()
        .unwrap()
        .into_iter()
        .find(|(path, doc)| path.ends_with("gateway-network/pods.yaml") && doc["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no sample pod {name}"));
    doc["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn client_traffic_leaves_through_a_router_pod_on_another_node() {
    let p = product(&[]).await;
    let gw = [("nno.dev/gateway-network", "true")];
    let a = node(&p, "node-a", 1, &gw).await;
    let b = node(&p, "node-b", 2, &gw).await;
    let networks: Api<Network> = Api::all(p.cluster.client());
    networks
        .create(&PostParams::default(), &sample("gateway-network/multi-node.yaml"))
        .await
        .unwrap();
    p.cluster
        .kubectl_ok(&[
            "wait",
            "--for=condition=Ready",
            "network/gateway",
            "--timeout=60s",
        ])
        .unwrap();
    let mtu = networks
        .get("gateway")
        .await
        .unwrap()
        .status
        .unwrap()
        .mtu
        .unwrap();
    assert_eq!(mtu, 1450);

    // The router pod on node-b: a static 192.168.50.1 on the gateway network, and the
    // router's own job (forwarding, NAT out of its eth0), which is its business.
    let router_networks = sample_pod_networks("router");
    let router = Pod::create(
        &p.cluster,
        &p.cni,
        &b,
        "default",
        "router",
        Some(&router_networks),
    )
    .await
    .unwrap();
    router.add_ok().await.unwrap();
    assert_eq!(router.ipv4("net1").unwrap().to_string(), "192.168.50.1");
    outside::route_out_through(&router, &b, &p.cni).unwrap();

    let outside = Outside::create(&p.cluster).unwrap();
    let (a_ip, b_ip) = (a.address.to_string(), b.address.to_string());
    outside.count_from(&a_ip).unwrap();
    outside.count_from(&b_ip).unwrap();

    // The client pod on node-a: an address from whereabouts, the default route from
    // the Network's ipam.routes through the router.
    let client_networks = sample_pod_networks("client");
    let client = Pod::create(
        &p.cluster,
        &p.cni,
        &a,
        "default",
        "client",
        Some(&client_networks),
    )
    .await
    .unwrap();
    client.add_ok().await.unwrap();
    let net1 = client.ipv4("net1").unwrap();
    assert!(
        net1.to_string().starts_with("192.168.50.") && net1.to_string() != "192.168.50.1",
        "{net1}"
    );
    let target: std::net::IpAddr = outside.address.parse().unwrap();
    let (via, dev) = client.route_to(target).unwrap();
    assert_eq!(
        (via.map(|v| v.to_string()), dev.as_str()),
        (Some("192.168.50.1".into()), "net1")
    );
    let client_mtu = client.ip(&["-j", "link", "show", "dev", "net1"]).unwrap();
    assert!(
        client_mtu.contains("\"mtu\":1450"),
        "pod MTU is the derived MTU: {client_mtu}"
    );
    let status = client.network_status().await.unwrap();
    assert!(
        status.iter().any(|s| s["name"] == "default/gateway"),
        "{status:?}"
    );

    // The client reaches the outside host, and the outside host sees node-b (where the
    // router is), never node-a (where the client is): the traffic crossed the VXLAN
    // and left through the router pod.
    eventually("client reaches the outside host", WAIT, || async {
        client
            .exec("ping", &["-c", "1", "-W", "1", &outside.address])
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    client
        .exec("ping", &["-c", "3", "-i", "0.2", "-W", "1", &outside.address])
        .unwrap();
    let counters = outside.counters().unwrap();
    assert!(
        outside.received_from(&b_ip).unwrap() >= 3,
        "received from node-b: {}\n{counters}",
        outside.received_from(&b_ip).unwrap()
    );
    assert_eq!(
        outside.received_from(&a_ip).unwrap(),
        0,
        "nothing came straight from node-a"
    );

    client.del_ok().await.unwrap();
    router.del_ok().await.unwrap();
}

#[tokio::test]
async fn the_shim_holds_an_attachment_until_the_bridge_is_ready() {
    let p = product(&["--shim-timeout=20"]).await;
    let a = node(&p, "node-a", 1, &[("gw", "true")]).await;
    // The VXLAN's carrier does not exist yet, so the bridge is not Ready on node-a.
    let net = waiting_for_carrier("late", 77, "carrier0");
    create_and_wait_for_nads(&p, &net).await;

    let pod = Pod::create(&p.cluster, &p.cni, &a, "default", "waits", Some("late-router"))
        .await
        .unwrap();
    let bridge_ports = || {
        a.ip(&["-o", "link", "show", "master", "br-late"])
            .unwrap_or_default()
    };
    let (added, ready_at) = tokio::join!(pod.add(), async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            !bridge_ports().contains("veth"),
            "the bridge plugin must not run while the bridge is not Ready"
        );
        assert!(!pod.has_interface("net1"));
        a.add_carrier("carrier0", "198.19.254.1".parse().unwrap())
            .unwrap();
        a.enslaved_and_up("vxlan77", "br-late").await
    });
    let added_at = Instant::now();
    let out = added.unwrap();
    assert!(out.success(), "ADD: {}\n{}", out.stdout, out.stderr);
    println!(
        "ADD (multus, shim, bridge, static IPAM) finished {:?} after the VXLAN joined the bridge",
        added_at - ready_at
    );
    assert!(added_at - ready_at < Duration::from_secs(2));
    assert_eq!(pod.ipv4("net1").unwrap().to_string(), "192.168.50.1");
    assert!(bridge_ports().contains("veth"));
    pod.del_ok().await.unwrap();
}

#[tokio::test]
async fn the_shim_refuses_naming_node_bridge_and_reason() {
    let p = product(&["--shim-timeout=2"]).await;
    let a = node(&p, "node-a", 1, &[("gw", "true")]).await;
    let net = waiting_for_carrier("never", 78, "nowhere0");
    create_and_wait_for_nads(&p, &net).await;

    let pod = Pod::create(&p.cluster, &p.cni, &a, "default", "refused", Some("never-router"))
        .await
        .unwrap();
    let out = pod.add().await.unwrap();
    assert!(!out.success(), "ADD must fail while the bridge is not Ready");
    let text = format!("{}{}", out.stdout, out.stderr);
    for expected in ["br-never", "node-a", "CarrierMissing", "nowhere0"] {
        assert!(text.contains(expected), "the refusal names {expected}:\n{text}");
    }
    let error: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap_or_default();
    println!("multus answered: {error}");
    assert!(
        !a.ip(&["-o", "link", "show", "master", "br-never"])
            .unwrap_or_default()
            .contains("veth")
    );
    assert!(!pod.has_interface("net1"));
    // DEL of the refused attachment always succeeds.
    pod.del_ok().await.unwrap();
}

/// A single-node Network `name` on the nodes labelled side=`side`, bridge br-same.
fn same_bridge(name: &str, side: &str, third_octet: u8) -> Network {
    serde_json::from_value(json!({
        "apiVersion": "nno.dev/v1alpha1", "kind": "Network", "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"matchLabels": {"side": side}},
            "bridge": {"name": "br-same"},
            "ipam": {"range": format!("192.168.{third_octet}.0/24")},
            "attachments": {"namespaces": ["default"], "router": {"address": format!("192.168.{third_octet}.1")}}
        }
    }))
    .unwrap()
}

/// Two Networks with one bridge name on disjoint nodes: each node's br-same is its
/// own Network's. A pod attached with the first Network's NAD on a node of the second
/// is refused by the shim, which says whose bridge it is; on the first's node it
/// attaches.
#[tokio::test]
async fn an_attachment_is_refused_on_another_networks_bridge_of_its_name() {
    let p = product(&["--shim-timeout=2"]).await;
    let a = node(&p, "node-a", 1, &[("side", "a")]).await;
    let b = node(&p, "node-b", 2, &[("side", "b")]).await;
    create_and_wait_for_nads(&p, &same_bridge("first", "a", 60)).await;
    create_and_wait_for_nads(&p, &same_bridge("second", "b", 61)).await;
    for node in [&a, &b] {
        eventually("br-same Ready", WAIT, || async {
            let r = node
                .readiness("/v1/bridges/br-same")
                .await
                .map_err(|e| e.to_string())?;
            (r["ready"] == true).then_some(()).ok_or(r.to_string())
        })
        .await;
    }

    let wrong = Pod::create(
        &p.cluster,
        &p.cni,
        &b,
        "default",
        "wrong-node",
        Some("first-router"),
    )
    .await
    .unwrap();
    let out = wrong.add().await.unwrap();
    assert!(!out.success(), "ADD on another Network's bridge must fail");
    let text = format!("{}{}", out.stdout, out.stderr);
    for expected in [
        "OwnedElsewhere",
        "bridge br-same on node node-b belongs to Network second, not to Network first",
    ] {
        assert!(text.contains(expected), "the refusal says {expected:?}:\n{text}");
    }
    assert!(!wrong.has_interface("net1"));
    assert!(!b.ports("br-same").unwrap().iter().any(|p| p.contains("veth")));
    wrong.del_ok().await.unwrap();

    let right = Pod::create(
        &p.cluster,
        &p.cni,
        &a,
        "default",
        "right-node",
        Some("first-router"),
    )
    .await
    .unwrap();
    let out = right.add().await.unwrap();
    assert!(out.success(), "ADD: {}\n{}", out.stdout, out.stderr);
    assert_eq!(right.ipv4("net1").unwrap().to_string(), "192.168.60.1");
    right.del_ok().await.unwrap();
}
