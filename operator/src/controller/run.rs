//! Wiring of the controller process: flags, leader election, caches, the Network
//! and Link controllers, health and metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, future};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{Instrument, error, info, info_span, warn};

use super::context::Context;
use super::metrics::{ErrorLabel, Metrics};
use super::nad::{CniVersion, Settings};
use super::{Error, LABEL_MANAGED_BY, MANAGED_BY, link, network};
use crate::api::{Link, Network, NodeNetworkState};
use crate::cache::{NNO_CRDS, OnError, cache, check_listable, triggers};
use crate::multus::NetworkAttachmentDefinition;
use crate::telemetry;

/// `node-network-operator controller`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "NNO_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Namespace of the leader-election Lease (default: the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "nno-system")]
    pub lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "node-network-operator-controller")]
    pub lease_name: String,
    /// This replica's identity in the Lease (default: the pod name, else host and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, default_value_t = 15)]
    pub lease_duration: u64,
    /// cniVersion of the NetworkAttachmentDefinitions.
    #[arg(long, value_enum, default_value = "1.0.0")]
    pub cni_version: CniVersion,
    /// The agents' readiness socket, as the shim sees it on the node.
    #[arg(long, default_value = crate::readiness::DEFAULT_SOCKET)]
    pub shim_socket: String,
    /// Seconds the shim holds a pod's attachment waiting for the bridge.
    #[arg(long, default_value_t = 20)]
    pub shim_timeout: u32,
    /// The kubeconfig whereabouts uses on the nodes.
    #[arg(long, default_value = "/etc/cni/net.d/whereabouts.d/whereabouts.kubeconfig")]
    pub whereabouts_kubeconfig: String,
    /// Seconds a deleted Network waits for NotReady nodes to remove its links.
    #[arg(long, default_value_t = 300)]
    pub cleanup_grace: u64,
}

/// Runs the controller until SIGTERM/SIGINT, or until it loses the leader Lease.
pub async fn run(client: kube::Client, args: Args) -> anyhow::Result<()> {
    check_crds(&client).await?;
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let ready = telemetry::Health::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let server = telemetry::serve(args.metrics_addr, Arc::new(registry), ready.clone(), stopped).await?;
    let server = tokio::spawn(server.instrument(info_span!("health", addr = %args.metrics_addr)));

    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let lease = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(&identity)
        .with_duration(args.lease_duration)
        .with_grace((args.lease_duration / 3).max(1))
        .with_field_manager(format!("{}/lease", super::MANAGER))
        .build()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "setting up the leader Lease {}/{}: {e}",
                args.lease_namespace,
                args.lease_name
            )
        })?;
    let (mut leader, lease_task) = lease.watch().await;
    info!(identity, lease = %format!("{}/{}", args.lease_namespace, args.lease_name), "waiting to become the leader");
    let became = tokio::select! {
        _ = telemetry::shutdown_signal() => false,
        became = leader.wait_for(|l| *l) => {
            became.map_err(|_| anyhow::anyhow!("the leader election task ended"))?;
            true
        }
    };
    if !became {
        drop(leader);
        let _ = stop_tx.send(true);
        let _ = server.await;
        return Ok(());
    }
    info!(identity, "became the leader");
    metrics.leader.set(1);
    ready.set(true);

    let lost = {
        let mut leader = leader.clone();
        async move {
            let _ = leader.wait_for(|l| !*l).await;
        }
    };
    // Step down before another replica may take an expired Lease, also while the
    // lease manager cannot tell (it cannot reach the API server to renew).
    let duration = Duration::from_secs(args.lease_duration);
    // Half the lease manager's grace (it renews `grace` before expiry).
    let margin = Duration::from_secs((args.lease_duration / 3).max(1)) / 2;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &args.lease_namespace);
    let lease_name = args.lease_name.clone();
    let unconfirmed = super::lease::step_down(leases, &lease_name, &identity, duration, margin);
    let outcome = tokio::select! {
        _ = controllers(client, args, metrics.clone()) => Ok(()),
        _ = telemetry::shutdown_signal() => Ok(()),
        _ = lost => Err(anyhow::anyhow!("lost the leader Lease: exiting so that a restart competes again")),
        why = unconfirmed => {
            error!(%why, "stepping down as leader");
            Err(anyhow::anyhow!("stepped down as leader: {why}; exiting so that a restart competes again"))
        }
    };
    metrics.leader.set(0);
    ready.set(false);
    drop(leader);
    // Closing the channel ends the lease task; release so a standby takes over at once.
    if let Ok(Ok(manager)) = lease_task.await
        && let Err(e) = manager.release().await
    {
        warn!(error = %e, "releasing the leader Lease");
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    outcome
}

async fn check_crds(client: &kube::Client) -> anyhow::Result<()> {
    check_listable::<Network>(client, NNO_CRDS).await?;
    check_listable::<Link>(client, NNO_CRDS).await?;
    check_listable::<NodeNetworkState>(client, NNO_CRDS).await?;
    let multus = "Is multus installed (it installs the NetworkAttachmentDefinition CRD)?";
    check_listable::<NetworkAttachmentDefinition>(client, multus).await?;
    let service_cidrs =
        "ServiceCIDR objects (networking.k8s.io/v1) need Kubernetes 1.33 or newer, and the chart's RBAC";
    check_listable::<ServiceCIDR>(client, service_cidrs).await?;
    Ok(())
}

async fn controllers(client: kube::Client, args: Args, metrics: Metrics) {
    let (changed, _) = watch::channel(());
    let errors = metrics.watch_failures.clone();
    let on_error: OnError = Arc::new(move || {
        errors.inc();
    });
    let config = watcher::Config::default;
    let (nodes, nodes_driver) = cache(
        Api::<Node>::all(client.clone()),
        config(),
        changed.clone(),
        on_error.clone(),
    );
    let states_api = Api::<NodeNetworkState>::all(client.clone());
    let (states, states_driver) = cache(states_api, config(), changed.clone(), on_error.clone());
    let (namespaces, ns_driver) = cache(
        Api::<Namespace>::all(client.clone()),
        config(),
        changed.clone(),
        on_error.clone(),
    );
    let (service_cidrs, sc_driver) = cache(
        Api::<ServiceCIDR>::all(client.clone()),
        config(),
        changed.clone(),
        on_error,
    );

    // One object that cannot be read must not stop the others: DeserializeGuard.
    let networks_ctl = Controller::new(Api::<DeserializeGuard<Network>>::all(client.clone()), config());
    let links_ctl = Controller::new(Api::<DeserializeGuard<Link>>::all(client.clone()), config());
    let reporter = Reporter {
        controller: "node-network-operator".into(),
        instance: args.identity.clone(),
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        Recorder::new(client.clone(), reporter),
        networks_ctl.store(),
        links_ctl.store(),
        nodes,
        states,
        namespaces,
        service_cidrs,
        Settings {
            cni_version: args.cni_version,
            shim_socket: args.shim_socket.clone(),
            shim_timeout_seconds: args.shim_timeout,
            whereabouts_kubeconfig: args.whereabouts_kubeconfig.clone(),
        },
        Duration::from_secs(args.cleanup_grace),
        metrics,
        changed.clone(),
    ));

    let owned_nads = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    let networks = networks_ctl
        .owns(
            Api::<NetworkAttachmentDefinition>::all(client.clone()),
            owned_nads,
        )
        .reconcile_all_on(triggers(changed.subscribe()))
        .run(
            reconcile_network,
            error_policy::<DeserializeGuard<Network>>,
            ctx.clone(),
        )
        .for_each(|result| {
            if let Err(error) = result {
                warn!(%error, "Network reconcile");
            }
            future::ready(())
        });
    let links = links_ctl
        .reconcile_all_on(triggers(changed.subscribe()))
        .run(
            reconcile_link,
            error_policy::<DeserializeGuard<Link>>,
            ctx.clone(),
        )
        .for_each(|result| {
            if let Err(error) = result {
                warn!(%error, "Link reconcile");
            }
            future::ready(())
        });
    info!("controllers running");
    tokio::join!(nodes_driver, states_driver, ns_driver, sc_driver, networks, links);
    error!("controllers stopped");
}

async fn reconcile_network(
    guard: Arc<DeserializeGuard<Network>>,
    ctx: Arc<Context>,
) -> super::Result<Action> {
    match &guard.0 {
        Ok(network) => network::reconcile(Arc::new(network.clone()), ctx).await,
        Err(invalid) => {
            ctx.invalid(&Network::api_version(&()), "Network", invalid).await;
            Ok(Action::await_change())
        }
    }
}

async fn reconcile_link(guard: Arc<DeserializeGuard<Link>>, ctx: Arc<Context>) -> super::Result<Action> {
    match &guard.0 {
        Ok(link) => link::reconcile(Arc::new(link.clone()), ctx).await,
        Err(invalid) => {
            ctx.invalid(&Link::api_version(&()), "Link", invalid).await;
            Ok(Action::await_change())
        }
    }
}

/// Logs and counts the failure and retries with a backoff that grows with each
/// consecutive failure of the object (reset by a success, as the scheduler drops it).
fn error_policy<K: Resource<DynamicType = ()>>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    let kind = K::kind(&());
    let kind: &'static str = if kind == "Network" { "Network" } else { "Link" };
    warn!(%error, kind, name = %obj.name_any(), "reconcile failed; retrying");
    ctx.metrics
        .failures
        .get_or_create(&ErrorLabel {
            kind,
            error: error.metric_label(),
        })
        .inc();
    Action::requeue(Duration::from_secs(5))
}
