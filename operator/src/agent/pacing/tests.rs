use super::*;
use crate::api::InterfaceName;
use crate::api::link::LinkKind;
use crate::api::node_state::InterfaceState;
use serde_json::json;

const NODE: &str = "node-a";

fn network(generation: i64, vni: u32, rollout: Option<serde_json::Value>) -> Arc<Network> {
    let mut obj = json!({
        "apiVersion": "nno.dev/v1alpha1", "kind": "Network",
        "metadata": {"name": "gw", "uid": "u1", "generation": generation},
        "spec": {"bridge": {"name": "br-gw"}, "vxlan": {"vni": vni, "remotes": ["198.18.0.11"]},
                 "ipam": {"range": "192.168.50.0/24"}, "attachments": {"namespaces": ["default"]}}
    });
    if let Some(r) = rollout {
        obj["status"] = json!({"rollout": r});
    }
    Arc::new(serde_json::from_value(obj).unwrap())
}

fn owner() -> Owner {
    Owner {
        kind: OwnerKind::Network,
        name: "gw".into(),
    }
}

fn want(name: &str, kind: DesiredKind) -> Want {
    Want {
        name: name.into(),
        owner: owner(),
        owner_uid: "u1".into(),
        kind: LinkKind::Bridge,
        generation: Some(1),
        link: Some(crate::netlink::DesiredLink {
            name: name.into(),
            owner: "Network/gw".into(),
            kind,
            up: true,
            adopt: false,
        }),
        hold: None,
        notes: vec![],
    }
}

fn status(ready: bool) -> NodeNetworkStateStatus {
    NodeNetworkStateStatus {
        interfaces: vec![InterfaceState {
            name: InterfaceName::new("br-gw").unwrap(),
            owner: owner(),
            kind: LinkKind::Bridge,
            ready,
            reason: if ready { "Ready" } else { "CarrierMissing" }.into(),
            message: String::new(),
            mtu: None,
            carrier: None,
            carrier_mtu: None,
            vtep_address: None,
            observed_generation: Some(1),
        }],
        ..Default::default()
    }
}

fn pacer() -> Pacer {
    Pacer::load(NODE, None, Duration::from_secs(5))
}

fn vni(n: &Network) -> u32 {
    n.spec.vxlan.as_ref().unwrap().vni
}

/// Applies `net` as the agent would (view, then the probe's outcome).
fn apply(p: &mut Pacer, net: &Arc<Network>, ready: bool, outcome: Option<Outcome>) -> Arc<Network> {
    let (viewed, _) = p.view(std::slice::from_ref(net), &[], &BTreeMap::new());
    let wants = vec![want("br-gw", DesiredKind::Bridge { mtu: None })];
    let (jobs, _) = p.due(
        &viewed,
        &[],
        &wants,
        &status(ready),
        Some(&status(true)),
        Instant::now(),
    );
    if let (Some(job), Some(outcome)) = (jobs.first(), outcome) {
        p.record(&job.owner, outcome);
        return p.view(std::slice::from_ref(net), &[], &BTreeMap::new()).0[0].clone();
    }
    viewed[0].clone()
}

fn entry(good: Option<i64>, failed: Option<i64>) -> Entry {
    Entry {
        uid: "u".into(),
        good: good.map(|generation| Good {
            generation,
            spec: json!({}),
        }),
        failed: failed.map(|generation| Failed {
            generation,
            reason: "R".into(),
            message: "m".into(),
        }),
    }
}

#[test]
fn choices() {
    let admitted = RolloutStatus {
        generation: 3,
        nodes: vec![NODE.into()],
        ..Default::default()
    };
    let choose = |e: &Entry, uid: &str, generation: i64, rollout: Option<&RolloutStatus>, deleting: bool| {
        choose(Some(e), uid, generation, rollout, NODE, deleting)
    };
    assert_eq!(
        super::choose(None, "u", 3, None, NODE, false),
        Choice::Current,
        "never applied here"
    );
    assert_eq!(
        choose(&entry(Some(3), None), "u", 3, None, false),
        Choice::Current
    );
    let elsewhere = RolloutStatus {
        generation: 3,
        nodes: vec!["node-b".into()],
        ..Default::default()
    };
    assert!(
        matches!(choose(&entry(Some(2), None), "u", 3, Some(&elsewhere), false), Choice::Good(g) if g.generation == 2)
    );
    assert_eq!(
        choose(&entry(Some(2), None), "u", 3, None, false),
        Choice::Current,
        "not taken on by a controller"
    );
    assert_eq!(
        choose(&entry(Some(2), None), "u", 3, Some(&admitted), false),
        Choice::Current
    );
    assert_eq!(
        choose(&entry(Some(2), None), "other", 3, None, false),
        Choice::Current,
        "a new object of the same name"
    );
    assert_eq!(
        choose(&entry(Some(2), None), "u", 3, None, true),
        Choice::Current,
        "leaving the node is not paced"
    );
    assert!(matches!(
        choose(&entry(Some(2), Some(3)), "u", 3, Some(&admitted), false),
        Choice::Good(_)
    ));
    assert!(matches!(
        choose(&entry(None, Some(3)), "u", 3, Some(&admitted), false),
        Choice::Released(_)
    ));
    assert_eq!(
        choose(&entry(None, Some(3)), "u", 4, None, false),
        Choice::Current,
        "a new spec is tried"
    );
}

#[test]
fn a_change_waits_for_admission_then_is_probed_and_kept() {
    let mut p = pacer();
    let v1 = apply(&mut p, &network(1, 100, None), true, Some(Outcome::Pass));
    assert_eq!(vni(&v1), 100);
    assert_eq!(p.generations()[0].generation, Some(1));

    // Generation 2, not admitted: the node keeps generation 1.
    let elsewhere = json!({"generation": 2, "nodes": ["node-b"]});
    let viewed = apply(&mut p, &network(2, 200, Some(elsewhere.clone())), true, None);
    assert_eq!((vni(&viewed), viewed.metadata.generation), (100, Some(1)));

    // Admitted: applied and probed.
    let admit = json!({"generation": 2, "nodes": [NODE]});
    let viewed = apply(
        &mut p,
        &network(2, 200, Some(admit.clone())),
        true,
        Some(Outcome::Pass),
    );
    assert_eq!(vni(&viewed), 200);
    assert_eq!(p.generations()[0].generation, Some(2));
    // Once in force it stays, admitted or not.
    let viewed = apply(&mut p, &network(2, 200, Some(elsewhere)), true, None);
    assert_eq!(vni(&viewed), 200);
}

#[test]
fn a_failed_probe_rolls_back_and_is_not_retried() {
    let mut p = pacer();
    apply(&mut p, &network(1, 100, None), true, Some(Outcome::Pass));
    let admit = json!({"generation": 2, "nodes": [NODE]});
    let fail = Outcome::Fail {
        reason: reason::PEER_UNREACHABLE.into(),
        message: "198.18.0.11".into(),
    };
    let viewed = apply(&mut p, &network(2, 200, Some(admit.clone())), true, Some(fail));
    assert_eq!(
        (vni(&viewed), viewed.metadata.generation),
        (100, Some(1)),
        "back to generation 1"
    );
    let g = &p.generations()[0];
    assert_eq!(
        (g.generation, g.failed_generation, g.reason.as_str()),
        (Some(1), Some(2), "PeerUnreachable")
    );
    let mut wants = vec![want("br-gw", DesiredKind::Bridge { mtu: None })];
    p.adjust(&mut wants);
    assert!(
        wants[0].notes[0].contains("generation 2 was rolled back"),
        "{:?}",
        wants[0].notes
    );
    assert!(wants[0].link.is_some(), "generation 1 stays applied");
    // A new spec is tried again.
    let viewed = apply(
        &mut p,
        &network(3, 300, Some(json!({"generation": 3, "nodes": [NODE]}))),
        true,
        None,
    );
    assert_eq!(vni(&viewed), 300);
}

#[test]
fn a_change_from_ready_must_be_ready_within_the_timeout() {
    let mut p = pacer();
    apply(&mut p, &network(1, 100, None), true, Some(Outcome::Pass));
    let net = network(2, 200, Some(json!({"generation": 2, "nodes": [NODE]})));
    let (viewed, _) = p.view(std::slice::from_ref(&net), &[], &BTreeMap::new());
    let wants = vec![want("br-gw", DesiredKind::Bridge { mtu: None })];
    let t0 = Instant::now();
    let (jobs, failed) = p.due(&viewed, &[], &wants, &status(false), Some(&status(true)), t0);
    assert!(jobs.is_empty() && failed.is_empty(), "still within the timeout");
    assert_eq!(p.next_deadline(), Some(t0 + Duration::from_secs(5)));
    let (jobs, failed) = p.due(
        &viewed,
        &[],
        &wants,
        &status(false),
        Some(&status(false)),
        t0 + Duration::from_secs(6),
    );
    assert!(jobs.is_empty());
    assert_eq!(failed.len(), 1);
    assert!(matches!(&failed[0].1, Outcome::Fail { reason, .. } if reason == reason::NOT_READY_AFTER_CHANGE));
}

#[test]
fn a_first_generation_waiting_for_its_carrier_is_not_a_failure() {
    let mut p = pacer();
    let net = network(1, 100, None);
    let (viewed, _) = p.view(std::slice::from_ref(&net), &[], &BTreeMap::new());
    let wants = vec![want("br-gw", DesiredKind::Bridge { mtu: None })];
    let (jobs, failed) = p.due(&viewed, &[], &wants, &status(false), None, Instant::now());
    assert_eq!(jobs.len(), 1, "probed for the API server and peers at once");
    assert!(jobs[0].peers.is_empty(), "a bridge has no peers");
    assert!(failed.is_empty());
}

#[test]
fn a_rolled_back_first_generation_is_undone() {
    let mut p = pacer();
    let fail = Outcome::Fail {
        reason: reason::API_SERVER_UNREACHABLE.into(),
        message: "timeout".into(),
    };
    apply(&mut p, &network(1, 100, None), true, Some(fail));
    let mut wants = vec![
        want("br-gw", DesiredKind::Bridge { mtu: None }),
        want(
            "eth1",
            DesiredKind::Unmanaged {
                master: Some("br-gw".into()),
                allow_uplink: true,
                release: false,
            },
        ),
    ];
    p.adjust(&mut wants);
    assert!(wants[0].link.is_none(), "an owned interface is removed");
    assert_eq!(
        wants[1].link.as_ref().unwrap().kind,
        DesiredKind::Unmanaged {
            master: None,
            allow_uplink: false,
            release: true
        },
        "an unmanaged one leaves its bridge"
    );
    assert_eq!(wants[0].hold.as_ref().unwrap().0, reason::ROLLED_BACK);
    let g = &p.generations()[0];
    assert_eq!((g.generation, g.failed_generation), (None, Some(1)));
}

#[test]
fn memory_survives_a_restart_and_forgets_deleted_objects() {
    let dir = std::env::temp_dir().join(format!("nno-pacing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("state.json");
    let mut p = Pacer::load(NODE, Some(file.clone()), Duration::from_secs(5));
    apply(&mut p, &network(1, 100, None), true, Some(Outcome::Pass));
    drop(p);
    let mut p = Pacer::load(NODE, Some(file.clone()), Duration::from_secs(5));
    let elsewhere = json!({"generation": 2, "nodes": ["node-b"]});
    let viewed = apply(&mut p, &network(2, 200, Some(elsewhere)), true, None);
    assert_eq!(vni(&viewed), 100, "the restarted agent keeps generation 1");
    p.view(&[], &[], &BTreeMap::new());
    let p = Pacer::load(NODE, Some(file.clone()), Duration::from_secs(5));
    assert!(p.memory.is_empty(), "a deleted object is forgotten");
    std::fs::write(&file, "not json").unwrap();
    assert!(
        Pacer::load(NODE, Some(file), Duration::from_secs(5))
            .memory
            .is_empty()
    );
    std::fs::remove_dir_all(dir).unwrap();
}
