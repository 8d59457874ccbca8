//! [`AntiEntropy`]: compares this node's segment trees with the other replicas' and exchanges
//! only the buckets that differ.
//!
//! Every `--anti-entropy-interval` (and at once on `POST /admin/repair`), for each other member,
//! the worker takes the segments of the current ring that both hold completely
//! ([`kv_replica::trees`]), asks for the roots of the peer's trees in one request, then for the
//! children of the unequal nodes only, level by level (two more requests at depth 2), down to
//! the differing leaf buckets. For each such bucket it reads the peer's keys in the bucket's hash
//! interval (a `scan`), merges what it lacks into its own store, and sends back (a
//! `store-batch`) the keys the peer lacks; both sides merge versions (siblings kept), so
//! repair never drops a concurrent write.
//!
//! Repair traffic is paced to `--repair-bytes-per-sec` (bytes received and sent), so a round
//! after a wiped disk does not starve client traffic. Trees are not built by the round: they
//! are kept current on every write, and built once per segment when the node starts to hold it.
//!
//! Safety: only replicas that hold a segment completely (owned now, not filling, not
//! dropping) take part, on both sides, so a stale copy of a range a node lost never flows back;
//! merging into a complete replica only adds versions that another complete replica holds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::workers::metrics::RepairMetrics;
use kv_coordinator::{Peer, RangeClient, Topology};
use kv_membership::Membership;
use kv_merkle::FANOUT;
use kv_proto::{encode, Entry, MerkleQuery, MerkleRequest, ScanRequest, StoreBatchRequest, MAX_MERKLE_QUERIES};
use kv_replica::trees::{segments, TREE_DEPTH};
use kv_replica::{RangeTrees, ReplicaCore};
use kv_transport::HttpReplicaClient;
use kv_worker::{Worker, WorkerState};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// What one anti-entropy round did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairReport {
    /// Segment comparisons made (one per segment and peer).
    pub segments_compared: u64,
    /// Of which differed.
    pub segments_differing: u64,
    /// Leaf buckets exchanged.
    pub buckets_exchanged: u64,
    /// Tree node values fetched from peers.
    pub tree_nodes_fetched: u64,
    /// Keys merged into this node.
    pub keys_received: u64,
    /// Keys sent to peers.
    pub keys_sent: u64,
    /// Bytes of records received in bucket scans (all keys of the differing buckets).
    pub bytes_received: u64,
    /// Bytes of records sent to peers.
    pub bytes_sent: u64,
    /// Peers that could not be compared (down, unreachable, not holding the segments yet).
    pub peers_skipped: Vec<String>,
    /// Milliseconds the round took.
    pub millis: u64,
}

/// Anti-entropy settings.
#[derive(Debug, Clone, Copy)]
pub struct AntiEntropyOptions {
    /// Time between rounds.
    pub interval: Duration,
    /// Repair bytes per second, received plus sent.
    pub bytes_per_sec: u64,
    /// N.
    pub replicas: usize,
    /// Longest time from a bucket's scan to storing what it found (half the replica timeout): the
    /// tombstone collector's second look, two replica timeouts after the first, must outlast
    /// any exchange that read a replica before it got a tombstone (docs/consistency.md, rule 8).
    pub max_exchange: Duration,
    /// How long after it began reading a bucket an exchange's stores may still be applied, on
    /// either side (one replica timeout: rule 8 of docs/consistency.md).
    pub store_deadline: Duration,
}

/// A request for a round now, answered with its report.
pub type RepairRequest = oneshot::Sender<RepairReport>;

/// Worker: Merkle anti-entropy.
pub struct AntiEntropy {
    core: Arc<ReplicaCore>,
    trees: Arc<RangeTrees>,
    membership: Arc<Membership>,
    remote: Arc<HttpReplicaClient>,
    options: AntiEntropyOptions,
    metrics: RepairMetrics,
    requests: mpsc::Receiver<RepairRequest>,
    /// Requests taken while waiting, answered by the next round.
    waiting: Vec<RepairRequest>,
    next_round: Instant,
    /// When each segment (by first hash) was last found in sync with every other replica.
    in_sync: HashMap<u64, Instant>,
    last: Option<RepairReport>,
    /// Start of the pacing window and the bytes moved since.
    budget: (Instant, u64),
}

impl AntiEntropy {
    /// The worker, and the sender `POST /admin/repair` uses.
    pub fn new(
        core: Arc<ReplicaCore>,
        trees: Arc<RangeTrees>,
        membership: Arc<Membership>,
        remote: Arc<HttpReplicaClient>,
        options: AntiEntropyOptions,
        metrics: RepairMetrics,
    ) -> (Self, mpsc::Sender<RepairRequest>) {
        let (tx, requests) = mpsc::channel(16);
        let worker = AntiEntropy {
            core,
            trees,
            membership,
            remote,
            options,
            metrics,
            requests,
            waiting: Vec::new(),
            next_round: Instant::now() + options.interval,
            in_sync: HashMap::new(),
            last: None,
            budget: (Instant::now(), 0),
        };
        (worker, tx)
    }

    /// The segments of the current ring this node holds completely.
    fn wanted(&self, topology: &Topology) -> Vec<(u64, u64)> {
        let view = self.core.view();
        segments(&topology.ring).into_iter().filter(|&(lo, hi)| view.serves_range(lo, hi)).collect()
    }

    /// Builds trees for newly held segments, forgets the others.
    async fn keep_trees(&self, wanted: Vec<(u64, u64)>) -> Result<(), String> {
        let (trees, engine) = (self.trees.clone(), self.core.engine().clone());
        let built = tokio::task::spawn_blocking(move || trees.keep(&*engine, &wanted))
            .await
            .map_err(|e| format!("tree task: {e}"))?
            .map_err(|e| format!("building trees: {e}"))?;
        if built > 0 {
            tracing::debug!(built, "segment trees built");
        }
        Ok(())
    }

    async fn pace(&mut self, bytes: u64) {
        let (start, spent) = &mut self.budget;
        if start.elapsed() > Duration::from_secs(10) {
            *start = Instant::now();
            *spent = 0;
        }
        *spent += bytes;
        let due = Duration::from_secs_f64(*spent as f64 / self.options.bytes_per_sec.max(1) as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }

    /// One round against every other replica.
    async fn round(&mut self, shutdown: &CancellationToken) -> RepairReport {
        let started = Instant::now();
        let mut report = RepairReport::default();
        let topology = self.membership.topology();
        // The trees of these segments were kept up to date by `work` just before.
        let wanted = self.wanted(&topology);
        let me = self.core.node_id().to_owned();
        let mut peers: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
        for &(lo, hi) in &wanted {
            for node in topology.ring.preference_list_at(hi, self.options.replicas) {
                if node.id != me {
                    peers.entry(node.id.clone()).or_default().push((lo, hi));
                }
            }
        }
        let mut synced: BTreeMap<u64, bool> = wanted.iter().map(|&(lo, _)| (lo, true)).collect();
        for (id, segs) in peers {
            if shutdown.is_cancelled() {
                break;
            }
            let Some(address) = topology.addresses.get(&id) else { continue };
            let peer = Peer { id: id.clone(), address: address.clone() };
            if topology.down.contains(&id) {
                report.peers_skipped.push(id.clone());
                segs.iter().for_each(|(lo, _)| {
                    synced.insert(*lo, false);
                });
                continue;
            }
            match self.compare(&peer, &segs, &mut report, shutdown).await {
                Ok(unsynced) => unsynced.into_iter().for_each(|lo| {
                    synced.insert(lo, false);
                }),
                Err(e) => {
                    tracing::info!(peer = %id, error = %e, "anti-entropy: peer not compared");
                    report.peers_skipped.push(id.clone());
                    segs.iter().for_each(|(lo, _)| {
                        synced.insert(*lo, false);
                    });
                }
            }
        }
        let now = Instant::now();
        self.in_sync.retain(|lo, _| synced.contains_key(lo));
        for (lo, ok) in synced {
            if ok {
                self.in_sync.insert(lo, now);
            }
        }
        let oldest = wanted
            .iter()
            .map(|(lo, _)| self.in_sync.get(lo).map_or(Duration::MAX, |t| now.duration_since(*t)))
            .max()
            .unwrap_or_default();
        self.metrics.oldest_sync.set(if oldest == Duration::MAX { -1 } else { oldest.as_secs() as i64 });
        self.metrics.segments.set(wanted.len() as i64);
        self.metrics.rounds.inc();
        report.millis = started.elapsed().as_millis() as u64;
        if report.segments_differing > 0 || !report.peers_skipped.is_empty() {
            tracing::info!(?report, "anti-entropy round");
        }
        report
    }

    /// Compares `segs` with `peer` and repairs what differs. Returns the segments that could not
    /// be compared (the peer holds no complete copy of them yet) or not repaired.
    async fn compare(
        &mut self,
        peer: &Peer,
        segs: &[(u64, u64)],
        report: &mut RepairReport,
        shutdown: &CancellationToken,
    ) -> Result<Vec<u64>, String> {
        let trees = self.trees.clone();
        let found =
            differing_buckets(&*self.remote, peer, segs, |lo, hi, level, indices| trees.values(lo, hi, level, indices))
                .await?;
        report.tree_nodes_fetched += found.nodes_fetched;
        report.segments_compared += found.compared;
        report.segments_differing += found.differing;
        let mut unsynced: Vec<u64> = found.unanswered.iter().map(|(lo, _)| *lo).collect();
        for ((lo, hi), bucket) in found.buckets {
            if shutdown.is_cancelled() {
                break;
            }
            let Some((first, last)) = self.trees.bucket_range(lo, hi, bucket) else { continue };
            if first > last {
                continue;
            }
            if let Err(e) = self.exchange(peer, first, last, report).await {
                tracing::info!(peer = %peer.id, error = %e, "anti-entropy: bucket not exchanged");
                unsynced.push(lo);
            }
        }
        Ok(unsynced)
    }

    /// Exchanges the keys of the hash interval `first..=last` with `peer`, both ways.
    async fn exchange(&mut self, peer: &Peer, first: u64, last: u64, report: &mut RepairReport) -> Result<(), String> {
        report.buckets_exchanged += 1;
        let started = Instant::now();
        // Neither side applies what this exchange read later than one replica timeout after it
        // began reading (docs/consistency.md, rule 8): the collector's second look comes two
        // replica timeouts after a first look that found the tombstone everywhere.
        let deadline_ms = kv_coordinator::now_ms() + self.options.store_deadline.as_millis() as u64;
        let mut theirs: Vec<Entry> = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .remote
                .scan(peer, ScanRequest { first_hash: first, last_hash: last, after: after.clone(), limit: 1000 })
                .await
                .map_err(|e| e.to_string())?;
            after = page.entries.last().map(|(k, _)| k.clone());
            theirs.extend(page.entries);
            if page.done || after.is_none() {
                break;
            }
        }
        let received = encode(&theirs).len() as u64;
        let core = self.core.clone();
        let mine: Vec<Entry> = tokio::task::spawn_blocking(move || core.scan(first, last, None, usize::MAX))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|r| r.to_string())?;
        let mine_by_key: BTreeMap<&[u8], &Vec<kv_storage::Version>> =
            mine.iter().map(|(k, v)| (k.as_slice(), v)).collect();
        let theirs_by_key: BTreeMap<&[u8], &Vec<kv_storage::Version>> =
            theirs.iter().map(|(k, v)| (k.as_slice(), v)).collect();
        let to_me = wanted_by(&mine_by_key, &theirs);
        let to_them = wanted_by(&theirs_by_key, &mine);
        let keys: BTreeSet<&[u8]> = to_me.iter().chain(&to_them).map(|(k, _)| k.as_slice()).collect();
        tracing::debug!(peer = %peer.id, first, last, keys = keys.len(), "anti-entropy bucket");
        if started.elapsed() > self.options.max_exchange {
            return Err(format!(
                "bucket read {:?} ago, too long before storing; retried next round",
                started.elapsed()
            ));
        }
        let (in_keys, out_keys) = (to_me.len() as u64, to_them.len() as u64);
        if !to_me.is_empty() {
            let core = self.core.clone();
            tokio::task::spawn_blocking(move || core.store_stream_until(to_me, deadline_ms, kv_coordinator::now_ms()))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|r| r.to_string())?;
        }
        let mut sent = 0;
        if !to_them.is_empty() {
            sent = encode(&to_them).len() as u64;
            self.remote
                .store_batch(peer, StoreBatchRequest { entries: to_them, begin: None, complete: None, deadline_ms })
                .await
                .map_err(|e| e.to_string())?;
        }
        report.keys_received += in_keys;
        report.keys_sent += out_keys;
        report.bytes_received += received;
        report.bytes_sent += sent;
        self.metrics.keys.with_label_values(&["in"]).inc_by(in_keys);
        self.metrics.keys.with_label_values(&["out"]).inc_by(out_keys);
        self.metrics.bytes.with_label_values(&["in"]).inc_by(received);
        self.metrics.bytes.with_label_values(&["out"]).inc_by(sent);
        self.pace(received + sent).await;
        Ok(())
    }
}

impl Worker for AntiEntropy {
    fn name(&self) -> String {
        "anti-entropy".into()
    }

    fn status(&self) -> String {
        match &self.last {
            Some(r) => format!(
                "last round: {} segment comparisons, {} differing, {} keys in, {} keys out, {} ms",
                r.segments_compared, r.segments_differing, r.keys_received, r.keys_sent, r.millis
            ),
            None => "no round yet".into(),
        }
    }

    async fn work(&mut self, shutdown: &CancellationToken) -> Result<WorkerState, String> {
        // Its stores carry deadlines from our clock: no exchange while it is fenced.
        if self.membership.clock_fenced() {
            return Ok(WorkerState::Idle);
        }
        let mut waiting = std::mem::take(&mut self.waiting);
        while let Ok(request) = self.requests.try_recv() {
            waiting.push(request);
        }
        let topology = self.membership.topology();
        self.keep_trees(self.wanted(&topology)).await?;
        if waiting.is_empty() && Instant::now() < self.next_round {
            return Ok(WorkerState::Idle);
        }
        let report = self.round(shutdown).await;
        self.next_round = Instant::now() + self.options.interval;
        for request in waiting {
            let _ = request.send(report.clone());
        }
        self.last = Some(report);
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        let tick = Duration::from_secs(1).min(self.options.interval);
        tokio::select! {
            request = self.requests.recv() => {
                if let Some(request) = request {
                    self.waiting.push(request);
                }
            }
            () = tokio::time::sleep(tick) => {}
        }
    }
}

/// What a Merkle comparison with a peer found.
#[derive(Debug, Default)]
pub struct Differences {
    /// Leaf buckets that differ: segment and bucket index.
    pub buckets: Vec<((u64, u64), usize)>,
    /// Segments the peer could not answer for (it holds no complete copy or no tree yet), or
    /// that this side has no tree of.
    pub unanswered: Vec<(u64, u64)>,
    /// Segments compared.
    pub compared: u64,
    /// Of which differed.
    pub differing: u64,
    /// Node values fetched from the peer.
    pub nodes_fetched: u64,
}

/// Compares this side's trees of `segs` (node values from `local(lo, hi, level, indices)`, of
/// [`TREE_DEPTH`] like the peer's) with `peer`'s, level by level: the roots of all segments in
/// one request, then only the children of unequal nodes. Returns the differing leaf buckets.
pub async fn differing_buckets(
    client: &dyn RangeClient,
    peer: &Peer,
    segs: &[(u64, u64)],
    local: impl Fn(u64, u64, u32, &[usize]) -> Option<Vec<u128>>,
) -> Result<Differences, String> {
    let mut found = Differences::default();
    // Frontier per segment: the unequal nodes of the level above, starting at the roots.
    let mut frontier: Vec<((u64, u64), Vec<usize>)> = segs.iter().map(|&s| (s, vec![0])).collect();
    for level in 0..=TREE_DEPTH {
        let asks: Vec<Ask> = frontier
            .iter()
            .map(|(seg, unequal)| {
                let indices = if level == 0 {
                    vec![0]
                } else {
                    unequal.iter().flat_map(|p| p * FANOUT..(p + 1) * FANOUT).collect()
                };
                (*seg, indices)
            })
            .collect();
        let mut next = Vec::new();
        for chunk in chunks(&asks) {
            let queries = chunk
                .iter()
                .map(|((lo, hi), indices)| MerkleQuery {
                    lo: *lo,
                    hi: *hi,
                    level,
                    indices: indices.iter().map(|&i| i as u32).collect(),
                })
                .collect();
            let answer = client.merkle(peer, MerkleRequest { queries }).await.map_err(|e| e.to_string())?;
            if answer.answers.len() != chunk.len() {
                return Err("merkle answer of the wrong length".into());
            }
            for (((lo, hi), indices), theirs) in chunk.iter().zip(answer.answers) {
                let (Some(theirs), Some(mine)) = (theirs, local(*lo, *hi, level, indices)) else {
                    found.unanswered.push((*lo, *hi));
                    continue;
                };
                found.nodes_fetched += theirs.len() as u64;
                if level == 0 {
                    found.compared += 1;
                }
                let unequal: Vec<usize> = indices
                    .iter()
                    .zip(mine.iter().zip(&theirs))
                    .filter(|(_, (a, b))| a != b)
                    .map(|(i, _)| *i)
                    .collect();
                if unequal.is_empty() {
                    continue;
                }
                if level == 0 {
                    found.differing += 1;
                }
                next.push(((*lo, *hi), unequal));
            }
        }
        if level == TREE_DEPTH {
            found.buckets =
                next.into_iter().flat_map(|(seg, buckets)| buckets.into_iter().map(move |b| (seg, b))).collect();
            break;
        }
        frontier = next;
        if frontier.is_empty() {
            break;
        }
    }
    Ok(found)
}

/// One segment's question at one level: the segment and the node indices asked.
type Ask = ((u64, u64), Vec<usize>);

/// Most node values asked in one Merkle request (the peer refuses more than 2^20).
const MAX_VALUES_PER_REQUEST: usize = 1 << 19;

/// `asks` cut into requests of at most [`MAX_MERKLE_QUERIES`] queries and
/// [`MAX_VALUES_PER_REQUEST`] values.
fn chunks(asks: &[Ask]) -> Vec<&[Ask]> {
    let mut out = Vec::new();
    let (mut start, mut values) = (0, 0);
    for (i, (_, indices)) in asks.iter().enumerate() {
        if i > start && (i - start >= MAX_MERKLE_QUERIES || values + indices.len() > MAX_VALUES_PER_REQUEST) {
            out.push(&asks[start..i]);
            (start, values) = (i, 0);
        }
        values += indices.len();
    }
    if start < asks.len() {
        out.push(&asks[start..]);
    }
    out
}

/// What of `offered` (one side's records) the other side, whose records are `have`, should
/// merge: per key, the versions it neither holds (by dot: a dot names one version forever) nor
/// has superseded (a version of its covers the dot). A superseded version is never sent: were
/// the tombstone that superseded it purged before the store lands, it would come back.
fn wanted_by(have: &BTreeMap<&[u8], &Vec<kv_storage::Version>>, offered: &[Entry]) -> Vec<Entry> {
    offered
        .iter()
        .filter_map(|(key, versions)| {
            let held: &[kv_storage::Version] = have.get(key.as_slice()).map_or(&[], |v| v.as_slice());
            let wanted: Vec<kv_storage::Version> = versions
                .iter()
                .filter(|o| !held.iter().any(|h| h.dot == o.dot || h.context.get(&o.dot.node) >= o.dot.counter))
                .cloned()
                .collect();
            (!wanted.is_empty()).then(|| (key.clone(), wanted))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_vclock::{Dot, VClock};

    fn version(actor: &str, counter: u64, context: &[(&str, u64)], tombstone: bool) -> kv_storage::Version {
        let mut clock = VClock::new();
        for (node, c) in context {
            clock.set(node, *c, 1);
        }
        kv_storage::Version {
            dot: Dot { node: actor.into(), counter, timestamp: 1 },
            context: clock,
            value: if tombstone { Vec::new() } else { b"v".to_vec() }.into(),
            content_type: "t".into(),
            tombstone,
            written_at: 1,
            write_id: 0,
        }
    }

    /// Rule 8: an exchange never sends a version the other side has superseded (a tombstone
    /// there covers it): were that tombstone purged before the store lands, the value would be
    /// back. Held versions are not sent either; new ones are.
    #[test]
    fn an_exchange_sends_only_versions_the_other_side_neither_holds_nor_superseded() {
        let old = version("a", 1, &[], false);
        let tombstone = version("b", 1, &[("a", 1)], true);
        let concurrent = version("c", 4, &[], false);
        let theirs_deleted = vec![tombstone];
        let theirs_other = vec![concurrent.clone()];
        let have: BTreeMap<&[u8], &Vec<kv_storage::Version>> =
            [(b"deleted".as_slice(), &theirs_deleted), (b"other".as_slice(), &theirs_other)].into_iter().collect();
        let offered: Vec<Entry> = vec![
            (b"deleted".to_vec(), vec![old.clone()]),
            (b"other".to_vec(), vec![concurrent.clone(), old.clone()]),
            (b"new".to_vec(), vec![old.clone()]),
        ];
        let wanted = wanted_by(&have, &offered);
        assert_eq!(
            wanted,
            vec![(b"other".to_vec(), vec![old.clone()]), (b"new".to_vec(), vec![old])],
            "the superseded version of `deleted` and the held version of `other` stay home"
        );
    }
}
