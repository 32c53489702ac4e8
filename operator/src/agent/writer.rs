//! The agent's one write to the API server: `NodeNetworkState/<node>`, only when
//! it changed, retried with backoff, never resent as a body the server refused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{error, info};

use super::MANAGER;
use crate::api::NodeNetworkState;
use crate::api::common::differs;
use crate::api::node_state::NodeNetworkStateStatus;

/// Longest pause between retries of a failed status write.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Writes NodeNetworkState/<node>, only when it changed, retrying with backoff.
pub(super) struct StatusWriter {
    api: Api<NodeNetworkState>,
    /// The object exists with its owner reference to the Node.
    pub(super) object_ok: bool,
    pub(super) last: Option<NodeNetworkStateStatus>,
    /// A status the API server refused as invalid: not sent again until it changes.
    refused: Option<NodeNetworkStateStatus>,
    pub(super) retry_at: Option<Instant>,
    pub(super) backoff: Duration,
    /// Counts the status writes the API server accepted.
    writes: prometheus_client::metrics::counter::Counter,
}

impl StatusWriter {
    pub(super) fn new(
        client: kube::Client,
        node: &Node,
        existing: Option<Arc<NodeNetworkState>>,
        writes: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        let uid = node.metadata.uid.clone();
        let object_ok = existing
            .as_ref()
            .is_some_and(|s| s.owner_references().iter().any(|r| Some(&r.uid) == uid.as_ref()));
        Self {
            api: Api::all(client),
            object_ok,
            last: existing.and_then(|s| s.status.clone()),
            refused: None,
            retry_at: None,
            backoff: Duration::from_millis(500),
            writes,
        }
    }

    pub(super) async fn write(
        &mut self,
        node: &Node,
        status: NodeNetworkStateStatus,
    ) -> Result<(), kube::Error> {
        if self.object_ok && self.last.as_ref().is_some_and(|last| !differs(last, &status)) {
            return Ok(());
        }
        if self.refused.as_ref().is_some_and(|r| !differs(r, &status)) {
            return Ok(()); // the same body would be refused again
        }
        match self.try_write(node, &status).await {
            Ok(()) => {
                self.last = Some(status);
                self.refused = None;
                self.retry_at = None;
                self.backoff = Duration::from_millis(500);
                Ok(())
            }
            // Invalid (422) or otherwise refused for what it says: retrying the same
            // body cannot help. Logged with the body; sent again once it changes.
            Err(kube::Error::Api(s)) if s.code == 400 || s.code == 422 => {
                error!(
                    node = %node.name_any(),
                    reason = %s.message,
                    status = %serde_json::to_string(&status).unwrap_or_default(),
                    "the API server refused this NodeNetworkState status; it is not sent again until it changes"
                );
                self.refused = Some(status);
                self.retry_at = None;
                Ok(())
            }
            Err(e) => {
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                Err(e)
            }
        }
    }

    async fn try_write(&mut self, node: &Node, status: &NodeNetworkStateStatus) -> Result<(), kube::Error> {
        let name = node.name_any();
        let params = PatchParams::apply(MANAGER).force();
        if !self.object_ok {
            // Owned by the Node: it goes when the node goes.
            let body = json!({
                "apiVersion": NodeNetworkState::api_version(&()),
                "kind": NodeNetworkState::kind(&()),
                "metadata": {"name": name, "ownerReferences": [{
                    "apiVersion": "v1", "kind": "Node", "name": name, "uid": node.metadata.uid,
                }]},
                "spec": {},
            });
            self.api.patch(&name, &params, &Patch::Apply(&body)).await?;
            self.object_ok = true;
        }
        let body = json!({
            "apiVersion": NodeNetworkState::api_version(&()),
            "kind": NodeNetworkState::kind(&()),
            "status": status,
        });
        if let Err(e) = self.api.patch_status(&name, &params, &Patch::Apply(&body)).await {
            // Gone (e.g. collected with a Node that was deleted and registered again):
            // create it again on the next attempt.
            if matches!(&e, kube::Error::Api(s) if s.code == 404) {
                self.object_ok = false;
            }
            return Err(e);
        }
        self.writes.inc();
        info!(
            ready = status.ready_interfaces.as_deref().unwrap_or_default(),
            "wrote NodeNetworkState"
        );
        Ok(())
    }
}
