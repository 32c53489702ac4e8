//! The event subscription: a second rtnetlink socket bound to the link, neighbour,
//! address and route multicast groups. An event is only ever a cue to observe
//! again; [`Interest`] decides (purely) which events are cues, so the bridge FDB
//! learning of a busy node or unrelated pod veths do not cause passes.

use std::collections::HashSet;

use futures::channel::mpsc::UnboundedReceiver;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::MulticastGroup;
use rtnetlink::sys::AsyncSocket;
use rtnetlink::sys::SocketAddr;
use tokio::task::JoinHandle;

use super::error::{Error, Operation};
use super::observe::parse_zero_fdb;
use super::plan::Plan;
use super::types::{Carrier, DesiredKind, DesiredLink, Observed, ObservedKind};

/// Receive buffer of the event socket: large enough for the burst of a 100-link
/// pass; an overflow still only costs one extra full pass.
const EVENT_RCVBUF: usize = 4 << 20;

const GROUPS: &[MulticastGroup] = &[
    MulticastGroup::Link,
    MulticastGroup::Neigh,
    MulticastGroup::Ipv4Ifaddr,
    MulticastGroup::Ipv6Ifaddr,
    MulticastGroup::Ipv4Route,
    MulticastGroup::Ipv6Route,
];

pub(crate) type EventStream = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

/// Opens the event socket in the calling thread's network namespace and spawns
/// its connection on the current tokio runtime.
pub(crate) fn subscribe() -> Result<(EventStream, JoinHandle<()>), Error> {
    let io = |source| Error::Io {
        op: Operation::Subscribe,
        target: "this network namespace".into(),
        source,
    };
    let (conn, _handle, events) = rtnetlink::new_multicast_connection(GROUPS).map_err(io)?;
    let mut conn = conn;
    conn.socket_mut()
        .socket_mut()
        .set_rx_buf_sz(EVENT_RCVBUF)
        .map_err(io)?;
    Ok((events, tokio::spawn(conn)))
}

/// Which events concern the links of the last pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Interest {
    /// Desired, owned, carrier and master interface names.
    names: HashSet<String>,
    /// Their indices as last observed.
    indices: HashSet<u32>,
    /// Indices of desired VXLANs (their all-zero FDB entries matter).
    vxlans: HashSet<u32>,
    /// A carrier is found by address: any address change may move it.
    any_address: bool,
    /// A carrier is found by route lookup: any route change may move it.
    routes: bool,
}

impl Interest {
    pub(crate) fn new(desired: &[DesiredLink], observed: &Observed, plan: &Plan) -> Self {
        let mut i = Interest::default();
        for d in desired {
            i.names.insert(d.name.clone());
            match &d.kind {
                DesiredKind::Vxlan(cfg) => {
                    match &cfg.carrier {
                        Carrier::Named(c) => {
                            i.names.insert(c.clone());
                        }
                        Carrier::RouteTo(_) => i.routes = true,
                        Carrier::HoldingAddress(_) => i.any_address = true,
                    }
                    i.names.extend(cfg.master.clone());
                    if let Some(l) = observed.links.get(&d.name)
                        && matches!(l.kind, ObservedKind::Vxlan(_))
                    {
                        i.vxlans.insert(l.index);
                    }
                }
                DesiredKind::Unmanaged { master, .. } => i.names.extend(master.clone()),
                DesiredKind::Bridge { .. } => {}
            }
        }
        i.names
            .extend(plan.links.iter().filter_map(|l| l.carrier.clone()));
        i.names.extend(
            observed
                .links
                .values()
                .filter(|l| l.owned())
                .map(|l| l.name.clone()),
        );
        i.indices = i
            .names
            .iter()
            .filter_map(|n| observed.links.get(n).map(|l| l.index))
            .collect();
        i
    }

    /// Whether `msg` is a cue to observe again.
    /// Also treats events of these interfaces as cues (e.g. pods' ports of owned
    /// bridges, which a detach or a re-attach changes).
    pub(crate) fn watch(&mut self, indices: impl IntoIterator<Item = u32>) {
        self.indices.extend(indices);
    }

    pub(crate) fn is_relevant(&self, msg: &NetlinkMessage<RouteNetlinkMessage>) -> bool {
        let inner = match &msg.payload {
            NetlinkPayload::InnerMessage(m) => m,
            // The socket overflowed: events were lost, so everything may have changed.
            NetlinkPayload::Overrun(_) => return true,
            _ => return false,
        };
        match inner {
            RouteNetlinkMessage::NewLink(m) | RouteNetlinkMessage::DelLink(m) => self.link(m),
            RouteNetlinkMessage::NewAddress(m) | RouteNetlinkMessage::DelAddress(m) => {
                self.any_address || self.indices.contains(&m.header.index)
            }
            RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_) => self.routes,
            RouteNetlinkMessage::NewNeighbour(m) | RouteNetlinkMessage::DelNeighbour(m) => {
                parse_zero_fdb(m).is_some_and(|(index, _)| self.vxlans.contains(&index))
            }
            _ => false,
        }
    }

    fn link(&self, m: &LinkMessage) -> bool {
        self.indices.contains(&m.header.index)
            || m.attributes.iter().any(|a| match a {
                LinkAttribute::IfName(n) => self.names.contains(n),
                // A port joining one of our bridges: remembered from the next pass.
                LinkAttribute::Controller(master) => self.indices.contains(master),
                _ => false,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::plan::plan;
    use crate::netlink::types::{ObservedLink, OperState, VxlanConfig};
    use netlink_packet_route::AddressFamily;
    use netlink_packet_route::address::AddressMessage;
    use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
    use netlink_packet_route::route::RouteMessage;

    fn link(index: u32, name: &str, kind: ObservedKind, alias: Option<&str>) -> ObservedLink {
        ObservedLink {
            index,
            name: name.into(),
            kind,
            alias: alias.map(String::from),
            mtu: 1500,
            admin_up: true,
            oper: OperState::Up,
            master: None,
        }
    }

    fn vxlan(carrier: Carrier) -> DesiredLink {
        DesiredLink::vxlan(
            "vx0",
            "Network/gw",
            VxlanConfig {
                master: Some("br0".into()),
                ..VxlanConfig::new(10, carrier)
            },
        )
    }

    fn interest(desired: &[DesiredLink]) -> Interest {
        let mut obs = Observed::default();
        for l in [
            link(2, "eth1", ObservedKind::Other("veth".into()), None),
            link(
                9,
                "vx0",
                ObservedKind::Vxlan(crate::netlink::types::ObservedVxlan {
                    vni: 10,
                    port: 4789,
                    port_range: (0, 0),
                    learning: true,
                    ttl: 0,
                    remote: None,
                    local: None,
                    link: Some(2),
                }),
                Some("nno.dev owner=Network/gw"),
            ),
            link(20, "pod-veth", ObservedKind::Other("veth".into()), None),
        ] {
            obs.links.insert(l.name.clone(), l);
        }
        let p = plan(desired, &obs);
        Interest::new(desired, &obs, &p)
    }

    fn msg(m: RouteNetlinkMessage) -> NetlinkMessage<RouteNetlinkMessage> {
        NetlinkMessage::from(m)
    }

    fn link_msg(index: u32, name: Option<&str>) -> RouteNetlinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = index;
        if let Some(n) = name {
            m.attributes.push(LinkAttribute::IfName(n.into()));
        }
        RouteNetlinkMessage::DelLink(m)
    }

    fn fdb(index: u32, mac: [u8; 6]) -> RouteNetlinkMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = index;
        m.attributes = vec![
            NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
            NeighbourAttribute::Destination(NeighbourAddress::Inet("198.18.0.2".parse().unwrap())),
        ];
        RouteNetlinkMessage::DelNeighbour(m)
    }

    #[test]
    fn link_events_of_desired_carrier_and_master_names_are_cues() {
        let i = interest(&[vxlan(Carrier::Named("eth1".into()))]);
        assert!(i.is_relevant(&msg(link_msg(9, None))), "vx0 by index");
        assert!(
            i.is_relevant(&msg(link_msg(77, Some("vx0")))),
            "vx0 recreated by name"
        );
        assert!(i.is_relevant(&msg(link_msg(2, None))), "carrier");
        assert!(i.is_relevant(&msg(link_msg(55, Some("br0")))), "master appearing");
        assert!(
            !i.is_relevant(&msg(link_msg(20, Some("pod-veth")))),
            "unrelated veth"
        );
    }

    #[test]
    fn ports_joining_our_links_and_watched_ports_are_cues() {
        let mut i = interest(&[vxlan(Carrier::Named("eth1".into()))]);
        let mut joining = LinkMessage::default();
        joining.header.index = 30;
        joining.attributes.push(LinkAttribute::Controller(9));
        assert!(
            i.is_relevant(&msg(RouteNetlinkMessage::NewLink(joining))),
            "a port of index 9"
        );
        assert!(
            !i.is_relevant(&msg(link_msg(20, None))),
            "pod-veth is not watched yet"
        );
        i.watch([20]);
        assert!(i.is_relevant(&msg(link_msg(20, None))), "pod-veth watched");
    }

    #[test]
    fn only_all_zero_fdb_entries_of_desired_vxlans_are_cues() {
        let i = interest(&[vxlan(Carrier::Named("eth1".into()))]);
        assert!(i.is_relevant(&msg(fdb(9, [0; 6]))));
        assert!(!i.is_relevant(&msg(fdb(9, [2, 0, 0, 0, 0, 1]))), "learned MAC");
        assert!(!i.is_relevant(&msg(fdb(20, [0; 6]))), "other interface");
    }

    #[test]
    fn address_and_route_events_depend_on_how_carriers_are_found() {
        let mut addr = AddressMessage::default();
        addr.header.index = 20;
        let addr = msg(RouteNetlinkMessage::NewAddress(addr));
        let route = msg(RouteNetlinkMessage::NewRoute(RouteMessage::default()));

        let named = interest(&[vxlan(Carrier::Named("eth1".into()))]);
        assert!(!named.is_relevant(&addr));
        assert!(!named.is_relevant(&route));

        let holding = interest(&[vxlan(Carrier::HoldingAddress("198.18.0.1".parse().unwrap()))]);
        assert!(holding.is_relevant(&addr));
        assert!(!holding.is_relevant(&route));

        let routed = interest(&[vxlan(Carrier::RouteTo("198.18.0.2".parse().unwrap()))]);
        assert!(routed.is_relevant(&route));
    }

    #[test]
    fn an_overrun_is_always_a_cue() {
        let i = Interest::default();
        let overrun: NetlinkMessage<RouteNetlinkMessage> =
            NetlinkMessage::new(Default::default(), NetlinkPayload::Overrun(Vec::new()));
        assert!(i.is_relevant(&overrun));
    }
}
