//! Caches of Kubernetes objects kept by watches (kube reflectors), and a signal that
//! fires on every change: what the controller and the agents read.
//!
//! A reflector keeps its last contents while the API server is unreachable and
//! replaces them only after a complete relist, so a failing watch never looks like
//! objects being deleted.

use futures::{StreamExt, TryStreamExt};
use kube::Resource;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kube::runtime::utils::Backoff;
use kube::runtime::watcher;
use tokio::sync::watch;
use tracing::{debug, warn};

/// Counts watch failures, for the API-error metrics.
pub type OnError = std::sync::Arc<dyn Fn() + Send + Sync>;

/// What a cache can hold: a cluster- or namespace-scoped kind kube can watch.
pub trait Cacheable:
    Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static
{
}

impl<K> Cacheable for K where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// A cache of `K` and the future that keeps it (drive it on a task); every change is
/// signalled on `changed`, every watch failure counted by `on_error`.
pub fn cache<K: Cacheable>(
    api: Api<K>,
    config: watcher::Config,
    changed: watch::Sender<()>,
    on_error: OnError,
) -> (Store<K>, impl std::future::Future<Output = ()> + Send + 'static) {
    let (reader, writer) = reflector::store();
    let events = reflector::reflector(writer, watcher(api, config));
    (reader, drive::<K>(events, changed, on_error, || true))
}

/// Like [`cache`], but each object is cut down by `trim` to the fields its reader
/// uses before it is stored, and only a change of those is signalled: a cache of
/// Nodes that keeps their labels and addresses is not woken by every status update.
pub fn trimmed_cache<K: Cacheable + PartialEq>(
    api: Api<K>,
    config: watcher::Config,
    changed: watch::Sender<()>,
    on_error: OnError,
    trim: fn(&mut K),
) -> (Store<K>, impl std::future::Future<Output = ()> + Send + 'static) {
    let (reader, writer) = reflector::store();
    // The stream is one pipeline: an event is trimmed and compared with the stored
    // copy here, then stored by the reflector, then seen by `drive`, before the next.
    let differs = Arc::new(AtomicBool::new(true));
    let (store, mark) = (reader.clone(), differs.clone());
    let trimmed = watcher(api, config).map_ok(move |event| {
        event.modify(|obj| {
            trim(obj);
            let same = store
                .get(&ObjectRef::from_obj(obj))
                .is_some_and(|old| *old == *obj);
            mark.store(!same, Ordering::Relaxed);
        })
    });
    let events = reflector::reflector(writer, trimmed);
    let driver = drive::<K>(events, changed, on_error, move || differs.load(Ordering::Relaxed));
    (reader, driver)
}

/// Runs a reflector's event stream: signals `changed` after the first complete list,
/// on every deletion and on every update for which `differs` says so; retries failed
/// watches with [`WatchBackoff`].
async fn drive<K>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    changed: watch::Sender<()>,
    on_error: OnError,
    differs: impl Fn() -> bool + Send,
) where
    K: Resource<DynamicType = ()>,
{
    let mut events = std::pin::pin!(events);
    let mut backoff = WatchBackoff::default();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => debug!(kind = K::kind(&()).as_ref(), "listing"),
            Ok(watcher::Event::InitApply(_)) => {}
            Ok(watcher::Event::InitDone) => {
                debug!(kind = K::kind(&()).as_ref(), "listed");
                backoff.reset();
                changed.send_replace(());
            }
            Ok(watcher::Event::Apply(_)) => {
                backoff.reset();
                if differs() {
                    changed.send_replace(());
                }
            }
            Ok(watcher::Event::Delete(_)) => {
                backoff.reset();
                changed.send_replace(());
            }
            // The server no longer has our resource version (e.g. it restarted):
            // list again at once, as client-go does; it is not a connectivity error.
            Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                debug!(
                    kind = K::kind(&()).as_ref(),
                    "resource version expired; listing again"
                );
            }
            Err(error) => {
                on_error();
                let delay = backoff.next().unwrap_or(BACKOFF_MAX);
                warn!(%error, kind = K::kind(&()).as_ref(), retry_in = ?delay, "watch failed; keeping the cached objects");
                tokio::time::sleep(delay).await;
            }
        }
    }
    warn!(kind = K::kind(&()).as_ref(), "watch stream ended");
}

/// Retry delays of a failed watch: exponential from 250 ms, doubling, capped at 10 s,
/// with up to 25% jitter; reset by the first event that arrives. kube's default goes
/// up to 30 s, which after an API server outage of a few seconds leaves the caches
/// stale for half a minute once the server is back.
#[derive(Debug)]
pub struct WatchBackoff {
    next: Duration,
}

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: BACKOFF_MIN }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        // Jitter from the clock's low bits: enough to keep agents from retrying in step.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let jitter = delay.mul_f64(f64::from(nanos % 1000) / 4000.0);
        Some(delay + jitter)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// Whether `store` has its first complete list, without waiting.
///
/// `Store::wait_until_ready` keeps the waker of only one waiting task (a oneshot
/// channel underneath): with several waiters, such as concurrent reconciles, the
/// others are never woken. Checking without registering a waker avoids that.
pub fn is_ready<K>(store: &Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    futures::FutureExt::now_or_never(store.wait_until_ready()).is_some()
}

/// How often [`is_ready`] callers look again.
pub const READY_POLL: Duration = Duration::from_millis(20);

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_backoff_grows_to_its_cap_and_resets() {
        let mut b = WatchBackoff::default();
        let delays: Vec<Duration> = (0..10).map(|_| b.next().unwrap()).collect();
        for (i, d) in delays.iter().enumerate() {
            let base = (BACKOFF_MIN * 2u32.pow(i as u32)).min(BACKOFF_MAX);
            assert!(
                *d >= base && *d <= base.mul_f64(1.25),
                "delay {i}: {d:?} for base {base:?}"
            );
        }
        b.reset();
        assert!(b.next().unwrap() < BACKOFF_MIN * 2);
    }
}
