//! What every reconcile shares: the client, the caches of the objects it reads, the
//! event recorder, settings and metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::core::DeserializeGuard;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use tokio::sync::watch;

use super::metrics::Metrics;
use super::nad;
use crate::api::node_state::{NodeNetworkStateStatus, Owner};
use crate::api::{Link, Network, NodeNetworkState};
use crate::cache::{READY_POLL, is_ready};
use crate::model::claims::{self, Claim, Conflict};

pub struct Context {
    pub client: kube::Client,
    pub recorder: Recorder,
    pub networks: Store<DeserializeGuard<Network>>,
    pub links: Store<DeserializeGuard<Link>>,
    pub nodes: Store<Node>,
    pub states: Store<NodeNetworkState>,
    pub namespaces: Store<Namespace>,
    pub service_cidrs: Store<ServiceCIDR>,
    pub settings: nad::Settings,
    /// How long a deleted Network waits for NotReady nodes to remove its links.
    pub cleanup_grace: Duration,
    pub metrics: Metrics,
    /// Signals that something every object depends on changed (e.g. the set of
    /// conflict losers), so all are reconciled again.
    pub changed: watch::Sender<()>,
    last_losers: Mutex<BTreeSet<Owner>>,
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: kube::Client,
        recorder: Recorder,
        networks: Store<DeserializeGuard<Network>>,
        links: Store<DeserializeGuard<Link>>,
        nodes: Store<Node>,
        states: Store<NodeNetworkState>,
        namespaces: Store<Namespace>,
        service_cidrs: Store<ServiceCIDR>,
        settings: nad::Settings,
        cleanup_grace: Duration,
        metrics: Metrics,
        changed: watch::Sender<()>,
    ) -> Self {
        Self {
            client,
            recorder,
            networks,
            links,
            nodes,
            states,
            namespaces,
            service_cidrs,
            settings,
            cleanup_grace,
            metrics,
            changed,
            last_losers: Mutex::new(BTreeSet::new()),
        }
    }

    /// Waits until every cache has its first complete list. A reconcile before that
    /// would see nodes, namespaces or other Networks missing: wrong statuses, wrong
    /// conflicts, NADs deleted from namespaces not listed yet.
    pub async fn caches_ready(&self) {
        while !(is_ready(&self.networks)
            && is_ready(&self.links)
            && is_ready(&self.nodes)
            && is_ready(&self.states)
            && is_ready(&self.namespaces)
            && is_ready(&self.service_cidrs))
        {
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// Names of the nodes `selector` selects.
    pub fn selected_nodes(&self, selector: &crate::api::LabelSelector) -> BTreeSet<String> {
        self.nodes
            .state()
            .iter()
            .filter(|n| selector.matches(n.labels()))
            .map(|n| n.name_any())
            .collect()
    }

    /// The cluster's own networks, which gateway routing keeps on the pods' eth0: the
    /// Service CIDRs, every node's pod CIDRs and InternalIPs (as host prefixes).
    pub fn cluster_prefixes(&self) -> Vec<ipnet::IpNet> {
        let mut out = Vec::new();
        for sc in self.service_cidrs.state() {
            let cidrs = sc.spec.as_ref().and_then(|s| s.cidrs.clone()).unwrap_or_default();
            out.extend(cidrs.iter().filter_map(|c| c.parse::<ipnet::IpNet>().ok()));
        }
        for node in self.nodes.state() {
            let pod_cidrs = node
                .spec
                .as_ref()
                .and_then(|s| s.pod_cidrs.clone())
                .unwrap_or_default();
            out.extend(pod_cidrs.iter().filter_map(|c| c.parse::<ipnet::IpNet>().ok()));
            let addresses = node
                .status
                .as_ref()
                .and_then(|s| s.addresses.clone())
                .unwrap_or_default();
            out.extend(
                addresses
                    .iter()
                    .filter(|a| a.type_ == "InternalIP")
                    .filter_map(|a| a.address.parse().ok())
                    .map(crate::model::routes::host),
            );
        }
        out
    }

    /// The status of every NodeNetworkState, by node.
    pub fn node_states(&self) -> BTreeMap<String, NodeNetworkStateStatus> {
        self.states
            .state()
            .iter()
            .filter_map(|s| Some((s.name_any(), s.status.clone()?)))
            .collect()
    }

    /// Every conflict between live Networks and Links; signals `changed` when the set
    /// of losers differs from the last evaluation, so that the others re-evaluate too.
    pub fn conflicts(&self) -> BTreeMap<Owner, Conflict> {
        let mut all: Vec<(Claim, BTreeSet<String>)> = Vec::new();
        let networks = self.networks.state();
        let live_networks = networks.iter().filter_map(|g| g.0.as_ref().ok());
        for n in live_networks.filter(|n| n.meta().deletion_timestamp.is_none()) {
            all.push((
                claims::network_claim(n),
                self.selected_nodes(&n.spec.node_selector),
            ));
        }
        let links = self.links.state();
        let live_links = links.iter().filter_map(|g| g.0.as_ref().ok());
        for l in live_links.filter(|l| l.meta().deletion_timestamp.is_none()) {
            all.push((claims::link_claim(l), self.selected_nodes(&l.spec.node_selector)));
        }
        let losers = claims::conflicts(&all);
        let keys: BTreeSet<Owner> = losers.keys().cloned().collect();
        let mut last = self.last_losers.lock().expect("conflict set lock");
        if *last != keys {
            *last = keys;
            self.changed.send_replace(());
        }
        losers
    }

    /// Reports an object that cannot be read as `kind` (e.g. written for another
    /// version of the CRD): a Warning event on it; it is left alone otherwise.
    pub async fn invalid(&self, api_version: &str, kind: &str, invalid: &InvalidObject) {
        let reference = ObjectReference {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
            name: invalid.metadata.name.clone(),
            uid: invalid.metadata.uid.clone(),
            ..Default::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: "InvalidObject".into(),
            note: Some(format!(
                "cannot read this {kind}, so it is left alone: {}",
                invalid.error
            )),
            action: "Reconcile".into(),
            secondary: None,
        };
        tracing::error!(kind, name = ?invalid.metadata.name, error = %invalid.error, "cannot read object; leaving it alone");
        if let Err(error) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(%error, "publishing an event");
        }
    }

    /// Publishes an event about `obj`; failures are logged, never fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(%error, reason, "publishing an event");
        }
    }
}
