//! The simulated cluster: nodes (real replica logic on real memory stores), the network between
//! them and the fronts, faults, and membership changes planned by [`kv_coordinator::plan`].
//!
//! Everything runs on one thread with tokio's clock paused, so a history is a function of its
//! seed. State lives behind one lock that is never held across an `.await`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kv_coordinator::plan::{self, Move};
use kv_coordinator::{BoxFuture, CallPeer, Peer, ReplicaError, Topology};
use kv_proto::{Call, Entry, Refusal, Reply, StoreRequest};
use kv_replica::ownership::Ownership;
use kv_replica::replica::{ReplicaCore, ReplicaMetrics};
use kv_replica::trees::segments;
use kv_replica::RangeTrees;
use kv_ring::{Node as RingNode, Ring};
use kv_storage::{Engine, EngineKind, Identity, Record, StorageMetrics, SyncMode, Version};
use kv_vclock::Dot;
use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};

use crate::history::{History, Seen};
use crate::rng::Rng;
use crate::run::Mutation;

/// Vnodes per node: few, so that ranges are coarse and moves are quick to simulate, yet every
/// node owns several separate arcs.
pub const VNODES: u32 = 8;

/// Keys per scan page: small, so moves interleave with client traffic.
const PAGE: usize = 8;

/// Time a joining or leaving node waits after announcing itself (longer than any view lag).
pub const ANNOUNCE_MS: u64 = 120;

/// Longest delay before a front or a node adopts a new topology.
pub const VIEW_LAG_MS: u64 = 60;

/// A member's life-cycle status (as gossip would spread it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Streaming its ranges in.
    Joining,
    /// Owns its ranges.
    Normal,
    /// Handing its ranges off.
    Leaving,
    /// Gone after a leave.
    Left,
    /// Removed by an operator; its data is lost.
    Removed,
}

/// One storage node.
struct Node {
    core: Arc<ReplicaCore>,
    ownership: Arc<Ownership>,
    engine: Arc<dyn Engine>,
    /// Hints it keeps for others (opened once per store, kept across restarts).
    hints: Arc<kv_storage::HintStore>,
    /// Merkle trees of its segments, observing its store (kept across restarts, as the store).
    trees: Arc<RangeTrees>,
    up: bool,
}

/// A front's topology channel and the sequence number of the topology it holds.
type FrontView = (watch::Sender<Arc<Topology>>, Arc<Mutex<u64>>);

struct State {
    rng: Rng,
    nodes: BTreeMap<String, Node>,
    members: BTreeMap<String, (Status, String)>,
    partitions: BTreeSet<(String, String)>,
    /// Each front's topology channel and the sequence number of what it holds.
    fronts: Vec<FrontView>,
    /// Topologies published so far: a view only moves forward, as gossip versions do.
    published: u64,
    /// Per node: the sequence number of the topology its view was built from.
    adopted: BTreeMap<String, u64>,
    /// Each endpoint's clock offset from the reference clock, ms (nodes and fronts; 0 if
    /// absent).
    offsets: BTreeMap<String, i64>,
    history: History,
}

/// Settings of a world.
#[derive(Debug, Clone, Copy)]
pub struct WorldConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Replicas per key.
    pub n: usize,
    /// Read quorum (copies a gained range is merged from).
    pub r: usize,
    /// Replica call timeout of the fronts, ms.
    pub timeout_ms: u64,
    /// Tombstone grace, ms.
    pub grace_ms: u64,
    /// Network faults (slow, late and lost messages).
    pub faults: bool,
    /// A node whose clock is further than this from the reference fences itself: it answers
    /// no call and does no background work (kvnode's clock fence, `--max-clock-offset`).
    pub clock_bound_ms: u64,
    /// A rule broken on purpose.
    pub mutation: Mutation,
}

/// The simulated cluster.
pub struct World {
    /// Settings.
    pub config: WorldConfig,
    state: Mutex<State>,
    epoch: tokio::time::Instant,
    /// Print every event (`KV_SIM_TRACE=1`), to debug one seed.
    trace: bool,
    /// Set once the history quiesces: no more slow or lost messages.
    calm: std::sync::atomic::AtomicBool,
    /// The fronts, whose tombstone collectors a pause-across-removal runs while the node is
    /// paused (as the nodes' collectors run every `--gc-interval`).
    collectors: Mutex<Vec<Arc<kv_coordinator::Coordinator>>>,
}

/// What happened to a message at its destination.
enum Delivery {
    Reply(Reply),
    Refused,
    Partitioned,
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

impl World {
    /// An empty world; the caller adds nodes and fronts.
    pub fn new(config: WorldConfig) -> Arc<World> {
        let state = State {
            rng: Rng::new(config.seed),
            nodes: BTreeMap::new(),
            members: BTreeMap::new(),
            partitions: BTreeSet::new(),
            fronts: Vec::new(),
            published: 0,
            adopted: BTreeMap::new(),
            offsets: BTreeMap::new(),
            history: History::default(),
        };
        let trace = std::env::var("KV_SIM_TRACE").is_ok_and(|v| v == "1");
        Arc::new(World {
            config,
            state: Mutex::new(state),
            epoch: tokio::time::Instant::now(),
            trace,
            calm: std::sync::atomic::AtomicBool::new(false),
            collectors: Mutex::new(Vec::new()),
        })
    }

    /// The fronts whose collectors run while a removed node is paused.
    pub fn set_collectors(&self, fronts: Vec<Arc<kv_coordinator::Coordinator>>) {
        *self.collectors.lock() = fronts;
    }

    /// Prints an event with the virtual time, in trace mode.
    pub fn trace(&self, event: impl FnOnce() -> String) {
        if self.trace {
            println!("{:>7} ms  {}", self.epoch.elapsed().as_millis(), event());
        }
    }

    /// Virtual wall-clock ms of the reference clock.
    pub fn now_ms(&self) -> u64 {
        1_000_000 + self.epoch.elapsed().as_millis() as u64
    }

    /// Endpoint `id`'s wall clock: the reference plus its offset.
    pub fn clock_ms(&self, id: &str) -> u64 {
        let offset = self.state.lock().offsets.get(id).copied().unwrap_or(0);
        self.now_ms().saturating_add_signed(offset)
    }

    /// Sets endpoint `id`'s clock offset from the reference, ms.
    pub fn set_offset(&self, id: &str, offset_ms: i64) {
        self.trace(|| format!("clock of {id} set {offset_ms:+} ms off"));
        self.state.lock().offsets.insert(id.to_owned(), offset_ms);
    }

    /// Every clock back on the reference.
    pub fn reset_clocks(&self) {
        self.state.lock().offsets.clear();
    }

    /// Whether node `id` has fenced itself for its clock (docs/consistency.md, "Clocks"): it is
    /// further than the bound from the reference, which most members agree with. A fenced node
    /// answers no call and does no background work, as if down.
    pub fn fenced(&self, id: &str) -> bool {
        if self.config.mutation == Mutation::NoClockFence {
            return false;
        }
        let offset = self.state.lock().offsets.get(id).copied().unwrap_or(0);
        offset.unsigned_abs() > self.config.clock_bound_ms
    }

    /// Whether a call from `from` is refused as coming from a member that left or was removed
    /// (rule 12: peers refuse it, which makes it stop).
    fn not_a_member(&self, from: &str) -> bool {
        self.config.mutation != Mutation::AcceptRemovedSenders
            && matches!(self.status(from), Some(Status::Removed | Status::Left))
    }

    /// Runs `f` on the random generator.
    pub fn rng<T>(&self, f: impl FnOnce(&mut Rng) -> T) -> T {
        f(&mut self.state.lock().rng)
    }

    /// Runs `f` on the history.
    pub fn history<T>(&self, f: impl FnOnce(&mut History) -> T) -> T {
        f(&mut self.state.lock().history)
    }

    /// Registers a front's topology channel and returns its receiver.
    pub fn add_front(&self) -> watch::Receiver<Arc<Topology>> {
        let (tx, rx) = watch::channel(Arc::new(self.topology()));
        self.state.lock().fronts.push((tx, Arc::new(Mutex::new(0))));
        rx
    }

    fn new_engine(&self) -> Arc<dyn Engine> {
        let incarnation = self.rng(|r| r.next_u64());
        let engine = kv_storage::open_memory(incarnation, SyncMode::None, StorageMetrics::unregistered())
            .expect("invariant: a memory store opens");
        match self.config.mutation {
            Mutation::PerKeyCounters => Arc::new(PerKeyCounters(engine)),
            _ => engine,
        }
    }

    /// Hint bounds: kept an eighth of the grace, so that with clocks as far apart as two
    /// members may be (a quarter of the grace) a fallback still takes hints of fresh versions,
    /// as kvnode's configuration requires (`--hint-max-age` plus twice `--max-clock-offset`
    /// below half the grace).
    fn hint_limits(&self) -> kv_storage::HintLimits {
        kv_storage::HintLimits { max_bytes_per_target: 1 << 20, max_age_ms: self.config.grace_ms / 8 }
    }

    /// What a store carries with it across restarts: its hints and its observing trees.
    fn open_extras(&self, engine: &Arc<dyn Engine>) -> (Arc<kv_storage::HintStore>, Arc<RangeTrees>) {
        let hints = Arc::new(engine.open_hints(self.hint_limits()).expect("invariant: a memory store opens its hints"));
        let trees = RangeTrees::new();
        trees.attach(&**engine);
        (hints, trees)
    }

    fn start_node(
        &self,
        id: &str,
        engine: Arc<dyn Engine>,
        (hints, trees): (Arc<kv_storage::HintStore>, Arc<RangeTrees>),
    ) -> Node {
        let max_version_age = (self.config.grace_ms / 2).saturating_sub(self.hint_limits().max_age_ms);
        let core = Arc::new(
            ReplicaCore::new(id, engine.clone(), ReplicaMetrics::unregistered())
                .with_hints(hints.clone(), max_version_age),
        );
        let gauge = prometheus::IntGauge::new("kv_sim_dropping", "dropping spans").expect("invariant: valid metric");
        let ownership = Arc::new(
            Ownership::open(id, self.config.n, core.clone(), gauge).expect("invariant: a memory store has metadata"),
        );
        // A restarted node starts from what it recorded of membership: the current state.
        let _ = ownership.update(&self.topology());
        let mut state = self.state.lock();
        let seq = state.published;
        state.adopted.insert(id.to_owned(), seq);
        drop(state);
        Node { core, ownership, engine, hints, trees, up: true }
    }

    /// Adds a member with `status` on a new, empty store.
    pub fn add_node(&self, id: &str, zone: &str, status: Status) {
        let engine = self.new_engine();
        self.state.lock().members.insert(id.to_owned(), (status, zone.to_owned()));
        let extras = self.open_extras(&engine);
        let node = self.start_node(id, engine, extras);
        self.state.lock().nodes.insert(id.to_owned(), node);
    }

    /// Member ids with one of `statuses`, sorted.
    pub fn members(&self, statuses: &[Status]) -> Vec<String> {
        self.state.lock().members.iter().filter(|(_, (s, _))| statuses.contains(s)).map(|(id, _)| id.clone()).collect()
    }

    /// The status of `id`.
    pub fn status(&self, id: &str) -> Option<Status> {
        self.state.lock().members.get(id).map(|(s, _)| *s)
    }

    fn set_status(&self, id: &str, status: Status) {
        if let Some(member) = self.state.lock().members.get_mut(id) {
            member.0 = status;
        }
    }

    /// Whether node `id` runs.
    pub fn is_up(&self, id: &str) -> bool {
        self.state.lock().nodes.get(id).is_some_and(|n| n.up)
    }

    fn ring_of(&self, include: impl Fn(&str, Status) -> bool) -> Ring {
        let state = self.state.lock();
        let nodes = state
            .members
            .iter()
            .filter(|(id, (status, _))| include(id, *status))
            .map(|(id, (_, zone))| RingNode::new(id.clone(), zone.clone()));
        Ring::with_vnodes(nodes, VNODES).expect("invariant: distinct ids")
    }

    /// The ring of members that own ranges now (normal and leaving).
    pub fn ring(&self) -> Ring {
        self.ring_of(|_, s| matches!(s, Status::Normal | Status::Leaving))
    }

    /// The topology as gossip would converge to it now.
    pub fn topology(&self) -> Topology {
        let ring = self.ring();
        let later = self.ring_of(|_, s| matches!(s, Status::Normal | Status::Joining));
        let ids = |r: &Ring| r.nodes().iter().map(|n| n.id.clone()).collect::<Vec<_>>();
        let pending = (ids(&ring) != ids(&later)).then_some(later);
        let state = self.state.lock();
        let addresses = state.members.keys().map(|id| (id.clone(), id.clone())).collect();
        let down = state.nodes.iter().filter(|(_, n)| !n.up).map(|(id, _)| id.clone()).collect();
        let leaving =
            state.members.iter().filter(|(_, (s, _))| *s == Status::Leaving).map(|(id, _)| id.clone()).collect();
        Topology { ring, pending, addresses, down, leaving }
    }

    /// Spreads the current topology: every front and every running node adopts it after a
    /// random lag (or at once with `now`), in the order they learn of it.
    pub fn publish(self: &Arc<Self>, now: bool) {
        let topology = Arc::new(self.topology());
        let (fronts, nodes, seq) = {
            let mut state = self.state.lock();
            state.published += 1;
            (state.fronts.clone(), state.nodes.keys().cloned().collect::<Vec<_>>(), state.published)
        };
        for (front, held) in fronts {
            let lag = if now { 0 } else { self.rng(|r| r.below(VIEW_LAG_MS)) };
            let topology = topology.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(lag)).await;
                let mut held = held.lock();
                if *held < seq {
                    *held = seq;
                    front.send_replace(topology);
                }
            });
        }
        for id in nodes {
            let lag = if now { 0 } else { self.rng(|r| r.below(VIEW_LAG_MS)) };
            let (world, topology) = (self.clone(), topology.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(lag)).await;
                world.adopt(&id, &topology, seq);
            });
        }
    }

    fn adopt(&self, id: &str, topology: &Topology, seq: u64) {
        let ownership = {
            let mut state = self.state.lock();
            let ownership = state.nodes.get(id).filter(|n| n.up).map(|n| n.ownership.clone());
            let adopted = state.adopted.entry(id.to_owned()).or_default();
            if ownership.is_none() || *adopted >= seq {
                return;
            }
            *adopted = seq;
            ownership
        };
        if let Some(ownership) = ownership {
            let _ = ownership.update(topology);
            if self.config.mutation == Mutation::NoFilling {
                let (filling, epoch) = ownership.filling_snapshot();
                let _ = ownership.filled(&filling, epoch, topology);
            }
            self.trace(|| {
                let ring: Vec<String> = topology.ring.nodes().iter().map(|n| n.id.clone()).collect();
                let pending: Option<Vec<String>> =
                    topology.pending.as_ref().map(|p| p.nodes().iter().map(|n| n.id.clone()).collect());
                format!(
                    "{id} adopts ring {ring:?} pending {pending:?}; dropping {} spans",
                    ownership.dropping().spans().len()
                )
            });
        }
    }

    fn partitioned(&self, a: &str, b: &str) -> bool {
        self.state.lock().partitions.contains(&pair(a, b))
    }

    /// Cuts `a` off from `b` until [`World::heal`].
    pub fn partition(&self, a: &str, b: &str) {
        self.trace(|| format!("partition {a} | {b}"));
        let mut state = self.state.lock();
        state.partitions.insert(pair(a, b));
        state.history.counts.partitions += 1;
    }

    /// Heals the partition between `a` and `b`.
    pub fn heal(&self, a: &str, b: &str) {
        self.trace(|| format!("heal {a} | {b}"));
        self.state.lock().partitions.remove(&pair(a, b));
    }

    /// Heals every partition.
    pub fn heal_all(&self) {
        self.state.lock().partitions.clear();
    }

    /// Kills node `id` (kill -9: its store keeps everything it acknowledged).
    pub fn crash(self: &Arc<Self>, id: &str) {
        let crashed = {
            let mut state = self.state.lock();
            match state.nodes.get_mut(id) {
                Some(node) if node.up => {
                    node.up = false;
                    state.history.counts.crashes += 1;
                    true
                }
                _ => false,
            }
        };
        if crashed {
            self.trace(|| format!("crash {id}"));
            self.publish(false);
        }
    }

    /// Starts node `id` again on its store, unless it left or was removed.
    pub fn restart(self: &Arc<Self>, id: &str) {
        if matches!(self.status(id), Some(Status::Left | Status::Removed) | None) || self.is_up(id) {
            return;
        }
        let (engine, extras) = match self.state.lock().nodes.get(id) {
            Some(node) => (node.engine.clone(), (node.hints.clone(), node.trees.clone())),
            None => return,
        };
        // A crash ends a run uncleanly: the restart begins the next epoch (rule 15), unless
        // that rule is broken on purpose.
        if self.config.mutation == Mutation::KeepActorAfterCrash {
            let _ = engine.mark_clean();
        }
        engine.begin_run().expect("invariant: a memory store records a run");
        let node = self.start_node(id, engine, extras);
        self.state.lock().nodes.insert(id.to_owned(), node);
        self.trace(|| format!("restart {id}"));
        self.publish(false);
    }

    /// Ends network faults: messages from now on are prompt and arrive.
    pub fn calm(&self) {
        self.calm.store(true, std::sync::atomic::Ordering::Release);
    }

    /// One pass of node `id`'s hint dispatcher, as kvnode's: expired hints dropped; each
    /// other hint, if its versions are younger than half the grace, stored on its target
    /// (when up and reachable) or, if the target no longer holds the key, on every current
    /// replica, and deleted once stored; one too old is dropped. Returns hints delivered.
    pub fn deliver_hints(&self, id: &str) -> usize {
        let Some(hints) = self.state.lock().nodes.get(id).filter(|n| n.up).map(|n| n.hints.clone()) else {
            return 0;
        };
        if self.fenced(id) {
            return 0;
        }
        let now = self.clock_ms(id);
        let _ = hints.expire(now);
        let mut delivered = 0;
        for target in hints.pending().into_keys() {
            let Ok(page) = hints.page(&target, None, 64) else { continue };
            let mut done = Vec::new();
            for (seq, hint) in page {
                let record = kv_vclock::Siblings::from_versions(hint.versions.clone());
                if !plan::hand_off(&record, now, self.config.grace_ms) {
                    self.trace(|| format!("{id}: hint for {target} dropped (too old)"));
                    done.push(seq);
                    continue;
                }
                let store = |to: &str| {
                    let call = Call::Store(StoreRequest {
                        key: hint.key.clone(),
                        versions: hint.versions.clone(),
                        fresh: None,
                        deadline_ms: 0,
                    });
                    match self.deliver(id, to, call) {
                        Delivery::Reply(Reply::Stored) => Some(true),
                        Delivery::Reply(Reply::Refused(Refusal::NotOwner(_))) => Some(false),
                        _ => None,
                    }
                };
                let stored = match store(&target) {
                    Some(true) => true,
                    Some(false) => {
                        let owners: Vec<String> = self
                            .ring()
                            .preference_list(&hint.key, self.config.n)
                            .iter()
                            .map(|n| n.id.clone())
                            .collect();
                        owners.iter().all(|o| store(o) == Some(true))
                    }
                    None => false,
                };
                if stored {
                    done.push(seq);
                    delivered += 1;
                }
            }
            let _ = hints.remove(&target, &done);
        }
        if delivered > 0 {
            self.history(|h| h.counts.hints += delivered as u64);
        }
        delivered
    }

    /// One anti-entropy round of node `id`, as kvnode's: for every segment of the current ring
    /// it holds completely, with every other replica that is up, reachable and holds it
    /// completely too, the trees are compared and the keys of each differing bucket exchanged
    /// both ways (merged, siblings kept). Returns the keys moved.
    pub fn anti_entropy_round(&self, id: &str) -> usize {
        let state = self.state.lock();
        let Some(me) = state.nodes.get(id).filter(|n| n.up) else { return 0 };
        let (core, trees, engine) = (me.core.clone(), me.trees.clone(), me.engine.clone());
        drop(state);
        if self.fenced(id) {
            return 0;
        }
        let ring = self.ring();
        let view = core.view();
        let wanted: Vec<(u64, u64)> =
            segments(&ring).into_iter().filter(|&(lo, hi)| view.serves_range(lo, hi)).collect();
        if trees.keep(&*engine, &wanted).is_err() {
            return 0;
        }
        let mut moved = 0;
        for &(lo, hi) in &wanted {
            for peer in ring.preference_list_at(hi, self.config.n) {
                let peer = peer.id.clone();
                let theirs = self.state.lock().nodes.get(&peer).filter(|n| n.up).map(|n| n.trees.clone());
                let (Some(theirs), Some(mine)) = (theirs, trees.tree(lo, hi)) else { continue };
                let Some(their_tree) = theirs.tree(lo, hi) else { continue };
                if peer == id || self.partitioned(id, &peer) {
                    continue;
                }
                for bucket in mine.diff_local(&their_tree).buckets {
                    let range = mine.bucket_range(bucket);
                    let (first, last) = (*range.start(), *range.end());
                    if first > last {
                        continue;
                    }
                    // The peer answers only for a range it holds completely.
                    let Ok(their_entries) = self.scan(id, &peer, first, last, None) else { continue };
                    let Ok(my_entries) = core.scan(first, last, None, PAGE) else { continue };
                    let lacks = |have: &[Entry], key: &[u8], versions: &[Version]| {
                        let held =
                            have.iter().find(|(k, _)| k.as_slice() == key).map_or(&[][..], |(_, v)| v.as_slice());
                        versions.iter().any(|v| !held.iter().any(|h| h.dot == v.dot))
                    };
                    let to_me: Vec<Entry> =
                        their_entries.iter().filter(|(k, v)| lacks(&my_entries, k, v)).cloned().collect();
                    let to_them: Vec<Entry> =
                        my_entries.iter().filter(|(k, v)| lacks(&their_entries, k, v)).cloned().collect();
                    moved += to_me.len() + to_them.len();
                    if !to_me.is_empty() {
                        self.trace(|| format!("anti-entropy: {id} takes {} keys from {peer}", to_me.len()));
                        let _ = core.store_stream(to_me);
                    }
                    if !to_them.is_empty() {
                        self.trace(|| format!("anti-entropy: {id} gives {} keys to {peer}", to_them.len()));
                        let _ = self.stream(id, &peer, to_them);
                    }
                }
            }
        }
        if moved > 0 {
            self.history(|h| h.counts.repaired += moved as u64);
        }
        moved
    }

    /// How a message fares: delay there, delay back, reply lost.
    fn fate(&self) -> (u64, u64, bool) {
        let faults = self.config.faults && !self.calm.load(std::sync::atomic::Ordering::Acquire);
        let timeout = self.config.timeout_ms;
        let mut state = self.state.lock();
        let slow = faults && state.rng.chance(4);
        let there = if slow { state.rng.between(timeout / 2, timeout * 3) } else { state.rng.between(0, 8) };
        let back = state.rng.between(0, 8);
        let lost = faults && state.rng.chance(2);
        if there > timeout {
            state.history.counts.late += 1;
        }
        if lost {
            state.history.counts.lost_replies += 1;
        }
        (there, back, lost)
    }

    fn deliver(&self, from: &str, to: &str, call: Call) -> Delivery {
        let core = {
            let state = self.state.lock();
            match state.nodes.get(to) {
                Some(node) if node.up => node.core.clone(),
                _ => {
                    self.trace(|| format!("{from} -> {to}: {} refused (down)", describe_call(&call)));
                    return Delivery::Refused;
                }
            }
        };
        if self.fenced(to) || self.not_a_member(from) {
            self.trace(|| format!("{from} -> {to}: {} refused (fenced, or not a member)", describe_call(&call)));
            return Delivery::Refused;
        }
        if self.partitioned(from, to) {
            self.trace(|| format!("{from} -> {to}: {} lost (partition)", describe_call(&call)));
            return Delivery::Partitioned;
        }
        let what = if self.trace { describe_call(&call) } else { String::new() };
        if self.config.mutation == Mutation::ForgetOutstandingDots {
            core.forget_outstanding_dots();
        }
        let mut replies = core.execute(vec![call], self.clock_ms(to));
        let reply = replies.pop().unwrap_or(Reply::Refused(Refusal::Failed("no reply".into())));
        self.trace(|| format!("{from} -> {to}: {what} => {}", describe_reply(&reply)));
        if let Reply::Coordinated(response) = &reply {
            let v = &response.created;
            self.history(|h| h.created(&v.content_type, &v.dot.node, v.dot.counter));
        }
        Delivery::Reply(reply)
    }

    /// One page of `from`'s copy of `lo..=hi` after `after`, read by `by` (`None` if it cannot).
    /// `Err(true)`: `from` refused (it does not hold the range completely); `Err(false)`: down
    /// or cut off.
    fn scan(&self, by: &str, from: &str, lo: u64, hi: u64, after: Option<&[u8]>) -> Result<Vec<Entry>, bool> {
        let core = self.state.lock().nodes.get(from).filter(|n| n.up).map(|n| n.core.clone()).ok_or(false)?;
        if self.partitioned(by, from) || self.fenced(from) || self.not_a_member(by) {
            return Err(false);
        }
        // Only a source filling the range too is counted out (`GAINING_TOO`); one that does
        // not own it in its view (a lagging view) is retried.
        core.scan(lo, hi, after, PAGE).map_err(|e| e.message().contains(kv_proto::GAINING_TOO))
    }

    /// Streams `entries` from `from` into `to` (`false` if it cannot or `to` refuses).
    fn stream(&self, from: &str, to: &str, entries: Vec<Entry>) -> bool {
        let Some(core) = self.state.lock().nodes.get(to).filter(|n| n.up).map(|n| n.core.clone()) else {
            return false;
        };
        if self.not_a_member(from) || self.fenced(to) {
            self.trace(|| format!("{from} -> {to}: stream refused (fenced, or not a member)"));
            return false;
        }
        !self.partitioned(from, to) && core.store_stream(entries).is_ok()
    }

    /// Copies `lo..=hi` from `source` into `target`, page by page (as a pull or a push).
    async fn copy(&self, source: &str, target: &str, lo: u64, hi: u64) -> bool {
        self.try_copy(source, target, lo, hi).await.is_ok()
    }

    /// [`World::copy`], saying why it failed: `Err(true)` if `source` refused because it does
    /// not hold the range completely.
    async fn try_copy(&self, source: &str, target: &str, lo: u64, hi: u64) -> Result<(), bool> {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.scan(target, source, lo, hi, after.as_deref())?;
            let done = page.len() < PAGE;
            after = page.last().map(|(k, _)| k.clone()).or(after);
            if !page.is_empty() && !self.stream(source, target, page) {
                return Err(false);
            }
            if done {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The versions node `id` holds for `key` (empty if it has no store).
    pub fn held(&self, id: &str, key: &[u8]) -> Vec<Seen> {
        seen(&self.record(id, key))
    }

    /// The record node `id` holds for `key` (empty if it has no store).
    pub fn record(&self, id: &str, key: &[u8]) -> Record {
        let engine = self.state.lock().nodes.get(id).map(|n| n.engine.clone());
        engine.and_then(|e| e.get(key).ok()).unwrap_or_default()
    }

    /// One pass of node `id`'s dropper: hand each dropping range's keys to their owners, then
    /// remove them ([`plan::drop_targets`]).
    pub fn drop_round(&self, id: &str) {
        let Some((ownership, engine)) =
            self.state.lock().nodes.get(id).filter(|n| n.up).map(|n| (n.ownership.clone(), n.engine.clone()))
        else {
            return;
        };
        if !matches!(self.status(id), Some(Status::Normal | Status::Joining | Status::Leaving)) || self.fenced(id) {
            return;
        }
        let dropping = ownership.dropping();
        if dropping.is_empty() {
            return;
        }
        let topology = self.topology();
        let mut done = Vec::new();
        'spans: for &(lo, hi) in dropping.spans() {
            loop {
                let Ok(page) = engine.scan(lo, hi, None, PAGE) else { continue 'spans };
                if page.is_empty() {
                    done.push((lo, hi));
                    continue 'spans;
                }
                let now = self.clock_ms(id);
                let mut by_target: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
                for (key, record) in &page {
                    let versions: Vec<Version> = match self.config.mutation {
                        Mutation::HandOffOld => record.versions().to_vec(),
                        // The rule before: each version by its own age.
                        Mutation::HandOffYoungVersions => record
                            .versions()
                            .iter()
                            .filter(|v| now.saturating_sub(v.written_at) <= self.config.grace_ms / 2)
                            .cloned()
                            .collect(),
                        _ if plan::hand_off(record, now, self.config.grace_ms) => record.versions().to_vec(),
                        _ => Vec::new(),
                    };
                    if versions.is_empty() {
                        self.discard(id, key, record);
                        continue;
                    }
                    let targets = plan::drop_targets(&topology, key, self.config.n, id);
                    if targets.is_empty() {
                        continue 'spans;
                    }
                    for target in targets {
                        by_target.entry(target.id).or_default().push((key.clone(), versions.clone()));
                    }
                }
                for (target, entries) in by_target {
                    if !self.stream(id, &target, entries) {
                        continue 'spans;
                    }
                }
                let keys: Vec<Vec<u8>> = page.into_iter().map(|(k, _)| k).collect();
                if engine.remove(&keys).is_err() {
                    continue 'spans;
                }
            }
        }
        if !done.is_empty() {
            self.trace(|| format!("{id} dropped {} spans", done.len()));
            let _ = ownership.dropped(&kv_ring::Intervals::from_spans(done), &topology);
        }
    }

    /// Node `id` discards `record` of `key` as too old to hand off: writes no other store holds
    /// are gone (exempt, and counted).
    fn discard(&self, id: &str, key: &[u8], record: &Record) {
        let Some(index) = crate::run::key_index(key) else { return };
        let engines: Vec<Arc<dyn Engine>> =
            self.state.lock().nodes.iter().filter(|(n, _)| n.as_str() != id).map(|(_, n)| n.engine.clone()).collect();
        let elsewhere: Vec<Vec<Seen>> = engines.iter().map(|e| seen(&e.get(key).ok().unwrap_or_default())).collect();
        let here = seen(record);
        self.history(|h| h.discard(index, &here, &elsewhere));
    }

    /// One pass of node `id`'s filler: merge each range it gained from its other current owners,
    /// at least [`plan::copies_needed`] of them; then it serves the range.
    pub async fn fill_round(&self, id: &str) {
        let Some(ownership) = self.state.lock().nodes.get(id).filter(|n| n.up).map(|n| n.ownership.clone()) else {
            return;
        };
        if self.fenced(id) {
            return;
        }
        let (filling, epoch) = ownership.filling_snapshot();
        if filling.is_empty() {
            return;
        }
        let ring = self.ring();
        let mut done = Vec::new();
        for &(lo, hi) in filling.spans() {
            let pieces = plan::owners_in(&ring, self.config.n, lo, hi)
                .iter()
                .map(|m| (m.lo, m.hi, plan::sources(m, &[id.to_owned()])))
                .collect();
            for (lo, hi, sources) in plan::coalesce(pieces) {
                let (mut copied, mut refused) = (0, 0);
                for source in &sources {
                    match self.try_copy(source, id, lo, hi).await {
                        Ok(()) => copied += 1,
                        Err(true) => refused += 1,
                        Err(false) => {}
                    }
                }
                self.trace(|| {
                    format!("{id} fill {lo:016x}-{hi:016x} from {sources:?}: {copied} copied, {refused} refused")
                });
                if copied >= plan::copies_needed_without(self.config.r, sources.len(), refused) {
                    done.push((lo, hi));
                }
            }
        }
        if !done.is_empty() && self.is_up(id) {
            self.trace(|| format!("{id} filled {} pieces", done.len()));
            let _ = ownership.filled(&kv_ring::Intervals::from_spans(done), epoch, &self.topology());
        }
    }

    /// Whether any running member still has ranges to fill.
    pub fn filling(&self) -> bool {
        let state = self.state.lock();
        state.nodes.iter().any(|(id, n)| {
            n.up && matches!(state.members.get(id), Some((Status::Normal | Status::Joining | Status::Leaving, _)))
                && !n.ownership.filling().is_empty()
        })
    }

    /// Node `id`'s loss epoch, to pass back to [`World::prefill`] (0 if it is down).
    fn loss_epoch(&self, id: &str) -> u64 {
        let ownership = self.state.lock().nodes.get(id).filter(|n| n.up).map(|n| n.ownership.clone());
        ownership.map(|o| o.loss_epoch()).unwrap_or_default()
    }

    fn prefill(&self, id: &str, ranges: kv_ring::Intervals, epoch: u64) {
        let ownership = self.state.lock().nodes.get(id).filter(|n| n.up).map(|n| n.ownership.clone());
        if let Some(ownership) = ownership {
            let _ = ownership.prefill(&ranges, epoch, &self.topology());
        }
    }

    /// Whether any running member still has ranges to drop.
    pub fn dropping(&self) -> bool {
        let state = self.state.lock();
        state.nodes.iter().any(|(id, n)| {
            n.up && matches!(state.members.get(id), Some((Status::Normal | Status::Joining | Status::Leaving, _)))
                && !n.ownership.dropping().is_empty()
        })
    }

    /// The acknowledged writes of keys in `m` that `sources` hold (or hold a successor of) so
    /// widely that any `needed` of them include a holder; `own` (a leaving node's copy) counts
    /// as always merged.
    fn due(&self, m: &Move, sources: &[String], needed: usize, own: Option<&str>, keys: &[Vec<u8>]) -> Vec<usize> {
        let mut due = Vec::new();
        for (key_index, key) in keys.iter().enumerate() {
            let hash = kv_ring::hash_key(key);
            // An empty key stands for one the caller leaves out.
            if key.is_empty() || hash < m.lo || hash > m.hi {
                continue;
            }
            let held: Vec<(String, Vec<Seen>)> = sources.iter().map(|s| (s.clone(), self.held(s, key))).collect();
            let own_held = own.map(|o| self.held(o, key)).unwrap_or_default();
            let mut history = self.state.lock();
            let history = &mut history.history;
            for index in 0..history.writes.len() {
                let write = &history.writes[index];
                if write.key != key_index || write.acked.is_none() || write.tombstone {
                    continue;
                }
                let holders = held.iter().filter(|(_, versions)| history.holds(versions, index)).count();
                let own = history.holds(&own_held, index);
                if own || holders + needed > sources.len() {
                    due.push(index);
                }
            }
        }
        due
    }

    /// Rule 4 for `gainer` once its move completed: it holds every write of `due`, for the keys
    /// it still accepts (a join or a leave, checked as it completes) or serves (a removal,
    /// checked once every gainer filled). A change that ran at the same time may have moved a
    /// key on since (the gainer dropped it to its new owners): the final checks cover it.
    fn check_gainer(&self, what: &str, gainer: &str, due: &[usize], keys: &[Vec<u8>]) {
        let view = self.state.lock().nodes.get(gainer).map(|n| n.core.view());
        let still_held = |key: usize| {
            let hash = kv_ring::hash_key(&keys[key]);
            view.as_ref().is_some_and(|v| if what == "removal" { v.serves(hash) } else { v.accepts(hash) })
        };
        let due: Vec<usize> = self.history(|h| due.iter().copied().filter(|&w| still_held(h.writes[w].key)).collect());
        let snapshot: Vec<Vec<Seen>> = keys.iter().map(|k| self.held(gainer, k)).collect();
        self.history(|h| h.check_move(what, gainer, &due, &|key| snapshot[key].clone()));
    }

    /// A new node `id` joins: announce, wait, merge every gained range from its old owners
    /// (at least R of them), then become normal.
    pub async fn join(self: &Arc<Self>, id: &str, zone: &str, keys: &[Vec<u8>]) {
        if self.status(id).is_none() {
            self.add_node(id, zone, Status::Joining);
        }
        self.trace(|| format!("join {id} announced"));
        self.publish(false);
        tokio::time::sleep(Duration::from_millis(ANNOUNCE_MS)).await;
        loop {
            let epoch = self.loss_epoch(id);
            let before = self.ring();
            // What it owns once every move in progress completes (the pending ring), as kvnode's
            // rebalancer plans: other members may be joining or leaving at the same time.
            let after = match self.config.mutation {
                Mutation::PlanAgainstCurrentRing => {
                    self.ring_of(|m, s| m == id || matches!(s, Status::Normal | Status::Leaving))
                }
                _ => self.ring_of(|m, s| m == id || matches!(s, Status::Normal | Status::Joining)),
            };
            let moves = plan::gained_by(&before, &after, self.config.n, id);
            let exclude = [id.to_owned()];
            let mut due = Vec::new();
            for m in &moves {
                let sources = plan::sources(m, &exclude);
                due.extend(self.due(m, &sources, plan::copies_needed(self.config.r, sources.len()), None, keys));
            }
            let mut complete = true;
            for m in &moves {
                let mut sources = plan::sources(m, &exclude);
                let mut needed = plan::copies_needed(self.config.r, sources.len());
                if self.config.mutation == Mutation::JoinFromOneOwner {
                    sources.truncate(1);
                    needed = needed.min(1);
                }
                let mut copied = 0;
                for source in &sources {
                    if self.copy(source, id, m.lo, m.hi).await {
                        copied += 1;
                    }
                }
                if copied < needed {
                    complete = false;
                    break;
                }
            }
            if complete {
                self.trace(|| format!("join {id} complete"));
                self.check_gainer("join", id, &due, keys);
                self.prefill(id, kv_ring::Intervals::from_spans(moves.iter().map(|m| (m.lo, m.hi))), epoch);
                self.set_status(id, Status::Normal);
                self.publish(false);
                self.history(|h| h.counts.joins += 1);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Normal node `id` leaves: announce, wait, gather every range it loses from the other old
    /// owners (R copies with its own), push it to the gainers, then go.
    pub async fn leave(self: &Arc<Self>, id: &str, keys: &[Vec<u8>]) {
        self.set_status(id, Status::Leaving);
        self.trace(|| format!("leave {id} announced"));
        self.publish(false);
        tokio::time::sleep(Duration::from_millis(ANNOUNCE_MS)).await;
        loop {
            let before = self.ring();
            let after = match self.config.mutation {
                Mutation::PlanAgainstCurrentRing => {
                    self.ring_of(|m, s| m != id && matches!(s, Status::Normal | Status::Leaving))
                }
                _ => self.ring_of(|m, s| m != id && matches!(s, Status::Normal | Status::Joining)),
            };
            let moves = plan::lost_by(&before, &after, self.config.n, id);
            let exclude = [id.to_owned()];
            let needed_of = |count: usize| plan::copies_needed(self.config.r.saturating_sub(1), count);
            let mut due: Vec<(String, Vec<usize>)> = Vec::new();
            for m in &moves {
                let sources = plan::sources(m, &exclude);
                let owed = self.due(m, &sources, needed_of(sources.len()), Some(id), keys);
                for gainer in &m.gained {
                    due.push((gainer.clone(), owed.clone()));
                }
            }
            let mut complete = self.is_up(id);
            for m in &moves {
                if !complete {
                    break;
                }
                let sources = plan::sources(m, &exclude);
                let mut copied = 0;
                for source in &sources {
                    if self.copy(source, id, m.lo, m.hi).await {
                        copied += 1;
                    }
                }
                complete = copied >= needed_of(sources.len()) && self.is_up(id);
                for gainer in &m.gained {
                    if !complete {
                        break;
                    }
                    // The first page of a hand-off records the gainer's loss epoch, the last
                    // says it was the whole range.
                    let epoch = self.loss_epoch(gainer);
                    complete = self.copy(id, gainer, m.lo, m.hi).await;
                    if complete {
                        self.prefill(gainer, kv_ring::Intervals::from_spans([(m.lo, m.hi)]), epoch);
                    }
                }
            }
            if complete {
                self.trace(|| format!("leave {id} complete"));
                for (gainer, owed) in &due {
                    self.check_gainer("leave", gainer, owed, keys);
                }
                self.set_status(id, Status::Left);
                if let Some(node) = self.state.lock().nodes.get_mut(id) {
                    node.up = false;
                }
                self.publish(false);
                self.history(|h| h.counts.leaves += 1);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An operator removes node `id`, which is killed and whose disk is lost; every node that
    /// gains its ranges fills them from the surviving owners (at least R).
    pub async fn remove(self: &Arc<Self>, id: &str, keys: &[Vec<u8>]) {
        self.trace(|| format!("remove {id}"));
        self.crash(id);
        let before = self.ring();
        let gainers = self.members(&[Status::Normal]).into_iter().filter(|g| g != id).collect::<Vec<_>>();
        let after = self.ring_of(|m, s| m != id && matches!(s, Status::Normal | Status::Leaving));
        let mut due: Vec<(String, Vec<usize>)> = Vec::new();
        for gainer in &gainers {
            let exclude = [id.to_owned(), gainer.clone()];
            // Only what the gainer's own view gains: a node that was down through earlier
            // changes may already count the range as its own (it merely missed writes).
            let view = self.state.lock().nodes.get(gainer).map(|n| n.core.view());
            let mut owed = Vec::new();
            for m in plan::gained_by(&before, &after, self.config.n, gainer) {
                let sources = plan::sources(&m, &exclude);
                let needed = plan::copies_needed(self.config.r, sources.len());
                let unowned: Vec<Vec<u8>> = keys
                    .iter()
                    .map(|k| {
                        if view.as_ref().is_some_and(|v| v.accepts(kv_ring::hash_key(k))) {
                            Vec::new()
                        } else {
                            k.clone()
                        }
                    })
                    .collect();
                owed.extend(self.due(&m, &sources, needed, None, &unowned));
            }
            due.push((gainer.clone(), owed));
        }
        {
            let mut state = self.state.lock();
            let now = 1_000_000 + self.epoch.elapsed().as_millis() as u64;
            state.history.lost.insert(id.to_owned(), now);
            if let Some(member) = state.members.get_mut(id) {
                member.0 = Status::Removed;
            }
        }
        self.publish(false);
        // The fillers do the work; wait until every gainer holds its ranges completely.
        tokio::time::sleep(Duration::from_millis(VIEW_LAG_MS)).await;
        // (A gainer that left or was removed meanwhile, by a change running at the same time,
        // handed off or lost what it held: it is not waited for, nor checked.)
        let member = |g: &String| matches!(self.status(g), Some(Status::Normal | Status::Joining | Status::Leaving));
        while gainers.iter().filter(|g| member(g)).any(|g| !self.is_up(g) || self.node_filling(g)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (gainer, owed) in due.iter().filter(|(g, _)| member(g)) {
            self.check_gainer("removal", gainer, owed, keys);
        }
        self.history(|h| h.counts.removals += 1);
    }

    /// Node `id` is paused (a stopped process, a VM pause: it hears nothing) and an operator
    /// removes it meanwhile; the gainers fill its ranges from the survivors. After `pause_ms`
    /// it resumes with its store and its stale view and, before it learns of its removal, runs
    /// its background work once: an anti-entropy round and its hints. Its peers must refuse it
    /// (rule 12), or its stale copies (a delete it missed, purged since) come back. Then it
    /// stops for good.
    pub async fn pause_remove(self: &Arc<Self>, id: &str, keys: &[Vec<u8>], pause_ms: u64) {
        self.trace(|| format!("pause {id}, then remove it"));
        let engine = self.state.lock().nodes.get(id).map(|n| n.engine.clone());
        self.remove(id, keys).await;
        self.history(|h| h.counts.paused_removals += 1);
        // Meanwhile the collectors purge what was deleted while it was paused.
        let started = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(self.config.grace_ms + 20)).await;
        let collector = self.collectors.lock().first().cloned();
        if let Some(collector) = collector {
            for key in keys {
                let _ = collector.collect(key).await;
            }
        }
        let paused = started.elapsed().as_millis() as u64;
        tokio::time::sleep(Duration::from_millis(pause_ms.saturating_sub(paused))).await;
        // The process resumes on the store it had (remove() stopped it without touching it).
        let resumed = {
            let mut state = self.state.lock();
            match state.nodes.get_mut(id) {
                Some(node) if engine.as_ref().is_some_and(|e| Arc::ptr_eq(e, &node.engine)) => {
                    node.up = true;
                    true
                }
                _ => false,
            }
        };
        if resumed {
            self.trace(|| format!("{id} resumes, removed, with its old view"));
            self.anti_entropy_round(id);
            self.deliver_hints(id);
            if let Some(node) = self.state.lock().nodes.get_mut(id) {
                node.up = false;
            }
            self.trace(|| format!("{id} learns it was removed and stops"));
        }
    }

    fn node_filling(&self, id: &str) -> bool {
        self.state.lock().nodes.get(id).is_some_and(|n| !n.ownership.filling().is_empty())
    }

    /// Node `id` loses its disk: it restarts on an empty store (a new actor) and joins again.
    pub async fn wipe(self: &Arc<Self>, id: &str, keys: &[Vec<u8>]) {
        self.trace(|| format!("wipe {id}"));
        self.crash(id);
        let engine = self.new_engine();
        let zone = {
            let mut state = self.state.lock();
            let now = 1_000_000 + self.epoch.elapsed().as_millis() as u64;
            state.history.lost.insert(id.to_owned(), now);
            state.history.counts.wipes += 1;
            let member = state.members.get_mut(id).expect("invariant: wiped nodes are members");
            member.0 = Status::Joining;
            member.1.clone()
        };
        let extras = self.open_extras(&engine);
        let node = self.start_node(id, engine, extras);
        self.state.lock().nodes.insert(id.to_owned(), node);
        self.join(id, &zone, keys).await;
    }
}

fn versions_text(versions: &[Version]) -> String {
    let parts: Vec<String> = versions
        .iter()
        .map(|v| {
            format!(
                "{}{}@{}:{}",
                v.content_type,
                if v.tombstone { "(del)" } else { "" },
                v.dot.node.split('~').next().unwrap_or(""),
                v.dot.counter
            )
        })
        .collect();
    format!("[{}]", parts.join(" "))
}

fn describe_call(call: &Call) -> String {
    let key = String::from_utf8_lossy(call.key()).into_owned();
    match call {
        Call::Coordinate(c) => format!(
            "coordinate {key} {} ctx={:?}",
            c.write.content_type,
            c.write
                .context
                .entries()
                .iter()
                .map(|e| (e.node.split('~').next().unwrap_or("").to_owned(), e.counter))
                .collect::<Vec<_>>()
        ),
        Call::Store(c) => {
            format!("store {key} {} fresh={:?}", versions_text(&c.versions), c.fresh.as_ref().map(|d| d.counter))
        }
        Call::Read(_) => format!("read {key}"),
        Call::Purge(c) => format!("purge {key} {:?}", c.tombstones.iter().map(|d| d.counter).collect::<Vec<_>>()),
        Call::Hint(c) => format!("hint {key} for {} {}", c.target, versions_text(&c.versions)),
    }
}

fn describe_reply(reply: &Reply) -> String {
    match reply {
        Reply::Coordinated(c) => format!(
            "created {} set {}",
            versions_text(std::slice::from_ref(&c.created)),
            versions_text(c.record.versions())
        ),
        Reply::Stored => "stored".into(),
        Reply::Read(v) => format!("read {}", versions_text(v)),
        Reply::Purged => "purged".into(),
        Reply::Refused(refusal) => format!("refused {} {}", refusal.reason(), refusal.message()),
    }
}

/// A record as the checker sees it.
pub fn seen(record: &Record) -> Vec<Seen> {
    record.versions().iter().map(|v| (v.content_type.clone(), v.tombstone)).collect()
}

impl CallPeer for Net {
    fn call<'a>(&'a self, peer: &'a Peer, call: Call) -> BoxFuture<'a, Result<Reply, ReplicaError>> {
        Box::pin(self.send(peer, call))
    }
}

/// A front's network: calls from front `from` to the nodes, through the simulated network.
pub struct Net {
    world: Arc<World>,
    from: String,
}

impl Net {
    /// The network as front `from` sees it.
    pub fn new(world: Arc<World>, from: &str) -> Net {
        Net { world, from: from.to_owned() }
    }

    async fn send(&self, to: &Peer, call: Call) -> Result<Reply, ReplicaError> {
        let (there, back, lost) = self.world.fate();
        let (tx, rx) = oneshot::channel();
        let (world, from, to) = (self.world.clone(), self.from.clone(), to.id.clone());
        // The message travels on its own: it may arrive after the caller gave up.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(there)).await;
            let delivery = world.deliver(&from, &to, call);
            tokio::time::sleep(Duration::from_millis(back)).await;
            if !lost {
                let _ = tx.send(delivery);
            }
        });
        match rx.await {
            Ok(Delivery::Reply(reply)) => Ok(reply),
            Ok(Delivery::Refused) => Err(ReplicaError::NotSent("connection refused".into())),
            // A partition or a lost reply: nothing comes back; the caller's timeout ends it.
            Ok(Delivery::Partitioned) | Err(_) => std::future::pending().await,
        }
    }
}

/// [`Mutation::PerKeyCounters`]: the rule this store had before, a dot counter per key (one above
/// the highest the key shows), which restarts once a key's tombstones are purged.
struct PerKeyCounters(Arc<dyn Engine>);

impl Engine for PerKeyCounters {
    fn kind(&self) -> EngineKind {
        self.0.kind()
    }
    fn get(&self, key: &[u8]) -> kv_storage::Result<Record> {
        self.0.get(key)
    }
    fn update(&self, key: &[u8], build: &mut dyn FnMut(&Record) -> Vec<Version>) -> kv_storage::Result<Record> {
        self.0.update(key, build)
    }
    fn update_many(
        &self,
        keys: &[&[u8]],
        apply: &mut dyn FnMut(usize, &Record) -> Record,
    ) -> Vec<kv_storage::Result<Record>> {
        self.0.update_many(keys, apply)
    }
    fn counter_ceiling(&self) -> u64 {
        kv_vclock::MAX_COUNTER
    }
    fn counter_lease(&self) -> u64 {
        self.0.counter_lease()
    }
    fn put_batch(&self, entries: Vec<(Vec<u8>, Vec<Version>)>) -> kv_storage::Result<()> {
        self.0.put_batch(entries)
    }
    fn scan(
        &self,
        first_hash: u64,
        last_hash: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> kv_storage::Result<Vec<(Vec<u8>, Record)>> {
        self.0.scan(first_hash, last_hash, after, limit)
    }
    fn purge_tombstones(&self, key: &[u8], dots: &[Dot]) -> kv_storage::Result<bool> {
        self.0.purge_tombstones(key, dots)
    }
    fn remove(&self, keys: &[Vec<u8>]) -> kv_storage::Result<usize> {
        self.0.remove(keys)
    }
    fn identity(&self) -> Identity {
        self.0.identity()
    }
    fn issue_counter(&self, floor: u64) -> kv_storage::Result<u64> {
        Ok(floor + 1)
    }
    fn observe_counter(&self, _seen: u64) -> kv_storage::Result<bool> {
        Ok(false)
    }
    fn mark_clean(&self) -> kv_storage::Result<()> {
        self.0.mark_clean()
    }
    fn begin_run(&self) -> kv_storage::Result<()> {
        self.0.begin_run()
    }
    fn get_meta(&self, name: &str) -> kv_storage::Result<Option<Vec<u8>>> {
        self.0.get_meta(name)
    }
    fn put_meta(&self, name: &str, value: &[u8]) -> kv_storage::Result<()> {
        self.0.put_meta(name, value)
    }
    fn sync(&self) -> kv_storage::Result<()> {
        self.0.sync()
    }
    fn refresh_gauges(&self) {
        self.0.refresh_gauges()
    }
    fn open_hints(&self, limits: kv_storage::HintLimits) -> kv_storage::Result<kv_storage::HintStore> {
        self.0.open_hints(limits)
    }

    fn observe(&self, observer: Arc<dyn kv_storage::Observer>) -> bool {
        self.0.observe(observer)
    }

    fn while_paused(&self, f: &mut dyn FnMut()) {
        self.0.while_paused(f)
    }
}
