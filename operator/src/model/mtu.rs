//! MTU arithmetic. The effective MTU of a Network is `spec.mtu` when set; otherwise
//! the smallest carrier MTU over the selected nodes minus the VXLAN overhead of the
//! underlay family; 1500 for a bridge-only network. Bridge, VXLAN and NADs all use it.

use crate::api::IpFamily;
use crate::api::network::DEFAULT_LOCAL_MTU;

/// What one node reported about a Network's VXLAN carrier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CarrierReport {
    pub node: String,
    pub carrier_mtu: Option<u32>,
}

/// The outcome of the MTU derivation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effective {
    /// The MTU, and the node that limits it (derived case).
    Known { mtu: u32, limited_by: Option<String> },
    /// Derived, and no selected node has reported its carrier yet.
    Unknown,
    /// `spec.mtu` is larger than these nodes' carriers can carry: (node, largest MTU
    /// its carrier allows).
    TooLarge { mtu: u32, nodes: Vec<(String, u32)> },
}

/// The largest MTU a VXLAN over a carrier of `carrier_mtu` can have.
pub fn vxlan_mtu(carrier_mtu: u32, family: IpFamily) -> u32 {
    carrier_mtu.saturating_sub(family.vxlan_overhead())
}

/// Derives the effective MTU. `reports` has one entry per selected node; for a
/// network without VXLAN pass `family: None`.
pub fn effective(spec_mtu: Option<u32>, family: Option<IpFamily>, reports: &[CarrierReport]) -> Effective {
    let Some(family) = family else {
        return Effective::Known {
            mtu: spec_mtu.unwrap_or(DEFAULT_LOCAL_MTU),
            limited_by: None,
        };
    };
    if let Some(mtu) = spec_mtu {
        let nodes: Vec<(String, u32)> = reports
            .iter()
            .filter_map(|r| r.carrier_mtu.map(|c| (r.node.clone(), vxlan_mtu(c, family))))
            .filter(|(_, max)| *max < mtu)
            .collect();
        return if nodes.is_empty() {
            Effective::Known {
                mtu,
                limited_by: None,
            }
        } else {
            Effective::TooLarge { mtu, nodes }
        };
    }
    let smallest = reports
        .iter()
        .filter_map(|r| r.carrier_mtu.map(|c| (r.node.clone(), c)))
        .min_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    match smallest {
        Some((node, carrier)) => Effective::Known {
            mtu: vxlan_mtu(carrier, family),
            limited_by: Some(node),
        },
        None => Effective::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reports(list: &[(&str, Option<u32>)]) -> Vec<CarrierReport> {
        list.iter()
            .map(|(n, m)| CarrierReport {
                node: n.to_string(),
                carrier_mtu: *m,
            })
            .collect()
    }

    #[test]
    fn derived_from_the_smallest_carrier() {
        let all_9000 = reports(&[("a", Some(9000)), ("b", Some(9000))]);
        assert_eq!(
            effective(None, Some(IpFamily::IPv4), &all_9000),
            Effective::Known {
                mtu: 8950,
                limited_by: Some("a".into())
            }
        );
        let one_1500 = reports(&[("a", Some(9000)), ("b", Some(1500)), ("c", Some(9000))]);
        assert_eq!(
            effective(None, Some(IpFamily::IPv4), &one_1500),
            Effective::Known {
                mtu: 1450,
                limited_by: Some("b".into())
            }
        );
        assert_eq!(
            effective(None, Some(IpFamily::IPv6), &one_1500),
            Effective::Known {
                mtu: 1430,
                limited_by: Some("b".into())
            }
        );
    }

    #[test]
    fn never_guessed_before_a_node_reports() {
        let partial = reports(&[("a", Some(9000)), ("b", None)]);
        assert_eq!(
            effective(None, Some(IpFamily::IPv4), &partial),
            Effective::Known {
                mtu: 8950,
                limited_by: Some("a".into())
            }
        );
        let none = reports(&[("a", None), ("b", None)]);
        assert_eq!(effective(None, Some(IpFamily::IPv4), &none), Effective::Unknown);
        assert_eq!(effective(None, Some(IpFamily::IPv4), &[]), Effective::Unknown);
    }

    #[test]
    fn spec_mtu_wins_when_every_carrier_can_carry_it() {
        let r = reports(&[("a", Some(1500)), ("b", None)]);
        assert_eq!(
            effective(Some(1400), Some(IpFamily::IPv4), &r),
            Effective::Known {
                mtu: 1400,
                limited_by: None
            }
        );
        assert_eq!(
            effective(Some(1450), Some(IpFamily::IPv4), &r),
            Effective::Known {
                mtu: 1450,
                limited_by: None
            }
        );
        assert_eq!(
            effective(Some(1451), Some(IpFamily::IPv4), &r),
            Effective::TooLarge {
                mtu: 1451,
                nodes: vec![("a".into(), 1450)]
            }
        );
    }

    #[test]
    fn bridge_only_networks() {
        assert_eq!(
            effective(None, None, &[]),
            Effective::Known {
                mtu: 1500,
                limited_by: None
            }
        );
        assert_eq!(
            effective(Some(9000), None, &[]),
            Effective::Known {
                mtu: 9000,
                limited_by: None
            }
        );
    }

    #[test]
    fn tiny_carriers_do_not_underflow() {
        assert_eq!(vxlan_mtu(40, IpFamily::IPv4), 0);
    }
}
