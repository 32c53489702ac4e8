//! MTU arithmetic. The effective MTU of a Network is `spec.mtu` when set; otherwise
//! the smallest carrier MTU over the selected nodes minus the VXLAN overhead of the
//! underlay family, until the Network was once Ready everywhere with it: from then on
//! that MTU is established and kept (the pods use it; a node joining with a smaller
//! carrier is not Ready instead of shrinking the MTU under running pods); 1500 for a
//! bridge-only network. Bridge, VXLAN and NADs all use it.

use crate::api::IpFamily;
use crate::api::network::DEFAULT_LOCAL_MTU;

/// What one node reported about a Network's VXLAN carrier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CarrierReport {
    pub node: String,
    pub carrier_mtu: Option<u32>,
    /// The carrier interface, for messages.
    pub carrier: Option<String>,
}

/// A node whose carrier cannot carry the effective MTU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    pub node: String,
    /// The largest MTU its carrier allows.
    pub max: u32,
    pub carrier: Option<String>,
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.carrier {
            Some(c) => write!(f, "{} (carrier {c}: at most {})", self.node, self.max),
            None => write!(f, "{} (at most {})", self.node, self.max),
        }
    }
}

/// The outcome of the MTU derivation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effective {
    /// The MTU, and the node that limits it (derived case).
    Known { mtu: u32, limited_by: Option<String> },
    /// Derived, and no selected node has reported its carrier yet.
    Unknown,
    /// `spec.mtu` (or, `established`, the MTU kept for the Network's pods) is larger
    /// than these nodes' carriers can carry.
    TooLarge {
        mtu: u32,
        nodes: Vec<Limit>,
        established: bool,
    },
}

/// The largest MTU a VXLAN over a carrier of `carrier_mtu` can have.
pub fn vxlan_mtu(carrier_mtu: u32, family: IpFamily) -> u32 {
    carrier_mtu.saturating_sub(family.vxlan_overhead())
}

/// Derives the effective MTU. `reports` has one entry per selected node; for a
/// network without VXLAN pass `family: None`. `established`: the MTU the Network
/// keeps for its pods (ignored when `spec_mtu` is set).
pub fn effective(
    spec_mtu: Option<u32>,
    established: Option<u32>,
    family: Option<IpFamily>,
    reports: &[CarrierReport],
) -> Effective {
    let Some(family) = family else {
        return Effective::Known {
            mtu: spec_mtu.unwrap_or(DEFAULT_LOCAL_MTU),
            limited_by: None,
        };
    };
    let fixed = spec_mtu.map(|m| (m, false)).or(established.map(|m| (m, true)));
    if let Some((mtu, established)) = fixed {
        let nodes: Vec<Limit> = reports
            .iter()
            .filter_map(|r| {
                r.carrier_mtu.map(|c| Limit {
                    node: r.node.clone(),
                    max: vxlan_mtu(c, family),
                    carrier: r.carrier.clone(),
                })
            })
            .filter(|l| l.max < mtu)
            .collect();
        return if nodes.is_empty() {
            Effective::Known {
                mtu,
                limited_by: None,
            }
        } else {
            Effective::TooLarge {
                mtu,
                nodes,
                established,
            }
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
                carrier: m.map(|_| "eth0".to_string()),
            })
            .collect()
    }

    fn limit(node: &str, max: u32) -> Limit {
        Limit {
            node: node.into(),
            max,
            carrier: Some("eth0".into()),
        }
    }

    #[test]
    fn derived_from_the_smallest_carrier() {
        let all_9000 = reports(&[("a", Some(9000)), ("b", Some(9000))]);
        assert_eq!(
            effective(None, None, Some(IpFamily::IPv4), &all_9000),
            Effective::Known {
                mtu: 8950,
                limited_by: Some("a".into())
            }
        );
        let one_1500 = reports(&[("a", Some(9000)), ("b", Some(1500)), ("c", Some(9000))]);
        assert_eq!(
            effective(None, None, Some(IpFamily::IPv4), &one_1500),
            Effective::Known {
                mtu: 1450,
                limited_by: Some("b".into())
            }
        );
        assert_eq!(
            effective(None, None, Some(IpFamily::IPv6), &one_1500),
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
            effective(None, None, Some(IpFamily::IPv4), &partial),
            Effective::Known {
                mtu: 8950,
                limited_by: Some("a".into())
            }
        );
        let none = reports(&[("a", None), ("b", None)]);
        assert_eq!(
            effective(None, None, Some(IpFamily::IPv4), &none),
            Effective::Unknown
        );
        assert_eq!(
            effective(None, None, Some(IpFamily::IPv4), &[]),
            Effective::Unknown
        );
    }

    #[test]
    fn spec_mtu_wins_when_every_carrier_can_carry_it() {
        let r = reports(&[("a", Some(1500)), ("b", None)]);
        assert_eq!(
            effective(Some(1400), None, Some(IpFamily::IPv4), &r),
            Effective::Known {
                mtu: 1400,
                limited_by: None
            }
        );
        assert_eq!(
            effective(Some(1450), None, Some(IpFamily::IPv4), &r),
            Effective::Known {
                mtu: 1450,
                limited_by: None
            }
        );
        assert_eq!(
            effective(Some(1451), None, Some(IpFamily::IPv4), &r),
            Effective::TooLarge {
                mtu: 1451,
                nodes: vec![limit("a", 1450)],
                established: false,
            }
        );
    }

    #[test]
    fn bridge_only_networks() {
        assert_eq!(
            effective(None, None, None, &[]),
            Effective::Known {
                mtu: 1500,
                limited_by: None
            }
        );
        assert_eq!(
            effective(Some(9000), None, None, &[]),
            Effective::Known {
                mtu: 9000,
                limited_by: None
            }
        );
    }

    #[test]
    fn an_established_mtu_is_kept_when_a_smaller_node_joins() {
        let joined = reports(&[("a", Some(9000)), ("b", Some(9000)), ("c", Some(1500))]);
        assert_eq!(
            effective(None, Some(8950), Some(IpFamily::IPv4), &joined),
            Effective::TooLarge {
                mtu: 8950,
                nodes: vec![limit("c", 1450)],
                established: true,
            }
        );
        assert_eq!(limit("c", 1450).to_string(), "c (carrier eth0: at most 1450)");
        // Larger carriers do not raise it either: the pods keep their MTU.
        let bigger = reports(&[("a", Some(9000)), ("b", Some(9000))]);
        assert_eq!(
            effective(None, Some(1450), Some(IpFamily::IPv4), &bigger),
            Effective::Known {
                mtu: 1450,
                limited_by: None
            }
        );
        // spec.mtu says otherwise: it wins.
        assert_eq!(
            effective(Some(1450), Some(8950), Some(IpFamily::IPv4), &joined),
            Effective::Known {
                mtu: 1450,
                limited_by: None
            }
        );
    }

    #[test]
    fn tiny_carriers_do_not_underflow() {
        assert_eq!(vxlan_mtu(40, IpFamily::IPv4), 0);
    }
}
