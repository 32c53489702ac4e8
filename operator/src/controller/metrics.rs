//! Controller metrics, registered under the `nno_controller` prefix.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub kind: &'static str,
    pub error: &'static str,
}

#[derive(Clone, Debug)]
pub struct Metrics {
    pub reconciles: Family<KindLabel, Counter>,
    pub failures: Family<ErrorLabel, Counter>,
    pub duration: Family<KindLabel, Histogram>,
    pub nad_writes: Counter,
    pub status_writes: Family<KindLabel, Counter>,
    pub leader: Gauge,
    pub watch_failures: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            reconciles: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 14))),
            nad_writes: Counter::default(),
            status_writes: Family::default(),
            leader: Gauge::default(),
            watch_failures: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("nno_controller");
        r.register("reconciles", "Reconciles by kind", m.reconciles.clone());
        r.register(
            "reconcile_failures",
            "Failed reconciles by kind and error",
            m.failures.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Reconcile duration by kind",
            m.duration.clone(),
        );
        r.register(
            "nad_writes",
            "NetworkAttachmentDefinition creations, updates and deletions",
            m.nad_writes.clone(),
        );
        r.register("status_writes", "Status writes by kind", m.status_writes.clone());
        r.register(
            "leader",
            "1 while this replica holds the leader Lease",
            m.leader.clone(),
        );
        m
    }

    /// Counts a reconcile and records its duration when the returned guard drops.
    pub fn reconcile(&self, kind: &'static str) -> Timer<'_> {
        self.reconciles.get_or_create(&KindLabel { kind }).inc();
        Timer {
            metrics: self,
            kind,
            start: Instant::now(),
        }
    }
}

/// Records a reconcile's duration on drop.
pub struct Timer<'a> {
    metrics: &'a Metrics,
    kind: &'static str,
    start: Instant,
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed().as_secs_f64();
        self.metrics
            .duration
            .get_or_create(&KindLabel { kind: self.kind })
            .observe(elapsed);
    }
}
