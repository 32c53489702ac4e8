//! Link references (`device`, `master`) between Link objects on one node, and the
//! rules that decide how a dependency's state affects its dependents:
//!
//! 1. A required reference to a Link that does not apply to this node (missing,
//!    not selecting the node, being deleted or in conflict): the dependent is not
//!    Ready (`DependencyMissing`) and is kept down.
//! 2. An optional reference to such a Link is ignored: the dependent is built
//!    without it (no master; the carrier found by route lookup).
//! 3. A required reference to a Link that is not Ready: the dependent is not Ready
//!    (`DependencyNotReady`) and, with `setDownOnDependencyUpdate` (the default),
//!    kept down until the dependency is Ready again.
//! 4. Without `setDownOnDependencyUpdate` it stays up meanwhile, still not Ready.
//! 5. An optional reference to a Link that is not Ready does not hold it back.
//! 6. `master` must name a bridge Link (`InvalidReference` otherwise, required or
//!    not: it is a mistake, not an absence).
//! 7. A Link that is not Ready only because of its own dependencies passes that on:
//!    readiness is transitive along the chain.
//! 8. A reference cycle makes every Link on it not Ready (`DependencyCycle`), down.
//!
//! Readiness of a dependency comes from the engine's previous pass, so a chain
//! comes up one hop per pass.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::LinkKind;
use crate::api::link::{Link, LinkReference};

/// Reasons the agent itself gives.
pub mod reason {
    pub const DEPENDENCY_MISSING: &str = "DependencyMissing";
    pub const DEPENDENCY_NOT_READY: &str = "DependencyNotReady";
    pub const DEPENDENCY_CYCLE: &str = "DependencyCycle";
    pub const INVALID_REFERENCE: &str = "InvalidReference";
}

/// What the dependency rules decided for one Link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// Interface name of the master bridge to enslave to, if any.
    pub master: Option<String>,
    /// Interface name of the carrier, if a device reference resolved.
    pub device: Option<String>,
    /// Bring the interface up (false: keep it down).
    pub up: bool,
    /// Why the Link is not Ready regardless of its own state.
    pub hold: Option<(String, String)>,
}

/// Resolves the references of `links` (the Links that apply to this node, by object
/// name). `ready(interface)` tells whether the engine reported the interface Ready
/// in its last pass.
pub fn resolve(links: &BTreeMap<String, &Link>, ready: &dyn Fn(&str) -> bool) -> BTreeMap<String, Resolved> {
    let mut out = BTreeMap::new();
    let mut visiting = BTreeSet::new();
    for name in links.keys() {
        visit(name, links, ready, &mut out, &mut visiting);
    }
    out
}

fn visit(
    name: &str,
    links: &BTreeMap<String, &Link>,
    ready: &dyn Fn(&str) -> bool,
    out: &mut BTreeMap<String, Resolved>,
    visiting: &mut BTreeSet<String>,
) {
    if out.contains_key(name) {
        return;
    }
    let link = links[name];
    if !visiting.insert(name.to_string()) {
        return; // a cycle; handled by the caller that finds it
    }
    let mut resolved = Resolved {
        master: None,
        device: None,
        up: true,
        hold: None,
    };
    let hold = |r: &mut Resolved, reason: &str, message: String, down: bool| {
        if r.hold.is_none() {
            r.hold = Some((reason.to_string(), message));
        }
        if down {
            r.up = false;
        }
    };
    for (how, reference) in link.spec.references() {
        let Some(target) = links.get(&reference.name) else {
            if !reference.optional {
                let message = format!(
                    "{how} refers to Link {}, which does not exist, does not select this node, or is not usable here",
                    reference.name
                );
                hold(&mut resolved, reason::DEPENDENCY_MISSING, message, true);
            }
            continue;
        };
        if how == "master" && target.spec.kind() != Some(LinkKind::Bridge) {
            let message = format!("master refers to Link {}, which is not a bridge", reference.name);
            hold(&mut resolved, reason::INVALID_REFERENCE, message, true);
            continue;
        }
        if visiting.contains(&reference.name) {
            let message = format!(
                "{how} reference to Link {} closes a cycle of references",
                reference.name
            );
            hold(&mut resolved, reason::DEPENDENCY_CYCLE, message, true);
            continue;
        }
        visit(&reference.name, links, ready, out, visiting);
        let target_iface = target.spec.interface_name.to_string();
        let target_ok = match out.get(&reference.name) {
            Some(t)
                if t.hold
                    .as_ref()
                    .is_some_and(|(r, _)| r == reason::DEPENDENCY_CYCLE) =>
            {
                let message = format!(
                    "{how} refers to Link {}, which is on a cycle of references",
                    reference.name
                );
                hold(&mut resolved, reason::DEPENDENCY_CYCLE, message, true);
                continue;
            }
            Some(t) => t.hold.is_none() && ready(&target_iface),
            None => ready(&target_iface),
        };
        match how {
            "master" => resolved.master = Some(target_iface.clone()),
            _ => resolved.device = Some(target_iface.clone()),
        }
        if !target_ok && !reference.optional {
            let message = format!(
                "{how} Link {} (interface {target_iface}) is not Ready",
                reference.name
            );
            hold(
                &mut resolved,
                reason::DEPENDENCY_NOT_READY,
                message,
                set_down(reference),
            );
        }
    }
    visiting.remove(name);
    out.insert(name.to_string(), resolved);
}

fn set_down(reference: &LinkReference) -> bool {
    reference.set_down_on_dependency_update
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn link(name: &str, spec: serde_json::Value) -> Link {
        serde_json::from_value(json!({
            "apiVersion": "nno.dev/v1alpha1", "kind": "Link", "metadata": {"name": name}, "spec": spec
        }))
        .unwrap()
    }

    fn bridge(name: &str) -> Link {
        link(name, json!({"interfaceName": format!("if-{name}"), "bridge": {}}))
    }

    fn vxlan(name: &str, master: serde_json::Value, device: Option<serde_json::Value>) -> Link {
        let mut vx = json!({"vnid": 1, "remoteIPAddress": "198.18.0.2", "master": master});
        if let Some(d) = device {
            vx["device"] = d;
        }
        link(name, json!({"interfaceName": format!("if-{name}"), "vxlan": vx}))
    }

    fn run(links: &[Link], ready: &[&str]) -> BTreeMap<String, Resolved> {
        let map: BTreeMap<String, &Link> = links
            .iter()
            .map(|l| (kube::ResourceExt::name_any(l), l))
            .collect();
        let ready: BTreeSet<String> = ready.iter().map(|s| s.to_string()).collect();
        resolve(&map, &|iface| ready.contains(iface))
    }

    fn hold(r: &Resolved) -> Option<&str> {
        r.hold.as_ref().map(|(reason, _)| reason.as_str())
    }

    #[test]
    fn rule_1_required_missing_keeps_it_down() {
        let out = run(&[vxlan("vx", json!({"name": "br"}), None)], &[]);
        let vx = &out["vx"];
        assert_eq!(hold(vx), Some(reason::DEPENDENCY_MISSING));
        assert!(!vx.up);
        assert_eq!(vx.master, None);
        assert!(vx.hold.as_ref().unwrap().1.contains("Link br"));
    }

    #[test]
    fn rule_2_optional_missing_is_ignored() {
        let out = run(&[vxlan("vx", json!({"name": "br", "optional": true}), None)], &[]);
        assert_eq!(
            out["vx"],
            Resolved {
                master: None,
                device: None,
                up: true,
                hold: None
            }
        );
    }

    #[test]
    fn rule_3_required_not_ready_sets_down_by_default() {
        let out = run(&[bridge("br"), vxlan("vx", json!({"name": "br"}), None)], &[]);
        let vx = &out["vx"];
        assert_eq!(hold(vx), Some(reason::DEPENDENCY_NOT_READY));
        assert!(!vx.up);
        assert_eq!(vx.master.as_deref(), Some("if-br"), "still enslaved, just down");
    }

    #[test]
    fn rule_4_without_set_down_it_stays_up() {
        let out = run(
            &[
                bridge("br"),
                vxlan(
                    "vx",
                    json!({"name": "br", "setDownOnDependencyUpdate": false}),
                    None,
                ),
            ],
            &[],
        );
        assert_eq!(hold(&out["vx"]), Some(reason::DEPENDENCY_NOT_READY));
        assert!(out["vx"].up);
    }

    #[test]
    fn rule_5_optional_not_ready_does_not_hold_back() {
        let out = run(
            &[
                bridge("br"),
                vxlan("vx", json!({"name": "br", "optional": true}), None),
            ],
            &[],
        );
        assert_eq!(
            out["vx"],
            Resolved {
                master: Some("if-br".into()),
                device: None,
                up: true,
                hold: None
            }
        );
    }

    #[test]
    fn ready_dependency_resolves_names() {
        let eth = link("eth", json!({"interfaceName": "eth0", "unmanaged": {}}));
        let out = run(
            &[
                bridge("br"),
                eth,
                vxlan("vx", json!({"name": "br"}), Some(json!({"name": "eth"}))),
            ],
            &["if-br", "eth0"],
        );
        assert_eq!(
            out["vx"],
            Resolved {
                master: Some("if-br".into()),
                device: Some("eth0".into()),
                up: true,
                hold: None
            }
        );
    }

    #[test]
    fn rule_6_master_must_be_a_bridge() {
        let eth = link("eth", json!({"interfaceName": "eth0", "unmanaged": {}}));
        let out = run(
            &[eth, vxlan("vx", json!({"name": "eth", "optional": true}), None)],
            &["eth0"],
        );
        assert_eq!(hold(&out["vx"]), Some(reason::INVALID_REFERENCE));
        assert!(!out["vx"].up);
    }

    #[test]
    fn rule_7_readiness_is_transitive() {
        // x's carrier is y, whose own carrier Link is missing: y's interface may be
        // up, but y is not Ready, and neither is x.
        let y = link(
            "y",
            json!({"interfaceName": "y0", "vxlan": {"vnid": 2, "remoteIPAddress": "198.18.0.2", "device": {"name": "gone"}}}),
        );
        let x = link(
            "x",
            json!({"interfaceName": "x0", "vxlan": {"vnid": 3, "remoteIPAddress": "198.18.0.2", "device": {"name": "y"}}}),
        );
        let out = run(&[x, y], &["x0", "y0"]);
        assert_eq!(hold(&out["y"]), Some(reason::DEPENDENCY_MISSING));
        assert_eq!(hold(&out["x"]), Some(reason::DEPENDENCY_NOT_READY));
        assert_eq!(out["x"].device.as_deref(), Some("y0"));
    }

    #[test]
    fn rule_8_cycles_hold_every_member() {
        let a = link(
            "a",
            json!({"interfaceName": "a0", "vxlan": {"vnid": 1, "remoteIPAddress": "198.18.0.2", "device": {"name": "b"}}}),
        );
        let b = link(
            "b",
            json!({"interfaceName": "b0", "vxlan": {"vnid": 2, "remoteIPAddress": "198.18.0.2", "device": {"name": "a"}}}),
        );
        let out = run(&[a, b], &["a0", "b0"]);
        assert_eq!(hold(&out["a"]), Some(reason::DEPENDENCY_CYCLE));
        assert_eq!(hold(&out["b"]), Some(reason::DEPENDENCY_CYCLE));
        assert!(!out["a"].up && !out["b"].up);
    }
}
