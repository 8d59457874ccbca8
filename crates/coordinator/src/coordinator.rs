//! [`Coordinator`]: quorum writes and reads over a [`ReplicaClient`].

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use kv_types::{Record, Version};
use kv_vclock::{Dot, Versioned};
use tokio::sync::{mpsc, watch};
use tokio_util::task::TaskTracker;

use crate::fanout::{self, Answer};
use crate::metrics::CoordinatorMetrics;
use crate::quorum::{Need, Tally};
use crate::topology::{Peer, ReplicaClient, Topology};
use crate::{Error, Quorum, ReplicaError};
use kv_proto::{is_stale, merge_records, Ticket, Write};
use kv_proto::{CoordinateResponse, KeyRef, Refusal};

/// Coordinator settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Cluster defaults for N, R and W.
    pub quorum: Quorum,
    /// Deadline of one call to one replica.
    pub replica_timeout: Duration,
    /// Reads ask all N replicas at once (`true`) or only R, then more if some fail (`false`).
    pub read_all: bool,
    /// Tombstones younger than this are never purged.
    pub tombstone_grace: Duration,
    /// Sloppy quorum: a fallback that keeps a hint for a replica that is down or timed out
    /// counts toward W (unless the client asks for `pw` of the key's own replicas).
    pub sloppy_quorum: bool,
    /// Hinted handoff: writes a replica misses go to a fallback as hints.
    pub hinted_handoff: bool,
    /// This coordinator's zone, for `local_quorum`.
    pub zone: String,
    /// The most two members' clocks may differ (twice `--max-clock-offset`): the tombstone
    /// collector's second look waits it out on top of two replica timeouts, since the deadlines
    /// of stores still in flight are judged by their receivers' clocks.
    pub max_clock_skew: Duration,
}

/// Result of a write.
#[derive(Debug, Clone)]
pub struct PutOutcome {
    /// The version written.
    pub created: Version,
    /// Node ids that acknowledged by the time of the answer (at least W).
    pub acked: Vec<String>,
    /// Replicas in the key's preference list.
    pub replicas: usize,
    /// Versions the key held once the write was merged in at the replica that created it
    /// (1: the new version alone; more: it has concurrent siblings there).
    pub siblings: usize,
}

/// Result of a read.
#[derive(Debug, Clone)]
pub struct GetOutcome {
    /// Merged versions from the replicas that answered.
    pub record: Record,
    /// Node ids that answered by the time of the answer (at least R).
    pub answered: Vec<String>,
    /// Replicas in the key's preference list.
    pub replicas: usize,
}

/// Sends writes to N replicas and answers after W; reads from replicas and answers after R,
/// repairing stale replicas in the background. Cheap to share (`Arc`).
pub struct Coordinator {
    client: Arc<dyn ReplicaClient>,
    topology: watch::Receiver<Arc<Topology>>,
    options: Options,
    metrics: CoordinatorMetrics,
    call_metrics: Vec<CallMetrics>,
    /// Replication and read repair that outlive the client's answer; drained on shutdown.
    tasks: TaskTracker,
    write_ids: WriteIds,
    clock: Clock,
    /// Replicas that left a coordinate call unanswered lately, and when: asked to coordinate
    /// only after the others for a while, so that one hung replica fails only the writes that
    /// were in flight to it.
    stalled: parking_lot::Mutex<Vec<(String, tokio::time::Instant)>>,
}

/// How long a replica that left a coordinate call unanswered is asked last, in replica
/// timeouts: long enough for failure detection to mark a dead node down.
const STALLED_TIMEOUTS: u32 = 5;

/// Wall-clock milliseconds since the Unix epoch: write deadlines and tombstone ages. The
/// simulation passes a virtual clock.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Unique ids for client writes: this process's random instance id and a sequence number.
/// Two fronts collide only if they draw the same 64-bit instance id.
struct WriteIds {
    instance: u64,
    next: AtomicU64,
}

impl WriteIds {
    fn next(&self) -> u128 {
        (u128::from(self.instance) << 64) | u128::from(self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

/// What [`Coordinator::replicate`] stores where.
struct Replication {
    key: Vec<u8>,
    /// The key's ring hash.
    hash: u64,
    /// The key's new sibling set.
    versions: Vec<Version>,
    /// The new version's dot, which the stores vouch for.
    fresh: Dot,
    /// The replicas to store on, with their positions in the preference list.
    targets: Vec<(usize, Peer)>,
    /// Future owners of a moving range.
    pending: Vec<Peer>,
    /// Nodes that keep hints for replicas that miss the write.
    fallbacks: Vec<Peer>,
    /// The replica that created the version: the hint keeper of last resort.
    holder: Peer,
    /// Replicas known down.
    down: std::collections::HashSet<String>,
}

/// A kind of replica call, indexing [`CallMetrics`].
#[derive(Clone, Copy)]
enum Op {
    Coordinate,
    Store,
    Read,
    Purge,
    Hint,
}

const OPS: [&str; 5] = ["coordinate", "store", "read", "purge", "hint"];
const OUTCOMES: [&str; 6] = ["ok", "unreachable", "failed", "refused", "bad_answer", "not_owner"];

/// The metric series of one kind of call, looked up once instead of per call.
struct CallMetrics {
    seconds: prometheus::Histogram,
    outcomes: Vec<prometheus::IntCounter>,
}

impl CallMetrics {
    fn all(metrics: &CoordinatorMetrics) -> Vec<CallMetrics> {
        OPS.iter()
            .map(|op| CallMetrics {
                seconds: metrics.replica_call_seconds.with_label_values(&[op]),
                outcomes: OUTCOMES
                    .iter()
                    .map(|outcome| metrics.replica_calls.with_label_values(&[op, outcome]))
                    .collect(),
            })
            .collect()
    }
}

impl Coordinator {
    /// A coordinator over `client`, placing keys by the latest `topology`; its write ids start
    /// with a random instance id.
    pub fn new(
        client: Arc<dyn ReplicaClient>,
        topology: watch::Receiver<Arc<Topology>>,
        options: Options,
        metrics: CoordinatorMetrics,
    ) -> Arc<Self> {
        // Without OS randomness, the clock still makes a collision between fronts unlikely.
        let instance =
            getrandom::u64().unwrap_or_else(|_| crate::now_ms().rotate_left(32) ^ u64::from(std::process::id()));
        Coordinator::with_clock(client, topology, options, metrics, instance, Arc::new(crate::now_ms))
    }

    /// [`Coordinator::new`] with a given write-id instance and clock (deterministic simulation).
    pub fn with_clock(
        client: Arc<dyn ReplicaClient>,
        topology: watch::Receiver<Arc<Topology>>,
        options: Options,
        metrics: CoordinatorMetrics,
        instance: u64,
        clock: Clock,
    ) -> Arc<Self> {
        let call_metrics = CallMetrics::all(&metrics);
        let write_ids = WriteIds { instance, next: AtomicU64::new(0) };
        Arc::new(Coordinator {
            client,
            topology,
            options,
            metrics,
            call_metrics,
            tasks: TaskTracker::new(),
            write_ids,
            clock,
            stalled: parking_lot::Mutex::new(Vec::new()),
        })
    }

    /// The coordinator's metrics.
    pub fn metrics(&self) -> &CoordinatorMetrics {
        &self.metrics
    }

    /// Cluster defaults.
    pub fn quorum(&self) -> Quorum {
        self.options.quorum
    }

    /// How long a replica call may take (`--replica-timeout`).
    pub fn replica_timeout(&self) -> Duration {
        self.options.replica_timeout
    }

    /// How far members' clocks may be apart (`--max-clock-offset`).
    pub fn max_clock_skew(&self) -> Duration {
        self.options.max_clock_skew
    }

    /// Tombstones younger than this are never purged.
    pub fn tombstone_grace(&self) -> Duration {
        self.options.tombstone_grace
    }

    /// The current topology.
    pub fn topology(&self) -> Arc<Topology> {
        self.topology.borrow().clone()
    }

    /// Background work (replication past W, read repair). Shutdown closes and waits on it.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Writes (or deletes, for a tombstone `write`) `key` with `w` acknowledgements (default
    /// W); see [`Coordinator::put_with`].
    pub async fn put(self: &Arc<Self>, key: Vec<u8>, write: Write, w: Option<usize>) -> Result<PutOutcome, Error> {
        self.put_with(key, write, w.map(Need::Count), None).await
    }

    /// Writes (or deletes, for a tombstone `write`) `key`, waiting for `w` (default W) and for
    /// at least `pw` acknowledgements from the key's own replicas.
    ///
    /// The first replica of the preference list that answers issues the version's dot (normal
    /// replicas first, then leaving ones, then those known down) and answers its sibling set
    /// with the new version, storing nothing; then every replica, that one included, stores the
    /// set in parallel: one durable write round per write (rule 15 of docs/consistency.md). Any
    /// failure of the first call leaves no version anywhere, so the next replica is asked. A
    /// replica known down, or whose store fails, gets a hint instead:
    /// the write is handed to a fallback (the next member clockwise beyond the preference list,
    /// not known down), which keeps it durably for that replica; for want of one, to the
    /// replica that created the version. With sloppy quorum a fallback's acknowledgement counts
    /// toward `w` (each node once). Answers once `w` is met; the remaining stores and hints
    /// complete in the background. A key with fewer replicas than `w` (a ring smaller than N)
    /// is refused, never answered by fewer.
    pub async fn put_with(
        self: &Arc<Self>,
        key: Vec<u8>,
        write: Write,
        w: Option<Need>,
        pw: Option<usize>,
    ) -> Result<PutOutcome, Error> {
        let op = if write.tombstone { "delete" } else { "put" };
        let topology = self.topology();
        let n = self.options.quorum.n;
        // The key is hashed once here: the preference list, the pending owners and the
        // fallbacks are all found from its ring position.
        let hash = kv_ring::hash_key(&key);
        let peers = topology.preference_list_at(hash, n);
        if peers.is_empty() {
            return Err(Error::NoMembers);
        }
        let replicas = peers.len();
        let need = w.unwrap_or(Need::Count(self.options.quorum.w));
        // At least one of the key's own replicas must store the write itself (rule 15): a
        // hint alone is not a replica's copy, and the replica that creates the version stores
        // it only with the others.
        let mut tally = self.tally(&topology, &peers, need, pw.unwrap_or(0).max(1), op)?;
        let pending = topology.pending_replicas_at(hash, n, &peers);
        let write_id = self.write_ids.next();

        let order = self.coordination_order(&topology, &peers);
        let Some((index, response)) =
            self.create(&peers, order, KeyRef { bytes: &key, hash }, &write, write_id).await?
        else {
            return Err(self.quorum_failure(op, tally.required(), 0, replicas));
        };
        // A replica in our own process may have stored it already (it counts, and gets no store).
        let stored_at = response.stored.then_some(index);
        if let Some(index) = stored_at {
            tally.add(&peers[index].id, true);
        }
        let siblings = response.record.len();
        // The replica created the version without its value (a coordinate call carries only its
        // length): the value is put in here, shared, not copied.
        let mut versions = response.record.into_versions();
        let Some(created) = versions.iter_mut().find(|v| v.dot == response.created) else {
            let message = "the sibling set answered lacks the version created".into();
            return Err(Error::Refused { node: peers[index].id.clone(), message });
        };
        if created.value.len() != write.value.len() {
            created.value = write.value.clone();
        }
        let created = created.clone();
        let job = Replication {
            versions,
            fresh: response.created,
            // Every replica stores the new sibling set, the one that created it too, at once:
            // one durable write per replica, all in parallel (rule 15).
            targets: peers.iter().cloned().enumerate().filter(|(i, _)| Some(*i) != stored_at).collect(),
            pending,
            fallbacks: topology.fallbacks_at(hash, n),
            holder: peers[index].clone(),
            down: topology.down.clone(),
            key,
            hash,
        };
        let this = self.clone();
        let mut answers = fanout::spawn(&self.tasks, replicas * 2, |acks| this.replicate(job, acks));
        fanout::until_met(&mut tally, &mut answers).await;
        if !tally.met() {
            return Err(self.quorum_failure(op, tally.required(), tally.acks(), replicas));
        }
        Ok(PutOutcome { created, acked: tally.ids(), replicas, siblings })
    }

    /// The order in which `peers` are asked to coordinate a write: normal replicas first, then
    /// those that left a call unanswered lately, then leaving ones, then those known down.
    fn coordination_order(&self, topology: &Topology, peers: &[Peer]) -> Vec<usize> {
        let mut order: Vec<usize> = (0..peers.len()).collect();
        let stalled = self.stalled_peers();
        order.sort_by_key(|&i| {
            let id = &peers[i].id;
            (topology.down.contains(id), stalled.contains(id), topology.leaving.contains(id))
        });
        order
    }

    /// Stores a write's new sibling set on every replica of `job` at once, a hint for each that
    /// cannot take it, and on the future owners of a moving range (which do not count toward
    /// W), passing on every acknowledgement. Runs in the background: replication past W
    /// outlives the client's answer.
    async fn replicate(self: Arc<Self>, job: Replication, acks: mpsc::Sender<Answer<()>>) {
        let key = KeyRef { bytes: &job.key, hash: job.hash };
        let (versions, fresh) = (job.versions.as_slice(), &job.fresh);
        let deadline = || (self.clock)() + self.options.replica_timeout.as_millis() as u64;
        let stores: FuturesUnordered<_> = job
            .targets
            .iter()
            .map(|(position, peer)| async {
                // A replica known down is not tried: its store would only wait out the
                // timeout (and hold a call slot) before the hint.
                if !job.down.contains(&peer.id) {
                    let store = self.client.store(peer, key, versions, Some(fresh), deadline());
                    if self.call(Op::Store, store).await.is_ok() {
                        let _ = acks.send(Answer::Replica(peer.id.clone(), ())).await;
                        return;
                    }
                }
                if !self.options.hinted_handoff {
                    return;
                }
                let kept = self.hint(peer, *position, key.bytes, versions, &job.fallbacks, &job.holder).await;
                if let Some((by, fallback)) = kept {
                    let _ = acks.send(Answer::Hint { by, counts: fallback && self.options.sloppy_quorum }).await;
                }
            })
            .collect();
        let moving: FuturesUnordered<_> = job
            .pending
            .iter()
            .map(|peer| async {
                let _ = self.call(Op::Store, self.client.store(peer, key, versions, Some(fresh), deadline())).await;
            })
            .collect();
        futures::join!(stores.collect::<Vec<()>>(), moving.collect::<Vec<()>>());
    }

    /// Asks the replicas at `order` in `peers`, one at a time, to create the version of
    /// `write` (its dot and the key's new sibling set), until one does; `None` if none did. A
    /// coordinate call stores nothing (rule 15 of docs/consistency.md): whatever became of one,
    /// no version of this write exists until the front stores one, so the next replica may
    /// create it. Replicas whose last version of the key is still on its way to their own copy
    /// (`Refusal::Outstanding`) are asked again after a short pause, within one replica timeout.
    async fn create(
        &self,
        peers: &[Peer],
        mut order: Vec<usize>,
        key: KeyRef<'_>,
        write: &Write,
        write_id: u128,
    ) -> Result<Option<(usize, CoordinateResponse)>, Error> {
        let timeout_ms = self.options.replica_timeout.as_millis() as u64;
        let give_up = tokio::time::Instant::now() + self.options.replica_timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            let mut busy = Vec::new();
            for index in order {
                let peer = &peers[index];
                let ticket = Ticket { write_id, deadline_ms: (self.clock)() + timeout_ms };
                match self.call(Op::Coordinate, self.client.coordinate(peer, key, write, &ticket)).await {
                    Ok(response) => return Ok(Some((index, response))),
                    Err(ReplicaError::Refused(Refusal::ImpossibleContext(message))) => {
                        return Err(Error::BadContext(message))
                    }
                    Err(ReplicaError::Refused(Refusal::TooManySiblings(message))) => {
                        return Err(Error::TooManySiblings(message))
                    }
                    Err(ReplicaError::Refused(Refusal::Outstanding(_))) => busy.push(index),
                    // Our own replica created the version and may hold it: not elsewhere too.
                    Err(ReplicaError::Refused(Refusal::StoreFailed(message) | Refusal::Malformed(message))) => {
                        return Err(Error::Refused { node: peer.id.clone(), message })
                    }
                    // One that did not answer is asked last for a while.
                    Err(e) => {
                        if matches!(e, ReplicaError::Unreachable(_)) {
                            self.stall(&peer.id);
                        }
                        tracing::debug!(peer = %peer.id, error = %e, "replica did not coordinate; trying the next")
                    }
                }
            }
            if busy.is_empty() || tokio::time::Instant::now() + pause > give_up {
                return Ok(None);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
            order = busy;
        }
    }

    /// The tally of a request needing `need` (and `primary` of the key's own replicas), or the
    /// error for a need these replicas can never meet.
    fn tally(
        &self,
        topology: &Topology,
        peers: &[Peer],
        need: Need,
        primary: usize,
        op: &'static str,
    ) -> Result<Tally, Error> {
        let zones = peers.iter().map(|p| (p.id.clone(), topology.zone(&p.id).to_owned())).collect();
        Tally::new(need, primary, zones, &self.options.zone)
            .map_err(|(required, _)| self.insufficient(op, required, peers.len()))
    }

    /// Hands `versions` of `key`, which replica `target` (at `position` in the preference list)
    /// did not take, to a node that keeps them as a hint: a fallback (the `position`-th first,
    /// so that two missing replicas use two fallbacks), else `holder`, the replica that created
    /// the version. Returns who keeps it and whether that is a fallback.
    async fn hint(
        &self,
        target: &Peer,
        position: usize,
        key: &[u8],
        versions: &[Version],
        fallbacks: &[Peer],
        holder: &Peer,
    ) -> Option<(String, bool)> {
        let start = if fallbacks.is_empty() { 0 } else { position % fallbacks.len() };
        let candidates = fallbacks[start..].iter().chain(&fallbacks[..start]).map(|p| (p, true));
        for (peer, fallback) in candidates.chain(std::iter::once((holder, false))) {
            if self.call(Op::Hint, self.client.hint(peer, &target.id, key, versions)).await.is_ok() {
                let label = if fallback { "fallback" } else { "replica" };
                self.metrics.hints_written.with_label_values(&[label]).inc();
                return Some((peer.id.clone(), fallback));
            }
        }
        self.metrics.hints_written.with_label_values(&["none"]).inc();
        tracing::warn!(target = %target.id, "no node could keep a hint for a replica that missed a write; anti-entropy will repair it");
        None
    }

    /// Reads `key` with `r` replies (default R); see [`Coordinator::get_with`].
    pub async fn get(self: &Arc<Self>, key: Vec<u8>, r: Option<usize>) -> Result<GetOutcome, Error> {
        self.get_with(key, r.map(Need::Count)).await
    }

    /// Reads `key` until `r` (default R) is met by the key's replicas, merging their versions
    /// into siblings. Replicas that answered with stale or missing versions are repaired in the
    /// background.
    pub async fn get_with(self: &Arc<Self>, key: Vec<u8>, r: Option<Need>) -> Result<GetOutcome, Error> {
        let topology = self.topology();
        let hash = kv_ring::hash_key(&key);
        let peers = topology.preference_list_at(hash, self.options.quorum.n);
        if peers.is_empty() {
            return Err(Error::NoMembers);
        }
        let replicas = peers.len();
        let need = r.unwrap_or(Need::Count(self.options.quorum.r));
        let mut tally = self.tally(&topology, &peers, need, 0, "get")?;
        // Zone quorums name particular replicas: ask them all at once.
        let first_wave = match need {
            Need::Count(required) if !self.options.read_all => required,
            _ => replicas,
        };
        let this = self.clone();
        let mut answers =
            fanout::spawn(&self.tasks, replicas, |answers| this.read(key, hash, peers, first_wave, answers));
        let answers = fanout::until_met(&mut tally, &mut answers).await;
        if !tally.met() {
            return Err(self.quorum_failure("get", tally.required(), answers.len(), replicas));
        }
        let record = merge_records(answers.iter().map(|(_, r)| r));
        let answered = answers.into_iter().map(|(id, _)| id).collect();
        Ok(GetOutcome { record, answered, replicas })
    }

    /// Reads `key` from the first `first_wave` of `peers` (one more for each that fails),
    /// passing every answer on; once all have answered, repairs the stale ones. Runs in the
    /// background: read repair outlives the client's answer.
    async fn read(
        self: Arc<Self>,
        key: Vec<u8>,
        hash: u64,
        peers: Vec<Peer>,
        first_wave: usize,
        answers: mpsc::Sender<Answer<Record>>,
    ) {
        let read_started = (self.clock)();
        let key = KeyRef { bytes: &key, hash };
        let read = |peer: Peer| {
            let this = &self;
            async move {
                let result = this.call(Op::Read, this.client.read(&peer, key)).await;
                (peer, result)
            }
        };
        let mut reads: FuturesUnordered<_> = peers[..first_wave].iter().cloned().map(read).collect();
        let mut next = first_wave;
        let mut records: Vec<(Peer, Record)> = Vec::with_capacity(peers.len());
        while let Some((peer, result)) = reads.next().await {
            match result {
                Ok(record) => {
                    let _ = answers.send(Answer::Replica(peer.id.clone(), record.clone())).await;
                    records.push((peer, record));
                }
                Err(_) if next < peers.len() => {
                    reads.push(read(peers[next].clone()));
                    next += 1;
                }
                Err(_) => {}
            }
        }
        drop(answers);
        let merged = merge_records(records.iter().map(|(_, r)| r));
        self.repair(key, records, merged, read_started).await;
    }

    /// Tombstone collection for one key (the node's garbage-collection worker calls it; reads
    /// never purge). Reads every replica of `key` and repairs the stale ones; if every replica
    /// already held exactly the same tombstones, all older than the grace, and the key's range
    /// is not moving, it waits two replica timeouts, reads every replica again, and only if
    /// they still hold exactly those tombstones asks each to purge them. Returns whether every
    /// replica purged.
    ///
    /// Why the wait: a read or an anti-entropy exchange that saw a replica without the
    /// tombstone (before it was repaired) may still be about to store what that replica held on
    /// another replica; that store was sent within a replica timeout of the read and is applied
    /// within one more (its deadline), so after two timeouts it has landed while the tombstone
    /// was still everywhere to supersede it, or it is dropped.
    pub async fn collect(self: &Arc<Self>, key: &[u8]) -> Result<bool, Error> {
        let key = KeyRef::new(key);
        let Some((dots, peers)) = self.settled_tombstones(key, true).await? else { return Ok(false) };
        tokio::time::sleep(self.options.replica_timeout * 2 + self.options.max_clock_skew).await;
        // The same replicas, holding the same tombstones: those read are the ones purged.
        let peers = match self.settled_tombstones(key, false).await? {
            Some((again, read)) if again == dots && read == peers => read,
            _ => return Ok(false),
        };
        let mut purged = 0;
        for peer in peers {
            if self.call(Op::Purge, self.client.purge(&peer, key, &dots)).await.is_ok() {
                self.metrics.tombstones_purged.inc();
                purged += 1;
            }
        }
        Ok(purged == self.options.quorum.n)
    }

    /// Reads every replica of `key` and repairs the ones that lack a version another holds: for
    /// a key whose hint was dropped undelivered, so that its replicas agree without waiting for
    /// anti-entropy.
    pub async fn read_repair(self: &Arc<Self>, key: &[u8]) -> Result<(), Error> {
        self.settled_tombstones(KeyRef::new(key), true).await.map(|_| ())
    }

    /// Reads every replica of `key` (repairing stale ones when `repair`) and returns the dots
    /// of its versions and the replicas read, if every replica answered with exactly them, all
    /// tombstones older than the grace, and the key's range is not moving.
    async fn settled_tombstones(
        self: &Arc<Self>,
        key: KeyRef<'_>,
        repair: bool,
    ) -> Result<Option<(Vec<Dot>, Vec<Peer>)>, Error> {
        let peers = self.topology().preference_list_at(key.hash, self.options.quorum.n);
        if peers.is_empty() {
            return Err(Error::NoMembers);
        }
        let replicas = peers.len();
        let read_started = (self.clock)();
        let reads = peers.clone().into_iter().map(|peer| async move {
            let result = self.call(Op::Read, self.client.read(&peer, key)).await;
            (peer, result)
        });
        let answers: Vec<(Peer, Record)> = futures::future::join_all(reads)
            .await
            .into_iter()
            .filter_map(|(peer, result)| result.ok().map(|record| (peer, record)))
            .collect();
        let merged = merge_records(answers.iter().map(|(_, r)| r));
        let now = (self.clock)();
        let grace = self.options.tombstone_grace.as_millis() as u64;
        let settled = replicas == self.options.quorum.n
            && answers.len() == replicas
            && !merged.is_empty()
            && merged.versions().iter().all(|v| v.tombstone && now.saturating_sub(v.written_at) >= grace)
            && answers.iter().all(|(_, r)| r.len() == merged.len() && !is_stale(r, &merged))
            && !self.moving(key);
        let dots = settled.then(|| {
            let mut dots: Vec<Dot> = merged.versions().iter().map(|v| v.dot().clone()).collect();
            dots.sort_by(|a, b| (&a.node, a.counter).cmp(&(&b.node, b.counter)));
            (dots, peers)
        });
        if repair {
            self.repair(key, answers, merged, read_started).await;
        }
        Ok(dots)
    }

    /// Whether the key's range is moving: a future owner may hold a copy a tombstone has not
    /// reached (its pending store was lost), so purging now would let that copy come back.
    fn moving(&self, key: KeyRef<'_>) -> bool {
        let topology = self.topology();
        let current = topology.preference_list_at(key.hash, self.options.quorum.n);
        !topology.pending_replicas_at(key.hash, self.options.quorum.n, &current).is_empty()
    }

    /// Read repair: sends the merged versions to every replica that answered without some.
    ///
    /// Every store carries the deadline `read_started` (wall-clock ms when the reads were sent)
    /// plus two replica timeouts, however long the reads and the repairs before it took. A
    /// replica that gave a version was read after `read_started`; a tombstone collector purging
    /// what superseded that version read the same replica holding the tombstone later still, and
    /// purges only after a second look two replica timeouts after that (rule 8 of
    /// docs/consistency.md): the repair lands before the purge or not at all.
    async fn repair(&self, key: KeyRef<'_>, answers: Vec<(Peer, Record)>, merged: Record, read_started: u64) {
        let versions = merged.versions().to_vec();
        let deadline = read_started + 2 * self.options.replica_timeout.as_millis() as u64;
        for (peer, record) in &answers {
            if !is_stale(record, &merged) {
                continue;
            }
            if self.call(Op::Store, self.client.store(peer, key, &versions, None, deadline)).await.is_ok() {
                self.metrics.read_repairs.inc();
                tracing::debug!(peer = %peer.id, "read repair");
            }
        }
    }

    /// One replica call with the replica timeout and metrics.
    async fn call<T>(&self, op: Op, call: impl Future<Output = Result<T, ReplicaError>>) -> Result<T, ReplicaError> {
        let timeout = self.options.replica_timeout;
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(ReplicaError::Unreachable(format!("no answer within {timeout:?}"))),
        };
        let outcome = match &result {
            Ok(_) => 0,
            Err(ReplicaError::Unreachable(_)) => 1,
            Err(ReplicaError::NotSent(_)) => 1,
            Err(ReplicaError::Refused(Refusal::NotOwner(_))) => 5,
            Err(ReplicaError::Refused(refusal)) if refusal.is_retryable() => 2,
            Err(ReplicaError::Refused(_)) => 3,
            Err(ReplicaError::Decode(_)) => 4,
        };
        let handles = &self.call_metrics[op as usize];
        handles.seconds.observe(started.elapsed().as_secs_f64());
        handles.outcomes[outcome].inc();
        result
    }

    fn stalled_peers(&self) -> Vec<String> {
        let mut stalled = self.stalled.lock();
        let now = tokio::time::Instant::now();
        stalled.retain(|(_, until)| *until > now);
        stalled.iter().map(|(id, _)| id.clone()).collect()
    }

    fn stall(&self, id: &str) {
        let until = tokio::time::Instant::now() + self.options.replica_timeout * STALLED_TIMEOUTS;
        let mut stalled = self.stalled.lock();
        stalled.retain(|(other, _)| other != id);
        stalled.push((id.to_owned(), until));
    }

    fn insufficient(&self, op: &'static str, required: usize, replicas: usize) -> Error {
        self.metrics.quorum_failures.with_label_values(&[op]).inc();
        Error::InsufficientReplicas { op, required, replicas, n: self.options.quorum.n }
    }

    fn quorum_failure(&self, op: &'static str, required: usize, acks: usize, replicas: usize) -> Error {
        self.metrics.quorum_failures.with_label_values(&[op]).inc();
        Error::QuorumNotMet { op, required, acks, replicas }
    }
}
