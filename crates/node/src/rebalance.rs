//! Moving ranges: join, leave and re-replication after a removal.
//!
//! The [`Rebalancer`] is the node's background job for data movement. It acts on three
//! occasions, each computed from the ring's ownership diff ([`kv_ring::diff`]), so that only
//! the ranges that must move do:
//!
//! - **Join** (our status is `joining`): wait a few gossip rounds, so that coordinators know we
//!   are joining and already send us new writes for our future ranges (the pending ring), then
//!   *pull* every range we gain from one of its current owners, in parallel, page by page.
//!   Progress is recorded after every page in `data-dir/streams.json`, so a restarted join
//!   resumes where it stopped. Reads keep going to the old owners until we announce `normal`,
//!   so no read misses data that is still in flight. Then we are `normal`.
//! - **Leave** (`leaving`, after `POST /admin/leave` or SIGTERM with `--leave-on-shutdown`):
//!   *push* every range we lose to its new owners (`store-batch`); we keep serving reads and
//!   writes meanwhile. Then we announce `left`, let it spread, and the process exits.
//! - **Removal** (an operator declared a member permanently failed): every node *pulls* the
//!   ranges it gains from **all** surviving old owners, so each key is back to N replicas even
//!   when the survivors held different subsets.
//!
//! A down member changes nothing here: temporary failures move no data.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use kv_coordinator::wire::{decode, encode, ScanRequest, ScanResponse, StoreBatchRequest, SCAN_PATH, STORE_BATCH_PATH};
use kv_coordinator::{Peer, Topology};
use kv_gossip::Status;
use kv_ring::{diff, RangeMove, Ring};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::membership::{owns_now, ring_of, Membership};
use crate::metrics::Metrics;
use crate::peer_client::HttpReplicaClient;
use crate::replica::Replica;

/// Records per scan page: large enough to amortise a round trip, small enough (about 50 KB
/// with 100-byte values) to bound memory per stream.
const PAGE: u32 = 500;

/// How often stream progress is written to `streams.json`.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Gossip rounds to wait before streaming in, so coordinators learn of the join first.
const JOIN_DELAY_ROUNDS: u32 = 3;

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
    replica: Replica,
    client: Arc<HttpReplicaClient>,
    replicas: usize,
    gossip_interval: Duration,
    concurrency: usize,
    progress_file: PathBuf,
    progress: Mutex<HashMap<String, Cursor>>,
    /// When progress was last written to disk.
    saved: Mutex<Instant>,
    metrics: Metrics,
    /// Cancelled once this node has left the cluster, which stops the process.
    exit: CancellationToken,
}

/// How a [`Rebalancer`] is set up.
pub struct RebalancerOptions {
    /// N.
    pub replicas: usize,
    /// Gossip round period.
    pub gossip_interval: Duration,
    /// Ranges streamed at once.
    pub concurrency: usize,
    /// `data-dir/streams.json`.
    pub progress_file: PathBuf,
}

impl Rebalancer {
    /// A rebalancer; `exit` is cancelled when the node has left the cluster.
    pub fn new(
        membership: Arc<Membership>,
        replica: Replica,
        client: Arc<HttpReplicaClient>,
        options: RebalancerOptions,
        metrics: Metrics,
        exit: CancellationToken,
    ) -> Self {
        let progress = std::fs::read_to_string(&options.progress_file)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        Rebalancer {
            membership,
            replica,
            client,
            replicas: options.replicas,
            gossip_interval: options.gossip_interval,
            concurrency: options.concurrency,
            progress_file: options.progress_file,
            progress: Mutex::new(progress),
            saved: Mutex::new(Instant::now()),
            metrics,
            exit,
        }
    }

    /// Runs until `shutdown`, or until the node has left.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut topology = self.membership.subscribe();
        let mut last = topology.borrow().ring.clone();
        loop {
            match self.membership.my_status() {
                Some(Status::Joining) => {
                    if pause(self.gossip_interval * JOIN_DELAY_ROUNDS, &shutdown).await {
                        return;
                    }
                    let started = Instant::now();
                    match self.join(&shutdown).await {
                        Ok(moved) => {
                            moved.log(started, "join complete: streamed in our ranges");
                            self.clear_progress();
                            self.membership.set_status(Status::Normal);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "join interrupted; retrying");
                            if pause(self.gossip_interval, &shutdown).await {
                                return;
                            }
                        }
                    }
                    continue;
                }
                Some(Status::Leaving) => {
                    let started = Instant::now();
                    match self.leave(&shutdown).await {
                        Ok(moved) => {
                            moved.log(started, "leave complete: handed off our ranges");
                            self.membership.set_status(Status::Left);
                            // Let `left` spread before the process goes away.
                            let _ = pause(self.gossip_interval * JOIN_DELAY_ROUNDS, &shutdown).await;
                            self.exit.cancel();
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "leave interrupted; retrying");
                            if pause(self.gossip_interval, &shutdown).await {
                                return;
                            }
                            continue;
                        }
                    }
                }
                _ => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = topology.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let current = topology.borrow_and_update().ring.clone();
                    let removed: Vec<String> = last
                        .nodes()
                        .iter()
                        .filter(|n| current.node(&n.id).is_none())
                        .filter(|n| self.membership.state(&n.id).is_some_and(|s| s.status == Status::Removed))
                        .map(|n| n.id.clone())
                        .collect();
                    if !removed.is_empty() {
                        let started = Instant::now();
                        match self.rereplicate(&last, &current, &removed, &shutdown).await {
                            Ok(moved) => tracing::info!(?removed, ranges = moved.ranges, keys = moved.keys, seconds = started.elapsed().as_secs_f64(), "re-replicated the ranges of removed members"),
                            Err(e) => tracing::warn!(?removed, error = %e, "re-replication incomplete; read repair will fill the rest"),
                        }
                    }
                    last = current;
                }
            }
        }
    }

    fn me(&self) -> Result<String, String> {
        self.membership.my_state().map(|s| s.id).ok_or_else(|| "no own state".to_owned())
    }

    /// The ring as it will be when our own status is `status`.
    fn ring_with_me_as(&self, status: Status) -> Result<Ring, String> {
        let me = self.me()?;
        let states = self.membership.states().into_iter().map(|mut s| {
            if s.id == me {
                s.status = status;
            }
            s
        });
        Ok(ring_of(states, owns_now))
    }

    async fn join(&self, shutdown: &CancellationToken) -> Result<Moved, String> {
        let me = self.me()?;
        let before = self.membership.topology().ring.clone();
        let after = self.ring_with_me_as(Status::Normal)?;
        let moves: Vec<RangeMove> =
            diff(&before, &after, self.replicas).into_iter().filter(|m| m.gained().contains(&me.as_str())).collect();
        self.pull_all(moves, &[me], false, shutdown).await
    }

    async fn rereplicate(
        &self,
        before: &Ring,
        after: &Ring,
        removed: &[String],
        shutdown: &CancellationToken,
    ) -> Result<Moved, String> {
        let me = self.me()?;
        let moves: Vec<RangeMove> =
            diff(before, after, self.replicas).into_iter().filter(|m| m.gained().contains(&me.as_str())).collect();
        let mut exclude = removed.to_vec();
        exclude.push(me);
        self.pull_all(moves, &exclude, true, shutdown).await
    }

    /// Pulls every range of `moves` from its old owners (but not `exclude`): from the first
    /// that answers, or from all of them when `every_source`.
    async fn pull_all(
        &self,
        moves: Vec<RangeMove>,
        exclude: &[String],
        every_source: bool,
        shutdown: &CancellationToken,
    ) -> Result<Moved, String> {
        let jobs = jobs(&moves, &self.membership.topology(), |m| {
            m.old.iter().filter(|id| !exclude.contains(id)).cloned().collect()
        });
        self.run_all(jobs, |lo, hi, sources| self.pull(lo, hi, sources, every_source, shutdown)).await
    }

    /// Runs `job` for every interval, [`Rebalancer::concurrency`] at a time, and adds up what
    /// moved; the first failure fails the whole (it is retried from its progress).
    async fn run_all<F, Fut>(&self, jobs: Vec<(u64, u64, Vec<Peer>)>, job: F) -> Result<Moved, String>
    where
        F: Fn(u64, u64, Vec<Peer>) -> Fut,
        Fut: std::future::Future<Output = Result<Moved, String>>,
    {
        let ranges = jobs.len();
        let results: Vec<Result<Moved, String>> = stream::iter(jobs)
            .map(|(lo, hi, peers)| job(lo, hi, peers))
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

    async fn pull(
        &self,
        lo: u64,
        hi: u64,
        sources: Vec<Peer>,
        every_source: bool,
        shutdown: &CancellationToken,
    ) -> Result<Moved, String> {
        let name = format!("{lo:016x}-{hi:016x}");
        if self.progress.lock().get(&name).is_some_and(|c| c.done) {
            return Ok(Moved::default());
        }
        self.metrics.ranges_streaming.inc();
        let mut moved = Moved::default();
        let mut last_error = String::new();
        let mut copied_once = false;
        for source in &sources {
            if copied_once && !every_source {
                break;
            }
            // Every source starts where the previous one stopped, unless we want them all.
            let mut after = if every_source { None } else { self.cursor(&name) };
            let result: Result<(), String> = async {
                loop {
                    if shutdown.is_cancelled() {
                        return Err("shutting down".into());
                    }
                    let request = ScanRequest { first_hash: lo, last_hash: hi, after: after.clone(), limit: PAGE };
                    let bytes =
                        self.client.post(source, SCAN_PATH, encode(&request)).await.map_err(|e| e.to_string())?;
                    let page: ScanResponse = decode(&bytes)?;
                    let keys = page.entries.len() as u64;
                    let value_bytes: u64 =
                        page.entries.iter().flat_map(|(_, vs)| vs.iter()).map(|v| v.value.len() as u64).sum();
                    after = page.entries.last().map(|(k, _)| k.clone()).or(after);
                    self.replica.store_batch(page.entries).await.map_err(|e| e.to_string())?;
                    moved.keys += keys;
                    moved.bytes += value_bytes;
                    self.metrics.stream_keys.with_label_values(&["in"]).inc_by(keys);
                    self.metrics.stream_bytes.with_label_values(&["in"]).inc_by(value_bytes);
                    if !every_source {
                        self.save_cursor(&name, after.as_deref(), false);
                    }
                    if page.done {
                        return Ok(());
                    }
                }
            }
            .await;
            match result {
                Ok(()) => copied_once = true,
                Err(e) => last_error = format!("{}: {e}", source.id),
            }
        }
        self.metrics.ranges_streaming.dec();
        if copied_once {
            self.save_cursor(&name, None, true);
            Ok(moved)
        } else {
            Err(format!("range {name}: no source answered ({last_error})"))
        }
    }

    async fn leave(&self, shutdown: &CancellationToken) -> Result<Moved, String> {
        let me = self.me()?;
        let before = self.membership.topology().ring.clone();
        let after = self.ring_with_me_as(Status::Left)?;
        let moves: Vec<RangeMove> =
            diff(&before, &after, self.replicas).into_iter().filter(|m| m.lost().contains(&me.as_str())).collect();
        let jobs = jobs(&moves, &self.membership.topology(), |m| m.gained().into_iter().map(str::to_owned).collect());
        self.run_all(jobs, |lo, hi, targets| self.push(lo, hi, targets, shutdown)).await
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
                if page.is_empty() {
                    return Ok(moved);
                }
                after = page.last().map(|(k, _)| k.clone());
                let keys = page.len() as u64;
                let value_bytes: u64 = page.iter().flat_map(|(_, vs)| vs.iter()).map(|v| v.value.len() as u64).sum();
                let body = encode(&StoreBatchRequest { entries: page });
                for target in &targets {
                    self.client
                        .post(target, STORE_BATCH_PATH, body.clone())
                        .await
                        .map_err(|e| format!("{}: {e}", target.id))?;
                    moved.keys += keys;
                    moved.bytes += value_bytes;
                    self.metrics.stream_keys.with_label_values(&["out"]).inc_by(keys);
                    self.metrics.stream_bytes.with_label_values(&["out"]).inc_by(value_bytes);
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

    fn clear_progress(&self) {
        self.progress.lock().clear();
        let _ = std::fs::remove_file(&self.progress_file);
    }
}

/// One job per interval of every move, with the peers `peers_of` picks (sources or targets);
/// moves with no peer are skipped.
fn jobs(
    moves: &[RangeMove],
    topology: &Topology,
    peers_of: impl Fn(&RangeMove) -> Vec<String>,
) -> Vec<(u64, u64, Vec<Peer>)> {
    moves
        .iter()
        .flat_map(|m| {
            let peers: Vec<Peer> = peers_of(m)
                .into_iter()
                .map(|id| Peer { address: topology.addresses.get(&id).cloned().unwrap_or_default(), id })
                .collect();
            m.range.intervals().into_iter().map(move |(lo, hi)| (lo, hi, peers.clone()))
        })
        .filter(|(_, _, peers)| !peers.is_empty())
        .collect()
}

/// Sleeps `duration`; returns true if `shutdown` came first.
async fn pause(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(duration) => false,
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    (0..text.len()).step_by(2).map(|i| text.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}
