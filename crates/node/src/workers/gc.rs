//! [`TombstoneCollector`]: purges tombstones once every replica holds them, as a worker.
//!
//! Reads never purge. Every `--gc-interval` this worker scans the segments this node holds
//! completely and is the first replica of (so each key has one collector while its first
//! replica is up), picks the keys whose versions are all tombstones older than
//! `--tombstone-grace`, and hands each to [`kv_coordinator::Coordinator::collect`]: it reads
//! every replica, repairs stale ones, and purges only when every replica held exactly the same
//! tombstones at two reads two replica timeouts apart and the key's range is not moving
//! (docs/consistency.md, rule 8). A key whose replicas do not agree yet is left for a later
//! pass (hints and anti-entropy bring them together).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::workers::metrics::GcMetrics;
use futures::stream::{self, StreamExt};
use kv_coordinator::{now_ms, Coordinator};
use kv_membership::Membership;
use kv_replica::trees::segments;
use kv_replica::ReplicaCore;
use kv_worker::{Worker, WorkerState};
use tokio_util::sync::CancellationToken;

/// Keys collected at once (each waits two replica timeouts between its reads).
const CONCURRENCY: usize = 64;

/// Records read per page while looking for candidates.
const PAGE: usize = 4096;

/// Worker: tombstone garbage collection.
pub struct TombstoneCollector {
    core: Arc<ReplicaCore>,
    membership: Arc<Membership>,
    coordinator: Arc<Coordinator>,
    interval: Duration,
    grace_ms: u64,
    replicas: usize,
    metrics: GcMetrics,
    next: Instant,
    last: (u64, u64),
}

impl TombstoneCollector {
    /// A collector running every `interval`.
    pub fn new(
        core: Arc<ReplicaCore>,
        membership: Arc<Membership>,
        coordinator: Arc<Coordinator>,
        interval: Duration,
        replicas: usize,
        metrics: GcMetrics,
    ) -> Self {
        let grace_ms = coordinator.tombstone_grace().as_millis() as u64;
        TombstoneCollector {
            core,
            membership,
            coordinator,
            interval,
            grace_ms,
            replicas,
            metrics,
            next: Instant::now() + interval,
            last: (0, 0),
        }
    }

    /// Keys of the segments this node is first replica of, holding only old tombstones.
    fn candidates(&self) -> Result<Vec<Vec<u8>>, String> {
        let topology = self.membership.topology();
        let view = self.core.view();
        let me = self.core.node_id();
        let now = now_ms();
        let mut keys = Vec::new();
        for (lo, hi) in segments(&topology.ring) {
            let first = topology.ring.preference_list_at(hi, self.replicas).first().map(|n| n.id == me);
            if first != Some(true) || !view.serves_range(lo, hi) {
                continue;
            }
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = self.core.engine().scan(lo, hi, after.as_deref(), PAGE).map_err(|e| e.to_string())?;
                for (key, record) in &page {
                    let old_tombstones = !record.is_empty()
                        && record
                            .versions()
                            .iter()
                            .all(|v| v.tombstone && now.saturating_sub(v.written_at) >= self.grace_ms);
                    if old_tombstones {
                        keys.push(key.clone());
                    }
                }
                if page.len() < PAGE {
                    break;
                }
                after = page.last().map(|(k, _)| k.clone());
            }
        }
        Ok(keys)
    }
}

impl Worker for TombstoneCollector {
    fn name(&self) -> String {
        "tombstone-gc".into()
    }

    fn status(&self) -> String {
        format!("last pass: {} candidates, {} purged everywhere", self.last.0, self.last.1)
    }

    async fn work(&mut self, shutdown: &CancellationToken) -> Result<WorkerState, String> {
        // Tombstone ages are judged by our clock: no collection while it is fenced.
        if Instant::now() < self.next || self.membership.clock_fenced() {
            return Ok(WorkerState::Idle);
        }
        self.next = Instant::now() + self.interval;
        let keys = tokio::task::block_in_place(|| self.candidates())?;
        self.metrics.rounds.inc();
        self.metrics.candidates.inc_by(keys.len() as u64);
        let count = keys.len() as u64;
        let coordinator = self.coordinator.clone();
        let mut purges = stream::iter(keys)
            .map(move |key| {
                let coordinator = coordinator.clone();
                async move { coordinator.collect(&key).await.unwrap_or(false) }
            })
            .buffer_unordered(CONCURRENCY);
        let mut collected = 0u64;
        while let Some(purged) = tokio::select! {
            next = purges.next() => next,
            () = shutdown.cancelled() => None,
        } {
            collected += u64::from(purged);
        }
        self.metrics.collected.inc_by(collected);
        self.last = (count, collected);
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(self.next.saturating_duration_since(Instant::now()).max(Duration::from_millis(10))).await;
    }
}
