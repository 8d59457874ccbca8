//! The metrics of a node's workers, in one place. The rebalancer's and the dropper's are the
//! node's own ([`crate::metrics::NodeMetrics`]); docs/operations.md lists them all.

use prometheus::core::Collector;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Every worker's metrics.
pub struct WorkerMetrics {
    /// Hints kept and delivered.
    pub hints: HintMetrics,
    /// Anti-entropy rounds and repairs.
    pub repair: RepairMetrics,
    /// Tombstone collection.
    pub gc: GcMetrics,
}

impl WorkerMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<WorkerMetrics> {
        let r = |metric| registered(registry, metric);
        let by = |name: &str, help: &str, label: &str| IntCounterVec::new(Opts::new(name, help), &[label]);
        let gauges = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["target"]);
        let hints = HintMetrics {
            pending: registered(registry, gauges("kv_hints_pending", "Hints kept for a target"))?,
            pending_bytes: registered(
                registry,
                gauges("kv_hints_pending_bytes", "Encoded bytes of hints kept for a target"),
            )?,
            oldest: registered(
                registry,
                gauges("kv_hints_oldest_seconds", "Age of the oldest hint kept for a target"),
            )?,
            delivered: r(IntCounter::new("kv_hints_delivered_total", "Hints merged by their owner and deleted"))?,
            dropped: registered(
                registry,
                by("kv_hints_dropped_total", "Hints dropped undelivered, by reason (expired, too_old)", "reason"),
            )?,
        };
        let repair = RepairMetrics {
            rounds: r(IntCounter::new("kv_repair_rounds_total", "Anti-entropy rounds run"))?,
            keys: registered(
                registry,
                by("kv_repair_keys_total", "Keys repaired by anti-entropy, by direction (in, out)", "direction"),
            )?,
            bytes: registered(
                registry,
                by("kv_repair_bytes_total", "Record bytes moved by anti-entropy, by direction (in, out)", "direction"),
            )?,
            oldest_sync: registered(
                registry,
                IntGauge::new(
                    "kv_repair_oldest_sync_seconds",
                    "Seconds since the segment least recently found in sync with every other replica was",
                ),
            )?,
            segments: registered(
                registry,
                IntGauge::new("kv_repair_segments", "Segments this node holds completely and keeps trees for"),
            )?,
        };
        let gc = GcMetrics {
            rounds: r(IntCounter::new("kv_gc_rounds_total", "Tombstone collection passes"))?,
            candidates: r(IntCounter::new(
                "kv_gc_candidates_total",
                "Keys found holding only tombstones older than the grace",
            ))?,
            collected: r(IntCounter::new("kv_gc_keys_collected_total", "Keys purged from every replica"))?,
        };
        Ok(WorkerMetrics { hints, repair, gc })
    }
}

/// `metric`, registered in `registry`.
fn registered<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> prometheus::Result<M> {
    let metric = metric?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

/// Hinted-handoff metrics.
#[derive(Clone)]
pub struct HintMetrics {
    pub(crate) pending: IntGaugeVec,
    pub(crate) pending_bytes: IntGaugeVec,
    pub(crate) oldest: IntGaugeVec,
    pub(crate) delivered: IntCounter,
    pub(crate) dropped: IntCounterVec,
}

/// Anti-entropy metrics.
#[derive(Clone)]
pub struct RepairMetrics {
    pub(crate) rounds: IntCounter,
    pub(crate) keys: IntCounterVec,
    pub(crate) bytes: IntCounterVec,
    pub(crate) oldest_sync: IntGauge,
    pub(crate) segments: IntGauge,
}

/// Tombstone collector metrics.
#[derive(Clone)]
pub struct GcMetrics {
    pub(crate) rounds: IntCounter,
    pub(crate) candidates: IntCounter,
    pub(crate) collected: IntCounter,
}
