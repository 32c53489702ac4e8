//! The link engine against real netlink, as root, each test in a network
//! namespace of its own; iproute2 is the independent oracle. Underlays use only
//! 198.18.0.0/15 and 2001:db8::/32, inside those namespaces.

mod support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use nno::netlink::{
    Applied, Carrier, DELETE_GROUP, DesiredKind, DesiredLink, Engine, LinkState, VxlanConfig, marker, reason,
};
use serde_json::Value;
use support::{Netns, info_data, is_up};
use tokio::sync::watch;

const OWNER: &str = "Network/gw";

type Edit = Box<dyn Fn(&mut VxlanConfig)>;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn bridge(name: &str, mtu: Option<u32>) -> DesiredLink {
    DesiredLink::bridge(name, OWNER, mtu)
}

fn vxlan(name: &str, carrier: &str, f: impl FnOnce(&mut VxlanConfig)) -> DesiredLink {
    let mut c = VxlanConfig::new(100, Carrier::Named(carrier.into()));
    f(&mut c);
    DesiredLink::vxlan(name, OWNER, c)
}

/// The gateway-network shape: a bridge and a VXLAN with unicast peers on it.
fn gateway(carrier: &str) -> Vec<DesiredLink> {
    vec![
        bridge("br-gw", Some(1450)),
        vxlan("vx-gw", carrier, |c| {
            c.peers = vec![ip("198.18.0.2"), ip("198.18.0.3")];
            c.master = Some("br-gw".into());
        }),
    ]
}

fn vx_config(d: &mut DesiredLink) -> &mut VxlanConfig {
    match &mut d.kind {
        DesiredKind::Vxlan(c) => c,
        other => panic!("not a VXLAN: {other:?}"),
    }
}

fn state<'a>(states: &'a [LinkState], name: &str) -> &'a LinkState {
    states.iter().find(|s| s.name == name).unwrap()
}

fn assert_all_ready(states: &[LinkState]) {
    for s in states {
        assert!(s.ready, "{} not ready: {} {}", s.name, s.reason, s.message);
    }
}

/// A pass, returning the states and the writes it made.
async fn pass(engine: &mut Engine, desired: &[DesiredLink]) -> (Vec<LinkState>, u64) {
    let before = engine.write_counter().get();
    let states = engine.reconcile(desired).await;
    (states, engine.write_counter().get() - before)
}

fn alias(link: &Value) -> Option<&str> {
    link["ifalias"].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_bridge_and_vxlan_then_a_second_pass_writes_nothing() {
    let ns = Netns::new("create");
    ns.veth("under0", "under0p", &["198.18.0.1/24"]);
    let mut engine = Engine::in_netns(ns.path()).unwrap();
    let mut desired = gateway("under0");
    desired.push(vxlan("vx-mc", "under0", |c| {
        c.vni = 200;
        c.group = Some(ip("239.1.1.1"));
        c.source_ports = Some((1000, 2000));
        c.learning = false;
        c.ttl = Some(16);
        c.port = 8472;
    }));

    let (states, writes) = pass(&mut engine, &desired).await;
    assert_all_ready(&states);
    println!("create: {writes} netlink writes");

    let br = ns.link("br-gw").expect("bridge created");
    assert_eq!(br["linkinfo"]["info_kind"], "bridge");
    assert_eq!(info_data(&br)["stp_state"], 0);
    assert_eq!(br["mtu"], 1450);
    assert!(is_up(&br));
    assert_eq!(alias(&br), Some(marker(OWNER).as_str()));

    let vx = ns.link("vx-gw").expect("vxlan created");
    let d = info_data(&vx);
    assert_eq!(d["id"], 100);
    assert_eq!(d["port"], 4789);
    assert_eq!(d["local"], "198.18.0.1");
    assert_eq!(d["link"], "under0");
    assert_eq!(d["learning"], true);
    assert_eq!(vx["master"], "br-gw");
    assert_eq!(vx["mtu"], 1450);
    assert!(is_up(&vx));
    assert_eq!(vx["operstate"], "UNKNOWN", "an up VXLAN reads UNKNOWN");
    assert_eq!(alias(&vx), Some(marker(OWNER).as_str()));
    assert_eq!(
        ns.zero_fdb("vx-gw"),
        ["198.18.0.2", "198.18.0.3"].map(String::from).into()
    );

    let mc = ns.link("vx-mc").unwrap();
    let d = info_data(&mc);
    assert_eq!(d["group"], "239.1.1.1");
    assert_eq!(d["link"], "under0");
    assert_eq!(d["port"], 8472);
    assert_eq!(d["port_range"]["low"], 1000);
    assert_eq!(d["port_range"]["high"], 2000);
    assert_eq!(d["learning"], false);
    assert_eq!(d["ttl"], 16);

    let s = state(&states, "vx-gw");
    assert_eq!(s.carrier.as_deref(), Some("under0"));
    assert_eq!(s.carrier_mtu, Some(1500));
    assert_eq!(s.local_address, Some(ip("198.18.0.1")));
    assert_eq!(s.mtu, Some(1450));
    assert_eq!(s.reason, reason::READY);

    let (states, writes) = pass(&mut engine, &desired).await;
    assert_all_ready(&states);
    assert_eq!(writes, 0, "a no-op pass writes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_in_place_what_the_kernel_allows() {
    let ns = Netns::new("inplace");
    ns.veth("under0", "under0p", &["198.18.0.1/24"]);
    ns.veth("under1", "under1p", &["198.18.1.1/24"]);
    let mut engine = Engine::in_netns(ns.path()).unwrap();
    let mut desired = gateway("under0");
    let (states, _) = pass(&mut engine, &desired).await;
    assert_all_ready(&states);
    let (br_index, vx_index) = (ns.ifindex("br-gw").unwrap(), ns.ifindex("vx-gw").unwrap());

    desired[0] = bridge("br-gw", Some(1400));
    desired[1] = vxlan("vx-gw", "under1", |c| {
        c.learning = false;
        c.ttl = Some(32);
        c.peers = vec![ip("198.18.0.3"), ip("198.18.0.4")];
        c.mtu = Some(1400);
        c.master = Some("br-gw".into());
    });
    let (states, writes) = pass(&mut engine, &desired).await;
    assert_all_ready(&states);
    println!("update in place: {writes} netlink writes");
    // bridge MTU; vxlan change (carrier, local, learning, ttl); vxlan MTU; 1 peer added, 1 removed.
    assert_eq!(writes, 5);

    assert_eq!(ns.ifindex("br-gw"), Some(br_index), "bridge kept");
    assert_eq!(ns.ifindex("vx-gw"), Some(vx_index), "vxlan kept");
    let vx = ns.link("vx-gw").unwrap();
    let d = info_data(&vx);
    assert_eq!(d["link"], "under1");
    assert_eq!(d["local"], "198.18.1.1");
    assert_eq!(d["learning"], false);
    assert_eq!(d["ttl"], 32);
    assert_eq!(vx["mtu"], 1400);
    assert_eq!(vx["master"], "br-gw");
    assert_eq!(ns.link("br-gw").unwrap()["mtu"], 1400);
    assert_eq!(
        ns.zero_fdb("vx-gw"),
        ["198.18.0.3", "198.18.0.4"].map(String::from).into()
    );
    assert_eq!(state(&states, "vx-gw").carrier.as_deref(), Some("under1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreates_what_the_kernel_refuses_to_change() {
    let ns = Netns::new("recreate");
    ns.veth("under0", "under0p", &["198.18.0.1/24"]);
    let mut engine = Engine::in_netns(ns.path()).unwrap();
    let mut desired = gateway("under0");
    assert_all_ready(&pass(&mut engine, &desired).await.0);

    // The oracle agrees the kernel refuses these in place.
    assert!(
        ns.try_ip(&["link", "set", "vx-gw", "type", "vxlan", "id", "101"])
            .is_err()
    );
    assert!(
        ns.try_ip(&[
            "link", "set", "vx-gw", "type", "vxlan", "id", "100", "dstport", "8472"
        ])
        .is_err()
    );

    let changes: Vec<(&str, Edit)> = vec![
        ("vni", Box::new(|c| c.vni = 101)),
        ("port", Box::new(|c| c.port = 8472)),
        ("source ports", Box::new(|c| c.source_ports = Some((2000, 3000)))),
    ];
    for (what, change) in changes {
        let before = ns.ifindex("vx-gw").unwrap();
        change(vx_config(&mut desired[1]));
        let (states, writes) = pass(&mut engine, &desired).await;
        assert_all_ready(&states);
        println!("recreate for {what}: {writes} netlink writes");
        let after = ns.link("vx-gw").unwrap();
        assert_ne!(after["ifindex"].as_u64(), Some(before), "{what}: recreated");
        assert_eq!(after["master"], "br-gw", "{what}");
        assert!(is_up(&after));
        assert_eq!(ns.zero_fdb("vx-gw").len(), 2, "{what}: peers back");
    }
    let d = info_data(&ns.link("vx-gw").unwrap()).clone();
    assert_eq!((d["id"].as_u64(), d["port"].as_u64()), (Some(101), Some(8472)));
    assert_eq!(d["port_range"]["low"], 2000);
    assert_eq!(pass(&mut engine, &desired).await.1, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_mtu_equal_to_the_default_survives_a_smaller_port() {
    // Setting a bridge's MTU to the value it already has is a no-op for the
    // kernel, so the bridge still follows its smallest port until the engine
    // sets it again after the port joined: the pass converges anyway.
    let ns = Netns::new("brmtu");
    ns.veth("under0", "under0p", &["198.18.0.1/24"]);
    let mut engine = Engine::in_netns(ns.path()).unwrap();
    let desired = vec![
        bridge("br0", Some(1500)),
        vxlan("vx0", "under0", |c| c.master = Some("br0".into())),
    ];
    let (states, _) = pass(&mut engine, &desired).await;
    assert_all_ready(&states);
    assert_eq!(ns.link("vx0").unwrap()["mtu"], 1450);
    assert_eq!(ns.link("br0").unwrap()["mtu"], 1500);
    // Now explicitly set: another port joining does not lower it any more.
    ns.ip(&["link", "set", "under0p", "mtu", "1400"]);
    ns.ip(&["link", "set", "under0p", "master", "br0"]);
    assert_eq!(ns.link("br0").unwrap()["mtu"], 1500);
    assert_eq!(pass(&mut engine, &desired).await.1, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_only_what_it_created() {
    let ns = Netns::new("delete");
    ns.veth("under0", "under0p", &["198.18.0.1/24"]);
    ns.ip(&["link", "add", "br-foreign", "type", "bridge"]);
    ns.ip(&[
        "link",
        "add",
        "vx-foreign",
        "type",
        "vxlan",
        "id",
        "7",
        "dstport",
        "4789",
        "dev",
        "under0",
    ]);
    let mut engine = Engine::in_netns(ns.path()).unwrap();
    assert_all_ready(&pass(&mut engine, &gateway("under0")).await.0);

    // A restarted engine with nothing desired deletes exactly its own.
    drop(engine);
    let mut engine = Engine::in_netns(ns.path()).unwrap();
    let (states, writes) = pass(&mut engine, &[]).await;
    assert!(states.is_empty());
    assert_eq!(writes, 2);
    assert!(ns.link("br-gw").is_none());
    assert!(ns.link("vx-gw").is_none());
    assert!(ns.link("br-foreign").is_some());
    assert!(ns.link("vx-foreign").is_some());
    assert!(ns.link("under0").is_some());
}

/// Many deletions leave in one batch (each interface put in the delete group, one
/// `RTM_DELLINK` of the group); with a foreign interface in that group they are
/// deleted one at a time instead, and the foreign one stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_deletions_leave_in_one_batch_unless_the_group_is_taken() {
    let ns = Netns::new("batchdel");
    ns.veth("under0", "under0p", &["198.18.0.1/24"]);
    let many: Vec<DesiredLink> = (0..20)
        .flat_map(|i| {
            let bridge_name = format!("br-b{i}");
            let mut b = bridge(&bridge_name, None);
            b.owner = format!("Network/b{i}");
            let mut v = vxlan(&format!("vx-b{i}"), "under0", |c| {
                c.vni = 100 + i;
                c.master = Some(bridge_name.clone());
            });
            v.owner = format!("Network/b{i}");
            [b, v]
        })
        .collect();
    let mut engine = Engine::in_netns(ns.path()).unwrap();
    assert_all_ready(&pass(&mut engine, &many).await.0);
    let (states, writes) = pass(&mut engine, &[]).await;
    assert!(states.is_empty());
    assert_eq!(writes, 41, "40 into the group, one delete of the group");
    assert!(ns.ip(&["-o", "link", "show"]).lines().all(|l| !l.contains("-b")));
    assert!(ns.link("under0").is_some());

    // The group taken by someone else: one delete per interface, theirs untouched.
    assert_all_ready(&pass(&mut engine, &many).await.0);
    ns.ip(&["link", "add", "br-foreign", "type", "bridge"]);
    ns.ip(&["link", "set", "br-foreign", "group", &DELETE_GROUP.to_string()]);
    let (_, writes) = pass(&mut engine, &[]).await;
    assert_eq!(writes, 40, "one at a time");
    assert!(ns.ip(&["-o", "link", "show"]).lines().all(|l| !l.contains("-b")));
    assert!(ns.link("br-foreign").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_interface_with_a_desired_name_is_left_alone() {
    let ns = Netns::new("clash");
    ns.veth("under0", "under0p", &["198.18.0.1/24"]);
    ns.ip(&["link", "add", "br-gw", "type", "bridge"]); // foreign, down, MTU 1500
    let mut engine = Engine::in_netns(ns.path()).unwrap();
    let mut desired = gateway("under0");
    desired.push(bridge("br-other", None));

    let (states, _) = pass(&mut engine, &desired).await;
    let s = state(&states, "br-gw");
    assert_eq!(s.reason, reason::NAME_CONFLICT);
    assert!(!s.ready);
    assert!(s.message.contains("br-gw"), "{}", s.message);
    let vx = state(&states, "vx-gw");
    assert_eq!(vx.reason, reason::MASTER_MISSING, "{}", vx.message);
    assert!(state(&states, "br-other").ready, "one bad link blocks no other");

    let br = ns.link("br-gw").unwrap();
    assert_eq!(br["mtu"], 1500);
    assert!(!is_up(&br));
    assert_eq!(alias(&br), None);
    let vxl = ns.link("vx-gw").unwrap();
    assert!(vxl.get("master").is_none(), "not enslaved to the foreign bridge");

    // Still untouched on the next pass, and nothing to write.
    assert_eq!(pass(&mut engine, &desired).await.1, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unicast_peers_are_exactly_the_all_zero_fdb_entries() {
    let ns = Netns::new("peers");
    ns.veth("under0", "under0p", &["198.18.0.1/24"]);
    let mut engine = Engine::in_netns(ns.path()).unwrap();
    let mut desired = vec![vxlan("vx0", "under0", |c| {
        c.peers = (2..=6).map(|i| ip(&format!("198.18.0.{i}"))).collect();
    })];
    let (states, writes) = pass(&mut engine, &desired).await;
    assert_all_ready(&states);
    assert_eq!(writes, 2 + 5, "create, set, five peers");
    let want = |ips: &[u8]| -> std::collections::BTreeSet<String> {
        ips.iter().map(|i| format!("198.18.0.{i}")).collect()
    };
    assert_eq!(ns.zero_fdb("vx0"), want(&[2, 3, 4, 5, 6]));

    // A stray all-zero entry on an owned VXLAN is removed, a changed list diffed.
    ns.bridge(&[
        "fdb",
        "append",
        "00:00:00:00:00:00",
        "dev",
        "vx0",
        "dst",
        "198.18.0.99",
    ]);
    vx_config(&mut desired[0]).peers = vec![ip("198.18.0.2"), ip("198.18.0.7")];
    let (_, writes) = pass(&mut engine, &desired).await;
    assert_eq!(ns.zero_fdb("vx0"), want(&[2, 7]));
    assert_eq!(writes, 1 + 4 + 1);

    // A unicast remote is its own default entry, not a stray.
    vx_config(&mut desired[0]).remote = Some(ip("198.18.0.9"));
    assert_all_ready(&pass(&mut engine, &desired).await.0);
    assert_eq!(ns.zero_fdb("vx0"), want(&[2, 7, 9]));
    assert_eq!(info_data(&ns.link("vx0").unwrap())["remote"], "198.18.0.9");
    assert_eq!(pass(&mut engine, &desired).await.1, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_underlay() {
    let ns = Netns::new("ipv6");
    ns.veth("under0", "under0p", &["2001:db8:1::1/64"]);
    ns.ip(&["link", "set", "under0", "mtu", "9000"]);
    let mut engine = Engine::in_netns(ns.path()).unwrap();
    let desired = vec![
        bridge("br6", None),
        vxlan("vx6", "under0", |c| {
            c.remote = Some(ip("2001:db8:1::2"));
            c.peers = vec![ip("2001:db8:1::3")];
            c.master = Some("br6".into());
        }),
        vxlan("vx6r", "", |c| {
            c.vni = 101;
            c.carrier = Carrier::RouteTo(ip("2001:db8:1::7"));
            c.peers = vec![ip("2001:db8:1::7")];
        }),
    ];
    let (states, _) = pass(&mut engine, &desired).await;
    assert_all_ready(&states);
    let vx = ns.link("vx6").unwrap();
    let d = info_data(&vx);
    assert_eq!(d["remote6"], "2001:db8:1::2");
    assert_eq!(d["local6"], "2001:db8:1::1");
    assert_eq!(vx["mtu"], 9000 - 70, "IPv6 overhead is 70");
    assert_eq!(
        ns.zero_fdb("vx6"),
        ["2001:db8:1::2", "2001:db8:1::3"].map(String::from).into()
    );
    let s = state(&states, "vx6r");
    assert_eq!(s.carrier.as_deref(), Some("under0"), "found by route lookup");
    assert_eq!(s.local_address, Some(ip("2001:db8:1::1")));
    assert_eq!(s.carrier_mtu, Some(9000));
    assert_eq!(ns.link("vx6r").unwrap()["mtu"], 8930);
    assert_eq!(pass(&mut engine, &desired).await.1, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carrier_found_by_address() {
    let ns = Netns::new("holding");
    ns.veth("under0", "under0p", &["198.18.0.1/24"]);
    ns.veth("under1", "under1p", &["198.18.1.1/24"]);
    let mut engine = Engine::in_netns(ns.path()).unwrap();
    let desired = vec![vxlan("vx0", "", |c| {
        c.carrier = Carrier::HoldingAddress(ip("198.18.1.1"));
    })];
    let (states, _) = pass(&mut engine, &desired).await;
    assert_all_ready(&states);
    assert_eq!(states[0].carrier.as_deref(), Some("under1"));
    assert_eq!(info_data(&ns.link("vx0").unwrap())["link"], "under1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_on_a_matching_node_writes_nothing_and_nothing_goes_down() {
    let ns = Netns::new("restart");
    ns.veth("under0", "under0p", &["198.18.0.1/24"]);
    let desired = gateway("under0");
    {
        let mut engine = Engine::in_netns(ns.path()).unwrap();
        assert_all_ready(&pass(&mut engine, &desired).await.0);
    }
    // Let the kernel settle (the bridge gets carrier once its port forwards),
    // so that any event below would come from the restarted engine.
    tokio::task::block_in_place(|| {
        time_until(Instant::now(), "bridge carrier", || {
            ns.link("br-gw").is_some_and(|l| l["operstate"] == "UP")
        })
    });
    let mut monitor = std::process::Command::new("ip")
        .args(["-n", &ns.name, "monitor", "link"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut engine = Engine::in_netns(ns.path()).unwrap();
    let (states, writes) = pass(&mut engine, &desired).await;
    assert_all_ready(&states);
    assert_eq!(writes, 0, "restart on a matching node");

    tokio::time::sleep(Duration::from_millis(200)).await;
    monitor.kill().unwrap();
    let out = monitor.wait_with_output().unwrap();
    let events = String::from_utf8_lossy(&out.stdout);
    assert!(events.trim().is_empty(), "no link changed: {events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_errors_name_the_operation_and_the_interface() {
    let ns = Netns::new("errors");
    let mut engine = Engine::in_netns(ns.path()).unwrap();
    // The kernel refuses to enslave the loopback device to a bridge.
    let desired = vec![
        bridge("br0", None),
        DesiredLink {
            name: "lo".into(),
            owner: OWNER.into(),
            kind: DesiredKind::Unmanaged {
                master: Some("br0".into()),
                allow_uplink: false,
                release: false,
            },
            up: true,
            adopt: false,
        },
    ];
    let (states, _) = pass(&mut engine, &desired).await;
    assert!(states[0].ready, "the bridge is unaffected");
    let s = &states[1];
    println!("reported: {}", s.message);
    assert_eq!(s.reason, reason::NETLINK_ERROR);
    assert!(s.message.starts_with("cannot set link lo: "), "{}", s.message);
    assert!(s.message.contains("EINVAL: Invalid argument"), "{}", s.message);
    assert!(ns.link("lo").unwrap().get("master").is_none());
}

/// Runs the engine loop; returns the states watch and the desired sender.
fn spawn_run(
    ns: &Netns,
    desired: Vec<DesiredLink>,
) -> (
    watch::Sender<Vec<DesiredLink>>,
    watch::Receiver<Applied>,
    nno::netlink::WriteCounter,
) {
    let engine = Engine::in_netns(ns.path()).unwrap();
    let writes = engine.write_counter();
    let (dtx, drx) = watch::channel(desired);
    let (stx, srx) = watch::channel(Applied::default());
    tokio::spawn(engine.run(drx, stx));
    (dtx, srx, writes)
}

async fn wait_ready(states: &mut watch::Receiver<Applied>, n: usize) {
    let ready = tokio::time::timeout(
        Duration::from_secs(5),
        states.wait_for(|a| a.states.len() == n && a.states.iter().all(|s| s.ready)),
    )
    .await
    .is_ok();
    assert!(ready, "not ready in time: {:?}", states.borrow().states);
}

/// Polls the oracle until `repaired` holds; returns the time since `start`.
fn time_until(start: Instant, what: &str, repaired: impl Fn() -> bool) -> Duration {
    while !repaired() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what}: not repaired within 5 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_of_each_kind_is_repaired_within_a_second() {
    let ns = Netns::new("drift");
    ns.veth("under0", "under0p", &["198.18.0.1/24"]);
    let (_desired, mut states, writes) = spawn_run(&ns, gateway("under0"));
    wait_ready(&mut states, 2).await;

    let healthy = |ns: &Netns| -> bool {
        let (Some(br), Some(vx)) = (ns.link("br-gw"), ns.link("vx-gw")) else {
            return false;
        };
        is_up(&br)
            && br["mtu"] == 1450
            && is_up(&vx)
            && vx["master"] == "br-gw"
            && vx["mtu"] == 1450
            && ns.zero_fdb("vx-gw").len() == 2
    };
    assert!(healthy(&ns));

    let drifts: Vec<(&str, Vec<&str>)> = vec![
        ("ip link del vx-gw", vec!["ip", "link", "del", "vx-gw"]),
        (
            "ip link set br-gw down",
            vec!["ip", "link", "set", "br-gw", "down"],
        ),
        (
            "ip link set vx-gw down",
            vec!["ip", "link", "set", "vx-gw", "down"],
        ),
        (
            "ip link set br-gw mtu 1400",
            vec!["ip", "link", "set", "br-gw", "mtu", "1400"],
        ),
        (
            "ip link set vx-gw mtu 1300",
            vec!["ip", "link", "set", "vx-gw", "mtu", "1300"],
        ),
        (
            "ip link set vx-gw nomaster",
            vec!["ip", "link", "set", "vx-gw", "nomaster"],
        ),
        (
            "bridge fdb del 00:00:00:00:00:00 dev vx-gw dst 198.18.0.2",
            vec![
                "bridge",
                "fdb",
                "del",
                "00:00:00:00:00:00",
                "dev",
                "vx-gw",
                "dst",
                "198.18.0.2",
            ],
        ),
        ("ip link del br-gw", vec!["ip", "link", "del", "br-gw"]),
    ];
    let mut worst = Duration::ZERO;
    for (what, cmd) in drifts {
        let before = writes.get();
        let mut args = vec!["-n", ns.name.as_str()];
        args.extend_from_slice(&cmd[1..]);
        let start = Instant::now();
        support::run(cmd[0], &args).unwrap();
        let took = tokio::task::block_in_place(|| time_until(start, what, || healthy(&ns)));
        println!(
            "drift repaired: {what:<60} {:>7.1} ms, {} writes",
            took.as_secs_f64() * 1e3,
            writes.get() - before
        );
        assert!(took < Duration::from_secs(1), "{what}: took {took:?}");
        worst = worst.max(took);
        // Let the repair's own events settle into a no-op pass before the next drift.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("worst drift repair: {:.1} ms", worst.as_secs_f64() * 1e3);
    wait_ready(&mut states, 2).await;

    let settled = writes.get();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(writes.get(), settled, "quiet once repaired: no write loops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_carrier_gets_its_vxlan_the_moment_it_appears() {
    let ns = Netns::new("late");
    let (_desired, mut states, _) = spawn_run(&ns, gateway("under0"));
    let s = tokio::time::timeout(
        Duration::from_secs(5),
        states.wait_for(|a| a.states.len() == 2 && a.states.iter().any(|s| s.name == "vx-gw")),
    )
    .await
    .unwrap()
    .unwrap()
    .states
    .clone();
    let vx = state(&s, "vx-gw");
    assert!(!vx.ready);
    assert_eq!(vx.reason, reason::CARRIER_MISSING);
    assert!(vx.message.contains("under0"), "{}", vx.message);
    assert!(
        state(&s, "br-gw").ready,
        "the bridge does not wait for the carrier"
    );
    assert!(ns.link("vx-gw").is_none());

    let start = Instant::now();
    ns.veth("under0", "under0p", &["198.18.0.1/24"]);
    let took = tokio::task::block_in_place(|| {
        time_until(start, "late carrier", || {
            ns.link("vx-gw")
                .is_some_and(|l| is_up(&l) && l["master"] == "br-gw")
        })
    });
    println!(
        "late carrier: VXLAN up {:.1} ms after the carrier appeared",
        took.as_secs_f64() * 1e3
    );
    assert!(took < Duration::from_secs(1));
    wait_ready(&mut states, 2).await;
    let s = states.borrow().states.clone();
    assert_eq!(state(&s, "vx-gw").local_address, Some(ip("198.18.0.1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carrier_mtu_and_address_changes_follow_through() {
    let ns = Netns::new("carrierchg");
    ns.veth("under0", "under0p", &["198.18.0.1/24"]);
    let desired = vec![vxlan("vx0", "under0", |c| c.peers = vec![ip("198.18.0.2")])];
    let (_desired, mut states, _) = spawn_run(&ns, desired);
    wait_ready(&mut states, 1).await;
    let index = ns.ifindex("vx0").unwrap();

    // The derived MTU follows the carrier's, and so does the reported carrier MTU.
    let start = Instant::now();
    ns.ip(&["link", "set", "under0", "mtu", "9000"]);
    let took = tokio::task::block_in_place(|| {
        time_until(start, "carrier MTU", || {
            ns.link("vx0").is_some_and(|l| l["mtu"] == 8950)
        })
    });
    println!(
        "carrier MTU 1500 -> 9000: VXLAN MTU 8950 after {:.1} ms",
        took.as_secs_f64() * 1e3
    );
    let ok = tokio::time::timeout(
        Duration::from_secs(2),
        states.wait_for(|a| a.states[0].carrier_mtu == Some(9000) && a.states[0].ready),
    )
    .await
    .is_ok();
    assert!(ok, "{:?}", states.borrow().states);

    // A new carrier address becomes the local address, in place. (Another
    // subnet: deleting a primary address also deletes its secondaries.)
    let start = Instant::now();
    ns.ip(&["addr", "add", "198.18.2.5/24", "dev", "under0"]);
    ns.ip(&["addr", "del", "198.18.0.1/24", "dev", "under0"]);
    let took = tokio::task::block_in_place(|| {
        time_until(start, "carrier address", || {
            ns.link("vx0")
                .is_some_and(|l| info_data(&l)["local"] == "198.18.2.5")
        })
    });
    println!(
        "carrier address moved: local updated after {:.1} ms",
        took.as_secs_f64() * 1e3
    );
    assert_eq!(ns.ifindex("vx0"), Some(index), "changed in place");
    let ok = tokio::time::timeout(
        Duration::from_secs(2),
        states.wait_for(|a| a.states[0].local_address == Some(ip("198.18.2.5")) && a.states[0].ready),
    )
    .await
    .is_ok();
    assert!(ok, "{:?}", states.borrow().states);

    // No address of the family left: not Ready, named.
    ns.ip(&["addr", "del", "198.18.2.5/24", "dev", "under0"]);
    let ok = tokio::time::timeout(
        Duration::from_secs(2),
        states.wait_for(|a| a.states[0].reason == reason::CARRIER_ADDRESS_MISSING),
    )
    .await
    .is_ok();
    assert!(ok, "{:?}", states.borrow().states);
    assert!(states.borrow().states[0].message.contains("under0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multicast_group_and_remote_change_in_place() {
    let ns = Netns::new("group");
    ns.veth("under0", "under0p", &["198.18.0.1/24"]);
    let mut engine = Engine::in_netns(ns.path()).unwrap();
    let mut desired = vec![vxlan("vx0", "under0", |c| c.group = Some(ip("239.1.1.1")))];
    assert_all_ready(&pass(&mut engine, &desired).await.0);
    let index = ns.ifindex("vx0").unwrap();
    assert_eq!(ns.zero_fdb("vx0"), ["239.1.1.1".to_string()].into());
    let entry = || ns.bridge(&["-j", "fdb", "show", "dev", "vx0"]);
    let made = entry();

    // The group's own entry deleted out of band: put back as the kernel made it,
    // through the carrier.
    ns.bridge(&[
        "fdb",
        "del",
        "00:00:00:00:00:00",
        "dev",
        "vx0",
        "dst",
        "239.1.1.1",
        "via",
        "under0",
    ]);
    assert!(ns.zero_fdb("vx0").is_empty());
    let (states, writes) = pass(&mut engine, &desired).await;
    assert_all_ready(&states);
    assert_eq!(writes, 1);
    assert_eq!(entry(), made, "the same entry as at creation");
    assert_eq!(pass(&mut engine, &desired).await.1, 0);

    vx_config(&mut desired[0]).group = Some(ip("239.1.1.2"));
    let (states, writes) = pass(&mut engine, &desired).await;
    assert_all_ready(&states);
    assert_eq!(writes, 1);
    assert_eq!(info_data(&ns.link("vx0").unwrap())["group"], "239.1.1.2");
    assert_eq!(ns.zero_fdb("vx0"), ["239.1.1.2".to_string()].into());

    let c = vx_config(&mut desired[0]);
    c.group = None;
    c.remote = Some(ip("198.18.0.2"));
    let (states, writes) = pass(&mut engine, &desired).await;
    assert_all_ready(&states);
    assert_eq!(writes, 1);
    let vx = ns.link("vx0").unwrap();
    assert_eq!(info_data(&vx)["remote"], "198.18.0.2");
    assert!(info_data(&vx).get("group").is_none());
    assert_eq!(ns.zero_fdb("vx0"), ["198.18.0.2".to_string()].into());
    assert_eq!(ns.ifindex("vx0"), Some(index), "all in place");
    assert_eq!(pass(&mut engine, &desired).await.1, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_bridge_gets_its_pod_ports_back() {
    let ns = Netns::new("ports");
    ns.veth("under0", "under0p", &["198.18.0.1/24"]);
    let (desired, mut states, _writes) = spawn_run(&ns, gateway("under0"));
    wait_ready(&mut states, 2).await;
    // Two pods' ports, enslaved by someone else (the bridge CNI plugin).
    for (host, peer) in [("vethpod1", "eth-pod1"), ("vethpod2", "eth-pod2")] {
        ns.veth(host, peer, &[]);
        ns.ip(&["link", "set", host, "master", "br-gw"]);
    }
    let ports_attached = |ns: &Netns| {
        ["vethpod1", "vethpod2", "vx-gw"]
            .iter()
            .all(|p| ns.link(p).is_some_and(|l| l["master"] == "br-gw" && is_up(&l)))
    };
    tokio::task::block_in_place(|| time_until(Instant::now(), "ports seen", || ports_attached(&ns)));
    // Let the engine observe the ports (their joining is a cue).
    tokio::time::sleep(Duration::from_millis(200)).await;

    let before = ns.ifindex("br-gw");
    let start = Instant::now();
    ns.ip(&["link", "del", "br-gw"]);
    let took = tokio::task::block_in_place(|| {
        time_until(start, "bridge and its ports back", || {
            ns.ifindex("br-gw").is_some_and(|i| Some(i) != before) && ports_attached(&ns)
        })
    });
    println!(
        "bridge deleted: back with both pod ports in {:.1} ms",
        took.as_secs_f64() * 1e3
    );
    assert!(took < Duration::from_secs(1));
    wait_ready(&mut states, 2).await;

    // A port detached by hand is attached again.
    let start = Instant::now();
    ns.ip(&["link", "set", "vethpod1", "nomaster"]);
    let took = tokio::task::block_in_place(|| time_until(start, "port back", || ports_attached(&ns)));
    println!("port detached: back in {:.1} ms", took.as_secs_f64() * 1e3);

    // A port moved to another bridge on purpose, or gone, is left alone.
    ns.ip(&["link", "add", "br-other", "type", "bridge"]);
    ns.ip(&["link", "set", "vethpod2", "master", "br-other"]);
    ns.ip(&["link", "del", "vethpod1"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ns.link("vethpod2").unwrap()["master"], "br-other");

    // Once the bridge is no longer desired, its former ports are not touched.
    ns.ip(&["link", "set", "vethpod2", "master", "br-gw"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    desired.send(vec![]).unwrap();
    tokio::task::block_in_place(|| {
        time_until(Instant::now(), "bridge removed", || ns.link("br-gw").is_none())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let port = ns.link("vethpod2").expect("the pod's port is never deleted");
    assert!(port.get("master").is_none(), "{port}");
}

/// A pod: a network namespace with `eth0` at `address`, its host end `host` enslaved
/// to `bridge` in `node`.
fn pod(node: &Netns, tag: &str, host: &str, bridge: &str, address: &str) -> Netns {
    let pod = Netns::new(tag);
    node.ip(&[
        "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
    ]);
    node.ip(&["link", "set", host, "master", bridge, "up"]);
    pod.ip(&["addr", "add", address, "dev", "eth0"]);
    pod.ip(&["link", "set", "eth0", "up"]);
    pod
}

/// A bridge and VXLAN made with iproute2 the way the Go node-network-operator makes
/// them (no ownership marker of ours), two pods on the bridge: without adoption the
/// engine calls them a name conflict and leaves them alone; with it, it takes them
/// over in place (same ifindex, the pods' ports kept) while a ping between the pods
/// loses nothing. Settings that cannot change in place are refused, not recreated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_takes_over_an_interface_pair_in_place() {
    let ns = Netns::new("adopt");
    ns.veth("under0", "under0p", &["198.18.0.1/24"]);
    ns.ip(&["link", "add", "br-go", "type", "bridge"]);
    ns.ip(&["link", "set", "br-go", "up"]);
    ns.ip(&[
        "link",
        "add",
        "vx-go",
        "type",
        "vxlan",
        "id",
        "100",
        "dstport",
        "4789",
        "group",
        "239.1.1.9",
        "dev",
        "under0",
    ]);
    ns.ip(&["link", "set", "vx-go", "master", "br-go", "up"]);
    let p1 = pod(&ns, "adopt-p1", "vethp1", "br-go", "192.168.77.1/24");
    let p2 = pod(&ns, "adopt-p2", "vethp2", "br-go", "192.168.77.2/24");
    let before = (ns.ifindex("br-go"), ns.ifindex("vx-go"));

    let desired = |adopt: bool| {
        let mut br = bridge("br-go", None);
        let mut vx = vxlan("vx-go", "under0", |c| {
            c.group = Some(ip("239.1.1.9"));
            c.master = Some("br-go".into());
        });
        br.adopt = adopt;
        vx.adopt = adopt;
        vec![br, vx]
    };
    let mut engine = Engine::in_netns(ns.path()).unwrap();
    let (states, writes) = pass(&mut engine, &desired(false)).await;
    assert_eq!(state(&states, "br-go").reason, reason::NAME_CONFLICT);
    assert_eq!(writes, 0, "left alone");

    // A ping between the pods across the adoption.
    let ping = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &p1.name,
            "ping",
            "-q",
            "-i",
            "0.01",
            "-c",
            "300",
            "-W",
            "1",
            "192.168.77.2",
        ])
        .output();
    let pinger = std::thread::spawn(move || ping);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (states, writes) = pass(&mut engine, &desired(true)).await;
    assert_all_ready(&states);
    assert!(writes > 0);
    let out = pinger.join().unwrap().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    println!(
        "ping across the adoption: {}",
        summary.lines().rev().nth(1).unwrap_or_default()
    );
    assert!(
        summary.contains("300 packets transmitted, 300 received"),
        "{summary}"
    );

    assert_eq!(
        (ns.ifindex("br-go"), ns.ifindex("vx-go")),
        before,
        "same interfaces"
    );
    for port in ["vethp1", "vethp2", "vx-go"] {
        assert_eq!(ns.link(port).unwrap()["master"], "br-go", "{port} kept");
    }
    assert_eq!(alias(&ns.link("br-go").unwrap()), Some(marker(OWNER).as_str()));
    assert_eq!(
        pass(&mut engine, &desired(true)).await.1,
        0,
        "owned now: nothing more"
    );
    drop((p1, p2));

    // Another VNI cannot change in place: refused, the interface left as it is.
    let ns2 = Netns::new("adopt-refused");
    ns2.veth("under0", "under0p", &["198.18.0.1/24"]);
    ns2.ip(&[
        "link",
        "add",
        "vx-go",
        "type",
        "vxlan",
        "id",
        "101",
        "dstport",
        "4789",
        "group",
        "239.1.1.9",
        "dev",
        "under0",
    ]);
    let index = ns2.ifindex("vx-go");
    let mut engine = Engine::in_netns(ns2.path()).unwrap();
    let mut vx = vxlan("vx-go", "under0", |c| c.group = Some(ip("239.1.1.9")));
    vx.adopt = true;
    let (states, writes) = pass(&mut engine, &[vx]).await;
    let s = state(&states, "vx-go");
    assert_eq!(s.reason, reason::ADOPTION_REFUSED, "{}", s.message);
    assert!(s.message.contains("VNI 101 -> 100"), "{}", s.message);
    assert_eq!((writes, ns2.ifindex("vx-go")), (0, index));
}

/// An owner whose marker would not fit the 255 bytes of IFLA_IFALIAS (a Network
/// named with 253 characters): the engine writes the hashed marker, the links are
/// Ready, and an engine started again owns them with no write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_owner_name_gets_a_marker_that_fits_and_survives_a_restart() {
    let ns = Netns::new("longowner");
    ns.veth("under0", "under0p", &["198.18.0.1/24"]);
    let owner = format!("Network/{}", "a".repeat(253));
    let mut desired = gateway("under0");
    for d in &mut desired {
        d.owner = owner.clone();
    }
    {
        let mut engine = Engine::in_netns(ns.path()).unwrap();
        assert_all_ready(&pass(&mut engine, &desired).await.0);
    }
    let alias = ns.link("br-gw").unwrap()["ifalias"].as_str().unwrap().to_string();
    assert_eq!(alias, marker(&owner));
    assert!(alias.len() <= 255, "{}", alias.len());
    let mut engine = Engine::in_netns(ns.path()).unwrap();
    let (states, writes) = pass(&mut engine, &desired).await;
    assert_all_ready(&states);
    assert_eq!(writes, 0, "the restarted engine adopts what it made");
}

/// An unmanaged port that holds a global address (the node's uplink here) is not
/// enslaved, with the reason; with allow_uplink it is. A port without an address is
/// enslaved either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enslaving_an_interface_with_the_nodes_address_is_refused_unless_allowed() {
    let ns = Netns::new("uplink");
    ns.veth("uplink0", "uplink0p", &["198.18.0.1/24"]);
    ns.veth("spare0", "spare0p", &[]);
    let port = |name: &str, allow_uplink: bool| DesiredLink {
        name: name.into(),
        owner: "Link/port".into(),
        kind: DesiredKind::Unmanaged {
            master: Some("br0".into()),
            allow_uplink,
            release: false,
        },
        up: true,
        adopt: false,
    };
    let mut engine = Engine::in_netns(ns.path()).unwrap();
    let desired = vec![bridge("br0", None), port("uplink0", false), port("spare0", false)];
    let (states, _) = pass(&mut engine, &desired).await;
    let s = state(&states, "uplink0");
    assert_eq!(s.reason, reason::UPLINK_REFUSED, "{}", s.message);
    assert!(
        s.message.contains("198.18.0.1/24") && s.message.contains("allowUplink"),
        "{}",
        s.message
    );
    assert!(
        ns.link("uplink0").unwrap().get("master").is_none(),
        "not enslaved"
    );
    assert_eq!(ns.link("spare0").unwrap()["master"], "br0");
    assert_eq!(pass(&mut engine, &desired).await.1, 0, "refused without retrying");

    let allowed = vec![bridge("br0", None), port("uplink0", true), port("spare0", false)];
    let (states, _) = pass(&mut engine, &allowed).await;
    assert_all_ready(&states);
    assert_eq!(ns.link("uplink0").unwrap()["master"], "br0");
}
