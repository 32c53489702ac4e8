//! What this node should have, from the Networks and Links that select it: pure, so
//! every rule is unit-tested without a cluster or a kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use kube::{Resource, ResourceExt};

use super::deps;
use crate::api::node_state::{NodeNetworkStateStatus, Owner, OwnerKind};
use crate::api::{IpFamily, Link, LinkKind, Network};
use crate::model::claims::{self, Claim};
use crate::model::mtu::vxlan_mtu;
use crate::netlink::{Carrier, DesiredKind, DesiredLink, LinkState, VxlanConfig};

/// Reasons the agent gives before the engine is involved.
pub mod reason {
    pub use super::deps::reason::*;
    /// `nodePeers` without `device`: the node has no InternalIP of the family.
    pub const NODE_ADDRESS_MISSING: &str = "NodeAddressMissing";
    /// A VXLAN Link with neither `device` nor a remote: nothing tells the carrier.
    pub const NO_CARRIER: &str = "NoCarrier";
}

/// The node the agent runs on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// InternalIP addresses from the Node's status.
    pub internal_ips: Vec<IpAddr>,
    /// Every InternalIP and ExternalIP address from the Node's status: the addresses
    /// other nodes accept as this node's VTEP.
    pub addresses: Vec<IpAddr>,
}

/// One interface the node should have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    pub name: String,
    pub owner: Owner,
    /// The owner's UID (empty when unknown): the readiness API tells a Network's
    /// bridge from that of an older Network of the same name.
    pub owner_uid: String,
    pub kind: LinkKind,
    /// Generation of the owner this reflects.
    pub generation: Option<i64>,
    /// What the engine is asked for; `None` when it cannot be built at all.
    pub link: Option<DesiredLink>,
    /// Why it is not Ready regardless of the engine (reason, message).
    pub hold: Option<(String, String)>,
    /// What the report says besides the engine's message (e.g. peers refused).
    pub notes: Vec<String>,
}

/// Everything the agent reads to decide.
pub struct Inputs<'a> {
    pub node: &'a NodeInfo,
    pub networks: &'a [Arc<Network>],
    pub links: &'a [Arc<Link>],
    /// Every node's report, for the VTEP addresses of automatic peers.
    pub reports: &'a BTreeMap<String, NodeNetworkStateStatus>,
    /// Every Node, by name: a report becomes a peer only if its Node exists, is
    /// selected by the Network and has the reported address.
    pub nodes: &'a BTreeMap<String, NodeInfo>,
    /// The engine's last states on this node.
    pub engine: &'a [LinkState],
}

fn owner_string(owner: &Owner) -> String {
    format!("{}/{}", owner.kind_str(), owner.name)
}

/// The interfaces this node should have, in a stable order.
pub fn compute(inputs: &Inputs<'_>) -> Vec<Want> {
    let node = inputs.node;
    let engine: BTreeMap<&str, &LinkState> = inputs.engine.iter().map(|s| (s.name.as_str(), s)).collect();
    let live_networks: Vec<&Network> = inputs
        .networks
        .iter()
        .map(Arc::as_ref)
        .filter(|n| n.meta().deletion_timestamp.is_none() && n.spec.node_selector.matches(&node.labels))
        .collect();
    let live_links: Vec<&Link> = inputs
        .links
        .iter()
        .map(Arc::as_ref)
        .filter(|l| l.meta().deletion_timestamp.is_none() && l.spec.node_selector.matches(&node.labels))
        .collect();

    // Conflicts as the controller decides them: every live object's claim over every
    // node it selects (from the Node cache), not over this node alone. An object that
    // lost to an older one on another node has lost here too, so that a newer object
    // it would otherwise beat here keeps its claim, as the controller says.
    let selected = |selector: &crate::api::LabelSelector| -> BTreeSet<String> {
        inputs
            .nodes
            .values()
            .chain(std::iter::once(node))
            .filter(|n| selector.matches(&n.labels))
            .map(|n| n.name.clone())
            .collect()
    };
    let mut all: Vec<(Claim, BTreeSet<String>)> = Vec::new();
    for n in inputs
        .networks
        .iter()
        .filter(|n| n.meta().deletion_timestamp.is_none())
    {
        all.push((claims::network_claim(n), selected(&n.spec.node_selector)));
    }
    for l in inputs
        .links
        .iter()
        .filter(|l| l.meta().deletion_timestamp.is_none())
    {
        all.push((claims::link_claim(l), selected(&l.spec.node_selector)));
    }
    let losers = claims::conflicts(&all);

    let mut wants = Vec::new();
    for network in live_networks {
        let owner = Owner {
            kind: OwnerKind::Network,
            name: network.name_any(),
        };
        if !losers.contains_key(&owner) {
            wants.extend(network_wants(network, owner, inputs, &engine));
        }
    }
    let links: BTreeMap<String, &Link> = live_links
        .into_iter()
        .filter(|l| {
            !losers.contains_key(&Owner {
                kind: OwnerKind::Link,
                name: l.name_any(),
            })
        })
        .map(|l| (l.name_any(), l))
        .collect();
    let resolved = deps::resolve(&links, &|iface| engine.get(iface).is_some_and(|s| s.ready));
    for (name, link) in &links {
        wants.push(link_want(link, &resolved[name]));
    }
    wants
}

fn network_wants(
    network: &Network,
    owner: Owner,
    inputs: &Inputs<'_>,
    engine: &BTreeMap<&str, &LinkState>,
) -> Vec<Want> {
    let spec = &network.spec;
    let generation = network.meta().generation;
    let bridge = spec.bridge.name.to_string();
    let owner_s = owner_string(&owner);

    // The network's MTU: spec, else what the controller derived for all nodes, else
    // (until it has) this node's own carrier, else 1500 without a VXLAN.
    let local = spec.vxlan.as_ref().and_then(|vx| {
        let state = engine.get(vx.interface_name().as_str())?;
        Some(vxlan_mtu(state.carrier_mtu?, vx.underlay_family()))
    });
    let mtu = spec
        .mtu
        .or_else(|| network.status.as_ref().and_then(|s| s.mtu))
        .or(local)
        .or_else(|| {
            spec.vxlan
                .is_none()
                .then_some(crate::api::network::DEFAULT_LOCAL_MTU)
        });

    let owner_uid = network.meta().uid.clone().unwrap_or_default();
    let mut wants = vec![Want {
        name: bridge.clone(),
        owner: owner.clone(),
        owner_uid: owner_uid.clone(),
        kind: LinkKind::Bridge,
        generation,
        link: Some(DesiredLink {
            name: bridge.clone(),
            owner: owner_s.clone(),
            kind: DesiredKind::Bridge { mtu },
            up: true,
            adopt: false,
        }),
        hold: None,
        notes: Vec::new(),
    }];
    let Some(vx) = &spec.vxlan else { return wants };
    let name = vx.interface_name().to_string();
    let family = vx.underlay_family();
    let group: Option<IpAddr> = vx.group.as_deref().and_then(|g| g.parse().ok());
    let remotes: Vec<IpAddr> = vx.remotes.iter().filter_map(|r| r.parse().ok()).collect();
    let mut peers: BTreeSet<IpAddr> = remotes.iter().copied().collect();
    let mut notes = Vec::new();
    if vx.node_peers.is_some() {
        let (found, refused) = node_peers(inputs, network, &owner, &name, family);
        peers.extend(found);
        if !refused.is_empty() {
            notes.push(format!("peer reports ignored: {}", refused.join("; ")));
        }
    }
    let own_address = inputs
        .node
        .internal_ips
        .iter()
        .copied()
        .find(|ip| IpFamily::of(ip) == family);
    let carrier = match (&vx.device, group, remotes.first(), &vx.node_peers) {
        (Some(device), ..) => Some(Carrier::Named(device.to_string())),
        (None, Some(g), ..) => Some(Carrier::RouteTo(g)),
        (None, None, Some(r), _) => Some(Carrier::RouteTo(*r)),
        (None, None, None, Some(_)) => own_address.map(Carrier::HoldingAddress),
        (None, None, None, None) => None,
    };
    // Never peer with ourselves.
    if let Some(own) = own_address {
        peers.remove(&own);
    }
    let (link, hold) = match carrier {
        Some(carrier) => (
            Some(DesiredLink {
                name: name.clone(),
                owner: owner_s,
                kind: DesiredKind::Vxlan(VxlanConfig {
                    vni: vx.vni,
                    port: vx.port,
                    source_ports: vx.source_port_range.map(|r| (r.start, r.end)),
                    learning: vx.learning,
                    ttl: vx.ttl,
                    group,
                    remote: None,
                    peers: peers.into_iter().collect(),
                    carrier,
                    mtu,
                    master: Some(bridge),
                }),
                up: true,
                adopt: false,
            }),
            None,
        ),
        None => (
            None,
            Some((
                reason::NODE_ADDRESS_MISSING.to_string(),
                format!(
                    "nodePeers needs the node's {family:?} InternalIP (or vxlan.device) to find the carrier, and node {} has none",
                    inputs.node.name
                ),
            )),
        ),
    };
    wants.push(Want {
        name,
        owner,
        owner_uid,
        kind: LinkKind::Vxlan,
        generation,
        link,
        hold,
        notes,
    });
    wants
}

/// VTEP addresses the other nodes report for this Network's VXLAN, and the reports
/// refused as peers (node: why). A report is the word of the agent that wrote it; the
/// Node object is the kubelet's (NodeRestriction confines each kubelet to its own):
/// only an address the Node itself lists, of a Node the Network selects, becomes a
/// forwarding peer.
fn node_peers(
    inputs: &Inputs<'_>,
    network: &Network,
    owner: &Owner,
    vxlan: &str,
    family: IpFamily,
) -> (Vec<IpAddr>, Vec<String>) {
    let mut peers = Vec::new();
    let mut refused = Vec::new();
    for (node, report) in inputs.reports {
        if *node == inputs.node.name {
            continue;
        }
        let Some(iface) = report.interface(vxlan).filter(|i| &i.owner == owner) else {
            continue;
        };
        let Some(reported) = iface.vtep_address.as_deref() else {
            continue;
        };
        let Ok(addr) = reported.parse::<IpAddr>() else {
            refused.push(format!("{node}: {reported} is not an IP address"));
            continue;
        };
        if IpFamily::of(&addr) != family {
            continue;
        }
        match peer_refusal(inputs.nodes.get(node), network, addr) {
            None => peers.push(addr),
            Some(why) => refused.push(format!("{node}: {why}")),
        }
    }
    (peers, refused)
}

/// Why `addr`, reported by the agent of `node`, is no peer of `network`; `None` when
/// it is one.
fn peer_refusal(node: Option<&NodeInfo>, network: &Network, addr: IpAddr) -> Option<String> {
    let Some(node) = node else {
        return Some("no such Node".into());
    };
    if !network.spec.node_selector.matches(&node.labels) {
        return Some(format!(
            "Node {} is not selected by Network {}",
            node.name,
            network.name_any()
        ));
    }
    if !crate::model::vtep::unicast(&addr) {
        return Some(format!("{addr} is not a unicast address"));
    }
    if !node.addresses.contains(&addr) {
        return Some(format!(
            "{addr} is not an address of Node {} (its InternalIP and ExternalIP addresses are accepted)",
            node.name
        ));
    }
    None
}

fn link_want(link: &Link, resolved: &deps::Resolved) -> Want {
    let owner = Owner {
        kind: OwnerKind::Link,
        name: link.name_any(),
    };
    let spec = &link.spec;
    let name = spec.interface_name.to_string();
    let mut hold = resolved.hold.clone();
    let (kind, desired) = match (&spec.bridge, &spec.vxlan, &spec.unmanaged) {
        (Some(bridge), _, _) => (LinkKind::Bridge, Some(DesiredKind::Bridge { mtu: bridge.mtu })),
        (_, Some(vx), _) => {
            let remote: Option<IpAddr> = vx.remote_ip_address.as_deref().and_then(|r| r.parse().ok());
            let peers: Vec<IpAddr> = vx.remotes.iter().filter_map(|r| r.parse().ok()).collect();
            let (group, unicast) = match remote {
                Some(ip) if ip.is_multicast() => (Some(ip), None),
                other => (None, other),
            };
            let carrier = match (&resolved.device, remote.or(peers.first().copied())) {
                (Some(device), _) => Some(Carrier::Named(device.clone())),
                (None, Some(ip)) => Some(Carrier::RouteTo(ip)),
                (None, None) => None,
            };
            match carrier {
                Some(carrier) => (
                    LinkKind::Vxlan,
                    Some(DesiredKind::Vxlan(VxlanConfig {
                        vni: vx.vnid,
                        port: vx.port,
                        source_ports: vx.source_port.map(|r| (r.start, r.end)),
                        learning: vx.learning,
                        ttl: vx.ttl,
                        group,
                        remote: unicast,
                        peers,
                        carrier,
                        mtu: vx.mtu,
                        master: resolved.master.clone(),
                    })),
                ),
                None => {
                    hold.get_or_insert((
                        reason::NO_CARRIER.to_string(),
                        "set vxlan.device, or a remote whose route names the carrier".to_string(),
                    ));
                    (LinkKind::Vxlan, None)
                }
            }
        }
        _ => (
            LinkKind::Unmanaged,
            Some(DesiredKind::Unmanaged {
                master: resolved.master.clone(),
                allow_uplink: spec.unmanaged.as_ref().is_some_and(|u| u.allow_uplink),
                release: false,
            }),
        ),
    };
    Want {
        name: name.clone(),
        owner: owner.clone(),
        owner_uid: link.meta().uid.clone().unwrap_or_default(),
        kind,
        generation: link.meta().generation,
        link: desired.map(|kind| DesiredLink {
            name,
            owner: owner_string(&owner),
            kind,
            up: resolved.up,
            adopt: spec.adopt,
        }),
        hold,
        notes: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::InterfaceName;
    use crate::api::node_state::InterfaceState;
    use serde_json::json;

    fn node() -> NodeInfo {
        peer("node-a", "198.18.0.10", true)
    }

    /// A Node with one InternalIP, selected by `base`'s selector or not.
    fn peer(name: &str, address: &str, selected: bool) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            labels: BTreeMap::from([("gw".to_string(), selected.to_string())]),
            internal_ips: vec![address.parse().unwrap()],
            addresses: vec![address.parse().unwrap()],
        }
    }

    /// Nodes a to e of the cluster, selected, at 198.18.0.10 to .12, 2001:db8::4, .14.
    fn cluster_nodes() -> BTreeMap<String, NodeInfo> {
        [
            peer("node-a", "198.18.0.10", true),
            peer("node-b", "198.18.0.11", true),
            peer("node-c", "198.18.0.12", true),
            peer("node-d", "2001:db8::4", true),
            peer("node-e", "198.18.0.14", true),
        ]
        .into_iter()
        .map(|n| (n.name.clone(), n))
        .collect()
    }

    fn network(name: &str, spec: serde_json::Value) -> Arc<Network> {
        let mut n: Network = serde_json::from_value(json!({
            "apiVersion": "nno.dev/v1alpha1", "kind": "Network",
            "metadata": {"name": name, "generation": 3, "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": spec
        }))
        .unwrap();
        n.metadata.generation = Some(3);
        Arc::new(n)
    }

    fn base(vxlan: serde_json::Value) -> serde_json::Value {
        json!({"nodeSelector": {"matchLabels": {"gw": "true"}}, "bridge": {"name": "br-gw"}, "vxlan": vxlan,
               "ipam": {"range": "192.168.50.0/24"}, "attachments": {"namespaces": ["default"]}})
    }

    fn compute_with(
        networks: &[Arc<Network>],
        links: &[Arc<Link>],
        reports: &BTreeMap<String, NodeNetworkStateStatus>,
        engine: &[LinkState],
    ) -> Vec<Want> {
        compute(&Inputs {
            node: &node(),
            networks,
            links,
            reports,
            nodes: &cluster_nodes(),
            engine,
        })
    }

    fn vxlan_config(w: &Want) -> &VxlanConfig {
        match &w.link.as_ref().unwrap().kind {
            DesiredKind::Vxlan(c) => c,
            other => panic!("not a vxlan: {other:?}"),
        }
    }

    fn state(name: &str, ready: bool, carrier_mtu: Option<u32>) -> LinkState {
        LinkState {
            name: name.into(),
            ready,
            reason: if ready { "Ready".into() } else { "Pending".into() },
            message: String::new(),
            mtu: None,
            carrier: None,
            carrier_mtu,
            local_address: None,
        }
    }

    #[test]
    fn multicast_network_gives_bridge_and_vxlan() {
        let nets = [network(
            "gw",
            base(
                json!({"vni": 100, "group": "239.1.1.1", "ttl": 4, "sourcePortRange": {"start": 5000, "end": 6000}}),
            ),
        )];
        let wants = compute_with(&nets, &[], &BTreeMap::new(), &[]);
        assert_eq!(wants.len(), 2);
        assert_eq!(
            (wants[0].name.as_str(), wants[0].kind),
            ("br-gw", LinkKind::Bridge)
        );
        assert_eq!(wants[0].generation, Some(3));
        assert_eq!(wants[0].link.as_ref().unwrap().owner, "Network/gw");
        assert_eq!(
            wants[0].link.as_ref().unwrap().kind,
            DesiredKind::Bridge { mtu: None },
            "MTU unknown on the first pass"
        );
        let vx = vxlan_config(&wants[1]);
        assert_eq!(wants[1].name, "vxlan100");
        assert_eq!(vx.group, Some("239.1.1.1".parse().unwrap()));
        assert_eq!(vx.carrier, Carrier::RouteTo("239.1.1.1".parse().unwrap()));
        assert_eq!(
            (vx.vni, vx.port, vx.ttl, vx.source_ports),
            (100, 4789, Some(4), Some((5000, 6000)))
        );
        assert_eq!(vx.master.as_deref(), Some("br-gw"));
        assert!(vx.peers.is_empty());
    }

    #[test]
    fn mtu_comes_from_spec_then_status_then_the_local_carrier() {
        let mut net = (*network("gw", base(json!({"vni": 100, "group": "239.1.1.1"})))).clone();
        let engine = [state("vxlan100", true, Some(9000))];
        let mtu_of = |n: &Network| {
            let wants = compute_with(&[Arc::new(n.clone())], &[], &BTreeMap::new(), &engine);
            (
                wants[0].link.as_ref().unwrap().kind.clone(),
                vxlan_config(&wants[1]).mtu,
            )
        };
        assert_eq!(
            mtu_of(&net),
            (DesiredKind::Bridge { mtu: Some(8950) }, Some(8950)),
            "local carrier"
        );
        net.status = Some(crate::api::NetworkStatus {
            mtu: Some(1450),
            ..Default::default()
        });
        assert_eq!(mtu_of(&net).1, Some(1450), "the controller's cluster-wide value");
        net.spec.mtu = Some(1400);
        assert_eq!(
            mtu_of(&net),
            (DesiredKind::Bridge { mtu: Some(1400) }, Some(1400)),
            "spec wins"
        );
        let local_only = network(
            "local",
            json!({"bridge": {"name": "br-l"}, "ipam": {"range": "192.168.50.0/24"}, "attachments": {"namespaces": ["a"]}}),
        );
        let wants = compute_with(&[local_only], &[], &BTreeMap::new(), &[]);
        assert_eq!(wants.len(), 1);
        assert_eq!(
            wants[0].link.as_ref().unwrap().kind,
            DesiredKind::Bridge { mtu: Some(1500) }
        );
    }

    fn report(node_vtep: Option<&str>, owner: &str) -> NodeNetworkStateStatus {
        NodeNetworkStateStatus {
            interfaces: vec![InterfaceState {
                name: InterfaceName::new("vxlan100").unwrap(),
                owner: Owner {
                    kind: OwnerKind::Network,
                    name: owner.into(),
                },
                kind: LinkKind::Vxlan,
                ready: true,
                reason: "Ready".into(),
                message: String::new(),
                mtu: None,
                carrier: None,
                carrier_mtu: None,
                vtep_address: node_vtep.map(String::from),
                observed_generation: None,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn node_peers_come_from_the_other_nodes_reports() {
        let nets = [network(
            "gw",
            base(json!({"vni": 100, "nodePeers": {}, "remotes": ["198.18.0.99"]})),
        )];
        let reports = BTreeMap::from([
            ("node-a".to_string(), report(Some("198.18.0.10"), "gw")),
            ("node-b".to_string(), report(Some("198.18.0.11"), "gw")),
            ("node-c".to_string(), report(Some("198.18.0.12"), "other")),
            ("node-d".to_string(), report(Some("2001:db8::4"), "gw")),
            ("node-e".to_string(), report(None, "gw")),
        ]);
        let wants = compute_with(&nets, &[], &reports, &[]);
        let vx = vxlan_config(&wants[1]);
        let peers: Vec<String> = vx.peers.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            peers,
            ["198.18.0.11", "198.18.0.99"],
            "other nodes of this network and family, plus remotes; never itself"
        );
        assert_eq!(vx.carrier, Carrier::RouteTo("198.18.0.99".parse().unwrap()));
    }

    #[test]
    fn conflicts_are_decided_over_every_node_as_the_controller_does() {
        // One bridge name: a (oldest) on node-x, b on node-x and node-a, c (newest)
        // on node-a. b loses to a on node-x, so on node-a c keeps the name.
        let on = |name: &str, label: &str, created: &str| {
            let mut spec = base(json!({"vni": u32::from(name.as_bytes()[0]), "group": "239.1.1.1"}));
            spec["nodeSelector"] = json!({"matchLabels": {label: "1"}});
            let mut n = (*network(name, spec)).clone();
            n.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                created.parse().unwrap(),
            ));
            Arc::new(n)
        };
        let nets = [
            on("a", "x", "2026-01-01T00:00:00Z"),
            on("b", "both", "2026-01-02T00:00:00Z"),
            on("c", "a", "2026-01-03T00:00:00Z"),
        ];
        let labels = |l: &[&str]| l.iter().map(|k| (k.to_string(), "1".to_string())).collect();
        let mut here = node();
        here.labels = labels(&["a", "both"]);
        let mut x = peer("node-x", "198.18.0.20", true);
        x.labels = labels(&["x", "both"]);
        let nodes = BTreeMap::from([("node-a".to_string(), here.clone()), ("node-x".to_string(), x)]);
        let wants = compute(&Inputs {
            node: &here,
            networks: &nets,
            links: &[],
            reports: &BTreeMap::new(),
            nodes: &nodes,
            engine: &[],
        });
        let owners: BTreeSet<&str> = wants.iter().map(|w| w.owner.name.as_str()).collect();
        assert_eq!(owners, BTreeSet::from(["c"]), "{wants:?}");
    }

    #[test]
    fn forged_peer_reports_never_become_peers() {
        let nets = [network("gw", base(json!({"vni": 100, "nodePeers": {}})))];
        let mut nodes = cluster_nodes();
        nodes.insert("node-x".into(), peer("node-x", "198.18.0.20", false));
        let reports = BTreeMap::from([
            ("node-b".to_string(), report(Some("198.18.0.11"), "gw")),
            // Another node's address, an outside host's, a loopback, a Node that does
            // not exist, a Node the Network does not select.
            ("node-c".to_string(), report(Some("198.18.0.11"), "gw")),
            ("node-e".to_string(), report(Some("203.0.113.9"), "gw")),
            ("node-d".to_string(), report(Some("127.0.0.1"), "gw")),
            ("node-gone".to_string(), report(Some("198.18.0.30"), "gw")),
            ("node-x".to_string(), report(Some("198.18.0.20"), "gw")),
        ]);
        let wants = compute(&Inputs {
            node: &node(),
            networks: &nets,
            links: &[],
            reports: &reports,
            nodes: &nodes,
            engine: &[],
        });
        let vx = vxlan_config(&wants[1]);
        assert_eq!(vx.peers, ["198.18.0.11".parse::<IpAddr>().unwrap()]);
        let note = wants[1].notes.join("\n");
        for expected in [
            "node-c: 198.18.0.11 is not an address of Node node-c",
            "node-e: 203.0.113.9 is not an address of Node node-e",
            "node-d: 127.0.0.1 is not a unicast address",
            "node-gone: no such Node",
            "node-x: Node node-x is not selected by Network gw",
        ] {
            assert!(note.contains(expected), "{expected} missing from {note}");
        }
        assert!(
            wants[1].hold.is_none(),
            "refused peers do not hold this node's VXLAN"
        );
    }

    #[test]
    fn node_peers_alone_use_the_node_address_as_carrier() {
        let nets = [network("gw", base(json!({"vni": 100, "nodePeers": {}})))];
        let wants = compute_with(&nets, &[], &BTreeMap::new(), &[]);
        assert_eq!(
            vxlan_config(&wants[1]).carrier,
            Carrier::HoldingAddress("198.18.0.10".parse().unwrap())
        );

        let v6 = [network(
            "gw",
            base(json!({"vni": 100, "nodePeers": {"ipFamily": "IPv6"}})),
        )];
        let wants = compute_with(&v6, &[], &BTreeMap::new(), &[]);
        assert!(wants[1].link.is_none());
        assert_eq!(wants[1].hold.as_ref().unwrap().0, reason::NODE_ADDRESS_MISSING);

        let named = [network(
            "gw",
            base(json!({"vni": 100, "nodePeers": {"ipFamily": "IPv6"}, "device": "eth1"})),
        )];
        let wants = compute_with(&named, &[], &BTreeMap::new(), &[]);
        assert_eq!(vxlan_config(&wants[1]).carrier, Carrier::Named("eth1".into()));
    }

    #[test]
    fn unselected_deleted_and_conflicting_networks_are_not_wanted() {
        let mut other = base(json!({"vni": 100, "group": "239.1.1.1"}));
        other["nodeSelector"] = json!({"matchLabels": {"gw": "false"}});
        let mut deleting = (*network("deleting", base(json!({"vni": 7, "group": "239.1.1.7"})))).clone();
        deleting.spec.bridge.name = InterfaceName::new("br-del").unwrap();
        deleting.metadata.deletion_timestamp = Some(crate::api::common::now());
        let older = network("older", base(json!({"vni": 100, "group": "239.1.1.1"})));
        let mut newer = (*network("newer", base(json!({"vni": 200, "group": "239.1.1.2"})))).clone();
        newer.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-06-01T00:00:00Z".parse().unwrap(),
        ));
        let nets = [
            network("elsewhere", other),
            Arc::new(deleting),
            older,
            Arc::new(newer),
        ];
        let wants = compute_with(&nets, &[], &BTreeMap::new(), &[]);
        let owners: BTreeSet<&str> = wants.iter().map(|w| w.owner.name.as_str()).collect();
        assert_eq!(owners, BTreeSet::from(["older"]), "newer loses br-gw to older");
    }

    #[test]
    fn links_follow_their_dependency_rules() {
        let link = |name: &str, spec: serde_json::Value| -> Arc<Link> {
            Arc::new(serde_json::from_value(json!({"apiVersion": "nno.dev/v1alpha1", "kind": "Link", "metadata": {"name": name, "generation": 1}, "spec": spec})).unwrap())
        };
        let links = [
            link("eth0", json!({"interfaceName": "eth0", "unmanaged": {}})),
            link("br0", json!({"interfaceName": "br0", "bridge": {"mtu": 1450}})),
            link(
                "vx0",
                json!({"interfaceName": "vx0", "vxlan": {"vnid": 9, "remoteIPAddress": "239.1.1.9", "device": {"name": "eth0"}, "master": {"name": "br0"}}}),
            ),
            link("lonely", json!({"interfaceName": "vx1", "vxlan": {"vnid": 10}})),
        ];
        let engine = [state("eth0", true, None), state("br0", false, None)];
        let wants = compute_with(&[], &links, &BTreeMap::new(), &engine);
        let by_name: BTreeMap<&str, &Want> = wants.iter().map(|w| (w.name.as_str(), w)).collect();
        assert_eq!(
            by_name["br0"].link.as_ref().unwrap().kind,
            DesiredKind::Bridge { mtu: Some(1450) }
        );
        assert_eq!(
            by_name["eth0"].link.as_ref().unwrap().kind,
            DesiredKind::Unmanaged {
                master: None,
                allow_uplink: false,
                release: false,
            }
        );
        let vx = by_name["vx0"];
        assert_eq!(
            vx.hold.as_ref().unwrap().0,
            reason::DEPENDENCY_NOT_READY,
            "br0 is not Ready yet"
        );
        assert!(!vx.link.as_ref().unwrap().up);
        let cfg = vxlan_config(vx);
        assert_eq!(
            (cfg.group, cfg.remote),
            (Some("239.1.1.9".parse().unwrap()), None)
        );
        assert_eq!(cfg.carrier, Carrier::Named("eth0".into()));
        assert_eq!(cfg.master.as_deref(), Some("br0"));
        assert_eq!(by_name["vx1"].hold.as_ref().unwrap().0, reason::NO_CARRIER);
        assert!(by_name["vx1"].link.is_none());
    }
}
