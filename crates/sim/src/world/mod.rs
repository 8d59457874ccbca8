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
use crate::mutation::Mutation;
use crate::rng::Rng;

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
    /// paused (as the nodes' collectors run every `--gc-interval`). Held weakly: a front holds
    /// the world (its network and clock), so a strong reference here would be a cycle that
    /// keeps every history's world alive until the process ends.
    collectors: Mutex<Vec<std::sync::Weak<kv_coordinator::Coordinator>>>,
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

mod changes;
mod mutant;
mod network;
mod repair;

use mutant::PerKeyCounters;
pub use network::Net;

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
    pub fn set_collectors(&self, fronts: &[Arc<kv_coordinator::Coordinator>]) {
        *self.collectors.lock() = fronts.iter().map(Arc::downgrade).collect();
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

    /// The versions node `id` holds for `key` (empty if it has no store).
    pub fn held(&self, id: &str, key: &[u8]) -> Vec<Seen> {
        seen(&self.record(id, key))
    }

    /// The record node `id` holds for `key` (empty if it has no store).
    pub fn record(&self, id: &str, key: &[u8]) -> Record {
        let engine = self.state.lock().nodes.get(id).map(|n| n.engine.clone());
        engine.and_then(|e| e.get(key).ok()).unwrap_or_default()
    }
}

/// A record as the checker sees it: each version by its write's tag (its content type). A
/// value is its tag's bytes: a version whose value is not (lost or mixed up on the way) is seen
/// under another name, so the write it should hold counts as lost.
pub fn seen(record: &Record) -> Vec<Seen> {
    record
        .versions()
        .iter()
        .map(|v| {
            let intact = v.tombstone || v.value == v.content_type.as_bytes();
            let tag = if intact { v.content_type.clone() } else { format!("{} with a wrong value", v.content_type) };
            (tag, v.tombstone)
        })
        .collect()
}
