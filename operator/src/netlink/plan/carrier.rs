//! Finding the carrier of a VXLAN, its local address and underlay family.

use super::*;

/// The carrier of a VXLAN as found on the node.
#[derive(Debug)]
pub(super) struct ResolvedCarrier<'a> {
    pub(super) link: &'a ObservedLink,
    pub(super) local: IpAddr,
    pub(super) family: Family,
}

/// The underlay family: from the group, remote, peers, or carrier address; IPv4
/// when nothing says.
pub fn underlay_family(cfg: &VxlanConfig) -> Family {
    let carrier_ip = match &cfg.carrier {
        Carrier::Named(_) => None,
        Carrier::RouteTo(ip) | Carrier::HoldingAddress(ip) => Some(*ip),
    };
    cfg.group
        .or(cfg.remote)
        .or(cfg.peers.first().copied())
        .or(carrier_ip)
        .map(|ip| Family::of(&ip))
        .unwrap_or(Family::V4)
}

pub(super) fn resolve_carrier<'a>(
    name: &str,
    cfg: &VxlanConfig,
    obs: &'a Observed,
) -> Result<ResolvedCarrier<'a>, Problem> {
    let family = underlay_family(cfg);
    let missing = |msg: String| Problem::new(reason::CARRIER_MISSING, msg);
    let (link, preferred) = match &cfg.carrier {
        Carrier::Named(c) => {
            let link = obs.links.get(c).ok_or_else(|| {
                missing(format!(
                    "carrier interface {c} of VXLAN {name} does not exist; the VXLAN is created when it appears"
                ))
            })?;
            (link, None)
        }
        Carrier::RouteTo(ip) => {
            let hit = obs.routes.get(ip).copied().flatten().ok_or_else(|| {
                missing(format!(
                    "no route to {ip}, so VXLAN {name} has no carrier; the VXLAN is created when a route appears"
                ))
            })?;
            let link = obs.by_index(hit.oif).ok_or_else(|| {
                missing(format!(
                    "the route to {ip} leaves through interface index {}, which is gone",
                    hit.oif
                ))
            })?;
            (link, hit.prefsrc.filter(|s| Family::of(s) == family))
        }
        Carrier::HoldingAddress(ip) => {
            let link = obs.holder_of(ip).ok_or_else(|| {
                missing(format!(
                    "no interface holds {ip}, so VXLAN {name} has no carrier; the VXLAN is created when the address appears"
                ))
            })?;
            (link, Some(*ip))
        }
    };
    if link.name == name {
        return Err(missing(format!(
            "the carrier of VXLAN {name} resolves to {name} itself; route the underlay over another interface"
        )));
    }
    let local = preferred
        .or_else(|| obs.address_of(link.index, family))
        .ok_or_else(|| {
            Problem::new(
                reason::CARRIER_ADDRESS_MISSING,
                format!(
                    "carrier {} of VXLAN {name} has no {family} address to use as VTEP address; add one",
                    link.name
                ),
            )
        })?;
    Ok(ResolvedCarrier { link, local, family })
}
