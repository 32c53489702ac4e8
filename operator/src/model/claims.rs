//! Claims on node resources the schema cannot police: two objects that want the same
//! interface name, or the same VXLAN VNI, on one node. The older object keeps its
//! claim; the newer one is in conflict and nothing on the node changes for it.
//!
//! The controller (to set the `Conflict` condition) and every agent (to leave the
//! loser's links alone) evaluate this with the same function over the same input:
//! every live object's claim over every node it selects. So all agree, also where
//! an object lost on one node and a newer one it overlaps elsewhere therefore wins.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::node_state::{Owner, OwnerKind};
use crate::api::{Link, Network};

/// What one object claims exclusively on every node it selects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub owner: Owner,
    /// Creation time in seconds since the epoch; older wins.
    pub created: i64,
    /// Interface names it creates or, for an unmanaged Link, manages: one object per
    /// interface name on a node.
    pub interfaces: Vec<String>,
    /// VXLAN network identifiers it uses.
    pub vnis: Vec<u32>,
}

/// Why an object lost a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The object that keeps the claim.
    pub winner: Owner,
    /// `interface br-gw` or `VNI 100`.
    pub what: String,
    /// A node where both apply.
    pub node: String,
}

impl Conflict {
    pub fn message(&self) -> String {
        format!(
            "{} is already claimed by the older {} {} on node {}; nothing is changed on any node for this object until that is resolved",
            self.what,
            self.winner.kind_str(),
            self.winner.name,
            self.node
        )
    }
}

impl Owner {
    pub fn kind_str(&self) -> &'static str {
        match self.kind {
            OwnerKind::Network => "Network",
            OwnerKind::Link => "Link",
        }
    }
}

fn created(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> i64 {
    meta.creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(i64::MAX)
}

/// The claims of a Network: its bridge, its VXLAN interface and VNI.
pub fn network_claim(network: &Network) -> Claim {
    let spec = &network.spec;
    let mut interfaces = vec![spec.bridge.name.to_string()];
    let mut vnis = Vec::new();
    if let Some(vxlan) = &spec.vxlan {
        interfaces.push(vxlan.interface_name().to_string());
        vnis.push(vxlan.vni);
    }
    Claim {
        owner: Owner {
            kind: OwnerKind::Network,
            name: kube::ResourceExt::name_any(network),
        },
        created: created(&network.metadata),
        interfaces,
        vnis,
    }
}

/// The claims of a Link: its interface (an unmanaged one too: two objects wanting
/// one name on a node would both report it) and VNI.
pub fn link_claim(link: &Link) -> Claim {
    let spec = &link.spec;
    let interfaces = vec![spec.interface_name.to_string()];
    Claim {
        owner: Owner {
            kind: OwnerKind::Link,
            name: kube::ResourceExt::name_any(link),
        },
        created: created(&link.metadata),
        interfaces,
        vnis: spec.vxlan.iter().map(|v| v.vnid).collect(),
    }
}

/// The objects that lost a claim to `winner` (from [`conflicts`]), with what.
pub fn contested(losers: &BTreeMap<Owner, Conflict>, winner: &Owner) -> Vec<(Owner, Conflict)> {
    losers
        .iter()
        .filter(|(_, c)| &c.winner == winner)
        .map(|(o, c)| (o.clone(), c.clone()))
        .collect()
}

/// What a winner's status says about the objects waiting for its claims.
pub fn contested_message(contested: &[(Owner, Conflict)]) -> String {
    let waiting: Vec<String> = contested
        .iter()
        .map(|(loser, c)| {
            format!(
                "{} is also wanted by the newer {} {} (on node {}), which waits",
                c.what,
                loser.kind_str(),
                loser.name,
                c.node
            )
        })
        .collect();
    format!("this object keeps its claims: {}", waiting.join("; "))
}

/// The losers among `claims`, given which nodes each claim applies to. Ties in age
/// are broken by kind (Networks first) and then name, so every caller agrees.
pub fn conflicts(claims: &[(Claim, BTreeSet<String>)]) -> BTreeMap<Owner, Conflict> {
    let mut order: Vec<&(Claim, BTreeSet<String>)> = claims.iter().collect();
    order.sort_by(|(a, _), (b, _)| (a.created, &a.owner).cmp(&(b.created, &b.owner)));

    // (node, resource) -> holder
    let mut held: BTreeMap<(String, String), Owner> = BTreeMap::new();
    let mut losers = BTreeMap::new();
    for (claim, nodes) in order {
        let resources: Vec<String> = claim
            .interfaces
            .iter()
            .map(|i| format!("interface {i}"))
            .chain(claim.vnis.iter().map(|v| format!("VNI {v}")))
            .collect();
        let lost = nodes.iter().find_map(|node| {
            resources.iter().find_map(|r| {
                held.get(&(node.clone(), r.clone())).map(|winner| Conflict {
                    winner: winner.clone(),
                    what: r.clone(),
                    node: node.clone(),
                })
            })
        });
        match lost {
            Some(conflict) => {
                losers.insert(claim.owner.clone(), conflict);
            }
            None => {
                for node in nodes {
                    for r in &resources {
                        held.insert((node.clone(), r.clone()), claim.owner.clone());
                    }
                }
            }
        }
    }
    losers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(kind: OwnerKind, name: &str, created: i64, interfaces: &[&str], vnis: &[u32]) -> Claim {
        Claim {
            owner: Owner {
                kind,
                name: name.into(),
            },
            created,
            interfaces: interfaces.iter().map(|s| s.to_string()).collect(),
            vnis: vnis.to_vec(),
        }
    }

    fn nodes(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn older_keeps_the_bridge_name() {
        let a = claim(OwnerKind::Network, "a", 10, &["br0", "vxlan1"], &[1]);
        let b = claim(OwnerKind::Network, "b", 20, &["br0", "vxlan2"], &[2]);
        let losers = conflicts(&[(b.clone(), nodes(&["n1"])), (a.clone(), nodes(&["n1", "n2"]))]);
        assert_eq!(losers.len(), 1);
        let lost = &losers[&b.owner];
        assert_eq!(lost.winner, a.owner);
        assert_eq!(lost.what, "interface br0");
        assert_eq!(lost.node, "n1");
        assert!(
            lost.message().contains("older Network a on node n1"),
            "{}",
            lost.message()
        );
    }

    #[test]
    fn a_network_bridge_named_like_an_unmanaged_link_conflicts_and_both_know() {
        let link = claim(OwnerKind::Link, "eth0", 5, &["eth0"], &[]);
        let net = claim(OwnerKind::Network, "gw", 10, &["eth0", "vxlan1"], &[1]);
        let losers = conflicts(&[(net.clone(), nodes(&["n1"])), (link.clone(), nodes(&["n1"]))]);
        assert_eq!(losers[&net.owner].winner, link.owner);
        assert_eq!(losers[&net.owner].what, "interface eth0");
        let waiting = contested(&losers, &link.owner);
        assert_eq!(waiting.len(), 1);
        assert_eq!(
            contested_message(&waiting),
            "this object keeps its claims: interface eth0 is also wanted by the newer Network gw (on node n1), which waits"
        );
        assert!(contested(&losers, &net.owner).is_empty());
    }

    #[test]
    fn same_vni_conflicts_even_with_other_names() {
        let a = claim(OwnerKind::Network, "a", 10, &["br-a", "vx-a"], &[7]);
        let b = claim(OwnerKind::Link, "b", 5, &["vx-b"], &[7]);
        let losers = conflicts(&[(a.clone(), nodes(&["n1"])), (b.clone(), nodes(&["n1"]))]);
        assert_eq!(losers[&a.owner].what, "VNI 7");
        assert_eq!(losers[&a.owner].winner, b.owner, "the Link is older");
    }

    #[test]
    fn disjoint_nodes_do_not_conflict() {
        let a = claim(OwnerKind::Network, "a", 10, &["br0"], &[1]);
        let b = claim(OwnerKind::Network, "b", 20, &["br0"], &[1]);
        assert!(conflicts(&[(a, nodes(&["n1"])), (b, nodes(&["n2"]))]).is_empty());
    }

    #[test]
    fn a_loser_claims_nothing_so_a_third_can_win() {
        // b loses br0 to a; c (newer than b) wants b's other bridge, which b never got.
        let a = claim(OwnerKind::Network, "a", 10, &["br0"], &[]);
        let b = claim(OwnerKind::Network, "b", 20, &["br0", "br1"], &[]);
        let c = claim(OwnerKind::Network, "c", 30, &["br1"], &[]);
        let all = [(a, nodes(&["n"])), (b.clone(), nodes(&["n"])), (c, nodes(&["n"]))];
        let losers = conflicts(&all);
        assert_eq!(losers.keys().collect::<Vec<_>>(), vec![&b.owner]);
    }

    #[test]
    fn same_age_breaks_ties_by_kind_then_name() {
        let link = claim(OwnerKind::Link, "a", 10, &["br0"], &[]);
        let net_z = claim(OwnerKind::Network, "z", 10, &["br0"], &[]);
        let net_y = claim(OwnerKind::Network, "y", 10, &["br0"], &[]);
        let losers = conflicts(&[
            (link.clone(), nodes(&["n"])),
            (net_z.clone(), nodes(&["n"])),
            (net_y.clone(), nodes(&["n"])),
        ]);
        assert!(!losers.contains_key(&net_y.owner));
        assert_eq!(losers[&net_z.owner].winner, net_y.owner);
        assert_eq!(losers[&link.owner].winner, net_y.owner);
    }

    #[test]
    fn claims_from_objects() {
        let net: Network = serde_json::from_value(serde_json::json!({
            "apiVersion": "nno.dev/v1alpha1", "kind": "Network",
            "metadata": {"name": "gw", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"bridge": {"name": "br-gw"}, "vxlan": {"vni": 42, "group": "239.1.1.1"},
                     "ipam": {"range": "192.168.50.0/24"}, "attachments": {"namespaces": ["default"]}}
        }))
        .unwrap();
        let c = network_claim(&net);
        assert_eq!(c.interfaces, ["br-gw", "vxlan42"]);
        assert_eq!(c.vnis, [42]);
        assert_eq!(c.created, 1767225600);

        let unmanaged: Link = serde_json::from_value(serde_json::json!({
            "apiVersion": "nno.dev/v1alpha1", "kind": "Link", "metadata": {"name": "eth0"},
            "spec": {"interfaceName": "eth0", "unmanaged": {}}
        }))
        .unwrap();
        let c = link_claim(&unmanaged);
        assert_eq!(c.interfaces, ["eth0"], "an unmanaged interface is claimed too");
        assert!(c.vnis.is_empty());
        assert_eq!(c.created, i64::MAX, "not yet created sorts last");
    }
}
