//! Gateway routing: "everything but the cluster's own networks goes through the
//! router". The client attachment gets the complement of the excluded prefixes as
//! routes via the gateway, so the pod's default route (eth0) stays and reaches what
//! is excluded: Service ClusterIPs, other pods, the nodes. Pure.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Whether a prefix is IPv4 or IPv6, as the Network's range is.
fn same_family(a: &IpNet, b: &IpNet) -> bool {
    matches!(
        (a, b),
        (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
    )
}

/// The whole address space of `family`'s range: 0.0.0.0/0 or ::/0.
fn universe(of: &IpNet) -> IpNet {
    match of {
        IpNet::V4(_) => IpNet::V4(Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("/0 is valid")),
        IpNet::V6(_) => IpNet::V6(Ipv6Net::new(Ipv6Addr::UNSPECIFIED, 0).expect("/0 is valid")),
    }
}

/// The prefixes excluded from gateway routing, of the family of `range`: the given
/// ones, merged (`aggregate`) and sorted. Prefixes of the other family are dropped
/// (they concern another attachment).
pub fn in_force(range: &IpNet, excluded: &[IpNet]) -> Vec<IpNet> {
    let same: Vec<IpNet> = excluded
        .iter()
        .filter(|p| same_family(p, range))
        .map(|p| p.trunc())
        .collect();
    IpNet::aggregate(&same)
}

/// The complement of `excluded` within the address space of `range`'s family: the
/// fewest prefixes that cover every address no excluded prefix covers, in address
/// order. With nothing excluded it is the default route.
pub fn complement(range: &IpNet, excluded: &[IpNet]) -> Vec<IpNet> {
    let excluded = in_force(range, excluded);
    let mut out = Vec::new();
    split(universe(range), &excluded, &mut out);
    out
}

/// Adds to `out` the parts of `net` that no prefix of `excluded` covers.
fn split(net: IpNet, excluded: &[IpNet], out: &mut Vec<IpNet>) {
    if excluded.iter().any(|e| e.contains(&net)) {
        return; // wholly excluded
    }
    if !excluded.iter().any(|e| net.contains(e)) {
        out.push(net); // nothing excluded inside
        return;
    }
    // Something excluded lies inside: look at both halves.
    if let Ok(halves) = net.subnets(net.prefix_len() + 1) {
        for half in halves {
            split(half, excluded, out);
        }
    }
}

/// The prefixes a Network's gateway routing keeps on eth0, of its range's family:
/// its own `spec.gateway.exclude` plus, unless it opts out, `cluster` (the cluster's
/// Service CIDRs, pod CIDRs and node addresses). None without `spec.gateway` or with
/// a range that does not parse (the schema refuses both).
pub fn excludes(network: &crate::api::Network, cluster: &[IpNet]) -> Option<Vec<IpNet>> {
    let gateway = network.spec.gateway.as_ref()?;
    let range: IpNet = network.spec.ipam.range.parse().ok()?;
    let mut all: Vec<IpNet> = gateway.exclude.iter().filter_map(|c| c.parse().ok()).collect();
    if gateway.exclude_cluster {
        all.extend_from_slice(cluster);
    }
    Some(in_force(&range, &all))
}

/// A host prefix (/32 or /128) for an address.
pub fn host(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn v4() -> IpNet {
        "192.168.50.0/24".parse().unwrap()
    }

    /// Every address in `sample` is routed via the gateway iff no excluded prefix has it.
    fn check(routes: &[IpNet], excluded: &[IpNet], sample: &[&str]) {
        for s in sample {
            let ip: IpAddr = s.parse().unwrap();
            let via_gateway = routes.iter().any(|r| r.contains(&ip));
            let kept = excluded.iter().any(|e| e.contains(&ip));
            assert_eq!(via_gateway, !kept, "{ip}: routes {routes:?}");
        }
    }

    #[test]
    fn nothing_excluded_is_the_default_route() {
        assert_eq!(complement(&v4(), &[]), nets(&["0.0.0.0/0"]));
        let v6: IpNet = "fd00:50::/64".parse().unwrap();
        assert_eq!(complement(&v6, &[]), nets(&["::/0"]));
    }

    #[test]
    fn one_prefix_out_of_the_default_route() {
        let excluded = nets(&["10.96.0.0/12"]);
        let routes = complement(&v4(), &excluded);
        assert_eq!(routes.len(), 12, "one route per bit of the prefix: {routes:?}");
        check(
            &routes,
            &excluded,
            &[
                "10.96.0.1",
                "10.111.255.255",
                "10.95.255.255",
                "10.112.0.0",
                "8.8.8.8",
                "198.18.5.250",
                "255.255.255.255",
                "0.0.0.1",
            ],
        );
    }

    #[test]
    fn a_cluster_like_kinds_and_ours() {
        // Service CIDR, pod CIDRs of three nodes, the nodes' addresses.
        let excluded = nets(&[
            "198.19.128.0/20",
            "198.19.0.0/24",
            "198.19.1.0/24",
            "198.19.2.0/24",
            "198.18.5.11/32",
            "198.18.5.12/32",
            "198.18.5.13/32",
        ]);
        let routes = complement(&v4(), &excluded);
        check(
            &routes,
            &excluded,
            &[
                "198.19.128.1",
                "198.19.143.255",
                "198.19.144.0",
                "198.19.0.7",
                "198.19.2.200",
                "198.19.3.1",
                "198.18.5.11",
                "198.18.5.13",
                "198.18.5.14",
                "198.18.5.250",
                "198.18.5.1",
                "1.1.1.1",
            ],
        );
        // Adjacent pod CIDRs merge: 198.19.0.0/24 + 198.19.1.0/24 = 198.19.0.0/23.
        assert!(in_force(&v4(), &excluded).contains(&"198.19.0.0/23".parse().unwrap()));
        // Routes never overlap each other.
        for (i, a) in routes.iter().enumerate() {
            for b in &routes[i + 1..] {
                assert!(!a.contains(b) && !b.contains(a), "{a} and {b} overlap");
            }
        }
    }

    #[test]
    fn the_other_family_is_ignored_and_host_prefixes() {
        let excluded = vec![
            host("198.18.5.11".parse().unwrap()),
            host("2001:db8::11".parse().unwrap()),
        ];
        assert_eq!(in_force(&v4(), &excluded), nets(&["198.18.5.11/32"]));
        let v6: IpNet = "fd00:50::/64".parse().unwrap();
        assert_eq!(in_force(&v6, &excluded), nets(&["2001:db8::11/128"]));
        let routes = complement(&v6, &excluded);
        assert_eq!(routes.len(), 128);
        check(
            &routes,
            &in_force(&v6, &excluded),
            &["2001:db8::11", "2001:db8::12", "2606:4700::1111"],
        );
    }

    #[test]
    fn everything_excluded_leaves_no_route() {
        assert!(complement(&v4(), &nets(&["0.0.0.0/1", "128.0.0.0/1"])).is_empty());
    }
}
