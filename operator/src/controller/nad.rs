//! Renders a Network's NetworkAttachmentDefinitions: pure functions from the Network,
//! its effective MTU and the cluster settings to CNI conflists.
//!
//! Each conflist runs `nno-cni-shim` first (it holds the attachment until the node's
//! bridge is Ready), then the bridge plugin on the node bridge with the effective MTU.
//! Traps rendered around (each pinned by a test: this module's, `e2e/tests/pods.rs`):
//! - whereabouts does not exclude its `gateway` from allocation: the gateway and the
//!   router's static address are added to `exclude`;
//! - `isGateway`/`isDefaultGateway` would put one gateway address on every node's
//!   bridge, duplicated across the VXLAN: always false (the router pod is the gateway);
//! - `preserveDefaultVlan` changed its default in 2025: always rendered;
//! - the bridge plugin's `mtu` sets the pod veth MTU: it is the effective MTU;
//! - a router forwards: its conflist ends with the `tuning` plugin turning IP
//!   forwarding on in the router pod's network namespace (for the range's family), so
//!   the router needs no privileged sysctl or init container for it. (Its NAT or VPN is
//!   still its own business.)

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::api::Network;

/// CNI spec versions the rendered conflists can declare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CniVersion {
    #[value(name = "0.3.1")]
    V0_3_1,
    #[value(name = "0.4.0")]
    V0_4_0,
    #[value(name = "1.0.0")]
    V1_0_0,
}

impl CniVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
        }
    }
}

/// Cluster-wide rendering settings (controller flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub cni_version: CniVersion,
    /// Readiness socket of the agent, as seen by the shim on the host.
    pub shim_socket: String,
    /// How long the shim holds an attachment waiting for the bridge.
    pub shim_timeout_seconds: u32,
    /// Kubeconfig whereabouts uses on the nodes.
    pub whereabouts_kubeconfig: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            cni_version: CniVersion::V1_0_0,
            shim_socket: crate::readiness::DEFAULT_SOCKET.into(),
            shim_timeout_seconds: 20,
            whereabouts_kubeconfig: "/etc/cni/net.d/whereabouts.d/whereabouts.kubeconfig".into(),
        }
    }
}

/// Which attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Client pods: addresses from whereabouts, routes via the gateway.
    Client,
    /// The gateway pod: a static address.
    Router,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Router => "router",
        }
    }
}

/// One rendered NetworkAttachmentDefinition (per target namespace).
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    pub name: String,
    pub role: Role,
    pub config: Value,
}

/// Errors in a Network the schema could not catch.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    #[error("spec.ipam.range {0:?} is not a CIDR")]
    Range(String),
    #[error("spec.attachments.router.address {0:?} is not an IP address")]
    RouterAddress(String),
    #[error("{field} {value:?} is not an IP address")]
    Address { field: &'static str, value: String },
    #[error("spec.attachments.router.addresses {start}-{end}: {why}")]
    RouterRange { start: String, end: String, why: String },
}

/// Most addresses `spec.attachments.router.addresses` may hold.
pub const MAX_ROUTERS: u32 = 64;

/// What the router attachment hands out: one static address, or a range of them for
/// routers that share the gateway.
enum Routers {
    One(IpAddr),
    Range {
        start: IpAddr,
        end: IpAddr,
        cidrs: Vec<IpNet>,
    },
}

fn routers(network: &Network) -> Result<Option<Routers>, RenderError> {
    let Some(router) = &network.spec.attachments.router else {
        return Ok(None);
    };
    if let Some(address) = &router.address {
        let ip = address
            .parse()
            .map_err(|_| RenderError::RouterAddress(address.clone()))?;
        return Ok(Some(Routers::One(ip)));
    }
    let Some(range) = &router.addresses else {
        return Ok(None); // the schema requires one of the two
    };
    let start = parse_ip("spec.attachments.router.addresses.start", &range.start)?;
    let end = parse_ip("spec.attachments.router.addresses.end", &range.end)?;
    let refuse = |why: String| RenderError::RouterRange {
        start: range.start.clone(),
        end: range.end.clone(),
        why,
    };
    let (cidrs, size): (Vec<IpNet>, u128) = match (start, end) {
        (IpAddr::V4(s), IpAddr::V4(e)) if s <= e => (
            ipnet::Ipv4Subnets::new(s, e, 0).map(IpNet::V4).collect(),
            u128::from(u32::from(e) - u32::from(s)) + 1,
        ),
        (IpAddr::V6(s), IpAddr::V6(e)) if s <= e => (
            ipnet::Ipv6Subnets::new(s, e, 0).map(IpNet::V6).collect(),
            u128::from(e) - u128::from(s) + 1,
        ),
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
            return Err(refuse("start comes after end".into()));
        }
        _ => return Err(refuse("start and end are of different families".into())),
    };
    if size > u128::from(MAX_ROUTERS) {
        return Err(refuse(format!("{size} addresses, at most {MAX_ROUTERS}")));
    }
    if let Some(gw) = &network.spec.ipam.gateway {
        let gw = parse_ip("spec.ipam.gateway", gw)?;
        if cidrs.iter().any(|c| c.contains(&gw)) {
            return Err(refuse(format!(
                "it holds ipam.gateway {gw}, the virtual address the routers share: keep the gateway outside it"
            )));
        }
    }
    Ok(Some(Routers::Range { start, end, cidrs }))
}

/// Renders the client and (when asked) router attachments of `network` at `mtu`.
/// `gateway_excludes`: with `spec.gateway`, the prefixes kept on eth0
/// ([`crate::model::routes::excludes`]); the client attachment routes the rest via
/// `ipam.gateway`.
pub fn render(
    network: &Network,
    mtu: u32,
    settings: &Settings,
    gateway_excludes: &[IpNet],
) -> Result<Vec<Rendered>, RenderError> {
    let ipam = &network.spec.ipam;
    let range: IpNet = ipam
        .range
        .parse()
        .map_err(|_| RenderError::Range(ipam.range.clone()))?;
    let mut out = vec![Rendered {
        name: network.attachment_name(),
        role: Role::Client,
        config: conflist(
            &network.attachment_name(),
            network,
            mtu,
            settings,
            client_ipam(network, settings, gateway_excludes)?,
        ),
    }];
    if let (Some(routers), Some(name)) = (routers(network)?, network.router_attachment_name()) {
        let ipam = match routers {
            Routers::One(address) => json!({
                "type": "static",
                "addresses": [{"address": format!("{address}/{}", range.prefix_len())}],
            }),
            // From the Network's pool, where the clients' attachment excludes them;
            // no gateway: the routers hold it.
            Routers::Range { start, end, .. } => json!({
                "type": "whereabouts",
                "range": ipam.range,
                "range_start": start.to_string(),
                "range_end": end.to_string(),
                "network_name": pool_name(network),
                "kubernetes": {"kubeconfig": settings.whereabouts_kubeconfig},
            }),
        };
        let mut config = conflist(&name, network, mtu, settings, ipam);
        let forwarding = match range {
            IpNet::V4(_) => "net.ipv4.ip_forward",
            IpNet::V6(_) => "net.ipv6.conf.all.forwarding",
        };
        if let Some(plugins) = config["plugins"].as_array_mut() {
            plugins.push(json!({"type": "tuning", "sysctl": {forwarding: "1"}}));
        }
        out.push(Rendered {
            name: name.clone(),
            role: Role::Router,
            config,
        });
    }
    Ok(out)
}

fn conflist(name: &str, network: &Network, mtu: u32, settings: &Settings, ipam: Value) -> Value {
    let bridge = network.spec.bridge.name.as_str();
    // The shim asks the agent whether this Network's bridge is Ready, not merely a
    // bridge of that name (another Network's or a Link's on some node).
    let mut owner = json!({"name": network.name_any()});
    if let Some(uid) = &network.metadata.uid {
        owner["uid"] = json!(uid);
    }
    json!({
        "cniVersion": settings.cni_version.as_str(),
        "name": name,
        "plugins": [
            {
                "type": "nno-cni-shim",
                "bridge": bridge,
                "network": owner,
                "socket": settings.shim_socket,
                "timeoutSeconds": settings.shim_timeout_seconds,
            },
            {
                "type": "bridge",
                "bridge": bridge,
                "mtu": mtu,
                "isGateway": false,
                "isDefaultGateway": false,
                "forceAddress": false,
                "ipMasq": false,
                "hairpinMode": false,
                "promiscMode": false,
                "preserveDefaultVlan": false,
                "ipam": ipam,
            }
        ]
    })
}

/// The whereabouts pool of a Network: clients and routers allocate from it.
fn pool_name(network: &Network) -> String {
    format!("nno-{}", network.name_any())
}

fn host_cidr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

fn parse_ip(field: &'static str, value: &str) -> Result<IpAddr, RenderError> {
    value.parse().map_err(|_| RenderError::Address {
        field,
        value: value.to_string(),
    })
}

fn client_ipam(
    network: &Network,
    settings: &Settings,
    gateway_excludes: &[IpNet],
) -> Result<Value, RenderError> {
    let ipam = &network.spec.ipam;
    let mut exclude: Vec<String> = ipam.exclude.clone();
    let mut extra = Vec::new();
    if let Some(gw) = &ipam.gateway {
        extra.push(host_cidr(parse_ip("spec.ipam.gateway", gw)?));
    }
    match routers(network)? {
        Some(Routers::One(ip)) => extra.push(host_cidr(ip)),
        Some(Routers::Range { cidrs, .. }) => extra.extend(cidrs.iter().map(IpNet::to_string)),
        None => {}
    }
    for cidr in extra {
        if !exclude.contains(&cidr) {
            exclude.push(cidr);
        }
    }

    let mut out = BTreeMap::new();
    out.insert("type", json!("whereabouts"));
    out.insert("range", json!(ipam.range));
    if let Some(start) = &ipam.range_start {
        out.insert("range_start", json!(start));
    }
    if let Some(end) = &ipam.range_end {
        out.insert("range_end", json!(end));
    }
    if !exclude.is_empty() {
        out.insert("exclude", json!(exclude));
    }
    if let Some(gw) = &ipam.gateway {
        out.insert("gateway", json!(gw));
    }
    let mut routes: Vec<Value> = ipam
        .routes
        .iter()
        .map(|r| match r.gw.as_ref().or(ipam.gateway.as_ref()) {
            Some(gw) => json!({"dst": r.dst, "gw": gw}),
            None => json!({"dst": r.dst}),
        })
        .collect();
    if let (Some(_), Some(gw)) = (&network.spec.gateway, &ipam.gateway) {
        let range: IpNet = ipam
            .range
            .parse()
            .map_err(|_| RenderError::Range(ipam.range.clone()))?;
        for dst in crate::model::routes::complement(&range, gateway_excludes) {
            routes.push(json!({"dst": dst.to_string(), "gw": gw}));
        }
    }
    if !routes.is_empty() {
        out.insert("routes", json!(routes));
    }
    // A pool of its own per Network, so two Networks with the same range never hand
    // out the same address twice or trip over each other's reservations.
    out.insert("network_name", json!(pool_name(network)));
    out.insert(
        "kubernetes",
        json!({"kubeconfig": settings.whereabouts_kubeconfig}),
    );
    Ok(json!(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(spec: Value) -> Network {
        serde_json::from_value(json!({
            "apiVersion": "nno.dev/v1alpha1", "kind": "Network", "metadata": {"name": "gw"}, "spec": spec
        }))
        .unwrap()
    }

    fn full() -> Network {
        network(json!({
            "bridge": {"name": "br-gw"},
            "vxlan": {"vni": 100, "group": "239.1.1.1"},
            "ipam": {
                "range": "192.168.50.0/24",
                "rangeStart": "192.168.50.10",
                "rangeEnd": "192.168.50.200",
                "exclude": ["192.168.50.128/28"],
                "gateway": "192.168.50.1",
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.0.0.0/8", "gw": "192.168.50.2"}]
            },
            "attachments": {"namespaces": ["default"], "name": "clients", "router": {"name": "router", "address": "192.168.50.1"}}
        }))
    }

    #[test]
    fn client_attachment_renders_every_field() {
        let rendered = render(&full(), 1450, &Settings::default(), &[]).unwrap();
        assert_eq!(rendered.len(), 2);
        let client = &rendered[0];
        assert_eq!((client.name.as_str(), client.role), ("clients", Role::Client));
        assert_eq!(
            client.config,
            json!({
                "cniVersion": "1.0.0",
                "name": "clients",
                "plugins": [
                    {"type": "nno-cni-shim", "bridge": "br-gw", "network": {"name": "gw"}, "socket": "/run/nno/agent.sock", "timeoutSeconds": 20},
                    {
                        "type": "bridge", "bridge": "br-gw", "mtu": 1450,
                        "isGateway": false, "isDefaultGateway": false, "forceAddress": false,
                        "ipMasq": false, "hairpinMode": false, "promiscMode": false, "preserveDefaultVlan": false,
                        "ipam": {
                            "type": "whereabouts",
                            "range": "192.168.50.0/24",
                            "range_start": "192.168.50.10",
                            "range_end": "192.168.50.200",
                            "exclude": ["192.168.50.128/28", "192.168.50.1/32"],
                            "gateway": "192.168.50.1",
                            "routes": [{"dst": "0.0.0.0/0", "gw": "192.168.50.1"}, {"dst": "10.0.0.0/8", "gw": "192.168.50.2"}],
                            "network_name": "nno-gw",
                            "kubernetes": {"kubeconfig": "/etc/cni/net.d/whereabouts.d/whereabouts.kubeconfig"}
                        }
                    }
                ]
            })
        );
    }

    #[test]
    fn router_attachment_has_the_static_address_with_the_range_prefix() {
        let rendered = render(&full(), 1450, &Settings::default(), &[]).unwrap();
        let router = &rendered[1];
        assert_eq!((router.name.as_str(), router.role), ("router", Role::Router));
        assert_eq!(router.config["plugins"][0]["type"], "nno-cni-shim");
        assert_eq!(router.config["plugins"][1]["mtu"], 1450);
        assert_eq!(
            router.config["plugins"][1]["ipam"],
            json!({"type": "static", "addresses": [{"address": "192.168.50.1/24"}]})
        );
        assert_eq!(
            router.config["plugins"][2],
            json!({"type": "tuning", "sysctl": {"net.ipv4.ip_forward": "1"}}),
            "the router forwards"
        );
        assert_eq!(router.config["plugins"].as_array().unwrap().len(), 3);
        let client = &rendered[0];
        assert_eq!(
            client.config["plugins"].as_array().unwrap().len(),
            2,
            "clients do not forward"
        );
    }

    #[test]
    fn gateway_and_router_are_excluded_once() {
        let mut net = full();
        net.spec.ipam.gateway = Some("192.168.50.254".into());
        net.spec.ipam.exclude = vec!["192.168.50.1/32".into()];
        let client = &render(&net, 1450, &Settings::default(), &[]).unwrap()[0];
        assert_eq!(
            client.config["plugins"][1]["ipam"]["exclude"],
            json!(["192.168.50.1/32", "192.168.50.254/32"])
        );
    }

    #[test]
    fn minimal_network_and_defaults() {
        let net = network(json!({
            "bridge": {"name": "br0"}, "ipam": {"range": "fd00:50::/64"}, "attachments": {"namespaces": ["a"]}
        }));
        let rendered = render(&net, 1500, &Settings::default(), &[]).unwrap();
        assert_eq!(rendered.len(), 1, "no router attachment unless asked");
        assert_eq!(rendered[0].name, "gw", "named after the Network");
        let ipam = &rendered[0].config["plugins"][1]["ipam"];
        assert_eq!(ipam.get("exclude"), None);
        assert_eq!(ipam.get("gateway"), None);
        assert_eq!(ipam.get("routes"), None);
        assert_eq!(ipam["range"], "fd00:50::/64");
    }

    #[test]
    fn ipv6_router_and_gateway_exclusions() {
        let net = network(json!({
            "bridge": {"name": "br6"},
            "ipam": {"range": "fd00:50::/64", "gateway": "fd00:50::1", "routes": [{"dst": "::/0"}]},
            "attachments": {"namespaces": ["a"], "router": {"address": "fd00:50::1"}}
        }));
        let rendered = render(&net, 1430, &Settings::default(), &[]).unwrap();
        assert_eq!(
            rendered[0].config["plugins"][1]["ipam"]["exclude"],
            json!(["fd00:50::1/128"])
        );
        assert_eq!(rendered[1].name, "gw-router");
        assert_eq!(
            rendered[1].config["plugins"][1]["ipam"]["addresses"][0]["address"],
            "fd00:50::1/64"
        );
        assert_eq!(
            rendered[1].config["plugins"][2]["sysctl"],
            json!({"net.ipv6.conf.all.forwarding": "1"})
        );
    }

    #[test]
    fn cni_versions_and_settings() {
        for (version, text) in [
            (CniVersion::V0_3_1, "0.3.1"),
            (CniVersion::V0_4_0, "0.4.0"),
            (CniVersion::V1_0_0, "1.0.0"),
        ] {
            let settings = Settings {
                cni_version: version,
                shim_socket: "/var/run/nno.sock".into(),
                shim_timeout_seconds: 45,
                whereabouts_kubeconfig: "/etc/wb.kubeconfig".into(),
            };
            for rendered in render(&full(), 9000, &settings, &[]).unwrap() {
                assert_eq!(rendered.config["cniVersion"], text);
                let shim = &rendered.config["plugins"][0];
                assert_eq!(shim["socket"], "/var/run/nno.sock");
                assert_eq!(shim["timeoutSeconds"], 45);
                assert_eq!(rendered.config["plugins"][1]["mtu"], 9000);
            }
            assert_eq!(
                render(&full(), 9000, &settings, &[]).unwrap()[0].config["plugins"][1]["ipam"]["kubernetes"]
                    ["kubeconfig"],
                "/etc/wb.kubeconfig"
            );
        }
    }

    #[test]
    fn gateway_routing_routes_all_but_the_excluded_prefixes_via_the_gateway() {
        let mut net = full();
        net.spec.ipam.routes = vec![];
        net.spec.gateway = Some(crate::api::network::Gateway {
            exclude: vec![],
            exclude_cluster: true,
        });
        let excluded: Vec<IpNet> = vec!["10.96.0.0/12".parse().unwrap()];
        let rendered = render(&net, 1450, &Settings::default(), &excluded).unwrap();
        let routes = rendered[0].config["plugins"][1]["ipam"]["routes"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(routes.len(), 12);
        assert!(routes.iter().all(|r| r["gw"] == "192.168.50.1"), "{routes:?}");
        assert!(routes.iter().any(|r| r["dst"] == "0.0.0.0/5"), "{routes:?}");
        assert!(
            !routes.iter().any(|r| r["dst"] == "0.0.0.0/0"),
            "eth0 keeps the default route"
        );
        assert_eq!(
            rendered[1].config["plugins"][1]["ipam"].get("routes"),
            None,
            "the router gets no gateway routes"
        );
        // A user route is kept beside them.
        net.spec.ipam.routes = vec![crate::api::network::Route {
            dst: "203.0.113.0/24".into(),
            gw: Some("192.168.50.9".into()),
        }];
        let rendered = render(&net, 1450, &Settings::default(), &excluded).unwrap();
        let routes = rendered[0].config["plugins"][1]["ipam"]["routes"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(routes[0], json!({"dst": "203.0.113.0/24", "gw": "192.168.50.9"}));
        assert_eq!(routes.len(), 13);
    }

    #[test]
    fn never_a_gateway_on_the_bridge() {
        for rendered in render(&full(), 1450, &Settings::default(), &[]).unwrap() {
            let bridge = &rendered.config["plugins"][1];
            assert_eq!(bridge["isGateway"], false);
            assert_eq!(bridge["isDefaultGateway"], false);
            assert_eq!(bridge["preserveDefaultVlan"], false, "rendered explicitly");
            assert!(!(bridge["hairpinMode"] == true && bridge["promiscMode"] == true));
        }
    }

    #[test]
    fn bad_addresses_are_errors_not_panics() {
        let mut net = full();
        net.spec.ipam.range = "nope".into();
        assert_eq!(
            render(&net, 1450, &Settings::default(), &[]),
            Err(RenderError::Range("nope".into()))
        );
        let mut net = full();
        net.spec.attachments.router.as_mut().unwrap().address = Some("x".into());
        assert!(render(&net, 1450, &Settings::default(), &[]).is_err());
    }

    fn ha(start: &str, end: &str) -> Network {
        network(json!({
            "bridge": {"name": "br-gw"},
            "ipam": {"range": "192.168.50.0/24", "gateway": "192.168.50.1"},
            "attachments": {"namespaces": ["default"], "router": {
                "addresses": {"start": start, "end": end}, "namespace": "default"
            }}
        }))
    }

    #[test]
    fn routers_sharing_the_gateway_get_addresses_of_their_range_which_the_clients_never_get() {
        let rendered = render(
            &ha("192.168.50.2", "192.168.50.5"),
            1450,
            &Settings::default(),
            &[],
        )
        .unwrap();
        let client = &rendered[0].config["plugins"][1]["ipam"];
        assert_eq!(
            client["exclude"],
            json!(["192.168.50.1/32", "192.168.50.2/31", "192.168.50.4/31"]),
            "the gateway and the router range"
        );
        assert_eq!(client["gateway"], "192.168.50.1");
        let router = &rendered[1].config["plugins"][1]["ipam"];
        assert_eq!(
            *router,
            json!({
                "type": "whereabouts",
                "range": "192.168.50.0/24",
                "range_start": "192.168.50.2",
                "range_end": "192.168.50.5",
                "network_name": "nno-gw",
                "kubernetes": {"kubeconfig": "/etc/cni/net.d/whereabouts.d/whereabouts.kubeconfig"}
            }),
            "one pool with the clients, no gateway: the routers hold it"
        );
        assert_eq!(
            rendered[1].config["plugins"][2]["sysctl"]["net.ipv4.ip_forward"],
            "1"
        );
    }

    #[test]
    fn a_router_range_that_cannot_work_is_refused_with_its_reason() {
        let why = |start, end| {
            render(&ha(start, end), 1450, &Settings::default(), &[])
                .unwrap_err()
                .to_string()
        };
        assert!(why("192.168.50.5", "192.168.50.2").contains("start comes after end"));
        assert!(why("192.168.50.2", "fd00::2").contains("different families"));
        assert!(why("192.168.50.1", "192.168.50.3").contains("holds ipam.gateway 192.168.50.1"));
        assert!(why("192.168.50.2", "192.168.50.200").contains("199 addresses, at most 64"));
        assert!(why("192.168.50.2", "x").contains("is not an IP address"));
    }
}
