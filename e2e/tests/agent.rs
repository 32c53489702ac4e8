//! The agent as it runs on a node: a process inside a network namespace acting as
//! the node, reaching the real API server over the 198.18.0.0/15 underlay, with the
//! chart's agent RBAC and its own ServiceAccount token. No controller runs here: each
//! agent behaviour is shown on its own.

use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams, PostParams};
use nno::api::{Network, NodeNetworkState};
use nno_e2e::node::SimNode;
use nno_e2e::{Cluster, eventually, operator};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

async fn setup() -> Cluster {
    let cluster = Cluster::start().await.unwrap();
    operator::install_rbac(&cluster).await.unwrap();
    cluster
}

fn network(name: &str, vxlan: Value) -> Network {
    serde_json::from_value(json!({
        "apiVersion": "nno.dev/v1alpha1", "kind": "Network", "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"matchLabels": {"gw": "true"}},
            "bridge": {"name": "br-gw"},
            "vxlan": vxlan,
            "ipam": {"range": "192.168.50.0/24"},
            "attachments": {"namespaces": ["default"]}
        }
    }))
    .unwrap()
}

/// The node's report, once `check` accepts it.
async fn state_where(cluster: &Cluster, node: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let api: Api<NodeNetworkState> = Api::all(cluster.client());
    eventually(what, WAIT, || async {
        let nns = api
            .get_opt(node)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no NodeNetworkState yet")?;
        let status = serde_json::to_value(&nns.status).unwrap();
        if check(&status) {
            Ok(status)
        } else {
            Err(status.to_string())
        }
    })
    .await
}

fn iface<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["interfaces"]
        .as_array()?
        .iter()
        .find(|i| i["name"] == name)
}

fn ready(status: &Value, names: &[&str]) -> bool {
    names
        .iter()
        .all(|n| iface(status, n).is_some_and(|i| i["ready"] == true))
}

/// node-a with its agent, and Network gw (multicast VXLAN `vni`) Ready on it.
async fn node_with_network(cluster: &Cluster, vni: u32) -> SimNode {
    let mut a = SimNode::create(cluster, "node-a", 1, 1500, &[("gw", "true")])
        .await
        .unwrap();
    a.start_agent(cluster).await.unwrap();
    let networks: Api<Network> = Api::all(cluster.client());
    let net = network(
        "gw",
        json!({"vni": vni, "group": format!("239.1.1.{}", vni % 256)}),
    );
    networks.create(&PostParams::default(), &net).await.unwrap();
    let vxlan = format!("vxlan{vni}");
    state_where(cluster, "node-a", "links Ready", |s| {
        ready(s, &["br-gw", vxlan.as_str()])
    })
    .await;
    a
}

#[tokio::test]
async fn network_builds_links_reports_ready_and_follows_changes() {
    let cluster = setup().await;
    let mut a = SimNode::create(&cluster, "node-a", 1, 1500, &[("gw", "true")])
        .await
        .unwrap();
    a.start_agent(&cluster).await.unwrap();
    let networks: Api<Network> = Api::all(cluster.client());
    networks
        .create(
            &PostParams::default(),
            &network("gw", json!({"vni": 100, "group": "239.1.1.1"})),
        )
        .await
        .unwrap();

    let status = state_where(&cluster, "node-a", "links Ready", |s| {
        ready(s, &["br-gw", "vxlan100"])
    })
    .await;
    let vx = iface(&status, "vxlan100").unwrap();
    assert_eq!(vx["owner"], json!({"kind": "Network", "name": "gw"}));
    assert_eq!(
        (vx["carrier"].as_str(), vx["carrierMtu"].as_u64()),
        (Some("eth0"), Some(1500))
    );
    assert_eq!(vx["vtepAddress"].as_str(), Some(a.address.to_string().as_str()));
    assert_eq!(vx["observedGeneration"], 1);
    assert_eq!(status["readyInterfaces"], "2/2");
    // Its report was written, and nothing more is written while nothing changes.
    let writes = a.agent_metric("nno_agent_status_writes_total").await.unwrap();
    assert!(writes >= 1.0, "status writes counted: {writes}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        a.agent_metric("nno_agent_status_writes_total").await.unwrap(),
        writes,
        "no status write in a steady state"
    );
    // Its text log goes to a file here: no terminal colour codes in it.
    let log = a.agent_log();
    assert!(log.contains("INFO"), "{log}");
    assert!(!log.contains('\u{1b}'), "escape codes in the agent's log file");
    assert!(
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    );

    // What the kernel has, read with iproute2.
    let bridge = a.link("br-gw").unwrap();
    assert_eq!(bridge["linkinfo"]["info_kind"], "bridge");
    assert_eq!(bridge["mtu"], 1450, "carrier 1500 minus the IPv4 VXLAN overhead");
    let vxlan = a.link("vxlan100").unwrap();
    assert_eq!(vxlan["master"], "br-gw");
    assert_eq!(vxlan["linkinfo"]["info_data"]["id"], 100);
    assert_eq!(vxlan["linkinfo"]["info_data"]["group"], "239.1.1.1");
    assert_eq!(vxlan["linkinfo"]["info_data"]["link"], "eth0");
    assert_eq!(vxlan["mtu"], 1450);
    assert_eq!(vxlan["ifalias"], "nno.dev owner=Network/gw");

    let answer = a.readiness("/v1/bridges/br-gw").await.unwrap();
    assert_eq!(
        (answer["ready"].as_bool(), answer["node"].as_str()),
        (Some(true), Some("node-a"))
    );

    // An MTU change is applied in place.
    let (br_index, vx_index) = (a.ifindex("br-gw"), a.ifindex("vxlan100"));
    networks
        .patch(
            "gw",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"mtu": 1400}})),
        )
        .await
        .unwrap();
    state_where(&cluster, "node-a", "generation 2 applied", |s| {
        iface(s, "vxlan100").is_some_and(|i| i["observedGeneration"] == 2 && i["mtu"] == 1400)
    })
    .await;
    assert_eq!(
        (
            a.link("br-gw").unwrap()["mtu"].as_u64(),
            a.link("vxlan100").unwrap()["mtu"].as_u64()
        ),
        (Some(1400), Some(1400))
    );
    assert_eq!(
        (a.ifindex("br-gw"), a.ifindex("vxlan100")),
        (br_index, vx_index),
        "changed in place, not recreated"
    );

    // Relabelled out of the selector: the links are removed from the node.
    a.register(&cluster, &[("gw", "false")]).await.unwrap();
    state_where(&cluster, "node-a", "links removed", |s| {
        s["interfaces"].as_array().is_none_or(|l| l.is_empty())
    })
    .await;
    assert_eq!((a.ifindex("br-gw"), a.ifindex("vxlan100")), (None, None));
    let answer = a.readiness("/v1/bridges/br-gw").await.unwrap();
    assert_eq!(
        (answer["ready"].as_bool(), answer["reason"].as_str()),
        (Some(false), Some("NotDesired"))
    );
}

/// The all-zero FDB destinations of a VXLAN, read with iproute2's `bridge`.
fn fdb_peers(node: &SimNode, vxlan: &str) -> Vec<String> {
    let out = node
        .exec("bridge", &["-j", "fdb", "show", "dev", vxlan])
        .unwrap_or_default();
    let entries: Vec<Value> = serde_json::from_str(&out).unwrap_or_default();
    let mut peers: Vec<String> = entries
        .iter()
        .filter(|e| e["mac"] == "00:00:00:00:00:00")
        .filter_map(|e| e["dst"].as_str().map(String::from))
        .collect();
    peers.sort();
    peers
}

async fn peers_become(node: &SimNode, vxlan: &str, want: &[&str]) {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    eventually(&format!("FDB peers on {}", node.name), WAIT, || async {
        let got = fdb_peers(node, vxlan);
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
}

#[tokio::test]
async fn nodes_peer_automatically_and_carry_unicast_vxlan_traffic() {
    let cluster = setup().await;
    let mut a = SimNode::create(&cluster, "node-a", 1, 1500, &[("gw", "true")])
        .await
        .unwrap();
    let mut b = SimNode::create(&cluster, "node-b", 2, 1500, &[("gw", "true")])
        .await
        .unwrap();
    a.start_agent(&cluster).await.unwrap();
    b.start_agent(&cluster).await.unwrap();
    let networks: Api<Network> = Api::all(cluster.client());
    networks
        .create(
            &PostParams::default(),
            &network("gw", json!({"vni": 200, "nodePeers": {}})),
        )
        .await
        .unwrap();

    let (a_ip, b_ip) = (a.address.to_string(), b.address.to_string());
    peers_become(&a, "vxlan200", &[b_ip.as_str()]).await;
    peers_become(&b, "vxlan200", &[a_ip.as_str()]).await;
    let vx = a.link("vxlan200").unwrap();
    assert_eq!(
        vx["linkinfo"]["info_data"]["local"], a_ip,
        "the VTEP is the node's InternalIP"
    );

    // Traffic between the two nodes' bridges crosses the VXLAN for real.
    a.ip(&["addr", "add", "192.168.50.11/24", "dev", "br-gw"])
        .unwrap();
    b.ip(&["addr", "add", "192.168.50.12/24", "dev", "br-gw"])
        .unwrap();
    eventually("ping across the VXLAN", WAIT, || async {
        a.exec("ping", &["-c", "1", "-W", "1", "192.168.50.12"])
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;

    // A node joining: every peer learns it within seconds; leaving: it is forgotten.
    let mut c = SimNode::create(&cluster, "node-c", 3, 1500, &[("gw", "true")])
        .await
        .unwrap();
    c.start_agent(&cluster).await.unwrap();
    let c_ip = c.address.to_string();
    let joined = Instant::now();
    peers_become(&a, "vxlan200", &[b_ip.as_str(), c_ip.as_str()]).await;
    peers_become(&b, "vxlan200", &[a_ip.as_str(), c_ip.as_str()]).await;
    peers_become(&c, "vxlan200", &[a_ip.as_str(), b_ip.as_str()]).await;
    println!("node-c joined every peer list in {:?}", joined.elapsed());
    c.register(&cluster, &[("gw", "false")]).await.unwrap();
    let left = Instant::now();
    peers_become(&a, "vxlan200", &[b_ip.as_str()]).await;
    peers_become(&b, "vxlan200", &[a_ip.as_str()]).await;
    println!("node-c left every peer list in {:?}", left.elapsed());
    // (The peers drop it as soon as its Node is no longer selected, before its own
    // agent has removed its VXLAN.)
    eventually("node-c's VXLAN removed", WAIT, || async {
        match c.ifindex("vxlan200") {
            None => Ok(()),
            Some(i) => Err(format!("ifindex {i}")),
        }
    })
    .await;
    a.exec("ping", &["-c", "1", "-W", "2", "192.168.50.12"]).unwrap();

    // Forged reports (written here as admin): one for a node that does not exist,
    // one claiming an address its Node does not have. Neither becomes a peer, and
    // node-a's report says why; the same node reporting its own address does.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(cluster.client());
    let z =
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-z", "labels": {"gw": "true"}}});
    nodes
        .create(&PostParams::default(), &serde_json::from_value(z).unwrap())
        .await
        .unwrap();
    let addresses = json!({"status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.50"}]}});
    nodes
        .patch_status("node-z", &PatchParams::default(), &Patch::Merge(&addresses))
        .await
        .unwrap();
    let states: Api<NodeNetworkState> = Api::all(cluster.client());
    let forge = |node: &'static str, vtep: &'static str| {
        let states = states.clone();
        async move {
            let obj = json!({"apiVersion": "nno.dev/v1alpha1", "kind": "NodeNetworkState",
                             "metadata": {"name": node}, "spec": {}});
            let _ = states
                .create(&PostParams::default(), &serde_json::from_value(obj).unwrap())
                .await;
            let report = json!({"status": {"interfaces": [{
                "name": "vxlan200", "owner": {"kind": "Network", "name": "gw"}, "kind": "Vxlan",
                "ready": true, "reason": "Ready", "vtepAddress": vtep}]}});
            states
                .patch_status(node, &PatchParams::default(), &Patch::Merge(&report))
                .await
                .unwrap();
        }
    };
    forge("node-ghost", "198.18.0.66").await;
    forge("node-z", "198.18.0.51").await;
    let status = state_where(&cluster, "node-a", "forged peers named", |s| {
        iface(s, "vxlan200").is_some_and(|v| {
            let m = v["message"].as_str().unwrap_or_default();
            m.contains("node-ghost: no such Node")
                && m.contains("198.18.0.51 is not an address of Node node-z")
        })
    })
    .await;
    println!("node-a: {}", iface(&status, "vxlan200").unwrap()["message"]);
    assert_eq!(
        fdb_peers(&a, "vxlan200"),
        vec![b_ip.clone()],
        "no forged peer in the FDB"
    );
    forge("node-z", "198.18.0.50").await;
    peers_become(&a, "vxlan200", &[b_ip.as_str(), "198.18.0.50"]).await;
}

#[tokio::test]
async fn api_server_outage_touches_no_link_and_state_converges_after() {
    let mut cluster = setup().await;
    let a = node_with_network(&cluster, 300).await;
    let indexes = (a.ifindex("br-gw"), a.ifindex("vxlan300"));
    let writes = a.agent_metric("nno_agent_netlink_writes_total").await.unwrap();

    cluster.stop_apiserver();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        (a.ifindex("br-gw"), a.ifindex("vxlan300")),
        indexes,
        "no link recreated or removed during the outage"
    );
    assert_eq!(
        a.agent_metric("nno_agent_netlink_writes_total").await.unwrap(),
        writes,
        "no netlink write during the outage"
    );
    let answer = a.readiness("/v1/bridges/br-gw").await.unwrap();
    assert_eq!(
        answer["ready"], true,
        "readiness is served from the last known state"
    );
    // Drift is still repaired while the API server is away.
    a.ip(&["link", "set", "br-gw", "down"]).unwrap();
    eventually("drift repaired during the outage", WAIT, || async {
        let up = a
            .link("br-gw")
            .and_then(|l| l["flags"].as_array().map(|f| f.iter().any(|x| x == "UP")));
        if up == Some(true) {
            Ok(())
        } else {
            Err("br-gw down".to_string())
        }
    })
    .await;

    cluster.start_apiserver().await.unwrap();
    let back = Instant::now();
    let networks: Api<Network> = Api::all(cluster.client());
    networks
        .patch(
            "gw",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"mtu": 1300}})),
        )
        .await
        .unwrap();
    state_where(&cluster, "node-a", "change after the outage applied", |s| {
        iface(s, "br-gw").is_some_and(|i| i["mtu"] == 1300 && i["observedGeneration"] == 2)
    })
    .await;
    println!(
        "a change made after the outage was applied and reported {:?} after the API server was back",
        back.elapsed()
    );
    assert_eq!((a.ifindex("br-gw"), a.ifindex("vxlan300")), indexes);
}

#[tokio::test]
async fn readiness_long_poll_returns_as_the_bridge_becomes_ready() {
    let cluster = setup().await;
    let mut a = SimNode::create(&cluster, "node-a", 1, 1500, &[("gw", "true")])
        .await
        .unwrap();
    a.start_agent(&cluster).await.unwrap();
    let networks: Api<Network> = Api::all(cluster.client());
    let net = network(
        "gw",
        json!({"vni": 400, "group": "239.1.1.4", "device": "carrier0"}),
    );
    networks.create(&PostParams::default(), &net).await.unwrap();
    let status = state_where(&cluster, "node-a", "VXLAN waiting for its carrier", |s| {
        iface(s, "vxlan400").is_some_and(|i| i["reason"] == "CarrierMissing")
    })
    .await;
    assert!(
        iface(&status, "vxlan400").unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("carrier0")
    );
    let answer = a.readiness("/v1/bridges/br-gw").await.unwrap();
    assert_eq!(
        (answer["ready"].as_bool(), answer["reason"].as_str()),
        (Some(false), Some("CarrierMissing"))
    );

    let socket = a.socket.clone();
    let poll = tokio::spawn(async move {
        let answer = nno_e2e::node::readiness_get(&socket, "/v1/bridges/br-gw?waitSeconds=30").await;
        (Instant::now(), answer)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !poll.is_finished(),
        "the long poll waits while the bridge is not Ready"
    );

    // The carrier appears; watch the kernel for the moment the VXLAN is up in the bridge.
    let carrier: std::net::IpAddr = a
        .address
        .to_string()
        .replacen("198.18.", "198.19.", 1)
        .parse()
        .unwrap();
    a.add_carrier("carrier0", carrier).unwrap();
    let ready_at = a.enslaved_and_up("vxlan400", "br-gw").await;
    let (returned_at, answer) = tokio::time::timeout(WAIT, poll).await.unwrap().unwrap();
    let answer = answer.unwrap();
    assert_eq!(answer["ready"], true, "{answer}");
    let lag = returned_at.saturating_duration_since(ready_at);
    println!("long poll returned {lag:?} after the VXLAN came up in the bridge");
    assert!(
        lag < Duration::from_millis(100),
        "long poll returned {lag:?} after the bridge became Ready"
    );
}

#[tokio::test]
async fn agent_restart_makes_no_netlink_or_api_writes_and_no_link_flaps() {
    let cluster = setup().await;
    let mut a = node_with_network(&cluster, 500).await;
    // Let the report settle, then remember everything a restart could disturb.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let states: Api<NodeNetworkState> = Api::all(cluster.client());
    let version = states.get("node-a").await.unwrap().metadata.resource_version;
    let indexes = (a.ifindex("br-gw"), a.ifindex("vxlan500"));

    let monitor = std::process::Command::new("ip")
        .args(["-n", &a.netns, "monitor", "link"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    a.stop_agent();
    a.start_agent(&cluster).await.unwrap();
    eventually("restarted agent synced", WAIT, || async {
        let s = a.readiness("/v1/status").await.map_err(|e| e.to_string())?;
        if s["synced"] == true {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = a.agent_metric("nno_agent_netlink_writes_total").await.unwrap();
    let mut monitor = monitor;
    let _ = monitor.kill();
    let out = monitor.wait_with_output().unwrap();
    let events = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        writes, 0.0,
        "a restart on a node that matches makes zero netlink writes"
    );
    assert!(
        !events.contains("br-gw") && !events.contains("vxlan500"),
        "no link event during the restart:\n{events}"
    );
    assert_eq!((a.ifindex("br-gw"), a.ifindex("vxlan500")), indexes);
    assert_eq!(
        states.get("node-a").await.unwrap().metadata.resource_version,
        version,
        "and zero API writes"
    );
    assert_eq!(a.readiness("/v1/bridges/br-gw").await.unwrap()["ready"], true);
}

#[tokio::test]
async fn an_ipv6_underlay_peers_and_carries_traffic() {
    let cluster = setup().await;
    let mut a = SimNode::create(&cluster, "node-a", 1, 1500, &[("gw", "true")])
        .await
        .unwrap();
    let mut b = SimNode::create(&cluster, "node-b", 2, 1500, &[("gw", "true")])
        .await
        .unwrap();
    a.start_agent(&cluster).await.unwrap();
    b.start_agent(&cluster).await.unwrap();
    let networks: Api<Network> = Api::all(cluster.client());
    let net = network("gw6", json!({"vni": 600, "nodePeers": {"ipFamily": "IPv6"}}));
    networks.create(&PostParams::default(), &net).await.unwrap();

    let (a6, b6) = (a.address6.to_string(), b.address6.to_string());
    peers_become(&a, "vxlan600", &[b6.as_str()]).await;
    peers_become(&b, "vxlan600", &[a6.as_str()]).await;
    let status = state_where(&cluster, "node-a", "IPv6 VTEP reported", |s| {
        ready(s, &["br-gw", "vxlan600"])
    })
    .await;
    let vx = iface(&status, "vxlan600").unwrap();
    assert_eq!(vx["vtepAddress"].as_str(), Some(a6.as_str()));
    assert_eq!(vx["mtu"], 1430, "carrier 1500 minus the IPv6 VXLAN overhead");
    assert_eq!(a.link("vxlan600").unwrap()["linkinfo"]["info_data"]["local6"], a6);

    a.ip(&["addr", "add", "192.168.50.21/24", "dev", "br-gw"])
        .unwrap();
    b.ip(&["addr", "add", "192.168.50.22/24", "dev", "br-gw"])
        .unwrap();
    eventually("ping across the IPv6-underlay VXLAN", WAIT, || async {
        a.exec("ping", &["-c", "1", "-W", "1", "192.168.50.22"])
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
}

#[tokio::test]
async fn a_deleted_node_state_comes_back_and_a_name_wanted_twice_is_reported_once() {
    let cluster = setup().await;
    let a = node_with_network(&cluster, 91).await;
    let states: Api<NodeNetworkState> = Api::all(cluster.client());

    // Deleted by hand: written again at once, not at the node's next change.
    states.delete("node-a", &Default::default()).await.unwrap();
    let deleted = Instant::now();
    state_where(&cluster, "node-a", "NodeNetworkState written again", |s| {
        ready(s, &["br-gw", "vxlan91"])
    })
    .await;
    println!(
        "NodeNetworkState written again {:?} after it was deleted",
        deleted.elapsed()
    );
    assert!(deleted.elapsed() < Duration::from_secs(5));

    // A newer unmanaged Link wanting the Network's bridge name: it loses the claim;
    // the node reports the interface once, for the Network, and keeps reporting.
    let links: Api<nno::api::Link> = Api::all(cluster.client());
    let link: nno::api::Link = serde_json::from_value(json!({
        "apiVersion": "nno.dev/v1alpha1", "kind": "Link", "metadata": {"name": "br-gw-port"},
        "spec": {"interfaceName": "br-gw", "unmanaged": {}}
    }))
    .unwrap();
    links.create(&PostParams::default(), &link).await.unwrap();
    let networks: Api<Network> = Api::all(cluster.client());
    networks
        .patch(
            "gw",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"mtu": 1400}})),
        )
        .await
        .unwrap();
    let status = state_where(&cluster, "node-a", "the MTU change reported", |s| {
        iface(s, "br-gw").is_some_and(|i| i["mtu"] == 1400)
    })
    .await;
    let entries: Vec<&Value> = status["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["name"] == "br-gw")
        .collect();
    assert_eq!(entries.len(), 1, "{status}");
    assert_eq!(entries[0]["owner"]["kind"], "Network");
    assert!(!a.agent_log().contains("duplicate entries"), "{}", a.agent_log());
}
