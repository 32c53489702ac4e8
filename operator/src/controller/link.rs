//! Reconciles one Link: its status from the agents' reports.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::instrument;

use super::context::Context;
use super::status::{self, NodeReport};
use super::{MANAGER, Result, kube_err};
use crate::api::Link;
use crate::api::node_state::{Owner, OwnerKind};
use crate::model::claims;

const RESYNC: Duration = Duration::from_secs(300);

#[instrument(skip_all, fields(link = %link.name_any()))]
pub async fn reconcile(link: Arc<Link>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile("Link");
    ctx.caches_ready().await;
    if link.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = link.name_any();
    let owner = Owner {
        kind: OwnerKind::Link,
        name: name.clone(),
    };
    let selected = ctx.selected_nodes(&link.spec.node_selector);
    let states = ctx.node_states();
    let conflicts = ctx.conflicts();
    let conflict = conflicts.get(&owner).cloned();
    let contested = claims::contested(&conflicts, &owner);
    let nodes: Vec<NodeReport> = selected
        .iter()
        .map(|node| NodeReport {
            node,
            state: states.get(node),
        })
        .collect();
    let old = link.status.as_ref();
    let rollout = super::rollout::plan(
        &owner,
        link.meta().generation,
        old.and_then(|o| o.rollout.as_ref()),
        &nodes,
        link.spec.rollout.max_unavailable.as_ref(),
    );
    let facts = status::LinkFacts {
        generation: link.meta().generation,
        owner: &owner,
        interface: link.spec.interface_name.as_str(),
        nodes: &nodes,
        conflict: conflict.as_ref(),
        contested: &contested,
        rollout: rollout.as_ref(),
    };
    let new = status::link_status(&facts, old);
    if old.is_none_or(|old| crate::api::common::differs(old, &new)) {
        let api: Api<Link> = Api::all(ctx.client.clone());
        let body = json!({"apiVersion": Link::api_version(&()), "kind": Link::kind(&()), "status": new});
        api.patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body))
            .await
            .map_err(kube_err("writing the status of", format!("Link/{name}")))?;
        ctx.metrics
            .status_writes
            .get_or_create(&super::metrics::KindLabel { kind: "Link" })
            .inc();
    }
    Ok(Action::requeue(RESYNC))
}
