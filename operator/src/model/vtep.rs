//! What a node may report about its VXLAN endpoints: the same bounds as the
//! NodeNetworkState schema (`api::node_state`), so an agent never writes a report the
//! API server refuses, and a peer's report is checked by the rule the schema states.

use std::net::IpAddr;
use std::ops::RangeInclusive;

/// MTUs a report may carry: IPv4's minimum to the loopback's 65536.
pub const MTU: RangeInclusive<u32> = 68..=65536;

/// Whether `addr` can be another host's VTEP: a unicast address that is not
/// loopback, link-local, the limited broadcast or unspecified (private ranges are
/// fine). The same as Go's `IsGlobalUnicast`, which the schema's CEL rule uses.
pub fn unicast(addr: &IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_multicast()
                || v4.is_link_local()
                || v4.is_broadcast())
        }
        IpAddr::V6(v6) => {
            !(v6.is_unspecified() || v6.is_loopback() || v6.is_multicast() || v6.is_unicast_link_local())
                && v6.to_ipv4_mapped().is_none_or(|v4| unicast(&IpAddr::V4(v4)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unicast_is_what_a_remote_vtep_can_have() {
        for ok in [
            "198.18.0.1",
            "10.0.0.1",
            "192.168.1.255",
            "2001:db8::1",
            "fd00::1",
        ] {
            assert!(unicast(&ok.parse().unwrap()), "{ok}");
        }
        for bad in [
            "0.0.0.0",
            "127.0.0.1",
            "169.254.1.1",
            "224.0.0.1",
            "239.1.1.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!unicast(&bad.parse().unwrap()), "{bad}");
        }
    }

    #[test]
    fn the_schema_bounds_reported_mtus_alike() {
        let crd =
            serde_json::to_value(<crate::api::NodeNetworkState as kube::CustomResourceExt>::crd()).unwrap();
        let props = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
            ["interfaces"]["items"]["properties"];
        for field in ["mtu", "carrierMtu"] {
            assert_eq!(
                (props[field]["minimum"].as_f64(), props[field]["maximum"].as_f64()),
                (Some(f64::from(*MTU.start())), Some(f64::from(*MTU.end()))),
                "{field}: {}",
                props[field]
            );
        }
    }
}
