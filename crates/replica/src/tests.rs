//! Coordinator behaviour over simulated replicas (the real [`ReplicaCore`] on memory stores,
//! behind fault switches): down, slow and lying ones.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kv_ring::{Intervals, Node, Ring};
use kv_storage::{Compression, EngineKind, Options as StorageOptions, Record, StorageMetrics, SyncMode};
use kv_vclock::VClock;
use tokio::sync::watch;

use crate::replica::{ReplicaCore, ReplicaMetrics, ReplicaView};
use kv_coordinator::*;
use kv_proto::{Call, Write};

/// One simulated replica: the real replica logic on a memory store, and fault switches.
struct SimReplica {
    core: ReplicaCore,
    down: AtomicBool,
    slow: AtomicBool,
    lying: AtomicBool,
    /// Milliseconds every read waits before it reaches the replica.
    read_delay_ms: AtomicU64,
}

impl SimReplica {
    fn new(id: &str) -> SimReplica {
        let options = StorageOptions {
            engine: EngineKind::Memory,
            sync: SyncMode::None,
            compression: Compression::None,
            cache_bytes: 1 << 20,
        };
        let engine = kv_storage::open(std::path::Path::new("."), &options, StorageMetrics::unregistered()).unwrap();
        SimReplica {
            core: ReplicaCore::new(id, engine, ReplicaMetrics::unregistered()),
            down: AtomicBool::new(false),
            slow: AtomicBool::new(false),
            lying: AtomicBool::new(false),
            read_delay_ms: AtomicU64::new(0),
        }
    }

    fn record(&self, key: &[u8]) -> Record {
        self.core.engine().get(key).unwrap()
    }
}

struct SimCluster {
    replicas: HashMap<String, SimReplica>,
    /// The wall clock replicas check deadlines against (the coordinator's, in tests that pass
    /// one: virtual time that follows tokio's paused clock).
    clock: Clock,
    /// Every store call that reached a replica: (replica, deadline ms, arrival ms).
    stores: parking_lot::Mutex<Vec<(String, u64, u64)>>,
}

impl CallPeer for SimCluster {
    fn call<'a>(&'a self, peer: &'a Peer, call: Call) -> BoxFuture<'a, Result<kv_proto::Reply, ReplicaError>> {
        Box::pin(self.send(peer, call))
    }
}

impl SimCluster {
    /// Replicas `ids`, each with the view of `topology` (all normal).
    fn new(ids: &[String], topology: &Topology) -> Arc<SimCluster> {
        SimCluster::with_clock(ids, topology, Arc::new(now_ms))
    }

    fn with_clock(ids: &[String], topology: &Topology, clock: Clock) -> Arc<SimCluster> {
        let replicas: HashMap<String, SimReplica> = ids.iter().map(|id| (id.clone(), SimReplica::new(id))).collect();
        for (id, replica) in &replicas {
            let none = Intervals::new();
            let view = ReplicaView::new(id, 3, &topology.ring, topology.pending.as_ref(), true, &none, &none);
            replica.core.set_view(view);
        }
        Arc::new(SimCluster { replicas, clock, stores: parking_lot::Mutex::new(Vec::new()) })
    }

    async fn send(&self, peer: &Peer, call: Call) -> Result<kv_proto::Reply, ReplicaError> {
        let replica = &self.replicas[&peer.id];
        if replica.slow.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        let delay = replica.read_delay_ms.load(Ordering::SeqCst);
        if delay > 0 && matches!(call, Call::Read(_)) {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if replica.down.load(Ordering::SeqCst) {
            return Err(ReplicaError::NotSent("connection refused".into()));
        }
        if replica.lying.load(Ordering::SeqCst) {
            return Err(ReplicaError::Decode("garbage".into()));
        }
        let now = (self.clock)();
        if let Call::Store(store) = &call {
            self.stores.lock().push((peer.id.clone(), store.deadline_ms, now));
        }
        let mut replies = replica.core.execute(vec![call], now);
        Ok(replies.remove(0))
    }
}

fn setup(grace: Duration) -> (Arc<SimCluster>, Arc<Coordinator>, Vec<String>) {
    let ids: Vec<String> = (1..=3).map(|i| format!("n{i}")).collect();
    let ring = Ring::new(ids.iter().map(|id| Node::new(id.clone(), id.clone()))).unwrap();
    let addresses = ids.iter().map(|id| (id.clone(), format!("{id}:1"))).collect();
    let topology = Topology::new(ring, addresses);
    let cluster = SimCluster::new(&ids, &topology);
    let (_tx, rx) = watch::channel(Arc::new(topology));
    // Keep the sender alive for the test's duration by leaking it: the receiver only borrows.
    std::mem::forget(_tx);
    let options = Options {
        quorum: Quorum::new(3, 2, 2).unwrap(),
        replica_timeout: Duration::from_millis(500),
        read_all: true,
        tombstone_grace: grace,
        sloppy_quorum: true,
        hinted_handoff: true,
        zone: "z".into(),
        max_clock_skew: Duration::ZERO,
    };
    let coordinator = Coordinator::new(cluster.clone(), rx, options, CoordinatorMetrics::unregistered());
    (cluster, coordinator, ids)
}

fn write(value: &str, context: VClock) -> Write {
    Write { value: value.as_bytes().to_vec().into(), content_type: "text/plain".into(), context, tombstone: false }
}

fn holders(cluster: &SimCluster, key: &[u8]) -> Vec<usize> {
    let mut ids: Vec<(String, usize)> =
        cluster.replicas.iter().map(|(id, r)| (id.clone(), r.record(key).len())).collect();
    ids.sort();
    ids.into_iter().map(|(_, n)| n).collect()
}

async fn settle(coordinator: &Coordinator) {
    // Background replication and repair finish within the replica timeout.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = coordinator;
}

#[tokio::test(start_paused = true)]
async fn write_all_reaches_every_replica() {
    let (cluster, coordinator, _) = setup(Duration::from_secs(10));
    let outcome = coordinator.put(b"k".to_vec(), write("v", VClock::new()), Some(3)).await.unwrap();
    assert_eq!(outcome.acked.len(), 3);
    assert_eq!(holders(&cluster, b"k"), vec![1, 1, 1]);
}

#[tokio::test(start_paused = true)]
async fn one_replica_down_meets_two_but_not_three() {
    let (cluster, coordinator, ids) = setup(Duration::from_secs(10));
    cluster.replicas[&ids[2]].down.store(true, Ordering::SeqCst);
    assert_eq!(coordinator.put(b"k".to_vec(), write("v", VClock::new()), Some(2)).await.unwrap().acked.len(), 2);
    let err = coordinator.put(b"k".to_vec(), write("v2", VClock::new()), Some(3)).await.unwrap_err();
    assert_eq!(err, Error::QuorumNotMet { op: "put", required: 3, acks: 2, replicas: 3 });
    assert_eq!(coordinator.get(b"k".to_vec(), Some(2)).await.unwrap().answered.len(), 2);
    assert!(matches!(coordinator.get(b"k".to_vec(), Some(3)).await.unwrap_err(), Error::QuorumNotMet { acks: 2, .. }));
}

#[tokio::test(start_paused = true)]
async fn slow_and_lying_replicas_do_not_block_a_quorum() {
    let (cluster, coordinator, ids) = setup(Duration::from_secs(10));
    let pl = coordinator.topology().preference_list(b"k", 3);
    // The preferred coordinator hangs: a coordinate call stores nothing (rule 15), so the write
    // goes to the next replica within the replica timeout; later writes avoid the hung replica
    // as coordinator.
    cluster.replicas[&pl[0].id].slow.store(true, Ordering::SeqCst);
    let first = coordinator.put(b"k".to_vec(), write("first", VClock::new()), Some(2)).await.unwrap();
    assert_eq!(first.created.dot.node.as_str(), &*cluster.replicas[&pl[1].id].core.actor());
    assert!(!first.acked.contains(&pl[0].id), "{:?}", first.acked);
    let outcome =
        coordinator.put(b"k".to_vec(), write("v", kv_vclock::Versioned::clock(&first.created)), Some(2)).await.unwrap();
    assert_eq!(outcome.created.dot.node.as_str(), &*cluster.replicas[&pl[1].id].core.actor());
    // A replica that is plainly down (connection refused) is skipped at once.
    cluster.replicas[&pl[1].id].down.store(true, Ordering::SeqCst);
    let outcome = coordinator.put(b"k2".to_vec(), write("w", VClock::new()), Some(1)).await.unwrap();
    assert_ne!(outcome.created.dot.node.as_str(), &*cluster.replicas[&pl[1].id].core.actor());
    cluster.replicas[&pl[1].id].down.store(false, Ordering::SeqCst);
    cluster.replicas[&pl[0].id].slow.store(false, Ordering::SeqCst);
    cluster.replicas[&ids.iter().find(|id| **id != pl[1].id).unwrap().clone()].lying.store(true, Ordering::SeqCst);
    let read = coordinator.get(b"k".to_vec(), Some(2)).await.unwrap();
    assert_eq!(read.record.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn read_repair_fixes_a_replica_that_missed_a_write() {
    let (cluster, coordinator, _) = setup(Duration::from_secs(10));
    let pl = coordinator.topology().preference_list(b"k", 3);
    let late = &cluster.replicas[&pl[2].id];
    late.down.store(true, Ordering::SeqCst);
    coordinator.put(b"k".to_vec(), write("v", VClock::new()), Some(2)).await.unwrap();
    settle(&coordinator).await;
    late.down.store(false, Ordering::SeqCst);
    assert!(late.record(b"k").is_empty());
    coordinator.get(b"k".to_vec(), Some(2)).await.unwrap();
    settle(&coordinator).await;
    assert_eq!(late.record(b"k").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn concurrent_blind_writes_are_siblings_until_resolved() {
    let (cluster, coordinator, _) = setup(Duration::from_secs(10));
    let (a, b) = tokio::join!(
        coordinator.put(b"k".to_vec(), write("a", VClock::new()), None),
        coordinator.put(b"k".to_vec(), write("b", VClock::new()), None),
    );
    a.unwrap();
    b.unwrap();
    settle(&coordinator).await;
    let read = coordinator.get(b"k".to_vec(), Some(3)).await.unwrap();
    assert_eq!(read.record.len(), 2);
    coordinator.put(b"k".to_vec(), write("ab", read.record.context()), Some(3)).await.unwrap();
    assert_eq!(holders(&cluster, b"k"), vec![1, 1, 1]);
}

#[tokio::test(start_paused = true)]
async fn tombstones_are_purged_after_grace_when_all_replicas_agree() {
    let (cluster, coordinator, _) = setup(Duration::from_millis(0));
    coordinator.put(b"k".to_vec(), write("v", VClock::new()), Some(3)).await.unwrap();
    let context = coordinator.get(b"k".to_vec(), None).await.unwrap().record.context();
    let delete = Write { tombstone: true, ..write("", context) };
    coordinator.put(b"k".to_vec(), delete, Some(3)).await.unwrap();
    assert_eq!(holders(&cluster, b"k"), vec![1, 1, 1]);
    // Reads never purge; the collector does.
    coordinator.get(b"k".to_vec(), Some(3)).await.unwrap();
    settle(&coordinator).await;
    assert_eq!(holders(&cluster, b"k"), vec![1, 1, 1]);
    assert!(coordinator.collect(b"k").await.unwrap());
    assert_eq!(holders(&cluster, b"k"), vec![0, 0, 0]);
}

#[tokio::test(start_paused = true)]
async fn writes_also_reach_pending_owners_and_down_replicas_coordinate_last() {
    let ids: Vec<String> = (1..=4).map(|i| format!("n{i}")).collect();
    let ring_of = |members: &[String]| Ring::new(members.iter().map(|id| Node::new(id.clone(), "z"))).unwrap();
    let addresses = ids.iter().map(|id| (id.clone(), format!("{id}:1"))).collect();
    let mut topology = Topology::new(ring_of(&ids[..3]), addresses);
    topology.pending = Some(ring_of(&ids));
    // A key the joining n4 will replicate.
    let key = (0..1000u32)
        .map(|i| format!("k{i}").into_bytes())
        .find(|k| topology.pending.as_ref().unwrap().preference_list(k, 3).iter().any(|n| n.id == "n4"))
        .unwrap();
    let first = topology.preference_list(&key, 3)[0].id.clone();
    topology.down.insert(first.clone());
    let cluster = SimCluster::new(&ids, &topology);
    let (tx, rx) = watch::channel(Arc::new(topology));
    std::mem::forget(tx);
    let options = Options {
        quorum: Quorum::new(3, 2, 2).unwrap(),
        replica_timeout: Duration::from_millis(500),
        read_all: true,
        tombstone_grace: Duration::from_secs(10),
        sloppy_quorum: true,
        hinted_handoff: true,
        zone: "z".into(),
        max_clock_skew: Duration::ZERO,
    };
    let coordinator = Coordinator::new(cluster.clone(), rx, options, CoordinatorMetrics::unregistered());
    // W = 2: a replica known down is not written to (it gets a hint), so W = 3 cannot be met.
    let outcome = coordinator.put(key.clone(), write("v", VClock::new()), Some(2)).await.unwrap();
    assert!(!outcome.acked.contains(&first), "a replica known down is not written to");
    assert_ne!(
        outcome.created.dot.node.as_str(),
        &*cluster.replicas[&first].core.actor(),
        "a down replica is not asked to coordinate first"
    );
    assert_eq!(outcome.replicas, 3, "the pending owner does not count toward N");
    settle(&coordinator).await;
    assert_eq!(cluster.replicas["n4"].record(&key).len(), 1, "the joining owner got the write");
}

#[tokio::test(start_paused = true)]
async fn young_tombstones_are_kept() {
    let (cluster, coordinator, _) = setup(Duration::from_secs(3600));
    coordinator.put(b"k".to_vec(), Write { tombstone: true, ..write("", VClock::new()) }, Some(3)).await.unwrap();
    assert!(!coordinator.collect(b"k").await.unwrap());
    assert_eq!(holders(&cluster, b"k"), vec![1, 1, 1]);
}

/// Rule 8 (docs/consistency.md): a read repair carries what replicas answered to replicas that
/// lacked it; a tombstone collector that saw the tombstone everywhere purges two replica
/// timeouts after that look, so every repair store must be refused past two replica timeouts
/// after the reads were sent, however long the reads (a timed-out replica, then a slow
/// fallback read) and the repairs before it took.
#[tokio::test(start_paused = true)]
async fn a_read_repair_expires_two_replica_timeouts_after_the_reads_were_sent() {
    let ids: Vec<String> = (1..=3).map(|i| format!("n{i}")).collect();
    let ring = Ring::new(ids.iter().map(|id| Node::new(id.clone(), id.clone()))).unwrap();
    let addresses = ids.iter().map(|id| (id.clone(), format!("{id}:1"))).collect();
    let topology = Topology::new(ring, addresses);
    let start = tokio::time::Instant::now();
    let clock: Clock = Arc::new(move || 1_000_000 + start.elapsed().as_millis() as u64);
    let cluster = SimCluster::with_clock(&ids, &topology, clock.clone());
    let (tx, rx) = watch::channel(Arc::new(topology));
    std::mem::forget(tx);
    let timeout = Duration::from_millis(500);
    let options = Options {
        quorum: Quorum::new(3, 2, 2).unwrap(),
        replica_timeout: timeout,
        read_all: false,
        tombstone_grace: Duration::from_secs(10),
        sloppy_quorum: false,
        hinted_handoff: false,
        zone: "z".into(),
        max_clock_skew: Duration::ZERO,
    };
    let coordinator =
        Coordinator::with_clock(cluster.clone(), rx, options, CoordinatorMetrics::unregistered(), 7, clock.clone());
    let pl = coordinator.topology().preference_list(b"k", 3);
    // The third replica misses the write.
    cluster.replicas[&pl[2].id].down.store(true, Ordering::SeqCst);
    coordinator.put(b"k".to_vec(), write("v", VClock::new()), Some(2)).await.unwrap();
    settle(&coordinator).await;
    cluster.replicas[&pl[2].id].down.store(false, Ordering::SeqCst);
    cluster.stores.lock().clear();
    // The read asks the first two; the first hangs (no answer within the timeout), so the
    // third is asked, and answers (without the write) 400 ms later: the repair is sent about
    // 900 ms after the reads began.
    cluster.replicas[&pl[0].id].slow.store(true, Ordering::SeqCst);
    cluster.replicas[&pl[2].id].read_delay_ms.store(400, Ordering::SeqCst);
    let sent = clock();
    coordinator.get(b"k".to_vec(), Some(2)).await.unwrap();
    settle(&coordinator).await;
    let stores = cluster.stores.lock().clone();
    let repair = stores.iter().find(|(id, _, _)| *id == pl[2].id).expect("the stale replica was repaired");
    let bound = sent + 2 * timeout.as_millis() as u64;
    assert!(
        repair.1 <= bound,
        "repair deadline {} is {} ms after the reads were sent; at most two replica timeouts ({} ms) allowed",
        repair.1,
        repair.1 - sent,
        bound - sent
    );
    assert_eq!(cluster.replicas[&pl[2].id].record(b"k").len(), 1, "landed within its deadline");
}
