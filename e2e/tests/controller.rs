//! The controller process against a real control plane, running with the chart's
//! RBAC and its own ServiceAccount token. The agents' reports are written by the
//! test here, so that each controller behaviour is shown on its own; the tests of the
//! whole product run real agents in network namespaces.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use nno::api::common::find_condition;
use nno::api::{LinkKind, Network};
use nno::multus::NetworkAttachmentDefinition;
use nno_e2e::{Cluster, eventually, fake, network_condition, network_reason, operator};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

async fn setup() -> (Cluster, std::path::PathBuf) {
    let cluster = Cluster::start().await.unwrap();
    operator::install_rbac(&cluster).await.unwrap();
    let kubeconfig = operator::component_kubeconfig(&cluster, "controller")
        .await
        .unwrap();
    (cluster, kubeconfig)
}

fn network(name: &str, bridge: &str, vni: u32, extra: Value) -> Network {
    let mut spec = json!({
        "nodeSelector": {"matchLabels": {"nno.dev/gw": "true"}},
        "bridge": {"name": bridge},
        "vxlan": {"vni": vni, "group": "239.1.1.1"},
        "ipam": {"range": "192.168.50.0/24", "gateway": "192.168.50.1"},
        "attachments": {"namespaces": ["default", "apps"], "namespaceSelector": {"matchLabels": {"gw": "yes"}},
                        "router": {"address": "192.168.50.1"}}
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(json!({"apiVersion": "nno.dev/v1alpha1", "kind": "Network", "metadata": {"name": name}, "spec": spec}))
        .unwrap()
}

async fn namespace(cluster: &Cluster, name: &str, labels: Value) {
    let api: Api<Namespace> = Api::all(cluster.client());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
    api.create(&PostParams::default(), &ns).await.unwrap();
}

/// Both interfaces of Network `name` reported on `node` with a carrier MTU.
async fn report(
    cluster: &Cluster,
    node: &str,
    name: &str,
    bridge: &str,
    vxlan: &str,
    generation: i64,
    carrier: u32,
) {
    let ifaces = vec![
        fake::interface(name, bridge, LinkKind::Bridge, generation, None),
        fake::interface(name, vxlan, LinkKind::Vxlan, generation, Some(carrier)),
    ];
    fake::report(cluster, node, ifaces).await.unwrap();
}

async fn nad_mtu(cluster: &Cluster, ns: &str, name: &str) -> Result<u64, String> {
    let api: Api<NetworkAttachmentDefinition> = Api::namespaced(cluster.client(), ns);
    let nad = api
        .get_opt(name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or(format!("no NAD {ns}/{name}"))?;
    let config: Value = serde_json::from_str(&nad.spec.config).map_err(|e| e.to_string())?;
    config["plugins"][1]["mtu"]
        .as_u64()
        .ok_or(format!("no mtu in {config}"))
}

async fn ready(api: &Api<Network>, name: &str) -> Result<(String, String), String> {
    let net = api.get(name).await.map_err(|e| e.to_string())?;
    let c = net
        .status
        .as_ref()
        .and_then(|s| find_condition(&s.conditions, "Ready"))
        .ok_or("no Ready condition")?;
    Ok((c.status.clone(), c.reason.clone()))
}

#[tokio::test]
async fn nads_follow_the_network_and_the_derived_mtu() {
    let (cluster, kubeconfig) = setup().await;
    namespace(&cluster, "apps", json!({})).await;
    namespace(&cluster, "selected", json!({"gw": "yes"})).await;
    namespace(&cluster, "ignored", json!({})).await;
    for node in ["node-a", "node-b"] {
        fake::node(&cluster, node, &[("nno.dev/gw", "true")])
            .await
            .unwrap();
    }
    fake::node(&cluster, "node-x", &[]).await.unwrap();
    let _controller = operator::start_controller(&cluster, &kubeconfig, "a", &[]).unwrap();
    let networks: Api<Network> = Api::all(cluster.client());
    networks
        .create(&PostParams::default(), &network("gw", "br-gw", 100, json!({})))
        .await
        .unwrap();

    // Before any node reports its carrier, the MTU is unknown: no NADs, no guess.
    let (s, r) = eventually("WaitingForNodes", WAIT, || ready(&networks, "gw")).await;
    assert_eq!((s.as_str(), r.as_str()), ("False", "WaitingForNodes"));
    assert!(
        nad_mtu(&cluster, "default", "gw").await.is_err(),
        "no NAD before the MTU is known"
    );

    for node in ["node-a", "node-b"] {
        report(&cluster, node, "gw", "br-gw", "vxlan100", 1, 9000).await;
    }
    for ns in ["default", "apps", "selected"] {
        let mtu = eventually("NAD with the derived MTU", WAIT, || async {
            nad_mtu(&cluster, ns, "gw").await
        })
        .await;
        assert_eq!(mtu, 8950, "carrier 9000 gives 8950 in {ns}");
        assert_eq!(
            eventually("router NAD", WAIT, || nad_mtu(&cluster, ns, "gw-router")).await,
            8950
        );
    }
    assert!(
        nad_mtu(&cluster, "ignored", "gw").await.is_err(),
        "not a target namespace"
    );
    cluster
        .kubectl_ok(&["wait", "--for=condition=Ready", "network/gw", "--timeout=30s"])
        .unwrap();
    let net = networks.get("gw").await.unwrap();
    let status = net.status.unwrap();
    assert_eq!(
        (status.desired_nodes, status.ready_nodes, status.mtu),
        (2, 2, Some(8950))
    );
    assert!(
        status
            .attachment_definitions
            .contains(&"selected/gw-router".to_string()),
        "{:?}",
        status.attachment_definitions
    );
    assert!(
        net.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"nno.dev/cleanup".to_string())
    );

    // A namespace created later gets them too.
    namespace(&cluster, "later", json!({"gw": "yes"})).await;
    assert_eq!(
        eventually("NAD in a new namespace", WAIT, || nad_mtu(
            &cluster, "later", "gw"
        ))
        .await,
        8950
    );

    // A node with a smaller carrier joins: the pods keep their MTU (established at
    // 8950 when the Network was Ready everywhere); node-c is not Ready and the
    // Network says why and how to change it.
    assert_eq!(
        networks.get("gw").await.unwrap().status.unwrap().established_mtu,
        Some(8950)
    );
    fake::node(&cluster, "node-c", &[("nno.dev/gw", "true")])
        .await
        .unwrap();
    report(&cluster, "node-c", "gw", "br-gw", "vxlan100", 1, 1500).await;
    let message = network_reason(&networks, "gw", "Ready", "MtuTooLarge", WAIT).await;
    assert!(message.contains("MTU 8950 is kept"), "{message}");
    assert!(
        message.contains("node-c") && message.contains("at most 1450"),
        "{message}"
    );
    assert!(message.contains("set spec.mtu (at most 1450)"), "{message}");
    for ns in ["default", "apps", "selected", "later"] {
        assert_eq!(
            nad_mtu(&cluster, ns, "gw").await.unwrap(),
            8950,
            "{ns} keeps 8950"
        );
    }
    assert_eq!(networks.get("gw").await.unwrap().status.unwrap().mtu, Some(8950));

    // spec.mtu larger than a carrier can carry: refused with a condition naming the node.
    let patch = json!({"spec": {"mtu": 9000}});
    networks
        .patch("gw", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let message = eventually("MtuTooLarge for spec.mtu", WAIT, || async {
        let net = networks.get("gw").await.map_err(|e| e.to_string())?;
        let c = find_condition(&net.status.unwrap_or_default().conditions, "Ready")
            .cloned()
            .ok_or("no Ready condition")?;
        if c.reason == "MtuTooLarge" && c.message.starts_with("spec.mtu 9000") {
            Ok(c.message)
        } else {
            Err(format!("{}: {}", c.reason, c.message))
        }
    })
    .await;
    assert!(
        message.contains("node-c") && message.contains("at most 1450"),
        "{message}"
    );

    // The user lowers it on purpose: 1450 everywhere, with an event.
    let patch = json!({"spec": {"mtu": 1450}});
    networks
        .patch("gw", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    for ns in ["default", "apps", "selected", "later"] {
        eventually("lowered MTU", WAIT, || async {
            match nad_mtu(&cluster, ns, "gw").await? {
                1450 => Ok(()),
                other => Err(format!("mtu {other}")),
            }
        })
        .await;
    }
    let events = cluster
        .kubectl_ok(&[
            "get",
            "events",
            "-A",
            "--field-selector",
            "reason=MtuChanged",
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .unwrap();
    // (spec.mtu 9000 had been written for the nodes that can carry it.)
    assert!(events.contains("lowered from 9000 to 1450"), "{events}");

    // The router runs in apps: its NAD is there alone, gone from everywhere else.
    let patch =
        json!({"spec": {"attachments": {"router": {"address": "192.168.50.1", "namespace": "apps"}}}});
    networks
        .patch("gw", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    for ns in ["default", "selected", "later"] {
        eventually("router NAD removed", WAIT, || async {
            match nad_mtu(&cluster, ns, "gw-router").await {
                Err(e) if e.starts_with("no NAD") => Ok(()),
                other => Err(format!("{ns}: {other:?}")),
            }
        })
        .await;
        assert_eq!(
            nad_mtu(&cluster, ns, "gw").await.unwrap(),
            1450,
            "{ns} keeps the client NAD"
        );
    }
    assert_eq!(nad_mtu(&cluster, "apps", "gw-router").await.unwrap(), 1450);
}

#[tokio::test]
async fn edited_or_deleted_nads_are_restored() {
    let (cluster, kubeconfig) = setup().await;
    namespace(&cluster, "apps", json!({})).await;
    fake::node(&cluster, "node-a", &[("nno.dev/gw", "true")])
        .await
        .unwrap();
    report(&cluster, "node-a", "gw", "br-gw", "vxlan100", 1, 1500).await;
    let mut controller = operator::start_controller(&cluster, &kubeconfig, "a", &[]).unwrap();
    let networks: Api<Network> = Api::all(cluster.client());
    networks
        .create(&PostParams::default(), &network("gw", "br-gw", 100, json!({})))
        .await
        .unwrap();
    eventually("NAD", WAIT, || nad_mtu(&cluster, "apps", "gw")).await;

    let nads: Api<NetworkAttachmentDefinition> = Api::namespaced(cluster.client(), "apps");
    cluster
        .kubectl_ok(&["wait", "--for=condition=Ready", "network/gw", "--timeout=30s"])
        .unwrap();

    // Steady state: reconciles triggered by unrelated changes write nothing.
    let versions = || async {
        let net = networks.get("gw").await.unwrap().resource_version();
        let nad = nads.get("gw").await.unwrap().resource_version();
        let router = nads.get("gw-router").await.unwrap().resource_version();
        (net, nad, router)
    };
    let before = versions().await;
    for i in 0..3 {
        fake::node(&cluster, "node-unrelated", &[("round", &i.to_string())])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert_eq!(versions().await, before, "a steady state makes zero API writes");

    let original = nads.get("gw").await.unwrap().spec.config;
    let edit = json!({"spec": {"config": "{\"cniVersion\":\"1.0.0\",\"name\":\"gw\",\"plugins\":[{\"type\":\"bridge\",\"bridge\":\"cni0\"}]}"}});
    nads.patch("gw", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    eventually("edited NAD restored", WAIT, || async {
        let now = nads.get("gw").await.map_err(|e| e.to_string())?.spec.config;
        if now == original { Ok(()) } else { Err(now) }
    })
    .await;

    nads.delete("gw-router", &DeleteParams::default()).await.unwrap();
    eventually("deleted NAD recreated", WAIT, || {
        nad_mtu(&cluster, "apps", "gw-router")
    })
    .await;

    // A controller restart (or fail-over) decides nothing before its caches are
    // complete: every NAD and the status stay exactly as they are.
    let settled = versions().await;
    controller.stop(Duration::from_secs(5));
    let _restarted = operator::start_controller(&cluster, &kubeconfig, "b", &[]).unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        versions().await,
        settled,
        "a restarted controller makes no writes"
    );
}

#[tokio::test]
async fn the_newer_of_two_networks_claiming_one_bridge_gets_a_conflict() {
    let (cluster, kubeconfig) = setup().await;
    fake::node(&cluster, "node-a", &[("nno.dev/gw", "true")])
        .await
        .unwrap();
    report(&cluster, "node-a", "first", "br-gw", "vxlan100", 1, 1500).await;
    let _controller = operator::start_controller(&cluster, &kubeconfig, "a", &[]).unwrap();
    let networks: Api<Network> = Api::all(cluster.client());
    networks
        .create(&PostParams::default(), &network("first", "br-gw", 100, json!({})))
        .await
        .unwrap();
    // Creation timestamps have one-second resolution: make the second one newer.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = network(
        "second",
        "br-gw",
        200,
        json!({"attachments": {"namespaces": ["default"], "name": "second"}}),
    );
    networks.create(&PostParams::default(), &second).await.unwrap();

    let message = network_condition(&networks, "second", "Conflict", "True", WAIT).await;
    assert!(
        message.contains("interface br-gw")
            && message.contains("older Network first")
            && message.contains("node-a"),
        "{message}"
    );
    assert_eq!(
        ready(&networks, "second").await.unwrap(),
        ("False".into(), "Conflict".into())
    );
    assert_eq!(ready(&networks, "first").await.unwrap().0, "True");
    assert!(
        nad_mtu(&cluster, "default", "second").await.is_err(),
        "no NADs for the loser"
    );
    let warning = cluster
        .kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            "reason=Conflict",
            "-o",
            "name",
        ])
        .unwrap();
    assert!(!warning.trim().is_empty(), "a Warning event for the conflict");

    // Once the older one goes, the newer one takes the bridge.
    networks.delete("first", &DeleteParams::default()).await.unwrap();
    fake::report(&cluster, "node-a", vec![]).await.unwrap();
    network_condition(&networks, "second", "Conflict", "False", WAIT).await;
}

#[tokio::test]
async fn deletion_waits_for_the_nodes_then_leaves_nothing_behind() {
    let (cluster, kubeconfig) = setup().await;
    for node in ["node-a", "node-b", "node-down"] {
        fake::node(&cluster, node, &[("nno.dev/gw", "true")])
            .await
            .unwrap();
        report(&cluster, node, "gw", "br-gw", "vxlan100", 1, 1500).await;
    }
    fake::set_node_ready(&cluster, "node-down", false).await.unwrap();
    let controller = operator::start_controller(&cluster, &kubeconfig, "a", &["--cleanup-grace=3"]).unwrap();
    let networks: Api<Network> = Api::all(cluster.client());
    networks
        .create(&PostParams::default(), &network("gw", "br-gw", 100, json!({})))
        .await
        .unwrap();
    eventually("NAD", WAIT, || nad_mtu(&cluster, "default", "gw")).await;
    eventually("finalizer", WAIT, || async {
        let n = networks.get("gw").await.map_err(|e| e.to_string())?;
        if n.finalizers().is_empty() {
            Err("no finalizer yet".into())
        } else {
            Ok(())
        }
    })
    .await;

    networks.delete("gw", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        networks.get_opt("gw").await.unwrap().is_some(),
        "held while Ready nodes still report its links:\n{}",
        controller.log_tail(40)
    );

    // node-a's agent removes the links; node-b's node is deleted; node-down is NotReady
    // and given up on after the grace period.
    fake::report(&cluster, "node-a", vec![]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        networks.get_opt("gw").await.unwrap().is_some(),
        "node-b still reports"
    );
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(cluster.client());
    nodes.delete("node-b", &DeleteParams::default()).await.unwrap();
    eventually("Network deleted", WAIT, || async {
        match networks.get_opt("gw").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(n) => Err(format!("still there, finalizers {:?}", n.finalizers())),
        }
    })
    .await;
    let incomplete = cluster
        .kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            "reason=CleanupIncomplete",
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .unwrap();
    assert!(incomplete.contains("node-down"), "{incomplete}");
    let all: Api<NetworkAttachmentDefinition> = Api::all(cluster.client());
    eventually("NADs garbage-collected", WAIT, || async {
        let left = all
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
}

#[tokio::test]
async fn two_replicas_never_write_at_once() {
    let (cluster, kubeconfig) = setup().await;
    fake::node(&cluster, "node-a", &[("nno.dev/gw", "true")])
        .await
        .unwrap();
    report(&cluster, "node-a", "gw", "br-gw", "vxlan100", 1, 1500).await;
    let mut first =
        operator::start_controller(&cluster, &kubeconfig, "first", &["--lease-duration=4"]).unwrap();
    let leases: Api<Lease> = Api::namespaced(cluster.client(), operator::NAMESPACE);
    let holder = || async {
        let lease = leases
            .get_opt("node-network-operator-controller")
            .await
            .map_err(|e| e.to_string())?;
        lease
            .and_then(|l| l.spec?.holder_identity)
            .ok_or("no holder".to_string())
    };
    assert_eq!(eventually("first holds the lease", WAIT, holder).await, "first");
    let _second =
        operator::start_controller(&cluster, &kubeconfig, "second", &["--lease-duration=4"]).unwrap();

    let networks: Api<Network> = Api::all(cluster.client());
    networks
        .create(&PostParams::default(), &network("gw", "br-gw", 100, json!({})))
        .await
        .unwrap();
    eventually("NAD", WAIT, || nad_mtu(&cluster, "default", "gw")).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        holder().await.unwrap(),
        "first",
        "the standby does not take an active lease"
    );
    assert!(!first.log_tail(400).is_empty());
    let second_log = std::fs::read_to_string(cluster.dir().join("controller-second.log")).unwrap();
    assert!(
        !second_log.contains("became the leader"),
        "the standby never led:\n{second_log}"
    );
    assert!(
        !second_log.contains("wrote NetworkAttachmentDefinition"),
        "the standby never wrote:\n{second_log}"
    );

    // The leader stops; the standby takes over and does the work.
    first.stop(Duration::from_secs(5));
    assert_eq!(eventually("second holds the lease", WAIT, holder).await, "second");
    let mut net2 = network(
        "gw2",
        "br-gw2",
        101,
        json!({"attachments": {"namespaces": ["default"], "name": "gw2"}}),
    );
    net2.spec.node_selector = Default::default();
    networks.create(&PostParams::default(), &net2).await.unwrap();
    report(&cluster, "node-a", "gw2", "br-gw2", "vxlan101", 1, 1500).await;
    eventually("the new leader writes", WAIT, || {
        nad_mtu(&cluster, "default", "gw2")
    })
    .await;
    let _ = networks.get("gw").await.unwrap().name_any();
}

/// The leader that cannot renew its Lease (the API server is gone) steps down by
/// itself before the Lease expires, when another replica that can reach the API
/// server could take it: there are never two leaders.
#[tokio::test]
async fn a_leader_that_cannot_renew_steps_down_before_its_lease_expires() {
    let (mut cluster, kubeconfig) = setup().await;
    let mut first =
        operator::start_controller(&cluster, &kubeconfig, "first", &["--lease-duration=4"]).unwrap();
    let leases: Api<Lease> = Api::namespaced(cluster.client(), operator::NAMESPACE);
    let lease = || async {
        leases
            .get_opt("node-network-operator-controller")
            .await
            .map_err(|e| e.to_string())?
            .and_then(|l| l.spec)
            .filter(|s| s.holder_identity.as_deref() == Some("first"))
            .ok_or("first does not hold the lease".to_string())
    };
    eventually("first holds the lease", WAIT, lease).await;
    // Let it renew at least once.
    tokio::time::sleep(Duration::from_secs(4)).await;

    cluster.stop_apiserver();
    let stopped = std::time::Instant::now();
    while first.exited().is_none() && stopped.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        first.exited().is_some(),
        "the leader kept leading:\n{}",
        first.log_tail(40)
    );
    // When it stopped leading: the timestamp of its log line saying so.
    let log = first.log_tail(40);
    let line = log
        .lines()
        .find(|l| l.contains("stepping down as leader"))
        .unwrap_or_else(|| panic!("no step-down in:\n{log}"));
    let stamp: jiff::Timestamp = line
        .split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no timestamp in {line:?}"));
    let exited = std::time::SystemTime::from(stamp);
    println!("{line}");

    cluster.start_apiserver().await.unwrap();
    let spec = leases
        .get("node-network-operator-controller")
        .await
        .unwrap()
        .spec
        .unwrap();
    let renewed = std::time::SystemTime::from(spec.renew_time.unwrap().0);
    let expiry = renewed + Duration::from_secs(spec.lease_duration_seconds.unwrap() as u64);
    let ahead = expiry.duration_since(exited).unwrap_or_else(|e| {
        panic!(
            "the leader exited {:?} after its Lease expired (last renewal {renewed:?})",
            e.duration()
        )
    });
    println!("it stepped down {ahead:?} before its Lease would expire");
}
