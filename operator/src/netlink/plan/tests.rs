use super::*;
use crate::netlink::types::{ObservedAddress, RouteHit};

const OWNER: &str = "Network/gw";

type Drift = Box<dyn Fn(&mut ObservedLink)>;
type Edit = Box<dyn Fn(&mut VxlanConfig)>;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn bridge(name: &str, mtu: Option<u32>) -> DesiredLink {
    DesiredLink::bridge(name, OWNER, mtu)
}

fn cfg() -> VxlanConfig {
    VxlanConfig::new(100, Carrier::Named("eth1".into()))
}

fn vxlan(name: &str, f: impl FnOnce(&mut VxlanConfig)) -> DesiredLink {
    let mut c = cfg();
    f(&mut c);
    DesiredLink::vxlan(name, OWNER, c)
}

fn unmanaged(name: &str, master: Option<&str>) -> DesiredLink {
    DesiredLink {
        name: name.into(),
        owner: OWNER.into(),
        // The fixture's eth1 holds the node's address: allowed here; the
        // refusal has its own test.
        kind: DesiredKind::Unmanaged {
            master: master.map(String::from),
            allow_uplink: true,
            release: false,
        },
        up: true,
        adopt: false,
    }
}

fn olink(index: u32, name: &str, kind: ObservedKind) -> ObservedLink {
    ObservedLink {
        index,
        name: name.into(),
        kind,
        alias: None,
        mtu: 1500,
        admin_up: true,
        oper: OperState::Up,
        master: None,
    }
}

fn owned(mut l: ObservedLink) -> ObservedLink {
    l.alias = Some(marker(OWNER));
    l
}

fn ovx(c: impl FnOnce(&mut ObservedVxlan)) -> ObservedKind {
    let mut v = ObservedVxlan {
        vni: 100,
        port: 4789,
        port_range: (0, 0),
        learning: true,
        ttl: 0,
        remote: None,
        local: Some(ip("198.18.0.1")),
        link: Some(2),
    };
    c(&mut v);
    ObservedKind::Vxlan(v)
}

/// A node with carrier eth1 (index 2, 198.18.0.1/24 and 2001:db8::1/64).
fn node(extra: Vec<ObservedLink>) -> Observed {
    let mut o = Observed::default();
    for l in std::iter::once(olink(2, "eth1", ObservedKind::Other("veth".into()))).chain(extra) {
        o.links.insert(l.name.clone(), l);
    }
    o.addresses.insert(
        2,
        vec![
            ObservedAddress {
                address: ip("fe80::1"),
                prefix_len: 64,
                global: false,
            },
            ObservedAddress {
                address: ip("198.18.0.1"),
                prefix_len: 24,
                global: true,
            },
            ObservedAddress {
                address: ip("2001:db8::1"),
                prefix_len: 64,
                global: true,
            },
        ],
    );
    o
}

/// The vx0 the tests desire by default, already there and matching.
fn vx0_ok() -> ObservedLink {
    let mut l = owned(olink(9, "vx0", ovx(|_| {})));
    l.mtu = 1450;
    l.oper = OperState::Unknown;
    l
}

fn only(p: &Plan) -> &LinkPlan {
    assert_eq!(p.links.len(), 1);
    &p.links[0]
}

fn set(name: &str, attrs: SetAttrs) -> Step {
    Step::Set {
        name: name.into(),
        attrs,
    }
}

fn reason_of(lp: &LinkPlan) -> Option<&'static str> {
    lp.problem.as_ref().map(|p| p.reason)
}

#[test]
fn nothing_desired_nothing_there_nothing_to_do() {
    let p = plan(&[], &Observed::default());
    assert!(p.is_empty());
}

#[test]
fn bridge_creation_sets_marker_mtu_and_up_after_creating() {
    let p = plan(&[bridge("br0", Some(1450))], &node(vec![]));
    assert_eq!(
        only(&p).steps,
        vec![
            Step::CreateBridge { name: "br0".into() },
            set(
                "br0",
                SetAttrs {
                    alias: Some("nno.dev owner=Network/gw".into()),
                    mtu: Some(1450),
                    master: None,
                    up: Some(true)
                }
            )
        ]
    );
    assert_eq!(only(&p).problem, None);
}

#[test]
fn bridge_without_mtu_leaves_mtu_alone() {
    let p = plan(&[bridge("br0", None)], &node(vec![]));
    let Step::Set { attrs, .. } = &only(&p).steps[1] else {
        panic!("{p:?}")
    };
    assert_eq!(attrs.mtu, None);
    let mut l = owned(olink(5, "br0", ObservedKind::Bridge { stp: false }));
    l.mtu = 9000;
    assert!(plan(&[bridge("br0", None)], &node(vec![l])).is_empty());
}

#[test]
fn matching_bridge_is_a_no_op() {
    let l = owned(olink(5, "br0", ObservedKind::Bridge { stp: false }));
    let p = plan(&[bridge("br0", Some(1500))], &node(vec![l]));
    assert!(p.is_empty(), "{p:?}");
    assert_eq!(only(&p).problem, None);
}

#[test]
fn bridge_drift_is_one_set_each() {
    let cases: Vec<(&str, Drift, SetAttrs)> = vec![
        (
            "mtu",
            Box::new(|l| l.mtu = 1400),
            SetAttrs {
                mtu: Some(1500),
                ..SetAttrs::default()
            },
        ),
        (
            "down",
            Box::new(|l| l.admin_up = false),
            SetAttrs {
                up: Some(true),
                ..SetAttrs::default()
            },
        ),
    ];
    for (what, drift, want) in cases {
        let mut l = owned(olink(5, "br0", ObservedKind::Bridge { stp: false }));
        drift(&mut l);
        let p = plan(&[bridge("br0", Some(1500))], &node(vec![l]));
        assert_eq!(only(&p).steps, vec![set("br0", want)], "{what}");
    }
}

#[test]
fn a_bridge_made_for_another_owner_is_made_again() {
    let mut l = owned(olink(5, "br0", ObservedKind::Bridge { stp: false }));
    l.alias = Some(marker("Link/br0"));
    let p = plan(&[bridge("br0", Some(1500))], &node(vec![l]));
    let steps = &only(&p).steps;
    assert!(
        matches!(&steps[0], Step::Delete { why, .. } if why.contains("made for Link/br0")),
        "{steps:?}"
    );
    assert_eq!(steps[1], Step::CreateBridge { name: "br0".into() });
}

#[test]
fn stp_is_turned_off() {
    let l = owned(olink(5, "br0", ObservedKind::Bridge { stp: true }));
    let p = plan(&[bridge("br0", None)], &node(vec![l]));
    assert_eq!(only(&p).steps, vec![Step::StpOff { name: "br0".into() }]);
}

#[test]
fn held_down_bridge_is_brought_down_and_reported() {
    let mut d = bridge("br0", None);
    d.up = false;
    let l = owned(olink(5, "br0", ObservedKind::Bridge { stp: false }));
    let p = plan(&[d.clone()], &node(vec![l]));
    assert_eq!(
        only(&p).steps,
        vec![set(
            "br0",
            SetAttrs {
                up: Some(false),
                ..SetAttrs::default()
            }
        )]
    );
    assert_eq!(reason_of(only(&p)), Some(reason::ADMIN_DOWN));
    // Created down: no `up` in the Set.
    let p = plan(&[d], &node(vec![]));
    let Step::Set { attrs, .. } = &only(&p).steps[1] else {
        panic!()
    };
    assert_eq!(attrs.up, None);
}

#[test]
fn foreign_interfaces_are_never_touched() {
    for alias in [None, Some("something else".to_string())] {
        for kind in [
            ObservedKind::Bridge { stp: true },
            ObservedKind::Other("veth".into()),
            ovx(|v| v.vni = 5),
        ] {
            let mut l = olink(5, "br0", kind.clone());
            l.alias = alias.clone();
            l.admin_up = false;
            let p = plan(&[bridge("br0", Some(1400))], &node(vec![l.clone()]));
            assert!(p.is_empty(), "{kind:?}");
            let lp = only(&p);
            assert_eq!(reason_of(lp), Some(reason::NAME_CONFLICT));
            assert!(lp.problem.as_ref().unwrap().message.contains("br0"));
            // Also not deleted when undesired.
            assert!(plan(&[], &node(vec![l])).is_empty());
        }
    }
}

#[test]
fn owned_interface_of_the_wrong_kind_is_recreated() {
    let l = owned(olink(5, "br0", ovx(|_| {})));
    let p = plan(&[bridge("br0", None)], &node(vec![l]));
    let steps = &only(&p).steps;
    assert!(matches!(&steps[0], Step::Delete { name, why } if name == "br0" && why.contains("vxlan")));
    assert_eq!(steps[1], Step::CreateBridge { name: "br0".into() });
}

#[test]
fn only_owned_bridges_and_vxlans_are_deleted_when_undesired() {
    let p = plan(
        &[],
        &node(vec![
            owned(olink(5, "br-old", ObservedKind::Bridge { stp: false })),
            owned(olink(6, "vx-old", ovx(|_| {}))),
            owned(olink(7, "veth-marked", ObservedKind::Other("veth".into()))),
            olink(8, "br-foreign", ObservedKind::Bridge { stp: false }),
        ]),
    );
    let deleted: Vec<&str> = p.deletions.iter().map(|s| s.name()).collect();
    assert_eq!(deleted, vec!["br-old", "vx-old"]);
}

#[test]
fn desired_names_are_protected_even_when_invalid() {
    let l = owned(olink(5, "br0", ObservedKind::Bridge { stp: false }));
    let p = plan(&[bridge("br0", Some(10))], &node(vec![l]));
    assert!(p.is_empty());
    assert_eq!(reason_of(only(&p)), Some(reason::INVALID_SPEC));
}

#[test]
fn vxlan_creation_has_everything_and_peers_follow() {
    let d = vxlan("vx0", |c| {
        c.peers = vec![ip("198.18.0.3"), ip("198.18.0.2")];
        c.source_ports = Some((1000, 2000));
        c.ttl = Some(8);
        c.learning = false;
    });
    let p = plan(&[d], &node(vec![]));
    let lp = only(&p);
    assert_eq!(lp.problem, None);
    assert_eq!(lp.carrier.as_deref(), Some("eth1"));
    assert_eq!(lp.carrier_mtu, Some(1500));
    assert_eq!(lp.local_address, Some(ip("198.18.0.1")));
    assert_eq!(
        lp.steps,
        vec![
            Step::CreateVxlan {
                name: "vx0".into(),
                params: VxlanParams {
                    vni: 100,
                    port: 4789,
                    source_ports: Some((1000, 2000)),
                    learning: false,
                    ttl: 8,
                    remote: None,
                    local: ip("198.18.0.1"),
                    carrier: "eth1".into(),
                }
            },
            set(
                "vx0",
                SetAttrs {
                    alias: Some(marker(OWNER)),
                    mtu: Some(1450),
                    master: None,
                    up: Some(true)
                }
            ),
            Step::AddPeer {
                name: "vx0".into(),
                dst: ip("198.18.0.2")
            },
            Step::AddPeer {
                name: "vx0".into(),
                dst: ip("198.18.0.3")
            },
        ]
    );
}

#[test]
fn vxlan_mtu_follows_the_underlay_family() {
    let cases = [
        (None, 1500, 1450),
        (Some(ip("2001:db8::2")), 1500, 1430),
        (None, 9000, 8950),
        (Some(ip("2001:db8::2")), 9000, 8930),
    ];
    for (remote, carrier_mtu, want) in cases {
        let mut o = node(vec![]);
        o.links.get_mut("eth1").unwrap().mtu = carrier_mtu;
        let p = plan(&[vxlan("vx0", |c| c.remote = remote)], &o);
        let Step::Set { attrs, .. } = &only(&p).steps[1] else {
            panic!("{p:?}")
        };
        assert_eq!(attrs.mtu, Some(want), "{remote:?} over {carrier_mtu}");
    }
}

#[test]
fn ipv6_underlay_uses_the_carriers_global_ipv6_address() {
    let p = plan(
        &[vxlan("vx0", |c| c.remote = Some(ip("2001:db8::2")))],
        &node(vec![]),
    );
    assert_eq!(only(&p).local_address, Some(ip("2001:db8::1")));
}

#[test]
fn vxlan_mtu_above_what_the_carrier_allows_is_refused() {
    let p = plan(&[vxlan("vx0", |c| c.mtu = Some(1451))], &node(vec![]));
    let lp = only(&p);
    assert!(lp.steps.is_empty());
    assert_eq!(reason_of(lp), Some(reason::INVALID_SPEC));
    assert!(lp.problem.as_ref().unwrap().message.contains("eth1"));
    let p = plan(&[vxlan("vx0", |c| c.mtu = Some(1400))], &node(vec![]));
    assert_eq!(reason_of(only(&p)), None);
}

#[test]
fn missing_carrier_names_the_carrier_and_plans_nothing() {
    let d = vxlan("vx0", |c| c.carrier = Carrier::Named("eth9".into()));
    let p = plan(&[d], &node(vec![]));
    let lp = only(&p);
    assert!(lp.steps.is_empty());
    assert_eq!(reason_of(lp), Some(reason::CARRIER_MISSING));
    assert!(lp.problem.as_ref().unwrap().message.contains("eth9"));
}

#[test]
fn carrier_by_route_uses_the_preferred_source() {
    let d = vxlan("vx0", |c| {
        c.carrier = Carrier::RouteTo(ip("198.18.1.7"));
        c.peers = vec![ip("198.18.1.7")];
    });
    let mut o = node(vec![]);
    o.routes.insert(
        ip("198.18.1.7"),
        Some(RouteHit {
            oif: 2,
            prefsrc: Some(ip("198.18.0.1")),
        }),
    );
    let p = plan(std::slice::from_ref(&d), &o);
    assert_eq!(only(&p).carrier.as_deref(), Some("eth1"));
    assert_eq!(only(&p).local_address, Some(ip("198.18.0.1")));

    o.routes.insert(ip("198.18.1.7"), None);
    let p = plan(&[d], &o);
    assert_eq!(reason_of(only(&p)), Some(reason::CARRIER_MISSING));
    assert!(only(&p).problem.as_ref().unwrap().message.contains("198.18.1.7"));
}

#[test]
fn carrier_by_address_is_the_holder() {
    let d = vxlan("vx0", |c| c.carrier = Carrier::HoldingAddress(ip("2001:db8::1")));
    let p = plan(std::slice::from_ref(&d), &node(vec![]));
    assert_eq!(only(&p).carrier.as_deref(), Some("eth1"));
    assert_eq!(only(&p).local_address, Some(ip("2001:db8::1")));
    let d = vxlan("vx0", |c| c.carrier = Carrier::HoldingAddress(ip("2001:db8::99")));
    assert_eq!(
        reason_of(only(&plan(&[d], &node(vec![])))),
        Some(reason::CARRIER_MISSING)
    );
}

#[test]
fn carrier_without_an_address_of_the_family() {
    let mut o = node(vec![]);
    o.addresses.clear();
    let p = plan(&[vxlan("vx0", |_| {})], &o);
    assert_eq!(reason_of(only(&p)), Some(reason::CARRIER_ADDRESS_MISSING));
    assert!(only(&p).steps.is_empty());
}

#[test]
fn carrier_down_is_reported_but_the_vxlan_is_still_built() {
    let mut o = node(vec![]);
    o.links.get_mut("eth1").unwrap().admin_up = false;
    let p = plan(&[vxlan("vx0", |_| {})], &o);
    assert_eq!(reason_of(only(&p)), Some(reason::CARRIER_DOWN));
    assert!(!only(&p).steps.is_empty());
}

#[test]
fn matching_vxlan_with_operstate_unknown_is_a_no_op_and_fine() {
    let p = plan(&[vxlan("vx0", |_| {})], &node(vec![vx0_ok()]));
    assert!(p.is_empty(), "{p:?}");
    assert_eq!(only(&p).problem, None);
    let mut l = vx0_ok();
    l.oper = OperState::Down;
    let p = plan(&[vxlan("vx0", |_| {})], &node(vec![l]));
    assert_eq!(reason_of(only(&p)), Some(reason::OPER_DOWN));
}

#[test]
fn what_the_kernel_cannot_change_in_place_is_recreated() {
    let cases: Vec<(&str, Edit)> = vec![
        ("VNI", Box::new(|c| c.vni = 101)),
        ("port", Box::new(|c| c.port = 8472)),
        ("source ports", Box::new(|c| c.source_ports = Some((1000, 2000)))),
        ("underlay", Box::new(|c| c.remote = Some(ip("2001:db8::2")))),
    ];
    for (what, change) in cases {
        let p = plan(&[vxlan("vx0", |c| change(c))], &node(vec![vx0_ok()]));
        let steps = &only(&p).steps;
        assert!(
            matches!(&steps[0], Step::Delete { why, .. } if why.contains(what)),
            "{what}: {steps:?}"
        );
        assert!(matches!(&steps[1], Step::CreateVxlan { .. }), "{what}");
    }
}

#[test]
fn the_rest_changes_in_place() {
    type Case = (Edit, VxlanChange);
    let change = |f: fn(&mut VxlanChange)| {
        let mut c = VxlanChange {
            vni: 100,
            ..VxlanChange::default()
        };
        f(&mut c);
        c
    };
    let cases: Vec<Case> = vec![
        (
            Box::new(|c| c.learning = false),
            change(|c| c.learning = Some(false)),
        ),
        (Box::new(|c| c.ttl = Some(16)), change(|c| c.ttl = Some(16))),
        (
            Box::new(|c| c.group = Some(ip("239.1.1.1"))),
            change(|c| c.remote = Some(RemoteChange::Set(ip("239.1.1.1")))),
        ),
    ];
    for (f, want) in cases {
        let p = plan(&[vxlan("vx0", |c| f(c))], &node(vec![vx0_ok()]));
        assert_eq!(
            only(&p).steps,
            vec![Step::ChangeVxlan {
                name: "vx0".into(),
                change: want
            }]
        );
    }
}

#[test]
fn carrier_and_local_change_in_place() {
    let mut o = node(vec![vx0_ok()]);
    let mut eth2 = olink(3, "eth2", ObservedKind::Other("veth".into()));
    eth2.mtu = 1500;
    o.links.insert("eth2".into(), eth2);
    o.addresses.insert(
        3,
        vec![ObservedAddress {
            address: ip("198.18.1.1"),
            prefix_len: 24,
            global: true,
        }],
    );
    let p = plan(&[vxlan("vx0", |c| c.carrier = Carrier::Named("eth2".into()))], &o);
    assert_eq!(
        only(&p).steps,
        vec![Step::ChangeVxlan {
            name: "vx0".into(),
            change: VxlanChange {
                vni: 100,
                carrier: Some("eth2".into()),
                local: Some(ip("198.18.1.1")),
                ..VxlanChange::default()
            }
        }]
    );
}

#[test]
fn removing_the_remote_clears_it_in_its_family() {
    let mut l = vx0_ok();
    l.kind = ovx(|v| v.remote = Some(ip("198.18.0.2")));
    let mut o = node(vec![l]);
    o.fdb.insert(9, [ip("198.18.0.2")].into());
    let p = plan(&[vxlan("vx0", |c| c.peers = vec![ip("198.18.0.2")])], &o);
    // The default entry of the old remote goes with it, so the peer is re-added.
    assert_eq!(
        only(&p).steps,
        vec![
            Step::ChangeVxlan {
                name: "vx0".into(),
                change: VxlanChange {
                    vni: 100,
                    remote: Some(RemoteChange::Clear(Family::V4)),
                    ..VxlanChange::default()
                }
            },
            Step::AddPeer {
                name: "vx0".into(),
                dst: ip("198.18.0.2")
            }
        ]
    );
}

#[test]
fn peers_are_diffed_against_the_all_zero_entries() {
    let mut o = node(vec![vx0_ok()]);
    o.fdb.insert(9, [ip("198.18.0.2"), ip("198.18.0.3")].into());
    let d = vxlan("vx0", |c| c.peers = vec![ip("198.18.0.3"), ip("198.18.0.4")]);
    let p = plan(&[d], &o);
    assert_eq!(
        only(&p).steps,
        vec![
            Step::AddPeer {
                name: "vx0".into(),
                dst: ip("198.18.0.4")
            },
            Step::DelPeer {
                name: "vx0".into(),
                dst: ip("198.18.0.2")
            },
        ]
    );
}

#[test]
fn the_remotes_own_default_entry_is_not_a_stray_peer() {
    let mut l = vx0_ok();
    l.kind = ovx(|v| v.remote = Some(ip("239.1.1.1")));
    let mut o = node(vec![l]);
    o.fdb.insert(9, [ip("239.1.1.1"), ip("198.18.0.3")].into());
    let d = vxlan("vx0", |c| {
        c.group = Some(ip("239.1.1.1"));
        c.peers = vec![ip("198.18.0.3")];
    });
    assert!(plan(&[d], &o).is_empty());
}

#[test]
fn the_groups_default_entry_deleted_out_of_band_is_restored_through_the_carrier() {
    let mut l = vx0_ok();
    l.kind = ovx(|v| v.remote = Some(ip("239.1.1.1")));
    let mut o = node(vec![l]);
    o.fdb.insert(9, [ip("198.18.0.3")].into());
    let d = vxlan("vx0", |c| {
        c.group = Some(ip("239.1.1.1"));
        c.peers = vec![ip("198.18.0.3")];
    });
    assert_eq!(
        only(&plan(&[d], &o)).steps,
        [Step::RestoreDefault {
            name: "vx0".into(),
            dst: ip("239.1.1.1"),
            carrier: "eth1".into(),
        }]
    );
}

#[test]
fn master_is_a_bridge_of_the_same_plan() {
    let desired = [
        vxlan("vx0", |c| c.master = Some("br0".into())),
        bridge("br0", Some(1450)),
    ];
    let p = plan(&desired, &node(vec![]));
    assert_eq!(p.links[0].problem, None);
    let Step::Set { attrs, .. } = &p.links[0].steps[1] else {
        panic!()
    };
    assert_eq!(attrs.master, Some(MasterChange::Attach("br0".into())));
    let order: Vec<String> = p.steps().iter().map(|s| s.to_string()).collect();
    let pos = |prefix: &str| order.iter().position(|s| s.starts_with(prefix)).unwrap();
    assert!(pos("create bridge br0") < pos("create vxlan vx0"), "{order:?}");
    assert!(pos("set br0") < pos("set vx0"), "{order:?}");
}

#[test]
fn enslaved_already_is_a_no_op_and_a_wrong_master_is_fixed() {
    let br = owned(olink(5, "br0", ObservedKind::Bridge { stp: false }));
    let mut vx = vx0_ok();
    vx.master = Some(5);
    let desired = [
        bridge("br0", None),
        vxlan("vx0", |c| c.master = Some("br0".into())),
    ];
    assert!(plan(&desired, &node(vec![br.clone(), vx.clone()])).is_empty());

    vx.master = Some(77);
    let p = plan(&desired, &node(vec![br.clone(), vx.clone()]));
    assert_eq!(
        p.links[1].steps,
        vec![set(
            "vx0",
            SetAttrs {
                master: Some(MasterChange::Attach("br0".into())),
                ..SetAttrs::default()
            }
        )]
    );

    let p = plan(&[vxlan("vx0", |_| {})], &node(vec![vx]));
    assert_eq!(
        only(&p).steps,
        vec![set(
            "vx0",
            SetAttrs {
                master: Some(MasterChange::Detach),
                ..SetAttrs::default()
            }
        )]
    );
}

#[test]
fn missing_or_unusable_master() {
    let p = plan(&[vxlan("vx0", |c| c.master = Some("br9".into()))], &node(vec![]));
    let lp = only(&p);
    assert_eq!(reason_of(lp), Some(reason::MASTER_MISSING));
    assert!(matches!(lp.steps[0], Step::CreateVxlan { .. }), "still built");

    let foreign = olink(5, "br0", ObservedKind::Bridge { stp: false });
    let desired = [
        bridge("br0", None),
        vxlan("vx0", |c| c.master = Some("br0".into())),
    ];
    let p = plan(&desired, &node(vec![foreign]));
    assert_eq!(reason_of(&p.links[0]), Some(reason::NAME_CONFLICT));
    assert_eq!(reason_of(&p.links[1]), Some(reason::MASTER_MISSING));

    let not_bridge = olink(5, "br0", ObservedKind::Other("veth".into()));
    let p = plan(
        &[vxlan("vx0", |c| c.master = Some("br0".into()))],
        &node(vec![not_bridge]),
    );
    assert!(
        only(&p)
            .problem
            .as_ref()
            .unwrap()
            .message
            .contains("not a bridge")
    );
}

#[test]
fn an_interface_with_a_global_address_is_not_enslaved_unless_allowed() {
    let mut port = unmanaged("eth1", Some("br0"));
    port.kind = DesiredKind::Unmanaged {
        master: Some("br0".into()),
        allow_uplink: false,
        release: false,
    };
    let p = plan(&[bridge("br0", None), port], &node(vec![]));
    let lp = p.links.iter().find(|l| l.name == "eth1").unwrap();
    assert!(lp.steps.is_empty(), "{:?}", lp.steps);
    assert_eq!(lp.problem.as_ref().unwrap().reason, reason::UPLINK_REFUSED);
}

#[test]
fn unmanaged_is_only_ever_enslaved() {
    let p = plan(&[unmanaged("eth9", None)], &node(vec![]));
    assert_eq!(reason_of(only(&p)), Some(reason::NOT_FOUND));
    assert!(p.is_empty());

    let br = owned(olink(5, "br0", ObservedKind::Bridge { stp: false }));
    let mut eth1 = olink(2, "eth1", ObservedKind::Other("veth".into()));
    eth1.admin_up = false;
    eth1.mtu = 9000;
    let mut o = node(vec![br]);
    o.links.insert("eth1".into(), eth1);
    let p = plan(&[unmanaged("eth1", Some("br0"))], &o);
    assert_eq!(
        only(&p).steps,
        vec![set(
            "eth1",
            SetAttrs {
                master: Some(MasterChange::Attach("br0".into())),
                ..SetAttrs::default()
            }
        )]
    );
    assert_eq!(reason_of(only(&p)), Some(reason::ADMIN_DOWN));

    let p = plan(&[unmanaged("eth1", None)], &node(vec![]));
    assert!(p.is_empty());
    assert_eq!(only(&p).problem, None);
}

#[test]
fn unmanaged_ports_come_after_their_bridge() {
    let desired = [unmanaged("eth1", Some("br0")), bridge("br0", None)];
    let p = plan(&desired, &node(vec![]));
    let order: Vec<String> = p.steps().iter().map(|s| s.name().to_string()).collect();
    assert_eq!(order, vec!["br0", "br0", "eth1"]);
}

#[test]
fn validation_table() {
    let bad: Vec<(DesiredLink, &str)> = vec![
        (bridge("", None), "invalid"),
        (bridge("a-very-long-name0", None), "invalid"),
        (bridge("br/0", None), "invalid"),
        (bridge("br 0", None), "invalid"),
        (bridge("br0", Some(67)), "MTU"),
        (vxlan("vx0", |c| c.vni = 0), "VNI"),
        (vxlan("vx0", |c| c.vni = 1 << 24), "VNI"),
        (vxlan("vx0", |c| c.port = 0), "port"),
        (
            vxlan("vx0", |c| c.source_ports = Some((2000, 1000))),
            "source port",
        ),
        (vxlan("vx0", |c| c.group = Some(ip("198.18.0.2"))), "multicast"),
        (vxlan("vx0", |c| c.remote = Some(ip("239.1.1.1"))), "unicast"),
        (vxlan("vx0", |c| c.peers = vec![ip("0.0.0.0")]), "unicast"),
        (
            vxlan("vx0", |c| {
                c.group = Some(ip("239.1.1.1"));
                c.remote = Some(ip("198.18.0.2"));
            }),
            "not both",
        ),
        (
            vxlan("vx0", |c| c.peers = vec![ip("198.18.0.2"), ip("2001:db8::2")]),
            "families",
        ),
        (
            vxlan("vx0", |c| {
                c.remote = Some(ip("2001:db8::2"));
                c.carrier = Carrier::RouteTo(ip("198.18.0.2"));
            }),
            "families",
        ),
        (
            vxlan("vx0", |c| c.carrier = Carrier::Named("vx0".into())),
            "own carrier",
        ),
        (vxlan("vx0", |c| c.master = Some("vx0".into())), "own master"),
        (unmanaged("eth1", Some("eth1")), "own master"),
    ];
    for (d, needle) in bad {
        let err = validate(&d).expect_err(&format!("{d:?} should be invalid"));
        assert!(err.contains(needle), "{err} lacks {needle}");
    }
    assert_eq!(validate(&bridge("br-gw.100", Some(9000))), Ok(()));
    assert_eq!(validate(&vxlan("vx0", |c| c.group = Some(ip("ff05::1")))), Ok(()));
}

#[test]
fn a_name_desired_twice_applies_the_first_only() {
    let p = plan(&[bridge("br0", None), bridge("br0", Some(1400))], &node(vec![]));
    assert_eq!(p.links[0].problem, None);
    assert_eq!(reason_of(&p.links[1]), Some(reason::INVALID_SPEC));
    assert!(p.links[1].steps.is_empty());
}

#[test]
fn one_bad_link_does_not_block_the_others() {
    let desired = [
        vxlan("vx0", |c| c.carrier = Carrier::Named("eth9".into())),
        bridge("br0", None),
    ];
    let foreign = olink(5, "br1", ObservedKind::Bridge { stp: false });
    let mut more = desired.to_vec();
    more.push(bridge("br1", None));
    let p = plan(&more, &node(vec![foreign]));
    assert_eq!(reason_of(&p.links[0]), Some(reason::CARRIER_MISSING));
    assert_eq!(p.links[1].problem, None);
    assert_eq!(p.links[1].steps.len(), 2);
    assert_eq!(reason_of(&p.links[2]), Some(reason::NAME_CONFLICT));
}

#[test]
fn assess_reports_ready_pending_problems_and_errors() {
    let desired = [
        bridge("br0", None),
        bridge("br1", None),
        bridge("br2", None),
        bridge("br3", None),
    ];
    let o = node(vec![
        owned(olink(5, "br0", ObservedKind::Bridge { stp: false })),
        olink(6, "br2", ObservedKind::Bridge { stp: false }),
    ]);
    let p = plan(&desired, &o);
    let errors: HashMap<String, Problem> = [(
        "br3".to_string(),
        Problem::new(reason::NETLINK_ERROR, "cannot create bridge br3: boom"),
    )]
    .into();
    let s = assess(&desired, &p, &o, &errors);
    assert!(s[0].ready);
    assert_eq!(s[0].reason, reason::READY);
    assert_eq!(s[0].mtu, Some(1500));
    assert_eq!((s[1].ready, s[1].reason.as_str()), (false, reason::PENDING));
    assert!(s[1].message.contains("create bridge br1"), "{}", s[1].message);
    assert_eq!(s[2].reason, reason::NAME_CONFLICT);
    assert_eq!(s[3].reason, reason::NETLINK_ERROR);
    assert!(s[3].message.contains("br3"));
}

#[test]
fn a_released_interface_leaves_its_bridge_and_an_unreleased_one_stays() {
    let mut n = node(vec![]);
    n.links.get_mut("eth1").unwrap().master = Some(7);
    let mut port = unmanaged("eth1", None);
    let p = plan(std::slice::from_ref(&port), &n);
    let lp = p.links.iter().find(|l| l.name == "eth1").unwrap();
    assert!(
        lp.steps.is_empty(),
        "without release nothing is touched: {:?}",
        lp.steps
    );
    port.kind = DesiredKind::Unmanaged {
        master: None,
        allow_uplink: false,
        release: true,
    };
    let p = plan(&[port], &n);
    let lp = p.links.iter().find(|l| l.name == "eth1").unwrap();
    assert!(
        matches!(
            lp.steps.as_slice(),
            [Step::Set {
                attrs: SetAttrs {
                    master: Some(MasterChange::Detach),
                    ..
                },
                ..
            }]
        ),
        "{:?}",
        lp.steps
    );
}
