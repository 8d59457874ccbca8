//! Every storage metric, in one place.

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
};

/// Storage metrics. Create once per process with [`StorageMetrics::register`].
#[derive(Clone)]
pub struct StorageMetrics {
    /// `kv_storage_operations_total{op, outcome}`: get/put/scan calls by outcome (ok, error).
    pub operations: IntCounterVec,
    /// `kv_storage_operation_duration_seconds{op}`: time inside the engine, including the wait
    /// for durability on puts.
    pub operation_seconds: HistogramVec,
    /// `kv_storage_fsync_duration_seconds`: each fsync of the engine's log.
    pub fsync_seconds: Histogram,
    /// `kv_storage_group_commit_writes`: writes made durable by one fsync.
    pub group_commit_writes: Histogram,
    /// `kv_storage_disk_bytes`: engine files on disk, refreshed on scrape.
    pub disk_bytes: IntGauge,
    /// `kv_storage_keys`: approximate number of keys, refreshed on scrape.
    pub keys: IntGauge,
    /// `kv_storage_memtable_bytes`: bytes in the engine's memtables, the active ones and those
    /// sealed and waiting for their flush (fjall; 0 for other engines), refreshed on scrape.
    pub memtable_bytes: IntGauge,
    /// `kv_storage_block_cache_bytes`: bytes in the engine's block cache (at most
    /// `--cache-mb`), refreshed on scrape.
    pub block_cache_bytes: IntGauge,
    /// `kv_storage_flushes_pending`: sealed memtables waiting for their flush to a table file,
    /// refreshed on scrape. fjall stalls writes at four.
    pub flushes_pending: IntGauge,
}

impl StorageMetrics {
    /// Metrics not attached to any registry (tests, benchmarks).
    pub fn unregistered() -> Self {
        let latency = exponential_buckets(0.000_01, 2.0, 20).unwrap_or_default();
        let op = HistogramOpts::new(
            "kv_storage_operation_duration_seconds",
            "Time spent in the storage engine per operation, including the wait for durability on puts",
        )
        .buckets(latency.clone());
        // The names and label sets below are fixed and valid, so construction cannot fail.
        StorageMetrics {
            operations: IntCounterVec::new(
                Opts::new("kv_storage_operations_total", "Storage operations by kind and outcome"),
                &["op", "outcome"],
            )
            .expect("invariant: valid metric"),
            operation_seconds: HistogramVec::new(op, &["op"]).expect("invariant: valid metric"),
            fsync_seconds: Histogram::with_opts(
                HistogramOpts::new("kv_storage_fsync_duration_seconds", "Duration of each fsync of the storage log")
                    .buckets(latency),
            )
            .expect("invariant: valid metric"),
            group_commit_writes: Histogram::with_opts(
                HistogramOpts::new(
                    "kv_storage_group_commit_writes",
                    "Writes made durable by one fsync (group commit batch size)",
                )
                .buckets(exponential_buckets(1.0, 2.0, 12).unwrap_or_default()),
            )
            .expect("invariant: valid metric"),
            disk_bytes: IntGauge::new("kv_storage_disk_bytes", "Bytes of storage engine files on disk")
                .expect("invariant: valid metric"),
            keys: IntGauge::new("kv_storage_keys", "Approximate number of stored keys")
                .expect("invariant: valid metric"),
            memtable_bytes: IntGauge::new(
                "kv_storage_memtable_bytes",
                "Bytes in the storage engine's memtables (active and sealed, waiting for a flush)",
            )
            .expect("invariant: valid metric"),
            block_cache_bytes: IntGauge::new(
                "kv_storage_block_cache_bytes",
                "Bytes in the storage engine's block cache",
            )
            .expect("invariant: valid metric"),
            flushes_pending: IntGauge::new(
                "kv_storage_flushes_pending",
                "Sealed memtables waiting for their flush to a table file",
            )
            .expect("invariant: valid metric"),
        }
    }

    /// Creates the metrics and registers them with `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = StorageMetrics::unregistered();
        registry.register(Box::new(m.operations.clone()))?;
        registry.register(Box::new(m.operation_seconds.clone()))?;
        registry.register(Box::new(m.fsync_seconds.clone()))?;
        registry.register(Box::new(m.group_commit_writes.clone()))?;
        registry.register(Box::new(m.disk_bytes.clone()))?;
        registry.register(Box::new(m.keys.clone()))?;
        registry.register(Box::new(m.memtable_bytes.clone()))?;
        registry.register(Box::new(m.block_cache_bytes.clone()))?;
        registry.register(Box::new(m.flushes_pending.clone()))?;
        Ok(m)
    }
}
