//! The CRDs against a real kube-apiserver: samples accepted and read back unchanged,
//! invalid objects refused by the schema with a message naming the field, status
//! through the status subresource, and the printer columns.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use nno::api::common::{condition, status};
use nno::api::network::NetworkStatus;
use nno::api::{Link, Network, NodeProblem};
use nno_e2e::{Cluster, samples};
use serde_json::{Value, json};

#[tokio::test]
async fn samples_are_accepted_and_read_back_unchanged() {
    let cluster = Cluster::start().await.unwrap();
    let docs = samples::all_documents().unwrap();
    let mut checked = 0;
    for (file, doc) in docs {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        if doc["apiVersion"] != "nno.dev/v1alpha1" {
            continue;
        }
        let ctx = format!("{} {kind}/{}", file.display(), doc["metadata"]["name"]);
        match kind.as_str() {
            "Network" => round_trip::<Network>(&cluster, doc, &ctx).await,
            "Link" => round_trip::<Link>(&cluster, doc, &ctx).await,
            other => panic!("{ctx}: unexpected kind {other} in samples"),
        }
        checked += 1;
    }
    assert!(
        checked >= 8,
        "expected every sample object to be checked, got {checked}"
    );
}

async fn round_trip<K>(cluster: &Cluster, doc: Value, ctx: &str)
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let api: Api<K> = Api::all(cluster.client());
    let local: K = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    let created = api
        .create(&PostParams::default(), &local)
        .await
        .unwrap_or_else(|e| panic!("{ctx}: refused: {e}"));
    let name = created.meta().name.clone().unwrap();
    let read = api.get(&name).await.unwrap();
    // Compare everything but the metadata the server adds: the spec as typed, and the
    // raw JSON the server stored against the sample's own (defaults filled in).
    let spec = |k: &K| serde_json::to_value(k).unwrap()["spec"].clone();
    assert_eq!(
        spec(&read),
        spec(&local),
        "{ctx}: spec changed on the way through the API server"
    );
    let raw: Api<DynamicObject> = Api::all_with(cluster.client(), &ApiResource::erase::<K>(&()));
    let stored = raw.get(&name).await.unwrap();
    assert_eq!(
        stored.data["spec"],
        spec(&local),
        "{ctx}: stored JSON differs from the typed spec"
    );
}

/// A valid Network that each refusal case breaks in one place.
fn network() -> Value {
    json!({
        "apiVersion": "nno.dev/v1alpha1",
        "kind": "Network",
        "metadata": {"name": "bad"},
        "spec": {
            "bridge": {"name": "br-test"},
            "vxlan": {"vni": 100, "group": "239.1.1.1"},
            "ipam": {"range": "192.168.50.0/24", "gateway": "192.168.50.1", "exclude": ["192.168.50.0/30"]},
            "attachments": {"namespaces": ["default"], "router": {"address": "192.168.50.1"}}
        }
    })
}

/// A valid Link that each refusal case breaks in one place.
fn link() -> Value {
    json!({
        "apiVersion": "nno.dev/v1alpha1",
        "kind": "Link",
        "metadata": {"name": "bad"},
        "spec": {"interfaceName": "vx0", "vxlan": {"vnid": 7, "remoteIPAddress": "198.18.0.2"}}
    })
}

/// Sets (or with `Value::Null`, removes) the value at a JSON pointer.
fn with(mut doc: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = doc.pointer_mut(parent).unwrap_or_else(|| panic!("no {parent}"));
    match (target, value) {
        (Value::Object(map), Value::Null) => {
            map.remove(key);
        }
        (Value::Object(map), v) => {
            map.insert(key.to_string(), v);
        }
        (Value::Array(items), v) => items[key.parse::<usize>().unwrap()] = v,
        (other, _) => panic!("cannot set {pointer} in {other}"),
    }
    doc
}

#[tokio::test]
async fn invalid_objects_are_refused_with_the_field_named() {
    let cluster = Cluster::start().await.unwrap();
    let n = network;
    // (case, object, text the refusal must contain: the field path, and what is wrong)
    let cases: Vec<(&str, Value, &[&str])> = vec![
        (
            "bridge name too long",
            with(n(), "/spec/bridge/name", json!("a-very-long-name")),
            &["spec.bridge.name", "15"],
        ),
        (
            "bridge name empty",
            with(n(), "/spec/bridge/name", json!("")),
            &["spec.bridge.name"],
        ),
        (
            "bridge name with slash",
            with(n(), "/spec/bridge/name", json!("br/0")),
            &["spec.bridge.name"],
        ),
        (
            "bridge name with space",
            with(n(), "/spec/bridge/name", json!("br 0")),
            &["spec.bridge.name"],
        ),
        (
            "bridge name dot-dot",
            with(n(), "/spec/bridge/name", json!("..")),
            &["spec.bridge.name", "'.' or '..'"],
        ),
        (
            "bridge missing",
            with(n(), "/spec/bridge", Value::Null),
            &["spec.bridge", "Required"],
        ),
        (
            "vni zero",
            with(n(), "/spec/vxlan/vni", json!(0)),
            &["spec.vxlan.vni", "greater than or equal to 1"],
        ),
        (
            "vni too large",
            with(n(), "/spec/vxlan/vni", json!(16777216)),
            &["spec.vxlan.vni", "16777215"],
        ),
        (
            "port zero",
            with(n(), "/spec/vxlan/port", json!(0)),
            &["spec.vxlan.port"],
        ),
        (
            "port too large",
            with(n(), "/spec/vxlan/port", json!(70000)),
            &["spec.vxlan.port", "65535"],
        ),
        (
            "source ports reversed",
            with(
                n(),
                "/spec/vxlan/sourcePortRange",
                json!({"start": 60000, "end": 50000}),
            ),
            &["spec.vxlan.sourcePortRange", "start must not be greater than end"],
        ),
        (
            "group not multicast",
            with(n(), "/spec/vxlan/group", json!("198.18.0.1")),
            &["spec.vxlan.group", "multicast"],
        ),
        (
            "group not an address",
            with(n(), "/spec/vxlan/group", json!("group-a")),
            &["spec.vxlan.group", "multicast"],
        ),
        (
            "group and remotes",
            with(n(), "/spec/vxlan/remotes", json!(["198.18.0.2"])),
            &["spec.vxlan", "either group"],
        ),
        (
            "neither group nor remotes",
            with(n(), "/spec/vxlan/group", Value::Null),
            &["spec.vxlan", "either group"],
        ),
        (
            "remote is multicast",
            with(
                with(n(), "/spec/vxlan/group", Value::Null),
                "/spec/vxlan/remotes",
                json!(["239.1.1.1"]),
            ),
            &["spec.vxlan.remotes", "unicast"],
        ),
        (
            "remote is loopback",
            with(
                with(n(), "/spec/vxlan/group", Value::Null),
                "/spec/vxlan/remotes",
                json!(["127.0.0.1"]),
            ),
            &["spec.vxlan.remotes", "loopback"],
        ),
        (
            "remote is link-local",
            with(
                with(n(), "/spec/vxlan/group", Value::Null),
                "/spec/vxlan/remotes",
                json!(["fe80::1"]),
            ),
            &["spec.vxlan.remotes", "link-local"],
        ),
        (
            "remote is the broadcast address",
            with(
                with(n(), "/spec/vxlan/group", Value::Null),
                "/spec/vxlan/remotes",
                json!(["255.255.255.255"]),
            ),
            &["spec.vxlan.remotes", "broadcast"],
        ),
        (
            "remote is unspecified",
            with(
                with(n(), "/spec/vxlan/group", Value::Null),
                "/spec/vxlan/remotes",
                json!(["0.0.0.0"]),
            ),
            &["spec.vxlan.remotes", "unspecified"],
        ),
        (
            "maxUnavailable zero",
            with(n(), "/spec/rollout", json!({"maxUnavailable": 0})),
            &["spec.rollout.maxUnavailable", "at least 1"],
        ),
        (
            "maxUnavailable 0%",
            with(n(), "/spec/rollout", json!({"maxUnavailable": "0%"})),
            &["spec.rollout.maxUnavailable", "percentage"],
        ),
        (
            "maxUnavailable not a percentage",
            with(n(), "/spec/rollout", json!({"maxUnavailable": "two"})),
            &["spec.rollout.maxUnavailable", "percentage"],
        ),
        (
            "remotes of two families",
            with(
                with(n(), "/spec/vxlan/group", Value::Null),
                "/spec/vxlan/remotes",
                json!(["198.18.0.2", "2001:db8::2"]),
            ),
            &["spec.vxlan.remotes", "one address family"],
        ),
        (
            "nodePeers family unknown",
            with(
                with(n(), "/spec/vxlan/group", Value::Null),
                "/spec/vxlan/nodePeers",
                json!({"ipFamily": "IPv5"}),
            ),
            &["spec.vxlan.nodePeers.ipFamily", "IPv4"],
        ),
        (
            "ttl zero",
            with(n(), "/spec/vxlan/ttl", json!(0)),
            &["spec.vxlan.ttl"],
        ),
        (
            "mtu too small",
            with(n(), "/spec/mtu", json!(67)),
            &["spec.mtu", "68"],
        ),
        (
            "mtu too large",
            with(n(), "/spec/mtu", json!(65536)),
            &["spec.mtu", "65535"],
        ),
        (
            "range not a CIDR",
            with(n(), "/spec/ipam/range", json!("192.168.50.0")),
            &["spec.ipam.range", "CIDR"],
        ),
        (
            "range garbage",
            with(n(), "/spec/ipam/range", json!("lots")),
            &["spec.ipam.range", "CIDR"],
        ),
        (
            "gateway outside range",
            with(n(), "/spec/ipam/gateway", json!("192.168.51.1")),
            &["spec.ipam.gateway", "inside range"],
        ),
        (
            "gateway not an IP",
            with(n(), "/spec/ipam/gateway", json!("gw")),
            &["spec.ipam.gateway", "IP address"],
        ),
        (
            "exclude outside range",
            with(n(), "/spec/ipam/exclude", json!(["10.0.0.0/30"])),
            &["spec.ipam.exclude", "inside range"],
        ),
        (
            "exclude not a CIDR",
            with(n(), "/spec/ipam/exclude", json!(["192.168.50.7"])),
            &["spec.ipam.exclude", "CIDR"],
        ),
        (
            "rangeStart outside range",
            with(n(), "/spec/ipam/rangeStart", json!("192.168.60.10")),
            &["spec.ipam.rangeStart", "inside range"],
        ),
        (
            "route dst not a CIDR",
            with(n(), "/spec/ipam/routes", json!([{"dst": "default"}])),
            &["spec.ipam.routes[0].dst", "CIDR"],
        ),
        (
            "route gw not an IP",
            with(
                n(),
                "/spec/ipam/routes",
                json!([{"dst": "0.0.0.0/0", "gw": "router"}]),
            ),
            &["spec.ipam.routes[0].gw", "IP address"],
        ),
        (
            "router outside range",
            with(n(), "/spec/attachments/router/address", json!("10.1.1.1")),
            &["spec.attachments.router.address", "inside ipam.range"],
        ),
        (
            "router address and addresses both",
            with(
                n(),
                "/spec/attachments/router/addresses",
                json!({"start": "192.168.50.2", "end": "192.168.50.3"}),
            ),
            &["spec.attachments.router", "one of the two"],
        ),
        (
            "router addresses outside range",
            with(
                n(),
                "/spec/attachments/router",
                json!({"addresses": {"start": "192.168.50.2", "end": "10.1.1.3"}}),
            ),
            &["spec.attachments.router.addresses", "inside ipam.range"],
        ),
        (
            "router addresses without a gateway",
            with(
                with(n(), "/spec/ipam/gateway", Value::Null),
                "/spec/attachments/router",
                json!({"addresses": {"start": "192.168.50.2", "end": "192.168.50.3"}}),
            ),
            &["spec.attachments.router.addresses", "ipam.gateway"],
        ),
        (
            "router addresses not IPs",
            with(
                n(),
                "/spec/attachments/router",
                json!({"addresses": {"start": "two", "end": "192.168.50.3"}}),
            ),
            &["spec.attachments.router.addresses.start", "IP address"],
        ),
        (
            "no namespaces",
            with(n(), "/spec/attachments/namespaces", json!([])),
            &["spec.attachments", "namespaceSelector"],
        ),
        (
            "namespace not a DNS label",
            with(n(), "/spec/attachments/namespaces", json!(["Default"])),
            &["spec.attachments.namespaces[0]"],
        ),
        (
            "NAD name not a DNS subdomain",
            with(n(), "/spec/attachments/name", json!("Gateway_Net")),
            &["spec.attachments.name"],
        ),
        (
            "router NAD name equals client NAD name",
            with(
                with(n(), "/spec/attachments/name", json!("gw")),
                "/spec/attachments/router/name",
                json!("gw"),
            ),
            &["spec.attachments.router.name", "different from attachments.name"],
        ),
        (
            "vxlan named like the bridge",
            with(n(), "/spec/vxlan/interfaceName", json!("br-test")),
            &["spec.vxlan.interfaceName", "differ from the bridge"],
        ),
        (
            "selector operator unknown",
            with(
                n(),
                "/spec/nodeSelector",
                json!({"matchExpressions": [{"key": "zone", "operator": "Near", "values": ["a"]}]}),
            ),
            &["spec.nodeSelector.matchExpressions[0].operator", "In"],
        ),
        (
            "selector In without values",
            with(
                n(),
                "/spec/nodeSelector",
                json!({"matchExpressions": [{"key": "zone", "operator": "In"}]}),
            ),
            &["spec.nodeSelector.matchExpressions[0]", "need values"],
        ),
        (
            "Link with two kinds",
            with(link(), "/spec/bridge", json!({})),
            &["spec", "exactly one of bridge, vxlan or unmanaged"],
        ),
        (
            "Link with no kind",
            with(link(), "/spec/vxlan", Value::Null),
            &["spec", "exactly one of bridge, vxlan or unmanaged"],
        ),
        (
            "Link interface name too long",
            with(link(), "/spec/interfaceName", json!("vxlan-far-too-long")),
            &["spec.interfaceName", "15"],
        ),
        (
            "Link VNID zero",
            with(link(), "/spec/vxlan/vnid", json!(0)),
            &["spec.vxlan.vnid", "greater than or equal to 1"],
        ),
        (
            "Link remote not an IP",
            with(link(), "/spec/vxlan/remoteIPAddress", json!("peer")),
            &["spec.vxlan.remoteIPAddress", "IP address"],
        ),
        (
            "Link remote is loopback",
            with(link(), "/spec/vxlan/remoteIPAddress", json!("::1")),
            &["spec.vxlan.remoteIPAddress", "loopback"],
        ),
        (
            "Link remotes link-local",
            with(
                with(link(), "/spec/vxlan/remoteIPAddress", Value::Null),
                "/spec/vxlan/remotes",
                json!(["169.254.0.9"]),
            ),
            &["spec.vxlan.remotes", "link-local"],
        ),
        (
            "Link adopts an unmanaged interface",
            with(
                with(
                    with(link(), "/spec/vxlan", Value::Null),
                    "/spec/unmanaged",
                    json!({}),
                ),
                "/spec/adopt",
                json!(true),
            ),
            &["spec", "adopt is for bridge and vxlan Links"],
        ),
        (
            "Link remote and remotes",
            with(link(), "/spec/vxlan/remotes", json!(["198.18.0.3"])),
            &["spec.vxlan", "not both"],
        ),
        (
            "Link bridge MTU too small",
            with(
                with(link(), "/spec/vxlan", Value::Null),
                "/spec/bridge",
                json!({"mtu": 10}),
            ),
            &["spec.bridge.mtu", "68"],
        ),
        (
            "Link reference name invalid",
            with(link(), "/spec/vxlan/master", json!({"name": "Br0!"})),
            &["spec.vxlan.master.name"],
        ),
    ];
    assert!(cases.len() >= 25);

    // The base objects themselves are valid: each refusal is the one change's doing.
    for (kind, base) in [("Network", network()), ("Link", link())] {
        let api = dynamic(&cluster, kind);
        let obj: DynamicObject = serde_json::from_value(base).unwrap();
        api.create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &obj,
        )
        .await
        .unwrap_or_else(|e| panic!("the valid base {kind} was refused: {e}"));
    }

    let mut failures = Vec::new();
    for (case, doc, expect) in &cases {
        let api = dynamic(&cluster, doc["kind"].as_str().unwrap());
        let obj: DynamicObject = serde_json::from_value(doc.clone()).unwrap();
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => failures.push(format!("{case}: accepted")),
            Err(kube::Error::Api(status)) => {
                let missing: Vec<_> = expect.iter().filter(|e| !status.message.contains(*e)).collect();
                if status.code != 422 || !missing.is_empty() {
                    failures.push(format!(
                        "{case}: code {} message {:?} lacks {missing:?}",
                        status.code, status.message
                    ));
                } else {
                    println!("{case}: {}", status.message);
                }
            }
            Err(other) => failures.push(format!("{case}: unexpected error {other}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn dynamic(cluster: &Cluster, kind: &str) -> Api<DynamicObject> {
    let resource = match kind {
        "Network" => ApiResource::erase::<Network>(&()),
        "Link" => ApiResource::erase::<Link>(&()),
        other => panic!("no resource for {other}"),
    };
    Api::all_with(cluster.client(), &resource)
}

fn ready(status_: &str, reason: &str, generation: i64) -> Condition {
    condition(
        nno::api::condition::READY,
        status_,
        reason,
        "2 of 3 nodes are Ready",
        Some(generation),
    )
}

#[tokio::test]
async fn status_goes_through_the_subresource_and_shows_in_kubectl() {
    let cluster = Cluster::start().await.unwrap();
    let api: Api<Network> = Api::all(cluster.client());
    let mut net: Network = serde_json::from_value(with(network(), "/metadata/name", json!("shown"))).unwrap();
    net.status = None;
    let created = api.create(&PostParams::default(), &net).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));

    let status_ = NetworkStatus {
        conditions: vec![ready(status::FALSE, "NodesNotReady", 1)],
        observed_generation: Some(1),
        desired_nodes: 3,
        ready_nodes: 2,
        nodes: Some("2/3".into()),
        established_mtu: None,
        gateway_excludes: vec![],
        mtu: Some(1450),
        attachment_definitions: vec!["default/shown".into(), "default/shown-router".into()],
        not_ready_nodes: vec![NodeProblem {
            node: "node-c".into(),
            reason: "CarrierMissing".into(),
            message: "no route to 239.1.1.1".into(),
        }],
        rollout: Some(nno::api::rollout::RolloutStatus {
            generation: 1,
            nodes: vec!["node-a".into(), "node-b".into()],
            updated_nodes: 1,
            progress: Some("1/3".into()),
            halted: None,
        }),
    };
    let body = json!({"apiVersion": "nno.dev/v1alpha1", "kind": "Network", "status": status_});
    let params = PatchParams::apply("nno.dev/controller").force();
    let patched = api
        .patch_status("shown", &params, &Patch::Apply(&body))
        .await
        .unwrap();
    assert_eq!(patched.status.as_ref(), Some(&status_));
    assert_eq!(
        patched.metadata.generation,
        Some(1),
        "a status write must not bump the generation"
    );

    // Status sent through the main resource is ignored (the subresource owns it).
    let mut through_main = patched.clone();
    through_main.status.as_mut().unwrap().mtu = Some(9000);
    through_main.spec.mtu = Some(1400);
    let replaced = api
        .replace("shown", &PostParams::default(), &through_main)
        .await
        .unwrap();
    assert_eq!(replaced.status.as_ref().unwrap().mtu, Some(1450));
    assert_eq!(replaced.spec.mtu, Some(1400));
    assert_eq!(replaced.metadata.generation, Some(2));

    let table = cluster.kubectl_ok(&["get", "networks", "-o", "wide"]).unwrap();
    let mut lines = table.lines();
    let header: Vec<_> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "NODES", "MTU", "BRIDGE", "UPDATED", "AGE"],
        "{table}"
    );
    let row: Vec<_> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..6],
        ["shown", "False", "2/3", "1450", "br-test", "1/3"],
        "{table}"
    );

    // `kubectl wait --for=condition=Ready` reads the same condition, and only trusts
    // it once it describes the current generation.
    let stale = json!({"apiVersion": "nno.dev/v1alpha1", "kind": "Network",
        "status": {"conditions": [ready(status::TRUE, "AllNodesReady", 1)]}});
    api.patch_status("shown", &params, &Patch::Apply(&stale))
        .await
        .unwrap();
    let waited = cluster
        .kubectl(&["wait", "--for=condition=Ready", "network/shown", "--timeout=1s"])
        .unwrap();
    assert!(
        !waited.status.success(),
        "a Ready condition of generation 1 must not satisfy generation 2"
    );
    let flipped = json!({"apiVersion": "nno.dev/v1alpha1", "kind": "Network",
        "status": {"conditions": [ready(status::TRUE, "AllNodesReady", 2)]}});
    api.patch_status("shown", &params, &Patch::Apply(&flipped))
        .await
        .unwrap();
    cluster
        .kubectl_ok(&["wait", "--for=condition=Ready", "network/shown", "--timeout=10s"])
        .unwrap();

    let links = cluster.kubectl_ok(&["get", "links"]).unwrap();
    assert!(links.starts_with("No resources") || links.is_empty(), "{links}");
    let links_header = cluster.kubectl(&["get", "links.nno.dev", "-o", "wide"]).unwrap();
    assert!(links_header.status.success());
}
