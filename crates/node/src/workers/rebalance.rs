//! Moving ranges: join, leave, re-replication after a removal, and dropping lost ranges.
//!
//! The [`Rebalancer`] is the node's background job for data movement. It acts on three
//! occasions, each computed from the ring's ownership diff ([`kv_ring::diff()`]), so that only
//! the ranges that must move do:
//!
//! Joins and leaves plan against the *pending ring* (normal and joining members: the ring once
//! every move in progress completes), not the current ring with only our own change, so that
//! any number of joins and leaves may run at once and each moves exactly the ranges its
//! accepting set and every other member's follow (docs/consistency.md, rule 14).
//!
//! - **Join** (our status is `joining`): wait a few gossip rounds, so that coordinators know we
//!   are joining and already send us new writes for our future ranges (the pending ring), then
//!   *pull* every range we gain from **every** current owner that answers — at least R of them,
//!   so that a write acknowledged by any W replicas is among what we merge — in parallel, page
//!   by page. Progress is recorded in `data-dir/streams.json`, so a restarted join resumes where
//!   it stopped. Reads keep going to the old owners until we announce `normal`.
//! - **Leave** (`leaving`, after `POST /admin/leave` or SIGTERM with `--leave-on-shutdown`):
//!   wait the same few rounds, so that the new owners know they are gaining ranges and accept
//!   them, then gather every range we lose from the other old owners (at least R copies with
//!   ours) and *push* the merged copy to its owners in the pending ring, joiners included
//!   (`store-batch`); we keep serving reads
//!   and writes meanwhile. Then we announce `left`, let it spread, and the process exits.
//! - **Removal** (an operator declared a member permanently failed): every node *pulls* the
//!   ranges it gains from **all** surviving old owners (at least R, or all there are), so each
//!   key is back to N replicas even when the survivors held different subsets. A removal whose
//!   pulls fail is retried.
//!
//! The [`Dropper`] hands off and removes the ranges this node lost ([`kv_replica::ownership`]): it
//! pushes each key to its current owners and removes it once they hold it.
//!
//! A down member changes nothing here: temporary failures move no data. A source confirmed down
//! is not asked (it would fail after a replica timeout); a range that needs it waits for it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use futures::FutureExt as _;
use kv_coordinator::now_ms;
use kv_coordinator::plan::{self, Move};
use kv_coordinator::{Peer, RangeClient, ReplicaError, Topology};
use kv_gossip::Status;
use kv_merkle::MerkleTree;
use kv_proto::{Entry, Refusal, ScanRequest, StoreBatchRequest};
use kv_replica::trees::segments;
use kv_ring::{Intervals, Ring};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use kv_membership::{owns_later, ring_of, Membership};
use kv_replica::ownership::Ownership;
use kv_worker::{Worker, WorkerState};
use tokio::sync::watch;

use crate::metrics::NodeMetrics;
use crate::replica::Replica;

/// Records per scan page: large enough to amortise a round trip, small enough (about 50 KB
/// with 100-byte values) to bound memory per stream.
const PAGE: u32 = 500;

/// How often stream progress is written to `streams.json`.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Gossip rounds to wait before streaming in, so coordinators learn of the join first.
const JOIN_DELAY_ROUNDS: u32 = 3;

/// Most filled pieces marked complete with one fsync: those that finished together.
const FILLED_AT_ONCE: usize = 64;

/// Where one interval of a streamed range got to.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Cursor {
    /// Last key copied (hex), if any.
    after: Option<String>,
    done: bool,
}

/// Counts of one data movement.
#[derive(Debug, Clone, Copy, Default)]
pub struct Moved {
    /// Ranges moved.
    pub ranges: usize,
    /// Keys sent or received.
    pub keys: u64,
    /// Value bytes sent or received.
    pub bytes: u64,
}

impl Moved {
    /// Logs a completed movement with its counts and duration.
    fn log(&self, started: Instant, what: &str) {
        tracing::info!(
            ranges = self.ranges,
            keys = self.keys,
            bytes = self.bytes,
            seconds = started.elapsed().as_secs_f64(),
            "{what}"
        );
    }
}

/// The node's data-movement job.
pub struct Rebalancer {
    membership: Arc<Membership>,
    ownership: Arc<Ownership>,
    replica: Replica,
    client: Arc<dyn RangeClient>,
    replicas: usize,
    read_quorum: usize,
    gossip_interval: Duration,
    concurrency: usize,
    progress_file: PathBuf,
    progress: Mutex<HashMap<String, Cursor>>,
    /// When progress was last written to disk.
    saved: Mutex<Instant>,
    metrics: NodeMetrics,
    /// Cancelled once this node has left the cluster, which stops the process.
    exit: CancellationToken,
    /// Wakes the worker when the topology changes.
    topology: watch::Receiver<Arc<Topology>>,
    /// Wakes the worker when the ownership view changes.
    ownership_changes: watch::Receiver<u64>,
    /// What it is doing, for `/admin/workers`.
    doing: &'static str,
    /// The ranges it is moving now, read live (`kvctl status`, `kvctl leave --wait`).
    transfers: Arc<Transfers>,
}

/// What a [`Rebalancer`] is moving now: the ranges of the current fill, leave or hand-off, how
/// many are done and the keys moved, updated as each range completes and read live by
/// `/internal/v1/status` (a worker's status line is only taken between units of work, and a
/// whole leave is one).
#[derive(Debug, Default)]
pub struct Transfers {
    what: Mutex<&'static str>,
    ranges: std::sync::atomic::AtomicU64,
    done: std::sync::atomic::AtomicU64,
    keys: std::sync::atomic::AtomicU64,
}

impl Transfers {
    /// `(what, ranges, ranges done, keys moved)` of the transfer in progress, or of the last.
    /// Read under the lock [`Transfers::begin`] holds: never a new transfer's name with the last
    /// one's counts (`kvctl leave --wait` takes a hand-off seen complete as left).
    pub fn now(&self) -> (&'static str, u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let what = self.what.lock();
        (*what, self.ranges.load(Relaxed), self.done.load(Relaxed), self.keys.load(Relaxed))
    }

    fn begin(&self, what: &'static str, ranges: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut current = self.what.lock();
        self.ranges.store(ranges as u64, Relaxed);
        self.done.store(0, Relaxed);
        self.keys.store(0, Relaxed);
        *current = what;
    }

    fn finished(&self, moved: &Result<Moved, String>) {
        use std::sync::atomic::Ordering::Relaxed;
        if let Ok(moved) = moved {
            self.done.fetch_add(1, Relaxed);
            self.keys.fetch_add(moved.keys, Relaxed);
        }
    }
}

/// How a [`Rebalancer`] is set up.
pub struct RebalancerOptions {
    /// N.
    pub replicas: usize,
    /// R: copies a gained range is merged from, at least.
    pub read_quorum: usize,
    /// Gossip round period.
    pub gossip_interval: Duration,
    /// Ranges streamed at once.
    pub concurrency: usize,
    /// `data-dir/streams.json`.
    pub progress_file: PathBuf,
    /// Where it shows what it is moving.
    pub transfers: Arc<Transfers>,
}

/// Why a copy from a source failed.
enum CopyError {
    /// The source owns the range but is filling it too ([`kv_proto::GAINING_TOO`]):
    /// it gained it as we did, so it is not one of the owners that can hold an acknowledged
    /// write the others lack. (A source that does not own the range in its view is a
    /// [`CopyError::Failed`]: its view lags or leads ours, and we retry.)
    NotComplete(String),
    /// Anything else: unreachable, a failed store here, shutting down.
    Failed(String),
}

impl From<String> for CopyError {
    fn from(e: String) -> Self {
        CopyError::Failed(e)
    }
}

impl Rebalancer {
    /// A rebalancer; `exit` is cancelled when the node has left the cluster.
    pub fn new(
        membership: Arc<Membership>,
        ownership: Arc<Ownership>,
        replica: Replica,
        client: Arc<dyn RangeClient>,
        options: RebalancerOptions,
        metrics: NodeMetrics,
        exit: CancellationToken,
    ) -> Self {
        let progress = std::fs::read_to_string(&options.progress_file)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        Rebalancer {
            replica,
            client,
            replicas: options.replicas,
            read_quorum: options.read_quorum,
            gossip_interval: options.gossip_interval,
            concurrency: options.concurrency,
            progress_file: options.progress_file,
            progress: Mutex::new(progress),
            saved: Mutex::new(Instant::now()),
            topology: membership.subscribe(),
            ownership_changes: ownership.subscribe(),
            membership,
            ownership,
            metrics,
            exit,
            doing: "starting",
            transfers: options.transfers,
        }
    }

    /// One pass: join, leave, or fill what the node gained, as its status asks.
    async fn step(&mut self, shutdown: &CancellationToken) -> WorkerState {
        // Moves judge nothing by the clock, but a fenced node sends nothing but gossip: wait.
        if self.membership.clock_fenced() {
            self.doing = "waiting: this node's clock is fenced";
            return WorkerState::Idle;
        }
        match self.membership.my_status() {
            Some(Status::Joining) => {
                self.doing = "joining: waiting for coordinators to learn of the join";
                if pause(self.gossip_interval * JOIN_DELAY_ROUNDS, shutdown).await {
                    return WorkerState::Idle;
                }
                self.doing = "joining: pulling gained ranges";
                let started = Instant::now();
                let epoch = self.ownership.loss_epoch();
                match self.join(shutdown).await {
                    Ok((moved, gained)) => {
                        moved.log(started, "join complete: merged our ranges from their owners");
                        self.clear_progress();
                        // What we pulled is complete once the ring gives it to us.
                        let prefill = move |o: &Ownership, t: &Topology| o.prefill(&gained, epoch, t).map(|_| ());
                        if let Err(e) = self.blocking_ownership(prefill).await {
                            tracing::warn!(error = %e, "join: cannot record the ranges pulled; they are filled again");
                        }
                        self.membership.set_status(Status::Normal);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "join interrupted; retrying");
                        if pause(self.gossip_interval, shutdown).await {
                            return WorkerState::Idle;
                        }
                    }
                }
                return WorkerState::Busy;
            }
            Some(Status::Leaving) => {
                // Announce, then wait: the new owners must know they gain our ranges
                // before we push, or they refuse what we send.
                self.doing = "leaving: waiting for the new owners to learn of the leave";
                if pause(self.gossip_interval * JOIN_DELAY_ROUNDS, shutdown).await {
                    return WorkerState::Idle;
                }
                self.doing = kv_proto::HANDING_OFF;
                let started = Instant::now();
                match self.leave(shutdown).await {
                    Ok(moved) => {
                        moved.log(started, "leave complete: handed off our ranges");
                        self.clear_progress();
                        self.membership.set_status(Status::Left);
                        self.doing = "left";
                        // Let `left` spread before the process goes away.
                        let _ = pause(self.gossip_interval * JOIN_DELAY_ROUNDS, shutdown).await;
                        self.exit.cancel();
                        return WorkerState::Done;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "leave interrupted; retrying");
                        return WorkerState::Busy;
                    }
                }
            }
            Some(Status::Left | Status::Removed) => {
                self.doing = "left";
                // Removed (or found left) while running: the process stops.
                self.exit.cancel();
                return WorkerState::Done;
            }
            _ => {}
        }
        if !self.ownership.filling().is_empty() {
            self.doing = "filling gained ranges";
            let started = Instant::now();
            match self.fill(shutdown).await {
                Ok(moved) if moved.ranges > 0 => moved.log(started, "filled ranges gained: merged from their owners"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "filling gained ranges: retrying"),
            }
        }
        self.doing = if self.ownership.filling().is_empty() { "idle" } else { "filling: waiting to retry" };
        WorkerState::Idle
    }

    /// Runs `f` on the ownership and the current topology off the async workers (it may fsync).
    async fn blocking_ownership(
        &self,
        f: impl FnOnce(&Ownership, &Topology) -> Result<(), String> + Send + 'static,
    ) -> Result<(), String> {
        let (ownership, topology) = (self.ownership.clone(), self.membership.topology());
        tokio::task::spawn_blocking(move || f(&ownership, &topology)).await.map_err(|e| e.to_string())?
    }

    fn me(&self) -> Result<String, String> {
        self.membership.my_state().map(|s| s.id).ok_or_else(|| "no own state".to_owned())
    }

    /// The ring once every move in progress completes (normal and joining members: the
    /// pending ring), with our own status taken as `status`. Joins and leaves plan against it,
    /// not against the current ring with only our own change applied: with other members
    /// joining or leaving at the same time, the ranges we gain or lose are those of the pending
    /// ring, which is also what our accepting set and every other member's follow (a joiner
    /// that pulled ranges the pending ring gives another joiner refused its own pages for
    /// ever).
    fn pending_with_me_as(&self, status: Status) -> Result<Ring, String> {
        let me = self.me()?;
        let states = self.membership.states().into_iter().map(|mut s| {
            if s.id == me {
                s.status = status;
            }
            s
        });
        Ok(ring_of(states, owns_later))
    }

    /// Pulls every range we gain once every move in progress completes; returns what moved and
    /// the ranges pulled.
    async fn join(&self, shutdown: &CancellationToken) -> Result<(Moved, Intervals), String> {
        let me = self.me()?;
        let before = self.membership.topology().ring.clone();
        let after = self.pending_with_me_as(Status::Normal)?;
        let moves = plan::gained_by(&before, &after, self.replicas, &me);
        let gained = Intervals::from_spans(moves.iter().map(|m| (m.lo, m.hi)));
        let needed = self.read_quorum;
        let moved =
            self.pull_all("join", moves, &[me], &|sources| plan::copies_needed(needed, sources), shutdown).await?;
        Ok((moved, gained))
    }

    /// Merges every range we are filling (gained by a ring change: a removal, a member rejoining
    /// on a wiped disk, a leave not handed to us) from its other current owners, at least R of
    /// them; the pieces that succeed are complete and served from now on.
    async fn fill(&self, shutdown: &CancellationToken) -> Result<Moved, String> {
        let me = self.me()?;
        let topology = self.membership.topology();
        let (filling, epoch) = self.ownership.filling_snapshot();
        let pieces: Vec<Move> = filling
            .spans()
            .iter()
            .flat_map(|&(lo, hi)| plan::owners_in(&topology.ring, self.replicas, lo, hi))
            .collect();
        let exclude = [me];
        let needed = self.read_quorum;
        let pieces = plan::coalesce(pieces.iter().map(|m| (m.lo, m.hi, plan::sources(m, &exclude))).collect());
        let jobs: Vec<(u64, u64, Vec<Peer>)> = pieces
            .into_iter()
            .map(|(lo, hi, ids)| {
                let peers = ids
                    .into_iter()
                    .map(|id| Peer { address: topology.addresses.get(&id).cloned().unwrap_or_default(), id })
                    .collect();
                (lo, hi, peers)
            })
            .collect();
        tracing::debug!(pieces = jobs.len(), epoch, "filling: merging gained ranges from their other owners");
        // Each piece is served as soon as it is filled, not once the slowest is: a piece whose
        // source is unreachable fails only after a replica timeout, and with many such pieces
        // a round took many of them (seen: 13 s rounds with one owner of 5 cut off).
        let mut results = stream::iter(jobs)
            .map(|(lo, hi, sources)| async move {
                let count = sources.len();
                let copies = move |refused| plan::copies_needed_without(needed, count, refused);
                let result = self.pull("fill", lo, hi, sources, copies, shutdown).await;
                (lo, hi, result)
            })
            .buffer_unordered(self.concurrency)
            .ready_chunks(FILLED_AT_ONCE);
        let mut total = Moved::default();
        let mut first_error = None;
        while let Some(chunk) = results.next().await {
            let mut done = Vec::new();
            for (lo, hi, result) in chunk {
                match result {
                    Ok(moved) => {
                        self.forget_progress(&format!("fill:{lo:016x}-{hi:016x}@"));
                        total.ranges += 1;
                        total.keys += moved.keys;
                        total.bytes += moved.bytes;
                        done.push((lo, hi));
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            if !done.is_empty() {
                let done = Intervals::from_spans(done);
                self.blocking_ownership(move |o, t| o.filled(&done, epoch, t).map(|_| ())).await?;
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    /// Pulls every range of `moves` from its old owners (but not `exclude`), from every one
    /// that answers; a range fails unless at least `needed(sources)` of them did.
    async fn pull_all(
        &self,
        op: &str,
        moves: Vec<Move>,
        exclude: &[String],
        needed: &(dyn Fn(usize) -> usize + Sync),
        shutdown: &CancellationToken,
    ) -> Result<Moved, String> {
        let jobs = jobs(&moves, &self.membership.topology(), |m| plan::sources(m, exclude));
        let what = match op {
            "join" => "joining: pulling gained ranges",
            "leave" => "leaving: merging the other owners' copies first",
            _ => "filling gained ranges",
        };
        self.run_all(what, jobs, |lo, hi, sources| {
            let needed = needed(sources.len());
            self.pull(op, lo, hi, sources, move |_| needed, shutdown)
        })
        .await
    }

    /// Runs `job` for every interval, [`Rebalancer::concurrency`] at a time, and adds up what
    /// moved; the first failure fails the whole (it is retried from its progress). `what` names
    /// the transfer in [`Transfers`].
    async fn run_all<F, Fut>(
        &self,
        what: &'static str,
        jobs: Vec<(u64, u64, Vec<Peer>)>,
        job: F,
    ) -> Result<Moved, String>
    where
        F: Fn(u64, u64, Vec<Peer>) -> Fut,
        Fut: std::future::Future<Output = Result<Moved, String>>,
    {
        let ranges = jobs.len();
        self.transfers.begin(what, ranges);
        let results: Vec<Result<Moved, String>> = stream::iter(jobs)
            .map(|(lo, hi, peers)| job(lo, hi, peers).inspect(|moved| self.transfers.finished(moved)))
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let mut total = Moved { ranges, ..Moved::default() };
        for result in results {
            let moved = result?;
            total.keys += moved.keys;
            total.bytes += moved.bytes;
        }
        Ok(total)
    }

    /// Merges `lo..=hi` from every source into our store, each from where a previous attempt
    /// stopped; succeeds when at least `needed` sources were copied in full.
    async fn pull(
        &self,
        op: &str,
        lo: u64,
        hi: u64,
        sources: Vec<Peer>,
        needed: impl Fn(usize) -> usize + Send,
        shutdown: &CancellationToken,
    ) -> Result<Moved, String> {
        self.metrics.ranges_streaming.inc();
        let mut moved = Moved::default();
        let mut errors = Vec::new();
        let mut copied = 0;
        // Sources that refused because they do not hold the range completely.
        let mut refused = 0;
        // Progress counts only within one loss epoch: a range lost meanwhile was dropped.
        let losses = self.ownership.loss_epoch();
        for source in &sources {
            let name = format!("{op}:{lo:016x}-{hi:016x}@{}#{losses}", source.id);
            if self.progress.lock().get(&name).is_some_and(|c| c.done) {
                copied += 1;
                continue;
            }
            // A source confirmed down would only fail after a replica timeout: not asked (it
            // counts as one that did not answer; the range is retried once it is back).
            if self.membership.is_down(&source.id) {
                errors.push(format!("{}: down, not asked", source.id));
                continue;
            }
            // After one full copy, another source's copy is merged by Merkle comparison: only
            // the buckets where it differs from what we now hold travel.
            let result = if copied > 0 {
                self.merkle_pull(lo, hi, source, &mut moved, shutdown).await
            } else {
                self.copy(Some(&name), lo, hi, source, &mut moved, shutdown).await
            };
            match result {
                Ok(()) => {
                    self.save_cursor(&name, None, true);
                    copied += 1;
                }
                Err(CopyError::NotComplete(e)) => {
                    refused += 1;
                    errors.push(format!("{}: not complete there: {e}", source.id));
                }
                Err(CopyError::Failed(e)) => errors.push(format!("{}: {e}", source.id)),
            }
        }
        self.metrics.ranges_streaming.dec();
        let needed = needed(refused);
        if copied >= needed {
            Ok(moved)
        } else {
            Err(format!(
                "range {lo:016x}-{hi:016x}: {copied} of the {needed} copies needed answered ({})",
                errors.join("; ")
            ))
        }
    }

    /// Merges into our store everything `source` holds of `lo..=hi` that we lack, as a full copy
    /// would, but moving only what differs: for each segment of the current ring that overlaps
    /// the range (the source keeps a tree per segment), a tree of our store over the segment is
    /// built now and compared with the source's ([`crate::workers::antientropy::differing_buckets`]),
    /// and of each differing bucket the part inside `lo..=hi` is copied. A bucket whose trees
    /// are equal holds the same versions on both sides (our store loses a version in a range it
    /// fills only to one that supersedes it: no purge happens while a replica fills). Segments the source cannot compare (no complete
    /// copy, no tree yet) are copied in full.
    async fn merkle_pull(
        &self,
        lo: u64,
        hi: u64,
        source: &Peer,
        moved: &mut Moved,
        shutdown: &CancellationToken,
    ) -> Result<(), CopyError> {
        let ring = self.membership.topology().ring.clone();
        let segs = segments_overlapping(&ring, lo, hi);
        let trees = build_trees(self.replica.engine().clone(), segs.clone()).await.map_err(CopyError::Failed)?;
        let (differing, unanswered) =
            differing_ranges(&*self.client, source, &segs, &trees).await.map_err(CopyError::Failed)?;
        tracing::debug!(
            source = %source.id, segments = segs.len(), unanswered = unanswered.len(), buckets = differing.len(),
            "fill: merged a further copy by Merkle comparison"
        );
        for (a, b) in unanswered.into_iter().chain(differing) {
            let (first, last) = (a.max(lo), b.min(hi));
            if first <= last {
                self.copy(None, first, last, source, moved, shutdown).await?;
            }
        }
        Ok(())
    }

    /// Copies `lo..=hi` from `source` into our store, page by page, recording progress as `name`
    /// (if given).
    async fn copy(
        &self,
        name: Option<&str>,
        lo: u64,
        hi: u64,
        source: &Peer,
        moved: &mut Moved,
        shutdown: &CancellationToken,
    ) -> Result<(), CopyError> {
        let mut after = name.and_then(|name| self.cursor(name));
        loop {
            if shutdown.is_cancelled() {
                return Err(CopyError::Failed("shutting down".into()));
            }
            let request = ScanRequest { first_hash: lo, last_hash: hi, after: after.clone(), limit: PAGE };
            let page = match self.client.scan(source, request).await {
                Ok(page) => page,
                Err(ReplicaError::Refused(Refusal::NotOwner(e))) if e.contains(kv_proto::GAINING_TOO) => {
                    return Err(CopyError::NotComplete(e))
                }
                Err(e) => return Err(CopyError::Failed(e.to_string())),
            };
            let keys = page.entries.len() as u64;
            let value_bytes: u64 =
                page.entries.iter().flat_map(|(_, vs)| vs.iter()).map(|v| v.value.len() as u64).sum();
            after = page.entries.last().map(|(k, _)| k.clone()).or(after);
            self.replica.store_batch(page.entries, 0).await.map_err(|e| e.to_string())?;
            moved.keys += keys;
            moved.bytes += value_bytes;
            self.metrics.stream_keys.with_label_values(&["in"]).inc_by(keys);
            self.metrics.stream_bytes.with_label_values(&["in"]).inc_by(value_bytes);
            if let Some(name) = name {
                self.save_cursor(name, after.as_deref(), false);
            }
            if page.done {
                return Ok(());
            }
        }
    }

    async fn leave(&self, shutdown: &CancellationToken) -> Result<Moved, String> {
        let me = self.me()?;
        let before = self.membership.topology().ring.clone();
        let after = self.pending_with_me_as(Status::Left)?;
        let moves = plan::lost_by(&before, &after, self.replicas, &me);
        // Our copy may lack writes the other owners acknowledged: merge theirs in first (with
        // ours, at least R copies), so the new owners get everything a quorum held.
        let needed = self.read_quorum.saturating_sub(1);
        let exclude = std::slice::from_ref(&me);
        self.pull_all("leave", moves.clone(), exclude, &|sources| plan::copies_needed(needed, sources), shutdown)
            .await?;
        let jobs = jobs(&moves, &self.membership.topology(), |m| m.gained.clone());
        self.run_all(kv_proto::HANDING_OFF, jobs, |lo, hi, targets| self.push(lo, hi, targets, shutdown)).await
    }

    async fn push(&self, lo: u64, hi: u64, targets: Vec<Peer>, shutdown: &CancellationToken) -> Result<Moved, String> {
        self.metrics.ranges_streaming.inc();
        let result = async {
            let mut moved = Moved::default();
            let mut after: Option<Vec<u8>> = None;
            loop {
                if shutdown.is_cancelled() {
                    return Err("shutting down".to_owned());
                }
                let page = self.replica.scan(lo, hi, after.clone(), PAGE as usize).await.map_err(|e| e.to_string())?;
                // The first page opens the hand-off, the last (empty) says it was the whole range.
                let begin = after.is_none().then_some((lo, hi));
                let complete = page.is_empty().then_some((lo, hi));
                after = page.last().map(|(k, _)| k.clone()).or(after);
                let keys = page.len() as u64;
                let value_bytes: u64 = page.iter().flat_map(|(_, vs)| vs.iter()).map(|v| v.value.len() as u64).sum();
                for target in &targets {
                    let request = StoreBatchRequest { entries: page.clone(), begin, complete, deadline_ms: 0 };
                    self.client.store_batch(target, request).await.map_err(|e| format!("{}: {e}", target.id))?;
                    moved.keys += keys;
                    moved.bytes += value_bytes;
                    self.metrics.stream_keys.with_label_values(&["out"]).inc_by(keys);
                    self.metrics.stream_bytes.with_label_values(&["out"]).inc_by(value_bytes);
                }
                if complete.is_some() {
                    return Ok(moved);
                }
            }
        }
        .await;
        self.metrics.ranges_streaming.dec();
        result
    }

    fn cursor(&self, name: &str) -> Option<Vec<u8>> {
        self.progress.lock().get(name).and_then(|c| c.after.as_deref()).and_then(from_hex)
    }

    /// Records where a range got to. Written to disk at most once per [`PROGRESS_EVERY`]: a
    /// restart redoes at most that much work (merging is idempotent), and a join over
    /// thousands of small ranges does not rewrite the file thousands of times.
    fn save_cursor(&self, name: &str, after: Option<&[u8]>, done: bool) {
        let text = {
            let mut progress = self.progress.lock();
            let cursor = progress.entry(name.to_owned()).or_default();
            if after.is_some() {
                cursor.after = after.map(to_hex);
            }
            cursor.done = done;
            let mut saved = self.saved.lock();
            if saved.elapsed() < PROGRESS_EVERY {
                return;
            }
            *saved = Instant::now();
            serde_json::to_string(&*progress).unwrap_or_default()
        };
        let tmp = self.progress_file.with_extension("json.tmp");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.progress_file)) {
            tracing::warn!(error = %e, "cannot record stream progress; a restart would copy again");
        }
    }

    /// Forgets the progress records whose names start with `prefix` (a range filled: filling
    /// it again later starts over).
    fn forget_progress(&self, prefix: &str) {
        self.progress.lock().retain(|name, _| !name.starts_with(prefix));
    }

    fn clear_progress(&self) {
        self.progress.lock().clear();
        let _ = std::fs::remove_file(&self.progress_file);
    }
}

/// Background job: hands off and removes the ranges this node is dropping
/// ([`kv_replica::ownership`]). Each page of a dropping range is pushed to every current owner of its
/// keys that is not known down (at least one must take it), then removed here; a range leaves
/// the dropping set once empty. Runs when the set grows and every few gossip rounds while it is
/// not empty.
pub struct Dropper {
    membership: Arc<Membership>,
    ownership: Arc<Ownership>,
    replica: Replica,
    client: Arc<dyn RangeClient>,
    replicas: usize,
    interval: Duration,
    tombstone_grace: Duration,
    metrics: NodeMetrics,
    topology: watch::Receiver<Arc<Topology>>,
    ownership_changes: watch::Receiver<u64>,
}

impl Dropper {
    /// A dropper that retries every `interval` while something is left to drop, and removes
    /// without handing off what has been dropping for longer than `tombstone_grace`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        membership: Arc<Membership>,
        ownership: Arc<Ownership>,
        replica: Replica,
        client: Arc<dyn RangeClient>,
        replicas: usize,
        interval: Duration,
        tombstone_grace: Duration,
        metrics: NodeMetrics,
    ) -> Self {
        let (topology, ownership_changes) = (membership.subscribe(), ownership.subscribe());
        Dropper {
            membership,
            ownership,
            replica,
            client,
            replicas,
            interval,
            tombstone_grace,
            metrics,
            topology,
            ownership_changes,
        }
    }

    /// One pass over the dropping set; returns the ranges emptied and the keys removed.
    async fn round(&self, shutdown: &CancellationToken) -> Result<(usize, u64), String> {
        let dropping = self.ownership.dropping();
        let topology = self.membership.topology();
        let me = self.membership.my_state().map(|s| s.id).unwrap_or_default();
        let mut done = Vec::new();
        let mut keys_removed = 0;
        let mut first_error = None;
        let segs: Vec<(u64, u64)> =
            segments(&topology.ring).into_iter().filter(|&(a, b)| dropping.overlaps(a, b)).collect();
        let mut lacking = Lacking::new(segs);
        for &(lo, hi) in dropping.spans() {
            if shutdown.is_cancelled() {
                break;
            }
            match self.drop_span(lo, hi, &topology, &me, &mut lacking).await {
                Ok(removed) => {
                    keys_removed += removed;
                    done.push((lo, hi));
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let emptied = done.len();
        if emptied > 0 {
            let (ownership, topology, done) = (self.ownership.clone(), topology.clone(), Intervals::from_spans(done));
            tokio::task::spawn_blocking(move || ownership.dropped(&done, &topology))
                .await
                .map_err(|e| e.to_string())??;
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok((emptied, keys_removed)),
        }
    }

    /// Hands `lo..=hi` to its current owners page by page (only keys written recently enough to
    /// matter, [`plan::hand_off`], and to each owner only where its tree differs from ours:
    /// [`Lacking`]) and removes each page once they hold it. Nothing writes into a dropping
    /// range (rule 7), so our trees stay true while the span is handed off, and an owner whose
    /// bucket was equal to ours can only supersede or purge (acknowledged GC) what it held.
    async fn drop_span(
        &self,
        lo: u64,
        hi: u64,
        topology: &Topology,
        me: &str,
        lacking: &mut Lacking,
    ) -> Result<u64, String> {
        let grace = self.tombstone_grace.as_millis() as u64;
        let mut removed = 0;
        // Each page starts after the last key of the one before, which is removed by then:
        // scanning from the start again walked over every removed key's tombstone, page after
        // page (quadratic in a span's keys). Nothing writes into a dropping range behind it.
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.replica.scan_any(lo, hi, after.take(), PAGE as usize).await.map_err(|e| e.to_string())?;
            if page.is_empty() {
                return Ok(removed);
            }
            after = page.last().map(|(k, _)| k.clone());
            let now = now_ms();
            let mut by_target: HashMap<String, Vec<Entry>> = HashMap::new();
            let mut discarded = 0;
            let mut held = 0;
            for (key, record) in &page {
                if !plan::hand_off(record, now, grace) {
                    discarded += 1;
                    continue;
                }
                let targets = plan::drop_targets(topology, key, self.replicas, me);
                if targets.is_empty() {
                    return Err(format!("no live owner to hand {:?} to", String::from_utf8_lossy(key)));
                }
                let hash = kv_ring::hash_key(key);
                for target in targets {
                    if lacking.may_lack(self, topology, &target, hash).await {
                        by_target.entry(target.id).or_default().push((key.clone(), record.versions().to_vec()));
                    } else {
                        held += 1;
                    }
                }
            }
            for (target, entries) in by_target {
                let peer = Peer { address: topology.addresses.get(&target).cloned().unwrap_or_default(), id: target };
                let keys = entries.len() as u64;
                let request = StoreBatchRequest { entries, begin: None, complete: None, deadline_ms: 0 };
                self.client.store_batch(&peer, request).await.map_err(|e| format!("{}: {e}", peer.id))?;
                self.metrics.stream_keys.with_label_values(&["out"]).inc_by(keys);
            }
            let keys: Vec<Vec<u8>> = page.into_iter().map(|(k, _)| k).collect();
            let count = self.replica.remove(keys).await.map_err(|e| e.to_string())? as u64;
            self.metrics.keys_dropped.inc_by(count.saturating_sub(discarded));
            self.metrics.keys_discarded.inc_by(discarded.min(count));
            self.metrics.handoff_skipped.inc_by(held);
            removed += count;
        }
    }
}

impl Worker for Rebalancer {
    fn name(&self) -> String {
        "rebalancer".into()
    }

    fn status(&self) -> String {
        self.doing.to_owned()
    }

    async fn work(&mut self, shutdown: &CancellationToken) -> Result<WorkerState, String> {
        Ok(self.step(shutdown).await)
    }

    async fn wait_for_work(&mut self) {
        let idle = self.ownership.filling().is_empty() && !self.membership.clock_fenced();
        let retry = if idle { Duration::MAX / 4 } else { self.gossip_interval * 5 };
        wake_on_change(retry, &mut self.topology, &mut self.ownership_changes).await;
    }
}

impl Worker for Dropper {
    fn name(&self) -> String {
        "dropper".into()
    }

    fn status(&self) -> String {
        format!("{} spans of lost ranges left to hand off", self.ownership.dropping().spans().len())
    }

    async fn work(&mut self, shutdown: &CancellationToken) -> Result<WorkerState, String> {
        let status = self.membership.my_status();
        // Which keys are too old to hand off is judged by our clock: nothing while it is fenced.
        let busy = matches!(status, Some(Status::Normal | Status::Joining | Status::Leaving))
            && !self.membership.clock_fenced();
        if busy && !self.ownership.dropping().is_empty() {
            match self.round(shutdown).await {
                Ok((ranges, keys)) if ranges > 0 => {
                    tracing::info!(
                        ranges,
                        keys,
                        "dropped ranges this node no longer owns, after handing them to their owners"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "dropping ranges: retrying later"),
            }
        }
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        wake_on_change(self.interval, &mut self.topology, &mut self.ownership_changes).await;
    }
}

/// One job per interval of every move, with the peers `peers_of` picks (sources or targets);
/// moves with no peer are skipped.
fn jobs(moves: &[Move], topology: &Topology, peers_of: impl Fn(&Move) -> Vec<String>) -> Vec<(u64, u64, Vec<Peer>)> {
    moves
        .iter()
        .map(|m| {
            let peers: Vec<Peer> = peers_of(m)
                .into_iter()
                .map(|id| Peer { address: topology.addresses.get(&id).cloned().unwrap_or_default(), id })
                .collect();
            (m.lo, m.hi, peers)
        })
        .filter(|(_, _, peers)| !peers.is_empty())
        .collect()
}

/// The segments of `ring` (one Merkle tree each) that overlap `lo..=hi`.
fn segments_overlapping(ring: &Ring, lo: u64, hi: u64) -> Vec<(u64, u64)> {
    segments(ring).into_iter().filter(|&(a, b)| a <= hi && b >= lo).collect()
}

/// Trees of `engine`'s records over `segs`, keyed by their first hash (built off the async
/// workers: each reads its segment whole).
async fn build_trees(
    engine: Arc<dyn kv_storage::Engine>,
    segs: Vec<(u64, u64)>,
) -> Result<BTreeMap<u64, MerkleTree>, String> {
    tokio::task::spawn_blocking(move || {
        segs.iter()
            .map(|&(a, b)| kv_replica::trees::build(&*engine, a, b).map(|t| (a, t)))
            .collect::<Result<BTreeMap<u64, MerkleTree>, kv_storage::Error>>()
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

/// Where `peer` may hold other versions of `segs` than `trees` (ours) say we hold: the hash
/// ranges of its differing leaf buckets ([`crate::workers::antientropy::differing_buckets`]),
/// and the segments it could not compare (no complete copy or no tree there yet). Everywhere
/// else its copy holds exactly our versions: a bucket's value is the XOR of its records'
/// digests, and a record's digest covers its dots, which name its versions (rule 1).
async fn differing_ranges(
    client: &dyn RangeClient,
    peer: &Peer,
    segs: &[(u64, u64)],
    trees: &BTreeMap<u64, MerkleTree>,
) -> Result<(Vec<(u64, u64)>, Vec<(u64, u64)>), String> {
    let tree = |a: u64, b: u64| trees.get(&a).filter(|t| *t.range().end() == b);
    let found = crate::workers::antientropy::differing_buckets(client, peer, segs, |a, b, level, indices| {
        tree(a, b).map(|t| t.values(level, indices))
    })
    .await?;
    let buckets = found
        .buckets
        .into_iter()
        .filter_map(|((a, b), bucket)| {
            let range = tree(a, b)?.bucket_range(bucket);
            Some((*range.start(), *range.end()))
        })
        .collect();
    Ok((buckets, found.unanswered))
}

/// Times a hand-off asks again for the trees an owner could not compare yet (an owner builds
/// the trees of new segments within a second or so of a ring change, the change that made us
/// drop), a second apart, before it hands that owner every key there.
const TREE_ASKS: u32 = 3;

/// What each owner of the dropping ranges may lack of them, learned by comparing our trees of
/// its segments with its own the first time a key is to be handed to it. Where it cannot be
/// compared (unreachable, no complete copy, no tree), it is handed every key, as a full
/// hand-off would.
struct Lacking {
    segs: Vec<(u64, u64)>,
    trees: Option<BTreeMap<u64, MerkleTree>>,
    by_target: HashMap<String, Option<Intervals>>,
}

impl Lacking {
    fn new(segs: Vec<(u64, u64)>) -> Self {
        Lacking { segs, trees: None, by_target: HashMap::new() }
    }

    /// Whether `target` may lack what we hold at `hash` (a key's hash): anywhere it is not
    /// known to hold exactly our versions.
    async fn may_lack(&mut self, dropper: &Dropper, topology: &Topology, target: &Peer, hash: u64) -> bool {
        if !self.by_target.contains_key(&target.id) {
            let held = match self.compare(dropper, topology, target).await {
                Ok(held) => Some(held),
                Err(e) => {
                    tracing::debug!(target = %target.id, error = %e, "hand-off: cannot compare trees; handing off every key");
                    None
                }
            };
            self.by_target.insert(target.id.clone(), held);
        }
        self.by_target[&target.id].as_ref().is_none_or(|held| !held.contains(hash))
    }

    /// Where `target` is known to hold exactly our versions: the segments it owns at their
    /// first hash that it answered for, minus their differing buckets. Everything else (other
    /// segments, and the parts of a segment where it is only a pending owner: a joiner's token
    /// inside the segment changes the pending owners past it) is sent in full.
    async fn compare(&mut self, dropper: &Dropper, topology: &Topology, target: &Peer) -> Result<Intervals, String> {
        if self.trees.is_none() {
            self.trees = Some(build_trees(dropper.replica.engine().clone(), self.segs.clone()).await?);
        }
        let trees = self.trees.as_ref().expect("built above");
        let mut ask: Vec<(u64, u64)> = self
            .segs
            .iter()
            .copied()
            .filter(|&(a, _)| {
                let current = topology.preference_list_at(a, dropper.replicas);
                let pending = topology.pending_replicas_at(a, dropper.replicas, &current);
                current.iter().chain(&pending).any(|p| p.id == target.id)
            })
            .collect();
        let mut answered = Intervals::new();
        let mut differing = Vec::new();
        for asked in 1..=TREE_ASKS {
            let (buckets, unanswered) = differing_ranges(&*dropper.client, target, &ask, trees).await?;
            differing.extend(buckets);
            let unanswered_set = Intervals::from_spans(unanswered.iter().copied());
            answered = answered.union(&Intervals::from_spans(ask.iter().copied()).difference(&unanswered_set));
            ask = unanswered;
            if ask.is_empty() || asked == TREE_ASKS {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok(answered.difference(&Intervals::from_spans(differing)))
    }
}

/// Sleeps `duration`; returns true if `shutdown` came first.
/// Waits until `timeout` passes, or the topology or the ownership view changes.
async fn wake_on_change(
    timeout: Duration,
    topology: &mut watch::Receiver<Arc<Topology>>,
    ownership: &mut watch::Receiver<u64>,
) {
    tokio::select! {
        () = tokio::time::sleep(timeout) => {}
        changed = topology.changed() => {
            if changed.is_ok() {
                topology.borrow_and_update();
            }
        }
        changed = ownership.changed() => {
            if changed.is_ok() {
                ownership.borrow_and_update();
            }
        }
    }
}

async fn pause(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(duration) => false,
    }
}

fn to_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    hex::decode(text).ok()
}
