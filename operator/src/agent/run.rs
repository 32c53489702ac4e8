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
use kube::ResourceExt;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{Instrument, error, info, info_span, instrument, warn};

use super::desired::{self, Inputs, NodeInfo};
use super::metrics::{Metrics, OpLabel, StateLabel};
use super::pacing::{Outcome, Pacer};
use super::report;
use super::writer::StatusWriter;
use crate::api::node_state::NodeNetworkStateStatus;
use crate::api::{Link, Network, NodeNetworkState};
use crate::cache::{NNO_CRDS, OnError, READY_POLL, cache, check_listable, is_ready, trimmed_cache};
use crate::netlink::{Applied, DesiredLink, Engine, LinkState};
use crate::readiness::{self, Readiness};
use crate::telemetry;

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
    /// Where the last good generation of each Network and Link is kept across
    /// restarts (default: `agent-state.json` beside the socket).
    #[arg(long, env = "NNO_STATE_FILE")]
    pub state_file: Option<PathBuf>,
    /// How long a changed configuration that was Ready may take to be Ready again,
    /// and the API server to answer, before the change is rolled back.
    #[arg(long, env = "NNO_PROBE_TIMEOUT", default_value = "10s", value_parser = humantime_secs)]
    pub probe_timeout: Duration,
}

/// Parses `10s`, `1500ms` or a plain number of seconds.
fn humantime_secs(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration such as 10s or 1500ms");
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse().map(Duration::from_millis).map_err(|_| bad());
    }
    let secs = s.strip_suffix('s').unwrap_or(s);
    secs.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite() && *f >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(bad)
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

    let state_file = args.state_file.clone().unwrap_or_else(|| {
        args.socket
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join("agent-state.json")
    });
    info!(file = %state_file.display(), "keeping the last good generations");
    let pacer = Pacer::load(&args.node_name, Some(state_file), args.probe_timeout);
    let agent = Agent::start(client, args.node_name.clone(), metrics, readiness, health);
    let outcome = tokio::select! {
        result = agent.run(engine, pacer) => result,
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
    fn compute(&self, info: &NodeInfo, engine: &[LinkState], pacer: &mut Pacer) -> Result<Computed, String> {
        let (networks, mut unreadable) = readable(self.networks.state(), "Network");
        let (links, bad_links) = readable(self.links.state(), "Link");
        unreadable.extend(bad_links);
        if !unreadable.is_empty() {
            return Err(unreadable.join("; "));
        }
        let reports = self.reports();
        let nodes = self.cluster_nodes();
        // Each object as this node applies it: a change waits for the controller.
        let (paced_networks, paced_links) = pacer.view(&networks, &links, &info.labels);
        let inputs = Inputs {
            node: info,
            networks: &paced_networks,
            links: &paced_links,
            reports: &reports,
            nodes: &nodes,
            engine,
        };
        let mut wants = desired::compute(&inputs);
        pacer.adjust(&mut wants);
        let engine_links = wants.iter().filter_map(|w| w.link.clone()).collect();
        Ok(Computed {
            wants,
            links: engine_links,
            networks,
            objects: links,
        })
    }

    #[instrument(skip_all, fields(node = %self.node))]
    async fn run(mut self, engine: Engine, mut pacer: Pacer) -> anyhow::Result<()> {
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
        let Computed { wants, links, .. } = loop {
            match self.compute(&info, &[], &mut pacer) {
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
                let Computed {
                    wants,
                    links,
                    networks,
                    objects,
                } = match self.compute(&info, &applied.states, &mut pacer) {
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
                    let mut status = report::node_status(&wants, &applied.states, writer.last.as_ref());
                    let (jobs, failed) = pacer.due(
                        &networks,
                        &objects,
                        &wants,
                        &status,
                        writer.last.as_ref(),
                        Instant::now(),
                    );
                    let mut rolled_back = false;
                    for (owner, outcome) in failed {
                        rolled_back |= pacer.record(&owner, outcome);
                    }
                    rolled_back |= probe(&self.client, &mut pacer, jobs).await;
                    if rolled_back {
                        continue; // apply the last good configuration first
                    }
                    status.generations = pacer.generations();
                    self.report(&mut writer, &node, &wants, status).await;
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
            let probe_deadline = pacer.next_deadline();
            tokio::select! {
                changed = self.changed.changed() => changed.context("caches stopped")?,
                changed = applied_rx.changed() => changed.context("the engine stopped")?,
                () = sleep_until(retry), if retry.is_some() => {}
                () = sleep_until(probe_deadline), if probe_deadline.is_some() => {}
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
        status: NodeNetworkStateStatus,
    ) {
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

/// What the node should have, and the objects it was decided from.
struct Computed {
    wants: Vec<desired::Want>,
    links: Vec<DesiredLink>,
    networks: Vec<Arc<Network>>,
    /// The Links.
    objects: Vec<Arc<Link>>,
}

/// Runs the probes due and records their outcomes; true when a generation was
/// rolled back (the configuration to apply changed).
async fn probe(client: &kube::Client, pacer: &mut Pacer, jobs: Vec<super::pacing::Job>) -> bool {
    if jobs.is_empty() {
        return false;
    }
    let api = super::probe::api_server(client, pacer.timeout()).await;
    let mut changed = false;
    for job in jobs {
        let outcome = match &api {
            Outcome::Pass => super::probe::peers(&job.peers).await,
            failed => failed.clone(),
        };
        changed |= pacer.record(&job.owner, outcome);
    }
    changed
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
