//! Agent metrics, registered under the `nno_agent` prefix.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::netlink::WriteCounter;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

#[derive(Clone, Debug)]
pub struct Metrics {
    /// Desired-state computations (each may hand the engine new links).
    pub reconciles: Counter,
    pub reconcile_duration: Histogram,
    /// Interfaces by state (ready, not_ready).
    pub links: Family<StateLabel, Gauge>,
    /// Failed API requests and watches, by operation.
    pub api_errors: Family<OpLabel, Counter>,
    pub status_writes: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry, writes: WriteCounter, repairs: WriteCounter) -> Self {
        let m = Self {
            reconciles: Counter::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            links: Family::default(),
            api_errors: Family::default(),
            status_writes: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("nno_agent");
        r.register("reconciles", "Desired-state computations", m.reconciles.clone());
        r.register(
            "reconcile_duration_seconds",
            "Duration of a desired-state computation and report",
            m.reconcile_duration.clone(),
        );
        r.register("links", "Managed interfaces by state", m.links.clone());
        r.register(
            "api_errors",
            "Failed API requests and watches by operation",
            m.api_errors.clone(),
        );
        r.register(
            "status_writes",
            "NodeNetworkState status writes",
            m.status_writes.clone(),
        );
        r.register_collector(Box::new(EngineCounters { writes, repairs }));
        m
    }
}

/// The engine's counters, read when scraped.
#[derive(Debug)]
struct EngineCounters {
    writes: WriteCounter,
    repairs: WriteCounter,
}

impl prometheus_client::collector::Collector for EngineCounters {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        for (name, help, value) in [
            (
                "netlink_writes",
                "Netlink write requests made by the engine",
                self.writes.get(),
            ),
            (
                "drift_repairs",
                "Engine passes started by a netlink event that had to write: drift repaired",
                self.repairs.get(),
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}
