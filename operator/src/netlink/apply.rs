//! Executes planned [`Step`]s over rtnetlink, one request per step, counting every
//! write. Message construction is pure (tested below); sending resolves interface
//! names to indices, reading back the index of interfaces created in this pass.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{StreamExt, TryStreamExt};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::link::{BridgeStpState, InfoKind, LinkAttribute, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::RouteType;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVxlan};
use tracing::{debug, info, warn};

use super::error::{Error, Operation};
use super::step::{MasterChange, RemoteChange, SetAttrs, Step, VxlanChange, VxlanParams};
use super::types::{Family, Observed};

/// Counts netlink write requests (creates, changes, deletes, FDB updates), failed
/// ones included. Cloned handles share the count.
#[derive(Clone, Debug, Default)]
pub struct WriteCounter(Arc<AtomicU64>);

impl WriteCounter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn add(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// What became of a step that did not simply succeed.
enum Outcome {
    Done,
    /// The kernel refused an in-place change, so the interface was deleted; the
    /// next round of the pass recreates it.
    Deleted,
}

pub(crate) struct Applier<'a> {
    handle: &'a Handle,
    writes: &'a WriteCounter,
    indices: HashMap<String, u32>,
}

impl<'a> Applier<'a> {
    pub(crate) fn new(handle: &'a Handle, writes: &'a WriteCounter, observed: &Observed) -> Self {
        let indices = observed
            .links
            .values()
            .map(|l| (l.name.clone(), l.index))
            .collect();
        Applier {
            handle,
            writes,
            indices,
        }
    }

    /// Applies `steps` in order. A failing step records the error under its
    /// interface and skips that interface's later steps; other interfaces go on.
    pub(crate) async fn apply(&mut self, steps: &[&Step], errors: &mut HashMap<String, Error>) {
        let mut skip: Vec<String> = Vec::new();
        // The deletions come first: many of them leave the kernel in one batch.
        let deletions: Vec<&str> = steps
            .iter()
            .map_while(|s| match s {
                Step::Delete { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        let mut steps = steps;
        if deletions.len() >= BATCH_DELETE_MIN && self.delete_batch(&deletions).await {
            steps = &steps[deletions.len()..];
        }
        for step in steps {
            let name = step.name();
            if errors.contains_key(name) || skip.iter().any(|s| s == name) {
                continue;
            }
            let span = tracing::info_span!("apply", interface = %name);
            let _guard = span.enter();
            info!(%step, "netlink write");
            match self.step(step).await {
                Ok(Outcome::Done) => {}
                Ok(Outcome::Deleted) => skip.push(name.to_string()),
                Err(e) => {
                    warn!(error = %e, "netlink write failed");
                    errors.insert(name.to_string(), e);
                }
            }
        }
    }

    async fn step(&mut self, step: &Step) -> Result<Outcome, Error> {
        match step {
            Step::Delete { name, .. } => {
                self.delete(name).await?;
            }
            Step::CreateBridge { name } => {
                self.create(name, create_bridge_msg(name), Operation::CreateBridge)
                    .await?;
            }
            Step::CreateVxlan { name, params } => {
                let carrier = self.index(&params.carrier).await?.ok_or_else(|| Error::Missing {
                    op: Operation::CreateVxlan,
                    target: format!("{name} (carrier {})", params.carrier),
                })?;
                self.create(
                    name,
                    create_vxlan_msg(name, params, carrier),
                    Operation::CreateVxlan,
                )
                .await?;
            }
            Step::StpOff { name } => {
                let index = self.require(name, Operation::ChangeBridge).await?;
                self.writes.add();
                self.handle
                    .link()
                    .change(stp_off_msg(index))
                    .execute()
                    .await
                    .map_err(|e| Error::netlink(Operation::ChangeBridge, name, e))?;
            }
            Step::ChangeVxlan { name, change } => {
                let index = self.require(name, Operation::ChangeVxlan).await?;
                let carrier = match &change.carrier {
                    Some(c) => Some(self.index(c).await?.ok_or_else(|| Error::Missing {
                        op: Operation::ChangeVxlan,
                        target: format!("{name} (carrier {c})"),
                    })?),
                    None => None,
                };
                self.writes.add();
                let result = self
                    .handle
                    .link()
                    .change(change_vxlan_msg(index, change, carrier))
                    .execute()
                    .await;
                match result {
                    Ok(()) => {}
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EOPNOTSUPP => {
                        warn!(
                            "the kernel refused to change {name} in place ({}); recreating it",
                            e.to_io()
                        );
                        self.delete(name).await?;
                        return Ok(Outcome::Deleted);
                    }
                    Err(e) => return Err(Error::netlink(Operation::ChangeVxlan, name, e)),
                }
            }
            Step::Set { name, attrs } => {
                let index = self.require(name, Operation::SetLink).await?;
                let master = match &attrs.master {
                    Some(MasterChange::Attach(m)) => {
                        Some(self.index(m).await?.ok_or_else(|| Error::MasterMissing {
                            interface: name.clone(),
                            master: m.clone(),
                        })?)
                    }
                    Some(MasterChange::Detach) => Some(0),
                    None => None,
                };
                self.writes.add();
                self.handle
                    .link()
                    .set(set_msg(index, attrs, master))
                    .execute()
                    .await
                    .map_err(|e| Error::netlink(Operation::SetLink, name, e))?;
            }
            Step::AddPeer { name, dst } => {
                let index = self.require(name, Operation::AddFdbEntry).await?;
                self.append_fdb(name, fdb_msg(index, *dst)).await?;
            }
            Step::RestoreDefault { name, dst, carrier } => {
                let index = self.require(name, Operation::AddFdbEntry).await?;
                let via = self.require(carrier, Operation::AddFdbEntry).await?;
                let mut msg = fdb_msg(index, *dst);
                msg.attributes.push(NeighbourAttribute::IfIndex(via));
                self.append_fdb(name, msg).await?;
            }
            Step::DelPeer { name, dst } => {
                let index = self.require(name, Operation::DeleteFdbEntry).await?;
                self.writes.add();
                match self.handle.neighbours().del(fdb_msg(index, *dst)).execute().await {
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENOENT => {}
                    other => other.map_err(|e| Error::netlink(Operation::DeleteFdbEntry, name, e))?,
                }
            }
        }
        Ok(Outcome::Done)
    }

    /// `RTM_NEWLINK` with create, exclusive and echo: the kernel (6.1 and later)
    /// echoes the new link, which gives its index without a read. Older kernels
    /// do not echo; the index is then read when first needed.
    async fn create(&mut self, name: &str, msg: LinkMessage, op: Operation) -> Result<(), Error> {
        self.indices.remove(name);
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewLink(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO;
        self.writes.add();
        let mut handle = self.handle.clone();
        let mut response = handle.request(req).map_err(|e| Error::netlink(op, name, e))?;
        while let Some(msg) = response.next().await {
            match msg.payload {
                NetlinkPayload::Error(e) => {
                    return Err(Error::netlink(op, name, rtnetlink::Error::NetlinkError(e)));
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link))
                    if link.attributes.contains(&LinkAttribute::IfName(name.to_string())) =>
                {
                    self.indices.insert(name.to_string(), link.header.index);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// `RTM_NEWNEIGH` with create and append for an FDB entry of `name`; one that is
    /// there already is fine.
    async fn append_fdb(&mut self, name: &str, msg: NeighbourMessage) -> Result<(), Error> {
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
        self.writes.add();
        match self.request(req).await {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            other => other.map_err(|e| Error::netlink(Operation::AddFdbEntry, name, e)),
        }
    }

    /// Deletes `names` in one batch: each put in interface group [`DELETE_GROUP`],
    /// then one `RTM_DELLINK` of that group, which the kernel unregisters together
    /// (one RCU grace period for all, instead of one per interface). False, with
    /// nothing deleted, when the group is in use by another interface or a write
    /// fails: the caller then deletes them one at a time. An interface left in the
    /// group by a failed batch is still unwanted, so the next pass deletes it again.
    async fn delete_batch(&mut self, names: &[&str]) -> bool {
        let span = tracing::info_span!("apply", interfaces = names.len());
        let _guard = span.enter();
        let mut indices = Vec::new();
        for name in names {
            match self.index(name).await {
                Ok(Some(index)) => indices.push(index),
                Ok(None) => {}
                Err(_) => return false,
            }
        }
        match self.group_members(DELETE_GROUP).await {
            Ok(members) if members.iter().all(|m| indices.contains(m)) => {}
            Ok(members) => {
                warn!(
                    group = DELETE_GROUP,
                    ?members,
                    "interface group in use by other interfaces: deleting one at a time"
                );
                return false;
            }
            Err(e) => {
                warn!(error = %e, "listing interfaces: deleting one at a time");
                return false;
            }
        }
        for index in &indices {
            let mut msg = LinkMessage::default();
            msg.header.index = *index;
            msg.attributes.push(LinkAttribute::Group(DELETE_GROUP));
            self.writes.add();
            if let Err(e) = self.handle.link().set(msg).execute().await {
                warn!(error = %e, index, "putting an interface in the delete group: deleting one at a time");
                return false;
            }
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::Group(DELETE_GROUP));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::DelLink(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        self.writes.add();
        match self.request(req).await {
            Ok(()) => {
                info!(deleted = ?names, "netlink write: deleted in one batch");
                for name in names {
                    self.indices.remove(*name);
                }
                true
            }
            Err(e) => {
                warn!(error = %e, "deleting the delete group: deleting one at a time");
                false
            }
        }
    }

    /// Indices of the interfaces in interface group `group` (one dump, a read).
    async fn group_members(&self, group: u32) -> Result<Vec<u32>, rtnetlink::Error> {
        let mut links = self.handle.link().get().execute();
        let mut members = Vec::new();
        while let Some(msg) = links.try_next().await? {
            if msg
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Group(g) if *g == group))
            {
                members.push(msg.header.index);
            }
        }
        Ok(members)
    }

    async fn delete(&mut self, name: &str) -> Result<(), Error> {
        let Some(index) = self.index(name).await? else {
            debug!("already gone");
            return Ok(());
        };
        self.writes.add();
        let result = self.handle.link().del(index).execute().await;
        self.indices.remove(name);
        match result {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
            other => other.map_err(|e| Error::netlink(Operation::DeleteLink, name, e)),
        }
    }

    async fn require(&mut self, name: &str, op: Operation) -> Result<u32, Error> {
        self.index(name).await?.ok_or_else(|| Error::Missing {
            op,
            target: name.to_string(),
        })
    }

    /// The index of `name`: known from the snapshot, or read back (interfaces
    /// created in this pass). A read, never counted as a write.
    async fn index(&mut self, name: &str) -> Result<Option<u32>, Error> {
        if let Some(i) = self.indices.get(name) {
            return Ok(Some(*i));
        }
        let mut links = self.handle.link().get().match_name(name).execute();
        match links.try_next().await {
            Ok(Some(msg)) => {
                self.indices.insert(name.to_string(), msg.header.index);
                Ok(Some(msg.header.index))
            }
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(Error::netlink(Operation::GetLink, name, e)),
        }
    }

    async fn request(&self, req: NetlinkMessage<RouteNetlinkMessage>) -> Result<(), rtnetlink::Error> {
        let mut handle = self.handle.clone();
        let mut response = handle.request(req)?;
        while let Some(msg) = response.next().await {
            if let NetlinkPayload::Error(e) = msg.payload {
                return Err(rtnetlink::Error::NetlinkError(e));
            }
        }
        Ok(())
    }
}

/// The interface group that deletions in one batch go through ("nnod"): a number
/// no other tool picks, and checked to be free before each use.
pub const DELETE_GROUP: u32 = 0x6e6e_6f64;

/// Deletions from this many on are done in one batch ([`Applier::delete_batch`]).
const BATCH_DELETE_MIN: usize = 4;

/// A bridge, STP explicitly off, admin-down.
pub(crate) fn create_bridge_msg(name: &str) -> LinkMessage {
    LinkMessageBuilder::<LinkBridge>::new(name)
        .stp_state(BridgeStpState::Disabled)
        .build()
}

pub(crate) fn stp_off_msg(index: u32) -> LinkMessage {
    LinkMessageBuilder::<LinkBridge>::new_with_info_kind(InfoKind::Bridge)
        .index(index)
        .stp_state(BridgeStpState::Disabled)
        .build()
}

/// A VXLAN with every setting, admin-down. The carrier precedes the group.
pub(crate) fn create_vxlan_msg(name: &str, p: &VxlanParams, carrier: u32) -> LinkMessage {
    let mut b = LinkMessageBuilder::<LinkVxlan>::new(name)
        .id(p.vni)
        .dev(carrier)
        .port(p.port)
        .learning(p.learning)
        .ttl(p.ttl);
    b = local(b, p.local);
    if let Some(r) = p.remote {
        b = remote(b, r);
    }
    if let Some((lo, hi)) = p.source_ports {
        b = b.port_range(lo, hi);
    }
    b.build()
}

/// The in-place VXLAN changes only: the kernel refuses port, port range and
/// family changes even when the value is unchanged, so those are never sent.
pub(crate) fn change_vxlan_msg(index: u32, c: &VxlanChange, carrier: Option<u32>) -> LinkMessage {
    let mut b = LinkMessageBuilder::<LinkVxlan>::new_with_info_kind(InfoKind::Vxlan)
        .index(index)
        .id(c.vni);
    if let Some(i) = carrier {
        b = b.dev(i);
    }
    if let Some(l) = c.local {
        b = local(b, l);
    }
    match c.remote {
        Some(RemoteChange::Set(r)) => b = remote(b, r),
        Some(RemoteChange::Clear(Family::V4)) => b = b.group(Ipv4Addr::UNSPECIFIED),
        Some(RemoteChange::Clear(Family::V6)) => b = b.group6(Ipv6Addr::UNSPECIFIED),
        None => {}
    }
    if let Some(l) = c.learning {
        b = b.learning(l);
    }
    if let Some(t) = c.ttl {
        b = b.ttl(t);
    }
    b.build()
}

fn local(b: LinkMessageBuilder<LinkVxlan>, ip: IpAddr) -> LinkMessageBuilder<LinkVxlan> {
    match ip {
        IpAddr::V4(v4) => b.local(v4),
        IpAddr::V6(v6) => b.local6(v6),
    }
}

fn remote(b: LinkMessageBuilder<LinkVxlan>, ip: IpAddr) -> LinkMessageBuilder<LinkVxlan> {
    match ip {
        IpAddr::V4(v4) => b.group(v4),
        IpAddr::V6(v6) => b.group6(v6),
    }
}

/// One `RTM_SETLINK`; `master`: `Some(0)` detaches.
pub(crate) fn set_msg(index: u32, a: &SetAttrs, master: Option<u32>) -> LinkMessage {
    let mut b = LinkUnspec::new_with_index(index);
    if let Some(alias) = &a.alias {
        b = b.alias(alias.clone());
    }
    if let Some(mtu) = a.mtu {
        b = b.mtu(mtu);
    }
    if let Some(m) = master {
        b = b.controller(m);
    }
    match a.up {
        Some(true) => b = b.up(),
        Some(false) => b = b.down(),
        None => {}
    }
    b.build()
}

/// `bridge fdb append 00:00:00:00:00:00 dev VXLAN dst DST` (self, permanent).
pub(crate) fn fdb_msg(index: u32, dst: IpAddr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m.header.flags = NeighbourFlags::Own;
    m.header.kind = RouteType::Unspec;
    m.attributes = vec![
        NeighbourAttribute::LinkLayerAddress(vec![0; 6]),
        NeighbourAttribute::Destination(match dst {
            IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
            IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
        }),
    ];
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::{InfoBridge, InfoData, InfoVxlan, LinkFlags, LinkInfo};

    fn vxlan_data(m: &LinkMessage) -> Vec<InfoVxlan> {
        m.attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                    LinkInfo::Data(InfoData::Vxlan(v)) => Some(v.clone()),
                    _ => None,
                }),
                _ => None,
            })
            .unwrap_or_default()
    }

    fn params() -> VxlanParams {
        VxlanParams {
            vni: 42,
            port: 4789,
            source_ports: Some((1000, 2000)),
            learning: false,
            ttl: 0,
            remote: Some("239.1.1.1".parse().unwrap()),
            local: "198.18.0.1".parse().unwrap(),
            carrier: "eth1".into(),
        }
    }

    #[test]
    fn create_vxlan_sets_the_carrier_before_the_group_and_stays_down() {
        let m = create_vxlan_msg("vx0", &params(), 3);
        assert!(!m.header.flags.contains(LinkFlags::Up));
        assert!(m.attributes.contains(&LinkAttribute::IfName("vx0".into())));
        let data = vxlan_data(&m);
        let pos = |f: &dyn Fn(&InfoVxlan) -> bool| data.iter().position(f).unwrap();
        let link = pos(&|i| matches!(i, InfoVxlan::Link(3)));
        let group = pos(&|i| matches!(i, InfoVxlan::Group(_)));
        assert!(link < group, "{data:?}");
        assert!(data.contains(&InfoVxlan::Id(42)));
        assert!(data.contains(&InfoVxlan::Port(4789)));
        assert!(data.contains(&InfoVxlan::PortRange((1000, 2000))));
        assert!(data.contains(&InfoVxlan::Local("198.18.0.1".parse().unwrap())));
        assert!(data.contains(&InfoVxlan::Learning(false)));
    }

    #[test]
    fn create_vxlan_ipv6_uses_the_v6_attributes() {
        let mut p = params();
        p.remote = Some("2001:db8::2".parse().unwrap());
        p.local = "2001:db8::1".parse().unwrap();
        p.source_ports = None;
        let data = vxlan_data(&create_vxlan_msg("vx0", &p, 3));
        assert!(data.contains(&InfoVxlan::Group6("2001:db8::2".parse().unwrap())));
        assert!(data.contains(&InfoVxlan::Local6("2001:db8::1".parse().unwrap())));
        assert!(!data.iter().any(|i| matches!(i, InfoVxlan::PortRange(_))));
    }

    #[test]
    fn change_vxlan_never_sends_port_or_range() {
        let c = VxlanChange {
            vni: 42,
            learning: Some(true),
            remote: Some(RemoteChange::Clear(Family::V4)),
            ..VxlanChange::default()
        };
        let m = change_vxlan_msg(9, &c, None);
        assert_eq!(m.header.index, 9);
        let data = vxlan_data(&m);
        assert_eq!(
            data,
            vec![
                InfoVxlan::Id(42),
                InfoVxlan::Group(Ipv4Addr::UNSPECIFIED),
                InfoVxlan::Learning(true)
            ]
        );
        assert!(!m.attributes.iter().any(|a| matches!(a, LinkAttribute::IfName(_))));
    }

    #[test]
    fn stp_off_targets_the_index() {
        let m = stp_off_msg(5);
        assert_eq!(m.header.index, 5);
        let has_stp_off = m.attributes.iter().any(|a| {
            matches!(a, LinkAttribute::LinkInfo(i) if i.contains(&LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::StpState(BridgeStpState::Disabled)]))))
        });
        assert!(has_stp_off, "{m:?}");
    }

    #[test]
    fn set_msg_carries_only_what_changes() {
        let a = SetAttrs {
            alias: Some("nno.dev owner=Network/gw".into()),
            mtu: Some(1450),
            master: None,
            up: Some(true),
        };
        let m = set_msg(4, &a, Some(0));
        assert_eq!(m.header.index, 4);
        assert!(m.header.flags.contains(LinkFlags::Up));
        assert!(m.header.change_mask.contains(LinkFlags::Up));
        assert!(
            m.attributes
                .contains(&LinkAttribute::IfAlias("nno.dev owner=Network/gw".into()))
        );
        assert!(m.attributes.contains(&LinkAttribute::Mtu(1450)));
        assert!(m.attributes.contains(&LinkAttribute::Controller(0)));

        let down = set_msg(
            4,
            &SetAttrs {
                up: Some(false),
                ..SetAttrs::default()
            },
            None,
        );
        assert!(!down.header.flags.contains(LinkFlags::Up));
        assert!(down.header.change_mask.contains(LinkFlags::Up));
        assert!(down.attributes.is_empty());
    }

    #[test]
    fn fdb_entry_is_all_zero_self_permanent() {
        let m = fdb_msg(9, "198.18.0.2".parse().unwrap());
        assert_eq!(m.header.family, AddressFamily::Bridge);
        assert_eq!(m.header.ifindex, 9);
        assert_eq!(m.header.state, NeighbourState::Permanent);
        assert_eq!(m.header.flags, NeighbourFlags::Own);
        assert!(
            m.attributes
                .contains(&NeighbourAttribute::LinkLayerAddress(vec![0; 6]))
        );
    }
}
