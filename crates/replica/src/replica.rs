//! [`ReplicaCore`]: what a storage node does with the replica calls it receives.
//!
//! One implementation, used by `kvnode` (behind its internal API and its own coordinator) and by
//! the model checker, so that the rules checked in simulation are the rules that run:
//!
//! - **Ownership.** A replica accepts writes for a key only while its own view ([`ReplicaView`])
//!   makes it one of the key's replicas, now or once the moves in progress complete, and the
//!   key's range is not being dropped; it serves reads, scans and purges only of ranges it holds
//!   completely (owned now, not being filled after a gain). Anything else is refused as
//!   misdirected ([`Refusal::NotOwner`]): a write it accepted for a range it no longer owns would be
//!   an acknowledgement it cannot keep, a stale copy it served would bring back what the real
//!   owners have since deleted, and an incomplete copy would answer a read without writes a
//!   quorum acknowledged.
//! - **Only normal owners with complete copies coordinate.** A new version's dot must exceed
//!   every dot of this actor the key has anywhere, and only a complete copy holds them all (or
//!   what superseded them): a joining node lacks data, a leaving one is handing it off, and a
//!   node that regained a range has not merged it yet.
//! - **One client write, one version.** A coordinate call carries its write's id and deadline
//!   ([`kv_proto::Ticket`]); past the deadline it is refused (the front has given up on it),
//!   and a version of the same write (the same write id) already held is reused.
//! - **Dots never repeat.** New dots come from the store's counter ([`Engine::issue_counter`]),
//!   above every counter the store ever issued and every counter of ours the key's versions
//!   hold as dots; a version from elsewhere whose dot is ours with a counter we would still
//!   issue moves the counter past it ([`Engine::observe_counter`]). Contexts never move it.
//! - **An acknowledgement is a promise.** The version a write created must be held after the
//!   merge. If it is not, because a held version covers its dot although that version was
//!   created before it (so its writer cannot have read it), the dot was issued twice: the
//!   replica refuses ([`Refusal::NotKept`]) instead of acknowledging, so a counter bug becomes a visible
//!   error, not a silent loss. A covering version created at or after it is a later write whose
//!   client read it (the new version reached a reader before this replica): that is a
//!   supersession, and the replica acknowledges, since it holds what replaced the write.
//!
//! Views change under a write lock, and every call checks ownership and writes under the read
//! lock, so a range-drop that starts after a view change sees every write accepted before it.

use std::collections::HashMap;
use std::sync::Arc;

use kv_ring::{Intervals, Ring};
use kv_storage::{Added, Engine, Hint, HintStore, Record, Version};
use kv_vclock::{Dot, Versioned};
use parking_lot::{Mutex, RwLock};

use kv_proto::{
    counter_floor, new_version, reusable, Call, CoordinateRequest, CoordinateResponse, Entry, HintRequest, Refusal,
    Reply, GAINING_TOO,
};

/// What a replica believes about its own place in the cluster.
///
/// - *Accepting*: positions whose replicas include this node now or once the moves in progress
///   complete, minus what it is dropping: it stores writes and streams for them.
/// - *Complete*: positions it owns now (current ring), holds completely (not filling: gained
///   and not yet merged from enough owners) and is not dropping: it serves reads, scans and
///   purges for them.
/// - *Coordinating*: the complete positions, when it is `normal`.
#[derive(Debug, Clone)]
pub struct ReplicaView {
    accepting: Intervals,
    complete: Intervals,
    coordinating: Intervals,
    /// Owned now and not dropping, complete or filling.
    owned: Intervals,
}

impl ReplicaView {
    /// The view of node `me` with `n` replicas per key, from the current ring and the ring once
    /// moves complete, whether it is `normal`, what it is dropping and what it is filling.
    pub fn new(
        me: &str,
        n: usize,
        ring: &Ring,
        pending: Option<&Ring>,
        normal: bool,
        dropping: &Intervals,
        filling: &Intervals,
    ) -> Self {
        let now = ring.owned(me, n);
        let later = pending.map(|p| p.owned(me, n)).unwrap_or_default();
        ReplicaView::from_sets(&now, &later, normal, dropping, filling)
    }

    /// The view from precomputed sets: positions owned now and once moves complete.
    pub fn from_sets(
        now: &Intervals,
        later: &Intervals,
        normal: bool,
        dropping: &Intervals,
        filling: &Intervals,
    ) -> Self {
        let accepting = now.union(later).difference(dropping);
        let owned = now.difference(dropping);
        let complete = owned.difference(filling);
        let coordinating = if normal { complete.clone() } else { Intervals::new() };
        ReplicaView { accepting, complete, coordinating, owned }
    }

    /// A view that owns nothing (before membership is known).
    pub fn nothing() -> Self {
        ReplicaView {
            accepting: Intervals::new(),
            complete: Intervals::new(),
            coordinating: Intervals::new(),
            owned: Intervals::new(),
        }
    }

    /// Whether the replica owns all of `[lo, hi]` now but is filling part of it (gaining it
    /// from its other owners): why it refuses to serve a scan of it.
    pub fn filling_range(&self, lo: u64, hi: u64) -> bool {
        self.owned.covers(lo, hi) && !self.complete.covers(lo, hi)
    }

    /// Whether the replica stores writes and streams for the key at `hash`.
    pub fn accepts(&self, hash: u64) -> bool {
        self.accepting.contains(hash)
    }

    /// Whether the replica serves reads and purges of the key at `hash`.
    pub fn serves(&self, hash: u64) -> bool {
        self.complete.contains(hash)
    }

    /// Whether the replica may create versions of the key at `hash`.
    pub fn may_coordinate(&self, hash: u64) -> bool {
        self.coordinating.contains(hash)
    }

    /// Whether the replica serves a scan of `[lo, hi]`: it holds all of it completely.
    pub fn serves_range(&self, lo: u64, hi: u64) -> bool {
        self.complete.covers(lo, hi)
    }
}

/// Counters of what the replica refused or noticed.
#[derive(Clone)]
pub struct ReplicaMetrics {
    /// `kv_replica_refusals_total{reason}`: calls refused (misdirected, too_late, not_kept).
    pub refusals: prometheus::IntCounterVec,
    /// `kv_actor_amnesia_total`: versions that named a counter of ours we would still issue.
    pub amnesia: prometheus::IntCounter,
    /// `kv_siblings_over_warning_total`: client writes that left more than `--warn-siblings`
    /// siblings on their key.
    pub siblings_over_warning: prometheus::IntCounter,
}

impl ReplicaMetrics {
    /// Metrics attached to no registry (tests, simulation).
    pub fn unregistered() -> Self {
        ReplicaMetrics {
            refusals: prometheus::IntCounterVec::new(
                prometheus::Opts::new("kv_replica_refusals_total", "Replica calls refused, by reason"),
                &["reason"],
            )
            .expect("invariant: valid metric"),
            amnesia: prometheus::IntCounter::new(
                "kv_actor_amnesia_total",
                "Versions naming a counter of this node's actor above what it had issued (a store restored from an old copy)",
            )
            .expect("invariant: valid metric"),
            siblings_over_warning: prometheus::IntCounter::new(
                "kv_siblings_over_warning_total",
                "Client writes that left more than --warn-siblings siblings on their key",
            )
            .expect("invariant: valid metric"),
        }
    }

    /// Creates and registers the metrics.
    pub fn register(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let m = ReplicaMetrics::unregistered();
        registry.register(Box::new(m.refusals.clone()))?;
        registry.register(Box::new(m.amnesia.clone()))?;
        registry.register(Box::new(m.siblings_over_warning.clone()))?;
        Ok(m)
    }
}

/// A storage node's replica: its engine, its actor name and its view of what it owns.
pub struct ReplicaCore {
    /// The name this run's dots carry; changes when the run moves to a new epoch.
    actor: RwLock<Arc<str>>,
    node_id: String,
    engine: Arc<dyn Engine>,
    /// Where hints for other replicas are kept (none: hint calls are refused), and the age
    /// (ms) a hint's oldest version may have when taken: half the tombstone grace minus the
    /// hint age bound, so that it stays deliverable until it expires.
    hints: Option<(Arc<HintStore>, u64)>,
    view: RwLock<Arc<ReplicaView>>,
    metrics: ReplicaMetrics,
    siblings: SiblingLimits,
    /// When a write past the warning level was last logged (ms), so a hot key logs once in a
    /// while, not on every write.
    warned_at: std::sync::atomic::AtomicU64,
    /// Dots this run issued that their key's record here does not account for yet (rule 15 of
    /// docs/consistency.md).
    issued: Mutex<Issued>,
    /// How long after it was issued a dot's own store can still arrive from the front that
    /// asked for it (ms): past that, only a hint can bring it, and a key still waiting for it
    /// moves the replica to a new epoch instead of waiting.
    outstanding_for_ms: u64,
}

/// The dots a run issued, by key, that the key's record here does not account for yet (no
/// version here carries or covers them): the front stores a new version on every replica at
/// once, this one included, after we answer. No dot is issued for a key with one outstanding.
#[derive(Default)]
struct Issued {
    /// Key -> (counter, when issued, ms by our clock).
    keys: HashMap<Vec<u8>, Vec<(u64, u64)>>,
    /// Set at shutdown, once the run is judged clean or not: no dot is issued after it.
    closed: bool,
}

/// Most keys with a dot outstanding before the replica moves to a new epoch, which makes every
/// outstanding dot moot: normally a dot is accounted for within a round trip, so this bounds
/// only what lost stores leave behind.
const MAX_OUTSTANDING_KEYS: usize = 1 << 16;

/// Default of [`ReplicaCore::with_outstanding_for`]: two default replica timeouts and the
/// default clock bound, with room.
const OUTSTANDING_FOR_MS: u64 = 10_000;

/// How many siblings a client write may leave on a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiblingLimits {
    /// A coordinated write that would leave more siblings than this (and more than the key
    /// held) is refused `409 too_many_siblings`; stores (replication, repair, hand-offs) never
    /// are, so no copy is ever held back by the limit.
    pub max: usize,
    /// Past this many, a write is counted (`kv_siblings_over_warning_total`) and logged.
    pub warn: usize,
    /// A coordinated write that would leave more value bytes than this on the key (all
    /// siblings together; and more than the key held) is refused the same way: a key's whole
    /// sibling set must fit in one peer message, or it could never be replicated or repaired.
    pub max_bytes: usize,
}

impl Default for SiblingLimits {
    fn default() -> Self {
        SiblingLimits { max: 100, warn: 25, max_bytes: 8 << 20 }
    }
}

/// Least time between two warnings about sibling counts, ms.
const SIBLING_WARNING_EVERY_MS: u64 = 10_000;

/// The actor name of node `node_id` on a store of incarnation `incarnation` in epoch `epoch`:
/// what its dots and clock entries carry. Unique per storage incarnation, so a wiped disk is a
/// new actor, and per epoch, so a run that follows one that may have lost track of a dot it
/// issued (a crash) is a new actor too (epoch 0 keeps the name without an epoch).
pub fn actor_name(node_id: &str, incarnation: u64, epoch: u64) -> String {
    if epoch == 0 {
        format!("{node_id}~{incarnation:016x}")
    } else {
        format!("{node_id}~{incarnation:016x}.{epoch}")
    }
}

/// The refusal a storage failure becomes: one that may pass (I/O) or one that will not.
fn storage_refusal(e: &kv_storage::Error) -> Refusal {
    if e.is_retryable() {
        Refusal::Unavailable(e.to_string())
    } else {
        Refusal::Failed(e.to_string())
    }
}

fn storage_failed(e: &kv_storage::Error) -> Reply {
    storage_refusal(e).into()
}

/// A store call of a batch, once its key is split off: the versions and the fresh dot.
type StoreCall = (Vec<Version>, Option<Dot>);

/// Whether `record` accounts for dot `counter` of `actor`: a version carries it or covers it.
fn accounts_for(record: &Record, actor: &str, counter: u64) -> bool {
    record
        .versions()
        .iter()
        .any(|v| v.context.get(actor) >= counter || (v.dot.node == actor && v.dot.counter == counter))
}

/// Drops from `dots` those `record` accounts for; returns whether any remain.
fn still_outstanding(dots: &mut Vec<(u64, u64)>, record: &Record, actor: &str) -> bool {
    dots.retain(|&(counter, _)| !accounts_for(record, actor, counter));
    !dots.is_empty()
}

impl ReplicaCore {
    /// A replica of node `node_id` over `engine`, owning nothing until [`ReplicaCore::set_view`].
    pub fn new(node_id: &str, engine: Arc<dyn Engine>, metrics: ReplicaMetrics) -> Self {
        let identity = engine.identity();
        let actor = RwLock::new(Arc::from(actor_name(node_id, identity.incarnation, identity.epoch)));
        let node_id = node_id.to_owned();
        ReplicaCore {
            actor,
            node_id,
            engine,
            hints: None,
            view: RwLock::new(Arc::new(ReplicaView::nothing())),
            metrics,
            siblings: SiblingLimits::default(),
            warned_at: std::sync::atomic::AtomicU64::new(0),
            issued: Mutex::new(Issued::default()),
            outstanding_for_ms: OUTSTANDING_FOR_MS,
        }
    }

    /// The same replica, waiting at most `ms` after issuing a dot for its own store of it to
    /// arrive before a key waiting for it moves the run to a new epoch: at least the longest a
    /// front's store can take to arrive (two replica timeouts and twice the clock bound).
    pub fn with_outstanding_for(mut self, ms: u64) -> Self {
        self.outstanding_for_ms = ms;
        self
    }

    /// Forgets every outstanding dot: rule 15 broken on purpose (the model checker's mutation
    /// `ForgetOutstandingDots`; nothing else calls it).
    pub fn forget_outstanding_dots(&self) {
        self.issued.lock().keys.clear();
    }

    /// Ends coordination for this run (shutdown) and answers how many keys have a dot this run
    /// issued that their record here does not account for, reading their records first, so
    /// dots that arrived by a stream or a repair are not counted. Zero means the run may be
    /// marked clean ([`Engine::mark_clean`]): the next one can keep the actor. No dot is issued
    /// after this, so none can be outstanding unseen.
    pub fn close(&self) -> usize {
        let mut issued = self.issued.lock();
        issued.closed = true;
        let actor = self.actor();
        issued.keys.retain(|key, dots| match self.engine.get(key) {
            Ok(record) => still_outstanding(dots, &record, &actor),
            Err(_) => true,
        });
        issued.keys.len()
    }

    /// Keys with a dot outstanding now (a gauge).
    pub fn outstanding_keys(&self) -> usize {
        self.issued.lock().keys.len()
    }

    /// The same replica with sibling limits `limits` for the writes it coordinates.
    pub fn with_sibling_limits(mut self, limits: SiblingLimits) -> Self {
        self.siblings = limits;
        self
    }

    /// The same replica, keeping hints for other replicas in `hints`, each only if its oldest
    /// version is at most `max_version_age_ms` old: a hint that could become undeliverable
    /// (older than half the tombstone grace, the hand-off rule) before it expires is refused, so
    /// a coordinator never counts toward W a copy that will be dropped.
    pub fn with_hints(mut self, hints: Arc<HintStore>, max_version_age_ms: u64) -> Self {
        self.hints = Some((hints, max_version_age_ms));
        self
    }

    /// The node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The name this replica's dots carry now.
    pub fn actor(&self) -> Arc<str> {
        self.actor.read().clone()
    }

    /// The storage engine.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// The current view.
    pub fn view(&self) -> Arc<ReplicaView> {
        self.view.read().clone()
    }

    /// Replaces the view. Waits for calls running under the old one to finish, so whatever
    /// starts after this returns (a range drop) sees every write the old view accepted.
    pub fn set_view(&self, view: ReplicaView) {
        *self.view.write() = Arc::new(view);
    }

    /// `refusal`, counted in `kv_replica_refusals_total{reason}`.
    fn refuse(&self, reason: &str, refusal: Refusal) -> Refusal {
        self.metrics.refusals.with_label_values(&[reason]).inc();
        refusal
    }

    fn misdirected(&self, what: &str) -> Refusal {
        self.refuse("misdirected", Refusal::NotOwner(format!("{what}: not a replica of this key's range here")))
    }

    /// Moves our counter past any dot of ours that `versions` carry: we created them, so if we
    /// would issue their counter again we forgot (a restored copy). Contexts never move it: a
    /// client could forge one to exhaust our counter.
    fn observe(&self, versions: &[Version]) -> Result<(), kv_storage::Error> {
        let actor = self.actor();
        let seen = versions.iter().filter(|v| *v.dot.node == *actor).map(|v| v.dot.counter).max().unwrap_or(0);
        if seen > 0 && self.engine.observe_counter(seen)? {
            self.metrics.amnesia.inc();
            tracing::warn!(actor = %actor, counter = seen, "a version names a counter of ours we had not issued: this store forgot writes (restored from an old copy?); counting on from there");
        }
        Ok(())
    }

    /// Runs a batch of replica calls at wall-clock time `now_ms` and answers one reply per call,
    /// in order. Reads and purges run one by one; all writes share one durability wait
    /// ([`Engine::update_many`]). The calls of a batch are concurrent requests, so their order
    /// inside it is not an ordering promise: reads run before the batch's writes.
    pub fn execute(&self, calls: Vec<Call>, now_ms: u64) -> Vec<Reply> {
        self.execute_with(calls, now_ms, false)
    }

    /// [`ReplicaCore::execute`] for calls from a front in this replica's own process, whose
    /// answers cannot be lost on the way: a coordinate call also stores the key's new set here,
    /// with the batch's stores and their one durability wait, and says so
    /// ([`CoordinateResponse::stored`]); the front then stores it only on the other replicas.
    /// If this process dies meanwhile, so does the front, and the client learns nothing either
    /// way, as with any write in flight.
    pub fn execute_local(&self, calls: Vec<Call>, now_ms: u64) -> Vec<Reply> {
        self.execute_with(calls, now_ms, true)
    }

    fn execute_with(&self, calls: Vec<Call>, now_ms: u64, local: bool) -> Vec<Reply> {
        let view = self.view.read();
        let mut replies: Vec<Option<Reply>> = Vec::with_capacity(calls.len());
        let mut indexes = Vec::new();
        // The keys the batch stores, with the ring hashes their calls carry.
        let mut keys: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut payloads: Vec<Option<StoreCall>> = Vec::new();
        let mut coordinates: Vec<(usize, CoordinateRequest)> = Vec::new();
        let mut hints: Vec<(usize, HintRequest)> = Vec::new();
        // Reads of a key that an earlier call of this batch writes run after the batch's writes
        // (which are applied together, at the end): a read sent after a store of its key must
        // see it, as it would in separate requests. A client whose write was acknowledged by
        // its coordinator and a fallback, and whose next read shared a batch with this
        // replica's store of it, read the key as it was before (once, with a replica frozen).
        let mut deferred: Vec<(usize, u64, Vec<u8>)> = Vec::new();
        for (i, call) in calls.into_iter().enumerate() {
            // The key is hashed once here, and checked against the hash the front placed it by
            // (a peer that disagrees is refused, never served from another ring position); the
            // ownership check, the storage key, the lock stripe and the Merkle tree share it.
            let hash = kv_ring::hash_key(call.key());
            if call.hash().is_some_and(|carried| carried != hash) {
                replies.push(Some(
                    Refusal::Malformed(format!(
                        "the call's key hash {:016x} is not its key's ({hash:016x}): the sender places keys \
                         differently",
                        call.hash().unwrap_or_default()
                    ))
                    .into(),
                ));
                continue;
            }
            let reply = match call {
                Call::Read(_) | Call::Purge(_) if !view.serves(hash) => {
                    Some(self.misdirected("reading requires a complete copy of the key's range").into())
                }
                Call::Read(c) if keys.iter().any(|(_, key)| *key == c.key) => {
                    deferred.push((i, hash, c.key));
                    None
                }
                Call::Store(_) if !view.accepts(hash) => Some(self.misdirected("key").into()),
                Call::Hint(h) => {
                    hints.push((i, h));
                    None
                }
                Call::Coordinate(_) if !view.may_coordinate(hash) => {
                    Some(self.misdirected("coordinating requires a normal owner of the key").into())
                }
                Call::Read(c) => Some(
                    self.engine
                        .get_at(hash, &c.key)
                        .map_or_else(|e| storage_failed(&e), |r| Reply::Read(r.into_versions())),
                ),
                Call::Purge(c) => Some(
                    self.engine
                        .purge_tombstones(&c.key, &c.tombstones)
                        .map_or_else(|e| storage_failed(&e), |_| Reply::Purged),
                ),
                Call::Coordinate(c) if c.ticket.deadline_ms < now_ms => Some(
                    self.refuse(
                        "too_late",
                        Refusal::TooLate(format!("deadline passed {} ms ago", now_ms - c.ticket.deadline_ms)),
                    )
                    .into(),
                ),
                Call::Coordinate(c) if c.write.context.get(&self.actor()) >= self.engine.counter_ceiling() => Some(
                    self.refuse(
                        "impossible_context",
                        Refusal::ImpossibleContext(format!(
                            "the context names event {} of {}, which never happened",
                            c.write.context.get(&self.actor()),
                            self.actor()
                        )),
                    )
                    .into(),
                ),
                Call::Store(c) if c.deadline_ms != 0 && c.deadline_ms < now_ms => Some(
                    self.refuse(
                        "too_late",
                        Refusal::TooLate(format!("store deadline passed {} ms ago", now_ms - c.deadline_ms)),
                    )
                    .into(),
                ),
                Call::Coordinate(c) => {
                    coordinates.push((i, c));
                    None
                }
                Call::Store(c) => match self.observe(&c.versions) {
                    Err(e) => Some(storage_failed(&e)),
                    Ok(()) => {
                        indexes.push(i);
                        keys.push((hash, c.key));
                        payloads.push(Some((c.versions, c.fresh)));
                        None
                    }
                },
            };
            replies.push(reply);
        }
        if local {
            // Coordinated first, then stored with the batch's stores.
            let mut created = Vec::new();
            for (i, c) in coordinates {
                let (key, reply) = ((c.hash, c.key.clone()), self.coordinate(c, now_ms));
                if let Reply::Coordinated(response) = &reply {
                    indexes.push(i);
                    keys.push(key);
                    payloads.push(Some((response.record.versions().to_vec(), Some(response.created.clone()))));
                    created.push((i, reply));
                } else {
                    replies[i] = Some(reply);
                }
            }
            if !keys.is_empty() {
                self.write(&keys, payloads, &indexes, &mut replies);
            }
            for (i, reply) in created {
                replies[i] = Some(match (replies[i].take(), reply) {
                    (Some(Reply::Stored), Reply::Coordinated(mut response)) => {
                        response.stored = true;
                        Reply::Coordinated(response)
                    }
                    (Some(Reply::Refused(refusal)), _) => Reply::Refused(Refusal::StoreFailed(format!(
                        "the new version was created but storing it here failed: {refusal}"
                    ))),
                    (_, reply) => reply,
                });
            }
        } else {
            if !keys.is_empty() {
                self.write(&keys, payloads, &indexes, &mut replies);
            }
            // After the batch's stores, so that one accounting for a dot issued here is seen.
            for (i, c) in coordinates {
                replies[i] = Some(self.coordinate(c, now_ms));
            }
        }
        for (i, hash, key) in deferred {
            let read = self.engine.get_at(hash, &key);
            replies[i] = Some(read.map_or_else(|e| storage_failed(&e), |r| Reply::Read(r.into_versions())));
        }
        drop(view);
        if !hints.is_empty() {
            self.keep_hints(hints, now_ms, &mut replies);
        }
        replies.into_iter().map(|r| r.unwrap_or_else(|| Refusal::Failed("call was not run".into()).into())).collect()
    }

    /// Moves this run to the next epoch, a new actor, under the lock of the outstanding dots,
    /// which it clears: no dot of the new actor covers any of them (rule 15).
    fn next_epoch(&self, issued: &mut Issued, why: &str) -> Result<Arc<str>, kv_storage::Error> {
        self.engine.begin_run()?;
        let identity = self.engine.identity();
        let next: Arc<str> = Arc::from(actor_name(&self.node_id, identity.incarnation, identity.epoch));
        tracing::warn!(actor = %next, outstanding_keys = issued.keys.len(), "{why}: this node's dots now carry a new actor");
        self.metrics.refusals.with_label_values(&["new_epoch"]).inc();
        issued.keys.clear();
        *self.actor.write() = next.clone();
        Ok(next)
    }

    /// Issues the dot of a client write and answers the key's sibling set with the new version
    /// in it, storing nothing: the front stores that set on every replica at once, this one
    /// included, so a call whose answer is lost leaves no version anywhere and the front may ask
    /// the next replica (rule 15 of docs/consistency.md). No dot is issued for a key while one
    /// issued before is not accounted for by the key's record here: the set we answer must hold
    /// every version of ours that may exist (rule 4). Runs under the lock of the outstanding
    /// dots, so a store that accounts for one is seen by the next coordination of its key.
    fn coordinate(&self, c: CoordinateRequest, now_ms: u64) -> Reply {
        let value_len = c.value_len;
        let mut issued = self.issued.lock();
        if issued.closed {
            return self.misdirected("coordinating: this node is stopping").into();
        }
        let current = match self.engine.get_at(c.hash, &c.key) {
            Ok(record) => record,
            Err(e) => return storage_failed(&e),
        };
        let mut actor = self.actor();
        let waiting = match issued.keys.get_mut(&c.key) {
            Some(dots) => still_outstanding(dots, &current, &actor)
                .then(|| dots.iter().all(|&(_, at)| now_ms.saturating_sub(at) > self.outstanding_for_ms)),
            None => None,
        };
        if waiting.is_none() {
            issued.keys.remove(&c.key);
        }
        let why = match waiting {
            // The key's own store of our last version of it is still on its way: the front
            // asks again shortly, or asks another replica.
            Some(false) => {
                return self
                    .refuse(
                        "outstanding_dot",
                        Refusal::Outstanding(
                            "coordinating: a version of this key created here is on its way to this replica's copy"
                                .into(),
                        ),
                    )
                    .into()
            }
            // It can only come as a hint now, if at all: a new epoch makes every dot of the old
            // one moot (the new actor's counters cover none of them). So does a full map.
            Some(true) => Some("a version created here never reached this replica's copy"),
            None if issued.keys.len() >= MAX_OUTSTANDING_KEYS => Some("too many keys wait for versions created here"),
            None => None,
        };
        if let Some(why) = why {
            match self.next_epoch(&mut issued, why) {
                Ok(next) => actor = next,
                Err(e) => return storage_failed(&e),
            }
        }
        let (version, issued_now) = match reusable(&current, c.ticket.write_id) {
            Some(same) => (same, false),
            None => match self.engine.issue_counter(counter_floor(&actor, &current)) {
                Ok(counter) => (new_version(&actor, counter, c.write, c.ticket.write_id, now_ms), true),
                Err(e) => return storage_failed(&e),
            },
        };
        let value_bytes = |s: &Record| s.versions().iter().map(|v| v.value.len()).sum::<usize>();
        let (held, holds) = (value_bytes(&current), current.len());
        // A call over the wire carries the value's length, not the value (the front keeps it).
        let left_at_front = usize::try_from(value_len).unwrap_or(usize::MAX).saturating_sub(version.value.len());
        let mut next = current;
        let created = version.dot.clone();
        next.insert(version);
        let bytes = value_bytes(&next).saturating_add(left_at_front);
        let refusal = if next.len() > self.siblings.max && next.len() > holds {
            Some(format!("the key holds {holds} siblings, the most allowed (--max-siblings {})", self.siblings.max))
        } else if bytes > self.siblings.max_bytes && bytes > held {
            Some(format!(
                "the key's siblings would hold {bytes} bytes of values, more than the {} allowed \
                 (8 x --max-value-bytes)",
                self.siblings.max_bytes
            ))
        } else {
            None
        };
        if let Some(why) = refusal {
            let message = format!("{why}; read it and write back with its X-Context to resolve them");
            return self.refuse("too_many_siblings", Refusal::TooManySiblings(message)).into();
        }
        if next.len() > self.siblings.warn {
            self.sibling_warning(&c.key, next.len(), now_ms);
        }
        if issued_now {
            issued.keys.entry(c.key).or_default().push((created.counter, now_ms));
        }
        Reply::Coordinated(CoordinateResponse { record: next, created, stored: false })
    }

    /// Applies a batch's stores with one durability wait, and answers each.
    fn write(
        &self,
        keys: &[(u64, Vec<u8>)],
        mut payloads: Vec<Option<StoreCall>>,
        indexes: &[usize],
        replies: &mut [Option<Reply>],
    ) {
        let hashed: Vec<(u64, &[u8])> = keys.iter().map(|(hash, key)| (*hash, key.as_slice())).collect();
        let keys: Vec<&[u8]> = hashed.iter().map(|(_, key)| *key).collect();
        // Per store: the version it vouches for.
        let mut vouched: Vec<Option<Version>> = vec![None; keys.len()];
        let results = self.engine.update_many_at(&hashed, &mut |j, current| {
            let mut next = current.clone();
            if let Some((versions, fresh)) = payloads[j].take() {
                vouched[j] = fresh.and_then(|dot| versions.iter().find(|v| v.dot == dot).cloned());
                next.merge(versions);
            }
            next
        });
        self.account(&keys, &results);
        for (j, (result, i)) in results.into_iter().zip(indexes).enumerate() {
            replies[*i] = Some(match result {
                Err(e) => storage_failed(&e),
                Ok(record) => match vouched[j].take() {
                    Some(version) if repeated_dot(&record, &version) => self.not_kept(keys[j], &version.dot, &record),
                    _ => Reply::Stored,
                },
            });
        }
    }

    /// Forgets the outstanding dots that stored records now account for.
    fn account(&self, keys: &[&[u8]], results: &[Result<Record, kv_storage::Error>]) {
        let mut issued = self.issued.lock();
        if issued.keys.is_empty() {
            return;
        }
        let actor = self.actor();
        for (key, result) in keys.iter().zip(results) {
            let (Some(dots), Ok(record)) = (issued.keys.get_mut(*key), result) else { continue };
            if !still_outstanding(dots, record, &actor) {
                issued.keys.remove(*key);
            }
        }
    }

    /// Keeps hints durably, one sync per target: each is acknowledged (`Stored`) only once it
    /// is durable, and refused when the target's bound is reached or the target is this node.
    fn keep_hints(&self, hints: Vec<(usize, HintRequest)>, now_ms: u64, replies: &mut [Option<Reply>]) {
        let Some((store, max_age)) = &self.hints else {
            for (i, _) in hints {
                replies[i] = Some(Refusal::Failed("this replica keeps no hints".into()).into());
            }
            return;
        };
        let mut by_target: std::collections::BTreeMap<String, Vec<(usize, Hint)>> = Default::default();
        for (i, h) in hints {
            if h.target == self.node_id {
                replies[i] = Some(Refusal::Malformed("a hint for the node that would keep it".into()).into());
                continue;
            }
            let oldest = h.versions.iter().map(|v| v.written_at).min().unwrap_or(now_ms);
            if now_ms.saturating_sub(oldest) > *max_age {
                replies[i] = Some(
                    self.refuse(
                        "hint_too_old",
                        Refusal::HintsFull(
                            "the key holds a version too old to hand off before the hint would expire".into(),
                        ),
                    )
                    .into(),
                );
                continue;
            }
            by_target
                .entry(h.target)
                .or_default()
                .push((i, Hint { key: h.key, versions: h.versions, created_ms: now_ms }));
        }
        for (target, hints) in by_target {
            let (indexes, hints): (Vec<usize>, Vec<Hint>) = hints.into_iter().unzip();
            match store.add(&target, &hints) {
                Ok(added) => {
                    for (i, added) in indexes.into_iter().zip(added) {
                        replies[i] = Some(match added {
                            Added::Stored(_) => Reply::Stored,
                            Added::Full => self
                                .refuse("hints_full", Refusal::HintsFull(format!("hints for {target} are full")))
                                .into(),
                        });
                    }
                }
                Err(e) => {
                    for i in indexes {
                        replies[i] = Some(storage_failed(&e));
                    }
                }
            }
        }
    }

    fn sibling_warning(&self, key: &[u8], count: usize, now_ms: u64) {
        self.metrics.siblings_over_warning.inc();
        let last = self.warned_at.load(std::sync::atomic::Ordering::Relaxed);
        if now_ms.saturating_sub(last) >= SIBLING_WARNING_EVERY_MS
            && self
                .warned_at
                .compare_exchange(
                    last,
                    now_ms,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_ok()
        {
            tracing::warn!(
                key = %String::from_utf8_lossy(key), count, warn = self.siblings.warn, max = self.siblings.max,
                "a key has many siblings: its clients write without resolving them (read, then write with the context)"
            );
        }
    }

    fn not_kept(&self, key: &[u8], dot: &Dot, record: &Record) -> Reply {
        let by: Vec<String> = record
            .versions()
            .iter()
            .filter(|v| v.context.get(&dot.node) >= dot.counter)
            .map(|v| format!("{:?}", v.dot))
            .collect();
        tracing::error!(
            key = %String::from_utf8_lossy(key), dot = ?dot, covered_by = ?by,
            "refusing to acknowledge a version this replica would not keep: what it holds claims to have seen that dot"
        );
        self.refuse(
            "not_kept",
            Refusal::NotKept(format!("version {}:{} is covered by versions that never saw it", dot.node, dot.counter)),
        )
        .into()
    }

    /// Merges many keys' versions (a range streamed in), refusing the whole batch if any key is
    /// not this replica's.
    pub fn store_stream(&self, entries: Vec<Entry>) -> Result<(), Refusal> {
        self.store_stream_until(entries, 0, 0)
    }

    /// [`ReplicaCore::store_stream`], refused whole if the wall clock (`now_ms`, read just
    /// before) is past `deadline_ms` (0: no deadline) when the batch is about to be applied.
    pub fn store_stream_until(&self, entries: Vec<Entry>, deadline_ms: u64, now_ms: u64) -> Result<(), Refusal> {
        let view = self.view.read();
        if entries.iter().any(|(key, _)| !view.accepts(kv_ring::hash_key(key))) {
            return Err(self.misdirected("streamed keys"));
        }
        if deadline_ms != 0 && deadline_ms < now_ms {
            return Err(self.refuse(
                "too_late",
                Refusal::TooLate(format!("store-batch deadline passed {} ms ago", now_ms - deadline_ms)),
            ));
        }
        for (_, versions) in &entries {
            self.observe(versions).map_err(|e| storage_refusal(&e))?;
        }
        let result = self.engine.put_batch(entries);
        drop(view);
        result.map_err(|e| storage_refusal(&e))
    }

    /// Up to `limit` records with key hashes in `lo..=hi` after key `after`, refused unless this
    /// replica serves the whole interval.
    pub fn scan(&self, lo: u64, hi: u64, after: Option<&[u8]>, limit: usize) -> Result<Vec<Entry>, Refusal> {
        let view = self.view.read();
        if !view.serves_range(lo, hi) {
            if view.filling_range(lo, hi) {
                return Err(self.refuse("misdirected", Refusal::NotOwner(format!("range: {GAINING_TOO}"))));
            }
            return Err(self.misdirected("range"));
        }
        let page = self.engine.scan(lo, hi, after, limit).map_err(|e| storage_refusal(&e))?;
        drop(view);
        Ok(page.into_iter().map(|(k, record)| (k, record.into_versions())).collect())
    }
}

/// Whether `version` is missing from `record` because versions created before it cover its
/// dot: they cannot have seen it, so its dot was issued before, for another version.
fn repeated_dot(record: &Record, version: &Version) -> bool {
    let dot = version.dot();
    if record.versions().iter().any(|v| v.dot() == dot) {
        return false;
    }
    let covering: Vec<&Version> =
        record.versions().iter().filter(|v| v.context.get(&dot.node) >= dot.counter).collect();
    !covering.is_empty() && covering.iter().all(|v| v.written_at < version.written_at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_proto::{PurgeRequest, ReadRequest, StoreRequest, Ticket, Write};
    use kv_ring::Node;
    use kv_storage::{StorageMetrics, SyncMode};
    use kv_vclock::VClock;

    fn core(owned: bool, filling: bool) -> ReplicaCore {
        let engine = kv_storage::open_memory(7, SyncMode::None, StorageMetrics::unregistered()).unwrap();
        let core = ReplicaCore::new("n1", engine, ReplicaMetrics::unregistered());
        let ring = Ring::with_vnodes([Node::new("n1", "z")], 4).unwrap();
        let (none, all) = (Intervals::new(), Intervals::full());
        let now = if owned { all.clone() } else { none.clone() };
        core.set_view(ReplicaView::from_sets(&now, &none, true, &none, if filling { &all } else { &none }));
        let _ = ring;
        core
    }

    fn version(actor: &str, counter: u64, context: &[(&str, u64)], written_at: u64, tombstone: bool) -> Version {
        let mut clock = VClock::new();
        for (node, c) in context {
            clock.set(node, *c, 1);
        }
        Version {
            dot: Dot { node: actor.into(), counter, timestamp: written_at },
            context: clock,
            value: if tombstone { Vec::new() } else { b"v".to_vec() }.into(),
            content_type: "t".into(),
            tombstone,
            written_at,
            write_id: 0,
        }
    }

    fn store(key: &[u8], versions: Vec<Version>, fresh: Option<Dot>) -> Call {
        Call::Store(StoreRequest::new(key.to_vec(), versions, fresh, 0))
    }

    #[test]
    fn a_version_covered_by_an_older_one_is_refused_not_acknowledged() {
        let core = core(true, false);
        // A tombstone created at t=5 whose context covers a:1.
        let tombstone = version("b", 3, &[("a", 1)], 5, true);
        assert!(matches!(core.execute(vec![store(b"k", vec![tombstone], None)], 100)[0], Reply::Stored));
        // A new version reusing the dot a:1, created at t=10: the tombstone cannot have seen it.
        let repeated = version("a", 1, &[], 10, false);
        let dot = repeated.dot.clone();
        let replies = core.execute(vec![store(b"k", vec![repeated], Some(dot))], 100);
        assert!(matches!(&replies[0], Reply::Refused(Refusal::NotKept(_))), "{replies:?}");
        // A version a client read and overwrote before this replica got it (the overwrite is
        // younger than it): a supersession, acknowledged.
        let fresh = version("a", 2, &[], 20, false);
        let overwrite = version("c", 1, &[("a", 2)], 25, false);
        assert!(matches!(core.execute(vec![store(b"j", vec![overwrite], None)], 100)[0], Reply::Stored));
        let dot = fresh.dot.clone();
        let replies = core.execute(vec![store(b"j", vec![fresh], Some(dot))], 100);
        assert!(matches!(&replies[0], Reply::Stored), "{replies:?}");
    }

    #[test]
    fn a_call_placed_by_another_hash_than_its_keys_is_refused_and_stores_nothing() {
        let core = core(true, false);
        let v = version("a", 1, &[], 10, false);
        let Call::Store(mut misplaced) = store(b"k", vec![v.clone()], Some(v.dot.clone())) else { unreachable!() };
        misplaced.hash ^= 1;
        let mut read = ReadRequest::new(b"k".to_vec());
        read.hash = misplaced.hash;
        let replies = core.execute(vec![Call::Store(misplaced), Call::Read(read)], 100);
        assert!(replies.iter().all(|r| matches!(r, Reply::Refused(Refusal::Malformed(_)))), "{replies:?}");
        assert!(core.engine.get(b"k").unwrap().is_empty());
        // The same store with its key's own hash is taken.
        assert!(matches!(core.execute(vec![store(b"k", vec![v], None)], 100)[0], Reply::Stored));
    }

    #[test]
    fn a_read_after_a_store_of_its_key_in_one_batch_sees_the_store() {
        let core = core(true, false);
        let read = |key: &[u8]| Call::Read(ReadRequest::new(key.to_vec()));
        let value = version("a", 1, &[], 5, false);
        // A read of another key before the store, the store, a read of its key after it.
        let replies = core.execute(vec![read(b"other"), store(b"k", vec![value], None), read(b"k")], 100);
        assert!(matches!(&replies[0], Reply::Read(v) if v.is_empty()), "{replies:?}");
        assert!(matches!(&replies[1], Reply::Stored), "{replies:?}");
        assert!(
            matches!(&replies[2], Reply::Read(v) if v.len() == 1),
            "the read missed the store before it: {replies:?}"
        );
    }

    #[test]
    fn calls_outside_the_view_are_misdirected_and_filling_ranges_serve_no_read() {
        let outside = core(false, false);
        let read = Call::Read(ReadRequest::new(b"k".to_vec()));
        let purge = Call::Purge(PurgeRequest::new(b"k".to_vec(), Vec::new()));
        for reply in outside.execute(vec![read.clone(), store(b"k", Vec::new(), None), purge.clone()], 1) {
            assert!(matches!(reply, Reply::Refused(Refusal::NotOwner(_))), "{reply:?}");
        }
        assert!(outside.scan(0, u64::MAX, None, 10).is_err());
        assert!(outside.store_stream(vec![(b"k".to_vec(), Vec::new())]).is_err());
        // Filling: writes and streams are accepted, reads, scans, purges and coordination are not.
        let filling = core(true, true);
        let write =
            Write { value: b"v".to_vec().into(), content_type: "t".into(), context: VClock::new(), tombstone: false };
        let coordinate = Call::Coordinate(CoordinateRequest::new(
            b"k".to_vec(),
            write,
            Ticket { write_id: 1, deadline_ms: u64::MAX },
        ));
        let replies = filling.execute(vec![read, purge, coordinate, store(b"k", Vec::new(), None)], 1);
        assert!(replies[..3].iter().all(|r| matches!(r, Reply::Refused(Refusal::NotOwner(_)))), "{replies:?}");
        assert!(matches!(replies[3], Reply::Stored));
        assert!(filling.scan(0, u64::MAX, None, 10).is_err());
        assert!(filling.store_stream(vec![(b"k".to_vec(), Vec::new())]).is_ok());
    }

    /// What the front does with a coordinate call: the call, then a store of the set it
    /// answered on this replica (rule 15). Returns the coordinate call's reply.
    fn coordinate_and_store(core: &ReplicaCore, call: Call) -> Reply {
        let key = call.key().to_vec();
        let reply = core.execute(vec![call], 1).remove(0);
        if let Reply::Coordinated(c) = &reply {
            let stored = core.execute(vec![store(&key, c.record.versions().to_vec(), Some(c.created.clone()))], 1);
            assert!(matches!(stored[0], Reply::Stored), "{stored:?}");
        }
        reply
    }

    /// A client's blind write of `key` with write id `id` and no deadline, as a coordinate call.
    fn blind(key: &[u8], id: u128) -> Call {
        Call::Coordinate(CoordinateRequest::new(
            key.to_vec(),
            Write { value: b"v".to_vec().into(), content_type: "t".into(), context: VClock::new(), tombstone: false },
            Ticket { write_id: id, deadline_ms: u64::MAX },
        ))
    }

    #[test]
    fn no_dot_is_issued_for_a_key_while_one_issued_before_is_not_stored_here() {
        let core = core(true, false);
        let call = |id: u128| blind(b"k", id);
        let first = match core.execute(vec![call(1)], 1).remove(0) {
            Reply::Coordinated(c) => c,
            other => panic!("{other:?}"),
        };
        assert!(core.engine().get(b"k").unwrap().is_empty(), "a coordinate call stores nothing");
        assert_eq!(core.outstanding_keys(), 1);
        // Its set would lack the first version, whose dot the new one's counter covers.
        let refused = core.execute(vec![call(2)], 1);
        assert!(matches!(&refused[0], Reply::Refused(Refusal::Outstanding(_))), "{refused:?}");
        // Another key is not held up.
        assert!(matches!(coordinate_and_store(&core, blind(b"other", 3)), Reply::Coordinated(_)));
        // Once the first version is stored here (in the same batch, before the call), the key
        // coordinates again, and its set holds the first version.
        let batch = vec![store(b"k", first.record.versions().to_vec(), Some(first.created.clone())), call(4)];
        let replies = core.execute(batch, 1);
        assert!(matches!(&replies[1], Reply::Coordinated(c) if c.record.len() == 2), "{replies:?}");
        assert_eq!(core.outstanding_keys(), 1, "the second write's dot is outstanding now");
    }

    #[test]
    fn a_dot_whose_store_never_came_moves_the_run_to_a_new_epoch() {
        let core = core(true, false).with_outstanding_for(1_000);
        let call = |id: u128| blind(b"k", id);
        let before = core.actor();
        assert!(matches!(core.execute(vec![call(1)], 1)[0], Reply::Coordinated(_)));
        let refused = core.execute(vec![call(2)], 1_000);
        assert!(matches!(&refused[0], Reply::Refused(Refusal::Outstanding(_))), "{refused:?}");
        // Past the bound only a hint could bring it: the next dot is a new actor's, which
        // covers none of the old one's.
        let replies = core.execute(vec![call(3)], 1_002);
        assert!(
            matches!(&replies[0], Reply::Coordinated(c) if *c.created.node == *format!("{before}.1")),
            "{replies:?}"
        );
        assert_eq!(core.engine().identity().epoch, 1);
        assert_eq!(core.outstanding_keys(), 1, "only the new actor's dot is outstanding");
        // After close, nothing is coordinated: the count it gave stays true.
        assert_eq!(core.close(), 1);
        let closed = core.execute(vec![call(4)], 1_003);
        assert!(matches!(&closed[0], Reply::Refused(Refusal::NotOwner(_))), "{closed:?}");
    }

    fn core_with(limits: SiblingLimits) -> ReplicaCore {
        core(true, false).with_sibling_limits(limits)
    }

    #[test]
    fn a_client_write_past_the_sibling_cap_is_refused_and_stores_never_are() {
        let core = core(true, false).with_sibling_limits(SiblingLimits { max: 3, warn: 2, max_bytes: 1 << 20 });
        let blind = |value: &str, id: u128, context: VClock| {
            Call::Coordinate(CoordinateRequest::new(
                b"k".to_vec(),
                Write { value: value.as_bytes().to_vec().into(), content_type: "t".into(), context, tombstone: false },
                Ticket { write_id: id, deadline_ms: u64::MAX },
            ))
        };
        for id in 1..=3 {
            assert!(matches!(coordinate_and_store(&core, blind("v", id, VClock::new())), Reply::Coordinated(_)));
        }
        let refused = core.execute(vec![blind("fourth", 4, VClock::new())], 1);
        assert!(matches!(&refused[0], Reply::Refused(Refusal::TooManySiblings(_))), "{refused:?}");
        assert_eq!(core.engine().get(b"k").unwrap().len(), 3, "the refused write left nothing");
        assert_eq!(core.metrics.siblings_over_warning.get(), 1, "the third sibling passed the warning level");
        // Replication and repair merge whatever they carry.
        let others: Vec<Version> = (1..=3).map(|c| version("elsewhere", c, &[], 5, false)).collect();
        assert!(matches!(core.execute(vec![store(b"k", others, None)], 1)[0], Reply::Stored));
        assert_eq!(core.engine().get(b"k").unwrap().len(), 6);
        // A write with the read's context resolves them all.
        let context = core.engine().get(b"k").unwrap().context();
        let resolved = core.execute(vec![blind("merged", 5, context)], 1);
        assert!(matches!(&resolved[0], Reply::Coordinated(c) if c.record.len() == 1), "{resolved:?}");
        // The bytes of all siblings are capped too: 6 + 6 bytes fit in 12, a third does not.
        let core = core_with(SiblingLimits { max: 100, warn: 100, max_bytes: 12 });
        for id in 1..=2 {
            assert!(matches!(coordinate_and_store(&core, blind("123456", id, VClock::new())), Reply::Coordinated(_)));
        }
        let refused = core.execute(vec![blind("123456", 3, VClock::new())], 1);
        assert!(matches!(&refused[0], Reply::Refused(Refusal::TooManySiblings(message)) if message.contains("bytes")));
    }

    #[test]
    fn a_store_batch_past_its_deadline_is_refused_whole() {
        let core = core(true, false);
        let entries = vec![(b"k".to_vec(), vec![version("a", 1, &[], 5, false)])];
        let late = core.store_stream_until(entries.clone(), 100, 101);
        assert!(late.is_err_and(|r| matches!(r, Refusal::TooLate(_))));
        assert!(core.engine().get(b"k").unwrap().is_empty(), "nothing of a late batch is applied");
        assert!(core.store_stream_until(entries, 100, 100).is_ok());
        assert_eq!(core.engine().get(b"k").unwrap().len(), 1);
    }

    #[test]
    fn a_context_naming_an_event_that_never_happened_is_refused() {
        let core = core(true, false);
        let mut context = VClock::new();
        context.set(&core.actor(), 1_000_000, 1);
        let write = Write { value: b"v".to_vec().into(), content_type: "t".into(), context, tombstone: false };
        let call = Call::Coordinate(CoordinateRequest::new(
            b"k".to_vec(),
            write,
            Ticket { write_id: 1, deadline_ms: u64::MAX },
        ));
        let replies = core.execute(vec![call], 1);
        assert!(matches!(&replies[0], Reply::Refused(Refusal::ImpossibleContext(_))), "{replies:?}");
    }

    #[test]
    fn dots_come_from_the_store_counter_not_from_the_key() {
        let core = core(true, false);
        let write = |value: &str| Write {
            value: value.as_bytes().to_vec().into(),
            content_type: "t".into(),
            context: VClock::new(),
            tombstone: false,
        };
        let coordinate = |key: &[u8], value: &str, id: u128| {
            Call::Coordinate(CoordinateRequest::new(
                key.to_vec(),
                write(value),
                Ticket { write_id: id, deadline_ms: u64::MAX },
            ))
        };
        let first = match coordinate_and_store(&core, coordinate(b"a", "x", 1)) {
            Reply::Coordinated(c) => c.created.counter,
            other => panic!("{other:?}"),
        };
        // Another key, and the same key after its record is gone: counters keep rising.
        let second = match coordinate_and_store(&core, coordinate(b"b", "y", 2)) {
            Reply::Coordinated(c) => c.created.counter,
            other => panic!("{other:?}"),
        };
        core.engine().remove(&[b"a".to_vec()]).unwrap();
        let third = match coordinate_and_store(&core, coordinate(b"a", "z", 3)) {
            Reply::Coordinated(c) => c.created.counter,
            other => panic!("{other:?}"),
        };
        assert!(first < second && second < third, "{first} {second} {third}");
    }
}
