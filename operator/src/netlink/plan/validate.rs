//! What the kernel would refuse or misread, checked before any write.

use super::*;

/// Checks what the kernel would refuse or misread, before any write.
pub fn validate(d: &DesiredLink) -> Result<(), String> {
    let n = &d.name;
    if crate::linux::check_interface_name(n).is_err() {
        return Err(format!(
            "interface name {n:?} is invalid: 1 to {} bytes, no '/', ':' or whitespace, not '.' or '..'",
            crate::linux::MAX_INTERFACE_NAME
        ));
    }
    let mtu_ok = |mtu: Option<u32>| match mtu {
        Some(m) if !(MIN_MTU..=MAX_MTU).contains(&m) => {
            Err(format!("MTU {m} of {n} is out of range {MIN_MTU}..={MAX_MTU}"))
        }
        _ => Ok(()),
    };
    match &d.kind {
        DesiredKind::Bridge { mtu } => mtu_ok(*mtu),
        DesiredKind::Unmanaged { master, .. } => match master {
            Some(m) if m == n => Err(format!("{n} cannot be its own master")),
            _ => Ok(()),
        },
        DesiredKind::Vxlan(cfg) => {
            mtu_ok(cfg.mtu)?;
            validate_vxlan(n, cfg)
        }
    }
}

fn validate_vxlan(n: &str, cfg: &VxlanConfig) -> Result<(), String> {
    if cfg.vni == 0 || cfg.vni > MAX_VNI {
        return Err(format!("VNI {} of {n} is out of range 1..={MAX_VNI}", cfg.vni));
    }
    if cfg.port == 0 {
        return Err(format!("destination port of {n} must not be 0"));
    }
    if let Some((lo, hi)) = cfg.source_ports
        && (lo == 0 || lo > hi)
    {
        return Err(format!("source port range {lo}-{hi} of {n} is invalid"));
    }
    if cfg.group.is_some() && cfg.remote.is_some() {
        return Err(format!(
            "{n}: set a multicast group or a unicast remote, not both"
        ));
    }
    if let Some(g) = cfg.group
        && !g.is_multicast()
    {
        return Err(format!("group {g} of {n} is not a multicast address"));
    }
    for ip in cfg.remote.iter().chain(&cfg.peers) {
        if ip.is_multicast() || ip.is_unspecified() {
            return Err(format!("remote {ip} of {n} is not a unicast address"));
        }
    }
    let family = underlay_family(cfg);
    let carrier_ip = match &cfg.carrier {
        Carrier::Named(c) if c == n => return Err(format!("{n} cannot be its own carrier")),
        Carrier::Named(_) => None,
        Carrier::RouteTo(ip) | Carrier::HoldingAddress(ip) => Some(ip),
    };
    for ip in cfg
        .group
        .iter()
        .chain(&cfg.remote)
        .chain(&cfg.peers)
        .chain(carrier_ip)
    {
        if Family::of(ip) != family {
            return Err(format!(
                "{n} mixes address families: {ip} is not {family} like the rest of its underlay"
            ));
        }
    }
    if cfg.master.as_deref() == Some(n) {
        return Err(format!("{n} cannot be its own master"));
    }
    Ok(())
}
