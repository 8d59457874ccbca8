//! [`run_history`]: one seeded history, from an empty cluster to a verdict.
//!
//! A history starts `nodes` normal members (N = 3, R = W = 2 by default) and two fronts. Client
//! tasks each run `ops_per_client` operations on a few keys, through a random front: blind puts,
//! read-then-put with the read's context, read-then-delete, reads that repair, and a node's
//! tombstone collector purging (tombstones have no grace period here, so purges race with everything). Acknowledgements
//! asked for are `w` = 2 mostly, sometimes 1 or 3; reads ask 1 to 3 replicas.
//!
//! Meanwhile a fault task crashes and restarts nodes and partitions pairs of endpoints, and,
//! with `membership`, runs up to two membership changes: a join, a leave, a removal (after which
//! the node is gone with its disk) or a wiped disk (the node rejoins as a new actor); at most one
//! of the last two, since no store survives losing every copy. The network (with `faults`)
//! delays messages past their caller's timeout, so writes are applied after their front gave up
//! and retried elsewhere, and drops replies.
//!
//! Then the history quiesces: partitions heal, crashed nodes restart, every front and node
//! adopts the final membership, every node finishes dropping what it lost, and every key is
//! collected from all its replicas twice (read repair, purge). The final state of a key is what its
//! replicas hold; the checks of [`crate::history`] run on it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kv_coordinator::{Coordinator, CoordinatorMetrics, Options, Quorum, Write};
use kv_vclock::VClock;

use crate::history::{key, Counts, Seen};
use crate::mutation::Mutation;
use crate::world::{seen, Net, Status, World, WorldConfig};

/// One history's settings.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Seed of every random choice.
    pub seed: u64,
    /// Normal members at the start.
    pub nodes: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Operations per client.
    pub ops_per_client: usize,
    /// Keys the clients share.
    pub keys: usize,
    /// Crashes, partitions, late and lost messages.
    pub faults: bool,
    /// Joins, leaves, removals and wiped disks, several at once; a node paused through its
    /// removal.
    pub membership: bool,
    /// Clocks off the reference: every endpoint within the bound, and now and then a node far
    /// beyond it for a while.
    pub clocks: bool,
    /// A rule broken on purpose.
    pub mutation: Mutation,
}

impl Config {
    /// A scripted history's settings: no random faults, membership changes or clock offsets.
    pub fn scripted(mutation: Mutation) -> Config {
        Config { faults: false, membership: false, clocks: false, mutation, ..Config::new(0) }
    }

    /// The default shape of a history for `seed`.
    pub fn new(seed: u64) -> Config {
        Config {
            seed,
            nodes: 4,
            clients: 3,
            ops_per_client: 12,
            keys: 3,
            faults: true,
            membership: true,
            clocks: true,
            mutation: Mutation::None,
        }
    }
}

/// What one history did and what went wrong.
#[derive(Debug, Clone)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Counts of operations, faults and checks.
    pub counts: Counts,
    /// Rule violations; empty when the history is correct.
    pub violations: Vec<String>,
}

/// Longest pause between a client's operations: a history spans a few grace periods, so that
/// tombstones are purged while clients still write.
const THINK_MS: u64 = 120;

const N: usize = 3;
const R: usize = 2;
const W: usize = 2;
const TIMEOUT_MS: u64 = 200;
/// Tombstone grace: longer than any message may travel (stores carry a deadline of one replica
/// timeout), short enough that purges race with client traffic.
const GRACE_MS: u64 = 400;
/// A node further than this from the reference clock fences itself (kvnode's
/// `--max-clock-offset`): the most the rules allow, an eighth of the grace.
const CLOCK_BOUND_MS: u64 = GRACE_MS / 8;
/// The most two members that act differ by: twice the bound, a quarter of the grace.
const MAX_SKEW_MS: u64 = 2 * CLOCK_BOUND_MS;

/// Runs `history` on a single-threaded runtime whose clock only moves when every task waits.
fn in_virtual_time(history: impl std::future::Future<Output = Report>) -> Report {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("invariant: a current-thread runtime builds");
    runtime.block_on(history)
}

/// Runs the history of `config` to its verdict.
pub fn run_history(config: &Config) -> Report {
    in_virtual_time(async {
        match tokio::time::timeout(Duration::from_secs(STUCK_AFTER_SECS), history(*config)).await {
            Ok(report) => report,
            Err(_) => Report {
                seed: config.seed,
                counts: Counts { histories: 1, violations: 1, ..Counts::default() },
                violations: vec![format!("the history did not finish within {STUCK_AFTER_SECS} s of virtual time")],
            },
        }
    })
}

/// Virtual seconds after which a history counts as stuck (a liveness failure): a history runs
/// for a few virtual seconds.
const STUCK_AFTER_SECS: u64 = 300;

/// A world of `config.nodes` normal nodes and two fronts, as every history starts.
fn cluster(config: &Config) -> (Arc<World>, Vec<Arc<Coordinator>>) {
    let world = World::new(WorldConfig {
        seed: config.seed,
        n: N,
        r: R,
        timeout_ms: TIMEOUT_MS,
        grace_ms: GRACE_MS,
        faults: config.faults,
        clock_bound_ms: CLOCK_BOUND_MS,
        mutation: config.mutation,
    });
    for i in 1..=config.nodes {
        world.add_node(&format!("n{i}"), &format!("z{}", i % 2), Status::Normal);
    }
    if config.clocks {
        // Every clock anywhere within the bound: the rules must hold for any skew accepted.
        let bound = CLOCK_BOUND_MS as i64;
        for id in (1..=config.nodes).map(|i| format!("n{i}")).chain(["f0".to_owned(), "f1".to_owned()]) {
            let offset = world.rng(|r| r.between(0, 2 * bound as u64) as i64 - bound);
            world.set_offset(&id, offset);
        }
    }
    let fronts: Vec<Arc<Coordinator>> = (0..2)
        .map(|f| {
            let net = Arc::new(Net::new(world.clone(), &format!("f{f}")));
            let clock = {
                let (world, id) = (world.clone(), format!("f{f}"));
                Arc::new(move || world.clock_ms(&id))
            };
            let options = Options {
                quorum: Quorum::new(N, R, W).expect("invariant: valid quorum"),
                replica_timeout: Duration::from_millis(TIMEOUT_MS),
                read_all: f == 0,
                tombstone_grace: Duration::from_millis(GRACE_MS),
                // Hints are kept and delivered (`World::deliver_hints`); fallbacks never count
                // toward W here, so check 3 still holds W distinct replicas to account.
                sloppy_quorum: false,
                hinted_handoff: true,
                zone: "default".into(),
                max_clock_skew: Duration::from_millis(MAX_SKEW_MS),
            };
            let instance = world.rng(|r| r.next_u64());
            Coordinator::with_clock(
                net,
                world.add_front(),
                options,
                CoordinatorMetrics::unregistered(),
                instance,
                clock,
            )
        })
        .collect();
    world.publish(true);
    world.set_collectors(&fronts);
    (world, fronts)
}

async fn history(config: Config) -> Report {
    let (world, fronts) = cluster(&config);
    let keys: Vec<Vec<u8>> = (0..config.keys).map(key).collect();
    let done = Arc::new(AtomicBool::new(false));
    // Nodes keep dropping until membership changes end: a leave may wait on a gainer's drop.
    let settled = Arc::new(AtomicBool::new(false));
    let dropper = tokio::spawn(drop_loop(world.clone(), settled.clone()));
    let clients: Vec<_> =
        (0..config.clients).map(|c| tokio::spawn(client(world.clone(), fronts.clone(), c, config))).collect();
    let faults = tokio::spawn(faults(world.clone(), done.clone(), config, keys.clone()));
    for c in clients {
        let _ = c.await;
    }
    done.store(true, Ordering::Release);
    let _ = faults.await;
    settled.store(true, Ordering::Release);
    let _ = dropper.await;

    world.trace(|| "quiesce".to_owned());
    verdict(&world, &fronts, &keys, config.seed).await
}

/// Quiesces `world` and reports what its history did and broke.
async fn verdict(world: &Arc<World>, fronts: &[Arc<Coordinator>], keys: &[Vec<u8>], seed: u64) -> Report {
    let violations = quiesce(world, fronts, keys).await;
    let purged: u64 = fronts.iter().map(|f| f.metrics().tombstones_purged.get()).sum();
    world.history(|h| {
        h.violations.extend(violations);
        h.counts.purged = purged;
        h.counts.histories = 1;
        h.counts.violations = h.violations.len() as u64;
        Report { seed, counts: h.counts.clone(), violations: h.violations.clone() }
    })
}

/// A scripted history for the path random ones rarely take: node `X`, the first replica of a
/// key, loses the key's range to a joining node and drops it; the joiner's disk is wiped, so the
/// ring gives the range back to `X` at once, without a pull; a client writes the key blind
/// right away, then reads what `X` holds and overwrites it. `X` must not coordinate (or serve)
/// the range before merging it from its owners: its empty copy lacks its own earlier version,
/// and a dot issued on it would cover that version for a reader who never saw it.
pub fn run_regained_range(mutation: Mutation) -> Report {
    in_virtual_time(regained_range(mutation))
}

async fn regained_range(mutation: Mutation) -> Report {
    let config = Config::scripted(mutation);
    let (world, fronts) = cluster(&config);
    let Some((index, first, ahead)) = key_lost_to_n5() else {
        return Report { seed: 0, counts: Counts::default(), violations: vec!["no key moves".into()] };
    };
    let keys: Vec<Vec<u8>> = (0..=index).map(key).collect();
    let front = &fronts[0];
    let clock = VClock::new();
    // The replicas ahead of `first` in the key's list stop answering the front for one write
    // each, so the front asks them last for a while: `first` coordinates.
    let stall_ahead = |tag: &'static str| {
        let (world, front, ahead) = (world.clone(), front.clone(), ahead.clone());
        async move {
            for (n, node) in ahead.iter().enumerate() {
                world.partition("f0", node);
                write(&world, &front, index, format!("{tag}-{n}"), VClock::new(), Vec::new(), false, 1).await;
                world.heal("f0", node);
            }
        }
    };
    stall_ahead("stall-a").await;
    write(&world, front, index, "before".into(), clock.clone(), Vec::new(), false, N).await;
    world.join("n5", "z1", &keys).await;
    for _ in 0..20 {
        world.drop_round(&first);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    world.trace(|| format!("{first} dropped what it lost; n5's disk is wiped"));
    let rejoin = {
        let (world, keys) = (world.clone(), keys.clone());
        tokio::spawn(async move { world.wipe("n5", &keys).await })
    };
    tokio::time::sleep(Duration::from_millis(crate::world::VIEW_LAG_MS + 5)).await;
    stall_ahead("stall-b").await;
    write(&world, front, index, "blind".into(), clock, Vec::new(), false, 2).await;
    let held = world.record(&first, &key(index));
    let saw: Vec<String> = seen(&held).into_iter().map(|(tag, _)| tag).collect();
    world.trace(|| format!("a client reads {first}'s copy: {saw:?}"));
    write(&world, front, index, "over".into(), held.context(), saw, false, 2).await;
    let _ = rejoin.await;
    let settled = Arc::new(AtomicBool::new(false));
    let background = tokio::spawn(drop_loop(world.clone(), settled.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    settled.store(true, Ordering::Release);
    let _ = background.await;
    verdict(&world, &fronts, &keys, 0).await
}

/// A key with a replica of the first four nodes that loses it when n5 joins: the key's index,
/// that replica, and the replicas ahead of it in the key's preference list.
fn key_lost_to_n5() -> Option<(usize, String, Vec<String>)> {
    let ring_of = |ids: &[&str]| {
        kv_ring::Ring::with_vnodes(
            ids.iter().enumerate().map(|(i, id)| kv_ring::Node::new(*id, format!("z{}", (i + 1) % 2))),
            crate::world::VNODES,
        )
        .expect("invariant: distinct ids")
    };
    let (four, five) = (ring_of(&["n1", "n2", "n3", "n4"]), ring_of(&["n1", "n2", "n3", "n4", "n5"]));
    (0..1000).find_map(|i| {
        let k = key(i);
        let owners: Vec<String> = four.preference_list(&k, N).iter().map(|n| n.id.clone()).collect();
        let after: Vec<String> = five.preference_list(&k, N).iter().map(|n| n.id.clone()).collect();
        let lost = owners.iter().position(|o| !after.contains(o))?;
        Some((i, owners[lost].clone(), owners[..lost].to_vec()))
    })
}

/// A scripted history for a former owner that learns late that it lost a range: node `X`, a
/// replica of a key, misses the delete of a value it holds; it crashes, n5 joins and takes the
/// key from it, and the delete, older than the grace, is purged from the new owners. Then `X`
/// restarts and drops the range: its copy of the deleted value must not be handed back.
pub fn run_late_drop(mutation: Mutation) -> Report {
    in_virtual_time(late_drop(mutation, false))
}

/// [`run_late_drop`] with the former owner's clock stepped back by the value's age when it
/// restarts (a second, far beyond the bound): judged by its clock, the deleted value is young
/// enough to hand back. It must fence itself until its clock agrees with the cluster's again (the history
/// puts every clock back on the reference as it quiesces).
pub fn run_skewed_drop(mutation: Mutation) -> Report {
    in_virtual_time(late_drop(mutation, true))
}

async fn late_drop(mutation: Mutation, skewed: bool) -> Report {
    let config = Config::scripted(mutation);
    let (world, fronts) = cluster(&config);
    let Some((index, first, _)) = key_lost_to_n5() else {
        return Report { seed: 0, counts: Counts::default(), violations: vec!["no key moves".into()] };
    };
    let keys: Vec<Vec<u8>> = (0..=index).map(key).collect();
    let front = &fronts[0];
    let written = world.now_ms();
    write(&world, front, index, "value".into(), VClock::new(), Vec::new(), false, N).await;
    let held = world.record(&first, &key(index));
    world.partition("f0", &first);
    write(&world, front, index, "delete".into(), held.context(), vec!["value".into()], true, N - 1).await;
    world.crash(&first);
    world.heal("f0", &first);
    world.trace(|| format!("{first} missed the delete and is down; n5 joins"));
    world.join("n5", "z1", &keys).await;
    tokio::time::sleep(Duration::from_millis(GRACE_MS + 100)).await;
    // The collector purges the delete, older than the grace, from every replica.
    let _ = front.collect(&key(index)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    world.trace(|| format!("the delete is purged; {first} restarts and drops what it lost"));
    if skewed {
        world.set_offset(&first, -((world.now_ms() - written) as i64));
    }
    world.restart(&first);
    tokio::time::sleep(Duration::from_millis(crate::world::VIEW_LAG_MS + 5)).await;
    for _ in 0..20 {
        world.drop_round(&first);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    verdict(&world, &fronts, &keys, 0).await
}

/// Heals everything, completes drops, repairs every key, and checks the final state.
async fn quiesce(world: &Arc<World>, fronts: &[Arc<Coordinator>], keys: &[Vec<u8>]) -> Vec<String> {
    let mut problems = Vec::new();
    world.calm();
    world.heal_all();
    // Clocks agree again (a fenced node serves again): what remains must be correct.
    world.reset_clocks();
    for id in world.members(&[Status::Normal, Status::Joining, Status::Leaving]) {
        world.restart(&id);
    }
    world.publish(true);
    tokio::time::sleep(Duration::from_millis(10)).await;
    for _ in 0..50 {
        if !world.dropping() && !world.filling() {
            break;
        }
        for id in world.members(&[Status::Normal, Status::Joining, Status::Leaving]) {
            world.drop_round(&id);
            world.fill_round(&id).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if world.dropping() {
        problems.push("some node never finished dropping the ranges it lost".to_owned());
    }
    if world.filling() {
        problems.push("some node never finished filling the ranges it gained".to_owned());
    }
    // Hints still kept go to their targets (or expire); one anti-entropy round each.
    for id in world.members(&[Status::Normal, Status::Joining, Status::Leaving]) {
        world.deliver_hints(&id);
        world.anti_entropy_round(&id);
    }
    for _ in 0..2 {
        for key in keys {
            let _ = fronts[0].collect(key).await;
        }
        // Background repair.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let ring = world.ring();
    let mut finals: Vec<Vec<Seen>> = Vec::new();
    for key in keys {
        let owners: Vec<String> = ring.preference_list(key, N).iter().map(|n| n.id.clone()).collect();
        let copies: Vec<kv_storage::Record> = owners.iter().map(|o| world.record(o, key)).collect();
        let merged = kv_proto::merge_records(copies.iter());
        let mut all = seen(&merged);
        all.sort();
        for (owner, copy) in owners.iter().zip(&copies) {
            let mut copy = seen(copy);
            copy.sort();
            if copy != all {
                problems.push(format!(
                    "replicas of {} disagree after repair: {owner} holds {copy:?}, together {all:?}",
                    String::from_utf8_lossy(key)
                ));
            }
        }
        finals.push(all);
    }
    world.history(|h| h.check_final(&finals));
    problems
}

/// Every node's dropper and filler, every 50 ms, until membership changes end.
async fn drop_loop(world: Arc<World>, done: Arc<AtomicBool>) {
    let mut round = 0u64;
    while !done.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        round += 1;
        for id in world.members(&[Status::Normal, Status::Joining, Status::Leaving]) {
            world.drop_round(&id);
            world.fill_round(&id).await;
            world.deliver_hints(&id);
            // Anti-entropy every second of each node: a slow background repair, as in a
            // cluster (repairing at once would also hide what the mutations break).
            if round.is_multiple_of(20) {
                world.anti_entropy_round(&id);
            }
        }
    }
}

/// One client: random operations through random fronts.
async fn client(world: Arc<World>, fronts: Vec<Arc<Coordinator>>, id: usize, config: Config) {
    for op in 0..config.ops_per_client {
        let (pause, front, key, kind, w, r) = world.rng(|rng| {
            let w = match rng.below(10) {
                0 => 1,
                1 => 3,
                _ => W,
            };
            (
                rng.below(THINK_MS),
                rng.below(fronts.len() as u64) as usize,
                rng.below(config.keys as u64) as usize,
                rng.below(100),
                w,
                rng.between(1, N as u64) as usize,
            )
        });
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let tag = format!("c{id}-{op}");
        world.trace(|| format!("client {id} op {op}: kind {kind} key k{key} via f{front} w={w} r={r}"));
        let front = &fronts[front];
        if kind < 30 {
            world.history(|h| h.counts.blind_puts += 1);
            write(&world, front, key, tag, VClock::new(), Vec::new(), false, w).await;
            continue;
        }
        world.history(|h| h.counts.reads += 1);
        // A node's tombstone collector visits the key as it is read, racing what follows.
        let collector = (*front).clone();
        front.tasks().spawn(async move {
            let _ = collector.collect(&crate::run::key(key)).await;
        });
        let read = match front.get(crate::run::key(key), Some(r)).await {
            Ok(read) => read,
            Err(e) => {
                world.trace(|| format!("client {id} op {op}: read failed: {e}"));
                continue;
            }
        };
        world.trace(|| format!("client {id} op {op}: read {:?} from {:?}", seen(&read.record), read.answered));
        if kind >= 75 {
            continue;
        }
        let saw: Vec<String> = seen(&read.record).into_iter().map(|(tag, _)| tag).collect();
        world.trace(|| format!("client {id} op {op}: writes {tag} on top of {saw:?}"));
        let tombstone = kind >= 60;
        world.history(|h| if tombstone { h.counts.deletes += 1 } else { h.counts.context_puts += 1 });
        write(&world, front, key, tag, read.record.context(), saw, tombstone, w).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn write(
    world: &Arc<World>,
    front: &Arc<Coordinator>,
    key: usize,
    tag: String,
    context: VClock,
    saw: Vec<String>,
    tombstone: bool,
    w: usize,
) {
    let started = world.now_ms();
    let index = world.history(|h| h.begin_write(tag.clone(), key, tombstone, saw, w, started));
    let value = if tombstone { Vec::new() } else { tag.clone().into_bytes() }.into();
    let write = Write { value, content_type: tag, context, tombstone };
    match front.put(crate::run::key(key), write, Some(w)).await {
        Ok(outcome) => {
            let now = world.now_ms();
            world.trace(|| format!("write {} acked by {:?}", outcome.created.content_type, outcome.acked));
            world.history(|h| h.acknowledged(index, outcome.acked, now));
        }
        Err(e) => {
            world.trace(|| format!("write failed: {e}"));
            world.history(|h| h.counts.failed += 1)
        }
    }
}

/// A membership change in progress, as the fault task tracks it.
struct Change {
    /// The member it acts on (the new one, for a join).
    id: String,
    /// Whether it takes a member out (a leave, a removal).
    shrinks: bool,
    task: tokio::task::JoinHandle<()>,
}

/// Crashes, partitions, clock jumps and membership changes until the clients are done. Up to
/// three membership changes run at once (joins started together, a leave while a node joins,
/// a removal during either), as operators and autoscalers make them.
async fn faults(world: Arc<World>, done: Arc<AtomicBool>, config: Config, keys: Vec<Vec<u8>>) {
    let mut changes_left = if config.membership { 3 } else { 0 };
    let mut loss_left = 1;
    let mut next_id = config.nodes + 1;
    let mut running: Vec<Change> = Vec::new();
    while !done.load(Ordering::Acquire) {
        let (pause, roll, choice) = world.rng(|r| (r.between(20, 150), r.below(100), r.below(6)));
        tokio::time::sleep(Duration::from_millis(pause)).await;
        running.retain(|c| !c.task.is_finished());
        if !config.faults && changes_left == 0 {
            continue;
        }
        let busy: Vec<String> = running.iter().map(|c| c.id.clone()).collect();
        let normal: Vec<String> =
            world.members(&[Status::Normal]).into_iter().filter(|id| !busy.contains(id)).collect();
        if config.faults && roll < 40 {
            let Some(victim) = world.rng(|r| r.pick(&normal).cloned()) else { continue };
            world.crash(&victim);
            let downtime = world.rng(|r| r.between(30, 400));
            let world = world.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(downtime)).await;
                world.restart(&victim);
            });
        } else if config.faults && roll < 70 {
            let endpoints: Vec<String> = ["f0".to_owned(), "f1".to_owned()].into_iter().chain(normal.clone()).collect();
            let (a, b, heal_after) =
                world.rng(|r| (r.pick(&endpoints).cloned(), r.pick(&normal).cloned(), r.between(30, 400)));
            let (Some(a), Some(b)) = (a, b) else { continue };
            if a == b {
                continue;
            }
            world.partition(&a, &b);
            let world = world.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(heal_after)).await;
                world.heal(&a, &b);
            });
        } else if config.clocks && roll < 76 {
            // A node's clock steps far beyond the bound (a bad NTP step) for a while, then back.
            let Some(victim) = world.rng(|r| r.pick(&normal).cloned()) else { continue };
            let bound = CLOCK_BOUND_MS as i64;
            let (jump, back, lasts) = world.rng(|r| {
                let size = r.between(3 * CLOCK_BOUND_MS, 12 * CLOCK_BOUND_MS) as i64;
                let sign = if r.chance(50) { 1 } else { -1 };
                (sign * size, r.between(0, 2 * CLOCK_BOUND_MS) as i64 - bound, r.between(50, 600))
            });
            world.set_offset(&victim, jump);
            world.history(|h| h.counts.clock_jumps += 1);
            let world = world.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(lasts)).await;
                world.set_offset(&victim, back);
            });
        } else if changes_left > 0 && running.len() < 3 {
            changes_left -= 1;
            if !running.is_empty() {
                world.history(|h| h.counts.concurrent_changes += 1);
            }
            // Members left once every change in progress completes: a leave or a removal
            // starts only if more than N would remain after it.
            let shrinking = running.iter().filter(|c| c.shrinks).count();
            let can_shrink = world.members(&[Status::Normal]).len().saturating_sub(shrinking) > N;
            let start = |world: &Arc<World>, id: String, shrinks: bool, what: u64| {
                let (w, keys, target) = (world.clone(), keys.clone(), id.clone());
                let task = tokio::spawn(async move {
                    match what {
                        0 => {
                            let zone = format!("z{}", target.trim_start_matches('n').parse::<usize>().unwrap_or(0) % 2);
                            w.join(&target, &zone, &keys).await
                        }
                        1 => w.leave(&target, &keys).await,
                        2 => w.remove(&target, &keys).await,
                        3 => w.wipe(&target, &keys).await,
                        _ => {
                            let pause_ms = w.rng(|r| r.between(GRACE_MS + 100, 3 * GRACE_MS));
                            w.pause_remove(&target, &keys, pause_ms).await
                        }
                    }
                });
                Change { id, shrinks, task }
            };
            // A change on an existing member: (what, whether it shrinks, whether it loses a disk).
            let on_member = match choice {
                0 => {
                    running.push(start(&world, format!("n{next_id}"), false, 0));
                    next_id += 1;
                    None
                }
                // Two nodes started at the same moment.
                1 if running.len() < 2 => {
                    for _ in 0..2 {
                        running.push(start(&world, format!("n{next_id}"), false, 0));
                        next_id += 1;
                    }
                    world.history(|h| h.counts.concurrent_changes += 1);
                    None
                }
                2 if can_shrink => Some((1, true, false)),
                3 if can_shrink && loss_left > 0 => Some((2, true, true)),
                4 if loss_left > 0 => Some((3, false, true)),
                5 if can_shrink && loss_left > 0 => Some((4, true, true)),
                _ => None,
            };
            if let Some((what, shrinks, loses)) = on_member {
                if loses {
                    loss_left -= 1;
                }
                if let Some(id) = world.rng(|r| r.pick(&normal).cloned()) {
                    running.push(start(&world, id, shrinks, what));
                }
            }
        }
    }
    for change in running {
        let _ = change.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A world is freed once its history drops it: the model checker runs 10,000 histories in
    /// one process, and a reference cycle (the world held its fronts, which hold the world) once
    /// kept every one of them, 7.5 GB by the end, most of the run's time spent zeroing pages.
    #[test]
    fn a_world_is_freed_when_its_history_drops_it() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("invariant: a current-thread runtime builds");
        let world = runtime.block_on(async {
            let (world, fronts) = cluster(&Config::new(7));
            let weak = Arc::downgrade(&world);
            drop((world, fronts));
            weak
        });
        drop(runtime);
        assert!(world.upgrade().is_none(), "the world outlived its history");
    }
}
