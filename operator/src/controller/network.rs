//! Reconciles one Network: finalizer, effective MTU, NADs in every target namespace,
//! status, events; on deletion waits for the nodes to remove its links.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, instrument, warn};

use super::context::Context;
use super::nad::{self, Rendered};
use super::status::{self, NetworkFacts, NodeReport};
use super::{
    Error, FINALIZER, LABEL_MANAGED_BY, LABEL_NETWORK, LABEL_ROLE, MANAGED_BY, MANAGER, Result, kube_err,
};
use crate::api::common::find_condition;
use crate::api::network::NetworkStatus;
use crate::api::node_state::{Owner, OwnerKind};
use crate::api::{Network, condition};
use crate::model::claims;
use crate::model::mtu::{self, CarrierReport, Effective};
use crate::multus::{NetworkAttachmentDefinition, NetworkAttachmentDefinitionSpec};

/// Backstop resync; changes normally arrive through watches.
const RESYNC: Duration = Duration::from_secs(300);
/// How often a deleted Network checks whether the nodes are done.
const CLEANUP_POLL: Duration = Duration::from_secs(2);

#[instrument(skip_all, fields(network = %network.name_any()))]
pub async fn reconcile(network: Arc<Network>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile("Network");
    ctx.caches_ready().await;
    if network.meta().deletion_timestamp.is_some() {
        return cleanup(&network, &ctx).await;
    }
    ensure_finalizer(&network, &ctx).await?;
    apply(&network, &ctx).await
}

fn owner(network: &Network) -> Owner {
    Owner {
        kind: OwnerKind::Network,
        name: network.name_any(),
    }
}

/// The interfaces a Network has on each node.
fn interfaces(network: &Network) -> Vec<String> {
    let mut names = vec![network.spec.bridge.name.to_string()];
    names.extend(
        network
            .spec
            .vxlan
            .as_ref()
            .map(|v| v.interface_name().to_string()),
    );
    names
}

async fn ensure_finalizer(network: &Network, ctx: &Context) -> Result<()> {
    if network.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let name = network.name_any();
    let body = json!({
        "apiVersion": Network::api_version(&()),
        "kind": Network::kind(&()),
        "metadata": {"name": name, "finalizers": [FINALIZER]},
    });
    let api: Api<Network> = Api::all(ctx.client.clone());
    api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body))
        .await
        .map_err(kube_err("adding the finalizer to", format!("Network/{name}")))?;
    Ok(())
}

/// Removes the finalizer from the Network as this reconcile saw it: a merge patch
/// of the other finalizers at its resourceVersion. A patch never creates: the
/// object already gone (a reconcile from a cache that had not seen the deletion
/// yet) is a 404, which means done; a newer version is a 409, retried. (A
/// server-side apply would try to create the deleted object again.)
async fn remove_finalizer(network: &Network, ctx: &Context) -> Result<()> {
    let name = network.name_any();
    let others: Vec<&String> = network.finalizers().iter().filter(|f| *f != FINALIZER).collect();
    let body = json!({
        "metadata": {"finalizers": others, "resourceVersion": network.resource_version()},
    });
    let api: Api<Network> = Api::all(ctx.client.clone());
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&body))
        .await
    {
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        other => other
            .map(|_| ())
            .map_err(kube_err("removing the finalizer from", format!("Network/{name}"))),
    }
}

async fn apply(network: &Network, ctx: &Context) -> Result<Action> {
    let name = network.name_any();
    let owner = owner(network);
    let ifaces = interfaces(network);
    let selected = ctx.selected_nodes(&network.spec.node_selector);
    let states = ctx.node_states();
    let conflicts = ctx.conflicts();
    let conflict = conflicts.get(&owner).cloned();
    let contested = claims::contested(&conflicts, &owner);

    let vxlan_name = network
        .spec
        .vxlan
        .as_ref()
        .map(|v| v.interface_name().to_string());
    let reports: Vec<CarrierReport> = selected
        .iter()
        .map(|node| CarrierReport {
            node: node.clone(),
            carrier_mtu: vxlan_name.as_ref().and_then(|vx| {
                let iface = states.get(node)?.interface(vx)?;
                (iface.owner == owner).then_some(iface.carrier_mtu).flatten()
            }),
            carrier: vxlan_name.as_ref().and_then(|vx| {
                let iface = states.get(node)?.interface(vx)?;
                (iface.owner == owner)
                    .then(|| iface.carrier.as_ref().map(|c| c.to_string()))
                    .flatten()
            }),
        })
        .collect();
    let family = network.spec.vxlan.as_ref().map(|v| v.underlay_family());
    let established = network.status.as_ref().and_then(|s| s.established_mtu);
    let effective = mtu::effective(network.spec.mtu, established, family, &reports);

    let gateway_excludes = crate::model::routes::excludes(network, &ctx.cluster_prefixes());
    let mut invalid = None;
    let desired: Option<Vec<Rendered>> = if conflict.is_some() {
        Some(vec![])
    } else {
        match &effective {
            Effective::Known { mtu, .. } | Effective::TooLarge { mtu, .. } => {
                match nad::render(
                    network,
                    *mtu,
                    &ctx.settings,
                    gateway_excludes.as_deref().unwrap_or_default(),
                ) {
                    Ok(rendered) => Some(rendered),
                    Err(e) => {
                        invalid = Some(e.to_string());
                        None
                    }
                }
            }
            // Never write a guessed MTU: leave whatever exists until one is known.
            Effective::Unknown => None,
        }
    };
    let attachments = sync_nads(network, ctx, desired).await;

    let nodes: Vec<NodeReport> = selected
        .iter()
        .map(|node| NodeReport {
            node,
            state: states.get(node),
        })
        .collect();
    let rollout = super::rollout::plan(
        &owner,
        network.meta().generation,
        network.status.as_ref().and_then(|s| s.rollout.as_ref()),
        &nodes,
        network.spec.rollout.max_unavailable.as_ref(),
    );
    let facts = NetworkFacts {
        rollout,
        generation: network.meta().generation,
        owner,
        interfaces: ifaces,
        nodes,
        conflict,
        contested,
        invalid,
        spec_mtu: network.spec.mtu,
        gateway_excludes: gateway_excludes
            .unwrap_or_default()
            .iter()
            .map(|p| p.to_string())
            .collect(),
        mtu: effective.clone(),
        attachments,
    };
    let old = network.status.as_ref();
    let new = status::network_status(&facts, old);
    announce(network, ctx, old, &new, &effective).await;
    if old.is_none_or(|old| crate::api::common::differs(old, &new)) {
        write_status(&name, ctx, &new).await?;
    }
    Ok(Action::requeue(RESYNC))
}

async fn write_status(name: &str, ctx: &Context, status: &NetworkStatus) -> Result<()> {
    let api: Api<Network> = Api::all(ctx.client.clone());
    let body = json!({"apiVersion": Network::api_version(&()), "kind": Network::kind(&()), "status": status});
    api.patch_status(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body))
        .await
        .map_err(kube_err("writing the status of", format!("Network/{name}")))?;
    ctx.metrics
        .status_writes
        .get_or_create(&super::metrics::KindLabel { kind: "Network" })
        .inc();
    Ok(())
}

/// Events a user can act on, on transitions only.
async fn announce(
    network: &Network,
    ctx: &Context,
    old: Option<&NetworkStatus>,
    new: &NetworkStatus,
    mtu: &Effective,
) {
    if let (Some(before), Some(after)) = (old.and_then(|o| o.mtu), new.mtu)
        && before != after
    {
        let (type_, note) = if after < before {
            let by = match mtu {
                Effective::Known {
                    limited_by: Some(node),
                    ..
                } => format!(": the VXLAN carrier of node {node} limits it"),
                _ => String::new(),
            };
            (
                EventType::Warning,
                format!(
                    "effective MTU lowered from {before} to {after}{by}; pods attached earlier keep MTU {before} until they are recreated"
                ),
            )
        } else {
            (
                EventType::Normal,
                format!("effective MTU raised from {before} to {after}"),
            )
        };
        ctx.event(network, type_, "MtuChanged", note).await;
    }
    let reason_of = |s: Option<&NetworkStatus>| {
        s.and_then(|s| find_condition(&s.conditions, condition::READY))
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    let (before, after) = (reason_of(old), reason_of(Some(new)));
    if before.as_ref().map(|b| &b.0) == after.as_ref().map(|a| &a.0) {
        return;
    }
    if let Some((reason, message)) = after {
        let type_ = match reason.as_str() {
            status::reason::READY | status::reason::NODES_NOT_READY | status::reason::WAITING_FOR_NODES => {
                EventType::Normal
            }
            _ => EventType::Warning,
        };
        ctx.event(network, type_, &reason, message).await;
    }
}

/// Those of `names` that exist and are not being deleted.
fn existing_namespaces(ctx: &Context, names: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    let live: BTreeSet<String> = ctx
        .namespaces
        .state()
        .iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .map(|n| n.name_any())
        .collect();
    names.into_iter().filter(|n| live.contains(n)).collect()
}

/// The namespaces that get the Network's NADs now: listed ones that exist, and those
/// the selector matches; never one that is being deleted.
fn target_namespaces(network: &Network, ctx: &Context) -> BTreeSet<String> {
    let attachments = &network.spec.attachments;
    ctx.namespaces
        .state()
        .iter()
        .filter(|ns| ns.meta().deletion_timestamp.is_none())
        .filter(|ns| {
            attachments.namespaces.iter().any(|n| *n == ns.name_any())
                || attachments
                    .namespace_selector
                    .as_ref()
                    .is_some_and(|s| s.matches(ns.labels()))
        })
        .map(|ns| ns.name_any())
        .collect()
}

fn nad_object(
    network: &Network,
    namespace: &str,
    rendered: &Rendered,
) -> Result<NetworkAttachmentDefinition> {
    let config = serde_json::to_string(&rendered.config).map_err(|source| Error::Serialize {
        what: format!("the config of {namespace}/{}", rendered.name),
        source,
    })?;
    let mut nad =
        NetworkAttachmentDefinition::new(&rendered.name, NetworkAttachmentDefinitionSpec { config });
    nad.metadata.namespace = Some(namespace.to_string());
    nad.metadata.labels = Some(BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_NETWORK.to_string(), network.name_any()),
        (LABEL_ROLE.to_string(), rendered.role.label().to_string()),
    ]));
    nad.metadata.owner_references = network.controller_owner_ref(&()).map(|r| vec![r]);
    Ok(nad)
}

/// Whether the existing NAD already is what we would write.
fn up_to_date(existing: &NetworkAttachmentDefinition, wanted: &NetworkAttachmentDefinition) -> bool {
    let config =
        |n: &NetworkAttachmentDefinition| serde_json::from_str::<serde_json::Value>(&n.spec.config).ok();
    let labels_ok = wanted
        .labels()
        .iter()
        .all(|(k, v)| existing.labels().get(k) == Some(v));
    let owner_ok = wanted.owner_references().iter().all(|w| {
        existing
            .owner_references()
            .iter()
            .any(|e| e.uid == w.uid && e.controller == w.controller)
    });
    config(existing) == config(wanted) && labels_ok && owner_ok
}

/// Makes the NADs match `desired` in every target namespace (`None`: leave them as
/// they are). Returns the NADs in place as `ns/name`, or what failed.
async fn sync_nads(
    network: &Network,
    ctx: &Context,
    desired: Option<Vec<Rendered>>,
) -> std::result::Result<Vec<String>, String> {
    let name = network.name_any();
    let all: Api<NetworkAttachmentDefinition> = Api::all(ctx.client.clone());
    let selector = format!("{LABEL_NETWORK}={name},{LABEL_MANAGED_BY}={MANAGED_BY}");
    let existing = all
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| format!("listing the NetworkAttachmentDefinitions of Network {name}: {e}"))?;
    let key =
        |n: &NetworkAttachmentDefinition| format!("{}/{}", n.namespace().unwrap_or_default(), n.name_any());
    let existing: BTreeMap<String, NetworkAttachmentDefinition> =
        existing.items.into_iter().map(|n| (key(&n), n)).collect();
    let Some(desired) = desired else {
        return Ok(existing.keys().cloned().collect());
    };

    let mut wanted = BTreeMap::new();
    let targets = target_namespaces(network, ctx);
    let router_namespace = network
        .spec
        .attachments
        .router
        .as_ref()
        .and_then(|r| r.namespace.clone());
    for rendered in &desired {
        let namespaces: BTreeSet<String> = match (rendered.role, &router_namespace) {
            // The router's namespace alone, once it exists.
            (nad::Role::Router, Some(ns)) => existing_namespaces(ctx, [ns.clone()]),
            _ => targets.clone(),
        };
        for ns in namespaces {
            let nad = nad_object(network, &ns, rendered).map_err(|e| e.to_string())?;
            wanted.insert(key(&nad), nad);
        }
    }
    let mut failures = Vec::new();
    let params = PatchParams::apply(MANAGER).force();
    for (id, nad) in &wanted {
        if existing.get(id).is_some_and(|e| up_to_date(e, nad)) {
            continue;
        }
        let ns = nad.namespace().unwrap_or_default();
        let api: Api<NetworkAttachmentDefinition> = Api::namespaced(ctx.client.clone(), &ns);
        match api.patch(&nad.name_any(), &params, &Patch::Apply(nad)).await {
            Ok(_) => {
                ctx.metrics.nad_writes.inc();
                info!(nad = %id, "wrote NetworkAttachmentDefinition");
            }
            Err(e) => failures.push(format!("writing NetworkAttachmentDefinition {id}: {e}")),
        }
    }
    for (id, nad) in &existing {
        if wanted.contains_key(id) {
            continue;
        }
        let api: Api<NetworkAttachmentDefinition> =
            Api::namespaced(ctx.client.clone(), &nad.namespace().unwrap_or_default());
        match api.delete(&nad.name_any(), &DeleteParams::default()).await {
            Ok(_) => {
                ctx.metrics.nad_writes.inc();
                info!(nad = %id, "deleted NetworkAttachmentDefinition no longer wanted");
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => failures.push(format!("deleting NetworkAttachmentDefinition {id}: {e}")),
        }
    }
    if failures.is_empty() {
        Ok(wanted.keys().cloned().collect())
    } else {
        let message = failures.join("; ");
        ctx.event(
            network,
            EventType::Warning,
            status::reason::ATTACHMENTS_FAILED,
            message.clone(),
        )
        .await;
        Err(message)
    }
}

/// Whether a Node reports Ready=True.
fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A deleted Network keeps its finalizer until no node reports its links any more.
/// Nodes that are gone do not count; NotReady nodes are waited for `cleanup_grace`.
async fn cleanup(network: &Network, ctx: &Context) -> Result<Action> {
    if !network.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let owner = owner(network);
    let deleted_for = network
        .meta()
        .deletion_timestamp
        .as_ref()
        .map(|t| jiff::Timestamp::now().duration_since(t.0).unsigned_abs())
        .unwrap_or_default();
    let nodes: BTreeMap<String, Arc<Node>> =
        ctx.nodes.state().into_iter().map(|n| (n.name_any(), n)).collect();
    let mut waiting = Vec::new();
    let mut given_up = Vec::new();
    for (node, state) in ctx.node_states() {
        if state.owned_by(&owner).next().is_none() {
            continue;
        }
        match nodes.get(&node) {
            None => debug!(node, "node is gone: not waiting for it"),
            Some(n) if !node_ready(n) && deleted_for > ctx.cleanup_grace => given_up.push(node),
            Some(_) => waiting.push(node),
        }
    }
    if !waiting.is_empty() {
        debug!(?waiting, "waiting for nodes to remove the Network's links");
        return Ok(Action::requeue(CLEANUP_POLL));
    }
    if !given_up.is_empty() {
        let note = format!(
            "nodes {} are not Ready and still report links of this Network after {}s; not waiting longer: their agents remove the links when they come back",
            given_up.join(", "),
            ctx.cleanup_grace.as_secs()
        );
        warn!(nodes = ?given_up, "giving up waiting for NotReady nodes");
        ctx.event(network, EventType::Warning, "CleanupIncomplete", note)
            .await;
    }
    remove_finalizer(network, ctx).await?;
    info!("links removed from every node; NetworkAttachmentDefinitions are left to garbage collection");
    ctx.changed.send_replace(());
    Ok(Action::await_change())
}
