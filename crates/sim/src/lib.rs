//! # A model checker for "no acknowledged write is lost"
//!
//! A deterministic, seeded simulation of a cluster: storage nodes running the real replica
//! logic ([`kv_replica::replica::ReplicaCore`] over real memory stores, with their real dot
//! counters and ownership views), fronts running the real [`kv_coordinator::Coordinator`]
//! (quorums, read repair, tombstone purge, write ids and deadlines), and membership changes
//! planned by the real [`kv_coordinator::plan`] over real [`kv_ring`] rings. Only the network,
//! the clock and the gossip are simulated: messages are delayed, reordered, lost or delivered
//! after their sender gave up; nodes crash and restart, lose their disks, are partitioned,
//! join, leave and are removed. Clients write blindly, write with the context of a read, delete,
//! and read (which repairs and purges).
//!
//! One seed is one history: time is virtual (tokio's paused clock), every random choice comes
//! from one generator seeded with it, and nothing iterates a randomly ordered map. A failing
//! seed replays exactly (`KV_SIM_SEED=<seed>`).
//!
//! ## What is checked
//!
//! After each history, once faults are healed, moves completed and every key read back with
//! repair (see [`history`] for the exact rules):
//!
//! - every acknowledged write is readable, or was superseded by a write or delete whose client
//!   had read it (directly or through a chain of such reads) — unless every replica that
//!   acknowledged it lost its disk or was removed, which no store survives;
//! - no value that an acknowledged write or delete had seen is live again (no resurrection);
//! - every acknowledgement came from `w` distinct replicas;
//! - after a join, a leave or a removal, the node that gained a range holds every write that
//!   enough of the range's old owners held when it started, so a later loss of those owners
//!   cannot lose it.
//!
//! ## Broken rules it catches
//!
//! [`Mutation`] re-introduces rules this store used to have: dot counters per key that restart
//! after a tombstone is purged, joins that copy a range from one old owner, and ranges served
//! as soon as they are gained. The test suite runs the checker with each and requires it to
//! find a violation ([`run_regained_range`] scripts the history the last one needs).
//!
//! # Layout
//! - [`rng`] — [`rng::Rng`], the one source of randomness.
//! - [`world`] — nodes and their clocks (`world`), the network and the fronts' view of it
//!   (`world::network`), hints and anti-entropy (`world::repair`), membership changes
//!   (`world::changes`), stores that break a rule (`world::mutant`).
//! - [`mutation`] — [`Mutation`], the rules the checker can break on purpose.
//! - [`history`] — what clients did and saw, and the checks.
//! - [`run`] — [`run_history`]: one seeded history, start to verdict.

pub mod history;
pub mod mutation;
pub mod rng;
pub mod run;
pub mod world;

pub use history::Counts;
pub use mutation::Mutation;
pub use run::{run_history, run_late_drop, run_regained_range, run_skewed_drop, Config, Report};
