//! Wiring of the agent process: caches of the objects that decide this node's links,
//! the netlink engine, the NodeNetworkState writer, the readiness socket, health and
//! metrics.
//!
//! Faults: while the API server is unreachable the caches keep their contents, the
//! engine keeps every link as it is (and keeps repairing drift), readiness is served
//! from the last known state, and failed writes are retried with backoff. Nothing is
//! torn down because a watch failed; links are only removed when a Network or Link
//! really stops selecting the node.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::future;
use k8s_openapi::api::core::v1::{Node, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::sync::watch;
use tracing::{Instrument, error, info, info_span, instrument, warn};

use super::desired::{self, Inputs, NodeInfo};
use super::metrics::{Metrics, OpLabel, StateLabel};
use super::{MANAGER, report};
use crate::api::common::differs;
use crate::api::node_state::NodeNetworkStateStatus;
use crate::api::{Link, Network, NodeNetworkState};
use crate::cache::{NNO_CRDS, OnError, READY_POLL, cache, check_listable, is_ready, trimmed_cache};
use crate::netlink::{Applied, DesiredLink, Engine, LinkState};
use crate::readiness::{self, Readiness};
use crate::telemetry;

/// Longest pause between retries of a failed status write.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// `node-network-operator agent`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The node this agent runs on (the DaemonSet passes spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// The readiness socket nno-cni-shim asks (mode 0600).
    #[arg(long, env = "NNO_SOCKET", default_value = readiness::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "NNO_METRICS_ADDR", default_value = "127.0.0.1:9092")]
    pub metrics_addr: SocketAddr,
}

/// Runs the agent until SIGTERM/SIGINT.
pub async fn run(client: kube::Client, args: Args) -> anyhow::Result<()> {
    check_listable::<Network>(&client, NNO_CRDS).await?;
    check_listable::<Link>(&client, NNO_CRDS).await?;
    check_listable::<NodeNetworkState>(&client, NNO_CRDS).await?;
    let engine = Engine::new()
        .context("opening rtnetlink: the agent needs CAP_NET_ADMIN in the node's network namespace")?;
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry, engine.write_counter(), engine.repair_counter());
    let health = telemetry::Health::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let server = telemetry::serve(args.metrics_addr, Arc::new(registry), health.clone(), stopped()).await?;
    let server = tokio::spawn(server.instrument(info_span!("health", addr = %args.metrics_addr)));
    let readiness = Readiness::new(args.node_name.clone());
    let socket = readiness::Server::bind(&args.socket)
        .with_context(|| format!("serving readiness on {}", args.socket.display()))?;
    info!(socket = %args.socket.display(), "serving bridge readiness");
    let span = info_span!("readiness", socket = %args.socket.display());
    let socket = tokio::spawn(socket.run(readiness.clone(), stopped()).instrument(span));

    let agent = Agent::start(client, args.node_name.clone(), metrics, readiness, health);
    let outcome = tokio::select! {
        result = agent.run(engine) => result,
        _ = telemetry::shutdown_signal() => Ok(()),
    };
    let _ = stop_tx.send(true);
    let _ = socket.await;
    let _ = server.await;
    info!("agent stopped; links are left as they are");
    outcome
}

/// What the agent reads of a Node: name, UID (its report's owner), labels (the
/// selectors) and addresses (the carrier; the peers' VTEPs). The rest (images,
/// conditions, heartbeats) is dropped before it is cached, and changes to it wake
/// nothing.
fn trim_node(node: &mut Node) {
    let meta = std::mem::take(&mut node.metadata);
    node.metadata = ObjectMeta {
        name: meta.name,
        uid: meta.uid,
        labels: meta.labels,
        ..Default::default()
    };
    node.spec = None;
    let addresses = node.status.take().and_then(|s| s.addresses);
    node.status = Some(NodeStatus {
        addresses,
        ..Default::default()
    });
}

fn node_info(node: &Node) -> NodeInfo {
    let addresses = || {
        node.status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
    };
    let parsed = |types: &[&str]| {
        addresses()
            .filter(|a| types.contains(&a.type_.as_str()))
            .filter_map(|a| a.address.parse().ok())
            .collect()
    };
    NodeInfo {
        name: node.name_any(),
        labels: node.labels().clone(),
        internal_ips: parsed(&["InternalIP"]),
        addresses: parsed(&["InternalIP", "ExternalIP"]),
    }
}

struct Agent {
    client: kube::Client,
    node: String,
    nodes: Store<Node>,
    networks: Store<DeserializeGuard<Network>>,
    links: Store<DeserializeGuard<Link>>,
    states: Store<NodeNetworkState>,
    changed: watch::Receiver<()>,
    metrics: Metrics,
    readiness: Readiness,
    health: telemetry::Health,
}

impl Agent {
    fn start(
        client: kube::Client,
        node: String,
        metrics: Metrics,
        readiness: Readiness,
        health: telemetry::Health,
    ) -> Self {
        let (tx, changed) = watch::channel(());
        let errors = metrics.api_errors.clone();
        let on_error: OnError = Arc::new(move || {
            errors.get_or_create(&OpLabel { op: "watch" }).inc();
        });
        let config = watcher::Config::default;
        // Every Node, cut down to what the agent reads: its own labels and addresses,
        // and the peers' (whose reported VTEPs must be theirs).
        let (nodes, a) = trimmed_cache(
            Api::<Node>::all(client.clone()),
            config(),
            tx.clone(),
            on_error.clone(),
            trim_node,
        );
        let (networks, b) = cache(
            Api::<DeserializeGuard<Network>>::all(client.clone()),
            config(),
            tx.clone(),
            on_error.clone(),
        );
        let (links, c) = cache(
            Api::<DeserializeGuard<Link>>::all(client.clone()),
            config(),
            tx.clone(),
            on_error.clone(),
        );
        let (states, d) = cache(
            Api::<NodeNetworkState>::all(client.clone()),
            config(),
            tx,
            on_error,
        );
        let span = info_span!("caches", node = %node);
        tokio::spawn(
            async move {
                tokio::join!(a, b, c, d);
            }
            .instrument(span),
        );
        Self {
            client,
            node,
            nodes,
            networks,
            links,
            states,
            changed,
            metrics,
            readiness,
            health,
        }
    }

    fn node_info(&self) -> Option<(Arc<Node>, NodeInfo)> {
        let node = self
            .nodes
            .state()
            .into_iter()
            .find(|n| n.name_any() == self.node)?;
        let info = node_info(&node);
        Some((node, info))
    }

    /// Every Node the agent knows, by name.
    fn cluster_nodes(&self) -> BTreeMap<String, NodeInfo> {
        self.nodes
            .state()
            .iter()
            .map(|n| (n.name_any(), node_info(n)))
            .collect()
    }

    fn reports(&self) -> BTreeMap<String, NodeNetworkStateStatus> {
        self.states
            .state()
            .iter()
            .filter_map(|s| Some((s.name_any(), s.status.clone()?)))
            .collect()
    }

    /// What the node should have now, for the engine and for the report; or, while
    /// a Network or Link cannot be read (e.g. written for another version of the CRD),
    /// which ones: then nothing is decided and every link stays as it is, since the
    /// unreadable object's links would otherwise look unwanted and be deleted.
    fn compute(
        &self,
        info: &NodeInfo,
        engine: &[LinkState],
    ) -> Result<(Vec<desired::Want>, Vec<DesiredLink>), String> {
        let (networks, mut unreadable) = readable(self.networks.state(), "Network");
        let (links, bad_links) = readable(self.links.state(), "Link");
        unreadable.extend(bad_links);
        if !unreadable.is_empty() {
            return Err(unreadable.join("; "));
        }
        let reports = self.reports();
        let nodes = self.cluster_nodes();
        let inputs = Inputs {
            node: info,
            networks: &networks,
            links: &links,
            reports: &reports,
            nodes: &nodes,
            engine,
        };
        let wants = desired::compute(&inputs);
        let engine_links = wants.iter().filter_map(|w| w.link.clone()).collect();
        Ok((wants, engine_links))
    }

    #[instrument(skip_all, fields(node = %self.node))]
    async fn run(mut self, engine: Engine) -> anyhow::Result<()> {
        // Nothing is decided before every cache has its first complete list: an empty
        // cache would read as "nothing wanted" and delete the node's links.
        info!("waiting for the first lists of Nodes, Networks, Links and NodeNetworkStates");
        while !(is_ready(&self.nodes)
            && is_ready(&self.networks)
            && is_ready(&self.links)
            && is_ready(&self.states))
        {
            tokio::time::sleep(READY_POLL).await;
        }
        let (node, info) = loop {
            if let Some(found) = self.node_info() {
                break found;
            }
            warn!(
                "Node object {} not found: waiting for it (is NODE_NAME right?)",
                self.node
            );
            self.changed.changed().await.context("caches stopped")?;
        };
        let (wants, links) = loop {
            match self.compute(&info, &[]) {
                Ok(computed) => break computed,
                Err(unreadable) => {
                    error!(%unreadable, "cannot read every Network and Link: waiting before deciding anything");
                    self.changed.changed().await.context("caches stopped")?;
                }
            }
        };
        info!(
            interfaces = wants.len(),
            "desired state computed; starting the engine"
        );
        let (desired_tx, desired_rx) = watch::channel(links);
        let (applied_tx, mut applied_rx) = watch::channel(Applied::default());
        tokio::spawn(
            engine
                .run(desired_rx, applied_tx)
                .instrument(info_span!("engine", node = %self.node)),
        );

        let mut writer = StatusWriter::new(
            self.client.clone(),
            &node,
            self.own_state(),
            self.metrics.status_writes.clone(),
        );
        loop {
            let started = Instant::now();
            if let Some((node, info)) = self.node_info() {
                let applied = applied_rx.borrow_and_update().clone();
                let (wants, links) = match self.compute(&info, &applied.states) {
                    Ok(computed) => computed,
                    Err(unreadable) => {
                        self.metrics
                            .api_errors
                            .get_or_create(&OpLabel { op: "read_object" })
                            .inc();
                        error!(%unreadable, "cannot read every Network and Link: keeping every link as it is");
                        self.changed.changed().await.context("caches stopped")?;
                        continue;
                    }
                };
                let caught_up = applied.desired == links;
                desired_tx.send_if_modified(|cur| {
                    let changed = *cur != links;
                    if changed {
                        *cur = links;
                    }
                    changed
                });
                // Report only what the engine has applied: until it has caught up with
                // the links just asked for, the kernel may still hold links that are no
                // longer wanted, or lack new ones.
                if caught_up {
                    self.report(&mut writer, &node, &wants, &applied.states).await;
                }
            } else {
                error!("own Node object disappeared; keeping links as they are");
            }
            self.metrics.reconciles.inc();
            self.metrics
                .reconcile_duration
                .observe(started.elapsed().as_secs_f64());
            self.health.set(true);

            let retry = writer.retry_at;
            tokio::select! {
                changed = self.changed.changed() => changed.context("caches stopped")?,
                changed = applied_rx.changed() => changed.context("the engine stopped")?,
                () = sleep_until(retry), if retry.is_some() => {}
            }
        }
    }

    /// Publishes readiness, metrics and the NodeNetworkState for what the engine
    /// applied.
    async fn report(
        &self,
        writer: &mut StatusWriter,
        node: &Node,
        wants: &[desired::Want],
        states: &[LinkState],
    ) {
        let status = report::node_status(wants, states, writer.last.as_ref());
        self.readiness.update(report::bridges(&status, wants));
        self.readiness.set_synced(true);
        let ready = status.interfaces.iter().filter(|i| i.ready).count() as i64;
        self.metrics
            .links
            .get_or_create(&StateLabel { state: "ready" })
            .set(ready);
        let not_ready = status.interfaces.len() as i64 - ready;
        self.metrics
            .links
            .get_or_create(&StateLabel { state: "not_ready" })
            .set(not_ready);
        // Deleted (by hand, or collected): written again now, not at the next change.
        if writer.object_ok && self.own_state().is_none() {
            info!("NodeNetworkState is gone: writing it again");
            writer.object_ok = false;
        }
        if let Err(e) = writer.write(node, status).await {
            self.metrics
                .api_errors
                .get_or_create(&OpLabel { op: "write_status" })
                .inc();
            warn!(error = %e, retry_in = ?writer.backoff, "writing NodeNetworkState; keeping links as they are");
        }
    }

    fn own_state(&self) -> Option<Arc<NodeNetworkState>> {
        self.states
            .state()
            .into_iter()
            .find(|s| s.name_any() == self.node)
    }
}

/// The objects that could be read, and a description of those that could not.
fn readable<K: Clone + kube::Resource>(
    guards: Vec<Arc<DeserializeGuard<K>>>,
    kind: &str,
) -> (Vec<Arc<K>>, Vec<String>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for guard in guards {
        match &guard.0 {
            Ok(obj) => ok.push(Arc::new(obj.clone())),
            Err(invalid) => bad.push(format!(
                "{kind}/{}: {}",
                invalid.metadata.name.as_deref().unwrap_or("?"),
                invalid.error
            )),
        }
    }
    (ok, bad)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => future::pending().await,
    }
}

/// Writes NodeNetworkState/<node>, only when it changed, retrying with backoff.
struct StatusWriter {
    api: Api<NodeNetworkState>,
    /// The object exists with its owner reference to the Node.
    object_ok: bool,
    last: Option<NodeNetworkStateStatus>,
    /// A status the API server refused as invalid: not sent again until it changes.
    refused: Option<NodeNetworkStateStatus>,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Counts the status writes the API server accepted.
    writes: prometheus_client::metrics::counter::Counter,
}

impl StatusWriter {
    fn new(
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

    async fn write(&mut self, node: &Node, status: NodeNetworkStateStatus) -> Result<(), kube::Error> {
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
