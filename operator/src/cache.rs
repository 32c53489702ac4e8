//! Caches of Kubernetes objects kept by watches (kube reflectors), and a signal that
//! fires on every change: what the controller and the agents read.
//!
//! A reflector keeps its last contents while the API server is unreachable and
//! replaces them only after a complete relist, so a failing watch never looks like
//! objects being deleted.

use futures::{StreamExt, future};
use kube::Resource;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tracing::warn;

/// Counts watch failures, for the API-error metrics.
pub type OnError = std::sync::Arc<dyn Fn() + Send + Sync>;

/// A cache of `K` and the future that keeps it (drive it on a task); every change is
/// signalled on `changed`, every watch failure counted by `on_error`.
pub fn cache<K>(
    api: Api<K>,
    config: watcher::Config,
    changed: watch::Sender<()>,
    on_error: OnError,
) -> (Store<K>, impl std::future::Future<Output = ()> + Send + 'static)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let driver = reflector::reflector(writer, watcher(api, config))
        .default_backoff()
        .touched_objects()
        .for_each(move |event| {
            match event {
                Ok(_) => {
                    changed.send_replace(());
                }
                Err(error) => {
                    on_error();
                    warn!(%error, kind = K::kind(&()).as_ref(), "watch failed; keeping the cached objects, retrying with backoff");
                }
            }
            future::ready(())
        });
    (reader, driver)
}

/// A stream that yields each time `changed` fires.
pub fn triggers(rx: watch::Receiver<()>) -> impl futures::Stream<Item = ()> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    })
}

/// `K` cannot be listed: its CRD is not installed, or RBAC forbids it.
#[derive(Debug, thiserror::Error)]
#[error("cannot list {plural}: {source}. {hint}")]
pub struct NotListable {
    plural: String,
    hint: &'static str,
    #[source]
    source: kube::Error,
}

/// Checks at start-up that `K` can be listed (one object at most), so a missing CRD
/// or permission is said plainly instead of as an endless watch retry.
pub async fn check_listable<K>(client: &kube::Client, hint: &'static str) -> Result<(), NotListable>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let api: Api<K> = Api::all(client.clone());
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(source) => Err(NotListable {
            plural: format!("{}.{}", K::plural(&()), K::group(&())),
            hint,
            source,
        }),
    }
}

/// The hint for the operator's own kinds.
pub const NNO_CRDS: &str =
    "Is the CRD installed (the Helm chart installs it) and does this service account have the chart's RBAC?";
