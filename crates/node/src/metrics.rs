//! The metrics only a storage node has: range streams, dropped ranges, replica refusals. The
//! rest are registered by the crates that own them, in the same registry: HTTP
//! ([`kv_server::http::HttpMetrics`]), coordinator, membership, transport, workers and storage.
//! docs/operations.md lists them all.

use kv_replica::replica::ReplicaMetrics;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// A node's own metrics.
#[derive(Clone)]
pub struct NodeMetrics {
    /// `kv_ranges_streaming`: ranges being streamed in or out now.
    pub ranges_streaming: IntGauge,
    /// `kv_stream_keys_total{direction}`: keys streamed in (pulled or received) and out.
    pub stream_keys: IntCounterVec,
    /// `kv_stream_bytes_total{direction}`: value bytes streamed in and out.
    pub stream_bytes: IntCounterVec,
    /// `kv_keys_dropped_total`: keys of lost ranges removed after their owners took them.
    pub keys_dropped: IntCounter,
    /// `kv_keys_discarded_total`: keys of lost ranges holding a version older than half
    /// the tombstone grace, removed without being handed off.
    pub keys_discarded: IntCounter,
    /// `kv_handoff_copies_skipped_total`: copies of keys of lost ranges not handed to an owner
    /// because its Merkle tree showed it held the same versions already.
    pub handoff_skipped: IntCounter,
    /// `kv_ranges_dropping`: spans of lost ranges not yet handed off and removed.
    pub ranges_dropping: IntGauge,
    /// `kv_storage_disk_free_bytes`: bytes free for this process on the data directory's
    /// filesystem, refreshed on scrape.
    pub disk_free: IntGauge,
    /// `kv_storage_disk_capacity_bytes`: size of that filesystem.
    pub disk_capacity: IntGauge,
    /// `kv_refused_members_total{reason}`: peer requests refused because their sender left
    /// (`left`) or was removed (`removed`).
    pub refused_members: IntCounterVec,
    /// Replica refusals and amnesia.
    pub replica: ReplicaMetrics,
}

impl NodeMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let ranges_streaming = IntGauge::new("kv_ranges_streaming", "Ranges being streamed in or out")?;
        let stream_keys =
            IntCounterVec::new(Opts::new("kv_stream_keys_total", "Keys streamed by direction"), &["direction"])?;
        let stream_bytes = IntCounterVec::new(
            Opts::new("kv_stream_bytes_total", "Value bytes streamed by direction"),
            &["direction"],
        )?;
        let keys_dropped = IntCounter::new(
            "kv_keys_dropped_total",
            "Keys of ranges this node lost, removed once their current owners held them",
        )?;
        let ranges_dropping =
            IntGauge::new("kv_ranges_dropping", "Spans of lost ranges not yet handed off and removed")?;
        let keys_discarded = IntCounter::new(
            "kv_keys_discarded_total",
            "Keys of lost ranges holding a version older than half the tombstone grace, removed without hand-off",
        )?;
        let handoff_skipped = IntCounter::new(
            "kv_handoff_copies_skipped_total",
            "Copies of keys of lost ranges not handed to an owner whose Merkle tree showed it held them already",
        )?;
        registry.register(Box::new(handoff_skipped.clone()))?;
        registry.register(Box::new(ranges_streaming.clone()))?;
        registry.register(Box::new(stream_keys.clone()))?;
        registry.register(Box::new(stream_bytes.clone()))?;
        registry.register(Box::new(keys_dropped.clone()))?;
        registry.register(Box::new(keys_discarded.clone()))?;
        let disk_free = IntGauge::new(
            "kv_storage_disk_free_bytes",
            "Bytes available to the node on the filesystem of its data directory",
        )?;
        let disk_capacity =
            IntGauge::new("kv_storage_disk_capacity_bytes", "Size of the filesystem of the node's data directory")?;
        let refused_members = IntCounterVec::new(
            Opts::new(
                "kv_refused_members_total",
                "Peer requests refused because their sender left or was removed from the cluster",
            ),
            &["reason"],
        )?;
        for reason in ["left", "removed"] {
            refused_members.with_label_values(&[reason]);
        }
        registry.register(Box::new(refused_members.clone()))?;
        registry.register(Box::new(ranges_dropping.clone()))?;
        registry.register(Box::new(disk_free.clone()))?;
        registry.register(Box::new(disk_capacity.clone()))?;
        Ok(NodeMetrics {
            disk_free,
            disk_capacity,
            ranges_streaming,
            stream_keys,
            stream_bytes,
            keys_dropped,
            keys_discarded,
            handoff_skipped,
            ranges_dropping,
            refused_members,
            replica: ReplicaMetrics::register(registry)?,
        })
    }

    /// Refreshes the disk gauges from the filesystem holding `dir` (left as they were if it
    /// cannot be read).
    pub fn refresh_disk(&self, dir: &std::path::Path) {
        if let Some((free, total)) = disk_space(dir) {
            self.disk_free.set(i64::try_from(free).unwrap_or(i64::MAX));
            self.disk_capacity.set(i64::try_from(total).unwrap_or(i64::MAX));
        }
    }
}

/// Free and total bytes of the filesystem holding `dir` (`statvfs`), if it can be read.
pub fn disk_space(dir: &std::path::Path) -> Option<(u64, u64)> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    let block = stat.f_frsize;
    Some((stat.f_bavail.saturating_mul(block), stat.f_blocks.saturating_mul(block)))
}
