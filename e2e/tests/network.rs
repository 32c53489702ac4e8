//! The whole product on a simulated cluster: the controller and the real agents in
//! network namespaces acting as nodes, against the real API server. A Network
//! becomes bridges and VXLANs on the nodes, NADs with the MTU derived from the
//! nodes' real carriers, and goes away without leaving anything behind.

use std::time::Duration;

use kube::api::{Api, DeleteParams, ListParams, PostParams};
use nno::api::Network;
use nno::multus::NetworkAttachmentDefinition;
use nno_e2e::node::SimNode;
use nno_e2e::process::Process;
use nno_e2e::{Cluster, eventually, network_condition, operator};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(40);

struct Product {
    cluster: Cluster,
    _controller: Process,
}

async fn product() -> Product {
    let cluster = Cluster::start().await.unwrap();
    operator::install_rbac(&cluster).await.unwrap();
    let controller_kubeconfig = operator::component_kubeconfig(&cluster, "controller")
        .await
        .unwrap();
    let controller = operator::start_controller(&cluster, &controller_kubeconfig, "a", &[]).unwrap();
    Product {
        cluster,
        _controller: controller,
    }
}

async fn node(p: &Product, name: &str, index: u8, mtu: u32, labels: &[(&str, &str)]) -> SimNode {
    let mut node = SimNode::create(&p.cluster, name, index, mtu, labels)
        .await
        .unwrap();
    node.start_agent(&p.cluster).await.unwrap();
    node
}

fn network(name: &str, bridge: &str, vni: u32) -> Network {
    serde_json::from_value(json!({
        "apiVersion": "nno.dev/v1alpha1", "kind": "Network", "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"matchLabels": {"gw": "true"}},
            "bridge": {"name": bridge},
            "vxlan": {"vni": vni, "group": "239.1.1.1"},
            "ipam": {"range": "192.168.50.0/24", "gateway": "192.168.50.1"},
            "attachments": {"namespaces": ["default"], "router": {"address": "192.168.50.1"}}
        }
    }))
    .unwrap()
}

async fn nad_mtu(cluster: &Cluster, name: &str) -> Result<u64, String> {
    let api: Api<NetworkAttachmentDefinition> = Api::namespaced(cluster.client(), "default");
    let nad = api
        .get_opt(name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or(format!("no NAD {name}"))?;
    let config: Value = serde_json::from_str(&nad.spec.config).map_err(|e| e.to_string())?;
    config["plugins"][1]["mtu"]
        .as_u64()
        .ok_or(format!("no mtu in {config}"))
}

async fn mtu_becomes(p: &Product, nodes: &[&SimNode], bridge: &str, vxlan: &str, nad: &str, want: u64) {
    eventually(&format!("MTU {want} everywhere"), WAIT, || async {
        let got = nad_mtu(&p.cluster, nad).await?;
        if got != want {
            return Err(format!("NAD mtu {got}"));
        }
        for n in nodes {
            for iface in [bridge, vxlan] {
                let mtu = n.link(iface).and_then(|l| l["mtu"].as_u64());
                if mtu != Some(want) {
                    return Err(format!("{} {iface} mtu {mtu:?}", n.name));
                }
            }
        }
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn the_mtu_follows_the_real_carriers_of_the_selected_nodes() {
    let p = product().await;
    let a = node(&p, "node-a", 1, 9000, &[("gw", "true")]).await;
    let b = node(&p, "node-b", 2, 9000, &[("gw", "true")]).await;
    let c = node(&p, "node-c", 3, 1500, &[]).await;
    let networks: Api<Network> = Api::all(p.cluster.client());
    networks
        .create(&PostParams::default(), &network("gw", "br-gw", 100))
        .await
        .unwrap();

    // Carriers of 9000 on every selected node: 8950 for bridges, VXLANs and NADs.
    mtu_becomes(&p, &[&a, &b], "br-gw", "vxlan100", "gw", 8950).await;
    assert_eq!(nad_mtu(&p.cluster, "gw-router").await.unwrap(), 8950);
    p.cluster
        .kubectl_ok(&["wait", "--for=condition=Ready", "network/gw", "--timeout=40s"])
        .unwrap();
    assert_eq!(c.ifindex("br-gw"), None, "node-c is not selected");

    // node-c, with a 1500 carrier, joins: the pods keep 8950 (the MTU was
    // established when the Network was Ready everywhere); node-c is not Ready, its
    // VXLAN refused with the carrier named, and the Network says how to change it.
    c.register(&p.cluster, &[("gw", "true")]).await.unwrap();
    let message =
        nno_e2e::network_reason(&networks, "gw", "Ready", "MtuTooLarge", Duration::from_secs(40)).await;
    assert!(
        message.contains("node-c (carrier eth0: at most 1450)"),
        "{message}"
    );
    for node in [&a, &b] {
        assert_eq!(
            node.link("br-gw").unwrap()["mtu"],
            8950,
            "{} keeps 8950",
            node.name
        );
    }
    assert_eq!(nad_mtu(&p.cluster, "gw").await.unwrap(), 8950);
    let state = eventually(
        "node-c reports its VXLAN refused",
        Duration::from_secs(40),
        || async {
            let api: Api<nno::api::NodeNetworkState> = Api::all(p.cluster.client());
            let s = api.get("node-c").await.map_err(|e| e.to_string())?;
            let vx = s
                .status
                .and_then(|s| s.interfaces.into_iter().find(|i| i.name.as_str() == "vxlan100"))
                .ok_or("no vxlan100 yet")?;
            if !vx.ready && vx.message.contains("eth0") {
                Ok(vx.message)
            } else {
                Err(format!("{} {}", vx.reason, vx.message))
            }
        },
    )
    .await;
    println!("node-c: {state}");

    // The user lowers the MTU on purpose: 1450 everywhere, and a Warning says so.
    networks
        .patch(
            "gw",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&serde_json::json!({"spec": {"mtu": 1450}})),
        )
        .await
        .unwrap();
    mtu_becomes(&p, &[&a, &b, &c], "br-gw", "vxlan100", "gw", 1450).await;
    let events = p
        .cluster
        .kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            "reason=MtuChanged",
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .unwrap();
    assert!(events.contains("lowered from 8950 to 1450"), "{events}");
    p.cluster
        .kubectl_ok(&["wait", "--for=condition=Ready", "network/gw", "--timeout=40s"])
        .unwrap();
    let status = networks.get("gw").await.unwrap().status.unwrap();
    assert_eq!(
        (status.desired_nodes, status.ready_nodes, status.mtu),
        (3, 3, Some(1450))
    );
}

#[tokio::test]
async fn a_conflicting_network_changes_nothing_on_the_nodes() {
    let p = product().await;
    let a = node(&p, "node-a", 1, 1500, &[("gw", "true")]).await;
    let networks: Api<Network> = Api::all(p.cluster.client());
    networks
        .create(&PostParams::default(), &network("first", "br-gw", 100))
        .await
        .unwrap();
    p.cluster
        .kubectl_ok(&["wait", "--for=condition=Ready", "network/first", "--timeout=40s"])
        .unwrap();
    let before = (a.ifindex("br-gw"), a.ifindex("vxlan100"));

    tokio::time::sleep(Duration::from_millis(1100)).await; // creation timestamps have 1 s resolution
    let mut second = network("second", "br-gw", 200);
    second.spec.attachments.name = Some("second".into());
    second.spec.attachments.router = None;
    networks.create(&PostParams::default(), &second).await.unwrap();
    let message = network_condition(&networks, "second", "Conflict", "True", WAIT).await;
    assert!(message.contains("older Network first"), "{message}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        a.ifindex("vxlan200"),
        None,
        "nothing is built for the newer Network"
    );
    assert_eq!(
        (a.ifindex("br-gw"), a.ifindex("vxlan100")),
        before,
        "the older one's links are untouched"
    );
    assert_eq!(a.link("br-gw").unwrap()["ifalias"], "nno.dev owner=Network/first");
    assert!(
        nad_mtu(&p.cluster, "second").await.is_err(),
        "no NAD for the newer Network"
    );
}

/// One bridge name: a (oldest) on node-a, b on node-a and node-b, c (newest) on
/// node-b. b loses to a on node-a; so c keeps the name on node-b. The controller and
/// both agents agree: a's bridge on node-a, c's on node-b, b nowhere and in Conflict.
#[tokio::test]
async fn every_node_and_the_controller_agree_on_the_winner() {
    let p = product().await;
    let a = node(&p, "node-a", 1, 1500, &[("gw", "true"), ("side", "a")]).await;
    let b = node(&p, "node-b", 2, 1500, &[("gw", "true"), ("side", "b")]).await;
    let networks: Api<Network> = Api::all(p.cluster.client());
    for (name, selector, vni) in [
        ("a", json!({"side": "a"}), 301),
        ("b", json!({"gw": "true"}), 302),
        ("c", json!({"side": "b"}), 303),
    ] {
        let mut net = network(name, "br-same", vni);
        net.spec.node_selector = serde_json::from_value(json!({"matchLabels": selector})).unwrap();
        net.spec.attachments.name = Some(name.into());
        net.spec.attachments.router = None;
        networks.create(&PostParams::default(), &net).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await; // 1 s timestamps
    }
    let message = network_condition(&networks, "b", "Conflict", "True", WAIT).await;
    assert!(message.contains("older Network a"), "{message}");
    for name in ["a", "c"] {
        p.cluster
            .kubectl_ok(&[
                "wait",
                "--for=condition=Ready",
                &format!("network/{name}"),
                "--timeout=40s",
            ])
            .unwrap();
        let conflict = network_condition(&networks, name, "Conflict", "False", WAIT).await;
        println!("Network {name}: no conflict ({conflict})");
    }
    assert_eq!(a.link("br-same").unwrap()["ifalias"], "nno.dev owner=Network/a");
    assert_eq!(b.link("br-same").unwrap()["ifalias"], "nno.dev owner=Network/c");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        (a.ifindex("vxlan302"), b.ifindex("vxlan302")),
        (None, None),
        "nothing of b on any node"
    );
}

#[tokio::test]
async fn deleting_a_network_waits_for_the_nodes_and_leaves_nothing_behind() {
    let p = product().await;
    let a = node(&p, "node-a", 1, 1500, &[("gw", "true")]).await;
    let b = node(&p, "node-b", 2, 1500, &[("gw", "true")]).await;
    let networks: Api<Network> = Api::all(p.cluster.client());
    networks
        .create(&PostParams::default(), &network("gw", "br-gw", 100))
        .await
        .unwrap();
    p.cluster
        .kubectl_ok(&["wait", "--for=condition=Ready", "network/gw", "--timeout=40s"])
        .unwrap();
    assert!(a.ifindex("vxlan100").is_some() && b.ifindex("vxlan100").is_some());

    networks.delete("gw", &DeleteParams::default()).await.unwrap();
    eventually("Network gone", WAIT, || async {
        match networks.get_opt("gw").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err("still there".to_string()),
        }
    })
    .await;
    // The finalizer held it until the agents had removed the links.
    for n in [&a, &b] {
        assert_eq!(
            (n.ifindex("br-gw"), n.ifindex("vxlan100")),
            (None, None),
            "{}",
            n.name
        );
    }
    let nads: Api<NetworkAttachmentDefinition> = Api::all(p.cluster.client());
    eventually("NADs garbage-collected", WAIT, || async {
        let left = nads
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        if left.items.is_empty() {
            Ok(())
        } else {
            Err(format!("{} left", left.items.len()))
        }
    })
    .await;
    for n in [&a, &b] {
        let bridges = n.ip(&["-o", "link", "show", "type", "bridge"]).unwrap();
        let vxlans = n.ip(&["-o", "link", "show", "type", "vxlan"]).unwrap();
        assert!(
            bridges.trim().is_empty() && vxlans.trim().is_empty(),
            "{}: {bridges}{vxlans}",
            n.name
        );
    }
}

/// An object that cannot be read (here: stored under a looser schema, as after a CRD
/// version change) breaks no watch: the controller reports it and goes on with the
/// others; the agents leave every link as it is until it is fixed or deleted.
#[tokio::test]
async fn an_unreadable_network_breaks_nothing() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{DynamicObject, Patch, PatchParams};
    use kube::core::ApiResource;

    let p = product().await;
    let a = node(&p, "node-a", 1, 1500, &[("gw", "true")]).await;
    let networks: Api<Network> = Api::all(p.cluster.client());
    networks
        .create(&PostParams::default(), &network("good", "br-gw", 100))
        .await
        .unwrap();
    p.cluster
        .kubectl_ok(&["wait", "--for=condition=Ready", "network/good", "--timeout=40s"])
        .unwrap();
    let indexes = (a.ifindex("br-gw"), a.ifindex("vxlan100"));

    // Store a Network our types cannot read, through a permissive schema, then put
    // the real CRD back.
    let crds: Api<CustomResourceDefinition> = Api::all(p.cluster.client());
    let real = nno::api::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == "Network")
        .unwrap();
    let mut loose = serde_json::to_value(&real).unwrap();
    loose["spec"]["versions"][0]["schema"]["openAPIV3Schema"] =
        json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    let params = PatchParams::apply(nno_e2e::cluster::MANAGER).force();
    crds.patch("networks.nno.dev", &params, &Patch::Apply(&loose))
        .await
        .unwrap();
    let raw: Api<DynamicObject> = Api::all_with(p.cluster.client(), &ApiResource::erase::<Network>(&()));
    let broken: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "nno.dev/v1alpha1", "kind": "Network", "metadata": {"name": "broken"},
        "spec": {"bridge": 42}
    }))
    .unwrap();
    eventually("stored under the loose schema", WAIT, || async {
        raw.create(&PostParams::default(), &broken)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    crds.patch("networks.nno.dev", &params, &Patch::Apply(&real))
        .await
        .unwrap();

    // The controller says so, and keeps working on the readable one.
    eventually("InvalidObject event", WAIT, || async {
        let events = p
            .cluster
            .kubectl_ok(&[
                "get",
                "events",
                "--field-selector",
                "reason=InvalidObject",
                "-o",
                "jsonpath={.items[*].message}",
            ])
            .map_err(|e| e.to_string())?;
        if events.contains("cannot read this Network") {
            Ok(())
        } else {
            Err(events)
        }
    })
    .await;
    networks
        .patch(
            "good",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"mtu": 1400}})),
        )
        .await
        .unwrap();
    eventually("NAD of the readable Network updated", WAIT, || async {
        match nad_mtu(&p.cluster, "good").await? {
            1400 => Ok(()),
            other => Err(format!("mtu {other}")),
        }
    })
    .await;

    // The agent changes nothing while it cannot read every Network...
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!((a.ifindex("br-gw"), a.ifindex("vxlan100")), indexes);
    assert_eq!(
        a.link("br-gw").unwrap()["mtu"],
        1450,
        "frozen while an object is unreadable"
    );
    // ... and catches up once it is gone.
    raw.delete("broken", &DeleteParams::default()).await.unwrap();
    eventually("MTU applied after the unreadable object went", WAIT, || async {
        match a.link("br-gw").and_then(|l| l["mtu"].as_u64()) {
            Some(1400) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!((a.ifindex("br-gw"), a.ifindex("vxlan100")), indexes);
}
