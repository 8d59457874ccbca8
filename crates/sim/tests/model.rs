//! The model checker in the test suite: thousands of seeded histories against the real rules,
//! and the same checker catching rules broken on purpose.

#![allow(clippy::unwrap_used)]

/// mimalloc: thousands of histories allocate and free stores, trees and messages; glibc's
/// malloc, free and arena growth were a third of the checker's time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use kv_sim::{run_history, run_late_drop, run_regained_range, run_skewed_drop, Config, Counts, Mutation, Report};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Runs `count` histories from `first` on two threads; returns the summed counts and the
/// reports with violations.
fn run_many(first: u64, count: u64, mutation: Mutation) -> (Counts, Vec<Report>) {
    let threads = 2;
    let results: Vec<(Counts, Vec<Report>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut counts = Counts::default();
                    let mut failed = Vec::new();
                    let mut seed = first + t;
                    while seed < first + count {
                        let report = run_history(&Config { mutation, ..Config::new(seed) });
                        counts.add(&report.counts);
                        if !report.violations.is_empty() {
                            failed.push(report);
                        }
                        seed += threads;
                    }
                    (counts, failed)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut counts = Counts::default();
    let mut failed = Vec::new();
    for (c, f) in results {
        counts.add(&c);
        failed.extend(f);
    }
    failed.sort_by_key(|r| r.seed);
    (counts, failed)
}

fn describe(counts: &Counts) -> String {
    format!(
        "{} histories: {} blind puts, {} puts with context, {} deletes, {} reads; {} writes acknowledged, {} refused; \
         {} tombstone copies purged, {} hints delivered, {} keys repaired by anti-entropy; faults: {} crashes, {} partitions, {} late messages, {} lost replies, {} joins, \
         {} leaves, {} removals, {} wiped disks, {} nodes paused through their removal, {} changes started during another, \
         {} clock jumps beyond the bound; checks: {} acknowledged writes, {} live versions, {} writes after moves; \
         {} acknowledged writes whose last copy was too old to hand off; {} violations",
        counts.histories,
        counts.blind_puts,
        counts.context_puts,
        counts.deletes,
        counts.reads,
        counts.acked,
        counts.failed,
        counts.purged,
        counts.hints,
        counts.repaired,
        counts.crashes,
        counts.partitions,
        counts.late,
        counts.lost_replies,
        counts.joins,
        counts.leaves,
        counts.removals,
        counts.wipes,
        counts.paused_removals,
        counts.concurrent_changes,
        counts.clock_jumps,
        counts.checked_writes,
        counts.checked_versions,
        counts.checked_moves,
        counts.discarded,
        counts.violations
    )
}

/// `KV_SIM_HISTORIES` (default 10,000) histories from seed `KV_SIM_SEED` (default 0).
#[test]
fn figures_model_checker_finds_no_lost_write() {
    let first = env("KV_SIM_SEED", 0);
    let count = env("KV_SIM_HISTORIES", 10_000);
    let (counts, failed) = run_many(first, count, Mutation::None);
    println!("model checker: seeds {first}..{}: {}", first + count, describe(&counts));
    for report in failed.iter().take(5) {
        println!("seed {} (replay: KV_SIM_SEED={} KV_SIM_HISTORIES=1):", report.seed, report.seed);
        for v in &report.violations {
            println!("  {v}");
        }
    }
    assert!(failed.is_empty(), "{} of {count} histories broke a rule; first seed {}", failed.len(), failed[0].seed);
}

/// The checker must catch each old rule: run histories until it finds a broken safety rule.
fn caught(mutation: Mutation, limit: u64) -> (u64, Report) {
    caught_by(mutation, limit, |v| !v.contains("did not finish"))
}

/// Runs histories until one has a violation `counts` accepts.
fn caught_by(mutation: Mutation, limit: u64, counts: impl Fn(&str) -> bool) -> (u64, Report) {
    for seed in 0..limit {
        let report = run_history(&Config { mutation, ..Config::new(seed) });
        if report.violations.iter().any(|v| counts(v)) {
            return (seed + 1, report);
        }
    }
    panic!("{mutation:?} was not caught in {limit} histories");
}

#[test]
fn figures_catches_counters_restarting_after_a_purge() {
    let (histories, report) = caught(Mutation::PerKeyCounters, 10_000);
    println!(
        "mutation per-key counters (restart after purge): caught after {histories} histories (seed {}): {}",
        report.seed,
        report.violations.join("; ")
    );
}

#[test]
fn figures_catches_a_join_that_copies_from_one_owner() {
    let (histories, report) = caught(Mutation::JoinFromOneOwner, 3_000);
    println!(
        "mutation join from one owner: caught after {histories} histories (seed {}): {}",
        report.seed,
        report.violations.join("; ")
    );
}

#[test]
fn figures_catches_a_node_serving_a_range_it_regained_without_merging_it() {
    let sound = run_regained_range(Mutation::None);
    assert!(sound.violations.is_empty(), "{:?}", sound.violations);
    let broken = run_regained_range(Mutation::NoFilling);
    println!(
        "mutation no filling: the scripted regain is clean with the rule ({} writes checked) and broken without it: {}",
        sound.counts.checked_writes,
        broken.violations.join("; ")
    );
    assert!(!broken.violations.is_empty(), "a node that coordinated on a range it had not merged went unnoticed");
}

#[test]
fn figures_catches_a_late_drop_handing_back_a_purged_delete() {
    let sound = run_late_drop(Mutation::None);
    assert!(sound.violations.is_empty(), "{:?}", sound.violations);
    assert!(sound.counts.purged > 0, "the delete was not purged: the history tests nothing");
    let broken = run_late_drop(Mutation::HandOffOld);
    println!(
        "mutation hand off old keys: the scripted late drop is clean with the rule ({} tombstone copies purged) and \
         broken without it: {}",
        sound.counts.purged,
        broken.violations.join("; ")
    );
    assert!(!broken.violations.is_empty(), "a former owner handed back a value whose delete was purged, unnoticed");
}

#[test]
fn figures_catches_a_hand_off_of_part_of_a_key() {
    let (histories, report) = caught(Mutation::HandOffYoungVersions, 3_000);
    println!(
        "mutation hand off young versions only: caught after {histories} histories (seed {}): {}",
        report.seed,
        report.violations.join("; ")
    );
}

#[test]
fn figures_catches_membership_changes_planned_against_the_current_ring() {
    // A liveness rule: two joins at once that plan against the current ring never finish.
    let (histories, report) = caught_by(Mutation::PlanAgainstCurrentRing, 3_000, |v| v.contains("did not finish"));
    println!(
        "mutation plan against the current ring: a history stuck after {histories} histories (seed {}): {}",
        report.seed,
        report.violations.join("; ")
    );
}

#[test]
fn figures_catches_peers_accepting_a_removed_member() {
    let (histories, report) = caught(Mutation::AcceptRemovedSenders, 10_000);
    println!(
        "mutation peers accept a removed member: caught after {histories} histories (seed {}): {}",
        report.seed,
        report.violations.join("; ")
    );
}

#[test]
fn figures_catches_a_skewed_clock_that_does_not_fence() {
    let sound = run_skewed_drop(Mutation::None);
    assert!(sound.violations.is_empty(), "{:?}", sound.violations);
    assert!(sound.counts.purged > 0, "the delete was not purged: the history tests nothing");
    let broken = run_skewed_drop(Mutation::NoClockFence);
    println!(
        "mutation no clock fence: the scripted drop by a node whose clock stepped back a second is clean with the \
         fence and broken without it: {}",
        broken.violations.join("; ")
    );
    assert!(
        !broken.violations.is_empty(),
        "a node judging ages by a skewed clock handed back a purged delete, unnoticed"
    );
}

#[test]
fn figures_catches_coordinating_over_an_outstanding_dot() {
    let (histories, report) = caught(Mutation::ForgetOutstandingDots, 10_000);
    println!(
        "mutation coordinating while a dot issued here is not stored here (rule 15): caught after {histories} \
         histories (seed {}): {}",
        report.seed,
        report.violations.join("; ")
    );
}

#[test]
fn figures_catches_a_crashed_node_keeping_its_actor() {
    let (histories, report) = caught(Mutation::KeepActorAfterCrash, 10_000);
    println!(
        "mutation a crashed node keeps its actor (rule 15): caught after {histories} histories (seed {}): {}",
        report.seed,
        report.violations.join("; ")
    );
}
