//! Reads the node over rtnetlink into an [`Observed`] snapshot: one link dump, one
//! address dump, one bridge-FDB dump (only when VXLANs exist) and one route lookup
//! per [`Carrier::RouteTo`]. Reads are never counted as writes. The conversion of
//! kernel messages into the model is pure and tested below.

use std::collections::BTreeSet;
use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    BridgeStpState, InfoBridge, InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage, State,
};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::error::{Error, Operation};
use super::types::{
    Carrier, DesiredKind, DesiredLink, Observed, ObservedAddress, ObservedKind, ObservedLink, ObservedVxlan,
    OperState, RouteHit,
};

/// Takes a snapshot of everything the planner needs for `desired`.
pub(crate) async fn observe(handle: &Handle, desired: &[DesiredLink]) -> Result<Observed, Error> {
    let mut observed = Observed::default();

    let mut links = handle.link().get().execute();
    while let Some(msg) = links
        .try_next()
        .await
        .map_err(|e| Error::netlink(Operation::DumpLinks, "all interfaces", e))?
    {
        if let Some(link) = parse_link(&msg) {
            observed.links.insert(link.name.clone(), link);
        }
    }

    let mut addrs = handle.address().get().execute();
    while let Some(msg) = addrs
        .try_next()
        .await
        .map_err(|e| Error::netlink(Operation::DumpAddresses, "all interfaces", e))?
    {
        if let Some((index, addr)) = parse_address(&msg) {
            observed.addresses.entry(index).or_default().push(addr);
        }
    }

    for ip in route_targets(desired) {
        let hit = lookup_route(handle, ip).await?;
        observed.routes.insert(ip, hit);
    }

    let vxlans: BTreeSet<u32> = observed
        .links
        .values()
        .filter(|l| matches!(l.kind, ObservedKind::Vxlan(_)))
        .map(|l| l.index)
        .collect();
    if !vxlans.is_empty() {
        let mut fdb = handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        while let Some(msg) = fdb
            .try_next()
            .await
            .map_err(|e| Error::netlink(Operation::DumpFdb, "all VXLANs", e))?
        {
            if let Some((index, dst)) = parse_zero_fdb(&msg)
                && vxlans.contains(&index)
            {
                observed.fdb.entry(index).or_default().insert(dst);
            }
        }
    }
    Ok(observed)
}

/// Distinct destinations whose route decides a carrier.
fn route_targets(desired: &[DesiredLink]) -> BTreeSet<IpAddr> {
    desired
        .iter()
        .filter_map(|d| match &d.kind {
            DesiredKind::Vxlan(cfg) => match cfg.carrier {
                Carrier::RouteTo(ip) => Some(ip),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// `ip route get IP`: the outgoing interface and preferred source, or `None`
/// when the kernel has no route.
async fn lookup_route(handle: &Handle, ip: IpAddr) -> Result<Option<RouteHit>, Error> {
    let target = format!("to {ip}");
    let prefix = if ip.is_ipv4() { 32 } else { 128 };
    let msg = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(ip, prefix)
        .expect("family and prefix length come from the address itself")
        .build();
    let mut routes = handle.route().get(msg).execute();
    match routes.try_next().await {
        Ok(Some(route)) => Ok(parse_route(&route)),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e))
            if [-libc::ENETUNREACH, -libc::EHOSTUNREACH, -libc::ENETDOWN].contains(&e.raw_code()) =>
        {
            Ok(None)
        }
        Err(e) => Err(Error::netlink(Operation::RouteLookup, target, e)),
    }
}

/// The model of one link message; `None` for a message without a name.
pub(crate) fn parse_link(msg: &LinkMessage) -> Option<ObservedLink> {
    let mut name = None;
    let mut alias = None;
    let mut mtu = 0;
    let mut oper = OperState::Other;
    let mut master = None;
    let mut kind = ObservedKind::Other("device".into());
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::IfAlias(a) if !a.is_empty() => alias = Some(a.clone()),
            LinkAttribute::Mtu(m) => mtu = *m,
            LinkAttribute::OperState(s) => oper = oper_state(s),
            LinkAttribute::Controller(m) if *m != 0 => master = Some(*m),
            LinkAttribute::LinkInfo(infos) => kind = parse_kind(infos),
            _ => {}
        }
    }
    Some(ObservedLink {
        index: msg.header.index,
        name: name?,
        kind,
        alias,
        mtu,
        admin_up: msg.header.flags.contains(LinkFlags::Up),
        oper,
        master,
    })
}

fn oper_state(s: &State) -> OperState {
    match s {
        State::Up => OperState::Up,
        State::Unknown => OperState::Unknown,
        State::Down => OperState::Down,
        State::LowerLayerDown => OperState::LowerLayerDown,
        _ => OperState::Other,
    }
}

fn parse_kind(infos: &[LinkInfo]) -> ObservedKind {
    let mut kind = None;
    let mut data = None;
    for info in infos {
        match info {
            LinkInfo::Kind(k) => kind = Some(k),
            LinkInfo::Data(d) => data = Some(d),
            _ => {}
        }
    }
    match (kind, data) {
        (Some(InfoKind::Bridge), data) => {
            let stp = match data {
                Some(InfoData::Bridge(opts)) => opts
                    .iter()
                    .any(|o| matches!(o, InfoBridge::StpState(s) if *s != BridgeStpState::Disabled)),
                _ => false,
            };
            ObservedKind::Bridge { stp }
        }
        (Some(InfoKind::Vxlan), Some(InfoData::Vxlan(opts))) => ObservedKind::Vxlan(parse_vxlan(opts)),
        (Some(k), _) => ObservedKind::Other(k.to_string()),
        (None, _) => ObservedKind::Other("device".into()),
    }
}

fn parse_vxlan(opts: &[InfoVxlan]) -> ObservedVxlan {
    let mut v = ObservedVxlan {
        vni: 0,
        port: 0,
        port_range: (0, 0),
        learning: false,
        ttl: 0,
        remote: None,
        local: None,
        link: None,
    };
    for o in opts {
        match o {
            InfoVxlan::Id(id) => v.vni = *id,
            InfoVxlan::Port(p) => v.port = *p,
            InfoVxlan::PortRange(r) => v.port_range = *r,
            InfoVxlan::Learning(l) => v.learning = *l,
            InfoVxlan::Ttl(t) => v.ttl = *t,
            InfoVxlan::Group(g) if !g.is_unspecified() => v.remote = Some(IpAddr::V4(*g)),
            InfoVxlan::Group6(g) if !g.is_unspecified() => v.remote = Some(IpAddr::V6(*g)),
            InfoVxlan::Local(l) if !l.is_unspecified() => v.local = Some(IpAddr::V4(*l)),
            InfoVxlan::Local6(l) if !l.is_unspecified() => v.local = Some(IpAddr::V6(*l)),
            InfoVxlan::Link(i) if *i != 0 => v.link = Some(*i),
            _ => {}
        }
    }
    v
}

/// The interface index and address of one address message.
pub(crate) fn parse_address(msg: &AddressMessage) -> Option<(u32, ObservedAddress)> {
    let mut local = None;
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on
    // point-to-point links and the same address otherwise.
    let ip = local.or(address)?;
    Some((
        msg.header.index,
        ObservedAddress {
            address: ip,
            prefix_len: msg.header.prefix_len,
            global: msg.header.scope == AddressScope::Universe,
        },
    ))
}

/// The interface and destination of an all-zero-MAC FDB entry; `None` for any
/// other neighbour message.
pub(crate) fn parse_zero_fdb(msg: &NeighbourMessage) -> Option<(u32, IpAddr)> {
    if msg.header.family != AddressFamily::Bridge {
        return None;
    }
    let mut zero_mac = false;
    let mut dst = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::LinkLayerAddress(mac) => {
                zero_mac = mac.len() == 6 && mac.iter().all(|b| *b == 0)
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => dst = Some(IpAddr::V4(*ip)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => dst = Some(IpAddr::V6(*ip)),
            // In AF_BRIDGE messages the crate cannot tell the family: raw bytes.
            NeighbourAttribute::Destination(NeighbourAddress::Other(raw)) => dst = ip_from_bytes(raw),
            _ => {}
        }
    }
    zero_mac.then_some(())?;
    Some((msg.header.ifindex, dst?))
}

fn ip_from_bytes(raw: &[u8]) -> Option<IpAddr> {
    match raw.len() {
        4 => <[u8; 4]>::try_from(raw).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(raw).ok().map(IpAddr::from),
        _ => None,
    }
}

fn parse_route(msg: &RouteMessage) -> Option<RouteHit> {
    let mut oif = None;
    let mut prefsrc = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => prefsrc = Some(IpAddr::V4(*ip)),
            RouteAttribute::PrefSource(RouteAddress::Inet6(ip)) => prefsrc = Some(IpAddr::V6(*ip)),
            _ => {}
        }
    }
    Some(RouteHit { oif: oif?, prefsrc })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn link(index: u32, attrs: Vec<LinkAttribute>, up: bool) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = index;
        if up {
            m.header.flags = LinkFlags::Up;
        }
        m.attributes = attrs;
        m
    }

    #[test]
    fn parses_an_owned_up_bridge_with_stp_on() {
        let msg = link(
            7,
            vec![
                LinkAttribute::IfName("br0".into()),
                LinkAttribute::IfAlias("nno.dev owner=Network/gw".into()),
                LinkAttribute::Mtu(1450),
                LinkAttribute::OperState(State::Down),
                LinkAttribute::LinkInfo(vec![
                    LinkInfo::Kind(InfoKind::Bridge),
                    LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::StpState(
                        BridgeStpState::KernelStp,
                    )])),
                ]),
            ],
            true,
        );
        let l = parse_link(&msg).unwrap();
        assert_eq!(l.index, 7);
        assert_eq!(l.name, "br0");
        assert!(l.owned());
        assert!(l.admin_up);
        assert_eq!(l.mtu, 1450);
        assert_eq!(l.oper, OperState::Down);
        assert_eq!(l.kind, ObservedKind::Bridge { stp: true });
        assert_eq!(l.master, None);
    }

    #[test]
    fn parses_vxlan_attributes_and_master() {
        let msg = link(
            9,
            vec![
                LinkAttribute::IfName("vx0".into()),
                LinkAttribute::Controller(7),
                LinkAttribute::OperState(State::Unknown),
                LinkAttribute::LinkInfo(vec![
                    LinkInfo::Kind(InfoKind::Vxlan),
                    LinkInfo::Data(InfoData::Vxlan(vec![
                        InfoVxlan::Id(42),
                        InfoVxlan::Group(Ipv4Addr::UNSPECIFIED),
                        InfoVxlan::Group6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
                        InfoVxlan::Local6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
                        InfoVxlan::Link(3),
                        InfoVxlan::Port(4789),
                        InfoVxlan::PortRange((1000, 2000)),
                        InfoVxlan::Learning(true),
                        InfoVxlan::Ttl(0),
                    ])),
                ]),
            ],
            false,
        );
        let l = parse_link(&msg).unwrap();
        assert!(!l.owned());
        assert_eq!(l.master, Some(7));
        assert_eq!(l.oper, OperState::Unknown);
        let ObservedKind::Vxlan(v) = l.kind else {
            panic!("not a vxlan: {:?}", l.kind)
        };
        assert_eq!(v.vni, 42);
        assert_eq!(v.remote, Some("2001:db8::2".parse().unwrap()));
        assert_eq!(v.local, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(v.link, Some(3));
        assert_eq!(v.port_range, (1000, 2000));
        assert!(v.learning);
    }

    #[test]
    fn kindless_and_nameless_links() {
        let eth = link(2, vec![LinkAttribute::IfName("eth0".into())], true);
        assert_eq!(
            parse_link(&eth).unwrap().kind,
            ObservedKind::Other("device".into())
        );
        let veth = link(
            3,
            vec![
                LinkAttribute::IfName("v0".into()),
                LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
            ],
            true,
        );
        assert_eq!(
            parse_link(&veth).unwrap().kind,
            ObservedKind::Other("veth".into())
        );
        assert_eq!(parse_link(&link(4, vec![], true)), None);
    }

    #[test]
    fn address_prefers_ifa_local() {
        let mut m = AddressMessage::default();
        m.header.index = 3;
        m.header.prefix_len = 24;
        m.header.scope = AddressScope::Universe;
        m.attributes = vec![
            AddressAttribute::Address("198.18.0.9".parse().unwrap()),
            AddressAttribute::Local("198.18.0.1".parse().unwrap()),
        ];
        let (index, a) = parse_address(&m).unwrap();
        assert_eq!(index, 3);
        assert_eq!(a.address, "198.18.0.1".parse::<IpAddr>().unwrap());
        assert!(a.global);
        m.header.scope = AddressScope::Link;
        assert!(!parse_address(&m).unwrap().1.global);
    }

    fn neigh(family: AddressFamily, mac: [u8; 6], dst: Option<IpAddr>) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = family;
        m.header.ifindex = 9;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        // As the kernel's AF_BRIDGE messages parse: raw address bytes.
        let raw = match dst {
            Some(IpAddr::V4(ip)) => Some(ip.octets().to_vec()),
            Some(IpAddr::V6(ip)) => Some(ip.octets().to_vec()),
            None => None,
        };
        if let Some(raw) = raw {
            m.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Other(raw)));
        }
        m
    }

    #[test]
    fn only_all_zero_bridge_entries_with_a_destination_count() {
        let dst: IpAddr = "198.18.0.2".parse().unwrap();
        assert_eq!(
            parse_zero_fdb(&neigh(AddressFamily::Bridge, [0; 6], Some(dst))),
            Some((9, dst))
        );
        assert_eq!(
            parse_zero_fdb(&neigh(AddressFamily::Bridge, [2, 0, 0, 0, 0, 1], Some(dst))),
            None
        );
        assert_eq!(parse_zero_fdb(&neigh(AddressFamily::Bridge, [0; 6], None)), None);
        let v6: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!(
            parse_zero_fdb(&neigh(AddressFamily::Bridge, [0; 6], Some(v6))),
            Some((9, v6))
        );
        assert_eq!(
            parse_zero_fdb(&neigh(AddressFamily::Inet, [0; 6], Some(dst))),
            None
        );
    }

    #[test]
    fn route_without_oif_is_no_hit() {
        let mut r = RouteMessage::default();
        assert_eq!(parse_route(&r), None);
        r.attributes.push(RouteAttribute::Oif(4));
        r.attributes.push(RouteAttribute::PrefSource(RouteAddress::Inet(
            "198.18.0.1".parse().unwrap(),
        )));
        assert_eq!(
            parse_route(&r),
            Some(RouteHit {
                oif: 4,
                prefsrc: Some("198.18.0.1".parse().unwrap())
            })
        );
    }
}
