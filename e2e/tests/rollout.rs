//! Paced rollout on a simulated cluster: the controller lets a few nodes at a time
//! apply a change, each node probes after applying and rolls a failing change back
//! by itself, and a change that cuts a node off from the API server is undone.
//! Traffic between pods (attached by the real multus, bridge plugin and whereabouts)
//! is counted while it happens.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use kube::api::{Api, Patch, PatchParams, PostParams};
use nno::api::node_state::OwnerKind;
use nno::api::{Link, Network, NodeNetworkState};
use nno_e2e::node::SimNode;
use nno_e2e::pod::{Cni, Pod};
use nno_e2e::process::Process;
use nno_e2e::{Cluster, eventually, network_condition, network_reason, operator};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
/// The agents' probe timeout in these tests (the default is 10 s).
const PROBE: &str = "--probe-timeout=3s";

struct Product {
    cluster: Cluster,
    cni: Cni,
    _controller: Process,
}

async fn product() -> Product {
    let cluster = Cluster::start().await.unwrap();
    operator::install_rbac(&cluster).await.unwrap();
    let cni = Cni::install(&cluster, &["nno-cni-shim"]).await.unwrap();
    let kubeconfig = operator::component_kubeconfig(&cluster, "controller")
        .await
        .unwrap();
    let args = cni.controller_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let controller = operator::start_controller(&cluster, &kubeconfig, "a", &args).unwrap();
    Product {
        cluster,
        cni,
        _controller: controller,
    }
}

async fn nodes(p: &Product, names: &[&str]) -> Vec<SimNode> {
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut node = SimNode::create(&p.cluster, name, i as u8 + 1, 1500, &[("gw", "true")])
            .await
            .unwrap();
        node.agent_args = vec![PROBE.to_string()];
        node.start_agent(&p.cluster).await.unwrap();
        out.push(node);
    }
    out
}

const VXLAN: &str = "vx-paced";

fn network(vni: u32) -> Network {
    serde_json::from_value(json!({
        "apiVersion": "nno.dev/v1alpha1", "kind": "Network", "metadata": {"name": "paced"},
        "spec": {
            "nodeSelector": {"matchLabels": {"gw": "true"}},
            "bridge": {"name": "br-paced"},
            "vxlan": {"vni": vni, "interfaceName": VXLAN, "group": "239.1.1.7"},
            "ipam": {"range": "192.168.60.0/24"},
            "attachments": {"namespaces": ["default"]},
            "rollout": {"maxUnavailable": 1}
        }
    }))
    .unwrap()
}

async fn patch_network(p: &Product, patch: Value) {
    let api: Api<Network> = Api::all(p.cluster.client());
    api.patch("paced", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// The VNI and ifindex of the node's VXLAN, from the kernel.
fn vxlan(node: &SimNode) -> Option<(u64, u64)> {
    let l = node.link(VXLAN)?;
    Some((l["linkinfo"]["info_data"]["id"].as_u64()?, l["ifindex"].as_u64()?))
}

/// The generation of Network/paced in force on each node (and a rolled-back one).
async fn generations(cluster: &Cluster) -> BTreeMap<String, (Option<i64>, Option<i64>, String)> {
    let api: Api<NodeNetworkState> = Api::all(cluster.client());
    let Ok(list) = api.list(&Default::default()).await else {
        return BTreeMap::new();
    };
    list.items
        .into_iter()
        .filter_map(|s| {
            let name = s.metadata.name.clone()?;
            let g = s
                .status?
                .generations
                .into_iter()
                .find(|g| g.kind == OwnerKind::Network && g.name == "paced")?;
            Some((name, (g.generation, g.failed_generation, g.reason)))
        })
        .collect()
}

async fn ready_at(p: &Product, generation: i64) {
    let networks: Api<Network> = Api::all(p.cluster.client());
    eventually(
        &format!("Network paced Ready at generation {generation}"),
        WAIT,
        || async {
            let n = networks.get("paced").await.map_err(|e| e.to_string())?;
            let s = n.status.unwrap_or_default();
            let ready = nno::api::common::find_condition(&s.conditions, "Ready")
                .is_some_and(|c| c.status == "True" && c.observed_generation == Some(generation));
            if ready {
                Ok(())
            } else {
                Err(format!("{:?}", s.conditions))
            }
        },
    )
    .await;
}

async fn pod_on(p: &Product, node: &SimNode, name: &str) -> (Pod, String) {
    let pod = Pod::create(&p.cluster, &p.cni, node, "default", name, Some("paced"))
        .await
        .unwrap();
    pod.add_ok().await.unwrap();
    let ip = pod.ipv4("net1").unwrap().to_string();
    (pod, ip)
}

fn ping_ok(from: &Pod, to: &str) -> Result<(), String> {
    from.exec("ping", &["-c", "1", "-W", "1", to])
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vni_change_rolls_out_one_node_at_a_time_and_traffic_stops_only_where_it_changes() {
    nno_e2e::require_root();
    let p = product().await;
    let ns = nodes(&p, &["node-a", "node-b", "node-c"]).await;
    let networks: Api<Network> = Api::all(p.cluster.client());
    networks
        .create(&PostParams::default(), &network(100))
        .await
        .unwrap();
    ready_at(&p, 1).await;

    let (pa, _) = pod_on(&p, &ns[0], "pa").await;
    let (pb, ip_b) = pod_on(&p, &ns[1], "pb").await;
    let (_pc, ip_c) = pod_on(&p, &ns[2], "pc").await;
    eventually("pod b reaches pod c", WAIT, || async { ping_ok(&pb, &ip_c) }).await;
    eventually("pod a reaches pod b", WAIT, || async { ping_ok(&pa, &ip_b) }).await;

    // pb pings pc every 20 ms for the whole rollout; -O reports each reply or its
    // absence, -D stamps it.
    let log = p.cluster.dir().join("ping-b-c.log");
    let mut ping = std::process::Command::new("ip")
        .args([
            "netns", "exec", &pb.netns, "ping", "-D", "-O", "-i", "0.02", "-W", "1", &ip_c,
        ])
        .stdout(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // node-b's agent is frozen: once node-b is let in, the rollout waits for it
    // there (its kernel keeps forwarding), which holds the window open in which
    // node-a has changed and node-b and node-c have not.
    let signal = |node: &SimNode, sig: i32| {
        // SAFETY: kill has no memory preconditions; the pid is our own child's.
        unsafe { libc::kill(node.agent_pid().unwrap() as i32, sig) };
    };
    signal(&ns[1], libc::SIGSTOP);
    let before: Vec<u64> = ns.iter().map(|n| vxlan(n).unwrap().1).collect();
    patch_network(&p, json!({"spec": {"vxlan": {"vni": 200}}})).await;
    // The kernel first, then the reports: a node whose VXLAN has the new VNI while
    // its report does not yet say generation 2 is changing.
    let mut flipped: BTreeMap<String, f64> = BTreeMap::new();
    let mut most_changing = 0;
    let mut record = |kernel: &[Option<(u64, u64)>],
                      reports: &BTreeMap<String, (Option<i64>, Option<i64>, String)>| {
        let mut changing = Vec::new();
        for (node, k) in ns.iter().zip(kernel) {
            if k.is_some_and(|(vni, _)| vni == 200) {
                flipped.entry(node.name.clone()).or_insert_with(unix_now);
                if reports.get(&node.name).and_then(|r| r.0) != Some(2) {
                    changing.push(node.name.clone());
                }
            }
        }
        most_changing = most_changing.max(changing.len());
        assert!(
            changing.len() <= 1,
            "more than one node changing at once: {changing:?}"
        );
        flipped.contains_key("node-a")
    };
    let networks_api = networks.clone();
    let admitted = || async {
        let n = networks_api.get("paced").await.unwrap();
        n.status
            .and_then(|s| s.rollout)
            .map(|r| r.nodes)
            .unwrap_or_default()
    };
    let deadline = Instant::now() + WAIT;
    loop {
        let kernel: Vec<Option<(u64, u64)>> = ns.iter().map(vxlan).collect();
        let reports = generations(&p.cluster).await;
        // The kernel was read before the admission: node-a counts as changed only
        // once a sample has seen its new VNI.
        let a_seen = record(&kernel, &reports);
        if a_seen && admitted().await.contains(&"node-b".to_string()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node-b never let in: kernel {kernel:?}, reports {reports:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // node-a done, node-b let in (and stuck): node-c is not let in meanwhile.
    let window_start = unix_now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        admitted().await,
        ["node-a", "node-b"],
        "node-c waits while node-b changes"
    );
    assert_eq!(vxlan(&ns[0]).unwrap().0, 200);
    assert_eq!((vxlan(&ns[1]).unwrap().0, vxlan(&ns[2]).unwrap().0), (100, 100));
    let window_end = unix_now();
    signal(&ns[1], libc::SIGCONT);
    loop {
        let kernel: Vec<Option<(u64, u64)>> = ns.iter().map(vxlan).collect();
        let reports = generations(&p.cluster).await;
        record(&kernel, &reports);
        if ns
            .iter()
            .all(|n| reports.get(&n.name).and_then(|r| r.0) == Some(2))
        {
            // The reports were read after the kernel: read the kernel once more so
            // that the last node's change is sampled too.
            let kernel: Vec<Option<(u64, u64)>> = ns.iter().map(vxlan).collect();
            record(&kernel, &reports);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rollout not done: kernel {kernel:?}, reports {reports:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ready_at(&p, 2).await;
    // SAFETY: as above.
    unsafe { libc::kill(ping.id() as i32, libc::SIGINT) };
    let _ = ping.wait();
    println!("flipped at {flipped:?}; at most {most_changing} node changing at a time (sampled)");
    let order: Vec<&String> = {
        let mut v: Vec<(&String, &f64)> = flipped.iter().collect();
        v.sort_by(|a, b| a.1.total_cmp(b.1));
        v.into_iter().map(|(n, _)| n).collect()
    };
    assert_eq!(
        order,
        ["node-a", "node-b", "node-c"],
        "one at a time, in name order"
    );
    for (node, was) in ns.iter().zip(before) {
        assert_ne!(
            vxlan(node).unwrap().1,
            was,
            "{}: the VXLAN was recreated with the new VNI",
            node.name
        );
    }

    // From the patch until node-b changed, pods on node-b and node-c kept talking:
    // every ping of that time was answered (the two seconds held open above among it).
    let text = std::fs::read_to_string(&log).unwrap();
    let mut answered = 0;
    let mut in_window = 0;
    let mut unanswered = Vec::new();
    for line in text.lines() {
        let Some(stamp) = line
            .strip_prefix('[')
            .and_then(|l| l.split(']').next())
            .and_then(|t| t.parse::<f64>().ok())
        else {
            continue;
        };
        if stamp >= window_end {
            break;
        }
        if line.contains("bytes from") {
            answered += 1;
            if stamp >= window_start {
                in_window += 1;
            }
        } else if line.contains("no answer") {
            unanswered.push(line.to_string());
        }
    }
    println!(
        "pod b -> pod c until node-b changed: {answered} answered ({in_window} while node-a had changed and node-b was let in), {} unanswered",
        unanswered.len()
    );
    assert!(
        in_window >= 50,
        "too few pings in the window to prove anything:\n{text}"
    );
    assert!(
        unanswered.is_empty(),
        "pod b lost pod c while node-a changed: {unanswered:?}"
    );
    assert!(
        flipped["node-a"] < window_start,
        "node-a had changed before the window"
    );

    // All on the new VNI: everyone talks again.
    eventually("pod a reaches pod b on VNI 200", WAIT, || async {
        ping_ok(&pa, &ip_b)
    })
    .await;
    eventually("pod b reaches pod c on VNI 200", WAIT, || async {
        ping_ok(&pb, &ip_c)
    })
    .await;
    let n = networks.get("paced").await.unwrap();
    assert_eq!(
        n.status.unwrap().rollout.unwrap().progress.as_deref(),
        Some("3/3")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_that_fails_on_a_node_is_rolled_back_there_and_halts_the_rollout() {
    nno_e2e::require_root();
    let p = product().await;
    let ns = nodes(&p, &["node-a", "node-b", "node-c"]).await;
    let networks: Api<Network> = Api::all(p.cluster.client());
    networks
        .create(&PostParams::default(), &network(300))
        .await
        .unwrap();
    ready_at(&p, 1).await;
    let before: Vec<(u64, u64)> = ns.iter().map(|n| vxlan(n).unwrap()).collect();
    // The VXLAN's carrier as the kernel has it.
    let carrier = |n: &SimNode| {
        let l = n.link(VXLAN)?;
        let link = &l["linkinfo"]["info_data"]["link"];
        Some(
            link.as_str()
                .map(String::from)
                .unwrap_or_else(|| link.to_string()),
        )
    };
    let old_carrier = carrier(&ns[2]);

    // A carrier that only node-a has.
    ns[0]
        .add_carrier("carrier2", "198.19.254.1".parse().unwrap())
        .unwrap();
    patch_network(&p, json!({"spec": {"vxlan": {"device": "carrier2"}}})).await;

    let message = network_reason(&networks, "paced", "Degraded", "RolledBack", WAIT).await;
    assert!(
        message.contains("node node-b") && message.contains("generation 2"),
        "{message}"
    );
    println!("Degraded: {message}");
    let reports = generations(&p.cluster).await;
    assert_eq!(reports["node-a"].0, Some(2), "node-a applied it: {reports:?}");
    assert_eq!(
        (
            reports["node-b"].0,
            reports["node-b"].1,
            reports["node-b"].2.as_str()
        ),
        (Some(1), Some(2), "NotReadyAfterChange"),
        "node-b rolled it back by itself"
    );
    assert_eq!(
        (reports["node-c"].0, reports["node-c"].1),
        (Some(1), None),
        "node-c never changed"
    );
    assert_eq!(vxlan(&ns[2]).unwrap(), before[2], "node-c's VXLAN untouched");
    assert_eq!(carrier(&ns[1]), old_carrier, "node-b is back on its old carrier");
    assert_eq!(carrier(&ns[0]).as_deref(), Some("carrier2"));
    // It stays halted: node-c is not let in.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(generations(&p.cluster).await["node-c"].0, Some(1));
    let n = networks.get("paced").await.unwrap();
    let rollout = n.status.unwrap().rollout.unwrap();
    assert_eq!(rollout.halted.as_ref().map(|h| h.node.as_str()), Some("node-b"));
    assert!(!rollout.nodes.contains(&"node-c".to_string()), "{rollout:?}");

    // Fixing the spec resumes the rollout: every node ends Ready on its old carrier.
    patch_network(&p, json!({"spec": {"vxlan": {"device": null}}})).await;
    ready_at(&p, 3).await;
    network_condition(&networks, "paced", "Degraded", "False", WAIT).await;
    let reports = generations(&p.cluster).await;
    for n in &ns {
        assert_eq!(
            (reports[&n.name].0, reports[&n.name].1),
            (Some(3), None),
            "{}",
            n.name
        );
        assert_eq!(carrier(n), old_carrier, "{}", n.name);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allowed_uplink_enslavement_that_cuts_the_node_off_is_undone() {
    nno_e2e::require_root();
    let p = product().await;
    let ns = nodes(&p, &["node-a"]).await;
    let a = &ns[0];
    let links: Api<Link> = Api::all(p.cluster.client());
    let link = |name: &str, spec: Value| -> Link {
        serde_json::from_value(json!({"apiVersion": "nno.dev/v1alpha1", "kind": "Link",
            "metadata": {"name": name}, "spec": spec}))
        .unwrap()
    };
    links
        .create(
            &PostParams::default(),
            &link("br-up", json!({"interfaceName": "br-up", "bridge": {}})),
        )
        .await
        .unwrap();
    eventually("br-up up", WAIT, || async {
        let s = generations_of(&p.cluster, "node-a", "br-up").await;
        if s.0 == Some(1) {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;

    // eth0 holds the node's address: enslaving it cuts the node off, allowed anyway.
    // (With strict reverse-path filtering, as on many hosts: without it the kernel
    // would still take the API server's replies arriving through the bridge.)
    a.exec("sysctl", &["-qw", "net.ipv4.conf.all.rp_filter=1"])
        .unwrap();
    let started = Instant::now();
    links
        .create(
            &PostParams::default(),
            &link(
                "uplink",
                json!({"interfaceName": "eth0", "unmanaged": {"allowUplink": true, "master": {"name": "br-up"}}}),
            ),
        )
        .await
        .unwrap();
    let enslaved = eventually("eth0 enslaved", WAIT, || async {
        match a.link("eth0") {
            Some(l) if l["master"] == "br-up" => Ok(started.elapsed()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let released = eventually("eth0 released again", WAIT, || async {
        match a.link("eth0") {
            Some(l) if l.get("master").is_none() => Ok(started.elapsed()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    println!("eth0 enslaved after {enslaved:?}, released after {released:?}");
    assert!(
        released < Duration::from_secs(10),
        "undone within the probe's bound: {released:?}"
    );
    // The node reaches the API server again: its agent reports the rollback.
    let s = eventually("rollback reported", WAIT, || async {
        let s = generations_of(&p.cluster, "node-a", "uplink").await;
        if s.1 == Some(1) {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    assert_eq!((s.0, s.2.as_str()), (None, "APIServerUnreachable"), "{s:?}");
    let message = eventually("Link Degraded", WAIT, || async {
        let l = links.get("uplink").await.map_err(|e| e.to_string())?;
        let c = nno::api::common::find_condition(&l.status.unwrap_or_default().conditions, "Degraded")
            .cloned()
            .ok_or("no condition")?;
        if c.reason == "RolledBack" {
            Ok(c.message)
        } else {
            Err(c.reason)
        }
    })
    .await;
    assert!(
        message.contains("node-a") && message.contains("APIServerUnreachable"),
        "{message}"
    );
    // And it stays undone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(a.link("eth0").unwrap().get("master").is_none());
    a.exec(
        "ping",
        &["-c", "1", "-W", "1", &p.cluster.underlay.host_addr().to_string()],
    )
    .unwrap();
}

async fn generations_of(cluster: &Cluster, node: &str, link: &str) -> (Option<i64>, Option<i64>, String) {
    let api: Api<NodeNetworkState> = Api::all(cluster.client());
    api.get(node)
        .await
        .ok()
        .and_then(|s| s.status)
        .and_then(|s| {
            s.generations
                .into_iter()
                .find(|g| g.kind == OwnerKind::Link && g.name == link)
        })
        .map(|g| (g.generation, g.failed_generation, g.reason))
        .unwrap_or_default()
}
