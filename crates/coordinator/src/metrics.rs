//! Every coordinator metric.

use prometheus::{exponential_buckets, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

/// Coordinator metrics.
#[derive(Clone)]
pub struct CoordinatorMetrics {
    /// `kv_replica_calls_total{op, outcome}`: calls to replicas (coordinate, store, read, purge)
    /// by outcome (ok, unreachable, failed, refused, timeout).
    pub replica_calls: IntCounterVec,
    /// `kv_replica_call_duration_seconds{op}`.
    pub replica_call_seconds: HistogramVec,
    /// `kv_quorum_failures_total{op}`: operations answered 503 for lack of replicas.
    pub quorum_failures: IntCounterVec,
    /// `kv_replica_batch_calls`: calls per batch sent to a replica (local or remote).
    pub batch_calls: prometheus::Histogram,
    /// `kv_read_repairs_total`: replicas sent newer versions after a read.
    pub read_repairs: IntCounter,
    /// `kv_tombstones_purged_total`: keys purged from replicas after the grace period.
    pub tombstones_purged: IntCounter,
    /// `kv_hints_written_total{holder}`: writes a replica missed that a fallback (`fallback`),
    /// or for want of one a replica that holds the write (`replica`), keeps as a hint;
    /// `none`: no node could keep it (anti-entropy must repair the replica).
    pub hints_written: IntCounterVec,
    /// `kv_read_siblings`: values a successful client read of an existing key returned (1: no
    /// conflict; more: siblings the client must resolve).
    pub read_siblings: prometheus::Histogram,
}

impl CoordinatorMetrics {
    /// Metrics attached to no registry (tests).
    pub fn unregistered() -> Self {
        // Fixed names and labels: construction cannot fail.
        CoordinatorMetrics {
            replica_calls: IntCounterVec::new(
                Opts::new("kv_replica_calls_total", "Calls to replicas by operation and outcome"),
                &["op", "outcome"],
            )
            .expect("invariant: valid metric"),
            replica_call_seconds: HistogramVec::new(
                HistogramOpts::new("kv_replica_call_duration_seconds", "Latency of calls to replicas")
                    .buckets(exponential_buckets(0.000_05, 2.0, 18).unwrap_or_default()),
                &["op"],
            )
            .expect("invariant: valid metric"),
            quorum_failures: IntCounterVec::new(
                Opts::new("kv_quorum_failures_total", "Operations that did not reach their quorum"),
                &["op"],
            )
            .expect("invariant: valid metric"),
            batch_calls: prometheus::Histogram::with_opts(
                HistogramOpts::new("kv_replica_batch_calls", "Replica calls coalesced into one batch")
                    .buckets(exponential_buckets(1.0, 2.0, 10).unwrap_or_default()),
            )
            .expect("invariant: valid metric"),
            read_repairs: IntCounter::new(
                "kv_read_repairs_total",
                "Replicas repaired with newer versions after a read",
            )
            .expect("invariant: valid metric"),
            tombstones_purged: IntCounter::new(
                "kv_tombstones_purged_total",
                "Replica copies of keys purged after the tombstone grace period",
            )
            .expect("invariant: valid metric"),
            hints_written: IntCounterVec::new(
                Opts::new(
                    "kv_hints_written_total",
                    "Writes a replica missed, kept as hints, by holder (fallback, replica, none)",
                ),
                &["holder"],
            )
            .expect("invariant: valid metric"),
            read_siblings: prometheus::Histogram::with_opts(
                HistogramOpts::new(
                    "kv_read_siblings",
                    "Values returned by a successful read of an existing key (more than 1: siblings)",
                )
                .buckets(vec![1.0, 2.0, 3.0, 5.0, 10.0, 25.0, 100.0]),
            )
            .expect("invariant: valid metric"),
        }
    }

    /// Creates and registers the metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = CoordinatorMetrics::unregistered();
        // Exported at 0 from the start, so that rates and alerts on them have a series.
        for op in ["get", "put", "delete"] {
            m.quorum_failures.with_label_values(&[op]);
        }
        registry.register(Box::new(m.replica_calls.clone()))?;
        registry.register(Box::new(m.replica_call_seconds.clone()))?;
        registry.register(Box::new(m.quorum_failures.clone()))?;
        registry.register(Box::new(m.batch_calls.clone()))?;
        registry.register(Box::new(m.read_repairs.clone()))?;
        registry.register(Box::new(m.tombstones_purged.clone()))?;
        registry.register(Box::new(m.hints_written.clone()))?;
        registry.register(Box::new(m.read_siblings.clone()))?;
        Ok(m)
    }
}
