//! [`HintDispatcher`]: hands the hints this node keeps to their owners once they are back.
//!
//! A coordinator whose store to a replica failed (or that knew the replica down) gave the write
//! to a fallback as a hint ([`kv_coordinator::Coordinator::put_with`]); the fallback's
//! [`kv_storage::HintStore`] keeps it durably. This worker, on the fallback:
//!
//! - **delivers** each target's hints, oldest first, once membership no longer holds the target
//!   down, as a `store-batch` the target merges durably before answering; a hint is deleted only
//!   after that answer, so a crash of either side at any point leaves it to be sent again
//!   (merging is idempotent);
//! - **paces** delivery at `--hint-rate` hints per second, so a returning node is not flooded
//!   while it also serves clients and catches up by read repair and anti-entropy;
//! - **re-routes** a hint whose target no longer holds the key's range (the ring changed, or the
//!   target was removed) to the key's current replicas: a hint may be the only copy beyond the
//!   write's W acknowledgements, so it is never dropped for that;
//! - **expires** hints past `--hint-max-age` (the bound on what a fallback keeps): each is first
//!   stored on every reachable replica of its key, so that its write keeps the copies it can
//!   get, and kept for a later pass if none takes it;
//! - **drops** only what must go, and says so: hints holding a version older than half the
//!   tombstone grace (the hand-off rule of [`kv_coordinator::plan::hand_off`]: such a version
//!   may have been deleted by a tombstone purged since, and delivering it would bring it back).
//!   Each dropped hint's key is read from all its replicas at once and the stale ones repaired
//!   ([`kv_coordinator::Coordinator::read_repair`]): the write the hint held reaches every
//!   replica from the one that has it, without waiting for anti-entropy.
//!
//! Metrics: `kv_hints_pending{target}`, `kv_hints_pending_bytes{target}`,
//! `kv_hints_oldest_seconds{target}`, `kv_hints_delivered_total`, `kv_hints_dropped_total{reason}`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::workers::metrics::HintMetrics;
use kv_coordinator::plan::hand_off;
use kv_coordinator::{now_ms, Coordinator, Peer, RangeClient, ReplicaError, Topology};
use kv_gossip::Status;
use kv_membership::Membership;
use kv_proto::{Refusal, StoreBatchRequest};
use kv_storage::{Hint, HintStore};
use kv_transport::HttpReplicaClient;
use kv_worker::{Worker, WorkerState};
use tokio_util::sync::CancellationToken;

/// Hinted-handoff settings.
#[derive(Debug, Clone, Copy)]
pub struct HintOptions {
    /// Hints delivered per second, at most.
    pub rate: u32,
    /// N.
    pub replicas: usize,
    /// Tombstone grace (ms): a hint holding a version older than half of it is not delivered.
    pub grace_ms: u64,
}

/// Hints sent to a target in one request.
const PAGE: usize = 256;

/// Worker: delivers hints to their owners.
pub struct HintDispatcher {
    store: Arc<HintStore>,
    membership: Arc<Membership>,
    remote: Arc<HttpReplicaClient>,
    options: HintOptions,
    metrics: HintMetrics,
    /// Repairs the keys of dropped hints.
    coordinator: Arc<Coordinator>,
    /// Per target, the sequence number after which the next pass starts (hints before it
    /// could not be re-routed yet); cleared when a pass starts from it.
    cursor: std::collections::HashMap<String, u64>,
    delivered: u64,
    dropped: u64,
    shown: BTreeSet<String>,
}

impl HintDispatcher {
    /// A dispatcher over `store`.
    pub fn new(
        store: Arc<HintStore>,
        membership: Arc<Membership>,
        remote: Arc<HttpReplicaClient>,
        options: HintOptions,
        metrics: HintMetrics,
        coordinator: Arc<Coordinator>,
    ) -> Self {
        HintDispatcher {
            store,
            membership,
            remote,
            options,
            metrics,
            coordinator,
            cursor: Default::default(),
            delivered: 0,
            dropped: 0,
            shown: BTreeSet::new(),
        }
    }

    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&HintStore) -> kv_storage::Result<T> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, String>> {
        let store = self.store.clone();
        async move {
            tokio::task::spawn_blocking(move || f(&store))
                .await
                .map_err(|e| format!("hint store task: {e}"))?
                .map_err(|e| format!("hint store: {e}"))
        }
    }

    fn refresh_gauges(&mut self) {
        let now = now_ms();
        let pending = self.store.pending();
        for gone in self.shown.iter().filter(|t| !pending.contains_key(*t)) {
            for gauge in [&self.metrics.pending, &self.metrics.pending_bytes, &self.metrics.oldest] {
                let _ = gauge.remove_label_values(&[gone]);
            }
        }
        for (target, p) in &pending {
            self.metrics.pending.with_label_values(&[target]).set(p.count as i64);
            self.metrics.pending_bytes.with_label_values(&[target]).set(p.bytes as i64);
            let age = p.oldest_ms.map_or(0, |o| now.saturating_sub(o) / 1000);
            self.metrics.oldest.with_label_values(&[target]).set(age as i64);
        }
        self.shown = pending.keys().cloned().collect();
    }

    /// Delivers one page of `target`'s hints; returns how many were delivered or dropped.
    async fn deliver(&mut self, topology: &Topology, target: &str, gone: bool) -> Result<usize, String> {
        let target_owned = target.to_owned();
        let after = self.cursor.remove(target);
        let mut page = self.blocking(move |s| s.page(&target_owned, after, PAGE)).await?;
        if page.is_empty() {
            return Ok(0);
        }
        // At most about PAGE_BYTES of values in one delivery (the rest go in the next).
        let mut bytes = 0;
        if let Some(end) = page.iter().position(|(_, h)| {
            bytes += h.versions.iter().map(|v| v.value.len()).sum::<usize>();
            bytes >= crate::replica::PAGE_BYTES
        }) {
            page.truncate(end + 1);
        }
        let now = now_ms();
        let (mut deliver, mut stale) = (Vec::new(), Vec::new());
        for (seq, hint) in page {
            let record = kv_vclock::Siblings::from_versions(hint.versions.clone());
            if hand_off(&record, now, self.options.grace_ms) {
                deliver.push((seq, hint));
            } else {
                stale.push((seq, hint));
            }
        }
        if !stale.is_empty() {
            self.drop_hints(target, &stale, "too_old").await?;
        }
        if deliver.is_empty() {
            return Ok(stale.len());
        }
        let entries: Vec<(Vec<u8>, Vec<kv_storage::Version>)> =
            deliver.iter().map(|(_, h)| (h.key.clone(), h.versions.clone())).collect();
        let member =
            topology.addresses.get(target).map(|address| Peer { id: target.to_owned(), address: address.clone() });
        let sent = match member.filter(|_| !gone) {
            Some(peer) => {
                self.remote
                    .store_batch(&peer, StoreBatchRequest { entries, begin: None, complete: None, deadline_ms: 0 })
                    .await
            }
            None => Err(Refusal::NotOwner(format!("{target} is no longer a member")).into()),
        };
        match sent {
            Ok(()) => {}
            // The target no longer holds these keys: hand each to its current replicas.
            Err(ReplicaError::Refused(Refusal::NotOwner(reason))) => {
                tracing::info!(target, %reason, hints = deliver.len(), "re-routing hints to the keys' current replicas");
                let kept = self.reroute(topology, &deliver).await;
                if !kept.is_empty() {
                    // Those stay for a later pass; the next pass starts after this page so that
                    // they do not hold up the target's other hints.
                    self.cursor.insert(target.to_owned(), deliver.last().map_or(0, |(seq, _)| *seq));
                    deliver.retain(|(seq, _)| !kept.contains(seq));
                }
            }
            Err(e) => return Err(format!("delivering {} hints to {target}: {e}", deliver.len())),
        }
        let seqs: Vec<u64> = deliver.iter().map(|(seq, _)| *seq).collect();
        let count = seqs.len();
        let target_owned = target.to_owned();
        self.blocking(move |s| s.remove(&target_owned, &seqs)).await?;
        self.delivered += count as u64;
        self.metrics.delivered.inc_by(count as u64);
        Ok(count + stale.len())
    }

    /// Stores each hint on every current and pending replica of its key (this node included,
    /// when it is one: through its own peer listener, like any other). Returns the sequence
    /// numbers of the hints that some replica could not take now: they are kept.
    async fn reroute(&self, topology: &Topology, hints: &[(u64, Hint)]) -> Vec<u64> {
        let mut kept = Vec::new();
        for (seq, hint) in hints {
            let current = topology.preference_list(&hint.key, self.options.replicas);
            let pending = topology.pending_replicas(&hint.key, self.options.replicas, &current);
            for peer in current.iter().chain(&pending) {
                let request = StoreBatchRequest {
                    entries: vec![(hint.key.clone(), hint.versions.clone())],
                    begin: None,
                    complete: None,
                    deadline_ms: 0,
                };
                if let Err(e) = self.remote.store_batch(peer, request).await {
                    tracing::debug!(peer = %peer.id, error = %e, "re-routing a hint failed; kept for later");
                    kept.push(*seq);
                    break;
                }
            }
        }
        kept
    }

    /// Hints past `--hint-max-age` leave the store, but not their writes: each still young
    /// enough to hand off (every version within half the grace, as a fallback only takes such
    /// hints) goes to every reachable replica of its key first, its target included if it is
    /// up (a hint may be the only copy of a write beyond its coordinator), in batches per
    /// replica. One that no replica takes is kept for the next pass, until it is too old to
    /// hand off; too old ones are dropped and their keys read-repaired.
    async fn expire(&mut self, topology: &Topology) -> Result<(), String> {
        let expired = self.blocking(move |s| s.expired(now_ms())).await?;
        for (target, hints) in expired {
            let now = now_ms();
            let (young, old): (Vec<_>, Vec<_>) = hints.into_iter().partition(|(_, hint)| {
                hand_off(&kv_vclock::Siblings::from_versions(hint.versions.clone()), now, self.options.grace_ms)
            });
            if !old.is_empty() {
                self.drop_hints(&target, &old, "too_old").await?;
            }
            let mut per_peer: std::collections::BTreeMap<String, (Peer, Vec<usize>)> = Default::default();
            for (i, (_, hint)) in young.iter().enumerate() {
                let current = topology.preference_list(&hint.key, self.options.replicas);
                let pending = topology.pending_replicas(&hint.key, self.options.replicas, &current);
                for peer in current.into_iter().chain(pending).filter(|p| !self.membership.is_down(&p.id)) {
                    per_peer.entry(peer.id.clone()).or_insert_with(|| (peer, Vec::new())).1.push(i);
                }
            }
            let mut taken = vec![false; young.len()];
            for (peer, indexes) in per_peer.values() {
                for chunk in indexes.chunks(PAGE) {
                    let entries =
                        chunk.iter().map(|&i| (young[i].1.key.clone(), young[i].1.versions.clone())).collect();
                    let request = StoreBatchRequest { entries, begin: None, complete: None, deadline_ms: 0 };
                    match self.remote.store_batch(peer, request).await {
                        Ok(()) => chunk.iter().for_each(|&i| taken[i] = true),
                        Err(e) => {
                            tracing::debug!(peer = %peer.id, error = %e, "storing expired hints on a replica failed")
                        }
                    }
                }
            }
            let handed: Vec<u64> = young.iter().zip(&taken).filter(|(_, t)| **t).map(|((seq, _), _)| *seq).collect();
            if handed.is_empty() {
                continue;
            }
            let count = handed.len() as u64;
            let target_owned = target.clone();
            self.blocking(move |s| s.remove(&target_owned, &handed)).await?;
            tracing::warn!(
                target,
                count,
                "hints expired (--hint-max-age): their writes were stored on the keys' reachable replicas instead"
            );
            self.dropped += count;
            self.metrics.dropped.with_label_values(&["expired"]).inc_by(count);
        }
        Ok(())
    }

    async fn drop_hints(&mut self, target: &str, hints: &[(u64, Hint)], reason: &str) -> Result<(), String> {
        self.repair(hints.iter().map(|(_, h)| &h.key)).await;
        let seqs: Vec<u64> = hints.iter().map(|(seq, _)| *seq).collect();
        let target_owned = target.to_owned();
        self.blocking(move |s| s.remove(&target_owned, &seqs)).await?;
        tracing::warn!(
            target,
            hints = hints.len(),
            reason,
            "hints dropped undelivered; anti-entropy repairs their keys"
        );
        self.dropped += hints.len() as u64;
        self.metrics.dropped.with_label_values(&[reason]).inc_by(hints.len() as u64);
        Ok(())
    }
}

impl HintDispatcher {
    /// Read-repairs `keys` across their replicas, a few at a time.
    async fn repair(&self, keys: impl Iterator<Item = &Vec<u8>>) {
        use futures::stream::{self, StreamExt};
        let coordinator = &self.coordinator;
        stream::iter(keys)
            .for_each_concurrent(16, |key| async move {
                if let Err(e) = coordinator.read_repair(key).await {
                    tracing::debug!(error = %e, "read repair of a dropped hint's key failed");
                }
            })
            .await;
    }
}

impl Worker for HintDispatcher {
    fn name(&self) -> String {
        "hints".into()
    }

    fn status(&self) -> String {
        let pending: u64 = self.store.pending().values().map(|p| p.count).sum();
        format!("{pending} hints pending; {} delivered, {} dropped", self.delivered, self.dropped)
    }

    async fn work(&mut self, shutdown: &CancellationToken) -> Result<WorkerState, String> {
        // Expiry and delivery judge hints' ages by our clock: nothing while it is fenced.
        if self.membership.clock_fenced() {
            return Ok(WorkerState::Idle);
        }
        let topology = self.membership.topology();
        self.expire(&topology).await?;
        self.refresh_gauges();
        let mut moved = 0;
        let targets: Vec<String> = self.store.pending().into_keys().collect();
        for target in targets {
            if shutdown.is_cancelled() {
                break;
            }
            // A target that is no longer a member: its hints go to the keys' current replicas.
            let gone =
                self.membership.state(&target).is_none_or(|s| matches!(s.status, Status::Removed | Status::Left));
            if !gone && self.membership.is_down(&target) {
                continue;
            }
            match self.deliver(&topology, &target, gone).await {
                Ok(count) => {
                    moved += count;
                    // Pacing: `rate` hints per second over all targets.
                    let pause = Duration::from_secs_f64(count as f64 / f64::from(self.options.rate.max(1)));
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = shutdown.cancelled() => {}
                    }
                }
                Err(e) => tracing::debug!(target, error = %e, "hint delivery failed; retrying later"),
            }
        }
        self.refresh_gauges();
        Ok(if moved > 0 { WorkerState::Busy } else { WorkerState::Idle })
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
