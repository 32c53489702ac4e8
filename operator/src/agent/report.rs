//! What the agent reports: the NodeNetworkState status and the bridges' readiness
//! for nno-cni-shim, both from the wanted interfaces and the engine's states.

use std::collections::BTreeMap;

use super::desired::Want;
use crate::api::common::{condition, set_condition, status};
use crate::api::node_state::{InterfaceState, NodeNetworkStateStatus, OwnerKind};
use crate::api::{InterfaceName, LinkKind, condition as cond};
use crate::model::vtep;
use crate::netlink::LinkState;
use crate::readiness::{BridgeOwner, BridgeReadiness};

/// Reasons of the agent's own making.
pub mod reason {
    /// The engine has not reported the interface yet.
    pub const PENDING: &str = "Pending";
    pub const ALL_READY: &str = "InterfacesReady";
    pub const NOT_READY: &str = "InterfacesNotReady";
    pub const NOTHING_WANTED: &str = "NoInterfaces";
}

fn interface_state(want: &Want, engine: Option<&LinkState>) -> InterfaceState {
    let (mut ready, mut reason, mut message) = match engine {
        Some(s) => (s.ready, s.reason.clone(), s.message.clone()),
        None => (
            false,
            reason::PENDING.to_string(),
            format!("interface {} not applied yet", want.name),
        ),
    };
    if let Some((r, m)) = &want.hold {
        ready = false;
        reason = r.clone();
        message = m.clone();
    }
    for note in &want.notes {
        if !message.is_empty() {
            message.push_str("; ");
        }
        message.push_str(note);
    }
    // Only values the schema accepts: one out of bounds would make the API server
    // refuse the node's whole report.
    let mtu_ok = |m: &u32| vtep::MTU.contains(m);
    InterfaceState {
        // The schema and the engine both validate names; a bad one cannot get here.
        name: InterfaceName::new(want.name.clone())
            .unwrap_or_else(|_| InterfaceName::new("invalid").unwrap()),
        owner: want.owner.clone(),
        kind: want.kind,
        ready,
        reason,
        message,
        mtu: engine.and_then(|s| s.mtu).filter(mtu_ok),
        carrier: engine
            .and_then(|s| s.carrier.clone())
            .and_then(|c| InterfaceName::new(c).ok()),
        carrier_mtu: engine.and_then(|s| s.carrier_mtu).filter(mtu_ok),
        vtep_address: engine
            .and_then(|s| s.local_address)
            .filter(vtep::unicast)
            .map(|a| a.to_string()),
        observed_generation: want.generation,
    }
}

/// The node's report; `old` keeps the condition's transition time.
pub fn node_status(
    wants: &[Want],
    engine: &[LinkState],
    old: Option<&NodeNetworkStateStatus>,
) -> NodeNetworkStateStatus {
    let by_name: BTreeMap<&str, &LinkState> = engine.iter().map(|s| (s.name.as_str(), s)).collect();
    // One entry per interface name, always (the list is keyed by name: a duplicate
    // makes the API server refuse the whole status). Claims keep names unique; should
    // two wants ever share one, the first is reported.
    let mut seen = std::collections::HashSet::new();
    let interfaces: Vec<InterfaceState> = wants
        .iter()
        .filter(|w| seen.insert(w.name.as_str()))
        .map(|w| interface_state(w, by_name.get(w.name.as_str()).copied()))
        .collect();
    let ready = interfaces.iter().filter(|i| i.ready).count();
    let total = interfaces.len();
    let (s, r, m) = if total == 0 {
        (
            status::TRUE,
            reason::NOTHING_WANTED,
            "no Network or Link selects this node".to_string(),
        )
    } else if ready == total {
        (
            status::TRUE,
            reason::ALL_READY,
            format!("all {total} interfaces are Ready"),
        )
    } else {
        let first: Vec<String> = interfaces
            .iter()
            .filter(|i| !i.ready)
            .take(3)
            .map(|i| format!("{} ({})", i.name, i.reason))
            .collect();
        (
            status::FALSE,
            reason::NOT_READY,
            format!(
                "{} of {total} interfaces are not Ready: {}",
                total - ready,
                first.join(", ")
            ),
        )
    };
    let mut conditions = old.map(|o| o.conditions.clone()).unwrap_or_default();
    set_condition(&mut conditions, condition(cond::READY, s, r, m, None));
    NodeNetworkStateStatus {
        conditions,
        interfaces,
        // Filled in by the agent from what it applied and probed.
        generations: Vec::new(),
        ready_interfaces: Some(format!("{ready}/{total}")),
    }
}

/// Readiness of every bridge the node manages, for nno-cni-shim: a Network's bridge
/// is Ready when its bridge and its VXLAN both are (a pod on a bridge without its
/// VXLAN would reach no other node); a Link bridge when the bridge is.
pub fn bridges(status: &NodeNetworkStateStatus, wants: &[Want]) -> Vec<(String, BridgeReadiness)> {
    let owner_of = |bridge: &InterfaceState| BridgeOwner {
        kind: bridge.owner.kind_str().to_string(),
        name: bridge.owner.name.clone(),
        uid: wants
            .iter()
            .find(|w| w.owner == bridge.owner)
            .map(|w| w.owner_uid.clone())
            .unwrap_or_default(),
    };
    status
        .interfaces
        .iter()
        .filter(|i| i.kind == LinkKind::Bridge)
        .map(|bridge| {
            let siblings = status.interfaces.iter().filter(|i| {
                i.owner == bridge.owner && i.owner.kind == OwnerKind::Network && i.kind == LinkKind::Vxlan
            });
            let blocker = std::iter::once(bridge).chain(siblings).find(|i| !i.ready);
            let readiness = match blocker {
                None => BridgeReadiness::ready(format!("bridge {} is Ready", bridge.name)),
                Some(i) => {
                    let message = if i.message.is_empty() {
                        format!("interface {} is not Ready", i.name)
                    } else {
                        i.message.clone()
                    };
                    BridgeReadiness::not_ready(i.reason.clone(), format!("{}: {message}", i.name))
                }
            };
            (bridge.name.to_string(), readiness.owned_by(owner_of(bridge)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::find_condition;
    use crate::api::node_state::Owner;

    fn want(name: &str, kind: LinkKind, owner: &str, hold: Option<(&str, &str)>) -> Want {
        Want {
            name: name.into(),
            owner: Owner {
                kind: OwnerKind::Network,
                name: owner.into(),
            },
            owner_uid: format!("uid-{owner}"),
            kind,
            generation: Some(4),
            link: None,
            hold: hold.map(|(r, m)| (r.into(), m.into())),
            notes: Vec::new(),
        }
    }

    fn engine(name: &str, ready: bool, reason: &str) -> LinkState {
        LinkState {
            name: name.into(),
            ready,
            reason: reason.into(),
            message: if ready {
                String::new()
            } else {
                format!("{name} is broken")
            },
            mtu: Some(1450),
            carrier: Some("eth0".into()),
            carrier_mtu: Some(1500),
            local_address: Some("198.18.0.10".parse().unwrap()),
        }
    }

    #[test]
    fn report_carries_engine_facts_and_holds() {
        let wants = [
            want("br-gw", LinkKind::Bridge, "gw", None),
            want("vxlan1", LinkKind::Vxlan, "gw", None),
            want(
                "vxlan2",
                LinkKind::Vxlan,
                "gw2",
                Some(("NodeAddressMissing", "no IPv6 InternalIP")),
            ),
            want("br-new", LinkKind::Bridge, "new", None),
        ];
        let states = [
            engine("br-gw", true, "Ready"),
            engine("vxlan1", true, "Ready"),
            engine("vxlan2", true, "Ready"),
        ];
        let status = node_status(&wants, &states, None);
        let vx = status.interface("vxlan1").unwrap();
        assert!(vx.ready);
        assert_eq!(
            (vx.carrier_mtu, vx.vtep_address.as_deref(), vx.observed_generation),
            (Some(1500), Some("198.18.0.10"), Some(4))
        );
        let held = status.interface("vxlan2").unwrap();
        assert_eq!((held.ready, held.reason.as_str()), (false, "NodeAddressMissing"));
        assert_eq!(status.interface("br-new").unwrap().reason, "Pending");
        assert_eq!(status.ready_interfaces.as_deref(), Some("2/4"));
        let ready = find_condition(&status.conditions, "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "InterfacesNotReady")
        );
        assert!(
            ready.message.contains("vxlan2 (NodeAddressMissing)"),
            "{}",
            ready.message
        );

        let empty = node_status(&[], &[], None);
        assert_eq!(find_condition(&empty.conditions, "Ready").unwrap().status, "True");
        assert_eq!(empty.ready_interfaces.as_deref(), Some("0/0"));
    }

    #[test]
    fn one_entry_per_interface_name() {
        let wants = [
            want("eth0", LinkKind::Unmanaged, "eth0", None),
            want("eth0", LinkKind::Bridge, "gw", None),
        ];
        let status = node_status(&wants, &[engine("eth0", true, "Ready")], None);
        assert_eq!(status.interfaces.len(), 1);
        assert_eq!(status.interfaces[0].owner.name, "eth0", "the first want");
    }

    #[test]
    fn a_network_bridge_is_ready_only_with_its_vxlan() {
        let wants = [
            want("br-gw", LinkKind::Bridge, "gw", None),
            want("vxlan1", LinkKind::Vxlan, "gw", None),
        ];
        let up = node_status(
            &wants,
            &[engine("br-gw", true, "Ready"), engine("vxlan1", true, "Ready")],
            None,
        );
        assert_eq!(
            bridges(&up, &wants),
            vec![(
                "br-gw".to_string(),
                BridgeReadiness::ready("bridge br-gw is Ready").owned_by(BridgeOwner {
                    kind: "Network".into(),
                    name: "gw".into(),
                    uid: "uid-gw".into()
                })
            )]
        );
        let carrierless = node_status(
            &wants,
            &[
                engine("br-gw", true, "Ready"),
                engine("vxlan1", false, "CarrierMissing"),
            ],
            None,
        );
        let (name, r) = &bridges(&carrierless, &wants)[0];
        assert_eq!(name, "br-gw");
        assert!(!r.ready);
        assert_eq!(r.reason, "CarrierMissing");
        assert!(r.message.starts_with("vxlan1: "), "{}", r.message);
    }
}
